/*
 * cpu_matmul.c: out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m]), x and out F32, w F32/F16/BF16 at any
 * alignment (the mmapped file). Where the time of a forward pass goes, so these shapes of kernel:
 *
 *  - GEMV (n = 1, decode): bound by reading w once. Each thread streams a range of w rows, one
 *    row at a time: for bf16 one 64-byte load gives 32 weights, split into the even and odd
 *    halves by a shift and a mask (exact), and x is permuted to match.
 *  - small-n GEMM (AVX-512, fp32-exact, every n >= 2: batched decode and prefill): a block of 4 w
 *    rows is converted in registers straight from the weights (no packing) and dotted against
 *    register blocks of up to 5 tokens whose x was laid out once per call in the same lane order;
 *    the block stays in L1/L2 while every token group passes over it, and the passes prefetch
 *    the block after next into L2. At 2-4 rows it runs at the GEMV's memory speed, from ~8
 *    rows at ~90% of the FMA peak. Tokens come in blocks of SN_NB.
 *  - GEMM with bf16 dot products (the fast mode, asked for by --dtype bfloat16 on the CPU, bf16
 *    weights, n > 4): x is rounded to bf16 once and vdpbf16ps does 32 multiply-adds per
 *    instruction; n <= SNB_MAX the small-n structure (4 raw rows x 6 tokens), above it packed
 *    4 x KC_BF16 tiles.
 *  - blocked GEMM (AVX2 and portable C, every n): work items are (a chunk of w rows) x (a block of
 *    tokens); a tile of 4 w rows x KC columns is converted to f32 in an L1-resident buffer, then
 *    every token of the block is dotted against it (4 rows x 2 tokens of accumulators on AVX2).
 *
 * It does not pre-pack weights (they stay zero-copy) and does not allocate, except the scratch for
 * the copy of x (f32 in lane order, or bf16), which grows on first use of a larger shape.
 */
#include "backend/cpu/cpu_internal.h"

#include <stdlib.h>

#define KC 512     /* k block of the f32 GEMM (4 rows x 512 floats = 8 KiB of packed w) */
#define KC_BF16 1024
#define NB 256     /* tokens per GEMM block: their x block (512 KiB at most) stays in L2 */
#define GEMV_NT 4  /* the GEMV kernel handles up to this many tokens */
#define GEMV_MAX 1 /* largest n that takes the GEMV path (AVX-512); 2.. go to the small-n GEMM */
#define SNB_MAX 64 /* largest n of the small-n GEMM in the bf16 mode; the packed bf16 GEMM above */

struct mm_job {
    struct cpu_ctx *c;
    float *out;
    int64_t os;
    const float *x;
    int64_t xs;
    const char *w;
    int64_t ws_bytes; /* bytes between w rows */
    enum loom_dtype wt;
    const void *bias; /* NULL or [m] of bt */
    enum loom_dtype bt;
    int n, m, k;
    int mc, n_mchunks, n_tblocks; /* GEMM work split */
    const uint16_t *xb;           /* fast mode: x as bf16, [n, kp] */
    float *x_sn;                  /* small-n GEMM: x in the lane order of wt, [n, kp] */
    int64_t kp;
};

static inline int min_i(int a, int b)
{
    return a < b ? a : b;
}

static void add_bias(const struct mm_job *j, int t0, int t1, int j0, int j1)
{
    if (!j->bias) return;
    for (int t = t0; t < t1; t++) {
        float *o = j->out + (int64_t)t * j->os;
        for (int c = j0; c < j1; c++) o[c] += cpu_load_f(j->bias, j->bt, c);
    }
}

/* Asks for w rows [row, row + rows) x [k0, k0 + kc) to be brought toward L2 while the current tile
 * computes: the next tile's pack then finds its rows in cache instead of waiting on memory. */
static void prefetch_rows(const struct mm_job *j, int row, int rows, int k0, int kc)
{
#if defined(__GNUC__)
    const size_t es = loom_dtype_size(j->wt);
    for (int r = 0; r < rows; r++) {
        const char *p = j->w + (int64_t)(row + r) * j->ws_bytes + (int64_t)k0 * (int64_t)es;
        for (size_t b = 0; b < (size_t)kc * es; b += 64) __builtin_prefetch(p + b, 0, 2);
    }
#endif
}

/* ---------------------------------------------------------------------------------------------- */
/* portable: pack 4 rows to f32, dot each token against them */

static void pack_c(float *dst, int kcp, const struct mm_job *j, int row, int rows, int k0, int kc)
{
    for (int r = 0; r < 4; r++) {
        float *d = dst + (int64_t)r * kcp;
        if (r < rows) cpu_row_to_f32(d, j->w + (int64_t)(row + r) * j->ws_bytes + (int64_t)k0 * loom_dtype_size(j->wt),
                                     j->wt, kc);
        else memset(d, 0, (size_t)kc * 4);
        memset(d + kc, 0, (size_t)(kcp - kc) * 4);
    }
}

static void tile_c(const float *wb, int kcp, int kc, const float *x, int64_t xs, int nt, float *out, int64_t os,
                   int ncols, bool accumulate)
{
    for (int t = 0; t < nt; t++) {
        const float *xr = x + (int64_t)t * xs;
        for (int r = 0; r < ncols; r++) {
            const float *wr = wb + (int64_t)r * kcp;
            float s[8] = {0};
            int i = 0;
            for (; i + 8 <= kc; i += 8)
                for (int l = 0; l < 8; l++) s[l] += wr[i + l] * xr[i + l];
            float v = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
            for (; i < kc; i++) v += wr[i] * xr[i];
            float *o = out + (int64_t)t * os + r;
            *o = accumulate ? *o + v : v;
        }
    }
}

