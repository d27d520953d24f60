/*
 * model.c: loading a Hugging Face model folder onto a backend: config.json, the safetensors set,
 * the architecture's tensor list (arch.c) bound by kind and checked by shape, optional dtype
 * conversion of the weights (--dtype), the RoPE frequencies (default, linear, llama3), the
 * workspace sized once for the largest batch, and the KV pool.
 *
 * A missing tensor, a tensor of the wrong shape or dtype, a broken config or a missing shard is a
 * negative status with a message naming it; nothing here aborts on bad input. The forward pass is
 * forward.c. Weights stay in the page cache: the CPU backend reads the mapping itself.
 */
#include "model/model_internal.h"
#include "core/error.h"
#include "core/log.h"
#include "model/arch.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *own(struct model_impl *mi, void *p)
{
    if (mi->n_owned == mi->cap_owned) {
        mi->cap_owned = mi->cap_owned ? 2 * mi->cap_owned : 64;
        mi->owned = loom_realloc(mi->owned, sizeof(void *) * (size_t)mi->cap_owned);
    }
    mi->owned[mi->n_owned++] = p;
    return p;
}

static struct loom_tensor ws_tensor(struct loom_model *m, enum loom_dtype t, int64_t rows, int64_t cols)
{
    struct model_impl *mi = m->impl;
    size_t bytes = (size_t)(rows * cols) * loom_dtype_size(t);
    void *p = own(mi, m->be->ops->alloc(m->be, bytes ? bytes : 64));
    return loom_tensor_2d(p, t, rows, cols);
}

static void *ws_buf(struct loom_model *m, size_t bytes)
{
    return own(m->impl, m->be->ops->alloc(m->be, bytes ? bytes : 64));
}

/* ---------------------------------------------------------------------------------------------- */
/* RoPE frequencies, as transformers' ROPE_INIT_FUNCTIONS compute them (in float32 there) */

static void compute_inv_freq(const struct loom_model_config *c, float *inv)
{
    const int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        double f = 1.0 / pow(c->rope_theta, (double)(2 * i) / (double)c->head_dim);
        if (c->rope_type == LOOM_ROPE_LINEAR && c->rope_factor > 0) {
            f /= c->rope_factor;
        } else if (c->rope_type == LOOM_ROPE_LLAMA3) {
            /* _compute_llama3_parameters: low frequencies scaled by 1/factor, high ones kept, the band
             * between smoothly interpolated */
            const double factor = c->rope_factor, lo = c->rope_low_freq_factor, hi = c->rope_high_freq_factor;
            const double old_len = c->rope_original_max_pos;
            const double low_freq_wavelen = old_len / lo, high_freq_wavelen = old_len / hi;
            const double wavelen = 2.0 * M_PI / f;
            double g = wavelen > low_freq_wavelen ? f / factor : f;
            if (!(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen)) {
                double smooth = (old_len / wavelen - lo) / (hi - lo);
                g = (1.0 - smooth) * g / factor + smooth * g;
            }
            f = g;
        }
        inv[i] = (float)f;
    }
}

/* ---------------------------------------------------------------------------------------------- */

