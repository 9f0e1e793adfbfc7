/* SPDX-License-Identifier: MIT */
/* The step log in SQLite; the model is in steplog.h. */
#include "store/steplog.h"

#include <stdio.h>
#include <string.h>

#include "store/logfile.h"

enum { L_PUT, L_CLEAR, L_READ, L_COUNT_ };

static const char *const steplog_sql[L_COUNT_] = {
    [L_PUT] = "INSERT INTO step_log (session_id, step, update_digest, record, file_offset,"
              " file_len, file_gen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    /* A range of the primary key: every row of the session. */
    [L_CLEAR] = "DELETE FROM step_log WHERE session_id = ?1",
    [L_READ] = "SELECT step, update_digest, record, file_offset, file_len, file_gen FROM step_log"
               " WHERE session_id = ?1 ORDER BY step",
};

struct curvd_steplog {
    sqlite3_stmt *q[L_COUNT_];
    struct curvd_logfiles files;
    /* Sessions whose files (of generations up to upto) go once the
     * transaction commits; ids sqlite3_malloc'd. */
    struct gone {
        char *id;
        int64_t upto;
    } * gone;
    size_t n_gone, cap_gone;
};

int curvd_steplog_prepare(sqlite3 *db, const char *db_path, int sync, struct curvd_steplog **out)
{
    struct curvd_steplog *l = sqlite3_malloc64(sizeof *l);
    if (!l)
        return SQLITE_NOMEM;
    memset(l, 0, sizeof *l);
    curvd_logfiles_init(&l->files, db_path, sync);
    int rc = SQLITE_OK;
    for (int i = 0; rc == SQLITE_OK && i < L_COUNT_; i++)
        rc = sqlite3_prepare_v3(db, steplog_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &l->q[i], NULL);
    if (rc != SQLITE_OK) {
        curvd_steplog_finalize(l);
        return rc;
    }
    *out = l;
    return SQLITE_OK;
}

void curvd_steplog_finalize(struct curvd_steplog *l)
{
    if (!l)
        return;
    for (int i = 0; i < L_COUNT_; i++)
        (void)sqlite3_finalize(l->q[i]);
    curvd_steplog_rolled_back(l);
    sqlite3_free(l->gone);
    sqlite3_free(l);
}

/* Remember that session @id's file goes at the commit. SQLITE_NOMEM when
 * out of memory (the transaction must then not commit: the file would
 * outlive every row). */
static int file_goes(struct curvd_steplog *l, const char *id, int64_t upto)
{
    if (!l->files.dir[0])
        return SQLITE_OK;
    if (l->n_gone == l->cap_gone) {
        size_t cap = l->cap_gone ? 2 * l->cap_gone : 4;
        struct gone *g = sqlite3_realloc64(l->gone, cap * sizeof *g);
        if (!g)
            return SQLITE_NOMEM;
        l->gone = g;
        l->cap_gone = cap;
    }
    size_t n = strlen(id) + 1;
    struct gone *g = &l->gone[l->n_gone];
    if (!(g->id = sqlite3_malloc64(n)))
        return SQLITE_NOMEM;
    memcpy(g->id, id, n);
    g->upto = upto;
    l->n_gone++;
    return SQLITE_OK;
}

int curvd_steplog_forget(struct curvd_steplog *l, const char *id)
{
    return file_goes(l, id, INT64_MAX);
}

void curvd_steplog_committed(struct curvd_steplog *l)
{
    for (size_t i = 0; i < l->n_gone; i++)
        (void)curvd_logfile_remove(&l->files, l->gone[i].id, l->gone[i].upto);
    curvd_steplog_rolled_back(l);
}

void curvd_steplog_rolled_back(struct curvd_steplog *l)
{
    for (size_t i = 0; i < l->n_gone; i++)
        sqlite3_free(l->gone[i].id);
    l->n_gone = 0;
}

/* Step @q to its end and leave it ready for its next use. */
static int finish(sqlite3_stmt *q)
{
    int rc = sqlite3_step(q);
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc;
}

