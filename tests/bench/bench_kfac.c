/* SPDX-License-Identifier: MIT */
/*
 * bench_kfac - K-FAC (block-diagonal) on the thesis' MNIST deep autoencoder
 * (784-1000-500-250-30 encoder, mirrored decoder, 8 dense layers with
 * biases) at batch sizes 1000 and 5000, in one run:
 *  - the machine's GEMM rate (n = 1000 dgemm and sgemm, one thread and
 *    every core), the peak each phase is measured against;
 *  - libcurv's phases (factor update, the refresh: Cholesky inverses, the
 *    route simple mode takes, or with --eigen eigendecompositions and then
 *    the forming of the explicit damped inverses and the eigenbasis
 *    multiply; the two-GEMM multiply, a whole simple-mode step between
 *    refreshes),
 *    serially on one BLAS thread and on a pool of one thread per core lent
 *    through curv_executor (BLAS on one thread inside each task), each with
 *    its GFLOP/s and share of the GEMM peak of as many cores, with
 *    precision = fp64 and fp32 (the peak of a phase is that of the
 *    arithmetic it runs in: fp32's refresh stays float64);
 *  - the baseline a user would pick instead: numpy's in-process K-FAC with
 *    explicit inverses (tests/bench/kfac_numpy.py --only explicit), on one
 *    thread and on every core, float64 and float32, with the ratios;
 *  - sessions at once on the daemon's worker pool (server/http/pool.c, lent
 *    as each optimizer's executor as curvd lends it): a lone session
 *    serially and on a pool of one thread per core, then 8 sessions
 *    stepping at once on that pool, their aggregate GFLOP/s as a share of
 *    the float32 GEMM rate on as many threads (fp32, the default precision).
 * Usage: bench_kfac [--quick] [--sessions] [--m1000] [--no-numpy] [--no-sessions] [--eigen]
 *   --quick: a tiny network, a smoke run; --sessions: the GEMM rate and the
 *   sessions only; --m1000: batch 1000 only; --no-numpy: libcurv alone (a
 *   quick A/B of the library's phases); --no-sessions: without them;
 *   --eigen: refresh = eigen (the route before the Cholesky refresh).
 * libcurv allocates as in the daemon (server/main.c: curvd_mem's reused
 * mappings for blocks of 1 MiB and more, large glibc blocks kept in the
 * heap): a worker's arena would otherwise unmap and fault in its step
 * buffers afresh every step; numpy runs in its own process, as a user's.
 */
#include <cblas.h>
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../lib/tu_pool.h"
#include "http/mem.h"
#include "http/pool.h"
#include "kfac_int.h"

#define T3 20
#define REPS 5
#define GAMMA 1e-3 /* the phases' damping (their cost does not depend on it) */
#define NUMPY "/usr/bin/python3"
#define SCRIPT "tests/bench/kfac_numpy.py"

static const size_t AUTOENCODER[] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
static const char *route; /* "refresh" of every optimizer (NULL: the default, auto) */
static const size_t QUICK[] = {10, 8, 6, 4, 6, 8, 10};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *alloc_or_die(size_t n)
{
    void *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "bench_kfac: out of memory\n");
        exit(1);
    }
    return p;
}

static uint64_t rng_state = 7;
static double uniform_pm(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-52 - 1.0;
}

struct net {
    size_t L, m;
    const size_t *w;
    curv_layout *layout;
    curv_opt *opt;
    curv_opt *later; /* max_staleness 2, statistics folded after the step (NULL: none) */
    double *g, *theta, *u;
    double *acts[8], *sig[8];
    float *acts_f[8], *sig_f[8]; /* the same rows as floats (fp32: curvd's binary FP32) */
    curv_layer_stats stats[8];
    int chol; /* the refresh forms Cholesky inverses (no eigendecomposition) */
};

/* A simple-mode K-FAC optimizer for @layout (@precision: NULL for the
 * default). */
