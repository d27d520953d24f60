/*
 * test_engine_fake.c: the whole engine (inbox, scheduler, runner, sampler, stop conditions, outputs,
 * aborts, thread) over a fake paged model whose K/V for a token is a hash of its whole prefix and
 * whose logits for a row hash together every context slot it reads through the block table. A wrong
 * slot, block table, prefix-cache hit or fork therefore changes the logits, and the outputs are
 * compared with a reference computed from the true token sequences:
 *   - greedy outputs of random request streams (shared prefixes, n > 1, EOS, max_tokens,
 *     max_model_len) equal the reference under a big pool, a pool small enough to preempt, a
 *     token budget of 8 (chunked prefill), no prefix caching, and the priority policy;
 *   - seeded sampling at temperature 1 with top_p/top_k gives the same tokens alone, in a batch of
 *     32, under preemption and under chunking;
 *   - prefix caching computes only the tail of a request that shares a 150-token prefix;
 *   - logprobs / prompt_logprobs equal the reference log-softmax; stop token ids, min_tokens, stop
 *     strings (with a real tokenizer), aborts, request validation, the engine thread.
 */
#include "core/error.h"
#include "core/log.h"
#include "engine/engine_internal.h"
#include "engine/sampler.h"
#include "test.h"

#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#define EOS 3
#define MAXT 512

/* ---------------------------------------------------------------------------------------------- */
/* The fake model */

struct fake {
    int vocab, block_size, num_blocks;
    uint64_t *kv; /* [num_blocks * block_size] prefix hash held by each slot */
    int64_t rows, tokens, bad;
    int64_t calls, fail_call; /* forward number fail_call (1-based) fails; 0: never */
};

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t prefix_step(uint64_t h, int32_t tok)
{
    return mix(h * 31 + (uint64_t)tok + 1);
}

/* logits of a context whose prefix hashes fold into g */
static void fake_logits(uint64_t g, int vocab, float *out)
{
    for (int v = 0; v < vocab; v++) out[v] = (float)((double)(mix(g ^ ((uint64_t)v * 0xd6e8feb86659fd93ULL)) >> 11) *
                                                      0x1.0p-53 * 8.0 - 4.0);
}

static int fake_forward(void *ctx, const struct loom_batch *b, float *logits)
{
    struct fake *f = ctx;
    int bs = f->block_size;
    if (++f->calls == f->fail_call) return loom_fail(LOOM_EINVAL, "fake forward failure");
    /* store: each token's K/V is the hash of its prefix (reading the previous position's slot) */
    for (int s = 0; s < b->n_seqs; s++) {
        int q0 = b->query_start[s], q1 = b->query_start[s + 1], len = b->seq_lens[s], start = len - (q1 - q0);
        const int32_t *bt = b->block_tables + (size_t)s * b->max_blocks_per_seq;
        uint64_t h = start > 0 ? f->kv[bt[(start - 1) / bs] * bs + (start - 1) % bs] : 0;
        for (int t = q0; t < q1; t++) {
            if (b->positions[t] != start + t - q0) f->bad++;
            int pos = start + t - q0;
            if (b->slot_mapping[t] != bt[pos / bs] * bs + pos % bs) f->bad++;
            h = prefix_step(h, b->token_ids[t]);
            f->kv[b->slot_mapping[t]] = h;
        }
        f->tokens += q1 - q0;
    }
    /* attend: a row folds every context slot up to its position, read through the block table */
    for (int r = 0; r < b->n_logits; r++) {
        int t = b->logit_rows[r], s = 0;
        while (t >= b->query_start[s + 1]) s++;
        const int32_t *bt = b->block_tables + (size_t)s * b->max_blocks_per_seq;
        uint64_t g = 0;
        for (int p = 0; p <= b->positions[t]; p++) g = mix(g ^ f->kv[bt[p / bs] * bs + p % bs]);
        fake_logits(g, f->vocab, logits + (size_t)r * f->vocab);
        f->rows++;
    }
    return 0;
}

/* The reference: logits after the prefix tokens[0..n) */
static void ref_logits(const int32_t *tokens, int n, int vocab, float *out)
{
    uint64_t h = 0, g = 0;
    for (int p = 0; p < n; p++) {
        h = prefix_step(h, tokens[p]);
        g = mix(g ^ h);
    }
    fake_logits(g, vocab, out);
}

/* ---------------------------------------------------------------------------------------------- */
/* Engines and results */

struct cfg {
    int num_blocks, block_size, budget, max_seqs, model_len;
    bool caching;
    enum loom_sched_policy policy;
    struct loom_tokenizer *tok;
};

static struct loom_engine *make_engine(struct fake *f, const struct cfg *c)
{
    f->block_size = c->block_size;
    f->num_blocks = c->num_blocks;
    free(f->kv);
    f->kv = calloc((size_t)c->num_blocks * c->block_size, sizeof(uint64_t));
    struct loom_engine_options o;
    loom_engine_options_default(&o);
    o.block_size = c->block_size;
    o.max_num_batched_tokens = c->budget;
    o.max_num_seqs = c->max_seqs;
    o.enable_prefix_caching = c->caching;
    o.policy = c->policy;
    o.seed = 7;
    struct loom_engine_model m = {.vocab_size = f->vocab, .forward = fake_forward, .ctx = f};
    struct loom_engine_model_info info = {0};
    info.max_model_len = c->model_len;
    info.num_kv_blocks = c->num_blocks;
    info.eos_ids[0] = EOS;
    info.n_eos = 1;
    info.tokenizer = c->tok;
    struct loom_engine *e = NULL;
    int rc = loom_engine_create_with_model(&o, &m, &info, &e);
    CHECK_MSG(rc == 0, "create: %s", loom_last_error());
    return e;
}

