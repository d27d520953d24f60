/*
 * metrics.h: the metric math of `loom bench`, with vLLM's definitions (vllm/benchmarks/serve.py,
 * calculate_metrics), so loom's numbers can be put next to anyone's `vllm bench serve` output.
 *
 * Per request (client side, seconds on one monotonic clock):
 *   TTFT    time from sending the request to the first streamed chunk that carries a choice;
 *   E2E     time from sending the request to the last such chunk (the [DONE] line does not count);
 *   ITL     the gaps between consecutive content chunks (a request of k chunks gives k - 1 gaps);
 *   TPOT    (E2E - TTFT) / (output_tokens - 1), only for requests with more than one output token
 *           (the first token is excluded; for goodput a one-token request counts as TPOT 0).
 * Over the run: mean, median, standard deviation (numpy's, ddof 0) and percentiles with numpy's default
 * linear interpolation; a metric with no samples reports 0 everywhere (numpy on `x or 0`).
 * Goodput counts the successful requests whose every SLO in force holds (metric <= SLO).
 * This file only computes: it does no I/O and never reads a clock.
 */
#ifndef LOOM_BENCH_METRICS_H
#define LOOM_BENCH_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#define LOOM_BENCH_MAX_PCT 16

/* One request's client-side timeline: vLLM's RequestFuncOutput. */
struct loom_bench_req {
    bool success;
    double start_time;    /* s, when the request was sent (any epoch, same as the others) */
    double ttft;          /* s, start -> first content chunk */
    double latency;       /* s, start -> last content chunk (E2E) */
    double *itl;          /* [n_itl] s, gaps between consecutive content chunks (owned by the caller) */
    int n_itl;
    int n_chunks;         /* content chunks received (n_itl + 1 on success) */
    int prompt_len;       /* tokens, as the dataset or the server's usage says */
    int output_tokens;    /* usage.completion_tokens from the server; 0 = not reported (then n_chunks) */
};

/* Summary of one metric, in the unit of its samples. */
struct loom_bench_stat {
    int n;                        /* samples (0: every figure below is 0) */
    double mean, median, std, min, max;
    double pct[LOOM_BENCH_MAX_PCT]; /* at the percentiles the caller asked for, in order */
};

/* SLOs for goodput, in seconds; a negative value means "not set". vLLM's keys: ttft, tpot, e2el. */
struct loom_bench_slo {
    double ttft, tpot, e2el;
};

struct loom_bench_serve_metrics {
    int completed, failed;
    int good_completed;                 /* successful and within every SLO (= completed with no SLO) */
    long long total_input, total_output; /* tokens, successful requests only */
    double duration;                    /* s, the benchmark's wall time (the caller's measure) */
    double request_throughput;          /* completed / duration, req/s */
    double request_goodput;             /* good_completed / duration, req/s */
    double output_throughput;           /* total_output / duration, tok/s */
    double total_token_throughput;      /* (total_input + total_output) / duration, tok/s */
    double max_output_tokens_per_s;     /* the busiest one-second bucket of content chunks */
    int max_concurrent_requests;        /* peak overlap of successful requests' [start, start + e2e) */
    int n_pct;
    double pcts[LOOM_BENCH_MAX_PCT];    /* the percentiles reported, e.g. {99} */
    struct loom_bench_stat ttft, tpot, itl, e2el; /* seconds */
};

/* numpy.percentile(x, q) with the default 'linear' method, x sorted ascending, n >= 1, q in [0, 100]. */
double loom_bench_percentile_sorted(const double *x, int n, double q);

/* Sorts x in place (n may be 0) and fills *st; pcts[n_pct] are the percentiles wanted. */
void loom_bench_stat_compute(double *x, int n, const double *pcts, int n_pct, struct loom_bench_stat *st);

/* The output token count vLLM uses for a successful request: usage if reported, else the chunks. */
int loom_bench_req_output_tokens(const struct loom_bench_req *r);

/* All of vLLM's serve metrics for reqs[n] over a run of `duration` seconds. slo may be NULL. */
void loom_bench_serve_metrics_compute(const struct loom_bench_req *reqs, int n, double duration,
                                      const double *pcts, int n_pct, const struct loom_bench_slo *slo,
                                      struct loom_bench_serve_metrics *m);

/* Parses one or more "KEY:MS" items (keys ttft, tpot, e2el; space- or comma-separated) into *slo
 * (seconds), leaving unnamed keys as they are. LOOM_EINVAL with the bad item named. */
int loom_bench_parse_goodput(const char *spec, struct loom_bench_slo *slo);
void loom_bench_slo_none(struct loom_bench_slo *slo);
bool loom_bench_slo_any(const struct loom_bench_slo *slo);

/* Parses "25,50,99" into pcts (each in [0, 100], at most LOOM_BENCH_MAX_PCT). LOOM_EINVAL on bad input. */
int loom_bench_parse_percentiles(const char *s, double *pcts, int *n_pct);

#endif
