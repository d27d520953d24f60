/*
 * http.c: libmicrohttpd glue for `loom serve`. Owns the daemon, the per-request body buffer and its
 * limits, the hand-over of engine output to connections (jobs: suspend while nothing is ready, resume
 * from the engine's callback), the watchdog that notices hang-ups of parked connections, one INFO log
 * line per request, and the graceful shutdown. Knows nothing of JSON or the OpenAI API: every request
 * goes to loom_openai_route (openai.c) once its body is complete.
 *
 * Limits: a body above max_body_bytes is answered 413 (after reading it, so that the client sees the
 * answer; at once when the client sent Expect: 100-continue or the body is huge); a connection idle
 * or stalled for connection_timeout_s is closed (this also ends slow-loris clients, whose headers never
 * complete); at most max_connections at once, the rest are refused by libmicrohttpd.
 */
#include "server/server.h"

#include "core/error.h"
#include "core/log.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SSE_BLOCK_SIZE     (32 * 1024)
#define WATCHDOG_PERIOD_MS 100

void loom_server_options_default(struct loom_server_options *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->port = 8000;
    o->max_body_bytes = 10u << 20;
    o->max_connections = 4096;
    o->connection_timeout_s = 30;
    o->http_threads = 2;
}

/* ---------------------------------------------------------------------------------------------- */
/* Jobs */

void loom_job_init(struct loom_job *j, struct loom_server *s, bool stream)
{
    memset(j, 0, sizeof(*j));
    pthread_mutex_init(&j->lock, NULL);
    j->refs = 1; /* the producer's */
    j->stream = stream;
    j->srv = s;
    j->fd = -1;
    j->state = LOOM_JOB_DETACHED;
}

void loom_job_ref(struct loom_job *j)
{
    pthread_mutex_lock(&j->lock);
    j->refs++;
    pthread_mutex_unlock(&j->lock);
}

void loom_job_unref(struct loom_job *j)
{
    pthread_mutex_lock(&j->lock);
    int left = --j->refs;
    pthread_mutex_unlock(&j->lock);
    LOOM_ASSERT(left >= 0);
    if (left) return;
    loom_buf_free(&j->out);
    free(j->body);
    pthread_mutex_destroy(&j->lock);
    j->release(j);
}

void loom_job_unlock_wake(struct loom_job *j)
{
    struct MHD_Connection *c = NULL;
    if (j->state == LOOM_JOB_SUSPENDED) {
        j->state = LOOM_JOB_RUNNING;
        c = j->conn;
    } else if (j->state == LOOM_JOB_SUSPENDING) {
        j->state = LOOM_JOB_WAKE;
    }
    pthread_mutex_unlock(&j->lock);
    /* The connection stays suspended (so alive) until this call: nothing else resumes it. */
    if (c) MHD_resume_connection(c);
}

/* On an MHD thread, from the access handler or the content reader, with j->lock held and nothing to
 * send: parks the connection until the producer's next wake. Releases the lock. */
static void job_park(struct loom_job *j)
{
    struct MHD_Connection *c = j->conn;
    j->state = LOOM_JOB_SUSPENDING;
    pthread_mutex_unlock(&j->lock);
    MHD_suspend_connection(c);
    pthread_mutex_lock(&j->lock);
    if (j->state == LOOM_JOB_WAKE) {
        j->state = LOOM_JOB_RUNNING;
        pthread_mutex_unlock(&j->lock);
        MHD_resume_connection(c);
    } else {
        j->state = LOOM_JOB_SUSPENDED;
        pthread_mutex_unlock(&j->lock);
    }
}

static void jobs_add(struct loom_server *s, struct loom_job *j)
{
    pthread_mutex_lock(&s->lock);
    j->prev = NULL;
    j->next = s->jobs;
    if (s->jobs) s->jobs->prev = j;
    s->jobs = j;
    s->n_jobs++;
    pthread_mutex_unlock(&s->lock);
}

