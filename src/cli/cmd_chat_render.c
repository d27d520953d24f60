/*
 * cmd_chat_render.c: `loom chat-render MODEL_DIR < request.json` renders a chat request through the
 * model's chat template, as transformers' apply_chat_template(..., tokenize=False) does, and prints the
 * text exactly (no newline added). The request is {"messages": [...], "tools": [...],
 * "add_generation_prompt": true, ...}: every other key is a template keyword argument (enable_thinking,
 * documents, ...). The template is the model folder's (tokenizer_config.json or chat_template.jinja)
 * unless --chat-template names a file. --now UNIX_SECONDS pins strftime_now() (for tests).
 * Exit status: 0, 1 on bad JSON or a template error (message on stderr), 2 on bad usage.
 */
#include "cli/commands.h"
#include "core/error.h"
#include "core/util.h"
#include "tokenizer/chat.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: loom chat-render MODEL_DIR [--chat-template FILE] [--now UNIX_SECONDS] < request.json\n"
               "  request.json: {\"messages\": [...], \"tools\": [...], \"add_generation_prompt\": true,\n"
               "                 other template keyword arguments}\n"
               "  prints the rendered prompt text, exactly, on stdout\n");
}

static char *read_stdin(size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = loom_malloc(cap + 1);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) break;
        if (n == cap) {
            cap *= 2;
            buf = loom_realloc(buf, cap + 1);
        }
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

int loom_cmd_chat_render(int argc, char **argv)
{
    const char *dir = NULL, *tpl_path = NULL;
    long long now = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--chat-template")) {
            if (!(tpl_path = loom_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(argv[i], "--now")) {
            const char *v = loom_cli_value(argc, argv, &i);
            if (!v || loom_cli_int("--now", v, 1, 253402300799LL, &now)) return 2;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "loom: chat-render: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "loom: chat-render: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!dir && !tpl_path) {
        usage(stderr);
        return 2;
    }

    struct loom_chat_template *t = NULL;
    int rc;
    if (tpl_path) {
        char *src;
        if (loom_read_file(tpl_path, &src, NULL)) {
            fprintf(stderr, "loom: chat-render: %s\n", loom_last_error());
            return 1;
        }
        /* special tokens still come from the model folder when there is one */
        const char *bos = NULL, *eos = NULL;
        json_t *cfg = NULL;
        if (dir) {
            char *p = loom_path_join(dir, "tokenizer_config.json");
            json_error_t je;
            cfg = loom_file_exists(p) ? json_load_file(p, JSON_DECODE_INT_AS_REAL, &je) : NULL;
            free(p);
            json_t *b = cfg ? json_object_get(cfg, "bos_token") : NULL, *e = cfg ? json_object_get(cfg, "eos_token") : NULL;
            if (json_is_object(b)) b = json_object_get(b, "content");
            if (json_is_object(e)) e = json_object_get(e, "content");
            bos = json_string_value(b);
            eos = json_string_value(e);
        }
        rc = loom_chat_template_create(src, bos, eos, &t);
        json_decref(cfg);
        free(src);
    } else {
        rc = loom_chat_template_load(dir, &t);
    }
    if (rc) {
        fprintf(stderr, "loom: chat-render: %s\n", loom_last_error());
        return 1;
    }

    size_t len;
    char *text = read_stdin(&len);
    json_error_t je;
    json_t *req = json_loadb(text, len, 0, &je);
    free(text);
    if (!req || !json_is_object(req)) {
        fprintf(stderr, "loom: chat-render: the request on stdin is not a JSON object%s%s (line %d)\n",
                req ? "" : ": ", req ? "" : je.text, je.line);
        json_decref(req);
        loom_chat_template_free(t);
        return 1;
    }
    json_t *messages = json_object_get(req, "messages");
    json_t *tools = json_object_get(req, "tools");
    json_t *agp = json_object_get(req, "add_generation_prompt");
    if (!json_is_array(messages)) {
        fprintf(stderr, "loom: chat-render: the request needs \"messages\": an array of {\"role\", \"content\"}\n");
        json_decref(req);
        loom_chat_template_free(t);
        return 1;
    }
    if (agp && !json_is_boolean(agp)) {
        fprintf(stderr, "loom: chat-render: \"add_generation_prompt\" must be true or false\n");
        json_decref(req);
        loom_chat_template_free(t);
        return 1;
    }
    json_t *extra = json_deep_copy(req);
    json_object_del(extra, "messages");
    json_object_del(extra, "tools");
    json_object_del(extra, "add_generation_prompt");
    if (now) loom_chat_set_time(now);
    char *out;
    size_t out_len;
    rc = loom_chat_render(t, messages, tools, agp && json_is_true(agp), extra, &out, &out_len);
    json_decref(extra);
    json_decref(req);
    loom_chat_template_free(t);
    if (rc) {
        fprintf(stderr, "loom: chat-render: %s\n", loom_last_error());
        return 1;
    }
    fwrite(out, 1, out_len, stdout);
    free(out);
    return fflush(stdout) == 0 ? 0 : 1;
}
