/*
 * test_server_http.c: the HTTP server (server/http.c + openai.c) against a fake engine, through real
 * sockets: routing, status codes, error objects, body limits, API keys, SSE framing, many concurrent
 * streams, a client that hangs up mid-stream (its request must be aborted), a slow-loris connection
 * (closed after the timeout while others are served), a full engine (503) and a graceful shutdown.
 * The fake engine emits one token per request every millisecond on its own thread: token k of a
 * request whose first prompt id is p is id p + k with the text "<k>,".
 */
#include "core/log.h"
#include "server/server.h"
#include "test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------- */
/* Fake engine */

struct fake_req {
    uint64_t id;
    struct loom_request r;
    int32_t first;
    int n, emitted[8];
    bool finished[8];
    bool aborted;
};

static struct {
    pthread_mutex_t lock;
    pthread_t thread;
    bool stop;
    struct fake_req *reqs[1024];
    int n_reqs;
    uint64_t next_id;
    int added, aborted, finished;
    int capacity; /* add_request answers LOOM_EFULL beyond this many running */
    int delay_us;
} fe = {.lock = PTHREAD_MUTEX_INITIALIZER, .capacity = 1000, .delay_us = 1000};

static int fake_add(void *ctx, const struct loom_request *r, uint64_t *id)
{
    (void)ctx;
    pthread_mutex_lock(&fe.lock);
    if (fe.n_reqs >= fe.capacity) {
        pthread_mutex_unlock(&fe.lock);
        return loom_fail(LOOM_EFULL, "the fake engine is full (%d requests)", fe.capacity);
    }
    struct fake_req *q = calloc(1, sizeof(*q));
    q->id = ++fe.next_id;
    q->r = *r;
    q->first = r->n_prompt_ids ? r->prompt_ids[0] : 0;
    q->n = r->params.n;
    fe.reqs[fe.n_reqs++] = q;
    fe.added++;
    *id = q->id;
    pthread_mutex_unlock(&fe.lock);
    return LOOM_OK;
}

static int fake_abort(void *ctx, uint64_t id)
{
    (void)ctx;
    pthread_mutex_lock(&fe.lock);
    for (int i = 0; i < fe.n_reqs; i++)
        if (fe.reqs[i]->id == id) {
            fe.reqs[i]->aborted = true;
            pthread_mutex_unlock(&fe.lock);
            return LOOM_OK;
        }
    pthread_mutex_unlock(&fe.lock);
    return LOOM_ENOTFOUND;
}

static void fake_stats(void *ctx, struct loom_engine_stats *st)
{
    (void)ctx;
    pthread_mutex_lock(&fe.lock);
    st->running = fe.n_reqs;
    st->num_kv_blocks = 100;
    st->free_kv_blocks = 100 - fe.n_reqs;
    st->kv_usage = fe.n_reqs / 100.0;
    pthread_mutex_unlock(&fe.lock);
}

/* One step: every live sample of every request gets one token (or its abort). */
static void *fake_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&fe.lock);
    while (!fe.stop) {
        for (int i = 0; i < fe.n_reqs;) {
            struct fake_req *q = fe.reqs[i];
            bool all = true;
            for (int s = 0; s < q->n; s++) {
                if (q->finished[s]) continue;
                struct loom_output o;
                memset(&o, 0, sizeof(o));
                o.request_id = q->id;
                o.index = s;
                o.prompt_tokens = q->r.n_prompt_ids;
                o.stop_token = -1;
                int32_t tok = q->first + q->emitted[s];
                char text[32];
                if (q->aborted) {
                    o.finish_reason = LOOM_FINISH_ABORT;
                } else {
                    o.token_ids = &tok;
                    o.n_tokens = 1;
                    snprintf(text, sizeof(text), "%d,", q->emitted[s]);
                    o.text = text;
                    o.text_len = strlen(text);
                    q->emitted[s]++;
                    if (q->emitted[s] >= q->r.params.max_tokens) o.finish_reason = LOOM_FINISH_LENGTH;
                }
                o.completion_tokens = q->emitted[s];
                if (o.finish_reason)
                    q->finished[s] = true;
                else
                    all = false;
                /* the callback runs without the engine's lock, as the real engine does */
                pthread_mutex_unlock(&fe.lock);
                q->r.on_output(&o, q->r.user);
                pthread_mutex_lock(&fe.lock);
            }
            if (all) {
                if (q->aborted)
                    fe.aborted++;
                else
                    fe.finished++;
                fe.reqs[i] = fe.reqs[--fe.n_reqs];
                free(q);
            } else {
                i++;
            }
        }
        pthread_mutex_unlock(&fe.lock);
        usleep((useconds_t)fe.delay_us);
        pthread_mutex_lock(&fe.lock);
    }
    pthread_mutex_unlock(&fe.lock);
    return NULL;
}

