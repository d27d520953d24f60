/*
 * engine.c: the engine of include/loom.h around a model that is already loaded (engine_load.c loads
 * one): the thread-safe inbox, request validation, the step (schedule -> run -> sample -> stop
 * checks -> outputs), aborts, the engine thread, statistics and logging.
 *
 * Threads: loom_engine_add_request / loom_engine_abort / loom_engine_get_stats / has_work run on any
 * thread and take `lock` (inbox, aborts, the id -> request table) or `stats_lock`. A step runs under
 * `step_lock` on whichever thread steps (yours, or the engine thread of loom_engine_start); only it
 * touches the scheduler, the sequences and the model, and callbacks run there with no lock held.
 */
#include "core/error.h"
#include "core/log.h"
#include "engine/engine_internal.h"
#include "engine/sampler.h"
#include "engine/scheduler.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_LOGPROBS 20          /* vLLM's default max_logprobs */
_Static_assert(MAX_LOGPROBS <= LOOM_SAMPLE_MAX_LOGPROBS, "backend sampling returns at most LOOM_SAMPLE_MAX_LOGPROBS");
#define MAX_N 1024               /* samples per request */
#define MAX_UNFINISHED (1 << 16) /* requests queued or running; more is LOOM_EFULL */
#define LIVE_BUCKETS 4096
#define STATS_LOG_SECONDS 5.0

struct loom_engine {
    struct loom_engine_options opts;
    struct loom_engine_model model;
    struct loom_engine_model_info info;
    struct loom_tokenizer *tok;
    int vocab, max_model_len, block_size;
    struct loom_engine_limits lim;

    struct loom_kv_blocks kv;
    struct loom_scheduler sched;
    struct loom_runner runner;
    struct loom_sampler sampler;
    struct loom_logit_edit *edits; /* backend sampling: the step's token edits */
    int cap_edits;

    /* shared with other threads, under lock */
    pthread_mutex_t lock;
    pthread_cond_t wake;
    struct loom_req *inbox_head, *inbox_tail;
    uint64_t *aborts;
    int n_aborts, cap_aborts;
    struct loom_req *live[LIVE_BUCKETS]; /* every request added and not yet finished */
    int n_live;
    uint64_t next_id;
    bool stop;
    bool thread_started;
    pthread_t thread;

    pthread_mutex_t step_lock;

    /* stepping thread only */
    uint64_t *abort_batch;
    int cap_abort_batch;
    struct loom_token_logprob lp, top[MAX_LOGPROBS];
    int64_t num_steps, generation_tokens, prompt_tokens_total, requests_finished;
    double last_log;
    int64_t last_log_prompt, last_log_gen;
    bool warned_idle;
    loom_logits_hook_fn hook;
    void *hook_user;

    pthread_mutex_t stats_lock;
    struct loom_engine_stats snap;
};

/* ---------------------------------------------------------------------------------------------- */
/* Defaults */

void loom_engine_options_default(struct loom_engine_options *o)
{
    memset(o, 0, sizeof(*o));
    o->device = "cpu";
    o->dtype = "auto";
    o->max_num_seqs = 256;
    o->max_num_batched_tokens = 2048;
    o->block_size = 16;
    o->kv_cache_memory = (int64_t)1 << 30;
    o->gpu_memory_utilization = 0.9f;
    o->enable_prefix_caching = true;
    o->policy = LOOM_SCHED_FCFS;
}

void loom_sampling_params_default(struct loom_sampling_params *p)
{
    memset(p, 0, sizeof(*p));
    p->n = 1;
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 16;
    p->logprobs = -1;
    p->prompt_logprobs = -1;
    p->skip_special_tokens = true;
}

void loom_request_default(struct loom_request *r)
{
    memset(r, 0, sizeof(*r));
    r->add_special_tokens = true;
    loom_sampling_params_default(&r->params);
}

const char *loom_finish_reason_name(enum loom_finish_reason r)
{
    switch (r) {
    case LOOM_FINISH_NONE: return "none";
    case LOOM_FINISH_STOP: return "stop";
    case LOOM_FINISH_LENGTH: return "length";
    case LOOM_FINISH_ABORT: return "abort";
    case LOOM_FINISH_ERROR: return "error";
    }
    return "unknown";
}

void loom_engine_limits_get(const struct loom_engine_options *o, int vocab_size, struct loom_engine_limits *l)
{
    l->max_num_batched_tokens = o->max_num_batched_tokens > 0 ? o->max_num_batched_tokens : 2048;
    l->max_num_seqs = o->max_num_seqs > 0 ? o->max_num_seqs : 256;
    /* a step gives every sequence at least one token, so more sequences than tokens cannot run */
    if (l->max_num_seqs > l->max_num_batched_tokens) l->max_num_seqs = l->max_num_batched_tokens;
    l->block_size = o->block_size > 0 ? o->block_size : 16;
    /* prompt-logprob rows: about 64 MiB of logits, at least 16 rows, at most a step's tokens */
    int64_t rows = ((int64_t)64 << 20) / ((int64_t)(vocab_size > 0 ? vocab_size : 1) * 4);
    if (rows < 16) rows = 16;
    if (rows > l->max_num_batched_tokens) rows = l->max_num_batched_tokens;
    l->max_prompt_rows = (int)rows;
    l->max_logit_rows = l->max_num_seqs + l->max_prompt_rows;
}

