/*
 * test_cuda_sample.c: sampling on the GPU (the CUDA backend's `sample` op) against the host sampler
 * (engine/sampler.c, itself tested against vLLM's rules in test_sampler): for random logits rows and
 * every kind of parameter (greedy with ties, temperature, top-k with ties at the k-th, top-p with ties
 * at the threshold, min-p, repetition / frequency / presence penalties, logit_bias naming a token
 * twice, min_tokens masks, everything masked, skipped rows) the GPU must choose the very token the
 * host chooses from the same logits and the same draw. Then determinism: each row sampled alone gives
 * what it gave in the batch.
 * Exits 77 where no CUDA device is present.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "engine/sampler.h"
#include "test.h"

#include <stdint.h>

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static float nrand(void)
{
    double u = urand() + 1e-300, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

enum shape { PLAIN, TIES_TOP, FLAT, MANY_TIES };

struct row_case {
    const char *name;
    struct loom_sampling_params p;
    enum shape shape;
    int mask_all; /* min_tokens mask over every token */
    int skip;
};

#define MAXR 64

static struct loom_backend *be;

/* Samples rows [0, n) of logits [n, V] on the GPU; tokens out. */
static void gpu_sample(const float *logits, int n, int V, const struct loom_sample_row *rows,
                       const struct loom_logit_edit *edits, int n_edits, int32_t *tokens, struct loom_sample_logprob *lps)
{
    size_t bytes = sizeof(float) * (size_t)n * (size_t)V;
    float *d = be->ops->alloc(be, bytes);
    be->ops->upload(be, d, logits, bytes);
    be->ops->sample(be, loom_tensor_2d(d, LOOM_DTYPE_F32, n, V), rows, n, edits, n_edits, tokens, lps);
    be->ops->free(be, d);
}

static void run_cases(int V, const struct row_case *cases, int n_cases, int per_case)
{
    struct loom_sampler s;
    CHECK(loom_sampler_init(&s, V) == 0);
    int n = n_cases * per_case;
    LOOM_ASSERT(n <= MAXR);
    float *logits = malloc(sizeof(float) * (size_t)n * (size_t)V);
    static int32_t prompt[MAXR][40], output[MAXR][30], stop_ids[MAXR][8], *mask_all;
    mask_all = malloc(sizeof(int32_t) * (size_t)V);
    for (int i = 0; i < V; i++) mask_all[i] = i;
    struct loom_sample_input in[MAXR];
    struct loom_sample_row rows[MAXR];
    struct loom_logit_edit *edits = NULL;
    int n_edits = 0, cap_edits = 0;
    int32_t host[MAXR], dev[MAXR], alone[MAXR];
    enum { LPR = 1 + LOOM_SAMPLE_MAX_LOGPROBS };
    static struct loom_sample_logprob lps[MAXR * LPR], lps1[LPR];

    for (int r = 0; r < n; r++) {
        const struct row_case *c = &cases[r / per_case];
        float *x = logits + (size_t)r * V;
        float scale = 1.0f + 3.0f * (float)urand();
        for (int i = 0; i < V; i++) x[i] = nrand() * scale;
        if (c->shape == TIES_TOP) { /* the top value three times: greedy takes the lowest id */
            float m = x[0];
            for (int i = 1; i < V; i++) m = x[i] > m ? x[i] : m;
            x[V - 1] = x[V / 2] = x[V / 3] = m + 1.0f;
        } else if (c->shape == FLAT) { /* every token equal: top-p keeps the lowest ids */
            for (int i = 0; i < V; i++) x[i] = 0.25f;
        } else if (c->shape == MANY_TIES) { /* a few distinct values, many ties at every threshold */
            for (int i = 0; i < V; i++) x[i] = (float)((int)(urand() * 6)) * 0.5f;
        }
        for (int i = 0; i < 40; i++) prompt[r][i] = (int32_t)(urand() * V);
        for (int i = 0; i < 30; i++) output[r][i] = (int32_t)(urand() * (i < 10 || V < 12 ? V : 12)); /* repeats */
        for (int i = 0; i < 8; i++) stop_ids[r][i] = (int32_t)(urand() * V);
        in[r] = (struct loom_sample_input){
            .p = &c->p, .prompt = prompt[r], .n_prompt = 40, .output = output[r], .n_output = 30,
            .stop_ids = c->mask_all ? mask_all : stop_ids[r], .n_stop_ids = c->mask_all ? V : 8,
            .rng_key = loom_rng_mix(0x5eedull + (uint64_t)r),
        };
        host[r] = c->skip ? -1 : loom_sampler_sample(&s, x, &in[r]);
        loom_sampler_backend_row(&s, &in[r], &rows[r], &edits, &n_edits, &cap_edits);
        rows[r].skip = c->skip;
    }
    gpu_sample(logits, n, V, rows, edits, n_edits, dev, lps);
    for (int r = 0; r < n; r++)
        CHECK_MSG(dev[r] == host[r], "V %d, case %s, row %d: GPU token %d, host token %d", V,
                  cases[r / per_case].name, r, dev[r], host[r]);
    /* alone: the same row in a batch of one (its edits re-based to 0) */
    for (int r = 0; r < n; r++) {
        struct loom_sample_row one = rows[r];
        int ne = one.n_mask + one.n_bias + one.n_rep + one.n_sub;
        one.edit0 = 0;
        gpu_sample(logits + (size_t)r * V, 1, V, &one, edits + rows[r].edit0, ne, &alone[r], lps1);
        CHECK_MSG(alone[r] == dev[r], "V %d, case %s, row %d: alone %d, in the batch %d", V, cases[r / per_case].name, r,
                  alone[r], dev[r]);
    }
    /* logprobs: of the raw row, as the host computes them (ids exact, values within 1e-4) */
    for (int r = 0; r < n; r++) {
        const struct loom_sampling_params *p = &cases[r / per_case].p;
        if (p->logprobs < 0 || cases[r / per_case].skip) continue;
        struct loom_token_logprob hl, ht[LOOM_SAMPLE_MAX_LOGPROBS];
        loom_sampler_logprobs(logits + (size_t)r * V, V, dev[r], p->logprobs, &hl, ht);
        const struct loom_sample_logprob *g = lps + (size_t)r * LPR;
        int bad = g[0].token != hl.token_id || fabsf(g[0].logprob - hl.logprob) > 1e-4f;
        for (int j = 0; j < p->logprobs && j < V; j++)
            bad += g[1 + j].token != ht[j].token_id || fabsf(g[1 + j].logprob - ht[j].logprob) > 1e-4f;
        CHECK_MSG(!bad, "V %d, case %s, row %d: logprobs differ (sampled %d: %g vs %d: %g; top0 %d: %g vs %d: %g)", V,
                  cases[r / per_case].name, r, g[0].token, g[0].logprob, hl.token_id, hl.logprob, g[1].token,
                  g[1].logprob, ht[0].token_id, ht[0].logprob);
    }
    /* the greedy cases with ties must give the lowest id */
    for (int r = 0; r < n; r++)
        if (cases[r / per_case].shape == TIES_TOP && cases[r / per_case].p.temperature == 0 &&
            cases[r / per_case].p.repetition_penalty == 1.0f)
            CHECK_EQ_INT(dev[r], V / 3);
    free(edits);
    free(logits);
    free(mask_all);
    loom_sampler_free(&s);
}

