/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's Cholesky refresh (kfac_block.c, refresh = auto in simple mode;
 * docs/NOTES.md, "K-FAC Cholesky refresh"): its degrees of freedom against
 * the eigenvalues, a save and load mid-run continuing bit for bit (a
 * refresh pending too), a failing Cholesky kept like a failing
 * eigendecomposition, a change of damping refreshing at the next step, and
 * where the setting is refused. The multiply against dense math and the
 * eigen route: test_kfac.c; blobs saved before the setting:
 * test_kfac_safeguards.c.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"
#include "linalg.h"
#include "testutil.h"

static const size_t W[] = {5, 4, 3};
#define GAMMA 0.3

static struct curv__kblock *block_of(const curv_opt *o, size_t i)
{
    struct curv__kblock *b =
        (struct curv__kblock *)curv__kfac_est_block(curv__kfac_estimator(o), i);
    assert_non_null(b);
    return b;
}

/* A simple-mode optimizer with the plain multiply (no momentum, clip or
 * noise), refreshes every @t3 steps, @s steps late, in @precision. */
static curv_opt *chol_opt(const curv_layout *l, double t3, double s, const char *precision,
                          double max_factor_dim)
{
    const tu_kv kv[] = {{"lr", 1},
                        {"momentum", 0},
                        {"weight_decay", 0},
                        {"damping", GAMMA},
                        {"kl_clip", 0},
                        {"inv_interval", t3},
                        {"max_staleness", s},
                        {"max_factor_dim", max_factor_dim},
                        {"max_failures", 2}};
    return tu_kfac_opt(l, kv, 9, "mode", "simple", "noise", "off", "precision", precision, NULL);
}

/* Σ_i w_i / (w_i + c) over the eigenvalues of side @s's factor, found here
 * (a diagonal side's are its entries), clamped at 0 as a refresh clamps
 * them. */
static double eig_dof(const struct curv__kside *s, double c)
{
    const size_t n = s->n;
    double *F = tu_alloc(n * n), *w = tu_alloc(n), t = 0;
    if (s->diag) {
        memcpy(w, s->F, n * sizeof(double));
    } else {
        memcpy(F, s->F, n * n * sizeof(double));
        tu_assert_status(curv__sym_eig(n, F, n, w, NULL), CURV_OK, NULL);
    }
    for (size_t i = 0; i < n; i++)
        t += fmax(w[i], 0) / (fmax(w[i], 0) + c);
    free(F), free(w);
    return t;
}

/* ‖P (F + cI) − I‖_max for a Cholesky side's committed P, F and c. */
static double inverse_residual(const struct curv__kside *s, double c)
{
    const size_t n = s->n;
    double *D = tu_alloc(n * n), *R = tu_alloc(n * n), most = 0;
    memcpy(D, s->F, n * n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        D[i * n + i] += c;
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)n, (int)n, 1.0, s->P,
                (int)n, D, (int)n, 0.0, R, (int)n);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            most = fmax(most, fabs(R[i * n + j] - (i == j)));
    free(D), free(R);
    return most;
}

/* The block's degrees of freedom (the noise term's tr(P F̆)) against
 * Σ w/(w + c) per side from eigenvalues found here, for dense sides on the
 * Cholesky route and diagonal ones (max_factor_dim 4: the input sides),
 * within 1e-10, at every step (each refreshes); each dense side's P
 * inverts F + cI. */
static void test_dof_against_eigenvalues(void **state)
{
    (void)state;
    for (int diag = 0; diag <= 1; diag++) {
        tu_mlp net;
        curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 3, 11, 12);
        curv_opt *o = chol_opt(l, 1, 0, "fp64", diag ? 4 : 4096);
        double *u = tu_alloc(net.dim);
        curv_error err;
        for (unsigned k = 1; k <= 3; k++) {
            tu_mlp_batch(&net, 20 + k);
            tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
            for (size_t i = 0; i < 2; i++) {
                const struct curv__kblock *b = block_of(o, i);
                assert_int_equal(b->A.chol, !b->A.diag);
                assert_int_equal(b->A.diag, diag); /* 6 and 5 entries; G's 4 and 3 dense */
                const double want = eig_dof(&b->A, GAMMA * b->pi) * eig_dof(&b->G, GAMMA / b->pi);
                const double got = curv__kblock_dof(b, GAMMA);
                if (!(fabs(got - want) <= 1e-10 * want))
                    fail_msg("step %u, block %zu: dof %.17g, want %.17g", k, i, got, want);
                if (b->A.chol)
                    assert_true(inverse_residual(&b->A, GAMMA * b->pi) < 1e-12);
                assert_true(inverse_residual(&b->G, GAMMA / b->pi) < 1e-12);
            }
        }
        free(u);
        tu_mlp_teardown(o, l, &net);
    }
}

