/*
 * runner.c: step -> struct loom_batch -> one model forward. Fills preallocated buffers only.
 */
#include "engine/runner.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

int loom_runner_init(struct loom_runner *r, const struct loom_engine_model *m, int block_size, int max_tokens,
                     int max_seqs, int max_blocks_per_seq, int max_rows)
{
    memset(r, 0, sizeof(*r));
    if (!m->forward || m->vocab_size < 1 || block_size < 1 || max_tokens < 1 || max_seqs < 1 ||
        max_blocks_per_seq < 1 || max_rows < 1)
        return loom_fail(LOOM_EINVAL, "runner: bad sizes (vocab %d, block %d, tokens %d, seqs %d, blocks %d, rows %d)",
                         m->vocab_size, block_size, max_tokens, max_seqs, max_blocks_per_seq, max_rows);
    r->model = *m;
    r->block_size = block_size;
    r->max_tokens = max_tokens;
    r->max_seqs = max_seqs;
    r->max_blocks_per_seq = max_blocks_per_seq;
    r->max_rows = max_rows;
    r->token_ids = loom_malloc((size_t)max_tokens * sizeof(int32_t));
    r->positions = loom_malloc((size_t)max_tokens * sizeof(int32_t));
    r->slot_mapping = loom_malloc((size_t)max_tokens * sizeof(int32_t));
    r->query_start = loom_malloc((size_t)(max_seqs + 1) * sizeof(int32_t));
    r->seq_lens = loom_malloc((size_t)max_seqs * sizeof(int32_t));
    r->block_tables = loom_calloc((size_t)max_seqs * (size_t)max_blocks_per_seq, sizeof(int32_t));
    r->logit_rows = loom_malloc((size_t)max_rows * sizeof(int32_t));
    r->logits = loom_malloc((size_t)max_rows * (size_t)m->vocab_size * sizeof(float));
    r->sample = loom_calloc((size_t)max_rows, sizeof(*r->sample));
    r->sampled = loom_calloc((size_t)max_rows, sizeof(int32_t));
    r->sampled_lp = loom_calloc((size_t)max_rows * (1 + LOOM_SAMPLE_MAX_LOGPROBS), sizeof(*r->sampled_lp));
    return LOOM_OK;
}

void loom_runner_free(struct loom_runner *r)
{
    free(r->token_ids);
    free(r->positions);
    free(r->slot_mapping);
    free(r->query_start);
    free(r->seq_lens);
    free(r->block_tables);
    free(r->logit_rows);
    free(r->logits);
    free(r->sample);
    free(r->sampled);
    free(r->sampled_lp);
    memset(r, 0, sizeof(*r));
}

void loom_runner_build(struct loom_runner *r, struct loom_seq *const *seqs, int n)
{
    int bs = r->block_size, t = 0, rows = 0, mb = 1;
    LOOM_ASSERT(n >= 1 && n <= r->max_seqs);
    for (int s = 0; s < n; s++) {
        int nb = loom_blocks_for(seqs[s]->num_computed + seqs[s]->sched_tokens, bs);
        if (nb > mb) mb = nb;
    }
    LOOM_ASSERT(mb <= r->max_blocks_per_seq);
    for (int s = 0; s < n; s++) {
        struct loom_seq *seq = seqs[s];
        int start = seq->num_computed, len = start + seq->sched_tokens;
        LOOM_ASSERT(seq->sched_tokens > 0 && len <= seq->n_tokens && t + seq->sched_tokens <= r->max_tokens);
        r->query_start[s] = t;
        r->seq_lens[s] = len;
        seq->sample_row = -1;
        seq->prompt_row0 = -1;
        for (int pos = start; pos < len; pos++, t++) {
            r->token_ids[t] = seq->tokens[pos];
            r->positions[t] = pos;
            r->slot_mapping[t] = seq->block_table[pos / bs] * bs + pos % bs;
            if (seq->n_prompt_rows > 0 && pos == seq->prompt_pos0) seq->prompt_row0 = rows;
            if (seq->n_prompt_rows > 0 && pos >= seq->prompt_pos0 && pos < seq->prompt_pos0 + seq->n_prompt_rows)
                r->logit_rows[rows++] = t;
        }
        if (len == seq->n_tokens) {
            seq->sample_row = rows;
            r->logit_rows[rows++] = t - 1;
        }
        int nb = loom_blocks_for(len, bs);
        LOOM_ASSERT(nb <= seq->n_blocks);
        int32_t *bt = r->block_tables + (size_t)s * mb;
        memcpy(bt, seq->block_table, (size_t)nb * sizeof(int32_t));
        for (int b = nb; b < mb; b++) bt[b] = 0;
        LOOM_ASSERT(rows <= r->max_rows);
    }
    r->query_start[n] = t;
    struct loom_batch *b = &r->batch;
    b->n_tokens = t;
    b->n_seqs = n;
    b->token_ids = r->token_ids;
    b->positions = r->positions;
    b->slot_mapping = r->slot_mapping;
    b->query_start = r->query_start;
    b->seq_lens = r->seq_lens;
    b->block_tables = r->block_tables;
    b->max_blocks_per_seq = mb;
    b->n_logits = rows;
    b->logit_rows = r->logit_rows;
    b->sample = NULL;
    b->edits = NULL;
    b->n_edits = 0;
    b->sampled = r->sampled;
    b->sampled_lp = r->sampled_lp;
}

int loom_runner_forward(struct loom_runner *r)
{
    return r->model.forward(r->model.ctx, &r->batch, r->logits);
}

int loom_runner_run(struct loom_runner *r, struct loom_seq *const *seqs, int n)
{
    loom_runner_build(r, seqs, n);
    return loom_runner_forward(r);
}
