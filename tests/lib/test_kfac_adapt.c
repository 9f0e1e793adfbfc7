/* SPDX-License-Identifier: MIT */
/* K-FAC's pure adaptation rules (kfac_adapt.c) against brute force: the
 * EMA weight, π as the minimiser of the residual bound, the α/μ solve
 * against a fine grid on the quadratic model, the LM rule, the γ grid and
 * the Gram matrix checks. */
#include <math.h>
#include <stdlib.h>

#include "kfac_int.h"
#include "testutil.h"

static void test_eps(void **state)
{
    (void)state;
    for (uint64_t k = 1; k <= 50; k++) {
        double want = 1.0 - 1.0 / (double)k;
        if (want > 0.95)
            want = 0.95;
        assert_true(curv__kfac_eps(k, 0.95) == want);
    }
    assert_true(curv__kfac_eps(1, 0.95) == 0); /* k = 1: the estimate is X̂ */
    assert_true(curv__kfac_eps(7, 0) == 0);
}

/* π minimises the trace-norm bound πγ‖I⊗G‖ + (γ/π)‖A⊗I‖ (§6.6.3):
 * a grid search over log π finds the formula's value. */
static void test_pi(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 3);
    for (int t = 0; t < 5; t++) {
        const size_t nA = 5 + (size_t)t, nG = 3;
        double *A = tu_alloc(nA * nA), *G = tu_alloc(nG * nG);
        tu_rand_spd(&r, nA, 0.1, A);
        tu_rand_spd(&r, nG, 0.1, G);
        for (size_t i = 0; i < nG * nG; i++)
            G[i] *= pow(10.0, t - 2);
        double trA = 0, trG = 0;
        for (size_t i = 0; i < nA; i++)
            trA += A[i * nA + i];
        for (size_t i = 0; i < nG; i++)
            trG += G[i * nG + i];
        double pi = curv__kfac_pi(trA, nA, trG, nG);
        double best = 0, best_v = INFINITY;
        for (double lp = -8; lp <= 8; lp += 1e-4) {
            double p = exp(lp);
            double v = p * (double)nA * trG + (double)nG * trA / p; /* γ factored out */
            if (v < best_v)
                best_v = v, best = p;
        }
        assert_true(fabs(log(pi) - log(best)) < 2e-4);
        assert_true(fabs(pi - sqrt((trA / nA) / (trG / nG))) <= 1e-15 * pi);
        free(A), free(G);
    }
    /* A dead layer (zero trace) falls back to π = 1. */
    assert_true(curv__kfac_pi(0, 3, 1, 2) == 1);
    assert_true(curv__kfac_pi(1, 3, 0, 2) == 1);
    assert_true(curv__kfac_pi(1e300, 1, 1e-300, 1) == 1);
}

/* Random positive definite 2x2 models: the solve beats a fine grid. */
static void test_solve_beats_grid(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 4);
    for (int t = 0; t < 20; t++) {
        double a = 0.1 + tu_uniform(&r) * 3, c = 0.1 + tu_uniform(&r) * 3;
        double b = (tu_uniform(&r) * 2 - 1) * 0.95 * sqrt(a * c);
        struct curv__kfac_quad q = {
            .q11 = a, .q12 = b, .q22 = c, .g1 = tu_normal(&r), .g2 = tu_normal(&r), .has_mom = 1};
        double al, mu, m;
        assert_true(curv__kfac_solve(&q, NULL, &al, &mu, &m));
        assert_true(m <= 0);
        assert_true(fabs(m - 0.5 * (al * q.g1 + mu * q.g2)) <= 1e-12 * (1 + fabs(m)));
        const double span = 2 * (fabs(al) + fabs(mu)) + 1;
        for (int i = -200; i <= 200; i++)
            for (int j = -200; j <= 200; j++) {
                double x = al + span * i / 200.0, y = mu + span * j / 200.0;
                if (curv__kfac_model(&q, x, y) < m - 1e-12)
                    fail_msg("case %d: M(%g, %g) = %g beats the solve's %g", t, x, y,
                             curv__kfac_model(&q, x, y), m);
            }
        /* Without momentum: the 1-D optimum over a grid in α alone. */
        q.has_mom = 0;
        assert_true(curv__kfac_solve(&q, NULL, &al, &mu, &m));
        assert_true(mu == 0 && al == -q.g1 / q.q11);
        for (int i = -2000; i <= 2000; i++)
            assert_true(curv__kfac_model(&q, al * (1 + i / 1000.0), 0) >= m - 1e-14);
    }
}

/* The box: the solve is within 0 <= α <= amax, 0 <= μ <= umax and no
 * point of a fine grid over the box beats it; inside, it is the free
 * solve. */
