/* SPDX-License-Identifier: MIT */
/* The library's one allocator (curv/alloc.h); every allocation in libcurv
 * goes through curv__malloc, curv__calloc, curv__realloc and curv__free.
 *
 * `current` is libcurv's one mutable global, against the rule of no
 * globals, and on purpose: memory must go back to the allocator it came
 * from, so the choice is the process's, not an object's (SQLite's
 * sqlite3_config(SQLITE_CONFIG_MALLOC) is the same). It is written only by
 * curv_set_allocator, before any object exists and any thread starts, and
 * only read afterwards, so the library stays thread-safe per object. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void *libc_alloc(size_t bytes)
{
    return malloc(bytes);
}

static void *libc_resize(void *p, size_t bytes)
{
    return realloc(p, bytes);
}

static void libc_release(void *p)
{
    free(p);
}

static curv_allocator current = {libc_alloc, libc_resize, libc_release};

void curv_set_allocator(const curv_allocator *a)
{
    if (a && a->alloc && a->resize && a->release)
        current = *a;
    else
        current = (curv_allocator){libc_alloc, libc_resize, libc_release};
}

void *curv__malloc(size_t bytes)
{
    return current.alloc(bytes ? bytes : 1);
}

void *curv__calloc(size_t n, size_t sz)
{
    size_t bytes;
    if (!curv__mul_ok(n, sz, &bytes))
        return NULL;
    void *p = curv__malloc(bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

char *curv__strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = curv__malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

void *curv__realloc(void *p, size_t bytes)
{
    return current.resize(p, bytes ? bytes : 1);
}

void curv__free(void *p)
{
    current.release(p);
}
