/* SPDX-License-Identifier: MIT */
/* AdaGrad-diag, AdaGrad-full and AdaGrad-BMA against dense references
 * computed here: the formulas of ALGORITHMS.md §1.5-1.7 and the BMA
 * paper's Algorithm 1 (eqs. 22-27), with tu_sym_pow (Jacobi, no LAPACK)
 * for every matrix power. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define DMAX 32
#define LMAX 16

/* A layout of vector blocks "v0", "v1", ... of the given sizes. */
static curv_layout *vectors(const size_t *s, size_t L)
{
    curv_layout *l = curv_layout_new();
    char name[24];
    for (size_t i = 0; i < L; i++) {
        snprintf(name, sizeof name, "v%zu", i);
        assert_int_equal(curv_layout_add_vector(l, name, s[i], NULL), CURV_OK);
    }
    return l;
}

/* Create @kind on @l with lr, eps and optional extra settings. */
static curv_opt *make(curv_opt_kind kind, const curv_layout *l, double lr, double eps,
                      const char *k1, double v1, const char *k2, const char *s2)
{
    const tu_kv kv[] = {{"lr", lr}, {"eps", eps}};
    curv_config *c = tu_config(kv, 2);
    /* The exact-math checks run without the eigenvalue clamp; the clamp has
     * its own test (test_bma_eig_floor). */
    if (kind == CURV_OPT_ADAGRAD_BMA && !(k1 && strcmp(k1, "eig_floor") == 0))
        tu_config_set(c, "eig_floor", 0.0, NULL);
    if (k1)
        tu_config_set(c, k1, v1, NULL);
    if (k2)
        tu_config_set(c, k2, 0, s2);
    curv_opt *o = tu_new_opt(kind, l, c);
    curv_config_free(c);
    return o;
}

/* Gradients with strong, block-structured correlation: a shared factor
 * times a per-block weight, plus noise, so that U and X are far from 0. */
static void corr_grad(tu_rng *rng, const size_t *start, size_t L, double *g)
{
    static const double w[] = {1.0, -0.8, 0.6, 1.3, -1.1, 0.4, 0.9};
    double a = tu_normal(rng);
    for (size_t i = 0; i < L; i++)
        for (size_t m = start[i]; m < start[i + 1]; m++)
            g[m] = a * w[i % 7] * (1 + 0.2 * (double)(m % 3)) + 0.5 * tu_normal(rng);
}

static void test_diag_formula(void **state)
{
    (void)state;
    const size_t s[] = {3, 4};
    curv_layout *l = vectors(s, 2);
    const double lr = 0.3, eps = 1e-3;
    curv_opt *o = make(CURV_OPT_ADAGRAD_DIAG, l, lr, eps, NULL, 0, NULL, NULL);
    tu_rng rng;
    tu_rng_seed(&rng, 11);
    double g[7], u[7], want[7], r[7] = {0};
    for (int t = 1; t <= 8; t++) {
        tu_fill_normal(&rng, g, 7, t == 3 ? 0.0 : 1.0); /* one all-zero gradient */
        for (size_t i = 0; i < 7; i++) {
            r[i] += g[i] * g[i];
            want[i] = -lr * g[i] / sqrt(r[i] + eps);
        }
        tu_step_ok(o, g, NULL, u);
        tu_expect_close(u, want, 7, 1e-15, "adagrad_diag", t);
    }
    curv_opt_free(o);
    curv_layout_free(l);
}

