/* SPDX-License-Identifier: MIT */
/*
 * The step log in SQLite (migration 0008; docs/DURABILITY.md): a row per
 * step committed as its input, after the session's snapshot (the state in
 * state_parts). Internal to the store: the caller holds the connection
 * (store.c's mutex) and turns SQLite's result codes into its statuses.
 * Records of at least a bound's size go to files beside the database
 * (store/logfile.h): their rows (migration 0010) say where.
 */
#ifndef CURVD_STEPLOG_H
#define CURVD_STEPLOG_H

#include <sqlite3.h>

#include "store/store.h"

struct curvd_steplog;

/* A read found a row whose file no longer holds its record: a snapshot
 * committed since the read transaction began; read again. */
#define CURVD_STEPLOG_MOVED (-1)

/* curvd_steplog_prepare - the statements on @db into *@out (free with
 * curvd_steplog_finalize); records in files beside @db_path (synced when
 * @sync). Return SQLite's result code. */
int curvd_steplog_prepare(sqlite3 *db, const char *db_path, int sync, struct curvd_steplog **out);
void curvd_steplog_finalize(struct curvd_steplog *l);

/* curvd_steplog_append - inside the caller's write transaction: step
 * @c->step of session @id as its record, in the session's file when it
 * has @file_min bytes or more (written, and synced under FULL, before
 * this returns; or already, when @c->record_ahead says where). Return SQLite's code (SQLITE_DONE on
 * success; a constraint error when the row exists); a file that failed is SQLITE_FULL or
 * SQLITE_IOERR with a sentence in @why[@cap] (else ""). Bytes a failed or rolled-back append left
 * in a file are named by no row and go with the file. */
int curvd_steplog_append(struct curvd_steplog *l, const char *id, const struct curvd_step_commit *c,
                         size_t file_min, char *why, size_t cap);

/* curvd_steplog_files - where records in files go (read-only: any thread
 * may append with it, as the store's writer does for records written
 * ahead of their commits). */
const struct curvd_logfiles *curvd_steplog_files(const struct curvd_steplog *l);

/* curvd_steplog_to_file - does a record of @len bytes go to a file, by
 * @file_min? */
int curvd_steplog_to_file(const struct curvd_steplog *l, size_t len, size_t file_min);

/* curvd_steplog_clear - inside the caller's write transaction, after a
 * snapshot of session @id was written: delete its rows (and its file once
 * the transaction commits, when there were rows or @had_file: those of
 * generations up to lease epoch @epoch's, store/logfile.h). Return
 * SQLite's code (SQLITE_DONE on success). */
int curvd_steplog_clear(struct curvd_steplog *l, const char *id, int had_file, int64_t epoch);

/* curvd_steplog_forget - session @id's rows are being deleted with it by
 * the caller's write transaction: its file goes once that commits.
 * SQLITE_OK or SQLITE_NOMEM. */
int curvd_steplog_forget(struct curvd_steplog *l, const char *id);

/* After the caller's write transaction committed (the files of sessions
 * whose rows it deleted are removed) or rolled back (they stay). */
void curvd_steplog_committed(struct curvd_steplog *l);
void curvd_steplog_rolled_back(struct curvd_steplog *l);

/* curvd_steplog_read - inside the caller's read transaction: session @id's
 * rows in step order into @o->log / @o->n_log (sqlite3_malloc'd, freed by
 * curvd_session_clear), records in files read from them. Return
 * SQLITE_OK, SQLITE_NOMEM, CURVD_STEPLOG_MOVED (unless @moved_empty: the
 * record is then given as empty, which no replay takes), SQLite's error,
 * or SQLITE_IOERR for a file that cannot be read, with a sentence in
 * @why[@cap]. */
int curvd_steplog_read(struct curvd_steplog *l, const char *id, int moved_empty,
                       struct curvd_session *o, char *why, size_t cap);

#endif
