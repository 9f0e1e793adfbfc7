/* SPDX-License-Identifier: MIT */
/* Leader/follower group commit; the model is in batch.h. */
#include "batch.h"

#include <pthread.h>
#include <stdlib.h>

struct curvd_batcher {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a run ended */
    struct curvd_batch_item *head, *tail;
    int running; /* a leader is inside fn */
    size_t max_items;
    curvd_batch_fn fn;
    void *ctx;
    struct curvd_batch_item **run; /* the leader's batch, max_items entries */
};

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
    return b;
}

void curvd_batcher_free(struct curvd_batcher *b)
{
    if (!b)
        return;
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b->run);
    free(b);
}

void curvd_batcher_run(struct curvd_batcher *b, struct curvd_batch_item *it)
{
    pthread_mutex_lock(&b->mu);
    it->next = NULL;
    it->done = 0;
    if (b->tail)
        b->tail->next = it;
    else
        b->head = it;
    b->tail = it;
    while (!it->done) {
        if (b->running) {
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        /* Lead: take up to max_items from the front (ours is among them
         * unless more than max_items wait before it; then lead again). */
        size_t n = 0;
        while (b->head && n < b->max_items) {
            b->run[n++] = b->head;
            b->head = b->head->next;
        }
        if (!b->head)
            b->tail = NULL;
        b->running = 1;
        pthread_mutex_unlock(&b->mu);
        b->fn(b->ctx, b->run, n);
        pthread_mutex_lock(&b->mu);
        for (size_t i = 0; i < n; i++)
            b->run[i]->done = 1;
        b->running = 0;
        pthread_cond_broadcast(&b->cv);
    }
    pthread_mutex_unlock(&b->mu);
}

size_t curvd_batcher_waiting(struct curvd_batcher *b)
{
    size_t n = 0;
    pthread_mutex_lock(&b->mu);
    for (const struct curvd_batch_item *it = b->head; it; it = it->next)
        n++;
    pthread_mutex_unlock(&b->mu);
    return n;
}
