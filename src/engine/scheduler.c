/*
 * scheduler.c: which sequences run this step and with how many tokens; preemption by recompute;
 * prefix-cache and fork reuse at admission. See scheduler.h for the policy. It moves integers
 * (token counts, block ids) only, and allocates only in loom_scheduler_init.
 */
#include "engine/scheduler.h"

#include "core/error.h"

#include <stdlib.h>
#include <string.h>

int loom_scheduler_init(struct loom_scheduler *s, const struct loom_sched_config *cfg, struct loom_kv_blocks *kv)
{
    memset(s, 0, sizeof(*s));
    if (cfg->max_num_seqs < 1 || cfg->max_num_batched_tokens < 1 || cfg->max_prompt_rows < 1)
        return loom_fail(LOOM_EINVAL, "scheduler: max_num_seqs %d, max_num_batched_tokens %d and max_prompt_rows %d "
                         "must all be >= 1", cfg->max_num_seqs, cfg->max_num_batched_tokens, cfg->max_prompt_rows);
    s->cfg = *cfg;
    s->kv = kv;
    s->block_size = kv->block_size;
    s->running = loom_calloc((size_t)cfg->max_num_seqs, sizeof(*s->running));
    s->scheduled = loom_calloc((size_t)cfg->max_num_seqs, sizeof(*s->scheduled));
    return LOOM_OK;
}

void loom_scheduler_free(struct loom_scheduler *s)
{
    free(s->running);
    free(s->scheduled);
    memset(s, 0, sizeof(*s));
}

/* ---------------------------------------------------------------------------------------------- */
/* Queues */

/* True if a is served before b: (priority, arrival) under the priority policy, arrival under FCFS. */
static bool seq_before(const struct loom_scheduler *s, const struct loom_seq *a, const struct loom_seq *b)
{
    if (s->cfg.policy == LOOM_SCHED_PRIORITY) {
        int pa = a->req->params.priority, pb = b->req->params.priority;
        if (pa != pb) return pa < pb;
    }
    return a->arrival < b->arrival;
}

/* Inserts into the waiting queue at its place in service order (a new arrival goes to the tail in
 * O(1); a preempted sequence, being older, walks towards the head). */
static void wait_insert(struct loom_scheduler *s, struct loom_seq *seq)
{
    struct loom_seq *after = s->wait_tail;
    while (after && seq_before(s, seq, after)) after = after->wprev;
    seq->wprev = after;
    seq->wnext = after ? after->wnext : s->wait_head;
    if (seq->wnext) seq->wnext->wprev = seq;
    else s->wait_tail = seq;
    if (after) after->wnext = seq;
    else s->wait_head = seq;
    s->n_waiting++;
}

static void wait_remove(struct loom_scheduler *s, struct loom_seq *seq)
{
    if (seq->wprev) seq->wprev->wnext = seq->wnext;
    else s->wait_head = seq->wnext;
    if (seq->wnext) seq->wnext->wprev = seq->wprev;
    else s->wait_tail = seq->wprev;
    seq->wprev = seq->wnext = NULL;
    s->n_waiting--;
}

static int running_index(const struct loom_scheduler *s, const struct loom_seq *seq)
{
    for (int i = s->n_running - 1; i >= 0; i--)
        if (s->running[i] == seq) return i;
    LOOM_ASSERT(!"sequence not in the running list");
    return -1;
}

static void running_remove_at(struct loom_scheduler *s, int i)
{
    memmove(&s->running[i], &s->running[i + 1], (size_t)(s->n_running - i - 1) * sizeof(*s->running));
    s->n_running--;
}

/* Releases a sequence's blocks, the last first: freed cached blocks queue for eviction in that
 * order, so a prefix's tail goes before its head (the head is the part others share). */
static void release_blocks(struct loom_scheduler *s, struct loom_seq *seq)
{
    for (int i = seq->n_blocks - 1; i >= 0; i--) loom_kv_release(s->kv, seq->block_table[i]);
    seq->n_blocks = 0;
    seq->n_registered = 0;
}

