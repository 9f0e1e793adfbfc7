/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's block-tridiagonal inverse: F̂^-1 = Ξ^T Λ Ξ (thesis §6.4.3), with
 * each Σ_{i|i+1}^-1 in Λ applied through the eigendecompositions of
 * appendix B.2. Everything apply needs is computed by build, so apply is
 * GEMMs and one elementwise product per layer. Flat order and Kronecker
 * convention: kfac_tri.h; notes: docs/NOTES.md, "K-FAC block-tridiagonal".
 */
#include "kfac_tri.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "linalg.h"

struct tri_layer {
    size_t n_out, n_in;
    double *K1;   /* n_in x n_in: Ad^-1/2 E1 (last layer: Ad^-1) */
    double *K2;   /* n_out x n_out: Gd^-1/2 E2 (last layer: Gd^-1) */
    double *rden; /* n_out x n_in: 1 / max(1 - s2 s1^T, floor); NULL on the last layer */
    double *psiA; /* n_in x n_in[i+1]: Ax Ad[i+1]^-1; NULL on the last layer */
    double *psiG; /* n_out x n_out[i+1]: Gx Gd[i+1]^-1; NULL on the last layer */
};

struct curv__kfac_tri {
    size_t L, bytes;
    double *mem; /* every matrix of the layers, then tmp */
    double *tmp; /* apply's curv__gemm3 scratch */
    struct tri_layer layer[];
};

/* Build's scratch: T, P, S of nmax^2 doubles; s1, s2 of nmax. */
struct scratch {
    double *T, *P, *S, *s1, *s2;
};

/* *m = max(*m, a * b); sizes are <= INT_MAX, so a * b fits a 64-bit size_t. */
static void max_prod(size_t *m, size_t a, size_t b)
{
    size_t ab = a * b;
    *m = ab > *m ? ab : *m;
}

/* *total += a * b, or 0 on overflow. */
static int add_prod(size_t *total, size_t a, size_t b)
{
    size_t ab;
    if (!curv__mul_ok(a, b, &ab) || ab > SIZE_MAX - *total)
        return 0;
    *total += ab;
    return 1;
}

static curv_status check_args(size_t L, const size_t *n_out, const size_t *n_in,
                              const double *const *Ad, const double *const *Gd,
                              const double *const *Ax, const double *const *Gx,
                              struct curv__kfac_tri **out, curv_error *err)
{
    if (L < 2)
        return curv__fail(err, CURV_E_INVALID, "kfac_tri: a chain needs L >= 2 layers, got %zu", L);
    if (!n_out || !n_in || !Ad || !Gd || !Ax || !Gx || !out)
        return curv__fail(err, CURV_E_INVALID, "kfac_tri: NULL size, factor or output array");
    for (size_t i = 0; i < L; i++) {
        if (!Ad[i] || !Gd[i] || (i + 1 < L && (!Ax[i] || !Gx[i])))
            return curv__fail(err, CURV_E_INVALID, "kfac_tri: layer %zu: NULL factor", i);
        if (n_out[i] == 0 || n_in[i] == 0)
            return curv__fail(err, CURV_E_SHAPE, "kfac_tri: layer %zu is %zu x %zu, expected >= 1",
                              i, n_out[i], n_in[i]);
        if (n_out[i] > INT_MAX || n_in[i] > INT_MAX)
            return curv__fail(err, CURV_E_RANGE, "kfac_tri: layer %zu is %zu x %zu, too large", i,
                              n_out[i], n_in[i]);
        if (i > 0 && n_in[i] != n_out[i - 1] && n_in[i] != n_out[i - 1] + 1)
            return curv__fail(err, CURV_E_SHAPE,
                              "kfac_tri: layer %zu has n_in = %zu, expected n_out[%zu] = %zu "
                              "(+ 1 with a bias)",
                              i, n_in[i], i - 1, n_out[i - 1]);
    }
    return CURV_OK;
}

