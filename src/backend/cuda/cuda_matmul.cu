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

#include <stdlib.h>

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
 * strides and the pointers aligned to 8 elements (16 bytes); cuBLAS takes the rest.
 * The same kernel does matmul_fused's forms (struct loom_matmul_fused): the sublayer's RMS norm as a
 * prologue (each block normalizes the x rows into shared memory: k <= GEMV_NORM_MAX_K), and as the
 * epilogue either the residual add (out += product) or the SwiGLU product of a gate row and its up row.
 * The first slices of w are loaded before the wait for the previous kernel (weights are never written
 * by a step), so under PDL they are in flight while that kernel drains.
 * A row of x gets the same arithmetic whatever the number of rows: its product does not depend on the
 * batch it is in. */
#define GEMV_MAX_N 8
#define GEMV_WARPS 4
#define GEMV_BATCH 4
#define GEMV_NORM_MAX_K 2048

enum { GEMV_STORE, GEMV_ACCUMULATE, GEMV_SILU_PAIRS };

struct gemv_args {
    void *out;
    int64_t ostride;
    int odt;
    int n, m, k;       /* rows of x; outputs per row (rows of w, or gate/up row pairs); dot length */
    const void *x;
    int64_t xstride;
    const void *w;
    int64_t wstride;
    int64_t pair;      /* GEMV_SILU_PAIRS: output j is rows j and j + pair of w */
    const void *bias;  /* or NULL */
    int bdt;
    const void *norm;  /* the RMS norm's weight [k] (NORM) */
    int ndt;
    float eps;
    int trigger;       /* PDL_TRIGGER once this kernel may run (c->pdl_trigger) */
};

