/* SPDX-License-Identifier: MIT */
/*
 * MBAG, MBAG-EMA and MBAG-N (Lee, MBAG paper, Algorithms 1 and 2; ALGORITHMS
 * §2). Every expected update comes from dense reference math written here:
 * per group G = λI + Σ gg^T (or its EMA) and its powers via tu_sym_pow, a
 * dense Newton–Schulz written with tu_matmul, and the grouping rules of
 * ALGORITHMS 2.2 spelled out independently (and literally for small cases).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* ---- small helpers ---- */

/* An optimizer of @kind on @l with the numeric settings {key, value}, ... */
#define MK(kind, l, ...)                                                                           \
    tu_opt_with(kind, l, (const tu_kv[]){__VA_ARGS__},                                             \
                sizeof((const tu_kv[]){__VA_ARGS__}) / sizeof(tu_kv))

/* dense "fc" 3x5 + bias, conv "cv" 2x2x(2x2) + bias, vector "gain" 7: d = 43. */
static const tu_mixed_spec MIXED = {{"fc", 3, 5}, {"cv", 2, 2, 2, 2}, {"gain", 7}, 43};

/* ---- the grouping rules, written independently (ALGORITHMS 2.2) ---- */

struct groups {
    size_t ng;
    size_t start[256]; /* group i = idx[start[i] .. start[i+1]) */
    size_t idx[256];   /* flat indices */
};

static void add_run(struct groups *G, const size_t *flat, size_t len, size_t cs)
{
    size_t pos = G->start[G->ng];
    for (size_t k = 0; k < len; k++) {
        if (k % cs == 0 && k > 0)
            G->start[++G->ng] = pos;
        G->idx[pos++] = flat[k];
    }
    if (len)
        G->start[++G->ng] = pos;
}

static void groups_of(const curv_layout *l, size_t tau, size_t conv_tau, struct groups *G)
{
    memset(G, 0, sizeof *G);
    size_t w[256], b[64];
    for (size_t i = 0; i < curv_layout_nblocks(l); i++) {
        curv_block_info bi;
        assert_int_equal(curv_layout_block(l, i, &bi), CURV_OK);
        size_t nw = 0, nb = 0;
        for (size_t r = 0; r < bi.rows; r++) {
            for (size_t c = 0; c < bi.n_in; c++)
                w[nw++] = bi.offset + r * bi.cols + c;
            if (bi.has_bias)
                b[nb++] = bi.offset + r * bi.cols + bi.n_in;
        }
        size_t cs = tau;
        if (bi.kind == CURV_BLOCK_CONV2D)
            cs = conv_tau ? conv_tau : bi.kh * bi.kw;
        add_run(G, w, nw, cs);
        add_run(G, b, nb, tau);
    }
    assert_int_equal(G->start[G->ng], curv_layout_dim(l));
}

/* ---- dense reference optimizer ---- */

enum { R_SM, R_EMA, R_N };

struct ref {
    int kind;
    double lr, lambda, beta, alpha, delta;
    uint64_t t_sqr, t;
    unsigned t_ns; /* 0: exact matrix power instead of Newton–Schulz */
    struct groups gr;
    double G[256 * 64]; /* per group n x n at moff[i] */
    double P[256 * 64];
    double v[256];
    size_t moff[257];
};

static void ref_init(struct ref *R, int kind, const curv_layout *l, size_t tau, size_t conv_tau)
{
    R->kind = kind;
    R->t = 0;
    groups_of(l, tau, conv_tau, &R->gr);
    memset(R->G, 0, sizeof R->G);
    memset(R->P, 0, sizeof R->P);
    memset(R->v, 0, sizeof R->v);
    R->moff[0] = 0;
    for (size_t i = 0; i < R->gr.ng; i++) {
        size_t n = R->gr.start[i + 1] - R->gr.start[i];
        R->moff[i + 1] = R->moff[i] + n * n;
        assert_true(R->moff[i + 1] <= sizeof R->G / sizeof R->G[0]);
        for (size_t k = 0; k < n; k++) {
            R->G[R->moff[i] + k * n + k] = R->lambda;
            R->P[R->moff[i] + k * n + k] = 1.0 / sqrt(R->lambda);
        }
    }
}

/* Newton–Schulz (MBAG eq. 5) on A/‖A‖_F, dense; returns ‖A‖_F. */
static double ref_ns(size_t n, const double *A, unsigned iters, double *X, double *Y)
{
    double c = 0, *T = tu_alloc(n * n), *U = tu_alloc(n * n);
    for (size_t k = 0; k < n * n; k++)
        c += A[k] * A[k];
    c = sqrt(c);
    for (size_t k = 0; k < n * n; k++) {
        X[k] = A[k] / c;
        Y[k] = (k % (n + 1) == 0);
    }
    for (unsigned it = 0; it < iters; it++) {
        tu_matmul(n, n, n, Y, X, T);
        for (size_t k = 0; k < n * n; k++)
            T[k] = 3.0 * (k % (n + 1) == 0) - T[k];
        tu_matmul(n, n, n, X, T, U);
        tu_matmul(n, n, n, T, Y, X);
        for (size_t k = 0; k < n * n; k++) {
            Y[k] = 0.5 * X[k];
            X[k] = 0.5 * U[k];
        }
    }
    free(T);
    free(U);
    return c;
}

