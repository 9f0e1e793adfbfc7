/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's adaptive loop (kfac.c) driven like a trainer on tiny MLPs: the
 * requests and their intervals, the candidate updates, α/μ and the γ
 * choice against dense math done here, the LM rule with ρ from either
 * source, save/load mid-training and mid-step, bad input and bad answers
 * (nothing changes), failing factors, reconfiguration, corrupted blobs.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"
#include "testutil.h"

/* vᵀCv of the trainer's curvature (the driver's exact PSD matrix). */
static double curvature_form(tu_mlp *net, const double *v)
{
    curv_request q = {
        .kind = CURV_REQ_QUADRATIC_FORM, .n_vectors = 1, .dim = net->dim, .vectors = v};
    double val;
    tu_mlp_answer(net, &q, &val);
    return val;
}

static const size_t W[] = {3, 4, 2};

/* Requests per step (γ grid): QUADRATIC_FORM over 1 or 3 candidates plus
 * δ0 from step 2 on, LOSS every lambda_interval steps. */
static void test_request_intervals(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 2, 5, 1, 2);
    const tu_kv kv[] = {{"lambda_interval", 3}, {"gamma_interval", 4}, {"inv_interval", 4}};
    curv_opt *o = tu_kfac_opt(l, kv, 3, "gamma_rule", "grid", NULL);
    double *u = tu_alloc(net.dim);
    for (unsigned k = 1; k <= 9; k++) {
        tu_kfac_trace tr;
        curv_error err;
        tu_assert_status(tu_mlp_step(o, &net, 1, u, &tr, &err), CURV_OK, &err);
        const int loss = k % 3 == 0;
        assert_int_equal(tr.n, 1 + loss);
        assert_int_equal(tr.kind[0], CURV_REQ_QUADRATIC_FORM);
        assert_int_equal(tr.n_vectors[0], (k % 4 == 0 ? 3 : 1) + (k > 1));
        if (loss) {
            assert_int_equal(tr.kind[1], CURV_REQ_LOSS);
            assert_int_equal(tr.n_vectors[1], 1);
        }
        assert_true(tu_report(o, "rejected") == 0);
        tu_mlp_advance(&net, u, 10 + k);
    }
    free(u);
    tu_mlp_teardown(o, l, &net);
}

/* gamma_rule = sqrt_lambda: one candidate at every step (no γ grid even at
 * T2), and γ = sqrt(λ + η) with the λ the step used. */
static void test_gamma_tied_to_lambda(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 2, 5, 19, 20);
    const double eta = 0.01;
    const tu_kv kv[] = {
        {"lambda_interval", 1}, {"gamma_interval", 2}, {"weight_decay", eta}, {"lambda_init", 2.0}};
    curv_opt *o = tu_kfac_opt(l, kv, 4, "gamma_rule", "sqrt_lambda", NULL);
    double *u = tu_alloc(net.dim), lambda = 2.0;
    int moved = 0;
    for (unsigned k = 1; k <= 8; k++) {
        tu_kfac_trace tr;
        curv_error err;
        tu_assert_status(tu_mlp_step(o, &net, 1, u, &tr, &err), CURV_OK, &err);
        assert_int_equal(tr.n_vectors[0], 1 + (k > 1));
        assert_true(tu_report(o, "gamma") == sqrt(lambda + eta));
        moved += tu_report(o, "lambda") != lambda;
        lambda = tu_report(o, "lambda");
        tu_mlp_advance(&net, u, 30 + k);
    }
    assert_true(moved > 0); /* λ, and so γ, changed along the run */
    free(u);
    tu_mlp_teardown(o, l, &net);
}

/* Â = (1/m) Σ ā āᵀ (ā with the homogeneous 1 when @bias), accumulated
 * with weight @wgt into @F. */
static void add_outer(double *F, const double *X, size_t m, size_t nx, int bias, double wgt)
{
    size_t n = nx + (size_t)bias;
    for (size_t r = 0; r < m; r++)
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < n; j++)
                F[i * n + j] += wgt / (double)m * (i < nx ? X[r * nx + i] : 1.0) *
                                (j < nx ? X[r * nx + j] : 1.0);
}

