/*
 * cuda_attention.cu: paged causal attention over the KV cache, for prefill chunks and decode alike.
 *
 * One block takes one query token and one KV head, so the G = n_heads / n_kv_heads query heads that
 * share the head (GQA) read each K/V tile once. It walks the token's visible context (causal, and the
 * sliding window) in tiles of 32 positions through the block table, with an fp32 online softmax.
 * Flash-decoding: when tokens x KV heads would leave the GPU idle (a decode batch, a long context),
 * the context is split into n_splits ranges across blocks; each writes its partial (max, sum, output)
 * to a workspace and a second kernel merges them.
 * Not here: tensor-core tiles for long prefills (a query tile per block would reuse K/V across tokens).
 */
#include "backend/cuda/cuda_common.h"

#include <float.h>

#define ATTN_TILE 32
#define ATTN_THREADS 128
#define ATTN_MAX_SPLITS 64

struct attn_params {
    void *out;
    const void *q, *kc, *vc;
    int64_t q_stride, out_stride, k_stride, v_stride; /* elements between rows */
    const int32_t *query_start, *seq_lens, *block_tables;
    int n_seqs, block_size, max_blocks;
    int n_heads, n_kv_heads, head_dim, group;
    float scale;
    int window;
    int n_splits;
    float *ws; /* [n_tokens, n_heads, n_splits, head_dim + 2] when n_splits > 1 */
};

static size_t attn_smem_bytes(int group, int head_dim)
{
    /* q[G][D], k[T][D+1], v[T][D], p[G][T], acc[G][D], m/l/alpha[G] */
    size_t f = (size_t)group * head_dim + ATTN_TILE * (head_dim + 1) + ATTN_TILE * head_dim + group * ATTN_TILE +
               (size_t)group * head_dim + 3 * group;
    return f * sizeof(float);
}

template <typename T> __global__ void __launch_bounds__(ATTN_THREADS) attn_kernel(struct attn_params P)
{
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
    const int chunk = (len + P.n_splits - 1) / P.n_splits;
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

    for (int t0 = start; t0 < end; t0 += ATTN_TILE) {
        const int nt = min(ATTN_TILE, end - t0);
        __syncthreads(); /* the previous tile's readers are done */
        for (int i = threadIdx.x; i < nt * D; i += blockDim.x) {
            int t = i / D, d = i - t * D;
            int p = t0 + t;
            int64_t slot = (int64_t)bt[p / P.block_size] * P.block_size + p % P.block_size;
            ks[t * (D + 1) + d] = to_f(kc[slot * P.k_stride + d]);
            vs[t * D + d] = to_f(vc[slot * P.v_stride + d]);
        }
        __syncthreads();
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
    if (P.n_splits == 1) {
        T *out = (T *)P.out + (int64_t)tok * P.out_stride + (int64_t)h0 * D;
        for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
            int g = i / D;
            float l = lrow[g];
            out[i] = from_f<T>(l > 0.f ? acc[i] / l : 0.f);
        }
    } else {
        for (int i = threadIdx.x; i < G * (D + 2); i += blockDim.x) {
            int g = i / (D + 2), j = i - g * (D + 2);
            float *w = P.ws + (((int64_t)tok * P.n_heads + h0 + g) * P.n_splits + split) * (D + 2);
            w[j] = j == 0 ? mrow[g] : j == 1 ? lrow[g] : acc[g * D + (j - 2)];
        }
    }
}

/* Merges the n_splits partials of each (token, head): one block per pair, threads over head_dim. */
template <typename T>
__global__ void attn_combine_kernel(void *out_, int64_t out_stride, const float *ws, int n_heads, int head_dim,
                                    int n_splits)
{
    const int tok = blockIdx.x, h = blockIdx.y, D = head_dim;
    const float *w = ws + ((int64_t)tok * n_heads + h) * n_splits * (D + 2);
    float M = -INFINITY;
    for (int z = 0; z < n_splits; z++) M = fmaxf(M, w[z * (D + 2)]);
    float L = 0.f;
    for (int z = 0; z < n_splits; z++) {
        float m = w[z * (D + 2)];
        if (m != -INFINITY) L += w[z * (D + 2) + 1] * __expf(m - M);
    }
    T *out = (T *)out_ + (int64_t)tok * out_stride + (int64_t)h * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float a = 0.f;
        for (int z = 0; z < n_splits; z++) {
            float m = w[z * (D + 2)];
            if (m != -INFINITY) a += w[z * (D + 2) + 2 + d] * __expf(m - M);
        }
        out[d] = from_f<T>(L > 0.f ? a / L : 0.f);
    }
}

void cuda_attention_init(struct cuda_ctx *c)
{
    /* Let every instantiation use the device's whole opt-in shared memory (large head_dim x group). */
    int bytes = (int)c->smem_optin;
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <typename T>
static void attn_launch(struct cuda_ctx *c, const struct attn_params *P, int n_tokens, size_t smem)
{
    dim3 grid(n_tokens, P->n_kv_heads, P->n_splits);
    cuda_launch(c, attn_kernel<T>, grid, dim3(ATTN_THREADS), smem, *P);
    CUDA_LAUNCH_CHECK();
    if (P->n_splits > 1) {
        dim3 g2(n_tokens, P->n_heads);
        int th = P->head_dim < 128 ? 64 : 128;
        cuda_launch(c, attn_combine_kernel<T>, g2, dim3(th), 0, P->out, P->out_stride, P->ws, P->n_heads, P->head_dim,
                                                         P->n_splits);
        CUDA_LAUNCH_CHECK();
    }
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

    struct attn_params P;
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

    size_t smem = attn_smem_bytes(P.group, head_dim);
    LOOM_ASSERT(smem <= c->smem_optin);

    /* Split the context when the (token, kv head) blocks alone would leave SMs idle. */
    int64_t blocks = (int64_t)n_tokens * n_kv_heads;
    int max_len = meta->max_seq_len;
    if (sliding_window > 0 && max_len > sliding_window) max_len = sliding_window;
    int splits = 1;
    int64_t target = 2 * (int64_t)c->sm_count;
    if (blocks < target && max_len > 2 * ATTN_TILE) {
        splits = (int)((target + blocks - 1) / blocks);
        int by_len = (max_len + 2 * ATTN_TILE - 1) / (2 * ATTN_TILE); /* at least 64 positions a split */
        if (splits > by_len) splits = by_len;
        if (splits > ATTN_MAX_SPLITS) splits = ATTN_MAX_SPLITS;
        size_t per_split = (size_t)n_tokens * n_heads * (head_dim + 2) * sizeof(float);
        size_t fit = LOOM_CUDA_ATTN_WS_BYTES / per_split;
        if ((size_t)splits > fit) splits = (int)fit;
        if (splits < 1) splits = 1;
    }
    P.n_splits = splits;

    switch (q.dtype) {
    case LOOM_DTYPE_F32: attn_launch<float>(c, &P, n_tokens, smem); break;
    case LOOM_DTYPE_F16: attn_launch<__half>(c, &P, n_tokens, smem); break;
    case LOOM_DTYPE_BF16: attn_launch<__nv_bfloat16>(c, &P, n_tokens, smem); break;
    default: LOOM_DIE("CUDA attention: unsupported dtype %s", loom_dtype_name(q.dtype));
    }
}
