/* SPDX-License-Identifier: MIT */
/*
 * The K-FAC estimator: one curvature block per layout block, and the
 * policies around them (thesis §6.5, §6.8, Alg. 7): exponentially decayed
 * factor estimates with ε = min(1 − 1/k, decay), k counting each block's
 * statistics updates; statistics due every cov_interval steps; inverses
 * refreshed at steps k <= 3 and k ≡ 0 (mod inv_interval); a block whose
 * statistics or inverse fail keeps its previous ones for up to
 * max_failures steps in a row. Everything is tentative until commit.
 *
 * The per-block work of a step (statistics and refresh, the forming of
 * explicit inverses, the multiply) runs as one task per block on the
 * caller's executor (curv/exec.h), largest blocks first so that a dynamic
 * schedule balances; each task writes only its own block, its status and
 * its sentence, and a serial pass then applies the failure policy in block
 * order, so the outcome is the serial one whatever the schedule.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec_int.h"
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
    size_t big;               /* largest block */
    double *work;             /* per worker: 2 * big */
    struct curv__kchain **ch; /* inverse = tridiag: the chains */
    size_t nch;
    unsigned char *member;     /* per block: its inverse is a chain's */
    curv_executor ex;          /* workers = 1, run = NULL: serial */
    size_t *order;             /* the blocks, largest first: the task order */
    curv_status *st;           /* per block: 2 statuses of the last parallel phase */
    unsigned char *did;        /* per block: which of them ran (bit 0, bit 1) */
    curv_error *errs;          /* per block: 2 sentences */
    unsigned char *defer;      /* per block: its refresh at this step is deferred (tentative) */
    struct curv_refresh *pend; /* a deferred refresh not yet applied (committed) */
    struct curv_refresh *made; /* the one this step defers (tentative) */
    int installed;             /* this step installed pend's decompositions (tentative) */
    /* A step's statistics folded after it (curv__kfac_est_settle): */
    int fold;                             /* 1: this step's (tentative), 2: pending */
    const struct curv__layer_in *fold_in; /* its layer inputs (borrowed) */
    size_t fold_n;                        /* their number */
    struct book *pre;                     /* per block: the books before that step */
    struct curv_refresh *fold_snap;       /* its deferred refresh, filled at the fold */
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
    curv__free(e->order);
    curv__free(e->st);
    curv__free(e->did);
    curv__free(e->errs);
    curv__free(e->defer);
    curv__kdefer_free(e->pend);
    curv__kdefer_free(e->made);
    curv__kdefer_free(e->fold_snap);
    curv__free(e->pre);
    curv__free(e);
}

/* The blocks by size, largest first, ties in layout order (insertion sort:
 * once, at creation). */
static void sort_blocks(struct curv__kfac_est *e)
{
    for (size_t i = 0; i < e->n; i++) {
        size_t j = i;
        const size_t sz = e->b[i]->info.size;
        while (j > 0 && e->b[e->order[j - 1]]->info.size < sz) {
            e->order[j] = e->order[j - 1];
            j--;
        }
        e->order[j] = i;
    }
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
    e->big = big;
    e->work = curv__tally_calloc(t, big, 2 * sizeof(double));
    e->member = curv__tally_calloc(t, e->n, 1);
    e->order = curv__tally_calloc(t, e->n, sizeof *e->order);
    e->st = curv__tally_calloc(t, e->n, 2 * sizeof *e->st);
    e->did = curv__tally_calloc(t, e->n, 1);
    e->errs = curv__tally_calloc(t, e->n, 2 * sizeof *e->errs);
    e->defer = curv__tally_calloc(t, e->n, 1);
    e->pre = curv__tally_calloc(t, e->n, sizeof *e->pre);
    e->ex = (curv_executor){.workers = 1};
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
    sort_blocks(e);
    *out = e;
    return CURV_OK;
}

int curv__kfac_stats_due(const struct curv__kfac_hyper *h, uint64_t k)
{
    return (k - 1) % (uint64_t)h->cov_interval == 0;
}

