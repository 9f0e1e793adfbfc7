/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's curvature (kfac_block.c, kfac_est.c) against dense math formed
 * here on tiny MLPs with explicit per-example gradients: the scaling
 * convention of the factors, the block-diagonal damped inverse, diagonal
 * sides, conv2d statistics, the fallback, the EMA and the statistics and
 * refresh intervals. The adaptive loop is in test_kfac_loop.c, the pure
 * rules in test_kfac_adapt.c.
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_int.h"
#include "linalg.h"
#include "testutil.h"

static const struct curv__kblock *block_of(const curv_opt *o, size_t i)
{
    const struct curv__kblock *b = curv__kfac_est_block(curv__kfac_estimator(o), i);
    assert_non_null(b);
    return b;
}

/* Dense copy of a side's current factor (a diagonal side expanded). */
static double *factor(const struct curv__kside *s)
{
    double *M = tu_alloc(s->n * s->n);
    for (size_t i = 0; i < s->n; i++)
        for (size_t j = 0; j < s->n; j++)
            M[i * s->n + j] = s->diag ? (i == j ? s->F[i] : 0) : s->F[i * s->n + j];
    return M;
}

/* K = A ⊗ B (na² x nb² entries as an (na nb) x (na nb) matrix). */
static double *kron(size_t na, const double *A, size_t nb, const double *B)
{
    size_t n = na * nb;
    double *K = tu_alloc(n * n);
    for (size_t i = 0; i < na; i++)
        for (size_t j = 0; j < na; j++)
            for (size_t k = 0; k < nb; k++)
                for (size_t l = 0; l < nb; l++)
                    K[(i * nb + k) * n + j * nb + l] = A[i * na + j] * B[k * nb + l];
    return K;
}

/* The dense Fisher block of layer @b of @net: (1/m) Σ_e p_e p_eᵀ over the
 * per-example gradients restricted to the block. */
static double *true_fisher_block(const tu_mlp *net, size_t off, size_t size)
{
    double *F = tu_alloc(size * size);
    for (size_t e = 0; e < net->m; e++) {
        const double *p = net->pex + e * net->dim + off;
        for (size_t i = 0; i < size; i++)
            for (size_t j = 0; j < size; j++)
                F[i * size + j] += p[i] * p[j] / (double)net->m;
    }
    return F;
}

static double max_abs_diff(const double *a, const double *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(a[i] - b[i]));
    return m;
}

static const tu_kv PLAIN[] = {{"lr", 1}, {"momentum", 0}, {"weight_decay", 0}};

/* One example: Ĝ ⊗ Â is that example's Fisher block exactly (signals not
 * divided by the batch size); the mean gradient is that example's. */
static void test_factors_one_example(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 2, 0, 1, 11, 12);
    curv_opt *o = tu_kfac_opt(l, PLAIN, 3, "mode", "simple", NULL);
    double *u = tu_alloc(net.dim);
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    for (size_t i = 0; i < 2; i++) {
        const struct curv__kblock *b = block_of(o, i);
        double *A = factor(&b->A), *G = factor(&b->G);
        double *K = kron(b->G.n, G, b->A.n, A);
        double *F = true_fisher_block(&net, b->info.offset, b->info.size);
        if (tu_rel_err(K, F, b->info.size * b->info.size) > 1e-14)
            fail_msg("layer %zu: G ⊗ A differs from the example's Fisher block by %g", i,
                     tu_rel_err(K, F, b->info.size * b->info.size));
        free(A), free(G), free(K), free(F);
    }
    free(u);
    tu_mlp_teardown(o, l, &net);
}

/* A batch: Ĝ ⊗ Â is the average over all pairs (activations of one
 * example, signals of another), the thesis' independence approximation,
 * and it differs from the true batch Fisher block. */
static void test_factors_batch(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    const size_t m = 6;
    curv_layout *l = tu_mlp_setup(&net, w, 2, 0, m, 21, 22);
    curv_opt *o = tu_kfac_opt(l, PLAIN, 3, "mode", "simple", NULL);
    double *u = tu_alloc(net.dim);
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    for (size_t i = 0; i < 2; i++) {
        const struct curv__kblock *b = block_of(o, i);
        const size_t nr = b->info.rows, nc = b->info.cols, sz = b->info.size;
        double *A = factor(&b->A), *G = factor(&b->G);
        double *K = kron(nr, G, nc, A);
        double *pairs = tu_alloc(sz * sz);
        for (size_t e = 0; e < m; e++)
            for (size_t f = 0; f < m; f++) {
                double *a1 = tu_outer_mean(net.acts[i] + e * w[i], 1, w[i], 1, 1.0);
                double *g1 = tu_outer_mean(net.sig[i] + f * w[i + 1], 1, w[i + 1], 0, 1.0);
                double *k1 = kron(nr, g1, nc, a1);
                for (size_t j = 0; j < sz * sz; j++)
                    pairs[j] += k1[j] / (double)(m * m);
                free(a1), free(g1), free(k1);
            }
        double *F = true_fisher_block(&net, b->info.offset, sz);
        if (tu_rel_err(K, pairs, sz * sz) > 1e-13)
            fail_msg("layer %zu: G ⊗ A is not the all-pairs average (%g)", i,
                     tu_rel_err(K, pairs, sz * sz));
        if (tu_rel_err(K, F, sz * sz) < 0.05)
            fail_msg("layer %zu: G ⊗ A should differ from the batch Fisher block (%g)", i,
                     tu_rel_err(K, F, sz * sz));
        free(A), free(G), free(K), free(pairs), free(F);
    }
    /* The gradient convention: the mean of the per-example gradients,
     * which are the outer products of per-example signals and inputs. */
    for (size_t o2 = 0; o2 < w[1]; o2++) {
        double want = 0;
        for (size_t e = 0; e < m; e++)
            want += net.sig[0][e * w[1] + o2] * net.acts[0][e * w[0]] / (double)m;
        assert_true(fabs(net.g[o2 * (w[0] + 1)] - want) <= 1e-15 * (1 + fabs(want)));
    }
    free(u);
    tu_mlp_teardown(o, l, &net);
}

