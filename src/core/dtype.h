/*
 * dtype.h: element types of tensors and the scalar conversions between them.
 * bf16 is the top half of an fp32; fp16 is IEEE half. Conversions round to nearest even.
 */
#ifndef LOOM_CORE_DTYPE_H
#define LOOM_CORE_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum loom_dtype {
    LOOM_DTYPE_F32 = 0,
    LOOM_DTYPE_F16,
    LOOM_DTYPE_BF16,
    LOOM_DTYPE_I32,
    LOOM_DTYPE_I64,
    LOOM_DTYPE_I8,
    LOOM_DTYPE_U8,
    LOOM_DTYPE_BOOL,
    LOOM_DTYPE_F64,
    LOOM_DTYPE_COUNT
};

size_t loom_dtype_size(enum loom_dtype t);
const char *loom_dtype_name(enum loom_dtype t);          /* safetensors spelling: "F32", "BF16", ... */
int loom_dtype_from_name(const char *name, enum loom_dtype *out); /* 0 or LOOM_EINVAL */

static inline float loom_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t loom_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float loom_f16_to_f32(uint16_t h);
uint16_t loom_f32_to_f16(float f);

/* Converts n elements of src (dtype st) to float32. */
void loom_convert_to_f32(float *dst, const void *src, enum loom_dtype st, size_t n);
/* Converts n float32 to dt (F32, F16 or BF16). */
void loom_convert_from_f32(void *dst, enum loom_dtype dt, const float *src, size_t n);

#endif
