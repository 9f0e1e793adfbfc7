/* SPDX-License-Identifier: MIT */
/*
 * A step's statistics folded after it returns (curv_opt_defer_stats,
 * curv_opt_settle; docs/NOTES.md, "K-FAC refreshes off the step path").
 * The expectation is the synchronous step's: with deferral on and off the
 * same batches give the same updates and reports bit for bit, and the same
 * saved states, whoever settles (the caller, another thread, or the next
 * call that settles first); a fold that fails at settle ends where a step
 * whose statistics failed in it ends, its failure counted one step late;
 * steps that do not qualify fold in the step. The updates themselves are
 * held against dense math in test_kfac_defer.c (check_dense with deferral).
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv/alloc.h"
#include "curv/exec.h"
#include "testutil.h"
#include "tu_pool.h"

#define T3 4
#define STEPS (3 * T3 + 3)

static const size_t W[] = {3, 4, 2};

/* A simple-mode optimizer (defaults otherwise) with @stale, @precision and
 * @inverse, deferring its statistics when @defer. */
static curv_opt *make(const curv_layout *l, double stale, const char *precision,
                      const char *inverse, const char *mode, int defer)
{
    const tu_kv kv[] = {{"inv_interval", T3}, {"max_staleness", stale}, {"lambda_init", 1}};
    curv_opt *o =
        tu_kfac_opt(l, kv, 3, "mode", mode, "precision", precision, "inverse", inverse, NULL);
    curv_error err;
    tu_assert_status(curv_opt_defer_stats(o, defer, &err), CURV_OK, &err);
    return o;
}

/*
 * A step input that the test keeps as the contract asks (curv/exec.h: the
 * layer statistics unchanged until the fold is settled, which may be the
 * next step's work): the current batch's statistics copied (acts scaled
 * by @scale) into the one of two slots that step @k's parity picks, in
 * float32 (with the gradient and params) when @f32.
 */
struct held {
    double *d;
    float *f;
    curv_layer_stats ls[TU_MLP_MAX];
};

static curv_step_input held_input(const tu_mlp *net, struct held *slots, unsigned k, double scale,
                                  int f32)
{
    struct held *h = &slots[k % 2];
    size_t total = 2 * net->dim;
    for (size_t i = 0; i < net->L; i++)
        total += net->m * (net->n[i] + net->n[i + 1]);
    double *d = h->d = realloc(h->d, total * sizeof *d);
    float *f = h->f = realloc(h->f, total * sizeof *f);
    assert_true(d && f);
    curv_step_input in = tu_mlp_input(net, 1);
    memcpy(d, net->g, net->dim * sizeof *d);
    memcpy(d + net->dim, net->theta, net->dim * sizeof *d);
    double *next = d + 2 * net->dim;
    for (size_t i = 0; i < net->L; i++) {
        const size_t na = net->m * net->n[i], ns = net->m * net->n[i + 1];
        h->ls[i] = net->stats[i];
        for (size_t e = 0; e < na; e++)
            next[e] = scale * net->acts[i][e];
        memcpy(next + na, net->sig[i], ns * sizeof *next);
        h->ls[i].acts = next, h->ls[i].signals = next + na;
        next += na + ns;
    }
    in.layers = h->ls;
    if (!f32)
        return in;
    for (size_t e = 0; e < total; e++)
        f[e] = (float)d[e];
    for (size_t i = 0; i < net->L; i++) {
        h->ls[i].acts = f + ((const double *)h->ls[i].acts - d);
        h->ls[i].signals = f + ((const double *)h->ls[i].signals - d);
    }
    in.dtype = CURV_F32, in.grad = f, in.params = f + net->dim;
    return in;
}

static void held_free(struct held *slots)
{
    for (int i = 0; i < 2; i++)
        free(slots[i].d), free(slots[i].f);
}

static void same_reports(const curv_opt *a, const curv_opt *b, const char *what, unsigned k)
{
    const curv_report_entry *ea, *eb;
    const size_t na = curv_opt_report(a, &ea), nb = curv_opt_report(b, &eb);
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(ea[i].name, eb[i].name);
        if (!tu_same_bits(ea[i].value, eb[i].value))
            fail_msg("%s, step %u: report %s is %.17g deferred, %.17g in the step", what, k,
                     ea[i].name, ea[i].value, eb[i].value);
    }
}

static void same_states(const curv_opt *a, const curv_opt *b, const char *what, unsigned k)
{
    size_t la, lb;
    unsigned char *sa = tu_snapshot(a, &la), *sb = tu_snapshot(b, &lb);
    if (la != lb || memcmp(sa, sb, la) != 0)
        fail_msg("%s, step %u: the saved states differ", what, k);
    free(sa), free(sb);
}

