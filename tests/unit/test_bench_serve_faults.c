/*
 * test_bench_serve_faults.c: `loom bench serve` (loom_bench_serve_run) against a fake OpenAI server inside
 * this test (threads and sockets on 127.0.0.1, a random port) that refuses, stalls, drips keep-alives,
 * answers 500 and 400, cuts streams, sends error events, or streams correct SSE in awkward pieces.
 * Every run must end within a bounded time with exactly the right failure and token counts.
 *
 * The fake server picks its behaviour from the request's max_tokens:
 *   500, 400  that HTTP status with a JSON error      999  accept, read, never answer (stall)
 *   998       two tokens, then the connection drops   997  an error event in the stream
 *   996       a plain JSON body, no stream            995  ": ping" comments every 50 ms, no token
 *   7         7 token chunks, no usage                8    4 chunks of 2 tokens, usage says 8
 *   9         SSE without chunked encoding (until close)
 *   K (other) K token chunks then usage {prompt_tokens, completion_tokens: K} and [DONE], chunked
 */
#include "bench/dataset.h"
#include "bench/metrics.h"
#include "bench/serve.h"
#include "core/error.h"
#include "core/log.h"
#include "test.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------------ */
/* The fake server */

struct fake {
    int lfd, port;
    pthread_t thread;
    atomic_int stop;
    atomic_int handlers;  /* live handler threads */
    atomic_int requests;  /* completion requests received */
    atomic_int bad_shape; /* requests without stream/include_usage/model */
};

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void send_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return;
        p += k;
        n -= (size_t)k;
    }
}

static void send_str(int fd, const char *s)
{
    send_all(fd, s, strlen(s));
}

/* One HTTP chunk; `split` sends the size line and the data in separate writes. */
static void send_chunk(int fd, const char *data, bool split)
{
    char head[32];
    snprintf(head, sizeof(head), "%zx\r\n", strlen(data));
    send_str(fd, head);
    if (split) msleep(1);
    send_str(fd, data);
    send_str(fd, "\r\n");
}

/* Reads one request: headers and a Content-Length body. Returns the body (caller frees) or NULL. */
static char *read_request(struct fake *f, int fd, char *line, size_t line_cap)
{
    char buf[65536];
    size_t n = 0;
    long clen = -1;
    char *hdr_end = NULL;
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0) continue;
        ssize_t k = recv(fd, buf + n, sizeof(buf) - 1 - n, 0);
        if (k <= 0) return NULL;
        n += (size_t)k;
        buf[n] = 0;
        if (!hdr_end && (hdr_end = strstr(buf, "\r\n\r\n"))) {
            char *cl = strcasestr(buf, "content-length:");
            clen = cl && cl < hdr_end ? strtol(cl + 15, NULL, 10) : 0;
        }
        if (hdr_end && (long)(n - (size_t)(hdr_end + 4 - buf)) >= clen) {
            char *eol = strstr(buf, "\r\n");
            snprintf(line, line_cap, "%.*s", (int)(eol - buf), buf);
            return strndup(hdr_end + 4, (size_t)clen);
        }
        if (n >= sizeof(buf) - 1) return NULL;
    }
    return NULL;
}

static void respond_status(int fd, int status, const char *msg)
{
    char body[256], head[256];
    snprintf(body, sizeof(body), "{\"error\": {\"message\": \"%s\", \"code\": %d}}", msg, status);
    snprintf(head, sizeof(head), "HTTP/1.1 %d Oops\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n", status, strlen(body));
    send_str(fd, head);
    send_str(fd, body);
}

static const char *SSE_HEAD = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                              "Connection: close\r\n\r\n";
static const char *TOKEN = "data: {\"id\":\"c\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":\"a\","
                           "\"finish_reason\":null}]}\n\n";

