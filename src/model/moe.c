/*
 * moe.c: the mixture-of-experts MLP of one layer over the batch's n rows: router logits, top-k
 * routing, then the experts' SwiGLUs added into the residual stream with the routing weights. The
 * grouping of rows by expert and the expert products are one backend op (moe_experts), so nothing
 * here waits for the device: the whole layer can be recorded into a CUDA graph.
 */
#include "model/model_internal.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>

void loom_model_set_router_trace(struct loom_model *m, float *gaps, int32_t *ids)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    bool on = c->num_experts > 0 && (gaps || ids);
    mi->h_trace_gaps = on ? gaps : NULL;
    mi->h_trace_ids = on ? ids : NULL;
    if (on && !mi->h_router_logits) {
        mi->h_router_logits = loom_malloc(sizeof(float) * (size_t)mi->max_tokens * (size_t)c->num_experts);
        mi->h_router_ids = loom_malloc(sizeof(int32_t) * (size_t)mi->max_tokens * (size_t)c->num_experts_per_tok);
    }
}

/* gaps: p_(k) - p_(k+1) of each row's router softmax (descending order; E == k: +inf); ids: the routing */
static void trace_router(struct loom_model *m, const struct model_layer *L, struct loom_tensor rl, int n)
{
    struct model_impl *mi = m->impl;
    const int E = m->cfg.num_experts, K = m->cfg.num_experts_per_tok, layers = m->cfg.num_layers;
    const int l = (int)(L - mi->layers);
    LOOM_ASSERT(rl.stride == E && E <= 1024);
    if (mi->h_trace_ids) {
        m->be->ops->download(m->be, mi->h_router_ids, mi->d_route_ids, sizeof(int32_t) * (size_t)n * K);
        for (int t = 0; t < n; t++)
            for (int j = 0; j < K; j++) mi->h_trace_ids[((size_t)t * layers + l) * K + j] = mi->h_router_ids[t * K + j];
    }
    if (!mi->h_trace_gaps) return;
    m->be->ops->download(m->be, mi->h_router_logits, rl.data, sizeof(float) * (size_t)n * E);
    for (int t = 0; t < n; t++) {
        const float *lg = mi->h_router_logits + (size_t)t * E;
        double p[1024], mx = lg[0], sum = 0;
        for (int e = 1; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
        for (int e = 0; e < E; e++) sum += (p[e] = exp((double)lg[e] - mx));
        /* the k-th and (k+1)-th largest, by k + 1 passes of selection */
        double kth = 0, next = -1;
        bool taken[1024] = {false};
        for (int j = 0; j <= K && j < E; j++) {
            int b = -1;
            for (int e = 0; e < E; e++)
                if (!taken[e] && (b < 0 || p[e] > p[b])) b = e;
            taken[b] = true;
            if (j == K - 1) kth = p[b] / sum;
            if (j == K) next = p[b] / sum;
        }
        mi->h_trace_gaps[(size_t)t * layers + l] = next < 0 ? INFINITY : (float)(kth - next);
    }
}

/* x[rows routed to e] += w * expert_e(h[those rows]) for every expert e */
int loom_moe_block(struct loom_model *m, const struct model_layer *L, struct loom_tensor x, struct loom_tensor h, int n)
{
    struct model_impl *mi = m->impl;
    struct loom_backend *be = m->be;
    const struct loom_backend_ops *ops = be->ops;
    const struct loom_model_config *c = &m->cfg;
    const int K = c->num_experts_per_tok;
    struct loom_tensor rl = ws_rows(mi->router_logits, n);
    ops->matmul(be, rl, h, L->router, NULL);
    ops->moe_route(be, rl, K, c->norm_topk_prob, mi->d_route_ids, mi->d_route_w);
    if (mi->h_trace_gaps || mi->h_trace_ids) trace_router(m, L, rl, n);
    struct loom_moe_experts ex = {
        .n_experts = c->num_experts, .gate = L->e_gate, .up = L->e_up, .down = L->e_down, .table = L->expert_table};
    ops->moe_experts(be, x, ws_rows(h, n), mi->d_route_ids, mi->d_route_w, K, &ex, mi->moe_ws);
    return 0;
}
