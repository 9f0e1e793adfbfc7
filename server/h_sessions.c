/* SPDX-License-Identifier: MIT */
/* Sessions: create, import, list, get, patch (hyperparameters), delete,
 * export. Each handler: decode -> validate -> curv_* -> store -> encode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handlers.h"
#include "session_json.h"
#include "store.h"

#include <sqlite3.h>

/* Persist a new optimizer under a fresh id, keep it in memory and answer
 * 201 with the session. Takes @o. */
static void register_new(struct curvd_server *srv, const struct curvd_req *rq,
                         struct curvd_reply *rp, curv_opt *o)
{
    unsigned char *blob = NULL;
    size_t len = 0;
    curv_error cerr;
    if (curv_opt_save(o, &blob, &len, &cerr) != CURV_OK) {
        curv_opt_free(o);
        curvd_reply_problem(rp, rq, 503, "OUT_OF_MEMORY", NULL, 0, "%s", cerr.text);
        return;
    }
    if (len > srv->cfg.mem_budget) {
        curv_free(blob);
        curv_opt_free(o);
        curvd_reply_problem(rp, rq, 422, "STATE_TOO_LARGE", NULL, 0,
                            "the optimizer state takes %zu bytes, above the memory budget of %zu",
                            len, srv->cfg.mem_budget);
        return;
    }
    char id[CURVD_ID_LEN + 1], err[256];
    curvd_new_id(id);
    json_t *meta = curvd_session_meta(o);
    char *meta_text = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(17));
    struct curvd_session_new row = {.id = id,
                                    .tenant = rq->tenant,
                                    .optimizer = curv_opt_kind_name(curv_opt_kind_of(o)),
                                    .meta = meta_text,
                                    .step = (int64_t)curv_opt_steps(o),
                                    .state = blob,
                                    .state_len = len};
    int64_t created = 0;
    int st = curvd_store_create(srv->store, &row, &created, err, sizeof err);
    curv_free(blob);
    if (st != CURVD_STORE_OK) {
        curv_opt_free(o);
        curvd_reply_store_error(rp, rq, st, err);
    } else {
        if (curvd_registry_add(srv->reg, id, rq->tenant, o, len) != CURVD_REG_OK)
            curv_opt_free(o); /* it is durable; the next request loads it */
        json_t *s =
            curvd_session_json(id, meta_text, (long long)row.step, created, created, 0, NULL);
        snprintf(rp->location, sizeof rp->location, "/v1/sessions/%s", id);
        snprintf(rp->etag, sizeof rp->etag, "\"%lld\"", (long long)row.step);
        curvd_reply_json(rp, 201, s);
    }
    free(meta_text);
    json_decref(meta);
}