static int fake_count(int *field)
{
    pthread_mutex_lock(&fe.lock);
    int v = *field;
    pthread_mutex_unlock(&fe.lock);
    return v;
}

/* ---------------------------------------------------------------------------------------------- */
/* A small HTTP client */

static int port;

static int dial(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
        perror("connect");
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const char *data, size_t len)
{
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0) return;
        data += n;
        len -= (size_t)n;
    }
}

/* Reads until EOF (Connection: close) or timeout_ms. */
static char *read_all(int fd, size_t *len, int timeout_ms)
{
    struct loom_buf b = {0};
    loom_buf_append(&b, "", 0);
    double deadline = loom_now() + timeout_ms / 1000.0;
    char tmp[65536];
    for (;;) {
        int left = (int)((deadline - loom_now()) * 1000);
        if (left <= 0) break;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0) break;
        ssize_t n = recv(fd, tmp, sizeof(tmp), 0);
        if (n <= 0) break;
        loom_buf_append(&b, tmp, (size_t)n);
    }
    *len = b.len;
    return b.data;
}

struct resp {
    int status;
    char headers[4096];
    char *body; /* de-chunked */
    size_t body_len;
};

static void resp_free(struct resp *r)
{
    free(r->body);
}

static void parse_resp(const char *raw, size_t len, struct resp *r)
{
    memset(r, 0, sizeof(*r));
    struct loom_buf body = {0};
    loom_buf_append(&body, "", 0);
    if (len < 12 || sscanf(raw, "HTTP/1.%*d %d", &r->status) != 1) {
        r->body = body.data;
        return;
    }
    const char *end = strstr(raw, "\r\n\r\n");
    if (!end) {
        r->body = body.data;
        return;
    }
    size_t hl = (size_t)(end - raw);
    snprintf(r->headers, sizeof(r->headers), "%.*s", (int)(hl < 4000 ? hl : 4000), raw);
    const char *p = end + 4, *stop = raw + len;
    if (strcasestr(r->headers, "transfer-encoding: chunked")) {
        while (p < stop) {
            unsigned long n = strtoul(p, NULL, 16);
            const char *nl = strstr(p, "\r\n");
            if (!nl || n == 0) break;
            p = nl + 2;
            if (p + n > stop) n = (unsigned long)(stop - p);
            loom_buf_append(&body, p, n);
            p += n + 2;
        }
    } else {
        loom_buf_append(&body, p, (size_t)(stop - p));
    }
    r->body = body.data;
    r->body_len = body.len;
}

static struct resp request(const char *method, const char *path, const char *headers, const char *body)
{
    struct resp r;
    memset(&r, 0, sizeof(r));
    int fd = dial();
    if (fd < 0) return r;
    char head[1024];
    int hl = snprintf(head, sizeof(head),
                      "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%sContent-Length: %zu\r\n\r\n",
                      method, path, headers ? headers : "", body ? strlen(body) : 0);
    send_all(fd, head, (size_t)hl);
    if (body) send_all(fd, body, strlen(body));
    size_t len;
    char *raw = read_all(fd, &len, 10000);
    close(fd);
    parse_resp(raw, len, &r);
    free(raw);
    return r;
}

static json_t *body_json(const struct resp *r)
{
    return json_loadb(r->body, r->body_len, 0, NULL);
}

static const char *error_message(const struct resp *r)
{
    static char msg[600];
    json_t *j = body_json(r);
    snprintf(msg, sizeof(msg), "%s",
             j ? json_string_value(json_object_get(json_object_get(j, "error"), "message")) ?: "(none)"
               : "(not JSON)");
    json_decref(j);
    return msg;
}

#define EXPECT_ERROR(r, code, needle)                                                                        \
    do {                                                                                                     \
        CHECK_EQ_INT((r).status, code);                                                                      \
        CHECK_MSG(strstr(error_message(&(r)), needle) != NULL, "'%s' lacks '%s'", error_message(&(r)),       \
                  needle);                                                                                   \
    } while (0)

