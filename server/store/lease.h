/* SPDX-License-Identifier: MIT */
/*
 * Leases in SQLite (migration 0009; docs/CLUSTER.md "Leases and
 * fencing"): the columns lease_owner, lease_epoch and lease_expires of
 * sessions, read and changed in the caller's write transaction. Internal
 * to the store: the caller holds the connection (store.c's mutex), opens
 * and ends the transaction, and turns SQLite's result codes into its
 * statuses. The rules (who may take, renew or give up a lease) are
 * curvd_lease_decide's alone.
 */
#ifndef CURVD_LEASE_H
#define CURVD_LEASE_H

#include <sqlite3.h>

#include "store/store.h"

enum curvd_lease_op { CURVD_LEASE_ACQUIRE, CURVD_LEASE_RENEW, CURVD_LEASE_RELEASE };

/* One change asked of a lease; all borrowed. @epoch is ignored by an
 * acquisition, @ttl_ms by a release; @now is the store's clock. */
struct curvd_lease_req {
    enum curvd_lease_op op;
    const char *tenant, *id, *owner;
    int64_t epoch, ttl_ms, now;
};

/* curvd_lease_decide - from the lease @cur as it is (its @now is @rq's),
 * the outcome of @rq: CURVD_STORE_OK with the lease it leaves in @next,
 * or LEASED / FENCED with @next a copy of @cur. */
int curvd_lease_decide(const struct curvd_lease_req *rq, const struct curvd_lease *cur,
                       struct curvd_lease *next);

struct curvd_leases;

/* curvd_leases_prepare - the statements on @db into *@out (free with
 * curvd_leases_finalize). Return SQLite's result code. */
int curvd_leases_prepare(sqlite3 *db, struct curvd_leases **out);
void curvd_leases_finalize(struct curvd_leases *l);

/* curvd_leases_run - inside the caller's write transaction: read the
 * session's lease, decide, write what changed. Return SQLITE_OK with
 * *@status (OK, NOT_FOUND, LEASED or FENCED) and @out (the lease as it
 * is afterwards; untouched on NOT_FOUND), or SQLite's error code. */
int curvd_leases_run(struct curvd_leases *l, const struct curvd_lease_req *rq, int *status,
                     struct curvd_lease *out);

#endif
