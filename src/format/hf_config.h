/*
 * hf_config.h: a model's config.json and generation_config.json, as Hugging Face writes them.
 *
 * Both rope forms are read: classic `rope_theta` + `rope_scaling`, and transformers-5
 * `rope_parameters`. An unsupported architecture or a missing required field is LOOM_EINVAL /
 * LOOM_EUNSUPPORTED with a one-line message naming it.
 */
#ifndef LOOM_FORMAT_HF_CONFIG_H
#define LOOM_FORMAT_HF_CONFIG_H

#include "core/dtype.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum loom_arch {
    LOOM_ARCH_LLAMA = 0, /* LlamaForCausalLM */
    LOOM_ARCH_MISTRAL,   /* MistralForCausalLM */
    LOOM_ARCH_QWEN2,     /* Qwen2ForCausalLM: q/k/v biases */
    LOOM_ARCH_QWEN3,     /* Qwen3ForCausalLM: per-head q_norm/k_norm */
    LOOM_ARCH_MIXTRAL,   /* MixtralForCausalLM: block_sparse_moe */
    LOOM_ARCH_QWEN3_MOE, /* Qwen3MoeForCausalLM: mlp.experts, mlp.gate */
    LOOM_ARCH_COUNT
};
const char *loom_arch_name(enum loom_arch a); /* "LlamaForCausalLM", ... */

enum loom_rope_type { LOOM_ROPE_DEFAULT = 0, LOOM_ROPE_LLAMA3, LOOM_ROPE_LINEAR };

#define LOOM_MAX_EOS 8

struct loom_model_config {
    enum loom_arch arch;
    int hidden_size;             /* d_model */
    int intermediate_size;       /* dense MLP width */
    int num_layers;
    int num_heads;
    int num_kv_heads;
    int head_dim;                /* explicit `head_dim`, else hidden_size / num_heads */
    int vocab_size;
    int max_position_embeddings;
    float rms_norm_eps;
    bool tie_word_embeddings;
    bool attention_bias;         /* q/k/v (and o where o_proj has a bias tensor) biases; Qwen2: true */
    bool mlp_bias;
    bool qk_norm;                /* Qwen3 / Qwen3-MoE */
    int sliding_window;          /* 0 = none (also when use_sliding_window is false) */
    int max_window_layers;       /* Qwen2: layers >= this use the sliding window (when enabled) */
    /* rope */
    double rope_theta;
    enum loom_rope_type rope_type;
    double rope_factor;          /* llama3 / linear scaling factor */
    double rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_pos;
    /* MoE (num_experts == 0: dense) */
    int num_experts;             /* num_local_experts (Mixtral) / num_experts (Qwen3-MoE) */
    int num_experts_per_tok;
    int moe_intermediate_size;   /* Qwen3-MoE expert width; Mixtral uses intermediate_size */
    bool norm_topk_prob;         /* renormalize the top-k routing weights (Mixtral: always) */
    int decoder_sparse_step;     /* Qwen3-MoE: every n-th layer is sparse (default 1) */
    int mlp_only_layers[64];     /* Qwen3-MoE: layers that stay dense */
    int n_mlp_only_layers;
    /* tokens */
    int bos_token_id;            /* -1 if none */
    int eos_token_ids[LOOM_MAX_EOS];
    int n_eos;
    enum loom_dtype torch_dtype; /* stored dtype named by the config (F32 if absent) */
};

struct loom_generation_config {
    bool has_temperature, has_top_p, has_top_k, has_repetition_penalty;
    float temperature, top_p, repetition_penalty;
    int top_k;
    int eos_token_ids[LOOM_MAX_EOS]; /* overrides the config's when n_eos > 0 */
    int n_eos;
    int bos_token_id;                /* -1 if absent */
    int max_new_tokens;              /* 0 if absent */
};

/* Reads dir/config.json. */
int loom_hf_config_load(const char *dir, struct loom_model_config *cfg);
/* Parses config.json text (untrusted; exposed for tests and the fuzzer). */
int loom_hf_config_parse(const char *json, size_t len, struct loom_model_config *cfg);
/* Reads dir/generation_config.json; a missing file leaves defaults and returns 0. */
int loom_generation_config_load(const char *dir, struct loom_generation_config *gen);

#endif
