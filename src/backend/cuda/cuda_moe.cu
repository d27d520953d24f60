/*
 * cuda_moe.cu: moe_experts, the expert MLPs of a MoE layer on the device, with no host round trip
 * (so a decode step's MoE layers stay inside its CUDA graph). Four launches per layer, whatever the
 * number of experts:
 *   1. group: one block turns the top-k ids into per-expert row counts, their prefix sums, the
 *      permutation (token rows grouped by expert, in token order within an expert) and its inverse,
 *      and the list of row tiles (expert, first row) the products below walk. Deterministic: counts
 *      per warp segment with __match_any_sync, no atomics, the same order on every run.
 *   2. gate|up: one grouped product over the tiles (expert, row tile, column tile): rows of h gathered
 *      on load, both gate_e and up_e against the same rows, silu(g) * u written once (act dtype).
 *   3. down: the same grouped product of those rows with down_e (act dtype).
 *   4. combine: x[t] += sum over j < k, in order, of weight[t, j] * y[row of (t, j)]: fp32 sums, one
 *      rounding into x, no atomics.
 * The grids are sized from n, k and E alone (an upper bound on the tile count), so the launches of a
 * step are the same whatever the routing; tiles past the real count return at once.
 * Products: when the activations and the weights are one 16-bit dtype, tensor cores (wmma 16x16x16,
 * fp32 accumulate), or for decode batches (n <= 8 rows, so at most 8 rows an expert) a GEMV kernel that
 * reads each routed expert's weights once; otherwise (F32, or mixed dtypes) a plain fp32 FMA kernel
 * that converts on load.
 * Large steps (prefill: n * k >= moe_blas_rows(), 512 routed rows unless LOOM_CUDA_MOE_BLAS_ROWS says
 * otherwise; 0 turns it off) whose activations and weights are one dtype take cuBLAS instead, at the
 * price of one host sync a layer: after the grouping the per-expert offsets are downloaded, the rows
 * gathered into expert order (into y), and each expert with rows gets its gate|up product (fp32 out,
 * into a scratch of at most MOE_BLAS_CHUNK rows; one GEMM when up_e follows gate_e in memory),
 * silu(g) * u (act dtype) and its down product (into its own rows of y, whose gathered inputs it has
 * consumed), chunk by chunk; then the same combine. Deterministic: cuBLAS picks the same algorithm for
 * the same shapes, and the combine's order is fixed. Decode-sized steps never sync (graphs stay whole).
 * Not done here: routing itself (moe_route), Hopper's wgmma / TMA (the tensor-core kernel is wmma with
 * two cp.async stages), a persistent schedule.
 */
#include "backend/cuda/cuda_common.h"

#include <mma.h>

#define MOE_BM 64     /* rows of a tile (and of the tile list) */
#define MOE_BN 64     /* output columns of a tile */
#define MOE_TC_BK 32  /* k slice of the tensor-core kernel */
#define MOE_FMA_BK 16 /* k slice of the FMA kernel */
#define MOE_GROUP_WARPS 8
/* default n * k from which the cuBLAS path is taken. H100, Mixtral-8x7B layer shapes (bf16, 128-token
 * prompts, one layer), prefill ms cuBLAS vs grouped kernels: 256 rows 2.4 vs 2.2, 512: 2.5 vs 2.7, 2048:
 * 3.1 vs 7.5, 8192: 8.6-9.5 vs 26.2 */
#define MOE_BLAS_ROWS 512
#define MOE_BLAS_CHUNK 512  /* rows of one gate|up product of the cuBLAS path (its fp32 scratch) */

#include <stdlib.h>

/* n * k from which large steps take cuBLAS (LOOM_CUDA_MOE_BLAS_ROWS; 0: never). Read at every call: the
 * workspace size and the call agree as long as the variable does not change in between. */
static int64_t moe_blas_rows(void)
{
    const char *e = getenv("LOOM_CUDA_MOE_BLAS_ROWS");
    if (!e || !*e) return MOE_BLAS_ROWS;
    long long v = atoll(e);
    return v <= 0 ? INT64_MAX : (int64_t)v;
}

static size_t al256(size_t b)
{
    return (b + 255) & ~(size_t)255;
}

static bool al16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

static int max_tiles(int64_t nk, int n_exp)
{
    return (int)((nk + MOE_BM - 1) / MOE_BM + (nk < n_exp ? nk : n_exp));
}

/* The scratch, carved for n rows (the same n gives the same pointers: graph replays stay valid). */
struct moe_ws {
    int32_t *offs;      /* [E + 1] first sorted row of each expert; offs[E] = n * k */
    int32_t *n_tiles;   /* [1] */
    int32_t *tile_e;    /* [max_tiles] */
    int32_t *tile_r0;   /* [max_tiles] first row of the tile within its expert */
    int32_t *perm_tok;  /* [n * k] sorted row -> token */
    int32_t *inv;       /* [n * k] (token, j) -> sorted row */
    void *act;          /* [n * k, MI] silu(gate) * up, act dtype */
    void *y;            /* [n * k, H] expert outputs, act dtype (cuBLAS path: first the gathered rows of h) */
    float *gu;          /* cuBLAS path only: [min(n, MOE_BLAS_CHUNK), 2 * MI] gate | up of one chunk, fp32 */
};

