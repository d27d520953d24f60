/*
 * test_tokenizer_components.c: the pieces of the tokenizer.json pipeline that the real tokenizers'
 * oracles do not reach, on small hand-made tokenizers whose expected output follows from HF
 * `tokenizers`' rules: Split behaviors and invert, Metaspace prepend schemes, Digits, added tokens
 * (lstrip, rstrip, single_word, normalized), merges in both serializations, unk/fuse_unk,
 * ignore_merges, continuing_subword_prefix / end_of_word_suffix, post-processors, decoders (lossy
 * ByteLevel, ByteFallback, Strip, Metaspace); NFC against utf8proc on random combining sequences; and
 * the special-token queries of the real tokenizers.
 */
#include "core/error.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

#include <stdint.h>
#include <utf8proc.h>

static struct loom_tokenizer *make(const char *json)
{
    struct loom_tokenizer *t = NULL;
    int rc = loom_tokenizer_load_json(json, strlen(json), NULL, 0, &t);
    CHECK_MSG(rc == 0, "%s\n  in %s", loom_last_error(), json);
    return t;
}

/* "tok|tok|tok" for the ids of text */
static char *enc(const struct loom_tokenizer *t, const char *text, bool special)
{
    static char out[4][1024];
    static int k;
    char *o = out[k++ & 3];
    o[0] = 0;
    if (!t) return o;
    int32_t *ids;
    int n;
    if (loom_tokenizer_encode(t, text, strlen(text), special, &ids, &n)) {
        snprintf(o, 1024, "ERROR %s", loom_last_error());
        return o;
    }
    size_t l = 0;
    for (int i = 0; i < n; i++) {
        const char *s = loom_tokenizer_id_to_token(t, ids[i]);
        l += (size_t)snprintf(o + l, 1024 - l, "%s%s", i ? "|" : "", s ? s : "?");
        if (l >= 1000) break;
    }
    free(ids);
    return o;
}

static char *dec(const struct loom_tokenizer *t, const int32_t *ids, int n, bool skip)
{
    static char out[1024];
    char *s;
    size_t l;
    if (!t || loom_tokenizer_decode(t, ids, n, skip, &s, &l)) return strcpy(out, "ERROR");
    snprintf(out, sizeof(out), "%s", s);
    free(s);
    return out;
}

#define MODEL_ABC                                                                                        \
    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"-\": 2, \"b-\": 3, \"-a\": 4, "  \
    "\"ab\": 5, \"--\": 6}, \"merges\": [\"b -\", \"- a\", \"a b\", \"- -\"]}"

