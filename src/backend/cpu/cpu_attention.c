/*
 * cpu_attention.c: paged causal attention over the KV pool, fp32, online softmax.
 *
 * AVX-512: work items are (a block of QB consecutive query tokens) x (a kv head); a block may span
 * sequences and is split into runs of one sequence. For a run, the keys of the union of its
 * windows are visited 16 at a time (rows found through the block table); every head of the GQA
 * group and every query of the run dots against those 16 K rows while they sit in L1 (16
 * accumulators along head_dim, reduced by a shuffle tree into one vector of 16 scores), then
 * masks, updates its running max and sum (flash-attention rescaling) and adds p * V.
 * Portable/AVX2: the same per query and head, one key at a time.
 * GQA: head h reads kv head h / (n_heads / n_kv_heads). It never materializes the score matrix.
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

#if defined(__x86_64__)
#include "backend/cpu/cpu_avx512.h"

#define QB512 8              /* query tokens per work item */
#define STATE_MAX (32 * 1024) /* floats of per-(query, head) accumulators on the stack */

/* lane i of the result = the sum of the lanes of a[i] */
T512 static inline __m512 reduce16(const __m512 *a)
{
    __m512 b[8], c[4];
    for (int j = 0; j < 8; j++)
        b[j] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * j], a[2 * j + 1]), _mm512_unpackhi_ps(a[2 * j], a[2 * j + 1]));
    for (int j = 0; j < 4; j++)
        c[j] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* tokens [i0, i1) of sequence s (consecutive positions), kv head g: every head of the group */
