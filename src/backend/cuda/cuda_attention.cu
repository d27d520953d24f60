/*
 * cuda_attention.cu: paged causal attention over the KV cache, for prefill chunks and decode alike.
 *
 * One block takes one query token and one KV head, so the G = n_heads / n_kv_heads query heads that
 * share the head (GQA) read each K/V tile once. It walks the token's visible context (causal, and the
 * sliding window) in tiles of 32 positions through the block table, with an fp32 online softmax.
 * Flash-decoding: when tokens x KV heads would leave the GPU idle (a decode batch, a long context),
 * the context is split into n_splits ranges across blocks; each writes its partial (max, sum, output)
 * to a workspace and a second kernel merges them.
 * Prefill steps in bf16/f16 with head_dim 64 or 128 go to cuda_attention_tc.cu (tensor cores, a query
 * tile per block) instead.
 */
#include "backend/cuda/cuda_common.h"

#include <float.h>

#define ATTN_TILE 32
#define ATTN_THREADS 128
#define ATTN_MAX_SPLITS 64


static size_t attn_smem_bytes(int group, int head_dim)
{
    /* q[G][D], k[T][D+1], v[T][D], p[G][T], acc[G][D], m/l/alpha[G], slots[T] + last flag */
    size_t f = (size_t)group * head_dim + ATTN_TILE * (head_dim + 1) + ATTN_TILE * head_dim + group * ATTN_TILE +
               (size_t)group * head_dim + 3 * group + ATTN_TILE + 1;
    return f * sizeof(float);
}

