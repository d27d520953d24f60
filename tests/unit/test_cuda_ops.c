/*
 * test_cuda_ops.c: the CUDA backend against a reference, op by op, on fresh random inputs.
 *
 * Each op runs on the GPU with F32, BF16 and F16 activations, at several shapes (odd sizes, strided
 * rows), into outputs poisoned with NaN first, so an unwritten element fails. Every result is compared
 * twice: with the CPU backend run on the same dtype-rounded inputs (F32 activations there; weights in
 * their own dtype), and with plain double-precision C in this file. The error is ||gpu - ref|| / ||ref||
 * with a tolerance per dtype (F32: 1e-5, TF32 is off; BF16/F16: 1e-2). Attention runs several sequences
 * at once (prefill chunks and decodes), with shuffled, non-contiguous block tables, GQA, MQA and a
 * sliding window, and decodes long enough to take the split (flash-decoding) path.
 * Exits 77 where no CUDA device is present (loom_backend_cuda_available() is false).
 */
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>

static struct loom_backend *be;  /* the backend under test; its act_dtype changes per pass */
static struct loom_backend *cpu; /* the CPU backend, the second reference */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}
static float rng_f(void) /* uniform in [-1, 1) */
{
    return (float)((rng_u32() & 0xffffff) / 8388608.0 - 1.0);
}
static int rng_int(int n)
{
    return (int)(rng_u32() % (uint32_t)n);
}

static double tol_for(enum loom_dtype t)
{
    return t == LOOM_DTYPE_F32 ? 1e-5 : 1e-2;
}

/* A device tensor and the host copy of its values (as floats, already rounded to its dtype). */
struct dten {
    struct loom_tensor t;
    float *h;  /* [rows * stride] */
    void *raw; /* [rows * stride] the same values in t.dtype (what was uploaded) */
};

static struct dten dten_make(enum loom_dtype dt, int64_t rows, int64_t cols, int64_t stride, float scale)
{
    struct dten d;
    size_t n = (size_t)(rows * stride), es = loom_dtype_size(dt);
    d.h = loom_malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) d.h[i] = rng_f() * scale;
    void *raw = loom_malloc(n * es + 4);
    loom_convert_from_f32(raw, dt, d.h, n);
    loom_convert_to_f32(d.h, raw, dt, n); /* the reference sees exactly the rounded values */
    void *dev = be->ops->alloc(be, n * es + 4);
    be->ops->upload(be, dev, raw, n * es);
    d.raw = raw;
    d.t = loom_tensor_2d(dev, dt, rows, cols);
    d.t.stride = stride;
    return d;
}

/* Overwrites the device data with NaN (all ones bytes is NaN in F32, F16 and BF16). */
static void dten_poison(struct dten *d)
{
    size_t bytes = (size_t)(d->t.rows * d->t.stride) * loom_dtype_size(d->t.dtype);
    unsigned char *p = loom_malloc(bytes + 1);
    memset(p, 0xff, bytes);
    be->ops->upload(be, d->t.data, p, bytes);
    free(p);
}

static struct dten dten_out(enum loom_dtype dt, int64_t rows, int64_t cols, int64_t stride)
{
    struct dten d = dten_make(dt, rows, cols, stride, 1.f);
    dten_poison(&d);
    return d;
}

/* Downloads rows x cols (dropping the stride padding) as floats. */
static float *dten_get(const struct dten *d)
{
    size_t n = (size_t)(d->t.rows * d->t.stride), es = loom_dtype_size(d->t.dtype);
    void *raw = loom_malloc(n * es + 4);
    be->ops->download(be, raw, d->t.data, n * es);
    float *all = loom_malloc(n * sizeof(float) + 4);
    loom_convert_to_f32(all, raw, d->t.dtype, n);
    float *out = loom_malloc((size_t)(d->t.rows * d->t.cols) * sizeof(float) + 4);
    for (int64_t r = 0; r < d->t.rows; r++)
        memcpy(out + r * d->t.cols, all + r * d->t.stride, (size_t)d->t.cols * sizeof(float));
    free(raw);
    free(all);
    return out;
}

static void dten_free(struct dten *d)
{
    be->ops->free(be, d->t.data);
    free(d->h);
    free(d->raw);
}

/* ---- the CPU backend's side: host tensors of the same values ---- */

/* A fresh F32 copy of d's values (an activation operand; the op may modify it). */
static struct loom_tensor cpu_act(const struct dten *d)
{
    size_t n = (size_t)(d->t.rows * d->t.stride);
    float *p = loom_malloc(n * sizeof(float) + 4);
    memcpy(p, d->h, n * sizeof(float));
    struct loom_tensor t = loom_tensor_2d(p, LOOM_DTYPE_F32, d->t.rows, d->t.cols);
    t.stride = d->t.stride;
    return t;
}

/* d's own bytes in its own dtype (a weight operand), not copied. */
static struct loom_tensor cpu_raw(const struct dten *d)
{
    struct loom_tensor t = d->t;
    t.data = d->raw;
    return t;
}

/* A NaN-filled F32 output of rows x cols with the given stride. */
static struct loom_tensor cpu_out(int64_t rows, int64_t cols, int64_t stride)
{
    size_t n = (size_t)(rows * stride);
    float *p = loom_malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) p[i] = NAN;
    struct loom_tensor t = loom_tensor_2d(p, LOOM_DTYPE_F32, rows, cols);
    t.stride = stride;
    return t;
}

static int32_t *dev_i32(const int32_t *h, size_t n)
{
    void *p = be->ops->alloc(be, n * 4 + 4);
    be->ops->upload(be, p, h, n * 4);
    return p;
}
static float *dev_f32(const float *h, size_t n)
{
    void *p = be->ops->alloc(be, n * 4 + 4);
    be->ops->upload(be, p, h, n * 4);
    return p;
}

static double worst_err;

/* ||got - ref|| / ||ref||; NaN anywhere fails. */
static void compare(const char *what, const float *got, const double *ref, size_t n, double tol)
{
    double num = 0, den = 0;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) || isinf(got[i])) nan++;
        double d = got[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    if (nan) err = INFINITY;
    if (err > worst_err) worst_err = err;
    CHECK_MSG(err <= tol, "%s: rel err %.3g > tol %.1g (%d non-finite of %zu)", what, err, tol, nan, n);
    printf("  %-52s %-5s err %.2e\n", what, loom_dtype_name(be->act_dtype), err);
}

static double *dalloc(size_t n)
{
    return loom_calloc(n + 1, sizeof(double));
}

/* The GPU's rows x cols result (contiguous) against the CPU backend's F32 tensor c; frees c.data. */
static void compare_cpu(const char *what, const float *got, struct loom_tensor c, double tol)
{
    double *ref = dalloc((size_t)(c.rows * c.cols));
    const float *p = c.data;
    for (int64_t r = 0; r < c.rows; r++)
        for (int64_t k = 0; k < c.cols; k++) ref[r * c.cols + k] = p[r * c.stride + k];
    char w[200];
    snprintf(w, sizeof w, "%s [cpu]", what);
    compare(w, got, ref, (size_t)(c.rows * c.cols), tol);
    free(ref);
    free(c.data);
}

/* ------------------------------------------------------------------------------------------------ */

