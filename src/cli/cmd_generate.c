/*
 * cmd_generate.c (first version): `loom generate MODEL_DIR --prompt-ids 1,2,3 [--prompt-ids ...]
 * --max-tokens N --temperature 0 [--ignore-eos] [--json]`: greedy decoding of token-id prompts, one
 * sequence at a time: a prefill of the prompt, then one token per step through the paged KV cache
 * (a trivial block table). Prints the generated ids (with --json one object per line:
 * {"index", "prompt_index", "token_ids", "text": null, "finish_reason"}) and, on stderr, prefill
 * and decode speed. It stops at an EOS id (generation_config.json, else config.json) unless
 * --ignore-eos, at --max-tokens, or at the context limit.
 *
 * No engine, no batching, no text prompts, no sampling: the engine-based version replaces this.
 */
#include "backend/backend.h"
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"
#include "model/model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PROMPTS 64

static void usage(FILE *f)
{
    fprintf(f, "usage: loom generate MODEL_DIR --prompt-ids 1,2,3 [--prompt-ids ...] [--max-tokens N]\n"
               "                     [--temperature 0] [--ignore-eos] [--json] [common flags]\n\n"
               "Greedy decoding of token-id prompts (this first version: temperature 0, no text prompts).\n"
               "Prints the generated ids per prompt, or one JSON object per line with --json; prefill and\n"
               "decode speed go to stderr. Common flags: --device, --dtype, --threads, --max-model-len,\n"
               "--block-size.\n");
}

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
        *act = *weights = LOOM_DTYPE_BF16;
    } else {
        *weights = LOOM_DTYPE_F16;
        *act = cpu ? LOOM_DTYPE_F32 : LOOM_DTYPE_F16;
    }
}