static size_t moe_carve(struct moe_ws *w, void *base, int64_t n, int k, int E, int H, int MI, size_t es)
{
    int64_t nk = n * k;
    int mt = max_tiles(nk, E);
    char *p = (char *)base, *p0 = p;
    w->offs = (int32_t *)p, p += al256((size_t)(E + 1) * 4);
    w->n_tiles = (int32_t *)p, p += al256(4);
    w->tile_e = (int32_t *)p, p += al256((size_t)mt * 4);
    w->tile_r0 = (int32_t *)p, p += al256((size_t)mt * 4);
    w->perm_tok = (int32_t *)p, p += al256((size_t)nk * 4);
    w->inv = (int32_t *)p, p += al256((size_t)nk * 4);
    w->act = p, p += al256((size_t)nk * MI * es);
    w->y = p, p += al256((size_t)nk * H * es);
    w->gu = NULL;
    if (nk >= moe_blas_rows()) { /* last: a smaller n keeps the pointers above and needs less of it */
        int64_t cr = n < MOE_BLAS_CHUNK ? n : MOE_BLAS_CHUNK;
        w->gu = (float *)p, p += al256((size_t)cr * 2 * MI * 4);
    }
    return (size_t)(p - p0);
}

size_t cuda_moe_workspace_bytes(struct loom_backend *be, int max_rows, int k, int n_experts, int hidden, int inter)
{
    struct moe_ws w;
    return moe_carve(&w, NULL, max_rows, k, n_experts, hidden, inter, loom_dtype_size(be->act_dtype));
}

/* ---- 1. grouping ---- */

__global__ void __launch_bounds__(32 * MOE_GROUP_WARPS)
    moe_group_kernel(const int32_t *ids, int nk, int k, int E, int32_t *offs, int32_t *n_tiles, int32_t *tile_e,
                     int32_t *tile_r0, int32_t *perm_tok, int32_t *inv)
{
    PDL_PROLOGUE();
    extern __shared__ int sm[];
    int *cnt = sm;                              /* [MOE_GROUP_WARPS][E]: per segment, then its start */
    int *tot = cnt + MOE_GROUP_WARPS * E;       /* [E] rows per expert */
    int *base = tot + E;                        /* [E] first sorted row */
    int *tbase = base + E;                      /* [E] first tile */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    for (int i = threadIdx.x; i < MOE_GROUP_WARPS * E; i += blockDim.x) cnt[i] = 0;
    __syncthreads();
    /* warp w owns entries [seg * w, seg * (w + 1)): in order, so sorted rows keep token order */
    const int seg = ((nk + MOE_GROUP_WARPS - 1) / MOE_GROUP_WARPS + 31) & ~31;
    const int beg = seg * w, end = min(nk, seg * (w + 1));
    const unsigned lt = (1u << lane) - 1u;
    for (int i0 = beg; i0 < end; i0 += 32) {
        int i = i0 + lane;
        int e = i < end ? ids[i] : -1;
        if (i < end && (e < 0 || e >= E)) __trap(); /* moe_route never writes such an id */
        unsigned peers = __match_any_sync(0xffffffffu, e);
        if (e >= 0 && (peers & lt) == 0) cnt[w * E + e] += __popc(peers);
        __syncwarp();
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int run = 0;
        for (int s = 0; s < MOE_GROUP_WARPS; s++) {
            int c = cnt[s * E + e];
            cnt[s * E + e] = run;
            run += c;
        }
        tot[e] = run;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int off = 0, tiles = 0;
        for (int e = 0; e < E; e++) {
            base[e] = off;
            tbase[e] = tiles;
            offs[e] = off;
            off += tot[e];
            tiles += (tot[e] + MOE_BM - 1) / MOE_BM;
        }
        offs[E] = off;
        *n_tiles = tiles;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        int nt = (tot[e] + MOE_BM - 1) / MOE_BM;
        for (int t = 0; t < nt; t++) {
            tile_e[tbase[e] + t] = e;
            tile_r0[tbase[e] + t] = t * MOE_BM;
        }
    }
    for (int i0 = beg; i0 < end; i0 += 32) {
        int i = i0 + lane;
        int e = i < end ? ids[i] : -1;
        unsigned peers = __match_any_sync(0xffffffffu, e);
        if (e >= 0) {
            int pos = base[e] + cnt[w * E + e] + __popc(peers & lt);
            perm_tok[pos] = i / k;
            inv[i] = pos;
        }
        __syncwarp();
        if (e >= 0 && (peers & lt) == 0) cnt[w * E + e] += __popc(peers);
        __syncwarp();
    }
}

/* The tile a block works on: its expert, its rows [row0, row0 + nrows) of the sorted list. False past
 * the real tile count. */
