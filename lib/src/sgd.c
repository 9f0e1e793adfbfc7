/* SPDX-License-Identifier: MIT */
/*
 * SGD: plain, heavy-ball momentum (Martens' thesis §3.4.1 eq. 3.5, with
 * the index slip fixed: δ_{k+1} = μδ_k − ∇h, θ_{k+1} = θ_k + αδ_{k+1}) and
 * Nesterov momentum (Sutskever et al. 2013) in the form that needs the
 * gradient only at the parameters the trainer holds:
 *   v ← μv + g,   Δ = −η (g + μ v)
 * which is Nesterov's method written in the look-ahead variable θ + μv.
 * Weight decay adds wd·θ to the gradient (L2 regularisation).
 */
#include <math.h>
#include <stdlib.h>

#include "opt_int.h"

enum { MU_CONSTANT = 0, MU_SUTSKEVER = 1 };

struct sgd_hyper {
    struct curv__sched sched;
    double momentum;
    int nesterov;
    int mu_schedule;
    double weight_decay;
};

static const struct curv__param PARAMS[] = {
    CURV__SCHED_PARAMS(struct sgd_hyper, sched, 0.01, CURV__SCHED_LR_DOC),
    CURV__REAL(struct sgd_hyper, momentum, "momentum", 0, 0, 0.9999,
               "momentum μ (the cap μ_max under the sutskever schedule); 0 disables"),
    CURV__BOOL(struct sgd_hyper, nesterov, "nesterov", 0,
               "Nesterov momentum instead of heavy ball"),
    CURV__ENUM(struct sgd_hyper, mu_schedule, "momentum_schedule", "constant", "constant|sutskever",
               "sutskever: μ_t = min(1 − 2^(−1−log2(floor(t/250)+1)), momentum) (Sutskever et "
               "al. 2013, cited in the thesis §6.13)"),
    CURV__REAL(struct sgd_hyper, weight_decay, "weight_decay", 0, 0, 1e6,
               "L2 coefficient: g ← g + wd·θ (then params are required each step)"),
};

struct sgd_state {
    double *v; /* momentum buffer, NULL when momentum is 0 */
};

static double momentum_at(const struct sgd_hyper *h, uint64_t t)
{
    if (h->mu_schedule != MU_SUTSKEVER)
        return h->momentum;
    double mu = 1.0 - pow(2.0, -1.0 - log2(floor((double)t / 250.0) + 1.0));
    return fmin(mu, h->momentum);
}

static curv_status sgd_init(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    struct sgd_state scratch, *s = curv__tally_obj(t, &scratch, sizeof *s);
    if (!s)
        return curv__fail(err, CURV_E_NOMEM, "sgd: out of memory");
    o->impl = s;
    /* The momentum buffer is allocated at the first step that uses it, so
     * that loading a blob never allocates what the blob does not hold. */
    return CURV_OK;
}

/* Momentum can be switched on later (curv_opt_reconfigure): the buffer then
 * starts at zero, as it does at creation. */
static curv_status ensure_velocity(curv_opt *o, struct sgd_state *s, curv_error *err)
{
    if (s->v || ((const struct sgd_hyper *)o->hyper)->momentum <= 0)
        return CURV_OK;
    if (!(s->v = curv__calloc_n(o->dim, sizeof(double))))
        return curv__fail(err, CURV_E_NOMEM, "sgd: out of memory for %zu momentum entries", o->dim);
    return CURV_OK;
}

static void sgd_fini(curv_opt *o)
{
    struct sgd_state *s = o->impl;
    curv__free(s->v);
    curv__free(s);
}

static curv_status sgd_step(curv_opt *o, const struct curv__step_args *in, double *delta,
                            curv_request *req, curv_error *err)
{
    const double *g = in->g, *theta = in->theta;
    (void)req;
    const struct sgd_hyper *h = o->hyper;
    struct sgd_state *s = o->impl;
    const double wd = h->weight_decay;
    if (wd > 0 && !theta)
        return curv__fail(err, CURV_E_INVALID, "sgd: weight_decay = %g needs the params vector",
                          wd);
    curv_status st = ensure_velocity(o, s, err);
    if (st != CURV_OK)
        return st;
    const uint64_t t = o->t + 1;
    const double lr = curv__sched_lr(&h->sched, t), mu = momentum_at(h, t);
    const int mom = s->v && h->momentum > 0;
    /* Two passes over the same arithmetic: the first only checks, so a
     * step that would overflow the velocity or the update changes nothing. */
    for (int write = 0; write <= 1; write++)
        for (size_t i = 0; i < o->dim; i++) {
            double gi = wd > 0 ? g[i] + wd * theta[i] : g[i];
            double v = mom ? mu * s->v[i] + gi : gi;
            double d = -lr * (mom && h->nesterov ? gi + mu * v : v);
            if (write) {
                if (mom)
                    s->v[i] = v;
                delta[i] = d;
            } else if (!isfinite(v) || !isfinite(d)) {
                return curv__overflow(o, i, mom ? "the velocity μv + g" : "the update", err);
            }
        }
    return CURV_OK;
}

static void sgd_save(const curv_opt *o, struct curv__writer *w)
{
    const struct sgd_state *s = o->impl;
    curv__w_u32(w, s->v != NULL);
    curv__w_part(w, curv__steps_stamp(o));
    if (s->v)
        curv__w_f64s(w, s->v, o->dim);
}

static curv_status sgd_load(curv_opt *o, struct curv__reader *r, curv_error *err)
{
    struct sgd_state *s = o->impl;
    uint32_t has_v = curv__r_u32(r);
    if (has_v > 1 || (has_v && curv__r_left(r) / sizeof(double) < o->dim))
        r->bad = 1; /* malformed, or too short for the buffer it announces */
    if (r->bad)
        return CURV_OK; /* the caller reports the malformed blob */
    if (has_v && !s->v && !(s->v = curv__calloc_n(o->dim, sizeof(double))))
        return curv__fail(err, CURV_E_NOMEM, "sgd: out of memory for %zu momentum entries", o->dim);
    if (!has_v) { /* momentum was switched on after the last save */
        curv__free(s->v);
        s->v = NULL;
    }
    if (s->v) {
        curv__r_f64s(r, s->v, o->dim);
        if (curv__first_nonfinite(s->v, o->dim) < o->dim)
            r->bad = 1;
    }
    return CURV_OK;
}

const struct curv__opt_vt curv__sgd_vt = {
    .params = PARAMS,
    .n_params = sizeof PARAMS / sizeof PARAMS[0],
    .hyper_size = sizeof(struct sgd_hyper),
    .init = sgd_init,
    .fini = sgd_fini,
    .step = sgd_step,
    .save = sgd_save,
    .load = sgd_load,
};
