/*
 * test_engine_golden.c: batch invariance of the whole engine on the real models of ../shared/models.
 * For every checkpoint, all its golden prompts are submitted at once, longest first (greedy, ignore_eos,
 * max_tokens = the golden length) and, through the engine's logits hook, every prompt-position row is compared with
 * p{k}.logits (within 1e-3, fp32 on the CPU) and the greedy tokens with p{k}.greedy up to the first
 * step whose golden margin is below 1e-3. Three engine set-ups:
 *   - the defaults (1 GiB KV cache, budget 2048);
 *   - --num-kv-blocks 16 --block-size 16: preemption must happen where the prompts cannot all fit;
 *   - --max-num-batched-tokens 8: prefills are chunked.
 * Then, on stories260K: seeded sampling (temperature 1, top_p, top_k, n up to 3) gives the same tokens for
 * 32 requests alone, batched, preempted and chunked; and a request sharing a 150-token prefix with an
 * earlier one computes only its last 36 prompt tokens, with the same tokens and logits as without the cache.
 * LOOM_GOLDEN_THREADS sets the CPU threads (default: all cores); LOOM_GOLDEN_MODELS=a,b limits the models.
 */
#include "backend/backend.h"
#include "core/log.h"
#include "engine/engine_internal.h"
#include "format/safetensors.h"
#include "test.h"

#include <math.h>
#include <stdint.h>

/* The device the engines run on: test_cuda_engine.c includes this file with "cuda". */
#ifndef ENGINE_TEST_DEVICE
#define ENGINE_TEST_DEVICE "cpu"
#endif

#define TOL 1e-3
#define MAXP 4

static const char *models[] = {"llama-tiny",           "qwen2-tiny",   "qwen3-tiny",      "mistral-tiny-f16",
                               "llama31-tiny-sharded", "mixtral-tiny", "qwen2-tiny-151k", "stories260K"};

struct prompt {
    const int32_t *ids, *greedy;
    const float *logits, *margin;
    int L, G, R; /* prompt length, greedy steps, golden logits rows (L, or 1 = the last position) */
    uint64_t id;
    int32_t out[256];
    int n_out;
    enum loom_finish_reason finish;
    double max_err;
    int rows_checked;
};

struct run {
    struct prompt p[MAXP];
    int n, vocab;
};

static void on_output(const struct loom_output *o, void *user)
{
    struct prompt *p = user;
    for (int i = 0; i < o->n_tokens && p->n_out < 256; i++) p->out[p->n_out++] = o->token_ids[i];
    p->finish = o->finish_reason;
}

static void on_logits(void *user, uint64_t request_id, int index, int position, const float *logits, int vocab)
{
    struct run *r = user;
    for (int k = 0; k < r->n; k++) {
        struct prompt *p = &r->p[k];
        if (p->id != request_id || position >= p->L) continue;
        int row = p->R == p->L ? position : (position == p->L - 1 ? 0 : -1);
        if (row < 0) continue;
        const float *g = p->logits + (size_t)row * vocab;
        for (int v = 0; v < vocab; v++) {
            double e = fabs((double)logits[v] - g[v]);
            if (!(e <= p->max_err)) p->max_err = isnan(e) ? INFINITY : e;
        }
        p->rows_checked++;
    }
    (void)index;
}

static const float *tensor_f32(struct loom_safetensors *st, const char *name, int *n0)
{
    const struct loom_st_tensor *t = loom_safetensors_find(st, name);
    if (!t || t->dtype != LOOM_DTYPE_F32) return NULL;
    *n0 = (int)t->shape[0];
    return t->data;
}

static const int32_t *tensor_i32(struct loom_safetensors *st, const char *name, int *n0)
{
    const struct loom_st_tensor *t = loom_safetensors_find(st, name);
    if (!t || t->dtype != LOOM_DTYPE_I32) return NULL;
    *n0 = (int)t->shape[0];
    return t->data;
}

