/* SPDX-License-Identifier: MIT */
/*
 * bench_state_parts - what a store must rewrite per step when it keeps a
 * K-FAC session as parts (curv_opt_save_parts) instead of one blob: the
 * thesis' MNIST autoencoder (784-1000-500-250-30, mirrored, 8 dense layers
 * with biases), simple mode, statistics every cov_interval steps, inverses
 * refreshed at steps 1-3 and every inv_interval = 20. Per step: the bytes
 * in parts whose stamp is 0 or changed since the previous save, as a ratio
 * to the blob; and the save's time as ratios to curv_opt_save (parts cost
 * nothing extra), to a memcpy of the blob and to the step itself, with the
 * share of the CRC (each save timed twice, the faster kept). Large blocks
 * stay in the heap (mallopt, as curvd does), so that a save does not
 * page-fault a fresh mapping. OpenBLAS runs on one thread unless
 * OPENBLAS_NUM_THREADS is set.
 * Usage: bench_state_parts [--quick]   (--quick: a tiny network)
 */
#include <cblas.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "state.h"

#define T3 20
#define STEPS 23 /* refreshes at 1, 2, 3 and 20 */
#define ROWS 250

static const size_t AUTOENCODER[] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
static const size_t QUICK[] = {10, 8, 6, 4, 6, 8, 10};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *alloc_or_die(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) {
        fprintf(stderr, "bench_state_parts: out of memory\n");
        exit(1);
    }
    return p;
}

static void check(curv_status st, const curv_error *err)
{
    if (st != CURV_OK) {
        fprintf(stderr, "bench_state_parts: %s\n", err->text);
        exit(1);
    }
}

static uint64_t rng_state = 11;
static double uniform_pm(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-52 - 1.0;
}

struct saved {
    unsigned char *blob;
    size_t len, n;
    curv_state_part *p;
};

/* Bytes a store rewrites going from @prev to @s: parts with stamp 0 or a
 * new stamp; everything when the parts layout changed. */
static size_t changed_bytes(const struct saved *prev, const struct saved *s)
{
    if (!prev->blob || prev->n != s->n)
        return s->len;
    size_t bytes = 0;
    for (size_t i = 0; i < s->n; i++) {
        const curv_state_part *a = &prev->p[i], *b = &s->p[i];
        if (a->offset != b->offset || a->len != b->len)
            return s->len;
        if (b->stamp == 0 || b->stamp != a->stamp)
            bytes += b->len;
    }
    return bytes;
}

struct totals {
    double changed, whole, save, parts, copy, crc, step;
};

