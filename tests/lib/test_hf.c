/* SPDX-License-Identifier: MIT */
/*
 * Hessian-free optimization (hf.c, hf_cg.c, hf_select.c) against dense
 * math done here: the test plays the trainer, answering curvature
 * products from an explicit matrix, and checks the updates against
 * Gauss-Jordan solves of the damped system and against a PCG written in
 * this file (thesis Algorithm 2). The MLP cases form the Gauss-Newton
 * matrix of a small network densely. The request protocol, refusals and
 * save/load are in test_hf_protocol.c.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* A layout of one vector block of @d parameters. */
static curv_layout *flat(size_t d)
{
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "w", d, NULL), CURV_OK);
    return l;
}

static curv_step_input input(const double *g, size_t d, double loss, const double *sq)
{
    return (curv_step_input){
        .grad = g, .len = d, .dtype = CURV_F64, .loss = loss, .has_loss = 1, .grad_sq = sq};
}

/* x = A^-1 b by Gauss-Jordan elimination with partial pivoting. */
static void gauss_solve(size_t n, const double *A, const double *b, double *x)
{
    double *M = tu_alloc(n * (n + 1));
    for (size_t i = 0; i < n; i++) {
        memcpy(M + i * (n + 1), A + i * n, n * sizeof *M);
        M[i * (n + 1) + n] = b[i];
    }
    for (size_t c = 0; c < n; c++) {
        size_t piv = c;
        for (size_t i = c + 1; i < n; i++)
            if (fabs(M[i * (n + 1) + c]) > fabs(M[piv * (n + 1) + c]))
                piv = i;
        for (size_t j = 0; j <= n; j++) {
            double t = M[c * (n + 1) + j];
            M[c * (n + 1) + j] = M[piv * (n + 1) + j];
            M[piv * (n + 1) + j] = t;
        }
        for (size_t i = 0; i < n; i++) {
            if (i == c)
                continue;
            double f = M[i * (n + 1) + c] / M[c * (n + 1) + c];
            for (size_t j = c; j <= n; j++)
                M[i * (n + 1) + j] -= f * M[c * (n + 1) + j];
        }
    }
    for (size_t i = 0; i < n; i++)
        x[i] = M[i * (n + 1) + n] / M[i * (n + 1) + i];
    free(M);
}

/* The damped Newton step −(G + λ·diag(D))^-1 g (D NULL: the identity). */
static void newton_step(size_t d, const double *G, const double *D, double lambda, const double *g,
                        double *x)
{
    double *A = tu_alloc(d * d), *b = tu_alloc(d);
    memcpy(A, G, d * d * sizeof *A);
    for (size_t i = 0; i < d; i++) {
        A[i * d + i] += lambda * (D ? D[i] : 1.0);
        b[i] = -g[i];
    }
    gauss_solve(d, A, b, x);
    free(A);
    free(b);
}

/* A random SPD G, badly scaled when @spread > 0 (S G0 S with S_ii spread
 * over 10^±spread), so that a diagonal preconditioner has work to do. */
static void problem(tu_rng *rng, size_t d, double spread, double *G, double *g)
{
    double *s = tu_alloc(d);
    tu_rand_spd(rng, d, 0.05, G);
    for (size_t i = 0; i < d; i++)
        s[i] = pow(10.0, spread * (2 * tu_uniform(rng) - 1));
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++)
            G[i * d + j] *= s[i] * s[j];
    tu_fill_normal(rng, g, d, 1.0);
    free(s);
}

static void diagonal(size_t d, const double *G, double *out)
{
    for (size_t i = 0; i < d; i++)
        out[i] = G[i * d + i];
}

/* With CG run to convergence (cg_eps = 0, no backtracking) the update is
 * the exact damped Newton step, with and without the preconditioner. */
