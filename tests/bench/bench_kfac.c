/* SPDX-License-Identifier: MIT */
/*
 * bench_kfac - K-FAC (block-diagonal) on the thesis' MNIST deep autoencoder
 * (784-1000-500-250-30 encoder, mirrored decoder, 8 dense layers with
 * biases) at batch sizes 1000 and 5000: seconds for the factor update, the
 * inversion (eigendecompositions) and the preconditioning multiply, per
 * step and amortised over inv_interval = 20 steps, a whole simple-mode
 * step through the public API, and the state a session holds; next to
 * numpy doing the same math in the same run (tests/bench/kfac_numpy.py
 * --only diag) with the ratios library / numpy. OpenBLAS runs on one
 * thread unless OPENBLAS_NUM_THREADS is set; numpy gets the same count.
 * Usage: bench_kfac [--quick]   (--quick: a tiny network, a smoke run)
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kfac_int.h"

#define T3 20
#define REPS 3
#define NUMPY "/usr/bin/python3"
#define SCRIPT "tests/bench/kfac_numpy.py"

static const size_t AUTOENCODER[] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
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
    double *g, *theta, *u;
    double *acts[8], *sig[8];
    curv_layer_stats stats[8];
};

static void net_init(struct net *n, const size_t *w, size_t L, size_t m)
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
        n->stats[i] = (curv_layer_stats){
            .block = i, .rows = m, .examples = m, .acts = n->acts[i], .signals = n->sig[i]};
    }
    curv_config *c = curv_config_new();
    curv_config_set_str(c, "mode", "simple", NULL);
    curv_config_set_num(c, "inv_interval", T3, NULL);
    curv_config_set_num(c, "weight_decay", 0, NULL);
    curv_error err;
    if (curv_opt_new(CURV_OPT_KFAC, n->layout, c, &n->opt, &err) != CURV_OK) {
        fprintf(stderr, "bench_kfac: %s\n", err.text);
        exit(1);
    }
    curv_config_free(c);
}

static void net_free(struct net *n)
{
    for (size_t i = 0; i < n->L; i++)
        free(n->acts[i]), free(n->sig[i]);
    free(n->g), free(n->theta), free(n->u);
    curv_opt_free(n->opt);
    curv_layout_free(n->layout);
}

static curv_status step(struct net *n, int with_stats)
{
    curv_step_input in = {.grad = n->g,
                          .len = curv_layout_dim(n->layout),
                          .dtype = CURV_F64,
                          .layers = with_stats ? n->stats : NULL,
                          .n_layers = with_stats ? n->L : 0};
    curv_request req;
    curv_error err;
    curv_status st = curv_opt_step(n->opt, &in, n->u, &req, &err);
    if (st != CURV_OK)
        fprintf(stderr, "bench_kfac: step: %s\n", err.text);
    return st;
}

struct phases {
    double factors, inverse, apply, step;
};

/* Best of REPS of each phase, on the blocks of a warmed-up optimizer
 * (3 steps: factors and inverses exist). Tentative results are dropped. */
static void time_phases(struct net *n, struct phases *p)
{
    for (int k = 0; k < 3; k++)
        if (step(n, 1) != CURV_OK)
            exit(1);
    struct curv__kfac_est *e = (struct curv__kfac_est *)curv__kfac_estimator(n->opt);
    struct curv__layer_in li[8];
    p->factors = p->inverse = p->apply = p->step = INFINITY;
    for (int r = 0; r < REPS; r++) {
        for (size_t i = 0; i < n->L; i++)
            li[i] = (struct curv__layer_in){.block = i,
                                            .rows = n->m,
                                            .examples = n->m,
                                            .acts = n->acts[i],
                                            .signals = n->sig[i]};
        double t0 = now_s();
        for (size_t i = 0; i < n->L; i++) {
            struct curv__kblock *b = (struct curv__kblock *)curv__kfac_est_block(e, i);
            b->vt->stats(b, &li[i], 0.95, NULL);
        }
        double t1 = now_s();
        for (size_t i = 0; i < n->L; i++) {
            struct curv__kblock *b = (struct curv__kblock *)curv__kfac_est_block(e, i);
            b->vt->refresh(b, NULL);
        }
        double t2 = now_s();
        curv__kfac_est_apply(e, 0, 0.1, n->g, n->u);
        double t3 = now_s();
        curv__kfac_est_abort(e);
        p->factors = fmin(p->factors, t1 - t0);
        p->inverse = fmin(p->inverse, t2 - t1);
        p->apply = fmin(p->apply, t3 - t2);
        /* A whole step between refreshes (k = 4, 5, ...): factors + apply. */
        double t4 = now_s();
        step(n, 1);
        p->step = fmin(p->step, now_s() - t4);
    }
}

