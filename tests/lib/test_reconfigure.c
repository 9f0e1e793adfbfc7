/* SPDX-License-Identifier: MIT */
/* curv_opt_reconfigure and curv_opt_get_param_str: hyperparameters change
 * between steps, the state stays, fixed parameters are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

enum { D = 12 };

static curv_layout *layout(void)
{
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 2, 3, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "gain", 4, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(l), D);
    return l;
}

static curv_opt *make(curv_opt_kind kind, const curv_layout *l, const char *key, double v)
{
    curv_config *c = curv_config_new();
    if (key)
        assert_int_equal(curv_config_set_num(c, key, v, NULL), CURV_OK);
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_new(kind, l, c, &o, &err), CURV_OK, &err);
    curv_config_free(c);
    return o;
}

static void step(curv_opt *o, const double *g, double *u)
{
    curv_error err;
    curv_step_input in = {.grad = g, .len = D, .dtype = CURV_F64};
    tu_assert_status(curv_opt_step(o, &in, u, NULL, &err), CURV_OK, &err);
}

static curv_status reconf_num(curv_opt *o, const char *key, double v, curv_error *err)
{
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, key, v, NULL), CURV_OK);
    curv_status st = curv_opt_reconfigure(o, c, err);
    curv_config_free(c);
    return st;
}

/* AdaGrad-diag's update is η times a function of the history alone, so
 * halving η mid-run must halve the next update exactly (a power of 2). */
static void test_lr_change_keeps_state(void **state)
{
    (void)state;
    curv_layout *l = layout();
    curv_opt *a = make(CURV_OPT_ADAGRAD_DIAG, l, "lr", 0.1);
    curv_opt *b = make(CURV_OPT_ADAGRAD_DIAG, l, "lr", 0.1);
    tu_rng rng;
    tu_rng_seed(&rng, 3);
    double g[D], ua[D], ub[D];
    for (int t = 0; t < 3; t++) {
        tu_fill_normal(&rng, g, D, 1.0);
        step(a, g, ua);
        step(b, g, ub);
    }
    curv_error err;
    tu_assert_status(reconf_num(a, "lr", 0.05, &err), CURV_OK, &err);
    double lr;
    assert_int_equal(curv_opt_get_param(a, "lr", &lr), CURV_OK);
    assert_true(lr == 0.05);
    assert_int_equal(curv_opt_steps(a), 3);
    tu_fill_normal(&rng, g, D, 1.0);
    step(a, g, ua);
    step(b, g, ub);
    for (size_t i = 0; i < D; i++)
        assert_true(ua[i] == 0.5 * ub[i]);
    /* The change is part of the saved state. */
    size_t len;
    unsigned char *blob = tu_snapshot(a, &len);
    curv_opt *c = NULL;
    assert_int_equal(curv_opt_load(blob, len, &c, NULL), CURV_OK);
    assert_int_equal(curv_opt_get_param(c, "lr", &lr), CURV_OK);
    assert_true(lr == 0.05);
    curv_free(blob);
    curv_opt_free(a);
    curv_opt_free(b);
    curv_opt_free(c);
    curv_layout_free(l);
}

/* Parameters that shape the state, unknown keys and bad values are
 * refused and change nothing. */