static curv_opt *new_opt(const curv_layout *layout, int cov_interval, const char *precision,
                         int max_staleness)
{
    curv_config *c = curv_config_new();
    curv_config_set_str(c, "mode", "simple", NULL);
    curv_config_set_num(c, "inv_interval", T3, NULL);
    curv_config_set_num(c, "weight_decay", 0, NULL);
    curv_config_set_num(c, "max_staleness", max_staleness, NULL);
    if (precision)
        curv_config_set_str(c, "precision", precision, NULL);
    if (route)
        curv_config_set_str(c, "refresh", route, NULL);
    curv_config_set_num(c, "cov_interval", cov_interval, NULL);
    curv_error err;
    curv_opt *o = NULL;
    if (curv_opt_new(CURV_OPT_KFAC, layout, c, &o, &err) != CURV_OK) {
        fprintf(stderr, "bench_kfac: %s\n", err.text);
        exit(1);
    }
    curv_config_free(c);
    return o;
}

/* @precision: NULL for the default. */
static void net_init_cov(struct net *n, const size_t *w, size_t L, size_t m, int cov_interval,
                         const char *precision)
{
    memset(n, 0, sizeof *n);
    n->w = w, n->L = L, n->m = m;
    n->layout = curv_layout_new();
    for (size_t i = 0; i < L; i++) {
        char name[16];
        snprintf(name, sizeof name, "l%zu", i);
        if (curv_layout_add_dense(n->layout, name, w[i + 1], w[i], 1, NULL) != CURV_OK)
            exit(1);
    }
    const size_t d = curv_layout_dim(n->layout);
    n->g = alloc_or_die(d), n->theta = alloc_or_die(d), n->u = alloc_or_die(d);
    for (size_t i = 0; i < d; i++)
        n->g[i] = 1e-3 * uniform_pm();
    for (size_t i = 0; i < L; i++) {
        n->acts[i] = alloc_or_die(m * w[i]);
        n->sig[i] = alloc_or_die(m * w[i + 1]);
        for (size_t j = 0; j < m * w[i]; j++)
            n->acts[i][j] = uniform_pm();
        for (size_t j = 0; j < m * w[i + 1]; j++)
            n->sig[i][j] = 0.1 * uniform_pm();
        /* fp32 sessions get float rows, as curvd hands a binary FP32 body's
         * statistics to libcurv; fp64 ones doubles. */
        const int f32 = !precision || strcmp(precision, "fp32") == 0;
        n->acts_f[i] = f32 ? malloc(m * w[i] * sizeof(float)) : NULL;
        n->sig_f[i] = f32 ? malloc(m * w[i + 1] * sizeof(float)) : NULL;
        if (f32 && (!n->acts_f[i] || !n->sig_f[i]))
            exit(1);
        for (size_t j = 0; f32 && j < m * w[i]; j++)
            n->acts[i][j] = n->acts_f[i][j] = (float)n->acts[i][j];
        for (size_t j = 0; f32 && j < m * w[i + 1]; j++)
            n->sig[i][j] = n->sig_f[i][j] = (float)n->sig[i][j];
        n->stats[i] = (curv_layer_stats){.block = i,
                                         .rows = m,
                                         .examples = m,
                                         .acts = f32 ? (const void *)n->acts_f[i] : n->acts[i],
                                         .signals = f32 ? (const void *)n->sig_f[i] : n->sig[i],
                                         .f32 = f32};
    }
    /* Statistics due every other step only, so that the bench can time a
     * refresh without a factor update (every step still sends them). */
    n->opt = new_opt(n->layout, cov_interval, precision, 0);
    n->chol = curv__kfac_est_block(curv__kfac_estimator(n->opt), 0)->A.chol;
}

static void net_init(struct net *n, const size_t *w, size_t L, size_t m, int fp32)
{
    net_init_cov(n, w, L, m, 2, fp32 ? "fp32" : "fp64");
    n->later = new_opt(n->layout, 1, fp32 ? "fp32" : "fp64", 2);
    curv_error err;
    if (curv_opt_defer_stats(n->later, 1, &err) != CURV_OK)
        exit(1);
}

static void net_free(struct net *n)
{
    for (size_t i = 0; i < n->L; i++)
        free(n->acts[i]), free(n->sig[i]), free(n->acts_f[i]), free(n->sig_f[i]);
    free(n->g), free(n->theta), free(n->u);
    curv_opt_free(n->opt);
    curv_opt_free(n->later);
    curv_layout_free(n->layout);
}

static curv_status step_opt(struct net *n, curv_opt *o, int with_stats)
{
    curv_step_input in = {.grad = n->g,
                          .len = curv_layout_dim(n->layout),
                          .dtype = CURV_F64,
                          .layers = with_stats ? n->stats : NULL,
                          .n_layers = with_stats ? n->L : 0};
    curv_request req;
    curv_error err;
    curv_status st = curv_opt_step(o, &in, n->u, &req, &err);
    if (st != CURV_OK)
        fprintf(stderr, "bench_kfac: step: %s\n", err.text);
    return st;
}

