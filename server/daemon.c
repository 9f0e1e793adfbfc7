/* SPDX-License-Identifier: MIT */
#include "daemon.h"

#include <stdio.h>

#include "curv.h"
#include "http/auth.h"
#include "http/metrics.h"
#include "session/registry.h"
#include "session/service.h"
#include "store/store.h"

int curvd_daemon_open(struct curvd_server *srv, char *err, size_t errlen)
{
    enum curvd_durability d =
        srv->cfg.durability_full ? CURVD_DURABILITY_FULL : CURVD_DURABILITY_NORMAL;
    if (srv->cfg.token_file && !(srv->auth = curvd_auth_load(srv->cfg.token_file, err, errlen)))
        return -1;
    if (curvd_store_open(srv->cfg.db_path, d, &srv->store, err, errlen) != CURVD_STORE_OK)
        return -1;
    if (srv->cfg.history_set &&
        curvd_store_set_history_default(srv->store, srv->cfg.history_steps) != CURVD_STORE_OK) {
        snprintf(err, errlen, "--history must be 0 to %d steps", CURVD_STORE_HISTORY_MAX);
        return -1;
    }
    if (!(srv->metrics = curvd_metrics_new())) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    srv->reg = curvd_registry_new(srv->cfg.max_sessions, srv->cfg.mem_budget, curvd_svc_load, srv);
    if (!srv->reg) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    curvd_registry_set_background(srv->reg, curvd_svc_submit_background, srv);
    if (!(srv->sweeper = curvd_sweeper_start(srv))) {
        snprintf(err, errlen, "cannot start the idle-session sweeper");
        return -1;
    }
    return 0;
}

void curvd_daemon_close(struct curvd_server *srv)
{
    curvd_sweeper_stop(srv->sweeper); /* first: it uses the store and registry */
    srv->sweeper = NULL;
    curvd_registry_free(srv->reg);
    srv->reg = NULL;
    curvd_store_close(srv->store);
    srv->store = NULL;
    curvd_auth_free(srv->auth);
    srv->auth = NULL;
    curvd_metrics_free(srv->metrics);
    srv->metrics = NULL;
}
