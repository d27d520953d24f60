/*
 * normalize.c: tokenizer.json's normalizers as HF `tokenizers` applies them to each piece of text
 * between added tokens: NFC/NFD/NFKC/NFKD (utf8proc), Lowercase, Strip, StripAccents, Replace
 * (literal or regex), Prepend and Append (only to a non-empty piece), ByteLevel, and Sequence.
 * Does not do: BertNormalizer, Precompiled (SentencePiece charsmaps): those are refused at load.
 * Lowercase uses utf8proc's simple case mapping (Rust's to_lowercase also applies the final-sigma
 * rule and a few one-to-many mappings; no tokenizer we serve lowercases).
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

void tok_norm_free(struct tok_norm *n)
{
    tok_pattern_free(&n->pat);
    free(n->str);
}

static int load_one(struct loom_tokenizer *t, json_t *j, int *cap)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_fail(LOOM_EINVAL, "tokenizer.json: a normalizer has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "normalizers");
        if (!json_is_array(list)) return loom_fail(LOOM_EINVAL, "tokenizer.json: Sequence normalizer without a list");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x)
        {
            int rc = load_one(t, x, cap);
            if (rc) return rc;
        }
        return 0;
    }
    struct tok_norm n;
    memset(&n, 0, sizeof(n));
    json_t *v;
    if (!strcmp(type, "NFC")) n.type = TN_NFC;
    else if (!strcmp(type, "NFD")) n.type = TN_NFD;
    else if (!strcmp(type, "NFKC")) n.type = TN_NFKC;
    else if (!strcmp(type, "NFKD")) n.type = TN_NFKD;
    else if (!strcmp(type, "Lowercase")) n.type = TN_LOWERCASE;
    else if (!strcmp(type, "StripAccents")) n.type = TN_STRIP_ACCENTS;
    else if (!strcmp(type, "ByteLevel")) n.type = TN_BYTELEVEL;
    else if (!strcmp(type, "Strip")) {
        n.type = TN_STRIP;
        n.left = json_is_true(json_object_get(j, "strip_left"));
        n.right = json_is_true(json_object_get(j, "strip_right"));
    } else if (!strcmp(type, "Replace")) {
        n.type = TN_REPLACE;
        int rc = tok_pattern_from_json(json_object_get(j, "pattern"), "Replace normalizer", &n.pat);
        if (rc) return rc;
        v = json_object_get(j, "content");
        if (!json_is_string(v)) {
            tok_norm_free(&n);
            return loom_fail(LOOM_EINVAL, "tokenizer.json: Replace normalizer without \"content\"");
        }
        n.str_len = json_string_length(v);
        n.str = loom_strndup(json_string_value(v), n.str_len);
    } else if (!strcmp(type, "Prepend") || !strcmp(type, "Append")) {
        n.type = type[0] == 'P' ? TN_PREPEND : TN_APPEND;
        v = json_object_get(j, type[0] == 'P' ? "prepend" : "append");
        if (!json_is_string(v)) return loom_fail(LOOM_EINVAL, "tokenizer.json: %s normalizer without its text", type);
        n.str_len = json_string_length(v);
        n.str = loom_strndup(json_string_value(v), n.str_len);
    } else {
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: normalizer type '%s' is not supported", type);
    }
    if (t->n_norms == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->norms = loom_realloc(t->norms, (size_t)*cap * sizeof(*t->norms));
    }
    t->norms[t->n_norms++] = n;
    return 0;
}

int tok_norm_load(struct loom_tokenizer *t, json_t *j)
{
    if (!j || json_is_null(j)) return 0;
    if (!json_is_object(j)) return loom_fail(LOOM_EINVAL, "tokenizer.json: \"normalizer\" is not an object");
    int cap = 0;
    return load_one(t, j, &cap);
}

static bool all_below(const char *s, size_t n, uint32_t limit)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = (uint8_t)s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (limit <= 0x80) return false;
        int l;
        uint32_t cp = tok_utf8_decode((const uint8_t *)s + i, &l);
        if (cp >= limit) return false;
        i += (size_t)l;
    }
    return true;
}

static int unicode_form(const char *s, size_t n, utf8proc_option_t opt, struct tok_buf *out)
{
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, opt);
    if (r < 0) {
        free(dst);
        if (r == UTF8PROC_ERROR_NOMEM) LOOM_DIE("out of host memory normalizing %zu bytes", n);
        return loom_fail(LOOM_EINVAL, "unicode normalization failed: %s", utf8proc_errmsg(r));
    }
    tok_buf_put(out, dst, (size_t)r);
    free(dst);
    return 0;
}

/* NFC leaves a text unchanged around a "stable" character: a starter (combining class 0) with no
 * canonical decomposition that never composes with the character before it. So NFC is applied only to
 * the segments (from the stable character before to the stable character after) that hold anything
 * else: plain CJK, Cyrillic, emoji... text is copied without running utf8proc at all. Hangul jamo
 * compose algorithmically (utf8proc has no table entry for them): never stable. */