/* conv2d (KFC): Â averages over examples x positions, Ĝ sums over
 * positions and averages over examples. */
static void test_conv_statistics(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_conv2d(l, "conv", 2, 1, 2, 2, 1, NULL), CURV_OK);
    const size_t ex = 2, pos = 3, rows = ex * pos, d = curv_layout_dim(l);
    double acts[6 * 4], sig[6 * 2], g[10], th[10] = {0}, u[10];
    tu_rng r;
    tu_rng_seed(&r, 5);
    tu_fill_normal(&r, acts, rows * 4, 1.0);
    tu_fill_normal(&r, sig, rows * 2, 1.0);
    tu_fill_normal(&r, g, d, 1.0);
    curv_opt *o = tu_kfac_opt(l, PLAIN, 3, "mode", "simple", NULL);
    curv_layer_stats ls = {.block = 0, .rows = rows, .examples = ex, .acts = acts, .signals = sig};
    curv_step_input in = {
        .grad = g, .params = th, .len = d, .dtype = CURV_F64, .layers = &ls, .n_layers = 1};
    curv_request req;
    curv_error err;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_OK, &err);
    const struct curv__kblock *b = block_of(o, 0);
    double *A = tu_outer_mean(acts, rows, 4, 1, 1.0 / (double)rows);
    double *G = tu_outer_mean(sig, rows, 2, 0, 1.0 / (double)ex);
    tu_expect_close(b->A.F, A, 25, 1e-15, "conv A", 1);
    tu_expect_close(b->G.F, G, 4, 1e-15, "conv G", 1);
    free(A), free(G);
    curv_opt_free(o);
    curv_layout_free(l);
}

/*
 * Factors wider than a tile of the fused statistics pass (32) and batches
 * of one to three float SYRK chunks (1024 rows each): every entry of
 * both triangles, the bias row and column, the chunks' sum, in both
 * precisions, against the EMA of (1/m) Σ x xᵀ formed here. The bound is
 * check_ema_schedule's with k = the rows of one SYRK (fp64: all rows,
 * u = 2⁻⁵³).
 */
static void check_wide_factors(int fp32, size_t rows)
{
    static const size_t n_out[2] = {40, 33}, n_in[2] = {70, 65};
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "biased", n_out[0], n_in[0], 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "plain", n_out[1], n_in[1], 0, NULL), CURV_OK);
    const size_t d = curv_layout_dim(l);
    const tu_kv kv[] = {{"lr", 0}, {"weight_decay", 0}, {"decay", 0.6}};
    curv_opt *o =
        tu_kfac_opt(l, kv, 3, "mode", "simple", "precision", fp32 ? "fp32" : "fp64", NULL);
    const size_t k_syrk = fp32 && rows > 1024 ? 1024 : rows;
    const double tol = (double)(k_syrk + 2) * (fp32 ? 0x1p-24 : 0x1p-53);
    double *g = tu_alloc(d), *u = tu_alloc(d), *X[2][2], *W[2][2];
    for (int b = 0; b < 2; b++) {
        const size_t n[2] = {n_in[b] + (b == 0), n_out[b]};
        for (int s = 0; s < 2; s++)
            W[b][s] = tu_alloc(n[s] * n[s]);
        X[b][0] = tu_alloc(rows * n_in[b]), X[b][1] = tu_alloc(rows * n_out[b]);
    }
    tu_rng r;
    tu_rng_seed(&r, 77);
    curv_error err;
    curv_request req;
    for (unsigned k = 1; k <= 3; k++) {
        curv_layer_stats ls[2];
        tu_fill_normal(&r, g, d, 1.0);
        for (int b = 0; b < 2; b++) {
            tu_fill_normal(&r, X[b][0], rows * n_in[b], 1.0);
            tu_fill_normal(&r, X[b][1], rows * n_out[b], 0.1);
            ls[b] = (curv_layer_stats){.block = (size_t)b,
                                       .rows = rows,
                                       .examples = rows,
                                       .acts = X[b][0],
                                       .signals = X[b][1]};
        }
        curv_step_input in = {.grad = g, .len = d, .dtype = CURV_F64, .layers = ls, .n_layers = 2};
        tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_OK, &err);
        const double eps = fmin(1.0 - 1.0 / k, 0.6);
        for (int b = 0; b < 2; b++) {
            const struct curv__kblock *blk = block_of(o, (size_t)b);
            const size_t nx[2] = {n_in[b], n_out[b]};
            for (int s = 0; s < 2; s++) {
                const int bias = s == 0 && b == 0;
                const size_t n = nx[s] + (size_t)bias;
                double *F = tu_outer_mean(X[b][s], rows, nx[s], bias, 1.0 / (double)rows);
                for (size_t i = 0; i < n * n; i++)
                    W[b][s][i] = eps * W[b][s][i] + (1 - eps) * F[i];
                tu_expect_close(s ? blk->G.F : blk->A.F, W[b][s], n * n, tol,
                                s ? "wide G" : "wide A", (int)k);
                free(F);
            }
        }
    }
    for (int b = 0; b < 2; b++)
        for (int s = 0; s < 2; s++)
            free(W[b][s]), free(X[b][s]);
    free(g), free(u);
    curv_opt_free(o);
    curv_layout_free(l);
}

static void test_wide_factors(void **state)
{
    (void)state;
    for (int fp32 = 0; fp32 <= 1; fp32++) {
        check_wide_factors(fp32, 5);
        check_wide_factors(fp32, 1100);
        check_wide_factors(fp32, 2100); /* three chunks: one added in between */
    }
}

/* How check_float_layers hands a step its statistics. */
enum stats_form { AS_DOUBLES, AS_FLOATS, AS_F32_STEP };

/* Steps 1-7 (a refresh at 5) of a two-block K-FAC (@precision, @inverse,
 * @max_factor_dim) fed the same values in @form: each update appended to
 * @u (7 x d), the final state saved into *@blob. The statistics are
 * floats' values; the gradient too, for the all-float step. */
