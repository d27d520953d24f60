/* test_sampler.c: the sampler against hand-computed values: penalties (repetition, frequency,
 * presence), logit_bias, min_tokens, temperature, min_p, top_k, top_p (and vLLM V1's order of min_p
 * before top-p), greedy ties, raw logprobs; the draw's distribution and its determinism; top-k/top-p
 * selection on a large vocabulary against a brute-force reference. */
#include "engine/sampler.h"
#include "test.h"

#include <math.h>

static struct loom_sampling_params params(float temperature)
{
    struct loom_sampling_params p = {0}; /* loom_sampling_params_default's values, without the engine */
    p.n = 1;
    p.temperature = temperature;
    p.top_p = 1;
    p.repetition_penalty = 1;
    p.max_tokens = 16;
    p.logprobs = p.prompt_logprobs = -1;
    return p;
}

static struct loom_sample_input input(const struct loom_sampling_params *p)
{
    struct loom_sample_input in = {0};
    in.p = p;
    in.rng_key = 12345;
    return in;
}

/* logits whose softmax is probs */
static void from_probs(float *x, const double *probs, int n)
{
    for (int i = 0; i < n; i++) x[i] = (float)log(probs[i]);
}

/* 1 where the processed logit is kept */
static int kept(const struct loom_sampler *s, int i)
{
    return s->work[i] > -INFINITY;
}

static void test_greedy_and_penalties(void)
{
    struct loom_sampler s;
    CHECK_EQ_INT(loom_sampler_init(&s, 5), 0);
    struct loom_sampling_params p = params(0);
    struct loom_sample_input in = input(&p);

    float ties[5] = {1, 3, 3, 2, 3};
    CHECK_EQ_INT(loom_sampler_sample(&s, ties, &in), 1); /* ties go to the lowest id */

    /* repetition 2 on prompt {0,1} + output {2,2,3}; frequency 0.5 and presence 0.25 on the output:
     *   0:  2   -> 1
     *   1: -1   -> -2
     *   2:  1.5 -> 0.75 -> 0.75 - 2 * 0.5 - 0.25 = -0.5
     *   3:  0.5 -> 0.25 -> 0.25 - 0.5 - 0.25 = -0.5
     *   4:  0 (not seen) */
    float x[5] = {2, -1, 1.5f, 0.5f, 0};
    int32_t prompt[2] = {0, 1}, out[3] = {2, 2, 3};
    p.repetition_penalty = 2;
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    in.prompt = prompt;
    in.n_prompt = 2;
    in.output = out;
    in.n_output = 3;
    CHECK_EQ_INT(loom_sampler_prepare(&s, x, &in), 0);
    float want[5] = {1, -2, -0.5f, -0.5f, 0};
    for (int i = 0; i < 5; i++) CHECK_NEAR(s.work[i], want[i], 1e-6);
    CHECK(x[0] == 2 && x[2] == 1.5f); /* the caller's row is untouched */
    /* the counts are cleared between calls: the same call gives the same result */
    CHECK_EQ_INT(loom_sampler_prepare(&s, x, &in), 0);
    for (int i = 0; i < 5; i++) CHECK_NEAR(s.work[i], want[i], 1e-6);

    /* a penalty that moves the argmax: token 0 repeated, 4 wins */
    p.repetition_penalty = 1;
    p.frequency_penalty = 2;
    p.presence_penalty = 0;
    int32_t out0[2] = {0, 0};
    in.output = out0;
    in.n_output = 2;
    float y[5] = {3, 0, 0, 0, 0.5f}; /* 3 - 2 * 2 = -1 */
    CHECK_EQ_INT(loom_sampler_sample(&s, y, &in), 4);

    /* logit_bias */
    struct loom_sampling_params b = params(0);
    struct loom_logit_bias bias[2] = {{3, 10.0f}, {0, -5.0f}};
    b.logit_bias = bias;
    b.n_logit_bias = 2;
    struct loom_sample_input bin = input(&b);
    float z[5] = {4, 1, 2, -3, 0};
    CHECK_EQ_INT(loom_sampler_prepare(&s, z, &bin), 3);
    CHECK_NEAR(s.work[3], 7, 1e-6);
    CHECK_NEAR(s.work[0], -1, 1e-6);

    /* min_tokens masks EOS / stop ids while fewer tokens were generated */
    struct loom_sampling_params m = params(0);
    m.min_tokens = 3;
    struct loom_sample_input min = input(&m);
    int32_t stops[2] = {2, 4};
    min.stop_ids = stops;
    min.n_stop_ids = 2;
    float w[5] = {0, 1, 9, 2, 8};
    min.n_output = 2;
    CHECK_EQ_INT(loom_sampler_sample(&s, w, &min), 3);
    CHECK(s.work[2] == -INFINITY && s.work[4] == -INFINITY);
    min.n_output = 3;
    CHECK_EQ_INT(loom_sampler_sample(&s, w, &min), 2);
    loom_sampler_free(&s);
}

