/*
 * test_detok.c: the incremental detokenizer. For every tokenizer and every oracle text, the ids are
 * streamed one at a time (with and without skip_special_tokens, with and without the post-processor's
 * special tokens): the joined deltas must equal the full decode byte for byte, and every delta must be
 * whole UTF-8 characters. Extra texts split multi-byte characters across byte-fallback tokens (emoji,
 * CJK on the 512-token stories260K vocabulary). Also: prompt context, holding back an incomplete
 * character, flush, and an out-of-range id.
 */
#include "core/error.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

#include <jansson.h>

static bool valid_utf8(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        int l = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!l || i + (size_t)l > n) return false;
        for (int k = 1; k < l; k++)
            if (((unsigned char)s[i + (size_t)k] & 0xC0) != 0x80) return false;
        i += (size_t)l;
    }
    return true;
}

static int n_streams, n_stream_ok;

/* Streams ids[n_ctx..n) after the context ids[0..n_ctx); checks against the full decode. */
static void stream(const struct loom_tokenizer *t, const int32_t *ids, int n_ctx, int n, bool skip, const char *what)
{
    struct loom_detok d;
    loom_detok_init(&d, t, skip, ids, n_ctx);
    char *joined = malloc(1);
    size_t jl = 0;
    bool whole = true;
    for (int i = n_ctx; i <= n; i++) {
        const char *delta;
        size_t dl;
        int rc = i < n ? loom_detok_push(&d, ids[i], &delta, &dl) : loom_detok_flush(&d, &delta, &dl);
        CHECK(rc == 0);
        if (!valid_utf8(delta, dl)) whole = false;
        joined = realloc(joined, jl + dl + 1);
        memcpy(joined + jl, delta, dl);
        jl += dl;
    }
    char *full, *ctx;
    size_t fl, cl;
    CHECK(loom_tokenizer_decode(t, ids, n, skip, &full, &fl) == 0);
    CHECK(loom_tokenizer_decode(t, ids, n_ctx, skip, &ctx, &cl) == 0);
    /* with context, the deltas are the full text after the context's text */
    bool ok = fl >= cl && !memcmp(full, ctx, cl) && jl == fl - cl && !memcmp(joined, full + cl, jl);
    CHECK_MSG(ok, "%s: streamed \"%.*s\" != full \"%s\" (context \"%s\")", what, (int)jl, joined, full, ctx);
    CHECK_MSG(whole, "%s: a delta split a UTF-8 character", what);
    n_streams++;
    n_stream_ok += ok && whole;
    free(full);
    free(ctx);
    free(joined);
    loom_detok_free(&d);
}

static void stream_text(const struct loom_tokenizer *t, const char *text, const char *what)
{
    int32_t *ids;
    int n;
    CHECK(loom_tokenizer_encode(t, text, strlen(text), true, &ids, &n) == 0);
    for (int skip = 0; skip < 2; skip++) {
        stream(t, ids, 0, n, skip, what);
        /* the first half as prompt context; a prompt is text, so it ends on a whole character */
        int half = n / 2;
        for (; half < n; half++) {
            char *s;
            size_t sl;
            CHECK(loom_tokenizer_decode(t, ids, half, skip, &s, &sl) == 0);
            bool cut = sl >= 3 && !memcmp(s + sl - 3, "\xEF\xBF\xBD", 3);
            free(s);
            if (!cut) break;
        }
        if (half > 0 && half < n) stream(t, ids, half, n, skip, what);
    }
    free(ids);
}

static const char *extra[] = {
    "emoji: 😀🎉👍🏽 and 🤖 and 👨‍👩‍👧‍👦 family",
    "价格是100元。你好，世界！こんにちは世界",
    "Привет, мир! naïve café résumé",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝒳 and ancient 𐍈 gothic",
    "  leading and trailing  \n\n\ttabs\r\n",
    "<s>[INST] hi [/INST]</s><|im_start|>user\nhi<|im_end|>",
};

static void run(const char *dir, json_t *cases, const char *name)
{
    struct loom_tokenizer *t;
    int rc = loom_tokenizer_load(test_shared(dir), &t);
    CHECK_MSG(rc == 0, "%s: %s", dir, loom_last_error());
    if (rc) return;
    int before = n_streams, before_ok = n_stream_ok;
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c)
    {
        const char *keys[] = {"ids", "ids_with_special"};
        for (int k = 0; k < 2; k++) {
            json_t *a = json_object_get(c, keys[k]);
            int n = (int)json_array_size(a);
            int32_t *ids = malloc(((size_t)n + 1) * sizeof(int32_t));
            for (int q = 0; q < n; q++) ids[q] = (int32_t)json_integer_value(json_array_get(a, (size_t)q));
            for (int skip = 0; skip < 2; skip++) stream(t, ids, 0, n, skip, name);
            /* and the oracle's own decode (ids without special tokens) */
            if (k == 0) {
                struct loom_detok d;
                loom_detok_init(&d, t, false, NULL, 0);
                char buf[4096];
                size_t bl = 0;
                for (int q = 0; q <= n; q++) {
                    const char *delta;
                    size_t dl;
                    if (q < n) loom_detok_push(&d, ids[q], &delta, &dl);
                    else loom_detok_flush(&d, &delta, &dl);
                    if (bl + dl < sizeof(buf)) memcpy(buf + bl, delta, dl);
                    bl += dl;
                }
                json_t *want = json_object_get(c, "decoded");
                CHECK_MSG(bl == json_string_length(want) && !memcmp(buf, json_string_value(want), bl),
                          "%s: streamed decode of \"%s\" differs from the oracle", name,
                          json_string_value(json_object_get(c, "text")));
                loom_detok_free(&d);
            }
            free(ids);
        }
    }
    for (size_t k = 0; k < sizeof(extra) / sizeof(extra[0]); k++) stream_text(t, extra[k], name);
    printf("%-36s %d/%d streams identical to the full decode\n", name, n_stream_ok - before_ok, n_streams - before);
    loom_tokenizer_free(t);
}

