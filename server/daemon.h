/* SPDX-License-Identifier: MIT */
/* Bringing the daemon's state up and down: store, registry, tokens. */
#ifndef CURVD_DAEMON_H
#define CURVD_DAEMON_H

#include <stddef.h>

#include "server.h"

/* Open the database (applying migrations) and create the registry, whose
 * loader reads sessions back from the database. 0, or -1 with @err. */
int curvd_daemon_open(struct curvd_server *srv, char *err, size_t errlen);

/* After the HTTP start: a daemon on port 0 without --node-id is named by
 * the port it was given (so a restart on that port keeps its leases).
 * Before any request can arrive: nothing reads the name concurrently. */
void curvd_daemon_bound(struct curvd_server *srv, unsigned port);

/* Release what curvd_daemon_open() made; safe on a partial open. */
void curvd_daemon_close(struct curvd_server *srv);

#endif
