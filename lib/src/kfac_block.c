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
 *  - fallback: a vector block (norm gains, embeddings) with AdaGrad-diag
 *    or SGD scaled by fallback_lr; K-FAC has no factors for it.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"
#include "linalg.h"

static size_t side_len(const struct curv__kside *s)
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

static void side_drop_new(struct curv__kside *s)
{
    curv__free(s->F_new);
    curv__free(s->Q_new);
    curv__free(s->w_new);
    s->F_new = s->Q_new = s->w_new = NULL;
}

static void side_free(struct curv__kside *s)
{
    side_drop_new(s);
    curv__free(s->F);
    curv__free(s->Q);
    curv__free(s->w);
}

static void side_init(struct curv__kside *s, size_t n, const struct curv__kfac_hyper *h,
                      struct curv__tally *t)
{
    s->n = n;
    s->diag = n > (size_t)h->max_factor_dim;
    s->F = curv__tally_calloc(t, side_len(s), sizeof(double));
    s->Q = s->diag ? NULL : curv__tally_calloc(t, n * n, sizeof(double));
    s->w = curv__tally_calloc(t, n, sizeof(double));
}

/*
 * New estimate F ← εF + (1−ε)X̂ with X̂ = scale Σ_rows x xᵀ over the rows of
 * @X (rows x nx, row-major), x extended by a homogeneous 1 when @bias (the
 * side then has nx + 1 entries). Dense sides use one SYRK; diagonal sides
 * only the squares.
 */
static curv_status side_stats(struct curv__kside *s, const double *X, size_t rows, size_t nx,
                              int bias, double scale, double eps)
{
    const size_t n = s->n;
    double *Fn = curv__calloc_n(side_len(s), sizeof(double));
    if (!Fn)
        return CURV_E_NOMEM;
    if (s->diag) {
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < nx; j++)
                Fn[j] += X[r * nx + j] * X[r * nx + j];
        for (size_t j = 0; j < nx; j++)
            Fn[j] *= scale;
        if (bias)
            Fn[nx] = scale * (double)rows;
    } else {
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)nx, (int)rows, scale, X, (int)nx,
                    0.0, Fn, (int)n);
        if (bias) {
            for (size_t r = 0; r < rows; r++)
                for (size_t j = 0; j < nx; j++)
                    Fn[j * n + nx] += X[r * nx + j];
            for (size_t j = 0; j < nx; j++)
                Fn[j * n + nx] *= scale;
            Fn[nx * n + nx] = scale * (double)rows;
        }
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < i; j++)
                Fn[i * n + j] = Fn[j * n + i];
    }
    const size_t len = side_len(s);
    for (size_t i = 0; i < len; i++)
        Fn[i] = eps * s->F[i] + (1.0 - eps) * Fn[i];
    if (curv__first_nonfinite(Fn, len) < len) {
        curv__free(Fn);
        return CURV_E_NUMERIC;
    }
    curv__free(s->F_new);
    s->F_new = Fn;
    return CURV_OK;
}

/* Eigendecomposition of the latest factor, eigenvalues clamped at 0 (the
 * factors are PSD; round-off can make tiny ones negative). */
static curv_status side_refresh(struct curv__kside *s, curv_error *err)
{
    const size_t n = s->n;
    const double *F = curv__kside_F(s);
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
    if (st != CURV_OK) {
        curv__free(w);
        curv__free(Q);
        return st;
    }
    curv__free(s->Q_new);
    curv__free(s->w_new);
    s->Q_new = Q;
    s->w_new = w;
    return CURV_OK;
}

static double side_trace(const struct curv__kside *s)
{
    const double *F = curv__kside_F(s);
    double t = 0;
    for (size_t i = 0; i < s->n; i++)
        t += F[s->diag ? i : i * s->n + i];
    return t;
}

static void side_commit(struct curv__kside *s)
{
    if (s->F_new) {
        curv__free(s->F);
        s->F = s->F_new;
    }
    if (s->w_new) {
        curv__free(s->w);
        s->w = s->w_new;
        if (!s->diag) {
            curv__free(s->Q);
            s->Q = s->Q_new;
        }
    }
    s->F_new = s->Q_new = s->w_new = NULL;
}

/* F changes with each statistics update, Q and w with each refresh. */
static void side_save(const struct curv__kside *s, struct curv__writer *w,
                      const struct curv__kstamps *st)
{
    curv__w_part(w, st->factors);
    curv__w_f64s(w, s->F, side_len(s));
    curv__w_part(w, st->inverse);
    if (!s->diag)
        curv__w_f64s(w, s->Q, s->n * s->n);
    curv__w_f64s(w, s->w, s->n);
}

