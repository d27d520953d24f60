/*
 * tok_util.c: what the tokenizer files share: growable buffers, UTF-8 (the unchecked decoder and
 * Rust's lossy conversion; strict decoding and validation are in core/utf8.c), Unicode whitespace, and
 * patterns: tokenizer.json's {"String": ...} (a literal) or
 * {"Regex": ...} (an Oniguruma regex, run here by pcre2 with JIT after translating the few escapes
 * whose meaning differs: \s \S \h \H, and (?m)), with HF's find_iter semantics for empty matches.
 * Does not do: Oniguruma-only syntax beyond those (class intersection &&, \K in lookbehind...).
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------- */
/* buffers */

void tok_buf_reserve(struct tok_buf *b, size_t extra)
{
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra) cap *= 2;
    b->p = loom_realloc(b->p, cap);
    b->cap = cap;
}

void tok_buf_put(struct tok_buf *b, const void *s, size_t n)
{
    if (!n) return;
    tok_buf_reserve(b, n);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void tok_buf_free(struct tok_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void tok_spanvec_grow(struct tok_spanvec *sv)
{
    sv->cap = sv->cap ? sv->cap * 2 : 64;
    sv->v = loom_realloc(sv->v, sv->cap * sizeof(*sv->v));
}

void tok_spanvec_free(struct tok_spanvec *sv)
{
    free(sv->v);
    sv->v = NULL;
    sv->n = sv->cap = 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* UTF-8 */

uint32_t tok_utf8_decode(const uint8_t *s, int *len)
{
    uint8_t c = s[0];
    if (c < 0x80) {
        *len = 1;
        return c;
    }
    if (c < 0xE0) {
        *len = 2;
        return ((uint32_t)(c & 0x1F) << 6) | (s[1] & 0x3F);
    }
    if (c < 0xF0) {
        *len = 3;
        return ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
    }
    *len = 4;
    return ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
           (s[3] & 0x3F);
}

void tok_utf8_lossy(const uint8_t *s, size_t n, struct tok_buf *out)
{
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    tok_buf_reserve(out, n);
    size_t i = 0, run = 0; /* run: start of the pending valid bytes */
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int l = loom_utf8_decode((const char *)s + i, n - i, &cp);
        if (l > 0) {
            i += (size_t)l;
            continue;
        }
        /* invalid: the maximal subpart is the lead byte plus the continuation bytes that fit */
        tok_buf_put(out, s + run, i - run);
        size_t k = 1;
        uint8_t lo = 0x80, hi = 0xBF;
        int want = 0;
        if (c >= 0xC2 && c <= 0xDF) want = 2;
        else if (c == 0xE0) want = 3, lo = 0xA0;
        else if (c >= 0xE1 && c <= 0xEC) want = 3;
        else if (c == 0xED) want = 3, hi = 0x9F;
        else if (c >= 0xEE && c <= 0xEF) want = 3;
        else if (c == 0xF0) want = 4, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) want = 4;
        else if (c == 0xF4) want = 4, hi = 0x8F;
        if (want) {
            if (i + k < n && s[i + k] >= lo && s[i + k] <= hi) {
                k++;
                while ((int)k < want && i + k < n && s[i + k] >= 0x80 && s[i + k] <= 0xBF) k++;
            }
        }
        tok_buf_put(out, fffd, 3);
        i += k;
        run = i;
    }
    tok_buf_put(out, s + run, n - run);
}

bool tok_is_whitespace(uint32_t c)
{
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---------------------------------------------------------------------------------------------- */
/* patterns */

/* Oniguruma's \s (Ruby syntax, Unicode): 0009-000D, 0085, Zs, Zl, Zp. pcre2's \s with UCP also takes
 * U+180E, so both are spelled out. */
#define ONIG_SPACE "\\x{09}-\\x{0D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static void translate_regex(const char *src, size_t n, struct tok_buf *o)
{
    bool in_class = false;
    size_t class_start = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < n) {
            char d = src[i + 1];
            if (d == 's') {
                if (in_class) tok_buf_put(o, ONIG_SPACE, strlen(ONIG_SPACE));
                else tok_buf_put(o, "[" ONIG_SPACE "]", strlen(ONIG_SPACE) + 2);
            } else if (d == 'S' && !in_class) {
                tok_buf_put(o, "[^" ONIG_SPACE "]", strlen(ONIG_SPACE) + 3);
            } else if (d == 'h') {
                tok_buf_put(o, in_class ? "0-9a-fA-F" : "[0-9a-fA-F]", in_class ? 9 : 11);
            } else if (d == 'H' && !in_class) {
                tok_buf_put(o, "[^0-9a-fA-F]", 12);
            } else {
                tok_buf_put(o, src + i, 2);
            }
            i++;
            continue;
        }
        if (in_class) {
            if (c == '[' && i + 1 < n && src[i + 1] == ':') { /* POSIX bracket [:alpha:] */
                const char *e = strstr(src + i, ":]");
                size_t l = e && (size_t)(e - src) < n ? (size_t)(e - src) + 2 - i : 1;
                tok_buf_put(o, src + i, l);
                i += l - 1;
                continue;
            }
            if (c == ']' && i > class_start) in_class = false;
            tok_buf_putc(o, c);
            continue;
        }
        if (c == '[') {
            in_class = true;
            tok_buf_putc(o, c);
            /* a ']' right after '[' or '[^' is a literal */
            class_start = i + 1;
            if (class_start < n && src[class_start] == '^') {
                tok_buf_putc(o, '^');
                i++;
                class_start++;
            }
            continue;
        }
        if (c == '(' && i + 2 < n && src[i + 1] == '?') {
            /* option groups: Ruby's (?m) is dot-all, which pcre2 spells (?s) */
            size_t k = i + 2;
            while (k < n && (src[k] == 'i' || src[k] == 'm' || src[k] == 'x' || src[k] == '-')) k++;
            if (k > i + 2 && k < n && (src[k] == ':' || src[k] == ')')) {
                tok_buf_put(o, "(?", 2);
                for (size_t q = i + 2; q < k; q++) tok_buf_putc(o, src[q] == 'm' ? 's' : src[q]);
                i = k - 1;
                continue;
            }
        }
        tok_buf_putc(o, c);
    }
}