static curv_status step(struct net *n, int with_stats)
{
    return step_opt(n, n->opt, with_stats);
}

/* ---- the phases ------------------------------------------------------------- */

enum { FACTORS, EIGH, FORM, MULTIPLY, EIGEN_MULTIPLY, STEP, STEP_LATER, FOLD, NPHASE };
static const char *const PHASE[NPHASE] = {"factor update",    "refresh",         "form inverses",
                                          "multiply 2-GEMM",  "multiply 4-GEMM", "whole step",
                                          "step, fold later", "fold (settle)"};

/* Nominal flops of each phase for the network (the GEMM-equivalent work,
 * what a share of the GEMM peak is taken of): factors m (n_i² + n_o²)
 * (two SYRKs); the refresh n³ per side by Cholesky (dpotrf n³/3, dpotri
 * 2n³/3), or with eigh 4 n³ per side (a convention: (4/3) n³ to reduce to
 * tridiagonal, about 2 n³ to transform back, the rest for divide and
 * conquer) and then forming n³ per side (one SYRK); the multiply 2 n_o n_i
 * (n_o + n_i) with explicit inverses, twice that in the eigenbasis (none
 * on the Cholesky route: 0 flops, the row left out). The whole step is
 * factors + multiply. */
static void phase_flops(const struct net *n, double *f)
{
    memset(f, 0, NPHASE * sizeof *f);
    for (size_t i = 0; i < n->L; i++) {
        const double no = (double)n->w[i + 1], ni = (double)n->w[i] + 1, m = (double)n->m;
        const double cubes = ni * ni * ni + no * no * no;
        f[FACTORS] += m * (ni * ni + no * no);
        f[EIGH] += n->chol ? cubes : 4 * cubes;
        f[FORM] += n->chol ? 0 : cubes;
        f[MULTIPLY] += 2 * no * ni * (no + ni);
        f[EIGEN_MULTIPLY] += n->chol ? 0 : 4 * no * ni * (no + ni);
    }
    f[STEP] = f[FACTORS] + f[MULTIPLY];
    f[STEP_LATER] = f[MULTIPLY];
    f[FOLD] = f[FACTORS];
}

/* Best of REPS of each phase through the estimator, on a warmed-up
 * optimizer (3 steps: factors, inverses and the cached explicit ones
 * exist); tentative results are dropped. Factors: an update at a step
 * without a refresh; the refresh: one without statistics (cov_interval =
 * 2); forming: the prepare after it; then the multiply with those
 * inverses and, without a prepare, in the eigenbasis; a whole step
 * through the public API between refreshes; and the same step with
 * max_staleness 2 and the statistics folded after it (what a trainer
 * waits for: curv_opt_defer_stats), then its fold (curv_opt_settle). */
static void time_phases(struct net *n, double *p)
{
    struct curv__kfac_est *e = (struct curv__kfac_est *)curv__kfac_estimator(n->opt);
    struct curv__layer_in li[8];
    for (size_t i = 0; i < n->L; i++) /* as opt_input.c hands them over: floats kept in fp32 */
        li[i] = (struct curv__layer_in){.block = i,
                                        .rows = n->m,
                                        .examples = n->m,
                                        .acts = n->acts_f[i] ? NULL : n->acts[i],
                                        .signals = n->sig_f[i] ? NULL : n->sig[i],
                                        .acts_f = n->acts_f[i],
                                        .signals_f = n->sig_f[i]};
    const struct curv__step_args with = {.g = n->g, .layers = li, .n_layers = n->L};
    const struct curv__step_args without = {.g = n->g};
    const double gamma = GAMMA;
    unsigned failed;
    for (int k = 0; k < NPHASE; k++)
        p[k] = INFINITY;
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        curv__kfac_est_update(e, &with, 5, 0, &failed, NULL);
        double t1 = now_s();
        curv__kfac_est_abort(e);
        double t2 = now_s();
        curv__kfac_est_update(e, &without, T3, 0, &failed, NULL);
        double t3 = now_s();
        curv__kfac_est_prepare(e, &gamma, 1, &failed, NULL);
        double t4 = now_s();
        curv__kfac_est_apply(e, 0, gamma, n->g, n->u);
        double t5 = now_s();
        curv__kfac_est_abort(e);
        double t6 = now_s();
        curv__kfac_est_apply(e, 0, gamma, n->g, n->u); /* no prepare: eigenbasis */
        double t7 = now_s();
        p[FACTORS] = fmin(p[FACTORS], t1 - t0);
        p[EIGH] = fmin(p[EIGH], t3 - t2);
        p[FORM] = fmin(p[FORM], t4 - t3);
        p[MULTIPLY] = fmin(p[MULTIPLY], t5 - t4);
        p[EIGEN_MULTIPLY] = fmin(p[EIGEN_MULTIPLY], t7 - t6);
        /* A whole step between refreshes (k = 4, 5, ...): factors + multiply. */
        double t8 = now_s();
        if (step(n, 1) != CURV_OK)
            exit(1);
        p[STEP] = fmin(p[STEP], now_s() - t8);
        double t9 = now_s();
        if (step_opt(n, n->later, 1) != CURV_OK || !curv_opt_stats_pending(n->later))
            exit(1);
        double t10 = now_s();
        curv_opt_settle(n->later);
        p[STEP_LATER] = fmin(p[STEP_LATER], t10 - t9);
        p[FOLD] = fmin(p[FOLD], now_s() - t10);
    }
}

