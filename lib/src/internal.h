/* SPDX-License-Identifier: MIT */
/* Helpers shared by the library's modules; never installed. */
#ifndef CURV_INTERNAL_H
#define CURV_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "curv.h"

#if defined(__GNUC__)
#define CURV__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CURV__PRINTF(a, b)
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

/* curv__calloc_n - zeroed array of n elements of size sz, NULL on overflow
 * or when out of memory. */
void *curv__calloc_n(size_t n, size_t sz);

/* curv__first_nonfinite - index of the first NaN/Inf in x[0..n), or n. */
size_t curv__first_nonfinite(const double *x, size_t n);

#endif
