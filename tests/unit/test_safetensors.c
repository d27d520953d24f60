/*
 * test_safetensors.c: the safetensors reader against every model in ../shared/models (tensor names,
 * shapes and dtypes checked against model/arch.c's spec list and the config; spot values checked
 * against bytes read with Python), the writer's round trip, the streaming writer (the same bytes; too
 * many or too few refused), and malformed files and sharded folders built in a temp dir, each of which
 * must fail with a message, never crash.
 */
#include "core/error.h"
#include "core/util.h"
#include "format/hf_config.h"
#include "format/safetensors.h"
#include "model/arch.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static uint16_t u16_at(const void *p, int i)
{
    uint16_t v;
    memcpy(&v, (const uint8_t *)p + 2 * i, 2);
    return v;
}

static int32_t i32_at(const void *p, int i)
{
    int32_t v;
    memcpy(&v, (const uint8_t *)p + 4 * i, 4);
    return v;
}

/* Opens a model folder and checks it tensor by tensor against the arch spec list of its config. */
static void check_model(const char *rel, int expect_count, enum loom_dtype expect_dtype)
{
    const char *dir = test_shared(rel);
    struct loom_model_config cfg;
    int s = loom_hf_config_load(dir, &cfg);
    CHECK_MSG(s == 0, "%s: %s", rel, loom_last_error());
    if (s) return;
    struct loom_safetensors *st;
    s = loom_safetensors_open(dir, &st);
    CHECK_MSG(s == 0, "%s: %s", rel, loom_last_error());
    if (s) return;
    struct loom_weight_spec *specs;
    int n;
    CHECK(loom_arch_weights(&cfg, &specs, &n) == 0);
    CHECK_EQ_INT(n, expect_count);
    CHECK_EQ_INT(loom_safetensors_count(st), expect_count);
    CHECK_EQ_INT(cfg.torch_dtype, expect_dtype);
    /* every spec is in the file with its exact shape, and the dtype the config names */
    for (int i = 0; i < n; i++) {
        const struct loom_st_tensor *t = loom_safetensors_find(st, specs[i].name);
        CHECK_MSG(t != NULL, "%s: %s missing from the file", rel, specs[i].name);
        if (!t) continue;
        CHECK_MSG(t->ndim == specs[i].ndim && t->shape[0] == specs[i].shape[0] &&
                      (specs[i].ndim == 1 || t->shape[1] == specs[i].shape[1]),
                  "%s: %s shape [%lld, %lld] vs spec [%lld, %lld]", rel, specs[i].name,
                  (long long)t->shape[0], (long long)t->shape[1], (long long)specs[i].shape[0],
                  (long long)specs[i].shape[1]);
        CHECK_MSG(t->dtype == expect_dtype, "%s: %s dtype %s", rel, t->name, loom_dtype_name(t->dtype));
        CHECK_EQ_INT(t->nbytes, t->numel * (int64_t)loom_dtype_size(t->dtype));
        CHECK_EQ_INT(t->numel, specs[i].shape[0] * (specs[i].ndim == 2 ? specs[i].shape[1] : 1));
    }
    /* and every tensor of the file is a spec (the counts match, and the names are distinct) */
    for (int i = 0; i < loom_safetensors_count(st); i++) {
        const struct loom_st_tensor *t = loom_safetensors_at(st, i);
        bool found = false;
        for (int k = 0; k < n && !found; k++) found = !strcmp(specs[k].name, t->name);
        CHECK_MSG(found, "%s: file tensor %s is not in the arch spec", rel, t->name);
        CHECK(loom_safetensors_find(st, t->name) == t);
    }
    /* config facts the tensors must agree with */
    const struct loom_st_tensor *emb = loom_safetensors_find(st, "model.embed_tokens.weight");
    CHECK(emb && emb->shape[0] == cfg.vocab_size && emb->shape[1] == cfg.hidden_size);
    CHECK((loom_safetensors_find(st, "lm_head.weight") == NULL) == cfg.tie_word_embeddings);
    CHECK(loom_safetensors_find(st, "model.layers.0.self_attn.nope.weight") == NULL);
    free(specs);
    loom_safetensors_close(st);
}

