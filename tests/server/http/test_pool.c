/* SPDX-License-Identifier: MIT */
/*
 * The worker pool (server/http/pool.c) and the executor it lends: every
 * job and every task runs exactly once; a batch's tasks run at once on
 * several threads, the caller among them, each on a slot no other running
 * task of its batch holds, below min(n, the pool's size); a batch
 * completes on its caller alone when every other thread is busy; batches
 * published at once by several callers, and batches published from inside
 * tasks, all complete; run from outside the pool is serial; a pool stops
 * with nothing to do. Threads never call cmocka: they record, the main
 * thread checks. `make tsan` runs this suite under ThreadSanitizer.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/pool.h"
#include "testutil.h"

#define MAXN 256
#define MAXSLOT 64

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

/* A flag that one thread raises and others wait for. */
struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open;
};

static void gate_init(struct gate *g)
{
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = 0;
}

static void gate_open(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static void gate_wait(struct gate *g)
{
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}

static void gate_clear(struct gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

/* ---- A batch that records how its tasks ran ---- */

struct rec {
    size_t n;
    atomic_int count[MAXN];   /* runs of each task */
    atomic_int held[MAXSLOT]; /* tasks running on each slot now */
    atomic_int clash;         /* a slot taken twice at once */
    atomic_uint max_slot;     /* the highest slot used */
    atomic_int running, max_running;
    pthread_t thread[MAXN];    /* the thread of each task */
    int wait_for;              /* first tasks wait (up to 5 s) for this many running */
    long work_us;              /* each task sleeps this long */
    const curv_executor *nest; /* when set, task i % 3 == 0 runs a batch of 4 inside */
    atomic_int nested_runs;    /* tasks of nested batches run */
};

static void nested_task(void *arg, size_t task, unsigned worker);

static void rec_task(void *arg, size_t task, unsigned worker)
{
    struct rec *r = arg;
    atomic_fetch_add(&r->count[task], 1);
    r->thread[task] = pthread_self();
    if (worker >= MAXSLOT || atomic_fetch_add(&r->held[worker], 1) != 0)
        atomic_store(&r->clash, 1);
    unsigned m = atomic_load(&r->max_slot);
    while (worker > m && !atomic_compare_exchange_weak(&r->max_slot, &m, worker))
        ;
    int now = atomic_fetch_add(&r->running, 1) + 1;
    int mx = atomic_load(&r->max_running);
    while (now > mx && !atomic_compare_exchange_weak(&r->max_running, &mx, now))
        ;
    /* Hold the first tasks until several run at once (or 5 s pass: the
     * check below then fails rather than hangs). */
    for (int i = 0; i < 5000 && atomic_load(&r->max_running) < r->wait_for; i++)
        sleep_us(1000);
    if (r->work_us)
        sleep_us(r->work_us);
    if (r->nest && task % 3 == 0)
        r->nest->run(r->nest->ctx, 4, nested_task, r);
    atomic_fetch_sub(&r->running, 1);
    if (worker < MAXSLOT)
        atomic_fetch_sub(&r->held[worker], 1);
}

static void nested_task(void *arg, size_t task, unsigned worker)
{
    (void)task;
    (void)worker;
    struct rec *r = arg;
    atomic_fetch_add(&r->nested_runs, 1);
}

static void rec_init(struct rec *r, size_t n)
{
    memset(r, 0, sizeof *r);
    r->n = n;
}

static void expect_each_once(const struct rec *r)
{
    for (size_t i = 0; i < r->n; i++)
        if (atomic_load(&r->count[i]) != 1)
            fail_msg("task %zu of %zu ran %d times", i, r->n, atomic_load(&r->count[i]));
    assert_int_equal(atomic_load(&r->clash), 0);
}

/* ---- A job that runs batches on a pool thread ---- */

struct batch_job {
    struct curvd_pool_job job;
    const curv_executor *ex;
    struct rec *rec[4];
    size_t nrec;
    int rounds;
    pthread_t self;
    struct gate done;
};

static void batch_job_run(struct curvd_pool_job *job)
{
    struct batch_job *b = (struct batch_job *)(void *)job;
    b->self = pthread_self();
    for (int k = 0; k < b->rounds; k++)
        for (size_t i = 0; i < b->nrec; i++)
            b->ex->run(b->ex->ctx, b->rec[i]->n, rec_task, b->rec[i]);
    gate_open(&b->done);
}

static void batch_job_init(struct batch_job *b, const curv_executor *ex, int rounds)
{
    memset(b, 0, sizeof *b);
    b->job.run = batch_job_run;
    b->ex = ex;
    b->rounds = rounds;
    gate_init(&b->done);
}

static struct curvd_pool *pool_new(unsigned n)
{
    char err[128];
    struct curvd_pool *p = curvd_pool_new(n, err, sizeof err);
    if (!p)
        fail_msg("curvd_pool_new(%u): %s", n, err);
    return p;
}

/* ---- Tests ---- */

struct count_job {
    struct curvd_pool_job job;
    atomic_int *runs;
};

static void count_run(struct curvd_pool_job *job)
{
    atomic_fetch_add(((struct count_job *)(void *)job)->runs, 1);
}

/* Jobs run once each; free runs those still queued. */
static void test_jobs_once(void **state)
{
    (void)state;
    enum { N = 300 };
    static struct count_job jobs[N];
    static atomic_int runs[N];
    struct curvd_pool *p = pool_new(3);
    for (int i = 0; i < N; i++) {
        atomic_init(&runs[i], 0);
        jobs[i] = (struct count_job){.job = {.run = count_run}, .runs = &runs[i]};
        curvd_pool_submit(p, &jobs[i].job);
    }
    curvd_pool_free(p);
    for (int i = 0; i < N; i++)
        assert_int_equal(atomic_load(&runs[i]), 1);
}

/* One batch on an otherwise idle pool of 4: every task once, at least
 * two at once on different threads, the caller's thread among them, and
 * the slots unique and below min(n, 4). */
static void test_batch_parallel(void **state)
{
    (void)state;
    struct curvd_pool *p = pool_new(4);
    const curv_executor *ex = curvd_pool_executor(p);
    assert_int_equal(ex->workers, 4);
    assert_int_equal(curvd_pool_size(p), 4);
    static struct rec r;
    rec_init(&r, 40);
    r.wait_for = 2;
    r.work_us = 200;
    struct batch_job b;
    batch_job_init(&b, ex, 1);
    b.rec[b.nrec++] = &r;
    curvd_pool_submit(p, &b.job);
    gate_wait(&b.done);
    expect_each_once(&r);
    assert_true(atomic_load(&r.max_running) >= 2);
    assert_true(atomic_load(&r.max_slot) < 4);
    size_t by_caller = 0, by_others = 0;
    for (size_t i = 0; i < r.n; i++)
        pthread_equal(r.thread[i], b.self) ? by_caller++ : by_others++;
    print_message("40 tasks: %zu by the caller, %zu by helpers, at most %d at once\n", by_caller,
                  by_others, atomic_load(&r.max_running));
    assert_true(by_caller > 0);
    assert_true(by_others > 0);
    struct curvd_pool_stats st;
    curvd_pool_stats(p, &st);
    assert_int_equal(st.batches, 1);
    assert_int_equal(st.tasks, 40);
    assert_int_equal(st.helped, by_others);
    assert_true(st.max_busy <= 4);
    curvd_pool_free(p);
    gate_clear(&b.done);
}

/* A batch of 2 tasks uses slots 0 and 1 only, however large the pool. */
static void test_slots_below_n(void **state)
{
    (void)state;
    struct curvd_pool *p = pool_new(6);
    static struct rec r;
    struct batch_job b;
    batch_job_init(&b, curvd_pool_executor(p), 20);
    rec_init(&r, 2);
    r.work_us = 300;
    b.rec[b.nrec++] = &r;
    curvd_pool_submit(p, &b.job);
    gate_wait(&b.done);
    for (size_t i = 0; i < r.n; i++)
        assert_int_equal(atomic_load(&r.count[i]), 20);
    assert_int_equal(atomic_load(&r.clash), 0);
    assert_true(atomic_load(&r.max_slot) < 2);
    curvd_pool_free(p);
    gate_clear(&b.done);
}

/* A job that holds its thread until the gate opens. */
struct block_job {
    struct curvd_pool_job job;
    struct gate *release;
    atomic_int started;
};

static void block_run(struct curvd_pool_job *job)
{
    struct block_job *j = (struct block_job *)(void *)job;
    atomic_store(&j->started, 1);
    gate_wait(j->release);
}

/* With the only other thread busy, the caller runs its whole batch. */
static void test_caller_alone(void **state)
{
    (void)state;
    struct curvd_pool *p = pool_new(2);
    struct gate release;
    gate_init(&release);
    struct block_job blk = {.job = {.run = block_run}, .release = &release};
    atomic_init(&blk.started, 0);
    curvd_pool_submit(p, &blk.job);
    while (!atomic_load(&blk.started))
        sleep_us(100);
    static struct rec r;
    rec_init(&r, 9);
    struct batch_job b;
    batch_job_init(&b, curvd_pool_executor(p), 1);
    b.rec[b.nrec++] = &r;
    curvd_pool_submit(p, &b.job);
    gate_wait(&b.done); /* before the blocker is released */
    expect_each_once(&r);
    for (size_t i = 0; i < r.n; i++)
        assert_true(pthread_equal(r.thread[i], b.self));
    assert_int_equal(atomic_load(&r.max_running), 1);
    gate_open(&release);
    curvd_pool_free(p);
    gate_clear(&release);
    gate_clear(&b.done);
}

/* A session's background refresh and a step, as the daemon runs them: a
 * background batch of 40 tasks, then a step's batch of two whose caller,
 * once its tasks are taken, waits for the second. */
struct bg_case {
    struct curvd_pool_job bg_job, step_job; /* the pool hands back each */
    struct curvd_pool *p;
    atomic_int bg_started, bg_done_tasks, on_step_caller, step_running, second_started;
    atomic_int second_before_bg_end; /* the step's task 1 started while bg tasks were unclaimed */
    pthread_t step_thread;
    struct gate bg_done, step_done;
};

#define BG_TASKS 40

static void bg_task(void *arg, size_t i, unsigned w)
{
    (void)i, (void)w;
    struct bg_case *c = arg;
    atomic_fetch_add(&c->bg_started, 1);
    if (atomic_load(&c->step_running) && pthread_equal(pthread_self(), c->step_thread))
        atomic_fetch_add(&c->on_step_caller, 1);
    sleep_us(20000);
    atomic_fetch_add(&c->bg_done_tasks, 1);
}

static void bg_run(struct curvd_pool_job *j)
{
    struct bg_case *c = (struct bg_case *)(void *)((char *)j - offsetof(struct bg_case, bg_job));
    const curv_executor *ex = curvd_pool_background_executor(c->p);
    ex->run(ex->ctx, BG_TASKS, bg_task, c);
    gate_open(&c->bg_done);
}

/* Task 0, the caller's, holds until another thread has task 1 (so that
 * the caller then waits with background tasks left to take). */
static void step_task(void *arg, size_t i, unsigned w)
{
    (void)w;
    struct bg_case *c = arg;
    if (i == 1) {
        atomic_store(&c->second_before_bg_end, atomic_load(&c->bg_started) < BG_TASKS);
        atomic_store(&c->second_started, 1);
        sleep_us(200000);
        return;
    }
    for (int k = 0; k < 50000 && !atomic_load(&c->second_started); k++)
        sleep_us(100);
}

static void step_run(struct curvd_pool_job *j)
{
    struct bg_case *c = (struct bg_case *)(void *)((char *)j - offsetof(struct bg_case, step_job));
    c->step_thread = pthread_self();
    atomic_store(&c->step_running, 1);
    const curv_executor *ex = curvd_pool_executor(c->p);
    ex->run(ex->ctx, 2, step_task, c);
    atomic_store(&c->step_running, 0);
    gate_open(&c->step_done);
}

/* A background batch is helped by idle threads only after a request's
 * batch, and never by a step's caller waiting for its own tasks. */
static void test_background_batches(void **state)
{
    (void)state;
    static struct bg_case c;
    memset(&c, 0, sizeof c);
    c.p = pool_new(3);
    gate_init(&c.bg_done);
    gate_init(&c.step_done);
    c.bg_job.run = bg_run;
    c.step_job.run = step_run;
    curvd_pool_submit(c.p, &c.bg_job);
    while (atomic_load(&c.bg_done_tasks) == 0)
        sleep_us(1000);
    curvd_pool_submit(c.p, &c.step_job);
    gate_wait(&c.step_done);
    gate_wait(&c.bg_done);
    assert_int_equal(atomic_load(&c.bg_done_tasks), BG_TASKS);
    assert_int_equal(atomic_load(&c.second_started), 1);
    assert_int_equal(atomic_load(&c.second_before_bg_end), 1); /* a request's task first */
    assert_int_equal(atomic_load(&c.on_step_caller), 0);
    curvd_pool_free(c.p);
    gate_clear(&c.bg_done);
    gate_clear(&c.step_done);
}

/* Six callers on a pool of three, each publishing batches of several
 * sizes for several rounds, some tasks publishing batches of their own:
 * everything completes, each task once per round, no slot shared. */
static void test_concurrent_and_nested(void **state)
{
    (void)state;
    enum { JOBS = 6, ROUNDS = 5 };
    struct curvd_pool *p = pool_new(3);
    const curv_executor *ex = curvd_pool_executor(p);
    static struct rec recs[JOBS][3];
    static struct batch_job jobs[JOBS];
    static const size_t sizes[3] = {2, 7, 23};
    for (int j = 0; j < JOBS; j++) {
        batch_job_init(&jobs[j], ex, ROUNDS);
        for (int k = 0; k < 3; k++) {
            rec_init(&recs[j][k], sizes[k]);
            recs[j][k].work_us = 50;
            if (k == 1)
                recs[j][k].nest = ex;
            jobs[j].rec[jobs[j].nrec++] = &recs[j][k];
        }
    }
    for (int j = 0; j < JOBS; j++)
        curvd_pool_submit(p, &jobs[j].job);
    for (int j = 0; j < JOBS; j++)
        gate_wait(&jobs[j].done);
    for (int j = 0; j < JOBS; j++)
        for (int k = 0; k < 3; k++) {
            const struct rec *r = &recs[j][k];
            for (size_t i = 0; i < r->n; i++)
                assert_int_equal(atomic_load(&r->count[i]), ROUNDS);
            assert_int_equal(atomic_load(&r->clash), 0);
            assert_true(atomic_load(&r->max_slot) < (sizes[k] < 3 ? sizes[k] : 3));
        }
    /* task 0, 3, 6 of each 7-task batch ran a nested batch of 4 */
    assert_int_equal(atomic_load(&recs[0][1].nested_runs), ROUNDS * 3 * 4);
    struct curvd_pool_stats st;
    curvd_pool_stats(p, &st);
    print_message("%llu jobs, %llu batches, %llu tasks (%llu helped), at most %u busy\n", st.jobs,
                  st.batches, st.tasks, st.helped, st.max_busy);
    assert_int_equal(st.jobs, JOBS);
    assert_true(st.max_busy <= 3);
    curvd_pool_free(p);
    for (int j = 0; j < JOBS; j++)
        gate_clear(&jobs[j].done);
}

/* Called from a thread that is not the pool's: every task there, on
 * worker 0, in order. */
static void test_outside_serial(void **state)
{
    (void)state;
    struct curvd_pool *p = pool_new(2);
    const curv_executor *ex = curvd_pool_executor(p);
    static struct rec r;
    rec_init(&r, 5);
    ex->run(ex->ctx, r.n, rec_task, &r);
    expect_each_once(&r);
    assert_int_equal(atomic_load(&r.max_slot), 0);
    for (size_t i = 0; i < r.n; i++)
        assert_true(pthread_equal(r.thread[i], pthread_self()));
    struct curvd_pool_stats st;
    curvd_pool_stats(p, &st);
    assert_int_equal(st.serial, 1);
    assert_int_equal(st.batches, 0);
    curvd_pool_free(p);
}

/* Pools that never get work stop at once; a pool of no threads is
 * refused; free(NULL) is a no-op. */
static void test_shutdown_idle(void **state)
{
    (void)state;
    static const unsigned sizes[] = {1, 2, 8, 70};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        struct curvd_pool *p = pool_new(sizes[i]);
        assert_int_equal(curvd_pool_executor(p)->workers, sizes[i] < 64 ? sizes[i] : 64);
        curvd_pool_free(p);
    }
    char err[128];
    assert_null(curvd_pool_new(0, err, sizeof err));
    assert_non_null(strstr(err, "at least one thread"));
    curvd_pool_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jobs_once),          cmocka_unit_test(test_batch_parallel),
        cmocka_unit_test(test_slots_below_n),      cmocka_unit_test(test_caller_alone),
        cmocka_unit_test(test_background_batches), cmocka_unit_test(test_concurrent_and_nested),
        cmocka_unit_test(test_outside_serial),     cmocka_unit_test(test_shutdown_idle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
