/* SPDX-License-Identifier: MIT */
/*
 * The worker pool (pool.h says what it promises). One mutex guards the job
 * queue, the list of batches with tasks left and every batch's counters;
 * a task is a block's statistics, refresh or multiply (tens of µs to tens
 * of ms), so taking the lock twice per task costs nothing measurable, and
 * with every access to a batch under it a caller may return (and its batch,
 * on its stack, go) as soon as the last task is done.
 */
#include "http/pool.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* A batch published by run(), on its caller's stack. Each task runs on
 * the lowest slot of the batch's free at its start: the slots of one batch
 * are unique among its tasks running at once and below min(n, the pool's
 * size, 64). */
struct batch {
    curv_task_fn fn;
    void *arg;
    size_t n, next, done; /* tasks; the next to claim; those finished */
    uint64_t used;        /* the slots of tasks running */
    int background;       /* claimed by idle threads, never by another batch's caller */
    struct batch *link;   /* the list of batches with tasks left to claim */
};

#define FULL UINT64_MAX

struct curvd_pool {
    pthread_mutex_t mu;
    pthread_cond_t work; /* idle threads: a job, a batch, or stop */
    pthread_cond_t wait; /* callers waiting for their batch: a task done, or a batch to help */
    struct curvd_pool_job *head, *tail;
    struct batch *batches, *batches_tail;
    unsigned idle, waiting, busy;
    int stop;
    struct curvd_pool_stats stats;
    curv_executor ex, bg_ex;
    unsigned n;
    pthread_t *threads;
};

/* The pool the current thread belongs to. */
static _Thread_local const struct curvd_pool *self_pool;

/* Under the lock: claim the next task of @b; the batch leaves the list
 * with its last task. */
static size_t claim(struct curvd_pool *p, struct batch *b)
{
    size_t i = b->next++;
    if (b->next == b->n) {
        struct batch **pp = &p->batches, *prev = NULL;
        while (*pp != b) {
            prev = *pp;
            pp = &(*pp)->link;
        }
        *pp = b->link;
        if (p->batches_tail == b)
            p->batches_tail = prev;
    }
    return i;
}

/* Under the lock: the oldest batch with a task to claim and a free slot,
 * a request's before a background one's; for a caller waiting for its own
 * batch (@caller) never a background one, which could outlast its own
 * tasks by far and hold its reply. */
static struct batch *claimable(const struct curvd_pool *p, int caller)
{
    struct batch *bg = NULL;
    for (struct batch *b = p->batches; b; b = b->link) {
        if (b->used == FULL)
            continue;
        if (!b->background)
            return b;
        if (!bg && !caller)
            bg = b;
    }
    return bg;
}

/* Under the lock on entry and exit: claim a task of @b and run it, by its
 * caller (@own) or by a helper. */
static void run_one(struct curvd_pool *p, struct batch *b, int own)
{
    size_t i = claim(p, b);
    unsigned slot = (unsigned)__builtin_ctzll(~b->used);
    b->used |= (uint64_t)1 << slot;
    if (!own)
        p->stats.helped++;
    pthread_mutex_unlock(&p->mu);
    b->fn(b->arg, i, slot);
    pthread_mutex_lock(&p->mu);
    int was_full = b->used == FULL;
    b->used &= ~((uint64_t)1 << slot);
    b->done++;
    if (was_full && b->next < b->n) { /* a slot to claim again (pools over 64 threads) */
        pthread_cond_signal(&p->work);
        pthread_cond_broadcast(&p->wait);
    } else if (b->done == b->n && p->waiting) {
        pthread_cond_broadcast(&p->wait);
    }
}

static void busy_begin(struct curvd_pool *p)
{
    if (++p->busy > p->stats.max_busy)
        p->stats.max_busy = p->busy;
}

