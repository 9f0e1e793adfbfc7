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
 * was given to (curv_opt_step, curv_opt_resume, and curv_opt_settle or
 * any call that settles first), on the thread making that call.
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
 * curv_refresh_run_on - the same, its blocks' decompositions as a batch of
 * independent tasks on @ex (NULL: curv_refresh_run), e.g. the pool whose
 * thread runs it, so that idle workers help: bit for bit the same result.
 *
 * curv_refresh_due - the step that applies @r (0 for NULL).
 */
typedef struct curv_refresh curv_refresh;
CURV_API curv_refresh *curv_opt_refresh(curv_opt *o);
CURV_API int curv_refresh_claim(curv_refresh *r);
CURV_API void curv_refresh_run(curv_refresh *r);
CURV_API void curv_refresh_run_on(curv_refresh *r, const curv_executor *ex);
CURV_API uint64_t curv_refresh_due(const curv_refresh *r);

/*
 * A step's statistics off the step path. With max_staleness = s >= 1 in
 * simple mode, a step whose every Kronecker block has inverses and whose
 * periodic refresh (if due) is deferred never uses its own statistics:
 * the multiply applies the inverses it has, a deferred refresh due now
 * installs an earlier step's factors, and the snapshot of one deferred
 * from now is taken after the fold. So the fold (the factors' SYRKs and
 * EMA) may run after the step returns, and the update, reports and saved
 * states are bit for bit those of a step that folds them itself; only a
 * failure of the fold is counted one step late (inverse_failures of the
 * next step's report).
 *
 * curv_opt_defer_stats - with @on, let @o's steps that qualify return
 * with their statistics pending (not a hyperparameter: not saved, off in
 * a new or loaded optimizer). They qualify in simple mode with 0 <
 * max_staleness < inv_interval, inverse = blockdiag, past step 3, when
 * every Kronecker block has inverses, a periodic refresh due at the step
 * is deferred, and every block sent statistics has failed fewer than
 * max_failures times in a row (so that a failure of the fold is
 * tolerated, as the step would have tolerated it); the others fold in the
 * step. Other kinds accept the call and ignore it. CURV_E_INVALID (NULL).
 *
 * Contract: after a step that returns with statistics pending, @o holds
 * BORROWED pointers to the step input's layer statistics (its acts and
 * signals, used in place: float64 input, and float input where the kind
 * reads floats (K-FAC fp32, block-diagonal); other float input was
 * converted into @o's buffers): the caller must not free or change them until
 * curv_opt_settle(@o) has returned. Every other call that reads or
 * changes @o's state settles first (curv_opt_step, _resume, _cancel,
 * _save, _save_parts, _reconfigure, _set_executor, _defer_stats,
 * curv_opt_refresh), so a forgotten settle is never wrong, only slow;
 * curv_opt_free drops the fold (nobody could see it). curv_opt_report
 * (read right after the step, for its reply), _steps, _pending and the
 * parameter getters read nothing the fold changes and do not settle.
 *
 * curv_opt_settle - fold the statistics the last step left into the
 * factors (on @o's executor, from the calling thread: any thread, as
 * long as no other call on @o runs at the same time), take the snapshot
 * of the refresh that step deferred, and write the books. A fold that
 * fails (a factor not finite: CURV_E_NUMERIC; out of memory) keeps the
 * old factors and counts a tolerated failure. A no-op when nothing is
 * pending or @o is NULL.
 *
 * curv_opt_stats_pending - 1 while a fold awaits curv_opt_settle.
 */
CURV_API curv_status curv_opt_defer_stats(curv_opt *o, int on, curv_error *err);
CURV_API void curv_opt_settle(curv_opt *o);
CURV_API int curv_opt_stats_pending(const curv_opt *o);

#endif
