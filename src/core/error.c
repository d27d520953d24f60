/* error.c: thread-local failure messages, aborts, and checked allocation. */
#include "core/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *loom_last_error(void)
{
    return last_error;
}

void loom_clear_error(void)
{
    last_error[0] = 0;
}

const char *loom_status_name(int status)
{
    switch (status) {
    case LOOM_OK: return "ok";
    case LOOM_EINVAL: return "invalid argument";
    case LOOM_EIO: return "i/o error";
    case LOOM_ENOMEM: return "out of memory";
    case LOOM_EUNSUPPORTED: return "unsupported";
    case LOOM_ENOTFOUND: return "not found";
    case LOOM_EFULL: return "full";
    case LOOM_ETOOLONG: return "too long";
    }
    return "unknown status";
}

int loom_fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

int loom_fail_context(int status, const char *fmt, ...)
{
    char prefix[512], old[sizeof(last_error)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof(old));
    /* prefix + ": " + old message, truncated to the buffer */
    size_t n = strlen(prefix);
    if (n > sizeof(last_error) - 3) n = sizeof(last_error) - 3;
    memcpy(last_error, prefix, n);
    memcpy(last_error + n, ": ", 2);
    size_t room = sizeof(last_error) - n - 3, m = strlen(old);
    if (m > room) m = room;
    memcpy(last_error + n + 2, old, m);
    last_error[n + 2 + m] = 0;
    return status;
}

void loom_die(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "loom: fatal: %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

void *loom_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) LOOM_DIE("out of host memory allocating %zu bytes", n);
    return p;
}

void *loom_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) LOOM_DIE("out of host memory allocating %zu x %zu bytes", n, size);
    return p;
}

void *loom_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) LOOM_DIE("out of host memory reallocating to %zu bytes", n);
    return q;
}

char *loom_strdup(const char *s)
{
    return loom_strndup(s, strlen(s));
}

char *loom_strndup(const char *s, size_t n)
{
    char *p = loom_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}
