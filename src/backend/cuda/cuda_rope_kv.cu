/*
 * cuda_rope_kv.cu: the attention prologue in one kernel (ops->qkv_rope_store): over the rows of a
 * q | k | v matmul output, the per-head q/k RMSNorm (Qwen3), RoPE on q and k (neox halves), and the K and
 * V rows into the paged cache at the slot mapping. On the decode path it replaces rope x2 + kv_store
 * (+ rmsnorm x2) launches per layer with one. q is rotated in place; attention (cuda_attention.cu) reads
 * it there through the row stride. It does not do the projections or the attention itself.
 *
 * The arithmetic is that of the separate kernels (cuda_kernels.cu): fp32, the normed value rounded to
 * the activation dtype before the rotation (as the norm kernel's store did), sincosf of the fp32 angle.
 */
#include "backend/cuda/cuda_common.h"

#define QKV_WARPS 4

static __device__ __forceinline__ float qkv_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float qkv_round(int dt, float v)
{
    if (dt == LOOM_DTYPE_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (dt == LOOM_DTYPE_F16) return __half2float(__float2half_rn(v));
    return v;
}

/* One warp per (row, head); heads [0, NH) are q, [NH, NH + NKV) k, then NKV of v (a copy). Lane l holds
 * the pairs j = l + 32 u (u < PL) of its head, elements j and j + half, loaded before anything is
 * stored (q is rewritten in place). */
template <int PL>
__global__ void __launch_bounds__(32 * QKV_WARPS)
    qkv_rope_store_kernel(void *qkv, int dt, int64_t stride, const int32_t *positions, const int32_t *slots,
                          int n_heads, int n_kv_heads, int head_dim, const float *inv_freq, const void *qn, int qndt,
                          const void *kn, int kndt, float eps, void *kc, void *vc, int cdt, int64_t kcs, int64_t vcs)
{
    PDL_PROLOGUE();
    const int64_t r = blockIdx.x;
    const int head = blockIdx.y * QKV_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (head >= n_heads + 2 * n_kv_heads) return; /* whole warps; no block-wide barrier below */
    const int half = head_dim / 2;
    const int64_t base = r * stride + (int64_t)head * head_dim;
    const int64_t slot = slots[r];
    if (head >= n_heads + n_kv_heads) { /* v */
        if (slot < 0) return;
        const int64_t dst = slot * vcs + (int64_t)(head - n_heads - n_kv_heads) * head_dim;
        for (int d = lane; d < head_dim; d += 32) st_f(vc, cdt, dst + d, ld_f(qkv, dt, base + d));
        return;
    }
    const bool is_q = head < n_heads;
    if (!is_q && slot < 0) return; /* a padding token's k goes nowhere */
    float a[PL], b[PL];
#pragma unroll
    for (int u = 0; u < PL; u++) {
        const int j = lane + 32 * u;
        a[u] = b[u] = 0.f;
        if (j < half) {
            a[u] = ld_f(qkv, dt, base + j);
            b[u] = ld_f(qkv, dt, base + j + half);
        }
    }
    const void *nw = is_q ? qn : kn;
    if (nw) {
        const int nwdt = is_q ? qndt : kndt;
        float ss = 0.f;
#pragma unroll
        for (int u = 0; u < PL; u++) ss += a[u] * a[u] + b[u] * b[u];
        ss = qkv_warp_sum(ss);
        const float inv = rsqrtf(ss / (float)head_dim + eps);
#pragma unroll
        for (int u = 0; u < PL; u++) {
            const int j = lane + 32 * u;
            if (j < half) {
                a[u] = qkv_round(dt, a[u] * inv * ld_f(nw, nwdt, j));
                b[u] = qkv_round(dt, b[u] * inv * ld_f(nw, nwdt, j + half));
            }
        }
    }
    const float pos = (float)positions[r];
    int64_t dst;
    void *out;
    int odt;
    if (is_q) {
        out = qkv, odt = dt, dst = base;
    } else {
        out = kc, odt = cdt, dst = slot * kcs + (int64_t)(head - n_heads) * head_dim;
    }
#pragma unroll
    for (int u = 0; u < PL; u++) {
        const int j = lane + 32 * u;
        if (j >= half) break;
        float sn, cs;
        sincosf(pos * inv_freq[j], &sn, &cs);
        st_f(out, odt, dst + j, a[u] * cs - b[u] * sn);
        st_f(out, odt, dst + j + half, b[u] * cs + a[u] * sn);
    }
}

void cuda_qkv_rope_store(struct loom_backend *be, struct loom_tensor qkv, const int32_t *positions,
                         const int32_t *slot_mapping, int n_heads, int n_kv_heads, int head_dim,
                         struct loom_tensor inv_freq, const struct loom_tensor *q_norm, const struct loom_tensor *k_norm,
                         float eps, struct loom_tensor k_cache, struct loom_tensor v_cache)
{
    const int64_t kw = (int64_t)n_kv_heads * head_dim;
    LOOM_ASSERT(head_dim % 2 == 0 && head_dim <= 1024 && n_heads > 0 && n_kv_heads > 0);
    LOOM_ASSERT(qkv.cols >= (int64_t)n_heads * head_dim + 2 * kw && k_cache.cols >= kw && v_cache.cols >= kw);
    LOOM_ASSERT(cuda_is_float_dtype(qkv.dtype) && cuda_is_float_dtype(k_cache.dtype) && k_cache.dtype == v_cache.dtype);
    LOOM_ASSERT(inv_freq.dtype == LOOM_DTYPE_F32 && inv_freq.rows * inv_freq.cols == head_dim / 2);
    LOOM_ASSERT((q_norm == NULL) == (k_norm == NULL));
    if (q_norm)
        LOOM_ASSERT(q_norm->rows * q_norm->cols == head_dim && k_norm->rows * k_norm->cols == head_dim &&
                    cuda_is_float_dtype(q_norm->dtype) && cuda_is_float_dtype(k_norm->dtype));
    if (qkv.rows == 0) return;
    LOOM_ASSERT(qkv.rows <= 2147483647);
    const int tasks = n_heads + 2 * n_kv_heads;
    dim3 grid((unsigned)qkv.rows, (unsigned)((tasks + QKV_WARPS - 1) / QKV_WARPS));
    const void *qn = q_norm ? q_norm->data : NULL, *kn = k_norm ? k_norm->data : NULL;
    const int qndt = q_norm ? q_norm->dtype : 0, kndt = k_norm ? k_norm->dtype : 0;
    const int half = head_dim / 2;
    struct cuda_ctx *c = cuda_ctx_of(be);
#define QKV_CASE(PL)                                                                                      \
    cuda_launch(c, qkv_rope_store_kernel<PL>, grid, dim3(32 * QKV_WARPS), 0, qkv.data, (int)qkv.dtype, qkv.stride, \
                positions, slot_mapping, n_heads, n_kv_heads, head_dim, (const float *)inv_freq.data, qn, qndt, kn, \
                kndt, eps, k_cache.data, v_cache.data, (int)k_cache.dtype, k_cache.stride, v_cache.stride)
    if (half <= 32) QKV_CASE(1);
    else if (half <= 64) QKV_CASE(2);
    else if (half <= 128) QKV_CASE(4);
    else if (half <= 256) QKV_CASE(8);
    else QKV_CASE(16);
#undef QKV_CASE
    CUDA_LAUNCH_CHECK();
}
