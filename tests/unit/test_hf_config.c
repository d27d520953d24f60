/*
 * test_hf_config.c: config.json / generation_config.json parsing. Every config in ../shared/models and
 * ../shared/configs is checked against the facts its file states; inline configs cover the
 * transformers-5 rope_parameters form, Qwen3-MoE, sliding windows, defaults, and the errors (each must
 * name the field or architecture at fault).
 */
#include "core/error.h"
#include "core/util.h"
#include "format/hf_config.h"
#include "model/arch.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int load_shared_config(const char *rel, struct loom_model_config *c)
{
    char *text;
    size_t len;
    int s = loom_read_file(test_shared(rel), &text, &len);
    CHECK_MSG(s == 0, "%s: %s", rel, loom_last_error());
    if (s) return s;
    s = loom_hf_config_parse(text, len, c);
    CHECK_MSG(s == 0, "%s: %s", rel, loom_last_error());
    free(text);
    return s;
}

static int parse(const char *json, struct loom_model_config *c)
{
    loom_clear_error();
    return loom_hf_config_parse(json, strlen(json), c);
}

/* parse must fail with `status` and a message containing `needle` */
static void expect_error(const char *json, int status, const char *needle)
{
    struct loom_model_config c;
    int s = parse(json, &c);
    CHECK_MSG(s == status, "status %d, expected %d for %.80s (%s)", s, status, json, loom_last_error());
    CHECK_MSG(strstr(loom_last_error(), needle) != NULL, "message lacks '%s': %s", needle, loom_last_error());
    if (getenv("LOOM_TEST_VERBOSE")) printf("%s\n", loom_last_error());
}

