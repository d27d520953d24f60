/*
 * test_bench_offline.c: `loom bench throughput` and `loom bench latency` (src/bench/offline.c) on the tiny
 * Qwen2 model of ../shared: exact token accounting (ignore_eos makes every output length exact), the step
 * bookkeeping of the latency benchmark (one prefill, then output_len - 1 decode steps per iteration), and
 * the error paths (a missing model, a prompt longer than the context).
 */
#include "bench/dataset.h"
#include "bench/offline.h"
#include "core/error.h"
#include "core/log.h"
#include "test.h"

static void engine_opts(struct loom_engine_options *o)
{
    loom_engine_options_default(o);
    o->model_dir = test_shared("models/qwen2-tiny");
    o->threads = 2;
    o->num_kv_blocks = 256; /* 4096 tokens: small and quick to allocate */
}

static void test_throughput(void)
{
    struct loom_engine_options eo;
    engine_opts(&eo);
    struct loom_bench_throughput_config c = {.engine = &eo, .num_prompts = 6, .input_len = 12, .output_len = 5,
                                             .temperature = 1.0, .seed = 3};
    struct loom_bench_throughput_result r;
    CHECK_MSG(loom_bench_throughput_run(&c, &r) == 0, "%s", loom_last_error());
    CHECK_EQ_INT(r.num_requests, 6);
    CHECK_EQ_INT(r.failed, 0);
    CHECK_EQ_INT(r.prompt_tokens, 6 * 12);
    CHECK_EQ_INT(r.output_tokens, 6 * 5);
    CHECK_EQ_INT(r.vocab_size, 512);
    CHECK(r.elapsed_s > 0);
    CHECK_NEAR(r.output_tokens_per_s, 30 / r.elapsed_s, 1e-6);
    CHECK_NEAR(r.total_tokens_per_s, 102 / r.elapsed_s, 1e-6);
    CHECK_NEAR(r.requests_per_s, 6 / r.elapsed_s, 1e-6);
    CHECK(r.stats.num_steps >= 5); /* at least one step per output token */

    /* random lengths: every length in its range, the totals still exact */
    c.range_ratio = 0.5;
    c.num_prompts = 8;
    struct loom_bench_dataset d;
    loom_bench_dataset_random_ids(&d, 8, 12, 5, 0.5, 512, 3);
    long long in = 0, out = 0;
    for (int i = 0; i < d.n; i++) {
        in += d.items[i].n_ids;
        out += d.items[i].output_len;
        CHECK(d.items[i].n_ids >= 6 && d.items[i].n_ids <= 18);
    }
    c.dataset = &d;
    CHECK(loom_bench_throughput_run(&c, &r) == 0);
    CHECK_EQ_INT(r.prompt_tokens, in);
    CHECK_EQ_INT(r.output_tokens, out);
    loom_bench_dataset_free(&d);

    /* a prompt that can never fit: a clear error, nothing hangs */
    c.dataset = NULL;
    c.input_len = 5000;
    c.num_prompts = 2;
    CHECK(loom_bench_throughput_run(&c, &r) < 0);
    CHECK(strstr(loom_last_error(), "max_model_len") != NULL);
    eo.model_dir = "/nonexistent/model";
    CHECK(loom_bench_throughput_run(&c, &r) < 0);
    CHECK(strstr(loom_last_error(), "/nonexistent/model") != NULL);
}

static void test_latency(void)
{
    struct loom_engine_options eo;
    engine_opts(&eo);
    struct loom_bench_latency_config c = {.engine = &eo, .batch_size = 3, .input_len = 10, .output_len = 6,
                                          .num_iters_warmup = 1, .num_iters = 4, .temperature = 1.0};
    struct loom_bench_latency_result r;
    CHECK_MSG(loom_bench_latency_run(&c, &r) == 0, "%s", loom_last_error());
    CHECK_EQ_INT(r.num_iters, 4);
    /* the prefill step gives each sequence its first token; 5 more steps give the other 5 */
    CHECK_EQ_INT(r.n_decode_steps, 4 * 5);
    double steps = 0;
    for (int i = 0; i < r.n_decode_steps; i++) steps += r.decode_step_s[i];
    double total = 0;
    for (int i = 0; i < 4; i++) {
        CHECK(r.prefill_s[i] > 0);
        CHECK(r.e2e_s[i] >= r.prefill_s[i]);
        total += r.e2e_s[i] - r.prefill_s[i];
    }
    CHECK(steps <= total + 1e-9); /* the timed steps fit inside the iterations' decode phases */
    CHECK(r.weight_bytes > 0);
    /* 4 warm-up + measured batches of 3 requests, 6 tokens each, went through the engine */
    CHECK_EQ_INT(r.stats.generation_tokens_total, 5 * 3 * 6);
    loom_bench_latency_result_free(&r);

    c.input_len = 4096;
    CHECK(loom_bench_latency_run(&c, &r) < 0);
    loom_bench_latency_result_free(&r);
}

int main(void)
{
    loom_log_set_level(LOOM_LOG_WARN);
    test_throughput();
    test_latency();
    return test_report();
}