/* ---------------------------------------------------------------------------------------------- */
/* The id -> request table (under lock) */

static struct loom_req **live_slot(struct loom_engine *e, uint64_t id)
{
    struct loom_req **p = &e->live[(id * 0x9e3779b97f4a7c15ULL) >> 52 & (LIVE_BUCKETS - 1)];
    while (*p && (*p)->id != id) p = &(*p)->live_next;
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* Creation */

int loom_engine_create_with_model(const struct loom_engine_options *opts, const struct loom_engine_model *m,
                                  const struct loom_engine_model_info *info, struct loom_engine **out)
{
    *out = NULL;
    if (!m->forward || m->vocab_size < 1)
        return loom_fail(LOOM_EINVAL, "engine: the model has no forward function or vocabulary");
    if (info->max_model_len < 2)
        return loom_fail(LOOM_EINVAL, "engine: max_model_len %d; it must be at least 2", info->max_model_len);
    struct loom_engine *e = loom_calloc(1, sizeof(*e));
    e->opts = *opts;
    e->model = *m;
    e->info = *info;
    e->tok = info->tokenizer;
    e->vocab = m->vocab_size;
    loom_engine_limits_get(opts, e->vocab, &e->lim);
    e->block_size = e->lim.block_size;
    if (info->max_logit_rows > 0 && info->max_logit_rows < e->lim.max_logit_rows) {
        int rc = loom_fail(LOOM_EINVAL, "engine: the model returns at most %d logits rows per step; %d are needed",
                           info->max_logit_rows, e->lim.max_logit_rows);
        free(e);
        return rc;
    }

    int rc = loom_kv_blocks_init(&e->kv, info->num_kv_blocks, e->block_size, opts->enable_prefix_caching);
    if (rc) {
        free(e);
        return rc;
    }
    int64_t pool_tokens = (int64_t)info->num_kv_blocks * e->block_size;
    e->max_model_len = info->max_model_len;
    if (pool_tokens < e->max_model_len) {
        LOG_WARN("engine: the KV cache holds %lld tokens (%d blocks of %d), fewer than max_model_len %d: "
                 "max_model_len lowered to %lld (give the cache more memory to serve longer contexts)",
                 (long long)pool_tokens, info->num_kv_blocks, e->block_size, e->max_model_len, (long long)pool_tokens);
        e->max_model_len = (int)pool_tokens;
    }

    struct loom_sched_config sc = {
        .max_num_seqs = e->lim.max_num_seqs,
        .max_num_batched_tokens = e->lim.max_num_batched_tokens,
        .max_prompt_rows = e->lim.max_prompt_rows,
        .policy = opts->policy,
    };
    if ((rc = loom_scheduler_init(&e->sched, &sc, &e->kv)) ||
        (rc = loom_runner_init(&e->runner, m, e->block_size, e->lim.max_num_batched_tokens, e->lim.max_num_seqs,
                               loom_blocks_for(e->max_model_len, e->block_size), e->lim.max_logit_rows)) ||
        (rc = loom_sampler_init(&e->sampler, e->vocab))) {
        loom_scheduler_free(&e->sched);
        loom_runner_free(&e->runner);
        loom_kv_blocks_free(&e->kv);
        free(e);
        return rc;
    }
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->wake, NULL);
    pthread_mutex_init(&e->step_lock, NULL);
    pthread_mutex_init(&e->stats_lock, NULL);
    e->next_id = 1;
    e->last_log = loom_now();
    e->snap.num_kv_blocks = e->snap.free_kv_blocks = info->num_kv_blocks;
    LOG_INFO("engine: %d KV blocks of %d tokens, max_model_len %d, max_num_seqs %d, max_num_batched_tokens %d, "
             "prefix caching %s, %s scheduling",
             info->num_kv_blocks, e->block_size, e->max_model_len, e->lim.max_num_seqs, e->lim.max_num_batched_tokens,
             opts->enable_prefix_caching ? "on" : "off", opts->policy == LOOM_SCHED_PRIORITY ? "priority" : "fcfs");
    *out = e;
    return LOOM_OK;
}

int loom_engine_max_model_len(const struct loom_engine *e)
{
    return e->max_model_len;
}

int loom_engine_vocab_size(const struct loom_engine *e)
{
    return e->vocab;
}

struct loom_tokenizer *loom_engine_tokenizer(struct loom_engine *e)
{
    return e->tok;
}

void loom_engine_set_logits_hook(struct loom_engine *e, loom_logits_hook_fn fn, void *user)
{
    e->hook = fn;
    e->hook_user = user;
}

/* ---------------------------------------------------------------------------------------------- */
/* Adding requests */

