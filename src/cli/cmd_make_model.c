/*
 * cmd_make_model.c: `loom make-model CONFIG_JSON OUT_DIR`: a model folder with random weights in the
 * hub layout, for benchmarks at real shapes and for the built-in demo model.
 *
 * Writes config.json (a byte copy), generation_config.json (bos/eos from the config), and the tensors
 * model/arch.c lists, either as one model.safetensors or, past --max-shard-size (default 4 GB), as
 * model-0000i-of-0000N.safetensors shards plus model.safetensors.index.json, as transformers'
 * save_pretrained does. Values: RMSNorm weights are 1; everything else is approximately normal with
 * std = initializer_range (Irwin-Hall sum of four uniforms, so |x| < 3.5 std). Each element is a pure
 * function of (seed, tensor name, element index), so output is identical for a seed whatever the
 * thread count or shard size. Tensors are generated and written in chunks: memory stays at a few
 * chunk buffers however large the model is.
 *
 * --tokenizer byte-level also writes a tokenizer.json (byte-level BPE: the 256 bytes as ids 0..255 in
 * GPT-2's bytes-to-unicode spelling, no merges, plus <|endoftext|> <|im_start|> <|im_end|> as 256..258)
 * and a tokenizer_config.json with a ChatML chat template.
 */
#include "cli/commands.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"
#include "format/hf_config.h"
#include "format/safetensors.h"
#include "model/arch.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_SHARD_BYTES 4000000000LL
#define CHUNK_ELEMS         (1 << 22) /* elements generated per step of a tensor */

static void usage(FILE *f)
{
    fprintf(f, "usage: loom make-model CONFIG_JSON OUT_DIR [--seed S] [--dtype bfloat16|float16|float32]\n"
               "                       [--tokenizer byte-level] [--max-shard-size BYTES]\n\n"
               "Writes a Hugging Face model folder with random weights for CONFIG_JSON (a config.json):\n"
               "config.json, generation_config.json and model.safetensors (or shards of at most\n"
               "--max-shard-size bytes, default 4000000000, with model.safetensors.index.json).\n"
               "  --seed S                 weights are a pure function of the seed (default 0)\n"
               "  --dtype T                stored dtype (default: the config's torch_dtype)\n"
               "  --tokenizer byte-level   also write a 259-token byte-level BPE tokenizer.json and a\n"
               "                           tokenizer_config.json with a ChatML chat template\n");
}

/* ---------------------------------------------------------------------------------------------- */
/* Values */

static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t tensor_key(uint64_t seed, const char *name)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a 64 */
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ULL;
    return mix64(mix64(seed + 0x9e3779b97f4a7c15ULL) ^ h);
}

