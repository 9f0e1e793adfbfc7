/* SPDX-License-Identifier: MIT */
/*
 * A session's step history in SQLite (migration 0007): a row per committed
 * step, written and pruned in the step's own transaction, paged by step.
 * Internal to the store: the caller holds the connection (store.c's mutex)
 * and turns SQLite's result codes into its statuses.
 */
#ifndef CURVD_HISTORY_H
#define CURVD_HISTORY_H

#include <sqlite3.h>
#include <stdint.h>

#include "store/store.h"

/* Steps pruned together (history.c says why); the same in PostgreSQL. */
#define CURVD_HISTORY_PRUNE_EVERY 64

struct curvd_history;

/* curvd_history_prepare - the statements on @db into *@out (free with
 * curvd_history_finalize). Return SQLite's result code. */
int curvd_history_prepare(sqlite3 *db, struct curvd_history **out);
void curvd_history_finalize(struct curvd_history *h);

/*
 * curvd_history_record - inside the caller's write transaction, after the
 * session's step moved to @c->step: add that step's row (unless the
 * session keeps none) and, every CURVD_HISTORY_PRUNE_EVERY steps, delete the rows older
 * than its bound, the session's history_steps or else @default_keep (the
 * reads never show those). Return SQLite's code (SQLITE_DONE on success).
 */
int curvd_history_record(struct curvd_history *h, const char *id, const struct curvd_step_commit *c,
                         int64_t at, int64_t default_keep);

/* curvd_history_prune - delete session @id's rows beyond its bound (as
 * above), e.g. after the bound changed. Return SQLite's code. */
int curvd_history_prune(struct curvd_history *h, const char *id, int64_t default_keep);

/* curvd_history_read - inside the caller's read transaction: the rows of
 * @id after @since within its bound (@default_keep as above), at most
 * @limit, into @out (items, count, more, oldest; not latest). Return
 * SQLITE_OK, SQLITE_NOMEM or SQLite's error. */
int curvd_history_read(struct curvd_history *h, const char *id, int64_t since, size_t limit,
                       int64_t default_keep, struct curvd_history_page *out);

#endif