static curv_status check_finite(const char *name, size_t i, const double *x, size_t rows,
                                size_t cols, curv_error *err)
{
    size_t k = curv__first_nonfinite(x, rows * cols);
    if (k < rows * cols)
        return curv__fail(err, CURV_E_NUMERIC, "kfac_tri: %s[%zu] (%zu x %zu) has %g at (%zu, %zu)",
                          name, i, rows, cols, x[k], k / cols, k % cols);
    return CURV_OK;
}

static curv_status check_inputs(size_t L, const size_t *n_out, const size_t *n_in,
                                const double *const *Ad, const double *const *Gd,
                                const double *const *Ax, const double *const *Gx, curv_error *err)
{
    curv_status st = CURV_OK;
    for (size_t i = 0; i < L && st == CURV_OK; i++) {
        st = check_finite("Ad", i, Ad[i], n_in[i], n_in[i], err);
        if (st == CURV_OK)
            st = check_finite("Gd", i, Gd[i], n_out[i], n_out[i], err);
        if (st == CURV_OK && i + 1 < L)
            st = check_finite("Ax", i, Ax[i], n_in[i], n_in[i + 1], err);
        if (st == CURV_OK && i + 1 < L)
            st = check_finite("Gx", i, Gx[i], n_out[i], n_out[i + 1], err);
    }
    return st;
}

/* Eigendecomposition of S (n x n, upper triangle read) into S = E and s,
 * failing unless both are finite. */
static curv_status eig_checked(size_t n, double *S, double *s, const char *what, size_t i,
                               curv_error *err)
{
    curv_error inner;
    curv_status st = curv__sym_eig(n, S, n, s, &inner);
    if (st != CURV_OK)
        return curv__fail(err, st, "kfac_tri: %s[%zu]: %s", what, i, inner.text);
    if (curv__first_nonfinite(s, n) < n || curv__first_nonfinite(S, n * n) < n * n)
        return curv__fail(err, CURV_E_NUMERIC,
                          "kfac_tri: %s[%zu]: the eigendecomposition (%zu x %zu) has non-finite "
                          "output",
                          what, i, n, n);
    return CURV_OK;
}

/* S = P P^T, full, for P of n x k. */
static void gram(size_t n, size_t k, const double *P, double *S)
{
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)n, (int)k, 1.0, P, (int)k, 0.0, S,
                (int)n);
    for (size_t r = 0; r < n; r++)
        for (size_t c = 0; c < r; c++)
            S[r * n + c] = S[c * n + r];
}

/*
 * H = Q diag(w)^-1/2 for a damped factor F = Q diag(w) Q^T, written over
 * @H (a copy of F on entry): H^T F H = I and H H^T = F^-1. B.2's K = F^-1/2 E
 * comes out the same from H, since F^-1/2 = H Q^T, and this saves a product.
 */
static curv_status whiten(size_t n, double *H, double *w, const char *what, size_t i,
                          curv_error *err)
{
    curv_status st = eig_checked(n, H, w, what, i, err);
    if (st != CURV_OK)
        return st;
    if (!(w[0] > 0)) /* dsyevd sorts ascending */
        return curv__fail(err, CURV_E_NUMERIC,
                          "kfac_tri: %s[%zu] (%zu x %zu) is not positive definite "
                          "(smallest eigenvalue %g)",
                          what, i, n, n, w[0]);
    for (size_t k = 0; k < n; k++)
        w[k] = 1.0 / sqrt(w[k]);
    for (size_t r = 0; r < n; r++)
        for (size_t k = 0; k < n; k++)
            H[r * n + k] *= w[k];
    return CURV_OK;
}

/*
 * One side of layer i's coupling to layer i+1 (B.2 with the damped factor
 * F and C = X F2^-1 X^T): psi = X F2^-1, and HK goes from H to K = H E,
 * where H^T C H = E diag(s) E^T. H^T C H is formed as P P^T with
 * P = H^T X H2, so it is PSD whatever X is.
 */
