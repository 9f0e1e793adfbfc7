/* SPDX-License-Identifier: MIT */
/*
 * bench_kfac_tri - the K-FAC block-tridiagonal inverse (lib/src/kfac_tri.c)
 * on the thesis' MNIST deep autoencoder chain (784-1000-500-250-30-250-500-
 * 1000-784, dense with biases): seconds per curv__kfac_tri_build and per
 * curv__kfac_tri_apply, next to numpy doing the same math in the same run
 * (tests/bench/kfac_numpy.py --only tri), and the ratios library / numpy.
 * Factors come from m = 1000 random cases (consistent estimates, as K-FAC
 * makes them), damped as ALGORITHMS.md §3.3. OpenBLAS runs on one thread
 * unless OPENBLAS_NUM_THREADS is set; numpy is given the same count.
 * Usage: bench_kfac_tri [--quick]   (--quick: a tiny chain, a smoke run)
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kfac_tri.h"

#define M_CASES 1000
#define GAMMA 0.1 /* as kfac_numpy.py */
#define BUILD_REPS 3
#define APPLY_REPS 5
#define MIN_REP_S 0.2 /* an apply repetition lasts at least this long */
#define NUMPY "/usr/bin/python3"
#define SCRIPT "tests/bench/kfac_numpy.py"
#define LMAX 8

static const size_t AUTOENCODER[] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
static const size_t QUICK[] = {10, 8, 6, 4, 6, 8, 10};

struct chain {
    size_t L, n_out[LMAX], n_in[LMAX];
    double *Ad[LMAX], *Gd[LMAX], *Ax[LMAX], *Gx[LMAX], *V[LMAX], *X[LMAX];
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double *alloc_or_die(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof(double));
    if (!p) {
        fprintf(stderr, "bench_kfac_tri: out of memory\n");
        exit(1);
    }
    return p;
}

/* Normal deviates from splitmix64 and Box-Muller. */
static uint64_t rng_state = 1;
static double normal(void)
{
    double u[2];
    for (int k = 0; k < 2; k++) {
        uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        u[k] = (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
    }
    return sqrt(-2.0 * log(1.0 - u[0])) * cos(6.283185307179586 * u[1]);
}

/* out = X^T Y / M_CASES for X of M_CASES x a and Y of M_CASES x b. */
static double *moment(const double *X, size_t a, const double *Y, size_t b)
{
    double *out = alloc_or_die(a * b);
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)a, (int)b, M_CASES, 1.0 / M_CASES, X,
                (int)a, Y, (int)b, 0.0, out, (int)b);
    return out;
}

/* Factors from one set of random cases (ā with its homogeneous 1), damped
 * with the trace-norm π (ALGORITHMS.md §3.3), and one random gradient. */
static void make_chain(const size_t *widths, size_t L, struct chain *c)
{
    double *abar[LMAX], *g[LMAX];
    c->L = L;
    for (size_t i = 0; i < L; i++) {
        c->n_out[i] = widths[i + 1];
        c->n_in[i] = widths[i] + 1;
        abar[i] = alloc_or_die(M_CASES * c->n_in[i]);
        g[i] = alloc_or_die(M_CASES * c->n_out[i]);
        for (size_t k = 0; k < M_CASES; k++) {
            for (size_t u = 0; u < widths[i]; u++)
                abar[i][k * c->n_in[i] + u] = normal();
            abar[i][k * c->n_in[i] + widths[i]] = 1.0;
            for (size_t r = 0; r < c->n_out[i]; r++)
                g[i][k * c->n_out[i] + r] = normal();
        }
    }
    for (size_t i = 0; i < L; i++) {
        size_t ni = c->n_in[i], no = c->n_out[i];
        c->Ad[i] = moment(abar[i], ni, abar[i], ni);
        c->Gd[i] = moment(g[i], no, g[i], no);
        double ta = 0, tg = 0;
        for (size_t k = 0; k < ni; k++)
            ta += c->Ad[i][k * ni + k];
        for (size_t k = 0; k < no; k++)
            tg += c->Gd[i][k * no + k];
        double pi = sqrt((ta / (double)ni) / (tg / (double)no));
        for (size_t k = 0; k < ni; k++)
            c->Ad[i][k * ni + k] += pi * GAMMA;
        for (size_t k = 0; k < no; k++)
            c->Gd[i][k * no + k] += GAMMA / pi;
        c->Ax[i] = i + 1 < L ? moment(abar[i], ni, abar[i + 1], c->n_in[i + 1]) : NULL;
        c->Gx[i] = i + 1 < L ? moment(g[i], no, g[i + 1], c->n_out[i + 1]) : NULL;
        c->V[i] = alloc_or_die(no * ni);
        c->X[i] = alloc_or_die(no * ni);
        for (size_t k = 0; k < no * ni; k++)
            c->V[i][k] = normal();
    }
    for (size_t i = 0; i < L; i++) {
        free(abar[i]);
        free(g[i]);
    }
}

static void free_chain(struct chain *c)
{
    for (size_t i = 0; i < c->L; i++) {
        free(c->Ad[i]), free(c->Gd[i]), free(c->Ax[i]), free(c->Gx[i]);
        free(c->V[i]), free(c->X[i]);
    }
}