static void jobs_remove(struct loom_server *s, struct loom_job *j)
{
    pthread_mutex_lock(&s->lock);
    if (j->prev)
        j->prev->next = j->next;
    else
        s->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    j->prev = j->next = NULL;
    s->n_jobs--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

int loom_server_inflight(struct loom_server *s)
{
    pthread_mutex_lock(&s->lock);
    int n = s->n_jobs;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* ---------------------------------------------------------------------------------------------- */
/* Requests */

struct http_req {
    struct loom_server *srv;
    double t0;
    char method[16];
    char url[256];
    struct loom_buf body;
    size_t received;
    bool too_large;
    int status;
    char id[64];
    char detail[640];
    struct loom_job *job;
};

static void copy_detail(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src);
}

static enum MHD_Result queue(struct http_req *hr, struct MHD_Connection *conn, int status, const char *ctype,
                             char *body, size_t len, const char *allow)
{
    struct MHD_Response *resp = body ? MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE)
                                     : MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    if (ctype) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (allow) MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, allow);
    if (hr->id[0]) MHD_add_response_header(resp, "X-Request-Id", hr->id);
    hr->status = status;
    enum MHD_Result r = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return r;
}

static enum MHD_Result queue_error(struct http_req *hr, struct MHD_Connection *conn, int status,
                                   const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static enum MHD_Result queue_error(struct http_req *hr, struct MHD_Connection *conn, int status,
                                   const char *param, const char *fmt, ...)
{
    struct loom_api_error err;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    loom_api_error_set(&err, status, param, "%s", msg);
    if (status == 413) err.code = "request_too_large";
    copy_detail(hr->detail, sizeof(hr->detail), msg);
    char *body = loom_api_error_json(&err);
    return queue(hr, conn, status, "application/json", body, strlen(body), NULL);
}

/* SSE: MHD asks for bytes whenever the socket can take them. */
static ssize_t sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct loom_job *j = cls;
    (void)pos;
    pthread_mutex_lock(&j->lock);
    size_t avail = j->out.len - j->out_pos;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, j->out.data + j->out_pos, n);
        j->out_pos += n;
        if (j->out_pos == j->out.len) j->out.len = j->out_pos = 0;
        pthread_mutex_unlock(&j->lock);
        return (ssize_t)n;
    }
    if (j->done) {
        bool broken = j->broken;
        pthread_mutex_unlock(&j->lock);
        return broken ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    }
    job_park(j);
    return 0;
}

static void sse_free(void *cls)
{
    loom_job_unref(cls);
}

/* The route returned a job: attach it to this connection. */
static enum MHD_Result start_job(struct http_req *hr, struct MHD_Connection *conn, struct loom_job *j)
{
    struct loom_server *s = hr->srv;
    hr->job = j; /* the reply's reference becomes the request's */
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    jobs_add(s, j);
    pthread_mutex_lock(&j->lock);
    j->conn = conn;
    j->fd = ci ? ci->connect_fd : -1;
    j->state = LOOM_JOB_RUNNING;
    if (j->stream) {
        j->refs++; /* the response's */
        pthread_mutex_unlock(&j->lock);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, SSE_BLOCK_SIZE, sse_reader, j, sse_free);
        if (!resp) {
            loom_job_unref(j);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream; charset=utf-8");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(resp, "X-Accel-Buffering", "no");
        MHD_add_response_header(resp, "X-Request-Id", hr->id);
        hr->status = 200;
        enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_OK, resp);
        MHD_destroy_response(resp);
        return r;
    }
    if (!j->done) {
        job_park(j);
        return MHD_YES;
    }
    pthread_mutex_unlock(&j->lock);
    return MHD_YES; /* answered on the handler's next call (finish_job) */
}

/* Not streaming: the handler is called again after every resume. */
static enum MHD_Result finish_job(struct http_req *hr, struct MHD_Connection *conn)
{
    struct loom_job *j = hr->job;
    pthread_mutex_lock(&j->lock);
    if (!j->done) {
        job_park(j);
        return MHD_YES;
    }
    int status = j->status ? j->status : 500;
    char *body = j->body;
    size_t len = j->body_len;
    j->body = NULL;
    j->body_len = 0;
    pthread_mutex_unlock(&j->lock);
    if (!body) return queue_error(hr, conn, 500, NULL, "the request ended without a response");
    return queue(hr, conn, status, "application/json", body, len, NULL);
}

