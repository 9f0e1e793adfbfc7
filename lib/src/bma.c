/* SPDX-License-Identifier: MIT */
/* Block mean approximation (Lu, Harandi, Hartley, Pascanu 2018, section 3):
 * Proposition 1 fit, Theorem 1 inverse, Theorem 2 inverse square root,
 * Lemma 1 square root, and O(d + L^2) products. The d x d matrix is never
 * formed except by curv_bma_expand. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "curv/bma.h"
#include "internal.h"
#include "linalg.h"

/* B counts as symmetric when |B_ij - B_ji| <= SYM_TOL * max|B|. */
#define SYM_TOL 1e-12

struct curv_bma {
    size_t L, d;
    size_t *s;      /* partition, L entries */
    size_t *off;    /* block i covers [off[i], off[i + 1]), L + 1 entries */
    double *lambda; /* Λ, L entries */
    double *B;      /* L x L row-major */
};

/* The three matrix functions share one route through the core matrix
 * K = Λ + S^1/2 B S^1/2 (BMA paper, Theorem 1, Theorem 2, Lemma 1). */
enum bma_op { BMA_INV, BMA_INV_SQRT, BMA_SQRT };

static const struct {
    const char *name;
    double p;
} bma_ops[] = {
    [BMA_INV] = {"bma_inv", -1.0},
    [BMA_INV_SQRT] = {"bma_inv_sqrt", -0.5},
    [BMA_SQRT] = {"bma_sqrt", 0.5},
};

void curv_bma_free(curv_bma *b)
{
    if (!b)
        return;
    curv__free(b->s);
    curv__free(b->off);
    curv__free(b->lambda);
    curv__free(b->B);
    curv__free(b);
}

static curv_status check_partition(const size_t *s, size_t L, size_t *d, size_t *LL,
                                   curv_error *err)
{
    size_t sum = 0, bytes;
    /* Sizes first, so that a huge L is refused before s is read. */
    if (!curv__mul_ok(L, L, LL) || !curv__mul_ok(*LL, sizeof(double), &bytes) ||
        L > SIZE_MAX / sizeof(size_t) - 1)
        return curv__fail(err, CURV_E_RANGE, "bma_new: L = %zu blocks: L x L is too large", L);
    for (size_t i = 0; i < L; i++) {
        if (s[i] == 0)
            return curv__fail(err, CURV_E_INVALID, "bma_new: block %zu: size 0 must be >= 1", i);
        if (s[i] > SIZE_MAX - sum)
            return curv__fail(err, CURV_E_RANGE, "bma_new: block %zu: the sizes sum past SIZE_MAX",
                              i);
        sum += s[i];
    }
    *d = sum;
    return CURV_OK;
}

/* The arrays of a BMA of L blocks (LL = L * L); NULL when only counting. */
static curv_bma *bma_alloc(size_t L, size_t LL, struct curv__tally *t)
{
    curv_bma scratch, *b = curv__tally_obj(t, &scratch, sizeof *b);
    if (!b)
        return NULL;
    b->s = curv__tally_calloc(t, L, sizeof(size_t));
    b->off = curv__tally_calloc(t, L + 1, sizeof(size_t));
    b->lambda = curv__tally_calloc(t, L, sizeof(double));
    b->B = curv__tally_calloc(t, LL, sizeof(double));
    return t->alloc ? b : NULL;
}

size_t curv__bma_bytes(size_t L)
{
    size_t LL;
    struct curv__tally t = {.alloc = 0};
    bma_alloc(L, curv__mul_ok(L, L, &LL) ? LL : SIZE_MAX, &t);
    return t.bytes;
}

curv_status curv_bma_new(const size_t *s, size_t L, curv_bma **out, curv_error *err)
{
    if (!s || !out)
        return curv__fail(err, CURV_E_INVALID, "bma_new: %s is NULL",
                          !s ? "the partition s" : "out");
    if (L == 0)
        return curv__fail(err, CURV_E_INVALID, "bma_new: the partition has L = 0 blocks");
    size_t d = 0, LL = 0;
    curv_status st = check_partition(s, L, &d, &LL, err);
    if (st != CURV_OK)
        return st;
    struct curv__tally t = {.alloc = 1};
    curv_bma *b = bma_alloc(L, LL, &t);
    if (t.failed) {
        curv_bma_free(b);
        return curv__fail(err, CURV_E_NOMEM, "bma_new: out of memory for L = %zu blocks", L);
    }
    b->L = L;
    b->d = d;
    memcpy(b->s, s, L * sizeof(size_t));
    for (size_t i = 0; i < L; i++)
        b->off[i + 1] = b->off[i] + s[i];
    *out = b;
    return CURV_OK;
}