struct result {
    int n;
    int32_t tokens[4][MAXT];
    int n_tokens[4];
    float lp[4][MAXT];
    struct loom_token_logprob top[4][MAXT][4];
    enum loom_finish_reason finish[4];
    int32_t stop_token[4];
    char stop_string[4][32];
    char text[4][8192];
    size_t text_len[4];
    int outputs[4], bad;
    struct loom_token_logprob plp[MAXT], plp_top[MAXT * 4];
    int n_plp, plp_k;
    uint64_t abort_after; /* abort from the callback after this many tokens (0: never) */
    struct loom_engine *engine;
    pthread_mutex_t *lock;
    int *n_done;
    pthread_cond_t *cond;
};

static void on_output(const struct loom_output *o, void *user)
{
    struct result *r = user;
    if (r->lock) pthread_mutex_lock(r->lock);
    int i = o->index;
    if (i < 0 || i >= 4 || r->finish[i] != LOOM_FINISH_NONE) r->bad++;
    else {
        for (int k = 0; k < o->n_tokens && r->n_tokens[i] < MAXT; k++) {
            int j = r->n_tokens[i]++;
            r->tokens[i][j] = o->token_ids[k];
            if (o->logprobs) {
                r->lp[i][j] = o->logprobs[k].logprob;
                if (o->logprobs[k].token_id != o->token_ids[k]) r->bad++;
                for (int t = 0; t < o->top_k && t < 4; t++) r->top[i][j][t] = o->top_logprobs[k * o->top_k + t];
            }
        }
        if (r->text_len[i] + o->text_len < sizeof(r->text[i])) {
            memcpy(r->text[i] + r->text_len[i], o->text, o->text_len);
            r->text_len[i] += o->text_len;
        }
        if (o->completion_tokens != r->n_tokens[i]) r->bad++;
        if (o->prompt_logprobs) {
            if (r->n_plp) r->bad++; /* only once */
            r->n_plp = o->prompt_tokens;
            r->plp_k = o->prompt_top_k;
            memcpy(r->plp, o->prompt_logprobs, sizeof(*r->plp) * (size_t)o->prompt_tokens);
            if (o->prompt_top_k)
                memcpy(r->plp_top, o->prompt_top_logprobs, sizeof(*r->plp_top) * (size_t)o->prompt_tokens * o->prompt_top_k);
        }
        r->outputs[i]++;
        r->finish[i] = o->finish_reason;
        r->stop_token[i] = o->stop_token;
        if (o->stop_string) snprintf(r->stop_string[i], sizeof(r->stop_string[i]), "%s", o->stop_string);
        if (o->finish_reason != LOOM_FINISH_NONE && r->n_done) {
            (*r->n_done)++;
            pthread_cond_broadcast(r->cond);
        }
        if (r->abort_after && (uint64_t)r->n_tokens[i] >= r->abort_after && o->finish_reason == LOOM_FINISH_NONE)
            loom_engine_abort(r->engine, o->request_id);
    }
    if (r->lock) pthread_mutex_unlock(r->lock);
}

static void run_to_end(struct loom_engine *e)
{
    for (int guard = 0; loom_engine_has_work(e); guard++) {
        loom_engine_step(e);
        if (guard % 7 == 0) loom_engine_check(e);
        if (guard > 1000000) {
            CHECK_MSG(0, "the engine did not finish");
            return;
        }
    }
    loom_engine_check(e);
    struct loom_engine_stats st;
    loom_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.free_kv_blocks, st.num_kv_blocks);
    CHECK_EQ_INT(st.running + st.waiting, 0);
}

/* A random request: prompt from shared prefixes, greedy or sampled params */
struct spec {
    int32_t prompt[300];
    int n_prompt;
    struct loom_sampling_params p;
};

static uint64_t rs = 1;
static uint32_t rnd(uint32_t n)
{
    rs = mix(rs);
    return (uint32_t)(rs % n);
}

static int32_t bases[3][300];

static void random_spec(struct spec *s, int max_prompt, bool sampled)
{
    loom_sampling_params_default(&s->p);
    s->n_prompt = 1 + rnd((uint32_t)max_prompt);
    int b = rnd(3), keep = rnd(2) ? (int)rnd((uint32_t)s->n_prompt + 1) : 0;
    for (int i = 0; i < s->n_prompt; i++) s->prompt[i] = i < keep ? bases[b][i] : (int32_t)rnd(64);
    s->p.max_tokens = 1 + rnd(rnd(4) ? 12 : 40);
    s->p.n = rnd(4) ? 1 : 2 + rnd(2);
    s->p.ignore_eos = rnd(2);
    s->p.priority = rnd(3);
    if (sampled) {
        s->p.temperature = 1;
        s->p.top_p = 0.9f;
        s->p.top_k = 20;
        s->p.has_seed = true; /* without a seed the stream depends on the request id (engine seed + id) */
        s->p.seed = rnd(1000);
        s->p.ignore_eos = true;
    } else {
        s->p.temperature = 0;
    }
}

/* The greedy reference continuation of a spec (EOS stops unless ignore_eos). */
static int ref_greedy(const struct spec *s, int vocab, int model_len, int32_t *out)
{
    int32_t seq[MAXT + 300];
    float *x = malloc(sizeof(float) * (size_t)vocab);
    memcpy(seq, s->prompt, sizeof(int32_t) * (size_t)s->n_prompt);
    int n = s->n_prompt, g = 0;
    while (g < s->p.max_tokens && n < model_len) {
        ref_logits(seq, n, vocab, x);
        int32_t best = 0;
        for (int v = 1; v < vocab; v++)
            if (x[v] > x[best]) best = v;
        seq[n++] = best;
        out[g++] = best;
        if (best == EOS && !s->p.ignore_eos) break;
    }
    free(x);
    return g;
}

