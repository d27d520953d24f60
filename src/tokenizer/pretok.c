/*
 * pretok.c: tokenizer.json's pre-tokenizers, run as HF `tokenizers` runs them: each step splits
 * every piece the previous step produced, then the BPE model runs on each final piece ("word").
 * Steps: Split (String or Regex pattern, behavior Removed/Isolated/MergedWithPrevious/
 * MergedWithNext/Contiguous, invert), ByteLevel (add_prefix_space, use_regex with GPT-2's regex,
 * then bytes -> the byte-level alphabet), Metaspace (replacement, prepend_scheme always/first/never
 * or the older add_prefix_space, split), Digits, Whitespace, WhitespaceSplit, Punctuation,
 * CharDelimiterSplit, BertPreTokenizer, and Sequence (flattened).
 * Pieces stream depth-first, so memory stays proportional to one piece per step, not to the input.
 * Does not do: UnicodeScripts, FixedLength, or offsets.
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

static const char GPT2_RE[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

void tok_pretok_free(struct tok_pretok *p)
{
    tok_pattern_free(&p->pat);
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards. */
void tok_bytelevel_init(struct loom_tokenizer *t)
{
    int n = 0;
    memset(t->is_byte_char, 0, sizeof(t->is_byte_char));
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        uint32_t cp = keep ? (uint32_t)b : (uint32_t)(256 + n++);
        t->byte_char_len[b] = (uint8_t)loom_utf8_encode(cp, t->byte_char[b]);
        t->byte_of_char[cp] = (uint8_t)b;
        t->is_byte_char[cp] = true;
    }
}

static enum tok_split_behavior parse_behavior(json_t *v, enum tok_split_behavior dflt, int *ok)
{
    *ok = 1;
    const char *s = json_string_value(v);
    if (!s) return dflt;
    if (!strcmp(s, "Removed")) return SB_REMOVED;
    if (!strcmp(s, "Isolated")) return SB_ISOLATED;
    if (!strcmp(s, "MergedWithPrevious")) return SB_MERGED_PREV;
    if (!strcmp(s, "MergedWithNext")) return SB_MERGED_NEXT;
    if (!strcmp(s, "Contiguous")) return SB_CONTIGUOUS;
    *ok = 0;
    return dflt;
}

static int set_char(struct tok_pretok *p, json_t *v, const char *what)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    uint32_t c = 0;
    int l = s ? loom_utf8_decode(s, n, &c) : -1;
    if (l < 0 || (size_t)l != n) return loom_fail(LOOM_EINVAL, "tokenizer.json: %s must be one character", what);
    p->replacement = c;
    memcpy(p->rep_utf8, s, (size_t)l);
    p->rep_len = l;
    return 0;
}

