/* SPDX-License-Identifier: MIT */
/*
 * MBAG - mini-block adaptive gradient (Lee, "MBAG: A Scalable Mini-Block
 * Adaptive Gradient Method for Deep Neural Networks"; ALGORITHMS.md §2).
 * Full-matrix AdaGrad restricted to small τ x τ diagonal blocks ("groups",
 * eq. 6), three variants sharing all code:
 *  - mbag      Alg. 1: H = G^-1 kept by Sherman–Morrison (eq. 4), init I/λ;
 *              P = H^1/2 by Newton–Schulz (eq. 5, X output) every T_sqr steps;
 *  - mbag_ema  Alg. 2: G <- αG + (1-α)gg^T, init λI; P = G^-1/2 from the
 *              Newton–Schulz Y output (ALGORITHMS 2.4);
 *  - mbag_n    MBAG-N (§IV-B end): preconditions with H itself, no square root.
 * All: v <- βv + P g (Alg. 1 line 11), Δ = -η_t v (line 12). Before the first
 * refresh P = λ^-1/2 I = H_0^1/2 (ALGORITHMS 2.3 [AMBIGUOUS]).
 *
 * Grouping (§IV-C, ALGORITHMS 2.2): in every layout block the weight part
 * (the row-major matrix without its bias column, i.e. vec(W^T) for dense)
 * is cut into consecutive chunks of τ (dense, vector), of κ² = kh*kw for
 * conv2d (one group per (out, in) filter pair) or of conv_tau; the biases
 * form their own chunks of τ. The last chunk of a run may be smaller. With
 * biases, weights and biases interleave in the flat vector, so the state
 * lives in an internal order (perm: internal position -> flat index) in
 * which every group is contiguous.
 *
 * Failure safety: a step runs in two passes. Pass 1 (prepare) computes every
 * quantity that could overflow into scratch and checks it; pass 2 (commit)
 * then mutates the state and cannot fail. On refresh steps the new P is not
 * known in pass 1, so pass 1 checks the update against a bound on ‖P_new‖
 * and pass 2 enforces that bound, keeping the old P for a group whose
 * Newton–Schulz result is non-finite or exceeds it (in exact arithmetic it
 * cannot; it takes round-off that has made H or G indefinite, whose negative
 * eigenvalues Newton–Schulz amplifies, ALGORITHMS 2.6 b).
 */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "linalg.h"
#include "opt_int.h"

/* Largest magnitude pass 1 lets through; the margin keeps sums finite. */
#define MBAG_BIG (DBL_MAX / 4)
/* Tag and version of the saved state section. */
#define MBAG_TAG 0x4741424du /* "MBAG" little-endian */
#define MBAG_VERSION 1u

struct mbag_hyper {
    struct curv__sched sched;
    double lambda, beta, alpha, delta;
    int64_t t_sqr, t_ns, tau, conv_tau, sym_every;
};

/* ---- hyperparameter tables (one per kind, shared entries by macro) ----
 * η: the paper does not report its step size (§VI); the default 0.01 is
 * AdaGrad's customary one (P g has AdaGrad's scale once G has grown). */

#define MBAG_HS struct mbag_hyper
#define MBAG_DIM_MAX ((double)CURV_LAYOUT_MAX_DIM)

#define MBAG_COMMON_PARAMS                                                                            \
    CURV__SCHED_PARAMS(MBAG_HS, sched, 0.01, CURV__SCHED_LR_DOC),                                     \
        CURV__REAL(MBAG_HS, lambda, "lambda", 0.01, 1e-12, 1e12,                                      \
                   "λ: G_0 = λI, H_0 = I/λ (MBAG Alg. 1 line 1, Alg. 2 line 1); the paper uses "   \
                   "0.01 for CIFAR-10 and 0.1 for the autoencoders (§VI)"),                           \
        CURV__REAL(MBAG_HS, beta, "beta", 0.9, 0, 1,                                                  \
                   "momentum β, heavy-ball v <- βv + Pg without a (1-β) factor (Alg. 1 line 11); " \
                   "0.9 in every run of §VI"),                                                        \
        CURV__INT(MBAG_HS, tau, "tau", 32, 1, MBAG_DIM_MAX,                                           \
                  "group size τ for dense and vector weights and for every block's biases "          \
                  "(§IV-C: 16 or 32 work well; 32 in §VI-A); the last group of a run is smaller "   \
                  "when τ does not divide it"),                                                       \
        CURV__INT(MBAG_HS, conv_tau, "conv_tau", 0, 0, MBAG_DIM_MAX,                                  \
                  "conv2d weight group size: 0 = κ² = kh*kw, one group per (out, in) filter "       \
                  "pair (§IV-C); otherwise chunks of this size of the row-major weights")