static void test_matmul(int n, int k, int m, enum loom_dtype wdt, enum loom_dtype odt, bool bias, int xpad)
{
    enum loom_dtype act = be->act_dtype;
    struct dten x = dten_make(act, n, k, k + xpad, 1.f);
    struct dten w = dten_make(wdt, m, k, k, 0.5f);
    struct dten b = dten_make(wdt, 1, m, m, 1.f);
    struct dten o = dten_out(odt, n, m, m + (xpad ? 3 : 0));
    be->ops->matmul(be, o.t, x.t, w.t, bias ? &b.t : NULL);
    float *got = dten_get(&o);
    double *ref = dalloc((size_t)n * m);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < m; j++) {
            double s = bias ? b.h[j] : 0;
            for (int kk = 0; kk < k; kk++) s += (double)x.h[(size_t)i * x.t.stride + kk] * w.h[(size_t)j * k + kk];
            ref[(size_t)i * m + j] = s;
        }
    char what[128];
    snprintf(what, sizeof what, "matmul %dx%dx%d w=%s out=%s%s%s", n, k, m, loom_dtype_name(wdt),
             loom_dtype_name(odt), bias ? " bias" : "", xpad ? " strided" : "");
    /* F32 output of BF16 inputs is still only as exact as the fp32 accumulation: use the act tolerance */
    double tol = (act == LOOM_DTYPE_F32 && wdt == LOOM_DTYPE_F32 && odt == LOOM_DTYPE_F32) ? 1e-5 : 1e-2;
    compare(what, got, ref, (size_t)n * m, tol);
    struct loom_tensor cx = cpu_act(&x), cw = cpu_raw(&w), cb = cpu_raw(&b), co = cpu_out(n, m, m);
    cpu->ops->matmul(cpu, co, cx, cw, bias ? &cb : NULL);
    compare_cpu(what, got, co, tol);
    free(cx.data);
    free(got);
    free(ref);
    dten_free(&x);
    dten_free(&w);
    dten_free(&b);
    dten_free(&o);
}

static void test_rmsnorm(int rows, int cols, enum loom_dtype wdt, bool alias, bool fused)
{
    enum loom_dtype act = be->act_dtype;
    float eps = 1e-6f;
    struct dten x = dten_make(act, rows, cols, cols + 5, 2.f);
    struct dten res = dten_make(act, rows, cols, cols, 2.f);
    struct dten w = dten_make(wdt, 1, cols, cols, 1.f);
    struct dten o = alias ? x : dten_out(act, rows, cols, cols + 1);
    double *ref = dalloc((size_t)rows * cols), *rref = dalloc((size_t)rows * cols);
    for (int r = 0; r < rows; r++) {
        double ss = 0;
        for (int c = 0; c < cols; c++) {
            double v = x.h[(size_t)r * x.t.stride + c];
            if (fused) {
                v += res.h[(size_t)r * cols + c];
                rref[(size_t)r * cols + c] = v;
            }
            ss += v * v;
        }
        double inv = 1.0 / sqrt(ss / cols + eps);
        for (int c = 0; c < cols; c++) {
            double v = fused ? rref[(size_t)r * cols + c] : x.h[(size_t)r * x.t.stride + c];
            ref[(size_t)r * cols + c] = v * inv * w.h[c];
        }
    }
    struct loom_tensor cx = cpu_act(&x), cr = cpu_act(&res), cw = cpu_raw(&w), co = cpu_out(rows, cols, cols);
    if (fused) {
        be->ops->add_rmsnorm(be, res.t, x.t, o.t, w.t, eps);
        cpu->ops->add_rmsnorm(cpu, cr, cx, co, cw, eps);
    } else {
        be->ops->rmsnorm(be, o.t, x.t, w.t, eps);
        if (alias) {
            cpu->ops->rmsnorm(cpu, cx, cx, cw, eps);
            for (int r = 0; r < rows; r++)
                memcpy((float *)co.data + (size_t)r * cols, (float *)cx.data + (size_t)r * cx.stride, (size_t)cols * 4);
        } else {
            cpu->ops->rmsnorm(cpu, co, cx, cw, eps);
        }
    }
    float *got = dten_get(&o);
    char what[128];
    snprintf(what, sizeof what, "%s %dx%d w=%s%s", fused ? "add_rmsnorm" : "rmsnorm", rows, cols,
             loom_dtype_name(wdt), alias ? " in-place" : "");
    compare(what, got, ref, (size_t)rows * cols, tol_for(act));
    compare_cpu(what, got, co, tol_for(act));
    if (fused) {
        float *gr = dten_get(&res);
        snprintf(what, sizeof what, "add_rmsnorm residual %dx%d", rows, cols);
        compare(what, gr, rref, (size_t)rows * cols, tol_for(act) * 0.5);
        compare_cpu(what, gr, cr, tol_for(act) * 0.5);
        cr.data = NULL;
        free(gr);
    }
    free(cx.data);
    free(cr.data);
    free(got);
    free(ref);
    free(rref);
    dten_free(&x);
    dten_free(&res);
    dten_free(&w);
    if (!alias) dten_free(&o);
}

static void test_rope(int n, int n_heads, int head_dim, int pad)
{
    enum loom_dtype act = be->act_dtype;
    int cols = n_heads * head_dim;
    struct dten x = dten_make(act, n, cols, cols + pad, 1.f);
    float *inv = loom_malloc((size_t)head_dim / 2 * sizeof(float));
    for (int i = 0; i < head_dim / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / head_dim);
    int32_t *pos = loom_malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) pos[i] = rng_int(8000);
    struct loom_tensor tinv = loom_tensor_2d(dev_f32(inv, head_dim / 2), LOOM_DTYPE_F32, 1, head_dim / 2);
    int32_t *dpos = dev_i32(pos, n);
    double *ref = dalloc((size_t)n * cols);
    int half = head_dim / 2;
    for (int r = 0; r < n; r++)
        for (int h = 0; h < n_heads; h++)
            for (int j = 0; j < half; j++) {
                double f = (double)(float)((float)pos[r] * inv[j]); /* the angle is fp32, as in transformers */
                double a = x.h[(size_t)r * x.t.stride + h * head_dim + j];
                double b = x.h[(size_t)r * x.t.stride + h * head_dim + j + half];
                ref[(size_t)r * cols + h * head_dim + j] = a * cos(f) - b * sin(f);
                ref[(size_t)r * cols + h * head_dim + j + half] = b * cos(f) + a * sin(f);
            }
    be->ops->rope(be, x.t, dpos, n_heads, head_dim, tinv);
    float *got = dten_get(&x);
    char what[128];
    snprintf(what, sizeof what, "rope n=%d heads=%d hd=%d%s", n, n_heads, head_dim, pad ? " strided" : "");
    compare(what, got, ref, (size_t)n * cols, tol_for(act));
    struct loom_tensor cx = cpu_act(&x);
    cpu->ops->rope(cpu, cx, pos, n_heads, head_dim, loom_tensor_2d(inv, LOOM_DTYPE_F32, 1, head_dim / 2));
    compare_cpu(what, got, cx, tol_for(act));
    free(got);
    free(ref);
    free(inv);
    free(pos);
    be->ops->free(be, tinv.data);
    be->ops->free(be, dpos);
    dten_free(&x);
}

