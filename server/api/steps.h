/* SPDX-License-Identifier: MIT */
/* What the step and callback handlers share: a step's outcome (final
 * update, next callback, or error) becomes the reply. */
#ifndef CURVD_STEPS_H
#define CURVD_STEPS_H

#include "api/handlers.h"
#include "wire/codec.h"
#include "wire/out.h"

/* A codec problem as problem+json. */
void curvd_reply_codec_problem(struct curvd_reply *rp, const struct curvd_req *rq,
                               const struct curvd_problem *p);

/*
 * curvd_step_outcome - reply to what curv_opt_step/resume returned for the
 * step e->pend.step: CURV_OK hands state and reply to the group commit and
 * defers the reply (rp->deferred) until it is durable: then 200 with the
 * update (@delta, doubles) and the report, or the commit's problem.
 * CURV_NEED_INPUT is 202 with the callback @req; an error is its problem
 * (the optimizer is unchanged).
 */
void curvd_step_outcome(struct curvd_server *srv, const struct curvd_req *rq,
                        struct curvd_reply *rp, struct curvd_entry *e, curv_status cs,
                        const curv_error *cerr, const curv_request *req, const double *delta);

/* curvd_callback_path - the url of callback @seq (of this run: its id is
 * wire/callback_id.h's) of step @step of session @id. */
void curvd_callback_path(char *buf, size_t cap, const char *id, long long step, uint64_t seq);

/* curvd_callback_url - the url of the callback @e awaits (e->pend.req). */
void curvd_callback_url(const struct curvd_entry *e, char *buf, size_t cap);

/* ---- Reply bodies (step_reply.c) ---------------------------------------- */

/* curvd_step_report - the step's report as compact JSON text (release with
 * curvd_mem_free), or NULL when out of memory: the optimizer's name, the
 * @loss the trainer sent (NULL: none) unless the kind reports its own, and
 * every finite figure of curv_opt_report (the library computes them all),
 * an enum hyperparameter's by the name of its value ("mode": "adaptive"). */
char *curvd_step_report(const curv_opt *o, const double *loss);

/* curvd_encode_update - the 200 body {"step", "update": [...], "report"}
 * into @out (finished), @report being curvd_step_report()'s text.
 * Return 0; -1 with @p (see curvd_out_tensors(), curvd_out_finish()). */
int curvd_encode_update(struct curvd_out *out, long long step, const curv_layout *l,
                        const double *delta, int dtype, enum curvd_encoding enc, const char *report,
                        struct curvd_problem *p);

/* curvd_encode_callback - the 202 body {"step", "callback": {"id", "kind",
 * "url", "answer_values", "vectors": [[...], ...]}} of the callback @e
 * awaits (e->pend.req) into @out (finished). Return 0; -1 with @p. */
int curvd_encode_callback(struct curvd_out *out, const struct curvd_entry *e,
                          struct curvd_problem *p);

/* curvd_stored_type - the content type under which a 200 reply is stored:
 * its update's little-endian @dtype bytes, to be rendered in @enc. */
void curvd_stored_type(char *buf, size_t cap, int dtype, enum curvd_encoding enc);

/* curvd_step_replay - the stored reply of completed step @cur, the same
 * bytes as when it was first sent, when @digest (the re-posted request's,
 * wire/request_digest.h) is the one stored with it, or when either is
 * absent (NULL: the caller compared; none stored: a step committed before
 * digests were); else 422 STEP_MISMATCH. */
void curvd_step_replay(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                       const struct curvd_entry *e, long long cur, const char *digest);

/* curvd_reply_mismatch - 422 STEP_MISMATCH with @detail: the request
 * re-posted is not the one first answered (digests @stored and @got). */
void curvd_reply_mismatch(struct curvd_reply *rp, const struct curvd_req *rq, const char *stored,
                          const char *got, const char *detail);

/* curvd_step_end - give session @e back, unless the reply is deferred:
 * then the commit gives it back, with its new size, once durable. */
void curvd_step_end(struct curvd_server *srv, const struct curvd_reply *rp, struct curvd_entry *e);

#endif
