/*
 * jinja.c: a Jinja2 interpreter for chat templates (see jinja.h for what it matches and what it leaves out).
 *
 * Sections, in dependency order: errors and the arena; UTF-8 and Python's text rules; values; the lexer
 * (jinja2's lexer.py, rule for rule: whitespace control, trim_blocks, lstrip_blocks, raw, comments);
 * the parser (jinja2's parser.py: same precedence and the same statements); the interpreter (scopes
 * as jinja2 compiles them: a for body is a fresh scope each iteration, `if` is no scope, macros close over
 * the scope they were defined in); builtins (filters, tests, methods, globals); JSON in and out; the API.
 *
 * Memory: the template owns an arena (its AST). Each render takes every value from its own arena and
 * frees it at once at the end, so values carry no reference counts and namespaces may form cycles.
 * Errors unwind with longjmp to the API function, which frees the arena and returns LOOM_EINVAL.
 * Bounds on nesting, steps, memory and output make every render finish; the C stack stays shallow.
 */
#include "tokenizer/jinja.h"
#include "core/error.h"
#include "core/utf8.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <utf8proc.h>

#define MAX_PARSE_DEPTH 200     /* nesting of statements and expressions in the source */
#define MAX_DATA_DEPTH 512      /* nesting of values (JSON in, repr, tojson, ==) */
#define MAX_RANGE 100000        /* jinja2's sandbox: range() larger than this is an error */

/* ---------------------------------------------------------------------------------------------- */
/* Errors and the arena */

struct jerr {
    jmp_buf jb;
    char msg[1024];
    bool fatal; /* a limit was hit: never deferred (see lazy_filter) */
};

static LOOM_NORETURN void raise_raw(struct jerr *e, const char *msg)
{
    if (msg != e->msg) snprintf(e->msg, sizeof e->msg, "%s", msg);
    longjmp(e->jb, 1);
}

static LOOM_NORETURN LOOM_PRINTF(3, 4) void fail_at(struct jerr *e, int line, const char *fmt, ...)
{
    char m[960];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(e->msg, sizeof e->msg, "template line %d: %s", line, m);
    else
        snprintf(e->msg, sizeof e->msg, "template: %s", m);
    longjmp(e->jb, 1);
}

struct chunk {
    struct chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
};

struct arena {
    struct chunk *head;
    size_t total, limit;
    struct jerr *err;
};

static void arena_free(struct arena *a)
{
    struct chunk *c = a->head;
    while (c) {
        struct chunk *n = c->next;
        free(c);
        c = n;
    }
    a->head = NULL;
    a->total = 0;
}

static void *ar_alloc(struct arena *a, size_t n)
{
    if (n > a->limit) {
        a->err->fatal = true;
        fail_at(a->err, 0, "memory limit of %zu MiB exceeded", a->limit >> 20);
    }
    n = (n + 15) & ~(size_t)15;
    struct chunk *h = a->head;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > 60000 ? n : 60000;
        if (a->total + cap > a->limit) {
            a->err->fatal = true;
            fail_at(a->err, 0, "memory limit of %zu MiB exceeded", a->limit >> 20);
        }
        h = malloc(sizeof(*h) + cap);
        if (!h) LOOM_DIE("out of memory (%zu bytes)", cap);
        h->cap = cap;
        h->used = 0;
        h->next = a->head;
        a->head = h;
        a->total += cap;
    }
    void *p = h->data + h->used;
    h->used += n;
    return p;
}

static void *ar_zalloc(struct arena *a, size_t n)
{
    void *p = ar_alloc(a, n);
    memset(p, 0, n);
    return p;
}

static char *ar_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = ar_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---------------------------------------------------------------------------------------------- */
/* UTF-8 and Python's text rules. Strings are valid UTF-8 (the source is checked, JSON is valid). */

