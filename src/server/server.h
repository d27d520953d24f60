/*
 * server.h: the HTTP server behind `loom serve`, in three parts:
 *   http.c     libmicrohttpd glue: connections, body limits, timeouts, routing into openai.c, and the
 *              "job" that carries an engine request's output back to its connection;
 *   openai.c   the routes: /v1/completions, /v1/chat/completions, /v1/models, /tokenize, /detokenize,
 *              /health, /version, /metrics; it feeds the engine and turns its outputs into JSON or SSE;
 *   metrics.c  the Prometheus page.
 *
 * Threads. libmicrohttpd runs a small pool of epoll threads (MHD_USE_INTERNAL_POLLING_THREAD |
 * MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME); the engine steps on its own thread. No MHD thread ever
 * waits for the engine: a connection whose answer is not ready is suspended, and the engine's output
 * callback appends to the job's buffer and resumes it. A watchdog thread notices clients that hang up
 * while their connection is suspended, and aborts their engine requests so the KV blocks are freed.
 *
 * The engine is reached through struct loom_server_engine (function pointers), so the server can be
 * tested against a fake engine; `loom serve` passes the real one.
 */
#ifndef LOOM_SERVER_SERVER_H
#define LOOM_SERVER_SERVER_H

#include "loom.h"
#include "server/metrics.h"
#include "server/openai.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loom_tokenizer;
struct loom_chat_template;
struct MHD_Connection;
struct MHD_Daemon;

struct loom_server_engine {
    void *ctx;
    int (*add_request)(void *ctx, const struct loom_request *req, uint64_t *request_id);
    int (*abort)(void *ctx, uint64_t request_id);
    void (*get_stats)(void *ctx, struct loom_engine_stats *st);
};

struct loom_server_options {
    const char *host;                 /* address to bind (default "127.0.0.1"; "0.0.0.0" or "::" for all) */
    int port;                         /* default 8000; 0 = any free port (loom_server_port tells which) */
    const char *model_name;           /* the served name (default: basename of model_path) */
    const char *model_path;           /* the folder; also accepted as the model name in requests */
    const char *api_key;              /* NULL: no authentication; else /v1 routes need "Bearer KEY" */
    size_t max_body_bytes;            /* request bodies above this get 413 (default 10 MiB) */
    int max_connections;              /* concurrent connections (default 4096) */
    int connection_timeout_s;         /* an idle or stalled connection is closed after this (default 30) */
    int http_threads;                 /* libmicrohttpd polling threads (default 2) */
    int max_model_len;                /* the context length, for prompt checks */
    int vocab_size;                   /* for token id checks */
    struct loom_tokenizer *tokenizer; /* NULL: token id prompts only */
    struct loom_chat_template *chat_template; /* NULL: /v1/chat/completions answers 400 */
    struct loom_server_engine engine;
};
void loom_server_options_default(struct loom_server_options *o);

struct loom_server;

/* Binds and starts serving (returns at once). LOOM_EIO with the address when it cannot bind. */
int loom_server_start(const struct loom_server_options *o, struct loom_server **out);
int loom_server_port(const struct loom_server *s);
/* Graceful stop: stops accepting, waits up to drain_s seconds for requests in flight to finish, aborts
 * the rest, then closes every connection. The engine must still be running. */
void loom_server_shutdown(struct loom_server *s, double drain_s);
void loom_server_free(struct loom_server *s); /* after loom_server_shutdown */
/* Cuts a running loom_server_shutdown's drain short (a second SIGINT): what is left is aborted now. */
void loom_server_hurry(struct loom_server *s);
/* Requests in flight (waiting for or receiving engine output). */
int loom_server_inflight(struct loom_server *s);

/* ---------------------------------------------------------------------------------------------- */
/* Internal: shared by http.c and openai.c. */

