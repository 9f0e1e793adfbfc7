/* SPDX-License-Identifier: MIT */
#include "http/metrics.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "http/procstat.h"

/* Every status from 100 to 599 has its slot (by_code[status - 100]), so a
 * status the table below the handlers adds later is counted by its code
 * without anyone remembering to list it here; anything else is "other". */
#define CODE_MIN 100
#define NCODES 500
/* Latency buckets in seconds (upper bounds); +Inf is the count. */
static const double BUCKETS[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define NBUCKETS (sizeof BUCKETS / sizeof BUCKETS[0])
#define MAX_ROUTES 64

struct route_stats {
    atomic_ullong by_code[NCODES + 1];
    atomic_ullong bucket[NBUCKETS];
    atomic_ullong count;
    atomic_ullong micros_sum; /* latency sum in microseconds */
};

struct curvd_metrics {
    struct route_stats route[MAX_ROUTES + 1];
    atomic_ullong bytes_in, bytes_out;
    atomic_ullong steps[CURV_OPT_KIND_COUNT];
    atomic_ullong callbacks[CURV_OPT_KIND_COUNT];
    atomic_ullong expired;
    atomic_ullong commit_form[2]; /* log rows, snapshots */
    atomic_ullong log_ahead;      /* of the log rows, records written ahead */
    atomic_ullong replayed_steps, replays, replay_micros;
    atomic_ullong leases[CURVD_LEASE_EV_COUNT];
    atomic_ullong folds, fold_micros;
};

void curvd_metrics_lease(struct curvd_metrics *m, enum curvd_lease_event ev)
{
    if (m && ev < CURVD_LEASE_EV_COUNT)
        atomic_fetch_add(&m->leases[ev], 1);
}

void curvd_metrics_expired(struct curvd_metrics *m, size_t n)
{
    if (m)
        atomic_fetch_add(&m->expired, (unsigned long long)n);
}

void curvd_metrics_commit_form(struct curvd_metrics *m, int snapshot)
{
    if (m)
        atomic_fetch_add(&m->commit_form[snapshot != 0], 1);
}

void curvd_metrics_log_ahead(struct curvd_metrics *m)
{
    if (m)
        atomic_fetch_add(&m->log_ahead, 1);
}

void curvd_metrics_fold(struct curvd_metrics *m, double seconds)
{
    if (!m)
        return;
    atomic_fetch_add(&m->folds, 1);
    atomic_fetch_add(&m->fold_micros, (unsigned long long)(seconds * 1e6));
}

void curvd_metrics_replayed(struct curvd_metrics *m, size_t steps, double seconds)
{
    if (!m)
        return;
    atomic_fetch_add(&m->replays, 1);
    atomic_fetch_add(&m->replayed_steps, (unsigned long long)steps);
    atomic_fetch_add(&m->replay_micros, (unsigned long long)(seconds * 1e6));
}

struct curvd_metrics *curvd_metrics_new(void)
{
    return calloc(1, sizeof(struct curvd_metrics)); /* zeroed atomics are valid */
}

void curvd_metrics_free(struct curvd_metrics *m)
{
    free(m);
}

void curvd_metrics_request(struct curvd_metrics *m, size_t route, int status, double seconds,
                           size_t bytes_in, size_t bytes_out)
{
    if (!m)
        return;
    struct route_stats *r =
        &m->route[route < curvd_route_count && route < MAX_ROUTES ? route : MAX_ROUTES];
    size_t c =
        status >= CODE_MIN && status < CODE_MIN + NCODES ? (size_t)(status - CODE_MIN) : NCODES;
    atomic_fetch_add(&r->by_code[c], 1);
    for (size_t b = 0; b < NBUCKETS; b++)
        if (seconds <= BUCKETS[b])
            atomic_fetch_add(&r->bucket[b], 1);
    atomic_fetch_add(&r->count, 1);
    atomic_fetch_add(&r->micros_sum, (unsigned long long)(seconds * 1e6));
    atomic_fetch_add(&m->bytes_in, bytes_in);
    atomic_fetch_add(&m->bytes_out, bytes_out);
}

void curvd_metrics_step(struct curvd_metrics *m, curv_opt_kind kind)
{
    if (m && (unsigned)kind < CURV_OPT_KIND_COUNT)
        atomic_fetch_add(&m->steps[kind], 1);
}

void curvd_metrics_callback(struct curvd_metrics *m, curv_opt_kind kind)
{
    if (m && (unsigned)kind < CURV_OPT_KIND_COUNT)
        atomic_fetch_add(&m->callbacks[kind], 1);
}

struct buf {
    char *p;
    size_t len, cap;
    int oom;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
    for (int pass = 0; pass < 2 && !b->oom; pass++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = 2 * b->cap + (size_t)n;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

static const char *route_name(size_t i)
{
    return i < curvd_route_count ? curvd_routes[i].name : "unmatched";
}

static void render_requests(const struct curvd_metrics *m, struct buf *b)
{
    put(b, "# HELP curvd_http_requests_total HTTP requests by route and status.\n"
           "# TYPE curvd_http_requests_total counter\n");
    for (size_t i = 0; i <= MAX_ROUTES; i++)
        for (size_t c = 0; c <= NCODES; c++) {
            unsigned long long v = atomic_load(&m->route[i].by_code[c]);
            if (!v)
                continue;
            char code[8];
            if (c < NCODES)
                snprintf(code, sizeof code, "%d", CODE_MIN + (int)c);
            else
                snprintf(code, sizeof code, "other");
            put(b, "curvd_http_requests_total{route=\"%s\",code=\"%s\"} %llu\n",
                route_name(i == MAX_ROUTES ? curvd_route_count : i), code, v);
        }
    put(b, "# HELP curvd_http_request_duration_seconds Time from headers to reply.\n"
           "# TYPE curvd_http_request_duration_seconds histogram\n");
    for (size_t i = 0; i <= MAX_ROUTES; i++) {
        const struct route_stats *r = &m->route[i];
        unsigned long long n = atomic_load(&r->count);
        if (!n)
            continue;
        const char *name = route_name(i == MAX_ROUTES ? curvd_route_count : i);
        for (size_t k = 0; k < NBUCKETS; k++)
            put(b, "curvd_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                name, BUCKETS[k], atomic_load(&r->bucket[k]));
        put(b,
            "curvd_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n"
            "curvd_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n"
            "curvd_http_request_duration_seconds_count{route=\"%s\"} %llu\n",
            name, n, name, (double)atomic_load(&r->micros_sum) / 1e6, name, n);
    }
}

/* A label value as Prometheus reads it: backslash, quote and newline
 * escaped (a version string is not ours to trust). */
static void put_label(struct buf *b, const char *name, const char *v, int last)
{
    put(b, "%s=\"", name);
    for (const char *p = v ? v : "unknown"; *p; p++) {
        if (*p == '\\' || *p == '"')
            put(b, "\\%c", *p);
        else if (*p == '\n')
            put(b, "\\n");
        else
            put(b, "%c", *p);
    }
    put(b, "\"%s", last ? "" : ",");
}

static void render_build_info(const struct curvd_metrics_view *v, struct buf *b)
{
    put(b, "# HELP curvd_build_info The daemon's version and commit and its libraries' versions.\n"
           "# TYPE curvd_build_info gauge\n"
           "curvd_build_info{");
    put_label(b, "version", CURVD_VERSION, 0);
    put_label(b, "commit", curvd_build_commit, 0);
    put_label(b, "libcurv", curv_version(), 0);
    put_label(b, "libmicrohttpd", MHD_get_version(), 0);
    put_label(b, "jansson", jansson_version_str(), 0);
    put_label(b, "sqlite", v->sqlite_version, 1);
    put(b, "} 1\n");
}

/* Prometheus's standard process metrics; none when /proc cannot be read. */
static void render_process(struct buf *b)
{
    struct curvd_proc_stats ps;
    if (curvd_proc_stats(&ps) != 0)
        return;
    put(b,
        "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n"
        "# TYPE process_cpu_seconds_total counter\n"
        "process_cpu_seconds_total %.2f\n"
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes %zu\n"
        "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n"
        "# TYPE process_virtual_memory_bytes gauge\n"
        "process_virtual_memory_bytes %zu\n"
        "# HELP process_start_time_seconds Start time of the process since unix epoch in "
        "seconds.\n"
        "# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds %.2f\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        "process_open_fds %ld\n",
        ps.cpu_seconds, ps.resident_bytes, ps.virtual_bytes, ps.start_time, ps.open_fds);
    if (ps.max_fds >= 0)
        put(b,
            "# HELP process_max_fds Maximum number of open file descriptors.\n"
            "# TYPE process_max_fds gauge\n"
            "process_max_fds %ld\n",
            ps.max_fds);
}

char *curvd_metrics_render(const struct curvd_metrics *m, const struct curvd_metrics_view *v,
                           size_t *len)
{
    struct buf b = {.p = malloc(8192), .cap = 8192};
    if (!b.p)
        return NULL;
    const size_t heavy_inflight = v->heavy_inflight, sessions_mem = v->sessions_mem,
                 bytes_mem = v->bytes_mem;
    const long long sessions_disk = v->sessions_disk;
    const struct curvd_pool_stats *pool = v->pool;
    render_build_info(v, &b);
    render_process(&b);
    render_requests(m, &b);
    put(&b,
        "# HELP curvd_http_bytes_total Request and reply body bytes.\n"
        "# TYPE curvd_http_bytes_total counter\n"
        "curvd_http_bytes_total{direction=\"in\"} %llu\n"
        "curvd_http_bytes_total{direction=\"out\"} %llu\n",
        atomic_load(&m->bytes_in), atomic_load(&m->bytes_out));
    put(&b,
        "# HELP curvd_sessions_expired_total Sessions deleted for being idle past their TTL.\n"
        "# TYPE curvd_sessions_expired_total counter\n"
        "curvd_sessions_expired_total %llu\n",
        (unsigned long long)atomic_load(&m->expired));
    put(&b,
        "# HELP curvd_leases_total What became of session leases (docs/CLUSTER.md): taken "
        "(a session loaded or taken again), renewed, released (idle or out of memory), lost "
        "(a renewal found another daemon's epoch).\n"
        "# TYPE curvd_leases_total counter\n"
        "curvd_leases_total{event=\"taken\"} %llu\n"
        "curvd_leases_total{event=\"renewed\"} %llu\n"
        "curvd_leases_total{event=\"released\"} %llu\n"
        "curvd_leases_total{event=\"lost\"} %llu\n"
        "# HELP curvd_fenced_writes_total Writes the store refused because the session's lease "
        "had moved on to another daemon (the session was dropped from memory).\n"
        "# TYPE curvd_fenced_writes_total counter\n"
        "curvd_fenced_writes_total %llu\n",
        atomic_load(&m->leases[CURVD_LEASE_EV_TAKEN]),
        atomic_load(&m->leases[CURVD_LEASE_EV_RENEWED]),
        atomic_load(&m->leases[CURVD_LEASE_EV_RELEASED]),
        atomic_load(&m->leases[CURVD_LEASE_EV_LOST]),
        atomic_load(&m->leases[CURVD_LEASE_EV_FENCED]));
    put(&b,
        "# HELP curvd_durable_writes_total What made steps durable: rows of the step log "
        "(a step's input) and snapshots of a session's state (with a step, or after its "
        "reply).\n"
        "# TYPE curvd_durable_writes_total counter\n"
        "curvd_durable_writes_total{kind=\"log\"} %llu\n"
        "curvd_durable_writes_total{kind=\"snapshot\"} %llu\n"
        "# HELP curvd_log_records_ahead_total Rows of the step log whose record went into its "
        "session's file while the library stepped (SQLite, records of --log-file-min bytes or "
        "more).\n"
        "# TYPE curvd_log_records_ahead_total counter\n"
        "curvd_log_records_ahead_total %llu\n"
        "# HELP curvd_replays_total Sessions loaded by replaying their step log.\n"
        "# TYPE curvd_replays_total counter\n"
        "curvd_replays_total %llu\n"
        "# HELP curvd_replayed_steps_total Logged steps replayed when loading sessions.\n"
        "# TYPE curvd_replayed_steps_total counter\n"
        "curvd_replayed_steps_total %llu\n"
        "# HELP curvd_replay_seconds_total Time spent replaying step logs.\n"
        "# TYPE curvd_replay_seconds_total counter\n"
        "curvd_replay_seconds_total %.6f\n"
        "# HELP curvd_folds_after_reply_total K-FAC steps whose statistics were folded into "
        "the factors after their reply, on a worker.\n"
        "# TYPE curvd_folds_after_reply_total counter\n"
        "curvd_folds_after_reply_total %llu\n"
        "# HELP curvd_fold_seconds_total Time those folds took.\n"
        "# TYPE curvd_fold_seconds_total counter\n"
        "curvd_fold_seconds_total %.6f\n",
        (unsigned long long)atomic_load(&m->commit_form[0]),
        (unsigned long long)atomic_load(&m->commit_form[1]),
        (unsigned long long)atomic_load(&m->log_ahead),
        (unsigned long long)atomic_load(&m->replays),
        (unsigned long long)atomic_load(&m->replayed_steps),
        (double)atomic_load(&m->replay_micros) * 1e-6, (unsigned long long)atomic_load(&m->folds),
        (double)atomic_load(&m->fold_micros) * 1e-6);
    put(&b, "# HELP curvd_steps_total Applied optimizer steps by optimizer.\n"
            "# TYPE curvd_steps_total counter\n");
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++)
        put(&b, "curvd_steps_total{optimizer=\"%s\"} %llu\n", curv_opt_kind_name((curv_opt_kind)k),
            atomic_load(&m->steps[k]));
    put(&b, "# HELP curvd_callback_round_trips_total Callbacks answered by trainers, by "
            "optimizer.\n"
            "# TYPE curvd_callback_round_trips_total counter\n");
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++)
        put(&b, "curvd_callback_round_trips_total{optimizer=\"%s\"} %llu\n",
            curv_opt_kind_name((curv_opt_kind)k), atomic_load(&m->callbacks[k]));
    put(&b,
        "# HELP curvd_sessions Sessions held in memory and stored on disk.\n"
        "# TYPE curvd_sessions gauge\n"
        "curvd_sessions{where=\"memory\"} %zu\n"
        "curvd_sessions{where=\"disk\"} %lld\n"
        "# HELP curvd_session_memory_bytes Optimizer state held in memory.\n"
        "# TYPE curvd_session_memory_bytes gauge\n"
        "curvd_session_memory_bytes %zu\n"
        "# HELP curvd_heavy_requests_in_flight Steps and other heavy requests queued or running "
        "(--max-queue caps it).\n"
        "# TYPE curvd_heavy_requests_in_flight gauge\n"
        "curvd_heavy_requests_in_flight %zu\n",
        sessions_mem, sessions_disk, bytes_mem, heavy_inflight);
    struct curvd_mem_stats ms;
    curvd_mem_stats(&ms);
    put(&b,
        "# HELP curvd_large_buffers_total Buffers of 1 MiB and more: newly mapped, or an idle "
        "one reused.\n"
        "# TYPE curvd_large_buffers_total counter\n"
        "curvd_large_buffers_total{source=\"mapped\"} %zu\n"
        "curvd_large_buffers_total{source=\"reused\"} %zu\n"
        "# HELP curvd_large_buffer_fresh_bytes_total Bytes mapped or grown for large buffers "
        "(their "
        "pages fault in on first use).\n"
        "# TYPE curvd_large_buffer_fresh_bytes_total counter\n"
        "curvd_large_buffer_fresh_bytes_total %zu\n"
        "# HELP curvd_large_buffer_idle_bytes Large buffers kept mapped for reuse.\n"
        "# TYPE curvd_large_buffer_idle_bytes gauge\n"
        "curvd_large_buffer_idle_bytes %zu\n",
        ms.maps, ms.reuses, ms.fresh_bytes, ms.idle_bytes);
    if (pool)
        put(&b,
            "# HELP curvd_worker_tasks_total Per-layer tasks of the steps on the workers: run by "
            "the step's own worker, or by an idle one helping it.\n"
            "# TYPE curvd_worker_tasks_total counter\n"
            "curvd_worker_tasks_total{by=\"own\"} %llu\n"
            "curvd_worker_tasks_total{by=\"helper\"} %llu\n"
            "# HELP curvd_workers_busy_max The most workers busy at once (requests and tasks; "
            "--workers caps it).\n"
            "# TYPE curvd_workers_busy_max gauge\n"
            "curvd_workers_busy_max %u\n",
            pool->tasks - pool->helped, pool->helped, pool->max_busy);
    if (pool)
        put(&b,
            "# HELP curvd_background_refreshes_total K-FAC refreshes off the step path "
            "(max_staleness): handed to the workers, then run by one or taken back by the step "
            "that applies them while still queued.\n"
            "# TYPE curvd_background_refreshes_total counter\n"
            "curvd_background_refreshes_total{outcome=\"handed\"} %llu\n"
            "curvd_background_refreshes_total{outcome=\"run\"} %llu\n"
            "curvd_background_refreshes_total{outcome=\"taken_back\"} %llu\n"
            "# HELP curvd_background_refresh_waits_total Steps that waited for their refresh "
            "to finish on a worker.\n"
            "# TYPE curvd_background_refresh_waits_total counter\n"
            "curvd_background_refresh_waits_total %llu\n",
            v->refresh_handed, v->refresh_run, v->refresh_taken_back, v->refresh_waited);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
