/*
 * logits.c: the last part of a forward pass: the rows whose logits are wanted (b->logit_rows) are
 * gathered from the final normed hidden states, multiplied by lm_head in chunks of rows, and
 * downloaded as F32.
 */
#include "model/model_internal.h"

int loom_model_logits(struct loom_model *m, const struct loom_batch *b, struct loom_tensor h, float *logits)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    struct loom_backend *be = m->be;
    const struct loom_backend_ops *ops = be->ops;
    if (b->n_logits > 0) {
        struct loom_tensor hl = ws_rows(mi->hl, b->n_logits);
        ops->gather_rows(be, hl, h, mi->d_logit_rows);
        const int64_t V = c->vocab_size;
        for (int r0 = 0; r0 < b->n_logits; r0 += mi->logit_chunk) {
            int cnt = b->n_logits - r0 < mi->logit_chunk ? b->n_logits - r0 : mi->logit_chunk;
            struct loom_tensor lg = ws_rows(mi->logits, cnt);
            ops->matmul(be, lg, loom_tensor_rows(hl, r0, cnt), mi->lm_head, NULL);
            ops->download(be, logits + (int64_t)r0 * V, lg.data, sizeof(float) * (size_t)cnt * (size_t)V);
        }
    }
    return 0;
}
