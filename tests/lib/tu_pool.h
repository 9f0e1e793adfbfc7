/* SPDX-License-Identifier: MIT */
/*
 * tu_pool - the simplest executor a caller could lend libcurv
 * (curv/exec.h), shared by test_exec.c and bench_kfac.c: for each batch
 * it starts workers - 1 threads, the calling thread is worker 0, and each
 * takes the next task from a shared counter. Starting threads per batch
 * costs tens of microseconds, small against K-FAC's per-layer phases.
 * Header-only (static functions), C11 atomics and POSIX threads.
 */
#ifndef TU_POOL_H
#define TU_POOL_H

#include <pthread.h>
#include <stdatomic.h>

#include "curv.h"

#define TU_POOL_MAX 64

struct tu_pool_job {
    size_t n;
    atomic_size_t next;
    curv_task_fn fn;
    void *arg;
};

struct tu_pool_thread {
    struct tu_pool_job *job;
    unsigned slot;
};

static void *tu_pool_main(void *p)
{
    struct tu_pool_thread *t = p;
    for (size_t i; (i = atomic_fetch_add(&t->job->next, 1)) < t->job->n;)
        t->job->fn(t->job->arg, i, t->slot);
    return NULL;
}

/* curv_executor.run with @ctx pointing to the worker count (at most
 * TU_POOL_MAX). A thread that cannot be started leaves its share to the
 * others: every task still runs before this returns. */
static void tu_pool_run(void *ctx, size_t n, curv_task_fn fn, void *arg)
{
    unsigned workers = *(const unsigned *)ctx;
    workers = workers < TU_POOL_MAX ? workers : TU_POOL_MAX;
    struct tu_pool_job job = {.n = n, .fn = fn, .arg = arg};
    atomic_init(&job.next, 0);
    pthread_t th[TU_POOL_MAX];
    struct tu_pool_thread pt[TU_POOL_MAX];
    int started[TU_POOL_MAX] = {0};
    for (unsigned w = 0; w < workers; w++)
        pt[w] = (struct tu_pool_thread){&job, w};
    for (unsigned w = 1; w < workers; w++)
        started[w] = pthread_create(&th[w], NULL, tu_pool_main, &pt[w]) == 0;
    tu_pool_main(&pt[0]);
    for (unsigned w = 1; w < workers; w++)
        if (started[w])
            pthread_join(th[w], NULL);
}

#endif
