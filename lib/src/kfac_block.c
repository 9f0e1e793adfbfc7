/* SPDX-License-Identifier: MIT */
/*
 * K-FAC curvature block types (thesis §6.3, §6.4.2, §6.6.3; Grosse &
 * Martens' KFC for conv2d):
 *  - kron: a dense or conv2d block W (rows x cols, bias as the last column)
 *    with Fisher block ≈ G ⊗ Ā in the row-major flat order (vec(g āᵀ) =
 *    g ⊗ ā). The inverse is kept as eigendecompositions, so any damping
 *    applies without a new decomposition:
 *      (G + γ/π I)^-1 V (Ā + πγ I)^-1
 *        = Q_G [(Q_Gᵀ V Q_A) ⊘ ((w_G + γ/π)(w_A + πγ)ᵀ)] Q_Aᵀ.
 *    A side larger than max_factor_dim is kept diagonal (Q = I).
 *    Where it pays, a dense side's damped inverse is also formed
 *    explicitly, Q diag(1/(w + c)) Qᵀ, so that the multiply is one GEMM
 *    per side instead of two (G_d⁻¹ V A_d⁻¹: two GEMMs in all). The rule
 *    (curv__kside_explicit) compares flop counts: a side of n entries
 *    against n_o on the other side costs n³ to form (one SYRK) and saves
 *    2 n² n_o at each use, so it is formed when n <= 2 H n_o, with H the
 *    uses it can expect: the steps an inverse serves (min(T3, T2) in
 *    adaptive mode, min(T3, T1) when γ follows λ, T3 in simple mode) on a
 *    one-candidate step, and 1 on a γ-grid step (three candidates, one
 *    kept). The rule depends on the
 *    settings and sizes only, never on what is cached, so an optimizer
 *    loaded from a blob (which rebuilds the inverses from Q, w, π and γ)
 *    takes the same branch and computes the same update, bit for bit.
 *    In simple mode with the block-diagonal inverse there is one damping
 *    (refresh = auto, curv__kfac_cholesky): a refresh then forms each
 *    dense side's (F + cI)⁻¹ by Cholesky (dpotrf, dpotri: n³ flops, about
 *    5x faster than dsyevd's BLAS-2 reduction) and keeps it instead of Q
 *    and w, with c = γπ or γ/π and the side's degrees of freedom
 *    tr((F + cI)⁻¹F) = Σ w/(w + c) = n − c·tr (F + cI)⁻¹, which is all the
 *    noise term needs (docs/NOTES.md, "K-FAC Cholesky refresh").
 *  - fallback: a vector block (norm gains, embeddings) with AdaGrad-diag
 *    or SGD scaled by fallback_lr; K-FAC has no factors for it.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"
#include "linalg.h"

size_t curv__kside_len(const struct curv__kside *s)
{
    return s->diag ? s->n : s->n * s->n;
}

const double *curv__kside_F(const struct curv__kside *s)
{
    return s->F_new ? s->F_new : s->F;
}

static const double *side_Q(const struct curv__kside *s)
{
    return s->w_new ? s->Q_new : s->Q;
}

static const double *side_w(const struct curv__kside *s)
{
    return s->w_new ? s->w_new : s->w;
}

/* Whether @s holds a tentative decomposition (or Cholesky inverse). */
static int side_fresh(const struct curv__kside *s)
{
    return s->w_new || s->P_new;
}

int curv__kfac_cholesky(const struct curv__kfac_hyper *h)
{
    return h->refresh != CURV__KFAC_REFRESH_EIGEN && h->mode == CURV__KFAC_SIMPLE &&
           h->inverse == CURV__KFAC_BLOCKDIAG;
}

/* Drop this step's explicit inverses and the multiply's plan. */
static void side_drop_cand(struct curv__kside *s)
{
    for (size_t c = 0; c < CURV__KFAC_MAX_CAND; c++) {
        curv__free(s->cinv[c]);
        s->cinv[c] = NULL;
        s->use[c] = NULL;
    }
}

static void side_drop_inv(struct curv__kside *s)
{
    curv__free(s->inv);
    s->inv = NULL;
}

/* Drop the tentative decomposition (or Cholesky inverse). */
static void side_drop_eig(struct curv__kside *s)
{
    curv__free(s->Q_new);
    curv__free(s->w_new);
    curv__free(s->Qf_new);
    curv__free(s->P_new);
    curv__free(s->Pf_new);
    s->Q_new = s->w_new = s->P_new = NULL;
    s->Qf_new = s->Pf_new = NULL;
}

static void side_drop_new(struct curv__kside *s)
{
    side_drop_cand(s);
    side_drop_eig(s);
    curv__free(s->F_new);
    s->F_new = NULL;
}

static void side_free(struct curv__kside *s)
{
    side_drop_new(s);
    side_drop_inv(s);
    curv__free(s->F);
    curv__free(s->Q);
    curv__free(s->w);
    curv__free(s->Qf);
    curv__free(s->P);
    curv__free(s->Pf);
}

/* @n doubles rounded to float into @dst. */
static void to_float(const double *src, size_t n, float *dst)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
}

static void side_init(struct curv__kside *s, size_t n, const struct curv__kfac_hyper *h,
                      struct curv__tally *t)
{
    s->n = n;
    s->diag = n > (size_t)h->max_factor_dim;
    s->f32 = h->precision == CURV__KFAC_FP32;
    s->chol = !s->diag && curv__kfac_cholesky(h);
    const int eig = !s->diag && !s->chol;
    s->F = curv__tally_calloc(t, curv__kside_len(s), sizeof(double));
    s->Q = eig ? curv__tally_calloc(t, n * n, sizeof(double)) : NULL;
    s->Qf = eig && s->f32 ? curv__tally_calloc(t, n * n, sizeof(float)) : NULL;
    s->w = s->chol ? NULL : curv__tally_calloc(t, n, sizeof(double));
    s->P = s->chol ? curv__tally_calloc(t, n * n, sizeof(double)) : NULL;
    s->Pf = s->chol && s->f32 ? curv__tally_calloc(t, n * n, sizeof(float)) : NULL;
}