__device__ __forceinline__ bool moe_tile(const int32_t *offs, const int32_t *n_tiles, const int32_t *tile_e,
                                         const int32_t *tile_r0, int *e, int *row0, int *nrows)
{
    int t = blockIdx.y;
    if (t >= *n_tiles) return false;
    *e = tile_e[t];
    int r0 = tile_r0[t];
    int cnt = offs[*e + 1] - offs[*e];
    *row0 = offs[*e] + r0;
    *nrows = min(MOE_BM, cnt - r0);
    return true;
}

__device__ __forceinline__ float silu_f(float g)
{
    return g / (1.f + expf(-g));
}

/* 16 bytes global -> shared without registers (sm_80+); pred false: zeros. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool pred)
{
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}
__device__ __forceinline__ void cp_async_wait1()
{
    asm volatile("cp.async.wait_group 1;\n" ::);
}

/* ---- 2./3. grouped products, tensor cores: T = the activations' and the weights' dtype ----
 * 128 threads in 2 x 2 warps, each warp 32 x 32 outputs (2 x 2 fragments); GATED: the gate and up
 * products of the same rows side by side. a row r of the tile is a[a_rows ? a_rows[row0 + r] : row0 + r].
 * vec (k and strides multiples of 8, 16-byte aligned): the k slices are loaded with cp.async into two
 * stages, the next slice in flight while this one is multiplied; otherwise element by element. */
template <typename T, bool GATED>
__global__ void __launch_bounds__(128)
    moe_mm_tc_kernel(T *out, int64_t ostride, const T *a, int64_t astride, const int32_t *a_rows,
                     void *const *table, int w0, int w1, int64_t wstride, const int32_t *offs, const int32_t *n_tiles,
                     const int32_t *tile_e, const int32_t *tile_r0, int m, int kdim, int vec)
{
    using namespace nvcuda;
    PDL_PROLOGUE();
    constexpr int G = GATED ? 2 : 1, LDS = MOE_TC_BK + 8, LDC = MOE_BN + 4;
    constexpr int STAGE = (MOE_BM + G * MOE_BN) * LDS; /* elements of one stage: A then B */
    constexpr int LOAD_BYTES = 2 * STAGE * (int)sizeof(T), C_BYTES = G * MOE_BM * LDC * 4;
    constexpr int CHUNKS = (MOE_BM + G * MOE_BN) * (MOE_TC_BK / 8); /* 16-byte pieces of a stage */
    __shared__ __align__(128) unsigned char smem[LOAD_BYTES > C_BYTES ? LOAD_BYTES : C_BYTES];
    __shared__ int rows_s[MOE_BM];
    T *S = (T *)smem;                       /* [2][STAGE]: As [BM][LDS], then Bs [G][BN][LDS] */
    float *Cs = (float *)smem;              /* [G][BM][LDC], after the k loop */
    int e, row0, nrows;
    if (!moe_tile(offs, n_tiles, tile_e, tile_r0, &e, &row0, &nrows)) return;
    const int c0 = blockIdx.x * MOE_BN;
    const T *W[2];
    W[0] = (const T *)table[w0 + e];
    W[1] = (const T *)table[w1 + e];
    for (int r = threadIdx.x; r < MOE_BM; r += blockDim.x)
        rows_s[r] = r < nrows ? (a_rows ? a_rows[row0 + r] : row0 + r) : -1;
    __syncthreads();
    const int warp = threadIdx.x >> 5, wr = (warp >> 1) * 32, wc = (warp & 1) * 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[G][2][2];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[g][i][j], 0.f);
    const T zero = from_f<T>(0.f);
    /* the source row of stage row rr (NULL: zeros), and where it goes */
    auto src_row = [&](int rr) -> const T * {
        if (rr < MOE_BM) {
            int ar = rows_s[rr];
            return ar >= 0 ? a + (int64_t)ar * astride : (const T *)0;
        }
        int b = rr - MOE_BM, g = b / MOE_BN, col = b % MOE_BN;
        return c0 + col < m ? W[g] + (int64_t)(c0 + col) * wstride : (const T *)0;
    };
    auto load_stage = [&](int st, int k0) {
        T *base = S + st * STAGE;
        for (int q = threadIdx.x; q < CHUNKS; q += blockDim.x) {
            int rr = q / (MOE_TC_BK / 8), kc = (q % (MOE_TC_BK / 8)) * 8, kk = k0 + kc;
            const T *src = src_row(rr);
            T *dst = base + rr * LDS + kc;
            if (vec) {
                bool ok = src && kk < kdim;
                cp_async16(dst, ok ? (const void *)(src + kk) : (const void *)a, ok);
            } else {
#pragma unroll
                for (int u = 0; u < 8; u++) dst[u] = (src && kk + u < kdim) ? src[kk + u] : zero;
            }
        }
    };
    const int n_k = (kdim + MOE_TC_BK - 1) / MOE_TC_BK;
    load_stage(0, 0);
    cp_async_commit();
    for (int kt = 0; kt < n_k; kt++) {
        if (kt + 1 < n_k) load_stage((kt + 1) & 1, (kt + 1) * MOE_TC_BK);
        cp_async_commit(); /* possibly empty: the wait below always leaves exactly the newest group */
        cp_async_wait1();
        __syncthreads();
        const T *As = S + (kt & 1) * STAGE, *Bs = As + MOE_BM * LDS;
#pragma unroll
        for (int ks = 0; ks < MOE_TC_BK; ks += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
#pragma unroll
            for (int i = 0; i < 2; i++) wmma::load_matrix_sync(fa[i], As + (wr + 16 * i) * LDS + ks, LDS);
#pragma unroll
            for (int g = 0; g < G; g++) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
                for (int j = 0; j < 2; j++)
                    wmma::load_matrix_sync(fb[j], Bs + (g * MOE_BN + wc + 16 * j) * LDS + ks, LDS);
#pragma unroll
                for (int i = 0; i < 2; i++)
#pragma unroll
                    for (int j = 0; j < 2; j++) wmma::mma_sync(acc[g][i][j], fa[i], fb[j], acc[g][i][j]);
            }
        }
        __syncthreads(); /* this stage is loaded again two slices on */
    }
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int i = 0; i < 2; i++)
#pragma unroll
            for (int j = 0; j < 2; j++)
                wmma::store_matrix_sync(Cs + g * MOE_BM * LDC + (wr + 16 * i) * LDC + wc + 16 * j, acc[g][i][j], LDC,
                                        wmma::mem_row_major);
    __syncthreads();
    for (int q = threadIdx.x; q < MOE_BM * MOE_BN; q += blockDim.x) {
        int r = q / MOE_BN, c = q % MOE_BN;
        if (r >= nrows || c0 + c >= m) continue;
        float v = Cs[r * LDC + c];
        if (GATED) v = silu_f(v) * Cs[MOE_BM * LDC + r * LDC + c];
        out[(int64_t)(row0 + r) * ostride + c0 + c] = from_f<T>(v);
    }
}