T512 static void attn_run_512(const struct attn_job *j, int s, int i0, int i1, int g)
{
    const struct loom_attn_meta *mt = j->meta;
    const int hd = j->head_dim, G = j->n_heads / j->n_kv_heads, nq = i1 - i0;
    const int q_len = mt->h_query_start[s + 1] - mt->h_query_start[s], ctx = mt->h_seq_lens[s];
    const int pos0 = ctx - q_len + (i0 - mt->h_query_start[s]); /* position of token i0 */
    const int32_t *bt = mt->block_tables + (int64_t)s * mt->max_blocks_per_seq;
    const int bs = mt->block_size, nc = (hd + 15) / 16;
    const __mmask16 tail = hd % 16 ? (__mmask16)((1u << (hd % 16)) - 1) : 0xffff;
    float acc[STATE_MAX], m[QB512 * 64], l[QB512 * 64]; /* [query][head][hd], [query][head] */
    for (int x = 0; x < nq * G; x++) {
        m[x] = -INFINITY;
        l[x] = 0;
    }
    memset(acc, 0, sizeof(float) * (size_t)nq * G * hd);
    int lo = 0;
    if (j->window > 0 && pos0 - j->window + 1 > 0) lo = pos0 - j->window + 1;
    const int hi = pos0 + nq - 1;
    for (int p0 = lo; p0 <= hi; p0 += 16) {
        const int cnt = hi + 1 - p0 < 16 ? hi + 1 - p0 : 16;
        const float *kr[16], *vr[16];
        for (int e = 0; e < 16; e++) {
            int p = p0 + (e < cnt ? e : 0);
            int64_t slot = (int64_t)bt[p / bs] * bs + p % bs;
            kr[e] = (const float *)cpu_row(j->kc, slot) + (int64_t)g * hd;
            vr[e] = (const float *)cpu_row(j->vc, slot) + (int64_t)g * hd;
        }
        for (int qi = 0; qi < nq; qi++) {
            const int pos = pos0 + qi;
            const int qlo = j->window > 0 && pos - j->window + 1 > 0 ? pos - j->window + 1 : 0;
            if (p0 > pos || p0 + cnt <= qlo) continue;
            /* lanes e with qlo <= p0 + e <= pos, e < cnt */
            uint32_t valid = (uint32_t)((1u << cnt) - 1);
            if (pos - p0 + 1 < 16) valid &= (uint32_t)((1u << (pos - p0 + 1)) - 1);
            if (qlo > p0) valid &= ~(uint32_t)((1u << (qlo - p0)) - 1);
            const __mmask16 vm = (__mmask16)valid;
            for (int hh = 0; hh < G; hh++) {
                const int h = g * G + hh;
                const float *q = (const float *)cpu_row(j->q, i0 + qi) + (int64_t)h * hd;
                __m512 d[16];
                for (int e = 0; e < 16; e++) d[e] = _mm512_setzero_ps();
                for (int c = 0; c < nc; c++) {
                    __mmask16 cm = c == nc - 1 ? tail : 0xffff;
                    __m512 qv = _mm512_maskz_loadu_ps(cm, q + c * 16);
                    for (int e = 0; e < 16; e++) d[e] = _mm512_fmadd_ps(qv, _mm512_maskz_loadu_ps(cm, kr[e] + c * 16), d[e]);
                }
                __m512 sc = _mm512_mul_ps(reduce16(d), _mm512_set1_ps(j->scale));
                sc = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), vm, sc);
                const int x = qi * G + hh;
                float *a = acc + (int64_t)x * hd;
                float tmax = _mm512_reduce_max_ps(sc);
                if (tmax > m[x]) {
                    float f = m[x] == -INFINITY ? 0.0f : expf(m[x] - tmax);
                    if (l[x] > 0) {
                        l[x] *= f;
                        for (int c = 0; c < nc; c++) {
                            __mmask16 cm = c == nc - 1 ? tail : 0xffff;
                            _mm512_mask_storeu_ps(a + c * 16, cm, _mm512_mul_ps(_mm512_maskz_loadu_ps(cm, a + c * 16), _mm512_set1_ps(f)));
                        }
                    }
                    m[x] = tmax;
                }
                __m512 pv = _mm512_maskz_mov_ps(vm, exp512(_mm512_sub_ps(sc, _mm512_set1_ps(m[x]))));
                l[x] += _mm512_reduce_add_ps(pv);
                float pe[16];
                _mm512_storeu_ps(pe, pv);
                for (int c = 0; c < nc; c++) {
                    __mmask16 cm = c == nc - 1 ? tail : 0xffff;
                    __m512 av = _mm512_maskz_loadu_ps(cm, a + c * 16);
                    for (int e = 0; e < cnt; e++)
                        av = _mm512_fmadd_ps(_mm512_set1_ps(pe[e]), _mm512_maskz_loadu_ps(cm, vr[e] + c * 16), av);
                    _mm512_mask_storeu_ps(a + c * 16, cm, av);
                }
            }
        }
    }
    for (int qi = 0; qi < nq; qi++)
        for (int hh = 0; hh < G; hh++) {
            const int x = qi * G + hh;
            float *o = (float *)cpu_row(j->out, i0 + qi) + (int64_t)(g * G + hh) * hd;
            const float inv = 1.0f / l[x];
            for (int d = 0; d < hd; d++) o[d] = acc[(int64_t)x * hd + d] * inv;
        }
}

/* item = (block of QB512 tokens) x (kv head) */
T512 static void attn_items_512(void *arg, int64_t b, int64_t e, int ith)
{
    const struct attn_job *j = arg;
    (void)ith;
    const struct loom_attn_meta *mt = j->meta;
    for (int64_t item = b; item < e; item++) {
        int g = (int)(item % j->n_kv_heads);
        int qb = (int)(item / j->n_kv_heads);
        int i0 = qb * QB512, i1 = i0 + QB512 < mt->n_tokens ? i0 + QB512 : mt->n_tokens;
        while (i0 < i1) { /* split the block into runs of one sequence */
            int s = seq_of(mt->h_query_start, mt->n_seqs, i0);
            int end = mt->h_query_start[s + 1] < i1 ? mt->h_query_start[s + 1] : i1;
            attn_run_512(j, s, i0, end, g);
            i0 = end;
        }
    }
}
#endif

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
#if defined(__x86_64__)
    const int G = n_heads / n_kv_heads;
    if (j.c->isa == CPU_ISA_AVX512 && G <= 64 && (int64_t)QB512 * G * head_dim <= STATE_MAX) {
        loom_parallel_for(j.c->tp, (int64_t)(meta->n_tokens + QB512 - 1) / QB512 * n_kv_heads, 1, attn_items_512, &j);
        return;
    }
#endif
    loom_parallel_for(j.c->tp, j.n_qblocks * n_heads, 1, attn_items, &j);
}