/* A layer's rows as the step has them: doubles @d, or floats @f. */
struct rows_in {
    const double *d;
    const float *f;
};

/* Rows per float SYRK of stats_f32. */
#define STATS_CHUNK 1024

/* Tile edge of fold_ema: a tile of the upper triangle and its transpose,
 * in F and in the new estimate, stay in L1 while the lower one is written
 * column by column. */
#define EMA_TILE 32

/*
 * The statistic S of a dense side (n x n, n = nx + 1 with a bias), by its
 * upper triangle: for i <= j < nx, S_ij = base_ij + scale·Ff_ij when @Ff
 * (a float SYRK's upper triangle, leading dimension nx; base the earlier
 * chunks' sum in the estimate's upper triangle when @acc, else 0.0), or
 * the estimate's upper triangle itself when @Ff is NULL; with a bias,
 * S_i,nx = scale·sum_i and S_nx,nx = scale·rows.
 */
struct stat_src {
    const float *Ff;
    int acc;
    double scale;
    const double *sum;
    size_t nx, rows;
};

/* Row @i's statistic S_ij for j in [j0, j1) (j1 <= nx) into @t, which may be
 * that stretch of the row itself (each entry is read before it is written). */
static void stat_row(const struct stat_src *src, const double *Fn, size_t n, size_t i, size_t j0,
                     size_t j1, double *t)
{
    const double *up = Fn + i * n;
    const float *f = src->Ff ? src->Ff + i * src->nx : NULL;
    if (!f)
        for (size_t j = j0; j < j1; j++)
            t[j - j0] = up[j];
    else if (src->acc)
        for (size_t j = j0; j < j1; j++)
            t[j - j0] = up[j] + src->scale * (double)f[j];
    else
        for (size_t j = j0; j < j1; j++)
            t[j - j0] = 0.0 + src->scale * (double)f[j];
}

/*
 * The new estimate Fn = εF + (1−ε)S over both triangles, each entry from
 * F's own entry (F need not be bitwise symmetric), in the arithmetic of a
 * separate mirror and EMA pass, so the bits are theirs. Tile by tile: S's
 * upper rows into a tile buffer, then the upper rows and the transposed
 * lower ones written contiguously, the buffer read across. Returns
 * nonzero when an entry is not finite.
 */
CURV__VECTOR_CLONES static uint64_t fold_ema(const struct stat_src *src, const double *F,
                                             double *Fn, size_t n, double eps)
{
    enum { T = EMA_TILE };
    const size_t nx = src->nx;
    const double keep = 1.0 - eps;
    uint64_t bad = 0;
    double t[T][T];
    for (size_t i0 = 0; i0 < n; i0 += T)
        for (size_t j0 = i0; j0 < n; j0 += T) {
            const size_t i1 = i0 + T < n ? i0 + T : n, j1 = j0 + T < n ? j0 + T : n;
            for (size_t i = i0; i < i1; i++) {
                const size_t jb = j0 > i ? j0 : i, je = j1 < nx ? j1 : nx;
                double *ti = t[i - i0]; /* ti[j - j0] for j in [j0, j1) */
                if (jb < je)
                    stat_row(src, Fn, n, i, jb, je, ti + (jb - j0));
                if (j1 > nx && nx < n) /* the bias column */
                    ti[nx - j0] =
                        i < nx ? src->scale * src->sum[i] : src->scale * (double)src->rows;
                for (size_t j = jb; j < j1; j++) {
                    const double up = eps * F[i * n + j] + keep * ti[j - j0];
                    Fn[i * n + j] = up;
                    bad |= curv__nonfinite_bits(up);
                }
            }
            for (size_t j = j0; j < j1; j++) {
                const size_t ie = i1 < j + 1 ? i1 : j + 1; /* i <= j */
                for (size_t i = i0; i < ie; i++) {
                    const double lo = eps * F[j * n + i] + keep * t[i - i0][j - j0];
                    Fn[j * n + i] = lo;
                    bad |= curv__nonfinite_bits(lo);
                }
            }
        }
    return bad;
}

/*
 * scale Σ_rows x xᵀ (nx x nx) from float SYRKs over chunks of STATS_CHUNK
 * rows of @X rounded to float (read in place when the trainer's rows are
 * floats), each chunk's sum added in double into the
 * upper triangle of @Fn (leading dimension n), the last one folded into
 * the new estimate by fold_ema. The rows a trainer sends are FP32 tensors
 * (exact in float); what float adds is the SYRK's accumulation over at
 * most STATS_CHUNK rows, about √rows · 2⁻²⁴ relative to the entries,
 * independent from step to step and averaged by the EMA, which
 * accumulates in double. CURV_E_NOMEM, CURV_E_NUMERIC.
 */