/* approximately N(0, 1): (sum of four 16-bit uniforms - 2) * sqrt(12 / 4) */
static inline float normalish(uint64_t key, uint64_t i)
{
    uint64_t r = mix64(key + i * 0x9e3779b97f4a7c15ULL);
    uint32_t s = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) + (uint32_t)((r >> 32) & 0xffff) +
                 (uint32_t)(r >> 48);
    return ((float)s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

struct fill_job {
    void *out;
    enum loom_dtype dtype;
    uint64_t key, first; /* element index of out[0] within the tensor */
    size_t n;
    float std;
    bool ones;
};

static void fill_range(const struct fill_job *j)
{
    for (size_t i = 0; i < j->n; i++) {
        float v = j->ones ? 1.0f : j->std * normalish(j->key, j->first + i);
        switch (j->dtype) {
        case LOOM_DTYPE_F32:
            ((float *)j->out)[i] = v;
            break;
        case LOOM_DTYPE_BF16:
            ((uint16_t *)j->out)[i] = loom_f32_to_bf16(v);
            break;
        case LOOM_DTYPE_F16:
            ((uint16_t *)j->out)[i] = loom_f32_to_f16(v);
            break;
        default:
            LOOM_ASSERT(0);
        }
    }
}

static void *fill_thread(void *arg)
{
    fill_range(arg);
    return NULL;
}

/* A fill split over up to 64 threads, started by fill_start and waited for by fill_join, so the next
 * chunk is generated while the current one is written. */
struct fill_group {
    struct fill_job jobs[64];
    pthread_t tids[64];
    bool running[64];
    int n;
};

static void fill_start(struct fill_group *g, const struct fill_job *whole, int threads)
{
    g->n = 0;
    if (threads > 64) threads = 64;
    if (whole->n < 65536) threads = 1;
    size_t per = (whole->n + (size_t)threads - 1) / (size_t)threads, esize = loom_dtype_size(whole->dtype);
    for (int t = 0; t < threads; t++) {
        size_t a = (size_t)t * per;
        if (a >= whole->n) break;
        struct fill_job *j = &g->jobs[g->n];
        *j = *whole;
        j->out = (uint8_t *)whole->out + a * esize;
        j->first = whole->first + a;
        j->n = a + per > whole->n ? whole->n - a : per;
        g->running[g->n] = pthread_create(&g->tids[g->n], NULL, fill_thread, j) == 0;
        if (!g->running[g->n]) fill_range(j); /* no thread to be had: do it here */
        g->n++;
    }
}

static void fill_join(struct fill_group *g)
{
    for (int t = 0; t < g->n; t++)
        if (g->running[t]) pthread_join(g->tids[t], NULL);
    g->n = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Safetensors files, written tensor by tensor */

struct shard {
    int first, count; /* range of specs */
    int64_t bytes;
    char file[64];
};

static int64_t spec_numel(const struct loom_weight_spec *s)
{
    return s->shape[0] * (s->ndim == 2 ? s->shape[1] : 1);
}

/* Walks a shard's tensors in chunks of at most CHUNK_ELEMS elements. */
struct chunk_cursor {
    const struct loom_weight_spec *specs;
    int i, end; /* current tensor, one past the shard's last */
    int64_t at; /* next element of tensor i */
    enum loom_dtype dt;
    uint64_t seed;
    float std;
};

static bool next_chunk(struct chunk_cursor *c, void *buf, struct fill_job *job)
{
    while (c->i < c->end && c->at >= spec_numel(&c->specs[c->i]))
        c->i++, c->at = 0; /* also skips empty tensors */
    if (c->i >= c->end) return false;
    const struct loom_weight_spec *sp = &c->specs[c->i];
    int64_t left = spec_numel(sp) - c->at;
    *job = (struct fill_job){.out = buf,
                             .dtype = c->dt,
                             .key = tensor_key(c->seed, sp->name),
                             .first = (uint64_t)c->at,
                             .n = (size_t)(left < CHUNK_ELEMS ? left : CHUNK_ELEMS),
                             .std = c->std,
                             .ones = sp->is_norm};
    c->at += (int64_t)job->n;
    return true;
}

static int write_shard(const char *path, const struct loom_weight_spec *specs, const struct shard *sh,
                       enum loom_dtype dt, uint64_t seed, float std, int threads, void *bufs[2],
                       struct loom_progress *prog, long long *done)
{
    const size_t esize = loom_dtype_size(dt);
    struct loom_st_tensor *ts = loom_calloc((size_t)(sh->count ? sh->count : 1), sizeof(*ts));
    for (int i = 0; i < sh->count; i++) {
        const struct loom_weight_spec *sp = &specs[sh->first + i];
        ts[i].name = sp->name;
        ts[i].dtype = dt;
        ts[i].ndim = sp->ndim;
        for (int d = 0; d < sp->ndim; d++) ts[i].shape[d] = sp->shape[d];
    }
    struct loom_st_writer *w;
    int s = loom_st_writer_open(path, ts, sh->count, "{\"format\":\"pt\"}", &w);
    free(ts);
    if (s) return s;
    /* chunks in file order; chunk k+1 is generated on the worker threads while chunk k is written */
    struct chunk_cursor cc = {
        .specs = specs, .i = sh->first, .end = sh->first + sh->count, .dt = dt, .seed = seed, .std = std};
    struct fill_group *g = loom_calloc(1, sizeof(*g));
    struct fill_job cur;
    int b = 0;
    bool have = next_chunk(&cc, bufs[b], &cur);
    if (have) fill_start(g, &cur, threads);
    while (have) {
        fill_join(g);
        struct fill_job ready = cur;
        have = !s && next_chunk(&cc, bufs[b ^= 1], &cur);
        if (have) fill_start(g, &cur, threads);
        if (!s) s = loom_st_writer_write(w, ready.out, ready.n * esize);
        *done += (long long)(ready.n * esize);
        loom_progress_update(prog, *done);
    }
    fill_join(g);
    free(g);
    int c = loom_st_writer_close(w);
    return s ? s : c;
}

/* ---------------------------------------------------------------------------------------------- */
/* JSON side files */

static int write_json(const char *dir, const char *name, json_t *j)
{
    char *path = loom_path_join(dir, name);
    char *text = json_dumps(j, JSON_INDENT(2));
    size_t n = strlen(text);
    text = loom_realloc(text, n + 2);
    text[n] = '\n';
    text[n + 1] = 0;
    int s = loom_write_file(path, text, n + 1);
    free(text);
    free(path);
    return s;
}

static json_t *token_ids_json(const int *ids, int n)
{
    if (n == 1) return json_integer(ids[0]);
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

static int write_generation_config(const char *dir, const struct loom_model_config *cfg)
{
    json_t *g = json_object();
    if (cfg->bos_token_id >= 0) json_object_set_new(g, "bos_token_id", json_integer(cfg->bos_token_id));
    if (cfg->n_eos > 0)
        json_object_set_new(g, "eos_token_id", token_ids_json(cfg->eos_token_ids, cfg->n_eos));
    int s = write_json(dir, "generation_config.json", g);
    json_decref(g);
    return s;
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upwards. */
static void byte_to_utf8(int b, char out[4])
{
    int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    int cp = b;
    if (!printable) {
        int k = 0; /* index of b among the non-printable bytes */
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || (x >= 0xae && x <= 0xff))) k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xc0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3f));
        out[2] = 0;
    }
}

