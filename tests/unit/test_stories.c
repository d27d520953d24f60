/*
 * test_stories.c: the real (trained) stories260K model against llama2.c's own outputs, as recorded in
 * ../shared/models/stories260K/expected.json: greedy decoding from BOS reproduces every token of
 * derived_generated_ids (prefill of [1], then one token per step through the paged KV cache), the
 * "Zoo" prompt reproduces its continuation, and the logits of the first 8 positions match the
 * float64 reference within 1e-4.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "model/model.h"
#include "test.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>

#define BS 16
#define NBLK 32

static struct loom_model *model;
static int32_t bt[NBLK];

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* runs positions [p0, p1) of ids; writes the logits of every row when all, else of the last */
static int run(const int32_t *ids, int p0, int p1, bool all, float *logits)
{
    int n = p1 - p0;
    int32_t pos[512], slots[512], rows[512], qs[2] = {0, n}, sl[1] = {p1};
    for (int i = 0; i < n; i++) {
        pos[i] = p0 + i;
        slots[i] = bt[(p0 + i) / BS] * BS + (p0 + i) % BS;
        rows[i] = i;
    }
    struct loom_batch b = {.n_tokens = n, .n_seqs = 1, .token_ids = ids + p0, .positions = pos, .slot_mapping = slots,
                           .query_start = qs, .seq_lens = sl, .block_tables = bt, .max_blocks_per_seq = NBLK,
                           .n_logits = all ? n : 1, .logit_rows = all ? rows : rows + n - 1};
    return loom_model_forward(model, &b, logits);
}

/* greedy: prompt then `count` generated tokens into out */
static void greedy(const int32_t *prompt, int L, int count, int32_t *out)
{
    int32_t ids[600];
    float logits[512];
    memcpy(ids, prompt, sizeof(int32_t) * (size_t)L);
    int st = run(ids, 0, L, false, logits);
    CHECK_MSG(st == 0, "prefill: %s", loom_last_error());
    for (int i = 0; i < count; i++) {
        out[i] = ids[L + i] = argmax(logits, 512);
        if (i + 1 < count && run(ids, L + i, L + i + 1, false, logits)) {
            CHECK_MSG(0, "decode step %d: %s", i, loom_last_error());
            return;
        }
    }
}

static int ints(json_t *a, int32_t *out, int cap)
{
    int n = (int)json_array_size(a);
    LOOM_ASSERT(n <= cap);
    for (int i = 0; i < n; i++) out[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return n;
}

int main(void)
{
    const char *dir = test_shared("models/stories260K");
    char path[4200];
    snprintf(path, sizeof(path), "%s/expected.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        CHECK_MSG(0, "%s: %s", path, jerr.text);
        return test_report();
    }
    struct loom_backend_options bo = {.device = "cpu", .act_dtype = LOOM_DTYPE_F32, .threads = 0};
    struct loom_backend *be;
    CHECK(loom_backend_create(&bo, &be) == 0);
    struct loom_model_options mo = {.weight_dtype = LOOM_DTYPE_COUNT, .max_batch_tokens = 64, .max_batch_seqs = 1,
                                    .max_logit_rows = 64};
    int st = loom_model_load(dir, be, &mo, &model);
    CHECK_MSG(st == 0, "load: %s", loom_last_error());
    if (st) return test_report();
    CHECK(loom_model_alloc_kv(model, NBLK, BS) == 0);
    for (int i = 0; i < NBLK; i++) bt[i] = (i * 7 + 3) % NBLK; /* scattered blocks */

    json_t *cases = json_object_get(root, "cases");
    /* case 0: BOS, greedy */
    {
        json_t *c = json_array_get(cases, 0);
        int32_t prompt[8], want[600], got[600];
        int L = ints(json_object_get(c, "prompt_ids"), prompt, 8);
        int n = ints(json_object_get(c, "derived_generated_ids"), want, 600);
        CHECK(L == 1 && prompt[0] == 1 && n >= 199);
        greedy(prompt, L, n, got);
        int first_bad = -1;
        for (int i = 0; i < n && first_bad < 0; i++)
            if (got[i] != want[i]) first_bad = i;
        CHECK_MSG(first_bad < 0, "BOS greedy: token %d is %d, expected %d", first_bad, got[first_bad], want[first_bad]);
        printf("BOS greedy: %d tokens %s\n", n, first_bad < 0 ? "identical to llama2.c" : "DIFFER");
    }
    /* case 1: the "Zoo" prompt */
    {
        json_t *c = json_array_get(cases, 1);
        int32_t prompt[8], after[100], got[100];
        int L = ints(json_object_get(c, "derived_prompt_ids"), prompt, 8);
        int n = ints(json_object_get(c, "derived_ids_after_bos"), after, 100);
        CHECK(L == 4 && n > L);
        greedy(prompt, L, n - (L - 1), got);
        int bad = 0;
        for (int i = 0; i < n - (L - 1); i++) bad += got[i] != after[L - 1 + i];
        CHECK_MSG(bad == 0, "Zoo greedy: %d of %d tokens differ", bad, n - (L - 1));
    }
    /* derived logits at positions 0..7 */
    {
        json_t *dl = json_object_get(root, "derived_logits");
        int32_t ids[16];
        int L = ints(json_object_get(dl, "input_ids"), ids, 16);
        float logits[16 * 512];
        CHECK(run(ids, 0, L, true, logits) == 0);
        double worst = 0;
        json_t *rows = json_object_get(dl, "logits");
        for (int r = 0; r < L; r++)
            for (int v = 0; v < 512; v++) {
                double want = json_number_value(json_array_get(json_array_get(rows, (size_t)r), (size_t)v));
                double d = fabs(logits[r * 512 + v] - want);
                if (d > worst) worst = d;
            }
        CHECK_MSG(worst < 1e-4, "derived logits differ by %g", worst);
        printf("derived logits: max difference %.2e\n", worst);
    }
    json_decref(root);
    loom_model_free(model);
    loom_backend_destroy(be);
    return test_report();
}
