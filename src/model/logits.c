/*
 * logits.c: the last part of a forward pass: the rows whose logits are wanted (b->logit_rows) are
 * gathered from the final normed hidden states, multiplied by lm_head in chunks of rows, and
 * downloaded as F32, or sampled on the backend (b->sample) so that only their tokens come back.
 */
#include "model/model_internal.h"
#include "core/error.h"

/* The batch's backend-sampling rows: what the device will index with them must be in range. */
int loom_model_check_sampling(const struct loom_model *m, const struct loom_batch *b)
{
    const struct loom_model_config *c = &m->cfg;
    const struct loom_backend *be = m->be;
    const struct loom_backend_ops *ops = be->ops;
    const int n_out = b->n_logits;
    if (b->sample && !ops->sample)
        return loom_fail(LOOM_EINVAL, "forward: backend sampling asked of the %s backend, which has none", be->name);
    for (int r = 0; b->sample && r < n_out; r++) {
        const struct loom_sample_row *sr = &b->sample[r];
        if (sr->skip) continue;
        int64_t e1 = (int64_t)sr->edit0 + sr->n_mask + sr->n_bias + sr->n_rep + sr->n_sub;
        if (sr->logprobs > LOOM_SAMPLE_MAX_LOGPROBS || (sr->logprobs >= 0 && !b->sampled_lp))
            return loom_fail(LOOM_EINVAL, "forward: sampling row %d asks for %d logprobs (at most %d, and a buffer)", r,
                             sr->logprobs, LOOM_SAMPLE_MAX_LOGPROBS);
        if (sr->edit0 < 0 || sr->n_mask < 0 || sr->n_bias < 0 || sr->n_rep < 0 || sr->n_sub < 0 || e1 > b->n_edits)
            return loom_fail(LOOM_EINVAL, "forward: sampling row %d names edits outside the %d given", r, b->n_edits);
        for (int64_t i = sr->edit0; i < e1; i++)
            if (b->edits[i].token < 0 || b->edits[i].token >= c->vocab_size)
                return loom_fail(LOOM_EINVAL, "forward: sampling row %d edits token %d (vocabulary %d)", r,
                                 b->edits[i].token, c->vocab_size);
    }
    return 0;
}

int loom_model_logits(struct loom_model *m, const struct loom_batch *b, struct loom_tensor h, float *logits, int n_out)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    struct loom_backend *be = m->be;
    const struct loom_backend_ops *ops = be->ops;
    if (b->n_logits > 0) {
        /* a decode step wants every row in order: h as it is, no gather */
        bool identity = b->n_logits <= h.rows;
        for (int r = 0; identity && r < b->n_logits; r++) identity = b->logit_rows[r] == r;
        struct loom_tensor hl = identity ? ws_rows(h, b->n_logits) : ws_rows(mi->hl, b->n_logits);
        if (!identity) ops->gather_rows(be, hl, h, mi->d_logit_rows);
        const int64_t V = c->vocab_size;
        for (int r0 = 0; r0 < b->n_logits; r0 += mi->logit_chunk) {
            int cnt = b->n_logits - r0 < mi->logit_chunk ? b->n_logits - r0 : mi->logit_chunk;
            int out = n_out - r0 < cnt ? n_out - r0 : cnt; /* the rest are padding rows */
            struct loom_tensor lg = ws_rows(mi->logits, cnt);
            ops->matmul(be, lg, loom_tensor_rows(hl, r0, cnt), mi->lm_head, NULL);
            if (out <= 0) continue;
            /* rows sampled on the backend stay there; the chunk is downloaded if any row is not */
            int on_device = 0;
            for (int r = r0; b->sample && r < r0 + out; r++) on_device += !b->sample[r].skip;
            if (on_device < out)
                ops->download(be, logits + (int64_t)r0 * V, lg.data, sizeof(float) * (size_t)out * (size_t)V);
            if (on_device)
                ops->sample(be, lg, b->sample + r0, out, b->edits, b->n_edits, b->sampled + r0,
                            b->sampled_lp ? b->sampled_lp + (size_t)r0 * (1 + LOOM_SAMPLE_MAX_LOGPROBS) : NULL);
        }
    }
    return 0;
}
