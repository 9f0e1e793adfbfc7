/* SPDX-License-Identifier: MIT */
/*
 * The K-FAC block-tridiagonal inverse (lib/src/kfac_tri.c) against dense
 * reference math formed here on tiny chains: F̃'s tridiagonal blocks as full
 * matrices, the thesis' directed Gaussian model (§6.4.3) built from its
 * definitions with dense products and a Gauss-Jordan inverse written here,
 * and the Jacobi eigensolver of testutil; never B.2's eigen tricks.
 *
 * Flat order and Kronecker order. Layer i's gradient V_i is the row-major
 * n_out x n_in matrix W[out][in], flat index r * n_in + c. The thesis writes
 * F̃_ij = Ā_ij ⊗ G_ij for the column-major vec(V) = ā ⊗ g (index
 * c * n_out + r), where (Ā ⊗ G) vec(V) = vec(G V Ā^T). Row-major order is
 * vec(V^T), and vec((G V Ā^T)^T) = (G ⊗ Ā) vec(V^T), so in row-major order
 * block (i, j) is G_ij ⊗ Ā_ij: entry ((r, c), (r', c')) = G_ij[r][r'] Ā_ij[c][c'].
 */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <dlfcn.h>
#include <lapacke.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_tri.h"
#include "testutil.h"

#define LMAX 4
#define NCASES 40  /* samples behind the factor estimates */
#define GAMMA 0.05 /* factored Tikhonov damping strength */
#define TOL 1e-9   /* relative, against the dense references */

struct chain {
    size_t L, n_out[LMAX], n_in[LMAX], off[LMAX + 1]; /* off[L] = D, the flat dimension */
    double *Ad[LMAX], *Gd[LMAX], *Ax[LMAX], *Gx[LMAX];
};

/* Layer widths d[0..L] and which layers have a bias. */
struct shape {
    size_t L, d[LMAX + 1];
    int bias[LMAX];
};

static const struct shape SHAPES[] = {
    {2, {3, 4, 2}, {1, 1}},
    {2, {3, 4, 2}, {0, 0}},
    {3, {5, 3, 3, 2}, {1, 1, 1}},
    {3, {5, 3, 3, 2}, {0, 0, 0}},
    {4, {2, 3, 4, 3, 2}, {1, 0, 1, 0}},
};
#define NSHAPES (sizeof SHAPES / sizeof SHAPES[0])

/* out = X^T Y / NCASES for X of NCASES x a and Y of NCASES x b. */
static double *moment(const double *X, size_t a, const double *Y, size_t b)
{
    double *out = tu_alloc(a * b);
    for (size_t i = 0; i < a; i++)
        for (size_t j = 0; j < b; j++) {
            double s = 0;
            for (size_t k = 0; k < NCASES; k++)
                s += X[k * a + i] * Y[k * b + j];
            out[i * b + j] = s / NCASES;
        }
    return out;
}

static double trace(size_t n, const double *A)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += A[i * n + i];
    return s;
}

/*
 * Factors estimated from one set of cases, as K-FAC does (ALGORITHMS.md
 * §3.2), so the assembled tridiagonal blocks are PSD: inputs ā_i of a tanh
 * chain and output signals g_i correlated across adjacent layers; damped
 * with the trace-norm π_i (§3.3).
 */
