/*
 * threadpool.c: persistent workers, one atomic `state` word to publish jobs, counters to join.
 *
 * state = generation * 2 + closed. Publishing: the caller stores the job (fn, arg, mode), then
 * state = (gen + 1) * 2 (seq_cst). A worker spins on state for SPIN_SECONDS, then announces itself
 * in `n_sleeping` and sleeps on the condvar; the caller takes the mutex to broadcast only when
 * someone sleeps. Both sides do a seq_cst write to their own word before reading the other's, so
 * a wake-up is never lost (Dekker's argument).
 *
 * Joining. loom_threadpool_run: every worker must run the job, the caller waits for `done`.
 * loom_parallel_for: chunks are claimed with an atomic counter, so when the caller finds none left
 * it closes the job (sets the closed bit) and waits only for workers inside it (`active`). A worker
 * increments `active` before it reads state, and runs nothing once it sees the bit, so a worker
 * that the OS descheduled before claiming a chunk never holds the caller up. One descheduled while
 * holding a chunk does (until the OS runs it again, milliseconds): when the caller waited long for
 * one, parallel_for runs on the caller alone for SOLO_SECONDS, then tries the workers again.
 * It does not pin threads to cores and does not allocate after creation.
 */
#include "core/threadpool.h"
#include "core/error.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_SECONDS 2e-3   /* how long an idle worker spins before sleeping */
#define LATE_SECONDS 200e-6 /* a parallel_for whose caller waited this long for workers, and longer */
#define LATE_FRACTION 0.5   /* than this share of its own work, found a worker descheduled */
#define SOLO_SECONDS 50e-3  /* then parallel_for runs on the caller alone this long before trying again */

struct worker_arg {
    struct loom_threadpool *tp;
    int ith;
};

struct loom_threadpool {
    int n; /* threads including the caller */
    pthread_t *threads;
    struct worker_arg *args;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t state; /* generation * 2 + closed bit */
    _Atomic int done;       /* workers (not the caller) finished with the current run() job */
    _Atomic int active;     /* workers inside the current job */
    _Atomic int n_sleeping; /* workers waiting on cv */
    _Atomic bool stop;
    loom_thread_fn fn; /* the current job; written before state is bumped */
    void *arg;
    bool must_join; /* run(): every worker takes part; parallel_for: whoever comes */
    double solo_until; /* caller only: monotonic seconds until which parallel_for runs inline */
    int64_t n_solo_windows; /* times a late worker switched parallel_for to the caller alone */
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int loom_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c > 0) return c;
    }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c > 0 ? (int)c : 1;
}

static void *worker_main(void *p)
{
    struct worker_arg *wa = p;
    struct loom_threadpool *tp = wa->tp;
    uint64_t seen = 0; /* last generation handled (or skipped) */
    for (;;) {
        double spin_start = 0;
        unsigned spins = 0;
        while ((atomic_load_explicit(&tp->state, memory_order_acquire) >> 1) == seen) {
            if (atomic_load_explicit(&tp->stop, memory_order_relaxed)) return NULL;
            cpu_relax();
            if ((++spins & 255) != 0) continue;
            double t = now_s();
            if (spin_start == 0) spin_start = t;
            if (t - spin_start < SPIN_SECONDS) continue;
            pthread_mutex_lock(&tp->mu);
            atomic_fetch_add(&tp->n_sleeping, 1);
            while ((atomic_load(&tp->state) >> 1) == seen && !atomic_load(&tp->stop)) pthread_cond_wait(&tp->cv, &tp->mu);
            atomic_fetch_sub(&tp->n_sleeping, 1);
            pthread_mutex_unlock(&tp->mu);
            spin_start = 0;
        }
        if (atomic_load(&tp->stop)) return NULL;
        atomic_fetch_add(&tp->active, 1); /* seq_cst, before reading state (see the header) */
        uint64_t st = atomic_load(&tp->state);
        if (!(st & 1) && (st >> 1) != seen) {
            bool join = tp->must_join;
            tp->fn(tp->arg, wa->ith, tp->n);
            if (join) atomic_fetch_add_explicit(&tp->done, 1, memory_order_release);
        }
        seen = st >> 1;
        atomic_fetch_sub_explicit(&tp->active, 1, memory_order_release);
    }
}

struct loom_threadpool *loom_threadpool_create(int n_threads)
{
    if (n_threads <= 0) n_threads = loom_cpu_count();
    struct loom_threadpool *tp = loom_calloc(1, sizeof(*tp));
    tp->n = n_threads;
    pthread_mutex_init(&tp->mu, NULL);
    pthread_cond_init(&tp->cv, NULL);
    atomic_init(&tp->state, 0);
    atomic_init(&tp->done, 0);
    atomic_init(&tp->active, 0);
    atomic_init(&tp->n_sleeping, 0);
    atomic_init(&tp->stop, false);
    tp->threads = loom_calloc((size_t)n_threads, sizeof(pthread_t));
    tp->args = loom_calloc((size_t)n_threads, sizeof(struct worker_arg));
    for (int i = 1; i < n_threads; i++) {
        tp->args[i].tp = tp;
        tp->args[i].ith = i;
        if (pthread_create(&tp->threads[i], NULL, worker_main, &tp->args[i]) != 0)
            LOOM_DIE("cannot start thread %d of %d", i, n_threads);
    }
    return tp;
}