/* P for the current G: mbag: H^1/2 = (G^-1)^1/2, mbag_ema: (G + δI)^-1/2. */
static void ref_root(const struct ref *R, size_t n, const double *G, double *P)
{
    double *A = tu_alloc(n * n), *X = tu_alloc(n * n), *Y = tu_alloc(n * n);
    if (R->kind == R_SM)
        tu_sym_pow(n, G, -1.0, 0.0, A);
    else
        for (size_t k = 0; k < n * n; k++)
            A[k] = G[k] + (k % (n + 1) == 0 ? R->delta : 0.0);
    if (R->t_ns == 0) {
        tu_sym_pow(n, A, R->kind == R_SM ? 0.5 : -0.5, 0.0, P);
    } else {
        double c = ref_ns(n, A, R->t_ns, X, Y);
        for (size_t k = 0; k < n * n; k++)
            P[k] = R->kind == R_SM ? sqrt(c) * X[k] : Y[k] / sqrt(c);
    }
    free(A);
    free(X);
    free(Y);
}

static void ref_step(struct ref *R, const double *g, double *out)
{
    R->t++;
    for (size_t i = 0; i < R->gr.ng; i++) {
        size_t n = R->gr.start[i + 1] - R->gr.start[i];
        const size_t *idx = R->gr.idx + R->gr.start[i];
        double gp[64], u[64], *G = R->G + R->moff[i], *P = R->P + R->moff[i];
        double *M = tu_alloc(n * n);
        for (size_t k = 0; k < n; k++)
            gp[k] = g[idx[k]];
        for (size_t r = 0; r < n; r++)
            for (size_t c = 0; c < n; c++)
                G[r * n + c] = R->kind == R_EMA
                                   ? R->alpha * G[r * n + c] + (1 - R->alpha) * gp[r] * gp[c]
                                   : G[r * n + c] + gp[r] * gp[c];
        if (R->kind == R_N)
            tu_sym_pow(n, G, -1.0, 0.0, M);
        else {
            if (R->t % R->t_sqr == 0)
                ref_root(R, n, G, P);
            memcpy(M, P, n * n * sizeof(double));
        }
        tu_matmul(n, n, 1, M, gp, u);
        for (size_t k = 0; k < n; k++) {
            R->v[idx[k]] = R->beta * R->v[idx[k]] + u[k];
            out[idx[k]] = -R->lr * R->v[idx[k]];
        }
        free(M);
    }
}

/* Start @R (its kind and settings filled in) on @l with τ = 4, run @steps
 * random steps of @o and @R side by side, and return the largest relative
 * error of an update. */
static double run_vs_ref(curv_opt *o, const curv_layout *l, struct ref *R, int steps, uint64_t seed)
{
    const size_t d = curv_layout_dim(l);
    ref_init(R, R->kind, l, 4, 0);
    tu_rng rng;
    tu_rng_seed(&rng, seed);
    double g[256], u[256], want[256], worst = 0;
    for (int s = 0; s < steps; s++) {
        tu_fill_normal(&rng, g, d, 1.0);
        tu_step_ok(o, g, NULL, u);
        ref_step(R, g, want);
        worst = fmax(worst, tu_rel_err(u, want, d));
    }
    return worst;
}

/* ---- reference tests ---- */

/* MBAG-N with β = 0: Δ = -η H g, so the Sherman–Morrison inverse after 200
 * rank-one updates must equal the dense (λI + Σ gg^T)^-1 of every group. */
