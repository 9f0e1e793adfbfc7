/* SPDX-License-Identifier: MIT */
/* Sessions: create, open, describe, patch, delete; the layout read back
 * from the daemon's description so that steps use the daemon's order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvc_int.h"

/* The block table of a session description's "layout". */
static curvc_status read_layout(curvc_session *s, const json_t *info, curvc_error *err)
{
    const json_t *layout = json_object_get(info, "layout");
    const char *id = json_string_value(json_object_get(info, "id"));
    size_t n = json_array_size(layout);
    if (!id || strlen(id) >= sizeof s->id || n == 0)
        return curvc__fail(err, CURVC_E_PROTOCOL, "a session description without id or layout");
    snprintf(s->id, sizeof s->id, "%s", id);
    s->steps = (uint64_t)json_integer_value(json_object_get(info, "step"));
    s->blocks = calloc(n, sizeof *s->blocks);
    if (!s->blocks)
        return curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    s->n_blocks = n;
    size_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *b = json_array_get(layout, i), *shape = json_object_get(b, "shape");
        const char *name = json_string_value(json_object_get(b, "name"));
        const char *kind = json_string_value(json_object_get(b, "kind"));
        struct curvc_blk *k = &s->blocks[i];
        if (!name || !kind || json_array_size(shape) < 1)
            return curvc__fail(err, CURVC_E_PROTOCOL, "layout entry %zu is unreadable", i);
        snprintf(k->name, sizeof k->name, "%s", name);
        k->vector = strcmp(kind, "vector") == 0;
        size_t inner = 1;
        for (size_t d = 1; d < json_array_size(shape); d++)
            inner *= (size_t)json_integer_value(json_array_get(shape, d));
        k->rows = (size_t)json_integer_value(json_array_get(shape, 0));
        k->bias = !k->vector && json_is_true(json_object_get(b, "bias"));
        k->cols = k->vector ? 1 : inner + (size_t)k->bias;
        k->size = k->rows * k->cols;
        k->offset = offset;
        offset += k->size;
    }
    s->dim = offset;
    return CURVC_OK;
}

/* A session from a reply holding its description. */
static curvc_status session_from(curvc_client *c, const struct curvc_reply *r, curvc_session **out,
                                 curvc_error *err)
{
    json_t *info = NULL;
    curvc_status st = curvc__parse(r, &info, err);
    if (st != CURVC_OK)
        return st;
    curvc_session *s = calloc(1, sizeof *s);
    if (!s) {
        json_decref(info);
        return curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    }
    s->client = c;
    s->keep = 1; /* opened by id: not this client's to delete */
    st = read_layout(s, info, err);
    json_decref(info);
    s->info = st == CURVC_OK ? malloc(r->json_len + 1) : NULL;
    if (st == CURVC_OK && !s->info)
        st = curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    if (st != CURVC_OK) {
        curvc_session_free(s);
        return st;
    }
    memcpy(s->info, r->body.p, r->json_len);
    s->info[r->json_len] = '\0';
    *out = s;
    return CURVC_OK;
}

/* GET @path: the whole reply body (NUL-terminated after its @len bytes).
 * Ownership: the caller free()s *@body. */
static curvc_status get_body(curvc_client *c, const char *path, char **body, size_t *len,
                             curvc_error *err)
{
    struct curvc_reply r = {0};
    curvc_status st = curvc__request(c, "GET", path, NULL, 0, 0, 1, &r, err);
    if (st == CURVC_OK && !r.body.p) /* an empty body is still a text */
        curvc__buf_add(&r.body, "", 0);
    if (st == CURVC_OK && r.body.oom)
        st = curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    if (st == CURVC_OK) {
        *body = r.body.p;
        *len = r.body.len;
        r.body.p = NULL;
    }
    curvc__reply_clear(&r);
    return st;
}

static void layout_json(struct curvc_buf *b, const curvc_block *blocks, size_t n)
{
    curvc__buf_cat(b, "[");
    for (size_t i = 0; i < n; i++) {
        const curvc_block *k = &blocks[i];
        size_t nd = strcmp(k->kind, "conv2d") == 0 ? 4 : strcmp(k->kind, "dense") == 0 ? 2 : 1;
        curvc__buf_cat(b, i ? ",{\"name\":" : "{\"name\":");
        curvc__buf_str(b, k->name);
        curvc__buf_cat(b, ",\"kind\":");
        curvc__buf_str(b, k->kind);
        curvc__buf_cat(b, ",\"shape\":[");
        for (size_t d = 0; d < nd; d++)
            curvc__buf_printf(b, "%s%zu", d ? "," : "", k->shape[d]);
        curvc__buf_printf(b, "]%s}", nd > 1 && k->bias ? ",\"bias\":true" : "");
    }
    curvc__buf_cat(b, "]");
}