/* The file's tensor for spec s, checked for presence, shape and dtype. */
static int find_weight(struct loom_model *m, const struct loom_weight_spec *s, const struct loom_st_tensor **out)
{
    struct model_impl *mi = m->impl;
    const struct loom_st_tensor *t = loom_safetensors_find(mi->st, s->name);
    if (!t)
        return loom_fail(LOOM_ENOTFOUND, "missing tensor '%s' (%s needs it; is a shard or the index incomplete?)",
                         s->name, loom_arch_name(m->cfg.arch));
    bool same = t->ndim == s->ndim && t->shape[0] == s->shape[0] && (s->ndim == 1 || t->shape[1] == s->shape[1]);
    if (!same) {
        char got[96] = "", exp[64];
        int k = 0;
        for (int d = 0; d < t->ndim && k < (int)sizeof(got) - 24; d++)
            k += snprintf(got + k, sizeof(got) - (size_t)k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        if (s->ndim == 1) snprintf(exp, sizeof(exp), "%lld", (long long)s->shape[0]);
        else snprintf(exp, sizeof(exp), "%lld, %lld", (long long)s->shape[0], (long long)s->shape[1]);
        return loom_fail(LOOM_EINVAL, "tensor '%s' has shape [%s], but config.json implies [%s]", s->name, got, exp);
    }
    if (t->dtype != LOOM_DTYPE_F32 && t->dtype != LOOM_DTYPE_F16 && t->dtype != LOOM_DTYPE_BF16)
        return loom_fail(LOOM_EUNSUPPORTED, "tensor '%s' is %s; loom reads F32, F16 and BF16 weights", s->name,
                         loom_dtype_name(t->dtype));
    *out = t;
    return 0;
}

/* nbytes more of the weights are on the backend: the progress line moves */
static void load_progress(struct model_impl *mi, size_t nbytes)
{
    if (!mi->load_progress) return;
    mi->load_bytes += (long long)nbytes;
    loom_progress_update(&mi->load_prog, mi->load_bytes >> 20);
}

static int bind_weight(struct loom_model *m, const struct loom_weight_spec *s, enum loom_dtype want,
                       struct loom_tensor *out)
{
    struct model_impl *mi = m->impl;
    struct loom_backend *be = m->be;
    const struct loom_st_tensor *t;
    int st;
    if ((st = find_weight(m, s, &t))) return st;
    int64_t rows = s->ndim == 1 ? 1 : s->shape[0], cols = s->ndim == 1 ? s->shape[0] : s->shape[1];
    void *p = be->ops->upload_weights(be, t->data, t->nbytes);
    const bool copied = p != t->data; /* the CPU reads the mapping itself; a GPU gets a copy */
    load_progress(mi, t->nbytes);
    struct loom_tensor w = loom_tensor_2d(p, t->dtype, rows, cols);
    if (want != LOOM_DTYPE_COUNT && want != t->dtype) {
        struct loom_tensor c = loom_tensor_2d(be->ops->alloc(be, (size_t)(rows * cols) * loom_dtype_size(want)), want,
                                              rows, cols);
        be->ops->convert(be, c, w);
        if (copied) { /* the converted copy replaces the uploaded one */
            be->ops->synchronize(be);
            be->ops->free(be, p);
        }
        own(mi, c.data);
        w = c;
    } else if (copied) {
        own(mi, p);
    }
    *out = w;
    return 0;
}

/*
 * Fused weights: the pieces (q, k, v; their biases; gate, up) of one layer in one backend allocation,
 * rows after rows (1-D biases end to end), each converted to the wanted dtype on the way. Only where
 * upload_weights copies anyway (be->copies_weights, a GPU): the same device memory as separate
 * tensors, and one matmul instead of two or three. The CPU reads the mmapped file in place, and a
 * concatenation there would copy the model into RAM: it keeps the separate matmuls, writing into the
 * column ranges of the same workspace rows. LOOM_FUSE_WEIGHTS=0 turns fusing off, =1 on even on the
 * CPU (a copy of those weights in RAM; for tests and comparisons).
 */
static int bind_concat(struct loom_model *m, struct loom_weight_spec *const *sp, int np, enum loom_dtype want,
                       struct loom_tensor *whole, struct loom_tensor **pieces)
{
    struct model_impl *mi = m->impl;
    struct loom_backend *be = m->be;
    const struct loom_st_tensor *t[4];
    int s;
    LOOM_ASSERT(np >= 2 && np <= 4);
    int64_t total_rows = 0, elems = 0;
    for (int i = 0; i < np; i++) {
        if ((s = find_weight(m, sp[i], &t[i]))) return s;
        total_rows += sp[i]->shape[0];
        elems += sp[i]->ndim == 1 ? sp[i]->shape[0] : sp[i]->shape[0] * sp[i]->shape[1];
    }
    const bool vec = sp[0]->ndim == 1;
    const enum loom_dtype dt = want != LOOM_DTYPE_COUNT ? want : t[0]->dtype;
    const size_t es = loom_dtype_size(dt);
    char *base = own(mi, be->ops->alloc(be, (size_t)elems * es));
    int64_t off = 0; /* elements */
    for (int i = 0; i < np; i++) {
        const int64_t rows = vec ? 1 : sp[i]->shape[0], cols = vec ? sp[i]->shape[0] : sp[i]->shape[1];
        struct loom_tensor dst = loom_tensor_2d(base + (size_t)off * es, dt, rows, cols);
        if (t[i]->dtype == dt) {
            be->ops->upload(be, dst.data, t[i]->data, t[i]->nbytes);
        } else {
            void *p = be->ops->upload_weights(be, t[i]->data, t[i]->nbytes);
            be->ops->convert(be, dst, loom_tensor_2d(p, t[i]->dtype, rows, cols));
            be->ops->synchronize(be);
            if (p != t[i]->data) be->ops->free(be, p);
        }
        be->ops->synchronize(be); /* the upload's staging is free again */
        load_progress(mi, t[i]->nbytes);
        *pieces[i] = dst;
        off += rows * cols;
    }
    *whole = vec ? loom_tensor_2d(base, dt, 1, elems) : loom_tensor_2d(base, dt, total_rows, sp[0]->shape[1]);
    return 0;
}

/* Whether the pieces can be one tensor: all present, one dtype after conversion, one width. */
static bool can_concat(struct loom_model *m, struct loom_weight_spec *const *sp, int np, enum loom_dtype want)
{
    for (int i = 0; i < np; i++) {
        if (!sp[i]) return false;
        const struct loom_st_tensor *t = loom_safetensors_find(((struct model_impl *)m->impl)->st, sp[i]->name), *t0;
        if (!t) return false;
        if (sp[i]->ndim != sp[0]->ndim || (sp[0]->ndim == 2 && sp[i]->shape[1] != sp[0]->shape[1])) return false;
        t0 = loom_safetensors_find(((struct model_impl *)m->impl)->st, sp[0]->name);
        if (want == LOOM_DTYPE_COUNT && t->dtype != t0->dtype) return false;
    }
    return true;
}

static int bind_all(struct loom_model *m, enum loom_dtype want)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    struct loom_weight_spec *specs;
    int n, s;
    if ((s = loom_arch_weights(c, &specs, &n))) return s;

    /* the pieces of each layer's fused weights: q k v, bq bk bv, gate up */
    enum { P_Q, P_K, P_V, P_QB, P_KB, P_VB, P_GATE, P_UP, P_COUNT };
    if (m->be->copies_weights) { /* copying gigabytes to a GPU takes seconds: show it */
        long long total = 0;
        for (int i = 0; i < n; i++) {
            const struct loom_st_tensor *t = loom_safetensors_find(mi->st, specs[i].name);
            if (t) total += (long long)t->nbytes;
        }
        mi->load_progress = true;
        mi->load_bytes = 0;
        loom_progress_begin(&mi->load_prog, "loading weights (MiB)", total >> 20);
    }
    struct loom_weight_spec *(*piece)[P_COUNT] = loom_calloc((size_t)c->num_layers, sizeof(*piece));
    bool *skip = loom_calloc((size_t)n + 1, sizeof(bool));
    const char *fe = getenv("LOOM_FUSE_WEIGHTS");
    int n_qkv = 0, n_gu = 0;
    const bool fuse = fe && *fe ? strcmp(fe, "0") != 0 : m->be->copies_weights;
    for (int i = 0; fuse && i < n; i++) {
        struct loom_weight_spec *sp = &specs[i];
        if (sp->layer < 0 || sp->expert >= 0) continue;
        int k = sp->kind == LOOM_W_Q ? P_Q : sp->kind == LOOM_W_K ? P_K : sp->kind == LOOM_W_V ? P_V
              : sp->kind == LOOM_W_Q_BIAS ? P_QB : sp->kind == LOOM_W_K_BIAS ? P_KB : sp->kind == LOOM_W_V_BIAS ? P_VB
              : sp->kind == LOOM_W_GATE ? P_GATE : sp->kind == LOOM_W_UP ? P_UP : -1;
        if (k >= 0) piece[sp->layer][k] = sp;
    }
    for (int l = 0; fuse && l < c->num_layers; l++) {
        struct model_layer *L = &mi->layers[l];
        struct loom_weight_spec **p = piece[l];
        bool any_bias = p[P_QB] || p[P_KB] || p[P_VB];
        bool qkv = can_concat(m, p + P_Q, 3, want) && (!any_bias || can_concat(m, p + P_QB, 3, want));
        bool gu = can_concat(m, p + P_GATE, 2, want);
        for (int i = 0; i < n; i++) {
            const struct loom_weight_spec *sp = &specs[i];
            if (sp->layer != l || sp->expert >= 0) continue;
            if (qkv && (sp == p[P_Q] || sp == p[P_K] || sp == p[P_V] || sp == p[P_QB] || sp == p[P_KB] || sp == p[P_VB]))
                skip[i] = true;
            if (gu && (sp == p[P_GATE] || sp == p[P_UP])) skip[i] = true;
        }
        struct loom_tensor *qkv_t[3] = {&L->wq, &L->wk, &L->wv}, *b_t[3] = {&L->bq, &L->bk, &L->bv},
                           *gu_t[2] = {&L->gate, &L->up};
        if (qkv && (s = bind_concat(m, p + P_Q, 3, want, &L->wqkv, qkv_t))) break;
        if (qkv && any_bias && (s = bind_concat(m, p + P_QB, 3, want, &L->bqkv, b_t))) break;
        if (gu && (s = bind_concat(m, p + P_GATE, 2, want, &L->gate_up, gu_t))) break;
        n_qkv += qkv;
        n_gu += gu;
    }
    if (fuse) LOG_DEBUG("weights: q|k|v concatenated in %d of %d layers, gate|up in %d", n_qkv, c->num_layers, n_gu);
    free(piece);
    if (s) {
        free(skip);
        free(specs);
        return s;
    }
    for (int i = 0; i < n; i++) {
        const struct loom_weight_spec *sp = &specs[i];
        if (skip[i]) continue;
        struct model_layer *L = sp->layer >= 0 ? &mi->layers[sp->layer] : NULL;
        struct loom_tensor *dst = NULL;
        switch (sp->kind) {
        case LOOM_W_EMBED: dst = &mi->embed; break;
        case LOOM_W_FINAL_NORM: dst = &mi->final_norm; break;
        case LOOM_W_LM_HEAD: dst = &mi->lm_head; break;
        case LOOM_W_ATTN_NORM: dst = &L->attn_norm; break;
        case LOOM_W_Q: dst = &L->wq; break;
        case LOOM_W_K: dst = &L->wk; break;
        case LOOM_W_V: dst = &L->wv; break;
        case LOOM_W_O: dst = &L->wo; break;
        case LOOM_W_Q_BIAS: dst = &L->bq; break;
        case LOOM_W_K_BIAS: dst = &L->bk; break;
        case LOOM_W_V_BIAS: dst = &L->bv; break;
        case LOOM_W_O_BIAS: dst = &L->bo; break;
        case LOOM_W_Q_NORM: dst = &L->q_norm; break;
        case LOOM_W_K_NORM: dst = &L->k_norm; break;
        case LOOM_W_MLP_NORM: dst = &L->mlp_norm; break;
        case LOOM_W_GATE: dst = &L->gate; break;
        case LOOM_W_UP: dst = &L->up; break;
        case LOOM_W_DOWN: dst = &L->down; break;
        case LOOM_W_ROUTER: dst = &L->router; break;
        case LOOM_W_EXPERT_GATE: dst = &L->e_gate[sp->expert]; break;
        case LOOM_W_EXPERT_UP: dst = &L->e_up[sp->expert]; break;
        case LOOM_W_EXPERT_DOWN: dst = &L->e_down[sp->expert]; break;
        default: break;
        }
        LOOM_ASSERT(dst != NULL);
        if ((s = bind_weight(m, sp, want, dst))) {
            free(skip);
            free(specs);
            return s;
        }
    }
    free(skip);
    free(specs);
    if (c->tie_word_embeddings) mi->lm_head = mi->embed;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */

static void alloc_workspace(struct loom_model *m)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    const enum loom_dtype act = m->be->act_dtype;
    const int T = mi->max_tokens, H = c->hidden_size, QW = c->num_heads * c->head_dim,
              KW = c->num_kv_heads * c->head_dim;
    mi->x = ws_tensor(m, act, T, H);
    mi->h = ws_tensor(m, act, T, H);
    mi->qkv = ws_tensor(m, act, T, QW + 2 * KW);
    mi->q = loom_tensor_cols(mi->qkv, 0, QW);
    mi->k = loom_tensor_cols(mi->qkv, QW, KW);
    mi->v = loom_tensor_cols(mi->qkv, QW + KW, KW);
    mi->attn = ws_tensor(m, act, T, QW);
    mi->o = ws_tensor(m, act, T, H);
    mi->gate_up = ws_tensor(m, act, T, 2 * (int64_t)mi->ffn_width);
    mi->gate = loom_tensor_2d(mi->gate_up.data, act, T, mi->ffn_width);
    mi->up = loom_tensor_2d((char *)mi->gate_up.data + (size_t)T * (size_t)mi->ffn_width * loom_dtype_size(act), act, T,
                            mi->ffn_width);
    mi->hl = ws_tensor(m, act, mi->max_logit_rows, H);
    mi->logits = ws_tensor(m, LOOM_DTYPE_F32, mi->logit_chunk, c->vocab_size);
    if (c->num_experts > 0) {
        const int E = c->num_experts, K = c->num_experts_per_tok;
        mi->router_logits = ws_tensor(m, LOOM_DTYPE_F32, T, E);
        mi->d_route_ids = ws_buf(m, sizeof(int32_t) * (size_t)T * K);
        mi->d_route_w = ws_buf(m, sizeof(float) * (size_t)T * K);
        mi->moe_ws = ws_buf(m, m->be->ops->moe_workspace_bytes(m->be, T, K, E, H, c->moe_intermediate_size));
        /* each MoE layer's table of expert weight pointers, in backend memory */
        void **tab = loom_malloc(sizeof(void *) * 3 * (size_t)E);
        for (int l = 0; l < c->num_layers; l++) {
            struct model_layer *L = &mi->layers[l];
            if (!L->moe) continue;
            for (int e = 0; e < E; e++) {
                tab[e] = L->e_gate[e].data;
                tab[E + e] = L->e_up[e].data;
                tab[2 * E + e] = L->e_down[e].data;
            }
            L->expert_table = ws_buf(m, sizeof(void *) * 3 * (size_t)E);
            m->be->ops->upload(m->be, L->expert_table, tab, sizeof(void *) * 3 * (size_t)E);
        }
        m->be->ops->synchronize(m->be); /* the upload's staging holds tab's copy; tab may go */
        free(tab);
    }
    mi->d_tokens = ws_buf(m, sizeof(int32_t) * (size_t)T);
    mi->d_positions = ws_buf(m, sizeof(int32_t) * (size_t)T);
    mi->d_slots = ws_buf(m, sizeof(int32_t) * (size_t)T);
    mi->d_query_start = ws_buf(m, sizeof(int32_t) * (size_t)(mi->max_seqs + 1));
    mi->d_seq_lens = ws_buf(m, sizeof(int32_t) * (size_t)mi->max_seqs);
    mi->d_logit_rows = ws_buf(m, sizeof(int32_t) * (size_t)mi->max_logit_rows);
}