static void run_stats_form(const char *precision, const char *inverse, double max_factor_dim,
                           size_t rows, enum stats_form form, double *u, unsigned char **blob,
                           size_t *len)
{
    static const size_t n_out[2] = {40, 9}, n_in[2] = {70, 6};
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "a", n_out[0], n_in[0], 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "b", n_out[1], n_in[1], 0, NULL), CURV_OK);
    const size_t d = curv_layout_dim(l);
    const tu_kv kv[] = {
        {"lr", 0.1}, {"weight_decay", 0}, {"inv_interval", 5}, {"max_factor_dim", max_factor_dim}};
    curv_opt *o =
        tu_kfac_opt(l, kv, 4, "mode", "simple", "precision", precision, "inverse", inverse, NULL);
    double *g = tu_alloc(d), *X[2][2], *uf = tu_alloc(d);
    float *gf = malloc(d * sizeof *gf), *Xf[2][2];
    for (int b = 0; b < 2; b++) {
        const size_t n[2] = {n_in[b], n_out[b]};
        for (int s = 0; s < 2; s++) {
            X[b][s] = tu_alloc(rows * n[s]);
            Xf[b][s] = malloc(rows * n[s] * sizeof(float));
        }
    }
    tu_rng r;
    tu_rng_seed(&r, 99);
    curv_error err;
    curv_request req;
    for (unsigned k = 1; k <= 7; k++) {
        curv_layer_stats ls[2];
        tu_fill_normal(&r, g, d, 1.0);
        for (size_t i = 0; i < d; i++)
            gf[i] = (float)g[i], g[i] = gf[i];
        for (int b = 0; b < 2; b++) {
            const size_t n[2] = {n_in[b], n_out[b]};
            for (int s = 0; s < 2; s++) {
                tu_fill_normal(&r, X[b][s], rows * n[s], s ? 0.1 : 1.0);
                for (size_t i = 0; i < rows * n[s]; i++)
                    Xf[b][s][i] = (float)X[b][s][i], X[b][s][i] = Xf[b][s][i];
            }
            const int fl = form != AS_DOUBLES;
            ls[b] = (curv_layer_stats){.block = (size_t)b,
                                       .rows = rows,
                                       .examples = rows,
                                       .acts = fl ? (const void *)Xf[b][0] : X[b][0],
                                       .signals = fl ? (const void *)Xf[b][1] : X[b][1],
                                       .f32 = form == AS_FLOATS};
        }
        const int all_f32 = form == AS_F32_STEP;
        curv_step_input in = {.grad = all_f32 ? (const void *)gf : g,
                              .len = d,
                              .dtype = all_f32 ? CURV_F32 : CURV_F64,
                              .layers = ls,
                              .n_layers = 2};
        tu_assert_status(curv_opt_step(o, &in, all_f32 ? (void *)gf : uf, &req, &err), CURV_OK,
                         &err);
        for (size_t i = 0; i < d; i++)
            u[(k - 1) * d + i] = all_f32 ? gf[i] : uf[i];
    }
    assert_int_equal(curv_opt_save(o, blob, len, &err), CURV_OK);
    for (int b = 0; b < 2; b++)
        for (int s = 0; s < 2; s++)
            free(X[b][s]), free(Xf[b][s]);
    free(g), free(gf), free(uf);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* The same values as doubles, as floats beside a float64 gradient
 * (curv_layer_stats.f32), and in an all-float step give the same updates
 * and state bit for bit: fp32 reads the floats in place, fp64 and the
 * tridiagonal inverse convert them; dense and diagonal sides, a bias,
 * one to three SYRK chunks. (The all-float step's updates are floats:
 * compared after rounding the others; its state is the same.) */
static void test_float_layers(void **state)
{
    (void)state;
    const size_t d = 40 * 71 + 9 * 6;
    static const struct {
        const char *precision, *inverse;
        double max_factor_dim;
        size_t rows;
    } cases[] = {{"fp32", "blockdiag", 4096, 7},    {"fp32", "blockdiag", 32, 7},
                 {"fp32", "blockdiag", 4096, 1100}, {"fp32", "blockdiag", 4096, 2100},
                 {"fp64", "blockdiag", 4096, 7},    {"fp32", "tridiag", 4096, 7}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        double *u[3];
        unsigned char *blob[3];
        size_t len[3];
        for (int f = 0; f < 3; f++) {
            u[f] = tu_alloc(7 * d);
            run_stats_form(cases[c].precision, cases[c].inverse, cases[c].max_factor_dim,
                           cases[c].rows, (enum stats_form)f, u[f], &blob[f], &len[f]);
        }
        if (memcmp(u[0], u[1], 7 * d * sizeof(double)) || len[0] != len[1] ||
            memcmp(blob[0], blob[1], len[0]))
            fail_msg("case %zu: float statistics beside a float64 gradient differ", c);
        if (len[0] != len[2] || memcmp(blob[0], blob[2], len[0]))
            fail_msg("case %zu: the all-float step leaves another state", c);
        for (size_t i = 0; i < 7 * d; i++)
            if ((float)u[0][i] != (float)u[2][i])
                fail_msg("case %zu: the all-float step differs at %zu", c, i);
        for (int f = 0; f < 3; f++)
            free(u[f]), curv_free(blob[f]);
    }
}

/*
 * The update of each Kronecker block against the dense
 * −[(G + γ/π I) ⊗ (A + πγ I)]⁻¹ (g + ηθ) solved by Gauss-Jordan, with π
 * from the trace formula computed here; diagonal sides when
 * max_factor_dim is small; the AdaGrad fallback for the vector block.
 */
