/*
 * metrics.h: the server's Prometheus metrics (GET /metrics, text exposition format 0.0.4).
 * Names follow vLLM's (`vllm:` prefix) wherever vLLM has the metric, so dashboards and benchmark
 * tools that read vLLM read loom; loom-only metrics carry the `loom:` prefix. The full list with
 * meanings is in metrics.c. Latencies are observed by the server (openai.c) as outputs arrive;
 * engine counts (queues, KV cache, tokens, prefix cache) are read from loom_engine_get_stats when
 * the page is rendered. Thread-safe.
 */
#ifndef LOOM_SERVER_METRICS_H
#define LOOM_SERVER_METRICS_H

#include "loom.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define LOOM_HIST_MAX_BUCKETS 32

struct loom_histogram {
    const double *bounds; /* upper bounds in seconds, ascending; +Inf is implicit */
    int n_bounds;
    uint64_t counts[LOOM_HIST_MAX_BUCKETS + 1]; /* per bucket (not cumulative); [n_bounds] = +Inf */
    double sum;
    uint64_t count;
};

enum { LOOM_METRICS_HTTP_CODES = 12 };

struct loom_metrics {
    pthread_mutex_t lock;
    char model_name[256];
    struct loom_histogram ttft;             /* seconds from arrival to the first token */
    struct loom_histogram itl;              /* seconds between consecutive tokens of one sample */
    struct loom_histogram tpot;             /* per request: (e2e - ttft) / (tokens - 1) */
    struct loom_histogram e2e;              /* seconds from arrival to the last output */
    uint64_t finished[5];                   /* by enum loom_finish_reason (stop, length, abort, error) */
    uint64_t http[LOOM_METRICS_HTTP_CODES]; /* responses by status, see metrics.c */
    uint64_t streams_disconnected;          /* clients that went away before their response was complete */
};

void loom_metrics_init(struct loom_metrics *m, const char *model_name);
void loom_metrics_destroy(struct loom_metrics *m);

void loom_metrics_observe_ttft(struct loom_metrics *m, double seconds);
/* n tokens arrived `seconds` after the previous output of the same sample: n observations of seconds / n. */
void loom_metrics_observe_itl(struct loom_metrics *m, double seconds, int n);
/* A sample finished: its e2e latency, time per output token, and reason. */
void loom_metrics_observe_finished(struct loom_metrics *m, enum loom_finish_reason reason, double e2e,
                                   double ttft, int tokens);
void loom_metrics_count_http(struct loom_metrics *m, int status);
void loom_metrics_count_disconnect(struct loom_metrics *m);

/* The exposition text (a new NUL-terminated string, caller frees). st may be NULL (no engine). */
char *loom_metrics_render(struct loom_metrics *m, const struct loom_engine_stats *st, size_t *len);

#endif
