/*
 * cuda_attention_decode.cu: a decode step's rope, KV write and paged attention in one kernel
 * (ops->decode_attention): every sequence has exactly one new token. It replaces qkv_rope_store
 * (cuda_rope_kv.cu) + attention (cuda_attention.cu) on that path; prefill chunks and mixed steps, f32,
 * head_dim other than 64/128 and groups above 8 return false (the caller runs the two ops).
 *
 * One block of 8 warps per (sequence, KV head, split). The prologue reads the row's G = n_heads /
 * n_kv_heads q heads, its k and v heads, applies the q/k RMSNorm (Qwen3) and the neox rotation with
 * the arithmetic of qkv_rope_store (so the cache bytes are identical), keeps q (pre-scaled by
 * scale * log2 e), k and v in shared memory, and the split-0 block writes k and v to the cache row
 * slot_mapping[s] (negative: skipped). The current position's K/V come from shared memory, never from
 * the cache, so no block reads a row another block of the same launch writes.
 * The attention: a row group of D / 8 lanes holds 8 dims of every q head in registers and reads one
 * cache row per step with one 16-byte K and one 16-byte V load per lane (no shared-memory tile, no
 * serial per-thread dot products: the dot is 8 FMAs and a log2(D / 8) shuffle reduction); each row
 * group keeps its own online softmax over the rows w, w + NWORK, ... of the block's range, DATT_U rows
 * per round trip, the first round's loads issued before the prologue. The row groups merge by
 * shuffles, the warps in shared memory.
 * Where the (sequence, KV head) blocks alone would leave most SMs idle (small batches), the range is
 * split: over a thread-block cluster of up to 8 blocks whose rank 0 merges the others' partials out of
 * distributed shared memory, and for long contexts further over clusters, whose partials go to
 * c->attn_ws and the last cluster of a (sequence, KV head) to finish (a counter in c->attn_counters,
 * reset to zero) merges them. Split counts are powers of two from max_seq_len, so consecutive steps
 * replay one graph.
 * Measured (H100, ncu, Qwen2-0.5B bf16 decode): batch 1 context ~150 12 us (qkv_rope_store + attn_kernel:
 * 4.3 + 20 us), batch 64 context ~150 10.8 us (4.3 + 26.9), Qwen3-0.6B batch 1 context ~2050 18.4 us
 * (5.1 + 30.3). Still latency-bound at batch 1: the row loop is a small part (splitting ~150 rows over
 * 8 blocks instead of 1 changed nothing); what remains is the dependent chain of loads, the prologue
 * and the merges.
 */
#include "backend/cuda/cuda_common.h"

#include <cooperative_groups.h>
#include <float.h>

#define DATT_WARPS 8
#define DATT_THREADS (32 * DATT_WARPS)
#define DATT_U 4             /* rows per row group per round trip */
#define DATT_MAX_SPLITS 64
#define DATT_BT_CAP 256      /* block-table entries of a block's range kept in shared memory */
#define DATT_LOG2E 1.4426950408889634f

struct dattn_params {
    void *out;
    const void *qkv;
    void *kc, *vc;
    int64_t qkv_stride, out_stride, k_stride, v_stride; /* elements between rows */
    const int32_t *positions, *slots, *seq_lens, *block_tables;
    const float *inv_freq;
    const void *qn, *kn; /* [head_dim] each, or NULL */
    int qndt, kndt;
    float eps, scale_log2; /* scale * log2(e): scores in the log2 domain */
    int n_heads, n_kv_heads, head_dim, block_size, max_blocks, window, n_splits;
    int early;     /* issue the metadata, constant and earlier-row loads before the PDL wait (default on) */
    int trigger;   /* PDL_TRIGGER after the wait: the o GEMV's weights load meanwhile (c->pdl_trigger) */
    float *ws;     /* [n_seqs, n_heads, n_splits, head_dim + 2] when n_splits > 1 */
    int *counters; /* [n_seqs * n_kv_heads], zero between launches */
};

static __device__ __forceinline__ float datt_warp_sum(float v) /* qkv_rope_store's reduction, same order */
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float datt_round(int dt, float v)
{
    if (dt == LOOM_DTYPE_BF16) return __bfloat162float(__float2bfloat16_rn(v));
    if (dt == LOOM_DTYPE_F16) return __half2float(__float2half_rn(v));
    return v;
}

