/* SPDX-License-Identifier: MIT */
/* Dense kernels on small symmetric matrices (row-major, explicit lda). */
#ifndef CURV_LINALG_H
#define CURV_LINALG_H

#include "internal.h"

/*
 * curv__sym_eig - eigendecomposition A = R diag(w) R^T of symmetric n x n A.
 * On success A (lda) is overwritten with R (eigenvectors as columns) and w
 * holds the eigenvalues in ascending order. Only the upper triangle is read.
 * Return CURV_OK or CURV_E_NUMERIC (LAPACK did not converge), CURV_E_NOMEM.
 */
curv_status curv__sym_eig(size_t n, double *A, size_t lda, double *w, curv_error *err);

/*
 * curv__sym_pow - out = R diag(max(w, floor)^p) R^T for symmetric A = R w R^T,
 * floor = max(floor_abs, floor_rel * max(w)). @out may equal @A (same lda).
 * Return CURV_OK; CURV_E_NUMERIC when a clamped eigenvalue is still <= 0 and
 * p is not a positive integer-free power (p <= 0 or non-integer p with w<0),
 * or LAPACK fails; CURV_E_NOMEM.
 */
curv_status curv__sym_pow(size_t n, const double *A, size_t lda, double p, double floor_abs,
                          double floor_rel, double *out, size_t ldo, curv_error *err);

/*
 * curv__spd_inv - out = A^-1 for symmetric positive definite A (Cholesky).
 * @out may equal @A. Return CURV_OK, CURV_E_NUMERIC (not positive
 * definite), CURV_E_NOMEM.
 */
curv_status curv__spd_inv(size_t n, const double *A, size_t lda, double *out, size_t ldo,
                          curv_error *err);

/*
 * curv__spd_inv_packed - A <- A^-1 in place for symmetric positive
 * definite packed (lda = n) A, reading its upper triangle: LAPACK works on
 * A's memory as a column-major lower triangle, without the transposed
 * copies of the row-major interface nor a scratch copy (at n = 1000 dpotrf
 * takes 0.0105 s instead of 0.016). A is destroyed on failure. Return
 * CURV_OK, CURV_E_NUMERIC (not positive definite), CURV_E_NOMEM.
 */
curv_status curv__spd_inv_packed(size_t n, double *A, curv_error *err);

/*
 * curv__newton_schulz - coupled Newton-Schulz iteration (MBAG paper eq. 5)
 * on the Frobenius-normalised A/c, c = ||A||_F:
 *   X_0 = A/c, Y_0 = I, T = 3I - Y X, X <- X T / 2, Y <- T Y / 2.
 * After @iters steps X ≈ (A/c)^1/2 and Y ≈ (A/c)^-1/2 (n x n, packed lda = n).
 * @work holds 3 n*n doubles. Returns c (0 when A = 0; X and Y are then
 * left as 0 and I).
 */
double curv__newton_schulz(size_t n, const double *A, size_t lda, unsigned iters, double *X,
                           double *Y, double *work);

/* curv__frobenius - ||A||_F of an n x n matrix. */
double curv__frobenius(size_t n, const double *A, size_t lda);

/* curv__symmetrize - A <- (A + A^T)/2 in place. */
void curv__symmetrize(size_t n, double *A, size_t lda);

/*
 * curv__gemm3 - out = alpha * op(L) M op(R) + beta * out, row-major and
 * packed: M is q x r, op(L) is p x q (L is stored q x p when @tl is
 * nonzero), op(R) is r x s (R is stored s x r when @tr), out is p x s.
 * The cheaper association of the two products is used; @tmp holds
 * max(p * r, q * s) doubles. @out may equal @M when @beta is 0, since M is
 * read by the first product only. Every size must fit an int: callers
 * check their dimensions once, up front (no error path here).
 */
void curv__gemm3(size_t p, size_t q, size_t r, size_t s, double alpha, const double *L, int tl,
                 const double *M, const double *R, int tr, double beta, double *out, double *tmp);

#endif
