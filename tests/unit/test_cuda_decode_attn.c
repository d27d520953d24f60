/*
 * test_cuda_decode_attn.c: the CUDA backend's fused decode op (ops->decode_attention) against the two
 * ops it replaces (qkv_rope_store + attention) run on the same backend with identical inputs.
 *
 * Each case builds a decode step: random q|k|v rows (inside a wider strided row), a KV pool of random
 * contents, shuffled block tables whose first blocks are shared between sequences (a common prefix),
 * padding rows (slot -1, seq_len 1, context one position in block 0), and contexts from 1 to ~3000
 * (long enough for the split path). The cache pools after both runs must be byte-identical (the
 * rotated, normed k and the v row written, nothing else touched), and the outputs of the real rows
 * within a per-row relative L2 tolerance (BF16 1e-2, F16 3e-3; outputs poisoned with NaN first).
 * The fused op runs twice per case (its split counters must be back at zero after a launch).
 * Covered: BF16 and F16, head_dim 64 and 128, groups 1, 4, 7, 8, q/k norm on and off, sliding window
 * on and off, 1, 3, 8 and 64 sequences; the split paths (clusters of 2-8 blocks, global splits over
 * clusters or over single blocks) by the defaults and, forced, by the kernel's tuning variables. F32 activations, head_dim 96, group 16 and a prefill-shaped
 * step must return false having written nothing.
 * Exits 77 where no CUDA device is present.
 */
#include "backend/backend.h"
#include "core/dtype.h"
#include "core/error.h"
#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static struct loom_backend *be;
static uint64_t rng_state = 0x2545f4914f6cdd1dull;

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

static void *dev_copy(const void *h, size_t bytes)
{
    void *d = be->ops->alloc(be, bytes + 16);
    be->ops->upload(be, d, h, bytes);
    return d;
}

static void *host_get(const void *d, size_t bytes)
{
    void *h = loom_malloc(bytes + 16);
    be->ops->download(be, h, d, bytes);
    return h;
}

/* n random values of dtype dt in [-scale, scale) (raw bytes) */
static void *rand_raw(enum loom_dtype dt, size_t n, float scale, float offset)
{
    float *f = loom_malloc(n * sizeof(float) + 4);
    for (size_t i = 0; i < n; i++) f[i] = offset + rng_f() * scale;
    void *raw = loom_malloc(n * loom_dtype_size(dt) + 4);
    loom_convert_from_f32(raw, dt, f, n);
    free(f);
    return raw;
}

struct dcase {
    enum loom_dtype dt;
    int D, H, KV;
    bool norm;
    int window;
    int n_seqs;  /* real sequences */
    int n_pad;   /* padding rows after them */
    int max_ctx; /* the first sequence has this context; the others random in [1, max_ctx] */
};

/* One decode step's inputs on the device, and host copies for the comparisons. */
struct step {
    int n, bs, max_blocks, n_pool, qkv_cols, qkv_stride;
    int32_t *ctx, *bt, *pos, *slots, *qs;
    void *qkv_raw, *kc_raw, *vc_raw;
    size_t qkv_bytes, cache_bytes;
    struct loom_attn_meta meta;
    void *d_pos, *d_slots, *d_qs, *d_sl, *d_bt;
};

