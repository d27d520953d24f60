/* server_overhead.c: TTFT and inter-token latency through the C API vs through `loom serve` (SSE), with C
 * concurrent requests of prompt [1], max_tokens N, greedy, ignore_eos (bench/RESULTS.md, server overhead).
 *   server_overhead api MODEL_DIR C N      (DEVICE=cpu|cuda in the environment picks the backend)
 *   server_overhead http PORT C N          (against `loom serve MODEL_DIR --port PORT`)
 * A measuring tool, not part of the build:
 *   cc -O2 -std=gnu11 -Iinclude -Isrc bench/server_overhead.c build/libloomcore.a [build/libloomcuda.a
 *      -L/usr/local/cuda/lib64 -lcudart -lcublas -lcublasLt -lstdc++] -ljansson -lpcre2-8 -lutf8proc
 *      -lmicrohttpd -lm -lpthread -o server_overhead
 */
#include "core/log.h"
#include "loom.h"
#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct rec {
    double t0, first, last;
    int n;
    double gap_sum;
    pthread_mutex_t lock;
    bool done;
};

static void on_out(const struct loom_output *o, void *user)
{
    struct rec *r = user;
    double now = loom_now();
    pthread_mutex_lock(&r->lock);
    if (o->n_tokens > 0) {
        if (r->n == 0) r->first = now;
        else r->gap_sum += now - r->last;
        r->last = now;
        r->n += o->n_tokens;
    }
    if (o->finish_reason) r->done = true;
    pthread_mutex_unlock(&r->lock);
}

static void report(const char *what, struct rec *recs, int c)
{
    double ttft = 0, itl = 0;
    int ni = 0;
    for (int i = 0; i < c; i++) {
        ttft += recs[i].first - recs[i].t0;
        if (recs[i].n > 1) {
            itl += recs[i].gap_sum / (recs[i].n - 1);
            ni++;
        }
    }
    printf("%s: C=%d mean TTFT %.3f ms, mean ITL %.3f ms (tokens/req %d)\n", what, c, 1e3 * ttft / c,
           ni ? 1e3 * itl / ni : 0, recs[0].n);
}

static int run_api(const char *dir, int c, int n)
{
    struct loom_engine_options o;
    loom_engine_options_default(&o);
    o.model_dir = dir;
    o.tokenizer_dir = getenv("TOK");
    if (getenv("THREADS")) o.threads = atoi(getenv("THREADS"));
    if (getenv("DEVICE")) o.device = getenv("DEVICE");
    struct loom_engine *e;
    if (loom_engine_create(&o, &e)) {
        fprintf(stderr, "%s\n", loom_last_error());
        return 1;
    }
    loom_engine_start(e);
    struct loom_server *srv = NULL;
    if (getenv("WITH_SERVER")) {
        struct loom_server_options so;
        loom_server_options_default(&so);
        so.port = 0;
        so.model_name = "x";
        so.model_path = dir;
        so.max_model_len = loom_engine_max_model_len(e);
        so.vocab_size = loom_engine_vocab_size(e);
        so.tokenizer = loom_engine_tokenizer(e);
        so.engine.ctx = e;
        so.engine.add_request = (int (*)(void *, const struct loom_request *, uint64_t *))loom_engine_add_request;
        so.engine.abort = (int (*)(void *, uint64_t))loom_engine_abort;
        so.engine.get_stats = (void (*)(void *, struct loom_engine_stats *))loom_engine_get_stats;
        if (loom_server_start(&so, &srv)) return 1;
        fprintf(stderr, "server on %d\n", loom_server_port(srv));
    }
    for (int rep = 0; rep < 2; rep++) {
        struct rec *recs = calloc((size_t)c, sizeof(*recs));
        int32_t prompt[1] = {1};
        for (int i = 0; i < c; i++) {
            pthread_mutex_init(&recs[i].lock, NULL);
            struct loom_request r;
            loom_request_default(&r);
            r.prompt_ids = prompt;
            r.n_prompt_ids = 1;
            r.params.max_tokens = n;
            r.params.temperature = 0;
            r.params.ignore_eos = true;
            r.on_output = on_out;
            r.user = &recs[i];
            recs[i].t0 = loom_now();
            uint64_t id;
            loom_engine_add_request(e, &r, &id);
        }
        for (int i = 0; i < c; i++)
            for (;;) {
                pthread_mutex_lock(&recs[i].lock);
                bool d = recs[i].done;
                pthread_mutex_unlock(&recs[i].lock);
                if (d) break;
                usleep(200);
            }
        if (rep) report("C API", recs, c);
        free(recs);
    }
    loom_engine_stop(e);
    loom_engine_free(e);
    return 0;
}

static int port, ntok;

static void *client(void *arg)
{
    struct rec *r = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->t0 = loom_now();
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) return NULL;
    char body[256], req[512];
    int bl = snprintf(body, sizeof(body),
                      "{\"prompt\": [1], \"max_tokens\": %d, \"temperature\": 0, \"ignore_eos\": true, \"stream\": true}",
                      ntok);
    int rl = snprintf(req, sizeof(req),
                      "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
                      "application/json\r\nContent-Length: %d\r\n\r\n%s",
                      bl, body);
    send(fd, req, (size_t)rl, 0);
    char buf[65536];
    /* count "\"text\"" occurrences per read: one per token chunk */
    for (;;) {
        ssize_t k = recv(fd, buf, sizeof(buf) - 1, 0);
        if (k <= 0) break;
        buf[k] = 0;
        double now = loom_now();
        int events = 0;
        for (char *p = buf; (p = strstr(p, "\"text\":")); p++) events++;
        if (events) {
            if (r->n == 0) r->first = now;
            else r->gap_sum += now - r->last;
            r->last = now;
            r->n += events;
        }
    }
    close(fd);
    return NULL;
}

static int run_http(int c)
{
    for (int rep = 0; rep < 2; rep++) {
        struct rec *recs = calloc((size_t)c, sizeof(*recs));
        pthread_t *t = calloc((size_t)c, sizeof(*t));
        for (int i = 0; i < c; i++) pthread_create(&t[i], NULL, client, &recs[i]);
        for (int i = 0; i < c; i++) pthread_join(t[i], NULL);
        if (rep) report("HTTP ", recs, c);
        free(recs);
        free(t);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5) return 2;
    int c = atoi(argv[3]);
    ntok = atoi(argv[4]);
    if (!strcmp(argv[1], "api")) return run_api(argv[2], c, ntok);
    port = atoi(argv[2]);
    return run_http(c);
}
