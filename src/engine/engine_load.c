/*
 * engine_load.c: loom_engine_create: the backend, the model (config.json + safetensors), the KV pool
 * sized from memory (or exactly --num-kv-blocks), the tokenizer when the folder has tokenizer.json,
 * the EOS ids from generation_config.json / config.json / the tokenizer; then the core engine
 * (engine.c) around them. Kept apart from engine.c so that tests with a fake model link no model code.
 */
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"
#include "engine/engine_internal.h"
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

struct loaded {
    struct loom_backend *be;
    struct loom_model *m;
};

static int model_forward(void *ctx, const struct loom_batch *b, float *logits)
{
    return loom_model_forward(ctx, b, logits);
}

static void release_loaded(void *ctx)
{
    struct loaded *l = ctx;
    loom_model_free(l->m);
    loom_backend_destroy(l->be);
    free(l);
}

static void add_eos(struct loom_engine_model_info *info, int id)
{
    if (id < 0 || info->n_eos >= LOOM_MAX_EOS) return;
    for (int i = 0; i < info->n_eos; i++)
        if (info->eos_ids[i] == id) return;
    info->eos_ids[info->n_eos++] = id;
}

static int parse_dtype(const char *s, enum loom_dtype *out)
{
    if (!s || !strcmp(s, "auto")) *out = LOOM_DTYPE_COUNT;
    else if (!strcmp(s, "float32")) *out = LOOM_DTYPE_F32;
    else if (!strcmp(s, "bfloat16")) *out = LOOM_DTYPE_BF16;
    else if (!strcmp(s, "float16")) *out = LOOM_DTYPE_F16;
    else return loom_fail(LOOM_EINVAL, "--dtype: expected auto, float32, bfloat16 or float16, got '%s'", s);
    return LOOM_OK;
}

