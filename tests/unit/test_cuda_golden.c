/*
 * test_cuda_golden.c: every model in ../shared/models (each folder with a golden.safetensors) through
 * loom_model_load / loom_model_forward on the CUDA backend, against the float64 reference logits.
 *
 * Two passes per model: F32 activations and weights (--dtype float32; TF32 off), where every logit is
 * within 1e-3 of the golden one and greedy tokens match wherever the golden margin exceeds 0.01; and
 * BF16 activations with the weights as stored (--dtype auto), within 0.25 and greedy tokens matching
 * wherever the margin exceeds 0.5 (MoE models: up to 2% of positions may exceed 0.25, see below); and
 * F16 activations with the weights converted to F16 (--dtype float16), held to the BF16 bounds. All prompts run as one batch of sequences; the longest is prefilled
 * in two chunks (the second attends to the first through the paged cache), blocks come from a shuffled
 * pool, and the greedy continuation is teacher-forced in batched decode steps (golden token in, our
 * argmax compared), so a low-margin step does not end the comparison.
 * Exits 77 where no CUDA device is present.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "test.h"

#include <dirent.h>
#include <stdint.h>

#define MAX_PROMPTS 8

struct prompt {
    const int32_t *ids, *greedy;
    const float *logits, *margin;
    int len, n_greedy, logit_rows; /* logit_rows: len, or 1 (last position only) */
};

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int load_prompts(struct loom_safetensors *g, struct prompt *p, int vocab)
{
    int n = 0;
    for (; n < MAX_PROMPTS; n++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.ids", n);
        const struct loom_st_tensor *ids = loom_safetensors_find(g, name);
        if (!ids) break;
        snprintf(name, sizeof name, "p%d.logits", n);
        const struct loom_st_tensor *lg = loom_safetensors_find(g, name);
        snprintf(name, sizeof name, "p%d.greedy", n);
        const struct loom_st_tensor *gr = loom_safetensors_find(g, name);
        snprintf(name, sizeof name, "p%d.margin", n);
        const struct loom_st_tensor *mg = loom_safetensors_find(g, name);
        if (!lg || !gr || !mg || lg->dtype != LOOM_DTYPE_F32 || lg->shape[1] != vocab) return -1;
        p[n].ids = ids->data;
        p[n].len = (int)ids->numel;
        p[n].logits = lg->data;
        p[n].logit_rows = (int)lg->shape[0];
        p[n].greedy = gr->data;
        p[n].margin = mg->data;
        p[n].n_greedy = (int)gr->numel;
    }
    return n;
}

/* Host-side batch under construction. */
struct hbatch {
    int32_t tok[4096], pos[4096], slot[4096], qs[MAX_PROMPTS + 1], sl[MAX_PROMPTS], rows[4096];
    int n_tokens, n_seqs, n_logits;
};

