/*
 * error.h: loom's three kinds of failure, kept apart.
 *   - a broken invariant: LOOM_ASSERT (aborts with file:line, also in release builds);
 *   - out of host memory or a dead device: loom_die (aborts with a message);
 *   - bad input or a full resource: return loom_fail(LOOM_E..., "message naming the value and the fix").
 * loom_fail records a one-line message in thread-local storage (read with loom_last_error) and returns
 * the status, so `return loom_fail(LOOM_EINVAL, "...")` is the idiom.
 */
#ifndef LOOM_CORE_ERROR_H
#define LOOM_CORE_ERROR_H

#include "loom.h"
#include <stddef.h>

#if defined(__GNUC__)
#define LOOM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define LOOM_NORETURN __attribute__((noreturn))
#else
#define LOOM_PRINTF(a, b)
#define LOOM_NORETURN
#endif

int loom_fail(int status, const char *fmt, ...) LOOM_PRINTF(2, 3);
/* Prefix the current message with context: "loading model.safetensors: <old message>". */
int loom_fail_context(int status, const char *fmt, ...) LOOM_PRINTF(2, 3);
void loom_clear_error(void);

void loom_die(const char *file, int line, const char *fmt, ...) LOOM_PRINTF(3, 4) LOOM_NORETURN;
#define LOOM_DIE(...) loom_die(__FILE__, __LINE__, __VA_ARGS__)
#define LOOM_ASSERT(x)                                                                                   \
    do {                                                                                                 \
        if (!(x)) loom_die(__FILE__, __LINE__, "assertion failed: %s", #x);                              \
    } while (0)

/* Allocation that never returns NULL (aborts on host OOM). */
void *loom_malloc(size_t n);
void *loom_calloc(size_t n, size_t size);
void *loom_realloc(void *p, size_t n);
char *loom_strdup(const char *s);
char *loom_strndup(const char *s, size_t n);

#endif