static void stream_tokens(struct fake *f, int fd, int max_tokens, int n_prompt)
{
    send_str(fd, SSE_HEAD);
    msleep(20); /* "prefill": every TTFT is at least 20 ms */
    if (max_tokens == 8) {
        for (int i = 0; i < 4; i++) {
            send_chunk(fd, "data: {\"choices\":[{\"index\":0,\"text\":\"ab\"}]}\n\n", false);
            msleep(3);
        }
    } else {
        for (int i = 0; i < max_tokens && !atomic_load(&f->stop); i++) {
            if (i % 3 == 1) { /* one event across two HTTP chunks */
                size_t half = strlen(TOKEN) / 2;
                char a[512];
                snprintf(a, sizeof(a), "%.*s", (int)half, TOKEN);
                send_chunk(fd, a, true);
                send_chunk(fd, TOKEN + half, false);
            } else {
                send_chunk(fd, TOKEN, i % 2 == 0);
            }
            msleep(3);
        }
    }
    if (max_tokens != 7) {
        char u[256];
        snprintf(u, sizeof(u), "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                 "\"total_tokens\":%d}}\n\n", n_prompt, max_tokens, n_prompt + max_tokens);
        send_chunk(fd, u, false);
    }
    send_chunk(fd, "data: [DONE]\n\n", false);
    send_str(fd, "0\r\n\r\n");
}

static void *handler(void *arg)
{
    int fd = (int)(intptr_t)((void **)arg)[0];
    struct fake *f = ((void **)arg)[1];
    free(arg);
    char line[256];
    char *body = read_request(f, fd, line, sizeof(line));
    if (!body) goto out;
    if (!strncmp(line, "GET /v1/models", 14)) {
        const char *m = "{\"object\":\"list\",\"data\":[{\"id\":\"fake-model\",\"object\":\"model\"}]}";
        char head[200];
        snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                 strlen(m));
        send_str(fd, head);
        send_str(fd, m);
        goto out;
    }
    atomic_fetch_add(&f->requests, 1);
    json_t *req = json_loads(body, 0, NULL);
    int max_tokens = (int)json_integer_value(json_object_get(req, "max_tokens"));
    json_t *prompt = json_object_get(req, "prompt");
    int n_prompt = json_is_array(prompt) ? (int)json_array_size(prompt) : 3;
    bool shaped = json_is_true(json_object_get(req, "stream")) &&
                  json_is_true(json_object_get(json_object_get(req, "stream_options"), "include_usage")) &&
                  json_is_string(json_object_get(req, "model")) &&
                  !strncmp(line, "POST /v1/completions ", 21);
    json_decref(req);
    if (!shaped) {
        atomic_fetch_add(&f->bad_shape, 1);
        respond_status(fd, 422, "unexpected request shape");
        goto out;
    }
    switch (max_tokens) {
    case 500:
        respond_status(fd, 500, "internal error");
        break;
    case 400:
        respond_status(fd, 400, "bad request");
        break;
    case 999:
        while (!atomic_load(&f->stop)) msleep(10);
        break;
    case 998:
        send_str(fd, SSE_HEAD);
        send_chunk(fd, TOKEN, false);
        send_chunk(fd, TOKEN, false);
        msleep(5);
        break; /* close without the last chunk */
    case 997:
        send_str(fd, SSE_HEAD);
        send_chunk(fd, TOKEN, false);
        send_chunk(fd, "data: {\"error\": {\"message\": \"boom\", \"code\": 500}}\n\n", false);
        send_chunk(fd, "data: [DONE]\n\n", false);
        send_str(fd, "0\r\n\r\n");
        break;
    case 996: {
        const char *b = "{\"choices\":[{\"text\":\"whole\"}],\"usage\":{\"completion_tokens\":996}}";
        char head[200];
        snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                 strlen(b));
        send_str(fd, head);
        send_str(fd, b);
        break;
    }
    case 995:
        send_str(fd, SSE_HEAD);
        while (!atomic_load(&f->stop)) {
            send_chunk(fd, ": ping\n\n", false);
            msleep(50);
        }
        break;
    case 9: /* no chunked encoding: the body ends when the connection does */
        send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n");
        msleep(20);
        for (int i = 0; i < 9; i++) {
            send_str(fd, TOKEN);
            msleep(3);
        }
        send_str(fd, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n");
        break;
    default:
        stream_tokens(f, fd, max_tokens, n_prompt);
    }