void loom_scheduler_add(struct loom_scheduler *s, struct loom_seq *seq)
{
    LOOM_ASSERT(seq->n_blocks == 0 && seq->n_tokens >= 1);
    seq->arrival = s->next_arrival++;
    seq->status = LOOM_SEQ_WAITING;
    seq->num_computed = 0;
    seq->sched_tokens = 0;
    wait_insert(s, seq);
}

void loom_scheduler_remove(struct loom_scheduler *s, struct loom_seq *seq)
{
    if (seq->status == LOOM_SEQ_RUNNING) running_remove_at(s, running_index(s, seq));
    else if (seq->status == LOOM_SEQ_WAITING) wait_remove(s, seq);
    release_blocks(s, seq);
    seq->status = LOOM_SEQ_FINISHED;
}

/* ---------------------------------------------------------------------------------------------- */
/* Prefix hashes */

static void ensure_hashes(struct loom_seq *seq, int n_full, int block_size)
{
    for (int b = seq->n_hashed; b < n_full; b++)
        seq->block_hashes[b] = loom_block_hash_next(b ? &seq->block_hashes[b - 1] : NULL,
                                                    seq->tokens + (size_t)b * block_size, block_size);
    if (n_full > seq->n_hashed) seq->n_hashed = n_full;
}

/* The blocks a waiting sequence can reuse: sample 0's full prompt blocks when forking from it,
 * then the prefix cache, stopping at the first miss and one token short of the whole sequence.
 * Written into seq->block_table (no references taken yet); returns how many. */
static int find_computed_blocks(struct loom_scheduler *s, struct loom_seq *seq, const struct loom_seq *parent)
{
    const struct loom_req *q = seq->req;
    int bs = s->block_size;
    if (seq->index == 0 && q->params.prompt_logprobs >= 0) return 0; /* every prompt row is needed */
    int max_blocks = (seq->n_tokens - 1) / bs;
    int n_fork = parent ? q->n_prompt / bs : 0;
    int k = 0;
    for (; k < max_blocks; k++) {
        int32_t id = -1;
        if (k < n_fork) {
            id = parent->block_table[k];
        } else if (s->kv->prefix_caching) {
            ensure_hashes(seq, k + 1, bs);
            id = loom_kv_lookup(s->kv, seq->block_hashes[k], seq->tokens + (size_t)k * bs);
        }
        if (id < 0) break;
        seq->block_table[k] = id;
    }
    return k;
}

/* ---------------------------------------------------------------------------------------------- */
/* One step */

/* Shortens n so that the prompt-logprob rows of tokens [start, start + n) fit in rows_left; sets the
 * positions whose rows are needed, [*pos0, *pos0 + *rows). Returns the new n (0: nothing fits). */
static int fit_prompt_rows(const struct loom_seq *seq, int start, int n, int rows_left, int *pos0, int *rows)
{
    const struct loom_req *q = seq->req;
    *pos0 = *rows = 0;
    if (seq->index != 0 || q->params.prompt_logprobs < 0) return n;
    int first = q->plp_done, last = q->n_prompt - 1; /* position p's row gives prompt token p + 1 */
    if (first >= last) return n;
    LOOM_ASSERT(start <= first); /* such a sequence never starts from cached blocks */
    if (first >= start + n) return n;
    if (start + n > first + rows_left) n = first + rows_left - start;
    if (n <= 0) return 0;
    int end = start + n < last ? start + n : last;
    *pos0 = first;
    *rows = end - first;
    return n;
}

static void schedule_seq(struct loom_scheduler *s, struct loom_seq *seq, int n, int pos0, int rows, int *budget)
{
    seq->sched_tokens = n;
    seq->prompt_pos0 = pos0;
    seq->n_prompt_rows = rows;
    s->scheduled[s->n_scheduled++] = seq;
    s->n_scheduled_tokens += n;
    s->n_prompt_rows += rows;
    *budget -= n;
}

