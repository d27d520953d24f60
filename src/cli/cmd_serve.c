/*
 * cmd_serve.c: `loom serve MODEL_DIR`: loads the engine, starts its step thread, serves the
 * OpenAI-compatible API (server/server.h) and waits for SIGINT / SIGTERM. The first signal drains
 * (no new connections; requests in flight finish, up to --shutdown-timeout seconds, then are
 * aborted); a second one aborts at once. Exits 0 after a clean stop.
 */
#include "cli/commands.h"
#include "core/error.h"
#include "core/log.h"
#include "server/server.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: loom serve MODEL_DIR [--host 127.0.0.1] [--port 8000] [--served-model-name NAME]\n"
        "                  [--api-key KEY] [--max-body-bytes 10485760] [--http-timeout 30]\n"
        "                  [--max-connections 4096] [--http-threads 2] [--shutdown-timeout 30]\n"
        "                  [common flags]\n\n"
        "Serves MODEL_DIR (a Hugging Face folder) over an OpenAI-compatible HTTP API:\n"
        "  POST /v1/completions, POST /v1/chat/completions, GET /v1/models,\n"
        "  POST /tokenize, POST /detokenize, GET /health, GET /version, GET /metrics (Prometheus).\n"
        "The model is called by --served-model-name (default: the folder's name) or by its path.\n"
        "--api-key (or the environment variable LOOM_API_KEY) makes every /v1 route require\n"
        "'Authorization: Bearer KEY'. --port 0 picks a free port (the log says which).\n"
        "SIGINT/SIGTERM stop accepting, let requests in flight finish (up to --shutdown-timeout\n"
        "seconds) and exit; a second signal aborts them at once.\n\n"
        "common flags: --device cpu|cuda --dtype auto|float32|bfloat16|float16 --threads N\n"
        "  --max-model-len N --max-num-seqs N --max-num-batched-tokens N --block-size N\n"
        "  --kv-cache-memory BYTES --num-kv-blocks N --gpu-memory-utilization F\n"
        "  --enable-prefix-caching | --no-enable-prefix-caching --seed S --scheduling-policy fcfs|priority\n"
        "  --tokenizer DIR (tokenizer.json and tokenizer_config.json from another folder)\n");
}

static int engine_add(void *ctx, const struct loom_request *r, uint64_t *id)
{
    return loom_engine_add_request(ctx, r, id);
}

static int engine_abort(void *ctx, uint64_t id)
{
    return loom_engine_abort(ctx, id);
}

static void engine_stats(void *ctx, struct loom_engine_stats *st)
{
    loom_engine_get_stats(ctx, st);
}

/* The folder's name: "/models/Qwen2.5-0.5B-Instruct/" -> "Qwen2.5-0.5B-Instruct". */
static char *basename_of(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && path[b - 1] != '/') b--;
    return loom_strndup(path + b, n - b);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

struct shutdown_ctx {
    struct loom_server *srv;
    double drain_s;
    bool done;
    pthread_mutex_t lock;
};

static void *shutdown_main(void *arg)
{
    struct shutdown_ctx *c = arg;
    loom_server_shutdown(c->srv, c->drain_s);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_mutex_unlock(&c->lock);
    kill(getpid(), SIGUSR1); /* wake the main thread's sigwait */
    return NULL;
}