int tok_pattern_compile_regex(const char *src, size_t len, const char *what, struct tok_pattern *p)
{
    struct tok_buf b = {0};
    translate_regex(src, len, &b);
    int err;
    PCRE2_SIZE off;
    /* Ruby syntax: ^ and $ are line anchors */
    p->re = pcre2_compile((PCRE2_SPTR)(b.p ? b.p : ""), b.len, PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &off,
                          NULL);
    tok_buf_free(&b);
    if (!p->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof(msg));
        return loom_fail(LOOM_EINVAL, "tokenizer.json: %s: cannot compile regex '%.*s': %s", what, (int)len, src,
                         (const char *)msg);
    }
    p->jit = pcre2_jit_compile(p->re, PCRE2_JIT_COMPLETE) == 0; /* without JIT, pcre2_match interprets */
    return 0;
}

int tok_pattern_from_json(json_t *j, const char *what, struct tok_pattern *p)
{
    memset(p, 0, sizeof(*p));
    json_t *s;
    if (json_is_object(j) && (s = json_object_get(j, "String")) && json_is_string(s)) {
        p->lit_len = json_string_length(s);
        p->lit = loom_strndup(json_string_value(s), p->lit_len);
        return 0;
    }
    if (json_is_object(j) && (s = json_object_get(j, "Regex")) && json_is_string(s))
        return tok_pattern_compile_regex(json_string_value(s), json_string_length(s), what, p);
    return loom_fail(LOOM_EINVAL, "tokenizer.json: %s: pattern must be {\"String\": ...} or {\"Regex\": ...}", what);
}

void tok_pattern_free(struct tok_pattern *p)
{
    if (p->re) pcre2_code_free(p->re);
    free(p->lit);
    memset(p, 0, sizeof(*p));
}

const char *tok_memmem(const char *h, size_t hn, const char *nd, size_t nn)
{
    /* memchr + memcmp: linear, and (unlike libc's memmem under AddressSanitizer, which checks the whole
     * haystack on every call) linear in sanitizer builds too */
    if (!nn) return h;
    while (hn >= nn) {
        const char *f = memchr(h, nd[0], hn - nn + 1);
        if (!f) return NULL;
        if (!memcmp(f + 1, nd + 1, nn - 1)) return f;
        hn -= (size_t)(f + 1 - h);
        h = f + 1;
    }
    return NULL;
}