static void submit(struct loom_engine *e, const struct spec *s, struct result *r)
{
    memset(r, 0, sizeof(*r));
    r->n = s->p.n;
    r->engine = e;
    for (int i = 0; i < 4; i++) r->stop_token[i] = -2;
    struct loom_request req;
    loom_request_default(&req);
    req.prompt_ids = s->prompt;
    req.n_prompt_ids = s->n_prompt;
    req.params = s->p;
    req.on_output = on_output;
    req.user = r;
    int rc = loom_engine_add_request(e, &req, NULL);
    CHECK_MSG(rc == 0, "add: %s", loom_last_error());
}

/* ---------------------------------------------------------------------------------------------- */

static void test_greedy_streams(struct fake *f)
{
    enum { NREQ = 40 };
    static struct spec specs[NREQ];
    static struct result res[NREQ];
    static int32_t want[NREQ][MAXT];
    int n_want[NREQ];
    const int model_len = 256;
    struct cfg cfgs[] = {
        {.num_blocks = 400, .block_size = 16, .budget = 2048, .max_seqs = 256, .model_len = model_len, .caching = true},
        {.num_blocks = 30, .block_size = 8, .budget = 2048, .max_seqs = 256, .model_len = model_len, .caching = true},
        {.num_blocks = 400, .block_size = 16, .budget = 8, .max_seqs = 256, .model_len = model_len, .caching = true},
        {.num_blocks = 24, .block_size = 4, .budget = 37, .max_seqs = 7, .model_len = model_len, .caching = false},
        {.num_blocks = 25, .block_size = 5, .budget = 64, .max_seqs = 16, .model_len = model_len, .caching = true,
         .policy = LOOM_SCHED_PRIORITY},
        {.num_blocks = 16, .block_size = 16, .budget = 2048, .max_seqs = 256, .model_len = model_len, .caching = true},
    };
    for (size_t c = 0; c < sizeof(cfgs) / sizeof(cfgs[0]); c++) {
        rs = 1000 + c;
        int pool_tokens = cfgs[c].num_blocks * cfgs[c].block_size;
        int len = pool_tokens < model_len ? pool_tokens : model_len;
        for (int i = 0; i < NREQ; i++) {
            random_spec(&specs[i], len - 1 < 150 ? len - 1 : 150, false);
            n_want[i] = ref_greedy(&specs[i], f->vocab, len, want[i]);
        }
        struct loom_engine *e = make_engine(f, &cfgs[c]);
        /* in three waves: some arrive while others run */
        for (int w = 0; w < 3; w++) {
            for (int i = w * NREQ / 3; i < (w == 2 ? NREQ : (w + 1) * NREQ / 3); i++) submit(e, &specs[i], &res[i]);
            for (int k = 0; k < 3; k++) loom_engine_step(e);
        }
        run_to_end(e);
        int bad = 0;
        for (int i = 0; i < NREQ; i++)
            for (int k = 0; k < res[i].n; k++) {
                bool same = res[i].n_tokens[k] == n_want[i] &&
                            !memcmp(res[i].tokens[k], want[i], sizeof(int32_t) * (size_t)n_want[i]);
                if (!same && bad++ < 3)
                    CHECK_MSG(0, "config %zu request %d sample %d: %d tokens, reference %d", c, i, k, res[i].n_tokens[k],
                              n_want[i]);
                /* vLLM checks the length first: an EOS as the last allowed token finishes with "length" */
                bool length = n_want[i] == specs[i].p.max_tokens || specs[i].n_prompt + n_want[i] >= len;
                enum loom_finish_reason fr = length ? LOOM_FINISH_LENGTH : LOOM_FINISH_STOP;
                bad += res[i].finish[k] != fr || res[i].bad || (fr == LOOM_FINISH_STOP && res[i].stop_token[k] != EOS);
            }
        CHECK_EQ_INT(bad, 0);
        CHECK_EQ_INT(f->bad, 0);
        struct loom_engine_stats st;
        loom_engine_get_stats(e, &st);
        if (c == 1 || c == 3 || c == 5) CHECK_MSG(st.num_preemptions > 0, "config %zu: no preemption", c);
        if (c == 2) CHECK_MSG(st.num_prefill_chunks > 0, "config %zu: no chunked prefill", c);
        if (c == 0) CHECK_MSG(st.prefix_cache_hits > 0, "config %zu: no prefix-cache hit", c);
        CHECK_EQ_INT(st.requests_finished, NREQ);
        printf("config %zu: %lld steps, %lld preemptions, %lld chunks, prefix hits %lld/%lld tokens\n", c,
               (long long)st.num_steps, (long long)st.num_preemptions, (long long)st.num_prefill_chunks,
               (long long)st.prefix_cache_hits, (long long)st.prefix_cache_queries);
        loom_engine_free(e);
    }
}

