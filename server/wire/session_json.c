/* SPDX-License-Identifier: MIT */
#include "wire/session_json.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *const KINDS[] = {"dense", "conv2d", "vector"};

/* Shape of one block: dense [n_out, n_in]; conv2d [c_out, c_in, kh, kw]; vector [n]. */
static int read_shape(const json_t *shape, size_t want, size_t *dims)
{
    if (!json_is_array(shape) || json_array_size(shape) != want)
        return -1;
    for (size_t i = 0; i < want; i++) {
        const json_t *d = json_array_get(shape, i);
        double v = json_number_value(d);
        if (!json_is_number(d) || v < 1 || v != floor(v) || v > 1e15)
            return -1;
        dims[i] = (size_t)v;
    }
    return 0;
}

static const size_t RANK[] = {2, 4, 1};
static const char *const RANK_TEXT[] = {"[n_out, n_in] of integers >= 1",
                                        "[c_out, c_in, kh, kw] of integers >= 1",
                                        "[n] with an integer n >= 1"};

/* 0 when every member of block @b is one of the schema's, else -1 with
 * UNKNOWN_MEMBER naming the first that is not (/layout/@i/member). */
static int block_members(const json_t *b, size_t i, struct curvd_problem *p)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)b, key, v)
    {
        if (strcmp(key, "name") && strcmp(key, "kind") && strcmp(key, "shape") &&
            strcmp(key, "bias")) {
            char path[128];
            snprintf(path, sizeof path, "/layout/%zu/%.80s", i, key);
            return curvd_problem_set(p, CURVD_R_UNKNOWN_MEMBER, path,
                                     "one of name, kind, shape, bias", key,
                                     "layout block %zu: unknown member \"%.80s\"", i, key);
        }
    }
    return 0;
}

curv_layout *curvd_layout_from_json(const json_t *arr, struct curvd_problem *p)
{
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        curvd_problem_set(p, CURVD_R_INVALID_LAYOUT, "/layout", "a non-empty array of blocks", NULL,
                          "'layout' must be a non-empty array of parameter blocks");
        return NULL;
    }
    curv_layout *l = curv_layout_new();
    int failed = 0;
    for (size_t i = 0; l && !failed && i < json_array_size(arr); i++) {
        const json_t *b = json_array_get(arr, i);
        if (json_is_object(b) && block_members(b, i, p) != 0) {
            failed = 1;
            break;
        }
        const char *name = json_string_value(json_object_get(b, "name"));
        const char *kind = json_string_value(json_object_get(b, "kind"));
        const json_t *bias = json_object_get(b, "bias");
        size_t k = 0, dims[4];
        while (kind && k < 3 && strcmp(kind, KINDS[k]) != 0)
            k++;
        const char *field = !json_is_object(b)                                       ? ""
                            : !name                                                  ? "/name"
                            : k == 3 || !kind                                        ? "/kind"
                            : bias && !json_is_boolean(bias)                         ? "/bias"
                            : read_shape(json_object_get(b, "shape"), RANK[k], dims) ? "/shape"
                                                                                     : NULL;
        if (!field && k == 2 && json_is_true(bias))
            field = "/bias";
        curv_error err;
        curv_status st = CURV_OK;
        if (!field) {
            int hb = json_is_true(bias);
            st = k == 0 ? curv_layout_add_dense(l, name, dims[0], dims[1], hb, &err)
                 : k == 1
                     ? curv_layout_add_conv2d(l, name, dims[0], dims[1], dims[2], dims[3], hb, &err)
                     : curv_layout_add_vector(l, name, dims[0], &err);
        }
        if (!field && st == CURV_OK)
            continue;
        char path[64];
        const char *expected = NULL;
        snprintf(path, sizeof path, "/layout/%zu%s", i, field ? field : "");
        if (field && strcmp(field, "/shape") == 0)
            expected = RANK_TEXT[k];
        else if (field && strcmp(field, "/kind") == 0)
            expected = "dense, conv2d or vector";
        else if (field && strcmp(field, "/bias") == 0)
            expected = "a boolean (vector blocks have no bias)";
        else if (field && strcmp(field, "/name") == 0)
            expected = "a string of 1..63 bytes";
        if (field)
            curvd_problem_set(p, CURVD_R_INVALID_LAYOUT, path, expected, NULL,
                              "layout block %zu: invalid %s", i, *field ? field + 1 : "block");
        else
            curvd_problem_set(p, CURVD_R_INVALID_LAYOUT, path, NULL, NULL, "layout block %zu: %s",
                              i, err.text);
        failed = 1;
    }
    if (!l) {
        curvd_problem_set(p, CURVD_R_OUT_OF_MEMORY, "", NULL, NULL, "out of memory");
    } else if (failed) {
        curv_layout_free(l);
        l = NULL;
    }
    return l;
}