static int u8_dec(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (s[0] < 0x80 || n < 2) {
        *cp = s[0];
        return 1;
    }
    if (s[0] < 0xE0) {
        *cp = ((uint32_t)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (s[0] < 0xF0 || n < 4) {
        if (n < 3) {
            *cp = s[0];
            return 1;
        }
        *cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    *cp = ((uint32_t)(s[0] & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
          (s[3] & 0x3F);
    return 4;
}

static bool is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return false;
    return true;
}

/* Number of code points. */
static size_t u8_len(const char *s, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) k++;
    return k;
}

/* Byte offset of code point `idx` (idx <= number of code points). */
static size_t u8_off(const char *s, size_t n, size_t idx)
{
    size_t i = 0, k = 0;
    while (i < n && k < idx) {
        i++;
        while (i < n && ((unsigned char)s[i] & 0xC0) == 0x80) i++;
        k++;
    }
    return i;
}

/* str.isspace() */
static bool py_isspace(uint32_t c)
{
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) return true;
    if (c < 0x85) return false;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.isprintable() for one code point */
static bool py_isprintable(uint32_t c)
{
    if (c < 0x20 || c == 0x7F) return false;
    if (c < 0x7F) return true;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    switch (k) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CN:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
    case UTF8PROC_CATEGORY_ZS:
        return false;
    default:
        return true;
    }
}

static bool py_isalpha(uint32_t c)
{
    if (c < 0x80) return (c | 32) >= 'a' && (c | 32) <= 'z';
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}

static bool py_isdigit(uint32_t c)
{
    if (c < 0x80) return c >= '0' && c <= '9';
    return utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_ND;
}

static bool py_isalnum(uint32_t c)
{
    if (py_isalpha(c) || py_isdigit(c)) return true;
    if (c < 0x80) return false;
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

static bool py_isword(uint32_t c) /* re's \w */
{
    return c == '_' || py_isalnum(c);
}

static bool py_iscased_upper(uint32_t c)
{
    if (c < 0x80) return c >= 'A' && c <= 'Z';
    return utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_LU ||
           utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_LT;
}

static bool py_iscased_lower(uint32_t c)
{
    if (c < 0x80) return c >= 'a' && c <= 'z';
    return utf8proc_category((utf8proc_int32_t)c) == UTF8PROC_CATEGORY_LL;
}

static uint32_t py_upper(uint32_t c)
{
    if (c < 0x80) return (c >= 'a' && c <= 'z') ? c - 32 : c;
    return (uint32_t)utf8proc_toupper((utf8proc_int32_t)c);
}

static uint32_t py_lower(uint32_t c)
{
    if (c < 0x80) return (c >= 'A' && c <= 'Z') ? c + 32 : c;
    return (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
}

/* repr(float): the shortest string that reads back, fixed notation for exponents in [-4, 16). */
static int py_float_repr(double x, char *buf, size_t cap)
{
    if (isnan(x)) return snprintf(buf, cap, "nan");
    if (isinf(x)) return snprintf(buf, cap, x < 0 ? "-inf" : "inf");
    if (x == 0) return snprintf(buf, cap, signbit(x) ? "-0.0" : "0.0");
    char tmp[48];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*e", p - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    char digits[24];
    int nd = 0;
    const char *q = tmp;
    bool neg = false;
    if (*q == '-') {
        neg = true;
        q++;
    }
    for (; *q && *q != 'e'; q++)
        if (*q >= '0' && *q <= '9') digits[nd++] = *q;
    int e10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    digits[nd] = 0;
    char out[64];
    int k = 0;
    if (neg) out[k++] = '-';
    if (e10 >= -4 && e10 < 16) {
        int decpt = e10 + 1;
        if (decpt <= 0) {
            out[k++] = '0';
            out[k++] = '.';
            for (int i = 0; i < -decpt; i++) out[k++] = '0';
            for (int i = 0; i < nd; i++) out[k++] = digits[i];
        } else if (decpt >= nd) {
            for (int i = 0; i < nd; i++) out[k++] = digits[i];
            for (int i = nd; i < decpt; i++) out[k++] = '0';
            out[k++] = '.';
            out[k++] = '0';
        } else {
            for (int i = 0; i < decpt; i++) out[k++] = digits[i];
            out[k++] = '.';
            for (int i = decpt; i < nd; i++) out[k++] = digits[i];
        }
        out[k] = 0;
    } else {
        out[k++] = digits[0];
        if (nd > 1) {
            out[k++] = '.';
            for (int i = 1; i < nd; i++) out[k++] = digits[i];
        }
        k += snprintf(out + k, sizeof out - k, "e%c%02d", e10 < 0 ? '-' : '+', e10 < 0 ? -e10 : e10);
    }
    return snprintf(buf, cap, "%s", out);
}

/* int(s, base) for a Python str: whitespace around, a sign, single underscores between digits. */
static bool py_parse_int(const char *s, size_t n, int base, int64_t *out)
{
    size_t i = 0, j = n;
    uint32_t cp;
    while (i < j) {
        int l = u8_dec((const unsigned char *)s + i, j - i, &cp);
        if (!py_isspace(cp)) break;
        i += l;
    }
    while (j > i) {
        size_t b = j - 1;
        while (b > i && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        u8_dec((const unsigned char *)s + b, j - b, &cp);
        if (!py_isspace(cp)) break;
        j = b;
    }
    bool neg = false;
    if (i < j && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
    if (base == 0 || base == 16 || base == 8 || base == 2) {
        if (j - i >= 2 && s[i] == '0') {
            char p = (char)(s[i + 1] | 32);
            int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
            if (pb && (base == 0 || base == pb)) {
                base = pb;
                i += 2;
                if (i < j && s[i] == '_') i++;
            }
        }
        if (base == 0) {
            base = 10;
            /* base 0 forbids leading zeros in a non-zero decimal */
            if (j - i > 1 && s[i] == '0') {
                for (size_t k = i; k < j; k++)
                    if (s[k] != '0' && s[k] != '_') return false;
            }
        }
    }
    if (base < 2 || base > 36 || i >= j) return false;
    uint64_t v = 0;
    bool prev_digit = false;
    for (size_t k = i; k < j; k++) {
        char ch = s[k];
        if (ch == '_') {
            if (!prev_digit || k + 1 >= j) return false;
            prev_digit = false;
            continue;
        }
        int d = (ch >= '0' && ch <= '9') ? ch - '0' : ((ch | 32) >= 'a' && (ch | 32) <= 'z') ? (ch | 32) - 'a' + 10 : 99;
        if (d >= base) return false;
        if (v > (UINT64_MAX - (uint64_t)d) / (uint64_t)base) return false;
        v = v * (uint64_t)base + (uint64_t)d;
        prev_digit = true;
    }
    if (!prev_digit) return false;
    if (neg) {
        if (v > (uint64_t)INT64_MAX + 1) return false;
        *out = (int64_t)(0 - v);
    } else {
        if (v > (uint64_t)INT64_MAX) return false;
        *out = (int64_t)v;
    }
    return true;
}

/* float(s) for a Python str. */
static bool py_parse_float(const char *s, size_t n, double *out)
{
    size_t i = 0, j = n;
    uint32_t cp;
    while (i < j) {
        int l = u8_dec((const unsigned char *)s + i, j - i, &cp);
        if (!py_isspace(cp)) break;
        i += l;
    }
    while (j > i) {
        size_t b = j - 1;
        while (b > i && ((unsigned char)s[b] & 0xC0) == 0x80) b--;
        u8_dec((const unsigned char *)s + b, j - b, &cp);
        if (!py_isspace(cp)) break;
        j = b;
    }
    if (i >= j || j - i > 400) return false;
    char buf[420];
    size_t k = 0;
    size_t a = i;
    bool neg = false;
    if (s[a] == '+' || s[a] == '-') neg = s[a++] == '-';
    size_t rest = j - a;
    const char *r = s + a;
    if ((rest == 3 && !strncasecmp(r, "inf", 3)) || (rest == 8 && !strncasecmp(r, "infinity", 8))) {
        *out = neg ? -INFINITY : INFINITY;
        return true;
    }
    if (rest == 3 && !strncasecmp(r, "nan", 3)) {
        *out = NAN;
        return true;
    }
    /* digits [. digits] [e [sign] digits], underscores only between digits */
    bool any = false;
    for (size_t q = i; q < j; q++) {
        char ch = s[q];
        if (ch == '_') {
            if (q == i || q + 1 >= j || !(s[q - 1] >= '0' && s[q - 1] <= '9') || !(s[q + 1] >= '0' && s[q + 1] <= '9'))
                return false;
            continue;
        }
        if (!((ch >= '0' && ch <= '9') || ch == '.' || ch == 'e' || ch == 'E' || ch == '+' || ch == '-')) return false;
        if (ch >= '0' && ch <= '9') any = true;
        buf[k++] = ch;
    }
    buf[k] = 0;
    if (!any) return false;
    char *end;
    errno = 0;
    double d = strtod(buf, &end);
    if (*end) return false;
    *out = d;
    return true;
}

/* ---------------------------------------------------------------------------------------------- */
/* Values. A string is (pointer, length) into an arena, never changed after it is made. A list is a
 * view (buffer, length) on a buffer that only grows, so `a + [x]` appends in place when `a` is the whole
 * buffer (amortised O(1)); other views never see the new items. Dicts keep insertion order. */

enum vtype {
    V_UNDEF,
    V_NONE,
    V_BOOL,
    V_INT,
    V_FLOAT,
    V_STR,
    V_LIST,   /* list, or tuple with F_TUPLE */
    V_DICT,
    V_NS,     /* namespace(): a dict with attribute access, the one mutable value */
    V_MACRO,
    V_FUNC,   /* a global function */
    V_METHOD, /* a bound method of a str, list, dict or loop */
    V_LOOP,   /* the `loop` variable */
    V_ITER,   /* a generator (from map, select, ...): truthy, no len, single use */
};

#define F_SAFE 1   /* markupsafe.Markup */
#define F_TUPLE 2  /* a tuple */
#define F_UNSAFE 4 /* an undefined the sandbox returned: using it is a SecurityError */
#define F_ITEMS 8   /* dict.items() / keys() / values(): lists that print as views and take no index */
#define F_KEYS 16
#define F_VALUES 32
#define F_VIEW (F_ITEMS | F_KEYS | F_VALUES)
#define F_RANGE 64 /* range(): a list that prints as range(a, b, c) and is no JSON */

struct lbuf;
struct dict;
struct macro;
struct method;
struct loopctx;
struct giter;

struct val {
    uint8_t t, f;
    union {
        int b;
        int64_t i;
        double fl;
        struct {
            const char *p;
            size_t n;
        } s;
        struct {
            struct lbuf *buf;
            size_t n;
        } l;
        struct dict *d;
        struct macro *m;
        int fn;
        struct method *me;
        struct loopctx *lp;
        struct giter *it;
        const char *hint; /* V_UNDEF: why (for the error when it is used), or NULL */
    };
};

struct lbuf {
    struct val *v;
    size_t used, cap;
    int64_t range[3]; /* start, stop, step of a range() (F_RANGE) */
};

struct dict {
    struct val *k, *v;
    size_t n, cap;
};

struct giter {
    struct val list;
    bool used;
    const char *what;  /* "generator", "list_reverseiterator" */
    const char *error; /* a generator that fails when it is consumed (jinja2's filters are lazy) */
};

static struct val vundef(const char *hint)
{
    struct val v = {.t = V_UNDEF};
    v.hint = hint;
    return v;
}
static struct val vnone(void)
{
    return (struct val){.t = V_NONE};
}
static struct val vbool(bool b)
{
    struct val v = {.t = V_BOOL};
    v.b = b;
    return v;
}
static struct val vint(int64_t i)
{
    struct val v = {.t = V_INT};
    v.i = i;
    return v;
}
static struct val vfloat(double d)
{
    struct val v = {.t = V_FLOAT};
    v.fl = d;
    return v;
}
static struct val vstr(const char *p, size_t n)
{
    struct val v = {.t = V_STR};
    v.s.p = p;
    v.s.n = n;
    return v;
}
#define VLIT(lit) vstr((lit), sizeof(lit) - 1)

static bool is_num(struct val v)
{
    return v.t == V_BOOL || v.t == V_INT || v.t == V_FLOAT;
}
static double num_d(struct val v)
{
    return v.t == V_FLOAT ? v.fl : v.t == V_INT ? (double)v.i : (double)v.b;
}
static int64_t num_i(struct val v)
{
    return v.t == V_INT ? v.i : v.b;
}
static struct val *L_items(struct val v)
{
    return v.l.buf ? v.l.buf->v : NULL;
}

/* ---------------------------------------------------------------------------------------------- */
/* The AST */

enum nkind {
    /* statements */
    N_DATA = 1,   /* v: the text */
    N_OUTPUT,     /* a: expression */
    N_IF,         /* a: test, body, els (an elif is one N_IF in els) */
    N_FOR,        /* a: target, b: iterable, c: filter test or NULL, body, els; F_RECURSIVE */
    N_SET,        /* a: target, b: value */
    N_SETBLOCK,   /* a: target, c: filter chain (innermost input NULL) or NULL, body */
    N_MACRO,      /* name, params/defaults, body; F_CALLER, F_VARARGS, F_KWARGS */
    N_CALLBLOCK,  /* a: the call (E_CALL), params/defaults of caller(), body */
    N_FILTERBLOCK,/* c: filter chain, body */
    N_WITH,       /* args: targets, kw: values, body */
    N_BREAK,
    N_CONTINUE,
    N_SCOPE,      /* body in a scope of its own ({% generation %}) */
    N_PRINT,      /* args: expressions */
    /* expressions */
    E_CONST,      /* v */
    E_NAME,       /* name */
    E_NSREF,      /* name.name2 (assignment target) */
    E_GETATTR,    /* a.name */
    E_GETITEM,    /* a[b] */
    E_SLICE,      /* a:b:c, each may be NULL */
    E_CALL,       /* a(args, kw=...) with kwn; dyn_args, dyn_kwargs */
    E_FILTER,     /* a|name(args); op: filter id (-1: unknown, fails when run) */
    E_TEST,       /* a is name(args); op: test id */
    E_NOT,
    E_NEG,
    E_POS,
    E_BIN,        /* op: OP_ADD, ... */
    E_AND,
    E_OR,
    E_CONCAT,     /* args */
    E_COMPARE,    /* a, then args[i] with ops[i] */
    E_COND,       /* b if a else c (c may be NULL) */
    E_LIST,       /* args */
    E_TUPLE,      /* args */
    E_DICT,       /* args: keys, kw: values */
};

#define F_RECURSIVE 1
#define F_CALLER 2
#define F_VARARGS 4
#define F_KWARGS 8

struct nlist {
    struct node **v;
    int n;
};

struct node {
    uint8_t kind, flags;
    int16_t op;
    int line;
    const char *name, *name2;
    struct val v;
    struct node *a, *b, *c;
    struct nlist body, els, args, kw;
    const char **kwn;
    int *ops;
    struct node *dyn_args, *dyn_kwargs;
    const char **params; /* macro / caller parameters */
    struct node **defaults; /* per parameter, NULL if none */
    int nparams;
};

/* ---------------------------------------------------------------------------------------------- */
/* The lexer: jinja2's lexer.py. The source is first normalised (\r\n and \r become \n, one trailing
 * newline dropped unless keep_trailing_newline). */

enum ttype { T_EOF, T_DATA, T_VBEGIN, T_VEND, T_BBEGIN, T_BEND, T_NAME, T_STR, T_INT, T_FLOAT, T_OP };

enum op {
    OP_ADD = 1, OP_SUB, OP_DIV, OP_FLOORDIV, OP_MUL, OP_MOD, OP_POW, OP_TILDE,
    OP_LBRACKET, OP_RBRACKET, OP_LPAREN, OP_RPAREN, OP_LBRACE, OP_RBRACE,
    OP_EQ, OP_NE, OP_GT, OP_GTEQ, OP_LT, OP_LTEQ, OP_ASSIGN, OP_DOT, OP_COLON, OP_PIPE, OP_COMMA, OP_SEMICOLON,
    /* compare operators that are names */
    OP_IN, OP_NOTIN,
};

static const char *const op_text[] = {
    "", "+", "-", "/", "//", "*", "%", "**", "~", "[", "]", "(", ")", "{", "}",
    "==", "!=", ">", ">=", "<", "<=", "=", ".", ":", "|", ",", ";", "in", "not in",
};

struct tok {
    uint8_t t;
    int16_t op;
    int line;
    const char *p; /* T_DATA, T_NAME: text; T_STR: the unescaped value */
    size_t n;
    int64_t i;
    double f;
};

struct lexer {
    const char *s;
    size_t n, pos;
    int line; /* at pos */
    struct tok *toks;
    size_t ntok, cap;
    struct arena *ar;
    struct jerr *err;
    bool trim, lstrip;
    char *bal; /* balancing stack of the current tag */
    size_t nbal, capbal;
};

static void lx_adv(struct lexer *L, size_t to)
{
    for (size_t i = L->pos; i < to; i++)
        if (L->s[i] == '\n') L->line++;
    L->pos = to;
}

static struct tok *lx_emit(struct lexer *L, int type, int line)
{
    if (L->ntok == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 256;
        struct tok *t = ar_alloc(L->ar, cap * sizeof(*t));
        if (L->ntok) memcpy(t, L->toks, L->ntok * sizeof(*t));
        L->toks = t;
        L->cap = cap;
    }
    struct tok *t = &L->toks[L->ntok++];
    memset(t, 0, sizeof(*t));
    t->t = (uint8_t)type;
    t->line = line;
    return t;
}

/* Length of a \s+ run at s[i] (Python's unicode whitespace), 0 if none. */
static size_t ws_run(const char *s, size_t n, size_t i)
{
    size_t k = i;
    while (k < n) {
        uint32_t cp;
        int l = u8_dec((const unsigned char *)s + k, n - k, &cp);
        if (!py_isspace(cp)) break;
        k += l;
    }
    return k - i;
}

/* text[a:b].rstrip() -> new b */
static size_t rstrip_ws(const char *s, size_t a, size_t b)
{
    while (b > a) {
        size_t k = b - 1;
        while (k > a && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
        uint32_t cp;
        u8_dec((const unsigned char *)s + k, b - k, &cp);
        if (!py_isspace(cp)) break;
        b = k;
    }
    return b;
}

/* The text before a tag, with jinja2's OptionalLStrip rule: `-` strips all whitespace before the tag;
 * otherwise lstrip_blocks strips the whitespace between the last newline (or the start of a line) and a
 * block or comment tag. */
static void lx_text(struct lexer *L, size_t a, size_t b, char sign, bool is_var, bool line_starting)
{
    if (sign == '-') {
        b = rstrip_ws(L->s, a, b);
    } else if (sign != '+' && L->lstrip && !is_var) {
        size_t lp = a;
        for (size_t k = b; k > a; k--)
            if (L->s[k - 1] == '\n') {
                lp = k;
                break;
            }
        if ((lp > a || line_starting) && b > lp && ws_run(L->s, b, lp) == b - lp) b = lp;
    }
    if (b > a) {
        struct tok *t = lx_emit(L, T_DATA, L->line);
        t->p = L->s + a;
        t->n = b - a;
    }
}

static bool lx_isdigit(char c)
{
    return c >= '0' && c <= '9';
}

/* (\d+_)*\d+ at i: returns the end, or i if none */
static size_t lx_digits(const char *s, size_t n, size_t i)
{
    size_t k = i;
    if (k >= n || !lx_isdigit(s[k])) return i;
    while (k < n && lx_isdigit(s[k])) k++;
    while (k + 1 < n && s[k] == '_' && lx_isdigit(s[k + 1])) {
        k++;
        while (k < n && lx_isdigit(s[k])) k++;
    }
    return k;
}

/* Decodes a string literal's body like Python's unicode-escape after backslashreplace. */
static void lx_unescape(struct lexer *L, const char *s, size_t n, struct tok *t)
{
    char *o = ar_alloc(L->ar, n * 3 + 1); /* \xe9-style expansions grow at most 10/4 per char */
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        if (c != '\\') {
            o[k++] = (char)c;
            i++;
            continue;
        }
        if (i + 1 >= n) {
            o[k++] = '\\';
            i++;
            continue;
        }
        unsigned char e = (unsigned char)s[i + 1];
        i += 2;
        switch (e) {
        case '\n': break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'n': o[k++] = '\n'; break;
        case 'r': o[k++] = '\r'; break;
        case 't': o[k++] = '\t'; break;
        case 'v': o[k++] = '\v'; break;
        case 'x':
        case 'u':
        case 'U': {
            int want = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int d = 0; d < want; d++) {
                char h = i + d < n ? s[i + d] : 0;
                int v = lx_isdigit(h) ? h - '0' : ((h | 32) >= 'a' && (h | 32) <= 'f') ? (h | 32) - 'a' + 10 : -1;
                if (v < 0) fail_at(L->err, t->line, "truncated \\%cXX escape in a string literal", e);
                cp = cp * 16 + (uint32_t)v;
            }
            i += want;
            if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                fail_at(L->err, t->line, "invalid \\%c escape U+%X in a string literal", e, cp);
            k += loom_utf8_encode(cp, o + k);
            break;
        }
        case 'N': fail_at(L->err, t->line, "\\N{...} escapes are not supported");
        default:
            if (e >= '0' && e <= '7') {
                uint32_t cp = e - '0';
                for (int d = 0; d < 2 && i < n && s[i] >= '0' && s[i] <= '7'; d++) cp = cp * 8 + (uint32_t)(s[i++] - '0');
                k += loom_utf8_encode(cp, o + k);
            } else if (e >= 0x80) {
                /* backslashreplace turned the character into \xhh, \uhhhh or \Uhhhhhhhh: the pair of
                 * backslashes decodes to one and the rest stays as text */
                uint32_t cp;
                int l = u8_dec((const unsigned char *)s + i - 1, n - (i - 1), &cp);
                i = i - 1 + l;
                o[k++] = '\\';
                if (cp < 0x100)
                    k += sprintf(o + k, "x%02x", cp);
                else if (cp < 0x10000)
                    k += sprintf(o + k, "u%04x", cp);
                else
                    k += sprintf(o + k, "U%08x", cp);
            } else {
                o[k++] = '\\';
                o[k++] = (char)e;
            }
        }
    }
    o[k] = 0;
    t->p = o;
    t->n = k;
}

/* Tokens of one {{ }} or {% %} tag, up to and including its end. Returns whether the end match ended
 * with a newline (jinja2's line_starting for the next lstrip decision). */
static bool lx_tag(struct lexer *L, bool is_block)
{
    const char *s = L->s;
    size_t n = L->n;
    L->nbal = 0;
    for (;;) {
        size_t p = L->pos;
        if (p >= n) fail_at(L->err, L->line, "unexpected end of template, expected the end of the %s tag",
                            is_block ? "block" : "variable");
        if (L->nbal == 0) {
            if (is_block) {
                if (s[p] == '+' && p + 2 < n && s[p + 1] == '%' && s[p + 2] == '}') {
                    lx_emit(L, T_BEND, L->line);
                    lx_adv(L, p + 3);
                    return false;
                }
                if (s[p] == '-' && p + 2 < n && s[p + 1] == '%' && s[p + 2] == '}') {
                    lx_emit(L, T_BEND, L->line);
                    size_t e = p + 3 + ws_run(s, n, p + 3);
                    lx_adv(L, e);
                    return s[e - 1] == '\n';
                }
                if (s[p] == '%' && p + 1 < n && s[p + 1] == '}') {
                    lx_emit(L, T_BEND, L->line);
                    size_t e = p + 2;
                    if (L->trim && e < n && s[e] == '\n') e++;
                    lx_adv(L, e);
                    return s[e - 1] == '\n';
                }
            } else {
                if (s[p] == '-' && p + 2 < n && s[p + 1] == '}' && s[p + 2] == '}') {
                    lx_emit(L, T_VEND, L->line);
                    size_t e = p + 3 + ws_run(s, n, p + 3);
                    lx_adv(L, e);
                    return s[e - 1] == '\n';
                }
                if (s[p] == '}' && p + 1 < n && s[p + 1] == '}') {
                    lx_emit(L, T_VEND, L->line);
                    lx_adv(L, p + 2);
                    return false;
                }
            }
        }
        size_t w = ws_run(s, n, p);
        if (w) {
            lx_adv(L, p + w);
            continue;
        }
        char c = s[p];
        if (lx_isdigit(c)) {
            /* float: (?<!\.)D((\.D)?e[+-]?D|\.D) */
            size_t e = lx_digits(s, n, p), q = e;
            bool is_float = false;
            if (p == 0 || s[p - 1] != '.') {
                bool frac = false;
                if (q < n && s[q] == '.' && lx_digits(s, n, q + 1) > q + 1) {
                    q = lx_digits(s, n, q + 1);
                    frac = true;
                }
                size_t x = q;
                if (x < n && (s[x] | 32) == 'e') {
                    x++;
                    if (x < n && (s[x] == '+' || s[x] == '-')) x++;
                    size_t y = lx_digits(s, n, x);
                    if (y > x) {
                        q = y;
                        is_float = true;
                    }
                }
                if (frac) is_float = true;
            }
            if (is_float) {
                char buf[128];
                size_t k = 0;
                for (size_t i = p; i < q && k < sizeof buf - 1; i++)
                    if (s[i] != '_') buf[k++] = s[i];
                buf[k] = 0;
                struct tok *t = lx_emit(L, T_FLOAT, L->line);
                t->f = strtod(buf, NULL);
                lx_adv(L, q);
                continue;
            }
            /* integer: 0b.., 0o.., 0x.., [1-9](_?\d)*, 0(_?0)* */
            size_t q2 = p + 1;
            int base = 10;
            if (c == '0' && p + 1 < n && s[p + 1] && strchr("bBoOxX", s[p + 1])) {
                char pc = (char)(s[p + 1] | 32);
                base = pc == 'b' ? 2 : pc == 'o' ? 8 : 16;
                size_t r = p + 2;
                for (;;) {
                    size_t r2 = r;
                    if (r2 < n && s[r2] == '_') r2++;
                    if (r2 >= n) break;
                    char d = (char)(s[r2] | 32);
                    bool ok = base == 2 ? (d == '0' || d == '1') : base == 8 ? (d >= '0' && d <= '7')
                                                                  : (lx_isdigit(d) || (d >= 'a' && d <= 'f'));
                    if (!ok) break;
                    r = r2 + 1;
                }
                if (r > p + 2) {
                    q2 = r;
                } else {
                    base = 10;
                }
            }
            if (base == 10) {
                q2 = p + 1;
                for (;;) {
                    size_t r2 = q2;
                    if (r2 < n && s[r2] == '_') r2++;
                    if (r2 < n && lx_isdigit(s[r2]) && (c != '0' || s[r2] == '0'))
                        q2 = r2 + 1;
                    else
                        break;
                }
            }
            int64_t v;
            if (!py_parse_int(s + p, q2 - p, base == 10 ? 10 : 0, &v))
                fail_at(L->err, L->line, "integer literal %.*s is too large", (int)(q2 - p), s + p);
            struct tok *t = lx_emit(L, T_INT, L->line);
            t->i = v;
            lx_adv(L, q2);
            continue;
        }
        if (c == '_' || ((c | 32) >= 'a' && (c | 32) <= 'z')) {
            size_t q = p + 1;
            while (q < n && (s[q] == '_' || lx_isdigit(s[q]) || ((s[q] | 32) >= 'a' && (s[q] | 32) <= 'z'))) q++;
            struct tok *t = lx_emit(L, T_NAME, L->line);
            t->p = ar_strndup(L->ar, s + p, q - p);
            t->n = q - p;
            lx_adv(L, q);
            continue;
        }
        if (c == '\'' || c == '"') {
            size_t q = p + 1;
            while (q < n && s[q] != c) q += (s[q] == '\\' && q + 1 < n) ? 2 : 1;
            if (q >= n) fail_at(L->err, L->line, "unterminated string literal");
            struct tok *t = lx_emit(L, T_STR, L->line);
            lx_unescape(L, s + p + 1, q - p - 1, t);
            lx_adv(L, q + 1);
            continue;
        }
        static const struct {
            const char *s;
            int op;
        } ops[] = {
            {"//", OP_FLOORDIV}, {"**", OP_POW}, {"==", OP_EQ}, {"!=", OP_NE}, {">=", OP_GTEQ}, {"<=", OP_LTEQ},
            {"+", OP_ADD}, {"-", OP_SUB}, {"/", OP_DIV}, {"*", OP_MUL}, {"%", OP_MOD}, {"~", OP_TILDE},
            {"[", OP_LBRACKET}, {"]", OP_RBRACKET}, {"(", OP_LPAREN}, {")", OP_RPAREN}, {"{", OP_LBRACE},
            {"}", OP_RBRACE}, {">", OP_GT}, {"<", OP_LT}, {"=", OP_ASSIGN}, {".", OP_DOT}, {":", OP_COLON},
            {"|", OP_PIPE}, {",", OP_COMMA}, {";", OP_SEMICOLON},
        };
        int op = 0;
        size_t ol = 0;
        for (size_t k = 0; k < sizeof ops / sizeof ops[0]; k++) {
            size_t l = strlen(ops[k].s);
            if (p + l <= n && !memcmp(s + p, ops[k].s, l)) {
                op = ops[k].op;
                ol = l;
                break;
            }
        }
        if (!op) {
            uint32_t cp;
            u8_dec((const unsigned char *)s + p, n - p, &cp);
            if (cp >= 0x20 && cp < 0x7F)
                fail_at(L->err, L->line, "unexpected char '%c'", (char)cp);
            fail_at(L->err, L->line, "unexpected char U+%04X", cp);
        }
        if (op == OP_LBRACE || op == OP_LPAREN || op == OP_LBRACKET) {
            if (L->nbal == L->capbal) {
                size_t cap = L->capbal ? L->capbal * 2 : 32;
                char *b = ar_alloc(L->ar, cap);
                if (L->nbal) memcpy(b, L->bal, L->nbal);
                L->bal = b;
                L->capbal = cap;
            }
            L->bal[L->nbal++] = op == OP_LBRACE ? '}' : op == OP_LPAREN ? ')' : ']';
        } else if (op == OP_RBRACE || op == OP_RPAREN || op == OP_RBRACKET) {
            if (!L->nbal) fail_at(L->err, L->line, "unexpected '%c'", c);
            char want = L->bal[--L->nbal];
            if (want != c) fail_at(L->err, L->line, "unexpected '%c', expected '%c'", c, want);
        }
        struct tok *t = lx_emit(L, T_OP, L->line);
        t->op = (int16_t)op;
        lx_adv(L, p + ol);
    }
}

static void lex(struct lexer *L)
{
    const char *s = L->s;
    size_t n = L->n;
    bool line_starting = true;
    while (L->pos < n) {
        size_t a = L->pos, tp = a;
        while (tp + 1 < n && !(s[tp] == '{' && (s[tp + 1] == '{' || s[tp + 1] == '%' || s[tp + 1] == '#'))) tp++;
        if (tp + 1 >= n) { /* no more tags: the rest is data */
            struct tok *t = lx_emit(L, T_DATA, L->line);
            t->p = s + a;
            t->n = n - a;
            lx_adv(L, n);
            break;
        }
        char kind = s[tp + 1];
        size_t after = tp + 2;
        char sign = 0;
        /* {% raw %}: {%(-|+|)\s*raw\s*(-%}\s*|%}) */
        if (kind == '%') {
            size_t q = after;
            char rs = 0;
            if (q < n && (s[q] == '-' || s[q] == '+')) rs = s[q++];
            q += ws_run(s, n, q);
            if (q + 3 <= n && !memcmp(s + q, "raw", 3)) {
                size_t r = q + 3;
                r += ws_run(s, n, r);
                size_t end = 0;
                if (r + 2 < n && s[r] == '-' && s[r + 1] == '%' && s[r + 2] == '}')
                    end = r + 3 + ws_run(s, n, r + 3);
                else if (r + 1 < n && s[r] == '%' && s[r + 1] == '}')
                    end = r + 2;
                if (end) {
                    lx_text(L, a, tp, rs, false, line_starting);
                    lx_adv(L, end);
                    line_starting = s[end - 1] == '\n';
                    /* (.*?)({%(-|+|)\s*endraw\s*(+%}|-%}\s*|%}\n?)) */
                    size_t i = end;
                    for (;; i++) {
                        if (i + 1 >= n) fail_at(L->err, L->line, "missing end of raw directive");
                        if (s[i] != '{' || s[i + 1] != '%') continue;
                        size_t k = i + 2;
                        char es = 0;
                        if (k < n && (s[k] == '-' || s[k] == '+')) es = s[k++];
                        k += ws_run(s, n, k);
                        if (k + 6 > n || memcmp(s + k, "endraw", 6)) continue;
                        k += 6;
                        k += ws_run(s, n, k);
                        size_t e2 = 0;
                        if (k + 2 < n && s[k] == '+' && s[k + 1] == '%' && s[k + 2] == '}')
                            e2 = k + 3;
                        else if (k + 2 < n && s[k] == '-' && s[k + 1] == '%' && s[k + 2] == '}')
                            e2 = k + 3 + ws_run(s, n, k + 3);
                        else if (k + 1 < n && s[k] == '%' && s[k + 1] == '}') {
                            e2 = k + 2;
                            if (L->trim && e2 < n && s[e2] == '\n') e2++;
                        }
                        if (!e2) continue;
                        lx_text(L, end, i, es, false, line_starting);
                        lx_adv(L, e2);
                        line_starting = s[e2 - 1] == '\n';
                        break;
                    }
                    continue;
                }
            }
        }
        if (after < n && (s[after] == '-' || s[after] == '+')) sign = s[after++];
        lx_text(L, a, tp, sign, kind == '{', line_starting);
        lx_adv(L, after);
        if (kind == '#') {
            size_t i = after;
            size_t e = 0;
            for (; i + 1 < n; i++) {
                if (s[i] == '+' && i + 2 < n && s[i + 1] == '#' && s[i + 2] == '}') {
                    e = i + 3;
                    break;
                }
                if (s[i] == '-' && i + 2 < n && s[i + 1] == '#' && s[i + 2] == '}') {
                    e = i + 3 + ws_run(s, n, i + 3);
                    break;
                }
                if (s[i] == '#' && s[i + 1] == '}') {
                    e = i + 2;
                    if (L->trim && e < n && s[e] == '\n') e++;
                    break;
                }
            }
            if (!e) fail_at(L->err, L->line, "missing end of comment tag");
            lx_adv(L, e);
            line_starting = s[e - 1] == '\n';
            continue;
        }
        lx_emit(L, kind == '%' ? T_BBEGIN : T_VBEGIN, L->line);
        line_starting = lx_tag(L, kind == '%');
    }
    lx_emit(L, T_EOF, L->line);
}

/* ---------------------------------------------------------------------------------------------- */
/* The parser: jinja2's parser.py, function for function. */

struct parser {
    struct tok *t;
    size_t i, n;
    struct arena *ar;
    struct jerr *err;
    int depth;
    int loops; /* enclosing for bodies in this function scope (break/continue) */
    bool soft; /* inside an if: an unknown filter or test fails only when it runs (jinja2 3) */
};

static int filter_id(const char *name);
static int test_id(const char *name);
static struct node *parse_or(struct parser *P);

static struct tok *cur(struct parser *P)
{
    return &P->t[P->i];
}
static struct tok *peek(struct parser *P)
{
    return &P->t[P->i + 1 < P->n ? P->i + 1 : P->i];
}
static void next(struct parser *P)
{
    if (P->i + 1 < P->n) P->i++;
}

static const char *tok_desc(struct tok *t, char *buf, size_t cap)
{
    switch (t->t) {
    case T_EOF: return "end of template";
    case T_DATA: return "template data";
    case T_VBEGIN: return "begin of print statement";
    case T_VEND: return "end of print statement";
    case T_BBEGIN: return "begin of statement block";
    case T_BEND: return "end of statement block";
    case T_NAME: snprintf(buf, cap, "%s", t->p); return buf;
    case T_STR: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    case T_OP: return op_text[t->op];
    }
    return "?";
}

static LOOM_NORETURN void p_unexpected(struct parser *P, const char *expected)
{
    char b[64];
    struct tok *t = cur(P);
    if (expected)
        fail_at(P->err, t->line, "expected %s, got '%s'", expected, tok_desc(t, b, sizeof b));
    fail_at(P->err, t->line, "unexpected '%s'", tok_desc(t, b, sizeof b));
}

static bool is_name(struct tok *t, const char *name)
{
    return t->t == T_NAME && !strcmp(t->p, name);
}
static bool is_op(struct tok *t, int op)
{
    return t->t == T_OP && t->op == op;
}
static void expect_op(struct parser *P, int op)
{
    if (!is_op(cur(P), op)) {
        char b[32];
        snprintf(b, sizeof b, "'%s'", op_text[op]);
        p_unexpected(P, b);
    }
    next(P);
}
static void expect_name(struct parser *P, const char *name)
{
    if (!is_name(cur(P), name)) {
        char b[64];
        snprintf(b, sizeof b, "'%s'", name);
        p_unexpected(P, b);
    }
    next(P);
}
static void expect_type(struct parser *P, int type, const char *what)
{
    if (cur(P)->t != type) p_unexpected(P, what);
    next(P);
}
static bool skip_name(struct parser *P, const char *name)
{
    if (!is_name(cur(P), name)) return false;
    next(P);
    return true;
}
static bool skip_op(struct parser *P, int op)
{
    if (!is_op(cur(P), op)) return false;
    next(P);
    return true;
}

static struct node *mk(struct parser *P, int kind, int line)
{
    struct node *n = ar_zalloc(P->ar, sizeof(*n));
    n->kind = (uint8_t)kind;
    n->line = line;
    return n;
}

/* A growable list of nodes (arena). */
struct nvec {
    struct node **v;
    int n, cap;
};
static void nv_push(struct parser *P, struct nvec *nv, struct node *x)
{
    if (nv->n == nv->cap) {
        int cap = nv->cap ? nv->cap * 2 : 8;
        struct node **v = ar_alloc(P->ar, (size_t)cap * sizeof(*v));
        if (nv->n) memcpy(v, nv->v, (size_t)nv->n * sizeof(*v));
        nv->v = v;
        nv->cap = cap;
    }
    nv->v[nv->n++] = x;
}
static struct nlist nv_list(struct nvec *nv)
{
    return (struct nlist){nv->v, nv->n};
}

static void p_enter(struct parser *P)
{
    if (++P->depth > MAX_PARSE_DEPTH)
        fail_at(P->err, cur(P)->line, "template nested too deeply (more than %d levels)", MAX_PARSE_DEPTH);
}
static void p_leave(struct parser *P)
{
    P->depth--;
}

static struct node *parse_expression(struct parser *P, bool with_condexpr);
static struct node *parse_tuple(struct parser *P, bool simplified, bool with_condexpr, const char *extra_end,
                                bool explicit_parens);
static struct node *parse_unary(struct parser *P, bool with_filter);
static struct node *parse_primary(struct parser *P);
static struct node *parse_postfix(struct parser *P, struct node *n);
static struct node *parse_filter_expr(struct parser *P, struct node *n);
static struct node *parse_filter(struct parser *P, struct node *n, bool start_inline);
static struct nlist parse_statements(struct parser *P, const char *const *ends, bool drop_needle, int *which);

static struct node *parse_condexpr(struct parser *P)
{
    int line = cur(P)->line;
    struct node *e1 = parse_or(P);
    while (skip_name(P, "if")) {
        p_enter(P);
        struct node *e2 = parse_or(P);
        struct node *e3 = NULL;
        if (skip_name(P, "else")) e3 = parse_condexpr(P);
        struct node *c = mk(P, E_COND, line);
        c->a = e2;
        c->b = e1;
        c->c = e3;
        e1 = c;
        p_leave(P);
    }
    return e1;
}

static struct node *parse_expression(struct parser *P, bool with_condexpr)
{
    p_enter(P);
    struct node *r = with_condexpr ? parse_condexpr(P) : parse_or(P);
    p_leave(P);
    return r;
}

static struct node *parse_not(struct parser *P);
static struct node *parse_and(struct parser *P)
{
    int line = cur(P)->line;
    struct node *l = parse_not(P);
    while (skip_name(P, "and")) {
        struct node *r = parse_not(P);
        struct node *b = mk(P, E_AND, line);
        b->a = l;
        b->b = r;
        l = b;
    }
    return l;
}

static struct node *parse_or(struct parser *P)
{
    int line = cur(P)->line;
    struct node *l = parse_and(P);
    while (skip_name(P, "or")) {
        struct node *r = parse_and(P);
        struct node *b = mk(P, E_OR, line);
        b->a = l;
        b->b = r;
        l = b;
    }
    return l;
}

static struct node *parse_compare(struct parser *P);
static struct node *parse_not(struct parser *P)
{
    if (is_name(cur(P), "not")) {
        int line = cur(P)->line;
        next(P);
        p_enter(P);
        struct node *n = mk(P, E_NOT, line);
        n->a = parse_not(P);
        p_leave(P);
        return n;
    }
    return parse_compare(P);
}

static struct node *parse_math1(struct parser *P);
static struct node *parse_compare(struct parser *P)
{
    int line = cur(P)->line;
    struct node *e = parse_math1(P);
    struct nvec ops = {0};
    int opv[64], nops = 0;
    int *opsdyn = NULL;
    int capdyn = 0;
    for (;;) {
        struct tok *t = cur(P);
        int op = 0;
        if (t->t == T_OP && (t->op == OP_EQ || t->op == OP_NE || t->op == OP_LT || t->op == OP_LTEQ ||
                             t->op == OP_GT || t->op == OP_GTEQ)) {
            op = t->op;
            next(P);
        } else if (is_name(t, "in")) {
            op = OP_IN;
            next(P);
        } else if (is_name(t, "not") && is_name(peek(P), "in")) {
            op = OP_NOTIN;
            next(P);
            next(P);
        } else {
            break;
        }
        nv_push(P, &ops, parse_math1(P));
        if (nops < 64) {
            opv[nops] = op;
        } else {
            if (nops >= capdyn) {
                int cap = capdyn ? capdyn * 2 : 128;
                int *d = ar_alloc(P->ar, (size_t)cap * sizeof(int));
                if (opsdyn)
                    memcpy(d, opsdyn, (size_t)nops * sizeof(int));
                else
                    memcpy(d, opv, 64 * sizeof(int));
                opsdyn = d;
                capdyn = cap;
            }
            opsdyn[nops] = op;
        }
        nops++;
    }
    if (!nops) return e;
    struct node *c = mk(P, E_COMPARE, line);
    c->a = e;
    c->args = nv_list(&ops);
    c->ops = ar_alloc(P->ar, (size_t)nops * sizeof(int));
    memcpy(c->ops, opsdyn ? opsdyn : opv, (size_t)nops * sizeof(int));
    return c;
}

static struct node *mk_bin(struct parser *P, int op, struct node *l, struct node *r, int line)
{
    struct node *b = mk(P, E_BIN, line);
    b->op = (int16_t)op;
    b->a = l;
    b->b = r;
    return b;
}

static struct node *parse_concat(struct parser *P);
static struct node *parse_math1(struct parser *P)
{
    int line = cur(P)->line;
    struct node *l = parse_concat(P);
    while (is_op(cur(P), OP_ADD) || is_op(cur(P), OP_SUB)) {
        int op = cur(P)->op;
        next(P);
        l = mk_bin(P, op, l, parse_concat(P), line);
    }
    return l;
}

static struct node *parse_math2(struct parser *P);
static struct node *parse_concat(struct parser *P)
{
    int line = cur(P)->line;
    struct node *first = parse_math2(P);
    if (!is_op(cur(P), OP_TILDE)) return first;
    struct nvec args = {0};
    nv_push(P, &args, first);
    while (skip_op(P, OP_TILDE)) nv_push(P, &args, parse_math2(P));
    struct node *c = mk(P, E_CONCAT, line);
    c->args = nv_list(&args);
    return c;
}

static struct node *parse_pow(struct parser *P);
static struct node *parse_math2(struct parser *P)
{
    int line = cur(P)->line;
    struct node *l = parse_pow(P);
    while (is_op(cur(P), OP_MUL) || is_op(cur(P), OP_DIV) || is_op(cur(P), OP_FLOORDIV) || is_op(cur(P), OP_MOD)) {
        int op = cur(P)->op;
        next(P);
        l = mk_bin(P, op, l, parse_pow(P), line);
    }
    return l;
}

static struct node *parse_pow(struct parser *P)
{
    int line = cur(P)->line;
    struct node *l = parse_unary(P, true);
    while (skip_op(P, OP_POW)) l = mk_bin(P, OP_POW, l, parse_unary(P, true), line);
    return l;
}

static struct node *parse_unary(struct parser *P, bool with_filter)
{
    struct tok *t = cur(P);
    int line = t->line;
    struct node *n;
    p_enter(P);
    if (is_op(t, OP_SUB) || is_op(t, OP_ADD)) {
        int k = t->op == OP_SUB ? E_NEG : E_POS;
        next(P);
        n = mk(P, k, line);
        n->a = parse_unary(P, false);
    } else {
        n = parse_primary(P);
    }
    n = parse_postfix(P, n);
    if (with_filter) n = parse_filter_expr(P, n);
    p_leave(P);
    return n;
}

static struct node *parse_list_lit(struct parser *P)
{
    int line = cur(P)->line;
    expect_op(P, OP_LBRACKET);
    struct nvec items = {0};
    while (!is_op(cur(P), OP_RBRACKET)) {
        if (items.n) expect_op(P, OP_COMMA);
        if (is_op(cur(P), OP_RBRACKET)) break;
        nv_push(P, &items, parse_expression(P, true));
    }
    expect_op(P, OP_RBRACKET);
    struct node *n = mk(P, E_LIST, line);
    n->args = nv_list(&items);
    return n;
}

static struct node *parse_dict_lit(struct parser *P)
{
    int line = cur(P)->line;
    expect_op(P, OP_LBRACE);
    struct nvec keys = {0}, vals = {0};
    while (!is_op(cur(P), OP_RBRACE)) {
        if (keys.n) expect_op(P, OP_COMMA);
        if (is_op(cur(P), OP_RBRACE)) break;
        nv_push(P, &keys, parse_expression(P, true));
        expect_op(P, OP_COLON);
        nv_push(P, &vals, parse_expression(P, true));
    }
    expect_op(P, OP_RBRACE);
    struct node *n = mk(P, E_DICT, line);
    n->args = nv_list(&keys);
    n->kw = nv_list(&vals);
    return n;
}

static struct node *parse_primary(struct parser *P)
{
    struct tok *t = cur(P);
    struct node *n;
    if (t->t == T_NAME) {
        if (!strcmp(t->p, "true") || !strcmp(t->p, "True") || !strcmp(t->p, "false") || !strcmp(t->p, "False")) {
            n = mk(P, E_CONST, t->line);
            n->v = vbool(t->p[0] == 't' || t->p[0] == 'T');
        } else if (!strcmp(t->p, "none") || !strcmp(t->p, "None")) {
            n = mk(P, E_CONST, t->line);
            n->v = vnone();
        } else {
            n = mk(P, E_NAME, t->line);
            n->name = t->p;
        }
        next(P);
    } else if (t->t == T_STR) {
        n = mk(P, E_CONST, t->line);
        if (peek(P)->t != T_STR) {
            n->v = vstr(t->p, t->n);
            next(P);
        } else { /* adjacent literals are joined */
            size_t total = 0;
            size_t j = P->i;
            while (P->t[j].t == T_STR) total += P->t[j++].n;
            char *b = ar_alloc(P->ar, total + 1);
            size_t k = 0;
            while (cur(P)->t == T_STR) {
                memcpy(b + k, cur(P)->p, cur(P)->n);
                k += cur(P)->n;
                next(P);
            }
            b[k] = 0;
            n->v = vstr(b, k);
        }
    } else if (t->t == T_INT || t->t == T_FLOAT) {
        n = mk(P, E_CONST, t->line);
        n->v = t->t == T_INT ? vint(t->i) : vfloat(t->f);
        next(P);
    } else if (is_op(t, OP_LPAREN)) {
        next(P);
        n = parse_tuple(P, false, true, NULL, true);
        expect_op(P, OP_RPAREN);
    } else if (is_op(t, OP_LBRACKET)) {
        n = parse_list_lit(P);
    } else if (is_op(t, OP_LBRACE)) {
        n = parse_dict_lit(P);
    } else {
        p_unexpected(P, NULL);
    }
    return n;
}

static bool is_tuple_end(struct parser *P, const char *extra_end)
{
    struct tok *t = cur(P);
    if (t->t == T_VEND || t->t == T_BEND || is_op(t, OP_RPAREN)) return true;
    return extra_end && is_name(t, extra_end);
}

static struct node *parse_tuple(struct parser *P, bool simplified, bool with_condexpr, const char *extra_end,
                                bool explicit_parens)
{
    int line = cur(P)->line;
    struct nvec args = {0};
    bool is_tuple = false;
    p_enter(P);
    for (;;) {
        if (args.n) expect_op(P, OP_COMMA);
        if (is_tuple_end(P, extra_end)) break;
        struct node *e = simplified ? parse_primary(P) : parse_expression(P, with_condexpr);
        nv_push(P, &args, e);
        if (is_op(cur(P), OP_COMMA))
            is_tuple = true;
        else
            break;
    }
    p_leave(P);
    if (!is_tuple) {
        if (args.n) return args.v[0];
        if (!explicit_parens) p_unexpected(P, "an expression");
    }
    struct node *n = mk(P, E_TUPLE, line);
    n->args = nv_list(&args);
    return n;
}

/* Call arguments: (a, b, k=v, *args, **kwargs) */
static void parse_call_args(struct parser *P, struct node *n)
{
    int line = cur(P)->line;
    expect_op(P, OP_LPAREN);
    struct nvec args = {0}, kw = {0};
    const char **kwn = NULL;
    int kwcap = 0;
    bool require_comma = false;
    while (!is_op(cur(P), OP_RPAREN)) {
        if (require_comma) {
            expect_op(P, OP_COMMA);
            if (is_op(cur(P), OP_RPAREN)) break;
        }
        if (is_op(cur(P), OP_MUL)) {
            if (n->dyn_args || n->dyn_kwargs) fail_at(P->err, line, "invalid syntax for function call expression");
            next(P);
            n->dyn_args = parse_expression(P, true);
        } else if (is_op(cur(P), OP_POW)) {
            if (n->dyn_kwargs) fail_at(P->err, line, "invalid syntax for function call expression");
            next(P);
            n->dyn_kwargs = parse_expression(P, true);
        } else if (cur(P)->t == T_NAME && is_op(peek(P), OP_ASSIGN)) {
            if (n->dyn_kwargs) fail_at(P->err, line, "invalid syntax for function call expression");
            const char *key = cur(P)->p;
            next(P);
            next(P);
            if (kw.n == kwcap) {
                int cap = kwcap ? kwcap * 2 : 8;
                const char **k2 = ar_alloc(P->ar, (size_t)cap * sizeof(*k2));
                if (kw.n) memcpy(k2, kwn, (size_t)kw.n * sizeof(*k2));
                kwn = k2;
                kwcap = cap;
            }
            kwn[kw.n] = key;
            nv_push(P, &kw, parse_expression(P, true));
        } else {
            if (n->dyn_args || n->dyn_kwargs || kw.n)
                fail_at(P->err, line, "invalid syntax for function call expression");
            nv_push(P, &args, parse_expression(P, true));
        }
        require_comma = true;
    }
    expect_op(P, OP_RPAREN);
    n->args = nv_list(&args);
    n->kw = nv_list(&kw);
    n->kwn = kwn;
}

static struct node *parse_call(struct parser *P, struct node *callee)
{
    struct node *n = mk(P, E_CALL, cur(P)->line);
    n->a = callee;
    parse_call_args(P, n);
    return n;
}

static struct node *parse_subscribed(struct parser *P)
{
    int line = cur(P)->line;
    struct node *args[3] = {NULL, NULL, NULL};
    if (is_op(cur(P), OP_COLON)) {
        next(P);
    } else {
        struct node *e = parse_expression(P, true);
        if (!is_op(cur(P), OP_COLON)) return e;
        next(P);
        args[0] = e;
    }
    if (is_op(cur(P), OP_COLON)) {
        /* no stop */
    } else if (!is_op(cur(P), OP_RBRACKET) && !is_op(cur(P), OP_COMMA)) {
        args[1] = parse_expression(P, true);
    }
    if (is_op(cur(P), OP_COLON)) {
        next(P);
        if (!is_op(cur(P), OP_RBRACKET) && !is_op(cur(P), OP_COMMA)) args[2] = parse_expression(P, true);
    }
    struct node *s = mk(P, E_SLICE, line);
    s->a = args[0];
    s->b = args[1];
    s->c = args[2];
    return s;
}

static struct node *parse_subscript(struct parser *P, struct node *obj)
{
    struct tok *t = cur(P);
    int line = t->line;
    if (is_op(t, OP_DOT)) {
        next(P);
        struct tok *a = cur(P);
        if (a->t == T_NAME) {
            next(P);
            struct node *n = mk(P, E_GETATTR, line);
            n->a = obj;
            n->name = a->p;
            return n;
        }
        if (a->t != T_INT) fail_at(P->err, a->line, "expected name or number");
        next(P);
        struct node *k = mk(P, E_CONST, a->line);
        k->v = vint(a->i);
        struct node *n = mk(P, E_GETITEM, line);
        n->a = obj;
        n->b = k;
        return n;
    }
    /* [ */
    next(P);
    struct nvec args = {0};
    while (!is_op(cur(P), OP_RBRACKET)) {
        if (args.n) expect_op(P, OP_COMMA);
        nv_push(P, &args, parse_subscribed(P));
    }
    expect_op(P, OP_RBRACKET);
    struct node *n = mk(P, E_GETITEM, line);
    n->a = obj;
    if (args.n == 1) {
        n->b = args.v[0];
    } else {
        struct node *tu = mk(P, E_TUPLE, line);
        tu->args = nv_list(&args);
        n->b = tu;
    }
    return n;
}

static struct node *parse_postfix(struct parser *P, struct node *n)
{
    for (;;) {
        struct tok *t = cur(P);
        if (is_op(t, OP_DOT) || is_op(t, OP_LBRACKET))
            n = parse_subscript(P, n);
        else if (is_op(t, OP_LPAREN))
            n = parse_call(P, n);
        else
            break;
    }
    return n;
}

static struct node *parse_test(struct parser *P, struct node *n)
{
    int line = cur(P)->line;
    next(P); /* is */
    bool negated = skip_name(P, "not");
    if (cur(P)->t != T_NAME) p_unexpected(P, "a test name");
    const char *name = cur(P)->p;
    next(P);
    while (is_op(cur(P), OP_DOT)) { /* dotted test names: never found, but parsed */
        next(P);
        if (cur(P)->t != T_NAME) p_unexpected(P, "name");
        size_t l1 = strlen(name), l2 = strlen(cur(P)->p);
        char *b = ar_alloc(P->ar, l1 + l2 + 2);
        memcpy(b, name, l1);
        b[l1] = '.';
        memcpy(b + l1 + 1, cur(P)->p, l2 + 1);
        name = b;
        next(P);
    }
    struct node *tn = mk(P, E_TEST, line);
    tn->a = n;
    tn->name = name;
    struct tok *t = cur(P);
    if (is_op(t, OP_LPAREN)) {
        parse_call_args(P, tn);
    } else if ((t->t == T_NAME || t->t == T_STR || t->t == T_INT || t->t == T_FLOAT || is_op(t, OP_LPAREN) ||
                is_op(t, OP_LBRACKET) || is_op(t, OP_LBRACE)) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
        if (is_name(t, "is")) fail_at(P->err, t->line, "You cannot chain multiple tests with is");
        struct node *arg = parse_postfix(P, parse_primary(P));
        struct node **v = ar_alloc(P->ar, sizeof(*v));
        v[0] = arg;
        tn->args = (struct nlist){v, 1};
    }
    tn->op = (int16_t)test_id(name);
    if (tn->op < 0 && !P->soft) fail_at(P->err, line, "No test named '%s'.", name);
    if (negated) {
        struct node *nn = mk(P, E_NOT, line);
        nn->a = tn;
        return nn;
    }
    return tn;
}

static struct node *parse_filter(struct parser *P, struct node *n, bool start_inline)
{
    while (is_op(cur(P), OP_PIPE) || start_inline) {
        if (!start_inline) next(P);
        start_inline = false;
        if (cur(P)->t != T_NAME) p_unexpected(P, "a filter name");
        int line = cur(P)->line;
        const char *name = cur(P)->p;
        next(P);
        while (is_op(cur(P), OP_DOT)) {
            next(P);
            if (cur(P)->t != T_NAME) p_unexpected(P, "name");
            size_t l1 = strlen(name), l2 = strlen(cur(P)->p);
            char *b = ar_alloc(P->ar, l1 + l2 + 2);
            memcpy(b, name, l1);
            b[l1] = '.';
            memcpy(b + l1 + 1, cur(P)->p, l2 + 1);
            name = b;
            next(P);
        }
        struct node *f = mk(P, E_FILTER, line);
        f->a = n;
        f->name = name;
        if (is_op(cur(P), OP_LPAREN)) parse_call_args(P, f);
        f->op = (int16_t)filter_id(name);
        if (f->op < 0 && !P->soft) fail_at(P->err, line, "No filter named '%s'.", name);
        n = f;
    }
    return n;
}

static struct node *parse_filter_expr(struct parser *P, struct node *n)
{
    for (;;) {
        struct tok *t = cur(P);
        if (is_op(t, OP_PIPE))
            n = parse_filter(P, n, false);
        else if (is_name(t, "is"))
            n = parse_test(P, n);
        else if (is_op(t, OP_LPAREN))
            n = parse_call(P, n);
        else
            break;
    }
    return n;
}

static bool can_assign(struct node *n)
{
    if (n->kind == E_NAME)
        return strcmp(n->name, "true") && strcmp(n->name, "false") && strcmp(n->name, "none") &&
               strcmp(n->name, "True") && strcmp(n->name, "False") && strcmp(n->name, "None");
    if (n->kind == E_NSREF) return true;
    if (n->kind == E_TUPLE) {
        for (int i = 0; i < n->args.n; i++)
            if (!can_assign(n->args.v[i])) return false;
        return true;
    }
    return false;
}

static struct node *parse_assign_target(struct parser *P, bool with_tuple, bool name_only, const char *extra_end,
                                        bool with_namespace)
{
    struct node *t;
    if (with_namespace && cur(P)->t == T_NAME && is_op(peek(P), OP_DOT)) {
        int line = cur(P)->line;
        const char *ns = cur(P)->p;
        next(P);
        next(P);
        if (cur(P)->t != T_NAME) p_unexpected(P, "name");
        t = mk(P, E_NSREF, line);
        t->name = ns;
        t->name2 = cur(P)->p;
        next(P);
    } else if (name_only) {
        if (cur(P)->t != T_NAME) p_unexpected(P, "name");
        t = mk(P, E_NAME, cur(P)->line);
        t->name = cur(P)->p;
        next(P);
    } else {
        t = with_tuple ? parse_tuple(P, true, true, extra_end, false) : parse_primary(P);
    }
    if (!can_assign(t)) fail_at(P->err, t->line, "can't assign to this expression");
    return t;
}

static void parse_signature(struct parser *P, struct node *n)
{
    expect_op(P, OP_LPAREN);
    int cap = 0;
    bool any_default = false;
    while (!is_op(cur(P), OP_RPAREN)) {
        if (n->nparams) expect_op(P, OP_COMMA);
        struct node *a = parse_assign_target(P, false, true, NULL, false);
        struct node *def = NULL;
        if (skip_op(P, OP_ASSIGN)) {
            def = parse_expression(P, true);
            any_default = true;
        } else if (any_default) {
            fail_at(P->err, a->line, "non-default argument follows default argument");
        }
        if (n->nparams == cap) {
            int c2 = cap ? cap * 2 : 4;
            const char **p2 = ar_alloc(P->ar, (size_t)c2 * sizeof(*p2));
            struct node **d2 = ar_alloc(P->ar, (size_t)c2 * sizeof(*d2));
            if (n->nparams) {
                memcpy(p2, n->params, (size_t)n->nparams * sizeof(*p2));
                memcpy(d2, n->defaults, (size_t)n->nparams * sizeof(*d2));
            }
            n->params = p2;
            n->defaults = d2;
            cap = c2;
        }
        n->params[n->nparams] = a->name;
        n->defaults[n->nparams] = def;
        n->nparams++;
    }
    expect_op(P, OP_RPAREN);
}

/* Which of caller / varargs / kwargs a macro body reads (jinja2's find_undeclared, simplified: any
 * read of the name anywhere in the body, nested macros excepted). */
static int find_special(struct parser *P, struct node *n, int depth)
{
    if (!n) return 0;
    if (depth > 4 * MAX_PARSE_DEPTH) fail_at(P->err, n->line, "expression nested too deeply");
    int f = 0;
    if (n->kind == E_NAME) {
        if (!strcmp(n->name, "caller")) f |= F_CALLER;
        if (!strcmp(n->name, "varargs")) f |= F_VARARGS;
        if (!strcmp(n->name, "kwargs")) f |= F_KWARGS;
        return f;
    }
    if (n->kind == N_MACRO) return 0;
    if (n->kind == N_CALLBLOCK) return find_special(P, n->a, depth + 1); /* its body is caller()'s */
    f |= find_special(P, n->a, depth + 1) | find_special(P, n->b, depth + 1) | find_special(P, n->c, depth + 1);
    f |= find_special(P, n->dyn_args, depth + 1) | find_special(P, n->dyn_kwargs, depth + 1);
    for (int i = 0; i < n->body.n; i++) f |= find_special(P, n->body.v[i], depth + 1);
    for (int i = 0; i < n->els.n; i++) f |= find_special(P, n->els.v[i], depth + 1);
    for (int i = 0; i < n->args.n; i++) f |= find_special(P, n->args.v[i], depth + 1);
    for (int i = 0; i < n->kw.n; i++) f |= find_special(P, n->kw.v[i], depth + 1);
    for (int i = 0; i < n->nparams; i++) f |= find_special(P, n->defaults[i], depth + 1);
    return f;
}

static struct node *parse_statement(struct parser *P)
{
    struct tok *t = cur(P);
    int line = t->line;
    if (t->t != T_NAME) fail_at(P->err, line, "tag name expected");
    const char *tag = t->p;
    p_enter(P);
    struct node *n = NULL;
    bool soft = P->soft;
    if (!strcmp(tag, "if")) {
        next(P);
        n = mk(P, N_IF, line);
        struct node *curif = n;
        P->soft = true;
        for (;;) {
            curif->a = parse_tuple(P, false, false, NULL, false);
            static const char *const ends[] = {"elif", "else", "endif", NULL};
            int which;
            curif->body = parse_statements(P, ends, false, &which);
            next(P);
            if (which == 0) {
                struct node *e = mk(P, N_IF, cur(P)->line);
                struct node **v = ar_alloc(P->ar, sizeof(*v));
                v[0] = e;
                curif->els = (struct nlist){v, 1};
                curif = e;
                continue;
            }
            if (which == 1) {
                static const char *const ends2[] = {"endif", NULL};
                curif->els = parse_statements(P, ends2, true, NULL);
            }
            break;
        }
    } else if (!strcmp(tag, "for")) {
        next(P);
        n = mk(P, N_FOR, line);
        n->a = parse_assign_target(P, true, false, "in", false);
        expect_name(P, "in");
        n->b = parse_tuple(P, false, false, "recursive", false);
        if (skip_name(P, "if")) n->c = parse_expression(P, true);
        if (skip_name(P, "recursive")) n->flags |= F_RECURSIVE;
        static const char *const ends[] = {"endfor", "else", NULL};
        int which;
        P->soft = false;
        P->loops++;
        n->body = parse_statements(P, ends, false, &which);
        P->loops--;
        next(P);
        if (which == 1) {
            static const char *const ends2[] = {"endfor", NULL};
            n->els = parse_statements(P, ends2, true, NULL);
        }
    } else if (!strcmp(tag, "set")) {
        next(P);
        n = mk(P, N_SET, line);
        n->a = parse_assign_target(P, true, false, NULL, true);
        if (skip_op(P, OP_ASSIGN)) {
            n->b = parse_tuple(P, false, true, NULL, false);
        } else {
            n->kind = N_SETBLOCK;
            if (is_op(cur(P), OP_PIPE)) n->c = parse_filter(P, NULL, false);
            static const char *const ends[] = {"endset", NULL};
            P->soft = false;
            n->body = parse_statements(P, ends, true, NULL);
        }
    } else if (!strcmp(tag, "macro")) {
        next(P);
        n = mk(P, N_MACRO, line);
        struct node *nm = parse_assign_target(P, false, true, NULL, false);
        n->name = nm->name;
        parse_signature(P, n);
        static const char *const ends[] = {"endmacro", NULL};
        int loops = P->loops;
        P->loops = 0;
        P->soft = false;
        n->body = parse_statements(P, ends, true, NULL);
        P->loops = loops;
        for (int i = 0; i < n->body.n; i++) n->flags |= (uint8_t)find_special(P, n->body.v[i], 0);
    } else if (!strcmp(tag, "call")) {
        next(P);
        n = mk(P, N_CALLBLOCK, line);
        if (is_op(cur(P), OP_LPAREN)) parse_signature(P, n);
        n->a = parse_expression(P, true);
        if (n->a->kind != E_CALL) fail_at(P->err, line, "expected call");
        static const char *const ends[] = {"endcall", NULL};
        int loops = P->loops;
        P->loops = 0;
        P->soft = false;
        n->body = parse_statements(P, ends, true, NULL);
        P->loops = loops;
        for (int i = 0; i < n->body.n; i++) n->flags |= (uint8_t)find_special(P, n->body.v[i], 0);
    } else if (!strcmp(tag, "filter")) {
        next(P);
        n = mk(P, N_FILTERBLOCK, line);
        n->c = parse_filter(P, NULL, true);
        static const char *const ends[] = {"endfilter", NULL};
        P->soft = false;
        n->body = parse_statements(P, ends, true, NULL);
    } else if (!strcmp(tag, "with")) {
        next(P);
        n = mk(P, N_WITH, line);
        struct nvec targets = {0}, values = {0};
        while (cur(P)->t != T_BEND) {
            if (targets.n) expect_op(P, OP_COMMA);
            nv_push(P, &targets, parse_assign_target(P, true, false, NULL, false));
            expect_op(P, OP_ASSIGN);
            nv_push(P, &values, parse_expression(P, true));
        }
        n->args = nv_list(&targets);
        n->kw = nv_list(&values);
        static const char *const ends[] = {"endwith", NULL};
        P->soft = false;
        n->body = parse_statements(P, ends, true, NULL);
    } else if (!strcmp(tag, "print")) {
        next(P);
        n = mk(P, N_PRINT, line);
        struct nvec items = {0};
        while (cur(P)->t != T_BEND) {
            if (items.n) expect_op(P, OP_COMMA);
            nv_push(P, &items, parse_expression(P, true));
        }
        n->args = nv_list(&items);
    } else if (!strcmp(tag, "break") || !strcmp(tag, "continue")) {
        if (!P->loops) fail_at(P->err, line, "'%s' outside loop", tag);
        n = mk(P, tag[0] == 'b' ? N_BREAK : N_CONTINUE, line);
        next(P);
    } else if (!strcmp(tag, "generation")) {
        next(P);
        n = mk(P, N_SCOPE, line);
        static const char *const ends[] = {"endgeneration", NULL};
        int loops = P->loops;
        P->loops = 0;
        P->soft = false;
        n->body = parse_statements(P, ends, true, NULL);
        P->loops = loops;
    } else if (!strcmp(tag, "block") || !strcmp(tag, "extends") || !strcmp(tag, "include") ||
               !strcmp(tag, "import") || !strcmp(tag, "from") || !strcmp(tag, "autoescape")) {
        fail_at(P->err, line, "the '%s' tag is not supported in chat templates", tag);
    } else {
        fail_at(P->err, line, "Encountered unknown tag '%s'.", tag);
    }
    P->soft = soft;
    p_leave(P);
    return n;
}

/* Statements up to one of `ends` (a NULL-terminated list of tag names, or NULL for the whole template).
 * jinja2's parse_statements: the opening tag's block end comes first (an optional ':' before it). On
 * return the current token is the end tag's name (consumed when drop_needle). */
static struct nlist parse_statements(struct parser *P, const char *const *ends, bool drop_needle, int *which)
{
    if (ends) {
        skip_op(P, OP_COLON);
        expect_type(P, T_BEND, "end of statement block");
    }
    struct nvec body = {0};
    for (;;) {
        struct tok *t = cur(P);
        if (t->t == T_DATA) {
            struct node *d = mk(P, N_DATA, t->line);
            d->v = vstr(t->p, t->n);
            nv_push(P, &body, d);
            next(P);
        } else if (t->t == T_VBEGIN) {
            next(P);
            struct node *o = mk(P, N_OUTPUT, t->line);
            o->a = parse_tuple(P, false, true, NULL, false);
            nv_push(P, &body, o);
            expect_type(P, T_VEND, "end of print statement");
        } else if (t->t == T_BBEGIN) {
            next(P);
            if (ends && cur(P)->t == T_NAME) {
                for (int k = 0; ends[k]; k++)
                    if (!strcmp(cur(P)->p, ends[k])) {
                        if (which) *which = k;
                        if (drop_needle) next(P);
                        return nv_list(&body);
                    }
            }
            nv_push(P, &body, parse_statement(P));
            expect_type(P, T_BEND, "end of statement block");
        } else if (t->t == T_EOF) {
            if (ends) fail_at(P->err, t->line, "unexpected end of template, expected '%s'", ends[0]);
            return nv_list(&body);
        } else {
            p_unexpected(P, NULL);
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* The runtime: context, output buffers, scopes */

struct scope;

struct macro {
    struct node *def; /* N_MACRO, or N_CALLBLOCK for caller() */
    struct scope *closure;
    const char *name;
};

struct method {
    struct val self;
    const char *name;
};

struct loopctx {
    struct val items; /* a list */
    size_t i, n;
    int depth0;
    struct node *node;   /* the for, for loop(...) in recursive loops */
    struct scope *scope; /* the scope the for runs in */
    struct val changed;  /* last argument of loop.changed(), V_UNDEF before the first call */
};

struct svar {
    const char *name;
    struct val v;
};

struct scope {
    struct scope *parent;
    struct svar *v;
    int n, cap;
    bool captured; /* a macro closes over it: a loop may not reuse it for its next iteration */
};

struct loom_jinja_template {
    struct arena ar;
    struct node *root; /* N_SCOPE holding the template's statements */
};

struct rctx {
    struct jerr err;
    struct arena ar;
    uint64_t steps, max_steps;
    int depth, max_depth;
    size_t max_output;
    long long now;
    int line;
    const void *repr_stack[MAX_DATA_DEPTH + 1]; /* containers being printed (Python's recursion guard) */
    int nrepr;
};

#define rfail(c, ...) fail_at(&(c)->err, (c)->line, __VA_ARGS__)

static void charge(struct rctx *c, uint64_t n)
{
    c->steps += n;
    if (c->steps > c->max_steps) {
        c->err.fatal = true;
        rfail(c, "template takes too long (more than %llu steps)", (unsigned long long)c->max_steps);
    }
}

struct sbuf {
    char *p;
    size_t n, cap;
};

static void sb_grow(struct rctx *c, struct sbuf *b, size_t add)
{
    if (add > c->max_output || b->n + add > c->max_output) {
        c->err.fatal = true;
        rfail(c, "rendered text larger than the limit of %zu bytes", c->max_output);
    }
    if (b->n + add <= b->cap) return;
    size_t cap = b->cap ? b->cap * 2 : 128;
    while (cap < b->n + add) cap *= 2;
    char *p = ar_alloc(&c->ar, cap);
    if (b->n) memcpy(p, b->p, b->n);
    b->p = p;
    b->cap = cap;
}
static void sb_put(struct rctx *c, struct sbuf *b, const char *s, size_t n)
{
    if (!n) return;
    sb_grow(c, b, n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void sb_puts(struct rctx *c, struct sbuf *b, const char *s)
{
    sb_put(c, b, s, strlen(s));
}
static void sb_putc(struct rctx *c, struct sbuf *b, char ch)
{
    sb_grow(c, b, 1);
    b->p[b->n++] = ch;
}
static void sb_cp(struct rctx *c, struct sbuf *b, uint32_t cp)
{
    char t[4];
    sb_put(c, b, t, (size_t)loom_utf8_encode(cp, t));
}
static LOOM_PRINTF(3, 4) void sb_printf(struct rctx *c, struct sbuf *b, const char *fmt, ...)
{
    char t[128];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    sb_put(c, b, t, k < (int)sizeof t ? (size_t)k : sizeof t - 1);
}
static struct val sb_val(struct sbuf *b)
{
    return vstr(b->p ? b->p : "", b->n);
}

static struct val str_copy(struct rctx *c, const char *s, size_t n)
{
    char *p = ar_alloc(&c->ar, n + 1);
    if (n) memcpy(p, s, n);
    p[n] = 0;
    return vstr(p, n);
}

static const char *cstr(struct rctx *c, struct val s) /* NUL-terminated copy */
{
    return str_copy(c, s.s.p, s.s.n).s.p;
}

static bool scope_get(struct scope *s, const char *name, struct val *out)
{
    for (; s; s = s->parent)
        for (int i = s->n - 1; i >= 0; i--)
            if (!strcmp(s->v[i].name, name)) {
                *out = s->v[i].v;
                return true;
            }
    return false;
}

static void scope_set(struct rctx *c, struct scope *s, const char *name, struct val v)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->v[i].name, name)) {
            s->v[i].v = v;
            return;
        }
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 4;
        struct svar *nv = ar_alloc(&c->ar, (size_t)cap * sizeof(*nv));
        if (s->n) memcpy(nv, s->v, (size_t)s->n * sizeof(*nv));
        s->v = nv;
        s->cap = cap;
    }
    s->v[s->n].name = name;
    s->v[s->n].v = v;
    s->n++;
}

static struct scope *scope_new(struct rctx *c, struct scope *parent)
{
    struct scope *s = ar_zalloc(&c->ar, sizeof(*s));
    s->parent = parent;
    return s;
}

/* ---------------------------------------------------------------------------------------------- */
/* Lists and dicts */

static struct val list_new(struct rctx *c, size_t cap, bool tuple)
{
    struct val v = {.t = V_LIST, .f = tuple ? F_TUPLE : 0};
    struct lbuf *b = ar_alloc(&c->ar, sizeof(*b));
    b->cap = cap ? cap : 4;
    b->used = 0;
    b->v = ar_alloc(&c->ar, b->cap * sizeof(struct val));
    v.l.buf = b;
    v.l.n = 0;
    return v;
}

static void list_push(struct rctx *c, struct val *l, struct val x)
{
    struct lbuf *b = l->l.buf;
    if (b->used != l->l.n || b->used == b->cap) {
        size_t cap = l->l.n * 2 + 4;
        struct lbuf *nb = ar_alloc(&c->ar, sizeof(*nb));
        nb->v = ar_alloc(&c->ar, cap * sizeof(struct val));
        if (l->l.n) memcpy(nb->v, b->v, l->l.n * sizeof(struct val));
        nb->used = l->l.n;
        nb->cap = cap;
        l->l.buf = b = nb;
    }
    b->v[b->used++] = x;
    l->l.n++;
}

static struct dict *dict_new(struct rctx *c, size_t cap)
{
    struct dict *d = ar_zalloc(&c->ar, sizeof(*d));
    d->cap = cap ? cap : 4;
    d->k = ar_alloc(&c->ar, d->cap * sizeof(struct val));
    d->v = ar_alloc(&c->ar, d->cap * sizeof(struct val));
    return d;
}

static bool py_eq(struct rctx *c, struct val a, struct val b, int depth);

static bool dict_find(struct rctx *c, struct dict *d, struct val key, size_t *idx)
{
    for (size_t i = 0; i < d->n; i++) {
        struct val k = d->k[i];
        bool eq;
        if (k.t == V_STR && key.t == V_STR)
            eq = k.s.n == key.s.n && !memcmp(k.s.p, key.s.p, k.s.n);
        else
            eq = py_eq(c, k, key, 0);
        if (eq) {
            *idx = i;
            return true;
        }
    }
    charge(c, d->n / 16);
    return false;
}

static bool dict_get_str(struct dict *d, const char *key, struct val *out)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i < d->n; i++)
        if (d->k[i].t == V_STR && d->k[i].s.n == kl && !memcmp(d->k[i].s.p, key, kl)) {
            *out = d->v[i];
            return true;
        }
    return false;
}

static void dict_set(struct rctx *c, struct dict *d, struct val key, struct val v)
{
    size_t i;
    if (dict_find(c, d, key, &i)) {
        d->v[i] = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap * 2;
        struct val *k2 = ar_alloc(&c->ar, cap * sizeof(struct val));
        struct val *v2 = ar_alloc(&c->ar, cap * sizeof(struct val));
        memcpy(k2, d->k, d->n * sizeof(struct val));
        memcpy(v2, d->v, d->n * sizeof(struct val));
        d->k = k2;
        d->v = v2;
        d->cap = cap;
    }
    d->k[d->n] = key;
    d->v[d->n] = v;
    d->n++;
}

static struct val vdict(struct dict *d)
{
    struct val v = {.t = V_DICT};
    v.d = d;
    return v;
}

/* ---------------------------------------------------------------------------------------------- */
/* Python's type names, truth, str() and repr() */

static const char *type_name(struct val v)
{
    switch (v.t) {
    case V_UNDEF: return "Undefined";
    case V_NONE: return "NoneType";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return (v.f & F_SAFE) ? "Markup" : "str";
    case V_LIST:
        if (v.f & F_RANGE) return "range";
        return (v.f & F_TUPLE) ? "tuple" : (v.f & F_ITEMS) ? "dict_items" : (v.f & F_KEYS) ? "dict_keys"
               : (v.f & F_VALUES) ? "dict_values" : "list";
    case V_DICT: return "dict";
    case V_NS: return "Namespace";
    case V_MACRO: return "Macro";
    case V_FUNC: return "function";
    case V_METHOD: return "builtin_function_or_method";
    case V_LOOP: return "LoopContext";
    case V_ITER: return v.it->what;
    }
    return "object";
}

static LOOM_NORETURN void undef_fail(struct rctx *c, struct val v)
{
    if (v.hint) rfail(c, "%s", v.hint);
    rfail(c, "value is undefined");
}

static bool truthy(struct val v)
{
    switch (v.t) {
    case V_UNDEF:
    case V_NONE: return false;
    case V_BOOL: return v.b;
    case V_INT: return v.i != 0;
    case V_FLOAT: return v.fl != 0;
    case V_STR: return v.s.n > 0;
    case V_LIST: return v.l.n > 0;
    case V_DICT: return v.d->n > 0;
    default: return true;
    }
}

static const char *fn_name(int fn);

static void put_repr(struct rctx *c, struct sbuf *b, struct val v);

static void put_str(struct rctx *c, struct sbuf *b, struct val v)
{
    char t[64];
    switch (v.t) {
    case V_UNDEF: return;
    case V_NONE: sb_put(c, b, "None", 4); return;
    case V_BOOL: sb_puts(c, b, v.b ? "True" : "False"); return;
    case V_INT: sb_printf(c, b, "%lld", (long long)v.i); return;
    case V_FLOAT: py_float_repr(v.fl, t, sizeof t); sb_puts(c, b, t); return;
    case V_STR: sb_put(c, b, v.s.p, v.s.n); return;
    default: put_repr(c, b, v); return;
    }
}

static void put_str_repr(struct rctx *c, struct sbuf *b, const char *s, size_t n)
{
    bool sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char q = (sq && !dq) ? '"' : '\'';
    sb_putc(c, b, q);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int l = u8_dec((const unsigned char *)s + i, n - i, &cp);
        if (cp == (uint32_t)q || cp == '\\') {
            sb_putc(c, b, '\\');
            sb_putc(c, b, (char)cp);
        } else if (cp == '\t') {
            sb_put(c, b, "\\t", 2);
        } else if (cp == '\n') {
            sb_put(c, b, "\\n", 2);
        } else if (cp == '\r') {
            sb_put(c, b, "\\r", 2);
        } else if (!py_isprintable(cp)) {
            if (cp < 0x100)
                sb_printf(c, b, "\\x%02x", cp);
            else if (cp < 0x10000)
                sb_printf(c, b, "\\u%04x", cp);
            else
                sb_printf(c, b, "\\U%08x", cp);
        } else {
            sb_put(c, b, s + i, (size_t)l);
        }
        i += (size_t)l;
    }
    sb_putc(c, b, q);
}

static bool repr_enter(struct rctx *c, const void *p)
{
    for (int i = 0; i < c->nrepr; i++)
        if (c->repr_stack[i] == p) return false;
    if (c->nrepr >= MAX_DATA_DEPTH) rfail(c, "value nested too deeply to print");
    c->repr_stack[c->nrepr++] = p;
    return true;
}

static void put_dict_repr(struct rctx *c, struct sbuf *b, struct dict *d)
{
    if (!repr_enter(c, d)) {
        sb_put(c, b, "{...}", 5);
        return;
    }
    sb_putc(c, b, '{');
    for (size_t i = 0; i < d->n; i++) {
        if (i) sb_put(c, b, ", ", 2);
        put_repr(c, b, d->k[i]);
        sb_put(c, b, ": ", 2);
        put_repr(c, b, d->v[i]);
    }
    sb_putc(c, b, '}');
    c->nrepr--;
}

static void put_repr(struct rctx *c, struct sbuf *b, struct val v)
{
    charge(c, 1);
    switch (v.t) {
    case V_UNDEF: sb_puts(c, b, "Undefined"); return;
    case V_STR:
        if (v.f & F_SAFE) {
            sb_puts(c, b, "Markup(");
            put_str_repr(c, b, v.s.p, v.s.n);
            sb_putc(c, b, ')');
        } else {
            put_str_repr(c, b, v.s.p, v.s.n);
        }
        return;
    case V_LIST: {
        bool tu = v.f & F_TUPLE;
        if (v.f & F_RANGE) {
            int64_t *r = v.l.buf->range;
            if (r[2] == 1)
                sb_printf(c, b, "range(%lld, %lld)", (long long)r[0], (long long)r[1]);
            else
                sb_printf(c, b, "range(%lld, %lld, %lld)", (long long)r[0], (long long)r[1], (long long)r[2]);
            return;
        }
        if (!tu && !repr_enter(c, v.l.buf)) {
            sb_put(c, b, "[...]", 5);
            return;
        }
        if (tu && !repr_enter(c, v.l.buf)) { /* a tuple inside itself cannot happen; be safe */
            sb_put(c, b, "(...)", 5);
            return;
        }
        if (v.f & F_VIEW) {
            sb_puts(c, b, type_name(v));
            sb_putc(c, b, '(');
        }
        sb_putc(c, b, tu ? '(' : '[');
        for (size_t i = 0; i < v.l.n; i++) {
            if (i) sb_put(c, b, ", ", 2);
            put_repr(c, b, L_items(v)[i]);
        }
        if (tu && v.l.n == 1) sb_putc(c, b, ',');
        sb_putc(c, b, tu ? ')' : ']');
        if (v.f & F_VIEW) sb_putc(c, b, ')');
        c->nrepr--;
        return;
    }
    case V_DICT: put_dict_repr(c, b, v.d); return;
    case V_NS:
        sb_puts(c, b, "<Namespace ");
        put_dict_repr(c, b, v.d);
        sb_putc(c, b, '>');
        return;
    case V_MACRO: sb_printf(c, b, "<Macro '%s'>", v.m->name); return;
    case V_FUNC: sb_printf(c, b, "<function %s>", fn_name(v.fn)); return;
    case V_METHOD: sb_printf(c, b, "<built-in method %s of %s object>", v.me->name, type_name(v.me->self)); return;
    case V_LOOP: sb_printf(c, b, "<LoopContext %zu/%zu>", v.lp->i + 1, v.lp->n); return;
    case V_ITER: sb_printf(c, b, "<%s object>", v.it->what); return;
    default: put_str(c, b, v); return;
    }
}

/* str(v) as a value; strings are returned as they are (Markup stays Markup: jinja2's soft_str) */
static struct val to_str(struct rctx *c, struct val v)
{
    if (v.t == V_STR) return v;
    if (v.t == V_UNDEF) return VLIT("");
    struct sbuf b = {0};
    put_str(c, &b, v);
    return sb_val(&b);
}

/* ---------------------------------------------------------------------------------------------- */
/* Comparison */

static bool py_eq(struct rctx *c, struct val a, struct val b, int depth)
{
    if (depth > MAX_DATA_DEPTH) rfail(c, "values nested too deeply to compare");
    if (is_num(a) && is_num(b)) {
        if (a.t == V_FLOAT || b.t == V_FLOAT) return num_d(a) == num_d(b);
        return num_i(a) == num_i(b);
    }
    if (a.t != b.t) return false;
    switch (a.t) {
    case V_UNDEF:
    case V_NONE: return true;
    case V_STR: return a.s.n == b.s.n && !memcmp(a.s.p, b.s.p, a.s.n);
    case V_LIST:
        if (((a.f ^ b.f) & (F_TUPLE | F_VIEW | F_RANGE)) || a.l.n != b.l.n) return false;
        charge(c, a.l.n / 8);
        for (size_t i = 0; i < a.l.n; i++)
            if (!py_eq(c, L_items(a)[i], L_items(b)[i], depth + 1)) return false;
        return true;
    case V_DICT: {
        if (a.d->n != b.d->n) return false;
        if (a.d == b.d) return true;
        charge(c, a.d->n / 8);
        for (size_t i = 0; i < a.d->n; i++) {
            size_t j;
            if (!dict_find(c, b.d, a.d->k[i], &j)) return false;
            if (!py_eq(c, a.d->v[i], b.d->v[j], depth + 1)) return false;
        }
        return true;
    }
    case V_NS: return a.d == b.d;
    case V_MACRO: return a.m == b.m;
    case V_FUNC: return a.fn == b.fn;
    case V_METHOD: return a.me == b.me;
    case V_LOOP: return a.lp == b.lp;
    case V_ITER: return a.it == b.it;
    default: return false;
    }
}

/* a < b etc. Returns -1, 0, 1; raises TypeError for unorderable types. */
static int py_cmp(struct rctx *c, struct val a, struct val b, const char *opname, int depth)
{
    if (a.t == V_UNDEF) undef_fail(c, a);
    if (b.t == V_UNDEF) undef_fail(c, b);
    if (depth > MAX_DATA_DEPTH) rfail(c, "values nested too deeply to compare");
    if (is_num(a) && is_num(b)) {
        if (a.t == V_FLOAT || b.t == V_FLOAT) {
            double x = num_d(a), y = num_d(b);
            if (isnan(x) || isnan(y)) return 2; /* unordered: every comparison false */
            return x < y ? -1 : x > y;
        }
        int64_t x = num_i(a), y = num_i(b);
        return x < y ? -1 : x > y;
    }
    if (a.t == V_STR && b.t == V_STR) {
        size_t n = a.s.n < b.s.n ? a.s.n : b.s.n;
        int r = memcmp(a.s.p, b.s.p, n);
        if (r) return r < 0 ? -1 : 1;
        return a.s.n < b.s.n ? -1 : a.s.n > b.s.n;
    }
    if (a.t == V_LIST && b.t == V_LIST && (a.f & F_TUPLE) == (b.f & F_TUPLE)) {
        size_t n = a.l.n < b.l.n ? a.l.n : b.l.n;
        for (size_t i = 0; i < n; i++) {
            struct val x = L_items(a)[i], y = L_items(b)[i];
            if (py_eq(c, x, y, depth + 1)) continue;
            return py_cmp(c, x, y, opname, depth + 1);
        }
        return a.l.n < b.l.n ? -1 : a.l.n > b.l.n;
    }
    rfail(c, "'%s' not supported between instances of '%s' and '%s'", opname, type_name(a), type_name(b));
}

/* ---------------------------------------------------------------------------------------------- */
/* Iteration: any iterable as a list of items (a generator is used up). */

static struct val iter_list(struct rctx *c, struct val v)
{
    switch (v.t) {
    case V_UNDEF:
        if (v.f & F_UNSAFE) undef_fail(c, v);
        return list_new(c, 1, false);
    case V_LIST: v.f &= (uint8_t)~(F_VIEW | F_RANGE); return v;
    case V_ITER:
        if (v.it->error) raise_raw(&c->err, v.it->error);
        if (v.it->used) return list_new(c, 1, false);
        v.it->used = true;
        return v.it->list;
    case V_DICT: {
        struct val l = list_new(c, v.d->n, false);
        for (size_t i = 0; i < v.d->n; i++) list_push(c, &l, v.d->k[i]);
        return l;
    }
    case V_STR: {
        struct val l = list_new(c, v.s.n, false);
        charge(c, v.s.n / 16);
        for (size_t i = 0; i < v.s.n;) {
            uint32_t cp;
            int k = u8_dec((const unsigned char *)v.s.p + i, v.s.n - i, &cp);
            struct val ch = vstr(v.s.p + i, (size_t)k);
            ch.f = v.f & F_SAFE;
            list_push(c, &l, ch);
            i += (size_t)k;
        }
        return l;
    }
    default: rfail(c, "'%s' object is not iterable", type_name(v));
    }
}

/* len(v) */
static int64_t py_len(struct rctx *c, struct val v)
{
    switch (v.t) {
    case V_UNDEF: return 0;
    case V_STR: return (int64_t)u8_len(v.s.p, v.s.n);
    case V_LIST: return (int64_t)v.l.n;
    case V_DICT: return (int64_t)v.d->n;
    default: rfail(c, "object of type '%s' has no len()", type_name(v));
    }
}

/* x in container */
static bool py_in(struct rctx *c, struct val x, struct val cont)
{
    if (cont.t == V_STR) {
        if (x.t != V_STR) rfail(c, "'in <string>' requires string as left operand, not %s", type_name(x));
        if (x.s.n == 0) return true;
        charge(c, cont.s.n / 64);
        return memmem(cont.s.p, cont.s.n, x.s.p, x.s.n) != NULL;
    }
    if (cont.t == V_DICT) {
        size_t i;
        return dict_find(c, cont.d, x, &i);
    }
    if (cont.t == V_LIST || cont.t == V_ITER || cont.t == V_UNDEF) {
        struct val l = iter_list(c, cont);
        charge(c, l.l.n / 8);
        for (size_t i = 0; i < l.l.n; i++)
            if (py_eq(c, L_items(l)[i], x, 0)) return true;
        return false;
    }
    rfail(c, "argument of type '%s' is not iterable", type_name(cont));
}

/* ---------------------------------------------------------------------------------------------- */
/* Attribute and item access (jinja2's sandboxed getattr / getitem) */

static struct val vhint(struct rctx *c, bool unsafe, const char *fmt, ...) LOOM_PRINTF(3, 4);
static struct val vhint(struct rctx *c, bool unsafe, const char *fmt, ...)
{
    char t[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t, sizeof t, fmt, ap);
    va_end(ap);
    struct val v = vundef(str_copy(c, t, strlen(t)).s.p);
    if (unsafe) v.f |= F_UNSAFE;
    return v;
}

static const char *obj_desc(struct val v) /* jinja2's object_type_repr */
{
    switch (v.t) {
    case V_NONE: return "None";
    case V_STR: return "str object";
    case V_LIST: return (v.f & F_TUPLE) ? "tuple object" : "list object";
    case V_DICT: return "dict object";
    case V_NS: return "jinja2.utils.Namespace object";
    case V_INT: return "int object";
    case V_FLOAT: return "float object";
    case V_BOOL: return "bool object";
    default: return "object";
    }
}

static const char *const str_methods[] = {
    "capitalize", "casefold", "center", "count", "encode", "endswith", "expandtabs", "find", "format",
    "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit", "isidentifier", "islower",
    "isnumeric", "isprintable", "isspace", "istitle", "isupper", "join", "ljust", "lower", "lstrip", "maketrans",
    "partition", "removeprefix", "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit",
    "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "translate", "upper", "zfill", NULL,
};
static const char *const list_methods[] = {"copy", "count", "index", "pop", "clear", NULL};
static const char *const list_unsafe[] = {"append", "reverse", "insert", "sort", "extend", "remove", NULL};
static const char *const dict_methods[] = {"copy", "fromkeys", "get", "items", "keys", "values", NULL};
static const char *const dict_unsafe[] = {"clear", "pop", "popitem", "setdefault", "update", NULL};

static bool in_names(const char *const *names, const char *name)
{
    for (int i = 0; names[i]; i++)
        if (!strcmp(names[i], name)) return true;
    return false;
}

static struct val vmethod(struct rctx *c, struct val self, const char *name)
{
    struct method *m = ar_alloc(&c->ar, sizeof(*m));
    m->self = self;
    m->name = name;
    struct val v = {.t = V_METHOD};
    v.me = m;
    return v;
}

static struct val loop_attr(struct rctx *c, struct loopctx *lp, const char *name);

/* The attribute part of obj.name: a method, a loop or namespace attribute; found=false if none. */
static struct val attr_only(struct rctx *c, struct val o, const char *name, bool *found)
{
    *found = true;
    if (name[0] == '_')
        return vhint(c, true, "access to attribute '%s' of '%s' object is unsafe.", name, type_name(o));
    switch (o.t) {
    case V_STR:
        if (in_names(str_methods, name)) return vmethod(c, o, name);
        break;
    case V_LIST:
        if (o.f & F_VIEW) break;
        if ((o.f & F_RANGE) && strcmp(name, "index") && strcmp(name, "count")) break;
        if (in_names(list_methods, name)) return vmethod(c, o, name);
        if (in_names(list_unsafe, name))
            return vhint(c, true, "access to attribute '%s' of '%s' object is unsafe.", name, type_name(o));
        break;
    case V_DICT:
        if (in_names(dict_methods, name)) return vmethod(c, o, name);
        if (in_names(dict_unsafe, name))
            return vhint(c, true, "access to attribute '%s' of 'dict' object is unsafe.", name);
        break;
    case V_NS: {
        struct val v;
        if (dict_get_str(o.d, name, &v)) return v;
        break;
    }
    case V_LOOP: return loop_attr(c, o.lp, name);
    case V_ITER:
        if (!strcmp(name, "send") || !strcmp(name, "close") || !strcmp(name, "throw"))
            return vhint(c, false, "generator methods are not supported");
        break;
    default: break;
    }
    *found = false;
    return vundef(NULL);
}

static struct val getattr_v(struct rctx *c, struct val o, const char *name)
{
    if (o.t == V_UNDEF) undef_fail(c, o);
    bool found;
    struct val v = attr_only(c, o, name, &found);
    if (found) return v;
    if (o.t == V_DICT && dict_get_str(o.d, name, &v)) return v;
    return vhint(c, false, "'%s' has no attribute '%s'", obj_desc(o), name);
}

static bool slice_arg(struct val v, bool *has, int64_t *out)
{
    if (v.t == V_NONE) {
        *has = false;
        return true;
    }
    if (v.t == V_INT || v.t == V_BOOL) {
        *has = true;
        *out = num_i(v);
        return true;
    }
    return false;
}

/* slice.indices(len): first index, step and number of items */
static bool slice_indices(struct rctx *c, int64_t len, struct val vs, struct val ve, struct val vt, int64_t *start,
                          int64_t *step, int64_t *count)
{
    bool hs, he, ht;
    int64_t s = 0, e = 0, t = 1;
    if (!slice_arg(vs, &hs, &s) || !slice_arg(ve, &he, &e) || !slice_arg(vt, &ht, &t)) return false;
    if (!ht) t = 1;
    if (t == 0) rfail(c, "slice step cannot be zero");
    if (t == INT64_MIN) t = -INT64_MAX;
    int64_t lower = t > 0 ? 0 : -1, upper = t > 0 ? len : len - 1;
    if (!hs) {
        s = t < 0 ? upper : lower;
    } else {
        if (s < 0) s = s < -len ? lower : s + len;
        if (s < lower) s = lower;
        if (s > upper) s = upper;
    }
    if (!he) {
        e = t < 0 ? lower : upper;
    } else {
        if (e < 0) e = e < -len ? lower : e + len;
        if (e < lower) e = lower;
        if (e > upper) e = upper;
    }
    int64_t n = 0;
    if (t > 0 && s < e) n = (e - s - 1) / t + 1;
    if (t < 0 && e < s) n = (s - e - 1) / (-t) + 1;
    *start = s;
    *step = t;
    *count = n;
    return true;
}

static struct val do_slice(struct rctx *c, struct val o, struct val vs, struct val ve, struct val vt)
{
    if (o.t == V_UNDEF) undef_fail(c, o);
    int64_t s, t, n;
    if (o.t == V_LIST && (o.f & F_VIEW)) return vundef(NULL); /* views take no index */
    if (o.t == V_LIST) {
        if (!slice_indices(c, (int64_t)o.l.n, vs, ve, vt, &s, &t, &n)) return vundef(NULL);
        if (t == 1) {
            struct val *it = L_items(o);
            struct val out = list_new(c, (size_t)n, o.f & F_TUPLE);
            memcpy(L_items(out), it + s, (size_t)n * sizeof(struct val));
            out.l.buf->used = (size_t)n;
            out.l.n = (size_t)n;
            charge(c, (uint64_t)n / 8);
            return out;
        }
        struct val out = list_new(c, (size_t)n, o.f & F_TUPLE);
        for (int64_t k = 0; k < n; k++) list_push(c, &out, L_items(o)[s + k * t]);
        charge(c, (uint64_t)n / 8);
        return out;
    }
    if (o.t == V_STR) {
        bool ascii = is_ascii(o.s.p, o.s.n);
        int64_t len = ascii ? (int64_t)o.s.n : (int64_t)u8_len(o.s.p, o.s.n);
        if (!slice_indices(c, len, vs, ve, vt, &s, &t, &n)) return vundef(NULL);
        charge(c, (uint64_t)o.s.n / 64);
        struct val r;
        if (t == 1) {
            size_t a = ascii ? (size_t)s : u8_off(o.s.p, o.s.n, (size_t)s);
            size_t b = ascii ? (size_t)(s + n) : a + u8_off(o.s.p + a, o.s.n - a, (size_t)n);
            r = vstr(o.s.p + a, b - a);
        } else {
            size_t *offs = NULL;
            if (!ascii) {
                offs = ar_alloc(&c->ar, ((size_t)len + 1) * sizeof(size_t));
                size_t k = 0;
                for (size_t i = 0; i < o.s.n; i++)
                    if (((unsigned char)o.s.p[i] & 0xC0) != 0x80) offs[k++] = i;
                offs[k] = o.s.n;
            }
            struct sbuf b = {0};
            for (int64_t k = 0; k < n; k++) {
                int64_t idx = s + k * t;
                if (ascii)
                    sb_putc(c, &b, o.s.p[idx]);
                else
                    sb_put(c, &b, o.s.p + offs[idx], offs[idx + 1] - offs[idx]);
            }
            r = sb_val(&b);
        }
        r.f = o.f & F_SAFE;
        return r;
    }
    return vundef(NULL); /* TypeError inside getitem: jinja2 returns undefined */
}

static struct val getitem_v(struct rctx *c, struct val o, struct val key)
{
    if (o.t == V_UNDEF) undef_fail(c, o);
    if (o.t == V_DICT) {
        size_t i;
        if (dict_find(c, o.d, key, &i)) return o.d->v[i];
    } else if ((o.t == V_LIST || o.t == V_STR) && (key.t == V_INT || key.t == V_BOOL)) {
        int64_t k = num_i(key);
        if (o.t == V_LIST && (o.f & F_VIEW)) return vundef(NULL);
        if (o.t == V_LIST) {
            int64_t n = (int64_t)o.l.n;
            if (k < 0) k += n;
            if (k >= 0 && k < n) return L_items(o)[k];
        } else {
            bool ascii = is_ascii(o.s.p, o.s.n);
            int64_t n = ascii ? (int64_t)o.s.n : (int64_t)u8_len(o.s.p, o.s.n);
            if (k < 0) k += n;
            if (k >= 0 && k < n) {
                size_t a = ascii ? (size_t)k : u8_off(o.s.p, o.s.n, (size_t)k);
                uint32_t cp;
                int l = u8_dec((const unsigned char *)o.s.p + a, o.s.n - a, &cp);
                struct val r = vstr(o.s.p + a, (size_t)l);
                r.f = o.f & F_SAFE;
                return r;
            }
        }
        return vhint(c, false, "'%s' has no element %lld", obj_desc(o), (long long)num_i(key));
    }
    if (key.t == V_STR) {
        const char *name = cstr(c, key);
        bool found;
        struct val v = attr_only(c, o, name, &found);
        if (found) return v;
        return vhint(c, false, "'%s' has no attribute '%s'", obj_desc(o), name);
    }
    if (key.t == V_INT) return vhint(c, false, "'%s' has no element %lld", obj_desc(o), (long long)key.i);
    return vundef("undefined value");
}

/* ---------------------------------------------------------------------------------------------- */
/* Arithmetic */

static struct val html_escape(struct rctx *c, struct val s)
{
    if (s.t == V_STR && (s.f & F_SAFE)) return s;
    s = to_str(c, s);
    struct sbuf b = {0};
    size_t last = 0;
    for (size_t i = 0; i < s.s.n; i++) {
        const char *rep = NULL;
        switch (s.s.p[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '\'': rep = "&#39;"; break;
        case '"': rep = "&#34;"; break;
        }
        if (rep) {
            sb_put(c, &b, s.s.p + last, i - last);
            sb_puts(c, &b, rep);
            last = i + 1;
        }
    }
    if (!last) {
        s.f |= F_SAFE;
        return s;
    }
    sb_put(c, &b, s.s.p + last, s.s.n - last);
    struct val r = sb_val(&b);
    r.f = F_SAFE;
    return r;
}

static struct val str_cat(struct rctx *c, struct val a, struct val b)
{
    /* markupsafe: Markup + str escapes the str, and so does str + Markup (Markup.__radd__) */
    uint8_t f = 0;
    if ((a.f & F_SAFE) || (b.f & F_SAFE)) {
        a = html_escape(c, a);
        b = html_escape(c, b);
        f = F_SAFE;
    }
    if (a.s.n + b.s.n > c->ar.limit) rfail(c, "string too long");
    charge(c, (a.s.n + b.s.n) / 256);
    char *p = ar_alloc(&c->ar, a.s.n + b.s.n + 1);
    if (a.s.n) memcpy(p, a.s.p, a.s.n);
    if (b.s.n) memcpy(p + a.s.n, b.s.p, b.s.n);
    p[a.s.n + b.s.n] = 0;
    struct val r = vstr(p, a.s.n + b.s.n);
    r.f = f;
    return r;
}

static struct val py_percent(struct rctx *c, struct val fmt, struct val args);

static LOOM_NORETURN void bad_operands(struct rctx *c, int op, struct val a, struct val b)
{
    rfail(c, "unsupported operand type(s) for %s: '%s' and '%s'", op_text[op], type_name(a), type_name(b));
}

static struct val repeat(struct rctx *c, struct val seq, int64_t n)
{
    if (n < 0) n = 0;
    if (seq.t == V_STR) {
        if (n && seq.s.n > c->ar.limit / (uint64_t)n) rfail(c, "string too long");
        size_t total = seq.s.n * (size_t)n;
        charge(c, total / 256);
        char *p = ar_alloc(&c->ar, total + 1);
        for (int64_t i = 0; i < n; i++) memcpy(p + (size_t)i * seq.s.n, seq.s.p, seq.s.n);
        p[total] = 0;
        struct val r = vstr(p, total);
        r.f = seq.f & F_SAFE;
        return r;
    }
    if (n && seq.l.n > (c->ar.limit / sizeof(struct val)) / (uint64_t)n) rfail(c, "list too long");
    struct val r = list_new(c, seq.l.n * (size_t)n, seq.f & F_TUPLE);
    charge(c, seq.l.n * (uint64_t)n / 8);
    for (int64_t i = 0; i < n; i++)
        for (size_t k = 0; k < seq.l.n; k++) list_push(c, &r, L_items(seq)[k]);
    return r;
}

static struct val binop(struct rctx *c, int op, struct val a, struct val b)
{
    if (a.t == V_UNDEF) undef_fail(c, a);
    if (b.t == V_UNDEF) undef_fail(c, b);
    if (is_num(a) && is_num(b)) {
        if (a.t == V_FLOAT || b.t == V_FLOAT) {
            double x = num_d(a), y = num_d(b);
            switch (op) {
            case OP_ADD: return vfloat(x + y);
            case OP_SUB: return vfloat(x - y);
            case OP_MUL: return vfloat(x * y);
            case OP_DIV:
                if (y == 0) rfail(c, "float division by zero");
                return vfloat(x / y);
            case OP_FLOORDIV:
            case OP_MOD: {
                if (y == 0) rfail(c, op == OP_MOD ? "float modulo" : "float floor division by zero");
                double mod = fmod(x, y), div;
                if (mod != 0) {
                    if ((y < 0) != (mod < 0)) mod += y;
                } else {
                    mod = copysign(0.0, y);
                }
                if (op == OP_MOD) return vfloat(mod);
                div = (x - mod) / y;
                double fd;
                if (div != 0) {
                    fd = floor(div);
                    if (div - fd > 0.5) fd += 1.0;
                } else {
                    fd = copysign(0.0, x / y);
                }
                return vfloat(fd);
            }
            case OP_POW: {
                if (x == 0 && y < 0) rfail(c, "0.0 cannot be raised to a negative power");
                if (x < 0 && y != floor(y)) rfail(c, "a negative number raised to a fractional power is complex");
                return vfloat(pow(x, y));
            }
            }
        } else {
            int64_t x = num_i(a), y = num_i(b), r;
            switch (op) {
            case OP_ADD:
                if (__builtin_add_overflow(x, y, &r)) rfail(c, "integer overflow");
                return vint(r);
            case OP_SUB:
                if (__builtin_sub_overflow(x, y, &r)) rfail(c, "integer overflow");
                return vint(r);
            case OP_MUL:
                if (__builtin_mul_overflow(x, y, &r)) rfail(c, "integer overflow");
                return vint(r);
            case OP_DIV:
                if (y == 0) rfail(c, "division by zero");
                return vfloat((double)x / (double)y);
            case OP_FLOORDIV:
            case OP_MOD: {
                if (y == 0) rfail(c, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) {
                    if (op == OP_MOD) return vint(0);
                    rfail(c, "integer overflow");
                }
                int64_t q = x / y, m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) {
                    m += y;
                    q -= 1;
                }
                return vint(op == OP_MOD ? m : q);
            }
            case OP_POW: {
                if (y < 0) {
                    if (x == 0) rfail(c, "0.0 cannot be raised to a negative power");
                    return vfloat(pow((double)x, (double)y));
                }
                int64_t res = 1, base = x;
                while (y) {
                    if (y & 1)
                        if (__builtin_mul_overflow(res, base, &res)) rfail(c, "integer overflow");
                    y >>= 1;
                    if (y && __builtin_mul_overflow(base, base, &base)) rfail(c, "integer overflow");
                }
                return vint(res);
            }
            }
        }
    }
    switch (op) {
    case OP_ADD:
        if (a.t == V_STR && b.t == V_STR) return str_cat(c, a, b);
        if (a.t == V_LIST && b.t == V_LIST && (a.f & F_TUPLE) == (b.f & F_TUPLE) && !((a.f | b.f) & (F_VIEW | F_RANGE))) {
            struct val r = a;
            charge(c, b.l.n / 8);
            if (!a.l.n) { /* [] + b: a copy of b's view would do, but keep the type of a */
                r = list_new(c, b.l.n, a.f & F_TUPLE);
            }
            struct val *items = L_items(b);
            size_t nb = b.l.n;
            for (size_t i = 0; i < nb; i++) list_push(c, &r, items[i]);
            return r;
        }
        break;
    case OP_MUL:
        if ((a.t == V_STR || (a.t == V_LIST && !(a.f & (F_VIEW | F_RANGE)))) && (b.t == V_INT || b.t == V_BOOL))
            return repeat(c, a, num_i(b));
        if ((b.t == V_STR || (b.t == V_LIST && !(b.f & (F_VIEW | F_RANGE)))) && (a.t == V_INT || a.t == V_BOOL))
            return repeat(c, b, num_i(a));
        break;
    case OP_MOD:
        if (a.t == V_STR) return py_percent(c, a, b);
        break;
    }
    bad_operands(c, op, a, b);
}

/* ---------------------------------------------------------------------------------------------- */
/* printf-style formatting: str % args */

static void fmt_pad(struct rctx *c, struct sbuf *b, const char *s, size_t n, int width, bool left, char fill)
{
    size_t cps = u8_len(s, n);
    size_t pad = width > 0 && (size_t)width > cps ? (size_t)width - cps : 0;
    if (left) sb_put(c, b, s, n);
    for (size_t i = 0; i < pad; i++) sb_putc(c, b, fill);
    if (!left) sb_put(c, b, s, n);
}

static struct val py_percent(struct rctx *c, struct val fmt, struct val args)
{
    struct sbuf b = {0};
    size_t ai = 0;
    bool is_tuple = args.t == V_LIST && (args.f & F_TUPLE);
    bool is_map = args.t == V_DICT;
    size_t nargs = is_tuple ? args.l.n : 1;
    const char *s = fmt.s.p;
    size_t n = fmt.s.n;
    bool used_map = false;
    for (size_t i = 0; i < n;) {
        if (s[i] != '%') {
            size_t j = i;
            while (j < n && s[j] != '%') j++;
            sb_put(c, &b, s + i, j - i);
            i = j;
            continue;
        }
        i++;
        if (i >= n) rfail(c, "incomplete format");
        struct val arg;
        bool have_arg = false;
        if (s[i] == '(') {
            if (!is_map) rfail(c, "format requires a mapping");
            size_t j = i + 1;
            int depth = 1;
            while (j < n && depth) {
                if (s[j] == '(') depth++;
                if (s[j] == ')') depth--;
                j++;
            }
            if (depth) rfail(c, "incomplete format key");
            if (!dict_find(c, args.d, vstr(s + i + 1, j - i - 2), &ai)) rfail(c, "format key not found");
            arg = args.d->v[ai];
            have_arg = true;
            used_map = true;
            i = j;
        }
        bool left = false, plus = false, space = false, alt = false, zero = false;
        for (; i < n && strchr("-+ #0", s[i]); i++) {
            if (s[i] == '-') left = true;
            if (s[i] == '+') plus = true;
            if (s[i] == ' ') space = true;
            if (s[i] == '#') alt = true;
            if (s[i] == '0') zero = true;
        }
        int width = -1, prec = -1;
        if (i < n && s[i] == '*') rfail(c, "'*' in format strings is not supported");
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            width = (width < 0 ? 0 : width) * 10 + (s[i++] - '0');
            if (width > 100000) rfail(c, "format width too large");
        }
        if (i < n && s[i] == '.') {
            i++;
            prec = 0;
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                prec = prec * 10 + (s[i++] - '0');
                if (prec > 1000) rfail(c, "format precision too large");
            }
        }
        while (i < n && (s[i] == 'h' || s[i] == 'l' || s[i] == 'L')) i++;
        if (i >= n) rfail(c, "incomplete format");
        char conv = s[i++];
        if (conv == '%') {
            sb_putc(c, &b, '%');
            continue;
        }
        if (!have_arg) {
            if (is_map) {
                arg = args;
            } else {
                if (ai >= nargs) rfail(c, "not enough arguments for format string");
                arg = is_tuple ? L_items(args)[ai] : args;
                ai++;
            }
        }
        char spec[32], out[512];
        int k = 0;
        switch (conv) {
        case 's':
        case 'r':
        case 'a': {
            struct sbuf t = {0};
            if (conv == 's')
                put_str(c, &t, arg);
            else
                put_repr(c, &t, arg);
            size_t tn = t.n;
            if (prec >= 0) tn = u8_off(t.p, t.n, (size_t)prec);
            fmt_pad(c, &b, t.p, tn, width, left, ' ');
            break;
        }
        case 'd':
        case 'i':
        case 'u':
        case 'x':
        case 'X':
        case 'o':
        case 'c': {
            if (!is_num(arg)) rfail(c, "%%%c format: a number is required, not %s", conv, type_name(arg));
            if (conv == 'c') {
                int64_t cp = num_i(arg);
                if (cp < 0 || cp > 0x10FFFF) rfail(c, "%%c arg not in range(0x110000)");
                char t[4];
                fmt_pad(c, &b, t, (size_t)loom_utf8_encode((uint32_t)cp, t), width, left, ' ');
                break;
            }
            int64_t v = arg.t == V_FLOAT ? (int64_t)arg.fl : num_i(arg);
            if (arg.t == V_FLOAT && (conv == 'x' || conv == 'X' || conv == 'o'))
                rfail(c, "%%%c format: an integer is required, not float", conv);
            spec[k++] = '%';
            if (left) spec[k++] = '-';
            if (plus) spec[k++] = '+';
            if (space) spec[k++] = ' ';
            if (alt) spec[k++] = '#';
            if (zero && !left) spec[k++] = '0';
            k += snprintf(spec + k, sizeof spec - (size_t)k, "%s", width >= 0 ? "*" : "");
            if (prec >= 0) k += snprintf(spec + k, sizeof spec - (size_t)k, ".*");
            spec[k++] = 'l';
            spec[k++] = 'l';
            spec[k++] = conv == 'i' || conv == 'u' ? 'd' : conv;
            spec[k] = 0;
            int m;
            if (width >= 0 && prec >= 0)
                m = snprintf(out, sizeof out, spec, width > 400 ? 400 : width, prec > 400 ? 400 : prec, (long long)v);
            else if (width >= 0)
                m = snprintf(out, sizeof out, spec, width > 400 ? 400 : width, (long long)v);
            else if (prec >= 0)
                m = snprintf(out, sizeof out, spec, prec > 400 ? 400 : prec, (long long)v);
            else
                m = snprintf(out, sizeof out, spec, (long long)v);
            if (alt && conv == 'o') { /* Python writes 0o */
                char *z = strchr(out, '0');
                if (z && m < (int)sizeof out - 1) {
                    memmove(z + 1, z, strlen(z) + 1);
                    z[1] = 'o';
                    m++;
                }
            }
            sb_put(c, &b, out, (size_t)(m < (int)sizeof out ? m : (int)sizeof out - 1));
            break;
        }
        case 'f':
        case 'F':
        case 'e':
        case 'E':
        case 'g':
        case 'G': {
            if (!is_num(arg)) rfail(c, "must be real number, not %s", type_name(arg));
            double v = num_d(arg);
            spec[k++] = '%';
            if (left) spec[k++] = '-';
            if (plus) spec[k++] = '+';
            if (space) spec[k++] = ' ';
            if (alt) spec[k++] = '#';
            if (zero && !left) spec[k++] = '0';
            spec[k++] = '*';
            spec[k++] = '.';
            spec[k++] = '*';
            spec[k++] = conv;
            spec[k] = 0;
            int m = snprintf(out, sizeof out, spec, width < 0 ? 0 : (width > 400 ? 400 : width),
                             prec < 0 ? 6 : (prec > 300 ? 300 : prec), v);
            sb_put(c, &b, out, (size_t)(m < (int)sizeof out ? m : (int)sizeof out - 1));
            break;
        }
        default: rfail(c, "unsupported format character '%c'", conv);
        }
    }
    if (!is_map && !used_map && is_tuple && ai < nargs) rfail(c, "not all arguments converted during string formatting");
    if (!is_map && !is_tuple && ai == 0 && !(args.t == V_LIST || args.t == V_DICT))
        rfail(c, "not all arguments converted during string formatting");
    struct val r = sb_val(&b);
    return r;
}

/* ---------------------------------------------------------------------------------------------- */
/* The evaluator */

struct cargs {
    struct val *pos;
    int npos;
    const char **kwn;
    struct val *kwv;
    int nkw;
};

static struct val eval(struct rctx *c, struct node *e, struct scope *s);
static int exec_body(struct rctx *c, struct nlist *body, struct scope *s, struct sbuf *out);
static struct val call_value(struct rctx *c, struct val f, struct cargs *a);
static struct val apply_filter(struct rctx *c, int id, const char *name, struct val v, struct cargs *a);
static bool apply_test(struct rctx *c, int id, const char *name, struct val v, struct cargs *a);
static struct val call_global(struct rctx *c, int fn, struct cargs *a);
static int global_id(const char *name);

enum { X_NORMAL = 0, X_BREAK, X_CONTINUE };

static void enter(struct rctx *c, int line)
{
    if (++c->depth > c->max_depth) {
        c->err.fatal = true;
        rfail(c, "template nested too deeply at run time (more than %d levels, recursion?)", c->max_depth);
    }
    if (++c->steps > c->max_steps) {
        c->err.fatal = true;
        rfail(c, "template takes too long (more than %llu steps)", (unsigned long long)c->max_steps);
    }
    c->line = line;
}

static void eval_args(struct rctx *c, struct node *n, struct scope *s, struct cargs *a)
{
    int np = n->args.n, nk = n->kw.n;
    struct val extra = {0}, extrak = {0};
    if (n->dyn_args) {
        extra = eval(c, n->dyn_args, s);
        extra = iter_list(c, extra);
        np += (int)extra.l.n;
    }
    if (n->dyn_kwargs) {
        extrak = eval(c, n->dyn_kwargs, s);
        if (extrak.t != V_DICT) rfail(c, "argument after ** must be a mapping, not %s", type_name(extrak));
        nk += (int)extrak.d->n;
    }
    a->pos = ar_alloc(&c->ar, (size_t)(np + 1) * sizeof(struct val));
    a->kwv = ar_alloc(&c->ar, (size_t)(nk + 1) * sizeof(struct val));
    a->kwn = ar_alloc(&c->ar, (size_t)(nk + 1) * sizeof(char *));
    a->npos = 0;
    a->nkw = 0;
    for (int i = 0; i < n->args.n; i++) a->pos[a->npos++] = eval(c, n->args.v[i], s);
    if (n->dyn_args)
        for (size_t i = 0; i < extra.l.n; i++) a->pos[a->npos++] = L_items(extra)[i];
    for (int i = 0; i < n->kw.n; i++) {
        a->kwn[a->nkw] = n->kwn[i];
        a->kwv[a->nkw++] = eval(c, n->kw.v[i], s);
    }
    if (n->dyn_kwargs)
        for (size_t i = 0; i < extrak.d->n; i++) {
            if (extrak.d->k[i].t != V_STR) rfail(c, "keywords must be strings");
            a->kwn[a->nkw] = cstr(c, extrak.d->k[i]);
            a->kwv[a->nkw++] = extrak.d->v[i];
        }
}

static struct val eval_compare(struct rctx *c, struct node *e, struct scope *s)
{
    struct val l = eval(c, e->a, s);
    for (int i = 0; i < e->args.n; i++) {
        struct val r = eval(c, e->args.v[i], s);
        int op = e->ops[i];
        bool ok;
        switch (op) {
        case OP_EQ: ok = py_eq(c, l, r, 0); break;
        case OP_NE: ok = !py_eq(c, l, r, 0); break;
        case OP_IN: ok = py_in(c, l, r); break;
        case OP_NOTIN: ok = !py_in(c, l, r); break;
        default: {
            int k = py_cmp(c, l, r, op_text[op], 0);
            if (k == 2)
                ok = false;
            else
                ok = op == OP_LT ? k < 0 : op == OP_LTEQ ? k <= 0 : op == OP_GT ? k > 0 : k >= 0;
        }
        }
        if (!ok) return vbool(false);
        l = r;
    }
    return vbool(true);
}

static struct val eval(struct rctx *c, struct node *e, struct scope *s)
{
    enter(c, e->line);
    struct val r;
    switch (e->kind) {
    case E_CONST: r = e->v; break;
    case E_NAME:
        if (!scope_get(s, e->name, &r)) {
            int g = global_id(e->name);
            if (g >= 0) {
                r = (struct val){.t = V_FUNC};
                r.fn = g;
            } else {
                r = vhint(c, false, "'%s' is undefined", e->name);
            }
        }
        break;
    case E_GETATTR: r = getattr_v(c, eval(c, e->a, s), e->name); break;
    case E_GETITEM: {
        struct val o = eval(c, e->a, s);
        if (e->b->kind == E_SLICE) {
            struct node *sl = e->b;
            struct val a = sl->a ? eval(c, sl->a, s) : vnone();
            struct val b = sl->b ? eval(c, sl->b, s) : vnone();
            struct val t = sl->c ? eval(c, sl->c, s) : vnone();
            c->line = e->line;
            r = do_slice(c, o, a, b, t);
        } else {
            struct val k = eval(c, e->b, s);
            c->line = e->line;
            r = getitem_v(c, o, k);
        }
        break;
    }
    case E_SLICE: rfail(c, "a slice outside of []");
    case E_CALL: {
        struct val f = eval(c, e->a, s);
        struct cargs a;
        eval_args(c, e, s, &a);
        c->line = e->line;
        r = call_value(c, f, &a);
        break;
    }
    case E_FILTER: {
        struct val v = eval(c, e->a, s);
        struct cargs a;
        eval_args(c, e, s, &a);
        c->line = e->line;
        r = apply_filter(c, e->op, e->name, v, &a);
        break;
    }
    case E_TEST: {
        struct val v = eval(c, e->a, s);
        struct cargs a;
        eval_args(c, e, s, &a);
        c->line = e->line;
        r = vbool(apply_test(c, e->op, e->name, v, &a));
        break;
    }
    case E_NOT: r = vbool(!truthy(eval(c, e->a, s))); break;
    case E_NEG:
    case E_POS: {
        struct val v = eval(c, e->a, s);
        c->line = e->line;
        if (v.t == V_UNDEF) undef_fail(c, v);
        if (!is_num(v)) rfail(c, "bad operand type for unary %s: '%s'", e->kind == E_NEG ? "-" : "+", type_name(v));
        if (e->kind == E_POS)
            r = v.t == V_BOOL ? vint(v.b) : v;
        else if (v.t == V_FLOAT)
            r = vfloat(-v.fl);
        else if (num_i(v) == INT64_MIN)
            rfail(c, "integer overflow");
        else
            r = vint(-num_i(v));
        break;
    }
    case E_BIN: {
        struct val a = eval(c, e->a, s);
        struct val b = eval(c, e->b, s);
        c->line = e->line;
        r = binop(c, e->op, a, b);
        break;
    }
    case E_AND:
        r = eval(c, e->a, s);
        if (truthy(r)) r = eval(c, e->b, s);
        break;
    case E_OR:
        r = eval(c, e->a, s);
        if (!truthy(r)) r = eval(c, e->b, s);
        break;
    case E_CONCAT: {
        struct sbuf b = {0};
        for (int i = 0; i < e->args.n; i++) put_str(c, &b, eval(c, e->args.v[i], s));
        r = sb_val(&b);
        break;
    }
    case E_COMPARE: r = eval_compare(c, e, s); break;
    case E_COND:
        if (truthy(eval(c, e->a, s)))
            r = eval(c, e->b, s);
        else if (e->c)
            r = eval(c, e->c, s);
        else
            r = vhint(c, false, "the inline if-expression on line %d evaluated to false and no else section was defined.",
                      e->line);
        break;
    case E_LIST:
    case E_TUPLE:
        r = list_new(c, (size_t)e->args.n, e->kind == E_TUPLE);
        for (int i = 0; i < e->args.n; i++) list_push(c, &r, eval(c, e->args.v[i], s));
        break;
    case E_DICT: {
        struct dict *d = dict_new(c, (size_t)e->args.n);
        for (int i = 0; i < e->args.n; i++) {
            struct val k = eval(c, e->args.v[i], s);
            struct val v = eval(c, e->kw.v[i], s);
            if (k.t == V_LIST && !(k.f & F_TUPLE)) rfail(c, "unhashable type: 'list'");
            if (k.t == V_DICT || k.t == V_NS) rfail(c, "unhashable type: '%s'", type_name(k));
            if (k.t == V_UNDEF) undef_fail(c, k);
            dict_set(c, d, k, v);
        }
        r = vdict(d);
        break;
    }
    default: rfail(c, "cannot evaluate this node");
    }
    c->depth--;
    return r;
}

/* ---------------------------------------------------------------------------------------------- */
/* Statements */

static void assign(struct rctx *c, struct node *t, struct val v, struct scope *s)
{
    if (t->kind == E_NAME) {
        scope_set(c, s, t->name, v);
    } else if (t->kind == E_NSREF) {
        struct val ns;
        if (!scope_get(s, t->name, &ns) || ns.t != V_NS) rfail(c, "cannot assign attribute on non-namespace object");
        dict_set(c, ns.d, vstr(t->name2, strlen(t->name2)), v);
    } else if (t->kind == E_TUPLE) {
        struct val l = iter_list(c, v);
        if (l.l.n < (size_t)t->args.n)
            rfail(c, "not enough values to unpack (expected %d, got %zu)", t->args.n, l.l.n);
        if (l.l.n > (size_t)t->args.n) rfail(c, "too many values to unpack (expected %d)", t->args.n);
        for (int i = 0; i < t->args.n; i++) assign(c, t->args.v[i], L_items(l)[i], s);
    } else {
        rfail(c, "cannot assign to this target");
    }
}

/* Renders body into a string. *code gets X_BREAK / X_CONTINUE when a loop control left the body
 * (jinja2 compiles set and filter blocks inline, so they reach the enclosing loop). */
static struct val capture(struct rctx *c, struct nlist *body, struct scope *s, int *code)
{
    struct sbuf b = {0};
    int r = exec_body(c, body, s, &b);
    if (code) *code = r;
    return sb_val(&b);
}

/* A filter chain as parsed for {% filter %} and {% set x | f %}: the innermost E_FILTER has a NULL input. */
static struct val apply_filter_chain(struct rctx *c, struct node *f, struct val v, struct scope *s)
{
    if (!f) return v;
    if (f->kind != E_FILTER) rfail(c, "bad filter chain");
    enter(c, f->line);
    v = apply_filter_chain(c, f->a, v, s);
    struct cargs a;
    eval_args(c, f, s, &a);
    c->line = f->line;
    v = apply_filter(c, f->op, f->name, v, &a);
    c->depth--;
    return v;
}

static struct val make_macro(struct rctx *c, struct node *def, struct scope *closure, const char *name)
{
    struct macro *m = ar_alloc(&c->ar, sizeof(*m));
    for (struct scope *p = closure; p && !p->captured; p = p->parent) p->captured = true;
    m->def = def;
    m->closure = closure;
    m->name = name;
    struct val v = {.t = V_MACRO};
    v.m = m;
    return v;
}

static struct val call_macro(struct rctx *c, struct macro *m, struct cargs *a)
{
    struct node *d = m->def;
    struct scope *s = scope_new(c, m->closure);
    int np = d->nparams;
    bool *given = ar_zalloc(&c->ar, (size_t)np + 1);
    for (int i = 0; i < a->npos && i < np; i++) {
        scope_set(c, s, d->params[i], a->pos[i]);
        given[i] = true;
    }
    if (a->npos > np && !(d->flags & F_VARARGS))
        rfail(c, "macro '%s' takes not more than %d argument(s)", m->name, np);
    struct val varargs = list_new(c, 1, true);
    for (int i = np; i < a->npos; i++) list_push(c, &varargs, a->pos[i]);
    struct dict *kwargs = dict_new(c, 4);
    struct val caller = vhint(c, false, "No caller defined");
    for (int k = 0; k < a->nkw; k++) {
        int i;
        for (i = 0; i < np; i++)
            if (!strcmp(d->params[i], a->kwn[k])) break;
        if (i < np) {
            if (given[i]) rfail(c, "macro '%s' got multiple values for argument '%s'", m->name, a->kwn[k]);
            scope_set(c, s, d->params[i], a->kwv[k]);
            given[i] = true;
        } else if (!strcmp(a->kwn[k], "caller") && (d->flags & F_CALLER)) {
            caller = a->kwv[k];
        } else if (d->flags & F_KWARGS) {
            dict_set(c, kwargs, vstr(a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
        } else {
            rfail(c, "macro '%s' takes no keyword argument '%s'", m->name, a->kwn[k]);
        }
    }
    for (int i = 0; i < np; i++)
        if (!given[i]) {
            if (d->defaults[i])
                scope_set(c, s, d->params[i], eval(c, d->defaults[i], s));
            else
                scope_set(c, s, d->params[i], vhint(c, false, "parameter '%s' was not provided", d->params[i]));
        }
    if (d->flags & F_VARARGS) scope_set(c, s, "varargs", varargs);
    if (d->flags & F_KWARGS) scope_set(c, s, "kwargs", vdict(kwargs));
    if (d->flags & F_CALLER) scope_set(c, s, "caller", caller);
    return capture(c, &d->body, s, NULL);
}

static int exec_for(struct rctx *c, struct node *n, struct val iterable, struct scope *s, struct sbuf *out,
                    int depth0);

static struct val loop_attr(struct rctx *c, struct loopctx *lp, const char *name)
{
    size_t i = lp->i, n = lp->n;
    if (!strcmp(name, "index")) return vint((int64_t)i + 1);
    if (!strcmp(name, "index0")) return vint((int64_t)i);
    if (!strcmp(name, "revindex")) return vint((int64_t)(n - i));
    if (!strcmp(name, "revindex0")) return vint((int64_t)(n - i - 1));
    if (!strcmp(name, "first")) return vbool(i == 0);
    if (!strcmp(name, "last")) return vbool(i + 1 == n);
    if (!strcmp(name, "length")) return vint((int64_t)n);
    if (!strcmp(name, "depth")) return vint(lp->depth0 + 1);
    if (!strcmp(name, "depth0")) return vint(lp->depth0);
    if (!strcmp(name, "previtem"))
        return i > 0 ? L_items(lp->items)[i - 1] : vhint(c, false, "there is no previous item");
    if (!strcmp(name, "nextitem"))
        return i + 1 < n ? L_items(lp->items)[i + 1] : vhint(c, false, "there is no next item");
    if (!strcmp(name, "cycle") || !strcmp(name, "changed")) {
        struct val self = {.t = V_LOOP};
        self.lp = lp;
        return vmethod(c, self, !strcmp(name, "cycle") ? "cycle" : "changed");
    }
    return vhint(c, false, "'LoopContext object' has no attribute '%s'", name);
}

static int exec_for(struct rctx *c, struct node *n, struct val iterable, struct scope *s, struct sbuf *out,
                    int depth0)
{
    struct val items = iter_list(c, iterable);
    if (n->c) { /* for x in y if cond: filtered before the loop counts */
        struct val kept = list_new(c, items.l.n, false);
        for (size_t i = 0; i < items.l.n; i++) {
            struct scope *fs = scope_new(c, s);
            assign(c, n->a, L_items(items)[i], fs);
            if (truthy(eval(c, n->c, fs))) list_push(c, &kept, L_items(items)[i]);
        }
        items = kept;
    }
    struct loopctx *lp = ar_zalloc(&c->ar, sizeof(*lp));
    lp->items = items;
    lp->n = items.l.n;
    lp->depth0 = depth0;
    lp->node = n;
    lp->scope = s;
    lp->changed = vundef(NULL);
    struct val lv = {.t = V_LOOP};
    lv.lp = lp;
    struct scope *is = NULL;
    bool completed = false;
    for (size_t i = 0; i < lp->n; i++) {
        lp->i = i;
        charge(c, 1);
        if (!is || is->captured) { /* a fresh scope per iteration, as jinja2 compiles it */
            is = scope_new(c, s);
        } else {
            is->n = 0;
        }
        scope_set(c, is, "loop", lv);
        c->line = n->line;
        assign(c, n->a, L_items(items)[i], is);
        int r = exec_body(c, &n->body, is, out);
        if (r == X_BREAK) break;
        if (r == X_NORMAL) completed = true;
    }
    /* jinja2 clears its "no iteration" flag at the end of the body, so a break or continue before
     * any body ran to its end still leaves the else to run */
    if (!completed && n->els.n) exec_body(c, &n->els, scope_new(c, s), out);
    return X_NORMAL;
}

static int exec_node(struct rctx *c, struct node *n, struct scope *s, struct sbuf *out)
{
    int r = X_NORMAL;
    enter(c, n->line);
    switch (n->kind) {
    case N_DATA: sb_put(c, out, n->v.s.p, n->v.s.n); break;
    case N_OUTPUT: put_str(c, out, eval(c, n->a, s)); break;
    case N_PRINT:
        for (int i = 0; i < n->args.n; i++) put_str(c, out, eval(c, n->args.v[i], s));
        break;
    case N_IF:
        if (truthy(eval(c, n->a, s)))
            r = exec_body(c, &n->body, s, out);
        else
            r = exec_body(c, &n->els, s, out);
        break;
    case N_FOR: {
        struct val it = eval(c, n->b, s);
        c->line = n->line;
        r = exec_for(c, n, it, s, out, 0);
        break;
    }
    case N_SET: {
        struct val v = eval(c, n->b, s);
        c->line = n->line;
        assign(c, n->a, v, s);
        break;
    }
    case N_SETBLOCK: {
        struct val v = capture(c, &n->body, scope_new(c, s), &r);
        if (r != X_NORMAL) break;
        v = apply_filter_chain(c, n->c, v, s);
        c->line = n->line;
        assign(c, n->a, v, s);
        break;
    }
    case N_MACRO: scope_set(c, s, n->name, make_macro(c, n, s, n->name)); break;
    case N_CALLBLOCK: {
        struct node *call = n->a;
        struct val f = eval(c, call->a, s);
        struct cargs a;
        eval_args(c, call, s, &a);
        /* add caller= to the keyword arguments */
        const char **kwn = ar_alloc(&c->ar, (size_t)(a.nkw + 1) * sizeof(char *));
        struct val *kwv = ar_alloc(&c->ar, (size_t)(a.nkw + 1) * sizeof(struct val));
        if (a.nkw) {
            memcpy(kwn, a.kwn, (size_t)a.nkw * sizeof(char *));
            memcpy(kwv, a.kwv, (size_t)a.nkw * sizeof(struct val));
        }
        kwn[a.nkw] = "caller";
        kwv[a.nkw] = make_macro(c, n, s, "caller");
        a.kwn = kwn;
        a.kwv = kwv;
        a.nkw++;
        c->line = n->line;
        put_str(c, out, call_value(c, f, &a));
        break;
    }
    case N_FILTERBLOCK: {
        struct val v = capture(c, &n->body, scope_new(c, s), &r);
        if (r != X_NORMAL) break;
        put_str(c, out, apply_filter_chain(c, n->c, v, s));
        break;
    }
    case N_WITH: {
        struct scope *ws = scope_new(c, s);
        struct val *vals = ar_alloc(&c->ar, (size_t)(n->kw.n + 1) * sizeof(struct val));
        for (int i = 0; i < n->kw.n; i++) vals[i] = eval(c, n->kw.v[i], s);
        for (int i = 0; i < n->args.n; i++) assign(c, n->args.v[i], vals[i], ws);
        r = exec_body(c, &n->body, ws, out);
        break;
    }
    case N_BREAK: r = X_BREAK; break;
    case N_CONTINUE: r = X_CONTINUE; break;
    case N_SCOPE: exec_body(c, &n->body, scope_new(c, s), out); break;
    default: rfail(c, "cannot execute this node");
    }
    c->depth--;
    return r;
}

static int exec_body(struct rctx *c, struct nlist *body, struct scope *s, struct sbuf *out)
{
    for (int i = 0; i < body->n; i++) {
        int r = exec_node(c, body->v[i], s, out);
        if (r != X_NORMAL) return r;
    }
    return X_NORMAL;
}

/* ---------------------------------------------------------------------------------------------- */
/* Builtins: argument binding and small helpers */

/* Binds arguments to parameter names, positional first then keywords; returns a mask of those given. */
static unsigned bind_args(struct rctx *c, struct cargs *a, const char *fname, const char *const *names, int nn,
                          struct val *out)
{
    unsigned given = 0;
    if (a->npos > nn) rfail(c, "%s() takes at most %d argument(s) (%d given)", fname, nn, a->npos);
    for (int i = 0; i < nn; i++) out[i] = vundef(NULL);
    for (int i = 0; i < a->npos; i++) {
        out[i] = a->pos[i];
        given |= 1u << i;
    }
    for (int k = 0; k < a->nkw; k++) {
        int i;
        for (i = 0; i < nn; i++)
            if (!strcmp(names[i], a->kwn[k])) break;
        if (i == nn) rfail(c, "%s() got an unexpected keyword argument '%s'", fname, a->kwn[k]);
        if (given & (1u << i)) rfail(c, "%s() got multiple values for argument '%s'", fname, a->kwn[k]);
        out[i] = a->kwv[k];
        given |= 1u << i;
    }
    return given;
}

#define BIND(fname, ...)                                                                                 \
    static const char *const nm_[] = {__VA_ARGS__};                                                      \
    struct val av[sizeof nm_ / sizeof nm_[0]];                                                           \
    unsigned given = bind_args(c, a, fname, nm_, (int)(sizeof nm_ / sizeof nm_[0]), av);                 \
    (void)given
#define GIVEN(i) ((given >> (i)) & 1u)
#define BIND0(fname)                                                                                     \
    do {                                                                                                 \
        if (a->npos || a->nkw) rfail(c, "%s() takes no arguments", fname);                              \
    } while (0)

static int64_t want_int(struct rctx *c, struct val v, const char *what)
{
    if (v.t == V_INT || v.t == V_BOOL) return num_i(v);
    if (v.t == V_UNDEF) undef_fail(c, v);
    rfail(c, "%s: an integer is required, not '%s'", what, type_name(v));
}

static struct val want_str(struct rctx *c, struct val v, const char *what)
{
    if (v.t == V_STR) return v;
    if (v.t == V_UNDEF) undef_fail(c, v);
    rfail(c, "%s: a string is required, not '%s'", what, type_name(v));
}

static struct val mk_iter(struct rctx *c, struct val list, const char *what)
{
    struct giter *g = ar_alloc(&c->ar, sizeof(*g));
    g->list = list;
    g->used = false;
    g->what = what;
    g->error = NULL;
    struct val v = {.t = V_ITER};
    v.it = g;
    return v;
}

static struct val with_safe(struct val r, struct val src)
{
    if (r.t == V_STR) r.f = (uint8_t)((r.f & ~F_SAFE) | (src.f & F_SAFE));
    return r;
}

/* ---------------------------------------------------------------------------------------------- */
/* str methods */

/* Is cp in the set of code points of `chars`? */
static bool in_chars(uint32_t cp, struct val chars)
{
    for (size_t i = 0; i < chars.s.n;) {
        uint32_t k;
        int l = u8_dec((const unsigned char *)chars.s.p + i, chars.s.n - i, &k);
        if (k == cp) return true;
        i += (size_t)l;
    }
    return false;
}

static struct val str_strip(struct rctx *c, struct val s, struct val chars, bool left, bool right)
{
    bool ws = chars.t == V_NONE || chars.t == V_UNDEF;
    if (!ws) chars = want_str(c, chars, "strip");
    size_t a = 0, b = s.s.n;
    if (left)
        while (a < b) {
            uint32_t cp;
            int l = u8_dec((const unsigned char *)s.s.p + a, b - a, &cp);
            if (ws ? !py_isspace(cp) : !in_chars(cp, chars)) break;
            a += (size_t)l;
        }
    if (right)
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)s.s.p[k] & 0xC0) == 0x80) k--;
            uint32_t cp;
            u8_dec((const unsigned char *)s.s.p + k, b - k, &cp);
            if (ws ? !py_isspace(cp) : !in_chars(cp, chars)) break;
            b = k;
        }
    struct val r = vstr(s.s.p + a, b - a);
    r.f = s.f & F_SAFE;
    return r;
}

