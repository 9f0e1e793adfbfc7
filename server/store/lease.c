/* SPDX-License-Identifier: MIT */
/* Leases in SQLite; the model is in lease.h and store.h. */
#include "store/lease.h"

#include <stdio.h>
#include <string.h>

enum { Q_READ, Q_WRITE, Q_COUNT_ };

static const char *const lease_sql[Q_COUNT_] = {
    [Q_READ] = "SELECT lease_owner, lease_epoch, lease_expires FROM sessions"
               " WHERE id = ?1 AND tenant = ?2",
    [Q_WRITE] = "UPDATE sessions SET lease_owner = ?2, lease_epoch = ?3, lease_expires = ?4"
                " WHERE id = ?1",
};

struct curvd_leases {
    sqlite3_stmt *q[Q_COUNT_];
};

int curvd_lease_decide(const struct curvd_lease_req *rq, const struct curvd_lease *cur,
                       struct curvd_lease *next)
{
    *next = *cur;
    const int mine = strcmp(cur->owner, rq->owner) == 0;
    if (rq->op == CURVD_LEASE_ACQUIRE) {
        /* Free, expired, or ours from before a restart: a new epoch, so
         * that every write of an earlier hold is fenced from now on. */
        if (cur->owner[0] && !mine && cur->expires_at > cur->now)
            return CURVD_STORE_LEASED;
        snprintf(next->owner, sizeof next->owner, "%s", rq->owner);
        next->epoch = cur->epoch + 1;
        next->expires_at = cur->now + rq->ttl_ms;
        return CURVD_STORE_OK;
    }
    /* Renew and release: only the hold of that epoch, even expired (no
     * one took it meanwhile, or the epoch would have moved on). */
    if (!mine || cur->epoch != rq->epoch)
        return CURVD_STORE_FENCED;
    if (rq->op == CURVD_LEASE_RENEW) {
        next->expires_at = cur->now + rq->ttl_ms;
    } else {
        next->owner[0] = '\0';
        next->expires_at = 0;
    }
    return CURVD_STORE_OK;
}

int curvd_leases_prepare(sqlite3 *db, struct curvd_leases **out)
{
    struct curvd_leases *l = sqlite3_malloc64(sizeof *l);
    if (!l)
        return SQLITE_NOMEM;
    memset(l, 0, sizeof *l);
    int rc = SQLITE_OK;
    for (int i = 0; rc == SQLITE_OK && i < Q_COUNT_; i++)
        rc = sqlite3_prepare_v3(db, lease_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &l->q[i], NULL);
    if (rc != SQLITE_OK) {
        curvd_leases_finalize(l);
        return rc;
    }
    *out = l;
    return SQLITE_OK;
}

void curvd_leases_finalize(struct curvd_leases *l)
{
    if (!l)
        return;
    for (int i = 0; i < Q_COUNT_; i++)
        (void)sqlite3_finalize(l->q[i]);
    sqlite3_free(l);
}

/* The session's lease into @cur: SQLITE_ROW, SQLITE_DONE (no session) or
 * SQLite's error. */
static int read_lease(struct curvd_leases *l, const struct curvd_lease_req *rq,
                      struct curvd_lease *cur)
{
    sqlite3_stmt *q = l->q[Q_READ];
    int rc = sqlite3_bind_text(q, 1, rq->id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(q, 2, rq->tenant, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK && (rc = sqlite3_step(q)) == SQLITE_ROW) {
        const unsigned char *o = sqlite3_column_text(q, 0);
        snprintf(cur->owner, sizeof cur->owner, "%s", o ? (const char *)o : "");
        cur->epoch = sqlite3_column_int64(q, 1);
        cur->expires_at = sqlite3_column_int64(q, 2);
        cur->now = rq->now;
    }
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc;
}

static int write_lease(struct curvd_leases *l, const char *id, const struct curvd_lease *next)
{
    sqlite3_stmt *q = l->q[Q_WRITE];
    int rc = sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = next->owner[0] ? sqlite3_bind_text(q, 2, next->owner, -1, SQLITE_STATIC)
                            : sqlite3_bind_null(q, 2);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 3, next->epoch);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int64(q, 4, next->expires_at);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(q);
    (void)sqlite3_reset(q);
    (void)sqlite3_clear_bindings(q);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int curvd_leases_run(struct curvd_leases *l, const struct curvd_lease_req *rq, int *status,
                     struct curvd_lease *out)
{
    struct curvd_lease cur, next;
    int rc = read_lease(l, rq, &cur);
    if (rc == SQLITE_DONE) {
        *status = CURVD_STORE_NOT_FOUND;
        return SQLITE_OK;
    }
    if (rc != SQLITE_ROW)
        return rc;
    *status = curvd_lease_decide(rq, &cur, &next);
    if (*status == CURVD_STORE_OK && (rc = write_lease(l, rq->id, &next)) != SQLITE_OK)
        return rc;
    *out = next;
    return SQLITE_OK;
}
