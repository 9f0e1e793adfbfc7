/* SPDX-License-Identifier: MIT */
/* Dense kernels (lib/src/linalg.c) against reference math written here or
 * in testutil (Jacobi eigenvalues, independent of LAPACK). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "linalg.h"
#include "testutil.h"

/* Copy packed n x n @A into a buffer with leading dimension @ld, padding
 * the extra columns with @pad. */
static double *padded(size_t n, const double *A, size_t ld, double pad)
{
    double *P = tu_alloc(n * ld);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < ld; j++)
            P[i * ld + j] = j < n ? A[i * n + j] : pad;
    return P;
}

static void unpad(size_t n, const double *P, size_t ld, double *A)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            A[i * n + j] = P[i * ld + j];
}

/* A random orthogonal matrix (Gram-Schmidt on Gaussian columns). */
static void rand_orth(tu_rng *r, size_t n, double *Q)
{
    tu_fill_normal(r, Q, n * n, 1.0);
    for (size_t j = 0; j < n; j++) {
        for (size_t k = 0; k < j; k++) {
            double dot = 0;
            for (size_t i = 0; i < n; i++)
                dot += Q[i * n + j] * Q[i * n + k];
            for (size_t i = 0; i < n; i++)
                Q[i * n + j] -= dot * Q[i * n + k];
        }
        double nrm = 0;
        for (size_t i = 0; i < n; i++)
            nrm += Q[i * n + j] * Q[i * n + j];
        for (size_t i = 0; i < n; i++)
            Q[i * n + j] /= sqrt(nrm);
    }
}

static double *identity(size_t n)
{
    double *I = tu_alloc(n * n);
    for (size_t i = 0; i < n; i++)
        I[i * n + i] = 1.0;
    return I;
}

static void test_sym_eig_reconstructs(void **state)
{
    (void)state;
    enum { N = 7, LD = 9 };
    tu_rng r;
    tu_rng_seed(&r, 11);
    double A[N * N], R[N * N], w[N], Rw[N * N], RR[N * N];
    tu_fill_normal(&r, A, N * N, 1.0);
    curv__symmetrize(N, A, N);
    /* Garbage below the diagonal: only the upper triangle may be read. */
    double *P = padded(N, A, LD, -777.0);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < i; j++)
            P[i * LD + j] = 1e6;
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv__sym_eig(N, P, LD, w, err), CURV_OK, err);
    unpad(N, P, LD, R);
    for (size_t i = 0; i + 1 < N; i++)
        assert_true(w[i] <= w[i + 1]);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < LD; j++)
            if (j >= N)
                assert_true(P[i * LD + j] == -777.0);
    tu_from_eig(N, R, w, Rw);
    assert_true(tu_rel_err(Rw, A, N * N) < 1e-12);
    double ones[N];
    for (size_t i = 0; i < N; i++)
        ones[i] = 1.0;
    tu_from_eig(N, R, ones, RR); /* R R^T = I */
    double *I = identity(N);
    assert_true(tu_rel_err(RR, I, N * N) < 1e-12);
    free(I);
    free(P);
}

static void test_sym_pow_matches_jacobi(void **state)
{
    (void)state;
    enum { N = 6, LD = 8 };
    const double ps[] = {-0.5, 0.5, -1.0};
    tu_rng r;
    tu_rng_seed(&r, 12);
    double A[N * N], want[N * N], got[N * N];
    tu_rand_spd(&r, N, 0.1, A);
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        tu_sym_pow(N, A, ps[k], 0.0, want);
        double *P = padded(N, A, LD, 5.0);
        curv_error errbuf, *err = &errbuf;
        tu_assert_status(curv__sym_pow(N, P, LD, ps[k], 0.0, 0.0, P, LD, err), CURV_OK, err);
        unpad(N, P, LD, got);
        assert_true(tu_rel_err(got, want, N * N) < 1e-12);
        assert_true(P[N] == 5.0); /* padding untouched */
        free(P);
        tu_assert_status(curv__sym_pow(N, A, N, ps[k], 0.0, 0.0, got, N, err), CURV_OK, err);
        assert_true(tu_rel_err(got, want, N * N) < 1e-12);
    }
}

/* Known spectrum with zero and negative eigenvalues: the floor is
 * max(floor_abs, floor_rel * max(w)) and the power rules follow linalg.h. */