/* −[(G + γ/π I) ⊗ (A + πγ I)]⁻¹ v for one block. */
static void dense_proposal(size_t nr, const double *G, size_t nc, const double *A, double gamma,
                           const double *v, double *out)
{
    const size_t n = nr * nc;
    double *K = tu_kfac_damped_kron(nr, G, nc, A, gamma);
    tu_gj_solve(n, K, v, out);
    for (size_t i = 0; i < n; i++)
        out[i] = -out[i];
    free(K);
}

/* tr(K_γ⁻¹ (G ⊗ A)) for one block, column by column of G ⊗ A. */
static double dense_dof(size_t nr, const double *G, size_t nc, const double *A, double gamma)
{
    const size_t n = nr * nc;
    double *K = tu_kfac_damped_kron(nr, G, nc, A, gamma), *F = tu_kfac_damped_kron(nr, G, nc, A, 0);
    double *col = tu_alloc(n), *x = tu_alloc(n), tr = 0;
    for (size_t j = 0; j < n; j++) {
        for (size_t i = 0; i < n; i++)
            col[i] = F[i * n + j];
        tu_gj_solve(n, K, col, x);
        tr += x[j];
    }
    free(K), free(F), free(col), free(x);
    return tr;
}

/*
 * A γ-adaptation step (k = gamma_interval = 2) checked end to end: the
 * three candidate proposals against the dense damped inverse of the EMA
 * factors formed here, δ0 = the last update, then α, μ by Cramer's rule on
 * the model built here from the Gram answer, the lowest M chosen, δ, and
 * the new γ.
 */
