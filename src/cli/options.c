/* options.c: parsing of the flags every engine-backed command shares (names follow vLLM's). */
#include "cli/commands.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *loom_cli_value(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "loom: %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int loom_cli_int(const char *flag, const char *val, long long lo, long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long x = strtoll(val, &end, 10);
    if (end == val || *end || errno || x < lo || x > hi) {
        fprintf(stderr, "loom: %s: expected an integer in [%lld, %lld], got '%s'\n", flag, lo, hi, val);
        return -1;
    }
    *out = x;
    return 0;
}

int loom_cli_float(const char *flag, const char *val, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(val, &end);
    if (end == val || *end || errno || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, "loom: %s: expected a number in [%g, %g], got '%s'\n", flag, lo, hi, val);
        return -1;
    }
    *out = x;
    return 0;
}

/* "1073741824", "1GiB", "512MiB", "2G" -> bytes */
static int parse_bytes(const char *flag, const char *val, int64_t *out)
{
    char *end;
    errno = 0;
    double x = strtod(val, &end);
    double mult = 1;
    if (!strcasecmp(end, "k") || !strcasecmp(end, "kib") || !strcasecmp(end, "kb")) mult = 1024.0;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "mib") || !strcasecmp(end, "mb")) mult = 1048576.0;
    else if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb")) mult = 1073741824.0;
    else if (*end) x = -1;
    if (end == val || errno || !(x > 0) || x * mult > 9e18) {
        fprintf(stderr, "loom: %s: expected a size in bytes (e.g. 1073741824 or 4GiB), got '%s'\n", flag, val);
        return -1;
    }
    *out = (int64_t)(x * mult);
    return 0;
}

int loom_cli_common_flag(int argc, char **argv, int *i, struct loom_engine_options *o)
{
    const char *f = argv[*i], *v;
    long long n;
    double d;
#define VALUE()                                                                                          \
    do {                                                                                                 \
        if (!(v = loom_cli_value(argc, argv, i))) return -1;                                             \
    } while (0)
    if (!strcmp(f, "--device")) {
        VALUE();
        if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
            fprintf(stderr, "loom: --device: expected cpu or cuda, got '%s'\n", v);
            return -1;
        }
        o->device = v;
    } else if (!strcmp(f, "--dtype")) {
        VALUE();
        if (strcmp(v, "auto") && strcmp(v, "float32") && strcmp(v, "bfloat16") && strcmp(v, "float16")) {
            fprintf(stderr, "loom: --dtype: expected auto, float32, bfloat16 or float16, got '%s'\n", v);
            return -1;
        }
        o->dtype = v;
    } else if (!strcmp(f, "--threads")) {
        VALUE();
        if (loom_cli_int(f, v, 0, 1024, &n)) return -1;
        o->threads = (int)n;
    } else if (!strcmp(f, "--max-model-len")) {
        VALUE();
        if (loom_cli_int(f, v, 1, 1 << 24, &n)) return -1;
        o->max_model_len = (int)n;
    } else if (!strcmp(f, "--max-num-seqs")) {
        VALUE();
        if (loom_cli_int(f, v, 1, 65536, &n)) return -1;
        o->max_num_seqs = (int)n;
    } else if (!strcmp(f, "--max-num-batched-tokens")) {
        VALUE();
        if (loom_cli_int(f, v, 1, 1 << 22, &n)) return -1;
        o->max_num_batched_tokens = (int)n;
    } else if (!strcmp(f, "--block-size")) {
        VALUE();
        if (loom_cli_int(f, v, 1, 1024, &n)) return -1;
        o->block_size = (int)n;
    } else if (!strcmp(f, "--kv-cache-memory")) {
        VALUE();
        if (parse_bytes(f, v, &o->kv_cache_memory)) return -1;
    } else if (!strcmp(f, "--num-kv-blocks")) {
        VALUE();
        if (loom_cli_int(f, v, 1, 1 << 26, &n)) return -1;
        o->num_kv_blocks = (int)n;
    } else if (!strcmp(f, "--gpu-memory-utilization")) {
        VALUE();
        if (loom_cli_float(f, v, 0.01, 1.0, &d)) return -1;
        o->gpu_memory_utilization = (float)d;
    } else if (!strcmp(f, "--enable-prefix-caching")) {
        o->enable_prefix_caching = true;
    } else if (!strcmp(f, "--no-enable-prefix-caching")) {
        o->enable_prefix_caching = false;
    } else if (!strcmp(f, "--seed")) {
        VALUE();
        if (loom_cli_int(f, v, 0, (long long)9e18, &n)) return -1;
        o->seed = (uint64_t)n;
    } else if (!strcmp(f, "--scheduling-policy")) {
        VALUE();
        if (!strcmp(v, "fcfs")) o->policy = LOOM_SCHED_FCFS;
        else if (!strcmp(v, "priority")) o->policy = LOOM_SCHED_PRIORITY;
        else {
            fprintf(stderr, "loom: --scheduling-policy: expected fcfs or priority, got '%s'\n", v);
            return -1;
        }
    } else if (!strcmp(f, "--tokenizer")) {
        VALUE();
        o->tokenizer_dir = v;
    } else {
        return 0;
    }
#undef VALUE
    return 1;
}