static void test_elementwise(int rows, int cols)
{
    enum loom_dtype act = be->act_dtype;
    char what[128];
    /* silu_mul */
    struct dten g = dten_make(act, rows, cols, cols + 2, 4.f), u = dten_make(act, rows, cols, cols, 2.f);
    struct dten o = dten_out(act, rows, cols, cols);
    double *ref = dalloc((size_t)rows * cols);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double a = g.h[(size_t)r * g.t.stride + c];
            ref[(size_t)r * cols + c] = a / (1 + exp(-a)) * u.h[(size_t)r * cols + c];
        }
    be->ops->silu_mul(be, o.t, g.t, u.t);
    float *got = dten_get(&o);
    snprintf(what, sizeof what, "silu_mul %dx%d", rows, cols);
    compare(what, got, ref, (size_t)rows * cols, tol_for(act));
    struct loom_tensor cg = cpu_act(&g), cu = cpu_act(&u), co = cpu_out(rows, cols, cols);
    cpu->ops->silu_mul(cpu, co, cg, cu);
    compare_cpu(what, got, co, tol_for(act));
    free(got);
    /* add: x += y */
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            ref[(size_t)r * cols + c] = (double)g.h[(size_t)r * g.t.stride + c] + u.h[(size_t)r * cols + c];
    be->ops->add(be, g.t, u.t);
    got = dten_get(&g);
    snprintf(what, sizeof what, "add %dx%d", rows, cols);
    compare(what, got, ref, (size_t)rows * cols, tol_for(act));
    cpu->ops->add(cpu, cg, cu);
    compare_cpu(what, got, cg, tol_for(act));
    free(cu.data);
    free(got);
    /* convert act -> F32 and F32 -> act, F16 */
    enum loom_dtype targets[3] = {LOOM_DTYPE_F32, LOOM_DTYPE_BF16, LOOM_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        struct dten d = dten_out(targets[i], rows, cols, cols + 1);
        for (size_t j = 0; j < (size_t)rows * cols; j++) ref[j] = u.h[j];
        be->ops->convert(be, d.t, u.t);
        got = dten_get(&d);
        snprintf(what, sizeof what, "convert %dx%d -> %s", rows, cols, loom_dtype_name(targets[i]));
        compare(what, got, ref, (size_t)rows * cols, targets[i] == LOOM_DTYPE_F32 ? 1e-7 : 1e-2);
        /* the CPU converts the same values to the same dtype: round to nearest even on both, so equal */
        size_t nn = (size_t)rows * cols;
        void *craw = loom_malloc(nn * 4 + 4);
        struct loom_tensor cd = loom_tensor_2d(craw, targets[i], rows, cols), cs = cpu_act(&u);
        cpu->ops->convert(cpu, cd, cs);
        struct loom_tensor cf = cpu_out(rows, cols, cols);
        loom_convert_to_f32(cf.data, craw, targets[i], nn);
        compare_cpu(what, got, cf, 1e-7);
        free(craw);
        free(cs.data);
        free(got);
        dten_free(&d);
    }
    free(ref);
    dten_free(&g);
    dten_free(&u);
    dten_free(&o);
}

static void test_gather_scatter(int n_src, int n, int cols, enum loom_dtype tdt)
{
    enum loom_dtype act = be->act_dtype;
    char what[128];
    struct dten table = dten_make(tdt, n_src, cols, cols + 3, 1.f);
    int32_t *idx = loom_malloc((size_t)n * 4);
    /* distinct indices (scatter requires them): a shuffled prefix of 0..n_src-1 */
    int32_t *perm = loom_malloc((size_t)n_src * 4);
    for (int i = 0; i < n_src; i++) perm[i] = i;
    for (int i = n_src - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < n; i++) idx[i] = perm[i];
    int32_t *didx = dev_i32(idx, n);
    struct dten o = dten_out(act, n, cols, cols);
    double *ref = dalloc((size_t)n_src * cols);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cols; c++) ref[(size_t)i * cols + c] = table.h[(size_t)idx[i] * table.t.stride + c];
    be->ops->embedding(be, o.t, table.t, didx);
    float *got = dten_get(&o);
    snprintf(what, sizeof what, "embedding %d of %dx%d table=%s", n, n_src, cols, loom_dtype_name(tdt));
    compare(what, got, ref, (size_t)n * cols, tol_for(act));
    struct loom_tensor co = cpu_out(n, cols, cols);
    cpu->ops->embedding(cpu, co, cpu_raw(&table), idx);
    compare_cpu(what, got, co, tol_for(act));
    free(got);
    dten_poison(&o);
    be->ops->gather_rows(be, o.t, table.t, didx);
    got = dten_get(&o);
    snprintf(what, sizeof what, "gather_rows %d of %dx%d", n, n_src, cols);
    compare(what, got, ref, (size_t)n * cols, tol_for(act));
    struct loom_tensor ct = cpu_act(&table);
    co = cpu_out(n, cols, cols);
    cpu->ops->gather_rows(cpu, co, ct, idx);
    compare_cpu(what, got, co, tol_for(act));
    free(ct.data);
    free(got);
    /* scatter_add_rows: acc[idx[i]] += wt[i] * x[i] */
    struct dten acc = dten_make(act, n_src, cols, cols, 1.f);
    struct dten x = dten_make(act, n, cols, cols + 1, 1.f);
    float *wt = loom_malloc((size_t)n * 4);
    for (int i = 0; i < n; i++) wt[i] = rng_f();
    float *dwt = dev_f32(wt, n);
    for (int r = 0; r < n_src; r++)
        for (int c = 0; c < cols; c++) ref[(size_t)r * cols + c] = acc.h[(size_t)r * cols + c];
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cols; c++)
            ref[(size_t)idx[i] * cols + c] += (double)wt[i] * x.h[(size_t)i * x.t.stride + c];
    struct loom_tensor cacc = cpu_act(&acc), cx = cpu_act(&x);
    be->ops->scatter_add_rows(be, acc.t, x.t, didx, dwt);
    got = dten_get(&acc);
    snprintf(what, sizeof what, "scatter_add_rows %d into %dx%d", n, n_src, cols);
    compare(what, got, ref, (size_t)n_src * cols, tol_for(act));
    cpu->ops->scatter_add_rows(cpu, cacc, cx, idx, wt);
    compare_cpu(what, got, cacc, tol_for(act));
    free(cx.data);
    free(got);
    free(ref);
    free(idx);
    free(perm);
    free(wt);
    be->ops->free(be, didx);
    be->ops->free(be, dwt);
    dten_free(&table);
    dten_free(&o);
    dten_free(&acc);
    dten_free(&x);
}

static void test_kv_store(int n_slots, int n, int cols)
{
    enum loom_dtype act = be->act_dtype;
    struct dten kc = dten_make(act, n_slots, cols, cols, 1.f), vc = dten_make(act, n_slots, cols, cols, 1.f);
    struct dten k = dten_make(act, n, cols, cols + 7, 1.f), v = dten_make(act, n, cols, cols + 3, 1.f);
    int32_t *slots = loom_malloc((size_t)n * 4);
    int32_t *perm = loom_malloc((size_t)n_slots * 4);
    for (int i = 0; i < n_slots; i++) perm[i] = i;
    for (int i = n_slots - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < n; i++) slots[i] = perm[i];
    int32_t *dslots = dev_i32(slots, n);
    double *rk = dalloc((size_t)n_slots * cols), *rv = dalloc((size_t)n_slots * cols);
    for (size_t i = 0; i < (size_t)n_slots * cols; i++) {
        rk[i] = kc.h[i];
        rv[i] = vc.h[i];
    }
    for (int i = 0; i < n; i++)
        for (int c = 0; c < cols; c++) {
            rk[(size_t)slots[i] * cols + c] = k.h[(size_t)i * k.t.stride + c];
            rv[(size_t)slots[i] * cols + c] = v.h[(size_t)i * v.t.stride + c];
        }
    struct loom_tensor ckc = cpu_act(&kc), cvc = cpu_act(&vc), ck = cpu_act(&k), cv = cpu_act(&v);
    be->ops->kv_store(be, kc.t, vc.t, k.t, v.t, dslots);
    cpu->ops->kv_store(cpu, ckc, cvc, ck, cv, slots);
    float *gk = dten_get(&kc), *gv = dten_get(&vc);
    char what[128];
    snprintf(what, sizeof what, "kv_store %d into %d slots x %d (K)", n, n_slots, cols);
    compare(what, gk, rk, (size_t)n_slots * cols, 1e-7);
    compare_cpu(what, gk, ckc, 1e-7);
    snprintf(what, sizeof what, "kv_store %d into %d slots x %d (V)", n, n_slots, cols);
    compare(what, gv, rv, (size_t)n_slots * cols, 1e-7);
    compare_cpu(what, gv, cvc, 1e-7);
    free(ck.data);
    free(cv.data);
    free(gk);
    free(gv);
    free(rk);
    free(rv);
    free(slots);
    free(perm);
    be->ops->free(be, dslots);
    dten_free(&kc);
    dten_free(&vc);
    dten_free(&k);
    dten_free(&v);
}

/* qkv_rope_store: q|k|v rows (strided) -> per-head norms (optional), rope, K/V into the cache at a
 * shuffled slot mapping with a padding slot (-1). Checked: q in place, and the whole K and V caches
 * (rows not written keep their values; a row written where it should not be, or not written, fails). */