static uint8_t nfc_stable_bmp[65536 / 8];
static pthread_once_t nfc_once = PTHREAD_ONCE_INIT;

static bool nfc_stable_slow(uint32_t cp)
{
    if (cp < 0x80) return true;
    if (cp >= 0x1100 && cp <= 0x11FF) return false;
    const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
    if (p->combining_class) return false;
    if (p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0) return false; /* canonical decomposition */
    if (p->comb_index != UINT16_MAX && p->comb_index >= 0x8000) return false;  /* second of a composition */
    return true;
}

static void nfc_init(void)
{
    for (uint32_t cp = 0; cp < 65536; cp++)
        if (cp < 0xD800 || cp > 0xDFFF)
            if (nfc_stable_slow(cp)) nfc_stable_bmp[cp >> 3] |= (uint8_t)(1u << (cp & 7));
}

static inline bool nfc_stable(uint32_t cp)
{
    return cp < 65536 ? (nfc_stable_bmp[cp >> 3] >> (cp & 7)) & 1 : nfc_stable_slow(cp);
}

static int nfc(const char *s, size_t n, struct tok_buf *out)
{
    pthread_once(&nfc_once, nfc_init);
    size_t seg = 0, clean_from = 0; /* segment start (a stable character); start of the uncopied text */
    bool dirty = false, changed = false;
    for (size_t i = 0; i <= n;) {
        uint32_t cp = 0;
        int l = 1;
        if (i < n) {
            uint8_t c = (uint8_t)s[i];
            if (c < 0x80) cp = c;
            else cp = tok_utf8_decode((const uint8_t *)s + i, &l);
        }
        if (i == n || nfc_stable(cp)) {
            if (dirty) { /* normalize [seg, i) */
                tok_buf_put(out, s + clean_from, seg - clean_from);
                int rc = unicode_form(s + seg, i - seg, UTF8PROC_STABLE | UTF8PROC_COMPOSE, out);
                if (rc) return rc;
                clean_from = i;
                dirty = false;
                changed = true;
            }
            seg = i;
            if (i == n) break;
        } else {
            dirty = true;
        }
        i += (size_t)l;
    }
    if (!changed) return 0;
    tok_buf_put(out, s + clean_from, n - clean_from);
    return 1;
}

/* One normalizer: s -> out (out is empty on entry). Returns 1 if out holds the result, 0 if the
 * result is s unchanged, or a negative status. */
