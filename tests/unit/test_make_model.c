/*
 * test_make_model.c: `loom make-model` ($LOOM_BIN) on a small config of each of the six architectures.
 * The folder it writes is loaded back with the safetensors reader and checked tensor by tensor against
 * model/arch.c's spec list (names, shapes, dtype), values are checked (norms 1, the rest ~N(0, 0.02)),
 * output is identical under one seed (also across shard sizes) and different under another, and the
 * byte-level tokenizer files parse as JSON with 259 tokens.
 */
#include "core/dtype.h"
#include "core/error.h"
#include "core/util.h"
#include "format/hf_config.h"
#include "format/safetensors.h"
#include "model/arch.h"
#include "test.h"

#include <dirent.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmpdir[256];
static const char *bin;

#define BASE                                                                                                 \
    "\"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": "   \
    "2, "                                                                                                    \
    "\"vocab_size\": 300, \"intermediate_size\": 96, \"bos_token_id\": 1, \"torch_dtype\": \"bfloat16\""

static const struct {
    const char *name, *json;
    int expect_tensors;
} configs[] = {
    /* Llama with attention_bias: q/k/v/o biases; 2 layers x (9 + 4) + embed, norm, lm_head */
    {"llama",
     "{\"architectures\": [\"LlamaForCausalLM\"], " BASE
     ", \"attention_bias\": true, \"eos_token_id\": [2, 3]}",
     2 * 13 + 3},
    {"mistral",
     "{\"architectures\": [\"MistralForCausalLM\"], " BASE ", \"head_dim\": 32, \"num_key_value_heads\": 1, "
     "\"eos_token_id\": 2}",
     2 * 9 + 3},
    {"qwen2",
     "{\"architectures\": [\"Qwen2ForCausalLM\"], " BASE
     ", \"tie_word_embeddings\": true, \"eos_token_id\": 2}",
     2 * 12 + 2},
    {"qwen3",
     "{\"architectures\": [\"Qwen3ForCausalLM\"], " BASE ", \"head_dim\": 32, \"tie_word_embeddings\": true, "
     "\"eos_token_id\": 2}",
     2 * 11 + 2},
    {"mixtral",
     "{\"architectures\": [\"MixtralForCausalLM\"], " BASE ", \"num_local_experts\": 4, "
     "\"num_experts_per_tok\": 2, \"eos_token_id\": 2}",
     2 * (6 + 1 + 4 * 3) + 3},
    /* Qwen3-MoE: layer 1 dense (mlp_only_layers), layer 0 sparse with 4 experts of width 32 */
    {"qwen3moe",
     "{\"architectures\": [\"Qwen3MoeForCausalLM\"], " BASE
     ", \"num_experts\": 4, \"num_experts_per_tok\": 2, "
     "\"moe_intermediate_size\": 32, \"mlp_only_layers\": [1], \"norm_topk_prob\": true, \"eos_token_id\": "
     "2}",
     (8 + 1 + 4 * 3) + (8 + 3) + 3},
};