static const char *const special_tokens[3] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

static json_t *added_token(int id, const char *content)
{
    json_t *t = json_object();
    if (id >= 0) json_object_set_new(t, "id", json_integer(id));
    json_object_set_new(t, "content", json_string(content));
    json_object_set_new(t, "single_word", json_false());
    json_object_set_new(t, "lstrip", json_false());
    json_object_set_new(t, "rstrip", json_false());
    json_object_set_new(t, "normalized", json_false());
    json_object_set_new(t, "special", json_true());
    return t;
}

static json_t *byte_level(bool use_regex)
{
    json_t *b = json_object();
    json_object_set_new(b, "type", json_string("ByteLevel"));
    json_object_set_new(b, "add_prefix_space", json_false());
    json_object_set_new(b, "trim_offsets", json_false());
    json_object_set_new(b, "use_regex", use_regex ? json_true() : json_false());
    return b;
}

/* The Qwen2.5 chat template without the tools preamble (tool calls and results still render). */
static const char chatml_template[] =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n"
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n";

/* The Qwen2 pre-tokenizer split, so text splits the way a real byte-level BPE model splits it. */
static const char qwen2_split_regex[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                        "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                                        "\\s+(?!\\S)|\\s+";

static int write_byte_level_tokenizer(const char *dir, const struct loom_model_config *cfg)
{
    json_t *tok = json_object();
    json_object_set_new(tok, "version", json_string("1.0"));
    json_object_set_new(tok, "truncation", json_null());
    json_object_set_new(tok, "padding", json_null());
    json_t *added = json_array();
    for (int i = 0; i < 3; i++) json_array_append_new(added, added_token(256 + i, special_tokens[i]));
    json_object_set_new(tok, "added_tokens", added);
    json_object_set_new(tok, "normalizer", json_null());

    json_t *split = json_object(), *pattern = json_object();
    json_object_set_new(split, "type", json_string("Split"));
    json_object_set_new(pattern, "Regex", json_string(qwen2_split_regex));
    json_object_set_new(split, "pattern", pattern);
    json_object_set_new(split, "behavior", json_string("Isolated"));
    json_object_set_new(split, "invert", json_false());
    json_t *seq = json_object(), *pre = json_array();
    json_array_append_new(pre, split);
    json_array_append_new(pre, byte_level(false));
    json_object_set_new(seq, "type", json_string("Sequence"));
    json_object_set_new(seq, "pretokenizers", pre);
    json_object_set_new(tok, "pre_tokenizer", seq);
    json_object_set_new(tok, "post_processor", byte_level(false));
    json_object_set_new(tok, "decoder", byte_level(false));

    json_t *model = json_object(), *vocab = json_object();
    json_object_set_new(model, "type", json_string("BPE"));
    json_object_set_new(model, "dropout", json_null());
    json_object_set_new(model, "unk_token", json_null());
    json_object_set_new(model, "continuing_subword_prefix", json_string(""));
    json_object_set_new(model, "end_of_word_suffix", json_string(""));
    json_object_set_new(model, "fuse_unk", json_false());
    json_object_set_new(model, "byte_fallback", json_false());
    json_object_set_new(model, "ignore_merges", json_false());
    for (int b = 0; b < 256; b++) {
        char u[4];
        byte_to_utf8(b, u);
        json_object_set_new(vocab, u, json_integer(b));
    }
    json_object_set_new(model, "vocab", vocab);
    json_object_set_new(model, "merges", json_array());
    json_object_set_new(tok, "model", model);
    int s = write_json(dir, "tokenizer.json", tok);
    json_decref(tok);
    if (s) return s;

    json_t *tc = json_object(), *dec = json_object(), *extra = json_array();
    json_object_set_new(tc, "add_bos_token", json_false());
    json_object_set_new(tc, "add_prefix_space", json_false());
    for (int i = 0; i < 3; i++) {
        char id[8];
        snprintf(id, sizeof(id), "%d", 256 + i);
        json_object_set_new(dec, id, added_token(-1, special_tokens[i]));
    }
    json_object_set_new(tc, "added_tokens_decoder", dec);
    json_array_append_new(extra, json_string("<|im_start|>"));
    json_array_append_new(extra, json_string("<|im_end|>"));
    json_object_set_new(tc, "additional_special_tokens", extra);
    json_object_set_new(tc, "bos_token", json_null());
    json_object_set_new(tc, "chat_template", json_string(chatml_template));
    json_object_set_new(tc, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(tc, "eos_token", json_string("<|im_end|>"));
    json_object_set_new(tc, "errors", json_string("replace"));
    json_object_set_new(tc, "model_max_length", json_integer(cfg->max_position_embeddings));
    json_object_set_new(tc, "pad_token", json_string("<|endoftext|>"));
    json_object_set_new(tc, "split_special_tokens", json_false());
    json_object_set_new(tc, "tokenizer_class", json_string("PreTrainedTokenizerFast"));
    json_object_set_new(tc, "unk_token", json_null());
    s = write_json(dir, "tokenizer_config.json", tc);
    json_decref(tc);
    return s;
}

/* ---------------------------------------------------------------------------------------------- */

static int make_dirs(const char *path)
{
    char *p = loom_strdup(path);
    for (char *q = p + 1; *q; q++) {
        if (*q != '/') continue;
        *q = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int s = loom_fail(LOOM_EIO, "cannot create %s: %s", p, strerror(errno));
            free(p);
            return s;
        }
        *q = '/';
    }
    int s = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        s = loom_fail(LOOM_EIO, "cannot create %s: %s", p, strerror(errno));
    free(p);
    return s;
}

/* initializer_range from the config text (hf_config.h does not carry it); default 0.02 */
static int read_init_range(const char *text, size_t len, float *std)
{
    json_t *root = json_loadb(text, len, 0, NULL);
    *std = 0.02f;
    json_t *v = root ? json_object_get(root, "initializer_range") : NULL;
    int s = 0;
    if (v && !json_is_null(v)) {
        if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 10))
            s = loom_fail(LOOM_EINVAL, "config.json: \"initializer_range\" must be a number in (0, 10]");
        else
            *std = (float)json_number_value(v);
    }
    json_decref(root);
    return s;
}

