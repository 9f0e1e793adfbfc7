/* SPDX-License-Identifier: MIT */
/* Every route handler; routes.c maps them to methods and paths. */
#ifndef CURVD_HANDLERS_H
#define CURVD_HANDLERS_H

#include "http.h"

#define CURVD_HANDLER(name)                                                                        \
    void name(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp)

/* h_ops.c */
CURVD_HANDLER(curvd_h_health);
CURVD_HANDLER(curvd_h_ready);
CURVD_HANDLER(curvd_h_version);

#endif