static curv_status stats_f32(const struct rows_in *X, struct stat_src *src, const double *F,
                             double *Fn, size_t n, double eps)
{
    const size_t rows = src->rows, nx = src->nx;
    const size_t chunk = rows < STATS_CHUNK ? rows : STATS_CHUNK;
    float *Xf = X->f ? NULL : curv__malloc_n(chunk * nx, sizeof(float));
    float *Ff = curv__calloc_n(nx * nx, sizeof(float)); /* BLAS need not ignore C at β = 0 */
    if ((!X->f && !Xf) || !Ff) {
        curv__free(Xf);
        curv__free(Ff);
        return CURV_E_NOMEM;
    }
    src->Ff = Ff;
    uint64_t bad = 0;
    for (size_t r0 = 0; r0 < rows; r0 += chunk) {
        const size_t k = rows - r0 < chunk ? rows - r0 : chunk;
        const float *rows_f = X->f ? X->f + r0 * nx : Xf;
        if (!X->f)
            to_float(X->d + r0 * nx, k * nx, Xf);
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)nx, (int)k, 1.0f, rows_f, (int)nx,
                    0.0f, Ff, (int)nx);
        src->acc = r0 > 0;
        if (r0 + k == rows) {
            bad = fold_ema(src, F, Fn, n, eps);
            break;
        }
        for (size_t i = 0; i < nx; i++) /* in place: each entry is read before it is written */
            stat_row(src, Fn, n, i, i, nx, Fn + i * n + i);
    }
    curv__free(Xf);
    curv__free(Ff);
    return bad ? CURV_E_NUMERIC : CURV_OK;
}

/* Σ_rows x of @X (rows x nx) into @sum, row after row, in double (a
 * float row's values are exact in double: the same sums either way). */
static void column_sums(const struct rows_in *X, size_t rows, size_t nx, double *sum)
{
    for (size_t j = 0; j < nx; j++)
        sum[j] = 0.0;
    for (size_t r = 0; r < rows; r++)
        if (X->f)
            for (size_t j = 0; j < nx; j++)
                sum[j] += (double)X->f[r * nx + j];
        else
            for (size_t j = 0; j < nx; j++)
                sum[j] += X->d[r * nx + j];
}

/* A diagonal side's new estimate: the squares (in double), and the EMA. */
static curv_status diag_stats(const struct rows_in *X, const struct stat_src *src, const double *F,
                              double *Fn, size_t n, double eps)
{
    const size_t nx = src->nx;
    for (size_t j = 0; j < n; j++)
        Fn[j] = 0.0;
    for (size_t r = 0; r < src->rows; r++)
        for (size_t j = 0; j < nx; j++) {
            const double x = X->f ? (double)X->f[r * nx + j] : X->d[r * nx + j];
            Fn[j] += x * x;
        }
    for (size_t j = 0; j < nx; j++)
        Fn[j] *= src->scale;
    if (nx < n)
        Fn[nx] = src->scale * (double)src->rows;
    for (size_t i = 0; i < n; i++)
        Fn[i] = eps * F[i] + (1.0 - eps) * Fn[i];
    return curv__first_nonfinite(Fn, n) < n ? CURV_E_NUMERIC : CURV_OK;
}

/*
 * New estimate F ← εF + (1−ε)X̂ with X̂ = scale Σ_rows x xᵀ over the rows of
 * @X (rows x nx, row-major), x extended by a homogeneous 1 when @bias (the
 * side then has nx + 1 entries). Dense sides use one SYRK (float SYRKs in
 * fp32: stats_f32) and fold_ema; diagonal sides only the squares. Float
 * rows come only with fp32 (kfac_float_layers).
 */
static curv_status side_stats(struct curv__kside *s, const struct rows_in *X, size_t rows,
                              size_t nx, int bias, double scale, double eps)
{
    const size_t n = s->n;
    double *Fn = curv__malloc_n(curv__kside_len(s), sizeof(double));
    double *sum = bias && !s->diag ? curv__malloc_n(nx, sizeof(double)) : NULL;
    if (!Fn || (bias && !s->diag && !sum)) {
        curv__free(Fn);
        curv__free(sum);
        return CURV_E_NOMEM;
    }
    struct stat_src src = {.scale = scale, .sum = sum, .nx = nx, .rows = rows};
    curv_status st;
    if (s->diag) {
        st = diag_stats(X, &src, s->F, Fn, n, eps);
    } else {
        if (sum)
            column_sums(X, rows, nx, sum);
        if (s->f32 && rows > 0) {
            st = stats_f32(X, &src, s->F, Fn, n, eps);
        } else {
            memset(Fn, 0, n * n * sizeof *Fn); /* as BLAS need not ignore C at β = 0 */
            cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)nx, (int)rows, scale, X->d,
                        (int)nx, 0.0, Fn, (int)n);
            st = fold_ema(&src, s->F, Fn, n, eps) ? CURV_E_NUMERIC : CURV_OK;
        }
    }
    curv__free(sum);
    if (st != CURV_OK) {
        curv__free(Fn);
        return st;
    }
    curv__free(s->F_new);
    s->F_new = Fn;
    return CURV_OK;
}

/*
 * The Cholesky refresh of dense factor @F of side @s for damping @c, into
 * @out's slot @k: P = (F + cI)⁻¹ by dpotrf and dpotri in double (the upper
 * triangle mirrored), its float copy in fp32, and the degrees of freedom
 * tr((F + cI)⁻¹F) = n − c·tr P, which is Σ w/(w + c) over F's eigenvalues
 * without them. A damped factor that is not positive definite or an inverse
 * that is not finite is CURV_E_NUMERIC, as a failed eigendecomposition.
 */