/*
 * A job: one HTTP request's answer that the engine produces. The producer (openai.c, on the engine's
 * thread) appends to `out` (streaming) or sets status/body (not streaming) under `lock`, sets `done`
 * when nothing more will come, and calls loom_job_unlock_wake. The HTTP side (http.c, on an MHD
 * thread) sends what is there and suspends the connection when nothing is. Reference counted: the
 * producer, the HTTP request and the streaming response each hold one.
 */
enum loom_job_state {
    LOOM_JOB_DETACHED = 0, /* no connection attached yet (or never) */
    LOOM_JOB_RUNNING,      /* MHD is processing the connection */
    LOOM_JOB_SUSPENDING,   /* an MHD thread is suspending it right now */
    LOOM_JOB_WAKE,         /* output arrived while suspending: resume as soon as suspended */
    LOOM_JOB_SUSPENDED,    /* parked; the producer's next wake resumes it */
    LOOM_JOB_CLOSED,       /* the HTTP request is over; never touch conn again */
};

struct loom_job {
    pthread_mutex_t lock;
    int refs;
    bool stream;
    /* written by the producer under lock */
    struct loom_buf out; /* stream: bytes of SSE; [out_pos, out.len) not yet sent */
    size_t out_pos;
    bool done;   /* no more output will come */
    bool broken; /* end the stream with an error (the connection is cut) */
    int status;  /* not streaming: the response when done */
    char *body;
    size_t body_len;
    char detail[640]; /* appended to the request's log line */
    /* HTTP side */
    enum loom_job_state state;
    struct MHD_Connection *conn;
    int fd;         /* the connection's socket, for the watchdog's hang-up check */
    bool cancelled; /* the client went away; cancel() was called */
    struct loom_server *srv;
    struct loom_job *prev, *next; /* the server's list of jobs in flight */
    /* set by the producer */
    void (*cancel)(struct loom_job *j);  /* abort the engine requests (called without lock) */
    void (*release)(struct loom_job *j); /* free everything (refs reached 0) */
};

void loom_job_init(struct loom_job *j, struct loom_server *s, bool stream);
void loom_job_ref(struct loom_job *j);
void loom_job_unref(struct loom_job *j);
/* Called with j->lock held (after appending output or setting done): releases the lock and resumes
 * the connection if it was parked. */
void loom_job_unlock_wake(struct loom_job *j);

/* What a route answers. */
struct loom_http_request {
    const char *method; /* "GET", "POST", ... ("HEAD" arrives as "GET") */
    const char *url;
    const char *body;
    size_t body_len;
    const char *authorization; /* the header, or NULL */
};

struct loom_http_reply {
    int status;
    const char *content_type; /* static string */
    char *body;               /* owned (malloc) */
    size_t body_len;
    const char *allow;    /* 405: the Allow header */
    struct loom_job *job; /* non-NULL: the answer comes from the engine; the reply owns one ref */
    char id[64];          /* request id for logs and the X-Request-Id header */
    char detail[640];     /* appended to the log line */
};

struct loom_server {
    struct loom_server_options opts; /* strings copied below */
    char *host, *model_name, *model_path, *api_key;
    struct MHD_Daemon *daemon;
    int port;
    long long started; /* Unix time, for /v1/models */
    struct loom_metrics metrics;

    pthread_mutex_t lock;         /* jobs list, counts */
    pthread_cond_t cond;          /* signalled when a job leaves the list */
    pthread_cond_t watchdog_cond; /* the watchdog's sleep (and its stop) */
    struct loom_job *jobs;
    int n_jobs;
    bool draining;
    bool hurry;   /* loom_server_hurry: stop waiting for the drain */
    bool stopped; /* the daemon is stopped (every connection closed) */

    pthread_t watchdog;
    bool watchdog_running, watchdog_stop;
};

/* openai.c */
void loom_openai_route(struct loom_server *s, const struct loom_http_request *in,
                       struct loom_http_reply *out);
/* Fills an error reply (JSON body). */
void loom_openai_error_reply(struct loom_http_reply *out, const struct loom_api_error *err);

#endif