/* Seeded sampling: alone == in a batch of 32 == under preemption == under chunking */
static void test_seeded_invariance(struct fake *f)
{
    enum { NREQ = 32 };
    static struct spec specs[NREQ];
    static struct result alone[NREQ], res[NREQ];
    rs = 77;
    for (int i = 0; i < NREQ; i++) random_spec(&specs[i], 100, true);
    struct cfg big = {.num_blocks = 400, .block_size = 16, .budget = 2048, .max_seqs = 256, .model_len = 256, .caching = true};
    for (int i = 0; i < NREQ; i++) {
        struct loom_engine *e = make_engine(f, &big);
        submit(e, &specs[i], &alone[i]);
        run_to_end(e);
        loom_engine_free(e);
    }
    struct cfg cfgs[] = {
        big,
        {.num_blocks = 24, .block_size = 16, .budget = 2048, .max_seqs = 256, .model_len = 256, .caching = true},
        {.num_blocks = 400, .block_size = 16, .budget = 8, .max_seqs = 256, .model_len = 256, .caching = false},
    };
    int diverse = 0;
    for (size_t c = 0; c < 3; c++) {
        struct loom_engine *e = make_engine(f, &cfgs[c]);
        for (int i = 0; i < NREQ; i++) submit(e, &specs[i], &res[i]);
        run_to_end(e);
        struct loom_engine_stats st;
        loom_engine_get_stats(e, &st);
        if (c == 1) CHECK_MSG(st.num_preemptions > 0, "no preemption");
        if (c == 2) CHECK_MSG(st.num_prefill_chunks > 0, "no chunking");
        int bad = 0;
        for (int i = 0; i < NREQ; i++)
            for (int k = 0; k < res[i].n; k++) {
                bad += res[i].n_tokens[k] != alone[i].n_tokens[k] ||
                       memcmp(res[i].tokens[k], alone[i].tokens[k], sizeof(int32_t) * (size_t)res[i].n_tokens[k]);
                if (k > 0 && c == 0)
                    diverse += memcmp(res[i].tokens[k], res[i].tokens[0], sizeof(int32_t) * (size_t)res[i].n_tokens[k]) != 0;
            }
        CHECK_MSG(bad == 0, "config %zu: %d samples differ from the request run alone", c, bad);
        loom_engine_free(e);
    }
    CHECK_MSG(diverse > 0, "the n samples of a request are all the same");
}

static void test_prefix_caching(struct fake *f)
{
    struct spec a, b;
    loom_sampling_params_default(&a.p);
    a.p.temperature = 0;
    a.p.max_tokens = 8;
    a.p.ignore_eos = true;
    b.p = a.p;
    rs = 5;
    for (int i = 0; i < 150; i++) a.prompt[i] = b.prompt[i] = (int32_t)rnd(64);
    for (int i = 150; i < 160; i++) a.prompt[i] = (int32_t)rnd(64);
    for (int i = 150; i < 170; i++) b.prompt[i] = (int32_t)rnd(64);
    a.n_prompt = 160;
    b.n_prompt = 170;
    static struct result ra, rb, rb_nocache;
    struct cfg c = {.num_blocks = 100, .block_size = 16, .budget = 2048, .max_seqs = 256, .model_len = 512, .caching = true};
    struct loom_engine *e = make_engine(f, &c);
    submit(e, &a, &ra);
    run_to_end(e);
    struct loom_engine_stats s0, s1;
    loom_engine_get_stats(e, &s0);
    CHECK_EQ_INT(s0.prompt_tokens_computed, 160);
    submit(e, &b, &rb);
    run_to_end(e);
    loom_engine_get_stats(e, &s1);
    /* 150 shared tokens = 9 full blocks of 16 (144 tokens) reused; 170 - 144 = 26 computed */
    CHECK_EQ_INT(s1.prompt_tokens_computed - s0.prompt_tokens_computed, 26);
    CHECK_EQ_INT(s1.prefix_cache_hits - s0.prefix_cache_hits, 144);
    loom_engine_free(e);
    c.caching = false;
    e = make_engine(f, &c);
    submit(e, &b, &rb_nocache);
    run_to_end(e);
    loom_engine_get_stats(e, &s1);
    CHECK_EQ_INT(s1.prompt_tokens_computed, 170);
    CHECK_EQ_INT(rb.n_tokens[0], 8);
    CHECK(!memcmp(rb.tokens[0], rb_nocache.tokens[0], sizeof(int32_t) * 8));
    loom_engine_free(e);

    /* a prompt entirely cached still computes its last token (never the whole prompt from cache) */
    c.caching = true;
    e = make_engine(f, &c);
    a.n_prompt = 160; /* 10 full blocks */
    submit(e, &a, &ra);
    run_to_end(e);
    loom_engine_get_stats(e, &s0);
    submit(e, &a, &rb);
    run_to_end(e);
    loom_engine_get_stats(e, &s1);
    CHECK_EQ_INT(s1.prompt_tokens_computed - s0.prompt_tokens_computed, 16); /* the last block recomputed */
    CHECK(!memcmp(ra.tokens[0], rb.tokens[0], sizeof(int32_t) * 8));
    loom_engine_free(e);
}

