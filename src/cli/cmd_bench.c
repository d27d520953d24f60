/*
 * cmd_bench.c: `loom bench throughput|latency|serve`, the benchmarks of vLLM with vLLM's metric
 * definitions (src/bench/metrics.h). Each prints a progress bar on stderr, a table on stdout and, with
 * --json FILE, every figure plus the exact configuration (model, device, flags, git commit, machine).
 * This file parses flags and formats results; the measuring lives in src/bench/.
 */
#include "bench/dataset.h"
#include "bench/metrics.h"
#include "bench/offline.h"
#include "bench/report.h"
#include "bench/serve.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage_bench(FILE *f)
{
    fprintf(f,
            "usage: loom bench throughput MODEL_DIR [--input-len N] [--output-len N] [--num-prompts N]\n"
            "                  [--random-range-ratio R] [--dataset-path FILE.jsonl] [--json FILE] [engine flags]\n"
            "       loom bench latency MODEL_DIR [--batch-size N] [--input-len N] [--output-len N]\n"
            "                  [--num-iters-warmup N] [--num-iters N] [--json FILE] [engine flags]\n"
            "       loom bench serve [--base-url URL | --host H --port P] [--endpoint /v1/completions]\n"
            "                  [--model NAME] [--num-prompts N] [--random-input-len N] [--random-output-len N]\n"
            "                  [--random-range-ratio R] [--random-prompt-type ids|text] [--vocab-size N]\n"
            "                  [--tokenizer DIR] [--dataset-path FILE.jsonl] [--request-rate R|inf]\n"
            "                  [--burstiness B] [--max-concurrency N] [--ignore-eos] [--temperature T]\n"
            "                  [--goodput ttft:MS tpot:MS e2el:MS] [--percentile-metrics ttft,tpot,itl,e2el]\n"
            "                  [--metric-percentiles 50,90,99] [--timeout S] [--request-timeout S]\n"
            "                  [--api-key KEY] [--json FILE] [--save-detailed]\n"
            "common: --seed S  --no-progress  --json FILE\n"
            "engine flags (throughput, latency): --device --dtype --threads --max-model-len --max-num-seqs\n"
            "  --max-num-batched-tokens --block-size --kv-cache-memory --num-kv-blocks --gpu-memory-utilization\n"
            "  --enable-prefix-caching --no-enable-prefix-caching\n"
            "Metric definitions and examples: bench/README.md.\n");
}

static volatile int g_stop;
static void on_sigint(int sig)
{
    (void)sig;
    if (g_stop) _exit(130); /* a second Ctrl-C: leave at once */
    g_stop = 1;
}

#define VAL()                                                                                            \
    do {                                                                                                 \
        if (!(v = loom_cli_value(argc, argv, &i))) return 2;                                             \
    } while (0)
#define INT_FLAG(name, lo, hi, dst)                                                                      \
    else if (!strcmp(f, name))                                                                           \
    {                                                                                                    \
        long long x_;                                                                                    \
        VAL();                                                                                           \
        if (loom_cli_int(f, v, lo, hi, &x_)) return 2;                                                   \
        dst = (int)x_;                                                                                   \
    }

/* JSON of the engine options, for the record */
static json_t *engine_json(const struct loom_engine_options *o)
{
    json_t *j = json_object();
    json_object_set_new(j, "model_dir", json_string(o->model_dir ? o->model_dir : ""));
    json_object_set_new(j, "device", json_string(o->device ? o->device : "cpu"));
    json_object_set_new(j, "dtype", json_string(o->dtype ? o->dtype : "auto"));
    json_object_set_new(j, "threads", json_integer(o->threads));
    json_object_set_new(j, "max_model_len", json_integer(o->max_model_len));
    json_object_set_new(j, "max_num_seqs", json_integer(o->max_num_seqs));
    json_object_set_new(j, "max_num_batched_tokens", json_integer(o->max_num_batched_tokens));
    json_object_set_new(j, "block_size", json_integer(o->block_size));
    json_object_set_new(j, "kv_cache_memory", json_integer(o->kv_cache_memory));
    json_object_set_new(j, "num_kv_blocks", json_integer(o->num_kv_blocks));
    json_object_set_new(j, "gpu_memory_utilization", json_real(round(o->gpu_memory_utilization * 1e6) / 1e6));
    json_object_set_new(j, "enable_prefix_caching", json_boolean(o->enable_prefix_caching));
    json_object_set_new(j, "seed", json_integer((json_int_t)o->seed));
    return j;
}

/* config.json facts worth recording: architectures[0], sizes, dtype */
static json_t *model_json(const char *dir)
{
    json_t *m = json_object();
    json_object_set_new(m, "dir", json_string(dir));
    char *p = loom_path_join(dir, "config.json");
    json_t *c = json_load_file(p, 0, NULL);
    free(p);
    if (c) {
        json_t *arch = json_array_get(json_object_get(c, "architectures"), 0);
        if (arch) json_object_set(m, "architecture", arch);
        const char *keys[] = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                              "intermediate_size", "vocab_size", "torch_dtype", "num_experts",
                              "num_local_experts"};
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            json_t *v = json_object_get(c, keys[k]);
            if (v) json_object_set(m, keys[k], v);
        }
        json_decref(c);
    }
    json_object_set_new(m, "weight_bytes", json_integer(loom_bench_weight_bytes(dir)));
    return m;
}

