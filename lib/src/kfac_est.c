/* SPDX-License-Identifier: MIT */
/*
 * The K-FAC estimator: one curvature block per layout block, and the
 * policies around them (thesis §6.5, §6.8, Alg. 7): exponentially decayed
 * factor estimates with ε = min(1 − 1/k, decay), k counting each block's
 * statistics updates; statistics due every cov_interval steps; inverses
 * refreshed at steps k <= 3 and k ≡ 0 (mod inv_interval); a block whose
 * statistics or inverse fail keeps its previous ones for up to
 * max_failures steps in a row. Everything is tentative until commit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"

/* Per-block bookkeeping, committed with the block. */
struct book {
    uint64_t n_stats;  /* statistics updates folded in */
    uint64_t inv_step; /* step of the last refresh, 0 = none yet */
    uint64_t fails;    /* consecutive steps with a failed update */
};

struct curv__kfac_est {
    const struct curv__kfac_hyper *h;
    size_t n;
    struct curv__kblock **b;
    struct book *cur, *nxt;
    double *work;             /* 2 * largest block */
    struct curv__kchain **ch; /* inverse = tridiag: the chains */
    size_t nch;
    unsigned char *member; /* per block: its inverse is a chain's */
};

void curv__kfac_est_free(struct curv__kfac_est *e)
{
    if (!e)
        return;
    for (size_t i = 0; e->b && i < e->n; i++)
        if (e->b[i])
            e->b[i]->vt->free(e->b[i]);
    curv__free(e->b);
    curv__free(e->cur);
    curv__free(e->nxt);
    curv__free(e->work);
    curv__kchains_free(e->ch, e->nch);
    curv__free(e->member);
    curv__free(e);
}

curv_status curv__kfac_est_new(const curv_layout *l, const struct curv__kfac_hyper *h,
                               struct curv__tally *t, struct curv__kfac_est **out, curv_error *err)
{
    struct curv__kfac_est scratch, *e = curv__tally_obj(t, &scratch, sizeof *e);
    if (!e)
        return curv__fail(err, CURV_E_NOMEM, "kfac: out of memory");
    e->h = h;
    e->n = curv_layout_nblocks(l);
    e->b = curv__tally_calloc(t, e->n, sizeof *e->b);
    e->cur = curv__tally_calloc(t, e->n, sizeof *e->cur);
    e->nxt = curv__tally_calloc(t, e->n, sizeof *e->nxt);
    size_t big = 1;
    for (size_t i = 0; i < e->n && !t->failed; i++) {
        curv_block_info info;
        curv_layout_block(l, i, &info);
        struct curv__kblock *b = curv__kblock_new(&info, h, t);
        if (b)
            e->b[i] = b;
        big = info.size > big ? info.size : big;
    }
    e->work = curv__tally_calloc(t, big, 2 * sizeof(double));
    e->member = curv__tally_calloc(t, e->n, 1);
    curv_status st = t->failed ? CURV_OK : curv__kchains_new(l, h, t, &e->ch, &e->nch, err);
    if (!t->alloc) {
        *out = NULL;
        return st;
    }
    if (st == CURV_OK && t->failed)
        st = curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for the curvature blocks");
    if (st != CURV_OK) {
        curv__kfac_est_free(e);
        return st;
    }
    for (size_t i = 0; i < e->n; i++)
        e->member[i] = (unsigned char)curv__kchain_member(e->ch, e->nch, i);
    *out = e;
    return CURV_OK;
}

int curv__kfac_stats_due(const struct curv__kfac_hyper *h, uint64_t k)
{
    return (k - 1) % (uint64_t)h->cov_interval == 0;
}

void curv__kfac_est_abort(struct curv__kfac_est *e)
{
    for (size_t i = 0; i < e->n; i++)
        e->b[i]->vt->abort(e->b[i]);
    for (size_t c = 0; c < e->nch; c++)
        curv__kchain_abort(e->ch[c]);
}

/* The layer entry for block @i, or NULL. */
static const struct curv__layer_in *entry_for(const struct curv__step_args *a, size_t i)
{
    for (size_t j = 0; j < a->n_layers; j++)
        if (a->layers[j].block == i)
            return &a->layers[j];
    return NULL;
}

/* A numeric failure of block @i: tolerated when the block has a previous
 * estimate to keep and has not failed max_failures steps in a row. */
static curv_status tolerate(struct curv__kfac_est *e, size_t i, int have_old, unsigned *failed,
                            curv_error *err)
{
    if (e->nxt[i].fails > e->cur[i].fails)
        return CURV_OK; /* this step's failure is counted already */
    if (have_old && e->cur[i].fails < (uint64_t)e->h->max_failures) {
        e->nxt[i].fails = e->cur[i].fails + 1;
        (*failed)++;
        return CURV_OK;
    }
    char why[CURV_ERROR_TEXT];
    snprintf(why, sizeof why, "%s", err ? err->text : "");
    return curv__fail(err, CURV_E_NUMERIC,
                      "kfac: block '%s': %s (%llu failures in a row, max_failures = %lld)",
                      e->b[i]->info.name, why, (unsigned long long)e->cur[i].fails + 1,
                      (long long)e->h->max_failures);
}