static curv_status couple(size_t n, size_t n2, const double *X, double *HK, const double *H2,
                          double *psi, double *s, const struct scratch *b, const char *what,
                          size_t i, curv_error *err)
{
    int in = (int)n, in2 = (int)n2;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, in2, in2, 1.0, X, in2, H2, in2, 0.0,
                b->T, in2);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, in, in2, in2, 1.0, b->T, in2, H2, in2, 0.0,
                psi, in2);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, in2, in, 1.0, HK, in, b->T, in2, 0.0,
                b->P, in2);
    gram(n, n2, b->P, b->S);
    if (curv__first_nonfinite(b->S, n * n) < n * n)
        return curv__fail(err, CURV_E_NUMERIC,
                          "kfac_tri: %s[%zu]: the whitened cross factor overflows", what, i);
    curv_status st = eig_checked(n, b->S, s, what, i, err);
    if (st != CURV_OK)
        return st;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, in, in, in, 1.0, HK, in, b->S, in, 0.0,
                b->T, in);
    memcpy(HK, b->T, n * n * sizeof(double));
    return CURV_OK;
}

/* Layer i's 1 / max(1 - s2_r s1_c, floor); returns how many were clamped. */
static size_t denominators(const struct tri_layer *l, const double *s1, const double *s2)
{
    size_t clamped = 0;
    for (size_t r = 0; r < l->n_out; r++)
        for (size_t c = 0; c < l->n_in; c++) {
            double d = 1.0 - s2[r] * s1[c];
            if (d < CURV__KFAC_TRI_DEN_FLOOR) {
                d = CURV__KFAC_TRI_DEN_FLOOR;
                clamped++;
            }
            l->rden[r * l->n_in + c] = 1.0 / d;
        }
    return clamped;
}

/* Allocate @t with every layer's matrices carved from one block. */
static curv_status alloc_tri(size_t L, const size_t *n_out, const size_t *n_in,
                             struct curv__kfac_tri **out, curv_error *err)
{
    size_t total = 0, tmp_n = 0;
    int ok = 1;
    for (size_t i = 0; i < L && ok; i++) {
        ok = add_prod(&total, n_in[i], n_in[i]) && add_prod(&total, n_out[i], n_out[i]);
        max_prod(&tmp_n, n_out[i], n_in[i]);
        if (ok && i + 1 < L) {
            ok = add_prod(&total, n_out[i], n_in[i]) && add_prod(&total, n_in[i], n_in[i + 1]) &&
                 add_prod(&total, n_out[i], n_out[i + 1]);
            max_prod(&tmp_n, n_out[i], n_in[i + 1]);
            max_prod(&tmp_n, n_out[i + 1], n_in[i]);
        }
    }
    if (!ok || tmp_n > SIZE_MAX - total || total + tmp_n > SIZE_MAX / sizeof(double))
        return curv__fail(err, CURV_E_RANGE, "kfac_tri: the chain's matrices are too large");
    total += tmp_n;
    struct curv__kfac_tri *t = curv__calloc_n(1, sizeof *t + L * sizeof t->layer[0]);
    double *mem = t ? curv__calloc_n(total, sizeof(double)) : NULL;
    if (!mem) {
        curv__free(t);
        return curv__fail(err, CURV_E_NOMEM, "kfac_tri: out of memory for %zu doubles", total);
    }
    t->L = L;
    t->mem = mem;
    t->bytes = sizeof *t + L * sizeof t->layer[0] + total * sizeof(double);
    for (size_t i = 0; i < L; i++) {
        struct tri_layer *l = &t->layer[i];
        l->n_out = n_out[i];
        l->n_in = n_in[i];
        l->K1 = mem;
        mem += n_in[i] * n_in[i];
        l->K2 = mem;
        mem += n_out[i] * n_out[i];
        if (i + 1 < L) {
            l->rden = mem;
            mem += n_out[i] * n_in[i];
            l->psiA = mem;
            mem += n_in[i] * n_in[i + 1];
            l->psiG = mem;
            mem += n_out[i] * n_out[i + 1];
        }
    }
    t->tmp = mem;
    *out = t;
    return CURV_OK;
}

