/*
 * cmd_logits.c: `loom logits MODEL_DIR --prompt-ids 1,2,3 --out FILE`: the logits at every prompt
 * position, float32 [L, vocab] row-major little-endian, for comparing loom with a reference.
 *
 * The prompt runs as one sequence through the model's forward pass (chunked by
 * --max-num-batched-tokens when longer) on the chosen backend; no engine, no sampling. Takes the
 * common flags (--device, --dtype, --threads, --max-model-len, --block-size, ...). Bad input (a
 * broken model folder, an id outside the vocabulary) is a message on stderr and exit status 1.
 */
#include "backend/backend.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/util.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: loom logits MODEL_DIR --prompt-ids 1,2,3 --out FILE [common flags]\n\n"
               "Writes the logits at every prompt position to FILE as float32 [L, vocab_size], row-major,\n"
               "little-endian. Common flags: --device cpu|cuda, --dtype auto|float32|bfloat16|float16,\n"
               "--threads N, --max-model-len N, --max-num-batched-tokens N (prefill chunk), --block-size N.\n");
}

/* --dtype on a device -> activation and weight dtypes (LOOM_DTYPE_COUNT: weights as stored) */
static void pick_dtypes(const char *device, const char *dtype, enum loom_dtype stored, enum loom_dtype *act,
                        enum loom_dtype *weights)
{
    bool cpu = !device || !strcmp(device, "cpu");
    *weights = LOOM_DTYPE_COUNT;
    if (!dtype || !strcmp(dtype, "auto")) {
        *act = cpu ? LOOM_DTYPE_F32 : (stored == LOOM_DTYPE_F16 ? LOOM_DTYPE_F16 : stored == LOOM_DTYPE_F32 ? LOOM_DTYPE_F32 : LOOM_DTYPE_BF16);
    } else if (!strcmp(dtype, "float32")) {
        *act = *weights = LOOM_DTYPE_F32;
    } else if (!strcmp(dtype, "bfloat16")) {
        *act = *weights = LOOM_DTYPE_BF16; /* on the CPU: bf16 dot products in the matmuls */
    } else {
        *weights = LOOM_DTYPE_F16;
        *act = cpu ? LOOM_DTYPE_F32 : LOOM_DTYPE_F16;
    }
}

int loom_cmd_logits(int argc, char **argv)
{
    struct loom_engine_options eo;
    memset(&eo, 0, sizeof(eo));
    eo.device = "cpu";
    eo.dtype = "auto";
    eo.block_size = 16;
    const char *dir = NULL, *ids_arg = NULL, *out_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int r = loom_cli_common_flag(argc, argv, &i, &eo);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "--prompt-ids")) {
            if (!(ids_arg = loom_cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--out")) {
            if (!(out_path = loom_cli_value(argc, argv, &i))) return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom logits: unknown flag '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "loom logits: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!dir || !ids_arg || !out_path) {
        usage(stderr);
        return 2;
    }
    int32_t *ids = NULL;
    int L = 0;
    if (loom_parse_int_list(ids_arg, &ids, &L)) {
        fprintf(stderr, "loom logits: --prompt-ids: %s\n", loom_last_error());
        return 2;
    }
    if (L < 1) {
        fprintf(stderr, "loom logits: --prompt-ids is empty\n");
        free(ids);
        return 2;
    }

    int rc = 1, s;
    struct loom_backend *be = NULL;
    struct loom_model *m = NULL;
    FILE *f = NULL;
    float *logits = NULL;
    int32_t *pos = NULL, *slots = NULL, *rows = NULL, *bt = NULL;
    struct loom_model_config cfg;
    if ((s = loom_hf_config_load(dir, &cfg))) {
        fprintf(stderr, "loom logits: %s\n", loom_last_error());
        goto done;
    }
    struct loom_backend_options bo = {.device = eo.device, .threads = eo.threads};
    enum loom_dtype wdt;
    pick_dtypes(eo.device, eo.dtype, cfg.torch_dtype, &bo.act_dtype, &wdt);
    if ((s = loom_backend_create(&bo, &be))) {
        fprintf(stderr, "loom logits: %s\n", loom_last_error());
        goto done;
    }
    const int chunk = L < (eo.max_num_batched_tokens > 0 ? eo.max_num_batched_tokens : 2048)
                          ? L
                          : (eo.max_num_batched_tokens > 0 ? eo.max_num_batched_tokens : 2048);
    struct loom_model_options mo = {.weight_dtype = wdt, .max_batch_tokens = chunk, .max_batch_seqs = 1,
                                    .max_logit_rows = chunk, .max_model_len = eo.max_model_len};
    if ((s = loom_model_load(dir, be, &mo, &m))) {
        fprintf(stderr, "loom logits: %s\n", loom_last_error());
        goto done;
    }
    const int mml = eo.max_model_len > 0 ? eo.max_model_len : m->cfg.max_position_embeddings;
    if (mml > 0 && L > mml) {
        fprintf(stderr, "loom logits: the prompt has %d tokens, more than max_model_len %d (--max-model-len)\n", L, mml);
        goto done;
    }
    const int bs = eo.block_size > 0 ? eo.block_size : 16, nblocks = (L + bs - 1) / bs;
    if ((s = loom_model_alloc_kv(m, nblocks, bs))) {
        fprintf(stderr, "loom logits: %s\n", loom_last_error());
        goto done;
    }
    const int V = m->cfg.vocab_size;
    logits = loom_malloc(sizeof(float) * (size_t)chunk * (size_t)V);
    pos = loom_malloc(sizeof(int32_t) * (size_t)L);
    slots = loom_malloc(sizeof(int32_t) * (size_t)L);
    rows = loom_malloc(sizeof(int32_t) * (size_t)chunk);
    bt = loom_malloc(sizeof(int32_t) * (size_t)nblocks);
    for (int b = 0; b < nblocks; b++) bt[b] = b;
    for (int i = 0; i < L; i++) {
        pos[i] = i;
        slots[i] = i;
    }
    for (int i = 0; i < chunk; i++) rows[i] = i;
    if (!(f = fopen(out_path, "wb"))) {
        fprintf(stderr, "loom logits: cannot create %s\n", out_path);
        goto done;
    }
    for (int p0 = 0; p0 < L; p0 += chunk) {
        int n = L - p0 < chunk ? L - p0 : chunk;
        int32_t qs[2] = {0, n}, sl[1] = {p0 + n};
        struct loom_batch b = {.n_tokens = n, .n_seqs = 1, .token_ids = ids + p0, .positions = pos + p0,
                               .slot_mapping = slots + p0, .query_start = qs, .seq_lens = sl, .block_tables = bt,
                               .max_blocks_per_seq = nblocks, .n_logits = n, .logit_rows = rows};
        if ((s = loom_model_forward(m, &b, logits))) {
            fprintf(stderr, "loom logits: %s\n", loom_last_error());
            goto done;
        }
        if (fwrite(logits, sizeof(float), (size_t)n * V, f) != (size_t)n * V) {
            fprintf(stderr, "loom logits: cannot write %s\n", out_path);
            goto done;
        }
    }
    if (fclose(f)) {
        f = NULL;
        fprintf(stderr, "loom logits: cannot write %s\n", out_path);
        goto done;
    }
    f = NULL;
    rc = 0;
done:
    if (f) fclose(f);
    free(logits);
    free(pos);
    free(slots);
    free(rows);
    free(bt);
    free(ids);
    loom_model_free(m);
    loom_backend_destroy(be);
    return rc;
}
