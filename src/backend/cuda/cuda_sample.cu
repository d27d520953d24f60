/*
 * cuda_sample.cu: sampling on the GPU (the ops table's `sample`), so that only token ids leave the
 * device. One block of 1024 threads per logits row, the row rewritten in place, following
 * engine/sampler.h step by step:
 *
 *   edits (min_tokens mask, logit_bias, repetition, frequency/presence) -> greedy argmax, or:
 *   x /= T;  m = max x;  min_p drops x < m + log(min_p);  top_k keeps x >= the k-th largest
 *   (radix select on the float's ordered bits);  p = exp(x - m) in place;  top_p keeps the most
 *   probable tokens while the mass above them is below top_p * sum (radix select on p's bits
 *   weighted by mass; ties at the threshold kept in id order, as the host sorts them);
 *   draw: the first token, in id order, whose cumulative mass exceeds u * (kept mass).
 * Rows that ask for logprobs first keep a copy of the raw row (scratch), its log-sum-exp and top k
 * (k rounds of a block argmax below the previous pick), and give the sampled token's raw logprob last.
 *
 * Masses are fixed-point integers (p relative to the top token, times 2^44; the top token's p is 1):
 * integer sums are the same in any order, so a row's token does not depend on thread scheduling, and
 * so not on the batch it runs in. The host sampler sums doubles in id order: both choose the same
 * token except when u falls within rounding distance of a boundary.
 */
#include "backend/cuda/cuda_common.h"

#include <math.h>

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
/* One block per row: its passes over the row are bound by the loads in flight, so each thread loads
 * SAMPLE_UNROLL elements (stride n apart, in id order) before using any. */
#define SAMPLE_UNROLL 8
#define SAMPLE_LOAD(v, x, i0, n, end)                                                                    \
    _Pragma("unroll") for (int k_ = 0; k_ < SAMPLE_UNROLL; k_++)(v)[k_] =                              \
        (i0) + k_ * (n) < (end) ? (x)[(i0) + k_ * (n)] : 0.0f
#define SAMPLING_EPS 1e-5f /* as the host: temperatures below are greedy */

typedef unsigned long long u64;

struct sample_smem {
    u64 hist[256];
    u64 wu[SAMPLE_WARPS];
    double wd[SAMPLE_WARPS];
    double total_d;
    int wi[SAMPLE_WARPS];
    float wf[SAMPLE_WARPS];
    u64 total_u;
    int total_i;
    int sel_digit;
    u64 sel_above;
};

/* p in [0, 1] -> its mass; 0 for dropped tokens */
__device__ __forceinline__ u64 pmass(float p)
{
    return (u64)((double)p * 17592186044416.0 + 0.5); /* 2^44 */
}

/* float -> uint32 with the same order (for finite and infinite values) */
__device__ __forceinline__ uint32_t fkey(float f)
{
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float block_max(float v, sample_smem &sm)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (lane == 0) sm.wf[w] = v;
    __syncthreads();
    v = sm.wf[0];
    for (int i = 1; i < SAMPLE_WARPS; i++) v = fmaxf(v, sm.wf[i]);
    __syncthreads();
    return v;
}

/* exclusive prefix sum over threads in thread order; *total gets the sum of all */
template <typename T> __device__ __forceinline__ T block_excl_scan(T v, T *total, T *ws, T *tot)
{
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    T incl = v;
    for (int o = 1; o < 32; o <<= 1) {
        T t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    if (lane == 31) ws[w] = incl;
    __syncthreads();
    if (w == 0) {
        T s = lane < SAMPLE_WARPS ? ws[lane] : (T)0, si = s;
        for (int o = 1; o < 32; o <<= 1) {
            T t = __shfl_up_sync(0xffffffffu, si, o);
            if (lane >= o) si += t;
        }
        if (lane < SAMPLE_WARPS) ws[lane] = si - s;
        if (lane == 31) *tot = si;
    }
    __syncthreads();
    T r = ws[w] + incl - v;
    *total = *tot;
    __syncthreads();
    return r;
}

/*
 * The largest key K with stat(key >= K) >= target, over the elements f(i) -> (key, stat > 0);
 * *above = stat(key > K) (< target). Four passes of 8 bits from the top, each a histogram of the
 * stat over the next digit among the elements that match the digits chosen so far.
 */
template <typename F>
__device__ uint32_t radix_select(F f, int V, u64 target, u64 *above_out, sample_smem &sm)
{
    uint32_t prefix = 0;
    u64 above = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) sm.hist[d] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            uint32_t key;
            u64 st = f(i, &key);
            if (!st || (shift < 24 && (key >> (shift + 8)) != prefix)) continue;
            atomicAdd(&sm.hist[(key >> shift) & 255], st);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            const int lane = threadIdx.x;
            u64 s = 0; /* lane l holds digits 255 - 8l down to 248 - 8l */
            for (int j = 0; j < 8; j++) s += sm.hist[255 - 8 * lane - j];
            u64 incl = s;
            for (int o = 1; o < 32; o <<= 1) {
                u64 t = __shfl_up_sync(0xffffffffu, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned hit = __ballot_sync(0xffffffffu, above + incl >= target);
            int src = hit ? __ffs(hit) - 1 : 31;
            if (lane == src) {
                u64 acc = above + incl - s;
                int d = 255 - 8 * lane;
                for (int j = 0; j < 7 && acc + sm.hist[d] < target; j++) acc += sm.hist[d--];
                sm.sel_digit = d;
                sm.sel_above = acc;
            }
        }
        __syncthreads();
        prefix = (prefix << 8) | (uint32_t)sm.sel_digit;
        above = sm.sel_above;
    }
    *above_out = above;
    return prefix;
}

