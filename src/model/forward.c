/*
 * forward.c: one forward pass of a decoder-only transformer over a flattened batch, written once
 * against the backend ops table (no assumption about where memory lives: only the backend touches
 * it; host arrays reach it through upload/download).
 *
 *   x = embed[tokens]
 *   per layer:  h = rmsnorm(x)                 (fused with the previous sublayer's residual add)
 *               q|k|v = h Wqkv (+bqkv)   (one product where the weights were concatenated at load,
 *                                          else three into the column ranges of the same rows)
 *               per-head q/k rmsnorm (Qwen3), rope(q, k), K/V -> pool at slot_mapping: one op
 *               a = paged causal attention (window), reading q in place (strided)
 *               x += a Wo (+bo);  h = rmsnorm(x)
 *               dense: g|u = h Wg|u (one product, or two);  x += (silu(g) * u) Wd
 *               MoE:   p = softmax(h Wr), top-k (renormalized as the architecture does); for each
 *                      expert e: x[rows routed to e] += w * expert_e(h[those rows])
 *   logits = rmsnorm(x)[logit_rows] @ lm_head^T, in chunks of rows, downloaded as F32
 *
 * Where the backend has the optional fused ops, a product takes its neighbours in (matmul_fused: the
 * rmsnorm as its prologue, the residual add or silu(g) * u as its epilogue) and a decode step's
 * q/k norm + rope + K/V write + attention are one op (decode_attention); the separate ops above are
 * the fallback, taken per call where the backend declines (and always on the CPU).
 * The MoE block is model/moe.c.
 * The batch is validated on the host first (ids, slots against block tables, lengths), so a bad
 * batch is LOOM_EINVAL and never a stray memory access. It allocates nothing.
 */
#include "model/model_internal.h"
#include "core/error.h"

#include <math.h>
#include <string.h>

static int validate(const struct loom_model *m, const struct loom_batch *b, int *max_q, int *max_ctx)
{
    const struct model_impl *mi = m->impl;
    const int n = b->n_tokens, S = b->n_seqs, bs = m->block_size;
    if (m->num_kv_blocks <= 0) return loom_fail(LOOM_EINVAL, "forward: the KV pool is not allocated (loom_model_alloc_kv)");
    if (n < 1 || n > mi->max_tokens)
        return loom_fail(LOOM_EINVAL, "forward: %d tokens in the batch; the workspace holds 1..%d (max_batch_tokens)", n,
                         mi->max_tokens);
    if (S < 1 || S > mi->max_seqs)
        return loom_fail(LOOM_EINVAL, "forward: %d sequences in the batch; the workspace holds 1..%d (max_batch_seqs)", S,
                         mi->max_seqs);
    if (b->n_logits < 0 || b->n_logits > mi->max_logit_rows)
        return loom_fail(LOOM_EINVAL, "forward: %d logit rows asked; the workspace holds 0..%d (max_logit_rows)",
                         b->n_logits, mi->max_logit_rows);
    const int mbps = b->max_blocks_per_seq;
    if (mbps < 1 || (int64_t)S * mbps > (int64_t)mi->max_seqs * mi->max_blocks_per_seq)
        return loom_fail(LOOM_EINVAL, "forward: block tables of %d sequences x %d blocks exceed the %d x %d allocated",
                         S, mbps, mi->max_seqs, mi->max_blocks_per_seq);
    if (b->query_start[0] != 0 || b->query_start[S] != n)
        return loom_fail(LOOM_EINVAL, "forward: query_start must run from 0 to n_tokens (%d), got %d..%d", n,
                         b->query_start[0], b->query_start[S]);
    const int64_t slots = (int64_t)m->num_kv_blocks * bs;
    *max_q = 0;
    *max_ctx = 0;
    for (int s = 0; s < S; s++) {
        const int q0 = b->query_start[s], q_len = b->query_start[s + 1] - q0, ctx = b->seq_lens[s];
        if (q_len < 0 || ctx < q_len || ctx > mi->max_model_len || ctx > (int64_t)mbps * bs)
            return loom_fail(LOOM_EINVAL, "forward: sequence %d has %d new tokens in a context of %d (limit %d, %d blocks "
                                          "of %d)", s, q_len, ctx, mi->max_model_len, mbps, bs);
        if (q_len > *max_q) *max_q = q_len;
        if (ctx > *max_ctx) *max_ctx = ctx;
        const int32_t *bt = b->block_tables + (int64_t)s * mbps;
        for (int k = 0; k < (ctx + bs - 1) / bs; k++)
            if (bt[k] < 0 || bt[k] >= m->num_kv_blocks)
                return loom_fail(LOOM_EINVAL, "forward: sequence %d: block table entry %d is %d (pool has %d blocks)", s,
                                 k, bt[k], m->num_kv_blocks);
        for (int j = 0; j < q_len; j++) {
            const int i = q0 + j, pos = ctx - q_len + j;
            if (b->positions[i] != pos)
                return loom_fail(LOOM_EINVAL, "forward: token %d of sequence %d has position %d, expected %d", i, s,
                                 b->positions[i], pos);
            int64_t want = (int64_t)bt[pos / bs] * bs + pos % bs;
            if (b->slot_mapping[i] != want || want >= slots)
                return loom_fail(LOOM_EINVAL, "forward: token %d (sequence %d, position %d) has slot %d, but its block "
                                              "table gives %lld", i, s, pos, b->slot_mapping[i], (long long)want);
            if (b->token_ids[i] < 0 || b->token_ids[i] >= m->cfg.vocab_size)
                return loom_fail(LOOM_EINVAL, "forward: token id %d is outside the vocabulary (0..%d)", b->token_ids[i],
                                 m->cfg.vocab_size - 1);
        }
    }
    for (int r = 0; r < b->n_logits; r++)
        if (b->logit_rows[r] < 0 || b->logit_rows[r] >= n)
            return loom_fail(LOOM_EINVAL, "forward: logit row %d names token %d of a %d-token batch", r, b->logit_rows[r], n);
    return 0;
}