int loom_model_load(const char *dir, struct loom_backend *be, const struct loom_model_options *opts,
                    struct loom_model **out)
{
    int s;
    *out = NULL;
    struct loom_model *m = loom_calloc(1, sizeof(*m));
    struct model_impl *mi = loom_calloc(1, sizeof(*mi));
    m->be = be;
    m->impl = mi;
    struct loom_model_config *c = &m->cfg;
    if ((s = loom_hf_config_load(dir, c))) goto fail; /* the message names the file */
    if (opts->max_batch_tokens <= 0 || opts->max_batch_seqs <= 0 || opts->max_logit_rows < 0 ||
        opts->max_model_len < 0) {
        s = loom_fail(LOOM_EINVAL, "model options: max_batch_tokens (%d) and max_batch_seqs (%d) must be positive",
                      opts->max_batch_tokens, opts->max_batch_seqs);
        goto fail;
    }
    if (c->num_heads % c->num_kv_heads) {
        s = loom_fail(LOOM_EINVAL, "%s/config.json: num_attention_heads (%d) is not a multiple of num_key_value_heads (%d)",
                      dir, c->num_heads, c->num_kv_heads);
        goto fail;
    }
    if (c->head_dim > 1024 || c->num_experts > 1024) {
        s = loom_fail(LOOM_EUNSUPPORTED, "%s/config.json: head_dim %d / %d experts is beyond what loom supports (1024)",
                      dir, c->head_dim, c->num_experts);
        goto fail;
    }
    if ((s = loom_safetensors_open(dir, &mi->st))) {
        loom_fail_context(s, "loading weights from %s", dir);
        goto fail;
    }
    mi->layers = loom_calloc((size_t)c->num_layers, sizeof(struct model_layer));
    for (int l = 0; l < c->num_layers; l++) {
        struct model_layer *L = &mi->layers[l];
        L->moe = loom_arch_layer_is_moe(c, l);
        if (L->moe) {
            L->e_gate = loom_calloc((size_t)c->num_experts, sizeof(struct loom_tensor));
            L->e_up = loom_calloc((size_t)c->num_experts, sizeof(struct loom_tensor));
            L->e_down = loom_calloc((size_t)c->num_experts, sizeof(struct loom_tensor));
        }
        /* Mistral/Mixtral: every layer; the Qwens: layers from max_window_layers on (use_sliding_window) */
        bool qwen = c->arch == LOOM_ARCH_QWEN2 || c->arch == LOOM_ARCH_QWEN3 || c->arch == LOOM_ARCH_QWEN3_MOE;
        L->sliding_window = c->sliding_window > 0 && (!qwen || l >= c->max_window_layers) ? c->sliding_window : 0;
    }
    s = bind_all(m, opts->weight_dtype);
    if (mi->load_progress) {
        loom_progress_end(&mi->load_prog);
        mi->load_progress = false;
    }
    if (s) {
        loom_fail_context(s, "%s", dir);
        goto fail;
    }