/* radix_select's element views: logits counted once each (top_k), probabilities by mass (top_p) */
struct by_count {
    const float *x;
    __device__ u64 operator()(int i, uint32_t *key) const
    {
        *key = fkey(x[i]);
        return x[i] > -INFINITY ? 1ull : 0ull;
    }
};

struct by_mass {
    const float *x;
    __device__ u64 operator()(int i, uint32_t *key) const
    {
        *key = __float_as_uint(x[i]);
        return pmass(x[i]);
    }
};

/* The token of row r into out[r] (all threads call it; it returns together). */
__device__ void sample_row(float *x, int V, const struct loom_sample_row &R, const struct loom_logit_edit *edits,
                           int32_t *out, int r, sample_smem &sm)
{
    const int tid = threadIdx.x, nt = blockDim.x;

    /* edits, in the host's order */
    const struct loom_logit_edit *ed = edits + R.edit0;
    for (int i = tid; i < R.n_mask; i += nt) x[ed[i].token] = -INFINITY;
    __syncthreads();
    ed += R.n_mask;
    if (tid == 0) /* logit_bias may name a token twice: added one after another */
        for (int i = 0; i < R.n_bias; i++) x[ed[i].token] += ed[i].value;
    __syncthreads();
    ed += R.n_bias;
    for (int i = tid; i < R.n_rep; i += nt) {
        const int t = ed[i].token;
        const float v = x[t], pen = ed[i].value;
        x[t] = v > 0 ? __fdiv_rn(v, pen) : v * pen;
    }
    __syncthreads();
    ed += R.n_rep;
    for (int i = tid; i < R.n_sub; i += nt) x[ed[i].token] -= ed[i].value;
    __syncthreads();

    if (R.temperature < SAMPLING_EPS) { /* greedy: the largest logit, the lowest id on ties */
        float best = -INFINITY; /* (a plain loop: 16 us per row; with SAMPLE_LOAD batches 27, device run s3/31) */
        int bi = 0x7fffffff;
        for (int i = tid; i < V; i += nt)
            if (x[i] > best || bi == 0x7fffffff) best = x[i], bi = i;
        for (int o = 16; o > 0; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ob > best || (ob == best && oi < bi)) best = ob, bi = oi;
        }
        if ((tid & 31) == 0) sm.wf[tid >> 5] = best, sm.wi[tid >> 5] = bi;
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < SAMPLE_WARPS; w++)
                if (sm.wf[w] > best || (sm.wf[w] == best && sm.wi[w] < bi)) best = sm.wf[w], bi = sm.wi[w];
            out[r] = bi;
        }
        return;
    }

    const float inv_t = __fdiv_rn(1.0f, R.temperature);
    float m = -INFINITY;
    for (int i0 = tid; i0 < V; i0 += SAMPLE_UNROLL * nt) {
        float v[SAMPLE_UNROLL];
        SAMPLE_LOAD(v, x, i0, nt, V);
#pragma unroll
        for (int k = 0; k < SAMPLE_UNROLL; k++) {
            const int i = i0 + k * nt;
            if (i >= V) break;
            v[k] *= inv_t;
            x[i] = v[k];
            m = fmaxf(m, v[k]);
        }
    }
    m = block_max(m, sm);
    if (m == -INFINITY) { /* everything masked: as the host, token 0 */
        if (tid == 0) out[r] = 0;
        return;
    }
    if (R.min_p > 0) {
        const float thr = m + logf(R.min_p);
        for (int i = tid; i < V; i += nt)
            if (x[i] < thr) x[i] = -INFINITY;
    }
    if (R.top_k > 0) {
        int cnt = 0;
        for (int i = tid; i < V; i += nt) cnt += x[i] > -INFINITY;
        int n_finite;
        block_excl_scan<int>(cnt, &n_finite, sm.wi, &sm.total_i);
        if (R.top_k < n_finite) {
            u64 above;
            const uint32_t K = radix_select(by_count{x}, V, (u64)R.top_k, &above, sm);
            for (int i = tid; i < V; i += nt)
                if (fkey(x[i]) < K) x[i] = -INFINITY;
        }
    }
    for (int i0 = tid; i0 < V; i0 += SAMPLE_UNROLL * nt) {
        float v[SAMPLE_UNROLL];
        SAMPLE_LOAD(v, x, i0, nt, V);
#pragma unroll
        for (int k = 0; k < SAMPLE_UNROLL; k++) {
            const int i = i0 + k * nt;
            if (i < V) x[i] = v[k] > -INFINITY ? expf(v[k] - m) : 0.0f;
        }
    }
    __syncthreads();

    /* top_p: keep p's bits > K, and the first n_tied_keep (in id order) of those equal to K */
    const bool top_p = R.top_p < 1.0f;
    uint32_t K = 0;
    u64 n_tied_keep = 0;
    if (top_p) {
        u64 z = 0, s = 0;
        for (int i = tid; i < V; i += nt) s += pmass(x[i]);
        block_excl_scan<u64>(s, &z, sm.wu, &sm.total_u);
        u64 target = (u64)((double)R.top_p * (double)z);
        if (target < 1) target = 1;
        u64 above;
        K = radix_select(by_mass{x}, V, target, &above, sm);
        const u64 pk = pmass(__uint_as_float(K));
        n_tied_keep = pk ? (target - above + pk - 1) / pk : 0;
    }

    /* The draw, in id order. Warp w owns the contiguous ids [w * wseg, (w + 1) * wseg) and its lanes read
     * them 32 at a time, so every load is coalesced (a thread per contiguous segment, as before, made each
     * load touch 32 lines: 127 us per row at temperature 1 on the H100, device run s3/29). Within a warp,
     * steps in order and lanes in order are id order; the masses are integers, so the token is the host's. */
    const int lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
    const int wseg = ((V + nw - 1) / nw + 31) / 32 * 32;
    const int lo = warp * wseg < V ? warp * wseg : V, hi = lo + wseg < V ? lo + wseg : V;
    const unsigned below = (1u << lane) - 1u; /* the lanes before this one */
    /* top_p: the tied-at-K elements of earlier warps, the first n_tied_keep of which (in id order) are kept */
    u64 tie_base = 0;
    if (top_p) {
        u64 c = 0, all;
        for (int i0 = lo; i0 < hi; i0 += 32) {
            const int i = i0 + lane;
            const bool tied = i < hi && pmass(x[i]) && __float_as_uint(x[i]) == K;
            c += __popc(__ballot_sync(0xffffffffu, tied));
        }
        tie_base = block_excl_scan<u64>(lane == 0 ? c : 0, &all, sm.wu, &sm.total_u);
        tie_base = __shfl_sync(0xffffffffu, tie_base, 0);
    }
    /* the kept mass of element i with value v (0: dropped), given the tied elements before it; advances the
     * tie count */
    auto kept = [&](int i, float v, u64 &ties) -> u64 {
        if (i >= hi) v = 0.0f;
        const u64 f = pmass(v);
        const uint32_t b = __float_as_uint(v);
        const bool tied = top_p && f && b == K;
        const unsigned tb = __ballot_sync(0xffffffffu, tied);
        const u64 rank = ties + __popc(tb & below);
        ties += __popc(tb);
        return f && (!top_p || b > K || (tied && rank < n_tied_keep)) ? f : 0;
    };
    u64 wmass = 0;
    {
        u64 ties = tie_base;
        for (int j0 = lo; j0 < hi; j0 += 32 * SAMPLE_UNROLL) {
            float v[SAMPLE_UNROLL];
            SAMPLE_LOAD(v, x, j0 + lane, 32, hi);
#pragma unroll
            for (int k = 0; k < SAMPLE_UNROLL; k++) wmass += kept(j0 + 32 * k + lane, v[k], ties);
        }
        for (int o = 16; o > 0; o >>= 1) wmass += __shfl_xor_sync(0xffffffffu, wmass, o);
    }
    u64 total;
    const u64 base = __shfl_sync(0xffffffffu, block_excl_scan<u64>(lane == 0 ? wmass : 0, &total, sm.wu, &sm.total_u), 0);
    u64 u = (u64)(R.u * (double)total);
    if (u >= total) u = total - 1;
    if (wmass && base <= u && u < base + wmass) { /* this warp holds the draw: walk its ids again */
        u64 acc = base, ties = tie_base;
        bool found = false;
        for (int j0 = lo; j0 < hi && !found; j0 += 32 * SAMPLE_UNROLL) {
            float v[SAMPLE_UNROLL];
            SAMPLE_LOAD(v, x, j0 + lane, 32, hi);
#pragma unroll
            for (int k = 0; k < SAMPLE_UNROLL; k++) {
                const int i0 = j0 + 32 * k;
                const u64 f = kept(i0 + lane, v[k], ties);
                u64 incl = f; /* inclusive prefix over the lanes */
                for (int o = 1; o < 32; o <<= 1) {
                    const u64 t = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o) incl += t;
                }
                const unsigned hit = __ballot_sync(0xffffffffu, f && acc + incl > u);
                if (hit) {
                    if (lane == __ffs(hit) - 1) out[r] = i0 + lane;
                    found = true;
                    break;
                }
                acc += __shfl_sync(0xffffffffu, incl, 31);
            }
        }
    }
}