static void test_shared_models(void)
{
    check_model("models/llama-tiny", 2 * 9 + 3, LOOM_DTYPE_BF16);
    check_model("models/llama31-tiny-sharded", 3 * 9 + 3, LOOM_DTYPE_BF16);
    check_model("models/mistral-tiny-f16", 2 * 9 + 3, LOOM_DTYPE_F16);
    check_model("models/mixtral-tiny", 2 * (6 + 1 + 4 * 3) + 3, LOOM_DTYPE_BF16);
    check_model("models/qwen2-tiny", 3 * 12 + 2, LOOM_DTYPE_BF16);
    check_model("models/qwen2-tiny-151k", 2 * 12 + 2, LOOM_DTYPE_BF16);
    check_model("models/qwen3-tiny", 2 * 11 + 2, LOOM_DTYPE_BF16);
    check_model("models/stories260K", 5 * 9 + 2, LOOM_DTYPE_F32);

    /* values: bytes read independently with Python's struct module */
    struct loom_safetensors *st;
    CHECK(loom_safetensors_open(test_shared("models/llama-tiny"), &st) == 0);
    const struct loom_st_tensor *t = loom_safetensors_find(st, "model.norm.weight");
    CHECK(t && t->dtype == LOOM_DTYPE_BF16 && t->ndim == 1 && t->shape[0] == 128);
    if (t) {
        CHECK_EQ_INT(u16_at(t->data, 0), 0x3f70);
        CHECK_EQ_INT(u16_at(t->data, 3), 0x3f97);
    }
    t = loom_safetensors_find(st, "model.embed_tokens.weight");
    if (t) {
        CHECK_EQ_INT(u16_at(t->data, 0), 0x3e8f);
        CHECK_EQ_INT(u16_at(t->data, 1), 0xbff0);
        CHECK_EQ_INT(u16_at(t->data, 2), 0x3fbb);
    }
    loom_safetensors_close(st);

    /* the sharded folder: a tensor from the third shard */
    CHECK(loom_safetensors_open(test_shared("models/llama31-tiny-sharded"), &st) == 0);
    t = loom_safetensors_find(st, "model.layers.1.mlp.down_proj.weight");
    CHECK(t && t->shape[0] == 128 && t->shape[1] == 320);
    if (t) {
        CHECK_EQ_INT(u16_at(t->data, 0), 0x3d97);
        CHECK_EQ_INT(u16_at(t->data, 3), 0xbd0b);
    }
    loom_safetensors_close(st);

    CHECK(loom_safetensors_open(test_shared("models/mistral-tiny-f16"), &st) == 0);
    t = loom_safetensors_find(st, "model.layers.1.self_attn.k_proj.weight");
    CHECK(t && t->dtype == LOOM_DTYPE_F16 && t->shape[0] == 32 && t->shape[1] == 128);
    if (t) {
        CHECK_EQ_INT(u16_at(t->data, 0), 0x2879);
        CHECK_EQ_INT(u16_at(t->data, 3), 0x300e);
    }
    loom_safetensors_close(st);

    /* a single file by path: golden.safetensors, ids as int32 */
    CHECK(loom_safetensors_open(test_shared("models/llama-tiny/golden.safetensors"), &st) == 0);
    CHECK_EQ_INT(loom_safetensors_count(st), 16);
    t = loom_safetensors_find(st, "p1.ids");
    CHECK(t && t->dtype == LOOM_DTYPE_I32 && t->ndim == 1 && t->shape[0] == 7 && t->nbytes == 28);
    if (t) {
        static const int32_t want[7] = {198, 141, 403, 308, 327, 382, 134};
        for (int i = 0; i < 7; i++) CHECK_EQ_INT(i32_at(t->data, i), want[i]);
    }
    t = loom_safetensors_find(st, "p0.ids");
    CHECK(t && t->numel == 1 && i32_at(t->data, 0) == 383);
    t = loom_safetensors_find(st, "p0.greedy");
    CHECK(t && t->numel == 24 && i32_at(t->data, 0) == 451 && i32_at(t->data, 4) == 140);
    t = loom_safetensors_find(st, "p3.logits");
    CHECK(t && t->dtype == LOOM_DTYPE_F32 && t->ndim == 2 && t->shape[0] == 200 && t->shape[1] == 512);
    loom_safetensors_close(st);
}

