/* SPDX-License-Identifier: MIT */
/*
 * libmicrohttpd glue. The access handler runs three times per request
 * (docs/SERVICE-NOTES.md): once after the headers (allocate the context; refuse an
 * oversized Content-Length at once), once per body chunk (append, capped),
 * and once with no data (route, run the handler, queue the reply). A body
 * that outgrows the cap without a Content-Length is drained and answered
 * with 413 at the end, since MHD cannot reply mid-upload. The context is
 * freed in the completion callback, which also writes the access log.
 *
 * Heavy routes (steps, create, import, patch, export) do not run on the
 * connection threads: the connection is suspended, the request goes to a
 * worker pool, and the connection is resumed when the reply is ready; MHD
 * then calls the access handler again, which queues it. A long
 * eigendecomposition therefore never stalls the small requests of other
 * sessions that share its connection thread. A step's reply is ready only
 * once its commit is durable: the worker hands it to the store's commit
 * thread (rp->deferred) and takes the next request, and the commit thread
 * resumes the connection (curvd_http_finish). The workers are a
 * curvd_pool (pool.h): the same threads also run the per-layer tasks of
 * the steps in flight, so a lone session's step uses every idle worker.
 */
#include "http/http.h"

#include "http/auth.h"
#include "http/log.h"
#include "http/mem.h"
#include "http/metrics.h"
#include "http/pool.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct rctx;

struct curvd_http {
    struct MHD_Daemon *mhd;
    atomic_uint_fast64_t next_id;
    struct curvd_server *srv;
    struct curvd_pool *pool; /* NULL with --workers 0 */
    pthread_mutex_t mu;      /* orders the drain's start against admit_heavy */
    atomic_int inflight;     /* heavy requests queued, running or deferred */
    atomic_int active;       /* requests between their first byte and their reply's last */
    atomic_int closing;      /* draining: no new connections or heavy requests; replies close */
};

enum phase { RECEIVING = 0, QUEUED, DONE };

/* A client's X-Request-Id is kept when it is 1..CURVD_REQUEST_ID_MAX
 * visible ASCII characters; any other is replaced by one of ours. */
#define CURVD_REQUEST_ID_MAX 64

struct rctx {
    char id[CURVD_REQUEST_ID_MAX + 1];
    char method[8];
    char path[120];
    char *body;
    size_t len, cap;
    size_t declared; /* Content-Length, when given (<= max_body) */
    int too_big;
    char bad_framing[96]; /* why the length is ambiguous ("": it is not): refuse, then close */
    uint64_t t0_ns;
    int status;
    size_t bytes_out;
    const char *route;
    size_t route_index; /* into curvd_routes; curvd_route_count when unmatched */
    /* Set at dispatch; a worker fills rp for heavy routes. */
    enum phase phase;
    struct MHD_Connection *conn;
    const struct curvd_route *rt;
    struct curvd_req rq;
    struct curvd_reply rp;
    struct curvd_captures caps;
    char tenant[CURVD_TENANT_CAP]; /* rq.tenant when auth is on: a copy, so a reload may free */
    atomic_int parties;            /* a deferred reply waits for its handler and its finish */
    struct curvd_server *srv;
    struct curvd_pool_job job; /* on the worker pool */
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

const char *curvd_req_header(const struct curvd_req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND, name);
}

const char *curvd_req_query(const struct curvd_req *rq, const char *name)
{
    return MHD_lookup_connection_value(rq->conn, MHD_GET_ARGUMENT_KIND, name);
}

static const char *const timing_names[CURVD_T_COUNT] = {"decode", "step", "encode", "save",
                                                        "commit"};

void curvd_timing_lap(struct curvd_reply *rp, int phase)
{
    double now = (double)now_ns() / 1e9;
    if (phase >= 0 && phase < CURVD_T_COUNT)
        rp->timing[phase] += now - rp->lap_start;
    rp->lap_start = now;
}

/* "decode;dur=1.250, step;dur=0.031, ..." in ms, the phases that ran. */
static void add_server_timing(struct MHD_Response *r, const struct curvd_reply *rp)
{
    char buf[256];
    size_t n = 0;
    for (int i = 0; i < CURVD_T_COUNT; i++)
        if (rp->timing[i] > 0 && n < sizeof buf)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s;dur=%.3f", n ? ", " : "",
                                  timing_names[i], rp->timing[i] * 1e3);
    if (n)
        MHD_add_response_header(r, "Server-Timing", buf);
}