/* The running sequence to preempt: the last in service order. */
static int pick_victim(const struct loom_scheduler *s)
{
    int v = s->n_running - 1;
    if (s->cfg.policy == LOOM_SCHED_PRIORITY)
        for (int i = 0; i < s->n_running; i++)
            if (seq_before(s, s->running[v], s->running[i])) v = i;
    return v;
}

static void preempt(struct loom_scheduler *s, int vi, int *budget)
{
    struct loom_seq *v = s->running[vi];
    if (v->sched_tokens > 0) { /* scheduled earlier this step (priority policy): take it back */
        int j = 0;
        while (s->scheduled[j] != v) j++;
        memmove(&s->scheduled[j], &s->scheduled[j + 1], (size_t)(s->n_scheduled - j - 1) * sizeof(*s->scheduled));
        s->n_scheduled--;
        s->n_scheduled_tokens -= v->sched_tokens;
        s->n_prompt_rows -= v->n_prompt_rows;
        *budget += v->sched_tokens;
        v->sched_tokens = 0;
        v->n_prompt_rows = 0;
    }
    running_remove_at(s, vi);
    release_blocks(s, v);
    v->num_computed = 0;
    v->status = LOOM_SEQ_WAITING;
    wait_insert(s, v);
    s->num_preemptions++;
}

void loom_scheduler_schedule(struct loom_scheduler *s)
{
    struct loom_kv_blocks *kv = s->kv;
    int bs = s->block_size;
    int budget = s->cfg.max_num_batched_tokens;
    bool preempted = false;
    s->n_scheduled = 0;
    s->n_scheduled_tokens = 0;
    s->n_prompt_rows = 0;

    /* 1. running sequences */
    for (int i = 0; i < s->n_running && budget > 0;) {
        struct loom_seq *seq = s->running[i];
        int start = seq->num_computed, pos0, rows;
        LOOM_ASSERT(seq->n_tokens > start && seq->sched_tokens == 0);
        int n = seq->n_tokens - start < budget ? seq->n_tokens - start : budget;
        n = fit_prompt_rows(seq, start, n, s->cfg.max_prompt_rows - s->n_prompt_rows, &pos0, &rows);
        if (n == 0) {
            i++;
            continue;
        }
        int need = loom_blocks_for(start + n, bs) - seq->n_blocks;
        LOOM_ASSERT(need >= 0);
        bool self = false;
        while (need > kv->num_free) {
            int vi = pick_victim(s);
            self = s->running[vi] == seq;
            preempt(s, vi, &budget);
            preempted = true;
            if (self) break;
            if (vi < i) i--;
        }
        if (self) continue; /* running[i] is now the next one; under FCFS there is none */
        for (int k = 0; k < need; k++) seq->block_table[seq->n_blocks++] = loom_kv_alloc(kv);
        schedule_seq(s, seq, n, pos0, rows, &budget);
        i++;
    }
    if (preempted) return; /* no admissions while memory is short */

    /* 2. waiting sequences */
    struct loom_seq *next;
    for (struct loom_seq *seq = s->wait_head; seq && budget > 0 && s->n_running < s->cfg.max_num_seqs; seq = next) {
        next = seq->wnext;
        struct loom_req *q = seq->req;
        const struct loom_seq *parent = NULL;
        if (seq->index > 0 && q->seqs[0].status != LOOM_SEQ_FINISHED) {
            parent = &q->seqs[0];
            if (parent->status != LOOM_SEQ_RUNNING || parent->num_computed < q->n_prompt) continue; /* not yet */
        }
        int n_hit = find_computed_blocks(s, seq, parent);
        int start = n_hit * bs, pos0, rows;
        int n = seq->n_tokens - start < budget ? seq->n_tokens - start : budget;
        n = fit_prompt_rows(seq, start, n, s->cfg.max_prompt_rows - s->n_prompt_rows, &pos0, &rows);
        if (n == 0) break;
        int need = loom_blocks_for(start + n, bs) - n_hit, revive = 0;
        for (int k = 0; k < n_hit; k++) revive += kv->ref_cnt[seq->block_table[k]] == 0;
        if (need + revive > kv->num_free) break;
        for (int k = 0; k < n_hit; k++) loom_kv_ref(kv, seq->block_table[k]);
        seq->n_blocks = n_hit;
        for (int k = 0; k < need; k++) seq->block_table[seq->n_blocks++] = loom_kv_alloc(kv);
        seq->num_computed = start;
        seq->n_registered = n_hit;
        if (kv->prefix_caching) {
            s->prefix_cache_queries += seq->n_tokens;
            s->prefix_cache_hits += start;
        }
        if (seq->index == 0 && !q->admitted) {
            q->admitted = true;
            q->cached_tokens = start < q->n_prompt ? start : q->n_prompt;
        }
        wait_remove(s, seq);
        seq->status = LOOM_SEQ_RUNNING;
        s->running[s->n_running++] = seq;
        schedule_seq(s, seq, n, pos0, rows, &budget);
    }
}