static json_t *record_base(const char *kind, int argc, char **argv)
{
    json_t *root = json_object();
    char ts[64];
    loom_bench_timestamp(ts, sizeof(ts));
    json_object_set_new(root, "benchmark", json_string(kind));
    json_object_set_new(root, "date", json_string(ts));
    json_object_set_new(root, "loom_version", json_string(LOOM_VERSION));
    json_object_set_new(root, "argv", loom_bench_argv_json(argc, argv));
    json_object_set_new(root, "git", loom_bench_git_json());
    json_object_set_new(root, "binary", loom_bench_binary_json());
    json_object_set_new(root, "machine", loom_bench_machine_json());
    return root;
}

static int finish_json(json_t *root, const char *path)
{
    int rc = 0;
    if (path) {
        if (loom_bench_write_json(path, root)) {
            fprintf(stderr, "loom: bench: %s\n", loom_last_error());
            rc = 1;
        } else {
            fprintf(stderr, "loom: bench: wrote %s\n", path);
        }
    }
    json_decref(root);
    return rc;
}

static void print_device(const struct loom_engine_options *o)
{
    const char *dev = o->device ? o->device : "cpu";
    char *gpu = !strcmp(dev, "cuda") ? loom_bench_gpu_name() : NULL;
    char buf[300];
    snprintf(buf, sizeof(buf), "%s%s%s%s", dev, gpu ? " (" : "", gpu ? gpu : "", gpu ? ")" : "");
    loom_bench_line_str(stdout, "Device:", buf);
    free(gpu);
}

/* A word that is not a known flag: an unknown flag is an error, the first other word is MODEL_DIR and a
 * second one is an error. Returns nonzero (after a message) on an error. */
