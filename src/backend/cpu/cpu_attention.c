/*
 * cpu_attention.c: paged causal attention over the KV pool, fp32, online softmax.
 *
 * Work items are (a block of QB consecutive query tokens) x (a head); a block may span sequences,
 * each token finds its own through query_start. For each query the keys of its window are visited
 * in tiles of TILE: scores (q . k * scale), the running max and sum rescaled as in flash attention,
 * and acc += p * v. K/V rows are found through the block table, one lookup per key.
 * GQA: head h reads kv head h / (n_heads / n_kv_heads). It does not materialize the score matrix.
 */
#include "backend/cpu/cpu_internal.h"

#include <math.h>

#define QB 16
#define TILE 64
#define MAX_HEAD_DIM 1024

struct attn_job {
    struct cpu_ctx *c;
    struct loom_tensor out, q, kc, vc;
    const struct loom_attn_meta *meta;
    int n_heads, n_kv_heads, head_dim, window;
    float scale;
    int64_t n_qblocks;
};

/* sequence that owns token i: the s with query_start[s] <= i < query_start[s + 1] */
static int seq_of(const int32_t *qs, int n_seqs, int i)
{
    int lo = 0, hi = n_seqs - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (qs[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

static void attn_query(const struct attn_job *j, int i, int h)
{
    const struct loom_attn_meta *mt = j->meta;
    const enum cpu_isa isa = j->c->isa;
    const int hd = j->head_dim;
    const int s = seq_of(mt->h_query_start, mt->n_seqs, i);
    const int q_len = mt->h_query_start[s + 1] - mt->h_query_start[s];
    const int ctx = mt->h_seq_lens[s];
    const int pos = ctx - q_len + (i - mt->h_query_start[s]);
    int lo = 0;
    if (j->window > 0 && pos - j->window + 1 > 0) lo = pos - j->window + 1;
    const int kvh = h / (j->n_heads / j->n_kv_heads);
    const int32_t *bt = mt->block_tables + (int64_t)s * mt->max_blocks_per_seq;
    const int bs = mt->block_size;
    const float *q = (const float *)cpu_row(j->q, i) + (int64_t)h * hd;
    float *o = (float *)cpu_row(j->out, i) + (int64_t)h * hd;

    float acc[MAX_HEAD_DIM];
    float sc[TILE];
    const float *vrows[TILE];
    memset(acc, 0, (size_t)hd * sizeof(float));
    float m = -INFINITY, l = 0;
    for (int p0 = lo; p0 <= pos; p0 += TILE) {
        int cnt = pos + 1 - p0 < TILE ? pos + 1 - p0 : TILE;
        float tmax = -INFINITY;
        for (int e = 0; e < cnt; e++) {
            int p = p0 + e;
            int64_t slot = (int64_t)bt[p / bs] * bs + p % bs;
            const float *kr = (const float *)cpu_row(j->kc, slot) + (int64_t)kvh * hd;
            vrows[e] = (const float *)cpu_row(j->vc, slot) + (int64_t)kvh * hd;
            sc[e] = cpu_dot_f32(isa, q, kr, hd) * j->scale;
            if (sc[e] > tmax) tmax = sc[e];
        }
        float m_new = tmax > m ? tmax : m;
        if (m_new > m && l > 0) {
            float f = expf(m - m_new);
            l *= f;
            cpu_scale_f32(isa, acc, f, hd);
        }
        m = m_new;
        l += cpu_exp_sub_sum_f32(isa, sc, m, cnt);
        for (int e = 0; e < cnt; e++) cpu_axpy_f32(isa, acc, sc[e], vrows[e], hd);
    }
    float inv = 1.0f / l;
    for (int d = 0; d < hd; d++) o[d] = acc[d] * inv;
}

static void attn_items(void *arg, int64_t b, int64_t e, int ith)
{
    const struct attn_job *j = arg;
    (void)ith;
    for (int64_t item = b; item < e; item++) {
        int h = (int)(item % j->n_heads);
        int qb = (int)(item / j->n_heads);
        int i0 = qb * QB, i1 = i0 + QB < j->meta->n_tokens ? i0 + QB : j->meta->n_tokens;
        for (int i = i0; i < i1; i++) attn_query(j, i, h);
    }
}

void cpu_attention(struct loom_backend *be, struct loom_tensor out, struct loom_tensor q,
                   struct loom_tensor k_cache, struct loom_tensor v_cache, const struct loom_attn_meta *meta,
                   int n_heads, int n_kv_heads, int head_dim, float scale, int sliding_window)
{
    LOOM_ASSERT(out.dtype == LOOM_DTYPE_F32 && q.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(k_cache.dtype == LOOM_DTYPE_F32 && v_cache.dtype == LOOM_DTYPE_F32);
    LOOM_ASSERT(head_dim > 0 && head_dim <= MAX_HEAD_DIM && n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    LOOM_ASSERT(q.cols >= (int64_t)n_heads * head_dim && out.cols >= (int64_t)n_heads * head_dim);
    LOOM_ASSERT(k_cache.cols >= (int64_t)n_kv_heads * head_dim && v_cache.cols >= (int64_t)n_kv_heads * head_dim);
    LOOM_ASSERT(q.rows >= meta->n_tokens && out.rows >= meta->n_tokens);
    if (meta->n_tokens == 0) return;
    struct attn_job j = {
        .c = cpu_ctx(be), .out = out, .q = q, .kc = k_cache, .vc = v_cache, .meta = meta,
        .n_heads = n_heads, .n_kv_heads = n_kv_heads, .head_dim = head_dim, .window = sliding_window,
        .scale = scale, .n_qblocks = (meta->n_tokens + QB - 1) / QB,
    };
    loom_parallel_for(j.c->tp, j.n_qblocks * n_heads, 1, attn_items, &j);
}
