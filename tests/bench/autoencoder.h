/* SPDX-License-Identifier: MIT */
/*
 * A K-FAC session of the thesis' MNIST deep autoencoder for the benchmarks
 * that save and store its state (bench_state_parts, bench_commit): the
 * layout 784-1000-500-250-30, mirrored (8 dense layers with biases; or a
 * tiny network), synthetic gradients and statistics, and simple mode with
 * inverses refreshed at steps 1-3 and every AE_T3 steps. Each benchmark is
 * one translation unit, so this header defines its helpers (static inline).
 */
#ifndef CURV_BENCH_AUTOENCODER_H
#define CURV_BENCH_AUTOENCODER_H

#include <cblas.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curv.h"

#define AE_T3 20    /* inv_interval */
#define AE_MAX_L 8  /* dense layers at most */
#define AE_ROWS 250 /* rows of statistics per step */

static const size_t AE_WIDTHS[] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
static const size_t AE_QUICK[] = {10, 8, 6, 4, 6, 8, 10};

static inline double ae_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* calloc, or exit with a message naming @who. */
static inline void *ae_alloc(const char *who, size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) {
        fprintf(stderr, "%s: out of memory\n", who);
        exit(1);
    }
    return p;
}

static inline void ae_check(const char *who, curv_status st, const curv_error *err)
{
    if (st != CURV_OK) {
        fprintf(stderr, "%s: %s\n", who, err->text);
        exit(1);
    }
}

/* Uniform in [-1, 1) from a splitmix64 sequence. */
static inline double ae_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-52 - 1.0;
}

/* Start a bench: one OpenBLAS thread unless OPENBLAS_NUM_THREADS says
 * otherwise, big buffers kept in the heap (as curvd does: no mmap and
 * page faults every step); returns whether --quick was asked for. */
static inline int ae_bench_start(int argc, char **argv)
{
    if (!getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(1);
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    return argc > 1 && strcmp(argv[1], "--quick") == 0;
}

/* The number of layers of the network (@quick: the tiny one), and its
 * widths as "784-1000-...-784" into @buf. */
static inline size_t ae_widths(int quick, char *buf, size_t cap)
{
    const size_t *w = quick ? AE_QUICK : AE_WIDTHS;
    const size_t L = (quick ? sizeof AE_QUICK : sizeof AE_WIDTHS) / sizeof(size_t) - 1;
    size_t n = 0;
    for (size_t i = 0; i <= L && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%zu", i ? "-" : "", w[i]);
    return L;
}

struct ae_session {
    const char *who; /* the benchmark, for messages */
    const size_t *w; /* widths, L + 1 of them */
    size_t L, d;
    int cov;
    curv_layout *layout;
    curv_opt *opt;
    double *g, *u, *acts[AE_MAX_L], *sig[AE_MAX_L];
    curv_layer_stats stats[AE_MAX_L];
    uint64_t rng;
};

/* The network (@quick: the tiny one) and its optimizer, statistics due
 * every @cov steps, weight decay off; random activations. */
static inline void ae_session_new(struct ae_session *s, const char *who, int quick, int cov)
{
    char widths[96];
    *s = (struct ae_session){.who = who, .w = quick ? AE_QUICK : AE_WIDTHS, .cov = cov, .rng = 11};
    s->L = ae_widths(quick, widths, sizeof widths);
    s->layout = curv_layout_new();
    curv_error err;
    for (size_t i = 0; i < s->L; i++) {
        char name[24];
        snprintf(name, sizeof name, "l%zu", i);
        ae_check(who, curv_layout_add_dense(s->layout, name, s->w[i + 1], s->w[i], 1, &err), &err);
    }
    s->d = curv_layout_dim(s->layout);
    s->g = ae_alloc(who, s->d, sizeof *s->g);
    s->u = ae_alloc(who, s->d, sizeof *s->u);
    for (size_t i = 0; i < s->L; i++) {
        s->acts[i] = ae_alloc(who, AE_ROWS * s->w[i], sizeof(double));
        s->sig[i] = ae_alloc(who, AE_ROWS * s->w[i + 1], sizeof(double));
        for (size_t j = 0; j < AE_ROWS * s->w[i]; j++)
            s->acts[i][j] = ae_uniform(&s->rng);
        s->stats[i] = (curv_layer_stats){.block = i,
                                         .rows = AE_ROWS,
                                         .examples = AE_ROWS,
                                         .acts = s->acts[i],
                                         .signals = s->sig[i]};
    }
    curv_config *c = curv_config_new();
    curv_config_set_str(c, "mode", "simple", NULL);
    curv_config_set_num(c, "inv_interval", AE_T3, NULL);
    curv_config_set_num(c, "cov_interval", cov, NULL);
    curv_config_set_num(c, "weight_decay", 0, NULL);
    ae_check(who, curv_opt_new(CURV_OPT_KFAC, s->layout, c, &s->opt, &err), &err);
    curv_config_free(c);
}

/* Does step @k bring statistics; does it refresh the inverses? */
static inline int ae_has_stats(const struct ae_session *s, int k)
{
    return (k - 1) % s->cov == 0;
}

static inline int ae_refreshes(int k)
{
    return k <= 3 || k % AE_T3 == 0;
}

/* Step @k (from 1) with a new random gradient, and new signals when
 * statistics are due. Returns the seconds curv_opt_step took. */
static inline double ae_step(struct ae_session *s, int k)
{
    for (size_t i = 0; i < s->d; i++)
        s->g[i] = 1e-3 * ae_uniform(&s->rng);
    const int due = ae_has_stats(s, k);
    for (size_t i = 0; due && i < s->L; i++)
        for (size_t j = 0; j < AE_ROWS * s->w[i + 1]; j++)
            s->sig[i][j] = 0.1 * ae_uniform(&s->rng);
    curv_step_input in = {.grad = s->g,
                          .len = s->d,
                          .dtype = CURV_F64,
                          .layers = due ? s->stats : NULL,
                          .n_layers = due ? s->L : 0};
    curv_request req;
    curv_error err;
    double t0 = ae_now();
    ae_check(s->who, curv_opt_step(s->opt, &in, s->u, &req, &err), &err);
    return ae_now() - t0;
}

static inline void ae_session_free(struct ae_session *s)
{
    for (size_t i = 0; i < s->L; i++)
        free(s->acts[i]), free(s->sig[i]);
    free(s->g), free(s->u);
    curv_opt_free(s->opt);
    curv_layout_free(s->layout);
}

#endif