/* Loaded factors must be what steps produce: finite, eigenvalues >= 0. */
static void side_load(struct curv__kside *s, struct curv__reader *r)
{
    curv__r_f64s(r, s->F, side_len(s));
    if (!s->diag)
        curv__r_f64s(r, s->Q, s->n * s->n);
    curv__r_f64s(r, s->w, s->n);
    if (curv__first_nonfinite(s->F, side_len(s)) < side_len(s) ||
        (!s->diag && curv__first_nonfinite(s->Q, s->n * s->n) < s->n * s->n) ||
        !curv__valid_sums(s->w, s->n))
        r->bad = 1;
}

/* ---- kron -------------------------------------------------------------- */

static curv_status kron_stats(struct curv__kblock *b, const struct curv__layer_in *li, double eps,
                              curv_error *err)
{
    const curv_block_info *in = &b->info;
    /* Ā averages over rows (examples x positions); G sums over positions
     * and averages over examples (KFC), both equal for dense blocks. */
    curv_status st =
        side_stats(&b->A, li->acts, li->rows, in->n_in, in->has_bias, 1.0 / (double)li->rows, eps);
    if (st == CURV_OK)
        st =
            side_stats(&b->G, li->signals, li->rows, in->n_out, 0, 1.0 / (double)li->examples, eps);
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

static curv_status kron_refresh(struct curv__kblock *b, curv_error *err)
{
    curv_status st = side_refresh(&b->A, err);
    if (st == CURV_OK)
        st = side_refresh(&b->G, err);
    if (st != CURV_OK) {
        /* Keep the tentative factors; drop only the partial inverse. */
        curv__free(b->A.Q_new), curv__free(b->A.w_new), curv__free(b->G.Q_new),
            curv__free(b->G.w_new);
        b->A.Q_new = b->A.w_new = b->G.Q_new = b->G.w_new = NULL;
        return st;
    }
    b->pi_new = b->h->pi_mode == CURV__KFAC_PI_ONE
                    ? 1.0
                    : curv__kfac_pi(side_trace(&b->A), b->A.n, side_trace(&b->G), b->G.n);
    return CURV_OK;
}

/* out = Q^T X (left, rows x cols) or X Q (right); a diagonal side copies. */
static void rotate(const struct curv__kside *s, int left, int trans, const double *X, size_t rows,
                   size_t cols, double *out)
{
    if (s->diag) {
        memcpy(out, X, rows * cols * sizeof(double));
        return;
    }
    const double *Q = side_Q(s);
    const int n = (int)s->n;
    if (left)
        cblas_dgemm(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, CblasNoTrans, n, (int)cols, n,
                    1.0, Q, n, X, (int)cols, 0.0, out, (int)cols);
    else
        cblas_dgemm(CblasRowMajor, CblasNoTrans, trans ? CblasTrans : CblasNoTrans, (int)rows, n, n,
                    1.0, X, (int)cols, Q, n, 0.0, out, (int)cols);
}

static void kron_apply(const struct curv__kblock *b, const double *g, double gamma, double *u,
                       double *work)
{
    const size_t rows = b->info.rows, cols = b->info.cols;
    const double pi = b->A.w_new ? b->pi_new : b->pi;
    const double *wg = side_w(&b->G), *wa = side_w(&b->A);
    const double dg = gamma / pi, da = gamma * pi;
    double *t = work, *s = work + rows * cols;
    rotate(&b->G, 1, 1, g, rows, cols, t); /* Q_Gᵀ V */
    rotate(&b->A, 0, 0, t, rows, cols, s); /* · Q_A */
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++)
            s[i * cols + j] /= (wg[i] + dg) * (wa[j] + da);
    rotate(&b->G, 1, 0, s, rows, cols, t); /* Q_G · */
    rotate(&b->A, 0, 1, t, rows, cols, u); /* · Q_Aᵀ */
}

static void kron_commit(struct curv__kblock *b, const double *g)
{
    (void)g;
    if (b->A.w_new)
        b->pi = b->pi_new;
    side_commit(&b->A);
    side_commit(&b->G);
}

static void kron_abort(struct curv__kblock *b)
{
    side_drop_new(&b->A);
    side_drop_new(&b->G);
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
    return (side_len(s) + (s->diag ? 0 : s->n * s->n) + s->n) * sizeof(double);
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
static void fb_apply(const struct curv__kblock *b, const double *g, double gamma, double *u,
                     double *work)
{
    (void)gamma, (void)work;
    const double lr = b->h->fallback_lr, eps = b->h->fallback_eps;
    for (size_t i = 0; i < b->info.size; i++)
        u[i] = b->r ? lr * g[i] / sqrt(b->r[i] + g[i] * g[i] + eps) : lr * g[i];
}

static void fb_commit(struct curv__kblock *b, const double *g)
{
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
        total += 2 * sq + n;
    }
    return total;
}

void curv__kblock_damped(const struct curv__kblock *b, int side, double gamma, double *out,
                         double *tmp)
{
    const struct curv__kside *s = side ? &b->G : &b->A;
    const double pi = b->A.w_new ? b->pi_new : b->pi;
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