/* Fill @t from the factors, as curv__kfac_tri_build describes. */
static curv_status compute(struct curv__kfac_tri *t, const double *const *Ad,
                           const double *const *Gd, const double *const *Ax,
                           const double *const *Gx, const struct scratch *b, size_t *clamped,
                           curv_error *err)
{
    size_t L = t->L;
    curv_status st = CURV_OK;
    /* K1, K2 first hold each damped factor's whitening H. */
    for (size_t i = 0; i < L && st == CURV_OK; i++) {
        struct tri_layer *l = &t->layer[i];
        memcpy(l->K1, Ad[i], l->n_in * l->n_in * sizeof(double));
        memcpy(l->K2, Gd[i], l->n_out * l->n_out * sizeof(double));
        st = whiten(l->n_in, l->K1, b->s1, "Ad", i, err);
        if (st == CURV_OK)
            st = whiten(l->n_out, l->K2, b->s2, "Gd", i, err);
    }
    /* Ascending, so layer i+1's H is still there when layer i needs it. */
    for (size_t i = 0; i + 1 < L && st == CURV_OK; i++) {
        struct tri_layer *l = &t->layer[i], *up = &t->layer[i + 1];
        st = couple(l->n_in, up->n_in, Ax[i], l->K1, up->K1, l->psiA, b->s1, b, "Ax", i, err);
        if (st == CURV_OK)
            st = couple(l->n_out, up->n_out, Gx[i], l->K2, up->K2, l->psiG, b->s2, b, "Gx", i, err);
        if (st == CURV_OK)
            *clamped += denominators(l, b->s1, b->s2);
    }
    if (st != CURV_OK)
        return st;
    /* The last layer's Σ_ℓ^-1 = Gd^-1 ⊗ Ad^-1 (flat order), from H H^T. */
    struct tri_layer *top = &t->layer[L - 1];
    gram(top->n_in, top->n_in, top->K1, b->S);
    memcpy(top->K1, b->S, top->n_in * top->n_in * sizeof(double));
    gram(top->n_out, top->n_out, top->K2, b->S);
    memcpy(top->K2, b->S, top->n_out * top->n_out * sizeof(double));
    /* Products of finite matrices can still overflow. Layer i's matrices
     * are contiguous, from its K1 up to layer i+1's K1 (alloc_tri). */
    for (size_t i = 0; i < L; i++) {
        const struct tri_layer *l = &t->layer[i];
        size_t n = (size_t)((i + 1 < L ? t->layer[i + 1].K1 : t->tmp) - l->K1);
        if (curv__first_nonfinite(l->K1, n) < n)
            return curv__fail(err, CURV_E_NUMERIC,
                              "kfac_tri: layer %zu: the precomputed matrices overflow", i);
    }
    return CURV_OK;
}

