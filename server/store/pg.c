/* SPDX-License-Identifier: MIT */
/* The PostgreSQL backend: its connection, statements, transactions and
 * migrations (pg.h); the operations are in pg_read.c, pg_write.c and
 * pg_lease.c. */
#include "store/pg.h"

#include <arpa/inet.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/migrations.h"

#define fail curvd_store_fail

void pg_text(struct pg_args *a, const char *t)
{
    a->v[a->n] = t;
    a->len[a->n] = 0;
    a->fmt[a->n++] = 0;
}

void pg_int(struct pg_args *a, int64_t v)
{
    snprintf(a->num[a->n], sizeof a->num[a->n], "%lld", (long long)v);
    pg_text(a, a->num[a->n]);
}

void pg_blob(struct pg_args *a, const void *p, size_t n)
{
    a->v[a->n] = n ? p : ""; /* never NULL: that would be SQL NULL */
    a->len[a->n] = (int)n;   /* the caller keeps n below PG_MAX_BLOB */
    a->fmt[a->n++] = 1;
}

/* What a failed statement's SQLSTATE means for the caller. */
static int state_status(const char *sqlstate)
{
    if (!sqlstate)
        return CURVD_STORE_ERROR;
    if (!strcmp(sqlstate, "23505"))
        return CURVD_STORE_CONFLICT;
    if (!strcmp(sqlstate, "40001") || !strcmp(sqlstate, "40P01") || !strcmp(sqlstate, "55P03") ||
        !strcmp(sqlstate, "57014")) /* serialization, deadlock, lock_timeout, cancelled */
        return CURVD_STORE_BUSY;
    if (!strcmp(sqlstate, "53100"))
        return CURVD_STORE_FULL;
    if (!strcmp(sqlstate, "54000")) /* program_limit_exceeded: a value too large */
        return CURVD_STORE_INVALID;
    return CURVD_STORE_ERROR;
}

/* libpq's message @m as one line (it has newlines and tabs), in a static
 * buffer of the calling thread: the store's lock is held. */
static const char *one_line(const char *m)
{
    static _Thread_local char buf[512];
    size_t n = 0;
    for (; *m && n + 1 < sizeof buf; m++) {
        char c = *m == '\n' || *m == '\t' ? ' ' : *m;
        if (c != ' ' || (n && buf[n - 1] != ' '))
            buf[n++] = c;
    }
    while (n && buf[n - 1] == ' ')
        n--;
    buf[n] = '\0';
    return buf;
}

int pg_run(struct pg_store *st, const char *sql, struct pg_args *a, PGresult **res,
           const char *what, char *err, size_t errlen)
{
    PGresult *r = PQexecParams(st->conn, sql, a ? a->n : 0, NULL, a ? a->v : NULL,
                               a ? a->len : NULL, a ? a->fmt : NULL, 1);
    ExecStatusType x = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (x == PGRES_COMMAND_OK || x == PGRES_TUPLES_OK) {
        if (res)
            *res = r;
        else
            PQclear(r);
        return CURVD_STORE_OK;
    }
    char msg[512];
    snprintf(msg, sizeof msg, "%s",
             one_line(r ? PQresultErrorMessage(r) : PQerrorMessage(st->conn)));
    int status = r ? state_status(PQresultErrorField(r, PG_DIAG_SQLSTATE)) : CURVD_STORE_ERROR;
    PQclear(r);
    if (status == CURVD_STORE_BUSY) /* as SQLite says it, for the caller's 503 */
        return fail(err, errlen, status, "%s: the database is locked by another writer (%s)", what,
                    msg);
    /* The server or the disk, not the request: log it, /readyz says so. */
    if (status == CURVD_STORE_FULL || PQstatus(st->conn) == CONNECTION_BAD)
        curvd_trouble_failed(&st->base.trouble, status == CURVD_STORE_FULL, what, msg);
    return fail(err, errlen, status, "%s: %s", what, msg);
}

int pg_query(struct pg_store *st, const char *sql, struct pg_args *a, PGresult **res,
             const char *what, char *err, size_t errlen)
{
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_run(st, sql, a, res, what, err, errlen);
    pg_leave(st);
    return status;
}

int pg_run_id(struct pg_store *st, const char *sql, const char *id, PGresult **res,
              const char *what, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    return pg_run(st, sql, &a, res, what, err, errlen);
}

int pg_change(struct pg_store *st, const char *sql, struct pg_args *a, int *changes,
              const char *what, char *err, size_t errlen)
{
    PGresult *r = NULL;
    int status = pg_run(st, sql, a, &r, what, err, errlen);
    if (status == CURVD_STORE_OK)
        *changes = atoi(PQcmdTuples(r));
    PQclear(r);
    return status;
}

/* The session settings of a new connection: --durability and the lock
 * wait (0 is PostgreSQL's "no limit": 1 ms is the nearest to "at once"). */