/* ---- 2./3. for decode (n <= MOE_GEMV_ROWS, so an expert has at most that many rows, one tile): one
 * warp per output column (KW warps share a long k), 16-byte loads of the weight rows batched
 * MOE_GEMV_BATCH deep, the expert's rows of a (L1/L2-resident) against each: the weights are read
 * once, as the dense GEMV does. Needs 16-bit T, k and the strides multiples of 8, 16-byte alignment. */
#define MOE_GEMV_ROWS 8
#define MOE_GEMV_WARPS 4
#define MOE_GEMV_BATCH 4

template <typename T, bool GATED, int KW>
__global__ void __launch_bounds__(32 * MOE_GEMV_WARPS)
    moe_gemv_kernel(T *out, int64_t ostride, const T *a, int64_t astride, const int32_t *a_rows, void *const *table,
                    int w0, int w1, int64_t wstride, const int32_t *offs, const int32_t *n_tiles,
                    const int32_t *tile_e, const int32_t *tile_r0, int m, int kdim)
{
    PDL_PROLOGUE();
    constexpr int NB = MOE_GEMV_ROWS, G = GATED ? 2 : 1;
    __shared__ int rows_s[NB];
    __shared__ float red[MOE_GEMV_WARPS][G][NB];
    int e, row0, nrows;
    if (!moe_tile(offs, n_tiles, tile_e, tile_r0, &e, &row0, &nrows)) return;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int col = blockIdx.x * (MOE_GEMV_WARPS / KW) + warp / KW, part = warp % KW;
    const int tr = (int)threadIdx.x;
    if (tr < NB) rows_s[tr] = tr < nrows ? (a_rows ? a_rows[row0 + tr] : row0 + tr) : -1;
    __syncthreads();
    float acc[G][NB];
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int b = 0; b < NB; b++) acc[g][b] = 0.f;
    if (col < m) {
        const T *wr[G];
        wr[0] = (const T *)table[w0 + e] + (int64_t)col * wstride;
        if constexpr (GATED) wr[G - 1] = (const T *)table[w1 + e] + (int64_t)col * wstride;
        const T *xr[NB];
#pragma unroll
        for (int b = 0; b < NB; b++) xr[b] = a + (int64_t)(rows_s[b] >= 0 ? rows_s[b] : rows_s[0]) * astride;
        const int step = 256 * KW;
        for (int c0 = (part * 32 + lane) * 8; c0 < kdim; c0 += MOE_GEMV_BATCH * step) {
            uint4 wv[G][MOE_GEMV_BATCH];
#pragma unroll
            for (int u = 0; u < MOE_GEMV_BATCH; u++) {
                int c = c0 + u * step;
#pragma unroll
                for (int g = 0; g < G; g++) {
                    wv[g][u] = make_uint4(0, 0, 0, 0);
                    if (c < kdim) wv[g][u] = __ldg((const uint4 *)(wr[g] + c));
                }
            }
#pragma unroll
            for (int u = 0; u < MOE_GEMV_BATCH; u++) {
                int c = c0 + u * step;
                if (c >= kdim) break;
                float wf[G][8];
#pragma unroll
                for (int g = 0; g < G; g++) unpack8(wv[g][u], wf[g], (const T *)0);
#pragma unroll
                for (int b = 0; b < NB; b++) {
                    if (b >= nrows) break;
                    float xf[8];
                    unpack8(*(const uint4 *)(xr[b] + c), xf, (const T *)0);
#pragma unroll
                    for (int g = 0; g < G; g++)
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[g][b] = fmaf(wf[g][j], xf[j], acc[g][b]);
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < G; g++)
#pragma unroll
        for (int b = 0; b < NB; b++)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[g][b] += __shfl_xor_sync(0xffffffffu, acc[g][b], o);
    if (KW > 1) {
        if (lane == 0)
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int b = 0; b < NB; b++) red[warp][g][b] = acc[g][b];
        __syncthreads();
        if (part == 0)
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int b = 0; b < NB; b++) {
                    float t = 0.f;
#pragma unroll
                    for (int j = 0; j < KW; j++) t += red[warp + j][g][b];
                    acc[g][b] = t;
                }
    }
    if (part == 0 && col < m && lane < nrows) {
        float v = 0.f, v2 = 0.f;
#pragma unroll
        for (int b = 0; b < NB; b++)
            if (b == lane) {
                v = acc[0][b];
                v2 = acc[G - 1][b];
            }
        if (GATED) v = silu_f(v) * v2;
        out[(int64_t)(row0 + lane) * ostride + col] = from_f<T>(v);
    }
}