static void test_n_inverse_matches_dense(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *o = MK(CURV_OPT_MBAG_N, l, {"lr", 0.1}, {"lambda", 0.01}, {"beta", 0}, {"tau", 4});
    static struct ref R = {.kind = R_N, .lr = 0.1, .lambda = 0.01, .beta = 0};
    assert_true(run_vs_ref(o, l, &R, 200, 1) < 1e-9);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* MBAG (Alg. 1) with β = 0, T_sqr = 1 and 30 Newton–Schulz steps: the update
 * is -η (λI + Σ gg^T)^-1/2 g to tight tolerance. */
static void test_sqrt_converged(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *o = MK(CURV_OPT_MBAG, l, {"lr", 0.05}, {"lambda", 0.1}, {"beta", 0}, {"tau", 4},
                     {"t_sqr", 1}, {"t_ns", 30});
    static struct ref R = {.kind = R_SM, .lr = 0.05, .lambda = 0.1, .t_sqr = 1, .t_ns = 0};
    assert_true(run_vs_ref(o, l, &R, 120, 2) < 1e-10);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* With few Newton–Schulz steps the result equals the dense iteration with the
 * same count (so the error is what T_NS allows), and the distance to the
 * exact root shrinks as T_NS grows. Normalised eigenvalues a gain about 9/4
 * per step, so a ~ 1e-3 (step 1: I/λ minus a rank-one term) needs ~8 steps
 * before the quadratic phase (ALGORITHMS 2.6 b). */
static void test_ns_iteration_count(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    double prev = INFINITY;
    const unsigned counts[] = {1, 2, 4, 8, 12, 16};
    for (size_t c = 0; c < sizeof counts / sizeof counts[0]; c++) {
        curv_opt *o = MK(CURV_OPT_MBAG, l, {"lr", 1}, {"lambda", 0.01}, {"beta", 0}, {"tau", 4},
                         {"t_sqr", 1}, {"t_ns", counts[c]});
        static struct ref R, E;
        R = (struct ref){.kind = R_SM, .lr = 1, .lambda = 0.01, .t_sqr = 1, .t_ns = counts[c]};
        E = (struct ref){.kind = R_SM, .lr = 1, .lambda = 0.01, .t_sqr = 1, .t_ns = 0};
        ref_init(&R, R_SM, l, 4, 0);
        ref_init(&E, R_SM, l, 4, 0);
        tu_rng rng;
        tu_rng_seed(&rng, 3);
        double g[43], u[43], want[43], exact[43], err_ns = 0, err_exact = 0;
        for (int s = 0; s < 12; s++) {
            tu_fill_normal(&rng, g, 43, 1.0);
            tu_step_ok(o, g, NULL, u);
            ref_step(&R, g, want);
            ref_step(&E, g, exact);
            err_ns = fmax(err_ns, tu_rel_err(u, want, 43));
            err_exact = fmax(err_exact, tu_rel_err(u, exact, 43));
        }
        assert_true(err_ns < 1e-9);
        assert_true(err_exact < prev);
        if (c == 0) /* step 1: H/‖H‖_F has eigenvalues near 1e-3, far from resolved */
            assert_true(err_exact > 0.1);
        if (counts[c] == 16)
            assert_true(err_exact < 1e-9);
        prev = err_exact;
        curv_opt_free(o);
    }
    curv_layout_free(l);
}

/* MBAG-EMA (Alg. 2) against G <- αG + (1-α)gg^T, P = (G + δI)^-1/2. */
static void test_ema_matches_dense(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *o = MK(CURV_OPT_MBAG_EMA, l, {"lr", 0.02}, {"lambda", 0.5}, {"beta", 0}, {"tau", 4},
                     {"t_sqr", 1}, {"t_ns", 30}, {"alpha", 0.9}, {"delta", 1e-3});
    static struct ref R = {.kind = R_EMA,
                           .lr = 0.02,
                           .lambda = 0.5,
                           .alpha = 0.9,
                           .delta = 1e-3,
                           .t_sqr = 1,
                           .t_ns = 0};
    assert_true(run_vs_ref(o, l, &R, 80, 4) < 1e-9);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* Momentum v <- βv + P g (Alg. 1 line 11) for every variant, including
 * held P between refreshes (T_sqr = 3). */
static void test_momentum(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    static struct ref R;
    curv_opt *o = MK(CURV_OPT_MBAG_N, l, {"lr", 0.1}, {"beta", 0.7}, {"tau", 4});
    R = (struct ref){.kind = R_N, .lr = 0.1, .lambda = 0.01, .beta = 0.7};
    assert_true(run_vs_ref(o, l, &R, 60, 5) < 1e-9);
    curv_opt_free(o);

    o = MK(CURV_OPT_MBAG, l, {"lr", 0.01}, {"beta", 0.5}, {"tau", 4}, {"t_sqr", 3}, {"t_ns", 30},
           {"lambda", 0.2});
    R = (struct ref){.kind = R_SM, .lr = 0.01, .lambda = 0.2, .beta = 0.5, .t_sqr = 3};
    assert_true(run_vs_ref(o, l, &R, 40, 6) < 1e-9);
    curv_opt_free(o);

    o = MK(CURV_OPT_MBAG_EMA, l, {"lr", 0.01}, {"beta", 0.9}, {"tau", 4}, {"t_sqr", 2},
           {"t_ns", 30}, {"alpha", 0.95}, {"delta", 1e-2});
    R = (struct ref){.kind = R_EMA,
                     .lr = 0.01,
                     .lambda = 0.01,
                     .beta = 0.9,
                     .alpha = 0.95,
                     .delta = 1e-2,
                     .t_sqr = 2};
    assert_true(run_vs_ref(o, l, &R, 40, 7) < 1e-9);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* Between refreshes P is held: steps 1..T_sqr-1 use λ^-1/2 I exactly, step
 * T_sqr the fresh root, later steps that root rather than the current one. */
static void hold_case(curv_opt_kind kind, int rkind)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    const double lam = 0.04, lr = 0.3;
    curv_opt *o = kind == CURV_OPT_MBAG
                      ? MK(kind, l, {"lr", lr}, {"lambda", lam}, {"beta", 0}, {"tau", 4},
                           {"t_sqr", 5}, {"t_ns", 30})
                      : MK(kind, l, {"lr", lr}, {"lambda", lam}, {"beta", 0}, {"tau", 4},
                           {"t_sqr", 5}, {"t_ns", 30}, {"alpha", 0.8}, {"delta", 1e-3});
    static struct ref R, E; /* R holds P like the paper; E refreshes every step */
    R = (struct ref){
        .kind = rkind, .lr = lr, .lambda = lam, .alpha = 0.8, .delta = 1e-3, .t_sqr = 5};
    E = R;
    E.t_sqr = 1;
    ref_init(&R, rkind, l, 4, 0);
    ref_init(&E, rkind, l, 4, 0);
    tu_rng rng;
    tu_rng_seed(&rng, 8);
    double g[43], u[43], want[43], fresh[43];
    for (int s = 1; s <= 9; s++) {
        tu_fill_normal(&rng, g, 43, 1.0);
        tu_step_ok(o, g, NULL, u);
        ref_step(&R, g, want);
        ref_step(&E, g, fresh);
        if (s < 5)
            for (size_t k = 0; k < 43; k++)
                assert_true(fabs(u[k] + lr * (g[k] / sqrt(lam))) <= 1e-14 * fabs(u[k]));
        assert_true(tu_rel_err(u, want, 43) < 1e-9);
        if (s != 5)
            assert_true(tu_rel_err(u, fresh, 43) > 1e-3); /* holding is visible */
        else
            assert_true(tu_rel_err(u, fresh, 43) < 1e-9);
    }
    curv_opt_free(o);
    curv_layout_free(l);
}

static void test_tsqr_holds_p(void **state)
{
    (void)state;
    hold_case(CURV_OPT_MBAG, R_SM);
    hold_case(CURV_OPT_MBAG_EMA, R_EMA);
}

/* ---- grouping ---- */

/* After mixing steps every H block is dense, so a gradient on one element k
 * moves exactly the members of k's group (MBAG-N, β = 0: Δ = -η H_new e_k). */
static void assert_groups_by_probing(const curv_layout *l, const struct groups *G, const tu_kv *cfg,
                                     size_t ncfg)
{
    size_t d = curv_layout_dim(l);
    tu_kv all[8] = {{"beta", 0}};
    assert_true(ncfg < 8);
    memcpy(all + 1, cfg, ncfg * sizeof *cfg);
    curv_opt *o = tu_opt_with(CURV_OPT_MBAG_N, l, all, ncfg + 1);
    tu_rng rng;
    tu_rng_seed(&rng, 9);
    double g[256], u[256];
    for (int s = 0; s < 10; s++) {
        tu_fill_normal(&rng, g, d, 1.0);
        tu_step_ok(o, g, NULL, u);
    }
    for (size_t i = 0; i < G->ng; i++)
        for (size_t p = G->start[i]; p < G->start[i + 1]; p++) {
            memset(g, 0, d * sizeof(double));
            g[G->idx[p]] = 1.0;
            tu_step_ok(o, g, NULL, u);
            for (size_t j = 0; j < d; j++) {
                int member = 0;
                for (size_t q = G->start[i]; q < G->start[i + 1]; q++)
                    member |= G->idx[q] == j;
                if (member != (u[j] != 0.0))
                    fail_msg("probe %zu: element %zu %s", G->idx[p], j,
                             member ? "of its group did not move" : "outside its group moved");
            }
        }
    curv_opt_free(o);
}

static void expect_group(const struct groups *G, size_t i, const size_t *flat, size_t n)
{
    assert_int_equal(G->start[i + 1] - G->start[i], n);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(G->idx[G->start[i] + k], flat[k]);
}

/* Dense 3x5 + bias, τ = 4: weight chunks 4, 4, 4, 3 of vec(W^T) (crossing
 * rows), then the bias column (flat 5, 11, 17) as a group of 3. */
static void test_groups_dense(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 3, 5, 1, NULL), CURV_OK);
    struct groups G;
    groups_of(l, 4, 0, &G);
    assert_int_equal(G.ng, 5);
    expect_group(&G, 0, (const size_t[]){0, 1, 2, 3}, 4);
    expect_group(&G, 1, (const size_t[]){4, 6, 7, 8}, 4);
    expect_group(&G, 2, (const size_t[]){9, 10, 12, 13}, 4);
    expect_group(&G, 3, (const size_t[]){14, 15, 16}, 3);
    expect_group(&G, 4, (const size_t[]){5, 11, 17}, 3);
    assert_groups_by_probing(l, &G, (const tu_kv[]){{"tau", 4}}, 1);
    curv_layout_free(l);
}

/* Conv 2 x 3 x 3x3 + bias: κ² = 9 gives one group per (out, in) filter pair
 * (6 groups of 9; rows are 28 wide), the two biases one group (τ = 4 does
 * not divide 27 nor matter for the weights). */
static void test_groups_conv(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_conv2d(l, "cv", 2, 3, 3, 3, 1, NULL), CURV_OK);
    struct groups G;
    groups_of(l, 4, 0, &G);
    assert_int_equal(G.ng, 7);
    for (size_t r = 0; r < 2; r++)
        for (size_t ci = 0; ci < 3; ci++) {
            size_t f[9];
            for (size_t k = 0; k < 9; k++)
                f[k] = r * 28 + ci * 9 + k;
            expect_group(&G, r * 3 + ci, f, 9);
        }
    expect_group(&G, 6, (const size_t[]){27, 55}, 2);
    assert_groups_by_probing(l, &G, (const tu_kv[]){{"tau", 4}}, 1);

    /* A fixed conv_tau = 4 chunks the 54 weights 13 x 4 + 2, crossing rows:
     * chunk 6 is weights 24..27 = flat 24, 25, 26 and 28 (row 1 starts at 28). */
    groups_of(l, 5, 4, &G);
    assert_int_equal(G.ng, 15);
    expect_group(&G, 6, (const size_t[]){24, 25, 26, 28}, 4);
    expect_group(&G, 13, (const size_t[]){53, 54}, 2);
    expect_group(&G, 14, (const size_t[]){27, 55}, 2);
    assert_groups_by_probing(l, &G, (const tu_kv[]){{"tau", 5}, {"conv_tau", 4}}, 2);
    curv_layout_free(l);
}

