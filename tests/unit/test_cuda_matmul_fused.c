/*
 * test_cuda_matmul_fused.c: the CUDA backend's matmul_fused (struct loom_matmul_fused) against the
 * separate ops it replaces and against double-precision C, on random inputs.
 *
 * Forms: the RMS-norm prologue (the q|k|v product), the residual add (o and down), the SwiGLU pair
 * (gate|up) with and without the norm. For BF16 and F16, 1..4 rows, k from 64 to 4864 (one, two and
 * four warps per row), odd m, strided x rows, with and without a bias:
 * - without the norm the fused result must equal the separate ops bit for bit (same products, same
 *   rounding: matmul + add, matmul + silu_mul);
 * - with it, only the norm's summation order differs: within 4e-3 (normalized) of the separate ops;
 * - every result within 1e-2 (normalized) of the double reference;
 * - forms the op does not take (F32, 5 rows or more, a norm over k > 2048, a plain product) return
 *   false and leave the output untouched;
 * - the plain small-batch product (up to 8 rows) gives each row the bits of that row's product alone.
 * Exits 77 where no CUDA device is present.
 */
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

static struct loom_backend *be;
static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float rng_f(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)(((rng_state >> 11) & 0xffffff) / 8388608.0 - 1.0);
}

static float round_dt(enum loom_dtype dt, float v)
{
    float f;
    char raw[4];
    loom_convert_from_f32(raw, dt, &v, 1);
    loom_convert_to_f32(&f, raw, dt, 1);
    return f;
}

/* A device tensor [rows, cols] (row stride `stride`) of random values times scale, and their host
 * copy (rounded to dt). */
struct dt2 {
    struct loom_tensor t;
    float *h;
};

static struct dt2 make(enum loom_dtype dt, int64_t rows, int64_t cols, int64_t stride, float scale)
{
    struct dt2 d;
    size_t n = (size_t)(rows * stride), es = loom_dtype_size(dt);
    d.h = loom_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) d.h[i] = round_dt(dt, rng_f() * scale);
    void *raw = loom_malloc(n * es);
    loom_convert_from_f32(raw, dt, d.h, n);
    d.t = loom_tensor_2d(be->ops->alloc(be, n * es), dt, rows, cols);
    d.t.stride = stride;
    be->ops->upload(be, d.t.data, raw, n * es);
    free(raw);
    return d;
}

static struct dt2 copy_of(const struct dt2 *s)
{
    struct dt2 d = make(s->t.dtype, s->t.rows, s->t.cols, s->t.stride, 0.f);
    size_t n = (size_t)(s->t.rows * s->t.stride), es = loom_dtype_size(s->t.dtype);
    void *raw = loom_malloc(n * es);
    be->ops->download(be, raw, s->t.data, n * es);
    be->ops->upload(be, d.t.data, raw, n * es);
    memcpy(d.h, s->h, n * sizeof(float));
    free(raw);
    return d;
}

static float *get(const struct dt2 *d) /* rows x cols floats, stride dropped */
{
    size_t n = (size_t)(d->t.rows * d->t.stride), es = loom_dtype_size(d->t.dtype);
    void *raw = loom_malloc(n * es);
    float *all = loom_malloc(n * sizeof(float));
    be->ops->download(be, raw, d->t.data, n * es);
    loom_convert_to_f32(all, raw, d->t.dtype, n);
    float *out = loom_malloc((size_t)(d->t.rows * d->t.cols) * sizeof(float));
    for (int64_t r = 0; r < d->t.rows; r++)
        memcpy(out + r * d->t.cols, all + r * d->t.stride, (size_t)d->t.cols * sizeof(float));
    free(raw);
    free(all);
    return out;
}

static void drop(struct dt2 *d)
{
    be->ops->free(be, d->t.data);
    free(d->h);
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int count_diff(const float *a, const float *b, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++) c += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    return c;
}

enum form { NORM_STORE, ACCUMULATE, SILU, NORM_SILU };
static const char *form_name[] = {"norm", "accumulate", "silu", "norm+silu"};

