/* SPDX-License-Identifier: MIT */
/* A step's input, checked and brought to doubles before any kind sees it:
 * one place for the shape, finiteness and "who takes what" rules. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

/* Make sure *buf holds n doubles (grown, never shrunk). */
static int ensure(double **buf, size_t *cap, size_t n)
{
    if (*buf && *cap >= n)
        return 1;
    double *nb = curv__calloc_n(n ? n : 1, sizeof(double));
    if (!nb)
        return 0;
    curv__free(*buf);
    *buf = nb;
    *cap = n;
    return 1;
}

/* Bring @n elements of @src (dtype) to doubles in @dst, or point at @src. */
static const double *as_doubles(const void *src, curv_dtype dtype, double *dst, size_t n)
{
    if (dtype == CURV_F64)
        return src;
    const float *f = src;
    for (size_t i = 0; i < n; i++)
        dst[i] = f[i];
    return dst;
}

/* The dtype of @ls's matrices in a step of @dtype. */
static curv_dtype layer_dtype(const curv_layer_stats *ls, curv_dtype dtype)
{
    return ls->f32 ? CURV_F32 : dtype;
}

/* With @sumsq, Σ v_i² (curv__dot) goes there, and v is searched for a value
 * that is not finite only when that sum is not finite (a NaN or an
 * infinity in v makes it so; so may an overflow of the sum alone). */
static curv_status load_vec(curv_opt *o, const void *src, curv_dtype dtype, double **buf,
                            const double **vec, double *sumsq, const char *what, curv_error *err)
{
    size_t cap = *buf ? o->dim : 0;
    if (dtype == CURV_F32 && !ensure(buf, &cap, o->dim))
        return curv__fail(err, CURV_E_NOMEM, "opt: out of memory converting %s", what);
    const double *v = as_doubles(src, dtype, *buf, o->dim);
    size_t bad = o->dim;
    if (sumsq)
        *sumsq = curv__dot(v, v, o->dim);
    if (!sumsq || !isfinite(*sumsq))
        bad = curv__first_nonfinite(v, o->dim);
    if (bad < o->dim) {
        char where[160];
        curv__locate(o->layout, bad, where, sizeof where);
        return curv__fail(err, CURV_E_NONFINITE, "%s: %s is %g at element %zu, %s",
                          curv_opt_kind_name(o->kind), what, v[bad], bad, where);
    }
    *vec = v;
    return CURV_OK;
}

curv_status curv__overflow(const curv_opt *o, size_t i, const char *what, curv_error *err)
{
    char where[160];
    curv__locate(o->layout, i, where, sizeof where);
    return curv__fail(err, CURV_E_NONFINITE, "%s: %s overflows at element %zu, %s",
                      curv_opt_kind_name(o->kind), what, i, where);
}

static int by_block(const void *x, const void *y)
{
    const struct curv__layer_in *a = x, *b = y;
    return (a->block > b->block) - (a->block < b->block);
}

/* Shape rules of one layer entry; *@n_doubles gets its element count. */
static curv_status check_layer(const curv_opt *o, const curv_layer_stats *ls, size_t *n_doubles,
                               curv_error *err)
{
    const char *name = curv_opt_kind_name(o->kind);
    curv_block_info b;
    if (curv_layout_block(o->layout, ls->block, &b) != CURV_OK)
        return curv__fail(err, CURV_E_INVALID,
                          "%s: layer statistics name block %zu; the layout "
                          "has %zu blocks",
                          name, ls->block, curv_layout_nblocks(o->layout));
    if (b.kind == CURV_BLOCK_VECTOR)
        return curv__fail(err, CURV_E_INVALID,
                          "%s: block '%s' is a vector block; layer "
                          "statistics belong to dense and conv2d blocks",
                          name, b.name);
    if (!ls->acts || !ls->signals)
        return curv__fail(err, CURV_E_INVALID, "%s: block '%s': NULL acts or signals", name,
                          b.name);
    if (ls->rows == 0 || ls->examples == 0)
        return curv__fail(err, CURV_E_INVALID,
                          "%s: block '%s': statistics of an empty batch "
                          "(rows %zu, examples %zu)",
                          name, b.name, ls->rows, ls->examples);
    if (b.kind == CURV_BLOCK_DENSE && ls->rows != ls->examples)
        return curv__fail(err, CURV_E_INVALID,
                          "%s: dense block '%s': rows (%zu) must equal "
                          "examples (%zu)",
                          name, b.name, ls->rows, ls->examples);
    if (ls->rows % ls->examples)
        return curv__fail(err, CURV_E_INVALID,
                          "%s: conv2d block '%s': rows (%zu) are not a "
                          "multiple of examples (%zu)",
                          name, b.name, ls->rows, ls->examples);
    size_t a, s;
    if (!curv__mul_ok(ls->rows, b.n_in, &a) || !curv__mul_ok(ls->rows, b.n_out, &s) || a + s < a)
        return curv__fail(err, CURV_E_RANGE, "%s: block '%s': %zu rows overflow", name, b.name,
                          ls->rows);
    *n_doubles = a + s;
    return CURV_OK;
}