#define MBAG_ROOT_PARAMS                                                                           \
    CURV__INT(MBAG_HS, t_sqr, "t_sqr", 50, 1, 1e15,                                                \
              "T_sqr: P is recomputed when t ≡ 0 (mod T_sqr) and held in between (Alg. 1 "       \
              "line 7); 50 in §VI"),                                                               \
        CURV__INT(MBAG_HS, t_ns, "t_ns", 5, 1, 100,                                                \
                  "T_NS Newton–Schulz iterations (eq. 5); 5 for CIFAR-10, 7 for the "            \
                  "autoencoders (§VI). Eigenvalues of A/‖A‖_F below about (4/9)^T_NS are "    \
                  "under-resolved (ALGORITHMS 2.6 b)")

#define MBAG_SYM_PARAM                                                                             \
    CURV__INT(MBAG_HS, sym_every, "symmetrize_every", 100, 0, 1e15,                                \
              "H <- (H + H^T)/2 every this many steps against round-off drift of the "             \
              "Sherman–Morrison updates (ALGORITHMS 2.6 a, not in the paper); 0 = never")

static const struct curv__param MBAG_PARAMS[] = {MBAG_COMMON_PARAMS, MBAG_ROOT_PARAMS,
                                                 MBAG_SYM_PARAM};

static const struct curv__param MBAG_EMA_PARAMS[] = {
    MBAG_COMMON_PARAMS, MBAG_ROOT_PARAMS,
    CURV__REAL(MBAG_HS, alpha, "alpha", 0.99, 0, 1,
               "EMA decay α of G <- αG + (1-α)gg^T (Alg. 2 line 6); the paper reports no value, "
               "0.99 is this library's choice (ALGORITHMS 2.4)"),
    CURV__REAL(MBAG_HS, delta, "delta", 1e-12, 0, 1e6,
               "safeguard δ: Newton–Schulz runs on G + δI, which bounds P by about δ^-1/2 once "
               "λα^t has decayed (ALGORITHMS 2.4, not in the paper); 0 = the paper's Alg. 2")};

static const struct curv__param MBAG_N_PARAMS[] = {MBAG_COMMON_PARAMS, MBAG_SYM_PARAM};

/* The grouping (and so every state array) depends on these. */
#define MBAG_FIXED ((const char *const[]){"tau", "conv_tau", NULL})

/* ---- state ---- */

enum mbag_variant { MBAG_SM = 0, MBAG_EMA = 1, MBAG_N = 2 };

struct mbag_group {
    size_t pos; /* first internal position */
    size_t n;   /* group size τ_π */
    size_t mat; /* offset of its n x n matrices in the pools */
};

struct mbag {
    enum mbag_variant var;
    size_t d, ngroups, nmat, nmax;
    struct mbag_group *grp;
    size_t *perm; /* internal position -> flat index; NULL = identity */
    double *A;    /* H (mbag, mbag_n) or G (mbag_ema), nmat */
    double *P;    /* square-root preconditioner, nmat; NULL for mbag_n */
    double *v;    /* momentum, internal order, d */
    /* scratch, not state */
    double *g;   /* gradient in internal order, d */
    double *w;   /* H g (mbag, mbag_n), d */
    double *vn;  /* tentative new momentum, d */
    double *aux; /* per group: S–M denominator, or max diag of G + δI */
    double *ns;  /* Newton–Schulz: T, X, Y, 3 work = 6 nmax^2 */
};

