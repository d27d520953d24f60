/*
 * arch.c: the weight tensors of each architecture, with their Hugging Face hub names and shapes.
 *
 * Shapes are those of nn.Linear weights, [out_features, in_features]. Per layer, in this order:
 * input_layernorm, q/k/v/o projections (with their biases where the architecture has them),
 * q_norm/k_norm (Qwen3), post_attention_layernorm, then the MLP: dense gate/up/down, or a router and
 * per-expert gate/up/down (Mixtral names them w1/w3/w2 under block_sparse_moe). Global tensors are
 * model.embed_tokens.weight first and model.norm.weight, lm_head.weight (unless tied) last.
 *
 * It only describes the tensors; the loader (model/) binds and checks them, `loom make-model` writes them.
 */
#include "model/arch.h"
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool loom_arch_layer_is_moe(const struct loom_model_config *cfg, int layer)
{
    if (cfg->num_experts <= 0) return false;
    if (cfg->arch == LOOM_ARCH_MIXTRAL) return true;
    if (cfg->arch != LOOM_ARCH_QWEN3_MOE) return false;
    for (int k = 0; k < cfg->n_mlp_only_layers; k++)
        if (cfg->mlp_only_layers[k] == layer) return false;
    int step = cfg->decoder_sparse_step > 0 ? cfg->decoder_sparse_step : 1;
    return (layer + 1) % step == 0;
}

struct spec_list {
    struct loom_weight_spec *v;
    int n, cap;
};

static struct loom_weight_spec *add(struct spec_list *l, enum loom_weight_kind kind, int layer, int expert,
                                    int64_t d0, int64_t d1, const char *fmt, ...) LOOM_PRINTF(7, 8);

static struct loom_weight_spec *add(struct spec_list *l, enum loom_weight_kind kind, int layer, int expert,
                                    int64_t d0, int64_t d1, const char *fmt, ...)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->v = loom_realloc(l->v, sizeof(*l->v) * (size_t)l->cap);
    }
    struct loom_weight_spec *s = &l->v[l->n++];
    memset(s, 0, sizeof(*s));
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(s->name, sizeof(s->name), fmt, ap);
    va_end(ap);
    LOOM_ASSERT(len > 0 && len < (int)sizeof(s->name));
    s->kind = kind;
    s->layer = layer;
    s->expert = expert;
    s->ndim = d1 > 0 ? 2 : 1;
    s->shape[0] = d0;
    s->shape[1] = d1 > 0 ? d1 : 0;
    s->is_norm = kind == LOOM_W_ATTN_NORM || kind == LOOM_W_MLP_NORM || kind == LOOM_W_FINAL_NORM ||
                 kind == LOOM_W_Q_NORM || kind == LOOM_W_K_NORM;
    return s;
}

