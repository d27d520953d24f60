/*
 * cuda_matmul.cu: out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m]).
 *
 * x and w of one dtype (BF16, F16 or F32) go to cuBLAS with fp32 accumulation (CUBLAS_COMPUTE_32F; F32
 * without TF32); out may be F32 or that dtype. Any other mix of dtypes (e.g. BF16 activations with F16
 * weights) takes a plain tiled kernel that converts on load: correct, not fast. The bias is added by a
 * second small kernel. Decode-sized products (n <= 8 rows of 16-bit x and w) take a GEMV kernel of
 * our own instead, with the bias fused: a cuBLAS call there costs more in launch and setup than in
 * reading w.
 *
 * Row-major to cuBLAS's column-major: out^T (m x n, ld out.stride) = op_T(w as k x m, ld w.stride)
 * * op_N(x as k x n, ld x.stride).
 */
#include "backend/cuda/cuda_common.h"

static cudaDataType_t cuda_dt(enum loom_dtype t)
{
    switch (t) {
    case LOOM_DTYPE_F32: return CUDA_R_32F;
    case LOOM_DTYPE_F16: return CUDA_R_16F;
    case LOOM_DTYPE_BF16: return CUDA_R_16BF;
    default: LOOM_DIE("CUDA matmul: unsupported dtype %s", loom_dtype_name(t));
    }
}

/* ---- fallback: 64 x 64 output tiles, 16-deep k slices, 256 threads with 4 x 4 outputs each ---- */
#define MM_BM 64
#define MM_BN 64
#define MM_BK 16

__global__ void matmul_generic_kernel(void *out, int odt, int64_t ostride, const void *x, int xdt, int64_t xstride,
                                      const void *w, int wdt, int64_t wstride, int n, int m, int k)
{
    PDL_PROLOGUE();
    __shared__ float xs[MM_BK][MM_BM + 1]; /* xs[kk][row] */
    __shared__ float ws[MM_BK][MM_BN + 1]; /* ws[kk][col] */
    int r0 = blockIdx.y * MM_BM, c0 = blockIdx.x * MM_BN;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < k; k0 += MM_BK) {
        for (int i = threadIdx.x; i < MM_BM * MM_BK; i += blockDim.x) {
            int rr = i / MM_BK, kk = i % MM_BK;
            int r = r0 + rr, kc = k0 + kk;
            xs[kk][rr] = (r < n && kc < k) ? ld_f(x, xdt, (int64_t)r * xstride + kc) : 0.f;
            int c = c0 + rr;
            ws[kk][rr] = (c < m && kc < k) ? ld_f(w, wdt, (int64_t)c * wstride + kc) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MM_BK; kk++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) a[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) b[j] = ws[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = r0 + ty + 16 * i;
        if (r >= n) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int c = c0 + tx + 16 * j;
            if (c < m) st_f(out, odt, (int64_t)r * ostride + c, acc[i][j]);
        }
    }
}

__global__ void add_bias_kernel(void *out, int odt, int64_t ostride, const void *bias, int bdt, int n, int m)
{
    PDL_PROLOGUE();
    int64_t total = (int64_t)n * m;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / m, c = i % m;
        int64_t o = r * ostride + c;
        st_f(out, odt, o, ld_f(out, odt, o) + ld_f(bias, bdt, c));
    }
}


/* ---- small batches (decode): one warp per output row, 16-byte loads of w, fp32 accumulate ----
 * Memory-bound: w is read once per call; x (at most GEMV_MAX_N rows) stays in L1/L2. Needs k, the row
 * strides and the pointers aligned to 8 elements (16 bytes); cuBLAS takes the rest. */
#define GEMV_MAX_N 8
#define GEMV_WARPS 4
#define GEMV_BATCH 4