    /* limits and workspace */
    mi->max_tokens = opts->max_batch_tokens;
    mi->max_seqs = opts->max_batch_seqs;
    const char *pad = getenv("LOOM_PAD_DECODE"); /* 0 / 1 override the backend's choice (comparisons, tests) */
    mi->pad_decode = pad ? strcmp(pad, "0") != 0 : be->replays_work;
    const char *fuse = getenv("LOOM_FUSE_OPS"); /* 0: never the optional fused ops (comparisons, tests) */
    mi->fuse_ops = !(fuse && !strcmp(fuse, "0"));
    mi->max_logit_rows = opts->max_logit_rows > 0 ? opts->max_logit_rows : opts->max_batch_tokens;
    mi->max_model_len = opts->max_model_len > 0 ? opts->max_model_len : c->max_position_embeddings;
    if (mi->max_model_len <= 0) mi->max_model_len = 1 << 20;
    int64_t chunk = ((int64_t)256 << 20) / ((int64_t)c->vocab_size * 4); /* <= 256 MiB of logits */
    if (chunk < 1) chunk = 1;
    mi->logit_chunk = (int)(chunk < mi->max_logit_rows ? chunk : mi->max_logit_rows);
    mi->ffn_width = c->intermediate_size > c->moe_intermediate_size ? c->intermediate_size : c->moe_intermediate_size;
    alloc_workspace(m);
    if (be->ops->sample_reserve) be->ops->sample_reserve(be, mi->max_logit_rows, c->vocab_size);

