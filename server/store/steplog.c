/* SPDX-License-Identifier: MIT */
/* The step log in SQLite; the model is in steplog.h. */
#include "store/steplog.h"

#include <stdio.h>
#include <string.h>

enum { L_PUT, L_CLEAR, L_READ, L_COUNT_ };

static const char *const steplog_sql[L_COUNT_] = {
    [L_PUT] = "INSERT INTO step_log (session_id, step, update_digest, record)"
              " VALUES (?1, ?2, ?3, ?4)",
    /* A range of the primary key: every row of the session. */
    [L_CLEAR] = "DELETE FROM step_log WHERE session_id = ?1",
    [L_READ] = "SELECT step, update_digest, record FROM step_log WHERE session_id = ?1"
               " ORDER BY step",
};

struct curvd_steplog {
    sqlite3_stmt *q[L_COUNT_];
};

int curvd_steplog_prepare(sqlite3 *db, struct curvd_steplog **out)
{
    struct curvd_steplog *l = sqlite3_malloc64(sizeof *l);
    if (!l)
        return SQLITE_NOMEM;
    memset(l, 0, sizeof *l);
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
    sqlite3_free(l);
}

/* Step @q to its end and leave it ready for its next use. */
static int finish(sqlite3_stmt *q)
{
    int rc = sqlite3_step(q);
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc;
}

int curvd_steplog_append(struct curvd_steplog *l, const char *id, const struct curvd_step_commit *c)
{
    sqlite3_stmt *q = l->q[L_PUT];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 2, c->step);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(q, 3, c->update_digest, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK) /* never NULL: an empty record is a zero-length blob */
        rc =
            sqlite3_bind_blob64(q, 4, c->record_len ? c->record : "", c->record_len, SQLITE_STATIC);
    if (rc != SQLITE_OK) {
        (void)sqlite3_clear_bindings(q);
        return rc;
    }
    return finish(q);
}

int curvd_steplog_clear(struct curvd_steplog *l, const char *id)
{
    sqlite3_stmt *q = l->q[L_CLEAR];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    return rc == SQLITE_OK ? finish(q) : rc;
}

/* Row @q's columns into @e (owned copies). Return 0, or -1 out of memory. */
static int copy_row(sqlite3_stmt *q, struct curvd_log_entry *e)
{
    e->step = sqlite3_column_int64(q, 0);
    const unsigned char *d = sqlite3_column_text(q, 1);
    snprintf(e->update_digest, sizeof e->update_digest, "%s", d ? (const char *)d : "");
    const void *r = sqlite3_column_blob(q, 2);
    e->len = (size_t)sqlite3_column_bytes(q, 2);
    e->record = sqlite3_malloc64(e->len ? e->len : 1);
    if (!e->record)
        return -1;
    if (e->len)
        memcpy(e->record, r, e->len);
    return 0;
}

int curvd_steplog_read(struct curvd_steplog *l, const char *id, struct curvd_session *o)
{
    sqlite3_stmt *q = l->q[L_READ];
    size_t cap = 0;
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    while (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        rc = SQLITE_OK;
        if (o->n_log == cap) {
            size_t ncap = cap ? 2 * cap : 8;
            struct curvd_log_entry *g = sqlite3_realloc64(o->log, ncap * sizeof *g);
            if (!g) {
                rc = SQLITE_NOMEM;
                break;
            }
            o->log = g;
            cap = ncap;
        }
        memset(&o->log[o->n_log], 0, sizeof o->log[o->n_log]);
        if (copy_row(q, &o->log[o->n_log]) != 0)
            rc = SQLITE_NOMEM;
        else
            o->n_log++;
    }
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}
