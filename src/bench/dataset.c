/* dataset.c: seeded random prompts, JSONL prompts and arrival times for `loom bench` (see dataset.h). */
#include "bench/dataset.h"
#include "core/error.h"
#include "core/util.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------ */
/* Random numbers */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void loom_bench_rng_seed(struct loom_bench_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t loom_bench_rng_next(struct loom_bench_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double loom_bench_rng_uniform(struct loom_bench_rng *r)
{
    return (double)(loom_bench_rng_next(r) >> 11) * 0x1.0p-53;
}

int64_t loom_bench_rng_int(struct loom_bench_rng *r, int64_t lo, int64_t hi)
{
    LOOM_ASSERT(hi >= lo);
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(loom_bench_rng_next(r) % span); /* the modulo bias is below 2^-40 here */
}

double loom_bench_rng_exponential(struct loom_bench_rng *r, double mean)
{
    return -log(1.0 - loom_bench_rng_uniform(r)) * mean;
}

static double rng_normal(struct loom_bench_rng *r)
{
    double u1 = 1.0 - loom_bench_rng_uniform(r), u2 = loom_bench_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2 * M_PI * u2);
}

/* Marsaglia and Tsang's method; shape < 1 through gamma(shape + 1) * U^(1 / shape). */
double loom_bench_rng_gamma(struct loom_bench_rng *r, double shape, double scale)
{
    LOOM_ASSERT(shape > 0 && scale > 0);
    if (shape < 1) {
        double u = 1.0 - loom_bench_rng_uniform(r);
        return loom_bench_rng_gamma(r, shape + 1, scale) * pow(u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = rng_normal(r);
            v = 1.0 + c * x;
        } while (v <= 0);
        v = v * v * v;
        double u = 1.0 - loom_bench_rng_uniform(r);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v * scale;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v * scale;
    }
}

/* ------------------------------------------------------------------------------------------------ */
/* Datasets */

int loom_bench_draw_len(struct loom_bench_rng *r, int len, double range_ratio)
{
    int lo = (int)floor(len * (1.0 - range_ratio)), hi = (int)ceil(len * (1.0 + range_ratio));
    if (lo < 1) lo = 1;
    if (hi < lo) hi = lo;
    return (int)loom_bench_rng_int(r, lo, hi);
}

void loom_bench_dataset_random_ids(struct loom_bench_dataset *d, int n, int input_len, int output_len,
                                   double range_ratio, int vocab_size, uint64_t seed)
{
    LOOM_ASSERT(n >= 0 && vocab_size > 0);
    struct loom_bench_rng r;
    loom_bench_rng_seed(&r, seed);
    d->n = n;
    d->items = loom_calloc((size_t)(n ? n : 1), sizeof(*d->items));
    for (int i = 0; i < n; i++) {
        struct loom_bench_prompt *p = &d->items[i];
        p->n_ids = loom_bench_draw_len(&r, input_len, range_ratio);
        p->output_len = loom_bench_draw_len(&r, output_len, range_ratio);
        p->ids = loom_malloc(sizeof(int32_t) * (size_t)p->n_ids);
        for (int k = 0; k < p->n_ids; k++) p->ids[k] = (int32_t)loom_bench_rng_int(&r, 0, vocab_size - 1);
        p->prompt_len = p->n_ids;
        p->prompt_len_exact = true;
    }
}

/* Frequent English words: most are a single token in GPT-2-, Llama- and Qwen-style BPE vocabularies. */
static const char *const words[] = {
    "the",   "of",    "and",   "to",    "in",    "is",    "was",   "for",   "on",    "that",  "with",  "as",
    "by",    "at",    "from",  "his",   "it",    "an",    "were",  "are",   "which", "this",  "be",    "or",
    "has",   "had",   "not",   "but",   "first", "one",   "their", "its",   "new",   "after", "who",   "they",
    "have",  "her",   "she",   "two",   "been",  "other", "when",  "there", "all",   "time",  "during", "into",
    "school", "more", "may",   "years", "over",  "only",  "year",  "most",  "would", "world", "city",  "some",
    "where", "between", "later", "three", "state", "such", "then", "national", "used", "made", "known", "under",
    "many",  "university", "united", "while", "part", "season", "team", "these", "american", "than", "film",
    "second", "born", "south", "became", "states", "war", "through", "being", "including", "both", "before",
    "north", "high", "however", "people", "family", "early", "history", "album", "area", "since", "work",
};

void loom_bench_dataset_random_text(struct loom_bench_dataset *d, int n, int input_len, int output_len,
                                    double range_ratio, uint64_t seed)
{
    LOOM_ASSERT(n >= 0);
    struct loom_bench_rng r;
    loom_bench_rng_seed(&r, seed);
    int nw = (int)(sizeof(words) / sizeof(words[0]));
    d->n = n;
    d->items = loom_calloc((size_t)(n ? n : 1), sizeof(*d->items));
    for (int i = 0; i < n; i++) {
        struct loom_bench_prompt *p = &d->items[i];
        int len = loom_bench_draw_len(&r, input_len, range_ratio);
        p->output_len = loom_bench_draw_len(&r, output_len, range_ratio);
        size_t cap = (size_t)len * 12 + 1, k = 0;
        p->text = loom_malloc(cap);
        for (int w = 0; w < len; w++) {
            const char *s = words[loom_bench_rng_int(&r, 0, nw - 1)];
            size_t sl = strlen(s);
            if (k + sl + 2 > cap) {
                cap = cap * 2 + sl + 2;
                p->text = loom_realloc(p->text, cap);
            }
            if (w) p->text[k++] = ' ';
            memcpy(p->text + k, s, sl);
            k += sl;
        }
        p->text[k] = 0;
        p->prompt_len = len;
        p->prompt_len_exact = false;
    }
}

static int jsonl_item(json_t *obj, const char *path, int lineno, int default_output_len, struct loom_bench_prompt *p)
{
    memset(p, 0, sizeof(*p));
    if (!json_is_object(obj)) return loom_fail(LOOM_EINVAL, "%s:%d: expected a JSON object per line", path, lineno);
    json_t *pr = json_object_get(obj, "prompt");
    if (json_is_string(pr)) {
        p->text = loom_strdup(json_string_value(pr));
    } else if (json_is_array(pr) && json_array_size(pr) > 0) {
        size_t n = json_array_size(pr);
        p->ids = loom_malloc(sizeof(int32_t) * n);
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(pr, i);
            if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
                free(p->ids);
                p->ids = NULL;
                return loom_fail(LOOM_EINVAL, "%s:%d: \"prompt\" item %zu is not a token id (integer >= 0)", path,
                                 lineno, i);
            }
            p->ids[i] = (int32_t)json_integer_value(v);
        }
        p->n_ids = (int)n;
        p->prompt_len = (int)n;
        p->prompt_len_exact = true;
    } else {
        return loom_fail(LOOM_EINVAL, "%s:%d: \"prompt\" must be a string or a non-empty array of token ids", path,
                         lineno);
    }
    json_t *pl = json_object_get(obj, "prompt_len");
    if (!p->ids && json_is_integer(pl) && json_integer_value(pl) > 0) {
        p->prompt_len = (int)json_integer_value(pl);
        p->prompt_len_exact = true;
    }
    json_t *ol = json_object_get(obj, "output_len");
    if (!ol) ol = json_object_get(obj, "max_tokens");
    if (ol && (!json_is_integer(ol) || json_integer_value(ol) < 1 || json_integer_value(ol) > (1 << 24))) {
        free(p->text);
        free(p->ids);
        memset(p, 0, sizeof(*p));
        return loom_fail(LOOM_EINVAL, "%s:%d: \"output_len\"/\"max_tokens\" must be an integer >= 1", path, lineno);
    }
    p->output_len = ol ? (int)json_integer_value(ol) : default_output_len;
    return 0;
}

