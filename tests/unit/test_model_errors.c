/*
 * test_model_errors.c: broken copies of tiny models, built under a temp dir, must fail cleanly:
 * loom_model_load returns a negative status with a message naming what is wrong, and
 * `$LOOM_BIN logits` exits with status 1 and says so on stderr, never crashing.
 * Cases: a missing shard, a tensor of the wrong shape, a broken config.json, a missing tensor,
 * a tensor of an integer dtype; plus a forward with a token id outside the vocabulary.
 */
#include "backend/backend.h"
#include "core/error.h"
#include "core/util.h"
#include "format/safetensors.h"
#include "model/model.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp[256];
static struct loom_backend *be;

static void copy_file(const char *src, const char *dst)
{
    char *data;
    size_t len;
    LOOM_ASSERT(loom_read_file(src, &data, &len) == 0);
    LOOM_ASSERT(loom_write_file(dst, data, len) == 0);
    free(data);
}

/* makes tmp/name with config.json (and generation_config.json) of the shared model `from` */
static const char *make_dir(const char *name, const char *from)
{
    static char dir[512];
    snprintf(dir, sizeof(dir), "%s/%s", tmp, name);
    mkdir(dir, 0755);
    char src[1024], dst[1024];
    snprintf(src, sizeof(src), "%s/config.json", test_shared(from));
    snprintf(dst, sizeof(dst), "%s/config.json", dir);
    copy_file(src, dst);
    return dir;
}

/* writes dir/model.safetensors from the shared model `from`, with `drop` left out and `shrink`
 * written with its first dimension halved, and `retype` stored as I32 */
static void write_weights(const char *dir, const char *from, const char *drop, const char *shrink, const char *retype)
{
    struct loom_safetensors *st;
    LOOM_ASSERT(loom_safetensors_open(test_shared(from), &st) == 0);
    int n = loom_safetensors_count(st), k = 0;
    void *zeros = NULL;
    struct loom_st_tensor *ts = calloc((size_t)n, sizeof(*ts));
    for (int i = 0; i < n; i++) {
        const struct loom_st_tensor *t = loom_safetensors_at(st, i);
        if (drop && !strcmp(t->name, drop)) continue;
        ts[k] = *t;
        if (shrink && !strcmp(t->name, shrink)) {
            ts[k].shape[0] /= 2;
            ts[k].numel /= 2;
            ts[k].nbytes /= 2;
        }
        if (retype && !strcmp(t->name, retype)) { /* same shape, stored as int32 zeros */
            ts[k].dtype = LOOM_DTYPE_I32;
            ts[k].nbytes = (size_t)t->numel * 4;
            ts[k].data = zeros = calloc((size_t)t->numel, 4);
        }
        k++;
    }
    char path[1024];
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    LOOM_ASSERT(loom_safetensors_write(path, ts, k, "{\"format\":\"pt\"}") == 0);
    free(ts);
    free(zeros);
    loom_safetensors_close(st);
}

/* loom_model_load fails with a message containing `needle`; so does `loom logits` (exit status 1) */
static void expect_failure(const char *dir, const char *needle, const char *what)
{
    struct loom_model_options mo = {.weight_dtype = LOOM_DTYPE_COUNT, .max_batch_tokens = 8, .max_batch_seqs = 1};
    struct loom_model *m = NULL;
    loom_clear_error();
    int s = loom_model_load(dir, be, &mo, &m);
    CHECK_MSG(s < 0 && m == NULL, "%s: load returned %d", what, s);
    CHECK_MSG(strstr(loom_last_error(), needle) != NULL, "%s: message '%s' does not name '%s'", what, loom_last_error(),
              needle);
    printf("%-16s -> %s\n", what, loom_last_error());

    const char *bin = getenv("LOOM_BIN");
    if (!bin) return;
    char cmd[2048], errf[600];
    snprintf(errf, sizeof(errf), "%s/stderr.txt", tmp);
    snprintf(cmd, sizeof(cmd), "'%s' logits '%s' --prompt-ids 1,2,3 --out '%s/out.bin' 2>'%s' >/dev/null", bin, dir, tmp,
             errf);
    int st = system(cmd);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 1, "%s: loom logits exit status %d (raw %d)", what,
              WIFEXITED(st) ? WEXITSTATUS(st) : -1, st);
    char *text = NULL;
    size_t len = 0;
    CHECK(loom_read_file(errf, &text, &len) == 0);
    CHECK_MSG(text && strstr(text, needle) != NULL, "%s: loom logits stderr '%s' does not name '%s'", what,
              text ? text : "", needle);
    free(text);
}

