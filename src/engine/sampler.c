/*
 * sampler.c: logits processing and drawing (see sampler.h for the order). One row at a time on
 * buffers sized at init; top-k and top-p use selection, not a full sort of the vocabulary, unless
 * the kept set is large.
 */
#include "engine/sampler.h"

#include "core/error.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define SAMPLING_EPS 1e-5f /* vLLM's _SAMPLING_EPS: temperatures below are greedy */

int loom_sampler_init(struct loom_sampler *s, int vocab)
{
    memset(s, 0, sizeof(*s));
    if (vocab < 1) return loom_fail(LOOM_EINVAL, "sampler: vocabulary size %d", vocab);
    s->vocab = vocab;
    s->work = loom_malloc((size_t)vocab * sizeof(float));
    s->idx = loom_malloc((size_t)vocab * sizeof(int32_t));
    s->stamp = loom_calloc((size_t)vocab, sizeof(uint32_t));
    s->count = loom_calloc((size_t)vocab, sizeof(int32_t));
    return LOOM_OK;
}

void loom_sampler_free(struct loom_sampler *s)
{
    free(s->work);
    free(s->idx);
    free(s->stamp);
    free(s->count);
    free(s->edits);
    memset(s, 0, sizeof(*s));
}

uint64_t loom_rng_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

double loom_rng_uniform(uint64_t key, uint64_t counter)
{
    uint64_t x = loom_rng_mix(key ^ loom_rng_mix(counter * 0xd1342543de82ef95ULL + 0x2545f4914f6cdd1dULL));
    return (double)(x >> 11) * 0x1.0p-53;
}

/* ---------------------------------------------------------------------------------------------- */
/* Ordering helpers: "a ranks above b" = larger logit, then smaller id. */

static inline bool ranks_above(const float *x, int32_t a, int32_t b)
{
    return x[a] > x[b] || (x[a] == x[b] && a < b);
}

/* Rearranges ids[0..n) so that ids[0..k) are the k best by ranks_above (in no order). */
static void select_top(int32_t *ids, int n, int k, const float *x)
{
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        /* median of three as pivot */
        int32_t a = ids[lo], b = ids[mid], c = ids[hi], piv;
        if (ranks_above(x, a, b)) piv = ranks_above(x, b, c) ? b : (ranks_above(x, a, c) ? c : a);
        else piv = ranks_above(x, a, c) ? a : (ranks_above(x, b, c) ? c : b);
        int i = lo, j = hi;
        while (i <= j) {
            while (ranks_above(x, ids[i], piv)) i++;
            while (ranks_above(x, piv, ids[j])) j--;
            if (i <= j) {
                int32_t t = ids[i];
                ids[i++] = ids[j];
                ids[j--] = t;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
}

static int cmp_rank(const void *pa, const void *pb, void *ctx)
{
    const float *x = ctx;
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return ranks_above(x, a, b) ? -1 : ranks_above(x, b, a) ? 1 : 0;
}

static void sort_top(int32_t *ids, int n, const float *x)
{
    qsort_r(ids, (size_t)n, sizeof(int32_t), cmp_rank, (void *)x);
}

/* ---------------------------------------------------------------------------------------------- */

void loom_sampler_logprobs(const float *logits, int vocab, int32_t token, int k, struct loom_token_logprob *lp,
                           struct loom_token_logprob *top)
{
    float m = -INFINITY;
    for (int i = 0; i < vocab; i++)
        if (logits[i] > m) m = logits[i];
    double sum = 0;
    for (int i = 0; i < vocab; i++) sum += exp((double)logits[i] - m);
    double lse = m + log(sum);
    if (lp) {
        lp->token_id = token;
        lp->logprob = (float)(logits[token] - lse);
    }
    if (k <= 0 || !top) return;
    if (k > vocab) k = vocab;
    /* insertion into a sorted top-k list */
    int n = 0;
    for (int32_t i = 0; i < vocab; i++) {
        if (n == k && !(logits[i] > logits[top[k - 1].token_id])) continue; /* equal: the lower id stays */
        int j = n < k ? n++ : k - 1;
        while (j > 0 && logits[i] > logits[top[j - 1].token_id]) {
            top[j] = top[j - 1];
            j--;
        }
        top[j].token_id = i;
    }
    for (int j = 0; j < k; j++) top[j].logprob = (float)(logits[top[j].token_id] - lse);
}

/* ---------------------------------------------------------------------------------------------- */
/* Steps 2-4 as sparse token edits: the host sampler applies them itself (loom_sampler_apply_edits), a
 * backend sampler gets them with the row (backend.h), so both edit the logits the same way. */

static void push_edit(struct loom_logit_edit **e, int *n, int *cap, int32_t token, float value)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 1024;
        *e = loom_realloc(*e, (size_t)*cap * sizeof(**e));
    }
    (*e)[*n].token = token;
    (*e)[*n].value = value;
    (*n)++;
}