/* argmax of (value, id) over the row's elements ranked strictly below (pv, pi) (value descending, id
 * ascending), for the top-k logprobs one rank at a time */
__device__ void next_best(const float *raw, int V, float pv, int pi, float *bv, int *bi, sample_smem &sm)
{
    const int tid = threadIdx.x;
    float best = -INFINITY;
    int b = 0x7fffffff;
    for (int i = tid; i < V; i += blockDim.x) {
        const float v = raw[i];
        if (!(v < pv || (v == pv && i > pi))) continue;
        if (b == 0x7fffffff || v > best) best = v, b = i;
    }
    for (int o = 16; o > 0; o >>= 1) {
        float ob = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, b, o);
        if (oi != 0x7fffffff && (b == 0x7fffffff || ob > best || (ob == best && oi < b))) best = ob, b = oi;
    }
    if ((tid & 31) == 0) sm.wf[tid >> 5] = best, sm.wi[tid >> 5] = b;
    __syncthreads();
    best = sm.wf[0], b = sm.wi[0];
    for (int w = 1; w < SAMPLE_WARPS; w++)
        if (sm.wi[w] != 0x7fffffff && (b == 0x7fffffff || sm.wf[w] > best || (sm.wf[w] == best && sm.wi[w] < b)))
            best = sm.wf[w], b = sm.wi[w];
    __syncthreads();
    *bv = best;
    *bi = b;
}

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(float *logits, int64_t stride, int V, const struct loom_sample_row *rows,
                  const struct loom_logit_edit *edits, int32_t *out, float *raw_rows,
                  struct loom_sample_logprob *lps)
{
    PDL_PROLOGUE();
    __shared__ sample_smem sm;
    const int r = blockIdx.x, tid = threadIdx.x, nt = blockDim.x;
    const struct loom_sample_row R = rows[r];
    if (R.skip) {
        if (tid == 0) out[r] = -1;
        return;
    }
    float *x = logits + (int64_t)r * stride;
    if (tid == 0) out[r] = 0; /* a valid token whatever happens below (NaN logits): the draw overwrites it */
    const int K = R.logprobs;
    float *raw = K >= 0 ? raw_rows + (int64_t)r * V : NULL;
    struct loom_sample_logprob *lp = lps + (int64_t)r * (1 + LOOM_SAMPLE_MAX_LOGPROBS);
    float lse = 0.f;
    if (K >= 0) { /* the raw row (kept for the sampled token's logprob), its log-sum-exp, the top K */
        float mx = -INFINITY;
        for (int i = tid; i < V; i += nt) {
            const float v = x[i];
            raw[i] = v;
            mx = fmaxf(mx, v);
        }
        mx = block_max(mx, sm);
        double se = 0, total;
        for (int i = tid; i < V; i += nt) se += (double)expf(raw[i] - mx);
        block_excl_scan<double>(se, &total, sm.wd, &sm.total_d);
        lse = (float)((double)mx + log(total));
        float pv = INFINITY;
        int pi = -1;
        for (int j = 0; j < K && j < V; j++) {
            next_best(raw, V, pv, pi, &pv, &pi, sm);
            if (tid == 0) lp[1 + j] = {pi, pv - lse};
        }
    }
    sample_row(x, V, R, edits, out, r, sm);
    if (K >= 0) {
        __syncthreads(); /* out[r] is written */
        if (tid == 0) {
            const int t = out[r];
            lp[0] = {t, raw[t] - lse};
        }
    }
}