static void *settle_main(void *o)
{
    curv_opt_settle(o);
    return NULL;
}

/* Ways the fold of a step gets settled. */
enum { BY_NEXT_STEP, BY_CALLER, BY_THREAD, BY_SAVE, N_WAYS };

/*
 * @a defers, @b folds in the step, on the same batches (float32 input when
 * @f32_in; @workers > 1: both on a test executor); step k's update,
 * report and (at some steps) saved state must be the same, and a's
 * statistics pending at every step past 3.
 */
static void check_same(double stale, const char *precision, int f32_in, unsigned workers)
{
    char what[96];
    snprintf(what, sizeof what, "max_staleness %g, %s, %s input, %u workers", stale, precision,
             f32_in ? "float32" : "float64", workers);
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 2, 5, 17);
    curv_layout *l = tu_mlp_layout(&net);
    curv_opt *a = make(l, stale, precision, "blockdiag", "simple", 1);
    curv_opt *b = make(l, stale, precision, "blockdiag", "simple", 0);
    curv_error err;
    unsigned w = workers;
    const curv_executor ex = {.workers = workers, .run = tu_pool_run, .ctx = &w};
    if (workers > 1) {
        tu_assert_status(curv_opt_set_executor(a, &ex, &err), CURV_OK, &err);
        tu_assert_status(curv_opt_set_executor(b, &ex, &err), CURV_OK, &err);
    }
    double *ua = tu_alloc(net.dim), *ub = tu_alloc(net.dim);
    float *fa = calloc(net.dim, sizeof(float)), *fb = calloc(net.dim, sizeof(float));
    struct held slots[2] = {{0}};
    curv_request req;
    tu_mlp_batch(&net, 100);
    for (unsigned k = 1; k <= STEPS; k++) {
        const curv_step_input in = held_input(&net, slots, k, 1, f32_in);
        tu_assert_status(curv_opt_step(a, &in, f32_in ? (void *)fa : ua, &req, &err), CURV_OK,
                         &err);
        tu_assert_status(curv_opt_step(b, &in, f32_in ? (void *)fb : ub, &req, &err), CURV_OK,
                         &err);
        for (size_t i = 0; f32_in && i < net.dim; i++)
            ua[i] = fa[i], ub[i] = fb[i];
        assert_int_equal(curv_opt_stats_pending(b), 0);
        if (curv_opt_stats_pending(a) != (k > 3))
            fail_msg("%s, step %u: statistics pending %d", what, k, curv_opt_stats_pending(a));
        for (size_t i = 0; i < net.dim; i++)
            if (!tu_same_bits(ua[i], ub[i]))
                fail_msg("%s, step %u: element %zu is %.17g deferred, %.17g in the step", what, k,
                         i, ua[i], ub[i]);
        same_reports(a, b, what, k);
        switch (k % N_WAYS) {
        case BY_CALLER:
            curv_opt_settle(a);
            break;
        case BY_THREAD: {
            pthread_t th;
            assert_int_equal(pthread_create(&th, NULL, settle_main, a), 0);
            assert_int_equal(pthread_join(th, NULL), 0);
            break;
        }
        case BY_SAVE:
            same_states(a, b, what, k); /* the save settles */
            break;
        default:
            break; /* the next step settles */
        }
        if (k % N_WAYS != BY_NEXT_STEP)
            assert_int_equal(curv_opt_stats_pending(a), 0);
        tu_mlp_advance(&net, ua, 100 + k);
    }
    same_states(a, b, what, STEPS);
    free(ua), free(ub), free(fa), free(fb);
    held_free(slots);
    curv_opt_free(b);
    tu_mlp_teardown(a, l, &net);
}

static void test_same_as_in_the_step(void **state)
{
    (void)state;
    check_same(1, "fp64", 0, 1);
    check_same(2, "fp64", 0, 1);
    check_same(2, "fp32", 0, 1);
    check_same(1, "fp32", 1, 1);
    check_same(2, "fp64", 1, 2);
    check_same(1, "fp32", 0, 3);
}

/* The library's allocator for the whole run (installed before anything is
 * created): the C library's, failing every allocation while armed. */
static long fail_from = -1; /* allocations left before every one fails; -1: off */

static void *f_alloc(size_t n)
{
    if (fail_from == 0)
        return NULL;
    if (fail_from > 0)
        fail_from--;
    return malloc(n);
}

static void *f_resize(void *p, size_t n)
{
    return fail_from == 0 ? NULL : realloc(p, n);
}

static const curv_allocator FAILING = {.alloc = f_alloc, .resize = f_resize, .release = free};

