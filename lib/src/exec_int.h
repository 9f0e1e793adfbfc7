/* SPDX-License-Identifier: MIT */
/* Running a batch of independent tasks on a caller's executor. */
#ifndef CURV_EXEC_INT_H
#define CURV_EXEC_INT_H

#include "internal.h"

/*
 * curv__exec_run - fn(arg, task, worker) for each task in [0, n): through
 * @ex when it has two workers or more and there are two tasks or more,
 * else in order on the calling thread with worker 0. Tasks must not
 * depend on each other or on their order.
 */
void curv__exec_run(const curv_executor *ex, size_t n, curv_task_fn fn, void *arg);

#endif