curvc_status curvc_session_create(curvc_client *c, const char *optimizer, const curvc_block *blocks,
                                  size_t n_blocks, const char *config_json, curvc_session **out,
                                  curvc_error *err)
{
    if (!c || !optimizer || !blocks || !n_blocks || !out)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_create: NULL or empty argument");
    for (size_t i = 0; i < n_blocks; i++)
        if (!blocks[i].name || !blocks[i].kind)
            return curvc__fail(err, CURVC_E_INVALID, "block %zu has no name or kind", i);
    struct curvc_buf b = {0};
    struct curvc_reply r = {0};
    curvc__buf_cat(&b, "{\"optimizer\":");
    curvc__buf_str(&b, optimizer);
    curvc__buf_cat(&b, ",\"layout\":");
    layout_json(&b, blocks, n_blocks);
    if (config_json)
        curvc__buf_printf(&b, ",\"config\":%s", config_json);
    curvc__buf_cat(&b, "}");
    curvc_status st = b.oom ? curvc__fail(err, CURVC_E_NOMEM, "out of memory")
                            : curvc__request(c, "POST", "/v1/sessions", b.p, b.len, 0, 0, &r, err);
    if (st == CURVC_OK)
        st = session_from(c, &r, out, err);
    if (st == CURVC_OK)
        (*out)->keep = 0; /* created here: closed means deleted */
    curvc__buf_clear(&b);
    curvc__reply_clear(&r);
    return st;
}