/* The JSON type a hyperparameter of @type takes: booleans are not numbers
 * (true is not 1.0), nor numbers booleans. */
static const char *json_type_of(curv_param_type type)
{
    switch (type) {
    case CURV_PARAM_BOOL:
        return "a boolean";
    case CURV_PARAM_INT:
        return "an integer";
    case CURV_PARAM_REAL:
        return "a number";
    default:
        return "a string";
    }
}

static int json_fits(const json_t *v, curv_param_type type)
{
    double x = json_number_value(v); /* bodies are read with JSON_DECODE_INT_AS_REAL */
    return type == CURV_PARAM_BOOL   ? json_is_boolean(v)
           : type == CURV_PARAM_INT  ? json_is_number(v) && x == floor(x)
           : type == CURV_PARAM_REAL ? json_is_number(v)
                                     : json_is_string(v);
}

/* Parameter @key of @kind, or 0 when it has none such (the library then
 * names the unknown key). */
static int param_of(curv_opt_kind kind, const char *key, curv_param_info *out)
{
    for (size_t i = 0; curv_opt_param_info(kind, i, out) == CURV_OK; i++)
        if (strcmp(out->name, key) == 0)
            return 1;
    return 0;
}

curv_config *curvd_config_from_json(curv_opt_kind kind, const json_t *obj, struct curvd_problem *p)
{
    if (obj && !json_is_object(obj)) {
        curvd_problem_set(p, CURVD_R_INVALID_CONFIG, "/config", "an object of hyperparameters",
                          NULL, "'config' must be an object");
        return NULL;
    }
    curv_config *c = curv_config_new();
    if (!c) {
        curvd_problem_set(p, CURVD_R_OUT_OF_MEMORY, "", NULL, NULL, "out of memory");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        curv_param_info info;
        int known = param_of(kind, key, &info);
        curv_status st = CURV_E_INVALID;
        if (known && !json_fits(v, info.type))
            st = CURV_E_INVALID;
        else if (json_is_boolean(v))
            st = curv_config_set_num(c, key, json_is_true(v) ? 1 : 0, NULL);
        else if (json_is_number(v))
            st = curv_config_set_num(c, key, json_number_value(v), NULL);
        else if (json_is_string(v))
            st = curv_config_set_str(c, key, json_string_value(v), NULL);
        if (st != CURV_OK) {
            char path[128];
            const char *want = known ? json_type_of(info.type) : "a number, boolean or string";
            snprintf(path, sizeof path, "/config/%.100s", key);
            curvd_problem_set(p, CURVD_R_INVALID_CONFIG, path, want, NULL,
                              "config '%.100s' must be %s", key, want);
            curv_config_free(c);
            return NULL;
        }
    }
    return c;
}

static json_t *param_value(const curv_opt *o, const curv_param_info *p)
{
    char s[512];
    double v = 0;
    curv_opt_get_param(o, p->name, &v);
    switch (p->type) {
    case CURV_PARAM_BOOL:
        return json_boolean(v != 0);
    case CURV_PARAM_INT:
        return json_integer((json_int_t)v);
    case CURV_PARAM_REAL:
        return json_real(v);
    default:
        curv_opt_get_param_str(o, p->name, s, sizeof s);
        return json_string(s);
    }
}

