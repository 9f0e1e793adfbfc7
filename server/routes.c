/* SPDX-License-Identifier: MIT */
/* The one route table, and the matcher. Patterns are literal segments and
 * {name} captures of exactly one non-empty segment; the table order
 * decides between overlapping patterns. */
#include <string.h>

#include "handlers.h"

const struct curvd_route curvd_routes[] = {
    {"GET", "/healthz", curvd_h_health, "healthz", 0},
    {"GET", "/livez", curvd_h_health, "livez", 0},
    {"GET", "/readyz", curvd_h_ready, "readyz", 0},
    {"GET", "/metrics", curvd_h_metrics, "metrics", 0},
    {"GET", "/v1/version", curvd_h_version, "version", 0},
    {"POST", "/v1/sessions", curvd_h_session_create, "sessions.create", 1},
    {"GET", "/v1/sessions", curvd_h_session_list, "sessions.list", 0},
    {"POST", "/v1/sessions:import", curvd_h_session_import, "sessions.import", 1},
    {"GET", "/v1/sessions/{id}", curvd_h_session_get, "sessions.get", 0},
    {"PATCH", "/v1/sessions/{id}", curvd_h_session_patch, "sessions.patch", 1},
    {"DELETE", "/v1/sessions/{id}", curvd_h_session_delete, "sessions.delete", 0},
    {"GET", "/v1/sessions/{id}/state", curvd_h_session_export, "sessions.export", 1},
    {"POST", "/v1/sessions/{id}/steps", curvd_h_step, "steps.post", 1},
    {"POST", "/v1/sessions/{id}/steps/{n}/callbacks/{cb}", curvd_h_callback, "callbacks.post", 1},
};
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