/* Runs a shell command; returns its exit status; its output (stdout + stderr) goes to *out if given. */
static int run(char **out, const char *fmt, ...) LOOM_PRINTF(2, 3);
static int run(char **out, const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    char full[2200];
    snprintf(full, sizeof(full), "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n - 1, p)) > 0) {
        n += got;
        if (n + 1 >= cap) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    int st = pclose(p);
    if (out)
        *out = buf;
    else
        free(buf);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *path_in(const char *dir, const char *name)
{
    return loom_path_join(dir, name);
}

static bool files_equal(const char *a, const char *b)
{
    char *x, *y;
    size_t nx, ny;
    if (loom_read_file(a, &x, &nx) || loom_read_file(b, &y, &ny)) return false;
    bool eq = nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return eq;
}

static void element_stats(const struct loom_st_tensor *t, double *mean, double *std, double *maxabs)
{
    double s = 0, ss = 0, m = 0;
    for (int64_t i = 0; i < t->numel; i++) {
        float v;
        if (t->dtype == LOOM_DTYPE_F32)
            memcpy(&v, (const uint8_t *)t->data + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, (const uint8_t *)t->data + 2 * i, 2);
            v = t->dtype == LOOM_DTYPE_BF16 ? loom_bf16_to_f32(h) : loom_f16_to_f32(h);
        }
        s += v;
        ss += (double)v * v;
        if (fabs(v) > m) m = fabs(v);
    }
    *mean = s / (double)t->numel;
    *std = sqrt(ss / (double)t->numel - *mean * *mean);
    *maxabs = m;
}

/* Loads out_dir back and checks it against the arch spec of its (copied) config. */
static void check_folder(const char *what, const char *out_dir, int expect_tensors, enum loom_dtype dt)
{
    struct loom_model_config cfg;
    int s = loom_hf_config_load(out_dir, &cfg);
    CHECK_MSG(s == 0, "%s: config: %s", what, loom_last_error());
    if (s) return;
    struct loom_safetensors *st;
    s = loom_safetensors_open(out_dir, &st);
    CHECK_MSG(s == 0, "%s: %s", what, loom_last_error());
    if (s) return;
    struct loom_weight_spec *specs;
    int n;
    CHECK(loom_arch_weights(&cfg, &specs, &n) == 0);
    CHECK_EQ_INT(n, expect_tensors);
    CHECK_EQ_INT(loom_safetensors_count(st), expect_tensors);
    int bad_shape = 0, bad_dtype = 0, bad_norm = 0, bad_values = 0;
    for (int i = 0; i < n; i++) {
        const struct loom_st_tensor *t = loom_safetensors_find(st, specs[i].name);
        CHECK_MSG(t != NULL, "%s: %s missing", what, specs[i].name);
        if (!t) continue;
        if (t->ndim != specs[i].ndim || t->shape[0] != specs[i].shape[0] ||
            (specs[i].ndim == 2 && t->shape[1] != specs[i].shape[1]))
            bad_shape++;
        if (t->dtype != dt) bad_dtype++;
        double mean, sd, mx;
        element_stats(t, &mean, &sd, &mx);
        if (specs[i].is_norm) {
            if (mean != 1.0 || mx != 1.0) bad_norm++;
        } else if (mx > 0.0701 || mx == 0 ||
                   (t->numel >= 4096 && (sd < 0.017 || sd > 0.023 || fabs(mean) > 0.002))) {
            bad_values++;
            fprintf(stderr, "%s: %s mean %g std %g max %g\n", what, t->name, mean, sd, mx);
        }
    }
    CHECK_EQ_INT(bad_shape, 0);
    CHECK_EQ_INT(bad_dtype, 0);
    CHECK_EQ_INT(bad_norm, 0);
    CHECK_EQ_INT(bad_values, 0);
    free(specs);
    loom_safetensors_close(st);

    struct loom_generation_config g;
    CHECK(loom_generation_config_load(out_dir, &g) == 0);
    CHECK_EQ_INT(g.bos_token_id, cfg.bos_token_id);
    CHECK_EQ_INT(g.n_eos, cfg.n_eos);
    for (int k = 0; k < g.n_eos && k < cfg.n_eos; k++) CHECK_EQ_INT(g.eos_token_ids[k], cfg.eos_token_ids[k]);
}

static void test_architectures(void)
{
    for (size_t c = 0; c < sizeof(configs) / sizeof(configs[0]); c++) {
        char cfg_path[512], out[512], out2[512], out3[512];
        snprintf(cfg_path, sizeof(cfg_path), "%s/%s.json", tmpdir, configs[c].name);
        CHECK(loom_write_file(cfg_path, configs[c].json, strlen(configs[c].json)) == 0);
        snprintf(out, sizeof(out), "%s/%s-s1", tmpdir, configs[c].name);
        snprintf(out2, sizeof(out2), "%s/%s-s1b", tmpdir, configs[c].name);
        snprintf(out3, sizeof(out3), "%s/%s-s2", tmpdir, configs[c].name);
        char *log = NULL;
        int rc = run(&log, "'%s' make-model '%s' '%s' --seed 1", bin, cfg_path, out);
        CHECK_MSG(rc == 0, "%s: exit %d: %s", configs[c].name, rc, log);
        free(log);
        if (rc) continue;
        check_folder(configs[c].name, out, configs[c].expect_tensors, LOOM_DTYPE_BF16);

        char *a = path_in(out, "config.json");
        CHECK_MSG(files_equal(a, cfg_path), "%s: config.json is not a byte copy", configs[c].name);
        free(a);
        char *idx = path_in(out, "model.safetensors.index.json");
        CHECK(!loom_file_exists(idx)); /* small: one file */
        free(idx);

        /* same seed: the same bytes; another seed: different weights */
        CHECK_EQ_INT(run(NULL, "'%s' make-model '%s' '%s' --seed 1", bin, cfg_path, out2), 0);
        CHECK_EQ_INT(run(NULL, "'%s' make-model '%s' '%s' --seed 2", bin, cfg_path, out3), 0);
        char *m1 = path_in(out, "model.safetensors"), *m2 = path_in(out2, "model.safetensors"),
             *m3 = path_in(out3, "model.safetensors");
        CHECK_MSG(files_equal(m1, m2), "%s: not deterministic under one seed", configs[c].name);
        CHECK_MSG(!files_equal(m1, m3), "%s: seeds 1 and 2 gave the same weights", configs[c].name);
        struct loom_safetensors *s1, *s3;
        if (loom_safetensors_open(m1, &s1) == 0) {
            if (loom_safetensors_open(m3, &s3) == 0) {
                const struct loom_st_tensor *e1 = loom_safetensors_find(s1, "model.embed_tokens.weight"),
                                            *e3 = loom_safetensors_find(s3, "model.embed_tokens.weight");
                CHECK(e1 && e3 && e1->nbytes == e3->nbytes && memcmp(e1->data, e3->data, e1->nbytes) != 0);
                const struct loom_st_tensor *n1 = loom_safetensors_find(s1, "model.norm.weight"),
                                            *n3 = loom_safetensors_find(s3, "model.norm.weight");
                CHECK(n1 && n3 && !memcmp(n1->data, n3->data, n1->nbytes)); /* ones either way */
                loom_safetensors_close(s3);
            }
            loom_safetensors_close(s1);
        }
        free(m1);
        free(m2);
        free(m3);
    }
}

/* Shards: the same tensors as the single file, split over files with an index. */
static void test_shards_and_dtypes(void)
{
    char cfg_path[512], one[512], many[512], f32[512], f16[512];
    snprintf(cfg_path, sizeof(cfg_path), "%s/mixtral.json", tmpdir);
    snprintf(one, sizeof(one), "%s/mixtral-s1", tmpdir);
    snprintf(many, sizeof(many), "%s/mixtral-sharded", tmpdir);
    CHECK_EQ_INT(run(NULL, "'%s' make-model '%s' '%s' --seed 1 --max-shard-size 60000", bin, cfg_path, many),
                 0);
    char *idx = path_in(many, "model.safetensors.index.json");
    CHECK(loom_file_exists(idx));
    char *text;
    size_t len;
    if (loom_read_file(idx, &text, &len) == 0) {
        json_t *j = json_loadb(text, len, 0, NULL);
        CHECK(j != NULL);
        json_t *wm = json_object_get(j, "weight_map");
        CHECK_EQ_INT(json_object_size(wm), 41);
        const char *last = json_string_value(json_object_get(wm, "model.norm.weight"));
        CHECK(last && strstr(last, "model-0000") && strstr(last, "-of-0000"));
        json_t *ts = json_object_get(json_object_get(j, "metadata"), "total_size");
        CHECK(json_is_integer(ts) && json_integer_value(ts) > 0);
        json_decref(j);
        free(text);
    }
    free(idx);
    char *single = path_in(many, "model.safetensors");
    CHECK(!loom_file_exists(single));
    free(single);
    /* every shard holds at most 60000 bytes of tensor data (no single tensor here is larger) */
    int nshards = 0, over = 0;
    DIR *d = opendir(many);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (strncmp(de->d_name, "model-", 6) || !strstr(de->d_name, ".safetensors")) continue;
        nshards++;
        char *sp = path_in(many, de->d_name);
        struct loom_safetensors *sh;
        if (loom_safetensors_open(sp, &sh) == 0) {
            size_t bytes = 0;
            for (int i = 0; i < loom_safetensors_count(sh); i++) bytes += loom_safetensors_at(sh, i)->nbytes;
            if (bytes > 60000 || bytes == 0) over++;
            loom_safetensors_close(sh);
        } else {
            over++;
        }
        free(sp);
    }
    if (d) closedir(d);
    CHECK_MSG(nshards >= 8, "%d shards", nshards);
    CHECK_EQ_INT(over, 0);
    struct loom_safetensors *a, *b;
    if (loom_safetensors_open(one, &a) == 0) {
        if (loom_safetensors_open(many, &b) == 0) {
            CHECK_EQ_INT(loom_safetensors_count(b), 41);
            int diff = 0;
            for (int i = 0; i < loom_safetensors_count(a); i++) {
                const struct loom_st_tensor *x = loom_safetensors_at(a, i),
                                            *y = loom_safetensors_find(b, x->name);
                if (!y || y->nbytes != x->nbytes || memcmp(x->data, y->data, x->nbytes)) diff++;
            }
            CHECK_EQ_INT(diff, 0); /* values do not depend on the shard layout */
            loom_safetensors_close(b);
        } else {
            CHECK_MSG(0, "sharded output: %s", loom_last_error());
        }
        loom_safetensors_close(a);
    }
    check_folder("mixtral sharded", many, 41, LOOM_DTYPE_BF16);

    snprintf(f32, sizeof(f32), "%s/mixtral-f32", tmpdir);
    snprintf(f16, sizeof(f16), "%s/mixtral-f16", tmpdir);
    CHECK_EQ_INT(run(NULL, "'%s' make-model '%s' '%s' --dtype float32", bin, cfg_path, f32), 0);
    check_folder("mixtral f32", f32, 41, LOOM_DTYPE_F32);
    CHECK_EQ_INT(run(NULL, "'%s' make-model '%s' '%s' --dtype float16", bin, cfg_path, f16), 0);
    check_folder("mixtral f16", f16, 41, LOOM_DTYPE_F16);
}