static void run_model(const char *dir, const char *model, enum loom_dtype act)
{
    bool f32 = act == LOOM_DTYPE_F32;
    double tol = f32 ? 1e-3 : 0.25, margin_thr = f32 ? 0.01 : 0.5;
    char path[8192];
    snprintf(path, sizeof path, "%.4000s/golden.safetensors", dir);
    struct loom_safetensors *g = NULL;
    if (loom_safetensors_open(path, &g)) {
        CHECK_MSG(0, "%s: %s", path, loom_last_error());
        return;
    }
    struct loom_backend *be = NULL;
    struct loom_backend_options bo = {.device = "cuda", .act_dtype = act, .device_index = 0};
    int rc = loom_backend_create(&bo, &be); /* LOOM_EUNSUPPORTED without CUDA */
    CHECK_MSG(rc == 0, "cuda backend: %s", loom_last_error());
    if (rc) {
        loom_safetensors_close(g);
        return;
    }

    /* sizes first: the model is loaded once per pass with room for every prompt at once */
    struct prompt p[MAX_PROMPTS];
    struct loom_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int vocab = 0;
    if (loom_hf_config_load(dir, &cfg) == 0) vocab = cfg.vocab_size;
    int np = load_prompts(g, p, vocab);
    CHECK_MSG(np > 0, "%s: no prompts in golden.safetensors (vocab %d)", model, vocab);
    if (np <= 0) goto out_be;
    int total = 0, longest = 0, bs = 16, max_blocks = 0, pool = 0;
    for (int i = 0; i < np; i++) {
        total += p[i].len;
        if (p[i].len + p[i].n_greedy > longest) longest = p[i].len + p[i].n_greedy;
        int nb = (p[i].len + p[i].n_greedy + bs - 1) / bs;
        pool += nb;
        if (nb > max_blocks) max_blocks = nb;
    }
    LOOM_ASSERT(total < 4096);
    struct loom_model_options mo = {
        .weight_dtype = f32 ? LOOM_DTYPE_F32 : act == LOOM_DTYPE_F16 ? LOOM_DTYPE_F16 : LOOM_DTYPE_COUNT,
        .max_batch_tokens = total,
        .max_batch_seqs = np,
        .max_logit_rows = total,
        .max_model_len = longest + bs,
    };
    struct loom_model *m = NULL;
    rc = loom_model_load(dir, be, &mo, &m);
    CHECK_MSG(rc == 0, "%s: loom_model_load: %s", model, loom_last_error());
    if (rc) goto out_be;
    pool += 7;
    rc = loom_model_alloc_kv(m, pool, bs);
    CHECK_MSG(rc == 0, "%s: loom_model_alloc_kv: %s", model, loom_last_error());
    if (rc) goto out_model;

    /* block tables from a shuffled pool */
    int32_t *perm = loom_malloc((size_t)pool * 4), *bt = loom_malloc((size_t)np * max_blocks * 4);
    for (int i = 0; i < pool; i++) perm[i] = i;
    for (int i = pool - 1; i > 0; i--) {
        int j = (int)(rng_u32() % (uint32_t)(i + 1));
        int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int used = 0;
    for (int s = 0; s < np; s++) {
        int nb = (p[s].len + p[s].n_greedy + bs - 1) / bs;
        for (int b = 0; b < max_blocks; b++) bt[s * max_blocks + b] = b < nb ? perm[used++] : -1;
    }

    float *logits = loom_malloc((size_t)total * vocab * sizeof(float));
    struct hbatch *hb = loom_calloc(1, sizeof(*hb));
    double worst = 0;
    int done[MAX_PROMPTS] = {0}; /* prompt tokens already in the cache */
    int last_tok = np - 1;
    int chunk1 = p[last_tok].len > 8 ? p[last_tok].len - p[last_tok].len / 3 : p[last_tok].len;
    int greedy_checked = 0, greedy_bad = 0, greedy_skipped = 0, rows_over = 0, n_rows = 0;
    int first_pred[MAX_PROMPTS];

    /* two prefill forwards: everything but the tail of the last prompt, then that tail */
    for (int pass = 0; pass < 2; pass++) {
        memset(hb, 0, sizeof(*hb));
        for (int s = 0; s < np; s++) {
            int upto = (s == last_tok && pass == 0) ? chunk1 : p[s].len;
            if (done[s] >= upto) continue;
            int q = hb->n_seqs++;
            hb->qs[q] = hb->n_tokens;
            for (int j = done[s]; j < upto; j++) {
                int t = hb->n_tokens++;
                hb->tok[t] = p[s].ids[j];
                hb->pos[t] = j;
                hb->slot[t] = bt[s * max_blocks + j / bs] * bs + j % bs;
                if (p[s].logit_rows == p[s].len || j == p[s].len - 1) hb->rows[hb->n_logits++] = t;
            }
            hb->qs[q + 1] = hb->n_tokens;
            hb->sl[q] = upto;
            /* the batch's block table rows follow its sequences */
        }
        if (hb->n_seqs == 0) continue;
        int32_t *bt_b = loom_malloc((size_t)hb->n_seqs * max_blocks * 4);
        int q = 0;
        for (int s = 0; s < np; s++) {
            int upto = (s == last_tok && pass == 0) ? chunk1 : p[s].len;
            if (done[s] >= upto) continue;
            memcpy(bt_b + q * max_blocks, bt + s * max_blocks, (size_t)max_blocks * 4);
            q++;
        }
        struct loom_batch b = {.n_tokens = hb->n_tokens, .n_seqs = hb->n_seqs, .token_ids = hb->tok,
                               .positions = hb->pos, .slot_mapping = hb->slot, .query_start = hb->qs,
                               .seq_lens = hb->sl, .block_tables = bt_b, .max_blocks_per_seq = max_blocks,
                               .n_logits = hb->n_logits, .logit_rows = hb->rows};
        rc = loom_model_forward(m, &b, logits);
        CHECK_MSG(rc == 0, "%s: forward: %s", model, loom_last_error());
        free(bt_b);
        if (rc) goto out_all;
        /* compare every returned row with its golden row */
        int r = 0;
        for (int s = 0; s < np; s++) {
            int upto = (s == last_tok && pass == 0) ? chunk1 : p[s].len;
            if (done[s] >= upto) continue;
            for (int j = done[s]; j < upto; j++) {
                if (!(p[s].logit_rows == p[s].len || j == p[s].len - 1)) continue;
                const float *ref = p[s].logits + (size_t)(p[s].logit_rows == p[s].len ? j : 0) * vocab;
                const float *got = logits + (size_t)r * vocab;
                double e = 0;
                for (int v = 0; v < vocab; v++) {
                    double d = fabs((double)got[v] - ref[v]);
                    if (!(d <= e)) e = d; /* NaN propagates */
                }
                if (!(e <= worst)) worst = e;
                if (!(e <= tol)) {
                    rows_over++;
                    if (rows_over <= 8)
                        fprintf(stderr, "  %s %s prompt %d position %d: max |logit - golden| %.3g\n", model,
                                loom_dtype_name(act), s, j, e);
                }
                n_rows++;
                if (j == p[s].len - 1) first_pred[s] = argmax(got, vocab);
                r++;
            }
            done[s] = upto;
        }
    }
    /* MoE in bf16: a token whose router logits sit near a top-k tie may pick the other expert (the
     * reference, in float64, cannot), which moves that position's logits by whole units; seen on H100
     * for 2 of 241 positions of mixtral-tiny. Allow such positions up to 2% (at least 1), never in F32. */
    int allowed = (!f32 && cfg.num_experts > 0) ? (n_rows + 49) / 50 : 0;
    CHECK_MSG(rows_over <= allowed, "%s %s: max |logit - golden| %.3g > %.3g (%d of %d positions over, %d allowed)",
              model, loom_dtype_name(act), worst, tol, rows_over, n_rows, allowed);

    /* teacher-forced greedy decode: step k feeds golden greedy[k-1] and compares our argmax with greedy[k] */
    int max_g = 0;
    for (int s = 0; s < np; s++) {
        if (p[s].n_greedy > max_g) max_g = p[s].n_greedy;
        if (p[s].margin[0] > margin_thr) {
            greedy_checked++;
            if (first_pred[s] != p[s].greedy[0]) greedy_bad++;
        } else {
            greedy_skipped++;
        }
    }
    for (int k = 1; k < max_g; k++) {
        memset(hb, 0, sizeof(*hb));
        int32_t *bt_b = loom_malloc((size_t)np * max_blocks * 4);
        int seq_of[MAX_PROMPTS];
        for (int s = 0; s < np; s++) {
            if (k >= p[s].n_greedy) continue;
            int q = hb->n_seqs++, t = hb->n_tokens++;
            int pos = p[s].len + k - 1;
            seq_of[q] = s;
            hb->qs[q] = t;
            hb->qs[q + 1] = t + 1;
            hb->tok[t] = p[s].greedy[k - 1];
            hb->pos[t] = pos;
            hb->slot[t] = bt[s * max_blocks + pos / bs] * bs + pos % bs;
            hb->sl[q] = pos + 1;
            hb->rows[hb->n_logits++] = t;
            memcpy(bt_b + q * max_blocks, bt + s * max_blocks, (size_t)max_blocks * 4);
        }
        struct loom_batch b = {.n_tokens = hb->n_tokens, .n_seqs = hb->n_seqs, .token_ids = hb->tok,
                               .positions = hb->pos, .slot_mapping = hb->slot, .query_start = hb->qs,
                               .seq_lens = hb->sl, .block_tables = bt_b, .max_blocks_per_seq = max_blocks,
                               .n_logits = hb->n_logits, .logit_rows = hb->rows};
        rc = loom_model_forward(m, &b, logits);
        free(bt_b);
        CHECK_MSG(rc == 0, "%s: decode forward: %s", model, loom_last_error());
        if (rc) break;
        for (int q = 0; q < hb->n_seqs; q++) {
            int s = seq_of[q];
            if (p[s].margin[k] <= margin_thr) {
                greedy_skipped++;
                continue;
            }
            greedy_checked++;
            int a = argmax(logits + (size_t)q * vocab, vocab);
            if (a != p[s].greedy[k]) {
                greedy_bad++;
                fprintf(stderr, "  %s %s prompt %d step %d: argmax %d, golden %d (margin %.3f)\n", model,
                        loom_dtype_name(act), s, k, a, p[s].greedy[k], p[s].margin[k]);
            }
        }
    }
    CHECK_MSG(greedy_bad == 0, "%s %s: %d of %d greedy steps differ", model, loom_dtype_name(act), greedy_bad,
              greedy_checked);
    printf("  %-22s %-5s max|dlogit| %.2e (tol %.0e, %d/%d positions over)  greedy %d/%d match (%d low-margin "
           "skipped)\n",
           model, loom_dtype_name(act), worst, tol, rows_over, n_rows, greedy_checked - greedy_bad, greedy_checked,
           greedy_skipped);

out_all:
    free(hb);
    free(logits);
    free(perm);
    free(bt);
out_model:
    loom_model_free(m);
out_be:
    be->ops->destroy(be);
    loom_safetensors_close(g);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void)
{
#ifndef LOOM_HAVE_CUDA
    test_skip("built without CUDA");
#endif
    if (!loom_backend_cuda_available()) test_skip("no CUDA device");
    const char *root = test_shared("models");
    DIR *d = opendir(root);
    if (!d) test_skip("no ../shared/models (set LOOM_SHARED)");
    char *names[64];
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 64) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s/golden.safetensors", root, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        fclose(f);
        names[n++] = loom_strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof names[0], cmp_str);
    CHECK_MSG(n > 0, "no model with golden.safetensors under %s", root);
    enum loom_dtype acts[3] = {LOOM_DTYPE_F32, LOOM_DTYPE_BF16, LOOM_DTYPE_F16};
    for (int i = 0; i < n; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/%s", root, names[i]);
        for (int a = 0; a < 3; a++) run_model(dir, names[i], acts[a]);
        free(names[i]);
    }
    return test_report();
}