static void make_chain(const struct shape *sh, uint64_t seed, struct chain *c)
{
    tu_rng rng;
    tu_rng_seed(&rng, seed);
    size_t L = sh->L;
    double *abar[LMAX], *g[LMAX];
    memset(c, 0, sizeof *c);
    c->L = L;
    for (size_t i = 0; i < L; i++) {
        c->n_out[i] = sh->d[i + 1];
        c->n_in[i] = sh->d[i] + (size_t)sh->bias[i];
        c->off[i + 1] = c->off[i] + c->n_out[i] * c->n_in[i];
    }
    for (size_t i = 0; i < L; i++) {
        size_t ni = c->n_in[i], d = sh->d[i];
        abar[i] = tu_alloc(NCASES * ni);
        for (size_t k = 0; k < NCASES; k++) {
            for (size_t u = 0; u < d; u++) {
                double s = 0.3 * tu_normal(&rng);
                for (size_t p = 0; i > 0 && p < c->n_in[i - 1]; p++)
                    s += abar[i - 1][k * c->n_in[i - 1] + p] * sin(1.0 + (double)(3 * p + u));
                abar[i][k * ni + u] = i > 0 ? tanh(s) : s;
            }
            if (sh->bias[i])
                abar[i][k * ni + d] = 1.0;
        }
    }
    for (size_t i = L; i-- > 0;) {
        size_t no = c->n_out[i];
        g[i] = tu_alloc(NCASES * no);
        for (size_t k = 0; k < NCASES; k++)
            for (size_t r = 0; r < no; r++) {
                double s = 0.5 * tu_normal(&rng);
                for (size_t p = 0; i + 1 < L && p < c->n_out[i + 1]; p++)
                    s += g[i + 1][k * c->n_out[i + 1] + p] * cos((double)(2 * p + 5 * r));
                g[i][k * no + r] = s;
            }
    }
    for (size_t i = 0; i < L; i++) {
        size_t ni = c->n_in[i], no = c->n_out[i];
        c->Ad[i] = moment(abar[i], ni, abar[i], ni);
        c->Gd[i] = moment(g[i], no, g[i], no);
        double pi = sqrt((trace(ni, c->Ad[i]) / (double)ni) / (trace(no, c->Gd[i]) / (double)no));
        for (size_t k = 0; k < ni; k++)
            c->Ad[i][k * ni + k] += pi * GAMMA;
        for (size_t k = 0; k < no; k++)
            c->Gd[i][k * no + k] += GAMMA / pi;
        if (i + 1 < L) {
            c->Ax[i] = moment(abar[i], ni, abar[i + 1], c->n_in[i + 1]);
            c->Gx[i] = moment(g[i], no, g[i + 1], c->n_out[i + 1]);
        }
    }
    for (size_t i = 0; i < L; i++) {
        free(abar[i]);
        free(g[i]);
    }
}

static void free_chain(struct chain *c)
{
    for (size_t i = 0; i < c->L; i++) {
        free(c->Ad[i]);
        free(c->Gd[i]);
        free(c->Ax[i]);
        free(c->Gx[i]);
    }
}

static curv_status build(const struct chain *c, struct curv__kfac_tri **t, size_t *clamped,
                         curv_error *err)
{
    return curv__kfac_tri_build(c->L, c->n_out, c->n_in, (const double *const *)c->Ad,
                                (const double *const *)c->Gd, (const double *const *)c->Ax,
                                (const double *const *)c->Gx, t, clamped, err);
}

static struct curv__kfac_tri *build_ok(const struct chain *c, size_t *clamped)
{
    struct curv__kfac_tri *t = NULL;
    curv_error err;
    tu_assert_status(build(c, &t, clamped, &err), CURV_OK, &err);
    assert_non_null(t);
    return t;
}

/* x = F̂^-1 v through the module, on flat vectors of length D. */
static void apply_flat(const struct chain *c, const struct curv__kfac_tri *t, const double *v,
                       double *x)
{
    const double *V[LMAX];
    double *X[LMAX];
    for (size_t i = 0; i < c->L; i++) {
        V[i] = v + c->off[i];
        X[i] = x + c->off[i];
    }
    curv__kfac_tri_apply(t, V, X);
}

/* The module's F̂^-1 as a dense D x D matrix, one unit vector at a time. */
static double *module_dense(const struct chain *c, const struct curv__kfac_tri *t)
{
    size_t D = c->off[c->L];
    double *M = tu_alloc(D * D), *e = tu_alloc(D), *x = tu_alloc(D);
    for (size_t k = 0; k < D; k++) {
        e[k] = 1.0;
        apply_flat(c, t, e, x);
        e[k] = 0.0;
        for (size_t r = 0; r < D; r++)
            M[r * D + k] = x[r];
    }
    free(e);
    free(x);
    return M;
}

/* ---- Dense reference math ---- */

/* Gauss-Jordan inverse with partial pivoting (n x n). */
static double *gj_inverse(size_t n, const double *A)
{
    double *out = tu_alloc(n * n);
    tu_gj_inverse(n, A, out);
    return out;
}

static double *transpose(size_t rows, size_t cols, const double *A)
{
    double *T = tu_alloc(rows * cols);
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            T[j * rows + i] = A[i * cols + j];
    return T;
}

/* A * B for A of m x k, B of k x n, as a new matrix. */
static double *mul(size_t m, size_t k, size_t n, const double *A, const double *B)
{
    double *C = tu_alloc(m * n);
    tu_matmul(m, k, n, A, B, C);
    return C;
}

static size_t dim(const struct chain *c, size_t i)
{
    return c->n_out[i] * c->n_in[i];
}

