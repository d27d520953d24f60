/*
 * threadpool.h: a persistent pool of worker threads with a low-overhead parallel-for, for the CPU
 * backend's kernels. The calling thread is worker 0 and takes part in every job, so a pool of
 * n threads starts n - 1 of its own.
 *
 * Between jobs the workers spin for a short while (a new job is picked up within about a
 * microsecond), then sleep on a condition variable; one dispatch costs microseconds either way.
 * Jobs are not reentrant: one caller at a time submits, and a job must not submit another.
 * The pool does not own memory for the jobs and never allocates after creation.
 */
#ifndef LOOM_CORE_THREADPOOL_H
#define LOOM_CORE_THREADPOOL_H

#include <stdint.h>

struct loom_threadpool;

/* n_threads: total threads including the caller; 0 = all online cores. Aborts if threads cannot start. */
struct loom_threadpool *loom_threadpool_create(int n_threads);
void loom_threadpool_free(struct loom_threadpool *tp);
int loom_threadpool_size(const struct loom_threadpool *tp);

/* fn(arg, ith, nth) runs once on each of the pool's nth threads (ith = 0 on the caller); returns when
 * all have finished. */
typedef void (*loom_thread_fn)(void *arg, int ith, int nth);
void loom_threadpool_run(struct loom_threadpool *tp, loom_thread_fn fn, void *arg);

/* Calls fn(arg, begin, end, ith) over [0, n) in chunks of `grain` items (the last may be shorter),
 * handed out dynamically to the threads; returns when all chunks are done. grain <= 0: about
 * n / (4 * threads). With n <= grain (or one thread) it runs inline on the caller, and so it does
 * for a while after a worker was found descheduled in the middle of a chunk (see threadpool.c). */
typedef void (*loom_range_fn)(void *arg, int64_t begin, int64_t end, int ith);
void loom_parallel_for(struct loom_threadpool *tp, int64_t n, int64_t grain, loom_range_fn fn, void *arg);

/* How many times parallel_for found a worker descheduled while it held a chunk (the caller waited
 * for it) and so ran on the caller alone for a while: the sign of a machine shared with other work. */
int64_t loom_threadpool_solo_windows(const struct loom_threadpool *tp);

/* Online CPU cores. */
int loom_cpu_count(void);

#endif
