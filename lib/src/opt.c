/* SPDX-License-Identifier: MIT */
/* The common optimizer front end: kinds, input checks, float32
 * conversion, and the outer save/load frame around each kind's state. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

static const struct curv__opt_vt *const VTABLES[CURV_OPT_KIND_COUNT] = {
    [CURV_OPT_SGD] = &curv__sgd_vt,
    [CURV_OPT_ADAGRAD_DIAG] = &curv__adagrad_diag_vt,
    [CURV_OPT_ADAGRAD_FULL] = &curv__adagrad_full_vt,
    [CURV_OPT_ADAGRAD_BMA] = &curv__adagrad_bma_vt,
    [CURV_OPT_MBAG] = &curv__mbag_vt,
    [CURV_OPT_MBAG_EMA] = &curv__mbag_ema_vt,
    [CURV_OPT_MBAG_N] = &curv__mbag_n_vt,
    [CURV_OPT_KFAC] = &curv__kfac_vt,
    [CURV_OPT_HF] = &curv__hf_vt,
};

static const struct curv__opt_vt *vt_of(curv_opt_kind kind)
{
    return (unsigned)kind < CURV_OPT_KIND_COUNT ? VTABLES[kind] : NULL;
}

curv_status curv__opt_upgrade(curv_opt_kind kind, curv_config *stored)
{
    const struct curv__opt_vt *vt = vt_of(kind);
    return vt && vt->upgrade ? vt->upgrade(stored) : CURV_OK;
}

const char *curv_opt_kind_name(curv_opt_kind kind)
{
    switch (kind) {
#define CURV__KIND_NAME(name, code, text)                                                          \
    case CURV_OPT_##name:                                                                          \
        return text;
        CURV_OPT_KIND_MAP(CURV__KIND_NAME)
#undef CURV__KIND_NAME
    default:
        return NULL;
    }
}

curv_status curv_opt_kind_parse(const char *name, curv_opt_kind *out)
{
    for (int k = 0; name && k < CURV_OPT_KIND_COUNT; k++)
        if (curv_opt_kind_name((curv_opt_kind)k) &&
            strcmp(curv_opt_kind_name((curv_opt_kind)k), name) == 0) {
            *out = (curv_opt_kind)k;
            return CURV_OK;
        }
    return CURV_E_INVALID;
}

unsigned curv_opt_kind_inputs(curv_opt_kind kind)
{
    const struct curv__opt_vt *vt = vt_of(kind);
    return vt ? vt->inputs | (vt->resume ? CURV_INPUT_REQUESTS : 0u) : 0u;
}

size_t curv_opt_param_count(curv_opt_kind kind)
{
    const struct curv__opt_vt *vt = vt_of(kind);
    return vt ? vt->n_params : 0;
}

curv_status curv_opt_param_info(curv_opt_kind kind, size_t i, curv_param_info *out)
{
    const struct curv__opt_vt *vt = vt_of(kind);
    if (!vt || !out || i >= vt->n_params)
        return CURV_E_INVALID;
    const struct curv__param *p = &vt->params[i];
    *out = (curv_param_info){.name = p->name,
                             .type = p->type,
                             .def = p->def,
                             .min = p->min,
                             .max = p->max,
                             .def_str = p->def_str,
                             .choices = p->choices,
                             .doc = p->doc};
    return CURV_OK;
}

void curv_opt_settle(curv_opt *o)
{
    if (o && o->impl && o->vt->settle)
        o->vt->settle(o);
}

void curv_opt_free(curv_opt *o)
{
    if (!o)
        return;
    if (o->impl && o->vt->fini)
        o->vt->fini(o);
    curv_layout_free(o->layout);
    curv__free(o->hyper);
    curv__free(o->gbuf);
    curv__free(o->pbuf);
    curv__free(o->ubuf);
    curv__free(o->sbuf);
    curv__free(o->lbuf);
    curv__free(o->layers);
    curv__free(o->report.e);
    curv__free(o->report.names);
    curv__free(o);
}

curv_status curv_opt_new(curv_opt_kind kind, const curv_layout *layout, const curv_config *config,
                         curv_opt **out, curv_error *err)
{
    return curv__opt_new_bounded(kind, layout, config, SIZE_MAX, out, err);
}

/* The checks curv_opt_new makes before it allocates anything. */
static curv_status check_new(curv_opt_kind kind, const curv_layout *layout, const void *out,
                             curv_error *err)
{
    if (!vt_of(kind))
        return curv__fail(err, CURV_E_INVALID, "opt: unknown optimizer kind %d", (int)kind);
    if (!layout || !out)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL layout or output pointer");
    if (curv_layout_dim(layout) == 0)
        return curv__fail(err, CURV_E_INVALID, "%s: the layout has no parameter blocks",
                          curv_opt_kind_name(kind));
    return CURV_OK;
}

