/* SPDX-License-Identifier: MIT */
/* The daemon's side of leases; the rules are in leases.h and docs/CLUSTER.md. */
#include "session/leases.h"

#include <stdlib.h>

#include "http/log.h"
#include "http/metrics.h"
#include "store/store.h"

/* A lease is renewed once a third of it has passed (two renewals may fail
 * before it runs out), and given up after a lease time without a request. */
#define RENEW_DIVISOR 3

int64_t curvd_lease_ttl_ms(const struct curvd_server *srv)
{
    return srv->cfg.lease_ttl_ms ? (int64_t)srv->cfg.lease_ttl_ms : CURVD_LEASE_TTL_DEFAULT_MS;
}

static int leases_on(const struct curvd_server *srv)
{
    return srv->node_id[0] != '\0';
}

int64_t curvd_lease_epoch(const struct curvd_server *srv, const struct curvd_entry *e)
{
    return leases_on(srv) ? e->epoch : CURVD_STORE_ANY_EPOCH;
}

/* Acquire the lease of (@tenant, @id): the store's status, *@l. */
static int acquire(struct curvd_server *srv, const char *tenant, const char *id,
                   struct curvd_lease *l)
{
    char err[256];
    int st = curvd_store_lease_acquire(srv->store, tenant, id, srv->node_id,
                                       curvd_lease_ttl_ms(srv), l, err, sizeof err);
    if (st == CURVD_STORE_OK)
        curvd_metrics_lease(srv->metrics, CURVD_LEASE_EV_TAKEN);
    else if (st != CURVD_STORE_LEASED && st != CURVD_STORE_NOT_FOUND)
        curvd_log(CURVD_LOG_ERROR, "taking the lease of session %s: %s", id, err);
    return st;
}

int curvd_lease_take(struct curvd_server *srv, const char *tenant, const char *id,
                     struct curvd_hold *hold)
{
    if (!leases_on(srv) || hold->leased)
        return 0;
    *hold = (struct curvd_hold){0};
    struct curvd_lease l;
    int st = acquire(srv, tenant, id, &l);
    if (st == CURVD_STORE_OK)
        *hold = (struct curvd_hold){.epoch = l.epoch, .leased = 1};
    else if (st == CURVD_STORE_LEASED)
        hold->retry_ms = l.expires_at - l.now;
    return st == CURVD_STORE_OK          ? 0
           : st == CURVD_STORE_LEASED    ? 3
           : st == CURVD_STORE_NOT_FOUND ? 1
                                         : -1;
}

enum curvd_reg_status curvd_lease_again(struct curvd_server *srv, struct curvd_entry *e,
                                        struct curvd_hold *hold)
{
    if (!leases_on(srv) || curvd_registry_leased(srv->reg, e))
        return CURVD_REG_OK;
    struct curvd_lease l;
    int st = acquire(srv, e->tenant, e->id, &l);
    if (st == CURVD_STORE_LEASED)
        hold->retry_ms = l.expires_at - l.now;
    if (st != CURVD_STORE_OK)
        return st == CURVD_STORE_LEASED      ? CURVD_REG_LEASED
               : st == CURVD_STORE_NOT_FOUND ? CURVD_REG_NOT_FOUND
                                             : CURVD_REG_ERROR;
    if (l.epoch != e->epoch + 1) { /* another hold came between: memory may be stale */
        *hold = (struct curvd_hold){.epoch = l.epoch, .leased = 1};
        return CURVD_REG_NOT_FOUND;
    }
    curvd_registry_set_lease(srv->reg, e, l.epoch);
    return CURVD_REG_OK;
}

void curvd_lease_give_up(struct curvd_server *srv, const char *tenant, const char *id,
                         const struct curvd_hold *hold)
{
    char err[256];
    if (leases_on(srv) && hold->leased &&
        curvd_store_lease_release(srv->store, tenant, id, srv->node_id, hold->epoch, err,
                                  sizeof err) == CURVD_STORE_OK)
        curvd_metrics_lease(srv->metrics, CURVD_LEASE_EV_RELEASED);
}

void curvd_lease_fenced(struct curvd_server *srv, const struct curvd_entry *e, const char *err)
{
    curvd_metrics_lease(srv->metrics, CURVD_LEASE_EV_FENCED);
    curvd_log(CURVD_LOG_WARN, "session %s: write refused, another daemon holds it now (%s)", e->id,
              err);
}

unsigned curvd_leases_tick_ms(const struct curvd_server *srv)
{
    int64_t t = curvd_lease_ttl_ms(srv) / RENEW_DIVISOR;
    return t < 1 ? 1u : (unsigned)(t < 1000000 ? t : 1000000);
}

/* Renew or give up one due lease, and tell the registry. */
static void keep_one(struct curvd_server *srv, const struct curvd_lease_due *d)
{
    char err[256];
    int st;
    if (d->release)
        st = curvd_store_lease_release(srv->store, d->tenant, d->id, srv->node_id, d->epoch, err,
                                       sizeof err);
    else
        st = curvd_store_lease_renew(srv->store, d->tenant, d->id, srv->node_id, d->epoch,
                                     curvd_lease_ttl_ms(srv), NULL, err, sizeof err);
    enum curvd_lease_outcome out = d->release ? CURVD_LEASE_RELEASED : CURVD_LEASE_RENEWED;
    if (st == CURVD_STORE_FENCED || st == CURVD_STORE_NOT_FOUND) {
        out = CURVD_LEASE_LOST; /* taken over, or deleted: memory is stale either way */
        if (st == CURVD_STORE_FENCED && !d->gone) { /* a copy in memory was stale */
            curvd_metrics_lease(srv->metrics, CURVD_LEASE_EV_LOST);
            curvd_log(CURVD_LOG_WARN, "session %s: lease lost, dropped from memory (%s)", d->id,
                      err);
        }
    } else if (st != CURVD_STORE_OK) {
        curvd_log(CURVD_LOG_WARN, "session %s: keeping its lease: %s (tried again soon)", d->id,
                  err);
        return;
    } else {
        curvd_metrics_lease(srv->metrics,
                            d->release ? CURVD_LEASE_EV_RELEASED : CURVD_LEASE_EV_RENEWED);
    }
    curvd_registry_lease_done(srv->reg, d->id, d->epoch, out, curvd_registry_now_ms());
}

/* Renew the leases last renewed @renew_ms ago, give up those of sessions
 * idle @idle_ms or gone. */
static void keep(struct curvd_server *srv, int64_t renew_ms, int64_t idle_ms)
{
    if (!leases_on(srv) || !srv->reg || !srv->store)
        return;
    struct curvd_lease_due *due = NULL;
    long n = curvd_registry_leases_due(srv->reg, curvd_registry_now_ms(), renew_ms, idle_ms, &due);
    for (long i = 0; i < n; i++)
        keep_one(srv, &due[i]);
    free(due);
}

void curvd_leases_keep(struct curvd_server *srv)
{
    int64_t ttl = curvd_lease_ttl_ms(srv);
    keep(srv, ttl / RENEW_DIVISOR, ttl);
}

void curvd_leases_give_up_all(struct curvd_server *srv)
{
    keep(srv, 0, 0); /* every session is idle now: each lease is given up */
}
