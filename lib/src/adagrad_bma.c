/* SPDX-License-Identifier: MIT */
/*
 * AdaGrad with block mean approximation (BMA paper §6.2, Algorithm 1,
 * eqs. 22-27): H ≈ Z F Z with Z = diag(sqrt(r + ε)) and F = I + B̄, where
 * B = S^-1/2 X S^-1/2, X_ij = U_ij / (v_i v_j) off the diagonal and 0 on it
 * (eq. 26). F^-1/2 = I + D̄ by Theorem 2 (eq. 27), and the update is
 *   Δ = −η Z^-1/2 (I + D̄) Z^-1/2 g.
 * Algorithm 1 line 18 adds Σ_j D_ij u_j with u the block sums of the raw
 * gradient, though the vector being multiplied is Z^-1/2 g; by default we
 * use its block sums u'_j = Σ_{m∈j} g_m / sqrt(z_m), which makes the update
 * the exact product above. literal_line18 = 1 restores the printed form.
 * D is recomputed every inv_interval steps (the amortisation of §7); r and
 * U are updated every step.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

enum { PART_BLOCK = 0, PART_ROW = 1 };

struct bma_hyper {
    struct curv__sched sched;
    double eps;
    double eig_floor;
    int partition;
    int literal_line18;
    int64_t inv_interval;
    int64_t max_blocks;
};

static const struct curv__param PARAMS[] = {
    CURV__SCHED_PARAMS(struct bma_hyper, sched, 0.01, CURV__SCHED_LR_DOC),
    CURV__REAL(struct bma_hyper, eps, "eps", 1e-8, 1e-300, 1,
               "ε in z = sqrt(r + ε) (Algorithm 1 line 9; the paper gives no value); must be > 0 "
               "so that every block sum v_i is positive"),
    CURV__REAL(struct bma_hyper, eig_floor, "eig_floor", 1e-2, 0, 0.5,
               "eigenvalues of I + X below eig_floor·λ_max are clamped to it (text after eq. 27; "
               "the paper gives no value). I + X is singular on step 1 whenever each block's "
               "gradient has one sign, so a tiny floor multiplies the first updates by up to "
               "floor^-1/2: 1e-2 bounds that at 10 (see docs/NOTES.md)"),
    CURV__ENUM(struct bma_hyper, partition, "partition", "block", "block|row",
               "block: one BMA block per layout block; row: one per output unit (row) of each "
               "dense/conv2d block, bias included, and one per vector block"),
    CURV__BOOL(struct bma_hyper, literal_line18, "literal_line18", 0,
               "1: Algorithm 1 line 18 as printed (raw-gradient block sums u_j); 0: the scaled "
               "sums that make the update Z^-1/2 F^-1/2 Z^-1/2 g exactly"),
    CURV__INT(struct bma_hyper, inv_interval, "inv_interval", 1, 1, 1e9,
              "recompute D every this many steps (1 = every step, as in the paper's timings)"),
    CURV__INT(struct bma_hyper, max_blocks, "max_blocks", 4096, 1, 65536,
              "largest number of BMA blocks L accepted (each refresh is an O(L³) "
              "eigendecomposition)"),
};

struct bma_state {
    size_t L;
    size_t *start;   /* L + 1 block boundaries in the flat vector */
    double *r;       /* d: sum of squared gradients */
    double *w;       /* d, per step: 1/sqrt(z), z = sqrt(r + g² + ε) */
    double *U;       /* L x L: Σ u uᵀ */
    double *D;       /* L x L: the last computed D of eq. 27 */
    curv_bma *core;  /* scratch for Theorem 2, partition s */
    double *scratch; /* u, u', v, c (L each), U and D candidates (L² each) */
};

/* Number of BMA blocks of the chosen partition. */
static size_t count_partition(const curv_layout *l, int mode)
{
    size_t n = curv_layout_nblocks(l), L = 0;
    curv_block_info b;
    for (size_t i = 0; i < n; i++) {
        curv_layout_block(l, i, &b);
        L += (mode == PART_ROW && b.kind != CURV_BLOCK_VECTOR) ? b.rows : 1;
    }
    return L;
}

/* A saved state holds r (d), U and D (L² each). */
static size_t bma_saved(const curv_opt *o)
{
    size_t L = count_partition(o->layout, ((const struct bma_hyper *)o->hyper)->partition), L2;
    if (!curv__mul_ok(L, L, &L2) || L2 > (SIZE_MAX - o->dim) / 2)
        return SIZE_MAX;
    return o->dim + 2 * L2;
}

/* The L + 1 block boundaries of the chosen partition into @start. */
static void fill_partition(const curv_layout *l, int mode, size_t *start)
{
    size_t n = curv_layout_nblocks(l), L = count_partition(l, mode);
    curv_block_info b;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        curv_layout_block(l, i, &b);
        size_t parts = (mode == PART_ROW && b.kind != CURV_BLOCK_VECTOR) ? b.rows : 1;
        for (size_t p = 0; p < parts; p++)
            start[k++] = b.offset + p * (b.size / parts);
    }
    start[L] = curv_layout_dim(l);
}

