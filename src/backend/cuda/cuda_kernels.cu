/*
 * cuda_kernels.cu: the small kernels of the ops table: embedding, rmsnorm, add_rmsnorm, rope, kv_store,
 * silu_mul, add, gather_rows, scatter_add_rows, moe_route, convert.
 *
 * Every kernel reads and writes F32, F16 or BF16 (each tensor its own dtype) and computes in fp32;
 * row kernels take one block per row. Matrix products are in cuda_matmul.cu, attention in
 * cuda_attention.cu. These are the plain versions: one pass over memory each, not yet fused further.
 */
#include "backend/cuda/cuda_common.h"

#include <float.h>

static int rows_grid(int64_t rows)
{
    LOOM_ASSERT(rows <= 2147483647);
    return (int)(rows > 0 ? rows : 1);
}

static int flat_grid(int64_t total, int threads)
{
    int64_t b = (total + threads - 1) / threads;
    if (b > 65535 * 8) b = 65535 * 8;
    if (b < 1) b = 1;
    return (int)b;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. */
__device__ float block_sum(float v)
{
    __shared__ float part[32];
    __shared__ float total;
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) part[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float s = lane < (int)(blockDim.x >> 5) ? part[lane] : 0.f;
        s = warp_sum(s);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}

/* ---- embedding / gather ---- */

__global__ void gather_rows_kernel(void *out, int odt, int64_t ostride, const void *x, int xdt, int64_t xstride,
                                   const int32_t *idx, int64_t cols, int trigger)
{
    PDL_PROLOGUE();
    if (trigger) PDL_TRIGGER(); /* the embedding: the first q|k|v GEMV's weights load meanwhile */
    int64_t r = blockIdx.x;
    int64_t src = idx[r];
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        st_f(out, odt, r * ostride + c, ld_f(x, xdt, src * xstride + c));
}

void cuda_embedding(struct loom_backend *be, struct loom_tensor out, struct loom_tensor table, const int32_t *ids)
{
    LOOM_ASSERT(out.cols == table.cols);
    if (out.rows == 0) return;
    struct cuda_ctx *c = cuda_ctx_of(be);
    cuda_launch(c, gather_rows_kernel, dim3(rows_grid(out.rows)), dim3(256), 0, out.data, out.dtype, out.stride,
                table.data, table.dtype, table.stride, ids, out.cols, (int)c->pdl_trigger);
    CUDA_LAUNCH_CHECK();
}

void cuda_gather_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, const int32_t *idx)
{
    LOOM_ASSERT(out.cols == x.cols);
    if (out.rows == 0) return;
    struct cuda_ctx *c = cuda_ctx_of(be);
    cuda_launch(c, gather_rows_kernel, dim3(rows_grid(out.rows)), dim3(256), 0, out.data, out.dtype, out.stride,
                x.data, x.dtype, x.stride, idx, out.cols, (int)c->pdl_trigger);
    CUDA_LAUNCH_CHECK();
}

/* out[idx[i], :] += weight[i] * x[i, :]; idx distinct within a call, so no atomics. */
__global__ void scatter_add_rows_kernel(void *out, int odt, int64_t ostride, const void *x, int xdt,
                                        int64_t xstride, const int32_t *idx, const float *weight, int64_t cols)
{
    PDL_PROLOGUE();
    int64_t r = blockIdx.x;
    int64_t dst = idx[r];
    float wt = weight ? weight[r] : 1.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        int64_t o = dst * ostride + c;
        st_f(out, odt, o, ld_f(out, odt, o) + wt * ld_f(x, xdt, r * xstride + c));
    }
}

void cuda_scatter_add_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, const int32_t *idx,
                           const float *weight)
{
    LOOM_ASSERT(out.cols == x.cols);
    if (x.rows == 0) return;
    cuda_launch(cuda_ctx_of(be), scatter_add_rows_kernel, dim3(rows_grid(x.rows)), dim3(256), 0, 
        out.data, out.dtype, out.stride, x.data, x.dtype, x.stride, idx, weight, x.cols);
    CUDA_LAUNCH_CHECK();
}

