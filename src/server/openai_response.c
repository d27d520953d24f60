/*
 * openai_response.c: small pieces of the API's responses: a growable byte buffer, SSE framing
 * (`data: <json>\n\n`, `data: [DONE]\n\n`), the usage object, request ids, and UTF-8 repair so that
 * any token text can become a JSON string. The completion and chat objects themselves are built in
 * openai.c, next to the request state they read.
 */
#include "server/openai.h"

#include "core/error.h"
#include "core/utf8.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

void loom_buf_append(struct loom_buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        b->data = loom_realloc(b->data, cap);
        b->cap = cap;
    }
    if (n) memcpy(b->data + b->len, data, n);
    b->len += n;
    b->data[b->len] = 0;
}

void loom_buf_appendf(struct loom_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char tmp[512];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(tmp)) {
        loom_buf_append(b, tmp, (size_t)n);
        return;
    }
    char *big = loom_malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    loom_buf_append(b, big, (size_t)n);
    free(big);
}

void loom_buf_free(struct loom_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

#define DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))

void loom_sse_append_json(struct loom_buf *b, const json_t *json)
{
    loom_buf_append(b, "data: ", 6);
    for (;;) {
        size_t room = b->cap > b->len + 1 ? b->cap - b->len - 1 : 0;
        size_t need = json_dumpb(json, b->data ? b->data + b->len : NULL, room, DUMP_FLAGS);
        if (need == 0) LOOM_DIE("json_dumpb failed while writing an SSE event");
        if (need <= room) {
            b->len += need;
            break;
        }
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + need + 3) cap *= 2;
        b->data = loom_realloc(b->data, cap);
        b->cap = cap;
    }
    loom_buf_append(b, "\n\n", 2);
}

void loom_sse_append_done(struct loom_buf *b)
{
    loom_buf_append(b, "data: [DONE]\n\n", 14);
}

json_t *loom_api_usage_json(int prompt_tokens, int completion_tokens, int cached_tokens)
{
    json_t *u = json_object();
    json_object_set_new(u, "prompt_tokens", json_integer(prompt_tokens));
    json_object_set_new(u, "completion_tokens", json_integer(completion_tokens));
    json_object_set_new(u, "total_tokens", json_integer(prompt_tokens + completion_tokens));
    json_t *details = json_object();
    json_object_set_new(details, "cached_tokens", json_integer(cached_tokens));
    json_object_set_new(u, "prompt_tokens_details", details);
    return u;
}

void loom_api_make_id(char *buf, size_t size, const char *prefix)
{
    unsigned char r[16];
    size_t got = 0;
    while (got < sizeof(r)) {
        ssize_t n = getrandom(r + got, sizeof(r) - got, 0);
        if (n <= 0) LOOM_DIE("getrandom failed");
        got += (size_t)n;
    }
    int off = snprintf(buf, size, "%s", prefix);
    for (size_t i = 0; i < sizeof(r) && off + 2 < (int)size; i++)
        off += snprintf(buf + off, size - off, "%02x", r[i]);
}

/* ---------------------------------------------------------------------------------------------- */
/* UTF-8 */

char *loom_api_utf8_repair(const char *s, size_t len, size_t *out_len)
{
    struct loom_buf b = {0};
    loom_buf_append(&b, "", 0);
    size_t i = 0, run = 0;
    while (i < len) {
        uint32_t cp;
        int k = loom_utf8_decode(s + i, len - i, &cp);
        if (k > 0) {
            i += (size_t)k;
            run += (size_t)k;
            continue;
        }
        loom_buf_append(&b, s + i - run, run);
        run = 0;
        loom_buf_append(&b, "\xEF\xBF\xBD", 3);
        i++;
    }
    loom_buf_append(&b, s + i - run, run);
    if (out_len) *out_len = b.len;
    return b.data;
}

json_t *loom_api_json_string(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j) return j;
    size_t n;
    char *fixed = loom_api_utf8_repair(s, len, &n);
    j = json_stringn(fixed, n);
    free(fixed);
    if (!j) LOOM_DIE("json_stringn failed on repaired UTF-8");
    return j;
}

size_t loom_api_utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) n++;
    return n;
}
