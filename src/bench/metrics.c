/* metrics.c: percentiles, summaries and vLLM's serve metrics over request timelines (see metrics.h). */
#include "bench/metrics.h"
#include "core/error.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double loom_bench_percentile_sorted(const double *x, int n, double q)
{
    LOOM_ASSERT(n >= 1 && q >= 0 && q <= 100);
    /* numpy 'linear': virtual index (n - 1) * q / 100, interpolated between its neighbours */
    double idx = (n - 1) * (q / 100.0);
    int lo = (int)floor(idx);
    if (lo >= n - 1) return x[n - 1];
    double frac = idx - lo;
    return x[lo] + (x[lo + 1] - x[lo]) * frac;
}

void loom_bench_stat_compute(double *x, int n, const double *pcts, int n_pct, struct loom_bench_stat *st)
{
    memset(st, 0, sizeof(*st));
    LOOM_ASSERT(n_pct >= 0 && n_pct <= LOOM_BENCH_MAX_PCT);
    st->n = n;
    if (n <= 0) return; /* numpy on [0]: every figure 0 */
    qsort(x, (size_t)n, sizeof(double), cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += x[i];
    st->mean = sum / n;
    double ss = 0;
    for (int i = 0; i < n; i++) ss += (x[i] - st->mean) * (x[i] - st->mean);
    st->std = sqrt(ss / n);
    st->min = x[0];
    st->max = x[n - 1];
    st->median = loom_bench_percentile_sorted(x, n, 50);
    for (int i = 0; i < n_pct; i++) st->pct[i] = loom_bench_percentile_sorted(x, n, pcts[i]);
}

int loom_bench_req_output_tokens(const struct loom_bench_req *r)
{
    if (!r->success) return 0;
    return r->output_tokens > 0 ? r->output_tokens : r->n_chunks;
}

void loom_bench_slo_none(struct loom_bench_slo *slo)
{
    slo->ttft = slo->tpot = slo->e2el = -1;
}

bool loom_bench_slo_any(const struct loom_bench_slo *slo)
{
    return slo && (slo->ttft >= 0 || slo->tpot >= 0 || slo->e2el >= 0);
}

static int cmp_event(const void *a, const void *b)
{
    const double *x = a, *y = b; /* {time, delta}: departures (-1) before arrivals (+1) at one time */
    if (x[0] != y[0]) return (x[0] > y[0]) - (x[0] < y[0]);
    return (x[1] > y[1]) - (x[1] < y[1]);
}

/* vLLM's "peak output token throughput" (busiest one-second bucket of content chunks, counted from the
 * earliest start) and "peak concurrent requests" (sweep over half-open [start, start + e2e)). */
static void compute_peaks(const struct loom_bench_req *reqs, int n, struct loom_bench_serve_metrics *m)
{
    double t0 = INFINITY, t1 = -INFINITY;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        if (!reqs[i].success) continue;
        ok++;
        if (reqs[i].start_time < t0) t0 = reqs[i].start_time;
        if (reqs[i].start_time + reqs[i].latency > t1) t1 = reqs[i].start_time + reqs[i].latency;
    }
    if (!ok) return;
    int nb = (int)ceil(t1 - t0) + 1;
    long long *bucket = loom_calloc((size_t)nb, sizeof(long long));
    double *ev = loom_malloc(sizeof(double) * 4 * (size_t)ok);
    int ne = 0;
    for (int i = 0; i < n; i++) {
        const struct loom_bench_req *r = &reqs[i];
        if (!r->success) continue;
        double t = r->start_time + r->ttft;
        for (int k = 0; k <= r->n_itl; k++) {
            if (k > 0) t += r->itl[k - 1];
            int b = (int)(t - t0);
            if (b >= 0 && b < nb) bucket[b]++;
        }
        ev[2 * ne] = r->start_time;
        ev[2 * ne + 1] = 1;
        ne++;
        ev[2 * ne] = r->start_time + r->latency;
        ev[2 * ne + 1] = -1;
        ne++;
    }
    for (int b = 0; b < nb; b++)
        if ((double)bucket[b] > m->max_output_tokens_per_s) m->max_output_tokens_per_s = (double)bucket[b];
    qsort(ev, (size_t)ne, 2 * sizeof(double), cmp_event);
    int cur = 0;
    for (int i = 0; i < ne; i++) {
        cur += (int)ev[2 * i + 1];
        if (cur > m->max_concurrent_requests) m->max_concurrent_requests = cur;
    }
    free(bucket);
    free(ev);
}

void loom_bench_serve_metrics_compute(const struct loom_bench_req *reqs, int n, double duration,
                                      const double *pcts, int n_pct, const struct loom_bench_slo *slo,
                                      struct loom_bench_serve_metrics *m)
{
    memset(m, 0, sizeof(*m));
    LOOM_ASSERT(n_pct >= 0 && n_pct <= LOOM_BENCH_MAX_PCT);
    m->duration = duration;
    m->n_pct = n_pct;
    memcpy(m->pcts, pcts, sizeof(double) * (size_t)n_pct);