static void prompt_free(struct loom_bench_prompt *p)
{
    free(p->ids);
    free(p->text);
}

static void prompt_copy(struct loom_bench_prompt *dst, const struct loom_bench_prompt *src)
{
    *dst = *src;
    if (src->ids) {
        dst->ids = loom_malloc(sizeof(int32_t) * (size_t)src->n_ids);
        memcpy(dst->ids, src->ids, sizeof(int32_t) * (size_t)src->n_ids);
    }
    if (src->text) dst->text = loom_strdup(src->text);
}

int loom_bench_dataset_jsonl(struct loom_bench_dataset *d, const char *path, int n, int default_output_len)
{
    char *data;
    size_t len;
    int rc = loom_read_file(path, &data, &len);
    if (rc) return rc;
    int cap = 64, count = 0;
    struct loom_bench_prompt *items = loom_malloc(sizeof(*items) * (size_t)cap);
    char *line = data;
    int lineno = 0;
    while (line < data + len && (n <= 0 || count < n)) {
        char *eol = memchr(line, '\n', (size_t)(data + len - line));
        size_t ll = eol ? (size_t)(eol - line) : (size_t)(data + len - line);
        lineno++;
        size_t k = 0;
        while (k < ll && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
        if (k < ll) {
            json_error_t err;
            json_t *obj = json_loadb(line, ll, 0, &err);
            if (!obj) {
                rc = loom_fail(LOOM_EINVAL, "%s:%d: bad JSON: %s", path, lineno, err.text);
                goto fail;
            }
            if (count == cap) {
                cap *= 2;
                items = loom_realloc(items, sizeof(*items) * (size_t)cap);
            }
            rc = jsonl_item(obj, path, lineno, default_output_len, &items[count]);
            json_decref(obj);
            if (rc) goto fail;
            count++;
        }
        line = eol ? eol + 1 : data + len;
    }
    free(data);
    if (!count) {
        free(items);
        return loom_fail(LOOM_EINVAL, "%s: no prompts (expected one JSON object per line with a \"prompt\")", path);
    }
    int total = n > 0 ? n : count;
    d->items = loom_calloc((size_t)total, sizeof(*d->items));
    d->n = total;
    for (int i = 0; i < total; i++) {
        if (i < count) d->items[i] = items[i];
        else prompt_copy(&d->items[i], &items[i % count]);
    }
    free(items);
    return 0;
fail:
    for (int i = 0; i < count; i++) prompt_free(&items[i]);
    free(items);
    free(data);
    return rc;
}

void loom_bench_dataset_free(struct loom_bench_dataset *d)
{
    for (int i = 0; i < d->n; i++) prompt_free(&d->items[i]);
    free(d->items);
    d->items = NULL;
    d->n = 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Arrivals */

void loom_bench_arrivals(double *out, int n, double rate, double burstiness, uint64_t seed)
{
    if (n <= 0) return;
    if (!isfinite(rate)) {
        for (int i = 0; i < n; i++) out[i] = 0;
        return;
    }
    LOOM_ASSERT(rate > 0 && burstiness > 0);
    struct loom_bench_rng r;
    loom_bench_rng_seed(&r, seed ^ 0x5bd1e995ull);
    double t = 0;
    for (int i = 0; i < n; i++) {
        double gap = isfinite(burstiness) ? loom_bench_rng_gamma(&r, burstiness, 1.0 / (rate * burstiness))
                                          : 1.0 / rate;
        t += gap;
        out[i] = t;
    }
    /* vLLM: rescale so that the schedule spans exactly n / rate (steadier throughput across seeds) */
    if (out[n - 1] > 0) {
        double f = (n / rate) / out[n - 1];
        for (int i = 0; i < n; i++) out[i] *= f;
    }
}
