/* SPDX-License-Identifier: MIT */
/*
 * The daemon's side of leases (docs/CLUSTER.md "Leases and fencing"): a
 * session is held in memory under a lease of the store (store.h), taken
 * when it is loaded or taken again after an idle spell, renewed while it
 * stays in use, given up when it goes idle or leaves memory. Every write
 * carries the epoch it was taken at; a write or renewal the store fences
 * drops the session from memory without writing. With srv->node_id ""
 * (a server built by hand in a test) there are no leases and no fencing.
 */
#ifndef CURVD_SESSION_LEASES_H
#define CURVD_SESSION_LEASES_H

#include <stdint.h>

#include "server.h"
#include "session/registry.h"

/* curvd_lease_ttl_ms - the lease time in use. */
int64_t curvd_lease_ttl_ms(const struct curvd_server *srv);

/* curvd_lease_epoch - the epoch a write of @e carries. */
int64_t curvd_lease_epoch(const struct curvd_server *srv, const struct curvd_entry *e);

/* curvd_lease_take - before session @id is read to be loaded: take its
 * lease into @hold, unless @hold holds it already. 0; 3 another daemon
 * holds it (@hold->retry_ms); 1 no such session; -1 the store failed
 * (logged). */
int curvd_lease_take(struct curvd_server *srv, const char *tenant, const char *id,
                     struct curvd_hold *hold);

/* curvd_lease_again - @e (held by the caller) is in memory: make sure its
 * lease is held. CURVD_REG_OK (held, or taken again right after the
 * epoch it has: nobody held it meanwhile); CURVD_REG_NOT_FOUND (someone
 * else held it meanwhile: the lease is taken, in @hold, and the caller
 * drops @e and loads it again under it); CURVD_REG_LEASED
 * (@hold->retry_ms); CURVD_REG_ERROR. */
enum curvd_reg_status curvd_lease_again(struct curvd_server *srv, struct curvd_entry *e,
                                        struct curvd_hold *hold);

/* curvd_lease_give_up - give up the lease in @hold (if held) of a
 * session that is not kept in memory after all (its load failed). */
void curvd_lease_give_up(struct curvd_server *srv, const char *tenant, const char *id,
                         const struct curvd_hold *hold);

/* curvd_leases_give_up_all - at shutdown, the requests done: give up
 * every lease held, so that other daemons take the sessions at once. */
void curvd_leases_give_up_all(struct curvd_server *srv);

/* curvd_lease_fenced - a write of @e was fenced: count it (the caller
 * drops @e). */
void curvd_lease_fenced(struct curvd_server *srv, const struct curvd_entry *e, const char *err);

/* curvd_leases_keep - one round of the sweeper: renew the leases due,
 * give up those of idle sessions and of sessions that left memory, drop
 * the sessions whose lease was lost. Its interval: curvd_leases_tick_ms. */
void curvd_leases_keep(struct curvd_server *srv);
unsigned curvd_leases_tick_ms(const struct curvd_server *srv);

#endif