static void step_build(struct step *st, const struct dcase *tc)
{
    const int bs = 16, n = tc->n_seqs + tc->n_pad, kw = tc->KV * tc->D;
    memset(st, 0, sizeof *st);
    st->n = n;
    st->bs = bs;
    st->ctx = loom_malloc((size_t)n * 4);
    int max_nb = 1, total = 0, max_ctx = 1;
    for (int s = 0; s < n; s++) {
        int c = s >= tc->n_seqs ? 1 : s == 0 ? tc->max_ctx : 1 + rng_int(tc->max_ctx);
        if (s == 1 && s < tc->n_seqs) c = 1; /* a one-token context among real rows */
        st->ctx[s] = c;
        int nb = (c + bs - 1) / bs;
        if (nb > max_nb) max_nb = nb;
        if (c > max_ctx) max_ctx = c;
        total += nb;
    }
    int mb = 1;
    while (mb < max_nb) mb *= 2;
    st->max_blocks = mb;
    st->n_pool = total + 7;
    int32_t *perm = loom_malloc((size_t)st->n_pool * 4);
    for (int i = 0; i < st->n_pool; i++) perm[i] = i;
    for (int i = st->n_pool - 1; i > 0; i--) {
        int j = rng_int(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    /* a shared prefix of up to 4 full blocks: perm[0..3]; a sequence shares those of them that hold
     * only positions before its own (the block of its new token is always its own) */
    const int n_prefix = 4;
    int used = n_prefix;
    st->bt = loom_malloc((size_t)n * mb * 4);
    st->pos = loom_malloc((size_t)n * 4);
    st->slots = loom_malloc((size_t)n * 4);
    st->qs = loom_malloc((size_t)(n + 1) * 4);
    for (int s = 0; s < n; s++) {
        int nb = (st->ctx[s] + bs - 1) / bs, shared = (st->ctx[s] - 1) / bs;
        if (shared > n_prefix) shared = n_prefix;
        if (s >= tc->n_seqs) shared = 0;
        for (int b = 0; b < mb; b++)
            st->bt[s * mb + b] = b < shared ? perm[b] : b < nb ? perm[used++] : (b & 1 ? -1 : 0);
        if (s >= tc->n_seqs) st->bt[s * mb] = perm[0]; /* padding: context is position 0 of a block in use */
        st->qs[s] = s;
        int p = st->ctx[s] - 1;
        st->pos[s] = p;
        st->slots[s] = s >= tc->n_seqs ? -1 : st->bt[s * mb + p / bs] * bs + p % bs;
    }
    st->qs[n] = n;
    LOOM_ASSERT(used <= st->n_pool);
    free(perm);

    const size_t es = loom_dtype_size(tc->dt);
    st->qkv_cols = tc->H * tc->D + 2 * kw;
    st->qkv_stride = st->qkv_cols + 24; /* strided rows, as in a wider fused output */
    st->qkv_bytes = (size_t)n * st->qkv_stride * es;
    st->qkv_raw = rand_raw(tc->dt, (size_t)n * st->qkv_stride, 2.f, 0.f);
    st->cache_bytes = (size_t)st->n_pool * bs * kw * es;
    st->kc_raw = rand_raw(tc->dt, (size_t)st->n_pool * bs * kw, 1.f, 0.f);
    st->vc_raw = rand_raw(tc->dt, (size_t)st->n_pool * bs * kw, 1.f, 0.f);

    st->d_pos = dev_copy(st->pos, (size_t)n * 4);
    st->d_slots = dev_copy(st->slots, (size_t)n * 4);
    st->d_qs = dev_copy(st->qs, (size_t)(n + 1) * 4);
    st->d_sl = dev_copy(st->ctx, (size_t)n * 4);
    st->d_bt = dev_copy(st->bt, (size_t)n * mb * 4);
    struct loom_attn_meta *m = &st->meta;
    memset(m, 0, sizeof *m);
    m->n_tokens = n;
    m->n_seqs = n;
    m->block_size = bs;
    m->max_blocks_per_seq = mb;
    m->max_query_len = 1;
    m->max_seq_len = max_ctx;
    m->positions = st->d_pos;
    m->slot_mapping = st->d_slots;
    m->query_start = st->d_qs;
    m->seq_lens = st->d_sl;
    m->block_tables = st->d_bt;
    m->h_query_start = st->qs;
    m->h_seq_lens = st->ctx;
}

static void step_free(struct step *st)
{
    free(st->ctx);
    free(st->bt);
    free(st->pos);
    free(st->slots);
    free(st->qs);
    free(st->qkv_raw);
    free(st->kc_raw);
    free(st->vc_raw);
    be->ops->free(be, st->d_pos);
    be->ops->free(be, st->d_slots);
    be->ops->free(be, st->d_qs);
    be->ops->free(be, st->d_sl);
    be->ops->free(be, st->d_bt);
}

/* Device buffers of one run: qkv, both caches, the output (NaN-poisoned). */
struct bufs {
    struct loom_tensor qkv, kc, vc, out;
};

static struct bufs bufs_make(const struct step *st, const struct dcase *tc)
{
    const size_t es = loom_dtype_size(tc->dt);
    const int kw = tc->KV * tc->D, ow = tc->H * tc->D;
    struct bufs b;
    b.qkv = loom_tensor_2d(dev_copy(st->qkv_raw, st->qkv_bytes), tc->dt, st->n, st->qkv_cols);
    b.qkv.stride = st->qkv_stride;
    b.kc = loom_tensor_2d(dev_copy(st->kc_raw, st->cache_bytes), tc->dt, (int64_t)st->n_pool * st->bs, kw);
    b.vc = loom_tensor_2d(dev_copy(st->vc_raw, st->cache_bytes), tc->dt, (int64_t)st->n_pool * st->bs, kw);
    size_t ob = (size_t)st->n * ow * es;
    unsigned char *poison = loom_malloc(ob + 1);
    memset(poison, 0xff, ob);
    b.out = loom_tensor_2d(dev_copy(poison, ob), tc->dt, st->n, ow);
    free(poison);
    return b;
}

static void bufs_free(struct bufs *b)
{
    be->ops->free(be, b->qkv.data);
    be->ops->free(be, b->kc.data);
    be->ops->free(be, b->vc.data);
    be->ops->free(be, b->out.data);
}

/* Extra inputs: inv_freq and the norm weights. */
struct extra {
    struct loom_tensor inv_freq, qn, kn;
};

static struct extra extra_make(const struct dcase *tc)
{
    struct extra x;
    float *f = loom_malloc((size_t)tc->D / 2 * 4);
    for (int i = 0; i < tc->D / 2; i++) f[i] = powf(tc->norm ? 1e6f : 1e4f, -2.f * i / tc->D);
    x.inv_freq = loom_tensor_2d(dev_copy(f, (size_t)tc->D / 2 * 4), LOOM_DTYPE_F32, 1, tc->D / 2);
    free(f);
    /* q norm in F32, k norm in the activation dtype (both kinds of weight) */
    void *qn = rand_raw(LOOM_DTYPE_F32, (size_t)tc->D, 0.5f, 1.f), *kn = rand_raw(tc->dt, (size_t)tc->D, 0.5f, 1.f);
    x.qn = loom_tensor_2d(dev_copy(qn, (size_t)tc->D * 4), LOOM_DTYPE_F32, 1, tc->D);
    x.kn = loom_tensor_2d(dev_copy(kn, (size_t)tc->D * loom_dtype_size(tc->dt)), tc->dt, 1, tc->D);
    free(qn);
    free(kn);
    return x;
}

static void extra_free(struct extra *x)
{
    be->ops->free(be, x->inv_freq.data);
    be->ops->free(be, x->qn.data);
    be->ops->free(be, x->kn.data);
}

static size_t count_diff(const unsigned char *a, const unsigned char *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += a[i] != b[i];
    return k;
}

static bool fused(const struct step *st, const struct dcase *tc, const struct extra *x, struct bufs *b,
                  const struct loom_attn_meta *meta)
{
    float scale = 1.f / sqrtf((float)tc->D);
    return be->ops->decode_attention(be, b->out, b->qkv, st->d_pos, st->d_slots, tc->H, tc->KV, tc->D, x->inv_freq,
                                     tc->norm ? &x->qn : NULL, tc->norm ? &x->kn : NULL, 1e-6f, b->kc, b->vc, meta,
                                     scale, tc->window);
}

/* Worst per-row relative L2 error of the real rows (NaN counts as infinite). */
static double out_err(const struct step *st, const struct dcase *tc, const void *ra, const void *rb)
{
    const int ow = tc->H * tc->D;
    size_t n = (size_t)st->n * ow;
    float *a = loom_malloc(n * 4 + 4), *b = loom_malloc(n * 4 + 4);
    loom_convert_to_f32(a, ra, tc->dt, n);
    loom_convert_to_f32(b, rb, tc->dt, n);
    double worst = 0;
    for (int s = 0; s < tc->n_seqs; s++) {
        double num = 0, den = 0;
        for (int i = 0; i < ow; i++) {
            double x = a[(size_t)s * ow + i], y = b[(size_t)s * ow + i];
            num += (x - y) * (x - y);
            den += x * x;
        }
        double e = sqrt(num) / (sqrt(den) + 1e-12);
        if (!(e == e) || isinf(e)) e = INFINITY;
        if (e > worst) worst = e;
    }
    free(a);
    free(b);
    return worst;
}

static void run_case(const struct dcase *tc)
{
    be->act_dtype = tc->dt;
    struct step st;
    step_build(&st, tc);
    struct extra x = extra_make(tc);
    const float scale = 1.f / sqrtf((float)tc->D);
    const size_t es = loom_dtype_size(tc->dt);
    const size_t ob = (size_t)st.n * tc->H * tc->D * es;

    /* reference: the two ops */
    struct bufs A = bufs_make(&st, tc);
    be->ops->qkv_rope_store(be, A.qkv, st.d_pos, st.d_slots, tc->H, tc->KV, tc->D, x.inv_freq,
                            tc->norm ? &x.qn : NULL, tc->norm ? &x.kn : NULL, 1e-6f, A.kc, A.vc);
    struct loom_tensor q = A.qkv;
    q.cols = (int64_t)tc->H * tc->D;
    be->ops->attention(be, A.out, q, A.kc, A.vc, &st.meta, tc->H, tc->KV, tc->D, scale, tc->window);
    unsigned char *ka = host_get(A.kc.data, st.cache_bytes), *va = host_get(A.vc.data, st.cache_bytes);
    unsigned char *oa = host_get(A.out.data, ob);

    /* fused, twice (fresh qkv before the second: its contents are unspecified afterwards) */
    struct bufs B = bufs_make(&st, tc);
    char what[200];
    snprintf(what, sizeof what, "%s D%d H%d:%d%s%s n%d+%d ctx<=%d", loom_dtype_name(tc->dt), tc->D, tc->H, tc->KV,
             tc->norm ? " qknorm" : "", tc->window ? " window" : "", tc->n_seqs, tc->n_pad, tc->max_ctx);
    for (int rep = 0; rep < 2; rep++) {
        if (rep) be->ops->upload(be, B.qkv.data, st.qkv_raw, st.qkv_bytes);
        bool ok = fused(&st, tc, &x, &B, &st.meta);
        CHECK_MSG(ok, "%s: decode_attention returned false", what);
        if (!ok) break;
        unsigned char *kb = host_get(B.kc.data, st.cache_bytes), *vb = host_get(B.vc.data, st.cache_bytes);
        unsigned char *obb = host_get(B.out.data, ob);
        size_t dk = count_diff(ka, kb, st.cache_bytes), dv = count_diff(va, vb, st.cache_bytes);
        /* the fallback really wrote the rows (the comparison could not pass by doing nothing) */
        size_t wk = count_diff(ka, st.kc_raw, st.cache_bytes);
        double e = out_err(&st, tc, oa, obb);
        double tol = tc->dt == LOOM_DTYPE_BF16 ? 1e-2 : 3e-3;
        if (rep == 0) printf("  %-52s err %.2e  cache diff k %zu v %zu bytes\n", what, e, dk, dv);
        CHECK_MSG(dk == 0 && dv == 0, "%s (run %d): cache bytes differ: k %zu, v %zu", what, rep, dk, dv);
        CHECK_MSG(wk > 0, "%s: the reference wrote no k row", what);
        CHECK_MSG(e <= tol, "%s (run %d): output error %.3e > %.1e", what, rep, e, tol);
        free(kb);
        free(vb);
        free(obb);
    }
    free(ka);
    free(va);
    free(oa);
    bufs_free(&A);
    bufs_free(&B);
    extra_free(&x);
    step_free(&st);
}

/* A shape or step the fused op does not take: false, and nothing written. */
static void run_unsupported(const struct dcase *tc, int max_query_len, const char *why)
{
    be->act_dtype = tc->dt;
    struct step st;
    step_build(&st, tc);
    struct extra x = extra_make(tc);
    struct bufs B = bufs_make(&st, tc);
    struct loom_attn_meta meta = st.meta;
    meta.max_query_len = max_query_len;
    bool ok = fused(&st, tc, &x, &B, &meta);
    CHECK_MSG(!ok, "decode_attention took %s", why);
    const size_t ob = (size_t)st.n * tc->H * tc->D * loom_dtype_size(tc->dt);
    unsigned char *kb = host_get(B.kc.data, st.cache_bytes), *vb = host_get(B.vc.data, st.cache_bytes);
    unsigned char *obb = host_get(B.out.data, ob), *qb = host_get(B.qkv.data, st.qkv_bytes);
    size_t n_poison = 0;
    for (size_t i = 0; i < ob; i++) n_poison += obb[i] == 0xff;
    CHECK_MSG(count_diff(kb, st.kc_raw, st.cache_bytes) == 0 && count_diff(vb, st.vc_raw, st.cache_bytes) == 0 &&
                  count_diff(qb, st.qkv_raw, st.qkv_bytes) == 0 && n_poison == ob,
              "decode_attention wrote something for %s", why);
    printf("  unsupported: %-40s -> false, nothing written\n", why);
    free(kb);
    free(vb);
    free(obb);
    free(qb);
    bufs_free(&B);
    extra_free(&x);
    step_free(&st);
}

int main(void)
{
#ifndef LOOM_HAVE_CUDA
    test_skip("built without CUDA");
#endif
    if (!loom_backend_cuda_available()) test_skip("no CUDA device");
    setenv("LOOM_CUDA_DATT_LIVE", "1", 1); /* the kernel re-reads its tuning variables at every call */
    struct loom_backend_options opts = {.device = "cuda", .act_dtype = LOOM_DTYPE_BF16, .device_index = 0};
    int rc = loom_backend_create(&opts, &be);
    CHECK_MSG(rc == 0, "loom_backend_cuda_create: %s", loom_last_error());
    if (rc) return test_report();
    if (!be->ops->decode_attention) {
        printf("  the CUDA backend has no decode_attention\n");
        CHECK(be->ops->decode_attention != NULL);
        be->ops->destroy(be);
        return test_report();
    }
    const enum loom_dtype dts[2] = {LOOM_DTYPE_BF16, LOOM_DTYPE_F16};
    /* group (H:KV) x head_dim x norm x window x batch, in a spread that keeps the run short */
    const int groups[4][2] = {{4, 4}, {16, 4}, {14, 2}, {32, 4}}; /* G = 1, 4, 7, 8 */
    const int batches[4][3] = {{1, 0, 3000}, {3, 1, 2000}, {8, 2, 700}, {64, 3, 300}}; /* seqs, pad, ctx */
    int k = 0;
    for (int di = 0; di < 2; di++)
        for (int D = 64; D <= 128; D += 64)
            for (int gi = 0; gi < 4; gi++)
                for (int bi = 0; bi < 4; bi++) {
                    struct dcase tc = {dts[di], D, groups[gi][0], groups[gi][1], (k & 1) != 0, 0, batches[bi][0],
                                       batches[bi][1], batches[bi][2]};
                    if (k % 3 == 1) tc.window = k % 2 ? 100 : 1000;
                    k++;
                    run_case(&tc);
                }
    /* the short contexts of the speed target (batch 1, a few hundred positions) and a one-token context */
    struct dcase small[] = {
        {LOOM_DTYPE_BF16, 64, 14, 2, false, 0, 1, 0, 130},   {LOOM_DTYPE_BF16, 64, 14, 2, false, 0, 1, 0, 256},
        {LOOM_DTYPE_BF16, 128, 32, 8, true, 0, 1, 0, 200},   {LOOM_DTYPE_F16, 64, 14, 2, false, 0, 1, 0, 1},
        {LOOM_DTYPE_BF16, 64, 14, 2, false, 32, 2, 1, 1100}, {LOOM_DTYPE_F16, 128, 28, 4, true, 0, 256, 0, 40},
    };
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) run_case(&small[i]);

    /* the split paths forced: global splits over clusters of 8, 2 and none (the thresholds are the
     * kernel's tuning variables; the defaults above leave some of these combinations unused) */
    const char *envs[3][2] = {{"32", "8"}, {"16", "2"}, {"16", "1"}};
    for (int e = 0; e < 3; e++) {
        setenv("LOOM_CUDA_DATT_MIN_ROWS", envs[e][0], 1);
        setenv("LOOM_CUDA_DATT_MAX_CL", envs[e][1], 1);
        setenv("LOOM_CUDA_DATT_EARLY", e == 2 ? "0" : "1", 1); /* loads before the PDL wait (default: after) */
        printf("  LOOM_CUDA_DATT_MIN_ROWS=%s LOOM_CUDA_DATT_MAX_CL=%s LOOM_CUDA_DATT_EARLY=%d\n", envs[e][0], envs[e][1],
               e == 2 ? 0 : 1);
        struct dcase forced[] = {
            {LOOM_DTYPE_BF16, 64, 14, 2, false, 0, 1, 0, 3000},  {LOOM_DTYPE_F16, 128, 32, 4, true, 700, 3, 1, 2500},
            {LOOM_DTYPE_BF16, 128, 16, 16, true, 0, 2, 0, 900},  {LOOM_DTYPE_F16, 64, 32, 4, false, 0, 8, 2, 1500},
            {LOOM_DTYPE_BF16, 64, 14, 2, false, 0, 1, 0, 150},
        };
        for (size_t i = 0; i < sizeof forced / sizeof forced[0]; i++) run_case(&forced[i]);
    }
    unsetenv("LOOM_CUDA_DATT_MIN_ROWS");
    unsetenv("LOOM_CUDA_DATT_MAX_CL");
    unsetenv("LOOM_CUDA_DATT_EARLY");

    /* what it must refuse */
    struct dcase f32 = {LOOM_DTYPE_F32, 64, 14, 2, false, 0, 3, 1, 300};
    run_unsupported(&f32, 1, "F32 activations");
    struct dcase d96 = {LOOM_DTYPE_BF16, 96, 8, 2, false, 0, 3, 0, 300};
    run_unsupported(&d96, 1, "head_dim 96");
    struct dcase g16 = {LOOM_DTYPE_BF16, 64, 32, 2, true, 0, 2, 0, 300};
    run_unsupported(&g16, 1, "group 16");
    struct dcase pre = {LOOM_DTYPE_F16, 128, 8, 2, false, 0, 2, 0, 300};
    run_unsupported(&pre, 2, "max_query_len 2");

    be->ops->synchronize(be);
    be->ops->destroy(be);
    return test_report();
}
