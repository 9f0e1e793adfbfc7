/* SPDX-License-Identifier: MIT */
/*
 * Numeric extremes through every kind's step (issue 21): after a few
 * ordinary steps, one step whose gradient, parameters, squared gradients,
 * layer statistics, loss or callback answers hold finite values up to
 * DBL_MAX. Whatever a step does with them, it either is refused and
 * changes nothing, or it is taken with a finite update and leaves a state
 * that saves, loads and takes another ordinary step. A state that holds an
 * infinity cannot be loaded again, so a session that took such a step
 * would be lost for good.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define D TU_D_MIXED
#define ROWS_FC 5
#define ROWS_CONV 10 /* 5 examples x 2 positions */

/* Where the extreme value goes. */
enum where { W_GRAD, W_PARAMS, W_GRAD_SQ, W_ACTS, W_SIGNALS, W_LOSS, W_ANSWER, W_COUNT };
static const char *const WHERE[W_COUNT] = {"grad",    "params", "grad_sq", "acts",
                                           "signals", "loss",   "answers"};

struct input {
    double g[D], theta[D], gsq[D], loss;
    double acts_fc[ROWS_FC * 4], sig_fc[ROWS_FC * 3];
    double acts_conv[ROWS_CONV * 8], sig_conv[ROWS_CONV * 2];
    curv_layer_stats layers[2];
    curv_step_input in;
};

/* An ordinary step's input (seeded), with only what @kind reads. */
static void make_input(struct input *x, curv_opt_kind kind, uint64_t seed)
{
    tu_rng r;
    tu_rng_seed(&r, seed);
    tu_fill_normal(&r, x->g, D, 0.1);
    tu_fill_normal(&r, x->theta, D, 1.0);
    for (size_t i = 0; i < D; i++)
        x->gsq[i] = 2 * x->g[i] * x->g[i] + 1e-4;
    tu_fill_normal(&r, x->acts_fc, ROWS_FC * 4, 1.0);
    tu_fill_normal(&r, x->sig_fc, ROWS_FC * 3, 0.5);
    tu_fill_normal(&r, x->acts_conv, ROWS_CONV * 8, 1.0);
    tu_fill_normal(&r, x->sig_conv, ROWS_CONV * 2, 0.5);
    x->loss = 2.0;
    x->layers[0] = (curv_layer_stats){
        .block = 0, .rows = ROWS_FC, .examples = ROWS_FC, .acts = x->acts_fc, .signals = x->sig_fc};
    x->layers[1] = (curv_layer_stats){.block = 1,
                                      .rows = ROWS_CONV,
                                      .examples = ROWS_FC,
                                      .acts = x->acts_conv,
                                      .signals = x->sig_conv};
    const unsigned takes = curv_opt_kind_inputs(kind);
    x->in = (curv_step_input){.grad = x->g,
                              .params = x->theta,
                              .len = D,
                              .dtype = CURV_F64,
                              .loss = x->loss,
                              .has_loss = 1,
                              .batch = ROWS_FC};
    if (takes & CURV_INPUT_GRAD_SQ)
        x->in.grad_sq = x->gsq;
    if (takes & CURV_INPUT_LAYERS) {
        x->in.layers = x->layers;
        x->in.n_layers = 2;
    }
}

/* A trainer with an identity curvature whose answers are scaled by @scale
 * (1: honest). */
struct trainer {
    tu_quad q;
    double G[D * D];
    double scale;
};

static void answer(void *ctx, const curv_request *req, double *values)
{
    struct trainer *t = ctx;
    tu_quad_answer(&t->q, req, values);
    for (size_t i = 0; i < req->n_values; i++)
        values[i] *= t->scale;
}

static void trainer_init(struct trainer *t, const struct input *x)
{
    memset(t->G, 0, sizeof t->G);
    for (size_t i = 0; i < D; i++)
        t->G[i * D + i] = 1.0;
    t->q = (tu_quad){.d = D, .G = t->G, .g = x->g, .h0 = x->loss};
    t->scale = 1.0;
}

/* Put @m at a few elements of the place @w of @x (and its sign flipped at
 * one), or scale the trainer's answers by it. */
