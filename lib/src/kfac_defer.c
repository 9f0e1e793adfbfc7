/* SPDX-License-Identifier: MIT */
/*
 * K-FAC refreshes off the step path (max_staleness = s >= 1; docs/NOTES.md,
 * "K-FAC refreshes off the step path"). A periodic refresh due at step k
 * is not computed in step k: the step commits, and the factors as
 * committed are copied into a curv_refresh. Its decompositions may be
 * computed on any thread (curv_refresh_run) while steps k+1 ... k+s-1 use
 * the previous ones, and step k+s installs them as if it had refreshed
 * itself, computing them first when nobody has. The refresh applied and
 * the step applying it depend on k and s only, never on timing, so a run
 * is bit for bit the same whoever computes the decompositions and when,
 * and a state saved while one is pending (it holds the snapshots) loads
 * and continues the same way.
 */
#include <stdlib.h>
#include <string.h>

#include "curv/exec.h"
#include "exec_int.h"
#include "kfac_int.h"

struct defer_block {
    double *FA, *FG;     /* the committed factors at step `from` */
    struct curv__keig x; /* their decomposition once computed */
    int ready;           /* x (or st) holds the outcome */
    curv_status st;
    curv_error err;
};

struct curv_refresh {
    uint64_t from, due;
    int pi_mode;  /* at the snapshot: run reads nothing of the optimizer's */
    double gamma; /* the damping of Cholesky sides' inverses, also */
    int claimed;
    size_t n;
    const struct curv__kblock **b; /* shapes only (fixed for good) */
    struct defer_block *d;         /* per layout block; FA NULL: not part */
};

void curv__kdefer_free(struct curv_refresh *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        curv__free(r->d[i].FA);
        curv__free(r->d[i].FG);
        curv__keig_free(&r->d[i].x);
    }
    curv__free(r->d);
    curv__free(r->b);
    curv__free(r);
}