/* What curv__opt_new_bounded allocates besides the kind's state: the
 * optimizer, its copy of the layout, its hyperparameters. */
static size_t front_bytes(const struct curv__opt_vt *vt, const curv_layout *layout)
{
    return curv__sat_add(sizeof(struct curv_opt) + vt->hyper_size, curv__layout_dup_bytes(layout));
}

/* The kind's init, then the report's room for the figures every kind
 * reports (grad_norm, update_norm) where the kind reserved none of its own. */
static curv_status init_kind(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    curv_status st = o->vt->init(o, t, err);
    if (st == CURV_OK && !o->report.cap)
        st = curv__report_reserve(o, t, 0, err);
    return st;
}

curv_status curv__opt_new_bounded(curv_opt_kind kind, const curv_layout *layout,
                                  const curv_config *config, size_t max_doubles, curv_opt **out,
                                  curv_error *err)
{
    curv_status st = check_new(kind, layout, out, err);
    if (st != CURV_OK)
        return st;
    const struct curv__opt_vt *vt = vt_of(kind);
    curv_opt *o = curv__calloc(1, sizeof *o);
    if (!o)
        return curv__fail(err, CURV_E_NOMEM, "opt: out of memory");
    o->kind = kind;
    o->vt = vt;
    o->layout = curv_layout_dup(layout);
    o->dim = curv_layout_dim(layout);
    o->hyper = curv__calloc(1, vt->hyper_size);
    st = CURV_E_NOMEM;
    if (!o->layout || !o->hyper) {
        curv__fail(err, st, "opt: out of memory");
        goto fail;
    }
    st = curv__params_apply(vt->params, vt->n_params, curv_opt_kind_name(kind), config, o->hyper,
                            err);
    if (st == CURV_OK && vt->saved_doubles && vt->saved_doubles(o) > max_doubles)
        st = curv__fail(err, CURV_E_CORRUPT,
                        "%s: the blob is too short for the state of this layout and config",
                        curv_opt_kind_name(kind));
    struct curv__tally t = {.alloc = 1};
    if (st == CURV_OK)
        st = init_kind(o, &t, err);
    if (st != CURV_OK)
        goto fail;
    *out = o;
    return CURV_OK;
fail:
    curv_opt_free(o);
    return st;
}

curv_status curv_opt_state_bytes(curv_opt_kind kind, const curv_layout *layout,
                                 const curv_config *config, size_t *bytes, curv_error *err)
{
    curv_status st = check_new(kind, layout, bytes, err);
    if (st != CURV_OK)
        return st;
    const struct curv__opt_vt *vt = vt_of(kind);
    /* A stand-in for the optimizer: the caller's layout, only read, and
     * the resolved hyperparameters; the kind's init then only counts. */
    curv_opt o = {
        .kind = kind, .vt = vt, .layout = (curv_layout *)layout, .dim = curv_layout_dim(layout)};
    if (!(o.hyper = curv__calloc(1, vt->hyper_size)))
        return curv__fail(err, CURV_E_NOMEM, "opt: out of memory");
    struct curv__tally t = {.alloc = 0, .bytes = front_bytes(vt, layout)};
    st = curv__params_apply(vt->params, vt->n_params, curv_opt_kind_name(kind), config, o.hyper,
                            err);
    if (st == CURV_OK)
        st = init_kind(&o, &t, err);
    curv__free(o.hyper);
    if (st == CURV_OK)
        *bytes = t.bytes;
    return st;
}

static double norm(const double *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return sqrt(s);
}

/* A step's report opens with the figures every kind has, computed here
 * once: grad_norm, the gradient sent, now (its sum of squares was taken
 * with the gradient's check); update_norm when the step ends, unless the
 * kind gave it (curv__report_update_sumsq). */
static void report_begin(curv_opt *o, double g_sumsq)
{
    o->report.n = 0;
    curv__report_add(o, sqrt(g_sumsq), "grad_norm");
    curv__report_add(o, NAN, "update_norm");
}

void curv__report_update_sumsq(curv_opt *o, double sumsq)
{
    if (o->report.n >= CURV__REPORT_BASE)
        o->report.e[1].value = sqrt(sumsq);
}

