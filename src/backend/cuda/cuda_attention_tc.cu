/*
 * cuda_attention_tc.cu: paged causal attention for prefill on tensor cores (bf16/f16, head_dim 64 or
 * 128), flash-attention style: one block takes 64 query rows of one sequence and one query head (4
 * warps x 16 rows) and walks the visible context in tiles of 64 positions gathered through the block
 * table: S = Q K^T and O += P V on WMMA 16x16x16 tiles (fp32 accumulate), the online softmax in fp32
 * between them (P rounded to the activation dtype for the second product, as flash attention does).
 * Each K/V tile is read once per 64 queries, where cuda_attention.cu's per-token kernel reads it once
 * per query: that kernel stays for decode, fp32 and other head sizes.
 * LOOM_CUDA_TC_ATTN=0 turns this path off (for comparisons).
 */
#include "backend/cuda/cuda_common.h"

#include <mma.h>

using namespace nvcuda;

#define TC_Q 64   /* query rows per block */
#define TC_KV 64  /* context positions per tile */
#define TC_THREADS 128
#define TC_MIN_QUERY 16 /* steps whose longest query run is shorter keep the per-token kernel */


template <int D> struct tc_layout {
    static constexpr int LD = D + 8;        /* Q, K, V rows (16-bit elements) */
    static constexpr int LDS = TC_KV + 4;   /* S rows (fp32) */
    static constexpr int LDP = TC_KV + 8;   /* P rows (16-bit) */
    static constexpr int LDO = D + 4;       /* O rows (fp32) */
    static constexpr size_t up(size_t b) { return (b + 127) & ~(size_t)127; }
    static constexpr size_t q_off = 0;
    static constexpr size_t k_off = up(q_off + (size_t)TC_Q * LD * 2);
    static constexpr size_t v_off = up(k_off + (size_t)TC_KV * LD * 2);
    static constexpr size_t s_off = up(v_off + (size_t)TC_KV * LD * 2);
    static constexpr size_t p_off = up(s_off + (size_t)TC_Q * LDS * 4);
    static constexpr size_t o_off = up(p_off + (size_t)TC_Q * LDP * 2);
    static constexpr size_t m_off = up(o_off + (size_t)TC_Q * LDO * 4);
    static constexpr size_t bytes = m_off + 3 * TC_Q * 4 + TC_KV * 4; /* m, l, alpha per row; slots */
};