/* No bias anywhere (the identity permutation), several blocks, kh != kw, and
 * a τ larger than a block (one group holds the whole block). */
static void test_groups_no_bias_and_mixed(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "v", 10, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "d", 2, 3, 0, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_conv2d(l, "c", 1, 2, 3, 2, 0, NULL), CURV_OK);
    struct groups G;
    groups_of(l, 4, 0, &G);
    expect_group(&G, 0, (const size_t[]){0, 1, 2, 3}, 4);
    expect_group(&G, 2, (const size_t[]){8, 9}, 2);
    expect_group(&G, 3, (const size_t[]){10, 11, 12, 13}, 4);
    expect_group(&G, 4, (const size_t[]){14, 15}, 2);
    expect_group(&G, 5, (const size_t[]){16, 17, 18, 19, 20, 21}, 6);
    assert_int_equal(G.ng, 7);
    assert_groups_by_probing(l, &G, (const tu_kv[]){{"tau", 4}}, 1);
    groups_of(l, 100, 0, &G);
    assert_groups_by_probing(l, &G, (const tu_kv[]){{"tau", 100}}, 1);
    curv_layout_free(l);

    l = tu_mixed_layout(&MIXED);
    groups_of(l, 3, 5, &G);
    assert_groups_by_probing(l, &G, (const tu_kv[]){{"tau", 3}, {"conv_tau", 5}}, 2);
    curv_layout_free(l);
}