template <typename T> struct datt_dtype;
template <> struct datt_dtype<__half> { static constexpr int v = LOOM_DTYPE_F16; };
template <> struct datt_dtype<__nv_bfloat16> { static constexpr int v = LOOM_DTYPE_BF16; };

/* The body of both kernels (no cluster, and clusters of CL blocks: the splits of one (sequence, KV
 * head) that merge through distributed shared memory). */
template <typename T, int D, int G, int CL>
static __device__ __forceinline__ void dattn_body(const struct dattn_params &P)
{
    constexpr int R = D / 8;         /* lanes per cache row (8 elements = 16 bytes each) */
    constexpr int RPW = 32 / R;      /* rows per warp at once */
    constexpr int NWORK = DATT_WARPS * RPW;
    constexpr int PL = D / 64;       /* rotation pairs per lane (half = 32 PL) */
    constexpr int HALF = D / 2;
    constexpr int DT = datt_dtype<T>::v;
    __shared__ float qs[G * D];
    __shared__ float kcur[D], vcur[D];
    __shared__ float red[DATT_WARPS * G * (D + 2)];
    __shared__ float part[CL > 1 ? G * (D + 2) : 1]; /* this block's partial, read by the cluster's rank 0 */
    __shared__ int last_s;

    /* P.early (on by default; LOOM_CUDA_DATT_EARLY=0: off): the loads up to the q|k|v row go out before
     * the PDL wait. They read only what no kernel of the step writes: the step's metadata (uploaded
     * before the step's first kernel), cache rows of earlier positions (written by earlier steps) and
     * model constants. Alone it measured no gain (the kernel launched when its predecessor finished);
     * since the q|k|v GEMV lets it launch early (PDL_TRIGGER), these loads overlap that GEMV: decode_bench
     * Qwen2-0.5B b1 p128 0.820 -> 0.790-0.807 ms/step, p1024 0.899 -> 0.843, b64 3.96 -> 3.69 (device
     * run s3/21). Off, the kernel waits first. */
    if (!P.early) {
        PDL_PROLOGUE();
        if (P.trigger) PDL_TRIGGER();
    }
    const int split = blockIdx.x, kvh = blockIdx.y, s = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int pos = P.seq_lens[s] - 1;
    const int first = P.window > 0 ? max(0, pos - P.window + 1) : 0;
    const int len = pos - first + 1;
    const int chunk = (len + P.n_splits - 1) / P.n_splits;
    const int start = first + split * chunk;
    const int end = min(pos + 1, start + chunk);
    const int kend = min(end, pos); /* cache rows [start, kend); the current row comes from smem */
    const int32_t *bt = P.block_tables + (int64_t)s * P.max_blocks;
    const int bsz = P.block_size;
    const int grp = lane / R, c = lane % R, w = warp * RPW + grp;
    const T *kb = (const T *)P.kc + (int64_t)kvh * D + c * 8;
    const T *vb = (const T *)P.vc + (int64_t)kvh * D + c * 8;

    /* the first round's K/V loads go out before the prologue: their latency hides behind it */
    uint4 kr[DATT_U], vr[DATT_U];
#pragma unroll
    for (int k = 0; k < DATT_U; k++) {
        const int p = start + w + k * NWORK;
        kr[k] = vr[k] = make_uint4(0, 0, 0, 0);
        if (p < kend) {
            const int bi = p / bsz;
            const int64_t sl = (int64_t)bt[bi] * bsz + (p - bi * bsz);
            kr[k] = __ldg((const uint4 *)(kb + sl * P.k_stride));
            vr[k] = __ldg((const uint4 *)(vb + sl * P.v_stride));
        }
    }

    /* model constants of this lane's rotation pairs, and the step's position and slot */
    float fr[PL], nqa[PL], nqb[PL], nka[PL], nkb[PL];
#pragma unroll
    for (int u = 0; u < PL; u++) {
        const int j = lane + 32 * u;
        fr[u] = P.inv_freq[j];
        nqa[u] = nqb[u] = nka[u] = nkb[u] = 0.f;
        if (P.qn) {
            nqa[u] = ld_f(P.qn, P.qndt, j);
            nqb[u] = ld_f(P.qn, P.qndt, j + HALF);
            nka[u] = ld_f(P.kn, P.kndt, j);
            nkb[u] = ld_f(P.kn, P.kndt, j + HALF);
        }
    }
    const float fpos = (float)P.positions[s];
    const int64_t slot = P.slots[s];
    if (P.early) { /* the q|k|v row is the previous kernel's output */
        PDL_PROLOGUE();
        if (P.trigger) PDL_TRIGGER();
    }

    /* ---- prologue: q heads kvh * G + h (h < G), then k (h == G), then v (h == G + 1) ---- */
    const T *row = (const T *)P.qkv + (int64_t)s * P.qkv_stride;
    const bool writer = split == 0 && slot >= 0;
    for (int h = warp; h < G + 2; h += DATT_WARPS) {
        if (h == G + 1) {
            const T *src = row + (int64_t)(P.n_heads + P.n_kv_heads + kvh) * D;
            T *dst = (T *)P.vc + slot * P.v_stride + (int64_t)kvh * D;
            for (int d = lane; d < D; d += 32) {
                const T v = src[d];
                vcur[d] = to_f(v);
                if (writer) dst[d] = v;
            }
            continue;
        }
        const bool is_q = h < G;
        const T *src = row + (is_q ? (int64_t)(kvh * G + h) * D : (int64_t)(P.n_heads + kvh) * D);
        float a[PL], b[PL];
#pragma unroll
        for (int u = 0; u < PL; u++) {
            const int j = lane + 32 * u;
            a[u] = to_f(src[j]);
            b[u] = to_f(src[j + HALF]);
        }
        if (P.qn) { /* exactly qkv_rope_store_kernel's expressions */
            float ss = 0.f;
#pragma unroll
            for (int u = 0; u < PL; u++) ss += a[u] * a[u] + b[u] * b[u];
            ss = datt_warp_sum(ss);
            const float inv = rsqrtf(ss / (float)P.head_dim + P.eps);
#pragma unroll
            for (int u = 0; u < PL; u++) {
                a[u] = datt_round(DT, a[u] * inv * (is_q ? nqa[u] : nka[u]));
                b[u] = datt_round(DT, b[u] * inv * (is_q ? nqb[u] : nkb[u]));
            }
        }
        T *kdst = (T *)P.kc + slot * P.k_stride + (int64_t)kvh * D;
#pragma unroll
        for (int u = 0; u < PL; u++) {
            const int j = lane + 32 * u;
            float sn, cs;
            sincosf(fpos * fr[u], &sn, &cs);
            const T ra = from_f<T>(a[u] * cs - b[u] * sn);
            const T rb = from_f<T>(b[u] * cs + a[u] * sn);
            if (is_q) {
                qs[h * D + j] = to_f(ra) * P.scale_log2;
                qs[h * D + j + HALF] = to_f(rb) * P.scale_log2;
            } else {
                kcur[j] = to_f(ra);
                kcur[j + HALF] = to_f(rb);
                if (writer) {
                    kdst[j] = ra;
                    kdst[j + HALF] = rb;
                }
            }
        }
    }
    __syncthreads();

    /* ---- attention over [start, end) ---- */
    float q[G][8], m[G], l[G], acc[G][8];
#pragma unroll
    for (int g = 0; g < G; g++) {
#pragma unroll
        for (int e = 0; e < 8; e++) {
            q[g][e] = qs[g * D + c * 8 + e];
            acc[g][e] = 0.f;
        }
        m[g] = -INFINITY;
        l[g] = 0.f;
    }
    if (warp == 0 && start <= pos && pos < end) { /* row group 0 of warp 0 starts from the current row */
#pragma unroll
        for (int g = 0; g < G; g++) {
            float d = 0.f;
#pragma unroll
            for (int e = 0; e < 8; e++) d += q[g][e] * kcur[c * 8 + e];
#pragma unroll
            for (int o = 1; o < R; o <<= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
            if (grp == 0) {
                m[g] = d;
                l[g] = 1.f;
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] = vcur[c * 8 + e];
            }
        }
    }
    for (int it = start; it < kend; it += NWORK * DATT_U) {
        if (it != start) {
#pragma unroll
            for (int k = 0; k < DATT_U; k++) {
                const int p = it + w + k * NWORK;
                kr[k] = vr[k] = make_uint4(0, 0, 0, 0);
                if (p < kend) {
                    const int bi = p / bsz;
                    const int64_t sl = (int64_t)bt[bi] * bsz + (p - bi * bsz);
                    kr[k] = __ldg((const uint4 *)(kb + sl * P.k_stride));
                    vr[k] = __ldg((const uint4 *)(vb + sl * P.v_stride));
                }
            }
        }
        float sc[DATT_U][G];
#pragma unroll
        for (int k = 0; k < DATT_U; k++) {
            float kf[8];
            unpack16<T>(kr[k], kf);
            const bool ok = it + w + k * NWORK < kend;
#pragma unroll
            for (int g = 0; g < G; g++) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += q[g][e] * kf[e];
#pragma unroll
                for (int o = 1; o < R; o <<= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
                sc[k][g] = ok ? d : -INFINITY;
            }
        }
#pragma unroll
        for (int g = 0; g < G; g++) {
            float mx = m[g];
#pragma unroll
            for (int k = 0; k < DATT_U; k++) mx = fmaxf(mx, sc[k][g]);
            if (mx == -INFINITY) { /* nothing visible yet for this row group */
#pragma unroll
                for (int k = 0; k < DATT_U; k++) sc[k][g] = 0.f;
                continue;
            }
            const float alpha = exp2f(m[g] - mx);
            m[g] = mx;
            float sum = l[g] * alpha;
#pragma unroll
            for (int k = 0; k < DATT_U; k++) {
                const float pk = exp2f(sc[k][g] - mx);
                sc[k][g] = pk;
                sum += pk;
            }
            l[g] = sum;
#pragma unroll
            for (int e = 0; e < 8; e++) acc[g][e] *= alpha;
        }
#pragma unroll
        for (int k = 0; k < DATT_U; k++) {
            float vf[8];
            unpack16<T>(vr[k], vf);
#pragma unroll
            for (int g = 0; g < G; g++)
#pragma unroll
                for (int e = 0; e < 8; e++) acc[g][e] += sc[k][g] * vf[e];
        }
    }

    /* ---- merge: the row groups of a warp by shuffles, then the warps in shared memory ---- */
#pragma unroll
    for (int o = R; o < 32; o <<= 1) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
            const float lo = __shfl_xor_sync(0xffffffffu, l[g], o);
            const float M = fmaxf(m[g], mo);
            const float ea = m[g] == -INFINITY ? 0.f : exp2f(m[g] - M);
            const float eb = mo == -INFINITY ? 0.f : exp2f(mo - M);
            m[g] = M;
            l[g] = l[g] * ea + lo * eb;
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
                acc[g][e] = acc[g][e] * ea + ao * eb;
            }
        }
    }
    if (grp == 0) {
#pragma unroll
        for (int g = 0; g < G; g++) {
            float *r = red + (warp * G + g) * (D + 2);
            if (c == 0) {
                r[0] = m[g];
                r[1] = l[g];
            }
#pragma unroll
            for (int e = 0; e < 8; e++) r[2 + c * 8 + e] = acc[g][e];
        }
    }
    __syncthreads();

    const int h0 = kvh * G;
    T *out = (T *)P.out + (int64_t)s * P.out_stride + (int64_t)h0 * D;
    const int gsplit = split / CL, n_gs = P.n_splits / CL; /* the cluster's place among the global splits */
    float *wbase = P.ws + ((int64_t)s * P.n_heads + h0) * n_gs * (D + 2);
    /* (M, L, A) of output element i: written out, or as global split gsplit's partial */
    auto finish = [&](int i, float M, float L, float A) {
        const int g = i / D, d = i - g * D;
        if (n_gs == 1) {
            out[i] = from_f<T>(L > 0.f ? A / L : 0.f);
        } else {
            float *wp = wbase + ((int64_t)g * n_gs + gsplit) * (D + 2);
            if (d == 0) {
                wp[0] = M;
                wp[1] = L;
            }
            wp[2 + d] = A;
        }
    };
    for (int i = threadIdx.x; i < G * D; i += DATT_THREADS) {
        const int g = i / D, d = i - g * D;
        float M = -INFINITY;
#pragma unroll
        for (int x = 0; x < DATT_WARPS; x++) M = fmaxf(M, red[(x * G + g) * (D + 2)]);
        float L = 0.f, A = 0.f;
        if (M != -INFINITY) {
#pragma unroll
            for (int x = 0; x < DATT_WARPS; x++) {
                const float *r = red + (x * G + g) * (D + 2);
                const float e = r[0] == -INFINITY ? 0.f : exp2f(r[0] - M);
                L += r[1] * e;
                A += r[2 + d] * e;
            }
        }
        if constexpr (CL == 1) {
            finish(i, M, L, A);
        } else {
            float *pp = part + g * (D + 2);
            if (d == 0) {
                pp[0] = M;
                pp[1] = L;
            }
            pp[2 + d] = A;
        }
    }
    if constexpr (CL > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
        __trap(); /* clusters need sm_90: never launched on older devices (cuda_decode_attention) */
#else
        /* rank 0 of the cluster merges the CL partials out of its peers' shared memory */
        namespace cg = cooperative_groups;
        cg::cluster_group cluster = cg::this_cluster();
        cluster.sync();
        if (cluster.block_rank() == 0) {
            for (int i = threadIdx.x; i < G * D; i += DATT_THREADS) {
                const int g = i / D, d = i - g * D;
                float mr[CL], M = -INFINITY;
#pragma unroll
                for (int r = 0; r < CL; r++) {
                    mr[r] = cluster.map_shared_rank(part, r)[g * (D + 2)];
                    M = fmaxf(M, mr[r]);
                }
                float L = 0.f, A = 0.f;
                if (M != -INFINITY) {
#pragma unroll
                    for (int r = 0; r < CL; r++) {
                        if (mr[r] == -INFINITY) continue;
                        const float *pr = cluster.map_shared_rank(part, r) + g * (D + 2);
                        const float e = exp2f(mr[r] - M);
                        L += pr[1] * e;
                        A += pr[2 + d] * e;
                    }
                }
                finish(i, M, L, A);
            }
        }
        cluster.sync(); /* no block leaves while rank 0 still reads its shared memory */
        if (cluster.block_rank() != 0) return;
#endif
    }
    if (n_gs == 1) return;

    /* the last global split of this (sequence, KV head) to finish merges every split's partial */
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int *ctr = P.counters + (int64_t)s * P.n_kv_heads + kvh;
        const int done = atomicAdd(ctr, 1);
        last_s = done == n_gs - 1;
        if (last_s) *ctr = 0; /* ready for the next launch */
    }
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    float *ml = red; /* [G][n_gs][2] */
    for (int i = threadIdx.x; i < G * n_gs; i += DATT_THREADS) {
        const int g = i / n_gs, z = i - g * n_gs;
        const float *wp = wbase + ((int64_t)g * n_gs + z) * (D + 2);
        ml[2 * i] = __ldcg(wp);
        ml[2 * i + 1] = __ldcg(wp + 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += DATT_THREADS) {
        const int g = i / D, d = i - g * D;
        const float *wg = wbase + (int64_t)g * n_gs * (D + 2);
        const float *mg = ml + 2 * g * n_gs;
        float M = -INFINITY;
        for (int z = 0; z < n_gs; z++) M = fmaxf(M, mg[2 * z]);
        float L = 0.f, A = 0.f;
        for (int z = 0; z < n_gs; z++) {
            const float mz = mg[2 * z];
            if (mz == -INFINITY) continue;
            const float e = exp2f(mz - M);
            L += mg[2 * z + 1] * e;
            A += __ldcg(wg + z * (D + 2) + 2 + d) * e;
        }
        out[i] = from_f<T>(L > 0.f ? A / L : 0.f);
    }
}

