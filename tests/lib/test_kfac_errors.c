/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's error paths: every bad input and bad answer gets a clear error
 * and changes nothing (saved state compared byte for byte); failing
 * factor estimates are tolerated up to max_failures and counted;
 * reconfiguration; corrupted and truncated blobs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static const size_t W[] = {3, 4, 2};

/* Step @in on @o, expecting @want with @needle in the text and no change. */
static void refused(curv_opt *o, const curv_step_input *in, curv_status want, const char *needle)
{
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    double u[64];
    for (size_t i = 0; i < 64; i++)
        u[i] = 99;
    curv_request req;
    curv_error err;
    curv_error_clear(&err);
    tu_assert_status(curv_opt_step(o, in, u, &req, &err), want, &err);
    if (needle && !strstr(err.text, needle))
        fail_msg("error text lacks '%s': %s", needle, err.text);
    for (size_t i = 0; i < 64; i++)
        assert_true(u[i] == 99);
    tu_assert_unchanged(o, snap, len);
    curv_free(snap);
}

static void test_bad_steps(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 2, 4, 1, 2);
    curv_opt *o = tu_kfac_opt(l, NULL, 0, "mode", "adaptive", NULL);
    double u[64];
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    tu_mlp_batch(&net, 3);
    curv_step_input in;
    double nan_acts[4 * 3];
    memcpy(nan_acts, net.acts[0], sizeof nan_acts);
    nan_acts[5] = NAN;
    curv_layer_stats ls[2];
    memcpy(ls, net.stats, sizeof ls);

    in = (curv_step_input){.grad = net.g,
                           .params = net.theta,
                           .len = net.dim - 1,
                           .dtype = CURV_F64,
                           .layers = ls,
                           .n_layers = 2,
                           .loss = 1,
                           .has_loss = 1};
    refused(o, &in, CURV_E_SHAPE, "grad has"); /* gradient vs layout */
    in.len = net.dim;
    ls[0].acts = nan_acts;
    refused(o, &in, CURV_E_NONFINITE, "'l0': acts[1][2]");
    /* The same as floats beside the float64 gradient (fp32 reads them in
     * place): the value is named as it is. */
    float acts_f[4 * 3], sig_f[4 * 4];
    for (size_t i = 0; i < 4 * 3; i++)
        acts_f[i] = (float)net.acts[0][i];
    for (size_t i = 0; i < 4 * 4; i++)
        sig_f[i] = (float)net.sig[0][i];
    acts_f[5] = INFINITY;
    ls[0] = (curv_layer_stats){
        .block = 0, .rows = 4, .examples = 4, .acts = acts_f, .signals = sig_f, .f32 = 1};
    refused(o, &in, CURV_E_NONFINITE, "'l0': acts[1][2] is inf");
    acts_f[5] = 0, sig_f[7] = NAN;
    refused(o, &in, CURV_E_NONFINITE, "'l0': signals[1][3] is nan");
    ls[0] = net.stats[0];
    ls[1].rows = ls[1].examples = 0;
    refused(o, &in, CURV_E_INVALID, "empty batch");
    ls[1] = net.stats[1];
    ls[1].block = 2;
    refused(o, &in, CURV_E_INVALID, "vector block");
    ls[1] = net.stats[1];
    in.n_layers = 1; /* l1 due but missing */
    refused(o, &in, CURV_E_INVALID, "'l1'");
    in.n_layers = 2;
    in.params = NULL;
    refused(o, &in, CURV_E_INVALID, "params");
    in.params = net.theta;
    in.loss = INFINITY;
    refused(o, &in, CURV_E_NONFINITE, "loss");
    curv_request req;
    in.loss = 1;
    tu_assert_status(curv_opt_step(o, &in, u, NULL, &err), CURV_E_INVALID, &err); /* no req */
    /* An LM step (k = 5) needs the loss. */
    for (int k = 2; k <= 4; k++) {
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    }
    in.has_loss = 0;
    refused(o, &in, CURV_E_INVALID, "loss");
    (void)req;
    tu_mlp_teardown(o, l, &net);
}

/* Bad answers: a refused answer leaves the request pending and the state
 * as it was; then the right answer completes the step. */