out:
    free(body);
    close(fd);
    atomic_fetch_sub(&f->handlers, 1);
    return NULL;
}

static void *acceptor(void *arg)
{
    struct fake *f = arg;
    while (!atomic_load(&f->stop)) {
        struct pollfd p = {.fd = f->lfd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0) continue;
        int fd = accept(f->lfd, NULL, NULL);
        if (fd < 0) continue;
        void **a = malloc(2 * sizeof(void *));
        a[0] = (void *)(intptr_t)fd;
        a[1] = f;
        atomic_fetch_add(&f->handlers, 1);
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, handler, a)) {
            atomic_fetch_sub(&f->handlers, 1);
            close(fd);
            free(a);
        }
        pthread_attr_destroy(&at);
    }
    return NULL;
}

/* Binds 127.0.0.1 on a random port; with listen_too, serves it. */
static int fake_start(struct fake *f, bool listen_too)
{
    memset(f, 0, sizeof(*f));
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(f->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(f->lfd, (struct sockaddr *)&a, sizeof(a))) return -1;
    socklen_t al = sizeof(a);
    getsockname(f->lfd, (struct sockaddr *)&a, &al);
    f->port = ntohs(a.sin_port);
    if (!listen_too) {
        close(f->lfd); /* nothing listens there now: connections are refused */
        f->lfd = -1;
        return 0;
    }
    if (listen(f->lfd, 256)) return -1;
    return pthread_create(&f->thread, NULL, acceptor, f);
}

static void fake_stop(struct fake *f)
{
    if (f->lfd < 0) return;
    atomic_store(&f->stop, 1);
    pthread_join(f->thread, NULL);
    close(f->lfd);
    for (int i = 0; i < 500 && atomic_load(&f->handlers) > 0; i++) msleep(10);
    CHECK_EQ_INT(atomic_load(&f->handlers), 0);
}

/* ------------------------------------------------------------------------------------------------ */
/* The runs */

static char url[64];

static void base_config(struct loom_bench_serve_config *c, const struct fake *f, const struct loom_bench_dataset *d)
{
    loom_bench_serve_config_default(c);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", f->port);
    c->base_url = url;
    c->model = "m";
    c->dataset = d;
    c->progress = false;
    c->timeout = 0.5;
    c->request_timeout = 5;
}

/* A dataset whose request i asks for out[i] tokens with a prompt of 3 + i ids. */
static void make_dataset(struct loom_bench_dataset *d, const int *out, int n)
{
    loom_bench_dataset_random_ids(d, n, 64, 1, 0.0, 1000, 1); /* then cut to 3 + i ids */
    for (int i = 0; i < n; i++) {
        d->items[i].n_ids = d->items[i].prompt_len = 3 + i;
        d->items[i].output_len = out[i];
    }
}

static void test_refused(void)
{
    struct fake f;
    CHECK(fake_start(&f, false) == 0);
    struct loom_bench_dataset d;
    loom_bench_dataset_random_ids(&d, 6, 16, 4, 0.0, 1000, 0);
    struct loom_bench_serve_config c;
    base_config(&c, &f, &d);
    struct loom_bench_serve_result r;
    double t0 = loom_now();
    CHECK(loom_bench_serve_run(&c, &r) == 0);
    double el = loom_now() - t0;
    CHECK_MSG(el < 3.0, "a refused run took %.2f s", el);
    CHECK_EQ_INT(r.fail_count[LOOM_BENCH_FAIL_CONNECT], 6);
    CHECK_EQ_INT(r.fail_count[LOOM_BENCH_OK], 0);
    CHECK(r.error[0] && strstr(r.error[0], "refused"));
    double pcts[] = {99};
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(r.reqs, r.n, r.duration, pcts, 1, NULL, &m);
    CHECK_EQ_INT(m.completed, 0);
    CHECK_EQ_INT(m.failed, 6);
    CHECK_EQ_INT(m.total_output, 0);
    CHECK_EQ_INT(m.total_input, 0);
    loom_bench_serve_result_free(&r);

    /* no --model and nothing to ask: a configuration error, at once */
    c.model = NULL;
    t0 = loom_now();
    CHECK(loom_bench_serve_run(&c, &r) < 0);
    CHECK(loom_now() - t0 < 3.0);
    CHECK(strstr(loom_last_error(), "--model") != NULL);
    loom_bench_dataset_free(&d);
}

