/*
 * cmd_tokenize.c: `loom tokenize` (text -> JSON array of ids; text from --text or all of stdin;
 * --bench FILE measures single-threaded encoding throughput) and `loom detokenize` (ids -> text,
 * written exactly, with no newline added). Both read MODEL_DIR/tokenizer.json (+ tokenizer_config.json).
 */
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"
#include "tokenizer/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void tokenize_usage(FILE *f)
{
    fprintf(f, "usage: loom tokenize MODEL_DIR [--text TEXT] [--add-special-tokens]\n"
               "       loom tokenize MODEL_DIR --bench FILE [--repeat N] [--add-special-tokens]\n"
               "Prints the token ids of TEXT (or of all of stdin) as a JSON array. --bench encodes FILE\n"
               "N times (default: as many as fit in about 2 seconds) on one thread and prints MB/s.\n");
}

static int read_stdin(char **data, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = loom_malloc(cap + 1);
    size_t got;
    while ((got = fread(b + n, 1, cap - n, stdin)) > 0) {
        n += got;
        if (n == cap) b = loom_realloc(b, (cap *= 2) + 1);
    }
    if (ferror(stdin)) {
        free(b);
        return loom_fail(LOOM_EIO, "cannot read stdin");
    }
    b[n] = 0;
    *data = b;
    *len = n;
    return 0;
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int bench(struct loom_tokenizer *t, const char *file, long long repeat, bool add_special, double load_s)
{
    char *data;
    size_t len;
    if (loom_read_file(file, &data, &len)) {
        fprintf(stderr, "loom: %s\n", loom_last_error());
        return 1;
    }
    int32_t *ids;
    int n = 0;
    /* one untimed pass: checks the input and warms the caches */
    if (loom_tokenizer_encode(t, data, len, add_special, &ids, &n)) {
        fprintf(stderr, "loom: %s: %s\n", file, loom_last_error());
        free(data);
        return 1;
    }
    free(ids);
    long long done = 0;
    double t0 = loom_now(), el = 0, c0 = cpu_now();
    for (;;) {
        if (repeat > 0 && done >= repeat) break;
        if (repeat <= 0 && done > 0 && el >= 2.0) break;
        if (loom_tokenizer_encode(t, data, len, add_special, &ids, &n)) {
            fprintf(stderr, "loom: %s\n", loom_last_error());
            free(data);
            return 1;
        }
        free(ids);
        done++;
        el = loom_now() - t0;
    }
    double cpu = cpu_now() - c0;
    double mb = (double)len * (double)done / 1e6;
    /* cpu_mb_per_s: the same over this thread's CPU time, steady when other processes share the cores */
    printf("{\"file\": \"%s\", \"bytes\": %zu, \"tokens\": %d, \"repeats\": %lld, \"seconds\": %.6f, "
           "\"mb_per_s\": %.2f, \"cpu_mb_per_s\": %.2f, \"tokens_per_s\": %.0f, \"load_ms\": %.1f}\n",
           file, len, n, done, el, el > 0 ? mb / el : 0.0, cpu > 0 ? mb / cpu : 0.0,
           el > 0 ? (double)n * (double)done / el : 0.0, load_s * 1e3);
    free(data);
    return 0;
}

int loom_cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL, *text = NULL, *bench_file = NULL;
    bool add_special = false;
    long long repeat = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            tokenize_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--text")) {
            if (!(text = loom_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--add-special-tokens")) {
            add_special = true;
        } else if (!strcmp(a, "--bench")) {
            if (!(bench_file = loom_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--repeat")) {
            const char *v = loom_cli_value(argc, argv, &i);
            if (!v || loom_cli_int(a, v, 1, 1000000000, &repeat)) return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom tokenize: unknown flag '%s'\n", a);
            tokenize_usage(stderr);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "loom tokenize: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!dir) {
        tokenize_usage(stderr);
        return 2;
    }
    if (bench_file && text) {
        fprintf(stderr, "loom tokenize: --bench and --text exclude each other\n");
        return 2;
    }
    struct loom_tokenizer *t;
    double t0 = loom_now();
    if (loom_tokenizer_load(dir, &t)) {
        fprintf(stderr, "loom: %s\n", loom_last_error());
        return 1;
    }
    double load_s = loom_now() - t0;
    int rc = 0;
    if (bench_file) {
        rc = bench(t, bench_file, repeat, add_special, load_s);
        loom_tokenizer_free(t);
        return rc;
    }
    char *buf = NULL;
    size_t len = 0;
    if (text) {
        len = strlen(text);
    } else {
        if (read_stdin(&buf, &len)) {
            fprintf(stderr, "loom: %s\n", loom_last_error());
            loom_tokenizer_free(t);
            return 1;
        }
        text = buf;
    }
    int32_t *ids;
    int n;
    if (loom_tokenizer_encode(t, text, len, add_special, &ids, &n)) {
        fprintf(stderr, "loom: %s\n", loom_last_error());
        rc = 1;
    } else {
        putchar('[');
        for (int i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        printf("]\n");
        free(ids);
    }
    free(buf);
    loom_tokenizer_free(t);
    return rc;
}

static void detokenize_usage(FILE *f)
{
    fprintf(f, "usage: loom detokenize MODEL_DIR --ids 1,2,3 [--skip-special-tokens]\n"
               "Prints the text of the ids exactly (no newline is added). --ids also takes a JSON array.\n");
}

int loom_cmd_detokenize(int argc, char **argv)
{
    const char *dir = NULL, *ids_s = NULL;
    bool skip = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            detokenize_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--ids")) {
            if (!(ids_s = loom_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--skip-special-tokens")) {
            skip = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom detokenize: unknown flag '%s'\n", a);
            detokenize_usage(stderr);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "loom detokenize: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!dir || !ids_s) {
        detokenize_usage(stderr);
        return 2;
    }
    int32_t *ids;
    int n;
    if (loom_parse_int_list(ids_s, &ids, &n)) {
        fprintf(stderr, "loom detokenize: --ids: %s\n", loom_last_error());
        return 2;
    }
    struct loom_tokenizer *t;
    if (loom_tokenizer_load(dir, &t)) {
        fprintf(stderr, "loom: %s\n", loom_last_error());
        free(ids);
        return 1;
    }
    char *text;
    size_t len;
    int rc = 0;
    if (loom_tokenizer_decode(t, ids, n, skip, &text, &len)) {
        fprintf(stderr, "loom: %s\n", loom_last_error());
        rc = 1;
    } else {
        fwrite(text, 1, len, stdout);
        fflush(stdout);
        free(text);
    }
    free(ids);
    loom_tokenizer_free(t);
    return rc;
}