/* Run a step or a resume and deliver the update in the caller's dtype. */
static curv_status finish(curv_opt *o, curv_status st, curv_dtype dtype, void *update,
                          double *delta, curv_request *req, curv_error *err)
{
    size_t bad;
    if (st == CURV_OK) {
        if (o->report.n >= CURV__REPORT_BASE && isnan(o->report.e[1].value))
            o->report.e[1].value = norm(delta, o->dim);
        if (dtype == CURV_F32) {
            float *f = update;
            for (size_t i = 0; i < o->dim; i++)
                f[i] = (float)delta[i];
        }
        o->t++;
        o->pending = 0;
    } else if (st == CURV_NEED_INPUT &&
               (bad = curv__first_nonfinite(req->vectors, req->n_vectors * req->dim)) <
                   req->n_vectors * req->dim) {
        /* The inputs drove a vector the trainer would evaluate past the
         * doubles' range: the step cannot go on, and is abandoned. */
        char where[160];
        curv__locate(o->layout, bad % req->dim, where, sizeof where);
        st = curv__fail(err, CURV_E_NONFINITE,
                        "%s: vector %zu of the request it would make overflows at element %zu, "
                        "%s (an input or answer too large); the step is abandoned",
                        curv_opt_kind_name(o->kind), bad / req->dim, bad % req->dim, where);
        o->pending = 0;
    } else if (st == CURV_NEED_INPUT) {
        o->pending = 1;
        o->req_seq = req->seq;
        o->req_values = req->kind == CURV_REQ_CURVATURE_PRODUCT ? req->n_vectors * req->dim
                        : req->kind == CURV_REQ_LOSS            ? req->n_vectors
                                                                : req->n_vectors * req->n_vectors;
        req->n_values = o->req_values;
    }
    return st;
}

static double *delta_buffer(curv_opt *o, curv_dtype dtype, void *update)
{
    if (dtype == CURV_F64)
        return update;
    if (!o->ubuf)
        o->ubuf = curv__calloc_n(o->dim, sizeof(double));
    return o->ubuf;
}

curv_status curv_opt_step(curv_opt *o, const curv_step_input *in, void *update, curv_request *req,
                          curv_error *err)
{
    if (!o || !in || !in->grad || !update)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL optimizer, input, grad or update");
    curv_opt_settle(o);
    const char *name = curv_opt_kind_name(o->kind);
    if (in->dtype != CURV_F64 && in->dtype != CURV_F32)
        return curv__fail(err, CURV_E_INVALID, "%s: unknown dtype %d", name, (int)in->dtype);
    if (o->pending)
        return curv__fail(err, CURV_E_STATE,
                          "%s: a request is pending; answer it with resume before a new step",
                          name);
    if (!req && o->vt->resume)
        return curv__fail(err, CURV_E_INVALID, "%s may ask the trainer for input: pass a request",
                          name);
    struct curv__step_args args;
    curv_status st = curv__step_args_build(o, in, &args, err);
    if (st != CURV_OK)
        return st;
    double *delta = delta_buffer(o, in->dtype, update);
    if (!delta)
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory", name);
    curv_request scratch = {0};
    if (!req)
        req = &scratch;
    report_begin(o, args.g_sumsq);
    st = o->vt->step(o, &args, delta, req, err);
    if (st == CURV_OK || st == CURV_NEED_INPUT)
        o->interrupted = 0;
    return finish(o, st, in->dtype, update, delta, req, err);
}

curv_status curv__answer_finite(const curv_opt *o, const double *v, size_t n, curv_error *err)
{
    size_t bad = curv__first_nonfinite(v, n);
    if (bad < n)
        return curv__fail(err, CURV_E_NONFINITE, "%s: response value %zu is %g",
                          curv_opt_kind_name(o->kind), bad, v[bad]);
    return CURV_OK;
}

curv_status curv_opt_resume(curv_opt *o, const curv_response *resp, curv_dtype dtype, void *update,
                            curv_request *req, curv_error *err)
{
    if (!o || !resp || !update)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL optimizer, response or update");
    curv_opt_settle(o);
    const char *name = curv_opt_kind_name(o->kind);
    if (dtype != CURV_F64 && dtype != CURV_F32)
        return curv__fail(err, CURV_E_INVALID, "%s: unknown dtype %d", name, (int)dtype);
    if (o->interrupted)
        return curv__fail(err, CURV_E_STATE,
                          "%s: the step was interrupted (saved and loaded while waiting for an "
                          "answer); take it again from its beginning",
                          name);
    if (!o->pending || !o->vt->resume)
        return curv__fail(err, CURV_E_STATE, "%s: no request is pending", name);
    if (resp->seq != o->req_seq)
        return curv__fail(err, CURV_E_STATE,
                          "%s: the answer is for request %llu; request %llu is pending", name,
                          (unsigned long long)resp->seq, (unsigned long long)o->req_seq);
    if (resp->n_values != o->req_values)
        return curv__fail(err, CURV_E_SHAPE,
                          "%s: request %llu needs %zu values, the answer has %zu", name,
                          (unsigned long long)o->req_seq, o->req_values, resp->n_values);
    if (resp->n_values && !resp->values)
        return curv__fail(err, CURV_E_INVALID, "%s: response has NULL values", name);
    if (!o->vt->checks_answers) {
        curv_status st = curv__answer_finite(o, resp->values, resp->n_values, err);
        if (st != CURV_OK)
            return st;
    }
    double *delta = delta_buffer(o, dtype, update);
    if (!delta)
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory", name);
    if (!req)
        return curv__fail(err, CURV_E_INVALID, "%s: resume needs a request to fill", name);
    curv_status st = o->vt->resume(o, resp, delta, req, err);
    return finish(o, st, dtype, update, delta, req, err);
}