/* Decode-step padding: a decode step (every sequence one new token) of n sequences runs as one of
 * pad_size(n) sequences, so that on a backend that replays identical work (CUDA graphs) steps of
 * nearby sizes replay one graph instead of recording their own, as vLLM captures graphs per batch-size
 * bucket. A padding sequence has one token (id 0, position 0) with no KV slot (-1: nothing stored) and
 * a context of one position in block 0 (read, never written); its rows are computed and dropped. The
 * block-table width is rounded up to a power of two for the same reason. */
static int pad_size(int n)
{
    if (n <= 2) return n;
    if (n <= 4) return 4;
    return (n + 7) / 8 * 8;
}

static const struct loom_batch *pad_decode(struct model_impl *mi, const struct loom_batch *b, int max_q,
                                           struct loom_batch *pb)
{
    const int n = b->n_tokens, P = pad_size(n);
    int mb = 1;
    while (mb < b->max_blocks_per_seq) mb *= 2;
    if (mb > mi->max_blocks_per_seq) mb = mi->max_blocks_per_seq;
    if (!mi->pad_decode || max_q != 1 || b->n_seqs != n || P > mi->max_seqs || P > mi->max_tokens ||
        P > mi->max_logit_rows || b->n_logits > n || mb < b->max_blocks_per_seq ||
        (P == n && mb == b->max_blocks_per_seq))
        return b;
    *pb = *b;
    memcpy(mi->h_pad_tokens, b->token_ids, sizeof(int32_t) * (size_t)n);
    memcpy(mi->h_pad_positions, b->positions, sizeof(int32_t) * (size_t)n);
    memcpy(mi->h_pad_slots, b->slot_mapping, sizeof(int32_t) * (size_t)n);
    memcpy(mi->h_pad_query_start, b->query_start, sizeof(int32_t) * (size_t)(n + 1));
    memcpy(mi->h_pad_seq_lens, b->seq_lens, sizeof(int32_t) * (size_t)n);
    for (int i = n; i < P; i++) {
        mi->h_pad_tokens[i] = 0;
        mi->h_pad_positions[i] = 0;
        mi->h_pad_slots[i] = -1;
        mi->h_pad_query_start[i + 1] = i + 1;
        mi->h_pad_seq_lens[i] = 1;
    }
    for (int s = 0; s < P; s++) {
        int32_t *row = mi->h_pad_block_tables + (size_t)s * mb;
        int w = s < n ? b->max_blocks_per_seq : 0;
        if (w) memcpy(row, b->block_tables + (size_t)s * b->max_blocks_per_seq, sizeof(int32_t) * (size_t)w);
        for (int k = w; k < mb; k++) row[k] = 0;
    }
    memcpy(mi->h_pad_logit_rows, b->logit_rows, sizeof(int32_t) * (size_t)b->n_logits);
    for (int r = b->n_logits; r < P; r++) mi->h_pad_logit_rows[r] = r; /* a padding row: its own token */
    pb->n_tokens = pb->n_seqs = P;
    pb->token_ids = mi->h_pad_tokens;
    pb->positions = mi->h_pad_positions;
    pb->slot_mapping = mi->h_pad_slots;
    pb->query_start = mi->h_pad_query_start;
    pb->seq_lens = mi->h_pad_seq_lens;
    pb->block_tables = mi->h_pad_block_tables;
    pb->max_blocks_per_seq = mb;
    pb->logit_rows = mi->h_pad_logit_rows;
    pb->n_logits = b->n_logits == n ? P : b->n_logits; /* decode rows all sample: pad them too */
    return pb;
}