static int validate_params(const struct loom_engine *e, const struct loom_sampling_params *p)
{
    if (p->n < 1 || p->n > MAX_N) return loom_fail(LOOM_EINVAL, "n must be in [1, %d], got %d", MAX_N, p->n);
    if (!(p->temperature >= 0) || !isfinite(p->temperature))
        return loom_fail(LOOM_EINVAL, "temperature must be non-negative, got %g", p->temperature);
    if (!(p->top_p > 0 && p->top_p <= 1)) return loom_fail(LOOM_EINVAL, "top_p must be in (0, 1], got %g", p->top_p);
    if (p->top_k < -1)
        return loom_fail(LOOM_EINVAL, "top_k must be -1 or 0 (disabled) or at least 1, got %d", p->top_k);
    if (!(p->min_p >= 0 && p->min_p <= 1)) return loom_fail(LOOM_EINVAL, "min_p must be in [0, 1], got %g", p->min_p);
    if (!(p->repetition_penalty > 0) || !isfinite(p->repetition_penalty))
        return loom_fail(LOOM_EINVAL, "repetition_penalty must be greater than zero, got %g", p->repetition_penalty);
    if (!(p->presence_penalty >= -2 && p->presence_penalty <= 2))
        return loom_fail(LOOM_EINVAL, "presence_penalty must be in [-2, 2], got %g", p->presence_penalty);
    if (!(p->frequency_penalty >= -2 && p->frequency_penalty <= 2))
        return loom_fail(LOOM_EINVAL, "frequency_penalty must be in [-2, 2], got %g", p->frequency_penalty);
    if (p->max_tokens < 1) return loom_fail(LOOM_EINVAL, "max_tokens must be at least 1, got %d", p->max_tokens);
    if (p->min_tokens < 0 || p->min_tokens > p->max_tokens)
        return loom_fail(LOOM_EINVAL, "min_tokens must be in [0, max_tokens=%d], got %d", p->max_tokens, p->min_tokens);
    if (p->logprobs < -1 || p->logprobs > MAX_LOGPROBS)
        return loom_fail(LOOM_EINVAL, "logprobs must be in [0, %d] (or -1 for none), got %d", MAX_LOGPROBS, p->logprobs);
    if (p->prompt_logprobs < -1 || p->prompt_logprobs > MAX_LOGPROBS)
        return loom_fail(LOOM_EINVAL, "prompt_logprobs must be in [0, %d] (or -1 for none), got %d", MAX_LOGPROBS,
                         p->prompt_logprobs);
    if (p->n_stop < 0 || (p->n_stop > 0 && !p->stop)) return loom_fail(LOOM_EINVAL, "stop: %d strings but no array", p->n_stop);
    for (int i = 0; i < p->n_stop; i++)
        if (!p->stop[i] || !p->stop[i][0]) return loom_fail(LOOM_EINVAL, "stop[%d] is empty; stop strings must not be", i);
    if (p->n_stop > 0 && !e->tok)
        return loom_fail(LOOM_EINVAL, "stop strings need the model's tokenizer (tokenizer.json); use stop_token_ids");
    if (p->n_stop_token_ids < 0 || (p->n_stop_token_ids > 0 && !p->stop_token_ids))
        return loom_fail(LOOM_EINVAL, "stop_token_ids: %d ids but no array", p->n_stop_token_ids);
    for (int i = 0; i < p->n_stop_token_ids; i++)
        if (p->stop_token_ids[i] < 0 || p->stop_token_ids[i] >= e->vocab)
            return loom_fail(LOOM_EINVAL, "stop_token_ids[%d] = %d is not a token id (vocabulary size %d)", i,
                             p->stop_token_ids[i], e->vocab);
    if (p->n_logit_bias < 0 || (p->n_logit_bias > 0 && !p->logit_bias))
        return loom_fail(LOOM_EINVAL, "logit_bias: %d entries but no array", p->n_logit_bias);
    for (int i = 0; i < p->n_logit_bias; i++) {
        if (p->logit_bias[i].token_id < 0 || p->logit_bias[i].token_id >= e->vocab)
            return loom_fail(LOOM_EINVAL, "logit_bias: token id %d is out of range (vocabulary size %d)",
                             p->logit_bias[i].token_id, e->vocab);
        if (!isfinite(p->logit_bias[i].bias))
            return loom_fail(LOOM_EINVAL, "logit_bias: the bias of token %d is not a finite number",
                             p->logit_bias[i].token_id);
    }
    return LOOM_OK;
}

