/* test_scheduler_fuzz.c: the scheduler and the block pool driven by thousands of random request
 * streams (random prompt and output lengths, shared prefixes, n > 1, prompt logprobs, aborts,
 * priorities, pools small enough to force preemption), with no model: a shadow "KV memory" records
 * which token each slot holds, and every step checks that the context each scheduled sequence reads
 * (its computed tokens, through its block table) is its own tokens. Also checked after every step: the
 * pool's and the queues' invariants (ref counts equal block-table references), the token budget, the
 * sequence cap, progress of the oldest running sequence (no starvation); at the end every request has
 * finished and every block is free. */
#include "engine/scheduler.h"
#include "engine/sequence.h"
#include "test.h"

#include <stdint.h>

static uint64_t rng_state;
static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return n ? (uint32_t)(rng_state % n) : 0;
}

struct sim {
    struct loom_sched_config cfg;
    int num_blocks, block_size, max_model_len;
    bool prefix_caching;
    struct loom_kv_blocks kv;
    struct loom_scheduler s;
    uint64_t *mem;                /* [num_blocks * block_size] what each slot holds: the hash of the whole
                                   * prefix up to its token (K/V depend on all of it), 0 = never written */
    struct loom_req **reqs;
    int n_reqs, cap_reqs;
    int unfinished_reqs;
    int64_t steps, bad;
};

static int32_t base_prompt[4][300];

/* Stand-in for a token's K/V: a hash of the token and everything before it. */
static uint64_t prefix_step(uint64_t h, int32_t tok)
{
    h = (h ^ (uint64_t)(tok + 1)) * 0x100000001b3ULL;
    return h ^ (h >> 29) ^ 0x9e3779b97f4a7c15ULL;
}

static void add_request(struct sim *sim, int step)
{
    struct loom_request r = {0}; /* the scheduler reads n, max_tokens, priority and prompt_logprobs */
    struct loom_sampling_params *p = &r.params;
    p->n = rnd(5) == 0 ? 1 + rnd(4) : 1;
    p->max_tokens = 1 + rnd(rnd(4) == 0 ? 60 : 12);
    p->priority = (int)rnd(3);
    p->prompt_logprobs = rnd(8) == 0 ? (int)rnd(3) : -1;
    int len = 1 + rnd(rnd(3) == 0 ? sim->max_model_len - 1 : 40);
    if (len > sim->max_model_len - 1) len = sim->max_model_len - 1;
    int32_t prompt[512];
    int shared = rnd(2) ? (int)rnd(4) : -1, keep = shared >= 0 ? (int)rnd((uint32_t)len + 1) : 0;
    for (int i = 0; i < len; i++) prompt[i] = i < keep ? base_prompt[shared][i] : (int32_t)rnd(50);
    int cap = len + p->max_tokens < sim->max_model_len ? len + p->max_tokens : sim->max_model_len;
    struct loom_req *q = loom_req_create(&r, prompt, len, cap, sim->block_size, sim->prefix_caching, NULL);
    q->id = (uint64_t)sim->n_reqs + 1;
    q->t_arrival = step;
    if (sim->n_reqs == sim->cap_reqs) {
        sim->cap_reqs = sim->cap_reqs ? 2 * sim->cap_reqs : 64;
        sim->reqs = realloc(sim->reqs, (size_t)sim->cap_reqs * sizeof(*sim->reqs));
    }
    sim->reqs[sim->n_reqs++] = q;
    sim->unfinished_reqs++;
    for (int i = 0; i < q->n; i++) loom_scheduler_add(&sim->s, &q->seqs[i]);
}

static void finish(struct sim *sim, struct loom_seq *seq)
{
    loom_scheduler_remove(&sim->s, seq);
    if (--seq->req->n_unfinished == 0) sim->unfinished_reqs--;
}

static void abort_request(struct sim *sim, struct loom_req *q)
{
    for (int i = 0; i < q->n; i++)
        if (q->seqs[i].status != LOOM_SEQ_FINISHED) finish(sim, &q->seqs[i]);
}