static void test_full_dense_reference(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "a", 2, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "b", 1, 3, 1, NULL), CURV_OK);
    const size_t d = 6;
    const double lr = 0.1, eps = 1e-4;
    curv_opt *o = make(CURV_OPT_ADAGRAD_FULL, l, lr, eps, NULL, 0, NULL, NULL);
    tu_rng rng;
    tu_rng_seed(&rng, 12);
    double *H = tu_alloc(d * d), *P = tu_alloc(d * d), *Pi = tu_alloc(d * d);
    double g[6], u[6], want[6];
    for (int t = 1; t <= 10; t++) {
        tu_fill_normal(&rng, g, d, 1.0);
        g[5] += g[0]; /* some correlation */
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d; j++) {
                H[i * d + j] += g[i] * g[j];
                P[i * d + j] = H[i * d + j] + (i == j ? eps : 0);
            }
        tu_sym_pow(d, P, -0.5, 0.0, Pi);
        tu_matmul(d, d, 1, Pi, g, want);
        for (size_t i = 0; i < d; i++)
            want[i] *= -lr;
        tu_step_ok(o, g, NULL, u);
        tu_expect_close(u, want, d, 1e-9, "adagrad_full", t);
    }
    free(H);
    free(P);
    free(Pi);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* eps must be > 0 for every AdaGrad kind: with eps = 0 a coordinate whose
 * gradient has always been 0 would get 0/0. */
static void test_eps_zero_refused(void **state)
{
    (void)state;
    const size_t s[] = {3};
    curv_layout *l = vectors(s, 1);
    const curv_opt_kind kinds[] = {CURV_OPT_ADAGRAD_DIAG, CURV_OPT_ADAGRAD_FULL,
                                   CURV_OPT_ADAGRAD_BMA};
    for (size_t k = 0; k < 3; k++) {
        curv_config *c = curv_config_new();
        assert_int_equal(curv_config_set_num(c, "eps", 0.0, NULL), CURV_OK);
        curv_opt *o = NULL;
        curv_error err;
        tu_assert_status(curv_opt_new(kinds[k], l, c, &o, &err), CURV_E_CONFIG, &err);
        assert_null(o);
        assert_non_null(strstr(err.text, "eps"));
        curv_config_free(c);
    }
    curv_layout_free(l);
}

/* With d = 1 full AdaGrad and diagonal AdaGrad are the same method. */
static void test_full_d1_is_diag(void **state)
{
    (void)state;
    const size_t s[] = {1};
    curv_layout *l = vectors(s, 1);
    curv_opt *f = make(CURV_OPT_ADAGRAD_FULL, l, 0.2, 1e-6, NULL, 0, NULL, NULL);
    curv_opt *dg = make(CURV_OPT_ADAGRAD_DIAG, l, 0.2, 1e-6, NULL, 0, NULL, NULL);
    for (int t = 1; t <= 6; t++) {
        double g = sin(3.0 * t), uf, ud;
        tu_step_ok(f, &g, NULL, &uf);
        tu_step_ok(dg, &g, NULL, &ud);
        tu_expect_close(&uf, &ud, 1, 1e-13, "full d=1 vs diag", t);
    }
    curv_opt_free(f);
    curv_opt_free(dg);
    curv_layout_free(l);
}

static void test_full_max_dim(void **state)
{
    (void)state;
    const size_t s10[] = {4, 6}, s5[] = {5};
    curv_layout *l10 = vectors(s10, 2), *l5 = vectors(s5, 1);
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "max_dim", 5, NULL), CURV_OK);
    curv_opt *sentinel = (curv_opt *)&c, *o = sentinel;
    curv_error err;
    tu_assert_status(curv_opt_new(CURV_OPT_ADAGRAD_FULL, l10, c, &o, &err), CURV_E_RANGE, &err);
    assert_ptr_equal(o, sentinel);
    if (!strstr(err.text, "max_dim") || !strstr(err.text, "5") || !strstr(err.text, "10"))
        fail_msg("text should name d = 10 and the limit max_dim = 5: %s", err.text);
    tu_assert_status(curv_opt_new(CURV_OPT_ADAGRAD_FULL, l5, c, &o, &err), CURV_OK, &err);
    curv_opt_free(o);
    /* The default limit, 4096, refuses 4097 parameters before allocating. */
    const size_t big[] = {4097};
    curv_layout *lb = vectors(big, 1);
    o = sentinel;
    tu_assert_status(curv_opt_new(CURV_OPT_ADAGRAD_FULL, lb, NULL, &o, &err), CURV_E_RANGE, &err);
    assert_non_null(strstr(err.text, "4096"));
    assert_ptr_equal(o, sentinel);
    curv_layout_free(lb);
    curv_config_free(c);
    curv_layout_free(l5);
    curv_layout_free(l10);
}

