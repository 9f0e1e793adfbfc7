/* SPDX-License-Identifier: MIT */
/* The SQLite backend of the store (backend.h); the model is in store.h. */
#include "store/store.h"

#include <inttypes.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "store/backend.h"
#include "store/checkpoint.h"
#include "store/history.h"
#include "store/lease.h"
#include "store/logfile.h"
#include "store/migrations.h"
#include "store/steplog.h"
#include "store/trouble.h"

#define STORE_STR_(x) #x
#define STORE_STR(x) STORE_STR_(x)

#define fail curvd_store_fail
#define no_memory curvd_store_no_memory
#define now_ms curvd_store_now_ms

/* Every statement the operations run, prepared once at open. Bindings:
 * ?1 is the session id and ?2 the tenant wherever both appear. */
enum stmt_id {
    S_INSERT,
    S_GET,
    S_LIST_FIRST,
    S_LIST_AFTER,
    S_DELETE,
    S_COMMIT,
    S_PUT_RESPONSE,
    S_UPDATE_STATE,
    S_AT_STEP,
    S_PUT_PART,
    S_TRIM_PARTS,
    S_GET_PARTS,
    S_STEP_OF,
    S_GET_RESPONSE,
    S_COUNT_ALL,
    S_COUNT_TENANT,
    S_COUNT_
};

#define SESSION_COLS "id, tenant, optimizer, meta, created_at, updated_at, step"
/* What a read of sessions returns (read_session): the row and its latest
 * step's number and report, by a join that never reads a reply's body. */
#define SESSION_READ                                                                               \
    "SELECT s.id, s.tenant, s.optimizer, s.meta, s.created_at, s.updated_at, s.step,"              \
    " r.step, r.report, s.idle_ttl_s, s.name, s.labels, s.history_steps"
/* The list's label filter: ?5 a JSON path '$."key"' (NULL: none), ?6 the value. */
#define LABEL_MATCH " AND (?5 IS NULL OR json_extract(s.labels, ?5) IS ?6)"
#define SESSION_FROM " FROM sessions AS s LEFT JOIN step_responses AS r ON r.session_id = s.id"

/* A write's lease condition (docs/CLUSTER.md): its epoch parameter @p is
 * the session's, or -1 (CURVD_STORE_ANY_EPOCH) for a write not fenced. */
#define FENCE(p) " AND (" p " < 0 OR lease_epoch = " p ")"

/* The state lives in state_parts (migration 0003); sessions.state stays
 * an empty blob. */
static const char *const stmt_sql[S_COUNT_] = {
    [S_INSERT] =
        "INSERT INTO sessions (" SESSION_COLS ", state, idle_ttl_s, name, labels, history_steps)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, x'', ?7, ?8, ?9, ?10)",
    [S_GET] = SESSION_READ SESSION_FROM " WHERE s.id = ?1 AND s.tenant = ?2",
    [S_LIST_FIRST] = SESSION_READ SESSION_FROM " WHERE s.tenant = ?2" LABEL_MATCH
                                               " ORDER BY s.created_at, s.id LIMIT ?3",
    [S_LIST_AFTER] = SESSION_READ SESSION_FROM " WHERE s.tenant = ?2" LABEL_MATCH
                                               " AND (s.created_at, s.id) > (?4, ?1)"
                                               " ORDER BY s.created_at, s.id LIMIT ?3",
    [S_DELETE] = "DELETE FROM sessions WHERE id = ?1 AND tenant = ?2",
    [S_COMMIT] = "UPDATE sessions SET step = ?3, updated_at = ?4"
                 " WHERE id = ?1 AND tenant = ?2 AND step = ?3 - 1" FENCE("?5"),
    [S_PUT_RESPONSE] = "INSERT INTO step_responses"
                       " (session_id, step, content_type, body, report, request_digest)"
                       " VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (session_id) DO UPDATE SET"
                       " step = excluded.step, content_type = excluded.content_type,"
                       " body = excluded.body, report = excluded.report,"
                       " request_digest = excluded.request_digest",
    [S_UPDATE_STATE] = "UPDATE sessions SET meta = ?3, updated_at = ?4"
                       " WHERE id = ?1 AND tenant = ?2 AND step = ?5" FENCE("?6"),
    /* Matches the session only at step ?3, and changes nothing. */
    [S_AT_STEP] =
        "UPDATE sessions SET step = step WHERE id = ?1 AND tenant = ?2 AND step = ?3" FENCE("?4"),
    [S_PUT_PART] = "INSERT INTO state_parts (session_id, idx, stamp, bytes) VALUES (?1, ?2, ?3, ?4)"
                   " ON CONFLICT (session_id, idx) DO UPDATE SET"
                   " stamp = excluded.stamp, bytes = excluded.bytes",
    [S_TRIM_PARTS] = "DELETE FROM state_parts WHERE session_id = ?1 AND idx >= ?2",
    /* length() of a blob comes from the record header: no overflow page is read. */
    [S_GET_PARTS] = "SELECT idx, rowid, stamp, length(bytes) FROM state_parts"
                    " WHERE session_id = ?1 ORDER BY idx",
    [S_STEP_OF] = "SELECT step, lease_epoch FROM sessions WHERE id = ?1 AND tenant = ?2",
    [S_GET_RESPONSE] = "SELECT r.rowid, r.step, r.content_type, length(r.body), r.report,"
                       " r.request_digest"
                       " FROM step_responses AS r JOIN sessions AS s ON s.id = r.session_id"
                       " WHERE r.session_id = ?1 AND s.tenant = ?2",
    [S_COUNT_ALL] = "SELECT count(*) FROM sessions",
    [S_COUNT_TENANT] = "SELECT count(*) FROM sessions WHERE tenant = ?1",
};

struct sqlite_store {
    struct curvd_store base;      /* first: the ops, the group commit, --history */
    struct curvd_batcher *writer; /* records written ahead of their commits */
    sqlite3 *db;
    sqlite3_mutex *mu; /* the connection's own (recursive) mutex */
    sqlite3_stmt *stmt[S_COUNT_];
    struct curvd_checkpointer *ckpt; /* WAL checkpoints on a thread of their own */
    struct curvd_history *hist;      /* the step history's statements */
    struct curvd_steplog *log;       /* the step log's statements */
    struct curvd_leases *leases;     /* the leases' statements */
};

static struct sqlite_store *sq(struct curvd_store *base)
{
    return (struct sqlite_store *)(void *)base;
}

/* Lock contention is worth telling apart (the caller may answer 503), and
 * an over-long blob is the caller's fault, not the database's. */
static int rc_status(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return CURVD_STORE_BUSY;
    case SQLITE_TOOBIG:
        return CURVD_STORE_INVALID;
    case SQLITE_FULL:
        return CURVD_STORE_FULL;
    default:
        return CURVD_STORE_ERROR;
    }
}

/* Report the connection's latest error; call before any other SQLite call
 * can overwrite it (the store mutex keeps other threads out). A blob past
 * 2 GiB is refused without a message on the connection, hence errstr. */
static int db_fail(struct sqlite_store *st, int rc, char *err, size_t errlen, const char *what)
{
    const char *msg = (rc & 0xff) == SQLITE_TOOBIG ? sqlite3_errstr(rc) : sqlite3_errmsg(st->db);
    switch (rc & 0xff) { /* the disk or the file, not the request: log it, /readyz says so */
    case SQLITE_FULL:
    case SQLITE_IOERR:
    case SQLITE_READONLY:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
        curvd_trouble_failed(&st->base.trouble, (rc & 0xff) == SQLITE_FULL, what, msg);
        break;
    default:
        break;
    }
    return fail(err, errlen, rc_status(rc), "%s: %s", what, msg);
}