static void check_blockdiag(double max_factor_dim, double eta)
{
    tu_mlp net;
    const size_t w[] = {5, 3, 3, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 3, 3, 4, 31, 32);
    const double gamma = 0.3;
    const tu_kv kv[] = {{"lr", 1},
                        {"momentum", 0},
                        {"damping", gamma},
                        {"weight_decay", eta},
                        {"fallback_lr", 0.2},
                        {"max_factor_dim", max_factor_dim},
                        {"kl_clip", 0}};
    curv_opt *o = tu_kfac_opt(l, kv, 7, "mode", "simple", "noise", "off", NULL);
    double *u = tu_alloc(net.dim), *gf = tu_alloc(net.dim);
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    for (size_t i = 0; i < net.dim; i++)
        gf[i] = net.g[i] + eta * net.theta[i];
    for (size_t i = 0; i < 3; i++) {
        curv_block_info bi;
        curv_layout_block(l, i, &bi);
        const size_t nr = bi.rows, nc = bi.cols, sz = bi.size;
        double *A = tu_outer_mean(net.acts[i], net.m, w[i], 1, 1.0 / (double)net.m);
        double *G = tu_outer_mean(net.sig[i], net.m, w[i + 1], 0, 1.0 / (double)net.m);
        const double pi = tu_kfac_pi(nr, G, nc, A);
        for (size_t j = 0; j < nc; j++)
            for (size_t k = 0; k < nc; k++)
                A[j * nc + k] = j == k                ? A[j * nc + k] + pi * gamma
                                : nc > max_factor_dim ? 0
                                                      : A[j * nc + k];
        for (size_t j = 0; j < nr; j++)
            for (size_t k = 0; k < nr; k++)
                G[j * nr + k] = j == k                ? G[j * nr + k] + gamma / pi
                                : nr > max_factor_dim ? 0
                                                      : G[j * nr + k];
        double *K = kron(nr, G, nc, A), *x = tu_alloc(sz);
        tu_gj_solve(sz, K, gf + bi.offset, x);
        for (size_t j = 0; j < sz; j++)
            x[j] = -x[j];
        char what[64];
        snprintf(what, sizeof what, "block %zu (max_factor_dim %g)", i, max_factor_dim);
        tu_expect_close(u + bi.offset, x, sz, 1e-11, what, 1);
        free(A), free(G), free(K), free(x);
    }
    const size_t off = net.dim - net.nv;
    for (size_t j = 0; j < net.nv; j++) {
        double want = -0.2 * gf[off + j] / sqrt(gf[off + j] * gf[off + j] + 1e-8);
        assert_true(fabs(u[off + j] - want) <= 1e-15);
    }
    /* The report's norms: of the gradient sent (not ∇h) and of the update. */
    double gn = 0, un = 0;
    for (size_t i = 0; i < net.dim; i++)
        gn += net.g[i] * net.g[i], un += u[i] * u[i];
    assert_true(fabs(tu_report(o, "grad_norm") - sqrt(gn)) <= 1e-14 * sqrt(gn));
    assert_true(fabs(tu_report(o, "update_norm") - sqrt(un)) <= 1e-14 * sqrt(un));
    free(u), free(gf);
    tu_mlp_teardown(o, l, &net);
}

static void test_blockdiag_update(void **state)
{
    (void)state;
    check_blockdiag(4096, 0);
    check_blockdiag(4096, 0.05);
    check_blockdiag(3, 0); /* every A side diagonal, G sides dense */
    check_blockdiag(1, 0); /* all diagonal */
}

/* ‖got − want‖_F / ‖want‖_F. */
static double frob_rel(const double *got, const double *want, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += (got[i] - want[i]) * (got[i] - want[i]);
        den += want[i] * want[i];
    }
    return sqrt(num / den);
}

/* The eigenvalues of side @s's factor (n of them into @w), clamped at 0 as
 * a refresh clamps them: the side's own, or for a Cholesky side (which has
 * none) computed here. */
static void side_eigs(const struct curv__kside *s, double *w)
{
    if (!s->chol) {
        memcpy(w, s->w_new ? s->w_new : s->w, s->n * sizeof(double));
        return;
    }
    double *F = factor(s);
    tu_assert_status(curv__sym_eig(s->n, F, s->n, w, NULL), CURV_OK, NULL);
    for (size_t i = 0; i < s->n; i++)
        w[i] = fmax(w[i], 0);
    free(F);
}

/* κ₂ of the damped factor of side @s (its eigenvalues w + @c) and
 * C_s = (n + 2) n + n^{3/2} (fp32_bound). A Cholesky side's float inverse
 * is its double one rounded (√n u ‖P‖₂ in ‖·‖_F) before the same GEMM:
 * (√n + n^{3/2}) u κ_s, within the same C_s. */
static void side_cond(const struct curv__kside *s, double c, double *kappa, double *cs)
{
    double lo = INFINITY, hi = 0, *w = tu_alloc(s->n);
    side_eigs(s, w);
    for (size_t i = 0; i < s->n; i++)
        lo = fmin(lo, w[i] + c), hi = fmax(hi, w[i] + c);
    free(w);
    const double n = (double)s->n;
    *kappa = hi / lo;
    *cs = s->diag ? 0 : (n + 2) * n + n * sqrt(n);
}

