/*
 * report.h: what makes a `loom bench` result comparable later: the machine (CPU model, cores, memory,
 * NVIDIA GPUs), the source revision (git commit read from LOOM_SOURCE_DIR/.git at run time, or `git`),
 * the command line, and helpers that put a metric summary into the JSON and the stdout table.
 * Reads /proc and .git; writes only the file it is asked to write.
 */
#ifndef LOOM_BENCH_REPORT_H
#define LOOM_BENCH_REPORT_H

#include "bench/metrics.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

/* {"cpu_model", "cpu_cores", "memory_bytes", "kernel", "gpus": [names]} */
json_t *loom_bench_machine_json(void);
/* The first NVIDIA GPU's name from /proc/driver/nvidia (no CUDA call), or NULL. Caller frees. */
char *loom_bench_gpu_name(void);
/* Sum of the sizes of dir/ *.safetensors (0 if none): the weight bytes a decode step reads, roughly. */
int64_t loom_bench_weight_bytes(const char *model_dir);
/* {"commit": "40 hex" | null, "dirty": true | false | null, "source_dir"} */
json_t *loom_bench_git_json(void);
/* The git commit of the source tree loom was built from, or NULL (caller frees). */
char *loom_bench_git_commit(const char *source_dir);
/* {"path", "built"}: the running binary and its modification time (the commit above is read at run time,
 * so a binary older than the checkout's HEAD shows up here). */
json_t *loom_bench_binary_json(void);
/* argv as a JSON array. */
json_t *loom_bench_argv_json(int argc, char **argv);
/* UTC time now, ISO 8601. */
void loom_bench_timestamp(char *buf, size_t cap);

/* Adds vLLM-style keys for one metric to obj: mean_<name>_ms, median_<name>_ms, std_<name>_ms and
 * p<q>_<name>_ms (q written as vLLM writes it: "99", "99.9"). The stat is in seconds. */
void loom_bench_stat_to_json(json_t *obj, const char *name, const struct loom_bench_stat *st, const double *pcts,
                             int n_pct);
/* "99" for 99.0, "99.9" for 99.9 */
void loom_bench_pct_word(double q, char *buf, size_t cap);

/* Writes obj (indented) to path; LOOM_EIO on failure. */
int loom_bench_write_json(const char *path, json_t *obj);

/* vLLM's table lines: "{:<40} {:<10}" */
void loom_bench_line_int(FILE *f, const char *label, long long v);
void loom_bench_line_float(FILE *f, const char *label, double v);
void loom_bench_line_str(FILE *f, const char *label, const char *v);
/* A centred title padded with c to 50 columns: "===== title =====". */
void loom_bench_title(FILE *f, const char *title, char c);

#endif