/* Commit a write transaction: the store is healthy again once one does. */
static int commit_write(struct sqlite_store *st, char *err, size_t errlen)
{
    int rc = sqlite3_exec(st->db, "COMMIT", NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        return db_fail(st, rc, err, errlen, "COMMIT");
    if (st->log)
        curvd_steplog_committed(st->log);
    curvd_trouble_write_ok(&st->base.trouble);
    return CURVD_STORE_OK;
}

/* A step record's file failed while doing @what (the sentence @why). */
static int file_fail(struct sqlite_store *st, int rc, const char *why, char *err, size_t errlen,
                     const char *what)
{
    curvd_trouble_failed(&st->base.trouble, rc == SQLITE_FULL, what, why);
    return fail(err, errlen, rc_status(rc), "%s: %s", what, why);
}

static int exec_sql(struct sqlite_store *st, const char *sql, char *err, size_t errlen)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, sql);
}

/* End a failed transaction. Its status is not reported: the error that
 * led here is the one the caller needs, and a connection still inside a
 * transaction makes the next BEGIN fail with its own message. */
static void rollback(struct sqlite_store *st)
{
    if (!sqlite3_get_autocommit(st->db))
        (void)sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    if (st->log)
        curvd_steplog_rolled_back(st->log);
}

/* Leave a statement ready for its next use. sqlite3_reset() repeats the
 * error of the last step, which the caller has already handled; resetting
 * also ends the statement's hold on the read snapshot. */
static void done(sqlite3_stmt *s)
{
    (void)sqlite3_reset(s);
    (void)sqlite3_clear_bindings(s);
}

/* Bind ?1, ?2, ... in turn from @spec: 't' a text (NULL binds NULL), 'i'
 * an int64_t, 'b' a blob as (const void *, size_t), '-' skips one. Blobs
 * are bound SQLITE_STATIC, never copied by the store; an empty one is bound
 * as a zero-length blob, since a NULL pointer would bind SQL NULL. */
static int bind(sqlite3_stmt *q, const char *spec, ...)
{
    va_list ap;
    va_start(ap, spec);
    int rc = SQLITE_OK;
    for (int i = 1; rc == SQLITE_OK && spec[i - 1]; i++) {
        if (spec[i - 1] == 't') {
            const char *t = va_arg(ap, const char *);
            rc = t ? sqlite3_bind_text(q, i, t, -1, SQLITE_STATIC) : sqlite3_bind_null(q, i);
        } else if (spec[i - 1] == 'i') {
            rc = sqlite3_bind_int64(q, i, va_arg(ap, int64_t));
        } else if (spec[i - 1] == 'b') {
            const void *p = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            rc =
                n ? sqlite3_bind_blob64(q, i, p, n, SQLITE_STATIC) : sqlite3_bind_zeroblob(q, i, 0);
        }
    }
    va_end(ap);
    return rc;
}

/* Step @q, which returns no rows, and reset it; @changes (may be NULL)
 * gets the number of rows it touched. */
static int run(struct sqlite_store *st, sqlite3_stmt *q, int *changes, const char *what, char *err,
               size_t errlen)
{
    int rc = sqlite3_step(q);
    int status = rc == SQLITE_DONE ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, what);
    if (changes)
        *changes = sqlite3_changes(st->db);
    (void)sqlite3_reset(q); /* repeats the step's error, handled above */
    return status;
}

/* An owned copy of a text column; NULL stays NULL. Return 0 or -1 (OOM). */
static int dup_text(sqlite3_stmt *q, int col, char **out)
{
    *out = NULL;
    if (sqlite3_column_type(q, col) == SQLITE_NULL)
        return 0;
    const unsigned char *t = sqlite3_column_text(q, col);
    if (!t)
        return -1;
    size_t n = (size_t)sqlite3_column_bytes(q, col);
    *out = sqlite3_malloc64(n + 1);
    if (!*out)
        return -1;
    memcpy(*out, t, n + 1);
    return 0;
}

/* Read row @row's blob (@len bytes) into @dst with the incremental-blob
 * API: sqlite3_column_blob() would first assemble a large value in a
 * buffer of its own, and the copy into ours would be a second pass. The
 * first call opens *@b, later ones move it to their row; the caller
 * closes it with blob_close(). Runs inside the caller's read transaction,
 * so @len and the bytes belong together. */
static int blob_read_row(struct sqlite_store *st, sqlite3_blob **b, const char *table,
                         const char *col, sqlite3_int64 row, void *dst, sqlite3_int64 len,
                         char *err, size_t errlen)
{
    int rc = *b ? sqlite3_blob_reopen(*b, row)
                : sqlite3_blob_open(st->db, "main", table, col, row, 0, b);
    if (rc == SQLITE_OK)
        rc = sqlite3_blob_read(*b, dst, (int)len, 0); /* len <= SQLITE_MAX_LENGTH < INT_MAX */
    return rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, "reading a blob");
}

/* Close a handle of blob_read_row() (NULL: a no-op); a failure to close
 * matters only when the reads went well, whose @status it replaces. */
static int blob_close(struct sqlite_store *st, sqlite3_blob *b, int status, char *err,
                      size_t errlen)
{
    int rc = sqlite3_blob_close(b);
    if (status == CURVD_STORE_OK && rc != SQLITE_OK)
        status = db_fail(st, rc, err, errlen, "reading a blob");
    return status;
}

/* Row @row's blob of @len bytes, into a new buffer (none when empty). */
static int read_blob(struct sqlite_store *st, const char *table, const char *col, sqlite3_int64 row,
                     sqlite3_int64 len, unsigned char **out, size_t *out_len, char *err,
                     size_t errlen)
{
    if (len <= 0)
        return CURVD_STORE_OK;
    unsigned char *buf = sqlite3_malloc64((sqlite3_uint64)len);
    if (!buf)
        return no_memory(err, errlen);
    sqlite3_blob *b = NULL;
    int status = blob_read_row(st, &b, table, col, row, buf, len, err, errlen);
    status = blob_close(st, b, status, err, errlen);
    if (status != CURVD_STORE_OK) {
        sqlite3_free(buf);
        return status;
    }
    *out = buf;
    *out_len = (size_t)len;
    return CURVD_STORE_OK;
}

/* Inside the caller's write transaction: write the parts of @s that
 * changed since what it says is stored, and delete stored parts past its
 * last one. */
static int write_parts(struct sqlite_store *st, const char *id, const struct curvd_state_in *s,
                       char *err, size_t errlen)
{
    sqlite3_stmt *q = st->stmt[S_PUT_PART];
    size_t n = curvd_state_part_count(s);
    int same = curvd_state_same_division(s), status = CURVD_STORE_OK;
    for (size_t i = 0; status == CURVD_STORE_OK && i < n; i++) {
        curv_state_part p = curvd_state_part_at(s, i);
        if (!curvd_state_part_changed(s, same, i))
            continue;
        int rc = bind(q, "tiib", id, (int64_t)i, curvd_stamp_to_db(p.stamp),
                      (const unsigned char *)s->blob + p.offset, p.len);
        status = rc == SQLITE_OK ? run(st, q, NULL, "writing a state part", err, errlen)
                                 : db_fail(st, rc, err, errlen, "binding a state part");
        done(q);
    }
    if (status != CURVD_STORE_OK || !curvd_state_may_trim(s))
        return status;
    q = st->stmt[S_TRIM_PARTS];
    int rc = bind(q, "ti", id, (int64_t)n);
    status = rc == SQLITE_OK ? run(st, q, NULL, "deleting state parts", err, errlen)
                             : db_fail(st, rc, err, errlen, "binding parameters");
    done(q);
    return status;
}

/* The rows of a stored state: rowid, stamp and length of each part. */
struct part_rows {
    sqlite3_int64 *row;
    curv_state_part *p;
    size_t n, cap;
    sqlite3_uint64 total;
};

