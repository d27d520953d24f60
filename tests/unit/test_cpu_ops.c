/*
 * test_cpu_ops.c: every op of the CPU backend against a naive double-precision reference, on random
 * inputs with odd sizes, for each instruction-set level this machine has (portable C, AVX2,
 * AVX-512; capped through LOOM_CPU_ISA), one and three threads, weights in F32, F16 and BF16 at
 * unaligned addresses. Attention: several sequences, non-contiguous block tables, a prefill chunk
 * after cached context, GQA and a sliding window. Also the thread pool itself.
 */
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "test.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double frand(void) /* uniform [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 52) - 1.0;
}

/* A random matrix stored as dtype t inside a buffer at byte offset `misalign`, plus its exact values
 * as double. */
struct mat {
    void *buf;
    void *data;
    double *ref;
    enum loom_dtype t;
    int64_t rows, cols, stride;
};

static struct mat mat_rand(enum loom_dtype t, int64_t rows, int64_t cols, int64_t stride, size_t misalign, double scale)
{
    struct mat m = {0};
    size_t es = loom_dtype_size(t);
    m.buf = calloc(1, (size_t)(rows * stride) * es + misalign + 64);
    m.data = (char *)m.buf + misalign;
    m.ref = calloc((size_t)(rows * cols) + 1, sizeof(double));
    m.t = t;
    m.rows = rows;
    m.cols = cols;
    m.stride = stride;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float v = (float)(frand() * scale);
            char *p = (char *)m.data + (size_t)(r * stride + c) * es;
            if (t == LOOM_DTYPE_F32) {
                memcpy(p, &v, 4);
            } else if (t == LOOM_DTYPE_BF16) {
                uint16_t h = loom_f32_to_bf16(v);
                memcpy(p, &h, 2);
                v = loom_bf16_to_f32(h);
            } else {
                uint16_t h = loom_f32_to_f16(v);
                memcpy(p, &h, 2);
                v = loom_f16_to_f32(h);
            }
            m.ref[r * cols + c] = v;
        }
    return m;
}

static struct loom_tensor mat_t(struct mat m)
{
    struct loom_tensor x = {m.data, m.t, m.rows, m.cols, m.stride};
    return x;
}

static void mat_free(struct mat *m)
{
    free(m->buf);
    free(m->ref);
}

static float getf(struct loom_tensor x, int64_t r, int64_t c)
{
    return ((float *)x.data)[r * x.stride + c];
}

static struct loom_backend *make_backend(const char *isa, int threads, enum loom_dtype act)
{
    setenv("LOOM_CPU_ISA", isa, 1);
    struct loom_backend_options o = {.device = "cpu", .act_dtype = act, .threads = threads};
    struct loom_backend *be = NULL;
    CHECK(loom_backend_create(&o, &be) == 0);
    unsetenv("LOOM_CPU_ISA");
    return be;
}

/* ---------------------------------------------------------------------------------------------- */