size_t curv_bma_nblocks(const curv_bma *b)
{
    return b ? b->L : 0;
}

size_t curv_bma_dim(const curv_bma *b)
{
    return b ? b->d : 0;
}

const size_t *curv_bma_sizes(const curv_bma *b)
{
    return b ? b->s : NULL;
}

double *curv_bma_lambda(curv_bma *b)
{
    return b ? b->lambda : NULL;
}

double *curv_bma_matrix(curv_bma *b)
{
    return b ? b->B : NULL;
}

/* Sum of the entries of block (i, j) of M, and of its diagonal when i = j. */
static double block_sum(const curv_bma *b, const double *M, size_t ld, size_t i, size_t j,
                        double *diag)
{
    double sum = 0, dsum = 0;
    for (size_t r = b->off[i]; r < b->off[i + 1]; r++) {
        const double *row = M + r * ld;
        for (size_t c = b->off[j]; c < b->off[j + 1]; c++)
            sum += row[c];
        if (i == j)
            dsum += row[r];
    }
    *diag = dsum;
    return sum;
}

/* BMA paper, Proposition 1 (eqs. 15-16): b_ij is the mean of block (i, j)
 * (off-diagonal entries only when i = j), λ_i the mean diagonal minus
 * b_ii. Writes L + L*L numbers to @lam and @B. */
static void fit_blocks(const curv_bma *b, const double *M, size_t ld, double *lam, double *B)
{
    size_t L = b->L;
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++) {
            double si = (double)b->s[i], sj = (double)b->s[j], diag;
            double sum = block_sum(b, M, ld, i, j, &diag);
            if (i != j) {
                B[i * L + j] = sum / (si * sj);
                continue;
            }
            B[i * L + i] = b->s[i] == 1 ? 0.0 : (sum - diag) / (si * (si - 1.0));
            lam[i] = diag / si - B[i * L + i];
        }
}

curv_status curv_bma_fit(curv_bma *b, const double *M, size_t ld, curv_error *err)
{
    if (!b || !M)
        return curv__fail(err, CURV_E_INVALID, "bma_fit: %s is NULL", !b ? "the BMA" : "M");
    if (ld < b->d)
        return curv__fail(err, CURV_E_INVALID, "bma_fit: ld = %zu is less than d = %zu", ld, b->d);
    for (size_t r = 0; r < b->d; r++) {
        size_t c = curv__first_nonfinite(M + r * ld, b->d);
        if (c < b->d)
            return curv__fail(err, CURV_E_NONFINITE, "bma_fit: M[%zu][%zu] = %g is not finite", r,
                              c, M[r * ld + c]);
    }
    size_t L = b->L;
    double *lam = curv__calloc_n(L * L + L, sizeof(double));
    if (!lam)
        return curv__fail(err, CURV_E_NOMEM, "bma_fit: out of memory for L = %zu blocks", L);
    double *B = lam + L;
    fit_blocks(b, M, ld, lam, B);
    /* Finite entries can still sum past DBL_MAX. */
    size_t bad = curv__first_nonfinite(lam, L * L + L);
    if (bad < L * L + L) {
        curv__free(lam);
        return curv__fail(err, CURV_E_NONFINITE,
                          "bma_fit: the block means of M overflow (block %zu)",
                          bad < L ? bad : (bad - L) / L);
    }
    memcpy(b->lambda, lam, L * sizeof(double));
    memcpy(b->B, B, L * L * sizeof(double));
    curv__free(lam);
    return CURV_OK;
}

static int same_partition(const curv_bma *a, const curv_bma *b)
{
    return a->L == b->L && memcmp(a->s, b->s, a->L * sizeof(size_t)) == 0;
}

