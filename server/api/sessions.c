/* SPDX-License-Identifier: MIT */
/* Sessions: create, import, list, get, patch (hyperparameters), delete,
 * export. Each handler: decode -> validate -> curv_* -> store -> encode. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/handlers.h"
#include "api/steps.h"
#include "store/store.h"
#include "wire/session_json.h"

/* A session's own setting that a body may give: absent, null (the
 * daemon's default) or a whole number in 0..@max. */
struct setting {
    const char *key, *path;
    int64_t max;
    enum curvd_reason reason;
    const char *expected, *detail;
};

static const struct setting IDLE_TTL = {
    "idle_ttl_s",
    "/idle_ttl_s",
    CURVD_MAX_IDLE_TTL_S,
    CURVD_R_INVALID_TTL,
    "null or an integer of seconds, 0 to 3153600000",
    "idle_ttl_s must be null (the daemon's default), 0 (never) or seconds"};
static const struct setting HISTORY = {
    "history_steps",
    "/history_steps",
    CURVD_STORE_HISTORY_MAX,
    CURVD_R_INVALID_CONFIG,
    "null or an integer of steps, 0 to 1000000",
    "history_steps must be null (the daemon's --history), 0 (keep none) or a number of steps "
    "up to 1000000"};

/* Setting @st as @body gives it: absent (*@present 0), null (present, *@has
 * 0), or the number in *@out. Return 0, or -1 with its 400 in @rp. */
static int setting_from_json(const struct curvd_req *rq, struct curvd_reply *rp, json_t *body,
                             const struct setting *st, int *present, int *has, int64_t *out)
{
    json_t *v = json_object_get(body, st->key);
    *present = v != NULL;
    *has = v && !json_is_null(v);
    *out = 0;
    if (!*has)
        return 0;
    /* Bodies are read with JSON_DECODE_INT_AS_REAL: a whole number. */
    double x = json_is_number(v) ? json_number_value(v) : -1;
    if (x >= 0 && x <= (double)st->max && x == (double)(int64_t)x) {
        *out = (int64_t)x;
        return 0;
    }
    struct curvd_field_error fe = {st->path, st->expected, NULL};
    curvd_reply_problem(rp, rq, st->reason, &fe, 1, "%s", st->detail);
    return -1;
}