static void exact_damped_newton(size_t d)
{
    tu_rng rng;
    tu_rng_seed(&rng, 1);
    double *G = tu_alloc(d * d), *g = tu_alloc(d), *sq = tu_alloc(d), *u = tu_alloc(d);
    double *want = tu_alloc(d);
    problem(&rng, d, 0.0, G, g);
    for (size_t i = 0; i < d; i++)
        sq[i] = 0.1 + tu_uniform(&rng);
    const double lambda = 0.5;
    newton_step(d, G, NULL, lambda, g, want);
    curv_layout *l = flat(d);
    static const char *const pre[] = {"none", "fisher_diag"};
    for (int k = 0; k < 2; k++) {
        const tu_kv kv[] = {{"lambda", lambda}, {"cg_eps", 0}, {"cg_max", 1000}, {"backtrack", 0}};
        curv_config *c = tu_config(kv, 4);
        tu_config_set(c, "precond", 0, pre[k]);
        curv_opt *o = tu_new_opt(CURV_OPT_HF, l, c);
        tu_quad q = {d, G, g, 3.0};
        curv_step_input in = input(g, d, q.h0, sq);
        curv_error err;
        tu_assert_status(tu_drive(o, &in, tu_quad_answer, &q, u, NULL, &err), CURV_OK, &err);
        char what[48];
        snprintf(what, sizeof what, "%s, d = %zu", pre[k], d);
        tu_expect_close(u, want, d, 1e-8, what, 1);
        assert_true(tu_report(o, "lambda_used") == lambda);
        assert_true(tu_report(o, "line_search_alpha") == 1.0);
        assert_true(tu_report(o, "loss_after") == tu_quad_loss(&q, u));
        assert_int_equal(curv_opt_steps(o), 1);
        curv_opt_free(o);
        curv_config_free(c);
    }
    free(G);
    free(g);
    free(sq);
    free(u);
    free(want);
    curv_layout_free(l);
}

/* d = 517 also runs the CG passes' prefetching branch (d > 512) and
 * their scalar tails (d mod 8 = 5). */
static void test_exact_damped_newton(void **state)
{
    (void)state;
    exact_damped_newton(50);
    exact_damped_newton(517);
}

/* Run one HF step on @G, @g with @precond and the progress test at
 * 1e-12; returns the CG iterations it took, the update in @u. */
static double solve_with(const curv_layout *l, size_t d, const double *G, const double *g,
                         const double *sq, const char *precond, double *u)
{
    const tu_kv kv[] = {{"lambda", 0.1}, {"cg_eps", 1e-12}, {"cg_max", 5000}, {"backtrack", 0}};
    curv_config *c = tu_config(kv, 4);
    tu_config_set(c, "precond", 0, precond);
    curv_opt *o = tu_new_opt(CURV_OPT_HF, l, c);
    tu_quad q = {d, G, g, 0.0};
    curv_step_input in = input(g, d, 0.0, sq);
    curv_error err;
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &q, u, NULL, &err), CURV_OK, &err);
    double iters = tu_report(o, "cg_iterations");
    assert_true(tu_report(o, "cg_stop") == 0); /* the progress test, not cg_max */
    curv_opt_free(o);
    curv_config_free(c);
    return iters;
}

/* On a badly scaled G the empirical-Fisher-style diagonal preconditioner
 * (here fed the exact diagonal of G) reaches the same solution in fewer
 * CG iterations. */
static void test_preconditioner_saves_iterations(void **state)
{
    (void)state;
    enum { D = 50 };
    tu_rng rng;
    tu_rng_seed(&rng, 2);
    double *G = tu_alloc(D * D), g[D], sq[D], u0[D], u1[D], want[D];
    problem(&rng, D, 1.5, G, g);
    diagonal(D, G, sq);
    newton_step(D, G, NULL, 0.1, g, want);
    curv_layout *l = flat(D);
    double plain = solve_with(l, D, G, g, sq, "none", u0);
    double pre = solve_with(l, D, G, g, sq, "fisher_diag", u1);
    tu_expect_close(u0, want, D, 1e-6, "no preconditioner", 1);
    tu_expect_close(u1, want, D, 1e-6, "fisher_diag", 1);
    print_message("CG iterations: %g without, %g with the preconditioner\n", plain, pre);
    assert_true(pre < plain);
    free(G);
    curv_layout_free(l);
}

/* Answers the first request only, keeping its vector. */
struct first_request {
    tu_quad q;
    int seen;
    curv_request_kind kind;
    double *v;
};

static void keep_first(void *ctx, const curv_request *req, double *values)
{
    struct first_request *f = ctx;
    if (!f->seen++) {
        f->kind = req->kind;
        memcpy(f->v, req->vectors, req->dim * sizeof *f->v);
    }
    tu_quad_answer(&f->q, req, values);
}

/* The first CG direction is p_0 = −P^-1 g with P = (F̄ + λD + κ)^ξ, and
 * D = (F̄ + κ_D)^ξ_D under diag damping (thesis §4.9.2, §4.6.3). */