/* A good request still works (after each bad one). */
static void check_alive(void)
{
    struct resp r = request("POST", "/v1/completions", NULL, "{\"prompt\": [100], \"max_tokens\": 3}");
    CHECK_EQ_INT(r.status, 200);
    json_t *j = body_json(&r);
    CHECK_EQ_STR(json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text")),
                 "0,1,2,");
    json_decref(j);
    resp_free(&r);
}

/* ---------------------------------------------------------------------------------------------- */

static void test_routes(void)
{
    struct resp r = request("GET", "/health", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcasestr(r.headers, "x-request-id: req-") != NULL);
    resp_free(&r);
    r = request("GET", "/v1/models", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    json_t *j = body_json(&r);
    json_t *m = json_array_get(json_object_get(j, "data"), 0);
    CHECK_EQ_STR(json_string_value(json_object_get(m, "id")), "fake");
    CHECK_EQ_STR(json_string_value(json_object_get(m, "root")), "/models/fake");
    CHECK_EQ_INT(json_integer_value(json_object_get(m, "max_model_len")), 64);
    json_decref(j);
    resp_free(&r);
    r = request("GET", "/v1/models/fake", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    r = request("GET", "/v1/models/other", NULL, NULL);
    EXPECT_ERROR(r, 404, "does not exist");
    resp_free(&r);
    r = request("GET", "/version", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK(strstr(r.body, LOOM_VERSION) != NULL);
    resp_free(&r);
    r = request("GET", "/nowhere", NULL, NULL);
    EXPECT_ERROR(r, 404, "Not Found");
    resp_free(&r);
    r = request("GET", "/v1/completions", NULL, NULL);
    EXPECT_ERROR(r, 405, "Method Not Allowed");
    CHECK(strcasestr(r.headers, "allow: POST") != NULL);
    resp_free(&r);
    r = request("DELETE", "/health", NULL, NULL);
    CHECK_EQ_INT(r.status, 405);
    resp_free(&r);
    r = request("GET", "/metrics", NULL, NULL);
    CHECK_EQ_INT(r.status, 200);
    CHECK(strstr(r.body, "vllm:num_requests_running{model_name=\"fake\"}") != NULL);
    CHECK(strcasestr(r.headers, "content-type: text/plain; version=0.0.4") != NULL);
    resp_free(&r);
}

static void test_completions(void)
{
    struct resp r =
        request("POST", "/v1/completions", NULL,
                "{\"model\": \"fake\", \"prompt\": [[10, 11], [20]], \"max_tokens\": 4, \"n\": 2}");
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcasestr(r.headers, "x-request-id: cmpl-") != NULL);
    json_t *j = body_json(&r);
    CHECK_EQ_STR(json_string_value(json_object_get(j, "object")), "text_completion");
    CHECK(!strncmp(json_string_value(json_object_get(j, "id")), "cmpl-", 5));
    json_t *ch = json_object_get(j, "choices");
    CHECK_EQ_INT((int)json_array_size(ch), 4);
    for (int i = 0; i < 4; i++) {
        json_t *c = json_array_get(ch, (size_t)i);
        CHECK_EQ_INT(json_integer_value(json_object_get(c, "index")), i);
        CHECK_EQ_STR(json_string_value(json_object_get(c, "text")), "0,1,2,3,");
        CHECK_EQ_STR(json_string_value(json_object_get(c, "finish_reason")), "length");
        CHECK(json_is_null(json_object_get(c, "logprobs")));
    }
    json_t *u = json_object_get(j, "usage");
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "prompt_tokens")), 3);
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "completion_tokens")), 16);
    CHECK_EQ_INT(json_integer_value(json_object_get(u, "total_tokens")), 19);
    json_decref(j);
    resp_free(&r);

    /* the full path works as the model name */
    r = request("POST", "/v1/completions", NULL,
                "{\"model\": \"/models/fake\", \"prompt\": [1], \"max_tokens\": 1}");
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
}