/* What a step needs besides the state. */
struct mbag_ctx {
    const struct mbag_hyper *h;
    const curv_opt *o;
    double lr;
    int refresh, sym;
};

/* ---- small dense kernels on one group ---- */

/* max |x_i|; a NaN anywhere makes the result NaN, so that the callers'
 * `!(absmax(..) <= bound)` checks reject it. */
static double absmax(const double *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double a = fabs(x[i]);
        if (a > m || a != a)
            m = a;
    }
    return m;
}

/* y = A x for n x n row-major A. */
static void matvec(size_t n, const double *A, const double *x, double *y)
{
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        for (size_t c = 0; c < n; c++)
            s += A[r * n + c] * x[c];
        y[r] = s;
    }
}

/* Largest absolute row sum ‖A‖_∞; NaN propagates like absmax. */
static double rowsum_max(size_t n, const double *A)
{
    double m = 0;
    for (size_t r = 0; r < n; r++) {
        double s = 0;
        for (size_t c = 0; c < n; c++)
            s += fabs(A[r * n + c]);
        if (s > m || s != s)
            m = s;
    }
    return m;
}

/* ---- grouping ---- */

/* Chunk size of a block's weight part (ALGORITHMS 2.2). */
static size_t weight_chunk(const curv_block_info *b, const struct mbag_hyper *h)
{
    if (b->kind == CURV_BLOCK_CONV2D)
        return h->conv_tau > 0 ? (size_t)h->conv_tau : b->kh * b->kw;
    return (size_t)h->tau;
}

/* Account for a run of @len entries cut into chunks of @cs: groups, Σ n²
 * and the largest n. Returns 0 when a size overflows. */
static int plan_run(struct mbag *m, size_t len, size_t cs)
{
    if (len == 0)
        return 1;
    if (cs > len)
        cs = len;
    size_t full = len / cs, rem = len % cs, sq, tot;
    if (!curv__mul_ok(cs, cs, &sq) || !curv__mul_ok(full, sq, &tot) || tot > SIZE_MAX - rem * rem ||
        m->nmat > SIZE_MAX - (tot + rem * rem))
        return 0;
    m->nmat += tot + rem * rem;
    m->ngroups += full + (rem != 0);
    if (cs > m->nmax)
        m->nmax = cs;
    /* Two pools of nmat doubles and the 6 nmax^2 Newton–Schulz scratch. */
    size_t bytes;
    return curv__mul_ok(m->nmat, 2 * sizeof(double), &bytes) &&
           curv__mul_ok(m->nmax, m->nmax, &sq) && curv__mul_ok(sq, 6 * sizeof(double), &bytes);
}

static void fill_run(struct mbag *m, size_t *gi, size_t *pos, size_t *mat, size_t len, size_t cs)
{
    if (cs > len)
        cs = len;
    for (size_t k = 0; k < len; k += cs) {
        size_t n = len - k < cs ? len - k : cs;
        m->grp[*gi] = (struct mbag_group){*pos, n, *mat};
        (*gi)++;
        *pos += n;
        *mat += n * n;
    }
}

/* Internal order of a block: its weights row by row, then its biases. */
static void fill_perm(size_t *perm, const curv_block_info *b)
{
    size_t k = b->offset;
    for (size_t r = 0; r < b->rows; r++)
        for (size_t c = 0; c < b->n_in; c++)
            perm[k++] = b->offset + r * b->cols + c;
    for (size_t r = 0; b->has_bias && r < b->rows; r++)
        perm[k++] = b->offset + r * b->cols + b->n_in;
}

