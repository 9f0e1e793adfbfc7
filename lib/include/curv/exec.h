/* SPDX-License-Identifier: MIT */
/*
 * curv/exec.h - threads for a step's independent work.
 *
 * libcurv starts no threads. A caller that has some (a server's workers, a
 * trainer's pool) lends them through a curv_executor: the library hands it
 * a batch of independent tasks and the executor runs them, in any order
 * and on any of its threads, and returns when all are done. K-FAC runs its
 * per-layer work this way (factor updates, refreshes, the forming of the
 * damped inverses and the multiply); the results are bit for bit those of
 * the serial run. Every task calls BLAS, which must then run on one thread
 * (openblas_set_num_threads(1) or OPENBLAS_NUM_THREADS=1): the executor's
 * threads are the step's only compute threads.
 */
#ifndef CURV_EXEC_H
#define CURV_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "curv/opt.h"
#include "curv/status.h"

/* curv_task_fn - task @task (0 <= task < n) of a batch, run on the slot
 * @worker (0 <= worker < the executor's workers) of the thread running it. */
typedef void (*curv_task_fn)(void *arg, size_t task, unsigned worker);

/*
 * curv_executor - @run(@ctx, n, fn, arg) calls fn(arg, task, worker) once
 * for each task in [0, n) and returns when every call has returned. Calls
 * may run concurrently on up to @workers threads, each with its own worker
 * slot: two calls that run at the same time never share a worker value.
 * The library calls @run only from inside its own calls on the object it
 * was given to (curv_opt_step, curv_opt_resume), on the caller's thread.
 */
typedef struct curv_executor {
    unsigned workers;
    void (*run)(void *ctx, size_t n, curv_task_fn fn, void *arg);
    void *ctx;
} curv_executor;

/*
 * curv_opt_set_executor - run @o's independent per-layer work on @ex
 * (copied; its ctx must outlive its use by @o), or serially on the calling
 * thread again when @ex is NULL. Kinds other than K-FAC run serially and
 * accept any executor. Scratch memory for each worker is allocated here.
 * It may be called at any time, also between a step and its resume.
 * Return CURV_OK; CURV_E_INVALID (@o NULL, zero workers or no run
 * function; @o unchanged), CURV_E_NOMEM (@o unchanged).
 * Ownership: @ex is copied; @ex->ctx is borrowed.
 * Thread-safety: as every call on @o, one thread at a time.
 */
CURV_API curv_status curv_opt_set_executor(curv_opt *o, const curv_executor *ex, curv_error *err);

/*
 * Refreshes off the step path. A K-FAC optimizer with max_staleness = s
 * >= 1 defers a periodic refresh of its inverses from step k to step
 * k + s: step k commits and leaves a curv_refresh holding a copy of its
 * factors; steps k+1 ... k+s-1 use the previous inverses; step k + s
 * applies the refresh's decompositions, computing them itself when nobody
 * has. Which refresh a step applies depends on k and s only, so results
 * are bit for bit the same whoever computes it and when.
 *
 * curv_opt_refresh - the refresh @o holds and has not applied yet, or
 * NULL (also for other kinds). Owned by @o: valid until the step that
 * applies it completes (curv_refresh_due) or @o is freed or replaced.
 *
 * curv_refresh_claim - 1 the first time it is called on @r (the caller now
 * may run it once), 0 after; NULL gives 0. Call it on @o's thread.
 *
 * curv_refresh_run - compute @r's decompositions, on any thread (BLAS on
 * one thread, as for executors), while @o goes on stepping, saving (a saved
 * state holds the snapshot, not the results) or being reconfigured. It
 * reads only @r. The claimer must let it return before @o's step number
 * @due (curv_opt_steps(o) + 1 == due) starts and before @o is freed.
 *
 * curv_refresh_due - the step that applies @r (0 for NULL).
 */
typedef struct curv_refresh curv_refresh;
CURV_API curv_refresh *curv_opt_refresh(curv_opt *o);
CURV_API int curv_refresh_claim(curv_refresh *r);
CURV_API void curv_refresh_run(curv_refresh *r);
CURV_API uint64_t curv_refresh_due(const curv_refresh *r);

#endif