/* A label key: 1 to 63 of [A-Za-z0-9_.-]. */
static int label_key_ok(const char *k)
{
    size_t n = strspn(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-");
    return n >= 1 && n <= CURVD_LABEL_KEY_MAX && k[n] == '\0';
}

/* A session's name and labels as a body gives them: absent (*@set 0),
 * null (set, cleared), or a string of 1-128 bytes / an object of at most
 * 32 labels, keys as label_key_ok(), values strings of at most 128 bytes.
 * *@labels_text: the labels as compact JSON with sorted keys (free()).
 * Return 0, or -1 with a 400 INVALID_LABELS in @rp. */
static int name_labels_from_json(const struct curvd_req *rq, struct curvd_reply *rp, json_t *body,
                                 int *set_name, const char **name, int *set_labels,
                                 char **labels_text)
{
    json_t *n = json_object_get(body, "name"), *l = json_object_get(body, "labels");
    *set_name = n != NULL;
    *name = NULL;
    *set_labels = l != NULL;
    *labels_text = NULL;
    struct curvd_field_error fe = {"/name", "null or a string of 1 to 128 bytes", NULL};
    if (n && !json_is_null(n)) {
        if (!json_is_string(n) || json_string_length(n) < 1 ||
            json_string_length(n) > CURVD_NAME_MAX) {
            curvd_reply_problem(rp, rq, CURVD_R_INVALID_LABELS, &fe, 1,
                                "name must be null or a string of 1 to 128 bytes");
            return -1;
        }
        *name = json_string_value(n);
    }
    if (!l || json_is_null(l) || (json_is_object(l) && json_object_size(l) == 0))
        return 0; /* none: stored as NULL */
    char path[128];
    fe = (struct curvd_field_error){"/labels", "an object of at most 32 string labels", NULL};
    if (!json_is_object(l) || json_object_size(l) > CURVD_LABELS_MAX) {
        curvd_reply_problem(rp, rq, CURVD_R_INVALID_LABELS, &fe, 1,
                            "labels must be an object of at most 32 string values");
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach(l, k, v)
    {
        if (!label_key_ok(k) || !json_is_string(v) || json_string_length(v) > CURVD_NAME_MAX) {
            snprintf(path, sizeof path, "/labels/%.64s", k);
            fe = (struct curvd_field_error){path,
                                            "a key of 1 to 63 of [A-Za-z0-9_.-] and a string "
                                            "value of at most 128 bytes",
                                            NULL};
            curvd_reply_problem(rp, rq, CURVD_R_INVALID_LABELS, &fe, 1, "bad label '%.64s'", k);
            return -1;
        }
    }
    *labels_text = json_dumps(l, JSON_COMPACT | JSON_SORT_KEYS);
    if (!*labels_text) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
        return -1;
    }
    return 0;
}

/* A session's name and labels in its JSON: null and {} when none. */
static void put_name_labels(json_t *j, const char *name, const char *labels)
{
    if (!j)
        return;
    json_object_set_new(j, "name", name ? json_string(name) : json_null());
    json_t *l = labels ? json_loads(labels, 0, NULL) : NULL;
    json_object_set_new(j, "labels", l ? l : json_object());
}

/* A session's own setting in its JSON: the number, or null for the
 * daemon's default. */
static void put_setting(json_t *j, const char *key, int has, int64_t v)
{
    if (j)
        json_object_set_new(j, key, has ? json_integer((json_int_t)v) : json_null());
}

/* Persist a new optimizer under a fresh id (every part of its state),
 * keep it in memory and answer 201 with the session. Takes @o. */

static void register_new(struct curvd_server *srv, const struct curvd_req *rq,
                         struct curvd_reply *rp, curv_opt *o, const struct curvd_svc_settings *x)
{
    char id[CURVD_ID_LEN + 1], err[256];
    json_t *meta = curvd_session_meta(o);
    char *meta_text = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(17));
    long long step = (long long)curv_opt_steps(o);
    int64_t created = 0;
    int st = curvd_svc_create_ex(srv, rq->tenant, o, meta_text, x, id, &created, err, sizeof err);
    if (st == CURVD_SVC_NOMEM) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "%s", err);
    } else if (st != CURVD_STORE_OK) {
        curvd_reply_store_error(rp, rq, st, err);
    } else {
        json_t *s = curvd_session_json(id, meta_text, step, created, created, 0, NULL);
        put_setting(s, "idle_ttl_s", x->has_ttl, x->ttl_s);
        put_setting(s, "history_steps", x->has_history, x->history_steps);
        put_name_labels(s, x->name, x->labels);
        snprintf(rp->location, sizeof rp->location, "/v1/sessions/%s", id);
        curvd_etag(rp->etag, sizeof rp->etag, step);
        curvd_reply_json(rp, 201, s);
    }
    free(meta_text);
    json_decref(meta);
}

/* libcurv's refusal of a kind, layout and config (from curv_opt_new or
 * curv_opt_state_bytes, which refuse alike). */
static void reply_opt_refused(struct curvd_reply *rp, const struct curvd_req *rq, curv_status st,
                              const curv_error *cerr)
{
    curvd_reply_problem(rp, rq, curvd_reason_of_status(CURVD_OP_NEW, st), NULL, 0, "%s",
                        cerr->text);
}

/* 0 when an optimizer of @kind, @l and @c holds at most the memory budget
 * (curv_opt_state_bytes: counted, nothing allocated); else -1 with the
 * problem in @rp: 422 STATE_TOO_LARGE, or libcurv's refusal. */
static int check_budget(struct curvd_server *srv, const struct curvd_req *rq,
                        struct curvd_reply *rp, curv_opt_kind kind, const curv_layout *l,
                        const curv_config *c)
{
    size_t bytes = 0;
    curv_error cerr;
    curv_status st = curv_opt_state_bytes(kind, l, c, &bytes, &cerr);
    if (st != CURV_OK) {
        reply_opt_refused(rp, rq, st, &cerr);
        return -1;
    }
    if (bytes <= srv->cfg.mem_budget)
        return 0;
    char want[64], got[64];
    snprintf(want, sizeof want, "at most %zu bytes of state", srv->cfg.mem_budget);
    snprintf(got, sizeof got, bytes == SIZE_MAX ? "more than %zu bytes" : "%zu bytes", bytes);
    struct curvd_field_error fe = {"/layout", want, got};
    curvd_reply_problem(rp, rq, CURVD_R_STATE_TOO_LARGE, &fe, 1,
                        "an %s optimizer of this layout and config holds %s of state, above the "
                        "memory budget of %zu bytes (--memory-budget)",
                        curv_opt_kind_name(kind), got, srv->cfg.mem_budget);
    return -1;
}