static int make_model(const char *config_path, const char *out_dir, uint64_t seed, const char *dtype_flag,
                      bool tokenizer, long long max_shard)
{
    char *text;
    size_t len;
    int s = loom_read_file(config_path, &text, &len);
    if (s) return s;
    struct loom_model_config cfg;
    float std = 0.02f;
    s = loom_hf_config_parse(text, len, &cfg);
    if (s) loom_fail_context(s, "%s", config_path);
    if (!s) s = read_init_range(text, len, &std);
    struct loom_weight_spec *specs = NULL;
    int n = 0;
    if (!s) s = loom_arch_weights(&cfg, &specs, &n);
    enum loom_dtype dt = cfg.torch_dtype;
    if (!s && dtype_flag && strcmp(dtype_flag, "auto")) {
        if (!strcmp(dtype_flag, "bfloat16"))
            dt = LOOM_DTYPE_BF16;
        else if (!strcmp(dtype_flag, "float16"))
            dt = LOOM_DTYPE_F16;
        else if (!strcmp(dtype_flag, "float32"))
            dt = LOOM_DTYPE_F32;
        else
            s = loom_fail(LOOM_EINVAL, "--dtype: expected bfloat16, float16 or float32, got '%s'",
                          dtype_flag);
    }
    if (!s && dt != LOOM_DTYPE_F32 && dt != LOOM_DTYPE_F16 && dt != LOOM_DTYPE_BF16)
        s = loom_fail(LOOM_EUNSUPPORTED, "the config's torch_dtype %s cannot be written; pass --dtype",
                      loom_dtype_name(dt));
    if (!s && tokenizer && cfg.vocab_size < 259)
        s = loom_fail(
            LOOM_EINVAL,
            "--tokenizer byte-level needs vocab_size >= 259 (256 bytes + 3 special tokens), the config "
            "has %d",
            cfg.vocab_size);
    if (!s) s = make_dirs(out_dir);
    if (s) {
        free(text);
        free(specs);
        return s;
    }

    /* config.json (a byte copy), generation_config.json */
    char *cfg_out = loom_path_join(out_dir, "config.json");
    s = loom_write_file(cfg_out, text, len);
    free(cfg_out);
    free(text);
    if (!s) s = write_generation_config(out_dir, &cfg);
    if (!s && tokenizer) s = write_byte_level_tokenizer(out_dir, &cfg);

    /* shard plan: consecutive tensors while the shard stays under max_shard (a bigger tensor goes alone) */
    const size_t esize = loom_dtype_size(dt);
    struct shard *shards = loom_calloc((size_t)n, sizeof(*shards));
    int ns = 0;
    long long total = 0;
    for (int i = 0; i < n; i++) {
        int64_t nb = spec_numel(&specs[i]) * (int64_t)esize;
        if (ns == 0 || (shards[ns - 1].bytes > 0 && shards[ns - 1].bytes + nb > max_shard)) {
            shards[ns].first = i;
            ns++;
        }
        shards[ns - 1].count++;
        shards[ns - 1].bytes += nb;
        total += nb;
    }
    for (int k = 0; k < ns; k++) {
        if (ns == 1)
            snprintf(shards[k].file, sizeof(shards[k].file), "model.safetensors");
        else
            snprintf(shards[k].file, sizeof(shards[k].file), "model-%05d-of-%05d.safetensors", k + 1, ns);
    }
    /* a stale index or single file from an earlier run with another shard count would confuse loaders */
    char *stale = loom_path_join(out_dir, ns == 1 ? "model.safetensors.index.json" : "model.safetensors");
    unlink(stale);
    free(stale);

    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int threads = cpus < 1 ? 1 : cpus > 64 ? 64 : (int)cpus;
    void *bufs[2] = {loom_malloc((size_t)CHUNK_ELEMS * esize), loom_malloc((size_t)CHUNK_ELEMS * esize)};
    struct loom_progress prog;
    long long done = 0;
    double t0 = loom_now();
    loom_progress_begin(&prog, "make-model", total);
    for (int k = 0; k < ns && !s; k++) {
        char *path = loom_path_join(out_dir, shards[k].file);
        s = write_shard(path, specs, &shards[k], dt, seed, std, threads, bufs, &prog, &done);
        free(path);
    }
    free(bufs[0]);
    free(bufs[1]);
    if (!s) loom_progress_end(&prog);

    if (!s && ns > 1) {
        json_t *idx = json_object(), *meta = json_object(), *wm = json_object();
        json_object_set_new(meta, "total_size", json_integer(total));
        json_object_set_new(idx, "metadata", meta);
        for (int k = 0; k < ns; k++)
            for (int i = shards[k].first; i < shards[k].first + shards[k].count; i++)
                json_object_set_new(wm, specs[i].name, json_string(shards[k].file));
        json_object_set_new(idx, "weight_map", wm);
        s = write_json(out_dir, "model.safetensors.index.json", idx);
        json_decref(idx);
    }
    if (!s)
        fprintf(stderr, "loom: wrote %s (%s, %d tensors, %.2f GB %s in %d file%s) to %s in %.1fs\n",
                loom_arch_name(cfg.arch), config_path, n, (double)total / 1e9, loom_dtype_name(dt), ns,
                ns == 1 ? "" : "s", out_dir, loom_now() - t0);
    free(shards);
    free(specs);
    return s;
}