static void test_sym_pow_floor(void **state)
{
    (void)state;
    enum { N = 5 };
    const double w[N] = {4.0, 1.0, 0.0, -0.5, 2.0};
    tu_rng r;
    tu_rng_seed(&r, 13);
    double Q[N * N], A[N * N], f[N], want[N * N], got[N * N];
    rand_orth(&r, N, Q);
    tu_from_eig(N, Q, w, A);
    curv_error errbuf, *err = &errbuf;
    for (size_t i = 0; i < N; i++)
        f[i] = pow(fmax(w[i], 0.01 * 4.0), -0.5);
    tu_from_eig(N, Q, f, want);
    tu_assert_status(curv__sym_pow(N, A, N, -0.5, 0.0, 0.01, got, N, err), CURV_OK, err);
    assert_true(tu_rel_err(got, want, N * N) < 1e-10);
    /* floor_abs wins when larger. */
    for (size_t i = 0; i < N; i++)
        f[i] = pow(fmax(w[i], 0.5), 0.5);
    tu_from_eig(N, Q, f, want);
    tu_assert_status(curv__sym_pow(N, A, N, 0.5, 0.5, 0.01, got, N, err), CURV_OK, err);
    assert_true(tu_rel_err(got, want, N * N) < 1e-10);
    /* A positive integer power of a negative eigenvalue is defined: A^2
     * (floor = max(-inf, -1 * 4) lies below every eigenvalue). */
    tu_matmul(N, N, N, A, A, want);
    tu_assert_status(curv__sym_pow(N, A, N, 2.0, -INFINITY, -1.0, got, N, err), CURV_OK, err);
    assert_true(tu_rel_err(got, want, N * N) < 1e-12);
    /* Undefined powers fail. */
    memcpy(want, got, sizeof got);
    tu_assert_status(curv__sym_pow(N, A, N, -0.5, 0.0, 0.0, got, N, err), CURV_E_NUMERIC, err);
    /* Negative definite: the relative floor is negative, so a fractional
     * power of a floored eigenvalue is still undefined. */
    double Neg[N * N];
    for (size_t i = 0; i < N * N; i++)
        Neg[i] = -A[i] - (i % (N + 1) == 0 ? 1.0 : 0.0);
    tu_assert_status(curv__sym_pow(N, Neg, N, 0.5, -INFINITY, 0.1, got, N, err), CURV_E_NUMERIC,
                     err);
    assert_memory_equal(got, want, sizeof got);
    assert_true(strlen(err->text) > 0);
}

static void test_spd_inv(void **state)
{
    (void)state;
    enum { N = 8, LD = 10 };
    tu_rng r;
    tu_rng_seed(&r, 14);
    double A[N * N], Ai[N * N], prod[N * N];
    tu_rand_spd(&r, N, 0.2, A);
    double *P = padded(N, A, LD, 9.0);
    curv_error errbuf, *err = &errbuf;
    tu_assert_status(curv__spd_inv(N, P, LD, P, LD, err), CURV_OK, err);
    unpad(N, P, LD, Ai);
    tu_matmul(N, N, N, A, Ai, prod);
    double *I = identity(N);
    assert_true(tu_rel_err(prod, I, N * N) < 1e-10);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < N; j++)
            assert_true(Ai[i * N + j] == Ai[j * N + i]);
    double want[N * N];
    tu_sym_pow(N, A, -1.0, 0.0, want);
    assert_true(tu_rel_err(Ai, want, N * N) < 1e-10);
    /* In place and packed, reading only the upper triangle (the lower one
     * garbage here): the same inverse, symmetric. */
    double Q[N * N];
    memcpy(Q, A, sizeof Q);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < i; j++)
            Q[i * N + j] = 1e3;
    tu_assert_status(curv__spd_inv_packed(N, Q, err), CURV_OK, err);
    assert_true(tu_rel_err(Q, want, N * N) < 1e-10);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < N; j++)
            assert_true(Q[i * N + j] == Q[j * N + i]);
    /* Indefinite: NUMERIC, output untouched. */
    A[3 * N + 3] = -50.0;
    memcpy(prod, I, sizeof prod);
    tu_assert_status(curv__spd_inv(N, A, N, prod, N, err), CURV_E_NUMERIC, err);
    assert_int_equal(err->status, CURV_E_NUMERIC);
    assert_memory_equal(prod, I, sizeof prod);
    memcpy(Q, A, sizeof Q);
    tu_assert_status(curv__spd_inv_packed(N, Q, err), CURV_E_NUMERIC, err);
    assert_non_null(strstr(err->text, "not positive definite"));
    free(I);
    free(P);
}

