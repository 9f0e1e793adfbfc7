/* SPDX-License-Identifier: MIT */
/* Dense kernels on small symmetric matrices: LAPACKE and CBLAS wrappers
 * with row-major storage and explicit leading dimensions. */
#include "linalg.h"

#include <cblas.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK and CBLAS take int-sized dimensions (32-bit lapack_int and
 * blasint in the usual builds), so larger sizes are refused up front. */
static int dims_ok(size_t n, size_t lda)
{
    return n <= (size_t)INT_MAX && lda <= (size_t)INT_MAX && lda >= n;
}

static curv_status check_dims(const char *who, size_t n, size_t lda, curv_error *err)
{
    if (!dims_ok(n, lda))
        return curv__fail(err, CURV_E_RANGE, "%s: n = %zu with lda = %zu is out of range", who, n,
                          lda);
    return CURV_OK;
}

/* A packed (lda = n) scratch matrix, or NULL when out of memory. */
static double *scratch(size_t count)
{
    return curv__calloc_n(count ? count : 1, sizeof(double));
}

static void copy_mat(size_t n, const double *src, size_t lds, double *dst, size_t ldd)
{
    for (size_t i = 0; i < n; i++)
        memmove(dst + i * ldd, src + i * lds, n * sizeof(double));
}

/* Eigendecomposition in place; A is destroyed on failure, so callers
 * hand it a scratch copy. */
static curv_status eig_inplace(const char *who, size_t n, double *A, size_t lda, double *w,
                               curv_error *err)
{
    lapack_int info =
        LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', (lapack_int)n, A, (lapack_int)lda, w);
    if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory in LAPACK dsyevd (n = %zu)", who,
                          n);
    if (info != 0)
        return curv__fail(err, CURV_E_NUMERIC,
                          "%s: LAPACK dsyevd failed with info = %d on a %zu x %zu matrix", who,
                          (int)info, n, n);
    return CURV_OK;
}

curv_status curv__sym_eig(size_t n, double *A, size_t lda, double *w, curv_error *err)
{
    curv_status st = check_dims("sym_eig", n, lda, err);
    if (st != CURV_OK || n == 0)
        return st;
    size_t nn;
    if (!curv__mul_ok(n, n + 1, &nn))
        return curv__fail(err, CURV_E_RANGE, "sym_eig: n = %zu is too large", n);
    double *R = scratch(nn);
    if (!R)
        return curv__fail(err, CURV_E_NOMEM, "sym_eig: out of memory for n = %zu", n);
    double *wt = R + n * n;
    copy_mat(n, A, lda, R, n);
    st = eig_inplace("sym_eig", n, R, n, wt, err);
    if (st == CURV_OK) {
        copy_mat(n, R, n, A, lda);
        memcpy(w, wt, n * sizeof(double));
    }
    curv__free(R);
    return st;
}

/* f(w) = max(w, floor)^p for each eigenvalue; fails where the power is
 * undefined (see linalg.h) or overflows. */
static curv_status eig_powers(size_t n, double *w, double p, double floor_abs, double floor_rel,
                              curv_error *err)
{
    double wmax = w[n - 1]; /* dsyevd sorts ascending */
    double fl = fmax(floor_abs, floor_rel * wmax);
    int p_int = p == nearbyint(p);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(w[i]))
            return curv__fail(err, CURV_E_NUMERIC, "sym_pow: eigenvalue %zu is %g", i, w[i]);
        double v = w[i] > fl ? w[i] : fl;
        if ((p <= 0 && v <= 0) || (!p_int && v < 0))
            return curv__fail(err, CURV_E_NUMERIC,
                              "sym_pow: eigenvalue %zu = %g (floor %g) has no real power %g", i, v,
                              fl, p);
        w[i] = pow(v, p);
        if (!isfinite(w[i]))
            return curv__fail(err, CURV_E_NUMERIC,
                              "sym_pow: eigenvalue %zu = %g to the power %g"
                              " overflows",
                              i, v, p);
    }
    return CURV_OK;
}