/* ---- the same in fp32 FMA, any dtypes (converted on load): 256 threads, 4 x 4 outputs each ---- */
template <bool GATED>
__global__ void __launch_bounds__(256)
    moe_mm_fma_kernel(void *out, int odt, int64_t ostride, const void *a, int adt, int64_t astride,
                      const int32_t *a_rows, void *const *table, int w0, int w1, int wdt, int64_t wstride,
                      const int32_t *offs, const int32_t *n_tiles, const int32_t *tile_e, const int32_t *tile_r0,
                      int m, int kdim)
{
    PDL_PROLOGUE();
    constexpr int G = GATED ? 2 : 1;
    __shared__ float xs[MOE_FMA_BK][MOE_BM + 1];
    __shared__ float ws[G][MOE_FMA_BK][MOE_BN + 1];
    __shared__ int rows_s[MOE_BM];
    int e, row0, nrows;
    if (!moe_tile(offs, n_tiles, tile_e, tile_r0, &e, &row0, &nrows)) return;
    const int c0 = blockIdx.x * MOE_BN;
    const void *W[2] = {table[w0 + e], table[w1 + e]};
    for (int r = threadIdx.x; r < MOE_BM; r += blockDim.x)
        rows_s[r] = r < nrows ? (a_rows ? a_rows[row0 + r] : row0 + r) : -1;
    __syncthreads();
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[G][4][4] = {};
    for (int k0 = 0; k0 < kdim; k0 += MOE_FMA_BK) {
        for (int i = threadIdx.x; i < MOE_BM * MOE_FMA_BK; i += blockDim.x) {
            int rr = i / MOE_FMA_BK, kk = i % MOE_FMA_BK, kc = k0 + kk;
            int ar = rows_s[rr];
            xs[kk][rr] = (ar >= 0 && kc < kdim) ? ld_f(a, adt, (int64_t)ar * astride + kc) : 0.f;
            int c = c0 + rr;
#pragma unroll
            for (int g = 0; g < G; g++)
                ws[g][kk][rr] = (c < m && kc < kdim) ? ld_f(W[g], wdt, (int64_t)c * wstride + kc) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MOE_FMA_BK; kk++) {
            float av[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = xs[kk][ty + 16 * i];
#pragma unroll
            for (int g = 0; g < G; g++) {
                float bv[4];
#pragma unroll
                for (int j = 0; j < 4; j++) bv[j] = ws[g][kk][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[g][i][j] = fmaf(av[i], bv[j], acc[g][i][j]);
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int r = ty + 16 * i;
        if (r >= nrows) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int c = c0 + tx + 16 * j;
            if (c >= m) continue;
            float v = acc[0][i][j];
            if (GATED) v = silu_f(v) * acc[G - 1][i][j];
            st_f(out, odt, (int64_t)(row0 + r) * ostride + c, v);
        }
    }
}

/* ---- 4. combine: x[t, :] += sum_j weights[t * k + j] * y[inv[t * k + j], :], j ascending ---- */
__global__ void moe_combine_kernel(void *x, int xdt, int64_t xstride, const void *y, int ydt, int64_t ystride,
                                   const int32_t *inv, const float *weights, int k, int64_t cols)
{
    PDL_PROLOGUE();
    const int64_t t = blockIdx.x;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        float s = 0.f;
        for (int j = 0; j < k; j++)
            s = fmaf(weights[t * k + j], ld_f(y, ydt, (int64_t)inv[t * k + j] * ystride + c), s);
        int64_t o = t * xstride + c;
        st_f(x, xdt, o, ld_f(x, xdt, o) + s);
    }
}

/* ---- the cuBLAS path's small kernels ---- */

/* out[r, :] = src[rows[r], :], row_bytes bytes a row (one block a row); vec: 16-byte pieces, else 2-byte */
__global__ void moe_gather_kernel(void *out, int64_t ostride_b, const void *src, int64_t sstride_b,
                                  const int32_t *rows, int64_t row_bytes, int vec)
{
    PDL_PROLOGUE();
    const int64_t r = blockIdx.x;
    const char *s = (const char *)src + (int64_t)rows[r] * sstride_b;
    char *o = (char *)out + r * ostride_b;
    if (vec) {
        for (int64_t i = threadIdx.x; i < row_bytes / 16; i += blockDim.x)
            ((uint4 *)o)[i] = ((const uint4 *)s)[i];
    } else {
        for (int64_t i = threadIdx.x; i < row_bytes / 2; i += blockDim.x)
            ((uint16_t *)o)[i] = ((const uint16_t *)s)[i];
    }
}

/* act[r, c] = silu(gu[r, c]) * gu[r, MI + c] for r < rows, c < MI: the fp32 products, one rounding */
__global__ void moe_silu_kernel(void *act, int adt, const float *gu, int64_t rows, int64_t mi)
{
    PDL_PROLOGUE();
    const int64_t total = rows * mi;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / mi, c = i % mi;
        float g = gu[r * 2 * mi + c], u = gu[r * 2 * mi + mi + c];
        st_f(act, adt, i, silu_f(g) * u);
    }
}

static cudaDataType_t moe_cuda_dt(enum loom_dtype t)
{
    return t == LOOM_DTYPE_F32 ? CUDA_R_32F : t == LOOM_DTYPE_F16 ? CUDA_R_16F : CUDA_R_16BF;
}

/* out^T (m x n, ldc) = w (k x m, lda, transposed) * x (k x n, ldb): row-major out[n, m] = x[n, k] @ w[m, k]^T */
static void moe_gemm(struct cuda_ctx *c, void *out, enum loom_dtype odt, int ldc, const void *x, int ldb,
                     const void *wt, enum loom_dtype wdt, int lda, int m, int n, int k)
{
    struct cuda_gemm_args g;
    memset(&g, 0, sizeof g); /* records are compared as bytes, padding included */
    g.ta = CUBLAS_OP_T;
    g.tb = CUBLAS_OP_N;
    g.m = m;
    g.n = n;
    g.k = k;
    g.a = wt;
    g.at = moe_cuda_dt(wdt);
    g.lda = lda;
    g.b = x;
    g.bt = moe_cuda_dt(wdt);
    g.ldb = ldb;
    g.c = out;
    g.ct = moe_cuda_dt(odt);
    g.ldc = ldc;
    g.compute = CUBLAS_COMPUTE_32F;
    cuda_gemm(c, &g);
}

/* The experts through cuBLAS, after the grouping (see the top of the file). */
static void moe_experts_blas(struct loom_backend *be, struct cuda_ctx *c, struct loom_tensor h,
                             const struct loom_moe_experts *ex, const struct moe_ws *w, int64_t n, int64_t nk, int E,
                             int H, int MI)
{
    const enum loom_dtype act = be->act_dtype;
    const size_t es = loom_dtype_size(act);
    const int64_t chunk = n < MOE_BLAS_CHUNK ? n : MOE_BLAS_CHUNK; /* the rows of w->gu (moe_carve) */
    int32_t offs[1025];
    be->ops->download(be, offs, w->offs, sizeof(int32_t) * (size_t)(E + 1));
    LOOM_ASSERT(offs[0] == 0 && offs[E] == nk);
    const int64_t row_bytes = (int64_t)H * (int64_t)es;
    int vec = row_bytes % 16 == 0 && ((int64_t)h.stride * (int64_t)es) % 16 == 0 && al16(h.data) && al16(w->y);
    cuda_launch(c, moe_gather_kernel, dim3((unsigned)nk), dim3(128), 0, w->y, row_bytes, (const void *)h.data,
                (int64_t)h.stride * (int64_t)es, (const int32_t *)w->perm_tok, row_bytes, vec);
    CUDA_LAUNCH_CHECK();
    for (int e = 0; e < E; e++) {
        const struct loom_tensor *ge = &ex->gate[e], *ue = &ex->up[e], *de = &ex->down[e];
        /* up_e right after gate_e, same stride: one [2 * MI, H] weight */
        bool joined = ue->stride == ge->stride &&
                      (const char *)ue->data == (const char *)ge->data + (size_t)MI * ge->stride * es;
        for (int64_t r0 = offs[e]; r0 < offs[e + 1]; r0 += chunk) {
            int rows = (int)(offs[e + 1] - r0 < chunk ? offs[e + 1] - r0 : chunk);
            const char *xin = (const char *)w->y + r0 * row_bytes;
            if (joined) {
                moe_gemm(c, w->gu, LOOM_DTYPE_F32, 2 * MI, xin, H, ge->data, ge->dtype, (int)ge->stride, 2 * MI, rows,
                         H);
            } else {
                moe_gemm(c, w->gu, LOOM_DTYPE_F32, 2 * MI, xin, H, ge->data, ge->dtype, (int)ge->stride, MI, rows, H);
                moe_gemm(c, w->gu + MI, LOOM_DTYPE_F32, 2 * MI, xin, H, ue->data, ue->dtype, (int)ue->stride, MI, rows,
                         H);
            }
            char *a = (char *)w->act + r0 * (int64_t)MI * (int64_t)es;
            int64_t total = (int64_t)rows * MI;
            int64_t blocks = (total + 255) / 256;
            if (blocks > 65535 * 4) blocks = 65535 * 4;
            cuda_launch(c, moe_silu_kernel, dim3((unsigned)blocks), dim3(256), 0, (void *)a, (int)act,
                        (const float *)w->gu, (int64_t)rows, (int64_t)MI);
            CUDA_LAUNCH_CHECK();
            moe_gemm(c, (char *)w->y + r0 * row_bytes, act, H, a, MI, de->data, de->dtype, (int)de->stride, H, rows,
                     MI);
        }
    }
}

/* ---- the op ---- */

template <typename T, bool GATED, int KW>
static void launch_gemv_kw(struct cuda_ctx *c, int tiles, void *out, int64_t ostride, const void *a, int64_t astride,
                           const int32_t *a_rows, void *const *table, int w0, int w1, int64_t wstride,
                           const struct moe_ws *w, int m, int kdim)
{
    const int cols_per_block = MOE_GEMV_WARPS / KW;
    dim3 grid((m + cols_per_block - 1) / cols_per_block, tiles);
    cuda_launch(c, moe_gemv_kernel<T, GATED, KW>, grid, dim3(32 * MOE_GEMV_WARPS), 0, (T *)out, ostride,
                (const T *)a, astride, a_rows, table, w0, w1, wstride, (const int32_t *)w->offs,
                (const int32_t *)w->n_tiles, (const int32_t *)w->tile_e, (const int32_t *)w->tile_r0, m, kdim);
    CUDA_LAUNCH_CHECK();
}

template <typename T, bool GATED>
static void launch_gemv(struct cuda_ctx *c, int tiles, void *out, int64_t ostride, const void *a, int64_t astride,
                        const int32_t *a_rows, void *const *table, int w0, int w1, int64_t wstride,
                        const struct moe_ws *w, int m, int kdim)
{
    /* about four 16-byte loads per lane in flight; at most 4 warps on one column */
    if (kdim <= 1024)
        launch_gemv_kw<T, GATED, 1>(c, tiles, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m, kdim);
    else if (kdim <= 2048)
        launch_gemv_kw<T, GATED, 2>(c, tiles, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m, kdim);
    else
        launch_gemv_kw<T, GATED, 4>(c, tiles, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m, kdim);
}

template <typename T>
static void launch_tc(struct cuda_ctx *c, bool gated, dim3 grid, void *out, int64_t ostride, const void *a,
                      int64_t astride, const int32_t *a_rows, void *const *table, int w0, int w1, int64_t wstride,
                      const struct moe_ws *w, int m, int kdim, int vec, bool small)
{
    if (small && vec) {
        if (gated)
            launch_gemv<T, true>(c, grid.y, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m, kdim);
        else
            launch_gemv<T, false>(c, grid.y, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m, kdim);
        return;
    }
    if (gated)
        cuda_launch(c, moe_mm_tc_kernel<T, true>, grid, dim3(128), 0, (T *)out, ostride, (const T *)a, astride,
                    a_rows, table, w0, w1, wstride, (const int32_t *)w->offs, (const int32_t *)w->n_tiles,
                    (const int32_t *)w->tile_e, (const int32_t *)w->tile_r0, m, kdim, vec);
    else
        cuda_launch(c, moe_mm_tc_kernel<T, false>, grid, dim3(128), 0, (T *)out, ostride, (const T *)a, astride,
                    a_rows, table, w0, w1, wstride, (const int32_t *)w->offs, (const int32_t *)w->n_tiles,
                    (const int32_t *)w->tile_e, (const int32_t *)w->tile_r0, m, kdim, vec);
    CUDA_LAUNCH_CHECK();
}

/* One grouped product: out[sorted rows, m] = a[rows] @ W_e^T (GATED: silu(a @ Wg_e^T) * (a @ Wu_e^T)). */
static void moe_product(struct cuda_ctx *c, bool gated, bool small, int tiles, void *out, enum loom_dtype odt, int64_t ostride,
                        const void *a, enum loom_dtype adt, int64_t astride, const int32_t *a_rows,
                        void *const *table, int w0, int w1, enum loom_dtype wdt, int64_t wstride, bool w_al16,
                        const struct moe_ws *w, int m, int kdim)
{
    dim3 grid((m + MOE_BN - 1) / MOE_BN, tiles);
    bool tc = adt == wdt && odt == adt && (adt == LOOM_DTYPE_BF16 || adt == LOOM_DTYPE_F16);
    if (tc) {
        int vec = kdim % 8 == 0 && astride % 8 == 0 && wstride % 8 == 0 && al16(a) && w_al16;
        if (adt == LOOM_DTYPE_BF16)
            launch_tc<__nv_bfloat16>(c, gated, grid, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m,
                                     kdim, vec, small);
        else
            launch_tc<__half>(c, gated, grid, out, ostride, a, astride, a_rows, table, w0, w1, wstride, w, m, kdim,
                              vec, small);
        return;
    }
    if (gated)
        cuda_launch(c, moe_mm_fma_kernel<true>, grid, dim3(256), 0, out, (int)odt, ostride, a, (int)adt, astride,
                    a_rows, table, w0, w1, (int)wdt, wstride, (const int32_t *)w->offs, (const int32_t *)w->n_tiles,
                    (const int32_t *)w->tile_e, (const int32_t *)w->tile_r0, m, kdim);
    else
        cuda_launch(c, moe_mm_fma_kernel<false>, grid, dim3(256), 0, out, (int)odt, ostride, a, (int)adt, astride,
                    a_rows, table, w0, w1, (int)wdt, wstride, (const int32_t *)w->offs, (const int32_t *)w->n_tiles,
                    (const int32_t *)w->tile_e, (const int32_t *)w->tile_r0, m, kdim);
    CUDA_LAUNCH_CHECK();
}

/* Every expert's tensor of one kind: one dtype, one shape, one stride (the kernels take them once). */
static bool same_layout(const struct loom_tensor *t, int E, int64_t rows, int64_t cols, bool *all16)
{
    *all16 = true;
    for (int e = 0; e < E; e++) {
        if (t[e].dtype != t[0].dtype || t[e].rows != rows || t[e].cols != cols || t[e].stride != t[0].stride ||
            !t[e].data)
            return false;
        if (!al16(t[e].data)) *all16 = false;
    }
    return cuda_is_float_dtype(t[0].dtype);
}

void cuda_moe_experts(struct loom_backend *be, struct loom_tensor x, struct loom_tensor h, const int32_t *ids,
                      const float *weights, int k, const struct loom_moe_experts *ex, void *ws)
{
    struct cuda_ctx *c = cuda_ctx_of(be);
    const int64_t n = h.rows;
    const int E = ex->n_experts;
    LOOM_ASSERT(E >= 1 && E <= 1024 && k >= 1 && k <= E && x.rows == n && x.cols == h.cols && ex->table);
    LOOM_ASSERT(h.dtype == be->act_dtype && cuda_is_float_dtype(x.dtype));
    if (n == 0) return;
    const int H = (int)h.cols, MI = (int)ex->gate[0].rows;
    bool g16, u16, d16;
    LOOM_ASSERT(same_layout(ex->gate, E, MI, H, &g16) && same_layout(ex->up, E, MI, H, &u16) &&
                same_layout(ex->down, E, H, MI, &d16));
    LOOM_ASSERT(ex->up[0].dtype == ex->gate[0].dtype && ex->up[0].stride == ex->gate[0].stride);
    const int64_t nk = n * k;
    LOOM_ASSERT(nk <= 2147483647 / 2);
    const int tiles = max_tiles(nk, E);
    LOOM_ASSERT(tiles <= 65535);
    struct moe_ws w;
    const enum loom_dtype act = be->act_dtype;
    moe_carve(&w, ws, n, k, E, H, MI, loom_dtype_size(act));

    size_t smem = (size_t)(MOE_GROUP_WARPS + 3) * E * sizeof(int);
    cuda_launch(c, moe_group_kernel, dim3(1), dim3(32 * MOE_GROUP_WARPS), smem, ids, (int)nk, k, E, w.offs, w.n_tiles,
                w.tile_e, w.tile_r0, w.perm_tok, w.inv);
    CUDA_LAUNCH_CHECK();
    /* large steps of one dtype: cuBLAS per expert, after one sync */
    if (w.gu && ex->gate[0].dtype == act && ex->down[0].dtype == act && h.dtype == act) {
        moe_experts_blas(be, c, h, ex, &w, n, nk, E, H, MI);
    } else {
        /* n <= MOE_GEMV_ROWS: every expert has at most n rows (one tile), the decode kernels apply */
        const bool small = n <= MOE_GEMV_ROWS;
        moe_product(c, true, small, tiles, w.act, act, MI, h.data, h.dtype, h.stride, w.perm_tok, ex->table, 0, E,
                    ex->gate[0].dtype, ex->gate[0].stride, g16 && u16, &w, MI, H);
        moe_product(c, false, small, tiles, w.y, act, H, w.act, act, MI, NULL, ex->table, 2 * E, 2 * E, ex->down[0].dtype,
                    ex->down[0].stride, d16, &w, H, MI);
    }
    cuda_launch(c, moe_combine_kernel, dim3((unsigned)n), dim3(128), 0, x.data, (int)x.dtype, x.stride,
                (const void *)w.y, (int)act, (int64_t)H, (const int32_t *)w.inv, weights, k, (int64_t)H);
    CUDA_LAUNCH_CHECK();
}