/*
 * The bound on the fp32 multiply's relative error ‖Ũ − U‖_F / ‖U‖_F, to
 * first order in u = 2⁻²⁴, for U = G_d⁻¹ V A_d⁻¹ with κ_G, κ_A the
 * condition numbers of the damped factors G_d, A_d (from their damped
 * eigenvalues), derived rather than tuned, from Higham's normwise bounds:
 *  - a float GEMM with inner dimension n errs by at most γ_n ‖X‖_F ‖Y‖_F
 *    (Higham (3.13), γ_n ≈ n u); rounding an input or output to float by
 *    u relative (Frobenius);
 *  - an explicit side M = T Tᵀ, T = Q diag(1/√(w + c)) rounded to float,
 *    is off by ‖δM‖_F <= γ_{n+2} ‖T‖_F² = γ_{n+2} tr(M) <= (n + 2) n u ‖M‖₂;
 *    its GEMM adds γ_n ‖M‖_F ‖X‖_F <= n^{3/2} u ‖M‖₂ ‖X‖_F; and
 *    ‖M‖₂ ‖X‖_F <= κ ‖M X‖_F (X = (F + cI) M X): relative to the side's
 *    product, (n + 2) n + n^{3/2} =: C_s times u κ_s;
 *  - an eigenbasis side is two GEMMs with the float Q (orthogonal, ‖Q‖_F =
 *    √n), each off by (n + 1) √n u relative, <= C_s u;
 *  - a diagonal side is the scaling alone (C_s = 0; the scaling divides
 *    each entry once);
 *  - whatever error is made before a scaling or an inverse is amplified
 *    relative to ‖U‖ by at most κ_G κ_A (‖V‖ <= ‖G_d‖ ‖U‖ ‖A_d‖ and
 *    ‖G_d⁻¹ E A_d⁻¹‖ <= ‖E‖ / (σ_min(G_d) σ_min(A_d))).
 * Summing the input rounding, both sides and the output rounding, each at
 * its worst amplification:
 *   ‖Ũ − U‖_F / ‖U‖_F <= u κ_G κ_A (2 + C_G + C_A)
 * (multiply_bound; u = 2⁻²⁴ in fp32).
 * A worst case: measured errors sit orders of magnitude below it (they
 * grow like √n u κ, not n² u κ), which the test prints; a wrong matrix or
 * a transposed one errs by O(1) and fails it.
 */
static double multiply_bound(const struct curv__kblock *b, double gamma, double u)
{
    const double pi = b->A.w_new || b->A.P_new ? b->pi_new : b->pi;
    double ka, ca, kg, cg;
    side_cond(&b->A, gamma * pi, &ka, &ca);
    side_cond(&b->G, gamma / pi, &kg, &cg);
    return u * kg * ka * (2 + cg + ca);
}

/*
 * The multiply three ways on every Kronecker block after one step: the
 * eigenbasis form (no prepare), the two-GEMM form with both dense sides'
 * explicit inverses (a long horizon) and the mixed form (horizon 1: a side
 * more than twice the other's size stays in its eigenbasis), each against
 * [(G + γ/π I) ⊗ (A + πγ I)]⁻¹ v formed densely here and solved by
 * Gauss-Jordan. Dense and conv2d blocks; diagonal sides by max_factor_dim.
 * fp64 within 1e-10; fp32 within fp32_bound, and (a block with a dense
 * side) visibly not in double: off by more than 1e-12. With @refresh
 * cholesky (damping γ) a dense side applies its refresh's (F + cI)⁻¹
 * whatever the horizon, prepare forming nothing for it.
 */
static void check_multiply(double max_factor_dim, int fp32, const char *refresh)
{
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "wide", 2, 9, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "tall", 7, 2, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_conv2d(l, "conv", 3, 1, 2, 2, 1, NULL), CURV_OK);
    const size_t nx[3] = {9, 2, 4}, ny[3] = {2, 7, 3}, rows = 12, ex = 4;
    const size_t d = curv_layout_dim(l);
    double acts[12 * 9], sig[12 * 7], g[64], u[64], v[64];
    assert_true(d <= 64);
    tu_rng r;
    tu_rng_seed(&r, 41);
    tu_fill_normal(&r, acts, sizeof acts / sizeof acts[0], 1.0);
    tu_fill_normal(&r, sig, sizeof sig / sizeof sig[0], 1.0);
    tu_fill_normal(&r, g, d, 1.0);
    tu_fill_normal(&r, v, d, 1.0);
    curv_layer_stats ls[3];
    for (size_t i = 0; i < 3; i++)
        ls[i] = (curv_layer_stats){
            .block = i, .rows = i == 2 ? rows : ex, .examples = ex, .acts = acts, .signals = sig};
    const double gamma = 0.07;
    const tu_kv kv[] = {{"lr", 1},
                        {"momentum", 0},
                        {"weight_decay", 0},
                        {"max_factor_dim", max_factor_dim},
                        {"damping", gamma}};
    curv_opt *o = tu_kfac_opt(l, kv, 5, "mode", "simple", "precision", fp32 ? "fp32" : "fp64",
                              "refresh", refresh, NULL);
    curv_step_input in = {.grad = g, .len = d, .dtype = CURV_F64, .layers = ls, .n_layers = 3};
    curv_request req;
    curv_error err;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_OK, &err);
    const int chol = strcmp(refresh, "cholesky") == 0;
    for (size_t i = 0; i < 3; i++) {
        struct curv__kblock *b = (struct curv__kblock *)block_of(o, i);
        const size_t nr = b->info.rows, nc = b->info.cols, sz = b->info.size;
        assert_int_equal(nc, nx[i] + 1);
        assert_int_equal(nr, ny[i]);
        double *A = factor(&b->A), *G = factor(&b->G);
        const double pi = tu_kfac_pi(nr, G, nc, A);
        for (size_t j = 0; j < nc; j++)
            A[j * nc + j] += pi * gamma;
        for (size_t j = 0; j < nr; j++)
            G[j * nr + j] += gamma / pi;
        double *K = kron(nr, G, nc, A), *x = tu_alloc(sz), *got = tu_alloc(sz);
        double *work = tu_alloc(2 * sz);
        tu_gj_solve(sz, K, v + b->info.offset, x);
        const unsigned horizons[3] = {0, 1000, 1}; /* 0: no prepare */
        for (int h = 0; h < 3; h++) {
            if (horizons[h])
                tu_assert_status(b->vt->prepare(b, &gamma, 1, horizons[h], &err), CURV_OK, &err);
            b->vt->apply(b, 0, v + b->info.offset, gamma, got, work);
            const struct curv__kside *sd[2] = {&b->A, &b->G};
            for (int k = 0; horizons[h] && k < 2; k++) {
                const size_t other = k ? nc : nr;
                const int want = !sd[k]->diag && !sd[k]->chol &&
                                 curv__kside_explicit(sd[k]->n, other, horizons[h]);
                assert_int_equal(sd[k]->use[0] != NULL, want);
                assert_int_equal(sd[k]->chol, chol && !sd[k]->diag);
            }
            char what[96];
            snprintf(what, sizeof what, "block %zu, horizon %u, max_factor_dim %g%s, %s", i,
                     horizons[h], max_factor_dim, fp32 ? ", fp32" : "", refresh);
            if (!fp32) {
                tu_expect_close(got, x, sz, 1e-10, what, 1);
            } else {
                const double e = frob_rel(got, x, sz), bound = multiply_bound(b, gamma, 0x1p-24);
                if (getenv("TU_VERBOSE"))
                    printf("%s: error %.3g, bound %.3g\n", what, e, bound);
                if (!(e <= bound))
                    fail_msg("%s: relative error %g > %g", what, e, bound);
                if (!(b->A.diag && b->G.diag) && !(e > 1e-12))
                    fail_msg("%s: relative error %g: not float arithmetic", what, e);
            }
            b->vt->abort(b);
        }
        free(A), free(G), free(K), free(x), free(got), free(work);
    }
    curv_opt_free(o);
    curv_layout_free(l);
}