/* One step: schedule, check, "run" (write the shadow memory), advance, sample, finish. */
static void step(struct sim *sim)
{
    struct loom_scheduler *s = &sim->s;
    int bs = sim->block_size;
    struct loom_seq *oldest = s->n_running ? s->running[0] : NULL;
    loom_scheduler_schedule(s);
    loom_scheduler_check(s);
    sim->steps++;
    if (loom_scheduler_num_unfinished(s) > 0 && s->n_scheduled == 0) {
        CHECK_MSG(0, "step %lld: %d sequences unfinished, none scheduled", (long long)sim->steps,
                  loom_scheduler_num_unfinished(s));
        sim->bad++;
        if (getenv("FUZZ_DEBUG")) {
            fprintf(stderr, "running %d waiting %d free %d/%d bs %d budget %d seqs %d rows %d preempt %lld\n", s->n_running,
                    s->n_waiting, sim->kv.num_free, sim->num_blocks, bs, sim->cfg.max_num_batched_tokens,
                    sim->cfg.max_num_seqs, sim->cfg.max_prompt_rows, (long long)s->num_preemptions);
            for (struct loom_seq *w = s->wait_head; w; w = w->wnext)
                fprintf(stderr, "  waiting req %llu idx %d n_tokens %d np %d plp %d/%d parent status %d\n",
                        (unsigned long long)w->req->id, w->index, w->n_tokens, w->req->n_prompt, w->req->plp_done,
                        w->req->params.prompt_logprobs, w->req->seqs[0].status);
        }
    }
    if (oldest && sim->cfg.policy == LOOM_SCHED_FCFS && oldest->status == LOOM_SEQ_RUNNING && oldest->sched_tokens == 0) {
        CHECK_MSG(0, "the oldest running sequence was not scheduled");
        sim->bad++;
    }
    int tokens = 0, rows = 0;
    for (int i = 0; i < s->n_scheduled; i++) {
        struct loom_seq *seq = s->scheduled[i];
        tokens += seq->sched_tokens;
        rows += seq->n_prompt_rows;
        /* the context the model would read: every computed position holds this sequence's prefix */
        uint64_t h = 0;
        for (int p = 0; p < seq->num_computed; p++) {
            int32_t slot = seq->block_table[p / bs] * bs + p % bs;
            h = prefix_step(h, seq->tokens[p]);
            if (sim->mem[slot] != h) {
                if (sim->bad++ < 5)
                    CHECK_MSG(0, "req %llu sample %d position %d: slot %d holds another prefix",
                              (unsigned long long)seq->req->id, seq->index, p, slot);
            }
        }
        if (seq->num_computed + seq->sched_tokens > seq->n_tokens || seq->sched_tokens < 1) sim->bad++;
    }
    if (tokens > sim->cfg.max_num_batched_tokens || rows > sim->cfg.max_prompt_rows) sim->bad++;
    if (s->n_running > sim->cfg.max_num_seqs) sim->bad++;
    /* the forward pass: write this step's K/V slots (all of them before anyone "attends") */
    for (int i = 0; i < s->n_scheduled; i++) {
        struct loom_seq *seq = s->scheduled[i];
        uint64_t h = 0;
        for (int p = 0; p < seq->num_computed + seq->sched_tokens; p++) {
            h = prefix_step(h, seq->tokens[p]);
            if (p >= seq->num_computed) sim->mem[seq->block_table[p / bs] * bs + p % bs] = h;
        }
    }
    /* which sequences sample: those that computed all their tokens */
    struct loom_seq *samplers[4096];
    int n_samplers = 0;
    for (int i = 0; i < s->n_scheduled; i++) {
        struct loom_seq *seq = s->scheduled[i];
        struct loom_req *q = seq->req;
        if (seq->n_prompt_rows > 0) {
            if (seq->prompt_pos0 != q->plp_done) sim->bad++;
            q->plp_done = seq->prompt_pos0 + seq->n_prompt_rows;
        }
        if (seq->num_computed + seq->sched_tokens == seq->n_tokens) samplers[n_samplers++] = seq;
    }
    loom_scheduler_advance(s);
    for (int i = 0; i < n_samplers; i++) {
        struct loom_seq *seq = samplers[i];
        struct loom_req *q = seq->req;
        if (seq->index == 0 && q->params.prompt_logprobs >= 0 && q->plp_done != q->n_prompt - 1) {
            CHECK_MSG(0, "req %llu samples before its prompt logprobs are done (%d of %d)", (unsigned long long)q->id,
                      q->plp_done, q->n_prompt - 1);
            sim->bad++;
        }
        seq->tokens[seq->n_tokens++] = (int32_t)rnd(50);
        if (seq->n_tokens >= seq->cap_tokens || rnd(40) == 0) finish(sim, seq);
    }
}

