/* SPDX-License-Identifier: MIT */
/* Helpers shared by the library's modules; never installed. */
#ifndef CURV_INTERNAL_H
#define CURV_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "curv.h"

#if defined(__GNUC__)
#define CURV__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CURV__PRINTF(a, b)
#endif

/*
 * CURV__VECTOR_CLONES - compile an elementwise kernel for AVX-512, AVX2 and
 * the baseline, chosen once at load time (GCC target_clones, an ifunc), so
 * the portable library still uses the machine's widest vectors. Results are
 * bit-identical across clones: sqrt and division are correctly rounded at
 * any width, and -std=c11 keeps FP contraction (FMA) off.
 */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CURV__VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CURV__VECTOR_CLONES
#endif

/* curv__fail - record @status and a formatted sentence in @err (may be
 * NULL) and return @status, so error paths read `return curv__fail(...)`. */
curv_status curv__fail(curv_error *err, curv_status status, const char *fmt, ...)
    CURV__PRINTF(3, 4);

/* curv__mul_ok - *out = a * b; returns 0 on size_t overflow. */
static inline int curv__mul_ok(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

/* curv__sat_add - a + b, or SIZE_MAX when that overflows. */
static inline size_t curv__sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

/* A double is NaN or ±Inf exactly when its 11 exponent bits are all ones.
 * Testing bits with integer operations lets the compiler vectorize the
 * scan (a floating-point sum could not be reordered), so the common
 * all-finite case costs one streaming read. */
static inline uint64_t curv__nonfinite_bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return (uint64_t)((u & 0x7ff0000000000000ULL) == 0x7ff0000000000000ULL);
}

/* The library's allocator (curv_set_allocator): malloc, calloc (NULL when
 * n * sz overflows), realloc, strdup and free work-alikes. A zero size asks for
 * one byte, so a NULL return always means out of memory. */
void *curv__malloc(size_t bytes);
void *curv__calloc(size_t n, size_t sz);
void *curv__realloc(void *p, size_t bytes);
char *curv__strdup(const char *s);
void curv__free(void *p);

/* curv__calloc_n - zeroed array of n elements of size sz, NULL on overflow
 * or when out of memory. */
void *curv__calloc_n(size_t n, size_t sz);

/* curv__malloc_n - the same array uninitialised, for one that is written
 * whole before it is read (a step's large scratch: no zeroing pass). */
void *curv__malloc_n(size_t n, size_t sz);

/* curv__calloc_bytes - the bytes curv__calloc_n(n, sz) asks for (at least
 * one element of at least one byte); SIZE_MAX when n * sz overflows. */
size_t curv__calloc_bytes(size_t n, size_t sz);

/*
 * struct curv__tally - the allocations that create an object, written once
 * for two uses: creating it (@alloc = 1) and sizing it without allocating
 * (@alloc = 0, for curv_opt_state_bytes). Code that allocates through
 * curv__tally_calloc and curv__tally_obj and otherwise sets only scalars
 * runs unchanged in both modes; what fills arrays is guarded by @alloc.
 */
struct curv__tally {
    int alloc;    /* 1: allocate; 0: count only */
    int failed;   /* an allocation failed; later ones are not attempted */
    size_t bytes; /* bytes allocated, or that would be; SIZE_MAX on overflow */
};

/* curv__tally_calloc - count curv__calloc_n(n, sz) and, when allocating,
 * call it (NULL and @failed set on failure). Counting returns NULL. */
void *curv__tally_calloc(struct curv__tally *t, size_t n, size_t sz);

/* curv__tally_obj - one zeroed object of @sz bytes: allocated (NULL on
 * failure), or, when counting, @scratch (of @sz bytes) cleared. */
void *curv__tally_obj(struct curv__tally *t, void *scratch, size_t sz);

/* curv__bma_bytes - the bytes curv_bma_new allocates for L blocks. */
size_t curv__bma_bytes(size_t L);

/* curv__first_nonfinite - index of the first NaN/Inf in x[0..n), or n. */
size_t curv__first_nonfinite(const double *x, size_t n);
/* curv__first_nonfinite_f - the same for floats. */
size_t curv__first_nonfinite_f(const float *x, size_t n);

/* curv__dot - Σ x_i y_i in a fixed order of eight interleaved partial sums
 * (deterministic, vectorized; not the sequential sum's bits). */
double curv__dot(const double *x, const double *y, size_t n);

/* curv__valid_sums - 1 when x[0..n) are all finite and >= 0 (sums of
 * squares loaded from a blob); 0 otherwise. */
int curv__valid_sums(const double *x, size_t n);

#endif