static int positional_arg(const char *bench, const char *f, const char **model_dir)
{
    if (f[0] == '-') {
        fprintf(stderr, "loom: bench %s: unknown flag %s\n", bench, f);
        return 1;
    }
    if (*model_dir) {
        fprintf(stderr, "loom: bench %s: one MODEL_DIR only (got '%s' too)\n", bench, f);
        return 1;
    }
    *model_dir = f;
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* throughput */

static int bench_throughput(int argc, char **argv)
{
    struct loom_engine_options eo;
    loom_engine_options_default(&eo);
    struct loom_bench_throughput_config cfg = {.engine = &eo, .num_prompts = 1000, .input_len = 1024,
                                               .output_len = 128, .temperature = 1.0, .progress = true};
    const char *json_path = NULL, *dataset_path = NULL;
    const char *v;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        int c = loom_cli_common_flag(argc, argv, &i, &eo);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage_bench(stdout);
            return 0;
        }
        INT_FLAG("--input-len", 1, 1 << 24, cfg.input_len)
        INT_FLAG("--output-len", 1, 1 << 24, cfg.output_len)
        INT_FLAG("--num-prompts", 1, 10000000, cfg.num_prompts)
        else if (!strcmp(f, "--random-range-ratio")) {
            VAL();
            if (loom_cli_float(f, v, 0, 0.999, &cfg.range_ratio)) return 2;
        } else if (!strcmp(f, "--temperature")) {
            VAL();
            if (loom_cli_float(f, v, 0, 100, &cfg.temperature)) return 2;
        } else if (!strcmp(f, "--dataset-path")) {
            VAL();
            dataset_path = v;
        } else if (!strcmp(f, "--json")) {
            VAL();
            json_path = v;
        } else if (!strcmp(f, "--no-progress") || !strcmp(f, "--disable-tqdm")) {
            cfg.progress = false;
        } else if (positional_arg("throughput", f, &eo.model_dir)) {
            return 2;
        }
    }
    if (!eo.model_dir) {
        fprintf(stderr, "loom: bench throughput: MODEL_DIR is missing\n");
        usage_bench(stderr);
        return 2;
    }
    cfg.seed = eo.seed;
    struct loom_bench_dataset ds = {0};
    if (dataset_path) {
        if (loom_bench_dataset_jsonl(&ds, dataset_path, cfg.num_prompts, cfg.output_len)) {
            fprintf(stderr, "loom: bench throughput: %s\n", loom_last_error());
            return 2;
        }
        cfg.dataset = &ds;
    }
    struct loom_bench_throughput_result r;
    int rc = loom_bench_throughput_run(&cfg, &r);
    loom_bench_dataset_free(&ds);
    if (rc) {
        fprintf(stderr, "loom: bench throughput: %s\n", loom_last_error());
        return 1;
    }
    loom_bench_title(stdout, " Throughput Benchmark Result ", '=');
    loom_bench_line_str(stdout, "Model:", eo.model_dir);
    print_device(&eo);
    loom_bench_line_int(stdout, "Requests:", r.num_requests);
    loom_bench_line_int(stdout, "Failed requests:", r.failed);
    loom_bench_line_float(stdout, "Engine start-up (s):", r.engine_init_s);
    loom_bench_line_float(stdout, "Elapsed (s):", r.elapsed_s);
    loom_bench_line_int(stdout, "Total prompt tokens:", r.prompt_tokens);
    loom_bench_line_int(stdout, "Total generated tokens:", r.output_tokens);
    loom_bench_line_float(stdout, "Request throughput (req/s):", r.requests_per_s);
    loom_bench_line_float(stdout, "Output token throughput (tok/s):", r.output_tokens_per_s);
    loom_bench_line_float(stdout, "Total token throughput (tok/s):", r.total_tokens_per_s);
    loom_bench_line_int(stdout, "Engine steps:", r.stats.num_steps);
    loom_bench_line_int(stdout, "Preemptions:", r.stats.num_preemptions);
    loom_bench_title(stdout, "", '=');
    /* vLLM's one-line summary, so scripts that grep it keep working */
    printf("Throughput: %.2f requests/s, %.2f total tokens/s, %.2f output tokens/s\n", r.requests_per_s,
           r.total_tokens_per_s, r.output_tokens_per_s);
    fflush(stdout);

    json_t *root = record_base("throughput", argc, argv);
    json_t *conf = json_object();
    json_object_set_new(conf, "num_prompts", json_integer(cfg.num_prompts));
    json_object_set_new(conf, "input_len", json_integer(cfg.input_len));
    json_object_set_new(conf, "output_len", json_integer(cfg.output_len));
    json_object_set_new(conf, "random_range_ratio", json_real(cfg.range_ratio));
    json_object_set_new(conf, "dataset_path", dataset_path ? json_string(dataset_path) : json_null());
    json_object_set_new(conf, "temperature", json_real(cfg.temperature));
    json_object_set_new(conf, "ignore_eos", json_true());
    json_object_set_new(conf, "engine", engine_json(&eo));
    json_object_set_new(root, "config", conf);
    json_object_set_new(root, "model", model_json(eo.model_dir));
    json_object_set_new(root, "device", json_string(eo.device ? eo.device : "cpu"));
    json_object_set_new(root, "num_requests", json_integer(r.num_requests));
    json_object_set_new(root, "failed", json_integer(r.failed));
    json_object_set_new(root, "concurrency",
                        json_integer(r.num_requests < eo.max_num_seqs || eo.max_num_seqs <= 0 ? r.num_requests
                                                                                              : eo.max_num_seqs));
    json_object_set_new(root, "engine_init_s", json_real(r.engine_init_s));
    json_object_set_new(root, "elapsed_time", json_real(r.elapsed_s));
    json_object_set_new(root, "total_prompt_tokens", json_integer(r.prompt_tokens));
    json_object_set_new(root, "total_output_tokens", json_integer(r.output_tokens));
    json_object_set_new(root, "total_num_tokens", json_integer(r.prompt_tokens + r.output_tokens));
    json_object_set_new(root, "requests_per_second", json_real(r.requests_per_s));
    json_object_set_new(root, "tokens_per_second", json_real(r.total_tokens_per_s));
    json_object_set_new(root, "output_tokens_per_second", json_real(r.output_tokens_per_s));
    json_object_set_new(root, "engine_steps", json_integer(r.stats.num_steps));
    json_object_set_new(root, "preemptions", json_integer(r.stats.num_preemptions));
    json_object_set_new(root, "num_kv_blocks", json_integer(r.stats.num_kv_blocks));
    return finish_json(root, json_path);
}

/* ------------------------------------------------------------------------------------------------ */
/* latency */

static const double latency_pcts[] = {10, 25, 50, 75, 90, 99};
#define N_LAT_PCT ((int)(sizeof(latency_pcts) / sizeof(latency_pcts[0])))

static void print_stat_ms(const char *what, const struct loom_bench_stat *st)
{
    char label[96], w[16];
    snprintf(label, sizeof(label), "Mean %s (ms):", what);
    loom_bench_line_float(stdout, label, st->mean * 1000);
    for (int i = 0; i < N_LAT_PCT; i++) {
        loom_bench_pct_word(latency_pcts[i], w, sizeof(w));
        snprintf(label, sizeof(label), "P%s %s (ms):", w, what);
        loom_bench_line_float(stdout, label, st->pct[i] * 1000);
    }
}

static json_t *stat_json_ms(const struct loom_bench_stat *st, const double *pcts, int n_pct)
{
    json_t *o = json_object();
    char key[32], w[16];
    json_object_set_new(o, "n", json_integer(st->n));
    json_object_set_new(o, "mean_ms", json_real(st->mean * 1000));
    json_object_set_new(o, "median_ms", json_real(st->median * 1000));
    json_object_set_new(o, "std_ms", json_real(st->std * 1000));
    json_object_set_new(o, "min_ms", json_real(st->min * 1000));
    json_object_set_new(o, "max_ms", json_real(st->max * 1000));
    for (int i = 0; i < n_pct; i++) {
        loom_bench_pct_word(pcts[i], w, sizeof(w));
        snprintf(key, sizeof(key), "p%s_ms", w);
        json_object_set_new(o, key, json_real(st->pct[i] * 1000));
    }
    return o;
}

