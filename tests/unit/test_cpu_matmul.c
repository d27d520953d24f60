/*
 * test_cpu_matmul.c: the CPU matmul (out[n, m] = x[n, k] @ w[m, k]^T + bias) against a double-precision
 * reference for every n from 1 to 70 (the GEMV, the small-n GEMM of batched decode, the blocked GEMM of
 * prefill) and a few large n (token blocks), odd m and k (row blocks of 4 with a tail, k tails of the
 * 32-wide steps and of the KC blocks), strided and unaligned views of x, w and out, with and without
 * bias, weights in F32, F16 and BF16, for each instruction-set level, 1 to 3 threads, and the bf16
 * dot-product mode (whose reference rounds x to bf16 the way the kernel does). Elements of out outside
 * the view (the stride padding) must stay untouched. Also the thread pool's answer to a worker that
 * the OS takes off its core in the middle of a chunk (the matmul's parallel_for on a loaded machine).
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
#include <unistd.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;
static double frand(void) /* uniform [-1, 1) */
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / (double)(1ull << 52) - 1.0;
}

static const float GUARD = 12345.0f; /* written into the padding of out; must survive */

struct wmat {
    void *buf;
    void *data;  /* element (r, c) at data + (r * stride + c) * dtype size */
    double *ref; /* exact values [rows * cols] */
    int64_t stride;
};

static struct wmat wmat_rand(enum loom_dtype t, int64_t rows, int64_t cols, int64_t stride, size_t misalign)
{
    struct wmat m = {0};
    size_t es = loom_dtype_size(t);
    m.buf = calloc(1, (size_t)(rows * stride) * es + misalign + 64);
    m.data = (char *)m.buf + misalign;
    m.ref = calloc((size_t)(rows * cols) + 1, sizeof(double));
    m.stride = stride;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < stride; c++) {
            /* the padding past cols holds huge values and NaN: a kernel that reads it fails */
            float v = c < cols ? (float)frand() : (c % 2 ? NAN : 1e30f);
            char *p = (char *)m.data + (size_t)(r * stride + c) * es;
            if (t == LOOM_DTYPE_F32) {
                memcpy(p, &v, 4);
            } else if (t == LOOM_DTYPE_BF16) {
                uint16_t h = loom_f32_to_bf16(v);
                memcpy(p, &h, 2);
                v = loom_bf16_to_f32(h);
            } else {
                uint16_t h = loom_f32_to_f16(c < cols ? v : NAN);
                memcpy(p, &h, 2);
                v = loom_f16_to_f32(h);
            }
            if (c < cols) m.ref[r * cols + c] = v;
        }
    return m;
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

/* One call; returns the worst error relative to sum |x * w| + 1, or +inf if the padding was written. */
static double check_one(struct loom_backend *be, int n, int m, int k, enum loom_dtype wt, bool bias, bool bf16_x)
{
    const int64_t xs = k + 3, os = m + 5, wstride = k + (k % 3); /* strided views, w rows padded too */
    float *xbuf = malloc(sizeof(float) * (size_t)(n * xs + 1));
    float *x = xbuf + 1; /* not 64-byte aligned */
    double *xref = malloc(sizeof(double) * (size_t)n * (size_t)k);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < xs; c++) {
            float v = c < k ? (float)frand() : NAN;
            x[(int64_t)i * xs + c] = v;
            if (c < k) xref[(int64_t)i * k + c] = bf16_x ? loom_bf16_to_f32(loom_f32_to_bf16(v)) : v;
        }
    struct wmat w = wmat_rand(wt, m, k, wstride, wt == LOOM_DTYPE_F32 ? 4 : 2);
    struct wmat b = wmat_rand(LOOM_DTYPE_BF16, 1, m, m, 2);
    float *out = malloc(sizeof(float) * (size_t)(n * os));
    for (int64_t i = 0; i < n * os; i++) out[i] = GUARD;
    struct loom_tensor xt = {x, LOOM_DTYPE_F32, n, k, xs};
    struct loom_tensor wt_ = {w.data, wt, m, k, wstride};
    struct loom_tensor ot = {out, LOOM_DTYPE_F32, n, m, os};
    struct loom_tensor bt = {b.data, LOOM_DTYPE_BF16, 1, m, m};
    be->ops->matmul(be, ot, xt, wt_, bias ? &bt : NULL);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < m; j++) {
            double s = 0, mag = 0;
            for (int c = 0; c < k; c++) {
                double p = xref[(int64_t)i * k + c] * w.ref[(int64_t)j * k + c];
                s += p;
                mag += fabs(p);
            }
            if (bias) s += b.ref[j];
            double err = fabs((double)out[(int64_t)i * os + j] - s) / (mag + 1.0);
            if (!(err <= worst)) worst = err; /* NaN propagates as the worst */
        }
        for (int j = m; j < os; j++)
            if (out[(int64_t)i * os + j] != GUARD) worst = INFINITY;
    }
    free(xbuf);
    free(xref);
    free(w.buf);
    free(w.ref);
    free(b.buf);
    free(b.ref);
    free(out);
    return worst;
}

