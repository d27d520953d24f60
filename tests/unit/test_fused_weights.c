/*
 * test_fused_weights.c: the concatenated projection weights (model.c: q|k|v with their biases, and
 * gate|up, bound at load where the backend copies weights) against the separate ones. On the CPU,
 * LOOM_FUSE_WEIGHTS=1 forces the concatenation; both models then run the same batches (a prefill over
 * a scattered block table, two sequences in one batch, decode steps through the KV cache) and must
 * give the same logits bit for bit, for weights as stored and converted at load (--dtype float32,
 * bfloat16). Also checked: the fused tensors exist where expected (dense and MoE layers, biases),
 * the separate views point into them, and LOOM_FUSE_WEIGHTS=0 leaves them unset. The same script with
 * LOOM_FUSE_OPS=0 (the backend's optional fused ops matmul_fused / decode_attention never used) gives
 * the same logits as with them. Once a model is loaded and its KV pool allocated, its steps (sampling
 * on the backend with logprobs included) call the backend's alloc no more.
 * Compiled again as test_cuda_fused.c (FUSED_ON_CUDA): the same on the CUDA backend, where fusing is
 * the default, within a tolerance (cuBLAS may pick another algorithm for a taller matrix).
 */
#include "backend/backend.h"
#include "core/error.h"
#include "model/model_internal.h"
#include "test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BS 16
#define NB 32

static const char *models[] = {"qwen2-tiny", "qwen3-tiny", "mixtral-tiny", "llama-tiny", "mistral-tiny-f16"};

struct run {
    float *logits; /* all rows of every forward, end to end */
    size_t n;
};

static int32_t bt_a[NB], bt_b[NB];

static void fill_slots(const int32_t *bt, int p0, int p1, int32_t *slots, int32_t *pos)
{
    for (int p = p0; p < p1; p++) {
        slots[p - p0] = bt[p / BS] * BS + p % BS;
        pos[p - p0] = p;
    }
}

/* Backend-sampling rows are checked before any work (model/logits.c): a backend without the op, edits
 * past those given, a token outside the vocabulary, too many logprobs: each LOOM_EINVAL, nothing run.
 * Where the backend samples, a valid row then gives a token of the vocabulary. b: a batch that ran. */
static void check_sampling_rows(struct loom_model *m, const struct loom_batch *b0)
{
    const int V = m->cfg.vocab_size, n = b0->n_logits;
    struct loom_sample_row rows[64];
    struct loom_logit_edit edits[2] = {{V + 5, 1.0f}, {3, 2.0f}};
    struct loom_sample_logprob lps[64 * (1 + LOOM_SAMPLE_MAX_LOGPROBS)];
    int32_t tokens[64];
    float *logits = loom_calloc((size_t)n, (size_t)V * sizeof(float));
    for (int r = 0; r < n; r++) rows[r] = (struct loom_sample_row){.top_p = 1.0f, .logprobs = -1, .skip = 1};
    struct loom_batch b = *b0;
    b.sample = rows;
    b.edits = edits;
    b.n_edits = 2;
    b.sampled = tokens;
    b.sampled_lp = lps;
    rows[n - 1].skip = 0;
    if (!m->be->ops->sample) {
        CHECK(loom_model_forward(m, &b, logits) == LOOM_EINVAL);
        CHECK(strstr(loom_last_error(), "has none") != NULL);
        free(logits);
        return;
    }
    rows[n - 1].n_bias = 1; /* edit 0: token V + 5 */
    CHECK(loom_model_forward(m, &b, logits) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "edits token") != NULL);
    rows[n - 1].edit0 = 1;
    rows[n - 1].n_bias = 2; /* past the two edits given */
    CHECK(loom_model_forward(m, &b, logits) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "outside") != NULL);
    rows[n - 1].n_bias = 1; /* edit 1 alone: valid */
    rows[n - 1].logprobs = LOOM_SAMPLE_MAX_LOGPROBS + 1;
    CHECK(loom_model_forward(m, &b, logits) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "logprobs") != NULL);
    rows[n - 1].logprobs = 2;
    tokens[n - 1] = -7;
    int st = loom_model_forward(m, &b, logits);
    CHECK_MSG(st == 0, "a valid sampling row: %s", loom_last_error());
    CHECK(tokens[n - 1] >= 0 && tokens[n - 1] < V);
    CHECK(lps[(n - 1) * (1 + LOOM_SAMPLE_MAX_LOGPROBS)].token == tokens[n - 1]);
    free(logits);
}