static curv_status side_cholesky(const struct curv__kside *s, const double *F, double c,
                                 struct curv__keig *out, int k, curv_error *err)
{
    const size_t n = s->n;
    double *P = curv__malloc_n(n * n, sizeof(double));
    float *Pf = s->f32 ? curv__malloc_n(n * n, sizeof(float)) : NULL;
    if (!P || (s->f32 && !Pf)) {
        curv__free(P);
        curv__free(Pf);
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for a %zu x %zu factor", n, n);
    }
    memcpy(P, F, n * n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        P[i * n + i] += c;
    curv_status st = curv__spd_inv_packed(n, P, err);
    if (st == CURV_OK && curv__first_nonfinite(P, n * n) < n * n)
        st = curv__fail(err, CURV_E_NUMERIC, "kfac: the damped factor's inverse is not finite");
    if (st != CURV_OK) {
        curv__free(P);
        curv__free(Pf);
        return st;
    }
    double tr = 0;
    for (size_t i = 0; i < n; i++)
        tr += P[i * n + i];
    const double dof = (double)n - c * tr;
    if (Pf)
        to_float(P, n * n, Pf);
    out->P[k] = P;
    out->Pf[k] = Pf;
    out->c[k] = c;
    out->dof[k] = dof > 0 ? dof : 0; /* round-off when c dwarfs F */
    return CURV_OK;
}

/* Eigendecomposition of factor @F of side @s (its size and form; the
 * factor may be a snapshot), eigenvalues clamped at 0 (the factors are
 * PSD; round-off can make tiny ones negative), into @out's slot @k; a
 * Cholesky side's damped inverse for damping @c instead. Reads only @F and
 * @s->n, diag, f32 and chol, which never change: safe on any thread while
 * the optimizer steps. */
static curv_status side_decompose(const struct curv__kside *s, const double *F, double c,
                                  struct curv__keig *out, int k, curv_error *err)
{
    if (s->chol)
        return side_cholesky(s, F, c, out, k, err);
    const size_t n = s->n;
    double *w = curv__calloc_n(n, sizeof(double));
    double *Q = s->diag ? NULL : curv__calloc_n(n * n, sizeof(double));
    if (!w || (!s->diag && !Q)) {
        curv__free(w);
        curv__free(Q);
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for a %zu x %zu factor", n, n);
    }
    curv_status st = CURV_OK;
    if (s->diag) {
        memcpy(w, F, n * sizeof(double));
    } else {
        memcpy(Q, F, n * n * sizeof(double));
        st = curv__sym_eig(n, Q, n, w, err);
        if (st == CURV_OK &&
            (curv__first_nonfinite(Q, n * n) < n * n || curv__first_nonfinite(w, n) < n))
            st = curv__fail(err, CURV_E_NUMERIC, "kfac: eigendecomposition is not finite");
    }
    for (size_t i = 0; st == CURV_OK && i < n; i++)
        w[i] = w[i] > 0 ? w[i] : 0;
    float *Qf = NULL;
    if (st == CURV_OK && Q && s->f32) {
        if ((Qf = curv__calloc_n(n * n, sizeof(float))))
            to_float(Q, n * n, Qf);
        else
            st = curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for a %zu x %zu factor", n, n);
    }
    if (st != CURV_OK) {
        curv__free(w);
        curv__free(Q);
        return st;
    }
    out->Q[k] = Q;
    out->w[k] = w;
    out->Qf[k] = Qf;
    return CURV_OK;
}

void curv__keig_free(struct curv__keig *x)
{
    for (int k = 0; k < 2; k++) {
        curv__free(x->Q[k]);
        curv__free(x->w[k]);
        curv__free(x->Qf[k]);
        curv__free(x->P[k]);
        curv__free(x->Pf[k]);
        x->Q[k] = x->w[k] = x->P[k] = NULL;
        x->Qf[k] = x->Pf[k] = NULL;
    }
}

static double trace_of(const struct curv__kside *s, const double *F)
{
    double t = 0;
    for (size_t i = 0; i < s->n; i++)
        t += F[s->diag ? i : i * s->n + i];
    return t;
}

/* The cached inverse after candidate @cand's step: the one it formed;
 * else the old one while the decomposition and damping @damp stay. */
static void side_take_F(struct curv__kside *s)
{
    if (s->F_new) {
        curv__free(s->F);
        s->F = s->F_new;
        s->F_new = NULL;
    }
}

void curv__kblock_take_factors(struct curv__kblock *b)
{
    side_take_F(&b->A);
    side_take_F(&b->G);
}

static void side_commit(struct curv__kside *s, size_t cand, double damp)
{
    side_take_F(s);
    if (s->P_new) {
        curv__free(s->P);
        curv__free(s->Pf);
        s->P = s->P_new;
        s->Pf = s->Pf_new;
        s->pc = s->pc_new;
        s->dof = s->dof_new;
        s->P_new = NULL;
        s->Pf_new = NULL;
    }
    if (s->w_new || (s->inv && s->inv_damp != damp) || s->cinv[cand])
        side_drop_inv(s);
    if (s->cinv[cand]) {
        s->inv = s->cinv[cand];
        s->inv_damp = s->cdamp[cand];
        s->cinv[cand] = NULL;
    }
    if (s->w_new) {
        curv__free(s->w);
        s->w = s->w_new;
        if (!s->diag) {
            curv__free(s->Q);
            s->Q = s->Q_new;
        }
        if (s->Qf_new) {
            curv__free(s->Qf);
            s->Qf = s->Qf_new;
        }
    }
    s->F_new = s->Q_new = s->w_new = NULL;
    s->Qf_new = NULL;
    side_drop_cand(s);
}

int curv__kside_explicit(size_t n, size_t n_other, unsigned horizon)
{
    return (double)n <= 2.0 * (double)horizon * (double)n_other;
}

/* M = Q diag(1/(w + c)) Qᵀ (n x n) as T Tᵀ with T = Q diag(1/sqrt(w + c)):
 * one SYRK (n³ flops) and a copy of its triangle; in fp32 T is rounded to
 * float and M is a float SYRK (the multiply's own arithmetic; the test
 * bound of test_kfac.c counts its round-off). NULL when out of memory. */
static void *side_form(const struct curv__kside *s, double c)
{
    const size_t n = s->n;
    const double *Q = side_Q(s), *w = side_w(s);
    const size_t es = s->f32 ? sizeof(float) : sizeof(double);
    void *M = curv__calloc_n(n * n, es);
    void *T = curv__calloc_n(n * n, es);
    double *r = curv__calloc_n(n, sizeof(double));
    if (!M || !T || !r) {
        curv__free(M);
        curv__free(T);
        curv__free(r);
        return NULL;
    }
    for (size_t k = 0; k < n; k++)
        r[k] = 1.0 / sqrt(w[k] + c);
    if (s->f32) {
        float *Tf = T, *Mf = M;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < n; k++)
                Tf[i * n + k] = (float)(Q[i * n + k] * r[k]);
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)n, (int)n, 1.0f, Tf, (int)n, 0.0f,
                    Mf, (int)n);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < i; j++)
                Mf[i * n + j] = Mf[j * n + i];
    } else {
        double *Td = T, *Md = M;
        for (size_t i = 0; i < n; i++)
            for (size_t k = 0; k < n; k++)
                Td[i * n + k] = Q[i * n + k] * r[k];
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int)n, (int)n, 1.0, Td, (int)n, 0.0,
                    Md, (int)n);
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < i; j++)
                Md[i * n + j] = Md[j * n + i];
    }
    curv__free(T);
    curv__free(r);
    return M;
}