/* GFLOP/s of an s x s x s GEMM, best of 5, on @threads BLAS threads. */
static double gemm_rate(size_t s, int single, int threads)
{
    openblas_set_num_threads(threads);
    double *a = alloc_or_die(s * s), *b = alloc_or_die(s * s), *c = alloc_or_die(s * s);
    float *af = (float *)a, *bf = (float *)b, *cf = (float *)c;
    for (size_t i = 0; i < s * s; i++)
        single ? (af[i] = (float)uniform_pm(), bf[i] = (float)uniform_pm())
               : (a[i] = uniform_pm(), b[i] = uniform_pm());
    const int n = (int)s;
    double best = INFINITY;
    for (int r = 0; r < 6; r++) {
        double t0 = now_s();
        if (single)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, af, n, bf, n,
                        0.0f, cf, n);
        else
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, a, n, b, n, 0.0, c,
                        n);
        if (r > 0) /* the first call warms up */
            best = fmin(best, now_s() - t0);
    }
    free(a), free(b), free(c);
    openblas_set_num_threads(1);
    return 2.0 * (double)s * (double)s * (double)s / best / 1e9;
}

static double json_num(const char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *q = s ? strstr(s, pat) : NULL;
    return q ? strtod(q + strlen(pat), NULL) : NAN;
}

/* numpy's explicit-inverse K-FAC on @threads threads: its whole output
 * (static storage per slot), or NULL when it could not run. */
static const char *run_numpy(int slot, int threads, size_t m0, size_t m1, int quick)
{
    static char out[2][16384];
    char cmd[384];
    /* A machine-specific OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE would make
     * numpy's OpenBLAS differ from what a user gets: unset, here only. */
    snprintf(cmd, sizeof cmd,
             "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE %s %s --only explicit --m %zu %zu "
             "--threads %d%s",
             NUMPY, SCRIPT, m0, m1, threads, quick ? " --quick" : "");
    FILE *f = popen(cmd, "r");
    size_t n = f ? fread(out[slot], 1, sizeof out[slot] - 1, f) : 0;
    out[slot][n] = '\0';
    int st = f ? pclose(f) : -1;
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        printf("numpy on %d thread(s): skipped (%s)\n", threads,
               n ? strtok(out[slot], "\n") : "did not run");
        return NULL;
    }
    return out[slot];
}

/* numpy's seconds for @key at batch @m, dtype @dt; NAN when absent. */
static double numpy_key(const char *out, size_t m, const char *key, const char *dt)
{
    char pat[32], name[48];
    snprintf(pat, sizeof pat, "{\"m\": %zu,", m);
    const char *line = out ? strstr(out, pat) : NULL;
    if (!line || !key)
        return NAN;
    snprintf(name, sizeof name, "%s_%s", key, dt);
    return json_num(line, name);
}

/* The same for phase @k (numpy has no separate eigh or forming: its
 * inverse_explicit is both, compared as "refresh (both)"). */
static double numpy_phase(const char *out, size_t m, int k, const char *dt)
{
    static const char *const key[NPHASE] = {"factors", NULL, NULL, "apply_explicit",
                                            NULL,      NULL, NULL, NULL};
    return numpy_key(out, m, key[k], dt);
}

