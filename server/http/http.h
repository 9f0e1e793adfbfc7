/* SPDX-License-Identifier: MIT */
/*
 * libmicrohttpd glue: request contexts with capped body accumulation,
 * routing through the table in routes.c, replies (JSON, problem+json,
 * binary) and the access log. Handlers never see libmicrohttpd types.
 */
#ifndef CURVD_HTTP_H
#define CURVD_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "http/errors.h"
#include "server.h"

#define CURVD_MAX_PARAMS 4
#define CURVD_CAP_LEN 96

/* Storage for the path segments a route captures. */
struct curvd_captures {
    char seg[CURVD_MAX_PARAMS][CURVD_CAP_LEN];
};

/* One request as a handler sees it. Everything is borrowed from the
 * request context and valid until the reply has been sent. */
struct curvd_req {
    const char *method;
    const char *path;
    const char *id;                      /* request id, also in the X-Request-Id reply header */
    const char *content_type;            /* NULL if absent */
    const char *tenant;                  /* resolved by auth */
    const char *param[CURVD_MAX_PARAMS]; /* path captures, in pattern order */
    size_t nparams;
    const unsigned char *body;
    size_t body_len;
    void *conn; /* opaque: for curvd_req_header / curvd_req_query */
};

/* What a handler produces. @body is owned and released by http.c with
 * @body_free (free() when NULL), e.g. curvd_store_free for a buffer the store
 * handed over, so large blobs are sent without a copy. */
/* Phases of a step that its reply's Server-Timing header reports. */
enum { CURVD_T_DECODE, CURVD_T_STEP, CURVD_T_ENCODE, CURVD_T_SAVE, CURVD_T_COMMIT, CURVD_T_COUNT };

struct curvd_reply {
    int status;
    const char *content_type;
    char *body;
    size_t len;
    void (*body_free)(void *);
    char location[160];           /* Location header when non-empty */
    char etag[32];                /* ETag header when non-empty */
    unsigned retry_after_s;       /* a 503's or 429's Retry-After; 0: 1 second */
    size_t json_header_len;       /* binary extension: Inference-Header-Content-Length */
    double timing[CURVD_T_COUNT]; /* seconds per phase: the Server-Timing header */
    double lap_start;             /* curvd_timing_lap's clock */
    /* Set by a heavy route's handler before it hands the request on (a
     * step waiting for its commit): the reply is filled in and sent by
     * curvd_http_finish(), from any thread. The handler then touches
     * nothing of the request but this flag. */
    int deferred;
};

/* curvd_timing_lap - add the time since the last lap to @rp's @phase
 * (CURVD_T_COUNT: only start the clock). */
void curvd_timing_lap(struct curvd_reply *rp, int phase);

typedef void (*curvd_handler)(struct curvd_server *srv, const struct curvd_req *rq,
                              struct curvd_reply *rp);

struct curvd_route {
    const char *method;
    const char *pattern; /* "/v1/sessions/{id}/steps"; {x} captures one segment */
    curvd_handler handler;
    const char *name; /* for logs and metrics */
    int auth;         /* needs a known bearer token (when a token file is set) */
    int heavy;        /* runs on the worker pool, off the connection threads */
};

extern const struct curvd_route curvd_routes[];
extern const size_t curvd_route_count;

/* Match @path against the table; on a hit fill @params with pointers into
 * @caps. Returns the route, or NULL with *path_known set when only the
 * method was wrong. */
const struct curvd_route *curvd_route_match(const char *method, const char *path,
                                            struct curvd_captures *caps, const char **params,
                                            size_t *nparams, int *path_known);

/* The methods served for @path, e.g. "GET, PATCH, DELETE" (for Allow). */
void curvd_route_allowed(const char *path, char *buf, size_t cap);

/* Start listening (threads from srv->cfg); 0 on success, else -1 with @err. */
int curvd_http_start(struct curvd_server *srv, char *err, size_t errlen);
/* The bound port (useful with cfg.port = 0). */
unsigned curvd_http_port(const struct curvd_server *srv);
/* Stop accepting, finish in-flight requests, release everything. */
void curvd_http_stop(struct curvd_server *srv);

/* curvd_http_pool - the worker pool (http/pool.h), NULL with no workers. */
struct curvd_pool *curvd_http_pool(const struct curvd_server *srv);

/* curvd_http_inflight - heavy requests queued, running on the workers, or
 * deferred. */
size_t curvd_http_inflight(const struct curvd_server *srv);

/* curvd_http_finish - send the reply of a deferred request (@rq and its
 * reply are the ones its handler got); nothing of either may be touched
 * after. */
void curvd_http_finish(struct curvd_server *srv, const struct curvd_req *rq);

/* A request header or query argument (borrowed), or NULL. */
const char *curvd_req_header(const struct curvd_req *rq, const char *name);
const char *curvd_req_query(const struct curvd_req *rq, const char *name);

/* Reply helpers. Each replaces what @rp held. The JSON one steals @json
 * (a jansson json_t *, passed as void * to keep jansson out of this header). */
void curvd_reply_json(struct curvd_reply *rp, int status, void *json);
void curvd_reply_bytes(struct curvd_reply *rp, int status, const char *ctype, void *body,
                       size_t len);
/* A body of tensors: plain JSON when @json_len is 0, else the binary
 * extension (its first @json_len bytes are the JSON header). Released by
 * @release (free() when NULL). */
void curvd_reply_tensors(struct curvd_reply *rp, int status, void *body, size_t len,
                         size_t json_len, void (*release)(void *));
/* The same for a body released by @release instead of free(). */
void curvd_reply_owned(struct curvd_reply *rp, int status, const char *ctype, void *body,
                       size_t len, void (*release)(void *));

/* curvd_etag - a session's ETag, its step count in quotes, into @buf. */
void curvd_etag(char *buf, size_t cap, long long step);

/* One offending field of a problem. */
struct curvd_field_error {
    const char *path, *expected, *got;
};

/* RFC 9457 problem of row @row of errors.h (its status and reason): type
 * https://curvd.dev/problems/<reason in lower case>. */
void curvd_reply_problem(struct curvd_reply *rp, const struct curvd_req *rq, enum curvd_reason row,
                         const struct curvd_field_error *errors, size_t nerrors, const char *fmt,
                         ...) __attribute__((format(printf, 6, 7)));

#endif
