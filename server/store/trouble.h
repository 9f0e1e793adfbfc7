/* SPDX-License-Identifier: MIT */
/*
 * Storage trouble: what the store knows about its disk, kept apart from
 * the SQL. Every storage failure (a full disk, an I/O error, a read-only
 * or damaged file) is logged with the database's path and marks the store
 * failing until a write commits again (/readyz reads it). A reserve file
 * beside the database (<db>-reserve, CURVD_STORE_RESERVE_BYTES) is given
 * back to the file system when a write finds the disk full, so that a
 * DELETE, which needs a few pages of WAL, can still run; it is made again
 * after a write commits. Thread-safe.
 */
#ifndef CURVD_TROUBLE_H
#define CURVD_TROUBLE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

/* The reserve: enough WAL for hundreds of DELETEs (each writes a few
 * pages once the state's pages are freed without being overwritten). */
#define CURVD_STORE_RESERVE_BYTES ((size_t)8 << 20)

struct curvd_trouble {
    char path[1024];         /* the database file */
    char reserve_path[1040]; /* path + "-reserve" */
    size_t reserve_bytes;    /* 0: no reserve */
    atomic_int failing;      /* a storage failure since the last commit */
    atomic_int reserve_held; /* the reserve file is there */
    pthread_mutex_t mu;      /* guards last */
    char last[1600];         /* the latest failure, for /readyz */
};

/* curvd_trouble_init - for the database @path, no reserve yet. */
void curvd_trouble_init(struct curvd_trouble *t, const char *path);
/* curvd_trouble_reserve - keep a reserve of @bytes, made now if it can be
 * (a warning is logged if not: it is then made after the next commit). */
void curvd_trouble_reserve(struct curvd_trouble *t, size_t bytes);
/* curvd_trouble_clear - release what init took (the reserve file stays). */
void curvd_trouble_clear(struct curvd_trouble *t);

/* curvd_trouble_failed - a storage failure while doing @what (SQLite's
 * message @msg); @full: the disk is full. Logs an error line, marks the
 * store failing, and on a full disk gives the reserve back. Returns 1 when
 * this call gave the reserve back (a retry may now succeed), else 0. */
int curvd_trouble_failed(struct curvd_trouble *t, int full, const char *what, const char *msg);

/* curvd_trouble_write_ok - a write committed: the store is no longer
 * failing, and a reserve given back is made again if space allows. */
void curvd_trouble_write_ok(struct curvd_trouble *t);

/* curvd_trouble_status - 0 when no storage failure is outstanding, else -1
 * with the latest failure's sentence in @msg[@cap]. */
int curvd_trouble_status(struct curvd_trouble *t, char *msg, size_t cap);

#endif