static void test_shared_configs(void)
{
    struct loom_model_config c;

    if (load_shared_config("configs/qwen2-0.5b.json", &c) == 0) {
        CHECK_EQ_INT(c.arch, LOOM_ARCH_QWEN2);
        CHECK_EQ_INT(c.hidden_size, 896);
        CHECK_EQ_INT(c.num_layers, 24);
        CHECK_EQ_INT(c.num_heads, 14);
        CHECK_EQ_INT(c.num_kv_heads, 2);
        CHECK_EQ_INT(c.head_dim, 64);
        CHECK_EQ_INT(c.intermediate_size, 4864);
        CHECK_EQ_INT(c.vocab_size, 151936);
        CHECK_EQ_INT(c.max_position_embeddings, 32768);
        CHECK(c.tie_word_embeddings);
        CHECK(c.attention_bias); /* Qwen2: q/k/v biases always */
        CHECK(!c.mlp_bias && !c.qk_norm);
        CHECK_EQ_INT(c.sliding_window, 0); /* use_sliding_window false */
        CHECK_EQ_INT(c.max_window_layers, 24);
        CHECK_NEAR(c.rope_theta, 1e6, 0);
        CHECK_EQ_INT(c.rope_type, LOOM_ROPE_DEFAULT);
        CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
        CHECK_EQ_INT(c.bos_token_id, 151643);
        CHECK_EQ_INT(c.n_eos, 1);
        CHECK_EQ_INT(c.eos_token_ids[0], 151645);
        CHECK_EQ_INT(c.torch_dtype, LOOM_DTYPE_BF16);
        CHECK_EQ_INT(c.num_experts, 0);
    }

    if (load_shared_config("configs/qwen3-0.6b.json", &c) == 0) {
        CHECK_EQ_INT(c.arch, LOOM_ARCH_QWEN3);
        CHECK_EQ_INT(c.hidden_size, 1024);
        CHECK_EQ_INT(c.num_layers, 28);
        CHECK_EQ_INT(c.num_heads, 16);
        CHECK_EQ_INT(c.num_kv_heads, 8);
        CHECK_EQ_INT(c.head_dim, 128); /* explicit, not 1024 / 16 */
        CHECK_EQ_INT(c.intermediate_size, 3072);
        CHECK_EQ_INT(c.max_position_embeddings, 40960);
        CHECK(c.qk_norm);
        CHECK(!c.attention_bias);
        CHECK(c.tie_word_embeddings);
        CHECK_NEAR(c.rope_theta, 1e6, 0); /* written as the integer 1000000 */
        CHECK_EQ_INT(c.sliding_window, 0);
        CHECK_EQ_INT(c.eos_token_ids[0], 151645);
    }

    if (load_shared_config("configs/llama-3.1-8b.json", &c) == 0) {
        CHECK_EQ_INT(c.arch, LOOM_ARCH_LLAMA);
        CHECK_EQ_INT(c.hidden_size, 4096);
        CHECK_EQ_INT(c.num_layers, 32);
        CHECK_EQ_INT(c.num_heads, 32);
        CHECK_EQ_INT(c.num_kv_heads, 8);
        CHECK_EQ_INT(c.head_dim, 128);
        CHECK_EQ_INT(c.intermediate_size, 14336);
        CHECK_EQ_INT(c.vocab_size, 128256);
        CHECK_EQ_INT(c.max_position_embeddings, 131072);
        CHECK(!c.tie_word_embeddings && !c.attention_bias && !c.mlp_bias && !c.qk_norm);
        CHECK_NEAR(c.rms_norm_eps, 1e-5, 1e-12);
        CHECK_NEAR(c.rope_theta, 500000.0, 0);
        CHECK_EQ_INT(c.rope_type, LOOM_ROPE_LLAMA3);
        CHECK_NEAR(c.rope_factor, 8.0, 0);
        CHECK_NEAR(c.rope_low_freq_factor, 1.0, 0);
        CHECK_NEAR(c.rope_high_freq_factor, 4.0, 0);
        CHECK_EQ_INT(c.rope_original_max_pos, 8192);
        CHECK_EQ_INT(c.bos_token_id, 128000);
        CHECK_EQ_INT(c.n_eos, 3);
        CHECK(c.eos_token_ids[0] == 128001 && c.eos_token_ids[1] == 128008 && c.eos_token_ids[2] == 128009);
        CHECK_EQ_INT(c.torch_dtype, LOOM_DTYPE_BF16);
    }

    if (load_shared_config("configs/mixtral-8x7b.json", &c) == 0) {
        CHECK_EQ_INT(c.arch, LOOM_ARCH_MIXTRAL);
        CHECK_EQ_INT(c.num_experts, 8);
        CHECK_EQ_INT(c.num_experts_per_tok, 2);
        CHECK_EQ_INT(c.moe_intermediate_size, 14336);
        CHECK(c.norm_topk_prob);
        CHECK_EQ_INT(c.sliding_window, 0); /* null */
        CHECK_NEAR(c.rope_theta, 1e6, 0);
        CHECK_EQ_INT(c.vocab_size, 32000);
        CHECK_EQ_INT(c.max_position_embeddings, 32768);
        CHECK(!c.attention_bias);
        CHECK(loom_arch_layer_is_moe(&c, 0) && loom_arch_layer_is_moe(&c, 31));
        struct loom_weight_spec *w;
        int n;
        CHECK(loom_arch_weights(&c, &w, &n) == 0);
        CHECK_EQ_INT(n, 32 * (6 + 1 + 8 * 3) + 3);
        free(w);
    }

    /* the model folders (loaded from the folder, as the engine does) */
    struct {
        const char *dir;
        enum loom_arch arch;
        int hidden, layers, heads, kv, head_dim, inter, vocab;
        bool tied;
        enum loom_dtype dtype;
    } m[] = {
        {"models/llama-tiny", LOOM_ARCH_LLAMA, 128, 2, 4, 2, 32, 320, 512, false, LOOM_DTYPE_BF16},
        {"models/llama31-tiny-sharded", LOOM_ARCH_LLAMA, 128, 3, 4, 2, 32, 320, 512, false, LOOM_DTYPE_BF16},
        {"models/mistral-tiny-f16", LOOM_ARCH_MISTRAL, 128, 2, 4, 1, 32, 384, 512, false, LOOM_DTYPE_F16},
        {"models/mixtral-tiny", LOOM_ARCH_MIXTRAL, 128, 2, 4, 2, 32, 192, 512, false, LOOM_DTYPE_BF16},
        {"models/qwen2-tiny", LOOM_ARCH_QWEN2, 128, 3, 8, 2, 16, 256, 512, true, LOOM_DTYPE_BF16},
        {"models/qwen2-tiny-151k", LOOM_ARCH_QWEN2, 64, 2, 4, 2, 16, 128, 151936, true, LOOM_DTYPE_BF16},
        {"models/qwen3-tiny", LOOM_ARCH_QWEN3, 128, 2, 8, 4, 32, 256, 512, true, LOOM_DTYPE_BF16},
        {"models/stories260K", LOOM_ARCH_LLAMA, 64, 5, 8, 4, 8, 172, 512, true, LOOM_DTYPE_F32},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++) {
        int s = loom_hf_config_load(test_shared(m[i].dir), &c);
        CHECK_MSG(s == 0, "%s: %s", m[i].dir, loom_last_error());
        if (s) continue;
        CHECK_MSG(c.arch == m[i].arch && c.hidden_size == m[i].hidden && c.num_layers == m[i].layers &&
                      c.num_heads == m[i].heads && c.num_kv_heads == m[i].kv && c.head_dim == m[i].head_dim &&
                      c.intermediate_size == m[i].inter && c.vocab_size == m[i].vocab &&
                      c.tie_word_embeddings == m[i].tied && c.torch_dtype == m[i].dtype,
                  "%s: fields differ from its config.json", m[i].dir);
    }
    CHECK(loom_hf_config_load(test_shared("models/qwen2-tiny"), &c) == 0 && c.attention_bias &&
          c.n_eos == 1 && c.eos_token_ids[0] == 2 && c.bos_token_id == 1 && c.max_window_layers == 21);
    CHECK(loom_hf_config_load(test_shared("models/qwen3-tiny"), &c) == 0 && c.qk_norm && !c.attention_bias);
    CHECK(loom_hf_config_load(test_shared("models/mistral-tiny-f16"), &c) == 0 && c.sliding_window == 0 &&
          c.rope_theta == 1e6 && !c.attention_bias);
    CHECK(loom_hf_config_load(test_shared("models/llama31-tiny-sharded"), &c) == 0 &&
          c.rope_type == LOOM_ROPE_LLAMA3 && c.rope_factor == 8.0 && c.rope_original_max_pos == 8192 &&
          c.rope_theta == 500000.0 && c.max_position_embeddings == 131072);
    CHECK(loom_hf_config_load(test_shared("models/mixtral-tiny"), &c) == 0 && c.num_experts == 4 &&
          c.num_experts_per_tok == 2 && c.moe_intermediate_size == 192 && c.norm_topk_prob);
    CHECK(loom_hf_config_load(test_shared("models/stories260K"), &c) == 0 &&
          fabs(c.rms_norm_eps - 1e-5) < 1e-12 && c.max_position_embeddings == 512);
    CHECK(loom_hf_config_load("/nonexistent-loom-dir", &c) == LOOM_EIO);
    CHECK(strstr(loom_last_error(), "/nonexistent-loom-dir/config.json") != NULL);
}

