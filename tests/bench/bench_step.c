/* SPDX-License-Identifier: MIT */
/*
 * bench_step - the cost of one optimizer step in ns per parameter, next to a
 * bandwidth baseline taken in the same run over the same vectors: axpy,
 * y = a*x + y over d doubles (24 bytes per parameter), so that the ratios
 * are machine-independent. Method and reading: tests/bench/README.md.
 * OpenBLAS runs on one thread unless OPENBLAS_NUM_THREADS is set.
 * Usage: bench_step [--quick]   (--quick: d = 1e4 and 1e5 only)
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curv.h"

#if defined(__GNUC__)
#define NOINLINE __attribute__((noinline))
#else
#define NOINLINE
#endif

#define NGRAD 64             /* distinct gradients cycled through */
#define GSTRIDE 8            /* shift between them, in doubles (64 bytes) */
#define REPS 5               /* repetitions; 3 when a batch outlasts MIN_REP_S */
#define MIN_REP_S 0.2        /* seconds per repetition, at least ... */
#define MAX_REP_STEPS 100000 /* ... or this many steps */
#define WARM_STEPS 2         /* warm-up: at least this many steps ... */
#define WARM_S 0.05          /* ... and this long */
#define LONG_REP_S 5.0       /* one repetition only when it would take longer */
#define CHECK_S 1e-3         /* read the clock about this often */
#define STATE_MAX_GB 8.0     /* skip configurations whose state is larger */
#define AXPY_BYTES 24.0      /* bytes moved per parameter by the baseline */
#define ND 4
#define NL 3
#define L_OTHERS 1 /* index in LS of the L used by kinds that ignore it */

static const size_t DS[ND] = {10000, 100000, 1000000, 10000000};
static const size_t LS[NL] = {2, 20, 200};
static const size_t FULL_DS[] = {250, 500, 1000, 2000};

struct setting {
    const char *key;
    double num;
    const char *str; /* non-NULL: a string setting */
};

/* Settings are applied when the kind declares the key; resolved values of
 * SHOW_KEYS are printed with each row, so a missing key is visible. */
struct spec {
    const char *label;
    curv_opt_kind kind;
    struct setting set[2];
    int sweep_L;
};

static const struct spec SPECS[] = {
    {"sgd", CURV_OPT_SGD, {{"momentum", 0.9, NULL}, {NULL, 0, NULL}}, 0},
    {"adagrad_diag", CURV_OPT_ADAGRAD_DIAG, {{NULL, 0, NULL}, {NULL, 0, NULL}}, 0},
    {"adagrad_bma", CURV_OPT_ADAGRAD_BMA, {{"partition", 0, "block"}, {NULL, 0, NULL}}, 1},
    {"mbag", CURV_OPT_MBAG, {{"tau", 32, NULL}, {"t_sqr", 50, NULL}}, 0},
    {"mbag_n", CURV_OPT_MBAG_N, {{"tau", 32, NULL}, {"t_sqr", 50, NULL}}, 0},
};
enum { S_SGD, S_DIAG, S_BMA, S_MBAG, S_MBAG_N, NSPEC };
static const char *const SHOW_KEYS[] = {"momentum", "tau", "t_sqr"};

/* Seconds per step, 0 where not measured. */
static double g_axpy[ND];
static double g_opt[NSPEC][NL][ND];
static double g_full[sizeof FULL_DS / sizeof FULL_DS[0]];
static volatile double g_sink;

struct timing {
    double med, lo, hi; /* seconds per step */
    uint64_t warm;      /* warm-up steps */
    uint64_t steps;     /* timed steps over all repetitions */
};

/* A step of whatever is measured; returns 0, or -1 after printing why not. */
typedef int (*step_fn)(void *ctx, uint64_t s);