/* logprobs of sampled tokens and prompt logprobs equal the reference log-softmax */
static void test_logprobs(struct fake *f)
{
    struct spec s;
    rs = 9;
    random_spec(&s, 60, false);
    s.n_prompt = 60;
    for (int i = 0; i < 60; i++) s.prompt[i] = (int32_t)rnd(64);
    s.p.n = 1;
    s.p.max_tokens = 5;
    s.p.ignore_eos = true;
    s.p.logprobs = 3;
    s.p.prompt_logprobs = 2;
    static struct result r;
    /* budget 8: the prompt rows come over several chunks */
    struct cfg c = {.num_blocks = 100, .block_size = 4, .budget = 8, .max_seqs = 8, .model_len = 256, .caching = true};
    struct loom_engine *e = make_engine(f, &c);
    submit(e, &s, &r);
    run_to_end(e);
    loom_engine_free(e);
    int V = f->vocab;
    float *x = malloc(sizeof(float) * (size_t)V);
    int32_t seq[400];
    memcpy(seq, s.prompt, sizeof(int32_t) * 60);
    int bad = 0;
    CHECK_EQ_INT(r.n_plp, 60);
    CHECK_EQ_INT(r.plp_k, 2);
    CHECK(r.plp[0].token_id == s.prompt[0] && r.plp[0].logprob == 0);
    for (int p = 1; p < 60; p++) {
        ref_logits(seq, p, V, x);
        struct loom_token_logprob lp, top[2];
        loom_sampler_logprobs(x, V, seq[p], 2, &lp, top);
        bad += r.plp[p].token_id != seq[p] || fabsf(r.plp[p].logprob - lp.logprob) > 1e-5f;
        for (int k = 0; k < 2; k++)
            bad += r.plp_top[p * 2 + k].token_id != top[k].token_id || fabsf(r.plp_top[p * 2 + k].logprob - top[k].logprob) > 1e-5f;
    }
    CHECK_EQ_INT(r.n_tokens[0], 5);
    for (int j = 0; j < r.n_tokens[0]; j++) {
        ref_logits(seq, 60 + j, V, x);
        double m = -1e30, z = 0;
        int32_t best = 0;
        for (int v = 0; v < V; v++) {
            if (x[v] > m) m = x[v];
            if (x[v] > x[best]) best = v;
        }
        for (int v = 0; v < V; v++) z += exp(x[v] - m);
        bad += r.tokens[0][j] != best;
        bad += fabs(r.lp[0][j] - (x[best] - m - log(z))) > 1e-5;
        bad += r.top[0][j][0].token_id != best;
        bad += !(r.top[0][j][0].logprob >= r.top[0][j][1].logprob && r.top[0][j][1].logprob >= r.top[0][j][2].logprob);
        seq[60 + j] = best;
    }
    CHECK_EQ_INT(bad, 0);
    free(x);
}

static void test_stops_and_aborts(struct fake *f)
{
    struct cfg c = {.num_blocks = 100, .block_size = 4, .budget = 64, .max_seqs = 8, .model_len = 256, .caching = true};
    struct loom_engine *e = make_engine(f, &c);
    struct spec s;
    rs = 11;
    random_spec(&s, 20, false);
    s.p.n = 1;
    s.p.ignore_eos = true;
    s.p.max_tokens = 30;
    int32_t want[MAXT];
    int n = ref_greedy(&s, f->vocab, 256, want);
    CHECK_EQ_INT(n, 30);
    static struct result r;
    /* stop_token_ids: the 5th generated token stops it (and is reported) */
    int32_t stop_id = want[4];
    int first = 0;
    while (want[first] != stop_id) first++;
    s.p.stop_token_ids = &stop_id;
    s.p.n_stop_token_ids = 1;
    submit(e, &s, &r);
    run_to_end(e);
    CHECK_EQ_INT(r.n_tokens[0], first + 1);
    CHECK_EQ_INT(r.finish[0], LOOM_FINISH_STOP);
    CHECK_EQ_INT(r.stop_token[0], stop_id);
    /* min_tokens past it: the stop token is masked, so greedy picks something else there */
    s.p.min_tokens = first + 1;
    submit(e, &s, &r);
    run_to_end(e);
    CHECK(r.n_tokens[0] > first + 1 || r.finish[0] == LOOM_FINISH_LENGTH);
    CHECK(r.tokens[0][first] != stop_id);
    s.p.min_tokens = 0;
    s.p.n_stop_token_ids = 0;

    /* aborts: from outside (waiting and running) and from the callback */
    static struct result ra, rb, rc;
    struct loom_request req;
    loom_request_default(&req);
    req.prompt_ids = s.prompt;
    req.n_prompt_ids = s.n_prompt;
    req.params = s.p;
    req.on_output = on_output;
    uint64_t ida, idb, idc;
    memset(&ra, 0, sizeof(ra));
    memset(&rb, 0, sizeof(rb));
    memset(&rc, 0, sizeof(rc));
    rc.engine = e;
    rc.abort_after = 3;
    req.user = &ra;
    CHECK_EQ_INT(loom_engine_add_request(e, &req, &ida), 0);
    req.user = &rb;
    CHECK_EQ_INT(loom_engine_add_request(e, &req, &idb), 0);
    req.user = &rc;
    CHECK_EQ_INT(loom_engine_add_request(e, &req, &idc), 0);
    CHECK_EQ_INT(loom_engine_abort(e, ida), 0); /* still in the inbox */
    loom_engine_step(e);
    loom_engine_step(e);
    CHECK_EQ_INT(loom_engine_abort(e, idb), 0); /* running */
    CHECK_EQ_INT(loom_engine_abort(e, idb), 0); /* twice is fine until it is done */
    run_to_end(e);
    CHECK_EQ_INT(ra.finish[0], LOOM_FINISH_ABORT);
    CHECK_EQ_INT(ra.n_tokens[0], 0);
    CHECK_EQ_INT(rb.finish[0], LOOM_FINISH_ABORT);
    CHECK_EQ_INT(rb.outputs[0], 3); /* two tokens, then the abort */
    CHECK_EQ_INT(rc.finish[0], LOOM_FINISH_ABORT);
    CHECK_EQ_INT(rc.n_tokens[0], 3);
    CHECK_EQ_INT(loom_engine_abort(e, idb), LOOM_ENOTFOUND);
    CHECK_EQ_INT(loom_engine_abort(e, 12345), LOOM_ENOTFOUND);
    /* free with requests left: they are aborted */
    memset(&ra, 0, sizeof(ra));
    req.user = &ra;
    CHECK_EQ_INT(loom_engine_add_request(e, &req, &ida), 0);
    loom_engine_step(e);
    loom_engine_free(e);
    CHECK_EQ_INT(ra.finish[0], LOOM_FINISH_ABORT);
}

