/* SPDX-License-Identifier: MIT */
/*
 * Block-tridiagonal K-FAC over chains of consecutive dense layers (thesis
 * §6.4.3, §6.5; ALGORITHMS.md §3.5): the cross factors and the kfac_tri
 * inverse. The diagonal factors are the blocks' own; the damped ones given
 * to kfac_tri are rebuilt from the blocks' decompositions, so that they
 * are those of the last refresh (as the block-diagonal inverse uses), and
 * the cross factors are snapshotted at the same refresh. The inverse is
 * built for one γ; a γ candidate, a refresh or a load rebuilds it.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"
#include "kfac_tri.h"

struct curv__kchain {
    const struct curv__kfac_hyper *h;
    size_t first, L;
    size_t *n_out, *n_in, *nx, *off; /* per block; nx = inputs without the 1 */
    int *bias;
    uint64_t n_stats;
    double **Ax, **Gx, **Ax_new, **Gx_new, **Axs, **Gxs; /* L - 1 each */
    int snap_new;                                        /* refreshed this step */
    double gamma_built;
    int has_tri;
    struct curv__kfac_tri *tri; /* NULL after a load until the next prepare */
    size_t clamped;
    struct curv__kfac_tri *cand[3];
    size_t cand_clamped[3];
    int reuse[3];
    double gam[3];
    const double **V; /* apply's and build's pointer arrays, L each */
    double **X;
    const double **Ad, **Gd, **Axp, **Gxp;
    const struct curv__layer_in **li;
};

static void free_new(struct curv__kchain *c)
{
    for (size_t j = 0; c->Ax_new && c->Gx_new && j + 1 < c->L; j++) {
        curv__free(c->Ax_new[j]), curv__free(c->Gx_new[j]);
        c->Ax_new[j] = c->Gx_new[j] = NULL;
    }
}

static void chain_free(struct curv__kchain *c)
{
    if (!c)
        return;
    curv__kchain_abort(c);
    double **m[4] = {c->Ax, c->Gx, c->Axs, c->Gxs};
    for (int k = 0; k < 4; k++)
        for (size_t j = 0; m[k] && j + 1 < c->L; j++)
            curv__free(m[k][j]);
    curv__kfac_tri_free(c->tri);
    curv__free(c->n_out), curv__free(c->n_in), curv__free(c->nx), curv__free(c->off),
        curv__free(c->bias);
    curv__free(c->Ax), curv__free(c->Gx), curv__free(c->Ax_new), curv__free(c->Gx_new),
        curv__free(c->Axs), curv__free(c->Gxs);
    curv__free(c->V), curv__free(c->X), curv__free(c->Ad), curv__free(c->Gd), curv__free(c->Axp),
        curv__free(c->Gxp), curv__free(c->li);
    curv__free(c);
}

void curv__kchains_free(struct curv__kchain **c, size_t n)
{
    for (size_t i = 0; c && i < n; i++)
        chain_free(c[i]);
    curv__free(c);
}

/* A chain of @L blocks from @first, allocated through @t (curv__tally);
 * NULL when out of memory or only counting. */
static struct curv__kchain *chain_new(const curv_layout *l, const struct curv__kfac_hyper *h,
                                      size_t first, size_t L, struct curv__tally *t)
{
    struct curv__kchain scratch, *c = curv__tally_obj(t, &scratch, sizeof *c);
    if (!c)
        return NULL;
    c->h = h, c->first = first, c->L = L;
    size_t **sizes[4] = {&c->n_out, &c->n_in, &c->nx, &c->off};
    for (int k = 0; k < 4; k++)
        *sizes[k] = curv__tally_calloc(t, L, sizeof(size_t));
    c->bias = curv__tally_calloc(t, L, sizeof(int));
    double ***mats[6] = {&c->Ax, &c->Gx, &c->Ax_new, &c->Gx_new, &c->Axs, &c->Gxs};
    for (int k = 0; k < 6; k++)
        *mats[k] = curv__tally_calloc(t, L - 1, sizeof(double *));
    c->V = curv__tally_calloc(t, L, sizeof *c->V);
    c->X = curv__tally_calloc(t, L, sizeof *c->X);
    const double ***ptrs[4] = {&c->Ad, &c->Gd, &c->Axp, &c->Gxp};
    for (int k = 0; k < 4; k++)
        *ptrs[k] = curv__tally_calloc(t, L, sizeof(double *));
    c->li = curv__tally_calloc(t, L, sizeof *c->li);
    for (size_t j = 0; j + 1 < L; j++) {
        curv_block_info a, b;
        curv_layout_block(l, first + j, &a);
        curv_layout_block(l, first + j + 1, &b);
        double *m[4];
        const size_t na = a.cols * b.cols, ng = a.rows * b.rows, len[4] = {na, na, ng, ng};
        for (int k = 0; k < 4; k++)
            m[k] = curv__tally_calloc(t, len[k], sizeof(double));
        if (t->alloc && !t->failed)
            c->Ax[j] = m[0], c->Axs[j] = m[1], c->Gx[j] = m[2], c->Gxs[j] = m[3];
        else
            for (int k = 0; k < 4; k++)
                curv__free(m[k]);
    }
    if (!t->alloc)
        return NULL;
    if (t->failed) {
        chain_free(c);
        return NULL;
    }
    for (size_t i = 0; i < L; i++) {
        curv_block_info b;
        curv_layout_block(l, first + i, &b);
        c->n_out[i] = b.rows, c->n_in[i] = b.cols, c->nx[i] = b.n_in, c->off[i] = b.offset;
        c->bias[i] = b.has_bias;
    }
    return c;
}

