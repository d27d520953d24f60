/*
 * cuda_graph.cu: launch recording and CUDA-graph replay, inside the backend (the ops table knows
 * nothing of it). See cuda_common.h for the model: ops append records to a pending segment; a host-visible
 * point (upload, download, synchronize, free) issues it.
 *
 * Issue policy for a segment of at least CUDA_GRAPH_MIN_OPS records, keyed by a hash of its records and
 * arguments and confirmed by an exact comparison:
 *   - a cached graph of the same segment: one cudaGraphLaunch;
 *   - seen once before (a repeat): captured into a graph (stream capture, so cuBLAS products come along),
 *     instantiated, cached (least recently used out) and launched;
 *   - first sight: launched record by record, and remembered.
 * So a decode step pays the capture once and then one launch per step, while one-off shapes (a prefill
 * chunk) are never captured. Everything stays on the backend's one stream, in order.
 */
#include "backend/cuda/cuda_common.h"

#include <stdio.h>
#include <stdlib.h>

#define REC_CAP 8192
#define BLOB_CAP (4u << 20)
#define REC_ARG_RESERVE 4096 /* the most one launch's arguments may take (CUDA's own limit) */

void cuda_rec_init(struct cuda_ctx *c)
{
    const char *e = getenv("LOOM_CUDA_GRAPHS");
    c->graphs = !(e && !strcmp(e, "0"));
    e = getenv("LOOM_CUDA_PDL");
    c->pdl = !(e && !strcmp(e, "0"));
    e = getenv("LOOM_CUDA_PDL_TRIGGER");
    c->pdl_trigger = !(e && !strcmp(e, "0"));
    int major = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, c->device));
    if (major < 9) c->pdl = false;
    e = getenv("LOOM_CUDA_PROFILE");
    c->profile = e && strcmp(e, "0");
    if (c->profile) {
        c->graphs = true; /* records, issued op by op between events */
        c->prof_ev = (cudaEvent_t *)loom_malloc(sizeof(cudaEvent_t) * 2 * REC_CAP);
        for (int i = 0; i < 2 * REC_CAP; i++) CUDA_CHECK(cudaEventCreate(&c->prof_ev[i]));
    }
    c->cap_recs = REC_CAP;
    c->recs = (struct cuda_rec *)loom_malloc(sizeof(struct cuda_rec) * REC_CAP);
    c->blob_cap = BLOB_CAP;
    c->blob = (unsigned char *)loom_malloc(BLOB_CAP);
}

void cuda_prof_add(struct cuda_ctx *c, const void *func, const char *name, double ms)
{
    int i = 0;
    while (i < c->n_prof && c->prof[i].func != func) i++;
    if (i == c->n_prof) {
        if (c->n_prof == (int)(sizeof c->prof / sizeof c->prof[0])) return;
        c->prof[i].func = func;
        c->prof[i].name = name;
        c->n_prof++;
    }
    c->prof[i].count++;
    c->prof[i].ms += ms;
}

static int prof_cmp(const void *a, const void *b)
{
    double x = ((const struct cuda_ctx::cuda_prof_row *)a)->ms, y = ((const struct cuda_ctx::cuda_prof_row *)b)->ms;
    return x < y ? 1 : x > y ? -1 : 0;
}

void cuda_rec_free(struct cuda_ctx *c)
{
    if (c->profile) {
        qsort(c->prof, c->n_prof, sizeof c->prof[0], prof_cmp);
        double total = 0;
        for (int i = 0; i < c->n_prof; i++) total += c->prof[i].ms;
        fprintf(stderr, "cuda profile: %.3f ms of GPU time in %d kinds of work\n", total, c->n_prof);
        for (int i = 0; i < c->n_prof; i++)
            fprintf(stderr, "  %8.3f ms %5.1f%% %8lld x %7.2f us  %.90s\n", c->prof[i].ms, 100 * c->prof[i].ms / total,
                    c->prof[i].count, 1e3 * c->prof[i].ms / c->prof[i].count, c->prof[i].name);
        for (int i = 0; i < 2 * REC_CAP; i++) CUDA_CHECK(cudaEventDestroy(c->prof_ev[i]));
        free(c->prof_ev);
    }
    for (int i = 0; i < CUDA_GRAPH_CACHE; i++) {
        struct cuda_graph_entry *g = &c->cache[i];
        if (!g->recs) continue;
        CUDA_CHECK(cudaGraphExecDestroy(g->exec));
        free(g->recs);
        free(g->blob);
    }
    free(c->recs);
    free(c->blob);
}

