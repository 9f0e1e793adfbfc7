/* SPDX-License-Identifier: MIT */
/*
 * Group commit: threads that each need the same costly operation (a
 * durable SQLite transaction) hand their item to a batcher; one of them,
 * the leader, runs the operation once for every item queued so far while
 * the others wait, then wakes them. Items that arrive during a run form the
 * next batch, so under load one fsync covers many steps, and alone a thread
 * runs its own item at once (no timer, no added latency).
 */
#ifndef CURVD_BATCH_H
#define CURVD_BATCH_H

#include <stddef.h>

/* An item's link; embed it in the caller's item. */
struct curvd_batch_item {
    struct curvd_batch_item *next;
    int done;
};

/* Runs @n items (in arrival order) in one go; called by one thread at a time. */
typedef void (*curvd_batch_fn)(void *ctx, struct curvd_batch_item **items, size_t n);

struct curvd_batcher;

/* curvd_batcher_new - at most @max_items per run (>= 1); NULL when out of memory. */
struct curvd_batcher *curvd_batcher_new(size_t max_items, curvd_batch_fn fn, void *ctx);

/* curvd_batcher_free - no thread may be inside curvd_batcher_run; NULL is a no-op. */
void curvd_batcher_free(struct curvd_batcher *b);

/* curvd_batcher_run - queue @it and return once a run containing it has ended. */
void curvd_batcher_run(struct curvd_batcher *b, struct curvd_batch_item *it);

/* curvd_batcher_waiting - items queued and not yet taken by a run. */
size_t curvd_batcher_waiting(struct curvd_batcher *b);

#endif
