/* SPDX-License-Identifier: MIT */
/* SGD: plain, heavy-ball (Martens' thesis eq. 3.5 with the index slip
 * fixed, ALGORITHMS.md §5), Nesterov (Sutskever et al. 2013, checked in
 * its original look-ahead form on a quadratic), weight decay and the
 * Sutskever momentum schedule, each against dense math written here. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define D 11

/* w: dense 2 x (3 + bias) = 8 at 0; b: vector 3 at 8. */
static const tu_mixed_spec LAYOUT = {.dense = {"w", 2, 3}, .vector = {"b", 3}, .dim = D};

static curv_opt *sgd(double lr, double mu, int nesterov, double wd, const char *mu_sched)
{
    curv_layout *l = tu_mixed_layout(&LAYOUT);
    const tu_kv kv[] = {{"lr", lr}, {"momentum", mu}, {"nesterov", nesterov}, {"weight_decay", wd}};
    curv_config *c = tu_config(kv, sizeof kv / sizeof kv[0]);
    if (mu_sched)
        tu_config_set(c, "momentum_schedule", 0, mu_sched);
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, c);
    curv_config_free(c);
    curv_layout_free(l);
    return o;
}

static void test_plain(void **state)
{
    (void)state;
    curv_opt *o = sgd(0.3, 0, 0, 0, NULL);
    tu_rng rng;
    tu_rng_seed(&rng, 1);
    double g[D], u[D], want[D];
    for (int t = 1; t <= 5; t++) {
        tu_fill_normal(&rng, g, D, 2.0);
        for (size_t i = 0; i < D; i++)
            want[i] = -0.3 * g[i];
        tu_step_ok(o, g, NULL, u);
        tu_expect_close(u, want, D, 1e-15, "plain", t);
    }
    curv_opt_free(o);
}

/* Heavy ball in the thesis form: δ ← μδ − g, θ ← θ + αδ (so Δ = αδ). */
static void test_heavy_ball(void **state)
{
    (void)state;
    const double lr = 0.1, mu = 0.8;
    curv_opt *o = sgd(lr, mu, 0, 0, NULL);
    tu_rng rng;
    tu_rng_seed(&rng, 2);
    double g[D], u[D], want[D], delta[D] = {0};
    for (int t = 1; t <= 20; t++) {
        tu_fill_normal(&rng, g, D, 1.0);
        for (size_t i = 0; i < D; i++) {
            delta[i] = mu * delta[i] - g[i];
            want[i] = lr * delta[i];
        }
        tu_step_ok(o, g, NULL, u);
        tu_expect_close(u, want, D, 1e-13, "heavy ball", t);
    }
    curv_opt_free(o);
}

/* Nesterov, Sutskever et al. 2013 (ALGORITHMS.md §5):
 *   v ← μv − ε∇f(θ + μv),  θ ← θ + v.
 * The trainer holds φ = θ + μv and sends ∇f(φ); the library's update must
 * move φ to the next look-ahead point θ' + μv'. Checked on a quadratic
 * f = ½ xᵀAx, where the gradient anywhere is exact. */
static void test_nesterov_lookahead_form(void **state)
{
    (void)state;
    const double eps = 0.05, mu = 0.9;
    curv_opt *o = sgd(eps, mu, 1, 0, NULL);
    tu_rng rng;
    tu_rng_seed(&rng, 3);
    double *A = tu_alloc(D * D);
    tu_rand_spd(&rng, D, 0.1, A);
    double th[D], v[D] = {0}, phi[D], g[D], u[D], look[D], tmp[D];
    tu_fill_normal(&rng, th, D, 1.0);
    memcpy(phi, th, sizeof th); /* v = 0 at the start */
    for (int t = 1; t <= 40; t++) {
        /* Reference: Sutskever's update of (θ, v). */
        for (size_t i = 0; i < D; i++)
            look[i] = th[i] + mu * v[i];
        tu_matmul(D, D, 1, A, look, tmp);
        for (size_t i = 0; i < D; i++) {
            v[i] = mu * v[i] - eps * tmp[i];
            th[i] += v[i];
        }
        /* Library: the gradient at the trainer's φ. */
        tu_matmul(D, D, 1, A, phi, g);
        tu_step_ok(o, g, NULL, u);
        for (size_t i = 0; i < D; i++) {
            phi[i] += u[i];
            look[i] = th[i] + mu * v[i];
        }
        if (tu_rel_err(phi, look, D) > 1e-12)
            fail_msg("nesterov step %d: φ off the look-ahead point by %g", t,
                     tu_rel_err(phi, look, D));
    }
    free(A);
    curv_opt_free(o);
}

/* Nesterov with arbitrary gradients, in the form of sgd.c's header:
 * v ← μv + g, Δ = −η(g + μv). */
static void test_nesterov_formula(void **state)
{
    (void)state;
    const double lr = 0.2, mu = 0.7;
    curv_opt *o = sgd(lr, mu, 1, 0, NULL);
    tu_rng rng;
    tu_rng_seed(&rng, 4);
    double g[D], u[D], want[D], v[D] = {0};
    for (int t = 1; t <= 15; t++) {
        tu_fill_normal(&rng, g, D, 1.0);
        for (size_t i = 0; i < D; i++) {
            v[i] = mu * v[i] + g[i];
            want[i] = -lr * (g[i] + mu * v[i]);
        }
        tu_step_ok(o, g, NULL, u);
        tu_expect_close(u, want, D, 1e-13, "nesterov", t);
    }
    curv_opt_free(o);
}