static void run_model(const char *name, int threads)
{
    char dir[512], golden[600];
    snprintf(dir, sizeof(dir), "%s", test_shared("models/"));
    strncat(dir, name, sizeof(dir) - strlen(dir) - 1);
    snprintf(golden, sizeof(golden), "%s/golden.safetensors", dir);
    struct loom_safetensors *st = NULL;
    if (loom_safetensors_open(golden, &st)) {
        CHECK_MSG(0, "%s: %s", golden, loom_last_error());
        return;
    }
    static struct run r;
    memset(&r, 0, sizeof(r));
    for (int k = 0; k < MAXP; k++) {
        char nm[64];
        struct prompt *p = &r.p[r.n];
        snprintf(nm, sizeof(nm), "p%d.ids", k);
        if (!(p->ids = tensor_i32(st, nm, &p->L))) break;
        snprintf(nm, sizeof(nm), "p%d.greedy", k);
        p->greedy = tensor_i32(st, nm, &p->G);
        snprintf(nm, sizeof(nm), "p%d.margin", k);
        int gm = 0;
        p->margin = tensor_f32(st, nm, &gm);
        snprintf(nm, sizeof(nm), "p%d.logits", k);
        p->logits = tensor_f32(st, nm, &p->R);
        CHECK(p->greedy && p->margin && p->logits && gm == p->G && (p->R == p->L || p->R == 1));
        r.n++;
    }
    CHECK(r.n >= 3);

    struct setup {
        const char *what;
        int num_kv_blocks, block_size, budget;
    } setups[] = {
        {"defaults", 0, 16, 2048},
        {"--num-kv-blocks 16 --block-size 16", 16, 16, 2048},
        {"--max-num-batched-tokens 8", 0, 16, 8},
    };
    for (size_t si = 0; si < sizeof(setups) / sizeof(setups[0]); si++) {
        struct loom_engine_options o;
        loom_engine_options_default(&o);
        o.model_dir = dir;
        o.device = ENGINE_TEST_DEVICE;
        o.gpu_memory_utilization = 0.2f;
        o.threads = threads;
        o.dtype = "float32"; /* fp32 compute: the golden tolerance is 1e-3 */
        o.num_kv_blocks = setups[si].num_kv_blocks;
        o.block_size = setups[si].block_size;
        o.max_num_batched_tokens = setups[si].budget;
        o.kv_cache_memory = 64 << 20;
        struct loom_engine *e = NULL;
        int rc = loom_engine_create(&o, &e);
        CHECK_MSG(rc == 0, "%s: create: %s", name, loom_last_error());
        if (rc) continue;
        r.vocab = loom_engine_vocab_size(e);
        loom_engine_set_logits_hook(e, on_logits, &r);
        int blocks_needed = 0;
        for (int k = r.n - 1; k >= 0; k--) { /* the longest first: with 16 blocks, all are admitted, then grow */
            struct prompt *p = &r.p[k];
            p->n_out = 0;
            p->max_err = 0;
            p->rows_checked = 0;
            p->finish = LOOM_FINISH_NONE;
            struct loom_request req;
            loom_request_default(&req);
            req.prompt_ids = p->ids;
            req.n_prompt_ids = p->L;
            req.params.temperature = 0;
            req.params.ignore_eos = true;
            req.params.max_tokens = p->G;
            req.params.prompt_logprobs = p->R == p->L ? 0 : -1; /* the prompt rows only when they are compared */
            req.on_output = on_output;
            req.user = p;
            rc = loom_engine_add_request(e, &req, &p->id);
            CHECK_MSG(rc == 0, "%s: add: %s", name, loom_last_error());
        }
        for (int t = 0; t <= 256; t++) { /* blocks held together after t steps if all ran at once */
            int held = 0;
            for (int k = 0; k < r.n; k++)
                if (t < r.p[k].G) held += (r.p[k].L + t + 1 + 15) / 16;
            if (held > blocks_needed) blocks_needed = held;
        }
        for (int guard = 0; loom_engine_has_work(e) && guard < 100000; guard++) loom_engine_step(e);
        loom_engine_check(e);
        struct loom_engine_stats stats;
        loom_engine_get_stats(e, &stats);
        int bad = 0;
        for (int k = 0; k < r.n; k++) {
            struct prompt *p = &r.p[k];
            int cmp = 0;
            while (cmp < p->G && p->margin[cmp] >= TOL) cmp++;
            int same = 0;
            while (same < cmp && same < p->n_out && p->out[same] == p->greedy[same]) same++;
            if (same < cmp || p->n_out != p->G || p->finish != LOOM_FINISH_LENGTH) {
                CHECK_MSG(0, "%s [%s] prompt %d: %d tokens, the first %d of %d comparable match", name, setups[si].what, k,
                          p->n_out, same, cmp);
                bad++;
            }
            if (!(p->max_err <= TOL) || p->rows_checked < p->R) {
                CHECK_MSG(0, "%s [%s] prompt %d: logits error %.3g over %d rows (of %d)", name, setups[si].what, k,
                          p->max_err, p->rows_checked, p->R);
                bad++;
            }
        }
        if (si == 1 && blocks_needed > 16)
            CHECK_MSG(stats.num_preemptions > 0, "%s: %d blocks needed of 16 and no preemption", name, blocks_needed);
        if (si == 2) CHECK_MSG(stats.num_prefill_chunks > 0, "%s: no chunked prefill with a budget of 8", name);
        double worst = 0;
        for (int k = 0; k < r.n; k++)
            if (r.p[k].max_err > worst) worst = r.p[k].max_err;
        printf("%-22s %-36s %s: max logit error %.2e, %lld steps, %lld preemptions, %lld prefill chunks\n", name,
               setups[si].what, bad ? "FAIL" : "ok", worst, (long long)stats.num_steps, (long long)stats.num_preemptions,
               (long long)stats.num_prefill_chunks);
        loom_engine_free(e);
    }
    loom_safetensors_close(st);
}

