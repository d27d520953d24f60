/* dtype.c: dtype names and sizes, fp16 conversions. */
#include "core/dtype.h"
#include "core/error.h"

static const struct {
    const char *name;
    size_t size;
} dtype_info[LOOM_DTYPE_COUNT] = {
    [LOOM_DTYPE_F32] = {"F32", 4}, [LOOM_DTYPE_F16] = {"F16", 2}, [LOOM_DTYPE_BF16] = {"BF16", 2},
    [LOOM_DTYPE_I32] = {"I32", 4}, [LOOM_DTYPE_I64] = {"I64", 8}, [LOOM_DTYPE_I8] = {"I8", 1},
    [LOOM_DTYPE_U8] = {"U8", 1},   [LOOM_DTYPE_BOOL] = {"BOOL", 1}, [LOOM_DTYPE_F64] = {"F64", 8},
};

size_t loom_dtype_size(enum loom_dtype t)
{
    return (unsigned)t < LOOM_DTYPE_COUNT ? dtype_info[t].size : 0;
}

const char *loom_dtype_name(enum loom_dtype t)
{
    return (unsigned)t < LOOM_DTYPE_COUNT ? dtype_info[t].name : "?";
}

int loom_dtype_from_name(const char *name, enum loom_dtype *out)
{
    for (int i = 0; i < LOOM_DTYPE_COUNT; i++) {
        if (!strcmp(name, dtype_info[i].name)) {
            *out = (enum loom_dtype)i;
            return 0;
        }
    }
    return loom_fail(LOOM_EINVAL, "unknown dtype '%s'", name);
}

float loom_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t loom_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t man = u & 0x7fffff;
    if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* may carry into the exponent: correct */
    return (uint16_t)h;
}

void loom_convert_to_f32(float *dst, const void *src, enum loom_dtype st, size_t n)
{
    switch (st) {
    case LOOM_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case LOOM_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = loom_bf16_to_f32(((const uint16_t *)src)[i]);
        break;
    case LOOM_DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = loom_f16_to_f32(((const uint16_t *)src)[i]);
        break;
    case LOOM_DTYPE_F64:
        for (size_t i = 0; i < n; i++) dst[i] = (float)((const double *)src)[i];
        break;
    default: LOOM_DIE("loom_convert_to_f32: unsupported dtype %s", loom_dtype_name(st));
    }
}

void loom_convert_from_f32(void *dst, enum loom_dtype dt, const float *src, size_t n)
{
    switch (dt) {
    case LOOM_DTYPE_F32: memcpy(dst, src, n * 4); break;
    case LOOM_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = loom_f32_to_bf16(src[i]);
        break;
    case LOOM_DTYPE_F16:
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = loom_f32_to_f16(src[i]);
        break;
    default: LOOM_DIE("loom_convert_from_f32: unsupported dtype %s", loom_dtype_name(dt));
    }
}