template <typename T, int D> __global__ void __launch_bounds__(TC_THREADS) attn_tc_kernel(struct cuda_attn_params P)
{
    PDL_PROLOGUE();
    typedef tc_layout<D> Lt;
    extern __shared__ __align__(128) unsigned char smem[];
    T *Qs = (T *)(smem + Lt::q_off), *Ks = (T *)(smem + Lt::k_off), *Vs = (T *)(smem + Lt::v_off);
    float *Ss = (float *)(smem + Lt::s_off);
    T *Ps = (T *)(smem + Lt::p_off);
    float *Os = (float *)(smem + Lt::o_off);
    float *Ms = (float *)(smem + Lt::m_off), *Ls = Ms + TC_Q, *As = Ls + TC_Q;
    int *slots = (int *)(As + TC_Q);

    const int qt = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
    const int q_begin = P.query_start[s], q_len = P.query_start[s + 1] - q_begin, q0 = qt * TC_Q;
    if (q0 >= q_len) return;
    const int ctx = P.seq_lens[s], pos0 = ctx - q_len + q0; /* position of this block's first query */
    const int nq = q_len - q0 < TC_Q ? q_len - q0 : TC_Q;
    const int kvh = h / P.group, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float scale_log2 = P.scale * 1.4426950408889634f; /* the softmax runs in base 2 */
    const int32_t *bt = P.block_tables + (int64_t)s * P.max_blocks;
    constexpr int VEC = 8; /* 16-bit elements per 16-byte load */

    for (int i = threadIdx.x; i < TC_Q * D / VEC; i += TC_THREADS) {
        const int r = i / (D / VEC), c = (i % (D / VEC)) * VEC;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < nq) v = *(const uint4 *)((const T *)P.q + (int64_t)(q_begin + q0 + r) * P.q_stride + (int64_t)h * D + c);
        *(uint4 *)(Qs + r * Lt::LD + c) = v;
    }
    for (int i = threadIdx.x; i < TC_Q * Lt::LDO; i += TC_THREADS) Os[i] = 0.f;
    for (int i = threadIdx.x; i < TC_Q; i += TC_THREADS) Ms[i] = -INFINITY, Ls[i] = 0.f;

    const int last = pos0 + nq - 1; /* the last query's position: nothing later is visible */
    int first = 0;
    if (P.window > 0) first = pos0 - P.window + 1 > 0 ? pos0 - P.window + 1 : 0;
    __syncthreads();

    for (int kv0 = first / TC_KV * TC_KV; kv0 <= last; kv0 += TC_KV) {
        if (threadIdx.x < TC_KV) {
            const int p = kv0 + threadIdx.x;
            slots[threadIdx.x] = p <= last ? bt[p / P.block_size] * P.block_size + p % P.block_size : -1;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < TC_KV * D / VEC; i += TC_THREADS) {
            const int r = i / (D / VEC), c = (i % (D / VEC)) * VEC, slot = slots[r];
            uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
            if (slot >= 0) {
                kv = *(const uint4 *)((const T *)P.kc + (int64_t)slot * P.k_stride + (int64_t)kvh * D + c);
                vv = *(const uint4 *)((const T *)P.vc + (int64_t)slot * P.v_stride + (int64_t)kvh * D + c);
            }
            *(uint4 *)(Ks + r * Lt::LD + c) = kv;
            *(uint4 *)(Vs + r * Lt::LD + c) = vv;
        }
        __syncthreads();

        /* S = Q K^T for this warp's 16 rows */
        {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> sacc[TC_KV / 16];
#pragma unroll
            for (int j = 0; j < TC_KV / 16; j++) wmma::fill_fragment(sacc[j], 0.f);
#pragma unroll
            for (int k = 0; k < D; k += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::load_matrix_sync(a, Qs + warp * 16 * Lt::LD + k, Lt::LD);
#pragma unroll
                for (int j = 0; j < TC_KV / 16; j++) {
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                    wmma::load_matrix_sync(b, Ks + j * 16 * Lt::LD + k, Lt::LD);
                    wmma::mma_sync(sacc[j], a, b, sacc[j]);
                }
            }
#pragma unroll
            for (int j = 0; j < TC_KV / 16; j++)
                wmma::store_matrix_sync(Ss + warp * 16 * Lt::LDS + j * 16, sacc[j], Lt::LDS, wmma::mem_row_major);
        }
        __syncwarp();

        /* online softmax: two lanes per row, 32 positions each */
        {
            const int r = warp * 16 + (lane >> 1), half = lane & 1, qpos = pos0 + r;
            const bool row_ok = r < nq;
            const float *srow = Ss + r * Lt::LDS + half * 32;
            float v[32], mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < 32; c++) {
                const int p = kv0 + half * 32 + c;
                const bool ok = row_ok && p <= qpos && (P.window <= 0 || p > qpos - P.window);
                v[c] = ok ? srow[c] * scale_log2 : -INFINITY;
                mx = fmaxf(mx, v[c]);
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            const float m_old = Ms[r], m_new = fmaxf(m_old, mx);
            float alpha = 1.f, sum = 0.f;
            T *prow = Ps + r * Lt::LDP + half * 32;
            if (m_new == -INFINITY) { /* nothing visible to this row yet */
#pragma unroll
                for (int c = 0; c < 32; c++) prow[c] = from_f<T>(0.f);
            } else {
                alpha = exp2f(m_old - m_new);
#pragma unroll
                for (int c = 0; c < 32; c++) {
                    const T pt = from_f<T>(exp2f(v[c] - m_new));
                    prow[c] = pt;
                    sum += to_f(pt); /* the normalizer sums what the product uses */
                }
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            if (!half) {
                Ms[r] = m_new;
                Ls[r] = Ls[r] * alpha + sum;
                As[r] = alpha;
            }
        }
        __syncwarp();

        /* O = alpha O + P V for this warp's 16 rows */
        for (int i = lane; i < 16 * D; i += 32) {
            const int r = warp * 16 + i / D, c = i % D;
            Os[r * Lt::LDO + c] *= As[r];
        }
        __syncwarp();
#pragma unroll
        for (int dj = 0; dj < D / 16; dj++) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
            wmma::load_matrix_sync(o, Os + warp * 16 * Lt::LDO + dj * 16, Lt::LDO, wmma::mem_row_major);
#pragma unroll
            for (int k = 0; k < TC_KV; k += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(a, Ps + warp * 16 * Lt::LDP + k, Lt::LDP);
                wmma::load_matrix_sync(b, Vs + k * Lt::LD + dj * 16, Lt::LD);
                wmma::mma_sync(o, a, b, o);
            }
            wmma::store_matrix_sync(Os + warp * 16 * Lt::LDO + dj * 16, o, Lt::LDO, wmma::mem_row_major);
        }
        __syncthreads(); /* the next tile overwrites K, V and the slots */
    }

    for (int i = threadIdx.x; i < nq * D; i += TC_THREADS) {
        const int r = i / D, c = i % D;
        const float l = Ls[r];
        ((T *)P.out)[(int64_t)(q_begin + q0 + r) * P.out_stride + (int64_t)h * D + c] =
            from_f<T>(l > 0.f ? Os[r * Lt::LDO + c] / l : 0.f);
    }
}

