/* SPDX-License-Identifier: MIT */
/* Block mean approximation against dense reference math written here:
 * expansions by hand from the BMA paper's definitions, matrix functions of
 * the expanded d x d matrix by the Jacobi reference in testutil. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

struct part {
    const size_t *s;
    size_t L;
};

static const size_t P_253[] = {2, 5, 3}, P_111[] = {1, 1, 1}, P_7[] = {7}, P_1419[] = {1, 4, 1, 9};
static const struct part parts[] = {{P_253, 3}, {P_111, 3}, {P_7, 1}, {P_1419, 4}};
#define NPARTS (sizeof parts / sizeof parts[0])

static size_t dim_of(const struct part *p)
{
    size_t d = 0;
    for (size_t i = 0; i < p->L; i++)
        d += p->s[i];
    return d;
}

/* Dense Λ̄ + B̄ straight from Definitions 1-2: entry (r, c) is b_ij for
 * r in block i and c in block j, plus λ_i on the diagonal. */
static double *hand_expand(const struct part *p, const double *lam, const double *B)
{
    size_t d = dim_of(p), r0 = 0;
    double *M = tu_alloc(d * d);
    for (size_t i = 0; i < p->L; r0 += p->s[i], i++) {
        size_t c0 = 0;
        for (size_t j = 0; j < p->L; c0 += p->s[j], j++)
            for (size_t r = r0; r < r0 + p->s[i]; r++)
                for (size_t c = c0; c < c0 + p->s[j]; c++)
                    M[r * d + c] = B[i * p->L + j] + (r == c ? lam[i] : 0.0);
    }
    return M;
}

static double *expand_of(const struct part *p, curv_bma *b)
{
    return hand_expand(p, curv_bma_lambda(b), curv_bma_matrix(b));
}

static double sq_diff(const double *A, const double *B, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (A[i] - B[i]) * (A[i] - B[i]);
    return s;
}

static curv_bma *new_bma(const struct part *p)
{
    curv_bma *b = NULL;
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv_bma_new(p->s, p->L, &b, err), CURV_OK, err);
    return b;
}

/* Positive definiteness by a plain Cholesky sweep. */
static int is_pd(size_t n, const double *A)
{
    double *C = tu_alloc(n * n);
    memcpy(C, A, n * n * sizeof(double));
    int ok = 1;
    for (size_t j = 0; j < n && ok; j++) {
        double dj = C[j * n + j];
        for (size_t k = 0; k < j; k++)
            dj -= C[j * n + k] * C[j * n + k];
        ok = dj > 0;
        C[j * n + j] = sqrt(fabs(dj));
        for (size_t i = j + 1; i < n && ok; i++) {
            double v = C[i * n + j];
            for (size_t k = 0; k < j; k++)
                v -= C[i * n + k] * C[j * n + k];
            C[i * n + j] = v / C[j * n + j];
        }
    }
    free(C);
    return ok;
}

/* Squared Frobenius error of M against the BMA (lam, B) after adding
 * scale * N(0, 1) to every parameter, or exactly @scale to parameter @only
 * when @only >= 0. */
static double perturbed_err(tu_rng *r, const struct part *p, const double *M, const double *lam,
                            const double *B, double scale, long only)
{
    size_t L = p->L, d = dim_of(p);
    double *l2 = tu_alloc(L), *B2 = tu_alloc(L * L);
    for (size_t k = 0; k < L + L * L; k++) {
        double delta = only < 0 ? scale * tu_normal(r) : (size_t)only == k ? scale : 0.0;
        if (k < L)
            l2[k] = lam[k] + delta;
        else
            B2[k - L] = B[k - L] + delta;
    }
    double *E = hand_expand(p, l2, B2);
    double e = sq_diff(M, E, d * d);
    free(E);
    free(l2);
    free(B2);
    return e;
}

/* Proposition 1: the fit beats every small perturbation in Frobenius
 * error, for an SPD and for a general (asymmetric) matrix. */