/* Count groups and pool sizes; CURV_E_RANGE names the block that overflows. */
static curv_status plan_groups(const curv_opt *o, struct mbag *m, int *any_bias, curv_error *err)
{
    const struct mbag_hyper *h = o->hyper;
    size_t nb = curv_layout_nblocks(o->layout);
    for (size_t b = 0; b < nb; b++) {
        curv_block_info bi;
        if (curv_layout_block(o->layout, b, &bi) != CURV_OK)
            return curv__fail(err, CURV_E_INVALID, "%s: cannot read layout block %zu",
                              curv_opt_kind_name(o->kind), b);
        *any_bias |= bi.has_bias != 0;
        size_t cs = weight_chunk(&bi, h);
        if (!plan_run(m, bi.rows * bi.n_in, cs) ||
            !plan_run(m, bi.has_bias ? bi.rows : 0, (size_t)h->tau))
            return curv__fail(err, CURV_E_RANGE,
                              "%s: block '%s' (%zu x %zu): the %zu x %zu group matrices "
                              "overflow the address space (tau=%lld, conv_tau=%lld)",
                              curv_opt_kind_name(o->kind), bi.name, bi.rows, bi.cols, cs, cs,
                              (long long)h->tau, (long long)h->conv_tau);
    }
    return CURV_OK;
}

static void fill_groups(const curv_opt *o, struct mbag *m)
{
    const struct mbag_hyper *h = o->hyper;
    size_t gi = 0, pos = 0, mat = 0, nb = curv_layout_nblocks(o->layout);
    for (size_t b = 0; b < nb; b++) {
        curv_block_info bi;
        curv_layout_block(o->layout, b, &bi);
        fill_run(m, &gi, &pos, &mat, bi.rows * bi.n_in, weight_chunk(&bi, h));
        fill_run(m, &gi, &pos, &mat, bi.has_bias ? bi.rows : 0, (size_t)h->tau);
        if (m->perm)
            fill_perm(m->perm, &bi);
    }
}

/* ---- lifecycle ---- */

static void mbag_free(struct mbag *m)
{
    if (!m)
        return;
    curv__free(m->grp);
    curv__free(m->perm);
    curv__free(m->A);
    curv__free(m->P);
    curv__free(m->v);
    curv__free(m->g);
    curv__free(m->w);
    curv__free(m->vn);
    curv__free(m->aux);
    curv__free(m->ns);
    curv__free(m);
}

static void mbag_fini(curv_opt *o)
{
    mbag_free(o->impl);
    o->impl = NULL;
}

static void mbag_alloc(struct mbag *m, int any_bias, struct curv__tally *t)
{
    int root = m->var != MBAG_N, sm = m->var != MBAG_EMA;
    m->grp = curv__tally_calloc(t, m->ngroups, sizeof *m->grp);
    m->perm = any_bias ? curv__tally_calloc(t, m->d, sizeof *m->perm) : NULL;
    m->A = curv__tally_calloc(t, m->nmat, sizeof(double));
    m->P = root ? curv__tally_calloc(t, m->nmat, sizeof(double)) : NULL;
    m->v = curv__tally_calloc(t, m->d, sizeof(double));
    m->g = curv__tally_calloc(t, m->d, sizeof(double));
    m->w = sm ? curv__tally_calloc(t, m->d, sizeof(double)) : NULL;
    m->vn = curv__tally_calloc(t, m->d, sizeof(double));
    m->aux = curv__tally_calloc(t, m->ngroups, sizeof(double));
    m->ns = root ? curv__tally_calloc(t, 6 * m->nmax * m->nmax, sizeof(double)) : NULL;
}

/* H_0 = I/λ (Alg. 1 line 1) or G_0 = λI (Alg. 2 line 1); P_0 = λ^-1/2 I. */
static void mbag_reset(struct mbag *m, double lambda)
{
    double a0 = m->var == MBAG_EMA ? lambda : 1.0 / lambda, p0 = 1.0 / sqrt(lambda);
    for (size_t i = 0; i < m->ngroups; i++) {
        const struct mbag_group *gr = &m->grp[i];
        for (size_t k = 0; k < gr->n; k++) {
            m->A[gr->mat + k * gr->n + k] = a0;
            if (m->P)
                m->P[gr->mat + k * gr->n + k] = p0;
        }
    }
}