/* Parses SSE: returns the number of data events; *done set when [DONE] came last. */
static int sse_events(const char *body, json_t **events, int max, bool *done)
{
    int n = 0;
    *done = false;
    const char *p = body;
    while ((p = strstr(p, "data: "))) {
        p += 6;
        const char *e = strstr(p, "\n\n");
        if (!e) break;
        if (!strncmp(p, "[DONE]", 6)) {
            *done = !e[2];
        } else if (n < max) {
            events[n++] = json_loadb(p, (size_t)(e - p), 0, NULL);
        }
        p = e + 2;
    }
    return n;
}

static void test_stream(void)
{
    struct resp r = request("POST", "/v1/completions", NULL,
                            "{\"prompt\": [5], \"max_tokens\": 5, \"n\": 2, \"stream\": true,"
                            " \"stream_options\": {\"include_usage\": true}}");
    CHECK_EQ_INT(r.status, 200);
    CHECK(strcasestr(r.headers, "content-type: text/event-stream") != NULL);
    json_t *ev[64];
    bool done;
    int n = sse_events(r.body, ev, 64, &done);
    CHECK(done);
    CHECK_EQ_INT(n, 11); /* 5 tokens x 2 choices + usage */
    char text[2][64] = {"", ""};
    int finished[2] = {0, 0};
    for (int i = 0; i < n; i++) {
        CHECK(ev[i] != NULL);
        if (!ev[i]) continue;
        CHECK_EQ_STR(json_string_value(json_object_get(ev[i], "object")), "text_completion");
        json_t *ch = json_object_get(ev[i], "choices");
        if (i == n - 1) {
            CHECK_EQ_INT((int)json_array_size(ch), 0);
            json_t *u = json_object_get(ev[i], "usage");
            CHECK_EQ_INT(json_integer_value(json_object_get(u, "completion_tokens")), 10);
            CHECK_EQ_INT(json_integer_value(json_object_get(u, "prompt_tokens")), 1);
        } else {
            json_t *c = json_array_get(ch, 0);
            int idx = (int)json_integer_value(json_object_get(c, "index"));
            CHECK(idx == 0 || idx == 1);
            strcat(text[idx & 1], json_string_value(json_object_get(c, "text")));
            if (json_is_string(json_object_get(c, "finish_reason"))) finished[idx & 1]++;
        }
        json_decref(ev[i]);
    }
    CHECK_EQ_STR(text[0], "0,1,2,3,4,");
    CHECK_EQ_STR(text[1], "0,1,2,3,4,");
    CHECK(finished[0] == 1 && finished[1] == 1);
    resp_free(&r);
}

static void test_errors(void)
{
    struct resp r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1], ");
    EXPECT_ERROR(r, 400, "not valid JSON");
    resp_free(&r);
    check_alive();
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": \"\xc3\x28\"}");
    EXPECT_ERROR(r, 400, "not valid JSON");
    resp_free(&r);
    check_alive();
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1], \"max_tokens\": -5}");
    EXPECT_ERROR(r, 400, "'max_tokens' must be at least 1");
    resp_free(&r);
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1], \"temperature\": 9}");
    EXPECT_ERROR(r, 400, "'temperature' must be in [0, 2]");
    resp_free(&r);
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1], \"model\": \"gpt-4\"}");
    EXPECT_ERROR(r, 404, "The model `gpt-4` does not exist");
    resp_free(&r);
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1000]}");
    EXPECT_ERROR(r, 400, "out of the vocabulary");
    resp_free(&r);
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1, 2, 3], \"max_tokens\": 62}");
    EXPECT_ERROR(r, 400, "maximum context length is 64 tokens");
    resp_free(&r);
    r = request("POST", "/v1/completions", NULL, "{\"prompt\": \"text needs a tokenizer\"}");
    EXPECT_ERROR(r, 400, "no tokenizer.json");
    resp_free(&r);
    r = request("POST", "/v1/chat/completions", NULL,
                "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}");
    EXPECT_ERROR(r, 400, "no chat template");
    resp_free(&r);
    r = request("POST", "/v1/chat/completions", NULL, "{\"messages\": []}");
    EXPECT_ERROR(r, 400, "at least one message");
    resp_free(&r);
    check_alive();

    /* bodies over the limit (4096 in this test): 413, read first so that the client sees it */
    char *big = malloc(20000);
    memset(big, ' ', 19999);
    big[0] = '{';
    big[19998] = '}';
    big[19999] = 0;
    r = request("POST", "/v1/completions", NULL, big);
    EXPECT_ERROR(r, 413, "larger than the limit");
    resp_free(&r);
    check_alive();
    /* with Expect: 100-continue the 413 comes before the body */
    r = request("POST", "/v1/completions", "Expect: 100-continue\r\n", big);
    CHECK_EQ_INT(r.status, 413);
    resp_free(&r);
    free(big);
    check_alive();

    /* garbage instead of HTTP: the connection is dropped, the server goes on */
    int fd = dial();
    send_all(fd, "\x16\x03\x01\x02\x00garbage\r\n\r\n", 17);
    size_t len;
    char *raw = read_all(fd, &len, 3000);
    close(fd);
    free(raw);
    check_alive();
}