static void bma_fini(curv_opt *o)
{
    struct bma_state *s = o->impl;
    curv__free(s->start);
    curv__free(s->r);
    curv__free(s->w);
    curv__free(s->U);
    curv__free(s->D);
    curv_bma_free(s->core);
    curv__free(s->scratch);
    curv__free(s);
}

static curv_status bma_init(curv_opt *o, struct curv__tally *t, curv_error *err)
{
    const struct bma_hyper *h = o->hyper;
    struct bma_state scratch, *s = curv__tally_obj(t, &scratch, sizeof *s);
    if (!s)
        return curv__fail(err, CURV_E_NOMEM, "adagrad_bma: out of memory");
    o->impl = s;
    const size_t L = s->L = count_partition(o->layout, h->partition);
    if (L > (size_t)h->max_blocks)
        return curv__fail(err, CURV_E_RANGE,
                          "adagrad_bma: the partition has L = %zu blocks, above max_blocks = %lld",
                          L, (long long)h->max_blocks);
    s->start = curv__tally_calloc(t, L + 1, sizeof(size_t));
    s->r = curv__tally_calloc(t, o->dim, sizeof(double));
    s->w = curv__tally_calloc(t, o->dim, sizeof(double));
    s->U = curv__tally_calloc(t, L * L, sizeof(double));
    s->D = curv__tally_calloc(t, L * L, sizeof(double));
    s->scratch = curv__tally_calloc(t, 4 * L + 2 * L * L, sizeof(double));
    if (!t->alloc) {
        t->bytes = curv__sat_add(t->bytes, curv__bma_bytes(L));
        return CURV_OK;
    }
    size_t *sizes = t->failed ? NULL : curv__calloc_n(L, sizeof(size_t));
    if (!sizes)
        return curv__fail(err, CURV_E_NOMEM, "adagrad_bma: out of memory for d = %zu, L = %zu",
                          o->dim, L);
    fill_partition(o->layout, h->partition, s->start);
    for (size_t i = 0; i < L; i++)
        sizes[i] = s->start[i + 1] - s->start[i];
    curv_status st = curv_bma_new(sizes, L, &s->core, err);
    curv__free(sizes);
    return st;
}

/*
 * Lines 8-12 for one block, without touching r (the step is all-or-nothing):
 * z = sqrt(r + g² + ε), w = 1/sqrt(z) = Z^-1/2 (kept for the update), and
 * the block sums u = Σ g, u' = Σ w g and v = Σ z. The sums run in LANES
 * fixed partial sums, an order written in the code (so every build and
 * every clone gives the same bits) that the compiler can vectorize.
 */
