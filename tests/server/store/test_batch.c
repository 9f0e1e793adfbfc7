/* SPDX-License-Identifier: MIT */
/* Group commit (server/batch.c): items that queue while a run is going on
 * form the next run, in arrival order, at most max_items at a time; runs
 * never overlap; every caller returns only after a run that held its item;
 * a submitted item is called back on the batcher's thread after its run. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "store/batch.h"
#include "testutil.h"

enum { MAX_RUNS = 64, MAX_PER_RUN = 16 };

struct item {
    struct curvd_batch_item link; /* first */
    int id;
    atomic_int seen; /* runs that held it */
};

struct log {
    struct curvd_batcher *b;
    atomic_int inside;  /* runs in progress: must stay <= 1 */
    atomic_int overlap; /* a second run started inside one */
    int runs, len[MAX_RUNS], ids[MAX_RUNS][MAX_PER_RUN];
    /* The first run waits until this many items are queued behind it. */
    size_t hold_until;
};

static void nap(void)
{
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
}

static void record(void *ctx, struct curvd_batch_item **items, size_t n)
{
    struct log *lg = ctx;
    if (atomic_fetch_add(&lg->inside, 1) != 0)
        atomic_store(&lg->overlap, 1);
    if (lg->runs == 0)
        while (curvd_batcher_waiting(lg->b) < lg->hold_until)
            nap();
    if (lg->runs < MAX_RUNS) {
        lg->len[lg->runs] = (int)n;
        for (size_t i = 0; i < n && i < MAX_PER_RUN; i++) {
            struct item *it = (struct item *)(void *)items[i];
            lg->ids[lg->runs][i] = it->id;
            atomic_fetch_add(&it->seen, 1);
        }
    }
    lg->runs++;
    atomic_fetch_sub(&lg->inside, 1);
}

struct caller {
    struct log *lg;
    struct item it;
    int seen_on_return;
};

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    curvd_batcher_run(c->lg->b, &c->it.link);
    c->seen_on_return = atomic_load(&c->it.seen);
    return NULL;
}

/* One caller starts a run and holds it until @n others wait; they queue in
 * a known order (each waits for the previous one to be queued). */
static void run_held(size_t max_items, int n, struct log *lg, struct caller *c)
{
    memset(lg, 0, sizeof *lg);
    lg->hold_until = (size_t)n;
    assert_non_null(lg->b = curvd_batcher_new(max_items, record, lg));
    pthread_t th[MAX_PER_RUN + 1];
    for (int i = 0; i <= n; i++) {
        c[i] = (struct caller){.lg = lg, .it = {.id = i}};
        assert_int_equal(pthread_create(&th[i], NULL, caller_main, &c[i]), 0);
        /* The held run keeps the queue until the last one is in it. */
        if (i == 0)
            while (atomic_load(&lg->inside) == 0)
                nap();
        else if (i < n)
            while (curvd_batcher_waiting(lg->b) < (size_t)i)
                nap();
    }
    for (int i = 0; i <= n; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    curvd_batcher_free(lg->b);
    assert_int_equal(atomic_load(&lg->overlap), 0);
    for (int i = 0; i <= n; i++) {
        assert_int_equal(atomic_load(&c[i].it.seen), 1);
        assert_int_equal(c[i].seen_on_return, 1); /* its run had ended */
    }
}

static void test_queued_items_share_a_run(void **state)
{
    (void)state;
    struct log lg;
    struct caller c[8];
    run_held(64, 7, &lg, c);
    assert_int_equal(lg.runs, 2);
    assert_int_equal(lg.len[0], 1);
    assert_int_equal(lg.ids[0][0], 0);
    assert_int_equal(lg.len[1], 7);
    for (int i = 0; i < 7; i++)
        assert_int_equal(lg.ids[1][i], i + 1); /* arrival order */
}

static void test_runs_are_capped(void **state)
{
    (void)state;
    struct log lg;
    struct caller c[8];
    run_held(3, 7, &lg, c);
    assert_int_equal(lg.runs, 4); /* 1, then 3 + 3 + 1 */
    static const int want[] = {1, 3, 3, 1};
    int next = 0;
    for (int r = 0; r < 4; r++) {
        assert_int_equal(lg.len[r], want[r]);
        for (int i = 0; i < lg.len[r]; i++)
            assert_int_equal(lg.ids[r][i], next++);
    }
}

static void test_alone_runs_at_once(void **state)
{
    (void)state;
    struct log lg;
    memset(&lg, 0, sizeof lg);
    assert_non_null(lg.b = curvd_batcher_new(4, record, &lg));
    struct item it[3];
    for (int i = 0; i < 3; i++) {
        it[i] = (struct item){.id = i};
        curvd_batcher_run(lg.b, &it[i].link);
        assert_int_equal(atomic_load(&it[i].seen), 1);
    }
    assert_int_equal(lg.runs, 3);
    assert_int_equal(curvd_batcher_waiting(lg.b), 0);
    curvd_batcher_free(lg.b);
    assert_null(curvd_batcher_new(0, record, &lg)); /* a run must hold something */
    curvd_batcher_free(NULL);
}

struct async_item {
    struct item it; /* first: what record() sees */
    pthread_t *done_on;
    int *done_order, *n_done;
    int seen_when_done;
};

static void async_done(struct curvd_batch_item *link)
{
    struct async_item *a = (struct async_item *)(void *)link;
    *a->done_on = pthread_self();
    a->seen_when_done = atomic_load(&a->it.seen);
    a->done_order[(*a->n_done)++] = a->it.id;
}

/* Submitting returns at once: with the first run held, every item is
 * queued behind it; each is called back once its own run has ended, on
 * the batcher's thread, in arrival order; freeing runs what is queued. */
static void test_submit_calls_back_after_the_run(void **state)
{
    (void)state;
    struct log lg;
    memset(&lg, 0, sizeof lg);
    lg.hold_until = 5;
    assert_non_null(lg.b = curvd_batcher_new(64, record, &lg));
    struct async_item a[6];
    pthread_t on[6];
    int order[6], n_done = 0;
    for (int i = 0; i < 6; i++) {
        a[i] = (struct async_item){
            .it = {.id = i}, .done_on = &on[i], .done_order = order, .n_done = &n_done};
        if (i == 1) /* the first run has started and holds until 5 wait */
            while (atomic_load(&lg.inside) == 0)
                nap();
        curvd_batcher_submit(lg.b, &a[i].it.link, async_done);
        if (i > 0 && i < 5) /* returned at once: the held run waits for 5 */
            assert_int_equal(curvd_batcher_waiting(lg.b), (size_t)i);
    }
    curvd_batcher_free(lg.b); /* runs what is queued, then stops */
    assert_int_equal(lg.runs, 2);
    assert_int_equal(lg.len[1], 5);
    assert_int_equal(n_done, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(order[i], i);
        assert_int_equal(a[i].seen_when_done, 1);
        assert_false(pthread_equal(on[i], pthread_self()));
        assert_true(pthread_equal(on[i], on[0]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_queued_items_share_a_run),
        cmocka_unit_test(test_runs_are_capped),
        cmocka_unit_test(test_alone_runs_at_once),
        cmocka_unit_test(test_submit_calls_back_after_the_run),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