template <typename TW, typename TX, int NB, int KW>
__global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_kernel(void *out, int odt, int64_t ostride, const TX *__restrict__ x, int64_t xstride,
                const TW *__restrict__ w, int64_t wstride, const void *bias, int bdt, int m, int k)
{
    PDL_PROLOGUE();
    /* KW warps share a row (long k): each takes every KW-th 256-element slice, then they add up */
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row = blockIdx.x * (GEMV_WARPS / KW) + warp / KW, part = warp % KW;
    float acc[NB];
#pragma unroll
    for (int b = 0; b < NB; b++) acc[b] = 0.f;
    if (row < m) {
        /* GEMV_BATCH 16-byte slices of w (and, for one or two rows of x, of x) are loaded before any
         * is used: one memory round trip per batch instead of one per slice */
        const TW *wr = w + (int64_t)row * wstride;
        const int step = 256 * KW;
        for (int c0 = (part * 32 + lane) * 8; c0 < k; c0 += GEMV_BATCH * step) {
            uint4 wv[GEMV_BATCH], xv[GEMV_BATCH][NB <= 2 ? NB : 1];
#pragma unroll
            for (int u = 0; u < GEMV_BATCH; u++) {
                int c = c0 + u * step;
                wv[u] = make_uint4(0, 0, 0, 0);
                if (c < k) wv[u] = __ldg((const uint4 *)(wr + c));
                if constexpr (NB <= 2) {
#pragma unroll
                    for (int b = 0; b < NB; b++) {
                        xv[u][b] = make_uint4(0, 0, 0, 0);
                        if (c < k) xv[u][b] = *(const uint4 *)(x + b * xstride + c);
                    }
                }
            }
#pragma unroll
            for (int u = 0; u < GEMV_BATCH; u++) {
                int c = c0 + u * step;
                if (c >= k) break;
                float wf[8];
                unpack8(wv[u], wf, (const TW *)0);
#pragma unroll
                for (int b = 0; b < NB; b++) {
                    float xf[8];
                    if constexpr (NB <= 2)
                        unpack8(xv[u][b], xf, (const TX *)0);
                    else
                        unpack8(*(const uint4 *)(x + b * xstride + c), xf, (const TX *)0);
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[b] = fmaf(wf[j], xf[j], acc[b]);
                }
            }
        }
    }
#pragma unroll
    for (int b = 0; b < NB; b++) {
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], o);
    }
    if (KW > 1) {
        __shared__ float red[GEMV_WARPS][NB];
        if (lane == 0)
#pragma unroll
            for (int b = 0; b < NB; b++) red[warp][b] = acc[b];
        __syncthreads();
        if (part == 0)
#pragma unroll
            for (int b = 0; b < NB; b++) {
                float t = 0.f;
#pragma unroll
                for (int j = 0; j < KW; j++) t += red[warp + j][b];
                acc[b] = t;
            }
    }
    if (part == 0 && row < m && lane < NB) {
        float v = 0.f;
#pragma unroll
        for (int b = 0; b < NB; b++)
            if (b == lane) v = acc[b];
        if (bias) v += ld_f(bias, bdt, row);
        st_f(out, odt, (int64_t)lane * ostride + row, v);
    }
}

template <typename TW, typename TX, int KW>
static void gemv_launch_kw(struct cuda_ctx *c, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                           const struct loom_tensor *bias)
{
    int n = (int)x.rows, m = (int)w.rows, k = (int)x.cols;
    const int rows_per_block = GEMV_WARPS / KW;
    dim3 grid((m + rows_per_block - 1) / rows_per_block);
    const void *bd = bias ? bias->data : NULL;
    int bdt = bias ? bias->dtype : 0;
    const TX *xp = (const TX *)x.data;
    const TW *wp = (const TW *)w.data;
#define GEMV_CASE(NB)                                                                                    \
    case NB:                                                                                             \
        cuda_launch(c, gemv_kernel<TW, TX, NB, KW>, grid, dim3(32 * GEMV_WARPS), 0, out.data, out.dtype, out.stride, \
                    xp, x.stride, wp, w.stride, bd, bdt, m, k);                                          \
        break;
    switch (n) {
        GEMV_CASE(1)
        GEMV_CASE(2)
        GEMV_CASE(3)
        GEMV_CASE(4)
        GEMV_CASE(5)
        GEMV_CASE(6)
        GEMV_CASE(7)
        GEMV_CASE(8)
    default: LOOM_DIE("gemv: n = %d", n);
    }
#undef GEMV_CASE
}