/* Saved mid-run (between refreshes, and with a refresh pending, whose
 * snapshot the blob holds), a Cholesky-route optimizer with simple mode's
 * defaults (momentum, KL clip, the noise term and its dof) loads and
 * continues bit for bit through the next refresh, fp64 and fp32 (the float
 * inverse is rounded again from the double one the blob holds), the
 * pending refresh computed early by curv_refresh_run on the loaded one. */
static void check_save_load(const char *precision, unsigned s)
{
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 31, 32);
    const tu_kv kv[] = {{"lr", 0.1}, {"inv_interval", 4}, {"max_staleness", s}};
    curv_opt *o = tu_kfac_opt(l, kv, 3, "mode", "simple", "precision", precision, NULL);
    double *u = tu_alloc(net.dim), *u2 = tu_alloc(net.dim);
    curv_error err;
    const unsigned at = s ? 4 : 5; /* s: step 4's refresh is pending */
    for (unsigned k = 1; k <= at; k++) {
        tu_mlp_batch(&net, 40 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    }
    assert_true(block_of(o, 0)->A.chol);
    assert_int_equal(curv_opt_refresh(o) != NULL, s > 0);
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len);
    curv_opt *o2 = NULL;
    tu_assert_status(curv_opt_load(blob, len, &o2, &err), CURV_OK, &err);
    char got[16];
    assert_int_equal(curv_opt_get_param_str(o2, "refresh", got, sizeof got), CURV_OK);
    assert_string_equal(got, "auto");
    assert_true(block_of(o2, 1)->G.chol);
    if (s)
        curv_refresh_run(curv_opt_refresh(o2));
    for (unsigned k = at + 1; k <= 10; k++) { /* k = 8 refreshes (applied at 8 + s) */
        tu_mlp_batch(&net, 40 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(o2, &net, 1, u2, NULL, &err), CURV_OK, &err);
        if (memcmp(u, u2, net.dim * sizeof(double)) != 0)
            fail_msg("%s, max_staleness %u, step %u: the loaded optimizer differs", precision, s,
                     k);
    }
    curv_free(blob);
    curv_opt_free(o2);
    free(u), free(u2);
    tu_mlp_teardown(o, l, &net);
}

static void test_save_load_continues(void **state)
{
    (void)state;
    check_save_load("fp64", 0);
    check_save_load("fp32", 0);
    check_save_load("fp64", 2);
    check_save_load("fp32", 2);
}

/*
 * A damped factor that is not positive definite (a factor made indefinite
 * here: F = −10 I, which the step's EMA keeps so) fails the Cholesky
 * refresh as a failing eigendecomposition fails: the block keeps its
 * previous inverse (the same bits) for max_failures steps in a row,
 * counted in inverse_failures, the update finite; one more is
 * CURV_E_NUMERIC naming the block and why, nothing changed. In the step
 * (refreshes every step) and deferred (max_staleness 1: the snapshot of
 * step 4 fails where step 5 applies it).
 */
static void check_failure(unsigned s)
{
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 51, 52);
    curv_opt *o = chol_opt(l, s ? 4 : 1, s, "fp64", 4096);
    double *u = tu_alloc(net.dim);
    curv_error err;
    for (unsigned k = 1; k <= 3; k++)
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    struct curv__kblock *b = block_of(o, 0);
    const size_t n = b->A.n;
    double *kept = tu_alloc(n * n);
    memcpy(kept, b->A.P, n * n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            b->A.F[i * n + j] = i == j ? -10.0 : 0.0;
    unsigned k = 4;
    if (s) { /* step 4 defers the refresh of the indefinite snapshot */
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        assert_true(tu_report(o, "inverse_failures") == 0);
        k++;
    }
    for (unsigned f = 1; f <= 2; f++, k++) {
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        if (tu_report(o, "inverse_failures") != f)
            fail_msg("max_staleness %u, step %u: %g failures, want %u", s, k,
                     tu_report(o, "inverse_failures"), f);
        assert_memory_equal(b->A.P, kept, n * n * sizeof(double));
        for (size_t i = 0; i < net.dim; i++)
            assert_true(isfinite(u[i]));
        if (s) /* the next failing refresh is in the step: the block is past due */
            break;
    }
    if (!s) {
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        const curv_step_input in = tu_mlp_input(&net, 1);
        curv_request req;
        tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_E_NUMERIC, &err);
        assert_non_null(strstr(err.text, "'l0'"));
        assert_non_null(strstr(err.text, "not positive definite"));
        assert_non_null(strstr(err.text, "max_failures = 2"));
        tu_assert_unchanged(o, snap, len);
        curv_free(snap);
    }
    free(kept), free(u);
    tu_mlp_teardown(o, l, &net);
}

static void test_failure_keeps_the_inverse(void **state)
{
    (void)state;
    check_failure(0);
    check_failure(1);
}

static void set_damping(curv_opt *o, double gamma)
{
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "damping", gamma, NULL), CURV_OK);
    curv_error err;
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    curv_config_free(c);
}