/* Byte-fallback details on stories260K: an emoji is 4 "<0xXX>" tokens; nothing may come out until
 * the last one, and an unfinished character comes out as U+FFFD at flush, as the full decode has it. */
static void byte_fallback(void)
{
    struct loom_tokenizer *t;
    if (loom_tokenizer_load(test_shared("models/stories260K"), &t)) return;
    int32_t *ids;
    int n;
    const char *text = "a😀";
    CHECK(loom_tokenizer_encode(t, text, strlen(text), false, &ids, &n) == 0);
    CHECK(n >= 5);
    int bytes = 0;
    for (int i = n - 4; i < n; i++) {
        const char *tok = loom_tokenizer_id_to_token(t, ids[i]);
        bytes += tok && !strncmp(tok, "<0x", 3);
    }
    CHECK_EQ_INT(bytes, 4);
    struct loom_detok d;
    loom_detok_init(&d, t, false, NULL, 0);
    const char *delta;
    size_t dl;
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        CHECK(loom_detok_push(&d, ids[i], &delta, &dl) == 0);
        if (i >= n - 4 && i < n - 1) CHECK_EQ_INT(dl, 0); /* the emoji's first 3 bytes: held back */
        total += dl;
    }
    CHECK_EQ_STR(delta, "😀");
    CHECK_EQ_INT(total, strlen("a😀"));
    CHECK(loom_detok_flush(&d, &delta, &dl) == 0 && dl == 0);
    /* out of range: an error, and nothing appended */
    CHECK(loom_detok_push(&d, 512, &delta, &dl) == LOOM_EINVAL);
    CHECK(loom_detok_push(&d, -1, &delta, &dl) == LOOM_EINVAL);
    CHECK_EQ_INT(d.n_ids, n);
    loom_detok_free(&d);

    /* an unfinished character: held back, then U+FFFD per byte at flush (ByteFallback's rule) */
    loom_detok_init(&d, t, false, NULL, 0);
    total = 0;
    for (int i = 0; i < n - 1; i++) {
        CHECK(loom_detok_push(&d, ids[i], &delta, &dl) == 0);
        CHECK(valid_utf8(delta, dl));
        total += dl;
    }
    CHECK_EQ_INT(total, 1); /* "a" */
    CHECK(loom_detok_flush(&d, &delta, &dl) == 0);
    CHECK_EQ_STR(delta, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    char *full;
    size_t fl;
    CHECK(loom_tokenizer_decode(t, ids, n - 1, false, &full, &fl) == 0);
    CHECK_EQ_STR(full, "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    free(full);
    loom_detok_free(&d);

    /* prompt ids that end inside the emoji: the generated ids complete it, and it comes out whole */
    loom_detok_init(&d, t, false, ids, n - 2);
    CHECK(loom_detok_push(&d, ids[n - 2], &delta, &dl) == 0 && dl == 0);
    CHECK(loom_detok_push(&d, ids[n - 1], &delta, &dl) == 0);
    CHECK_EQ_STR(delta, "😀");
    loom_detok_free(&d);
    free(ids);
    loom_tokenizer_free(t);
}

/* SentencePiece's leading space: with the prompt as context, " world" keeps its space. */
static void context(void)
{
    struct loom_tokenizer *t;
    if (loom_tokenizer_load(test_shared("tokenizers/mistral-7b-v0.1_mixtral-8x7b-v0.1"), &t)) return;
    int32_t *ids;
    int n;
    CHECK(loom_tokenizer_encode(t, "Hello world", 11, false, &ids, &n) == 0);
    CHECK_EQ_INT(n, 2);
    struct loom_detok d;
    loom_detok_init(&d, t, true, ids, 1);
    const char *delta;
    size_t dl;
    CHECK(loom_detok_push(&d, ids[1], &delta, &dl) == 0);
    CHECK_EQ_STR(delta, " world");
    loom_detok_free(&d);
    /* without context the first token's space is stripped, as decode([id]) does */
    loom_detok_init(&d, t, true, NULL, 0);
    CHECK(loom_detok_push(&d, ids[1], &delta, &dl) == 0);
    CHECK_EQ_STR(delta, "world");
    loom_detok_free(&d);

    /* long runs of skipped special tokens: the text is right, and the window does not grow with them */
    int32_t run[300];
    int nr = 0;
    for (int k = 0; k < 100; k++) run[nr++] = 2; /* </s> */
    run[nr++] = ids[0];
    for (int k = 0; k < 150; k++) run[nr++] = 2;
    run[nr++] = ids[1];
    loom_detok_init(&d, t, true, NULL, 0);
    char joined[64];
    size_t jl = 0;
    int widest = 0;
    for (int k = 0; k <= nr; k++) {
        int rc = k < nr ? loom_detok_push(&d, run[k], &delta, &dl) : loom_detok_flush(&d, &delta, &dl);
        CHECK(rc == 0);
        if (jl + dl < sizeof(joined)) memcpy(joined + jl, delta, dl);
        jl += dl;
        if (d.n_ids - d.prefix_offset > widest) widest = d.n_ids - d.prefix_offset;
    }
    CHECK_MSG(jl == 11 && !memcmp(joined, "Hello world", 11), "got \"%.*s\"", (int)jl, joined);
    CHECK_MSG(widest <= 40, "the window grew to %d tokens", widest);
    loom_detok_free(&d);
    free(ids);
    loom_tokenizer_free(t);
}

/* GPT-2's byte -> character map, to write byte-level tokens */
static size_t byte_chars(const unsigned char *b, size_t n, char *out)
{
    size_t l = 0;
    for (size_t i = 0; i < n; i++) {
        int k = 0, cp = -1;
        for (int x = 0; x < 256; x++) {
            bool keep = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
            int c = keep ? x : 256 + k++;
            if (x == b[i]) cp = c;
        }
        if (cp < 0x80) out[l++] = (char)cp;
        else {
            out[l++] = (char)(0xC0 | (cp >> 6));
            out[l++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    out[l] = 0;
    return l;
}

/* Byte-level tokens that each end inside a character ("你好世界" cut across characters): the text
 * ends in U+FFFD after every push but the last, yet each whole character streams as soon as it is. */
static void staggered(void)
{
    static const unsigned char parts[5][4] = {
        {0xE4}, {0xBD, 0xA0, 0xE5}, {0xA5, 0xBD, 0xE4}, {0xB8, 0x96, 0xE7}, {0x95, 0x8C}};
    static const int lens[5] = {1, 3, 3, 3, 2};
    char json[1024], tok[16];
    size_t l = (size_t)snprintf(json, sizeof(json), "{\"decoder\": {\"type\": \"ByteLevel\"}, \"model\": "
                                                    "{\"type\": \"BPE\", \"merges\": [], \"vocab\": {");
    for (int i = 0; i < 5; i++) {
        byte_chars(parts[i], (size_t)lens[i], tok);
        l += (size_t)snprintf(json + l, sizeof(json) - l, "%s\"%s\": %d", i ? ", " : "", tok, i);
    }
    snprintf(json + l, sizeof(json) - l, "}}}");
    struct loom_tokenizer *t;
    CHECK_MSG(loom_tokenizer_load_json(json, strlen(json), NULL, 0, &t) == 0, "%s", loom_last_error());
    if (!t) return;
    static const char *want[5] = {"", "你", "好", "世", "界"};
    struct loom_detok d;
    loom_detok_init(&d, t, false, NULL, 0);
    for (int i = 0; i < 5; i++) {
        const char *delta;
        size_t dl;
        CHECK(loom_detok_push(&d, i, &delta, &dl) == 0);
        CHECK_MSG(dl == strlen(want[i]) && !memcmp(delta, want[i], dl), "push %d: \"%.*s\", want \"%s\"", i, (int)dl,
                  delta, want[i]);
    }
    loom_detok_free(&d);
    /* the same 10 times over: still exact, and the window stays bounded */
    int32_t ids[60];
    int n = 0;
    for (int r = 0; r < 12; r++) {
        ids[n++] = 0;
        for (int i = 1; i < 4; i++) ids[n++] = i;
        ids[n++] = 4;
    }
    stream(t, ids, 0, n, false, "staggered");
    loom_tokenizer_free(t);
}

int main(void)
{
    json_error_t err;
    json_t *o = json_load_file(test_shared("oracles/tokenizers/hf_tokenizers.json"), 0, &err);
    json_t *o2 = json_load_file(test_shared("oracles/tokenizers/hf_tokenizers_stories260K.json"), 0, &err);
    if (!o || !o2) test_skip("the tokenizer oracles are not in LOOM_SHARED");
    static const char *folders[] = {"qwen2.5-instruct", "qwen3", "llama3", "mistral-7b-v0.1_mixtral-8x7b-v0.1"};
    for (size_t i = 0; i < sizeof(folders) / sizeof(folders[0]); i++) {
        char dir[256];
        snprintf(dir, sizeof(dir), "tokenizers/%s", folders[i]);
        run(dir, json_object_get(json_object_get(o, folders[i]), "encode"), folders[i]);
    }
    run("models/stories260K", json_object_get(json_object_get(o2, "stories260K"), "encode"), "stories260K");
    byte_fallback();
    context();
    staggered();
    json_decref(o);
    json_decref(o2);
    return test_report();
}