int loom_engine_create(const struct loom_engine_options *opts, struct loom_engine **out)
{
    struct loom_engine_options o = *opts;
    *out = NULL;
    if (!o.model_dir) return loom_fail(LOOM_EINVAL, "engine: no model folder given");
    if (!o.device) o.device = "cpu";
    enum loom_dtype wdt = LOOM_DTYPE_COUNT;
    int rc = parse_dtype(o.dtype, &wdt);
    if (rc) return rc;

    struct loom_model_config cfg;
    if ((rc = loom_hf_config_load(o.model_dir, &cfg))) return loom_fail_context(rc, "%s/config.json", o.model_dir);
    if (o.max_model_len > cfg.max_position_embeddings && cfg.max_position_embeddings > 0)
        return loom_fail(LOOM_EINVAL, "--max-model-len %d is greater than the model's max_position_embeddings %d",
                         o.max_model_len, cfg.max_position_embeddings);
    struct loom_engine_limits lim;
    loom_engine_limits_get(&o, cfg.vocab_size, &lim);

    struct loom_backend_options bo = {0};
    bo.device = o.device;
    bo.threads = o.threads;
    /* activations: auto = fp32 on the CPU, the stored 16-bit type (else bf16) on CUDA; float32 / bfloat16
     * set both (bfloat16 on the CPU is its bf16-dot mode); float16 weights compute in fp32 on the CPU */
    bool cpu = strcmp(o.device, "cuda") != 0;
    enum loom_dtype stored = cfg.torch_dtype;
    if (wdt == LOOM_DTYPE_COUNT)
        bo.act_dtype = cpu ? LOOM_DTYPE_F32 : stored == LOOM_DTYPE_F16 ? LOOM_DTYPE_F16 : stored == LOOM_DTYPE_F32 ? LOOM_DTYPE_F32 : LOOM_DTYPE_BF16;
    else if (wdt == LOOM_DTYPE_F16)
        bo.act_dtype = cpu ? LOOM_DTYPE_F32 : LOOM_DTYPE_F16;
    else
        bo.act_dtype = wdt;
    struct loaded *ld = loom_calloc(1, sizeof(*ld));
    if ((rc = loom_backend_create(&bo, &ld->be))) {
        free(ld);
        return rc;
    }
    struct loom_model_options mo = {
        .weight_dtype = wdt,
        .max_batch_tokens = lim.max_num_batched_tokens,
        .max_batch_seqs = lim.max_num_seqs,
        .max_logit_rows = lim.max_logit_rows,
        .max_model_len = o.max_model_len,
    };
    if ((rc = loom_model_load(o.model_dir, ld->be, &mo, &ld->m))) goto fail;

    /* the KV pool */
    size_t bpb = loom_model_kv_bytes_per_block(ld->m, lim.block_size);
    int64_t nb;
    if (o.num_kv_blocks > 0) {
        nb = o.num_kv_blocks;
    } else if (!strcmp(ld->be->name, "cpu")) {
        int64_t mem = o.kv_cache_memory > 0 ? o.kv_cache_memory : (int64_t)1 << 30;
        nb = mem / (int64_t)bpb;
        if (nb < 1) {
            rc = loom_fail(LOOM_ENOMEM, "--kv-cache-memory %lld bytes holds no KV block (%zu bytes for %d tokens); raise it",
                           (long long)mem, bpb, lim.block_size);
            goto fail;
        }
    } else {
        size_t free_b = 0, total_b = 0;
        ld->be->ops->memory_info(ld->be, &free_b, &total_b);
        float util = o.gpu_memory_utilization > 0 ? o.gpu_memory_utilization : 0.9f;
        double budget = (double)total_b * util - (double)(total_b - free_b); /* weights and workspace are in use */
        nb = budget > 0 ? (int64_t)(budget / (double)bpb) : 0;
        if (nb < 1) {
            rc = loom_fail(LOOM_ENOMEM, "no device memory left for the KV cache: %.2f GiB of %.2f GiB free after loading the "
                           "model, --gpu-memory-utilization %.2f; raise it or use a smaller model or --max-num-batched-tokens",
                           free_b / 1073741824.0, total_b / 1073741824.0, util);
            goto fail;
        }
    }
    if (nb * lim.block_size > INT32_MAX) nb = INT32_MAX / lim.block_size;
    if ((rc = loom_model_alloc_kv(ld->m, (int)nb, lim.block_size))) goto fail;
    LOG_INFO("engine: KV cache %lld blocks x %zu bytes = %.1f MiB on %s", (long long)nb, bpb,
             (double)nb * (double)bpb / 1048576.0, ld->be->name);

    struct loom_engine_model_info info = {0};
    info.max_model_len = o.max_model_len > 0 ? o.max_model_len : cfg.max_position_embeddings;
    info.num_kv_blocks = (int)nb;
    info.max_logit_rows = lim.max_logit_rows;
    info.release = release_loaded;
    info.release_ctx = ld;

    /* tokenizer */
    const char *tdir = o.tokenizer_dir ? o.tokenizer_dir : o.model_dir;
    char *tpath = loom_path_join(tdir, "tokenizer.json");
    bool has_tok = loom_file_exists(tpath);
    free(tpath);
    if (has_tok && (rc = loom_tokenizer_load(tdir, &info.tokenizer))) {
        loom_fail_context(rc, "tokenizer of %s", tdir);
        goto fail;
    }
    if (!has_tok) LOG_INFO("engine: %s has no tokenizer.json: token ids only", tdir);

    /* EOS: generation_config.json overrides config.json; the tokenizer's eos_token counts too */
    struct loom_generation_config gen;
    if ((rc = loom_generation_config_load(o.model_dir, &gen))) {
        loom_fail_context(rc, "%s/generation_config.json", o.model_dir);
        goto fail_tok;
    }
    if (gen.n_eos > 0)
        for (int i = 0; i < gen.n_eos; i++) add_eos(&info, gen.eos_token_ids[i]);
    else
        for (int i = 0; i < cfg.n_eos; i++) add_eos(&info, cfg.eos_token_ids[i]);
    if (info.tokenizer) add_eos(&info, loom_tokenizer_eos_id(info.tokenizer));

    struct loom_engine_model em = {.vocab_size = cfg.vocab_size, .forward = model_forward, .ctx = ld->m};
    /* sampling on the backend where it has it (LOOM_BACKEND_SAMPLING=0: on the host, for comparisons) */
    const char *bs = getenv("LOOM_BACKEND_SAMPLING");
    em.can_sample = ld->be->ops->sample && !(bs && !strcmp(bs, "0"));
    if ((rc = loom_engine_create_with_model(&o, &em, &info, out))) goto fail_tok;
    return LOOM_OK;

fail_tok:
    if (info.tokenizer) loom_tokenizer_free(info.tokenizer);
fail:
    loom_model_free(ld->m);
    loom_backend_destroy(ld->be);
    free(ld);
    return rc;
}