/* ---------------------------------------------------------------------------------------------- */
/* Sampling and prefix caching on a real model (stories260K) */

struct sampled {
    int32_t out[4][64];
    int n_out[4];
    float lp[4][64];     /* each sampled token's logprob */
    int32_t top1[4][64]; /* and the best token's id (the requests ask for logprobs = 2) */
    enum loom_finish_reason finish[4];
    float last_logits[64]; /* a few logits of the sample row of the last prompt position */
    uint64_t id;
    int L;
};

static void on_sampled(const struct loom_output *o, void *user)
{
    struct sampled *s = user;
    for (int i = 0; i < o->n_tokens && s->n_out[o->index] < 64; i++) {
        int j = s->n_out[o->index]++;
        s->out[o->index][j] = o->token_ids[i];
        s->lp[o->index][j] = o->logprobs ? o->logprobs[i].logprob : NAN;
        s->top1[o->index][j] = o->top_logprobs ? o->top_logprobs[i * o->top_k].token_id : -1;
    }
    s->finish[o->index] = o->finish_reason;
}

static struct sampled *hooked;
static int n_hooked;
static void on_last_logits(void *user, uint64_t request_id, int index, int position, const float *logits, int vocab)
{
    for (int k = 0; k < n_hooked; k++)
        if (hooked[k].id == request_id && position == hooked[k].L - 1)
            memcpy(hooked[k].last_logits, logits, sizeof(hooked[k].last_logits));
    (void)user;
    (void)index;
    (void)vocab;
}

static struct loom_engine *stories_engine(int threads, int num_kv_blocks, int budget, bool caching)
{
    struct loom_engine_options o;
    loom_engine_options_default(&o);
    o.model_dir = test_shared("models/stories260K");
    o.device = ENGINE_TEST_DEVICE;
    o.gpu_memory_utilization = 0.2f;
    o.threads = threads;
    o.dtype = "float32";
    o.num_kv_blocks = num_kv_blocks;
    o.max_num_batched_tokens = budget;
    o.kv_cache_memory = 64 << 20;
    o.enable_prefix_caching = caching;
    struct loom_engine *e = NULL;
    int rc = loom_engine_create(&o, &e);
    CHECK_MSG(rc == 0, "stories260K: %s", loom_last_error());
    return e;
}

