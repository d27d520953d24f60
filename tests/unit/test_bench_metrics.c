/*
 * test_bench_metrics.c: the metric math of `loom bench` (src/bench/metrics.c) on synthetic timelines whose
 * answers are worked out by hand below, plus the dataset generators and arrival process (dataset.c).
 * The expected values follow vLLM's calculate_metrics and numpy's default (linear) percentile.
 */
#include "bench/dataset.h"
#include "bench/metrics.h"
#include "core/error.h"
#include "core/util.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>

#define TOL 1e-9

static void test_percentile(void)
{
    /* numpy.percentile([1, 2, 3, 4], q): index (n - 1) * q / 100 = 3q/100, linear between neighbours */
    double x[] = {1, 2, 3, 4};
    CHECK_NEAR(loom_bench_percentile_sorted(x, 4, 0), 1.0, TOL);
    CHECK_NEAR(loom_bench_percentile_sorted(x, 4, 25), 1.75, TOL); /* index 0.75 */
    CHECK_NEAR(loom_bench_percentile_sorted(x, 4, 50), 2.5, TOL);  /* index 1.5 */
    CHECK_NEAR(loom_bench_percentile_sorted(x, 4, 99), 3.97, TOL); /* index 2.97: 3 + 0.97 * 1 */
    CHECK_NEAR(loom_bench_percentile_sorted(x, 4, 100), 4.0, TOL);
    double one[] = {7.5};
    CHECK_NEAR(loom_bench_percentile_sorted(one, 1, 0), 7.5, TOL);
    CHECK_NEAR(loom_bench_percentile_sorted(one, 1, 99), 7.5, TOL);
    /* 11 values 0..10: p10 = 1, p90 = 9 exactly, p99 = 9.9 */
    double y[11];
    for (int i = 0; i < 11; i++) y[i] = i;
    CHECK_NEAR(loom_bench_percentile_sorted(y, 11, 10), 1.0, TOL);
    CHECK_NEAR(loom_bench_percentile_sorted(y, 11, 90), 9.0, TOL);
    CHECK_NEAR(loom_bench_percentile_sorted(y, 11, 99), 9.9, TOL);

    /* unsorted input: the summary sorts it; std is numpy's (ddof 0): sqrt((1.5^2 + 0.5^2) * 2 / 4) */
    double z[] = {4, 1, 3, 2};
    double pcts[] = {25, 50, 99};
    struct loom_bench_stat st;
    loom_bench_stat_compute(z, 4, pcts, 3, &st);
    CHECK_EQ_INT(st.n, 4);
    CHECK_NEAR(st.mean, 2.5, TOL);
    CHECK_NEAR(st.median, 2.5, TOL);
    CHECK_NEAR(st.std, sqrt(1.25), TOL);
    CHECK_NEAR(st.min, 1, TOL);
    CHECK_NEAR(st.max, 4, TOL);
    CHECK_NEAR(st.pct[0], 1.75, TOL);
    CHECK_NEAR(st.pct[1], 2.5, TOL);
    CHECK_NEAR(st.pct[2], 3.97, TOL);

    /* no samples: every figure 0 (numpy on `x or 0`) */
    loom_bench_stat_compute(NULL, 0, pcts, 3, &st);
    CHECK_EQ_INT(st.n, 0);
    CHECK(st.mean == 0 && st.median == 0 && st.std == 0 && st.pct[2] == 0);
}

/*
 * The timeline (seconds):
 *   R0  start 0.0, chunks at 0.10 0.15 0.25 0.30, usage says 4 tokens, prompt 10
 *       TTFT 0.10, E2E 0.30, ITL {0.05, 0.10, 0.05}, TPOT (0.30 - 0.10) / 3 = 0.0666..
 *   R1  start 0.5, chunks at 0.70 0.90, no usage (2 chunks = 2 tokens), prompt 20
 *       TTFT 0.20, E2E 0.40, ITL {0.20}, TPOT (0.40 - 0.20) / 1 = 0.20
 *   R2  start 1.0, one chunk at 1.05 carrying 6 tokens (usage 6), prompt 30
 *       TTFT 0.05, E2E 0.05, no ITL, TPOT (0.05 - 0.05) / 5 = 0
 *   R3  failed, prompt 40: counted as failed, nowhere else
 *   duration 2.0 s
 */
static struct loom_bench_req reqs[4];
static double itl0[] = {0.05, 0.10, 0.05}, itl1[] = {0.20};