static bool header_is(struct MHD_Connection *conn, const char *name, const char *value)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, name);
    return v && !strcasecmp(v, value);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    struct loom_server *s = cls;
    struct http_req *hr = *con_cls;
    (void)version;
    if (!hr) {
        hr = loom_calloc(1, sizeof(*hr));
        hr->srv = s;
        hr->t0 = loom_now();
        snprintf(hr->method, sizeof(hr->method), "%s", method);
        snprintf(hr->url, sizeof(hr->url), "%s", url);
        *con_cls = hr;
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            unsigned long long n = strtoull(cl, NULL, 10);
            bool expect = header_is(conn, MHD_HTTP_HEADER_EXPECT, "100-continue");
            /* Answer at once when the client waits for permission or the body is absurd; otherwise read
             * and drop the body first, so that the client is still listening when the 413 comes. */
            if (n > s->opts.max_body_bytes && (expect || n > 8 * (unsigned long long)s->opts.max_body_bytes))
                return queue_error(hr, conn, 413, NULL,
                                   "the request body (%llu bytes) is larger than the limit of %zu bytes", n,
                                   s->opts.max_body_bytes);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        hr->received += n;
        if (!hr->too_large && hr->body.len + n > s->opts.max_body_bytes) {
            hr->too_large = true;
            loom_buf_free(&hr->body);
        }
        if (!hr->too_large) loom_buf_append(&hr->body, upload_data, n);
        *upload_data_size = 0;
        if (hr->too_large && hr->received > 8 * s->opts.max_body_bytes)
            return MHD_NO; /* a client that keeps sending: cut it off */
        return MHD_YES;
    }
    if (hr->job) return finish_job(hr, conn);
    if (hr->too_large)
        return queue_error(hr, conn, 413, NULL,
                           "the request body (%zu bytes) is larger than the limit of %zu bytes", hr->received,
                           s->opts.max_body_bytes);

    struct loom_http_request in = {
        .method = strcmp(method, "HEAD") ? method : "GET",
        .url = url,
        .body = hr->body.data ? hr->body.data : "",
        .body_len = hr->body.len,
        .authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION),
    };
    struct loom_http_reply out;
    memset(&out, 0, sizeof(out));
    loom_openai_route(s, &in, &out);
    loom_buf_free(&hr->body);
    snprintf(hr->id, sizeof(hr->id), "%s", out.id);
    copy_detail(hr->detail, sizeof(hr->detail), out.detail);
    if (out.job) return start_job(hr, conn, out.job);
    return queue(hr, conn, out.status, out.content_type, out.body, out.body_len, out.allow);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct loom_server *s = cls;
    struct http_req *hr = *con_cls;
    (void)conn;
    if (!hr) return;
    *con_cls = NULL;
    bool gone = false;
    struct loom_job *j = hr->job;
    if (j) {
        pthread_mutex_lock(&j->lock);
        gone = !j->done && !j->cancelled;
        if (gone) j->cancelled = true;
        j->state = LOOM_JOB_CLOSED;
        j->conn = NULL;
        j->fd = -1;
        if (j->detail[0]) copy_detail(hr->detail, sizeof(hr->detail), j->detail);
        pthread_mutex_unlock(&j->lock);
        if (gone) {
            j->cancel(j);
            loom_metrics_count_disconnect(&s->metrics);
        }
        jobs_remove(s, j);
        loom_job_unref(j);
    }
    static const char *why[] = {"",
                                " (connection error)",
                                " (timed out)",
                                " (server shutting down)",
                                " (read error)",
                                " (client closed)"};
    const char *note = gone ? " (client went away; request aborted)" : ((unsigned)toe < 6 ? why[toe] : "");
    if (hr->status) loom_metrics_count_http(&s->metrics, hr->status);
    LOG_INFO("[%s] %s %s %d %.3fs%s%s%s", hr->id[0] ? hr->id : "-", hr->method, hr->url, hr->status,
             loom_now() - hr->t0, hr->detail[0] ? " " : "", hr->detail, note);
    loom_buf_free(&hr->body);
    free(hr);
}