/* ---------------------------------------------------------------------------------------------- */

static void test_writer_round_trip(void)
{
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    uint16_t b[4] = {0x3f80, 0xc000, 0x0000, 0x7f80};
    int64_t c[1] = {-5};
    struct loom_st_tensor ts[4] = {
        {.name = "a.weight", .dtype = LOOM_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .numel = 6, .data = a},
        {.name = "b", .dtype = LOOM_DTYPE_BF16, .ndim = 1, .shape = {4}, .numel = 4, .data = b},
        {.name = "scalar", .dtype = LOOM_DTYPE_I64, .ndim = 0, .numel = 1, .data = c},
        {.name = "empty", .dtype = LOOM_DTYPE_F16, .ndim = 2, .shape = {0, 5}, .numel = 0, .data = NULL},
    };
    char path[512];
    snprintf(path, sizeof(path), "%s/rt.safetensors", tmpdir);
    CHECK(loom_safetensors_write(path, ts, 4, "{\"format\":\"pt\"}") == 0);

    char *raw;
    size_t len;
    CHECK(loom_read_file(path, &raw, &len) == 0);
    uint64_t hlen = 0;
    memcpy(&hlen, raw, 8);
    CHECK_EQ_INT(hlen % 8, 0);
    CHECK_EQ_INT(len, 8 + hlen + 24 + 8 + 8);
    CHECK(raw[8] == '{');
    CHECK(raw[8 + hlen - 1] == ' ' || raw[8 + hlen - 1] == '}');
    struct loom_st_header h;
    CHECK(loom_st_header_parse((const uint8_t *)raw, len, &h) == 0);
    CHECK_EQ_INT(h.n_tensors, 4);
    CHECK_EQ_STR(h.metadata_json, "{\"format\":\"pt\"}");
    loom_st_header_free(&h);
    free(raw);

    struct loom_safetensors *st;
    CHECK(loom_safetensors_open(path, &st) == 0);
    CHECK_EQ_INT(loom_safetensors_count(st), 4);
    CHECK_EQ_STR(loom_safetensors_at(st, 0)->name, "a.weight"); /* file order is kept */
    const struct loom_st_tensor *t = loom_safetensors_find(st, "a.weight");
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->nbytes == 24 &&
          !memcmp(t->data, a, sizeof(a)));
    t = loom_safetensors_find(st, "b");
    CHECK(t && t->dtype == LOOM_DTYPE_BF16 && !memcmp(t->data, b, sizeof(b)));
    t = loom_safetensors_find(st, "scalar");
    CHECK(t && t->ndim == 0 && t->numel == 1 && t->nbytes == 8 && !memcmp(t->data, c, 8));
    t = loom_safetensors_find(st, "empty");
    CHECK(t && t->ndim == 2 && t->numel == 0 && t->nbytes == 0);
    loom_safetensors_close(st);

    /* bad metadata and a repeated name are refused */
    CHECK(loom_safetensors_write(path, ts, 1, "[1]") == LOOM_EINVAL);
    struct loom_st_tensor twice[2] = {ts[0], ts[0]};
    CHECK(loom_safetensors_write(path, twice, 2, NULL) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "a.weight") != NULL);
}