/* F̃'s block (i, j), |i - j| <= 1, as a dense dim(i) x dim(j) matrix in the
 * row-major flat order: G_ij ⊗ Ā_ij (see the top of this file). */
static double *fisher_block(const struct chain *c, size_t i, size_t j)
{
    size_t lo = i < j ? i : j, nii = c->n_in[i], nij = c->n_in[j], noj = c->n_out[j];
    double *B = tu_alloc(dim(c, i) * dim(c, j));
    for (size_t r = 0; r < c->n_out[i]; r++)
        for (size_t a = 0; a < nii; a++)
            for (size_t r2 = 0; r2 < noj; r2++)
                for (size_t a2 = 0; a2 < nij; a2++) {
                    double g, x;
                    if (i == j) {
                        g = c->Gd[i][r * noj + r2];
                        x = c->Ad[i][a * nij + a2];
                    } else if (i == lo) { /* G_{i,i+1} = E[g_i g_{i+1}^T] */
                        g = c->Gx[lo][r * noj + r2];
                        x = c->Ax[lo][a * nij + a2];
                    } else { /* G_{i,i-1} = G_{i-1,i}^T */
                        g = c->Gx[lo][r2 * c->n_out[i] + r];
                        x = c->Ax[lo][a2 * nii + a];
                    }
                    B[(r * nii + a) * dim(c, j) + r2 * nij + a2] = g * x;
                }
    return B;
}

/* Copy @B (rows x cols) into block (off_r, off_c) of the D x D matrix @M. */
static void put_block(size_t D, double *M, size_t off_r, size_t off_c, size_t rows, size_t cols,
                      const double *B)
{
    for (size_t r = 0; r < rows; r++)
        memcpy(M + (off_r + r) * D + off_c, B + r * cols, cols * sizeof(double));
}

/* F̃ restricted to its tridiagonal blocks, zero elsewhere (D x D). */
static double *fisher_tri(const struct chain *c)
{
    size_t D = c->off[c->L];
    double *F = tu_alloc(D * D);
    for (size_t i = 0; i < c->L; i++)
        for (size_t j = i > 0 ? i - 1 : 0; j < c->L && j <= i + 1; j++) {
            double *B = fisher_block(c, i, j);
            put_block(D, F, c->off[i], c->off[j], dim(c, i), dim(c, j), B);
            free(B);
        }
    return F;
}

/* B.2 for one side of layer i, by Jacobi (F^-1/2 from testutil, F2^-1 by
 * Gauss-Jordan): F^-1/2 X F2^-1 X^T F^-1/2 = E diag(s) E^T, and, unless
 * NULL, K = F^-1/2 E. */
static void coupling_eigs(size_t n, size_t n2, const double *F, const double *F2, const double *X,
                          double *s, double *K)
{
    double *Fh = tu_alloc(n * n), *F2i = gj_inverse(n2, F2), *XT = transpose(n, n2, X);
    tu_sym_pow(n, F, -0.5, 0.0, Fh);
    double *XF = mul(n, n2, n2, X, F2i), *C = mul(n, n2, n, XF, XT);
    double *FC = mul(n, n, n, Fh, C), *S = mul(n, n, n, FC, Fh), *E = tu_alloc(n * n);
    tu_sym_eig(n, S, E, s);
    if (K)
        tu_matmul(n, n, n, Fh, E, K);
    free(Fh), free(F2i), free(XT), free(XF), free(C), free(FC), free(S), free(E);
}

/*
 * Σ_{i|i+1}^-1 with the documented clamp, densely: in the flat order
 * Σ = Gd ⊗ Ad - D ⊗ C, and with K2 = Gd^-1/2 E2, K1 = Ad^-1/2 E1,
 * (K2 ⊗ K1)^T Σ (K2 ⊗ K1) = diag(1 - s2_r s1_c), so the clamped inverse is
 * (K2 ⊗ K1) diag(1 / max(1 - s2_r s1_c, floor)) (K2 ⊗ K1)^T.
 */
