/* SPDX-License-Identifier: MIT */
/*
 * K-FAC refreshes off the step path (max_staleness, kfac_defer.c): each
 * step's update against dense math formed here from the factors of the
 * refresh it must apply (Cholesky and eigen refreshes); the same bits whether the library or
 * another thread computes the refresh, and across a save and load with one pending; the settings
 * under which refreshes stay in the step.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv/exec.h"
#include "kfac_int.h"
#include "testutil.h"
#include "tu_pool.h"

#define STEPS 14
#define T3 4
#define GAMMA 0.3

static const size_t W[] = {3, 4, 2};

/* Simple mode refreshing by @refresh (NULL: the default, auto: Cholesky
 * with the block-diagonal inverse). */
static curv_opt *simple_opt(const curv_layout *l, double staleness, const char *inverse,
                            const char *refresh)
{
    const tu_kv kv[] = {
        {"lr", 1},      {"momentum", 0},      {"weight_decay", 0}, {"damping", GAMMA},
        {"kl_clip", 0}, {"inv_interval", T3}, {"decay", 0.9},      {"max_staleness", staleness}};
    return tu_kfac_opt(l, kv, 8, "mode", "simple", "noise", "off", "inverse", inverse, "refresh",
                       refresh, NULL);
}

/* The step whose factors step @j's inverses come from: the last of steps
 * 1-3, or of the periodic refreshes k (k ≡ 0 mod T3) applied by then, at
 * k + @s. */
static unsigned refresh_used(unsigned j, unsigned s)
{
    unsigned r = j < 3 ? j : 3;
    for (unsigned k = T3; k + s <= j; k += T3)
        r = k;
    return r;
}

/* −((G + γ/π) ⊗ (A + πγ))⁻¹ g on one layer's slice. */
static void dense_update(size_t nr, const double *G, size_t nc, const double *A, const double *g,
                         double *u)
{
    const size_t sz = nr * nc;
    double *K = tu_kfac_damped_kron(nr, G, nc, A, GAMMA);
    tu_gj_solve(sz, K, g, u);
    for (size_t i = 0; i < sz; i++)
        u[i] = -u[i];
    free(K);
}

/* Every step of a run with max_staleness @s against the dense update
 * from the factors (EMAs formed here) of the refresh it must apply; with
 * @fold_later each step's statistics are folded after it (settled before
 * the next batch is drawn); refreshing by @refresh. */
static void check_dense(unsigned s, int fold_later, const char *refresh)
{
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 0, 3, 71);
    curv_layout *l = tu_mlp_layout(&net);
    curv_opt *o = simple_opt(l, s, "blockdiag", refresh);
    assert_int_equal(curv__kfac_est_block(curv__kfac_estimator(o), 0)->A.chol,
                     strcmp(refresh, "eigen") != 0);
    curv_error err;
    tu_assert_status(curv_opt_defer_stats(o, fold_later, &err), CURV_OK, &err);
    double *u = tu_alloc(net.dim), *want = tu_alloc(net.dim);
    double *A[2][STEPS + 1], *G[2][STEPS + 1];
    for (unsigned k = 1; k <= STEPS; k++) {
        curv_opt_settle(o); /* before the batch changes */
        tu_mlp_batch(&net, 300 + k);
        const double eps = fmin(1.0 - 1.0 / k, 0.9);
        for (size_t i = 0; i < 2; i++) {
            const size_t nc = W[i] + 1, nr = W[i + 1];
            A[i][k] = tu_alloc(nc * nc);
            G[i][k] = tu_alloc(nr * nr);
            double *sa = tu_outer_mean(net.acts[i], net.m, W[i], 1, 1.0 / (double)net.m);
            double *sg = tu_outer_mean(net.sig[i], net.m, nr, 0, 1.0 / (double)net.m);
            for (size_t e = 0; e < nc * nc; e++)
                A[i][k][e] = (k > 1 ? eps * A[i][k - 1][e] : 0) + (1 - eps) * sa[e];
            for (size_t e = 0; e < nr * nr; e++)
                G[i][k][e] = (k > 1 ? eps * G[i][k - 1][e] : 0) + (1 - eps) * sg[e];
            free(sa), free(sg);
        }
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        assert_int_equal(curv_opt_stats_pending(o), fold_later && s > 0 && k > 3);
        const unsigned r = refresh_used(k, s);
        size_t off = 0;
        for (size_t i = 0; i < 2; i++) {
            const size_t nc = W[i] + 1, nr = W[i + 1];
            dense_update(nr, G[i][r], nc, A[i][r], net.g + off, want + off);
            char what[64];
            snprintf(what, sizeof what, "max_staleness %u, layer %zu", s, i);
            tu_expect_close(u + off, want + off, nr * nc, 1e-10, what, (int)k);
            off += nr * nc;
        }
        if (tu_report(o, "inverse_age.l0") != (double)(k - r))
            fail_msg("max_staleness %u, step %u: inverse age %g, want %u", s, k,
                     tu_report(o, "inverse_age.l0"), k - r);
    }
    for (size_t i = 0; i < 2; i++)
        for (unsigned k = 1; k <= STEPS; k++)
            free(A[i][k]), free(G[i][k]);
    free(u), free(want);
    tu_mlp_teardown(o, l, &net);
}

