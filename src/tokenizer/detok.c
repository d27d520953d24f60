/*
 * detok.c: the incremental detokenizer for streaming, after vLLM's detokenize_incrementally: the
 * window ids[prefix_offset..n) is decoded after each push; the text of ids[prefix_offset..read_offset)
 * has been emitted, and the delta is what the window's text adds to it. The window slides
 * (prefix = read, read = n) whenever its text ends on a whole character, i.e. not in U+FFFD, the mark
 * of a character whose bytes are still arriving (byte-level or byte-fallback tokens). Because it only
 * slides there, decoding window by window gives the same bytes as decoding everything at once, and the
 * decoder's start-of-text rules (Strip's leading space, Metaspace's first token) apply to both texts of
 * a window alike.
 * While the text ends in U+FFFD, the whole characters before that run are emitted already (so text
 * whose tokens keep ending inside a character still streams); after MAX_HOLD pushes without growth, or
 * a window of MAX_WINDOW ids, the U+FFFD is taken as final (only invalid bytes do that).
 * Deltas are whole characters, never a partial UTF-8 sequence. loom_detok_flush emits what is still
 * held back at the end. Ids that decode drops (skipped special tokens) are not kept at all.
 * Known limit (as in vLLM): a byte-fallback run that turns invalid only after part of it was emitted
 * (ByteFallback then gives one U+FFFD per byte of the whole run) cannot be taken back.
 * Does not do: spaces_between_special_tokens (transformers' slow tokenizers only).
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

#define INITIAL_OFFSET 5 /* vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET */
#define MAX_HOLD 8       /* pushes without growth while the text ends in U+FFFD, then it is final */
#define MAX_WINDOW 64    /* ids in the window at most, then the text so far is final */

static bool starts_with_fffd(const char *s, size_t n)
{
    return n >= 3 && (uint8_t)s[0] == 0xEF && (uint8_t)s[1] == 0xBF && (uint8_t)s[2] == 0xBD;
}

/* Bytes of the run of U+FFFD that ends s. */
static size_t trailing_fffd(const char *s, size_t n)
{
    size_t k = n;
    while (k >= 3 && (uint8_t)s[k - 3] == 0xEF && (uint8_t)s[k - 2] == 0xBF && (uint8_t)s[k - 1] == 0xBD) k -= 3;
    return n - k;
}

static bool dropped(const struct loom_tokenizer *t, bool skip, int32_t id)
{
    return !loom_tokenizer_id_to_token(t, id) || (skip && loom_tokenizer_is_special(t, id));
}

void loom_detok_init(struct loom_detok *d, const struct loom_tokenizer *t, bool skip_special_tokens,
                     const int32_t *prompt_ids, int n_prompt)
{
    memset(d, 0, sizeof(*d));
    d->tok = t;
    d->skip_special_tokens = skip_special_tokens;
    if (n_prompt < 0) n_prompt = 0;
    d->cap_ids = n_prompt + 64;
    d->ids = loom_malloc((size_t)d->cap_ids * sizeof(int32_t));
    /* prompt ids out of range, and those decode drops, are left out of the context */
    for (int i = 0; i < n_prompt; i++) {
        int32_t id = prompt_ids[i];
        if (id < 0 || id >= loom_tokenizer_vocab_size(t) || dropped(t, skip_special_tokens, id)) continue;
        d->ids[d->n_ids++] = id;
    }
    d->prefix_offset = d->n_ids > INITIAL_OFFSET ? d->n_ids - INITIAL_OFFSET : 0;
    d->read_offset = d->n_ids;
    /* The window must start on a whole character: a byte-level token or a run of "<0xXX>" tokens cut
     * in the middle decodes to U+FFFD (byte fallback: the whole run does), and so would everything
     * generated into that run. Step back (a bounded number of ids) until it does not. */
    for (int back = 0; d->prefix_offset > 0 && back < 32; back++) {
        char *s;
        size_t n;
        if (loom_tokenizer_decode(t, d->ids + d->prefix_offset, d->read_offset - d->prefix_offset,
                                  skip_special_tokens, &s, &n))
            break;
        bool bad = starts_with_fffd(s, n);
        free(s);
        if (!bad) break;
        d->prefix_offset--;
    }
}

void loom_detok_free(struct loom_detok *d)
{
    free(d->ids);
    free(d->pending);
    free(d->out);
    free(d->pre);
    tok_dec_ctx_free(d->scratch);
    memset(d, 0, sizeof(*d));
}

static void set_out(struct loom_detok *d, const char *s, size_t n, const char **delta, size_t *delta_len)
{
    if (n + 1 > d->out_cap) {
        d->out_cap = n + 64;
        d->out = loom_realloc(d->out, d->out_cap);
    }
    if (n) memcpy(d->out, s, n);
    d->out[n] = 0;
    *delta = d->out;
    *delta_len = n;
}

