/*
 * hf_config.c: config.json and generation_config.json as Hugging Face writes them, for the six
 * architectures of hf_config.h.
 *
 * Defaults follow transformers' config classes where a hub config may leave a field out
 * (num_key_value_heads = num_attention_heads, head_dim = hidden / heads, rope_theta, rms_norm_eps,
 * max_position_embeddings, tie_word_embeddings = false, ...). A JSON null reads as "absent". Fields a
 * model cannot be built without (hidden_size, num_hidden_layers, num_attention_heads, vocab_size,
 * intermediate_size, the expert counts of MoE models) are required. The text is untrusted: every
 * value is type- and range-checked, and each failure is one line naming the field.
 *
 * It does not decide which tensors exist (model/arch.c) or check the weights against the config.
 */
#include "format/hf_config.h"
#include "core/error.h"
#include "core/util.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *arch, *model_type;
} arch_names[LOOM_ARCH_COUNT] = {
    [LOOM_ARCH_LLAMA] = {"LlamaForCausalLM", "llama"},
    [LOOM_ARCH_MISTRAL] = {"MistralForCausalLM", "mistral"},
    [LOOM_ARCH_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
    [LOOM_ARCH_QWEN3] = {"Qwen3ForCausalLM", "qwen3"},
    [LOOM_ARCH_MIXTRAL] = {"MixtralForCausalLM", "mixtral"},
    [LOOM_ARCH_QWEN3_MOE] = {"Qwen3MoeForCausalLM", "qwen3_moe"},
};

const char *loom_arch_name(enum loom_arch a)
{
    return (unsigned)a < LOOM_ARCH_COUNT ? arch_names[a].arch : "unknown";
}

#define SUPPORTED_ARCHS                                                                                      \
    "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MixtralForCausalLM, "         \
    "Qwen3MoeForCausalLM"

/* Upper bounds that keep every later size computation (products of these) far from overflow. */
#define MAX_DIM     (1 << 20) /* hidden, intermediate, head_dim */
#define MAX_HEADS   (1 << 12)
#define MAX_LAYERS  (1 << 12)
#define MAX_VOCAB   (1 << 24)
#define MAX_EXPERTS (1 << 12)
#define MAX_POS     (1 << 30)

/* ---------------------------------------------------------------------------------------------- */
/* Typed field access: present-and-null counts as absent. Each returns 1 if set, 0 if absent, <0 on
 * a wrong type or range (error set, naming `what`). */

static const json_t *field(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    return json_is_null(v) ? NULL : v;
}

static int get_int(const json_t *obj, const char *key, const char *what, long long lo, long long hi, int *out)
{
    const json_t *v = field(obj, key);
    if (!v) return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (long long)json_real_value(v); /* 8.0 written by some exporters */
    } else {
        return loom_fail(LOOM_EINVAL, "\"%s\" must be an integer", what);
    }
    if (x < lo || x > hi)
        return loom_fail(LOOM_EINVAL, "\"%s\" is %lld, expected a value in [%lld, %lld]", what, x, lo, hi);
    *out = (int)x;
    return 1;
}

static int get_num(const json_t *obj, const char *key, const char *what, double lo, double hi, double *out)
{
    const json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_number(v)) return loom_fail(LOOM_EINVAL, "\"%s\" must be a number", what);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return loom_fail(LOOM_EINVAL, "\"%s\" is %g, expected a value in [%g, %g]", what, x, lo, hi);
    *out = x;
    return 1;
}

static int get_bool(const json_t *obj, const char *key, bool *out)
{
    const json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return loom_fail(LOOM_EINVAL, "\"%s\" must be true or false", key);
    *out = json_is_true(v);
    return 1;
}

static int require_int(const json_t *obj, const char *key, long long lo, long long hi, int *out)
{
    int r = get_int(obj, key, key, lo, hi, out);
    if (r == 0) return loom_fail(LOOM_EINVAL, "required field \"%s\" is missing", key);
    return r < 0 ? r : 0;
}

