/* SPDX-License-Identifier: MIT */
#define _GNU_SOURCE /* mremap */
#include "http/mem.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* The header before each pointer; 16 bytes keep malloc's alignment. */
struct hdr {
    size_t size;   /* bytes asked for */
    size_t mapped; /* length of the mapping that starts at the header; 0: malloc'd */
};
#define HDR sizeof(struct hdr)

/* Mappings are whole 2 MiB units. Not madvised for huge pages: with THP
 * defrag "madvise" (Debian's default) such faults compact memory first. */
#define UNIT ((size_t)2 << 20)
#define IDLE_MAX_BYTES ((size_t)2 << 30)
#define IDLE_SLOTS 64

/* Sanitizer builds keep every block in malloc, so that LeakSanitizer still
 * sees each one (it does not track mappings). */
#if defined(__SANITIZE_ADDRESS__)
#define USE_MAPS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define USE_MAPS 0
#endif
#endif
#ifndef USE_MAPS
#define USE_MAPS 1
#endif

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    struct hdr *h[IDLE_SLOTS];
    size_t n, bytes;
    size_t maps, reuses, fresh_bytes;
} idle;

static struct hdr *hdr_of(const void *p)
{
    return (struct hdr *)((char *)p - HDR);
}

/* The idle mapping that fits @len best, wasting at most as much again: a
 * larger one would stay pinned by a small buffer that may live as long as
 * its session. */
static struct hdr *idle_take(size_t len)
{
    pthread_mutex_lock(&lock);
    size_t best = idle.n;
    for (size_t i = 0; i < idle.n; i++) {
        size_t m = idle.h[i]->mapped;
        if (m >= len && m - len <= len && (best == idle.n || m < idle.h[best]->mapped))
            best = i;
    }
    struct hdr *h = NULL;
    if (best < idle.n) {
        h = idle.h[best];
        idle.h[best] = idle.h[--idle.n];
        idle.bytes -= h->mapped;
        idle.reuses++;
    }
    pthread_mutex_unlock(&lock);
    return h;
}

/* Keep @h for reuse, unless that would pass the limits. */
static void idle_put(struct hdr *h)
{
    pthread_mutex_lock(&lock);
    int kept = idle.n < IDLE_SLOTS && idle.bytes + h->mapped <= IDLE_MAX_BYTES;
    if (kept) {
        idle.h[idle.n++] = h;
        idle.bytes += h->mapped;
    }
    pthread_mutex_unlock(&lock);
    if (!kept)
        munmap(h, h->mapped);
}

/* @bytes of new address space (their pages fault in on first use), in a
 * new mapping or a grown one. */
static void count_fresh(size_t bytes, int new_mapping)
{
    pthread_mutex_lock(&lock);
    idle.maps += new_mapping ? 1u : 0u;
    idle.fresh_bytes += bytes;
    pthread_mutex_unlock(&lock);
}

static size_t map_len(size_t bytes)
{
    return (bytes + HDR + UNIT - 1) / UNIT * UNIT;
}

static struct hdr *map_new(size_t len)
{
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
    count_fresh(len, 1);
    struct hdr *h = m;
    h->mapped = len;
    return h;
}

/* @h grown to @len bytes (moved if need be), or NULL with @h unchanged. */
static struct hdr *grow(struct hdr *h, size_t len)
{
    void *m = mremap(h, h->mapped, len, MREMAP_MAYMOVE);
    if (m == MAP_FAILED)
        return NULL;
    h = m;
    count_fresh(len - h->mapped, 0);
    h->mapped = len;
    return h;
}

void *curvd_mem_alloc(size_t bytes)
{
    if (bytes > SIZE_MAX - HDR - UNIT)
        return NULL;
    struct hdr *h;
    if (!USE_MAPS || bytes < CURVD_MEM_BIG) {
        h = malloc(HDR + bytes);
        if (h)
            h->mapped = 0;
    } else {
        size_t len = map_len(bytes);
        if (!(h = idle_take(len)))
            h = map_new(len);
    }
    if (!h)
        return NULL;
    h->size = bytes;
    return h + 1;
}

void *curvd_mem_realloc(void *p, size_t bytes)
{
    if (!p)
        return curvd_mem_alloc(bytes);
    if (bytes > SIZE_MAX - HDR - UNIT)
        return NULL;
    struct hdr *h = hdr_of(p);
    if (h->mapped && HDR + bytes <= h->mapped) {
        h->size = bytes;
        return p;
    }
    if (h->mapped) {
        /* An idle block's pages are already there: copying into it costs
         * less than faulting in the growth of this one. */
        size_t len = map_len(bytes);
        struct hdr *n = idle_take(len);
        if (n) {
            memcpy(n + 1, p, h->size);
            idle_put(h);
            h = n;
        } else if (!(h = grow(h, len))) {
            return NULL;
        }
    } else if (!USE_MAPS || bytes < CURVD_MEM_BIG) {
        h = realloc(h, HDR + bytes);
        if (!h)
            return NULL;
    } else {
        void *q = curvd_mem_alloc(bytes);
        if (!q)
            return NULL;
        memcpy(q, p, h->size);
        free(h);
        return q;
    }
    h->size = bytes;
    return h + 1;
}

void curvd_mem_free(void *p)
{
    if (!p)
        return;
    struct hdr *h = hdr_of(p);
    if (h->mapped)
        idle_put(h);
    else
        free(h);
}

size_t curvd_mem_size(const void *p)
{
    return p ? hdr_of(p)->size : 0;
}

void curvd_mem_stats(struct curvd_mem_stats *s)
{
    pthread_mutex_lock(&lock);
    *s = (struct curvd_mem_stats){idle.n, idle.bytes, idle.maps, idle.reuses, idle.fresh_bytes};
    pthread_mutex_unlock(&lock);
}

int curvd_mem_maps(void)
{
    return USE_MAPS;
}

void curvd_mem_trim(void)
{
    pthread_mutex_lock(&lock);
    while (idle.n) {
        struct hdr *h = idle.h[--idle.n];
        idle.bytes -= h->mapped;
        munmap(h, h->mapped);
    }
    pthread_mutex_unlock(&lock);
}