int loom_cmd_serve(int argc, char **argv)
{
    struct loom_engine_options eo;
    loom_engine_options_default(&eo);
    struct loom_server_options so;
    loom_server_options_default(&so);
    const char *dir = NULL, *name = NULL, *api_key = getenv("LOOM_API_KEY");
    double drain_s = 30;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        long long n;
        double d;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        int r = loom_cli_common_flag(argc, argv, &i, &eo);
        if (r < 0) return 2;
        if (r > 0) continue;
        if (!strcmp(a, "--host")) {
            if (!(v = loom_cli_value(argc, argv, &i))) return 2;
            so.host = v;
        } else if (!strcmp(a, "--port")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 0, 65535, &n)) return 2;
            so.port = (int)n;
        } else if (!strcmp(a, "--served-model-name")) {
            if (!(v = loom_cli_value(argc, argv, &i))) return 2;
            name = v;
        } else if (!strcmp(a, "--api-key")) {
            if (!(v = loom_cli_value(argc, argv, &i))) return 2;
            api_key = v;
        } else if (!strcmp(a, "--max-body-bytes")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1024, (long long)1 << 32, &n))
                return 2;
            so.max_body_bytes = (size_t)n;
        } else if (!strcmp(a, "--http-timeout")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, 86400, &n)) return 2;
            so.connection_timeout_s = (int)n;
        } else if (!strcmp(a, "--max-connections")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, 1 << 20, &n)) return 2;
            so.max_connections = (int)n;
        } else if (!strcmp(a, "--http-threads")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_int(a, v, 1, 256, &n)) return 2;
            so.http_threads = (int)n;
        } else if (!strcmp(a, "--shutdown-timeout")) {
            if (!(v = loom_cli_value(argc, argv, &i)) || loom_cli_float(a, v, 0, 86400, &d)) return 2;
            drain_s = d;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "loom serve: unknown flag '%s' (see loom serve --help)\n", a);
            return 2;
        } else if (!dir) {
            dir = a;
        } else {
            fprintf(stderr, "loom serve: one MODEL_DIR only, got '%s' and '%s'\n", dir, a);
            return 2;
        }
    }
    if (!dir) {
        usage(stderr);
        return 2;
    }

    /* Every thread (the engine's, libmicrohttpd's) inherits this mask: only sigwait below sees them. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit();

    eo.model_dir = dir;
    struct loom_engine *e = NULL;
    if (loom_engine_create(&eo, &e) != LOOM_OK) {
        fprintf(stderr, "loom serve: %s\n", loom_last_error());
        return 1;
    }
    struct loom_tokenizer *tok = loom_engine_tokenizer(e);
    struct loom_chat_template *tmpl = NULL;
    if (tok) {
        int rc = loom_chat_template_load(eo.tokenizer_dir ? eo.tokenizer_dir : dir, &tmpl);
        if (rc == LOOM_ENOTFOUND)
            LOG_WARN("no chat template in tokenizer_config.json: /v1/chat/completions will answer 400");
        else if (rc != LOOM_OK)
            LOG_WARN("the chat template cannot be used (%s): /v1/chat/completions will answer 400",
                     loom_last_error());
    } else {
        LOG_WARN("no tokenizer.json: prompts must be token ids and outputs carry no text");
    }

    char *base = basename_of(dir);
    so.model_name = name ? name : base;
    so.model_path = dir;
    so.api_key = api_key;
    so.max_model_len = loom_engine_max_model_len(e);
    so.vocab_size = loom_engine_vocab_size(e);
    so.tokenizer = tok;
    so.chat_template = tmpl;
    so.engine = (struct loom_server_engine){
        .ctx = e, .add_request = engine_add, .abort = engine_abort, .get_stats = engine_stats};
    int status = 1;
    struct loom_server *srv = NULL;
    if (loom_engine_start(e) != LOOM_OK) {
        fprintf(stderr, "loom serve: cannot start the engine: %s\n", loom_last_error());
        goto out;
    }
    if (loom_server_start(&so, &srv) != LOOM_OK) {
        fprintf(stderr, "loom serve: %s\n", loom_last_error());
        goto out;
    }
    LOG_INFO("serving model '%s' (%s, context %d tokens, vocabulary %d%s%s) on http://%s:%d%s", so.model_name,
             dir, so.max_model_len, so.vocab_size, tok ? "" : ", no tokenizer", tmpl ? ", chat template" : "",
             so.host, loom_server_port(srv), so.api_key && so.api_key[0] ? " (API key required)" : "");

    int sig = 0;
    while (sigwait(&sigs, &sig) == 0 && sig == SIGUSR1) {
    }
    LOG_INFO("%s: shutting down (no new connections; requests in flight get %.0fs to finish; signal again to "
             "abort them)",
             sig == SIGINT ? "SIGINT" : "SIGTERM", drain_s);
    struct shutdown_ctx sc = {.srv = srv, .drain_s = drain_s, .lock = PTHREAD_MUTEX_INITIALIZER};
    pthread_t t;
    if (pthread_create(&t, NULL, shutdown_main, &sc)) LOOM_DIE("cannot create the shutdown thread");
    for (;;) {
        pthread_mutex_lock(&sc.lock);
        bool done = sc.done;
        pthread_mutex_unlock(&sc.lock);
        if (done) break;
        if (sigwait(&sigs, &sig) == 0 && sig != SIGUSR1) {
            LOG_WARN("second signal: aborting the requests in flight");
            loom_server_hurry(srv);
        }
    }
    pthread_join(t, NULL);
    loom_server_free(srv);
    status = 0;
out:
    loom_engine_stop(e);
    loom_chat_template_free(tmpl);
    loom_engine_free(e);
    free(base);
    if (status == 0) LOG_INFO("stopped");
    return status;
}