/* One column of @width with @prec decimals, "-" when not measured. */
static void cell(double v, int width, int prec)
{
    if (isnan(v))
        printf(" %*s", width, "-");
    else
        printf(" %*.*f", width, prec, v);
}

/* The machine's GEMM rates, float64 and float32 on 1 thread and every core:
 * the best of every sample taken in the run (the machine is shared: a
 * sample taken while other work runs is low). */
static double peaks[2][2];

static void sample_peaks(size_t gs, unsigned cores)
{
    for (int single = 0; single < 2; single++)
        for (int t = 0; t < 2; t++)
            peaks[single][t] = fmax(peaks[single][t], gemm_rate(gs, single, t ? (int)cores : 1));
}

struct result {
    size_t m, bytes;
    int fp32, chol;
    double p1[NPHASE], pn[NPHASE], fl[NPHASE];
};

static void measure(struct result *res, const size_t *w, size_t L, size_t m, int fp32,
                    const curv_executor *pool)
{
    struct net n;
    net_init(&n, w, L, m, fp32);
    res->fp32 = fp32;
    res->chol = n.chol;
    for (int s = 0; s < 3; s++)
        if (step(&n, 1) != CURV_OK || step_opt(&n, n.later, 1) != CURV_OK)
            exit(1);
    res->m = m;
    phase_flops(&n, res->fl);
    time_phases(&n, res->p1);
    curv_error err;
    if (curv_opt_set_executor(n.opt, pool, &err) != CURV_OK ||
        curv_opt_set_executor(n.later, pool, &err) != CURV_OK) {
        fprintf(stderr, "bench_kfac: %s\n", err.text);
        exit(1);
    }
    time_phases(&n, res->pn);
    res->bytes = curv__kfac_est_bytes(curv__kfac_estimator(n.opt)) +
                 curv_layout_dim(n.layout) * sizeof(double);
    net_free(&n);
}

/* The time phase @k would take at the GEMM rate (@t: 0 one thread, 1 every
 * core) of the arithmetic it runs in: float for the forming and the
 * multiplies in fp32, and the factor update's SYRK; double otherwise (the
 * eigendecomposition always). The whole step is factors + multiply. */
static double ideal_s(const struct result *r, int k, int t)
{
    const double d = peaks[0][t] * 1e9, f = peaks[r->fp32][t] * 1e9;
    switch (k) {
    case EIGH:
        return r->fl[k] / d;
    case STEP:
        return ideal_s(r, FACTORS, t) + ideal_s(r, MULTIPLY, t);
    default:
        return r->fl[k] / f;
    }
}

static void print_result(const struct result *r, unsigned cores, const char *np1, const char *npn)
{
    const size_t m = r->m;
    const double *p1 = r->p1, *pn = r->pn, *fl = r->fl;
    const char *dt = r->fp32 ? "f32" : "f64";
    printf("\nbatch m = %zu, precision = %s, refresh by %s (seconds, best of 2 x %d; session "
           "state %.1f MB)\n",
           m, r->fp32 ? "fp32" : "fp64", r->chol ? "Cholesky" : "eigh", REPS,
           (double)r->bytes / 1e6);
    printf("  %-16s %7s %8s %5s %8s %5s %8s %8s %8s %6s %6s\n", "phase", "GFLOP", "lib 1", "%pk",
           "lib N", "%pk", "np1", "npN", "npN f32", "1/np1", "N/npN");
    for (int ph = 0; ph < NPHASE; ph++) {
        if (fl[ph] == 0)
            continue; /* not a phase of this route */
        double a = numpy_phase(np1, m, ph, dt), b = numpy_phase(npn, m, ph, dt);
        double c = numpy_phase(npn, m, ph, "f32");
        if (ph == STEP) {
            a = numpy_phase(np1, m, FACTORS, dt) + numpy_phase(np1, m, MULTIPLY, dt);
            b = numpy_phase(npn, m, FACTORS, dt) + numpy_phase(npn, m, MULTIPLY, dt);
            c = numpy_phase(npn, m, FACTORS, "f32") + numpy_phase(npn, m, MULTIPLY, "f32");
        }
        printf("  %-16s %7.2f %8.4f %4.0f%% %8.4f %4.0f%%", PHASE[ph], fl[ph] / 1e9, p1[ph],
               100 * ideal_s(r, ph, 0) / p1[ph], pn[ph], 100 * ideal_s(r, ph, 1) / pn[ph]);
        cell(a, 8, 4), cell(b, 8, 4), cell(c, 8, 4);
        cell(p1[ph] / a, 6, 2), cell(pn[ph] / b, 6, 2);
        printf("\n");
    }
    /* numpy's refresh (eigh + explicit inverses) against ours. */
    const double r1 = p1[EIGH] + p1[FORM], rn = pn[EIGH] + pn[FORM], f = fl[EIGH] + fl[FORM];
    const double i1 = ideal_s(r, EIGH, 0) + ideal_s(r, FORM, 0);
    const double in = ideal_s(r, EIGH, 1) + ideal_s(r, FORM, 1);
    const double a = numpy_key(np1, m, "inverse_explicit", dt);
    const double b = numpy_key(npn, m, "inverse_explicit", dt);
    printf("  %-16s %7.2f %8.4f %4.0f%% %8.4f %4.0f%%", "refresh (both)", f / 1e9, r1,
           100 * i1 / r1, rn, 100 * in / rn);
    cell(a, 8, 4), cell(b, 8, 4), cell(numpy_key(npn, m, "inverse_explicit", "f32"), 8, 4);
    cell(r1 / a, 6, 2), cell(rn / b, 6, 2);
    printf("\n  amortised (T3 = %d): lib 1 %.4f s, lib %u %.4f s per step\n", T3,
           p1[FACTORS] + r1 / T3 + p1[MULTIPLY], cores, pn[FACTORS] + rn / T3 + pn[MULTIPLY]);
}