static struct curv_refresh *alloc_refresh(struct curv__kblock *const *b, size_t n)
{
    struct curv_refresh *r = curv__calloc_n(1, sizeof *r);
    if (!r)
        return NULL;
    r->n = n;
    r->d = curv__calloc_n(n, sizeof *r->d);
    r->b = curv__calloc_n(n, sizeof *r->b);
    if (!r->d || !r->b) {
        curv__kdefer_free(r);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        r->b[i] = b[i];
    return r;
}

/* Room for block @i's snapshots. */
static int alloc_snap(struct curv_refresh *r, size_t i)
{
    const struct curv__kblock *b = r->b[i];
    r->d[i].FA = curv__calloc_n(curv__kside_len(&b->A), sizeof(double));
    r->d[i].FG = curv__calloc_n(curv__kside_len(&b->G), sizeof(double));
    return r->d[i].FA && r->d[i].FG;
}

struct curv_refresh *curv__kdefer_new(struct curv__kblock *const *b, const unsigned char *which,
                                      size_t n, uint64_t from, uint64_t due, int pi_mode,
                                      double gamma, int fill)
{
    struct curv_refresh *r = alloc_refresh(b, n);
    if (!r)
        return NULL;
    r->from = from;
    r->due = due;
    r->pi_mode = pi_mode;
    r->gamma = gamma;
    for (size_t i = 0; i < n; i++) {
        if (which[i] && !alloc_snap(r, i)) {
            curv__kdefer_free(r);
            return NULL;
        }
    }
    if (fill)
        curv__kdefer_fill(r);
    return r;
}

void curv__kdefer_fill(struct curv_refresh *r)
{
    for (size_t i = 0; i < r->n; i++) {
        const struct curv__kblock *b = r->b[i];
        if (!r->d[i].FA)
            continue;
        memcpy(r->d[i].FA, curv__kside_F(&b->A), curv__kside_len(&b->A) * sizeof(double));
        memcpy(r->d[i].FG, curv__kside_F(&b->G), curv__kside_len(&b->G) * sizeof(double));
    }
}

uint64_t curv__kdefer_due(const struct curv_refresh *r)
{
    return r->due;
}

uint64_t curv__kdefer_from(const struct curv_refresh *r)
{
    return r->from;
}

int curv__kdefer_has(const struct curv_refresh *r, size_t i)
{
    return r->d[i].FA != NULL;
}

/* Block @i's decomposition, unless it takes no part or has one: blocks
 * write only their own defer_block, so tasks need no lock. */
static void ensure_task(void *arg, size_t i, unsigned worker)
{
    (void)worker;
    struct curv_refresh *r = arg;
    struct defer_block *d = &r->d[i];
    if (!d->FA || d->ready)
        return;
    curv_error_clear(&d->err);
    d->st = curv__kblock_decompose(r->b[i], d->FA, d->FG, r->pi_mode, r->gamma, &d->x, &d->err);
    d->ready = 1;
}

void curv__kdefer_ensure(struct curv_refresh *r, const curv_executor *ex)
{
    curv__exec_run(ex, r->n, ensure_task, r);
}

curv_status curv__kdefer_install(struct curv_refresh *r, size_t i, struct curv__kblock *b,
                                 curv_error *err)
{
    struct defer_block *d = &r->d[i];
    ensure_task(r, i, 0);
    curv_status st = d->st;
    if (st == CURV_OK)
        curv__kblock_install(b, &d->x);
    else if (err)
        *err = d->err;
    d->ready = 0; /* taken: a retried step (this one aborted) computes it again */
    return st;
}

void curv__kdefer_save(const struct curv_refresh *r, size_t n, struct curv__writer *w)
{
    curv__w_volatile(w);
    curv__w_u64(w, r ? r->from : 0);
    curv__w_u64(w, r ? r->due : 0);
    for (size_t i = 0; i < n; i++)
        curv__w_u32(w, r && r->d[i].FA);
    for (size_t i = 0; r && i < n; i++) {
        if (!r->d[i].FA)
            continue;
        curv__w_part(w, curv__stamp(CURV__STAMP_KFAC_DEFER, r->from));
        curv__w_f64s(w, r->d[i].FA, curv__kside_len(&r->b[i]->A));
        curv__w_f64s(w, r->d[i].FG, curv__kside_len(&r->b[i]->G));
    }
}

/* The damping of a loaded snapshot is the loaded settings' (not saved):
 * a Cholesky block whose damping changed after the snapshot refreshes at
 * its next step (curv__kblock_stale), which then wins over the snapshot. */
struct curv_refresh *curv__kdefer_load(struct curv__reader *rd, struct curv__kblock *const *b,
                                       size_t n, int pi_mode, double gamma, uint64_t steps,
                                       int64_t max_staleness, int *nomem)
{
    *nomem = 0;
    const uint64_t from = curv__r_u64(rd), due = curv__r_u64(rd);
    struct curv_refresh *r = NULL;
    if (from &&
        !(due > from && due - from <= (uint64_t)max_staleness && due > steps && from <= steps)) {
        rd->bad = 1;
        return NULL;
    }
    if (from && !(r = alloc_refresh(b, n))) {
        *nomem = 1;
        return NULL;
    }
    size_t parts = 0;
    for (size_t i = 0; i < n && !rd->bad; i++) {
        const uint32_t has = curv__r_u32(rd);
        if (has > 1 || (has && (!from || !b[i]->kron))) {
            rd->bad = 1;
        } else if (has) {
            if (!alloc_snap(r, i)) {
                *nomem = 1;
                break;
            }
            parts++;
        }
    }
    for (size_t i = 0; r && i < n && !rd->bad && !*nomem; i++) {
        if (!r->d[i].FA)
            continue;
        const size_t la = curv__kside_len(&b[i]->A), lg = curv__kside_len(&b[i]->G);
        curv__r_f64s(rd, r->d[i].FA, la);
        curv__r_f64s(rd, r->d[i].FG, lg);
        if (curv__first_nonfinite(r->d[i].FA, la) < la ||
            curv__first_nonfinite(r->d[i].FG, lg) < lg)
            rd->bad = 1;
    }
    if (from && !parts)
        rd->bad = 1;
    if (rd->bad || *nomem) {
        curv__kdefer_free(r);
        return NULL;
    }
    if (r) {
        r->from = from;
        r->due = due;
        r->pi_mode = pi_mode;
        r->gamma = gamma;
    }
    return r;
}

size_t curv__kdefer_bytes(const struct curv_refresh *r)
{
    if (!r)
        return 0;
    size_t total = sizeof *r + r->n * (sizeof *r->d + sizeof *r->b);
    for (size_t i = 0; i < r->n; i++) {
        if (!r->d[i].FA)
            continue;
        const struct curv__kblock *b = r->b[i];
        const size_t la = curv__kside_len(&b->A), lg = curv__kside_len(&b->G);
        /* the snapshots and, once computed, Q, w (and Qf) of each side, or
         * a Cholesky side's P (and Pf) */
        total += 2 * (la + lg) * sizeof(double) +
                 ((b->A.chol ? 0 : b->A.n) + (b->G.chol ? 0 : b->G.n)) * sizeof(double);
        if (b->A.f32)
            total += (la + lg) * sizeof(float);
    }
    return total;
}

/* ---- the public calls (curv/exec.h) ------------------------------------ */

int curv_refresh_claim(curv_refresh *r)
{
    if (!r || r->claimed)
        return 0;
    r->claimed = 1;
    return 1;
}

void curv_refresh_run(curv_refresh *r)
{
    curv_refresh_run_on(r, NULL);
}

void curv_refresh_run_on(curv_refresh *r, const curv_executor *ex)
{
    if (r) /* an executor curv_opt_set_executor would refuse: serially */
        curv__kdefer_ensure(r, ex && ex->run && ex->workers ? ex : NULL);
}

uint64_t curv_refresh_due(const curv_refresh *r)
{
    return r ? r->due : 0;
}