static void test_multiply_forms(void **state)
{
    (void)state;
    for (int fp32 = 0; fp32 <= 1; fp32++)
        for (int chol = 0; chol <= 1; chol++) {
            const char *refresh = chol ? "cholesky" : "eigen";
            check_multiply(4096, fp32, refresh);
            check_multiply(3, fp32, refresh); /* sides above 3 diagonal: mixed diagonal and dense */
            check_multiply(1, fp32, refresh); /* all diagonal */
        }
    /* The rule: n <= 2 H n_other. */
    assert_true(curv__kside_explicit(10, 5, 1));
    assert_false(curv__kside_explicit(11, 5, 1));
    assert_true(curv__kside_explicit(1000, 31, 20));
}

/* Simple mode with refresh = eigen keeps the explicit inverses of the
 * damping in use between refreshes (the cache), drops them at a refresh,
 * and a loaded optimizer, which rebuilds them, computes the same update bit
 * for bit; in fp32 too (the blob records the precision; the float inverses
 * and eigenvectors are rounded again from the loaded Q and w). The
 * Cholesky route's save and load: test_kfac_chol.c. */
static void check_inverse_cache(const char *precision)
{
    tu_mlp net;
    const size_t w[] = {5, 3, 3, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 3, 0, 4, 51, 52);
    const tu_kv kv[] = {{"lr", 1}, {"momentum", 0.5}, {"weight_decay", 0}, {"inv_interval", 4}};
    curv_opt *o =
        tu_kfac_opt(l, kv, 4, "mode", "simple", "precision", precision, "refresh", "eigen", NULL);
    double *u = tu_alloc(net.dim), *u2 = tu_alloc(net.dim);
    curv_error err;
    for (int k = 1; k <= 5; k++)
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    const struct curv__kblock *b = block_of(o, 0);
    assert_non_null(b->A.inv);
    assert_non_null(b->G.inv);
    const double *cached = b->A.inv;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err); /* k = 6 */
    assert_ptr_equal(b->A.inv, cached);                                      /* reused */
    unsigned char *blob;
    size_t len;
    tu_assert_status(curv_opt_save(o, &blob, &len, &err), CURV_OK, &err);
    curv_opt *o2;
    tu_assert_status(curv_opt_load(blob, len, &o2, &err), CURV_OK, &err);
    assert_null(block_of(o2, 0)->A.inv);
    char got[8];
    assert_int_equal(curv_opt_get_param_str(o2, "precision", got, sizeof got), CURV_OK);
    assert_string_equal(got, precision);
    assert_int_equal(block_of(o2, 0)->A.f32, strcmp(precision, "fp32") == 0);
    for (int k = 7; k <= 9; k++) { /* k = 8 refreshes */
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(o2, &net, 1, u2, NULL, &err), CURV_OK, &err);
        assert_memory_equal(u, u2, net.dim * sizeof(double));
    }
    assert_non_null(block_of(o2, 0)->A.inv);
    /* The precision is fixed for the optimizer's life: its caches are of
     * one type. */
    curv_config *c = curv_config_new();
    const char *other = strcmp(precision, "fp32") == 0 ? "fp64" : "fp32";
    assert_int_equal(curv_config_set_str(c, "precision", other, NULL), CURV_OK);
    size_t slen;
    unsigned char *snap = tu_snapshot(o2, &slen);
    tu_assert_status(curv_opt_reconfigure(o2, c, &err), CURV_E_CONFIG, &err);
    assert_non_null(strstr(err.text, "precision"));
    tu_assert_unchanged(o2, snap, slen);
    curv_free(snap);
    curv_config_free(c);
    curv_free(blob);
    curv_opt_free(o2);
    free(u), free(u2);
    tu_mlp_teardown(o, l, &net);
}

static void test_inverse_cache(void **state)
{
    (void)state;
    check_inverse_cache("fp64");
    check_inverse_cache("fp32");
}

/*
 * The eigen and Cholesky routes through whole simple-mode steps on the
 * same batches (fp64, the plain multiply: no momentum, clip or noise, so
 * an update is −P∇h), refreshing at k <= 3 and 6 with steps between: per
 * block the updates agree within twice multiply_bound at u = 2⁻⁵³. Each
 * route's side inverse is backward stable (dsyevd's, and dpotrf's and
 * dpotri's, backward errors are O(n u ‖F + cI‖), inside the C_s the bound
 * counts for a side formed from its factor), so each is within the bound
 * of the exact product and the two within twice it. They are not the same
 * bits (the Cholesky route ran).
 */
