/*
 * test_tokenizer_errors.c: the tokenizer's failure paths and large inputs. Invalid UTF-8 is
 * LOOM_EINVAL; ids out of range are LOOM_EINVAL; malformed tokenizer.json files (truncated JSON, no
 * model, an unknown model type, merges naming unknown tokens, bad components) fail with a message
 * naming the problem; a missing tokenizer.json is LOOM_ENOTFOUND. A 1 MB mixed-script text and 10 MB
 * of one repeated character (one giant word) encode, round-trip through decode, and finish: a
 * quadratic merge would run for hours, so a generous 60 s bound catches it without timing anything.
 */
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

static const char *dirs[] = {"tokenizers/qwen2.5-instruct", "tokenizers/llama3",
                             "tokenizers/mistral-7b-v0.1_mixtral-8x7b-v0.1", "models/stories260K"};

static void bad_utf8(const struct loom_tokenizer *t)
{
    static const char *bad[] = {"\xff", "abc\xc3", "\xed\xa0\x80", "\xc0\xaf", "ok \xf4\x90\x80\x80", "\x80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int32_t *ids = (int32_t *)1;
        int n = -1;
        CHECK_EQ_INT(loom_tokenizer_encode(t, bad[i], strlen(bad[i]), false, &ids, &n), LOOM_EINVAL);
        CHECK(ids == NULL && n == 0);
        CHECK(strstr(loom_last_error(), "UTF-8") != NULL);
    }
    /* NUL bytes are valid UTF-8 */
    int32_t *ids;
    int n;
    CHECK(loom_tokenizer_encode(t, "a\0b", 3, false, &ids, &n) == 0);
    free(ids);
}

static void bad_ids(const struct loom_tokenizer *t)
{
    int v = loom_tokenizer_vocab_size(t);
    char *s;
    size_t l;
    int32_t ok[1] = {v - 1}, over[2] = {0, v}, neg[1] = {-1};
    CHECK(loom_tokenizer_decode(t, ok, 1, false, &s, &l) == 0);
    free(s);
    CHECK_EQ_INT(loom_tokenizer_decode(t, over, 2, false, &s, &l), LOOM_EINVAL);
    CHECK(s == NULL);
    CHECK(strstr(loom_last_error(), "out of range") != NULL);
    CHECK_EQ_INT(loom_tokenizer_decode(t, neg, 1, true, &s, &l), LOOM_EINVAL);
    CHECK(loom_tokenizer_id_to_token(t, v) == NULL);
    CHECK(loom_tokenizer_id_to_token(t, -5) == NULL);
    CHECK(loom_tokenizer_token_to_id(t, "surely-not-a-token-\x01") == -1);
    /* an empty id list decodes to "" */
    CHECK(loom_tokenizer_decode(t, NULL, 0, false, &s, &l) == 0 && l == 0 && s && !*s);
    free(s);
}

static int load_str(const char *json, const char *want_in_message)
{
    struct loom_tokenizer *t = (struct loom_tokenizer *)1;
    int rc = loom_tokenizer_load_json(json, strlen(json), NULL, 0, &t);
    CHECK(rc < 0);
    CHECK(t == NULL);
    CHECK_MSG(strstr(loom_last_error(), want_in_message) != NULL, "message \"%s\" lacks \"%s\"", loom_last_error(),
              want_in_message);
    return rc;
}