int loom_engine_add_request(struct loom_engine *e, const struct loom_request *r, uint64_t *request_id)
{
    const struct loom_sampling_params *p = &r->params;
    int rc = validate_params(e, p);
    if (rc) return rc;

    int32_t *owned = NULL;
    const int32_t *ids = r->prompt_ids;
    int n_ids = r->n_prompt_ids;
    if (r->prompt) {
        if (!e->tok) return loom_fail(LOOM_EINVAL, "a text prompt needs the model's tokenizer (tokenizer.json); send token ids");
        if ((rc = loom_tokenizer_encode(e->tok, r->prompt, strlen(r->prompt), r->add_special_tokens, &owned, &n_ids)))
            return loom_fail_context(rc, "prompt");
        ids = owned;
    }
    if (n_ids < 1 || !ids) {
        free(owned);
        return loom_fail(LOOM_EINVAL, "the prompt is empty; give at least one token");
    }
    for (int i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= e->vocab) {
            rc = loom_fail(LOOM_EINVAL, "prompt token %d is %d, outside the vocabulary [0, %d)", i, ids[i], e->vocab);
            free(owned);
            return rc;
        }
    if (n_ids + 1 > e->max_model_len) {
        free(owned);
        return loom_fail(LOOM_ETOOLONG,
                         "the prompt is %d tokens; with one generated token it exceeds max_model_len %d "
                         "(the model's context and KV cache size): shorten the prompt or raise --max-model-len / "
                         "the KV cache memory",
                         n_ids, e->max_model_len);
    }

    int64_t cap = (int64_t)n_ids + p->max_tokens;
    if (cap > e->max_model_len) cap = e->max_model_len;
    struct loom_req *q = loom_req_create(r, ids, n_ids, (int)cap, e->block_size, e->opts.enable_prefix_caching, e->tok);
    free(owned);
    q->min_tokens_mask = loom_malloc(((size_t)e->info.n_eos + (size_t)p->n_stop_token_ids + 1) * sizeof(int32_t));
    if (!p->ignore_eos)
        for (int i = 0; i < e->info.n_eos; i++)
            if (e->info.eos_ids[i] >= 0 && e->info.eos_ids[i] < e->vocab)
                q->min_tokens_mask[q->n_min_tokens_mask++] = e->info.eos_ids[i];
    for (int i = 0; i < p->n_stop_token_ids; i++) q->min_tokens_mask[q->n_min_tokens_mask++] = p->stop_token_ids[i];
    q->t_arrival = loom_now();

    pthread_mutex_lock(&e->lock);
    if (e->n_live >= MAX_UNFINISHED) {
        pthread_mutex_unlock(&e->lock);
        loom_req_free(q);
        return loom_fail(LOOM_EFULL, "the engine has %d unfinished requests, its limit; retry later", MAX_UNFINISHED);
    }
    q->id = e->next_id++;
    uint64_t key = p->has_seed ? loom_rng_mix(p->seed ^ 0x5eed5eed5eed5eedULL)
                               : loom_rng_mix(e->opts.seed ^ loom_rng_mix(q->id));
    for (int i = 0; i < q->n; i++) q->seqs[i].rng_key = loom_rng_mix(key + (uint64_t)i * 0x9e3779b97f4a7c15ULL);
    *live_slot(e, q->id) = q;
    e->n_live++;
    if (e->inbox_tail) e->inbox_tail->next = q;
    else e->inbox_head = q;
    e->inbox_tail = q;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    if (request_id) *request_id = q->id;
    return LOOM_OK;
}

int loom_engine_abort(struct loom_engine *e, uint64_t request_id)
{
    pthread_mutex_lock(&e->lock);
    struct loom_req *q = *live_slot(e, request_id);
    if (!q) {
        pthread_mutex_unlock(&e->lock);
        return loom_fail(LOOM_ENOTFOUND, "request %llu is not running (finished, aborted or never added)",
                         (unsigned long long)request_id);
    }
    if (!q->abort_pending) {
        q->abort_pending = true;
        if (e->n_aborts == e->cap_aborts) {
            e->cap_aborts = e->cap_aborts ? 2 * e->cap_aborts : 64;
            e->aborts = loom_realloc(e->aborts, (size_t)e->cap_aborts * sizeof(uint64_t));
        }
        e->aborts[e->n_aborts++] = request_id;
        pthread_cond_signal(&e->wake);
    }
    pthread_mutex_unlock(&e->lock);
    return LOOM_OK;
}

bool loom_engine_has_work(struct loom_engine *e)
{
    pthread_mutex_lock(&e->lock);
    bool w = e->n_live > 0 || e->n_aborts > 0;
    pthread_mutex_unlock(&e->lock);
    return w;
}

/* ---------------------------------------------------------------------------------------------- */
/* Outputs */

/* Delivers one output of a sample: n_tokens new tokens (their logprobs in e->lp / e->top when asked),
 * a text delta, the finish state, and the prompt logprobs with sample 0's first token. */
static void emit(struct loom_engine *e, struct loom_seq *seq, const int32_t *tokens, int n_tokens, const char *text,
                 size_t text_len, const char *error)
{
    struct loom_req *q = seq->req;
    const struct loom_sampling_params *p = &q->params;
    if (!q->on_output) return;
    struct loom_output o = {0};
    o.request_id = q->id;
    o.index = seq->index;
    o.token_ids = tokens;
    o.n_tokens = n_tokens;
    o.text = text ? text : "";
    o.text_len = text_len;
    if (p->logprobs >= 0 && n_tokens > 0) {
        o.logprobs = &e->lp;
        o.top_logprobs = e->top;
        o.top_k = p->logprobs;
    }
    if (seq->index == 0 && q->plp && !q->plp_sent && n_tokens > 0) {
        q->plp_sent = true;
        o.prompt_logprobs = q->plp;
        o.prompt_top_logprobs = q->plp_top;
        o.prompt_top_k = p->prompt_logprobs;
    }
    o.finish_reason = seq->finish;
    o.stop_token = seq->stop_token;
    o.stop_string = seq->stop_string >= 0 ? q->stop[seq->stop_string] : NULL;
    o.prompt_tokens = q->n_prompt;
    o.completion_tokens = loom_seq_num_output(seq);
    o.cached_tokens = q->cached_tokens;
    o.time_first_token = q->t_first_token > 0 ? q->t_first_token - q->t_arrival : 0;
    o.error = error;
    q->on_output(&o, q->user);
}