static void test_preconditioner_formula(void **state)
{
    (void)state;
    enum { D = 12 };
    tu_rng rng;
    tu_rng_seed(&rng, 3);
    double *G = tu_alloc(D * D), g[D], sq[D], u[D], v[D], want[D];
    problem(&rng, D, 0.5, G, g);
    for (size_t i = 0; i < D; i++)
        sq[i] = i == 3 ? 0.0 : tu_uniform(&rng) * (1 + (double)i);
    curv_layout *l = flat(D);
    const struct {
        const char *damping;
        double xi, kappa, dxi, dkappa;
    } cases[] = {{"tikhonov", 0.75, 0.0, 1, 0},
                 {"tikhonov", 0.5, 0.3, 1, 0},
                 {"diag", 0.75, 0.01, 1, 0},
                 {"diag", 1.0, 0.0, 0.5, 0.2}};
    const double lambda = 0.7;
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const tu_kv kv[] = {{"lambda", lambda},
                            {"precond_xi", cases[k].xi},
                            {"precond_kappa", cases[k].kappa},
                            {"damping_xi", cases[k].dxi},
                            {"damping_kappa", cases[k].dkappa}};
        curv_config *c = tu_config(kv, 5);
        tu_config_set(c, "damping", 0, cases[k].damping);
        curv_opt *o = tu_new_opt(CURV_OPT_HF, l, c);
        struct first_request f = {{D, G, g, 1.0}, 0, CURV_REQ_NONE, v};
        curv_step_input in = input(g, D, 1.0, sq);
        curv_error err;
        tu_assert_status(tu_drive(o, &in, keep_first, &f, u, NULL, &err), CURV_OK, &err);
        assert_int_equal(f.kind, CURV_REQ_CURVATURE_PRODUCT);
        for (size_t i = 0; i < D; i++) {
            double dd = strcmp(cases[k].damping, "diag") == 0
                            ? pow(sq[i] + cases[k].dkappa, cases[k].dxi)
                            : 1.0;
            want[i] = -g[i] / pow(sq[i] + lambda * dd + cases[k].kappa, cases[k].xi);
        }
        tu_expect_close(v, want, D, 1e-14, cases[k].damping, (int)k);
        curv_opt_free(o);
        curv_config_free(c);
    }
    free(G);
    curv_layout_free(l);
}

/* Scale-sensitive damping (§4.6.3): the converged update solves
 * (G + λ·diag((F̄ + κ_D)^ξ_D)) δ = −g. */
static void test_diag_damping_solution(void **state)
{
    (void)state;
    enum { D = 30 };
    tu_rng rng;
    tu_rng_seed(&rng, 4);
    double *G = tu_alloc(D * D), g[D], sq[D], dd[D], u[D], want[D];
    problem(&rng, D, 0.5, G, g);
    for (size_t i = 0; i < D; i++)
        sq[i] = 0.05 + tu_uniform(&rng);
    curv_layout *l = flat(D);
    const double xis[] = {1.0, 0.5}, kappas[] = {0.0, 0.2}, lambda = 2.0;
    for (size_t k = 0; k < 2; k++) {
        const tu_kv kv[] = {{"lambda", lambda},     {"cg_eps", 0},
                            {"cg_max", 1000},       {"backtrack", 0},
                            {"damping_xi", xis[k]}, {"damping_kappa", kappas[k]}};
        curv_config *c = tu_config(kv, 6);
        tu_config_set(c, "damping", 0, "diag");
        curv_opt *o = tu_new_opt(CURV_OPT_HF, l, c);
        tu_quad q = {D, G, g, 0.0};
        curv_step_input in = input(g, D, 0.0, sq);
        curv_error err;
        tu_assert_status(tu_drive(o, &in, tu_quad_answer, &q, u, NULL, &err), CURV_OK, &err);
        for (size_t i = 0; i < D; i++)
            dd[i] = pow(sq[i] + kappas[k], xis[k]);
        newton_step(D, G, dd, lambda, g, want);
        tu_expect_close(u, want, D, 1e-8, "diag damping", (int)k);
        curv_opt_free(o);
        curv_config_free(c);
    }
    free(G);
    curv_layout_free(l);
}

/* The round(ν^m) schedule of stored iterates, computed here: 1 when @it
 * is a point of it. */
static int scheduled(size_t it, double nu)
{
    for (double p = 1; p < 2.0 * (double)it + 2; p *= nu)
        if ((size_t)llround(p) == it)
            return 1;
    return 0;
}

/* PCG (Algorithm 2) on A = G + λI, P = (sq + λ)^ξ, from x_0 = 0: the
 * iterates x_1..x_n into X (n x d). */
