/*
 * cpu_internal.h: what the CPU backend's files share: its state, the kernel levels chosen at run
 * time, and small helpers. Not for use outside src/backend/cpu.
 *
 * Activations are always F32 here (be->act_dtype == F32). Asking for BF16 activations (--dtype
 * bfloat16) keeps them F32 in memory but lets the matmul round x to bf16 and use avx512_bf16 dot
 * products (vdpbf16ps) for bf16 weights: faster prefill, no longer fp32-exact. Weights may be
 * F32, F16 or BF16 and sit at any alignment (they are the mmapped file itself).
 */
#ifndef LOOM_BACKEND_CPU_INTERNAL_H
#define LOOM_BACKEND_CPU_INTERNAL_H

#include "backend/backend.h"
#include "core/error.h"
#include "core/threadpool.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* Instruction-set levels, best last. LOOM_CPU_ISA=portable|avx2|avx512 caps the level (tests). */
enum cpu_isa { CPU_ISA_PORTABLE = 0, CPU_ISA_AVX2, CPU_ISA_AVX512 };

struct cpu_ctx {
    struct loom_threadpool *tp;
    enum cpu_isa isa;
    bool has_bf16_dot;   /* avx512_bf16 present (and isa == AVX512) */
    bool bf16_matmul;    /* fast mode: bf16-rounded activations in matmuls with bf16 weights */
    /* Scratch for the bf16 fast mode (x rounded to bf16). Grows on first use of a larger shape,
     * so the step loop stops allocating after the first step of each size. */
    void *scratch;
    size_t scratch_bytes;
};

static inline struct cpu_ctx *cpu_ctx(struct loom_backend *be)
{
    return (struct cpu_ctx *)be->ctx;
}

/* Element i of a float tensor (F32, F16 or BF16) as float; src points at element 0. */
static inline float cpu_load_f(const void *src, enum loom_dtype t, int64_t i)
{
    switch (t) {
    case LOOM_DTYPE_F32: {
        float f;
        memcpy(&f, (const char *)src + i * 4, 4);
        return f;
    }
    case LOOM_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, (const char *)src + i * 2, 2);
        return loom_bf16_to_f32(h);
    }
    case LOOM_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, (const char *)src + i * 2, 2);
        return loom_f16_to_f32(h);
    }
    default: LOOM_DIE("cpu backend: unsupported float dtype %s", loom_dtype_name(t));
    }
}

/* Row r of x as a pointer. */
static inline void *cpu_row(struct loom_tensor x, int64_t r)
{
    return (char *)x.data + (size_t)(r * x.stride) * loom_dtype_size(x.dtype);
}

static inline bool cpu_is_float(enum loom_dtype t)
{
    return t == LOOM_DTYPE_F32 || t == LOOM_DTYPE_F16 || t == LOOM_DTYPE_BF16;
}

/* n elements of a float row (any float dtype, any alignment) to F32. */
void cpu_row_to_f32(float *dst, const void *src, enum loom_dtype t, int64_t n);

/* Vectorized kernels with run-time dispatch (cpu_simd.c). */
float cpu_dot_f32(enum cpu_isa isa, const float *a, const float *b, int n);
void cpu_axpy_f32(enum cpu_isa isa, float *y, float a, const float *x, int n); /* y += a * x */
void cpu_scale_f32(enum cpu_isa isa, float *y, float a, int n);                /* y *= a */
/* out[i] = silu(g[i]) * u[i] */
void cpu_silu_mul_f32(enum cpu_isa isa, float *out, const float *g, const float *u, int n);
/* x[i] = exp(x[i] - m); returns the sum */
float cpu_exp_sub_sum_f32(enum cpu_isa isa, float *x, float m, int n);

/* matmul (cpu_matmul.c) and attention (cpu_attention.c): the ops table entries. */
void cpu_matmul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x, struct loom_tensor w,
                const struct loom_tensor *bias);
void cpu_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor q,
                   struct loom_tensor k_cache, struct loom_tensor v_cache, const struct loom_attn_meta *meta,
                   int n_heads, int n_kv_heads, int head_dim, float scale, int sliding_window);

#endif