int main(void)
{
    snprintf(tmp, sizeof(tmp), "/tmp/loom_model_errors_XXXXXX");
    if (!mkdtemp(tmp)) test_skip("cannot make a temp dir");
    struct loom_backend_options bo = {.device = "cpu", .threads = 2};
    CHECK(loom_backend_create(&bo, &be) == 0);

    /* a missing shard: the index names three files, one is gone */
    {
        const char *dir = make_dir("missing_shard", "models/llama31-tiny-sharded");
        char src[1024], dst[1024];
        const char *files[] = {"model.safetensors.index.json", "model-00001-of-00003.safetensors",
                               "model-00003-of-00003.safetensors"};
        for (int i = 0; i < 3; i++) {
            snprintf(src, sizeof(src), "%s/%s", test_shared("models/llama31-tiny-sharded"), files[i]);
            snprintf(dst, sizeof(dst), "%s/%s", dir, files[i]);
            copy_file(src, dst);
        }
        expect_failure(dir, "model-00002-of-00003.safetensors", "missing shard");
    }
    /* a tensor of the wrong shape */
    {
        const char *dir = make_dir("wrong_shape", "models/llama-tiny");
        write_weights(dir, "models/llama-tiny", NULL, "model.layers.1.self_attn.k_proj.weight", NULL);
        expect_failure(dir, "model.layers.1.self_attn.k_proj.weight", "wrong shape");
    }
    /* a missing tensor */
    {
        const char *dir = make_dir("missing_tensor", "models/qwen2-tiny");
        write_weights(dir, "models/qwen2-tiny", "model.layers.2.self_attn.v_proj.bias", NULL, NULL);
        expect_failure(dir, "model.layers.2.self_attn.v_proj.bias", "missing tensor");
    }
    /* an integer tensor where a weight belongs */
    {
        const char *dir = make_dir("int_tensor", "models/llama-tiny");
        write_weights(dir, "models/llama-tiny", NULL, NULL, "model.layers.0.mlp.up_proj.weight");
        expect_failure(dir, "model.layers.0.mlp.up_proj.weight", "integer tensor");
    }
    /* a broken config.json (truncated) next to good weights */
    {
        const char *dir = make_dir("broken_config", "models/llama-tiny");
        char path[1024];
        snprintf(path, sizeof(path), "%s/config.json", dir);
        LOOM_ASSERT(loom_write_file(path, "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 12", 58) == 0);
        write_weights(dir, "models/llama-tiny", NULL, NULL, NULL);
        expect_failure(dir, "config.json", "broken config");
    }
    /* no model at all */
    {
        char dir[512];
        snprintf(dir, sizeof(dir), "%s/nothing_here", tmp);
        expect_failure(dir, "nothing_here", "missing folder");
    }
    /* a good model, a bad batch: a token id outside the vocabulary is an error, not a stray read */
    {
        struct loom_model_options mo = {.weight_dtype = LOOM_DTYPE_COUNT, .max_batch_tokens = 8, .max_batch_seqs = 1};
        struct loom_model *m = NULL;
        CHECK(loom_model_load(test_shared("models/llama-tiny"), be, &mo, &m) == 0);
        CHECK(m && loom_model_alloc_kv(m, 2, 16) == 0);
        int32_t ids[2] = {5, 100000}, pos[2] = {0, 1}, slots[2] = {0, 1}, qs[2] = {0, 2}, sl[1] = {2}, bt[2] = {0, 1},
                rows[1] = {1};
        struct loom_batch b = {.n_tokens = 2, .n_seqs = 1, .token_ids = ids, .positions = pos, .slot_mapping = slots,
                               .query_start = qs, .seq_lens = sl, .block_tables = bt, .max_blocks_per_seq = 2,
                               .n_logits = 1, .logit_rows = rows};
        float logits[512];
        CHECK(loom_model_forward(m, &b, logits) == LOOM_EINVAL);
        CHECK(strstr(loom_last_error(), "100000") != NULL);
        ids[1] = 7;
        slots[1] = 20; /* not where the block table puts position 1 */
        CHECK(loom_model_forward(m, &b, logits) == LOOM_EINVAL);
        slots[1] = 1;
        CHECK(loom_model_forward(m, &b, logits) == 0);
        loom_model_free(m);
        const char *bin = getenv("LOOM_BIN");
        if (bin) {
            char cmd[2048];
            snprintf(cmd, sizeof(cmd), "'%s' logits '%s' --prompt-ids 1,600 --out '%s/out.bin' 2>/dev/null", bin,
                     test_shared("models/llama-tiny"), tmp);
            int st = system(cmd);
            CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 1, "logits with a bad id: status %d", st);
        }
    }
    loom_backend_destroy(be);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    return test_report();
}
