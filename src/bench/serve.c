/* serve.c: the `loom bench serve` load generator: one poll() loop over streaming HTTP requests (serve.h). */
#include "bench/serve.h"
#include "bench/http_client.h"
#include "core/error.h"
#include "core/log.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define ERR_BODY_MAX 512

void loom_bench_serve_config_default(struct loom_bench_serve_config *c)
{
    memset(c, 0, sizeof(*c));
    c->base_url = "http://127.0.0.1:8000";
    c->endpoint = "/v1/completions";
    c->request_rate = INFINITY;
    c->burstiness = 1.0;
    c->timeout = 60;
    c->request_timeout = 3600;
    c->temperature = 0;
    c->progress = true;
}

const char *loom_bench_fail_name(enum loom_bench_fail f)
{
    static const char *names[] = {"ok", "connect", "http", "timeout", "stream", "interrupted"};
    return (unsigned)f < LOOM_BENCH_FAIL_KINDS ? names[f] : "?";
}

enum { REQ_PENDING = 0, REQ_QUEUED, REQ_ACTIVE, REQ_FINISHED };

struct sreq {
    int state;
    struct loom_http_conn conn;
    struct loom_sse sse;
    double start, first_chunk, last_chunk, now;
    double *itl;
    int n_itl, cap_itl, n_chunks;
    int usage_completion, usage_prompt; /* -1 = not reported */
    bool got_done;
    char stream_error[256];             /* set by the event handler: the stream is bad */
    char err_body[ERR_BODY_MAX + 1];    /* the start of a non-2xx body */
    size_t err_len;
};

/* ------------------------------------------------------------------------------------------------ */
/* Streamed events */

static const char *chunk_error_message(json_t *err, char *buf, size_t cap)
{
    json_t *msg = json_is_object(err) ? json_object_get(err, "message") : err;
    if (json_is_string(msg)) snprintf(buf, cap, "%s", json_string_value(msg));
    else snprintf(buf, cap, "(no message)");
    return buf;
}

static void on_event(void *user, const char *data, size_t len)
{
    struct sreq *q = user;
    if (q->stream_error[0]) return;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        q->got_done = true;
        return;
    }
    json_error_t jerr;
    json_t *obj = json_loadb(data, len, 0, &jerr);
    if (!obj || !json_is_object(obj)) {
        snprintf(q->stream_error, sizeof(q->stream_error), "bad JSON in the event stream: '%.60s'", data);
        json_decref(obj);
        return;
    }
    json_t *err = json_object_get(obj, "error");
    if (err && !json_is_null(err)) {
        char msg[200];
        snprintf(q->stream_error, sizeof(q->stream_error), "error event: %s",
                 chunk_error_message(err, msg, sizeof(msg)));
        json_decref(obj);
        return;
    }
    json_t *choices = json_object_get(obj, "choices");
    if (json_is_array(choices) && json_array_size(choices) > 0) {
        /* vLLM counts every chunk that carries a choice, even one whose text is empty */
        if (!q->n_chunks) {
            q->first_chunk = q->now;
        } else {
            if (q->n_itl == q->cap_itl) {
                q->cap_itl = q->cap_itl ? q->cap_itl * 2 : 64;
                q->itl = loom_realloc(q->itl, sizeof(double) * (size_t)q->cap_itl);
            }
            q->itl[q->n_itl++] = q->now - q->last_chunk;
        }
        q->last_chunk = q->now;
        q->n_chunks++;
    }
    json_t *usage = json_object_get(obj, "usage");
    if (json_is_object(usage)) {
        json_t *ct = json_object_get(usage, "completion_tokens"), *pt = json_object_get(usage, "prompt_tokens");
        if (json_is_integer(ct)) q->usage_completion = (int)json_integer_value(ct);
        if (json_is_integer(pt)) q->usage_prompt = (int)json_integer_value(pt);
    }
    json_decref(obj);
}

static void on_body(void *user, const char *data, size_t len, double now)
{
    struct sreq *q = user;
    if (q->conn.status < 200 || q->conn.status > 299) {
        size_t k = ERR_BODY_MAX - q->err_len < len ? ERR_BODY_MAX - q->err_len : len;
        memcpy(q->err_body + q->err_len, data, k);
        q->err_len += k;
        q->err_body[q->err_len] = 0;
        return;
    }
    q->now = now;
    loom_sse_feed(&q->sse, data, len, on_event, q);
    if (q->stream_error[0]) loom_http_conn_fail(&q->conn, "%s", q->stream_error);
}

/* ------------------------------------------------------------------------------------------------ */
/* Requests */