/* Create, unless the state would not fit the memory budget: checked
 * before anything is allocated. */
static void create_within_budget(struct curvd_server *srv, const struct curvd_req *rq,
                                 struct curvd_reply *rp, curv_opt_kind kind, const curv_layout *l,
                                 const curv_config *c, const struct curvd_svc_settings *x)
{
    if (check_budget(srv, rq, rp, kind, l, c) != 0)
        return;
    curv_opt *o = NULL;
    curv_error cerr;
    curv_status st = curv_opt_new(kind, l, c, &o, &cerr);
    if (st == CURV_OK)
        register_new(srv, rq, rp, o, x);
    else
        reply_opt_refused(rp, rq, st, &cerr);
}

CURVD_HANDLER(curvd_h_session_create)
{
    json_t *body = curvd_body_json(rq, rp);
    if (!body)
        return;
    struct curvd_field_error fe = {0};
    struct curvd_problem p;
    char path[128];
    const char *opt_name = json_string_value(json_object_get(body, "optimizer"));
    curv_opt_kind kind;
    curv_layout *l = NULL;
    curv_config *c = NULL;
    const char *key, *extra = NULL;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "optimizer") && strcmp(key, "layout") && strcmp(key, "config") &&
            strcmp(key, "idle_ttl_s") && strcmp(key, "name") && strcmp(key, "labels") &&
            strcmp(key, "history_steps"))
            extra = key;
    }
    int ttl_given = 0, has_ttl = 0, set_name = 0, set_labels = 0, hist_given = 0, has_hist = 0;
    int64_t ttl = 0, hist = 0;
    const char *name = NULL;
    char *labels = NULL;
    if (extra) {
        snprintf(path, sizeof path, "/%.100s", extra);
        fe = (struct curvd_field_error){
            path, "one of optimizer, layout, config, idle_ttl_s, history_steps, name, labels",
            extra};
        curvd_reply_problem(rp, rq, CURVD_R_UNKNOWN_MEMBER, &fe, 1,
                            "unknown member \"%.100s\" in the session", extra);
    } else if (!opt_name || curv_opt_kind_parse(opt_name, &kind) != CURV_OK) {
        fe = (struct curvd_field_error){"/optimizer", "one of GET /v1/version's optimizers",
                                        opt_name};
        curvd_reply_problem(rp, rq, CURVD_R_UNKNOWN_OPTIMIZER, &fe, 1, "unknown optimizer '%s'",
                            opt_name ? opt_name : "(missing)");
    } else if (curvd_problem_init(&p),
               !(l = curvd_layout_from_json(json_object_get(body, "layout"), &p)) ||
                   !(c = curvd_config_from_json(kind, json_object_get(body, "config"), &p))) {
        curvd_reply_codec_problem(rp, rq, &p);
    } else if (setting_from_json(rq, rp, body, &IDLE_TTL, &ttl_given, &has_ttl, &ttl) == 0 &&
               setting_from_json(rq, rp, body, &HISTORY, &hist_given, &has_hist, &hist) == 0 &&
               name_labels_from_json(rq, rp, body, &set_name, &name, &set_labels, &labels) == 0) {
        struct curvd_svc_settings x = {has_ttl, ttl, name, labels, has_hist, hist};
        create_within_budget(srv, rq, rp, kind, l, c, &x);
    }
    free(labels);
    curv_config_free(c);
    curv_layout_free(l);
    json_decref(body);
}