static void release_body(struct curvd_reply *rp)
{
    if (rp->body)
        (rp->body_free ? rp->body_free : free)(rp->body);
    rp->body = NULL;
}

void curvd_reply_owned(struct curvd_reply *rp, int status, const char *ctype, void *body,
                       size_t len, void (*release)(void *))
{
    release_body(rp);
    rp->status = status;
    rp->content_type = ctype;
    rp->body = body;
    rp->len = len;
    rp->body_free = release;
}

void curvd_reply_bytes(struct curvd_reply *rp, int status, const char *ctype, void *body,
                       size_t len)
{
    curvd_reply_owned(rp, status, ctype, body, len, NULL);
}

void curvd_reply_tensors(struct curvd_reply *rp, int status, void *body, size_t len,
                         size_t json_len, void (*release)(void *))
{
    curvd_reply_owned(rp, status, json_len ? "application/octet-stream" : "application/json", body,
                      len, release);
    rp->json_header_len = json_len;
}

/* The reply when not even the reply can be allocated. */
static const char NO_MEMORY_PROBLEM[] =
    "{\"type\":\"https://curvd.dev/problems/out-of-memory\",\"title\":\"Service "
    "Unavailable\",\"status\":503,\"detail\":\"the daemon ran out of memory writing the "
    "reply\",\"reason\":\"OUT_OF_MEMORY\",\"errors\":[]}";

static void keep_static(void *p)
{
    (void)p;
}

void curvd_reply_json(struct curvd_reply *rp, int status, void *json)
{
    char *text = json ? json_dumps(json, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(json);
    if (!text) { /* out of memory: a problem that needs none */
        curvd_reply_owned(rp, 503, "application/problem+json", (void *)NO_MEMORY_PROBLEM,
                          sizeof NO_MEMORY_PROBLEM - 1, keep_static);
        return;
    }
    curvd_reply_bytes(rp, status, "application/json", text, strlen(text));
}

static const char *status_title(int status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 503:
        return "Service Unavailable";
    case 507:
        return "Insufficient Storage";
    default:
        return status >= 500 ? "Internal Server Error" : "Error";
    }
}

void curvd_etag(char *buf, size_t cap, long long step)
{
    snprintf(buf, cap, "\"%lld\"", step);
}

void curvd_reply_problem(struct curvd_reply *rp, const struct curvd_req *rq, enum curvd_reason row,
                         const struct curvd_field_error *errors, size_t nerrors, const char *fmt,
                         ...)
{
    const int status = curvd_reason_status(row);
    const char *reason = curvd_reason_name(row);
    char detail[512], type[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    size_t i = 0;
    for (; reason[i] && i < 60; i++)
        type[i] = (reason[i] == '_') ? '-' : (char)(reason[i] | 0x20);
    type[i] = '\0';
    json_t *p = json_object();
    json_t *errs = json_array();
    for (size_t k = 0; k < nerrors; k++) {
        json_t *e = json_pack("{s:s}", "path", errors[k].path ? errors[k].path : "");
        if (errors[k].expected)
            json_object_set_new(e, "expected", json_string(errors[k].expected));
        if (errors[k].got)
            json_object_set_new(e, "got", json_string(errors[k].got));
        json_array_append_new(errs, e);
    }
    json_object_set_new(p, "type", json_sprintf("https://curvd.dev/problems/%s", type));
    json_object_set_new(p, "title", json_string(status_title(status)));
    json_object_set_new(p, "status", json_integer(status));
    json_object_set_new(p, "detail", json_string(detail));
    json_object_set_new(p, "instance", json_string(rq && rq->path ? rq->path : "/"));
    json_object_set_new(p, "reason", json_string(reason));
    json_object_set_new(p, "errors", errs);
    if (rq && rq->id)
        json_object_set_new(p, "request_id", json_string(rq->id));
    curvd_reply_json(rp, status, p);
    rp->content_type = "application/problem+json";
}

static enum MHD_Result send_reply(const struct curvd_server *srv, struct MHD_Connection *c,
                                  struct rctx *x, struct curvd_reply *rp)
{
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback(
        rp->len, rp->body, rp->body_free ? rp->body_free : free);
    if (!r) {
        release_body(rp);
        return MHD_NO;
    }
    rp->body = NULL; /* MHD owns it now */
    if (rp->content_type)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, rp->content_type);
    MHD_add_response_header(r, "X-Request-Id", x->id);
    if (rp->location[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_LOCATION, rp->location);
    if (rp->etag[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_ETAG, rp->etag);
    if (rp->status == 503 || rp->status == 429) {
        char after[24];
        snprintf(after, sizeof after, "%u", rp->retry_after_s ? rp->retry_after_s : 1);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, after);
    }
    if (rp->status == 405) {
        char allow[64];
        curvd_route_allowed(x->rq.path ? x->rq.path : "", allow, sizeof allow);
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    }
    if (rp->status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"curvd\"");
    /* Ambiguous framing: what follows on the connection may be the rest
     * of this request's body, never read it as the next request. */
    if (atomic_load(&srv->http->closing) || x->bad_framing[0])
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    add_server_timing(r, rp);
    if (rp->json_header_len) {
        char n[24];
        snprintf(n, sizeof n, "%zu", rp->json_header_len);
        MHD_add_response_header(r, "Inference-Header-Content-Length", n);
    }
    x->status = rp->status;
    x->bytes_out = rp->len;
    /* Counted when queued, not at completion: a client that has its reply
     * must find it in /metrics. */
    curvd_metrics_request(srv->metrics, x->route_index, x->status,
                          (double)(now_ns() - x->t0_ns) / 1e9, x->len, x->bytes_out);
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)rp->status, r);
    MHD_destroy_response(r);
    return ok;
}