static void test_stall(void)
{
    struct fake f;
    CHECK(fake_start(&f, true) == 0);
    /* three stalls, two at a time, 0.5 s idle timeout: about 1 s; plus keep-alive drips that never
     * reach the idle timeout but do reach the 1 s request timeout */
    int out[] = {999, 999, 999, 995, 995};
    struct loom_bench_dataset d;
    make_dataset(&d, out, 5);
    struct loom_bench_serve_config c;
    base_config(&c, &f, &d);
    c.max_concurrency = 2;
    c.request_timeout = 1.0;
    struct loom_bench_serve_result r;
    double t0 = loom_now();
    CHECK(loom_bench_serve_run(&c, &r) == 0);
    double el = loom_now() - t0;
    CHECK_MSG(el > 0.9 && el < 5.0, "a stalled run took %.2f s", el);
    CHECK_EQ_INT(r.fail_count[LOOM_BENCH_FAIL_TIMEOUT], 5);
    CHECK(r.error[0] && strstr(r.error[0], "--timeout"));
    CHECK(r.error[4] && strstr(r.error[4], "--request-timeout"));
    CHECK_EQ_INT(r.http_status[4], 200);
    loom_bench_serve_result_free(&r);
    loom_bench_dataset_free(&d);
    fake_stop(&f);
}

static void check_mixed(const struct loom_bench_serve_result *r, const int *out, int n)
{
    /* successes: 5 7 8 9 12 3 1; failures: http 500 400, timeout 999, stream 998 997 996 */
    CHECK_EQ_INT(r->fail_count[LOOM_BENCH_OK], 7);
    CHECK_EQ_INT(r->fail_count[LOOM_BENCH_FAIL_HTTP], 2);
    CHECK_EQ_INT(r->fail_count[LOOM_BENCH_FAIL_TIMEOUT], 1);
    CHECK_EQ_INT(r->fail_count[LOOM_BENCH_FAIL_STREAM], 3);
    CHECK_EQ_INT(r->fail_count[LOOM_BENCH_FAIL_CONNECT], 0);
    CHECK_EQ_INT(r->usage_reported, 6); /* all but the max_tokens 7 one */
    long long want_in = 0, want_out = 0;
    for (int i = 0; i < n; i++) {
        const struct loom_bench_req *q = &r->reqs[i];
        bool ok = out[i] < 100;
        CHECK_MSG(q->success == ok, "request %d (max_tokens %d): success %d, error %s", i, out[i], q->success,
                  r->error[i] ? r->error[i] : "-");
        if (!ok) continue;
        want_in += 3 + i;
        want_out += out[i];
        CHECK_EQ_INT(loom_bench_req_output_tokens(q), out[i]);
        int chunks = out[i] == 8 ? 4 : out[i];
        CHECK_EQ_INT(q->n_chunks, chunks);
        CHECK_EQ_INT(q->n_itl, chunks - 1);
        CHECK_MSG(q->ttft >= 0.019, "request %d TTFT %g < 20 ms", i, q->ttft);
        CHECK(q->latency >= q->ttft);
        double sum = 0;
        for (int k = 0; k < q->n_itl; k++) sum += q->itl[k];
        CHECK_NEAR(q->ttft + sum, q->latency, 1e-9); /* the chunks tile the request's life */
        CHECK_EQ_INT(q->prompt_len, 3 + i);
    }
    for (int i = 0; i < n; i++) {
        if (out[i] == 500) CHECK(r->error[i] && strstr(r->error[i], "HTTP 500") && strstr(r->error[i], "internal"));
        if (out[i] == 400) CHECK_EQ_INT(r->http_status[i], 400);
        if (out[i] == 997) CHECK(r->error[i] && strstr(r->error[i], "boom"));
        if (out[i] == 998) CHECK(r->error[i] && strstr(r->error[i], "closed"));
        if (out[i] == 996) CHECK(r->error[i] && strstr(r->error[i], "application/json"));
    }
    double pcts[] = {50, 99};
    struct loom_bench_slo slo;
    loom_bench_slo_none(&slo);
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(r->reqs, r->n, r->duration, pcts, 2, &slo, &m);
    CHECK_EQ_INT(m.completed, 7);
    CHECK_EQ_INT(m.failed, 6);
    CHECK_EQ_INT(m.total_input, want_in);
    CHECK_EQ_INT(m.total_output, want_out);
    CHECK_EQ_INT(want_out, 5 + 7 + 8 + 9 + 12 + 3 + 1);
    CHECK(m.ttft.min >= 0.019);
    CHECK_EQ_INT(m.itl.n, 4 + 6 + 3 + 8 + 11 + 2 + 0);
    CHECK_EQ_INT(m.tpot.n, 6); /* the one-token request has no TPOT */
    CHECK(m.output_throughput > 0 && m.duration > 0);
}