/* Warps per row: about four 16-byte loads per lane in flight, at most 4 warps on one row. */
template <typename TW, typename TX>
static void gemv_launch(struct cuda_ctx *c, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                        const struct loom_tensor *bias)
{
    int k = (int)x.cols;
    if (k <= 1024)
        gemv_launch_kw<TW, TX, 1>(c, out, x, w, bias);
    else if (k <= 2048)
        gemv_launch_kw<TW, TX, 2>(c, out, x, w, bias);
    else
        gemv_launch_kw<TW, TX, 4>(c, out, x, w, bias);
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* True (and launched) when the small-batch kernel applies. */
static bool try_gemv(struct cuda_ctx *c, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                     const struct loom_tensor *bias)
{
    if (x.rows < 1 || x.rows > GEMV_MAX_N) return false;
    if (x.dtype == LOOM_DTYPE_F32 || w.dtype == LOOM_DTYPE_F32) return false;
    if (x.cols % 8 || x.stride % 8 || w.stride % 8 || !aligned16(x.data) || !aligned16(w.data)) return false;
    if (w.dtype == LOOM_DTYPE_BF16 && x.dtype == LOOM_DTYPE_BF16)
        gemv_launch<__nv_bfloat16, __nv_bfloat16>(c, out, x, w, bias);
    else if (w.dtype == LOOM_DTYPE_F16 && x.dtype == LOOM_DTYPE_F16)
        gemv_launch<__half, __half>(c, out, x, w, bias);
    else if (w.dtype == LOOM_DTYPE_F16 && x.dtype == LOOM_DTYPE_BF16)
        gemv_launch<__half, __nv_bfloat16>(c, out, x, w, bias);
    else if (w.dtype == LOOM_DTYPE_BF16 && x.dtype == LOOM_DTYPE_F16)
        gemv_launch<__nv_bfloat16, __half>(c, out, x, w, bias);
    else
        return false;
    return true;
}

static int grid_for(int64_t total, int threads)
{
    int64_t b = (total + threads - 1) / threads;
    if (b > 65535 * 4) b = 65535 * 4;
    if (b < 1) b = 1;
    return (int)b;
}

void cuda_matmul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                 const struct loom_tensor *bias)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    int n = (int)x.rows, k = (int)x.cols, m = (int)w.rows;
    LOOM_ASSERT(w.cols == k && out.rows == n && out.cols == m);
    LOOM_ASSERT(cuda_is_float_dtype(x.dtype) && cuda_is_float_dtype(w.dtype) && cuda_is_float_dtype(out.dtype));
    if (n == 0 || m == 0) return;
    if (try_gemv(c, out, x, w, bias)) return;

    bool blas = x.dtype == w.dtype && (out.dtype == LOOM_DTYPE_F32 || out.dtype == x.dtype);
    if (blas) {
        /* Default math mode (set at create): CUBLAS_COMPUTE_32F never uses TF32 for F32 operands. */
        struct cuda_gemm_args g;
        memset(&g, 0, sizeof g); /* records are compared as bytes, padding included */
        g.ta = CUBLAS_OP_T;
        g.tb = CUBLAS_OP_N;
        g.m = m;
        g.n = n;
        g.k = k;
        g.a = w.data;
        g.at = cuda_dt(w.dtype);
        g.lda = (int)w.stride;
        g.b = x.data;
        g.bt = cuda_dt(x.dtype);
        g.ldb = (int)x.stride;
        g.c = out.data;
        g.ct = cuda_dt(out.dtype);
        g.ldc = (int)out.stride;
        g.compute = CUBLAS_COMPUTE_32F;
        cuda_gemm(c, &g);
    } else {
        dim3 grid((m + MM_BN - 1) / MM_BN, (n + MM_BM - 1) / MM_BM);
        cuda_launch(c, matmul_generic_kernel, grid, dim3(256), 0, out.data, out.dtype, out.stride, x.data, x.dtype, x.stride,
                                                           w.data, w.dtype, w.stride, n, m, k);
        CUDA_LAUNCH_CHECK();
    }
    if (bias) {
        LOOM_ASSERT(bias->rows * bias->cols == m && cuda_is_float_dtype(bias->dtype));
        cuda_launch(c, add_bias_kernel, dim3(grid_for((int64_t)n * m, 256)), dim3(256), 0, out.data, out.dtype, out.stride,
                                                                           bias->data, bias->dtype, n, m);
        CUDA_LAUNCH_CHECK();
    }
}

bool cuda_matmul_fused(struct loom_backend *be, const struct loom_matmul_fused *f)
{
    (void)be, (void)f;
    return false;
}