#define BASE                                                                                                 \
    "\"hidden_size\": 64, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"num_key_value_heads\": "   \
    "2, "                                                                                                    \
    "\"vocab_size\": 300, \"intermediate_size\": 96"

static void test_inline(void)
{
    struct loom_model_config c;

    /* transformers 5: rope_parameters and dtype */
    CHECK(
        parse("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"dtype\": \"bfloat16\", "
              "\"rope_parameters\": {\"rope_type\": \"llama3\", \"rope_theta\": 500000.0, \"factor\": 32.0, "
              "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": "
              "8192}}",
              &c) == 0);
    CHECK_EQ_INT(c.rope_type, LOOM_ROPE_LLAMA3);
    CHECK_NEAR(c.rope_theta, 500000.0, 0);
    CHECK_NEAR(c.rope_factor, 32.0, 0);
    CHECK_EQ_INT(c.rope_original_max_pos, 8192);
    CHECK_EQ_INT(c.torch_dtype, LOOM_DTYPE_BF16);
    CHECK_EQ_INT(c.head_dim, 16);
    CHECK_EQ_INT(c.max_position_embeddings, 2048); /* LlamaConfig default */
    CHECK_EQ_INT(c.bos_token_id, -1);
    CHECK_EQ_INT(c.n_eos, 0);

    CHECK(parse("{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"rope_theta\": 5.0, "
                "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1000000}}",
                &c) == 0);
    CHECK_EQ_INT(c.rope_type, LOOM_ROPE_DEFAULT);
    CHECK_NEAR(c.rope_theta, 1e6, 0); /* rope_parameters wins */
    CHECK(c.qk_norm);
    CHECK_EQ_INT(c.torch_dtype, LOOM_DTYPE_F32); /* absent */

    /* per-layer-type rope_parameters */
    CHECK(parse("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE
                ", \"rope_parameters\": {\"full_attention\": "
                "{\"rope_type\": \"linear\", \"rope_theta\": 20000, \"factor\": 2}}}",
                &c) == 0);
    CHECK(c.rope_type == LOOM_ROPE_LINEAR && c.rope_factor == 2.0 && c.rope_theta == 20000.0);

    /* classic linear scaling written with the old "type" key */
    CHECK(parse("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_theta\": 10000, "
                "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 4.0}}",
                &c) == 0);
    CHECK(c.rope_type == LOOM_ROPE_LINEAR && c.rope_factor == 4.0 && c.rope_theta == 10000.0);
    CHECK(parse("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                ", \"rope_scaling\": {\"rope_type\": \"default\"}}",
                &c) == 0);
    CHECK(c.rope_type == LOOM_ROPE_DEFAULT && c.rope_theta == 10000.0);

    /* head_dim: explicit null derives it; Llama attention_bias/mlp_bias follow the fields */
    CHECK(parse("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                ", \"head_dim\": null, \"attention_bias\": true, "
                "\"mlp_bias\": true, \"tie_word_embeddings\": true, \"eos_token_id\": [7, 8], "
                "\"bos_token_id\": null}",
                &c) == 0);
    CHECK(c.head_dim == 16 && c.attention_bias && c.mlp_bias && c.tie_word_embeddings);
    CHECK(c.n_eos == 2 && c.eos_token_ids[0] == 7 && c.eos_token_ids[1] == 8 && c.bos_token_id == -1);
    struct loom_weight_spec *w;
    int n;
    CHECK(loom_arch_weights(&c, &w, &n) == LOOM_EUNSUPPORTED); /* no mlp bias tensors in loom */
    CHECK(strstr(loom_last_error(), "mlp_bias") != NULL);

    /* Mistral never has attention biases; sliding_window: absent = 4096 (MistralConfig), a value, or null */
    CHECK(parse("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"attention_bias\": true}", &c) ==
          0);
    CHECK(!c.attention_bias && c.sliding_window == 4096 && c.max_position_embeddings == 131072);
    CHECK(parse("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"sliding_window\": 1024}", &c) ==
          0);
    CHECK_EQ_INT(c.sliding_window, 1024);
    CHECK(parse("{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"sliding_window\": null}", &c) ==
          0);
    CHECK_EQ_INT(c.sliding_window, 0);

    /* Qwen2 sliding window only when use_sliding_window is true */
    CHECK(parse("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"sliding_window\": 512, "
                "\"use_sliding_window\": false}",
                &c) == 0);
    CHECK_EQ_INT(c.sliding_window, 0);
    CHECK(parse("{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE ", \"sliding_window\": 512, "
                "\"use_sliding_window\": true, \"max_window_layers\": 2}",
                &c) == 0);
    CHECK(c.sliding_window == 512 && c.max_window_layers == 2 && c.attention_bias);

    /* Qwen3-MoE: experts, sparse step, dense layers */
    CHECK(
        parse(
            "{\"architectures\": [\"Qwen3MoeForCausalLM\"], " BASE ", \"num_experts\": 8, "
            "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32, \"norm_topk_prob\": true, "
            "\"decoder_sparse_step\": 1, \"mlp_only_layers\": [0, 3], \"head_dim\": 32, \"eos_token_id\": 5}",
            &c) == 0);
    CHECK(c.arch == LOOM_ARCH_QWEN3_MOE && c.num_experts == 8 && c.num_experts_per_tok == 2 &&
          c.moe_intermediate_size == 32 && c.norm_topk_prob && c.n_mlp_only_layers == 2 && c.head_dim == 32);
    CHECK(!loom_arch_layer_is_moe(&c, 0) && loom_arch_layer_is_moe(&c, 1) && loom_arch_layer_is_moe(&c, 2) &&
          !loom_arch_layer_is_moe(&c, 3));
    CHECK(parse("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " BASE ", \"num_experts\": 8, "
                "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 32, \"decoder_sparse_step\": 2}",
                &c) == 0);
    CHECK(!c.norm_topk_prob); /* Qwen3MoeConfig default */
    CHECK(!loom_arch_layer_is_moe(&c, 0) && loom_arch_layer_is_moe(&c, 1) && !loom_arch_layer_is_moe(&c, 2) &&
          loom_arch_layer_is_moe(&c, 3));

    /* model_type when architectures is absent */
    CHECK(parse("{\"model_type\": \"qwen3\", " BASE "}", &c) == 0 && c.arch == LOOM_ARCH_QWEN3);
    CHECK(parse("{\"model_type\": \"mixtral\", " BASE
                ", \"num_local_experts\": 2, \"num_experts_per_tok\": 1}",
                &c) == 0);
    CHECK(c.arch == LOOM_ARCH_MIXTRAL && c.rope_theta == 1e6 && fabs(c.rms_norm_eps - 1e-5) < 1e-12);
    /* torch_dtype spellings */
    CHECK(parse("{\"model_type\": \"llama\", " BASE ", \"torch_dtype\": \"float16\"}", &c) == 0 &&
          c.torch_dtype == LOOM_DTYPE_F16);
    CHECK(parse("{\"model_type\": \"llama\", " BASE ", \"torch_dtype\": \"float32\"}", &c) == 0 &&
          c.torch_dtype == LOOM_DTYPE_F32);
    /* num_key_value_heads defaults to num_attention_heads */
    CHECK(parse("{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_hidden_layers\": 1, "
                "\"num_attention_heads\": 8, "
                "\"vocab_size\": 10, \"intermediate_size\": 8}",
                &c) == 0 &&
          c.num_kv_heads == 8 && c.head_dim == 8);
}