static void check_fit_optimal(const struct part *p, uint64_t seed)
{
    size_t d = dim_of(p), L = p->L;
    tu_rng r;
    tu_rng_seed(&r, seed);
    double *M = tu_alloc(d * d);
    for (int kind = 0; kind < 2; kind++) {
        if (kind == 0)
            tu_rand_spd(&r, d, 0.5, M);
        else
            tu_fill_normal(&r, M, d * d, 1.0);
        curv_bma *b = new_bma(p);
        curv_error errbuf, *err = &errbuf;
        tu_assert_status(curv_bma_fit(b, M, d, err), CURV_OK, err);
        const double *lam = curv_bma_lambda(b), *B = curv_bma_matrix(b);
        double *E = hand_expand(p, lam, B);
        double e0 = sq_diff(M, E, d * d);
        for (int t = 0; t < 300; t++) {
            double scale = t % 2 ? 1e-1 : 1e-3;
            assert_true(e0 < perturbed_err(&r, p, M, lam, B, scale, -1));
        }
        for (long k = 0; k < (long)(L + L * L); k++)
            for (int sign = -1; sign <= 1; sign += 2)
                assert_true(e0 < perturbed_err(&r, p, M, lam, B, sign * 1e-4, k));
        /* curv_bma_expand agrees with the hand expansion (ld > d). */
        double *X = tu_alloc(d * (d + 2));
        for (size_t i = 0; i < d * (d + 2); i++)
            X[i] = 42.0;
        tu_assert_status(curv_bma_expand(b, X, d + 2, err), CURV_OK, err);
        for (size_t i = 0; i < d; i++)
            for (size_t j = 0; j < d + 2; j++)
                assert_true(X[i * (d + 2) + j] == (j < d ? E[i * d + j] : 42.0));
        free(X);
        free(E);
        curv_bma_free(b);
    }
    free(M);
}

static void test_fit_optimal(void **state)
{
    (void)state;
    for (size_t k = 0; k < NPARTS; k++)
        check_fit_optimal(&parts[k], 100 + k);
}

static void dense_matvec(size_t n, const double *A, const double *x, double *y)
{
    tu_matmul(n, n, 1, A, x, y);
}

/* curv_bma_apply of @b matches the dense product with its hand expansion,
 * also when x and y alias. */
static void check_apply(const struct part *p, curv_bma *b, tu_rng *r)
{
    size_t d = dim_of(p);
    double *x = tu_alloc(d), *y = tu_alloc(d), *want = tu_alloc(d);
    double *E = expand_of(p, b);
    tu_fill_normal(r, x, d, 1.0);
    dense_matvec(d, E, x, want);
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv_bma_apply(b, x, y, err), CURV_OK, err);
    assert_true(tu_rel_err(y, want, d) <= 1e-12);
    tu_assert_status(curv_bma_apply(b, x, x, err), CURV_OK, err);
    assert_true(tu_rel_err(x, want, d) <= 1e-12);
    free(E);
    free(x);
    free(y);
    free(want);
}

typedef curv_status (*bma_fn)(const curv_bma *, double, curv_bma *, curv_error *);

static curv_status inv_fn(const curv_bma *a, double eig_floor, curv_bma *out, curv_error *err)
{
    (void)eig_floor;
    return curv_bma_inv(a, out, err);
}

static const struct {
    bma_fn fn;
    double p;
} ops[] = {{inv_fn, -1.0}, {curv_bma_inv_sqrt, -0.5}, {curv_bma_sqrt, 0.5}};
#define NOPS (sizeof ops / sizeof ops[0])

/* Theorem 1, Theorem 2, Lemma 1: the expanded result equals the dense
 * power of the expanded input; products through apply match. */
static void check_theorems(const struct part *p, uint64_t seed)
{
    size_t d = dim_of(p);
    tu_rng r;
    tu_rng_seed(&r, seed);
    double *M = tu_alloc(d * d), *want = tu_alloc(d * d);
    tu_rand_spd(&r, d, 0.5, M);
    curv_bma *a = new_bma(p), *out = new_bma(p);
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv_bma_fit(a, M, d, err), CURV_OK, err);
    double *E = expand_of(p, a);
    assert_true(is_pd(d, E)); /* the fit of an SPD matrix is PD */
    check_apply(p, a, &r);
    for (size_t k = 0; k < NOPS; k++) {
        tu_assert_status(ops[k].fn(a, 0.0, out, err), CURV_OK, err);
        double *F = expand_of(p, out);
        tu_sym_pow(d, E, ops[k].p, 0.0, want);
        assert_true(tu_rel_err(F, want, d * d) <= 1e-10);
        check_apply(p, out, &r);
        free(F);
    }
    /* @out may be @a itself. */
    tu_assert_status(curv_bma_inv_sqrt(a, 0.0, a, err), CURV_OK, err);
    double *F = expand_of(p, a);
    tu_sym_pow(d, E, -0.5, 0.0, want);
    assert_true(tu_rel_err(F, want, d * d) <= 1e-10);
    free(F);
    free(E);
    free(M);
    free(want);
    curv_bma_free(a);
    curv_bma_free(out);
}

