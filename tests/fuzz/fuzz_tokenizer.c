/*
 * fuzz_tokenizer.c: libFuzzer target over encode, decode and the streaming detokenizer, with the
 * stories260K tokenizer (SentencePiece-style: Prepend/Replace normalizers, byte fallback, Strip) and,
 * when it is there, Qwen2.5's (NFC, the Split regex, byte-level), both loaded once from LOOM_SHARED or
 * ../shared (libFuzzer runs from the repository root in `make fuzz-smoke`).
 * For the input x as text: invalid UTF-8 must be LOOM_EINVAL; otherwise decode(encode(x)) == NFC(x)
 * for Qwen (byte-level BPE is lossless), == x for stories260K when x has no U+2581 and no special-token
 * text (the two cases where SentencePiece's rules change the text); streaming the ids one at a time
 * joins to the full decode, in whole characters. The input's bytes read as ids decode to valid UTF-8.
 */
#include "tokenizer/tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "loom.h"

static struct loom_tokenizer *load(const char *rel)
{
    const char *root = getenv("LOOM_SHARED");
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", root ? root : "../shared", rel);
    struct loom_tokenizer *t = NULL;
    if (loom_tokenizer_load(path, &t)) return NULL;
    return t;
}

static bool valid_utf8(const uint8_t *s, size_t n)
{
    utf8proc_int32_t cp;
    for (size_t i = 0; i < n;) {
        utf8proc_ssize_t l = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &cp);
        if (l <= 0 || cp < 0) return false;
        i += (size_t)l;
    }
    return true;
}

static void stream(const struct loom_tokenizer *t, const int32_t *ids, int n, bool skip, const char *full,
                   size_t full_len)
{
    struct loom_detok d;
    loom_detok_init(&d, t, skip, NULL, 0);
    char *joined = malloc(full_len + 16);
    size_t jl = 0;
    bool over = false;
    for (int i = 0; i <= n; i++) {
        const char *delta;
        size_t dl;
        int rc = i < n ? loom_detok_push(&d, ids[i], &delta, &dl) : loom_detok_flush(&d, &delta, &dl);
        if (rc) abort();
        if (!valid_utf8((const uint8_t *)delta, dl)) abort(); /* a delta split a character */
        if (jl + dl > full_len) over = true;
        else memcpy(joined + jl, delta, dl);
        jl += dl;
    }
    /* byte-fallback runs that turn invalid after a valid prefix was emitted cannot be taken back
     * (see detok.c); everything else must match exactly */
    if (!memmem(full, full_len, "\xEF\xBF\xBD", 3) && (over || jl != full_len || memcmp(joined, full, full_len))) abort();
    free(joined);
    loom_detok_free(&d);
}

static void check(const struct loom_tokenizer *t, const uint8_t *data, size_t size, bool byte_level)
{
    int32_t *ids;
    int n;
    int rc = loom_tokenizer_encode(t, (const char *)data, size, false, &ids, &n);
    if (!valid_utf8(data, size)) {
        if (rc != LOOM_EINVAL) abort();
        return;
    }
    if (rc) abort();
    char *text;
    size_t len;
    if (loom_tokenizer_decode(t, ids, n, false, &text, &len)) abort();
    if (!valid_utf8((const uint8_t *)text, len)) abort();
    if (byte_level) {
        char *z = malloc(size + 1);
        memcpy(z, data, size);
        z[size] = 0;
        /* NUL ends utf8proc_NFC's input: only compare texts without one */
        if (!memchr(data, 0, size)) {
            utf8proc_uint8_t *nfc = utf8proc_NFC((const utf8proc_uint8_t *)z);
            if (nfc && (strlen((char *)nfc) != len || memcmp(nfc, text, len))) abort();
            free(nfc);
        }
        free(z);
    } else {
        bool plain = !memmem(data, size, "\xE2\x96\x81", 3) && !memmem(data, size, "<s>", 3) &&
                     !memmem(data, size, "</s>", 4) && !memmem(data, size, "<unk>", 5);
        if (plain && (len != size || memcmp(text, data, size))) abort();
    }
    stream(t, ids, n, false, text, len);
    free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct loom_tokenizer *sp, *bl;
    static bool loaded;
    if (!loaded) {
        loaded = true;
        sp = load("models/stories260K");
        bl = load("tokenizers/qwen2.5-instruct");
        if (!sp) {
            fprintf(stderr, "fuzz_tokenizer: cannot load the stories260K tokenizer (set LOOM_SHARED)\n");
            abort();
        }
    }
    check(sp, data, size, false);
    if (bl && size <= 4096) check(bl, data, size, true);
    /* the bytes as ids (16 bits each, taken modulo the vocabulary) */
    const struct loom_tokenizer *ts[2] = {sp, bl};
    for (int k = 0; k < 2; k++) {
        const struct loom_tokenizer *t = ts[k];
        if (!t) continue;
        int n = (int)(size / 2);
        int32_t *ids = malloc(((size_t)n + 1) * sizeof(int32_t));
        for (int i = 0; i < n; i++)
            ids[i] = (int32_t)((data[2 * i] | (data[2 * i + 1] << 8)) % (unsigned)loom_tokenizer_vocab_size(t));
        for (int skip = 0; skip < 2; skip++) {
            char *text;
            size_t len;
            if (loom_tokenizer_decode(t, ids, n, skip, &text, &len)) abort();
            if (!valid_utf8((const uint8_t *)text, len)) abort();
            stream(t, ids, n, skip, text, len);
            free(text);
        }
        free(ids);
    }
    return 0;
}
