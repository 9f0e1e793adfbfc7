/* SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdlib.h>

#include "internal.h"

void *curv__calloc_n(size_t n, size_t sz)
{
    size_t bytes;
    if (!curv__mul_ok(n, sz, &bytes))
        return NULL;
    return calloc(n ? n : 1, sz ? sz : 1);
}

size_t curv__first_nonfinite(const double *x, size_t n)
{
    /* Summing x*0 is NaN iff some x is NaN or Inf: one branch-free pass
     * over the common all-finite case, then a search only on failure. */
    double acc = 0.0;
    for (size_t i = 0; i < n; i++)
        acc += x[i] * 0.0;
    if (acc == 0.0)
        return n;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return i;
    return n;
}

void curv_free(void *p)
{
    free(p);
}