CURVD_HANDLER(curvd_h_session_create)
{
    json_t *body = curvd_body_json(rq, rp);
    if (!body)
        return;
    struct curvd_field_error fe = {0};
    char path[128], detail[400];
    const char *opt_name = json_string_value(json_object_get(body, "optimizer"));
    curv_opt_kind kind;
    curv_layout *l = NULL;
    curv_config *c = NULL;
    const char *key, *extra = NULL;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "optimizer") && strcmp(key, "layout") && strcmp(key, "config"))
            extra = key;
    }
    if (extra) {
        snprintf(path, sizeof path, "/%.100s", extra);
        fe = (struct curvd_field_error){path, "one of optimizer, layout, config", extra};
        curvd_reply_problem(rp, rq, 400, "UNKNOWN_MEMBER", &fe, 1,
                            "unknown member \"%.100s\" in the session", extra);
    } else if (!opt_name || curv_opt_kind_parse(opt_name, &kind) != CURV_OK) {
        fe = (struct curvd_field_error){"/optimizer", "one of GET /v1/version's optimizers",
                                        opt_name};
        curvd_reply_problem(rp, rq, 400, "UNKNOWN_OPTIMIZER", &fe, 1, "unknown optimizer '%s'",
                            opt_name ? opt_name : "(missing)");
    } else if (!(l = curvd_layout_from_json(json_object_get(body, "layout"), &fe, path, sizeof path,
                                            detail, sizeof detail))) {
        curvd_reply_problem(rp, rq, 400, "INVALID_LAYOUT", &fe, 1, "%s", detail);
    } else if (!(c = curvd_config_from_json(json_object_get(body, "config"), &fe, path, sizeof path,
                                            detail, sizeof detail))) {
        curvd_reply_problem(rp, rq, 400, "INVALID_CONFIG", &fe, 1, "%s", detail);
    } else if (curv_layout_dim(l) > srv->cfg.mem_budget / sizeof(double)) {
        /* Every optimizer keeps or moves at least one double per parameter:
         * refuse before allocating anything that large. */
        curvd_reply_problem(rp, rq, 422, "STATE_TOO_LARGE", NULL, 0,
                            "%zu parameters need at least %zu bytes, above the memory budget "
                            "of %zu",
                            curv_layout_dim(l), curv_layout_dim(l) * sizeof(double),
                            srv->cfg.mem_budget);
    } else {
        curv_opt *o = NULL;
        curv_error cerr;
        curv_status st = curv_opt_new(kind, l, c, &o, &cerr);
        if (st == CURV_OK)
            register_new(srv, rq, rp, o);
        else if (st == CURV_E_NOMEM)
            curvd_reply_problem(rp, rq, 503, "OUT_OF_MEMORY", NULL, 0, "%s", cerr.text);
        else
            curvd_reply_problem(rp, rq, st == CURV_E_RANGE ? 422 : 400,
                                st == CURV_E_RANGE ? "TOO_LARGE" : "INVALID_CONFIG", NULL, 0, "%s",
                                cerr.text);
    }
    curv_config_free(c);
    curv_layout_free(l);
    json_decref(body);
}

CURVD_HANDLER(curvd_h_session_import)
{
    if (!curvd_is_ctype(rq, "application/octet-stream")) {
        curvd_reply_problem(rp, rq, 415, "UNSUPPORTED_MEDIA_TYPE", NULL, 0,
                            "expected Content-Type: application/octet-stream (a state blob)");
        return;
    }
    curv_opt *o = NULL;
    curv_error cerr;
    curv_status st = curv_opt_load(rq->body, rq->body_len, &o, &cerr);
    if (st != CURV_OK) {
        curvd_reply_problem(rp, rq, st == CURV_E_NOMEM ? 503 : 400, "INVALID_STATE", NULL, 0, "%s",
                            cerr.text);
        return;
    }
    register_new(srv, rq, rp, o);
}

/* The session's JSON, with the callback it awaits (held in memory only). */
static json_t *session_json(struct curvd_server *srv, const struct curvd_session *s)
{
    json_t *j =
        curvd_session_json(s->id, s->meta, (long long)s->step, (long long)s->created_at,
                           (long long)s->updated_at, (long long)s->last_step, s->last_report);
    long long step = 0;
    uint64_t seq = 0;
    if (j && curvd_registry_pending(srv->reg, s->id, &step, &seq)) {
        char url[160];
        snprintf(url, sizeof url, "/v1/sessions/%s/steps/%lld/callbacks/%llu", s->id, step,
                 (unsigned long long)seq);
        json_object_set_new(j, "pending_callback", json_string(url));
    }
    return j;
}

static void reply_row(struct curvd_server *srv, struct curvd_reply *rp,
                      const struct curvd_session *s, int status)
{
    snprintf(rp->etag, sizeof rp->etag, "\"%lld\"", (long long)s->step);
    curvd_reply_json(rp, status, session_json(srv, s));
}

CURVD_HANDLER(curvd_h_session_get)
{
    struct curvd_session s = {0};
    char err[256];
    int st = curvd_valid_id(rq->param[0])
                 ? curvd_store_get(srv->store, rq->tenant, rq->param[0], 0, &s, err, sizeof err)
                 : CURVD_STORE_NOT_FOUND;
    if (st == CURVD_STORE_OK)
        reply_row(srv, rp, &s, 200);
    else
        curvd_reply_store_error(rp, rq, st, err);
    curvd_session_clear(&s);
}

