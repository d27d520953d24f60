/*
 * tok_json.c: fast loading of the two large sections of tokenizer.json, model.vocab (150k+ entries)
 * and model.merges (150k-300k entries), which make jansson's DOM slow to build. A small scanner finds
 * their byte ranges; the rest of the file (with those two values replaced by {} and []) goes to
 * jansson as usual, and the sections are parsed here straight into the tokenizer's own tables.
 * Anything unexpected (a syntax error, a non-integer id, bad UTF-8...) makes the scanner give up and
 * the caller parses the whole file with jansson instead, which reports the error: this file only
 * ever speeds up files that jansson would accept the same way.
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

struct scan {
    const char *p, *end;
};

static void ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

static int hex4(const char *p, uint32_t *v)
{
    *v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int x;
        if (c >= '0' && c <= '9') x = c - '0';
        else if (c >= 'a' && c <= 'f') x = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') x = c - 'A' + 10;
        else return -1;
        *v = *v * 16 + (uint32_t)x;
    }
    return 0;
}

/* Parses a JSON string at s->p (the opening quote); appends its bytes to out if out != NULL. */
static int str(struct scan *s, struct tok_buf *out)
{
    if (s->p >= s->end || *s->p != '"') return -1;
    s->p++;
    const char *run = s->p;
    for (;;) {
        if (s->p >= s->end) return -1;
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            if (out) tok_buf_put(out, run, (size_t)(s->p - run));
            s->p++;
            return 0;
        }
        if (c < 0x20) return -1;
        if (c != '\\') {
            s->p++;
            continue;
        }
        if (out) tok_buf_put(out, run, (size_t)(s->p - run));
        if (s->end - s->p < 2) return -1;
        char e = s->p[1];
        s->p += 2;
        char ch;
        switch (e) {
        case '"': ch = '"'; break;
        case '\\': ch = '\\'; break;
        case '/': ch = '/'; break;
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': {
            uint32_t v, lo;
            if (s->end - s->p < 4 || hex4(s->p, &v)) return -1;
            s->p += 4;
            if (v >= 0xDC00 && v <= 0xDFFF) return -1;
            if (v >= 0xD800 && v <= 0xDBFF) {
                if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u' || hex4(s->p + 2, &lo)) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) return -1;
                s->p += 6;
                v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
            }
            if (out) {
                char u[4];
                tok_buf_put(out, u, (size_t)loom_utf8_encode(v, u));
            }
            run = s->p;
            continue;
        }
        default: return -1;
        }
        if (out) tok_buf_putc(out, ch);
        run = s->p;
    }
}

static int skip_value(struct scan *s, int depth)
{
    if (depth > 64) return -1;
    ws(s);
    if (s->p >= s->end) return -1;
    char c = *s->p;
    if (c == '"') return str(s, NULL);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        s->p++;
        ws(s);
        if (s->p < s->end && *s->p == close) {
            s->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                ws(s);
                if (str(s, NULL)) return -1;
                ws(s);
                if (s->p >= s->end || *s->p != ':') return -1;
                s->p++;
            }
            if (skip_value(s, depth + 1)) return -1;
            ws(s);
            if (s->p >= s->end) return -1;
            if (*s->p == ',') {
                s->p++;
                continue;
            }
            if (*s->p == close) {
                s->p++;
                return 0;
            }
            return -1;
        }
    }
    /* number or literal */
    const char *st = s->p;
    while (s->p < s->end && (strchr("+-.eE", *s->p) || (*s->p >= '0' && *s->p <= '9') || (*s->p >= 'a' && *s->p <= 'z')))
        s->p++;
    return s->p > st ? 0 : -1;
}

/* Inside the object at s->p, finds the values of the keys wanted (byte ranges); skips the rest. */
static int find_keys(struct scan *s, const char *const *keys, int nk, const char **vs, const char **ve)
{
    ws(s);
    if (s->p >= s->end || *s->p != '{') return -1;
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    struct tok_buf key = {0};
    for (;;) {
        ws(s);
        key.len = 0;
        if (str(s, &key)) break;
        ws(s);
        if (s->p >= s->end || *s->p != ':') break;
        s->p++;
        ws(s);
        const char *a = s->p;
        if (skip_value(s, 1)) break;
        for (int k = 0; k < nk; k++)
            if (key.len == strlen(keys[k]) && !memcmp(key.p, keys[k], key.len)) {
                vs[k] = a;
                ve[k] = s->p;
            }
        ws(s);
        if (s->p >= s->end) break;
        if (*s->p == ',') {
            s->p++;
            continue;
        }
        if (*s->p == '}') {
            s->p++;
            tok_buf_free(&key);
            return 0;
        }
        break;
    }
    tok_buf_free(&key);
    return -1;
}

