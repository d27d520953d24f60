/*
 * dataset.h: the workloads of `loom bench`: seeded random prompts (token ids or words) with lengths
 * drawn as vLLM's random dataset draws them, prompts read from a JSONL file, and the arrival times of
 * a Poisson (or gamma) process. Deterministic for a given seed; no I/O except reading the JSONL file.
 */
#ifndef LOOM_BENCH_DATASET_H
#define LOOM_BENCH_DATASET_H

#include <stdbool.h>
#include <stdint.h>

/* xoshiro256** seeded through splitmix64. */
struct loom_bench_rng {
    uint64_t s[4];
};
void loom_bench_rng_seed(struct loom_bench_rng *r, uint64_t seed);
uint64_t loom_bench_rng_next(struct loom_bench_rng *r);
double loom_bench_rng_uniform(struct loom_bench_rng *r);             /* [0, 1) */
int64_t loom_bench_rng_int(struct loom_bench_rng *r, int64_t lo, int64_t hi); /* [lo, hi] inclusive */
double loom_bench_rng_exponential(struct loom_bench_rng *r, double mean);
double loom_bench_rng_gamma(struct loom_bench_rng *r, double shape, double scale);

/* One request of a workload. */
struct loom_bench_prompt {
    int32_t *ids;       /* [n_ids] token ids, or NULL for a text prompt */
    int n_ids;
    char *text;         /* the text prompt (NUL-terminated), or NULL for an id prompt */
    int prompt_len;     /* tokens: exact for ids; for text the file's "prompt_len" or an estimate (0 = unknown) */
    bool prompt_len_exact;
    int output_len;     /* max_tokens to ask for */
};

struct loom_bench_dataset {
    struct loom_bench_prompt *items;
    int n;
};

/* vLLM's random-length draw: uniform integer in [floor(len * (1 - ratio)), ceil(len * (1 + ratio))],
 * at least 1 (ratio in [0, 1)). */
int loom_bench_draw_len(struct loom_bench_rng *r, int len, double range_ratio);

/* n prompts of random token ids in [0, vocab_size) with lengths drawn around input_len/output_len. */
void loom_bench_dataset_random_ids(struct loom_bench_dataset *d, int n, int input_len, int output_len,
                                   double range_ratio, int vocab_size, uint64_t seed);
/* n prompts of random common English words, input_len words each (about one token per word in BPE
 * vocabularies: prompt_len is an estimate, not exact). */
void loom_bench_dataset_random_text(struct loom_bench_dataset *d, int n, int input_len, int output_len,
                                    double range_ratio, uint64_t seed);
/* One JSON object per line: {"prompt": "text" | [ids...], "output_len" | "max_tokens": N, "prompt_len": N}.
 * Lines without an output length get default_output_len. Takes the first n lines (n <= 0: all); when the
 * file has fewer than n, it cycles through them. LOOM_EINVAL names the line on bad input. */
int loom_bench_dataset_jsonl(struct loom_bench_dataset *d, const char *path, int n, int default_output_len);
void loom_bench_dataset_free(struct loom_bench_dataset *d);

/* Arrival offsets (seconds from the start, non-decreasing) of n requests: all 0 for an infinite rate,
 * else gamma(burstiness, 1 / (rate * burstiness)) gaps (burstiness 1 = Poisson), rescaled as vLLM does
 * so that the last arrival is at exactly n / rate. out has n entries. */
void loom_bench_arrivals(double *out, int n, double rate, double burstiness, uint64_t seed);

#endif
