/* SPDX-License-Identifier: MIT */
/* The daemon's shared types: its configuration and the server object. */
#ifndef CURVD_SERVER_H
#define CURVD_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define CURVD_VERSION "0.1.0"

struct curvd_config {
    const char *listen;     /* IPv4 address to bind, e.g. "127.0.0.1" */
    unsigned port;          /* 0: an ephemeral port (tests) */
    const char *db_path;    /* SQLite file */
    unsigned threads;       /* connection threads (libmicrohttpd's pool) */
    unsigned workers;       /* threads for heavy requests (steps); 0: run them inline */
    size_t max_body;        /* bytes; larger bodies get 413 */
    size_t max_sessions;    /* sessions held in memory at once */
    size_t max_queue;       /* heavy requests queued or running; beyond: 429 */
    size_t mem_budget;      /* bytes of optimizer state held in memory */
    const char *token_file; /* NULL: no auth, everything is tenant "default" */
    int log_json;           /* access log as JSON lines instead of text */
    int quiet;              /* no access log (tests) */
    int durability_full;    /* SQLite synchronous=FULL (else NORMAL) */
    unsigned idle_ttl_s;    /* sessions without a TTL of their own: 0 never expire */
    unsigned sweep_ms;      /* how often idle sessions are looked for; 0: 1000 */
    unsigned history_steps; /* with history_set: steps of history per session (--history) */
    int history_set;        /* 0: the store's default (CURVD_STORE_HISTORY_DEFAULT) */
};

struct curvd_store;
struct curvd_registry;
struct curvd_http;
struct curvd_auth;
struct curvd_metrics;
struct curv_executor;
struct curvd_sweeper;

struct curvd_server {
    struct curvd_config cfg;
    struct curvd_http *http;
    struct curvd_store *store; /* NULL until opened; /readyz says 503 */
    struct curvd_registry *reg;
    struct curvd_metrics *metrics; /* NULL: not counted */
    struct curvd_auth *auth;       /* NULL: no token file, every caller is tenant "default" */
    atomic_int draining;           /* set on SIGTERM: /readyz 503, new work refused */
    /* The heavy-request workers, lent to every session's optimizer for its
     * per-layer work (http/pool.h); NULL: none, steps run serially. Set
     * and cleared by curvd_http_start and _stop. */
    const struct curv_executor *exec;
    struct curvd_sweeper *sweeper; /* deletes idle sessions (session/service.h) */
};

#endif