static void test_validation(struct fake *f)
{
    struct cfg c = {.num_blocks = 10, .block_size = 16, .budget = 64, .max_seqs = 8, .model_len = 1000, .caching = true};
    struct loom_engine *e = make_engine(f, &c);
    CHECK_EQ_INT(loom_engine_max_model_len(e), 160); /* lowered to what the pool holds */
    CHECK_EQ_INT(loom_engine_vocab_size(e), f->vocab);
    CHECK(loom_engine_tokenizer(e) == NULL);
    int32_t ids[200] = {0};
    struct loom_request r;
#define BAD(field_set, status, word)                                                                       \
    do {                                                                                                 \
        loom_request_default(&r);                                                                        \
        r.prompt_ids = ids;                                                                              \
        r.n_prompt_ids = 5;                                                                              \
        field_set;                                                                                       \
        int _rc = loom_engine_add_request(e, &r, NULL);                                                  \
        CHECK_MSG(_rc == (status) && strstr(loom_last_error(), word), "%s: rc %d, '%s'", #field_set, _rc, \
                  loom_last_error());                                                                    \
    } while (0)
    BAD(r.params.n = 0, LOOM_EINVAL, "n must");
    BAD(r.params.temperature = -1, LOOM_EINVAL, "temperature");
    BAD(r.params.temperature = NAN, LOOM_EINVAL, "temperature");
    BAD(r.params.top_p = 0, LOOM_EINVAL, "top_p");
    BAD(r.params.top_p = 1.5f, LOOM_EINVAL, "top_p");
    BAD(r.params.top_k = -2, LOOM_EINVAL, "top_k");
    BAD(r.params.min_p = 2, LOOM_EINVAL, "min_p");
    BAD(r.params.repetition_penalty = 0, LOOM_EINVAL, "repetition_penalty");
    BAD(r.params.presence_penalty = 3, LOOM_EINVAL, "presence_penalty");
    BAD(r.params.frequency_penalty = -3, LOOM_EINVAL, "frequency_penalty");
    BAD(r.params.max_tokens = 0, LOOM_EINVAL, "max_tokens");
    BAD(r.params.min_tokens = 20, LOOM_EINVAL, "min_tokens");
    BAD(r.params.logprobs = 21, LOOM_EINVAL, "logprobs");
    BAD(r.params.prompt_logprobs = -2, LOOM_EINVAL, "prompt_logprobs");
    const char *stops[1] = {"x"};
    BAD((r.params.stop = stops, r.params.n_stop = 1), LOOM_EINVAL, "tokenizer");
    int32_t bad_id = 100000;
    BAD((r.params.stop_token_ids = &bad_id, r.params.n_stop_token_ids = 1), LOOM_EINVAL, "stop_token_ids");
    struct loom_logit_bias lb = {-1, 1};
    BAD((r.params.logit_bias = &lb, r.params.n_logit_bias = 1), LOOM_EINVAL, "logit_bias");
    BAD(r.prompt = "hello", LOOM_EINVAL, "tokenizer");
    BAD(r.n_prompt_ids = 0, LOOM_EINVAL, "empty");
    BAD(ids[2] = f->vocab, LOOM_EINVAL, "vocabulary");
    ids[2] = 0;
    BAD(r.n_prompt_ids = 160, LOOM_ETOOLONG, "max_model_len");
    /* 159 fits: one token can be generated */
    loom_request_default(&r);
    r.prompt_ids = ids;
    r.n_prompt_ids = 159;
    r.params.max_tokens = 100;
    static struct result res;
    memset(&res, 0, sizeof(res));
    r.on_output = on_output;
    r.user = &res;
    CHECK_EQ_INT(loom_engine_add_request(e, &r, NULL), 0);
    run_to_end(e);
    CHECK_EQ_INT(res.n_tokens[0], 1);
    CHECK_EQ_INT(res.finish[0], LOOM_FINISH_LENGTH);
    loom_engine_free(e);
#undef BAD
}

