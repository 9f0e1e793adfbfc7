/* SPDX-License-Identifier: MIT */
/*
 * The step log in SQLite (migration 0008; docs/DURABILITY.md): a row per
 * step committed as its input, after the session's snapshot (the state in
 * state_parts). Internal to the store: the caller holds the connection
 * (store.c's mutex) and turns SQLite's result codes into its statuses.
 */
#ifndef CURVD_STEPLOG_H
#define CURVD_STEPLOG_H

#include <sqlite3.h>

#include "store/store.h"

struct curvd_steplog;

/* curvd_steplog_prepare - the statements on @db into *@out (free with
 * curvd_steplog_finalize). Return SQLite's result code. */
int curvd_steplog_prepare(sqlite3 *db, struct curvd_steplog **out);
void curvd_steplog_finalize(struct curvd_steplog *l);

/* curvd_steplog_append - inside the caller's write transaction: step
 * @c->step of session @id as its record. Return SQLite's code (SQLITE_DONE
 * on success; a constraint error when the row exists). */
int curvd_steplog_append(struct curvd_steplog *l, const char *id,
                         const struct curvd_step_commit *c);

/* curvd_steplog_clear - inside the caller's write transaction, after a
 * snapshot of session @id was written: delete its rows. Return SQLite's
 * code (SQLITE_DONE on success). */
int curvd_steplog_clear(struct curvd_steplog *l, const char *id);

/* curvd_steplog_read - inside the caller's read transaction: session @id's
 * rows in step order into @o->log / @o->n_log (sqlite3_malloc'd, freed by
 * curvd_session_clear). Return SQLITE_OK, SQLITE_NOMEM or SQLite's error. */
int curvd_steplog_read(struct curvd_steplog *l, const char *id, struct curvd_session *o);

#endif