/*
 * Step BAD's statistics fail. @b folds them in the step (its factors
 * overflow: a tolerated failure, counted at BAD); @a defers them and its
 * fold fails at settle, numerically (@nomem 0: the same overflowing
 * statistics) or for want of memory (every allocation of the settle
 * fails). Both keep their old factors: the same updates and states, and
 * the same reports but for inverse_failures, which @a counts at BAD + 1.
 */
#define BAD (T3 + 3) /* no refresh installed at the next step, to reset the failures */
static void check_failed_fold(int nomem, const char *precision)
{
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 0, 5, 23);
    curv_layout *l = tu_mlp_layout(&net);
    curv_opt *a = make(l, 2, precision, "blockdiag", "simple", 1);
    curv_opt *b = make(l, 2, precision, "blockdiag", "simple", 0);
    double *ua = tu_alloc(net.dim), *ub = tu_alloc(net.dim);
    struct held sa[2] = {{0}}, sb[2] = {{0}};
    curv_request req;
    curv_error err;
    tu_mlp_batch(&net, 200);
    for (unsigned k = 1; k <= 2 * T3 + 2; k++) {
        const curv_step_input as = held_input(&net, sa, k, k == BAD && !nomem ? 1e200 : 1, 0);
        const curv_step_input bs = held_input(&net, sb, k, k == BAD ? 1e200 : 1, 0);
        tu_assert_status(curv_opt_step(a, &as, ua, &req, &err), CURV_OK, &err);
        tu_assert_status(curv_opt_step(b, &bs, ub, &req, &err), CURV_OK, &err);
        assert_memory_equal(ua, ub, net.dim * sizeof *ua);
        const double fa = tu_report(a, "inverse_failures"), fb = tu_report(b, "inverse_failures");
        if (k == BAD) {
            assert_true(fb == fa + 2); /* both blocks; a counts them at settle */
            assert_true(curv_opt_stats_pending(a));
            fail_from = nomem ? 0 : -1;
            curv_opt_settle(a);
            fail_from = -1;
            assert_false(curv_opt_stats_pending(a));
            same_states(a, b, nomem ? "out of memory at settle" : "overflow at settle", k);
        } else {
            assert_true(fa == fb);
            same_reports(a, b, precision, k);
            same_states(a, b, precision, k);
        }
        tu_mlp_advance(&net, ua, 200 + k);
    }
    assert_true(tu_report(b, "inverse_failures") == 2);
    same_states(a, b, "after the failed fold", 2 * T3 + 2);
    free(ua), free(ub);
    held_free(sa), held_free(sb);
    curv_opt_free(b);
    tu_mlp_teardown(a, l, &net);
}

static void test_a_failed_fold_keeps_the_factors(void **state)
{
    (void)state;
    check_failed_fold(0, "fp64");
    check_failed_fold(0, "fp32");
    check_failed_fold(1, "fp64");
}

/* Steps that do not qualify fold in the step: adaptive mode, s = 0, s >=
 * inv_interval, tridiagonal chains, max_failures 0 (a failed fold would
 * not be tolerated), steps 1-3, and steps without statistics. */
static void test_steps_that_fold_in_the_step(void **state)
{
    (void)state;
    struct {
        const char *mode, *inverse;
        double stale, max_failures;
    } c[] = {{"adaptive", "blockdiag", 2, 3},
             {"simple", "blockdiag", 0, 3},
             {"simple", "blockdiag", T3, 3},
             {"simple", "tridiag", 2, 3},
             {"simple", "blockdiag", 2, 0}};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        tu_mlp net;
        tu_mlp_new(&net, W, 2, 0, 5, 29);
        curv_layout *l = tu_mlp_layout(&net);
        curv_opt *a = make(l, c[i].stale, "fp64", c[i].inverse, c[i].mode, 1);
        curv_config *cfg = tu_config((const tu_kv[]){{"max_failures", c[i].max_failures}}, 1);
        curv_error err;
        tu_assert_status(curv_opt_reconfigure(a, cfg, &err), CURV_OK, &err);
        curv_config_free(cfg);
        double *u = tu_alloc(net.dim);
        tu_mlp_batch(&net, 300);
        for (unsigned k = 1; k <= 2 * T3 + 1; k++) {
            tu_assert_status(tu_mlp_step(a, &net, 1, u, NULL, &err), CURV_OK, &err);
            if (curv_opt_stats_pending(a))
                fail_msg("case %zu (%s, %s, s %g), step %u: statistics left pending", i, c[i].mode,
                         c[i].inverse, c[i].stale, k);
            tu_mlp_advance(&net, u, 300 + k);
        }
        free(u);
        tu_mlp_teardown(a, l, &net);
    }
    /* With deferral on, a step without statistics leaves nothing. */
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 0, 5, 31);
    curv_layout *l = tu_mlp_layout(&net);
    const tu_kv kv[] = {{"inv_interval", T3}, {"max_staleness", 2}, {"cov_interval", 2}};
    curv_opt *a = tu_kfac_opt(l, kv, 3, "mode", "simple", NULL);
    curv_error err;
    tu_assert_status(curv_opt_defer_stats(a, 1, &err), CURV_OK, &err);
    double *u = tu_alloc(net.dim);
    tu_mlp_batch(&net, 400);
    for (unsigned k = 1; k <= 2 * T3; k++) {
        const int with = k % 2 == 1;
        tu_assert_status(tu_mlp_step(a, &net, with, u, NULL, &err), CURV_OK, &err);
        assert_int_equal(curv_opt_stats_pending(a), with && k > 3);
        curv_opt_settle(a); /* before the batch changes */
        tu_mlp_advance(&net, u, 400 + k);
    }
    free(u);
    tu_mlp_teardown(a, l, &net);
}

