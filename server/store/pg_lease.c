/* SPDX-License-Identifier: MIT */
/* Leases in PostgreSQL (store.h, "Leases"): one UPDATE each, on
 * PostgreSQL's clock; a miss reads the lease as it is to say why. */
#include <stdio.h>
#include <string.h>

#include "store/pg.h"

#define fail curvd_store_fail

/* What each statement returns, and the read of a miss. */
#define LEASE_COLS "coalesce(lease_owner, ''), lease_epoch, lease_expires"
#define LEASE_NOW "WITH c AS (SELECT " PG_NOW_MS " AS now) "

static void lease_from(const PGresult *r, struct curvd_lease *out)
{
    snprintf(out->owner, sizeof out->owner, "%s", PQgetvalue(r, 0, 0));
    out->epoch = pg_i64(r, 0, 1);
    out->expires_at = pg_i64(r, 0, 2);
    out->now = pg_i64(r, 0, 3);
}

/* Run the lease write @sql ($1 id, $2 tenant, then @a's own); on a miss,
 * NOT_FOUND or @miss with the lease as it is in @out (may be NULL). */
static int lease_write(struct pg_store *st, const char *sql, struct pg_args *a, const char *id,
                       int miss, struct curvd_lease *out, char *err, size_t errlen)
{
    PGresult *r = NULL;
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_run(st, sql, a, &r, "writing a lease", err, errlen);
    if (status == CURVD_STORE_OK && PQntuples(r) == 0) {
        PQclear(r);
        a->n = 2;
        status = pg_run(st,
                        LEASE_NOW "SELECT " LEASE_COLS ", c.now FROM sessions, c"
                                  " WHERE id = $1 AND tenant = $2",
                        a, &r, "reading a lease", err, errlen);
        if (status == CURVD_STORE_OK && PQntuples(r) == 0)
            status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
        else if (status == CURVD_STORE_OK)
            status = fail(err, errlen, miss, "session %s: the lease is %s's, epoch %lld", id,
                          PQgetvalue(r, 0, 0), (long long)pg_i64(r, 0, 1));
    }
    if (out && (status == CURVD_STORE_OK || status == miss) && PQntuples(r) == 1)
        lease_from(r, out);
    if (status == CURVD_STORE_OK)
        curvd_trouble_write_ok(&st->base.trouble);
    PQclear(r);
    pg_leave(st);
    return status;
}

/* $1 the session, $2 its tenant, $3 the owner. */
static void lease_args(struct pg_args *a, const char *id, const char *tenant, const char *owner)
{
    pg_text(a, id);
    pg_text(a, tenant);
    pg_text(a, owner);
}

int pg_lease_acquire(struct curvd_store *base, const char *tenant, const char *id,
                     const char *owner, int64_t ttl_ms, struct curvd_lease *out, char *err,
                     size_t errlen)
{
    struct pg_args a = {0};
    lease_args(&a, id, tenant, owner);
    pg_int(&a, ttl_ms);
    return lease_write(pg_of(base),
                       LEASE_NOW "UPDATE sessions SET lease_owner = $3,"
                                 " lease_epoch = lease_epoch + 1, lease_expires = c.now + $4"
                                 " FROM c WHERE id = $1 AND tenant = $2 AND (lease_owner IS NULL"
                                 " OR lease_expires <= c.now OR lease_owner = $3)"
                                 " RETURNING " LEASE_COLS ", c.now",
                       &a, id, CURVD_STORE_LEASED, out, err, errlen);
}

int pg_lease_renew(struct curvd_store *base, const char *tenant, const char *id, const char *owner,
                   int64_t epoch, int64_t ttl_ms, struct curvd_lease *out, char *err, size_t errlen)
{
    struct pg_args a = {0};
    lease_args(&a, id, tenant, owner);
    pg_int(&a, epoch);
    pg_int(&a, ttl_ms);
    return lease_write(pg_of(base),
                       LEASE_NOW "UPDATE sessions SET lease_expires = c.now + $5 FROM c"
                                 " WHERE id = $1 AND tenant = $2 AND lease_owner = $3"
                                 " AND lease_epoch = $4 RETURNING " LEASE_COLS ", c.now",
                       &a, id, CURVD_STORE_FENCED, out, err, errlen);
}

int pg_lease_release(struct curvd_store *base, const char *tenant, const char *id,
                     const char *owner, int64_t epoch, char *err, size_t errlen)
{
    struct pg_args a = {0};
    lease_args(&a, id, tenant, owner);
    pg_int(&a, epoch);
    return lease_write(pg_of(base),
                       LEASE_NOW "UPDATE sessions SET lease_owner = NULL, lease_expires = 0 FROM c"
                                 " WHERE id = $1 AND tenant = $2 AND lease_owner = $3"
                                 " AND lease_epoch = $4 RETURNING " LEASE_COLS ", c.now",
                       &a, id, CURVD_STORE_FENCED, NULL, err, errlen);
}