static void test_bad_answers(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 5, 6);
    curv_opt *o = tu_kfac_opt(l, NULL, 0, "mode", "adaptive", NULL);
    double u[64], vals[4] = {1, 2, 3, 4};
    curv_error err;
    curv_request req;
    curv_response none = {.seq = 1, .n_values = 1, .values = vals};
    tu_assert_status(curv_opt_resume(o, &none, CURV_F64, u, &req, &err), CURV_E_STATE, &err);
    assert_non_null(strstr(err.text, "no request"));
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    curv_step_input in = tu_mlp_input(&net, 1);
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_NEED_INPUT, &err);
    size_t len; /* a pending optimizer saves the state from before the step */
    unsigned char *snap = tu_snapshot(o, &len);
    assert_int_equal(req.n_values, 4);
    double gram[4];
    tu_mlp_answer(&net, &req, gram);
    const struct {
        uint64_t seq;
        size_t n;
        double v[4];
        curv_status want;
        const char *needle;
    } cases[] = {
        {req.seq + 1, 4, {gram[0], gram[1], gram[2], gram[3]}, CURV_E_STATE, "is pending"},
        {req.seq, 3, {gram[0], gram[1], gram[2], 0}, CURV_E_SHAPE, "needs 4 values"},
        {req.seq, 4, {gram[0], gram[1], NAN, gram[3]}, CURV_E_NONFINITE, "value 2"},
        {req.seq, 4, {gram[0], gram[1] + 1, gram[2], gram[3]}, CURV_E_INVALID, "symmetric"},
        {req.seq, 4, {-1, 0, 0, gram[3]}, CURV_E_INVALID, "[0][0]"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        curv_response r = {.seq = cases[i].seq, .n_values = cases[i].n, .values = cases[i].v};
        curv_request again = req;
        tu_assert_status(curv_opt_resume(o, &r, CURV_F64, u, &again, &err), cases[i].want, &err);
        if (!strstr(err.text, cases[i].needle))
            fail_msg("case %zu: '%s' not in: %s", i, cases[i].needle, err.text);
        tu_assert_unchanged(o, snap, len);
        /* A new step is refused while the request is pending. */
        tu_assert_status(curv_opt_step(o, &in, u, &again, &err), CURV_E_STATE, &err);
    }
    curv_config *c = curv_config_new();
    tu_config_set(c, "lambda_init", 3, NULL);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_E_STATE, &err);
    curv_response ok = {.seq = req.seq, .n_values = 4, .values = gram};
    tu_assert_status(curv_opt_resume(o, &ok, CURV_F64, u, &req, &err), CURV_OK, &err);
    assert_int_equal(curv_opt_steps(o), 2);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    curv_config_free(c);
    curv_free(snap);
    tu_mlp_teardown(o, l, &net);
}

/* Simple mode: a finite preconditioned gradient whose update lr·v
 * overflows is refused naming the velocity, with nothing changed; the same
 * step at a smaller lr is taken. */
static void test_velocity_overflow(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 7, 8);
    const tu_kv kv[] = {{"lr", 1e6}, {"momentum", 0}, {"weight_decay", 0}, {"kl_clip", 0}};
    curv_opt *o = tu_kfac_opt(l, kv, 4, "mode", "simple", "noise", "off", NULL);
    curv_error err;
    double u[64];
    curv_request req;
    net.g[5] = 1e303;
    curv_step_input in = {.grad = net.g,
                          .params = net.theta,
                          .len = net.dim,
                          .dtype = CURV_F64,
                          .layers = net.stats,
                          .n_layers = 2};
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    assert_int_equal(curv_opt_step(o, &in, u, &req, &err), CURV_E_NONFINITE);
    if (!strstr(err.text, "the velocity μv + F̆⁻¹∇h or the update overflows at element"))
        fail_msg("unexpected error: %s", err.text);
    tu_assert_unchanged(o, snap, len);
    curv_free(snap);
    curv_config *c = curv_config_new();
    curv_config_set_num(c, "lr", 1e-6, NULL);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    curv_config_free(c);
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_OK, &err);
    for (size_t i = 0; i < net.dim; i++)
        assert_true(isfinite(u[i]));
    tu_mlp_teardown(o, l, &net);
}

/* Statistics that overflow make non-finite factors: a block keeps its old
 * ones (counted) for max_failures steps in a row; one more is
 * CURV_E_NUMERIC naming the block, with nothing changed; on step 1 there
 * is nothing to keep. */
static void test_failing_factors(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 7, 8);
    const tu_kv kv[] = {{"max_failures", 2}, {"weight_decay", 0}, {"lr", 0.1}};
    curv_opt *o = tu_kfac_opt(l, kv, 3, "mode", "simple", NULL);
    double huge[4 * 3], u[64];
    for (size_t i = 0; i < 12; i++)
        huge[i] = 1e200 * (1 + (double)i);
    curv_layer_stats ls[2];
    memcpy(ls, net.stats, sizeof ls);
    ls[0].acts = huge;
    curv_step_input bad = {.grad = net.g,
                           .params = net.theta,
                           .len = net.dim,
                           .dtype = CURV_F64,
                           .layers = ls,
                           .n_layers = 2};
    refused(o, &bad, CURV_E_NUMERIC, "'l0'"); /* step 1: no previous factors */
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    curv_request req;
    for (int k = 1; k <= 2; k++) {
        tu_assert_status(curv_opt_step(o, &bad, u, &req, &err), CURV_OK, &err);
        assert_true(tu_report(o, "inverse_failures") == k);
        for (size_t i = 0; i < net.dim; i++)
            assert_true(isfinite(u[i]));
    }
    refused(o, &bad, CURV_E_NUMERIC, "max_failures = 2");
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    assert_true(tu_report(o, "inverse_failures") == 2);
    tu_assert_status(curv_opt_step(o, &bad, u, &req, &err), CURV_OK, &err); /* count reset */
    tu_mlp_teardown(o, l, &net);
}

