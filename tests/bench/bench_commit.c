/* SPDX-License-Identifier: MIT */
/*
 * bench_commit - what making a K-FAC step durable costs in curvd's store,
 * next to the step itself: the thesis' MNIST autoencoder (784-1000-500-
 * 250-30, mirrored; tests/bench/autoencoder.h), simple mode, statistics
 * every cov_interval steps, inverses refreshed at steps 1-3 and every 20.
 * After each step (curv_opt_step, timed) the state is saved with
 * curv_opt_save_parts (timed) and committed with curvd_store_commit_step
 * into four stores, each a fresh database in a temporary folder: the
 * parts that changed since that store's last commit, or the whole blob
 * (one part rewritten every step: the store before parts), each under
 * --durability full and normal. The reply stored with each step is a few
 * bytes (in curvd it is the update; its cost is the same either way). The
 * stores take turns going first. Printed per step and as ratios over the
 * run and over the steps between refreshes: commit / compute, parts /
 * whole, save / compute. At the end every store must give back the last
 * blob byte for byte. OpenBLAS runs on one thread unless
 * OPENBLAS_NUM_THREADS is set; large blocks stay in the heap (mallopt, as
 * curvd sets it).
 * Usage: bench_commit [--quick]   (--quick: a tiny network)
 */
#include <cblas.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autoencoder.h"
#include "store/store.h"

#define WHO "bench_commit"
#define STEPS 23 /* refreshes at 1, 2, 3 and 20 */

enum { PARTS_FULL, WHOLE_FULL, PARTS_NORMAL, WHOLE_NORMAL, NSTORES };
static const char *const STORE_NAME[NSTORES] = {"parts, full", "whole, full", "parts, normal",
                                                "whole, normal"};

static char tmp_dir[256];

struct bstore {
    struct curvd_store *st;
    int parts;                  /* write parts against the committed ones, else the whole blob */
    curv_state_part *committed; /* the parts of its last commit (libcurv's, borrowed) */
    size_t n_committed;
    char path[320];
};

static void store_fail(const char *what, int status, const char *err)
{
    fprintf(stderr, "%s: %s: %s (%s)\n", WHO, what, curvd_store_status_name(status), err);
    exit(1);
}

static void db_path(int i, int cov, char *out, size_t cap)
{
    snprintf(out, cap, "%s/cov%d-%d.db", tmp_dir, cov, i);
}

static void remove_db(const char *path)
{
    const char *suffix[] = {"", "-wal", "-shm"};
    for (int i = 0; i < 3; i++) {
        char f[400];
        snprintf(f, sizeof f, "%s%s", path, suffix[i]);
        unlink(f);
    }
}

/* Open store @i and create the session with @blob (every part). */
static void bstore_open(struct bstore *b, int i, int cov, const unsigned char *blob, size_t len,
                        const curv_state_part *p, size_t n)
{
    char err[256];
    db_path(i, cov, b->path, sizeof b->path);
    enum curvd_durability d = i < PARTS_NORMAL ? CURVD_DURABILITY_FULL : CURVD_DURABILITY_NORMAL;
    int status = curvd_store_open(b->path, d, &b->st, err, sizeof err);
    if (status != CURVD_STORE_OK)
        store_fail("opening a store", status, err);
    b->parts = i == PARTS_FULL || i == PARTS_NORMAL;
    struct curvd_session_new row = {"s", "t", "kfac", NULL, 0, {blob, len, p, n, NULL, 0},
                                    0,   0,   NULL,   NULL, 0, 0};
    if (!b->parts)
        row.state.parts = NULL, row.state.n_parts = 0;
    if ((status = curvd_store_create(b->st, &row, NULL, err, sizeof err)) != CURVD_STORE_OK)
        store_fail("creating the session", status, err);
}

/* Commit step @k; returns its seconds. The parts store compares with
 * what it committed last (@p becomes that). */
static double bstore_commit(struct bstore *b, int64_t k, const unsigned char *blob, size_t len,
                            curv_state_part *p, size_t n)
{
    char err[256], reply[32];
    int rlen = snprintf(reply, sizeof reply, "{\"step\":%lld}", (long long)k);
    struct curvd_step_commit c = {.step = k,
                                  .state = {.blob = blob, .len = len},
                                  .content_type = "application/json",
                                  .response = reply,
                                  .response_len = (size_t)rlen};
    if (b->parts)
        c.state = (struct curvd_state_in){blob, len, p, n, b->committed, b->n_committed};
    double t0 = ae_now();
    int status = curvd_store_commit_step(b->st, "t", "s", &c, NULL, err, sizeof err);
    double t = ae_now() - t0;
    if (status != CURVD_STORE_OK)
        store_fail("committing a step", status, err);
    b->committed = p;
    b->n_committed = n;
    return t;
}

/* The stored state must be @blob. */
static void bstore_close(struct bstore *b, const unsigned char *blob, size_t len)
{
    char err[256];
    struct curvd_session s;
    int status = curvd_store_get(b->st, "t", "s", 1, &s, err, sizeof err);
    if (status != CURVD_STORE_OK)
        store_fail("reading the session back", status, err);
    if (s.state_len != len || memcmp(s.state, blob, len) != 0) {
        fprintf(stderr, "%s: %s holds another state than the last saved\n", WHO, b->path);
        exit(1);
    }
    curvd_session_clear(&s);
    curvd_store_close(b->st);
    remove_db(b->path);
}

/* Bytes in parts whose stamp is 0 or changed since @prev (all of them on
 * another division): what the parts stores write. */