/* Block @i may start or continue a chain: dense with both factors dense. */
static int chainable(const curv_layout *l, const struct curv__kfac_hyper *h, size_t i,
                     curv_block_info *b)
{
    return curv_layout_block(l, i, b) == CURV_OK && b->kind == CURV_BLOCK_DENSE &&
           b->rows <= (size_t)h->max_factor_dim && b->cols <= (size_t)h->max_factor_dim;
}

curv_status curv__kchains_new(const curv_layout *l, const struct curv__kfac_hyper *h,
                              struct curv__tally *t, struct curv__kchain ***out, size_t *n,
                              curv_error *err)
{
    const size_t nb = curv_layout_nblocks(l);
    *out = NULL, *n = 0;
    if (h->inverse != CURV__KFAC_TRIDIAG)
        return CURV_OK;
    struct curv__kchain **c = curv__tally_calloc(t, nb, sizeof *c);
    size_t count = 0;
    for (size_t i = 0; i < nb && !t->failed;) {
        curv_block_info b, nx;
        size_t len = 0;
        if (chainable(l, h, i, &b)) {
            len = 1;
            while (chainable(l, h, i + len, &nx) && nx.n_in == b.n_out) {
                b = nx;
                len++;
            }
        }
        struct curv__kchain *ch = len >= 2 ? chain_new(l, h, i, len, t) : NULL;
        if (ch)
            c[count++] = ch;
        i += len ? len : 1;
    }
    if (!t->alloc)
        return CURV_OK;
    if (t->failed) {
        curv__kchains_free(c, count);
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for the chains");
    }
    *out = c, *n = count;
    return CURV_OK;
}

int curv__kchain_member(struct curv__kchain *const *c, size_t n, size_t i)
{
    for (size_t k = 0; k < n; k++)
        if (i >= c[k]->first && i < c[k]->first + c[k]->L)
            return 1;
    return 0;
}

static const struct curv__layer_in *entry_for(const struct curv__step_args *a, size_t i)
{
    for (size_t j = 0; j < a->n_layers; j++)
        if (a->layers[j].block == i)
            return &a->layers[j];
    return NULL;
}

/* C ← εC + (1−ε)X̂ with X̂ = (1/m) Σ x yᵀ, x and y extended by a 1 when
 * @bx / @by (C is (nx + bx) x (ny + by)). */
static double *cross(const double *C, const double *X, size_t nx, int bx, const double *Y,
                     size_t ny, int by, size_t m, double eps)
{
    const size_t cols = ny + (size_t)by, rows = nx + (size_t)bx;
    double *R = curv__calloc_n(rows * cols, sizeof(double));
    if (!R)
        return NULL;
    const double s = 1.0 / (double)m;
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nx, (int)ny, (int)m, s, X, (int)nx, Y,
                (int)ny, 0.0, R, (int)cols);
    for (size_t r = 0; r < m; r++) {
        for (size_t i = 0; by && i < nx; i++)
            R[i * cols + ny] += s * X[r * nx + i];
        for (size_t j = 0; bx && j < ny; j++)
            R[nx * cols + j] += s * Y[r * ny + j];
    }
    if (bx && by)
        R[nx * cols + ny] = 1.0;
    for (size_t i = 0; i < rows * cols; i++)
        R[i] = eps * C[i] + (1.0 - eps) * R[i];
    return R;
}