static curv_status mbag_init(curv_opt *o, enum mbag_variant var, struct curv__tally *t,
                             curv_error *err)
{
    const char *kname = curv_opt_kind_name(o->kind);
    struct mbag scratch, *m = curv__tally_obj(t, &scratch, sizeof *m);
    if (!m)
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory", kname);
    m->var = var;
    m->d = curv_layout_dim(o->layout);
    int any_bias = 0;
    curv_status st = plan_groups(o, m, &any_bias, err);
    if (st == CURV_OK)
        mbag_alloc(m, any_bias, t);
    if (!t->alloc)
        return st;
    if (st == CURV_OK && t->failed)
        st = curv__fail(err, CURV_E_NOMEM,
                        "%s: out of memory for %zu groups (%zu matrix entries, d = %zu)", kname,
                        m->ngroups, m->nmat, m->d);
    if (st != CURV_OK) {
        mbag_free(m);
        return st;
    }
    fill_groups(o, m);
    mbag_reset(m, ((const struct mbag_hyper *)o->hyper)->lambda);
    o->impl = m;
    return CURV_OK;
}

static curv_status mbag_init_sm(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    return mbag_init(o, MBAG_SM, t, err);
}

static curv_status mbag_init_ema(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    return mbag_init(o, MBAG_EMA, t, err);
}

static curv_status mbag_init_n(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    return mbag_init(o, MBAG_N, t, err);
}

/* ---- pass 1: prepare (no state changes) ---- */

/* mbag, mbag_n: w = H g and the Sherman–Morrison denominator of eq. 4.
 * In exact arithmetic 1 + g^T H g >= 1; clamping it there guards against
 * round-off (H slightly indefinite) and never changes an exact result.
 * The new H must keep |H_ij| <= 2/λ, which load checks: with a huge g the
 * subtraction cancels catastrophically (seen: 5e168 at g = 1e100), so the
 * commit's own arithmetic is run here first. */
static const char *prep_sm(struct mbag *m, const struct mbag_hyper *h, size_t i, const double *g)
{
    const struct mbag_group *gr = &m->grp[i];
    size_t n = gr->n;
    double *w = m->w + gr->pos, gw = 0;
    matvec(n, m->A + gr->mat, g, w);
    for (size_t k = 0; k < n; k++)
        gw += g[k] * w[k];
    double den = 1.0 + gw;
    if (!isfinite(den))
        return "the Sherman-Morrison denominator 1 + g'Hg overflows";
    if (den < 1.0)
        den = 1.0;
    double wm = absmax(w, n);
    if (!(wm * (wm / den) <= MBAG_BIG))
        return "the Sherman-Morrison correction Hgg'H/(1 + g'Hg) overflows";
    const double *A = m->A + gr->mat;
    for (size_t r = 0; r < n; r++) {
        double wr = w[r] / den;
        for (size_t c = 0; c < n; c++)
            if (!(fabs(A[r * n + c] - wr * w[c]) <= 2.0 / h->lambda))
                return "the Sherman-Morrison update loses H <= I/lambda to round-off";
    }
    m->aux[i] = den;
    return NULL;
}

/* mbag_ema: G_new = αG + (1-α)gg^T stays finite (|G_ij| <= 2 max diag for
 * the PSD G that load validates); keep max diag(G_new) + δ for the bound. */
static const char *prep_ema(struct mbag *m, const struct mbag_hyper *h, size_t i, const double *g,
                            double gmax)
{
    const struct mbag_group *gr = &m->grp[i];
    const double *G = m->A + gr->mat;
    double a = h->alpha, dold = 0, dnew = 0;
    for (size_t k = 0; k < gr->n; k++) {
        double gkk = G[k * gr->n + k];
        dold = fmax(dold, gkk);
        dnew = fmax(dnew, a * gkk + (1 - a) * (g[k] * g[k]));
    }
    if (!(gmax * gmax <= MBAG_BIG && dold <= MBAG_BIG))
        return "G <- aG + (1-a)gg' overflows";
    m->aux[i] = dnew + h->delta;
    return NULL;
}

/* Bound on ‖P_new‖_∞ after a refresh. mbag: ‖H^1/2‖_2 <= λ^-1/2 since
 * H ⪯ I/λ, and the Newton–Schulz X iterate never exceeds the true root.
 * mbag_ema: ‖Y_N‖_2 <= 1.5^T_NS (each step multiplies by (3 - xy)/2 <= 3/2)
 * and ‖G + δI‖_F >= its largest diagonal entry. Factor 2 for round-off. */
