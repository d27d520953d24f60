/*
 * backend.h: the ops table every compute backend implements (cpu/ now, cuda/ next; a Metal one would
 * be one more folder). The model's forward pass (model/forward.c) is written once against it.
 *
 * Memory: tensors live in backend memory (host memory for the CPU, device memory for CUDA).
 * All kernel ops are asynchronous on the backend's one stream; download() and synchronize() wait.
 * Ops never fail on valid shapes: shapes are checked by the caller (model code), and a backend
 * LOOM_ASSERTs what it relies on. Everything large is allocated before the step loop.
 *
 * Activations use be->act_dtype (F32 on the CPU; BF16 or F32 on CUDA). Weights keep their stored
 * dtype (F32, F16 or BF16) unless the model loader converted them (--dtype).
 */
#ifndef LOOM_BACKEND_H
#define LOOM_BACKEND_H

#include "core/dtype.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A 2-D row-major matrix view: element (r, c) is at data + (r * stride + c) * dtype size.
 * A vector is rows = 1. */
struct loom_tensor {
    void *data;
    enum loom_dtype dtype;
    int64_t rows, cols;
    int64_t stride; /* elements between row starts, >= cols */
};

static inline struct loom_tensor loom_tensor_2d(void *data, enum loom_dtype t, int64_t rows, int64_t cols)
{
    struct loom_tensor x = {data, t, rows, cols, cols};
    return x;
}

/* Rows [r0, r0 + n) of x. */
static inline struct loom_tensor loom_tensor_rows(struct loom_tensor x, int64_t r0, int64_t n)
{
    x.data = (char *)x.data + (size_t)(r0 * x.stride) * loom_dtype_size(x.dtype);
    x.rows = n;
    return x;
}

/* Columns [c0, c0 + n) of x (a strided view). */
static inline struct loom_tensor loom_tensor_cols(struct loom_tensor x, int64_t c0, int64_t n)
{
    x.data = (char *)x.data + (size_t)c0 * loom_dtype_size(x.dtype);
    x.cols = n;
    return x;
}

/* The same contiguous memory seen as rows x cols (x must be contiguous: stride == cols). */
static inline struct loom_tensor loom_tensor_reshape(struct loom_tensor x, int64_t rows, int64_t cols)
{
    x.rows = rows;
    x.cols = cols;
    x.stride = cols;
    return x;
}

/*
 * The attention metadata of one step (backend memory unless marked host). The step holds n_seqs
 * sequences; sequence s has q_len = query_start[s+1] - query_start[s] new tokens at the end of a
 * context of seq_lens[s] tokens, so its query j sits at position seq_lens[s] - q_len + j and attends
 * causally to context positions [max(0, pos - sliding_window + 1), pos] (sliding_window 0: no limit).
 * Context position p of sequence s is KV slot block_tables[s * max_blocks_per_seq + p / block_size]
 * * block_size + p % block_size.
 */
struct loom_attn_meta {
    int n_tokens, n_seqs;
    int block_size, max_blocks_per_seq;
    int max_query_len, max_seq_len;
    const int32_t *positions;    /* [n_tokens] */
    const int32_t *slot_mapping; /* [n_tokens] where this step's K/V go */
    const int32_t *query_start;  /* [n_seqs + 1] */
    const int32_t *seq_lens;     /* [n_seqs] */
    const int32_t *block_tables; /* [n_seqs * max_blocks_per_seq] */
    const int32_t *h_query_start, *h_seq_lens; /* host copies of the same, for launch decisions */
};

/*
 * The experts of one MoE layer (moe_experts): expert e is down_e @ (silu(gate_e @ v) * (up_e @ v)).
 * gate, up, down: host arrays [n_experts] of backend tensors [MI, H], [MI, H], [H, MI], every expert
 * of one dtype and one stride. table: backend memory [3 * n_experts], the data pointers gate[0..E),
 * up[0..E), down[0..E) (so a device can reach every expert without the host), built once at load.
 */
struct loom_moe_experts {
    int n_experts;
    const struct loom_tensor *gate, *up, *down;
    void *const *table;
};