struct curvd_pool *curvd_http_pool(const struct curvd_server *srv)
{
    return srv->http ? srv->http->pool : NULL;
}

size_t curvd_http_inflight(const struct curvd_server *srv)
{
    int n = srv->http ? atomic_load(&srv->http->inflight) : 0;
    return n > 0 ? (size_t)n : 0;
}

/* Count a heavy request in, unless the drain has begun: under the lock
 * that the drain takes to begin, so that once it has, no request can
 * still be counted in that it does not wait for. */
static int admit_heavy(struct curvd_http *h)
{
    pthread_mutex_lock(&h->mu);
    int ok = !atomic_load(&h->closing);
    if (ok)
        atomic_fetch_add(&h->inflight, 1);
    pthread_mutex_unlock(&h->mu);
    return ok;
}

/* The reply is ready: let MHD send it. */
static void resume(struct curvd_server *srv, struct rctx *x)
{
    x->phase = DONE;
    /* Count it done before the reply can reach the client, whose next
     * request must not find it still queued (--max-queue). */
    atomic_fetch_sub(&srv->http->inflight, 1);
    MHD_resume_connection(x->conn); /* MHD calls on_request again */
}

/* A deferred reply is sent by whichever comes last: its handler's return
 * or its curvd_http_finish() (the context lives until then). */
static void deferred_party_done(struct curvd_server *srv, struct rctx *x)
{
    if (atomic_fetch_sub(&x->parties, 1) == 1)
        resume(srv, x);
}

void curvd_http_finish(struct curvd_server *srv, const struct curvd_req *rq)
{
    deferred_party_done(srv, (struct rctx *)(void *)((char *)rq - offsetof(struct rctx, rq)));
}

/* A heavy request on a suspended connection: run it, and send its reply
 * unless the handler deferred it. */
static void run_heavy(struct curvd_server *srv, struct rctx *x)
{
    atomic_init(&x->parties, 2);
    x->rt->handler(srv, &x->rq, &x->rp);
    if (x->rp.deferred)
        deferred_party_done(srv, x);
    else
        resume(srv, x);
}

/* A heavy request's turn on a worker of the pool. */
static void run_job(struct curvd_pool_job *job)
{
    struct rctx *x = (struct rctx *)(void *)((char *)job - offsetof(struct rctx, job));
    run_heavy(x->srv, x);
}