static int part_rows_add(struct part_rows *r, sqlite3_int64 row, uint64_t stamp, sqlite3_int64 len)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 16;
        sqlite3_int64 *nrow = sqlite3_realloc64(r->row, cap * sizeof *nrow);
        if (nrow)
            r->row = nrow;
        curv_state_part *np = nrow ? sqlite3_realloc64(r->p, cap * sizeof *np) : NULL;
        if (!np)
            return -1;
        r->p = np;
        r->cap = cap;
    }
    r->row[r->n] = row;
    r->p[r->n++] =
        (curv_state_part){.offset = (size_t)r->total, .len = (size_t)len, .stamp = stamp};
    r->total += (sqlite3_uint64)len;
    return 0;
}

/* Session @id's parts in order (idx 0, 1, ... without a gap). */
static int list_parts(struct sqlite_store *st, const char *id, struct part_rows *r, char *err,
                      size_t errlen)
{
    sqlite3_stmt *q = st->stmt[S_GET_PARTS];
    int rc = bind(q, "t", id), status = CURVD_STORE_OK;
    while (status == CURVD_STORE_OK && rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        sqlite3_int64 len = sqlite3_column_int64(q, 3);
        if (sqlite3_column_int64(q, 0) != (sqlite3_int64)r->n)
            status = fail(err, errlen, CURVD_STORE_ERROR, "session %s: state part %zu is missing",
                          id, r->n);
        else if (part_rows_add(r, sqlite3_column_int64(q, 1),
                               curvd_stamp_from_db(sqlite3_column_int64(q, 2)), len) != 0)
            status = no_memory(err, errlen);
    }
    if (status == CURVD_STORE_OK && rc != SQLITE_DONE)
        status = db_fail(st, rc, err, errlen, "listing state parts");
    done(q);
    return status;
}

/* Session @id's state into @o: each part read into its place in one
 * buffer, and the parts' division and stamps. Inside the caller's read
 * transaction, so that the parts belong together. */
static int read_state(struct sqlite_store *st, const char *id, struct curvd_session *o, char *err,
                      size_t errlen)
{
    struct part_rows r = {0};
    unsigned char *buf = NULL;
    int status = list_parts(st, id, &r, err, errlen);
    if (status == CURVD_STORE_OK && r.total > 0 && !(buf = sqlite3_malloc64(r.total)))
        status = no_memory(err, errlen);
    sqlite3_blob *b = NULL;
    for (size_t i = 0; status == CURVD_STORE_OK && i < r.n; i++)
        if (r.p[i].len) /* never empty as written; an empty part has nothing to read */
            status = blob_read_row(st, &b, "state_parts", "bytes", r.row[i], buf + r.p[i].offset,
                                   (sqlite3_int64)r.p[i].len, err, errlen);
    status = blob_close(st, b, status, err, errlen);
    sqlite3_free(r.row);
    if (status != CURVD_STORE_OK) {
        sqlite3_free(r.p);
        sqlite3_free(buf);
        return status;
    }
    o->state = buf;
    o->state_len = (size_t)r.total;
    o->parts = r.n ? r.p : NULL;
    o->n_parts = r.n;
    if (!r.n)
        sqlite3_free(r.p);
    return CURVD_STORE_OK;
}

/* The first column of a one-row query (PRAGMAs, counts), into @i if not
 * NULL, else as text into @t[@tlen]. */
static int query_one(struct sqlite_store *st, const char *sql, int *i, char *t, size_t tlen,
                     char *err, size_t errlen)
{
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(st->db, sql, -1, &q, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        if (i) {
            *i = sqlite3_column_int(q, 0);
        } else {
            const unsigned char *v = sqlite3_column_text(q, 0);
            snprintf(t, tlen, "%s", v ? (const char *)v : "");
        }
    }
    int status = rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, sql);
    (void)sqlite3_finalize(q); /* repeats the step's error, handled above */
    return status;
}

/* Is this file ours (or empty), and not from a newer curvd? Reads only, so
 * a refused file is left exactly as it was. *@version gets user_version. */