static double *clamped_sigma_inv(const struct chain *c, size_t i)
{
    size_t ni = c->n_in[i], no = c->n_out[i], n = dim(c, i);
    double *s1 = tu_alloc(ni), *s2 = tu_alloc(no), *K1 = tu_alloc(ni * ni), *K2 = tu_alloc(no * no);
    coupling_eigs(ni, c->n_in[i + 1], c->Ad[i], c->Ad[i + 1], c->Ax[i], s1, K1);
    coupling_eigs(no, c->n_out[i + 1], c->Gd[i], c->Gd[i + 1], c->Gx[i], s2, K2);
    double *K = tu_alloc(n * n), *KD = tu_alloc(n * n);
    for (size_t r = 0; r < no; r++)
        for (size_t a = 0; a < ni; a++)
            for (size_t r2 = 0; r2 < no; r2++)
                for (size_t a2 = 0; a2 < ni; a2++)
                    K[(r * ni + a) * n + r2 * ni + a2] = K2[r * no + r2] * K1[a * ni + a2];
    for (size_t row = 0; row < n; row++)
        for (size_t col = 0; col < n; col++)
            KD[row * n + col] = K[row * n + col] /
                                fmax(1.0 - s2[col / ni] * s1[col % ni], CURV__KFAC_TRI_DEN_FLOOR);
    double *KT = transpose(n, n, K), *out = mul(n, n, n, KD, KT);
    free(s1), free(s2), free(K1), free(K2), free(K), free(KD), free(KT);
    return out;
}

/*
 * F̂^-1 = Ξ^T Λ Ξ from the thesis' definitions (§6.4.3), densely:
 * Ψ_{i,i+1} = F̃_{i,i+1} F̃_{i+1,i+1}^-1, Σ_{i|i+1} = F̃_ii - Ψ F̃_{i+1,i+1} Ψ^T,
 * Σ_ℓ = F̃_ℓℓ, Λ = diag(Σ^-1), Ξ = I with -Ψ_{i,i+1} at block (i, i+1).
 * With @clamp, Λ holds clamped_sigma_inv instead (for inconsistent factors).
 */
static double *dggm_inverse(const struct chain *c, int clamp)
{
    size_t D = c->off[c->L];
    double *Xi = tu_alloc(D * D), *Lam = tu_alloc(D * D);
    for (size_t k = 0; k < D; k++)
        Xi[k * D + k] = 1.0;
    for (size_t i = 0; i < c->L; i++) {
        size_t n = dim(c, i);
        double *Sigma = fisher_block(c, i, i);
        if (i + 1 < c->L) {
            size_t n2 = dim(c, i + 1);
            double *F12 = fisher_block(c, i, i + 1), *F22 = fisher_block(c, i + 1, i + 1);
            double *F22inv = gj_inverse(n2, F22), *Psi = mul(n, n2, n2, F12, F22inv);
            double *PsiT = transpose(n, n2, Psi), *PF = mul(n, n2, n2, Psi, F22);
            double *PFP = mul(n, n2, n, PF, PsiT);
            for (size_t k = 0; k < n * n; k++)
                Sigma[k] -= PFP[k];
            for (size_t k = 0; k < n * n2; k++)
                Psi[k] = -Psi[k];
            put_block(D, Xi, c->off[i], c->off[i + 1], n, n2, Psi);
            free(F12), free(F22), free(F22inv), free(Psi), free(PsiT), free(PF), free(PFP);
        }
        double *SigmaInv = clamp && i + 1 < c->L ? clamped_sigma_inv(c, i) : gj_inverse(n, Sigma);
        put_block(D, Lam, c->off[i], c->off[i], n, n, SigmaInv);
        free(Sigma);
        free(SigmaInv);
    }
    double *XiT = transpose(D, D, Xi), *XL = mul(D, D, D, XiT, Lam), *out = mul(D, D, D, XL, Xi);
    free(Xi), free(Lam), free(XiT), free(XL);
    return out;
}

/* Layer of flat index k. */
static size_t layer_of(const struct chain *c, size_t k)
{
    size_t i = 0;
    while (k >= c->off[i + 1])
        i++;
    return i;
}

/* ---- Tests ---- */

/* apply() equals the dense Ξ^T Λ Ξ, as a whole matrix and on random v. */
static void test_matches_dggm_reference(void **state)
{
    (void)state;
    for (size_t s = 0; s < NSHAPES; s++) {
        struct chain c;
        make_chain(&SHAPES[s], 100 + s, &c);
        size_t D = c.off[c.L], clamped = 99;
        struct curv__kfac_tri *t = build_ok(&c, &clamped);
        assert_int_equal(clamped, 0); /* consistent factors */
        double *R = dggm_inverse(&c, 0), *M = module_dense(&c, t);
        tu_expect_close(M, R, D * D, TOL, "dense F^-1 vs DGGM", (int)s);
        tu_rng rng;
        tu_rng_seed(&rng, 7 + s);
        double *v = tu_alloc(D), *x = tu_alloc(D), *want = tu_alloc(D);
        tu_fill_normal(&rng, v, D, 1.0);
        apply_flat(&c, t, v, x);
        tu_matmul(D, D, 1, R, v, want);
        tu_expect_close(x, want, D, TOL, "F^-1 v vs DGGM", (int)s);
        free(v), free(x), free(want), free(R), free(M);
        curv__kfac_tri_free(t);
        free_chain(&c);
    }
}