static void die(const char *what, curv_status st, const curv_error *e)
{
    fprintf(stderr, "bench_step: %s failed: %s: %s\n", what, curv_status_name(st),
            e && e->text[0] ? e->text : curv_strerror(st));
    exit(1);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Repetitions run whole multiples of @period consecutive steps, so that work
 * done every period-th step (mbag's square-root refresh) is amortized exactly. */
static int measure(step_fn fn, void *ctx, uint64_t period, struct timing *out)
{
    uint64_t s = 0;
    double t0 = now_s();
    while (s < WARM_STEPS || now_s() - t0 < WARM_S)
        if (fn(ctx, s++))
            return -1;
    double per = (now_s() - t0) / (double)s, rep[REPS];
    uint64_t batch = per < CHECK_S ? (uint64_t)(CHECK_S / per) : 1;
    batch = (batch + period - 1) / period * period;
    double est = per * (double)batch; /* seconds per batch, refreshes not counted */
    int reps = est > LONG_REP_S ? 1 : est > MIN_REP_S ? 3 : REPS;
    out->warm = s;
    out->steps = 0;
    for (int r = 0; r < reps; r++) {
        uint64_t n = 0;
        double t1 = now_s(), el;
        do {
            for (uint64_t k = 0; k < batch; k++)
                if (fn(ctx, s++))
                    return -1;
            n += batch;
            el = now_s() - t1;
        } while (el < MIN_REP_S && n < MAX_REP_STEPS);
        rep[r] = el / (double)n;
        out->steps += n;
    }
    for (int i = 1; i < reps; i++) /* insertion sort */
        for (int j = i; j > 0 && rep[j - 1] > rep[j]; j--) {
            double x = rep[j];
            rep[j] = rep[j - 1], rep[j - 1] = x;
        }
    out->lo = rep[0];
    out->med = rep[reps / 2];
    out->hi = rep[reps - 1];
    return 0;
}

/* ---- what is measured ------------------------------------------------- */

struct bufs {
    size_t d;
    double *gpool; /* d + NGRAD * GSTRIDE random doubles */
    double *upd;   /* d doubles: the update, and y of axpy */
};

static const double *grad_at(const struct bufs *b, uint64_t s)
{
    return b->gpool + (s % NGRAD) * GSTRIDE;
}

/* Out of line: inlined into the timing loop, GCC 12 lost the restrict and
 * took a scalar path, 4x slower from L1/L2. */
static NOINLINE void axpy(size_t n, double a, const double *restrict x, double *restrict y)
{
    for (size_t i = 0; i < n; i++)
        y[i] = a * x[i] + y[i];
}

static int axpy_step(void *ctx, uint64_t s)
{
    const struct bufs *b = ctx;
    axpy(b->d, 1e-3, grad_at(b, s), b->upd);
    return 0;
}

struct opt_ctx {
    curv_opt *o;
    const struct bufs *b;
};

static int opt_step(void *ctx, uint64_t s)
{
    const struct opt_ctx *c = ctx;
    curv_step_input in = {
        .grad = grad_at(c->b, s), .len = curv_layout_dim(curv_opt_layout(c->o)), .dtype = CURV_F64};
    curv_request req;
    curv_error e;
    e.text[0] = '\0';
    curv_status st = curv_opt_step(c->o, &in, c->b->upd, &req, &e);
    if (st == CURV_NEED_INPUT) {
        printf("%-13s unavailable: the step asks the trainer for input (request kind %d)\n",
               curv_opt_kind_name(curv_opt_kind_of(c->o)), (int)req.kind);
        return -1;
    }
    if (st != CURV_OK)
        die("curv_opt_step", st, &e);
    return 0;
}

static void alloc_bufs(struct bufs *b, size_t d)
{
    size_t n = d + NGRAD * GSTRIDE;
    b->d = d;
    /* Cache-line aligned; GSTRIDE keeps every gradient window aligned too. */
    b->gpool = aligned_alloc(64, (n * sizeof(double) + 63) / 64 * 64);
    b->upd = aligned_alloc(64, (d * sizeof(double) + 63) / 64 * 64);
    if (!b->gpool || !b->upd)
        die("allocating the vectors", CURV_E_NOMEM, NULL);
    memset(b->upd, 0, d * sizeof(double));
    uint64_t x = 0x9e3779b97f4a7c15u ^ d; /* xorshift64*, uniform in [-1, 1) */
    for (size_t i = 0; i < n; i++) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        b->gpool[i] = (double)((x * 0x2545f4914f6cdd1du) >> 11) * 0x1p-52 - 1.0;
    }
}

static void free_bufs(struct bufs *b)
{
    g_sink = b->upd[0] + b->upd[b->d - 1];
    free(b->gpool);
    free(b->upd);
}

/* ---- optimizers -------------------------------------------------------- */

static curv_layout *make_layout(size_t d, size_t L)
{
    curv_layout *l = curv_layout_new();
    if (!l)
        die("curv_layout_new", CURV_E_NOMEM, NULL);
    for (size_t i = 0; i < L; i++) {
        char name[32];
        curv_error e;
        snprintf(name, sizeof name, "b%zu", i);
        curv_status st = curv_layout_add_vector(l, name, d / L + (i < d % L), &e);
        if (st != CURV_OK)
            die("curv_layout_add_vector", st, &e);
    }
    return l;
}

static int find_param(curv_opt_kind k, const char *name, curv_param_info *out)
{
    for (size_t i = 0; curv_opt_param_info(k, i, out) == CURV_OK; i++)
        if (strcmp(out->name, name) == 0)
            return 1;
    return 0;
}

/* Build the config of @sp; *tau is its group size τ (0 for kinds without one). */
static curv_config *make_config(const struct spec *sp, double *tau)
{
    curv_config *c = curv_config_new();
    if (!c)
        die("curv_config_new", CURV_E_NOMEM, NULL);
    curv_param_info pi;
    *tau = find_param(sp->kind, "tau", &pi) ? pi.def : 0;
    for (int i = 0; i < 2 && sp->set[i].key; i++) {
        const struct setting *x = &sp->set[i];
        if (!find_param(sp->kind, x->key, &pi))
            continue;
        curv_error e;
        curv_status st = x->str ? curv_config_set_str(c, x->key, x->str, &e)
                                : curv_config_set_num(c, x->key, x->num, &e);
        if (st != CURV_OK)
            die("curv_config_set", st, &e);
        if (strcmp(x->key, "tau") == 0)
            *tau = x->num;
    }
    return c;
}

static void print_row(const char *kind, const char *params, size_t L, size_t d,
                      const struct timing *t)
{
    double k = 1e9 / (double)d;
    printf("%-13s %-22s %4zu %9zu %6llu %8llu %9.3f %9.3f %9.3f %9.3f\n", kind, params, L, d,
           (unsigned long long)t->warm, (unsigned long long)t->steps, t->med * 1e3, t->med * k,
           t->lo * k, t->hi * k);
}

static void describe(const curv_opt *o, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof SHOW_KEYS / sizeof SHOW_KEYS[0] && used < cap; i++) {
        double v;
        if (curv_opt_get_param(o, SHOW_KEYS[i], &v) == CURV_OK)
            used += (size_t)snprintf(buf + used, cap - used, "%s%s=%g", used ? " " : "",
                                     SHOW_KEYS[i], v);
    }
}