/*
 * Sampling on the backend (the optional op `sample`): one logits row -> one token by the rules of
 * engine/sampler.h, steps 2-10, so that only token ids leave the device. The host prepares each row:
 * its sparse token edits (edits[edit0 ..], in this order: n_mask tokens set to -inf (min_tokens),
 * n_bias additions (logit_bias, applied one after another), n_rep tokens of the repetition penalty
 * (distinct; value = the penalty), n_sub distinct tokens whose value is subtracted (frequency * count
 * + presence)) and its uniform draw u in [0, 1).
 */
struct loom_sample_row {
    float temperature, top_p, min_p;
    int32_t top_k;  /* 0: off */
    double u;       /* the draw (engine/sampler.h's counter-based RNG) */
    int32_t edit0, n_mask, n_bias, n_rep, n_sub;
    int32_t skip;   /* 1: leave this row alone (its token comes back as -1) */
    int32_t logprobs; /* -1: none; k in [0, LOOM_SAMPLE_MAX_LOGPROBS]: the sampled token's and the top k's raw
                       * logprobs (log_softmax of the row as the model wrote it, before any edit) */
};

#define LOOM_SAMPLE_MAX_LOGPROBS 20

/* One logprob of a sampled row: lps[r * (1 + LOOM_SAMPLE_MAX_LOGPROBS) + 0] is the sampled token's,
 * + 1 .. + k the top k (logprob descending, lower id first on ties). */
struct loom_sample_logprob {
    int32_t token;
    float logprob;
};

struct loom_logit_edit {
    int32_t token;
    float value;
};

/* A product with its neighbours fused in (the optional op matmul_fused): out = f(x) @ w^T (+ bias), where
 * f(x) = rmsnorm(x) * norm (eps) when norm is non-NULL (the sublayer's pre-norm, computed as rmsnorm
 * would, rounded to x's dtype), else x. With accumulate, out += that product, the product rounded to
 * out's dtype first (as matmul into a temporary and then the residual add would). With silu_pairs, w
 * has 2m rows, gate rows then up rows, and out (m columns) = silu(gate product) * (up product), each
 * product rounded to out's dtype first (as matmul then silu_mul would). */
struct loom_matmul_fused {
    struct loom_tensor out, x, w;
    const struct loom_tensor *bias;
    const struct loom_tensor *norm;
    float eps;
    bool accumulate;
    bool silu_pairs;
};

struct loom_backend;

struct loom_backend_ops {
    void (*destroy)(struct loom_backend *be);

    /* ---- memory ---- */
    void *(*alloc)(struct loom_backend *be, size_t bytes); /* aborts if the device is out of memory */
    void (*free)(struct loom_backend *be, void *ptr);
    /* Weights from host memory that stays valid (mmap): the CPU may return src itself. */
    void *(*upload_weights)(struct loom_backend *be, const void *src, size_t bytes);
    void (*upload)(struct loom_backend *be, void *dst, const void *src, size_t bytes);   /* host -> be */
    void (*download)(struct loom_backend *be, void *dst, const void *src, size_t bytes); /* be -> host, waits */
    void (*synchronize)(struct loom_backend *be);
    void (*memory_info)(struct loom_backend *be, size_t *free_bytes, size_t *total_bytes);