/* ---- save / load ---- */

static void save_load_case(curv_opt_kind kind)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    const tu_kv cfg[] = {{"tau", 4}, {"beta", 0.9}, {"t_sqr", 4}, {"lr", 0.05}};
    const size_t ncfg = kind == CURV_OPT_MBAG_N ? 2 : 4;
    curv_opt *a = tu_opt_with(kind, l, cfg, ncfg), *b = tu_opt_with(kind, l, cfg, ncfg), *c = NULL;
    tu_rng rng;
    tu_rng_seed(&rng, 10);
    double g[43], ua[43], ub[43];
    for (int s = 1; s <= 20; s++) {
        tu_fill_normal(&rng, g, 43, 1.0);
        tu_step_ok(a, g, NULL, ua);
        tu_step_ok(s <= 6 ? b : c, g, NULL, ub);
        assert_memory_equal(ua, ub, sizeof ua);
        if (s == 6) { /* b is saved, dropped, and continues as c */
            size_t len;
            unsigned char *blob = tu_snapshot(b, &len);
            curv_error err;
            tu_assert_status(curv_opt_load(blob, len, &c, &err), CURV_OK, &err);
            tu_assert_unchanged(c, blob, len);
            curv_free(blob);
            curv_opt_free(b);
            assert_int_equal(curv_opt_steps(c), 6);
        }
    }
    curv_opt_free(a);
    curv_opt_free(c);
    curv_layout_free(l);
}

static void test_save_load_bit_identical(void **state)
{
    (void)state;
    save_load_case(CURV_OPT_MBAG);
    save_load_case(CURV_OPT_MBAG_EMA);
    save_load_case(CURV_OPT_MBAG_N);
}

