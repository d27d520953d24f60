/* offline.c: `loom bench throughput` and `loom bench latency` against the engine in-process (offline.h). */
#include "bench/offline.h"
#include "bench/report.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the output callback records for one request. Callbacks run on the stepping thread: ours. */
struct track {
    double t_add;
    double t_first;        /* loom_now() when the first token arrived (0 before) */
    double t_done;
    int prompt_tokens, output_tokens;
    enum loom_finish_reason finish;
    int *n_first, *n_done; /* shared counters */
};

static void on_output(const struct loom_output *out, void *user)
{
    struct track *t = user;
    double now = loom_now();
    if (!t->t_first && (out->n_tokens > 0 || out->finish_reason != LOOM_FINISH_NONE)) {
        t->t_first = now;
        (*t->n_first)++;
    }
    t->prompt_tokens = out->prompt_tokens;
    t->output_tokens = out->completion_tokens;
    if (out->finish_reason != LOOM_FINISH_NONE && !t->t_done) {
        t->t_done = now;
        t->finish = out->finish_reason;
        (*t->n_done)++;
    }
}

static void sampling(struct loom_request *r, int max_tokens, double temperature)
{
    loom_request_default(r);
    r->params.max_tokens = max_tokens;
    r->params.ignore_eos = true;
    r->params.temperature = (float)temperature;
    r->params.top_p = 1.0f;
}

static int create_engine(const struct loom_engine_options *o, struct loom_engine **e, double *init_s)
{
    double t = loom_now();
    int rc = loom_engine_create(o, e);
    *init_s = loom_now() - t;
    if (rc) return loom_fail_context(rc, "loading %s", o->model_dir);
    return 0;
}

/* Aborts and steps away whatever the engine still holds (its callbacks point at memory we free). */
static void drain(struct loom_engine *e)
{
    for (int64_t k = 0; k < 1000000 && loom_engine_has_work(e); k++) loom_engine_step(e);
}

/* Steps until *n_done reaches n. A step that finishes nothing for a very long time means a stuck engine. */
static int drive(struct loom_engine *e, int *n_done, int n, struct loom_progress *pg)
{
    int64_t idle_steps = 0, last = *n_done;
    while (*n_done < n) {
        int left = loom_engine_step(e);
        if (pg) loom_progress_update(pg, *n_done);
        if (*n_done != last) {
            last = *n_done;
            idle_steps = 0;
        } else if (++idle_steps > 10000000 || (left == 0 && *n_done < n && !loom_engine_has_work(e))) {
            return loom_fail(LOOM_EINVAL, "the engine stopped with %d of %d requests unfinished", n - *n_done, n);
        }
    }
    return 0;
}

int loom_bench_throughput_run(const struct loom_bench_throughput_config *cfg, struct loom_bench_throughput_result *res)
{
    memset(res, 0, sizeof(*res));
    struct loom_engine *e;
    int rc = create_engine(cfg->engine, &e, &res->engine_init_s);
    if (rc) return rc;
    res->vocab_size = loom_engine_vocab_size(e);
    res->max_model_len = loom_engine_max_model_len(e);
    struct loom_bench_dataset own = {0};
    const struct loom_bench_dataset *ds = cfg->dataset;
    if (!ds) {
        loom_bench_dataset_random_ids(&own, cfg->num_prompts, cfg->input_len, cfg->output_len, cfg->range_ratio,
                                      res->vocab_size, cfg->seed);
        ds = &own;
    }
    int n = ds->n;
    struct track *tr = loom_calloc((size_t)(n ? n : 1), sizeof(*tr));
    int n_first = 0, n_done = 0;
    struct loom_progress pg;
    if (cfg->progress) loom_progress_begin(&pg, "bench throughput", n);
    double t0 = loom_now();
    for (int i = 0; i < n; i++) {
        const struct loom_bench_prompt *p = &ds->items[i];
        struct loom_request r;
        sampling(&r, p->output_len, cfg->temperature);
        r.prompt = p->text;
        r.prompt_ids = p->ids;
        r.n_prompt_ids = p->n_ids;
        r.on_output = on_output;
        r.user = &tr[i];
        tr[i].n_first = &n_first;
        tr[i].n_done = &n_done;
        tr[i].t_add = loom_now();
        uint64_t id;
        rc = loom_engine_add_request(e, &r, &id);
        if (rc) {
            rc = loom_fail_context(rc, "request %d (prompt %d tokens, max_tokens %d)", i, p->prompt_len,
                                   p->output_len);
            goto out;
        }
    }
    rc = drive(e, &n_done, n, cfg->progress ? &pg : NULL);
    res->elapsed_s = loom_now() - t0;
    if (cfg->progress) loom_progress_end(&pg);
    if (rc) goto out;
    for (int i = 0; i < n; i++) {
        if (tr[i].finish == LOOM_FINISH_ERROR || tr[i].finish == LOOM_FINISH_ABORT) {
            res->failed++;
            continue;
        }
        res->prompt_tokens += tr[i].prompt_tokens;
        res->output_tokens += tr[i].output_tokens;
    }
    res->num_requests = n;
    if (res->elapsed_s > 0) {
        res->requests_per_s = (n - res->failed) / res->elapsed_s;
        res->output_tokens_per_s = (double)res->output_tokens / res->elapsed_s;
        res->total_tokens_per_s = (double)(res->prompt_tokens + res->output_tokens) / res->elapsed_s;
    }
    loom_engine_get_stats(e, &res->stats);
out:
    if (rc) drain(e);
    free(tr);
    loom_bench_dataset_free(&own);
    loom_engine_free(e);
    return rc;
}