/* token id lists: an int, a list of ints, or null */
static int get_token_ids(const json_t *obj, const char *key, int *ids, int *n)
{
    const json_t *v = field(obj, key);
    if (!v) return 0;
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0 || x >= MAX_VOCAB)
            return loom_fail(LOOM_EINVAL, "\"%s\" is %lld, not a token id", key, (long long)x);
        ids[0] = (int)x;
        *n = 1;
        return 1;
    }
    if (!json_is_array(v)) return loom_fail(LOOM_EINVAL, "\"%s\" must be a token id or a list of them", key);
    if (json_array_size(v) > LOOM_MAX_EOS)
        return loom_fail(LOOM_EINVAL, "\"%s\" lists %zu token ids, more than the %d loom supports", key,
                         json_array_size(v), LOOM_MAX_EOS);
    size_t i;
    const json_t *e;
    int k = 0;
    json_array_foreach(v, i, e)
    {
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= MAX_VOCAB)
            return loom_fail(LOOM_EINVAL, "\"%s\"[%zu] is not a token id", key, i);
        ids[k++] = (int)json_integer_value(e);
    }
    *n = k;
    return 1;
}

static int parse_dtype(const char *s, enum loom_dtype *out)
{
    if (!strncmp(s, "torch.", 6)) s += 6;
    if (!strcmp(s, "bfloat16") || !strcmp(s, "bf16"))
        *out = LOOM_DTYPE_BF16;
    else if (!strcmp(s, "float16") || !strcmp(s, "half") || !strcmp(s, "fp16"))
        *out = LOOM_DTYPE_F16;
    else if (!strcmp(s, "float32") || !strcmp(s, "float") || !strcmp(s, "fp32"))
        *out = LOOM_DTYPE_F32;
    else if (!strcmp(s, "float64") || !strcmp(s, "double"))
        *out = LOOM_DTYPE_F64;
    else
        return -1;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE: classic rope_theta + rope_scaling, or transformers-5 rope_parameters */

static int parse_rope_object(const json_t *r, const char *what, struct loom_model_config *cfg)
{
    if (!json_is_object(r)) return loom_fail(LOOM_EINVAL, "\"%s\" must be an object or null", what);
    const json_t *t = field(r, "rope_type");
    if (!t) t = field(r, "type");
    const char *type = "default";
    if (t) {
        if (!json_is_string(t)) return loom_fail(LOOM_EINVAL, "\"%s.rope_type\" must be a string", what);
        type = json_string_value(t);
    }
    char name[96];
    int s;
    double x = 0;
    snprintf(name, sizeof(name), "%s.rope_theta", what);
    if ((s = get_num(r, "rope_theta", name, 1e-3, 1e30, &x)) < 0) return s;
    if (s) cfg->rope_theta = x;
    if (!strcmp(type, "default")) {
        cfg->rope_type = LOOM_ROPE_DEFAULT;
        return 0;
    }
    if (!strcmp(type, "linear"))
        cfg->rope_type = LOOM_ROPE_LINEAR;
    else if (!strcmp(type, "llama3"))
        cfg->rope_type = LOOM_ROPE_LLAMA3;
    else
        return loom_fail(LOOM_EUNSUPPORTED,
                         "%s type '%.40s' is not supported (supported: default, linear, llama3)", what, type);
    snprintf(name, sizeof(name), "%s.factor", what);
    if ((s = get_num(r, "factor", name, 1e-6, 1e6, &x)) < 0) return s;
    if (!s) return loom_fail(LOOM_EINVAL, "\"%s\" is required for rope type %s", name, type);
    cfg->rope_factor = x;
    if (cfg->rope_type != LOOM_ROPE_LLAMA3) return 0;
    snprintf(name, sizeof(name), "%s.low_freq_factor", what);
    if ((s = get_num(r, "low_freq_factor", name, 1e-6, 1e6, &x)) <= 0)
        return s < 0 ? s : loom_fail(LOOM_EINVAL, "\"%s\" is required for rope type llama3", name);
    cfg->rope_low_freq_factor = x;
    snprintf(name, sizeof(name), "%s.high_freq_factor", what);
    if ((s = get_num(r, "high_freq_factor", name, 1e-6, 1e6, &x)) <= 0)
        return s < 0 ? s : loom_fail(LOOM_EINVAL, "\"%s\" is required for rope type llama3", name);
    cfg->rope_high_freq_factor = x;
    if (cfg->rope_high_freq_factor <= cfg->rope_low_freq_factor)
        return loom_fail(LOOM_EINVAL, "%s.high_freq_factor (%g) must be larger than low_freq_factor (%g)",
                         what, cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
    snprintf(name, sizeof(name), "%s.original_max_position_embeddings", what);
    int om;
    if ((s = get_int(r, "original_max_position_embeddings", name, 1, MAX_POS, &om)) <= 0)
        return s < 0 ? s : loom_fail(LOOM_EINVAL, "\"%s\" is required for rope type llama3", name);
    cfg->rope_original_max_pos = om;
    return 0;
}

static int parse_rope(const json_t *root, struct loom_model_config *cfg)
{
    double x = 0;
    int s = get_num(root, "rope_theta", "rope_theta", 1e-3, 1e30, &x);
    if (s < 0) return s;
    if (s) cfg->rope_theta = x;
    const json_t *rp = field(root, "rope_parameters");
    if (rp) {
        /* per-layer-type form {"full_attention": {...}, "sliding_attention": {...}}: take the full one */
        if (json_is_object(rp) && !field(rp, "rope_type") && !field(rp, "rope_theta") &&
            json_is_object(field(rp, "full_attention")))
            return parse_rope_object(field(rp, "full_attention"), "rope_parameters.full_attention", cfg);
        return parse_rope_object(rp, "rope_parameters", cfg);
    }
    const json_t *rs = field(root, "rope_scaling");
    if (rs) return parse_rope_object(rs, "rope_scaling", cfg);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

static int find_arch(const json_t *root, enum loom_arch *out)
{
    const json_t *archs = field(root, "architectures");
    const char *name = NULL;
    if (archs) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 || !json_is_string(json_array_get(archs, 0)))
            return loom_fail(LOOM_EINVAL, "\"architectures\" must be a non-empty list of names");
        name = json_string_value(json_array_get(archs, 0));
        for (int a = 0; a < LOOM_ARCH_COUNT; a++)
            if (!strcmp(name, arch_names[a].arch)) {
                *out = (enum loom_arch)a;
                return 0;
            }
        return loom_fail(LOOM_EUNSUPPORTED, "architecture '%.80s' is not supported (supported: %s)", name,
                         SUPPORTED_ARCHS);
    }
    const json_t *mt = field(root, "model_type");
    if (!mt) return loom_fail(LOOM_EINVAL, "neither \"architectures\" nor \"model_type\" is given");
    if (!json_is_string(mt)) return loom_fail(LOOM_EINVAL, "\"model_type\" must be a string");
    name = json_string_value(mt);
    for (int a = 0; a < LOOM_ARCH_COUNT; a++)
        if (!strcmp(name, arch_names[a].model_type)) {
            *out = (enum loom_arch)a;
            return 0;
        }
    return loom_fail(LOOM_EUNSUPPORTED, "model_type '%.80s' is not supported (supported: %s)", name,
                     SUPPORTED_ARCHS);
}

static int parse_config(const json_t *root, struct loom_model_config *c)
{
    int s;
    memset(c, 0, sizeof(*c));
    if (!json_is_object(root)) return loom_fail(LOOM_EINVAL, "not a JSON object");
    if ((s = find_arch(root, &c->arch))) return s;
    const enum loom_arch a = c->arch;
    const bool moe = a == LOOM_ARCH_MIXTRAL || a == LOOM_ARCH_QWEN3_MOE;

    /* architecture defaults, as in transformers' config classes */
    c->rope_theta = a == LOOM_ARCH_MIXTRAL ? 1e6 : 10000.0;
    c->rope_type = LOOM_ROPE_DEFAULT;
    c->rope_factor = 1.0;
    c->rms_norm_eps = a == LOOM_ARCH_MIXTRAL ? 1e-5f : 1e-6f;
    c->max_position_embeddings = a == LOOM_ARCH_LLAMA                                 ? 2048
                                 : (a == LOOM_ARCH_MISTRAL || a == LOOM_ARCH_MIXTRAL) ? 4096 * 32
                                                                                      : 32768;
    c->max_window_layers = 28;
    c->decoder_sparse_step = 1;
    c->bos_token_id = -1;
    c->torch_dtype = LOOM_DTYPE_F32;

    const json_t *act = field(root, "hidden_act");
    if (act && (!json_is_string(act) || strcmp(json_string_value(act), "silu")))
        return loom_fail(LOOM_EUNSUPPORTED, "hidden_act '%.40s' is not supported (silu only)",
                         json_is_string(act) ? json_string_value(act) : "?");

    if ((s = require_int(root, "hidden_size", 1, MAX_DIM, &c->hidden_size))) return s;
    if ((s = require_int(root, "num_hidden_layers", 1, MAX_LAYERS, &c->num_layers))) return s;
    if ((s = require_int(root, "num_attention_heads", 1, MAX_HEADS, &c->num_heads))) return s;
    if ((s = require_int(root, "vocab_size", 1, MAX_VOCAB, &c->vocab_size))) return s;
    if (a != LOOM_ARCH_QWEN3_MOE) {
        if ((s = require_int(root, "intermediate_size", 1, MAX_DIM, &c->intermediate_size))) return s;
    } else if ((s = get_int(root, "intermediate_size", "intermediate_size", 1, MAX_DIM,
                            &c->intermediate_size)) < 0) {
        return s;
    }
    c->num_kv_heads = c->num_heads;
    if ((s = get_int(root, "num_key_value_heads", "num_key_value_heads", 1, MAX_HEADS, &c->num_kv_heads)) < 0)
        return s;
    if (c->num_heads % c->num_kv_heads)
        return loom_fail(LOOM_EINVAL,
                         "num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                         c->num_heads, c->num_kv_heads);
    if ((s = get_int(root, "head_dim", "head_dim", 1, MAX_DIM, &c->head_dim)) < 0) return s;
    if (!s) {
        if (c->hidden_size % c->num_heads)
            return loom_fail(LOOM_EINVAL,
                             "hidden_size (%d) is not a multiple of num_attention_heads (%d) and no head_dim "
                             "is given",
                             c->hidden_size, c->num_heads);
        c->head_dim = c->hidden_size / c->num_heads;
    }
    if (c->head_dim % 2)
        return loom_fail(LOOM_EINVAL, "head_dim %d is odd; RoPE needs an even one", c->head_dim);
    if ((s = get_int(root, "max_position_embeddings", "max_position_embeddings", 1, MAX_POS,
                     &c->max_position_embeddings)) < 0)
        return s;
    double x = 0;
    if ((s = get_num(root, "rms_norm_eps", "rms_norm_eps", 0, 1, &x)) < 0) return s;
    if (s) c->rms_norm_eps = (float)x;
    if ((s = get_bool(root, "tie_word_embeddings", &c->tie_word_embeddings)) < 0) return s;

    /* biases: Qwen2 always has q/k/v biases; Mistral and Mixtral never; Llama and Qwen3 follow the field */
    bool field_bias = false;
    if ((s = get_bool(root, "attention_bias", &field_bias)) < 0) return s;
    if (a == LOOM_ARCH_QWEN2)
        c->attention_bias = true;
    else if (a == LOOM_ARCH_LLAMA || a == LOOM_ARCH_QWEN3 || a == LOOM_ARCH_QWEN3_MOE)
        c->attention_bias = field_bias;
    bool field_mlp_bias = false;
    if ((s = get_bool(root, "mlp_bias", &field_mlp_bias)) < 0) return s;
    if (a == LOOM_ARCH_LLAMA) c->mlp_bias = field_mlp_bias;
    c->qk_norm = a == LOOM_ARCH_QWEN3 || a == LOOM_ARCH_QWEN3_MOE;

    /* sliding window: Mistral/Mixtral use the field when set; the Qwens only with use_sliding_window */
    int sw = 0;
    if ((s = get_int(root, "sliding_window", "sliding_window", 1, MAX_POS, &sw)) < 0) return s;
    /* absent (not null) takes the config class default: 4096 for Mistral and the Qwens, none for Mixtral */
    if (!json_object_get(root, "sliding_window") && a != LOOM_ARCH_MIXTRAL) sw = 4096;
    if (a == LOOM_ARCH_MISTRAL || a == LOOM_ARCH_MIXTRAL) {
        c->sliding_window = sw;
    } else if (a != LOOM_ARCH_LLAMA) {
        bool use = false;
        if ((s = get_bool(root, "use_sliding_window", &use)) < 0) return s;
        if ((s = get_int(root, "max_window_layers", "max_window_layers", 0, MAX_LAYERS,
                         &c->max_window_layers)) < 0)
            return s;
        if (use) {
            if (!sw)
                return loom_fail(LOOM_EINVAL, "use_sliding_window is true but \"sliding_window\" is null");
            c->sliding_window = sw;
        }
    }

    if ((s = parse_rope(root, c))) return s;

    /* MoE */
    if (a == LOOM_ARCH_MIXTRAL) {
        if ((s = require_int(root, "num_local_experts", 1, MAX_EXPERTS, &c->num_experts))) return s;
        c->moe_intermediate_size = c->intermediate_size;
        c->norm_topk_prob = true;
    } else if (a == LOOM_ARCH_QWEN3_MOE) {
        if ((s = require_int(root, "num_experts", 1, MAX_EXPERTS, &c->num_experts))) return s;
        if ((s = require_int(root, "moe_intermediate_size", 1, MAX_DIM, &c->moe_intermediate_size))) return s;
        if ((s = get_bool(root, "norm_topk_prob", &c->norm_topk_prob)) < 0) return s;
        if ((s = get_int(root, "decoder_sparse_step", "decoder_sparse_step", 1, MAX_LAYERS,
                         &c->decoder_sparse_step)) < 0)
            return s;
        const json_t *ml = field(root, "mlp_only_layers");
        if (ml) {
            if (!json_is_array(ml))
                return loom_fail(LOOM_EINVAL, "\"mlp_only_layers\" must be a list of layers");
            int cap = (int)(sizeof(c->mlp_only_layers) / sizeof(c->mlp_only_layers[0]));
            if (json_array_size(ml) > (size_t)cap)
                return loom_fail(LOOM_EINVAL,
                                 "\"mlp_only_layers\" lists %zu layers, more than the %d loom supports",
                                 json_array_size(ml), cap);
            size_t i;
            const json_t *e;
            json_array_foreach(ml, i, e)
            {
                if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                    json_integer_value(e) >= c->num_layers)
                    return loom_fail(LOOM_EINVAL, "\"mlp_only_layers\"[%zu] is not a layer in [0, %d)", i,
                                     c->num_layers);
                c->mlp_only_layers[c->n_mlp_only_layers++] = (int)json_integer_value(e);
            }
        }
    }
    if (moe) {
        if ((s = require_int(root, "num_experts_per_tok", 1, MAX_EXPERTS, &c->num_experts_per_tok))) return s;
        if (c->num_experts_per_tok > c->num_experts)
            return loom_fail(LOOM_EINVAL,
                             "num_experts_per_tok (%d) is larger than the number of experts (%d)",
                             c->num_experts_per_tok, c->num_experts);
    }
    if (a == LOOM_ARCH_QWEN3_MOE && c->intermediate_size == 0) {
        /* dense layers (mlp_only_layers, or off the sparse step) need intermediate_size */
        for (int l = 0; l < c->num_layers; l++) {
            bool dense = (l + 1) % c->decoder_sparse_step != 0;
            for (int k = 0; k < c->n_mlp_only_layers; k++) dense |= c->mlp_only_layers[k] == l;
            if (dense)
                return loom_fail(LOOM_EINVAL,
                                 "required field \"intermediate_size\" is missing (layer %d is "
                                 "dense)",
                                 l);
        }
    }

    /* tokens */
    int bos[LOOM_MAX_EOS], nb = 0;
    if ((s = get_token_ids(root, "bos_token_id", bos, &nb)) < 0) return s;
    if (nb > 0) c->bos_token_id = bos[0];
    if ((s = get_token_ids(root, "eos_token_id", c->eos_token_ids, &c->n_eos)) < 0) return s;

    const json_t *dt = field(root, "dtype"); /* transformers 5 */
    const char *dtname = "dtype";
    if (!dt) dt = field(root, "torch_dtype"), dtname = "torch_dtype";
    if (dt) {
        if (!json_is_string(dt)) return loom_fail(LOOM_EINVAL, "\"%s\" must be a string", dtname);
        const char *v = json_string_value(dt);
        if (strcmp(v, "auto") && parse_dtype(v, &c->torch_dtype))
            return loom_fail(LOOM_EUNSUPPORTED, "%s '%.40s' is not supported (bfloat16, float16 or float32)",
                             dtname, v);
    }
    return 0;
}

static int parse_text(const char *json, size_t len, struct loom_model_config *cfg)
{
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root) {
        memset(cfg, 0, sizeof(*cfg));
        return loom_fail(LOOM_EINVAL, "not valid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                         jerr.column);
    }
    int s = parse_config(root, cfg);
    json_decref(root);
    return s;
}

int loom_hf_config_parse(const char *json, size_t len, struct loom_model_config *cfg)
{
    int s = parse_text(json, len, cfg);
    return s ? loom_fail_context(s, "config.json") : 0;
}

int loom_hf_config_load(const char *dir, struct loom_model_config *cfg)
{
    char *path = loom_path_join(dir, "config.json");
    char *text;
    size_t len;
    int s = loom_read_file(path, &text, &len);
    if (!s) {
        s = parse_text(text, len, cfg);
        free(text);
        if (s) loom_fail_context(s, "%s", path);
    }
    free(path);
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* generation_config.json */

static int parse_generation(const json_t *root, struct loom_generation_config *g)
{
    if (!json_is_object(root)) return loom_fail(LOOM_EINVAL, "not a JSON object");
    int s;
    double x = 0;
    if ((s = get_num(root, "temperature", "temperature", 0, 1e6, &x)) < 0) return s;
    if (s) g->has_temperature = true, g->temperature = (float)x;
    if ((s = get_num(root, "top_p", "top_p", 0, 1, &x)) < 0) return s;
    if (s) g->has_top_p = true, g->top_p = (float)x;
    if ((s = get_int(root, "top_k", "top_k", -1, MAX_VOCAB, &g->top_k)) < 0) return s;
    if (s) g->has_top_k = true;
    if ((s = get_num(root, "repetition_penalty", "repetition_penalty", 1e-6, 1e6, &x)) < 0) return s;
    if (s) g->has_repetition_penalty = true, g->repetition_penalty = (float)x;
    if ((s = get_int(root, "max_new_tokens", "max_new_tokens", 0, MAX_POS, &g->max_new_tokens)) < 0) return s;
    int bos[LOOM_MAX_EOS], nb = 0;
    if ((s = get_token_ids(root, "bos_token_id", bos, &nb)) < 0) return s;
    if (nb > 0) g->bos_token_id = bos[0];
    if ((s = get_token_ids(root, "eos_token_id", g->eos_token_ids, &g->n_eos)) < 0) return s;
    return 0;
}

int loom_generation_config_load(const char *dir, struct loom_generation_config *gen)
{
    memset(gen, 0, sizeof(*gen));
    gen->bos_token_id = -1;
    char *path = loom_path_join(dir, "generation_config.json");
    if (!loom_file_exists(path)) {
        free(path);
        return 0;
    }
    char *text;
    size_t len;
    int s = loom_read_file(path, &text, &len);
    if (!s) {
        json_error_t jerr;
        json_t *root = json_loadb(text, len, 0, &jerr);
        free(text);
        if (!root) {
            s = loom_fail(LOOM_EINVAL, "%s: not valid JSON: %s (line %d, column %d)", path, jerr.text,
                          jerr.line, jerr.column);
        } else {
            s = parse_generation(root, gen);
            json_decref(root);
            if (s) {
                loom_fail_context(s, "%s", path);
                memset(gen, 0, sizeof(*gen));
                gen->bos_token_id = -1;
            }
        }
    }
    free(path);
    return s;
}
