/* SPDX-License-Identifier: MIT */
#include "daemon.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "curv.h"
#include "http/auth.h"
#include "http/metrics.h"
#include "session/leases.h"
#include "session/registry.h"
#include "session/service.h"
#include "store/store.h"

/* The lease owner this daemon writes as (docs/CLUSTER.md): --node-id, or
 * the host name and port, stable across restarts, so that a restarted
 * daemon takes its own leases over at once; with port 0 (tests), the
 * process id until curvd_daemon_bound names the port it got. */
static int set_node_id(struct curvd_server *srv, char *err, size_t errlen)
{
    const char *id = srv->cfg.node_id;
    if (id) {
        if (!id[0] || strlen(id) >= sizeof srv->node_id) {
            snprintf(err, errlen, "--node-id must be 1 to %zu bytes", sizeof srv->node_id - 1);
            return -1;
        }
        snprintf(srv->node_id, sizeof srv->node_id, "%s", id);
        return 0;
    }
    char host[64] = "localhost";
    if (gethostname(host, sizeof host) != 0 || !host[0])
        snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0';
    if (srv->cfg.port)
        snprintf(srv->node_id, sizeof srv->node_id, "%s:%u", host, srv->cfg.port);
    else
        snprintf(srv->node_id, sizeof srv->node_id, "%s:pid%ld", host, (long)getpid());
    return 0;
}

void curvd_daemon_bound(struct curvd_server *srv, unsigned port)
{
    if (srv->cfg.node_id || srv->cfg.port || !port)
        return;
    char host[sizeof srv->node_id];
    memcpy(host, srv->node_id, sizeof host);
    char *colon = strrchr(host, ':');
    if (colon)
        *colon = '\0';
    snprintf(srv->node_id, sizeof srv->node_id, "%.100s:%u", host, port);
}

int curvd_daemon_open(struct curvd_server *srv, char *err, size_t errlen)
{
    if (set_node_id(srv, err, errlen) != 0)
        return -1;
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
    (void)curvd_store_set_log_file_min(srv->store, srv->cfg.log_file_min);
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
    curvd_leases_give_up_all(srv); /* other daemons may take the sessions at once */
    curvd_registry_free(srv->reg);
    srv->reg = NULL;
    curvd_store_close(srv->store);
    srv->store = NULL;
    curvd_auth_free(srv->auth);
    srv->auth = NULL;
    curvd_metrics_free(srv->metrics);
    srv->metrics = NULL;
}