static void test_box_solve_beats_grid(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 5);
    const struct curv__kfac_box box = {2.0, 0.9};
    int bound = 0;
    for (int t = 0; t < 40; t++) {
        double a = 0.05 + tu_uniform(&r) * 3, c = 0.05 + tu_uniform(&r) * 3;
        double b = (tu_uniform(&r) * 2 - 1) * 0.99 * sqrt(a * c);
        struct curv__kfac_quad q = {.q11 = a,
                                    .q12 = b,
                                    .q22 = c,
                                    .g1 = -fabs(tu_normal(&r)) * 3,
                                    .g2 = tu_normal(&r) * 3,
                                    .has_mom = t % 5 != 0};
        double al, mu, m, fa, fu, fm;
        assert_true(curv__kfac_solve(&q, &box, &al, &mu, &m));
        assert_true(al >= 0 && al <= box.alpha_max && mu >= 0 && mu <= box.mu_max);
        assert_true(q.has_mom || mu == 0);
        assert_true(fabs(m - curv__kfac_model(&q, al, mu)) <= 1e-14 * (1 + fabs(m)));
        assert_true(curv__kfac_solve(&q, NULL, &fa, &fu, &fm));
        if (fa >= 0 && fa <= box.alpha_max && fu >= 0 && fu <= box.mu_max)
            assert_true(al == fa && mu == fu);
        else
            bound++;
        for (int i = 0; i <= 400; i++)
            for (int j = 0; j <= (q.has_mom ? 400 : 0); j++) {
                double x = box.alpha_max * i / 400.0, y = box.mu_max * j / 400.0;
                if (curv__kfac_model(&q, x, y) < m - 1e-12)
                    fail_msg("case %d: M(%g, %g) = %g beats the box solve's %g at (%g, %g)", t, x,
                             y, curv__kfac_model(&q, x, y), m, al, mu);
            }
    }
    assert_true(bound > 5); /* the cases exercise the edges */
}

static void test_solve_safeguards(void **state)
{
    (void)state;
    double al, mu, m;
    /* Δ parallel to δ0: det = 0, the 1-D α is used. */
    struct curv__kfac_quad q = {.q11 = 2, .q12 = 4, .q22 = 8, .g1 = -1, .g2 = -2, .has_mom = 1};
    assert_true(curv__kfac_solve(&q, NULL, &al, &mu, &m));
    assert_true(al == 0.5 && mu == 0 && m == -0.25);
    /* δ0 = 0 (after a rejected step): q22 = 0, 1-D. */
    q = (struct curv__kfac_quad){.q11 = 4, .g1 = -2, .has_mom = 1};
    assert_true(curv__kfac_solve(&q, NULL, &al, &mu, &m));
    assert_true(al == 0.5 && mu == 0);
    /* q11 <= 0 or non-finite: rejected, δ = 0. */
    q = (struct curv__kfac_quad){.q11 = 0, .g1 = -2};
    assert_false(curv__kfac_solve(&q, NULL, &al, &mu, &m));
    assert_true(al == 0 && mu == 0 && m == 0);
    q.q11 = NAN;
    assert_false(curv__kfac_solve(&q, NULL, &al, &mu, &m));
    q.q11 = 1e-310, q.g1 = 1e300;
    assert_false(curv__kfac_solve(&q, NULL, &al, &mu, &m));
}

static void test_lm_rule(void **state)
{
    (void)state;
    const double w1 = pow(19.0 / 20.0, 5);
    for (double rho = -2; rho <= 2; rho += 0.01) {
        double got = curv__kfac_lm(150, rho, w1);
        double want = rho > 0.75 ? 150 * w1 : rho < 0.25 ? 150 / w1 : 150;
        assert_true(got == want);
    }
    assert_true(curv__kfac_lm(2, 0.75, 0.5) == 2 && curv__kfac_lm(2, 0.25, 0.5) == 2);
    /* A NaN ρ (a non-finite loss at θ + δ) counts as a failure. */
    assert_true(curv__kfac_lm(2, NAN, 0.5) == 4);
}

static void test_gamma_grid(void **state)
{
    (void)state;
    double g[3];
    const double w2 = pow(sqrt(19.0 / 20.0), 20);
    assert_true(fabs(w2 - 0.5987369392383787) < 1e-15);
    curv__kfac_gammas(3, w2, g);
    assert_true(g[0] == 3 && g[1] == 3 * w2 && g[2] == 3 / w2);
}

static void test_gram_check(void **state)
{
    (void)state;
    double ok[9] = {4, 1, 0.5, 1, 3, 0.2, 0.5, 0.2, 2};
    assert_int_equal(curv__kfac_gram_check(ok, 3, NULL), 9);
    double asym[9] = {4, 1, 0.5, 1.1, 3, 0.2, 0.5, 0.2, 2};
    assert_int_equal(curv__kfac_gram_check(asym, 3, NULL), 3);
    double neg[4] = {1, 0, 0, -0.5};
    assert_int_equal(curv__kfac_gram_check(neg, 2, NULL), 3);
    double tiny[4] = {1, 1e-9, 1e-9 * (1 + 1e-9), 1e-12}; /* round-off passes */
    assert_int_equal(curv__kfac_gram_check(tiny, 2, NULL), 4);
    /* A form that is zero but for round-off, slightly negative: fine next to
     * the damping (an FP32 trainer sent it), refused without damping or when
     * it is negative beyond round-off of the damped scale. */
    double zero[1] = {-5.3e-30};
    const double damp[1] = {1e-3}, nodamp[1] = {0};
    assert_int_equal(curv__kfac_gram_check(zero, 1, damp), 1);
    assert_int_equal(curv__kfac_gram_check(zero, 1, nodamp), 0);
    double negbig[1] = {-1e-6};
    assert_int_equal(curv__kfac_gram_check(negbig, 1, damp), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eps),
        cmocka_unit_test(test_pi),
        cmocka_unit_test(test_solve_beats_grid),
        cmocka_unit_test(test_box_solve_beats_grid),
        cmocka_unit_test(test_solve_safeguards),
        cmocka_unit_test(test_lm_rule),
        cmocka_unit_test(test_gamma_grid),
        cmocka_unit_test(test_gram_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