static void reference_pcg(size_t d, const double *G, double lambda, const double *g,
                          const double *sq, double xi, size_t n, double *X)
{
    double *x = tu_alloc(d), *r = tu_alloc(d), *y = tu_alloc(d), *p = tu_alloc(d);
    double *ap = tu_alloc(d);
    for (size_t i = 0; i < d; i++) {
        r[i] = g[i];
        y[i] = r[i] / pow(sq[i] + lambda, xi);
        p[i] = -y[i];
    }
    for (size_t k = 0; k < n; k++) {
        double ry = 0, pap = 0, ry2 = 0;
        tu_matmul(d, d, 1, G, p, ap);
        for (size_t i = 0; i < d; i++) {
            ap[i] += lambda * p[i];
            ry += r[i] * y[i];
            pap += p[i] * ap[i];
        }
        for (size_t i = 0; i < d; i++) {
            x[i] += ry / pap * p[i];
            r[i] += ry / pap * ap[i];
            y[i] = r[i] / pow(sq[i] + lambda, xi);
            ry2 += r[i] * y[i];
        }
        for (size_t i = 0; i < d; i++)
            p[i] = -y[i] + ry2 / ry * p[i];
        memcpy(X + k * d, x, d * sizeof *x);
    }
    free(x);
    free(r);
    free(y);
    free(p);
    free(ap);
}

/* A quadratic trainer whose LOSS answers the test may script: the first
 * LOSS request (the backtracking candidates) gets h0 + bt_loss[k] unless
 * bt_loss is NULL; later ones (the line search) get h0 + ls_loss unless
 * it is NaN. The vectors of each kind of request are kept. */
struct scripted {
    tu_quad q;
    const double *bt_loss;
    double ls_loss;
    size_t n_loss_req, n_cand, n_ls;
    double *cand, *ls;
};

static void scripted_answer(void *ctx, const curv_request *req, double *values)
{
    struct scripted *s = ctx;
    const size_t n = req->n_vectors, bytes = n * s->q.d * sizeof(double);
    tu_quad_answer(&s->q, req, values);
    if (req->kind != CURV_REQ_LOSS)
        return;
    if (++s->n_loss_req == 1) {
        s->n_cand = n;
        memcpy(s->cand, req->vectors, bytes);
        for (size_t k = 0; s->bt_loss && k < n; k++)
            values[k] = s->q.h0 + s->bt_loss[k];
    } else {
        s->n_ls = n;
        memcpy(s->ls, req->vectors, bytes);
        for (size_t k = 0; !isnan(s->ls_loss) && k < n; k++)
            values[k] = s->q.h0 + s->ls_loss;
    }
}

/* The stored iterates are the PCG iterates at round(1.3^m) and the last
 * one; backtracking picks the one the trainer gives the lowest loss. (Two
 * correct CGs drift apart by round-off growing ~10x per iteration here, so
 * the comparison stops at 24 iterations: 1e-15 at 14, 1e-10 at 23.) */