static size_t changed_bytes(const curv_state_part *prev, size_t n_prev, const curv_state_part *p,
                            size_t n, size_t len)
{
    int same = prev && n_prev == n;
    for (size_t i = 0; same && i < n; i++)
        same = prev[i].offset == p[i].offset && prev[i].len == p[i].len;
    if (!same)
        return len;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++)
        bytes += p[i].stamp == 0 || p[i].stamp != prev[i].stamp ? p[i].len : 0;
    return bytes;
}

struct totals {
    double step, save, commit[NSTORES], written, whole;
};

static void add(struct totals *t, double step, double save, const double *commit, double written,
                double whole)
{
    t->step += step, t->save += save, t->written += written, t->whole += whole;
    for (int i = 0; i < NSTORES; i++)
        t->commit[i] += commit[i];
}

static void summary(const struct totals *all, const struct totals *mid)
{
    const struct totals *t[2] = {all, mid};
    printf("  ratios over all steps | over steps between refreshes:\n");
    printf("    %-38s %7.3f | %7.3f\n", "written / blob bytes (parts)", all->written / all->whole,
           mid->written / mid->whole);
    printf("    %-38s %7.3f | %7.3f\n", "save / compute", all->save / all->step,
           mid->save / mid->step);
    for (int i = 0; i < NSTORES; i++) {
        char label[64];
        snprintf(label, sizeof label, "commit / compute, %s", STORE_NAME[i]);
        printf("    %-38s %7.3f | %7.3f\n", label, t[0]->commit[i] / t[0]->step,
               t[1]->commit[i] / t[1]->step);
    }
    for (int i = 0; i < NSTORES; i += 2)
        printf("    %-38s %7.3f | %7.3f\n",
               i ? "commit parts / whole, normal" : "commit parts / whole, full",
               t[0]->commit[i] / t[0]->commit[i + 1], t[1]->commit[i] / t[1]->commit[i + 1]);
    printf("    %-38s %7.3f | %7.3f\n", "(save + commit) / compute, parts, full",
           (all->save + all->commit[PARTS_FULL]) / all->step,
           (mid->save + mid->commit[PARTS_FULL]) / mid->step);
}

/* One session of STEPS steps with statistics every @cov steps. */
static void run(int quick, int cov)
{
    struct ae_session ae;
    ae_session_new(&ae, WHO, quick, cov);
    curv_error err;
    unsigned char *blob;
    size_t len, n;
    curv_state_part *p;
    ae_check(WHO, curv_opt_save_parts(ae.opt, &blob, &len, &p, &n, &err), &err);
    struct bstore stores[NSTORES];
    for (int i = 0; i < NSTORES; i++) {
        bstore_open(&stores[i], i, cov, blob, len, p, n);
        stores[i].committed = p, stores[i].n_committed = n;
    }
    curv_free(blob);
    curv_state_part *prev = p; /* what every parts store has committed */
    size_t n_prev = n;
    struct totals all = {0}, mid = {0};
    printf("\ncov_interval = %d, inv_interval = %d, %d steps; seconds, commits:\n", cov, AE_T3,
           STEPS);
    printf("  %4s %5s %7s %8s %8s %7s %7s", "step", "stats", "refresh", "blob MB", "written",
           "step", "save");
    for (int i = 0; i < NSTORES; i++)
        printf(" %14s", STORE_NAME[i]);
    printf("\n");
    for (int k = 1; k <= STEPS; k++) {
        const double step_s = ae_step(&ae, k);
        double t0 = ae_now();
        ae_check(WHO, curv_opt_save_parts(ae.opt, &blob, &len, &p, &n, &err), &err);
        const double save_s = ae_now() - t0;
        const double written = (double)changed_bytes(prev, n_prev, p, n, len);
        double commit[NSTORES];
        for (int j = 0; j < NSTORES; j++) { /* each store goes first in turn */
            int i = (k + j) % NSTORES;
            commit[i] = bstore_commit(&stores[i], k, blob, len, p, n);
        }
        printf("  %4d %5s %7s %8.1f %8.3f %7.3f %7.3f", k, ae_has_stats(&ae, k) ? "yes" : "-",
               ae_refreshes(k) ? "yes" : "-", (double)len / 1e6, written / (double)len, step_s,
               save_s);
        for (int i = 0; i < NSTORES; i++)
            printf(" %14.3f", commit[i]);
        printf("\n");
        fflush(stdout);
        add(&all, step_s, save_s, commit, written, (double)len);
        if (!ae_refreshes(k))
            add(&mid, step_s, save_s, commit, written, (double)len);
        curv_free(prev);
        prev = p;
        n_prev = n;
        if (k < STEPS)
            curv_free(blob);
    }
    printf("  %zu parts\n", n);
    summary(&all, &mid);
    for (int i = 0; i < NSTORES; i++)
        bstore_close(&stores[i], blob, len);
    curv_free(blob);
    curv_free(prev);
    ae_session_free(&ae);
}

int main(int argc, char **argv)
{
    const int quick = ae_bench_start(argc, argv);
    const char *root = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/curvd-bench-commit-XXXXXX", root ? root : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        perror(WHO ": mkdtemp");
        return 1;
    }
    char widths[96];
    size_t L = ae_widths(quick, widths, sizeof widths);
    printf("bench_commit: K-FAC, simple mode, %zu dense layers %s, biases, %d rows of "
           "statistics; OpenBLAS threads %d; stores in %s (page size %d, WAL)\n",
           L, widths, AE_ROWS, openblas_get_num_threads(), tmp_dir, CURVD_STORE_PAGE_SIZE);
    run(quick, 1);
    run(quick, 5);
    rmdir(tmp_dir);
    return 0;
}