/* Python's full case mappings where they differ from the simple ones (SpecialCasing.txt, the common
 * part): mode 0 upper, 1 lower, 3 title. Returns the replacement text or NULL. */
static const char *special_case(uint32_t cp, int mode)
{
    static const struct {
        uint32_t cp;
        const char *upper, *title;
    } up[] = {
        {0xDF, "SS", "Ss"}, {0xFB00, "FF", "Ff"}, {0xFB01, "FI", "Fi"}, {0xFB02, "FL", "Fl"},
        {0xFB03, "FFI", "Ffi"}, {0xFB04, "FFL", "Ffl"}, {0xFB05, "ST", "St"}, {0xFB06, "ST", "St"},
        {0x149, "\xCA\xBCN", "\xCA\xBCN"},
    };
    if (mode == 1) return cp == 0x130 ? "i\xCC\x87" : NULL;
    for (size_t i = 0; i < sizeof up / sizeof up[0]; i++)
        if (up[i].cp == cp) return mode == 0 ? up[i].upper : up[i].title;
    return NULL;
}

static struct val str_map(struct rctx *c, struct val s, int mode) /* 0 upper, 1 lower, 2 swapcase, 3 title, 4 capitalize */
{
    struct sbuf b = {0};
    bool prev_cased = false, first = true;
    charge(c, s.s.n / 64);
    for (size_t i = 0; i < s.s.n;) {
        uint32_t cp, o;
        int l = u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
        bool up = py_iscased_upper(cp), lo = py_iscased_lower(cp);
        int smode = mode == 0 ? 0 : mode == 1 ? 1 : mode == 2 ? (lo ? 0 : 1) : (mode == 3 ? !prev_cased : first) ? 3 : 1;
        const char *sp = cp >= 0xDF ? special_case(cp, smode) : NULL;
        if (sp) {
            sb_puts(c, &b, sp);
            prev_cased = up || lo;
            first = false;
            i += (size_t)l;
            continue;
        }
        switch (mode) {
        case 0: o = py_upper(cp); break;
        case 1: o = py_lower(cp); break;
        case 2: o = up ? py_lower(cp) : lo ? py_upper(cp) : cp; break;
        case 3: o = prev_cased ? py_lower(cp) : py_upper(cp); break;
        default: o = first ? py_upper(cp) : py_lower(cp); break;
        }
        prev_cased = up || lo;
        first = false;
        sb_cp(c, &b, o);
        i += (size_t)l;
    }
    struct val r = sb_val(&b);
    r.f = s.f & F_SAFE;
    return r;
}

