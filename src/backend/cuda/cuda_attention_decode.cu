/*
 * cuda_attention_decode.cu: a decode step's rope, KV write and paged attention in one kernel.
 * (Not built yet: returns false, so the caller runs qkv_rope_store and attention.)
 */
#include "backend/cuda/cuda_common.h"

bool cuda_decode_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor qkv,
                           const int32_t *positions, const int32_t *slot_mapping, int n_heads, int n_kv_heads,
                           int head_dim, struct loom_tensor inv_freq, const struct loom_tensor *q_norm,
                           const struct loom_tensor *k_norm, float eps, struct loom_tensor k_cache,
                           struct loom_tensor v_cache, const struct loom_attn_meta *meta, float scale,
                           int sliding_window)
{
    (void)be, (void)out, (void)qkv, (void)positions, (void)slot_mapping, (void)n_heads, (void)n_kv_heads;
    (void)head_dim, (void)inv_freq, (void)q_norm, (void)k_norm, (void)eps, (void)k_cache, (void)v_cache;
    (void)meta, (void)scale, (void)sliding_window;
    return false;
}