/* The backend's fused form of a product, where it has one (false: the caller runs the separate ops). */
static bool fused(const struct model_impl *mi, struct loom_backend *be, struct loom_matmul_fused f)
{
    return mi->fuse_ops && be->ops->matmul_fused && be->ops->matmul_fused(be, &f);
}

int loom_model_forward(struct loom_model *m, const struct loom_batch *b, float *logits)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    struct loom_backend *be = m->be;
    const struct loom_backend_ops *ops = be->ops;
    int max_q = 0, max_ctx = 0, s;
    if ((s = validate(m, b, &max_q, &max_ctx)) || (s = loom_model_check_sampling(m, b))) return s;
    const int n_out = b->n_logits; /* rows whose logits leave the forward pass */
    struct loom_batch padded;
    b = pad_decode(mi, b, max_q, &padded);
    const int n = b->n_tokens, S = b->n_seqs;
    const int D = c->head_dim, NH = c->num_heads, NKV = c->num_kv_heads;

    ops->upload(be, mi->d_tokens, b->token_ids, sizeof(int32_t) * (size_t)n);
    ops->upload(be, mi->d_positions, b->positions, sizeof(int32_t) * (size_t)n);
    ops->upload(be, mi->d_slots, b->slot_mapping, sizeof(int32_t) * (size_t)n);
    ops->upload(be, mi->d_query_start, b->query_start, sizeof(int32_t) * (size_t)(S + 1));
    ops->upload(be, mi->d_seq_lens, b->seq_lens, sizeof(int32_t) * (size_t)S);
    ops->upload(be, mi->d_block_tables, b->block_tables, sizeof(int32_t) * (size_t)S * (size_t)b->max_blocks_per_seq);
    if (b->n_logits > 0) ops->upload(be, mi->d_logit_rows, b->logit_rows, sizeof(int32_t) * (size_t)b->n_logits);
    struct loom_attn_meta meta = {
        .n_tokens = n, .n_seqs = S, .block_size = m->block_size, .max_blocks_per_seq = b->max_blocks_per_seq,
        .max_query_len = max_q, .max_seq_len = max_ctx, .positions = mi->d_positions, .slot_mapping = mi->d_slots,
        .query_start = mi->d_query_start, .seq_lens = mi->d_seq_lens, .block_tables = mi->d_block_tables,
        .h_query_start = b->query_start, .h_seq_lens = b->seq_lens,
    };

    struct loom_tensor x = ws_rows(mi->x, n), h = ws_rows(mi->h, n), qkv = ws_rows(mi->qkv, n), q = ws_rows(mi->q, n),
                       k = ws_rows(mi->k, n), v = ws_rows(mi->v, n), attn = ws_rows(mi->attn, n), o = ws_rows(mi->o, n);
    const float scale = (float)(1.0 / sqrt((double)D));
    bool pending = false; /* o holds a sublayer output not yet added into x */
    const bool decode = max_q == 1 && n == S; /* every sequence one new token */

    ops->embedding(be, x, mi->embed, mi->d_tokens);
    for (int l = 0; l < c->num_layers; l++) {
        const struct model_layer *L = &mi->layers[l];
        const struct loom_tensor *bqkv = L->bqkv.data ? &L->bqkv : NULL;
        /* q|k|v = rmsnorm(x) Wqkv: the norm inside the product where the backend fuses it */
        if (!(!pending && L->wqkv.data &&
              fused(mi, be, (struct loom_matmul_fused){.out = qkv, .x = x, .w = L->wqkv, .bias = bqkv,
                                                       .norm = &L->attn_norm, .eps = c->rms_norm_eps}))) {
            if (pending) ops->add_rmsnorm(be, x, o, h, L->attn_norm, c->rms_norm_eps);
            else ops->rmsnorm(be, h, x, L->attn_norm, c->rms_norm_eps);
            if (L->wqkv.data) { /* one product into q | k | v */
                ops->matmul(be, qkv, h, L->wqkv, bqkv);
            } else { /* three, into the column ranges of the same rows */
                ops->matmul(be, q, h, L->wq, L->bq.data ? &L->bq : NULL);
                ops->matmul(be, k, h, L->wk, L->bk.data ? &L->bk : NULL);
                ops->matmul(be, v, h, L->wv, L->bv.data ? &L->bv : NULL);
            }
        }
        pending = false;

        const struct loom_tensor *qn = c->qk_norm ? &L->q_norm : NULL, *kn = c->qk_norm ? &L->k_norm : NULL;
        if (!(mi->fuse_ops && decode && ops->decode_attention &&
              ops->decode_attention(be, attn, qkv, mi->d_positions, mi->d_slots, NH, NKV, D, mi->inv_freq, qn, kn,
                                    c->rms_norm_eps, L->k_cache, L->v_cache, &meta, scale, L->sliding_window))) {
            ops->qkv_rope_store(be, qkv, mi->d_positions, mi->d_slots, NH, NKV, D, mi->inv_freq, qn, kn,
                                c->rms_norm_eps, L->k_cache, L->v_cache);
            ops->attention(be, attn, q, L->k_cache, L->v_cache, &meta, NH, NKV, D, scale, L->sliding_window);
        }
        /* x += attn Wo: the residual add inside the product where the backend fuses it */
        const struct loom_tensor *bo = L->bo.data ? &L->bo : NULL;
        if (!fused(mi, be, (struct loom_matmul_fused){.out = x, .x = attn, .w = L->wo, .bias = bo, .accumulate = true})) {
            ops->matmul(be, o, attn, L->wo, bo);
            pending = true;
        }

        const int I = c->intermediate_size;
        struct loom_tensor gu = ws_view(mi->gate_up, n, 2 * (int64_t)I);
        struct loom_tensor g = loom_tensor_cols(gu, 0, I), u = loom_tensor_cols(gu, I, I);
        /* dense: g = silu(rmsnorm(x) Wg) * (rmsnorm(x) Wu) in one product where the backend fuses it */
        if (!L->moe && !pending && L->gate_up.data &&
            fused(mi, be, (struct loom_matmul_fused){.out = ws_view(mi->gate_up, n, I), .x = x, .w = L->gate_up,
                                                     .norm = &L->mlp_norm, .eps = c->rms_norm_eps,
                                                     .silu_pairs = true})) {
            g = ws_view(mi->gate_up, n, I); /* contiguous: the product wrote n x I */
        } else {
            if (pending) ops->add_rmsnorm(be, x, o, h, L->mlp_norm, c->rms_norm_eps);
            else ops->rmsnorm(be, h, x, L->mlp_norm, c->rms_norm_eps);
            pending = false;
            if (L->moe) {
                if ((s = loom_moe_block(m, L, x, h, n))) return s;
                continue;
            }
            if (L->gate_up.data && fused(mi, be, (struct loom_matmul_fused){.out = ws_view(mi->gate_up, n, I), .x = h,
                                                                           .w = L->gate_up, .silu_pairs = true})) {
                g = ws_view(mi->gate_up, n, I); /* the SwiGLU product without the norm (e.g. hidden > 2048) */
            } else {
                if (L->gate_up.data) {
                    ops->matmul(be, gu, h, L->gate_up, NULL);
                } else {
                    ops->matmul(be, g, h, L->gate, NULL);
                    ops->matmul(be, u, h, L->up, NULL);
                }
                ops->silu_mul(be, g, g, u); /* in place into the gate half; down reads it strided */
            }
        }
        if (!fused(mi, be, (struct loom_matmul_fused){.out = x, .x = g, .w = L->down, .accumulate = true})) {
            ops->matmul(be, o, g, L->down, NULL);
            pending = true;
        }
    }
    if (pending) ops->add_rmsnorm(be, x, o, h, mi->final_norm, c->rms_norm_eps);
    else ops->rmsnorm(be, h, x, mi->final_norm, c->rms_norm_eps);

    if ((s = loom_model_logits(m, b, h, logits, n_out))) return s;
    ops->synchronize(be);
    return 0;
}