static struct val str_split(struct rctx *c, struct val s, struct val sep, int64_t maxsplit, bool from_right)
{
    struct val out = list_new(c, 8, false);
    charge(c, s.s.n / 64);
    if (sep.t == V_NONE || sep.t == V_UNDEF) {
        /* runs of whitespace, no empty strings */
        struct val parts = list_new(c, 8, false);
        if (!from_right) {
            size_t i = 0;
            int64_t splits = 0;
            for (;;) {
                i += ws_run(s.s.p, s.s.n, i);
                if (i >= s.s.n) break;
                if (maxsplit >= 0 && splits >= maxsplit) { /* the rest, trailing whitespace kept */
                    list_push(c, &parts, with_safe(vstr(s.s.p + i, s.s.n - i), s));
                    break;
                }
                size_t j = i;
                while (j < s.s.n && !ws_run(s.s.p, s.s.n, j)) {
                    uint32_t cp;
                    j += (size_t)u8_dec((const unsigned char *)s.s.p + j, s.s.n - j, &cp);
                }
                list_push(c, &parts, with_safe(vstr(s.s.p + i, j - i), s));
                splits++;
                i = j;
            }
            return parts;
        }
        /* rsplit(None, maxsplit): split from the right */
        size_t j = s.s.n;
        int64_t splits = 0;
        struct val rev = list_new(c, 8, false);
        for (;;) {
            j = rstrip_ws(s.s.p, 0, j);
            if (j == 0) break;
            if (maxsplit >= 0 && splits >= maxsplit) { /* the rest, leading whitespace kept */
                list_push(c, &rev, with_safe(vstr(s.s.p, j), s));
                break;
            }
            size_t i = j;
            while (i > 0) {
                size_t k = i - 1;
                while (k > 0 && ((unsigned char)s.s.p[k] & 0xC0) == 0x80) k--;
                uint32_t cp;
                u8_dec((const unsigned char *)s.s.p + k, i - k, &cp);
                if (py_isspace(cp)) break;
                i = k;
            }
            list_push(c, &rev, with_safe(vstr(s.s.p + i, j - i), s));
            splits++;
            j = i;
        }
        for (size_t k = rev.l.n; k > 0; k--) list_push(c, &out, L_items(rev)[k - 1]);
        return out;
    }
    sep = want_str(c, sep, "split");
    if (sep.s.n == 0) rfail(c, "empty separator");
    if (!from_right) {
        size_t i = 0;
        int64_t splits = 0;
        for (;;) {
            const char *f = (maxsplit < 0 || splits < maxsplit) ? memmem(s.s.p + i, s.s.n - i, sep.s.p, sep.s.n) : NULL;
            if (!f) {
                list_push(c, &out, with_safe(vstr(s.s.p + i, s.s.n - i), s));
                break;
            }
            size_t k = (size_t)(f - s.s.p);
            list_push(c, &out, with_safe(vstr(s.s.p + i, k - i), s));
            i = k + sep.s.n;
            splits++;
        }
        return out;
    }
    struct val rev = list_new(c, 8, false);
    size_t j = s.s.n;
    int64_t splits = 0;
    for (;;) {
        const char *f = NULL;
        if ((maxsplit < 0 || splits < maxsplit) && j >= sep.s.n)
            for (size_t k = j - sep.s.n + 1; k > 0; k--)
                if (!memcmp(s.s.p + k - 1, sep.s.p, sep.s.n)) {
                    f = s.s.p + k - 1;
                    break;
                }
        if (!f) {
            list_push(c, &rev, with_safe(vstr(s.s.p, j), s));
            break;
        }
        size_t k = (size_t)(f - s.s.p);
        list_push(c, &rev, with_safe(vstr(s.s.p + k + sep.s.n, j - k - sep.s.n), s));
        j = k;
        splits++;
    }
    for (size_t k = rev.l.n; k > 0; k--) list_push(c, &out, L_items(rev)[k - 1]);
    return out;
}

