/*
 * cpu_backend.c: the CPU backend's ops table: memory (host memory; weights zero-copy from the
 * mmap), the run-time choice of instruction set, and every op except matmul (cpu_matmul.c) and
 * attention (cpu_attention.c). Ops run synchronously on the calling thread plus the pool; small
 * ones run inline, since a dispatch costs microseconds.
 *
 * Activations (and the KV cache) are F32. Weight-like operands (embedding table, norm weights,
 * biases) may be F32, F16 or BF16. Norm sums of squares and the MoE softmax run in double: cheap
 * here, and it keeps the fp32 path within a hair of the float64 reference.
 */
#include "backend/cpu/cpu_internal.h"
#include "core/log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

/* ---------------------------------------------------------------------------------------------- */
/* memory */

static void *cpu_alloc(struct loom_backend *be, size_t bytes)
{
    be->n_allocs++;
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p && bytes) LOOM_DIE("out of host memory allocating %zu bytes", bytes);
    return p;
}

static void cpu_free(struct loom_backend *be, void *ptr)
{
    (void)be;
    free(ptr);
}

static void *cpu_upload_weights(struct loom_backend *be, const void *src, size_t bytes)
{
    (void)be;
#ifdef MADV_POPULATE_READ
    /* Map the pages now (Linux >= 5.14), so the first forward pass does not take a page fault per
     * 4 KiB of weights; harmless where unsupported or when src is not a mapping. */
    uintptr_t a = (uintptr_t)src & ~(uintptr_t)4095, e = (uintptr_t)src + bytes;
    if (bytes) (void)madvise((void *)a, e - a, MADV_POPULATE_READ);
#else
    (void)bytes;
#endif
    return (void *)src; /* zero copy: the kernels read the mmapped file with unaligned loads */
}

static void cpu_copy(struct loom_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes) memmove(dst, src, bytes);
}

static void cpu_synchronize(struct loom_backend *be)
{
    (void)be;
}

static void cpu_memory_info(struct loom_backend *be, size_t *free_bytes, size_t *total_bytes)
{
    (void)be;
    size_t total = 0, avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof(line), f)) {
            if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) total = (size_t)kb * 1024;
            else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) avail = (size_t)kb * 1024;
        }
        fclose(f);
    }
    if (free_bytes) *free_bytes = avail;
    if (total_bytes) *total_bytes = total;
}

/* ---------------------------------------------------------------------------------------------- */
/* helpers */

/* Rows per parallel chunk so each chunk does about 16K elements of work (small ops stay inline). */
static int64_t row_grain(int64_t cols)
{
    int64_t g = 16384 / (cols > 0 ? cols : 1);
    return g < 1 ? 1 : g;
}

static float *frow(struct loom_tensor x, int64_t r)
{
    return (float *)cpu_row(x, r);
}

/* ---------------------------------------------------------------------------------------------- */
/* embedding, gather_rows */

struct rows_job {
    struct cpu_ctx *c;
    struct loom_tensor out, x, w;
    const int32_t *idx;
    const float *weight;
    float eps;
};

static void embedding_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct rows_job *j = arg;
    (void)ith;
    for (int64_t i = b; i < e; i++) {
        int64_t id = j->idx[i];
        LOOM_ASSERT(id >= 0 && id < j->x.rows);
        cpu_row_to_f32(frow(j->out, i), cpu_row(j->x, id), j->x.dtype, j->out.cols);
    }
}

static void cpu_embedding(struct loom_backend *be, struct loom_tensor out, struct loom_tensor table,
                          const int32_t *ids)
{
    LOOM_ASSERT(out.dtype == LOOM_DTYPE_F32 && cpu_is_float(table.dtype) && out.cols == table.cols);
    struct rows_job j = {.c = cpu_ctx(be), .out = out, .x = table, .idx = ids};
    loom_parallel_for(j.c->tp, out.rows, row_grain(out.cols), embedding_rows, &j);
}

static void gather_rows_fn(void *arg, int64_t b, int64_t e, int ith)
{
    const struct rows_job *j = arg;
    (void)ith;
    size_t bytes = (size_t)j->out.cols * loom_dtype_size(j->out.dtype);
    for (int64_t i = b; i < e; i++) {
        int64_t r = j->idx[i];
        LOOM_ASSERT(r >= 0 && r < j->x.rows);
        memcpy(cpu_row(j->out, i), cpu_row(j->x, r), bytes);
    }
}