static void test_theorems(void **state)
{
    (void)state;
    for (size_t k = 0; k < NPARTS; k++)
        check_theorems(&parts[k], 200 + k);
}

/* K = H diag(k) H with the Householder reflection H = I - 2 v v^T / v^T v,
 * so the spectrum of K is known exactly. */
static void core_with_spectrum(tu_rng *r, size_t L, const double *k, double *K)
{
    double *v = tu_alloc(L), *H = tu_alloc(L * L), vv = 0;
    tu_fill_normal(r, v, L, 1.0);
    for (size_t i = 0; i < L; i++)
        vv += v[i] * v[i];
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++)
            H[i * L + j] = (i == j) - 2 * v[i] * v[j] / vv;
    tu_from_eig(L, H, k, K);
    free(v);
    free(H);
}

/* B = S^-1/2 (K - Λ) S^-1/2, the BMA whose core matrix is K (eq. 20). */
static void b_from_core(const struct part *p, const double *lam, const double *K, double *B)
{
    size_t L = p->L;
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++)
            B[i * L + j] =
                (K[i * L + j] - (i == j ? lam[i] : 0.0)) / sqrt((double)p->s[i] * (double)p->s[j]);
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < i; j++)
            B[i * L + j] = B[j * L + i];
}

/* Core spectrum (3, 1.5, -0.5, 0, ...): eig_floor = 0 fails for every
 * form; eig_floor = 0.1 equals the dense power of the BMA whose core has
 * the eigenvalues max(k, 0.1 * 3) instead (BMA paper, text after eq. 27). */
static void check_clamp(const struct part *p, uint64_t seed)
{
    size_t L = p->L, d = dim_of(p);
    const double kk[] = {3.0, 1.5, -0.5, 0.0};
    double k[4], kc[4], K[16], lam[4], B[16];
    tu_rng r;
    tu_rng_seed(&r, seed);
    for (size_t i = 0; i < L; i++) {
        k[i] = kk[i];
        kc[i] = fmax(kk[i], 0.1 * 3.0);
        lam[i] = 0.5 + tu_uniform(&r);
    }
    tu_rng rk = r;
    core_with_spectrum(&r, L, k, K);
    curv_bma *a = new_bma(p), *out = new_bma(p);
    memcpy(curv_bma_lambda(a), lam, L * sizeof(double));
    b_from_core(p, lam, K, curv_bma_matrix(a));
    curv_error errbuf, *err = &errbuf;
    for (size_t op = 0; op < NOPS; op++)
        tu_assert_status(ops[op].fn(a, 0.0, out, err), CURV_E_NUMERIC, err);
    core_with_spectrum(&rk, L, kc, K); /* same reflection, clamped spectrum */
    b_from_core(p, lam, K, B);
    double *Ec = hand_expand(p, lam, B), *want = tu_alloc(d * d);
    for (size_t op = 1; op < NOPS; op++) {
        tu_assert_status(ops[op].fn(a, 0.1, out, err), CURV_OK, err);
        double *F = expand_of(p, out);
        tu_sym_pow(d, Ec, ops[op].p, 0.0, want);
        assert_true(tu_rel_err(F, want, d * d) <= 1e-10);
        free(F);
    }
    free(Ec);
    free(want);
    curv_bma_free(a);
    curv_bma_free(out);
}

static void test_eig_clamp(void **state)
{
    (void)state;
    check_clamp(&parts[0], 300);
    check_clamp(&parts[1], 301);
    check_clamp(&parts[3], 302);
}

/* A diagonal core with an exact zero eigenvalue, worked by hand. */
static void test_exact_zero_eigenvalue(void **state)
{
    (void)state;
    curv_bma *a = new_bma(&parts[1]), *out = new_bma(&parts[1]);
    double *lam = curv_bma_lambda(a), *B = curv_bma_matrix(a);
    for (size_t i = 0; i < 3; i++)
        lam[i] = 1.0;
    B[8] = -1.0; /* K = diag(1, 1, 0) */
    curv_error errbuf, *err = &errbuf;
    for (size_t op = 0; op < NOPS; op++)
        tu_assert_status(ops[op].fn(a, 0.0, out, err), CURV_E_NUMERIC, err);
    /* Floor 0.25: K -> diag(1, 1, 0.25), so D_33 = 0.25^p - 1. */
    for (size_t op = 1; op < NOPS; op++) {
        tu_assert_status(ops[op].fn(a, 0.25, out, err), CURV_OK, err);
        const double *lo = curv_bma_lambda(out), *D = curv_bma_matrix(out);
        for (size_t i = 0; i < 9; i++) {
            double want = i == 8 ? pow(0.25, ops[op].p) - 1.0 : 0.0;
            assert_true(fabs(D[i] - want) < 1e-14);
        }
        for (size_t i = 0; i < 3; i++)
            assert_true(fabs(lo[i] - 1.0) < 1e-15);
    }
    curv_bma_free(a);
    curv_bma_free(out);
}