static int setup_session(struct pg_store *st, char *err, size_t errlen)
{
    char sql[160];
    snprintf(sql, sizeof sql,
             "SET synchronous_commit = %s; SET lock_timeout = %d; SET client_min_messages = "
             "warning",
             st->synchronous ? "on" : "off", st->lock_timeout_ms ? st->lock_timeout_ms : 1);
    PGresult *r = PQexec(st->conn, sql);
    int ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok ? CURVD_STORE_OK
              : fail(err, errlen, CURVD_STORE_ERROR, "setting up the connection: %s",
                     one_line(PQerrorMessage(st->conn)));
}

int pg_enter(struct pg_store *st, char *err, size_t errlen)
{
    pthread_mutex_lock(&st->mu);
    if (PQstatus(st->conn) == CONNECTION_OK)
        return CURVD_STORE_OK;
    PQreset(st->conn); /* the server restarted, or the network failed: once per call */
    int status = PQstatus(st->conn) == CONNECTION_OK
                     ? setup_session(st, err, errlen)
                     : fail(err, errlen, CURVD_STORE_ERROR, "cannot reach PostgreSQL: %s",
                            one_line(PQerrorMessage(st->conn)));
    if (status != CURVD_STORE_OK) {
        pthread_mutex_unlock(&st->mu);
    }
    return status;
}

void pg_leave(struct pg_store *st)
{
    pthread_mutex_unlock(&st->mu);
}

int pg_begin(struct pg_store *st, char *err, size_t errlen)
{
    st->writing = 1;
    return pg_run(st, "BEGIN", NULL, NULL, "BEGIN", err, errlen);
}

int pg_begin_read(struct pg_store *st, char *err, size_t errlen)
{
    st->writing = 0;
    return pg_run(st, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", NULL, NULL, "BEGIN", err,
                  errlen);
}

int pg_end(struct pg_store *st, int status, char *err, size_t errlen)
{
    if (status == CURVD_STORE_OK) {
        status = pg_run(st, "COMMIT", NULL, NULL, "COMMIT", err, errlen);
        if (status == CURVD_STORE_OK && st->writing)
            curvd_trouble_write_ok(&st->base.trouble);
        return status;
    }
    /* The error that led here is the one to report; a lost connection
     * has no transaction left to end. */
    PQclear(PQexec(st->conn, "ROLLBACK"));
    return status;
}

int64_t pg_i64(const PGresult *r, int row, int col)
{
    if (PQgetisnull(r, row, col) || PQgetlength(r, row, col) != 8)
        return 0;
    uint32_t hi, lo;
    const char *v = PQgetvalue(r, row, col);
    memcpy(&hi, v, 4);
    memcpy(&lo, v + 4, 4);
    return (int64_t)((uint64_t)ntohl(hi) << 32 | ntohl(lo));
}

int pg_null(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col);
}

int pg_dup(const PGresult *r, int row, int col, char **out)
{
    *out = NULL;
    if (PQgetisnull(r, row, col))
        return 0;
    *out = curvd_store_strndup(PQgetvalue(r, row, col), (size_t)PQgetlength(r, row, col));
    return *out ? 0 : -1;
}

/* Apply the migrations the database lacks, all in one transaction,
 * under a lock that makes daemons starting together take turns. */