/*
 * The thesis' defining property (§6.4.3), checked on the module's own
 * output: F̂^-1 is symmetric and block tridiagonal, and its inverse F̂
 * agrees with F̃ on the tridiagonal blocks. (The inverse of F̃_tri itself
 * is dense, so the zero pattern tells the two apart.)
 */
static void test_tridiagonal_precision(void **state)
{
    (void)state;
    for (size_t s = 0; s < NSHAPES; s++) {
        struct chain c;
        make_chain(&SHAPES[s], 200 + s, &c);
        size_t D = c.off[c.L];
        struct curv__kfac_tri *t = build_ok(&c, NULL);
        double *M = module_dense(&c, t), *MT = transpose(D, D, M);
        tu_expect_close(M, MT, D * D, 1e-12, "F^-1 symmetric", (int)s);
        for (size_t r = 0; r < D; r++)
            for (size_t k = 0; k < D; k++) {
                size_t i = layer_of(&c, r), j = layer_of(&c, k);
                if (i > j + 1 || j > i + 1)
                    assert_true(M[r * D + k] == 0.0);
            }
        double *Fhat = gj_inverse(D, M), *Ftri = fisher_tri(&c);
        int off_tri_nonzero = 0;
        for (size_t r = 0; r < D; r++)
            for (size_t k = 0; k < D; k++) {
                size_t i = layer_of(&c, r), j = layer_of(&c, k);
                if (i > j + 1 || j > i + 1) {
                    off_tri_nonzero |= fabs(Fhat[r * D + k]) > 1e-6;
                    Fhat[r * D + k] = 0.0;
                }
            }
        tu_expect_close(Fhat, Ftri, D * D, TOL, "tridiagonal blocks of F^", (int)s);
        assert_int_equal(off_tri_nonzero, c.L > 2); /* F̂ != F̃_tri beyond two layers */
        free(M), free(MT), free(Fhat), free(Ftri);
        curv__kfac_tri_free(t);
        free_chain(&c);
    }
}

/* (a) Without cross factors F̂^-1 is block diagonal: X_i = Gd^-1 V_i Ad^-1. */
static void test_zero_cross_is_block_diagonal(void **state)
{
    (void)state;
    struct chain c;
    make_chain(&SHAPES[2], 300, &c);
    for (size_t i = 0; i + 1 < c.L; i++) {
        memset(c.Ax[i], 0, c.n_in[i] * c.n_in[i + 1] * sizeof(double));
        memset(c.Gx[i], 0, c.n_out[i] * c.n_out[i + 1] * sizeof(double));
    }
    size_t D = c.off[c.L], clamped = 99;
    struct curv__kfac_tri *t = build_ok(&c, &clamped);
    assert_int_equal(clamped, 0);
    tu_rng rng;
    tu_rng_seed(&rng, 301);
    double *v = tu_alloc(D), *x = tu_alloc(D);
    tu_fill_normal(&rng, v, D, 1.0);
    apply_flat(&c, t, v, x);
    for (size_t i = 0; i < c.L; i++) {
        size_t no = c.n_out[i], ni = c.n_in[i];
        double *Gi = gj_inverse(no, c.Gd[i]), *Ai = gj_inverse(ni, c.Ad[i]);
        double *GV = mul(no, no, ni, Gi, v + c.off[i]), *want = mul(no, ni, ni, GV, Ai);
        tu_expect_close(x + c.off[i], want, no * ni, 1e-12, "block-diagonal layer", (int)i);
        free(Gi), free(Ai), free(GV), free(want);
    }
    free(v), free(x);
    curv__kfac_tri_free(t);
    free_chain(&c);
}