static size_t al256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

/* Bytes of the sampler's device scratch for n rows of V logits and n_edits edits: rows, edits, tokens,
 * logprobs, and (with logprobs) a copy of each raw row. */
static size_t sample_bytes(int n, int n_edits, int V, bool want_lp)
{
    const size_t lp_per_row = 1 + LOOM_SAMPLE_MAX_LOGPROBS;
    return al256(sizeof(struct loom_sample_row) * (size_t)n) + al256(sizeof(struct loom_logit_edit) * (size_t)n_edits) +
           al256(sizeof(int32_t) * (size_t)n) +
           (want_lp ? al256(sizeof(struct loom_sample_logprob) * lp_per_row * (size_t)n) +
                          sizeof(float) * (size_t)V * (size_t)n
                    : 0);
}

static void sample_grow(struct loom_backend *be, struct cuda_ctx *c, size_t need, bool slack)
{
    if (need <= c->sample_cap) return;
    /* in a step only past what sample_reserve set aside at load (more edits than reserved), or without it */
    if (c->sample_buf) be->ops->free(be, c->sample_buf);
    c->sample_cap = !slack ? need : need * 2 > ((size_t)1 << 20) ? need * 2 : ((size_t)1 << 20);
    c->sample_buf = be->ops->alloc(be, c->sample_cap);
}