/* Check one matrix, of doubles @m or floats @mf, finite; the error names
 * block, matrix, row and column. */
static curv_status check_finite(const curv_opt *o, const char *block, const char *what,
                                const double *m, const float *mf, size_t rows, size_t cols,
                                curv_error *err)
{
    size_t n = rows * cols, bad = m ? curv__first_nonfinite(m, n) : curv__first_nonfinite_f(mf, n);
    if (bad == n)
        return CURV_OK;
    return curv__fail(err, CURV_E_NONFINITE, "%s: block '%s': %s[%zu][%zu] is %g",
                      curv_opt_kind_name(o->kind), block, what, bad / cols, bad % cols,
                      m ? m[bad] : (double)mf[bad]);
}

static curv_status load_layers(curv_opt *o, const curv_step_input *in, struct curv__step_args *a,
                               curv_error *err)
{
    const char *name = curv_opt_kind_name(o->kind);
    if (!in->n_layers)
        return CURV_OK;
    if (!in->layers)
        return curv__fail(err, CURV_E_INVALID, "%s: n_layers is %zu but layers is NULL", name,
                          in->n_layers);
    if (!(o->vt->inputs & CURV_INPUT_LAYERS))
        return curv__fail(err, CURV_E_INVALID,
                          "%s takes no layer statistics (activations and "
                          "signals); send the gradient only",
                          name);
    if (in->n_layers > curv_layout_nblocks(o->layout))
        return curv__fail(err, CURV_E_INVALID, "%s: %zu layer entries for %zu blocks", name,
                          in->n_layers, curv_layout_nblocks(o->layout));
    /* Floats stay floats for a kind that reads them; the rest are converted. */
    const int keep_floats = o->vt->float_layers && o->vt->float_layers(o);
    size_t total = 0;
    for (size_t i = 0; i < in->n_layers; i++) {
        size_t n = 0;
        curv_status st = check_layer(o, &in->layers[i], &n, err);
        if (st != CURV_OK)
            return st;
        if (layer_dtype(&in->layers[i], in->dtype) == CURV_F64 || keep_floats)
            continue;
        if (total + n < total)
            return curv__fail(err, CURV_E_RANGE, "%s: layer statistics too large", name);
        total += n;
    }
    if (o->layers_cap < in->n_layers) {
        struct curv__layer_in *nl = curv__calloc_n(in->n_layers, sizeof *nl);
        if (!nl)
            return curv__fail(err, CURV_E_NOMEM, "%s: out of memory", name);
        curv__free(o->layers);
        o->layers = nl;
        o->layers_cap = in->n_layers;
    }
    if (total && !ensure(&o->lbuf, &o->lbuf_cap, total))
        return curv__fail(err, CURV_E_NOMEM, "%s: out of memory converting layer statistics", name);
    double *next = o->lbuf;
    for (size_t i = 0; i < in->n_layers; i++) {
        const curv_layer_stats *ls = &in->layers[i];
        const curv_dtype dt = layer_dtype(ls, in->dtype);
        curv_block_info b;
        curv_layout_block(o->layout, ls->block, &b);
        struct curv__layer_in *li = &o->layers[i];
        *li =
            (struct curv__layer_in){.block = ls->block, .rows = ls->rows, .examples = ls->examples};
        if (dt == CURV_F32 && keep_floats) {
            li->acts_f = ls->acts;
            li->signals_f = ls->signals;
        } else {
            li->acts = as_doubles(ls->acts, dt, next, ls->rows * b.n_in);
            if (dt == CURV_F32) /* lbuf is NULL for float64: no arithmetic on it */
                next += ls->rows * b.n_in;
            li->signals = as_doubles(ls->signals, dt, next, ls->rows * b.n_out);
            if (dt == CURV_F32)
                next += ls->rows * b.n_out;
        }
        curv_status st =
            check_finite(o, b.name, "acts", li->acts, li->acts_f, ls->rows, b.n_in, err);
        if (st == CURV_OK)
            st = check_finite(o, b.name, "signals", li->signals, li->signals_f, ls->rows, b.n_out,
                              err);
        if (st != CURV_OK)
            return st;
    }
    qsort(o->layers, in->n_layers, sizeof *o->layers, by_block);
    for (size_t i = 1; i < in->n_layers; i++)
        if (o->layers[i].block == o->layers[i - 1].block) {
            curv_block_info b;
            curv_layout_block(o->layout, o->layers[i].block, &b);
            return curv__fail(err, CURV_E_INVALID, "%s: block '%s' has two layer entries", name,
                              b.name);
        }
    a->layers = o->layers;
    a->n_layers = in->n_layers;
    return CURV_OK;
}

