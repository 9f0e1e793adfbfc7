/* SPDX-License-Identifier: MIT */
/*
 * HF on a small regression MLP (2 inputs, 6 tanh units, 1 linear output,
 * squared error), the test playing the trainer: per-example Jacobians
 * written out by hand (and checked against finite differences), the
 * Gauss-Newton matrix G = mean J^T J formed densely, products G v and
 * losses h(θ + v) computed here. HF must drive the training loss down,
 * and the Levenberg-Marquardt rule must answer ρ as the thesis says.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

enum { NI = 2, NH = 6, NP = NH * (NI + 1) + NH + 1, NX = 40 };

struct mlp {
    double x[NX][NI], y[NX];
};

/* The dense "hidden" block W1[NH][NI + 1] and "out" W2[1][NH + 1], biases
 * in the last column, in the layout's flat order. */
static curv_layout *mlp_layout(void)
{
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "hidden", NH, NI, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "out", 1, NH, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(l), NP);
    return l;
}

static void mlp_data(struct mlp *m, tu_rng *rng)
{
    for (size_t n = 0; n < NX; n++) {
        m->x[n][0] = 4 * tu_uniform(rng) - 2;
        m->x[n][1] = 4 * tu_uniform(rng) - 2;
        m->y[n] = sin(1.5 * m->x[n][0]) + 0.3 * m->x[n][1] * m->x[n][1] - 0.5;
    }
}

/* f(θ, x), and J = ∂f/∂θ into @J unless NULL. */
static double forward(const double *th, const double *x, double *J)
{
    const double *W1 = th, *W2 = th + NH * (NI + 1);
    double f = W2[NH];
    for (size_t j = 0; j < NH; j++) {
        double s = W1[j * (NI + 1) + NI];
        for (size_t k = 0; k < NI; k++)
            s += W1[j * (NI + 1) + k] * x[k];
        double h = tanh(s), dh = W2[j] * (1 - h * h);
        f += W2[j] * h;
        if (J) {
            for (size_t k = 0; k < NI; k++)
                J[j * (NI + 1) + k] = dh * x[k];
            J[j * (NI + 1) + NI] = dh;
            J[NH * (NI + 1) + j] = h;
        }
    }
    if (J)
        J[NP - 1] = 1;
    return f;
}

static double mlp_loss(const struct mlp *m, const double *th)
{
    double s = 0;
    for (size_t n = 0; n < NX; n++) {
        double e = forward(th, m->x[n], NULL) - m->y[n];
        s += 0.5 * e * e;
    }
    return s / NX;
}

/* Mean gradient, mean squared per-example gradient, and G = mean J^T J
 * (H_L = 1 for squared error), all at @th. */
static void mlp_stats(const struct mlp *m, const double *th, double *g, double *sq, double *G)
{
    double J[NP];
    memset(g, 0, NP * sizeof *g);
    memset(sq, 0, NP * sizeof *sq);
    memset(G, 0, NP * NP * sizeof *G);
    for (size_t n = 0; n < NX; n++) {
        double e = forward(th, m->x[n], J) - m->y[n];
        for (size_t i = 0; i < NP; i++) {
            g[i] += J[i] * e / NX;
            sq[i] += J[i] * e * J[i] * e / NX;
            for (size_t k = 0; k < NP; k++)
                G[i * NP + k] += J[i] * J[k] / NX;
        }
    }
}

/* The trainer: G v from the dense matrix, losses of the real network. */
struct trainer {
    const struct mlp *m;
    const double *theta;
    tu_quad q;
    double model_scale; /* NAN: true losses; else h0 + scale·M(v) (scripted ρ) */
};

static void trainer_answer(void *ctx, const curv_request *req, double *values)
{
    const struct trainer *t = ctx;
    if (req->kind != CURV_REQ_LOSS) {
        tu_quad_answer((void *)&t->q, req, values);
        return;
    }
    for (size_t k = 0; k < req->n_vectors; k++) {
        const double *v = req->vectors + k * NP;
        double th[NP];
        for (size_t i = 0; i < NP; i++)
            th[i] = t->theta[i] + v[i];
        values[k] = isnan(t->model_scale)
                        ? mlp_loss(t->m, th)
                        : t->q.h0 + t->model_scale * (tu_quad_loss(&t->q, v) - t->q.h0);
    }
}

/* One HF step at @th (moved by the update); returns the loss before. */
static double hf_step(curv_opt *o, const struct mlp *m, double *th, double scale)
{
    double g[NP], sq[NP], u[NP], *G = tu_alloc(NP * NP);
    mlp_stats(m, th, g, sq, G);
    struct trainer t = {m, th, {NP, G, g, mlp_loss(m, th)}, scale};
    curv_step_input in = {
        .grad = g, .len = NP, .dtype = CURV_F64, .loss = t.q.h0, .has_loss = 1, .grad_sq = sq};
    curv_error err;
    tu_assert_status(tu_drive(o, &in, trainer_answer, &t, u, NULL, &err), CURV_OK, &err);
    for (size_t i = 0; i < NP; i++)
        th[i] += u[i];
    free(G);
    return t.q.h0;
}