/* ---------------------------------------------------------------------------------------------- */
/* Watchdog: a parked connection is not polled by libmicrohttpd, so hang-ups are checked here. */

static bool peer_closed(int fd)
{
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) return false;
    if (n == 0) return true;
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

static void *watchdog_main(void *arg)
{
    struct loom_server *s = arg;
    struct loom_job **gone = NULL;
    int cap = 0;
    pthread_mutex_lock(&s->lock);
    while (!s->watchdog_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WATCHDOG_PERIOD_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->watchdog_cond, &s->lock, &ts); /* its own: job churn does not wake it */
        if (s->watchdog_stop) break;
        int n = 0;
        for (struct loom_job *j = s->jobs; j; j = j->next) {
            pthread_mutex_lock(&j->lock);
            if (j->state == LOOM_JOB_SUSPENDED && !j->done && !j->cancelled && j->fd >= 0 &&
                peer_closed(j->fd)) {
                j->cancelled = true;
                j->refs++;
                if (n == cap) {
                    cap = cap ? cap * 2 : 16;
                    gone = loom_realloc(gone, (size_t)cap * sizeof(*gone));
                }
                gone[n++] = j;
            }
            pthread_mutex_unlock(&j->lock);
        }
        if (!n) continue;
        pthread_mutex_unlock(&s->lock);
        for (int i = 0; i < n; i++) {
            gone[i]->cancel(gone[i]);
            loom_metrics_count_disconnect(&s->metrics);
            loom_job_unref(gone[i]);
        }
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    free(gone);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (loom_log_get_level() > LOOM_LOG_DEBUG) return;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = 0;
    LOG_DEBUG("libmicrohttpd: %s", msg);
}

static void server_free(struct loom_server *s)
{
    loom_metrics_destroy(&s->metrics);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_cond_destroy(&s->watchdog_cond);
    free(s->host);
    free(s->model_name);
    free(s->model_path);
    free(s->api_key);
    free(s);
}

int loom_server_start(const struct loom_server_options *o, struct loom_server **out)
{
    *out = NULL;
    struct loom_server *s = loom_calloc(1, sizeof(*s));
    s->opts = *o;
    s->host = loom_strdup(o->host ? o->host : "127.0.0.1");
    s->model_path = loom_strdup(o->model_path ? o->model_path : "");
    s->model_name = loom_strdup(o->model_name ? o->model_name : s->model_path);
    s->api_key = o->api_key && o->api_key[0] ? loom_strdup(o->api_key) : NULL;
    s->opts.host = s->host;
    s->opts.model_name = s->model_name;
    s->opts.model_path = s->model_path;
    s->opts.api_key = s->api_key;
    if (!s->opts.max_body_bytes) s->opts.max_body_bytes = 10u << 20;
    if (s->opts.max_connections <= 0) s->opts.max_connections = 4096;
    if (s->opts.connection_timeout_s <= 0) s->opts.connection_timeout_s = 30;
    if (s->opts.http_threads <= 0) s->opts.http_threads = 2;
    s->started = (long long)time(NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_cond_init(&s->watchdog_cond, NULL);
    loom_metrics_init(&s->metrics, s->model_name);

    char port[16];
    snprintf(port, sizeof(port), "%d", o->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE},
                    *ai = NULL;
    int gai = getaddrinfo(s->host, port, &hints, &ai);
    if (gai) {
        server_free(s);
        return loom_fail(LOOM_EINVAL,
                         "--host %s: cannot resolve it (%s); use an address such as 127.0.0.1 or 0.0.0.0",
                         o->host, gai_strerror(gai));
    }
    unsigned flags =
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)o->port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)s->opts.http_threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->opts.max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)s->opts.connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024), MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!s->daemon) {
        int e = errno;
        server_free(s);
        return loom_fail(LOOM_EIO, "cannot listen on %s:%d (%s); pick another --port or --host", o->host,
                         o->port, strerror(e));
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : o->port;
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s)) LOOM_DIE("cannot create the watchdog thread");
    s->watchdog_running = true;
    *out = s;
    return LOOM_OK;
}