curv_status curv__kfac_tri_build(size_t L, const size_t *n_out, const size_t *n_in,
                                 const double *const *Ad, const double *const *Gd,
                                 const double *const *Ax, const double *const *Gx,
                                 struct curv__kfac_tri **out, size_t *clamped, curv_error *err)
{
    curv_status st = check_args(L, n_out, n_in, Ad, Gd, Ax, Gx, out, err);
    if (st == CURV_OK)
        st = check_inputs(L, n_out, n_in, Ad, Gd, Ax, Gx, err);
    struct curv__kfac_tri *t = NULL;
    if (st == CURV_OK)
        st = alloc_tri(L, n_out, n_in, &t, err);
    if (st != CURV_OK)
        return st;
    size_t nmax = 0;
    for (size_t i = 0; i < L; i++) {
        nmax = n_out[i] > nmax ? n_out[i] : nmax;
        nmax = n_in[i] > nmax ? n_in[i] : nmax;
    }
    struct scratch b;
    /* nmax <= INT_MAX, so 3 nmax^2 + 2 nmax only overflows a 32-bit size_t. */
    size_t nn = 0, ns = 0;
    double *work = NULL;
    if (add_prod(&nn, nmax, nmax) && add_prod(&ns, nn, 3) && add_prod(&ns, nmax, 2))
        work = curv__calloc_n(ns, sizeof(double));
    if (!work) {
        curv__kfac_tri_free(t);
        return curv__fail(err, CURV_E_NOMEM, "kfac_tri: out of memory for build scratch");
    }
    b.T = work;
    b.P = b.T + nn;
    b.S = b.P + nn;
    b.s1 = b.S + nn;
    b.s2 = b.s1 + nmax;
    size_t nclamped = 0;
    st = compute(t, Ad, Gd, Ax, Gx, &b, &nclamped, err);
    curv__free(work);
    if (st != CURV_OK) {
        curv__kfac_tri_free(t);
        return st;
    }
    *out = t;
    if (clamped)
        *clamped = nclamped;
    return CURV_OK;
}

void curv__kfac_tri_apply(const struct curv__kfac_tri *t, const double *const *V, double *const *X)
{
    const struct tri_layer *ly = t->layer;
    size_t L = t->L;
    /* u = Ξ v: U_i = V_i - Ψ^G_i V_{i+1} Ψ^A_i^T; U_last = V_last. */
    for (size_t i = 0; i < L; i++) {
        memcpy(X[i], V[i], ly[i].n_out * ly[i].n_in * sizeof(double));
        if (i + 1 < L)
            curv__gemm3(ly[i].n_out, ly[i + 1].n_out, ly[i + 1].n_in, ly[i].n_in, -1.0, ly[i].psiG,
                        0, V[i + 1], ly[i].psiA, 1, 1.0, X[i], t->tmp);
    }
    /* w = Λ u: K2 [(K2^T U K1) ⊙ rden] K1^T (B.2); the last layer Gd^-1 U Ad^-1. */
    for (size_t i = 0; i < L; i++) {
        size_t no = ly[i].n_out, ni = ly[i].n_in;
        if (i + 1 == L) {
            curv__gemm3(no, no, ni, ni, 1.0, ly[i].K2, 0, X[i], ly[i].K1, 0, 0.0, X[i], t->tmp);
            break;
        }
        curv__gemm3(no, no, ni, ni, 1.0, ly[i].K2, 1, X[i], ly[i].K1, 0, 0.0, X[i], t->tmp);
        double *x = X[i];
        const double *rd = ly[i].rden;
        for (size_t k = 0; k < no * ni; k++)
            x[k] *= rd[k];
        curv__gemm3(no, no, ni, ni, 1.0, ly[i].K2, 0, X[i], ly[i].K1, 1, 0.0, X[i], t->tmp);
    }
    /* x = Ξ^T w: X_i = W_i - Ψ^G_{i-1}^T W_{i-1} Ψ^A_{i-1}, top layer first
     * so that W_{i-1} is still unchanged when layer i reads it. */
    for (size_t i = L - 1; i >= 1; i--)
        curv__gemm3(ly[i].n_out, ly[i - 1].n_out, ly[i - 1].n_in, ly[i].n_in, -1.0, ly[i - 1].psiG,
                    1, X[i - 1], ly[i - 1].psiA, 0, 1.0, X[i], t->tmp);
}

void curv__kfac_tri_free(struct curv__kfac_tri *t)
{
    if (!t)
        return;
    curv__free(t->mem);
    curv__free(t);
}

size_t curv__kfac_tri_bytes(const struct curv__kfac_tri *t)
{
    return t ? t->bytes : 0;
}