curv_opt_kind curv_opt_kind_of(const curv_opt *o)
{
    return o ? o->kind : CURV_OPT_KIND_COUNT;
}

const curv_layout *curv_opt_layout(const curv_opt *o)
{
    return o ? o->layout : NULL;
}

uint64_t curv_opt_steps(const curv_opt *o)
{
    return o ? o->t : 0;
}

void curv_opt_cancel(curv_opt *o)
{
    curv_opt_settle(o);
    if (o && o->pending) {
        o->pending = 0;
        o->report.n = 0;
    }
}

int curv_opt_pending(const curv_opt *o)
{
    return o ? o->pending : 0;
}

int curv_opt_interrupted(const curv_opt *o)
{
    return o ? o->interrupted : 0;
}

size_t curv_opt_report(const curv_opt *o, const curv_report_entry **entries)
{
    if (!o || !entries)
        return 0;
    *entries = o->report.e;
    return o->report.n;
}

curv_status curv__report_reserve(curv_opt *o, struct curv__tally *t, size_t cap, curv_error *err)
{
    cap += CURV__REPORT_BASE;
    curv_report_entry *e = curv__tally_calloc(t, cap, sizeof *e);
    char(*names)[CURV__REPORT_NAME] = curv__tally_calloc(t, cap, sizeof *names);
    if (!t->alloc) {
        o->report.cap = cap; /* counting: only init_kind reads it */
        return CURV_OK;
    }
    if (t->failed) {
        curv__free(e);
        curv__free(names);
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory", curv_opt_kind_name(o->kind));
    }
    curv__free(o->report.e);
    curv__free(o->report.names);
    o->report = (struct curv__report){.e = e, .names = names, .cap = cap};
    return CURV_OK;
}

void curv__report_add(curv_opt *o, double value, const char *fmt, ...)
{
    struct curv__report *r = &o->report;
    if (r->n >= r->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->names[r->n], CURV__REPORT_NAME, fmt, ap);
    va_end(ap);
    r->e[r->n] = (curv_report_entry){.name = r->names[r->n], .value = value};
    r->n++;
}

static const struct curv__param *find_param(const curv_opt *o, const char *name)
{
    for (size_t i = 0; o && name && i < o->vt->n_params; i++)
        if (strcmp(o->vt->params[i].name, name) == 0)
            return &o->vt->params[i];
    return NULL;
}

curv_status curv_opt_get_param_str(const curv_opt *o, const char *name, char *buf, size_t cap)
{
    const struct curv__param *p = find_param(o, name);
    if (!p || !buf || cap == 0)
        return CURV_E_INVALID;
    char tmp[512];
    curv__param_format(p, o->hyper, tmp, sizeof tmp);
    int n = snprintf(buf, cap, "%s", tmp);
    return (size_t)n < cap ? CURV_OK : CURV_E_RANGE;
}

curv_status curv_opt_reconfigure(curv_opt *o, const curv_config *changes, curv_error *err)
{
    if (!o || !changes)
        return curv__fail(err, CURV_E_INVALID, "opt: NULL optimizer or config");
    curv_opt_settle(o); /* the fold reads the settings of its step (decay, max_failures) */
    const char *name = curv_opt_kind_name(o->kind);
    if (o->pending)
        return curv__fail(err, CURV_E_STATE, "%s: a request is pending; answer it first", name);
    void *nh = curv__malloc(o->vt->hyper_size);
    if (!nh)
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory", name);
    memcpy(nh, o->hyper, o->vt->hyper_size);
    curv_status st = curv__params_set(o->vt->params, o->vt->n_params, name, changes, nh, err);
    for (const char *const *f = o->vt->fixed; st == CURV_OK && f && *f; f++) {
        const struct curv__param *p = find_param(o, *f);
        if (curv__param_value(p, nh) != curv__param_value(p, o->hyper))
            st = curv__fail(err, CURV_E_CONFIG,
                            "%s: '%s' shapes the optimizer's state and is fixed at creation", name,
                            *f);
    }
    if (st == CURV_OK)
        memcpy(o->hyper, nh, o->vt->hyper_size);
    curv__free(nh);
    return st;
}

curv_status curv_opt_get_param(const curv_opt *o, const char *name, double *out)
{
    for (size_t i = 0; o && name && out && i < o->vt->n_params; i++)
        if (strcmp(o->vt->params[i].name, name) == 0) {
            *out = curv__param_value(&o->vt->params[i], o->hyper);
            return CURV_OK;
        }
    return CURV_E_INVALID;
}