/* Time @sp at L blocks over @b; the seconds per step, or 0. */
static double run_opt(const struct spec *sp, size_t L, const struct bufs *b)
{
    double tau, out = 0;
    curv_config *c = make_config(sp, &tau);
    double state_gb = 2.0 * tau * (double)b->d * 8.0 / 1e9;
    if (state_gb > STATE_MAX_GB) {
        printf("%-13s skipped (state %.1f GB) at L = %zu, d = %zu\n", sp->label, state_gb, L, b->d);
        curv_config_free(c);
        return out;
    }
    curv_layout *l = make_layout(b->d, L);
    struct opt_ctx ctx = {.o = NULL, .b = b};
    curv_error e;
    e.text[0] = '\0';
    curv_status st = curv_opt_new(sp->kind, l, c, &ctx.o, &e);
    curv_layout_free(l);
    curv_config_free(c);
    if (st != CURV_OK) {
        printf("%-13s unavailable: %s\n", sp->label, e.text[0] ? e.text : curv_strerror(st));
        return out;
    }
    struct timing t;
    double period = 1;
    if (curv_opt_get_param(ctx.o, "t_sqr", &period) != CURV_OK || period < 1)
        period = 1;
    if (measure(opt_step, &ctx, (uint64_t)period, &t) == 0) {
        char params[64];
        describe(ctx.o, params, sizeof params);
        print_row(sp->label, params, L, b->d, &t);
        out = t.med;
    }
    curv_opt_free(ctx.o);
    return out;
}

