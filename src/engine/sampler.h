/*
 * sampler.h: one logits row -> one token, with vLLM V1's semantics and order (vllm/v1/sample/sampler.py):
 *   1. logprobs, when asked, come from the raw model output (vLLM's default logprobs_mode
 *      "raw_logprobs": log_softmax before any processing);
 *   2. min_tokens: EOS and stop token ids get -inf while fewer than min_tokens were generated;
 *   3. logit_bias is added;
 *   4. penalties: repetition (prompt + output tokens: positive logits divided, the others multiplied),
 *      then frequency (times the token's count in the output) and presence (once per output token);
 *   5. temperature < 1e-5: greedy argmax (ties go to the lowest id), done;
 *   6. divide by the temperature;
 *   7. min_p: drop tokens whose probability is below min_p times the top one's (vLLM V1 applies it
 *      before top-k/top-p, as an argmax-invariant logits processor);
 *   8. top_k: keep logits >= the k-th largest (ties at the k-th are kept);
 *   9. top_p: keep the most probable tokens until their mass reaches top_p (vLLM's rule: sorted
 *      ascending, drop while the cumulative probability is <= 1 - top_p; the top token always stays);
 *  10. draw from what is left with a counter-based RNG: the draw for output token j of a sample
 *      depends only on (rng_key, j), so batch composition, chunking and preemption cannot change it.
 * The row is processed on a copy: the caller's logits are left as the model wrote them.
 */
#ifndef LOOM_ENGINE_SAMPLER_H
#define LOOM_ENGINE_SAMPLER_H

#include "backend/backend.h"
#include "loom.h"
#include <stdint.h>

struct loom_sampler {
    int vocab;
    float *work;       /* [vocab] the row being processed */
    int32_t *idx;      /* [vocab] candidate ids */
    uint32_t *stamp;   /* [vocab] dedup marks for the repetition penalty */
    uint32_t cur_stamp;
    int32_t *count;    /* [vocab] output token counts (zero between calls) */
    float max;         /* the largest processed logit (loom_sampler_prepare) */
    struct loom_logit_edit *edits; /* steps 2-4 of the row being processed, as edits */
    int cap_edits;
};

struct loom_sample_input {
    const struct loom_sampling_params *p;
    const int32_t *prompt;  /* [n_prompt] the request's prompt (repetition penalty) */
    int n_prompt;
    const int32_t *output;  /* [n_output] this sample's tokens so far */
    int n_output;
    const int32_t *stop_ids; /* [n_stop_ids] masked under min_tokens: EOS ids (unless ignore_eos) + stop_token_ids */
    int n_stop_ids;
    uint64_t rng_key;       /* the sample's random stream */
};

int loom_sampler_init(struct loom_sampler *s, int vocab);
void loom_sampler_free(struct loom_sampler *s);

/* Chooses the next token from the raw logits row [vocab] (not modified). */
int32_t loom_sampler_sample(struct loom_sampler *s, const float *logits, const struct loom_sample_input *in);

/* Steps 2-9 into s->work. Returns the token when the choice is greedy (work then holds the logits
 * after penalties, unless nothing modifies them: plain greedy reads the row in place), else -1 with work holding the final logits (temperature applied, dropped tokens
 * at -inf) that loom_sampler_sample draws from. Exposed for tests. */
int32_t loom_sampler_prepare(struct loom_sampler *s, const float *logits, const struct loom_sample_input *in);

/* Steps 2-4 as sparse token edits, with the row's other parameters and its draw (backend.h's struct
 * loom_sample_row, what a backend sampler is given): the edits are appended to *edits (grown as needed).
 * The host sampler builds the same edits and applies them with loom_sampler_apply_edits. */
void loom_sampler_backend_row(struct loom_sampler *s, const struct loom_sample_input *in, struct loom_sample_row *row,
                              struct loom_logit_edit **edits, int *n_edits, int *cap_edits);
/* The row's edits applied to x in their order: min_tokens masks, logit_bias one after another, the
 * repetition penalty, frequency/presence subtractions. */
void loom_sampler_apply_edits(float *x, const struct loom_sample_row *row, const struct loom_logit_edit *edits);

/* Raw logprobs of one row: token's into *lp; the best k (logprob descending, id ascending) into top[k]. */
void loom_sampler_logprobs(const float *logits, int vocab, int32_t token, int k, struct loom_token_logprob *lp,
                           struct loom_token_logprob *top);

/* A uniform double in [0, 1) for draw `counter` of stream `key`. */
double loom_rng_uniform(uint64_t key, uint64_t counter);
/* Mixes 64-bit values into a stream key (splitmix64 finalizer). */
uint64_t loom_rng_mix(uint64_t x);

#endif
