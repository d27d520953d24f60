/*
 * detok.c: the incremental detokenizer for streaming (vLLM's detokenize_incrementally): the text of
 * ids[prefix_offset..read_offset) has been emitted; after a push the window ids[prefix_offset..n)
 * is decoded, and if it extends the emitted window's text and does not end in U+FFFD (the mark of a
 * character whose bytes are still arriving, from byte-level or byte-fallback tokens) the extension is
 * the delta and the window slides forward (prefix = read, read = n).
 * Because the window only slides where its text ends on a whole character, decoding window by
 * window gives the same bytes as decoding everything at once; the decoder's start-of-text rules
 * (Strip's leading space, Metaspace's first token) apply to both texts of a window alike.
 * Deltas are whole characters, never a partial UTF-8 sequence. loom_detok_flush emits what is still
 * held back at the end. Known limit (as in vLLM): a byte-fallback run that turns invalid only after
 * part of it was emitted as valid text (one U+FFFD per byte) cannot be taken back.
 * Does not do: spaces_between_special_tokens (transformers' slow tokenizers only).
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

#define INITIAL_OFFSET 5 /* vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET */

void loom_detok_init(struct loom_detok *d, const struct loom_tokenizer *t, bool skip_special_tokens,
                     const int32_t *prompt_ids, int n_prompt)
{
    memset(d, 0, sizeof(*d));
    d->tok = t;
    d->skip_special_tokens = skip_special_tokens;
    if (n_prompt < 0) n_prompt = 0;
    d->cap_ids = n_prompt + 64;
    d->ids = loom_malloc((size_t)d->cap_ids * sizeof(int32_t));
    /* prompt ids out of range are left out of the context */
    for (int i = 0; i < n_prompt; i++)
        if (prompt_ids[i] >= 0 && prompt_ids[i] < loom_tokenizer_vocab_size(t)) d->ids[d->n_ids++] = prompt_ids[i];
    d->prefix_offset = d->n_ids > INITIAL_OFFSET ? d->n_ids - INITIAL_OFFSET : 0;
    d->read_offset = d->n_ids;
    /* The window must start on a whole character: a byte-level token or a run of "<0xXX>" tokens cut
     * in the middle decodes to U+FFFD (byte fallback: the whole run does), and so would everything
     * generated into that run. Step back (a bounded number of tokens) until it does not. */
    for (int back = 0; d->prefix_offset > 0 && back < 32; back++) {
        char *s;
        size_t n;
        if (loom_tokenizer_decode(t, d->ids + d->prefix_offset, d->read_offset - d->prefix_offset,
                                  skip_special_tokens, &s, &n))
            break;
        bool bad = n >= 3 && (uint8_t)s[0] == 0xEF && (uint8_t)s[1] == 0xBF && (uint8_t)s[2] == 0xBD;
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

static bool ends_with_fffd(const char *s, size_t n)
{
    return n >= 3 && (uint8_t)s[n - 3] == 0xEF && (uint8_t)s[n - 2] == 0xBF && (uint8_t)s[n - 1] == 0xBD;
}

/* Decodes ids[prefix..read) and ids[prefix..n). */
static int window(struct loom_detok *d, char **pre, size_t *pre_len, char **full, size_t *full_len)
{
    int rc = loom_tokenizer_decode(d->tok, d->ids + d->prefix_offset, d->read_offset - d->prefix_offset,
                                   d->skip_special_tokens, pre, pre_len);
    if (rc) return rc;
    rc = loom_tokenizer_decode(d->tok, d->ids + d->prefix_offset, d->n_ids - d->prefix_offset,
                               d->skip_special_tokens, full, full_len);
    if (rc) {
        free(*pre);
        *pre = NULL;
    }
    return rc;
}

/* Where the new text starts: after the emitted window text; if the new tokens changed the end of
 * that text (a context that ended inside a character, shown as U+FFFD, now completed), after the
 * common prefix, on a character boundary, so the completed character is not lost. */
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
    free(d->pending);
    d->pending = n ? loom_strndup(s, n) : NULL;
    d->pending_len = n;
}

int loom_detok_push(struct loom_detok *d, int32_t id, const char **delta, size_t *delta_len)
{
    *delta = "";
    *delta_len = 0;
    if (id < 0 || id >= loom_tokenizer_vocab_size(d->tok))
        return loom_fail(LOOM_EINVAL, "detokenizer: token id %d is out of range [0, %d)", id,
                         loom_tokenizer_vocab_size(d->tok));
    if (d->n_ids == d->cap_ids) {
        d->cap_ids = d->cap_ids ? d->cap_ids * 2 : 64;
        d->ids = loom_realloc(d->ids, (size_t)d->cap_ids * sizeof(int32_t));
    }
    d->ids[d->n_ids++] = id;
    char *pre, *full;
    size_t pre_len, full_len;
    int rc = window(d, &pre, &pre_len, &full, &full_len);
    if (rc) {
        d->n_ids--;
        return rc;
    }
    size_t k = new_start(pre, pre_len, full, full_len);
    if (k >= full_len || ends_with_fffd(full, full_len)) {
        hold(d, full + k, full_len - k);
    } else {
        set_out(d, full + k, full_len - k, delta, delta_len);
        hold(d, NULL, 0);
        d->prefix_offset = d->read_offset;
        d->read_offset = d->n_ids;
    }
    free(pre);
    free(full);
    return 0;
}

int loom_detok_flush(struct loom_detok *d, const char **delta, size_t *delta_len)
{
    *delta = "";
    *delta_len = 0;
    if (d->read_offset == d->n_ids) return 0;
    char *pre, *full;
    size_t pre_len, full_len;
    int rc = window(d, &pre, &pre_len, &full, &full_len);
    if (rc) return rc;
    size_t k = new_start(pre, pre_len, full, full_len);
    set_out(d, full + k, full_len - k, delta, delta_len);
    hold(d, NULL, 0);
    d->prefix_offset = d->read_offset;
    d->read_offset = d->n_ids;
    free(pre);
    free(full);
    return 0;
}