/* Candidate @cand's explicit inverse of side @s for damping @c, when the
 * rule asks for one: the cached one (decomposition unchanged, same c), one
 * an earlier candidate formed for the same c, or a new one. */
static curv_status side_prepare(struct curv__kside *s, size_t cand, double c, size_t n_other,
                                unsigned horizon)
{
    s->use[cand] = NULL;
    s->cdamp[cand] = c;
    if (s->diag || s->chol || !curv__kside_explicit(s->n, n_other, horizon))
        return CURV_OK; /* a Cholesky side's inverse is its refresh's */
    if (!s->w_new && s->inv && s->inv_damp == c) {
        s->use[cand] = s->inv;
        return CURV_OK;
    }
    for (size_t k = 0; k < cand; k++)
        if (s->cinv[k] && s->cdamp[k] == c) {
            s->use[cand] = s->cinv[k];
            return CURV_OK;
        }
    if (!(s->cinv[cand] = side_form(s, c)))
        return CURV_E_NOMEM;
    s->use[cand] = s->cinv[cand];
    return CURV_OK;
}

/* F changes with each statistics update, Q and w (a Cholesky side's P,
 * its dof and c) with each refresh. */
static void side_save(const struct curv__kside *s, struct curv__writer *w,
                      const struct curv__kstamps *st)
{
    curv__w_part(w, st->factors);
    curv__w_f64s(w, s->F, curv__kside_len(s));
    curv__w_part(w, st->inverse);
    if (s->chol) {
        curv__w_f64s(w, s->P, s->n * s->n);
        curv__w_f64(w, s->dof);
        curv__w_f64(w, s->pc);
        return;
    }
    if (!s->diag)
        curv__w_f64s(w, s->Q, s->n * s->n);
    curv__w_f64s(w, s->w, s->n);
}

/* Loaded factors must be what steps produce: finite, eigenvalues >= 0; a
 * Cholesky side's inverse finite, 0 <= dof <= n and c >= 0 (0: none yet). */
static void side_load(struct curv__kside *s, struct curv__reader *r)
{
    side_drop_inv(s); /* the cache belongs to the decomposition replaced */
    const size_t sq = s->n * s->n;
    curv__r_f64s(r, s->F, curv__kside_len(s));
    if (curv__first_nonfinite(s->F, curv__kside_len(s)) < curv__kside_len(s))
        r->bad = 1;
    if (s->chol) {
        curv__r_f64s(r, s->P, sq);
        s->dof = curv__r_f64(r);
        s->pc = curv__r_f64(r);
        if (s->Pf)
            to_float(s->P, sq, s->Pf);
        if (curv__first_nonfinite(s->P, sq) < sq || !(s->dof >= 0 && s->dof <= (double)s->n) ||
            !(s->pc >= 0) || !isfinite(s->pc))
            r->bad = 1;
        return;
    }
    if (!s->diag)
        curv__r_f64s(r, s->Q, sq);
    curv__r_f64s(r, s->w, s->n);
    if (s->Qf)
        to_float(s->Q, sq, s->Qf);
    if ((!s->diag && curv__first_nonfinite(s->Q, sq) < sq) || !curv__valid_sums(s->w, s->n))
        r->bad = 1;
}

/* ---- kron -------------------------------------------------------------- */

static curv_status kron_stats(struct curv__kblock *b, const struct curv__layer_in *li, double eps,
                              curv_error *err)
{
    const curv_block_info *in = &b->info;
    /* Ā averages over rows (examples x positions); G sums over positions
     * and averages over examples (KFC), both equal for dense blocks. */
    const struct rows_in acts = {li->acts, li->acts_f}, signals = {li->signals, li->signals_f};
    curv_status st =
        side_stats(&b->A, &acts, li->rows, in->n_in, in->has_bias, 1.0 / (double)li->rows, eps);
    if (st == CURV_OK)
        st = side_stats(&b->G, &signals, li->rows, in->n_out, 0, 1.0 / (double)li->examples, eps);
    if (st == CURV_E_NOMEM)
        return curv__fail(err, st, "kfac: out of memory for the factors of block '%s'", in->name);
    if (st != CURV_OK) {
        side_drop_new(&b->A);
        side_drop_new(&b->G);
        return curv__fail(err, st, "kfac: block '%s': the factor estimates are not finite",
                          in->name);
    }
    return CURV_OK;
}