static void test_mixed(void)
{
    struct fake f;
    CHECK(fake_start(&f, true) == 0);
    int out[] = {5, 500, 400, 999, 998, 997, 996, 7, 8, 9, 12, 3, 1};
    int n = (int)(sizeof(out) / sizeof(out[0]));
    struct loom_bench_dataset d;
    make_dataset(&d, out, n);
    struct loom_bench_serve_config c;
    base_config(&c, &f, &d);
    c.ignore_eos = true;
    struct loom_bench_serve_result r;

    /* all at once, no cap */
    double t0 = loom_now();
    CHECK(loom_bench_serve_run(&c, &r) == 0);
    CHECK_MSG(loom_now() - t0 < 5.0, "mixed run took %.2f s", loom_now() - t0);
    check_mixed(&r, out, n);
    loom_bench_serve_result_free(&r);

    /* Poisson arrivals at 40 req/s, three at a time */
    c.request_rate = 40;
    c.max_concurrency = 3;
    c.seed = 5;
    t0 = loom_now();
    CHECK(loom_bench_serve_run(&c, &r) == 0);
    CHECK_MSG(loom_now() - t0 < 8.0, "paced run took %.2f s", loom_now() - t0);
    check_mixed(&r, out, n);
    loom_bench_serve_result_free(&r);

    /* the model name from GET /v1/models */
    int ok_out[] = {4, 6};
    struct loom_bench_dataset d2;
    make_dataset(&d2, ok_out, 2);
    base_config(&c, &f, &d2);
    c.model = NULL;
    CHECK(loom_bench_serve_run(&c, &r) == 0);
    CHECK_EQ_STR(r.model, "fake-model");
    CHECK_EQ_INT(r.fail_count[LOOM_BENCH_OK], 2);
    loom_bench_serve_result_free(&r);

    /* the chat endpoint refuses token-id prompts before sending anything */
    c.model = "m";
    c.endpoint = "/v1/chat/completions";
    int before = atomic_load(&f.requests);
    CHECK(loom_bench_serve_run(&c, &r) == LOOM_EINVAL);
    CHECK_EQ_INT(atomic_load(&f.requests), before);

    CHECK_EQ_INT(atomic_load(&f.bad_shape), 0);
    CHECK_EQ_INT(atomic_load(&f.requests), 2 * n + 2);
    loom_bench_dataset_free(&d);
    loom_bench_dataset_free(&d2);
    fake_stop(&f);
}