static void test_api_key(struct loom_server *s)
{
    s->api_key = "sekrit";
    struct resp r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1], \"max_tokens\": 1}");
    EXPECT_ERROR(r, 401, "API key");
    resp_free(&r);
    r = request("GET", "/v1/models", "Authorization: Bearer wrong\r\n", NULL);
    CHECK_EQ_INT(r.status, 401);
    resp_free(&r);
    r = request("GET", "/v1/models", "Authorization: Bearer sekrit\r\n", NULL);
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    r = request("GET", "/health", NULL, NULL); /* only /v1 is protected */
    CHECK_EQ_INT(r.status, 200);
    resp_free(&r);
    s->api_key = NULL;
}

/* ---------------------------------------------------------------------------------------------- */

struct client {
    pthread_t t;
    int index;
    bool ok;
};

static void *client_main(void *arg)
{
    struct client *c = arg;
    char body[256];
    snprintf(body, sizeof(body), "{\"prompt\": [%d], \"max_tokens\": 20, \"stream\": true}", c->index);
    struct resp r = request("POST", "/v1/completions", NULL, body);
    json_t *ev[64];
    bool done;
    int n = sse_events(r.body, ev, 64, &done);
    char text[256] = "";
    int fin = 0;
    for (int i = 0; i < n; i++) {
        json_t *ch = json_array_get(json_object_get(ev[i], "choices"), 0);
        strcat(text, json_string_value(json_object_get(ch, "text")) ?: "?");
        if (json_is_string(json_object_get(ch, "finish_reason"))) fin++;
        json_decref(ev[i]);
    }
    c->ok = r.status == 200 && done && n == 20 && fin == 1 &&
            !strcmp(text, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,");
    resp_free(&r);
    return NULL;
}

static void test_concurrent(void)
{
    enum { N = 64 };
    static struct client cl[N];
    /* earlier tests' requests may still be finishing in the fake engine: start from idle */
    double t0 = loom_now();
    while (fake_count(&fe.n_reqs) > 0 && loom_now() - t0 < 5) usleep(10000);
    CHECK_EQ_INT(fake_count(&fe.n_reqs), 0);
    int before = fake_count(&fe.finished);
    for (int i = 0; i < N; i++) {
        cl[i].index = i;
        pthread_create(&cl[i].t, NULL, client_main, &cl[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(cl[i].t, NULL);
        ok += cl[i].ok;
    }
    CHECK_EQ_INT(ok, N);
    /* the fake engine counts a request after its last callback, which can trail the client */
    t0 = loom_now();
    while (fake_count(&fe.finished) - before < N && loom_now() - t0 < 5) usleep(10000);
    CHECK_EQ_INT(fake_count(&fe.finished) - before, N);
}

static void test_disconnect(struct loom_server *s)
{
    int aborted = fake_count(&fe.aborted);
    fe.delay_us = 20000; /* slow tokens: the client leaves while its connection is parked */
    int fd = dial();
    const char *body = "{\"prompt\": [1], \"max_tokens\": 60, \"stream\": true}";
    char head[256];
    int hl =
        snprintf(head, sizeof(head),
                 "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", strlen(body));
    send_all(fd, head, (size_t)hl);
    send_all(fd, body, strlen(body));
    size_t len;
    char *raw = read_all(fd, &len, 300); /* some tokens */
    CHECK(strstr(raw, "data: ") != NULL);
    free(raw);
    close(fd);
    double t0 = loom_now();
    while (fake_count(&fe.aborted) == aborted && loom_now() - t0 < 5) usleep(10000);
    CHECK_EQ_INT(fake_count(&fe.aborted) - aborted, 1);
    double dt = loom_now() - t0;
    CHECK_MSG(dt < 2.0, "the abort took %.3fs", dt);
    while (loom_server_inflight(s) && loom_now() - t0 < 5) usleep(10000);
    CHECK_EQ_INT(loom_server_inflight(s), 0);

    /* the same for a request that is not streaming */
    aborted = fake_count(&fe.aborted);
    fd = dial();
    body = "{\"prompt\": [1], \"max_tokens\": 60}";
    hl = snprintf(head, sizeof(head),
                  "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", strlen(body));
    send_all(fd, head, (size_t)hl);
    send_all(fd, body, strlen(body));
    usleep(100000);
    close(fd);
    t0 = loom_now();
    while (fake_count(&fe.aborted) == aborted && loom_now() - t0 < 5) usleep(10000);
    CHECK_EQ_INT(fake_count(&fe.aborted) - aborted, 1);
    fe.delay_us = 1000;
    struct resp r = request("GET", "/metrics", NULL, NULL);
    CHECK(strstr(r.body, "loom:client_disconnects_total{model_name=\"fake\"} 2") != NULL);
    resp_free(&r);
}

static void test_slow_loris(void)
{
    /* half a request line, then nothing: the server closes it after its 1 s timeout */
    int fd = dial();
    send_all(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le", 50);
    double t0 = loom_now();
    check_alive(); /* others are served meanwhile */
    size_t len;
    char *raw = read_all(fd, &len, 5000);
    double dt = loom_now() - t0;
    CHECK_MSG(dt < 4.0, "closed after %.2fs", dt);
    free(raw);
    close(fd);
    /* a body that stops halfway */
    fd = dial();
    const char *h = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\": ";
    send_all(fd, h, strlen(h));
    t0 = loom_now();
    raw = read_all(fd, &len, 5000);
    CHECK_MSG(loom_now() - t0 < 4.0, "closed after %.2fs", loom_now() - t0);
    free(raw);
    close(fd);
    check_alive();
}

static void test_full(void)
{
    fe.capacity = 0;
    struct resp r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1]}");
    EXPECT_ERROR(r, 503, "full");
    resp_free(&r);
    fe.capacity = 1000;
    check_alive();
}

static void *slow_request(void *arg)
{
    struct resp *r = arg;
    *r = request("POST", "/v1/completions", NULL, "{\"prompt\": [1], \"max_tokens\": 50}");
    return NULL;
}

static void test_shutdown(struct loom_server *s)
{
    fe.delay_us = 10000; /* 50 tokens: 0.5 s */
    struct resp r;
    pthread_t t;
    pthread_create(&t, NULL, slow_request, &r);
    while (!loom_server_inflight(s)) usleep(1000);
    loom_server_shutdown(s, 10.0); /* waits for it */
    pthread_join(t, NULL);
    CHECK_EQ_INT(r.status, 200);
    json_t *j = body_json(&r);
    CHECK_EQ_STR(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "choices"), 0), "finish_reason")),
        "length");
    json_decref(j);
    resp_free(&r);
    CHECK(dial() < 0); /* no longer listening */
    loom_server_free(s);
}

