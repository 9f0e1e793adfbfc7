/* SPDX-License-Identifier: MIT */
/* The optimizer front end (opt.c, param.c, config.c, sched.c): kinds,
 * hyperparameter introspection and validation, argument checks, non-finite
 * input, float32 delivery, learning-rate schedules. Save/load is in
 * test_opt_state.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Non-default settings that give every kind some state to carry. */
static curv_config *busy_config(curv_opt_kind kind)
{
    curv_config *c = curv_config_new();
    assert_non_null(c);
    assert_int_equal(curv_config_set_num(c, "lr", 0.05, NULL), CURV_OK);
    if (tu_has_param(kind, "momentum"))
        assert_int_equal(curv_config_set_num(c, "momentum", 0.9, NULL), CURV_OK);
    if (tu_has_param(kind, "eps"))
        assert_int_equal(curv_config_set_num(c, "eps", 1e-6, NULL), CURV_OK);
    return c;
}

static void test_kind_names(void **state)
{
    (void)state;
    static const char *const want[] = {"sgd",         "adagrad_diag", "adagrad_full",
                                       "adagrad_bma", "mbag",         "mbag_ema",
                                       "mbag_n",      "kfac",         "hf"};
    assert_int_equal(CURV_OPT_KIND_COUNT, sizeof want / sizeof want[0]);
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        const char *name = curv_opt_kind_name((curv_opt_kind)k);
        if (!want[k]) {
            assert_null(name);
            assert_int_equal(curv_opt_param_count((curv_opt_kind)k), 0);
            continue;
        }
        assert_non_null(name);
        assert_string_equal(name, want[k]);
        curv_opt_kind got = CURV_OPT_KIND_COUNT;
        assert_int_equal(curv_opt_kind_parse(name, &got), CURV_OK);
        assert_int_equal(got, k);
    }
    assert_null(curv_opt_kind_name(CURV_OPT_KIND_COUNT));
    assert_null(curv_opt_kind_name((curv_opt_kind)-1));
    const char *bad[] = {"", "SGD", "sgd ", "adagrad", "adagrad_bma2", "mbag_"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        curv_opt_kind got = CURV_OPT_MBAG_N;
        assert_int_equal(curv_opt_kind_parse(bad[i], &got), CURV_E_INVALID);
        assert_int_equal(got, CURV_OPT_MBAG_N); /* untouched */
    }
    curv_opt_kind got;
    assert_int_equal(curv_opt_kind_parse(NULL, &got), CURV_E_INVALID);
}

/* Index of @s in the '|'-separated @choices, or -1. */
static int choice_pos(const char *choices, const char *s)
{
    size_t n = strlen(s);
    int idx = 0;
    for (const char *p = choices; p; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && memcmp(p, s, n) == 0)
            return idx;
        p = bar ? bar + 1 : NULL;
    }
    return -1;
}