template <typename T, int D, int G>
__global__ void __launch_bounds__(DATT_THREADS) dattn_kernel(struct dattn_params P)
{
    dattn_body<T, D, G, 1>(P);
}

template <typename T, int D, int G, int CL>
__global__ void __cluster_dims__(CL, 1, 1) __launch_bounds__(DATT_THREADS) dattn_cluster_kernel(struct dattn_params P)
{
    dattn_body<T, D, G, CL>(P);
}

template <typename T, int D, int G>
static void dattn_launch_g(struct cuda_ctx *c, const struct dattn_params *P, dim3 grid, int cl)
{
    switch (cl) {
    case 1: cuda_launch(c, dattn_kernel<T, D, G>, grid, dim3(DATT_THREADS), 0, *P); break;
    case 2: cuda_launch(c, dattn_cluster_kernel<T, D, G, 2>, grid, dim3(DATT_THREADS), 0, *P); break;
    case 4: cuda_launch(c, dattn_cluster_kernel<T, D, G, 4>, grid, dim3(DATT_THREADS), 0, *P); break;
    default: cuda_launch(c, dattn_cluster_kernel<T, D, G, 8>, grid, dim3(DATT_THREADS), 0, *P); break;
    }
}

template <typename T, int D>
static void dattn_launch_d(struct cuda_ctx *c, const struct dattn_params *P, dim3 grid, int G, int cl)
{
    switch (G) {
    case 1: dattn_launch_g<T, D, 1>(c, P, grid, cl); break;
    case 2: dattn_launch_g<T, D, 2>(c, P, grid, cl); break;
    case 3: dattn_launch_g<T, D, 3>(c, P, grid, cl); break;
    case 4: dattn_launch_g<T, D, 4>(c, P, grid, cl); break;
    case 5: dattn_launch_g<T, D, 5>(c, P, grid, cl); break;
    case 6: dattn_launch_g<T, D, 6>(c, P, grid, cl); break;
    case 7: dattn_launch_g<T, D, 7>(c, P, grid, cl); break;
    default: dattn_launch_g<T, D, 8>(c, P, grid, cl); break;
    }
}