/* Offset of the MBAG state section (its "MBAG" tag) in a blob. */
static size_t mbag_section(const unsigned char *blob, size_t len)
{
    for (size_t i = 24; i + 4 <= len; i++)
        if (memcmp(blob + i, "MBAG", 4) == 0)
            return i;
    fail_msg("no MBAG section");
    return 0;
}

/* Load a copy of @blob with bytes [@at, @at+@n) replaced and the CRC fixed:
 * it must be rejected as corrupt. */
static void expect_corrupt(const unsigned char *blob, size_t len, size_t at, const void *bytes,
                           size_t n)
{
    unsigned char *copy = tu_memdup(blob, len);
    memcpy(copy + at, bytes, n);
    tu_reseal(copy, len);
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_load(copy, len, &o, &err), CURV_E_CORRUPT, &err);
    assert_null(o);
    free(copy);
}

static void corrupt_case(curv_opt_kind kind)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *o = MK(kind, l, {"tau", 4}, {"lambda", 0.25});
    double g[43], u[43];
    tu_rng rng;
    tu_rng_seed(&rng, 11);
    for (int s = 0; s < 3; s++) {
        tu_fill_normal(&rng, g, 43, 1.0);
        tu_step_ok(o, g, NULL, u);
    }
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len);
    size_t sec = mbag_section(blob, len), hdr = 36, first = sec + hdr; /* A[0][0] */
    struct groups G;
    groups_of(l, 4, 0, &G);
    size_t nmat = 0;
    for (size_t i = 0; i < G.ng; i++)
        nmat += (G.start[i + 1] - G.start[i]) * (G.start[i + 1] - G.start[i]);
    size_t npool = kind == CURV_OPT_MBAG_N ? 1 : 2, vat = first + 8 * nmat * npool;
    assert_int_equal(len, vat + 8 * 43 + 4);

    const double nan = NAN, big = 9.0 /* > 2/λ = 8 for H */, neg = -1.0;
    const uint32_t badver = 99;
    const uint64_t badcount = 12345;
    expect_corrupt(blob, len, sec + 4, &badver, 4);
    expect_corrupt(blob, len, sec + 12, &badcount, 8); /* group count */
    expect_corrupt(blob, len, first, &nan, 8);         /* H or G */
    expect_corrupt(blob, len, first + 8, kind == CURV_OPT_MBAG_EMA ? &big : &nan, 8);
    expect_corrupt(blob, len, vat + 8 * 40, &nan, 8); /* momentum */
    if (kind == CURV_OPT_MBAG_EMA)
        expect_corrupt(blob, len, first, &neg, 8); /* negative diagonal of G */
    else
        expect_corrupt(blob, len, first + 8, &big, 8); /* H beyond 2/λ */
    if (npool == 2)
        expect_corrupt(blob, len, first + 8 * nmat, &nan, 8); /* P */

    curv_opt *back = NULL; /* truncation, caught by the frame or by our reads */
    curv_error err;
    tu_assert_status(curv_opt_load(blob, len - 12, &back, &err), CURV_E_CORRUPT, &err);
    curv_free(blob);
    curv_opt_free(o);
    curv_layout_free(l);
}

static void test_load_rejects_corrupt_state(void **state)
{
    (void)state;
    corrupt_case(CURV_OPT_MBAG);
    corrupt_case(CURV_OPT_MBAG_EMA);
    corrupt_case(CURV_OPT_MBAG_N);
}

/* ---- error paths ---- */

/* A gradient so large that eq. 4's denominator (or αG + (1-α)gg^T)
 * overflows: CURV_E_NONFINITE (the input is too large) naming the block, nothing changes, and the
 * next good step equals that of a twin that never saw the bad one. */
static void overflow_case(curv_opt_kind kind, double huge)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *o = MK(kind, l, {"tau", 4}), *twin = MK(kind, l, {"tau", 4});
    tu_rng rng;
    tu_rng_seed(&rng, 12);
    double g[43], u[43], u2[43];
    for (int s = 0; s < 3; s++) {
        tu_fill_normal(&rng, g, 43, 1.0);
        tu_step_ok(o, g, NULL, u);
        tu_step_ok(twin, g, NULL, u2);
    }
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    tu_fill_normal(&rng, g, 43, 1.0);
    g[40] = huge; /* in block "gain" */
    for (size_t k = 0; k < 43; k++)
        u[k] = 12345.0;
    curv_error err;
    tu_assert_status(tu_step(o, g, NULL, u, &err), CURV_E_NONFINITE, &err);
    assert_non_null(strstr(err.text, "'gain'"));
    for (size_t k = 0; k < 43; k++)
        assert_true(u[k] == 12345.0);
    tu_assert_unchanged(o, snap, len);
    assert_int_equal(curv_opt_steps(o), 3);
    g[40] = 0.5;
    tu_step_ok(o, g, NULL, u);
    tu_step_ok(twin, g, NULL, u2);
    assert_memory_equal(u, u2, sizeof u);
    curv_free(snap);
    curv_opt_free(o);
    curv_opt_free(twin);
    curv_layout_free(l);
}