/* n_max: every n in [1, n_max], plus the large ones */
static void run(struct loom_backend *be, const char *label, bool bf16_mode, int n_max, bool large)
{
    static const int mk[][2] = {{37, 67}, {13, 1030}, {5, 33}, {64, 96}, {9, 8}};
    const enum loom_dtype dts[] = {LOOM_DTYPE_F32, LOOM_DTYPE_F16, LOOM_DTYPE_BF16};
    int fails = 0;
    for (int n = 1; n <= n_max + (large ? 2 : 0); n++) {
        int nn = n <= n_max ? n : n == n_max + 1 ? 260 : 517; /* past one token block of the small-n GEMM */
        for (size_t s = 0; s < sizeof(mk) / sizeof(mk[0]); s++) {
            if (nn > 70 && s == 1) continue; /* keep the run short */
            for (int d = 0; d < 3; d++) {
                bool bias = (nn + (int)s + d) % 2 == 0;
                /* the bf16 mode rounds x to bf16 for bf16 weights above 4 rows (below, it stays exact) */
                bool approx = bf16_mode && dts[d] == LOOM_DTYPE_BF16 && nn > 4;
                double err = check_one(be, nn, mk[s][0], mk[s][1], dts[d], bias, approx);
                if (!(err < 2e-6) && fails++ < 20)
                    CHECK_MSG(false, "%s n=%d m=%d k=%d w=%s bias=%d: relative error %g", label, nn, mk[s][0], mk[s][1],
                              loom_dtype_name(dts[d]), bias, err);
                else CHECK(true);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */

static _Atomic int pool_worker_chunks, pool_slow_once;

static void spin_us(double us)
{
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    do clock_gettime(CLOCK_MONOTONIC, &b);
    while ((double)(b.tv_sec - a.tv_sec) * 1e6 + (double)(b.tv_nsec - a.tv_nsec) * 1e-3 < us);
}

static void pool_fn(void *arg, int64_t b, int64_t e, int ith)
{
    int *hits = arg;
    for (int64_t i = b; i < e; i++) hits[i]++;
    if (ith != 0) {
        atomic_fetch_add(&pool_worker_chunks, 1);
        if (atomic_exchange(&pool_slow_once, 0)) usleep(50000); /* "descheduled" holding its chunk */
    } else {
        spin_us(200);
    }
}

static void test_pool_late_worker(void)
{
    struct loom_threadpool *tp = loom_threadpool_create(2);
    int hits[64];
    /* a worker that sleeps 50 ms inside its chunk: every chunk still runs exactly once, and the pool
     * switches to the caller alone */
    for (int attempt = 0; attempt < 5 && loom_threadpool_solo_windows(tp) == 0; attempt++) {
        memset(hits, 0, sizeof(hits));
        atomic_store(&pool_worker_chunks, 0);
        atomic_store(&pool_slow_once, 1);
        loom_parallel_for(tp, 64, 1, pool_fn, hits);
        for (int i = 0; i < 64; i++) CHECK_EQ_INT(hits[i], 1);
        usleep(60000); /* the sleeping worker is done; any solo window it opened is over too */
        if (atomic_load(&pool_worker_chunks) == 0) continue; /* the worker never came: try again */
        /* it came and slept: the caller's 63 x 200 us < twice its 50 ms, so this was a late worker */
        CHECK_MSG(loom_threadpool_solo_windows(tp) == 1, "solo windows %lld",
                  (long long)loom_threadpool_solo_windows(tp));
    }
    CHECK(loom_threadpool_solo_windows(tp) == 1);
    /* again, and right after it the next job runs on the caller alone */
    int64_t before = loom_threadpool_solo_windows(tp);
    for (int attempt = 0; attempt < 5 && loom_threadpool_solo_windows(tp) == before; attempt++) {
        atomic_store(&pool_slow_once, 1);
        memset(hits, 0, sizeof(hits));
        loom_parallel_for(tp, 64, 1, pool_fn, hits);
    }
    CHECK(loom_threadpool_solo_windows(tp) == before + 1);
    atomic_store(&pool_slow_once, 0);
    atomic_store(&pool_worker_chunks, 0);
    memset(hits, 0, sizeof(hits));
    loom_parallel_for(tp, 64, 1, pool_fn, hits);
    CHECK_EQ_INT(atomic_load(&pool_worker_chunks), 0);
    for (int i = 0; i < 64; i++) CHECK_EQ_INT(hits[i], 1);
    /* after the window the worker takes part again */
    usleep(60000);
    bool joined = false;
    for (int attempt = 0; attempt < 10 && !joined; attempt++) {
        atomic_store(&pool_worker_chunks, 0);
        memset(hits, 0, sizeof(hits));
        loom_parallel_for(tp, 64, 1, pool_fn, hits);
        for (int i = 0; i < 64; i++) CHECK_EQ_INT(hits[i], 1);
        joined = atomic_load(&pool_worker_chunks) > 0;
    }
    CHECK(joined);
    loom_threadpool_free(tp);
}

/* Batch invariance (AVX-512, fp32 mode): a row's product is the same bits whether it is computed alone
 * (the GEMV) or among n rows (the small-n GEMM, blocks of 256), so a request's logits do not depend on
 * what else is in the step. */
static void test_batch_invariance(void)
{
    struct loom_backend *be = make_backend("avx512", 2, LOOM_DTYPE_F32);
    if (!be) return;
    const enum loom_dtype wts[] = {LOOM_DTYPE_BF16, LOOM_DTYPE_F16, LOOM_DTYPE_F32};
    const int ns[] = {2, 3, 4, 5, 6, 11, 16, 17, 64, 70, 260};
    const int m = 77, k = 300;
    float *x = malloc(sizeof(float) * 260 * k), *outn = malloc(sizeof(float) * 260 * m), *out1 = malloc(sizeof(float) * m);
    for (int i = 0; i < 260 * k; i++) x[i] = (float)frand();
    for (size_t wi = 0; wi < sizeof(wts) / sizeof(wts[0]); wi++) {
        struct wmat w = wmat_rand(wts[wi], m, k, k, 0);
        struct loom_tensor wt = {w.data, wts[wi], m, k, k};
        int bad = 0;
        for (size_t ni = 0; ni < sizeof(ns) / sizeof(ns[0]); ni++) {
            const int n = ns[ni];
            be->ops->matmul(be, loom_tensor_2d(outn, LOOM_DTYPE_F32, n, m), loom_tensor_2d(x, LOOM_DTYPE_F32, n, k), wt,
                            NULL);
            for (int t = 0; t < n; t++) {
                be->ops->matmul(be, loom_tensor_2d(out1, LOOM_DTYPE_F32, 1, m),
                                loom_tensor_2d(x + (size_t)t * k, LOOM_DTYPE_F32, 1, k), wt, NULL);
                bad += memcmp(out1, outn + (size_t)t * m, sizeof(float) * m) != 0;
            }
        }
        CHECK_MSG(bad == 0, "batch invariance, %s weights: %d rows differ between a call of n rows and of one",
                  loom_dtype_name(wts[wi]), bad);
        free(w.buf);
        free(w.ref);
    }
    free(x);
    free(outn);
    free(out1);
    loom_backend_destroy(be);
}

int main(void)
{
    test_pool_late_worker();
    test_batch_invariance();
    struct {
        const char *isa;
        int threads;
        enum loom_dtype act;
        int n_max;
    } cfg[] = {
        {"avx512", 1, LOOM_DTYPE_F32, 70}, {"avx512", 2, LOOM_DTYPE_F32, 70}, {"avx512", 3, LOOM_DTYPE_F32, 70},
        {"avx512", 2, LOOM_DTYPE_BF16, 70}, {"avx2", 2, LOOM_DTYPE_F32, 12},  {"portable", 2, LOOM_DTYPE_F32, 6},
    };
    for (size_t i = 0; i < sizeof(cfg) / sizeof(cfg[0]); i++) {
        char label[96];
        snprintf(label, sizeof(label), "[%s, %d threads, %s]", cfg[i].isa, cfg[i].threads,
                 cfg[i].act == LOOM_DTYPE_BF16 ? "bf16 mode" : "f32");
        struct loom_backend *be = make_backend(cfg[i].isa, cfg[i].threads, cfg[i].act);
        if (!be) continue;
        run(be, label, cfg[i].act == LOOM_DTYPE_BF16, cfg[i].n_max, cfg[i].threads != 1);
        loom_backend_destroy(be);
    }
    return test_report();
}