void curv__kfac_est_abort(struct curv__kfac_est *e)
{
    memset(e->defer, 0, e->n);
    curv__kdefer_free(e->made);
    e->made = NULL;
    e->installed = 0;
    if (e->fold == 1)
        e->fold = 0;
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

/* A block's failure of the last parallel phase, as if it had happened
 * here: its sentence into @err. */
static curv_status block_status(const struct curv__kfac_est *e, size_t i, int which,
                                curv_error *err)
{
    const curv_status st = e->st[2 * i + which];
    if (st != CURV_OK && err)
        *err = e->errs[2 * i + which];
    return st;
}

/* What an update task reads. */
struct upd {
    struct curv__kfac_est *e;
    const struct curv__step_args *a;
    int periodic;
    int deferrable; /* a periodic refresh of a block with one is deferred */
    int later;      /* the statistics are folded after the step */
    int fold_only;  /* the fold after the step: statistics only */
};

/* Block order[@t]: fold its statistics in, then refresh its inverse when
 * due (over the old factors when the statistics failed), or in the step
 * when its Cholesky inverses are for another damping (a settings change:
 * curv__kblock_stale); statuses to st, did bit 0 / bit 1 when each ran. */
static void update_task(void *arg, size_t t, unsigned worker)
{
    (void)worker;
    const struct upd *u = arg;
    struct curv__kfac_est *e = u->e;
    const size_t i = e->order[t];
    struct curv__kblock *b = e->b[i];
    e->did[i] = 0;
    if (!b->kron)
        return;
    const struct curv__layer_in *li = entry_for(u->a, i);
    uint64_t n_stats = e->cur[i].n_stats;
    if (li && !u->later) {
        e->st[2 * i] =
            b->vt->stats(b, li, curv__kfac_eps(n_stats + 1, e->h->decay), &e->errs[2 * i]);
        e->did[i] |= 1;
        n_stats += e->st[2 * i] == CURV_OK;
    }
    if (u->fold_only)
        return;
    const int stale = e->cur[i].inv_step && curv__kblock_stale(b);
    if ((!u->periodic && e->cur[i].inv_step && !stale) || n_stats == 0)
        return; /* n_stats = 0: only when its statistics failed on step 1 */
    if (u->deferrable && e->cur[i].inv_step && !stale) {
        e->defer[i] = 1;
        return;
    }
    e->st[2 * i + 1] = b->vt->refresh(b, &e->errs[2 * i + 1]);
    e->did[i] |= 2;
}

/* The statistics' outcome, in block order: counts and tolerated failures. */
static curv_status fold_stats(struct curv__kfac_est *e, const struct curv__step_args *a,
                              unsigned *failed, curv_error *err)
{
    for (size_t i = 0; i < e->n; i++) {
        if (!(e->did[i] & 1))
            continue;
        curv_status st = block_status(e, i, 0, err);
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

/* Refuse a step without statistics where they are due or a block has none. */
static curv_status check_stats(const struct curv__kfac_est *e, const struct curv__step_args *a,
                               uint64_t k, curv_error *err)
{
    const int due = curv__kfac_stats_due(e->h, k);
    for (size_t i = 0; i < e->n; i++) {
        const struct curv__kblock *b = e->b[i];
        if (b->kron && !entry_for(a, i) && (due || e->cur[i].n_stats == 0))
            return curv__fail(err, CURV_E_INVALID,
                              "kfac: step %llu needs layer statistics for block '%s' (%s; "
                              "cov_interval = %lld)",
                              (unsigned long long)k, b->info.name,
                              e->cur[i].n_stats ? "they are due" : "it has none yet",
                              (long long)e->h->cov_interval);
    }
    return CURV_OK;
}

/* Refreshes are deferred when max_staleness is set and below T3 (so that
 * one is applied before the next is due). */
static int deferring(const struct curv__kfac_hyper *h)
{
    return h->max_staleness > 0 && h->max_staleness < h->inv_interval;
}

/* Whether block @i takes the pending refresh of step @from: it is part
 * of it and no newer decomposition came since. */
static int takes_deferred(const struct curv__kfac_est *e, size_t i, uint64_t from)
{
    return curv__kdefer_has(e->pend, i) && !(e->did[i] & 2) && e->cur[i].inv_step <= from;
}

/* At or past its due step, the pending refresh becomes the tentative
 * decomposition of its blocks (statuses to st, did bit 1), unless a block
 * refreshed after its snapshot (in this step or an earlier one): a newer
 * decomposition wins. */
static void install_deferred(struct curv__kfac_est *e, uint64_t k)
{
    if (!e->pend || k < curv__kdefer_due(e->pend))
        return;
    const uint64_t from = curv__kdefer_from(e->pend);
    int any = 0;
    for (size_t i = 0; i < e->n; i++)
        any |= takes_deferred(e, i, from);
    if (any) /* what nobody computed yet, on the step's workers */
        curv__kdefer_ensure(e->pend, &e->ex);
    for (size_t i = 0; i < e->n; i++) {
        if (!takes_deferred(e, i, from))
            continue;
        e->st[2 * i + 1] = curv__kdefer_install(e->pend, i, e->b[i], &e->errs[2 * i + 1]);
        e->did[i] |= 2 | 4; /* 4: its factors are those of step `from` */
    }
    e->installed = 1;
}

/* The refreshes this step deferred, over the factors it will commit. */
static curv_status defer_refresh(struct curv__kfac_est *e, uint64_t k, curv_error *err)
{
    int any = 0;
    for (size_t i = 0; i < e->n; i++)
        any |= e->defer[i];
    if (!any)
        return CURV_OK;
    e->made = curv__kdefer_new(e->b, e->defer, e->n, k, k + (uint64_t)e->h->max_staleness,
                               e->h->pi_mode, e->h->damping, !e->fold);
    return e->made ? CURV_OK
                   : curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for the factors' snapshot");
}

/*
 * Whether step @k may leave its statistics for curv__kfac_est_settle: its
 * update must not read them (docs/NOTES.md, "K-FAC refreshes off the step
 * path"). So no refresh may run in the step, where it would decompose
 * them: every Kronecker block has an inverse (for the current damping),
 * it is past step 3, and a
 * periodic refresh due now is deferred (@deferrable); no tridiagonal
 * chain (its cross factors fold with the blocks'); and a failure of the
 * fold must be one the step would have tolerated, as the fold cannot
 * refuse the step any more.
 */
static int fold_later_ok(const struct curv__kfac_est *e, const struct curv__step_args *a,
                         uint64_t k, int periodic, int deferrable)
{
    if (!a->n_layers || k <= 3 || !deferring(e->h) || e->nch || (periodic && !deferrable))
        return 0;
    for (size_t i = 0; i < e->n; i++) {
        if (e->b[i]->kron && (!e->cur[i].inv_step || curv__kblock_stale(e->b[i])))
            return 0;
        if (entry_for(a, i) && e->cur[i].fails >= (uint64_t)e->h->max_failures)
            return 0;
    }
    return 1;
}

curv_status curv__kfac_est_update(struct curv__kfac_est *e, const struct curv__step_args *a,
                                  uint64_t k, int later, unsigned *failed, curv_error *err)
{
    /* A cancelled step (curv_opt_cancel) leaves its tentative factors,
     * decompositions and tridiagonal candidates behind: start from the
     * committed state only. */
    curv__kfac_est_abort(e);
    memcpy(e->nxt, e->cur, e->n * sizeof *e->nxt);
    *failed = 0;
    curv_status st = check_stats(e, a, k, err);
    if (st != CURV_OK)
        return st;
    const int periodic = k <= 3 || k % (uint64_t)e->h->inv_interval == 0;
    /* A refresh is never deferred while another awaits its step (possible
     * only after a PATCH of inv_interval): a caller may be computing that
     * one, so it stays until applied; this one runs in the step, and the
     * older one is then not applied to the blocks it refreshed. */
    const int free_slot = !e->pend || k >= curv__kdefer_due(e->pend);
    const int deferrable = periodic && k > 3 && deferring(e->h) && !e->nch && free_slot;
    struct upd u = {e, a, periodic, deferrable, 0, 0};
    if (later && fold_later_ok(e, a, k, periodic, deferrable)) {
        u.later = 1;
        e->fold = 1;
        e->fold_in = a->layers;
        e->fold_n = a->n_layers;
        memcpy(e->pre, e->cur, e->n * sizeof *e->pre);
    }
    curv__exec_run(&e->ex, e->n, update_task, &u);
    install_deferred(e, k);
    st = fold_stats(e, a, failed, err);
    if (st == CURV_OK)
        st = defer_refresh(e, k, err);
    for (size_t i = 0; st == CURV_OK && i < e->n; i++) {
        if (!(e->did[i] & 2))
            continue;
        st = block_status(e, i, 1, err);
        if (st == CURV_OK) /* the step of the factors decomposed: inverse_age counts from it */
            e->nxt[i].inv_step = (e->did[i] & 4) ? curv__kdefer_from(e->pend) : k;
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
 * adaptive mode, between changes of γ (γ-grid steps every T2, or with
 * gamma_rule = sqrt_lambda λ's updates every T1), whichever is shorter; 1
 * on a γ-grid step, where only the kept candidate's inverses live on. A
 * function of the settings alone, so a loaded optimizer decides as the
 * saved one did. */
static unsigned horizon(const struct curv__kfac_hyper *h, size_t n)
{
    if (n > 1)
        return 1;
    int64_t t = h->inv_interval;
    if (h->mode == CURV__KFAC_ADAPTIVE) {
        const int64_t g =
            h->gamma_rule == CURV__KFAC_GAMMA_SQRT_LAMBDA ? h->lambda_interval : h->gamma_interval;
        t = g < t ? g : t;
    }
    return t > 1000000 ? 1000000u : (unsigned)t;
}

struct prep {
    struct curv__kfac_est *e;
    const double *gammas;
    size_t n;
    unsigned horizon;
};

static void prepare_task(void *arg, size_t t, unsigned worker)
{
    (void)worker;
    const struct prep *p = arg;
    struct curv__kfac_est *e = p->e;
    const size_t i = e->order[t];
    struct curv__kblock *b = e->b[i];
    e->did[i] = 0;
    if (!b->vt->prepare || e->member[i])
        return;
    e->st[2 * i] = b->vt->prepare(b, p->gammas, p->n, p->horizon, &e->errs[2 * i]);
    e->did[i] = 1;
}

curv_status curv__kfac_est_prepare(struct curv__kfac_est *e, const double *gammas, size_t n,
                                   unsigned *failed, curv_error *err)
{
    struct prep p = {e, gammas, n, horizon(e->h, n)};
    curv__exec_run(&e->ex, e->n, prepare_task, &p);
    for (size_t i = 0; i < e->n; i++) {
        curv_status st = (e->did[i] & 1) ? block_status(e, i, 0, err) : CURV_OK;
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

struct app {
    struct curv__kfac_est *e;
    size_t c;
    double gamma;
    const double *g;
    double *u;
};

static void apply_task(void *arg, size_t t, unsigned worker)
{
    const struct app *p = arg;
    const struct curv__kfac_est *e = p->e;
    const size_t i = e->order[t];
    const struct curv__kblock *b = e->b[i];
    const size_t off = b->info.offset;
    if (!e->member[i])
        b->vt->apply(b, p->c, p->g + off, p->gamma, p->u + off, e->work + worker * 2 * e->big);
}

void curv__kfac_est_apply(struct curv__kfac_est *e, size_t c, double gamma, const double *g,
                          double *u)
{
    struct app p = {e, c, gamma, g, u};
    curv__exec_run(&e->ex, e->n, apply_task, &p);
    for (size_t k = 0; k < e->nch; k++)
        curv__kchain_apply(e->ch[k], c, g, u);
}

double curv__kfac_est_dof(const struct curv__kfac_est *e, double gamma)
{
    double t = 0;
    for (size_t i = 0; i < e->n; i++)
        t += curv__kblock_dof(e->b[i], gamma);
    return t;
}

void curv__kfac_est_commit(struct curv__kfac_est *e, size_t c, const double *g, uint64_t k)
{
    (void)k;
    for (size_t i = 0; i < e->n; i++)
        e->b[i]->vt->commit(e->b[i], c, g + e->b[i]->info.offset);
    for (size_t i = 0; i < e->nch; i++)
        curv__kchain_commit(e->ch[i], c);
    memcpy(e->cur, e->nxt, e->n * sizeof *e->cur);
    if (e->installed || e->made) {
        curv__kdefer_free(e->pend);
        e->pend = e->fold ? NULL : e->made;
        e->fold_snap = e->fold ? e->made : NULL;
    }
    if (e->fold)
        e->fold = 2;
    e->made = NULL;
    e->installed = 0;
    memset(e->defer, 0, e->n);
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
    if (e->h->max_staleness > 0) /* fixed for the optimizer's life */
        curv__kdefer_save(e->pend, e->n, w);
}

curv_status curv__kfac_est_load(struct curv__kfac_est *e, struct curv__reader *r, uint64_t steps,
                                curv_error *err)
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
    if (e->h->max_staleness <= 0 || r->bad)
        return CURV_OK;
    int nomem = 0;
    e->pend = curv__kdefer_load(r, e->b, e->n, e->h->pi_mode, e->h->damping, steps,
                                e->h->max_staleness, &nomem);
    return nomem ? curv__fail(err, CURV_E_NOMEM, "kfac: out of memory for a deferred refresh")
                 : CURV_OK;
}

/*
 * The books after a fold, as the step would have left them had it folded
 * its statistics itself (curv__kfac_est_update): a block whose statistics
 * folded counts them and its failures in a row restart at 0 unless its
 * refresh failed in the step (cur.fails > pre.fails: counted already);
 * one whose statistics failed keeps its factors and counts the failure
 * once per step. Returns the failures counted here.
 */
unsigned curv__kfac_est_settle(struct curv__kfac_est *e)
{
    if (e->fold != 2)
        return 0;
    const struct curv__step_args a = {.layers = e->fold_in, .n_layers = e->fold_n};
    struct upd u = {.e = e, .a = &a, .fold_only = 1};
    curv__exec_run(&e->ex, e->n, update_task, &u);
    unsigned failed = 0;
    for (size_t i = 0; i < e->n; i++) {
        if (!(e->did[i] & 1))
            continue;
        struct book *bk = &e->cur[i];
        const int counted = bk->fails > e->pre[i].fails;
        if (e->st[2 * i] == CURV_OK) {
            curv__kblock_take_factors(e->b[i]);
            bk->n_stats++;
            bk->fails = counted ? bk->fails : 0;
        } else {
            e->b[i]->vt->abort(e->b[i]); /* an allocation may have failed half way */
            if (!counted) {
                bk->fails = e->pre[i].fails + 1;
                failed++;
            }
        }
    }
    if (e->fold_snap) {
        curv__kdefer_fill(e->fold_snap);
        e->pend = e->fold_snap;
        e->fold_snap = NULL;
    }
    e->fold = 0;
    e->fold_in = NULL;
    e->fold_n = 0;
    return failed;
}

int curv__kfac_est_fold_pending(const struct curv__kfac_est *e)
{
    return e->fold == 2;
}

size_t curv__kfac_est_bytes(const struct curv__kfac_est *e)
{
    size_t total = sizeof *e + e->n * (sizeof *e->b + 3 * sizeof *e->cur + 1 + sizeof *e->order +
                                       2 * sizeof *e->st + 1 + 2 * sizeof *e->errs);
    for (size_t i = 0; i < e->n; i++)
        total += e->b[i]->vt->bytes(e->b[i]);
    for (size_t c = 0; c < e->nch; c++)
        total += curv__kchain_bytes(e->ch[c]);
    total += curv__kdefer_bytes(e->pend) + curv__kdefer_bytes(e->made) +
             curv__kdefer_bytes(e->fold_snap);
    return total + (size_t)e->ex.workers * 2 * e->big * sizeof(double);
}

curv_status curv__kfac_est_set_executor(struct curv__kfac_est *e, const curv_executor *ex,
                                        curv_error *err)
{
    const curv_executor serial = {.workers = 1};
    const curv_executor *x = ex ? ex : &serial;
    double *work = curv__calloc_n(e->big, (size_t)x->workers * 2 * sizeof(double));
    if (!work)
        return curv__fail(err, CURV_E_NOMEM,
                          "kfac: out of memory for the scratch of %u workers (%zu doubles each)",
                          x->workers, 2 * e->big);
    curv__free(e->work);
    e->work = work;
    e->ex = *x;
    return CURV_OK;
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

size_t curv__kfac_est_sum_overflow(const struct curv__kfac_est *e, const double *g)
{
    for (size_t i = 0; i < e->n; i++) {
        const size_t at = curv__kblock_sum_overflow(e->b[i], g + e->b[i]->info.offset);
        if (at != SIZE_MAX)
            return e->b[i]->info.offset + at;
    }
    return SIZE_MAX;
}

struct curv_refresh *curv__kfac_est_pending(struct curv__kfac_est *e)
{
    return e->pend;
}

const struct curv__kblock *curv__kfac_est_block(const struct curv__kfac_est *e, size_t i)
{
    return i < e->n ? e->b[i] : NULL;
}