curv_status curv__kblock_decompose(const struct curv__kblock *b, const double *FA, const double *FG,
                                   int pi_mode, double gamma, struct curv__keig *out,
                                   curv_error *err)
{
    const double pi = pi_mode == CURV__KFAC_PI_ONE
                          ? 1.0
                          : curv__kfac_pi(trace_of(&b->A, FA), b->A.n, trace_of(&b->G, FG), b->G.n);
    curv_status st = side_decompose(&b->A, FA, gamma * pi, out, 0, err);
    if (st == CURV_OK)
        st = side_decompose(&b->G, FG, gamma / pi, out, 1, err);
    if (st != CURV_OK) {
        curv__keig_free(out);
        return st;
    }
    out->pi = pi;
    return CURV_OK;
}

static void side_install(struct curv__kside *s, struct curv__keig *x, int k)
{
    side_drop_eig(s);
    s->Q_new = x->Q[k];
    s->w_new = x->w[k];
    s->Qf_new = x->Qf[k];
    s->P_new = x->P[k];
    s->Pf_new = x->Pf[k];
    s->pc_new = x->c[k];
    s->dof_new = x->dof[k];
    x->Q[k] = x->w[k] = x->P[k] = NULL;
    x->Qf[k] = x->Pf[k] = NULL;
}

void curv__kblock_install(struct curv__kblock *b, struct curv__keig *x)
{
    side_install(&b->A, x, 0);
    side_install(&b->G, x, 1);
    b->pi_new = x->pi;
}

/* Decompose the newest factors (new ones if stats ran); on failure the
 * tentative factors stay and only the partial inverse is dropped. */
static curv_status kron_refresh(struct curv__kblock *b, curv_error *err)
{
    struct curv__keig x = {0};
    curv_status st = curv__kblock_decompose(b, curv__kside_F(&b->A), curv__kside_F(&b->G),
                                            b->h->pi_mode, b->h->damping, &x, err);
    if (st == CURV_OK)
        curv__kblock_install(b, &x);
    return st;
}

/* The damping split of the newest decomposition: c_A = γπ, c_G = γ/π. */
static double kron_pi(const struct curv__kblock *b)
{
    return side_fresh(&b->A) ? b->pi_new : b->pi;
}

/* A committed Cholesky inverse for a damping c other than @c. */
static int side_stale(const struct curv__kside *s, double c)
{
    return s->chol && s->pc != c;
}

int curv__kblock_stale(const struct curv__kblock *b)
{
    const double gamma = b->h->damping;
    return b->kron && (side_stale(&b->A, gamma * b->pi) || side_stale(&b->G, gamma / b->pi));
}

static curv_status kron_prepare(struct curv__kblock *b, const double *gammas, size_t n,
                                unsigned horizon, curv_error *err)
{
    const double pi = kron_pi(b);
    side_drop_cand(&b->A);
    side_drop_cand(&b->G);
    b->n_cand = 0;
    for (size_t c = 0; c < n && c < CURV__KFAC_MAX_CAND; c++) {
        curv_status st = side_prepare(&b->A, c, gammas[c] * pi, b->G.n, horizon);
        if (st == CURV_OK)
            st = side_prepare(&b->G, c, gammas[c] / pi, b->A.n, horizon);
        if (st != CURV_OK) {
            side_drop_cand(&b->A);
            side_drop_cand(&b->G);
            return curv__fail(err, st, "kfac: out of memory for the inverses of block '%s'",
                              b->info.name);
        }
        b->cgamma[c] = gammas[c];
    }
    b->n_cand = n < CURV__KFAC_MAX_CAND ? n : CURV__KFAC_MAX_CAND;
    return CURV_OK;
}

/* The explicit inverse the multiply applies to side @s for candidate @cand
 * (NULL: the eigenbasis form, or a diagonal side): a Cholesky side's newest
 * P (Pf in fp32), else the one prepare made when @ready. */
static const void *side_explicit(const struct curv__kside *s, size_t cand, int ready, int f32)
{
    if (s->chol && f32)
        return s->P_new ? (const void *)s->Pf_new : s->Pf;
    if (s->chol)
        return s->P_new ? s->P_new : s->P;
    return ready ? s->use[cand] : NULL;
}

/* The eigenvectors the multiply uses: Q, or its float copy in fp32. */
static const void *side_Qm(const struct curv__kside *s, int f32)
{
    if (f32)
        return s->w_new ? s->Qf_new : s->Qf;
    return side_Q(s);
}

/* Σ_i w_i / (w_i + c) over the newest eigenvalues of a side; a Cholesky
 * side's, for its own c, from its refresh. */
static double side_dof(const struct curv__kside *s, double c)
{
    if (s->chol)
        return s->P_new ? s->dof_new : s->dof;
    const double *w = side_w(s);
    double t = 0;
    for (size_t i = 0; w && i < s->n; i++)
        t += w[i] / (w[i] + c);
    return t;
}

double curv__kblock_dof(const struct curv__kblock *b, double gamma)
{
    if (!b->kron)
        return 0;
    const double pi = kron_pi(b);
    return side_dof(&b->A, gamma * pi) * side_dof(&b->G, gamma / pi);
}

/* dst = M X (left, M rows x rows) or X M (right, cols x cols), or their
 * transposed M (@tm): one GEMM on the rows x cols slice, in float when
 * @f32 (M, X and dst then float). */
static void side_gemm(int f32, const void *M, int left, int tm, const void *X, size_t rows,
                      size_t cols, void *dst)
{
    const CBLAS_TRANSPOSE t = tm ? CblasTrans : CblasNoTrans;
    const int r = (int)rows, c = (int)cols;
    if (f32 && left)
        cblas_sgemm(CblasRowMajor, t, CblasNoTrans, r, c, r, 1.0f, M, r, X, c, 0.0f, dst, c);
    else if (f32)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, t, r, c, c, 1.0f, X, c, M, c, 0.0f, dst, c);
    else if (left)
        cblas_dgemm(CblasRowMajor, t, CblasNoTrans, r, c, r, 1.0, M, r, X, c, 0.0, dst, c);
    else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, t, r, c, c, 1.0, X, c, M, c, 0.0, dst, c);
}