static void add_sampled(struct loom_engine *e, const int32_t *ids, int L, int n, uint64_t seed, struct sampled *s)
{
    memset(s, 0, sizeof(*s));
    s->L = L;
    struct loom_request r;
    loom_request_default(&r);
    r.prompt_ids = ids;
    r.n_prompt_ids = L;
    r.params.n = n;
    r.params.temperature = 1;
    r.params.top_p = 0.9f;
    r.params.top_k = 40;
    r.params.max_tokens = 40;
    r.params.has_seed = true;
    r.params.seed = seed;
    r.params.ignore_eos = true;
    r.params.logprobs = 2;
    r.on_output = on_sampled;
    r.user = s;
    CHECK_EQ_INT(loom_engine_add_request(e, &r, &s->id), 0);
}

static void drain(struct loom_engine *e)
{
    for (int guard = 0; loom_engine_has_work(e) && guard < 100000; guard++) loom_engine_step(e);
}

/* Seeded sampling at temperature 1 with top_p/top_k: 32 requests give the same tokens alone, all in
 * one batch, with 16 KV blocks (preempting) and with a budget of 8 tokens (chunking). */
static void test_seeded_real(int threads)
{
    enum { N = 32 };
    static int32_t prompts[N][40];
    static int lens[N];
    static struct sampled alone[N], got[N];
    for (int i = 0; i < N; i++) {
        lens[i] = 1 + (i * 7) % 37;
        prompts[i][0] = 1;
        for (int j = 1; j < lens[i]; j++) prompts[i][j] = 3 + (int32_t)((i * 131 + j * 17) % 500);
    }
    for (int i = 0; i < N; i++) {
        struct loom_engine *e = stories_engine(threads, 0, 2048, true);
        if (!e) return;
        add_sampled(e, prompts[i], lens[i], 1 + i % 3, 1000 + i, &alone[i]);
        drain(e);
        loom_engine_free(e);
    }
    /* "host sampling": where the backend samples (CUDA), the same requests sampled on the host from the
     * downloaded logits must give the same tokens (the GPU sampler follows the host's rules) */
    /* "padded decode": decode steps padded to batch-size buckets (forward.c; CUDA's default, forced here
     * on any backend) must not change any token */
    struct {
        const char *what;
        int blocks, budget;
        bool host_sampling, pad;
    } setups[] = {{"batch of 32", 0, 2048, false, false}, {"16 KV blocks", 16, 2048, false, false},
                  {"budget 8", 0, 8, false, false}, {"host sampling", 0, 2048, true, false},
                  {"padded decode", 16, 2048, false, true}};
    for (int si = 0; si < 5; si++) {
        if (setups[si].host_sampling) setenv("LOOM_BACKEND_SAMPLING", "0", 1);
        if (setups[si].pad) setenv("LOOM_PAD_DECODE", "1", 1);
        struct loom_engine *e = stories_engine(threads, setups[si].blocks, setups[si].budget, true);
        unsetenv("LOOM_BACKEND_SAMPLING");
        unsetenv("LOOM_PAD_DECODE");
        if (!e) return;
        for (int i = 0; i < N; i++) add_sampled(e, prompts[i], lens[i], 1 + i % 3, 1000 + i, &got[i]);
        drain(e);
        struct loom_engine_stats st;
        loom_engine_get_stats(e, &st);
        int bad = 0;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < 1 + i % 3; k++)
                bad += got[i].n_out[k] != 40 || alone[i].n_out[k] != 40 ||
                       memcmp(got[i].out[k], alone[i].out[k], sizeof(int32_t) * 40);
        CHECK_MSG(bad == 0, "seeded sampling, %s: %d samples differ from the request alone", setups[si].what, bad);
        /* the logprobs: from the backend's sampler (CUDA) or the host's, the same within float rounding */
        int bad_lp = 0;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < 1 + i % 3; k++)
                for (int t = 0; t < 40 && !bad; t++)
                    bad_lp += !(fabsf(got[i].lp[k][t] - alone[i].lp[k][t]) <= 1e-4f) || got[i].top1[k][t] != alone[i].top1[k][t];
        CHECK_MSG(bad_lp == 0, "seeded sampling, %s: %d logprobs differ from the request alone", setups[si].what, bad_lp);
        if (si == 1) CHECK_MSG(st.num_preemptions > 0, "16 KV blocks: no preemption");
        if (si == 2) CHECK_MSG(st.num_prefill_chunks > 0, "budget 8: no chunked prefill");
        printf("stories260K seeded sampling, %-12s: %s (%lld preemptions, %lld chunks)\n", setups[si].what,
               bad ? "FAIL" : "ok", (long long)st.num_preemptions, (long long)st.num_prefill_chunks);
        loom_engine_free(e);
    }
}