static void test_matmul(struct loom_backend *be, const char *label, bool bf16_mode)
{
    static const int shapes[][3] = {{1, 7, 5},     {1, 33, 67},   {2, 64, 96},   {3, 5, 31},    {4, 13, 130},
                                    {5, 17, 33},   {7, 100, 513}, {1, 300, 1030}, {67, 37, 1030}, {130, 9, 40},
                                    {16, 64, 64},  {4, 4, 4096},  {33, 131, 257}, {2, 5, 8200}};
    const enum loom_dtype dts[] = {LOOM_DTYPE_F32, LOOM_DTYPE_F16, LOOM_DTYPE_BF16};
    for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
        for (int di = 0; di < 3; di++) {
            int n = shapes[si][0], m = shapes[si][1], k = shapes[si][2];
            bool bias = (si + di) % 2 == 0;
            struct mat x = mat_rand(LOOM_DTYPE_F32, n, k, k + (si % 3), 0, 1.0);
            struct mat w = mat_rand(dts[di], m, k, k, dts[di] == LOOM_DTYPE_F32 ? 4 : 2, 1.0);
            struct mat b = mat_rand(LOOM_DTYPE_BF16, 1, m, m, 2, 1.0);
            struct mat o = mat_rand(LOOM_DTYPE_F32, n, m, m + 1, 0, 1.0);
            struct loom_tensor bt = mat_t(b), ot = mat_t(o);
            be->ops->matmul(be, ot, mat_t(x), mat_t(w), bias ? &bt : NULL);
            double worst = 0;
            bool approx = bf16_mode && dts[di] == LOOM_DTYPE_BF16 && n > 4;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < m; j++) {
                    double s = 0, mag = 0;
                    for (int c = 0; c < k; c++) {
                        double xv = x.ref[i * k + c];
                        if (approx) xv = loom_bf16_to_f32(loom_f32_to_bf16((float)xv));
                        s += xv * w.ref[j * k + c];
                        mag += fabs(xv * w.ref[j * k + c]);
                    }
                    if (bias) s += b.ref[j];
                    double err = fabs(getf(ot, i, j) - s) / (mag + 1.0);
                    if (err > worst) worst = err;
                }
            CHECK_MSG(worst < 2e-6, "%s matmul n=%d m=%d k=%d w=%s: relative error %g", label, n, m, k,
                      loom_dtype_name(dts[di]), worst);
            mat_free(&x);
            mat_free(&w);
            mat_free(&b);
            mat_free(&o);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */

struct attn_case {
    int n_seqs;
    int q_lens[4], ctx_lens[4];
    int n_heads, n_kv_heads, head_dim, window, block_size;
};

static void test_attention(struct loom_backend *be, const char *label)
{
    const struct attn_case cases[] = {
        {1, {1}, {1}, 2, 2, 8, 0, 4},                              /* one token */
        {1, {7}, {7}, 4, 2, 16, 0, 4},                             /* prefill, GQA 2:1 */
        {3, {1, 5, 1}, {9, 12, 70}, 6, 1, 32, 0, 8},               /* decode + chunk after context, MQA */
        {2, {13, 3}, {13, 40}, 4, 4, 64, 5, 16},                   /* sliding window 5 */
        {4, {2, 1, 17, 1}, {30, 1, 17, 100}, 8, 2, 24, 16, 4},     /* window 16, odd head_dim */
        {2, {100, 1}, {150, 200}, 2, 1, 128, 0, 16},               /* long */
    };
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        const struct attn_case *a = &cases[ci];
        int bs = a->block_size, max_blocks = 0, n_tokens = 0, total_blocks = 0;
        for (int s = 0; s < a->n_seqs; s++) {
            int nb = (a->ctx_lens[s] + bs - 1) / bs;
            if (nb > max_blocks) max_blocks = nb;
            total_blocks += nb;
            n_tokens += a->q_lens[s];
        }
        int n_blocks = total_blocks + 5;
        /* block tables: a random permutation of the pool, so sequences are scattered */
        int *perm = malloc(sizeof(int) * n_blocks);
        for (int i = 0; i < n_blocks; i++) perm[i] = i;
        for (int i = n_blocks - 1; i > 0; i--) {
            int j = (int)((frand() + 1) * 0.5 * (i + 1));
            if (j > i) j = i;
            int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        int32_t *bt = calloc((size_t)(a->n_seqs * max_blocks), sizeof(int32_t));
        int32_t qs[5], sl[4];
        int used = 0;
        qs[0] = 0;
        for (int s = 0; s < a->n_seqs; s++) {
            int nb = (a->ctx_lens[s] + bs - 1) / bs;
            for (int b = 0; b < nb; b++) bt[s * max_blocks + b] = perm[used++];
            qs[s + 1] = qs[s] + a->q_lens[s];
            sl[s] = a->ctx_lens[s];
        }
        int hd = a->head_dim, kvw = a->n_kv_heads * hd;
        struct mat kc = mat_rand(LOOM_DTYPE_F32, (int64_t)n_blocks * bs, kvw, kvw, 0, 1.0);
        struct mat vc = mat_rand(LOOM_DTYPE_F32, (int64_t)n_blocks * bs, kvw, kvw, 0, 1.0);
        struct mat q = mat_rand(LOOM_DTYPE_F32, n_tokens, a->n_heads * hd, a->n_heads * hd, 0, 1.0);
        struct mat o = mat_rand(LOOM_DTYPE_F32, n_tokens, a->n_heads * hd, a->n_heads * hd + 3, 0, 1.0);
        int32_t *positions = malloc(sizeof(int32_t) * n_tokens);
        for (int s = 0; s < a->n_seqs; s++)
            for (int j = 0; j < a->q_lens[s]; j++) positions[qs[s] + j] = sl[s] - a->q_lens[s] + j;
        struct loom_attn_meta meta = {
            .n_tokens = n_tokens, .n_seqs = a->n_seqs, .block_size = bs, .max_blocks_per_seq = max_blocks,
            .positions = positions, .query_start = qs, .seq_lens = sl, .block_tables = bt,
            .h_query_start = qs, .h_seq_lens = sl,
        };
        float scale = 1.0f / sqrtf((float)hd);
        be->ops->attention(be, mat_t(o), mat_t(q), mat_t(kc), mat_t(vc), &meta, a->n_heads, a->n_kv_heads, hd, scale,
                           a->window);
        double worst = 0;
        int group = a->n_heads / a->n_kv_heads;
        for (int s = 0; s < a->n_seqs; s++)
            for (int j = 0; j < a->q_lens[s]; j++) {
                int i = qs[s] + j, pos = positions[i];
                int lo = a->window > 0 ? (pos - a->window + 1 > 0 ? pos - a->window + 1 : 0) : 0;
                for (int h = 0; h < a->n_heads; h++) {
                    int g = h / group;
                    double *sc = malloc(sizeof(double) * (pos + 1)), mx = -1e300, sum = 0;
                    for (int p = lo; p <= pos; p++) {
                        int64_t slot = (int64_t)bt[s * max_blocks + p / bs] * bs + p % bs;
                        double d = 0;
                        for (int e = 0; e < hd; e++) d += q.ref[(int64_t)i * a->n_heads * hd + h * hd + e] *
                                                          kc.ref[slot * kvw + g * hd + e];
                        sc[p] = d * scale;
                        if (sc[p] > mx) mx = sc[p];
                    }
                    for (int p = lo; p <= pos; p++) sum += (sc[p] = exp(sc[p] - mx));
                    for (int e = 0; e < hd; e++) {
                        double acc = 0;
                        for (int p = lo; p <= pos; p++) {
                            int64_t slot = (int64_t)bt[s * max_blocks + p / bs] * bs + p % bs;
                            acc += sc[p] / sum * vc.ref[slot * kvw + g * hd + e];
                        }
                        double err = fabs(getf(mat_t(o), i, h * hd + e) - acc);
                        if (err > worst) worst = err;
                    }
                    free(sc);
                }
            }
        CHECK_MSG(worst < 1e-5, "%s attention case %zu: max error %g", label, ci, worst);
        mat_free(&kc);
        mat_free(&vc);
        mat_free(&q);
        mat_free(&o);
        free(positions);
        free(bt);
        free(perm);
    }
}

/* ---------------------------------------------------------------------------------------------- */

static void test_rows_ops(struct loom_backend *be, const char *label)
{
    const int n = 37, d = 131;
    /* rmsnorm, in place, bf16 weight */
    {
        struct mat x = mat_rand(LOOM_DTYPE_F32, n, d, d + 2, 0, 3.0);
        struct mat w = mat_rand(LOOM_DTYPE_BF16, 1, d, d, 2, 1.0);
        be->ops->rmsnorm(be, mat_t(x), mat_t(x), mat_t(w), 1e-5f);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            double ss = 0;
            for (int c = 0; c < d; c++) ss += x.ref[i * d + c] * x.ref[i * d + c];
            double r = 1.0 / sqrt(ss / d + 1e-5);
            for (int c = 0; c < d; c++) {
                double e = fabs(getf(mat_t(x), i, c) - x.ref[i * d + c] * r * w.ref[c]);
                if (e > worst) worst = e;
            }
        }
        CHECK_MSG(worst < 1e-5, "%s rmsnorm: %g", label, worst);
        mat_free(&x);
        mat_free(&w);
    }
    /* add_rmsnorm */
    {
        struct mat res = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 2.0);
        struct mat x = mat_rand(LOOM_DTYPE_F32, n, d, d + 1, 0, 2.0);
        struct mat o = mat_rand(LOOM_DTYPE_F32, n, d, d + 3, 0, 2.0);
        struct mat w = mat_rand(LOOM_DTYPE_F32, 1, d, d, 0, 1.0);
        be->ops->add_rmsnorm(be, mat_t(res), mat_t(x), mat_t(o), mat_t(w), 1e-6f);
        double worst = 0;
        for (int i = 0; i < n; i++) {
            double ss = 0, r[200];
            for (int c = 0; c < d; c++) {
                r[c] = res.ref[i * d + c] + x.ref[i * d + c];
                ss += r[c] * r[c];
                double e = fabs(getf(mat_t(res), i, c) - r[c]);
                if (e > worst) worst = e;
            }
            double rs = 1.0 / sqrt(ss / d + 1e-6);
            for (int c = 0; c < d; c++) {
                double e = fabs(getf(mat_t(o), i, c) - r[c] * rs * w.ref[c]);
                if (e > worst) worst = e;
            }
        }
        CHECK_MSG(worst < 1e-5, "%s add_rmsnorm: %g", label, worst);
        mat_free(&res);
        mat_free(&x);
        mat_free(&o);
        mat_free(&w);
    }
    /* silu_mul (out aliases gate), add */
    {
        struct mat g = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 8.0);
        struct mat u = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 2.0);
        be->ops->silu_mul(be, mat_t(g), mat_t(g), mat_t(u));
        double worst = 0;
        for (int i = 0; i < n * d; i++) {
            double gv = g.ref[i], want = gv / (1 + exp(-gv)) * u.ref[i];
            double e = fabs(((float *)g.data)[i] - want) / (1 + fabs(want));
            if (e > worst) worst = e;
        }
        CHECK_MSG(worst < 1e-6, "%s silu_mul: %g", label, worst);
        struct mat a = mat_rand(LOOM_DTYPE_F32, n, d, d + 1, 0, 1.0);
        struct mat b = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 1.0);
        be->ops->add(be, mat_t(a), mat_t(b));
        worst = 0;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++) {
                double e = fabs(getf(mat_t(a), i, c) - (a.ref[i * d + c] + b.ref[i * d + c]));
                if (e > worst) worst = e;
            }
        CHECK_MSG(worst < 1e-6, "%s add: %g", label, worst);
        mat_free(&g);
        mat_free(&u);
        mat_free(&a);
        mat_free(&b);
    }
    /* embedding (bf16 table, unaligned), gather_rows, scatter_add_rows */
    {
        struct mat tab = mat_rand(LOOM_DTYPE_BF16, 50, d, d, 2, 1.0);
        struct mat o = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 1.0);
        int32_t ids[37];
        for (int i = 0; i < n; i++) ids[i] = (i * 7 + 3) % 50;
        be->ops->embedding(be, mat_t(o), mat_t(tab), ids);
        int bad = 0;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++) bad += getf(mat_t(o), i, c) != (float)tab.ref[ids[i] * d + c];
        CHECK_MSG(bad == 0, "%s embedding: %d wrong", label, bad);

        struct mat g = mat_rand(LOOM_DTYPE_F32, 5, d, d, 0, 1.0);
        int32_t idx[5] = {36, 0, 17, 17, 4};
        be->ops->gather_rows(be, mat_t(g), mat_t(o), idx);
        bad = 0;
        for (int i = 0; i < 5; i++)
            for (int c = 0; c < d; c++) bad += getf(mat_t(g), i, c) != getf(mat_t(o), idx[i], c);
        CHECK_MSG(bad == 0, "%s gather_rows: %d wrong", label, bad);

        struct mat acc = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 1.0);
        struct mat y = mat_rand(LOOM_DTYPE_F32, 4, d, d, 0, 1.0);
        int32_t sidx[4] = {3, 30, 0, 11};
        float sw[4] = {0.25f, -1.5f, 2.0f, 0.125f};
        be->ops->scatter_add_rows(be, mat_t(acc), mat_t(y), sidx, sw);
        double worst = 0;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++) {
                double want = acc.ref[i * d + c];
                for (int r = 0; r < 4; r++)
                    if (sidx[r] == i) want += sw[r] * y.ref[r * d + c];
                double e = fabs(getf(mat_t(acc), i, c) - want);
                if (e > worst) worst = e;
            }
        CHECK_MSG(worst < 1e-6, "%s scatter_add_rows: %g", label, worst);
        mat_free(&tab);
        mat_free(&o);
        mat_free(&g);
        mat_free(&acc);
        mat_free(&y);
    }
    /* kv_store through a slot mapping (with a -1 padding slot) */
    {
        struct mat kc = mat_rand(LOOM_DTYPE_F32, 40, 24, 24, 0, 1.0), vc = mat_rand(LOOM_DTYPE_F32, 40, 24, 24, 0, 1.0);
        struct mat k = mat_rand(LOOM_DTYPE_F32, 4, 24, 24, 0, 1.0), v = mat_rand(LOOM_DTYPE_F32, 4, 24, 24, 0, 1.0);
        int32_t slots[4] = {39, 2, -1, 17};
        be->ops->kv_store(be, mat_t(kc), mat_t(vc), mat_t(k), mat_t(v), slots);
        int bad = 0;
        for (int r = 0; r < 40; r++)
            for (int c = 0; c < 24; c++) {
                int src = -1;
                for (int i = 0; i < 4; i++)
                    if (slots[i] == r) src = i;
                float wk = src >= 0 ? (float)k.ref[src * 24 + c] : (float)kc.ref[r * 24 + c];
                float wv = src >= 0 ? (float)v.ref[src * 24 + c] : (float)vc.ref[r * 24 + c];
                bad += getf(mat_t(kc), r, c) != wk || getf(mat_t(vc), r, c) != wv;
            }
        CHECK_MSG(bad == 0, "%s kv_store: %d wrong", label, bad);
        mat_free(&kc);
        mat_free(&vc);
        mat_free(&k);
        mat_free(&v);
    }
    /* rope: neox halves, several heads, positions up to 5000 */
    {
        const int heads = 3, hd = 10;
        struct mat x = mat_rand(LOOM_DTYPE_F32, n, heads * hd, heads * hd + 1, 0, 1.0);
        float inv[5];
        for (int i = 0; i < hd / 2; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / hd));
        int32_t pos[37];
        for (int i = 0; i < n; i++) pos[i] = i * 137 % 5000;
        struct loom_tensor it = loom_tensor_2d(inv, LOOM_DTYPE_F32, 1, hd / 2);
        be->ops->rope(be, mat_t(x), pos, heads, hd, it);
        double worst = 0;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < heads; h++)
                for (int e = 0; e < hd / 2; e++) {
                    double a = (double)(float)((float)pos[i] * inv[e]);
                    double x1 = x.ref[i * heads * hd + h * hd + e], x2 = x.ref[i * heads * hd + h * hd + e + hd / 2];
                    double r1 = x1 * cos(a) - x2 * sin(a), r2 = x2 * cos(a) + x1 * sin(a);
                    double e1 = fabs(getf(mat_t(x), i, h * hd + e) - r1);
                    double e2 = fabs(getf(mat_t(x), i, h * hd + e + hd / 2) - r2);
                    if (e1 > worst) worst = e1;
                    if (e2 > worst) worst = e2;
                }
        CHECK_MSG(worst < 1e-5, "%s rope: %g", label, worst);
        mat_free(&x);
    }
    /* convert F32 -> BF16 / F16 -> F32 */
    {
        struct mat x = mat_rand(LOOM_DTYPE_F32, n, d, d + 1, 0, 100.0);
        struct mat hb = mat_rand(LOOM_DTYPE_BF16, n, d, d, 0, 1.0), hf = mat_rand(LOOM_DTYPE_F16, n, d, d + 5, 2, 1.0);
        struct mat back = mat_rand(LOOM_DTYPE_F32, n, d, d, 0, 1.0);
        be->ops->convert(be, mat_t(hb), mat_t(x));
        be->ops->convert(be, mat_t(hf), mat_t(x));
        int bad = 0;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++) {
                float v = (float)x.ref[i * d + c];
                uint16_t b, f;
                memcpy(&b, (char *)hb.data + (i * hb.stride + c) * 2, 2);
                memcpy(&f, (char *)hf.data + (i * hf.stride + c) * 2, 2);
                bad += b != loom_f32_to_bf16(v) || f != loom_f32_to_f16(v);
            }
        be->ops->convert(be, mat_t(back), mat_t(hb));
        for (int i = 0; i < n; i++)
            for (int c = 0; c < d; c++) {
                uint16_t b;
                memcpy(&b, (char *)hb.data + (i * hb.stride + c) * 2, 2);
                bad += getf(mat_t(back), i, c) != loom_bf16_to_f32(b);
            }
        CHECK_MSG(bad == 0, "%s convert: %d wrong", label, bad);
        mat_free(&x);
        mat_free(&hb);
        mat_free(&hf);
        mat_free(&back);
    }
    /* moe_route: softmax, top-k, ties to the lower index, with and without renormalization */
    {
        const int rows = 6, ne = 8, k = 3;
        struct mat l = mat_rand(LOOM_DTYPE_F32, rows, ne, ne, 0, 3.0);
        float *lf = l.data;
        for (int e = 0; e < ne; e++) lf[e] = 1.0f; /* row 0: all tied -> experts 0, 1, 2 */
        lf[ne + 5] = lf[ne + 2] = 9.0f;               /* row 1: a tie at the top -> 2 before 5 */
        l.ref[ne + 5] = l.ref[ne + 2] = 9.0;
        for (int renorm = 0; renorm < 2; renorm++) {
            int32_t ids[18];
            float wts[18];
            be->ops->moe_route(be, mat_t(l), k, renorm, ids, wts);
            CHECK(ids[0] == 0 && ids[1] == 1 && ids[2] == 2);
            CHECK(ids[3] == 2 && ids[4] == 5);
            double worst = 0;
            for (int r = 0; r < rows; r++) {
                double p[8], mx = -1e300, sum = 0;
                for (int e = 0; e < ne; e++) mx = fmax(mx, lf[r * ne + e]);
                for (int e = 0; e < ne; e++) sum += (p[e] = exp(lf[r * ne + e] - mx));
                for (int e = 0; e < ne; e++) p[e] /= sum;
                bool used[8] = {0};
                double top = 0;
                int want[3];
                for (int i = 0; i < k; i++) {
                    int best = -1;
                    for (int e = 0; e < ne; e++)
                        if (!used[e] && (best < 0 || p[e] > p[best])) best = e;
                    used[best] = true;
                    want[i] = best;
                    top += p[best];
                }
                for (int i = 0; i < k; i++) {
                    CHECK_EQ_INT(ids[r * k + i], want[i]);
                    double w = renorm ? p[want[i]] / top : p[want[i]];
                    worst = fmax(worst, fabs(wts[r * k + i] - w));
                }
            }
            CHECK_MSG(worst < 1e-6, "%s moe_route: %g", label, worst);
        }
        mat_free(&l);
    }
}