/* y = x ⊘ (d_G d_Aᵀ) on the rows x cols slice, d_G = wg + dg (1 when
 * !wg), d_A = wa + da (1 when !wa); float x and y when @f32. */
static void kron_scale(int f32, const void *x, void *y, size_t rows, size_t cols, const double *wg,
                       double dg, const double *wa, double da)
{
    for (size_t i = 0; i < rows; i++) {
        const double rg = wg ? wg[i] + dg : 1.0;
        for (size_t j = 0; j < cols; j++) {
            const double d = rg * (wa ? wa[j] + da : 1.0);
            if (f32)
                ((float *)y)[i * cols + j] = (float)(((const float *)x)[i * cols + j] / d);
            else
                ((double *)y)[i * cols + j] = ((const double *)x)[i * cols + j] / d;
        }
    }
}

/*
 * G_d⁻¹ V A_d⁻¹, each dense side either through its explicit inverse (one
 * GEMM) or in its eigenbasis (Qᵀ before and Q after the scaling by the
 * damped eigenvalues), a diagonal side by the scaling alone:
 *   X = [Q_Gᵀ] V [Q_A];  X ⊘= (d_G d_Aᵀ);  U = {Q_G | G_d⁻¹} X {Q_Aᵀ | A_d⁻¹},
 * d the damped eigenvalues of an eigenbasis or diagonal side and 1 for an
 * explicit one. The products ping-pong through @work and the last lands in
 * @u. With two explicit sides this is exactly two GEMMs.
 * In fp32 a block with a dense side does all of it in float: V is rounded
 * into @work, the products ping-pong through two float buffers there, and
 * the last lands in a fourth, widened into @u (4 slices of floats fit the
 * 2 slices of doubles of @work). A block of two diagonal sides has no GEMM
 * to speed up and stays in double.
 */
static void kron_apply(const struct curv__kblock *b, size_t cand, const double *g, double gamma,
                       double *u, double *work)
{
    const size_t rows = b->info.rows, cols = b->info.cols, len = rows * cols;
    const double pi = kron_pi(b);
    const int ready = cand < b->n_cand && b->cgamma[cand] == gamma;
    const int f32 = b->A.f32 && !(b->A.diag && b->G.diag);
    const void *Gi = side_explicit(&b->G, cand, ready, f32);
    const void *Ai = side_explicit(&b->A, cand, ready, f32);
    const int eg = !b->G.diag && !Gi, ea = !b->A.diag && !Ai; /* eigenbasis sides */
    const void *x = g;
    void *buf[2] = {work, work + len}, *out = u;
    if (f32) {
        float *wf = (float *)work;
        buf[0] = wf, buf[1] = wf + len, out = wf + 3 * len;
        to_float(g, len, wf + 2 * len);
        x = wf + 2 * len;
    }
    int nb = 0;
    if (eg) {
        side_gemm(f32, side_Qm(&b->G, f32), 1, 1, x, rows, cols, buf[nb]);
        x = buf[nb], nb ^= 1;
    }
    if (ea) {
        side_gemm(f32, side_Qm(&b->A, f32), 0, 0, x, rows, cols, buf[nb]);
        x = buf[nb], nb ^= 1;
    }
    const int scale_g = !Gi, scale_a = !Ai;
    const int last = Gi || eg || Ai || ea; /* a product follows the scaling */
    if (scale_g || scale_a) {
        void *y = last ? (x == buf[0] ? buf[0] : x == buf[1] ? buf[1] : buf[nb]) : out;
        kron_scale(f32, x, y, rows, cols, scale_g ? side_w(&b->G) : NULL, gamma / pi,
                   scale_a ? side_w(&b->A) : NULL, gamma * pi);
        if (y == buf[nb])
            nb ^= 1;
        x = y;
    }
    if (last) {
        const int post_a = Ai || ea;
        if (Gi || eg) {
            void *dst = post_a ? buf[nb] : out;
            side_gemm(f32, Gi ? Gi : side_Qm(&b->G, f32), 1, 0, x, rows, cols, dst);
            x = dst, nb ^= 1;
        }
        if (post_a)
            side_gemm(f32, Ai ? Ai : side_Qm(&b->A, f32), 0, !Ai, x, rows, cols, out);
    }
    if (f32)
        for (size_t i = 0; i < len; i++)
            u[i] = ((const float *)out)[i];
}

static void kron_commit(struct curv__kblock *b, size_t cand, const double *g)
{
    (void)g;
    const double pi = kron_pi(b);
    const int have = cand < b->n_cand;
    const double gamma = have ? b->cgamma[cand] : NAN;
    if (side_fresh(&b->A))
        b->pi = b->pi_new;
    side_commit(&b->A, have ? cand : 0, gamma * pi);
    side_commit(&b->G, have ? cand : 0, gamma / pi);
    b->n_cand = 0;
}

static void kron_abort(struct curv__kblock *b)
{
    side_drop_new(&b->A);
    side_drop_new(&b->G);
    b->n_cand = 0;
}

static void kron_save(const struct curv__kblock *b, struct curv__writer *w,
                      const struct curv__kstamps *st)
{
    side_save(&b->A, w, st);
    side_save(&b->G, w, st);
    curv__w_f64(w, b->pi); /* set by each refresh: part of G's decomposition */
}

static void kron_load(struct curv__kblock *b, struct curv__reader *r)
{
    side_load(&b->A, r);
    side_load(&b->G, r);
    b->pi = curv__r_f64(r);
    if (!(b->pi > 0) || !isfinite(b->pi))
        r->bad = 1;
}

