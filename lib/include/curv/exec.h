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

#endif