static void make_timeline(void)
{
    memset(reqs, 0, sizeof(reqs));
    reqs[0] = (struct loom_bench_req){.success = true, .start_time = 0.0, .ttft = 0.10, .latency = 0.30,
                                      .itl = itl0, .n_itl = 3, .n_chunks = 4, .prompt_len = 10, .output_tokens = 4};
    reqs[1] = (struct loom_bench_req){.success = true, .start_time = 0.5, .ttft = 0.20, .latency = 0.40,
                                      .itl = itl1, .n_itl = 1, .n_chunks = 2, .prompt_len = 20, .output_tokens = 0};
    reqs[2] = (struct loom_bench_req){.success = true, .start_time = 1.0, .ttft = 0.05, .latency = 0.05,
                                      .itl = NULL, .n_itl = 0, .n_chunks = 1, .prompt_len = 30, .output_tokens = 6};
    reqs[3] = (struct loom_bench_req){.success = false, .start_time = 1.2, .prompt_len = 40};
}

static void test_serve_metrics(void)
{
    make_timeline();
    double pcts[] = {50, 99};
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(reqs, 4, 2.0, pcts, 2, NULL, &m);
    CHECK_EQ_INT(m.completed, 3);
    CHECK_EQ_INT(m.failed, 1);
    CHECK_EQ_INT(m.total_input, 60);  /* 10 + 20 + 30: the failed request's 40 is not counted */
    CHECK_EQ_INT(m.total_output, 12); /* 4 (usage) + 2 (chunks) + 6 (usage) */
    CHECK_EQ_INT(loom_bench_req_output_tokens(&reqs[1]), 2);
    CHECK_EQ_INT(loom_bench_req_output_tokens(&reqs[3]), 0);
    CHECK_NEAR(m.duration, 2.0, TOL);
    CHECK_NEAR(m.request_throughput, 1.5, TOL);
    CHECK_NEAR(m.output_throughput, 6.0, TOL);
    CHECK_NEAR(m.total_token_throughput, 36.0, TOL); /* (60 + 12) / 2 */

    /* TTFT: sorted {0.05, 0.10, 0.20}; p99 index 1.98 -> 0.10 + 0.98 * 0.10 */
    CHECK_EQ_INT(m.ttft.n, 3);
    CHECK_NEAR(m.ttft.mean, 0.35 / 3, TOL);
    CHECK_NEAR(m.ttft.median, 0.10, TOL);
    CHECK_NEAR(m.ttft.pct[0], 0.10, TOL);
    CHECK_NEAR(m.ttft.pct[1], 0.198, TOL);

    /* TPOT excludes the first token: {0.2 / 3, 0.2, 0}; R2 has 6 tokens so it is in, at 0 */
    CHECK_EQ_INT(m.tpot.n, 3);
    CHECK_NEAR(m.tpot.mean, (0.2 / 3 + 0.2 + 0.0) / 3, TOL);
    CHECK_NEAR(m.tpot.median, 0.2 / 3, TOL);
    CHECK_NEAR(m.tpot.pct[1], 0.2 / 3 + 0.98 * (0.2 - 0.2 / 3), TOL);

    /* ITL: every gap of every successful request, {0.05, 0.05, 0.10, 0.20} */
    CHECK_EQ_INT(m.itl.n, 4);
    CHECK_NEAR(m.itl.mean, 0.10, TOL);
    CHECK_NEAR(m.itl.median, 0.075, TOL);
    CHECK_NEAR(m.itl.pct[1], 0.197, TOL); /* index 2.97: 0.10 + 0.97 * 0.10 */
    CHECK_NEAR(m.itl.std, sqrt((0.05 * 0.05 * 2 + 0 + 0.10 * 0.10) / 4), TOL);

    /* E2E: {0.05, 0.30, 0.40} */
    CHECK_EQ_INT(m.e2el.n, 3);
    CHECK_NEAR(m.e2el.mean, 0.25, TOL);
    CHECK_NEAR(m.e2el.median, 0.30, TOL);
    CHECK_NEAR(m.e2el.pct[1], 0.398, TOL);

    /* Peaks: every chunk of R0 and R1 falls in second 0 (6), R2's in second 1 (1); no overlap in time */
    CHECK_NEAR(m.max_output_tokens_per_s, 6, TOL);
    CHECK_EQ_INT(m.max_concurrent_requests, 1);

    /* without SLOs every success is good; the rate is the request throughput */
    CHECK_EQ_INT(m.good_completed, 3);
}

