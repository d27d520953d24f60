/*
 * decode.c: ids -> text as HF `tokenizers` decodes (TokenizerImpl::decode): each id becomes its
 * token string (added tokens first, then the model vocab; special added tokens dropped when
 * skip_special_tokens), the decoder chain runs over the token list, and the pieces are joined.
 * Decoders: ByteLevel (byte alphabet -> bytes, then Rust's from_utf8_lossy), Replace, ByteFallback
 * ("<0xXX>" runs -> UTF-8, one U+FFFD per byte of an invalid run), Fuse, Strip, Metaspace, BPEDecoder,
 * Sequence. Without a decoder the tokens are joined with spaces, as HF does.
 * Does not do: WordPiece and CTC decoders (refused at load), transformers' clean_up_tokenization_spaces.
 */
#include "tokenizer/tok_internal.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

void tok_dec_free(struct tok_dec *d)
{
    tok_pattern_free(&d->pat);
    free(d->str);
}

static int one_char(json_t *v, uint32_t *cp, const char *what)
{
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    uint32_t c = 0;
    int l = s ? loom_utf8_decode(s, n, &c) : -1;
    if (l < 0 || (size_t)l != n) return loom_fail(LOOM_EINVAL, "tokenizer.json: %s must be one character", what);
    *cp = c;
    return 0;
}

static int load_one(struct loom_tokenizer *t, json_t *j, int *cap)
{
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_fail(LOOM_EINVAL, "tokenizer.json: a decoder has no \"type\"");
    if (!strcmp(type, "Sequence")) {
        json_t *list = json_object_get(j, "decoders");
        if (!json_is_array(list)) return loom_fail(LOOM_EINVAL, "tokenizer.json: Sequence decoder without a list");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x)
        {
            int rc = load_one(t, x, cap);
            if (rc) return rc;
        }
        return 0;
    }
    struct tok_dec d;
    memset(&d, 0, sizeof(d));
    int rc = 0;
    json_t *v;
    if (!strcmp(type, "ByteLevel")) d.type = TD_BYTELEVEL;
    else if (!strcmp(type, "ByteFallback")) d.type = TD_BYTE_FALLBACK;
    else if (!strcmp(type, "Fuse")) d.type = TD_FUSE;
    else if (!strcmp(type, "Replace")) {
        d.type = TD_REPLACE;
        rc = tok_pattern_from_json(json_object_get(j, "pattern"), "Replace decoder", &d.pat);
        v = json_object_get(j, "content");
        if (!rc && !json_is_string(v)) rc = loom_fail(LOOM_EINVAL, "tokenizer.json: Replace decoder without \"content\"");
        if (!rc) {
            d.str_len = json_string_length(v);
            d.str = loom_strndup(json_string_value(v), d.str_len);
        }
    } else if (!strcmp(type, "Strip")) {
        d.type = TD_STRIP;
        rc = one_char(json_object_get(j, "content"), &d.ch, "Strip decoder content");
        d.start = (int)json_integer_value(json_object_get(j, "start"));
        d.stop = (int)json_integer_value(json_object_get(j, "stop"));
        if (d.start < 0 || d.stop < 0) rc = loom_fail(LOOM_EINVAL, "tokenizer.json: Strip decoder with a negative count");
    } else if (!strcmp(type, "Metaspace")) {
        d.type = TD_METASPACE;
        v = json_object_get(j, "replacement");
        if (v) rc = one_char(v, &d.ch, "Metaspace decoder replacement");
        else d.ch = 0x2581;
        const char *ps = json_string_value(json_object_get(j, "prepend_scheme"));
        if (ps) d.prepend_first = strcmp(ps, "never") != 0;
        else {
            v = json_object_get(j, "add_prefix_space");
            d.prepend_first = !v || json_is_true(v);
        }
    } else if (!strcmp(type, "BPEDecoder")) {
        d.type = TD_BPE;
        v = json_object_get(j, "suffix");
        const char *s = json_is_string(v) ? json_string_value(v) : "</w>";
        d.str_len = json_is_string(v) ? json_string_length(v) : 4;
        d.str = loom_strndup(s, d.str_len);
    } else {
        return loom_fail(LOOM_EUNSUPPORTED, "tokenizer.json: decoder type '%s' is not supported", type);
    }
    if (rc) {
        tok_dec_free(&d);
        return rc;
    }
    if (t->n_decs == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->decs = loom_realloc(t->decs, (size_t)*cap * sizeof(*t->decs));
    }
    t->decs[t->n_decs++] = d;
    return 0;
}