static void test_param_introspection(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!curv_opt_kind_name((curv_opt_kind)k))
            continue;
        size_t n = curv_opt_param_count((curv_opt_kind)k);
        assert_true(n > 0);
        assert_true(tu_has_param((curv_opt_kind)k, "lr"));
        curv_opt *o = tu_new_opt((curv_opt_kind)k, l, NULL); /* all defaults */
        for (size_t i = 0; i < n; i++) {
            curv_param_info p;
            assert_int_equal(curv_opt_param_info((curv_opt_kind)k, i, &p), CURV_OK);
            assert_non_null(p.name);
            assert_non_null(p.doc);
            assert_true(strlen(p.doc) > 0);
            for (size_t j = 0; j < i; j++) {
                curv_param_info q;
                assert_int_equal(curv_opt_param_info((curv_opt_kind)k, j, &q), CURV_OK);
                assert_string_not_equal(p.name, q.name);
            }
            if (strcmp(p.name, "lr") == 0)
                assert_int_equal(p.type, CURV_PARAM_REAL);
            /* The resolved default is the documented one. */
            double v = -12345;
            assert_int_equal(curv_opt_get_param(o, p.name, &v), CURV_OK);
            switch (p.type) {
            case CURV_PARAM_REAL:
            case CURV_PARAM_INT:
            case CURV_PARAM_BOOL:
                assert_true(p.min <= p.def && p.def <= p.max);
                assert_true(v == p.def);
                if (p.type == CURV_PARAM_BOOL)
                    assert_true(p.min == 0 && p.max == 1);
                if (p.type == CURV_PARAM_INT)
                    assert_true(p.def == floor(p.def));
                break;
            case CURV_PARAM_ENUM:
                assert_non_null(p.choices);
                assert_non_null(p.def_str);
                assert_true(choice_pos(p.choices, p.def_str) >= 0);
                assert_true(v == choice_pos(p.choices, p.def_str));
                break;
            case CURV_PARAM_LIST: {
                assert_non_null(p.def_str);
                size_t entries = *p.def_str ? 1 : 0;
                for (const char *c = p.def_str; *c; c++)
                    entries += *c == ',';
                assert_true(v == (double)entries);
                break;
            }
            default:
                fail_msg("param %s has unknown type %d", p.name, (int)p.type);
            }
        }
        curv_param_info p;
        assert_int_equal(curv_opt_param_info((curv_opt_kind)k, n, &p), CURV_E_INVALID);
        assert_int_equal(curv_opt_param_info((curv_opt_kind)k, 0, NULL), CURV_E_INVALID);
        curv_opt_free(o);
    }
    curv_param_info p;
    assert_int_equal(curv_opt_param_count(CURV_OPT_KIND_COUNT), 0);
    assert_int_equal(curv_opt_param_info(CURV_OPT_KIND_COUNT, 0, &p), CURV_E_INVALID);
    assert_int_equal(curv_opt_param_info((curv_opt_kind)-1, 0, &p), CURV_E_INVALID);
    curv_layout_free(l);
}

