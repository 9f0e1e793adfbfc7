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
/* One callback answered (a round trip of a multi-exchange step). */
void curvd_metrics_callback(struct curvd_metrics *m, curv_opt_kind kind);

/* The exposition text (malloc'd), with the gauges given by the caller;
 * @pool: the worker pool's counters, NULL without workers. */
char *curvd_metrics_render(const struct curvd_metrics *m, size_t heavy_inflight,
                           size_t sessions_mem, size_t bytes_mem, long long sessions_disk,
                           const struct curvd_pool_stats *pool, size_t *len);

#endif