static void test_gamma_step_math(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w[] = {4, 3, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 2, 2, 5, 3, 4);
    const double eta = 0.01, lam = 0.5, fb_lr = 0.05;
    const tu_kv kv[] = {{"weight_decay", eta},
                        {"gamma_interval", 2},
                        {"lambda_interval", 100},
                        {"lambda_init", lam},
                        {"fallback_lr", fb_lr}};
    curv_opt *o = tu_kfac_opt(l, kv, 5, "coefficients", "free", "gamma_rule", "grid",
                              NULL); /* the thesis' solve and γ grid */
    const size_t d = net.dim;
    double *u1 = tu_alloc(d), *u2 = tu_alloc(d), *g1 = tu_alloc(d), *gf = tu_alloc(d);
    double *A[2], *G[2];
    for (size_t i = 0; i < 2; i++) {
        A[i] = tu_alloc((w[i] + 1) * (w[i] + 1));
        G[i] = tu_alloc(w[i + 1] * w[i + 1]);
        add_outer(A[i], net.acts[i], net.m, w[i], 1, 0.5); /* ε_2 = 1/2 */
        add_outer(G[i], net.sig[i], net.m, w[i + 1], 0, 0.5);
    }
    for (size_t i = 0; i < d; i++)
        g1[i] = net.g[i] + eta * net.theta[i];
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u1, NULL, &err), CURV_OK, &err);
    const double gamma0 = sqrt(lam + eta);
    assert_true(tu_report(o, "gamma") == gamma0 && tu_report(o, "lambda") == lam);
    tu_mlp_advance(&net, u1, 5);
    for (size_t i = 0; i < 2; i++) {
        add_outer(A[i], net.acts[i], net.m, w[i], 1, 0.5);
        add_outer(G[i], net.sig[i], net.m, w[i + 1], 0, 0.5);
    }
    for (size_t i = 0; i < d; i++)
        gf[i] = net.g[i] + eta * net.theta[i];

    curv_step_input in = tu_mlp_input(&net, 1);
    in.batch = 40; /* the gradient's batch, which the noise term divides by */
    curv_request req;
    tu_assert_status(curv_opt_step(o, &in, u2, &req, &err), CURV_NEED_INPUT, &err);
    assert_int_equal(req.kind, CURV_REQ_QUADRATIC_FORM);
    assert_int_equal(req.n_vectors, 4);
    assert_memory_equal(req.vectors + 3 * d, u1, d * sizeof(double)); /* δ0 */
    const double w2 = pow(0.97467943448089633, 2);
    const double gam[3] = {gamma0, w2 * gamma0, gamma0 / w2};
    double *want = tu_alloc(d);
    for (size_t c = 0; c < 3; c++) {
        size_t off = 0;
        for (size_t i = 0; i < 2; i++) {
            dense_proposal(w[i + 1], G[i], w[i] + 1, A[i], gam[c], gf + off, want + off);
            off += w[i + 1] * (w[i] + 1);
        }
        for (size_t j = off; j < d; j++) /* AdaGrad fallback: r = g1² */
            want[j] = -fb_lr * gf[j] / sqrt(g1[j] * g1[j] + gf[j] * gf[j] + 1e-8);
        char what[32];
        snprintf(what, sizeof what, "candidate %zu", c);
        tu_expect_close(req.vectors + c * d, want, d, 1e-10, what, 2);
    }
    double gram[16];
    tu_mlp_answer(&net, &req, gram);
    /* The model per candidate, its linear term without the noise's share
     * tr(K_γ⁻¹ F̆)/batch (at least noise_floor = 0.1 of it kept), solved
     * here by Cramer's rule; the lowest mean M wins, and M of the step on
     * this batch's model is reported. */
    const double *d0 = req.vectors + 3 * d;
    double best_m = INFINITY, best_a = 0, best_u = 0, best_b1 = 0, best_share = 0;
    size_t best = 0;
    for (size_t c = 0; c < 3; c++) {
        const double *dc = req.vectors + c * d;
        double q11 = gram[c * 4 + c] + (lam + eta) * tu_dot(dc, dc, d);
        double q12 = gram[c * 4 + 3] + (lam + eta) * tu_dot(dc, d0, d);
        double q22 = gram[15] + (lam + eta) * tu_dot(d0, d0, d);
        double b1 = tu_dot(gf, dc, d), b2 = tu_dot(gf, d0, d), det = q11 * q22 - q12 * q12;
        double dof = 0;
        for (size_t i = 0; i < 2; i++)
            dof += dense_dof(w[i + 1], G[i], w[i] + 1, A[i], gam[c]);
        const double share = dof / 40.0 / -b1, e1 = b1 * fmax(0.1, 1.0 - share);
        double al = (-e1 * q22 + b2 * q12) / det, mu = (-b2 * q11 + e1 * q12) / det;
        double m = 0.5 * (al * al * q11 + 2 * al * mu * q12 + mu * mu * q22) + al * e1 + mu * b2;
        if (m < best_m)
            best_m = m, best_a = al, best_u = mu, best = c, best_share = share,
            best_b1 = m - al * e1 + al * b1; /* M on the batch */
    }
    assert_true(best_share > 0.01); /* the term is not negligible here */
    curv_response resp = {.seq = req.seq, .n_values = 16, .values = gram};
    double *delta = tu_alloc(d);
    memcpy(delta, req.vectors + best * d, d * sizeof(double));
    for (size_t j = 0; j < d; j++)
        delta[j] = best_a * delta[j] + best_u * d0[j];
    tu_assert_status(curv_opt_resume(o, &resp, CURV_F64, u2, &req, &err), CURV_OK, &err);
    tu_expect_close(u2, delta, d, 1e-9, "δ = αΔ + μδ0", 2);
    assert_true(tu_report(o, "gamma") == gam[best]);
    assert_true(fabs(tu_report(o, "alpha") - best_a) <= 1e-9 * fabs(best_a));
    assert_true(fabs(tu_report(o, "mu") - best_u) <= 1e-9 * (1 + fabs(best_u)));
    assert_true(fabs(tu_report(o, "model_change") - best_b1) <= 1e-9 * fabs(best_b1));
    assert_true(fabs(tu_report(o, "noise_share") - best_share) <= 1e-9 * best_share);
    for (size_t i = 0; i < 2; i++)
        free(A[i]), free(G[i]);
    free(u1), free(u2), free(g1), free(gf), free(want), free(delta);
    tu_mlp_teardown(o, l, &net);
}

/* M(δ) of the step just taken, from the trainer's curvature. */
static double model_of(tu_mlp *net, const double *gf, const double *u, double lam_eta)
{
    return 0.5 * curvature_form(net, u) + 0.5 * lam_eta * tu_dot(u, u, net->dim) +
           tu_dot(gf, u, net->dim);
}

static double rule(double lambda, double rho, double w1)
{
    return rho > 0.75 ? lambda * w1 : rho < 0.25 ? lambda / w1 : lambda;
}

