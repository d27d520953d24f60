/*
 * offline.h: `loom bench throughput` and `loom bench latency`, run in-process against the engine
 * (include/loom.h) on the calling thread, after vLLM's benchmark_throughput and benchmark_latency.
 *
 * throughput: every request is added at once (prompts of random token ids, or a JSONL dataset), the
 *   engine steps until all finish; requests/s, total tokens/s and output tokens/s over that wall time.
 * latency: a fixed batch, repeated; per iteration the prefill time (add -> every sequence has its first
 *   token: the batch's TTFT), the time of each later step (one decode token per sequence) and the
 *   end-to-end time. Fresh random prompts each iteration, so the prefix cache never shortens a prefill.
 * Both sample as vLLM's benchmarks do (temperature 1, top_p 1, ignore_eos: output lengths are exact).
 */
#ifndef LOOM_BENCH_OFFLINE_H
#define LOOM_BENCH_OFFLINE_H

#include "bench/dataset.h"
#include "bench/metrics.h"
#include "loom.h"

#include <stdbool.h>
#include <stdint.h>

struct loom_bench_throughput_config {
    const struct loom_engine_options *engine;
    const struct loom_bench_dataset *dataset; /* NULL: random ids from the lengths below */
    int num_prompts;
    int input_len, output_len;
    double range_ratio;
    double temperature;
    uint64_t seed;
    bool progress;
};

struct loom_bench_throughput_result {
    int num_requests, failed;
    long long prompt_tokens, output_tokens;
    double engine_init_s;       /* loom_engine_create */
    double elapsed_s;           /* first add -> last finish */
    double requests_per_s, total_tokens_per_s, output_tokens_per_s;
    struct loom_engine_stats stats; /* after the run */
    int vocab_size, max_model_len;
};

int loom_bench_throughput_run(const struct loom_bench_throughput_config *cfg, struct loom_bench_throughput_result *res);

struct loom_bench_latency_config {
    const struct loom_engine_options *engine;
    int batch_size, input_len, output_len;
    int num_iters_warmup, num_iters;
    double temperature;
    uint64_t seed;
    bool progress;
};

struct loom_bench_latency_result {
    int num_iters;
    double *prefill_s;          /* [num_iters] add -> every sequence has its first token */
    double *e2e_s;              /* [num_iters] add -> every sequence finished */
    double *decode_step_s;      /* [n_decode_steps] every step after the prefill, all iterations */
    int n_decode_steps;
    double engine_init_s;
    int64_t weight_bytes;       /* sum of the model's *.safetensors sizes (what a decode step reads, roughly) */
    struct loom_engine_stats stats;
};

int loom_bench_latency_run(const struct loom_bench_latency_config *cfg, struct loom_bench_latency_result *res);
void loom_bench_latency_result_free(struct loom_bench_latency_result *res);

#endif