static void test_interrupt(void)
{
    struct fake f;
    CHECK(fake_start(&f, true) == 0);
    int out[] = {999, 999, 999, 999};
    struct loom_bench_dataset d;
    make_dataset(&d, out, 4);
    struct loom_bench_serve_config c;
    base_config(&c, &f, &d);
    c.timeout = 60;
    c.max_concurrency = 1;
    volatile int stop = 1; /* already set: everything ends as interrupted, at once */
    c.stop = &stop;
    struct loom_bench_serve_result r;
    double t0 = loom_now();
    CHECK(loom_bench_serve_run(&c, &r) == 0);
    CHECK(loom_now() - t0 < 2.0);
    CHECK_EQ_INT(r.fail_count[LOOM_BENCH_FAIL_INTERRUPTED], 4);
    loom_bench_serve_result_free(&r);
    loom_bench_dataset_free(&d);
    fake_stop(&f);
}

/* The command line on top: `$LOOM_BIN bench serve ... --json FILE` against the fake server. */
static json_t *run_cli(const struct fake *f, const char *extra, int *status)
{
    const char *bin = getenv("LOOM_BIN");
    char path[] = "/tmp/loom_bench_cli_XXXXXX";
    int fd = mkstemp(path);
    close(fd);
    char cmd[2048];
    snprintf(cmd, sizeof(cmd), "'%s' bench serve --base-url http://127.0.0.1:%d --model m --no-progress "
             "--timeout 2 --json %s %s >/dev/null 2>&1", bin, f->port, path, extra);
    int rc = system(cmd);
    *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    json_t *j = json_load_file(path, 0, NULL);
    unlink(path);
    return j;
}

static void test_cli(void)
{
    const char *bin = getenv("LOOM_BIN");
    if (!bin || access(bin, X_OK)) {
        printf("note: LOOM_BIN not set or not executable: the command-line checks are left out\n");
        return;
    }
    struct fake f;
    CHECK(fake_start(&f, true) == 0);
    int st;
    /* 5 prompts of 4 ids asking for 6 tokens: 20 in, 30 out, vLLM's key names */
    json_t *j = run_cli(&f, "--num-prompts 5 --random-input-len 4 --random-output-len 6 --request-rate 100 "
                            "--metric-percentiles 50,99.9 --goodput ttft:10000", &st);
    CHECK_EQ_INT(st, 0);
    CHECK(j != NULL);
    CHECK_EQ_STR(json_string_value(json_object_get(j, "benchmark")), "serve");
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "completed")), 5);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "failed")), 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "total_input_tokens")), 20);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "total_output_tokens")), 30);
    CHECK(json_real_value(json_object_get(j, "p99.9_ttft_ms")) >= 19.0);
    CHECK(json_real_value(json_object_get(j, "median_tpot_ms")) > 0);
    CHECK(json_is_real(json_object_get(j, "request_goodput")));
    CHECK(json_is_object(json_object_get(j, "machine")) && json_is_object(json_object_get(j, "git")));
    CHECK(json_is_array(json_object_get(j, "argv")));
    json_decref(j);
    /* every request answered 500: a finished report, the failures counted, exit status 0 */
    j = run_cli(&f, "--num-prompts 4 --random-output-len 500", &st);
    CHECK_EQ_INT(st, 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "completed")), 0);
    CHECK_EQ_INT(json_integer_value(json_object_get(j, "failed")), 4);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(j, "failures"), "http")), 4);
    CHECK_EQ_INT(json_array_size(json_object_get(j, "errors")), 4);
    json_decref(j);
    /* bad flags are usage errors */
    j = run_cli(&f, "--goodput foo:1", &st);
    CHECK_EQ_INT(st, 2);
    json_decref(j);
    fake_stop(&f);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    test_refused();
    test_stall();
    test_mixed();
    test_interrupt();
    test_cli();
    return test_report();
}