/* edits set aside per reserve: a step's repetition-penalty tokens over all rows rarely exceed this */
#define SAMPLE_RESERVE_EDITS (1 << 20)

void cuda_sample_reserve(struct loom_backend *be, int max_rows, int vocab)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    sample_grow(be, c, sample_bytes(max_rows, SAMPLE_RESERVE_EDITS, vocab, true), false);
}

void cuda_sample(struct loom_backend *be, struct loom_tensor logits, const struct loom_sample_row *rows, int n,
                 const struct loom_logit_edit *edits, int n_edits, int32_t *tokens, struct loom_sample_logprob *lps)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    LOOM_ASSERT(logits.dtype == LOOM_DTYPE_F32 && logits.rows >= n && n >= 0 && n_edits >= 0);
    if (n == 0) return;
    bool want_lp = false;
    for (int i = 0; i < n; i++) want_lp |= !rows[i].skip && rows[i].logprobs >= 0;
    LOOM_ASSERT(!want_lp || lps);
    const int V = (int)logits.cols;
    const size_t lp_per_row = 1 + LOOM_SAMPLE_MAX_LOGPROBS;
    const size_t rows_b = sizeof(*rows) * (size_t)n, edits_b = sizeof(*edits) * (size_t)n_edits,
                 tok_b = sizeof(int32_t) * (size_t)n, lp_b = want_lp ? sizeof(*lps) * lp_per_row * (size_t)n : 0;
    sample_grow(be, c, sample_bytes(n, n_edits, V, want_lp), true);
    unsigned char *d = (unsigned char *)c->sample_buf;
    struct loom_sample_row *d_rows = (struct loom_sample_row *)d;
    d += al256(rows_b);
    struct loom_logit_edit *d_edits = (struct loom_logit_edit *)d;
    d += al256(edits_b);
    int32_t *d_tokens = (int32_t *)d;
    d += al256(tok_b);
    struct loom_sample_logprob *d_lps = (struct loom_sample_logprob *)d;
    d += al256(lp_b);
    float *d_raw = (float *)d;
    be->ops->upload(be, d_rows, rows, rows_b);
    if (n_edits) be->ops->upload(be, d_edits, edits, edits_b);
    cuda_launch(c, sample_kernel, dim3((unsigned)n), dim3(SAMPLE_THREADS), 0, (float *)logits.data, logits.stride, V,
                (const struct loom_sample_row *)d_rows, (const struct loom_logit_edit *)d_edits, d_tokens, d_raw, d_lps);
    if (want_lp) be->ops->download(be, lps, d_lps, lp_b);
    be->ops->download(be, tokens, d_tokens, tok_b);
}