static struct val str_splitlines(struct rctx *c, struct val s, bool keepends)
{
    struct val out = list_new(c, 8, false);
    size_t i = 0, start = 0;
    while (i < s.s.n) {
        uint32_t cp;
        int l = u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
        bool br = cp == '\n' || cp == '\r' || cp == 0x0B || cp == 0x0C || (cp >= 0x1C && cp <= 0x1E) || cp == 0x85 ||
                  cp == 0x2028 || cp == 0x2029;
        if (!br) {
            i += (size_t)l;
            continue;
        }
        size_t e = i + (size_t)l;
        if (cp == '\r' && e < s.s.n && s.s.p[e] == '\n') e++;
        list_push(c, &out, with_safe(vstr(s.s.p + start, (keepends ? e : i) - start), s));
        i = start = e;
    }
    if (start < s.s.n) list_push(c, &out, with_safe(vstr(s.s.p + start, s.s.n - start), s));
    return out;
}

static struct val str_replace(struct rctx *c, struct val s, struct val old, struct val nw, int64_t count)
{
    struct sbuf b = {0};
    charge(c, s.s.n / 64);
    if (old.s.n == 0) { /* insert between every character */
        int64_t done = 0;
        size_t i = 0;
        for (;;) {
            if (count < 0 || done < count) {
                sb_put(c, &b, nw.s.p, nw.s.n);
                done++;
            }
            if (i >= s.s.n) break;
            uint32_t cp;
            int l = u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
            sb_put(c, &b, s.s.p + i, (size_t)l);
            i += (size_t)l;
            if (count >= 0 && done >= count) {
                sb_put(c, &b, s.s.p + i, s.s.n - i);
                break;
            }
        }
        return sb_val(&b);
    }
    size_t i = 0;
    int64_t done = 0;
    for (;;) {
        const char *f = (count < 0 || done < count) ? memmem(s.s.p + i, s.s.n - i, old.s.p, old.s.n) : NULL;
        if (!f) break;
        size_t k = (size_t)(f - s.s.p);
        sb_put(c, &b, s.s.p + i, k - i);
        sb_put(c, &b, nw.s.p, nw.s.n);
        i = k + old.s.n;
        done++;
    }
    if (!done) return s;
    sb_put(c, &b, s.s.p + i, s.s.n - i);
    return sb_val(&b);
}