static void test_errors(void)
{
    expect_error("{\"architectures\": [\"GPT2LMHeadModel\"], " BASE "}", LOOM_EUNSUPPORTED,
                 "GPT2LMHeadModel");
    expect_error("{\"model_type\": \"gemma\", " BASE "}", LOOM_EUNSUPPORTED, "gemma");
    expect_error("{" BASE "}", LOOM_EINVAL, "architectures");
    expect_error("{\"architectures\": [], " BASE "}", LOOM_EINVAL, "architectures");
    expect_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
        "\"vocab_size\": 10, \"intermediate_size\": 8}",
        LOOM_EINVAL, "\"hidden_size\"");
    expect_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_attention_heads\": 4, "
        "\"vocab_size\": 10, \"intermediate_size\": 8}",
        LOOM_EINVAL, "\"num_hidden_layers\"");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 2, "
                 "\"vocab_size\": 10, \"intermediate_size\": 8}",
                 LOOM_EINVAL, "\"num_attention_heads\"");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 2, "
                 "\"num_attention_heads\": 4, \"intermediate_size\": 8}",
                 LOOM_EINVAL, "\"vocab_size\"");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 2, "
                 "\"num_attention_heads\": 4, \"vocab_size\": 10}",
                 LOOM_EINVAL, "\"intermediate_size\"");
    expect_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": null, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
        LOOM_EINVAL, "\"hidden_size\"");
    /* wrong JSON types name the field */
    expect_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": \"64\", \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
        LOOM_EINVAL, "\"hidden_size\"");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"tie_word_embeddings\": \"yes\"}",
                 LOOM_EINVAL, "tie_word_embeddings");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_theta\": \"big\"}",
                 LOOM_EINVAL, "rope_theta");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"eos_token_id\": \"</s>\"}",
                 LOOM_EINVAL, "eos_token_id");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"eos_token_id\": [1, \"x\"]}",
                 LOOM_EINVAL, "eos_token_id");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"eos_token_id\": [1,2,3,4,5,6,7,8,9]}",
                 LOOM_EINVAL, "eos_token_id");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"head_dim\": 2.5}", LOOM_EINVAL,
                 "head_dim");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rms_norm_eps\": []}", LOOM_EINVAL,
                 "rms_norm_eps");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"torch_dtype\": 16}", LOOM_EINVAL,
                 "torch_dtype");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"torch_dtype\": \"int4\"}",
                 LOOM_EUNSUPPORTED, "int4");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"rope_scaling\": 3}", LOOM_EINVAL,
                 "rope_scaling");
    /* ranges */
    expect_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": -64, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
        LOOM_EINVAL, "\"hidden_size\"");
    expect_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 99999999999999, "
        "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
        LOOM_EINVAL, "\"hidden_size\"");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"num_key_value_heads\": 3}",
                 LOOM_EINVAL, "num_key_value_heads");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 66, \"num_hidden_layers\": 2, "
                 "\"num_attention_heads\": 4, \"vocab_size\": 10, \"intermediate_size\": 8}",
                 LOOM_EINVAL, "hidden_size");
    /* rope */
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"rope_scaling\": {\"rope_type\": \"yarn\", "
                 "\"factor\": 4}}",
                 LOOM_EUNSUPPORTED, "yarn");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"rope_scaling\": {\"rope_type\": \"llama3\", "
                 "\"factor\": 8, \"high_freq_factor\": 4, \"original_max_position_embeddings\": 8192}}",
                 LOOM_EINVAL, "low_freq_factor");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE
                 ", \"rope_parameters\": {\"rope_type\": \"linear\"}}",
                 LOOM_EINVAL, "rope_parameters.factor");
    /* MoE */
    expect_error("{\"architectures\": [\"MixtralForCausalLM\"], " BASE ", \"num_experts_per_tok\": 2}",
                 LOOM_EINVAL, "num_local_experts");
    expect_error("{\"architectures\": [\"MixtralForCausalLM\"], " BASE ", \"num_local_experts\": 2, "
                 "\"num_experts_per_tok\": 3}",
                 LOOM_EINVAL, "num_experts_per_tok");
    expect_error("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " BASE ", \"num_experts\": 8, "
                 "\"num_experts_per_tok\": 2}",
                 LOOM_EINVAL, "moe_intermediate_size");
    expect_error("{\"architectures\": [\"Qwen3MoeForCausalLM\"], " BASE ", \"num_experts\": 8, "
                 "\"num_experts_per_tok\": 2, \"moe_intermediate_size\": 8, \"mlp_only_layers\": [9]}",
                 LOOM_EINVAL, "mlp_only_layers");
    expect_error(
        "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 2, "
        "\"num_attention_heads\": 4, \"vocab_size\": 10, \"num_experts\": 4, \"num_experts_per_tok\": 2, "
        "\"moe_intermediate_size\": 8, \"mlp_only_layers\": [1]}",
        LOOM_EINVAL, "intermediate_size");
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], " BASE ", \"hidden_act\": \"gelu\"}",
                 LOOM_EUNSUPPORTED, "gelu");
    /* not JSON / not an object */
    expect_error("{\"architectures\": [\"LlamaForCausalLM\"], ", LOOM_EINVAL, "JSON");
    expect_error("[1, 2]", LOOM_EINVAL, "object");
    struct loom_model_config c;
    CHECK(loom_hf_config_parse("", 0, &c) == LOOM_EINVAL);
    CHECK(loom_hf_config_parse("{}", 2, &c) == LOOM_EINVAL);
    CHECK(strstr(loom_arch_name(LOOM_ARCH_QWEN3_MOE), "Qwen3Moe") != NULL);
    CHECK_EQ_STR(loom_arch_name(LOOM_ARCH_MIXTRAL), "MixtralForCausalLM");
}