static void test_routes_agree(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w[] = {6, 5, 4, 3};
    curv_layout *l = tu_mlp_setup(&net, w, 3, 2, 8, 91, 92);
    const double gamma = 0.02;
    const tu_kv kv[] = {{"lr", 1},           {"momentum", 0}, {"weight_decay", 0},
                        {"inv_interval", 3}, {"kl_clip", 0},  {"damping", gamma}};
    curv_opt *oe =
        tu_kfac_opt(l, kv, 6, "mode", "simple", "noise", "off", "refresh", "eigen", NULL);
    curv_opt *oc = tu_kfac_opt(l, kv, 6, "mode", "simple", "noise", "off", NULL);
    double *ue = tu_alloc(net.dim), *uc = tu_alloc(net.dim), most = 0;
    curv_error err;
    int differ = 0;
    for (int k = 1; k <= 7; k++) {
        tu_mlp_batch(&net, 120 + (uint64_t)k);
        tu_assert_status(tu_mlp_step(oe, &net, 1, ue, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(oc, &net, 1, uc, NULL, &err), CURV_OK, &err);
        for (size_t i = 0; i < 3; i++) {
            const struct curv__kblock *b = block_of(oc, i);
            assert_true(b->A.chol && b->G.chol && !block_of(oe, i)->A.chol);
            const size_t off = b->info.offset, sz = b->info.size;
            const double e = frob_rel(uc + off, ue + off, sz);
            const double bound = 2 * multiply_bound(b, gamma, 0x1p-53);
            if (!(e <= bound))
                fail_msg("step %d, block %zu: the routes differ by %g > %g", k, i, e, bound);
            most = fmax(most, e / bound);
            differ |= memcmp(uc + off, ue + off, sz * sizeof(double)) != 0;
        }
    }
    if (getenv("TU_VERBOSE"))
        printf("eigen vs cholesky over 7 steps: at most %.3g of the bound\n", most);
    assert_true(differ);
    free(ue), free(uc);
    curv_opt_free(oe);
    tu_mlp_teardown(oc, l, &net);
}

/* fp32 against fp64 through whole simple-mode steps on the same batches,
 * with refreshes (k <= 3, 6) and float inverses reused from the cache
 * (k = 4, 5): the updates agree to a sanity margin of 1e-5 (relative, the
 * largest entry; the derived bound is held per multiply in
 * test_multiply_forms, here the factors' float SYRK adds its own κ-scaled
 * share) and differ (the float path ran). */
static void test_fp32_tracks_fp64(void **state)
{
    (void)state;
    tu_mlp a, b;
    const size_t w[] = {6, 5, 4, 3};
    curv_layout *la = tu_mlp_setup(&a, w, 3, 2, 8, 71, 72);
    curv_layout *lb = tu_mlp_setup(&b, w, 3, 2, 8, 71, 72);
    const tu_kv kv[] = {{"lr", 0.5},         {"momentum", 0}, {"weight_decay", 0},
                        {"inv_interval", 3}, {"kl_clip", 0},  {"damping", 0.1}};
    curv_opt *o64 = tu_kfac_opt(la, kv, 6, "mode", "simple", NULL);
    curv_opt *o32 = tu_kfac_opt(lb, kv, 6, "mode", "simple", "precision", "fp32", NULL);
    double *u64 = tu_alloc(a.dim), *u32 = tu_alloc(b.dim), most = 0;
    curv_error err;
    for (int k = 1; k <= 6; k++) {
        tu_mlp_batch(&a, 80 + (uint64_t)k);
        tu_mlp_batch(&b, 80 + (uint64_t)k);
        tu_assert_status(tu_mlp_step(o64, &a, 1, u64, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_mlp_step(o32, &b, 1, u32, NULL, &err), CURV_OK, &err);
        const double e = tu_rel_err(u32, u64, a.dim);
        if (!(e <= 1e-5))
            fail_msg("step %d: fp32 is %g from fp64", k, e);
        most = fmax(most, e);
    }
    if (getenv("TU_VERBOSE"))
        printf("fp32 vs fp64 over 6 steps: largest relative difference %.3g\n", most);
    assert_true(most > 1e-12);
    free(u64), free(u32);
    curv_opt_free(o32);
    tu_mlp_free(&b);
    curv_layout_free(lb);
    tu_mlp_teardown(o64, la, &a);
}

/* The default precision is fp32 (docs/NOTES.md, "K-FAC precision"): a
 * session created without it multiplies in float. */
static void test_precision_default(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w[] = {4, 3, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 2, 0, 4, 61, 62);
    curv_config *c = curv_config_new();
    curv_opt *o = tu_new_opt(CURV_OPT_KFAC, l, c);
    char got[8];
    assert_int_equal(curv_opt_get_param_str(o, "precision", got, sizeof got), CURV_OK);
    assert_string_equal(got, "fp32");
    assert_int_equal(block_of(o, 0)->A.f32, 1);
    curv_config_free(c);
    tu_mlp_teardown(o, l, &net);
}

/*
 * The factors follow X ← εX + (1−ε)X̂, ε = min(1 − 1/k, decay): within
 * 1e-14 in fp64. In fp32 each X̂ of a dense side is a float SYRK of the
 * rows rounded to float, off by at most (k + 2) u Σ_r |x_ri| |x_rj| per
 * entry (Higham (3.5) for a k-term sum, u = 2⁻²⁴, the two roundings of
 * the inputs; k = the 3 rows here), and Σ_r |x_ri||x_rj| <= the largest
 * diagonal entry of X̂ (Cauchy–Schwarz); the EMA, in double, is a convex
 * combination, so the bound relative to the largest entry holds for the
 * average too.
 */
static void check_ema_schedule(int fp32)
{
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    tu_mlp_new(&net, w, 2, 0, 3, 41);
    curv_layout *l = tu_mlp_layout(&net);
    const tu_kv kv[] = {{"lr", 0}, {"weight_decay", 0}, {"decay", 0.6}};
    curv_opt *o =
        tu_kfac_opt(l, kv, 3, "mode", "simple", "precision", fp32 ? "fp32" : "fp64", NULL);
    const double tol = fp32 ? (3 + 2) * 0x1p-24 : 1e-14;
    double *u = tu_alloc(net.dim), *Aw = tu_alloc(36), *Gw = tu_alloc(36);
    curv_error err;
    for (unsigned k = 1; k <= 4; k++) {
        tu_mlp_batch(&net, 100 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        const double eps = fmin(1.0 - 1.0 / k, 0.6);
        double *A = tu_outer_mean(net.acts[1], 3, 4, 1, 1.0 / 3),
               *G = tu_outer_mean(net.sig[1], 3, 2, 0, 1.0 / 3);
        for (size_t i = 0; i < 25; i++)
            Aw[i] = eps * Aw[i] + (1 - eps) * A[i];
        for (size_t i = 0; i < 4; i++)
            Gw[i] = eps * Gw[i] + (1 - eps) * G[i];
        const struct curv__kblock *b = block_of(o, 1);
        tu_expect_close(b->A.F, Aw, 25, tol, "EMA of A", (int)k);
        tu_expect_close(b->G.F, Gw, 4, tol, "EMA of G", (int)k);
        if (fp32 && k == 1 && !(tu_rel_err(b->A.F, Aw, 25) > 1e-14))
            fail_msg("fp32: the factor of A is not a float SYRK");
        free(A), free(G);
    }
    free(u), free(Aw), free(Gw);
    tu_mlp_teardown(o, l, &net);
}

static void test_ema_schedule(void **state)
{
    (void)state;
    check_ema_schedule(0);
    check_ema_schedule(1);
}

/* cov_interval: statistics are due at steps 1, 1 + T, ...; a step between
 * may omit them (the factors stay) or send them (they are used); a due
 * step without them is refused naming the block, changing nothing. */
static void test_cov_interval(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 2, 0, 3, 51, 52);
    const tu_kv kv[] = {{"lr", 0.1}, {"weight_decay", 0}, {"cov_interval", 3}};
    curv_opt *o = tu_kfac_opt(l, kv, 3, "mode", "simple", NULL);
    double *u = tu_alloc(net.dim);
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 0, u, NULL, &err), CURV_E_INVALID, &err);
    assert_non_null(strstr(err.text, "'l0'"));
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    assert_true(tu_report(o, "stats_updated") == 1);
    double *A1 = factor(&block_of(o, 0)->A);
    tu_assert_status(tu_mlp_step(o, &net, 0, u, NULL, &err), CURV_OK, &err); /* step 2 */
    assert_true(tu_report(o, "stats_updated") == 0);
    double *A2 = factor(&block_of(o, 0)->A);
    assert_memory_equal(A1, A2, 16 * sizeof(double));
    tu_mlp_batch(&net, 53);
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err); /* step 3 */
    double *A3 = factor(&block_of(o, 0)->A);
    assert_true(max_abs_diff(A2, A3, 16) > 0);
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    tu_assert_status(tu_mlp_step(o, &net, 0, u, NULL, &err), CURV_E_INVALID, &err); /* step 4 */
    assert_non_null(strstr(err.text, "due"));
    tu_assert_unchanged(o, snap, len);
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    curv_free(snap);
    free(A1), free(A2), free(A3), free(u);
    tu_mlp_teardown(o, l, &net);
}