void loom_scheduler_advance(struct loom_scheduler *s)
{
    int bs = s->block_size;
    for (int i = 0; i < s->n_scheduled; i++) {
        struct loom_seq *seq = s->scheduled[i];
        int start = seq->num_computed, n = seq->sched_tokens, np = seq->req->n_prompt;
        if (start < np) s->prompt_tokens_computed += (start + n < np ? start + n : np) - start;
        if (start + n < seq->n_tokens) s->num_prefill_chunks++;
        seq->num_computed = start + n;
        seq->sched_tokens = 0;
        if (!s->kv->prefix_caching) continue;
        int full = seq->num_computed / bs;
        ensure_hashes(seq, full, bs);
        for (int b = seq->n_registered; b < full; b++)
            loom_kv_cache_insert(s->kv, seq->block_table[b], seq->block_hashes[b], seq->tokens + (size_t)b * bs);
        if (full > seq->n_registered) seq->n_registered = full;
    }
}

/* ---------------------------------------------------------------------------------------------- */

void loom_scheduler_check(const struct loom_scheduler *s)
{
    const struct loom_kv_blocks *kv = s->kv;
    loom_kv_blocks_check(kv);
    int32_t *refs = loom_calloc((size_t)kv->num_blocks, sizeof(int32_t));
    LOOM_ASSERT(s->n_running <= s->cfg.max_num_seqs);
    for (int i = 0; i < s->n_running; i++) {
        const struct loom_seq *seq = s->running[i];
        LOOM_ASSERT(seq->status == LOOM_SEQ_RUNNING);
        LOOM_ASSERT(seq->num_computed < seq->n_tokens);
        LOOM_ASSERT(seq->n_blocks >= loom_blocks_for(seq->num_computed, s->block_size));
        LOOM_ASSERT(seq->n_blocks <= seq->cap_blocks);
        for (int b = 0; b < seq->n_blocks; b++) {
            int32_t id = seq->block_table[b];
            LOOM_ASSERT(id >= 0 && id < kv->num_blocks);
            refs[id]++;
        }
        for (int j = i + 1; j < s->n_running; j++) LOOM_ASSERT(s->running[j] != seq);
    }
    int n = 0;
    for (const struct loom_seq *seq = s->wait_head; seq; seq = seq->wnext) {
        LOOM_ASSERT(seq->status == LOOM_SEQ_WAITING && seq->n_blocks == 0 && seq->num_computed == 0);
        LOOM_ASSERT(!seq->wnext || !seq_before(s, seq->wnext, seq));
        LOOM_ASSERT(seq->wnext ? seq->wnext->wprev == seq : s->wait_tail == seq);
        LOOM_ASSERT(++n <= s->n_waiting);
    }
    LOOM_ASSERT(n == s->n_waiting);
    for (int id = 0; id < kv->num_blocks; id++) LOOM_ASSERT(refs[id] == kv->ref_cnt[id]);
    free(refs);
}