static void test_updates_use_the_deferred_factors(void **state)
{
    (void)state;
    for (int later = 0; later < 2; later++)
        for (int eig = 0; eig < 2; eig++) {
            const char *refresh = eig ? "eigen" : "auto";
            check_dense(0, later, refresh);
            check_dense(1, later, refresh);
            check_dense(3, later, refresh);
        }
}

/* Three workers of tu_pool: refreshes and steps spread over threads. */
static const unsigned POOL_WORKERS = 3;
static const curv_executor POOL = {.workers = 3, .run = tu_pool_run, .ctx = (void *)&POOL_WORKERS};

static void *run_refresh(void *r)
{
    curv_refresh_run(r);
    return NULL;
}

static void *run_refresh_on_pool(void *r)
{
    curv_refresh_run_on(r, &POOL);
    return NULL;
}

/* Two optimizers on the same batches: @a's refreshes are claimed and run
 * on a thread of their own while it steps on, @b's by the library in the
 * step that applies them; every update is the same, bit for bit. With
 * @pool, @a's refreshes run their blocks on an executor's threads
 * (curv_refresh_run_on) and @b steps on one, so that the refresh its step
 * computes does too. */
static void check_threaded(const char *mode, unsigned s, int pool)
{
    tu_mlp na, nb;
    tu_mlp_new(&na, W, 2, 0, 3, 81);
    tu_mlp_new(&nb, W, 2, 0, 3, 81);
    curv_layout *l = tu_mlp_layout(&na);
    const tu_kv kv[] = {{"inv_interval", T3}, {"max_staleness", s}, {"lambda_init", 1}};
    curv_opt *a = tu_kfac_opt(l, kv, 3, "mode", mode, NULL);
    curv_opt *b = tu_kfac_opt(l, kv, 3, "mode", mode, NULL);
    curv_error err;
    if (pool)
        tu_assert_status(curv_opt_set_executor(b, &POOL, &err), CURV_OK, &err);
    double *ua = tu_alloc(na.dim), *ub = tu_alloc(nb.dim);
    tu_mlp_batch(&na, 400);
    tu_mlp_batch(&nb, 400);
    pthread_t th;
    int running = 0;
    uint64_t due = 0;
    unsigned claimed = 0;
    for (unsigned k = 1; k <= 3 * T3 + 2; k++) {
        if (running && k == due) {
            assert_int_equal(pthread_join(th, NULL), 0);
            running = 0;
        }
        tu_assert_status(tu_mlp_step(a, &na, 1, ua, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(b, &nb, 1, ub, NULL, &err), CURV_OK, &err);
        for (size_t i = 0; i < na.dim; i++)
            if (!tu_same_bits(ua[i], ub[i]))
                fail_msg("%s, step %u: element %zu is %.17g with the refresh on a thread, "
                         "%.17g in the step",
                         mode, k, i, ua[i], ub[i]);
        tu_mlp_advance(&na, ua, 400 + k);
        tu_mlp_advance(&nb, ub, 400 + k);
        curv_refresh *r = curv_opt_refresh(a);
        if (!running && curv_refresh_claim(r)) {
            assert_int_equal(curv_refresh_claim(r), 0); /* once */
            due = curv_refresh_due(r);
            assert_true(due == k + s);
            assert_int_equal(pthread_create(&th, NULL, pool ? run_refresh_on_pool : run_refresh, r),
                             0);
            running = 1;
            claimed++;
        }
        curv_refresh *rb = curv_opt_refresh(b); /* unclaimed: kept only until its step */
        assert_true(rb == NULL || curv_refresh_due(rb) > k);
    }
    if (running)
        assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(claimed, 3); /* steps 4, 8 and 12 */
    free(ua), free(ub);
    curv_opt_free(b);
    tu_mlp_teardown(a, l, &na);
    tu_mlp_free(&nb);
}

static void test_same_bits_on_another_thread(void **state)
{
    (void)state;
    for (int pool = 0; pool <= 1; pool++) {
        check_threaded("simple", 1, pool);
        check_threaded("simple", 3, pool);
        check_threaded("adaptive", 2, pool);
    }
}

static curv_opt *reload(const curv_opt *o)
{
    unsigned char *blob = NULL;
    size_t len = 0;
    curv_error err;
    tu_assert_status(curv_opt_save(o, &blob, &len, &err), CURV_OK, &err);
    curv_opt *x = NULL;
    tu_assert_status(curv_opt_load(blob, len, &x, &err), CURV_OK, &err);
    free(blob);
    return x;
}

/* A state saved with a refresh pending (its snapshot, not its results)
 * continues as the optimizer it came from; saving while another thread
 * runs that refresh writes the same bytes. */
static void test_save_with_a_refresh_pending(void **state)
{
    (void)state;
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 0, 3, 91);
    curv_layout *l = tu_mlp_layout(&net);
    curv_opt *o = simple_opt(l, 3, "blockdiag", NULL);
    double *u = tu_alloc(net.dim), *v = tu_alloc(net.dim);
    curv_error err;
    for (unsigned k = 1; k <= T3 + 1; k++) {
        tu_mlp_batch(&net, 500 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    }
    curv_refresh *r = curv_opt_refresh(o);
    assert_non_null(r);
    assert_int_equal(curv_refresh_due(r), T3 + 3);
    unsigned char *before = NULL, *during = NULL;
    size_t nbefore = 0, nduring = 0;
    tu_assert_status(curv_opt_save(o, &before, &nbefore, &err), CURV_OK, &err);
    pthread_t th;
    assert_true(curv_refresh_claim(r));
    assert_int_equal(pthread_create(&th, NULL, run_refresh, r), 0);
    tu_assert_status(curv_opt_save(o, &during, &nduring, &err), CURV_OK, &err);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(nduring, nbefore);
    assert_memory_equal(during, before, nbefore);
    free(before), free(during);
    curv_opt *x = reload(o);
    assert_non_null(curv_opt_refresh(x));
    for (unsigned k = T3 + 2; k <= 3 * T3; k++) {
        tu_mlp_batch(&net, 500 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(x, &net, 1, v, NULL, &err), CURV_OK, &err);
        for (size_t i = 0; i < net.dim; i++)
            if (!tu_same_bits(u[i], v[i]))
                fail_msg("step %u: the reloaded optimizer differs at element %zu", k, i);
    }
    free(u), free(v);
    curv_opt_free(x);
    tu_mlp_teardown(o, l, &net);
}

/* Refreshes stay in the step (the updates of max_staleness 0, bit for
 * bit, and nothing left to run) when max_staleness is not below T3 or the
 * inverse is block-tridiagonal; max_staleness is fixed for a session. */
static void test_where_refreshes_stay_in_the_step(void **state)
{
    (void)state;
    const char *inverse[] = {"blockdiag", "tridiag"};
    const double stale[] = {T3, 2};
    for (int c = 0; c < 2; c++) {
        tu_mlp na, nb;
        tu_mlp_new(&na, W, 2, 0, 3, 95);
        tu_mlp_new(&nb, W, 2, 0, 3, 95);
        curv_layout *l = tu_mlp_layout(&na);
        curv_opt *a = simple_opt(l, stale[c], inverse[c], NULL);
        curv_opt *b = simple_opt(l, 0, inverse[c], NULL);
        double *ua = tu_alloc(na.dim), *ub = tu_alloc(nb.dim);
        curv_error err;
        for (unsigned k = 1; k <= 2 * T3 + 1; k++) {
            tu_mlp_batch(&na, 600 + k);
            tu_mlp_batch(&nb, 600 + k);
            tu_assert_status(tu_mlp_step(a, &na, 1, ua, NULL, &err), CURV_OK, &err);
            tu_assert_status(tu_mlp_step(b, &nb, 1, ub, NULL, &err), CURV_OK, &err);
            assert_memory_equal(ua, ub, na.dim * sizeof *ua);
            assert_null(curv_opt_refresh(a));
        }
        curv_config *cfg = tu_config((const tu_kv[]){{"max_staleness", 1}}, 1);
        assert_int_equal(curv_opt_reconfigure(a, cfg, &err), CURV_E_CONFIG);
        assert_non_null(strstr(err.text, "max_staleness"));
        curv_config_free(cfg);
        free(ua), free(ub);
        curv_opt_free(b);
        tu_mlp_teardown(a, l, &na);
        tu_mlp_free(&nb);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_updates_use_the_deferred_factors),
        cmocka_unit_test(test_same_bits_on_another_thread),
        cmocka_unit_test(test_save_with_a_refresh_pending),
        cmocka_unit_test(test_where_refreshes_stay_in_the_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
