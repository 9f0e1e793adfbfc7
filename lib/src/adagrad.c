/* SPDX-License-Identifier: MIT */
/*
 * AdaGrad, diagonal and full-matrix (BMA paper eqs. 4, 21, 23; Duchi et
 * al. 2011). The BMA variant lives in adagrad_bma.c.
 *   diag: r ← r + g²,  Δ = −η g / sqrt(r + ε)   (ε inside the root as in the
 *         BMA paper's Algorithm 1 line 9, so BMA with D = 0 reduces to it)
 *   full: H ← H + g gᵀ, Δ = −η (H + εI)^{-1/2} g; eq. 21 prints G⁻¹θ_t, a
 *         typo for G⁻¹g_t. The paper gives no ε for the full version; the
 *         same ε as diag makes d = 1 agree with diag, and eigenvalues are
 *         clamped at eig_floor·λ_max against round-off.
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "linalg.h"
#include "opt_int.h"

struct diag_hyper {
    struct curv__sched sched;
    double eps;
};

struct full_hyper {
    struct curv__sched sched;
    double eps;
    double eig_floor;
    int64_t max_dim;
};

#define ADAGRAD_COMMON_PARAMS(st)                                                                  \
    CURV__SCHED_PARAMS(st, sched, 0.01, CURV__SCHED_LR_DOC),                                       \
        CURV__REAL(st, eps, "eps", 1e-8, 1e-300, 1,                                                \
                   "ε > 0 added to the accumulated squares before the root (the BMA paper "       \
                   "leaves it unset; 1e-8 is conventional); 0 would give 0/0 for a coordinate "    \
                   "whose gradient has always been 0")

static const struct curv__param DIAG_PARAMS[] = {ADAGRAD_COMMON_PARAMS(struct diag_hyper)};

static const struct curv__param FULL_PARAMS[] = {
    ADAGRAD_COMMON_PARAMS(struct full_hyper),
    CURV__REAL(struct full_hyper, eig_floor, "eig_floor", 1e-12, 0, 0.5,
               "eigenvalues of H + εI below eig_floor·λ_max are clamped to it"),
    CURV__INT(struct full_hyper, max_dim, "max_dim", 4096, 1, 65536,
              "largest d accepted: the state is d·d doubles and each step an O(d³) "
              "eigendecomposition"),
};

/* ---- diagonal ---------------------------------------------------------- */

static curv_status diag_init(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    o->impl = curv__tally_calloc(t, o->dim, sizeof(double));
    if (t->failed)
        return curv__fail(err, CURV_E_NOMEM, "adagrad_diag: out of memory for %zu entries", o->dim);
    return CURV_OK;
}

static void free_impl(curv_opt *o)
{
    curv__free(o->impl);
}

/* r ← r + g², Δ = −η g / sqrt(r + ε) (BMA paper eq. 23). */
CURV__VECTOR_CLONES static void diag_kernel(size_t n, const double *restrict g, double lr,
                                            double eps, double *restrict r, double *restrict delta)
{
    for (size_t i = 0; i < n; i++) {
        r[i] += g[i] * g[i];
        delta[i] = -lr * g[i] / sqrt(r[i] + eps);
    }
}

static curv_status diag_step(curv_opt *o, const struct curv__step_args *in, double *delta,
                             curv_request *req, curv_error *err)
{
    const double *g = in->g, *theta = in->theta;
    (void)theta, (void)req;
    const struct diag_hyper *h = o->hyper;
    const double *r = o->impl;
    for (size_t i = 0; i < o->dim; i++) /* the kernel writes r in place */
        if (!isfinite(r[i] + g[i] * g[i]))
            return curv__overflow(o, i, "the sum of squared gradients", err);
    diag_kernel(o->dim, g, curv__sched_lr(&h->sched, o->t + 1), h->eps, o->impl, delta);
    return CURV_OK;
}

/* State of diag (r, d doubles) and full (H, d² doubles): one flat array. */
static size_t flat_saved(const curv_opt *o)
{
    size_t n;
    if (o->kind != CURV_OPT_ADAGRAD_FULL)
        return o->dim;
    return curv__mul_ok(o->dim, o->dim, &n) ? n : SIZE_MAX;
}