int tok_json_split(const char *js, size_t n, struct tok_json_sections *out)
{
    memset(out, 0, sizeof(*out));
    struct scan s = {js, js + n};
    static const char *const top[] = {"model"};
    const char *ms = NULL, *me = NULL;
    if (find_keys(&s, top, 1, &ms, &me) || !ms) return -1;
    ws(&s);
    if (s.p != s.end) return -1;
    struct scan m = {ms, me};
    static const char *const mk[] = {"vocab", "merges"};
    const char *vs[2] = {NULL, NULL}, *ve[2] = {NULL, NULL};
    if (find_keys(&m, mk, 2, vs, ve) || !vs[0] || !vs[1] || *vs[0] != '{' || *vs[1] != '[') return -1;
    /* the rest of the document, with the two values emptied */
    int first = vs[0] < vs[1] ? 0 : 1, second = 1 - first;
    struct tok_buf r = {0};
    tok_buf_put(&r, js, (size_t)(vs[first] - js));
    tok_buf_put(&r, first == 0 ? "{}" : "[]", 2);
    tok_buf_put(&r, ve[first], (size_t)(vs[second] - ve[first]));
    tok_buf_put(&r, second == 0 ? "{}" : "[]", 2);
    tok_buf_put(&r, ve[second], (size_t)(js + n - ve[second]));
    out->rest = r.p;
    out->rest_len = r.len;
    out->vocab = vs[0];
    out->vocab_end = ve[0];
    out->merges = vs[1];
    out->merges_end = ve[1];
    return 0;
}

int tok_json_vocab(const struct tok_json_sections *j, int (*fn)(void *ctx, const char *s, size_t n, int64_t id),
                   void *ctx)
{
    struct scan s = {j->vocab, j->vocab_end};
    struct tok_buf key = {0};
    int rc = -1;
    s.p++; /* { */
    ws(&s);
    if (s.p < s.end && *s.p == '}') {
        tok_buf_free(&key);
        return 0;
    }
    for (;;) {
        ws(&s);
        key.len = 0;
        if (str(&s, &key)) break;
        ws(&s);
        if (s.p >= s.end || *s.p != ':') break;
        s.p++;
        ws(&s);
        int64_t v = 0;
        const char *st = s.p;
        while (s.p < s.end && *s.p >= '0' && *s.p <= '9' && v < 0x7fffffff) v = v * 10 + (*s.p++ - '0');
        if (s.p == st || (s.p - st > 1 && *st == '0') || v > 0x7ffffff0) break;
        if (s.p < s.end && (*s.p == '.' || *s.p == 'e' || *s.p == 'E')) break;
        if (loom_utf8_validate(key.p, key.len) != key.len) break;
        if (fn(ctx, key.p ? key.p : "", key.len, v)) break;
        ws(&s);
        if (s.p >= s.end) break;
        if (*s.p == ',') {
            s.p++;
            continue;
        }
        if (*s.p == '}') {
            rc = 0;
            break;
        }
        break;
    }
    tok_buf_free(&key);
    return rc;
}

int tok_json_merges(const struct tok_json_sections *j,
                    int (*fn)(void *ctx, const char *a, size_t al, const char *b, size_t bl, int is_pair), void *ctx)
{
    struct scan s = {j->merges, j->merges_end};
    struct tok_buf a = {0}, b = {0};
    int rc = -1;
    s.p++; /* [ */
    ws(&s);
    if (s.p < s.end && *s.p == ']') return 0;
    for (;;) {
        ws(&s);
        if (s.p >= s.end) break;
        a.len = b.len = 0;
        int pair = 0;
        if (*s.p == '"') {
            if (str(&s, &a)) break;
        } else if (*s.p == '[') {
            s.p++;
            ws(&s);
            if (str(&s, &a)) break;
            ws(&s);
            if (s.p >= s.end || *s.p != ',') break;
            s.p++;
            ws(&s);
            if (str(&s, &b)) break;
            ws(&s);
            if (s.p >= s.end || *s.p != ']') break;
            s.p++;
            pair = 1;
        } else {
            break;
        }
        if (loom_utf8_validate(a.p, a.len) != a.len ||
            loom_utf8_validate(b.p, b.len) != b.len)
            break;
        if (fn(ctx, a.p ? a.p : "", a.len, b.p ? b.p : "", b.len, pair)) {
            rc = -2; /* the callback failed (its message is set) */
            break;
        }
        ws(&s);
        if (s.p >= s.end) break;
        if (*s.p == ',') {
            s.p++;
            continue;
        }
        if (*s.p == ']') {
            rc = 0;
            break;
        }
        break;
    }
    tok_buf_free(&a);
    tok_buf_free(&b);
    return rc;
}
