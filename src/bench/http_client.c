/* http_client.c: a non-blocking HTTP/1.1 request state machine, a blocking fetch on top of it, and an
 * SSE parser (see http_client.h). */
#include "bench/http_client.h"
#include "core/error.h"
#include "core/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define HTTP_MAX_HEADER (64 * 1024)

/* ------------------------------------------------------------------------------------------------ */
/* URLs and requests */

int loom_http_parse_url(const char *url, struct loom_http_url *u)
{
    memset(u, 0, sizeof(*u));
    const char *p = url;
    if (strncasecmp(p, "http://", 7)) {
        if (!strncasecmp(p, "https://", 8))
            return loom_fail(LOOM_EINVAL, "URL '%s': https is not supported, use http://", url);
        return loom_fail(LOOM_EINVAL, "URL '%s': expected http://HOST[:PORT][/PATH]", url);
    }
    p += 7;
    const char *auth = p;
    const char *host_end;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (!close) return loom_fail(LOOM_EINVAL, "URL '%s': unclosed '[' in the IPv6 host", url);
        if ((size_t)(close - p - 1) >= sizeof(u->host)) return loom_fail(LOOM_EINVAL, "URL '%s': host too long", url);
        memcpy(u->host, p + 1, (size_t)(close - p - 1));
        host_end = close + 1;
    } else {
        host_end = p;
        while (*host_end && *host_end != ':' && *host_end != '/') host_end++;
        if ((size_t)(host_end - p) >= sizeof(u->host)) return loom_fail(LOOM_EINVAL, "URL '%s': host too long", url);
        memcpy(u->host, p, (size_t)(host_end - p));
    }
    if (!u->host[0]) return loom_fail(LOOM_EINVAL, "URL '%s': no host", url);
    p = host_end;
    strcpy(u->port, "80");
    if (*p == ':') {
        p++;
        const char *ps = p;
        while (isdigit((unsigned char)*p)) p++;
        long port = (p > ps && p - ps <= 5) ? strtol(ps, NULL, 10) : -1;
        if (port < 1 || port > 65535 || (*p && *p != '/'))
            return loom_fail(LOOM_EINVAL, "URL '%s': bad port (expected 1..65535)", url);
        snprintf(u->port, sizeof(u->port), "%ld", port);
    } else if (*p && *p != '/') {
        return loom_fail(LOOM_EINVAL, "URL '%s': expected http://HOST[:PORT][/PATH]", url);
    }
    if ((size_t)(p - auth) >= sizeof(u->authority)) return loom_fail(LOOM_EINVAL, "URL '%s': host too long", url);
    memcpy(u->authority, auth, (size_t)(p - auth));
    size_t plen = strlen(p);
    while (plen && p[plen - 1] == '/') plen--;
    if (plen >= sizeof(u->prefix)) return loom_fail(LOOM_EINVAL, "URL '%s': path too long", url);
    memcpy(u->prefix, p, plen);
    u->prefix[plen] = 0;
    return 0;
}

int loom_http_resolve(const struct loom_http_url *u, struct addrinfo **res)
{
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = getaddrinfo(u->host, u->port, &hints, res);
    if (rc) return loom_fail(LOOM_EIO, "cannot resolve %s:%s: %s", u->host, u->port, gai_strerror(rc));
    return 0;
}

char *loom_http_build_request(const char *method, const struct loom_http_url *u, const char *path,
                              const char *extra_headers, const char *body, size_t body_len, size_t *len)
{
    if (!extra_headers) extra_headers = "";
    if (!path || !*path) path = "/";
    const char *slash = path[0] == '/' ? "" : "/";
    size_t cap = strlen(method) + strlen(u->prefix) + strlen(path) + strlen(u->authority) + strlen(extra_headers) +
                 body_len + 256;
    char *buf = loom_malloc(cap);
    int n = snprintf(buf, cap, "%s %s%s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: loom-bench/" LOOM_VERSION
                               "\r\nAccept: */*\r\nConnection: close\r\n",
                     method, u->prefix, slash, path, u->authority);
    if (body) n += snprintf(buf + n, cap - (size_t)n, "Content-Length: %zu\r\n", body_len);
    n += snprintf(buf + n, cap - (size_t)n, "%s\r\n", extra_headers);
    LOOM_ASSERT((size_t)n + body_len < cap);
    if (body && body_len) memcpy(buf + n, body, body_len);
    *len = (size_t)n + (body ? body_len : 0);
    buf[*len] = 0; /* also a C string, for logs and tests */
    return buf;
}