/* ---- sessions at once on the daemon's pool ------------------------------------ */

#define SESSIONS 8
#define SESSION_STEPS 6 /* steps 4 .. 9: factors and multiply, no refresh */

struct session_job {
    struct curvd_pool_job job;
    struct net *n;
};

static pthread_mutex_t left_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t left_cv = PTHREAD_COND_INITIALIZER;
static int left; /* sessions still stepping */

static void session_run(struct curvd_pool_job *job)
{
    struct session_job *s = (struct session_job *)(void *)job;
    for (int k = 0; k < SESSION_STEPS; k++)
        if (step(s->n, 1) != CURV_OK)
            exit(1);
    pthread_mutex_lock(&left_mu);
    if (--left == 0)
        pthread_cond_signal(&left_cv);
    pthread_mutex_unlock(&left_mu);
}

/* Seconds for the @count sessions @nets to take SESSION_STEPS steps each,
 * all queued at once on a pool of @threads (0: one session stepped here,
 * serially). Each optimizer gets the pool as curvd lends it
 * (session/service.c: no more slots than blocks). */
static double run_sessions(struct net *nets, int count, unsigned threads, double *helped)
{
    *helped = 0;
    if (!threads) {
        double t0 = now_s();
        left = 1;
        struct session_job s = {.n = &nets[0]};
        session_run(&s.job);
        return now_s() - t0;
    }
    char err[128];
    struct curvd_pool *p = curvd_pool_new(threads, err, sizeof err);
    if (!p) {
        fprintf(stderr, "bench_kfac: %s\n", err);
        exit(1);
    }
    curv_executor ex = *curvd_pool_executor(p);
    struct session_job jobs[SESSIONS];
    for (int i = 0; i < count; i++) {
        curv_executor mine = ex;
        if (mine.workers > nets[i].L)
            mine.workers = (unsigned)nets[i].L;
        if (curv_opt_set_executor(nets[i].opt, &mine, NULL) != CURV_OK)
            exit(1);
        jobs[i] = (struct session_job){.job = {.run = session_run}, .n = &nets[i]};
    }
    left = count;
    double t0 = now_s();
    for (int i = 0; i < count; i++)
        curvd_pool_submit(p, &jobs[i].job);
    pthread_mutex_lock(&left_mu);
    while (left)
        pthread_cond_wait(&left_cv, &left_mu);
    pthread_mutex_unlock(&left_mu);
    double t = now_s() - t0;
    struct curvd_pool_stats st;
    curvd_pool_stats(p, &st);
    *helped = st.tasks ? (double)st.helped / (double)st.tasks : 0;
    curvd_pool_free(p);
    for (int i = 0; i < count; i++)
        curv_opt_set_executor(nets[i].opt, NULL, NULL); /* the pool is gone */
    return t;
}