    float inv[512];
    compute_inv_freq(c, inv);
    mi->inv_freq = ws_tensor(m, LOOM_DTYPE_F32, 1, c->head_dim / 2);
    be->ops->upload(be, mi->inv_freq.data, inv, sizeof(float) * (size_t)(c->head_dim / 2));
    be->ops->synchronize(be);
    *out = m;
    return 0;
fail:
    loom_model_free(m);
    return s;
}

void loom_model_free(struct loom_model *m)
{
    if (!m) return;
    struct model_impl *mi = m->impl;
    if (mi) {
        if (m->be) m->be->ops->synchronize(m->be);
        for (int i = 0; i < mi->n_owned; i++)
            if (mi->owned[i]) m->be->ops->free(m->be, mi->owned[i]);
        free(mi->owned);
        if (mi->layers) {
            for (int l = 0; l < m->cfg.num_layers; l++) {
                free(mi->layers[l].e_gate);
                free(mi->layers[l].e_up);
                free(mi->layers[l].e_down);
            }
            free(mi->layers);
        }
        free(mi->h_pad_tokens);
        free(mi->h_pad_positions);
        free(mi->h_pad_slots);
        free(mi->h_pad_query_start);
        free(mi->h_pad_seq_lens);
        free(mi->h_pad_logit_rows);
        free(mi->h_pad_block_tables);
        free(mi->h_router_logits);
        free(mi->h_router_ids);
        loom_safetensors_close(mi->st);
        free(mi);
    }
    free(m);
}

