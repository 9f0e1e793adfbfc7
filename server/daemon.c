/* SPDX-License-Identifier: MIT */
#include "daemon.h"

#include <stdio.h>

#include "curv.h"
#include "http/auth.h"
#include "http/metrics.h"
#include "session/registry.h"
#include "store/store.h"

/* The registry's loader: a session not in memory comes back from its last
 * committed state, so eviction and restarts lose nothing acknowledged. */
static int load_session(void *ctx, const char *id, const char *tenant, curv_opt **out,
                        size_t *bytes, struct curvd_committed *committed)
{
    struct curvd_server *srv = ctx;
    struct curvd_session s = {0};
    char err[256];
    int st = curvd_store_get(srv->store, tenant, id, 1, &s, err, sizeof err);
    if (st == CURVD_STORE_NOT_FOUND)
        return 1;
    if (st != CURVD_STORE_OK) {
        fprintf(stderr, "curvd: loading session %s: %s\n", id, err);
        return -1;
    }
    curv_error cerr;
    int rc = 0;
    if (curv_opt_load(s.state, s.state_len, out, &cerr) != CURV_OK) {
        fprintf(stderr, "curvd: session %s has an unreadable state: %s\n", id, cerr.text);
        rc = -1;
    }
    *bytes = s.state_len;
    if (rc == 0) /* what the next commit compares with: the parts as stored */
        curvd_committed_set(committed, s.parts, s.n_parts);
    curvd_session_clear(&s);
    return rc;
}

int curvd_daemon_open(struct curvd_server *srv, char *err, size_t errlen)
{
    enum curvd_durability d =
        srv->cfg.durability_full ? CURVD_DURABILITY_FULL : CURVD_DURABILITY_NORMAL;
    if (srv->cfg.token_file && !(srv->auth = curvd_auth_load(srv->cfg.token_file, err, errlen)))
        return -1;
    if (curvd_store_open(srv->cfg.db_path, d, &srv->store, err, errlen) != CURVD_STORE_OK)
        return -1;
    if (!(srv->metrics = curvd_metrics_new())) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    srv->reg = curvd_registry_new(srv->cfg.max_sessions, srv->cfg.mem_budget, load_session, srv);
    if (!srv->reg) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void curvd_daemon_close(struct curvd_server *srv)
{
    curvd_registry_free(srv->reg);
    srv->reg = NULL;
    curvd_store_close(srv->store);
    srv->store = NULL;
    curvd_auth_free(srv->auth);
    srv->auth = NULL;
    curvd_metrics_free(srv->metrics);
    srv->metrics = NULL;
}
