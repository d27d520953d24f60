/*
 * metrics.c: Prometheus text for GET /metrics. Every vllm: metric carries the label model_name.
 *
 *   vllm:num_requests_running            gauge      requests in the running batch
 *   vllm:num_requests_waiting            gauge      requests queued, not yet scheduled
 *   vllm:kv_cache_usage_perc             gauge      used KV blocks / all KV blocks (0..1)
 *   vllm:gpu_cache_usage_perc            gauge      the same, under vLLM's older name
 *   vllm:prefix_cache_queries_total      counter    prompt tokens looked up in the prefix cache
 *   vllm:prefix_cache_hits_total         counter    of them, found (hit rate = hits / queries)
 *   vllm:num_preemptions_total           counter    sequences preempted (KV cache full)
 *   vllm:prompt_tokens_total             counter    prompt tokens of admitted requests
 *   vllm:generation_tokens_total         counter    tokens generated
 *   vllm:request_success_total           counter    finished requests by finished_reason (stop, length,
 * abort, error) vllm:time_to_first_token_seconds     histogram  arrival -> first token, seen by the server
 *   vllm:inter_token_latency_seconds     histogram  gap between consecutive tokens of one sample
 *   vllm:time_per_output_token_seconds   histogram  per request: (e2e - ttft) / (tokens - 1)
 *   vllm:e2e_request_latency_seconds     histogram  arrival -> last token
 *   loom:prefix_cache_hit_rate           gauge      hits / queries since start (0 when no query yet)
 *   loom:kv_blocks_total                 gauge      KV blocks in the pool
 *   loom:kv_blocks_free                  gauge      KV blocks free now
 *   loom:prefill_chunks_total            counter    prefill pieces shorter than the rest of their prompt
 *   loom:engine_steps_total              counter    scheduling steps run
 *   loom:http_responses_total            counter    HTTP responses by status code (label code)
 *   loom:client_disconnects_total        counter    clients that left before their response was complete
 */
#include "server/metrics.h"

#include "core/error.h"
#include "server/openai.h"

#include <stdio.h>
#include <string.h>

/* vLLM's buckets, with finer ones below 10 ms for small models on the CPU. */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,  0.25,  0.5,   0.75,
                                     1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075,
                                    0.1,    0.15,  0.2,    0.3,   0.4,  0.5,   0.75, 1.0,
                                    2.5,    5.0,   7.5,    10.0,  20.0, 40.0,  80.0};