/* ------------------------------------------------------------------------------------------------ */
/* The connection state machine */

static void conn_close_fd(struct loom_http_conn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
}

void loom_http_conn_fail(struct loom_http_conn *c, const char *fmt, ...)
{
    if (c->state == LOOM_HTTP_DONE || c->state == LOOM_HTTP_FAILED) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    c->state = LOOM_HTTP_FAILED;
    conn_close_fd(c);
}

static void conn_done(struct loom_http_conn *c)
{
    c->state = LOOM_HTTP_DONE;
    conn_close_fd(c);
}

int loom_http_conn_start(struct loom_http_conn *c, const struct addrinfo *ai, char *req, size_t len,
                         loom_http_body_fn on_body, void *user, double now)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->out = req;
    c->out_len = len;
    c->on_body = on_body;
    c->user = user;
    c->content_left = -1;
    c->last_activity = now;
    c->state = LOOM_HTTP_CONNECTING;
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
        loom_http_conn_fail(c, "socket: %s", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->fd = fd;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        c->state = LOOM_HTTP_SENDING;
    } else if (errno != EINPROGRESS) {
        loom_http_conn_fail(c, "connect: %s", strerror(errno));
        return -1;
    }
    return 0;
}

short loom_http_conn_events(const struct loom_http_conn *c)
{
    switch (c->state) {
    case LOOM_HTTP_CONNECTING:
    case LOOM_HTTP_SENDING:
        return POLLOUT;
    case LOOM_HTTP_HEADERS:
    case LOOM_HTTP_BODY:
        return POLLIN;
    default:
        return 0;
    }
}

static void in_append(struct loom_http_conn *c, const char *p, size_t n)
{
    if (c->in_len + n + 1 > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        while (cap < c->in_len + n + 1) cap *= 2;
        c->in = loom_realloc(c->in, cap);
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    c->in[c->in_len] = 0;
}

static void in_consume(struct loom_http_conn *c, size_t n)
{
    memmove(c->in, c->in + n, c->in_len - n);
    c->in_len -= n;
    if (c->in) c->in[c->in_len] = 0;
}

static void body_emit(struct loom_http_conn *c, const char *p, size_t n, double now)
{
    if (!n) return;
    c->body_bytes += (long long)n;
    if (c->on_body) c->on_body(c->user, p, n, now);
}

/* Parses the header block in c->in (complete, ending in an empty line at hdr_len). */
static int parse_headers(struct loom_http_conn *c, size_t hdr_len)
{
    char *h = c->in;
    if (strncmp(h, "HTTP/1.", 7) || hdr_len < 12 || !isdigit((unsigned char)h[9])) {
        loom_http_conn_fail(c, "not an HTTP/1.x response: '%.40s'", h);
        return -1;
    }
    c->status = atoi(h + 9);
    char *line = strstr(h, "\r\n");
    while (line && (size_t)(line - h) + 2 < hdr_len) {
        line += 2;
        char *eol = strstr(line, "\r\n");
        if (!eol) break;
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t klen = (size_t)(colon - line);
            char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t')) v++;
            size_t vlen = (size_t)(eol - v);
            while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
            if (klen == 17 && !strncasecmp(line, "transfer-encoding", klen)) {
                /* "chunked" must be the last coding; anything else we read until close */
                if (vlen >= 7 && !strncasecmp(v + vlen - 7, "chunked", 7)) c->chunked = true;
            } else if (klen == 14 && !strncasecmp(line, "content-length", klen)) {
                char tmp[32];
                size_t k = vlen < sizeof(tmp) - 1 ? vlen : sizeof(tmp) - 1;
                memcpy(tmp, v, k);
                tmp[k] = 0;
                char *end;
                long long cl = strtoll(tmp, &end, 10);
                if (end == tmp || *end || cl < 0) {
                    loom_http_conn_fail(c, "bad Content-Length '%s'", tmp);
                    return -1;
                }
                c->content_left = cl;
            } else if (klen == 12 && !strncasecmp(line, "content-type", klen)) {
                size_t k = vlen < sizeof(c->content_type) - 1 ? vlen : sizeof(c->content_type) - 1;
                memcpy(c->content_type, v, k);
                c->content_type[k] = 0;
            }
        }
        line = eol;
    }
    if (c->chunked) c->content_left = -1;
    return 0;
}