int main(void)
{
    if (!loom_backend_cuda_available()) test_skip("no CUDA device");
    struct loom_backend_options opts = {.device = "cuda", .act_dtype = LOOM_DTYPE_BF16};
    if (loom_backend_create(&opts, &be)) test_skip("no CUDA backend");
    if (!be->ops->sample) {
        fprintf(stderr, "the CUDA backend has no sample op\n");
        return 1;
    }

    struct loom_sampling_params base;
    loom_sampling_params_default(&base);
    static const struct loom_logit_bias bias[3] = {{5, 5.0f}, {5, -1.5f}, {3, 2.0f}};
    struct loom_sampling_params greedy = base, greedy_pen = base, temp1 = base, topk = base, topp = base, all = base,
                                minp = base, masked = base, biased = base, topk_ties = base, topp_ties = base;
    greedy.temperature = 0;
    greedy_pen = greedy;
    greedy_pen.logprobs = 0; /* the sampled token's alone */
    greedy_pen.repetition_penalty = 1.3f;
    greedy_pen.frequency_penalty = 0.5f;
    greedy_pen.presence_penalty = 0.25f;
    greedy_pen.min_tokens = 100;
    temp1.temperature = 1.0f;
    temp1.logprobs = 5;
    topk.temperature = 0.7f;
    topk.top_k = 50;
    topp.temperature = 1.0f;
    topp.top_p = 0.9f;
    all.temperature = 1.3f;
    all.top_k = 40;
    all.top_p = 0.8f;
    all.min_p = 0.05f;
    all.repetition_penalty = 0.9f;
    all.frequency_penalty = -0.3f;
    all.presence_penalty = 0.4f;
    minp.temperature = 2.0f;
    minp.min_p = 0.1f;
    masked.temperature = 1.0f;
    masked.min_tokens = 1000;
    biased.temperature = 0.5f;
    biased.logit_bias = bias;
    biased.n_logit_bias = 3;
    biased.min_tokens = 31;
    topk_ties.temperature = 1.0f;
    topk_ties.top_k = 3;
    topk_ties.logprobs = 20; /* many ties: the lower id first */
    topp_ties.temperature = 1.0f;
    topp_ties.top_p = 0.5f;
    const struct row_case cases[] = {
        {"greedy", greedy, PLAIN, 0, 0},
        {"greedy-ties", greedy, TIES_TOP, 0, 0},
        {"greedy-penalties-mask", greedy_pen, TIES_TOP, 0, 0},
        {"temperature-1", temp1, PLAIN, 0, 0},
        {"top-k-50", topk, PLAIN, 0, 0},
        {"top-p-0.9", topp, PLAIN, 0, 0},
        {"all-filters-penalties", all, PLAIN, 0, 0},
        {"min-p", minp, PLAIN, 0, 0},
        {"logit-bias-twice", biased, PLAIN, 0, 0},
        {"top-k-ties", topk_ties, MANY_TIES, 0, 0},
        {"top-p-ties", topp_ties, MANY_TIES, 0, 0},
        {"top-p-flat", topp_ties, FLAT, 0, 0},
        {"everything-masked", masked, PLAIN, 1, 0},
        {"skipped", temp1, PLAIN, 0, 1},
    };
    const int n_cases = (int)(sizeof(cases) / sizeof(cases[0]));
    run_cases(151936, cases, n_cases, 4);
    run_cases(32000, cases, n_cases, 4);
    run_cases(1000, cases, n_cases, 4);
    run_cases(7, cases, n_cases, 2); /* fewer tokens than threads */
    loom_backend_destroy(be);
    return test_report();
}