static void split_behaviors(void)
{
    static const struct {
        const char *behavior, *text, *want;
        bool invert;
    } cases[] = {
        {NULL, "ab-ab", "a|b-|ab", false}, /* no pre-tokenizer: one word, "b -" merges first */
        {"Isolated", "ab-ab", "ab|-|ab", false},
        {"Removed", "ab-ab", "ab|ab", false},
        {"MergedWithPrevious", "ab-ab", "a|b-|ab", false},
        {"MergedWithNext", "ab-ab", "ab|-a|b", false},
        {"Contiguous", "ab--ab", "ab|--|ab", false},
        {"Isolated", "ab--ab", "ab|-|-|ab", false},
        {"MergedWithNext", "ab--ab", "ab|-|-a|b", false},
        {"Removed", "ab-ab", "-", true}, /* inverted: "ab" pieces are the matches, removed */
        {"MergedWithPrevious", "-ab-", "-a|b|-", true}, /* "-ab" (a match joins the piece before), "-" */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[2048];
        if (cases[i].behavior)
            snprintf(json, sizeof(json),
                     "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": "
                     "\"%s\", \"invert\": %s}, " MODEL_ABC "}",
                     cases[i].behavior, cases[i].invert ? "true" : "false");
        else snprintf(json, sizeof(json), "{" MODEL_ABC "}");
        struct loom_tokenizer *t = make(json);
        CHECK_MSG(!strcmp(enc(t, cases[i].text, false), cases[i].want), "%s%s \"%s\": got %s, want %s",
                  cases[i].behavior ? cases[i].behavior : "none", cases[i].invert ? " inverted" : "", cases[i].text,
                  enc(t, cases[i].text, false), cases[i].want);
        loom_tokenizer_free(t);
    }
    /* the same with a Regex pattern: a regex split gives the same words as the literal */
    struct loom_tokenizer *t = make("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"-+\"}, "
                                    "\"behavior\": \"Isolated\", \"invert\": false}, " MODEL_ABC "}");
    CHECK_EQ_STR(enc(t, "ab--ab", false), "ab|--|ab");
    loom_tokenizer_free(t);
    /* a literal String pattern is not a regex: "." matches only a dot */
    t = make("{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"String\": \".\"}, \"behavior\": "
             "\"Removed\"}, " MODEL_ABC "}");
    CHECK_EQ_STR(enc(t, "ab-ab", false), "a|b-|ab");
    CHECK_EQ_STR(enc(t, "ab.ab", false), "ab|ab");
    loom_tokenizer_free(t);
    /* Digits */
    const char *model = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"1\": 0, \"2\": 1, \"3\": 2, \"12\": 3, "
                        "\"123\": 4, \"a\": 5}, \"merges\": [\"1 2\", \"12 3\"]}";
    char json[1024];
    snprintf(json, sizeof(json), "{\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": false}, %s}", model);
    t = make(json);
    CHECK_EQ_STR(enc(t, "a123a", false), "a|123|a");
    loom_tokenizer_free(t);
    snprintf(json, sizeof(json), "{\"pre_tokenizer\": {\"type\": \"Digits\", \"individual_digits\": true}, %s}", model);
    t = make(json);
    CHECK_EQ_STR(enc(t, "a123a", false), "a|1|2|3|a");
    loom_tokenizer_free(t);
    /* WhitespaceSplit drops the spaces */
    snprintf(json, sizeof(json), "{\"pre_tokenizer\": {\"type\": \"WhitespaceSplit\"}, %s}", model);
    t = make(json);
    CHECK_EQ_STR(enc(t, " 12 \t3 ", false), "12|3");
    loom_tokenizer_free(t);
}

#define MODEL_META                                                                                       \
    "\"model\": {\"type\": \"BPE\", \"vocab\": {\"<s>\": 0, \"\\u2581\": 1, \"a\": 2, \"b\": 3, "       \
    "\"\\u2581a\": 4, \"\\u2581b\": 5}, \"merges\": [\"\\u2581 a\", \"\\u2581 b\"]}, "                   \
    "\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\", \"special\": true, \"normalized\": false}]"

