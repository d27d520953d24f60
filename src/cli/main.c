/* main.c: `loom <command> ...` dispatch and top-level usage. */
#include "cli/commands.h"

#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} commands[] = {
    {"serve", loom_cmd_serve, "serve MODEL_DIR over an OpenAI-compatible HTTP API"},
    {"generate", loom_cmd_generate, "generate text or token ids for one or more prompts"},
    {"logits", loom_cmd_logits, "write the logits of every prompt position to a file"},
    {"tokenize", loom_cmd_tokenize, "text -> token ids (JSON array)"},
    {"detokenize", loom_cmd_detokenize, "token ids -> text"},
    {"chat-render", loom_cmd_chat_render, "render a chat request through the model's chat template"},
    {"bench", loom_cmd_bench, "benchmarks: throughput, latency, serve"},
    {"make-model", loom_cmd_make_model, "write a model folder with random weights for a config.json"},
};

static void usage(FILE *f)
{
    fprintf(f, "loom %s: an LLM serving engine\n\nusage: loom <command> [args]\n\ncommands:\n", LOOM_VERSION);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n`loom <command> --help` describes each command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        printf("loom %s\n", LOOM_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "loom: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