__device__ __forceinline__ float gemv_round(int dt, float v)
{
    if (dt == LOOM_DTYPE_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (dt == LOOM_DTYPE_F16) return __half2float(__float2half_rn(v));
    return v;
}

template <typename T> __device__ __forceinline__ uint4 pack8(const float *f)
{
    uint4 v;
    T *h = (T *)&v;
#pragma unroll
    for (int i = 0; i < 8; i++) h[i] = from_f<T>(f[i]);
    return v;
}

/* NB: rows of x a launch may have (1, 2, 4 or 8; a.n <= NB). KW warps share a row of w (long k): each
 * takes every KW-th 256-element slice, then they add up. From 4 rows of x on, a warp takes RW
 * consecutive outputs, so each slice of x it loads serves RW rows of w (at 8 rows of x, one row of w
 * per warp re-read x eight times per weight byte and was bound by those loads, not by memory): RW
 * outputs per warp where m is large enough (>= 4096) to keep a few blocks per SM. */
template <typename TW, typename TX, int NB, int KW, bool NORM, int EPI, int RW>
__global__ void __launch_bounds__(32 * GEMV_WARPS) gemv_kernel(struct gemv_args a)
{
    constexpr int NR = EPI == GEMV_SILU_PAIRS ? 2 : 1; /* rows of w per output */
    /* 16-byte slices of w in flight per lane: 4 per row of w (8 for KW = 4, k > 2048: one round trip up
     * to k = 8192), or 8 in all when a warp has several rows */
    constexpr int BATCH = RW == 1 ? (KW == 4 ? 2 * GEMV_BATCH : GEMV_BATCH)
                                  : ((KW == 4 && NB == 1 ? 4 : 2) * GEMV_BATCH) / (RW * NR);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * (GEMV_WARPS / KW) + warp / KW) * RW, part = warp % KW;
    const int k = a.k, n = a.n;
    const int step = 256 * KW, c_first = (part * 32 + lane) * 8;
    const TW *wr[RW][NR];
    bool live[RW];
#pragma unroll
    for (int i = 0; i < RW; i++) {
        live[i] = row0 + i < a.m;
#pragma unroll
        for (int r = 0; r < NR; r++) wr[i][r] = (const TW *)a.w + (row0 + i + r * a.pair) * a.wstride;
    }

    /* BATCH 16-byte slices of w (and, for one or two rows of x, of x) are loaded before any is
     * used: one memory round trip per batch instead of one per slice */
    uint4 wv[BATCH][RW][NR];
#pragma unroll
    for (int u = 0; u < BATCH; u++) {
        int c = c_first + u * step;
#pragma unroll
        for (int i = 0; i < RW; i++)
#pragma unroll
            for (int r = 0; r < NR; r++)
                wv[u][i][r] = live[i] && c < k ? __ldg((const uint4 *)(wr[i][r] + c)) : make_uint4(0, 0, 0, 0);
    }
    /* the epilogue's operands, fetched now: the bias (a weight) before the wait, the residual after */
    const bool storer = part == 0 && lane < n;
    float bias[RW], old[RW];
#pragma unroll
    for (int i = 0; i < RW; i++) {
        bias[i] = old[i] = 0.f;
        if (EPI != GEMV_SILU_PAIRS && a.bias && storer && live[i]) bias[i] = ld_f(a.bias, a.bdt, row0 + i);
    }
    PDL_PROLOGUE();
    if (a.trigger) PDL_TRIGGER();
    if (EPI == GEMV_ACCUMULATE && storer)
#pragma unroll
        for (int i = 0; i < RW; i++)
            if (live[i]) old[i] = ld_f(a.out, a.odt, (int64_t)lane * a.ostride + row0 + i);

    const TX *x = (const TX *)a.x;
    int64_t xstride = a.xstride;
    if constexpr (NORM) {
        /* x rows -> shared memory, their sums of squares, then rmsnorm(x) * norm rounded to TX in place */
        extern __shared__ uint4 gemv_xs[];
        __shared__ float part_ss[GEMV_WARPS][NB];
        TX *xs = (TX *)gemv_xs;
        float ss[NB];
#pragma unroll
        for (int b = 0; b < NB; b++) {
            ss[b] = 0.f;
            if (b >= n) continue;
            for (int c = threadIdx.x * 8; c < k; c += blockDim.x * 8) {
                uint4 v = *(const uint4 *)(x + b * xstride + c);
                *(uint4 *)(xs + b * k + c) = v;
                float f[8];
                unpack8(v, f, (const TX *)0);
#pragma unroll
                for (int j = 0; j < 8; j++) ss[b] = fmaf(f[j], f[j], ss[b]);
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) ss[b] += __shfl_xor_sync(0xffffffffu, ss[b], o);
            if (lane == 0) part_ss[warp][b] = ss[b];
        }
        __syncthreads();
#pragma unroll
        for (int b = 0; b < NB; b++) {
            if (b >= n) continue;
            float t = 0.f;
#pragma unroll
            for (int q = 0; q < GEMV_WARPS; q++) t += part_ss[q][b];
            const float inv = rsqrtf(t / (float)k + a.eps);
            for (int c = threadIdx.x * 8; c < k; c += blockDim.x * 8) {
                float f[8];
                unpack8(*(const uint4 *)(xs + b * k + c), f, (const TX *)0);
#pragma unroll
                for (int j = 0; j < 8; j++) f[j] = f[j] * inv * ld_f(a.norm, a.ndt, c + j);
                *(uint4 *)(xs + b * k + c) = pack8<TX>(f);
            }
        }
        __syncthreads();
        x = xs;
        xstride = k;
    }

    /* rows past n repeat the last row (computed, never stored): no branch in the unrolled loops, so
     * the loads of every row issue together */
    auto xrow = [n](int b) { return (int64_t)(b < n ? b : n - 1); };
    float acc[RW][NR][NB];
#pragma unroll
    for (int i = 0; i < RW; i++)
#pragma unroll
        for (int r = 0; r < NR; r++)
#pragma unroll
            for (int b = 0; b < NB; b++) acc[i][r][b] = 0.f;
    if (live[0]) {
        for (int c0 = c_first; c0 < k; c0 += BATCH * step) {
            uint4 xv[BATCH][NB <= 2 ? NB : 1];
#pragma unroll
            for (int u = 0; u < BATCH; u++) {
                int c = c0 + u * step;
                if (c0 != c_first)
#pragma unroll
                    for (int i = 0; i < RW; i++)
#pragma unroll
                        for (int r = 0; r < NR; r++)
                            wv[u][i][r] = live[i] && c < k ? __ldg((const uint4 *)(wr[i][r] + c)) : make_uint4(0, 0, 0, 0);
                if constexpr (NB <= 2) {
#pragma unroll
                    for (int b = 0; b < NB; b++)
                        xv[u][b] = c < k ? *(const uint4 *)(x + xrow(b) * xstride + c) : make_uint4(0, 0, 0, 0);
                }
            }
#pragma unroll
            for (int u = 0; u < BATCH; u++) {
                int c = c0 + u * step;
                if (c >= k) break;
#pragma unroll
                for (int b = 0; b < NB; b++) {
                    float xf[8];
                    if constexpr (NB <= 2)
                        unpack8(xv[u][b], xf, (const TX *)0);
                    else
                        unpack8(*(const uint4 *)(x + xrow(b) * xstride + c), xf, (const TX *)0);
#pragma unroll
                    for (int i = 0; i < RW; i++)
#pragma unroll
                        for (int r = 0; r < NR; r++) {
                            float wf[8];
                            unpack8(wv[u][i][r], wf, (const TW *)0);
#pragma unroll
                            for (int j = 0; j < 8; j++) acc[i][r][b] = fmaf(wf[j], xf[j], acc[i][r][b]);
                        }
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < RW; i++)
#pragma unroll
        for (int r = 0; r < NR; r++)
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) acc[i][r][b] += __shfl_xor_sync(0xffffffffu, acc[i][r][b], o);
    if (KW > 1) {
        __shared__ float red[GEMV_WARPS][RW][NR][NB];
        if (lane == 0)
#pragma unroll
            for (int i = 0; i < RW; i++)
#pragma unroll
                for (int r = 0; r < NR; r++)
#pragma unroll
                    for (int b = 0; b < NB; b++) red[warp][i][r][b] = acc[i][r][b];
        __syncthreads();
        if (part == 0)
#pragma unroll
            for (int i = 0; i < RW; i++)
#pragma unroll
                for (int r = 0; r < NR; r++)
#pragma unroll
                    for (int b = 0; b < NB; b++) {
                        float t = 0.f;
#pragma unroll
                        for (int j = 0; j < KW; j++) t += red[warp + j][i][r][b];
                        acc[i][r][b] = t;
                    }
    }
    if (!storer) return;
#pragma unroll
    for (int i = 0; i < RW; i++) {
        if (!live[i]) continue;
        float v[NR];
#pragma unroll
        for (int r = 0; r < NR; r++) {
            v[r] = 0.f;
#pragma unroll
            for (int b = 0; b < NB; b++)
                if (b == lane) v[r] = acc[i][r][b];
        }
        const int64_t o = (int64_t)lane * a.ostride + row0 + i;
        if (EPI != GEMV_SILU_PAIRS && a.bias) v[0] += bias[i];
        if constexpr (EPI == GEMV_STORE) {
            st_f(a.out, a.odt, o, v[0]);
        } else if constexpr (EPI == GEMV_ACCUMULATE) { /* as matmul into a temporary, then the residual add */
            st_f(a.out, a.odt, o, gemv_round(a.odt, v[0]) + old[i]);
        } else { /* as the gate|up matmul, then silu_mul */
            float g = gemv_round(a.odt, v[0]), up = gemv_round(a.odt, v[1]);
            st_f(a.out, a.odt, o, g / (1.f + expf(-g)) * up);
        }
    }
}

template <typename TW, typename TX, int KW, bool NORM, int EPI>
static void gemv_launch_kw(struct cuda_ctx *c, const struct gemv_args &a)
{
    dim3 block(32 * GEMV_WARPS);
    size_t smem = NORM ? (size_t)a.n * a.k * sizeof(TX) : 0;
    /* Several outputs per warp where that still leaves a few blocks per SM: from 3 rows of x on, RW for
     * m >= 4096; at one row, 2 for m >= 512 (fewer, longer warps: Qwen2-0.5B's down product then fits
     * one wave; 0.853 -> 0.832 ms per batch-1 decode step, device run s3/18). LOOM_GEMV_RW1=0: one. */
    static const bool rw1 = [] {
        const char *e = getenv("LOOM_GEMV_RW1");
        return !(e && !strcmp(e, "0"));
    }();
    const bool multi = (a.n > 2 && a.m >= 4096) || (a.n == 1 && rw1 && a.m >= 512);
    constexpr int RW = EPI == GEMV_SILU_PAIRS ? 2 : 4, RW1 = 2;
#define GEMV_GO(NB, R)                                                                                   \
    do {                                                                                                 \
        const int rows_per_block = GEMV_WARPS / KW * (R);                                               \
        dim3 grid((a.m + rows_per_block - 1) / rows_per_block);                                          \
        cuda_launch(c, gemv_kernel<TW, TX, NB, KW, NORM, EPI, R>, grid, block, smem, a);                 \
    } while (0)
    if (a.n == 1 && multi) GEMV_GO(1, RW1);
    else if (a.n == 1) GEMV_GO(1, 1);
    else if (a.n == 2) GEMV_GO(2, 1);
    else if (a.n <= 4 && multi) GEMV_GO(4, RW);
    else if (a.n <= 4) GEMV_GO(4, 1);
    else if (multi) GEMV_GO(8, RW);
    else GEMV_GO(8, 1);
#undef GEMV_GO
}

/* Warps per row: about four 16-byte loads per lane in flight, at most 4 warps on one row (2 with the
 * norm prologue, whose k is at most GEMV_NORM_MAX_K). */
template <typename TW, typename TX, bool NORM, int EPI> static void gemv_launch(struct cuda_ctx *c, const struct gemv_args &a)
{
    if (a.k <= 1024)
        gemv_launch_kw<TW, TX, 1, NORM, EPI>(c, a);
    else if (NORM || a.k <= 2048)
        gemv_launch_kw<TW, TX, 2, NORM, EPI>(c, a);
    else
        gemv_launch_kw<TW, TX, 4, false, EPI>(c, a);
}

static bool aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

/* Whether the small-batch kernel takes x @ w^T. */
static bool gemv_fits(struct loom_tensor x, struct loom_tensor w)
{
    if (x.rows < 1 || x.rows > GEMV_MAX_N) return false;
    if (x.dtype == LOOM_DTYPE_F32 || w.dtype == LOOM_DTYPE_F32) return false;
    return x.cols % 8 == 0 && x.stride % 8 == 0 && w.stride % 8 == 0 && aligned16(x.data) && aligned16(w.data);
}

static struct gemv_args gemv_args_of(struct loom_tensor out, struct loom_tensor x, struct loom_tensor w, int m,
                                     const struct loom_tensor *bias)
{
    struct gemv_args a;
    memset(&a, 0, sizeof a); /* launches are recorded and compared as bytes, padding included */
    a.out = out.data;
    a.ostride = out.stride;
    a.odt = out.dtype;
    a.n = (int)x.rows;
    a.m = m;
    a.k = (int)x.cols;
    a.x = x.data;
    a.xstride = x.stride;
    a.w = w.data;
    a.wstride = w.stride;
    a.bias = bias ? bias->data : NULL;
    a.bdt = bias ? bias->dtype : 0;
    return a;
}

/* True (and launched) when the small-batch kernel applies. */
static bool try_gemv(struct cuda_ctx *c, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                     const struct loom_tensor *bias)
{
    if (!gemv_fits(x, w)) return false;
    struct gemv_args a = gemv_args_of(out, x, w, (int)w.rows, bias);
    a.trigger = c->pdl_trigger;
    if (w.dtype == LOOM_DTYPE_BF16 && x.dtype == LOOM_DTYPE_BF16)
        gemv_launch<__nv_bfloat16, __nv_bfloat16, false, GEMV_STORE>(c, a);
    else if (w.dtype == LOOM_DTYPE_F16 && x.dtype == LOOM_DTYPE_F16)
        gemv_launch<__half, __half, false, GEMV_STORE>(c, a);
    else if (w.dtype == LOOM_DTYPE_F16 && x.dtype == LOOM_DTYPE_BF16)
        gemv_launch<__half, __nv_bfloat16, false, GEMV_STORE>(c, a);
    else if (w.dtype == LOOM_DTYPE_BF16 && x.dtype == LOOM_DTYPE_F16)
        gemv_launch<__nv_bfloat16, __half, false, GEMV_STORE>(c, a);
    else
        return false;
    return true;
}

template <typename T> static void gemv_fused_launch(struct cuda_ctx *c, const struct gemv_args &a, bool norm, int epi)
{
    if (norm && epi == GEMV_SILU_PAIRS) gemv_launch<T, T, true, GEMV_SILU_PAIRS>(c, a);
    else if (norm) gemv_launch<T, T, true, GEMV_STORE>(c, a);
    else if (epi == GEMV_SILU_PAIRS) gemv_launch<T, T, false, GEMV_SILU_PAIRS>(c, a);
    else gemv_launch<T, T, false, GEMV_ACCUMULATE>(c, a);
}

/* matmul_fused: the small-batch kernel's fused forms; false (nothing done) outside them. */
bool cuda_matmul_fused(struct loom_backend *be, const struct loom_matmul_fused *f)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    const struct loom_tensor x = f->x, w = f->w, out = f->out;
    const int m = f->silu_pairs ? (int)(w.rows / 2) : (int)w.rows;
    LOOM_ASSERT(w.cols == x.cols && out.rows == x.rows && out.cols == m && (!f->silu_pairs || w.rows % 2 == 0));
    LOOM_ASSERT(out.data != x.data);
    const bool norm = f->norm != NULL;
    if (f->accumulate && (norm || f->silu_pairs)) return false; /* no such form */
    if (!norm && !f->accumulate && !f->silu_pairs) return false; /* plain: matmul */
    /* from 5 rows on the separate ops measured faster (device run s3/11, Qwen2-0.5B at 8 sequences:
     * 2.41 fused vs 2.14 ms per decode step) */
    if (x.rows > 4) return false;
    if (!gemv_fits(x, w) || w.dtype != x.dtype || out.dtype != x.dtype) return false;
    if (norm && (x.cols > GEMV_NORM_MAX_K || f->norm->rows * f->norm->cols != x.cols)) return false;
    if (f->silu_pairs && f->bias) return false;
    struct gemv_args a = gemv_args_of(out, x, w, m, f->bias);
    a.trigger = c->pdl_trigger;
    a.pair = f->silu_pairs ? m : 0;
    if (norm) {
        a.norm = f->norm->data;
        a.ndt = f->norm->dtype;
        a.eps = f->eps;
    }
    const int epi = f->silu_pairs ? GEMV_SILU_PAIRS : f->accumulate ? GEMV_ACCUMULATE : GEMV_STORE;
    if (x.dtype == LOOM_DTYPE_BF16) gemv_fused_launch<__nv_bfloat16>(c, a, norm, epi);
    else if (x.dtype == LOOM_DTYPE_F16) gemv_fused_launch<__half>(c, a, norm, epi);
    else return false;
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
