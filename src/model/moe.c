/*
 * moe.c: the mixture-of-experts MLP of one layer over the batch's n rows: router logits, top-k
 * routing, then each expert's SwiGLU over the rows routed to it, added into the residual stream
 * with the routing weights. Routing needs the expert ids on the host to group tokens (one download
 * per MoE layer).
 */
#include "model/model_internal.h"
#include "core/error.h"

#include <string.h>

/* x[rows routed to e] += w * expert_e(h[those rows]) for every expert e */
int loom_moe_block(struct loom_model *m, const struct model_layer *L, struct loom_tensor x, struct loom_tensor h, int n)
{
    struct model_impl *mi = m->impl;
    struct loom_backend *be = m->be;
    const struct loom_backend_ops *ops = be->ops;
    const struct loom_model_config *c = &m->cfg;
    const int E = c->num_experts, K = c->num_experts_per_tok, MI = c->moe_intermediate_size, H = c->hidden_size;
    struct loom_tensor rl = ws_rows(mi->router_logits, n);
    ops->matmul(be, rl, h, L->router, NULL);
    ops->moe_route(be, rl, K, c->norm_topk_prob, mi->d_route_ids, mi->d_route_w);
    ops->download(be, mi->h_route_ids, mi->d_route_ids, sizeof(int32_t) * (size_t)n * K);
    ops->download(be, mi->h_route_w, mi->d_route_w, sizeof(float) * (size_t)n * K);
    /* group (token, weight) pairs by expert, tokens in order within each */
    for (int e = 0; e < E; e++) mi->h_exp_count[e] = 0;
    for (int i = 0; i < n * K; i++) {
        int e = mi->h_route_ids[i];
        LOOM_ASSERT(e >= 0 && e < E);
        mi->h_exp_count[e]++;
    }
    int off = 0;
    int start[1024];
    for (int e = 0; e < E; e++) {
        start[e] = off;
        off += mi->h_exp_count[e];
    }
    int fill[1024];
    memcpy(fill, start, sizeof(int) * (size_t)E);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < K; j++) {
            int e = mi->h_route_ids[t * K + j];
            mi->h_exp_rows[fill[e]] = t;
            mi->h_exp_w[fill[e]] = mi->h_route_w[t * K + j];
            fill[e]++;
        }
    ops->upload(be, mi->d_exp_rows, mi->h_exp_rows, sizeof(int32_t) * (size_t)n * K);
    ops->upload(be, mi->d_exp_w, mi->h_exp_w, sizeof(float) * (size_t)n * K);
    for (int e = 0; e < E; e++) {
        const int cnt = mi->h_exp_count[e];
        if (!cnt) continue;
        const int32_t *idx = mi->d_exp_rows + start[e];
        struct loom_tensor xe = ws_rows(mi->xe, cnt), ye = ws_rows(mi->ye, cnt);
        struct loom_tensor g = ws_view(mi->gate, cnt, MI), u = ws_view(mi->up, cnt, MI);
        ops->gather_rows(be, xe, h, idx);
        ops->matmul(be, g, xe, L->e_gate[e], NULL);
        ops->matmul(be, u, xe, L->e_up[e], NULL);
        ops->silu_mul(be, g, g, u);
        ops->matmul(be, ws_view(ye, cnt, H), g, L->e_down[e], NULL);
        ops->scatter_add_rows(be, x, ye, idx, mi->d_exp_w + start[e]);
    }
    return 0;
}