static int argmax(const float *v, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int loom_cmd_generate(int argc, char **argv)
{
    struct loom_engine_options eo;
    memset(&eo, 0, sizeof(eo));
    eo.device = "cpu";
    eo.dtype = "auto";
    eo.block_size = 16;
    const char *dir = NULL, *prompts[MAX_PROMPTS];
    int n_prompts = 0;
    long long max_tokens = 16;
    double temperature = 1.0;
    bool json = false, ignore_eos = false, have_temp = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int r = loom_cli_common_flag(argc, argv, &i, &eo);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "--prompt-ids")) {
            if (!(v = loom_cli_value(argc, argv, &i))) return 2;
            if (n_prompts == MAX_PROMPTS) {
                fprintf(stderr, "loom generate: at most %d prompts\n", MAX_PROMPTS);
                return 2;
            }
            prompts[n_prompts++] = v;
        } else if (!strcmp(a, "--max-tokens")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, 1 << 24, &max_tokens)) return 2;
        } else if (!strcmp(a, "--temperature")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_float(a, v, 0, 100, &temperature)) return 2;
            have_temp = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--ignore-eos")) {
            ignore_eos = true;
        } else if (!strcmp(a, "--prompt")) {
            fprintf(stderr, "loom generate: text prompts are not supported by this version; use --prompt-ids\n");
            return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom generate: unknown flag '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "loom generate: unexpected argument '%s'\n", a);
            return 2;
        }
    }
    if (!dir || n_prompts == 0) {
        usage(stderr);
        return 2;
    }
    if (!have_temp || temperature != 0) {
        fprintf(stderr, "loom generate: this version decodes greedily only: pass --temperature 0\n");
        return 2;
    }
    int32_t *ids[MAX_PROMPTS] = {0};
    int lens[MAX_PROMPTS], max_len = 0;
    for (int p = 0; p < n_prompts; p++) {
        if (loom_parse_int_list(prompts[p], &ids[p], &lens[p]) || lens[p] == 0) {
            fprintf(stderr, "loom generate: --prompt-ids: %s\n", lens[p] == 0 ? "empty list" : loom_last_error());
            for (int q = 0; q < p; q++) free(ids[q]);
            return 2;
        }
        if (lens[p] > max_len) max_len = lens[p];
    }

    int rc = 1;
    struct loom_backend *be = NULL;
    struct loom_model *m = NULL;
    float *logits = NULL;
    int32_t *seq = NULL, *pos = NULL, *slots = NULL, *bt = NULL, *out = NULL;
    struct loom_model_config cfg;
    struct loom_generation_config gen;
    if (loom_hf_config_load(dir, &cfg) || loom_generation_config_load(dir, &gen)) {
        fprintf(stderr, "loom generate: %s\n", loom_last_error());
        goto done;
    }
    const int *eos = gen.n_eos > 0 ? gen.eos_token_ids : cfg.eos_token_ids;
    const int n_eos = gen.n_eos > 0 ? gen.n_eos : cfg.n_eos;
    int mml = eo.max_model_len > 0 ? eo.max_model_len : cfg.max_position_embeddings;
    if (mml <= 0) mml = max_len + (int)max_tokens;
    const int ctx = max_len + (int)max_tokens < mml ? max_len + (int)max_tokens : mml;
    if (max_len >= mml) {
        fprintf(stderr, "loom generate: a prompt of %d tokens leaves no room under max_model_len %d\n", max_len, mml);
        goto done;
    }
    struct loom_backend_options bo = {.device = eo.device, .threads = eo.threads};
    enum loom_dtype wdt;
    pick_dtypes(eo.device, eo.dtype, cfg.torch_dtype, &bo.act_dtype, &wdt);
    if (loom_backend_create(&bo, &be)) {
        fprintf(stderr, "loom generate: %s\n", loom_last_error());
        goto done;
    }
    struct loom_model_options mo = {.weight_dtype = wdt, .max_batch_tokens = max_len, .max_batch_seqs = 1,
                                    .max_logit_rows = 1, .max_model_len = mml};
    if (loom_model_load(dir, be, &mo, &m)) {
        fprintf(stderr, "loom generate: %s\n", loom_last_error());
        goto done;
    }
    const int bs = eo.block_size > 0 ? eo.block_size : 16, nblocks = (ctx + bs - 1) / bs;
    if (loom_model_alloc_kv(m, nblocks, bs)) {
        fprintf(stderr, "loom generate: %s\n", loom_last_error());
        goto done;
    }
    const int V = m->cfg.vocab_size;
    logits = loom_malloc(sizeof(float) * (size_t)V);
    seq = loom_malloc(sizeof(int32_t) * (size_t)ctx);
    pos = loom_malloc(sizeof(int32_t) * (size_t)ctx);
    slots = loom_malloc(sizeof(int32_t) * (size_t)ctx);
    bt = loom_malloc(sizeof(int32_t) * (size_t)nblocks);
    out = loom_malloc(sizeof(int32_t) * (size_t)max_tokens);
    for (int b = 0; b < nblocks; b++) bt[b] = b;
    for (int i = 0; i < ctx; i++) pos[i] = slots[i] = i;

    double t_prefill = 0, t_decode = 0;
    long long n_prefill = 0, n_decode = 0;
    for (int p = 0; p < n_prompts; p++) {
        const int L = lens[p];
        memcpy(seq, ids[p], sizeof(int32_t) * (size_t)L);
        int n_out = 0, len = L;
        const char *finish = "length";
        int32_t qs[2] = {0, L}, sl[1] = {L}, row[1] = {L - 1};
        struct loom_batch b = {.n_tokens = L, .n_seqs = 1, .token_ids = seq, .positions = pos, .slot_mapping = slots,
                               .query_start = qs, .seq_lens = sl, .block_tables = bt, .max_blocks_per_seq = nblocks,
                               .n_logits = 1, .logit_rows = row};
        double t0 = loom_now();
        if (loom_model_forward(m, &b, logits)) {
            fprintf(stderr, "loom generate: %s\n", loom_last_error());
            goto done;
        }
        t_prefill += loom_now() - t0;
        n_prefill += L;
        t0 = loom_now();
        for (;;) {
            int tok = argmax(logits, V);
            out[n_out++] = tok;
            seq[len++] = tok;
            bool stop = false;
            for (int e = 0; e < n_eos && !ignore_eos; e++) stop = stop || tok == eos[e];
            if (stop) {
                finish = "stop";
                break;
            }
            if (n_out == max_tokens || len >= ctx) break;
            qs[1] = 1;
            sl[0] = len;
            row[0] = 0;
            b = (struct loom_batch){.n_tokens = 1, .n_seqs = 1, .token_ids = seq + len - 1, .positions = pos + len - 1,
                                    .slot_mapping = slots + len - 1, .query_start = qs, .seq_lens = sl,
                                    .block_tables = bt, .max_blocks_per_seq = nblocks, .n_logits = 1, .logit_rows = row};
            if (loom_model_forward(m, &b, logits)) {
                fprintf(stderr, "loom generate: %s\n", loom_last_error());
                goto done;
            }
            n_decode++;
        }
        t_decode += loom_now() - t0;
        if (json) printf("{\"index\":0,\"prompt_index\":%d,\"token_ids\":[", p);
        for (int i = 0; i < n_out; i++) printf(i ? (json ? ",%d" : " %d") : "%d", out[i]);
        if (json) printf("],\"text\":null,\"finish_reason\":\"%s\"}", finish);
        printf("\n");
        fflush(stdout);
    }
    fprintf(stderr, "loom generate: prefill %lld tokens in %.3f s (%.1f tok/s), decode %lld tokens in %.3f s (%.1f tok/s), "
                    "%d threads, %s\n",
            n_prefill, t_prefill, t_prefill > 0 ? n_prefill / t_prefill : 0, n_decode, t_decode,
            t_decode > 0 ? n_decode / t_decode : 0, be->threads, be->name);
    rc = 0;
done:
    free(logits);
    free(seq);
    free(pos);
    free(slots);
    free(bt);
    free(out);
    for (int p = 0; p < n_prompts; p++) free(ids[p]);
    loom_model_free(m);
    loom_backend_destroy(be);
    return rc;
}