CURVD_HANDLER(curvd_h_session_import)
{
    if (!curvd_is_ctype(rq, "application/octet-stream")) {
        curvd_reply_problem(rp, rq, CURVD_R_UNSUPPORTED_MEDIA_TYPE, NULL, 0,
                            "expected Content-Type: application/octet-stream (a state blob)");
        return;
    }
    if (rq->body_len > srv->cfg.mem_budget) {
        /* Loading allocates at least the arrays the blob holds: refuse first. */
        char want[64], got[64];
        snprintf(want, sizeof want, "at most %zu bytes", srv->cfg.mem_budget);
        snprintf(got, sizeof got, "%zu bytes", rq->body_len);
        struct curvd_field_error fe = {"", want, got};
        curvd_reply_problem(rp, rq, CURVD_R_STATE_TOO_LARGE, &fe, 1,
                            "the state blob takes %zu bytes, above the memory budget of %zu bytes "
                            "(--memory-budget)",
                            rq->body_len, srv->cfg.mem_budget);
        return;
    }
    curv_opt *o = NULL;
    curv_error cerr;
    curv_status st = curv_opt_load(rq->body, rq->body_len, &o, &cerr);
    if (st != CURV_OK) {
        curvd_reply_problem(rp, rq, curvd_reason_of_status(CURVD_OP_LOAD, st), NULL, 0, "%s",
                            cerr.text);
        return;
    }
    /* The exact size, as for a new session: the blob's kind, layout and
     * settings. */
    curv_config *c = curvd_opt_config(o);
    if (!c)
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
    else if (check_budget(srv, rq, rp, curv_opt_kind_of(o), curv_opt_layout(o), c) == 0) {
        struct curvd_svc_settings none = {0};
        register_new(srv, rq, rp, o, &none); /* takes o */
        o = NULL;
    }
    curv_config_free(c);
    curv_opt_free(o);
}

/* The session's JSON, with the callback it awaits (held in memory only). */
static json_t *session_json(struct curvd_server *srv, const struct curvd_session *s)
{
    json_t *j =
        curvd_session_json(s->id, s->meta, (long long)s->step, (long long)s->created_at,
                           (long long)s->updated_at, (long long)s->last_step, s->last_report);
    put_setting(j, "idle_ttl_s", s->has_idle_ttl, s->idle_ttl_s);
    put_setting(j, "history_steps", s->has_history, s->history_steps);
    put_name_labels(j, s->name, s->labels);
    long long step = 0;
    uint64_t seq = 0;
    if (j && curvd_registry_pending(srv->reg, s->id, &step, &seq)) {
        char url[160];
        curvd_callback_path(url, sizeof url, s->id, step, seq);
        json_object_set_new(j, "pending_callback", json_string(url));
    }
    return j;
}

static void reply_row(struct curvd_server *srv, struct curvd_reply *rp,
                      const struct curvd_session *s, int status)
{
    curvd_etag(rp->etag, sizeof rp->etag, (long long)s->step);
    curvd_reply_json(rp, status, session_json(srv, s));
}

CURVD_HANDLER(curvd_h_session_get)
{
    struct curvd_session s = {0};
    char err[256];
    int st = curvd_svc_get(srv, rq->tenant, rq->param[0], 0, &s, err, sizeof err);
    if (st == CURVD_STORE_OK)
        reply_row(srv, rp, &s, 200);
    else
        curvd_reply_store_error(rp, rq, st, err);
    curvd_session_clear(&s);
}

