/*
 * test_model_golden.c: every model folder in ../shared/models against its golden.safetensors
 * (transformers, float64): with fp32 compute on the CPU backend,
 *   - the logits at every prompt position (the last one for the 151k-vocabulary model) within 1e-3,
 *     the prompt run as one prefill over a scattered block table;
 *   - the same prompt as a chunked prefill (chunks of 5 tokens over cached context);
 *   - all prompts of a model in one batch (several sequences in one forward);
 *   - the greedy continuation computed incrementally through the KV cache, equal to p{k}.greedy up
 *     to the first step whose margin is below 1e-3 (after that the reference may legitimately differ).
 * Then the CPU's bf16 mode (--dtype bfloat16: bf16 weights, bf16 dot products in the prefill
 * matmuls): prefill logits within 0.25, the README's bf16 tolerance.
 * LOOM_GOLDEN_THREADS sets the threads (default: all cores); LOOM_GOLDEN_MODELS=a,b limits the models.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TOL 1e-3
#define BS 16
#define NUM_BLOCKS 128
#define MAX_SEQS 8

static const char *models[] = {"llama-tiny", "qwen2-tiny",     "qwen3-tiny",     "mistral-tiny-f16",
                               "llama31-tiny-sharded", "mixtral-tiny", "qwen2-tiny-151k", "stories260K"};

/* a sequence's blocks: a scattered set of pool blocks */
struct seq {
    int32_t bt[NUM_BLOCKS];
};

static void seq_init(struct seq *s, int salt)
{
    /* block b of the sequence -> pool block (b * 37 + salt * 11) % NUM_BLOCKS: a permutation (37 odd) */
    for (int b = 0; b < NUM_BLOCKS; b++) s->bt[b] = (b * 37 + salt * 11 + 5) % NUM_BLOCKS;
}

struct segment {
    const struct seq *s;
    const int32_t *ids; /* the sequence's whole token list */
    int p0, p1;         /* run positions [p0, p1) */
};

struct batch_buf {
    int32_t tokens[1024], positions[1024], slots[1024], logit_rows[1024];
    int32_t qs[MAX_SEQS + 1], seq_lens[MAX_SEQS];
    int32_t bt[MAX_SEQS * NUM_BLOCKS];
};

/* Builds a batch of segments; all_logits: every token's row, else each segment's last row. */
static struct loom_batch make_batch(struct batch_buf *bb, const struct segment *seg, int n_seg, bool all_logits)
{
    struct loom_batch b = {0};
    int n = 0, nl = 0, mbps = 1;
    for (int s = 0; s < n_seg; s++)
        if ((seg[s].p1 + BS - 1) / BS > mbps) mbps = (seg[s].p1 + BS - 1) / BS;
    bb->qs[0] = 0;
    for (int s = 0; s < n_seg; s++) {
        for (int p = seg[s].p0; p < seg[s].p1; p++) {
            bb->tokens[n] = seg[s].ids[p];
            bb->positions[n] = p;
            bb->slots[n] = seg[s].s->bt[p / BS] * BS + p % BS;
            if (all_logits || p == seg[s].p1 - 1) bb->logit_rows[nl++] = n;
            n++;
        }
        bb->qs[s + 1] = n;
        bb->seq_lens[s] = seg[s].p1;
        memcpy(bb->bt + s * mbps, seg[s].s->bt, sizeof(int32_t) * (size_t)mbps);
    }
    b.n_tokens = n;
    b.n_seqs = n_seg;
    b.token_ids = bb->tokens;
    b.positions = bb->positions;
    b.slot_mapping = bb->slots;
    b.query_start = bb->qs;
    b.seq_lens = bb->seq_lens;
    b.block_tables = bb->bt;
    b.max_blocks_per_seq = mbps;
    b.n_logits = nl;
    b.logit_rows = bb->logit_rows;
    return b;
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* max |a - golden| over rows [r0, r0 + n) of golden [*, V] */
static double max_diff(const float *a, const float *golden, int64_t n_values)
{
    double w = 0;
    for (int64_t i = 0; i < n_values; i++) {
        double d = fabs((double)a[i] - (double)golden[i]);
        if (!(d <= w)) w = d; /* NaN counts as worst */
    }
    return w;
}

struct prompt {
    const int32_t *ids;
    int L;
    const float *logits; /* [R, V] */
    int R;
    const int32_t *greedy;
    const float *margin;
    int G;
};

static bool wanted(const char *name)
{
    const char *only = getenv("LOOM_GOLDEN_MODELS");
    if (!only) return true;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)); p += n)
        if ((p == only || p[-1] == ',') && (p[n] == 0 || p[n] == ',')) return true;
    return false;
}