/* The request's last sample has finished: log it, forget it, free it. */
static void finish_request(struct loom_engine *e, struct loom_req *q)
{
    double now = loom_now();
    int gen = 0;
    for (int i = 0; i < q->n; i++) gen += loom_seq_num_output(&q->seqs[i]);
    e->requests_finished++;
    LOG_INFO("[req-%llu] finished (%s): prompt %d tokens (%d cached), generated %d%s, TTFT %.3f s, %.1f tok/s",
             (unsigned long long)q->id, loom_finish_reason_name(q->seqs[0].finish), q->n_prompt, q->cached_tokens,
             gen, q->n > 1 ? " over all samples" : "", q->t_first_token > 0 ? q->t_first_token - q->t_arrival : 0.0,
             gen / (now - q->t_arrival > 1e-9 ? now - q->t_arrival : 1e-9));
    pthread_mutex_lock(&e->lock);
    struct loom_req **slot = live_slot(e, q->id);
    LOOM_ASSERT(*slot == q);
    *slot = q->live_next;
    e->n_live--;
    pthread_mutex_unlock(&e->lock);
    loom_req_free(q);
}

static void finish_seq(struct loom_engine *e, struct loom_seq *seq)
{
    loom_scheduler_remove(&e->sched, seq);
    if (--seq->req->n_unfinished == 0) finish_request(e, seq->req);
}

