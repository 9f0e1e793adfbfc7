/* SPDX-License-Identifier: MIT */
/* What several handlers need: JSON bodies, store and registry refusals. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/handlers.h"
#include "store/store.h"
#include "wire/step_decode.h"

int curvd_is_ctype(const struct curvd_req *rq, const char *want)
{
    return curvd_ctype_is(rq->content_type, want);
}

json_t *curvd_body_json(const struct curvd_req *rq, struct curvd_reply *rp)
{
    if (!curvd_is_ctype(rq, "application/json")) {
        curvd_reply_problem(rp, rq, CURVD_R_UNSUPPORTED_MEDIA_TYPE, NULL, 0,
                            "expected Content-Type: application/json (UTF-8), got %s",
                            rq->content_type ? rq->content_type : "none");
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb((const char *)rq->body, rq->body_len,
                           JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &je);
    if (!j) {
        curvd_reply_problem(rp, rq, CURVD_R_MALFORMED_JSON, NULL, 0,
                            "invalid JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        curvd_reply_problem(rp, rq, CURVD_R_MALFORMED_JSON, NULL, 0,
                            "the body must be a JSON object");
        return NULL;
    }
    return j;
}

void curvd_reply_store_error(struct curvd_reply *rp, const struct curvd_req *rq, int st,
                             const char *err)
{
    if (st == CURVD_STORE_NOT_FOUND)
        curvd_reply_problem(rp, rq, CURVD_R_NOT_FOUND, NULL, 0, "no such session");
    else if (st == CURVD_STORE_BUSY)
        curvd_reply_problem(rp, rq, CURVD_R_DATABASE_BUSY, NULL, 0, "the database is busy: %s",
                            err);
    else if (st == CURVD_STORE_FENCED)
        /* Nothing was written and the copy in memory is gone; the daemon
         * that holds the session now answers the retry (docs/CLUSTER.md). */
        curvd_reply_problem(rp, rq, CURVD_R_SESSION_LEASED, NULL, 0,
                            "another daemon took this session over; nothing of this request was "
                            "applied, retry it: %s",
                            err);
    else if (st == CURVD_STORE_FULL)
        curvd_reply_problem(rp, rq, CURVD_R_STORAGE_FULL, NULL, 0,
                            "the disk is full; DELETE sessions to make room for new ones, or give "
                            "the database more space: %s",
                            err);
    else
        curvd_reply_problem(rp, rq, CURVD_R_DATABASE_ERROR, NULL, 0, "database error: %s", err);
}

void curvd_reply_registry_error(struct curvd_reply *rp, const struct curvd_req *rq,
                                enum curvd_reg_status rs, const char *why)
{
    if (rs == CURVD_REG_LEASED)
        curvd_reply_problem(rp, rq, CURVD_R_SESSION_LEASED, NULL, 0,
                            "another daemon holds this session's lease; retry after Retry-After "
                            "(its lease ends by then unless that daemon still serves it)");
    else if (rs == CURVD_REG_BUSY)
        curvd_reply_problem(rp, rq, CURVD_R_SESSION_BUSY, NULL, 0,
                            "another request of this session is in progress");
    else if (rs == CURVD_REG_ERROR)
        curvd_reply_problem(rp, rq, CURVD_R_UNAVAILABLE, NULL, 0,
                            "cannot load the session now (see the daemon's log)");
    else if (rs == CURVD_REG_UNLOADABLE)
        /* Not a 503: trying again gives the same answer. What is stored
         * stays reachable without loading it. */
        curvd_reply_problem(rp, rq, CURVD_R_SESSION_UNLOADABLE, NULL, 0,
                            "session %s is stored but its state cannot be loaded: %s. GET "
                            "/v1/sessions/%s/state exports the stored blob as it is; DELETE "
                            "/v1/sessions/%s removes the session",
                            rq->param[0], why && why[0] ? why : "unknown reason", rq->param[0],
                            rq->param[0]);
    else
        curvd_reply_problem(rp, rq, CURVD_R_NOT_FOUND, NULL, 0, "no such session");
}

int curvd_take_session(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                       struct curvd_entry **e)
{
    char why[256] = "";
    int64_t retry_ms = 0;
    enum curvd_reg_status rs =
        curvd_svc_take(srv, rq->param[0], rq->tenant, e, &retry_ms, why, sizeof why);
    if (rs != CURVD_REG_OK)
        curvd_reply_registry_error(rp, rq, rs, why);
    if (rs == CURVD_REG_LEASED) /* whole seconds, rounded up: never before it ends */
        rp->retry_after_s = retry_ms > 0 ? (unsigned)((retry_ms + 999) / 1000) : 1;
    return rs == CURVD_REG_OK ? 0 : -1;
}

int curvd_query_int(const struct curvd_req *rq, struct curvd_reply *rp, const char *name,
                    long long min, long long max, long long def, long long *out)
{
    const char *text = curvd_req_query(rq, name);
    char *end = NULL;
    *out = def;
    if (!text)
        return 0;
    long long v = strtoll(text, &end, 10);
    if (*text >= '0' && *text <= '9' && !*end && v >= min && v <= max) {
        *out = v;
        return 0;
    }
    char want[96];
    snprintf(want, sizeof want, "an integer in %lld..%lld", min, max);
    struct curvd_field_error fe = {name, want, text};
    curvd_reply_problem(rp, rq, CURVD_R_INVALID_QUERY, &fe, 1, "bad %s", name);
    return -1;
}