static void test_step_overflow_leaves_state(void **state)
{
    (void)state;
    overflow_case(CURV_OPT_MBAG, 1e300);
    overflow_case(CURV_OPT_MBAG_N, 1e300);
    overflow_case(CURV_OPT_MBAG_EMA, 1e200);
}

/* Non-finite input is refused by the front end before the optimizer. */
static void test_nonfinite_grad_leaves_state(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *o = MK(CURV_OPT_MBAG, l, {"tau", 4});
    double g[43] = {0}, u[43];
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    g[7] = NAN;
    curv_error err;
    tu_assert_status(tu_step(o, g, NULL, u, &err), CURV_E_NONFINITE, &err);
    tu_assert_unchanged(o, snap, len);
    curv_free(snap);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* A group whose G decays to exactly zero (δ = 0, no gradient for ~1100
 * steps) keeps its last P instead of dividing by ‖G‖_F = 0; steps stay
 * finite, also when the gradient comes back. */
static void test_ema_decayed_group(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "live", 3, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "idle", 3, NULL), CURV_OK);
    curv_opt *o = MK(CURV_OPT_MBAG_EMA, l, {"tau", 3}, {"alpha", 0.5}, {"lambda", 1}, {"delta", 0},
                     {"t_sqr", 1}, {"t_ns", 5});
    tu_rng rng;
    tu_rng_seed(&rng, 13);
    double g[6], u[6];
    for (int s = 0; s < 1100; s++) {
        tu_fill_normal(&rng, g, 3, 1.0);
        g[3] = g[4] = g[5] = 0;
        tu_step_ok(o, g, NULL, u);
        assert_true(u[3] == 0 && u[4] == 0 && u[5] == 0);
    }
    tu_fill_normal(&rng, g, 6, 1.0);
    tu_step_ok(o, g, NULL, u);
    for (size_t k = 0; k < 6; k++)
        assert_true(isfinite(u[k]));
    curv_opt_free(o);
    curv_layout_free(l);
}

/* init refuses group matrices whose size overflows, naming the block. */
static void test_init_range(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "small", 4, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "huge", (size_t)1 << 33, NULL), CURV_OK);
    curv_config *c = curv_config_new();
    curv_error err;
    assert_int_equal(curv_config_set_num(c, "tau", (double)((size_t)1 << 33), &err), CURV_OK);
    const curv_opt_kind kinds[] = {CURV_OPT_MBAG, CURV_OPT_MBAG_EMA, CURV_OPT_MBAG_N};
    for (size_t k = 0; k < 3; k++) {
        curv_opt *o = NULL;
        tu_assert_status(curv_opt_new(kinds[k], l, c, &o, &err), CURV_E_RANGE, &err);
        assert_null(o);
        assert_non_null(strstr(err.text, "'huge'"));
    }
    curv_config_free(c);
    curv_layout_free(l);
}

static void expect_config_error(curv_opt_kind kind, const char *key, double num, const char *str)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_config *c = curv_config_new();
    tu_config_set(c, key, num, str);
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_new(kind, l, c, &o, &err), CURV_E_CONFIG, &err);
    assert_null(o);
    assert_non_null(strstr(err.text, key));
    curv_config_free(c);
    curv_layout_free(l);
}

static void test_config_errors(void **state)
{
    (void)state;
    const curv_opt_kind all[] = {CURV_OPT_MBAG, CURV_OPT_MBAG_EMA, CURV_OPT_MBAG_N};
    for (size_t k = 0; k < 3; k++) {
        expect_config_error(all[k], "no_such_key", 1, NULL);
        expect_config_error(all[k], "lambda", 0, NULL);
        expect_config_error(all[k], "lambda", -1, NULL);
        expect_config_error(all[k], "beta", 1.5, NULL);
        expect_config_error(all[k], "beta", -0.1, NULL);
        expect_config_error(all[k], "tau", 0, NULL);
        expect_config_error(all[k], "tau", 2.5, NULL);
        expect_config_error(all[k], "conv_tau", -1, NULL);
        expect_config_error(all[k], "lr", -1, NULL);
        expect_config_error(all[k], "lr_schedule", 0, "bogus");
        expect_config_error(all[k], "tau", 0, "32"); /* wrong type */
    }
    for (size_t k = 0; k < 2; k++) {
        expect_config_error(all[k], "t_sqr", 0, NULL);
        expect_config_error(all[k], "t_ns", 0, NULL);
        expect_config_error(all[k], "t_ns", 101, NULL);
    }
    /* Each kind has only its own hyperparameters. */
    expect_config_error(CURV_OPT_MBAG, "alpha", 0.9, NULL);
    expect_config_error(CURV_OPT_MBAG, "delta", 0, NULL);
    expect_config_error(CURV_OPT_MBAG_EMA, "symmetrize_every", 10, NULL);
    expect_config_error(CURV_OPT_MBAG_N, "t_sqr", 10, NULL);
    expect_config_error(CURV_OPT_MBAG_N, "t_ns", 5, NULL);
    expect_config_error(CURV_OPT_MBAG_N, "alpha", 0.9, NULL);
    expect_config_error(CURV_OPT_MBAG_EMA, "alpha", 1.5, NULL);
    expect_config_error(CURV_OPT_MBAG_EMA, "delta", -1, NULL);
    expect_config_error(CURV_OPT_MBAG, "symmetrize_every", -1, NULL);
}