/* ---- norms ----
 * One block of ROW_THREADS per row, the row held in registers (EPT elements a thread, EPT <= 16: rows
 * up to 4096): every load is issued before the first store, so a row costs one memory round trip
 * instead of one per element (in-place rows would otherwise serialize each load behind the store
 * before it). Longer rows take the loop below. */
#define ROW_THREADS 256

__device__ __forceinline__ float round_to(int dt, float v)
{
    if (dt == LOOM_DTYPE_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (dt == LOOM_DTYPE_F16) return __half2float(__float2half_rn(v));
    return v;
}

/* FUSED: res += x (rounded to res's dtype) first, and the norm is of the new res. */
template <int EPT, bool FUSED>
__global__ void __launch_bounds__(ROW_THREADS)
    norm_reg_kernel(void *res, int rdt, int64_t rstride, const void *x, int xdt, int64_t xstride, void *out, int odt,
                    int64_t ostride, const void *w, int wdt, int cols, float eps, int trigger)
{
    PDL_PROLOGUE();
    if (trigger) PDL_TRIGGER(); /* a norm precedes a product: the GEMV's weights load meanwhile */
    const int64_t r = blockIdx.x;
    float v[EPT], wv[EPT];
#pragma unroll
    for (int i = 0; i < EPT; i++) {
        int c = threadIdx.x + i * ROW_THREADS;
        v[i] = 0.f;
        wv[i] = 0.f;
        if (c < cols) {
            v[i] = ld_f(x, xdt, r * xstride + c);
            if (FUSED) v[i] = round_to(rdt, v[i] + ld_f(res, rdt, r * rstride + c));
            wv[i] = ld_f(w, wdt, c);
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < EPT; i++) ss += v[i] * v[i];
    if (FUSED) {
#pragma unroll
        for (int i = 0; i < EPT; i++) {
            int c = threadIdx.x + i * ROW_THREADS;
            if (c < cols) st_f(res, rdt, r * rstride + c, v[i]);
        }
    }
    ss = block_sum(ss);
    const float inv = rsqrtf(ss / (float)cols + eps);
#pragma unroll
    for (int i = 0; i < EPT; i++) {
        int c = threadIdx.x + i * ROW_THREADS;
        if (c < cols) st_f(out, odt, r * ostride + c, v[i] * inv * wv[i]);
    }
}

__global__ void rmsnorm_kernel(void *out, int odt, int64_t ostride, const void *x, int xdt, int64_t xstride,
                               const void *w, int wdt, int64_t cols, float eps)
{
    PDL_PROLOGUE();
    int64_t r = blockIdx.x;
    float ss = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = ld_f(x, xdt, r * xstride + c);
        ss += v * v;
    }
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)cols + eps);
    /* out may alias x: each thread reads only the elements it then writes */
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        st_f(out, odt, r * ostride + c, ld_f(x, xdt, r * xstride + c) * inv * ld_f(w, wdt, c));
}

/* residual += x (rounded to residual's dtype); out = rmsnorm(residual) * w */
__global__ void add_rmsnorm_kernel(void *res, int rdt, int64_t rstride, const void *x, int xdt, int64_t xstride,
                                   void *out, int odt, int64_t ostride, const void *w, int wdt, int64_t cols,
                                   float eps)
{
    PDL_PROLOGUE();
    int64_t r = blockIdx.x;
    float ss = 0.f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        int64_t o = r * rstride + c;
        st_f(res, rdt, o, ld_f(res, rdt, o) + ld_f(x, xdt, r * xstride + c));
        float v = ld_f(res, rdt, o); /* the stored (rounded) value, as the CPU sees it */
        ss += v * v;
    }
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)cols + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        st_f(out, odt, r * ostride + c, ld_f(res, rdt, r * rstride + c) * inv * ld_f(w, wdt, c));
}

/* Launches the register kernel when the row fits, else the loop kernel. */
static void norm_launch(struct loom_backend *be, bool fused, struct loom_tensor res, struct loom_tensor x,
                        struct loom_tensor out, struct loom_tensor w, float eps)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    int cols = (int)x.cols, ept = (cols + ROW_THREADS - 1) / ROW_THREADS, trig = c->pdl_trigger;
    dim3 grid(rows_grid(x.rows)), block(ROW_THREADS);
