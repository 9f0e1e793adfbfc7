/* SPDX-License-Identifier: MIT */
/* SQLite's memory: through curvd_mem, and given back for what the store
 * hands out (state blobs, stored replies). */
#include <sqlite3.h>

#include "http/mem.h"
#include "store/store.h"

/* SQLite's memory through curvd_mem (its record buffers for a large state
 * are tens of MB per commit). SQLite rounds sizes with xRoundup first, so
 * the size kept in the header is what xSize must report. */
static void *sq_malloc(int n)
{
    return n < 0 ? NULL : curvd_mem_alloc((size_t)n);
}

static void *sq_realloc(void *p, int n)
{
    return n < 0 ? NULL : curvd_mem_realloc(p, (size_t)n);
}

static int sq_size(void *p)
{
    return (int)curvd_mem_size(p);
}

static int sq_roundup(int n)
{
    return (n + 7) & ~7;
}

static int sq_init(void *arg)
{
    (void)arg;
    return SQLITE_OK;
}

static void sq_shutdown(void *arg)
{
    (void)arg;
}

int curvd_store_use_mem(void)
{
    static const sqlite3_mem_methods sq = {sq_malloc,  curvd_mem_free, sq_realloc,  sq_size,
                                           sq_roundup, sq_init,        sq_shutdown, NULL};
    return sqlite3_config(SQLITE_CONFIG_MALLOC, &sq) == SQLITE_OK ? 0 : -1;
}

void curvd_store_free(void *p)
{
    sqlite3_free(p);
}