#if defined(__x86_64__)
#include "backend/cpu/cpu_avx512.h"

#define T512BF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,avx512bf16")))
#define T256 __attribute__((target("avx2,fma,f16c")))
#define INLINE inline __attribute__((always_inline))

/* ---------------------------------------------------------------------------------------------- */
/* AVX-512 GEMV */

/* 32 weights from p (row-relative element offset already applied), as two f32 vectors. bf16: even
 * and odd elements (the caller permutes x the same way); f16/f32: elements 0..15 and 16..31.
 * rem < 32: only the first rem elements (the others read as zero). */
T512 static INLINE void w32_512(const char *p, enum loom_dtype t, int rem, __m512 *a, __m512 *b)
{
    if (t == LOOM_DTYPE_BF16) {
        __m512i v = rem >= 32 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16((__mmask32)((1u << rem) - 1), p);
        *a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        *b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (t == LOOM_DTYPE_F16) {
        __m256i lo, hi;
        if (rem >= 32) {
            lo = _mm256_loadu_si256((const __m256i *)p);
            hi = _mm256_loadu_si256((const __m256i *)(p + 32));
        } else {
            __mmask16 ml = rem >= 16 ? 0xffff : (__mmask16)((1u << rem) - 1);
            __mmask16 mh = rem > 16 ? (__mmask16)((1u << (rem - 16)) - 1) : 0;
            lo = _mm256_maskz_loadu_epi16(ml, p);
            hi = _mm256_maskz_loadu_epi16(mh, p + 32);
        }
        *a = _mm512_cvtph_ps(lo);
        *b = _mm512_cvtph_ps(hi);
    } else {
        if (rem >= 32) {
            *a = _mm512_loadu_ps(p);
            *b = _mm512_loadu_ps(p + 64);
        } else {
            __mmask16 ml = rem >= 16 ? 0xffff : (__mmask16)((1u << rem) - 1);
            __mmask16 mh = rem > 16 ? (__mmask16)((1u << (rem - 16)) - 1) : 0;
            *a = _mm512_maskz_loadu_ps(ml, p);
            *b = _mm512_maskz_loadu_ps(mh, p + 64);
        }
    }
}

/* 32 activations in the lane order w32_512 gives for dtype t. */
T512 static INLINE void x32_512(const float *x, enum loom_dtype t, int rem, __m512 *a, __m512 *b)
{
    __m512 x0, x1;
    if (rem >= 32) {
        x0 = _mm512_loadu_ps(x);
        x1 = _mm512_loadu_ps(x + 16);
    } else {
        __mmask16 ml = rem >= 16 ? 0xffff : (__mmask16)((1u << rem) - 1);
        __mmask16 mh = rem > 16 ? (__mmask16)((1u << (rem - 16)) - 1) : 0;
        x0 = _mm512_maskz_loadu_ps(ml, x);
        x1 = _mm512_maskz_loadu_ps(mh, x + 16);
    }
    if (t == LOOM_DTYPE_BF16) {
        const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        *a = _mm512_permutex2var_ps(x0, ie, x1);
        *b = _mm512_permutex2var_ps(x0, io, x1);
    } else {
        *a = x0;
        *b = x1;
    }
}

/* the four sums of a..d, in that order */
T512 static INLINE __m128 hsum4_512(__m512 a, __m512 b, __m512 c, __m512 d)
{
    __m256 a2 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m256 b2 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    __m256 c2 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    __m256 d2 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a2, b2), _mm256_hadd_ps(c2, d2));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* x permuted once per call the way w32_512 splits bf16 weights (even elements, then odd, per 32),
 * so the row loop does no shuffles: [NT][kp], zero-padded to kp = k rounded up to 32. */
#define GEMV_XP_MAX 8192
T512 static void permute_x_512(const struct mm_job *j, int nt, float *xp, int kp)
{
    for (int t = 0; t < nt; t++)
        for (int kk = 0; kk < kp; kk += 32) {
            __m512 a, b;
            x32_512(j->x + (int64_t)t * j->xs + kk, LOOM_DTYPE_BF16, j->k - kk, &a, &b);
            _mm512_storeu_ps(xp + (int64_t)t * kp + kk, a);
            _mm512_storeu_ps(xp + (int64_t)t * kp + kk + 16, b);
        }
}

/* Row j0 against NT tokens: out[t, j0] = x[t] . w[j0]. One row at a time, so the weights stream
 * through memory in order: on the Zen 4 here, four interleaved row streams ran at a third of the
 * bandwidth of one. xp: x already permuted (bf16 weights, k <= GEMV_XP_MAX), else NULL. */