/* Ends every unfinished sample of q with reason r (abort, or error with message err). */
static void end_request(struct loom_engine *e, struct loom_req *q, enum loom_finish_reason r, const char *err)
{
    int n = q->n;
    for (int i = 0; i < n; i++) {
        struct loom_seq *seq = &q->seqs[i];
        if (seq->status == LOOM_SEQ_FINISHED) continue;
        seq->finish = r;
        loom_scheduler_remove(&e->sched, seq);
        emit(e, seq, NULL, 0, "", 0, err);
        if (--q->n_unfinished == 0) {
            finish_request(e, q);
            return;
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Text and stop strings */

static void hold_reserve(struct loom_seq *seq, size_t need)
{
    if (need <= seq->hold_cap) return;
    while (seq->hold_cap < need) seq->hold_cap *= 2;
    seq->hold = loom_realloc(seq->hold, seq->hold_cap); /* rare: a token's text longer than the slack */
}

/* Decodes tok (unless skip) and returns the text that may be emitted now, inside seq->hold. Matches
 * stop strings; holds back text that could be the start of one (vLLM's stop_buffer_length), unless
 * the sample is finishing. */
static void seq_text(struct loom_seq *seq, int32_t tok, bool skip, const char **text, size_t *len)
{
    struct loom_req *q = seq->req;
    bool include = q->params.include_stop_str_in_output;
    size_t W = q->max_stop_len ? q->max_stop_len - 1 : 0;
    *text = "";
    *len = 0;
    if (!seq->has_detok) return;
    /* keep only the last W emitted bytes (a stop string may start there) and the unemitted ones */
    size_t drop = seq->hold_len > W ? seq->hold_len - W : 0;
    if (drop > seq->hold_emitted) drop = seq->hold_emitted;
    if (drop) {
        memmove(seq->hold, seq->hold + drop, seq->hold_len - drop);
        seq->hold_len -= drop;
        seq->hold_emitted -= drop;
    }
    size_t old_len = seq->hold_len;
    if (!skip) {
        const char *d = NULL;
        size_t dl = 0;
        if (loom_detok_push(&seq->detok, tok, &d, &dl) == LOOM_OK && dl) {
            hold_reserve(seq, seq->hold_len + dl);
            memcpy(seq->hold + seq->hold_len, d, dl);
            seq->hold_len += dl;
        }
    }
    if (seq->finish != LOOM_FINISH_NONE) { /* the end: what the detokenizer still holds back */
        const char *d = NULL;
        size_t dl = 0;
        if (loom_detok_flush(&seq->detok, &d, &dl) == LOOM_OK && dl) {
            hold_reserve(seq, seq->hold_len + dl);
            memcpy(seq->hold + seq->hold_len, d, dl);
            seq->hold_len += dl;
        }
    }
    size_t end = seq->hold_len;
    if (q->params.n_stop > 0 && seq->hold_len > old_len) {
        size_t best = (size_t)-1, best_len = 0;
        for (int i = 0; i < q->params.n_stop; i++) {
            size_t l = strlen(q->stop[i]);
            const char *m = memmem(seq->hold, seq->hold_len, q->stop[i], l);
            if (m && (size_t)(m - seq->hold) < best) {
                best = (size_t)(m - seq->hold);
                best_len = l;
                seq->stop_string = i;
            }
        }
        if (best != (size_t)-1) {
            seq->finish = LOOM_FINISH_STOP;
            seq->stop_token = -1;
            end = include ? best + best_len : best;
            seq->hold_len = end;
        }
    }
    if (seq->finish == LOOM_FINISH_NONE && !include && W > 0) {
        end = seq->hold_len > W ? seq->hold_len - W : 0;
        while (end > seq->hold_emitted && (seq->hold[end] & 0xC0) == 0x80) end--; /* whole characters only */
    }
    if (end < seq->hold_emitted) end = seq->hold_emitted;
    *text = seq->hold + seq->hold_emitted;
    *len = end - seq->hold_emitted;
    seq->hold_emitted = end;
}

/* ---------------------------------------------------------------------------------------------- */
/* The step */

static bool is_eos(const struct loom_engine *e, int32_t t)
{
    for (int i = 0; i < e->info.n_eos; i++)
        if (e->info.eos_ids[i] == t) return true;
    return false;
}

static void sample_input(const struct loom_seq *seq, struct loom_sample_input *in)
{
    const struct loom_req *q = seq->req;
    *in = (struct loom_sample_input){
        .p = &q->params,
        .prompt = q->prompt,
        .n_prompt = q->n_prompt,
        .output = seq->tokens + q->n_prompt,
        .n_output = loom_seq_num_output(seq),
        .stop_ids = q->min_tokens_mask,
        .n_stop_ids = q->n_min_tokens_mask,
        .rng_key = seq->rng_key,
    };
}

/* Backend sampling for this step's sampled rows (with their logprobs when asked), unless a logits hook
 * wants the rows: fills the runner's sample rows; prompt-logprob rows stay skipped and are downloaded. */
static void prepare_backend_sampling(struct loom_engine *e)
{
    struct loom_runner *r = &e->runner;
    struct loom_batch *b = &r->batch;
    const struct loom_scheduler *s = &e->sched;
    if (!e->model.can_sample || e->hook || b->n_logits == 0) return;
    int n_dev = 0, n_edits = 0;
    for (int i = 0; i < b->n_logits; i++) r->sample[i].skip = 1;
    for (int i = 0; i < s->n_scheduled; i++) {
        const struct loom_seq *seq = s->scheduled[i];
        if (seq->sample_row < 0) continue;
        struct loom_sample_input in;
        sample_input(seq, &in);
        loom_sampler_backend_row(&e->sampler, &in, &r->sample[seq->sample_row], &e->edits, &n_edits, &e->cap_edits);
        n_dev++;
    }
    if (!n_dev) return;
    b->sample = r->sample;
    b->edits = e->edits;
    b->n_edits = n_edits;
}

/* The sequence's next token: the one the backend drew for its row, or sampled here from the row's
 * logits. Then the stop conditions, and the output. */
static void sample_seq(struct loom_engine *e, struct loom_seq *seq, int row)
{
    struct loom_req *q = seq->req;
    const struct loom_sampling_params *p = &q->params;
    const struct loom_batch *b = &e->runner.batch;
    const float *logits = loom_runner_row(&e->runner, row);
    int32_t tok;
    if (b->sample && !b->sample[row].skip) {
        tok = b->sampled[row];
        LOOM_ASSERT(tok >= 0 && tok < e->vocab);
        if (p->logprobs >= 0) { /* computed there from the raw row */
            const struct loom_sample_logprob *lp = b->sampled_lp + (size_t)row * (1 + LOOM_SAMPLE_MAX_LOGPROBS);
            e->lp = (struct loom_token_logprob){lp[0].token, lp[0].logprob};
            for (int j = 0; j < p->logprobs; j++) e->top[j] = (struct loom_token_logprob){lp[1 + j].token, lp[1 + j].logprob};
        }
    } else {
        struct loom_sample_input in;
        sample_input(seq, &in);
        tok = loom_sampler_sample(&e->sampler, logits, &in);
        if (p->logprobs >= 0) loom_sampler_logprobs(logits, e->vocab, tok, p->logprobs, &e->lp, e->top);
    }
    LOOM_ASSERT(seq->n_tokens < seq->cap_tokens);
    seq->tokens[seq->n_tokens++] = tok;
    e->generation_tokens++;
    if (q->t_first_token == 0) q->t_first_token = loom_now();

    /* vLLM's check_stop order: length first, then (past min_tokens) EOS, then stop token ids */
    int n_out = loom_seq_num_output(seq);
    if (seq->n_tokens >= e->max_model_len || n_out >= p->max_tokens) {
        seq->finish = LOOM_FINISH_LENGTH;
    } else if (n_out >= p->min_tokens) {
        bool stop = !p->ignore_eos && is_eos(e, tok);
        for (int i = 0; !stop && i < p->n_stop_token_ids; i++) stop = p->stop_token_ids[i] == tok;
        if (stop) {
            seq->finish = LOOM_FINISH_STOP;
            seq->stop_token = tok;
        }
    }
    const char *text;
    size_t len;
    bool stop_tok = seq->finish == LOOM_FINISH_STOP && seq->stop_token >= 0;
    seq_text(seq, tok, stop_tok && !p->include_stop_str_in_output, &text, &len);
    emit(e, seq, &tok, 1, text, len, NULL);
    if (seq->finish != LOOM_FINISH_NONE) finish_seq(e, seq);
}

static void take_inbox(struct loom_engine *e)
{
    pthread_mutex_lock(&e->lock);
    struct loom_req *q = e->inbox_head;
    e->inbox_head = e->inbox_tail = NULL;
    int n = e->n_aborts;
    if (n > e->cap_abort_batch) {
        e->cap_abort_batch = e->cap_aborts;
        e->abort_batch = loom_realloc(e->abort_batch, (size_t)e->cap_abort_batch * sizeof(uint64_t));
    }
    if (n) memcpy(e->abort_batch, e->aborts, (size_t)n * sizeof(uint64_t));
    e->n_aborts = 0;
    pthread_mutex_unlock(&e->lock);

    for (; q; q = q->next) {
        e->prompt_tokens_total += q->n_prompt;
        for (int i = 0; i < q->n; i++) loom_scheduler_add(&e->sched, &q->seqs[i]);
    }
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&e->lock);
        struct loom_req *a = *live_slot(e, e->abort_batch[i]);
        pthread_mutex_unlock(&e->lock);
        if (a) end_request(e, a, LOOM_FINISH_ABORT, NULL);
    }
}

static void update_stats(struct loom_engine *e)
{
    const struct loom_scheduler *s = &e->sched;
    pthread_mutex_lock(&e->lock);
    int inbox = 0;
    for (struct loom_req *q = e->inbox_head; q; q = q->next) inbox += q->n;
    pthread_mutex_unlock(&e->lock);
    struct loom_engine_stats st = {0};
    st.running = s->n_running;
    st.waiting = s->n_waiting + inbox;
    st.num_kv_blocks = e->kv.num_blocks;
    st.free_kv_blocks = e->kv.num_free;
    st.kv_usage = (double)(e->kv.num_blocks - e->kv.num_free) / e->kv.num_blocks;
    st.num_steps = e->num_steps;
    st.num_preemptions = s->num_preemptions;
    st.num_prefill_chunks = s->num_prefill_chunks;
    st.prefix_cache_queries = s->prefix_cache_queries;
    st.prefix_cache_hits = s->prefix_cache_hits;
    st.prompt_tokens_total = e->prompt_tokens_total;
    st.prompt_tokens_computed = s->prompt_tokens_computed;
    st.generation_tokens_total = e->generation_tokens;
    st.requests_finished = e->requests_finished;
    pthread_mutex_lock(&e->stats_lock);
    e->snap = st;
    pthread_mutex_unlock(&e->stats_lock);

    double now = loom_now();
    if (now - e->last_log >= STATS_LOG_SECONDS) {
        double dt = now - e->last_log;
        if (st.running + st.waiting > 0 || st.prompt_tokens_computed > e->last_log_prompt ||
            st.generation_tokens_total > e->last_log_gen)
            LOG_INFO("engine: %d running, %d waiting, KV cache %.1f%% used, prefill %.1f tok/s, decode %.1f tok/s, "
                     "%lld preemptions, prefix cache hit rate %.1f%%",
                     st.running, st.waiting, 100.0 * st.kv_usage, (st.prompt_tokens_computed - e->last_log_prompt) / dt,
                     (st.generation_tokens_total - e->last_log_gen) / dt, (long long)st.num_preemptions,
                     st.prefix_cache_queries ? 100.0 * st.prefix_cache_hits / st.prefix_cache_queries : 0.0);
        e->last_log = now;
        e->last_log_prompt = st.prompt_tokens_computed;
        e->last_log_gen = st.generation_tokens_total;
    }
}

static int count_live(struct loom_engine *e)
{
    pthread_mutex_lock(&e->lock);
    int n = e->n_live;
    pthread_mutex_unlock(&e->lock);
    return n;
}

int loom_engine_step(struct loom_engine *e)
{
    pthread_mutex_lock(&e->step_lock);
    take_inbox(e);
    struct loom_scheduler *s = &e->sched;
    loom_scheduler_schedule(s);
    if (s->n_scheduled == 0) {
        if (loom_scheduler_num_unfinished(s) > 0 && !e->warned_idle) {
            LOG_WARN("engine: %d sequences wait but none could be scheduled", loom_scheduler_num_unfinished(s));
            e->warned_idle = true;
        }
        update_stats(e);
        pthread_mutex_unlock(&e->step_lock);
        return count_live(e);
    }
    e->warned_idle = false;
    e->num_steps++;
    loom_runner_build(&e->runner, s->scheduled, s->n_scheduled);
    prepare_backend_sampling(e);
    int rc = loom_runner_forward(&e->runner);
    if (rc) {
        /* the model failed: fail every request of this step, keep serving the others */
        char msg[1024];
        snprintf(msg, sizeof(msg), "model forward failed: %s", loom_last_error());
        LOG_ERROR("engine: %s", msg);
        loom_scheduler_advance(s);
        for (int i = 0; i < s->n_scheduled; i++) {
            struct loom_req *q = s->scheduled[i] ? s->scheduled[i]->req : NULL;
            if (!q) continue;
            for (int j = i + 1; j < s->n_scheduled; j++) /* end_request frees q: forget its other samples */
                if (s->scheduled[j] && s->scheduled[j]->req == q) s->scheduled[j] = NULL;
            end_request(e, q, LOOM_FINISH_ERROR, msg);
        }
        s->n_scheduled = 0;
        update_stats(e);
        pthread_mutex_unlock(&e->step_lock);
        return count_live(e);
    }
    if (e->hook)
        for (int i = 0; i < s->n_scheduled; i++) {
            struct loom_seq *seq = s->scheduled[i];
            for (int r = 0; r < seq->n_prompt_rows; r++)
                e->hook(e->hook_user, seq->req->id, seq->index, seq->prompt_pos0 + r,
                        loom_runner_row(&e->runner, seq->prompt_row0 + r), e->vocab);
            if (seq->sample_row >= 0)
                e->hook(e->hook_user, seq->req->id, seq->index, seq->num_computed + seq->sched_tokens - 1,
                        loom_runner_row(&e->runner, seq->sample_row), e->vocab);
        }
    loom_scheduler_advance(s);
    for (int i = 0; i < s->n_scheduled; i++) {
        struct loom_seq *seq = s->scheduled[i];
        struct loom_req *q = seq->req;
        if (seq->n_prompt_rows > 0) {
            int k = q->params.prompt_logprobs;
            LOOM_ASSERT(seq->prompt_pos0 == q->plp_done);
            for (int r = 0; r < seq->n_prompt_rows; r++) {
                int pos = seq->prompt_pos0 + r;
                loom_sampler_logprobs(loom_runner_row(&e->runner, seq->prompt_row0 + r), e->vocab, q->prompt[pos + 1], k,
                                      &q->plp[pos + 1], q->plp_top ? q->plp_top + (size_t)(pos + 1) * k : NULL);
            }
            q->plp_done = seq->prompt_pos0 + seq->n_prompt_rows;
            seq->n_prompt_rows = 0;
        }
        if (seq->sample_row >= 0) {
            int row = seq->sample_row;
            seq->sample_row = -1;
            if (seq->index == 0 && q->plp) LOOM_ASSERT(q->plp_done == q->n_prompt - 1);
            sample_seq(e, seq, row); /* may free the request */
        }
    }
    update_stats(e);
    pthread_mutex_unlock(&e->step_lock);
    return count_live(e);
}

/* ---------------------------------------------------------------------------------------------- */
/* The engine thread */

static void *engine_thread(void *arg)
{
    struct loom_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->stop && e->n_live == 0 && e->n_aborts == 0) pthread_cond_wait(&e->wake, &e->lock);
        bool stop = e->stop;
        pthread_mutex_unlock(&e->lock);
        if (stop) break;
        int64_t before = e->num_steps;
        loom_engine_step(e);
        if (e->num_steps == before) usleep(1000); /* nothing could run: do not spin */
    }
    return NULL;
}