static int migrate(struct pg_store *st, char *err, size_t errlen)
{
    PGresult *r = NULL;
    int status = pg_begin(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_run(st, "SELECT pg_advisory_xact_lock(1668445796)", /* "crvd" */
                        NULL, NULL, "locking the schema", err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_run(st, "CREATE TABLE IF NOT EXISTS curvd_schema (version bigint NOT NULL)",
                        NULL, NULL, "creating curvd_schema", err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_run(st, "SELECT coalesce(max(version), 0) FROM curvd_schema", NULL, &r,
                        "reading the schema version", err, errlen);
    int64_t version = status == CURVD_STORE_OK ? pg_i64(r, 0, 0) : 0;
    PQclear(r);
    if (status == CURVD_STORE_OK && (version < 0 || version > curvd_pg_migration_count))
        status = fail(err, errlen, CURVD_STORE_ERROR,
                      "database schema version %lld is newer than this curvd knows (%u); "
                      "upgrade curvd",
                      (long long)version, curvd_pg_migration_count);
    for (unsigned i = (unsigned)version; status == CURVD_STORE_OK && i < curvd_pg_migration_count;
         i++) {
        PGresult *m = PQexec(st->conn, curvd_pg_migrations[i].sql);
        if (!m || PQresultStatus(m) != PGRES_COMMAND_OK)
            status = fail(err, errlen, CURVD_STORE_ERROR, "migration pg/%s failed: %s",
                          curvd_pg_migrations[i].name, one_line(PQerrorMessage(st->conn)));
        PQclear(m);
    }
    if (status == CURVD_STORE_OK && version < curvd_pg_migration_count) {
        struct pg_args a = {0};
        pg_int(&a, curvd_pg_migration_count);
        status = pg_run(st, "DELETE FROM curvd_schema", NULL, NULL, "recording the schema version",
                        err, errlen);
        if (status == CURVD_STORE_OK)
            status = pg_run(st, "INSERT INTO curvd_schema VALUES ($1)", &a, NULL,
                            "recording the schema version", err, errlen);
    }
    return pg_end(st, status, err, errlen);
}

static void pg_close(struct curvd_store *base)
{
    struct pg_store *st = pg_of(base);
    curvd_store_base_stop(&st->base);
    PQfinish(st->conn);
    curvd_trouble_clear(&st->base.trouble);
    pthread_mutex_destroy(&st->mu);
    sqlite3_free(st);
}

static const struct curvd_store_ops pg_ops;

int curvd_pg_open(const char *url, enum curvd_durability durability, struct curvd_store **out,
                  char *err, size_t errlen)
{
    struct pg_store *st = sqlite3_malloc64(sizeof *st);
    if (!st)
        return curvd_store_no_memory(err, errlen);
    memset(st, 0, sizeof *st);
    char shown[1024];
    curvd_store_shown(url, shown, sizeof shown);
    curvd_trouble_init(&st->base.trouble, shown);
    pthread_mutex_init(&st->mu, NULL);
    st->synchronous = durability == CURVD_DURABILITY_FULL;
    st->lock_timeout_ms = CURVD_STORE_BUSY_TIMEOUT_MS;
    st->conn = PQconnectdb(url);
    int status = CURVD_STORE_OK;
    if (!st->conn)
        status = curvd_store_no_memory(err, errlen);
    else if (PQstatus(st->conn) != CONNECTION_OK)
        status = fail(err, errlen, CURVD_STORE_ERROR, "cannot connect: %s",
                      one_line(PQerrorMessage(st->conn)));
    if (status == CURVD_STORE_OK)
        status = setup_session(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = migrate(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = curvd_store_base_init(&st->base, &pg_ops, err, errlen);
    if (status != CURVD_STORE_OK) {
        if (err && errlen) { /* which database: there may be several */
            char why[1024];
            snprintf(why, sizeof why, "%s", err);
            fail(err, errlen, status, "database %s: %s", shown, why);
        }
        st->base.ops = &pg_ops;
        pg_close(&st->base);
        return status;
    }
    *out = &st->base;
    return CURVD_STORE_OK;
}

static int pg_set_busy_timeout(struct curvd_store *base, int ms, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    st->lock_timeout_ms = ms;
    status = setup_session(st, err, errlen);
    pg_leave(st);
    return status;
}

/* PostgreSQL checkpoints its own WAL: nothing to report or ask for. */
static void pg_wal(struct curvd_store *base, struct curvd_store_wal *out)
{
    (void)base, (void)out;
}

static void pg_checkpoint_soon(struct curvd_store *base)
{
    (void)base;
}

static int pg_info(struct curvd_store *base, struct curvd_store_info *out, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    PGresult *r = NULL;
    int status = pg_query(st,
                          "SELECT (SELECT max(version) FROM curvd_schema),"
                          " current_setting('block_size')::bigint,"
                          " (current_setting('synchronous_commit') <> 'off')::int::bigint",
                          NULL, &r, "reading the settings", err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    memset(out, 0, sizeof *out);
    out->schema_version = (int)pg_i64(r, 0, 0);
    out->application_id = CURVD_STORE_APPLICATION_ID;
    out->page_size = (int)pg_i64(r, 0, 1);
    out->synchronous = pg_i64(r, 0, 2) ? 2 : 1;
    snprintf(out->journal_mode, sizeof out->journal_mode, "postgresql");
    PQclear(r);
    return CURVD_STORE_OK;
}

static const struct curvd_store_ops pg_ops = {
    .name = "postgresql",
    .close = pg_close,
    .set_busy_timeout = pg_set_busy_timeout,
    .wal = pg_wal,
    .checkpoint_soon = pg_checkpoint_soon,
    .info = pg_info,
    .create = pg_create,
    .get = pg_get,
    .list = pg_list,
    .delete = pg_delete,
    .commit_group = pg_commit_group,
    .update_state = pg_update_state,
    .snapshot = pg_snapshot,
    .get_response = pg_get_response,
    .count = pg_count,
    .set_idle_ttl = pg_set_idle_ttl,
    .expire = pg_expire,
    .set_name_labels = pg_set_name_labels,
    .history = pg_history,
    .set_history = pg_set_history,
    .lease_acquire = pg_lease_acquire,
    .lease_renew = pg_lease_renew,
    .lease_release = pg_lease_release,
};