int loom_arch_weights(const struct loom_model_config *cfg, struct loom_weight_spec **specs, int *n)
{
    *specs = NULL;
    *n = 0;
    if ((unsigned)cfg->arch >= LOOM_ARCH_COUNT)
        return loom_fail(LOOM_EUNSUPPORTED, "unknown architecture %d", cfg->arch);
    if (cfg->mlp_bias)
        return loom_fail(LOOM_EUNSUPPORTED,
                         "%s with mlp_bias=true is not supported (no MLP bias tensors in loom)",
                         loom_arch_name(cfg->arch));
    if (cfg->hidden_size <= 0 || cfg->num_layers <= 0 || cfg->num_heads <= 0 || cfg->num_kv_heads <= 0 ||
        cfg->head_dim <= 0 || cfg->vocab_size <= 0)
        return loom_fail(LOOM_EINVAL,
                         "model config has a non-positive size (hidden %d, layers %d, heads %d/%d, "
                         "head_dim %d, vocab %d)",
                         cfg->hidden_size, cfg->num_layers, cfg->num_heads, cfg->num_kv_heads, cfg->head_dim,
                         cfg->vocab_size);
    const bool is_moe_arch = cfg->arch == LOOM_ARCH_MIXTRAL || cfg->arch == LOOM_ARCH_QWEN3_MOE;
    if (is_moe_arch && (cfg->num_experts <= 0 || cfg->moe_intermediate_size <= 0))
        return loom_fail(LOOM_EINVAL, "%s needs num_experts and an expert width > 0",
                         loom_arch_name(cfg->arch));

    const int64_t H = cfg->hidden_size, D = cfg->head_dim, Q = (int64_t)cfg->num_heads * D,
                  KV = (int64_t)cfg->num_kv_heads * D, I = cfg->intermediate_size,
                  MI = cfg->moe_intermediate_size, V = cfg->vocab_size, E = cfg->num_experts;
    /* biases: Qwen2 has them on q/k/v only; Llama/Qwen3 with attention_bias on all four projections */
    const bool qkv_bias = cfg->attention_bias;
    const bool o_bias = cfg->attention_bias && cfg->arch != LOOM_ARCH_QWEN2;

    struct spec_list l = {0};
    add(&l, LOOM_W_EMBED, -1, -1, V, H, "model.embed_tokens.weight");
    for (int i = 0; i < cfg->num_layers; i++) {
        add(&l, LOOM_W_ATTN_NORM, i, -1, H, 0, "model.layers.%d.input_layernorm.weight", i);
        add(&l, LOOM_W_Q, i, -1, Q, H, "model.layers.%d.self_attn.q_proj.weight", i);
        add(&l, LOOM_W_K, i, -1, KV, H, "model.layers.%d.self_attn.k_proj.weight", i);
        add(&l, LOOM_W_V, i, -1, KV, H, "model.layers.%d.self_attn.v_proj.weight", i);
        add(&l, LOOM_W_O, i, -1, H, Q, "model.layers.%d.self_attn.o_proj.weight", i);
        if (qkv_bias) {
            add(&l, LOOM_W_Q_BIAS, i, -1, Q, 0, "model.layers.%d.self_attn.q_proj.bias", i);
            add(&l, LOOM_W_K_BIAS, i, -1, KV, 0, "model.layers.%d.self_attn.k_proj.bias", i);
            add(&l, LOOM_W_V_BIAS, i, -1, KV, 0, "model.layers.%d.self_attn.v_proj.bias", i);
        }
        if (o_bias) add(&l, LOOM_W_O_BIAS, i, -1, H, 0, "model.layers.%d.self_attn.o_proj.bias", i);
        if (cfg->qk_norm) {
            add(&l, LOOM_W_Q_NORM, i, -1, D, 0, "model.layers.%d.self_attn.q_norm.weight", i);
            add(&l, LOOM_W_K_NORM, i, -1, D, 0, "model.layers.%d.self_attn.k_norm.weight", i);
        }
        add(&l, LOOM_W_MLP_NORM, i, -1, H, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        if (loom_arch_layer_is_moe(cfg, i)) {
            if (cfg->arch == LOOM_ARCH_MIXTRAL) {
                add(&l, LOOM_W_ROUTER, i, -1, E, H, "model.layers.%d.block_sparse_moe.gate.weight", i);
                for (int e = 0; e < E; e++) {
                    add(&l, LOOM_W_EXPERT_GATE, i, e, MI, H,
                        "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", i, e);
                    add(&l, LOOM_W_EXPERT_UP, i, e, MI, H,
                        "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", i, e);
                    add(&l, LOOM_W_EXPERT_DOWN, i, e, H, MI,
                        "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", i, e);
                }
            } else {
                add(&l, LOOM_W_ROUTER, i, -1, E, H, "model.layers.%d.mlp.gate.weight", i);
                for (int e = 0; e < E; e++) {
                    add(&l, LOOM_W_EXPERT_GATE, i, e, MI, H,
                        "model.layers.%d.mlp.experts.%d.gate_proj.weight", i, e);
                    add(&l, LOOM_W_EXPERT_UP, i, e, MI, H, "model.layers.%d.mlp.experts.%d.up_proj.weight", i,
                        e);
                    add(&l, LOOM_W_EXPERT_DOWN, i, e, H, MI,
                        "model.layers.%d.mlp.experts.%d.down_proj.weight", i, e);
                }
            }
        } else {
            if (I <= 0) {
                free(l.v);
                return loom_fail(LOOM_EINVAL, "layer %d is dense but intermediate_size is not set", i);
            }
            add(&l, LOOM_W_GATE, i, -1, I, H, "model.layers.%d.mlp.gate_proj.weight", i);
            add(&l, LOOM_W_UP, i, -1, I, H, "model.layers.%d.mlp.up_proj.weight", i);
            add(&l, LOOM_W_DOWN, i, -1, H, I, "model.layers.%d.mlp.down_proj.weight", i);
        }
    }
    add(&l, LOOM_W_FINAL_NORM, -1, -1, H, 0, "model.norm.weight");
    if (!cfg->tie_word_embeddings) add(&l, LOOM_W_LM_HEAD, -1, -1, V, H, "lm_head.weight");
    *specs = l.v;
    *n = l.n;
    return 0;
}