/* ||X X - A/c||_F after @iters steps. */
static double ns_error(size_t n, const double *A, unsigned iters)
{
    double *X = tu_alloc(n * n), *Y = tu_alloc(n * n), *W = tu_alloc(3 * n * n);
    double *XX = tu_alloc(n * n);
    double c = curv__newton_schulz(n, A, n, iters, X, Y, W);
    tu_matmul(n, n, n, X, X, XX);
    double e = 0;
    for (size_t i = 0; i < n * n; i++)
        e += (XX[i] - A[i] / c) * (XX[i] - A[i] / c);
    free(X);
    free(Y);
    free(W);
    free(XX);
    return sqrt(e);
}

static void test_newton_schulz(void **state)
{
    (void)state;
    enum { N = 6, LD = 7 };
    tu_rng r;
    tu_rng_seed(&r, 15);
    double A[N * N], An[N * N], X[N * N], Y[N * N], W[3 * N * N], XX[N * N], XY[N * N];
    double want[N * N];
    tu_rand_spd(&r, N, 0.5, A);
    double c2 = 0;
    for (size_t i = 0; i < N * N; i++)
        c2 += A[i] * A[i];
    double *P = padded(N, A, LD, 1e9);
    double c = curv__newton_schulz(N, P, LD, 20, X, Y, W);
    assert_true(fabs(c - sqrt(c2)) <= 1e-14 * c);
    for (size_t i = 0; i < N * N; i++)
        An[i] = A[i] / c;
    tu_matmul(N, N, N, X, X, XX);
    tu_matmul(N, N, N, X, Y, XY);
    double *I = identity(N);
    assert_true(tu_rel_err(XX, An, N * N) < 1e-10);
    assert_true(tu_rel_err(XY, I, N * N) < 1e-10);
    tu_sym_pow(N, An, 0.5, 0.0, want);
    assert_true(tu_rel_err(X, want, N * N) < 1e-10);
    tu_sym_pow(N, An, -0.5, 0.0, want);
    assert_true(tu_rel_err(Y, want, N * N) < 1e-10);
    /* Each eigenvalue's error |x^2 - a| shrinks monotonically. */
    double prev = ns_error(N, A, 0);
    for (unsigned k = 1; k <= 6; k++) {
        double e = ns_error(N, A, k);
        assert_true(e < prev);
        prev = e;
    }
    free(I);
    free(P);
}

static void test_newton_schulz_zero(void **state)
{
    (void)state;
    enum { N = 4 };
    double A[N * N] = {0}, X[N * N], Y[N * N], W[3 * N * N];
    for (size_t i = 0; i < N * N; i++) {
        X[i] = 7.0;
        Y[i] = 7.0;
    }
    assert_true(curv__newton_schulz(N, A, N, 5, X, Y, W) == 0.0);
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < N; j++) {
            assert_true(X[i * N + j] == 0.0);
            assert_true(Y[i * N + j] == (i == j ? 1.0 : 0.0));
        }
}

static void test_frobenius(void **state)
{
    (void)state;
    enum { N = 3, LD = 5 };
    double A[N * LD];
    double s = 0;
    for (size_t i = 0; i < N; i++)
        for (size_t j = 0; j < LD; j++) {
            A[i * LD + j] = j < N ? (double)(i * N + j) - 4.0 : NAN;
            if (j < N)
                s += A[i * LD + j] * A[i * LD + j];
        }
    assert_true(fabs(curv__frobenius(N, A, LD) - sqrt(s)) < 1e-14 * sqrt(s));
    /* No overflow for huge entries: ||1e200 * ones(2)||_F = 2e200. */
    double H[4] = {1e200, -1e200, 1e200, 1e200};
    assert_true(fabs(curv__frobenius(2, H, 2) - 2e200) < 1e-14 * 2e200);
    double Z[4] = {0};
    assert_true(curv__frobenius(2, Z, 2) == 0.0);
    assert_true(curv__frobenius(0, Z, 2) == 0.0);
}

static void test_symmetrize(void **state)
{
    (void)state;
    double A[2 * 3] = {1, 2, 99, 4, 5, 99};
    curv__symmetrize(2, A, 3);
    const double want[2 * 3] = {1, 3, 99, 3, 5, 99};
    assert_memory_equal(A, want, sizeof A);
}

/* want = alpha * op(L) M op(R) + beta * C0 by plain loops (tu_matmul). */
static void gemm3_ref(size_t p, size_t q, size_t r, size_t s, double alpha, const double *L, int tl,
                      const double *M, const double *R, int tr, double beta, const double *C0,
                      double *want)
{
    double *Lo = tu_alloc(p * q), *Ro = tu_alloc(r * s), *LM = tu_alloc(p * r);
    for (size_t i = 0; i < p; i++)
        for (size_t j = 0; j < q; j++)
            Lo[i * q + j] = tl ? L[j * p + i] : L[i * q + j];
    for (size_t i = 0; i < r; i++)
        for (size_t j = 0; j < s; j++)
            Ro[i * s + j] = tr ? R[j * r + i] : R[i * s + j];
    tu_matmul(p, q, r, Lo, M, LM);
    tu_matmul(p, r, s, LM, Ro, want);
    for (size_t k = 0; k < p * s; k++)
        want[k] = alpha * want[k] + beta * C0[k];
    free(Lo);
    free(Ro);
    free(LM);
}

