/* SPDX-License-Identifier: MIT */
/*
 * bench_hf - HF's library-side cost per CG iteration, next to a bandwidth
 * baseline taken in the same run: one fused pass that streams the vectors
 * a CG iteration touches exactly once (read x, r, p, G·p, P⁻¹; write x, r,
 * p: 64 bytes per parameter), once after every timed iteration. The
 * timed region is curv_opt_resume answering a curvature product (the
 * answer's NaN/Inf check included); the trainer's product, a diagonal G,
 * is computed outside it.
 * Usage: bench_hf [--quick]   (--quick: d = 1e5 only). Method and reading:
 * tests/bench/README.md.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curv.h"

#define CG_ITERS 50   /* CG iterations per HF step (cg_max, cg_eps = 0) */
#define TIMED_STEPS 2 /* after one warm-up step (which faults the pages in) */
#define BASE_BYTES 64.0

static const size_t DS[] = {100000, 1000000, 10000000};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void *alloc(size_t n)
{
    double *p = calloc(n, sizeof(double));
    if (!p) {
        fprintf(stderr, "bench_hf: out of memory for %zu doubles\n", n);
        exit(1);
    }
    return p;
}

/* The trainer: h(θ + v) = h0 + gᵀv + ½ Σ c_i v_i², so G = diag(c). */
struct trainer {
    size_t d;
    double *c, *g, *sq, h0;
    double *ans; /* answer buffer, d doubles or one per LOSS vector */
};

static void answer(const struct trainer *t, const curv_request *req)
{
    const size_t d = t->d;
    if (req->kind == CURV_REQ_CURVATURE_PRODUCT) {
        for (size_t i = 0; i < d; i++)
            t->ans[i] = t->c[i] * req->vectors[i];
        return;
    }
    for (size_t k = 0; k < req->n_vectors; k++) {
        const double *v = req->vectors + k * d;
        double s = t->h0;
        for (size_t i = 0; i < d; i++)
            s += t->g[i] * v[i] + 0.5 * t->c[i] * v[i] * v[i];
        t->ans[k] = s;
    }
}

/* The baseline: the arithmetic of one CG iteration as a single pass (the
 * real iteration cannot be fused: α needs pᵀAp over all of p first, β the
 * new rᵀP⁻¹r), touching each vector once. */
static double baseline_pass(size_t n, double a, double b, const double *restrict ap,
                            const double *restrict pinv, double *restrict x, double *restrict r,
                            double *restrict p)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] += a * p[i];
        r[i] += a * ap[i];
        p[i] = -pinv[i] * r[i] + b * p[i];
        s += r[i] * r[i] * pinv[i] + p[i] * r[i];
    }
    return s;
}

/* The baseline's own five vectors. */
struct baseline {
    size_t d;
    double *v[5];
    double sink;
};

static void baseline_init(struct baseline *b, size_t d)
{
    b->d = d;
    b->sink = 0;
    for (int k = 0; k < 5; k++) {
        b->v[k] = alloc(d);
        for (size_t i = 0; i < d; i++)
            b->v[k][i] = 1.0 + 1e-3 * (double)((i * (size_t)(k + 3)) % 97);
    }
}

/* Seconds for one baseline pass. */
static double baseline_time(struct baseline *b)
{
    double *const *v = b->v, t0 = now();
    b->sink += baseline_pass(b->d, 1e-9, 0.5, v[0], v[1], v[2], v[3], v[4]);
    return now() - t0;
}

static void baseline_free(struct baseline *b)
{
    for (int k = 0; k < 5; k++)
        free(b->v[k]);
    if (b->sink == 42.0)
        printf(" ");
}

/* Seconds of each resume that answered a curvature product (G·x_0 and
 * G·p_0..p_49 per step), and of the baseline pass run right after it, so
 * that both see the same load on a shared machine. */
#define MAX_SAMPLES (TIMED_STEPS * (CG_ITERS + 1))
struct samples {
    double hf[MAX_SAMPLES], base[MAX_SAMPLES];
    size_t n;
};