int loom_engine_start(struct loom_engine *e)
{
    pthread_mutex_lock(&e->lock);
    if (e->thread_started) {
        pthread_mutex_unlock(&e->lock);
        return loom_fail(LOOM_EINVAL, "the engine thread is already running");
    }
    e->stop = false;
    int err = pthread_create(&e->thread, NULL, engine_thread, e);
    if (err) {
        pthread_mutex_unlock(&e->lock);
        LOOM_DIE("cannot start the engine thread (error %d)", err);
    }
    e->thread_started = true;
    pthread_mutex_unlock(&e->lock);
    return LOOM_OK;
}

void loom_engine_stop(struct loom_engine *e)
{
    pthread_mutex_lock(&e->lock);
    if (!e->thread_started) {
        pthread_mutex_unlock(&e->lock);
        return;
    }
    e->stop = true;
    pthread_cond_broadcast(&e->wake);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
    pthread_mutex_lock(&e->lock);
    e->thread_started = false;
    e->stop = false;
    pthread_mutex_unlock(&e->lock);
}

void loom_engine_get_stats(struct loom_engine *e, struct loom_engine_stats *st)
{
    pthread_mutex_lock(&e->stats_lock);
    *st = e->snap;
    pthread_mutex_unlock(&e->stats_lock);
}