static void cpu_gather_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                            const int32_t *idx)
{
    LOOM_ASSERT(out.dtype == x.dtype && out.cols == x.cols);
    struct rows_job j = {.c = cpu_ctx(be), .out = out, .x = x, .idx = idx};
    loom_parallel_for(j.c->tp, out.rows, row_grain(out.cols), gather_rows_fn, &j);
}

/* out[idx[i], :] += weight[i] * x[i, :]; idx distinct, so rows can go to different threads */
static void scatter_rows_fn(void *arg, int64_t b, int64_t e, int ith)
{
    const struct rows_job *j = arg;
    (void)ith;
    for (int64_t i = b; i < e; i++) {
        int64_t r = j->idx[i];
        LOOM_ASSERT(r >= 0 && r < j->out.rows);
        cpu_axpy_f32(j->c->isa, frow(j->out, r), j->weight ? j->weight[i] : 1.0f, frow(j->x, i), (int)j->x.cols);
    }
}

static void cpu_scatter_add_rows(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                                 const int32_t *idx, const float *weight)
{
    LOOM_ASSERT(out.dtype == LOOM_DTYPE_F32 && x.dtype == LOOM_DTYPE_F32 && out.cols == x.cols);
    struct rows_job j = {.c = cpu_ctx(be), .out = out, .x = x, .idx = idx, .weight = weight};
    loom_parallel_for(j.c->tp, x.rows, row_grain(x.cols), scatter_rows_fn, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* rmsnorm, add_rmsnorm */

static void rmsnorm_row(float *out, const float *x, const void *w, enum loom_dtype wt, int64_t d, float eps)
{
    double ss = 0;
    for (int64_t i = 0; i < d; i++) ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
    if (wt == LOOM_DTYPE_F32) {
        const float *wf = w;
        for (int64_t i = 0; i < d; i++) out[i] = x[i] * r * wf[i];
    } else {
        for (int64_t i = 0; i < d; i++) out[i] = x[i] * r * cpu_load_f(w, wt, i);
    }
}

static void rmsnorm_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct rows_job *j = arg;
    (void)ith;
    for (int64_t i = b; i < e; i++) rmsnorm_row(frow(j->out, i), frow(j->x, i), j->w.data, j->w.dtype, j->x.cols, j->eps);
}

static void cpu_rmsnorm(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                        struct loom_tensor weight, float eps)
{
    LOOM_ASSERT(out.dtype == LOOM_DTYPE_F32 && x.dtype == LOOM_DTYPE_F32 && cpu_is_float(weight.dtype));
    LOOM_ASSERT(out.rows == x.rows && out.cols == x.cols && weight.rows * weight.cols == x.cols);
    struct rows_job j = {.c = cpu_ctx(be), .out = out, .x = x, .w = weight, .eps = eps};
    loom_parallel_for(j.c->tp, x.rows, row_grain(x.cols), rmsnorm_rows, &j);
}

struct add_norm_job {
    struct cpu_ctx *c;
    struct loom_tensor residual, x, out, w;
    float eps;
};

static void add_rmsnorm_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct add_norm_job *j = arg;
    (void)ith;
    for (int64_t i = b; i < e; i++) {
        float *r = frow(j->residual, i);
        const float *x = frow(j->x, i);
        for (int64_t c = 0; c < j->residual.cols; c++) r[c] += x[c];
        rmsnorm_row(frow(j->out, i), r, j->w.data, j->w.dtype, j->residual.cols, j->eps);
    }
}