/* ---------------------------------------------------------------------------------------------- */

static _Atomic int64_t pf_sum;
static void pf_fn(void *arg, int64_t b, int64_t e, int ith)
{
    (void)arg;
    (void)ith;
    int64_t s = 0;
    for (int64_t i = b; i < e; i++) s += i;
    atomic_fetch_add(&pf_sum, s);
}

static _Atomic int run_count;
static void run_fn(void *arg, int ith, int nth)
{
    (void)arg;
    (void)ith;
    (void)nth;
    atomic_fetch_add(&run_count, 1);
}

static void test_threadpool(void)
{
    struct loom_threadpool *tp = loom_threadpool_create(3);
    CHECK_EQ_INT(loom_threadpool_size(tp), 3);
    for (int rep = 0; rep < 2000; rep++) {
        atomic_store(&pf_sum, 0);
        int64_t n = 1 + rep % 997;
        loom_parallel_for(tp, n, 1 + rep % 13, pf_fn, NULL);
        if (atomic_load(&pf_sum) != n * (n - 1) / 2) {
            CHECK_MSG(0, "parallel_for sum wrong at rep %d", rep);
            break;
        }
    }
    atomic_store(&run_count, 0);
    for (int rep = 0; rep < 100; rep++) loom_threadpool_run(tp, run_fn, NULL);
    CHECK_EQ_INT(atomic_load(&run_count), 300);
    /* let the workers fall asleep, then wake them */
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    atomic_store(&pf_sum, 0);
    loom_parallel_for(tp, 100000, 100, pf_fn, NULL);
    CHECK_EQ_INT(atomic_load(&pf_sum), (int64_t)100000 * 99999 / 2);
    loom_threadpool_free(tp);
    /* dispatch cost with as many threads as cores (informational: the machine may be loaded) */
    tp = loom_threadpool_create(0);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int rep = 0; rep < 2000; rep++) loom_parallel_for(tp, 64, 1, pf_fn, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double t0 = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) * 1e-9;
    printf("threadpool: %.2f us per parallel_for of 64 tiny chunks (%d threads)\n", t0 / 2000 * 1e6,
           loom_threadpool_size(tp));
    loom_threadpool_free(tp);
    struct loom_threadpool *one = loom_threadpool_create(1);
    atomic_store(&pf_sum, 0);
    loom_parallel_for(one, 1000, 7, pf_fn, NULL);
    CHECK_EQ_INT(atomic_load(&pf_sum), 1000 * 999 / 2);
    loom_threadpool_free(one);
}