curvc_status curvc_session_open(curvc_client *c, const char *id, curvc_session **out,
                                curvc_error *err)
{
    if (!c || !id || !out)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_open: NULL argument");
    /* The id becomes part of a path: nothing there may change the route. */
    size_t n = strspn(id, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-");
    if (n == 0 || id[n] || n >= sizeof((curvc_session *)0)->id)
        return curvc__fail(err, CURVC_E_INVALID, "'%.64s' is not a session id", id);
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%.40s", id);
    struct curvc_reply r = {0};
    curvc_status st = curvc__request(c, "GET", path, NULL, 0, 0, 1, &r, err);
    if (st == CURVC_OK)
        st = session_from(c, &r, out, err);
    curvc__reply_clear(&r);
    return st;
}

void curvc_session_free(curvc_session *s)
{
    if (!s)
        return;
    free(s->blocks);
    free(s->report);
    free(s->info);
    free(s);
}

curvc_status curvc_session_delete(curvc_session *s, curvc_error *err)
{
    if (!s)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_delete: NULL session");
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s", s->id);
    struct curvc_reply r = {0};
    curvc_status st = curvc__request(s->client, "DELETE", path, NULL, 0, 0, 1, &r, err);
    curvc__reply_clear(&r);
    return st;
}

void curvc_session_set_keep(curvc_session *s, int keep)
{
    if (s)
        s->keep = keep != 0;
}

curvc_status curvc_session_close(curvc_session *s, curvc_error *err)
{
    if (!s)
        return CURVC_OK;
    curvc_status st = CURVC_OK;
    if (!s->keep) {
        curvc_error e;
        st = curvc_session_delete(s, &e);
        if (st == CURVC_E_PROBLEM && e.status == 404)
            st = CURVC_OK; /* deleted or expired already */
        if (st != CURVC_OK && err)
            *err = e;
    }
    curvc_session_free(s);
    return st;
}

/* PATCH one of the session's own settings: @value, or null when -1. */
static curvc_status patch_setting(curvc_session *s, const char *key, long long value,
                                  curvc_error *err)
{
    char path[96], body[96];
    snprintf(path, sizeof path, "/v1/sessions/%s", s->id);
    if (value < 0)
        snprintf(body, sizeof body, "{\"%s\":null}", key);
    else
        snprintf(body, sizeof body, "{\"%s\":%lld}", key, value);
    struct curvc_reply r = {0};
    curvc_status st = curvc__request(s->client, "PATCH", path, body, strlen(body), 0, 1, &r, err);
    curvc__reply_clear(&r);
    return st;
}

curvc_status curvc_session_set_idle_ttl(curvc_session *s, long long seconds, curvc_error *err)
{
    if (!s || seconds < -1)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_set_idle_ttl: invalid argument");
    return patch_setting(s, "idle_ttl_s", seconds, err);
}

curvc_status curvc_session_set_history(curvc_session *s, long long steps, curvc_error *err)
{
    if (!s || steps < -1)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_set_history: invalid argument");
    return patch_setting(s, "history_steps", steps, err);
}

curvc_status curvc_session_get_json(curvc_session *s, char **json, curvc_error *err)
{
    if (!s || !json)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_get_json: NULL argument");
    char path[96];
    size_t len;
    snprintf(path, sizeof path, "/v1/sessions/%s", s->id);
    return get_body(s->client, path, json, &len, err);
}

curvc_status curvc_session_steps_json(curvc_session *s, unsigned long long since, size_t page_size,
                                      char **json, curvc_error *err)
{
    if (!s || !json || page_size == 0)
        return curvc__fail(err, CURVC_E_INVALID,
                           "curvc_session_steps_json: NULL argument or page size 0");
    char path[160];
    size_t len;
    snprintf(path, sizeof path, "/v1/sessions/%s/steps?since=%llu&page_size=%zu", s->id, since,
             page_size);
    return get_body(s->client, path, json, &len, err);
}

curvc_status curvc_session_list(curvc_client *c, size_t page_size, const char *page_token,
                                char **json, curvc_error *err)
{
    if (!c || !json || page_size == 0)
        return curvc__fail(err, CURVC_E_INVALID,
                           "curvc_session_list: NULL argument or page size 0");
    /* Tokens are the daemon's hex digits: anything else would need escaping
     * in the query and cannot be a token anyway. */
    for (const char *t = page_token; t && *t; t++)
        if (!strchr("0123456789abcdefABCDEF", *t))
            return curvc__fail(err, CURVC_E_INVALID,
                               "curvc_session_list: page token '%.64s' is "
                               "not a next_page_token",
                               page_token);
    struct curvc_buf path = {0};
    curvc__buf_printf(&path, "/v1/sessions?page_size=%zu", page_size);
    if (page_token && *page_token)
        curvc__buf_printf(&path, "&page_token=%s", page_token);
    size_t len;
    curvc_status st = path.oom ? curvc__fail(err, CURVC_E_NOMEM, "out of memory")
                               : get_body(c, path.p, json, &len, err);
    curvc__buf_clear(&path);
    return st;
}

curvc_status curvc_session_export(curvc_session *s, unsigned char **blob, size_t *len,
                                  curvc_error *err)
{
    if (!s || !blob || !len)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_export: NULL argument");
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/state", s->id);
    char *body = NULL;
    curvc_status st = get_body(s->client, path, &body, len, err);
    if (st == CURVC_OK)
        *blob = (unsigned char *)body;
    return st;
}

curvc_status curvc_session_import(curvc_client *c, const void *blob, size_t len,
                                  curvc_session **out, curvc_error *err)
{
    if (!c || !blob || !len || !out)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_import: NULL or empty blob");
    struct curvc_reply r = {0};
    /* Not idempotent: a retry after the daemon got the blob would import it twice. */
    curvc_status st =
        curvc__request(c, "POST", "/v1/sessions:import", blob, len, CURVC__OCTETS, 0, &r, err);
    if (st == CURVC_OK)
        st = session_from(c, &r, out, err);
    if (st == CURVC_OK)
        (*out)->keep = 0;
    curvc__reply_clear(&r);
    return st;
}

curvc_status curvc_session_patch(curvc_session *s, const char *config_json, curvc_error *err)
{
    if (!s || !config_json)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_session_patch: NULL argument");
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s", s->id);
    struct curvc_buf b = {0};
    struct curvc_reply r = {0};
    curvc__buf_printf(&b, "{\"config\":%s}", config_json);
    curvc_status st = b.oom ? curvc__fail(err, CURVC_E_NOMEM, "out of memory")
                            : curvc__request(s->client, "PATCH", path, b.p, b.len, 0, 1, &r, err);
    curvc__buf_clear(&b);
    curvc__reply_clear(&r);
    return st;
}

const char *curvc_session_id(const curvc_session *s)
{
    return s ? s->id : NULL;
}

size_t curvc_session_dim(const curvc_session *s)
{
    return s ? s->dim : 0;
}

uint64_t curvc_session_steps(const curvc_session *s)
{
    return s ? s->steps : 0;
}

const char *curvc_session_info(const curvc_session *s)
{
    return s ? s->info : NULL;
}

const char *curvc_session_report(const curvc_session *s)
{
    return s && s->report ? s->report : "{}";
}
