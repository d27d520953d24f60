/*
 * sequence.h: the state of one request (vLLM's Request) and of each of its n samples (a sequence).
 *
 * A request owns deep copies of everything its caller passed (prompt ids, stop strings, stop token
 * ids, logit biases), so the caller's memory can go away once loom_engine_add_request returns. Every
 * buffer a sequence needs while it runs (tokens, block table, block hashes, text hold-back) is
 * allocated here, at add time, on the caller's thread: the step loop never allocates for it.
 *
 * A sequence's tokens are the prompt followed by its own output. After a preemption the whole of it
 * is recomputed (num_computed goes back to 0), so "prefill" simply means num_computed < n_tokens - 1.
 */
#ifndef LOOM_ENGINE_SEQUENCE_H
#define LOOM_ENGINE_SEQUENCE_H

#include "engine/kv_blocks.h"
#include "loom.h"
#include "tokenizer/tokenizer.h"

#include <stdbool.h>
#include <stdint.h>

enum loom_seq_status { LOOM_SEQ_WAITING = 0, LOOM_SEQ_RUNNING, LOOM_SEQ_FINISHED };

struct loom_req;

struct loom_seq {
    struct loom_req *req;
    int index;                      /* which of the request's n samples */
    enum loom_seq_status status;
    uint64_t arrival;               /* admission order (scheduler-assigned; FCFS key) */

    /* tokens: the prompt, then this sample's output */
    int32_t *tokens;                /* [cap_tokens] */
    int n_tokens, cap_tokens;       /* cap_tokens = min(n_prompt + max_tokens, max_model_len) */
    int num_computed;               /* leading tokens whose K/V are in the cache */

    /* KV blocks */
    int32_t *block_table;           /* [cap_blocks] block ids for tokens [i * block_size, ...) */
    int n_blocks, cap_blocks;
    struct loom_block_hash *block_hashes; /* [cap_blocks] (prefix caching only): chained hashes */
    int n_hashed;                   /* full blocks whose hash is in block_hashes */
    int n_registered;               /* leading blocks already offered to the prefix cache */

    /* waiting-queue links (scheduler) */
    struct loom_seq *wprev, *wnext;

    /* this step (scheduler, runner) */
    int sched_tokens;               /* tokens scheduled this step (0: not scheduled) */
    int sample_row;                 /* logits row to sample from, -1: none this step */
    int prompt_row0, prompt_pos0, n_prompt_rows; /* rows [row0, +n) hold prompt positions [pos0, +n) */

    /* generation */
    uint64_t rng_key;               /* per-sample stream: token j uses (rng_key, j) */
    enum loom_finish_reason finish;
    int32_t stop_token;             /* -1 or the token that stopped the sample */
    int stop_string;                /* -1 or the index of the stop string that matched */

    /* text (when the engine has a tokenizer) */
    bool has_detok;
    struct loom_detok detok;
    char *hold;                     /* recent text: [0, hold_emitted) already emitted (kept for stop-string
                                     * matching), the rest held back because it may start a stop string */
    size_t hold_len, hold_cap, hold_emitted;
};

struct loom_req {
    uint64_t id;
    struct loom_sampling_params params; /* pointers refer to the copies below */
    int32_t *prompt;                /* [n_prompt] */
    int n_prompt;
    int n;                          /* samples */
    struct loom_seq *seqs;          /* [n] */
    int n_unfinished;
    loom_output_fn on_output;
    void *user;

    double t_arrival, t_first_token; /* loom_now() seconds; t_first_token 0 until then */
    int cached_tokens;              /* prompt tokens of sample 0 served from the cache (first admission) */
    bool admitted;                  /* sample 0 was scheduled once */
    bool abort_pending;             /* loom_engine_abort was called (inbox lock) */

    /* prompt logprobs (params.prompt_logprobs >= 0), computed by sample 0 */
    struct loom_token_logprob *plp;     /* [n_prompt]: plp[0] = {prompt[0], 0} */
    struct loom_token_logprob *plp_top; /* [n_prompt * prompt_logprobs] */
    int plp_done;                   /* positions [0, plp_done) processed: plp[1 .. plp_done] are set */
    bool plp_sent;

    /* owned copies of the caller's arrays */
    char **stop;
    int32_t *stop_token_ids;
    struct loom_logit_bias *logit_bias;
    size_t max_stop_len;            /* longest stop string in bytes */
    int32_t *min_tokens_mask;       /* EOS ids (unless ignore_eos) + stop_token_ids: masked under min_tokens */
    int n_min_tokens_mask;

    struct loom_req *next;          /* inbox link */
    struct loom_req *live_next;     /* the engine's id -> request table */
};

/* Builds a request of req->params.n samples over prompt ids (copied). cap_tokens is each sample's
 * token capacity (prompt + max_tokens, capped by max_model_len); block_size sizes the block tables;
 * tok (may be NULL) enables text output. Allocates everything the request will need. */
struct loom_req *loom_req_create(const struct loom_request *r, const int32_t *prompt, int n_prompt, int cap_tokens,
                                 int block_size, bool prefix_caching, const struct loom_tokenizer *tok);
void loom_req_free(struct loom_req *q);

/* Blocks that n tokens occupy. */
static inline int loom_blocks_for(int n, int block_size)
{
    return (n + block_size - 1) / block_size;
}

static inline int loom_seq_num_output(const struct loom_seq *s)
{
    return s->n_tokens - s->req->n_prompt;
}

#endif