    /* ---- kernels ---- */
    /* out[i, :] = table[ids[i], :]; ids: int32 [out.rows] in backend memory */
    void (*embedding)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor table,
                      const int32_t *ids);
    /* out = x / sqrt(mean(x^2) + eps) * weight, per row; out may alias x */
    void (*rmsnorm)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                    struct loom_tensor weight, float eps);
    /* residual += x; out = rmsnorm(residual) * weight (the pre-norm of the next sublayer) */
    void (*add_rmsnorm)(struct loom_backend *be, struct loom_tensor residual, struct loom_tensor x,
                        struct loom_tensor out, struct loom_tensor weight, float eps);
    /* out[n, m] = x[n, k] @ w[m, k]^T (+ bias[m]); out may be F32 when x is act_dtype */
    void (*matmul)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                   struct loom_tensor w, const struct loom_tensor *bias);
    /* Rotary embedding in place, neox style (rotate halves), x: [n, n_heads * head_dim];
     * inv_freq: F32 [head_dim / 2] (scaling already applied); positions: int32 [n] */
    void (*rope)(struct loom_backend *be, struct loom_tensor x, const int32_t *positions, int n_heads,
                 int head_dim, struct loom_tensor inv_freq);
    /* k_cache/v_cache: [num_slots, n_kv_heads * head_dim]; row slot_mapping[i] = k[i] / v[i] */
    void (*kv_store)(struct loom_backend *be, struct loom_tensor k_cache, struct loom_tensor v_cache,
                     struct loom_tensor k, struct loom_tensor v, const int32_t *slot_mapping);
    /* The attention prologue in one op. qkv: [n, (n_heads + 2 * n_kv_heads) * head_dim], each row q | k | v
     * (one fused matmul's output, or three written into its column ranges). Per row i, as rmsnorm +
     * rope + kv_store would: when q_norm and k_norm are non-NULL (Qwen3; [1, head_dim] each, both or
     * neither), every q and k head is RMS-normed (eps); q and k are rotated as rope() does (positions[i],
     * inv_freq); then k and v go to row slot_mapping[i] of k_cache / v_cache (negative: skipped). The q
     * columns of qkv are rotated in place, so {qkv.data, n, n_heads * head_dim, stride qkv.stride} is
     * attention's q afterwards; what the k columns hold afterwards is unspecified. */
    void (*qkv_rope_store)(struct loom_backend *be, struct loom_tensor qkv, const int32_t *positions,
                           const int32_t *slot_mapping, int n_heads, int n_kv_heads, int head_dim,
                           struct loom_tensor inv_freq, const struct loom_tensor *q_norm,
                           const struct loom_tensor *k_norm, float eps, struct loom_tensor k_cache,
                           struct loom_tensor v_cache);
    /* Paged causal attention (GQA: head h reads kv head h / (n_heads / n_kv_heads)).
     * out, q: [n_tokens, n_heads * head_dim] */
    void (*attention)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor q,
                      struct loom_tensor k_cache, struct loom_tensor v_cache, const struct loom_attn_meta *meta,
                      int n_heads, int n_kv_heads, int head_dim, float scale, int sliding_window);
    /* out = silu(gate) * up, elementwise */
    void (*silu_mul)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor gate,
                     struct loom_tensor up);
    /* x += y */
    void (*add)(struct loom_backend *be, struct loom_tensor x, struct loom_tensor y);
    /* out[i, :] = x[idx[i], :]; idx: int32 [out.rows] */
    void (*gather_rows)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                        const int32_t *idx);
    /* out[idx[i], :] += weight[i] * x[i, :]; idx distinct within one call; weight: F32 [x.rows] */
    void (*scatter_add_rows)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor x,
                             const int32_t *idx, const float *weight);
    /* MoE routing per row of logits [n, n_experts]: softmax, top-k, renormalize if asked.
     * ids: int32 [n * k], weights: F32 [n * k], both in backend memory. */
    void (*moe_route)(struct loom_backend *be, struct loom_tensor logits, int k, bool renormalize,
                      int32_t *ids, float *weights);
    /* dst = src converted to dst.dtype (same shape) */
    void (*convert)(struct loom_backend *be, struct loom_tensor dst, struct loom_tensor src);
    /* The expert MLPs of a MoE layer over n = h.rows rows: for every row t and j < k, in that order,
     * x[t, :] += weights[t * k + j] * expert_{ids[t * k + j]}(h[t, :]). ids / weights: int32 / F32
     * [n * k] in backend memory as moe_route leaves them (the k ids of a row distinct). ws: scratch in
     * backend memory of moe_workspace_bytes(be, max_rows >= n, ...) bytes. Nothing waits for the host:
     * the rows are grouped by expert where the ids are. */
    void (*moe_experts)(struct loom_backend *be, struct loom_tensor x, struct loom_tensor h, const int32_t *ids,
                        const float *weights, int k, const struct loom_moe_experts *ex, void *ws);
    /* Bytes of moe_experts' scratch for up to max_rows rows (H = hidden, MI = the experts' width). */
    size_t (*moe_workspace_bytes)(struct loom_backend *be, int max_rows, int k, int n_experts, int hidden,
                                  int inter);

    /* ---- optional (NULL: the caller does it another way) ---- */
    /* tokens[r] = the token drawn from row r of logits (F32 [n, vocab], rewritten in place) as
     * rows[r] says, and its logprobs into lps (host, [n * (1 + LOOM_SAMPLE_MAX_LOGPROBS)]) where
     * rows[r].logprobs >= 0 (lps may be NULL when no row asks). rows, edits, tokens: host arrays.
     * Waits for the results. */
    void (*sample)(struct loom_backend *be, struct loom_tensor logits, const struct loom_sample_row *rows, int n,
                   const struct loom_logit_edit *edits, int n_edits, int32_t *tokens,
                   struct loom_sample_logprob *lps);
    /* Sets aside sample's device scratch for up to max_rows rows of vocab logits (logprobs included),
     * so that steps allocate nothing; called once at model load, before the KV pool takes the rest. */
    void (*sample_reserve)(struct loom_backend *be, int max_rows, int vocab);
    /* The product f describes (struct loom_matmul_fused), in one op. Returns false, having done
     * nothing, where the backend has no fused form for these shapes: the caller then runs the
     * separate ops. */
    bool (*matmul_fused)(struct loom_backend *be, const struct loom_matmul_fused *f);
    /* A decode step's qkv_rope_store and attention in one op (every sequence has exactly one new
     * token: meta->max_query_len == 1, n_tokens == n_seqs). Arguments as those two ops take them;
     * q is qkv's first n_heads * head_dim columns. Afterwards the caches hold what qkv_rope_store
     * would have written and out what attention would have; qkv's contents are unspecified.
     * Returns false, having done nothing, where it does not apply. */
    bool (*decode_attention)(struct loom_backend *be, struct loom_tensor out, struct loom_tensor qkv,
                             const int32_t *positions, const int32_t *slot_mapping, int n_heads, int n_kv_heads,
                             int head_dim, struct loom_tensor inv_freq, const struct loom_tensor *q_norm,
                             const struct loom_tensor *k_norm, float eps, struct loom_tensor k_cache,
                             struct loom_tensor v_cache, const struct loom_attn_meta *meta, float scale,
                             int sliding_window);
};