/* One session of @steps steps with statistics every @cov steps. */
static void run(const size_t *w, size_t L, int cov, int steps)
{
    curv_layout *l = curv_layout_new();
    curv_error err;
    for (size_t i = 0; i < L; i++) {
        char name[16];
        snprintf(name, sizeof name, "l%zu", i);
        check(curv_layout_add_dense(l, name, w[i + 1], w[i], 1, &err), &err);
    }
    const size_t d = curv_layout_dim(l);
    double *g = alloc_or_die(d, sizeof *g), *u = alloc_or_die(d, sizeof *u);
    double *acts[8], *sig[8];
    curv_layer_stats stats[8];
    for (size_t i = 0; i < L; i++) {
        acts[i] = alloc_or_die(ROWS * w[i], sizeof(double));
        sig[i] = alloc_or_die(ROWS * w[i + 1], sizeof(double));
        for (size_t j = 0; j < ROWS * w[i]; j++)
            acts[i][j] = uniform_pm();
        stats[i] = (curv_layer_stats){
            .block = i, .rows = ROWS, .examples = ROWS, .acts = acts[i], .signals = sig[i]};
    }
    curv_config *c = curv_config_new();
    curv_config_set_str(c, "mode", "simple", NULL);
    curv_config_set_num(c, "inv_interval", T3, NULL);
    curv_config_set_num(c, "cov_interval", cov, NULL);
    curv_config_set_num(c, "weight_decay", 0, NULL);
    curv_opt *o = NULL;
    check(curv_opt_new(CURV_OPT_KFAC, l, c, &o, &err), &err);
    curv_config_free(c);

    struct saved prev = {0};
    struct totals all = {0}, mid = {0};
    unsigned char *copy = NULL;
    printf("\ncov_interval = %d, inv_interval = %d, %d steps\n", cov, T3, steps);
    printf("  %4s %5s %7s %9s %8s %8s %9s %9s\n", "step", "stats", "refresh", "blob MB", "changed",
           "step s", "save s", "save/step");
    for (int k = 1; k <= steps; k++) {
        for (size_t i = 0; i < d; i++)
            g[i] = 1e-3 * uniform_pm();
        const int due = (k - 1) % cov == 0, refresh = k <= 3 || k % T3 == 0;
        for (size_t i = 0; due && i < L; i++)
            for (size_t j = 0; j < ROWS * w[i + 1]; j++)
                sig[i][j] = 0.1 * uniform_pm();
        curv_step_input in = {.grad = g,
                              .len = d,
                              .dtype = CURV_F64,
                              .layers = due ? stats : NULL,
                              .n_layers = due ? L : 0};
        curv_request req;
        double t0 = now_s();
        check(curv_opt_step(o, &in, u, &req, &err), &err);
        double t1 = now_s();
        struct saved s;
        unsigned char *plain;
        size_t plain_len;
        double parts_s = 1e300, save_s = 1e300, t2 = 0, t3 = 0;
        for (int rep = 0; rep < 2; rep++) {
            if (rep)
                curv_free(s.blob), curv_free(s.p), curv_free(plain);
            t2 = now_s();
            check(curv_opt_save_parts(o, &s.blob, &s.len, &s.p, &s.n, &err), &err);
            t3 = now_s();
            check(curv_opt_save(o, &plain, &plain_len, &err), &err);
            parts_s = parts_s < t3 - t2 ? parts_s : t3 - t2;
            save_s = save_s < now_s() - t3 ? save_s : now_s() - t3;
        }
        t3 = now_s();
        if (!copy) {
            copy = alloc_or_die(s.len, 1);
            memset(copy, 1, s.len);
        }
        memcpy(copy, plain, plain_len);
        double t4 = now_s();
        volatile uint32_t crc = curv__crc32(0, s.blob, s.len);
        (void)crc;
        double t5 = now_s();
        const double changed = (double)changed_bytes(&prev, &s);
        printf("  %4d %5s %7s %9.1f %8.3f %8.3f %9.4f %9.3f\n", k, due ? "yes" : "-",
               refresh ? "yes" : "-", (double)s.len / 1e6, changed / (double)s.len, t1 - t0,
               t2 - t1, (t2 - t1) / (t1 - t0));
        const struct totals t = {changed, (double)s.len, t3 - t2, t2 - t1,
                                 t4 - t3, t5 - t4,       t1 - t0};
        struct totals *acc[2] = {&all, &mid};
        for (int a = 0; a < 2; a++) {
            if (a == 1 && (k <= 3 || refresh))
                continue;
            acc[a]->changed += t.changed, acc[a]->whole += t.whole, acc[a]->save += t.save;
            acc[a]->parts += t.parts, acc[a]->copy += t.copy, acc[a]->crc += t.crc;
            acc[a]->step += t.step;
        }
        curv_free(plain);
        curv_free(prev.blob);
        curv_free(prev.p);
        prev = s;
    }
    printf("  %zu parts; ratios over all steps | over steps between refreshes:\n", prev.n);
    printf("    changed bytes / blob bytes      %6.3f | %6.3f\n", all.changed / all.whole,
           mid.changed / mid.whole);
    printf("    save_parts / save               %6.3f | %6.3f\n", all.parts / all.save,
           mid.parts / mid.save);
    printf("    save / memcpy of the blob       %6.2f | %6.2f\n", all.save / all.copy,
           mid.save / mid.copy);
    printf("    CRC of the blob / save          %6.2f | %6.2f\n", all.crc / all.save,
           mid.crc / mid.save);
    printf("    save / step                     %6.3f | %6.3f\n", all.save / all.step,
           mid.save / mid.step);
    curv_free(prev.blob);
    curv_free(prev.p);
    free(copy);
    for (size_t i = 0; i < L; i++)
        free(acts[i]), free(sig[i]);
    free(g), free(u);
    curv_opt_free(o);
    curv_layout_free(l);
}

int main(int argc, char **argv)
{
    const int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    if (!getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(1);
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    const size_t *w = quick ? QUICK : AUTOENCODER;
    const size_t L = (quick ? sizeof QUICK : sizeof AUTOENCODER) / sizeof(size_t) - 1;
    printf("bench_state_parts: K-FAC, simple mode, %zu dense layers", L);
    for (size_t i = 0; i <= L; i++)
        printf("%s%zu", i ? "-" : " ", w[i]);
    printf(", biases, %d rows of statistics; OpenBLAS threads %d\n", ROWS,
           openblas_get_num_threads());
    run(w, L, 1, STEPS);
    run(w, L, 5, STEPS);
    return 0;
}