template <typename T, int D> static void tc_init_one(void)
{
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_kernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    (int)tc_layout<D>::bytes));
}

void cuda_attention_tc_init(struct cuda_ctx *c)
{
    const char *e = getenv("LOOM_CUDA_TC_ATTN");
    c->tc_attn = !(e && !strcmp(e, "0")) && c->smem_optin >= tc_layout<128>::bytes;
    if (!c->tc_attn) return;
    tc_init_one<__nv_bfloat16, 64>();
    tc_init_one<__nv_bfloat16, 128>();
    tc_init_one<__half, 64>();
    tc_init_one<__half, 128>();
}

template <typename T, int D>
static void tc_launch(struct cuda_ctx *c, const struct cuda_attn_params *P, const struct loom_attn_meta *meta)
{
    dim3 grid((unsigned)((meta->max_query_len + TC_Q - 1) / TC_Q), (unsigned)P->n_heads, (unsigned)meta->n_seqs);
    cuda_launch(c, attn_tc_kernel<T, D>, grid, dim3(TC_THREADS), tc_layout<D>::bytes, *P);
}

static bool al16(const void *p, int64_t stride, size_t es)
{
    return ((uintptr_t)p & 15) == 0 && (stride * (int64_t)es) % 16 == 0;
}

bool cuda_attention_tc(struct cuda_ctx *c, const struct cuda_attn_params *P, const struct loom_attn_meta *meta,
                       enum loom_dtype dtype)
{
    const int D = P->head_dim;
    if (!c->tc_attn || meta->max_query_len < TC_MIN_QUERY || (D != 64 && D != 128) ||
        (dtype != LOOM_DTYPE_BF16 && dtype != LOOM_DTYPE_F16) || meta->n_seqs > 65535)
        return false;
    const size_t es = 2;
    if (!al16(P->q, P->q_stride, es) || !al16(P->kc, P->k_stride, es) || !al16(P->vc, P->v_stride, es)) return false;
    if (dtype == LOOM_DTYPE_BF16) {
        if (D == 64) tc_launch<__nv_bfloat16, 64>(c, P, meta);
        else tc_launch<__nv_bfloat16, 128>(c, P, meta);
    } else {
        if (D == 64) tc_launch<__half, 64>(c, P, meta);
        else tc_launch<__half, 128>(c, P, meta);
    }
    return true;
}