json_t *curvd_session_meta(const curv_opt *o)
{
    curv_opt_kind kind = curv_opt_kind_of(o);
    json_t *config = json_object(), *layout = json_array();
    curv_param_info p;
    for (size_t i = 0; curv_opt_param_info(kind, i, &p) == CURV_OK; i++)
        json_object_set_new(config, p.name, param_value(o, &p));
    const curv_layout *l = curv_opt_layout(o);
    for (size_t i = 0; i < curv_layout_nblocks(l); i++) {
        curv_block_info b;
        curv_layout_block(l, i, &b);
        json_t *shape = b.kind == CURV_BLOCK_DENSE
                            ? json_pack("[I,I]", (json_int_t)b.n_out, (json_int_t)b.n_in)
                        : b.kind == CURV_BLOCK_CONV2D
                            ? json_pack("[I,I,I,I]", (json_int_t)b.n_out, (json_int_t)b.c_in,
                                        (json_int_t)b.kh, (json_int_t)b.kw)
                            : json_pack("[I]", (json_int_t)b.n_out);
        json_array_append_new(layout, json_pack("{s:s, s:s, s:o, s:b}", "name", b.name, "kind",
                                                KINDS[b.kind], "shape", shape, "bias", b.has_bias));
    }
    return json_pack("{s:s, s:o, s:o, s:I}", "optimizer", curv_opt_kind_name(kind), "config",
                     config, "layout", layout, "dim", (json_int_t)curv_layout_dim(l));
}

curv_config *curvd_opt_config(const curv_opt *o)
{
    curv_opt_kind kind = curv_opt_kind_of(o);
    curv_config *c = curv_config_new();
    curv_param_info p;
    curv_status st = c ? CURV_OK : CURV_E_NOMEM;
    for (size_t i = 0; st == CURV_OK && curv_opt_param_info(kind, i, &p) == CURV_OK; i++) {
        char s[512];
        double v = 0;
        /* Numbers exactly as resolved; enums and lists as their text. */
        if (p.type == CURV_PARAM_ENUM || p.type == CURV_PARAM_LIST)
            st = curv_opt_get_param_str(o, p.name, s, sizeof s) == CURV_OK
                     ? curv_config_set_str(c, p.name, s, NULL)
                     : CURV_E_RANGE;
        else
            st = curv_opt_get_param(o, p.name, &v) == CURV_OK
                     ? curv_config_set_num(c, p.name, v, NULL)
                     : CURV_E_INVALID;
    }
    if (st != CURV_OK) {
        curv_config_free(c);
        return NULL;
    }
    return c;
}

void curvd_rfc3339(char *buf, size_t cap, long long ms)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char day[40];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03lldZ", day, ms % 1000);
}

static json_t *rfc3339(long long ms)
{
    char buf[64];
    curvd_rfc3339(buf, sizeof buf, ms);
    return json_string(buf);
}

/* {"step", "report"} of the latest step, or null when there is no report
 * to show (none stored yet, or unreadable). */
static json_t *last_step_json(long long last_step, const char *report)
{
    json_t *r = report && last_step > 0 ? json_loads(report, 0, NULL) : NULL;
    if (!json_is_object(r)) {
        json_decref(r);
        return json_null();
    }
    return json_pack("{s:I, s:o}", "step", (json_int_t)last_step, "report", r);
}

json_t *curvd_session_json(const char *id, const char *meta, long long step, long long created_ms,
                           long long updated_ms, long long last_step, const char *report)
{
    json_t *s = meta ? json_loads(meta, 0, NULL) : NULL;
    if (!s)
        s = json_object();
    json_object_set_new(s, "id", json_string(id));
    json_object_set_new(s, "step", json_integer(step));
    json_object_set_new(s, "pending_callback", json_null());
    json_object_set_new(s, "created_at", rfc3339(created_ms));
    json_object_set_new(s, "updated_at", rfc3339(updated_ms));
    json_object_set_new(s, "last_step", last_step_json(last_step, report));
    return s;
}