/* λ_i finite and > 0, B finite and symmetric to SYM_TOL * max|B|. */
static curv_status check_lambda_b(const char *who, const curv_bma *a, curv_error *err)
{
    size_t L = a->L;
    double bmax = 0;
    for (size_t i = 0; i < L; i++) {
        if (!(a->lambda[i] > 0) || !isfinite(a->lambda[i]))
            return curv__fail(err, CURV_E_INVALID,
                              "%s: block %zu: lambda = %g must be finite and > 0", who, i,
                              a->lambda[i]);
        for (size_t j = 0; j < L; j++) {
            double v = a->B[i * L + j];
            if (!isfinite(v))
                return curv__fail(err, CURV_E_INVALID, "%s: B[%zu][%zu] = %g is not finite", who, i,
                                  j, v);
            bmax = fmax(bmax, fabs(v));
        }
    }
    for (size_t i = 0; i < L; i++)
        for (size_t j = i + 1; j < L; j++) {
            double u = a->B[i * L + j], v = a->B[j * L + i];
            if (fabs(u - v) > SYM_TOL * bmax)
                return curv__fail(err, CURV_E_INVALID,
                                  "%s: B is not symmetric: B[%zu][%zu] = %g but B[%zu][%zu] = %g",
                                  who, i, j, u, j, i, v);
        }
    return CURV_OK;
}

static curv_status check_core_args(enum bma_op op, const curv_bma *a, double eig_floor,
                                   const curv_bma *out, curv_error *err)
{
    const char *who = bma_ops[op].name;
    if (!a || !out)
        return curv__fail(err, CURV_E_INVALID, "%s: %s is NULL", who, !a ? "a" : "out");
    if (!(eig_floor >= 0 && eig_floor < 1))
        return curv__fail(err, CURV_E_INVALID, "%s: eig_floor = %g must lie in [0, 1)", who,
                          eig_floor);
    if (!same_partition(a, out))
        return curv__fail(err, CURV_E_INVALID,
                          "%s: out has a different partition (L = %zu, d = %zu) from a (L = %zu, "
                          "d = %zu)",
                          who, out->L, out->d, a->L, a->d);
    return check_lambda_b(who, a, err);
}

/* K = Λ + S^1/2 B S^1/2 (L x L), symmetrised so that round-off in B
 * cannot leak into the eigensolver (BMA paper, Theorem 2, eq. 20). */
static void core_matrix(const curv_bma *a, double *K)
{
    size_t L = a->L;
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++)
            K[i * L + j] = sqrt((double)a->s[i] * (double)a->s[j]) * a->B[i * L + j] +
                           (i == j ? a->lambda[i] : 0.0);
    curv__symmetrize(L, K, L);
}

/* F(K) for the operation: Cholesky inverse for Theorem 1, eigenvalue
 * powers with the relative floor for Theorem 2 and Lemma 1. eig_floor = 0
 * demands a positive definite K; sym_pow alone would clamp negative
 * eigenvalues to 0 for p = 1/2, so the square root checks by Cholesky. */
static curv_status core_function(enum bma_op op, size_t L, double *K, double *work,
                                 double eig_floor, curv_error *err)
{
    if (op == BMA_INV)
        return curv__spd_inv(L, K, L, K, L, err);
    if (op == BMA_SQRT && eig_floor == 0) {
        curv_status st = curv__spd_inv(L, K, L, work, L, err);
        if (st != CURV_OK)
            return st;
    }
    /* Only the relative floor applies (floor_abs = -inf), so that a K whose
     * largest eigenvalue is negative still fails. */
    return curv__sym_pow(L, K, L, bma_ops[op].p, -INFINITY, eig_floor, K, L, err);
}

/* Λ_out = Λ^p and D = S^-1/2 (F(K) - Λ^p) S^-1/2 into @lam and @FK (in place),
 * which equals eq. 18 for p = -1 and eqs. 20 / 57 for p = -1/2, 1/2. */