/* @count copies of @base's optimizer (its state after warm-up), sharing
 * its inputs. */
static void clone_sessions(const struct net *base, const unsigned char *blob, size_t len,
                           struct net *out, int count)
{
    for (int i = 0; i < count; i++) {
        out[i] = *base;
        curv_error err;
        if (curv_opt_load(blob, len, &out[i].opt, &err) != CURV_OK) {
            fprintf(stderr, "bench_kfac: load: %s\n", err.text);
            exit(1);
        }
    }
}

static void free_clones(struct net *nets, int count)
{
    for (int i = 0; i < count; i++)
        curv_opt_free(nets[i].opt);
}

static void bench_sessions(const size_t *w, size_t L, size_t m, size_t gs, unsigned cores)
{
    struct net base;
    /* fp32, the default precision, named so that %pk is of its GEMM rate. */
    net_init_cov(&base, w, L, m, 1, "fp32");
    for (int s = 0; s < 3; s++) /* k <= 3 refresh: the state every clone starts from */
        if (step(&base, 1) != CURV_OK)
            exit(1);
    unsigned char *blob;
    size_t len;
    if (curv_opt_save(base.opt, &blob, &len, NULL) != CURV_OK)
        exit(1);
    double fl[NPHASE];
    phase_flops(&base, fl);
    const double f = fl[STEP] * SESSION_STEPS; /* per session */
    static struct net nets[SESSIONS];
    const int count[3] = {1, 1, SESSIONS};
    const unsigned threads[3] = {0, cores, cores};
    double t[3] = {INFINITY, INFINITY, INFINITY}, helped[3] = {0};
    for (int r = 0; r < 2; r++) /* best of 2 of each: the machine is shared */
        for (int k = 0; k < 3; k++) {
            sample_peaks(gs, cores);
            clone_sessions(&base, blob, len, nets, count[k]);
            double h, tk = run_sessions(nets, count[k], threads[k], &h);
            if (tk < t[k])
                t[k] = tk, helped[k] = h;
            free_clones(nets, count[k]);
        }
    curv_free(blob);
    net_free(&base);
    printf("\nsessions at once on the daemon's worker pool (server/http/pool.c), m = %zu, "
           "%d steps each between refreshes (factors + two-GEMM multiply, %.2f GFLOP a step), "
           "best of 2; precision fp32 (the default); GEMM float32 %.1f GFLOP/s on 1 thread, %.1f "
           "on %u\n",
           m, SESSION_STEPS, fl[STEP] / 1e9, peaks[1][0], peaks[1][1], cores);
    printf("  %-34s %8s %9s %8s %6s %8s %7s\n", "run", "seconds", "s / step", "GFLOP/s", "%pk",
           "vs lone", "helped");
    char name[3][64];
    snprintf(name[0], sizeof name[0], "1 session, serial (1 thread)");
    snprintf(name[1], sizeof name[1], "1 session, pool of %u", cores);
    snprintf(name[2], sizeof name[2], "%d sessions at once, pool of %u", SESSIONS, cores);
    const double pk[3] = {peaks[1][0], peaks[1][1], peaks[1][1]};
    for (int k = 0; k < 3; k++) {
        double rate = f * count[k] / t[k] / 1e9;
        printf("  %-34s %8.3f %9.4f %8.1f %5.0f%% %7.2fx %6.0f%%\n", name[k], t[k],
               t[k] / (SESSION_STEPS * count[k]), rate, 100 * rate / pk[k], t[0] * count[k] / t[k],
               100 * helped[k]);
    }
    printf("  s / step: wall time over all steps taken (the aggregate rate's inverse); vs "
           "lone: throughput over the lone serial session's; %%pk: of the GEMM rate on as many "
           "threads as the run uses; helped: the share of the steps' per-layer tasks that a "
           "worker ran for another's step\n");
}