static void make_extreme(struct input *x, struct trainer *t, enum where w, double m)
{
    double *at = NULL;
    size_t n = 0;
    switch (w) {
    case W_GRAD:
        at = x->g, n = D;
        break;
    case W_PARAMS:
        at = x->theta, n = D;
        break;
    case W_GRAD_SQ:
        at = x->gsq, n = D;
        break;
    case W_ACTS:
        at = x->acts_fc, n = ROWS_FC * 4;
        break;
    case W_SIGNALS:
        at = x->sig_conv, n = ROWS_CONV * 2;
        break;
    case W_LOSS:
        x->loss = x->in.loss = m;
        return;
    default:
        t->scale = m;
        return;
    }
    at[0] = m, at[n / 2] = -m, at[n - 1] = m;
}

/* Report a failed case and count it (every case runs, all are listed). */
#define BAD(...) (print_error(__VA_ARGS__), print_error("\n"), bad = 1)

/* Steps 1..@n of @kind's inputs through @o, each of which must succeed. */
static void steps_ok(curv_opt *o, curv_opt_kind kind, uint64_t n, struct input *x,
                     struct trainer *t, double *u)
{
    curv_error err;
    for (uint64_t k = 1; k <= n; k++) {
        make_input(x, kind, k);
        trainer_init(t, x);
        tu_assert_status(tu_drive(o, &x->in, answer, t, u, NULL, &err), CURV_OK, &err);
    }
}

/* One kind, one place, one magnitude; 1 when it failed. */
static int check(curv_opt_kind kind, const curv_config *c, const char *variant, enum where w,
                 double m)
{
    int bad = 0;
    curv_layout *l = tu_opt_mixed_layout();
    curv_opt *o = tu_new_opt(kind, l, c);
    struct input x;
    struct trainer t;
    double u[D];
    curv_error err;
    steps_ok(o, kind, 3, &x, &t, u);
    char what[160];
    snprintf(what, sizeof what, "%s%s, %s = %g", curv_opt_kind_name(kind), variant, WHERE[w], m);
    /* Up to two extreme steps in a row: an accumulator may overflow only
     * at the second. */
    for (int rep = 1; rep <= 2 && !bad; rep++) {
        size_t len;
        unsigned char *before = tu_snapshot(o, &len);
        make_input(&x, kind, 3 + (uint64_t)rep);
        trainer_init(&t, &x);
        make_extreme(&x, &t, w, m);
        size_t n_req;
        curv_status st = tu_drive(o, &x.in, answer, &t, u, &n_req, &err);
        if (st != CURV_OK) {
            if (st != CURV_E_NONFINITE && st != CURV_E_INVALID && st != CURV_E_NUMERIC &&
                st != CURV_E_RANGE)
                BAD("%s, step %d: refused with %s: %s", what, rep, curv_status_name(st), err.text);
            if (n_req == 0) { /* refused at once: nothing may have changed */
                size_t alen;
                unsigned char *after = tu_snapshot(o, &alen);
                if (alen != len || memcmp(after, before, len) != 0)
                    BAD("%s, step %d: refused (%s), but the state changed", what, rep, err.text);
                curv_free(after);
            } else { /* an answer refused: the step is abandoned, the session steps on */
                curv_opt_cancel(o);
                make_input(&x, kind, 9);
                trainer_init(&t, &x);
                if (tu_drive(o, &x.in, answer, &t, u, NULL, &err) != CURV_OK)
                    BAD("%s, step %d: after an answer was refused, the next step fails: %s", what,
                        rep, err.text);
            }
            curv_free(before);
            break;
        }
        for (size_t i = 0; i < D; i++)
            if (!isfinite(u[i])) {
                BAD("%s, step %d: taken with update[%zu] = %g", what, rep, i, u[i]);
                break;
            }
        size_t blen;
        unsigned char *blob = tu_snapshot(o, &blen);
        curv_opt *back = NULL;
        if (curv_opt_load(blob, blen, &back, &err) != CURV_OK) {
            BAD("%s, step %d: taken, but its state does not load: %s", what, rep, err.text);
        } else {
            make_input(&x, kind, 9);
            trainer_init(&t, &x);
            if (tu_drive(back, &x.in, answer, &t, u, NULL, &err) != CURV_OK)
                BAD("%s, step %d: taken, but the next step fails: %s", what, rep, err.text);
            curv_opt_free(back);
        }
        curv_free(blob);
        curv_free(before);
    }
    curv_opt_free(o);
    curv_layout_free(l);
    return bad;
}