int loom_cmd_make_model(int argc, char **argv)
{
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    uint64_t seed = 0;
    const char *dtype = NULL;
    bool tokenizer = false;
    long long max_shard = DEFAULT_SHARD_BYTES, x;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 0, (long long)9e18, &x)) return 2;
            seed = (uint64_t)x;
        } else if (!strcmp(a, "--dtype")) {
            if (!(v = loom_cli_value(argc, argv, &i))) return 2;
            if (strcmp(v, "auto") && strcmp(v, "bfloat16") && strcmp(v, "float16") && strcmp(v, "float32")) {
                fprintf(stderr, "loom: --dtype: expected auto, bfloat16, float16 or float32, got '%s'\n", v);
                return 2;
            }
            dtype = v;
        } else if (!strcmp(a, "--tokenizer")) {
            if (!(v = loom_cli_value(argc, argv, &i))) return 2;
            if (strcmp(v, "byte-level")) {
                fprintf(stderr, "loom: --tokenizer: the only kind is byte-level, got '%s'\n", v);
                return 2;
            }
            tokenizer = true;
        } else if (!strcmp(a, "--max-shard-size")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, (long long)1e15, &max_shard))
                return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom: make-model: unknown flag '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, "loom: make-model: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (npos != 2) {
        usage(stderr);
        return 2;
    }
    if (make_model(pos[0], pos[1], seed, dtype, tokenizer, max_shard) != 0) {
        fprintf(stderr, "loom: make-model: %s\n", loom_last_error());
        return 1;
    }
    return 0;
}