#define NORM_CASE(E)                                                                                     \
    if (ept <= E) {                                                                                      \
        if (fused)                                                                                       \
            cuda_launch(c, norm_reg_kernel<E, true>, grid, block, 0, res.data, res.dtype, res.stride, x.data, x.dtype, \
                        x.stride, out.data, out.dtype, out.stride, w.data, w.dtype, cols, eps, trig);    \
        else                                                                                             \
            cuda_launch(c, norm_reg_kernel<E, false>, grid, block, 0, (void *)NULL, 0, (int64_t)0, x.data, x.dtype, \
                        x.stride, out.data, out.dtype, out.stride, w.data, w.dtype, cols, eps, trig);    \
        return;                                                                                          \
    }
    NORM_CASE(1)
    NORM_CASE(2)
    NORM_CASE(4)
    NORM_CASE(8)
    NORM_CASE(16)
#undef NORM_CASE
    if (fused)
        cuda_launch(c, add_rmsnorm_kernel, grid, block, 0, res.data, res.dtype, res.stride, x.data, x.dtype, x.stride,
                    out.data, out.dtype, out.stride, w.data, w.dtype, x.cols, eps);
    else
        cuda_launch(c, rmsnorm_kernel, grid, block, 0, out.data, out.dtype, out.stride, x.data, x.dtype, x.stride,
                    w.data, w.dtype, x.cols, eps);
}

void cuda_rmsnorm(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, struct loom_tensor weight,
                  float eps)
{
    LOOM_ASSERT(out.rows == x.rows && out.cols == x.cols && weight.rows * weight.cols == x.cols);
    if (x.rows == 0) return;
    norm_launch(be, false, x, x, out, weight, eps);
}

void cuda_add_rmsnorm(struct loom_backend *be, struct loom_tensor residual, struct loom_tensor x,
                      struct loom_tensor out, struct loom_tensor weight, float eps)
{
    LOOM_ASSERT(residual.rows == x.rows && residual.cols == x.cols && out.rows == x.rows && out.cols == x.cols);
    LOOM_ASSERT(weight.rows * weight.cols == x.cols);
    if (x.rows == 0) return;
    norm_launch(be, true, residual, x, out, weight, eps);
}

/* ---- rope (neox: rotate the two halves of each head) ----
 * One block per row, a thread per (head, pair); up to ROPE_UNROLL pairs a thread are loaded before
 * any is stored (the op is in place). */
#define ROPE_THREADS 256
#define ROPE_UNROLL 4

__global__ void __launch_bounds__(ROPE_THREADS)
    rope_kernel(void *x, int xdt, int64_t xstride, const int32_t *positions, int n_heads, int head_dim,
                const float *inv_freq)
{
    PDL_PROLOGUE();
    const int64_t r = blockIdx.x;
    const int half = head_dim / 2, npairs = n_heads * half;
    const float pos = (float)positions[r];
    for (int base = threadIdx.x; base < npairs; base += ROPE_THREADS * ROPE_UNROLL) {
        float a[ROPE_UNROLL], b[ROPE_UNROLL], f[ROPE_UNROLL];
        int64_t o[ROPE_UNROLL];
#pragma unroll
        for (int u = 0; u < ROPE_UNROLL; u++) {
            int i = base + u * ROPE_THREADS;
            o[u] = -1;
            if (i < npairs) {
                int h = i / half, j = i - h * half;
                o[u] = r * xstride + (int64_t)h * head_dim + j;
                a[u] = ld_f(x, xdt, o[u]);
                b[u] = ld_f(x, xdt, o[u] + half);
                f[u] = pos * inv_freq[j];
            }
        }
#pragma unroll
        for (int u = 0; u < ROPE_UNROLL; u++) {
            if (o[u] < 0) continue;
            float sn, cs;
            sincosf(f[u], &sn, &cs);
            st_f(x, xdt, o[u], a[u] * cs - b[u] * sn);
            st_f(x, xdt, o[u] + half, b[u] * cs + a[u] * sn);
        }
    }
}