int main(void)
{
    loom_log_set_level(getenv("LOOM_LOG") ? loom_log_get_level() : LOOM_LOG_WARN);
    pthread_create(&fe.thread, NULL, fake_main, NULL);
    struct loom_server_options o;
    loom_server_options_default(&o);
    o.port = 0;
    o.model_name = "fake";
    o.model_path = "/models/fake";
    o.max_body_bytes = 4096;
    o.connection_timeout_s = 1;
    o.max_model_len = 64;
    o.vocab_size = 1000;
    o.engine.add_request = fake_add;
    o.engine.abort = fake_abort;
    o.engine.get_stats = fake_stats;
    struct loom_server *s;
    if (loom_server_start(&o, &s)) {
        fprintf(stderr, "cannot start: %s\n", loom_last_error());
        return 1;
    }
    port = loom_server_port(s);
    CHECK(port > 0);
    test_routes();
    test_completions();
    test_stream();
    test_errors();
    test_api_key(s);
    test_concurrent();
    test_disconnect(s);
    test_slow_loris();
    test_full();
    test_shutdown(s);
    pthread_mutex_lock(&fe.lock);
    fe.stop = true;
    pthread_mutex_unlock(&fe.lock);
    pthread_join(fe.thread, NULL);
    return test_report();
}