static void backtracking_candidates(size_t d)
{
    enum { N = 24 };
    tu_rng rng;
    tu_rng_seed(&rng, 5);
    double *G = tu_alloc(d * d), *g = tu_alloc(d), *sq = tu_alloc(d), *u = tu_alloc(d);
    problem(&rng, d, 0.5, G, g);
    for (size_t i = 0; i < d; i++)
        sq[i] = 0.5 * G[i * d + i];
    double *X = tu_alloc(N * d), *cand = tu_alloc(64 * d), *ls = tu_alloc(64 * d);
    const double lambda = 1e-2;
    reference_pcg(d, G, lambda, g, sq, 0.75, N, X);
    size_t its[64], m = 0;
    for (size_t it = 1; it <= N; it++)
        if (scheduled(it, 1.3) || it == N)
            its[m++] = it;
    assert_int_equal(m, 12); /* 1 2 3 4 5 6 8 11 14 18 23, and 24 */
    curv_layout *l = flat(d);
    const tu_kv kv[] = {{"lambda", lambda}, {"cg_eps", 0}, {"cg_max", N}, {"adapt_lambda", 0}};
    curv_opt *o = tu_opt_with(CURV_OPT_HF, l, kv, 4);
    const size_t pick = 6; /* iteration 8 */
    double bt[64];
    for (size_t k = 0; k < m; k++)
        bt[k] = k == pick ? -1e6 : (double)k; /* far below anything: α = 1 passes */
    struct scripted s = {{d, G, g, 2.0}, bt, NAN, 0, 0, 0, cand, ls};
    curv_step_input in = input(g, d, 2.0, sq);
    curv_error err;
    size_t n_req;
    tu_assert_status(tu_drive(o, &in, scripted_answer, &s, u, &n_req, &err), CURV_OK, &err);
    assert_int_equal(s.n_cand, m);
    assert_int_equal(s.n_loss_req, 1);
    assert_int_equal(n_req, N + 1); /* one product per iteration, one LOSS */
    for (size_t k = 0; k < m; k++) {
        char what[64];
        snprintf(what, sizeof what, "d = %zu, candidate %zu (iteration %zu)", d, k, its[k]);
        tu_expect_close(cand + k * d, X + (its[k] - 1) * d, d, 1e-8, what, 1);
    }
    assert_memory_equal(u, cand + pick * d, d * sizeof *u);
    assert_true(tu_report(o, "chosen_iterate") == (double)its[pick]);
    assert_true(tu_report(o, "candidates") == (double)m);
    assert_true(tu_report(o, "cg_iterations") == N);
    assert_true(tu_report(o, "cg_stop") == 1);
    assert_true(tu_report(o, "loss_after") == 2.0 - 1e6);
    curv_opt_free(o);
    free(G);
    free(g);
    free(sq);
    free(u);
    free(X);
    free(cand);
    free(ls);
    curv_layout_free(l);
}

/* d = 523 also copies the stored iterates in the prefetching branch of
 * the x, r pass (d > 512) and in its scalar tail (d mod 8 = 3). */
static void test_backtracking_candidates(void **state)
{
    (void)state;
    backtracking_candidates(40);
    backtracking_candidates(523);
}

/* Candidates asked about a batch at a time, latest first: the losses
 * scripted per candidate index, each request checked against the
 * reference iterates it should hold. */
struct batched {
    tu_quad q;
    size_t m, batch, calls;
    const double *loss; /* per candidate */
    const double *X;    /* reference iterates */
    const size_t *its;  /* the candidates' iterations */
};

static void batched_answer(void *ctx, const curv_request *req, double *values)
{
    struct batched *b = ctx;
    tu_quad_answer(&b->q, req, values);
    if (req->kind != CURV_REQ_LOSS)
        return;
    size_t first = b->m - b->batch * ++b->calls;
    assert_int_equal(req->n_vectors, b->batch);
    for (size_t j = 0; j < req->n_vectors; j++) {
        const size_t d = b->q.d, it = b->its[first + j];
        tu_expect_close(req->vectors + j * d, b->X + (it - 1) * d, d, 1e-8, "batched candidate",
                        (int)it);
        values[j] = b->q.h0 + b->loss[first + j];
    }
}

enum { BD = 40 }; /* the batched tests' dimension */

/* Batches of 3 (by @key = @value): the batches go back while the loss
 * keeps falling going backwards and stop after the batch in which it
 * rises (thesis §4.6.7); the lowest loss seen wins, earlier candidates are
 * never asked. */
static void backtracking_in_threes(const char *key, double value)
{
    enum { D = BD, N = 24 };
    tu_rng rng;
    tu_rng_seed(&rng, 5);
    double *G = tu_alloc(D * D), g[D], sq[D], u[D], *X = tu_alloc(N * D);
    problem(&rng, D, 0.5, G, g);
    for (size_t i = 0; i < D; i++)
        sq[i] = 0.5 * G[i * D + i];
    reference_pcg(D, G, 1e-2, g, sq, 0.75, N, X);
    const size_t its[12] = {1, 2, 3, 4, 5, 6, 8, 11, 14, 18, 23, 24};
    /* Falling going back from 11 to 4, up at 3. */
    double loss[12] = {-5e6, -5e6, -5e6, 100};
    for (size_t k = 4; k < 12; k++)
        loss[k] = -1e6 + (double)k;
    curv_layout *l = flat(D);
    const tu_kv kv[] = {{"lambda", 1e-2}, {"cg_eps", 0}, {"cg_max", N}, {key, value}};
    curv_opt *o = tu_opt_with(CURV_OPT_HF, l, kv, 4);
    struct batched b = {{D, G, g, 0.0}, 12, 3, 0, loss, X, its};
    curv_step_input in = input(g, D, 0.0, sq);
    curv_error err;
    tu_assert_status(tu_drive(o, &in, batched_answer, &b, u, NULL, &err), CURV_OK, &err);
    assert_int_equal(b.calls, 3);
    tu_expect_close(u, X + (its[4] - 1) * D, D, 1e-8, "chosen", 1);
    assert_true(tu_report(o, "chosen_iterate") == its[4]);
    assert_true(tu_report(o, "loss_evaluations") == 9);
    curv_opt_free(o);
    free(G);
    free(X);
    curv_layout_free(l);
}