static int bench_latency(int argc, char **argv)
{
    struct loom_engine_options eo;
    loom_engine_options_default(&eo);
    struct loom_bench_latency_config cfg = {.engine = &eo, .batch_size = 8, .input_len = 32, .output_len = 128,
                                            .num_iters_warmup = 10, .num_iters = 30, .temperature = 1.0,
                                            .progress = true};
    const char *json_path = NULL;
    const char *v;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        int c = loom_cli_common_flag(argc, argv, &i, &eo);
        if (c < 0) return 2;
        if (c > 0) continue;
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage_bench(stdout);
            return 0;
        }
        INT_FLAG("--batch-size", 1, 65536, cfg.batch_size)
        INT_FLAG("--input-len", 1, 1 << 24, cfg.input_len)
        INT_FLAG("--output-len", 1, 1 << 24, cfg.output_len)
        INT_FLAG("--num-iters-warmup", 0, 1000000, cfg.num_iters_warmup)
        INT_FLAG("--num-iters", 1, 1000000, cfg.num_iters)
        else if (!strcmp(f, "--temperature")) {
            VAL();
            if (loom_cli_float(f, v, 0, 100, &cfg.temperature)) return 2;
        } else if (!strcmp(f, "--json")) {
            VAL();
            json_path = v;
        } else if (!strcmp(f, "--no-progress") || !strcmp(f, "--disable-tqdm")) {
            cfg.progress = false;
        } else if (positional_arg("latency", f, &eo.model_dir)) {
            return 2;
        }
    }
    if (!eo.model_dir) {
        fprintf(stderr, "loom: bench latency: MODEL_DIR is missing\n");
        usage_bench(stderr);
        return 2;
    }
    cfg.seed = eo.seed;
    struct loom_bench_latency_result r;
    int rc = loom_bench_latency_run(&cfg, &r);
    if (rc) {
        fprintf(stderr, "loom: bench latency: %s\n", loom_last_error());
        loom_bench_latency_result_free(&r);
        return 1;
    }
    struct loom_bench_stat prefill, step, e2e;
    loom_bench_stat_compute(r.prefill_s, r.num_iters, latency_pcts, N_LAT_PCT, &prefill);
    loom_bench_stat_compute(r.decode_step_s, r.n_decode_steps, latency_pcts, N_LAT_PCT, &step);
    loom_bench_stat_compute(r.e2e_s, r.num_iters, latency_pcts, N_LAT_PCT, &e2e);
    double B = cfg.batch_size;
    double prefill_tps = prefill.mean > 0 ? B * cfg.input_len / prefill.mean : 0;
    double decode_tps = step.mean > 0 ? B / step.mean : 0;
    /* bytes of weights per decode step over the median step time: what a batch-1 decode streams */
    double bw = step.median > 0 ? (double)r.weight_bytes / step.median / 1e9 : 0;

    loom_bench_title(stdout, " Latency Benchmark Result ", '=');
    loom_bench_line_str(stdout, "Model:", eo.model_dir);
    print_device(&eo);
    loom_bench_line_int(stdout, "Batch size:", cfg.batch_size);
    loom_bench_line_int(stdout, "Input length (tokens):", cfg.input_len);
    loom_bench_line_int(stdout, "Output length (tokens):", cfg.output_len);
    loom_bench_line_int(stdout, "Iterations (warm-up):", cfg.num_iters_warmup);
    loom_bench_line_int(stdout, "Iterations (measured):", r.num_iters);
    loom_bench_line_float(stdout, "Engine start-up (s):", r.engine_init_s);
    loom_bench_line_float(stdout, "Prefill throughput (tok/s):", prefill_tps);
    loom_bench_line_float(stdout, "Decode throughput (tok/s):", decode_tps);
    if (r.weight_bytes > 0) {
        loom_bench_line_float(stdout, "Weights read per decode step (GB):", (double)r.weight_bytes / 1e9);
        loom_bench_line_float(stdout, "Decode weight bandwidth (GB/s):", bw);
    }
    loom_bench_title(stdout, "Prefill (TTFT of the batch)", '-');
    print_stat_ms("prefill", &prefill);
    loom_bench_title(stdout, "Decode step (one token per sequence)", '-');
    print_stat_ms("decode step", &step);
    loom_bench_title(stdout, "End-to-end latency", '-');
    print_stat_ms("E2E", &e2e);
    loom_bench_title(stdout, "", '=');
    printf("Avg latency: %.6f seconds\n", e2e.mean);
    fflush(stdout);

    json_t *root = record_base("latency", argc, argv);
    json_t *conf = json_object();
    json_object_set_new(conf, "batch_size", json_integer(cfg.batch_size));
    json_object_set_new(conf, "input_len", json_integer(cfg.input_len));
    json_object_set_new(conf, "output_len", json_integer(cfg.output_len));
    json_object_set_new(conf, "num_iters_warmup", json_integer(cfg.num_iters_warmup));
    json_object_set_new(conf, "num_iters", json_integer(cfg.num_iters));
    json_object_set_new(conf, "temperature", json_real(cfg.temperature));
    json_object_set_new(conf, "ignore_eos", json_true());
    json_object_set_new(conf, "engine", engine_json(&eo));
    json_object_set_new(root, "config", conf);
    json_object_set_new(root, "model", model_json(eo.model_dir));
    json_object_set_new(root, "device", json_string(eo.device ? eo.device : "cpu"));
    json_object_set_new(root, "batch_size", json_integer(cfg.batch_size));
    json_object_set_new(root, "engine_init_s", json_real(r.engine_init_s));
    json_object_set_new(root, "avg_latency", json_real(e2e.mean));
    json_object_set_new(root, "prefill_tokens_per_s", json_real(prefill_tps));
    json_object_set_new(root, "decode_tokens_per_s", json_real(decode_tps));
    json_object_set_new(root, "weight_bytes", json_integer(r.weight_bytes));
    json_object_set_new(root, "decode_weight_bandwidth_gb_s", json_real(bw));
    json_object_set_new(root, "prefill", stat_json_ms(&prefill, latency_pcts, N_LAT_PCT));
    json_object_set_new(root, "decode_step", stat_json_ms(&step, latency_pcts, N_LAT_PCT));
    json_object_set_new(root, "e2e", stat_json_ms(&e2e, latency_pcts, N_LAT_PCT));
    json_t *lat = json_array(); /* vLLM's "latencies": every iteration's E2E, seconds, sorted */
    for (int i = 0; i < r.num_iters; i++) json_array_append_new(lat, json_real(r.e2e_s[i]));
    json_object_set_new(root, "latencies", lat);
    json_t *pl = json_object(); /* vLLM's "percentiles" of E2E, seconds */
    for (int i = 0; i < N_LAT_PCT; i++) {
        char w[16];
        loom_bench_pct_word(latency_pcts[i], w, sizeof(w));
        json_object_set_new(pl, w, json_real(e2e.pct[i]));
    }
    json_object_set_new(root, "percentiles", pl);
    loom_bench_latency_result_free(&r);
    return finish_json(root, json_path);
}

