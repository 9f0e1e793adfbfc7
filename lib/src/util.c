/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void *curv__calloc_n(size_t n, size_t sz)
{
    return curv__calloc(n ? n : 1, sz ? sz : 1);
}

void *curv__malloc_n(size_t n, size_t sz)
{
    const size_t bytes = curv__calloc_bytes(n, sz);
    return bytes == SIZE_MAX ? NULL : curv__malloc(bytes);
}

size_t curv__calloc_bytes(size_t n, size_t sz)
{
    size_t bytes;
    return curv__mul_ok(n ? n : 1, sz ? sz : 1, &bytes) ? bytes : SIZE_MAX;
}

void *curv__tally_calloc(struct curv__tally *t, size_t n, size_t sz)
{
    t->bytes = curv__sat_add(t->bytes, curv__calloc_bytes(n, sz));
    if (!t->alloc || t->failed)
        return NULL;
    void *p = curv__calloc_n(n, sz);
    t->failed = p == NULL;
    return p;
}

void *curv__tally_obj(struct curv__tally *t, void *scratch, size_t sz)
{
    if (t->alloc)
        return curv__tally_calloc(t, 1, sz);
    t->bytes = curv__sat_add(t->bytes, sz);
    memset(scratch, 0, sz);
    return scratch;
}

/* Static: an ifunc'd symbol would be exported despite -fvisibility=hidden. */
CURV__VECTOR_CLONES static size_t first_nonfinite(const double *x, size_t n)
{
    enum { CHUNK = 4096 };
    for (size_t base = 0; base < n; base += CHUNK) {
        size_t end = n - base < CHUNK ? n : base + CHUNK;
        uint64_t bad = 0;
        for (size_t i = base; i < end; i++)
            bad |= curv__nonfinite_bits(x[i]);
        if (bad)
            for (size_t i = base; i < end; i++)
                if (curv__nonfinite_bits(x[i]))
                    return i;
    }
    return n;
}

size_t curv__first_nonfinite(const double *x, size_t n)
{
    return first_nonfinite(x, n);
}

/* A float is NaN or ±Inf exactly when its 8 exponent bits are all ones. */
static inline uint32_t nonfinite_bits_f(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
}

CURV__VECTOR_CLONES static size_t first_nonfinite_f(const float *x, size_t n)
{
    enum { CHUNK = 8192 };
    for (size_t base = 0; base < n; base += CHUNK) {
        size_t end = n - base < CHUNK ? n : base + CHUNK;
        uint32_t bad = 0;
        for (size_t i = base; i < end; i++)
            bad |= nonfinite_bits_f(x[i]);
        if (bad)
            for (size_t i = base; i < end; i++)
                if (nonfinite_bits_f(x[i]))
                    return i;
    }
    return n;
}

size_t curv__first_nonfinite_f(const float *x, size_t n)
{
    return first_nonfinite_f(x, n);
}

/* Eight interleaved partial sums (lane i mod 8; the tail in lane 0)
 * added in order at the end: eight additions in flight instead of one
 * chain, and the same bits whatever vector width a clone uses (each
 * lane's arithmetic is scalar IEEE, nothing reassociated). HF's CG sums
 * (hf_cg.c) use the same lanes. */
CURV__VECTOR_CLONES static double dot8(const double *restrict x, const double *restrict y, size_t n)
{
    double acc[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (size_t l = 0; l < 8; l++)
            acc[l] += x[i + l] * y[i + l];
    for (; i < n; i++)
        acc[0] += x[i] * y[i];
    double t = 0;
    for (size_t l = 0; l < 8; l++)
        t += acc[l];
    return t;
}

double curv__dot(const double *x, const double *y, size_t n)
{
    return dot8(x, y, n);
}

int curv__valid_sums(const double *x, size_t n)
{
    if (curv__first_nonfinite(x, n) < n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (x[i] < 0)
            return 0;
    return 1;
}

void curv_free(void *p)
{
    curv__free(p);
}