/* Route a fully received request; run it here or on a worker. */
static enum MHD_Result dispatch(struct curvd_server *srv, struct MHD_Connection *c, struct rctx *x,
                                const char *url, const char *method)
{
    struct curvd_req *rq = &x->rq;
    struct curvd_reply *rp = &x->rp;
    *rq = (struct curvd_req){.method = method, .path = url, .id = x->id, .conn = c};
    *rp = (struct curvd_reply){.status = 500};
    rq->content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    rq->body = (const unsigned char *)x->body;
    rq->body_len = x->len;
    rq->tenant = "default";
    int path_known = 0;
    const struct curvd_route *rt =
        curvd_route_match(method, url, &x->caps, rq->param, &rq->nparams, &path_known);
    if (x->bad_framing[0]) {
        curvd_reply_problem(rp, rq, CURVD_R_BAD_FRAMING, NULL, 0,
                            "%s: the request's length is ambiguous (RFC 9112 section 6.3)",
                            x->bad_framing);
    } else if (x->too_big) {
        curvd_reply_problem(rp, rq, CURVD_R_TOO_LARGE, NULL, 0,
                            "the request body exceeds the limit of %zu bytes", srv->cfg.max_body);
    } else if (rt && rt->auth && srv->auth &&
               !(rq->tenant = curvd_auth_tenant(
                     srv->auth, MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"),
                     x->tenant, sizeof x->tenant))) {
        rq->tenant = "default";
        curvd_reply_problem(rp, rq, CURVD_R_UNAUTHORIZED, NULL, 0,
                            "this route needs 'Authorization: Bearer <token>' with a known token");
    } else if (!rt) {
        curvd_reply_problem(rp, rq, path_known ? CURVD_R_METHOD_NOT_ALLOWED : CURVD_R_NOT_FOUND,
                            NULL, 0, "no route for %s %s", method, url);
    } else {
        x->route = rt->name;
        x->route_index = (size_t)(rt - curvd_routes);
        x->rt = rt;
        if (rt->heavy && !admit_heavy(srv->http)) {
            curvd_reply_problem(rp, rq, CURVD_R_DRAINING, NULL, 0,
                                "the daemon is shutting down; retry once it is back");
            return send_reply(srv, c, x, rp);
        }
        if (rt->heavy && srv->http->pool && srv->cfg.max_queue &&
            (size_t)atomic_load(&srv->http->inflight) > srv->cfg.max_queue) {
            atomic_fetch_sub(&srv->http->inflight, 1);
            curvd_reply_problem(rp, rq, CURVD_R_TOO_MANY_REQUESTS, NULL, 0,
                                "%zu requests are waiting or running (--max-queue); retry later",
                                srv->cfg.max_queue);
            return send_reply(srv, c, x, rp);
        }
        if (rt->heavy) {
            /* Suspend before queueing, so that the resume always follows
             * the suspend; without workers, run it here (its reply may
             * still be deferred). */
            x->phase = QUEUED;
            x->conn = c;
            MHD_suspend_connection(c);
            if (srv->http->pool) {
                x->srv = srv;
                x->job.run = run_job;
                curvd_pool_submit(srv->http->pool, &x->job);
            } else {
                run_heavy(srv, x);
            }
            return MHD_YES;
        }
        rt->handler(srv, rq, rp);
    }
    return send_reply(srv, c, x, rp);
}

/* Append a body chunk, keeping at most max_body bytes. */
static void append(struct rctx *x, const char *data, size_t n, size_t max)
{
    if (x->too_big || n > max - x->len) {
        x->too_big = 1;
        return;
    }
    if (x->len + n > x->cap) {
        /* The declared Content-Length (checked <= max) sizes the first
         * buffer, so a large body is copied once, not once per doubling. */
        size_t cap = x->cap ? x->cap : x->len + n > x->declared ? 4096 : x->declared;
        while (cap < x->len + n)
            cap = cap > max / 2 ? max : cap * 2;
        char *nb = curvd_mem_realloc(x->body, cap);
        if (!nb) {
            x->too_big = 1;
            return;
        }
        x->body = nb;
        x->cap = cap;
    }
    memcpy(x->body + x->len, data, n);
    x->len += n;
}

/* 1..CURVD_REQUEST_ID_MAX characters from '!' to '~': safe in a header,
 * a text log line and a JSON string alike. */
static int request_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= CURVD_REQUEST_ID_MAX || s[n] < '!' || s[n] > '~')
            return 0;
    return n > 0;
}

/* The client's X-Request-Id when it is valid, else a new one. */
static void set_request_id(struct curvd_http *h, struct MHD_Connection *c, struct rctx *x)
{
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Request-Id");
    if (given && request_id_valid(given)) {
        memcpy(x->id, given, strlen(given) + 1);
        return;
    }
    uint64_t n = atomic_fetch_add(&h->next_id, 1);
    snprintf(x->id, sizeof x->id, "%016llx",
             (unsigned long long)(n * 0x9e3779b97f4a7c15ULL ^ x->t0_ns));
}

/* The length headers of a request, as MHD_get_connection_values lists them. */
struct framing {
    const char *length, *other; /* the first Content-Length, another that differs */
    int chunked;                /* a Transfer-Encoding */
};

