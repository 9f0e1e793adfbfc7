/* SPDX-License-Identifier: MIT */
/*
 * The executor (exec.c, curv/exec.h): K-FAC's per-layer work run on a
 * pool of threads here gives updates bit for bit equal to the serial run,
 * in adaptive and simple mode, block-diagonal and tridiagonal, through a
 * numeric failure tolerated in one block; an executor running the tasks in
 * reverse order does too; bad executors are refused; running out of
 * memory inside the pool's tasks fails the step and changes nothing. `make tsan` runs this
 * suite under ThreadSanitizer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "tu_pool.h"

static atomic_size_t batches;

/* tu_pool, counting its batches. */
static void pool_run(void *ctx, size_t n, curv_task_fn fn, void *arg)
{
    tu_pool_run(ctx, n, fn, arg);
    atomic_fetch_add(&batches, 1);
}

/* Every task on the calling thread, last first, alternating two slots. */
static void reverse_run(void *ctx, size_t n, curv_task_fn fn, void *arg)
{
    (void)ctx;
    for (size_t i = n; i-- > 0;)
        fn(arg, i, (unsigned)(i % 2));
}

/* The report's inverse_failures of the last step. */
static double failures(const curv_opt *o)
{
    const curv_report_entry *e;
    size_t n = curv_opt_report(o, &e);
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, "inverse_failures") == 0)
            return e[i].value;
    fail_msg("no inverse_failures in the report");
    return 0;
}

/* Drive a serial optimizer and one on @ex through @steps steps of the same
 * batches (a blown-up activation at step 5 makes one block's statistics
 * fail, tolerated); statuses and updates must be identical, in either
 * @precision. */
static void check_same_at(const curv_executor *ex, const char *mode, const char *inverse, int steps,
                          const char *precision)
{
    tu_mlp net;
    const size_t w[] = {6, 5, 4, 4, 3};
    curv_layout *l = tu_mlp_setup(&net, w, 4, 2, 8, 61, 62);
    const tu_kv kv[] = {{"inv_interval", 3}, {"gamma_interval", 2}, {"lambda_interval", 2}};
    curv_opt *a = tu_kfac_opt(l, kv, 3, "mode", mode, "inverse", inverse, "gamma_rule", "grid",
                              "precision", precision, NULL);
    curv_opt *b = tu_kfac_opt(l, kv, 3, "mode", mode, "inverse", inverse, "gamma_rule", "grid",
                              "precision", precision, NULL);
    curv_error err;
    tu_assert_status(curv_opt_set_executor(b, ex, &err), CURV_OK, &err);
    double *ua = tu_alloc(net.dim), *ub = tu_alloc(net.dim);
    for (int k = 1; k <= steps; k++) {
        tu_mlp_batch(&net, 100 + (uint64_t)k);
        if (k == 5)
            net.acts[1][3] = 1e200;
        curv_error ea, eb;
        curv_status sa = tu_mlp_step(a, &net, 1, ua, NULL, &ea);
        curv_status sb = tu_mlp_step(b, &net, 1, ub, NULL, &eb);
        assert_int_equal(sa, sb);
        if (sa != CURV_OK) {
            assert_string_equal(ea.text, eb.text);
            continue;
        }
        if (k == 5)
            assert_true(failures(b) > 0);
        if (memcmp(ua, ub, net.dim * sizeof(double)) != 0)
            fail_msg("%s/%s/%s, step %d: the executor's update differs from the serial one", mode,
                     inverse, precision, k);
    }
    curv_opt_free(b);
    free(ua), free(ub);
    tu_mlp_teardown(a, l, &net);
}

static void check_same(const curv_executor *ex, const char *mode, const char *inverse, int steps)
{
    check_same_at(ex, mode, inverse, steps, "fp64");
    check_same_at(ex, mode, inverse, steps, "fp32");
}

static void test_pool_same_as_serial(void **state)
{
    (void)state;
    static unsigned two = 2, three = 3;
    const curv_executor ex2 = {.workers = 2, .run = pool_run, .ctx = &two};
    const curv_executor ex3 = {.workers = 3, .run = pool_run, .ctx = &three};
    size_t before = atomic_load(&batches);
    check_same(&ex2, "adaptive", "blockdiag", 9);
    assert_true(atomic_load(&batches) > before); /* the pool did run */
    check_same(&ex3, "simple", "blockdiag", 9);
    check_same(&ex2, "adaptive", "tridiag", 7);
}