static const double e2e_bounds[] = {0.01, 0.05, 0.1,   0.3,   0.5,   0.8,   1.0,    1.5,
                                    2.0,  2.5,  5.0,   10.0,  15.0,  20.0,  30.0,   40.0,
                                    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static const int http_codes[LOOM_METRICS_HTTP_CODES] = {200, 400, 401, 404, 405, 413, 500, 503, 0};

static void hist_init(struct loom_histogram *h, const double *bounds, int n)
{
    LOOM_ASSERT(n <= LOOM_HIST_MAX_BUCKETS);
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n_bounds = n;
}

static void hist_observe(struct loom_histogram *h, double v, uint64_t times)
{
    int b = 0;
    while (b < h->n_bounds && v > h->bounds[b]) b++;
    h->counts[b] += times;
    h->sum += v * (double)times;
    h->count += times;
}

void loom_metrics_init(struct loom_metrics *m, const char *model_name)
{
    memset(m, 0, sizeof(*m));
    pthread_mutex_init(&m->lock, NULL);
    /* a label value: escape backslash, quote and newline */
    size_t o = 0;
    for (const char *p = model_name; *p && o + 3 < sizeof(m->model_name); p++) {
        if (*p == '\\' || *p == '"')
            m->model_name[o++] = '\\', m->model_name[o++] = *p;
        else if (*p == '\n')
            m->model_name[o++] = '\\', m->model_name[o++] = 'n';
        else
            m->model_name[o++] = *p;
    }
    m->model_name[o] = 0;
    hist_init(&m->ttft, ttft_bounds, (int)(sizeof(ttft_bounds) / sizeof(double)));
    hist_init(&m->itl, itl_bounds, (int)(sizeof(itl_bounds) / sizeof(double)));
    hist_init(&m->tpot, itl_bounds, (int)(sizeof(itl_bounds) / sizeof(double)));
    hist_init(&m->e2e, e2e_bounds, (int)(sizeof(e2e_bounds) / sizeof(double)));
}

void loom_metrics_destroy(struct loom_metrics *m)
{
    pthread_mutex_destroy(&m->lock);
}

void loom_metrics_observe_ttft(struct loom_metrics *m, double s)
{
    pthread_mutex_lock(&m->lock);
    hist_observe(&m->ttft, s, 1);
    pthread_mutex_unlock(&m->lock);
}

void loom_metrics_observe_itl(struct loom_metrics *m, double s, int n)
{
    if (n <= 0) return;
    pthread_mutex_lock(&m->lock);
    hist_observe(&m->itl, s / n, (uint64_t)n);
    pthread_mutex_unlock(&m->lock);
}

void loom_metrics_observe_finished(struct loom_metrics *m, enum loom_finish_reason reason, double e2e,
                                   double ttft, int tokens)
{
    pthread_mutex_lock(&m->lock);
    if ((int)reason >= 0 && (int)reason < 5) m->finished[reason]++;
    hist_observe(&m->e2e, e2e, 1);
    if (tokens > 1 && ttft > 0) hist_observe(&m->tpot, (e2e - ttft) / (tokens - 1), 1);
    pthread_mutex_unlock(&m->lock);
}

void loom_metrics_count_http(struct loom_metrics *m, int status)
{
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (http_codes[i] && http_codes[i] != status) i++;
    m->http[i]++; /* the last slot (code 0) counts every other status */
    pthread_mutex_unlock(&m->lock);
}

void loom_metrics_count_disconnect(struct loom_metrics *m)
{
    pthread_mutex_lock(&m->lock);
    m->streams_disconnected++;
    pthread_mutex_unlock(&m->lock);
}

static void head(struct loom_buf *b, const char *name, const char *type, const char *help)
{
    loom_buf_appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(struct loom_buf *b, const char *model, const char *name, const char *help, double v)
{
    head(b, name, "gauge", help);
    loom_buf_appendf(b, "%s{model_name=\"%s\"} %.17g\n", name, model, v);
}

/* name is the family without _total; the sample gets _total (the exposition format's counter rule). */
static void counter(struct loom_buf *b, const char *model, const char *name, const char *help, double v)
{
    char full[128];
    snprintf(full, sizeof(full), "%s_total", name);
    head(b, full, "counter", help);
    loom_buf_appendf(b, "%s{model_name=\"%s\"} %.17g\n", full, model, v);
}

static void histogram(struct loom_buf *b, const char *model, const char *name, const char *help,
                      const struct loom_histogram *h)
{
    head(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n_bounds; i++) {
        cum += h->counts[i];
        loom_buf_appendf(b, "%s_bucket{model_name=\"%s\",le=\"%g\"} %llu\n", name, model, h->bounds[i],
                         (unsigned long long)cum);
    }
    cum += h->counts[h->n_bounds];
    loom_buf_appendf(b, "%s_bucket{model_name=\"%s\",le=\"+Inf\"} %llu\n", name, model,
                     (unsigned long long)cum);
    loom_buf_appendf(b, "%s_sum{model_name=\"%s\"} %.17g\n", name, model, h->sum);
    loom_buf_appendf(b, "%s_count{model_name=\"%s\"} %llu\n", name, model, (unsigned long long)h->count);
}

char *loom_metrics_render(struct loom_metrics *m, const struct loom_engine_stats *st_in, size_t *len)
{
    struct loom_engine_stats st;
    memset(&st, 0, sizeof(st));
    if (st_in) st = *st_in;
    struct loom_buf b = {0};
    const char *mn = m->model_name;
    gauge(&b, mn, "vllm:num_requests_running", "Number of requests in the running batch.", st.running);
    gauge(&b, mn, "vllm:num_requests_waiting", "Number of requests waiting to be scheduled.", st.waiting);
    gauge(&b, mn, "vllm:kv_cache_usage_perc", "KV cache usage: 1 means 100 percent.", st.kv_usage);
    gauge(&b, mn, "vllm:gpu_cache_usage_perc", "KV cache usage (vLLM's older name): 1 means 100 percent.",
          st.kv_usage);
    counter(&b, mn, "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            (double)st.prefix_cache_queries);
    counter(&b, mn, "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
            (double)st.prefix_cache_hits);
    counter(&b, mn, "vllm:num_preemptions", "Sequences preempted because the KV cache was full.",
            (double)st.num_preemptions);
    counter(&b, mn, "vllm:prompt_tokens", "Prompt tokens of admitted requests.",
            (double)st.prompt_tokens_total);
    counter(&b, mn, "vllm:generation_tokens", "Generated tokens.", (double)st.generation_tokens_total);

    pthread_mutex_lock(&m->lock);
    static const char *reasons[] = {NULL, "stop", "length", "abort", "error"};
    head(&b, "vllm:request_success_total", "counter", "Finished requests by finish reason.");
    for (int r = 1; r < 5; r++)
        loom_buf_appendf(&b, "vllm:request_success_total{model_name=\"%s\",finished_reason=\"%s\"} %llu\n",
                         mn, reasons[r], (unsigned long long)m->finished[r]);
    histogram(&b, mn, "vllm:time_to_first_token_seconds", "Time to first token in seconds.", &m->ttft);
    histogram(&b, mn, "vllm:inter_token_latency_seconds", "Time between consecutive tokens in seconds.",
              &m->itl);
    histogram(&b, mn, "vllm:time_per_output_token_seconds",
              "Mean time per output token of a request in seconds.", &m->tpot);
    histogram(&b, mn, "vllm:e2e_request_latency_seconds", "End-to-end request latency in seconds.", &m->e2e);
    head(&b, "loom:http_responses_total", "counter", "HTTP responses by status code.");
    for (int i = 0; i < LOOM_METRICS_HTTP_CODES; i++) {
        if (i > 0 && !http_codes[i - 1]) break;
        if (http_codes[i])
            loom_buf_appendf(&b, "loom:http_responses_total{code=\"%d\"} %llu\n", http_codes[i],
                             (unsigned long long)m->http[i]);
        else
            loom_buf_appendf(&b, "loom:http_responses_total{code=\"other\"} %llu\n",
                             (unsigned long long)m->http[i]);
    }
    uint64_t disconnects = m->streams_disconnected;
    pthread_mutex_unlock(&m->lock);
    counter(&b, mn, "loom:client_disconnects", "Clients that left before their response was complete.",
            (double)disconnects);

    double rate =
        st.prefix_cache_queries ? (double)st.prefix_cache_hits / (double)st.prefix_cache_queries : 0.0;
    gauge(&b, mn, "loom:prefix_cache_hit_rate", "Prefix cache hits / queries since start.", rate);
    gauge(&b, mn, "loom:kv_blocks_total", "KV blocks in the pool.", st.num_kv_blocks);
    gauge(&b, mn, "loom:kv_blocks_free", "KV blocks free now.", st.free_kv_blocks);
    counter(&b, mn, "loom:prefill_chunks", "Prefill pieces shorter than the rest of their prompt.",
            (double)st.num_prefill_chunks);
    counter(&b, mn, "loom:engine_steps", "Scheduling steps run.", (double)st.num_steps);
    if (len) *len = b.len;
    return b.data;
}