static int goodput_count(const char *spec)
{
    struct loom_bench_slo slo;
    loom_bench_slo_none(&slo);
    if (loom_bench_parse_goodput(spec, &slo)) return -1;
    double pcts[] = {99};
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(reqs, 4, 2.0, pcts, 1, &slo, &m);
    CHECK_NEAR(m.request_goodput, m.good_completed / 2.0, TOL);
    return m.good_completed;
}

static void test_goodput(void)
{
    make_timeline();
    /* TTFTs 0.10, 0.20, 0.05 | TPOTs 0.0667, 0.20, 0 | E2Es 0.30, 0.40, 0.05; the failure is never good */
    CHECK_EQ_INT(goodput_count("ttft:150"), 2);            /* R0, R2 */
    CHECK_EQ_INT(goodput_count("ttft:200"), 3);            /* <= holds at equality */
    CHECK_EQ_INT(goodput_count("ttft:150 tpot:50"), 1);    /* R0's TPOT 66.7 ms is over: only R2 */
    CHECK_EQ_INT(goodput_count("tpot:100"), 2);            /* R0, R2 */
    CHECK_EQ_INT(goodput_count("e2el:350"), 2);            /* R0, R2 */
    CHECK_EQ_INT(goodput_count("ttft:1000,tpot:70,e2el:350"), 2); /* R0, R2 */
    CHECK_EQ_INT(goodput_count("ttft:10"), 0);
    CHECK_EQ_INT(goodput_count("ttft:1"), 0);

    /* a one-token request: no TPOT sample (all TPOT figures 0), and TPOT 0 for goodput */
    struct loom_bench_req one = {.success = true, .start_time = 0, .ttft = 0.5, .latency = 0.5, .n_chunks = 1,
                                 .prompt_len = 3};
    struct loom_bench_slo slo;
    loom_bench_slo_none(&slo);
    CHECK(loom_bench_parse_goodput("tpot:1", &slo) == 0);
    double pcts[] = {99};
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(&one, 1, 1.0, pcts, 1, &slo, &m);
    CHECK_EQ_INT(m.tpot.n, 0);
    CHECK(m.tpot.mean == 0 && m.tpot.pct[0] == 0);
    CHECK_EQ_INT(m.itl.n, 0);
    CHECK_EQ_INT(m.good_completed, 1);
    CHECK_EQ_INT(m.total_output, 1);

    /* parsing */
    loom_bench_slo_none(&slo);
    CHECK(!loom_bench_slo_any(&slo));
    CHECK(loom_bench_parse_goodput("ttft:500 tpot:50", &slo) == 0);
    CHECK_NEAR(slo.ttft, 0.5, TOL);
    CHECK_NEAR(slo.tpot, 0.05, TOL);
    CHECK(slo.e2el < 0);
    CHECK(loom_bench_slo_any(&slo));
    CHECK(loom_bench_parse_goodput("e2el:1500.5", &slo) == 0);
    CHECK_NEAR(slo.e2el, 1.5005, TOL);
    CHECK(loom_bench_parse_goodput("foo:1", &slo) < 0);
    CHECK(loom_bench_parse_goodput("ttft", &slo) < 0);
    CHECK(loom_bench_parse_goodput("ttft:", &slo) < 0);
    CHECK(loom_bench_parse_goodput("ttft:abc", &slo) < 0);
    CHECK(loom_bench_parse_goodput("ttft:-5", &slo) < 0);
    CHECK(loom_bench_parse_goodput("", &slo) < 0);
}