/* One HF step, timed into @sm unless it is NULL. */
static void hf_step(curv_opt *o, const struct trainer *t, double *u, struct baseline *b,
                    struct samples *sm)
{
    curv_step_input in = {.grad = t->g,
                          .len = t->d,
                          .dtype = CURV_F64,
                          .loss = t->h0,
                          .has_loss = 1,
                          .grad_sq = t->sq};
    curv_request req;
    curv_error err;
    curv_status st = curv_opt_step(o, &in, u, &req, &err);
    while (st == CURV_NEED_INPUT) {
        answer(t, &req);
        curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = t->ans};
        int product = req.kind == CURV_REQ_CURVATURE_PRODUCT;
        double t0 = now();
        st = curv_opt_resume(o, &resp, CURV_F64, u, &req, &err);
        double dt = now() - t0;
        if (product && sm && sm->n < MAX_SAMPLES) {
            sm->hf[sm->n] = dt;
            sm->base[sm->n++] = baseline_time(b);
        }
    }
    if (st != CURV_OK) {
        fprintf(stderr, "bench_hf: step failed: %s: %s\n", curv_status_name(st), err.text);
        exit(1);
    }
    const curv_report_entry *e;
    size_t n = curv_opt_report(o, &e);
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, "cg_iterations") == 0 && e[i].value != CG_ITERS) {
            fprintf(stderr, "bench_hf: CG stopped after %g iterations, not %d\n", e[i].value,
                    CG_ITERS);
            exit(1);
        }
}

static void run(size_t d)
{
    curv_layout *l = curv_layout_new();
    curv_config *c = curv_config_new();
    curv_opt *o = NULL;
    curv_error err;
    if (curv_layout_add_vector(l, "w", d, &err) != CURV_OK ||
        curv_config_set_num(c, "cg_max", CG_ITERS, &err) != CURV_OK ||
        curv_config_set_num(c, "cg_eps", 0, &err) != CURV_OK ||
        curv_opt_new(CURV_OPT_HF, l, c, &o, &err) != CURV_OK) {
        fprintf(stderr, "bench_hf: %s\n", err.text);
        exit(1);
    }
    struct trainer t = {d, alloc(d), alloc(d), alloc(d), 1.0, alloc(d > 64 ? d : 64)};
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < d; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        double r = (double)(s >> 11) / 9007199254740992.0;
        /* Eigenvalues spread over 1e-3..1e3 and a grad_sq that knows
         * nothing of them: CG runs all cg_max iterations of every step. */
        t.c[i] = pow(10.0, 6 * r - 3);
        t.g[i] = r - 0.5;
        t.sq[i] = 1.0;
    }
    double *u = alloc(d);
    struct baseline b;
    baseline_init(&b, d);
    static struct samples sm;
    sm.n = 0;
    hf_step(o, &t, u, &b, NULL); /* warm-up: first touch of every buffer */
    for (int k = 0; k < TIMED_STEPS; k++)
        hf_step(o, &t, u, &b, &sm);
    const size_t nt = sm.n;
    double mean = 0;
    for (size_t k = 0; k < nt; k++)
        mean += sm.hf[k] / (double)nt;
    qsort(sm.hf, nt, sizeof *sm.hf, cmp_double);
    qsort(sm.base, nt, sizeof *sm.base, cmp_double);
    double med = sm.hf[nt / 2], base = sm.base[nt / 2], ns = 1e9 / (double)d;
    printf("%9zu  %8.3f  %8.3f  (%6.3f..%7.3f)  %8.3f  %6.1f  %5.2f  %5.2f\n", d, med * ns,
           mean * ns, sm.hf[0] * ns, sm.hf[nt - 1] * ns, base * ns,
           BASE_BYTES * (double)d / base * 1e-9, med / base, mean / base);
    fflush(stdout);
    baseline_free(&b);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
    free(t.c);
    free(t.g);
    free(t.sq);
    free(t.ans);
    free(u);
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    printf("bench_hf: library work per CG iteration (inside curv_opt_resume answering G·p; the\n"
           "trainer's product is not timed) over %d iterations: median, mean (with the\n"
           "backtracking snapshots), fastest..slowest; next to the median of one fused pass\n"
           "over the CG vectors (%.0f bytes/param) run after each timed iteration. Defaults:\n"
           "Fisher preconditioner, Tikhonov damping.\n"
           "Goal: ratio <= 2.\n",
           TIMED_STEPS * CG_ITERS, BASE_BYTES);
    printf("%9s  %8s  %8s  %17s  %8s  %6s  %5s  %5s\n", "d", "median", "mean", "(min..max)", "pass",
           "GB/s", "r_med", "r_mean");
    for (size_t k = 0; k < (quick ? 1 : sizeof DS / sizeof DS[0]); k++)
        run(DS[k]);
    return 0;
}
