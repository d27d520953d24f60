/*
 * test.h: the unit-test harness (after redis' testhelp.h). Each test file is one program:
 *     int main(void) { ...; CHECK(x == 1); CHECK_EQ_INT(a, b); ...; return test_report(); }
 * test_report prints "N passed, N failed" and returns the exit status (0 or 1). test_skip() exits 77.
 * Data from ../shared is found through test_shared("models/llama-tiny") (env LOOM_SHARED).
 */
#ifndef LOOM_TEST_H
#define LOOM_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed, test_failed;

#define CHECK(cond)                                                                                      \
    do {                                                                                                 \
        if (cond) {                                                                                      \
            test_passed++;                                                                               \
        } else {                                                                                         \
            test_failed++;                                                                               \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                               \
        }                                                                                                \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                             \
    do {                                                                                                 \
        if (cond) {                                                                                      \
            test_passed++;                                                                               \
        } else {                                                                                         \
            test_failed++;                                                                               \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                               \
            fprintf(stderr, __VA_ARGS__);                                                                \
            fputc('\n', stderr);                                                                         \
        }                                                                                                \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                               \
    do {                                                                                                 \
        long long _a = (long long)(a), _b = (long long)(b);                                              \
        CHECK_MSG(_a == _b, "%lld != %lld", _a, _b);                                                     \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                                               \
    do {                                                                                                 \
        const char *_a = (a), *_b = (b);                                                                 \
        CHECK_MSG(_a && _b && !strcmp(_a, _b), "\"%s\" != \"%s\"", _a ? _a : "(null)", _b ? _b : "(null)"); \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                                            \
    do {                                                                                                 \
        double _a = (a), _b = (b);                                                                       \
        CHECK_MSG(fabs(_a - _b) <= (tol), "%.9g vs %.9g (tol %g)", _a, _b, (double)(tol));               \
    } while (0)

static inline const char *test_shared(const char *rel)
{
    static char buf[8][4096];
    static int k;
    const char *root = getenv("LOOM_SHARED");
    if (!root) root = "../shared";
    char *b = buf[k++ & 7];
    snprintf(b, sizeof(buf[0]), "%s/%s", root, rel);
    return b;
}

static inline void test_skip(const char *why)
{
    printf("SKIP: %s\n", why);
    exit(77);
}

static inline int test_report(void)
{
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

#endif