static enum MHD_Result scan_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    struct framing *f = cls;
    if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
        f->chunked = 1;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) != 0)
        return MHD_YES;
    if (!f->length)
        f->length = value;
    else if (strcmp(f->length, value) != 0 && !f->other)
        f->other = value;
    return MHD_YES;
}

/* RFC 9112 section 6.3: Content-Length twice with different values is an
 * unrecoverable framing error, and with Transfer-Encoding too it is a
 * request-smuggling shape. libmicrohttpd 0.9.75 takes the first value (or
 * the Transfer-Encoding) silently; every header is still there to look at.
 * Writes why into @why ("" when the length is not ambiguous). */
static void check_framing(struct MHD_Connection *c, char *why, size_t cap)
{
    struct framing f = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, scan_framing, &f);
    if (f.other)
        snprintf(why, cap, "Content-Length is given twice, '%.24s' and '%.24s'", f.length, f.other);
    else if (f.length && f.chunked)
        snprintf(why, cap, "Content-Length '%.24s' is given with Transfer-Encoding", f.length);
    else
        why[0] = '\0';
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *data,
                                  size_t *data_size, void **req_cls)
{
    (void)version;
    struct curvd_server *srv = cls;
    struct rctx *x = *req_cls;
    if (!x) {
        if (!(x = calloc(1, sizeof *x)))
            return MHD_NO;
        *req_cls = x;
        atomic_fetch_add(&srv->http->active, 1);
        x->t0_ns = now_ns();
        x->route_index = curvd_route_count;
        snprintf(x->method, sizeof x->method, "%s", method);
        snprintf(x->path, sizeof x->path, "%s", url);
        set_request_id(srv->http, c, x);
        check_framing(c, x->bad_framing, sizeof x->bad_framing);
        if (x->bad_framing[0])
            return dispatch(srv, c, x, url, method);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > srv->cfg.max_body) {
            x->too_big = 1;
            return dispatch(srv, c, x, url, method);
        }
        x->declared = (size_t)declared;
        return MHD_YES;
    }
    if (*data_size) {
        append(x, data, *data_size, srv->cfg.max_body);
        *data_size = 0;
        return MHD_YES;
    }
    if (x->phase == DONE) /* a worker finished: queue its reply */
        return send_reply(srv, c, x, &x->rp);
    if (x->status || x->phase == QUEUED) /* answered at the headers, or still running */
        return MHD_YES;
    return dispatch(srv, c, x, url, method);
}

/* One line per request: text, or a JSON object built by jansson so that a
 * hostile path cannot break the line. Never any tensor data. */
static void access_log(const struct rctx *x, int ok)
{
    double secs = (double)(now_ns() - x->t0_ns) / 1e9;
    const char *route = x->route ? x->route : "-";
    char text[384];
    snprintf(text, sizeof text, "%s %s %s %d %.3fms in=%zu out=%zu%s", x->id, x->method, x->path,
             x->status, secs * 1e3, x->len, x->bytes_out, ok ? "" : " (aborted)");
    json_t *fields =
        curvd_log_is_json()
            ? json_pack("{s:s, s:s, s:s, s:s, s:i, s:f, s:I, s:I, s:b}", "request_id", x->id,
                        "method", x->method, "path", x->path, "route", route, "status", x->status,
                        "duration_s", secs, "bytes_in", (json_int_t)x->len, "bytes_out",
                        (json_int_t)x->bytes_out, "completed", ok)
            : NULL;
    curvd_log_event(CURVD_LOG_INFO, "request", fields, text);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)c;
    struct curvd_server *srv = cls;
    struct rctx *x = *req_cls;
    if (!x)
        return;
    if (!srv->cfg.quiet)
        access_log(x, toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (x->rp.body) /* a reply that was never handed to MHD */
        (x->rp.body_free ? x->rp.body_free : free)(x->rp.body);
    curvd_mem_free(x->body);
    free(x);
    *req_cls = NULL;
    atomic_fetch_sub(&srv->http->active, 1);
}

/* The worker pool, lent to every session's optimizer as its executor
 * (session/service.c): the heavy requests and the per-layer work of their
 * steps share --workers threads. Without workers steps stay serial. */