void cuda_rope(struct loom_backend *be, struct loom_tensor x, const int32_t *positions, int n_heads, int head_dim,
               struct loom_tensor inv_freq)
{
    LOOM_ASSERT(x.cols >= (int64_t)n_heads * head_dim && head_dim % 2 == 0);
    LOOM_ASSERT(inv_freq.dtype == LOOM_DTYPE_F32 && inv_freq.rows * inv_freq.cols == head_dim / 2);
    if (x.rows == 0) return;
    cuda_launch(cuda_ctx_of(be), rope_kernel, dim3(rows_grid(x.rows)), dim3(ROPE_THREADS), 0, x.data, x.dtype,
                x.stride, positions, n_heads, head_dim, (const float *)inv_freq.data);
    CUDA_LAUNCH_CHECK();
}

/* ---- kv_store ---- */

__global__ void kv_store_kernel(void *kc, void *vc, int cdt, int64_t kcs, int64_t vcs, const void *k, const void *v,
                                int kdt, int64_t ks, int64_t vs, const int32_t *slots, int64_t cols)
{
    PDL_PROLOGUE();
    int64_t r = blockIdx.x;
    int64_t slot = slots[r];
    if (slot < 0) return; /* a padding token: nothing to store */
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        st_f(kc, cdt, slot * kcs + c, ld_f(k, kdt, r * ks + c));
        st_f(vc, cdt, slot * vcs + c, ld_f(v, kdt, r * vs + c));
    }
}

void cuda_kv_store(struct loom_backend *be, struct loom_tensor k_cache, struct loom_tensor v_cache,
                   struct loom_tensor k, struct loom_tensor v, const int32_t *slot_mapping)
{
    LOOM_ASSERT(k_cache.dtype == v_cache.dtype && k.dtype == v.dtype);
    LOOM_ASSERT(k.cols == k_cache.cols && v.cols == v_cache.cols && k.cols == v.cols && k.rows == v.rows);
    if (k.rows == 0) return;
    cuda_launch(cuda_ctx_of(be), kv_store_kernel, dim3(rows_grid(k.rows)), dim3(128), 0, 
        k_cache.data, v_cache.data, k_cache.dtype, k_cache.stride, v_cache.stride, k.data, v.data, k.dtype, k.stride,
        v.stride, slot_mapping, k.cols);
    CUDA_LAUNCH_CHECK();
}

/* ---- elementwise ---- */

__global__ void silu_mul_kernel(void *out, int odt, int64_t ostride, const void *g, int gdt, int64_t gstride,
                                const void *u, int udt, int64_t ustride, int64_t rows, int64_t cols, int trigger)
{
    PDL_PROLOGUE();
    if (trigger) PDL_TRIGGER(); /* the down GEMV's weights load meanwhile */
    int64_t total = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i % cols;
        float a = ld_f(g, gdt, r * gstride + c), b = ld_f(u, udt, r * ustride + c);
        st_f(out, odt, r * ostride + c, a / (1.f + expf(-a)) * b);
    }
}

void cuda_silu_mul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor gate, struct loom_tensor up)
{
    LOOM_ASSERT(out.rows == gate.rows && out.cols == gate.cols && up.rows == gate.rows && up.cols == gate.cols);
    int64_t total = out.rows * out.cols;
    if (total == 0) return;
    struct cuda_ctx *c = cuda_ctx_of(be);
    cuda_launch(c, silu_mul_kernel, dim3(flat_grid(total, 256)), dim3(256), 0, out.data, out.dtype, out.stride,
                gate.data, gate.dtype, gate.stride, up.data, up.dtype, up.stride, out.rows, out.cols,
                (int)c->pdl_trigger);
    CUDA_LAUNCH_CHECK();
}

__global__ void add_kernel(void *x, int xdt, int64_t xstride, const void *y, int ydt, int64_t ystride, int64_t rows,
                           int64_t cols)
{
    PDL_PROLOGUE();
    int64_t total = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i % cols;
        int64_t o = r * xstride + c;
        st_f(x, xdt, o, ld_f(x, xdt, o) + ld_f(y, ydt, r * ystride + c));
    }
}

void cuda_add(struct loom_backend *be, struct loom_tensor x, struct loom_tensor y)
{
    LOOM_ASSERT(x.rows == y.rows && x.cols == y.cols);
    int64_t total = x.rows * x.cols;
    if (total == 0) return;
    cuda_launch(cuda_ctx_of(be), add_kernel, dim3(flat_grid(total, 256)), dim3(256), 0, x.data, x.dtype, x.stride, y.data, y.dtype,
                                                                           y.stride, x.rows, x.cols);
    CUDA_LAUNCH_CHECK();
}