static void run_d(int di)
{
    struct bufs b;
    alloc_bufs(&b, DS[di]);
    struct timing t;
    measure(axpy_step, &b, 1, &t);
    char params[64];
    snprintf(params, sizeof params, "24 B/param %.1f GB/s", AXPY_BYTES * (double)b.d / t.med / 1e9);
    print_row("axpy", params, 0, b.d, &t);
    g_axpy[di] = t.med;
    for (int si = 0; si < NSPEC; si++)
        for (int li = 0; li < NL; li++)
            if (SPECS[si].sweep_L || li == L_OTHERS)
                g_opt[si][li][di] = run_opt(&SPECS[si], LS[li], &b);
    free_bufs(&b);
}

static void run_full(int quick)
{
    static const struct spec full = {
        "adagrad_full", CURV_OPT_ADAGRAD_FULL, {{NULL, 0, NULL}, {NULL, 0, NULL}}, 0};
    size_t n = quick ? 2 : sizeof FULL_DS / sizeof FULL_DS[0];
    printf("\nadagrad_full (O(d^3) per step: an eigendecomposition of the d x d matrix)\n");
    for (size_t i = 0; i < n; i++) {
        struct bufs b;
        alloc_bufs(&b, FULL_DS[i]);
        g_full[i] = run_opt(&full, LS[0], &b);
        free_bufs(&b);
    }
}

/* ---- report ------------------------------------------------------------ */

static void print_ratio(double num, double den, double goal)
{
    if (!(num > 0 && den > 0))
        printf(" %9s", "-");
    else
        printf(" %8.2f%s", num / den, goal > 0 && num / den > goal ? "!" : " ");
}

static void print_ratios(int nd)
{
    printf("\nratios (median times; '!' marks a ratio above its goal; the goals concern sizes\n"
           "whose vectors exceed the last-level cache, where axpy's GB/s falls to DRAM speed)\n");
    printf("%9s %9s %9s %9s %9s %9s %9s\n", "d", "diag/axpy", "sgd/axpy", "bma/diag", "bma/diag",
           "bma/diag", "mbag/axpy");
    printf("%9s %9s %9s %9s %9s %9s %9s\n", "", "goal<=2", "", "L=2 <=2", "L=20 <=2", "L=200 <=2",
           "");
    for (int di = 0; di < nd; di++) {
        double diag = g_opt[S_DIAG][L_OTHERS][di];
        printf("%9zu", DS[di]);
        print_ratio(diag, g_axpy[di], 2);
        print_ratio(g_opt[S_SGD][L_OTHERS][di], g_axpy[di], 0);
        for (int li = 0; li < NL; li++)
            print_ratio(g_opt[S_BMA][li][di], diag, 2);
        print_ratio(g_opt[S_MBAG][L_OTHERS][di], g_axpy[di], 0);
        printf("\n");
    }
    for (int si = S_MBAG; si <= S_MBAG_N; si++) {
        double lo = INFINITY, hi = 0;
        printf("%s ns/param across d (tau fixed; goal: flat):", SPECS[si].label);
        for (int di = 0; di < nd; di++) {
            double ns = g_opt[si][L_OTHERS][di] * 1e9 / (double)DS[di];
            if (ns > 0)
                printf(" %.2f", ns), lo = fmin(lo, ns), hi = fmax(hi, ns);
            else
                printf(" -");
        }
        if (hi > 0)
            printf("  (max/min %.2f)", hi / lo);
        printf("\n");
    }
    printf("adagrad_full time ratio per doubling of d (O(d^3): ~8):");
    for (size_t i = 1; i < sizeof FULL_DS / sizeof FULL_DS[0]; i++)
        print_ratio(g_full[i], g_full[i - 1], 0);
    printf("\n");
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
    int nd = quick ? 2 : ND;
    printf("bench_step: libcurv %s, OpenBLAS threads %d, %s\n", curv_version(),
           openblas_get_num_threads(), quick ? "quick (d <= 1e5)" : "full");
    printf("ns/param = seconds per step / d; median of up to %d repetitions (fewer when slow) of\n"
           ">= %.1f s (or %d steps), each a whole number of mbag's t_sqr periods\n\n",
           REPS, MIN_REP_S, MAX_REP_STEPS);
    printf("%-13s %-22s %4s %9s %6s %8s %9s %9s %9s %9s\n", "kind", "params", "L", "d", "warm",
           "steps", "ms/step", "ns/param", "min", "max");
    for (int di = 0; di < nd; di++)
        run_d(di);
    run_full(quick);
    print_ratios(nd);
    return 0;
}
