/* SPDX-License-Identifier: MIT */
/* Counters for /metrics (Prometheus text format, prefix curvd_). Lock-free:
 * every field is an atomic updated by the request threads. */
#ifndef CURVD_METRICS_H
#define CURVD_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "curv.h"
#include "http/http.h"
#include "http/pool.h"

struct curvd_metrics;

struct curvd_metrics *curvd_metrics_new(void);
void curvd_metrics_free(struct curvd_metrics *m);

/* One finished request: @route is an index into curvd_routes or
 * curvd_route_count for unmatched paths. */
void curvd_metrics_request(struct curvd_metrics *m, size_t route, int status, double seconds,
                           size_t bytes_in, size_t bytes_out);
/* One applied step of an optimizer of @kind. */
void curvd_metrics_step(struct curvd_metrics *m, curv_opt_kind kind);
/* @n sessions deleted for being idle past their TTL; NULL @m: no-op. */
void curvd_metrics_expired(struct curvd_metrics *m, size_t n);
/* One row of the step log written (@snapshot 0) or one snapshot of a
 * session's state (1); NULL @m: no-op. */
void curvd_metrics_commit_form(struct curvd_metrics *m, int snapshot);
/* One row of the step log whose record was written into its file while
 * the library stepped (store.h's curvd_store_write_ahead); NULL @m: no-op. */
void curvd_metrics_log_ahead(struct curvd_metrics *m);
/* Leases (docs/CLUSTER.md): taken, renewed, given up, lost (a renewal
 * found another epoch), and writes refused by fencing; NULL @m: no-op. */
enum curvd_lease_event {
    CURVD_LEASE_EV_TAKEN,
    CURVD_LEASE_EV_RENEWED,
    CURVD_LEASE_EV_RELEASED,
    CURVD_LEASE_EV_LOST,
    CURVD_LEASE_EV_FENCED,
    CURVD_LEASE_EV_COUNT
};
void curvd_metrics_lease(struct curvd_metrics *m, enum curvd_lease_event ev);
/* A step's statistics folded after its reply, in @seconds; NULL @m: no-op. */
void curvd_metrics_fold(struct curvd_metrics *m, double seconds);
/* A session loaded by replaying @steps logged steps in @seconds. */
void curvd_metrics_replayed(struct curvd_metrics *m, size_t steps, double seconds);
/* One callback answered (a round trip of a multi-exchange step). */
void curvd_metrics_callback(struct curvd_metrics *m, curv_opt_kind kind);

/* What the caller measures for one rendering. */
struct curvd_metrics_view {
    size_t heavy_inflight;               /* heavy requests queued, running or deferred */
    size_t sessions_mem, bytes_mem;      /* sessions in memory and their state's bytes */
    long long sessions_disk;             /* sessions stored; -1: unknown */
    const struct curvd_pool_stats *pool; /* the worker pool's counters; NULL: no workers */
    const char *sqlite_version;          /* for curvd_build_info; NULL: "unknown" */
    /* K-FAC refreshes off the step path (session/registry.h): handed to
     * the workers, run by them, taken back by their step while queued,
     * waited for by their step; shown with the pool's counters. */
    unsigned long long refresh_handed, refresh_run, refresh_taken_back, refresh_waited;
};

/* The exposition text (malloc'd, *@len bytes), with @v's gauges,
 * curvd_build_info and the process_* metrics; NULL when out of memory. */
char *curvd_metrics_render(const struct curvd_metrics *m, const struct curvd_metrics_view *v,
                           size_t *len);

#endif
