/* SPDX-License-Identifier: MIT */
/*
 * inverse = tridiag (kfac_chain.c with kfac_tri.c): the update of a chain
 * of dense layers against the dense inverse of the thesis' F̂ formed here
 * by the chain (junction-tree) rule F̂⁻¹ = Σ_cliques T_C⁻¹ − Σ_separators
 * T_S⁻¹ from the damped tridiagonal blocks of F̃, each inverted by
 * Gauss-Jordan; chain statistics rules; save/load with γ candidates.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* (1/m) Σ x yᵀ with x, y extended by a 1 when @bx, @by. */
static double *cross(const double *X, size_t nx, int bx, const double *Y, size_t ny, int by,
                     size_t m)
{
    size_t r = nx + (size_t)bx, c = ny + (size_t)by;
    double *C = tu_alloc(r * c);
    for (size_t e = 0; e < m; e++)
        for (size_t i = 0; i < r; i++)
            for (size_t j = 0; j < c; j++)
                C[i * c + j] +=
                    (i < nx ? X[e * nx + i] : 1.0) * (j < ny ? Y[e * ny + j] : 1.0) / (double)m;
    return C;
}

enum { L = 3 };

/* The dense F̂⁻¹ g of the chain of @net's L layers at damping @gamma into
 * @x, from the batch statistics (the factors of a first step). */
static void dense_tridiag(const tu_mlp *net, double gamma, const double *g, double *x)
{
    size_t nr[L], nc[L], off[L + 1] = {0};
    double *Ad[L], *Gd[L];
    for (size_t i = 0; i < L; i++) {
        nr[i] = net->n[i + 1], nc[i] = net->n[i] + 1;
        off[i + 1] = off[i] + nr[i] * nc[i];
        Ad[i] = cross(net->acts[i], net->n[i], 1, net->acts[i], net->n[i], 1, net->m);
        Gd[i] = cross(net->sig[i], nr[i], 0, net->sig[i], nr[i], 0, net->m);
        double pi = tu_kfac_pi(nr[i], Gd[i], nc[i], Ad[i]);
        for (size_t j = 0; j < nc[i]; j++)
            Ad[i][j * nc[i] + j] += pi * gamma;
        for (size_t j = 0; j < nr[i]; j++)
            Gd[i][j * nr[i] + j] += gamma / pi;
    }
    const size_t n = off[L];
    double *T = tu_alloc(n * n); /* the tridiagonal blocks of F̃ (damped diagonal) */
    for (size_t i = 0; i < L; i++)
        for (size_t j = i; j < L && j <= i + 1; j++) {
            double *Gm =
                j == i ? Gd[i] : cross(net->sig[i], nr[i], 0, net->sig[j], nr[j], 0, net->m);
            double *Am =
                j == i ? Ad[i]
                       : cross(net->acts[i], net->n[i], 1, net->acts[j], net->n[j], 1, net->m);
            for (size_t r = 0; r < nr[i]; r++)
                for (size_t c = 0; c < nc[i]; c++)
                    for (size_t r2 = 0; r2 < nr[j]; r2++)
                        for (size_t c2 = 0; c2 < nc[j]; c2++) {
                            double v = Gm[r * nr[j] + r2] * Am[c * nc[j] + c2];
                            size_t a = off[i] + r * nc[i] + c, b = off[j] + r2 * nc[j] + c2;
                            T[a * n + b] = T[b * n + a] = v;
                        }
            if (j != i)
                free(Gm), free(Am);
        }
    /* F̂⁻¹ = Σ_i inv(T[{i,i+1}]) − Σ_{0<i<L-1} inv(T[{i}]), embedded. */
    double *K = tu_alloc(n * n);
    for (size_t i = 0; i + 1 < L; i++) {
        for (int sep = 0; sep < 2; sep++) {
            if (sep && i == 0)
                continue;
            size_t lo = off[i], hi = sep ? off[i + 1] : off[i + 2], s = hi - lo;
            double *sub = tu_alloc(s * s), *inv = tu_alloc(s * s);
            for (size_t a = 0; a < s; a++)
                for (size_t b = 0; b < s; b++)
                    sub[a * s + b] = T[(lo + a) * n + lo + b];
            tu_gj_inverse(s, sub, inv);
            for (size_t a = 0; a < s; a++)
                for (size_t b = 0; b < s; b++)
                    K[(lo + a) * n + lo + b] += (sep ? -1 : 1) * inv[a * s + b];
            free(sub), free(inv);
        }
    }
    for (size_t a = 0; a < n; a++) {
        x[a] = 0;
        for (size_t b = 0; b < n; b++)
            x[a] += K[a * n + b] * g[b];
    }
    for (size_t i = 0; i < L; i++)
        free(Ad[i]), free(Gd[i]);
    free(T), free(K);
}