static int load_one(struct loom_tokenizer *t, json_t *j, int *cap)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_fail(LOOM_EINVAL, "tokenizer.json: a pre_tokenizer has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "pretokenizers");
        if (!json_is_array(list))
            return loom_fail(LOOM_EINVAL, "tokenizer.json: Sequence pre_tokenizer without a list");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x)
        {
            int rc = load_one(t, x, cap);
            if (rc) return rc;
        }
        return 0;
    }
    struct tok_pretok p;
    memset(&p, 0, sizeof(p));
    int ok = 1, rc = 0;
    json_t *v;
    if (!strcmp(type, "Split")) {
        p.type = TP_SPLIT;
        rc = tok_pattern_from_json(json_object_get(j, "pattern"), "Split pre_tokenizer", &p.pat);
        if (rc) return rc;
        p.behavior = parse_behavior(json_object_get(j, "behavior"), SB_ISOLATED, &ok);
        p.invert = json_is_true(json_object_get(j, "invert"));
    } else if (!strcmp(type, "ByteLevel")) {
        p.type = TP_BYTELEVEL;
        v = json_object_get(j, "add_prefix_space");
        p.add_prefix_space = v ? json_is_true(v) : true;
        v = json_object_get(j, "use_regex");
        p.use_regex = v ? json_is_true(v) : true;
        if (p.use_regex) rc = tok_pattern_compile_regex(GPT2_RE, strlen(GPT2_RE), "ByteLevel pre_tokenizer", &p.pat);
    } else if (!strcmp(type, "Metaspace")) {
        p.type = TP_METASPACE;
        v = json_object_get(j, "replacement");
        if (v) {
            rc = set_char(&p, v, "Metaspace replacement");
        } else {
            p.replacement = 0x2581;
            memcpy(p.rep_utf8, "\xe2\x96\x81", 3);
            p.rep_len = 3;
        }
        const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
        if (ps) {
            if (!strcmp(ps, "always")) p.prepend_scheme = PS_ALWAYS;
            else if (!strcmp(ps, "first")) p.prepend_scheme = PS_FIRST;
            else if (!strcmp(ps, "never")) p.prepend_scheme = PS_NEVER;
            else ok = 0;
        } else {
            v = json_object_get(j, "add_prefix_space");
            p.prepend_scheme = !v || json_is_true(v) ? PS_ALWAYS : PS_NEVER;
        }
        v = json_object_get(j, "split");
        p.split = v ? json_is_true(v) : true;
    } else if (!strcmp(type, "Digits")) {
        p.type = TP_DIGITS;
        p.individual_digits = json_is_true(json_object_get(j, "individual_digits"));
    } else if (!strcmp(type, "Whitespace")) {
        p.type = TP_WHITESPACE;
        rc = tok_pattern_compile_regex("\\w+|[^\\w\\s]+", 13, "Whitespace pre_tokenizer", &p.pat);
    } else if (!strcmp(type, "WhitespaceSplit")) {
        p.type = TP_WHITESPACE_SPLIT;
    } else if (!strcmp(type, "Punctuation")) {
        p.type = TP_PUNCTUATION;
        p.behavior = parse_behavior(json_object_get(j, "behavior"), SB_ISOLATED, &ok);
    } else if (!strcmp(type, "CharDelimiterSplit")) {
        p.type = TP_CHAR_DELIM;
        rc = set_char(&p, json_object_get(j, "delimiter"), "CharDelimiterSplit delimiter");
    } else if (!strcmp(type, "BertPreTokenizer")) {
        p.type = TP_BERT;
    } else {
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: pre_tokenizer type '%s' is not supported", type);
    }
    if (!rc && !ok) rc = loom_fail(LOOM_EINVAL, "tokenizer.json: %s pre_tokenizer has an unknown option value", type);
    if (rc) {
        tok_pretok_free(&p);
        return rc;
    }
    if (t->n_pretoks >= TOK_MAX_DEPTH - 1) {
        tok_pretok_free(&p);
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: more than %d pre_tokenizer steps", TOK_MAX_DEPTH - 1);
    }
    if (t->n_pretoks == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->pretoks = loom_realloc(t->pretoks, (size_t)*cap * sizeof(*t->pretoks));
    }
    t->pretoks[t->n_pretoks++] = p;
    return 0;
}

int tok_pretok_load(struct loom_tokenizer *t, json_t *j)
{
    if (!j || json_is_null(j)) return 0;
    if (!json_is_object(j)) return loom_fail(LOOM_EINVAL, "tokenizer.json: \"pre_tokenizer\" is not an object");
    int cap = 0;
    return load_one(t, j, &cap);
}

/* ---------------------------------------------------------------------------------------------- */
/* running */

static bool is_numeric(uint32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* HF's is_punc: ASCII punctuation or a Unicode P* character */
static bool is_punc(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) || (cp >= 123 && cp <= 126);
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

enum char_pred { CP_NUMERIC, CP_WHITESPACE, CP_PUNCT, CP_EQUAL };

/* HF's find_matches for a char predicate: every matching character is its own match. */
static void char_spans(const char *s, size_t n, enum char_pred pred, uint32_t ch, struct tok_spanvec *out)
{
    out->n = 0;
    if (!n) {
        tok_span_push(out, 0, 0, false);
        return;
    }
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        int l;
        uint32_t cp = tok_utf8_decode((const uint8_t *)s + i, &l);
        bool m;
        switch (pred) {
        case CP_NUMERIC: m = is_numeric(cp); break;
        case CP_WHITESPACE: m = tok_is_whitespace(cp); break;
        case CP_PUNCT: m = is_punc(cp); break;
        default: m = cp == ch; break;
        }
        if (m) {
            if (last < i) tok_span_push(out, (uint32_t)last, (uint32_t)i, false);
            tok_span_push(out, (uint32_t)i, (uint32_t)(i + (size_t)l), true);
            last = i + (size_t)l;
        }
        i += (size_t)l;
    }
    if (n > last) tok_span_push(out, (uint32_t)last, (uint32_t)n, false);
}