static void test_filters(void)
{
    struct loom_sampler s;
    CHECK_EQ_INT(loom_sampler_init(&s, 4), 0);
    double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float x[4];
    from_probs(x, probs, 4);
    struct loom_sampling_params p = params(1);
    struct loom_sample_input in = input(&p);

    /* temperature 0.5: logits doubled */
    p.temperature = 0.5f;
    CHECK_EQ_INT(loom_sampler_prepare(&s, x, &in), -1);
    for (int i = 0; i < 4; i++) CHECK_NEAR(s.work[i], 2 * x[i], 1e-5);
    p.temperature = 1;

    /* top_p 0.75: ascending cumsum 0.05, 0.2 <= 0.25 dropped; 0.5 > 0.25 kept -> {0, 1} */
    p.top_p = 0.75f;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && !kept(&s, 2) && !kept(&s, 3));
    /* top_p 0.85: 0.05 <= 0.15 dropped, 0.2 > 0.15 kept -> {0, 1, 2} */
    p.top_p = 0.85f;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && kept(&s, 2) && !kept(&s, 3));
    /* a top_p below the top token's probability keeps only it */
    p.top_p = 0.1f;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && !kept(&s, 1) && !kept(&s, 2) && !kept(&s, 3));
    p.top_p = 1;

    /* min_p: threshold min_p * 0.5 */
    p.min_p = 0.2f; /* 0.1: drops 0.05 */
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && kept(&s, 2) && !kept(&s, 3));
    p.min_p = 0.5f; /* 0.25: keeps 0.5 and 0.3 */
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && !kept(&s, 2) && !kept(&s, 3));

    /* vLLM V1's order: min_p before top_p. min_p 0.2 leaves {.5, .3, .15} -> renormalized
     * {.526, .316, .158}; top_p 0.82 drops .158 (<= 0.18) -> {0, 1}. Top-p first would keep 2. */
    p.min_p = 0.2f;
    p.top_p = 0.82f;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && !kept(&s, 2) && !kept(&s, 3));
    p.min_p = 0;
    p.top_p = 1;

    /* top_k, ties at the k-th kept */
    p.top_k = 2;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && !kept(&s, 2) && !kept(&s, 3));
    float t[4] = {1, 3, 3, 2};
    p.top_k = 1;
    loom_sampler_prepare(&s, t, &in);
    CHECK(!kept(&s, 0) && kept(&s, 1) && kept(&s, 2) && !kept(&s, 3));
    /* top_k then top_p: top_k 3 -> {.5,.3,.15} renormalized; top_p 0.6 (1-p 0.4) drops .158 and keeps
     * .316 (cumsum .474 > .4) */
    p.top_k = 3;
    p.top_p = 0.6f;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && !kept(&s, 2) && !kept(&s, 3));
    p.top_k = -1; /* -1 and 0 are off */
    p.top_p = 1;
    loom_sampler_prepare(&s, x, &in);
    CHECK(kept(&s, 0) && kept(&s, 1) && kept(&s, 2) && kept(&s, 3));
    loom_sampler_free(&s);
}

/* The draw follows the kept distribution, and depends only on (rng_key, n_output). */
static void test_draw(void)
{
    struct loom_sampler s;
    CHECK_EQ_INT(loom_sampler_init(&s, 4), 0);
    double probs[4] = {0.5, 0.3, 0.15, 0.05};
    float x[4];
    from_probs(x, probs, 4);
    struct loom_sampling_params p = params(1);
    struct loom_sample_input in = input(&p);
    enum { N = 200000 };
    int count[4] = {0};
    for (int i = 0; i < N; i++) {
        in.rng_key = loom_rng_mix((uint64_t)i);
        count[loom_sampler_sample(&s, x, &in)]++;
    }
    for (int i = 0; i < 4; i++) CHECK_NEAR((double)count[i] / N, probs[i], 0.005);

    /* temperature 0.5 squares the odds: {.25,.09,.0225,.0025} / .365 */
    p.temperature = 0.5f;
    memset(count, 0, sizeof(count));
    for (int i = 0; i < N; i++) {
        in.n_output = i; /* the per-token counter */
        count[loom_sampler_sample(&s, x, &in)]++;
    }
    double z = 0.25 + 0.09 + 0.0225 + 0.0025;
    CHECK_NEAR((double)count[0] / N, 0.25 / z, 0.005);
    CHECK_NEAR((double)count[1] / N, 0.09 / z, 0.005);
    CHECK_NEAR((double)count[2] / N, 0.0225 / z, 0.003);

    /* top_p 0.75 -> {.5, .3} renormalized */
    p.temperature = 1;
    p.top_p = 0.75f;
    memset(count, 0, sizeof(count));
    for (int i = 0; i < N; i++) {
        in.n_output = i;
        count[loom_sampler_sample(&s, x, &in)]++;
    }
    CHECK_NEAR((double)count[0] / N, 0.625, 0.005);
    CHECK_EQ_INT(count[2] + count[3], 0);

    /* determinism */
    in.rng_key = 99;
    in.n_output = 7;
    int32_t a = loom_sampler_sample(&s, x, &in), b = loom_sampler_sample(&s, x, &in);
    CHECK_EQ_INT(a, b);
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        in.n_output = i;
        int32_t u = loom_sampler_sample(&s, x, &in);
        in.rng_key = 100;
        differ += u != loom_sampler_sample(&s, x, &in);
        in.rng_key = 99;
    }
    CHECK(differ > 5); /* another key is another stream */
    double u0 = loom_rng_uniform(1, 0), u1 = loom_rng_uniform(1, 1);
    CHECK(u0 >= 0 && u0 < 1 && u1 >= 0 && u1 < 1 && u0 != u1);
    loom_sampler_free(&s);
}