static void init_theta(tu_rng *rng, double *th)
{
    tu_fill_normal(rng, th, NP, 0.7);
}

/* The hand-written Jacobian agrees with central differences, so the G
 * the other tests build is the network's Gauss-Newton matrix. */
static void test_jacobian_finite_differences(void **state)
{
    (void)state;
    tu_rng rng;
    tu_rng_seed(&rng, 20);
    double th[NP], J[NP], x[NI] = {0.3, -1.1};
    init_theta(&rng, th);
    forward(th, x, J);
    for (size_t i = 0; i < NP; i++) {
        const double eps = 1e-5, keep = th[i];
        th[i] = keep + eps;
        double up = forward(th, x, NULL);
        th[i] = keep - eps;
        double down = forward(th, x, NULL);
        th[i] = keep;
        double fd = (up - down) / (2 * eps);
        if (fabs(fd - J[i]) > 1e-8 * (1 + fabs(J[i])))
            fail_msg("J[%zu] = %.12g, finite differences %.12g", i, J[i], fd);
    }
}

/* HF with the thesis' defaults fits the regression: each step's reported
 * loss_after is the loss at the new parameters, and 25 steps take the
 * loss below 0.1% of where it started (measured: 2.07 -> 3.8e-5). */
static void test_training_reduces_loss(void **state)
{
    (void)state;
    struct mlp m;
    tu_rng rng;
    tu_rng_seed(&rng, 21);
    mlp_data(&m, &rng);
    double th[NP];
    init_theta(&rng, th);
    curv_layout *l = mlp_layout();
    curv_opt *o = tu_new_opt(CURV_OPT_HF, l, NULL);
    const double start = mlp_loss(&m, th);
    for (int k = 1; k <= 25; k++) {
        double before = hf_step(o, &m, th, NAN), after = mlp_loss(&m, th);
        assert_true(tu_report(o, "loss_before") == before);
        assert_true(tu_report(o, "loss_after") == after);
        if (k % 5 == 0)
            print_message("step %2d: loss %.6f, λ %.3g, CG %g, ρ %.3f, α %g\n", k, after,
                          tu_report(o, "lambda"), tu_report(o, "cg_iterations"),
                          tu_report(o, "rho"), tu_report(o, "line_search_alpha"));
    }
    double end = mlp_loss(&m, th);
    print_message("loss %.6f -> %.6f\n", start, end);
    assert_true(end < 1e-3 * start);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* The trainer reports h(θ + v) = h(θ) + s·M(v), M the undamped model, so
 * ρ = s: ρ = 1 lowers λ by 2/3, ρ = -0.1 raises it by 3/2, ρ = 0.5 keeps
 * it (thesis §4.6.5); with rho_model = damped ρ = M(δ)/M̂(δ). */
static void test_levenberg_marquardt(void **state)
{
    (void)state;
    struct mlp m;
    tu_rng rng;
    tu_rng_seed(&rng, 22);
    mlp_data(&m, &rng);
    double th0[NP];
    init_theta(&rng, th0);
    curv_layout *l = mlp_layout();
    const struct {
        double scale;
        const char *rho_model;
        int adapt;
        double factor;
    } cases[] = {{1.0, "undamped", 1, 2.0 / 3.0},
                 {-0.1, "undamped", 1, 1.5},
                 {0.5, "undamped", 1, 1.0},
                 {1.0, "undamped", 0, 1.0},
                 {1.0, "damped", 1, 1.0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        double th[NP];
        memcpy(th, th0, sizeof th);
        const tu_kv kv[] = {{"lambda", 0.3}, {"adapt_lambda", cases[k].adapt}};
        curv_config *c = tu_config(kv, 2);
        tu_config_set(c, "rho_model", 0, cases[k].rho_model);
        curv_opt *o = tu_new_opt(CURV_OPT_HF, l, c);
        hf_step(o, &m, th, cases[k].scale);
        double rho = tu_report(o, "rho"), want = cases[k].scale;
        if (strcmp(cases[k].rho_model, "damped") == 0) {
            /* α = 1 here, so the update is δ. */
            double norm2 = 0, M = tu_report(o, "model_value");
            for (size_t i = 0; i < NP; i++)
                norm2 += (th[i] - th0[i]) * (th[i] - th0[i]);
            want = M / (M + 0.5 * 0.3 * norm2);
            assert_true(fabs(tu_report(o, "model_value_damped") - (M + 0.15 * norm2)) <
                        1e-9 * fabs(M));
            assert_true(tu_report(o, "line_search_alpha") == 1);
        }
        if (fabs(rho - want) > 1e-6 * fabs(want))
            fail_msg("case %zu: rho %.12g, want %.12g", k, rho, want);
        double lambda = tu_report(o, "lambda");
        if (cases[k].rho_model[0] == 'd')
            assert_true(lambda == (want > 0.75 ? 0.3 * (2.0 / 3.0) : 0.3));
        else
            assert_true(lambda == 0.3 * cases[k].factor);
        curv_opt_free(o);
        curv_config_free(c);
    }
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_jacobian_finite_differences),
        cmocka_unit_test(test_training_reduces_loss),
        cmocka_unit_test(test_levenberg_marquardt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