/* HF's NormalizedString::split: match spans -> kept pieces, in place. */
static void apply_behavior(struct tok_spanvec *sv, enum tok_split_behavior b)
{
    size_t k = 0;
    bool prev = false;
    switch (b) {
    case SB_ISOLATED: return;
    case SB_REMOVED:
        for (size_t i = 0; i < sv->n; i++)
            if (!sv->v[i].match) sv->v[k++] = sv->v[i];
        break;
    case SB_CONTIGUOUS:
        for (size_t i = 0; i < sv->n; i++) {
            struct tok_span s = sv->v[i];
            if (s.match == prev && k > 0) sv->v[k - 1].end = s.end;
            else sv->v[k++] = s;
            prev = s.match;
        }
        break;
    case SB_MERGED_PREV:
        for (size_t i = 0; i < sv->n; i++) {
            struct tok_span s = sv->v[i];
            if (s.match && !prev && k > 0) sv->v[k - 1].end = s.end;
            else sv->v[k++] = s;
            prev = s.match;
        }
        break;
    case SB_MERGED_NEXT: {
        /* right to left, written from the right end of the array */
        size_t w = sv->n;
        for (size_t i = sv->n; i-- > 0;) {
            struct tok_span s = sv->v[i];
            if (s.match && !prev && w < sv->n) sv->v[w].start = s.start;
            else sv->v[--w] = s;
            prev = s.match;
        }
        k = sv->n - w;
        memmove(sv->v, sv->v + w, k * sizeof(*sv->v));
        break;
    }
    }
    sv->n = k;
}

static int run_level(struct tok_enc *e, int depth, const char *s, size_t n, bool at_start);

/* Recurses into every non-empty piece of sv over s. */
static int each_piece(struct tok_enc *e, int depth, const char *s, const struct tok_spanvec *sv, bool at_start)
{
    for (size_t i = 0; i < sv->n; i++) {
        uint32_t a = sv->v[i].start, b = sv->v[i].end;
        if (a == b) continue;
        int rc = run_level(e, depth + 1, s + a, b - a, at_start && a == 0);
        if (rc) return rc;
    }
    return 0;
}