static double p_bound(const struct mbag *m, const struct mbag_ctx *cx, size_t i)
{
    double n = (double)m->grp[i].n;
    if (m->var == MBAG_SM)
        return 2 * sqrt(n / cx->h->lambda);
    if (!(m->aux[i] > 0))
        return 0; /* G + δI = 0: the refresh keeps the old P */
    return 2 * sqrt(n) * pow(1.5, (double)cx->h->t_ns) / sqrt(m->aux[i]);
}

/* u (into vn) = the preconditioned gradient with the current P, then
 * vn = βv + u (Alg. 1 line 11) and the update checks. */
static const char *prep_update(struct mbag *m, const struct mbag_ctx *cx, size_t i, const double *g,
                               double gmax)
{
    const struct mbag_group *gr = &m->grp[i];
    size_t n = gr->n;
    double *vn = m->vn + gr->pos, beta = cx->h->beta;
    const double *v = m->v + gr->pos;
    if (m->var == MBAG_N) {
        /* H_new g = w / (1 + g'Hg) exactly (eq. 4), without its cancellation. */
        for (size_t k = 0; k < n; k++)
            vn[k] = m->w[gr->pos + k] / m->aux[i];
    } else {
        matvec(n, m->P + gr->mat, g, vn);
    }
    for (size_t k = 0; k < n; k++)
        vn[k] = beta * v[k] + vn[k];
    if (!(cx->lr * absmax(vn, n) <= MBAG_BIG))
        return "the update overflows";
    if (cx->refresh && !(cx->lr * (beta * absmax(v, n) + p_bound(m, cx, i) * gmax) <= MBAG_BIG))
        return "the update after the square-root refresh may overflow";
    return NULL;
}

static curv_status prepare_group(struct mbag *m, const struct mbag_ctx *cx, size_t i,
                                 curv_error *err)
{
    const struct mbag_group *gr = &m->grp[i];
    const double *g = m->g + gr->pos;
    double gmax = absmax(g, gr->n);
    const char *why = m->var == MBAG_EMA ? prep_ema(m, cx->h, i, g, gmax) : prep_sm(m, cx->h, i, g);
    if (!why)
        why = prep_update(m, cx, i, g, gmax);
    if (!why)
        return CURV_OK;
    char loc[160];
    curv__locate(cx->o->layout, m->perm ? m->perm[gr->pos] : gr->pos, loc, sizeof loc);
    return curv__fail(err, CURV_E_NONFINITE,
                      "%s: %s in the group of %zu parameters starting at %s (gradient too large)",
                      curv_opt_kind_name(cx->o->kind), why, gr->n, loc);
}

/* ---- pass 2: commit (cannot fail) ---- */

/* Newton–Schulz refresh of P for group @i (Alg. 1 line 8, eq. 5). The input
 * is pre-scaled by its largest entry s so that ‖·‖_F cannot under- or
 * overflow; since (A/s)/‖A/s‖_F = A/‖A‖_F this is the paper's iteration, and
 * with c = ‖A/s‖_F: H^1/2 = sqrt(s c) X_N, (G + δI)^-1/2 = Y_N / sqrt(s c).
 * Returns 1 when P was replaced, 0 when the old P is kept. */
static int refresh_p(struct mbag *m, const struct mbag_ctx *cx, size_t i)
{
    const struct mbag_group *gr = &m->grp[i];
    size_t n = gr->n, nn = n * n;
    double *T = m->ns, *X = T + nn, *Y = X + nn, *work = Y + nn;
    double shift = m->var == MBAG_EMA ? cx->h->delta : 0, s = 0;
    memcpy(T, m->A + gr->mat, nn * sizeof(double));
    for (size_t k = 0; k < n; k++)
        T[k * n + k] += shift;
    s = absmax(T, nn);
    if (!(s > 0) || !(p_bound(m, cx, i) > 0))
        return 0;
    for (size_t k = 0; k < nn; k++)
        T[k] /= s;
    double c = curv__newton_schulz(n, T, n, (unsigned)cx->h->t_ns, X, Y, work);
    if (!(c > 0) || !isfinite(c))
        return 0;
    double *src = m->var == MBAG_EMA ? Y : X;
    double f = m->var == MBAG_EMA ? 1.0 / (sqrt(s) * sqrt(c)) : sqrt(s) * sqrt(c);
    for (size_t k = 0; k < nn; k++)
        src[k] *= f;
    if (!(rowsum_max(n, src) <= p_bound(m, cx, i)))
        return 0;
    memcpy(m->P + gr->mat, src, nn * sizeof(double));
    return 1;
}