void loom_threadpool_free(struct loom_threadpool *tp)
{
    if (!tp) return;
    pthread_mutex_lock(&tp->mu);
    atomic_store(&tp->stop, true);
    pthread_cond_broadcast(&tp->cv);
    pthread_mutex_unlock(&tp->mu);
    for (int i = 1; i < tp->n; i++) pthread_join(tp->threads[i], NULL);
    pthread_mutex_destroy(&tp->mu);
    pthread_cond_destroy(&tp->cv);
    free(tp->threads);
    free(tp->args);
    free(tp);
}

int loom_threadpool_size(const struct loom_threadpool *tp)
{
    return tp ? tp->n : 1;
}

static void publish(struct loom_threadpool *tp, loom_thread_fn fn, void *arg, bool must_join)
{
    tp->fn = fn;
    tp->arg = arg;
    tp->must_join = must_join;
    atomic_store_explicit(&tp->done, 0, memory_order_relaxed);
    uint64_t gen = atomic_load_explicit(&tp->state, memory_order_relaxed) >> 1;
    atomic_store(&tp->state, (gen + 1) << 1); /* seq_cst: publishes fn/arg/done, open */
    if (atomic_load(&tp->n_sleeping) > 0) {
        pthread_mutex_lock(&tp->mu);
        pthread_cond_broadcast(&tp->cv);
        pthread_mutex_unlock(&tp->mu);
    }
}

static void wait_until(_Atomic int *counter, int value, bool less_or_equal)
{
    unsigned spins = 0;
    for (;;) {
        int v = atomic_load_explicit(counter, memory_order_acquire);
        if (less_or_equal ? v <= value : v >= value) return;
        if (++spins < 4096) cpu_relax();
        else sched_yield();
    }
}

void loom_threadpool_run(struct loom_threadpool *tp, loom_thread_fn fn, void *arg)
{
    if (!tp || tp->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    publish(tp, fn, arg, true);
    fn(arg, 0, tp->n);
    wait_until(&tp->done, tp->n - 1, false);
    atomic_fetch_or(&tp->state, 1);
    wait_until(&tp->active, 0, true);
}

struct pfor_job {
    loom_range_fn fn;
    void *arg;
    int64_t n, grain;
    _Atomic int64_t next;
};

static void pfor_worker(void *p, int ith, int nth)
{
    struct pfor_job *j = p;
    (void)nth;
    for (;;) {
        int64_t b = atomic_fetch_add_explicit(&j->next, j->grain, memory_order_relaxed);
        if (b >= j->n) break;
        int64_t e = b + j->grain < j->n ? b + j->grain : j->n;
        j->fn(j->arg, b, e, ith);
    }
}

void loom_parallel_for(struct loom_threadpool *tp, int64_t n, int64_t grain, loom_range_fn fn, void *arg)
{
    if (n <= 0) return;
    int nth = loom_threadpool_size(tp);
    if (grain <= 0) {
        grain = n / (4 * (int64_t)nth);
        if (grain < 1) grain = 1;
    }
    if (nth == 1 || n <= grain) {
        fn(arg, 0, n, 0);
        return;
    }
    double t0 = now_s();
    if (t0 < tp->solo_until) { /* a worker was descheduled recently: the caller alone is faster */
        fn(arg, 0, n, 0);
        return;
    }
    struct pfor_job j = {fn, arg, n, grain, 0};
    atomic_init(&j.next, 0);
    publish(tp, pfor_worker, &j, false);
    pfor_worker(&j, 0, nth); /* returns when no chunk is left to claim */
    double t1 = now_s();
    atomic_fetch_or(&tp->state, 1); /* workers arriving from now on run nothing */
    wait_until(&tp->active, 0, true); /* those inside finish their chunks */
    double t2 = now_s();
    /* A worker that the OS took off its core (another process wants it) holds its chunk until it comes
     * back, milliseconds later, and the caller waits: on a loaded machine that made 2 threads slower
     * than 1. Chunks are a small share of a job, so a wait of half the caller's own work means that. */
    if (t2 - t1 > LATE_SECONDS && t2 - t1 > LATE_FRACTION * (t1 - t0)) {
        tp->solo_until = t2 + SOLO_SECONDS;
        tp->n_solo_windows++;
    }
}

int64_t loom_threadpool_solo_windows(const struct loom_threadpool *tp)
{
    return tp ? tp->n_solo_windows : 0;
}