static size_t flat_len(const curv_opt *o)
{
    return o->kind == CURV_OPT_ADAGRAD_FULL ? o->dim * o->dim : o->dim;
}

static void flat_save(const curv_opt *o, struct curv__writer *w)
{
    curv__w_part(w, curv__steps_stamp(o));
    curv__w_f64s(w, o->impl, flat_len(o));
}

/* A loaded state must be one that steps could have produced: finite, with
 * non-negative sums of squares (diag's r, full's diagonal of H), or the
 * next step would take the root of a negative number. */
static curv_status flat_load(curv_opt *o, struct curv__reader *r, curv_error *err)
{
    (void)err;
    double *s = o->impl;
    size_t n = flat_len(o);
    curv__r_f64s(r, s, n);
    if (curv__first_nonfinite(s, n) < n)
        r->bad = 1;
    for (size_t i = 0; i < o->dim; i++)
        if (s[o->kind == CURV_OPT_ADAGRAD_FULL ? i * o->dim + i : i] < 0)
            r->bad = 1;
    return CURV_OK;
}

const struct curv__opt_vt curv__adagrad_diag_vt = {
    .params = DIAG_PARAMS,
    .n_params = sizeof DIAG_PARAMS / sizeof DIAG_PARAMS[0],
    .hyper_size = sizeof(struct diag_hyper),
    .init = diag_init,
    .fini = free_impl,
    .step = diag_step,
    .save = flat_save,
    .load = flat_load,
    .saved_doubles = flat_saved,
};

/* ---- full -------------------------------------------------------------- */

static curv_status full_init(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    const struct full_hyper *h = o->hyper;
    size_t n2;
    if (o->dim > (size_t)h->max_dim || !curv__mul_ok(o->dim, o->dim, &n2))
        return curv__fail(err, CURV_E_RANGE,
                          "adagrad_full: d = %zu parameters exceeds max_dim = %lld (the state "
                          "would be a %zu x %zu matrix); use adagrad_bma or mbag",
                          o->dim, (long long)h->max_dim, o->dim, o->dim);
    o->impl = curv__tally_calloc(t, n2, sizeof(double));
    if (t->failed)
        return curv__fail(err, CURV_E_NOMEM, "adagrad_full: out of memory for %zu x %zu", o->dim,
                          o->dim);
    return CURV_OK;
}

static curv_status full_step(curv_opt *o, const struct curv__step_args *in, double *delta,
                             curv_request *req, curv_error *err)
{
    const double *g = in->g, *theta = in->theta;
    (void)theta, (void)req;
    const struct full_hyper *h = o->hyper;
    double *H = o->impl;
    const size_t d = o->dim;
    /* Work on a copy so a failed eigendecomposition leaves H untouched. */
    double *P = curv__calloc_n(d * d, sizeof(double));
    if (!P)
        return curv__fail(err, CURV_E_NOMEM, "adagrad_full: out of memory");
    memcpy(P, H, d * d * sizeof(double));
    cblas_dger(CblasRowMajor, (int)d, (int)d, 1.0, g, 1, g, 1, P, (int)d);
    for (size_t i = 0; i < d; i++)
        P[i * d + i] += h->eps;
    curv_status st = curv__sym_pow(d, P, d, -0.5, 0.0, h->eig_floor, P, d, err);
    if (st == CURV_OK) {
        cblas_dger(CblasRowMajor, (int)d, (int)d, 1.0, g, 1, g, 1, H, (int)d);
        cblas_dgemv(CblasRowMajor, CblasNoTrans, (int)d, (int)d,
                    -curv__sched_lr(&h->sched, o->t + 1), P, (int)d, g, 1, 0.0, delta, 1);
    }
    curv__free(P);
    return st;
}

const struct curv__opt_vt curv__adagrad_full_vt = {
    .params = FULL_PARAMS,
    .n_params = sizeof FULL_PARAMS / sizeof FULL_PARAMS[0],
    .hyper_size = sizeof(struct full_hyper),
    .init = full_init,
    .fini = free_impl,
    .step = full_step,
    .save = flat_save,
    .load = flat_load,
    .saved_doubles = flat_saved,
    .fixed = (const char *const[]){"max_dim", NULL},
};