static curv_status fold_stats(struct curv__kfac_est *e, const struct curv__step_args *a, uint64_t k,
                              unsigned *failed, curv_error *err)
{
    const int due = curv__kfac_stats_due(e->h, k);
    for (size_t i = 0; i < e->n; i++) {
        struct curv__kblock *b = e->b[i];
        if (!b->kron)
            continue;
        const struct curv__layer_in *li = entry_for(a, i);
        if (!li && (due || e->cur[i].n_stats == 0))
            return curv__fail(err, CURV_E_INVALID,
                              "kfac: step %llu needs layer statistics for block '%s' (%s; "
                              "cov_interval = %lld)",
                              (unsigned long long)k, b->info.name,
                              e->cur[i].n_stats ? "they are due" : "it has none yet",
                              (long long)e->h->cov_interval);
        if (!li)
            continue;
        double eps = curv__kfac_eps(e->cur[i].n_stats + 1, e->h->decay);
        curv_status st = b->vt->stats(b, li, eps, err);
        if (st == CURV_OK)
            e->nxt[i].n_stats = e->cur[i].n_stats + 1;
        else if (st == CURV_E_NUMERIC)
            st = tolerate(e, i, e->cur[i].n_stats > 0, failed, err);
        if (st != CURV_OK)
            return st;
    }
    for (size_t c = 0; c < e->nch; c++) {
        const size_t first = curv__kchain_first(e->ch[c]);
        curv_status st = curv__kchain_stats(e->ch[c], a, err);
        if (st == CURV_E_NUMERIC)
            st = tolerate(e, first, e->cur[first].n_stats > 0, failed, err);
        if (st != CURV_OK)
            return st;
    }
    return CURV_OK;
}

curv_status curv__kfac_est_update(struct curv__kfac_est *e, const struct curv__step_args *a,
                                  uint64_t k, unsigned *failed, curv_error *err)
{
    /* A cancelled step (curv_opt_cancel) leaves its tentative factors,
     * decompositions and tridiagonal candidates behind: start from the
     * committed state only. */
    curv__kfac_est_abort(e);
    memcpy(e->nxt, e->cur, e->n * sizeof *e->nxt);
    *failed = 0;
    curv_status st = fold_stats(e, a, k, failed, err);
    const int periodic = k <= 3 || k % (uint64_t)e->h->inv_interval == 0;
    for (size_t i = 0; st == CURV_OK && i < e->n; i++) {
        struct curv__kblock *b = e->b[i];
        if (!b->kron || (!periodic && e->cur[i].inv_step))
            continue;
        if (e->nxt[i].n_stats == 0)
            continue; /* only reachable when its statistics failed on step 1 */
        st = b->vt->refresh(b, err);
        if (st == CURV_OK)
            e->nxt[i].inv_step = k;
        else if (st == CURV_E_NUMERIC)
            st = tolerate(e, i, e->cur[i].inv_step > 0, failed, err);
    }
    for (size_t c = 0; st == CURV_OK && c < e->nch; c++) {
        const size_t first = curv__kchain_first(e->ch[c]);
        if (e->nxt[first].inv_step != e->cur[first].inv_step)
            curv__kchain_refreshed(e->ch[c]);
    }
    for (size_t i = 0; st == CURV_OK && i < e->n; i++)
        if (e->nxt[i].fails == e->cur[i].fails &&
            (e->nxt[i].n_stats != e->cur[i].n_stats || e->nxt[i].inv_step != e->cur[i].inv_step))
            e->nxt[i].fails = 0; /* something succeeded and nothing failed */
    if (st != CURV_OK)
        curv__kfac_est_abort(e);
    return st;
}

/* The uses an explicit inverse formed at a step with @n candidates can
 * expect (kfac_block.c's rule): the steps between refreshes or, in
 * adaptive mode, γ-grid steps, whichever is shorter; 1 on a γ-grid step,
 * where only the kept candidate's inverses live on. A function of the
 * settings alone, so a loaded optimizer decides as the saved one did. */
static unsigned horizon(const struct curv__kfac_hyper *h, size_t n)
{
    if (n > 1)
        return 1;
    int64_t t = h->inv_interval;
    if (h->mode == CURV__KFAC_ADAPTIVE && h->gamma_interval < t)
        t = h->gamma_interval;
    return t > 1000000 ? 1000000u : (unsigned)t;
}