template <typename T>
static void dattn_launch(struct cuda_ctx *c, const struct dattn_params *P, dim3 grid, int G, int cl)
{
    if (P->head_dim == 64) dattn_launch_d<T, 64>(c, P, grid, G, cl);
    else dattn_launch_d<T, 128>(c, P, grid, G, cl);
}

/* The tuning variables (LOOM_CUDA_DECODE_ATTN, LOOM_CUDA_DATT_MIN_ROWS, _CL_ROWS, _MAX_CL, _EARLY): read once,
 * or at every call where LOOM_CUDA_DATT_LIVE=1 was set at the first (tests change them between calls). */
static int dattn_env(const char *name, int def)
{
    const char *e = getenv(name);
    return e && *e ? atoi(e) : def;
}

struct dattn_knobs {
    int enabled, min_rows, cl_rows, max_cl, early; /* min_rows < 0: two rounds of rows */
};

static struct dattn_knobs dattn_knobs_get(void)
{
    static int live = -1;
    static struct dattn_knobs k;
    if (live < 0 || live) {
        if (live < 0) live = dattn_env("LOOM_CUDA_DATT_LIVE", 0) == 1;
        k.enabled = dattn_env("LOOM_CUDA_DECODE_ATTN", 1);
        k.min_rows = dattn_env("LOOM_CUDA_DATT_MIN_ROWS", -1);
        k.cl_rows = dattn_env("LOOM_CUDA_DATT_CL_ROWS", 16);
        k.max_cl = dattn_env("LOOM_CUDA_DATT_MAX_CL", 8);
        k.early = dattn_env("LOOM_CUDA_DATT_EARLY", 1) != 0; /* see dattn_body: a gain once launched early */
    }
    return k;
}