CURVD_HANDLER(curvd_h_session_list)
{
    const char *token = curvd_req_query(rq, "page_token");
    long long size;
    if (curvd_query_int(rq, rp, "page_size", 1, CURVD_STORE_MAX_PAGE, 100, &size) != 0)
        return;
    /* label=key=value: the sessions with that label. */
    const char *label = curvd_req_query(rq, "label");
    char key[CURVD_LABEL_KEY_MAX + 1] = "";
    const char *value = NULL;
    if (label) {
        const char *eq = strchr(label, '=');
        size_t kn = eq ? (size_t)(eq - label) : 0;
        if (kn >= 1 && kn <= CURVD_LABEL_KEY_MAX) {
            memcpy(key, label, kn);
            key[kn] = '\0';
            value = eq + 1;
        }
        if (!value || !label_key_ok(key)) {
            struct curvd_field_error fe = {"label", "key=value, the key 1 to 63 of [A-Za-z0-9_.-]",
                                           label};
            curvd_reply_problem(rp, rq, CURVD_R_INVALID_QUERY, &fe, 1, "bad label filter");
            return;
        }
    }
    struct curvd_session_list list = {0};
    char err[256];
    int st = curvd_store_list_labeled(srv->store, rq->tenant, (size_t)size, token,
                                      value ? key : NULL, value, &list, err, sizeof err);
    if (st == CURVD_STORE_INVALID) {
        struct curvd_field_error fe = {"page_token", "a next_page_token from an earlier page",
                                       token};
        curvd_reply_problem(rp, rq, CURVD_R_INVALID_QUERY, &fe, 1, "%s", err);
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
    int st = curvd_svc_delete(srv, rq->tenant, rq->param[0], err, sizeof err);
    if (st != CURVD_STORE_OK)
        curvd_reply_store_error(rp, rq, st, err);
    else
        curvd_reply_bytes(rp, 204, NULL, NULL, 0);
}

CURVD_HANDLER(curvd_h_session_export)
{
    struct curvd_session s = {0};
    unsigned char *blob = NULL;
    size_t len = 0;
    char err[256];
    int st = curvd_svc_export(srv, rq->tenant, rq->param[0], &s, &blob, &len, err, sizeof err);
    if (st == CURVD_SVC_NOMEM) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "%s", err);
    } else if (st != CURVD_STORE_OK) {
        curvd_reply_store_error(rp, rq, st, err);
    } else if (blob) { /* the snapshot with the steps logged after it */
        curvd_etag(rp->etag, sizeof rp->etag, (long long)s.step);
        curvd_reply_owned(rp, 200, "application/octet-stream", blob, len, curv_free);
    } else {
        curvd_etag(rp->etag, sizeof rp->etag, (long long)s.step);
        curvd_reply_owned(rp, 200, "application/octet-stream", s.state, s.state_len,
                          curvd_store_free);
        s.state = NULL; /* the reply owns it now */
    }
    curvd_session_clear(&s);
}

/* Commit the reconfigured session @e (from @before) with its new summary. */
static int reconfigure_durably(struct curvd_server *srv, const struct curvd_req *rq,
                               struct curvd_entry *e, const unsigned char *before,
                               size_t before_len, size_t *new_bytes, char *err, size_t errlen)
{
    json_t *meta = curvd_session_meta(e->opt);
    char *meta_text = json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(17));
    int st = curvd_svc_reconfigured(srv, rq->tenant, e, before, before_len, meta_text, new_bytes,
                                    err, errlen);
    free(meta_text);
    json_decref(meta);
    return st;
}

/* What a PATCH changes in the row alone (name, labels, idle TTL, history),
 * as the body gives it. */
struct row_edit {
    int ttl_given, has_ttl, set_name, set_labels, hist_given, has_hist;
    int64_t ttl, hist;
    const char *name;
    char *labels; /* owned */
};

/* Apply @x to session @id, then reply its row (200) or the store's problem. */
static void edit_row_and_reply(struct curvd_server *srv, const struct curvd_req *rq,
                               struct curvd_reply *rp, const char *id, int st,
                               const struct row_edit *x, char *err, size_t errlen)
{
    struct curvd_session s = {0};
    if (st == CURVD_STORE_OK && x->ttl_given)
        st = curvd_svc_set_idle_ttl(srv, rq->tenant, id, x->has_ttl, x->ttl, err, errlen);
    if (st == CURVD_STORE_OK && x->hist_given)
        st = curvd_svc_set_history(srv, rq->tenant, id, x->has_hist, x->hist, err, errlen);
    if (st == CURVD_STORE_OK && (x->set_name || x->set_labels))
        st = curvd_svc_set_name_labels(srv, rq->tenant, id, x->set_name, x->name, x->set_labels,
                                       x->labels, err, errlen);
    if (st == CURVD_STORE_OK)
        st = curvd_svc_get(srv, rq->tenant, id, 0, &s, err, errlen);
    if (st == CURVD_STORE_OK)
        reply_row(srv, rp, &s, 200);
    else if (st == CURVD_STORE_CONFLICT)
        curvd_reply_problem(rp, rq, CURVD_R_SESSION_CHANGED, NULL, 0,
                            "the session stepped meanwhile; read it again and retry");
    else
        curvd_reply_store_error(rp, rq, st, err);
    curvd_session_clear(&s);
}