/* ------------------------------------------------------------------------------------------------ */
/* serve */

static int vocab_from_dir(const char *dir)
{
    char *p = loom_path_join(dir, "config.json");
    json_t *c = json_load_file(p, 0, NULL);
    free(p);
    json_t *v = c ? json_object_get(c, "vocab_size") : NULL;
    /* multimodal configs keep it under text_config */
    if (!v && c) v = json_object_get(json_object_get(c, "text_config"), "vocab_size");
    int n = json_is_integer(v) ? (int)json_integer_value(v) : 0;
    json_decref(c);
    return n;
}

static void print_serve_stat(const char *title, const char *abbr, const struct loom_bench_stat *st,
                             const struct loom_bench_serve_metrics *m)
{
    char label[96], w[16];
    loom_bench_title(stdout, title, '-');
    snprintf(label, sizeof(label), "Mean %s (ms):", abbr);
    loom_bench_line_float(stdout, label, st->mean * 1000);
    snprintf(label, sizeof(label), "Median %s (ms):", abbr);
    loom_bench_line_float(stdout, label, st->median * 1000);
    for (int i = 0; i < m->n_pct; i++) {
        loom_bench_pct_word(m->pcts[i], w, sizeof(w));
        snprintf(label, sizeof(label), "P%s %s (ms):", w, abbr);
        loom_bench_line_float(stdout, label, st->pct[i] * 1000);
    }
}