/* A second request sharing a 150-token prefix computes only the rest, and gives the same tokens and
 * logits as without the cache. */
static void test_prefix_real(int threads)
{
    int32_t a[200], b[180];
    a[0] = b[0] = 1;
    for (int j = 1; j < 200; j++) a[j] = 3 + (j * 37) % 500;
    memcpy(b, a, sizeof(int32_t) * 150);
    for (int j = 150; j < 180; j++) b[j] = 3 + (j * 11) % 500;
    static struct sampled ra, rb, rb0;
    struct sampled *slots[2] = {&rb, &rb0};
    for (int pass = 0; pass < 2; pass++) {
        struct loom_engine *e = stories_engine(threads, 0, 2048, pass == 0);
        if (!e) return;
        struct loom_engine_stats s0, s1;
        if (pass == 0) {
            add_sampled(e, a, 200, 1, 1, &ra);
            drain(e);
        }
        loom_engine_get_stats(e, &s0);
        hooked = slots[pass];
        n_hooked = 1;
        loom_engine_set_logits_hook(e, on_last_logits, NULL);
        add_sampled(e, b, 180, 1, 2, slots[pass]);
        drain(e);
        loom_engine_get_stats(e, &s1);
        long long computed = s1.prompt_tokens_computed - s0.prompt_tokens_computed;
        CHECK_EQ_INT(computed, pass == 0 ? 180 - 144 : 180); /* 9 full blocks of 16 reused */
        loom_engine_free(e);
    }
    CHECK(rb.n_out[0] == 40 && !memcmp(rb.out[0], rb0.out[0], sizeof(int32_t) * 40));
    double err = 0, mag = 0;
    for (int v = 0; v < 64; v++) {
        err = fmax(err, fabs(rb.last_logits[v] - rb0.last_logits[v]));
        mag = fmax(mag, fabs(rb0.last_logits[v]));
    }
    CHECK_MSG(mag > 0.1, "the logits hook saw no row"); /* the comparison below is of real rows */
    CHECK_MSG(err <= TOL, "prefix-cached logits differ by %g", err);
    printf("stories260K prefix caching: 36 of 180 prompt tokens computed, tokens equal, logits within %.2e\n", err);
}

int main(void)
{
    loom_log_set_level(LOOM_LOG_WARN);
    if (!strcmp(ENGINE_TEST_DEVICE, "cuda") && !loom_backend_cuda_available()) test_skip("no CUDA device");
    printf("engine tests on --device %s\n", ENGINE_TEST_DEVICE);
    const char *t = getenv("LOOM_GOLDEN_THREADS");
    int threads = t ? atoi(t) : 0;
    const char *only = getenv("LOOM_GOLDEN_MODELS");
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++) {
        if (only && !strstr(only, models[i])) continue;
        run_model(models[i], threads);
    }
    if (!only || strstr(only, "stories260K")) {
        test_seeded_real(threads);
        test_prefix_real(threads);
    }
    return test_report();
}
