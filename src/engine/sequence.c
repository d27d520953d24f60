/*
 * sequence.c: building and freeing requests and their sequences. Every allocation a request makes
 * happens here (on the thread that adds it); nothing here runs in the step loop.
 */
#include "engine/sequence.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

struct loom_req *loom_req_create(const struct loom_request *r, const int32_t *prompt, int n_prompt, int cap_tokens,
                                 int block_size, bool prefix_caching, const struct loom_tokenizer *tok)
{
    const struct loom_sampling_params *p = &r->params;
    struct loom_req *q = loom_calloc(1, sizeof(*q));
    q->params = *p;
    q->on_output = r->on_output;
    q->user = r->user;
    q->n_prompt = n_prompt;
    q->prompt = loom_malloc((size_t)n_prompt * sizeof(int32_t));
    memcpy(q->prompt, prompt, (size_t)n_prompt * sizeof(int32_t));

    /* deep copies of the parameter arrays */
    if (p->n_stop > 0) {
        q->stop = loom_calloc((size_t)p->n_stop, sizeof(char *));
        for (int i = 0; i < p->n_stop; i++) {
            q->stop[i] = loom_strdup(p->stop[i]);
            size_t l = strlen(q->stop[i]);
            if (l > q->max_stop_len) q->max_stop_len = l;
        }
    }
    q->params.stop = (const char *const *)q->stop;
    if (p->n_stop_token_ids > 0) {
        q->stop_token_ids = loom_malloc((size_t)p->n_stop_token_ids * sizeof(int32_t));
        memcpy(q->stop_token_ids, p->stop_token_ids, (size_t)p->n_stop_token_ids * sizeof(int32_t));
    }
    q->params.stop_token_ids = q->stop_token_ids;
    if (p->n_logit_bias > 0) {
        q->logit_bias = loom_malloc((size_t)p->n_logit_bias * sizeof(*q->logit_bias));
        memcpy(q->logit_bias, p->logit_bias, (size_t)p->n_logit_bias * sizeof(*q->logit_bias));
    }
    q->params.logit_bias = q->logit_bias;

    if (p->prompt_logprobs >= 0) {
        q->plp = loom_calloc((size_t)n_prompt, sizeof(*q->plp));
        q->plp[0].token_id = prompt[0];
        q->plp[0].logprob = 0;
        if (p->prompt_logprobs > 0)
            q->plp_top = loom_calloc((size_t)n_prompt * (size_t)p->prompt_logprobs, sizeof(*q->plp_top));
    }

    q->n = p->n;
    q->n_unfinished = p->n;
    q->seqs = loom_calloc((size_t)p->n, sizeof(*q->seqs));
    int cap_blocks = (cap_tokens + block_size - 1) / block_size;
    for (int i = 0; i < p->n; i++) {
        struct loom_seq *s = &q->seqs[i];
        s->req = q;
        s->index = i;
        s->status = LOOM_SEQ_WAITING;
        s->cap_tokens = cap_tokens;
        s->tokens = loom_malloc((size_t)cap_tokens * sizeof(int32_t));
        memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
        s->n_tokens = n_prompt;
        s->cap_blocks = cap_blocks;
        s->block_table = loom_malloc((size_t)cap_blocks * sizeof(int32_t));
        if (prefix_caching) s->block_hashes = loom_malloc((size_t)cap_blocks * sizeof(struct loom_block_hash));
        s->sample_row = -1;
        s->stop_token = -1;
        s->stop_string = -1;
        if (tok) {
            s->has_detok = true;
            loom_detok_init(&s->detok, tok, p->skip_special_tokens, prompt, n_prompt);
            s->hold_cap = 256 + 2 * q->max_stop_len;
            s->hold = loom_malloc(s->hold_cap);
        }
    }
    return q;
}

void loom_req_free(struct loom_req *q)
{
    if (!q) return;
    for (int i = 0; i < q->n; i++) {
        struct loom_seq *s = &q->seqs[i];
        free(s->tokens);
        free(s->block_table);
        free(s->block_hashes);
        if (s->has_detok) loom_detok_free(&s->detok);
        free(s->hold);
    }
    free(q->seqs);
    for (int i = 0; q->stop && i < q->params.n_stop; i++) free(q->stop[i]);
    free(q->stop);
    free(q->stop_token_ids);
    free(q->logit_bias);
    free(q->min_tokens_mask);
    free(q->plp);
    free(q->plp_top);
    free(q->prompt);
    free(q);
}