static size_t side_bytes(const struct curv__kside *s)
{
    const size_t sq = s->diag ? 0 : s->n * s->n;
    const size_t es = s->f32 ? sizeof(float) : sizeof(double);
    return (curv__kside_len(s) + sq + (s->chol ? 0 : s->n)) * sizeof(double) +
           (s->inv ? sq * es : 0) + (s->Qf || s->Pf ? sq * sizeof(float) : 0);
}

static size_t kron_bytes(const struct curv__kblock *b)
{
    return sizeof *b + side_bytes(&b->A) + side_bytes(&b->G);
}

static void kron_free(struct curv__kblock *b)
{
    side_free(&b->A);
    side_free(&b->G);
    curv__free(b);
}

static const struct curv__kblock_vt KRON_VT = {
    .stats = kron_stats,
    .refresh = kron_refresh,
    .prepare = kron_prepare,
    .apply = kron_apply,
    .commit = kron_commit,
    .abort = kron_abort,
    .save = kron_save,
    .load = kron_load,
    .bytes = kron_bytes,
    .free = kron_free,
};

/* ---- fallback ---------------------------------------------------------- */

/* AdaGrad-diag sees this step's square before dividing, as adagrad.c. */
static void fb_apply(const struct curv__kblock *b, size_t cand, const double *g, double gamma,
                     double *u, double *work)
{
    (void)cand, (void)gamma, (void)work;
    const double lr = b->h->fallback_lr, eps = b->h->fallback_eps;
    for (size_t i = 0; i < b->info.size; i++)
        u[i] = b->r ? lr * g[i] / sqrt(b->r[i] + g[i] * g[i] + eps) : lr * g[i];
}

size_t curv__kblock_sum_overflow(const struct curv__kblock *b, const double *g)
{
    for (size_t i = 0; b->r && i < b->info.size; i++)
        if (!isfinite(b->r[i] + g[i] * g[i]))
            return i;
    return SIZE_MAX;
}

static void fb_commit(struct curv__kblock *b, size_t cand, const double *g)
{
    (void)cand;
    for (size_t i = 0; b->r && i < b->info.size; i++)
        b->r[i] += g[i] * g[i];
}

static void fb_abort(struct curv__kblock *b)
{
    (void)b;
}

static void fb_save(const struct curv__kblock *b, struct curv__writer *w,
                    const struct curv__kstamps *st)
{
    curv__w_part(w, st->steps);
    if (b->r)
        curv__w_f64s(w, b->r, b->info.size);
}

static void fb_load(struct curv__kblock *b, struct curv__reader *r)
{
    if (!b->r)
        return;
    curv__r_f64s(r, b->r, b->info.size);
    if (!curv__valid_sums(b->r, b->info.size))
        r->bad = 1;
}

static size_t fb_bytes(const struct curv__kblock *b)
{
    return sizeof *b + (b->r ? b->info.size * sizeof(double) : 0);
}

static void fb_free(struct curv__kblock *b)
{
    curv__free(b->r);
    curv__free(b);
}

static const struct curv__kblock_vt FALLBACK_VT = {
    .apply = fb_apply,
    .commit = fb_commit,
    .abort = fb_abort,
    .save = fb_save,
    .load = fb_load,
    .bytes = fb_bytes,
    .free = fb_free,
};

struct curv__kblock *curv__kblock_new(const curv_block_info *info, const struct curv__kfac_hyper *h,
                                      struct curv__tally *t)
{
    struct curv__kblock scratch, *b = curv__tally_obj(t, &scratch, sizeof *b);
    if (!b)
        return NULL;
    b->info = *info;
    b->h = h;
    b->pi = 1.0;
    b->kron = info->kind != CURV_BLOCK_VECTOR;
    b->vt = b->kron ? &KRON_VT : &FALLBACK_VT;
    if (!b->kron && h->fallback == CURV__KFAC_FB_ADAGRAD)
        b->r = curv__tally_calloc(t, info->size, sizeof(double));
    if (b->kron) {
        side_init(&b->A, info->cols, h, t);
        side_init(&b->G, info->rows, h, t);
    }
    if (!t->alloc)
        return NULL;
    if (t->failed) {
        b->vt->free(b);
        return NULL;
    }
    return b;
}

size_t curv__kblock_saved(const curv_block_info *info, const struct curv__kfac_hyper *h)
{
    if (info->kind == CURV_BLOCK_VECTOR)
        return h->fallback == CURV__KFAC_FB_ADAGRAD ? info->size : 0;
    size_t total = 0;
    const size_t dims[2] = {info->cols, info->rows};
    for (int i = 0; i < 2; i++) {
        size_t n = dims[i], sq;
        if (n > (size_t)h->max_factor_dim) {
            total += 2 * n;
            continue;
        }
        if (!curv__mul_ok(n, n, &sq) || sq > SIZE_MAX / 4 || total > SIZE_MAX / 2)
            return SIZE_MAX;
        total += 2 * sq + (curv__kfac_cholesky(h) ? 2 : n); /* F, then Q and w or P, dof, c */
    }
    return total;
}

void curv__kblock_damped(const struct curv__kblock *b, int side, double gamma, double *out,
                         double *tmp)
{
    const struct curv__kside *s = side ? &b->G : &b->A;
    const double pi = kron_pi(b);
    const double damp = side ? gamma / pi : gamma * pi;
    const size_t n = s->n;
    const double *Q = side_Q(s), *w = side_w(s);
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < n; k++)
            tmp[i * n + k] = Q[i * n + k] * (w[k] + damp);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)n, 1.0, tmp, (int)n,
                Q, (int)n, 0.0, out, (int)n);
    curv__symmetrize(n, out, n);
}