/* ρ from a LOSS request on the same batch, the LM rule every step. */
static void test_lm_with_loss_requests(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 6, 7, 8);
    const double eta = 0.02;
    const tu_kv kv[] = {{"weight_decay", eta}, {"lambda_interval", 1}, {"gamma_interval", 1000},
                        {"lambda_init", 0.3},  {"lambda_decay", 0.95}, /* the thesis' 19/20 */
                        {"reject_rise", 0}}; /* the thesis keeps every step */
    curv_opt *o = tu_kfac_opt(l, kv, 6, NULL);
    const size_t d = net.dim;
    double *u = tu_alloc(d), *gf = tu_alloc(d), *th = tu_alloc(d);
    double lambda = 0.3;
    const double w1 = 0.95;
    int up = 0, down = 0;
    for (unsigned k = 1; k <= 12; k++) {
        for (size_t i = 0; i < d; i++)
            gf[i] = net.g[i] + eta * net.theta[i];
        const double h0 = net.loss + 0.5 * eta * tu_dot(net.theta, net.theta, d);
        curv_error err;
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        for (size_t i = 0; i < d; i++)
            th[i] = net.theta[i] + u[i];
        const double h1 = tu_mlp_eval(&net, th, 0) + 0.5 * eta * tu_dot(th, th, d);
        const double rho = (h1 - h0) / model_of(&net, gf, u, lambda + eta);
        if (fabs(tu_report(o, "rho") - rho) > 1e-8 * (1 + fabs(rho)))
            fail_msg("step %u: rho %.17g, want %.17g", k, tu_report(o, "rho"), rho);
        double next = rule(lambda, rho, w1);
        up += next > lambda, down += next < lambda;
        lambda = fmax(next, 1e-8);
        if (fabs(tu_report(o, "lambda") - lambda) > 1e-12 * lambda)
            fail_msg("step %u: lambda %.17g, want %.17g", k, tu_report(o, "lambda"), lambda);
        tu_mlp_advance(&net, u, 100 + k);
    }
    assert_true(up + down > 0); /* the rule acted */
    free(u), free(gf), free(th);
    tu_mlp_teardown(o, l, &net);
}

/* rho_source = next_step: no LOSS request; the next step needs its loss
 * and finishes ρ with it (a different batch), before its own model. */
static void test_lm_next_step(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 0, 6, 9, 10);
    const double eta = 0.02;
    const tu_kv kv[] = {{"weight_decay", eta}, {"lambda_interval", 2}, {"lambda_init", 0.3}};
    curv_opt *o = tu_kfac_opt(l, kv, 3, "rho_source", "next_step", NULL);
    const size_t d = net.dim;
    double *u = tu_alloc(d), *gf = tu_alloc(d);
    curv_error err;
    tu_kfac_trace tr;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, &tr, &err), CURV_OK, &err);
    tu_mlp_advance(&net, u, 11);
    for (size_t i = 0; i < d; i++)
        gf[i] = net.g[i] + eta * net.theta[i];
    const double h0 = net.loss + 0.5 * eta * tu_dot(net.theta, net.theta, d);
    tu_assert_status(tu_mlp_step(o, &net, 1, u, &tr, &err), CURV_OK, &err); /* LM step */
    assert_int_equal(tr.n, 1);
    const double m = model_of(&net, gf, u, 0.3 + eta);
    tu_mlp_advance(&net, u, 12);
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    curv_step_input in = tu_mlp_input(&net, 1);
    in.has_loss = 0;
    curv_request req;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_E_INVALID, &err);
    assert_non_null(strstr(err.text, "next_step"));
    tu_assert_unchanged(o, snap, len);
    tu_assert_status(tu_mlp_step(o, &net, 1, u, &tr, &err), CURV_OK, &err);
    const double h1 = net.loss + 0.5 * eta * tu_dot(net.theta, net.theta, d);
    const double rho = (h1 - h0) / m;
    assert_true(fabs(tu_report(o, "rho") - rho) <= 1e-9 * (1 + fabs(rho)));
    /* The default decay, kfac-jax's 0.9 per step (docs/NOTES.md), over T1 = 2. */
    assert_true(fabs(tu_report(o, "lambda") - rule(0.3, rho, 0.9 * 0.9)) <= 1e-15);
    curv_free(snap);
    free(u), free(gf);
    tu_mlp_teardown(o, l, &net);
}

static curv_opt *load_blob(const unsigned char *blob, size_t len)
{
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_load(blob, len, &o, &err), CURV_OK, &err);
    return o;
}

/* Saved between steps: the loaded copy continues bit-identically. Saved
 * while a request is pending: the blob holds the state from before the
 * step, which is taken again from its start with the same outcome. */