/* One case: the fused op, the separate ops, the double reference. */
static void run_case(enum form fm, enum loom_dtype dt, int n, int k, int m, int xpad, bool with_bias)
{
    const bool norm = fm == NORM_STORE || fm == NORM_SILU, silu = fm == SILU || fm == NORM_SILU;
    const int wrows = silu ? 2 * m : m;
    const float eps = 1e-6f;
    struct dt2 x = make(dt, n, k, k + xpad, 1.f);
    struct dt2 w = make(dt, wrows, k, k, 1.f / sqrtf((float)k));
    struct dt2 nw = make(dt, 1, k, k, 1.f), bias = make(dt, 1, wrows, wrows, 0.5f);
    const struct loom_tensor *bp = with_bias && !silu ? &bias.t : NULL;
    struct dt2 res = make(dt, n, m, m, 2.f); /* the residual (ACCUMULATE) or poison-free output */

    /* fused */
    struct dt2 out_f = fm == ACCUMULATE ? copy_of(&res) : make(dt, n, m, m, 0.f);
    struct loom_matmul_fused f = {.out = out_f.t, .x = x.t, .w = w.t, .bias = bp, .norm = norm ? &nw.t : NULL,
                                  .eps = eps, .accumulate = fm == ACCUMULATE, .silu_pairs = silu};
    bool took = be->ops->matmul_fused(be, &f);
    CHECK_MSG(took, "%s %s n=%d k=%d m=%d: matmul_fused declined", form_name[fm], loom_dtype_name(dt), n, k, m);

    /* separate ops */
    struct dt2 h = make(dt, n, k, k, 0.f), prod = make(dt, n, wrows, wrows, 0.f);
    struct dt2 out_s = fm == ACCUMULATE ? copy_of(&res) : make(dt, n, m, m, 0.f);
    struct loom_tensor xin = x.t;
    if (norm) {
        be->ops->rmsnorm(be, h.t, x.t, nw.t, eps);
        xin = h.t;
    }
    if (fm == ACCUMULATE) {
        be->ops->matmul(be, prod.t, xin, w.t, bp);
        be->ops->add(be, out_s.t, prod.t);
    } else if (silu) {
        be->ops->matmul(be, prod.t, xin, w.t, NULL);
        be->ops->silu_mul(be, out_s.t, loom_tensor_cols(prod.t, 0, m), loom_tensor_cols(prod.t, m, m));
    } else {
        be->ops->matmul(be, out_s.t, xin, w.t, bp);
    }

    /* double reference, rounded where the GPU rounds */
    float *ref = loom_malloc(sizeof(float) * (size_t)n * m);
    float *hr = loom_malloc(sizeof(float) * (size_t)k);
    for (int r = 0; r < n; r++) {
        const float *xr = x.h + (size_t)r * x.t.stride;
        double ss = 0;
        for (int c = 0; c < k; c++) ss += (double)xr[c] * xr[c];
        double inv = 1.0 / sqrt(ss / k + eps);
        for (int c = 0; c < k; c++) hr[c] = norm ? round_dt(dt, (float)(xr[c] * inv * nw.h[c])) : xr[c];
        for (int j = 0; j < m; j++) {
            double y[2] = {0, 0};
            for (int p = 0; p < (silu ? 2 : 1); p++) {
                const float *wr = w.h + (size_t)(j + p * m) * k;
                for (int c = 0; c < k; c++) y[p] += (double)wr[c] * hr[c];
            }
            if (bp) y[0] += bias.h[j];
            float v;
            if (fm == ACCUMULATE) v = round_dt(dt, round_dt(dt, (float)y[0]) + res.h[(size_t)r * m + j]);
            else if (silu) {
                float g = round_dt(dt, (float)y[0]), u = round_dt(dt, (float)y[1]);
                v = round_dt(dt, (float)(g / (1.0 + exp(-(double)g)) * u));
            } else v = round_dt(dt, (float)y[0]);
            ref[(size_t)r * m + j] = v;
        }
    }

    float *gf = get(&out_f), *gs = get(&out_s);
    size_t cnt = (size_t)n * m;
    double e_ref = rel_err(gf, ref, cnt), e_sep = rel_err(gf, gs, cnt);
    CHECK_MSG(e_ref <= 1e-2, "%s %s n=%d k=%d m=%d: %.3e from the double reference", form_name[fm],
              loom_dtype_name(dt), n, k, m, e_ref);
    if (norm)
        CHECK_MSG(e_sep <= 4e-3, "%s %s n=%d k=%d m=%d: %.3e from the separate ops", form_name[fm],
                  loom_dtype_name(dt), n, k, m, e_sep);
    else
        CHECK_MSG(count_diff(gf, gs, cnt) == 0, "%s %s n=%d k=%d m=%d: %d of %zu elements differ from the separate "
                                                "ops", form_name[fm], loom_dtype_name(dt), n, k, m,
                  count_diff(gf, gs, cnt), cnt);
    free(gf);
    free(gs);
    free(ref);
    free(hr);
    drop(&x), drop(&w), drop(&nw), drop(&bias), drop(&res), drop(&out_f), drop(&out_s), drop(&h), drop(&prod);
}

/* The plain small-batch product (ops->matmul, n <= 8 rows): within 1e-2 of double C, and each row's
 * result bit-identical to that row's product alone (the kernel's per-row arithmetic does not depend on
 * the number of rows, nor on how many outputs a warp takes). */