curv_status curv__kchain_stats(struct curv__kchain *c, const struct curv__step_args *a,
                               curv_error *err)
{
    const struct curv__layer_in **li = c->li;
    size_t have = 0;
    for (size_t i = 0; i < c->L; i++)
        have += (li[i] = entry_for(a, c->first + i)) != NULL;
    if (have == 0)
        return CURV_OK;
    for (size_t i = 0; i < c->L; i++)
        if (!li[i] || li[i]->rows != li[0]->rows)
            return curv__fail(err, CURV_E_INVALID,
                              "kfac: inverse = tridiag: the layers of a chain need statistics "
                              "from the same rows in the same step; block %zu has %zu rows, "
                              "block %zu %zu",
                              c->first, li[0]->rows, c->first + i, li[i] ? li[i]->rows : 0);
    const double eps = curv__kfac_eps(c->n_stats + 1, c->h->decay);
    const size_t m = li[0]->rows;
    for (size_t j = 0; j + 1 < c->L; j++) {
        c->Ax_new[j] = cross(c->Ax[j], li[j]->acts, c->nx[j], c->bias[j], li[j + 1]->acts,
                             c->nx[j + 1], c->bias[j + 1], m, eps);
        c->Gx_new[j] = cross(c->Gx[j], li[j]->signals, c->n_out[j], 0, li[j + 1]->signals,
                             c->n_out[j + 1], 0, m, eps);
        if (!c->Ax_new[j] || !c->Gx_new[j]) {
            free_new(c);
            return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for cross factors");
        }
        size_t na = c->n_in[j] * c->n_in[j + 1], ng = c->n_out[j] * c->n_out[j + 1];
        if (curv__first_nonfinite(c->Ax_new[j], na) < na ||
            curv__first_nonfinite(c->Gx_new[j], ng) < ng) {
            free_new(c);
            return curv__fail(err, CURV_E_NUMERIC, "the cross factors are not finite");
        }
    }
    return CURV_OK;
}

void curv__kchain_refreshed(struct curv__kchain *c)
{
    c->snap_new = 1;
}

/* The cross factors a build uses: this refresh's, or the last snapshot. */
static const double *snap_of(const struct curv__kchain *c, double *const *now, double *const *nw,
                             double *const *snap, size_t j)
{
    if (!c->snap_new)
        return snap[j];
    return nw[j] ? nw[j] : now[j];
}

static curv_status build(struct curv__kchain *c, struct curv__kblock *const *blocks, double gamma,
                         struct curv__kfac_tri **out, size_t *clamped, curv_error *err)
{
    size_t total = 0, big = 0;
    for (size_t i = 0; i < c->L; i++) {
        total += c->n_in[i] * c->n_in[i] + c->n_out[i] * c->n_out[i];
        big = c->n_in[i] > big ? c->n_in[i] : big;
        big = c->n_out[i] > big ? c->n_out[i] : big;
    }
    double *mem = curv__calloc_n(total + big * big, sizeof(double));
    const double **Ad = c->Ad, **Gd = c->Gd, **Ax = c->Axp, **Gx = c->Gxp;
    if (!mem)
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for a tridiagonal build");
    double *p = mem, *tmp = mem + total;
    for (size_t i = 0; i < c->L; i++) {
        const struct curv__kblock *b = blocks[c->first + i];
        curv__kblock_damped(b, 0, gamma, p, tmp);
        Ad[i] = p, p += c->n_in[i] * c->n_in[i];
        curv__kblock_damped(b, 1, gamma, p, tmp);
        Gd[i] = p, p += c->n_out[i] * c->n_out[i];
        Ax[i] = i + 1 < c->L ? snap_of(c, c->Ax, c->Ax_new, c->Axs, i) : NULL;
        Gx[i] = i + 1 < c->L ? snap_of(c, c->Gx, c->Gx_new, c->Gxs, i) : NULL;
    }
    curv_status st =
        curv__kfac_tri_build(c->L, c->n_out, c->n_in, Ad, Gd, Ax, Gx, out, clamped, err);
    curv__free(mem);
    return st;
}

curv_status curv__kchain_prepare(struct curv__kchain *c, struct curv__kblock *const *blocks,
                                 const double *gammas, size_t n, int *kept, curv_error *err)
{
    const int rebuild = c->snap_new || !c->tri;
    curv_status result = CURV_OK;
    *kept = 0;
    for (size_t k = 0; k < n; k++) {
        c->gam[k] = gammas[k];
        c->reuse[k] = !rebuild && gammas[k] == c->gamma_built;
        if (c->reuse[k] || c->cand[k])
            continue;
        curv_status st = build(c, blocks, gammas[k], &c->cand[k], &c->cand_clamped[k], err);
        if (st == CURV_E_NUMERIC && c->tri) {
            c->reuse[k] = 1; /* keep the previous inverse; the caller counts it */
            *kept = 1;
            result = st;
        } else if (st != CURV_OK) {
            return st;
        }
    }
    return result;
}