void loom_sampler_backend_row(struct loom_sampler *s, const struct loom_sample_input *in, struct loom_sample_row *row,
                              struct loom_logit_edit **edits, int *n_edits, int *cap_edits)
{
    const struct loom_sampling_params *p = in->p;
    memset(row, 0, sizeof(*row));
    row->temperature = p->temperature;
    row->top_p = p->top_p;
    row->min_p = p->min_p;
    row->top_k = p->top_k > 0 ? p->top_k : 0;
    row->logprobs = p->logprobs; /* -1: none */
    row->u = loom_rng_uniform(in->rng_key, (uint64_t)in->n_output);
    row->edit0 = *n_edits;
    int n0 = *n_edits;
    if (in->n_output < p->min_tokens)
        for (int i = 0; i < in->n_stop_ids; i++) push_edit(edits, n_edits, cap_edits, in->stop_ids[i], 0.0f);
    row->n_mask = *n_edits - n0;
    n0 = *n_edits;
    for (int i = 0; i < p->n_logit_bias; i++)
        push_edit(edits, n_edits, cap_edits, p->logit_bias[i].token_id, p->logit_bias[i].bias);
    row->n_bias = *n_edits - n0;
    n0 = *n_edits;
    if (p->repetition_penalty != 1.0f) { /* distinct tokens of prompt + output, as apply_penalties marks them */
        uint32_t st = ++s->cur_stamp;
        if (st == 0) {
            memset(s->stamp, 0, (size_t)s->vocab * sizeof(uint32_t));
            st = s->cur_stamp = 1;
        }
        for (int pass = 0; pass < 2; pass++) {
            const int32_t *t = pass ? in->output : in->prompt;
            int n = pass ? in->n_output : in->n_prompt;
            for (int i = 0; i < n; i++) {
                if (s->stamp[t[i]] == st) continue;
                s->stamp[t[i]] = st;
                push_edit(edits, n_edits, cap_edits, t[i], p->repetition_penalty);
            }
        }
    }
    row->n_rep = *n_edits - n0;
    n0 = *n_edits;
    if (p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f) {
        for (int i = 0; i < in->n_output; i++) s->count[in->output[i]]++;
        for (int i = 0; i < in->n_output; i++) {
            int32_t id = in->output[i];
            if (!s->count[id]) continue;
            push_edit(edits, n_edits, cap_edits, id, p->frequency_penalty * (float)s->count[id] + p->presence_penalty);
            s->count[id] = 0;
        }
    }
    row->n_sub = *n_edits - n0;
}

void loom_sampler_apply_edits(float *x, const struct loom_sample_row *row, const struct loom_logit_edit *edits)
{
    const struct loom_logit_edit *e = edits + row->edit0;
    for (int i = 0; i < row->n_mask; i++) x[e[i].token] = -INFINITY;
    e += row->n_mask;
    for (int i = 0; i < row->n_bias; i++) x[e[i].token] += e[i].value;
    e += row->n_bias;
    for (int i = 0; i < row->n_rep; i++) {
        float v = x[e[i].token];
        x[e[i].token] = v > 0 ? v / e[i].value : v * e[i].value;
    }
    e += row->n_rep;
    for (int i = 0; i < row->n_sub; i++) x[e[i].token] -= e[i].value;
}

