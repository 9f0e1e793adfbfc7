/* SPDX-License-Identifier: MIT */
/* A session's step history in SQLite; the model is in history.h. */
#include "store/history.h"

#include <string.h>

enum { H_PUT, H_PRUNE, H_PAGE, H_OLDEST, H_COUNT_ };

/* Steps pruned together: the prune's delete dirties the page at the old
 * end of the session's rows, so deleting every step would cost each
 * commit a second page write (measured: docs/NOTES.md, "Step history").
 * Up to this many steps beyond the bound stay on disk meanwhile, and the
 * reads leave them out, so a reader sees exactly the bound. */
#define PRUNE_EVERY CURVD_HISTORY_PRUNE_EVERY

/* ?1 the session id everywhere. The bound is the session's own
 * history_steps or, when NULL, the daemon's default (bound last). */
/* The steps a reader sees are after this one: the bound (?4 the default)
 * counted back from the session's step. */
#define KEPT_FROM "(SELECT step - coalesce(history_steps, ?4) FROM sessions WHERE id = ?1)"

static const char *const history_sql[H_COUNT_] = {
    [H_PUT] =
        "INSERT OR REPLACE INTO step_history (session_id, step, at, callbacks, timing, report)"
        " SELECT ?1, ?2, ?3, ?4, ?5, ?6 FROM sessions"
        " WHERE id = ?1 AND coalesce(history_steps, ?7) > 0",
    /* A range of the primary key: the rows at or before step - bound. */
    [H_PRUNE] = "DELETE FROM step_history WHERE session_id = ?1 AND step <="
                " (SELECT step - coalesce(history_steps, ?2) FROM sessions WHERE id = ?1)",
    [H_PAGE] =
        "SELECT step, at, callbacks, timing, report FROM step_history"
        " WHERE session_id = ?1 AND step > ?2 AND step > " KEPT_FROM " ORDER BY step LIMIT ?3",
    [H_OLDEST] = "SELECT min(step) FROM step_history WHERE session_id = ?1 AND step > " KEPT_FROM,
};

struct curvd_history {
    sqlite3_stmt *q[H_COUNT_];
};

int curvd_history_prepare(sqlite3 *db, struct curvd_history **out)
{
    struct curvd_history *h = sqlite3_malloc64(sizeof *h);
    if (!h)
        return SQLITE_NOMEM;
    memset(h, 0, sizeof *h);
    int rc = SQLITE_OK;
    for (int i = 0; rc == SQLITE_OK && i < H_COUNT_; i++)
        rc = sqlite3_prepare_v3(db, history_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &h->q[i], NULL);
    if (rc != SQLITE_OK) {
        curvd_history_finalize(h);
        return rc;
    }
    *out = h;
    return SQLITE_OK;
}

void curvd_history_finalize(struct curvd_history *h)
{
    if (!h)
        return;
    for (int i = 0; i < H_COUNT_; i++)
        (void)sqlite3_finalize(h->q[i]);
    sqlite3_free(h);
}

/* Step @q to its end and leave it ready for its next use. */
static int finish(sqlite3_stmt *q)
{
    int rc = sqlite3_step(q);
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc;
}

static int bind_text(sqlite3_stmt *q, int i, const char *t)
{
    return t ? sqlite3_bind_text(q, i, t, -1, SQLITE_STATIC) : sqlite3_bind_null(q, i);
}

int curvd_history_prune(struct curvd_history *h, const char *id, int64_t default_keep)
{
    sqlite3_stmt *q = h->q[H_PRUNE];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 2, default_keep);
    return rc == SQLITE_OK ? finish(q) : rc;
}

int curvd_history_record(struct curvd_history *h, const char *id, const struct curvd_step_commit *c,
                         int64_t at, int64_t default_keep)
{
    sqlite3_stmt *q = h->q[H_PUT];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 2, c->step);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 3, at);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 4, c->callbacks);
    if (rc == SQLITE_OK)
        rc = bind_text(q, 5, c->timing);
    if (rc == SQLITE_OK)
        rc = bind_text(q, 6, c->report);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 7, default_keep);
    if (rc != SQLITE_OK) {
        (void)sqlite3_clear_bindings(q);
        return rc;
    }
    rc = finish(q);
    if (rc != SQLITE_DONE || c->step % PRUNE_EVERY != 0)
        return rc;
    return curvd_history_prune(h, id, default_keep);
}

/* An owned copy of text column @col (sqlite3_malloc'd), NULL for NULL.
 * Return 0, or -1 out of memory. */
static int copy_text(sqlite3_stmt *q, int col, char **out)
{
    const unsigned char *t = sqlite3_column_text(q, col);
    *out = t ? sqlite3_mprintf("%s", (const char *)t) : NULL;
    return t && !*out ? -1 : 0;
}

/* Read the page's rows from the bound @q into @out. */
static int read_rows(sqlite3_stmt *q, size_t limit, struct curvd_history_page *out)
{
    int rc;
    while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
        if (out->count == limit) { /* the one read past the page */
            out->more = 1;
            return SQLITE_OK;
        }
        struct curvd_history_entry *e = &out->items[out->count++];
        e->step = sqlite3_column_int64(q, 0);
        e->at = sqlite3_column_int64(q, 1);
        e->callbacks = sqlite3_column_int64(q, 2);
        if (copy_text(q, 3, &e->timing) || copy_text(q, 4, &e->report))
            return SQLITE_NOMEM;
    }
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int curvd_history_read(struct curvd_history *h, const char *id, int64_t since, size_t limit,
                       int64_t default_keep, struct curvd_history_page *out)
{
    out->items = sqlite3_malloc64((limit ? limit : 1) * sizeof *out->items);
    if (!out->items)
        return SQLITE_NOMEM;
    memset(out->items, 0, (limit ? limit : 1) * sizeof *out->items);
    sqlite3_stmt *q = h->q[H_PAGE];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 2, since);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 3, (sqlite3_int64)limit + 1);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 4, default_keep);
    if (rc == SQLITE_OK)
        rc = read_rows(q, limit, out);
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    q = h->q[H_OLDEST];
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 4, default_keep);
    if (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        out->oldest = sqlite3_column_int64(q, 0); /* NULL reads 0: none kept */
        rc = SQLITE_OK;
    }
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc;
}

void curvd_history_page_clear(struct curvd_history_page *p)
{
    if (!p)
        return;
    for (size_t i = 0; p->items && i < p->count; i++) {
        sqlite3_free(p->items[i].timing);
        sqlite3_free(p->items[i].report);
    }
    sqlite3_free(p->items);
    memset(p, 0, sizeof *p);
}