/* Python's str.find family on code point positions: s[start:end] searched for sub. */
static int64_t str_find(struct rctx *c, struct val s, struct val sub, struct val start, struct val end, bool right,
                        int64_t *count)
{
    struct val sl = do_slice(c, s, start.t == V_UNDEF ? vnone() : start, end.t == V_UNDEF ? vnone() : end, vnone());
    if (sl.t != V_STR) rfail(c, "slice indices must be integers or None");
    int64_t base = 0;
    if (start.t == V_INT || start.t == V_BOOL) {
        int64_t len = (int64_t)u8_len(s.s.p, s.s.n), st = num_i(start);
        if (st < 0) st = st + len < 0 ? 0 : st + len;
        if (st > len) st = len;
        base = st;
    }
    charge(c, sl.s.n / 64);
    if (count) {
        int64_t k = 0;
        if (sub.s.n == 0) {
            *count = (int64_t)u8_len(sl.s.p, sl.s.n) + 1;
            return 0;
        }
        for (size_t i = 0; i + sub.s.n <= sl.s.n;) {
            const char *f = memmem(sl.s.p + i, sl.s.n - i, sub.s.p, sub.s.n);
            if (!f) break;
            k++;
            i = (size_t)(f - sl.s.p) + sub.s.n;
        }
        *count = k;
        return 0;
    }
    if (sub.s.n > sl.s.n) return -1;
    const char *f = NULL;
    if (!right) {
        f = sub.s.n ? memmem(sl.s.p, sl.s.n, sub.s.p, sub.s.n) : sl.s.p;
    } else {
        for (size_t k = sl.s.n - sub.s.n + 1; k > 0; k--)
            if (!memcmp(sl.s.p + k - 1, sub.s.p, sub.s.n)) {
                f = sl.s.p + k - 1;
                break;
            }
    }
    if (!f) return -1;
    return base + (int64_t)u8_len(sl.s.p, (size_t)(f - sl.s.p));
}

static struct val str_pad(struct rctx *c, struct val s, int64_t width, struct val fill, int mode) /* 0 center 1 ljust 2 rjust */
{
    uint32_t fc = ' ';
    if (fill.t != V_UNDEF) {
        fill = want_str(c, fill, "fillchar");
        if (u8_len(fill.s.p, fill.s.n) != 1) rfail(c, "The fill character must be exactly one character long");
        u8_dec((const unsigned char *)fill.s.p, fill.s.n, &fc);
    }
    int64_t len = (int64_t)u8_len(s.s.p, s.s.n);
    if (width <= len) return s;
    if (width > (int64_t)c->max_output) rfail(c, "width too large");
    int64_t marg = width - len, left;
    if (mode == 0)
        left = marg / 2 + (marg & width & 1);
    else if (mode == 1)
        left = 0;
    else
        left = marg;
    struct sbuf b = {0};
    for (int64_t i = 0; i < left; i++) sb_cp(c, &b, fc);
    sb_put(c, &b, s.s.p, s.s.n);
    for (int64_t i = 0; i < marg - left; i++) sb_cp(c, &b, fc);
    return with_safe(sb_val(&b), s);
}

static struct val str_format(struct rctx *c, struct val fmt, struct cargs *a);

static bool str_all(struct val s, bool (*pred)(uint32_t))
{
    if (!s.s.n) return false;
    for (size_t i = 0; i < s.s.n;) {
        uint32_t cp;
        i += (size_t)u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
        if (!pred(cp)) return false;
    }
    return true;
}
static bool cp_isascii(uint32_t cp)
{
    return cp < 0x80;
}

static struct val tuple2(struct rctx *c, struct val a, struct val b);
static struct val tuple3(struct rctx *c, struct val a, struct val b, struct val d)
{
    struct val t = list_new(c, 3, true);
    list_push(c, &t, a);
    list_push(c, &t, b);
    list_push(c, &t, d);
    return t;
}

static struct val call_str_method(struct rctx *c, struct val s, const char *m, struct cargs *a)
{
    if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
        BIND(m, "prefix", "start", "end");
        if (!GIVEN(0)) rfail(c, "%s() takes at least 1 argument (0 given)", m);
        struct val sub = s;
        if (GIVEN(1) || GIVEN(2)) sub = do_slice(c, s, GIVEN(1) ? av[1] : vnone(), GIVEN(2) ? av[2] : vnone(), vnone());
        if (sub.t != V_STR) rfail(c, "slice indices must be integers or None");
        struct val pre = av[0];
        struct val opts = pre;
        if (!(pre.t == V_LIST && (pre.f & F_TUPLE))) {
            if (pre.t != V_STR)
                rfail(c, "%s first arg must be str or a tuple of str, not %s", m, type_name(pre));
            opts = list_new(c, 1, true);
            list_push(c, &opts, pre);
        }
        for (size_t i = 0; i < opts.l.n; i++) {
            struct val p = want_str(c, L_items(opts)[i], m);
            if (p.s.n > sub.s.n) continue;
            if (m[0] == 's' ? !memcmp(sub.s.p, p.s.p, p.s.n) : !memcmp(sub.s.p + sub.s.n - p.s.n, p.s.p, p.s.n))
                return vbool(true);
        }
        return vbool(false);
    }
    if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip")) {
        BIND(m, "chars");
        return str_strip(c, s, av[0], m[0] != 'r', m[0] != 'l');
    }
    if (!strcmp(m, "split") || !strcmp(m, "rsplit")) {
        BIND(m, "sep", "maxsplit");
        int64_t mx = GIVEN(1) ? want_int(c, av[1], "maxsplit") : -1;
        return str_split(c, s, av[0], mx, m[0] == 'r');
    }
    if (!strcmp(m, "splitlines")) {
        BIND(m, "keepends");
        return str_splitlines(c, s, truthy(av[0]));
    }
    if (!strcmp(m, "replace")) {
        BIND(m, "old", "new", "count");
        if (!GIVEN(0) || !GIVEN(1)) rfail(c, "replace() takes at least 2 arguments");
        struct val r = str_replace(c, s, want_str(c, av[0], "replace"), want_str(c, av[1], "replace"),
                                   GIVEN(2) ? want_int(c, av[2], "count") : -1);
        return with_safe(r, s);
    }
    if (!strcmp(m, "upper") || !strcmp(m, "lower") || !strcmp(m, "swapcase") || !strcmp(m, "title") ||
        !strcmp(m, "capitalize") || !strcmp(m, "casefold")) {
        BIND0(m);
        int mode = !strcmp(m, "upper") ? 0 : (!strcmp(m, "lower") || !strcmp(m, "casefold")) ? 1
                   : !strcmp(m, "swapcase") ? 2 : !strcmp(m, "title") ? 3 : 4;
        return str_map(c, s, mode);
    }
    if (!strcmp(m, "find") || !strcmp(m, "rfind") || !strcmp(m, "index") || !strcmp(m, "rindex") || !strcmp(m, "count")) {
        BIND(m, "sub", "start", "end");
        if (!GIVEN(0)) rfail(c, "%s() takes at least 1 argument (0 given)", m);
        struct val sub = want_str(c, av[0], m);
        if (!strcmp(m, "count")) {
            int64_t k;
            str_find(c, s, sub, av[1], av[2], false, &k);
            return vint(k);
        }
        int64_t r = str_find(c, s, sub, av[1], av[2], m[0] == 'r', NULL);
        if (r < 0 && strstr(m, "index")) rfail(c, "substring not found");
        return vint(r);
    }
    if (!strcmp(m, "join")) {
        BIND(m, "iterable");
        struct val items = iter_list(c, av[0]);
        struct sbuf b = {0};
        for (size_t i = 0; i < items.l.n; i++) {
            struct val x = L_items(items)[i];
            if (x.t != V_STR) rfail(c, "sequence item %zu: expected str instance, %s found", i, type_name(x));
            if (i) sb_put(c, &b, s.s.p, s.s.n);
            sb_put(c, &b, x.s.p, x.s.n);
        }
        return with_safe(sb_val(&b), s);
    }
    if (!strcmp(m, "center") || !strcmp(m, "ljust") || !strcmp(m, "rjust")) {
        BIND(m, "width", "fillchar");
        if (!GIVEN(0)) rfail(c, "%s() takes at least 1 argument (0 given)", m);
        return str_pad(c, s, want_int(c, av[0], m), av[1], m[0] == 'c' ? 0 : m[0] == 'l' ? 1 : 2);
    }
    if (!strcmp(m, "zfill")) {
        BIND(m, "width");
        int64_t w = want_int(c, av[0], m), len = (int64_t)u8_len(s.s.p, s.s.n);
        if (w <= len) return s;
        if (w > (int64_t)c->max_output) rfail(c, "width too large");
        struct sbuf b = {0};
        size_t k = 0;
        if (s.s.n && (s.s.p[0] == '+' || s.s.p[0] == '-')) sb_putc(c, &b, s.s.p[k++]);
        for (int64_t i = 0; i < w - len; i++) sb_putc(c, &b, '0');
        sb_put(c, &b, s.s.p + k, s.s.n - k);
        return with_safe(sb_val(&b), s);
    }
    if (!strcmp(m, "partition") || !strcmp(m, "rpartition")) {
        BIND(m, "sep");
        struct val sep = want_str(c, av[0], m);
        if (!sep.s.n) rfail(c, "empty separator");
        const char *f = NULL;
        if (m[0] == 'p') {
            f = memmem(s.s.p, s.s.n, sep.s.p, sep.s.n);
        } else if (sep.s.n <= s.s.n) {
            for (size_t k = s.s.n - sep.s.n + 1; k > 0; k--)
                if (!memcmp(s.s.p + k - 1, sep.s.p, sep.s.n)) {
                    f = s.s.p + k - 1;
                    break;
                }
        }
        if (!f) {
            if (m[0] == 'p') return tuple3(c, s, with_safe(VLIT(""), s), with_safe(VLIT(""), s));
            return tuple3(c, with_safe(VLIT(""), s), with_safe(VLIT(""), s), s);
        }
        size_t k = (size_t)(f - s.s.p);
        return tuple3(c, with_safe(vstr(s.s.p, k), s), with_safe(sep, s),
                      with_safe(vstr(s.s.p + k + sep.s.n, s.s.n - k - sep.s.n), s));
    }
    if (!strcmp(m, "removeprefix") || !strcmp(m, "removesuffix")) {
        BIND(m, "affix");
        struct val p = want_str(c, av[0], m);
        if (p.s.n <= s.s.n) {
            if (m[6] == 'p' && !memcmp(s.s.p, p.s.p, p.s.n)) return with_safe(vstr(s.s.p + p.s.n, s.s.n - p.s.n), s);
            if (m[6] == 's' && !memcmp(s.s.p + s.s.n - p.s.n, p.s.p, p.s.n))
                return with_safe(vstr(s.s.p, s.s.n - p.s.n), s);
        }
        return s;
    }
    if (!strcmp(m, "isdigit") || !strcmp(m, "isdecimal") || !strcmp(m, "isnumeric")) {
        BIND0(m);
        return vbool(str_all(s, py_isdigit));
    }
    if (!strcmp(m, "isalpha")) {
        BIND0(m);
        return vbool(str_all(s, py_isalpha));
    }
    if (!strcmp(m, "isalnum")) {
        BIND0(m);
        return vbool(str_all(s, py_isalnum));
    }
    if (!strcmp(m, "isspace")) {
        BIND0(m);
        return vbool(str_all(s, py_isspace));
    }
    if (!strcmp(m, "isascii")) {
        BIND0(m);
        return vbool(!s.s.n || str_all(s, cp_isascii));
    }
    if (!strcmp(m, "isprintable")) {
        BIND0(m);
        return vbool(!s.s.n || str_all(s, py_isprintable));
    }
    if (!strcmp(m, "islower") || !strcmp(m, "isupper")) {
        BIND0(m);
        bool cased = false;
        for (size_t i = 0; i < s.s.n;) {
            uint32_t cp;
            i += (size_t)u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
            bool up = py_iscased_upper(cp), lo = py_iscased_lower(cp);
            if (m[2] == 'l' ? up : lo) return vbool(false);
            if (up || lo) cased = true;
        }
        return vbool(cased);
    }
    if (!strcmp(m, "istitle")) {
        BIND0(m);
        bool cased = false, prev = false;
        for (size_t i = 0; i < s.s.n;) {
            uint32_t cp;
            i += (size_t)u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
            bool up = py_iscased_upper(cp), lo = py_iscased_lower(cp);
            if (up) {
                if (prev) return vbool(false);
                prev = cased = true;
            } else if (lo) {
                if (!prev) return vbool(false);
                prev = cased = true;
            } else {
                prev = false;
            }
        }
        return vbool(cased);
    }
    if (!strcmp(m, "format")) return str_format(c, s, a);
    rfail(c, "str.%s() is not supported", m);
}

/* str.format: {} {0} {name} {0.attr} {0[key]}, !s !r, and a format spec of [[fill]align][sign][0][width][.prec][type] */
static void format_spec(struct rctx *c, struct sbuf *b, struct val v, const char *spec, size_t sn)
{
    char fill = ' ', align = 0, sign = 0, type = 0;
    int width = -1, prec = -1;
    size_t i = 0;
    if (sn >= 2 && strchr("<>^=", spec[1])) {
        fill = spec[0];
        align = spec[1];
        i = 2;
    } else if (sn >= 1 && strchr("<>^=", spec[0])) {
        align = spec[0];
        i = 1;
    }
    if (i < sn && strchr("+- ", spec[i])) sign = spec[i++];
    if (i < sn && spec[i] == '0') {
        if (!align) {
            fill = '0';
            align = '=';
        }
        i++;
    }
    while (i < sn && spec[i] >= '0' && spec[i] <= '9') {
        width = (width < 0 ? 0 : width) * 10 + (spec[i++] - '0');
        if (width > 100000) rfail(c, "format width too large");
    }
    if (i < sn && spec[i] == '.') {
        i++;
        prec = 0;
        while (i < sn && spec[i] >= '0' && spec[i] <= '9') {
            prec = prec * 10 + (spec[i++] - '0');
            if (prec > 300) rfail(c, "format precision too large");
        }
    }
    if (i < sn) type = spec[i++];
    if (i < sn) rfail(c, "Invalid format specifier");
    struct sbuf t = {0};
    bool numeric = false;
    if (type == 0 || type == 's') {
        if (type == 's' && v.t != V_STR) rfail(c, "Unknown format code 's' for object of type '%s'", type_name(v));
        if (is_num(v) && type == 0) {
            numeric = true;
            if (prec >= 0 && v.t == V_FLOAT) {
                char o[400];
                snprintf(o, sizeof o, "%.*g", prec, v.fl);
                sb_puts(c, &t, o);
            } else {
                put_str(c, &t, v);
            }
        } else {
            put_str(c, &t, v);
            if (prec >= 0) t.n = u8_off(t.p, t.n, (size_t)prec);
        }
    } else if (strchr("dxXobn", type)) {
        if (v.t != V_INT && v.t != V_BOOL) rfail(c, "Unknown format code '%c' for object of type '%s'", type, type_name(v));
        numeric = true;
        char o[80];
        long long x = (long long)num_i(v);
        if (type == 'd' || type == 'n')
            snprintf(o, sizeof o, "%lld", x);
        else if (type == 'x')
            snprintf(o, sizeof o, "%s%llx", x < 0 ? "-" : "", (unsigned long long)(x < 0 ? -x : x));
        else if (type == 'X')
            snprintf(o, sizeof o, "%s%llX", x < 0 ? "-" : "", (unsigned long long)(x < 0 ? -x : x));
        else if (type == 'o')
            snprintf(o, sizeof o, "%s%llo", x < 0 ? "-" : "", (unsigned long long)(x < 0 ? -x : x));
        else {
            unsigned long long u = (unsigned long long)(x < 0 ? -x : x);
            int k = 0;
            char tmp[70];
            do {
                tmp[k++] = (char)('0' + (u & 1));
                u >>= 1;
            } while (u);
            int p = 0;
            if (x < 0) o[p++] = '-';
            while (k) o[p++] = tmp[--k];
            o[p] = 0;
        }
        sb_puts(c, &t, o);
    } else if (strchr("eEfFgG%", type)) {
        if (!is_num(v)) rfail(c, "Unknown format code '%c' for object of type '%s'", type, type_name(v));
        numeric = true;
        double x = num_d(v);
        char o[400];
        if (type == '%')
            snprintf(o, sizeof o, "%.*f%%", prec < 0 ? 6 : prec, x * 100);
        else {
            char f[8] = {'%', '.', '*', type, 0};
            snprintf(o, sizeof o, f, prec < 0 ? 6 : prec, x);
        }
        sb_puts(c, &t, o);
    } else {
        rfail(c, "Unknown format code '%c'", type);
    }
    if (numeric && sign && t.n && t.p[0] != '-') {
        struct sbuf t2 = {0};
        sb_putc(c, &t2, sign == ' ' ? ' ' : '+');
        sb_put(c, &t2, t.p, t.n);
        t = t2;
    } else if (!numeric && sign) {
        rfail(c, "Sign not allowed in string format specifier");
    }
    if (!align) align = numeric ? '>' : '<';
    size_t len = u8_len(t.p, t.n);
    size_t pad = width > 0 && (size_t)width > len ? (size_t)width - len : 0;
    size_t left = align == '<' ? 0 : align == '^' ? pad / 2 : align == '=' ? 0 : pad;
    if (align == '=') {
        size_t k = 0;
        if (t.n && (t.p[0] == '-' || t.p[0] == '+' || t.p[0] == ' ')) sb_putc(c, b, t.p[k++]);
        for (size_t i2 = 0; i2 < pad; i2++) sb_putc(c, b, fill);
        sb_put(c, b, t.p + k, t.n - k);
        return;
    }
    for (size_t i2 = 0; i2 < left; i2++) sb_putc(c, b, fill);
    sb_put(c, b, t.p, t.n);
    for (size_t i2 = 0; i2 < pad - left; i2++) sb_putc(c, b, fill);
}

static struct val str_format(struct rctx *c, struct val fmt, struct cargs *a)
{
    struct sbuf b = {0};
    const char *s = fmt.s.p;
    size_t n = fmt.s.n;
    int autonum = 0;
    for (size_t i = 0; i < n;) {
        char ch = s[i];
        if (ch == '}') {
            if (i + 1 < n && s[i + 1] == '}') {
                sb_putc(c, &b, '}');
                i += 2;
                continue;
            }
            rfail(c, "Single '}' encountered in format string");
        }
        if (ch != '{') {
            sb_putc(c, &b, ch);
            i++;
            continue;
        }
        if (i + 1 < n && s[i + 1] == '{') {
            sb_putc(c, &b, '{');
            i += 2;
            continue;
        }
        size_t j = i + 1;
        int depth = 1;
        while (j < n && depth) {
            if (s[j] == '{') depth++;
            if (s[j] == '}') depth--;
            if (depth) j++;
        }
        if (j >= n) rfail(c, "expected '}' before end of string");
        /* field: name[.attr|[key]]*[!conv][:spec] */
        const char *f = s + i + 1;
        size_t fl = j - i - 1;
        size_t k = 0;
        while (k < fl && f[k] != '.' && f[k] != '[' && f[k] != '!' && f[k] != ':') k++;
        struct val v;
        if (k == 0) {
            if (autonum < 0) rfail(c, "cannot switch from manual field specification to automatic field numbering");
            if (autonum >= a->npos) rfail(c, "Replacement index %d out of range for positional args tuple", autonum);
            v = a->pos[autonum++];
        } else if (f[0] >= '0' && f[0] <= '9') {
            int64_t idx;
            if (!py_parse_int(f, k, 10, &idx)) rfail(c, "bad format field");
            if (autonum > 0) rfail(c, "cannot switch from automatic field numbering to manual field specification");
            autonum = -1;
            if (idx < 0 || idx >= a->npos) rfail(c, "Replacement index %lld out of range", (long long)idx);
            v = a->pos[idx];
        } else {
            int q;
            for (q = 0; q < a->nkw; q++)
                if (strlen(a->kwn[q]) == k && !memcmp(a->kwn[q], f, k)) break;
            if (q == a->nkw) rfail(c, "format key '%.*s' not found", (int)k, f);
            v = a->kwv[q];
        }
        while (k < fl && (f[k] == '.' || f[k] == '[')) {
            if (f[k] == '.') {
                size_t e = k + 1;
                while (e < fl && f[e] != '.' && f[e] != '[' && f[e] != '!' && f[e] != ':') e++;
                const char *nm = str_copy(c, f + k + 1, e - k - 1).s.p;
                if (nm[0] == '_') rfail(c, "access to attribute '%s' is unsafe", nm);
                v = getattr_v(c, v, nm);
                k = e;
            } else {
                size_t e = k + 1;
                while (e < fl && f[e] != ']') e++;
                if (e >= fl) rfail(c, "Missing ']' in format string");
                int64_t idx;
                struct val key = py_parse_int(f + k + 1, e - k - 1, 10, &idx) ? vint(idx) : str_copy(c, f + k + 1, e - k - 1);
                v = getitem_v(c, v, key);
                k = e + 1;
            }
        }
        if (v.t == V_UNDEF) undef_fail(c, v);
        if (k < fl && f[k] == '!') {
            if (k + 1 >= fl) rfail(c, "end of string while looking for conversion specifier");
            char conv = f[k + 1];
            struct sbuf t = {0};
            if (conv == 's')
                put_str(c, &t, v);
            else if (conv == 'r' || conv == 'a')
                put_repr(c, &t, v);
            else
                rfail(c, "Unknown conversion specifier %c", conv);
            v = sb_val(&t);
            k += 2;
        }
        if (k < fl && f[k] == ':')
            format_spec(c, &b, v, f + k + 1, fl - k - 1);
        else if (k < fl)
            rfail(c, "bad format field");
        else
            put_str(c, &b, v);
        i = j + 1;
    }
    return with_safe(sb_val(&b), fmt);
}

/* ---------------------------------------------------------------------------------------------- */
/* list, dict and loop methods; calling values */

static struct val tuple2(struct rctx *c, struct val a, struct val b)
{
    struct val t = list_new(c, 2, true);
    list_push(c, &t, a);
    list_push(c, &t, b);
    return t;
}

static struct val dict_items(struct rctx *c, struct dict *d)
{
    struct val l = list_new(c, d->n, false);
    for (size_t i = 0; i < d->n; i++) list_push(c, &l, tuple2(c, d->k[i], d->v[i]));
    return l;
}