__global__ void convert_kernel(void *dst, int ddt, int64_t dstride, const void *src, int sdt, int64_t sstride,
                               int64_t rows, int64_t cols)
{
    PDL_PROLOGUE();
    int64_t total = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / cols, c = i % cols;
        st_f(dst, ddt, r * dstride + c, ld_f(src, sdt, r * sstride + c));
    }
}

void cuda_convert(struct loom_backend *be, struct loom_tensor dst, struct loom_tensor src)
{
    LOOM_ASSERT(dst.rows == src.rows && dst.cols == src.cols);
    LOOM_ASSERT(cuda_is_float_dtype(dst.dtype) && cuda_is_float_dtype(src.dtype));
    int64_t total = dst.rows * dst.cols;
    if (total == 0) return;
    cuda_launch(cuda_ctx_of(be), convert_kernel, dim3(flat_grid(total, 256)), dim3(256), 0, 
        dst.data, dst.dtype, dst.stride, src.data, src.dtype, src.stride, dst.rows, dst.cols);
    CUDA_LAUNCH_CHECK();
}

/* ---- MoE routing: one warp per row; softmax over the experts, top-k (ties: lower id), renormalize ---- */
#define MOE_MAX_EXPERTS 512
#define MOE_WARPS 4

__global__ void moe_route_kernel(const void *logits, int ldt, int64_t lstride, int64_t n, int n_exp, int k,
                                 bool renorm, int32_t *ids, float *weights)
{
    PDL_PROLOGUE();
    __shared__ float prob[MOE_WARPS][MOE_MAX_EXPERTS];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    int64_t r = (int64_t)blockIdx.x * MOE_WARPS + wid;
    if (r >= n) return; /* whole warps leave together; no block-wide barrier below */
    float *p = prob[wid];
    float mx = -FLT_MAX;
    for (int e = lane; e < n_exp; e += 32) {
        float v = ld_f(logits, ldt, r * lstride + e);
        p[e] = v;
        mx = fmaxf(mx, v);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
    for (int e = lane; e < n_exp; e += 32) {
        float v = expf(p[e] - mx);
        p[e] = v;
        sum += v;
    }
    sum = warp_sum(sum);
    for (int e = lane; e < n_exp; e += 32) p[e] /= sum;
    __syncwarp();
    float picked = 0.f;
    for (int j = 0; j < k; j++) {
        float best = -1.f;
        int bi = n_exp;
        for (int e = lane; e < n_exp; e += 32) {
            if (p[e] > best) { /* ascending e: the first of equals wins */
                best = p[e];
                bi = e;
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ob = __shfl_xor_sync(0xffffffffu, best, o);
            int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ob > best || (ob == best && oi < bi)) {
                best = ob;
                bi = oi;
            }
        }
        if (bi >= n_exp) bi = n_exp - 1; /* only NaN logits get here */
        if (lane == 0) {
            ids[r * k + j] = bi;
            weights[r * k + j] = best;
            p[bi] = -2.f; /* taken */
        }
        picked += best;
        __syncwarp();
    }
    if (renorm && lane == 0)
        for (int j = 0; j < k; j++) weights[r * k + j] /= picked;
}

void cuda_moe_route(struct loom_backend *be, struct loom_tensor logits, int k, bool renormalize, int32_t *ids,
                    float *weights)
{
    int n_exp = (int)logits.cols;
    LOOM_ASSERT(n_exp <= MOE_MAX_EXPERTS && k >= 1 && k <= n_exp);
    if (logits.rows == 0) return;
    int blocks = (int)((logits.rows + MOE_WARPS - 1) / MOE_WARPS);
    cuda_launch(cuda_ctx_of(be), moe_route_kernel, dim3(blocks), dim3(32 * MOE_WARPS), 0, 
        logits.data, logits.dtype, logits.stride, logits.rows, n_exp, k, renormalize, ids, weights);
    CUDA_LAUNCH_CHECK();
}