curv_status curv__sym_pow(size_t n, const double *A, size_t lda, double p, double floor_abs,
                          double floor_rel, double *out, size_t ldo, curv_error *err)
{
    curv_status st = check_dims("sym_pow", n, lda, err);
    if (st == CURV_OK)
        st = check_dims("sym_pow", n, ldo, err);
    if (st != CURV_OK || n == 0)
        return st;
    size_t nn, total;
    if (!curv__mul_ok(n, n, &nn) || !curv__mul_ok(nn, 2, &total) || total > SIZE_MAX - n)
        return curv__fail(err, CURV_E_RANGE, "sym_pow: n = %zu is too large", n);
    double *R = scratch(total + n);
    if (!R)
        return curv__fail(err, CURV_E_NOMEM, "sym_pow: out of memory for n = %zu", n);
    double *T = R + nn, *w = T + nn;
    copy_mat(n, A, lda, R, n);
    st = eig_inplace("sym_pow", n, R, n, w, err);
    if (st == CURV_OK)
        st = eig_powers(n, w, p, floor_abs, floor_rel, err);
    if (st == CURV_OK) {
        /* out = (R diag(f)) R^T; the scaled copy keeps R intact. */
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < n; k++)
                T[i * n + k] = R[i * n + k] * w[k];
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)n, 1.0, T, (int)n,
                    R, (int)n, 0.0, out, (int)ldo);
        curv__symmetrize(n, out, ldo);
    }
    curv__free(R);
    return st;
}

/* C (n x n, packed) <- C^-1 by dpotrf + dpotri with LAPACK's @layout and
 * @uplo, which must address C's row-major upper triangle (row-major 'U',
 * or column-major 'L' on the same memory, which spares LAPACKE's
 * transposed copies), then mirrored into the lower one. */
static curv_status potr_inv(const char *who, size_t n, double *C, int layout, char uplo,
                            curv_error *err)
{
    curv_status st = CURV_OK;
    lapack_int info = LAPACKE_dpotrf(layout, uplo, (lapack_int)n, C, (lapack_int)n);
    if (info > 0)
        st = curv__fail(err, CURV_E_NUMERIC,
                        "%s: %zu x %zu matrix is not positive definite (leading minor %d)", who, n,
                        n, (int)info);
    if (info == 0)
        info = LAPACKE_dpotri(layout, uplo, (lapack_int)n, C, (lapack_int)n);
    if (st == CURV_OK && info == LAPACK_TRANSPOSE_MEMORY_ERROR)
        st = curv__fail(err, CURV_E_NOMEM, "%s: out of memory in LAPACK (n = %zu)", who, n);
    else if (st == CURV_OK && info != 0)
        st = curv__fail(err, CURV_E_NUMERIC, "%s: LAPACK failed with info = %d (n = %zu)", who,
                        (int)info, n);
    if (st == CURV_OK) /* dpotri fills only the upper triangle */
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < i; j++)
                C[i * n + j] = C[j * n + i];
    return st;
}

curv_status curv__spd_inv(size_t n, const double *A, size_t lda, double *out, size_t ldo,
                          curv_error *err)
{
    curv_status st = check_dims("spd_inv", n, lda, err);
    if (st == CURV_OK)
        st = check_dims("spd_inv", n, ldo, err);
    if (st != CURV_OK || n == 0)
        return st;
    size_t nn;
    if (!curv__mul_ok(n, n, &nn))
        return curv__fail(err, CURV_E_RANGE, "spd_inv: n = %zu is too large", n);
    double *C = scratch(nn);
    if (!C)
        return curv__fail(err, CURV_E_NOMEM, "spd_inv: out of memory for n = %zu", n);
    copy_mat(n, A, lda, C, n);
    st = potr_inv("spd_inv", n, C, LAPACK_ROW_MAJOR, 'U', err);
    if (st == CURV_OK)
        copy_mat(n, C, n, out, ldo);
    curv__free(C);
    return st;
}