static void test_accessors(void **state)
{
    (void)state;
    curv_bma *b = new_bma(&parts[0]);
    assert_int_equal(curv_bma_nblocks(b), 3);
    assert_int_equal(curv_bma_dim(b), 10);
    assert_memory_equal(curv_bma_sizes(b), P_253, sizeof P_253);
    for (size_t i = 0; i < 3; i++)
        assert_true(curv_bma_lambda(b)[i] == 0.0);
    for (size_t i = 0; i < 9; i++)
        assert_true(curv_bma_matrix(b)[i] == 0.0);
    curv_bma_free(b);
    curv_bma_free(NULL);
}

static void test_new_errors(void **state)
{
    (void)state;
    static int dummy;
    curv_bma *const sentinel = (curv_bma *)(void *)&dummy;
    curv_bma *b = sentinel;
    curv_error errbuf, *err = &errbuf;
    const size_t zero[] = {2, 0, 3}, big[] = {SIZE_MAX, 1}, one[] = {1};
    tu_assert_status(curv_bma_new(NULL, 3, &b, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_new(P_253, 3, NULL, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_new(P_253, 0, &b, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_new(zero, 3, &b, err), CURV_E_INVALID, err);
    assert_non_null(strstr(err->text, "block 1"));
    tu_assert_status(curv_bma_new(big, 2, &b, err), CURV_E_RANGE, err);
    /* L * L overflows; refused before s is read past its one entry. */
    tu_assert_status(curv_bma_new(one, (size_t)1 << 33, &b, err), CURV_E_RANGE, err);
    /* L * L fits but L * L doubles do not. */
    tu_assert_status(curv_bma_new(one, (size_t)1 << 31, &b, err), CURV_E_RANGE, err);
    assert_int_equal(curv_bma_new(zero, 3, &b, NULL), CURV_E_INVALID);
    assert_ptr_equal(b, sentinel);
}

/* Fill @b with recognisable values and return a copy of Λ then B. */
static double *mark(curv_bma *b)
{
    size_t L = curv_bma_nblocks(b);
    double *snap = tu_alloc(L + L * L);
    for (size_t i = 0; i < L; i++)
        curv_bma_lambda(b)[i] = 1.0 + (double)i;
    for (size_t i = 0; i < L * L; i++)
        curv_bma_matrix(b)[i] = 0.01 * (double)((i / L) + (i % L));
    memcpy(snap, curv_bma_lambda(b), L * sizeof(double));
    memcpy(snap + L, curv_bma_matrix(b), L * L * sizeof(double));
    return snap;
}

static void assert_same(curv_bma *b, const double *snap)
{
    size_t L = curv_bma_nblocks(b);
    assert_memory_equal(curv_bma_lambda(b), snap, L * sizeof(double));
    assert_memory_equal(curv_bma_matrix(b), snap + L, L * L * sizeof(double));
}

static void test_fit_errors(void **state)
{
    (void)state;
    enum { D = 10, LD = 11 };
    curv_bma *b = new_bma(&parts[0]);
    double *snap = mark(b), M[D * LD];
    for (size_t i = 0; i < D * LD; i++)
        M[i] = 0.5;
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv_bma_fit(NULL, M, LD, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_fit(b, NULL, LD, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_fit(b, M, D - 1, err), CURV_E_INVALID, err);
    assert_non_null(strstr(err->text, "ld = 9"));
    M[3 * LD + 1] = NAN;
    tu_assert_status(curv_bma_fit(b, M, LD, err), CURV_E_NONFINITE, err);
    assert_non_null(strstr(err->text, "M[3][1]"));
    M[3 * LD + 1] = -INFINITY;
    assert_int_equal(curv_bma_fit(b, M, LD, NULL), CURV_E_NONFINITE);
    /* Finite entries whose block sum overflows. */
    for (size_t i = 0; i < D * LD; i++)
        M[i] = 1.5e308;
    tu_assert_status(curv_bma_fit(b, M, LD, err), CURV_E_NONFINITE, err);
    assert_same(b, snap);
    /* Padding past column d is never read. */
    for (size_t i = 0; i < D * LD; i++)
        M[i] = i % LD == D ? NAN : 0.5;
    tu_assert_status(curv_bma_fit(b, M, LD, err), CURV_OK, err);
    free(snap);
    curv_bma_free(b);
}

/* One bad input for every form: @out (marked) must stay unchanged. */
static void expect_core_fail(const curv_bma *a, double eig_floor, curv_bma *out, curv_status want,
                             const char *needle)
{
    double *snap = mark(out);
    for (size_t op = 0; op < NOPS; op++) {
        if (op == 0 && eig_floor != 0.0)
            continue; /* curv_bma_inv has no floor */
        curv_error errbuf = {CURV_OK, ""}, *err = &errbuf;
        tu_assert_status(ops[op].fn(a, eig_floor, out, err), want, err);
        assert_int_equal(err->status, want);
        if (needle)
            assert_non_null(strstr(err->text, needle));
        assert_same(out, snap);
    }
    free(snap);
}

static void test_core_errors(void **state)
{
    (void)state;
    const size_t other_s[] = {3, 5, 2};
    const struct part other = {other_s, 3}, two = {P_253, 2};
    curv_bma *a = new_bma(&parts[0]), *out = new_bma(&parts[0]);
    curv_bma *o2 = new_bma(&other), *o3 = new_bma(&two);
    double *lam = curv_bma_lambda(a), *B = curv_bma_matrix(a);
    free(mark(a));
    expect_core_fail(NULL, 0.0, out, CURV_E_INVALID, "NULL");
    expect_core_fail(a, 0.0, o2, CURV_E_INVALID, "partition");
    expect_core_fail(a, 0.0, o3, CURV_E_INVALID, "partition");
    expect_core_fail(a, -0.1, out, CURV_E_INVALID, "eig_floor");
    expect_core_fail(a, 1.0, out, CURV_E_INVALID, "eig_floor");
    expect_core_fail(a, NAN, out, CURV_E_INVALID, "eig_floor");
    const double bad_lam[] = {0.0, -1.0, NAN, INFINITY};
    for (size_t k = 0; k < 4; k++) {
        lam[1] = bad_lam[k];
        expect_core_fail(a, 0.0, out, CURV_E_INVALID, "block 1: lambda");
    }
    lam[1] = 2.0;
    B[1] += 1e-6; /* B[0][1] != B[1][0] */
    expect_core_fail(a, 0.0, out, CURV_E_INVALID, "symmetric");
    B[1] -= 1e-6;
    B[5] = INFINITY;
    expect_core_fail(a, 0.0, out, CURV_E_INVALID, "B[1][2]");
    B[5] = B[7];
    B[4] = -5.0; /* K_22 = 2 - 25 < 0: not positive definite */
    expect_core_fail(a, 0.0, out, CURV_E_NUMERIC, "core matrix");
    /* Asymmetry within the relative tolerance is accepted. */
    B[4] = 0.02;
    B[1] *= 1.0 + 1e-14;
    curv_error errbuf, *err = &errbuf;
    for (size_t op = 0; op < NOPS; op++)
        tu_assert_status(ops[op].fn(a, 0.0, out, err), CURV_OK, err);
    tu_assert_status(curv_bma_inv(a, NULL, err), CURV_E_INVALID, err);
    curv_bma_free(a);
    curv_bma_free(out);
    curv_bma_free(o2);
    curv_bma_free(o3);
}

static void test_apply_expand_errors(void **state)
{
    (void)state;
    curv_bma *b = new_bma(&parts[0]);
    double x[10] = {0}, M[100];
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv_bma_apply(NULL, x, x, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_apply(b, NULL, x, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_apply(b, x, NULL, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_expand(NULL, M, 10, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_expand(b, NULL, 10, err), CURV_E_INVALID, err);
    tu_assert_status(curv_bma_expand(b, M, 9, err), CURV_E_INVALID, err);
    assert_non_null(strstr(err->text, "ld = 9"));
    curv_bma_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fit_optimal),         cmocka_unit_test(test_theorems),
        cmocka_unit_test(test_eig_clamp),           cmocka_unit_test(test_exact_zero_eigenvalue),
        cmocka_unit_test(test_accessors),           cmocka_unit_test(test_new_errors),
        cmocka_unit_test(test_fit_errors),          cmocka_unit_test(test_core_errors),
        cmocka_unit_test(test_apply_expand_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
