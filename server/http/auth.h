/* SPDX-License-Identifier: MIT */
/* Bearer tokens: a file of "token tenant" lines (blank lines and '#'
 * comments ignored). Each token belongs to one tenant; a tenant sees only
 * its own sessions. */
#ifndef CURVD_AUTH_H
#define CURVD_AUTH_H

#include <stddef.h>

struct curvd_auth;

/* A tenant's name fits in this many bytes with its NUL. */
#define CURVD_TENANT_CAP 64

/* Load @path; NULL with @err on a missing file or a malformed line. */
struct curvd_auth *curvd_auth_load(const char *path, char *err, size_t errlen);
void curvd_auth_free(struct curvd_auth *a);

/* curvd_auth_reload - read @path again (SIGHUP) and use its tokens from
 * the next request on; requests already admitted keep their tenant. On a
 * missing file or a malformed line, -1 with @err and the tokens in use
 * stay; 0 and their number in *@tokens (may be NULL). Thread-safe. */
int curvd_auth_reload(struct curvd_auth *a, const char *path, size_t *tokens, char *err,
                      size_t errlen);

/* The tenant of an "Authorization" header value, copied into @buf (cap
 * bytes; CURVD_TENANT_CAP holds any) and returned, or NULL when it is
 * absent, not "Bearer <token>", or an unknown token. Compares in constant
 * time. Thread-safe. */
const char *curvd_auth_tenant(struct curvd_auth *a, const char *authorization, char *buf,
                              size_t cap);

#endif