static void malformed(void)
{
    char *js;
    size_t len;
    CHECK(loom_read_file(test_shared("models/stories260K/tokenizer.json"), &js, &len) == 0);
    struct loom_tokenizer *t;
    /* the file itself loads; any prefix of it does not */
    CHECK(loom_tokenizer_load_json(js, len, NULL, 0, &t) == 0);
    loom_tokenizer_free(t);
    size_t cuts[] = {0, 1, 100, len / 2, len - 2};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        t = (struct loom_tokenizer *)1;
        CHECK_EQ_INT(loom_tokenizer_load_json(js, cuts[i], NULL, 0, &t), LOOM_EINVAL);
        CHECK(t == NULL);
        CHECK(strstr(loom_last_error(), "invalid JSON") != NULL);
    }
    free(js);
    CHECK_EQ_INT(load_str("{\"version\": \"1.0\"}", "no \"model\""), LOOM_EINVAL);
    CHECK_EQ_INT(load_str("[1, 2]", "not an object"), LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}", "'Unigram' is not supported"),
                 LOOM_EUNSUPPORTED);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", "'WordPiece'"), LOOM_EUNSUPPORTED);
    CHECK_EQ_INT(load_str("{\"model\": {\"vocab\": {}}}", "no \"type\""), LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": [], \"merges\": []}}", "model.vocab"), LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
                          "'ab' is not in the vocab"),
                 LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [\"a x\"]}}", "'x'"),
                 LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"aa\": 1}, \"merges\": [\"a a a\"]}}",
                          "two tokens"),
                 LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -3}, \"merges\": []}}", "valid id"),
                 LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"normalizer\": {\"type\": \"Precompiled\"}, \"model\": {\"type\": \"BPE\", \"vocab\": "
                          "{\"a\": 0}, \"merges\": []}}",
                          "'Precompiled'"),
                 LOOM_EUNSUPPORTED);
    CHECK_EQ_INT(load_str("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": "
                          "\"Isolated\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}",
                          "cannot compile regex"),
                 LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"decoder\": {\"type\": \"CTC\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                          "\"merges\": []}}",
                          "'CTC'"),
                 LOOM_EUNSUPPORTED);
    CHECK_EQ_INT(load_str("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": [], \"unk_token\": "
                          "\"<unk>\"}}",
                          "unk_token"),
                 LOOM_EINVAL);
    CHECK_EQ_INT(load_str("{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": "
                          "{\"id\": \"<s>\"}}], \"special_tokens\": {}}, \"model\": {\"type\": \"BPE\", \"vocab\": "
                          "{\"a\": 0}, \"merges\": []}}",
                          "'<s>' is not defined"),
                 LOOM_EINVAL);
    /* a bad tokenizer_config.json is an error too */
    const char *ok = "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}";
    t = NULL;
    CHECK_EQ_INT(loom_tokenizer_load_json(ok, strlen(ok), "{\"bos_token\": ", 14, &t), LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), "tokenizer_config.json") != NULL);
    /* a folder without tokenizer.json */
    CHECK_EQ_INT(loom_tokenizer_load(test_shared("oracles"), &t), LOOM_ENOTFOUND);
    CHECK(t == NULL);
}

/* encode, check the decode gives the text back (when the tokenizer is lossless for it), return ms */
static double roundtrip(const struct loom_tokenizer *t, const char *text, size_t len, const char *what,
                        bool lossless, int *n_out)
{
    int32_t *ids;
    int n = 0;
    double t0 = loom_now();
    int rc = loom_tokenizer_encode(t, text, len, false, &ids, &n);
    double ms = (loom_now() - t0) * 1e3;
    CHECK_MSG(rc == 0, "%s: %s", what, loom_last_error());
    if (rc) return ms;
    CHECK_MSG(ms < 60000, "%s took %.0f ms: a quadratic blowup?", what, ms);
    char *back;
    size_t bl;
    CHECK(loom_tokenizer_decode(t, ids, n, false, &back, &bl) == 0);
    if (lossless) CHECK_MSG(bl == len && !memcmp(back, text, len), "%s: decode(encode(x)) != x", what);
    free(back);
    free(ids);
    *n_out = n;
    return ms;
}

