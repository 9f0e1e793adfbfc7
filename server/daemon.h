/* SPDX-License-Identifier: MIT */
/* Bringing the daemon's state up and down: store, registry, tokens. */
#ifndef CURVD_DAEMON_H
#define CURVD_DAEMON_H

#include <stddef.h>

#include "server.h"

/* Open the database (applying migrations) and create the registry, whose
 * loader reads sessions back from the database. 0, or -1 with @err. */
int curvd_daemon_open(struct curvd_server *srv, char *err, size_t errlen);

/* Release what curvd_daemon_open() made; safe on a partial open. */
void curvd_daemon_close(struct curvd_server *srv);

#endif