T512 static INLINE void gemv_row_512(const struct mm_job *j, int j0, const int NT, const enum loom_dtype wt,
                                     const float *xp, int kp)
{
    const size_t esz = loom_dtype_size(wt);
    const char *wr = j->w + (int64_t)j0 * j->ws_bytes;
    const float *xr[GEMV_NT];
    __m512 acc[GEMV_NT];
    for (int t = 0; t < NT; t++) {
        xr[t] = xp ? xp + (int64_t)t * kp : j->x + (int64_t)t * j->xs;
        acc[t] = _mm512_setzero_ps();
    }
    const enum loom_dtype xorder = xp ? LOOM_DTYPE_F32 : wt; /* permuted already: load as is */
    const int k = j->k;
    int kk = 0;
    for (; kk + 32 <= k; kk += 32) { /* full steps: no masks, no branches */
        __m512 wa, wb;
        w32_512(wr + kk * esz, wt, 32, &wa, &wb);
        for (int t = 0; t < NT; t++) {
            __m512 xa, xb;
            x32_512(xr[t] + kk, xorder, 32, &xa, &xb);
            acc[t] = _mm512_fmadd_ps(wa, xa, acc[t]);
            acc[t] = _mm512_fmadd_ps(wb, xb, acc[t]);
        }
    }
    if (kk < k) {
        __m512 wa, wb;
        w32_512(wr + kk * esz, wt, k - kk, &wa, &wb);
        for (int t = 0; t < NT; t++) {
            __m512 xa, xb;
            if (xp) x32_512(xr[t] + kk, LOOM_DTYPE_F32, 32, &xa, &xb); /* zero-padded */
            else x32_512(xr[t] + kk, wt, k - kk, &xa, &xb);
            acc[t] = _mm512_fmadd_ps(wa, xa, acc[t]);
            acc[t] = _mm512_fmadd_ps(wb, xb, acc[t]);
        }
    }
    /* the small-n GEMM's arithmetic exactly (one accumulator, a then b, hsum4_512's tree), so a row's
     * result does not depend on how many rows the call has: batch-invariant products */
    const __m512 z = _mm512_setzero_ps();
    for (int t = 0; t < NT; t++) j->out[(int64_t)t * j->os + j0] = _mm_cvtss_f32(hsum4_512(acc[t], z, z, z));
}

T512 static INLINE void gemv_range_512_t(const struct mm_job *j, int j0, int j1, const enum loom_dtype wt)
{
    _Alignas(64) float xp_buf[GEMV_NT * GEMV_XP_MAX];
    const float *xp = NULL;
    const int kp = (j->k + 31) & ~31;
    if (wt == LOOM_DTYPE_BF16 && kp <= GEMV_XP_MAX) {
        permute_x_512(j, j->n, xp_buf, kp);
        xp = xp_buf;
    }
    switch (j->n) {
#define CASE(NT)                                                                                         \
    case NT:                                                                                             \
        if (xp)                                                                                          \
            for (int r = j0; r < j1; r++) gemv_row_512(j, r, NT, wt, xp, kp);                            \
        else                                                                                             \
            for (int r = j0; r < j1; r++) gemv_row_512(j, r, NT, wt, NULL, 0);                           \
        break;
        CASE(1)
        CASE(2)
        CASE(3)
        CASE(4)
#undef CASE
    default: LOOM_DIE("gemv: n = %d", j->n);
    }
}

T512 static void gemv_range_512(void *arg, int64_t b, int64_t e, int ith)
{
    const struct mm_job *j = arg;
    (void)ith;
    switch (j->wt) {
    case LOOM_DTYPE_BF16: gemv_range_512_t(j, (int)b, (int)e, LOOM_DTYPE_BF16); break;
    case LOOM_DTYPE_F16: gemv_range_512_t(j, (int)b, (int)e, LOOM_DTYPE_F16); break;
    default: gemv_range_512_t(j, (int)b, (int)e, LOOM_DTYPE_F32); break;
    }
    add_bias(j, 0, j->n, (int)b, (int)e);
}

/* ---------------------------------------------------------------------------------------------- */
/* AVX-512 small-n GEMM (fp32-exact): no packing. A block of 4 w rows is read straight from the
 * weights (converted in registers, bf16 split into even/odd lanes as in the GEMV) against a register
 * block of up to SN_T tokens whose x was laid out once per call to match (x_sn: [n][kp], zero-padded).
 * The 4 rows stay in L1/L2 while every token group passes over them, so w streams from memory once.
 * The passes prefetch the block after next (one linear sweep of its 4 * k elements: rows are adjacent
 * in the weight file), each pass a share of the steps, so the reads stay spread over the whole block.
 * On the Zen 4 here, prefetching into L1 instead of L2 halved the speed at 8-16 rows, prefetching only
 * in the first pass cost 7-18% at 16 rows, and 4 row streams without any prefetch ran at ~60% of one. */

/* into L2 (T1): prefetches to L1 occupy the few L1 miss buffers that the loads need */
#define SNPF(p) _mm_prefetch((p), _MM_HINT_T1)
#define SN_NB 256 /* tokens per call of the small-n kernel (larger n: blocks of this many) */
#define SN_T 5 /* tokens per register block: 4 x 5 accumulators + 8 w + 2 x registers */

T512 static void sn_xprep_512(void *arg, int64_t b, int64_t e, int ith)
{
    const struct mm_job *j = arg;
    (void)ith;
    for (int64_t t = b; t < e; t++)
        for (int kk = 0; kk < j->kp; kk += 32) {
            __m512 a, c;
            x32_512(j->x + t * j->xs + kk, j->wt, j->k - kk, &a, &c);
            _mm512_store_ps(j->x_sn + t * j->kp + kk, a);
            _mm512_store_ps(j->x_sn + t * j->kp + kk + 16, c);
        }
}

