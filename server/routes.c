/* SPDX-License-Identifier: MIT */
/* The one route table, and the matcher. Patterns are literal segments and
 * {name} captures of exactly one non-empty segment; the table order
 * decides between overlapping patterns. */
#include <string.h>

#include "handlers.h"

const struct curvd_route curvd_routes[] = {
    {"GET", "/healthz", curvd_h_health, "healthz"},
    {"GET", "/livez", curvd_h_health, "livez"},
    {"GET", "/readyz", curvd_h_ready, "readyz"},
    {"GET", "/metrics", curvd_h_metrics, "metrics"},
    {"GET", "/v1/version", curvd_h_version, "version"},
    {"POST", "/v1/sessions", curvd_h_session_create, "sessions.create"},
    {"GET", "/v1/sessions", curvd_h_session_list, "sessions.list"},
    {"POST", "/v1/sessions:import", curvd_h_session_import, "sessions.import"},
    {"GET", "/v1/sessions/{id}", curvd_h_session_get, "sessions.get"},
    {"PATCH", "/v1/sessions/{id}", curvd_h_session_patch, "sessions.patch"},
    {"DELETE", "/v1/sessions/{id}", curvd_h_session_delete, "sessions.delete"},
    {"GET", "/v1/sessions/{id}/state", curvd_h_session_export, "sessions.export"},
    {"POST", "/v1/sessions/{id}/steps", curvd_h_step, "steps.post"},
    {"POST", "/v1/sessions/{id}/steps/{n}/callbacks/{cb}", curvd_h_callback, "callbacks.post"},
};
const size_t curvd_route_count = sizeof curvd_routes / sizeof curvd_routes[0];

/* Match one pattern; captures point into @path (segments end at '/' or NUL,
 * so the handler sees them through curvd_req.param as bounded copies). */
static int match(const char *pat, const char *path, const char **params, size_t *n, char caps[][96])
{
    size_t k = 0;
    while (*pat && *path) {
        if (*pat == '{') {
            const char *end = strchr(path, '/');
            size_t len = end ? (size_t)(end - path) : strlen(path);
            if (len == 0 || len >= 96 || k == CURVD_MAX_PARAMS)
                return 0;
            memcpy(caps[k], path, len);
            caps[k][len] = '\0';
            params[k] = caps[k];
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

const struct curvd_route *curvd_route_match(const char *method, const char *path,
                                            const char **params, size_t *nparams, int *path_known)
{
    /* Captured segments live as long as the thread's current request. */
    static _Thread_local char caps[CURVD_MAX_PARAMS][96];
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
