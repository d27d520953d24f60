/*
 * runner.h: turns the scheduler's step into one flat struct loom_batch (token ids, positions, slot
 * mapping, query starts, context lengths, block tables, the rows whose logits are wanted), runs the
 * model once, and leaves the logits rows for the sampler.
 *
 * The model is reached through struct loom_engine_model, a function pointer: the engine plugs in
 * loom_model_forward, tests plug in a fake paged model. Every buffer is allocated by
 * loom_runner_init for the largest step (max tokens, max sequences, the longest context, the most
 * logits rows); a step does not allocate.
 *
 * Logits rows, in batch order: each scheduled sequence that completes its tokens this step (a decode,
 * or the last chunk of a prefill) gets one row to sample from (seq->sample_row); sample 0 of a
 * request that asked for prompt_logprobs also gets the rows of its prompt positions in this chunk
 * (seq->prompt_row0 .., as the scheduler chose them). No other prompt row is computed.
 */
#ifndef LOOM_ENGINE_RUNNER_H
#define LOOM_ENGINE_RUNNER_H

#include "engine/sequence.h"
#include "model/model.h"

struct loom_engine_model {
    int vocab_size;
    /* Runs the batch; writes float32 logits [b->n_logits, vocab_size]. 0 or a negative status. */
    int (*forward)(void *ctx, const struct loom_batch *b, float *logits);
    void *ctx;
    bool can_sample; /* forward honours b->sample (the backend samples; model.h) */
};

struct loom_runner {
    struct loom_engine_model model;
    int block_size;
    int max_tokens, max_seqs, max_blocks_per_seq, max_rows;
    int32_t *token_ids, *positions, *slot_mapping; /* [max_tokens] */
    int32_t *query_start;                          /* [max_seqs + 1] */
    int32_t *seq_lens;                             /* [max_seqs] */
    int32_t *block_tables;                         /* [max_seqs * max_blocks_per_seq] */
    int32_t *logit_rows;                           /* [max_rows] */
    float *logits;                                 /* [max_rows * vocab_size] */
    struct loom_sample_row *sample;                /* [max_rows] backend sampling, filled by the engine */
    int32_t *sampled;                              /* [max_rows] the tokens it drew */
    struct loom_sample_logprob *sampled_lp;        /* [max_rows * (1 + LOOM_SAMPLE_MAX_LOGPROBS)] their logprobs */
    struct loom_batch batch;                       /* the last step's batch */
};

int loom_runner_init(struct loom_runner *r, const struct loom_engine_model *m, int block_size, int max_tokens,
                     int max_seqs, int max_blocks_per_seq, int max_rows);
void loom_runner_free(struct loom_runner *r);

/* Builds the batch of seqs[0..n) (each with sched_tokens > 0 and its blocks) into r->batch and sets
 * each sequence's sample_row / prompt_row0; batch.sample is NULL (the caller may set it). */
void loom_runner_build(struct loom_runner *r, struct loom_seq *const *seqs, int n);
/* Runs the model on r->batch. Returns the model's status. */
int loom_runner_forward(struct loom_runner *r);
/* Both. */
int loom_runner_run(struct loom_runner *r, struct loom_seq *const *seqs, int n);

static inline const float *loom_runner_row(const struct loom_runner *r, int row)
{
    return r->logits + (size_t)row * (size_t)r->model.vocab_size;
}

#endif