static bool dattn_aligned16(const void *p)
{
    return ((uintptr_t)p & 15) == 0;
}

bool cuda_decode_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor qkv,
                           const int32_t *positions, const int32_t *slot_mapping, int n_heads, int n_kv_heads,
                           int head_dim, struct loom_tensor inv_freq, const struct loom_tensor *q_norm,
                           const struct loom_tensor *k_norm, float eps, struct loom_tensor k_cache,
                           struct loom_tensor v_cache, const struct loom_attn_meta *meta, float scale,
                           int sliding_window)
{
    const struct dattn_knobs knobs = dattn_knobs_get();
    if (!knobs.enabled) return false; /* LOOM_CUDA_DECODE_ATTN=0: the separate ops (an A/B switch) */
    /* the shapes this kernel takes; anything else goes the separate ops' way */
    const enum loom_dtype dt = qkv.dtype;
    if (!meta || meta->max_query_len != 1 || meta->n_tokens != meta->n_seqs || meta->n_seqs <= 0) return false;
    if (dt != LOOM_DTYPE_BF16 && dt != LOOM_DTYPE_F16) return false;
    if (out.dtype != dt || k_cache.dtype != dt || v_cache.dtype != dt) return false;
    if (head_dim != 64 && head_dim != 128) return false;
    if (meta->n_seqs > 65535) return false; /* grid.z */
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads) return false;
    const int G = n_heads / n_kv_heads;
    if (G > 8) return false;
    if ((q_norm == NULL) != (k_norm == NULL)) return false;
    if (q_norm && (q_norm->rows * q_norm->cols != head_dim || k_norm->rows * k_norm->cols != head_dim ||
                   !cuda_is_float_dtype(q_norm->dtype) || !cuda_is_float_dtype(k_norm->dtype)))
        return false;
    if (inv_freq.dtype != LOOM_DTYPE_F32 || inv_freq.rows * inv_freq.cols != head_dim / 2) return false;
    const int n = meta->n_seqs;
    const int64_t kw = (int64_t)n_kv_heads * head_dim;
    if (qkv.rows < n || out.rows < n || qkv.cols < (int64_t)n_heads * head_dim + 2 * kw ||
        out.cols < (int64_t)n_heads * head_dim || k_cache.cols < kw || v_cache.cols < kw)
        return false;
    const size_t es = loom_dtype_size(dt);
    if (k_cache.stride * es % 16 || v_cache.stride * es % 16 || !dattn_aligned16(k_cache.data) ||
        !dattn_aligned16(v_cache.data) || meta->block_size <= 0)
        return false;

    struct cuda_ctx *c = cuda_ctx_of(be);
    struct dattn_params P;
    memset(&P, 0, sizeof P); /* padding too: launches are recorded and compared as bytes */
    P.out = out.data;
    P.qkv = qkv.data;
    P.kc = k_cache.data;
    P.vc = v_cache.data;
    P.qkv_stride = qkv.stride;
    P.out_stride = out.stride;
    P.k_stride = k_cache.stride;
    P.v_stride = v_cache.stride;
    P.positions = positions;
    P.slots = slot_mapping;
    P.seq_lens = meta->seq_lens;
    P.block_tables = meta->block_tables;
    P.inv_freq = (const float *)inv_freq.data;
    P.qn = q_norm ? q_norm->data : NULL;
    P.kn = k_norm ? k_norm->data : NULL;
    P.qndt = q_norm ? (int)q_norm->dtype : 0;
    P.kndt = k_norm ? (int)k_norm->dtype : 0;
    P.eps = eps;
    P.scale_log2 = scale * DATT_LOG2E;
    P.n_heads = n_heads;
    P.n_kv_heads = n_kv_heads;
    P.head_dim = head_dim;
    P.block_size = meta->block_size;
    P.max_blocks = meta->max_blocks_per_seq;
    P.window = sliding_window;
    P.early = knobs.early;
    P.trigger = c->pdl_trigger;
    P.ws = c->attn_ws;
    P.counters = c->attn_counters;

    /* Split the context over blocks where the (sequence, KV head) blocks alone leave most SMs idle:
     * first over a cluster of up to 8 blocks (merged through distributed shared memory, cheap) while
     * each keeps DATT_CL_ROWS rows, then over clusters (merged through attn_ws and a counter) while
     * each keeps two rounds of rows. Powers of two from max_seq_len: consecutive decode steps launch
     * the same grid, and every block finds its own range from seq_lens on the GPU. The LOOM_CUDA_DATT_*
     * variables override the thresholds (tuning and tests). */
    const int64_t blocks = (int64_t)n * n_kv_heads;
    int max_len = meta->max_seq_len;
    if (sliding_window > 0 && max_len > sliding_window) max_len = sliding_window;
    const int rows_round = DATT_WARPS * (32 / (head_dim / 8)) * DATT_U;
    const size_t per_split = (size_t)n * n_heads * (head_dim + 2) * sizeof(float);
    const int min_rows = knobs.min_rows >= 0 ? knobs.min_rows : 2 * rows_round;
    const int cl_rows = knobs.cl_rows, max_cl = knobs.max_cl;
    int cl = 1;
    while (c->cc_major >= 9 && cl < 8 && cl * 2 <= max_cl && blocks * cl * 2 <= (int64_t)c->sm_count && max_len / (cl * 2) >= cl_rows)
        cl *= 2;
    int gs = 1;
    while (cl * gs < DATT_MAX_SPLITS && blocks * cl * gs * 2 <= (int64_t)c->sm_count &&
           max_len / (cl * gs * 2) >= min_rows && per_split * gs * 2 <= LOOM_CUDA_ATTN_WS_BYTES &&
           blocks <= LOOM_CUDA_ATTN_COUNTERS)
        gs *= 2;
    P.n_splits = cl * gs;
    dim3 grid((unsigned)(cl * gs), (unsigned)n_kv_heads, (unsigned)n);
    if (dt == LOOM_DTYPE_BF16) dattn_launch<__nv_bfloat16>(c, &P, grid, G, cl);
    else dattn_launch<__half>(c, &P, grid, G, cl);
    return true;
}
