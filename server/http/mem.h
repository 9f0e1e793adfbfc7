/* SPDX-License-Identifier: MIT */
/*
 * mem - the daemon's allocator for buffers that may be large: request
 * bodies, step vectors, replies, and (installed by main.c) everything
 * libcurv and SQLite allocate.
 *
 * Why: glibc gives each thread its own arena, which keeps small allocations
 * uncontended, but an arena other than the main one serves anything over
 * 64 MiB with a fresh mmap and unmaps heaps as soon as they empty, so a
 * large step would page-fault hundreds of MB in again every time. Blocks
 * of 1 MiB and more therefore come from mappings kept for reuse (up to
 * 2 GiB of them idle: a 1e7-parameter JSON step has ~1 GB in flight);
 * smaller ones from malloc. /metrics shows the cache (curvd_large_buffer*).
 *
 * Every pointer carries a 16-byte header (size and mapping), so it must be
 * released with curvd_mem_free, never free(). Thread-safe.
 */
#ifndef CURVD_MEM_H
#define CURVD_MEM_H

#include <stddef.h>

/* Blocks from this size up are mappings. */
#define CURVD_MEM_BIG ((size_t)1 << 20)

/* curvd_mem_alloc - @bytes (0 allowed) aligned to 16, or NULL. */
void *curvd_mem_alloc(size_t bytes);

/* curvd_mem_realloc - like realloc(3); NULL @p allocates. On failure NULL
 * and @p unchanged. */
void *curvd_mem_realloc(void *p, size_t bytes);

/* curvd_mem_free - release @p; NULL is a no-op. */
void curvd_mem_free(void *p);

/* curvd_mem_size - the size @p was last allocated with. */
size_t curvd_mem_size(const void *p);

/* What the block cache holds now (for tests and /metrics). */
struct curvd_mem_stats {
    size_t idle_blocks, idle_bytes; /* mappings kept for reuse */
    size_t maps, reuses;            /* mmap calls, cache hits since start */
    size_t fresh_bytes;             /* bytes mapped or grown since start: pages still to fault in */
};
void curvd_mem_stats(struct curvd_mem_stats *s);

/* curvd_mem_maps - 1 when big blocks are mappings; 0 in sanitizer builds,
 * where every block is malloc'd so that LeakSanitizer sees it. */
int curvd_mem_maps(void);

/* curvd_mem_trim - unmap every idle block (at shutdown, and in tests). */
void curvd_mem_trim(void);

#endif