/* The hyperparameters @cfg (JSON) on the taken session @e, committed with
 * the row edit @x; returns @e's memory charge now. */
static size_t patch_config(struct curvd_server *srv, const struct curvd_req *rq,
                           struct curvd_reply *rp, struct curvd_entry *e, const json_t *cfg,
                           const struct row_edit *x)
{
    size_t bytes = e->bytes; /* the new charge if the state changed size */
    char etag[32], err[256];
    const char *im = curvd_req_header(rq, "If-Match");
    curvd_etag(etag, sizeof etag, (long long)curv_opt_steps(e->opt));
    unsigned char *before = NULL;
    size_t before_len = 0;
    struct curvd_problem p;
    curvd_problem_init(&p);
    curv_config *c = NULL;
    curv_error cerr;
    curv_status cs;
    if (im && strcmp(im, "*") != 0 && strcmp(im, etag) != 0) {
        curvd_reply_problem(rp, rq, CURVD_R_PRECONDITION_FAILED, NULL, 0,
                            "the session is at ETag %s, not %s", etag, im);
    } else if (!(c = curvd_config_from_json(curv_opt_kind_of(e->opt), cfg, &p))) {
        curvd_reply_codec_problem(rp, rq, &p);
    } else if (curv_opt_save(e->opt, &before, &before_len, &cerr) != CURV_OK) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "%s", cerr.text);
    } else if ((cs = curv_opt_reconfigure(e->opt, c, &cerr)) != CURV_OK) {
        curvd_reply_problem(rp, rq, curvd_reason_of_status(CURVD_OP_RECONFIGURE, cs), NULL, 0, "%s",
                            cerr.text);
    } else {
        int st = reconfigure_durably(srv, rq, e, before, before_len, &bytes, err, sizeof err);
        edit_row_and_reply(srv, rq, rp, e->id, st, x, err, sizeof err);
    }
    curv_free(before);
    curv_config_free(c);
    return bytes;
}

/* The first member of a PATCH body that it may not hold, or NULL. */
static const char *patch_extra(json_t *body)
{
    const char *key;
    json_t *v;
    json_object_foreach(body, key, v)
    {
        if (strcmp(key, "config") && strcmp(key, "idle_ttl_s") && strcmp(key, "name") &&
            strcmp(key, "labels") && strcmp(key, "history_steps"))
            return key;
    }
    return NULL;
}

CURVD_HANDLER(curvd_h_session_patch)
{
    json_t *body = curvd_body_json(rq, rp);
    if (!body)
        return;
    char path[128], err[256];
    struct curvd_entry *e = NULL;
    struct row_edit x = {0};
    json_t *cfg = json_object_get(body, "config");
    const char *extra = patch_extra(body);
    if (extra) {
        snprintf(path, sizeof path, "/%.100s", extra);
        struct curvd_field_error fe = {path, "config, idle_ttl_s, history_steps, name or labels",
                                       extra};
        curvd_reply_problem(rp, rq, CURVD_R_UNKNOWN_MEMBER, &fe, 1,
                            "unknown member \"%.100s\" in the PATCH body", extra);
    } else if (json_object_size(body) == 0) {
        struct curvd_field_error fe = {"/config", "an object of hyperparameters", NULL};
        curvd_reply_problem(rp, rq, CURVD_R_INVALID_CONFIG, &fe, 1,
                            "the body may hold config, idle_ttl_s, history_steps, name and labels, "
                            "at least one");
    } else if (setting_from_json(rq, rp, body, &IDLE_TTL, &x.ttl_given, &x.has_ttl, &x.ttl) != 0 ||
               setting_from_json(rq, rp, body, &HISTORY, &x.hist_given, &x.has_hist, &x.hist) !=
                   0 ||
               name_labels_from_json(rq, rp, body, &x.set_name, &x.name, &x.set_labels,
                                     &x.labels) != 0) {
        /* answered */
    } else if (!cfg) { /* no optimizer to take, a row to update */
        edit_row_and_reply(srv, rq, rp, rq->param[0], CURVD_STORE_OK, &x, err, sizeof err);
    } else if (curvd_take_session(srv, rq, rp, &e) == 0) {
        curvd_svc_give_back(srv, e, patch_config(srv, rq, rp, e, cfg, &x));
    }
    free(x.labels);
    json_decref(body);
}