static void test_backtracking_batches(void **state)
{
    (void)state;
    backtracking_in_threes("backtrack_batch", 3);
}

/* Room for 3.98 vectors of d per request: backtrack_batch (32) shrinks to 3. */
static void test_backtracking_request_cap(void **state)
{
    (void)state;
    backtracking_in_threes("max_request_values", 4 * BD - 1);
}

/* A scripted line-search answer: the loss rises for α = β, falls far for
 * smaller α. */
static void shrink_answer(void *ctx, const curv_request *req, double *values)
{
    struct scripted *s = ctx;
    scripted_answer(ctx, req, values);
    if (req->kind == CURV_REQ_LOSS && s->n_loss_req > 1)
        for (size_t k = 0; k < req->n_vectors; k++)
            values[k] = s->q.h0 + (k == 0 ? 1.0 : -1e6);
}

/* When h(θ + δ) rises, the line search asks for α = β, β², ... in one
 * request and takes the largest α with sufficient decrease (§4.6.8); when
 * none of ls_max step sizes has it, the step is rejected (Δ = 0). Either
 * way ρ < 0 raised λ by the LM factor. */
static void test_line_search(void **state)
{
    (void)state;
    enum { D = 20 };
    tu_rng rng;
    tu_rng_seed(&rng, 6);
    double *G = tu_alloc(D * D), g[D], sq[D], u[D];
    double *cand = tu_alloc(64 * D), *ls = tu_alloc(64 * D), up[64];
    problem(&rng, D, 0.3, G, g);
    diagonal(D, G, sq);
    for (size_t k = 0; k < 64; k++)
        up[k] = 1.0; /* every candidate makes the loss rise */
    curv_layout *l = flat(D);
    for (int exhaust = 0; exhaust < 2; exhaust++) {
        const tu_kv kv[] = {{"lambda", 0.4}, {"cg_max", 30}};
        curv_opt *o = tu_opt_with(CURV_OPT_HF, l, kv, 2);
        struct scripted s = {{D, G, g, 5.0}, up, exhaust ? 1.0 : NAN, 0, 0, 0, cand, ls};
        curv_step_input in = input(g, D, 5.0, sq);
        curv_error err;
        tu_assert_status(
            tu_drive(o, &in, exhaust ? scripted_answer : shrink_answer, &s, u, NULL, &err), CURV_OK,
            &err);
        const double *delta = cand + (s.n_cand - 1) * D; /* a tie: the latest */
        if (!exhaust) {
            assert_int_equal(s.n_loss_req, 2);
            assert_int_equal(s.n_ls, 8); /* ls_batch */
            for (size_t k = 0; k < 8; k++)
                for (size_t i = 0; i < D; i++)
                    assert_true(ls[k * D + i] == pow(0.8, (double)(k + 1)) * delta[i]);
            for (size_t i = 0; i < D; i++)
                assert_true(u[i] == pow(0.8, 2) * delta[i]);
            assert_true(tu_report(o, "line_search_alpha") == pow(0.8, 2));
            assert_true(tu_report(o, "loss_after") == 5.0 - 1e6);
        } else {
            assert_int_equal(s.n_loss_req, 1 + 8); /* 60 = 7 x 8 + 4 */
            assert_int_equal(s.n_ls, 4);
            for (size_t i = 0; i < D; i++)
                assert_true(u[i] == 0);
            assert_true(tu_report(o, "line_search_alpha") == 0);
            assert_true(tu_report(o, "loss_after") == 5.0);
            assert_true(tu_report(o, "update_norm") == 0);
        }
        assert_true(tu_report(o, "rho") < 0);
        assert_true(tu_report(o, "lambda") == 0.4 * 1.5);
        curv_opt_free(o);
    }
    free(G);
    free(cand);
    free(ls);
    curv_layout_free(l);
}

/* max_request_values room for 3.5 vectors: the line search asks 3 step
 * sizes per request (ls_batch 8), 60 in 20 requests, and rejects the step
 * when all rise. */