CURVD_HANDLER(curvd_h_session_list)
{
    const char *ps = curvd_req_query(rq, "page_size");
    const char *token = curvd_req_query(rq, "page_token");
    char *end = NULL;
    long size = ps ? strtol(ps, &end, 10) : 100;
    if (ps && (*end || size < 1 || size > CURVD_STORE_MAX_PAGE)) {
        struct curvd_field_error fe = {"page_size", "an integer in 1..1000", ps};
        curvd_reply_problem(rp, rq, 400, "INVALID_QUERY", &fe, 1, "bad page_size");
        return;
    }
    struct curvd_session_list list = {0};
    char err[256];
    int st = curvd_store_list(srv->store, rq->tenant, (size_t)size, token, &list, err, sizeof err);
    if (st == CURVD_STORE_INVALID) {
        struct curvd_field_error fe = {"page_token", "a next_page_token from an earlier page",
                                       token};
        curvd_reply_problem(rp, rq, 400, "INVALID_QUERY", &fe, 1, "%s", err);
    } else if (st != CURVD_STORE_OK) {
        curvd_reply_store_error(rp, rq, st, err);
    } else {
        json_t *arr = json_array();
        for (size_t i = 0; i < list.count; i++)
            json_array_append_new(arr, session_json(srv, &list.items[i]));
        json_t *out = json_pack("{s:o}", "sessions", arr);
        if (list.next_page_token)
            json_object_set_new(out, "next_page_token", json_string(list.next_page_token));
        curvd_reply_json(rp, 200, out);
    }
    curvd_session_list_clear(&list);
}

CURVD_HANDLER(curvd_h_session_delete)
{
    char err[256];
    int st = curvd_valid_id(rq->param[0])
                 ? curvd_store_delete(srv->store, rq->tenant, rq->param[0], err, sizeof err)
                 : CURVD_STORE_NOT_FOUND;
    if (st != CURVD_STORE_OK) {
        curvd_reply_store_error(rp, rq, st, err);
        return;
    }
    curvd_registry_drop(srv->reg, rq->param[0]);
    curvd_reply_bytes(rp, 204, NULL, NULL, 0);
}

CURVD_HANDLER(curvd_h_session_export)
{
    struct curvd_session s = {0};
    char err[256];
    int st = curvd_valid_id(rq->param[0])
                 ? curvd_store_get(srv->store, rq->tenant, rq->param[0], 1, &s, err, sizeof err)
                 : CURVD_STORE_NOT_FOUND;
    if (st != CURVD_STORE_OK) {
        curvd_reply_store_error(rp, rq, st, err);
    } else {
        snprintf(rp->etag, sizeof rp->etag, "\"%lld\"", (long long)s.step);
        curvd_reply_owned(rp, 200, "application/octet-stream", s.state, s.state_len, sqlite3_free);
        s.state = NULL; /* the reply owns it now */
    }
    curvd_session_clear(&s);
}

/* Apply @changes to the held session and persist the result; on a store
 * failure the optimizer is rolled back to @before so memory never runs
 * ahead of the database. Returns the store status. */
static int reconfigure_durably(struct curvd_server *srv, const struct curvd_req *rq,
                               struct curvd_entry *e, const unsigned char *before,
                               size_t before_len, size_t *new_bytes, char *err, size_t errlen)
{
    unsigned char *blob = NULL;
    size_t len = 0;
    int st = CURVD_STORE_ERROR;
    if (curv_opt_save(e->opt, &blob, &len, NULL) != CURV_OK) {
        snprintf(err, errlen, "out of memory saving the state");
    } else {
        json_t *meta = curvd_session_meta(e->opt);
        char *meta_text = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(17));
        st =
            curvd_store_update_state(srv->store, rq->tenant, e->id, (int64_t)curv_opt_steps(e->opt),
                                     blob, len, meta_text, NULL, err, errlen);
        free(meta_text);
        json_decref(meta);
        curv_free(blob);
    }
    if (st == CURVD_STORE_CONFLICT) {
        /* This copy is stale (the session stepped through another copy):
         * forget it; the next request loads the committed state. */
        curvd_registry_drop(srv->reg, e->id);
    } else if (st != CURVD_STORE_OK) {
        curv_opt *old = NULL;
        if (curv_opt_load(before, before_len, &old, NULL) == CURV_OK) {
            curv_opt_free(e->opt);
            e->opt = old;
        }
    } else {
        *new_bytes = len;
    }
    return st;
}