static void test_model(struct loom_backend *be, const char *name)
{
    char dir[1024], gpath[1100];
    snprintf(dir, sizeof(dir), "%s", test_shared("models/"));
    strncat(dir, name, sizeof(dir) - strlen(dir) - 1);
    snprintf(gpath, sizeof(gpath), "%s/golden.safetensors", dir);
    struct loom_safetensors *gs = NULL;
    if (loom_safetensors_open(gpath, &gs)) {
        CHECK_MSG(0, "%s: %s", gpath, loom_last_error());
        return;
    }
    struct loom_model_config cfg;
    if (loom_hf_config_load(dir, &cfg)) {
        CHECK_MSG(0, "%s: %s", dir, loom_last_error());
        loom_safetensors_close(gs);
        return;
    }
    const int max_rows = cfg.vocab_size > 4096 ? 8 : 512; /* the 151k model is checked at the last rows only */
    struct loom_model_options mo = {.weight_dtype = LOOM_DTYPE_COUNT, .max_batch_tokens = 512, .max_batch_seqs = MAX_SEQS,
                                    .max_logit_rows = max_rows, .max_model_len = 0};
    struct loom_model *m = NULL;
    int st = loom_model_load(dir, be, &mo, &m);
    CHECK_MSG(st == 0, "%s: load: %s", name, loom_last_error());
    if (st) {
        loom_safetensors_close(gs);
        return;
    }
    CHECK(loom_model_alloc_kv(m, NUM_BLOCKS, BS) == 0);
    const int V = m->cfg.vocab_size;

    struct prompt pr[4];
    int np = 0;
    for (int k = 0; k < 4; k++) {
        char nm[64];
        snprintf(nm, sizeof(nm), "p%d.ids", k);
        const struct loom_st_tensor *ti = loom_safetensors_find(gs, nm);
        if (!ti) break;
        snprintf(nm, sizeof(nm), "p%d.logits", k);
        const struct loom_st_tensor *tl = loom_safetensors_find(gs, nm);
        snprintf(nm, sizeof(nm), "p%d.greedy", k);
        const struct loom_st_tensor *tg = loom_safetensors_find(gs, nm);
        snprintf(nm, sizeof(nm), "p%d.margin", k);
        const struct loom_st_tensor *tm = loom_safetensors_find(gs, nm);
        LOOM_ASSERT(tl && tg && tm && ti->dtype == LOOM_DTYPE_I32 && tl->dtype == LOOM_DTYPE_F32 && tl->shape[1] == V);
        pr[np] = (struct prompt){ti->data, (int)ti->numel, tl->data, (int)tl->shape[0], tg->data, tm->data, (int)tg->numel};
        np++;
    }
    CHECK_MSG(np >= 3, "%s: golden has %d prompts", name, np);

    float *logits = malloc(sizeof(float) * (size_t)V * (size_t)max_rows);
    static struct batch_buf bb;
    double worst_prefill = 0, worst_chunked = 0, worst_batched = 0, worst_decode = 0;
    int greedy_checked = 0, greedy_total = 0;
    for (int k = 0; k < np; k++) {
        const struct prompt *p = &pr[k];
        const bool all = p->R == p->L; /* the 151k model keeps the last row only */
        struct seq sq;
        seq_init(&sq, k);
        /* 1. one prefill */
        struct segment sg = {&sq, p->ids, 0, p->L};
        struct loom_batch b = make_batch(&bb, &sg, 1, all);
        st = loom_model_forward(m, &b, logits);
        CHECK_MSG(st == 0, "%s p%d: forward: %s", name, k, loom_last_error());
        double d = max_diff(logits, p->logits, (int64_t)p->R * V);
        if (d > worst_prefill || d != d) worst_prefill = d;
        CHECK_MSG(d < TOL, "%s p%d: prefill logits differ by %g", name, k, d);

        /* 2. greedy continuation through the KV cache, one token per step */
        int32_t seqids[512];
        memcpy(seqids, p->ids, sizeof(int32_t) * (size_t)p->L);
        int tok = argmax(logits + (int64_t)(b.n_logits - 1) * V, V);
        for (int i = 0; i < p->G; i++) {
            greedy_total++;
            if (p->margin[i] < TOL) break; /* the reference's own top-2 are too close to call */
            greedy_checked++;
            CHECK_MSG(tok == p->greedy[i], "%s p%d: greedy step %d: %d, expected %d (margin %g)", name, k, i, tok,
                      p->greedy[i], p->margin[i]);
            if (tok != p->greedy[i]) break;
            if (i + 1 == p->G) break;
            seqids[p->L + i] = tok;
            struct segment ds = {&sq, seqids, p->L + i, p->L + i + 1};
            struct loom_batch db = make_batch(&bb, &ds, 1, false);
            st = loom_model_forward(m, &db, logits);
            CHECK_MSG(st == 0, "%s p%d: decode step %d: %s", name, k, i, loom_last_error());
            tok = argmax(logits, V);
        }

        /* 3. chunked prefill: chunks of 5 over cached context, another block table */
        struct seq sc;
        seq_init(&sc, k + 17);
        double dc = 0;
        for (int p0 = 0; p0 < p->L; p0 += 5) {
            int p1 = p0 + 5 < p->L ? p0 + 5 : p->L;
            struct segment cs = {&sc, p->ids, p0, p1};
            struct loom_batch cb = make_batch(&bb, &cs, 1, true);
            st = loom_model_forward(m, &cb, logits);
            CHECK_MSG(st == 0, "%s p%d: chunk at %d: %s", name, k, p0, loom_last_error());
            if (all) {
                double e = max_diff(logits, p->logits + (int64_t)p0 * V, (int64_t)(p1 - p0) * V);
                if (e > dc || e != e) dc = e;
            } else if (p1 == p->L) {
                double e = max_diff(logits + (int64_t)(p1 - p0 - 1) * V, p->logits, V);
                if (e > dc || e != e) dc = e;
            }
        }
        if (dc > worst_chunked || dc != dc) worst_chunked = dc;
        CHECK_MSG(dc < TOL, "%s p%d: chunked prefill logits differ by %g", name, k, dc);
    }

    /* 4. all prompts in one batch, each on its own blocks */
    {
        struct seq sqs[4];
        struct segment segs[4];
        int total = 0;
        for (int k = 0; k < np; k++) {
            seq_init(&sqs[k], 40 + 3 * k);
            segs[k] = (struct segment){&sqs[k], pr[k].ids, 0, pr[k].L};
            total += pr[k].L;
        }
        bool all = true;
        for (int k = 0; k < np; k++) all = all && pr[k].R == pr[k].L;
        LOOM_ASSERT(total <= 512);
        /* distinct pools per sequence: shift each table into its own quarter of the pool */
        for (int k = 0; k < np; k++)
            for (int bI = 0; bI < NUM_BLOCKS; bI++) sqs[k].bt[bI] = (sqs[k].bt[bI] % (NUM_BLOCKS / 4)) + k * (NUM_BLOCKS / 4);
        struct loom_batch b = make_batch(&bb, segs, np, all);
        st = loom_model_forward(m, &b, logits);
        CHECK_MSG(st == 0, "%s batched: %s", name, loom_last_error());
        int row = 0;
        for (int k = 0; k < np; k++) {
            int r = all ? pr[k].L : 1;
            double e = max_diff(logits + (int64_t)row * V, pr[k].logits, (int64_t)r * V);
            if (e > worst_batched || e != e) worst_batched = e;
            row += r;
        }
        CHECK_MSG(worst_batched < TOL, "%s: batched prefill logits differ by %g", name, worst_batched);
    }
    (void)worst_decode;
    printf("%-22s prefill %.2e  chunked %.2e  batched %.2e  greedy %d/%d steps checked\n", name, worst_prefill,
           worst_chunked, worst_batched, greedy_checked, greedy_total);
    free(logits);
    loom_model_free(m);
    loom_safetensors_close(gs);
}