int tok_dec_load(struct loom_tokenizer *t, json_t *j)
{
    if (!j || json_is_null(j)) return 0;
    if (!json_is_object(j)) return loom_fail(LOOM_EINVAL, "tokenizer.json: \"decoder\" is not an object");
    t->has_decoder = true;
    int cap = 0;
    return load_one(t, j, &cap);
}

/* ---------------------------------------------------------------------------------------------- */
/* token lists */

struct tlist {
    struct tok_buf b;
    size_t *off, *len;
    size_t n, cap;
};

static void tl_begin(struct tlist *l, const char *s, size_t n)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 16;
        l->off = loom_realloc(l->off, l->cap * sizeof(size_t));
        l->len = loom_realloc(l->len, l->cap * sizeof(size_t));
    }
    l->off[l->n] = l->b.len;
    l->len[l->n] = 0;
    l->n++;
    if (n) {
        tok_buf_put(&l->b, s, n);
        l->len[l->n - 1] = n;
    }
}

/* appends to the last token */
static void tl_more(struct tlist *l, const char *s, size_t n)
{
    tok_buf_put(&l->b, s, n);
    l->len[l->n - 1] += n;
}

static void tl_free(struct tlist *l)
{
    tok_buf_free(&l->b);
    free(l->off);
    free(l->len);
}

#define TOK(l, i) ((l)->b.p ? (l)->b.p + (l)->off[i] : "")

