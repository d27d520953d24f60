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
/* cuBLAS workspace (set explicitly so that graph capture never allocates). */
#define LOOM_CUDA_CUBLAS_WS_BYTES (32u << 20)

struct cuda_ctx {
    int device;
    int sm_count;
    size_t smem_optin;           /* largest dynamic shared memory a block may ask for */
    cudaStream_t stream;
    cublasHandle_t cublas;
    cublasLtHandle_t cublaslt;
    void *cublas_ws;             /* [LOOM_CUDA_CUBLAS_WS_BYTES] */
    float *attn_ws;              /* [LOOM_CUDA_ATTN_WS_BYTES / 4] split-softmax partials */
    bool f32_exact;              /* F32 matmuls in true fp32 (no TF32) */
};

static inline struct cuda_ctx *cuda_ctx_of(struct loom_backend *be)
{
    return (struct cuda_ctx *)be->ctx;
}

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
void cuda_silu_mul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor gate, struct loom_tensor up);
void cuda_add(struct loom_backend *be, struct loom_tensor x, struct loom_tensor y);
void cuda_gather_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, const int32_t *idx);
void cuda_scatter_add_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, const int32_t *idx,
                           const float *weight);
void cuda_moe_route(struct loom_backend *be, struct loom_tensor logits, int k, bool renormalize, int32_t *ids,
                    float *weights);
void cuda_convert(struct loom_backend *be, struct loom_tensor dst, struct loom_tensor src);
void cuda_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor q, struct loom_tensor k_cache,
                    struct loom_tensor v_cache, const struct loom_attn_meta *meta, int n_heads, int n_kv_heads,
                    int head_dim, float scale, int sliding_window);
void cuda_attention_init(struct cuda_ctx *c);

#endif
