/*
 * model_internal.h: what model.c (loading, KV pool) and forward.c (the forward pass) share: the
 * bound weights per layer, the KV pool, and the workspace allocated once at load. Every pointer
 * here is backend memory unless its name starts with h_ (host memory).
 * Shapes use T = max_batch_tokens, H = hidden_size, D = head_dim, V = vocab_size.
 */
#ifndef LOOM_MODEL_INTERNAL_H
#define LOOM_MODEL_INTERNAL_H

#include "core/log.h"
#include "format/safetensors.h"
#include "model/model.h"

struct model_layer {
    struct loom_tensor attn_norm;            /* [1, H] */
    struct loom_tensor wq, wk, wv, wo;       /* [heads * D, H], [kv_heads * D, H] x2, [H, heads * D] */
    struct loom_tensor bq, bk, bv, bo;       /* biases [1, out] (data NULL when absent) */
    struct loom_tensor q_norm, k_norm;       /* [1, D] (Qwen3) */
    /* Concatenated at load where the backend copies weights anyway (be->copies_weights), else data NULL:
     * wqkv [(heads + 2 kv_heads) * D, H] with bqkv [1, that] (data NULL without biases), gate_up [2I, H].
     * wq, wk, wv (bq, bk, bv) and gate, up are then views of their pieces. */
    struct loom_tensor wqkv, bqkv, gate_up;
    struct loom_tensor mlp_norm;             /* [1, H] */
    struct loom_tensor gate, up, down;       /* dense: [I, H], [I, H], [H, I] */
    bool moe;
    struct loom_tensor router;               /* [E, H] */
    struct loom_tensor *e_gate, *e_up, *e_down; /* [E] each: [MI, H], [MI, H], [H, MI] */
    void **expert_table;                     /* backend memory [3 * E]: e_gate, e_up, e_down data pointers */
    int sliding_window;                      /* 0 = full attention */
    struct loom_tensor k_cache, v_cache;     /* [num_blocks * block_size, kv_heads * D], act dtype */
};

struct model_impl {
    struct loom_safetensors *st;
    struct model_layer *layers;
    struct loom_tensor embed;      /* [V, H] */
    struct loom_tensor final_norm; /* [1, H] */
    struct loom_tensor lm_head;    /* [V, H]; the embedding itself when tied */
    struct loom_tensor inv_freq;   /* F32 [1, D / 2], scaling applied */

    /* backend buffers this model frees: converted weights, workspace, KV pool */
    void **owned;
    int n_owned, cap_owned;

    /* limits the workspace was sized for */
    int max_tokens, max_seqs, max_logit_rows, max_model_len;
    int logit_chunk;        /* rows of logits computed per lm_head matmul */
    int max_blocks_per_seq; /* block-table width the pool allows (set by alloc_kv) */
    int ffn_width;          /* max(intermediate, moe_intermediate) */

    /* activations, act dtype unless noted */
    struct loom_tensor x;      /* [T, H] residual stream */
    struct loom_tensor h;      /* [T, H] normed input of a sublayer */
    struct loom_tensor qkv;    /* [T, (heads + 2 kv_heads) * D]: each row q | k | v */
    struct loom_tensor q, k, v; /* column views of qkv: [T, heads * D], [T, kv_heads * D] x2, stride of qkv */
    struct loom_tensor attn;   /* [T, heads * D] */
    struct loom_tensor o;      /* [T, H] sublayer output */
    struct loom_tensor gate, up; /* [T, ffn_width] each, contiguous: the two halves of one allocation */
    struct loom_tensor gate_up;  /* [T, 2 ffn_width] that allocation (dense layers view it as [n, 2I]) */
    struct loom_tensor hl;     /* [max_logit_rows, H] the normed rows whose logits are wanted */
    struct loom_tensor logits; /* F32 [logit_chunk, V] */

    /* MoE (num_experts > 0) */
    struct loom_tensor router_logits; /* F32 [T, E] */
    int32_t *d_route_ids;             /* [T * k] */
    float *d_route_w;                 /* [T * k] */
    void *moe_ws;                     /* scratch of ops->moe_experts for T rows (moe_workspace_bytes) */
    float *h_trace_gaps;              /* loom_model_set_router_trace's buffers, or NULL */
    int32_t *h_trace_ids;
    float *h_router_logits;           /* [T, E] host copy of the router logits, while tracing */
    int32_t *h_router_ids;            /* [T * k] host copy of the routing, while tracing */

    /* a progress line while weights are copied to the backend (a GPU), in MiB */
    bool load_progress;
    struct loom_progress load_prog;
    long long load_bytes;

    /* decode-step padding (forward.c; backends with replays_work): host copies of a padded batch */
    bool pad_decode;
    bool fuse_ops;  /* use the backend's optional matmul_fused / decode_attention where it has them */
    int32_t *h_pad_tokens, *h_pad_positions, *h_pad_slots, *h_pad_query_start, *h_pad_seq_lens, *h_pad_logit_rows;
    int32_t *h_pad_block_tables; /* [max_seqs * max_blocks_per_seq] (alloc_kv) */

    /* step metadata */
    int32_t *d_tokens, *d_positions, *d_slots; /* [T] */
    int32_t *d_query_start;                    /* [S + 1] */
    int32_t *d_seq_lens;                       /* [S] */
    int32_t *d_block_tables;                   /* [S * max_blocks_per_seq] (alloc_kv) */
    int32_t *d_logit_rows;                     /* [max_logit_rows] */
};

/* rows [0, n) of a workspace tensor */
static inline struct loom_tensor ws_rows(struct loom_tensor t, int n)
{
    return loom_tensor_rows(t, 0, n);
}

/* a contiguous [n, cols] view of a workspace buffer that holds at least n * cols elements */
static inline struct loom_tensor ws_view(struct loom_tensor t, int n, int64_t cols)
{
    return loom_tensor_2d(t.data, t.dtype, n, cols);
}

/* moe.c: x[rows routed to e] += w * expert_e(h[those rows]) for every expert e of layer L */
int loom_moe_block(struct loom_model *m, const struct model_layer *L, struct loom_tensor x, struct loom_tensor h, int n);

/* logits.c: logits of the rows b->logit_rows of h (the final normed hidden states) into logits; rows
 * from n_out on (padding) are computed with the others but neither downloaded nor sampled */
int loom_model_logits(struct loom_model *m, const struct loom_batch *b, struct loom_tensor h, float *logits, int n_out);
/* logits.c: LOOM_EINVAL unless b's backend-sampling rows (b->sample) are valid for this model */
int loom_model_check_sampling(const struct loom_model *m, const struct loom_batch *b);

#endif
