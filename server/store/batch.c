/* SPDX-License-Identifier: MIT */
/* Group commit on a thread of its own; the model is in batch.h. */
#include "store/batch.h"

#include <pthread.h>
#include <stdlib.h>

struct curvd_batcher {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* an item was queued, or stop */
    struct curvd_batch_item *head, *tail;
    size_t queued;
    int stop;
    size_t max_items;
    curvd_batch_fn fn;
    void *ctx;
    struct curvd_batch_item **run; /* the current run, max_items entries */
    pthread_t thread;
};

static void *batcher_main(void *arg)
{
    struct curvd_batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    for (;;) {
        while (!b->head && !b->stop)
            pthread_cond_wait(&b->cv, &b->mu);
        if (!b->head)
            break; /* stopping, and nothing is left */
        size_t n = 0;
        while (b->head && n < b->max_items) {
            b->run[n++] = b->head;
            b->head = b->head->next;
        }
        if (!b->head)
            b->tail = NULL;
        b->queued -= n;
        pthread_mutex_unlock(&b->mu);
        b->fn(b->ctx, b->run, n);
        for (size_t i = 0; i < n; i++)
            b->run[i]->done(b->run[i]); /* may free the item */
        pthread_mutex_lock(&b->mu);
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

struct curvd_batcher *curvd_batcher_new(size_t max_items, curvd_batch_fn fn, void *ctx)
{
    struct curvd_batcher *b = calloc(1, sizeof *b);
    if (!b || max_items == 0 || !(b->run = calloc(max_items, sizeof *b->run))) {
        free(b);
        return NULL;
    }
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->max_items = max_items;
    b->fn = fn;
    b->ctx = ctx;
    if (pthread_create(&b->thread, NULL, batcher_main, b) != 0) {
        pthread_cond_destroy(&b->cv);
        pthread_mutex_destroy(&b->mu);
        free(b->run);
        free(b);
        return NULL;
    }
    return b;
}

void curvd_batcher_free(struct curvd_batcher *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stop = 1;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b->run);
    free(b);
}

void curvd_batcher_submit(struct curvd_batcher *b, struct curvd_batch_item *it,
                          curvd_batch_done_fn done)
{
    it->next = NULL;
    it->done = done;
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = it;
    else
        b->head = it;
    b->tail = it;
    /* The thread is either waiting (and needs the signal) or running, and
     * then it takes this item on its next pass without one. */
    if (b->queued++ == 0)
        pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void wake_waiter(struct curvd_batch_item *it)
{
    struct curvd_batch_wait *w = it->waiter;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

void curvd_batcher_start(struct curvd_batcher *b, struct curvd_batch_item *it,
                         struct curvd_batch_wait *w)
{
    w->done = 0;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    it->waiter = w;
    curvd_batcher_submit(b, it, wake_waiter);
}

void curvd_batcher_wait(struct curvd_batch_wait *w)
{
    pthread_mutex_lock(&w->mu);
    while (!w->done)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
}

void curvd_batcher_run(struct curvd_batcher *b, struct curvd_batch_item *it)
{
    struct curvd_batch_wait w;
    curvd_batcher_start(b, it, &w);
    curvd_batcher_wait(&w);
}

size_t curvd_batcher_waiting(struct curvd_batcher *b)
{
    pthread_mutex_lock(&b->mu);
    size_t n = b->queued;
    pthread_mutex_unlock(&b->mu);
    return n;
}
