/* SPDX-License-Identifier: MIT */
/*
 * Group commit: items that each need the same costly operation (a durable
 * SQLite transaction) are queued to a batcher, whose own thread runs the
 * operation once for every item queued so far and then tells each item it
 * is done. Items that arrive during a run form the next run, so under load
 * one transaction (and one fsync) covers many steps, and an item alone
 * runs at once (no timer). A caller either waits for its item
 * (curvd_batcher_run) or goes on and is called back (curvd_batcher_submit):
 * a worker thread that hands its commit over is free for the next request
 * while the disk works, with no thread parked per waiting step.
 */
#ifndef CURVD_BATCH_H
#define CURVD_BATCH_H

#include <pthread.h>
#include <stddef.h>

struct curvd_batch_item;

/* Called on the batcher's thread once the run holding @it has ended. */
typedef void (*curvd_batch_done_fn)(struct curvd_batch_item *it);

/* An item's link; embed it in the caller's item. */
struct curvd_batch_item {
    struct curvd_batch_item *next;
    curvd_batch_done_fn done;
    void *waiter; /* curvd_batcher_run()'s */
};

/* Runs @n items (in arrival order) in one go, on the batcher's thread. */
typedef void (*curvd_batch_fn)(void *ctx, struct curvd_batch_item **items, size_t n);

struct curvd_batcher;

/* curvd_batcher_new - at most @max_items per run (>= 1); starts the
 * batcher's thread. NULL when out of memory or out of threads. */
struct curvd_batcher *curvd_batcher_new(size_t max_items, curvd_batch_fn fn, void *ctx);

/* curvd_batcher_free - run what is queued, then stop the thread; no
 * thread may submit any more. NULL is a no-op. */
void curvd_batcher_free(struct curvd_batcher *b);

/* curvd_batcher_submit - queue @it and return at once; @done (not NULL)
 * runs on the batcher's thread after the run that held @it. */
void curvd_batcher_submit(struct curvd_batcher *b, struct curvd_batch_item *it,
                          curvd_batch_done_fn done);

/* curvd_batcher_run - queue @it and return once a run holding it has ended.
 * Not from the batcher's own thread (a done callback). */
void curvd_batcher_run(struct curvd_batcher *b, struct curvd_batch_item *it);

/* The same in two calls: curvd_batcher_start queues @it and returns at
 * once, curvd_batcher_wait returns once its run has ended; @w (the
 * caller's, beside @it) is valid from the one to the other. */
struct curvd_batch_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};
void curvd_batcher_start(struct curvd_batcher *b, struct curvd_batch_item *it,
                         struct curvd_batch_wait *w);
void curvd_batcher_wait(struct curvd_batch_wait *w);

/* curvd_batcher_waiting - items queued and not yet taken by a run. */
size_t curvd_batcher_waiting(struct curvd_batcher *b);

#endif