/* The streaming writer: pieces of any size give the same bytes as loom_safetensors_write; too many
 * or too few bytes fail with a message naming the file and the byte counts. */
static void test_stream_writer(void)
{
    float a[6] = {1, -2, 3.5f, 0, 1e-3f, -7};
    uint16_t b[4] = {0x3f80, 0xc000, 0x0000, 0x7f80};
    struct loom_st_tensor ts[3] = {
        {.name = "a.weight", .dtype = LOOM_DTYPE_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "empty", .dtype = LOOM_DTYPE_F16, .ndim = 2, .shape = {0, 5}, .data = NULL},
        {.name = "b", .dtype = LOOM_DTYPE_BF16, .ndim = 1, .shape = {4}, .data = b},
    };
    uint8_t all[32];
    memcpy(all, a, 24);
    memcpy(all + 24, b, 8);
    char whole[512], path[512];
    snprintf(whole, sizeof(whole), "%s/whole.safetensors", tmpdir);
    snprintf(path, sizeof(path), "%s/stream.safetensors", tmpdir);
    CHECK(loom_safetensors_write(whole, ts, 3, "{\"format\":\"pt\"}") == 0);

    /* specs only (data ignored), data in pieces that cross tensor boundaries: 5 + 0 + 22 + 5 bytes */
    struct loom_st_tensor specs[3] = {ts[0], ts[1], ts[2]};
    for (int i = 0; i < 3; i++) specs[i].data = NULL;
    struct loom_st_writer *w;
    int s = loom_st_writer_open(path, specs, 3, "{\"format\":\"pt\"}", &w);
    CHECK_MSG(s == 0, "open: %s", loom_last_error());
    if (s) return;
    CHECK(loom_st_writer_write(w, all, 5) == 0);
    CHECK(loom_st_writer_write(w, all + 5, 0) == 0);
    CHECK(loom_st_writer_write(w, all + 5, 22) == 0);
    CHECK(loom_st_writer_write(w, all + 27, 5) == 0);
    s = loom_st_writer_close(w);
    CHECK_MSG(s == 0, "close: %s", loom_last_error());

    char *r1, *r2;
    size_t l1, l2;
    CHECK(loom_read_file(whole, &r1, &l1) == 0);
    CHECK(loom_read_file(path, &r2, &l2) == 0);
    CHECK(l1 == l2 && !memcmp(r1, r2, l1)); /* byte-identical to the whole-file writer */
    uint64_t hlen = 0;
    memcpy(&hlen, r2, 8);
    CHECK_EQ_INT(hlen % 8, 0);
    CHECK_EQ_INT(l2, 8 + hlen + 32);
    free(r1);
    free(r2);

    struct loom_safetensors *st;
    s = loom_safetensors_open(path, &st);
    CHECK_MSG(s == 0, "reopen: %s", loom_last_error());
    if (!s) {
        CHECK_EQ_INT(loom_safetensors_count(st), 3);
        CHECK_EQ_STR(loom_safetensors_at(st, 2)->name, "b");
        const struct loom_st_tensor *t = loom_safetensors_find(st, "a.weight");
        CHECK(t && t->dtype == LOOM_DTYPE_F32 && t->nbytes == 24 && !memcmp(t->data, a, 24));
        t = loom_safetensors_find(st, "b");
        CHECK(t && t->dtype == LOOM_DTYPE_BF16 && t->nbytes == 8 && !memcmp(t->data, b, 8));
        t = loom_safetensors_find(st, "empty");
        CHECK(t && t->numel == 0 && t->nbytes == 0);
        loom_safetensors_close(st);
    }

    /* too many bytes: the write that passes the end fails, so do later writes and close */
    snprintf(path, sizeof(path), "%s/over.safetensors", tmpdir);
    CHECK(loom_st_writer_open(path, specs, 3, NULL, &w) == 0);
    CHECK(loom_st_writer_write(w, all, 30) == 0);
    s = loom_st_writer_write(w, all, 3);
    CHECK_EQ_INT(s, LOOM_EINVAL);
    CHECK_MSG(strstr(loom_last_error(), "over.safetensors") && strstr(loom_last_error(), "32 bytes"),
              "message: %s", loom_last_error());
    CHECK_EQ_INT(loom_st_writer_write(w, all, 2), LOOM_EINVAL); /* would fit, but the writer has failed */
    CHECK_EQ_INT(loom_st_writer_close(w), LOOM_EINVAL);

    /* too few bytes: close fails, and the truncated file does not open */
    snprintf(path, sizeof(path), "%s/under.safetensors", tmpdir);
    CHECK(loom_st_writer_open(path, specs, 3, NULL, &w) == 0);
    CHECK(loom_st_writer_write(w, all, 31) == 0);
    s = loom_st_writer_close(w);
    CHECK_EQ_INT(s, LOOM_EINVAL);
    CHECK_MSG(strstr(loom_last_error(), "under.safetensors") && strstr(loom_last_error(), "31 of the 32"),
              "message: %s", loom_last_error());
    if (getenv("LOOM_TEST_VERBOSE")) printf("too few bytes: %s\n", loom_last_error());
    CHECK(loom_safetensors_open(path, &st) == LOOM_EINVAL);

    /* open refuses what loom_safetensors_write refuses, creating no writer */
    struct loom_st_tensor twice[2] = {specs[0], specs[0]};
    w = (struct loom_st_writer *)1;
    CHECK_EQ_INT(loom_st_writer_open(path, twice, 2, NULL, &w), LOOM_EINVAL);
    CHECK(w == NULL);
    CHECK(strstr(loom_last_error(), "a.weight") != NULL);
    CHECK_EQ_INT(loom_st_writer_open(path, specs, 3, "[1]", &w), LOOM_EINVAL);
    snprintf(path, sizeof(path), "%s/no/such/dir/x.safetensors", tmpdir);
    CHECK_EQ_INT(loom_st_writer_open(path, specs, 3, NULL, &w), LOOM_EIO);
    CHECK(strstr(loom_last_error(), "no/such/dir") != NULL);
    CHECK_EQ_INT(loom_st_writer_close(NULL), 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Malformed files */

/* Writes 8-byte length + header + `data_len` bytes of data to dir/name. hlen_override >= 0 replaces the
 * length. */
static char *write_raw(const char *name, const char *header, size_t data_len, int64_t hlen_override)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    size_t hl = strlen(header);
    uint64_t hv = hlen_override >= 0 ? (uint64_t)hlen_override : hl;
    size_t total = 8 + hl + data_len;
    uint8_t *buf = calloc(1, total);
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(hv >> (8 * i));
    memcpy(buf + 8, header, hl);
    for (size_t i = 0; i < data_len; i++) buf[8 + hl + i] = (uint8_t)i;
    FILE *f = fopen(path, "wb");
    fwrite(buf, 1, total, f);
    fclose(f);
    free(buf);
    return path;
}

/* Opening must fail with `status`, and the message must mention the file and `needle`. */
static void expect_bad(const char *what, const char *path, int status, const char *needle)
{
    struct loom_safetensors *st = (struct loom_safetensors *)1;
    loom_clear_error();
    int s = loom_safetensors_open(path, &st);
    CHECK_MSG(s == status, "%s: status %d, expected %d (%s)", what, s, status, loom_last_error());
    CHECK_MSG(st == NULL, "%s: handle not cleared", what);
    if (getenv("LOOM_TEST_VERBOSE")) printf("%-28s %s\n", what, loom_last_error());
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    CHECK_MSG(strstr(loom_last_error(), base) != NULL, "%s: message does not name %s: %s", what, base,
              loom_last_error());
    if (needle)
        CHECK_MSG(strstr(loom_last_error(), needle) != NULL, "%s: message lacks '%s': %s", what, needle,
                  loom_last_error());
    if (s == 0) loom_safetensors_close(st);
}

static void test_malformed(void)
{
    const char *ok = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
    struct loom_safetensors *st;
    CHECK(loom_safetensors_open(write_raw("ok.safetensors", ok, 16, -1), &st) == 0);
    if (st) loom_safetensors_close(st);

    expect_bad("empty header", write_raw("short.safetensors", "", 0, -1), LOOM_EINVAL, "too short");
    {
        char path[512];
        snprintf(path, sizeof(path), "%s/tiny.safetensors", tmpdir);
        CHECK(loom_write_file(path, "\x10\0\0", 3) == 0);
        expect_bad("3-byte file", path, LOOM_EINVAL, "too short");
    }
    expect_bad("truncated data", write_raw("trunc.safetensors", ok, 10, -1), LOOM_EINVAL, "'w'");
    expect_bad("header length past the end", write_raw("hlen.safetensors", ok, 16, 100000), LOOM_EINVAL,
               "larger than the rest");
    expect_bad("header length huge", write_raw("hhuge.safetensors", ok, 16, (int64_t)1 << 40), LOOM_EINVAL,
               "100 MB");
    expect_bad("offsets past the end",
               write_raw("past.safetensors",
                         "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}", 16, -1),
               LOOM_EINVAL, "'w'");
    expect_bad("begin after end",
               write_raw("rev.safetensors",
                         "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", 16, -1),
               LOOM_EINVAL, "'w'");
    expect_bad("overlap",
               write_raw("overlap.safetensors",
                         "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                         16, -1),
               LOOM_EINVAL, "overlap");
    expect_bad("shape/size mismatch",
               write_raw("size.safetensors",
                         "{\"w\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", 16, -1),
               LOOM_EINVAL, "'w'");
    expect_bad("bad dtype",
               write_raw("dtype.safetensors",
                         "{\"w\":{\"dtype\":\"Q4_K\",\"shape\":[2],\"data_offsets\":[0,2]}}", 16, -1),
               LOOM_EINVAL, "Q4_K");
    expect_bad(
        "dtype not a string",
        write_raw("dtype2.safetensors", "{\"w\":{\"dtype\":7,\"shape\":[2],\"data_offsets\":[0,8]}}", 16, -1),
        LOOM_EINVAL, "dtype");
    expect_bad("negative dim",
               write_raw("neg.safetensors",
                         "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 16, -1),
               LOOM_EINVAL, "shape");
    expect_bad(
        "shape overflow",
        write_raw("ovf.safetensors",
                  "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}", 16,
                  -1),
        LOOM_EINVAL, "overflow");
    expect_bad("too many dims",
               write_raw("dims.safetensors",
                         "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                         16, -1),
               LOOM_EINVAL, "dimensions");
    expect_bad("duplicate name",
               write_raw("dup.safetensors",
                         "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                         "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                         16, -1),
               LOOM_EINVAL, "\"w\"");
    expect_bad("non-object header", write_raw("arr.safetensors", "[1, 2, 3]", 16, -1), LOOM_EINVAL, "object");
    expect_bad("entry not an object", write_raw("ent.safetensors", "{\"w\": 5}", 16, -1), LOOM_EINVAL, "'w'");
    expect_bad("not JSON", write_raw("json.safetensors", "{\"w\":{\"dtype\":", 16, -1), LOOM_EINVAL, "JSON");
    expect_bad("offsets not a pair",
               write_raw("pair.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}",
                         16, -1),
               LOOM_EINVAL, "data_offsets");
    expect_bad("metadata not an object", write_raw("meta.safetensors", "{\"__metadata__\": 3}", 16, -1),
               LOOM_EINVAL, "__metadata__");
    expect_bad("missing file", "/nonexistent-dir-for-loom/x.safetensors", LOOM_ENOTFOUND, NULL);

    /* zero-sized tensors may sit anywhere, even inside another tensor's bytes */
    CHECK(loom_safetensors_open(write_raw("zero.safetensors",
                                          "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                                          "\"z\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[8,8]},"
                                          "\"__metadata__\":{\"k\":\"v\"}}    ",
                                          16, -1),
                                &st) == 0);
    if (st) {
        CHECK_EQ_INT(loom_safetensors_count(st), 2);
        loom_safetensors_close(st);
    }

    /* the header parser on its own: no crash on any prefix of a valid file */
    char *raw;
    size_t len;
    CHECK(loom_read_file(test_shared("models/llama-tiny/model.safetensors"), &raw, &len) == 0);
    int ok_prefixes = 0;
    for (size_t cut = 0; cut < 3000; cut += 7) {
        struct loom_st_header h;
        if (loom_st_header_parse((const uint8_t *)raw, cut, &h) == 0) {
            ok_prefixes++;
            loom_st_header_free(&h);
        } else {
            CHECK(h.tensors == NULL && h.n_tensors == 0);
        }
    }
    CHECK_EQ_INT(ok_prefixes, 0);
    free(raw);
}

/* ---------------------------------------------------------------------------------------------- */
/* Sharded folders */

static const char *make_dir(const char *name)
{
    static char path[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    mkdir(path, 0755);
    return path;
}

static void put(const char *dir, const char *name, const char *text)
{
    char *p = loom_path_join(dir, name);
    CHECK(loom_write_file(p, text, strlen(text)) == 0);
    free(p);
}

static void write_shard(const char *dir, const char *name, const char *tensor_name)
{
    float v[2] = {1, 2};
    struct loom_st_tensor t = {
        .name = tensor_name, .dtype = LOOM_DTYPE_F32, .ndim = 1, .shape = {2}, .numel = 2, .data = v};
    char *p = loom_path_join(dir, name);
    CHECK(loom_safetensors_write(p, &t, 1, "{\"format\":\"pt\"}") == 0);
    free(p);
}

static void expect_bad_dir(const char *what, const char *dir, int status, const char *n1, const char *n2)
{
    struct loom_safetensors *st = NULL;
    int s = loom_safetensors_open(dir, &st);
    CHECK_MSG(s == status, "%s: status %d, expected %d (%s)", what, s, status, loom_last_error());
    CHECK(st == NULL);
    if (getenv("LOOM_TEST_VERBOSE")) printf("%-28s %s\n", what, loom_last_error());
    if (n1)
        CHECK_MSG(strstr(loom_last_error(), n1) != NULL, "%s: no '%s' in: %s", what, n1, loom_last_error());
    if (n2)
        CHECK_MSG(strstr(loom_last_error(), n2) != NULL, "%s: no '%s' in: %s", what, n2, loom_last_error());
    if (s == 0) loom_safetensors_close(st);
}

static void test_shards(void)
{
    const char *idx =
        "{\"metadata\":{\"total_size\":16},\"weight_map\":{\"x.weight\":\"model-00001-of-00002.safetensors\","
        "\"y.weight\":\"model-00002-of-00002.safetensors\"}}";
    /* a good two-shard folder */
    const char *d = make_dir("good");
    write_shard(d, "model-00001-of-00002.safetensors", "x.weight");
    write_shard(d, "model-00002-of-00002.safetensors", "y.weight");
    put(d, "model.safetensors.index.json", idx);
    struct loom_safetensors *st;
    CHECK(loom_safetensors_open(d, &st) == 0);
    if (st) {
        CHECK_EQ_INT(loom_safetensors_count(st), 2);
        CHECK(loom_safetensors_find(st, "y.weight") != NULL);
        loom_safetensors_close(st);
    }

    d = make_dir("missing_shard");
    write_shard(d, "model-00001-of-00002.safetensors", "x.weight");
    put(d, "model.safetensors.index.json", idx);
    expect_bad_dir("missing shard", d, LOOM_ENOTFOUND, "model-00002-of-00002.safetensors", "y.weight");

    d = make_dir("missing_tensor");
    write_shard(d, "model-00001-of-00002.safetensors", "x.weight");
    write_shard(d, "model-00002-of-00002.safetensors", "z.weight");
    put(d, "model.safetensors.index.json", idx);
    expect_bad_dir("index names a missing tensor", d, LOOM_ENOTFOUND, "y.weight",
                   "model-00002-of-00002.safetensors");

    d = make_dir("dup_across");
    write_shard(d, "model-00001-of-00002.safetensors", "x.weight");
    write_shard(d, "model-00002-of-00002.safetensors", "x.weight");
    put(d, "model.safetensors.index.json", idx);
    expect_bad_dir("same tensor in two shards", d, LOOM_EINVAL, "x.weight",
                   "model-00002-of-00002.safetensors");

    d = make_dir("bad_index");
    write_shard(d, "model-00001-of-00002.safetensors", "x.weight");
    put(d, "model.safetensors.index.json", "{\"weight_map\": {\"x.weight\": ");
    expect_bad_dir("index not JSON", d, LOOM_EINVAL, "model.safetensors.index.json", "JSON");

    d = make_dir("index_no_map");
    put(d, "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_bad_dir("index without weight_map", d, LOOM_EINVAL, "weight_map", NULL);

    d = make_dir("index_escape");
    put(d, "model.safetensors.index.json",
        "{\"weight_map\": {\"x.weight\": \"../good/model-00001-of-00002.safetensors\"}}");
    expect_bad_dir("shard path outside the folder", d, LOOM_EINVAL, "x.weight", NULL);

    d = make_dir("bad_shard");
    write_shard(d, "model-00001-of-00002.safetensors", "x.weight");
    put(d, "model-00002-of-00002.safetensors", "garbage");
    put(d, "model.safetensors.index.json", idx);
    expect_bad_dir("corrupt shard", d, LOOM_EINVAL, "model-00002-of-00002.safetensors", NULL);

    d = make_dir("empty");
    expect_bad_dir("empty folder", d, LOOM_ENOTFOUND, "model.safetensors", NULL);
}

/* Lookups stay fast and correct with many tensors (a 1000-tensor file built here). */
static void test_many(void)
{
    enum { N = 5000 };
    struct loom_st_tensor *ts = calloc(N, sizeof(*ts));
    char(*names)[48] = calloc(N, 48);
    uint8_t byte[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], 48, "model.layers.%d.w", i);
        byte[i] = (uint8_t)i;
        ts[i] = (struct loom_st_tensor){
            .name = names[i], .dtype = LOOM_DTYPE_U8, .ndim = 1, .shape = {1}, .numel = 1, .data = &byte[i]};
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/many.safetensors", tmpdir);
    CHECK(loom_safetensors_write(path, ts, N, NULL) == 0);
    struct loom_safetensors *st;
    CHECK(loom_safetensors_open(path, &st) == 0);
    if (st) {
        CHECK_EQ_INT(loom_safetensors_count(st), N);
        int bad = 0;
        for (int i = 0; i < N; i++) {
            const struct loom_st_tensor *t = loom_safetensors_find(st, names[i]);
            if (!t || *(const uint8_t *)t->data != (uint8_t)i) bad++;
        }
        CHECK_EQ_INT(bad, 0);
        CHECK(loom_safetensors_find(st, "model.layers.5000.w") == NULL);
        loom_safetensors_close(st);
    }
    free(ts);
    free(names);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/loom_test_st_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_shared_models();
    test_writer_round_trip();
    test_stream_writer();
    test_malformed();
    test_shards();
    test_many();
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return test_report();
}