static void cpu_add_rmsnorm(struct loom_backend *be, struct loom_tensor residual, struct loom_tensor x,
                            struct loom_tensor out, struct loom_tensor weight, float eps)
{
    LOOM_ASSERT(residual.dtype == LOOM_DTYPE_F32 && x.dtype == LOOM_DTYPE_F32 && out.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(residual.rows == x.rows && residual.cols == x.cols && out.rows == x.rows && out.cols == x.cols);
    LOOM_ASSERT(cpu_is_float(weight.dtype) && weight.rows * weight.cols == x.cols);
    struct add_norm_job j = {cpu_ctx(be), residual, x, out, weight, eps};
    loom_parallel_for(j.c->tp, x.rows, row_grain(x.cols), add_rmsnorm_rows, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* rope */

struct rope_job {
    struct loom_tensor x, inv_freq;
    const int32_t *positions;
    int n_heads, head_dim;
};

static void rope_angles(int32_t position, const float *inv, int half, float *cs, float *sn)
{
    float pos = (float)position;
    for (int i = 0; i < half; i++) {
        /* as transformers: the angle is a float32 product; cos/sin of it, rounded to float */
        float ang = pos * inv[i];
        cs[i] = (float)cos((double)ang);
        sn[i] = (float)sin((double)ang);
    }
}

static void rope_heads(float *row, int n_heads, int head_dim, const float *cs, const float *sn)
{
    const int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *v = row + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cs[i] - x2 * sn[i];
            v[i + half] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

static void rope_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct rope_job *j = arg;
    (void)ith;
    float cs[512], sn[512];
    for (int64_t t = b; t < e; t++) {
        rope_angles(j->positions[t], j->inv_freq.data, j->head_dim / 2, cs, sn);
        rope_heads(frow(j->x, t), j->n_heads, j->head_dim, cs, sn);
    }
}

static void cpu_rope(struct loom_backend *be, struct loom_tensor x, const int32_t *positions, int n_heads,
                     int head_dim, struct loom_tensor inv_freq)
{
    LOOM_ASSERT(x.dtype == LOOM_DTYPE_F32 && inv_freq.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(head_dim % 2 == 0 && head_dim <= 1024 && x.cols >= (int64_t)n_heads * head_dim);
    LOOM_ASSERT(inv_freq.rows * inv_freq.cols >= head_dim / 2);
    struct rope_job j = {x, inv_freq, positions, n_heads, head_dim};
    loom_parallel_for(cpu_ctx(be)->tp, x.rows, row_grain((int64_t)n_heads * head_dim), rope_rows, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* kv_store */

static void cpu_kv_store(struct loom_backend *be, struct loom_tensor k_cache, struct loom_tensor v_cache,
                         struct loom_tensor k, struct loom_tensor v, const int32_t *slot_mapping)
{
    (void)be;
    LOOM_ASSERT(k_cache.dtype == k.dtype && v_cache.dtype == v.dtype && k.rows == v.rows);
    LOOM_ASSERT(k.cols == k_cache.cols && v.cols == v_cache.cols);
    size_t kb = (size_t)k.cols * loom_dtype_size(k.dtype), vb = (size_t)v.cols * loom_dtype_size(v.dtype);
    for (int64_t i = 0; i < k.rows; i++) {
        int64_t s = slot_mapping[i];
        if (s < 0) continue; /* padding token */
        LOOM_ASSERT(s < k_cache.rows && s < v_cache.rows);
        memcpy(cpu_row(k_cache, s), cpu_row(k, i), kb);
        memcpy(cpu_row(v_cache, s), cpu_row(v, i), vb);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* qkv_rope_store: per row, the per-head norms (rmsnorm_row), rope (rope_angles / rope_heads) and the
 * cache copies of rmsnorm + rope + kv_store, in that order: the same arithmetic, so the same bits. */

struct qkv_job {
    struct loom_tensor qkv, inv_freq, k_cache, v_cache;
    const struct loom_tensor *q_norm, *k_norm;
    const int32_t *positions, *slots;
    int nh, nkv, hd;
    float eps;
};

static void qkv_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct qkv_job *j = arg;
    (void)ith;
    const int D = j->hd;
    float cs[512], sn[512];
    for (int64_t t = b; t < e; t++) {
        float *q = frow(j->qkv, t), *k = q + (int64_t)j->nh * D, *v = k + (int64_t)j->nkv * D;
        if (j->q_norm) {
            for (int h = 0; h < j->nh; h++)
                rmsnorm_row(q + (int64_t)h * D, q + (int64_t)h * D, j->q_norm->data, j->q_norm->dtype, D, j->eps);
            for (int h = 0; h < j->nkv; h++)
                rmsnorm_row(k + (int64_t)h * D, k + (int64_t)h * D, j->k_norm->data, j->k_norm->dtype, D, j->eps);
        }
        rope_angles(j->positions[t], j->inv_freq.data, D / 2, cs, sn);
        rope_heads(q, j->nh, D, cs, sn);
        rope_heads(k, j->nkv, D, cs, sn);
        int64_t s = j->slots[t];
        if (s < 0) continue; /* padding token */
        LOOM_ASSERT(s < j->k_cache.rows && s < j->v_cache.rows);
        memcpy(cpu_row(j->k_cache, s), k, (size_t)j->nkv * D * sizeof(float));
        memcpy(cpu_row(j->v_cache, s), v, (size_t)j->nkv * D * sizeof(float));
    }
}

static void cpu_qkv_rope_store(struct loom_backend *be, struct loom_tensor qkv, const int32_t *positions,
                               const int32_t *slot_mapping, int n_heads, int n_kv_heads, int head_dim,
                               struct loom_tensor inv_freq, const struct loom_tensor *q_norm,
                               const struct loom_tensor *k_norm, float eps, struct loom_tensor k_cache,
                               struct loom_tensor v_cache)
{
    const int64_t kw = (int64_t)n_kv_heads * head_dim;
    LOOM_ASSERT(qkv.dtype == LOOM_DTYPE_F32 && inv_freq.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(k_cache.dtype == LOOM_DTYPE_F32 && v_cache.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(head_dim % 2 == 0 && head_dim <= 1024 && n_heads > 0 && n_kv_heads > 0);
    LOOM_ASSERT(qkv.cols >= (int64_t)n_heads * head_dim + 2 * kw && k_cache.cols == kw && v_cache.cols == kw);
    LOOM_ASSERT(inv_freq.rows * inv_freq.cols >= head_dim / 2);
    LOOM_ASSERT((q_norm == NULL) == (k_norm == NULL));
    if (q_norm)
        LOOM_ASSERT(cpu_is_float(q_norm->dtype) && cpu_is_float(k_norm->dtype) &&
                    q_norm->rows * q_norm->cols == head_dim && k_norm->rows * k_norm->cols == head_dim);
    struct qkv_job j = {qkv, inv_freq, k_cache, v_cache, q_norm, k_norm, positions, slot_mapping,
                        n_heads, n_kv_heads, head_dim, eps};
    loom_parallel_for(cpu_ctx(be)->tp, qkv.rows, row_grain(qkv.cols), qkv_rows, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* silu_mul, add */

struct ew_job {
    struct cpu_ctx *c;
    struct loom_tensor out, a, b;
};

static void silu_mul_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct ew_job *j = arg;
    (void)ith;
    for (int64_t i = b; i < e; i++) cpu_silu_mul_f32(j->c->isa, frow(j->out, i), frow(j->a, i), frow(j->b, i), (int)j->out.cols);
}

static void cpu_silu_mul(struct loom_backend *be, struct loom_tensor out, struct loom_tensor gate,
                         struct loom_tensor up)
{
    LOOM_ASSERT(out.dtype == LOOM_DTYPE_F32 && gate.dtype == LOOM_DTYPE_F32 && up.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(out.rows == gate.rows && out.rows == up.rows && out.cols == gate.cols && out.cols == up.cols);
    struct ew_job j = {cpu_ctx(be), out, gate, up};
    loom_parallel_for(j.c->tp, out.rows, row_grain(out.cols), silu_mul_rows, &j);
}

static void add_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct ew_job *j = arg;
    (void)ith;
    for (int64_t i = b; i < e; i++) cpu_axpy_f32(j->c->isa, frow(j->out, i), 1.0f, frow(j->a, i), (int)j->out.cols);
}

static void cpu_add(struct loom_backend *be, struct loom_tensor x, struct loom_tensor y)
{
    LOOM_ASSERT(x.dtype == LOOM_DTYPE_F32 && y.dtype == LOOM_DTYPE_F32 && x.rows == y.rows && x.cols == y.cols);
    struct ew_job j = {cpu_ctx(be), x, y, y};
    loom_parallel_for(j.c->tp, x.rows, row_grain(x.cols), add_rows, &j);
}

/* ---------------------------------------------------------------------------------------------- */
/* moe_route: softmax over experts (double), top-k (ties: lower index, as torch.topk), renormalize */

static void cpu_moe_route(struct loom_backend *be, struct loom_tensor logits, int k, bool renormalize, int32_t *ids,
                          float *weights)
{
    (void)be;
    LOOM_ASSERT(logits.dtype == LOOM_DTYPE_F32 && k >= 1 && k <= logits.cols && logits.cols <= 1024);
    const int ne = (int)logits.cols;
    double p[1024];
    bool taken[1024];
    for (int64_t t = 0; t < logits.rows; t++) {
        const float *l = frow(logits, t);
        double mx = l[0], sum = 0;
        for (int e = 1; e < ne; e++)
            if (l[e] > mx) mx = l[e];
        for (int e = 0; e < ne; e++) sum += (p[e] = exp((double)l[e] - mx));
        for (int e = 0; e < ne; e++) {
            p[e] /= sum;
            taken[e] = false;
        }
        double topsum = 0;
        for (int i = 0; i < k; i++) {
            int best = -1;
            for (int e = 0; e < ne; e++)
                if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
            taken[best] = true;
            ids[t * k + i] = best;
            topsum += p[best];
        }
        for (int i = 0; i < k; i++) {
            double w = p[ids[t * k + i]];
            weights[t * k + i] = (float)(renormalize ? w / topsum : w);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* moe_experts: the rows grouped by expert on the host (ids are host memory here), then per expert
 * with rows: gather -> gate and up matmuls -> silu_mul -> down matmul -> weighted scatter-add into x,
 * experts in ascending order, rows in token order within one (the results of model/moe.c before the op
 * existed, bit for bit). Scratch layout (64-byte aligned pieces, sized for max_rows): rows int32 and
 * their weights F32 [max_rows * k], xe and ye F32 [max_rows, H], g and u F32 [max_rows, MI]. */

static size_t moe_al(size_t b)
{
    return (b + 63) & ~(size_t)63;
}

static size_t cpu_moe_workspace_bytes(struct loom_backend *be, int max_rows, int k, int n_experts, int hidden,
                                      int inter)
{
    (void)be;
    (void)n_experts;
    size_t nk = (size_t)max_rows * (size_t)k;
    return 2 * moe_al(nk * 4) + 2 * moe_al((size_t)max_rows * hidden * 4) + 2 * moe_al((size_t)max_rows * inter * 4);
}

static void cpu_moe_experts(struct loom_backend *be, struct loom_tensor x, struct loom_tensor h, const int32_t *ids,
                            const float *weights, int k, const struct loom_moe_experts *ex, void *ws)
{
    const int n = (int)h.rows, E = ex->n_experts;
    LOOM_ASSERT(E >= 1 && E <= 1024 && k >= 1 && k <= E && x.rows == n && x.cols == h.cols);
    if (n == 0) return;
    const int64_t H = h.cols, MI = ex->gate[0].rows;
    char *p = ws;
    int32_t *rows = (int32_t *)p;
    p += moe_al((size_t)n * k * 4);
    float *rw = (float *)p;
    p += moe_al((size_t)n * k * 4);
    struct loom_tensor xe = loom_tensor_2d(p, LOOM_DTYPE_F32, n, H);
    p += moe_al((size_t)n * H * 4);
    struct loom_tensor ye = loom_tensor_2d(p, LOOM_DTYPE_F32, n, H);
    p += moe_al((size_t)n * H * 4);
    float *gbuf = (float *)p;
    p += moe_al((size_t)n * MI * 4);
    float *ubuf = (float *)p;
    /* group (token, weight) pairs by expert, tokens in order within each */
    int count[1024], start[1024], fill[1024];
    for (int e = 0; e < E; e++) count[e] = 0;
    for (int i = 0; i < n * k; i++) {
        int e = ids[i];
        LOOM_ASSERT(e >= 0 && e < E);
        count[e]++;
    }
    int off = 0;
    for (int e = 0; e < E; e++) {
        start[e] = off;
        fill[e] = off;
        off += count[e];
    }
    for (int t = 0; t < n; t++)
        for (int j = 0; j < k; j++) {
            int e = ids[t * k + j];
            rows[fill[e]] = t;
            rw[fill[e]] = weights[t * k + j];
            fill[e]++;
        }
    for (int e = 0; e < E; e++) {
        const int cnt = count[e];
        if (!cnt) continue;
        LOOM_ASSERT(cnt <= n); /* the k ids of a row are distinct */
        const int32_t *idx = rows + start[e];
        struct loom_tensor xs = loom_tensor_rows(xe, 0, cnt);
        struct loom_tensor g = loom_tensor_2d(gbuf, LOOM_DTYPE_F32, cnt, MI), u = loom_tensor_2d(ubuf, LOOM_DTYPE_F32, cnt, MI);
        cpu_gather_rows(be, xs, h, idx);
        cpu_matmul(be, g, xs, ex->gate[e], NULL);
        cpu_matmul(be, u, xs, ex->up[e], NULL);
        cpu_silu_mul(be, g, g, u);
        cpu_matmul(be, loom_tensor_2d(ye.data, LOOM_DTYPE_F32, cnt, H), g, ex->down[e], NULL);
        cpu_scatter_add_rows(be, x, loom_tensor_rows(ye, 0, cnt), idx, rw + start[e]);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* convert */

struct convert_job {
    struct loom_tensor dst, src;
};

static void convert_rows(void *arg, int64_t b, int64_t e, int ith)
{
    const struct convert_job *j = arg;
    (void)ith;
    float buf[1024];
    const int64_t cols = j->src.cols;
    for (int64_t r = b; r < e; r++) {
        if (j->dst.dtype == j->src.dtype) {
            memcpy(cpu_row(j->dst, r), cpu_row(j->src, r), (size_t)cols * loom_dtype_size(j->src.dtype));
            continue;
        }
        for (int64_t c0 = 0; c0 < cols; c0 += 1024) {
            int64_t n = cols - c0 < 1024 ? cols - c0 : 1024;
            const char *s = (const char *)cpu_row(j->src, r) + c0 * (int64_t)loom_dtype_size(j->src.dtype);
            char *d = (char *)cpu_row(j->dst, r) + c0 * (int64_t)loom_dtype_size(j->dst.dtype);
            if (j->dst.dtype == LOOM_DTYPE_F32) {
                cpu_row_to_f32((float *)buf, s, j->src.dtype, n);
                memcpy(d, buf, (size_t)n * 4);
            } else {
                cpu_row_to_f32(buf, s, j->src.dtype, n);
                uint16_t h[1024];
                loom_convert_from_f32(h, j->dst.dtype, buf, (size_t)n);
                memcpy(d, h, (size_t)n * 2);
            }
        }
    }
}

static void cpu_convert(struct loom_backend *be, struct loom_tensor dst, struct loom_tensor src)
{
    LOOM_ASSERT(dst.rows == src.rows && dst.cols == src.cols);
    LOOM_ASSERT(dst.dtype == src.dtype || (cpu_is_float(dst.dtype) && cpu_is_float(src.dtype)));
    struct convert_job j = {dst, src};
    loom_parallel_for(cpu_ctx(be)->tp, src.rows, row_grain(src.cols), convert_rows, &j);
}

/* ---------------------------------------------------------------------------------------------- */

static void cpu_destroy(struct loom_backend *be)
{
    struct cpu_ctx *c = cpu_ctx(be);
    loom_threadpool_free(c->tp);
    free(c->scratch);
    free(c);
    free(be);
}

static const struct loom_backend_ops cpu_ops = {
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload_weights = cpu_upload_weights,
    .upload = cpu_copy,
    .download = cpu_copy,
    .synchronize = cpu_synchronize,
    .memory_info = cpu_memory_info,
    .embedding = cpu_embedding,
    .rmsnorm = cpu_rmsnorm,
    .add_rmsnorm = cpu_add_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .qkv_rope_store = cpu_qkv_rope_store,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .add = cpu_add,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .moe_route = cpu_moe_route,
    .convert = cpu_convert,
    .moe_experts = cpu_moe_experts,
    .moe_workspace_bytes = cpu_moe_workspace_bytes,
};

static enum cpu_isa detect_isa(bool *bf16_dot)
{
    enum cpu_isa isa = CPU_ISA_PORTABLE;
    *bf16_dot = false;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = CPU_ISA_AVX2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        isa = CPU_ISA_AVX512;
    *bf16_dot = isa == CPU_ISA_AVX512 && __builtin_cpu_supports("avx512bf16");
#endif
    const char *cap = getenv("LOOM_CPU_ISA");
    if (cap) {
        enum cpu_isa want = !strcmp(cap, "portable") ? CPU_ISA_PORTABLE : !strcmp(cap, "avx2") ? CPU_ISA_AVX2 : CPU_ISA_AVX512;
        if (want < isa) isa = want;
        if (isa != CPU_ISA_AVX512) *bf16_dot = false;
    }
    return isa;
}

int loom_backend_cpu_create(const struct loom_backend_options *opts, struct loom_backend **out)
{
    struct loom_backend *be = loom_calloc(1, sizeof(*be));
    struct cpu_ctx *c = loom_calloc(1, sizeof(*c));
    c->isa = detect_isa(&c->has_bf16_dot);
    c->bf16_matmul = opts && opts->act_dtype == LOOM_DTYPE_BF16;
    c->tp = loom_threadpool_create(opts ? opts->threads : 0);
    be->ops = &cpu_ops;
    be->name = "cpu";
    be->act_dtype = LOOM_DTYPE_F32;
    be->threads = loom_threadpool_size(c->tp);
    be->ctx = c;
    static const char *isa_names[] = {"portable C", "AVX2", "AVX-512"};
    LOG_DEBUG("cpu backend: %d threads, %s%s%s", be->threads, isa_names[c->isa], c->has_bf16_dot ? " + bf16 dot" : "",
              c->bf16_matmul && c->has_bf16_dot ? " (bf16 matmul mode)" : "");
    *out = be;
    return 0;
}