static int run_stream(uint64_t seed, int *n_preempt, int *n_hits)
{
    rng_state = seed * 0x9e3779b97f4a7c15ULL + 1;
    struct sim sim = {0};
    sim.block_size = 1 + rnd(8);
    sim.num_blocks = 4 + rnd(60);
    sim.prefix_caching = rnd(3) != 0;
    sim.max_model_len = sim.num_blocks * sim.block_size;
    if (sim.max_model_len > 300) sim.max_model_len = 300;
    sim.cfg.max_num_batched_tokens = 1 + rnd(rnd(2) ? 16 : 200);
    sim.cfg.max_num_seqs = 1 + rnd(sim.cfg.max_num_batched_tokens < 32 ? sim.cfg.max_num_batched_tokens : 32);
    sim.cfg.max_prompt_rows = 1 + rnd(16);
    sim.cfg.policy = rnd(3) == 0 ? LOOM_SCHED_PRIORITY : LOOM_SCHED_FCFS;
    CHECK_EQ_INT(loom_kv_blocks_init(&sim.kv, sim.num_blocks, sim.block_size, sim.prefix_caching), 0);
    CHECK_EQ_INT(loom_scheduler_init(&sim.s, &sim.cfg, &sim.kv), 0);
    sim.mem = calloc((size_t)sim.num_blocks * sim.block_size, sizeof(uint64_t));

    int n_total = 5 + rnd(40);
    int step_no = 0;
    while (sim.n_reqs < n_total || sim.unfinished_reqs > 0) {
        if (sim.n_reqs < n_total && rnd(3) == 0) {
            int k = 1 + rnd(4);
            for (int i = 0; i < k && sim.n_reqs < n_total; i++) add_request(&sim, step_no);
        }
        if (sim.n_reqs && rnd(25) == 0) {
            struct loom_req *q = sim.reqs[rnd(sim.n_reqs)];
            if (q->n_unfinished) abort_request(&sim, q);
        }
        step(&sim);
        step_no++;
        if (step_no > 200000 || sim.bad > 20) {
            CHECK_MSG(0, "stream %llu: stuck or broken after %d steps", (unsigned long long)seed, step_no);
            break;
        }
    }
    /* everything finished, every block free, nothing referenced */
    CHECK_EQ_INT(loom_scheduler_num_unfinished(&sim.s), 0);
    CHECK_EQ_INT(sim.kv.num_free, sim.num_blocks);
    for (int i = 0; i < sim.n_reqs; i++)
        for (int k = 0; k < sim.reqs[i]->n; k++) CHECK(sim.reqs[i]->seqs[k].status == LOOM_SEQ_FINISHED);
    loom_scheduler_check(&sim.s);
    *n_preempt += (int)sim.s.num_preemptions;
    *n_hits += (int)sim.s.prefix_cache_hits;
    int bad = (int)sim.bad;
    for (int i = 0; i < sim.n_reqs; i++) loom_req_free(sim.reqs[i]);
    free(sim.reqs);
    free(sim.mem);
    loom_scheduler_free(&sim.s);
    loom_kv_blocks_free(&sim.kv);
    return bad;
}

int main(void)
{
    rng_state = 42;
    for (int b = 0; b < 4; b++)
        for (int i = 0; i < 300; i++) base_prompt[b][i] = (int32_t)rnd(50);
    int bad = 0, preempt = 0, hits = 0, streams = 3000;
    for (int i = 0; i < streams; i++) bad += run_stream((uint64_t)i + 1, &preempt, &hits);
    CHECK_EQ_INT(bad, 0);
    /* the streams must have exercised what they are meant to */
    CHECK(preempt > 1000);
    CHECK(hits > 1000);
    printf("%d streams, %d preemptions, %d prefix-cache hit tokens\n", streams, preempt, hits);
    return test_report();
}