template <typename T> __global__ void __launch_bounds__(ATTN_THREADS) attn_kernel(struct cuda_attn_params P)
{
    PDL_PROLOGUE();
    extern __shared__ float sm[];
    const int D = P.head_dim, G = P.group;
    float *qs = sm;
    float *ks = qs + G * D;
    float *vs = ks + ATTN_TILE * (D + 1);
    float *ps = vs + ATTN_TILE * D;
    float *acc = ps + G * ATTN_TILE;
    float *mrow = acc + G * D;
    float *lrow = mrow + G;
    float *arow = lrow + G;
    int *slot_s = (int *)(arow + G);
    int *last_s = slot_s + ATTN_TILE;

    const int tok = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    /* the sequence of this token: the last s with query_start[s] <= tok */
    int lo_s = 0, hi_s = P.n_seqs - 1;
    while (lo_s < hi_s) {
        int mid = (lo_s + hi_s + 1) >> 1;
        if (P.query_start[mid] <= tok)
            lo_s = mid;
        else
            hi_s = mid - 1;
    }
    const int s = lo_s;
    const int q0 = P.query_start[s], q_len = P.query_start[s + 1] - q0;
    const int pos = P.seq_lens[s] - q_len + (tok - q0);
    const int first = P.window > 0 ? max(0, pos - P.window + 1) : 0;
    const int len = pos - first + 1;
    /* whole tiles per split, so that only the last tile of a range is partial */
    const int chunk = ((len + P.n_splits - 1) / P.n_splits + ATTN_TILE - 1) / ATTN_TILE * ATTN_TILE;
    const int start = first + split * chunk;
    const int end = min(pos + 1, start + chunk);
    const int32_t *bt = P.block_tables + (int64_t)s * P.max_blocks;

    const T *q = (const T *)P.q + (int64_t)tok * P.q_stride + (int64_t)kvh * G * D;
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        qs[i] = to_f(q[i]) * P.scale;
        acc[i] = 0.f;
    }
    if (threadIdx.x < G) {
        mrow[threadIdx.x] = -INFINITY;
        lrow[threadIdx.x] = 0.f;
    }
    const T *kc = (const T *)P.kc + (int64_t)kvh * D;
    const T *vc = (const T *)P.vc + (int64_t)kvh * D;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    constexpr int EPC = 16 / sizeof(T); /* elements per 16-byte load */
    /* the first tile's cache slots, fetched together with q; later tiles' while the scores compute */
    if (start < end && threadIdx.x < min(ATTN_TILE, end - start)) {
        int p = start + threadIdx.x;
        slot_s[threadIdx.x] = bt[p / P.block_size] * P.block_size + p % P.block_size;
    }

    for (int t0 = start; t0 < end; t0 += ATTN_TILE) {
        const int nt = min(ATTN_TILE, end - t0);
        __syncthreads(); /* slot_s is ready; the previous tile's readers are done */
        if (P.vec) {
            const int cpr = D / EPC; /* 16-byte chunks per row */
            for (int i = threadIdx.x; i < nt * cpr; i += blockDim.x) {
                int t = i / cpr, d = (i - t * cpr) * EPC;
                int64_t slot = slot_s[t];
                float kf[EPC], vf[EPC];
                unpack16<T>(__ldg((const uint4 *)(kc + slot * P.k_stride + d)), kf);
                unpack16<T>(__ldg((const uint4 *)(vc + slot * P.v_stride + d)), vf);
#pragma unroll
                for (int e = 0; e < EPC; e++) {
                    ks[t * (D + 1) + d + e] = kf[e];
                    vs[t * D + d + e] = vf[e];
                }
            }
        } else {
            for (int i = threadIdx.x; i < nt * D; i += blockDim.x) {
                int t = i / D, d = i - t * D;
                int64_t slot = slot_s[t];
                ks[t * (D + 1) + d] = to_f(kc[slot * P.k_stride + d]);
                vs[t * D + d] = to_f(vc[slot * P.v_stride + d]);
            }
        }
        __syncthreads();
        if (t0 + ATTN_TILE < end && threadIdx.x < min(ATTN_TILE, end - t0 - ATTN_TILE)) {
            int p = t0 + ATTN_TILE + threadIdx.x;
            slot_s[threadIdx.x] = bt[p / P.block_size] * P.block_size + p % P.block_size;
        }
        for (int i = threadIdx.x; i < G * ATTN_TILE; i += blockDim.x) {
            int g = i / ATTN_TILE, t = i - g * ATTN_TILE;
            float sc = -INFINITY;
            if (t < nt) {
                const float *qq = qs + g * D, *kk = ks + t * (D + 1);
                sc = 0.f;
                for (int d = 0; d < D; d++) sc += qq[d] * kk[d];
            }
            ps[i] = sc;
        }
        __syncthreads();
        for (int g = wid; g < G; g += nwarps) {
            float v = ps[g * ATTN_TILE + lane];
            float mx = v;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float m_old = mrow[g];
            float m_new = fmaxf(m_old, mx); /* finite: the tile holds at least one visible position */
            float p = v == -INFINITY ? 0.f : __expf(v - m_new);
            float sum = p;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            float alpha = m_old == -INFINITY ? 0.f : __expf(m_old - m_new);
            ps[g * ATTN_TILE + lane] = p;
            __syncwarp();
            if (lane == 0) {
                lrow[g] = lrow[g] * alpha + sum;
                mrow[g] = m_new;
                arow[g] = alpha;
            }
        }
        __syncthreads();
        for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
            int g = i / D, d = i - g * D;
            float a = acc[i] * arow[g];
            const float *pp = ps + g * ATTN_TILE;
            for (int t = 0; t < nt; t++) a += pp[t] * vs[t * D + d];
            acc[i] = a;
        }
    }
    __syncthreads();

    const int h0 = kvh * G;
    T *out = (T *)P.out + (int64_t)tok * P.out_stride + (int64_t)h0 * D;
    if (P.n_splits == 1) {
        for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
            int g = i / D;
            float l = lrow[g];
            out[i] = from_f<T>(l > 0.f ? acc[i] / l : 0.f);
        }
        return;
    }
    /* this split's partial (max, sum, unnormalized output) per head, then the last split to finish merges */
    float *wbase = P.ws + ((int64_t)tok * P.n_heads + h0) * P.n_splits * (D + 2);
    for (int i = threadIdx.x; i < G * (D + 2); i += blockDim.x) {
        int g = i / (D + 2), j = i - g * (D + 2);
        float *w = wbase + ((int64_t)g * P.n_splits + split) * (D + 2);
        w[j] = j == 0 ? mrow[g] : j == 1 ? lrow[g] : acc[g * D + (j - 2)];
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int *ctr = P.counters + (int64_t)tok * P.n_kv_heads + kvh;
        int done = atomicAdd(ctr, 1);
        *last_s = done == P.n_splits - 1;
        if (*last_s) *ctr = 0; /* ready for the next launch */
    }
    __syncthreads();
    if (!*last_s) return;
    __threadfence();
    /* every split's (max, sum) per head into shared memory (the K tile's space is free), then the outputs */
    float *ml = ks; /* [G][n_splits][2], in the K and V tiles' space */
    for (int i = threadIdx.x; i < G * P.n_splits; i += blockDim.x) {
        int g = i / P.n_splits, z = i - g * P.n_splits;
        const float *w = wbase + ((int64_t)g * P.n_splits + z) * (D + 2);
        ml[2 * i] = __ldcg(w);
        ml[2 * i + 1] = __ldcg(w + 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        int g = i / D, d = i - g * D;
        const float *w = wbase + (int64_t)g * P.n_splits * (D + 2);
        const float *mg = ml + 2 * g * P.n_splits;
        float M = -INFINITY;
        for (int z = 0; z < P.n_splits; z++) M = fmaxf(M, mg[2 * z]);
        float L = 0.f, a = 0.f;
        for (int z = 0; z < P.n_splits; z++) {
            float m = mg[2 * z];
            if (m == -INFINITY) continue;
            float e = __expf(m - M);
            L += mg[2 * z + 1] * e;
            a += __ldcg(w + z * (D + 2) + 2 + d) * e;
        }
        out[i] = from_f<T>(L > 0.f ? a / L : 0.f);
    }
}