static void test_reconfigure_and_params(void **state)
{
    (void)state;
    tu_mlp net;
    tu_mlp_new(&net, W, 2, 2, 4, 9);
    curv_layout *l = tu_mlp_layout(&net);
    curv_opt *o = tu_kfac_opt(l, NULL, 0, "mode", "simple", NULL);
    char buf[32];
    assert_int_equal(curv_opt_get_param_str(o, "fisher", buf, sizeof buf), CURV_OK);
    assert_string_equal(buf, "true");
    assert_int_equal(curv_opt_get_param_str(o, "mode", buf, sizeof buf), CURV_OK);
    assert_string_equal(buf, "simple");
    assert_true(curv_opt_kind_inputs(CURV_OPT_KFAC) == (CURV_INPUT_LAYERS | CURV_INPUT_REQUESTS));
    const char *fixed[] = {"mode", "inverse", "max_factor_dim", "fallback"};
    const char *val[] = {"adaptive", "tridiag", NULL, "sgd"};
    for (size_t i = 0; i < 4; i++) {
        curv_config *c = curv_config_new();
        tu_config_set(c, fixed[i], 7, val[i]);
        curv_error err;
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_E_CONFIG, &err);
        assert_non_null(strstr(err.text, fixed[i]));
        tu_assert_unchanged(o, snap, len);
        curv_free(snap);
        curv_config_free(c);
    }
    /* A changed damping and fallback_lr act on the next step. */
    tu_mlp_batch(&net, 10);
    double u1[64], u2[64];
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u1, NULL, &err), CURV_OK, &err);
    curv_config *c = curv_config_new();
    tu_config_set(c, "fallback_lr", 0, NULL);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    tu_assert_status(tu_mlp_step(o, &net, 1, u2, NULL, &err), CURV_OK, &err);
    const double mu = 0.9, lr = 0.01;
    for (size_t i = net.dim - 2; i < net.dim; i++) /* velocity only: u2 = μ u1 */
        assert_true(fabs(u2[i] - mu * u1[i]) <= 1e-15 * fabs(u1[i]) && u1[i] != 0);
    (void)lr;
    curv_config_free(c);
    tu_mlp_teardown(o, l, &net);
}

/* Every flipped byte and every truncation of a trained K-FAC blob (both
 * modes) is refused without a crash. */
static void test_corrupt_blobs(void **state)
{
    (void)state;
    const char *modes[] = {"adaptive", "simple"};
    for (int m = 0; m < 2; m++) {
        tu_mlp net;
        curv_layout *l = tu_mlp_setup(&net, W, 2, 2, 3, 11, 12);
        const tu_kv kv[] = {{"max_factor_dim", 3}};
        curv_opt *o = tu_kfac_opt(l, kv, 1, "mode", modes[m], NULL);
        double u[64];
        curv_error err;
        for (int k = 0; k < 2; k++)
            tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        size_t len;
        unsigned char *blob = tu_snapshot(o, &len);
        for (size_t i = 0; i < len; i += 1 + i / 512) {
            unsigned char *b = tu_memdup(blob, len);
            b[i] ^= 0x5A;
            curv_opt *x = NULL;
            curv_status st = curv_opt_load(b, len, &x, NULL);
            if (st != CURV_E_CORRUPT && st != CURV_E_VERSION)
                fail_msg("%s: flip at %zu of %zu loaded (%d)", modes[m], i, len, (int)st);
            free(b);
        }
        for (size_t n = 0; n < len; n += 1 + n / 256) {
            unsigned char *b = tu_memdup(blob, n);
            curv_opt *x = NULL;
            assert_int_equal(curv_opt_load(b, n, &x, NULL), CURV_E_CORRUPT);
            free(b);
        }
        curv_free(blob);
        tu_mlp_teardown(o, l, &net);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_steps),
        cmocka_unit_test(test_bad_answers),
        cmocka_unit_test(test_failing_factors),
        cmocka_unit_test(test_velocity_overflow),
        cmocka_unit_test(test_reconfigure_and_params),
        cmocka_unit_test(test_corrupt_blobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