static curv_status to_d(enum bma_op op, const curv_bma *a, double *FK, double *lam, curv_error *err)
{
    size_t L = a->L;
    double p = bma_ops[op].p;
    for (size_t i = 0; i < L; i++) {
        lam[i] = pow(a->lambda[i], p);
        if (!isfinite(lam[i]))
            return curv__fail(err, CURV_E_NUMERIC, "%s: block %zu: lambda = %g overflows",
                              bma_ops[op].name, i, a->lambda[i]);
    }
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++) {
            double v = FK[i * L + j] - (i == j ? lam[i] : 0.0);
            FK[i * L + j] = v / sqrt((double)a->s[i] * (double)a->s[j]);
        }
    return CURV_OK;
}

static curv_status bma_power(enum bma_op op, const curv_bma *a, double eig_floor, curv_bma *out,
                             curv_error *err)
{
    curv_status st = check_core_args(op, a, eig_floor, out, err);
    if (st != CURV_OK)
        return st;
    size_t L = a->L, LL = L * L; /* L * L checked in curv_bma_new */
    double *K = curv__calloc_n(2 * LL + L, sizeof(double));
    if (!K)
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory for L = %zu blocks",
                          bma_ops[op].name, L);
    double *lam = K + LL, *work = lam + L;
    core_matrix(a, K);
    curv_error sub = {CURV_OK, ""};
    st = core_function(op, L, K, work, eig_floor, &sub);
    if (st != CURV_OK)
        st = curv__fail(err, st, "%s: core matrix Lambda + S^1/2 B S^1/2 (%zu x %zu): %s",
                        bma_ops[op].name, L, L, sub.text);
    else
        st = to_d(op, a, K, lam, err);
    if (st == CURV_OK) {
        memcpy(out->lambda, lam, L * sizeof(double));
        memcpy(out->B, K, LL * sizeof(double));
    }
    curv__free(K);
    return st;
}

curv_status curv_bma_inv(const curv_bma *a, curv_bma *out, curv_error *err)
{
    return bma_power(BMA_INV, a, 0.0, out, err);
}

curv_status curv_bma_inv_sqrt(const curv_bma *a, double eig_floor, curv_bma *out, curv_error *err)
{
    return bma_power(BMA_INV_SQRT, a, eig_floor, out, err);
}

curv_status curv_bma_sqrt(const curv_bma *a, double eig_floor, curv_bma *out, curv_error *err)
{
    return bma_power(BMA_SQRT, a, eig_floor, out, err);
}

curv_status curv_bma_apply(const curv_bma *b, const double *x, double *y, curv_error *err)
{
    if (!b || !x || !y)
        return curv__fail(err, CURV_E_INVALID, "bma_apply: %s is NULL",
                          !b   ? "the BMA"
                          : !x ? "x"
                               : "y");
    size_t L = b->L;
    double *c = curv__calloc_n(L, sizeof(double));
    if (!c)
        return curv__fail(err, CURV_E_NOMEM, "bma_apply: out of memory for L = %zu blocks", L);
    /* Block sums first, so that y may alias x (BMA paper, after Theorem 1:
     * y_m = λ_b(m) x_m + sum_j b_b(m),j c_j). */
    for (size_t j = 0; j < L; j++)
        for (size_t n = b->off[j]; n < b->off[j + 1]; n++)
            c[j] += x[n];
    for (size_t i = 0; i < L; i++) {
        double t = 0;
        for (size_t j = 0; j < L; j++)
            t += b->B[i * L + j] * c[j];
        for (size_t m = b->off[i]; m < b->off[i + 1]; m++)
            y[m] = b->lambda[i] * x[m] + t;
    }
    curv__free(c);
    return CURV_OK;
}

curv_status curv_bma_expand(const curv_bma *b, double *M, size_t ld, curv_error *err)
{
    if (!b || !M)
        return curv__fail(err, CURV_E_INVALID, "bma_expand: %s is NULL", !b ? "the BMA" : "M");
    if (ld < b->d)
        return curv__fail(err, CURV_E_INVALID, "bma_expand: ld = %zu is less than d = %zu", ld,
                          b->d);
    size_t L = b->L;
    for (size_t i = 0; i < L; i++)
        for (size_t r = b->off[i]; r < b->off[i + 1]; r++)
            for (size_t j = 0; j < L; j++)
                for (size_t c = b->off[j]; c < b->off[j + 1]; c++)
                    M[r * ld + c] = b->B[i * L + j] + (r == c ? b->lambda[i] : 0.0);
    return CURV_OK;
}
