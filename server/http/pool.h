/* SPDX-License-Identifier: MIT */
/*
 * The worker pool: the daemon's compute threads. Its threads run heavy
 * requests (jobs, first in, first out) and, when they have none, help run
 * the task batches that a step publishes through the pool's curv_executor
 * (curv/exec.h), so that a lone K-FAC session gets every worker while many
 * sessions each keep theirs: the threads that compute are the pool's
 * threads and no others, never more than its size (BLAS runs on one
 * thread, server/main.c). Transport-free: http.c hands it suspended
 * requests as jobs; tests hand it anything.
 *
 * Priorities. An idle thread takes the oldest queued job first, then a
 * task of the oldest batch with tasks left: under load every thread is
 * busy with a request of its own and a step runs its batches on its own
 * thread, with no handing over; when threads idle they shorten the steps
 * in flight. A thread that runs a batch (run) claims that batch's tasks
 * itself, so a batch always completes even when every other thread is
 * busy; once all its tasks are claimed it helps other batches while it
 * waits for its own, but never starts a job (its step is still running).
 */
#ifndef CURVD_POOL_H
#define CURVD_POOL_H

#include <stddef.h>

#include "curv.h"

/* A unit of work queued on the pool; embed it and recover the container
 * in @run. */
struct curvd_pool_job {
    void (*run)(struct curvd_pool_job *job);
    struct curvd_pool_job *next; /* the pool's */
};

struct curvd_pool;

/* What a pool has done, for tests and benchmarks. */
struct curvd_pool_stats {
    unsigned long long jobs;    /* jobs run */
    unsigned long long batches; /* batches published (run of n > 1 tasks on a pool thread) */
    unsigned long long tasks;   /* tasks of published batches */
    unsigned long long helped;  /* of those, run by a thread other than the batch's caller */
    unsigned long long serial;  /* run calls that ran on the calling thread alone */
    unsigned max_busy;          /* the most threads busy at once (jobs and tasks) */
};

/*
 * curvd_pool_new - start @workers (>= 1) threads. Returns the pool, or
 * NULL with @err set (no thread is left running).
 * Ownership: the caller frees it with curvd_pool_free().
 */
struct curvd_pool *curvd_pool_new(unsigned workers, char *err, size_t errlen);

/* curvd_pool_submit - queue @job; a thread of the pool will call
 * job->run(job). Any thread may submit, also a job of the pool itself.
 * Ownership: @job is borrowed until its run is called. */
void curvd_pool_submit(struct curvd_pool *p, struct curvd_pool_job *job);

/*
 * curvd_pool_executor - the executor that lends @p's threads (ctx = @p).
 * Its run called on a thread of @p publishes the batch to the idle
 * threads and works on it too; called on any other thread (a connection
 * thread, another pool's) it runs every task there with worker 0, since
 * only the pool's threads may compute. Worker slots are numbered per
 * batch: each task runs on the lowest slot that no running task of its
 * batch holds, so a batch of n tasks uses slots below min(n, the pool's
 * size, 64), and @workers is min(the pool's size, 64). A lender that
 * knows its batches are smaller (K-FAC: one task per block) may lend a
 * copy with a smaller @workers and save per-worker scratch. A task must
 * not call run itself with work that uses its slot's scratch: nested
 * tasks are numbered in their own batch.
 * Ownership: borrowed; valid until curvd_pool_free(@p), after which the
 * optimizers it was lent to must not step.
 */
const curv_executor *curvd_pool_executor(const struct curvd_pool *p);

/*
 * curvd_pool_background_executor - the same for work no request waits on
 * (a session's background refresh): its batches are helped by idle
 * threads only after every request's batch, and never by the caller of
 * another batch waiting for its own tasks, whose reply must not wait
 * behind an eigendecomposition.
 */
const curv_executor *curvd_pool_background_executor(const struct curvd_pool *p);

/* curvd_pool_size - the number of threads. */
unsigned curvd_pool_size(const struct curvd_pool *p);

/* curvd_pool_stats - a snapshot of what @p has done. */
void curvd_pool_stats(struct curvd_pool *p, struct curvd_pool_stats *out);

/* curvd_pool_free - run the jobs still queued, wait for every thread to
 * finish, release @p. NULL is a no-op. Must not be called from a thread of
 * the pool. */
void curvd_pool_free(struct curvd_pool *p);

#endif