/* Decodes chunked body bytes; leaves an incomplete size line in c->in. */
static void feed_chunked(struct loom_http_conn *c, const char *p, size_t n, double now)
{
    while (n > 0 && c->state == LOOM_HTTP_BODY) {
        if (c->chunk_state == 1) { /* data */
            size_t k = (size_t)c->chunk_left < n ? (size_t)c->chunk_left : n;
            body_emit(c, p, k, now);
            p += k;
            n -= k;
            c->chunk_left -= (long long)k;
            if (!c->chunk_left) c->chunk_state = 2;
            continue;
        }
        /* line-oriented states: size line, CRLF after data, trailers */
        const char *nl = memchr(p, '\n', n);
        size_t take = nl ? (size_t)(nl - p) + 1 : n;
        in_append(c, p, take);
        p += take;
        n -= take;
        if (!nl) {
            if (c->in_len > 4096) loom_http_conn_fail(c, "chunked encoding: line too long");
            return;
        }
        char *line = c->in;
        size_t len = c->in_len;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (c->chunk_state == 2) {
            if (len) {
                loom_http_conn_fail(c, "chunked encoding: missing CRLF after a chunk");
                return;
            }
            c->chunk_state = 0;
        } else if (c->chunk_state == 0) {
            char *end;
            errno = 0;
            long long sz = strtoll(line, &end, 16);
            if (end == line || errno || sz < 0 || (*end && *end != ';' && *end != ' ' && *end != '\t')) {
                loom_http_conn_fail(c, "chunked encoding: bad chunk size '%.20s'", line);
                return;
            }
            if (sz == 0) c->chunk_state = 3;
            else {
                c->chunk_left = sz;
                c->chunk_state = 1;
            }
        } else { /* trailers end with an empty line */
            if (!len) {
                in_consume(c, c->in_len);
                conn_done(c);
                return;
            }
        }
        in_consume(c, c->in_len);
    }
}

static void feed_body(struct loom_http_conn *c, const char *p, size_t n, double now)
{
    if (c->chunked) {
        feed_chunked(c, p, n, now);
        return;
    }
    if (c->content_left >= 0) {
        size_t k = (long long)n < c->content_left ? n : (size_t)c->content_left;
        body_emit(c, p, k, now);
        c->content_left -= (long long)k;
        if (!c->content_left) conn_done(c);
        return;
    }
    body_emit(c, p, n, now);
}

static void on_bytes(struct loom_http_conn *c, const char *p, size_t n, double now)
{
    if (!c->first_byte_time) c->first_byte_time = now;
    if (c->state == LOOM_HTTP_HEADERS) {
        size_t old = c->in_len;
        in_append(c, p, n);
        /* search from a little before the new bytes for the blank line */
        size_t from = old > 3 ? old - 3 : 0;
        char *end = strstr(c->in + from, "\r\n\r\n");
        if (!end) {
            if (c->in_len > HTTP_MAX_HEADER) loom_http_conn_fail(c, "response headers over %d bytes", HTTP_MAX_HEADER);
            return;
        }
        size_t hdr_len = (size_t)(end - c->in) + 4;
        end[2] = 0; /* keep the last header's CRLF for the parser */
        if (parse_headers(c, hdr_len - 2)) return;
        size_t rest = c->in_len - hdr_len;
        char *tail = NULL;
        if (rest) {
            tail = loom_malloc(rest);
            memcpy(tail, c->in + hdr_len, rest);
        }
        c->in_len = 0;
        c->state = LOOM_HTTP_BODY;
        if (!c->chunked && c->content_left == 0) conn_done(c);
        else if (rest) feed_body(c, tail, rest, now);
        free(tail);
        return;
    }
    if (c->state == LOOM_HTTP_BODY) feed_body(c, p, n, now);
}