#define LANES 8
CURV__VECTOR_CLONES static void block_pass(size_t n, const double *restrict r,
                                           const double *restrict g, double eps, double *restrict w,
                                           double sums[3])
{
    double su[LANES] = {0}, ss[LANES] = {0}, sv[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (size_t j = 0; j < LANES; j++) {
            double z = sqrt(r[i + j] + g[i + j] * g[i + j] + eps);
            w[i + j] = 1.0 / sqrt(z);
            su[j] += g[i + j];
            ss[j] += g[i + j] * w[i + j];
            sv[j] += z;
        }
    for (; i < n; i++) {
        double z = sqrt(r[i] + g[i] * g[i] + eps);
        w[i] = 1.0 / sqrt(z);
        su[0] += g[i];
        ss[0] += g[i] * w[i];
        sv[0] += z;
    }
    sums[0] = sums[1] = sums[2] = 0;
    for (size_t j = 0; j < LANES; j++)
        sums[0] += su[j], sums[1] += ss[j], sums[2] += sv[j];
}

/* Lines 16-21 for one block, and the commit of line 8:
 * Δ = −η Z^-1/2 (Z^-1/2 g + c), r ← r + g². */
CURV__VECTOR_CLONES static void update_pass(size_t n, const double *restrict g,
                                            const double *restrict w, double c, double lr,
                                            double *restrict delta, double *restrict r)
{
    for (size_t m = 0; m < n; m++) {
        delta[m] = -lr * w[m] * (g[m] * w[m] + c);
        r[m] += g[m] * g[m];
    }
}

/* The first element of [@a, @b) whose r + g² is not finite. */
static size_t first_overflow(const double *r, const double *g, size_t a, size_t b)
{
    for (size_t i = a; i < b; i++)
        if (!isfinite(r[i] + g[i] * g[i]))
            return i;
    return a;
}

/* Theorem 2 on F = I + B̄, B = S^-1/2 X S^-1/2: D into @D (eq. 27). */
static curv_status refresh_d(struct bma_state *s, const struct bma_hyper *h, const double *Unew,
                             const double *v, double *D, curv_error *err)
{
    const size_t L = s->L;
    double *lam = curv_bma_lambda(s->core), *B = curv_bma_matrix(s->core);
    const size_t *sz = curv_bma_sizes(s->core);
    for (size_t i = 0; i < L; i++) {
        lam[i] = 1.0;
        for (size_t j = 0; j < L; j++)
            B[i * L + j] =
                i == j ? 0.0 : Unew[i * L + j] / (v[i] * v[j]) / sqrt((double)sz[i] * sz[j]);
    }
    curv_status st = curv_bma_inv_sqrt(s->core, h->eig_floor, s->core, err);
    if (st == CURV_OK)
        memcpy(D, curv_bma_matrix(s->core), L * L * sizeof(double));
    return st;
}

static curv_status bma_step(curv_opt *o, const struct curv__step_args *in, double *delta,
                            curv_request *req, curv_error *err)
{
    const double *g = in->g, *theta = in->theta;
    (void)theta, (void)req;
    const struct bma_hyper *h = o->hyper;
    struct bma_state *s = o->impl;
    const size_t L = s->L;
    double *u = s->scratch, *us = u + L, *v = us + L, *c = v + L, *Unew = c + L;
    double *Dnew = Unew + L * L;
    for (size_t i = 0; i < L; i++) {
        size_t a = s->start[i];
        double sums[3];
        block_pass(s->start[i + 1] - a, s->r + a, g + a, h->eps, s->w + a, sums);
        u[i] = sums[0], us[i] = sums[1], v[i] = sums[2];
        if (!isfinite(v[i])) /* some r + g² overflowed: name the first */
            return curv__overflow(o, first_overflow(s->r, g, a, s->start[i + 1]),
                                  "the sum of squared gradients r + g²", err);
    }
    /* Line 14: U + u uᵀ, committed only when the step succeeds. */
    for (size_t i = 0; i < L; i++)
        for (size_t j = 0; j < L; j++) {
            Unew[i * L + j] = s->U[i * L + j] + u[i] * u[j];
            if (!isfinite(Unew[i * L + j]))
                return curv__overflow(o, s->start[i],
                                      "U + u uᵀ (u: the gradient summed over the partition "
                                      "block that starts here)",
                                      err);
        }
    /* D is refreshed every inv_interval steps (the first step included). */
    const int refresh = (o->t % (uint64_t)h->inv_interval) == 0;
    const double *D = s->D;
    if (refresh) {
        curv_status st = refresh_d(s, h, Unew, v, Dnew, err);
        if (st != CURV_OK)
            return st;
        D = Dnew;
    }
    /* Line 18: c_i = Σ_j D_ij u_j (scaled sums by default). */
    const double *uu = h->literal_line18 ? u : us;
    for (size_t i = 0; i < L; i++) {
        double acc = 0;
        for (size_t j = 0; j < L; j++)
            acc += D[i * L + j] * uu[j];
        c[i] = acc;
    }
    const double lr = curv__sched_lr(&h->sched, o->t + 1);
    for (size_t i = 0; i < L; i++) {
        size_t a = s->start[i], n = s->start[i + 1] - a;
        update_pass(n, g + a, s->w + a, c[i], lr, delta + a, s->r + a);
    }
    memcpy(s->U, Unew, L * L * sizeof(double));
    if (refresh)
        memcpy(s->D, Dnew, L * L * sizeof(double));
    return CURV_OK;
}

static void bma_save(const curv_opt *o, struct curv__writer *w)
{
    const struct bma_state *s = o->impl;
    curv__w_part(w, curv__steps_stamp(o));
    curv__w_f64s(w, s->r, o->dim);
    curv__w_f64s(w, s->U, s->L * s->L);
    curv__w_f64s(w, s->D, s->L * s->L);
}

static curv_status bma_load(curv_opt *o, struct curv__reader *r, curv_error *err)
{
    (void)err;
    struct bma_state *s = o->impl;
    curv__r_f64s(r, s->r, o->dim);
    curv__r_f64s(r, s->U, s->L * s->L);
    curv__r_f64s(r, s->D, s->L * s->L);
    /* As a run of steps would leave them: r >= 0, U's diagonal >= 0, all finite. */
    int ok = curv__valid_sums(s->r, o->dim) &&
             curv__first_nonfinite(s->U, s->L * s->L) == s->L * s->L &&
             curv__first_nonfinite(s->D, s->L * s->L) == s->L * s->L;
    for (size_t i = 0; ok && i < s->L; i++)
        ok = s->U[i * s->L + i] >= 0;
    if (!ok)
        r->bad = 1;
    return CURV_OK;
}

const struct curv__opt_vt curv__adagrad_bma_vt = {
    .params = PARAMS,
    .n_params = sizeof PARAMS / sizeof PARAMS[0],
    .hyper_size = sizeof(struct bma_hyper),
    .init = bma_init,
    .fini = bma_fini,
    .step = bma_step,
    .save = bma_save,
    .load = bma_load,
    .saved_doubles = bma_saved,
    .fixed = (const char *const[]){"partition", "max_blocks", NULL},
};