/*
 * Reference AdaGrad-BMA, Algorithm 1, computed two independent ways:
 *  (a) the L x L route of the paper: z, u, v, U, X (eq. 26), M = I + X,
 *      M^-1/2, D (eq. 27), then line 18 with u (literal) or with the block
 *      sums u' of Z^-1/2 g (scaled);
 *  (b) dense d x d: F = I + B̄ formed entry by entry, F^-1/2 by Jacobi, and
 *      Δ = −η Z^-1/2 F^-1/2 Z^-1/2 g (scaled) or
 *      Δ = −η Z^-1/2 (Z^-1/2 g + (F^-1/2 − I) g) (literal; D̄ = F^-1/2 − I
 *      by Theorem 2, and (D̄ g)_m = Σ_j D_b(m)j u_j is line 18 as printed).
 * D (both forms) is refreshed on steps 1, 1 + k, 1 + 2k, ...
 */
struct bref {
    size_t d, L, start[LMAX + 1];
    double lr, eps, floor, min_eig;
    int literal, interval, t;
    double r[DMAX], U[LMAX * LMAX], D[LMAX * LMAX], Dbar[DMAX * DMAX];
};

static void bref_init(struct bref *b, const size_t *s, size_t L, double lr, double eps, int literal,
                      int interval, double floor)
{
    memset(b, 0, sizeof *b);
    b->L = L, b->lr = lr, b->eps = eps, b->literal = literal, b->interval = interval;
    b->floor = floor, b->min_eig = INFINITY;
    assert_true(L <= LMAX);
    for (size_t i = 0; i < L; i++)
        b->start[i + 1] = b->start[i] + s[i];
    b->d = b->start[L];
    assert_true(b->d <= DMAX);
}

static void bref_step(struct bref *b, const double *g, double *out_l, double *out_dense)
{
    const size_t d = b->d, L = b->L;
    double z[DMAX], u[LMAX], us[LMAX], v[LMAX], c[LMAX];
    size_t blk[DMAX];
    b->t++;
    for (size_t m = 0; m < d; m++) {
        b->r[m] += g[m] * g[m];
        z[m] = sqrt(b->r[m] + b->eps);
    }
    for (size_t i = 0; i < L; i++) {
        u[i] = us[i] = v[i] = 0;
        for (size_t m = b->start[i]; m < b->start[i + 1]; m++) {
            u[i] += g[m], us[i] += g[m] / sqrt(z[m]), v[i] += z[m];
            blk[m] = i;
        }
    }
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++)
            b->U[i * L + j] += u[i] * u[j];
    if ((b->t - 1) % b->interval == 0) {
        double *M = tu_alloc(L * L), *Mi = tu_alloc(L * L);
        double *F = tu_alloc(d * d), *Fi = tu_alloc(d * d);
        for (size_t i = 0; i < L; i++)
            for (size_t j = 0; j < L; j++)
                M[i * L + j] = i == j ? 1.0 : b->U[i * L + j] / (v[i] * v[j]);
        /* The clamp of eig_floor acts on eig(I + X), relative to its largest. */
        b->min_eig = fmin(b->min_eig, tu_sym_pow_rel(L, M, -0.5, b->floor, Mi));
        for (size_t i = 0; i < L; i++) {
            double si = (double)(b->start[i + 1] - b->start[i]);
            for (size_t j = 0; j < L; j++) {
                double sj = (double)(b->start[j + 1] - b->start[j]);
                b->D[i * L + j] = (Mi[i * L + j] - (i == j)) / sqrt(si * sj);
            }
        }
        for (size_t m = 0; m < d; m++)
            for (size_t n = 0; n < d; n++) {
                size_t i = blk[m], j = blk[n];
                double si = (double)(b->start[i + 1] - b->start[i]);
                double sj = (double)(b->start[j + 1] - b->start[j]);
                F[m * d + n] = (m == n) + (i == j ? 0.0 : M[i * L + j] / sqrt(si * sj));
            }
        /* F's other eigenvalues are 1 (within-block directions); the tests
         * keep floor * λmax below 1, so the same relative floor applies. */
        tu_sym_pow_rel(d, F, -0.5, b->floor, Fi);
        for (size_t m = 0; m < d; m++)
            for (size_t n = 0; n < d; n++)
                b->Dbar[m * d + n] = Fi[m * d + n] - (m == n);
        free(M), free(Mi), free(F), free(Fi);
    }
    /* (a) the L x L route. */
    for (size_t i = 0; i < L; i++) {
        c[i] = 0;
        for (size_t j = 0; j < L; j++)
            c[i] += b->D[i * L + j] * (b->literal ? u[j] : us[j]);
    }
    for (size_t m = 0; m < d; m++)
        out_l[m] = -b->lr * (g[m] / sqrt(z[m]) + c[blk[m]]) / sqrt(z[m]);
    /* (b) dense: x = Z^-1/2 g, y = x + D̄ (x or g), Δ = −η Z^-1/2 y. */
    double x[DMAX];
    for (size_t m = 0; m < d; m++)
        x[m] = g[m] / sqrt(z[m]);
    for (size_t m = 0; m < d; m++) {
        double y = x[m];
        for (size_t n = 0; n < d; n++)
            y += b->Dbar[m * d + n] * (b->literal ? g[n] : x[n]);
        out_dense[m] = -b->lr * y / sqrt(z[m]);
    }
}