size_t loom_model_kv_bytes_per_block(const struct loom_model *m, int block_size)
{
    const struct loom_model_config *c = &m->cfg;
    return 2 * (size_t)c->num_layers * (size_t)block_size * (size_t)c->num_kv_heads * (size_t)c->head_dim *
           loom_dtype_size(m->be->act_dtype);
}

int loom_model_alloc_kv(struct loom_model *m, int num_blocks, int block_size)
{
    struct model_impl *mi = m->impl;
    const struct loom_model_config *c = &m->cfg;
    if (m->num_kv_blocks > 0) return loom_fail(LOOM_EINVAL, "the KV pool is already allocated (%d blocks)", m->num_kv_blocks);
    if (num_blocks <= 0 || block_size <= 0 || (int64_t)num_blocks * block_size > INT32_MAX)
        return loom_fail(LOOM_EINVAL, "KV pool of %d blocks of %d tokens: both must be positive and their product "
                                      "below 2^31", num_blocks, block_size);
    const int64_t slots = (int64_t)num_blocks * block_size, kw = (int64_t)c->num_kv_heads * c->head_dim;
    /* one allocation for the whole pool: every layer's K and V, each starting 256-byte aligned */
    const enum loom_dtype t = m->be->act_dtype;
    const size_t per = ((size_t)slots * (size_t)kw * loom_dtype_size(t) + 255) & ~(size_t)255;
    char *pool = ws_buf(m, per * 2 * (size_t)c->num_layers);
    for (int l = 0; l < c->num_layers; l++) {
        mi->layers[l].k_cache = loom_tensor_2d(pool + per * (size_t)(2 * l), t, slots, kw);
        mi->layers[l].v_cache = loom_tensor_2d(pool + per * (size_t)(2 * l + 1), t, slots, kw);
    }
    int per_seq = (mi->max_model_len + block_size - 1) / block_size;
    if (per_seq > num_blocks) per_seq = num_blocks;
    mi->max_blocks_per_seq = per_seq;
    mi->d_block_tables = ws_buf(m, sizeof(int32_t) * (size_t)mi->max_seqs * (size_t)per_seq);
    if (mi->pad_decode) {
        size_t ns = (size_t)mi->max_seqs;
        mi->h_pad_tokens = loom_malloc(sizeof(int32_t) * ns);
        mi->h_pad_positions = loom_malloc(sizeof(int32_t) * ns);
        mi->h_pad_slots = loom_malloc(sizeof(int32_t) * ns);
        mi->h_pad_query_start = loom_malloc(sizeof(int32_t) * (ns + 1));
        mi->h_pad_seq_lens = loom_malloc(sizeof(int32_t) * ns);
        mi->h_pad_logit_rows = loom_malloc(sizeof(int32_t) * ns);
        mi->h_pad_block_tables = loom_malloc(sizeof(int32_t) * ns * (size_t)per_seq);
    }
    m->num_kv_blocks = num_blocks;
    m->block_size = block_size;
    return 0;
}