curv_status curv__spd_inv_packed(size_t n, double *A, curv_error *err)
{
    curv_status st = check_dims("spd_inv", n, n, err);
    if (st != CURV_OK || n == 0)
        return st;
    return potr_inv("spd_inv", n, A, LAPACK_COL_MAJOR, 'L', err);
}

/* One coupled step (MBAG paper, eq. 5): T = 3I - Y X, X <- X T / 2,
 * Y <- T Y / 2, with the same T for both updates. */
static void ns_step(size_t n, double *X, double *Y, double *work)
{
    int m = (int)n;
    double *T = work, *Xn = work + n * n, *Yn = work + 2 * n * n;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, m, m, -1.0, Y, m, X, m, 0.0, T, m);
    for (size_t i = 0; i < n; i++)
        T[i * n + i] += 3.0;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, m, m, 0.5, X, m, T, m, 0.0, Xn, m);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, m, m, 0.5, T, m, Y, m, 0.0, Yn, m);
    memcpy(X, Xn, n * n * sizeof(double));
    memcpy(Y, Yn, n * n * sizeof(double));
}

double curv__newton_schulz(size_t n, const double *A, size_t lda, unsigned iters, double *X,
                           double *Y, double *work)
{
    double c = curv__frobenius(n, A, lda);
    memset(X, 0, n * n * sizeof(double));
    memset(Y, 0, n * n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        Y[i * n + i] = 1.0;
    if (c == 0)
        return 0;
    /* Frobenius normalisation puts the spectrum of a PD A/c in (0, 1],
     * inside the convergence region ||I - A/c|| < 1 (MBAG paper, IV-B). */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            X[i * n + j] = A[i * lda + j] / c;
    for (unsigned k = 0; k < iters; k++)
        ns_step(n, X, Y, work);
    return c;
}

double curv__frobenius(size_t n, const double *A, size_t lda)
{
    /* Scale by the largest magnitude so squares neither overflow nor
     * underflow; NaN propagates. */
    double amax = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double v = fabs(A[i * lda + j]);
            if (isnan(v))
                return v;
            if (v > amax)
                amax = v;
        }
    if (amax == 0 || isinf(amax))
        return amax;
    double s = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            double v = A[i * lda + j] / amax;
            s += v * v;
        }
    return amax * sqrt(s);
}

void curv__symmetrize(size_t n, double *A, size_t lda)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++) {
            double m = 0.5 * (A[i * lda + j] + A[j * lda + i]);
            A[i * lda + j] = m;
            A[j * lda + i] = m;
        }
}

void curv__gemm3(size_t p, size_t q, size_t r, size_t s, double alpha, const double *L, int tl,
                 const double *M, const double *R, int tr, double beta, double *out, double *tmp)
{
    CBLAS_TRANSPOSE ol = tl ? CblasTrans : CblasNoTrans, orr = tr ? CblasTrans : CblasNoTrans;
    int ldl = (int)(tl ? p : q), ldr = (int)(tr ? r : s);
    /* Flop counts of (op(L) M) op(R) and op(L) (M op(R)). */
    double left_first = (double)p * (double)r * (double)(q + s);
    double right_first = (double)q * (double)s * (double)(p + r);
    if (left_first <= right_first) {
        cblas_dgemm(CblasRowMajor, ol, CblasNoTrans, (int)p, (int)r, (int)q, 1.0, L, ldl, M, (int)r,
                    0.0, tmp, (int)r);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, orr, (int)p, (int)s, (int)r, alpha, tmp, (int)r, R,
                    ldr, beta, out, (int)s);
    } else {
        cblas_dgemm(CblasRowMajor, CblasNoTrans, orr, (int)q, (int)s, (int)r, 1.0, M, (int)r, R,
                    ldr, 0.0, tmp, (int)s);
        cblas_dgemm(CblasRowMajor, ol, CblasNoTrans, (int)p, (int)s, (int)q, alpha, L, ldl, tmp,
                    (int)s, beta, out, (int)s);
    }
}