static void test_generation_config(void)
{
    struct loom_generation_config g;
    CHECK(loom_generation_config_load(test_shared("models/qwen2-tiny-151k"), &g) == 0);
    CHECK(g.bos_token_id == 151643 && g.n_eos == 1 && g.eos_token_ids[0] == 151645);
    CHECK(!g.has_temperature && !g.has_top_p && !g.has_top_k && !g.has_repetition_penalty &&
          g.max_new_tokens == 0);

    char dir[] = "/tmp/loom_test_gen_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    /* absent file: defaults, status 0 */
    CHECK(loom_generation_config_load(dir, &g) == 0 && g.n_eos == 0 && g.bos_token_id == -1);
    char *p = loom_path_join(dir, "generation_config.json");
    const char *full =
        "{\"bos_token_id\": 151643, \"eos_token_id\": [151645, 151643], \"do_sample\": true, "
        "\"temperature\": 0.6, \"top_p\": 0.95, \"top_k\": 20, \"repetition_penalty\": 1.05, "
        "\"max_new_tokens\": 512, \"pad_token_id\": 151643, \"transformers_version\": \"4.51.0\"}";
    CHECK(loom_write_file(p, full, strlen(full)) == 0);
    CHECK(loom_generation_config_load(dir, &g) == 0);
    CHECK(g.has_temperature && fabs(g.temperature - 0.6f) < 1e-6);
    CHECK(g.has_top_p && fabs(g.top_p - 0.95f) < 1e-6);
    CHECK(g.has_top_k && g.top_k == 20);
    CHECK(g.has_repetition_penalty && fabs(g.repetition_penalty - 1.05f) < 1e-6);
    CHECK(g.n_eos == 2 && g.eos_token_ids[0] == 151645 && g.eos_token_ids[1] == 151643);
    CHECK(g.bos_token_id == 151643 && g.max_new_tokens == 512);
    const char *bad = "{\"temperature\": \"hot\"}";
    CHECK(loom_write_file(p, bad, strlen(bad)) == 0);
    CHECK(loom_generation_config_load(dir, &g) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "temperature") && strstr(loom_last_error(), "generation_config.json"));
    const char *notjson = "{\"temperature\": ";
    CHECK(loom_write_file(p, notjson, strlen(notjson)) == 0);
    CHECK(loom_generation_config_load(dir, &g) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "generation_config.json") != NULL);
    remove(p);
    free(p);
    rmdir(dir);
}

int main(void)
{
    test_shared_configs();
    test_inline();
    test_errors();
    test_generation_config();
    return test_report();
}