void cuda_attention_init(struct cuda_ctx *c)
{
    /* Let every instantiation use the device's whole opt-in shared memory (large head_dim x group). */
    int bytes = (int)c->smem_optin;
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CUDA_CHECK(cudaMalloc((void **)&c->attn_counters, LOOM_CUDA_ATTN_COUNTERS * sizeof(int)));
    CUDA_CHECK(cudaMemset(c->attn_counters, 0, LOOM_CUDA_ATTN_COUNTERS * sizeof(int)));
    cuda_attention_tc_init(c);
}

template <typename T>
static void attn_launch(struct cuda_ctx *c, const struct cuda_attn_params *P, int n_tokens, size_t smem)
{
    dim3 grid(n_tokens, P->n_kv_heads, P->n_splits);
    cuda_launch(c, attn_kernel<T>, grid, dim3(ATTN_THREADS), smem, *P);
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

void cuda_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor q, struct loom_tensor k_cache,
                    struct loom_tensor v_cache, const struct loom_attn_meta *meta, int n_heads, int n_kv_heads,
                    int head_dim, float scale, int sliding_window)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    LOOM_ASSERT(q.dtype == out.dtype && k_cache.dtype == q.dtype && v_cache.dtype == q.dtype);
    LOOM_ASSERT(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    LOOM_ASSERT(q.cols >= (int64_t)n_heads * head_dim && out.cols >= (int64_t)n_heads * head_dim);
    LOOM_ASSERT(k_cache.cols >= (int64_t)n_kv_heads * head_dim && v_cache.cols >= (int64_t)n_kv_heads * head_dim);
    int n_tokens = meta->n_tokens;
    if (n_tokens == 0) return;
    LOOM_ASSERT(q.rows >= n_tokens && out.rows >= n_tokens && meta->n_seqs > 0);

    struct cuda_attn_params P;
    memset(&P, 0, sizeof P); /* padding too: launches are recorded and compared as bytes */
    P.out = out.data;
    P.q = q.data;
    P.kc = k_cache.data;
    P.vc = v_cache.data;
    P.q_stride = q.stride;
    P.out_stride = out.stride;
    P.k_stride = k_cache.stride;
    P.v_stride = v_cache.stride;
    P.query_start = meta->query_start;
    P.seq_lens = meta->seq_lens;
    P.block_tables = meta->block_tables;
    P.n_seqs = meta->n_seqs;
    P.block_size = meta->block_size;
    P.max_blocks = meta->max_blocks_per_seq;
    P.n_heads = n_heads;
    P.n_kv_heads = n_kv_heads;
    P.head_dim = head_dim;
    P.group = n_heads / n_kv_heads;
    P.scale = scale;
    P.window = sliding_window;
    P.ws = c->attn_ws;
    P.counters = c->attn_counters;
    size_t es = loom_dtype_size(q.dtype);
    P.vec = head_dim * es % 16 == 0 && k_cache.stride * es % 16 == 0 && v_cache.stride * es % 16 == 0 &&
            aligned16(k_cache.data) && aligned16(v_cache.data);

    if (cuda_attention_tc(c, &P, meta, q.dtype)) return; /* a prefill step on tensor cores */

    size_t smem = attn_smem_bytes(P.group, head_dim);
    LOOM_ASSERT(smem <= c->smem_optin);

    /* Split the context when the (token, kv head) blocks alone would leave SMs idle (decode). The count
     * is a power of two chosen from the longest context, so that consecutive decode steps launch the
     * same grid (a graph replays them) while each block finds its own range from seq_lens on the GPU. */
    int64_t blocks = (int64_t)n_tokens * n_kv_heads;
    int max_len = meta->max_seq_len;
    if (sliding_window > 0 && max_len > sliding_window) max_len = sliding_window;
    int splits = 1;
    int64_t target = 2 * (int64_t)c->sm_count;
    int tiles = (max_len + ATTN_TILE - 1) / ATTN_TILE;
    size_t per_split = (size_t)n_tokens * n_heads * (head_dim + 2) * sizeof(float);
    while (splits < ATTN_MAX_SPLITS && blocks * splits * 2 <= target && splits * 2 <= tiles &&
           per_split * splits * 2 <= LOOM_CUDA_ATTN_WS_BYTES && blocks <= LOOM_CUDA_ATTN_COUNTERS &&
           2 * P.group * splits * 2 <= ATTN_TILE * (2 * head_dim + 1)) /* the merge's (max, sum) fit in K|V smem */
        splits *= 2;
    P.n_splits = splits;

    switch (q.dtype) {
    case LOOM_DTYPE_F32: attn_launch<float>(c, &P, n_tokens, smem); break;
    case LOOM_DTYPE_F16: attn_launch<__half>(c, &P, n_tokens, smem); break;
    case LOOM_DTYPE_BF16: attn_launch<__nv_bfloat16>(c, &P, n_tokens, smem); break;
    default: LOOM_DIE("CUDA attention: unsupported dtype %s", loom_dtype_name(q.dtype));
    }
}