static void test_line_search_request_cap(void **state)
{
    (void)state;
    enum { D = 20 };
    tu_rng rng;
    tu_rng_seed(&rng, 6);
    double *G = tu_alloc(D * D), g[D], sq[D], u[D], up[1] = {1.0};
    double *cand = tu_alloc(D), *ls = tu_alloc(8 * D);
    problem(&rng, D, 0.3, G, g);
    diagonal(D, G, sq);
    curv_layout *l = flat(D);
    const tu_kv kv[] = {
        {"lambda", 0.4}, {"cg_max", 30}, {"backtrack", 0}, {"max_request_values", 3.5 * D}};
    curv_opt *o = tu_opt_with(CURV_OPT_HF, l, kv, 4);
    struct scripted s = {{D, G, g, 5.0}, up, 1.0, 0, 0, 0, cand, ls};
    curv_step_input in = input(g, D, 5.0, sq);
    curv_error err;
    tu_assert_status(tu_drive(o, &in, scripted_answer, &s, u, NULL, &err), CURV_OK, &err);
    assert_int_equal(s.n_cand, 1);
    assert_int_equal(s.n_loss_req, 1 + 20);
    assert_int_equal(s.n_ls, 3);
    for (size_t k = 0; k < 3; k++) /* the last request: β^58 .. β^60 */
        for (size_t i = 0; i < D; i++)
            assert_true(ls[k * D + i] == pow(0.8, (double)(58 + k)) * cand[i]);
    for (size_t i = 0; i < D; i++)
        assert_true(u[i] == 0);
    assert_true(tu_report(o, "line_search_alpha") == 0);
    curv_opt_free(o);
    free(G);
    free(cand);
    free(ls);
    curv_layout_free(l);
}

/* The last candidate's loss a hair above or below h0 + c·gᵀδ (the others
 * rise): sufficient decrease decides between α = 1 and a line search. */
struct boundary {
    tu_quad q;
    double side; /* +1: just above the bound, -1: just below */
    size_t loss_requests;
};

static void boundary_answer(void *ctx, const curv_request *req, double *values)
{
    struct boundary *b = ctx;
    tu_quad_answer(&b->q, req, values);
    if (req->kind != CURV_REQ_LOSS || b->loss_requests++ > 0)
        return;
    const size_t n = req->n_vectors, d = b->q.d;
    double gd = 0;
    for (size_t i = 0; i < d; i++)
        gd += b->q.g[i] * req->vectors[(n - 1) * d + i];
    assert_true(gd < 0);
    for (size_t k = 0; k + 1 < n; k++)
        values[k] = b->q.h0 + 1;
    values[n - 1] = b->q.h0 + 1e-2 * gd * (1 - b->side * 1e-9);
}

static void test_sufficient_decrease_bound(void **state)
{
    (void)state;
    enum { D = 16 };
    tu_rng rng;
    tu_rng_seed(&rng, 9);
    double *G = tu_alloc(D * D), g[D], sq[D], u[D];
    problem(&rng, D, 0.3, G, g);
    diagonal(D, G, sq);
    curv_layout *l = flat(D);
    for (int side = -1; side <= 1; side += 2) {
        curv_opt *o = tu_new_opt(CURV_OPT_HF, l, NULL);
        struct boundary b = {{D, G, g, 0.25}, side, 0};
        curv_step_input in = input(g, D, 0.25, sq);
        curv_error err;
        tu_assert_status(tu_drive(o, &in, boundary_answer, &b, u, NULL, &err), CURV_OK, &err);
        assert_int_equal(b.loss_requests, side < 0 ? 1 : 2);
        assert_true(tu_report(o, "line_search_alpha") == (side < 0 ? 1.0 : 0.8));
        curv_opt_free(o);
    }
    free(G);
    curv_layout_free(l);
}

/* The second step starts CG from ζ times the last CG iterate (or the
 * backtracked choice), asks for G x_0 first, and still converges to the
 * new system's solution; with ζ = 0 there is no extra product. */
