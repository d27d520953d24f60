/*
 * cuda_common.h: what the CUDA backend's .cu files share: the backend context, error checks, element
 * loads and stores in any activation/weight dtype, and the launchers each file defines.
 *
 * Every CUDA and cuBLAS call goes through CUDA_CHECK / CUBLAS_CHECK, which abort with file:line and the
 * error string (a dead device is not an input error). Kernels read and write F32, F16 and BF16; the
 * arithmetic is always fp32. This header is CUDA C++ (only .cu files include it).
 */
#ifndef LOOM_BACKEND_CUDA_COMMON_H
#define LOOM_BACKEND_CUDA_COMMON_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <string.h>

extern "C" {
#include "backend/backend.h"
#include "core/error.h"
}

#define CUDA_CHECK(x)                                                                                    \
    do {                                                                                                 \
        cudaError_t err_ = (x);                                                                          \
        if (err_ != cudaSuccess) loom_die(__FILE__, __LINE__, "CUDA: %s: %s", #x, cudaGetErrorString(err_)); \
    } while (0)

#define CUBLAS_CHECK(x)                                                                                  \
    do {                                                                                                 \
        cublasStatus_t st_ = (x);                                                                        \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                                \
            loom_die(__FILE__, __LINE__, "cuBLAS: %s: %s", #x, cublasGetStatusString(st_));              \
    } while (0)

/* After every launch: launch-configuration errors surface here, at the launch's own line. */
#define CUDA_LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())

/* Bytes of the split-softmax workspace for decode attention (partial max, sum and output rows). */
#define LOOM_CUDA_ATTN_WS_BYTES (64u << 20)
/* Completion counters of split attention (c->attn_counters): one per (token, KV head) at most. */
#define LOOM_CUDA_ATTN_COUNTERS 4096
/* Page-locked staging: a step's metadata uploads and its logits download go through it (a copy from
 * pageable memory is synchronous and slower). */
#define LOOM_CUDA_PINNED_BYTES (16u << 20)
/* cuBLAS workspace (set explicitly so that graph capture never allocates). */
#define LOOM_CUDA_CUBLAS_WS_BYTES (32u << 20)

/* ---- launch recording and graph replay (cuda_graph.cu) ----
 * With graphs on, kernel launches and cuBLAS products are not issued at once: each op appends a record
 * (function, grid, block, shared memory, a copy of its arguments) to the pending segment. The segment is
 * issued at the next host-visible point (upload, download, synchronize, free): replayed as one CUDA graph
 * when an identical segment (same kernels, same arguments) has been seen before, else launched op by
 * op. A decode step whose batch keeps its shape is such a repeat: its metadata changes only in device
 * memory, so its launches are byte-for-byte the same. */
#define CUDA_REC_MAX_ARGS 24
enum { CUDA_REC_KERNEL = 0, CUDA_REC_GEMM = 1 };

struct cuda_rec {
    int kind, n_args;
    const void *func;          /* the kernel's host stub (CUDA_REC_KERNEL) */
    unsigned grid[3], block[3];
    unsigned smem;
    uint32_t off;              /* the arguments start at blob + off */
    uint16_t arg_off[CUDA_REC_MAX_ARGS]; /* each argument's offset from off */
};

struct cuda_gemm_args {        /* a cublasGemmEx call (alpha 1, beta 0) */
    cublasOperation_t ta, tb;
    int m, n, k;
    const void *a, *b;
    void *c;
    cudaDataType_t at, bt, ct;
    int lda, ldb, ldc;
    cublasComputeType_t compute;
};

struct cuda_graph_entry {
    uint64_t hash, last_use;
    int n_recs;
    size_t blob_len;
    struct cuda_rec *recs;     /* the segment this graph replays, for the exact comparison */
    unsigned char *blob;
    cudaGraphExec_t exec;
};

#define CUDA_GRAPH_CACHE 24
#define CUDA_GRAPH_SEEN 64
#define CUDA_GRAPH_MIN_OPS 4   /* shorter segments are launched directly */

struct cuda_ctx {
    int device;
    int sm_count;
    int cc_major;                /* compute capability (9: Hopper: clusters, PDL) */
    size_t smem_optin;           /* largest dynamic shared memory a block may ask for */
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t cublaslt;
    void *cublas_ws;             /* [LOOM_CUDA_CUBLAS_WS_BYTES] */
    float *attn_ws;              /* [LOOM_CUDA_ATTN_WS_BYTES / 4] split-softmax partials */
    int *attn_counters;          /* [LOOM_CUDA_ATTN_COUNTERS] split-attention completion counters, zero between launches */
    unsigned char *pinned;       /* [LOOM_CUDA_PINNED_BYTES] page-locked staging for uploads and downloads */
    size_t pinned_used;          /* bytes of it that queued uploads still read (reset when the stream drains) */
    bool f32_exact;              /* F32 matmuls in true fp32 (no TF32) */
    bool tc_attn;                /* prefill attention on tensor cores (cuda_attention_tc.cu; LOOM_CUDA_TC_ATTN=0: off) */
    void *sample_buf;            /* cuda_sample.cu: its rows, edits and tokens (grown on demand) */
    size_t sample_cap;

    bool graphs;                 /* record and replay (LOOM_CUDA_GRAPHS=0 turns it off) */
    bool pdl;                    /* launch recorded kernels with programmatic dependent launch (LOOM_CUDA_PDL=0: off) */
    bool pdl_trigger;            /* kernels that call PDL_TRIGGER do (LOOM_CUDA_PDL_TRIGGER=0: off) */
    struct cuda_rec *recs;       /* [cap_recs] the pending segment */
    int n_recs, cap_recs;
    unsigned char *blob;         /* [blob_cap] its arguments */
    size_t blob_len, blob_cap;
    struct cuda_graph_entry cache[CUDA_GRAPH_CACHE];
    uint64_t seen[CUDA_GRAPH_SEEN]; /* hashes of segments issued once, not yet graphs */
    int n_seen;
    uint64_t tick;
    long long graph_replays, graph_builds, direct_segments; /* counters, for logs and tests */

    /* LOOM_CUDA_PROFILE=1: every segment is launched op by op between events and timed (slow; a
     * development aid): per-kernel totals print at destroy. */
    bool profile;
    cudaEvent_t *prof_ev;        /* [2 * REC_CAP] */
    struct cuda_prof_row { const void *func; const char *name; long long count; double ms; } prof[96];
    int n_prof;
};

/* The CUDA runtime's current device is per host thread, and the engine runs the model on a thread of
 * its own: every entry point that touches the device makes the backend's device current (cached per
 * thread, so a steady step pays one comparison). */
static inline void cuda_use_device(const struct cuda_ctx *c)
{
    static thread_local int current = -1;
    if (current != c->device) {
        CUDA_CHECK(cudaSetDevice(c->device));
        current = c->device;
    }
}

static inline struct cuda_ctx *cuda_ctx_of(struct loom_backend *be)
{
    struct cuda_ctx *c = (struct cuda_ctx *)be->ctx;
    cuda_use_device(c);
    return c;
}

/* Programmatic dependent launch (Hopper; LOOM_CUDA_PDL=0 turns it off): kernels are launched with the PDL attribute,
 * so the next kernel's launch overlaps this one's end, and each waits (griddepcontrol.wait) for its
 * predecessor's completion and writes before touching memory. Without the attribute the wait is a
 * no-op. An early trigger (launch_dependents at the top) measured slower on H100 (1.94 vs 1.80 ms per
 * decode step), so completion is the trigger; this way 1.73 vs 1.82 ms without PDL. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_PROLOGUE() asm volatile("griddepcontrol.wait;" ::: "memory")
#else
#define PDL_PROLOGUE() ((void)0)
#endif

/* Lets the next kernel launch now (its blocks start, fetch what does not depend on this kernel, e.g.
 * weights, and wait in their PDL_PROLOGUE). Called right after this kernel's own wait, so at most one
 * kernel waits ahead. Kernels whose successor prefetches weights call it (GEMVs, decode attention):
 * 0.880 -> 0.853 ms per Qwen2-0.5B decode step at batch 1 (device run s3/18). An earlier try that
 * triggered every kernel at its top, before anything prefetched, measured slower. */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PDL_TRIGGER() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_TRIGGER() ((void)0)
#endif

/* ---- element access in any float dtype (F32 = 0, F16 = 1, BF16 = 2, as enum loom_dtype) ---- */
__device__ __forceinline__ float ld_f(const void *p, int dt, int64_t i)
{
    if (dt == LOOM_DTYPE_BF16) return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    if (dt == LOOM_DTYPE_F16) return __half2float(((const __half *)p)[i]);
    return ((const float *)p)[i];
}

__device__ __forceinline__ void st_f(void *p, int dt, int64_t i, float v)
{
    if (dt == LOOM_DTYPE_BF16)
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
    else if (dt == LOOM_DTYPE_F16)
        ((__half *)p)[i] = __float2half_rn(v);
    else
        ((float *)p)[i] = v;
}

/* Typed versions for kernels templated on one element type. */
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

void cuda_rec_init(struct cuda_ctx *c);
void cuda_rec_free(struct cuda_ctx *c);
void cuda_prof_add(struct cuda_ctx *c, const void *func, const char *name, double ms);
/* Issues the pending segment (a graph replay, a new graph, or op by op). */
void cuda_flush(struct cuda_ctx *c);
struct cuda_rec *cuda_rec_new(struct cuda_ctx *c, int kind, const void *func, dim3 grid, dim3 block, unsigned smem);
void *cuda_rec_arg(struct cuda_ctx *c, struct cuda_rec *r, size_t size, size_t align);
/* A product through cuBLAS: recorded with graphs on, else issued now. */
void cuda_gemm(struct cuda_ctx *c, const struct cuda_gemm_args *g);

template <typename T> static inline void cuda_rec_put(struct cuda_ctx *c, struct cuda_rec *r, T v)
{
    memcpy(cuda_rec_arg(c, r, sizeof(T), alignof(T)), &v, sizeof(T));
}

/* Every kernel launch of the backend: kern<<<grid, block, smem, stream>>>(args...), or its record. */
template <typename... KA, typename... A>
static inline void cuda_launch(struct cuda_ctx *c, void (*kern)(KA...), dim3 grid, dim3 block, size_t smem,
                               A... args)
{
    static_assert(sizeof...(KA) == sizeof...(A), "kernel argument count");
    static_assert(sizeof...(KA) <= CUDA_REC_MAX_ARGS, "too many kernel arguments");
    if (!c->graphs) {
        kern<<<grid, block, smem, c->stream>>>(args...);
        CUDA_LAUNCH_CHECK();
        return;
    }
    struct cuda_rec *r = cuda_rec_new(c, CUDA_REC_KERNEL, (const void *)kern, grid, block, (unsigned)smem);
    (cuda_rec_put<KA>(c, r, static_cast<KA>(args)), ...);
}

/* 16 bytes of 16-bit floats -> 8 floats (the third argument only picks the type) */
__device__ __forceinline__ void unpack8(uint4 v, float *f, const __nv_bfloat16 *)
{
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

__device__ __forceinline__ void unpack8(uint4 v, float *f, const __half *)
{
    const __half2 *h = (const __half2 *)&v;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

/* 16 bytes of T -> 16 / sizeof(T) floats */
template <typename T> __device__ __forceinline__ void unpack16(uint4 v, float *f)
{
    if constexpr (sizeof(T) == 4) {
        f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y), f[2] = __uint_as_float(v.z);
        f[3] = __uint_as_float(v.w);
    } else {
        unpack8(v, f, (const T *)0);
    }
}

static inline bool cuda_is_float_dtype(enum loom_dtype t)
{
    return t == LOOM_DTYPE_F32 || t == LOOM_DTYPE_F16 || t == LOOM_DTYPE_BF16;
}

/* ---- launchers (cuda_matmul.cu, cuda_kernels.cu, cuda_attention.cu) ---- */
void cuda_matmul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                 const struct loom_tensor *bias);
void cuda_embedding(struct loom_backend *be, struct loom_tensor out, struct loom_tensor table, const int32_t *ids);
void cuda_rmsnorm(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, struct loom_tensor weight,
                  float eps);
void cuda_add_rmsnorm(struct loom_backend *be, struct loom_tensor residual, struct loom_tensor x,
                      struct loom_tensor out, struct loom_tensor weight, float eps);
void cuda_rope(struct loom_backend *be, struct loom_tensor x, const int32_t *positions, int n_heads, int head_dim,
               struct loom_tensor inv_freq);
void cuda_kv_store(struct loom_backend *be, struct loom_tensor k_cache, struct loom_tensor v_cache,
                   struct loom_tensor k, struct loom_tensor v, const int32_t *slot_mapping);
void cuda_qkv_rope_store(struct loom_backend *be, struct loom_tensor qkv, const int32_t *positions,
                         const int32_t *slot_mapping, int n_heads, int n_kv_heads, int head_dim,
                         struct loom_tensor inv_freq, const struct loom_tensor *q_norm, const struct loom_tensor *k_norm,
                         float eps, struct loom_tensor k_cache, struct loom_tensor v_cache); /* cuda_rope_kv.cu */
void cuda_silu_mul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor gate, struct loom_tensor up);
void cuda_add(struct loom_backend *be, struct loom_tensor x, struct loom_tensor y);
void cuda_gather_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, const int32_t *idx);
void cuda_scatter_add_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, const int32_t *idx,
                           const float *weight);