static bool parse_byte_token(const char *s, size_t n, uint8_t *out)
{
    /* Rust: token.len() == 6 && starts_with("<0x") && ends_with('>') && u8::from_str_radix(&token[3..5], 16) */
    if (n != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return false;
    const char *d = s + 3;
    int nd = 2;
    if (d[0] == '+') { /* from_str_radix accepts a leading '+' */
        d++;
        nd = 1;
    }
    unsigned v = 0;
    for (int i = 0; i < nd; i++) {
        char c = d[i];
        int x;
        if (c >= '0' && c <= '9') x = c - '0';
        else if (c >= 'a' && c <= 'f') x = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') x = c - 'A' + 10;
        else return false;
        v = v * 16 + (unsigned)x;
    }
    *out = (uint8_t)v;
    return true;
}

/* Scratch of one decode, reusable from call to call (the streaming detokenizer keeps one). */
struct tok_dec_ctx {
    struct tlist a, b;
    struct tok_buf res, bytes, run;
    struct tok_matcher m;
    struct tok_spanvec sv;
};

/* Appends s with every match of p replaced by rep, as one new token of out. */
static int replace_token(struct tok_dec_ctx *c, const struct tok_pattern *p, const char *s, size_t n, const char *rep,
                         size_t rep_len, struct tlist *out)
{
    tl_begin(out, NULL, 0);
    if (!p->re) { /* literal */
        size_t i = 0;
        while (p->lit_len && i + p->lit_len <= n) {
            const char *f = tok_memmem(s + i, n - i, p->lit, p->lit_len);
            if (!f) break;
            tl_more(out, s + i, (size_t)(f - (s + i)));
            tl_more(out, rep, rep_len);
            i = (size_t)(f - s) + p->lit_len;
        }
        tl_more(out, s + i, n - i);
        return 0;
    }
    int rc = tok_pattern_spans(p, &c->m, s, n, &c->sv);
    if (rc) return rc;
    for (size_t k = 0; k < c->sv.n; k++) {
        if (c->sv.v[k].match) tl_more(out, rep, rep_len);
        else tl_more(out, s + c->sv.v[k].start, c->sv.v[k].end - c->sv.v[k].start);
    }
    return 0;
}

static int run_decoder(const struct loom_tokenizer *t, const struct tok_dec *d, struct tok_dec_ctx *c,
                       const struct tlist *in, struct tlist *out)
{
    static const char fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};
    out->n = 0;
    out->b.len = 0;
    switch (d->type) {
    case TD_BYTELEVEL: {
        struct tok_buf *bytes = &c->bytes;
        bytes->len = 0;
        for (size_t i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t n = in->len[i], start = bytes->len;
            tok_buf_reserve(bytes, n);
            bool ok = true;
            for (size_t k = 0; k < n;) {
                uint8_t b0 = (uint8_t)s[k];
                uint32_t cp;
                int l = 1;
                if (b0 < 0x80) cp = b0;
                else cp = tok_utf8_decode((const uint8_t *)s + k, &l);
                if (cp >= 0x144 || !t->is_byte_char[cp]) {
                    ok = false;
                    break;
                }
                bytes->p[bytes->len++] = (char)t->byte_of_char[cp];
                k += (size_t)l;
            }
            if (!ok) { /* a character outside the byte alphabet: the token's own bytes */
                bytes->len = start;
                tok_buf_put(bytes, s, n);
            }
        }
        tl_begin(out, NULL, 0);
        tok_buf_reserve(&out->b, bytes->len + 16);
        size_t before = out->b.len;
        tok_utf8_lossy((const uint8_t *)(bytes->p ? bytes->p : ""), bytes->len, &out->b);
        out->len[0] = out->b.len - before;
        return 0;
    }
    case TD_REPLACE:
        for (size_t i = 0; i < in->n; i++) {
            int rc = replace_token(c, &d->pat, TOK(in, i), in->len[i], d->str, d->str_len, out);
            if (rc) return rc;
        }
        return 0;
    case TD_BYTE_FALLBACK: {
        struct tok_buf *run = &c->run;
        run->len = 0;
        for (size_t i = 0; i <= in->n; i++) {
            uint8_t byte;
            if (i < in->n && parse_byte_token(TOK(in, i), in->len[i], &byte)) {
                tok_buf_putc(run, (char)byte);
                continue;
            }
            if (run->len) {
                if (loom_utf8_validate(run->p, run->len) == run->len) {
                    tl_begin(out, run->p, run->len);
                } else {
                    for (size_t k = 0; k < run->len; k++) tl_begin(out, fffd, 3);
                }
                run->len = 0;
            }
            if (i < in->n) tl_begin(out, TOK(in, i), in->len[i]);
        }
        return 0;
    }
    case TD_FUSE:
        tl_begin(out, NULL, 0);
        for (size_t i = 0; i < in->n; i++) tl_more(out, TOK(in, i), in->len[i]);
        return 0;
    case TD_STRIP: {
        char ch[4];
        int cl = loom_utf8_encode(d->ch, ch);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t a = 0, b = in->len[i];
            for (int k = 0; k < d->start && a + (size_t)cl <= b && !memcmp(s + a, ch, (size_t)cl); k++) a += (size_t)cl;
            for (int k = 0; k < d->stop && b >= a + (size_t)cl && !memcmp(s + b - cl, ch, (size_t)cl); k++)
                b -= (size_t)cl;
            tl_begin(out, s + a, b - a);
        }
        return 0;
    }
    case TD_METASPACE: {
        char ch[4];
        int cl = loom_utf8_encode(d->ch, ch);
        for (size_t i = 0; i < in->n; i++) {
            const char *s = TOK(in, i);
            size_t n = in->len[i], k = 0, run = 0;
            tl_begin(out, NULL, 0);
            while (k < n) {
                if (k + (size_t)cl <= n && !memcmp(s + k, ch, (size_t)cl)) {
                    tl_more(out, s + run, k - run);
                    if (!(i == 0 && d->prepend_first)) tl_more(out, " ", 1);
                    k += (size_t)cl;
                    run = k;
                } else {
                    k++;
                }
            }
            tl_more(out, s + run, n - run);
        }
        return 0;
    }
    case TD_BPE: {
        struct tok_pattern lit = {.lit = d->str, .lit_len = d->str_len};
        for (size_t i = 0; i < in->n; i++) {
            bool last = i + 1 == in->n;
            replace_token(c, &lit, TOK(in, i), in->len[i], last ? "" : " ", last ? 0 : 1, out);
        }
        return 0;
    }
    case TD_WORDPIECE: return loom_fail(LOOM_EUNSUPPORTED, "WordPiece decoder");
    }
    return 0;
}