static int bench_serve(int argc, char **argv)
{
    struct loom_bench_serve_config cfg;
    loom_bench_serve_config_default(&cfg);
    const char *host = "127.0.0.1", *json_path = NULL, *dataset_path = NULL, *tokenizer = NULL;
    const char *ptype = "ids", *pmetrics = "ttft,tpot,itl,e2el";
    char base_buf[600];
    int port = 8000, num_prompts = 1000, in_len = 1024, out_len = 128, vocab = 0;
    double ratio = 0;
    bool detailed = false, base_given = false;
    struct loom_bench_slo slo;
    loom_bench_slo_none(&slo);
    double pcts[LOOM_BENCH_MAX_PCT] = {99};
    int n_pct = 1;
    long long seed = 0;
    const char *v;
    cfg.api_key = getenv("OPENAI_API_KEY");
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage_bench(stdout);
            return 0;
        }
        INT_FLAG("--port", 1, 65535, port)
        INT_FLAG("--num-prompts", 1, 10000000, num_prompts)
        INT_FLAG("--random-input-len", 1, 1 << 24, in_len)
        INT_FLAG("--random-output-len", 1, 1 << 24, out_len)
        INT_FLAG("--vocab-size", 1, 1 << 30, vocab)
        INT_FLAG("--max-concurrency", 1, 1000000, cfg.max_concurrency)
        else if (!strcmp(f, "--base-url")) {
            VAL();
            cfg.base_url = v;
            base_given = true;
        } else if (!strcmp(f, "--host")) {
            VAL();
            host = v;
        } else if (!strcmp(f, "--endpoint")) {
            VAL();
            cfg.endpoint = v;
        } else if (!strcmp(f, "--model") || !strcmp(f, "--served-model-name")) {
            VAL();
            cfg.model = v;
        } else if (!strcmp(f, "--api-key")) {
            VAL();
            cfg.api_key = v;
        } else if (!strcmp(f, "--dataset-path")) {
            VAL();
            dataset_path = v;
        } else if (!strcmp(f, "--dataset-name")) {
            VAL();
            if (strcmp(v, "random") && strcmp(v, "custom") && strcmp(v, "jsonl")) {
                fprintf(stderr, "loom: --dataset-name: expected random or custom (with --dataset-path), got '%s'\n",
                        v);
                return 2;
            }
        } else if (!strcmp(f, "--tokenizer")) {
            VAL();
            tokenizer = v;
        } else if (!strcmp(f, "--random-prompt-type")) {
            VAL();
            if (strcmp(v, "ids") && strcmp(v, "text")) {
                fprintf(stderr, "loom: --random-prompt-type: expected ids or text, got '%s'\n", v);
                return 2;
            }
            ptype = v;
        } else if (!strcmp(f, "--random-range-ratio")) {
            VAL();
            if (loom_cli_float(f, v, 0, 0.999, &ratio)) return 2;
        } else if (!strcmp(f, "--request-rate")) {
            VAL();
            if (!strcasecmp(v, "inf")) cfg.request_rate = INFINITY;
            else if (loom_cli_float(f, v, 1e-6, 1e9, &cfg.request_rate)) return 2;
        } else if (!strcmp(f, "--burstiness")) {
            VAL();
            if (!strcasecmp(v, "inf")) cfg.burstiness = INFINITY;
            else if (loom_cli_float(f, v, 1e-3, 1e6, &cfg.burstiness)) return 2;
        } else if (!strcmp(f, "--timeout")) {
            VAL();
            if (loom_cli_float(f, v, 0.001, 1e7, &cfg.timeout)) return 2;
        } else if (!strcmp(f, "--request-timeout")) {
            VAL();
            if (loom_cli_float(f, v, 0.001, 1e7, &cfg.request_timeout)) return 2;
        } else if (!strcmp(f, "--temperature")) {
            VAL();
            if (loom_cli_float(f, v, 0, 100, &cfg.temperature)) return 2;
        } else if (!strcmp(f, "--ignore-eos")) {
            cfg.ignore_eos = true;
        } else if (!strcmp(f, "--seed")) {
            VAL();
            if (loom_cli_int(f, v, 0, (long long)9e18, &seed)) return 2;
        } else if (!strcmp(f, "--goodput")) {
            /* vLLM: --goodput KEY:VALUE [KEY:VALUE ...] */
            int k = 0;
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) {
                if (loom_bench_parse_goodput(argv[++i], &slo)) {
                    fprintf(stderr, "loom: %s\n", loom_last_error());
                    return 2;
                }
                k++;
            }
            if (!k) {
                fprintf(stderr, "loom: --goodput needs KEY:MILLISECONDS items (e.g. ttft:500 tpot:50)\n");
                return 2;
            }
        } else if (!strcmp(f, "--metric-percentiles")) {
            VAL();
            if (loom_bench_parse_percentiles(v, pcts, &n_pct)) {
                fprintf(stderr, "loom: %s\n", loom_last_error());
                return 2;
            }
        } else if (!strcmp(f, "--percentile-metrics")) {
            VAL();
            pmetrics = v;
        } else if (!strcmp(f, "--json") || !strcmp(f, "--result-filename")) {
            VAL();
            json_path = v;
        } else if (!strcmp(f, "--save-detailed")) {
            detailed = true;
        } else if (!strcmp(f, "--no-progress") || !strcmp(f, "--disable-tqdm")) {
            cfg.progress = false;
        } else {
            fprintf(stderr, "loom: bench serve: unknown argument %s\n", f);
            return 2;
        }
    }
    if (!base_given) {
        bool v6 = strchr(host, ':') != NULL;
        snprintf(base_buf, sizeof(base_buf), "http://%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", port);
        cfg.base_url = base_buf;
    }
    cfg.seed = (uint64_t)seed;
    if (!vocab && tokenizer) vocab = vocab_from_dir(tokenizer);
    if (!vocab) vocab = 1000; /* ids below 1000 exist in every real vocabulary */

    struct loom_bench_dataset ds = {0};
    if (dataset_path) {
        if (loom_bench_dataset_jsonl(&ds, dataset_path, num_prompts, out_len)) {
            fprintf(stderr, "loom: bench serve: %s\n", loom_last_error());
            return 2;
        }
    } else if (!strcmp(ptype, "text")) {
        loom_bench_dataset_random_text(&ds, num_prompts, in_len, out_len, ratio, (uint64_t)seed);
    } else {
        loom_bench_dataset_random_ids(&ds, num_prompts, in_len, out_len, ratio, vocab, (uint64_t)seed);
    }
    cfg.dataset = &ds;

    fprintf(stderr, "bench serve: %d requests to %s%s, request rate %g%s, max concurrency %d\n", ds.n, cfg.base_url,
            cfg.endpoint, cfg.request_rate, isinf(cfg.request_rate) ? " (all at once)" : " req/s (Poisson)",
            cfg.max_concurrency);
    g_stop = 0;
    cfg.stop = &g_stop;
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigaction(SIGINT, &sa, &old);
    struct loom_bench_serve_result res;
    int rc = loom_bench_serve_run(&cfg, &res);
    sigaction(SIGINT, &old, NULL);
    if (rc) {
        fprintf(stderr, "loom: bench serve: %s\n", loom_last_error());
        loom_bench_dataset_free(&ds);
        return rc == LOOM_EIO ? 1 : 2;
    }
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(res.reqs, res.n, res.duration, pcts, n_pct, &slo, &m);

    /* the table, in vLLM's layout */
    loom_bench_title(stdout, " Serving Benchmark Result ", '=');
    loom_bench_line_int(stdout, "Successful requests:", m.completed);
    loom_bench_line_int(stdout, "Failed requests:", m.failed);
    for (int k = 1; k < LOOM_BENCH_FAIL_KINDS; k++) {
        if (!res.fail_count[k]) continue;
        char label[64];
        snprintf(label, sizeof(label), "  of which %s:", loom_bench_fail_name((enum loom_bench_fail)k));
        loom_bench_line_int(stdout, label, res.fail_count[k]);
    }
    if (cfg.max_concurrency) loom_bench_line_int(stdout, "Maximum request concurrency:", cfg.max_concurrency);
    if (!isinf(cfg.request_rate)) loom_bench_line_float(stdout, "Request rate configured (RPS):", cfg.request_rate);
    loom_bench_line_float(stdout, "Benchmark duration (s):", m.duration);
    loom_bench_line_int(stdout, "Total input tokens:", m.total_input);
    loom_bench_line_int(stdout, "Total generated tokens:", m.total_output);
    loom_bench_line_float(stdout, "Request throughput (req/s):", m.request_throughput);
    if (loom_bench_slo_any(&slo)) loom_bench_line_float(stdout, "Request goodput (req/s):", m.request_goodput);
    loom_bench_line_float(stdout, "Output token throughput (tok/s):", m.output_throughput);
    loom_bench_line_float(stdout, "Peak output token throughput (tok/s):", m.max_output_tokens_per_s);
    loom_bench_line_int(stdout, "Peak concurrent requests:", m.max_concurrent_requests);
    loom_bench_line_float(stdout, "Total Token throughput (tok/s):", m.total_token_throughput);
    if (strstr(pmetrics, "ttft")) print_serve_stat("Time to First Token", "TTFT", &m.ttft, &m);
    if (strstr(pmetrics, "tpot")) print_serve_stat("Time per Output Token (excl. 1st token)", "TPOT", &m.tpot, &m);
    if (strstr(pmetrics, "itl")) print_serve_stat("Inter-token Latency", "ITL", &m.itl, &m);
    if (strstr(pmetrics, "e2el")) print_serve_stat("End-to-end Latency", "E2EL", &m.e2el, &m);
    loom_bench_title(stdout, "", '=');
    if (m.completed && res.usage_reported < m.completed)
        printf("note: %d of %d successful responses had no usage; their output tokens are counted as chunks\n",
               m.completed - res.usage_reported, m.completed);
    int shown = 0;
    for (int i = 0; i < res.n && shown < 10; i++)
        if (res.error[i]) {
            if (!shown) printf("Failed requests (first 10):\n");
            printf("  request %d: %s\n", i, res.error[i]);
            shown++;
        }
    fflush(stdout);

    /* the record, with vLLM's key names where vLLM has one */
    json_t *root = record_base("serve", argc, argv);
    json_t *conf = json_object();
    json_object_set_new(conf, "base_url", json_string(cfg.base_url));
    json_object_set_new(conf, "endpoint", json_string(cfg.endpoint));
    json_object_set_new(conf, "dataset", json_string(dataset_path ? dataset_path : "random"));
    json_object_set_new(conf, "random_prompt_type", json_string(dataset_path ? "file" : ptype));
    json_object_set_new(conf, "random_input_len", json_integer(in_len));
    json_object_set_new(conf, "random_output_len", json_integer(out_len));
    json_object_set_new(conf, "random_range_ratio", json_real(ratio));
    json_object_set_new(conf, "vocab_size", json_integer(vocab));
    json_object_set_new(conf, "burstiness", json_real(cfg.burstiness));
    json_object_set_new(conf, "ignore_eos", json_boolean(cfg.ignore_eos));
    json_object_set_new(conf, "temperature", json_real(cfg.temperature));
    json_object_set_new(conf, "timeout_s", json_real(cfg.timeout));
    json_object_set_new(conf, "request_timeout_s", json_real(cfg.request_timeout));
    json_object_set_new(conf, "seed", json_integer(seed));
    json_t *gp = json_object();
    if (slo.ttft >= 0) json_object_set_new(gp, "ttft", json_real(slo.ttft * 1000));
    if (slo.tpot >= 0) json_object_set_new(gp, "tpot", json_real(slo.tpot * 1000));
    if (slo.e2el >= 0) json_object_set_new(gp, "e2el", json_real(slo.e2el * 1000));
    json_object_set_new(conf, "goodput_ms", gp);
    json_object_set_new(root, "config", conf);
    json_object_set_new(root, "backend", json_string("openai"));
    json_object_set_new(root, "model_id", json_string(res.model ? res.model : ""));
    if (tokenizer) json_object_set_new(root, "model", model_json(tokenizer));
    json_object_set_new(root, "num_prompts", json_integer(ds.n));
    json_object_set_new(root, "request_rate", isinf(cfg.request_rate) ? json_string("inf")
                                                                      : json_real(cfg.request_rate));
    json_object_set_new(root, "burstiness", json_real(cfg.burstiness));
    json_object_set_new(root, "max_concurrency", cfg.max_concurrency ? json_integer(cfg.max_concurrency)
                                                                     : json_null());
    json_object_set_new(root, "duration", json_real(m.duration));
    json_object_set_new(root, "completed", json_integer(m.completed));
    json_object_set_new(root, "failed", json_integer(m.failed));
    json_t *fails = json_object();
    for (int k = 1; k < LOOM_BENCH_FAIL_KINDS; k++)
        json_object_set_new(fails, loom_bench_fail_name((enum loom_bench_fail)k), json_integer(res.fail_count[k]));
    json_object_set_new(root, "failures", fails);
    json_object_set_new(root, "total_input_tokens", json_integer(m.total_input));
    json_object_set_new(root, "total_output_tokens", json_integer(m.total_output));
    json_object_set_new(root, "output_tokens_from_usage", json_integer(res.usage_reported));
    json_object_set_new(root, "request_throughput", json_real(m.request_throughput));
    json_object_set_new(root, "request_goodput", loom_bench_slo_any(&slo) ? json_real(m.request_goodput)
                                                                          : json_null());
    json_object_set_new(root, "output_throughput", json_real(m.output_throughput));
    json_object_set_new(root, "total_token_throughput", json_real(m.total_token_throughput));
    json_object_set_new(root, "max_output_tokens_per_s", json_real(m.max_output_tokens_per_s));
    json_object_set_new(root, "max_concurrent_requests", json_integer(m.max_concurrent_requests));
    loom_bench_stat_to_json(root, "ttft", &m.ttft, m.pcts, m.n_pct);
    loom_bench_stat_to_json(root, "tpot", &m.tpot, m.pcts, m.n_pct);
    loom_bench_stat_to_json(root, "itl", &m.itl, m.pcts, m.n_pct);
    loom_bench_stat_to_json(root, "e2el", &m.e2el, m.pcts, m.n_pct);
    json_t *errs = json_array();
    for (int i = 0; i < res.n; i++)
        if (res.error[i] && (detailed || json_array_size(errs) < 10)) json_array_append_new(errs, json_string(res.error[i]));
    json_object_set_new(root, "errors", errs);
    if (detailed) { /* vLLM's per-request arrays (seconds), in dataset order */
        json_t *il = json_array(), *ol = json_array(), *tt = json_array(), *it = json_array(), *st = json_array();
        for (int i = 0; i < res.n; i++) {
            const struct loom_bench_req *q = &res.reqs[i];
            json_array_append_new(il, json_integer(q->prompt_len));
            json_array_append_new(ol, json_integer(loom_bench_req_output_tokens(q)));
            json_array_append_new(tt, json_real(q->success ? q->ttft : 0));
            json_t *one = json_array();
            for (int k = 0; k < q->n_itl; k++) json_array_append_new(one, json_real(q->itl[k]));
            json_array_append_new(it, one);
            json_array_append_new(st, json_integer(res.http_status[i]));
        }
        json_object_set_new(root, "input_lens", il);
        json_object_set_new(root, "output_lens", ol);
        json_object_set_new(root, "ttfts", tt);
        json_object_set_new(root, "itls", it);
        json_object_set_new(root, "http_status", st);
    }
    loom_bench_serve_result_free(&res);
    loom_bench_dataset_free(&ds);
    return finish_json(root, json_path);
}

int loom_cmd_bench(int argc, char **argv)
{
    /* the engine's per-request log lines would drown the progress bar: warnings only, unless asked */
    if (!getenv("LOOM_LOG")) loom_log_set_level(LOOM_LOG_WARN);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage_bench(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "throughput")) return bench_throughput(argc - 1, argv + 1);
    if (!strcmp(argv[1], "latency")) return bench_latency(argc - 1, argv + 1);
    if (!strcmp(argv[1], "serve")) return bench_serve(argc - 1, argv + 1);
    fprintf(stderr, "loom: bench: unknown benchmark '%s' (expected throughput, latency or serve)\n", argv[1]);
    usage_bench(stderr);
    return 2;
}