static int start_workers(struct curvd_server *srv, char *err, size_t errlen)
{
    struct curvd_http *h = srv->http;
    pthread_mutex_init(&h->mu, NULL);
    if (srv->cfg.workers && !(h->pool = curvd_pool_new(srv->cfg.workers, err, errlen))) {
        pthread_mutex_destroy(&h->mu);
        return -1;
    }
    srv->exec = h->pool ? curvd_pool_executor(h->pool) : NULL;
    srv->bg_exec = h->pool ? curvd_pool_background_executor(h->pool) : NULL;
    srv->pool = h->pool;
    return 0;
}

static void stop_workers(struct curvd_server *srv)
{
    struct curvd_http *h = srv->http;
    curvd_pool_free(h->pool); /* runs what is queued, then joins */
    h->pool = NULL;
    srv->exec = NULL;
    srv->bg_exec = NULL;
    srv->pool = NULL;
    pthread_mutex_destroy(&h->mu);
}

/* Draining refuses new connections here, not with MHD_quiesce_daemon: in
 * libmicrohttpd 0.9.75 that races a pool thread's epoll loop to remove the
 * listen socket from the same epoll set, and the loser aborts the process. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addr;
    (void)addrlen;
    const struct curvd_http *h = cls;
    return atomic_load(&h->closing) ? MHD_NO : MHD_YES;
}

/* libmicrohttpd's own messages (a malformed request it refused, a socket
 * error) as log lines of ours, with a timestamp and a level. */
static void mhd_logger(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));
static void mhd_logger(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
    curvd_log(CURVD_LOG_WARN, "libmicrohttpd: %s", msg);
}

int curvd_http_start(struct curvd_server *srv, char *err, size_t errlen)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv->cfg.port)};
    if (inet_pton(AF_INET, srv->cfg.listen, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "listen address '%s' is not an IPv4 address", srv->cfg.listen);
        return -1;
    }
    struct curvd_http *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_init(&h->next_id, (uint64_t)now_ns());
    atomic_init(&h->inflight, 0);
    atomic_init(&h->active, 0);
    atomic_init(&h->closing, 0);
    h->srv = srv;
    srv->http = h;
    if (start_workers(srv, err, errlen) != 0) {
        free(h);
        srv->http = NULL;
        return -1;
    }
    /* epoll (AUTO). libmicrohttpd 0.9.75's epoll loop holds a connection
     * whose client hung up mid-body until the idle timeout; poll would
     * close it at once but drops complete requests followed by a
     * half-close (tests/server/cases size-*). Answering is worth more. */
    unsigned flags =
        MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
    h->mhd = MHD_start_daemon(
        flags, (uint16_t)srv->cfg.port, on_accept, h, on_request, srv, MHD_OPTION_EXTERNAL_LOGGER,
        mhd_logger, NULL, /* first: it then gets every message */
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)srv->cfg.threads, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32 * 1024, MHD_OPTION_CONNECTION_LIMIT, 1024u,
        MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
    if (!h->mhd) {
        snprintf(err, errlen, "cannot listen on %s:%u (in use, or no permission)", srv->cfg.listen,
                 srv->cfg.port);
        stop_workers(srv);
        free(h);
        srv->http = NULL;
        return -1;
    }
    return 0;
}

unsigned curvd_http_port(const struct curvd_server *srv)
{
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(srv->http->mhd, MHD_DAEMON_INFO_BIND_PORT);
    return di ? di->port : 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void curvd_http_stop(struct curvd_server *srv)
{
    if (!srv->http)
        return;
    /* Graceful drain (docs/SERVICE-NOTES.md): refuse new connections (on_accept),
     * answer new heavy requests 503 and close kept-alive connections after
     * their next reply; let admitted steps finish (their connections are
     * suspended, and MHD must not stop with one suspended); let replies go
     * out; then stop. */
    struct curvd_http *h = srv->http;
    pthread_mutex_lock(&h->mu);
    atomic_store(&h->closing, 1); /* from now on heavy requests get 503 */
    pthread_mutex_unlock(&h->mu);
    /* No time limit: stopping MHD with a connection suspended aborts the
     * process (0.9.75), and each step's own work bounds the wait. */
    while (atomic_load(&h->inflight) > 0)
        sleep_ms(50);
    /* Requests still arriving or replies still going out get up to 8 s;
     * idle keep-alive connections are not waited for (stopping closes them). */
    for (int i = 0; i < 160 && atomic_load(&h->active) > 0; i++)
        sleep_ms(50);
    MHD_stop_daemon(h->mhd);
    stop_workers(srv);
    free(h);
    srv->http = NULL;
}