void tok_matcher_free(struct tok_matcher *m)
{
    if (m->md) pcre2_match_data_free(m->md);
    if (m->mc) pcre2_match_context_free(m->mc);
    if (m->js) pcre2_jit_stack_free(m->js);
    memset(m, 0, sizeof(*m));
}

int tok_pattern_find(const struct tok_pattern *p, struct tok_matcher *m, const char *s, size_t n, size_t from,
                     size_t *ms, size_t *me)
{
    if (!p->re) {
        if (!p->lit_len || from >= n) return 0;
        const char *f = tok_memmem(s + from, n - from, p->lit, p->lit_len);
        if (!f) return 0;
        *ms = (size_t)(f - s);
        *me = *ms + p->lit_len;
        return 1;
    }
    if (!m->md) m->md = pcre2_match_data_create(1, NULL);
    if (!m->mc) m->mc = pcre2_match_context_create(NULL);
    if (!m->md || !m->mc) LOOM_DIE("out of host memory creating pcre2 match data");
    /* pcre2's default limit (10 million backtracking steps) is too low for the pre-tokenizer regexes on
     * long runs of one character (\s*[\r\n]+ over 10 MB of spaces backtracks once per byte) */
    uint64_t limit = 10000000ull + 64ull * (n - from);
    pcre2_set_match_limit(m->mc, limit > 0xffffffffull ? 0xffffffffu : (uint32_t)limit);
    for (int attempt = 0;; attempt++) {
        int rc = p->jit ? pcre2_jit_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, m->md, m->mc)
                        : pcre2_match(p->re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, m->md, m->mc);
        if (rc == PCRE2_ERROR_NOMATCH) return 0;
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && attempt == 0) {
            /* deep backtracking on a long input: retry with a 256 MiB JIT stack */
            if (!m->js) m->js = pcre2_jit_stack_create(1 << 16, 256u << 20, NULL);
            if (!m->js) LOOM_DIE("out of host memory creating a pcre2 JIT stack");
            pcre2_jit_stack_assign(m->mc, NULL, m->js);
            continue;
        }
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return loom_fail(LOOM_EINVAL, "tokenizer regex failed on an input of %zu bytes: %s", n,
                             (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
        *ms = ov[0];
        *me = ov[1];
        return 1;
    }
}

int tok_pattern_spans(const struct tok_pattern *p, struct tok_matcher *m, const char *s, size_t n,
                      struct tok_spanvec *out)
{
    out->n = 0;
    if (n == 0) {
        tok_span_push(out, 0, 0, false);
        return 0;
    }
    size_t prev = 0, pos = 0;
    size_t last_end = (size_t)-1;
    while (pos <= n) {
        size_t a, b;
        int rc = tok_pattern_find(p, m, s, n, pos, &a, &b);
        if (rc < 0) return rc;
        if (rc == 0) break;
        if (a == b && b == last_end) {
            /* an empty match right after the previous one: step one character (onig's find_iter) */
            if (pos >= n) break;
            uint32_t cp;
            int cl = loom_utf8_decode(s + pos, n - pos, &cp);
            pos += cl > 0 ? (size_t)cl : 1;
            continue;
        }
        if (prev != a) tok_span_push(out, (uint32_t)prev, (uint32_t)a, false);
        tok_span_push(out, (uint32_t)a, (uint32_t)b, true);
        prev = b;
        last_end = b;
        pos = b;
        if (a == b) { /* let the next search start here; the check above steps past it */
        }
    }
    if (prev != n) tok_span_push(out, (uint32_t)prev, (uint32_t)n, false);
    return 0;
}

int tok_pattern_replace(const struct tok_pattern *p, struct tok_matcher *m, const char *s, size_t n, const char *rep,
                        size_t rep_len, struct tok_buf *out)
{
    struct tok_spanvec sv = {0};
    int rc = tok_pattern_spans(p, m, s, n, &sv);
    if (rc == 0) {
        for (size_t i = 0; i < sv.n; i++) {
            if (sv.v[i].match) tok_buf_put(out, rep, rep_len);
            else tok_buf_put(out, s + sv.v[i].start, sv.v[i].end - sv.v[i].start);
        }
    }
    tok_spanvec_free(&sv);
    return rc;
}
