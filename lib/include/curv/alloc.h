/* SPDX-License-Identifier: MIT */
/*
 * curv/alloc.h - where libcurv gets its memory.
 *
 * By default the C library's malloc, realloc and free. A program with its
 * own policy for large buffers (a server keeping big blocks mapped for
 * reuse, say) installs one allocator for the whole library, once, before
 * it creates any libcurv object.
 */
#ifndef CURV_ALLOC_H
#define CURV_ALLOC_H

#include <stddef.h>

#include "curv/status.h"

/* curv_allocator - malloc, realloc and free work-alikes: @alloc and
 * @resize return NULL when out of memory (leaving @resize's block as it
 * was), @release(NULL) does nothing. All three are called from any thread. */
typedef struct curv_allocator {
    void *(*alloc)(size_t bytes);
    void *(*resize)(void *p, size_t bytes);
    void (*release)(void *p);
} curv_allocator;

/*
 * curv_set_allocator - use @a (copied) for every later allocation, or the
 * C library's again when @a is NULL or lacks a function.
 * Memory must go back to the allocator it came from, so call this before
 * creating any object (layouts, configs, optimizers, blobs) and not while
 * any is alive. Not thread-safe: call it before starting threads.
 */
CURV_API void curv_set_allocator(const curv_allocator *a);

#endif