/* Inverses are recomputed at k <= 3 and k ≡ 0 (mod inv_interval); the
 * report's inverse_age counts the steps since. Between refreshes the
 * update uses the old inverse with the current gradient. On either route
 * (@refresh) a block keeps what its factor at the refresh gives:
 * Q diag(w) Qᵀ = F, or P = (F + γπ I)⁻¹ for the input side. */
static void check_inverse_interval(const char *refresh)
{
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    tu_mlp_new(&net, w, 2, 0, 3, 61);
    curv_layout *l = tu_mlp_layout(&net);
    const tu_kv kv[] = {{"lr", 0.1}, {"weight_decay", 0}, {"inv_interval", 4}};
    curv_opt *o = tu_kfac_opt(l, kv, 3, "mode", "simple", "refresh", refresh, NULL);
    double *u = tu_alloc(net.dim);
    const double want[] = {0, 0, 0, 0, 1, 2, 3, 0, 1};
    curv_error err;
    for (unsigned k = 1; k <= 9; k++) {
        tu_mlp_batch(&net, 200 + k);
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        if (tu_report(o, "inverse_age.l0") != want[k - 1] ||
            tu_report(o, "inverse_age.l1") != want[k - 1])
            fail_msg("step %u: inverse age %g, want %g", k, tu_report(o, "inverse_age.l0"),
                     want[k - 1]);
        /* The eigenvectors or the inverse in use are those of the factor
         * at the last refresh. */
        const struct curv__kblock *b = block_of(o, 0);
        if (want[k - 1] == 0 && !b->A.chol) {
            double *A = factor(&b->A), *R = tu_alloc(16);
            tu_from_eig(4, b->A.Q, b->A.w, R);
            assert_true(tu_rel_err(R, A, 16) < 1e-12);
            free(A), free(R);
        } else if (want[k - 1] == 0) {
            double *A = factor(&b->A), *PA = tu_alloc(16), *E = tu_alloc(16);
            for (size_t i = 0; i < 4; i++)
                A[i * 4 + i] += 0.3 * b->pi, E[i * 4 + i] = 1; /* the default damping */
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 4, 4, 4, 1.0, b->A.P, 4, A, 4,
                        0.0, PA, 4);
            assert_true(tu_rel_err(PA, E, 16) < 1e-12);
            assert_true(b->A.pc == 0.3 * b->pi);
            free(A), free(PA), free(E);
        }
    }
    free(u);
    tu_mlp_teardown(o, l, &net);
}

static void test_inverse_interval(void **state)
{
    (void)state;
    check_inverse_interval("eigen");
    check_inverse_interval("auto"); /* simple mode: cholesky */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_factors_one_example), cmocka_unit_test(test_factors_batch),
        cmocka_unit_test(test_conv_statistics),     cmocka_unit_test(test_blockdiag_update),
        cmocka_unit_test(test_ema_schedule),        cmocka_unit_test(test_wide_factors),
        cmocka_unit_test(test_float_layers),        cmocka_unit_test(test_cov_interval),
        cmocka_unit_test(test_inverse_interval),    cmocka_unit_test(test_multiply_forms),
        cmocka_unit_test(test_inverse_cache),       cmocka_unit_test(test_precision_default),
        cmocka_unit_test(test_fp32_tracks_fp64),    cmocka_unit_test(test_routes_agree),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
