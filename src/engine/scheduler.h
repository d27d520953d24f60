/*
 * scheduler.h: continuous batching under a token budget, after vLLM V1's Scheduler.
 *
 * There are no prefill and decode phases: a sequence simply has num_computed of its n_tokens in
 * the KV cache, and each step gives some sequences more of them. A step:
 *   1. running sequences, in admission order: each gets min(what it lacks, the budget left) tokens
 *      (1 for a decode, a chunk for a prompt that is still being prefilled); when the blocks for
 *      them cannot be had, the lowest-priority running sequence (the newest under FCFS) is
 *      preempted: its blocks are released, num_computed goes back to 0 and it returns to the
 *      waiting queue, to be recomputed later (its output so far becomes part of that prefill);
 *   2. only if nothing was preempted: waiting sequences, in queue order (FCFS: arrival; priority:
 *      (priority, arrival)), while the budget, max_num_seqs and the free blocks allow. A waiting
 *      sequence first reuses the longest run of cached blocks of its prefix (never all of its
 *      tokens: the last one is always computed), then its rest is chunked to the budget. The
 *      first waiting sequence whose blocks cannot be had stops the admissions (no overtaking).
 *
 * n > 1: sample 0 is admitted alone; samples 1.. wait until sample 0 has computed its prompt and
 * then fork from it: they take references on its full prompt blocks (ref counts, with or without
 * prefix caching) and compute only the partial last block themselves. If sample 0 has finished by
 * then, or is back in the waiting queue, they fall back to the prefix cache like any request.
 *
 * The scheduler counts; it never touches a tensor. The caller runs the step, then calls
 * loom_scheduler_advance, appends sampled tokens, and removes finished sequences.
 */
#ifndef LOOM_ENGINE_SCHEDULER_H
#define LOOM_ENGINE_SCHEDULER_H

#include "engine/kv_blocks.h"
#include "engine/sequence.h"
#include "loom.h"

struct loom_sched_config {
    int max_num_seqs;            /* running sequences at most */
    int max_num_batched_tokens;  /* tokens per step at most (>= 1) */
    int max_prompt_rows;         /* prompt-logprob logits rows per step at most (>= 1) */
    enum loom_sched_policy policy;
};

struct loom_scheduler {
    struct loom_sched_config cfg;
    struct loom_kv_blocks *kv;
    int block_size;

    struct loom_seq **running;   /* [max_num_seqs] in admission order */
    int n_running;
    struct loom_seq *wait_head, *wait_tail;
    int n_waiting;
    uint64_t next_arrival;

    /* the current step */
    struct loom_seq **scheduled; /* [max_num_seqs] */
    int n_scheduled;
    int n_scheduled_tokens;
    int n_prompt_rows;           /* prompt-logprob rows taken this step */

    /* counters (cumulative) */
    int64_t num_preemptions;
    int64_t num_prefill_chunks;  /* prompt pieces scheduled shorter than the rest of the prompt */
    int64_t prefix_cache_queries, prefix_cache_hits; /* tokens, on each admission from waiting */
    int64_t prompt_tokens_computed; /* tokens at prompt positions run through the model */
};

int loom_scheduler_init(struct loom_scheduler *s, const struct loom_sched_config *cfg, struct loom_kv_blocks *kv);
void loom_scheduler_free(struct loom_scheduler *s);

/* Queues a new sequence (status WAITING, no blocks). */
void loom_scheduler_add(struct loom_scheduler *s, struct loom_seq *seq);
/* Picks this step's sequences into s->scheduled, each with sched_tokens > 0 and the blocks for them. */
void loom_scheduler_schedule(struct loom_scheduler *s);
/* After the step ran: num_computed += sched_tokens, full blocks go into the prefix cache, the
 * step's marks are cleared. */
void loom_scheduler_advance(struct loom_scheduler *s);
/* Takes a sequence out (finished or aborted): releases its blocks, leaves its queue, status FINISHED. */
void loom_scheduler_remove(struct loom_scheduler *s, struct loom_seq *seq);

static inline int loom_scheduler_num_unfinished(const struct loom_scheduler *s)
{
    return s->n_running + s->n_waiting;
}

/* Checks the queues and the block accounting against the pool (every block's ref_cnt equals the
 * number of block-table entries naming it); aborts on a broken invariant. For tests. */
void loom_scheduler_check(const struct loom_scheduler *s);

#endif
