/* SPDX-License-Identifier: MIT */
/*
 * The PostgreSQL backend of the store (backend.h), through libpq; internal
 * to pg*.c. One connection per store, under the store's mutex, reset when
 * it is lost; the tables are SQLite's (bytea for blobs, bigint for
 * integers), made by migrations/pg/ (curvd_pg_migrations). Every query
 * asks for binary results (integers are all bigint); parameters go as
 * text except blobs, which go as binary.
 */
#ifndef CURVD_STORE_PG_H
#define CURVD_STORE_PG_H

#include <libpq-fe.h>
#include <pthread.h>

#include "store/backend.h"
#include "store/trouble.h"

/* bytea's limit is 1 GiB; past it (or past libpq's int lengths) the
 * caller's value is at fault, as with SQLite's blob limit: INVALID. */
#define PG_MAX_BLOB (((size_t)1 << 30) - 1)

/* $n is fenced: the session's lease epoch, or any when it is -1. */
#define FENCE(n) " AND (" n "::bigint = -1 OR lease_epoch = " n "::bigint)"

/* The store's clock in SQL: unix ms of PostgreSQL's clock_timestamp(). */
#define PG_NOW_MS "(floor(extract(epoch FROM clock_timestamp()) * 1000))::bigint"

struct pg_store {
    struct curvd_store base; /* first: the ops, the group commit, --history */
    PGconn *conn;
    pthread_mutex_t mu;  /* the connection's lock, held by every operation */
    int synchronous;     /* synchronous_commit on (--durability full) */
    int lock_timeout_ms; /* curvd_store_set_busy_timeout */
    int writing;         /* the open transaction is a write one */
};

static inline struct pg_store *pg_of(struct curvd_store *base)
{
    return (struct pg_store *)(void *)base;
}

/* Parameters of one statement: $1, $2, ... in the order added. */
#define PG_MAX_ARGS 12
struct pg_args {
    int n;
    const char *v[PG_MAX_ARGS];
    int len[PG_MAX_ARGS];
    int fmt[PG_MAX_ARGS];
    char num[PG_MAX_ARGS][24];
};

/* A text (NULL: SQL NULL), an integer, a blob (@p may be NULL when @n is 0). */
void pg_text(struct pg_args *a, const char *t);
void pg_int(struct pg_args *a, int64_t v);
void pg_blob(struct pg_args *a, const void *p, size_t n);

/* Run @sql with @a (NULL: none). On success, OK and *@res (free it with
 * PQclear; NULL when @res is NULL). Otherwise the status its SQLSTATE
 * means (BUSY, FULL, INVALID, ERROR; @conflict for a unique violation,
 * CONFLICT unless told 0) with "@what: message" in @err; a lost
 * connection or a full disk is also storage trouble (trouble.h). */
int pg_run(struct pg_store *st, const char *sql, struct pg_args *a, PGresult **res,
           const char *what, char *err, size_t errlen);
/* pg_run with the store's connection taken and released around it. */
int pg_query(struct pg_store *st, const char *sql, struct pg_args *a, PGresult **res,
             const char *what, char *err, size_t errlen);
/* pg_run with the session id @id as $1, its only parameter. */
int pg_run_id(struct pg_store *st, const char *sql, const char *id, PGresult **res,
              const char *what, char *err, size_t errlen);
/* As pg_run, with the rows it touched in *@changes. */
int pg_change(struct pg_store *st, const char *sql, struct pg_args *a, int *changes,
              const char *what, char *err, size_t errlen);

/* Take the store's connection (reconnecting a lost one): OK, or ERROR
 * with the lock released. pg_leave releases it. */
int pg_enter(struct pg_store *st, char *err, size_t errlen);
void pg_leave(struct pg_store *st);

/* Transactions: a write one, a read one (one snapshot: REPEATABLE READ),
 * and their end. pg_commit_write marks the store healthy again (trouble.h);
 * pg_end commits on OK and rolls back otherwise, returning @status or the
 * commit's failure. */