static void test_tokenizer(void)
{
    char cfg_path[512], out[512];
    snprintf(cfg_path, sizeof(cfg_path), "%s/qwen3.json", tmpdir);
    snprintf(out, sizeof(out), "%s/qwen3-tok", tmpdir);
    char *log = NULL;
    CHECK_EQ_INT(run(&log, "'%s' make-model '%s' '%s' --tokenizer byte-level", bin, cfg_path, out), 0);
    free(log);
    char *p = path_in(out, "tokenizer.json");
    json_error_t err;
    json_t *tok = json_load_file(p, 0, &err);
    CHECK_MSG(tok != NULL, "tokenizer.json: %s", err.text);
    free(p);
    if (tok) {
        json_t *model = json_object_get(tok, "model");
        CHECK_EQ_STR(json_string_value(json_object_get(model, "type")), "BPE");
        json_t *vocab = json_object_get(model, "vocab");
        CHECK_EQ_INT(json_object_size(vocab), 256);
        CHECK(json_is_array(json_object_get(model, "merges")) &&
              json_array_size(json_object_get(model, "merges")) == 0);
        /* ids 0..255 once each; GPT-2 spelling: 'A' is itself, space is U+0120, byte 0 is U+0100 */
        int seen[256] = {0};
        const char *k;
        json_t *v;
        json_object_foreach(vocab, k, v)
        {
            json_int_t id = json_integer_value(v);
            if (id >= 0 && id < 256) seen[id]++;
        }
        int once = 0;
        for (int i = 0; i < 256; i++) once += seen[i] == 1;
        CHECK_EQ_INT(once, 256);
        CHECK_EQ_INT(json_integer_value(json_object_get(vocab, "A")), 65);
        CHECK_EQ_INT(json_integer_value(json_object_get(vocab, "\xc4\xa0")), 32);  /* Ġ */
        CHECK_EQ_INT(json_integer_value(json_object_get(vocab, "\xc4\x80")), 0);   /* Ā */
        CHECK_EQ_INT(json_integer_value(json_object_get(vocab, "\xc4\x8a")), 10);  /* Ċ = newline */
        CHECK_EQ_INT(json_integer_value(json_object_get(vocab, "\xc3\xbf")), 255); /* ÿ */
        json_t *added = json_object_get(tok, "added_tokens");
        CHECK_EQ_INT(json_array_size(added), 3);
        static const char *names[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
        for (int i = 0; i < 3; i++) {
            json_t *t = json_array_get(added, (size_t)i);
            CHECK_EQ_INT(json_integer_value(json_object_get(t, "id")), 256 + i);
            CHECK_EQ_STR(json_string_value(json_object_get(t, "content")), names[i]);
            CHECK(json_is_true(json_object_get(t, "special")));
        }
        CHECK_EQ_INT(json_object_size(vocab) + json_array_size(added), 259);
        CHECK_EQ_STR(json_string_value(json_object_get(json_object_get(tok, "decoder"), "type")),
                     "ByteLevel");
        json_t *pre = json_object_get(tok, "pre_tokenizer");
        CHECK(json_is_object(pre));
        json_decref(tok);
    }
    p = path_in(out, "tokenizer_config.json");
    json_t *tc = json_load_file(p, 0, &err);
    CHECK_MSG(tc != NULL, "tokenizer_config.json: %s", err.text);
    free(p);
    if (tc) {
        CHECK_EQ_STR(json_string_value(json_object_get(tc, "eos_token")), "<|im_end|>");
        CHECK(json_is_null(json_object_get(tc, "bos_token")));
        const char *tpl = json_string_value(json_object_get(tc, "chat_template"));
        CHECK(tpl && strstr(tpl, "<|im_start|>") && strstr(tpl, "add_generation_prompt") &&
              strstr(tpl, "<|im_end|>"));
        json_t *dec = json_object_get(tc, "added_tokens_decoder");
        CHECK_EQ_STR(json_string_value(json_object_get(json_object_get(dec, "258"), "content")),
                     "<|im_end|>");
        json_decref(tc);
    }

    /* vocab_size below 259 cannot hold the byte-level vocabulary */
    char small[512], small_out[512];
    snprintf(small, sizeof(small), "%s/small-vocab.json", tmpdir);
    snprintf(small_out, sizeof(small_out), "%s/small-vocab", tmpdir);
    const char *sv =
        "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1, "
        "\"num_attention_heads\": 4, \"vocab_size\": 258, \"intermediate_size\": 96}";
    CHECK(loom_write_file(small, sv, strlen(sv)) == 0);
    log = NULL;
    CHECK_EQ_INT(run(&log, "'%s' make-model '%s' '%s' --tokenizer byte-level", bin, small, small_out), 1);
    CHECK_MSG(log && strstr(log, "vocab_size") && strstr(log, "258"), "message: %s", log);
    free(log);
    /* without a tokenizer the same config is fine, and float32 is its default dtype (no torch_dtype) */
    CHECK_EQ_INT(run(NULL, "'%s' make-model '%s' '%s'", bin, small, small_out), 0);
    check_folder("small vocab", small_out, 9 + 3, LOOM_DTYPE_F32);
}

static void test_errors(void)
{
    char *log = NULL;
    CHECK_EQ_INT(run(&log, "'%s' make-model", bin), 2);
    CHECK(log && strstr(log, "usage"));
    free(log);
    char bad[512], out[512];
    snprintf(bad, sizeof(bad), "%s/gpt2.json", tmpdir);
    snprintf(out, sizeof(out), "%s/gpt2-out", tmpdir);
    const char *g = "{\"architectures\": [\"GPT2LMHeadModel\"], \"hidden_size\": 64}";
    CHECK(loom_write_file(bad, g, strlen(g)) == 0);
    log = NULL;
    CHECK_EQ_INT(run(&log, "'%s' make-model '%s' '%s'", bin, bad, out), 1);
    CHECK_MSG(log && strstr(log, "GPT2LMHeadModel"), "message: %s", log);
    free(log);
    CHECK(!loom_file_exists(out)); /* nothing written for a config it cannot build */
    log = NULL;
    CHECK_EQ_INT(run(&log, "'%s' make-model '%s/none.json' '%s'", bin, tmpdir, out), 1);
    CHECK(log && strstr(log, "none.json"));
    free(log);
    CHECK_EQ_INT(run(NULL, "'%s' make-model '%s/llama.json' '%s' --dtype int8", bin, tmpdir, out), 2);
    CHECK_EQ_INT(
        run(NULL, "'%s' make-model '%s/llama.json' '%s' --tokenizer sentencepiece", bin, tmpdir, out), 2);
    CHECK_EQ_INT(run(NULL, "'%s' make-model '%s/llama.json' '%s' --bogus", bin, tmpdir, out), 2);
}

int main(void)
{
    bin = getenv("LOOM_BIN");
    static char cwd_bin[4096];
    if ((!bin || !*bin) && getcwd(cwd_bin, sizeof(cwd_bin) - 8)) {
        strcat(cwd_bin, "/loom"); /* ctest runs the tests in the build folder, beside the binary */
        bin = cwd_bin;
    }
    if (!bin || access(bin, X_OK) != 0) test_skip("LOOM_BIN is not set to the loom binary");
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/loom_test_mm_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_architectures();
    test_shards_and_dtypes();
    test_tokenizer();
    test_errors();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_report();
}
