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

#include "autoencoder.h"
#include "state.h"

#define STEPS 23 /* refreshes at 1, 2, 3 and 20 */
#define WHO "bench_state_parts"

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
static void run(int quick, int cov, int steps)
{
    struct ae_session ae;
    ae_session_new(&ae, WHO, quick, cov);
    curv_error err;
    struct saved prev = {0};
    struct totals all = {0}, mid = {0};
    unsigned char *copy = NULL;
    printf("\ncov_interval = %d, inv_interval = %d, %d steps\n", cov, AE_T3, steps);
    printf("  %4s %5s %7s %9s %8s %8s %9s %9s\n", "step", "stats", "refresh", "blob MB", "changed",
           "step s", "save s", "save/step");
    for (int k = 1; k <= steps; k++) {
        const int due = ae_has_stats(&ae, k), refresh = ae_refreshes(k);
        const double step_s = ae_step(&ae, k);
        struct saved s;
        unsigned char *plain;
        size_t plain_len;
        double parts_s = 1e300, save_s = 1e300;
        for (int rep = 0; rep < 2; rep++) {
            if (rep)
                curv_free(s.blob), curv_free(s.p), curv_free(plain);
            double t0 = ae_now();
            ae_check(WHO, curv_opt_save_parts(ae.opt, &s.blob, &s.len, &s.p, &s.n, &err), &err);
            double t1 = ae_now();
            ae_check(WHO, curv_opt_save(ae.opt, &plain, &plain_len, &err), &err);
            double t2 = ae_now();
            parts_s = parts_s < t1 - t0 ? parts_s : t1 - t0;
            save_s = save_s < t2 - t1 ? save_s : t2 - t1;
        }
        if (!copy) {
            copy = ae_alloc(WHO, s.len, 1);
            memset(copy, 1, s.len);
        }
        double t3 = ae_now();
        memcpy(copy, plain, plain_len);
        double t4 = ae_now();
        volatile uint32_t crc = curv__crc32(0, s.blob, s.len);
        (void)crc;
        double t5 = ae_now();
        const double changed = (double)changed_bytes(&prev, &s);
        printf("  %4d %5s %7s %9.1f %8.3f %8.3f %9.4f %9.3f\n", k, due ? "yes" : "-",
               refresh ? "yes" : "-", (double)s.len / 1e6, changed / (double)s.len, step_s, parts_s,
               parts_s / step_s);
        const struct totals t = {changed, (double)s.len, save_s, parts_s, t4 - t3, t5 - t4, step_s};
        struct totals *acc[2] = {&all, &mid};
        for (int a = 0; a < 2; a++) {
            if (a == 1 && refresh)
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
    ae_session_free(&ae);
}

int main(int argc, char **argv)
{
    const int quick = ae_bench_start(argc, argv);
    char widths[96];
    size_t L = ae_widths(quick, widths, sizeof widths);
    printf("bench_state_parts: K-FAC, simple mode, %zu dense layers %s, biases, %d rows of "
           "statistics; OpenBLAS threads %d\n",
           L, widths, AE_ROWS, openblas_get_num_threads());
    run(quick, 1, STEPS);
    run(quick, 5, STEPS);
    return 0;
}