/* Calls that settle first: step (a step reusing the batch: the input is
 * unchanged until then), cancel, reconfigure, set_executor, refresh,
 * defer_stats (turning it off) and save; free drops the fold
 * (LeakSanitizer checks nothing is left); other kinds ignore the opt-in. */
static void test_calls_settle_first(void **state)
{
    (void)state;
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 0, 5, 37);
    curv_layout *l = tu_mlp_layout(&net);
    curv_opt *a = make(l, 2, "fp64", "blockdiag", "simple", 1);
    double *u = tu_alloc(net.dim);
    curv_error err;
    tu_mlp_batch(&net, 500);
    curv_config *cfg = tu_config((const tu_kv[]){{"lr", 0.5}}, 1);
    const curv_executor ex = {.workers = 2, .run = tu_pool_run, .ctx = &(unsigned){2}};
    for (unsigned k = 1; k <= 11; k++) {
        tu_assert_status(tu_mlp_step(a, &net, 1, u, NULL, &err), CURV_OK, &err);
        assert_int_equal(curv_opt_stats_pending(a), k > 3);
        switch (k) {
        case 4:
            curv_opt_cancel(a);
            break;
        case 5:
            tu_assert_status(curv_opt_reconfigure(a, cfg, &err), CURV_OK, &err);
            break;
        case 6:
            tu_assert_status(curv_opt_set_executor(a, &ex, &err), CURV_OK, &err);
            break;
        case 8: /* periodic: its refresh is deferred, its snapshot taken at the fold */
            assert_non_null(curv_opt_refresh(a));
            assert_int_equal(curv_refresh_due(curv_opt_refresh(a)), 10);
            break;
        case 9:
            free(tu_snapshot(a, &(size_t){0}));
            break;
        default:
            continue;
        }
        assert_int_equal(curv_opt_stats_pending(a), 0);
        tu_mlp_advance(&net, u, 500 + k);
    }
    tu_assert_status(curv_opt_defer_stats(a, 0, &err), CURV_OK, &err);
    assert_int_equal(curv_opt_stats_pending(a), 0);
    tu_assert_status(tu_mlp_step(a, &net, 1, u, NULL, &err), CURV_OK, &err);
    assert_int_equal(curv_opt_stats_pending(a), 0);
    tu_assert_status(curv_opt_defer_stats(a, 1, &err), CURV_OK, &err);
    tu_assert_status(tu_mlp_step(a, &net, 1, u, NULL, &err), CURV_OK, &err);
    assert_int_equal(curv_opt_stats_pending(a), 1);
    curv_config_free(cfg);
    free(u);
    tu_mlp_teardown(a, l, &net); /* freed with the fold pending */
    assert_int_equal(curv_opt_defer_stats(NULL, 1, &err), CURV_E_INVALID);
    curv_opt_settle(NULL);
    assert_int_equal(curv_opt_stats_pending(NULL), 0);
    curv_layout *sl = tu_mlp_setup(&net, W, 2, 0, 5, 41, 41);
    curv_opt *sgd = tu_opt_with(CURV_OPT_SGD, sl, NULL, 0);
    tu_assert_status(curv_opt_defer_stats(sgd, 1, &err), CURV_OK, &err);
    assert_int_equal(curv_opt_stats_pending(sgd), 0);
    tu_mlp_teardown(sgd, sl, &net);
}

int main(void)
{
    curv_set_allocator(&FAILING);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_as_in_the_step),
        cmocka_unit_test(test_a_failed_fold_keeps_the_factors),
        cmocka_unit_test(test_steps_that_fold_in_the_step),
        cmocka_unit_test(test_calls_settle_first),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