static curv_status load_grad_sq(curv_opt *o, const curv_step_input *in, struct curv__step_args *a,
                                curv_error *err)
{
    const char *name = curv_opt_kind_name(o->kind);
    if (!in->grad_sq)
        return CURV_OK;
    if (!(o->vt->inputs & CURV_INPUT_GRAD_SQ))
        return curv__fail(err, CURV_E_INVALID,
                          "%s takes no grad_sq (squared per-example "
                          "gradients)",
                          name);
    const double *v;
    curv_status st = load_vec(o, in->grad_sq, in->dtype, &o->sbuf, &v, NULL, "grad_sq", err);
    if (st != CURV_OK)
        return st;
    for (size_t i = 0; i < o->dim; i++)
        if (v[i] < 0) {
            char where[160];
            curv__locate(o->layout, i, where, sizeof where);
            return curv__fail(err, CURV_E_INVALID,
                              "%s: grad_sq is %g at element %zu, %s; "
                              "squares are >= 0",
                              name, v[i], i, where);
        }
    a->grad_sq = v;
    return CURV_OK;
}

curv_status curv__step_args_build(curv_opt *o, const curv_step_input *in, struct curv__step_args *a,
                                  curv_error *err)
{
    const char *name = curv_opt_kind_name(o->kind);
    *a = (struct curv__step_args){
        .loss = in->loss, .has_loss = in->has_loss != 0, .batch = in->batch};
    if (in->len != o->dim) {
        char shapes[200];
        curv__describe(o->layout, shapes, sizeof shapes);
        return curv__fail(err, CURV_E_SHAPE,
                          "%s: grad has %zu elements, the layout needs %zu (blocks: %s)", name,
                          in->len, o->dim, shapes);
    }
    if (a->has_loss && curv__first_nonfinite(&in->loss, 1) == 0)
        return curv__fail(err, CURV_E_NONFINITE, "%s: loss is %g", name, in->loss);
    curv_status st = load_vec(o, in->grad, in->dtype, &o->gbuf, &a->g, &a->g_sumsq, "grad", err);
    if (st == CURV_OK && in->params)
        st = load_vec(o, in->params, in->dtype, &o->pbuf, &a->theta, NULL, "params", err);
    if (st == CURV_OK)
        st = load_grad_sq(o, in, a, err);
    if (st == CURV_OK)
        st = load_layers(o, in, a, err);
    return st;
}