static void metaspace(void)
{
    static const struct {
        const char *scheme, *text, *want;
    } cases[] = {
        {"always", "a b", "▁a|▁b"},       {"never", "a b", "a|▁b"},        {"first", "a b", "▁a|▁b"},
        {"first", "<s>a b", "<s>|a|▁b"}, {"always", "<s>a b", "<s>|▁a|▁b"}, {"always", " a", "▁a"},
        {"always", "a  b", "▁a|▁|▁b"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char json[2048];
        snprintf(json, sizeof(json),
                 "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": "
                 "\"%s\", \"split\": true}, \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", "
                 "\"prepend_scheme\": \"%s\", \"split\": true}, " MODEL_META "}",
                 cases[i].scheme, cases[i].scheme);
        struct loom_tokenizer *t = make(json);
        CHECK_MSG(!strcmp(enc(t, cases[i].text, false), cases[i].want), "Metaspace %s \"%s\": got %s, want %s",
                  cases[i].scheme, cases[i].text, enc(t, cases[i].text, false), cases[i].want);
        loom_tokenizer_free(t);
    }
    /* the legacy form (add_prefix_space) and the decoder: the first token loses every ▁ */
    struct loom_tokenizer *t =
        make("{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"add_prefix_space\": "
             "true}, \"decoder\": {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"add_prefix_space\": true}, "
             "\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\u2581\": 0, \"a\": 1, \"\\u2581\\u2581a\": 2, \"\\u2581a\": "
             "3, \"b\": 4}, \"merges\": [\"\\u2581 a\", \"\\u2581 \\u2581a\"]}}");
    CHECK_EQ_STR(enc(t, "a", false), "▁a");
    int32_t ids[] = {2, 3, 0, 4};
    CHECK_EQ_STR(dec(t, ids, 4, false), "a a b");
    loom_tokenizer_free(t);
}

#define MODEL_ADDED(flags, norm)                                                                         \
    "{\"normalizer\": " norm ", \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \" \": 2, " \
    "\"<\": 3, \"m\": 4, \">\": 5, \"M\": 6}, \"merges\": []}, \"added_tokens\": [{\"id\": 7, \"content\": " \
    "\"<m>\", " flags "}]}"

static void added_tokens(void)
{
    struct loom_tokenizer *t = make(MODEL_ADDED("\"special\": true, \"normalized\": false", "null"));
    CHECK_EQ_STR(enc(t, "a <m> b", false), "a| |<m>| |b");
    CHECK_EQ_STR(enc(t, "a<m><m>b<m", false), "a|<m>|<m>|b|<|m");
    int32_t ids[] = {0, 7, 1};
    CHECK_EQ_STR(dec(t, ids, 3, false), "a <m> b"); /* no decoder: tokens joined by spaces */
    CHECK_EQ_STR(dec(t, ids, 3, true), "a b");
    CHECK(loom_tokenizer_is_special(t, 7) && !loom_tokenizer_is_special(t, 0));
    CHECK_EQ_INT(loom_tokenizer_vocab_size(t), 8);
    CHECK_EQ_INT(loom_tokenizer_token_to_id(t, "<m>"), 7);
    loom_tokenizer_free(t);
    t = make(MODEL_ADDED("\"special\": true, \"normalized\": false, \"lstrip\": true", "null"));
    CHECK_EQ_STR(enc(t, "a  <m> b", false), "a|<m>| |b");
    loom_tokenizer_free(t);
    t = make(MODEL_ADDED("\"special\": true, \"normalized\": false, \"rstrip\": true", "null"));
    CHECK_EQ_STR(enc(t, "a <m>  b", false), "a| |<m>|b");
    loom_tokenizer_free(t);
    t = make(MODEL_ADDED("\"special\": false, \"normalized\": false, \"single_word\": true", "null"));
    CHECK_EQ_STR(enc(t, "a <m> b", false), "a| |<m>| |b");
    CHECK_EQ_STR(enc(t, "a<m> b", false), "a|<|m|>| |b"); /* inside a word: not the token */
    CHECK_EQ_STR(enc(t, "<m>", false), "<m>");
    loom_tokenizer_free(t);
    /* normalized=true: matched in the normalized text (here lowercased), so "<M>" finds it too */
    t = make(MODEL_ADDED("\"special\": false, \"normalized\": true", "{\"type\": \"Lowercase\"}"));
    CHECK_EQ_STR(enc(t, "a<M>b", false), "a|<m>|b");
    loom_tokenizer_free(t);
    t = make(MODEL_ADDED("\"special\": false, \"normalized\": false", "{\"type\": \"Lowercase\"}"));
    CHECK_EQ_STR(enc(t, "a<M>b", false), "a|<|m|>|b");
    CHECK_EQ_STR(enc(t, "a<m>b", false), "a|<m>|b");
    loom_tokenizer_free(t);
}

static void model_options(void)
{
    /* both merge serializations, and "#version" lines in the old one */
    struct loom_tokenizer *t1 = make("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, "
                                     "\"bc\": 4, \"abc\": 5}, \"merges\": [\"#version: 0.2\", \"b c\", \"a bc\"]}}");
    struct loom_tokenizer *t2 = make("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, "
                                     "\"bc\": 4, \"abc\": 5}, \"merges\": [[\"b\", \"c\"], [\"a\", \"bc\"]]}}");
    CHECK_EQ_STR(enc(t1, "abc", false), "abc");
    CHECK_EQ_STR(enc(t2, "abc", false), "abc");
    loom_tokenizer_free(t1);
    loom_tokenizer_free(t2);
    /* a word that is a token but that the merges do not reach: kept apart, unless ignore_merges */
    for (int ig = 0; ig < 2; ig++) {
        char json[1024];
        snprintf(json, sizeof(json),
                 "{\"model\": {\"type\": \"BPE\", \"ignore_merges\": %s, \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, "
                 "\"bc\": 3, \"abc\": 4}, \"merges\": [\"b c\"]}}",
                 ig ? "true" : "false");
        struct loom_tokenizer *t = make(json);
        for (int rep = 0; rep < 3; rep++) /* the second time goes through the "whole word" memo */
            CHECK_EQ_STR(enc(t, "abc", false), ig ? "abc" : "a|bc");
        loom_tokenizer_free(t);
    }
    /* unk: fused or not; a character with neither a token nor an unk is dropped */
    struct loom_tokenizer *t = make("{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, "
                                    "\"vocab\": {\"a\": 0, \"<unk>\": 1}, \"merges\": []}}");
    CHECK_EQ_STR(enc(t, "axyéa", false), "a|<unk>|a");
    loom_tokenizer_free(t);
    t = make("{\"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": false, \"vocab\": {\"a\": 0, "
             "\"<unk>\": 1}, \"merges\": []}}");
    CHECK_EQ_STR(enc(t, "axya", false), "a|<unk>|<unk>|a");
    loom_tokenizer_free(t);
    t = make("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}");
    CHECK_EQ_STR(enc(t, "axya", false), "a|a");
    loom_tokenizer_free(t);
    /* continuing_subword_prefix and end_of_word_suffix */
    t = make("{\"model\": {\"type\": \"BPE\", \"continuing_subword_prefix\": \"##\", \"vocab\": {\"a\": 0, \"##b\": 1, "
             "\"ab\": 2, \"##c\": 3}, \"merges\": [[\"a\", \"##b\"]]}}");
    CHECK_EQ_STR(enc(t, "abc", false), "ab|##c");
    loom_tokenizer_free(t);
    t = make("{\"model\": {\"type\": \"BPE\", \"end_of_word_suffix\": \"</w>\", \"vocab\": {\"a\": 0, \"b</w>\": 1, "
             "\"ab</w>\": 2, \"b\": 3}, \"merges\": [[\"a\", \"b</w>\"]]}, \"decoder\": {\"type\": \"BPEDecoder\", "
             "\"suffix\": \"</w>\"}, \"pre_tokenizer\": {\"type\": \"WhitespaceSplit\"}}");
    CHECK_EQ_STR(enc(t, "ab bab", false), "ab</w>|b|ab</w>");
    int32_t ids[] = {2, 3, 2};
    CHECK_EQ_STR(dec(t, ids, 3, false), "ab bab");
    loom_tokenizer_free(t);
}

static void post_processors(void)
{
    const char *vocab = "\"model\": {\"type\": \"BPE\", \"vocab\": {\"<s>\": 0, \"</s>\": 1, \"a\": 2}, \"merges\": []}, "
                        "\"added_tokens\": [{\"id\": 0, \"content\": \"<s>\", \"special\": true}, {\"id\": 1, "
                        "\"content\": \"</s>\", \"special\": true}]";
    char json[2048];
    snprintf(json, sizeof(json),
             "{\"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", "
             "\"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": {\"id\": \"</s>\", "
             "\"type_id\": 0}}], \"pair\": [], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [0], "
             "\"tokens\": [\"<s>\"]}, \"</s>\": {\"id\": \"</s>\", \"ids\": [1], \"tokens\": [\"</s>\"]}}}, %s}",
             vocab);
    struct loom_tokenizer *t = make(json);
    CHECK_EQ_STR(enc(t, "aa", true), "<s>|a|a|</s>");
    CHECK_EQ_STR(enc(t, "aa", false), "a|a");
    CHECK_EQ_STR(enc(t, "", true), "<s>|</s>");
    loom_tokenizer_free(t);
    snprintf(json, sizeof(json),
             "{\"post_processor\": {\"type\": \"Sequence\", \"processors\": [{\"type\": \"ByteLevel\"}, {\"type\": "
             "\"RobertaProcessing\", \"sep\": [\"</s>\", 1], \"cls\": [\"<s>\", 0]}]}, %s}",
             vocab);
    t = make(json);
    CHECK_EQ_STR(enc(t, "a", true), "<s>|a|</s>");
    loom_tokenizer_free(t);
}

/* GPT-2's byte -> character map, to name byte-level tokens */
static void byte_char(int b, char *out)
{
    int n = 0, cp = -1;
    for (int x = 0; x < 256; x++) {
        bool keep = (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        int c = keep ? x : 256 + n++;
        if (x == b) cp = c;
    }
    out[utf8proc_encode_char(cp, (utf8proc_uint8_t *)out)] = 0;
}

static void decoders(void)
{
    /* ByteLevel: invalid byte sequences become U+FFFD per maximal subpart (Rust's from_utf8_lossy) */
    struct loom_tokenizer *q;
    if (loom_tokenizer_load(test_shared("tokenizers/qwen2.5-instruct"), &q) == 0) {
        static const struct {
            int bytes[4], n;
            const char *want;
        } cases[] = {
            {{0xF0, 0x9F, 0x98}, 3, "\xEF\xBF\xBD"},
            {{0xF0, 0x9F, 0x98, 0x80}, 4, "😀"},
            {{0xF0, 0x41}, 2, "\xEF\xBF\xBD" "A"},
            {{0xC0, 0x80}, 2, "\xEF\xBF\xBD\xEF\xBF\xBD"},
            {{0xED, 0xA0, 0x80}, 3, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
            {{0xE2, 0x82, 0x41}, 3, "\xEF\xBF\xBD" "A"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            int32_t ids[4];
            for (int k = 0; k < cases[i].n; k++) {
                char c[8];
                byte_char(cases[i].bytes[k], c);
                ids[k] = loom_tokenizer_token_to_id(q, c);
                CHECK(ids[k] >= 0);
            }
            CHECK_EQ_STR(dec(q, ids, cases[i].n, false), cases[i].want);
        }
        /* a non-special added token survives skip_special_tokens; a special one does not */
        int32_t tc = loom_tokenizer_token_to_id(q, "<tool_call>"), im = loom_tokenizer_token_to_id(q, "<|im_end|>");
        CHECK(tc > 0 && !loom_tokenizer_is_special(q, tc) && loom_tokenizer_is_special(q, im));
        int32_t ids[2] = {tc, im};
        CHECK_EQ_STR(dec(q, ids, 2, true), "<tool_call>");
        CHECK_EQ_INT(loom_tokenizer_eos_id(q), im);
        CHECK_EQ_INT(loom_tokenizer_bos_id(q), -1);
        CHECK(loom_tokenizer_bos_token(q) == NULL);
        CHECK(loom_tokenizer_config_json(q) != NULL);
        /* NFC: a decomposed é, Hangul jamo and a compatibility ideograph encode like their NFC forms */
        CHECK_EQ_STR(enc(q, "cafe\xCC\x81", false), enc(q, "café", false));
        CHECK_EQ_STR(enc(q, "\xE1\x84\x80\xE1\x85\xA1", false), enc(q, "가", false));
        CHECK_EQ_STR(enc(q, "\xEF\xA4\x80", false), enc(q, "\xE8\xB1\x88", false));
        loom_tokenizer_free(q);
    }
    /* ByteFallback: an invalid run is one U+FFFD per byte; Strip removes one leading space */
    struct loom_tokenizer *s;
    if (loom_tokenizer_load(test_shared("models/stories260K"), &s) == 0) {
        int32_t e2 = loom_tokenizer_token_to_id(s, "<0xE2>"), x82 = loom_tokenizer_token_to_id(s, "<0x82>"),
                xac = loom_tokenizer_token_to_id(s, "<0xAC>"), a = loom_tokenizer_token_to_id(s, "\xE2\x96\x81" "a");
        CHECK(e2 >= 0 && x82 >= 0 && xac >= 0 && a >= 0);
        int32_t euro[] = {a, e2, x82, xac}, bad[] = {a, e2, x82, a};
        CHECK_EQ_STR(dec(s, euro, 4, false), "a€");
        CHECK_EQ_STR(dec(s, bad, 4, false), "a\xEF\xBF\xBD\xEF\xBF\xBD a");
        CHECK_EQ_STR(dec(s, euro + 1, 3, false), "€");
        CHECK_EQ_INT(loom_tokenizer_bos_id(s), 1);
        CHECK_EQ_INT(loom_tokenizer_eos_id(s), 2);
        CHECK_EQ_STR(loom_tokenizer_bos_token(s), "<s>");
        loom_tokenizer_free(s);
    }
    struct loom_tokenizer *l;
    if (loom_tokenizer_load(test_shared("tokenizers/llama3"), &l) == 0) {
        CHECK_EQ_INT(loom_tokenizer_bos_id(l), 128000);
        CHECK_EQ_INT(loom_tokenizer_eos_id(l), 128009);
        CHECK_EQ_STR(loom_tokenizer_eos_token(l), "<|eot_id|>");
        loom_tokenizer_free(l);
    }
    /* Replace (regex) and Strip with a stop count */
    struct loom_tokenizer *t =
        make("{\"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"Regex\": "
             "\"_+\"}, \"content\": \" \"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, "
             "\"stop\": 1}]}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"__a\": 0, \"_b__\": 1}, \"merges\": []}}");
    int32_t ids[] = {0, 1};
    CHECK_EQ_STR(dec(t, ids, 2, false), "a b");
    loom_tokenizer_free(t);
}

/* encode(s) == encode(NFC(s)) for random strings of combining sequences, Hangul, CJK, compatibility
 * characters: checks the NFC fast path against utf8proc's NFC of the whole string. */
static void nfc_random(void)
{
    struct loom_tokenizer *q;
    if (loom_tokenizer_load(test_shared("tokenizers/qwen2.5-instruct"), &q)) return;
    static const uint32_t pool[] = {'a',    'e',    'o',    ' ',    'A',    0x300,  0x301,  0x323,  0x308,  0x327,
                                    0xE9,   0xC5,   0x212B, 0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01, 0x4E00, 0xF900,
                                    0xFA10, 0x0B47, 0x0B3E, 0x0B57, 0x304B, 0x3099, 0x1F600, 0x0344, 0x0F73, 0x1E0A,
                                    0x0345, 0x05B0, 0x0591, 0x1D15E, 0x2126, 0x0958};
    uint64_t seed = 12345;
    int bad = 0;
    for (int it = 0; it < 3000; it++) {
        char s[256];
        size_t l = 0;
        int n = 1 + (int)(seed % 12);
        for (int k = 0; k < n; k++) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t cp = pool[(seed >> 33) % (sizeof(pool) / sizeof(pool[0]))];
            l += (size_t)utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)s + l);
        }
        s[l] = 0;
        utf8proc_uint8_t *nfc = utf8proc_NFC((const utf8proc_uint8_t *)s);
        char a[1024], b[1024];
        snprintf(a, sizeof(a), "%s", enc(q, s, false));
        snprintf(b, sizeof(b), "%s", enc(q, (const char *)nfc, false));
        if (strcmp(a, b) && bad++ < 5) CHECK_MSG(0, "NFC: encode(\"%s\") = %s, encode(NFC) = %s", s, a, b);
        free(nfc);
    }
    CHECK_EQ_INT(bad, 0);
    loom_tokenizer_free(q);
}

/* The merge loop against a plain reference (lowest rank first, leftmost on ties, one pair at a time) on
 * random words of 1..400 characters, which exercise all three merge paths: short words, long words in
 * rank buckets (merges in training order) and the binary-heap fallback (merges in random order). */
static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static void merges_reference(void)
{
    /* tokens: every string of 1..4 letters over "abc"; merges: random splits of random tokens */
    char toks[200][8];
    int nt = 0;
    for (int len = 1; len <= 4; len++) {
        int total = 1;
        for (int k = 0; k < len; k++) total *= 3;
        for (int x = 0; x < total; x++) {
            int v = x;
            for (int k = 0; k < len; k++) {
                toks[nt][k] = (char)('a' + v % 3);
                v /= 3;
            }
            toks[nt][len] = 0;
            nt++;
        }
    }
    for (int order = 0; order < 2; order++)
        for (int trial = 0; trial < 6; trial++) {
            /* merges: (left, right) with left+right a token; in training order (by length of the
             * result, so parts exist before) or shuffled */
            int ml[400], mr[400], nm = 0;
            for (int i = 0; i < 300; i++) {
                int t = 3 + (int)rnd((uint32_t)(nt - 3));
                int len = (int)strlen(toks[t]), cut = 1 + (int)rnd((uint32_t)(len - 1));
                int l = -1, r = -1;
                for (int k = 0; k < nt; k++) {
                    if ((int)strlen(toks[k]) == cut && !strncmp(toks[k], toks[t], (size_t)cut)) l = k;
                    if (!strcmp(toks[k], toks[t] + cut)) r = k;
                }
                bool dup = false;
                for (int k = 0; k < nm; k++) dup |= ml[k] == l && mr[k] == r;
                if (!dup) ml[nm] = l, mr[nm] = r, nm++;
            }
            if (order == 0) /* training order: shorter results first */
                for (int a = 0; a < nm; a++)
                    for (int b = a + 1; b < nm; b++)
                        if (strlen(toks[ml[b]]) + strlen(toks[mr[b]]) < strlen(toks[ml[a]]) + strlen(toks[mr[a]])) {
                            int x = ml[a], y = mr[a];
                            ml[a] = ml[b], mr[a] = mr[b], ml[b] = x, mr[b] = y;
                        }
            static char json[65536];
            size_t l = (size_t)snprintf(json, sizeof(json), "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
            for (int k = 0; k < nt; k++) l += (size_t)snprintf(json + l, sizeof(json) - l, "%s\"%s\": %d", k ? ", " : "", toks[k], k);
            l += (size_t)snprintf(json + l, sizeof(json) - l, "}, \"merges\": [");
            for (int k = 0; k < nm; k++)
                l += (size_t)snprintf(json + l, sizeof(json) - l, "%s[\"%s\", \"%s\"]", k ? ", " : "", toks[ml[k]], toks[mr[k]]);
            snprintf(json + l, sizeof(json) - l, "]}}");
            struct loom_tokenizer *t = make(json);
            if (!t) return;
            int bad = 0;
            for (int w = 0; w < 60; w++) {
                int n = 1 + (int)rnd(w < 30 ? 40 : 400);
                char word[512];
                int sym[512], ns = n;
                for (int k = 0; k < n; k++) {
                    word[k] = (char)('a' + rnd(3));
                    sym[k] = word[k] - 'a'; /* ids 0..2 are "a" "b" "c" */
                }
                word[n] = 0;
                for (;;) { /* reference */
                    int best = -1, bi = -1;
                    for (int k = 0; k + 1 < ns; k++)
                        for (int m = 0; m < nm; m++)
                            if (ml[m] == sym[k] && mr[m] == sym[k + 1] && (best < 0 || m < best)) best = m, bi = k;
                    if (bi < 0) break;
                    char cat[16];
                    snprintf(cat, sizeof(cat), "%s%s", toks[ml[best]], toks[mr[best]]);
                    for (int k = 0; k < nt; k++)
                        if (!strcmp(toks[k], cat)) sym[bi] = k;
                    memmove(sym + bi + 1, sym + bi + 2, (size_t)(ns - bi - 2) * sizeof(int));
                    ns--;
                }
                int32_t *ids;
                int ni;
                CHECK(loom_tokenizer_encode(t, word, (size_t)n, false, &ids, &ni) == 0);
                bool same = ni == ns;
                for (int k = 0; same && k < ns; k++) same = ids[k] == sym[k];
                if (!same && bad++ < 3) CHECK_MSG(0, "merges (%s order) on \"%s\": %d ids, reference %d", order ? "random" : "training", word, ni, ns);
                free(ids);
            }
            CHECK_EQ_INT(bad, 0);
            loom_tokenizer_free(t);
        }
}

int main(void)
{
    split_behaviors();
    metaspace();
    added_tokens();
    model_options();
    post_processors();
    decoders();
    nfc_random();
    merges_reference();
    return test_report();
}