/* qkv_rope_store against the op sequence it replaces (rmsnorm per head, rope on q and on k, kv_store),
 * bit for bit: strided q|k|v rows, GQA, a -1 padding slot, with and without the per-head norms (weights
 * F32 and BF16), and head dims of 64 and 6. Untouched cache rows must keep their values. */
static void test_qkv_rope_store(struct loom_backend *be, const char *label)
{
    static const int cases[][5] = {/* n, heads, kv heads, head_dim, stride pad */
                                   {5, 4, 2, 64, 3}, {1, 14, 2, 64, 0}, {9, 3, 3, 6, 1}, {4, 8, 1, 16, 5}};
    for (size_t ci = 0; ci < sizeof(cases) / sizeof(cases[0]); ci++) {
        for (int norm = 0; norm <= 2; norm++) {
            const int n = cases[ci][0], NH = cases[ci][1], NKV = cases[ci][2], D = cases[ci][3];
            const int QW = NH * D, KW = NKV * D, W = QW + 2 * KW, slots_n = 3 * n + 7;
            struct mat qkv = mat_rand(LOOM_DTYPE_F32, n, W, W + cases[ci][4], 0, 2.0);
            enum loom_dtype ndt = norm == 2 ? LOOM_DTYPE_BF16 : LOOM_DTYPE_F32;
            struct mat qn = mat_rand(ndt, 1, D, D, ndt == LOOM_DTYPE_BF16 ? 2 : 0, 1.0);
            struct mat kn = mat_rand(ndt, 1, D, D, 0, 1.0);
            struct mat kc = mat_rand(LOOM_DTYPE_F32, slots_n, KW, KW, 0, 1.0), vc = mat_rand(LOOM_DTYPE_F32, slots_n, KW, KW, 0, 1.0);
            float inv[512];
            for (int i = 0; i < D / 2; i++) inv[i] = (float)(1.0 / pow(1e6, 2.0 * i / D));
            int32_t pos[16], slots[16];
            for (int i = 0; i < n; i++) {
                pos[i] = (i * 977 + 3) % 40000;
                slots[i] = (i * 3 + 1) % slots_n;
            }
            if (n > 2) slots[1] = -1;
            struct loom_tensor it = loom_tensor_2d(inv, LOOM_DTYPE_F32, 1, D / 2);

            /* the old sequence on contiguous copies */
            size_t qb = (size_t)n * QW * 4, kb = (size_t)n * KW * 4, cb = (size_t)slots_n * KW * 4;
            float *q0 = malloc(qb), *k0 = malloc(kb), *v0 = malloc(kb), *kc0 = malloc(cb), *vc0 = malloc(cb);
            for (int i = 0; i < n; i++) {
                const float *row = (const float *)qkv.data + (size_t)i * qkv.stride;
                memcpy(q0 + (size_t)i * QW, row, (size_t)QW * 4);
                memcpy(k0 + (size_t)i * KW, row + QW, (size_t)KW * 4);
                memcpy(v0 + (size_t)i * KW, row + QW + KW, (size_t)KW * 4);
            }
            memcpy(kc0, kc.data, cb);
            memcpy(vc0, vc.data, cb);
            struct loom_tensor tq = loom_tensor_2d(q0, LOOM_DTYPE_F32, n, QW), tk = loom_tensor_2d(k0, LOOM_DTYPE_F32, n, KW);
            if (norm) {
                struct loom_tensor qh = loom_tensor_reshape(tq, (int64_t)n * NH, D), kh = loom_tensor_reshape(tk, (int64_t)n * NKV, D);
                be->ops->rmsnorm(be, qh, qh, mat_t(qn), 1e-6f);
                be->ops->rmsnorm(be, kh, kh, mat_t(kn), 1e-6f);
            }
            be->ops->rope(be, tq, pos, NH, D, it);
            be->ops->rope(be, tk, pos, NKV, D, it);
            be->ops->kv_store(be, loom_tensor_2d(kc0, LOOM_DTYPE_F32, slots_n, KW), loom_tensor_2d(vc0, LOOM_DTYPE_F32, slots_n, KW),
                              tk, loom_tensor_2d(v0, LOOM_DTYPE_F32, n, KW), slots);

            struct loom_tensor tqn = mat_t(qn), tkn = mat_t(kn);
            be->ops->qkv_rope_store(be, mat_t(qkv), pos, slots, NH, NKV, D, it, norm ? &tqn : NULL, norm ? &tkn : NULL,
                                    1e-6f, mat_t(kc), mat_t(vc));
            int bad_q = 0;
            for (int i = 0; i < n; i++)
                bad_q += memcmp((const float *)qkv.data + (size_t)i * qkv.stride, q0 + (size_t)i * QW, (size_t)QW * 4) != 0;
            CHECK_MSG(bad_q == 0, "%s qkv_rope_store n=%d %d/%d heads hd=%d norm=%d: q differs in %d rows", label, n, NH,
                      NKV, D, norm, bad_q);
            CHECK_MSG(!memcmp(kc.data, kc0, cb) && !memcmp(vc.data, vc0, cb),
                      "%s qkv_rope_store n=%d %d/%d heads hd=%d norm=%d: the cache differs", label, n, NH, NKV, D, norm);
            free(q0);
            free(k0);
            free(v0);
            free(kc0);
            free(vc0);
            mat_free(&qkv);
            mat_free(&qn);
            mat_free(&kn);
            mat_free(&kc);
            mat_free(&vc);
        }
    }
}

int main(void)
{
    test_threadpool();
    const char *isas[] = {"portable", "avx2", "avx512"};
    for (int ii = 0; ii < 3; ii++) {
        for (int th = 1; th <= 3; th += 2) {
            char label[64];
            snprintf(label, sizeof(label), "[%s, %d threads]", isas[ii], th);
            struct loom_backend *be = make_backend(isas[ii], th, LOOM_DTYPE_F32);
            CHECK(be && be->act_dtype == LOOM_DTYPE_F32 && be->threads == th);
            test_matmul(be, label, false);
            test_attention(be, label);
            test_rows_ops(be, label);
            test_qkv_rope_store(be, label);
            loom_backend_destroy(be);
        }
    }
    /* the bf16 fast mode (where avx512_bf16 exists; elsewhere it is the exact path) */
    struct loom_backend *be = make_backend("avx512", 2, LOOM_DTYPE_BF16);
    CHECK(be->act_dtype == LOOM_DTYPE_F32);
    test_matmul(be, "[bf16 matmul mode]", true);
    loom_backend_destroy(be);
    return test_report();
}