/* Stop strings and text deltas, with the stories260K tokenizer (vocabulary 512) over the fake model */
static void test_stop_strings(struct fake *f)
{
    struct loom_tokenizer *tok = NULL;
    if (loom_tokenizer_load(test_shared("models/stories260K"), &tok)) {
        printf("stop strings: no tokenizer (%s), skipped\n", loom_last_error());
        return;
    }
    struct fake g = {.vocab = 512};
    struct cfg c = {.num_blocks = 100, .block_size = 4, .budget = 64, .max_seqs = 8, .model_len = 256, .caching = true, .tok = tok};
    struct loom_engine *e = make_engine(&g, &c);
    struct spec s;
    loom_sampling_params_default(&s.p);
    s.p.temperature = 0;
    s.p.max_tokens = 40;
    s.p.ignore_eos = true;
    s.n_prompt = 3;
    s.prompt[0] = 1;
    s.prompt[1] = 300;
    s.prompt[2] = 301;
    /* keep to word pieces: no <unk>/<s>/</s> and no byte-fallback tokens (ids 0..258) */
    static struct loom_logit_bias no_bytes[259];
    for (int i = 0; i < 259; i++) no_bytes[i] = (struct loom_logit_bias){i, -100.0f};
    s.p.logit_bias = no_bytes;
    s.p.n_logit_bias = 259;
    static struct result full, r;
    if (getenv("DUMP_IDS")) {
        s.p.n_logit_bias = 0;
        submit(e, &s, &full);
        run_to_end(e);
        for (int i = 0; i < full.n_tokens[0]; i++) fprintf(stderr, "%d,", full.tokens[0][i]);
        fprintf(stderr, "\n");
        s.p.n_logit_bias = 259;
    }
    submit(e, &s, &full);
    run_to_end(e);
    /* the streamed text equals the decode of the tokens */
    char *dec = NULL;
    size_t dlen = 0;
    CHECK_EQ_INT(loom_tokenizer_decode(tok, full.tokens[0], full.n_tokens[0], true, &dec, &dlen), 0);
    CHECK_MSG(dec && dlen == full.text_len[0] && !memcmp(dec, full.text[0], dlen), "decode '%.*s' (%zu)\n   stream '%.*s' (%zu)",
              (int)dlen, dec, dlen, (int)full.text_len[0], full.text[0], full.text_len[0]);
    free(dec);
    CHECK(full.text_len[0] > 20);
    /* a stop string from the middle of that text */
    size_t at = full.text_len[0] / 2;
    char stop[8];
    memcpy(stop, full.text[0] + at, 4);
    stop[4] = 0;
    while (at > 0 && (full.text[0][at] & 0xC0) == 0x80) at--; /* start on a character */
    memcpy(stop, full.text[0] + at, 4);
    size_t first = (size_t)((const char *)memmem(full.text[0], full.text_len[0], stop, 4) - full.text[0]);
    const char *stops[2] = {"\x01never", stop};
    s.p.stop = stops;
    s.p.n_stop = 2;
    submit(e, &s, &r);
    run_to_end(e);
    CHECK_EQ_INT(r.finish[0], LOOM_FINISH_STOP);
    CHECK_EQ_STR(r.stop_string[0], stop);
    CHECK_EQ_INT(r.stop_token[0], -1);
    CHECK_EQ_INT(r.text_len[0], first);
    CHECK(!memcmp(r.text[0], full.text[0], first));
    CHECK(r.n_tokens[0] < full.n_tokens[0]);
    CHECK(!memcmp(r.tokens[0], full.tokens[0], sizeof(int32_t) * (size_t)r.n_tokens[0]));
    s.p.include_stop_str_in_output = true;
    submit(e, &s, &r);
    run_to_end(e);
    CHECK_EQ_INT(r.text_len[0], first + 4);
    CHECK(!memcmp(r.text[0], full.text[0], first + 4));
    loom_engine_free(e); /* frees the tokenizer */
    free(g.kv);
}

/* The engine thread: requests from several threads, outputs through callbacks */
struct client {
    struct loom_engine *e;
    struct spec *specs;
    struct result *res;
    int n;
    pthread_mutex_t *lock;
    pthread_cond_t *cond;
    int *n_done;
};

static void *client_main(void *arg)
{
    struct client *c = arg;
    for (int i = 0; i < c->n; i++) {
        c->res[i].lock = c->lock;
        c->res[i].cond = c->cond;
        c->res[i].n_done = c->n_done;
        struct loom_request req;
        loom_request_default(&req);
        req.prompt_ids = c->specs[i].prompt;
        req.n_prompt_ids = c->specs[i].n_prompt;
        req.params = c->specs[i].p;
        req.on_output = on_output;
        req.user = &c->res[i];
        if (loom_engine_add_request(c->e, &req, NULL)) {
            fprintf(stderr, "add: %s\n", loom_last_error());
            c->res[i].bad++;
        }
        usleep(200);
    }
    return NULL;
}

static void test_thread(struct fake *f)
{
    enum { NT = 4, PER = 10 };
    static struct spec specs[NT * PER];
    static struct result res[NT * PER];
    rs = 31;
    int total = 0;
    for (int i = 0; i < NT * PER; i++) {
        random_spec(&specs[i], 50, false);
        specs[i].p.n = 1;
        total++;
    }
    struct cfg c = {.num_blocks = 40, .block_size = 8, .budget = 32, .max_seqs = 16, .model_len = 256, .caching = true};
    struct loom_engine *e = make_engine(f, &c);
    CHECK_EQ_INT(loom_engine_start(e), 0);
    CHECK_EQ_INT(loom_engine_start(e), LOOM_EINVAL);
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
    int n_done = 0;
    memset(res, 0, sizeof(res));
    pthread_t th[NT];
    struct client cl[NT];
    for (int t = 0; t < NT; t++) {
        cl[t] = (struct client){e, specs + t * PER, res + t * PER, PER, &lock, &cond, &n_done};
        pthread_create(&th[t], NULL, client_main, &cl[t]);
    }
    for (int t = 0; t < NT; t++) pthread_join(th[t], NULL);
    pthread_mutex_lock(&lock);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 60;
    while (n_done < total)
        if (pthread_cond_timedwait(&cond, &lock, &deadline)) break;
    CHECK_MSG(n_done == total, "%d of %d requests finished", n_done, total);
    for (int i = 0; i < NT * PER && n_done < total; i++)
        if (res[i].finish[0] == LOOM_FINISH_NONE)
            fprintf(stderr, "request %d: %d tokens, bad %d, outputs %d\n", i, res[i].n_tokens[0], res[i].bad, res[i].outputs[0]);
    pthread_mutex_unlock(&lock);
    loom_engine_stop(e);
    CHECK(!loom_engine_has_work(e));
    int bad = 0;
    for (int i = 0; i < NT * PER; i++) {
        int32_t want[MAXT];
        int n = ref_greedy(&specs[i], f->vocab, 256, want);
        bad += res[i].bad || res[i].n_tokens[0] != n || memcmp(res[i].tokens[0], want, sizeof(int32_t) * (size_t)n);
    }
    CHECK_EQ_INT(bad, 0);
    /* restart after stop */
    CHECK_EQ_INT(loom_engine_start(e), 0);
    loom_engine_stop(e);
    loom_engine_check(e);
    loom_engine_free(e);
}