/* Runs the fixed script on a fresh load; returns the logits (NULL on a load failure). */
static float *run_script(struct loom_backend *be, const char *dir, enum loom_dtype want, const char *fuse,
                         const char *fuse_ops, size_t *n_out, struct loom_model **keep)
{
    setenv("LOOM_FUSE_WEIGHTS", fuse, 1);
    setenv("LOOM_FUSE_OPS", fuse_ops, 1);
    struct loom_model_options mo = {.weight_dtype = want, .max_batch_tokens = 64, .max_batch_seqs = 2,
                                    .max_logit_rows = 64, .max_model_len = 0};
    struct loom_model *m = NULL;
    int st = loom_model_load(dir, be, &mo, &m);
    unsetenv("LOOM_FUSE_WEIGHTS");
    unsetenv("LOOM_FUSE_OPS");
    CHECK_MSG(st == 0, "%s: load: %s", dir, loom_last_error());
    if (st) return NULL;
    CHECK(loom_model_alloc_kv(m, NB, BS) == 0);
    const long long allocs = be->n_allocs; /* from here on, steps allocate nothing */
    const int V = m->cfg.vocab_size;
    const int steps = 4, L0 = 13, L1 = 9;
    float *out = loom_calloc((size_t)(L0 + L1 + 2 * steps), (size_t)V * sizeof(float));
    size_t off = 0;
    int32_t ids[64], pos[64], slots[64], rows[64], qs[3], sl[2], bt[2 * NB];
    for (int i = 0; i < 64; i++) {
        ids[i] = (i * 7919 + 11) % V;
        rows[i] = i;
    }
    /* prefill of sequence a (13 tokens) and b (9 tokens) in one batch, every row's logits */
    fill_slots(bt_a, 0, L0, slots, pos);
    fill_slots(bt_b, 0, L1, slots + L0, pos + L0);
    memcpy(bt, bt_a, sizeof bt_a);
    memcpy(bt + NB, bt_b, sizeof bt_b);
    qs[0] = 0, qs[1] = L0, qs[2] = L0 + L1;
    sl[0] = L0, sl[1] = L1;
    struct loom_batch b = {.n_tokens = L0 + L1, .n_seqs = 2, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                           .query_start = qs, .seq_lens = sl, .block_tables = bt, .max_blocks_per_seq = NB,
                           .n_logits = L0 + L1, .logit_rows = rows};
    st = loom_model_forward(m, &b, out + off);
    CHECK_MSG(st == 0, "forward: %s", loom_last_error());
    if (st == 0) check_sampling_rows(m, &b);
    off += (size_t)(L0 + L1) * V;
    /* decode steps: both sequences, then a alone (batch 1: the GEMV path on a GPU) */
    int la = L0, lb = L1; /* context lengths so far */
    for (int s = 0; s < steps && st == 0; s++) {
        const int ns = s % 2 ? 1 : 2;
        int32_t did[2] = {ids[s + 1], ids[s + 2]};
        fill_slots(bt_a, la, la + 1, slots, pos);
        fill_slots(bt_b, lb, lb + 1, slots + 1, pos + 1);
        qs[0] = 0, qs[1] = 1, qs[2] = 2;
        sl[0] = ++la;
        sl[1] = ns == 2 ? ++lb : lb;
        struct loom_batch d = {.n_tokens = ns, .n_seqs = ns, .token_ids = did, .positions = pos, .slot_mapping = slots,
                               .query_start = qs, .seq_lens = sl, .block_tables = bt, .max_blocks_per_seq = NB,
                               .n_logits = ns, .logit_rows = rows};
        st = loom_model_forward(m, &d, out + off);
        CHECK_MSG(st == 0, "decode: %s", loom_last_error());
        off += (size_t)ns * V;
    }
    CHECK_MSG(be->n_allocs == allocs, "%s: the steps allocated backend memory %lld times", dir, be->n_allocs - allocs);
    *n_out = off;
    if (keep) *keep = m;
    else loom_model_free(m);
    return out;
}

static void check_layout(struct loom_model *m, bool fused, const char *what)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    const size_t H = (size_t)c->hidden_size;
    for (int l = 0; l < c->num_layers; l++) {
        const struct model_layer *L = &mi->layers[l];
        if (!fused) {
            CHECK_MSG(!L->wqkv.data && !L->bqkv.data && !L->gate_up.data, "%s layer %d: fused tensors without fusing", what, l);
            continue;
        }
        const size_t es = loom_dtype_size(L->wqkv.dtype), QW = (size_t)c->num_heads * c->head_dim,
                     KW = (size_t)c->num_kv_heads * c->head_dim;
        CHECK_MSG(L->wqkv.data && L->wqkv.rows == (int64_t)(QW + 2 * KW) && L->wqkv.cols == (int64_t)H,
                  "%s layer %d: no q|k|v weight", what, l);
        CHECK(L->wq.data == L->wqkv.data && (char *)L->wk.data == (char *)L->wqkv.data + QW * H * es &&
              (char *)L->wv.data == (char *)L->wqkv.data + (QW + KW) * H * es);
        CHECK(L->wq.rows == (int64_t)QW && L->wk.rows == (int64_t)KW && L->wv.rows == (int64_t)KW);
        CHECK_MSG((L->bqkv.data != NULL) == (L->bq.data != NULL), "%s layer %d: biases", what, l);
        if (L->bqkv.data)
            CHECK(L->bqkv.cols == (int64_t)(QW + 2 * KW) && L->bq.data == L->bqkv.data &&
                  (char *)L->bv.data == (char *)L->bqkv.data + (QW + KW) * loom_dtype_size(L->bqkv.dtype));
        if (L->moe) {
            CHECK_MSG(!L->gate_up.data, "%s layer %d: a MoE layer with gate|up", what, l);
        } else {
            const size_t I = (size_t)c->intermediate_size;
            CHECK_MSG(L->gate_up.data && L->gate_up.rows == (int64_t)(2 * I) && L->gate.data == L->gate_up.data &&
                          (char *)L->up.data == (char *)L->gate_up.data + I * H * loom_dtype_size(L->gate_up.dtype),
                      "%s layer %d: gate|up", what, l);
        }
    }
}

