/*
 * serve.h: the load generator of `loom bench serve`, after vLLM's `vllm bench serve`.
 *
 * Sends a dataset's prompts to an OpenAI-compatible server (/v1/completions or /v1/chat/completions,
 * streaming, stream_options.include_usage), the requests arriving by a Poisson/gamma process at a rate
 * (or all at once) and held to at most max_concurrency in flight. One thread and one poll() loop run
 * every request, so each streamed chunk is timestamped when it arrives. Records vLLM's per-request
 * timeline (TTFT, ITL, E2E, output tokens); metrics.h turns those into the report.
 *
 * A request fails (and is counted, never retried) when the connection is refused or cut, the status is
 * not 2xx, the stream carries an error or bad JSON or no content chunk, no byte arrives for `timeout`
 * seconds, or the request lives longer than `request_timeout`. So a run always ends, dead server or not.
 */
#ifndef LOOM_BENCH_SERVE_H
#define LOOM_BENCH_SERVE_H

#include "bench/dataset.h"
#include "bench/metrics.h"

#include <stdbool.h>
#include <stdint.h>

struct loom_bench_serve_config {
    const char *base_url;     /* "http://127.0.0.1:8000" */
    const char *endpoint;     /* "/v1/completions" (default) or "/v1/chat/completions" */
    const char *model;        /* the request's "model"; NULL: the first id of GET /v1/models */
    const char *api_key;      /* sent as "Authorization: Bearer KEY"; NULL for none */
    const struct loom_bench_dataset *dataset;
    double request_rate;      /* requests/s; INFINITY sends all at once */
    double burstiness;        /* gamma shape of the gaps; 1 = Poisson */
    int max_concurrency;      /* most requests in flight; 0 = no cap */
    uint64_t seed;            /* for the arrival times */
    double timeout;           /* s with no byte from the server before a request fails */
    double request_timeout;   /* s, a request's whole life */
    bool ignore_eos;          /* sends "ignore_eos": true (a vLLM extension loom also reads) */
    double temperature;       /* sent as "temperature" (vLLM's benchmark sends 0) */
    bool progress;            /* a progress bar on stderr */
    volatile int *stop;       /* when *stop becomes non-zero, what is left fails as "interrupted" */
};
void loom_bench_serve_config_default(struct loom_bench_serve_config *c);

enum loom_bench_fail {
    LOOM_BENCH_OK = 0,
    LOOM_BENCH_FAIL_CONNECT,   /* could not connect (refused, unreachable) or send */
    LOOM_BENCH_FAIL_HTTP,      /* a status other than 2xx */
    LOOM_BENCH_FAIL_TIMEOUT,   /* stalled past `timeout` or ran past `request_timeout` */
    LOOM_BENCH_FAIL_STREAM,    /* cut short, bad JSON, an error event, or no content chunk */
    LOOM_BENCH_FAIL_INTERRUPTED,
    LOOM_BENCH_FAIL_KINDS
};
const char *loom_bench_fail_name(enum loom_bench_fail f);

struct loom_bench_serve_result {
    int n;
    struct loom_bench_req *reqs;    /* [n] timelines, in dataset order (their itl arrays are owned here) */
    enum loom_bench_fail *fail;     /* [n] */
    char **error;                   /* [n] the failure, one line (NULL on success) */
    int *http_status;               /* [n] 0 if no status line arrived */
    int fail_count[LOOM_BENCH_FAIL_KINDS];
    int usage_reported;             /* successful requests whose output count came from usage */
    double duration;                /* s, from the first arrival's schedule start to the last finish */
    char *model;                    /* the model name the requests carried */
};

/* Runs the benchmark. Returns 0 with *res filled whatever the server did (failures are counted there),
 * or a negative status for a bad configuration (URL, empty dataset, chat with token-id prompts, no model
 * name and no /v1/models). Free *res with loom_bench_serve_result_free. */
int loom_bench_serve_run(const struct loom_bench_serve_config *cfg, struct loom_bench_serve_result *res);
void loom_bench_serve_result_free(struct loom_bench_serve_result *res);

#endif