/* One batch: add, step to the end, record the prefill time, each decode step and the total. */
static int latency_iter(struct loom_engine *e, const struct loom_bench_latency_config *cfg, uint64_t seed, int vocab,
                        double *prefill, double *e2e, double *steps, int *n_steps, int max_steps)
{
    struct loom_bench_dataset ds;
    loom_bench_dataset_random_ids(&ds, cfg->batch_size, cfg->input_len, cfg->output_len, 0.0, vocab, seed);
    int B = cfg->batch_size;
    struct track *tr = loom_calloc((size_t)B, sizeof(*tr));
    int n_first = 0, n_done = 0, rc = 0;
    double t0 = loom_now();
    for (int i = 0; i < B; i++) {
        struct loom_request r;
        sampling(&r, cfg->output_len, cfg->temperature);
        r.prompt_ids = ds.items[i].ids;
        r.n_prompt_ids = ds.items[i].n_ids;
        r.on_output = on_output;
        r.user = &tr[i];
        tr[i].n_first = &n_first;
        tr[i].n_done = &n_done;
        uint64_t id;
        if ((rc = loom_engine_add_request(e, &r, &id))) {
            rc = loom_fail_context(rc, "batch request %d (%d prompt tokens, max_tokens %d)", i, cfg->input_len,
                                   cfg->output_len);
            goto out;
        }
    }
    bool prefilled = false;
    int64_t guard = 0;
    while (n_done < B) {
        double ts = loom_now();
        int left = loom_engine_step(e);
        double te = loom_now();
        if (!prefilled) {
            if (n_first == B) {
                *prefill = te - t0;
                prefilled = true;
            }
        } else if (steps && *n_steps < max_steps) {
            steps[(*n_steps)++] = te - ts;
        }
        if ((left == 0 && n_done < B && !loom_engine_has_work(e)) || ++guard > 100000000) {
            rc = loom_fail(LOOM_EINVAL, "the engine stopped with %d of %d requests unfinished", B - n_done, B);
            goto out;
        }
    }
    *e2e = loom_now() - t0;
    for (int i = 0; i < B; i++)
        if (tr[i].finish == LOOM_FINISH_ERROR || tr[i].finish == LOOM_FINISH_ABORT) {
            rc = loom_fail(LOOM_EINVAL, "batch request %d failed in the engine", i);
            break;
        }
out:
    /* what was added still runs and writes into tr: finish it first */
    if (rc) drain(e);
    free(tr);
    loom_bench_dataset_free(&ds);
    return rc;
}

int loom_bench_latency_run(const struct loom_bench_latency_config *cfg, struct loom_bench_latency_result *res)
{
    memset(res, 0, sizeof(*res));
    struct loom_engine *e;
    int rc = create_engine(cfg->engine, &e, &res->engine_init_s);
    if (rc) return rc;
    int vocab = loom_engine_vocab_size(e);
    res->weight_bytes = loom_bench_weight_bytes(cfg->engine->model_dir);
    int iters = cfg->num_iters;
    res->num_iters = iters;
    res->prefill_s = loom_calloc((size_t)(iters ? iters : 1), sizeof(double));
    res->e2e_s = loom_calloc((size_t)(iters ? iters : 1), sizeof(double));
    int max_steps = iters * (cfg->output_len + 1) + 1;
    res->decode_step_s = loom_calloc((size_t)max_steps, sizeof(double));
    struct loom_progress pg;
    double scratch_p, scratch_e;
    if (cfg->num_iters_warmup > 0) {
        if (cfg->progress) loom_progress_begin(&pg, "warm-up", cfg->num_iters_warmup);
        for (int i = 0; i < cfg->num_iters_warmup && !rc; i++) {
            int ns = 0;
            rc = latency_iter(e, cfg, cfg->seed + 1000003ull * (uint64_t)(i + 1), vocab, &scratch_p, &scratch_e, NULL,
                              &ns, 0);
            if (cfg->progress) loom_progress_update(&pg, i + 1);
        }
        if (cfg->progress) loom_progress_end(&pg);
    }
    if (cfg->progress && !rc) loom_progress_begin(&pg, "bench latency", iters);
    for (int i = 0; i < iters && !rc; i++) {
        rc = latency_iter(e, cfg, cfg->seed + 7919ull * (uint64_t)(i + 1) + 0x9e37ull, vocab, &res->prefill_s[i],
                          &res->e2e_s[i], res->decode_step_s, &res->n_decode_steps, max_steps);
        if (cfg->progress) loom_progress_update(&pg, i + 1);
    }
    if (cfg->progress && !rc) loom_progress_end(&pg);
    loom_engine_get_stats(e, &res->stats);
    loom_engine_free(e);
    return rc;
}

void loom_bench_latency_result_free(struct loom_bench_latency_result *res)
{
    free(res->prefill_s);
    free(res->e2e_s);
    free(res->decode_step_s);
    memset(res, 0, sizeof(*res));
}