curv_status curv__kfac_est_prepare(struct curv__kfac_est *e, const double *gammas, size_t n,
                                   unsigned *failed, curv_error *err)
{
    const unsigned hz = horizon(e->h, n);
    for (size_t i = 0; i < e->n; i++) {
        struct curv__kblock *b = e->b[i];
        if (!b->vt->prepare || e->member[i])
            continue;
        curv_status st = b->vt->prepare(b, gammas, n, hz, err);
        if (st != CURV_OK)
            return st;
    }
    for (size_t c = 0; c < e->nch; c++) {
        int kept = 0;
        curv_status st = curv__kchain_prepare(e->ch[c], e->b, gammas, n, &kept, err);
        if (st == CURV_E_NUMERIC)
            st = tolerate(e, curv__kchain_first(e->ch[c]), kept, failed, err);
        if (st != CURV_OK)
            return st;
    }
    return CURV_OK;
}

void curv__kfac_est_apply(struct curv__kfac_est *e, size_t c, double gamma, const double *g,
                          double *u)
{
    for (size_t i = 0; i < e->n; i++) {
        const struct curv__kblock *b = e->b[i];
        const size_t off = b->info.offset;
        if (!e->member[i])
            b->vt->apply(b, c, g + off, gamma, u + off, e->work);
    }
    for (size_t k = 0; k < e->nch; k++)
        curv__kchain_apply(e->ch[k], c, g, u);
}

void curv__kfac_est_commit(struct curv__kfac_est *e, size_t c, const double *g, uint64_t k)
{
    (void)k;
    for (size_t i = 0; i < e->n; i++)
        e->b[i]->vt->commit(e->b[i], c, g + e->b[i]->info.offset);
    for (size_t i = 0; i < e->nch; i++)
        curv__kchain_commit(e->ch[i], c);
    memcpy(e->cur, e->nxt, e->n * sizeof *e->cur);
}

/* Only the committed state (cur) is saved, and it is what the stamps count:
 * a block's factors change exactly when n_stats grows, its decompositions
 * when inv_step moves (a failed refresh moves neither). */
void curv__kfac_est_save(const struct curv__kfac_est *e, struct curv__writer *w, uint64_t steps)
{
    for (size_t i = 0; i < e->n; i++) {
        const struct book *bk = &e->cur[i];
        curv__w_volatile(w);
        curv__w_u64(w, bk->n_stats);
        curv__w_u64(w, bk->inv_step);
        curv__w_u64(w, bk->fails);
        const struct curv__kstamps st = {curv__stamp(CURV__STAMP_KFAC_STATS, bk->n_stats),
                                         curv__stamp(CURV__STAMP_KFAC_INV, bk->inv_step), steps};
        e->b[i]->vt->save(e->b[i], w, &st);
    }
    for (size_t c = 0; c < e->nch; c++) {
        const size_t first = curv__kchain_first(e->ch[c]);
        curv__kchain_save(e->ch[c], w,
                          curv__stamp(CURV__STAMP_KCHAIN_SNAP, e->cur[first].inv_step));
    }
}

void curv__kfac_est_load(struct curv__kfac_est *e, struct curv__reader *r)
{
    for (size_t i = 0; i < e->n && !r->bad; i++) {
        struct book *bk = &e->cur[i];
        bk->n_stats = curv__r_u64(r);
        bk->inv_step = curv__r_u64(r);
        bk->fails = curv__r_u64(r);
        if (bk->fails > (uint64_t)e->h->max_failures || (bk->inv_step && !bk->n_stats) ||
            (!e->b[i]->kron && (bk->n_stats || bk->inv_step)))
            r->bad = 1;
        e->b[i]->vt->load(e->b[i], r);
    }
    for (size_t c = 0; c < e->nch && !r->bad; c++)
        curv__kchain_load(e->ch[c], r);
}

size_t curv__kfac_est_bytes(const struct curv__kfac_est *e)
{
    size_t big = 0, total = sizeof *e + e->n * (sizeof *e->b + 2 * sizeof *e->cur);
    for (size_t i = 0; i < e->n; i++) {
        total += e->b[i]->vt->bytes(e->b[i]);
        big = e->b[i]->info.size > big ? e->b[i]->info.size : big;
    }
    for (size_t c = 0; c < e->nch; c++)
        total += curv__kchain_bytes(e->ch[c]);
    return total + 2 * big * sizeof(double);
}

size_t curv__kfac_est_report_size(const curv_layout *l)
{
    return curv_layout_nblocks(l) + 1;
}

void curv__kfac_est_report(const struct curv__kfac_est *e, curv_opt *o, uint64_t k)
{
    for (size_t i = 0; i < e->n; i++)
        if (e->b[i]->kron)
            curv__report_add(o, (double)(k - e->cur[i].inv_step), "inverse_age.%s",
                             e->b[i]->info.name);
    if (e->nch) {
        size_t clamped = 0;
        for (size_t c = 0; c < e->nch; c++)
            clamped += curv__kchain_clamped(e->ch[c], 0);
        curv__report_add(o, (double)clamped, "clamped");
    }
}

const struct curv__kblock *curv__kfac_est_block(const struct curv__kfac_est *e, size_t i)
{
    return i < e->n ? e->b[i] : NULL;
}