struct loom_backend {
    const struct loom_backend_ops *ops;
    const char *name;         /* "cpu", "cuda" */
    enum loom_dtype act_dtype;
    int threads;
    void *ctx;                /* the backend's own state */
    /* upload_weights copies into backend memory (CUDA): the model then concatenates q|k|v and gate|up
     * weights at load for free. False on the CPU, which reads the mmapped file in place. */
    bool copies_weights;
    /* Issuing the same work again is cheaper than new work (CUDA replays recorded graphs): the model
     * pads decode steps to a few batch sizes so that steps of nearby sizes issue identical work. */
    bool replays_work;
    /* ops->alloc calls so far: once a model is loaded and its KV pool allocated, steps add none
     * (tests check it) */
    long long n_allocs;
};

struct loom_backend_options {
    const char *device;       /* "cpu" or "cuda" */
    enum loom_dtype act_dtype; /* F32 on the CPU; BF16/F16/F32 on CUDA */
    int threads;              /* CPU: 0 = all cores */
    int device_index;
};

/* Creates the backend named by opts->device; LOOM_EUNSUPPORTED if not built in or no device. */
int loom_backend_create(const struct loom_backend_options *opts, struct loom_backend **out);
void loom_backend_destroy(struct loom_backend *be);

/* Each backend's constructor (backend.c dispatches). */
int loom_backend_cpu_create(const struct loom_backend_options *opts, struct loom_backend **out);
int loom_backend_cuda_create(const struct loom_backend_options *opts, struct loom_backend **out);
bool loom_backend_cuda_available(void);

#endif