/* How many 1 - s2_r s1_c fall below the floor, over every coupled layer. */
static size_t expected_clamps(const struct chain *c)
{
    size_t count = 0;
    for (size_t i = 0; i + 1 < c->L; i++) {
        size_t ni = c->n_in[i], no = c->n_out[i];
        double *s1 = tu_alloc(ni), *s2 = tu_alloc(no);
        coupling_eigs(ni, c->n_in[i + 1], c->Ad[i], c->Ad[i + 1], c->Ax[i], s1, NULL);
        coupling_eigs(no, c->n_out[i + 1], c->Gd[i], c->Gd[i + 1], c->Gx[i], s2, NULL);
        for (size_t r = 0; r < no; r++)
            for (size_t a = 0; a < ni; a++) {
                double d = 1.0 - s2[r] * s1[a];
                /* Far from the floor, so rounding cannot flip the count. */
                assert_true(fabs(d - CURV__KFAC_TRI_DEN_FLOOR) > 1e-8);
                count += d < CURV__KFAC_TRI_DEN_FLOOR;
            }
        free(s1), free(s2);
    }
    return count;
}

/* (c) Cross factors inflated past consistency: the clamp counter fires
 * exactly where 1 - s2 s1 < floor, the result stays finite, and it is the
 * Ξ^T Λ Ξ whose Λ has the clamped denominators. */
static void test_clamp_counter(void **state)
{
    (void)state;
    struct chain c;
    make_chain(&SHAPES[2], 400, &c);
    assert_int_equal(expected_clamps(&c), 0);
    size_t n0 = c.n_in[0], n1 = c.n_in[1], m0 = c.n_out[0], m1 = c.n_out[1];
    /* s scales with the square of the cross factors: x4 pushes products to 16x. */
    for (size_t k = 0; k < n0 * n1; k++)
        c.Ax[0][k] *= 2.0;
    for (size_t k = 0; k < m0 * m1; k++)
        c.Gx[0][k] *= 2.0;
    size_t want = expected_clamps(&c), clamped = 0;
    assert_true(want > 0);
    struct curv__kfac_tri *t = build_ok(&c, &clamped);
    assert_int_equal(clamped, want);
    size_t D = c.off[c.L];
    tu_rng rng;
    tu_rng_seed(&rng, 401);
    double *v = tu_alloc(D), *x = tu_alloc(D);
    tu_fill_normal(&rng, v, D, 1.0);
    apply_flat(&c, t, v, x);
    for (size_t k = 0; k < D; k++)
        assert_true(isfinite(x[k]));
    double *R = dggm_inverse(&c, 1), *M = module_dense(&c, t);
    tu_expect_close(M, R, D * D, TOL, "clamped F^-1 vs dense", 0);
    free(R), free(M);
    free(v), free(x);
    curv__kfac_tri_free(t);
    free_chain(&c);
}

/* ---- Error paths: nothing is written on failure ---- */

static struct curv__kfac_tri *const SENTINEL = (struct curv__kfac_tri *)&SHAPES;

/* Build must fail with @want and a text containing @needle, leaving the
 * outputs alone. */
static void expect_fail(const struct chain *c, curv_status want, const char *needle)
{
    struct curv__kfac_tri *t = SENTINEL;
    size_t clamped = 12345;
    curv_error err;
    curv_status st = build(c, &t, &clamped, &err);
    tu_assert_status(st, want, &err);
    tu_assert_error_set(&err, st);
    if (!strstr(err.text, needle))
        fail_msg("error text \"%s\" does not mention \"%s\"", err.text, needle);
    assert_ptr_equal(t, SENTINEL);
    assert_int_equal(clamped, 12345);
}

static void scale(double *x, size_t n, double f)
{
    for (size_t k = 0; k < n; k++)
        x[k] *= f;
}

/* (d) Non-finite factors, a damped factor that is not positive definite,
 * overflow in the precomputation: CURV_E_NUMERIC naming factor and layer. */