static struct val call_method(struct rctx *c, struct method *me, struct cargs *a)
{
    struct val s = me->self;
    const char *m = me->name;
    if (s.t == V_STR) return call_str_method(c, s, m, a);
    if (s.t == V_DICT) {
        if (!strcmp(m, "get")) {
            BIND("get", "key", "default");
            if (!GIVEN(0)) rfail(c, "get expected at least 1 argument, got 0");
            size_t i;
            if (dict_find(c, s.d, av[0], &i)) return s.d->v[i];
            return GIVEN(1) ? av[1] : vnone();
        }
        if (!strcmp(m, "items")) {
            BIND0(m);
            struct val l = dict_items(c, s.d);
            l.f |= F_ITEMS;
            return l;
        }
        if (!strcmp(m, "keys") || !strcmp(m, "values")) {
            BIND0(m);
            struct val l = list_new(c, s.d->n, false);
            for (size_t i = 0; i < s.d->n; i++) list_push(c, &l, m[0] == 'k' ? s.d->k[i] : s.d->v[i]);
            l.f |= m[0] == 'k' ? F_KEYS : F_VALUES;
            return l;
        }
        if (!strcmp(m, "copy")) {
            BIND0(m);
            struct dict *d = dict_new(c, s.d->n);
            for (size_t i = 0; i < s.d->n; i++) dict_set(c, d, s.d->k[i], s.d->v[i]);
            return vdict(d);
        }
        rfail(c, "dict.%s() is not supported", m);
    }
    if (s.t == V_LIST) {
        if (!strcmp(m, "count")) {
            BIND("count", "value");
            int64_t k = 0;
            for (size_t i = 0; i < s.l.n; i++) k += py_eq(c, L_items(s)[i], av[0], 0);
            return vint(k);
        }
        if (!strcmp(m, "index")) {
            BIND("index", "value", "start", "stop");
            struct val sl = do_slice(c, s, GIVEN(1) ? av[1] : vnone(), GIVEN(2) ? av[2] : vnone(), vnone());
            int64_t base = 0;
            if (GIVEN(1)) {
                int64_t st = want_int(c, av[1], "index"), len = (int64_t)s.l.n;
                if (st < 0) st = st + len < 0 ? 0 : st + len;
                base = st > len ? len : st;
            }
            for (size_t i = 0; i < sl.l.n; i++)
                if (py_eq(c, L_items(sl)[i], av[0], 0)) return vint(base + (int64_t)i);
            rfail(c, "value is not in list");
        }
        if (!strcmp(m, "copy")) {
            BIND0(m);
            return do_slice(c, s, vnone(), vnone(), vnone());
        }
        rfail(c, "list.%s() is not supported (the sandbox keeps lists immutable)", m);
    }
    if (s.t == V_LOOP) {
        struct loopctx *lp = s.lp;
        if (a->nkw) rfail(c, "loop.%s() takes no keyword arguments", m);
        if (!strcmp(m, "cycle")) {
            if (!a->npos) rfail(c, "no items for cycling given");
            return a->pos[lp->i % (size_t)a->npos];
        }
        struct val t = list_new(c, (size_t)a->npos, true);
        for (int i = 0; i < a->npos; i++) list_push(c, &t, a->pos[i]);
        if (lp->changed.t != V_UNDEF && py_eq(c, lp->changed, t, 0)) return vbool(false);
        lp->changed = t;
        return vbool(true);
    }
    rfail(c, "'%s' object has no method '%s'", type_name(s), m);
}

static struct val call_value(struct rctx *c, struct val f, struct cargs *a)
{
    switch (f.t) {
    case V_MACRO: return call_macro(c, f.m, a);
    case V_FUNC: return call_global(c, f.fn, a);
    case V_METHOD: return call_method(c, f.me, a);
    case V_LOOP: {
        struct loopctx *lp = f.lp;
        if (!(lp->node->flags & F_RECURSIVE))
            rfail(c, "Tried to call non recursive loop. Maybe you forgot the 'recursive' modifier.");
        if (a->npos != 1 || a->nkw) rfail(c, "loop() takes exactly one argument");
        struct sbuf b = {0};
        exec_for(c, lp->node, a->pos[0], lp->scope, &b, lp->depth0 + 1);
        return sb_val(&b);
    }
    case V_UNDEF: undef_fail(c, f);
    default: rfail(c, "'%s' object is not callable", type_name(f));
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Globals: range, dict, namespace, and transformers' raise_exception and strftime_now */

enum { G_RANGE, G_DICT, G_NAMESPACE, G_RAISE, G_STRFTIME };
static const char *const global_names[] = {"range", "dict", "namespace", "raise_exception", "strftime_now", NULL};

static int global_id(const char *name)
{
    for (int i = 0; global_names[i]; i++)
        if (!strcmp(global_names[i], name)) return i;
    return -1;
}
static const char *fn_name(int fn)
{
    return fn >= 0 && fn <= G_STRFTIME ? global_names[fn] : "?";
}

/* dict(*args, **kwargs) as Python builds it */
static struct dict *build_dict(struct rctx *c, struct cargs *a, const char *fname)
{
    struct dict *d = dict_new(c, 4);
    if (a->npos > 1) rfail(c, "%s expected at most 1 argument, got %d", fname, a->npos);
    if (a->npos == 1) {
        struct val src = a->pos[0];
        if (src.t == V_DICT || src.t == V_NS) {
            for (size_t i = 0; i < src.d->n; i++) dict_set(c, d, src.d->k[i], src.d->v[i]);
        } else {
            struct val items = iter_list(c, src);
            for (size_t i = 0; i < items.l.n; i++) {
                struct val p = iter_list(c, L_items(items)[i]);
                if (p.l.n != 2) rfail(c, "dictionary update sequence element #%zu has length %zu; 2 is required", i, p.l.n);
                dict_set(c, d, L_items(p)[0], L_items(p)[1]);
            }
        }
    }
    for (int k = 0; k < a->nkw; k++) dict_set(c, d, vstr(a->kwn[k], strlen(a->kwn[k])), a->kwv[k]);
    return d;
}

static struct val call_global(struct rctx *c, int fn, struct cargs *a)
{
    switch (fn) {
    case G_RANGE: {
        if (a->nkw) rfail(c, "range() takes no keyword arguments");
        if (a->npos < 1 || a->npos > 3) rfail(c, "range expected 1 to 3 arguments, got %d", a->npos);
        int64_t start = 0, stop, step = 1;
        if (a->npos == 1) {
            stop = want_int(c, a->pos[0], "range");
        } else {
            start = want_int(c, a->pos[0], "range");
            stop = want_int(c, a->pos[1], "range");
            if (a->npos == 3) step = want_int(c, a->pos[2], "range");
        }
        if (step == 0) rfail(c, "range() arg 3 must not be zero");
        double cnt = 0;
        if (step > 0 && stop > start) cnt = ceil(((double)stop - (double)start) / (double)step);
        if (step < 0 && stop < start) cnt = ceil(((double)start - (double)stop) / -(double)step);
        if (cnt > MAX_RANGE)
            rfail(c, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (%d).", MAX_RANGE);
        struct val l = list_new(c, (size_t)cnt, false);
        for (int64_t i = 0; i < (int64_t)cnt; i++) list_push(c, &l, vint(start + i * step));
        l.f |= F_RANGE;
        l.l.buf->range[0] = start;
        l.l.buf->range[1] = stop;
        l.l.buf->range[2] = step;
        return l;
    }
    case G_DICT: return vdict(build_dict(c, a, "dict"));
    case G_NAMESPACE: {
        struct val v = {.t = V_NS};
        v.d = build_dict(c, a, "namespace");
        return v;
    }
    case G_RAISE: {
        struct val m = a->npos ? a->pos[0] : a->nkw ? a->kwv[0] : vundef(NULL);
        if (a->npos + a->nkw != 1) rfail(c, "raise_exception() takes exactly one argument");
        struct sbuf b = {0};
        put_str(c, &b, m);
        rfail(c, "%.*s", (int)(b.n > 900 ? 900 : b.n), b.p ? b.p : "");
    }
    case G_STRFTIME: {
        if (a->npos != 1 || a->nkw) rfail(c, "strftime_now() takes exactly one argument");
        struct val f = want_str(c, a->pos[0], "strftime_now");
        if (f.s.n > 1000) rfail(c, "strftime_now() format too long");
        struct timeval tv;
        time_t t;
        long usec = 0;
        if (c->now) {
            t = (time_t)c->now;
        } else {
            gettimeofday(&tv, NULL);
            t = tv.tv_sec;
            usec = (long)tv.tv_usec;
        }
        struct tm tm;
        localtime_r(&t, &tm);
        /* Python handles %f itself; the rest goes to the C library */
        struct sbuf fb = {0};
        for (size_t i = 0; i < f.s.n; i++) {
            if (f.s.p[i] == '%' && i + 1 < f.s.n && f.s.p[i + 1] == 'f') {
                sb_printf(c, &fb, "%06ld", usec);
                i++;
            } else if (f.s.p[i] == '%' && i + 1 < f.s.n) {
                sb_put(c, &fb, f.s.p + i, 2);
                i++;
            } else if (f.s.p[i] == 0) {
                rfail(c, "embedded null character");
            } else {
                sb_putc(c, &fb, f.s.p[i]);
            }
        }
        sb_putc(c, &fb, 0);
        char out[4096];
        size_t k = fb.n > 1 ? strftime(out, sizeof out, fb.p, &tm) : 0;
        if (k == 0 && fb.n > 1) rfail(c, "strftime_now() result too long");
        return str_copy(c, out, k);
    }
    }
    rfail(c, "unknown function");
}

/* ---------------------------------------------------------------------------------------------- */
/* tojson: transformers' json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) */

struct jsonfmt {
    bool ascii, sort;
    const char *indent; /* NULL: no newlines */
    size_t indent_n;
    const char *isep, *ksep;
    size_t isep_n, ksep_n;
};

static void json_str(struct rctx *c, struct sbuf *b, const char *s, size_t n, bool ascii)
{
    sb_putc(c, b, '"');
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && (ch < 0x7F || (!ascii && ch >= 0x80))) {
            i++;
            continue;
        }
        sb_put(c, b, s + last, i - last);
        if (ch < 0x80) {
            switch (ch) {
            case '"': sb_put(c, b, "\\\"", 2); break;
            case '\\': sb_put(c, b, "\\\\", 2); break;
            case '\n': sb_put(c, b, "\\n", 2); break;
            case '\r': sb_put(c, b, "\\r", 2); break;
            case '\t': sb_put(c, b, "\\t", 2); break;
            case '\b': sb_put(c, b, "\\b", 2); break;
            case '\f': sb_put(c, b, "\\f", 2); break;
            default: sb_printf(c, b, "\\u%04x", ch); break;
            }
            i++;
        } else { /* ensure_ascii: \uXXXX, surrogate pairs above the BMP */
            uint32_t cp;
            int l = u8_dec((const unsigned char *)s + i, n - i, &cp);
            if (cp >= 0x10000) {
                uint32_t v = cp - 0x10000;
                sb_printf(c, b, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
            } else {
                sb_printf(c, b, "\\u%04x", cp);
            }
            i += (size_t)l;
        }
        last = i;
    }
    sb_put(c, b, s + last, n - last);
    sb_putc(c, b, '"');
}

static void json_float(struct rctx *c, struct sbuf *b, double d)
{
    if (isnan(d)) {
        sb_puts(c, b, "NaN");
        return;
    }
    if (isinf(d)) {
        sb_puts(c, b, d < 0 ? "-Infinity" : "Infinity");
        return;
    }
    char t[64];
    py_float_repr(d, t, sizeof t);
    sb_puts(c, b, t);
}

static void json_newline(struct rctx *c, struct sbuf *b, const struct jsonfmt *jf, int level)
{
    sb_putc(c, b, '\n');
    for (int i = 0; i < level; i++) sb_put(c, b, jf->indent, jf->indent_n);
}

static void merge_sort(struct rctx *c, struct val *v, struct val *keys, size_t n, bool reverse);

static void json_dump(struct rctx *c, struct sbuf *b, struct val v, const struct jsonfmt *jf, int level)
{
    charge(c, 1);
    switch (v.t) {
    case V_NONE: sb_put(c, b, "null", 4); return;
    case V_BOOL: sb_puts(c, b, v.b ? "true" : "false"); return;
    case V_INT: sb_printf(c, b, "%lld", (long long)v.i); return;
    case V_FLOAT: json_float(c, b, v.fl); return;
    case V_STR: json_str(c, b, v.s.p, v.s.n, jf->ascii); return;
    case V_LIST: {
        if (v.f & (F_VIEW | F_RANGE)) rfail(c, "Object of type %s is not JSON serializable", type_name(v));
        if (!v.l.n) {
            sb_put(c, b, "[]", 2);
            return;
        }
        if (!repr_enter(c, v.l.buf)) rfail(c, "Circular reference detected");
        sb_putc(c, b, '[');
        if (jf->indent) json_newline(c, b, jf, level + 1);
        for (size_t i = 0; i < v.l.n; i++) {
            if (i) {
                sb_put(c, b, jf->isep, jf->isep_n);
                if (jf->indent) json_newline(c, b, jf, level + 1);
            }
            json_dump(c, b, L_items(v)[i], jf, level + 1);
        }
        if (jf->indent) json_newline(c, b, jf, level);
        sb_putc(c, b, ']');
        c->nrepr--;
        return;
    }
    case V_DICT: {
        struct dict *d = v.d;
        if (!d->n) {
            sb_put(c, b, "{}", 2);
            return;
        }
        if (!repr_enter(c, d)) rfail(c, "Circular reference detected");
        size_t *order = ar_alloc(&c->ar, d->n * sizeof(size_t));
        for (size_t i = 0; i < d->n; i++) order[i] = i;
        if (jf->sort) {
            struct val *idx = ar_alloc(&c->ar, d->n * sizeof(struct val));
            struct val *keys = ar_alloc(&c->ar, d->n * sizeof(struct val));
            for (size_t i = 0; i < d->n; i++) {
                idx[i] = vint((int64_t)i);
                keys[i] = d->k[i];
            }
            merge_sort(c, idx, keys, d->n, false);
            for (size_t i = 0; i < d->n; i++) order[i] = (size_t)idx[i].i;
        }
        sb_putc(c, b, '{');
        if (jf->indent) json_newline(c, b, jf, level + 1);
        for (size_t j = 0; j < d->n; j++) {
            size_t i = order[j];
            if (j) {
                sb_put(c, b, jf->isep, jf->isep_n);
                if (jf->indent) json_newline(c, b, jf, level + 1);
            }
            struct val k = d->k[i];
            switch (k.t) {
            case V_STR: json_str(c, b, k.s.p, k.s.n, jf->ascii); break;
            case V_INT: sb_printf(c, b, "\"%lld\"", (long long)k.i); break;
            case V_BOOL: sb_puts(c, b, k.b ? "\"true\"" : "\"false\""); break;
            case V_NONE: sb_puts(c, b, "\"null\""); break;
            case V_FLOAT:
                sb_putc(c, b, '"');
                json_float(c, b, k.fl);
                sb_putc(c, b, '"');
                break;
            default: rfail(c, "keys must be str, int, float, bool or None, not %s", type_name(k));
            }
            sb_put(c, b, jf->ksep, jf->ksep_n);
            json_dump(c, b, d->v[i], jf, level + 1);
        }
        if (jf->indent) json_newline(c, b, jf, level);
        sb_putc(c, b, '}');
        c->nrepr--;
        return;
    }
    default: rfail(c, "Object of type %s is not JSON serializable", type_name(v));
    }
}

static struct val do_tojson(struct rctx *c, struct val v, struct cargs *a)
{
    BIND("tojson", "ensure_ascii", "indent", "separators", "sort_keys");
    struct jsonfmt jf = {0};
    jf.ascii = GIVEN(0) && truthy(av[0]);
    jf.sort = GIVEN(3) && truthy(av[3]);
    char spaces[64];
    if (GIVEN(1) && av[1].t != V_NONE) {
        if (av[1].t == V_STR) {
            jf.indent = av[1].s.p;
            jf.indent_n = av[1].s.n;
        } else {
            int64_t k = want_int(c, av[1], "indent");
            if (k > 60) k = 60; /* keeps the buffer small; nobody indents more */
            if (k < 0) k = 0;
            memset(spaces, ' ', (size_t)k);
            jf.indent = spaces;
            jf.indent_n = (size_t)k;
        }
    }
    if (GIVEN(2) && av[2].t != V_NONE) {
        struct val sp = iter_list(c, av[2]);
        if (sp.l.n != 2) rfail(c, "separators must be a pair of strings");
        struct val x = want_str(c, L_items(sp)[0], "separators"), y = want_str(c, L_items(sp)[1], "separators");
        jf.isep = x.s.p;
        jf.isep_n = x.s.n;
        jf.ksep = y.s.p;
        jf.ksep_n = y.s.n;
    } else {
        jf.isep = jf.indent ? "," : ", ";
        jf.isep_n = jf.indent ? 1 : 2;
        jf.ksep = ": ";
        jf.ksep_n = 2;
    }
    int saved = c->nrepr;
    struct sbuf b = {0};
    json_dump(c, &b, v, &jf, 0);
    c->nrepr = saved;
    return sb_val(&b);
}

/* ---------------------------------------------------------------------------------------------- */
/* Sorting (stable, Python's order; an error unwinds through longjmp, so no qsort) */

static void merge_sort(struct rctx *c, struct val *v, struct val *keys, size_t n, bool reverse)
{
    if (n < 2) return;
    charge(c, n);
    struct val *tv = ar_alloc(&c->ar, n * sizeof(struct val));
    struct val *tk = ar_alloc(&c->ar, n * sizeof(struct val));
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                int r = py_cmp(c, keys[j], keys[i], "<", 0);
                bool take_right = reverse ? (r == 1) : (r == -1);
                if (take_right) {
                    tv[k] = v[j];
                    tk[k++] = keys[j++];
                } else {
                    tv[k] = v[i];
                    tk[k++] = keys[i++];
                }
            }
            while (i < mid) {
                tv[k] = v[i];
                tk[k++] = keys[i++];
            }
            while (j < hi) {
                tv[k] = v[j];
                tk[k++] = keys[j++];
            }
        }
        memcpy(v, tv, n * sizeof(struct val));
        memcpy(keys, tk, n * sizeof(struct val));
        charge(c, n / 4);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Filters (jinja2's filters.py; tojson is transformers') */

enum {
    FI_ABS, FI_ATTR, FI_BATCH, FI_CAPITALIZE, FI_CENTER, FI_DEFAULT, FI_DICTSORT, FI_ESCAPE, FI_FIRST, FI_FLOAT,
    FI_FORCEESCAPE, FI_FORMAT, FI_INDENT, FI_INT, FI_ITEMS, FI_JOIN, FI_LAST, FI_LENGTH, FI_LIST, FI_LOWER, FI_MAP,
    FI_MAX, FI_MIN, FI_REJECT, FI_REJECTATTR, FI_REPLACE, FI_REVERSE, FI_ROUND, FI_SAFE, FI_SELECT, FI_SELECTATTR,
    FI_SLICE, FI_SORT, FI_STRING, FI_SUM, FI_TITLE, FI_TOJSON, FI_TRIM, FI_TRUNCATE, FI_UNIQUE, FI_UPPER,
    FI_WORDCOUNT,
};

static const struct {
    const char *name;
    int id;
} filter_table[] = {
    {"abs", FI_ABS}, {"attr", FI_ATTR}, {"batch", FI_BATCH}, {"capitalize", FI_CAPITALIZE}, {"center", FI_CENTER},
    {"count", FI_LENGTH}, {"d", FI_DEFAULT}, {"default", FI_DEFAULT}, {"dictsort", FI_DICTSORT}, {"e", FI_ESCAPE},
    {"escape", FI_ESCAPE}, {"first", FI_FIRST}, {"float", FI_FLOAT}, {"forceescape", FI_FORCEESCAPE},
    {"format", FI_FORMAT}, {"indent", FI_INDENT}, {"int", FI_INT}, {"items", FI_ITEMS}, {"join", FI_JOIN},
    {"last", FI_LAST}, {"length", FI_LENGTH}, {"list", FI_LIST}, {"lower", FI_LOWER}, {"map", FI_MAP},
    {"max", FI_MAX}, {"min", FI_MIN}, {"reject", FI_REJECT}, {"rejectattr", FI_REJECTATTR},
    {"replace", FI_REPLACE}, {"reverse", FI_REVERSE}, {"round", FI_ROUND}, {"safe", FI_SAFE},
    {"select", FI_SELECT}, {"selectattr", FI_SELECTATTR}, {"slice", FI_SLICE}, {"sort", FI_SORT},
    {"string", FI_STRING}, {"sum", FI_SUM}, {"title", FI_TITLE}, {"tojson", FI_TOJSON}, {"trim", FI_TRIM},
    {"truncate", FI_TRUNCATE}, {"unique", FI_UNIQUE}, {"upper", FI_UPPER}, {"wordcount", FI_WORDCOUNT},
};

static int filter_id(const char *name)
{
    for (size_t i = 0; i < sizeof filter_table / sizeof filter_table[0]; i++)
        if (!strcmp(filter_table[i].name, name)) return filter_table[i].id;
    return -1;
}

/* Tests (jinja2's tests.py) */
enum {
    TE_BOOLEAN, TE_CALLABLE, TE_DEFINED, TE_DIVISIBLEBY, TE_EQ, TE_ESCAPED, TE_EVEN, TE_FALSE, TE_FILTER, TE_FLOAT,
    TE_GE, TE_GT, TE_IN, TE_INTEGER, TE_ITERABLE, TE_LE, TE_LOWER, TE_LT, TE_MAPPING, TE_NE, TE_NONE, TE_NUMBER,
    TE_ODD, TE_SAMEAS, TE_SEQUENCE, TE_STRING, TE_TEST, TE_TRUE, TE_UNDEFINED, TE_UPPER,
};

static const struct {
    const char *name;
    int id;
} test_table[] = {
    {"boolean", TE_BOOLEAN}, {"callable", TE_CALLABLE}, {"defined", TE_DEFINED}, {"divisibleby", TE_DIVISIBLEBY},
    {"eq", TE_EQ}, {"equalto", TE_EQ}, {"==", TE_EQ}, {"escaped", TE_ESCAPED}, {"even", TE_EVEN},
    {"false", TE_FALSE}, {"filter", TE_FILTER}, {"float", TE_FLOAT}, {"ge", TE_GE}, {">=", TE_GE},
    {"gt", TE_GT}, {"greaterthan", TE_GT}, {">", TE_GT}, {"in", TE_IN}, {"integer", TE_INTEGER},
    {"iterable", TE_ITERABLE}, {"le", TE_LE}, {"<=", TE_LE}, {"lower", TE_LOWER}, {"lt", TE_LT},
    {"lessthan", TE_LT}, {"<", TE_LT}, {"mapping", TE_MAPPING}, {"ne", TE_NE}, {"!=", TE_NE},
    {"none", TE_NONE}, {"number", TE_NUMBER}, {"odd", TE_ODD}, {"sameas", TE_SAMEAS},
    {"sequence", TE_SEQUENCE}, {"string", TE_STRING}, {"test", TE_TEST}, {"true", TE_TRUE},
    {"undefined", TE_UNDEFINED}, {"upper", TE_UPPER},
};

static int test_id(const char *name)
{
    for (size_t i = 0; i < sizeof test_table / sizeof test_table[0]; i++)
        if (!strcmp(test_table[i].name, name)) return test_table[i].id;
    return -1;
}

/* "a.b.0" -> getitem per part (digits as ints), as jinja2's make_attrgetter does */
static struct val get_path(struct rctx *c, struct val item, struct val attr)
{
    if (attr.t == V_INT) return getitem_v(c, item, attr);
    attr = to_str(c, attr);
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < attr.s.n && attr.s.p[j] != '.') j++;
        struct val key = str_copy(c, attr.s.p + i, j - i);
        int64_t k;
        bool digits = j > i;
        for (size_t q = i; q < j; q++)
            if (!lx_isdigit(attr.s.p[q])) digits = false;
        if (digits && py_parse_int(attr.s.p + i, j - i, 10, &k)) key = vint(k);
        item = getitem_v(c, item, key);
        if (j >= attr.s.n) break;
        i = j + 1;
    }
    return item;
}

static struct val ignore_case(struct rctx *c, struct val v)
{
    return v.t == V_STR ? str_map(c, v, 1) : v;
}

/* Argument slices for select/map style filters: cargs minus the first `skip` positionals */
static struct cargs args_from(struct cargs *a, int skip)
{
    struct cargs r = *a;
    r.pos = a->pos + skip;
    r.npos = a->npos - skip;
    return r;
}

static struct val do_select(struct rctx *c, struct val v, struct cargs *a, bool by_attr, bool keep)
{
    int off = 0;
    struct val attr = vundef(NULL);
    if (by_attr) {
        if (a->npos < 1) rfail(c, "Missing parameter for attribute name");
        attr = a->pos[0];
        off = 1;
    }
    int tid = -1;
    const char *tname = NULL;
    struct cargs ta = {0};
    if (a->npos > off) {
        struct val tn = want_str(c, a->pos[off], "test name");
        tname = cstr(c, tn);
        tid = test_id(tname);
        if (tid < 0) rfail(c, "No test named '%s'.", tname);
        ta = args_from(a, off + 1);
    } else if (a->nkw) {
        rfail(c, "unexpected keyword argument for select");
    }
    struct val items = iter_list(c, v);
    struct val out = list_new(c, items.l.n, false);
    for (size_t i = 0; i < items.l.n; i++) {
        struct val x = L_items(items)[i];
        struct val t = by_attr ? get_path(c, x, attr) : x;
        bool r = tname ? apply_test(c, tid, tname, t, &ta) : truthy(t);
        if (r == keep) list_push(c, &out, x);
    }
    return mk_iter(c, out, "generator");
}

static struct val do_map(struct rctx *c, struct val v, struct cargs *a)
{
    struct val items = iter_list(c, v);
    struct val out = list_new(c, items.l.n, false);
    if (a->npos == 0) {
        struct val attr = vundef(NULL), def = vundef(NULL);
        bool has_attr = false, has_def = false;
        for (int k = 0; k < a->nkw; k++) {
            if (!strcmp(a->kwn[k], "attribute")) {
                attr = a->kwv[k];
                has_attr = true;
            } else if (!strcmp(a->kwn[k], "default")) {
                def = a->kwv[k];
                has_def = true;
            } else {
                rfail(c, "Unexpected keyword argument '%s'", a->kwn[k]);
            }
        }
        if (!has_attr) rfail(c, "map requires a filter argument");
        for (size_t i = 0; i < items.l.n; i++) {
            struct val x = get_path(c, L_items(items)[i], attr);
            if (has_def && x.t == V_UNDEF) x = def;
            list_push(c, &out, x);
        }
        return mk_iter(c, out, "generator");
    }
    struct val fnv = want_str(c, a->pos[0], "filter name");
    const char *fname = cstr(c, fnv);
    int fid = filter_id(fname);
    if (fid < 0) rfail(c, "No filter named '%s'.", fname);
    struct cargs fa = args_from(a, 1);
    for (size_t i = 0; i < items.l.n; i++) list_push(c, &out, apply_filter(c, fid, fname, L_items(items)[i], &fa));
    return mk_iter(c, out, "generator");
}

/* keys for sort / unique / min / max: the attribute path (or the item), lowercased unless case_sensitive */
static struct val sort_key(struct rctx *c, struct val x, struct val attr, bool case_sensitive)
{
    if (attr.t != V_UNDEF && attr.t != V_NONE) x = get_path(c, x, attr);
    return case_sensitive ? x : ignore_case(c, x);
}

static struct val do_minmax(struct rctx *c, struct val v, struct cargs *a, bool is_max)
{
    BIND(is_max ? "max" : "min", "case_sensitive", "attribute");
    struct val items = iter_list(c, v);
    if (!items.l.n) return vhint(c, false, "No aggregated item, sequence was empty.");
    bool cs = truthy(av[0]);
    struct val best = L_items(items)[0], bk = sort_key(c, best, av[1], cs);
    for (size_t i = 1; i < items.l.n; i++) {
        struct val x = L_items(items)[i], k = sort_key(c, x, av[1], cs);
        int r = py_cmp(c, k, bk, is_max ? ">" : "<", 0);
        if (is_max ? r == 1 : r == -1) {
            best = x;
            bk = k;
        }
    }
    return best;
}

static double py_round(double x, int64_t nd)
{
    if (!isfinite(x)) return x;
    if (nd > 300) return x;
    if (nd >= 0) {
        char buf[400];
        snprintf(buf, sizeof buf, "%.*f", (int)nd, x);
        return strtod(buf, NULL);
    }
    if (nd < -308) return copysign(0.0, x);
    double p = pow(10.0, (double)-nd);
    return rint(x / p) * p;
}