static void test_save_load(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 2, 3, 5, 13, 14);
    const tu_kv kv[] = {
        {"lambda_interval", 2}, {"gamma_interval", 3}, {"inv_interval", 3}, {"cov_interval", 2}};
    curv_opt *a = tu_kfac_opt(l, kv, 4, NULL);
    const size_t d = net.dim;
    double *ua = tu_alloc(d), *ub = tu_alloc(d);
    curv_error err;
    for (unsigned k = 1; k <= 3; k++) {
        tu_assert_status(tu_mlp_step(a, &net, 1, ua, NULL, &err), CURV_OK, &err);
        tu_mlp_advance(&net, ua, 20 + k);
    }
    size_t len;
    unsigned char *blob = tu_snapshot(a, &len);
    curv_opt *b = load_blob(blob, len);
    tu_assert_unchanged(b, blob, len);
    curv_free(blob);
    for (unsigned k = 4; k <= 7; k++) {
        tu_assert_status(tu_mlp_step(a, &net, k != 4, ua, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(b, &net, k != 4, ub, NULL, &err), CURV_OK, &err);
        if (memcmp(ua, ub, d * sizeof(double)))
            fail_msg("step %u differs after save/load", k);
        tu_mlp_advance(&net, ua, 20 + k);
    }
    /* Step 8 (an LM step): save at each request, finish the original. */
    curv_step_input in = tu_mlp_input(&net, 1);
    curv_request req;
    tu_assert_status(curv_opt_step(a, &in, ua, &req, &err), CURV_NEED_INPUT, &err);
    unsigned char *mid = tu_snapshot(a, &len);
    const uint64_t seq1 = req.seq;
    double *vec1 = tu_alloc(req.n_vectors * d), gram[16];
    memcpy(vec1, req.vectors, req.n_vectors * d * sizeof(double));
    tu_mlp_answer(&net, &req, gram);
    curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = gram};
    tu_assert_status(curv_opt_resume(a, &resp, CURV_F64, ua, &req, &err), CURV_NEED_INPUT, &err);
    assert_int_equal(req.kind, CURV_REQ_LOSS);
    size_t len2;
    unsigned char *mid2 = tu_snapshot(a, &len2);
    assert_int_equal(len, len2);
    double h1;
    tu_mlp_answer(&net, &req, &h1);
    curv_response r2 = {.seq = req.seq, .n_values = 1, .values = &h1};
    tu_assert_status(curv_opt_resume(a, &r2, CURV_F64, ua, &req, &err), CURV_OK, &err);

    curv_opt *c = load_blob(mid, len);
    assert_int_equal(curv_opt_interrupted(c), 1);
    assert_int_equal(curv_opt_steps(c), 7);
    tu_assert_status(curv_opt_resume(c, &resp, CURV_F64, ub, &req, &err), CURV_E_STATE, &err);
    tu_assert_status(curv_opt_step(c, &in, ub, &req, &err), CURV_NEED_INPUT, &err);
    assert_true(req.seq > seq1); /* an answer to the old request cannot match */
    assert_memory_equal(req.vectors, vec1, req.n_vectors * d * sizeof(double));
    resp.seq = req.seq;
    tu_assert_status(curv_opt_resume(c, &resp, CURV_F64, ub, &req, &err), CURV_NEED_INPUT, &err);
    r2.seq = req.seq;
    tu_assert_status(curv_opt_resume(c, &r2, CURV_F64, ub, &req, &err), CURV_OK, &err);
    assert_memory_equal(ua, ub, d * sizeof(double));
    assert_int_equal(curv_opt_interrupted(c), 0);
    curv_opt *c2 = load_blob(mid2, len2); /* saved at the LOSS request: same state */
    assert_int_equal(curv_opt_interrupted(c2), 1);
    curv_opt_free(c2);
    curv_free(mid), curv_free(mid2);
    free(vec1), free(ua), free(ub);
    curv_opt_free(a), curv_opt_free(b), tu_mlp_teardown(c, l, &net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_intervals), cmocka_unit_test(test_gamma_tied_to_lambda),
        cmocka_unit_test(test_gamma_step_math),   cmocka_unit_test(test_lm_with_loss_requests),
        cmocka_unit_test(test_lm_next_step),      cmocka_unit_test(test_save_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