static void test_numeric_errors(void **state)
{
    (void)state;
    struct chain c;
    make_chain(&SHAPES[2], 500, &c);
    struct {
        double **arr;
        size_t k;
        double bad;
        const char *needle;
    } cases[] = {
        {c.Ad, 1, NAN, "Ad[1]"},       {c.Gd, 0, INFINITY, "Gd[0]"}, {c.Ax, 1, NAN, "Ax[1]"},
        {c.Gx, 0, -INFINITY, "Gx[0]"}, {c.Gd, 2, NAN, "Gd[2]"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        double *p = &cases[k].arr[cases[k].k][3], keep = *p;
        *p = cases[k].bad;
        expect_fail(&c, CURV_E_NUMERIC, cases[k].needle);
        *p = keep;
    }
    /* Not positive definite: Ad[2] - 10 I. */
    size_t n2 = c.n_in[2];
    for (size_t k = 0; k < n2; k++)
        c.Ad[2][k * n2 + k] -= 10.0;
    expect_fail(&c, CURV_E_NUMERIC, "Ad[2] (4 x 4) is not positive definite");
    for (size_t k = 0; k < n2; k++)
        c.Ad[2][k * n2 + k] += 10.0;
    /* The whitened cross factor P P^T overflows. */
    scale(c.Gx[1], c.n_out[1] * c.n_out[2], 1e200);
    expect_fail(&c, CURV_E_NUMERIC, "Gx[1]: the whitened cross factor overflows");
    scale(c.Gx[1], c.n_out[1] * c.n_out[2], 1e-200);
    /* Ψ^A = Ax Ad[1]^-1 overflows (~1e320) while P P^T (~1e240) does not. */
    size_t a0 = c.n_in[0] * c.n_in[0], a1 = c.n_in[1] * c.n_in[1], x0 = c.n_in[0] * c.n_in[1];
    scale(c.Ad[0], a0, 1e200);
    scale(c.Ad[1], a1, 1e-200);
    scale(c.Ax[0], x0, 1e120);
    expect_fail(&c, CURV_E_NUMERIC, "layer 0: the precomputed matrices overflow");
    scale(c.Ad[0], a0, 1e-200);
    scale(c.Ad[1], a1, 1e200);
    scale(c.Ax[0], x0, 1e-120);
    /* Restored: builds again. */
    struct curv__kfac_tri *t = build_ok(&c, NULL);
    curv__kfac_tri_free(t);
    free_chain(&c);
}

/* Bad arguments: L, NULL pointers, sizes, a broken chain. */
static void test_argument_errors(void **state)
{
    (void)state;
    struct chain c;
    make_chain(&SHAPES[2], 600, &c);
    struct chain bad = c;
    bad.L = 1;
    expect_fail(&bad, CURV_E_INVALID, "L >= 2");
    bad = c;
    bad.Gd[1] = NULL;
    expect_fail(&bad, CURV_E_INVALID, "layer 1");
    bad = c;
    bad.Ax[0] = NULL;
    expect_fail(&bad, CURV_E_INVALID, "layer 0");
    bad = c;
    bad.n_in[1] = c.n_out[0] + 2;
    expect_fail(&bad, CURV_E_SHAPE, "layer 1 has n_in = 5, expected n_out[0] = 3");
    bad = c;
    bad.n_out[2] = 0;
    expect_fail(&bad, CURV_E_SHAPE, "layer 2 is 0 x 4");
    bad = c;
    bad.n_out[0] = (size_t)INT_MAX + 1;
    expect_fail(&bad, CURV_E_RANGE, "layer 0");
    /* NULL arrays. */
    struct curv__kfac_tri *t = SENTINEL;
    curv_error err;
    tu_assert_status(curv__kfac_tri_build(c.L, c.n_out, NULL, (const double *const *)c.Ad,
                                          (const double *const *)c.Gd, (const double *const *)c.Ax,
                                          (const double *const *)c.Gx, &t, NULL, &err),
                     CURV_E_INVALID, &err);
    tu_assert_status(curv__kfac_tri_build(c.L, c.n_out, c.n_in, (const double *const *)c.Ad,
                                          (const double *const *)c.Gd, NULL,
                                          (const double *const *)c.Gx, &t, NULL, &err),
                     CURV_E_INVALID, &err);
    tu_assert_status(curv__kfac_tri_build(c.L, c.n_out, c.n_in, (const double *const *)c.Ad,
                                          (const double *const *)c.Gd, (const double *const *)c.Ax,
                                          (const double *const *)c.Gx, NULL, NULL, NULL),
                     CURV_E_INVALID, NULL);
    assert_ptr_equal(t, SENTINEL);
    free_chain(&c);
}

/*
 * LAPACKE_dsyevd, interposed: this executable's definition takes the place
 * of liblapacke.so's for the library code linked into it, and forwards to
 * the real one (RTLD_NEXT) unless the armed call is reached. That call then
 * either fails (info = 1, no convergence) or "succeeds" with a NaN
 * eigenvalue.
 */
enum { EIG_FAIL_INFO, EIG_FAIL_NAN };
static long eig_countdown = -1;
static int eig_mode, eig_injected;

lapack_int LAPACKE_dsyevd(int layout, char jobz, char uplo, lapack_int n, double *a, lapack_int lda,
                          double *w)
{
    typedef lapack_int (*dsyevd_fn)(int, char, char, lapack_int, double *, lapack_int, double *);
    static dsyevd_fn real;
    if (!real) {
        void *p = dlsym(RTLD_NEXT, "LAPACKE_dsyevd");
        assert_non_null(p);
        memcpy(&real, &p, sizeof real);
    }
    if (eig_countdown >= 0 && eig_countdown-- == 0) {
        eig_injected = 1;
        if (eig_mode == EIG_FAIL_INFO)
            return 1;
        lapack_int info = real(layout, jobz, uplo, n, a, lda, w);
        w[n / 2] = NAN;
        return info;
    }
    return real(layout, jobz, uplo, n, a, lda, w);
}

/* 1 when @text names one of the factor arrays with its layer, as "Gx[2]". */
static int names_factor(const char *text)
{
    static const char *const names[] = {"Ad[", "Gd[", "Ax[", "Gx["};
    for (size_t k = 0; k < 4; k++) {
        const char *p = strstr(text, names[k]);
        if (p && p[3] >= '0' && p[3] <= '9')
            return 1;
    }
    return 0;
}

/* (d) Each eigendecomposition in turn fails or returns NaN: CURV_E_NUMERIC
 * naming the factor, nothing leaks (ASan), nothing is written. */
static void test_eig_failures(void **state)
{
    (void)state;
    struct chain c;
    make_chain(&SHAPES[4], 700, &c);
    /* One per damped factor and one per side of each coupled layer. */
    const long n_eig = (long)(2 * c.L + 2 * (c.L - 1));
    const char *const needles[] = {"dsyevd failed with info = 1", "non-finite output"};
    for (int mode = EIG_FAIL_INFO; mode <= EIG_FAIL_NAN; mode++) {
        long k;
        for (k = 0;; k++) {
            eig_mode = mode;
            eig_injected = 0;
            eig_countdown = k;
            struct curv__kfac_tri *t = SENTINEL;
            curv_error err;
            curv_status st = build(&c, &t, NULL, &err);
            eig_countdown = -1;
            if (!eig_injected) {
                tu_assert_status(st, CURV_OK, &err);
                curv__kfac_tri_free(t);
                break;
            }
            tu_assert_status(st, CURV_E_NUMERIC, &err);
            if (!strstr(err.text, needles[mode]) || !names_factor(err.text))
                fail_msg("eigendecomposition %ld: unexpected text \"%s\"", k, err.text);
            assert_ptr_equal(t, SENTINEL);
        }
        assert_int_equal(k, n_eig);
    }
    free_chain(&c);
}

/* apply is repeatable (its scratch carries nothing over), bytes covers the
 * stored matrices, free(NULL) is a no-op. */
static void test_apply_repeatable_and_bytes(void **state)
{
    (void)state;
    struct chain c;
    make_chain(&SHAPES[4], 800, &c);
    struct curv__kfac_tri *t = build_ok(&c, NULL);
    size_t D = c.off[c.L], doubles = 0;
    for (size_t i = 0; i < c.L; i++) {
        doubles += c.n_in[i] * c.n_in[i] + c.n_out[i] * c.n_out[i];
        if (i + 1 < c.L) /* Ψ^A, Ψ^G and the denominators */
            doubles += c.n_in[i] * c.n_in[i + 1] + c.n_out[i] * c.n_out[i + 1] + dim(&c, i);
    }
    assert_true(curv__kfac_tri_bytes(t) >= doubles * sizeof(double));
    assert_int_equal(curv__kfac_tri_bytes(NULL), 0);
    tu_rng rng;
    tu_rng_seed(&rng, 801);
    double *v = tu_alloc(D), *w = tu_alloc(D), *x1 = tu_alloc(D), *x2 = tu_alloc(D);
    tu_fill_normal(&rng, v, D, 1.0);
    tu_fill_normal(&rng, w, D, 1.0);
    apply_flat(&c, t, v, x1);
    apply_flat(&c, t, w, x2);
    apply_flat(&c, t, v, x2);
    assert_memory_equal(x1, x2, D * sizeof(double));
    free(v), free(w), free(x1), free(x2);
    curv__kfac_tri_free(t);
    curv__kfac_tri_free(NULL);
    free_chain(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_dggm_reference),
        cmocka_unit_test(test_tridiagonal_precision),
        cmocka_unit_test(test_zero_cross_is_block_diagonal),
        cmocka_unit_test(test_clamp_counter),
        cmocka_unit_test(test_numeric_errors),
        cmocka_unit_test(test_argument_errors),
        cmocka_unit_test(test_eig_failures),
        cmocka_unit_test(test_apply_repeatable_and_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
