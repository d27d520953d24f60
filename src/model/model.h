/*
 * model.h: a loaded decoder-only transformer and its forward pass over one flattened batch.
 *
 * The six architectures (see format/hf_config.h) share one forward pass written against the
 * backend ops table; arch.c says which tensors each one has. The KV cache is one pool of blocks
 * per layer, allocated once by loom_model_alloc_kv; the engine decides which blocks a sequence uses
 * and passes them in the batch (paged attention).
 */
#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H

#include "backend/backend.h"
#include "format/hf_config.h"
#include <stdint.h>

struct loom_model_options {
    enum loom_dtype weight_dtype;  /* LOOM_DTYPE_COUNT = as stored; else convert at load (--dtype) */
    int max_batch_tokens;          /* largest n_tokens of one forward (workspace size) */
    int max_batch_seqs;            /* largest n_seqs of one forward */
    int max_logit_rows;            /* largest n_logits of one forward (0 = max_batch_tokens) */
    int max_model_len;             /* longest context (0 = max_position_embeddings) */
};

/*
 * One step's batch, host memory, built by the engine's runner (or by a test by hand).
 * Tokens are grouped by sequence: sequence s owns tokens [query_start[s], query_start[s+1]).
 */
struct loom_batch {
    int n_tokens, n_seqs;
    const int32_t *token_ids;    /* [n_tokens] */
    const int32_t *positions;    /* [n_tokens] */
    const int32_t *slot_mapping; /* [n_tokens] block * block_size + offset where the token's K/V go */
    const int32_t *query_start;  /* [n_seqs + 1] */
    const int32_t *seq_lens;     /* [n_seqs] context length after this step */
    const int32_t *block_tables; /* [n_seqs * max_blocks_per_seq] */
    int max_blocks_per_seq;
    int n_logits;                /* rows whose logits are wanted ... */
    const int32_t *logit_rows;   /* [n_logits] ... as token indices into this batch */
    /* Sampling on the backend (optional, where be->ops->sample exists; NULL: every logits row is
     * downloaded). Row r with !sample[r].skip is sampled there: its token goes to sampled[r] and its
     * logits are not downloaded; skipped rows are downloaded as without. */
    const struct loom_sample_row *sample; /* [n_logits] */
    const struct loom_logit_edit *edits;  /* [n_edits], indexed by sample[r].edit0 */
    int n_edits;
    int32_t *sampled;                     /* [n_logits] host */
    struct loom_sample_logprob *sampled_lp; /* [n_logits * (1 + LOOM_SAMPLE_MAX_LOGPROBS)] host: the logprobs
                                             * of rows whose sample[r].logprobs >= 0 */
};

struct loom_model {
    struct loom_model_config cfg;
    struct loom_backend *be;
    int num_kv_blocks, block_size;
    void *impl; /* weights, KV pool and workspace (forward.c) */
};

int loom_model_load(const char *dir, struct loom_backend *be, const struct loom_model_options *opts,
                    struct loom_model **out);
void loom_model_free(struct loom_model *m);

/* Bytes of K and V over all layers for one block of block_size tokens. */
size_t loom_model_kv_bytes_per_block(const struct loom_model *m, int block_size);
/* Allocates the KV pool (once). */
int loom_model_alloc_kv(struct loom_model *m, int num_blocks, int block_size);

/* Runs the batch; writes float32 logits [n_logits, vocab_size] to host memory `logits`. */
int loom_model_forward(struct loom_model *m, const struct loom_batch *b, float *logits);

/* A testing aid (MoE models; model/moe.c): while set, each forward pass writes, for batch row t and MoE
 * layer l (L = num_layers, k = num_experts_per_tok; host memory the caller owns and fills, entries of
 * other layers and rows are left alone):
 *   gaps[t * L + l]            the gap between the k-th and (k+1)-th largest router probabilities (a
 *                              small gap: a near-tie, where rounding may pick the other expert);
 *   ids[(t * L + l) * k + j]   the experts the row was routed to (as moe_route chose them).
 * Either may be NULL; both NULL turns it off. One download per MoE layer: slow, tests only. */
void loom_model_set_router_trace(struct loom_model *m, float *gaps, int32_t *ids);

#endif