static void test_peak_concurrency(void)
{
    /* [0, 1), [0.5, 1.5), [1, 2): two at once at most (the first leaves at 1 before the third arrives) */
    struct loom_bench_req r[3] = {
        {.success = true, .start_time = 0.0, .ttft = 1.0, .latency = 1.0, .n_chunks = 1},
        {.success = true, .start_time = 0.5, .ttft = 1.0, .latency = 1.0, .n_chunks = 1},
        {.success = true, .start_time = 1.0, .ttft = 1.0, .latency = 1.0, .n_chunks = 1},
    };
    double pcts[] = {99};
    struct loom_bench_serve_metrics m;
    loom_bench_serve_metrics_compute(r, 3, 2.0, pcts, 1, NULL, &m);
    CHECK_EQ_INT(m.max_concurrent_requests, 2);
    /* chunks at 1.0, 1.5, 2.0 from the earliest start 0: seconds 1, 1, 2 */
    CHECK_NEAR(m.max_output_tokens_per_s, 2, TOL);
    r[1].start_time = 0.0; /* now three overlap in [0.0, 1.0)? no: the third starts at 1.0 */
    loom_bench_serve_metrics_compute(r, 3, 2.0, pcts, 1, NULL, &m);
    CHECK_EQ_INT(m.max_concurrent_requests, 2);
    r[2].start_time = 0.9;
    loom_bench_serve_metrics_compute(r, 3, 2.0, pcts, 1, NULL, &m);
    CHECK_EQ_INT(m.max_concurrent_requests, 3);

    /* every request failed: zeros, no division by zero */
    struct loom_bench_req f[2] = {{.success = false}, {.success = false}};
    loom_bench_serve_metrics_compute(f, 2, 1.0, pcts, 1, NULL, &m);
    CHECK_EQ_INT(m.completed, 0);
    CHECK_EQ_INT(m.failed, 2);
    CHECK(m.ttft.mean == 0 && m.request_throughput == 0 && m.max_output_tokens_per_s == 0);
    /* a zero duration does not divide */
    loom_bench_serve_metrics_compute(r, 3, 0.0, pcts, 1, NULL, &m);
    CHECK(m.request_throughput == 0 && isfinite(m.output_throughput));
}

static void test_percentile_parse(void)
{
    double p[LOOM_BENCH_MAX_PCT];
    int n = 0;
    CHECK(loom_bench_parse_percentiles("50,90,99", p, &n) == 0);
    CHECK_EQ_INT(n, 3);
    CHECK_NEAR(p[2], 99, TOL);
    CHECK(loom_bench_parse_percentiles("99.9", p, &n) == 0);
    CHECK_EQ_INT(n, 1);
    CHECK_NEAR(p[0], 99.9, TOL);
    CHECK(loom_bench_parse_percentiles("101", p, &n) < 0);
    CHECK(loom_bench_parse_percentiles("-1", p, &n) < 0);
    CHECK(loom_bench_parse_percentiles("", p, &n) < 0);
    CHECK(loom_bench_parse_percentiles("50,x", p, &n) < 0);
}