static struct curv__kfac_tri *build(const struct chain *c, size_t *clamped)
{
    struct curv__kfac_tri *t = NULL;
    curv_error err;
    curv_status st = curv__kfac_tri_build(
        c->L, c->n_out, c->n_in, (const double *const *)c->Ad, (const double *const *)c->Gd,
        (const double *const *)c->Ax, (const double *const *)c->Gx, &t, clamped, &err);
    if (st != CURV_OK) {
        fprintf(stderr, "bench_kfac_tri: build failed: %s\n", err.text);
        exit(1);
    }
    return t;
}

/* Best of BUILD_REPS builds, in seconds. */
static double time_build(const struct chain *c)
{
    double best = INFINITY;
    for (int r = 0; r < BUILD_REPS; r++) {
        double t0 = now_s();
        struct curv__kfac_tri *t = build(c, NULL);
        double dt = now_s() - t0;
        curv__kfac_tri_free(t);
        best = fmin(best, dt);
    }
    return best;
}

/* Best of APPLY_REPS repetitions of >= MIN_REP_S, in seconds per apply. */
static double time_apply(const struct chain *c, const struct curv__kfac_tri *t)
{
    double best = INFINITY;
    for (int r = 0; r < APPLY_REPS; r++) {
        long n = 0;
        double t0 = now_s(), dt;
        do {
            curv__kfac_tri_apply(t, (const double *const *)c->V, c->X);
            n++;
            dt = now_s() - t0;
        } while (dt < MIN_REP_S);
        best = fmin(best, dt / (double)n);
    }
    return best;
}

/* The number after "@key": in @s, or NAN. */
static double json_num(const char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(s, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* Run the numpy reference; fills its inverse_tri and apply_tri seconds and
 * threads, or returns 0 after printing why it could not. */
static int run_numpy(int quick, int threads, double *inv, double *app, double *np_threads)
{
    if (access(NUMPY, X_OK) != 0 || access(SCRIPT, R_OK) != 0) {
        printf("numpy reference: skipped (%s or %s not found; run from the repository root)\n",
               NUMPY, SCRIPT);
        return 0;
    }
    char cmd[256], out[8192];
    snprintf(cmd, sizeof cmd, "%s %s --only tri --m %d --threads %d%s", NUMPY, SCRIPT, M_CASES,
             threads, quick ? " --quick" : "");
    FILE *f = popen(cmd, "r");
    if (!f) {
        printf("numpy reference: skipped (cannot run %s)\n", NUMPY);
        return 0;
    }
    size_t n = fread(out, 1, sizeof out - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    *inv = json_num(out, "inverse_tri");
    *app = json_num(out, "apply_tri");
    *np_threads = json_num(out, "threads");
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !(*inv > 0) || !(*app > 0)) {
        printf("numpy reference: skipped (%s)\n", n ? strtok(out, "\n") : "no output");
        return 0;
    }
    return 1;
}

static void print_row(const char *phase, double lib, double ref, int have)
{
    if (have)
        printf("%-8s %12.4g %12.4g %14.2f\n", phase, lib, ref, lib / ref);
    else
        printf("%-8s %12.4g %12s %14s\n", phase, lib, "-", "-");
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (argc > 2 || (argc == 2 && !quick)) {
        fprintf(stderr, "usage: %s [--quick]\n", argv[0]);
        return 2;
    }
    if (!getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(1);
    int threads = openblas_get_num_threads();
    const size_t *widths = quick ? QUICK : AUTOENCODER;
    size_t L =
        (quick ? sizeof QUICK / sizeof QUICK[0] : sizeof AUTOENCODER / sizeof AUTOENCODER[0]) - 1;
    struct chain c;
    make_chain(widths, L, &c);
    printf("bench_kfac_tri: %zu-layer chain", L);
    for (size_t i = 0; i <= L; i++)
        printf("%s%zu", i ? "-" : " ", widths[i]);
    printf(", biases, factors from m = %d cases; OpenBLAS threads %d\n", M_CASES, threads);

    size_t clamped = 0;
    struct curv__kfac_tri *t = build(&c, &clamped);
    double tb = time_build(&c), ta = time_apply(&c, t);
    printf("state %.1f MB, %zu clamped denominators\n", (double)curv__kfac_tri_bytes(t) / 1e6,
           clamped);
    double nb = NAN, na = NAN, nt = NAN;
    int have = run_numpy(quick, threads, &nb, &na, &nt);
    if (have)
        printf("numpy reference: %s --only tri, numpy threads %.0f\n", SCRIPT, nt);
    printf("\n%-8s %12s %12s %14s\n", "phase", "libcurv s", "numpy s", "libcurv/numpy");
    print_row("build", tb, nb, have);
    print_row("apply", ta, na, have);
    printf("(libcurv: best of %d builds, of %d repetitions of >= %.1f s of applies; numpy: best of "
           "its --reps)\n",
           BUILD_REPS, APPLY_REPS, MIN_REP_S);
    curv__kfac_tri_free(t);
    free_chain(&c);
    return 0;
}