/*
 * A change of damping meets inverses formed for the old one: the next step
 * refreshes the blocks from its factors (inverse_age 0, P = (F + γ'π I)⁻¹
 * with F that step's) rather than apply a stale inverse, in the step even
 * with max_staleness >= 1 and its statistics folded later asked for; a
 * refresh pending from before the change is then not applied (a newer one
 * won). The eigen route keeps its decomposition (any damping applies).
 */
static void check_damping_change(unsigned s)
{
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 61, 62);
    curv_opt *o = chol_opt(l, 4, s, "fp64", 4096);
    const tu_kv kv[] = {{"lr", 1}, {"weight_decay", 0}, {"inv_interval", 4}};
    curv_opt *e = tu_kfac_opt(l, kv, 3, "mode", "simple", "refresh", "eigen", NULL);
    double *u = tu_alloc(net.dim);
    curv_error err;
    tu_assert_status(curv_opt_defer_stats(o, 1, &err), CURV_OK, &err);
    for (unsigned k = 1; k <= 4; k++) {
        curv_opt_settle(o);
        tu_mlp_batch(&net, 70 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(e, &net, 1, u, NULL, &err), CURV_OK, &err);
    }
    assert_int_equal(curv_opt_refresh(o) != NULL, s > 0); /* step 4's refresh pending */
    const double g2 = 0.05;
    set_damping(o, g2);
    set_damping(e, g2);
    for (unsigned k = 5; k <= 7; k++) {
        curv_opt_settle(o);
        tu_mlp_batch(&net, 70 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(e, &net, 1, u, NULL, &err), CURV_OK, &err);
        assert_int_equal(curv_opt_stats_pending(o), k > 5 && s > 0);
        const double age = tu_report(o, "inverse_age.l0");
        if (age != (double)(k - 5))
            fail_msg("max_staleness %u, step %u: inverse age %g, want %u", s, k, age, k - 5);
        assert_true(tu_report(e, "inverse_age.l0") == (double)(k - 4));
        curv_opt_settle(o);
        for (size_t i = 0; k == 5 && i < 2; i++) {
            const struct curv__kblock *b = block_of(o, i);
            assert_true(b->A.pc == g2 * b->pi && b->G.pc == g2 / b->pi);
            assert_true(inverse_residual(&b->A, g2 * b->pi) < 1e-12);
            assert_true(inverse_residual(&b->G, g2 / b->pi) < 1e-12);
        }
    }
    curv_opt_free(e);
    free(u);
    tu_mlp_teardown(o, l, &net);
}

static void test_damping_change_refreshes(void **state)
{
    (void)state;
    check_damping_change(0);
    check_damping_change(2);
}

/* refresh = cholesky needs the one damping of simple mode's block-diagonal
 * inverse; auto takes eigen elsewhere; the setting is fixed for a
 * session. */
static void test_where_it_applies(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 4, 81, 82);
    static const char *const refused[][4] = {{"adaptive", "blockdiag"}, {"simple", "tridiag"}};
    for (size_t i = 0; i < 2; i++) {
        curv_config *c = curv_config_new();
        tu_config_set(c, "mode", 0, refused[i][0]);
        tu_config_set(c, "inverse", 0, refused[i][1]);
        tu_config_set(c, "refresh", 0, "cholesky");
        curv_opt *o = NULL;
        curv_error err;
        assert_int_not_equal(curv_opt_new(CURV_OPT_KFAC, l, c, &o, &err), CURV_OK);
        assert_null(o);
        assert_non_null(strstr(err.text, "refresh = cholesky"));
        tu_config_set(c, "refresh", 0, "auto");
        o = tu_new_opt(CURV_OPT_KFAC, l, c);
        assert_false(block_of(o, 0)->A.chol);
        assert_non_null(block_of(o, 0)->A.Q);
        curv_opt_free(o);
        curv_config_free(c);
    }
    curv_opt *o = chol_opt(l, 4, 0, "fp64", 4096);
    curv_opt *e = tu_kfac_opt(l, NULL, 0, "mode", "simple", "refresh", "eigen", NULL);
    assert_true(block_of(o, 0)->A.chol && !block_of(o, 0)->A.Q && !block_of(o, 0)->A.w);
    assert_true(!block_of(e, 0)->A.chol && block_of(e, 0)->A.Q && !block_of(e, 0)->A.P);
    curv_config *c = curv_config_new();
    tu_config_set(c, "refresh", 0, "eigen");
    curv_error err;
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_E_CONFIG, &err);
    assert_non_null(strstr(err.text, "refresh"));
    tu_assert_unchanged(o, snap, len);
    curv_free(snap);
    curv_config_free(c);
    curv_opt_free(e);
    tu_mlp_teardown(o, l, &net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dof_against_eigenvalues),
        cmocka_unit_test(test_save_load_continues),
        cmocka_unit_test(test_failure_keeps_the_inverse),
        cmocka_unit_test(test_damping_change_refreshes),
        cmocka_unit_test(test_where_it_applies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