/* The documented defaults (paper §VI where it gives them). */
static void test_defaults(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    struct {
        curv_opt_kind kind;
        const char *name;
        double want;
    } const cases[] = {
        {CURV_OPT_MBAG, "lr", 0.01},
        {CURV_OPT_MBAG, "lambda", 0.01},
        {CURV_OPT_MBAG, "beta", 0.9},
        {CURV_OPT_MBAG, "t_sqr", 50},
        {CURV_OPT_MBAG, "t_ns", 5},
        {CURV_OPT_MBAG, "tau", 32},
        {CURV_OPT_MBAG, "conv_tau", 0},
        {CURV_OPT_MBAG_EMA, "alpha", 0.99},
        {CURV_OPT_MBAG_EMA, "t_sqr", 50},
        {CURV_OPT_MBAG_N, "beta", 0.9},
        {CURV_OPT_MBAG_N, "symmetrize_every", 100},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        curv_opt *o = tu_new_opt(cases[i].kind, l, NULL);
        double v;
        assert_int_equal(curv_opt_get_param(o, cases[i].name, &v), CURV_OK);
        assert_true(v == cases[i].want);
        curv_opt_free(o);
    }
    /* Every parameter is documented and its default lies in its range. */
    const curv_opt_kind all[] = {CURV_OPT_MBAG, CURV_OPT_MBAG_EMA, CURV_OPT_MBAG_N};
    for (size_t k = 0; k < 3; k++)
        for (size_t i = 0; i < curv_opt_param_count(all[k]); i++) {
            curv_param_info p;
            assert_int_equal(curv_opt_param_info(all[k], i, &p), CURV_OK);
            assert_true(p.doc && strlen(p.doc) > 10);
            if (p.type == CURV_PARAM_REAL || p.type == CURV_PARAM_INT)
                assert_true(p.def >= p.min && p.def <= p.max);
        }
    curv_layout_free(l);
}

/* float32 gradients give the rounded float64 update. */
static void test_f32(void **state)
{
    (void)state;
    curv_layout *l = tu_mixed_layout(&MIXED);
    curv_opt *a = MK(CURV_OPT_MBAG, l, {"tau", 4}, {"t_sqr", 2});
    curv_opt *b = MK(CURV_OPT_MBAG, l, {"tau", 4}, {"t_sqr", 2});
    tu_rng rng;
    tu_rng_seed(&rng, 14);
    double g[43], u[43];
    float gf[43], uf[43];
    for (int s = 0; s < 4; s++) {
        for (size_t k = 0; k < 43; k++) {
            gf[k] = (float)tu_normal(&rng);
            g[k] = gf[k];
        }
        tu_step_ok(a, g, NULL, u);
        curv_step_input in = {
            .grad = gf, .len = curv_layout_dim(curv_opt_layout(b)), .dtype = CURV_F32};
        curv_error err;
        tu_assert_status(curv_opt_step(b, &in, uf, NULL, &err), CURV_OK, &err);
        for (size_t k = 0; k < 43; k++)
            assert_true(uf[k] == (float)u[k]);
    }
    curv_opt_free(a);
    curv_opt_free(b);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_n_inverse_matches_dense),
        cmocka_unit_test(test_sqrt_converged),
        cmocka_unit_test(test_ns_iteration_count),
        cmocka_unit_test(test_ema_matches_dense),
        cmocka_unit_test(test_momentum),
        cmocka_unit_test(test_tsqr_holds_p),
        cmocka_unit_test(test_groups_dense),
        cmocka_unit_test(test_groups_conv),
        cmocka_unit_test(test_groups_no_bias_and_mixed),
        cmocka_unit_test(test_save_load_bit_identical),
        cmocka_unit_test(test_load_rejects_corrupt_state),
        cmocka_unit_test(test_step_overflow_leaves_state),
        cmocka_unit_test(test_nonfinite_grad_leaves_state),
        cmocka_unit_test(test_ema_decayed_group),
        cmocka_unit_test(test_init_range),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_f32),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