/* Both associations (the shapes make each one the cheaper), every
 * transpose combination, alpha and beta, and out == M with beta = 0. */
static void test_gemm3(void **state)
{
    (void)state;
    const size_t dims[][4] = {{2, 7, 3, 8}, {8, 3, 7, 2}, {3, 3, 4, 4}};
    tu_rng rng;
    tu_rng_seed(&rng, 21);
    for (size_t d = 0; d < 3; d++) {
        size_t p = dims[d][0], q = dims[d][1], r = dims[d][2], s = dims[d][3];
        double *L = tu_alloc(p * q), *M = tu_alloc(q * r), *R = tu_alloc(r * s);
        double *C = tu_alloc(p * s), *C0 = tu_alloc(p * s), *want = tu_alloc(p * s);
        double *tmp = tu_alloc(p * r > q * s ? p * r : q * s);
        tu_fill_normal(&rng, L, p * q, 1.0);
        tu_fill_normal(&rng, M, q * r, 1.0);
        tu_fill_normal(&rng, R, r * s, 1.0);
        tu_fill_normal(&rng, C0, p * s, 1.0);
        for (int tl = 0; tl < 2; tl++)
            for (int tr = 0; tr < 2; tr++) {
                memcpy(C, C0, p * s * sizeof(double));
                curv__gemm3(p, q, r, s, -1.5, L, tl, M, R, tr, 0.5, C, tmp);
                gemm3_ref(p, q, r, s, -1.5, L, tl, M, R, tr, 0.5, C0, want);
                assert_true(tu_rel_err(C, want, p * s) < 1e-14);
            }
        if (p == q && r == s) {
            double *Mc = tu_alloc(q * r);
            memcpy(Mc, M, q * r * sizeof(double));
            gemm3_ref(p, q, r, s, 2.0, L, 1, M, R, 0, 0.0, C0, want);
            curv__gemm3(p, q, r, s, 2.0, L, 1, Mc, R, 0, 0.0, Mc, tmp);
            assert_true(tu_rel_err(Mc, want, p * s) < 1e-14);
            free(Mc);
        }
        free(L), free(M), free(R), free(C), free(C0), free(want), free(tmp);
    }
}

/* curv__dot against a long double sum: a lane adds at most n/8 + 7
 * products (lane 0 takes the tail) and seven additions join the lanes, so
 * the error is at most (n/8 + 15) u Σ|x_i y_i| (Higham's γ_k, u = 2⁻⁵³);
 * lengths around the lane count and a long odd one. */
static void test_dot(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 3);
    static const size_t lens[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 100003};
    for (size_t c = 0; c < sizeof lens / sizeof *lens; c++) {
        const size_t n = lens[c];
        double *x = tu_alloc(n + 1), *y = tu_alloc(n + 1);
        tu_fill_normal(&r, x, n, 1.0);
        tu_fill_normal(&r, y, n, 1.0);
        long double ref = 0, mag = 0;
        for (size_t i = 0; i < n; i++) {
            ref += (long double)x[i] * y[i];
            mag += fabsl((long double)x[i] * y[i]);
        }
        const double got = curv__dot(x, y, n);
        const double bound = ((double)n / 8 + 15) * 0x1p-53 * (double)mag;
        if (!(fabs(got - (double)ref) <= bound))
            fail_msg("n = %zu: dot %.17g, reference %.17Lg", n, got, ref);
        free(x), free(y);
    }
    double ones[20];
    for (size_t i = 0; i < 20; i++)
        ones[i] = 1;
    assert_true(curv__dot(ones, ones, 20) == 20);
    assert_true(isinf(curv__dot((double[]){1e200, 1}, (double[]){1e200, 1}, 2)));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sym_eig_reconstructs),
        cmocka_unit_test(test_sym_pow_matches_jacobi),
        cmocka_unit_test(test_sym_pow_floor),
        cmocka_unit_test(test_spd_inv),
        cmocka_unit_test(test_newton_schulz),
        cmocka_unit_test(test_newton_schulz_zero),
        cmocka_unit_test(test_frobenius),
        cmocka_unit_test(test_symmetrize),
        cmocka_unit_test(test_gemm3),
        cmocka_unit_test(test_dot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