T512 static INLINE void sn_block_512(const struct mm_job *j, int row, int rows, int t0, const int NT,
                                     const enum loom_dtype wt, int pg, int pG, int64_t pfo)
{
    const size_t esz = loom_dtype_size(wt);
    const int64_t ws = j->ws_bytes;
    const char *w0 = j->w + (int64_t)row * ws;
    const char *w1 = w0 + (rows > 1 ? 1 : 0) * ws, *w2 = w0 + (rows > 2 ? 2 : 0) * ws;
    const char *w3 = w0 + (rows > 3 ? 3 : 0) * ws;
    const int64_t kp = j->kp;
    const float *xr = j->x_sn + (int64_t)t0 * kp;
    __m512 acc[4][SN_T];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    const int k = j->k;
    int kk = 0, pc = 0; /* prefetch on the steps where pc == pg (pg < 0: none) */
    for (; kk + 32 <= k; kk += 32) {
        __m512 a0, b0, a1, b1, a2, b2, a3, b3;
        const int64_t o = (int64_t)kk * (int64_t)esz;
        w32_512(w0 + o, wt, 32, &a0, &b0);
        w32_512(w1 + o, wt, 32, &a1, &b1);
        w32_512(w2 + o, wt, 32, &a2, &b2);
        w32_512(w3 + o, wt, 32, &a3, &b3);
        if (pc == pg) { /* the block after next, one linear sweep: its 4 rows of k are 4 * k * esz bytes */
            const char *q = w0 + pfo + 4 * o;
            SNPF(q);
            SNPF(q + 64);
            SNPF(q + 128);
            SNPF(q + 192);
            if (esz > 2) {
                SNPF(q + 256);
                SNPF(q + 320);
                SNPF(q + 384);
                SNPF(q + 448);
            }
        }
        if (++pc == pG) pc = 0;
        for (int t = 0; t < NT; t++) {
            __m512 xa = _mm512_load_ps(xr + t * kp + kk), xb = _mm512_load_ps(xr + t * kp + kk + 16);
            acc[0][t] = _mm512_fmadd_ps(a0, xa, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(a1, xa, acc[1][t]);
            acc[2][t] = _mm512_fmadd_ps(a2, xa, acc[2][t]);
            acc[3][t] = _mm512_fmadd_ps(a3, xa, acc[3][t]);
            acc[0][t] = _mm512_fmadd_ps(b0, xb, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(b1, xb, acc[1][t]);
            acc[2][t] = _mm512_fmadd_ps(b2, xb, acc[2][t]);
            acc[3][t] = _mm512_fmadd_ps(b3, xb, acc[3][t]);
        }
    }
    if (kk < k) { /* w masked to zero past k; x_sn is zero-padded */
        __m512 a0, b0, a1, b1, a2, b2, a3, b3;
        const int64_t o = (int64_t)kk * (int64_t)esz;
        w32_512(w0 + o, wt, k - kk, &a0, &b0);
        w32_512(w1 + o, wt, k - kk, &a1, &b1);
        w32_512(w2 + o, wt, k - kk, &a2, &b2);
        w32_512(w3 + o, wt, k - kk, &a3, &b3);
        for (int t = 0; t < NT; t++) {
            __m512 xa = _mm512_load_ps(xr + t * kp + kk), xb = _mm512_load_ps(xr + t * kp + kk + 16);
            acc[0][t] = _mm512_fmadd_ps(a0, xa, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(a1, xa, acc[1][t]);
            acc[2][t] = _mm512_fmadd_ps(a2, xa, acc[2][t]);
            acc[3][t] = _mm512_fmadd_ps(a3, xa, acc[3][t]);
            acc[0][t] = _mm512_fmadd_ps(b0, xb, acc[0][t]);
            acc[1][t] = _mm512_fmadd_ps(b1, xb, acc[1][t]);
            acc[2][t] = _mm512_fmadd_ps(b2, xb, acc[2][t]);
            acc[3][t] = _mm512_fmadd_ps(b3, xb, acc[3][t]);
        }
    }
    const __mmask8 sm = (__mmask8)((1u << rows) - 1);
    for (int t = 0; t < NT; t++)
        _mm_mask_storeu_ps(j->out + (int64_t)(t0 + t) * j->os + row, sm,
                           hsum4_512(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
}

T512 static INLINE void sn_range_512_t(const struct mm_job *j, int j0, int j1, const enum loom_dtype wt)
{
    const int groups = (j->n + SN_T - 1) / SN_T;
    const int64_t pfo = 8 * j->ws_bytes; /* the row block after the next (1 block ahead was 2-10% slower) */
    for (int row = j0; row < j1; row += 4) {
        const int rows = min_i(4, j1 - row);
        const bool pf = row + 8 < j->m;
        int t0 = 0;
        for (int g = 0; g < groups; g++) {
            const int nt = (j->n - t0) / (groups - g); /* balanced groups of at most SN_T */
            const int p = pf ? g : -1; /* pass g prefetches every groups-th step */
            switch (nt) {
            case 1: sn_block_512(j, row, rows, t0, 1, wt, p, groups, pfo); break;
            case 2: sn_block_512(j, row, rows, t0, 2, wt, p, groups, pfo); break;
            case 3: sn_block_512(j, row, rows, t0, 3, wt, p, groups, pfo); break;
            case 4: sn_block_512(j, row, rows, t0, 4, wt, p, groups, pfo); break;
            case 5: sn_block_512(j, row, rows, t0, 5, wt, p, groups, pfo); break;
            default: LOOM_DIE("small-n gemm: group of %d", nt);
            }
            t0 += nt;
        }
    }
}

T512 static void sn_range_512(void *arg, int64_t b, int64_t e, int ith)
{
    const struct mm_job *j = arg;
    (void)ith;
    switch (j->wt) {
    case LOOM_DTYPE_BF16: sn_range_512_t(j, (int)b, (int)e, LOOM_DTYPE_BF16); break;
    case LOOM_DTYPE_F16: sn_range_512_t(j, (int)b, (int)e, LOOM_DTYPE_F16); break;
    default: sn_range_512_t(j, (int)b, (int)e, LOOM_DTYPE_F32); break;
    }
    add_bias(j, 0, j->n, (int)b, (int)e);
}

/* ---------------------------------------------------------------------------------------------- */
/* AVX-512 BF16 GEMM (fast mode): w bf16 as stored, x rounded to bf16 */

T512BF static void x_to_bf16_512(void *arg, int64_t b, int64_t e, int ith)
{
    const struct mm_job *j = arg;
    (void)ith;
    for (int64_t t = b; t < e; t++) {
        const float *x = j->x + t * j->xs;
        uint16_t *d = (uint16_t *)j->xb + t * j->kp;
        for (int i = 0; i < j->kp; i += 32) {
            int rem = j->k - i;
            __mmask16 ml = rem >= 16 ? 0xffff : rem > 0 ? (__mmask16)((1u << rem) - 1) : 0;
            __mmask16 mh = rem >= 32 ? 0xffff : rem > 16 ? (__mmask16)((1u << (rem - 16)) - 1) : 0;
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(mh, x + i + 16), _mm512_maskz_loadu_ps(ml, x + i));
            _mm512_storeu_si512(d + i, (__m512i)v);
        }
    }
}

/* 4 w rows of k range [k0, k0 + kc) copied row by row (sequential reads) into [4][kcp] bf16,
 * zero-padded; rows past `rows` are zero */
T512BF static void pack_bf16_512(uint16_t *dst, int kcp, const struct mm_job *j, int row, int rows, int k0, int kc)
{
    for (int r = 0; r < 4; r++) {
        uint16_t *d = dst + (int64_t)r * kcp;
        if (r >= rows) {
            memset(d, 0, (size_t)kcp * 2);
            continue;
        }
        const char *src = j->w + (int64_t)(row + r) * j->ws_bytes + (int64_t)k0 * 2;
        for (int i = 0; i < kcp; i += 32) {
            int rem = kc - i;
            __mmask32 m = rem >= 32 ? 0xffffffffu : rem > 0 ? (__mmask32)((1u << rem) - 1) : 0;
            _mm512_store_si512(d + i, _mm512_maskz_loadu_epi16(m, src + i * 2));
        }
    }
}

/* out[t0 .. t0 + NT, row .. row + rows] (+)= packed w tile . x rows (bf16, zero-padded to kcp) */
T512BF static INLINE void bf16_tile_t(const struct mm_job *j, const uint16_t *wb, int kcp, int row, int rows, int k0,
                                      int t0, const int NT, bool accumulate)
{
    __m512 acc[4][6];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    const uint16_t *xb = j->xb + (int64_t)t0 * j->kp + k0;
    for (int kk = 0; kk < kcp; kk += 32) {
        __m512bh w0 = (__m512bh)_mm512_load_si512(wb + kk), w1 = (__m512bh)_mm512_load_si512(wb + kcp + kk);
        __m512bh w2 = (__m512bh)_mm512_load_si512(wb + 2 * kcp + kk), w3 = (__m512bh)_mm512_load_si512(wb + 3 * kcp + kk);
        for (int t = 0; t < NT; t++) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + t * j->kp + kk);
            acc[0][t] = _mm512_dpbf16_ps(acc[0][t], w0, xv);
            acc[1][t] = _mm512_dpbf16_ps(acc[1][t], w1, xv);
            acc[2][t] = _mm512_dpbf16_ps(acc[2][t], w2, xv);
            acc[3][t] = _mm512_dpbf16_ps(acc[3][t], w3, xv);
        }
    }
    __mmask8 sm = (__mmask8)((1u << rows) - 1);
    for (int t = 0; t < NT; t++) {
        __m128 s = hsum4_512(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
        float *o = j->out + (int64_t)(t0 + t) * j->os + row;
        if (accumulate) s = _mm_add_ps(s, _mm_maskz_loadu_ps(sm, o));
        _mm_mask_storeu_ps(o, sm, s);
    }
}

T512BF static void gemm_bf16_item(void *arg, int64_t b, int64_t e, int ith)
{
    const struct mm_job *j = arg;
    (void)ith;
    _Alignas(64) uint16_t wb[4 * KC_BF16];
    for (int64_t item = b; item < e; item++) {
        int mci = (int)(item % j->n_mchunks), tbi = (int)(item / j->n_mchunks);
        int j0 = mci * j->mc, j1 = min_i(j->m, j0 + j->mc);
        int t0 = tbi * NB, t1 = min_i(j->n, t0 + NB);
        for (int k0 = 0; k0 < j->k; k0 += KC_BF16) {
            int kc = min_i(KC_BF16, j->k - k0), kcp = (kc + 31) & ~31;
            for (int row = j0; row < j1; row += 4) {
                int rows = min_i(4, j1 - row);
                pack_bf16_512(wb, kcp, j, row, rows, k0, kc);
                if (row + 4 < j1) prefetch_rows(j, row + 4, min_i(4, j1 - row - 4), k0, kc);
                int t = t0;
                for (; t + 6 <= t1; t += 6) bf16_tile_t(j, wb, kcp, row, rows, k0, t, 6, k0 > 0);
                switch (t1 - t) {
                case 0: break;
                case 1: bf16_tile_t(j, wb, kcp, row, rows, k0, t, 1, k0 > 0); break;
                case 2: bf16_tile_t(j, wb, kcp, row, rows, k0, t, 2, k0 > 0); break;
                case 3: bf16_tile_t(j, wb, kcp, row, rows, k0, t, 3, k0 > 0); break;
                case 4: bf16_tile_t(j, wb, kcp, row, rows, k0, t, 4, k0 > 0); break;
                case 5: bf16_tile_t(j, wb, kcp, row, rows, k0, t, 5, k0 > 0); break;
                }
            }
        }
        add_bias(j, t0, t1, j0, j1);
    }
}

/* The same for the bf16 fast mode: raw bf16 w rows against x rounded to bf16, vdpbf16ps (32 products per
 * instruction); 4 rows x up to 6 tokens = 24 accumulators. */
#define SNB_T 6

T512BF static INLINE void snb_block_512(const struct mm_job *j, int row, int rows, int t0, const int NT, int pg,
                                        int pG, int64_t pfo)
{
    const int64_t ws = j->ws_bytes;
    const char *w0 = j->w + (int64_t)row * ws;
    const char *w1 = w0 + (rows > 1 ? 1 : 0) * ws, *w2 = w0 + (rows > 2 ? 2 : 0) * ws;
    const char *w3 = w0 + (rows > 3 ? 3 : 0) * ws;
    const int64_t kp = j->kp;
    const uint16_t *xr = j->xb + (int64_t)t0 * kp;
    __m512 acc[4][SNB_T];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    const int k = j->k;
    int pc = 0;
    for (int kk = 0; kk < k; kk += 32) {
        __m512bh a0, a1, a2, a3;
        const int64_t o = (int64_t)kk * 2;
        if (kk + 32 <= k) {
            a0 = (__m512bh)_mm512_loadu_si512(w0 + o);
            a1 = (__m512bh)_mm512_loadu_si512(w1 + o);
            a2 = (__m512bh)_mm512_loadu_si512(w2 + o);
            a3 = (__m512bh)_mm512_loadu_si512(w3 + o);
        } else {
            const __mmask32 m = (__mmask32)((1u << (k - kk)) - 1);
            a0 = (__m512bh)_mm512_maskz_loadu_epi16(m, w0 + o);
            a1 = (__m512bh)_mm512_maskz_loadu_epi16(m, w1 + o);
            a2 = (__m512bh)_mm512_maskz_loadu_epi16(m, w2 + o);
            a3 = (__m512bh)_mm512_maskz_loadu_epi16(m, w3 + o);
        }
        if (pc == pg) {
            const char *q = w0 + pfo + 4 * o;
            SNPF(q);
            SNPF(q + 64);
            SNPF(q + 128);
            SNPF(q + 192);
        }
        if (++pc == pG) pc = 0;
        for (int t = 0; t < NT; t++) {
            __m512bh xv = (__m512bh)_mm512_load_si512(xr + t * kp + kk);
            acc[0][t] = _mm512_dpbf16_ps(acc[0][t], a0, xv);
            acc[1][t] = _mm512_dpbf16_ps(acc[1][t], a1, xv);
            acc[2][t] = _mm512_dpbf16_ps(acc[2][t], a2, xv);
            acc[3][t] = _mm512_dpbf16_ps(acc[3][t], a3, xv);
        }
    }
    const __mmask8 sm = (__mmask8)((1u << rows) - 1);
    for (int t = 0; t < NT; t++)
        _mm_mask_storeu_ps(j->out + (int64_t)(t0 + t) * j->os + row, sm,
                           hsum4_512(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
}

T512BF static void snb_range_512(void *arg, int64_t b, int64_t e, int ith)
{
    const struct mm_job *j = arg;
    (void)ith;
    const int j0 = (int)b, j1 = (int)e;
    const int groups = (j->n + SNB_T - 1) / SNB_T;
    const int64_t pfo = 8 * j->ws_bytes; /* the row block after the next (1 block ahead was 2-10% slower) */
    for (int row = j0; row < j1; row += 4) {
        const int rows = min_i(4, j1 - row);
        const bool pf = row + 8 < j->m;
        int t0 = 0;
        for (int g = 0; g < groups; g++) {
            const int nt = (j->n - t0) / (groups - g);
            const int p = pf ? g : -1; /* pass g prefetches every groups-th step */
            switch (nt) {
            case 1: snb_block_512(j, row, rows, t0, 1, p, groups, pfo); break;
            case 2: snb_block_512(j, row, rows, t0, 2, p, groups, pfo); break;
            case 3: snb_block_512(j, row, rows, t0, 3, p, groups, pfo); break;
            case 4: snb_block_512(j, row, rows, t0, 4, p, groups, pfo); break;
            case 5: snb_block_512(j, row, rows, t0, 5, p, groups, pfo); break;
            case 6: snb_block_512(j, row, rows, t0, 6, p, groups, pfo); break;
            default: LOOM_DIE("small-n bf16 gemm: group of %d", nt);
            }
            t0 += nt;
        }
    }
    add_bias(j, 0, j->n, j0, j1);
}

/* ---------------------------------------------------------------------------------------------- */
/* AVX2 GEMM (used for every n) */

T256 static void pack_256(float *dst, int kcp, const struct mm_job *j, int row, int rows, int k0, int kc)
{
    for (int r = 0; r < 4; r++) {
        float *d = dst + (int64_t)r * kcp;
        if (r >= rows) {
            memset(d, 0, (size_t)kcp * 4);
            continue;
        }
        const char *src = j->w + (int64_t)(row + r) * j->ws_bytes + (int64_t)k0 * loom_dtype_size(j->wt);
        int i = 0;
        if (j->wt == LOOM_DTYPE_BF16) {
            for (; i + 8 <= kc; i += 8)
                _mm256_store_ps(d + i, _mm256_castsi256_ps(_mm256_slli_epi32(
                                           _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + i * 2))), 16)));
        } else if (j->wt == LOOM_DTYPE_F16) {
            for (; i + 8 <= kc; i += 8)
                _mm256_store_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i * 2))));
        }
        cpu_row_to_f32(d + i, src + (int64_t)i * loom_dtype_size(j->wt), j->wt, kc - i);
        memset(d + kc, 0, (size_t)(kcp - kc) * 4);
    }
}