static void test_order_independent(void **state)
{
    (void)state;
    const curv_executor rev = {.workers = 2, .run = reverse_run};
    check_same(&rev, "adaptive", "blockdiag", 7);
    check_same(&rev, "simple", "blockdiag", 7);
}

static void test_refusals(void **state)
{
    (void)state;
    curv_error err;
    const curv_executor none = {.workers = 2}, zero = {.workers = 0, .run = reverse_run};
    const curv_executor ok = {.workers = 2, .run = reverse_run};
    assert_int_equal(curv_opt_set_executor(NULL, &ok, &err), CURV_E_INVALID);
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "d", 3, 2, 1, NULL), CURV_OK);
    curv_opt *k = tu_kfac_opt(l, NULL, 0, "mode", "simple", NULL);
    assert_int_equal(curv_opt_set_executor(k, &none, &err), CURV_E_INVALID);
    assert_non_null(strstr(err.text, "no run function"));
    assert_int_equal(curv_opt_set_executor(k, &zero, &err), CURV_E_INVALID);
    assert_non_null(strstr(err.text, "zero workers"));
    tu_assert_status(curv_opt_set_executor(k, &ok, &err), CURV_OK, &err);
    tu_assert_status(curv_opt_set_executor(k, NULL, &err), CURV_OK, &err);
    curv_opt *s;
    tu_assert_status(curv_opt_new(CURV_OPT_SGD, l, NULL, &s, &err), CURV_OK, &err);
    tu_assert_status(curv_opt_set_executor(s, &ok, &err), CURV_OK, &err); /* serial anyway */
    curv_opt_free(s);
    curv_opt_free(k);
    curv_layout_free(l);
}

/* An allocator that, once armed with a budget, fails every allocation
 * after that many (from any thread). */
static atomic_int armed;
static atomic_long budget;

static void *budget_alloc(size_t n)
{
    if (atomic_load(&armed) && atomic_fetch_sub(&budget, 1) <= 0)
        return NULL;
    return malloc(n);
}

static void *budget_resize(void *p, size_t n)
{
    if (atomic_load(&armed) && atomic_fetch_sub(&budget, 1) <= 0)
        return NULL;
    return realloc(p, n);
}

/* Out of memory at each allocation in turn inside steps run on the pool:
 * the step fails with CURV_E_NOMEM and changes nothing, so retrying it
 * with enough memory gives the update of an optimizer that never failed
 * (simple mode, refreshes at steps 1-3 and 4). */
static void test_out_of_memory(void **state)
{
    (void)state;
    static unsigned two = 2;
    const curv_executor ex = {.workers = 2, .run = tu_pool_run, .ctx = &two};
    tu_mlp net;
    const size_t w[] = {6, 5, 4, 3};
    curv_layout *l = tu_mlp_setup(&net, w, 3, 1, 8, 71, 72);
    const tu_kv kv[] = {{"inv_interval", 4}};
    curv_opt *a = tu_kfac_opt(l, kv, 1, "mode", "simple", NULL);
    curv_opt *b = tu_kfac_opt(l, kv, 1, "mode", "simple", NULL);
    curv_error err;
    tu_assert_status(curv_opt_set_executor(b, &ex, &err), CURV_OK, &err);
    double *ua = tu_alloc(net.dim), *ub = tu_alloc(net.dim);
    int failures = 0;
    for (int k = 1; k <= 5; k++) {
        tu_mlp_batch(&net, 200 + (uint64_t)k);
        tu_assert_status(tu_mlp_step(a, &net, 1, ua, NULL, &err), CURV_OK, &err);
        curv_status st = CURV_E_NOMEM;
        for (long i = 0; st == CURV_E_NOMEM; i++) {
            atomic_store(&budget, i);
            atomic_store(&armed, 1);
            st = tu_mlp_step(b, &net, 1, ub, NULL, &err);
            atomic_store(&armed, 0);
            failures += st == CURV_E_NOMEM;
        }
        tu_assert_status(st, CURV_OK, &err);
        if (memcmp(ua, ub, net.dim * sizeof(double)) != 0)
            fail_msg("step %d: the update after failed attempts differs", k);
    }
    assert_true(failures > 10);
    curv_opt_free(b);
    free(ua), free(ub);
    tu_mlp_teardown(a, l, &net);
}

int main(void)
{
    const curv_allocator al = {budget_alloc, budget_resize, free};
    curv_set_allocator(&al); /* unarmed: malloc, realloc, free */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_same_as_serial),
        cmocka_unit_test(test_order_independent),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_out_of_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