int loom_server_port(const struct loom_server *s)
{
    return s->port;
}

void loom_server_hurry(struct loom_server *s)
{
    pthread_mutex_lock(&s->lock);
    s->hurry = true;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

/* Waits until no job is in flight or the deadline passes (or, when interruptible, a hurry). Returns the
 * jobs left. */
static int wait_jobs(struct loom_server *s, double deadline, bool interruptible)
{
    pthread_mutex_lock(&s->lock);
    while (s->n_jobs > 0 && loom_now() < deadline && !(interruptible && s->hurry)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&s->cond, &s->lock, &ts);
    }
    int n = s->n_jobs;
    pthread_mutex_unlock(&s->lock);
    return n;
}

/* Calls fn on every job in flight (each with a reference held, the server lock not held). */
static void for_each_job(struct loom_server *s, void (*fn)(struct loom_job *j))
{
    pthread_mutex_lock(&s->lock);
    int n = s->n_jobs, k = 0;
    struct loom_job **all = loom_calloc(n ? (size_t)n : 1, sizeof(*all));
    for (struct loom_job *j = s->jobs; j && k < n; j = j->next) {
        loom_job_ref(j);
        all[k++] = j;
    }
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < k; i++) {
        fn(all[i]);
        loom_job_unref(all[i]);
    }
    free(all);
}

static void job_cancel(struct loom_job *j)
{
    pthread_mutex_lock(&j->lock);
    bool go = !j->done && !j->cancelled;
    if (go) j->cancelled = true;
    pthread_mutex_unlock(&j->lock);
    if (go) j->cancel(j);
}

static void job_force_end(struct loom_job *j)
{
    pthread_mutex_lock(&j->lock);
    if (!j->done) {
        j->done = true;
        j->broken = true;
        if (!j->stream && !j->body) {
            struct loom_api_error err;
            loom_api_error_set(&err, 503, NULL, "the server is shutting down");
            j->body = loom_api_error_json(&err);
            j->body_len = strlen(j->body);
            j->status = 503;
        }
    }
    loom_job_unlock_wake(j);
}

void loom_server_shutdown(struct loom_server *s, double drain_s)
{
    if (!s) return;
    pthread_mutex_lock(&s->lock);
    s->draining = true;
    pthread_mutex_unlock(&s->lock);
    MHD_socket ls = MHD_quiesce_daemon(s->daemon); /* stop accepting; connections open stay served */
    if (ls != MHD_INVALID_SOCKET) close(ls);
    int left = loom_server_inflight(s);
    if (left) LOG_INFO("shutdown: waiting up to %.0fs for %d request(s) in flight", drain_s, left);
    left = wait_jobs(s, loom_now() + drain_s, true);
    if (left) {
        LOG_WARN("shutdown: aborting %d request(s) still running", left);
        for_each_job(s, job_cancel);
        left = wait_jobs(s, loom_now() + 5.0, false);
    }
    if (left) { /* the engine did not answer the aborts: end the responses ourselves */
        for_each_job(s, job_force_end);
        left = wait_jobs(s, loom_now() + 5.0, false);
    }
    pthread_mutex_lock(&s->lock);
    s->watchdog_stop = true;
    pthread_cond_broadcast(&s->watchdog_cond);
    pthread_mutex_unlock(&s->lock);
    if (s->watchdog_running) pthread_join(s->watchdog, NULL);
    if (left) {
        LOG_ERROR("shutdown: %d connection(s) still parked; leaving the daemon running", left);
        return;
    }
    MHD_stop_daemon(s->daemon);
    s->stopped = true;
}

void loom_server_free(struct loom_server *s)
{
    if (s && s->stopped) server_free(s); /* else the daemon may still call into it: leave it */
}