static void test_tridiag_update(void **state)
{
    (void)state;
    const size_t w[] = {5, 3, 3, 2};
    const double gammas[] = {0.05, 0.3, 2.0};
    for (size_t t = 0; t < 3; t++) {
        tu_mlp net;
        curv_layout *l = tu_mlp_setup(&net, w, L, 2, 7, 40 + t, 50 + t);
        const tu_kv kv[] = {{"lr", 1},
                            {"momentum", 0},
                            {"weight_decay", 0},
                            {"damping", gammas[t]},
                            {"kl_clip", 0}};
        curv_opt *o =
            tu_kfac_opt(l, kv, 5, "mode", "simple", "inverse", "tridiag", "noise", "off", NULL);
        double *u = tu_alloc(net.dim), *x = tu_alloc(net.dim);
        curv_error err;
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        dense_tridiag(&net, gammas[t], net.g, x);
        const size_t chain = net.dim - net.nv;
        for (size_t i = 0; i < chain; i++)
            x[i] = -x[i];
        char what[48];
        snprintf(what, sizeof what, "tridiagonal update, γ = %g", gammas[t]);
        tu_expect_close(u, x, chain, 1e-9, what, 1);
        /* The chain's update is not the block-diagonal one. */
        curv_config *c = tu_config(kv, 5);
        tu_config_set(c, "mode", 0, "simple");
        tu_config_set(c, "noise", 0, "off");
        curv_opt *bd = tu_new_opt(CURV_OPT_KFAC, l, c);
        double *ub = tu_alloc(net.dim);
        tu_assert_status(tu_mlp_step(bd, &net, 1, ub, NULL, &err), CURV_OK, &err);
        assert_true(tu_rel_err(ub, u, chain) > 1e-3);
        assert_memory_equal(ub + chain, u + chain, net.nv * sizeof(double)); /* fallback */
        free(ub);
        curv_opt_free(bd);
        curv_config_free(c);
        free(u), free(x);
        tu_mlp_teardown(o, l, &net);
    }
}

/* A chain's layers send statistics together, from the same rows. */
static void test_chain_statistics_rules(void **state)
{
    (void)state;
    const size_t w[] = {4, 3, 2};
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, w, 2, 0, 5, 60, 61);
    const tu_kv kv[] = {{"cov_interval", 2}, {"weight_decay", 0}};
    curv_opt *o = tu_kfac_opt(l, kv, 2, "mode", "simple", "inverse", "tridiag", NULL);
    double u[64];
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    curv_layer_stats ls[2];
    memcpy(ls, net.stats, sizeof ls);
    curv_step_input in = {.grad = net.g,
                          .params = net.theta,
                          .len = net.dim,
                          .dtype = CURV_F64,
                          .layers = ls,
                          .n_layers = 1};
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    curv_request req;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_E_INVALID, &err); /* l0 only */
    assert_non_null(strstr(err.text, "same rows in the same step"));
    in.n_layers = 2;
    ls[1].rows = ls[1].examples = 4;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_E_INVALID, &err);
    assert_non_null(strstr(err.text, "5 rows"));
    tu_assert_unchanged(o, snap, len);
    in.n_layers = 0; /* no statistics at all: fine between due steps */
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_OK, &err);
    curv_free(snap);
    tu_mlp_teardown(o, l, &net);
}

/* Adaptive tridiagonal K-FAC with γ candidates: a loaded copy (whose
 * inverse is rebuilt from the saved state) continues bit-identically;
 * the report counts clamped denominators. */
static void test_tridiag_save_load(void **state)
{
    (void)state;
    const size_t w[] = {5, 3, 3, 2};
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, w, L, 2, 6, 70, 71);
    const tu_kv kv[] = {{"gamma_interval", 2}, {"lambda_interval", 3}, {"inv_interval", 4}};
    curv_opt *a =
        tu_kfac_opt(l, kv, 3, "mode", "adaptive", "inverse", "tridiag", "gamma_rule", "grid", NULL);
    double *ua = tu_alloc(net.dim), *ub = tu_alloc(net.dim);
    curv_error err;
    curv_opt *b = NULL;
    for (unsigned k = 1; k <= 9; k++) {
        if (k == 5) {
            size_t len;
            unsigned char *blob = tu_snapshot(a, &len);
            tu_assert_status(curv_opt_load(blob, len, &b, &err), CURV_OK, &err);
            curv_free(blob);
        }
        tu_assert_status(tu_mlp_step(a, &net, 1, ua, NULL, &err), CURV_OK, &err);
        assert_true(curv_opt_report(a, &(const curv_report_entry *){NULL}) > 0);
        if (b) {
            tu_assert_status(tu_mlp_step(b, &net, 1, ub, NULL, &err), CURV_OK, &err);
            if (memcmp(ua, ub, net.dim * sizeof(double)))
                fail_msg("step %u differs after save/load", k);
        }
        for (size_t i = 0; i < net.dim; i++)
            net.theta[i] += ua[i];
        tu_mlp_batch(&net, 80 + k);
    }
    const curv_report_entry *e;
    size_t n = curv_opt_report(a, &e), found = 0;
    for (size_t i = 0; i < n; i++)
        found += strcmp(e[i].name, "clamped") == 0;
    assert_int_equal(found, 1);
    free(ua), free(ub);
    curv_opt_free(a), tu_mlp_teardown(b, l, &net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tridiag_update),
        cmocka_unit_test(test_chain_statistics_rules),
        cmocka_unit_test(test_tridiag_save_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