    long long n_itl = 0;
    for (int i = 0; i < n; i++)
        if (reqs[i].success) n_itl += reqs[i].n_itl;
    double *ttfts = loom_malloc(sizeof(double) * (size_t)(n + 1));
    double *tpots = loom_malloc(sizeof(double) * (size_t)(n + 1));
    double *e2els = loom_malloc(sizeof(double) * (size_t)(n + 1));
    double *itls = loom_malloc(sizeof(double) * (size_t)(n_itl + 1));
    int n_ok = 0, n_tpot = 0;
    long long k_itl = 0;
    bool use_slo = loom_bench_slo_any(slo);
    for (int i = 0; i < n; i++) {
        const struct loom_bench_req *r = &reqs[i];
        if (!r->success) {
            m->failed++;
            continue;
        }
        int out = loom_bench_req_output_tokens(r);
        m->total_output += out;
        m->total_input += r->prompt_len;
        double tpot = 0; /* a request with one output token counts as TPOT 0 for goodput */
        if (out > 1) {
            tpot = (r->latency - r->ttft) / (out - 1);
            tpots[n_tpot++] = tpot;
        }
        for (int k = 0; k < r->n_itl; k++) itls[k_itl++] = r->itl[k];
        ttfts[n_ok] = r->ttft;
        e2els[n_ok] = r->latency;
        n_ok++;
        bool good = true;
        if (use_slo) {
            if (slo->ttft >= 0 && r->ttft > slo->ttft) good = false;
            if (slo->tpot >= 0 && tpot > slo->tpot) good = false;
            if (slo->e2el >= 0 && r->latency > slo->e2el) good = false;
        }
        if (good) m->good_completed++;
    }
    m->completed = n_ok;
    if (duration > 0) {
        m->request_throughput = n_ok / duration;
        m->request_goodput = m->good_completed / duration;
        m->output_throughput = (double)m->total_output / duration;
        m->total_token_throughput = (double)(m->total_input + m->total_output) / duration;
    }
    loom_bench_stat_compute(ttfts, n_ok, pcts, n_pct, &m->ttft);
    loom_bench_stat_compute(tpots, n_tpot, pcts, n_pct, &m->tpot);
    loom_bench_stat_compute(itls, (int)k_itl, pcts, n_pct, &m->itl);
    loom_bench_stat_compute(e2els, n_ok, pcts, n_pct, &m->e2el);
    compute_peaks(reqs, n, m);
    free(ttfts);
    free(tpots);
    free(e2els);
    free(itls);
}

int loom_bench_parse_goodput(const char *spec, struct loom_bench_slo *slo)
{
    const char *p = spec;
    int items = 0;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t') p++;
        if (!*p) break;
        const char *start = p;
        while (*p && *p != ' ' && *p != ',' && *p != '\t') p++;
        int len = (int)(p - start);
        const char *colon = memchr(start, ':', (size_t)len);
        if (!colon)
            return loom_fail(LOOM_EINVAL, "--goodput: '%.*s' is not KEY:MILLISECONDS (e.g. ttft:500 tpot:50)",
                             len, start);
        int klen = (int)(colon - start);
        char num[64];
        int vlen = len - klen - 1;
        if (vlen <= 0 || vlen >= (int)sizeof(num))
            return loom_fail(LOOM_EINVAL, "--goodput: '%.*s' has no value in milliseconds", len, start);
        memcpy(num, colon + 1, (size_t)vlen);
        num[vlen] = 0;
        char *end;
        errno = 0;
        double ms = strtod(num, &end);
        if (*end || errno || !isfinite(ms) || ms < 0)
            return loom_fail(LOOM_EINVAL, "--goodput: '%.*s': '%s' is not a number of milliseconds >= 0", len,
                             start, num);
        double *dst = NULL;
        if (klen == 4 && !strncmp(start, "ttft", 4)) dst = &slo->ttft;
        else if (klen == 4 && !strncmp(start, "tpot", 4)) dst = &slo->tpot;
        else if (klen == 4 && !strncmp(start, "e2el", 4)) dst = &slo->e2el;
        if (!dst)
            return loom_fail(LOOM_EINVAL, "--goodput: unknown metric '%.*s' (expected ttft, tpot or e2el)", klen,
                             start);
        *dst = ms / 1000.0;
        items++;
    }
    if (!items) return loom_fail(LOOM_EINVAL, "--goodput: no KEY:MILLISECONDS item (e.g. ttft:500 tpot:50)");
    return 0;
}

int loom_bench_parse_percentiles(const char *s, double *pcts, int *n_pct)
{
    int n = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        double q = strtod(p, &end);
        if (end == p || errno || !isfinite(q) || q < 0 || q > 100 || (*end && *end != ',' && *end != ' '))
            return loom_fail(LOOM_EINVAL, "--metric-percentiles: '%s' is not a list of numbers in [0, 100] "
                                          "(e.g. 50,90,99)", s);
        if (n == LOOM_BENCH_MAX_PCT)
            return loom_fail(LOOM_EINVAL, "--metric-percentiles: at most %d percentiles", LOOM_BENCH_MAX_PCT);
        pcts[n++] = q;
        p = end;
    }
    if (!n) return loom_fail(LOOM_EINVAL, "--metric-percentiles: empty list (e.g. 50,90,99)");
    *n_pct = n;
    return 0;
}