/* Run the library and the reference for @steps steps on layout @l whose
 * BMA partition is @s (L blocks) with eigenvalue floor @floor; returns max
 * rel. deviation from diag, and in *min_eig (if not NULL) the smallest
 * eigenvalue of I + X met before clamping. */
static double check_bma_floor(const curv_layout *l, const size_t *s, size_t L, int literal,
                              int interval, const char *partition, int steps, uint64_t seed,
                              double floor, double *min_eig)
{
    const double lr = 0.07, eps = 1e-6;
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "lr", lr, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "eps", eps, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "literal_line18", literal, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "inv_interval", interval, NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "partition", partition, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "eig_floor", floor, NULL), CURV_OK);
    curv_opt *dg = make(CURV_OPT_ADAGRAD_DIAG, l, lr, eps, NULL, 0, NULL, NULL);
    curv_opt *o = tu_new_opt(CURV_OPT_ADAGRAD_BMA, l, c);
    struct bref *ref = malloc(sizeof *ref);
    assert_non_null(ref);
    bref_init(ref, s, L, lr, eps, literal, interval, floor);
    const size_t d = ref->d;
    assert_int_equal(curv_layout_dim(l), d);
    tu_rng rng;
    tu_rng_seed(&rng, seed);
    double g[DMAX], u[DMAX], ud[DMAX], wl[DMAX], wd[DMAX], dev = 0;
    char what[96];
    for (int t = 1; t <= steps; t++) {
        corr_grad(&rng, ref->start, L, g);
        tu_step_ok(o, g, NULL, u);
        tu_step_ok(dg, g, NULL, ud);
        bref_step(ref, g, wl, wd);
        snprintf(what, sizeof what, "bma %s L=%zu d=%zu literal=%d interval=%d", partition, L, d,
                 literal, interval);
        /* Step 1 has U = u uᵀ, and I + X is close to singular when every
         * block's gradient has one sign (condition numbers near 1e6), so the
         * tolerance allows for that; a wrong formula is off by O(1e-2). */
        tu_expect_close(wl, wd, d, 1e-8, "reference (a) vs (b)", t);
        tu_expect_close(u, wl, d, 1e-8, what, t);
        dev = fmax(dev, tu_rel_err(u, ud, d));
    }
    if (min_eig)
        *min_eig = ref->min_eig;
    free(ref);
    curv_opt_free(o);
    curv_opt_free(dg);
    curv_config_free(c);
    return dev;
}