static void pre_set(struct loom_detok *d, const char *s, size_t n)
{
    if (n + 1 > d->pre_cap) {
        d->pre_cap = n + 64;
        d->pre = loom_realloc(d->pre, d->pre_cap);
    }
    memmove(d->pre, s, n);
    d->pre[n] = 0;
    d->pre_len = n;
    d->pre_valid = true;
}

/* The emitted text of the window (decoded once per slide) and the text of ids[prefix..n) (scratch). */
static int window(struct loom_detok *d, const char **full, size_t *full_len)
{
    if (!d->scratch) d->scratch = tok_dec_ctx_new();
    if (!d->pre_valid) {
        const char *s;
        size_t n;
        int rc = tok_decode_ctx(d->tok, d->scratch, d->ids + d->prefix_offset, d->read_offset - d->prefix_offset,
                                d->skip_special_tokens, &s, &n);
        if (rc) return rc;
        pre_set(d, s, n);
    }
    return tok_decode_ctx(d->tok, d->scratch, d->ids + d->prefix_offset, d->n_ids - d->prefix_offset,
                          d->skip_special_tokens, full, full_len);
}

/* Where the new text starts: after the emitted text; if the new ids changed its end (a context that
 * ended inside a character, shown as U+FFFD, now completed), after the common prefix, on a character
 * boundary, so the completed character is not lost. */
static size_t new_start(const char *pre, size_t pre_len, const char *full, size_t full_len)
{
    if (full_len >= pre_len && !memcmp(full, pre, pre_len)) return pre_len;
    size_t k = 0, m = pre_len < full_len ? pre_len : full_len;
    while (k < m && pre[k] == full[k]) k++;
    while (k > 0 && k < full_len && ((uint8_t)full[k] & 0xC0) == 0x80) k--;
    return k;
}

static void hold(struct loom_detok *d, const char *s, size_t n)
{
    d->pending_len = 0;
    if (!n && !d->pending) return;
    d->pending = loom_realloc(d->pending, n + 1);
    if (n) memcpy(d->pending, s, n);
    d->pending[n] = 0;
    d->pending_len = n;
}

static void slide(struct loom_detok *d)
{
    hold(d, NULL, 0);
    d->prefix_offset = d->read_offset;
    d->read_offset = d->n_ids;
    d->pre_valid = false;
    d->stall = 0;
}

int loom_detok_push(struct loom_detok *d, int32_t id, const char **delta, size_t *delta_len)
{
    *delta = "";
    *delta_len = 0;
    const struct loom_tokenizer *t = d->tok;
    if (id < 0 || id >= loom_tokenizer_vocab_size(t))
        return loom_fail(LOOM_EINVAL, "detokenizer: token id %d is out of range [0, %d)", id,
                         loom_tokenizer_vocab_size(t));
    /* ids that decode drops before the decoders change no text: not kept, so a long run of them
     * (special tokens being skipped) cannot grow the window */
    if (dropped(t, d->skip_special_tokens, id)) return 0;
    if (d->n_ids == d->cap_ids) {
        d->cap_ids = d->cap_ids ? d->cap_ids * 2 : 64;
        d->ids = loom_realloc(d->ids, (size_t)d->cap_ids * sizeof(int32_t));
    }
    d->ids[d->n_ids++] = id;
    const char *full;
    size_t full_len;
    int rc = window(d, &full, &full_len);
    if (rc) {
        d->n_ids--;
        return rc;
    }
    size_t k = new_start(d->pre, d->pre_len, full, full_len);
    size_t fffd = trailing_fffd(full, full_len);
    if (k >= full_len) { /* nothing new */
        hold(d, NULL, 0);
        if (fffd) d->stall++;
        return 0;
    }
    if (!fffd) { /* ends on a whole character: all of it is final */
        set_out(d, full + k, full_len - k, delta, delta_len);
        slide(d);
        return 0;
    }
    size_t safe = full_len - fffd; /* the whole characters before the U+FFFD run */
    if (++d->stall >= MAX_HOLD || d->n_ids - d->prefix_offset >= MAX_WINDOW) {
        set_out(d, full + k, full_len - k, delta, delta_len);
        slide(d);
        return 0;
    }
    if (safe > k) {
        set_out(d, full + k, safe - k, delta, delta_len);
        pre_set(d, full, safe);
        d->stall = 0;
    }
    hold(d, full + (safe > k ? safe : k), full_len - (safe > k ? safe : k));
    return 0;
}

int loom_detok_flush(struct loom_detok *d, const char **delta, size_t *delta_len)
{
    *delta = "";
    *delta_len = 0;
    if (d->read_offset == d->n_ids) return 0;
    const char *full;
    size_t full_len;
    int rc = window(d, &full, &full_len);
    if (rc) return rc;
    size_t k = new_start(d->pre, d->pre_len, full, full_len);
    set_out(d, full + k, full_len - k, delta, delta_len);
    slide(d);
    return 0;
}