void loom_engine_check(struct loom_engine *e)
{
    pthread_mutex_lock(&e->step_lock);
    loom_scheduler_check(&e->sched);
    pthread_mutex_unlock(&e->step_lock);
}

void loom_engine_free(struct loom_engine *e)
{
    if (!e) return;
    loom_engine_stop(e);
    /* abort what is left, inbox included */
    pthread_mutex_lock(&e->step_lock);
    take_inbox(e);
    for (int b = 0; b < LIVE_BUCKETS; b++) {
        for (;;) {
            pthread_mutex_lock(&e->lock);
            struct loom_req *q = e->live[b];
            pthread_mutex_unlock(&e->lock);
            if (!q) break;
            end_request(e, q, LOOM_FINISH_ABORT, NULL); /* takes q out of the bucket */
        }
    }
    pthread_mutex_unlock(&e->step_lock);
    loom_sampler_free(&e->sampler);
    free(e->edits);
    loom_runner_free(&e->runner);
    loom_scheduler_free(&e->sched);
    loom_kv_blocks_free(&e->kv);
    if (e->tok) loom_tokenizer_free(e->tok);
    if (e->info.release) e->info.release(e->info.release_ctx);
    free(e->aborts);
    free(e->abort_batch);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->wake);
    pthread_mutex_destroy(&e->step_lock);
    pthread_mutex_destroy(&e->stats_lock);
    free(e);
}