/* Two runs' logits: bit for bit (tol 0) or within tol (relative). */
static void compare_runs(const float *a, size_t na, const float *b, size_t nb, double tol, const char *what)
{
    CHECK_EQ_INT(na, nb);
    double num = 0, den = 0, worst = 0;
    size_t diff = 0, nonfinite = 0;
    for (size_t i = 0; i < na && i < nb; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) nonfinite++;
        double d = (double)a[i] - b[i];
        diff += a[i] != b[i];
        num += d * d;
        den += (double)a[i] * a[i];
        if (fabs(d) > worst) worst = fabs(d);
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (tol == 0)
        CHECK_MSG(diff == 0 && nonfinite == 0, "%s: %zu of %zu logits differ (max %g), %zu non-finite", what, diff, na,
                  worst, nonfinite);
    else
        CHECK_MSG(rel <= tol && nonfinite == 0, "%s: relative difference %.3g > %.1g (%zu non-finite)", what, rel, tol,
                  nonfinite);
    printf("  %-60s %zu logits, %zu differ, rel %.2e\n", what, na, diff, rel);
}

static void test_model(struct loom_backend *be, const char *name, double tol)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", test_shared("models/"));
    strncat(dir, name, sizeof(dir) - strlen(dir) - 1);
    const enum loom_dtype wants[3] = {LOOM_DTYPE_COUNT, LOOM_DTYPE_F32, LOOM_DTYPE_BF16};
    for (int wi = 0; wi < 3; wi++) {
        size_t na = 0, nb = 0;
        struct loom_model *ma = NULL, *mb = NULL;
        float *a = run_script(be, dir, wants[wi], "0", "1", &na, &ma);
        float *b = run_script(be, dir, wants[wi], "1", "1", &nb, &mb);
        char what[160];
        snprintf(what, sizeof what, "%s (%s) on %s", name, wi ? loom_dtype_name(wants[wi]) : "as stored", be->name);
        if (!a || !b) {
            free(a);
            free(b);
            loom_model_free(ma);
            loom_model_free(mb);
            continue;
        }
        check_layout(ma, false, what);
        check_layout(mb, true, what);
        compare_runs(a, na, b, nb, tol, what);
        /* the backend's optional fused ops (matmul_fused, decode_attention) against the separate ones */
        size_t nc = 0;
        float *c2 = run_script(be, dir, wants[wi], "1", "0", &nc, NULL);
        if (c2) {
            char what2[200];
            snprintf(what2, sizeof what2, "%s, LOOM_FUSE_OPS=0 vs 1", what);
            compare_runs(c2, nc, b, nb, tol, what2);
            free(c2);
        }
        free(a);
        free(b);
        loom_model_free(ma);
        loom_model_free(mb);
    }
}

int main(void)
{
    for (int i = 0; i < NB; i++) { /* scattered, disjoint block tables */
        bt_a[i] = (i * 5 + 3) % NB;
        bt_b[i] = (i * 5 + 4) % NB;
    }
    struct loom_backend *be = NULL;
#ifdef FUSED_ON_CUDA
    if (!loom_backend_cuda_available()) test_skip("no CUDA device");
    const enum loom_dtype acts[2] = {LOOM_DTYPE_F32, LOOM_DTYPE_BF16};
    for (int ai = 0; ai < 2; ai++) {
        struct loom_backend_options o = {.device = "cuda", .act_dtype = acts[ai]};
        int rc = loom_backend_create(&o, &be);
        CHECK_MSG(rc == 0, "cuda backend: %s", loom_last_error());
        if (rc) break;
        CHECK(be->copies_weights);
        for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
            test_model(be, models[i], acts[ai] == LOOM_DTYPE_F32 ? 1e-4 : 3e-2);
        loom_backend_destroy(be);
    }
#else
    struct loom_backend_options o = {.device = "cpu", .act_dtype = LOOM_DTYPE_F32, .threads = 2};
    CHECK(loom_backend_create(&o, &be) == 0);
    CHECK(!be->copies_weights);
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) test_model(be, models[i], 0);
    loom_backend_destroy(be);
#endif
    return test_report();
}