T256 static INLINE __m128 hsum4_256(__m256 a, __m256 b, __m256 c, __m256 d)
{
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

T256 static INLINE void gemm_tile_256_t(const float *wb, int kcp, int kc, const float *x, int64_t xs, const int NT,
                                        float *out, int64_t os, int ncols, bool accumulate)
{
    __m256 acc[4][2];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    int kk = 0;
    for (; kk + 8 <= kc; kk += 8) {
        __m256 w0 = _mm256_load_ps(wb + kk), w1 = _mm256_load_ps(wb + kcp + kk);
        __m256 w2 = _mm256_load_ps(wb + 2 * kcp + kk), w3 = _mm256_load_ps(wb + 3 * kcp + kk);
        for (int t = 0; t < NT; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * xs + kk);
            acc[0][t] = _mm256_fmadd_ps(w0, xv, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(w1, xv, acc[1][t]);
            acc[2][t] = _mm256_fmadd_ps(w2, xv, acc[2][t]);
            acc[3][t] = _mm256_fmadd_ps(w3, xv, acc[3][t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        float s[4];
        _mm_storeu_ps(s, hsum4_256(acc[0][t], acc[1][t], acc[2][t], acc[3][t]));
        const float *xr = x + t * xs;
        for (int i = kk; i < kc; i++)
            for (int r = 0; r < 4; r++) s[r] += wb[r * kcp + i] * xr[i];
        float *o = out + t * os;
        for (int r = 0; r < ncols; r++) o[r] = accumulate ? o[r] + s[r] : s[r];
    }
}

T256 static void tile_256(const float *wb, int kcp, int kc, const float *x, int64_t xs, int nt, float *out,
                          int64_t os, int ncols, bool accumulate)
{
    int t = 0;
    for (; t + 2 <= nt; t += 2) gemm_tile_256_t(wb, kcp, kc, x + t * xs, xs, 2, out + t * os, os, ncols, accumulate);
    if (t < nt) gemm_tile_256_t(wb, kcp, kc, x + t * xs, xs, 1, out + t * os, os, ncols, accumulate);
}
#endif /* __x86_64__ */

/* ---------------------------------------------------------------------------------------------- */
/* the blocked GEMM driver, shared by the f32 paths of every isa */

typedef void (*pack_fn)(float *dst, int kcp, const struct mm_job *j, int row, int rows, int k0, int kc);
typedef void (*tile_fn)(const float *wb, int kcp, int kc, const float *x, int64_t xs, int nt, float *out,
                        int64_t os, int ncols, bool accumulate);

static void gemm_item(const struct mm_job *j, int64_t item, pack_fn pack, tile_fn tile)
{
    _Alignas(64) float wb[4 * KC];
    int mci = (int)(item % j->n_mchunks), tbi = (int)(item / j->n_mchunks);
    int j0 = mci * j->mc, j1 = min_i(j->m, j0 + j->mc);
    int t0 = tbi * NB, t1 = min_i(j->n, t0 + NB);
    for (int k0 = 0; k0 < j->k; k0 += KC) {
        int kc = min_i(KC, j->k - k0), kcp = (kc + 15) & ~15;
        for (int row = j0; row < j1; row += 4) {
            int rows = min_i(4, j1 - row);
            pack(wb, kcp, j, row, rows, k0, kc);
            if (row + 4 < j1) prefetch_rows(j, row + 4, min_i(4, j1 - row - 4), k0, kc);
            tile(wb, kcp, kc, j->x + (int64_t)t0 * j->xs + k0, j->xs, t1 - t0, j->out + (int64_t)t0 * j->os + row, j->os,
                 rows, k0 > 0);
        }
    }
    add_bias(j, t0, t1, j0, j1);
}

static void gemm_items_c(void *arg, int64_t b, int64_t e, int ith)
{
    (void)ith;
    for (int64_t i = b; i < e; i++) gemm_item(arg, i, pack_c, tile_c);
}

#if defined(__x86_64__)
static void gemm_items_256(void *arg, int64_t b, int64_t e, int ith)
{
    (void)ith;
    for (int64_t i = b; i < e; i++) gemm_item(arg, i, pack_256, tile_256);
}
#endif

/* ---------------------------------------------------------------------------------------------- */

/* parallel_for grain over w rows: about `per_thread` chunks per thread, whole cache lines of out each */
static int64_t row_grain(int m, int nth, int per_thread)
{
    int64_t g = ((int64_t)m + per_thread * nth - 1) / (per_thread * nth);
    g = (g + 15) & ~15;
    return g < 16 ? 16 : g;
}

static void *scratch(struct cpu_ctx *c, size_t bytes)
{
    if (bytes > c->scratch_bytes) {
        free(c->scratch);
        c->scratch = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        if (!c->scratch) LOOM_DIE("out of host memory allocating %zu bytes of matmul scratch", bytes);
        c->scratch_bytes = bytes;
    }
    return c->scratch;
}

void cpu_matmul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                const struct loom_tensor *bias)
{
    struct cpu_ctx *c = cpu_ctx(be);
    LOOM_ASSERT(out.dtype == LOOM_DTYPE_F32 && x.dtype == LOOM_DTYPE_F32 && cpu_is_float(w.dtype));
    LOOM_ASSERT(x.cols == w.cols && out.rows == x.rows && out.cols == w.rows);
    LOOM_ASSERT(x.rows < INT32_MAX && w.rows < INT32_MAX && w.cols < INT32_MAX);
    struct mm_job j = {
        .c = c, .out = out.data, .os = out.stride, .x = x.data, .xs = x.stride, .w = w.data,
        .ws_bytes = w.stride * (int64_t)loom_dtype_size(w.dtype), .wt = w.dtype,
        .n = (int)x.rows, .m = (int)w.rows, .k = (int)w.cols,
    };
    if (bias && bias->data) {
        LOOM_ASSERT(cpu_is_float(bias->dtype) && bias->rows * bias->cols == w.rows);
        j.bias = bias->data;
        j.bt = bias->dtype;
    }
    if (j.n == 0 || j.m == 0) return;
    int nth = loom_threadpool_size(c->tp);
#if defined(__x86_64__)
    if (c->isa == CPU_ISA_AVX512) {
        /* bf16 dot products only where n is large enough to be compute-bound: below, exact costs nothing */
        const bool bf16_dot = c->bf16_matmul && c->has_bf16_dot && w.dtype == LOOM_DTYPE_BF16 && j.n > GEMV_NT;
        if (j.n <= GEMV_MAX) {
            loom_parallel_for(c->tp, j.m, row_grain(j.m, nth, 8), gemv_range_512, &j);
            return;
        }
        if (!bf16_dot) {
            /* token blocks of SN_NB (prefill): each block's x stays in L2/L3 while w streams once per block */
            j.kp = (j.k + 31) & ~31;
            const int n = j.n;
            for (int t0 = 0; t0 < n; t0 += SN_NB) {
                struct mm_job b = j;
                b.n = min_i(SN_NB, n - t0);
                b.x = j.x + (int64_t)t0 * j.xs;
                b.out = j.out + (int64_t)t0 * j.os;
                b.x_sn = scratch(c, (size_t)b.n * (size_t)b.kp * 4);
                loom_parallel_for(c->tp, b.n, 0, sn_xprep_512, &b);
                loom_parallel_for(c->tp, b.m, row_grain(b.m, nth, 16), sn_range_512, &b);
            }
            return;
        }
        if (bf16_dot) {
            j.kp = (j.k + 31) & ~31;
            j.xb = scratch(c, (size_t)j.n * (size_t)j.kp * 2);
            loom_parallel_for(c->tp, j.n, 0, x_to_bf16_512, &j);
            if (j.n <= SNB_MAX) {
                loom_parallel_for(c->tp, j.m, row_grain(j.m, nth, 16), snb_range_512, &j);
                return;
            }
        }
    }
#endif
    /* GEMM work split: (chunks of w rows) x (blocks of NB tokens), about 8 items per thread */
    j.n_tblocks = (j.n + NB - 1) / NB;
    int want = 8 * nth;
    int mchunks = (want + j.n_tblocks - 1) / j.n_tblocks;
    int mc = (j.m + mchunks - 1) / mchunks;
    mc = (mc + 15) & ~15; /* whole cache lines of out per chunk: no false sharing */
    if (mc < 16) mc = 16;
    if (mc > 512) mc = 512;
    j.mc = mc;
    j.n_mchunks = (j.m + mc - 1) / mc;
    int64_t items = (int64_t)j.n_mchunks * j.n_tblocks;
#if defined(__x86_64__)
    if (j.xb) {
        loom_parallel_for(c->tp, items, 1, gemm_bf16_item, &j);
        return;
    }
    if (c->isa == CPU_ISA_AVX2) {
        loom_parallel_for(c->tp, items, 1, gemm_items_256, &j);
        return;
    }
#endif
    loom_parallel_for(c->tp, items, 1, gemm_items_c, &j);
}
