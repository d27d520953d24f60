/*
 * commands.h: the loom subcommands. Each lives in its own cmd_<name>.c and returns the process exit
 * status (0 ok, 1 runtime failure, 2 usage error). options.c parses the flags they share.
 */
#ifndef LOOM_CLI_COMMANDS_H
#define LOOM_CLI_COMMANDS_H

#include "loom.h"
#include <stdbool.h>

int loom_cmd_serve(int argc, char **argv);
int loom_cmd_generate(int argc, char **argv);
int loom_cmd_logits(int argc, char **argv);
int loom_cmd_tokenize(int argc, char **argv);
int loom_cmd_detokenize(int argc, char **argv);
int loom_cmd_chat_render(int argc, char **argv);
int loom_cmd_bench(int argc, char **argv);
int loom_cmd_make_model(int argc, char **argv);

/*
 * Common flags (DESIGN.md): --device --dtype --threads --max-model-len --max-num-seqs
 * --max-num-batched-tokens --block-size --kv-cache-memory --num-kv-blocks --gpu-memory-utilization
 * --enable-prefix-caching --no-enable-prefix-caching --seed --scheduling-policy --tokenizer.
 * Returns 1 if argv[*i] was one of them (and advances *i past its value), 0 if not, -1 on a bad
 * value (message printed).
 */
int loom_cli_common_flag(int argc, char **argv, int *i, struct loom_engine_options *opts);

/* Helpers for flag values: print "loom: --flag: ..." and return -1 on a bad value. */
int loom_cli_int(const char *flag, const char *val, long long lo, long long hi, long long *out);
int loom_cli_float(const char *flag, const char *val, double lo, double hi, double *out);
/* The value after a flag, or NULL with a message if missing. */
const char *loom_cli_value(int argc, char **argv, int *i);

#endif