static void test_datasets(void)
{
    struct loom_bench_rng r;
    loom_bench_rng_seed(&r, 1);
    /* vLLM's draw: [floor(100 * 0.5), ceil(100 * 1.5)] = [50, 150]; both ends are reachable */
    int lo = 1 << 30, hi = 0;
    for (int i = 0; i < 20000; i++) {
        int x = loom_bench_draw_len(&r, 100, 0.5);
        if (x < lo) lo = x;
        if (x > hi) hi = x;
    }
    CHECK_EQ_INT(lo, 50);
    CHECK_EQ_INT(hi, 150);
    CHECK_EQ_INT(loom_bench_draw_len(&r, 64, 0.0), 64);

    struct loom_bench_dataset a, b;
    loom_bench_dataset_random_ids(&a, 16, 64, 32, 0.0, 151936, 42);
    loom_bench_dataset_random_ids(&b, 16, 64, 32, 0.0, 151936, 42);
    CHECK_EQ_INT(a.n, 16);
    bool same = true, in_vocab = true;
    for (int i = 0; i < 16; i++) {
        CHECK_EQ_INT(a.items[i].n_ids, 64);
        CHECK_EQ_INT(a.items[i].prompt_len, 64);
        CHECK_EQ_INT(a.items[i].output_len, 32);
        CHECK(a.items[i].prompt_len_exact);
        for (int k = 0; k < 64; k++) {
            same &= a.items[i].ids[k] == b.items[i].ids[k];
            in_vocab &= a.items[i].ids[k] >= 0 && a.items[i].ids[k] < 151936;
        }
    }
    CHECK(same);
    CHECK(in_vocab);
    CHECK(memcmp(a.items[0].ids, a.items[1].ids, 64 * sizeof(int32_t)) != 0);
    loom_bench_dataset_free(&a);
    loom_bench_dataset_free(&b);

    loom_bench_dataset_random_text(&a, 4, 10, 5, 0.0, 7);
    CHECK_EQ_INT(a.n, 4);
    int spaces = 0;
    for (const char *p = a.items[0].text; *p; p++) spaces += *p == ' ';
    CHECK_EQ_INT(spaces, 9); /* 10 words */
    CHECK(!a.items[0].ids && !a.items[0].prompt_len_exact);
    loom_bench_dataset_free(&a);

    /* JSONL: text and ids, output_len / max_tokens, a default, blank lines skipped, cycling */
    char path[] = "/tmp/loom_test_bench_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char *jl = "{\"prompt\": \"hello world\", \"output_len\": 9, \"prompt_len\": 2}\n"
                     "\n"
                     "{\"prompt\": [5, 6, 7], \"max_tokens\": 3}\n"
                     "{\"prompt\": \"no length\"}\n";
    CHECK(write(fd, jl, strlen(jl)) == (ssize_t)strlen(jl));
    close(fd);
    CHECK(loom_bench_dataset_jsonl(&a, path, 5, 77) == 0);
    CHECK_EQ_INT(a.n, 5);
    CHECK_EQ_STR(a.items[0].text, "hello world");
    CHECK_EQ_INT(a.items[0].output_len, 9);
    CHECK_EQ_INT(a.items[0].prompt_len, 2);
    CHECK(a.items[0].prompt_len_exact);
    CHECK_EQ_INT(a.items[1].n_ids, 3);
    CHECK_EQ_INT(a.items[1].ids[2], 7);
    CHECK_EQ_INT(a.items[1].output_len, 3);
    CHECK_EQ_INT(a.items[2].output_len, 77);
    CHECK_EQ_STR(a.items[3].text, "hello world"); /* cycled */
    CHECK_EQ_INT(a.items[4].n_ids, 3);
    loom_bench_dataset_free(&a);
    /* bad lines name themselves */
    const char *bad = "{\"prompt\": \"ok\"}\n{\"prompt\": 5}\n";
    fd = open(path, O_WRONLY | O_TRUNC);
    CHECK(write(fd, bad, strlen(bad)) == (ssize_t)strlen(bad));
    close(fd);
    CHECK(loom_bench_dataset_jsonl(&a, path, 0, 1) == LOOM_EINVAL);
    CHECK(strstr(loom_last_error(), ":2:") != NULL);
    unlink(path);
    CHECK(loom_bench_dataset_jsonl(&a, "/nonexistent/x.jsonl", 0, 1) == LOOM_EIO);
}

static void test_arrivals(void)
{
    double t[1000];
    loom_bench_arrivals(t, 1000, INFINITY, 1.0, 0);
    bool zero = true;
    for (int i = 0; i < 1000; i++) zero &= t[i] == 0;
    CHECK(zero);

    /* Poisson at 10 req/s: rescaled so the last arrival is at exactly n / rate; gaps are exponential,
     * so their coefficient of variation is near 1 (gamma shape 1) */
    loom_bench_arrivals(t, 1000, 10.0, 1.0, 3);
    CHECK_NEAR(t[999], 100.0, 1e-9);
    bool mono = true;
    double s = 0, s2 = 0, prev = 0;
    for (int i = 0; i < 1000; i++) {
        mono &= t[i] >= prev;
        double g = t[i] - prev;
        s += g;
        s2 += g * g;
        prev = t[i];
    }
    CHECK(mono);
    double mean = s / 1000, cv = sqrt(s2 / 1000 - mean * mean) / mean;
    CHECK_NEAR(mean, 0.1, 1e-9);
    CHECK_MSG(cv > 0.85 && cv < 1.15, "cv %g", cv);
    /* burstiness 4: gamma shape 4, cv 1/2 */
    loom_bench_arrivals(t, 1000, 10.0, 4.0, 3);
    s = s2 = prev = 0;
    for (int i = 0; i < 1000; i++) {
        double g = t[i] - prev;
        s += g;
        s2 += g * g;
        prev = t[i];
    }
    mean = s / 1000;
    cv = sqrt(s2 / 1000 - mean * mean) / mean;
    CHECK_MSG(cv > 0.4 && cv < 0.6, "cv %g", cv);
    /* infinite burstiness: evenly spaced */
    loom_bench_arrivals(t, 4, 2.0, INFINITY, 0);
    CHECK_NEAR(t[0], 0.5, 1e-12);
    CHECK_NEAR(t[3], 2.0, 1e-12);
}

int main(void)
{
    test_percentile();
    test_serve_metrics();
    test_goodput();
    test_peak_concurrency();
    test_percentile_parse();
    test_datasets();
    test_arrivals();
    return test_report();
}