static void large(const struct loom_tokenizer *t, const char *name)
{
    /* 1 MB of mixed-script text */
    static const char *parts[] = {"The quick brown fox jumps over the lazy dog. ", "价格是100元。你好，世界！",
                                  "Привет, мир! ", "emoji: 😀🎉👍🏽 and 🤖\n", "def add(a, b):\n    return a + b\n",
                                  "naïve café résumé 3.14159 ", "こんにちは世界 مرحبا بالعالم 안녕하세요\t"};
    size_t cap = 1 << 20, len = 0;
    char *buf = malloc(cap + 64);
    for (size_t k = 0; len < cap; k++) {
        const char *p = parts[k % 7];
        memcpy(buf + len, p, strlen(p));
        len += strlen(p);
    }
    int n;
    /* Mistral-style decoders strip the leading space; the text starts with a letter, so it is lossless */
    double ms = roundtrip(t, buf, len, "1 MB mixed", true, &n);
    printf("%-36s 1 MB mixed text: %d tokens in %.0f ms (%.1f MB/s)\n", name, n, ms, len / 1e3 / ms);
    free(buf);

    /* A long text goes through the per-call word cache; its lines one by one are too short to use it.
     * Lines start with a letter after "\n", where the pre-tokenizers of the byte-level tokenizers
     * always cut, so the ids must be the same. */
    if (strstr(name, "qwen") || strstr(name, "llama3")) {
        size_t cap2 = 200000, l2 = 0;
        char *txt = malloc(cap2 + 256);
        for (size_t k = 0; l2 < cap2; k++) {
            const char *p = parts[(k * 3) % 7];
            int pl = (int)strlen(p);
            if (p[pl - 1] == '\n') pl--; /* "\n\n" would be one piece */
            l2 += (size_t)snprintf(txt + l2, 256, "Line %zu: %.*s\n", k, pl, p);
        }
        int32_t *all, *one;
        int n_all, n_one, pos = 0;
        bool same = loom_tokenizer_encode(t, txt, l2, false, &all, &n_all) == 0;
        for (size_t a = 0; same && a < l2;) {
            const char *nl = memchr(txt + a, '\n', l2 - a);
            size_t b = nl ? (size_t)(nl - txt) + 1 : l2;
            same = loom_tokenizer_encode(t, txt + a, b - a, false, &one, &n_one) == 0 && pos + n_one <= n_all &&
                   !memcmp(all + pos, one, (size_t)n_one * sizeof(int32_t));
            pos += n_one;
            free(one);
            a = b;
        }
        CHECK_MSG(same && pos == n_all, "%s: the ids of a long text differ from those of its lines", name);
        free(all);
        free(txt);
    }

    /* 10 MB of one character: one word of 10 MB (letters), whitespace, digits, a 4-byte character */
    static const char *unit[] = {"a", " ", "1", "😀"};
    static const char *uname[] = {"'a'", "' '", "'1'", "emoji"};
    size_t big = 10u << 20;
    buf = malloc(big + 4);
    for (int u = 0; u < 4; u++) {
        size_t ul = strlen(unit[u]), k = 0;
        for (; k + ul <= big; k += ul) memcpy(buf + k, unit[u], ul);
        char what[64];
        snprintf(what, sizeof(what), "10 MB of %s", uname[u]);
        /* SentencePiece's decoder drops the leading space of the text, so ' ' is not lossless there */
        bool lossless = !(u == 1 && strstr(name, "mistral")) && !(u == 1 && strstr(name, "stories"));
        ms = roundtrip(t, buf, k, what, lossless, &n);
        printf("%-36s %s: %d tokens in %.0f ms\n", name, what, n, ms);
    }
    free(buf);
}

int main(void)
{
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        struct loom_tokenizer *t;
        int rc = loom_tokenizer_load(test_shared(dirs[i]), &t);
        CHECK_MSG(rc == 0, "%s: %s", dirs[i], loom_last_error());
        if (rc) continue;
        bad_utf8(t);
        bad_ids(t);
        large(t, strrchr(dirs[i], '/') + 1);
        loom_tokenizer_free(t);
    }
    malformed();
    return test_report();
}