static void test_qkv_rope_store(int n, int NH, int NKV, int D, int norm, int pad)
{
    enum loom_dtype act = be->act_dtype;
    const int QW = NH * D, KW = NKV * D, W = QW + 2 * KW, n_slots = 2 * n + 3, half = D / 2;
    const float eps = 1e-6f;
    struct dten qkv = dten_make(act, n, W, W + pad, 2.f);
    enum loom_dtype ndt = norm == 2 ? LOOM_DTYPE_BF16 : act;
    struct dten qn = dten_make(ndt, 1, D, D, 1.f), kn = dten_make(ndt, 1, D, D, 1.f);
    struct dten kc = dten_make(act, n_slots, KW, KW, 1.f), vc = dten_make(act, n_slots, KW, KW, 1.f);
    float *inv = loom_malloc((size_t)half * sizeof(float));
    for (int i = 0; i < half; i++) inv[i] = (float)pow(1e6, -2.0 * i / D);
    int32_t *pos = loom_malloc((size_t)n * 4), *slots = loom_malloc((size_t)n * 4), *perm = loom_malloc((size_t)n_slots * 4);
    for (int i = 0; i < n_slots; i++) perm[i] = i;
    for (int i = n_slots - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    for (int i = 0; i < n; i++) {
        pos[i] = rng_int(30000);
        slots[i] = perm[i];
    }
    if (n > 1) slots[n / 2] = -1;
    struct loom_tensor tinv = loom_tensor_2d(dev_f32(inv, half), LOOM_DTYPE_F32, 1, half);
    int32_t *dpos = dev_i32(pos, n), *dslots = dev_i32(slots, n);

    /* the double reference */
    double *rq = dalloc((size_t)n * QW), *rk = dalloc((size_t)n_slots * KW), *rv = dalloc((size_t)n_slots * KW);
    for (size_t i = 0; i < (size_t)n_slots * KW; i++) {
        rk[i] = kc.h[i];
        rv[i] = vc.h[i];
    }
    double *hv = dalloc((size_t)D);
    for (int r = 0; r < n; r++) {
        for (int hh = 0; hh < NH + NKV; hh++) {
            const bool is_q = hh < NH;
            const float *src = qkv.h + (size_t)r * qkv.t.stride + (size_t)hh * D;
            double ss = 0;
            for (int d = 0; d < D; d++) {
                hv[d] = src[d];
                ss += hv[d] * hv[d];
            }
            if (norm) {
                double iv = 1.0 / sqrt(ss / D + eps);
                const float *w = is_q ? qn.h : kn.h;
                for (int d = 0; d < D; d++) hv[d] = hv[d] * iv * w[d];
            }
            double *dst = is_q ? rq + (size_t)r * QW + (size_t)hh * D
                               : slots[r] >= 0 ? rk + (size_t)slots[r] * KW + (size_t)(hh - NH) * D : NULL;
            if (!dst) continue;
            for (int j = 0; j < half; j++) {
                double f = (double)(float)((float)pos[r] * inv[j]);
                dst[j] = hv[j] * cos(f) - hv[j + half] * sin(f);
                dst[j + half] = hv[j + half] * cos(f) + hv[j] * sin(f);
            }
        }
        if (slots[r] >= 0)
            for (int c = 0; c < KW; c++) rv[(size_t)slots[r] * KW + c] = qkv.h[(size_t)r * qkv.t.stride + QW + KW + c];
    }
    struct loom_tensor cq = cpu_act(&qkv), ckc = cpu_act(&kc), cvc = cpu_act(&vc), cqn = cpu_raw(&qn), ckn = cpu_raw(&kn);
    be->ops->qkv_rope_store(be, qkv.t, dpos, dslots, NH, NKV, D, tinv, norm ? &qn.t : NULL, norm ? &kn.t : NULL, eps,
                            kc.t, vc.t);
    cpu->ops->qkv_rope_store(cpu, cq, pos, slots, NH, NKV, D, loom_tensor_2d(inv, LOOM_DTYPE_F32, 1, half),
                             norm ? &cqn : NULL, norm ? &ckn : NULL, eps, ckc, cvc);
    float *gall = dten_get(&qkv), *gk = dten_get(&kc), *gv = dten_get(&vc);
    float *gq = loom_malloc((size_t)n * QW * sizeof(float) + 4);
    for (int r = 0; r < n; r++) memcpy(gq + (size_t)r * QW, gall + (size_t)r * W, (size_t)QW * sizeof(float));
    char what[160];
    /* the bf16 norm weights and the rounding of the normed value: the act tolerance still holds */
    double tol = tol_for(act);
    snprintf(what, sizeof what, "qkv_rope_store n=%d %d/%d hd=%d%s%s (q)", n, NH, NKV, D,
             norm ? (norm == 2 ? " norm=bf16" : " norm") : "", pad ? " strided" : "");
    compare(what, gq, rq, (size_t)n * QW, tol);
    struct loom_tensor cqv = loom_tensor_cols(cq, 0, QW);
    struct loom_tensor cqc = cpu_out(n, QW, QW);
    for (int r = 0; r < n; r++)
        memcpy((float *)cqc.data + (size_t)r * QW, (float *)cqv.data + (size_t)r * cqv.stride, (size_t)QW * sizeof(float));
    compare_cpu(what, gq, cqc, tol);
    snprintf(what, sizeof what, "qkv_rope_store n=%d %d/%d hd=%d%s (K cache)", n, NH, NKV, D, norm ? " norm" : "");
    compare(what, gk, rk, (size_t)n_slots * KW, tol);
    compare_cpu(what, gk, ckc, tol);
    snprintf(what, sizeof what, "qkv_rope_store n=%d %d/%d hd=%d (V cache)", n, NH, NKV, D);
    compare(what, gv, rv, (size_t)n_slots * KW, 1e-7);
    compare_cpu(what, gv, cvc, 1e-7);
    free(cq.data);
    free(gall);
    free(gq);
    free(gk);
    free(gv);
    free(rq);
    free(rk);
    free(rv);
    free(hv);
    free(inv);
    free(pos);
    free(slots);
    free(perm);
    be->ops->free(be, tinv.data);
    be->ops->free(be, dpos);
    be->ops->free(be, dslots);
    dten_free(&qkv);
    dten_free(&qn);
    dten_free(&kn);
    dten_free(&kc);
    dten_free(&vc);
}

static void test_moe_route(int n, int n_exp, int k, bool renorm)
{
    enum loom_dtype act = be->act_dtype;
    struct dten lg = dten_make(act, n, n_exp, n_exp + 1, 3.f);
    int32_t *dids = be->ops->alloc(be, (size_t)n * k * 4);
    float *dw = be->ops->alloc(be, (size_t)n * k * 4);
    be->ops->moe_route(be, lg.t, k, renorm, dids, dw);
    int32_t *ids = loom_malloc((size_t)n * k * 4), *cids = loom_malloc((size_t)n * k * 4);
    float *w = loom_malloc((size_t)n * k * 4), *cw = loom_malloc((size_t)n * k * 4);
    be->ops->download(be, ids, dids, (size_t)n * k * 4);
    be->ops->download(be, w, dw, (size_t)n * k * 4);
    struct loom_tensor clg = cpu_act(&lg);
    cpu->ops->moe_route(cpu, clg, k, renorm, cids, cw);
    /* same experts in the same order (both sort by weight, ties to the lower id), same weights */
    int id_diff = 0;
    double wnum = 0, wden = 0;
    for (int i = 0; i < n * k; i++) {
        id_diff += ids[i] != cids[i];
        wnum += (double)(w[i] - cw[i]) * (w[i] - cw[i]);
        wden += (double)cw[i] * cw[i];
    }
    CHECK_MSG(id_diff == 0, "moe_route n=%d experts=%d k=%d: %d ids differ from the CPU backend's", n, n_exp, k,
              id_diff);
    CHECK_MSG(sqrt(wnum / wden) <= 1e-5, "moe_route: weights differ from the CPU backend's by %.3g",
              sqrt(wnum / wden));
    free(clg.data);
    free(cids);
    free(cw);
    /* reference: softmax, then the k largest (as a set: compare the weight each expert gets) */
    double *ref = dalloc((size_t)n * n_exp);
    float *got = loom_calloc((size_t)n * n_exp + 1, sizeof(float));
    int bad_ids = 0;
    for (int r = 0; r < n; r++) {
        const float *l = lg.h + (size_t)r * lg.t.stride;
        double mx = -1e300, sum = 0;
        for (int e = 0; e < n_exp; e++) mx = fmax(mx, l[e]);
        double *p = dalloc(n_exp);
        for (int e = 0; e < n_exp; e++) sum += (p[e] = exp(l[e] - mx));
        for (int e = 0; e < n_exp; e++) p[e] /= sum;
        double picked = 0;
        char *taken = loom_calloc(n_exp, 1);
        for (int j = 0; j < k; j++) {
            int bi = -1;
            for (int e = 0; e < n_exp; e++)
                if (!taken[e] && (bi < 0 || p[e] > p[bi])) bi = e;
            taken[bi] = 1;
            picked += p[bi];
        }
        for (int e = 0; e < n_exp; e++)
            if (taken[e]) ref[(size_t)r * n_exp + e] = renorm ? p[e] / picked : p[e];
        for (int j = 0; j < k; j++) {
            int e = ids[(size_t)r * k + j];
            if (e < 0 || e >= n_exp || !taken[e]) {
                bad_ids++;
                continue;
            }
            got[(size_t)r * n_exp + e] = w[(size_t)r * k + j];
        }
        free(p);
        free(taken);
    }
    char what[128];
    snprintf(what, sizeof what, "moe_route n=%d experts=%d k=%d%s", n, n_exp, k, renorm ? " renorm" : "");
    CHECK_MSG(bad_ids == 0, "%s: %d ids not in the reference top-k", what, bad_ids);
    compare(what, got, ref, (size_t)n * n_exp, 1e-5);
    free(ids);
    free(w);
    free(ref);
    free(got);
    be->ops->free(be, dids);
    be->ops->free(be, dw);
    dten_free(&lg);
}

/* ---- attention ---- */

struct attn_case {
    const char *name;
    int n_heads, n_kv_heads, head_dim, window, block_size;
    int n_seqs;
    int q_len[8], ctx[8];
};

static void test_attention(const struct attn_case *tc)
{
    enum loom_dtype act = be->act_dtype;
    int bs = tc->block_size, H = tc->n_heads, KV = tc->n_kv_heads, D = tc->head_dim;
    int n_tokens = 0, max_blocks = 0, total_blocks = 0, max_q = 0, max_ctx = 0;
    for (int s = 0; s < tc->n_seqs; s++) {
        n_tokens += tc->q_len[s];
        int nb = (tc->ctx[s] + bs - 1) / bs;
        total_blocks += nb;
        if (nb > max_blocks) max_blocks = nb;
        if (tc->q_len[s] > max_q) max_q = tc->q_len[s];
        if (tc->ctx[s] > max_ctx) max_ctx = tc->ctx[s];
    }
    max_blocks += 1; /* a padded table: the tail entries are never read */
    int n_pool = total_blocks + 5;
    /* shuffled pool: each sequence's blocks are scattered */
    int32_t *perm = loom_malloc((size_t)n_pool * 4);
    for (int i = 0; i < n_pool; i++) perm[i] = i;
    for (int i = n_pool - 1; i > 0; i--) {
        int j = rng_int(i + 1);
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t *bt = loom_malloc((size_t)tc->n_seqs * max_blocks * 4);
    int32_t *qs = loom_malloc((size_t)(tc->n_seqs + 1) * 4), *sl = loom_malloc((size_t)tc->n_seqs * 4);
    int32_t *positions = loom_malloc((size_t)n_tokens * 4), *slots = loom_malloc((size_t)n_tokens * 4);
    int used = 0;
    qs[0] = 0;
    for (int s = 0; s < tc->n_seqs; s++) {
        int nb = (tc->ctx[s] + bs - 1) / bs;
        for (int b = 0; b < max_blocks; b++) bt[s * max_blocks + b] = b < nb ? perm[used++] : -1;
        qs[s + 1] = qs[s] + tc->q_len[s];
        sl[s] = tc->ctx[s];
        for (int j = 0; j < tc->q_len[s]; j++) {
            int p = tc->ctx[s] - tc->q_len[s] + j;
            positions[qs[s] + j] = p;
            slots[qs[s] + j] = bt[s * max_blocks + p / bs] * bs + p % bs;
        }
    }
    int n_slots = n_pool * bs;
    struct dten kc = dten_make(act, n_slots, KV * D, KV * D, 1.f), vc = dten_make(act, n_slots, KV * D, KV * D, 1.f);
    struct dten q = dten_make(act, n_tokens, H * D, H * D + 2 * KV * D, 1.f); /* q inside a qkv row */
    struct dten o = dten_out(act, n_tokens, H * D, H * D);
    struct loom_attn_meta meta = {0};
    meta.n_tokens = n_tokens;
    meta.n_seqs = tc->n_seqs;
    meta.block_size = bs;
    meta.max_blocks_per_seq = max_blocks;
    meta.max_query_len = max_q;
    meta.max_seq_len = max_ctx;
    meta.positions = dev_i32(positions, n_tokens);
    meta.slot_mapping = dev_i32(slots, n_tokens);
    meta.query_start = dev_i32(qs, tc->n_seqs + 1);
    meta.seq_lens = dev_i32(sl, tc->n_seqs);
    meta.block_tables = dev_i32(bt, (size_t)tc->n_seqs * max_blocks);
    meta.h_query_start = qs;
    meta.h_seq_lens = sl;
    float scale = 1.f / sqrtf((float)D);
    be->ops->attention(be, o.t, q.t, kc.t, vc.t, &meta, H, KV, D, scale, tc->window);
    float *got = dten_get(&o);

    double *ref = dalloc((size_t)n_tokens * H * D);
    double *sc = dalloc((size_t)max_ctx);
    for (int s = 0; s < tc->n_seqs; s++)
        for (int j = 0; j < tc->q_len[s]; j++) {
            int tok = qs[s] + j, pos = positions[tok];
            int first = tc->window > 0 ? (pos - tc->window + 1 > 0 ? pos - tc->window + 1 : 0) : 0;
            for (int h = 0; h < H; h++) {
                int kvh = h / (H / KV);
                const float *qq = q.h + (size_t)tok * q.t.stride + h * D;
                double mx = -1e300, sum = 0;
                for (int p = first; p <= pos; p++) {
                    int slot = bt[s * max_blocks + p / bs] * bs + p % bs;
                    const float *kk = kc.h + (size_t)slot * KV * D + kvh * D;
                    double d = 0;
                    for (int e = 0; e < D; e++) d += (double)qq[e] * kk[e];
                    sc[p] = d * scale;
                    if (sc[p] > mx) mx = sc[p];
                }
                for (int p = first; p <= pos; p++) sum += (sc[p] = exp(sc[p] - mx));
                double *rr = ref + (size_t)tok * H * D + h * D;
                for (int p = first; p <= pos; p++) {
                    int slot = bt[s * max_blocks + p / bs] * bs + p % bs;
                    const float *vv = vc.h + (size_t)slot * KV * D + kvh * D;
                    for (int e = 0; e < D; e++) rr[e] += sc[p] / sum * vv[e];
                }
            }
        }
    char what[160];
    snprintf(what, sizeof what, "attention %s (%d tok, %d seqs, %d:%d hd %d%s)", tc->name, n_tokens, tc->n_seqs, H,
             KV, D, tc->window ? ", window" : "");
    compare(what, got, ref, (size_t)n_tokens * H * D, tol_for(act));
    struct loom_attn_meta cm = meta;
    cm.positions = positions;
    cm.slot_mapping = slots;
    cm.query_start = qs;
    cm.seq_lens = sl;
    cm.block_tables = bt;
    struct loom_tensor cq = cpu_act(&q), ckc = cpu_act(&kc), cvc = cpu_act(&vc), co = cpu_out(n_tokens, H * D, H * D);
    cpu->ops->attention(cpu, co, cq, ckc, cvc, &cm, H, KV, D, scale, tc->window);
    compare_cpu(what, got, co, tol_for(act));
    free(cq.data);
    free(ckc.data);
    free(cvc.data);

    free(got);
    free(ref);
    free(sc);
    free(perm);
    free(bt);
    free(qs);
    free(sl);
    free(positions);
    free(slots);
    be->ops->free(be, (void *)meta.positions);
    be->ops->free(be, (void *)meta.slot_mapping);
    be->ops->free(be, (void *)meta.query_start);
    be->ops->free(be, (void *)meta.seq_lens);
    be->ops->free(be, (void *)meta.block_tables);
    dten_free(&kc);
    dten_free(&vc);
    dten_free(&q);
    dten_free(&o);
}

static const struct attn_case attn_cases[] = {
    {"mixed", 8, 2, 64, 0, 16, 5, {1, 7, 5, 1, 16}, {1, 7, 40, 300, 16}},
    {"mixed-window", 8, 2, 64, 24, 16, 5, {1, 7, 5, 1, 16}, {1, 7, 40, 300, 50}},
    {"decode-long", 14, 2, 64, 0, 16, 3, {1, 1, 1}, {2000, 37, 1500}},
    {"decode-1seq", 14, 2, 64, 0, 16, 1, {1}, {3001}},
    {"mha-128", 4, 4, 128, 0, 8, 3, {3, 1, 33}, {3, 77, 70}},
    {"mqa-256", 4, 1, 256, 0, 16, 2, {2, 1}, {19, 900}},
    {"prefill-chunk", 16, 8, 128, 0, 16, 2, {100, 37}, {250, 37}},
    {"window-decode", 8, 4, 64, 64, 32, 4, {1, 1, 2, 1}, {1000, 63, 65, 64}},
    {"g16-hd96", 32, 2, 96, 0, 16, 3, {1, 4, 1}, {700, 20, 33}}, /* outside the warp-per-tile kernel's shapes */
    {"decode-f-256", 8, 1, 256, 0, 16, 2, {1, 1}, {5000, 260}},
    /* prefill steps the tensor-core kernel takes (bf16/f16, head_dim 64/128, a query run >= 16) */
    {"tc-prefill-gqa", 14, 2, 64, 0, 16, 4, {300, 64, 1, 17}, {300, 200, 90, 17}},
    {"tc-prefill-window", 8, 2, 128, 50, 16, 3, {130, 65, 2}, {130, 400, 60}},
    {"tc-chunk-bs32", 32, 8, 128, 0, 32, 2, {64, 100}, {640, 100}},
};

/* New random values into an existing tensor (host copies and device memory). */
static void dten_refill(struct dten *d, float scale)
{
    size_t n = (size_t)(d->t.rows * d->t.stride);
    for (size_t i = 0; i < n; i++) d->h[i] = rng_f() * scale;
    loom_convert_from_f32(d->raw, d->t.dtype, d->h, n);
    loom_convert_to_f32(d->h, d->raw, d->t.dtype, n);
    be->ops->upload(be, d->t.data, d->raw, n * loom_dtype_size(d->t.dtype));
}

/* The same decode-like chain of ops several times, with new inputs uploaded in between and the context
 * growing by one each time: the backend records it, launches it op by op, captures a graph on the first
 * repeat and replays it after; every iteration must still see its own inputs. */
static void test_graph_replay(void)
{
    enum loom_dtype act = be->act_dtype;
    const int H = 4, KV = 2, D = 64, C = H * D, bs = 16, n_pool = 16, max_blocks = 10;
    struct dten x = dten_make(act, 1, C, C, 1.f), wn = dten_make(LOOM_DTYPE_F32, 1, C, C, 1.f);
    struct dten w = dten_make(act, C, C, C, 0.2f);
    struct dten kc = dten_make(act, n_pool * bs, KV * D, KV * D, 1.f), vc = dten_make(act, n_pool * bs, KV * D, KV * D, 1.f);
    struct dten h = dten_out(act, 1, C, C), q = dten_out(act, 1, C, C), o = dten_out(act, 1, C, C);
    float inv[32];
    for (int i = 0; i < D / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / D);
    struct loom_tensor tinv = loom_tensor_2d(dev_f32(inv, D / 2), LOOM_DTYPE_F32, 1, D / 2);
    int32_t bt[10] = {7, 3, 12, 0, 9, 15, 1, 4, -1, -1}, qs[2] = {0, 1};
    int32_t *d_bt = dev_i32(bt, max_blocks), *d_qs = dev_i32(qs, 2);
    int32_t *d_pos = dev_i32(qs, 1), *d_sl = dev_i32(qs, 1), *d_slot = dev_i32(qs, 1);
    for (int it = 0; it < 5; it++) {
        int ctx = 100 + it;
        int32_t pos = ctx - 1, sl = ctx, slot = bt[pos / bs] * bs + pos % bs;
        dten_refill(&x, 1.f);
        be->ops->upload(be, d_pos, &pos, 4);
        be->ops->upload(be, d_sl, &sl, 4);
        be->ops->upload(be, d_slot, &slot, 4);
        struct loom_attn_meta meta = {.n_tokens = 1, .n_seqs = 1, .block_size = bs, .max_blocks_per_seq = max_blocks,
                                      .max_query_len = 1, .max_seq_len = ctx, .positions = d_pos,
                                      .slot_mapping = d_slot, .query_start = d_qs, .seq_lens = d_sl,
                                      .block_tables = d_bt, .h_query_start = qs, .h_seq_lens = &sl};
        be->ops->rmsnorm(be, h.t, x.t, wn.t, 1e-6f);
        be->ops->matmul(be, q.t, h.t, w.t, NULL);
        be->ops->rope(be, q.t, d_pos, H, D, tinv);
        be->ops->attention(be, o.t, q.t, kc.t, vc.t, &meta, H, KV, D, 0.125f, 0);
        be->ops->add(be, o.t, x.t);
        float *got = dten_get(&o);
        /* the CPU backend, same chain */
        struct loom_tensor cx = cpu_act(&x), ch = cpu_out(1, C, C), cq = cpu_out(1, C, C), co = cpu_out(1, C, C);
        struct loom_tensor ckc = cpu_act(&kc), cvc = cpu_act(&vc);
        struct loom_attn_meta cm = meta;
        cm.positions = &pos;
        cm.slot_mapping = &slot;
        cm.query_start = qs;
        cm.seq_lens = &sl;
        cm.block_tables = bt;
        cpu->ops->rmsnorm(cpu, ch, cx, cpu_raw(&wn), 1e-6f);
        cpu->ops->matmul(cpu, cq, ch, cpu_raw(&w), NULL);
        cpu->ops->rope(cpu, cq, &pos, H, D, loom_tensor_2d(inv, LOOM_DTYPE_F32, 1, D / 2));
        cpu->ops->attention(cpu, co, cq, ckc, cvc, &cm, H, KV, D, 0.125f, 0);
        cpu->ops->add(cpu, co, cx);
        char what[96];
        snprintf(what, sizeof what, "graph replay: chain of 5 ops, iteration %d", it);
        /* bf16 rounding at every step of the chain, not just one: a looser bound */
        compare_cpu(what, got, co, act == LOOM_DTYPE_F32 ? 1e-5 : 2e-2);
        free(got);
        free(cx.data);
        free(ch.data);
        free(cq.data);
        free(ckc.data);
        free(cvc.data);
    }
    be->ops->free(be, tinv.data);
    be->ops->free(be, d_bt);
    be->ops->free(be, d_qs);
    be->ops->free(be, d_pos);
    be->ops->free(be, d_sl);
    be->ops->free(be, d_slot);
    dten_free(&x);
    dten_free(&wn);
    dten_free(&w);
    dten_free(&kc);
    dten_free(&vc);
    dten_free(&h);
    dten_free(&q);
    dten_free(&o);
}

/* ---- moe_experts: routing (random, experts left with no rows, every row on the same experts) uploaded
 * into the same buffers between calls, so the second call is captured into a graph and the later ones
 * replay it with other routing; the last call repeats the first's inputs and must give the same bytes.
 * Against double-precision C and the CPU backend (the per-expert path of model/moe.c). ---- */
enum { MOE_RANDOM, MOE_SOME_EMPTY, MOE_ONE_SET, MOE_REPEAT };

static void moe_routing(int mode, int n, int E, int k, int32_t *ids, float *w)
{
    int pool = mode == MOE_SOME_EMPTY ? (E / 2 > k ? E / 2 : k) : E; /* experts pool..E-1 get no row */
    if (mode == MOE_SOME_EMPTY && pool == E && E > k) pool = E - 1;
    for (int t = 0; t < n; t++) {
        for (int j = 0; j < k; j++) {
            int e;
            if (mode == MOE_ONE_SET) {
                e = (E - 1 - j + E) % E; /* every row: experts E-1, E-2, ... (k = 1: all rows on one expert) */
            } else {
                bool dup;
                do { /* distinct within the row */
                    e = rng_int(pool);
                    dup = false;
                    for (int q = 0; q < j; q++) dup |= ids[t * k + q] == e;
                } while (dup);
            }
            ids[t * k + j] = e;
            w[t * k + j] = 0.25f + 0.75f * (rng_f() + 1.f) / 2.f;
        }
    }
}

static const char *moe_blas_env = ""; /* LOOM_CUDA_MOE_BLAS_ROWS while a case runs ("": the default) */

static void test_moe_experts(int n, int E, int k, int H, int MI, enum loom_dtype wdt, int hpad)
{
    enum loom_dtype act = be->act_dtype;
    char what[160];
    struct dten h = dten_make(act, n, H, H + hpad, 1.f), x = dten_make(act, n, H, H, 0.1f);
    struct dten *g = loom_malloc(sizeof(struct dten) * (size_t)E * 3), *u = g + E, *d = g + 2 * E;
    struct loom_tensor *tg = loom_malloc(sizeof(struct loom_tensor) * (size_t)E * 6), *tu = tg + E, *td = tg + 2 * E;
    struct loom_tensor *cg = tg + 3 * E, *cu = tg + 4 * E, *cd = tg + 5 * E;
    void **tab = loom_malloc(sizeof(void *) * (size_t)E * 3);
    for (int e = 0; e < E; e++) {
        g[e] = dten_make(wdt, MI, H, H, 2.f / sqrtf((float)H));
        u[e] = dten_make(wdt, MI, H, H, 2.f / sqrtf((float)H));
        d[e] = dten_make(wdt, H, MI, MI, 2.f / sqrtf((float)MI));
        tg[e] = g[e].t, tu[e] = u[e].t, td[e] = d[e].t;
        cg[e] = cpu_raw(&g[e]), cu[e] = cpu_raw(&u[e]), cd[e] = cpu_raw(&d[e]);
        tab[e] = g[e].t.data, tab[E + e] = u[e].t.data, tab[2 * E + e] = d[e].t.data;
    }
    void **dtab = be->ops->alloc(be, sizeof(void *) * (size_t)E * 3);
    be->ops->upload(be, dtab, tab, sizeof(void *) * (size_t)E * 3);
    struct loom_moe_experts ex = {E, tg, tu, td, (void *const *)dtab}, cex = {E, cg, cu, cd, NULL};
    size_t wsb = be->ops->moe_workspace_bytes(be, n + 3, k, E, H, MI);
    void *ws = be->ops->alloc(be, wsb);
    unsigned char *poison = loom_malloc(wsb);
    memset(poison, 0xff, wsb); /* NaN activations, -1 counts: whatever the op reads unwritten shows */
    be->ops->upload(be, ws, poison, wsb);
    size_t cwsb = cpu->ops->moe_workspace_bytes(cpu, n, k, E, H, MI);
    void *cws = loom_malloc(cwsb + 64);
    int32_t *ids = loom_malloc((size_t)n * k * 4), *ids0 = loom_malloc((size_t)n * k * 4);
    float *w = loom_malloc((size_t)n * k * 4), *w0 = loom_malloc((size_t)n * k * 4);
    float *x0 = loom_malloc((size_t)n * H * 4 + 4);
    int32_t *dids = be->ops->alloc(be, (size_t)n * k * 4);
    float *dw = be->ops->alloc(be, (size_t)n * k * 4);
    unsigned char *first = NULL;
    size_t xbytes = (size_t)n * H * loom_dtype_size(act);
    double *ref = dalloc((size_t)n * H), *gu = dalloc((size_t)MI);
    const char *mode_name[] = {"random", "some experts empty", "all rows on one set", "repeat of the first"};
    for (int it = 0; it < 4; it++) {
        int mode = it;
        if (mode == MOE_REPEAT) {
            memcpy(ids, ids0, (size_t)n * k * 4);
            memcpy(w, w0, (size_t)n * k * 4);
            memcpy(x.h, x0, (size_t)n * H * 4);
            loom_convert_from_f32(x.raw, act, x.h, (size_t)n * H);
            be->ops->upload(be, x.t.data, x.raw, xbytes);
        } else {
            moe_routing(mode, n, E, k, ids, w);
            dten_refill(&x, 0.1f);
            if (it == 0) {
                memcpy(ids0, ids, (size_t)n * k * 4);
                memcpy(w0, w, (size_t)n * k * 4);
                memcpy(x0, x.h, (size_t)n * H * 4);
            }
        }
        be->ops->upload(be, dids, ids, (size_t)n * k * 4);
        be->ops->upload(be, dw, w, (size_t)n * k * 4);
        be->ops->moe_experts(be, x.t, h.t, dids, dw, k, &ex, ws);
        float *got = dten_get(&x);
        /* reference: x + sum_j w * down(silu(gate h) * up h), in double */
        for (int t = 0; t < n; t++) {
            for (int c = 0; c < H; c++) ref[(size_t)t * H + c] = x.h[(size_t)t * H + c];
            const float *ht = h.h + (size_t)t * h.t.stride;
            for (int j = 0; j < k; j++) {
                int e = ids[t * k + j];
                for (int r = 0; r < MI; r++) {
                    double a = 0, b = 0;
                    for (int c = 0; c < H; c++) {
                        a += (double)g[e].h[(size_t)r * H + c] * ht[c];
                        b += (double)u[e].h[(size_t)r * H + c] * ht[c];
                    }
                    gu[r] = a / (1.0 + exp(-a)) * b;
                }
                for (int c = 0; c < H; c++) {
                    double s = 0;
                    for (int r = 0; r < MI; r++) s += (double)d[e].h[(size_t)c * MI + r] * gu[r];
                    ref[(size_t)t * H + c] += (double)w[t * k + j] * s;
                }
            }
        }
        snprintf(what, sizeof what, "moe_experts n=%d E=%d k=%d %dx%d w=%s%s%s%s, %s", n, E, k, H, MI,
                 loom_dtype_name(wdt), hpad ? " strided" : "", *moe_blas_env ? " blas rows " : "", moe_blas_env,
                 mode_name[it]);
        double tol = (act == LOOM_DTYPE_F32 && wdt == LOOM_DTYPE_F32) ? 1e-5 : 1e-2;
        compare(what, got, ref, (size_t)n * H, tol);
        struct loom_tensor cx = cpu_act(&x), ch = cpu_act(&h);
        cpu->ops->moe_experts(cpu, cx, ch, ids, w, k, &cex, cws);
        compare_cpu(what, got, cx, tol);
        free(ch.data);
        /* the same inputs give the same bytes (the first call ran op by op, the last from a graph) */
        unsigned char *raw = loom_malloc(xbytes + 4);
        be->ops->download(be, raw, x.t.data, xbytes);
        if (it == 0) {
            first = raw;
        } else {
            if (it == MOE_REPEAT)
                CHECK_MSG(memcmp(first, raw, xbytes) == 0, "%s: not the bytes of the first call", what);
            free(raw);
        }
        free(got);
    }
    free(first);
    free(ref);
    free(gu);
    free(ids);
    free(ids0);
    free(w);
    free(w0);
    free(x0);
    free(poison);
    free(cws);
    free(tab);
    be->ops->free(be, dids);
    be->ops->free(be, dw);
    be->ops->free(be, ws);
    be->ops->free(be, dtab);
    for (int e = 0; e < 3 * E; e++) dten_free(&g[e]);
    free(g);
    free(tg);
    dten_free(&h);
    dten_free(&x);
}

static void run_all(void)
{
    enum loom_dtype act = be->act_dtype;
    printf("== activations %s\n", loom_dtype_name(act));
    const int mm[][3] = {{1, 64, 96}, {7, 130, 33}, {33, 257, 129}, {128, 512, 300}, {1, 896, 4864}};
    for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
        test_matmul(mm[i][0], mm[i][1], mm[i][2], act, act, false, 0);
        test_matmul(mm[i][0], mm[i][1], mm[i][2], act, LOOM_DTYPE_F32, true, 0);
    }
    test_matmul(9, 100, 70, act, act, true, 4);
    test_matmul(5, 64, 48, act == LOOM_DTYPE_F32 ? LOOM_DTYPE_BF16 : LOOM_DTYPE_F16, act, true, 2); /* mixed */
    test_matmul(17, 33, 65, LOOM_DTYPE_F16, LOOM_DTYPE_F32, false, 0);
    /* decode-sized products (the GEMV path with 16-bit activations): n <= 8, k a multiple of 8 */
    test_matmul(3, 256, 100, act, act, true, 0);
    test_matmul(8, 4864, 896, act, LOOM_DTYPE_F32, false, 0);
    test_matmul(4, 128, 40, LOOM_DTYPE_F16, act, true, 8);
    test_matmul(2, 896, 151, act, LOOM_DTYPE_F32, true, 16);
    const int rn[][2] = {{1, 64}, {5, 897}, {17, 4096}, {3, 5000}}; /* the last: longer than the register path */
    for (int i = 0; i < 4; i++) {
        test_rmsnorm(rn[i][0], rn[i][1], act, false, false);
        test_rmsnorm(rn[i][0], rn[i][1], LOOM_DTYPE_F32, true, false);
        test_rmsnorm(rn[i][0], rn[i][1], LOOM_DTYPE_BF16, false, true);
    }
    test_rope(5, 3, 64, 0);
    test_rope(13, 7, 128, 64);
    test_rope(1, 2, 32, 0);
    test_rope(3, 40, 128, 0); /* 2560 pairs a row: more than one pass of the block */
    test_elementwise(1, 4864);
    test_elementwise(7, 131);
    test_gather_scatter(50, 9, 96, act);
    test_gather_scatter(1000, 37, 257, LOOM_DTYPE_BF16);
    test_gather_scatter(64, 64, 33, LOOM_DTYPE_F16);
    test_kv_store(64, 10, 128);
    test_kv_store(1000, 77, 72);
    test_qkv_rope_store(1, 14, 2, 64, 0, 0);   /* Qwen2-0.5B decode */
    test_qkv_rope_store(7, 14, 2, 64, 0, 8);
    test_qkv_rope_store(5, 16, 8, 128, 1, 0);  /* Qwen3: per-head norms */
    test_qkv_rope_store(3, 4, 4, 128, 2, 24);  /* bf16 norm weights */
    test_qkv_rope_store(33, 6, 2, 256, 1, 0);  /* four pairs a lane */
    test_qkv_rope_store(2, 2, 1, 1024, 1, 0);  /* the largest head */
    test_qkv_rope_store(4, 3, 1, 10, 0, 2);    /* odd sizes */
    test_moe_route(33, 8, 2, true);
    test_moe_route(5, 128, 8, false);
    test_moe_route(64, 60, 4, true);
    /* grouped experts: vectorized tiles, odd widths (scalar loads), several row tiles an expert, decode
     * sizes (n <= 8: the GEMV kernels, 1, 2 and 4 warps a column), k = 1, mixed weight dtype (the FMA
     * path), strided rows of h */
    test_moe_experts(37, 8, 2, 96, 72, act, 0);
    test_moe_experts(5, 60, 4, 130, 66, act, 3);
    test_moe_experts(300, 16, 2, 256, 192, act, 0);
    test_moe_experts(1, 128, 8, 128, 64, act, 0);
    test_moe_experts(8, 8, 2, 1536, 2304, act, 0); /* decode kernels: 2 and 4 warps a column */
    test_moe_experts(6, 16, 4, 256, 1280, act, 8);
    test_moe_experts(9, 8, 2, 256, 128, act, 0);   /* one row past the decode kernels */
    test_moe_experts(70, 4, 1, 64, 40, act, 8);
    test_moe_experts(20, 6, 2, 64, 48, act == LOOM_DTYPE_F16 ? LOOM_DTYPE_BF16 : LOOM_DTYPE_F16, 0);
    /* prefill sizes (n * k >= 512 routed rows): cuBLAS per expert after one sync; more rows on an expert
     * than one chunk (512: all rows on one set), odd widths (2-byte gathers), k = 1, and the same sizes
     * on the grouped kernels (LOOM_CUDA_MOE_BLAS_ROWS=0) and small steps forced onto cuBLAS (=1) */
    test_moe_experts(600, 8, 2, 128, 96, act, 8);
    test_moe_experts(1100, 4, 1, 64, 40, act, 0);
    test_moe_experts(530, 8, 1, 130, 66, act, 3);
    test_moe_experts(256, 8, 2, 96, 72, act == LOOM_DTYPE_F16 ? LOOM_DTYPE_BF16 : LOOM_DTYPE_F16, 0); /* mixed: grouped */
    const char *envs[2] = {"0", "1"};
    for (int i = 0; i < 2; i++) {
        setenv("LOOM_CUDA_MOE_BLAS_ROWS", envs[i], 1);
        moe_blas_env = envs[i];
        test_moe_experts(i ? 9 : 600, 8, 2, 128, 96, act, 8);
        test_moe_experts(i ? 5 : 300, 16, 2, 256, 192, act, 0);
        test_moe_experts(i ? 1 : 260, i ? 6 : 8, i ? 6 : 1, 130, 66, act, 3);
        unsetenv("LOOM_CUDA_MOE_BLAS_ROWS");
        moe_blas_env = "";
    }
    for (size_t i = 0; i < sizeof attn_cases / sizeof attn_cases[0]; i++) test_attention(&attn_cases[i]);
    test_graph_replay();
}

int main(void)
{
#ifndef LOOM_HAVE_CUDA
    test_skip("built without CUDA");
#endif
    if (!loom_backend_cuda_available()) test_skip("no CUDA device");
    struct loom_backend_options copts = {.device = "cpu", .act_dtype = LOOM_DTYPE_F32, .threads = 0};
    CHECK(loom_backend_cpu_create(&copts, &cpu) == 0);
    enum loom_dtype acts[3] = {LOOM_DTYPE_F32, LOOM_DTYPE_BF16, LOOM_DTYPE_F16};
    for (int i = 0; i < 3; i++) {
        struct loom_backend_options opts = {.device = "cuda", .act_dtype = acts[i], .device_index = 0};
        int rc = loom_backend_create(&opts, &be); /* LOOM_EUNSUPPORTED without CUDA */
        CHECK_MSG(rc == 0, "loom_backend_cuda_create: %s", loom_last_error());
        if (rc) break;
        CHECK(be->act_dtype == acts[i]);
        worst_err = 0;
        run_all();
        be->ops->synchronize(be);
        printf("   worst relative error with %s activations: %.2e\n", loom_dtype_name(acts[i]), worst_err);
        be->ops->destroy(be);
    }
    cpu->ops->destroy(cpu);
    return test_report();
}
