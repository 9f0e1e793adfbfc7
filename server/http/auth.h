/* SPDX-License-Identifier: MIT */
/* Bearer tokens: a file of "token tenant" lines (blank lines and '#'
 * comments ignored). Each token belongs to one tenant; a tenant sees only
 * its own sessions. */
#ifndef CURVD_AUTH_H
#define CURVD_AUTH_H

#include <stddef.h>

struct curvd_auth;

/* Load @path; NULL with @err on a missing file or a malformed line. */
struct curvd_auth *curvd_auth_load(const char *path, char *err, size_t errlen);
void curvd_auth_free(struct curvd_auth *a);

/* The tenant of an "Authorization" header value, or NULL when it is absent,
 * not "Bearer <token>", or an unknown token. Compares in constant time. */
const char *curvd_auth_tenant(const struct curvd_auth *a, const char *authorization);

#endif