/* Priority policy: with one sequence at a time, requests run in (priority, arrival) order;
 * under FCFS in arrival order. */
static int finish_order[8], n_finished_order;
static void on_order(const struct loom_output *o, void *user)
{
    if (o->finish_reason != LOOM_FINISH_NONE) finish_order[n_finished_order++] = (int)(intptr_t)user;
}

static void test_policy(struct fake *f)
{
    int prio[4] = {2, 0, 1, 0};
    int32_t ids[3] = {5, 6, 7};
    for (int pol = 0; pol < 2; pol++) {
        struct cfg c = {.num_blocks = 50, .block_size = 4, .budget = 64, .max_seqs = 1, .model_len = 256, .caching = true,
                        .policy = pol ? LOOM_SCHED_PRIORITY : LOOM_SCHED_FCFS};
        struct loom_engine *e = make_engine(f, &c);
        n_finished_order = 0;
        for (int i = 0; i < 4; i++) {
            struct loom_request r;
            loom_request_default(&r);
            r.prompt_ids = ids;
            r.n_prompt_ids = 3;
            r.params.max_tokens = 3;
            r.params.ignore_eos = true;
            r.params.priority = prio[i];
            r.on_output = on_order;
            r.user = (void *)(intptr_t)i;
            CHECK_EQ_INT(loom_engine_add_request(e, &r, NULL), 0);
        }
        run_to_end(e);
        int want_fcfs[4] = {0, 1, 2, 3}, want_prio[4] = {1, 3, 2, 0};
        CHECK_EQ_INT(n_finished_order, 4);
        CHECK(!memcmp(finish_order, pol ? want_prio : want_fcfs, sizeof(want_fcfs)));
        loom_engine_free(e);
    }
}

/* n > 1 without prefix caching: samples 1.. fork sample 0's full prompt blocks and compute only the
 * partial last block; a failing forward fails that step's requests with an error and no others. */
static void test_fork_and_errors(struct fake *f)
{
    struct spec s;
    rs = 21;
    random_spec(&s, 40, false);
    s.n_prompt = 40;
    for (int i = 0; i < 40; i++) s.prompt[i] = (int32_t)rnd(64);
    s.p.n = 4;
    s.p.max_tokens = 6;
    s.p.ignore_eos = true;
    static struct result r, r2;
    struct cfg c = {.num_blocks = 100, .block_size = 16, .budget = 2048, .max_seqs = 8, .model_len = 256, .caching = false};
    struct loom_engine *e = make_engine(f, &c);
    submit(e, &s, &r);
    run_to_end(e);
    struct loom_engine_stats st;
    loom_engine_get_stats(e, &st);
    CHECK_EQ_INT(st.prompt_tokens_computed, 40 + 3 * (40 - 32)); /* 2 full blocks shared 3 times */
    int32_t want[MAXT];
    CHECK_EQ_INT(ref_greedy(&s, f->vocab, 256, want), 6);
    for (int k = 0; k < 4; k++) CHECK(r.n_tokens[k] == 6 && !memcmp(r.tokens[k], want, sizeof(int32_t) * 6));

    /* the 3rd forward fails: the request in it ends with an error; one added later is served */
    f->calls = 0;
    f->fail_call = 3;
    s.p.n = 1;
    submit(e, &s, &r);
    run_to_end(e);
    CHECK_EQ_INT(r.finish[0], LOOM_FINISH_ERROR);
    CHECK_EQ_INT(r.n_tokens[0], 2);
    f->fail_call = 0;
    submit(e, &s, &r2);
    run_to_end(e);
    CHECK_EQ_INT(r2.finish[0], LOOM_FINISH_LENGTH);
    CHECK_EQ_INT(r2.n_tokens[0], 6);
    loom_engine_free(e);
}

/* More unfinished requests than the engine takes: LOOM_EFULL, and nothing is lost. */
static void test_full(struct fake *f)
{
    struct cfg c = {.num_blocks = 100, .block_size = 16, .budget = 64, .max_seqs = 8, .model_len = 256, .caching = true};
    struct loom_engine *e = make_engine(f, &c);
    int32_t ids[2] = {1, 2};
    struct loom_request r;
    loom_request_default(&r);
    r.prompt_ids = ids;
    r.n_prompt_ids = 2;
    int n = 0, rc = 0;
    while ((rc = loom_engine_add_request(e, &r, NULL)) == 0 && n < 200000) n++;
    CHECK_EQ_INT(rc, LOOM_EFULL);
    CHECK_EQ_INT(n, 1 << 16);
    CHECK(strstr(loom_last_error(), "unfinished requests") != NULL);
    loom_engine_step(e);
    CHECK_EQ_INT(loom_engine_add_request(e, &r, NULL), LOOM_EFULL); /* still full: nothing finished yet */
    loom_engine_free(e); /* aborts them all */
}

int main(void)
{
    loom_log_set_level(LOOM_LOG_WARN);
    struct fake f = {.vocab = 64};
    rs = 3;
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < 300; i++) bases[b][i] = (int32_t)rnd(64);
    test_greedy_streams(&f);
    test_seeded_invariance(&f);
    test_prefix_caching(&f);
    test_logprobs(&f);
    test_stops_and_aborts(&f);
    test_validation(&f);
    test_stop_strings(&f);
    test_thread(&f);
    test_policy(&f);
    test_fork_and_errors(&f);
    test_full(&f);
    free(f.kv);
    return test_report();
}