static void on_eof(struct loom_http_conn *c)
{
    if (c->state == LOOM_HTTP_HEADERS) {
        if (c->first_byte_time) loom_http_conn_fail(c, "connection closed in the middle of the response headers");
        else loom_http_conn_fail(c, "connection closed before any response");
    } else if (c->state == LOOM_HTTP_BODY) {
        if (c->chunked) loom_http_conn_fail(c, "connection closed before the end of the chunked body");
        else if (c->content_left > 0)
            loom_http_conn_fail(c, "connection closed with %lld body bytes missing", c->content_left);
        else conn_done(c);
    }
}

enum loom_http_state loom_http_conn_advance(struct loom_http_conn *c, double now)
{
    if (c->state == LOOM_HTTP_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) err = errno;
        if (err == EINPROGRESS || err == EALREADY) return c->state;
        if (err) {
            loom_http_conn_fail(c, "connect: %s", strerror(err));
            return c->state;
        }
        /* poll may wake us before the connect finished: check that it did */
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        if (poll(&pfd, 1, 0) <= 0 || !(pfd.revents & (POLLOUT | POLLERR | POLLHUP))) return c->state;
        c->state = LOOM_HTTP_SENDING;
        c->last_activity = now;
    }
    if (c->state == LOOM_HTTP_SENDING) {
        while (c->out_sent < c->out_len) {
            ssize_t k = send(c->fd, c->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
            if (k < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) return c->state;
                if (errno == EINTR) continue;
                loom_http_conn_fail(c, "send: %s", strerror(errno));
                return c->state;
            }
            c->out_sent += (size_t)k;
            c->last_activity = now;
        }
        c->state = LOOM_HTTP_HEADERS;
        return c->state; /* the reply comes at the next POLLIN */
    }
    if (c->state == LOOM_HTTP_HEADERS || c->state == LOOM_HTTP_BODY) {
        char buf[65536];
        for (int rounds = 0; rounds < 16; rounds++) {
            ssize_t k = recv(c->fd, buf, sizeof(buf), 0);
            if (k < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                loom_http_conn_fail(c, "recv: %s", strerror(errno));
                break;
            }
            if (k == 0) {
                on_eof(c);
                break;
            }
            c->last_activity = now;
            on_bytes(c, buf, (size_t)k, now);
            if (c->state != LOOM_HTTP_HEADERS && c->state != LOOM_HTTP_BODY) break;
        }
    }
    return c->state;
}

void loom_http_conn_free(struct loom_http_conn *c)
{
    conn_close_fd(c);
    free(c->out);
    free(c->in);
    c->out = c->in = NULL;
    c->out_len = c->out_sent = c->in_len = c->in_cap = 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Blocking fetch */

struct fetch_buf {
    char *p;
    size_t len, cap;
};

static void fetch_body(void *user, const char *data, size_t len, double now)
{
    (void)now;
    struct fetch_buf *b = user;
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1) cap *= 2;
        b->p = loom_realloc(b->p, cap);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = 0;
}