static void test_logprobs(void)
{
    float x[4] = {1, 3, 3, 2};
    double lse = log(exp(1.0) + 2 * exp(3.0) + exp(2.0));
    struct loom_token_logprob lp, top[3];
    loom_sampler_logprobs(x, 4, 3, 3, &lp, top);
    CHECK_EQ_INT(lp.token_id, 3);
    CHECK_NEAR(lp.logprob, 2 - lse, 1e-6);
    CHECK_EQ_INT(top[0].token_id, 1);
    CHECK_EQ_INT(top[1].token_id, 2);
    CHECK_EQ_INT(top[2].token_id, 3);
    CHECK_NEAR(top[0].logprob, 3 - lse, 1e-6);
    CHECK_NEAR(top[2].logprob, 2 - lse, 1e-6);
    loom_sampler_logprobs(x, 4, 0, 0, &lp, NULL);
    CHECK_NEAR(lp.logprob, 1 - lse, 1e-6);
}

/* top-k / top-p on a large vocabulary against a full sort */
static int cmp_desc(const void *a, const void *b, void *ctx)
{
    const float *x = ctx;
    int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
    if (x[i] != x[j]) return x[i] > x[j] ? -1 : 1;
    return i - j;
}

static void test_large_vocab(void)
{
    enum { V = 20000 };
    struct loom_sampler s;
    CHECK_EQ_INT(loom_sampler_init(&s, V), 0);
    static float x[V];
    static int32_t order[V];
    uint64_t r = 7;
    int bad = 0;
    for (int trial = 0; trial < 40; trial++) {
        for (int i = 0; i < V; i++) {
            r = loom_rng_mix(r);
            x[i] = (float)((double)(r >> 11) * 0x1.0p-53 * (trial % 2 ? 2.0 : 12.0)); /* flat or peaky */
            if (trial % 5 == 0) x[i] = (float)(int)(x[i] * 4) / 4; /* many ties */
        }
        for (int i = 0; i < V; i++) order[i] = i;
        qsort_r(order, V, sizeof(int32_t), cmp_desc, x);
        struct loom_sampling_params p = params(1);
        struct loom_sample_input in = input(&p);
        /* top_k */
        p.top_k = 1 + (trial * 37) % 500;
        loom_sampler_prepare(&s, x, &in);
        float kth = x[order[p.top_k - 1]];
        for (int i = 0; i < V; i++) bad += kept(&s, i) != (x[i] >= kth);
        /* top_p: keep the descending prefix while the mass above is < p */
        p.top_k = 0;
        p.top_p = 0.05f + 0.9f * (float)(trial % 10) / 10;
        loom_sampler_prepare(&s, x, &in);
        double m = x[order[0]], zz = 0;
        for (int i = 0; i < V; i++) zz += exp(x[i] - m);
        double above = 0;
        int keep = 0;
        while (keep < V && above < p.top_p * zz) above += exp(x[order[keep++]] - m);
        int n_kept = 0;
        for (int i = 0; i < V; i++) n_kept += kept(&s, i);
        bad += n_kept != keep;
        for (int j = 0; j < keep; j++) bad += !kept(&s, order[j]);
    }
    CHECK_EQ_INT(bad, 0);
    loom_sampler_free(&s);
}

int main(void)
{
    test_greedy_and_penalties();
    test_filters();
    test_draw();
    test_logprobs();
    test_large_vocab();
    return test_report();
}
