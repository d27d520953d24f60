/*
 * engine_internal.h: what engine.c shares with engine_load.c and with tests, beyond loom.h.
 *
 * loom_engine_create (engine_load.c) loads the backend, model and tokenizer and then calls
 * loom_engine_create_with_model, which tests call directly with a fake model. Keeping the loader in
 * its own file means a test that never loads a real model does not link the model code.
 */
#ifndef LOOM_ENGINE_INTERNAL_H
#define LOOM_ENGINE_INTERNAL_H

#include "engine/runner.h"
#include "format/hf_config.h"
#include "loom.h"
#include "tokenizer/tokenizer.h"

/* What the core engine needs to know about a model besides its forward pass. */
struct loom_engine_model_info {
    int max_model_len;           /* longest context the model takes (before the KV pool caps it) */
    int num_kv_blocks;           /* size of the KV pool the model has (loom_model_alloc_kv) */
    int eos_ids[LOOM_MAX_EOS];   /* tokens that end a sample unless ignore_eos */
    int n_eos;
    int max_logit_rows;          /* logits rows the model can return per forward */
    struct loom_tokenizer *tokenizer; /* NULL: token ids only; the engine takes ownership */
    void (*release)(void *ctx);  /* called by loom_engine_free with release_ctx (NULL: nothing) */
    void *release_ctx;
};

/* Builds an engine around a model that is already loaded (the engine does not own m->ctx). opts
 * supplies the scheduler's limits; opts->model_dir and the memory sizing are ignored. */
int loom_engine_create_with_model(const struct loom_engine_options *opts, const struct loom_engine_model *m,
                                  const struct loom_engine_model_info *info, struct loom_engine **out);

/* The limits loom_engine_create_with_model will use (defaults filled, clamped): for the loader,
 * which must size the model's workspace before the engine exists. */
struct loom_engine_limits {
    int max_num_seqs, max_num_batched_tokens, block_size;
    int max_prompt_rows;         /* prompt-logprob rows per step */
    int max_logit_rows;          /* max_num_seqs + max_prompt_rows */
};
void loom_engine_limits_get(const struct loom_engine_options *opts, int vocab_size, struct loom_engine_limits *l);

/* Test hook: called on the stepping thread for every logits row the step computed, raw, before
 * sampling: position is the token position whose output the row is (the row predicts position + 1). */
typedef void (*loom_logits_hook_fn)(void *user, uint64_t request_id, int index, int position, const float *logits,
                                    int vocab);
void loom_engine_set_logits_hook(struct loom_engine *e, loom_logits_hook_fn fn, void *user);

/* Test access: checks the scheduler's and the pool's invariants (aborts on a broken one). Call it
 * between steps, on the stepping thread. */
void loom_engine_check(struct loom_engine *e);

#endif