static double json_num(const char *s, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *q = strstr(s, pat);
    return q ? strtod(q + strlen(pat), NULL) : NAN;
}

/* numpy's phases for batch @m, or 0 when it could not run. */
static int run_numpy(const char *out, size_t m, struct phases *np)
{
    char pat[32];
    snprintf(pat, sizeof pat, "{\"m\": %zu,", m);
    const char *line = strstr(out, pat);
    if (!line)
        return 0;
    np->factors = json_num(line, "factors");
    np->inverse = json_num(line, "inverse_diag");
    np->apply = json_num(line, "apply_diag");
    return np->factors > 0 && np->inverse > 0 && np->apply > 0;
}

static void row(const char *what, double lib, double ref, int have)
{
    if (have)
        printf("  %-22s %10.4f %10.4f %8.2f\n", what, lib, ref, lib / ref);
    else
        printf("  %-22s %10.4f %10s %8s\n", what, lib, "-", "-");
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (!getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(1);
    const int threads = openblas_get_num_threads();
    const size_t *w = quick ? QUICK : AUTOENCODER;
    const size_t L = (quick ? sizeof QUICK : sizeof AUTOENCODER) / sizeof(size_t) - 1;
    const size_t ms[2] = {quick ? 50 : 1000, quick ? 100 : 5000};
    printf("bench_kfac: %zu dense layers", L);
    for (size_t i = 0; i <= L; i++)
        printf("%s%zu", i ? "-" : " ", w[i]);
    printf(", biases; OpenBLAS threads %d; T3 = %d\n", threads, T3);

    static char out[16384];
    int have_np = 0;
    if (access(NUMPY, X_OK) == 0 && access(SCRIPT, R_OK) == 0) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%s %s --only diag --m %zu %zu --threads %d%s", NUMPY, SCRIPT,
                 ms[0], ms[1], threads, quick ? " --quick" : "");
        FILE *f = popen(cmd, "r");
        size_t n = f ? fread(out, 1, sizeof out - 1, f) : 0;
        out[n] = '\0';
        int st = f ? pclose(f) : -1;
        have_np = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0;
        if (!have_np)
            printf("numpy reference: skipped (%s)\n", n ? strtok(out, "\n") : "did not run");
    } else {
        printf("numpy reference: skipped (%s or %s not found; run from the repository root)\n",
               NUMPY, SCRIPT);
    }
    for (int k = 0; k < 2; k++) {
        struct net n;
        net_init(&n, w, L, ms[k]);
        struct phases p, np = {0};
        time_phases(&n, &p);
        int have = have_np && run_numpy(out, ms[k], &np);
        size_t bytes = curv__kfac_est_bytes(curv__kfac_estimator(n.opt)) +
                       curv_layout_dim(n.layout) * sizeof(double);
        printf("\nbatch m = %zu (seconds, best of %d; session state %.1f MB)\n", ms[k], REPS,
               (double)bytes / 1e6);
        printf("  %-22s %10s %10s %8s\n", "phase", "libcurv", "numpy", "ratio");
        row("factor update", p.factors, np.factors, have);
        row("inversion (eigh)", p.inverse, np.inverse, have);
        row("precondition multiply", p.apply, np.apply, have);
        row("per step, refreshing", p.factors + p.inverse + p.apply,
            np.factors + np.inverse + np.apply, have);
        row("amortised (T3 = 20)", p.factors + p.inverse / T3 + p.apply,
            np.factors + np.inverse / T3 + np.apply, have);
        printf("  %-22s %10.4f   (curv_opt_step, simple mode, no refresh)\n", "whole step", p.step);
        net_free(&n);
    }
    return 0;
}