struct cuda_rec *cuda_rec_new(struct cuda_ctx *c, int kind, const void *func, dim3 grid, dim3 block, unsigned smem)
{
    if (c->n_recs == c->cap_recs || c->blob_len + REC_ARG_RESERVE + 16 > c->blob_cap) cuda_flush(c);
    struct cuda_rec *r = &c->recs[c->n_recs++];
    memset(r, 0, sizeof(*r)); /* padding too: records are hashed and compared as bytes */
    r->kind = kind;
    r->func = func;
    r->grid[0] = grid.x, r->grid[1] = grid.y, r->grid[2] = grid.z;
    r->block[0] = block.x, r->block[1] = block.y, r->block[2] = block.z;
    r->smem = smem;
    size_t off = (c->blob_len + 15) & ~(size_t)15;
    memset(c->blob + c->blob_len, 0, off - c->blob_len);
    c->blob_len = off;
    r->off = (uint32_t)off;
    return r;
}

void *cuda_rec_arg(struct cuda_ctx *c, struct cuda_rec *r, size_t size, size_t align)
{
    LOOM_ASSERT(r->n_args < CUDA_REC_MAX_ARGS);
    size_t off = (c->blob_len + align - 1) & ~(align - 1);
    LOOM_ASSERT(off + size - r->off <= REC_ARG_RESERVE);
    memset(c->blob + c->blob_len, 0, off - c->blob_len);
    r->arg_off[r->n_args++] = (uint16_t)(off - r->off);
    c->blob_len = off + size;
    return c->blob + off;
}

static void gemm_issue(struct cuda_ctx *c, const struct cuda_gemm_args *g)
{
    float alpha = 1.f, beta = 0.f;
    CUBLAS_CHECK(cublasGemmEx(c->cublas, g->ta, g->tb, g->m, g->n, g->k, &alpha, g->a, g->at, g->lda, g->b, g->bt,
                              g->ldb, &beta, g->c, g->ct, g->ldc, g->compute, CUBLAS_GEMM_DEFAULT));
}

void cuda_gemm(struct cuda_ctx *c, const struct cuda_gemm_args *g)
{
    if (!c->graphs) {
        gemm_issue(c, g);
        return;
    }
    struct cuda_rec *r = cuda_rec_new(c, CUDA_REC_GEMM, NULL, dim3(1), dim3(1), 0);
    /* the caller zeroed its struct (padding included) before filling it in */
    memcpy(cuda_rec_arg(c, r, sizeof *g, alignof(struct cuda_gemm_args)), g, sizeof *g);
}

static void issue_all(struct cuda_ctx *c, const struct cuda_rec *recs, int n, const unsigned char *blob)
{
    void *args[CUDA_REC_MAX_ARGS];
    for (int i = 0; i < n; i++) {
        const struct cuda_rec *r = &recs[i];
        if (c->profile) CUDA_CHECK(cudaEventRecord(c->prof_ev[2 * i], c->stream));
        if (r->kind == CUDA_REC_GEMM) {
            gemm_issue(c, (const struct cuda_gemm_args *)(blob + r->off + r->arg_off[0]));
        } else {
            for (int a = 0; a < r->n_args; a++) args[a] = (void *)(blob + r->off + r->arg_off[a]);
            cudaLaunchConfig_t cfg = {};
            cfg.gridDim = dim3(r->grid[0], r->grid[1], r->grid[2]);
            cfg.blockDim = dim3(r->block[0], r->block[1], r->block[2]);
            cfg.dynamicSmemBytes = r->smem;
            cfg.stream = c->stream;
            cudaLaunchAttribute attr = {};
            attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
            attr.val.programmaticStreamSerializationAllowed = 1;
            cfg.attrs = &attr;
            cfg.numAttrs = c->pdl ? 1 : 0;
            CUDA_CHECK(cudaLaunchKernelExC(&cfg, r->func, args));
        }
        if (c->profile) CUDA_CHECK(cudaEventRecord(c->prof_ev[2 * i + 1], c->stream));
    }
    if (c->profile) {
        CUDA_CHECK(cudaStreamSynchronize(c->stream));
        for (int i = 0; i < n; i++) {
            float ms = 0;
            CUDA_CHECK(cudaEventElapsedTime(&ms, c->prof_ev[2 * i], c->prof_ev[2 * i + 1]));
            const char *name = "cublasGemmEx";
            if (recs[i].kind == CUDA_REC_KERNEL && cudaFuncGetName(&name, recs[i].func) != cudaSuccess) name = "?";
            cuda_prof_add(c, recs[i].kind == CUDA_REC_KERNEL ? recs[i].func : (const void *)1, name, ms);
        }
    }
}