/* Weight decay: the gradient of f + (wd/2)|θ|², with and without momentum. */
static void test_weight_decay(void **state)
{
    (void)state;
    const double lr = 0.1, wd = 0.01;
    for (int with_mu = 0; with_mu < 2; with_mu++) {
        const double mu = with_mu ? 0.5 : 0;
        curv_opt *o = sgd(lr, mu, 0, wd, NULL);
        tu_rng rng;
        tu_rng_seed(&rng, 5);
        double g[D], u[D], want[D], th[D], delta[D] = {0};
        tu_fill_normal(&rng, th, D, 3.0);
        for (int t = 1; t <= 10; t++) {
            tu_fill_normal(&rng, g, D, 1.0);
            for (size_t i = 0; i < D; i++) {
                delta[i] = mu * delta[i] - (g[i] + wd * th[i]);
                want[i] = lr * delta[i];
            }
            tu_step_ok(o, g, th, u);
            tu_expect_close(u, want, D, 1e-13, with_mu ? "weight decay + momentum" : "weight decay",
                            t);
            for (size_t i = 0; i < D; i++)
                th[i] += u[i];
        }
        curv_opt_free(o);
    }
}

static void test_weight_decay_needs_params(void **state)
{
    (void)state;
    curv_opt *o = sgd(0.1, 0.9, 0, 0.01, NULL);
    double g[D], th[D], u[D];
    for (size_t i = 0; i < D; i++)
        g[i] = 0.1 * (double)i, th[i] = 1;
    tu_step_ok(o, g, th, u);
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    for (size_t i = 0; i < D; i++)
        u[i] = 42;
    curv_error err;
    curv_step_input in = {.grad = g, .len = D, .dtype = CURV_F64};
    tu_assert_status(curv_opt_step(o, &in, u, NULL, &err), CURV_E_INVALID, &err);
    assert_non_null(strstr(err.text, "weight_decay"));
    for (size_t i = 0; i < D; i++)
        assert_true(u[i] == 42);
    tu_assert_unchanged(o, snap, len);
    assert_int_equal(curv_opt_steps(o), 1);
    /* float32 input without params fails the same way. */
    float gf[D], uf[D];
    for (size_t i = 0; i < D; i++)
        gf[i] = (float)g[i];
    in = (curv_step_input){.grad = gf, .len = D, .dtype = CURV_F32};
    tu_assert_status(curv_opt_step(o, &in, uf, NULL, &err), CURV_E_INVALID, &err);
    tu_assert_unchanged(o, snap, len);
    curv_free(snap);
    /* Without weight decay params are optional. */
    curv_opt_free(o);
    o = sgd(0.1, 0.9, 0, 0, NULL);
    tu_step_ok(o, g, NULL, u);
    curv_opt_free(o);
}

/* μ_t = min(1 − 2^(−1−log2(⌊t/250⌋+1)), μ_max) = min(1 − 1/(2(⌊t/250⌋+1)), μ_max)
 * for the 1-based step t, applied to heavy ball and to Nesterov. */
static double mu_sutskever(int t, double mu_max)
{
    double mu = 1.0 - 1.0 / (2.0 * (double)(t / 250 + 1));
    return mu < mu_max ? mu : mu_max;
}

static void test_sutskever_schedule(void **state)
{
    (void)state;
    const double lr = 0.01, mu_max = 0.85;
    for (int nesterov = 0; nesterov < 2; nesterov++) {
        curv_opt *o = sgd(lr, mu_max, nesterov, 0, "sutskever");
        double g[D], u[D], want[D], v[D] = {0};
        tu_rng rng;
        tu_rng_seed(&rng, 6);
        int seen_caps = 0;
        for (int t = 1; t <= 1100; t++) {
            const double mu = mu_sutskever(t, mu_max);
            seen_caps += mu == mu_max;
            tu_fill_normal(&rng, g, D, 1.0);
            for (size_t i = 0; i < D; i++) {
                v[i] = mu * v[i] + g[i];
                want[i] = -lr * (nesterov ? g[i] + mu * v[i] : v[i]);
            }
            tu_step_ok(o, g, NULL, u);
            tu_expect_close(u, want, D, 1e-11, nesterov ? "sutskever nesterov" : "sutskever", t);
        }
        assert_true(seen_caps > 0); /* the cap was reached (from t = 750) */
        curv_opt_free(o);
    }
    /* The schedule's first values, spelled out: 0.5 up to t = 249, then 0.75. */
    assert_true(mu_sutskever(1, 0.99) == 0.5 && mu_sutskever(249, 0.99) == 0.5);
    assert_true(mu_sutskever(250, 0.99) == 0.75 && mu_sutskever(1000, 0.99) == 0.9);
}

/* With momentum 0, Nesterov and the schedule change nothing: plain SGD. */
static void test_zero_momentum_is_plain(void **state)
{
    (void)state;
    curv_opt *o = sgd(0.05, 0, 1, 0, "sutskever");
    double g[D], u[D], want[D];
    for (int t = 1; t <= 3; t++) {
        for (size_t i = 0; i < D; i++) {
            g[i] = cos((double)(t * D + i));
            want[i] = -0.05 * g[i];
        }
        tu_step_ok(o, g, NULL, u);
        tu_expect_close(u, want, D, 1e-15, "momentum 0", t);
    }
    curv_opt_free(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),
        cmocka_unit_test(test_heavy_ball),
        cmocka_unit_test(test_nesterov_lookahead_form),
        cmocka_unit_test(test_nesterov_formula),
        cmocka_unit_test(test_weight_decay),
        cmocka_unit_test(test_weight_decay_needs_params),
        cmocka_unit_test(test_sutskever_schedule),
        cmocka_unit_test(test_zero_momentum_is_plain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