static struct val do_indent(struct rctx *c, struct val s, struct cargs *a)
{
    BIND("indent", "width", "first", "blank");
    struct val ind;
    if (GIVEN(0) && av[0].t == V_STR) {
        ind = av[0];
    } else {
        int64_t w = GIVEN(0) ? want_int(c, av[0], "indent") : 4;
        if (w < 0) w = 0;
        if (w > 10000) rfail(c, "indent width too large");
        char *p = ar_alloc(&c->ar, (size_t)w + 1);
        memset(p, ' ', (size_t)w);
        ind = vstr(p, (size_t)w);
    }
    if (s.t == V_UNDEF) undef_fail(c, s);
    if (s.t != V_STR) rfail(c, "unsupported operand type(s) for +=: '%s' and 'str'", type_name(s));
    struct val s2 = str_cat(c, vstr(s.s.p, s.s.n), VLIT("\n")); /* jinja2: s += "\n" before splitlines */
    struct val lines = str_splitlines(c, s2, false);
    struct sbuf b = {0};
    if (GIVEN(1) && truthy(av[1])) sb_put(c, &b, ind.s.p, ind.s.n);
    bool blank = GIVEN(2) && truthy(av[2]);
    for (size_t i = 0; i < lines.l.n; i++) {
        struct val ln = L_items(lines)[i];
        if (i) {
            sb_putc(c, &b, '\n');
            if (blank || ln.s.n) sb_put(c, &b, ind.s.p, ind.s.n);
        }
        sb_put(c, &b, ln.s.p, ln.s.n);
    }
    return with_safe(sb_val(&b), s);
}

static struct val apply_filter_now(struct rctx *c, int id, const char *name, struct val v, struct cargs *a);

/* jinja2's map, select, reject, selectattr, rejectattr, unique, batch, slice and items are generators:
 * nothing runs until the result is iterated, and map/select/... of a false value yield nothing. Here
 * they run at once, and an error they meet waits in the generator until it is consumed. */
static struct val apply_filter(struct rctx *c, int id, const char *name, struct val v, struct cargs *a)
{
    bool lazy = id == FI_MAP || id == FI_SELECT || id == FI_REJECT || id == FI_SELECTATTR || id == FI_REJECTATTR ||
                id == FI_UNIQUE || id == FI_BATCH || id == FI_SLICE || id == FI_ITEMS;
    if (!lazy) return apply_filter_now(c, id, name, v, a);
    if ((id == FI_MAP || id == FI_SELECT || id == FI_REJECT || id == FI_SELECTATTR || id == FI_REJECTATTR) &&
        !truthy(v))
        return mk_iter(c, list_new(c, 1, false), "generator");
    jmp_buf saved;
    memcpy(&saved, &c->err.jb, sizeof saved);
    int depth = c->depth, nrepr = c->nrepr, line = c->line;
    struct val r;
    if (setjmp(c->err.jb) == 0) {
        r = apply_filter_now(c, id, name, v, a);
        memcpy(&c->err.jb, &saved, sizeof saved);
        return r;
    }
    memcpy(&c->err.jb, &saved, sizeof saved);
    if (c->err.fatal) raise_raw(&c->err, c->err.msg);
    c->depth = depth;
    c->nrepr = nrepr;
    c->line = line;
    r = mk_iter(c, list_new(c, 1, false), "generator");
    r.it->error = str_copy(c, c->err.msg, strlen(c->err.msg)).s.p;
    return r;
}

static struct val apply_filter_now(struct rctx *c, int id, const char *name, struct val v, struct cargs *a)
{
    charge(c, 1);
    switch (id) {
    case FI_ABS: {
        BIND0("abs");
        if (v.t == V_UNDEF) undef_fail(c, v);
        if (v.t == V_FLOAT) return vfloat(fabs(v.fl));
        if (v.t == V_INT || v.t == V_BOOL) {
            if (num_i(v) == INT64_MIN) rfail(c, "integer overflow");
            return vint(num_i(v) < 0 ? -num_i(v) : num_i(v));
        }
        rfail(c, "bad operand type for abs(): '%s'", type_name(v));
    }
    case FI_ATTR: {
        BIND("attr", "name");
        if (v.t == V_UNDEF) undef_fail(c, v);
        const char *nm = cstr(c, to_str(c, av[0]));
        bool found;
        struct val r = attr_only(c, v, nm, &found);
        return found ? r : vhint(c, false, "'%s' has no attribute '%s'", obj_desc(v), nm);
    }
    case FI_BATCH: {
        BIND("batch", "linecount", "fill_with");
        int64_t n = want_int(c, av[0], "batch");
        if (n <= 0) rfail(c, "batch size must be positive");
        struct val items = iter_list(c, v), out = list_new(c, 4, false), cur = list_new(c, (size_t)(n < 64 ? n : 64), false);
        for (size_t i = 0; i < items.l.n; i++) {
            if ((int64_t)cur.l.n == n) {
                list_push(c, &out, cur);
                cur = list_new(c, (size_t)(n < 64 ? n : 64), false);
            }
            list_push(c, &cur, L_items(items)[i]);
        }
        if (cur.l.n) {
            if (GIVEN(1) && av[1].t != V_NONE)
                while ((int64_t)cur.l.n < n) list_push(c, &cur, av[1]);
            list_push(c, &out, cur);
        }
        return mk_iter(c, out, "generator");
    }
    case FI_CAPITALIZE: BIND0("capitalize"); return str_map(c, to_str(c, v), 4);
    case FI_CENTER: {
        BIND("center", "width");
        return str_pad(c, to_str(c, v), GIVEN(0) ? want_int(c, av[0], "center") : 80, vundef(NULL), 0);
    }
    case FI_DEFAULT: {
        BIND("default", "default_value", "boolean");
        if (v.t == V_UNDEF || (GIVEN(1) && truthy(av[1]) && !truthy(v))) return GIVEN(0) ? av[0] : VLIT("");
        return v;
    }
    case FI_DICTSORT: {
        BIND("dictsort", "case_sensitive", "by", "reverse");
        if (v.t != V_DICT) rfail(c, "dictsort requires a mapping");
        int pos = 0;
        if (GIVEN(1)) {
            struct val by = want_str(c, av[1], "dictsort");
            if (by.s.n == 3 && !memcmp(by.s.p, "key", 3))
                pos = 0;
            else if (by.s.n == 5 && !memcmp(by.s.p, "value", 5))
                pos = 1;
            else
                rfail(c, "You can only sort by either \"key\" or \"value\"");
        }
        struct val items = dict_items(c, v.d);
        struct val *keys = ar_alloc(&c->ar, (items.l.n + 1) * sizeof(struct val));
        for (size_t i = 0; i < items.l.n; i++) {
            struct val k = L_items(L_items(items)[i])[pos];
            keys[i] = truthy(av[0]) ? k : ignore_case(c, k);
        }
        merge_sort(c, L_items(items), keys, items.l.n, truthy(av[2]));
        return items;
    }
    case FI_ESCAPE: BIND0("escape"); return html_escape(c, v);
    case FI_FORCEESCAPE: {
        BIND0("forceescape");
        struct val s = to_str(c, v);
        s.f &= (uint8_t)~F_SAFE;
        return html_escape(c, s);
    }
    case FI_FIRST: {
        BIND0("first");
        struct val items = iter_list(c, v);
        return items.l.n ? L_items(items)[0] : vhint(c, false, "No first item, sequence was empty.");
    }
    case FI_LAST: {
        BIND0("last");
        if (v.t == V_ITER) rfail(c, "'%s' object is not reversible", v.it->what);
        struct val items = iter_list(c, v);
        return items.l.n ? L_items(items)[items.l.n - 1] : vhint(c, false, "No last item, sequence was empty.");
    }
    case FI_FLOAT: {
        BIND("float", "default");
        struct val def = GIVEN(0) ? av[0] : vfloat(0.0);
        double d;
        if (v.t == V_STR) return py_parse_float(v.s.p, v.s.n, &d) ? vfloat(d) : def;
        if (is_num(v)) return vfloat(num_d(v));
        if (v.t == V_UNDEF) undef_fail(c, v);
        return def;
    }
    case FI_INT: {
        BIND("int", "default", "base");
        struct val def = GIVEN(0) ? av[0] : vint(0);
        int64_t base = GIVEN(1) ? want_int(c, av[1], "int") : 10, r;
        if (v.t == V_STR) {
            if (py_parse_int(v.s.p, v.s.n, (int)base, &r)) return vint(r);
            double d;
            if (py_parse_float(v.s.p, v.s.n, &d)) {
                if (isnan(d)) return def;
                if (isinf(d) || fabs(d) >= 9.2e18) rfail(c, "cannot convert float infinity to integer");
                return vint((int64_t)d);
            }
            return def;
        }
        if (v.t == V_INT || v.t == V_BOOL) return vint(num_i(v));
        if (v.t == V_FLOAT) {
            if (isnan(v.fl)) return def;
            if (isinf(v.fl) || fabs(v.fl) >= 9.2e18) rfail(c, "cannot convert float infinity to integer");
            return vint((int64_t)v.fl);
        }
        if (v.t == V_UNDEF) undef_fail(c, v);
        return def;
    }
    case FI_FORMAT: {
        struct val s = to_str(c, v);
        if (a->npos && a->nkw) rfail(c, "can't handle positional and keyword arguments at the same time");
        if (a->nkw) {
            struct cargs kw = {.kwn = a->kwn, .kwv = a->kwv, .nkw = a->nkw};
            return py_percent(c, s, vdict(build_dict(c, &kw, "format")));
        }
        struct val t = list_new(c, (size_t)a->npos, true);
        for (int i = 0; i < a->npos; i++) list_push(c, &t, a->pos[i]);
        return py_percent(c, s, t);
    }
    case FI_INDENT: return do_indent(c, v, a);
    case FI_ITEMS: {
        BIND0("items");
        if (v.t == V_UNDEF) return mk_iter(c, list_new(c, 1, false), "generator");
        if (v.t != V_DICT) rfail(c, "Can only get item pairs from a mapping.");
        return mk_iter(c, dict_items(c, v.d), "generator");
    }
    case FI_JOIN: {
        BIND("join", "d", "attribute");
        struct val items = iter_list(c, v);
        struct val sep = GIVEN(0) ? to_str(c, av[0]) : VLIT("");
        struct sbuf b = {0};
        for (size_t i = 0; i < items.l.n; i++) {
            if (i) sb_put(c, &b, sep.s.p, sep.s.n);
            struct val x = L_items(items)[i];
            if (GIVEN(1) && av[1].t != V_NONE) x = get_path(c, x, av[1]);
            put_str(c, &b, x);
        }
        return sb_val(&b);
    }
    case FI_LENGTH: BIND0(name); return vint(py_len(c, v));
    case FI_LIST: {
        BIND0("list");
        struct val items = iter_list(c, v);
        if (v.t == V_LIST) items = do_slice(c, items, vnone(), vnone(), vnone()); /* a copy */
        items.f = 0; /* a list, even of a tuple or range */
        return items;
    }
    case FI_LOWER: BIND0("lower"); return str_map(c, to_str(c, v), 1);
    case FI_UPPER: BIND0("upper"); return str_map(c, to_str(c, v), 0);
    case FI_TITLE: {
        BIND0("title");
        /* jinja2: capitalize each piece after [-\s({[<]+ */
        struct val s = to_str(c, v);
        struct sbuf b = {0};
        bool start = true;
        for (size_t i = 0; i < s.s.n;) {
            uint32_t cp;
            int l = u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
            bool sep = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || py_isspace(cp);
            if (sep) {
                sb_cp(c, &b, cp);
                start = true;
            } else {
                sb_cp(c, &b, start ? py_upper(cp) : py_lower(cp));
                start = false;
            }
            i += (size_t)l;
        }
        return sb_val(&b);
    }
    case FI_MAP: return do_map(c, v, a);
    case FI_MAX: return do_minmax(c, v, a, true);
    case FI_MIN: return do_minmax(c, v, a, false);
    case FI_SELECT: return do_select(c, v, a, false, true);
    case FI_REJECT: return do_select(c, v, a, false, false);
    case FI_SELECTATTR: return do_select(c, v, a, true, true);
    case FI_REJECTATTR: return do_select(c, v, a, true, false);
    case FI_REPLACE: {
        BIND("replace", "old", "new", "count");
        if (!GIVEN(0) || !GIVEN(1)) rfail(c, "replace() missing arguments");
        struct val s = to_str(c, v);
        s.f = 0;
        struct val o = to_str(c, av[0]), nw = to_str(c, av[1]);
        int64_t cnt = GIVEN(2) && av[2].t != V_NONE ? want_int(c, av[2], "replace") : -1;
        struct val r = str_replace(c, s, o, nw, cnt);
        r.f = 0;
        return r;
    }
    case FI_REVERSE: {
        BIND0("reverse");
        if (v.t == V_STR) return do_slice(c, v, vnone(), vnone(), vint(-1));
        struct val items = iter_list(c, v);
        struct val out = list_new(c, items.l.n, false);
        for (size_t i = items.l.n; i > 0; i--) list_push(c, &out, L_items(items)[i - 1]);
        if (v.t == V_LIST) return mk_iter(c, out, "list_reverseiterator");
        return out;
    }
    case FI_ROUND: {
        BIND("round", "precision", "method");
        int64_t p = GIVEN(0) ? want_int(c, av[0], "round") : 0;
        const char *method = GIVEN(1) ? cstr(c, want_str(c, av[1], "round")) : "common";
        if (strcmp(method, "common") && strcmp(method, "ceil") && strcmp(method, "floor"))
            rfail(c, "method must be common, ceil or floor");
        if (v.t == V_UNDEF) undef_fail(c, v);
        if (!is_num(v)) rfail(c, "type %s doesn't define __round__ method", type_name(v));
        if (!strcmp(method, "common")) {
            if (v.t != V_FLOAT) { /* round(int, n) stays an int; n < 0 rounds half to even */
                int64_t x = num_i(v);
                if (p >= 0) return vint(x);
                if (p < -18) return vint(0);
                int64_t m = 1;
                for (int64_t k = 0; k < -p; k++) m *= 10;
                int64_t q = x / m, r = x % m;
                if (r < 0) {
                    r += m;
                    q -= 1;
                }
                if (2 * r > m || (2 * r == m && (q & 1))) q += 1;
                int64_t res;
                if (__builtin_mul_overflow(q, m, &res)) rfail(c, "integer overflow");
                return vint(res);
            }
            return vfloat(py_round(v.fl, p));
        }
        double m = pow(10.0, (double)p);
        double x = num_d(v) * m;
        return vfloat((method[0] == 'c' ? ceil(x) : floor(x)) / m);
    }
    case FI_SAFE: {
        BIND0("safe");
        struct val s = to_str(c, v);
        s.f |= F_SAFE;
        return s;
    }
    case FI_SLICE: {
        BIND("slice", "slices", "fill_with");
        int64_t slices = want_int(c, av[0], "slice");
        if (slices <= 0) rfail(c, "slices must be positive");
        if (slices > MAX_RANGE) rfail(c, "too many slices");
        struct val seq = iter_list(c, v), out = list_new(c, (size_t)slices, false);
        int64_t len = (int64_t)seq.l.n, per = len / slices, extra = len % slices, off = 0;
        for (int64_t k = 0; k < slices; k++) {
            int64_t start = off + k * per;
            if (k < extra) off++;
            int64_t end = off + (k + 1) * per;
            struct val t = do_slice(c, seq, vint(start), vint(end), vnone());
            if (GIVEN(1) && av[1].t != V_NONE && k >= extra) list_push(c, &t, av[1]);
            list_push(c, &out, t);
        }
        return mk_iter(c, out, "generator");
    }
    case FI_SORT: {
        BIND("sort", "reverse", "case_sensitive", "attribute");
        struct val items = iter_list(c, v);
        struct val out = do_slice(c, items, vnone(), vnone(), vnone());
        out.f = 0;
        struct val *keys = ar_alloc(&c->ar, (out.l.n + 1) * sizeof(struct val));
        for (size_t i = 0; i < out.l.n; i++) keys[i] = sort_key(c, L_items(out)[i], av[2], truthy(av[1]));
        merge_sort(c, L_items(out), keys, out.l.n, truthy(av[0]));
        return out;
    }
    case FI_STRING: BIND0("string"); return to_str(c, v);
    case FI_SUM: {
        BIND("sum", "attribute", "start");
        struct val items = iter_list(c, v);
        struct val acc = GIVEN(1) ? av[1] : vint(0);
        for (size_t i = 0; i < items.l.n; i++) {
            struct val x = L_items(items)[i];
            if (GIVEN(0) && av[0].t != V_NONE) x = get_path(c, x, av[0]);
            acc = binop(c, OP_ADD, acc, x);
        }
        return acc;
    }
    case FI_TOJSON: return do_tojson(c, v, a);
    case FI_TRIM: {
        BIND("trim", "chars");
        return str_strip(c, to_str(c, v), GIVEN(0) ? av[0] : vnone(), true, true);
    }
    case FI_TRUNCATE: {
        BIND("truncate", "length", "killwords", "end", "leeway");
        struct val s = v;
        if (s.t == V_UNDEF) undef_fail(c, s);
        if (s.t != V_STR) { /* jinja2 takes len() of it, then slices and rsplits a str */
            int64_t length = GIVEN(0) ? want_int(c, av[0], "truncate") : 255;
            if (py_len(c, s) <= length + (GIVEN(3) && av[3].t != V_NONE ? want_int(c, av[3], "truncate") : 5)) return s;
            rfail(c, "'%s' object has no attribute 'rsplit'", type_name(s));
        }
        int64_t length = GIVEN(0) ? want_int(c, av[0], "truncate") : 255;
        struct val end = GIVEN(2) ? want_str(c, av[2], "truncate") : VLIT("...");
        int64_t leeway = GIVEN(3) && av[3].t != V_NONE ? want_int(c, av[3], "truncate") : 5;
        int64_t el = (int64_t)u8_len(end.s.p, end.s.n);
        if (length < el) rfail(c, "expected length >= %lld, got %lld", (long long)el, (long long)length);
        if (leeway < 0) rfail(c, "expected leeway >= 0, got %lld", (long long)leeway);
        if ((int64_t)u8_len(s.s.p, s.s.n) <= length + leeway) return s;
        struct val head = do_slice(c, s, vnone(), vint(length - el), vnone());
        if (!truthy(av[1])) {
            struct val parts = str_split(c, head, VLIT(" "), 1, true);
            head = L_items(parts)[0];
        }
        head.f = 0;
        return str_cat(c, head, end);
    }
    case FI_UNIQUE: {
        BIND("unique", "case_sensitive", "attribute");
        struct val items = iter_list(c, v), out = list_new(c, items.l.n, false);
        struct val seen = list_new(c, items.l.n, false);
        for (size_t i = 0; i < items.l.n; i++) {
            struct val x = L_items(items)[i], k = sort_key(c, x, av[1], truthy(av[0]));
            if ((k.t == V_LIST && !(k.f & F_TUPLE)) || k.t == V_DICT || k.t == V_NS)
                rfail(c, "unhashable type: '%s'", type_name(k));
            bool dup = false;
            charge(c, seen.l.n / 8);
            for (size_t j = 0; j < seen.l.n && !dup; j++) dup = py_eq(c, L_items(seen)[j], k, 0);
            if (!dup) {
                list_push(c, &seen, k);
                list_push(c, &out, x);
            }
        }
        return mk_iter(c, out, "generator");
    }
    case FI_WORDCOUNT: {
        BIND0("wordcount");
        struct val s = to_str(c, v);
        int64_t n = 0;
        bool in = false;
        for (size_t i = 0; i < s.s.n;) {
            uint32_t cp;
            i += (size_t)u8_dec((const unsigned char *)s.s.p + i, s.s.n - i, &cp);
            bool w = py_isword(cp);
            if (w && !in) n++;
            in = w;
        }
        return vint(n);
    }
    default: rfail(c, "No filter named '%s'.", name);
    }
}

static bool apply_test(struct rctx *c, int id, const char *name, struct val v, struct cargs *a)
{
    charge(c, 1);
    struct val arg = a->npos ? a->pos[0] : a->nkw ? a->kwv[0] : vundef(NULL);
    bool has_arg = a->npos + a->nkw > 0;
    switch (id) {
    case TE_BOOLEAN: return v.t == V_BOOL;
    case TE_CALLABLE: return v.t == V_MACRO || v.t == V_FUNC || v.t == V_METHOD || v.t == V_LOOP || v.t == V_UNDEF;
    case TE_DEFINED: return v.t != V_UNDEF;
    case TE_UNDEFINED: return v.t == V_UNDEF;
    case TE_NONE: return v.t == V_NONE;
    case TE_FALSE: return v.t == V_BOOL && !v.b;
    case TE_TRUE: return v.t == V_BOOL && v.b;
    case TE_INTEGER: return v.t == V_INT;
    case TE_FLOAT: return v.t == V_FLOAT;
    case TE_NUMBER: return is_num(v);
    case TE_STRING: return v.t == V_STR;
    case TE_MAPPING: return v.t == V_DICT;
    case TE_SEQUENCE: return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF;
    case TE_ITERABLE: return v.t == V_STR || v.t == V_LIST || v.t == V_DICT || v.t == V_UNDEF || v.t == V_ITER;
    case TE_ESCAPED: return v.t == V_STR && (v.f & F_SAFE);
    case TE_LOWER:
    case TE_UPPER: {
        struct val s = to_str(c, v);
        struct cargs none = {0};
        return truthy(call_str_method(c, s, id == TE_LOWER ? "islower" : "isupper", &none));
    }
    case TE_ODD:
    case TE_EVEN:
    case TE_DIVISIBLEBY: {
        struct val m = id == TE_DIVISIBLEBY ? arg : vint(2);
        if (id == TE_DIVISIBLEBY && !has_arg) rfail(c, "divisibleby() missing required argument 'num'");
        struct val r = binop(c, OP_MOD, v, m);
        bool zero = !truthy(r);
        if (id == TE_ODD) return py_eq(c, r, vint(1), 0);
        return zero;
    }
    case TE_EQ:
    case TE_NE:
    case TE_LT:
    case TE_LE:
    case TE_GT:
    case TE_GE: {
        if (!has_arg) rfail(c, "test '%s' requires an argument", name);
        if (id == TE_EQ) return py_eq(c, v, arg, 0);
        if (id == TE_NE) return !py_eq(c, v, arg, 0);
        int k = py_cmp(c, v, arg, id == TE_LT ? "<" : id == TE_LE ? "<=" : id == TE_GT ? ">" : ">=", 0);
        if (k == 2) return false;
        return id == TE_LT ? k < 0 : id == TE_LE ? k <= 0 : id == TE_GT ? k > 0 : k >= 0;
    }
    case TE_IN:
        if (!has_arg) rfail(c, "test 'in' requires an argument");
        return py_in(c, v, arg);
    case TE_SAMEAS:
        if (!has_arg) rfail(c, "test 'sameas' requires an argument");
        if (v.t != arg.t) return false;
        switch (v.t) {
        case V_NONE:
        case V_UNDEF: return v.t == V_NONE;
        case V_BOOL: return v.b == arg.b;
        case V_INT: return v.i == arg.i && v.i >= -5 && v.i <= 256; /* CPython's small int cache */
        case V_STR: return v.s.p == arg.s.p && v.s.n == arg.s.n;
        case V_LIST: return v.l.buf == arg.l.buf && v.l.n == arg.l.n;
        case V_DICT:
        case V_NS: return v.d == arg.d;
        default: return py_eq(c, v, arg, 0);
        }
    case TE_FILTER: return v.t == V_STR && filter_id(cstr(c, v)) >= 0;
    case TE_TEST: return v.t == V_STR && test_id(cstr(c, v)) >= 0;
    default: rfail(c, "No test named '%s'.", name);
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* JSON in (jansson keeps object keys in insertion order, as Python's json does) */

static struct val from_json(struct rctx *c, json_t *j, int depth)
{
    if (depth > MAX_DATA_DEPTH) rfail(c, "input data nested too deeply (more than %d levels)", MAX_DATA_DEPTH);
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        struct dict *d = dict_new(c, json_object_size(j));
        const char *key;
        json_t *v;
        json_object_foreach(j, key, v)
        {
            if (!loom_utf8_valid(key, strlen(key))) rfail(c, "input data holds a key that is not valid UTF-8");
            /* keys are unique in a json_t: append without searching */
            if (d->n == d->cap) dict_set(c, d, vstr(key, strlen(key)), from_json(c, v, depth + 1));
            else {
                d->k[d->n] = vstr(key, strlen(key));
                d->v[d->n] = from_json(c, v, depth + 1);
                d->n++;
            }
        }
        return vdict(d);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        struct val l = list_new(c, n, false);
        for (size_t i = 0; i < n; i++) list_push(c, &l, from_json(c, json_array_get(j, i), depth + 1));
        return l;
    }
    case JSON_STRING:
        if (!loom_utf8_valid(json_string_value(j), json_string_length(j))) rfail(c, "input data holds a string that is not valid UTF-8");
        charge(c, json_string_length(j) / 4096);
        return vstr(json_string_value(j), json_string_length(j));
    case JSON_INTEGER: return vint((int64_t)json_integer_value(j));
    case JSON_REAL: return vfloat(json_real_value(j));
    case JSON_TRUE: return vbool(true);
    case JSON_FALSE: return vbool(false);
    default: return vnone();
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* The API */

void loom_jinja_options_default(struct loom_jinja_options *o)
{
    o->trim_blocks = true;
    o->lstrip_blocks = true;
    o->keep_trailing_newline = false;
}

/* The part of parsing that may longjmp to err. */
static void parse_template(struct loom_jinja_template *t, struct jerr *err, const char *src, size_t len,
                           const struct loom_jinja_options *opts)
{
    /* newlines: \r\n and \r become \n; one trailing newline goes unless keep_trailing_newline */
    char *s = ar_alloc(&t->ar, len + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (src[i] == '\r') {
            s[n++] = '\n';
            if (i + 1 < len && src[i + 1] == '\n') i++;
        } else {
            s[n++] = src[i];
        }
    }
    if (!opts->keep_trailing_newline && n && s[n - 1] == '\n') n--;
    s[n] = 0;
    struct lexer L = {.s = s, .n = n, .line = 1, .ar = &t->ar, .err = err, .trim = opts->trim_blocks,
                      .lstrip = opts->lstrip_blocks};
    lex(&L);
    struct parser P = {.t = L.toks, .n = L.ntok, .ar = &t->ar, .err = err};
    struct node *root = mk(&P, N_SCOPE, 1);
    root->body = parse_statements(&P, NULL, false, NULL);
    t->root = root;
}

int loom_jinja_parse(const char *src, size_t len, const struct loom_jinja_options *opts,
                     struct loom_jinja_template **out)
{
    struct loom_jinja_options def;
    if (opts)
        def = *opts;
    else
        loom_jinja_options_default(&def);
    *out = NULL;
    if (!loom_utf8_valid(src, len)) return loom_fail(LOOM_EINVAL, "chat template is not valid UTF-8");
    struct jerr *err = calloc(1, sizeof(*err));
    struct loom_jinja_template *t = calloc(1, sizeof(*t));
    if (!err || !t) LOOM_DIE("out of memory");
    t->ar.limit = (size_t)256 << 20;
    t->ar.err = err;
    if (setjmp(err->jb)) {
        int rc = loom_fail(LOOM_EINVAL, "%s", err->msg);
        arena_free(&t->ar);
        free(t);
        free(err);
        return rc;
    }
    parse_template(t, err, src, len, &def);
    t->ar.err = NULL; /* the template arena is not grown after parsing */
    free(err);
    *out = t;
    return 0;
}

void loom_jinja_free(struct loom_jinja_template *t)
{
    if (!t) return;
    arena_free(&t->ar);
    free(t);
}

/* The part of rendering that may longjmp to c->err. */
static void render_template(struct rctx *c, const struct loom_jinja_template *t, json_t *vars, char **out,
                            size_t *out_len)
{
    struct scope *root = scope_new(c, NULL);
    if (vars) {
        const char *key;
        json_t *v;
        json_object_foreach(vars, key, v) scope_set(c, root, key, from_json(c, v, 0));
    }
    struct sbuf b = {0};
    exec_body(c, &t->root->body, root, &b);
    char *res = malloc(b.n + 1);
    if (!res) LOOM_DIE("out of memory");
    if (b.n) memcpy(res, b.p, b.n);
    res[b.n] = 0;
    *out = res;
    if (out_len) *out_len = b.n;
}

int loom_jinja_render(const struct loom_jinja_template *t, json_t *vars, long long now_unix,
                      const struct loom_jinja_limits *limits, char **out, size_t *out_len)
{
    *out = NULL;
    if (out_len) *out_len = 0;
    if (vars && !json_is_object(vars)) return loom_fail(LOOM_EINVAL, "template variables must be a JSON object");
    struct rctx *c = calloc(1, sizeof(*c));
    if (!c) LOOM_DIE("out of memory");
    c->max_output = limits && limits->max_output ? limits->max_output : (size_t)32 << 20;
    c->ar.limit = limits && limits->max_memory ? limits->max_memory : (size_t)256 << 20;
    c->max_steps = limits && limits->max_steps ? limits->max_steps : 50000000ull;
    c->max_depth = limits && limits->max_depth ? limits->max_depth : 400;
    c->ar.err = &c->err;
    c->now = now_unix;
    if (setjmp(c->err.jb)) {
        int rc = loom_fail(LOOM_EINVAL, "%s", c->err.msg);
        arena_free(&c->ar);
        free(c);
        return rc;
    }
    render_template(c, t, vars, out, out_len);
    arena_free(&c->ar);
    free(c);
    return 0;
}

int loom_jinja_render_string(const char *src, json_t *vars, char **out, size_t *out_len)
{
    struct loom_jinja_template *t;
    int rc = loom_jinja_parse(src, strlen(src), NULL, &t);
    if (rc) return rc;
    rc = loom_jinja_render(t, vars, 0, NULL, out, out_len);
    loom_jinja_free(t);
    return rc;
}