static double check_bma(const curv_layout *l, const size_t *s, size_t L, int literal, int interval,
                        const char *partition, int steps, uint64_t seed)
{
    return check_bma_floor(l, s, L, literal, interval, partition, steps, seed, 0.0, NULL);
}

/* The eigenvalue clamp (text after eq. 27): with floor 0.3, eigenvalues of
 * I + X below 0.3·λmax are raised to it before the inverse root; the
 * reference clamps the same way. With L = 3, trace(I + X) = 3 gives
 * 1 <= λmax <= 3, so a smallest eigenvalue under 0.3 proves the clamp
 * acted, and 0.3·λmax <= 1 keeps F's within-block eigenvalues (1) above it. */
static void test_bma_eig_floor(void **state)
{
    (void)state;
    static const size_t s[] = {2, 5, 3};
    curv_layout *l = vectors(s, 3);
    for (int literal = 0; literal <= 1; literal++) {
        double min_eig = 0;
        check_bma_floor(l, s, 3, literal, 1, "block", 8, 70, 0.3, &min_eig);
        if (!(min_eig < 0.3))
            fail_msg("the data never brought eig(I + X) below the floor (min %g)", min_eig);
    }
    curv_layout_free(l);
}

static void test_bma_vector_partitions(void **state)
{
    (void)state;
    static const size_t p1[] = {2, 5, 3}, p2[] = {1, 1, 1}, p3[] = {7}, p4[] = {1, 4, 1, 9};
    const struct {
        const size_t *s;
        size_t L;
    } parts[] = {{p1, 3}, {p2, 3}, {p3, 1}, {p4, 4}};
    for (size_t k = 0; k < sizeof parts / sizeof parts[0]; k++) {
        curv_layout *l = vectors(parts[k].s, parts[k].L);
        for (int literal = 0; literal < 2; literal++) {
            double dev = check_bma(l, parts[k].s, parts[k].L, literal, 1, "block", 8, 20 + k);
            /* With several blocks the correction is far from negligible. */
            if (parts[k].L > 1 && dev < 1e-3)
                fail_msg("partition %zu: BMA within %g of diag; the test data is too weak", k, dev);
        }
        curv_layout_free(l);
    }
}

/* partition = "row": one block per output row of a dense layer (bias in
 * the row), one per vector block; "block" on the same layout for contrast. */
static void test_bma_row_partition(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 3, 4, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "g", 2, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_conv2d(l, "cv", 2, 1, 1, 2, 0, NULL), CURV_OK);
    static const size_t rows[] = {5, 5, 5, 2, 2, 2}, blocks[] = {15, 2, 4};
    for (int literal = 0; literal < 2; literal++) {
        check_bma(l, rows, 6, literal, 1, "row", 7, 30);
        check_bma(l, blocks, 3, literal, 1, "block", 7, 31);
    }
    curv_layout_free(l);
}

/* inv_interval = k: D is computed on steps 1, 1 + k, ... and held between,
 * while r and U advance every step. */
static void test_bma_inv_interval(void **state)
{
    (void)state;
    static const size_t s[] = {3, 2, 4};
    curv_layout *l = vectors(s, 3);
    for (int literal = 0; literal < 2; literal++)
        check_bma(l, s, 3, literal, 3, "block", 9, 40);
    /* The held D really differs from a fresh one on step 2. */
    curv_opt *a = make(CURV_OPT_ADAGRAD_BMA, l, 0.1, 1e-6, "inv_interval", 3, NULL, NULL);
    curv_opt *b = make(CURV_OPT_ADAGRAD_BMA, l, 0.1, 1e-6, "inv_interval", 1, NULL, NULL);
    size_t start[4] = {0, 3, 5, 9};
    tu_rng rng;
    tu_rng_seed(&rng, 41);
    double g[9], ua[9], ub[9];
    for (int t = 1; t <= 2; t++) {
        corr_grad(&rng, start, 3, g);
        tu_step_ok(a, g, NULL, ua);
        tu_step_ok(b, g, NULL, ub);
    }
    assert_true(tu_rel_err(ua, ub, 9) > 1e-3);
    curv_opt_free(a);
    curv_opt_free(b);
    curv_layout_free(l);
}