void curv__kchain_apply(const struct curv__kchain *c, size_t cand, const double *g, double *u)
{
    for (size_t i = 0; i < c->L; i++) {
        c->V[i] = g + c->off[i];
        c->X[i] = u + c->off[i];
    }
    curv__kfac_tri_apply(c->reuse[cand] ? c->tri : c->cand[cand], c->V, c->X);
}

void curv__kchain_commit(struct curv__kchain *c, size_t cand)
{
    if (c->Ax_new[0]) {
        for (size_t j = 0; j + 1 < c->L; j++) {
            curv__free(c->Ax[j]), curv__free(c->Gx[j]);
            c->Ax[j] = c->Ax_new[j], c->Gx[j] = c->Gx_new[j];
            c->Ax_new[j] = c->Gx_new[j] = NULL;
        }
        c->n_stats++;
    }
    if (c->snap_new)
        for (size_t j = 0; j + 1 < c->L; j++) {
            memcpy(c->Axs[j], c->Ax[j], c->n_in[j] * c->n_in[j + 1] * sizeof(double));
            memcpy(c->Gxs[j], c->Gx[j], c->n_out[j] * c->n_out[j + 1] * sizeof(double));
        }
    if (!c->reuse[cand] && c->cand[cand]) {
        curv__kfac_tri_free(c->tri);
        c->tri = c->cand[cand];
        c->cand[cand] = NULL;
        c->clamped = c->cand_clamped[cand];
        c->gamma_built = c->gam[cand];
        c->has_tri = 1;
    }
    curv__kchain_abort(c);
}

void curv__kchain_abort(struct curv__kchain *c)
{
    free_new(c);
    c->snap_new = 0;
    for (size_t k = 0; k < 3; k++) {
        curv__kfac_tri_free(c->cand[k]);
        c->cand[k] = NULL;
        c->reuse[k] = 0;
    }
}

/* Saved: the cross factors, their snapshot, and the γ of the inverse in
 * use; the inverse itself is rebuilt from them at the next step. The
 * cross factors change exactly when n_stats grows (at commit), the
 * snapshot exactly when the first block's refresh step moves. */
void curv__kchain_save(const struct curv__kchain *c, struct curv__writer *w, uint64_t snap)
{
    curv__w_volatile(w);
    curv__w_u64(w, c->n_stats);
    curv__w_f64(w, c->gamma_built);
    curv__w_u32(w, (uint32_t)c->has_tri);
    const uint64_t factors = curv__stamp(CURV__STAMP_KCHAIN_STATS, c->n_stats);
    for (size_t j = 0; j + 1 < c->L; j++) {
        size_t na = c->n_in[j] * c->n_in[j + 1], ng = c->n_out[j] * c->n_out[j + 1];
        curv__w_part(w, factors);
        curv__w_f64s(w, c->Ax[j], na);
        curv__w_f64s(w, c->Gx[j], ng);
        curv__w_part(w, snap);
        curv__w_f64s(w, c->Axs[j], na);
        curv__w_f64s(w, c->Gxs[j], ng);
    }
}

void curv__kchain_load(struct curv__kchain *c, struct curv__reader *r)
{
    c->n_stats = curv__r_u64(r);
    c->gamma_built = curv__r_f64(r);
    uint32_t has = curv__r_u32(r);
    c->has_tri = has == 1;
    if (has > 1 || !(c->gamma_built >= 0) || !isfinite(c->gamma_built))
        r->bad = 1;
    for (size_t j = 0; j + 1 < c->L && !r->bad; j++) {
        size_t na = c->n_in[j] * c->n_in[j + 1], ng = c->n_out[j] * c->n_out[j + 1];
        double *m[4] = {c->Ax[j], c->Gx[j], c->Axs[j], c->Gxs[j]};
        size_t n[4] = {na, ng, na, ng};
        for (int k = 0; k < 4; k++) {
            curv__r_f64s(r, m[k], n[k]);
            if (curv__first_nonfinite(m[k], n[k]) < n[k])
                r->bad = 1;
        }
    }
    curv__kfac_tri_free(c->tri);
    c->tri = NULL;
    c->clamped = 0;
}

size_t curv__kchain_bytes(const struct curv__kchain *c)
{
    size_t total = sizeof *c + curv__kfac_tri_bytes(c->tri);
    for (size_t j = 0; j + 1 < c->L; j++)
        total += 2 * (c->n_in[j] * c->n_in[j + 1] + c->n_out[j] * c->n_out[j + 1]) * sizeof(double);
    return total;
}

size_t curv__kchain_clamped(const struct curv__kchain *c, size_t cand)
{
    return c->reuse[cand] || !c->cand[cand] ? c->clamped : c->cand_clamped[cand];
}

size_t curv__kchain_first(const struct curv__kchain *c)
{
    return c->first;
}

size_t curv__kchain_len(const struct curv__kchain *c)
{
    return c->L;
}
