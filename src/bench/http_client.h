/*
 * http_client.h: a minimal HTTP/1.1 client over plain sockets, for `loom bench serve`.
 *
 * A request is a state machine on one non-blocking socket (connect, send, read headers, read body),
 * driven by the caller's poll() loop, so one thread can hold thousands of streaming requests and
 * timestamp every byte when it arrives. The body is handed over de-chunked (Transfer-Encoding: chunked,
 * Content-Length, or until close); loom_sse parses a body as Server-Sent Events. Every request sends
 * "Connection: close" (one connection per request, no keep-alive).
 *
 * Does not do: TLS (http:// only), redirects, proxies, request bodies larger than memory, 1xx responses.
 * Time-outs are the caller's: it knows each request's deadline and closes what has run past it.
 */
#ifndef LOOM_BENCH_HTTP_CLIENT_H
#define LOOM_BENCH_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

struct addrinfo;

/* http://HOST[:PORT][/PREFIX]; IPv6 hosts in brackets. */
struct loom_http_url {
    char host[256];      /* without brackets */
    char port[8];        /* "80" when absent */
    char prefix[512];    /* path prefix without a trailing '/', "" for none */
    char authority[300]; /* the Host header: host[:port] as written */
};

/* LOOM_EINVAL naming the URL when it is not http://host[:port][/path]. */
int loom_http_parse_url(const char *url, struct loom_http_url *u);

/* getaddrinfo for the URL's host and port (TCP); the caller frees with freeaddrinfo. LOOM_EIO on failure. */
int loom_http_resolve(const struct loom_http_url *u, struct addrinfo **res);

/* "METHOD prefix+path HTTP/1.1" with Host, Connection: close, Content-Length (when body), the extra
 * header lines (each ending in "\r\n", may be NULL) and the body. Returns a new buffer, its length in *len. */
char *loom_http_build_request(const char *method, const struct loom_http_url *u, const char *path,
                              const char *extra_headers, const char *body, size_t body_len, size_t *len);

enum loom_http_state {
    LOOM_HTTP_CONNECTING = 0,
    LOOM_HTTP_SENDING,
    LOOM_HTTP_HEADERS,
    LOOM_HTTP_BODY,
    LOOM_HTTP_DONE,   /* the whole response arrived */
    LOOM_HTTP_FAILED, /* see error */
};

/* Called with each piece of the decoded body as it arrives; now = the loom_now() of its recv(). */
typedef void (*loom_http_body_fn)(void *user, const char *data, size_t len, double now);

struct loom_http_conn {
    int fd;                       /* -1 when closed */
    enum loom_http_state state;
    char *out;                    /* the request bytes (owned) */
    size_t out_len, out_sent;
    char *in;                     /* unparsed received bytes: headers, then partial chunk-size lines */
    size_t in_len, in_cap;
    int status;                   /* HTTP status code, 0 until the headers are in */
    char content_type[128];
    bool chunked;
    long long content_left;       /* body bytes still expected; -1 = until the server closes */
    int chunk_state;              /* chunked decoder: 0 size line, 1 data, 2 CRLF after data, 3 trailers */
    long long chunk_left;
    long long body_bytes;         /* decoded body bytes so far */
    double first_byte_time;       /* loom_now() of the first response byte (0 before) */
    double last_activity;         /* loom_now() of the last progress (connect, send, recv) */
    loom_http_body_fn on_body;
    void *user;
    char error[256];              /* LOOM_HTTP_FAILED: why, one line */
};

/* Starts connecting to ai (non-blocking) and takes ownership of req[len]. On an immediate failure the
 * state is LOOM_HTTP_FAILED with error set (returns -1); otherwise returns 0. */
int loom_http_conn_start(struct loom_http_conn *c, const struct addrinfo *ai, char *req, size_t len,
                         loom_http_body_fn on_body, void *user, double now);

/* The poll() events the connection waits for (POLLOUT while connecting/sending, else POLLIN). */
short loom_http_conn_events(const struct loom_http_conn *c);

/* Makes whatever progress the socket allows (call when poll reports it ready, with any revents).
 * Returns the state; DONE and FAILED are final and close the socket. */
enum loom_http_state loom_http_conn_advance(struct loom_http_conn *c, double now);

/* Fails the connection with a message (e.g. a time-out the caller detected) and closes its socket. */
void loom_http_conn_fail(struct loom_http_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Closes the socket and frees the buffers (the struct may be reused after). */
void loom_http_conn_free(struct loom_http_conn *c);

/* One blocking request with an overall deadline: the whole response body in *body (NUL-terminated,
 * caller frees) and the status in *status. Returns 0 when a complete response arrived (any status),
 * LOOM_EIO with the reason otherwise (refused, timed out, cut short). */
int loom_http_fetch(const char *url, const char *method, const char *body, const char *extra_headers,
                    double timeout_s, int *status, char **resp, size_t *resp_len);

/* ---- Server-Sent Events: "data:" lines joined by '\n', dispatched at each blank line. ---- */

typedef void (*loom_sse_event_fn)(void *user, const char *data, size_t len);

struct loom_sse {
    char *line;     /* the current, incomplete line */
    size_t line_len, line_cap;
    char *data;     /* the current event's data */
    size_t data_len, data_cap;
    bool has_data;
    bool after_cr;  /* the last byte was '\r' (a following '\n' belongs to the same line end) */
};

void loom_sse_init(struct loom_sse *s);
/* Parses more bytes, calling fn for every completed event (the data without its trailing newline). */
void loom_sse_feed(struct loom_sse *s, const char *p, size_t n, loom_sse_event_fn fn, void *user);
/* At the end of the stream: dispatches a last event that had data but no blank line after it. */
void loom_sse_finish(struct loom_sse *s, loom_sse_event_fn fn, void *user);
void loom_sse_free(struct loom_sse *s);

#endif