static int run_level(struct tok_enc *e, int depth, const char *s, size_t n, bool at_start)
{
    const struct loom_tokenizer *t = e->t;
    if (n == 0) return 0;
    if (depth >= t->n_pretoks) return tok_bpe_word(e, s, n);
    const struct tok_pretok *p = &t->pretoks[depth];
    struct tok_spanvec *sv = &e->spans[depth];
    int rc;
    switch (p->type) {
    case TP_SPLIT:
        rc = tok_pattern_spans(&p->pat, &e->m, s, n, sv);
        if (rc) return rc;
        if (p->invert)
            for (size_t i = 0; i < sv->n; i++) sv->v[i].match = !sv->v[i].match;
        apply_behavior(sv, p->behavior);
        return each_piece(e, depth, s, sv, at_start);
    case TP_WHITESPACE:
        rc = tok_pattern_spans(&p->pat, &e->m, s, n, sv);
        if (rc) return rc;
        for (size_t i = 0; i < sv->n; i++) sv->v[i].match = !sv->v[i].match; /* keep the matches */
        apply_behavior(sv, SB_REMOVED);
        return each_piece(e, depth, s, sv, at_start);
    case TP_DIGITS:
        char_spans(s, n, CP_NUMERIC, 0, sv);
        apply_behavior(sv, p->individual_digits ? SB_ISOLATED : SB_CONTIGUOUS);
        return each_piece(e, depth, s, sv, at_start);
    case TP_WHITESPACE_SPLIT:
        char_spans(s, n, CP_WHITESPACE, 0, sv);
        apply_behavior(sv, SB_REMOVED);
        return each_piece(e, depth, s, sv, at_start);
    case TP_PUNCTUATION:
        char_spans(s, n, CP_PUNCT, 0, sv);
        apply_behavior(sv, p->behavior);
        return each_piece(e, depth, s, sv, at_start);
    case TP_CHAR_DELIM:
        char_spans(s, n, CP_EQUAL, p->replacement, sv);
        apply_behavior(sv, SB_REMOVED);
        return each_piece(e, depth, s, sv, at_start);
    case TP_BERT: {
        /* whitespace (removed), then punctuation (isolated) inside each piece */
        char_spans(s, n, CP_WHITESPACE, 0, sv);
        apply_behavior(sv, SB_REMOVED);
        struct tok_spanvec *sv2 = &e->spans2[depth];
        for (size_t i = 0; i < sv->n; i++) {
            uint32_t a = sv->v[i].start, b = sv->v[i].end;
            if (a == b) continue;
            char_spans(s + a, b - a, CP_PUNCT, 0, sv2);
            for (size_t k = 0; k < sv2->n; k++) {
                uint32_t x = sv2->v[k].start, y = sv2->v[k].end;
                if (x == y) continue;
                rc = run_level(e, depth + 1, s + a + x, y - x, at_start && a + x == 0);
                if (rc) return rc;
            }
        }
        return 0;
    }
    case TP_METASPACE: {
        struct tok_buf *b = &e->lvl_a[depth];
        b->len = 0;
        tok_buf_reserve(b, n + 8);
        bool starts = n >= (size_t)p->rep_len && !memcmp(s, p->rep_utf8, (size_t)p->rep_len);
        bool first_is_space = n && s[0] == ' ';
        /* after the replace, the text starts with the replacement iff it did or began with ' ' */
        bool starts_after = starts || first_is_space;
        if (!starts_after && (p->prepend_scheme == PS_ALWAYS || (p->prepend_scheme == PS_FIRST && at_start)))
            tok_buf_put(b, p->rep_utf8, (size_t)p->rep_len);
        for (size_t i = 0; i < n; i++) {
            if (s[i] == ' ') tok_buf_put(b, p->rep_utf8, (size_t)p->rep_len);
            else tok_buf_putc(b, s[i]);
        }
        if (!p->split) return run_level(e, depth + 1, b->p, b->len, at_start);
        char_spans(b->p, b->len, CP_EQUAL, p->replacement, sv);
        apply_behavior(sv, SB_MERGED_NEXT);
        return each_piece(e, depth, b->p, sv, at_start);
    }
    case TP_BYTELEVEL: {
        const char *src = s;
        size_t sn = n;
        if (p->add_prefix_space && s[0] != ' ') {
            struct tok_buf *a = &e->lvl_a[depth];
            a->len = 0;
            tok_buf_putc(a, ' ');
            tok_buf_put(a, s, n);
            src = a->p;
            sn = a->len;
        }
        if (p->use_regex) {
            rc = tok_pattern_spans(&p->pat, &e->m, src, sn, sv);
            if (rc) return rc;
        } else {
            sv->n = 0;
            tok_span_push(sv, 0, (uint32_t)sn, false);
        }
        struct tok_buf *b = &e->lvl_b[depth];
        /* the last step before the model: the cache takes the piece itself as key, so a word seen
         * before skips the byte mapping as well as the merges */
        bool last = depth + 1 == t->n_pretoks;
        for (size_t i = 0; i < sv->n; i++) {
            uint32_t x = sv->v[i].start, y = sv->v[i].end;
            if (x == y) continue;
            uint64_t h = 0;
            if (last && tok_cache_get(e, src + x, y - x, &h)) continue;
            b->len = 0;
            tok_buf_reserve(b, (size_t)(y - x) * 2 + 2);
            char *o = b->p;
            for (uint32_t k = x; k < y; k++) { /* 2-byte store, advance by the character's length */
                uint8_t c = (uint8_t)src[k];
                memcpy(o, t->byte_char[c], 2);
                o += t->byte_char_len[c];
            }
            b->len = (size_t)(o - b->p);
            if (last) {
                size_t before = e->n_ids;
                rc = tok_bpe_word_nocache(e, b->p, b->len);
                if (!rc) tok_cache_put(e, src + x, y - x, h, before);
            } else {
                rc = run_level(e, depth + 1, b->p, b->len, at_start && x == 0);
            }
            if (rc) return rc;
        }
        return 0;
    }
    }
    return 0;
}

int tok_pretok_run(struct tok_enc *e, const char *s, size_t n, bool at_start)
{
    return run_level(e, 0, s, n, at_start);
}
