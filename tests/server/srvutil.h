/* SPDX-License-Identifier: MIT */
/* Server test helpers: an in-process daemon on an ephemeral loopback port
 * with its temporary database, a small libcurl client, and the test layout
 * with its gradients, step bodies and updates shared by the end-to-end,
 * concurrency and crash suites. */
#ifndef CURVD_SRVUTIL_H
#define CURVD_SRVUTIL_H

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>

#include "curv.h"
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

/* ---- The daemon and its files ---- */

/* Start the HTTP layer of @srv on 127.0.0.1:0 (cfg defaults filled in
 * where zero) and return its base URL "http://127.0.0.1:PORT". */
void su_start(struct curvd_server *srv, char *base, size_t cap);
void su_stop(struct curvd_server *srv);

/* Open the daemon (store and registry) on @srv's cfg as the caller set it,
 * then su_start(); su_daemon_stop() undoes both. */
void su_daemon_start(struct curvd_server *srv, char *base, size_t cap);
void su_daemon_stop(struct curvd_server *srv);

/* Make a fresh directory "@root/curvd-@tag-XXXXXX" (@root NULL: /tmp) into
 * @dir, and name the database "@dir/curvd.db" in @db. */
void su_tmpdir(char *dir, size_t dir_cap, const char *root, const char *tag, char *db,
               size_t db_cap);
/* rm -rf @dir; system()'s status (0 when removed). */
int su_rmtree(const char *dir);

/* ---- The client ---- */

/* One request. @body may be NULL; @ctype NULL means application/json.
 * @chunked sends the body with Transfer-Encoding: chunked (no length).
 * A failed transfer fails the test. */
void su_request(const char *method, const char *url, const void *body, size_t len,
                const char *ctype, int chunked, struct su_resp *out);
/* The same with extra request header lines (NULL-terminated list). */
void su_request_h(const char *method, const char *url, const void *body, size_t len,
                  const char *ctype, int chunked, const char *const *headers, struct su_resp *out);
void su_resp_free(struct su_resp *r);

/* A JSON request (@body NUL-terminated text, or NULL) that never calls
 * cmocka, so that any thread may send it and a daemon killed mid-request
 * is not a failure: the transfer's result. @out->body is allocated either
 * way (su_resp_free it); @out->status is 0 when nothing was answered. */
CURLcode su_try_request(const char *method, const char *url, const char *body, struct su_resp *out);

/* Send "Authorization: Bearer @token" with later requests (NULL: none). */
void su_set_token(const char *token);
/* Give later requests @seconds to complete (30 unless set). */
void su_set_timeout(long seconds);

/* @method @base@path with the JSON text @body (NULL: none); the status must
 * be @want. Returns the parsed reply (NULL when empty); the response goes
 * to @raw when not NULL (su_resp_free it), else it is freed. */
json_t *su_call(const char *base, const char *method, const char *path, const char *body, long want,
                struct su_resp *raw);

/* POST @base/v1/sessions: an @optimizer session on su_layout_json() with
 * @config (stolen; NULL: none); the status must be @want. On 201 the new id
 * goes to @id (else ""). Returns the parsed reply; @raw as in su_call(). */
json_t *su_create(const char *base, const char *optimizer, json_t *config, long want, char id[33],
                  struct su_resp *raw);

/* The step session @id is at (GET, which must answer 200). */
long su_session_step(const char *base, const char *id);

/* GET the exported state of session @id, which must answer 200 (with the
 * Content-Type @want_ctype unless NULL): the blob (free() it), @len bytes. */
unsigned char *su_export_state(const char *base, const char *id, size_t *len,
                               const char *want_ctype);

/* ---- The test layout: fc, dense 2 x (4 + bias) = 10 at 0; gain, vector 1 at 10 ---- */

#define SU_D 11

/* The layout as the API takes it (a new reference). */
json_t *su_layout_json(void);
/* The same layout built in-process by libcurv, asserting (caller frees). */
curv_layout *su_layout_new(void);

/* The gradient of step @t: g[i] = sin(0.37 (t SU_D + i) + @phase) (1 + i % 3);
 * suites and sessions tell theirs apart by @phase. */
void su_grad(long t, double phase, double g[SU_D]);

/* A tensor object {"name", "shape" (stolen), "datatype": "FP64", "data"}. */
json_t *su_tensor(const char *name, json_t *shape, const double *v, size_t n);
/* The body of step @t with the flat gradient @g: "fc" (shape [2,5]) and
 * "gain" (shape [1]), in that order, or gain first when @gain_first. */
json_t *su_step_json(long t, const double *g, int gain_first);
/* su_step_json() as compact text, numbers to 17 digits (free() it). */
char *su_step_text(long t, const double *g, int gain_first);

/* The update of a 200 step reply @body for step @t, in layout order; 0, or
 * -1 when the step differs or the update is malformed. No cmocka inside. */
int su_update_of(const char *body, long t, double u[SU_D]);
/* Step the in-process reference @ref with @g: the daemon's update @u must
 * be the same bit for bit, else fail with "@what, element I: ...". */
void su_check_update(curv_opt *ref, const double *g, const double *u, const char *what);

#endif