static int32_t argmax(const float *x, int n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int32_t loom_sampler_prepare(struct loom_sampler *s, const float *logits, const struct loom_sample_input *in)
{
    const struct loom_sampling_params *p = in->p;
    int V = s->vocab;
    float *x = s->work;
    bool masked = in->n_output < p->min_tokens && in->n_stop_ids > 0;
    bool penalized = p->repetition_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f;
    if (p->temperature < SAMPLING_EPS && !masked && !penalized && p->n_logit_bias == 0)
        return argmax(logits, V); /* plain greedy: no copy of the row */
    memcpy(x, logits, (size_t)V * sizeof(float));

    struct loom_sample_row row;
    int n_edits = 0;
    loom_sampler_backend_row(s, in, &row, &s->edits, &n_edits, &s->cap_edits);
    loom_sampler_apply_edits(x, &row, s->edits);

    if (p->temperature < SAMPLING_EPS) return argmax(x, V);

    float inv_t = 1.0f / p->temperature;
    for (int i = 0; i < V; i++) x[i] *= inv_t;
    float m = x[argmax(x, V)];
    if (m == -INFINITY) return 0; /* everything masked: nothing better to do */
    s->max = m;

    if (p->min_p > 0) { /* p_i < min_p * p_max  <=>  x_i < m + log(min_p) */
        float thr = m + logf(p->min_p);
        for (int i = 0; i < V; i++)
            if (x[i] < thr) x[i] = -INFINITY;
    }

    /* candidates: the finite logits */
    int32_t *ids = s->idx;
    int n = 0;
    for (int32_t i = 0; i < V; i++)
        if (x[i] > -INFINITY) ids[n++] = i;

    if (p->top_k > 0 && p->top_k < n) {
        select_top(ids, n, p->top_k, x);
        float kth = x[ids[0]];
        for (int j = 1; j < p->top_k; j++)
            if (x[ids[j]] < kth) kth = x[ids[j]];
        n = 0; /* keep every logit >= the k-th (ties included) */
        for (int32_t i = 0; i < V; i++) {
            if (x[i] < kth) x[i] = -INFINITY;
            else if (x[i] > -INFINITY) ids[n++] = i;
        }
    }

    if (p->top_p < 1.0f) {
        double z = 0;
        for (int j = 0; j < n; j++) z += exp((double)x[ids[j]] - m);
        double target = (double)p->top_p * z; /* keep token j (descending) while the mass above it < target */
        int k = n < 64 ? n : 64, keep = n;
        for (;;) {
            select_top(ids, n, k, x);
            sort_top(ids, k, x);
            double above = 0;
            int j = 0;
            for (; j < k && above < target; j++) above += exp((double)x[ids[j]] - m);
            if (above >= target || k == n) {
                keep = j > 0 ? j : 1;
                break;
            }
            k = k * 4 < n ? k * 4 : n;
        }
        for (int j = keep; j < n; j++) x[ids[j]] = -INFINITY;
    }

    return -1;
}

int32_t loom_sampler_sample(struct loom_sampler *s, const float *logits, const struct loom_sample_input *in)
{
    int32_t greedy = loom_sampler_prepare(s, logits, in);
    if (greedy >= 0) return greedy;
    /* inverse CDF over the kept tokens in id order; the row's weights exp(x - max) are computed once
     * (float: a token below e^-103 of the top one has no weight) and kept in work for the walk */
    float *x = s->work;
    const float m = s->max;
    const int V = s->vocab;
    double z = 0;
    for (int i = 0; i < V; i++) {
        float w = x[i] > -INFINITY ? expf(x[i] - m) : 0.0f;
        x[i] = w;
        z += w;
    }
    double u = loom_rng_uniform(in->rng_key, (uint64_t)in->n_output) * z, acc = 0;
    int32_t last = 0;
    for (int32_t i = 0; i < V; i++) {
        if (!(x[i] > 0)) continue;
        acc += x[i];
        last = i;
        if (acc > u) return i;
    }
    return last;
}