int main(int argc, char **argv)
{
    int quick = 0, sessions_only = 0, only_first = 0, numpy = 1, sessions = 1;
    static const curv_allocator daemon_alloc = {curvd_mem_alloc, curvd_mem_realloc, curvd_mem_free};
    mallopt(M_MMAP_THRESHOLD, 1 << 30); /* as curvd does */
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    curv_set_allocator(&daemon_alloc);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--sessions") == 0) {
            sessions_only = 1;
        } else if (strcmp(argv[i], "--m1000") == 0) {
            only_first = 1;
        } else if (strcmp(argv[i], "--no-numpy") == 0) {
            numpy = 0;
        } else if (strcmp(argv[i], "--no-sessions") == 0) {
            sessions = 0;
        } else if (strcmp(argv[i], "--eigen") == 0) {
            route = "eigen";
        } else {
            fprintf(stderr, "usage: bench_kfac [--quick] [--sessions] [--m1000] [--no-numpy] "
                            "[--no-sessions] [--eigen]\n");
            return 2;
        }
    }
    const int nres = only_first ? 2 : 4;
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned cores = nc > 1 ? (unsigned)(nc < 64 ? nc : 64) : 1;
    openblas_set_num_threads(1);
    const size_t *w = quick ? QUICK : AUTOENCODER;
    const size_t L = (quick ? sizeof QUICK : sizeof AUTOENCODER) / sizeof(size_t) - 1;
    const size_t ms[2] = {quick ? 50 : 1000, quick ? 100 : 5000};
    const size_t gs = quick ? 256 : 1000;
    printf("bench_kfac: %zu dense layers", L);
    for (size_t i = 0; i <= L; i++)
        printf("%s%zu", i ? "-" : " ", w[i]);
    printf(", biases; %u cores; T3 = %d; simple mode; the phases at damping %g\n", cores, T3,
           GAMMA);
    sample_peaks(gs, cores);
    if (sessions_only) {
        bench_sessions(w, L, ms[0], gs, cores);
        return 0;
    }

    const char *np1 = NULL, *npn = NULL;
    if (!numpy) {
        printf("numpy reference: not run (--no-numpy)\n");
    } else if (access(NUMPY, X_OK) == 0 && access(SCRIPT, R_OK) == 0) {
        np1 = run_numpy(0, 1, ms[0], ms[1], quick);
        npn = cores > 1 ? run_numpy(1, (int)cores, ms[0], ms[1], quick) : np1;
    } else {
        printf("numpy reference: skipped (%s or %s not found; run from the repository root)\n",
               NUMPY, SCRIPT);
    }
    unsigned workers = cores;
    const curv_executor pool = {.workers = workers, .run = tu_pool_run, .ctx = &workers};
    /* Two rounds, fp64 and fp32 alternating, each phase's best kept: on a
     * shared machine the load changes within a run, and this way both
     * precisions see the same spells of it. */
    struct result res[4], r;
    for (int round = 0; round < 2; round++)
        for (int k = 0; k < nres; k++) {
            sample_peaks(gs, cores);
            measure(round ? &r : &res[k], w, L, ms[k / 2], k % 2, &pool);
            for (int ph = 0; round && ph < NPHASE; ph++) {
                res[k].p1[ph] = fmin(res[k].p1[ph], r.p1[ph]);
                res[k].pn[ph] = fmin(res[k].pn[ph], r.pn[ph]);
            }
        }
    sample_peaks(gs, cores);
    printf("GEMM rate (n = %zu, GFLOP/s, the best of the samples of best-of-5 spread over the "
           "run): float64 %.1f on 1 thread, %.1f on %u; float32 %.1f, %.1f\n",
           gs, peaks[0][0], peaks[0][1], cores, peaks[1][0], peaks[1][1]);
    if (np1 && npn)
        printf("numpy's GEMM rate in its own runs (GFLOP/s): float64 %.1f on 1 thread, %.1f on "
               "%u; float32 %.1f, %.1f\n",
               json_num(np1, "gemm_f64"), json_num(npn, "gemm_f64"), cores,
               json_num(np1, "gemm_f32"), json_num(npn, "gemm_f32"));
    printf(
        "lib 1: one thread; lib %u: %u workers lent through curv_executor, BLAS on 1 thread "
        "in each; %%pk: GFLOP/s as a share of the GEMM rate on as many threads in the "
        "arithmetic the phase runs in (fp32: float for the factor update, the forming and the "
        "multiplies, double for the refresh); np1, npN: numpy with explicit inverses on 1 and %u "
        "threads at the table's precision; 1/np1, N/npN: libcurv / numpy at the same "
        "precision and thread count\n",
        cores, cores, cores);
    for (int k = 0; k < nres; k++)
        print_result(&res[k], cores, np1, npn);
    if (sessions)
        bench_sessions(w, L, ms[0], gs, cores);
    return 0;
}