static void test_warm_start(void **state)
{
    (void)state;
    enum { D = 24 };
    tu_rng rng;
    tu_rng_seed(&rng, 7);
    double *G1 = tu_alloc(D * D), *G2 = tu_alloc(D * D), g1[D], g2[D], sq[D], u1[D], u2[D];
    double *cand = tu_alloc(64 * D), *ls = tu_alloc(64 * D), v[D], want[D], bt[64];
    problem(&rng, D, 0.3, G1, g1);
    problem(&rng, D, 0.3, G2, g2);
    diagonal(D, G2, sq);
    for (size_t k = 0; k < 64; k++)
        bt[k] = k == 1 ? -1e6 : 0.0; /* backtracking picks iteration 2 */
    curv_layout *l = flat(D);
    static const char *const modes[] = {"last", "chosen", "last"};
    const double zetas[] = {0.95, 0.5, 0.0};
    for (int k = 0; k < 3; k++) {
        const tu_kv kv[] = {{"lambda", 0.2}, {"cg_max", 6}, {"zeta", zetas[k]}};
        curv_config *c = tu_config(kv, 3);
        tu_config_set(c, "warm_start", 0, modes[k]);
        curv_opt *o = tu_new_opt(CURV_OPT_HF, l, c);
        struct scripted s = {{D, G1, g1, 1.0}, bt, NAN, 0, 0, 0, cand, ls};
        curv_step_input in = input(g1, D, 1.0, sq);
        curv_error err;
        tu_assert_status(tu_drive(o, &in, scripted_answer, &s, u1, NULL, &err), CURV_OK, &err);
        assert_true(tu_report(o, "chosen_iterate") == 2);
        assert_memory_equal(u1, cand + D, sizeof u1);
        const double *prev = k == 1 ? u1 : cand + (s.n_cand - 1) * D;
        /* Step 2 runs CG to convergence on a new system. */
        const tu_kv more[] = {{"cg_max", 1000}, {"cg_eps", 0}, {"backtrack", 0}};
        curv_config *m = tu_config(more, 3);
        tu_assert_status(curv_opt_reconfigure(o, m, &err), CURV_OK, &err);
        struct first_request f = {{D, G2, g2, 1.0}, 0, CURV_REQ_NONE, v};
        in = input(g2, D, 1.0, sq);
        tu_assert_status(tu_drive(o, &in, keep_first, &f, u2, NULL, &err), CURV_OK, &err);
        assert_int_equal(f.kind, CURV_REQ_CURVATURE_PRODUCT);
        double products = tu_report(o, "curvature_products"), iters = tu_report(o, "cg_iterations");
        double extra = tu_report(o, "cg_stop") == 2; /* the product CG stopped on */
        if (zetas[k] > 0) {
            for (size_t i = 0; i < D; i++)
                assert_true(v[i] == zetas[k] * prev[i]);
            assert_true(products == iters + 1 + extra);
        } else {
            assert_true(products == iters + extra);
        }
        newton_step(D, G2, NULL, tu_report(o, "lambda_used"), g2, want);
        tu_expect_close(u2, want, D, 1e-8, modes[k], 2);
        curv_opt_free(o);
        curv_config_free(c);
        curv_config_free(m);
    }
    free(G1);
    free(G2);
    free(cand);
    free(ls);
    curv_layout_free(l);
}

/* A zero gradient without a warm start: Δ = 0 at once, no request, λ kept. */
static void test_zero_gradient(void **state)
{
    (void)state;
    enum { D = 5 };
    double g[D] = {0}, sq[D] = {0}, u[D] = {1, 1, 1, 1, 1}, G[D * D] = {0};
    curv_layout *l = flat(D);
    curv_opt *o = tu_new_opt(CURV_OPT_HF, l, NULL);
    tu_quad q = {D, G, g, 0.5};
    curv_step_input in = input(g, D, 0.5, sq);
    size_t n_req = 99;
    curv_error err;
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &q, u, &n_req, &err), CURV_OK, &err);
    assert_int_equal(n_req, 0);
    for (size_t i = 0; i < D; i++)
        assert_true(u[i] == 0);
    assert_true(tu_report(o, "lambda") == 0.3);
    assert_true(tu_report(o, "cg_iterations") == 0);
    assert_true(tu_report(o, "round_trips") == 0);
    curv_opt_free(o);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_damped_newton),
        cmocka_unit_test(test_preconditioner_saves_iterations),
        cmocka_unit_test(test_preconditioner_formula),
        cmocka_unit_test(test_diag_damping_solution),
        cmocka_unit_test(test_backtracking_candidates),
        cmocka_unit_test(test_backtracking_batches),
        cmocka_unit_test(test_backtracking_request_cap),
        cmocka_unit_test(test_line_search),
        cmocka_unit_test(test_line_search_request_cap),
        cmocka_unit_test(test_sufficient_decrease_bound),
        cmocka_unit_test(test_warm_start),
        cmocka_unit_test(test_zero_gradient),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
