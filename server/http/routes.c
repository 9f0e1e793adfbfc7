/* SPDX-License-Identifier: MIT */
/* The one route table, and the matcher. Patterns are literal segments and
 * {name} captures of exactly one non-empty segment; the table order
 * decides between overlapping patterns. */
#include <string.h>

#include "api/handlers.h"

/* .auth: a bearer token is needed when the daemon has a token file;
 * .heavy: runs on the worker pool (bounded by --max-queue), off the
 * connection threads. */
/* clang-format off */
const struct curvd_route curvd_routes[] = {
    {.method = "GET", .pattern = "/healthz",
     .handler = curvd_h_health, .name = "healthz"},
    {.method = "GET", .pattern = "/livez",
     .handler = curvd_h_health, .name = "livez"},
    {.method = "GET", .pattern = "/readyz",
     .handler = curvd_h_ready, .name = "readyz"},
    {.method = "GET", .pattern = "/metrics",
     .handler = curvd_h_metrics, .name = "metrics"},
    {.method = "GET", .pattern = "/v1/version",
     .handler = curvd_h_version, .name = "version", .auth = 1},
    {.method = "POST", .pattern = "/v1/sessions",
     .handler = curvd_h_session_create, .name = "sessions.create", .auth = 1, .heavy = 1},
    {.method = "GET", .pattern = "/v1/sessions",
     .handler = curvd_h_session_list, .name = "sessions.list", .auth = 1},
    {.method = "POST", .pattern = "/v1/sessions:import",
     .handler = curvd_h_session_import, .name = "sessions.import", .auth = 1, .heavy = 1},
    {.method = "GET", .pattern = "/v1/sessions/{id}",
     .handler = curvd_h_session_get, .name = "sessions.get", .auth = 1},
    {.method = "PATCH", .pattern = "/v1/sessions/{id}",
     .handler = curvd_h_session_patch, .name = "sessions.patch", .auth = 1, .heavy = 1},
    {.method = "DELETE", .pattern = "/v1/sessions/{id}",
     .handler = curvd_h_session_delete, .name = "sessions.delete", .auth = 1},
    {.method = "GET", .pattern = "/v1/sessions/{id}/state",
     .handler = curvd_h_session_export, .name = "sessions.export", .auth = 1, .heavy = 1},
    {.method = "GET", .pattern = "/v1/sessions/{id}/steps",
     .handler = curvd_h_step_history, .name = "steps.list", .auth = 1},
    {.method = "POST", .pattern = "/v1/sessions/{id}/steps",
     .handler = curvd_h_step, .name = "steps.post", .auth = 1, .heavy = 1},
    {.method = "POST", .pattern = "/v1/sessions/{id}/steps/{n}/callbacks/{cb}",
     .handler = curvd_h_callback, .name = "callbacks.post", .auth = 1, .heavy = 1},
    /* The dashboard's files: static, no token (its API calls carry one). */
    {.method = "GET", .pattern = "/ui",
     .handler = curvd_h_ui, .name = "ui"},
    {.method = "GET", .pattern = "/ui/{file}",
     .handler = curvd_h_ui_file, .name = "ui.file"},
};
/* clang-format on */
const size_t curvd_route_count = sizeof curvd_routes / sizeof curvd_routes[0];

/* Match one pattern, copying captured segments into @caps. */
static int match(const char *pat, const char *path, const char **params, size_t *n,
                 struct curvd_captures *caps)
{
    size_t k = 0;
    while (*pat && *path) {
        if (*pat == '{') {
            const char *end = strchr(path, '/');
            size_t len = end ? (size_t)(end - path) : strlen(path);
            if (len == 0 || len >= CURVD_CAP_LEN || k == CURVD_MAX_PARAMS)
                return 0;
            memcpy(caps->seg[k], path, len);
            caps->seg[k][len] = '\0';
            params[k] = caps->seg[k];
            k++;
            path += len;
            pat = strchr(pat, '}') + 1;
            continue;
        }
        if (*pat != *path)
            return 0;
        pat++, path++;
    }
    if (*pat || *path)
        return 0;
    *n = k;
    return 1;
}

void curvd_route_allowed(const char *path, char *buf, size_t cap)
{
    struct curvd_captures caps;
    const char *params[CURVD_MAX_PARAMS];
    size_t used = 0, n;
    buf[0] = '\0';
    for (size_t i = 0; i < curvd_route_count && used < cap; i++)
        if (match(curvd_routes[i].pattern, path, params, &n, &caps))
            used += (size_t)snprintf(buf + used, cap - used, "%s%s", used ? ", " : "",
                                     curvd_routes[i].method);
}

const struct curvd_route *curvd_route_match(const char *method, const char *path,
                                            struct curvd_captures *caps, const char **params,
                                            size_t *nparams, int *path_known)
{
    *path_known = 0;
    for (size_t i = 0; i < curvd_route_count; i++) {
        size_t n = 0;
        if (!match(curvd_routes[i].pattern, path, params, &n, caps))
            continue;
        if (strcmp(curvd_routes[i].method, method) == 0) {
            *nparams = n;
            return &curvd_routes[i];
        }
        *path_known = 1;
    }
    return NULL;
}