static char *request_body(const struct loom_bench_serve_config *cfg, const char *model, bool chat,
                          const struct loom_bench_prompt *p)
{
    json_t *o = json_object();
    if (model) json_object_set_new(o, "model", json_string(model));
    if (chat) {
        json_t *msg = json_object();
        json_object_set_new(msg, "role", json_string("user"));
        json_object_set_new(msg, "content", json_string(p->text));
        json_t *msgs = json_array();
        json_array_append_new(msgs, msg);
        json_object_set_new(o, "messages", msgs);
    } else if (p->ids) {
        json_t *ids = json_array();
        for (int i = 0; i < p->n_ids; i++) json_array_append_new(ids, json_integer(p->ids[i]));
        json_object_set_new(o, "prompt", ids);
    } else {
        json_object_set_new(o, "prompt", json_string(p->text));
    }
    json_object_set_new(o, "max_tokens", json_integer(p->output_len));
    json_object_set_new(o, "temperature", json_real(cfg->temperature));
    json_object_set_new(o, "stream", json_true());
    json_t *so = json_object();
    json_object_set_new(so, "include_usage", json_true());
    json_object_set_new(o, "stream_options", so);
    if (cfg->ignore_eos) json_object_set_new(o, "ignore_eos", json_true());
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static int first_model(const struct loom_bench_serve_config *cfg, const char *headers, char **out)
{
    char url[1024];
    snprintf(url, sizeof(url), "%s/v1/models", cfg->base_url);
    size_t n = strlen(cfg->base_url);
    if (n && cfg->base_url[n - 1] == '/') snprintf(url, sizeof(url), "%sv1/models", cfg->base_url);
    int status;
    char *body;
    int rc = loom_http_fetch(url, "GET", NULL, headers, cfg->timeout < 10 ? cfg->timeout : 10, &status, &body, NULL);
    if (rc) return loom_fail_context(rc, "no --model given and the server's model list failed");
    json_t *o = json_loads(body, 0, NULL);
    json_t *data = o ? json_object_get(o, "data") : NULL;
    json_t *id = json_object_get(json_array_get(data, 0), "id");
    if (status != 200 || !json_is_string(id)) {
        rc = loom_fail(LOOM_EINVAL, "no --model given and GET %s answered %d without a model id: pass --model NAME",
                       url, status);
    } else {
        *out = loom_strdup(json_string_value(id));
    }
    json_decref(o);
    free(body);
    return rc;
}

static void finish(struct loom_bench_serve_result *res, int i, struct sreq *q, enum loom_bench_fail f,
                   const char *why)
{
    struct loom_bench_req *r = &res->reqs[i];
    q->state = REQ_FINISHED;
    res->fail[i] = f;
    res->http_status[i] = q->conn.status;
    res->fail_count[f]++;
    r->start_time = q->start;
    r->success = f == LOOM_BENCH_OK;
    if (r->success) {
        r->ttft = q->first_chunk - q->start;
        r->latency = q->last_chunk - q->start;
        r->itl = q->itl;
        r->n_itl = q->n_itl;
        r->n_chunks = q->n_chunks;
        r->output_tokens = q->usage_completion > 0 ? q->usage_completion : 0;
        if (q->usage_completion > 0) res->usage_reported++;
        q->itl = NULL;
    } else {
        res->error[i] = loom_strdup(why);
        free(q->itl);
        q->itl = NULL;
    }
    loom_sse_free(&q->sse);
    loom_http_conn_free(&q->conn);
}

/* A finished connection: decide success or the kind of failure. */
static void conclude(struct loom_bench_serve_result *res, int i, struct sreq *q, const char *ct_hint)
{
    char why[ERR_BODY_MAX + 128];
    struct loom_http_conn *c = &q->conn;
    if (c->state == LOOM_HTTP_FAILED) {
        enum loom_bench_fail f = LOOM_BENCH_FAIL_STREAM;
        if (q->stream_error[0]) f = LOOM_BENCH_FAIL_STREAM;
        else if (!strncmp(c->error, "connect: ", 9) || !strncmp(c->error, "socket: ", 8) ||
                 !strncmp(c->error, "send: ", 6))
            f = LOOM_BENCH_FAIL_CONNECT;
        else if (!strncmp(c->error, "timeout: ", 9)) f = LOOM_BENCH_FAIL_TIMEOUT;
        else if (!strncmp(c->error, "interrupted", 11)) f = LOOM_BENCH_FAIL_INTERRUPTED;
        finish(res, i, q, f, c->error);
        return;
    }
    if (c->status < 200 || c->status > 299) {
        /* one line: the status and the start of the body, newlines flattened */
        snprintf(why, sizeof(why), "HTTP %d: %s", c->status, q->err_body);
        for (char *p = why; *p; p++)
            if (*p == '\n' || *p == '\r') *p = ' ';
        finish(res, i, q, LOOM_BENCH_FAIL_HTTP, why);
        return;
    }
    loom_sse_finish(&q->sse, on_event, q);
    if (q->stream_error[0]) {
        finish(res, i, q, LOOM_BENCH_FAIL_STREAM, q->stream_error);
    } else if (!q->n_chunks) {
        snprintf(why, sizeof(why), "the response had no content chunk (Content-Type: %s)%s",
                 c->content_type[0] ? c->content_type : "none", ct_hint);
        finish(res, i, q, LOOM_BENCH_FAIL_STREAM, why);
    } else {
        finish(res, i, q, LOOM_BENCH_OK, NULL);
    }
}

static void raise_fd_limit(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    rlim_t need = (rlim_t)want + 64;
    if (rl.rlim_cur >= need) return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

int loom_bench_serve_run(const struct loom_bench_serve_config *cfg, struct loom_bench_serve_result *res)
{
    memset(res, 0, sizeof(*res));
    const struct loom_bench_dataset *ds = cfg->dataset;
    if (!ds || ds->n <= 0) return loom_fail(LOOM_EINVAL, "bench serve: no prompts (--num-prompts must be >= 1)");
    if (!(cfg->timeout > 0) || !(cfg->request_timeout > 0))
        return loom_fail(LOOM_EINVAL, "bench serve: --timeout and --request-timeout must be > 0 seconds");
    if (!(cfg->request_rate > 0)) return loom_fail(LOOM_EINVAL, "bench serve: --request-rate must be > 0 or inf");
    if (!(cfg->burstiness > 0)) return loom_fail(LOOM_EINVAL, "bench serve: --burstiness must be > 0");
    const char *endpoint = cfg->endpoint && *cfg->endpoint ? cfg->endpoint : "/v1/completions";
    bool chat = strstr(endpoint, "chat/completions") != NULL;
    if (chat)
        for (int i = 0; i < ds->n; i++)
            if (!ds->items[i].text)
                return loom_fail(LOOM_EINVAL, "bench serve: %s takes text prompts, and prompt %d is token ids: "
                                              "use --random-prompt-type text or a JSONL file of text prompts",
                                 endpoint, i);
    struct loom_http_url url;
    int rc = loom_http_parse_url(cfg->base_url, &url);
    if (rc) return loom_fail_context(rc, "--base-url");
    struct addrinfo *ai = NULL;
    if ((rc = loom_http_resolve(&url, &ai))) return rc;

    char headers[1200] = "Content-Type: application/json\r\n";
    if (cfg->api_key && *cfg->api_key) {
        if (strlen(cfg->api_key) > 1000 || strpbrk(cfg->api_key, "\r\n")) {
            freeaddrinfo(ai);
            return loom_fail(LOOM_EINVAL, "--api-key: too long or contains a line break");
        }
        snprintf(headers + strlen(headers), sizeof(headers) - strlen(headers), "Authorization: Bearer %s\r\n",
                 cfg->api_key);
    }
    char *model = NULL;
    if (cfg->model && *cfg->model) model = loom_strdup(cfg->model);
    else if ((rc = first_model(cfg, strstr(headers, "Authorization") ? strstr(headers, "Authorization") : NULL,
                               &model))) {
        freeaddrinfo(ai);
        return rc;
    }

    int n = ds->n;
    res->n = n;
    res->model = model;
    res->reqs = loom_calloc((size_t)n, sizeof(*res->reqs));
    res->fail = loom_calloc((size_t)n, sizeof(*res->fail));
    res->error = loom_calloc((size_t)n, sizeof(*res->error));
    res->http_status = loom_calloc((size_t)n, sizeof(*res->http_status));
    struct sreq *q = loom_calloc((size_t)n, sizeof(*q));
    for (int i = 0; i < n; i++) q[i].conn.fd = -1;
    double *arrive = loom_malloc(sizeof(double) * (size_t)n);
    loom_bench_arrivals(arrive, n, cfg->request_rate, cfg->burstiness, cfg->seed);
    int cap = cfg->max_concurrency > 0 && cfg->max_concurrency < n ? cfg->max_concurrency : n;
    raise_fd_limit(cap);
    int *active = loom_malloc(sizeof(int) * (size_t)cap);
    struct pollfd *pfd = loom_malloc(sizeof(struct pollfd) * (size_t)cap);
    int *queue = loom_malloc(sizeof(int) * (size_t)n); /* arrived, waiting for a concurrency slot */
    int qhead = 0, qtail = 0, n_active = 0, next = 0, done = 0;
    const char *ct_hint = "; is streaming supported at this endpoint?";

    struct loom_progress pg;
    if (cfg->progress) loom_progress_begin(&pg, "bench serve", n);
    double t0 = loom_now();
    while (done < n) {
        double now = loom_now();
        if (cfg->stop && *cfg->stop) {
            for (int k = 0; k < n_active; k++) {
                loom_http_conn_fail(&q[active[k]].conn, "interrupted");
                conclude(res, active[k], &q[active[k]], "");
                done++;
            }
            n_active = 0;
            for (int i = 0; i < n; i++)
                if (q[i].state == REQ_PENDING || q[i].state == REQ_QUEUED) {
                    q[i].start = now;
                    finish(res, i, &q[i], LOOM_BENCH_FAIL_INTERRUPTED, "interrupted before it was sent");
                    done++;
                }
            break;
        }
        while (next < n && t0 + arrive[next] <= now) {
            q[next].state = REQ_QUEUED;
            queue[qtail++] = next++;
        }
        while (qhead < qtail && n_active < cap) {
            int i = queue[qhead++];
            struct sreq *r = &q[i];
            r->usage_completion = r->usage_prompt = -1;
            loom_sse_init(&r->sse);
            char *body = request_body(cfg, model, chat, &ds->items[i]);
            size_t len;
            char *req = loom_http_build_request("POST", &url, endpoint, headers, body, strlen(body), &len);
            free(body);
            r->start = loom_now();
            r->state = REQ_ACTIVE;
            if (loom_http_conn_start(&r->conn, ai, req, len, on_body, r, r->start)) {
                conclude(res, i, r, "");
                done++;
                continue;
            }
            active[n_active++] = i;
        }
        /* wait for the sockets, the next arrival, or the nearest deadline */
        double wake = now + 0.25;
        if (next < n && t0 + arrive[next] < wake) wake = t0 + arrive[next];
        for (int k = 0; k < n_active; k++) {
            struct sreq *r = &q[active[k]];
            double d1 = r->conn.last_activity + cfg->timeout, d2 = r->start + cfg->request_timeout;
            if (d1 < wake) wake = d1;
            if (d2 < wake) wake = d2;
            pfd[k].fd = r->conn.fd;
            pfd[k].events = loom_http_conn_events(&r->conn);
            pfd[k].revents = 0;
        }
        int ms = (int)ceil((wake - now) * 1000);
        if (ms < 0) ms = 0;
        int pr = poll(pfd, (nfds_t)n_active, ms);
        if (pr < 0 && errno != EINTR) LOOM_DIE("bench serve: poll: %s", strerror(errno));
        for (int k = 0; k < n_active; k++) {
            int i = active[k];
            struct sreq *r = &q[i];
            if (pr > 0 && pfd[k].revents) loom_http_conn_advance(&r->conn, loom_now());
            if (r->conn.state != LOOM_HTTP_DONE && r->conn.state != LOOM_HTTP_FAILED) {
                double t = loom_now();
                if (t - r->start > cfg->request_timeout)
                    loom_http_conn_fail(&r->conn, "timeout: the request ran past %.1f s (--request-timeout)",
                                        cfg->request_timeout);
                else if (t - r->conn.last_activity > cfg->timeout)
                    loom_http_conn_fail(&r->conn, "timeout: no data from the server for %.1f s (--timeout)",
                                        cfg->timeout);
            }
            if (r->conn.state == LOOM_HTTP_DONE || r->conn.state == LOOM_HTTP_FAILED) {
                conclude(res, i, r, ct_hint);
                done++;
                active[k] = -1;
            }
        }
        int w = 0;
        for (int k = 0; k < n_active; k++)
            if (active[k] >= 0) active[w++] = active[k];
        n_active = w;
        if (cfg->progress) loom_progress_update(&pg, done);
    }
    res->duration = loom_now() - t0;
    if (cfg->progress) {
        loom_progress_update(&pg, done);
        loom_progress_end(&pg);
    }
    for (int i = 0; i < n; i++) {
        /* text prompts: the server's count when it gave one, else the dataset's estimate */
        const struct loom_bench_prompt *p = &ds->items[i];
        res->reqs[i].prompt_len = p->prompt_len;
        if (!p->prompt_len_exact && q[i].usage_prompt > 0) res->reqs[i].prompt_len = q[i].usage_prompt;
    }
    free(q);
    free(arrive);
    free(active);
    free(pfd);
    free(queue);
    freeaddrinfo(ai);
    return 0;
}

void loom_bench_serve_result_free(struct loom_bench_serve_result *res)
{
    for (int i = 0; i < res->n; i++) {
        free(res->reqs[i].itl);
        free(res->error[i]);
    }
    free(res->reqs);
    free(res->fail);
    free(res->error);
    free(res->http_status);
    free(res->model);
    memset(res, 0, sizeof(*res));
}
