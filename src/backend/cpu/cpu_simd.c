/*
 * cpu_simd.c: small vector kernels (dot, axpy, exp, silu) in three versions: AVX-512, AVX2+FMA and
 * portable C, picked by the caller's isa level. The AVX versions are compiled with target
 * attributes, so the build needs no -march flag and the binary runs on any x86-64.
 * exp is the Cephes single-precision polynomial (about 2 ulp), accurate far beyond what the
 * model's 1e-3 logit tolerance needs. Inputs need no alignment.
 */
#include "backend/cpu/cpu_internal.h"

#include <math.h>

void cpu_row_to_f32(float *dst, const void *src, enum loom_dtype t, int64_t n)
{
    switch (t) {
    case LOOM_DTYPE_F32: memcpy(dst, src, (size_t)n * 4); break;
    case LOOM_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, (const char *)src + i * 2, 2);
            dst[i] = loom_bf16_to_f32(h);
        }
        break;
    case LOOM_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, (const char *)src + i * 2, 2);
            dst[i] = loom_f16_to_f32(h);
        }
        break;
    default: LOOM_DIE("cpu backend: unsupported float dtype %s", loom_dtype_name(t));
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* portable */

static float dot_c(const float *a, const float *b, int n)
{
    float s[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

static inline float silu_c(float g)
{
    return g / (1.0f + expf(-g));
}

#if defined(__x86_64__)
#include "backend/cpu/cpu_avx512.h"

/* ---------------------------------------------------------------------------------------------- */
/* AVX-512 */


T512 static float dot_512(const float *a, const float *b, int n)
{
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

T512 static void axpy_512(float *y, float a, const float *x, int n)
{
    __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m,
                              _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

T512 static void scale_512(float *y, float a, int n)
{
    __m512 va = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(va, _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, y + i)));
    }
}

T512 static void silu_mul_512(float *out, const float *g, const float *u, int n)
{
    int i = 0;
    __m512 one = _mm512_set1_ps(1.0f);
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 vg = _mm512_maskz_loadu_ps(m, g + i), vu = _mm512_maskz_loadu_ps(m, u + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), vg));
        __m512 s = _mm512_div_ps(vg, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(s, vu));
    }
}

T512 static float exp_sub_sum_512(float *x, float mx, int n)
{
    __m512 vm = _mm512_set1_ps(mx), s = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
        e = _mm512_maskz_mov_ps(m, e);
        _mm512_mask_storeu_ps(x + i, m, e);
        s = _mm512_add_ps(s, e);
    }
    return _mm512_reduce_add_ps(s);
}

/* ---------------------------------------------------------------------------------------------- */
/* AVX2 + FMA */

#define T256 __attribute__((target("avx2,fma")))

T256 static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

T256 static inline __m256 exp256(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500E-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

T256 static float dot_256(const float *a, const float *b, int n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float r = hsum256(_mm256_add_ps(s0, s1));
    for (; i < n; i++) r += a[i] * b[i];
    return r;
}

T256 static void axpy_256(float *y, float a, const float *x, int n)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

T256 static void silu_mul_256(float *out, const float *g, const float *u, int n)
{
    int i = 0;
    __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i), vu = _mm256_loadu_ps(u + i);
        __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), vg));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(vg, _mm256_add_ps(one, e)), vu));
    }
    for (; i < n; i++) out[i] = silu_c(g[i]) * u[i];
}

T256 static float exp_sub_sum_256(float *x, float mx, int n)
{
    __m256 vm = _mm256_set1_ps(mx), s = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        s = _mm256_add_ps(s, e);
    }
    float r = hsum256(s);
    for (; i < n; i++) r += (x[i] = expf(x[i] - mx));
    return r;
}
#endif

/* ---------------------------------------------------------------------------------------------- */
/* dispatch */

float cpu_dot_f32(enum cpu_isa isa, const float *a, const float *b, int n)
{
#if defined(__x86_64__)
    if (isa == CPU_ISA_AVX512) return dot_512(a, b, n);
    if (isa == CPU_ISA_AVX2) return dot_256(a, b, n);
#endif
    return dot_c(a, b, n);
}

void cpu_axpy_f32(enum cpu_isa isa, float *y, float a, const float *x, int n)
{
#if defined(__x86_64__)
    if (isa == CPU_ISA_AVX512) return axpy_512(y, a, x, n);
    if (isa == CPU_ISA_AVX2) return axpy_256(y, a, x, n);
#endif
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void cpu_scale_f32(enum cpu_isa isa, float *y, float a, int n)
{
#if defined(__x86_64__)
    if (isa == CPU_ISA_AVX512) return scale_512(y, a, n);
#endif
    for (int i = 0; i < n; i++) y[i] *= a;
}

void cpu_silu_mul_f32(enum cpu_isa isa, float *out, const float *g, const float *u, int n)
{
#if defined(__x86_64__)
    if (isa == CPU_ISA_AVX512) return silu_mul_512(out, g, u, n);
    if (isa == CPU_ISA_AVX2) return silu_mul_256(out, g, u, n);
#endif
    for (int i = 0; i < n; i++) out[i] = silu_c(g[i]) * u[i];
}

float cpu_exp_sub_sum_f32(enum cpu_isa isa, float *x, float m, int n)
{
#if defined(__x86_64__)
    if (isa == CPU_ISA_AVX512) return exp_sub_sum_512(x, m, n);
    if (isa == CPU_ISA_AVX2) return exp_sub_sum_256(x, m, n);
#endif
    float s = 0;
    for (int i = 0; i < n; i++) s += (x[i] = expf(x[i] - m));
    return s;
}