static uint64_t seg_hash(const struct cuda_ctx *c)
{
    /* 64-bit words, multiply-xor: a few microseconds for a few hundred launches */
    uint64_t h = 0x9e3779b97f4a7c15ull ^ (uint64_t)c->n_recs;
    const uint64_t *w = (const uint64_t *)c->recs;
    size_t nw = sizeof(struct cuda_rec) * (size_t)c->n_recs / 8;
    for (size_t i = 0; i < nw; i++) h = (h ^ w[i]) * 0xff51afd7ed558ccdull;
    const unsigned char *b = c->blob;
    size_t nb = c->blob_len / 8;
    for (size_t i = 0; i < nb; i++) {
        uint64_t x;
        memcpy(&x, b + 8 * i, 8);
        h = (h ^ x) * 0xc4ceb9fe1a85ec53ull;
    }
    for (size_t i = nb * 8; i < c->blob_len; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static struct cuda_graph_entry *cache_find(struct cuda_ctx *c, uint64_t h)
{
    for (int i = 0; i < CUDA_GRAPH_CACHE; i++) {
        struct cuda_graph_entry *g = &c->cache[i];
        if (g->recs && g->hash == h && g->n_recs == c->n_recs && g->blob_len == c->blob_len &&
            !memcmp(g->recs, c->recs, sizeof(struct cuda_rec) * (size_t)c->n_recs) &&
            !memcmp(g->blob, c->blob, c->blob_len))
            return g;
    }
    return NULL;
}

static bool seen_take(struct cuda_ctx *c, uint64_t h)
{
    int n = c->n_seen < CUDA_GRAPH_SEEN ? c->n_seen : CUDA_GRAPH_SEEN;
    for (int i = 0; i < n; i++)
        if (c->seen[i] == h) {
            c->seen[i] = 0;
            return true;
        }
    c->seen[c->n_seen++ % CUDA_GRAPH_SEEN] = h;
    return false;
}

static void build_and_launch(struct cuda_ctx *c, uint64_t h)
{
    struct cuda_graph_entry *g = NULL;
    for (int i = 0; i < CUDA_GRAPH_CACHE; i++) {
        if (!c->cache[i].recs) {
            g = &c->cache[i];
            break;
        }
        if (!g || c->cache[i].last_use < g->last_use) g = &c->cache[i];
    }
    if (g->recs) { /* evict the least recently used */
        CUDA_CHECK(cudaGraphExecDestroy(g->exec));
        free(g->recs);
        free(g->blob);
        g->recs = NULL;
    }
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    issue_all(c, c->recs, c->n_recs, c->blob);
    CUDA_CHECK(cudaStreamEndCapture(c->stream, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&g->exec, graph, 0));
    CUDA_CHECK(cudaGraphDestroy(graph));
    g->hash = h;
    g->n_recs = c->n_recs;
    g->blob_len = c->blob_len;
    g->recs = (struct cuda_rec *)loom_malloc(sizeof(struct cuda_rec) * (size_t)c->n_recs);
    memcpy(g->recs, c->recs, sizeof(struct cuda_rec) * (size_t)c->n_recs);
    g->blob = (unsigned char *)loom_malloc(c->blob_len + 1);
    memcpy(g->blob, c->blob, c->blob_len);
    g->last_use = ++c->tick;
    c->graph_builds++;
    CUDA_CHECK(cudaGraphLaunch(g->exec, c->stream));
}

void cuda_flush(struct cuda_ctx *c)
{
    if (c->n_recs == 0) return;
    if (c->n_recs < CUDA_GRAPH_MIN_OPS || c->profile) {
        issue_all(c, c->recs, c->n_recs, c->blob);
        c->direct_segments++;
    } else {
        uint64_t h = seg_hash(c);
        struct cuda_graph_entry *g = cache_find(c, h);
        if (g) {
            g->last_use = ++c->tick;
            c->graph_replays++;
            CUDA_CHECK(cudaGraphLaunch(g->exec, c->stream));
        } else if (seen_take(c, h)) {
            build_and_launch(c, h);
        } else {
            issue_all(c, c->recs, c->n_recs, c->blob);
            c->direct_segments++;
        }
    }
    c->n_recs = 0;
    c->blob_len = 0;
}
