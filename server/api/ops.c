/* SPDX-License-Identifier: MIT */
/* Health, readiness and the version/optimizer catalogue. */
#include <jansson.h>
#include <string.h>

#include "api/handlers.h"
#include "curv.h"
#include "http/metrics.h"
#include "http/pool.h"
#include "store/store.h"

CURVD_HANDLER(curvd_h_health)
{
    (void)srv, (void)rq;
    curvd_reply_json(rp, 200, json_pack("{s:s}", "status", "ok"));
}

CURVD_HANDLER(curvd_h_metrics)
{
    size_t n = 0, bytes = 0, len = 0;
    long long disk = -1;
    int64_t count = 0;
    char err[128];
    if (srv->reg)
        curvd_registry_stats(srv->reg, &n, &bytes);
    if (srv->store && curvd_store_count(srv->store, NULL, &count, err, sizeof err) == 0)
        disk = (long long)count;
    struct curvd_bg_stats bg = {0};
    if (srv->reg)
        curvd_registry_bg_stats(srv->reg, &bg);
    struct curvd_pool_stats ps;
    struct curvd_pool *pool = curvd_http_pool(srv);
    if (pool)
        curvd_pool_stats(pool, &ps);
    const struct curvd_metrics_view v = {.heavy_inflight = curvd_http_inflight(srv),
                                         .sessions_mem = n,
                                         .bytes_mem = bytes,
                                         .sessions_disk = disk,
                                         .pool = pool ? &ps : NULL,
                                         .sqlite_version = curvd_store_engine_version(),
                                         .refresh_handed = bg.handed,
                                         .refresh_run = bg.run,
                                         .refresh_taken_back = bg.taken_back,
                                         .refresh_waited = bg.waited};
    char *text = srv->metrics ? curvd_metrics_render(srv->metrics, &v, &len) : NULL;
    if (!text) {
        curvd_reply_problem(rp, rq, CURVD_R_UNAVAILABLE, NULL, 0, "metrics are not available");
        return;
    }
    curvd_reply_bytes(rp, 200, "text/plain; version=0.0.4", text, len);
}

CURVD_HANDLER(curvd_h_ready)
{
    if (atomic_load(&srv->draining)) {
        curvd_reply_problem(rp, rq, CURVD_R_DRAINING, NULL, 0, "the daemon is shutting down");
        return;
    }
    if (!srv->store) {
        curvd_reply_problem(rp, rq, CURVD_R_NO_DATABASE, NULL, 0, "the database is not open");
        return;
    }
    char why[1024];
    if (curvd_store_health(srv->store, why, sizeof why) != CURVD_STORE_OK) {
        curvd_reply_problem(rp, rq, CURVD_R_NO_DATABASE, NULL, 0,
                            "storage failed and no write has succeeded since: %s", why);
        return;
    }
    curvd_reply_json(rp, 200, json_pack("{s:s}", "status", "ready"));
}

static const char *type_name(curv_param_type t)
{
    static const char *const names[] = {"real", "int", "bool", "enum", "list"};
    return (unsigned)t < 5 ? names[t] : "real";
}

/* One parameter as the catalogue shows it (defaults typed as the config
 * accepts them: numbers, booleans, strings). */
static json_t *param_json(const curv_param_info *p)
{
    json_t *o =
        json_pack("{s:s, s:s, s:s}", "name", p->name, "type", type_name(p->type), "doc", p->doc);
    switch (p->type) {
    case CURV_PARAM_REAL:
    case CURV_PARAM_INT:
        json_object_set_new(o, "default",
                            p->type == CURV_PARAM_INT ? json_integer((json_int_t)p->def)
                                                      : json_real(p->def));
        json_object_set_new(o, "min", json_real(p->min));
        json_object_set_new(o, "max", json_real(p->max));
        break;
    case CURV_PARAM_BOOL:
        json_object_set_new(o, "default", json_boolean(p->def != 0));
        break;
    case CURV_PARAM_ENUM: {
        json_object_set_new(o, "default", json_string(p->def_str));
        json_t *ch = json_array();
        const char *s = p->choices;
        while (s && *s) {
            const char *bar = strchr(s, '|');
            size_t len = bar ? (size_t)(bar - s) : strlen(s);
            json_array_append_new(ch, json_stringn(s, len));
            s = bar ? bar + 1 : NULL;
        }
        json_object_set_new(o, "choices", ch);
        break;
    }
    case CURV_PARAM_LIST:
        json_object_set_new(o, "default", json_string(p->def_str));
        break;
    }
    return o;
}

CURVD_HANDLER(curvd_h_version)
{
    (void)srv, (void)rq;
    json_t *opts = json_array();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        json_t *params = json_array();
        curv_param_info info;
        for (size_t i = 0; curv_opt_param_info((curv_opt_kind)k, i, &info) == CURV_OK; i++)
            json_array_append_new(params, param_json(&info));
        unsigned in = curv_opt_kind_inputs((curv_opt_kind)k);
        json_t *inputs = json_array();
        if (in & CURV_INPUT_LAYERS)
            json_array_append_new(inputs, json_string("layers"));
        if (in & CURV_INPUT_GRAD_SQ)
            json_array_append_new(inputs, json_string("grad_sq"));
        json_array_append_new(opts, json_pack("{s:s, s:o, s:o, s:b}", "name",
                                              curv_opt_kind_name((curv_opt_kind)k), "params",
                                              params, "inputs", inputs, "callbacks",
                                              (in & CURV_INPUT_REQUESTS) != 0));
    }
    curvd_reply_json(rp, 200,
                     json_pack("{s:s, s:s, s:o}", "curvd", CURVD_VERSION, "libcurv", curv_version(),
                               "optimizers", opts));
}