int loom_http_fetch(const char *url, const char *method, const char *body, const char *extra_headers,
                    double timeout_s, int *status, char **resp, size_t *resp_len)
{
    struct loom_http_url u;
    int rc = loom_http_parse_url(url, &u);
    if (rc) return rc;
    /* the URL's own path is the request path here */
    char path[sizeof(u.prefix) + 1];
    snprintf(path, sizeof(path), "%s", u.prefix[0] ? u.prefix : "/");
    u.prefix[0] = 0;
    struct addrinfo *ai = NULL;
    if ((rc = loom_http_resolve(&u, &ai))) return rc;
    double deadline = loom_now() + timeout_s;
    struct fetch_buf b = {0};
    struct loom_http_conn c;
    size_t len;
    char *req = loom_http_build_request(method, &u, path, extra_headers, body, body ? strlen(body) : 0, &len);
    loom_http_conn_start(&c, ai, req, len, fetch_body, &b, loom_now());
    freeaddrinfo(ai);
    while (c.state != LOOM_HTTP_DONE && c.state != LOOM_HTTP_FAILED) {
        double left = deadline - loom_now();
        if (left <= 0) {
            loom_http_conn_fail(&c, "no complete response within %.1f s", timeout_s);
            break;
        }
        struct pollfd pfd = {.fd = c.fd, .events = loom_http_conn_events(&c)};
        int pr = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR) {
            loom_http_conn_fail(&c, "poll: %s", strerror(errno));
            break;
        }
        if (pr > 0) loom_http_conn_advance(&c, loom_now());
    }
    if (c.state == LOOM_HTTP_FAILED) {
        rc = loom_fail(LOOM_EIO, "%s %s: %s", method, url, c.error);
        free(b.p);
        loom_http_conn_free(&c);
        return rc;
    }
    *status = c.status;
    if (!b.p) fetch_body(&b, "", 0, 0);
    *resp = b.p;
    if (resp_len) *resp_len = b.len;
    loom_http_conn_free(&c);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Server-Sent Events */

void loom_sse_init(struct loom_sse *s)
{
    memset(s, 0, sizeof(*s));
}

static void grow(char **p, size_t *cap, size_t need)
{
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 256;
    while (c < need) c *= 2;
    *p = loom_realloc(*p, c);
    *cap = c;
}

static void sse_dispatch(struct loom_sse *s, loom_sse_event_fn fn, void *user)
{
    if (s->has_data) {
        grow(&s->data, &s->data_cap, s->data_len + 1);
        s->data[s->data_len] = 0;
        fn(user, s->data, s->data_len);
    }
    s->data_len = 0;
    s->has_data = false;
}

static void sse_line(struct loom_sse *s, loom_sse_event_fn fn, void *user)
{
    const char *l = s->line;
    size_t n = s->line_len;
    if (n == 0) {
        sse_dispatch(s, fn, user);
        return;
    }
    if (l[0] == ':') return; /* a comment (keep-alive ping) */
    const char *colon = memchr(l, ':', n);
    size_t klen = colon ? (size_t)(colon - l) : n;
    if (klen != 4 || memcmp(l, "data", 4)) return; /* event:, id:, retry: do not matter here */
    const char *v = colon ? colon + 1 : l + n;
    if (v < l + n && *v == ' ') v++;
    size_t vlen = (size_t)(l + n - v);
    grow(&s->data, &s->data_cap, s->data_len + vlen + 2);
    if (s->has_data) s->data[s->data_len++] = '\n';
    memcpy(s->data + s->data_len, v, vlen);
    s->data_len += vlen;
    s->has_data = true;
}

void loom_sse_feed(struct loom_sse *s, const char *p, size_t n, loom_sse_event_fn fn, void *user)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n' && s->after_cr) {
            s->after_cr = false;
            continue;
        }
        s->after_cr = false;
        if (ch == '\r' || ch == '\n') {
            s->after_cr = ch == '\r';
            sse_line(s, fn, user);
            s->line_len = 0;
            continue;
        }
        grow(&s->line, &s->line_cap, s->line_len + 1);
        s->line[s->line_len++] = ch;
    }
}

void loom_sse_finish(struct loom_sse *s, loom_sse_event_fn fn, void *user)
{
    if (s->line_len) {
        sse_line(s, fn, user);
        s->line_len = 0;
    }
    sse_dispatch(s, fn, user);
}

void loom_sse_free(struct loom_sse *s)
{
    free(s->line);
    free(s->data);
    memset(s, 0, sizeof(*s));
}
