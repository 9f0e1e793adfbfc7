/* SPDX-License-Identifier: MIT */
/* Shared helpers for the cmocka suites: a seeded RNG, dense reference math
 * written independently of the library, and state snapshots. */
#ifndef CURV_TESTUTIL_H
#define CURV_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "curv.h"

/* Deterministic RNG (splitmix64). */
typedef struct {
    uint64_t s;
} tu_rng;
void tu_rng_seed(tu_rng *r, uint64_t seed);
double tu_uniform(tu_rng *r); /* [0, 1) */
double tu_normal(tu_rng *r);  /* N(0, 1) */
void tu_fill_normal(tu_rng *r, double *x, size_t n, double scale);

/* n x n row-major helpers (lda = n). */
double *tu_alloc(size_t n); /* zeroed, asserts on failure */
void tu_matmul(size_t m, size_t k, size_t n, const double *A, const double *B, double *C);
void tu_rand_spd(tu_rng *r, size_t n, double min_eig, double *A); /* random SPD */
/* Reference symmetric power via Jacobi eigenvalue iterations (independent
 * of LAPACK): out = R max(w, floor)^p R^T. */
void tu_sym_pow(size_t n, const double *A, double p, double floor, double *out);
/* The same with eigenvalues floored at floor_rel * max(w); returns the
 * smallest eigenvalue before flooring, so callers can see the floor act. */
double tu_sym_pow_rel(size_t n, const double *A, double p, double floor_rel, double *out);
/* max |a-b| / max(max|b|, tiny) over n entries. */
double tu_rel_err(const double *a, const double *b, size_t n);

/* Save @o and return the blob (caller frees with curv_free). */
unsigned char *tu_snapshot(const curv_opt *o, size_t *len);
/* Assert that @o's saved state equals the snapshot byte for byte. */
void tu_assert_unchanged(const curv_opt *o, const unsigned char *snap, size_t len);

/* Assert a status, printing the error text on mismatch. */
#define tu_assert_status(expr, want, errp)                                                         \
    do {                                                                                           \
        const curv_error *tu_e_ = (errp);                                                          \
        curv_status tu_st_ = (expr);                                                               \
        if (tu_st_ != (want))                                                                      \
            print_error("got %s, want %s: %s\n", curv_status_name(tu_st_), curv_status_name(want), \
                        tu_e_ ? tu_e_->text : "");                                                 \
        assert_int_equal(tu_st_, (want));                                                          \
    } while (0)

#endif