static void run_plain(enum loom_dtype dt, int n, int k, int m)
{
    struct dt2 x = make(dt, n, k, k, 1.f), w = make(dt, m, k, k, 1.f / sqrtf((float)k));
    struct dt2 out = make(dt, n, m, m, 0.f), one = make(dt, 1, m, m, 0.f);
    be->ops->matmul(be, out.t, x.t, w.t, NULL);
    float *all = get(&out);
    double num = 0, den = 0;
    int differ = 0;
    for (int r = 0; r < n; r++) {
        be->ops->matmul(be, one.t, loom_tensor_rows(x.t, r, 1), w.t, NULL);
        float *alone = get(&one);
        differ += count_diff(alone, all + (size_t)r * m, (size_t)m);
        for (int j = 0; j < m; j++) {
            double y = 0;
            for (int c = 0; c < k; c++) y += (double)w.h[(size_t)j * k + c] * x.h[(size_t)r * k + c];
            double d = all[(size_t)r * m + j] - y;
            num += d * d;
            den += y * y;
        }
        free(alone);
    }
    CHECK_MSG(sqrt(num / den) <= 1e-2, "plain %s n=%d k=%d m=%d: %.3e from the double reference", loom_dtype_name(dt),
              n, k, m, sqrt(num / den));
    CHECK_MSG(differ == 0, "plain %s n=%d k=%d m=%d: %d outputs differ from the rows' products alone",
              loom_dtype_name(dt), n, k, m, differ);
    free(all);
    drop(&x), drop(&w), drop(&out), drop(&one);
}

/* A form the op does not take: false, and the output is what it was. */
static void run_decline(const char *what, enum loom_dtype dt, int n, int k, int m, bool norm, bool acc, bool silu)
{
    struct dt2 x = make(dt, n, k, k, 1.f), w = make(dt, silu ? 2 * m : m, k, k, 0.1f), nw = make(dt, 1, k, k, 1.f);
    struct dt2 out = make(dt, n, m, m, 1.f);
    float *before = get(&out);
    struct loom_matmul_fused f = {.out = out.t, .x = x.t, .w = w.t, .norm = norm ? &nw.t : NULL, .eps = 1e-6f,
                                  .accumulate = acc, .silu_pairs = silu};
    CHECK_MSG(!be->ops->matmul_fused(be, &f), "%s: taken", what);
    float *after = get(&out);
    CHECK_MSG(count_diff(before, after, (size_t)n * m) == 0, "%s: output changed", what);
    free(before);
    free(after);
    drop(&x), drop(&w), drop(&nw), drop(&out);
}

int main(void)
{
#ifndef LOOM_HAVE_CUDA
    test_skip("built without CUDA");
#endif
    if (!loom_backend_cuda_available()) test_skip("no CUDA device");
    struct loom_backend_options opts = {.device = "cuda", .act_dtype = LOOM_DTYPE_BF16, .device_index = 0};
    int rc = loom_backend_create(&opts, &be);
    CHECK_MSG(rc == 0, "loom_backend_create: %s", loom_last_error());
    if (rc) return test_report();
    CHECK(be->ops->matmul_fused != NULL);

    const enum loom_dtype dts[2] = {LOOM_DTYPE_BF16, LOOM_DTYPE_F16};
    const int ns[4] = {1, 2, 3, 4};
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < 4; i++) {
            const int n = ns[i];
            /* k: one warp per row (<= 1024), two (<= 2048), four (the down product of Qwen2-0.5B) */
            run_case(NORM_STORE, dts[d], n, 896, 1152, 0, true);
            run_case(NORM_STORE, dts[d], n, 64, 37, 0, false);
            run_case(NORM_STORE, dts[d], n, 2048, 301, 8, true);
            run_case(NORM_SILU, dts[d], n, 896, 4864 / 4, 0, false);
            run_case(NORM_SILU, dts[d], n, 1536, 257, 16, false);
            run_case(SILU, dts[d], n, 4096, 513, 0, false);
            run_case(ACCUMULATE, dts[d], n, 896, 896, 0, true);
            run_case(ACCUMULATE, dts[d], n, 4864, 896, 4864, false); /* x strided: the gate half of gate|up */
            run_case(ACCUMULATE, dts[d], n, 1024, 77, 24, true);
            /* m >= 4096: from 3 rows on a warp takes several outputs */
            run_case(NORM_SILU, dts[d], n, 896, 4864, 0, false);
            run_case(NORM_STORE, dts[d], n, 512, 4099, 0, true);
            run_case(ACCUMULATE, dts[d], n, 2304, 4101, 8, true);
        }
    for (int n = 1; n <= 8; n++) {
        run_plain(LOOM_DTYPE_BF16, n, 896, 4103);
        run_plain(LOOM_DTYPE_BF16, n, 4864, 896);
        run_plain(LOOM_DTYPE_F16, n, 2048, 4096);
    }

    run_decline("5 rows", LOOM_DTYPE_BF16, 5, 896, 64, false, true, false);
    run_decline("a norm over k = 4096", LOOM_DTYPE_BF16, 2, 4096, 64, true, false, false);
    run_decline("a plain product", LOOM_DTYPE_BF16, 2, 896, 64, false, false, false);
    run_decline("accumulate with a norm", LOOM_DTYPE_BF16, 2, 896, 64, true, true, false);
    run_decline("F32", LOOM_DTYPE_F32, 2, 896, 64, false, true, false);

    be->ops->destroy(be);
    return test_report();
}
