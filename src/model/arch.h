/*
 * arch.h: which weight tensors each architecture has, with their hub names and shapes. The single
 * source of truth for both the model loader (which checks and binds them) and `loom make-model`
 * (which writes them with random values).
 */
#ifndef LOOM_MODEL_ARCH_H
#define LOOM_MODEL_ARCH_H

#include "format/hf_config.h"
#include <stdbool.h>
#include <stdint.h>

enum loom_weight_kind {
    LOOM_W_EMBED = 0,   /* model.embed_tokens.weight [vocab, hidden] */
    LOOM_W_ATTN_NORM,   /* layers.N.input_layernorm.weight [hidden] */
    LOOM_W_Q, LOOM_W_K, LOOM_W_V, LOOM_W_O, /* self_attn.{q,k,v,o}_proj.weight */
    LOOM_W_Q_BIAS, LOOM_W_K_BIAS, LOOM_W_V_BIAS, LOOM_W_O_BIAS,
    LOOM_W_Q_NORM, LOOM_W_K_NORM, /* self_attn.{q,k}_norm.weight [head_dim] (Qwen3) */
    LOOM_W_MLP_NORM,    /* layers.N.post_attention_layernorm.weight [hidden] */
    LOOM_W_GATE, LOOM_W_UP, LOOM_W_DOWN, /* mlp.{gate,up,down}_proj.weight (dense layers) */
    LOOM_W_ROUTER,      /* block_sparse_moe.gate.weight / mlp.gate.weight [n_experts, hidden] */
    LOOM_W_EXPERT_GATE, LOOM_W_EXPERT_UP, LOOM_W_EXPERT_DOWN, /* Mixtral w1 / w3 / w2; Qwen3-MoE gate/up/down */
    LOOM_W_FINAL_NORM,  /* model.norm.weight [hidden] */
    LOOM_W_LM_HEAD,     /* lm_head.weight [vocab, hidden]; absent when tied */
    LOOM_W_KIND_COUNT
};

struct loom_weight_spec {
    char name[128];
    enum loom_weight_kind kind;
    int layer;          /* -1 for global tensors */
    int expert;         /* -1 unless an expert's tensor */
    int ndim;           /* 1 or 2 */
    int64_t shape[2];
    bool is_norm;       /* RMSNorm weight: make-model writes ones */
};

/* The weights cfg's architecture needs, in a stable order (caller frees *specs). */
int loom_arch_weights(const struct loom_model_config *cfg, struct loom_weight_spec **specs, int *n);
/* True if layer `layer` is a sparse (MoE) layer under cfg. */
bool loom_arch_layer_is_moe(const struct loom_model_config *cfg, int layer);

#endif