static void commit_group(struct mbag *m, const struct mbag_ctx *cx, size_t i)
{
    const struct mbag_group *gr = &m->grp[i];
    size_t n = gr->n;
    const double *g = m->g + gr->pos;
    double *A = m->A + gr->mat, *vn = m->vn + gr->pos, *v = m->v + gr->pos;
    if (m->var == MBAG_EMA) {
        double a = cx->h->alpha; /* Alg. 2 line 6 */
        for (size_t r = 0; r < n; r++)
            for (size_t c = 0; c < n; c++)
                A[r * n + c] = a * A[r * n + c] + (1 - a) * (g[r] * g[c]);
    } else {
        const double *w = m->w + gr->pos; /* eq. 4: H <- H - w w^T / den */
        for (size_t r = 0; r < n; r++) {
            double wr = w[r] / m->aux[i];
            for (size_t c = 0; c < n; c++)
                A[r * n + c] -= wr * w[c];
        }
        if (cx->sym)
            curv__symmetrize(n, A, n);
    }
    if (cx->refresh && refresh_p(m, cx, i)) {
        matvec(n, m->P + gr->mat, g, vn); /* Alg. 1 line 11 with the new P */
        for (size_t k = 0; k < n; k++)
            vn[k] = cx->h->beta * v[k] + vn[k];
    }
    memcpy(v, vn, n * sizeof(double));
}

static curv_status mbag_step(curv_opt *o, const struct curv__step_args *in, double *delta,
                             curv_request *req, curv_error *err)
{
    const double *g = in->g, *theta = in->theta;
    (void)theta;
    (void)req;
    struct mbag *m = o->impl;
    const struct mbag_hyper *h = o->hyper;
    uint64_t t = o->t + 1;
    struct mbag_ctx cx = {h, o, curv__sched_lr(&h->sched, t), 0, 0};
    cx.refresh = m->var != MBAG_N && t % (uint64_t)h->t_sqr == 0;
    cx.sym = m->var != MBAG_EMA && h->sym_every > 0 && t % (uint64_t)h->sym_every == 0;
    for (size_t k = 0; k < m->d; k++)
        m->g[k] = g[m->perm ? m->perm[k] : k];
    for (size_t i = 0; i < m->ngroups; i++) {
        curv_status st = prepare_group(m, &cx, i, err);
        if (st != CURV_OK)
            return st;
    }
    for (size_t i = 0; i < m->ngroups; i++)
        commit_group(m, &cx, i);
    for (size_t k = 0; k < m->d; k++) /* Alg. 1 line 12: θ <- θ - η_t v */
        delta[m->perm ? m->perm[k] : k] = -cx.lr * m->v[k];
    return CURV_OK;
}

/* ---- save / load ---- */

static void mbag_save(const curv_opt *o, struct curv__writer *w)
{
    const struct mbag *m = o->impl;
    curv__w_u32(w, MBAG_TAG);
    curv__w_u32(w, MBAG_VERSION);
    curv__w_u32(w, (uint32_t)m->var);
    curv__w_u64(w, m->ngroups);
    curv__w_u64(w, m->nmat);
    curv__w_u64(w, m->d);
    curv__w_part(w, curv__steps_stamp(o));
    curv__w_f64s(w, m->A, m->nmat);
    if (m->P)
        curv__w_f64s(w, m->P, m->nmat);
    curv__w_f64s(w, m->v, m->d);
}

/* What a running optimizer guarantees: all finite; H entries within
 * [-2/λ, 2/λ] (H ⪯ I/λ); G's diagonal >= 0 and |G_ij| <= 2 max diag (PSD).
 * The overflow analysis of pass 1 relies on these. */
