/*
 * test_bench_http.c: the pieces of `loom bench serve`'s HTTP client that need no server: URL parsing,
 * request building, and the Server-Sent Events parser fed in every possible split of its input.
 */
#include "bench/http_client.h"
#include "test.h"

#include <string.h>

static void test_url(void)
{
    struct loom_http_url u;
    CHECK(loom_http_parse_url("http://127.0.0.1:8000", &u) == 0);
    CHECK_EQ_STR(u.host, "127.0.0.1");
    CHECK_EQ_STR(u.port, "8000");
    CHECK_EQ_STR(u.prefix, "");
    CHECK_EQ_STR(u.authority, "127.0.0.1:8000");
    CHECK(loom_http_parse_url("http://localhost/api/", &u) == 0);
    CHECK_EQ_STR(u.host, "localhost");
    CHECK_EQ_STR(u.port, "80");
    CHECK_EQ_STR(u.prefix, "/api");
    CHECK(loom_http_parse_url("http://[::1]:9000/x", &u) == 0);
    CHECK_EQ_STR(u.host, "::1");
    CHECK_EQ_STR(u.port, "9000");
    CHECK_EQ_STR(u.authority, "[::1]:9000");
    CHECK_EQ_STR(u.prefix, "/x");
    CHECK(loom_http_parse_url("HTTP://h:1", &u) == 0);
    CHECK(loom_http_parse_url("https://h", &u) < 0);
    CHECK(loom_http_parse_url("127.0.0.1:8000", &u) < 0);
    CHECK(loom_http_parse_url("http://", &u) < 0);
    CHECK(loom_http_parse_url("http://h:0", &u) < 0);
    CHECK(loom_http_parse_url("http://h:65536", &u) < 0);
    CHECK(loom_http_parse_url("http://h:80x", &u) < 0);
    CHECK(loom_http_parse_url("http://[::1", &u) < 0);

    size_t len;
    CHECK(loom_http_parse_url("http://h:81/pre", &u) == 0);
    char *req = loom_http_build_request("POST", &u, "/v1/completions", "X-A: b\r\n", "{}", 2, &len);
    const char *head = "POST /pre/v1/completions HTTP/1.1\r\nHost: h:81\r\n";
    CHECK(!strncmp(req, head, strlen(head)));
    CHECK(strstr(req, "Content-Length: 2\r\n") != NULL);
    CHECK(strstr(req, "Connection: close\r\n") != NULL);
    CHECK(strstr(req, "X-A: b\r\n\r\n{}") != NULL);
    CHECK_EQ_INT(len, strlen(req));
    free(req);
}

struct events {
    char got[16][128];
    int n;
};

static void on_ev(void *user, const char *data, size_t len)
{
    struct events *e = user;
    if (e->n < 16) {
        snprintf(e->got[e->n], sizeof(e->got[0]), "%.*s", (int)len, data);
        CHECK_EQ_INT(strlen(data), len); /* NUL-terminated too */
    }
    e->n++;
}

static void test_sse(void)
{
    /* LF, CRLF and CR line ends; a comment; a multi-line event; fields that do not matter; no space */
    const char *stream = ": ping\n\n"
                         "data: {\"a\":1}\n\n"
                         "data: {\"b\":2}\r\n\r\n"
                         "event: x\nid: 7\ndata: line1\ndata: line2\n\n"
                         "data:nospace\r\r"
                         "data: [DONE]\n\n"
                         "data: tail";
    const char *want[] = {"{\"a\":1}", "{\"b\":2}", "line1\nline2", "nospace", "[DONE]", "tail"};
    size_t n = strlen(stream);
    /* every split point, and byte-by-byte */
    for (size_t cut = 0; cut <= n; cut++) {
        struct loom_sse s;
        struct events e = {0};
        loom_sse_init(&s);
        loom_sse_feed(&s, stream, cut, on_ev, &e);
        loom_sse_feed(&s, stream + cut, n - cut, on_ev, &e);
        CHECK_EQ_INT(e.n, 5); /* "tail" has no blank line after it yet */
        loom_sse_finish(&s, on_ev, &e);
        CHECK_EQ_INT(e.n, 6);
        for (int i = 0; i < 6 && i < e.n; i++) CHECK_EQ_STR(e.got[i], want[i]);
        loom_sse_free(&s);
    }
    struct loom_sse s;
    struct events e = {0};
    loom_sse_init(&s);
    for (size_t i = 0; i < n; i++) loom_sse_feed(&s, stream + i, 1, on_ev, &e);
    loom_sse_finish(&s, on_ev, &e);
    CHECK_EQ_INT(e.n, 6);
    CHECK_EQ_STR(e.got[2], "line1\nline2");
    loom_sse_free(&s);
    /* an empty "data:" line still makes an event, with empty data */
    loom_sse_init(&s);
    memset(&e, 0, sizeof(e));
    loom_sse_feed(&s, "data:\n\n\n\n", 9, on_ev, &e);
    CHECK_EQ_INT(e.n, 1);
    CHECK_EQ_STR(e.got[0], "");
    loom_sse_free(&s);
}

int main(void)
{
    test_url();
    test_sse();
    return test_report();
}