static void test_config_object(void **state)
{
    (void)state;
    curv_config *c = curv_config_new();
    curv_error err;
    char key64[65];
    memset(key64, 'k', 64);
    key64[64] = '\0';
    assert_int_equal(curv_config_count(c), 0);
    assert_int_equal(curv_config_set_num(c, "lr", 0.1, &err), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr", 0.2, &err), CURV_OK); /* replaces */
    assert_int_equal(curv_config_set_str(c, "lr_schedule", "step", &err), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_schedule", "exponential", &err), CURV_OK);
    assert_int_equal(curv_config_count(c), 2);
    assert_int_equal(curv_config_set_num(NULL, "lr", 1, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_num(c, NULL, 1, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_num(c, "", 1, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_num(c, key64, 1, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_num(c, "x", NAN, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_num(c, "x", INFINITY, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_num(c, "lr", -INFINITY, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_str(c, "x", NULL, &err), CURV_E_INVALID);
    assert_int_equal(curv_config_set_str(c, key64, "a", &err), CURV_E_INVALID);
    assert_int_equal(curv_config_count(c), 2);
    key64[63] = '\0'; /* 63 bytes is allowed */
    assert_int_equal(curv_config_set_num(c, key64, 1, &err), CURV_OK);
    assert_int_equal(curv_config_count(c), 3);
    assert_int_equal(curv_config_count(NULL), 0);
    /* The replaced values are the ones used. */
    curv_config_free(c);
    c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "lr", 0.1, &err), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr", 0.25, &err), CURV_OK);
    curv_layout *l = tu_opt_mixed_layout();
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, c);
    double v;
    assert_int_equal(curv_opt_get_param(o, "lr", &v), CURV_OK);
    assert_true(v == 0.25);
    curv_opt_free(o);
    curv_layout_free(l);
    curv_config_free(c);
    curv_config_free(NULL);
}

/* Create @kind with one setting; expect E_CONFIG naming @key. */
static void expect_config_error(curv_opt_kind kind, const char *key, const char *str, double num)
{
    curv_layout *l = tu_opt_mixed_layout();
    curv_config *c = curv_config_new();
    tu_config_set(c, key, num, str);
    curv_opt *sentinel = (curv_opt *)&l, *o = sentinel;
    curv_error err;
    curv_error_clear(&err);
    curv_status st = curv_opt_new(kind, l, c, &o, &err);
    int written = o != sentinel;
    if (st == CURV_OK && written)
        curv_opt_free(o); /* accepted by mistake: clean up before failing */
    curv_config_free(c);
    curv_layout_free(l);
    if (st != CURV_E_CONFIG)
        fail_msg("%s: %s = %s / %g: got %s, want E_CONFIG (%s)", curv_opt_kind_name(kind), key,
                 str ? str : "(number)", num, curv_status_name(st),
                 st == CURV_OK ? "accepted" : err.text);
    assert_int_equal(err.status, CURV_E_CONFIG);
    assert_false(written);
    if (!strstr(err.text, key))
        fail_msg("error text does not name '%s': %s", key, err.text);
}

static void expect_config_ok(curv_opt_kind kind, const char *key, const char *str, double num)
{
    curv_layout *l = tu_opt_mixed_layout();
    curv_config *c = curv_config_new();
    tu_config_set(c, key, num, str);
    curv_opt *o = tu_new_opt(kind, l, c);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
}

static void test_config_errors(void **state)
{
    (void)state;
    const curv_opt_kind S = CURV_OPT_SGD;
    expect_config_error(S, "lrr", NULL, 0.1);                          /* unknown key */
    expect_config_error(CURV_OPT_ADAGRAD_DIAG, "momentum", NULL, 0.5); /* another kind's */
    expect_config_error(S, "lr", "0.1", 0);                            /* string for a number */
    expect_config_error(S, "lr_schedule", NULL, 1);                    /* number for an enum */
    expect_config_error(S, "lr_milestones", NULL, 3);                  /* number for a list */
    expect_config_error(S, "nesterov", "1", 0);                        /* string for a bool */
    expect_config_error(S, "lr", NULL, -0.1);                          /* out of range */
    expect_config_error(S, "lr", NULL, 2e6);
    expect_config_error(S, "momentum", NULL, 1.0);
    expect_config_error(S, "lr_gamma", NULL, 1.5);
    expect_config_error(S, "lr_step_size", NULL, 0);
    expect_config_error(S, "lr_step_size", NULL, 2.5); /* non-integer INT */
    expect_config_error(S, "nesterov", NULL, 0.5);     /* bool not 0/1 */
    expect_config_error(S, "nesterov", NULL, 2);
    const curv_opt_kind K = CURV_OPT_KFAC; /* the K-FAC safeguards */
    expect_config_error(K, "coefficients", "loose", 0);
    expect_config_error(K, "coefficients", NULL, 1);
    expect_config_error(K, "alpha_max", NULL, -1);
    expect_config_error(K, "mu_max", NULL, -0.5);
    expect_config_error(K, "mu_max", "0.9", 0);
    expect_config_error(K, "reject_rise", NULL, 2);
    expect_config_error(K, "kl_clip", NULL, -1e-3);
    expect_config_error(K, "kl_clip", NULL, 1e13);
    expect_config_error(K, "gamma_rule", "tied", 0);
    expect_config_error(K, "precision", "fp16", 0); /* not a choice */
    expect_config_error(K, "precision", "FP32", 0);
    expect_config_error(K, "precision", NULL, 32); /* an enum takes a string */
    expect_config_error(K, "noise", "empirical", 0);
    expect_config_error(K, "noise_floor", NULL, -0.1);
    expect_config_error(K, "noise_floor", NULL, 1.5);
    expect_config_error(K, "noise_momentum", NULL, 2); /* bool not 0/1 */
    expect_config_error(K, "noise_momentum", "on", 0);
    expect_config_error(S, "lr_schedule", "cosine", 0); /* bad enum */
    expect_config_error(S, "lr_schedule", "", 0);
    expect_config_error(S, "lr_schedule", "Step", 0);
    expect_config_error(S, "lr_schedule", "step|constant", 0);
    const char *bad_lists[] = {"3,2", "a",  "2,2", "1,,2",
                               "1,",  ",1", "0",   "-1",
                               " 1",  "1 ", "1;2", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17"};
    for (size_t i = 0; i < sizeof bad_lists / sizeof bad_lists[0]; i++)
        expect_config_error(S, "lr_milestones", bad_lists[i], 0);
    expect_config_error(CURV_OPT_ADAGRAD_DIAG, "eps", NULL, 2);
    expect_config_error(CURV_OPT_ADAGRAD_BMA, "eps", NULL, 0);
    expect_config_error(CURV_OPT_ADAGRAD_BMA, "partition", "rows", 0);
    expect_config_error(CURV_OPT_ADAGRAD_FULL, "max_dim", NULL, 0);
    /* Boundary values and well-formed lists are accepted. */
    expect_config_ok(S, "lr_milestones", "", 0);
    expect_config_ok(S, "lr_milestones", "5", 0);
    expect_config_ok(S, "lr_milestones", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", 0);
    expect_config_ok(S, "lr", NULL, 0);
    expect_config_ok(S, "momentum", NULL, 0.9999);
    expect_config_ok(S, "lr_step_size", NULL, 1);
    expect_config_ok(S, "nesterov", NULL, 1);
}

/* A list entry too large for 64 bits is not the number that was written:
 * it must be refused, not saturated to 2^64 - 1. */
static void test_list_overflow_rejected(void **state)
{
    (void)state;
    expect_config_error(CURV_OPT_SGD, "lr_milestones", "5,99999999999999999999999", 0);
    expect_config_error(CURV_OPT_SGD, "lr_milestones", "18446744073709551616", 0);
}

static void test_new_bad_args(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout(), *empty = curv_layout_new();
    curv_opt *sentinel = (curv_opt *)&l, *o = sentinel;
    curv_error err;
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        tu_assert_status(curv_opt_new((curv_opt_kind)k, empty, NULL, &o, &err), CURV_E_INVALID,
                         &err);
        assert_int_equal(err.status, CURV_E_INVALID);
        tu_assert_status(curv_opt_new((curv_opt_kind)k, NULL, NULL, &o, &err), CURV_E_INVALID,
                         &err);
        tu_assert_status(curv_opt_new((curv_opt_kind)k, l, NULL, NULL, &err), CURV_E_INVALID, &err);
        assert_ptr_equal(o, sentinel);
    }
    tu_assert_status(curv_opt_new(CURV_OPT_KIND_COUNT, l, NULL, &o, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_new((curv_opt_kind)-1, l, NULL, &o, &err), CURV_E_INVALID, &err);
    assert_ptr_equal(o, sentinel);
    curv_opt_free(NULL);
    curv_layout_free(empty);
    curv_layout_free(l);
}

static void test_accessors_and_layout_copy(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    curv_opt *o = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, l, NULL);
    curv_layout_free(l); /* the optimizer holds its own copy */
    const curv_layout *ol = curv_opt_layout(o);
    assert_int_equal(curv_layout_dim(ol), TU_D_MIXED);
    assert_int_equal(curv_layout_nblocks(ol), 3);
    assert_int_equal(curv_layout_find(ol, "gain"), 2);
    assert_int_equal(curv_opt_kind_of(o), CURV_OPT_ADAGRAD_DIAG);
    assert_int_equal(curv_opt_steps(o), 0);
    double g[TU_D_MIXED], u[TU_D_MIXED];
    for (size_t i = 0; i < TU_D_MIXED; i++)
        g[i] = 0.1 * (double)i - 1;
    tu_step_ok(o, g, NULL, u);
    tu_step_ok(o, g, NULL, u);
    assert_int_equal(curv_opt_steps(o), 2);
    double v = 7;
    assert_int_equal(curv_opt_get_param(o, "nope", &v), CURV_E_INVALID);
    assert_int_equal(curv_opt_get_param(o, NULL, &v), CURV_E_INVALID);
    assert_int_equal(curv_opt_get_param(o, "lr", NULL), CURV_E_INVALID);
    assert_int_equal(curv_opt_get_param(NULL, "lr", &v), CURV_E_INVALID);
    assert_true(v == 7);
    curv_opt_free(o);
}

static void test_get_param_values(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "lr", 0.05, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "momentum", 0.5, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "nesterov", 1, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr_step_size", 17, NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_schedule", "multistep", NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_milestones", "3,7,9", NULL), CURV_OK);
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, c);
    const struct {
        const char *name;
        double want;
    } cases[] = {{"lr", 0.05},         {"momentum", 0.5},  {"nesterov", 1},
                 {"lr_step_size", 17}, {"lr_schedule", 2}, {"lr_milestones", 3},
                 {"weight_decay", 0},  {"lr_gamma", 0.1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double v = NAN;
        assert_int_equal(curv_opt_get_param(o, cases[i].name, &v), CURV_OK);
        if (v != cases[i].want)
            fail_msg("%s = %g, want %g", cases[i].name, v, cases[i].want);
    }
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
}

static void test_step_bad_args(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    curv_config *c = busy_config(CURV_OPT_SGD);
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, c);
    double g[TU_D_MIXED], u[TU_D_MIXED];
    for (size_t i = 0; i < TU_D_MIXED; i++)
        g[i] = sin((double)i);
    tu_step_ok(o, g, NULL, u);
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    curv_error err;
    curv_step_input in = {.grad = g, .len = TU_D_MIXED, .dtype = CURV_F64};
    curv_step_input nog = {.grad = NULL, .params = g, .len = TU_D_MIXED, .dtype = CURV_F64};
    curv_step_input badt = {.grad = g, .len = TU_D_MIXED, .dtype = (curv_dtype)7};
    tu_assert_status(curv_opt_step(NULL, &in, u, NULL, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_step(o, NULL, u, NULL, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_step(o, &nog, u, NULL, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_step(o, &in, NULL, NULL, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_step(o, &badt, u, NULL, &err), CURV_E_INVALID, &err);
    assert_int_equal(err.status, CURV_E_INVALID);
    /* A wrong length is a shape error that names every block's shape. */
    const size_t lens[] = {0, TU_D_MIXED - 1, TU_D_MIXED + 1};
    for (size_t k = 0; k < 3; k++) {
        curv_step_input bad = {.grad = g, .len = lens[k], .dtype = CURV_F64};
        u[0] = 42;
        tu_assert_status(curv_opt_step(o, &bad, u, NULL, &err), CURV_E_SHAPE, &err);
        assert_non_null(strstr(err.text, "'fc'"));
        assert_non_null(strstr(err.text, "'gain'"));
        assert_true(u[0] == 42);
    }
    tu_assert_unchanged(o, snap, len);
    assert_int_equal(curv_opt_steps(o), 1);
    curv_free(snap);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
}

/* NaN/Inf in grad or params, f64 and f32, for every kind: the text names
 * the block, the state and the update buffer stay as they were. The
 * offsets are those of tu_opt_mixed_layout() (fc at 0, conv at 15, gain at
 * 33). */
static void test_nonfinite_every_kind(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    const struct {
        size_t at;
        const char *block;
        int in_params;
        double value;
    } cases[] = {{34, "gain", 0, NAN}, {20, "conv", 0, INFINITY}, {0, "fc", 1, -INFINITY},
                 {36, "gain", 1, NAN}, {14, "fc", 0, -INFINITY},  {32, "conv", 1, NAN}};
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* layers or callbacks: their own suites drive them */
        curv_config *c = busy_config((curv_opt_kind)k);
        curv_opt *o = tu_new_opt((curv_opt_kind)k, l, c);
        double g[TU_D_MIXED], th[TU_D_MIXED], u[TU_D_MIXED];
        float gf[TU_D_MIXED], thf[TU_D_MIXED], uf[TU_D_MIXED];
        for (size_t i = 0; i < TU_D_MIXED; i++)
            g[i] = cos(0.3 * (double)i), th[i] = 0.01 * (double)i;
        tu_step_ok(o, g, th, u);
        tu_step_ok(o, g, th, u);
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        for (size_t j = 0; j < sizeof cases / sizeof cases[0]; j++)
            for (int f32 = 0; f32 < 2; f32++) {
                for (size_t i = 0; i < TU_D_MIXED; i++) {
                    g[i] = cos(0.3 * (double)i), th[i] = 0.01 * (double)i;
                    u[i] = 99, uf[i] = 99;
                }
                (cases[j].in_params ? th : g)[cases[j].at] = cases[j].value;
                for (size_t i = 0; i < TU_D_MIXED; i++)
                    gf[i] = (float)g[i], thf[i] = (float)th[i];
                curv_step_input in = {.grad = f32 ? (const void *)gf : g,
                                      .params = f32 ? (const void *)thf : th,
                                      .len = TU_D_MIXED,
                                      .dtype = f32 ? CURV_F32 : CURV_F64};
                curv_error err;
                curv_error_clear(&err);
                tu_assert_status(curv_opt_step(o, &in, f32 ? (void *)uf : u, NULL, &err),
                                 CURV_E_NONFINITE, &err);
                assert_int_equal(err.status, CURV_E_NONFINITE);
                /* It names the right block, and only that one. */
                static const char *const blocks[] = {"fc", "conv", "gain"};
                for (size_t b = 0; b < 3; b++)
                    if (!strstr(err.text, blocks[b]) != !!strcmp(blocks[b], cases[j].block))
                        fail_msg("%s: want block %s named: %s",
                                 curv_opt_kind_name((curv_opt_kind)k), cases[j].block, err.text);
                for (size_t i = 0; i < TU_D_MIXED; i++)
                    assert_true(u[i] == 99 && uf[i] == 99);
                tu_assert_unchanged(o, snap, len);
                assert_int_equal(curv_opt_steps(o), 2);
            }
        curv_free(snap);
        curv_opt_free(o);
        curv_config_free(c);
    }
    curv_layout_free(l);
}

static void test_resume_without_request(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* layers or callbacks: their own suites drive them */
        curv_opt *o = tu_new_opt((curv_opt_kind)k, l, NULL);
        double g[TU_D_MIXED], u[TU_D_MIXED], vals[2] = {1, 2};
        for (size_t i = 0; i < TU_D_MIXED; i++)
            g[i] = 0.5 - 0.03 * (double)i;
        tu_step_ok(o, g, NULL, u);
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        curv_response resp = {.seq = 0, .n_values = 2, .values = vals};
        curv_error err;
        tu_assert_status(curv_opt_resume(o, &resp, CURV_F64, u, NULL, &err), CURV_E_STATE, &err);
        assert_int_equal(err.status, CURV_E_STATE);
        tu_assert_status(curv_opt_resume(o, NULL, CURV_F64, u, NULL, &err), CURV_E_INVALID, &err);
        tu_assert_status(curv_opt_resume(o, &resp, CURV_F64, NULL, NULL, &err), CURV_E_INVALID,
                         &err);
        tu_assert_status(curv_opt_resume(NULL, &resp, CURV_F64, u, NULL, &err), CURV_E_INVALID,
                         &err);
        tu_assert_unchanged(o, snap, len);
        assert_int_equal(curv_opt_steps(o), 1);
        curv_free(snap);
        curv_opt_free(o);
    }
    curv_layout_free(l);
}

/* Layer statistics, grad_sq and a non-finite loss: refused with a clear
 * error by every kind that does not read them, nothing changed; a finite
 * loss is accepted by every kind. */
static void test_optional_inputs(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        unsigned takes = curv_opt_kind_inputs((curv_opt_kind)k);
        if (!curv_opt_kind_name((curv_opt_kind)k) || (takes & CURV_INPUT_REQUESTS))
            continue; /* their own suites drive them */
        curv_opt *o = tu_new_opt((curv_opt_kind)k, l, NULL);
        double g[TU_D_MIXED], sq[TU_D_MIXED], u[TU_D_MIXED], acts[2 * 4] = {0}, sig[2 * 3] = {0};
        for (size_t i = 0; i < TU_D_MIXED; i++)
            g[i] = 0.5 - 0.03 * (double)i, sq[i] = g[i] * g[i];
        tu_step_ok(o, g, NULL, u);
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        curv_layer_stats ls = {.block = 0, .rows = 2, .examples = 2, .acts = acts, .signals = sig};
        curv_step_input base = {.grad = g, .len = TU_D_MIXED, .dtype = CURV_F64};
        curv_step_input with_layers = base, null_layers = base, with_sq = base, nan_loss = base;
        with_layers.layers = &ls, with_layers.n_layers = 1;
        null_layers.n_layers = 1;
        with_sq.grad_sq = sq;
        nan_loss.has_loss = 1, nan_loss.loss = NAN;
        curv_error err;
        if (!(takes & CURV_INPUT_LAYERS)) {
            tu_assert_status(curv_opt_step(o, &with_layers, u, NULL, &err), CURV_E_INVALID, &err);
            assert_non_null(strstr(err.text, "takes no layer statistics"));
        }
        tu_assert_status(curv_opt_step(o, &null_layers, u, NULL, &err), CURV_E_INVALID, &err);
        if (!(takes & CURV_INPUT_GRAD_SQ)) {
            tu_assert_status(curv_opt_step(o, &with_sq, u, NULL, &err), CURV_E_INVALID, &err);
            assert_non_null(strstr(err.text, "grad_sq"));
        }
        tu_assert_status(curv_opt_step(o, &nan_loss, u, NULL, &err), CURV_E_NONFINITE, &err);
        assert_non_null(strstr(err.text, "loss"));
        tu_assert_unchanged(o, snap, len);
        curv_step_input with_loss = base;
        with_loss.has_loss = 1, with_loss.loss = 2.5;
        assert_int_equal(curv_opt_step(o, &with_loss, u, NULL, &err), CURV_OK);
        assert_int_equal(curv_opt_steps(o), 2);
        assert_int_equal(curv_opt_interrupted(o), 0);
        curv_free(snap);
        curv_opt_free(o);
    }
    const curv_report_entry *e = NULL;
    assert_int_equal(curv_opt_report(NULL, &e), 0);
    assert_int_equal(curv_opt_interrupted(NULL), 0);
    assert_int_equal(curv_opt_kind_inputs(CURV_OPT_KIND_COUNT), 0);
    curv_layout_free(l);
}

/* float32 in and out gives exactly the float rounding of the float64 path
 * fed the same (float-representable) values. */
static void test_float32_matches_float64(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    tu_rng rng;
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* layers or callbacks: their own suites drive them */
        tu_rng_seed(&rng, 100 + (uint64_t)k);
        curv_config *c = busy_config((curv_opt_kind)k);
        curv_opt *a = tu_new_opt((curv_opt_kind)k, l, c), *b = tu_new_opt((curv_opt_kind)k, l, c);
        float thf[TU_D_MIXED], gf[TU_D_MIXED], uf[TU_D_MIXED];
        double th[TU_D_MIXED], g[TU_D_MIXED], u[TU_D_MIXED];
        for (size_t i = 0; i < TU_D_MIXED; i++)
            thf[i] = (float)tu_normal(&rng);
        for (int t = 0; t < 5; t++) {
            for (size_t i = 0; i < TU_D_MIXED; i++) {
                gf[i] = (float)(tu_normal(&rng) * (1 + (double)(i % 5)));
                g[i] = gf[i], th[i] = thf[i];
            }
            tu_step_ok(a, g, th, u);
            curv_step_input in = {.grad = gf, .params = thf, .len = TU_D_MIXED, .dtype = CURV_F32};
            curv_error err;
            tu_assert_status(curv_opt_step(b, &in, uf, NULL, &err), CURV_OK, &err);
            for (size_t i = 0; i < TU_D_MIXED; i++) {
                if (uf[i] != (float)u[i])
                    fail_msg("%s step %d [%zu]: f32 %.9g, f64 %.17g",
                             curv_opt_kind_name((curv_opt_kind)k), t, i, (double)uf[i], u[i]);
                thf[i] += uf[i];
            }
        }
        assert_int_equal(curv_opt_steps(b), 5);
        curv_opt_free(a);
        curv_opt_free(b);
        curv_config_free(c);
    }
    curv_layout_free(l);
}

/* The schedules, on plain SGD (Δ = −η_t g), against the formulas in the
 * parameter docs computed here by repeated multiplication. */
static void check_schedule(const char *sched, double gamma, double step_size, const char *miles,
                           int which)
{
    curv_layout *l = tu_opt_mixed_layout();
    curv_config *c = curv_config_new();
    const double lr = 0.3;
    assert_int_equal(curv_config_set_num(c, "lr", lr, NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_schedule", sched, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr_gamma", gamma, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr_step_size", step_size, NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_milestones", miles, NULL), CURV_OK);
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, c);
    double g[TU_D_MIXED], u[TU_D_MIXED], want[TU_D_MIXED];
    const unsigned ms[] = {2, 5, 6};
    for (unsigned t = 1; t <= 12; t++) {
        unsigned k = 0; /* decays applied before step t */
        if (which == 1)
            k = (t - 1) / (unsigned)step_size;
        else if (which == 2)
            for (size_t i = 0; i < 3; i++)
                k += ms[i] < t;
        else if (which == 3)
            k = t - 1;
        double lr_t = lr;
        for (unsigned i = 0; i < k; i++)
            lr_t *= gamma;
        for (size_t i = 0; i < TU_D_MIXED; i++) {
            g[i] = sin(1.0 + (double)(t * 7 + i));
            want[i] = -lr_t * g[i];
        }
        tu_step_ok(o, g, NULL, u);
        if (tu_rel_err(u, want, TU_D_MIXED) > 1e-14)
            fail_msg("%s: step %u: rel err %g (lr_t %g)", sched, t, tu_rel_err(u, want, TU_D_MIXED),
                     lr_t);
    }
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
}

/* Every report opens with grad_norm and update_norm, the norms of the
 * gradient sent and the update returned, and names no figure twice. */
static void test_report_norms_once(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* kfac and hf: test_hf_protocol.c, tests/server/test_callbacks.c */
        curv_opt *o = tu_new_opt((curv_opt_kind)k, l, NULL);
        double g[TU_D_MIXED], th[TU_D_MIXED], u[TU_D_MIXED], gn = 0, un = 0;
        for (size_t i = 0; i < TU_D_MIXED; i++)
            g[i] = cos(0.3 * (double)i), th[i] = 0.01 * (double)i;
        tu_step_ok(o, g, th, u);
        for (size_t i = 0; i < TU_D_MIXED; i++)
            gn += g[i] * g[i], un += u[i] * u[i];
        const curv_report_entry *e;
        size_t n = curv_opt_report(o, &e);
        assert_true(n >= 2);
        assert_string_equal(e[0].name, "grad_norm");
        assert_string_equal(e[1].name, "update_norm");
        assert_true(fabs(e[0].value - sqrt(gn)) <= 1e-14 * sqrt(gn));
        assert_true(fabs(e[1].value - sqrt(un)) <= 1e-14 * sqrt(un));
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++)
                if (strcmp(e[i].name, e[j].name) == 0)
                    fail_msg("%s reports %s twice", curv_opt_kind_name((curv_opt_kind)k),
                             e[i].name);
        curv_opt_free(o);
    }
    curv_layout_free(l);
}

static void test_lr_schedules(void **state)
{
    (void)state;
    check_schedule("constant", 0.5, 2, "2,5,6", 0);
    check_schedule("step", 0.5, 3, "2,5,6", 1);
    check_schedule("step", 0.7, 1, "", 1);
    check_schedule("multistep", 0.1, 3, "2,5,6", 2);
    check_schedule("exponential", 0.9, 3, "2,5,6", 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kind_names),
        cmocka_unit_test(test_param_introspection),
        cmocka_unit_test(test_config_object),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_list_overflow_rejected),
        cmocka_unit_test(test_new_bad_args),
        cmocka_unit_test(test_accessors_and_layout_copy),
        cmocka_unit_test(test_get_param_values),
        cmocka_unit_test(test_step_bad_args),
        cmocka_unit_test(test_nonfinite_every_kind),
        cmocka_unit_test(test_resume_without_request),
        cmocka_unit_test(test_optional_inputs),
        cmocka_unit_test(test_float32_matches_float64),
        cmocka_unit_test(test_lr_schedules),
        cmocka_unit_test(test_report_norms_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