/* L = 1: X = U − diag(U) = 0, so D = 0 and the update is diag AdaGrad's. */
static void test_bma_single_block_is_diag(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 3, 4, 1, NULL), CURV_OK);
    for (int literal = 0; literal < 2; literal++) {
        curv_opt *b =
            make(CURV_OPT_ADAGRAD_BMA, l, 0.05, 1e-8, "literal_line18", literal, NULL, NULL);
        curv_opt *dg = make(CURV_OPT_ADAGRAD_DIAG, l, 0.05, 1e-8, NULL, 0, NULL, NULL);
        tu_rng rng;
        tu_rng_seed(&rng, 50);
        double g[15], ub[15], ud[15];
        for (int t = 1; t <= 12; t++) {
            tu_fill_normal(&rng, g, 15, 1.0 + t);
            tu_step_ok(b, g, NULL, ub);
            tu_step_ok(dg, g, NULL, ud);
            tu_expect_close(ub, ud, 15, 1e-14, "bma L=1 vs diag", t);
        }
        curv_opt_free(b);
        curv_opt_free(dg);
    }
    curv_layout_free(l);
}

/*
 * One-element blocks (s_i = 1). Then u = g, v = z, U = Σ g gᵀ = H, and
 * diag(U) = diag(H) = r, so with Z = diag(z), Z² = diag(r) + εI:
 *   I + X = I + Z^-1 (H − diag H) Z^-1
 *         = Z^-1 (Z² + H − diag H) Z^-1 = Z^-1 (H + εI) Z^-1.
 * With S = I, eq. 27 gives I + D = (I + X)^-1/2, and the scaled update is
 *   Δ = −η Z^-1/2 (Z^-1 (H + εI) Z^-1)^-1/2 Z^-1/2 g,
 * which keeps every off-diagonal entry of H: it is not diag AdaGrad. When
 * Z = cI it is exactly full AdaGrad, −η (H + εI)^-1/2 g; otherwise it
 * approximates it.
 */
