/* SPDX-License-Identifier: MIT */
/* Server test helpers: an in-process daemon on an ephemeral loopback port
 * and a small libcurl client. */
#ifndef CURVD_SRVUTIL_H
#define CURVD_SRVUTIL_H

#include <stddef.h>

#include "server.h"

struct su_resp {
    long status;
    char *body; /* NUL-terminated, owned */
    size_t len;
    char content_type[128];
    char location[256];
    char etag[64];
    size_t json_header_len; /* Inference-Header-Content-Length, 0 if absent */
};

/* Start the HTTP layer of @srv on 127.0.0.1:0 (cfg defaults filled in
 * where zero) and return its base URL "http://127.0.0.1:PORT". */
void su_start(struct curvd_server *srv, char *base, size_t cap);
void su_stop(struct curvd_server *srv);

/* One request. @body may be NULL; @ctype NULL means application/json.
 * @chunked sends the body with Transfer-Encoding: chunked (no length). */
void su_request(const char *method, const char *url, const void *body, size_t len,
                const char *ctype, int chunked, struct su_resp *out);
/* The same with extra request header lines (NULL-terminated list). */
void su_request_h(const char *method, const char *url, const void *body, size_t len,
                  const char *ctype, int chunked, const char *const *headers, struct su_resp *out);
void su_resp_free(struct su_resp *r);

/* Send "Authorization: Bearer @token" with later requests (NULL: none). */
void su_set_token(const char *token);

#endif
