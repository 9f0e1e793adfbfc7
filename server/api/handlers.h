/* SPDX-License-Identifier: MIT */
/* Every route handler; routes.c maps them to methods and paths. */
#ifndef CURVD_HANDLERS_H
#define CURVD_HANDLERS_H

#include "http/http.h"

#define CURVD_HANDLER(name)                                                                        \
    void name(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp)

#include <jansson.h>

#include "session/service.h"

/* h_common.c */
int curvd_is_ctype(const struct curvd_req *rq, const char *want);
/* The body as a JSON object, or NULL with a 415/400 problem in @rp. */
json_t *curvd_body_json(const struct curvd_req *rq, struct curvd_reply *rp);
void curvd_reply_store_error(struct curvd_reply *rp, const struct curvd_req *rq, int st,
                             const char *err);
/* The problem for a registry refusal (curvd_registry_begin): 409
 * SESSION_BUSY, 503 UNAVAILABLE, 409 SESSION_UNLOADABLE (with @why), or
 * 404 NOT_FOUND. */
void curvd_reply_registry_error(struct curvd_reply *rp, const struct curvd_req *rq,
                                enum curvd_reg_status rs, const char *why);

/* curvd_take_session - take session rq->param[0] (curvd_svc_take); 0 with
 * *@e, or -1 with its refusal replied. */
int curvd_take_session(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                       struct curvd_entry **e);

/* Query parameter @name as an integer in @min..@max (@def when absent):
 * 0, or -1 with a 400 INVALID_QUERY naming it in @rp. */
int curvd_query_int(const struct curvd_req *rq, struct curvd_reply *rp, const char *name,
                    long long min, long long max, long long def, long long *out);

/* h_ops.c */
CURVD_HANDLER(curvd_h_health);
CURVD_HANDLER(curvd_h_ready);
CURVD_HANDLER(curvd_h_version);
CURVD_HANDLER(curvd_h_metrics);

/* h_sessions.c */
CURVD_HANDLER(curvd_h_session_create);
CURVD_HANDLER(curvd_h_session_list);
CURVD_HANDLER(curvd_h_session_get);
CURVD_HANDLER(curvd_h_session_patch);
CURVD_HANDLER(curvd_h_session_delete);
CURVD_HANDLER(curvd_h_session_export);
CURVD_HANDLER(curvd_h_session_import);

/* h_steps.c */
CURVD_HANDLER(curvd_h_step);
CURVD_HANDLER(curvd_h_callback);

/* history.c */
CURVD_HANDLER(curvd_h_step_history);

/* ui.c: the dashboard's files */
CURVD_HANDLER(curvd_h_ui);
CURVD_HANDLER(curvd_h_ui_file);

#endif