static void bma_unit_blocks_run(int equal_scale, double *dev_diag, double *dev_full, double *err)
{
    enum { N = 4 };
    static const size_t s[N] = {1, 1, 1, 1};
    curv_layout *l = vectors(s, N);
    const double lr = 0.1, eps = 1e-3; /* keeps H + εI well conditioned at t = 1 */
    curv_opt *b = make(CURV_OPT_ADAGRAD_BMA, l, lr, eps, NULL, 0, NULL, NULL);
    curv_opt *dg = make(CURV_OPT_ADAGRAD_DIAG, l, lr, eps, NULL, 0, NULL, NULL);
    curv_opt *fu = make(CURV_OPT_ADAGRAD_FULL, l, lr, eps, NULL, 0, NULL, NULL);
    double H[N * N] = {0}, M[N * N], Mi[N * N], z[N], x[N], y[N], want[N];
    double g[N], ub[N], ud[N], uf[N];
    tu_rng rng;
    tu_rng_seed(&rng, 60 + (uint64_t)equal_scale);
    *dev_diag = *dev_full = *err = 0;
    for (int t = 1; t <= 12; t++) {
        double a = tu_normal(&rng);
        for (size_t m = 0; m < N; m++) {
            if (equal_scale) /* |g_m| equal across m: r_m all equal, Z = cI */
                g[m] = a * (tu_uniform(&rng) < (m == 0 ? 0.5 : 0.2) ? -1.0 : 1.0);
            else
                g[m] = a * (1.0 + (double)m) + 0.3 * tu_normal(&rng);
        }
        for (size_t m = 0; m < N; m++)
            for (size_t n = 0; n < N; n++)
                H[m * N + n] += g[m] * g[n];
        for (size_t m = 0; m < N; m++)
            z[m] = sqrt(H[m * N + m] + eps);
        for (size_t m = 0; m < N; m++)
            for (size_t n = 0; n < N; n++)
                M[m * N + n] = (H[m * N + n] + (m == n ? eps : 0)) / (z[m] * z[n]);
        tu_sym_pow(N, M, -0.5, 0.0, Mi);
        for (size_t m = 0; m < N; m++)
            x[m] = g[m] / sqrt(z[m]);
        tu_matmul(N, N, 1, Mi, x, y);
        for (size_t m = 0; m < N; m++)
            want[m] = -lr * y[m] / sqrt(z[m]);
        tu_step_ok(b, g, NULL, ub);
        tu_step_ok(dg, g, NULL, ud);
        tu_step_ok(fu, g, NULL, uf);
        *err = fmax(*err, tu_rel_err(ub, want, N));
        if (t > N) { /* once H has full rank */
            *dev_diag = fmax(*dev_diag, tu_rel_err(ub, ud, N));
            *dev_full = fmax(*dev_full, tu_rel_err(ub, uf, N));
        }
    }
    curv_opt_free(b);
    curv_opt_free(dg);
    curv_opt_free(fu);
    curv_layout_free(l);
}

static void test_bma_unit_blocks(void **state)
{
    (void)state;
    double dev_diag, dev_full, err;
    bma_unit_blocks_run(0, &dev_diag, &dev_full, &err);
    if (err > 1e-8)
        fail_msg("unit blocks: BMA vs Z^-1/2 (Z^-1 (H+eI) Z^-1)^-1/2 Z^-1/2 g: rel err %g", err);
    if (dev_diag < 1e-2)
        fail_msg("unit blocks: BMA should differ from diag, deviation only %g", dev_diag);
    print_message("unit blocks, unequal scales: |bma-diag| %.3g, |bma-full| %.3g\n", dev_diag,
                  dev_full);
    bma_unit_blocks_run(1, &dev_diag, &dev_full, &err);
    if (err > 1e-8)
        fail_msg("unit blocks, equal scales: rel err %g", err);
    if (dev_full > 1e-8 || dev_diag < 1e-2)
        fail_msg("unit blocks with Z = cI: want full AdaGrad (dev %g) and not diag (dev %g)",
                 dev_full, dev_diag);
}

static void test_bma_max_blocks(void **state)
{
    (void)state;
    static const size_t s[] = {2, 2, 2};
    curv_layout *l = vectors(s, 3);
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "max_blocks", 2, NULL), CURV_OK);
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_new(CURV_OPT_ADAGRAD_BMA, l, c, &o, &err), CURV_E_RANGE, &err);
    assert_non_null(strstr(err.text, "max_blocks"));
    assert_null(o);
    assert_int_equal(curv_config_set_num(c, "max_blocks", 3, NULL), CURV_OK);
    tu_assert_status(curv_opt_new(CURV_OPT_ADAGRAD_BMA, l, c, &o, &err), CURV_OK, &err);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diag_formula),
        cmocka_unit_test(test_eps_zero_refused),
        cmocka_unit_test(test_bma_eig_floor),
        cmocka_unit_test(test_full_dense_reference),
        cmocka_unit_test(test_full_d1_is_diag),
        cmocka_unit_test(test_full_max_dim),
        cmocka_unit_test(test_bma_vector_partitions),
        cmocka_unit_test(test_bma_row_partition),
        cmocka_unit_test(test_bma_inv_interval),
        cmocka_unit_test(test_bma_single_block_is_diag),
        cmocka_unit_test(test_bma_unit_blocks),
        cmocka_unit_test(test_bma_max_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