int curvd_steplog_append(struct curvd_steplog *l, const char *id, const struct curvd_step_commit *c,
                         size_t file_min, char *why, size_t cap)
{
    sqlite3_stmt *q = l->q[L_PUT];
    const int ahead = c->record_ahead && l->files.dir[0];
    const int to_file = ahead || curvd_steplog_to_file(l, c->record_len, file_min);
    uint64_t offset = ahead ? c->record_offset : 0;
    const int64_t gen = curvd_store_log_gen(c->epoch);
    why[0] = '\0';
    if (to_file &&
        c->record_len > (size_t)sqlite3_limit(sqlite3_db_handle(q), SQLITE_LIMIT_LENGTH, -1))
        return SQLITE_TOOBIG; /* the same bound as a record in its row */
    if (to_file && !ahead) {
        int frc = curvd_logfile_append(&l->files, id, gen, c->step, c->record, c->record_len, 0,
                                       &offset, why, cap);
        if (frc != 0)
            return frc == CURVD_LOGFILE_FULL ? SQLITE_FULL : SQLITE_IOERR;
    }
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 2, c->step);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(q, 3, c->update_digest, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) /* never NULL: an empty record is a zero-length blob */
        rc = to_file || !c->record_len
                 ? sqlite3_bind_zeroblob(q, 4, 0)
                 : sqlite3_bind_blob64(q, 4, c->record, c->record_len, SQLITE_STATIC);
    if (rc == SQLITE_OK && to_file)
        rc = sqlite3_bind_int64(q, 5, (sqlite3_int64)offset);
    if (rc == SQLITE_OK && to_file)
        rc = sqlite3_bind_int64(q, 6, (sqlite3_int64)c->record_len);
    if (rc == SQLITE_OK && to_file)
        rc = sqlite3_bind_int64(q, 7, gen);
    if (rc != SQLITE_OK) {
        (void)sqlite3_clear_bindings(q);
        return rc;
    }
    return finish(q);
}

int curvd_steplog_clear(struct curvd_steplog *l, const char *id, int had_file, int64_t epoch)
{
    sqlite3_stmt *q = l->q[L_CLEAR];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc != SQLITE_OK)
        return rc;
    rc = finish(q);
    /* Only a session with rows (or bytes written ahead) may have a file:
     * most snapshots have none. */
    if (rc == SQLITE_DONE && (had_file || sqlite3_changes(sqlite3_db_handle(q)) > 0) &&
        file_goes(l, id, curvd_store_log_gen(epoch)) != SQLITE_OK)
        rc = SQLITE_NOMEM;
    return rc;
}

const struct curvd_logfiles *curvd_steplog_files(const struct curvd_steplog *l)
{
    return &l->files;
}

int curvd_steplog_to_file(const struct curvd_steplog *l, size_t len, size_t file_min)
{
    return l->files.dir[0] && len >= file_min;
}

/* Row @q's columns into @e (owned copies), the record read from session
 * @id's file when the row names one. Return SQLITE_OK, SQLITE_NOMEM,
 * CURVD_STEPLOG_MOVED, or SQLITE_IOERR with a sentence in @why. */
static int copy_row(struct curvd_steplog *l, sqlite3_stmt *q, const char *id,
                    struct curvd_log_entry *e, char *why, size_t cap)
{
    e->step = sqlite3_column_int64(q, 0);
    const unsigned char *d = sqlite3_column_text(q, 1);
    snprintf(e->update_digest, sizeof e->update_digest, "%s", d ? (const char *)d : "");
    const int in_file = sqlite3_column_type(q, 3) != SQLITE_NULL;
    const sqlite3_int64 flen = sqlite3_column_int64(q, 4);
    if (in_file && flen < 0)
        return CURVD_STEPLOG_MOVED;
    e->len = in_file ? (size_t)flen : (size_t)sqlite3_column_bytes(q, 2);
    e->record = sqlite3_malloc64(e->len ? e->len : 1);
    if (!e->record)
        return SQLITE_NOMEM;
    if (!in_file) {
        if (e->len)
            memcpy(e->record, sqlite3_column_blob(q, 2), e->len);
        return SQLITE_OK;
    }
    int frc = curvd_logfile_read(&l->files, id, sqlite3_column_int64(q, 5), e->step,
                                 (uint64_t)sqlite3_column_int64(q, 3), e->record, e->len, why, cap);
    return frc == 0 ? SQLITE_OK : frc == CURVD_LOGFILE_MOVED ? CURVD_STEPLOG_MOVED : SQLITE_IOERR;
}

int curvd_steplog_read(struct curvd_steplog *l, const char *id, int moved_empty,
                       struct curvd_session *o, char *why, size_t cap)
{
    sqlite3_stmt *q = l->q[L_READ];
    size_t n_cap = 0;
    why[0] = '\0';
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    while (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        if (o->n_log == n_cap) {
            size_t ncap = n_cap ? 2 * n_cap : 8;
            struct curvd_log_entry *g = sqlite3_realloc64(o->log, ncap * sizeof *g);
            if (!g) {
                rc = SQLITE_NOMEM;
                break;
            }
            o->log = g;
            n_cap = ncap;
        }
        struct curvd_log_entry *e = &o->log[o->n_log];
        memset(e, 0, sizeof *e);
        rc = copy_row(l, q, id, e, why, cap);
        if (rc == CURVD_STEPLOG_MOVED && moved_empty) {
            e->len = 0; /* a torn record: the replay names its step */
            rc = SQLITE_OK;
        }
        o->n_log += e->record != NULL; /* curvd_session_clear frees it */
    }
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}