static int apply(struct tok_enc *e, const struct tok_norm *nm, const char *s, size_t n, struct tok_buf *out)
{
    const struct loom_tokenizer *t = e->t;
    switch (nm->type) {
    case TN_NFC:
        if (all_below(s, n, 0x300)) return 0; /* nothing below U+0300 composes or decomposes in NFC */
        return nfc(s, n, out);
    case TN_NFD:
        if (all_below(s, n, 0xC0)) return 0;
        return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE, out) ?: 1;
    case TN_NFKC:
        if (all_below(s, n, 0x80)) return 0;
        return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out) ?: 1;
    case TN_NFKD:
        if (all_below(s, n, 0x80)) return 0;
        return unicode_form(s, n, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out) ?: 1;
    case TN_LOWERCASE:
        tok_buf_reserve(out, n);
        for (size_t i = 0; i < n;) {
            int l;
            uint32_t cp = tok_utf8_decode((const uint8_t *)s + i, &l);
            char u[8];
            if (cp == 0x130) { /* İ -> i + combining dot above (Rust's full mapping) */
                tok_buf_put(out, "i\xcc\x87", 3);
            } else {
                uint32_t lc = (uint32_t)utf8proc_tolower((utf8proc_int32_t)cp);
                tok_buf_put(out, u, (size_t)loom_utf8_encode(lc, u));
            }
            i += (size_t)l;
        }
        return 1;
    case TN_STRIP: {
        size_t a = 0, b = n;
        if (nm->left)
            while (a < b) {
                int l;
                uint32_t cp = tok_utf8_decode((const uint8_t *)s + a, &l);
                if (!tok_is_whitespace(cp)) break;
                a += (size_t)l;
            }
        if (nm->right)
            while (b > a) {
                size_t k = b - 1;
                while (k > a && ((uint8_t)s[k] & 0xC0) == 0x80) k--;
                int l;
                uint32_t cp = tok_utf8_decode((const uint8_t *)s + k, &l);
                if (!tok_is_whitespace(cp)) break;
                b = k;
            }
        if (a == 0 && b == n) return 0;
        tok_buf_put(out, s + a, b - a);
        return 1;
    }
    case TN_STRIP_ACCENTS:
        if (all_below(s, n, 0x300)) return 0;
        for (size_t i = 0; i < n;) {
            int l;
            uint32_t cp = tok_utf8_decode((const uint8_t *)s + i, &l);
            utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
            if (c != UTF8PROC_CATEGORY_MN && c != UTF8PROC_CATEGORY_MC && c != UTF8PROC_CATEGORY_ME)
                tok_buf_put(out, s + i, (size_t)l);
            i += (size_t)l;
        }
        return 1;
    case TN_REPLACE:
        return tok_pattern_replace(&nm->pat, &e->m, s, n, nm->str, nm->str_len, out) ?: 1;
    case TN_PREPEND:
        if (!n) return 0;
        tok_buf_put(out, nm->str, nm->str_len);
        tok_buf_put(out, s, n);
        return 1;
    case TN_APPEND:
        if (!n) return 0;
        tok_buf_put(out, s, n);
        tok_buf_put(out, nm->str, nm->str_len);
        return 1;
    case TN_BYTELEVEL:
        tok_buf_reserve(out, n * 2);
        for (size_t i = 0; i < n; i++) {
            uint8_t c = (uint8_t)s[i];
            tok_buf_put(out, t->byte_char[c], t->byte_char_len[c]);
        }
        return 1;
    }
    return 0;
}

int tok_normalize(struct tok_enc *e, const char *s, size_t n, const char **out, size_t *out_len)
{
    const struct loom_tokenizer *t = e->t;
    const char *cur = s;
    size_t cur_len = n;
    int which = 0;
    for (int i = 0; i < t->n_norms; i++) {
        struct tok_buf *dst = &e->nb[which];
        dst->len = 0;
        int rc = apply(e, &t->norms[i], cur, cur_len, dst);
        if (rc < 0) return rc;
        if (rc == 1) {
            cur = dst->p ? dst->p : "";
            cur_len = dst->len;
            which ^= 1;
        }
    }
    *out = cur;
    *out_len = cur_len;
    return 0;
}