/* bf16 mode: each prompt as one prefill, all rows (the 151k model: its last row) within 0.25 */
static void test_model_bf16(struct loom_backend *be, const char *name)
{
    char dir[1024], gpath[1100];
    snprintf(dir, sizeof(dir), "%s%s", test_shared("models/"), name);
    snprintf(gpath, sizeof(gpath), "%s/golden.safetensors", dir);
    struct loom_safetensors *gs = NULL;
    if (loom_safetensors_open(gpath, &gs)) return;
    struct loom_model_options mo = {.weight_dtype = LOOM_DTYPE_BF16, .max_batch_tokens = 256, .max_batch_seqs = 1,
                                    .max_logit_rows = 8};
    struct loom_model *m = NULL;
    int st = loom_model_load(dir, be, &mo, &m);
    CHECK_MSG(st == 0, "%s bf16: load: %s", name, loom_last_error());
    if (st) {
        loom_safetensors_close(gs);
        return;
    }
    CHECK(loom_model_alloc_kv(m, NUM_BLOCKS, BS) == 0);
    const int V = m->cfg.vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)V * 8);
    static struct batch_buf bb;
    double worst = 0;
    for (int k = 0; k < 4; k++) {
        char nm[64];
        snprintf(nm, sizeof(nm), "p%d.ids", k);
        const struct loom_st_tensor *ti = loom_safetensors_find(gs, nm);
        if (!ti) break;
        snprintf(nm, sizeof(nm), "p%d.logits", k);
        const struct loom_st_tensor *tl = loom_safetensors_find(gs, nm);
        const int L = (int)ti->numel, R = (int)tl->shape[0];
        struct seq sq;
        seq_init(&sq, k);
        /* the last rows only (up to 8): the prefill itself runs over all L tokens */
        struct segment sg = {&sq, ti->data, 0, L};
        struct loom_batch b = make_batch(&bb, &sg, 1, false);
        int rows = L < 8 ? L : 8;
        for (int r = 0; r < rows; r++) bb.logit_rows[r] = L - rows + r;
        b.n_logits = R == L ? rows : 1;
        if (R != L) bb.logit_rows[0] = L - 1;
        st = loom_model_forward(m, &b, logits);
        CHECK_MSG(st == 0, "%s bf16 p%d: %s", name, k, loom_last_error());
        const float *gold = (const float *)tl->data + (R == L ? (int64_t)(L - rows) * V : 0);
        double d = max_diff(logits, gold, (int64_t)b.n_logits * V);
        if (d > worst || d != d) worst = d;
    }
    CHECK_MSG(worst < 0.25, "%s: bf16 mode logits differ by %g", name, worst);
    printf("%-22s bf16 mode: prefill %.3f\n", name, worst);
    free(logits);
    loom_model_free(m);
    loom_safetensors_close(gs);
}

int main(void)
{
    const char *th = getenv("LOOM_GOLDEN_THREADS");
    struct loom_backend_options bo = {.device = "cpu", .act_dtype = LOOM_DTYPE_F32, .threads = th ? atoi(th) : 0};
    struct loom_backend *be = NULL;
    CHECK(loom_backend_create(&bo, &be) == 0);
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
        if (wanted(models[i])) test_model(be, models[i]);
    loom_backend_destroy(be);
    bo.act_dtype = LOOM_DTYPE_BF16;
    CHECK(loom_backend_create(&bo, &be) == 0);
    for (size_t i = 0; i < sizeof(models) / sizeof(models[0]); i++)
        if (wanted(models[i])) test_model_bf16(be, models[i]);
    loom_backend_destroy(be);
    return test_report();
}