CURVD_HANDLER(curvd_h_session_patch)
{
    json_t *body = curvd_body_json(rq, rp);
    if (!body)
        return;
    struct curvd_field_error fe = {0};
    char path[128], detail[400], err[256];
    curv_config *c = NULL;
    struct curvd_entry *e = NULL;
    enum curvd_reg_status rs = CURVD_REG_NOT_FOUND;
    if (!json_object_get(body, "config") || json_object_size(body) != 1) {
        fe = (struct curvd_field_error){"/config", "an object of hyperparameters", NULL};
        curvd_reply_problem(rp, rq, 400, "INVALID_CONFIG", &fe, 1,
                            "the body must be {\"config\": {...}} and nothing else");
    } else if (!(c = curvd_config_from_json(json_object_get(body, "config"), &fe, path, sizeof path,
                                            detail, sizeof detail))) {
        curvd_reply_problem(rp, rq, 400, "INVALID_CONFIG", &fe, 1, "%s", detail);
    } else if (!curvd_valid_id(rq->param[0]) ||
               (rs = curvd_registry_begin(srv->reg, rq->param[0], rq->tenant, &e)) !=
                   CURVD_REG_OK) {
        if (rs == CURVD_REG_BUSY)
            curvd_reply_problem(rp, rq, 409, "SESSION_BUSY", NULL, 0,
                                "a step of this session is in progress");
        else if (rs == CURVD_REG_ERROR)
            curvd_reply_problem(rp, rq, 503, "UNAVAILABLE", NULL, 0, "cannot load the session");
        else
            curvd_reply_problem(rp, rq, 404, "NOT_FOUND", NULL, 0, "no such session");
    } else {
        size_t bytes = e->bytes; /* the new charge if the state changed size */
        char etag[32];
        const char *im = curvd_req_header(rq, "If-Match");
        snprintf(etag, sizeof etag, "\"%llu\"", (unsigned long long)curv_opt_steps(e->opt));
        unsigned char *before = NULL;
        size_t before_len = 0;
        curv_error cerr;
        curv_status cs;
        if (im && strcmp(im, "*") != 0 && strcmp(im, etag) != 0) {
            curvd_reply_problem(rp, rq, 412, "PRECONDITION_FAILED", NULL, 0,
                                "the session is at ETag %s, not %s", etag, im);
        } else if (curv_opt_save(e->opt, &before, &before_len, &cerr) != CURV_OK) {
            curvd_reply_problem(rp, rq, 503, "OUT_OF_MEMORY", NULL, 0, "%s", cerr.text);
        } else if ((cs = curv_opt_reconfigure(e->opt, c, &cerr)) != CURV_OK) {
            curvd_reply_problem(rp, rq, cs == CURV_E_STATE ? 409 : 400,
                                cs == CURV_E_STATE ? "CALLBACK_PENDING" : "INVALID_CONFIG", NULL, 0,
                                "%s", cerr.text);
        } else {
            int st = reconfigure_durably(srv, rq, e, before, before_len, &bytes, err, sizeof err);
            struct curvd_session s = {0};
            if (st == CURVD_STORE_OK)
                st = curvd_store_get(srv->store, rq->tenant, e->id, 0, &s, err, sizeof err);
            if (st == CURVD_STORE_OK)
                reply_row(srv, rp, &s, 200);
            else if (st == CURVD_STORE_CONFLICT)
                curvd_reply_problem(rp, rq, 409, "SESSION_CHANGED", NULL, 0,
                                    "the session stepped meanwhile; read it again and retry");
            else
                curvd_reply_store_error(rp, rq, st, err);
            curvd_session_clear(&s);
        }
        curv_free(before);
        curvd_registry_end(srv->reg, e, bytes);
    }
    curv_config_free(c);
    json_decref(body);
}