static int group_ok(const struct mbag *m, const struct mbag_hyper *h, size_t i)
{
    const struct mbag_group *gr = &m->grp[i];
    size_t n = gr->n, nn = n * n;
    const double *A = m->A + gr->mat;
    if (curv__first_nonfinite(A, nn) != nn ||
        (m->P && curv__first_nonfinite(m->P + gr->mat, nn) != nn))
        return 0;
    if (m->var != MBAG_EMA)
        return absmax(A, nn) <= 2.0 / h->lambda;
    double dmax = 0;
    for (size_t k = 0; k < n; k++) {
        if (!(A[k * n + k] >= 0))
            return 0;
        dmax = fmax(dmax, A[k * n + k]);
    }
    return dmax <= MBAG_BIG && absmax(A, nn) <= 2.000001 * dmax + DBL_MIN;
}

static curv_status mbag_load(curv_opt *o, struct curv__reader *r, curv_error *err)
{
    struct mbag *m = o->impl;
    const char *kname = curv_opt_kind_name(o->kind);
    uint32_t tag = curv__r_u32(r), ver = curv__r_u32(r), var = curv__r_u32(r);
    uint64_t ng = curv__r_u64(r), nm = curv__r_u64(r), d = curv__r_u64(r);
    if (r->bad || tag != MBAG_TAG || ver != MBAG_VERSION || var != (uint32_t)m->var ||
        ng != m->ngroups || nm != m->nmat || d != m->d) {
        r->bad = 1;
        return curv__fail(err, CURV_E_CORRUPT,
                          "%s: saved state header does not match the layout (%zu groups, "
                          "%zu matrix entries, d = %zu)",
                          kname, m->ngroups, m->nmat, m->d);
    }
    curv__r_f64s(r, m->A, m->nmat);
    if (m->P)
        curv__r_f64s(r, m->P, m->nmat);
    curv__r_f64s(r, m->v, m->d);
    if (r->bad)
        return curv__fail(err, CURV_E_CORRUPT, "%s: saved state is truncated", kname);
    for (size_t i = 0; i < m->ngroups; i++) {
        if (!group_ok(m, o->hyper, i)) {
            r->bad = 1;
            char loc[160];
            curv__locate(o->layout, m->perm ? m->perm[m->grp[i].pos] : m->grp[i].pos, loc,
                         sizeof loc);
            return curv__fail(err, CURV_E_CORRUPT,
                              "%s: saved preconditioner of the group starting at %s is "
                              "non-finite or out of range",
                              kname, loc);
        }
    }
    if (curv__first_nonfinite(m->v, m->d) != m->d) {
        r->bad = 1;
        return curv__fail(err, CURV_E_CORRUPT, "%s: saved momentum is non-finite", kname);
    }
    return CURV_OK;
}

/* ---- vtables ---- */

/* A saved state holds at least v (d doubles) and one matrix entry per
 * parameter; a blob shorter than that cannot be genuine. */
static size_t mbag_saved(const curv_opt *o)
{
    return 2 * o->dim;
}

#define MBAG_VT(name, table, initfn)                                                               \
    const struct curv__opt_vt name = {                                                             \
        .params = table,                                                                           \
        .n_params = sizeof table / sizeof table[0],                                                \
        .hyper_size = sizeof(struct mbag_hyper),                                                   \
        .init = initfn,                                                                            \
        .fini = mbag_fini,                                                                         \
        .step = mbag_step,                                                                         \
        .resume = NULL,                                                                            \
        .save = mbag_save,                                                                         \
        .load = mbag_load,                                                                         \
        .fixed = MBAG_FIXED,                                                                       \
        .saved_doubles = mbag_saved,                                                               \
    }

MBAG_VT(curv__mbag_vt, MBAG_PARAMS, mbag_init_sm);
MBAG_VT(curv__mbag_ema_vt, MBAG_EMA_PARAMS, mbag_init_ema);
MBAG_VT(curv__mbag_n_vt, MBAG_N_PARAMS, mbag_init_n);