static void test_every_kind_survives_extremes(void **state)
{
    (void)state;
    static const double mags[] = {1e100, 1e160, 1e200, 1e300, DBL_MAX};
    int failed = 0;
    for (int kind = 0; kind < CURV_OPT_KIND_COUNT; kind++) {
        if (!curv_opt_kind_name((curv_opt_kind)kind))
            continue;
        /* The defaults, and where a kind has momentum, momentum on. */
        curv_config *mom = NULL;
        if (tu_has_param((curv_opt_kind)kind, "momentum")) {
            const tu_kv kv[] = {{"momentum", 0.9}};
            mom = tu_config(kv, 1);
        }
        for (int w = 0; w < W_COUNT; w++)
            for (size_t i = 0; i < sizeof mags / sizeof mags[0]; i++) {
                failed += check((curv_opt_kind)kind, NULL, "", (enum where)w, mags[i]);
                if (mom)
                    failed +=
                        check((curv_opt_kind)kind, mom, " (momentum 0.9)", (enum where)w, mags[i]);
            }
        curv_config_free(mom);
    }
    assert_int_equal(failed, 0);
}

/* After two ordinary steps, a step whose gradient @set makes extreme is
 * refused with CURV_E_NONFINITE naming @what at element @at, and changes
 * nothing (found by fuzz_step_extremes: AdaGrad-BMA answered
 * CURV_E_INVALID "bma_inv_sqrt: B[0][1] = -nan", and K-FAC took the step
 * and saved a fallback sum of +inf, a state that no longer loads). */
static void expect_refused(curv_opt_kind kind, const curv_config *c, void (*set)(double *g),
                           const char *what, size_t at)
{
    curv_layout *l = tu_opt_mixed_layout();
    curv_opt *o = tu_new_opt(kind, l, c);
    struct input x;
    struct trainer t;
    double u[D];
    curv_error err;
    steps_ok(o, kind, 2, &x, &t, u);
    size_t len, alen;
    unsigned char *before = tu_snapshot(o, &len);
    make_input(&x, kind, 3);
    trainer_init(&t, &x);
    set(x.g);
    tu_assert_status(tu_drive(o, &x.in, answer, &t, u, NULL, &err), CURV_E_NONFINITE, &err);
    char where[64];
    snprintf(where, sizeof where, "at element %zu", at);
    if (!strstr(err.text, what) || !strstr(err.text, where))
        fail_msg("%s: \"%s\" does not name %s %s", curv_opt_kind_name(kind), err.text, what, where);
    unsigned char *after = tu_snapshot(o, &alen);
    assert_int_equal(alen, len);
    assert_memory_equal(after, before, len);
    curv_free(before);
    curv_free(after);
    curv_opt_free(o);
    curv_layout_free(l);
}

static void huge_first(double *g)
{
    g[0] = 1e200; /* g² overflows */
}

static void large_fc(double *g)
{
    for (size_t i = 0; i < 15; i++)
        g[i] = 1e154; /* each g² finite, the block's sum squared is not */
}

static void huge_gain(double *g)
{
    g[34] = 1e200; /* in the vector block "gain" only */
}

static void test_overflowing_sums_are_named(void **state)
{
    (void)state;
    expect_refused(CURV_OPT_ADAGRAD_BMA, NULL, huge_first, "r + g²", 0);
    expect_refused(CURV_OPT_ADAGRAD_BMA, NULL, large_fc, "U + u uᵀ", 0);
    curv_config *simple = curv_config_new();
    tu_config_set(simple, "mode", 0, "simple");
    expect_refused(CURV_OPT_KFAC, simple, huge_gain, "fallback's sum", 34);
    expect_refused(CURV_OPT_KFAC, NULL, huge_gain, "fallback's sum", 34);
    curv_config_free(simple);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_kind_survives_extremes),
        cmocka_unit_test(test_overflowing_sums_are_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