int pg_begin(struct pg_store *st, char *err, size_t errlen);
int pg_begin_read(struct pg_store *st, char *err, size_t errlen);
int pg_end(struct pg_store *st, int status, char *err, size_t errlen);

/* Columns of a binary result: a bigint (0 for NULL), an owned text copy
 * (NULL for NULL; -1 when out of memory), whether NULL. */
int64_t pg_i64(const PGresult *r, int row, int col);
int pg_dup(const PGresult *r, int row, int col, char **out);
int pg_null(const PGresult *r, int row, int col);

/* The operations of pg_read.c, pg_write.c and pg_lease.c. */
int pg_get(struct curvd_store *base, const char *tenant, const char *id, int with_state,
           struct curvd_session *out, char *err, size_t errlen);
int pg_list(struct curvd_store *base, const char *tenant, size_t max, int64_t after_time,
            const char *after_id, const char *label_key, const char *label_value,
            struct curvd_session_list *out, char *err, size_t errlen);
int pg_get_response(struct curvd_store *base, const char *tenant, const char *id,
                    struct curvd_step_response *out, char *err, size_t errlen);
int pg_count(struct curvd_store *base, const char *tenant, int64_t *out, char *err, size_t errlen);
int pg_history(struct curvd_store *base, const char *tenant, const char *id, int64_t since,
               size_t page_size, struct curvd_history_page *out, char *err, size_t errlen);
int pg_create(struct curvd_store *base, const struct curvd_session_new *s, int64_t *created_at,
              char *err, size_t errlen);
int pg_delete(struct curvd_store *base, const char *tenant, const char *id, char *err,
              size_t errlen);
int pg_commit_group(struct curvd_store *base, struct curvd_commit_item **items, size_t n);
int pg_update_state(struct curvd_store *base, const char *tenant, const char *id,
                    int64_t expected_step, int64_t epoch, const struct curvd_state_in *state,
                    const char *meta, int64_t *current_step, char *err, size_t errlen);
int pg_snapshot(struct curvd_store *base, const char *tenant, const char *id, int64_t step,
                int64_t epoch, const struct curvd_state_in *state, int64_t *current_step, char *err,
                size_t errlen);
int pg_set_idle_ttl(struct curvd_store *base, const char *tenant, const char *id, int has,
                    int64_t ttl_s, char *err, size_t errlen);
int pg_expire(struct curvd_store *base, int64_t now, int64_t default_ttl_s, size_t max, char **ids,
              size_t *n, char *err, size_t errlen);
int pg_set_name_labels(struct curvd_store *base, const char *tenant, const char *id, int set_name,
                       const char *name, int set_labels, const char *labels, char *err,
                       size_t errlen);
int pg_set_history(struct curvd_store *base, const char *tenant, const char *id, int has,
                   int64_t steps, char *err, size_t errlen);
int pg_lease_acquire(struct curvd_store *base, const char *tenant, const char *id,
                     const char *owner, int64_t ttl_ms, struct curvd_lease *out, char *err,
                     size_t errlen);
int pg_lease_renew(struct curvd_store *base, const char *tenant, const char *id, const char *owner,
                   int64_t epoch, int64_t ttl_ms, struct curvd_lease *out, char *err,
                   size_t errlen);
int pg_lease_release(struct curvd_store *base, const char *tenant, const char *id,
                     const char *owner, int64_t epoch, char *err, size_t errlen);

/* Inside the caller's write transaction (pg_write.c): @state as session
 * @id's new snapshot (the parts that changed; its log deleted); and its
 * history rows past its bound deleted. */
int pg_write_snapshot(struct pg_store *st, const char *id, const struct curvd_state_in *state,
                      char *err, size_t errlen);
int pg_prune_history(struct pg_store *st, const char *id, char *err, size_t errlen);

/* Inside a write transaction: the miss of a write fenced by @epoch and
 * conditioned on the session's step: NOT_FOUND, FENCED, or CONFLICT with
 * the step in *@current_step (may be NULL). */
int pg_explain_miss(struct pg_store *st, const char *tenant, const char *id, int64_t epoch,
                    int64_t *current_step, char *err, size_t errlen);

#endif