static void *thread_main(void *arg)
{
    struct curvd_pool *p = arg;
    self_pool = p;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        struct batch *b;
        if (p->head) {
            struct curvd_pool_job *job = p->head;
            if (!(p->head = job->next))
                p->tail = NULL;
            p->stats.jobs++;
            busy_begin(p);
            pthread_mutex_unlock(&p->mu);
            job->run(job); /* may publish batches, and submit jobs */
            pthread_mutex_lock(&p->mu);
            p->busy--;
        } else if ((b = claimable(p, 0))) {
            busy_begin(p);
            run_one(p, b, 0);
            p->busy--;
        } else if (p->stop) {
            break;
        } else {
            p->idle++;
            pthread_cond_wait(&p->work, &p->mu);
            p->idle--;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Publish a batch (@background: of work no request waits on) and work
 * on it until every task is done. */
static void run_batch(struct curvd_pool *p, size_t n, curv_task_fn fn, void *arg, int background)
{
    if (self_pool != p || n < 2 || p->n < 2) {
        pthread_mutex_lock(&p->mu);
        p->stats.serial++;
        pthread_mutex_unlock(&p->mu);
        for (size_t i = 0; i < n; i++)
            fn(arg, i, 0);
        return;
    }
    struct batch b = {.fn = fn, .arg = arg, .n = n, .background = background};
    pthread_mutex_lock(&p->mu);
    p->stats.batches++;
    p->stats.tasks += n;
    if (p->batches_tail)
        p->batches_tail->link = &b;
    else
        p->batches = &b;
    p->batches_tail = &b;
    /* Wake as many idle threads as there are tasks for others, and the
     * callers waiting for batches of their own, who may help this one. */
    for (size_t k = 0; k < n - 1 && k < p->idle; k++)
        pthread_cond_signal(&p->work);
    if (p->waiting)
        pthread_cond_broadcast(&p->wait);
    for (;;) {
        struct batch *o;
        if (b.next < b.n && b.used != FULL) {
            run_one(p, &b, 1);
        } else if (b.done == b.n) {
            break;
        } else if ((o = claimable(p, 1))) {
            /* Every task of ours is taken: help another batch meanwhile
             * (never a job, which could outlast our own tasks by far). */
            run_one(p, o, 0);
        } else {
            p->waiting++;
            pthread_cond_wait(&p->wait, &p->mu);
            p->waiting--;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

/* curv_executor.run of curvd_pool_executor and _background_executor. */
static void pool_run(void *ctx, size_t n, curv_task_fn fn, void *arg)
{
    run_batch(ctx, n, fn, arg, 0);
}

static void pool_run_background(void *ctx, size_t n, curv_task_fn fn, void *arg)
{
    run_batch(ctx, n, fn, arg, 1);
}

void curvd_pool_submit(struct curvd_pool *p, struct curvd_pool_job *job)
{
    pthread_mutex_lock(&p->mu);
    job->next = NULL;
    if (p->tail)
        p->tail->next = job;
    else
        p->head = job;
    p->tail = job;
    if (p->idle)
        pthread_cond_signal(&p->work);
    pthread_mutex_unlock(&p->mu);
}

static void stop_threads(struct curvd_pool *p, unsigned started)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < started; i++)
        pthread_join(p->threads[i], NULL);
}

struct curvd_pool *curvd_pool_new(unsigned workers, char *err, size_t errlen)
{
    struct curvd_pool *p = calloc(1, sizeof *p);
    if (p && !(p->threads = calloc(workers ? workers : 1, sizeof *p->threads))) {
        free(p);
        p = NULL;
    }
    if (!p || workers == 0) {
        snprintf(err, errlen, workers ? "out of memory" : "a pool needs at least one thread");
        if (p)
            free(p->threads);
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->wait, NULL);
    p->n = workers;
    p->ex = (curv_executor){.workers = workers < 64 ? workers : 64, .run = pool_run, .ctx = p};
    p->bg_ex = p->ex;
    p->bg_ex.run = pool_run_background;
    for (unsigned i = 0; i < workers; i++) {
        if (pthread_create(&p->threads[i], NULL, thread_main, p) != 0) {
            snprintf(err, errlen, "cannot start worker thread %u", i);
            stop_threads(p, i);
            p->n = i; /* joined */
            curvd_pool_free(p);
            return NULL;
        }
    }
    return p;
}

const curv_executor *curvd_pool_executor(const struct curvd_pool *p)
{
    return &p->ex;
}

const curv_executor *curvd_pool_background_executor(const struct curvd_pool *p)
{
    return &p->bg_ex;
}

unsigned curvd_pool_size(const struct curvd_pool *p)
{
    return p->n;
}

void curvd_pool_stats(struct curvd_pool *p, struct curvd_pool_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->stats;
    pthread_mutex_unlock(&p->mu);
}

void curvd_pool_free(struct curvd_pool *p)
{
    if (!p)
        return;
    if (!p->stop)
        stop_threads(p, p->n);
    pthread_cond_destroy(&p->wait);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p);
}