static void test_refusals_change_nothing(void **state)
{
    (void)state;
    curv_layout *l = layout();
    const struct {
        curv_opt_kind kind;
        const char *key;
        double value;
    } cases[] = {
        {CURV_OPT_MBAG, "tau", 4},
        {CURV_OPT_MBAG_N, "conv_tau", 4},
        {CURV_OPT_MBAG_EMA, "tau", 8},
        {CURV_OPT_ADAGRAD_FULL, "max_dim", 100},
        {CURV_OPT_ADAGRAD_BMA, "max_blocks", 10},
        {CURV_OPT_SGD, "no_such_key", 1},
        {CURV_OPT_SGD, "lr", -1},
        {CURV_OPT_ADAGRAD_DIAG, "eps", 0},
    };
    double g[D], u[D];
    for (size_t i = 0; i < D; i++)
        g[i] = sin((double)i + 1);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        curv_opt *o = make(cases[k].kind, l, NULL, 0);
        step(o, g, u);
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        curv_error err;
        tu_assert_status(reconf_num(o, cases[k].key, cases[k].value, &err), CURV_E_CONFIG, &err);
        assert_non_null(strstr(err.text, cases[k].key));
        tu_assert_unchanged(o, snap, len);
        curv_free(snap);
        curv_opt_free(o);
    }
    /* The partition is an enumeration. */
    curv_opt *o = make(CURV_OPT_ADAGRAD_BMA, l, NULL, 0);
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_str(c, "partition", "row", NULL), CURV_OK);
    curv_error err;
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_E_CONFIG, &err);
    assert_non_null(strstr(err.text, "partition"));
    tu_assert_status(curv_opt_reconfigure(NULL, c, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_reconfigure(o, NULL, &err), CURV_E_INVALID, &err);
    curv_config_free(c);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* Momentum switched on after some plain steps starts from a zero velocity:
 * Δ_t = −η v_t with v_t = μ v_{t-1} + g_t, v = 0 at the switch. Saving and
 * loading around the switch keeps the buffer. */
static void test_sgd_momentum_switched_on(void **state)
{
    (void)state;
    curv_layout *l = layout();
    const double lr = 0.1, mu = 0.9;
    curv_opt *o = make(CURV_OPT_SGD, l, "lr", lr);
    double g[D], u[D], v[D] = {0};
    tu_rng rng;
    tu_rng_seed(&rng, 9);
    tu_fill_normal(&rng, g, D, 1.0);
    step(o, g, u);
    curv_error err;
    tu_assert_status(reconf_num(o, "momentum", mu, &err), CURV_OK, &err);
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len); /* saved before the buffer exists */
    curv_opt *o2 = NULL;
    assert_int_equal(curv_opt_load(blob, len, &o2, NULL), CURV_OK);
    curv_free(blob);
    for (int t = 0; t < 4; t++) {
        tu_fill_normal(&rng, g, D, 1.0);
        double u2[D];
        step(o, g, u);
        step(o2, g, u2);
        for (size_t i = 0; i < D; i++) {
            v[i] = mu * v[i] + g[i];
            assert_true(fabs(u[i] + lr * v[i]) <= 1e-15 * (1 + fabs(lr * v[i])));
            assert_true(u2[i] == u[i]);
        }
    }
    blob = tu_snapshot(o, &len);
    curv_opt *o3 = NULL;
    assert_int_equal(curv_opt_load(blob, len, &o3, NULL), CURV_OK);
    tu_assert_unchanged(o3, blob, len);
    curv_free(blob);
    curv_opt_free(o);
    curv_opt_free(o2);
    curv_opt_free(o3);
    curv_layout_free(l);
}

static void test_param_strings(void **state)
{
    (void)state;
    curv_layout *l = layout();
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_str(c, "lr_schedule", "multistep", NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_milestones", "100,150", NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "nesterov", 1, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr", 0.25, NULL), CURV_OK);
    curv_opt *o = NULL;
    assert_int_equal(curv_opt_new(CURV_OPT_SGD, l, c, &o, NULL), CURV_OK);
    char buf[64];
    assert_int_equal(curv_opt_get_param_str(o, "lr_schedule", buf, sizeof buf), CURV_OK);
    assert_string_equal(buf, "multistep");
    assert_int_equal(curv_opt_get_param_str(o, "lr_milestones", buf, sizeof buf), CURV_OK);
    assert_string_equal(buf, "100,150");
    assert_int_equal(curv_opt_get_param_str(o, "nesterov", buf, sizeof buf), CURV_OK);
    assert_string_equal(buf, "true");
    assert_int_equal(curv_opt_get_param_str(o, "lr", buf, sizeof buf), CURV_OK);
    assert_true(strtod(buf, NULL) == 0.25);
    assert_int_equal(curv_opt_get_param_str(o, "lr_milestones", buf, 4), CURV_E_RANGE);
    assert_int_equal(curv_opt_get_param_str(o, "nope", buf, sizeof buf), CURV_E_INVALID);
    assert_int_equal(curv_opt_get_param_str(NULL, "lr", buf, sizeof buf), CURV_E_INVALID);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lr_change_keeps_state),
        cmocka_unit_test(test_refusals_change_nothing),
        cmocka_unit_test(test_sgd_momentum_switched_on),
        cmocka_unit_test(test_param_strings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