void cuda_moe_route(struct loom_backend *be, struct loom_tensor logits, int k, bool renormalize, int32_t *ids,
                    float *weights);
void cuda_convert(struct loom_backend *be, struct loom_tensor dst, struct loom_tensor src);
/* cuda_moe.cu */
void cuda_moe_experts(struct loom_backend *be, struct loom_tensor x, struct loom_tensor h, const int32_t *ids,
                      const float *weights, int k, const struct loom_moe_experts *ex, void *ws);
size_t cuda_moe_workspace_bytes(struct loom_backend *be, int max_rows, int k, int n_experts, int hidden, int inter);
void cuda_sample(struct loom_backend *be, struct loom_tensor logits, const struct loom_sample_row *rows, int n,
                 const struct loom_logit_edit *edits, int n_edits, int32_t *tokens, struct loom_sample_logprob *lps);
void cuda_sample_reserve(struct loom_backend *be, int max_rows, int vocab);
void cuda_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor q, struct loom_tensor k_cache,
                    struct loom_tensor v_cache, const struct loom_attn_meta *meta, int n_heads, int n_kv_heads,
                    int head_dim, float scale, int sliding_window);
void cuda_attention_init(struct cuda_ctx *c);
bool cuda_matmul_fused(struct loom_backend *be, const struct loom_matmul_fused *f); /* cuda_matmul.cu */
/* cuda_attention_decode.cu */
bool cuda_decode_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor qkv,
                           const int32_t *positions, const int32_t *slot_mapping, int n_heads, int n_kv_heads,
                           int head_dim, struct loom_tensor inv_freq, const struct loom_tensor *q_norm,
                           const struct loom_tensor *k_norm, float eps, struct loom_tensor k_cache,
                           struct loom_tensor v_cache, const struct loom_attn_meta *meta, float scale,
                           int sliding_window);

/* The arguments of both paged-attention kernels (filled once by cuda_attention, passed by value; the
 * split fields only matter to the per-token kernel). */
struct cuda_attn_params {
    void *out;
    const void *q, *kc, *vc;
    int64_t q_stride, out_stride, k_stride, v_stride; /* elements between rows */
    const int32_t *query_start, *seq_lens, *block_tables;
    int n_seqs, block_size, max_blocks;
    int n_heads, n_kv_heads, head_dim, group;
    float scale;
    int window;
    int n_splits;
    int vec;       /* K/V rows 16-byte aligned: load them 16 bytes at a time */
    float *ws;     /* [n_tokens, n_heads, n_splits, head_dim + 2] when n_splits > 1 */
    int *counters; /* [n_tokens * n_kv_heads] zero between launches: splits done so far */
};

/* cuda_attention_tc.cu: the tensor-core prefill path; false when the step or shapes are not its own */
void cuda_attention_tc_init(struct cuda_ctx *c);
bool cuda_attention_tc(struct cuda_ctx *c, const struct cuda_attn_params *P, const struct loom_attn_meta *meta,
                       enum loom_dtype dtype);

#endif