static int check_identity(struct sqlite_store *st, int *version, char *err, size_t errlen)
{
    int app = 0, objects = 0;
    int status = query_one(st, "PRAGMA application_id", &app, NULL, 0, err, errlen);
    if (status == CURVD_STORE_OK)
        status = query_one(st, "PRAGMA user_version", version, NULL, 0, err, errlen);
    if (status == CURVD_STORE_OK)
        status =
            query_one(st, "SELECT count(*) FROM sqlite_schema", &objects, NULL, 0, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    int fresh = app == 0 && *version == 0 && objects == 0;
    if (app != CURVD_STORE_APPLICATION_ID && !fresh)
        return fail(err, errlen, CURVD_STORE_ERROR,
                    "not a curvd database: application_id is 0x%08x (want 0x%08x), with %d schema "
                    "objects",
                    (unsigned)app, (unsigned)CURVD_STORE_APPLICATION_ID, objects);
    if (*version < 0 || (unsigned)*version > curvd_migration_count)
        return fail(err, errlen, CURVD_STORE_ERROR,
                    "database schema version %d is newer than this curvd knows (%u); upgrade curvd",
                    *version, curvd_migration_count);
    return CURVD_STORE_OK;
}

/* page_size must precede WAL: it cannot change once the file is in WAL. */
static int configure(struct sqlite_store *st, enum curvd_durability durability, char *err,
                     size_t errlen)
{
    char mode[16];
    int status = exec_sql(st, "PRAGMA page_size = " STORE_STR(CURVD_STORE_PAGE_SIZE), err, errlen);
    if (status == CURVD_STORE_OK)
        status = query_one(st, "PRAGMA journal_mode = WAL", NULL, mode, sizeof mode, err, errlen);
    if (status == CURVD_STORE_OK && strcmp(mode, "wal") != 0)
        status = fail(err, errlen, CURVD_STORE_ERROR,
                      "cannot use write-ahead logging: journal_mode stays \"%s\"", mode);
    if (status == CURVD_STORE_OK)
        status = exec_sql(st,
                          durability == CURVD_DURABILITY_FULL ? "PRAGMA synchronous = FULL"
                                                              : "PRAGMA synchronous = NORMAL",
                          err, errlen);
    if (status == CURVD_STORE_OK)
        status = exec_sql(st, "PRAGMA foreign_keys = ON", err, errlen);
    /* Debian builds SQLite with SECURE_DELETE: a DELETE would overwrite
     * every freed page of the state, writing the whole state to the WAL
     * again, and fail on a full disk. FAST zeroes only what costs no
     * extra write; freed pages are reused by later sessions. */
    if (status == CURVD_STORE_OK)
        status = exec_sql(st, "PRAGMA secure_delete = FAST", err, errlen);
    return status;
}

/* Apply the missing migrations and record them, all or nothing. The file
 * is checked again under the write lock: another process may have
 * migrated it since the first look. */
static int migrate(struct sqlite_store *st, char *err, size_t errlen)
{
    int version = 0;
    int status = exec_sql(st, "BEGIN IMMEDIATE", err, errlen);
    if (status == CURVD_STORE_OK)
        status = check_identity(st, &version, err, errlen);
    for (unsigned i = (unsigned)version; status == CURVD_STORE_OK && i < curvd_migration_count;
         i++) {
        int rc = sqlite3_exec(st->db, curvd_migrations[i].sql, NULL, NULL, NULL);
        if (rc != SQLITE_OK)
            status = fail(err, errlen, rc_status(rc), "migration %s failed: %s",
                          curvd_migrations[i].name, sqlite3_errmsg(st->db));
    }
    if (status == CURVD_STORE_OK && (unsigned)version < curvd_migration_count) {
        char sql[96];
        snprintf(sql, sizeof sql, "PRAGMA user_version = %u; PRAGMA application_id = %d",
                 curvd_migration_count, CURVD_STORE_APPLICATION_ID);
        status = exec_sql(st, sql, err, errlen);
    }
    if (status == CURVD_STORE_OK)
        status = commit_write(st, err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    return status;
}

/* Identity first: nothing below may touch a file that is not ours. */
static int setup(struct sqlite_store *st, const char *path, enum curvd_durability durability,
                 char *err, size_t errlen)
{
    int version = 0;
    int rc = sqlite3_busy_timeout(st->db, CURVD_STORE_BUSY_TIMEOUT_MS);
    int status = rc == SQLITE_OK ? check_identity(st, &version, err, errlen)
                                 : db_fail(st, rc, err, errlen, "busy_timeout");
    if (status == CURVD_STORE_OK)
        status = configure(st, durability, err, errlen);
    if (status == CURVD_STORE_OK)
        status = migrate(st, err, errlen);
    for (int i = 0; status == CURVD_STORE_OK && i < S_COUNT_; i++) {
        rc = sqlite3_prepare_v3(st->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &st->stmt[i],
                                NULL);
        if (rc != SQLITE_OK)
            status = db_fail(st, rc, err, errlen, "the schema does not match this curvd");
    }
    if (status == CURVD_STORE_OK && (rc = curvd_history_prepare(st->db, &st->hist)) != SQLITE_OK)
        status = db_fail(st, rc, err, errlen, "the schema does not match this curvd");
    if (status == CURVD_STORE_OK &&
        (rc = curvd_steplog_prepare(st->db, path, durability == CURVD_DURABILITY_FULL, &st->log)) !=
            SQLITE_OK)
        status = db_fail(st, rc, err, errlen, "the schema does not match this curvd");
    if (status == CURVD_STORE_OK && (rc = curvd_leases_prepare(st->db, &st->leases)) != SQLITE_OK)
        status = db_fail(st, rc, err, errlen, "the schema does not match this curvd");
    return status;
}

static const struct curvd_store_ops sqlite_ops;
static void sq_close(struct curvd_store *base);

/* The writer's runs: each record written ahead appended to its file. */
static void write_ahead_run(void *ctx, struct curvd_batch_item **items, size_t n)
{
    const struct curvd_logfiles *lf = curvd_steplog_files(((struct sqlite_store *)ctx)->log);
    for (size_t i = 0; i < n; i++) {
        struct curvd_write_ahead *w = (struct curvd_write_ahead *)(void *)items[i];
        char why[512];
        /* A failure is reported by the commit, which then writes the record itself. */
        /* Synced in both durabilities: it is off the reply's path, and a
         * row a checkpoint made durable must not name bytes a power loss
         * takes (under normal, SQLite syncs at checkpoints). */
        w->failed = curvd_logfile_append(lf, w->id, w->gen, w->step, w->rec, w->len, 1, &w->offset,
                                         why, sizeof why) != 0;
    }
}

/* Does session @id exist (or can it not be told)? For the sweep at open. */
static int session_exists(void *ctx, const char *id)
{
    struct sqlite_store *st = ctx;
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(st->db, "SELECT 1 FROM sessions WHERE id = ?1", -1, &q, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    (void)sqlite3_finalize(q);
    return rc != SQLITE_DONE; /* SQLITE_ROW: it does; an error: cannot tell */
}

/* Folders of deleted sessions left by a crash between the delete's commit
 * and their removal, or made again by a record written ahead of a step
 * whose session was deleted meanwhile; a minute old at least, so that
 * no append under way is taken for one. */
#define LOG_SWEEP_AGE_S 60.0

static int sq_write_ahead(struct curvd_store *base, struct curvd_write_ahead *w)
{
    struct sqlite_store *st = sq(base);
    if (!st->writer || !curvd_steplog_to_file(st->log, w->len, atomic_load(&base->log_file_min)) ||
        w->len > (size_t)sqlite3_limit(st->db, SQLITE_LIMIT_LENGTH, -1))
        return 0;
    curvd_batcher_start(st->writer, &w->link, &w->wait);
    return 1;
}

int curvd_sqlite_open(const char *path, enum curvd_durability durability, struct curvd_store **out,
                      char *err, size_t errlen)
{
    /* The connection's mutex is the store's lock; without one there is none. */
    if (!sqlite3_threadsafe())
        return fail(err, errlen, CURVD_STORE_ERROR, "SQLite was built without thread support");
    struct sqlite_store *st = sqlite3_malloc64(sizeof *st);
    if (!st)
        return no_memory(err, errlen);
    memset(st, 0, sizeof *st);
    curvd_trouble_init(&st->base.trouble, path);
    int rc = sqlite3_open_v2(
        path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    int status;
    if (rc != SQLITE_OK) {
        /* sqlite3_errmsg(NULL) says "out of memory", which is then the case. */
        status =
            fail(err, errlen, rc_status(rc), "cannot open %s: %s", path, sqlite3_errmsg(st->db));
    } else {
        st->mu = sqlite3_db_mutex(st->db);
        sqlite3_mutex_enter(st->mu);
        status = setup(st, path, durability, err, errlen);
        sqlite3_mutex_leave(st->mu);
        if (status != CURVD_STORE_OK && err && errlen) { /* which file: there may be several */
            char why[1024];
            snprintf(why, sizeof why, "%s", err);
            fail(err, errlen, status, "database %s: %s", path, why);
        }
        if (status == CURVD_STORE_OK &&
            !(st->ckpt = curvd_checkpointer_start(st->db, path, durability == CURVD_DURABILITY_FULL,
                                                  err, errlen)))
            status = CURVD_STORE_ERROR;
        if (status == CURVD_STORE_OK)
            status = curvd_store_base_init(&st->base, &sqlite_ops, err, errlen);
        if (status == CURVD_STORE_OK && !(st->writer = curvd_batcher_new(16, write_ahead_run, st)))
            status = no_memory(err, errlen);
        if (status == CURVD_STORE_OK)
            curvd_logfile_sweep(curvd_steplog_files(st->log), session_exists, st, LOG_SWEEP_AGE_S);
        if (status == CURVD_STORE_OK) /* the file is ours: the reserve may go beside it */
            curvd_trouble_reserve(&st->base.trouble, CURVD_STORE_RESERVE_BYTES);
    }
    if (status != CURVD_STORE_OK) {
        sq_close(&st->base);
        return status;
    }
    *out = &st->base;
    return CURVD_STORE_OK;
}

static void sq_close(struct curvd_store *base)
{
    struct sqlite_store *st = sq(base);
    curvd_batcher_free(st->writer); /* writes what is queued; no caller waits on it any more */
    curvd_store_base_stop(&st->base);
    curvd_checkpointer_stop(st->ckpt);
    /* Finalizing repeats old errors only; with every statement finalized,
     * sqlite3_close() has no reason left to fail. */
    for (int i = 0; i < S_COUNT_; i++)
        (void)sqlite3_finalize(st->stmt[i]);
    curvd_history_finalize(st->hist);
    curvd_steplog_finalize(st->log);
    curvd_leases_finalize(st->leases);
    (void)sqlite3_close(st->db);
    curvd_trouble_clear(&st->base.trouble);
    sqlite3_free(st);
}

static int sq_set_busy_timeout(struct curvd_store *base, int ms, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    int rc = sqlite3_busy_timeout(st->db, ms);
    int status = rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, "busy_timeout");
    sqlite3_mutex_leave(st->mu);
    return status;
}

static void sq_wal(struct curvd_store *base, struct curvd_store_wal *out)
{
    struct curvd_ckpt_stats k;
    curvd_checkpointer_stats(sq(base)->ckpt, &k);
    out->rounds = k.rounds;
    out->passes = k.passes;
    out->truncations = k.truncations;
    out->bound_bytes = k.bound_bytes;
    out->inline_tries = k.inline_tries;
    out->inline_done = k.inline_done;
}

static void sq_checkpoint_soon(struct curvd_store *base)
{
    curvd_checkpointer_kick(sq(base)->ckpt);
}

static int sq_info(struct curvd_store *base, struct curvd_store_info *out, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    struct curvd_store_info in;
    sqlite3_mutex_enter(st->mu);
    int status = query_one(st, "PRAGMA user_version", &in.schema_version, NULL, 0, err, errlen);
    if (status == CURVD_STORE_OK)
        status = query_one(st, "PRAGMA application_id", &in.application_id, NULL, 0, err, errlen);
    if (status == CURVD_STORE_OK)
        status = query_one(st, "PRAGMA page_size", &in.page_size, NULL, 0, err, errlen);
    if (status == CURVD_STORE_OK)
        status = query_one(st, "PRAGMA synchronous", &in.synchronous, NULL, 0, err, errlen);
    if (status == CURVD_STORE_OK)
        status = query_one(st, "PRAGMA journal_mode", NULL, in.journal_mode, sizeof in.journal_mode,
                           err, errlen);
    sqlite3_mutex_leave(st->mu);
    if (status == CURVD_STORE_OK)
        *out = in;
    return status;
}

static int sq_create(struct curvd_store *base, const struct curvd_session_new *s,
                     int64_t *created_at, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    int64_t now = now_ms();
    /* A new session has nothing stored: every part is written. */
    struct curvd_state_in all = s->state;
    all.stored = NULL;
    all.n_stored = 0;
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = st->stmt[S_INSERT];
    int rc = bind(q, "ttttii", s->id, s->tenant, s->optimizer, s->meta, now, s->step);
    if (rc == SQLITE_OK)
        rc = s->has_idle_ttl ? sqlite3_bind_int64(q, 7, s->idle_ttl_s) : sqlite3_bind_null(q, 7);
    if (rc == SQLITE_OK)
        rc =
            s->name ? sqlite3_bind_text(q, 8, s->name, -1, SQLITE_STATIC) : sqlite3_bind_null(q, 8);
    if (rc == SQLITE_OK)
        rc = s->labels ? sqlite3_bind_text(q, 9, s->labels, -1, SQLITE_STATIC)
                       : sqlite3_bind_null(q, 9);
    if (rc == SQLITE_OK)
        rc =
            s->has_history ? sqlite3_bind_int64(q, 10, s->history_steps) : sqlite3_bind_null(q, 10);
    int status = rc == SQLITE_OK ? exec_sql(st, "BEGIN IMMEDIATE", err, errlen)
                                 : db_fail(st, rc, err, errlen, "binding a new session");
    if (status == CURVD_STORE_OK && (rc = sqlite3_step(q)) != SQLITE_DONE) {
        if (sqlite3_extended_errcode(st->db) == SQLITE_CONSTRAINT_PRIMARYKEY)
            status = fail(err, errlen, CURVD_STORE_CONFLICT, "session %s exists", s->id);
        else
            status = db_fail(st, rc, err, errlen, "inserting a session");
    }
    done(q);
    if (status == CURVD_STORE_OK)
        status = write_parts(st, s->id, &all, err, errlen);
    if (status == CURVD_STORE_OK)
        status = commit_write(st, err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    sqlite3_mutex_leave(st->mu);
    if (status == CURVD_STORE_OK && created_at)
        *created_at = now;
    return status;
}

/* The SESSION_READ columns of the current row into @o (no state); a
 * session without a stored reply reads NULLs there, hence last_step 0. */
static int read_session(sqlite3_stmt *q, struct curvd_session *o)
{
    memset(o, 0, sizeof *o);
    if (dup_text(q, 0, &o->id) || dup_text(q, 1, &o->tenant) || dup_text(q, 2, &o->optimizer) ||
        dup_text(q, 3, &o->meta) || dup_text(q, 8, &o->last_report) || dup_text(q, 10, &o->name) ||
        dup_text(q, 11, &o->labels)) {
        curvd_session_clear(o);
        return -1;
    }
    o->created_at = sqlite3_column_int64(q, 4);
    o->updated_at = sqlite3_column_int64(q, 5);
    o->step = sqlite3_column_int64(q, 6);
    o->last_step = sqlite3_column_int64(q, 7);
    o->has_idle_ttl = sqlite3_column_type(q, 9) != SQLITE_NULL;
    o->idle_ttl_s = o->has_idle_ttl ? sqlite3_column_int64(q, 9) : 0;
    o->has_history = sqlite3_column_type(q, 12) != SQLITE_NULL;
    o->history_steps = o->has_history ? sqlite3_column_int64(q, 12) : 0;
    return 0;
}

/* get_locked's status for a record its file no longer holds (sq_get
 * reads again); never returned by the store. */
#define LOG_MOVED (-1)

/* The body of curvd_store_get(), inside its read transaction; @with_state
 * 2: a record its file no longer holds is read as empty (sq_get). */
static int get_locked(struct sqlite_store *st, const char *tenant, const char *id, int with_state,
                      void *out, char *err, size_t errlen)
{
    struct curvd_session *o = out;
    sqlite3_stmt *q = st->stmt[S_GET];
    int rc = bind(q, "tt", id, tenant);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    int status = CURVD_STORE_OK;
    if (rc == SQLITE_DONE)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    else if (rc != SQLITE_ROW)
        status = db_fail(st, rc, err, errlen, "reading a session");
    else if (read_session(q, o) != 0)
        status = no_memory(err, errlen);
    done(q);
    if (status == CURVD_STORE_OK && with_state)
        status = read_state(st, id, o, err, errlen);
    char why[512];
    if (status == CURVD_STORE_OK && with_state &&
        (rc = curvd_steplog_read(st->log, id, with_state == 2, o, why, sizeof why)) != SQLITE_OK)
        status = rc == CURVD_STEPLOG_MOVED
                     ? fail(err, errlen, LOG_MOVED,
                            "session %s took a snapshot while its step log was read", id)
                 : why[0] ? file_fail(st, rc, why, err, errlen, "reading the step log")
                          : db_fail(st, rc, err, errlen, "reading the step log");
    return status;
}

/* Run @fn inside one read transaction, so that a row and its blob come
 * from one snapshot. On failure the caller frees what @fn built. */
static int read_tx(struct sqlite_store *st,
                   int (*fn)(struct sqlite_store *, const char *, const char *, int, void *, char *,
                             size_t),
                   const char *tenant, const char *id, int arg, void *out, char *err, size_t errlen)
{
    sqlite3_mutex_enter(st->mu);
    int status = exec_sql(st, "BEGIN", err, errlen);
    if (status == CURVD_STORE_OK)
        status = fn(st, tenant, id, arg, out, err, errlen);
    if (status == CURVD_STORE_OK)
        status = exec_sql(st, "COMMIT", err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    sqlite3_mutex_leave(st->mu);
    return status;
}

/* A snapshot may commit (and remove the log's file) between the read
 * transaction's start and the file's read: the next read sees it. A
 * record still missing on the last pass (a file removed or damaged by
 * hand) is read as empty, so that the session's replay names the step it
 * cannot take rather than the store failing for good. */
static int sq_get(struct curvd_store *base, const char *tenant, const char *id, int with_state,
                  struct curvd_session *out, char *err, size_t errlen)
{
    for (int pass = 0;; pass++) {
        int last = !with_state || pass == 3;
        int status =
            read_tx(sq(base), get_locked, tenant, id, with_state ? 1 + last : 0, out, err, errlen);
        if (status != LOG_MOVED || last)
            return status;
        curvd_session_clear(out);
    }
}

/* Read the rows of @q (at most @max) into @l. */
static int list_rows(struct sqlite_store *st, sqlite3_stmt *q, size_t max,
                     struct curvd_session_list *l, char *err, size_t errlen)
{
    l->items = sqlite3_malloc64(max * sizeof *l->items);
    if (!l->items)
        return no_memory(err, errlen);
    int rc = SQLITE_DONE; /* none read: @max rows are there */
    while (l->count < max && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (read_session(q, &l->items[l->count]) != 0)
            return no_memory(err, errlen);
        l->count++;
    }
    return l->count == max || rc == SQLITE_DONE ? CURVD_STORE_OK
                                                : db_fail(st, rc, err, errlen, "listing sessions");
}

static int sq_list(struct curvd_store *base, const char *tenant, size_t max, int64_t after_time,
                   const char *after_id, const char *label_key, const char *label_value,
                   struct curvd_session_list *l, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    char path[256] = "";
    if (label_key)
        snprintf(path, sizeof path, "$.\"%s\"", label_key);
    int after = after_id != NULL;
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = st->stmt[after ? S_LIST_AFTER : S_LIST_FIRST];
    int rc = after ? bind(q, "ttii", after_id, tenant, (int64_t)max, after_time)
                   : bind(q, "-ti", tenant, (int64_t)max);
    if (rc == SQLITE_OK)
        rc = bind(q, "----tt", label_key ? path : NULL, label_key ? label_value : NULL);
    int status = rc == SQLITE_OK ? list_rows(st, q, max, l, err, errlen)
                                 : db_fail(st, rc, err, errlen, "binding a page key");
    done(q);
    sqlite3_mutex_leave(st->mu);
    return status;
}

/* After a write that matched no row: is the session gone, fenced (its
 * lease moved past @epoch), or elsewhere? */
static int explain_miss(struct sqlite_store *st, const char *tenant, const char *id, int64_t epoch,
                        int64_t *current_step, char *err, size_t errlen)
{
    sqlite3_stmt *q = st->stmt[S_STEP_OF];
    int rc = bind(q, "tt", id, tenant);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    int status;
    if (rc == SQLITE_ROW && epoch != CURVD_STORE_ANY_EPOCH && sqlite3_column_int64(q, 1) != epoch) {
        status =
            fail(err, errlen, CURVD_STORE_FENCED,
                 "session %s: its lease moved on to epoch %" PRId64 " (this write: %" PRId64 ")",
                 id, (int64_t)sqlite3_column_int64(q, 1), epoch);
    } else if (rc == SQLITE_ROW) {
        int64_t step = sqlite3_column_int64(q, 0);
        if (current_step)
            *current_step = step;
        status =
            fail(err, errlen, CURVD_STORE_CONFLICT, "session %s is at step %" PRId64, id, step);
    } else if (rc == SQLITE_DONE) {
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    } else {
        status = db_fail(st, rc, err, errlen, "reading a session's step");
    }
    done(q);
    return status;
}

/* Write @state's parts as session @id's new snapshot: its log goes (and
 * its file, which has bytes when there are rows or @had_file). */
static int write_snapshot(struct sqlite_store *st, const char *id,
                          const struct curvd_state_in *state, int had_file, int64_t epoch,
                          char *err, size_t errlen)
{
    int status = write_parts(st, id, state, err, errlen), rc;
    if (status == CURVD_STORE_OK &&
        (rc = curvd_steplog_clear(st->log, id, had_file, epoch)) != SQLITE_DONE)
        status = db_fail(st, rc, err, errlen, "deleting the step log");
    return status;
}

/* In one BEGIN IMMEDIATE transaction: run the bound write @q, which
 * matches the session only under its condition; if it matched, write the
 * parts of @state (NULL: none) and commit; else explain why not and write
 * nothing. @brc is the binding's result. Clears @q. */
static int conditional_write(struct sqlite_store *st, int brc, sqlite3_stmt *q,
                             const struct curvd_state_in *state, const char *tenant, const char *id,
                             int64_t epoch, int64_t *current_step, char *err, size_t errlen)
{
    int changes = 0;
    int status = brc == SQLITE_OK ? exec_sql(st, "BEGIN IMMEDIATE", err, errlen)
                                  : db_fail(st, brc, err, errlen, "binding parameters");
    if (status == CURVD_STORE_OK)
        status = run(st, q, &changes, "updating a session", err, errlen);
    done(q);
    if (status == CURVD_STORE_OK && changes == 0)
        status = explain_miss(st, tenant, id, epoch, current_step, err, errlen);
    if (status == CURVD_STORE_OK && state)
        status = write_snapshot(st, id, state, 0, epoch, err, errlen);
    if (status == CURVD_STORE_OK)
        status = commit_write(st, err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    return status;
}

/* Write one step inside the open transaction: the step, the parts that
 * changed, the reply. CONFLICT and NOT_FOUND are the item's own outcome
 * (nothing written); any other failure spoils the whole transaction. */
static int write_step(struct sqlite_store *st, struct curvd_commit_item *it)
{
    const struct curvd_step_commit *c = it->c;
    char *err = it->err;
    const size_t errlen = sizeof it->err;
    sqlite3_stmt *q = st->stmt[S_COMMIT], *r = st->stmt[S_PUT_RESPONSE];
    int changes = 0;
    int64_t now = now_ms();
    int rc = bind(q, "ttiii", it->id, it->tenant, c->step, now, c->epoch);
    int status = rc == SQLITE_OK ? run(st, q, &changes, "updating a session", err, errlen)
                                 : db_fail(st, rc, err, errlen, "binding parameters");
    done(q);
    if (status == CURVD_STORE_OK && changes == 0)
        return explain_miss(st, it->tenant, it->id, c->epoch, &it->current_step, err, errlen);
    if (status == CURVD_STORE_OK && !c->record)
        status = write_snapshot(st, it->id, &c->state, c->written_ahead, c->epoch, err, errlen);
    else if (status == CURVD_STORE_OK) {
        char why[512];
        rc = curvd_steplog_append(st->log, it->id, c, atomic_load(&st->base.log_file_min), why,
                                  sizeof why);
        if (rc != SQLITE_DONE)
            status = why[0] ? file_fail(st, rc, why, err, errlen, "appending to the step log")
                            : db_fail(st, rc, err, errlen, "appending to the step log");
    }
    if (status == CURVD_STORE_OK) {
        rc = bind(r, "titbtt", it->id, c->step, c->content_type, c->response, c->response_len,
                  c->report, c->request_digest);
        status = rc == SQLITE_OK ? run(st, r, NULL, "storing a step response", err, errlen)
                                 : db_fail(st, rc, err, errlen, "binding parameters");
        done(r);
    }
    if (status == CURVD_STORE_OK &&
        (rc = curvd_history_record(st->hist, it->id, c, now,
                                   atomic_load(&st->base.history_default))) != SQLITE_DONE)
        status = db_fail(st, rc, err, errlen, "recording the step's history");
    return status;
}

/* The items in one transaction; on a failure that is not one item's own,
 * nothing is written and every item carries that failure. */
static int sq_commit_group(struct curvd_store *base, struct curvd_commit_item **items, size_t n)
{
    struct sqlite_store *st = sq(base);
    char err[sizeof items[0]->err];
    sqlite3_mutex_enter(st->mu);
    int status = exec_sql(st, "BEGIN IMMEDIATE", err, sizeof err);
    for (size_t i = 0; status == CURVD_STORE_OK && i < n; i++) {
        struct curvd_commit_item *it = items[i];
        it->status = write_step(st, it);
        if (it->status != CURVD_STORE_OK && it->status != CURVD_STORE_CONFLICT &&
            it->status != CURVD_STORE_NOT_FOUND && it->status != CURVD_STORE_FENCED) {
            status = it->status;
            snprintf(err, sizeof err, "%s", it->err);
        }
    }
    if (status == CURVD_STORE_OK)
        status = commit_write(st, err, sizeof err);
    if (status != CURVD_STORE_OK) {
        rollback(st);
        for (size_t i = 0; i < n; i++) {
            items[i]->status = status;
            snprintf(items[i]->err, sizeof items[i]->err, "%s", err);
        }
    }
    sqlite3_mutex_leave(st->mu);
    return status;
}

static int sq_update_state(struct curvd_store *base, const char *tenant, const char *id,
                           int64_t expected_step, int64_t epoch, const struct curvd_state_in *state,
                           const char *meta, int64_t *current_step, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    int64_t now = now_ms();
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = st->stmt[S_UPDATE_STATE];
    int rc = bind(q, "tttiii", id, tenant, meta, now, expected_step, epoch);
    int status = conditional_write(st, rc, q, state, tenant, id, epoch, current_step, err, errlen);
    sqlite3_mutex_leave(st->mu);
    return status;
}

static int sq_snapshot(struct curvd_store *base, const char *tenant, const char *id, int64_t step,
                       int64_t epoch, const struct curvd_state_in *state, int64_t *current_step,
                       char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = st->stmt[S_AT_STEP];
    int rc = bind(q, "ttii", id, tenant, step, epoch);
    int status = conditional_write(st, rc, q, state, tenant, id, epoch, current_step, err, errlen);
    sqlite3_mutex_leave(st->mu);
    return status;
}

static int sq_delete(struct curvd_store *base, const char *tenant, const char *id, char *err,
                     size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    /* The stored response goes with the row (ON DELETE CASCADE). A miss
     * finds no row for this tenant, hence NOT_FOUND. */
    sqlite3_stmt *q = st->stmt[S_DELETE];
    int rc = bind(q, "tt", id, tenant);
    if (rc == SQLITE_OK)
        rc = curvd_steplog_forget(st->log, id);
    int status =
        conditional_write(st, rc, q, NULL, tenant, id, CURVD_STORE_ANY_EPOCH, NULL, err, errlen);
    /* A full disk: the failure gave the reserve back (trouble.h), and a
     * checkpoint that copies the whole WAL lets it start over in the space
     * it already has. Then once more: freeing space must not need space. */
    if (status == CURVD_STORE_FULL) {
        (void)sqlite3_wal_checkpoint_v2(st->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        rc = bind(q, "tt", id, tenant);
        if (rc == SQLITE_OK)
            rc = curvd_steplog_forget(st->log, id);
        status = conditional_write(st, rc, q, NULL, tenant, id, CURVD_STORE_ANY_EPOCH, NULL, err,
                                   errlen);
    }
    sqlite3_mutex_leave(st->mu);
    return status;
}

/* The body of curvd_store_get_response(), inside its read transaction. */
static int response_locked(struct sqlite_store *st, const char *tenant, const char *id, int unused,
                           void *out, char *err, size_t errlen)
{
    struct curvd_step_response *o = out;
    (void)unused;
    sqlite3_stmt *q = st->stmt[S_GET_RESPONSE];
    int rc = bind(q, "tt", id, tenant);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    int status = CURVD_STORE_OK;
    sqlite3_int64 row = 0, len = 0;
    if (rc == SQLITE_DONE)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no stored response for session %s", id);
    else if (rc != SQLITE_ROW)
        status = db_fail(st, rc, err, errlen, "reading a step response");
    else if (dup_text(q, 2, &o->content_type) != 0 || dup_text(q, 4, &o->report) != 0 ||
             dup_text(q, 5, &o->request_digest) != 0)
        status = no_memory(err, errlen);
    if (status == CURVD_STORE_OK) {
        row = sqlite3_column_int64(q, 0);
        o->step = sqlite3_column_int64(q, 1);
        len = sqlite3_column_int64(q, 3);
    }
    done(q);
    if (status == CURVD_STORE_OK)
        status =
            read_blob(st, "step_responses", "body", row, len, &o->body, &o->body_len, err, errlen);
    return status;
}

static int sq_get_response(struct curvd_store *base, const char *tenant, const char *id,
                           struct curvd_step_response *out, char *err, size_t errlen)
{
    return read_tx(sq(base), response_locked, tenant, id, 0, out, err, errlen);
}

static int sq_count(struct curvd_store *base, const char *tenant, int64_t *out, char *err,
                    size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = st->stmt[tenant ? S_COUNT_TENANT : S_COUNT_ALL];
    int rc = tenant ? bind(q, "t", tenant) : SQLITE_OK;
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    int status = CURVD_STORE_OK;
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(q, 0);
    else
        status = db_fail(st, rc, err, errlen, "counting sessions");
    done(q);
    sqlite3_mutex_leave(st->mu);
    return status;
}

static int sq_set_idle_ttl(struct curvd_store *base, const char *tenant, const char *id, int has,
                           int64_t ttl_s, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = NULL;
    int rc = sqlite3_prepare_v2(st->db,
                                "UPDATE sessions SET idle_ttl_s = ?3, updated_at = ?4"
                                " WHERE id = ?1 AND tenant = ?2",
                                -1, &q, NULL);
    if (rc == SQLITE_OK)
        rc = bind(q, "tt", id, tenant);
    if (rc == SQLITE_OK)
        rc = has ? sqlite3_bind_int64(q, 3, ttl_s) : sqlite3_bind_null(q, 3);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 4, now_ms());
    int status = rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, "setting a TTL");
    if (status == CURVD_STORE_OK && (rc = sqlite3_step(q)) != SQLITE_DONE)
        status = db_fail(st, rc, err, errlen, "setting a TTL");
    if (status == CURVD_STORE_OK && sqlite3_changes(st->db) == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    (void)sqlite3_finalize(q);
    sqlite3_mutex_leave(st->mu);
    return status;
}

static int sq_expire(struct curvd_store *base, int64_t now, int64_t default_ttl_s, size_t max,
                     char **ids, size_t *count, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    size_t n = 0;
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = NULL;
    /* One transaction: a step that commits first moves updated_at, and
     * its session is no longer idle; one that commits after finds none. */
    int status = exec_sql(st, "BEGIN IMMEDIATE", err, errlen);
    int rc = SQLITE_OK;
    if (status == CURVD_STORE_OK) {
        rc = sqlite3_prepare_v2(
            st->db,
            "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions"
            " WHERE coalesce(idle_ttl_s, ?2) > 0 AND updated_at + 1000 * coalesce(idle_ttl_s, ?2)"
            " <= ?1 LIMIT ?3) RETURNING id",
            -1, &q, NULL);
        if (rc == SQLITE_OK)
            rc = bind(q, "iii", now, default_ttl_s, (int64_t)max);
        if (rc != SQLITE_OK)
            status = db_fail(st, rc, err, errlen, "expiring sessions");
    }
    while (status == CURVD_STORE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW && n < max) {
        if (dup_text(q, 0, &ids[n]) != 0 || !ids[n])
            status = no_memory(err, errlen);
        else if (curvd_steplog_forget(st->log, ids[n++]) != SQLITE_OK)
            status = no_memory(err, errlen);
    }
    if (status == CURVD_STORE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW)
        status = db_fail(st, rc, err, errlen, "expiring sessions");
    (void)sqlite3_finalize(q);
    if (status == CURVD_STORE_OK)
        status = commit_write(st, err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    sqlite3_mutex_leave(st->mu);
    *count = n; /* the caller frees them */
    return status;
}

static int sq_set_name_labels(struct curvd_store *base, const char *tenant, const char *id,
                              int set_name, const char *name, int set_labels, const char *labels,
                              char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = NULL;
    /* ?5 / ?6: whether to set each; the other keeps its value. */
    int rc = sqlite3_prepare_v2(st->db,
                                "UPDATE sessions SET name = CASE WHEN ?5 THEN ?3 ELSE name END,"
                                " labels = CASE WHEN ?6 THEN ?4 ELSE labels END, updated_at = ?7"
                                " WHERE id = ?1 AND tenant = ?2",
                                -1, &q, NULL);
    if (rc == SQLITE_OK)
        rc = bind(q, "ttttiii", id, tenant, name, labels, (int64_t)(set_name != 0),
                  (int64_t)(set_labels != 0), now_ms());
    int status =
        rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, "setting a name or labels");
    if (status == CURVD_STORE_OK && (rc = sqlite3_step(q)) != SQLITE_DONE)
        status = db_fail(st, rc, err, errlen, "setting a name or labels");
    if (status == CURVD_STORE_OK && sqlite3_changes(st->db) == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    (void)sqlite3_finalize(q);
    sqlite3_mutex_leave(st->mu);
    return status;
}

const char *curvd_store_engine_version(void)
{
    return sqlite3_libversion();
}

/* The body of curvd_store_history(), inside its read transaction. */
struct history_query {
    int64_t since;
    size_t size;
    struct curvd_history_page *page;
};

static int history_locked(struct sqlite_store *st, const char *tenant, const char *id, int unused,
                          void *out, char *err, size_t errlen)
{
    (void)unused;
    struct history_query *hq = out;
    sqlite3_stmt *q = st->stmt[S_STEP_OF];
    int rc = bind(q, "tt", id, tenant);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    if (rc == SQLITE_ROW)
        hq->page->latest = sqlite3_column_int64(q, 0);
    done(q);
    if (rc == SQLITE_DONE)
        return fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    if (rc != SQLITE_ROW)
        return db_fail(st, rc, err, errlen, "reading a session's step");
    rc = curvd_history_read(st->hist, id, hq->since, hq->size,
                            atomic_load(&st->base.history_default), hq->page);
    if (rc == SQLITE_NOMEM)
        return no_memory(err, errlen);
    return rc == SQLITE_OK ? CURVD_STORE_OK : db_fail(st, rc, err, errlen, "reading the history");
}

static int sq_history(struct curvd_store *base, const char *tenant, const char *id, int64_t since,
                      size_t page_size, struct curvd_history_page *out, char *err, size_t errlen)
{
    struct history_query hq = {since, page_size, out};
    return read_tx(sq(base), history_locked, tenant, id, 0, &hq, err, errlen);
}

static int sq_set_history(struct curvd_store *base, const char *tenant, const char *id, int has,
                          int64_t steps, char *err, size_t errlen)
{
    struct sqlite_store *st = sq(base);
    sqlite3_mutex_enter(st->mu);
    sqlite3_stmt *q = NULL;
    int changes = 0;
    int rc = sqlite3_prepare_v2(st->db,
                                "UPDATE sessions SET history_steps = ?3, updated_at = ?4"
                                " WHERE id = ?1 AND tenant = ?2",
                                -1, &q, NULL);
    if (rc == SQLITE_OK)
        rc = bind(q, "tt-i", id, tenant, now_ms());
    if (rc == SQLITE_OK)
        rc = has ? sqlite3_bind_int64(q, 3, steps) : sqlite3_bind_null(q, 3);
    int status = rc == SQLITE_OK ? exec_sql(st, "BEGIN IMMEDIATE", err, errlen)
                                 : db_fail(st, rc, err, errlen, "binding parameters");
    if (status == CURVD_STORE_OK)
        status = run(st, q, &changes, "setting the history bound", err, errlen);
    if (status == CURVD_STORE_OK && changes == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    if (status == CURVD_STORE_OK &&
        (rc = curvd_history_prune(st->hist, id, atomic_load(&st->base.history_default))) !=
            SQLITE_DONE)
        status = db_fail(st, rc, err, errlen, "pruning the history");
    if (status == CURVD_STORE_OK)
        status = exec_sql(st, "COMMIT", err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    (void)sqlite3_finalize(q);
    sqlite3_mutex_leave(st->mu);
    return status;
}

/* One change of a lease in its own write transaction (store/lease.h);
 * dispatch.c has checked the arguments. */
static int lease_op(struct sqlite_store *st, const struct curvd_lease_req *rq,
                    struct curvd_lease *out, char *err, size_t errlen)
{
    struct curvd_lease_req r = *rq;
    struct curvd_lease got = {{0}, 0, 0, 0};
    int result = CURVD_STORE_OK, rc;
    sqlite3_mutex_enter(st->mu);
    int status = exec_sql(st, "BEGIN IMMEDIATE", err, errlen);
    r.now = now_ms(); /* once the write lock is ours: no other change can come between */
    if (status == CURVD_STORE_OK &&
        (rc = curvd_leases_run(st->leases, &r, &result, &got)) != SQLITE_OK)
        status = db_fail(st, rc, err, errlen, "changing a lease");
    if (status == CURVD_STORE_OK)
        status = commit_write(st, err, errlen);
    if (status != CURVD_STORE_OK)
        rollback(st);
    sqlite3_mutex_leave(st->mu);
    if (status != CURVD_STORE_OK)
        return status;
    if (out && result != CURVD_STORE_NOT_FOUND)
        *out = got;
    if (result == CURVD_STORE_NOT_FOUND)
        return fail(err, errlen, result, "no session %s", rq->id);
    if (result == CURVD_STORE_LEASED)
        return fail(err, errlen, result,
                    "session %s is held by %s until %" PRId64 " (%" PRId64 " ms from now)", rq->id,
                    got.owner, got.expires_at, got.expires_at - got.now);
    if (result == CURVD_STORE_FENCED)
        return fail(err, errlen, result,
                    "session %s: the lease of %s at epoch %" PRId64 " is gone (now %s at %" PRId64
                    ")",
                    rq->id, rq->owner, rq->epoch, got.owner[0] ? got.owner : "nobody", got.epoch);
    return CURVD_STORE_OK;
}

static int sq_lease_acquire(struct curvd_store *base, const char *tenant, const char *id,
                            const char *owner, int64_t ttl_ms, struct curvd_lease *out, char *err,
                            size_t errlen)
{
    const struct curvd_lease_req rq = {CURVD_LEASE_ACQUIRE, tenant, id, owner, 0, ttl_ms, 0};
    return lease_op(sq(base), &rq, out, err, errlen);
}

static int sq_lease_renew(struct curvd_store *base, const char *tenant, const char *id,
                          const char *owner, int64_t epoch, int64_t ttl_ms, struct curvd_lease *out,
                          char *err, size_t errlen)
{
    const struct curvd_lease_req rq = {CURVD_LEASE_RENEW, tenant, id, owner, epoch, ttl_ms, 0};
    return lease_op(sq(base), &rq, out, err, errlen);
}

static int sq_lease_release(struct curvd_store *base, const char *tenant, const char *id,
                            const char *owner, int64_t epoch, char *err, size_t errlen)
{
    const struct curvd_lease_req rq = {CURVD_LEASE_RELEASE, tenant, id, owner, epoch, 0, 0};
    return lease_op(sq(base), &rq, NULL, err, errlen);
}

static const struct curvd_store_ops sqlite_ops = {
    .name = "sqlite",
    .close = sq_close,
    .set_busy_timeout = sq_set_busy_timeout,
    .wal = sq_wal,
    .checkpoint_soon = sq_checkpoint_soon,
    .info = sq_info,
    .create = sq_create,
    .get = sq_get,
    .list = sq_list,
    .delete = sq_delete,
    .commit_group = sq_commit_group,
    .update_state = sq_update_state,
    .snapshot = sq_snapshot,
    .get_response = sq_get_response,
    .count = sq_count,
    .set_idle_ttl = sq_set_idle_ttl,
    .expire = sq_expire,
    .set_name_labels = sq_set_name_labels,
    .history = sq_history,
    .set_history = sq_set_history,
    .lease_acquire = sq_lease_acquire,
    .lease_renew = sq_lease_renew,
    .lease_release = sq_lease_release,
    .write_ahead = sq_write_ahead,
};