struct tok_dec_ctx *tok_dec_ctx_new(void)
{
    return loom_calloc(1, sizeof(struct tok_dec_ctx));
}

void tok_dec_ctx_free(struct tok_dec_ctx *c)
{
    if (!c) return;
    tl_free(&c->a);
    tl_free(&c->b);
    tok_buf_free(&c->res);
    tok_buf_free(&c->bytes);
    tok_buf_free(&c->run);
    tok_matcher_free(&c->m);
    tok_spanvec_free(&c->sv);
    free(c);
}

int tok_decode_ctx(const struct loom_tokenizer *t, struct tok_dec_ctx *c, const int32_t *ids, int n_ids,
                   bool skip_special_tokens, const char **text, size_t *len)
{
    if (n_ids < 0 || (n_ids && !ids)) return loom_fail(LOOM_EINVAL, "tokenizer: bad id list");
    struct tlist *a = &c->a;
    a->n = 0;
    a->b.len = 0;
    for (int i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= t->vocab_size)
            return loom_fail(LOOM_EINVAL, "tokenizer: token id %d is out of range [0, %d)", id, t->vocab_size);
        int ai = t->added_by_id[id];
        if (ai >= 0) {
            if (skip_special_tokens && t->added[ai].special) continue;
            tl_begin(a, t->added[ai].content, t->added[ai].len);
        } else if (id < t->bpe.n_ids && t->bpe.str[id]) {
            tl_begin(a, t->bpe.str[id], t->bpe.len[id]);
        } /* an id with no token (a hole in the vocab) is skipped, as HF does */
    }
    struct tok_buf *res = &c->res;
    res->len = 0;
    if (!t->has_decoder) {
        for (size_t i = 0; i < a->n; i++) {
            if (i) tok_buf_putc(res, ' ');
            tok_buf_put(res, TOK(a, i), a->len[i]);
        }
    } else {
        struct tlist *in = a, *out = &c->b;
        for (int k = 0; k < t->n_decs; k++) {
            int rc = run_decoder(t, &t->decs[k], c, in, out);
            if (rc) return rc;
            struct tlist *x = in;
            in = out;
            out = x;
        }
        for (size_t i = 0; i < in->n; i++) tok_buf_put(res, TOK(in, i), in->len[i]);
    }
    tok_buf_putc(res, 0);
    *text = res->p;
    *len = res->len - 1;
    return 0;
}

int loom_tokenizer_decode(const struct loom_tokenizer *t, const int32_t *ids, int n_ids, bool skip_special_tokens,
                          char **text, size_t *len)
{
    *text = NULL;
    if (len) *len = 0;
    struct tok_dec_ctx c;
    memset(&c, 0, sizeof(c));
    const char *s;
    size_t n;
    int rc = tok_decode_ctx(t, &c, ids, n_ids, skip_special_tokens, &s, &n);
    if (!rc) {
        *text = c.res.p; /* hand over the result buffer */
        c.res.p = NULL;
        if (len) *len = n;
    }
    c.res.cap = 0;
    tok_buf_free(&c.res);
    tl_free(&c.a);
    tl_free(&c.b);
    tok_buf_free(&c.bytes);
    tok_buf_free(&c.run);
    tok_matcher_free(&c.m);
    tok_spanvec_free(&c.sv);
    return rc;
}
