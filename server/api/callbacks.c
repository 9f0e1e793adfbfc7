/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/sessions/{id}/steps/{n}/callbacks/{cb}: the trainer's answer
 * to a callback of the step in progress. The exchange lives in memory
 * (struct curvd_pending): only the final update is committed, so after a
 * restart the callback is unknown and the trainer posts the step again.
 * A retried answer gets the reply it got the first time (the stored final
 * reply once the step is complete, else the kept 202) when it is the same
 * answer (its decoded values, wire/request_digest.h); another answer to
 * that callback is 422 STEP_MISMATCH. An id handed out by another run of
 * the daemon (wire/callback_id.h) is 409 NO_CALLBACK_PENDING whatever the
 * session awaits now: its exchange was forgotten, and the seq in it may
 * be asked again by the step posted again.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/steps.h"
#include "http/metrics.h"
#include "store/store.h"
#include "wire/callback_id.h"
#include "wire/request_digest.h"
#include "wire/step_decode.h"

static void no_callback(const struct curvd_req *rq, struct curvd_reply *rp, long long cur,
                        const char *n)
{
    char want[32];
    snprintf(want, sizeof want, "%lld", cur + 1);
    struct curvd_field_error fe = {"step", want, n};
    curvd_reply_problem(rp, rq, CURVD_R_NO_CALLBACK_PENDING, &fe, 1,
                        "step %s is not in progress (the session has completed %lld steps; a "
                        "restart of the daemon or a step posted again abandons an unfinished "
                        "step): post step %lld",
                        n, cur, cur + 1);
}

/* Callback @cb is another run's (wire/callback_id.h). */
static void earlier_run(const struct curvd_req *rq, struct curvd_reply *rp,
                        const struct curvd_entry *e, long long cur, const char *cb)
{
    char expected[64], tail[128];
    snprintf(expected, sizeof expected, "an id ending -%s", curvd_run_tag());
    if (curv_opt_pending(e->opt)) {
        char id[CURVD_CALLBACK_ID_CAP];
        curvd_callback_id(id, sizeof id, e->pend.req.seq);
        snprintf(tail, sizeof tail, "step %lld awaits callback %s", e->pend.step, id);
    } else {
        snprintf(tail, sizeof tail, "the session has completed %lld steps: post step %lld", cur,
                 cur + 1);
    }
    struct curvd_field_error fe = {"callback", expected, cb};
    curvd_reply_problem(rp, rq, CURVD_R_NO_CALLBACK_PENDING, &fe, 1,
                        "callback %s is from an earlier run of the daemon: its step was "
                        "abandoned by the restart and this answer was not applied; %s",
                        cb, tail);
}

/* Decode this request's answer to callback @req into @values (@req->n_values
 * doubles) and its digest; 0, or -1 with the problem replied. */
static int decode_answer(const struct curvd_req *rq, struct curvd_reply *rp,
                         const struct curvd_entry *e, const curv_request *req, double *values,
                         char digest[CURVD_DIGEST_TEXT])
{
    struct curvd_problem p;
    curvd_problem_init(&p);
    if (curvd_answer_decode(rq->body, rq->body_len,
                            curvd_req_header(rq, "Inference-Header-Content-Length"),
                            rq->content_type, curv_opt_layout(e->opt), req, values, &p) != 0) {
        curvd_reply_codec_problem(rp, rq, &p);
        return -1;
    }
    curvd_answer_digest(e->pend.step, req, values, digest);
    return 0;
}

/* A retried answer to callback pd->answered_seq: 1 when it is the answer
 * first given, else 0 with the problem replied. */
static int same_answer(const struct curvd_req *rq, struct curvd_reply *rp,
                       const struct curvd_entry *e)
{
    const struct curvd_pending *pd = &e->pend;
    double *values = malloc((pd->answered.n_values ? pd->answered.n_values : 1) * sizeof *values);
    char digest[CURVD_DIGEST_TEXT], detail[240], id[CURVD_CALLBACK_ID_CAP];
    int same = 0;
    if (!values)
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
    else if (decode_answer(rq, rp, e, &pd->answered, values, digest) != 0)
        ; /* replied */
    else if (!(same = strcmp(digest, pd->answer_digest) == 0)) {
        curvd_callback_id(id, sizeof id, pd->answered_seq);
        snprintf(detail, sizeof detail,
                 "callback %s of step %lld was answered with other values, and this answer "
                 "was not applied: %s",
                 id, pd->step,
                 curv_opt_pending(e->opt) ? "answer the callback the step awaits now"
                                          : "the step is complete, post the next one");
        curvd_reply_mismatch(rp, rq, pd->answer_digest, digest, detail);
    }
    free(values);
    return same;
}

static void answer(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                   struct curvd_entry *e)
{
    struct curvd_pending *pd = &e->pend;
    size_t dim = curv_layout_dim(curv_opt_layout(e->opt));
    double *values = malloc((pd->req.n_values ? pd->req.n_values : 1) * sizeof *values);
    double *delta = malloc(dim * sizeof *delta);
    char digest[CURVD_DIGEST_TEXT];
    curvd_timing_lap(rp, CURVD_T_COUNT);
    if (!values || !delta) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
    } else if (decode_answer(rq, rp, e, &pd->req, values, digest) == 0) {
        curv_request asked = pd->req; /* curvd_step_outcome puts the next one there */
        asked.vectors = NULL;
        curv_response resp = {.seq = pd->req.seq, .n_values = pd->req.n_values, .values = values};
        curv_request next;
        curv_error cerr;
        curvd_timing_lap(rp, CURVD_T_DECODE);
        curv_status cs = curv_opt_resume(e->opt, &resp, CURV_F64, delta, &next, &cerr);
        curvd_timing_lap(rp, CURVD_T_STEP);
        if (cs == CURV_OK || cs == CURV_NEED_INPUT) {
            pd->answered_seq = resp.seq;
            pd->answered = asked;
            memcpy(pd->answer_digest, digest, sizeof digest);
            pd->callbacks++;
            (void)curvd_record_answer(&pd->rec, &resp); /* failed: the step is a snapshot */
            curvd_metrics_callback(srv->metrics, curv_opt_kind_of(e->opt));
        }
        curvd_step_outcome(srv, rq, rp, e, cs, &cerr, &next, delta);
    }
    free(values);
    free(delta);
}

/* A path segment that is a decimal number and nothing else. */
static int segment_number(const char *s, unsigned long long *out)
{
    if (*s < '0' || *s > '9')
        return 0;
    char *end;
    errno = 0;
    *out = strtoull(s, &end, 10);
    return *end == '\0' && errno == 0;
}

CURVD_HANDLER(curvd_h_callback)
{
    struct curvd_entry *e = NULL;
    if (curvd_take_session(srv, rq, rp, &e) != 0)
        return;
    struct curvd_pending *pd = &e->pend;
    long long cur = (long long)curv_opt_steps(e->opt);
    unsigned long long un;
    uint64_t cb = 0;
    /* A step segment that is not a number is no step in progress (-1). */
    long long n = segment_number(rq->param[1], &un) && un <= LLONG_MAX ? (long long)un : -1;
    enum curvd_callback_id_form form = curvd_callback_id_parse(rq->param[2], &cb);
    int cb_ok = form == CURVD_CB_THIS_RUN;
    /* answered_seq 0: the step asked for nothing, so no callback of it was answered. */
    if (form == CURVD_CB_OTHER_RUN) {
        earlier_run(rq, rp, e, cur, rq->param[2]);
    } else if (n == cur && cur > 0 && pd->step == n && cb_ok && pd->answered_seq &&
               cb == pd->answered_seq) {
        if (same_answer(rq, rp, e)) /* the final answer retried: the update */
            curvd_step_replay(srv, rq, rp, e, cur, NULL);
    } else if (!curv_opt_pending(e->opt) || n != pd->step) {
        no_callback(rq, rp, cur, rq->param[1]);
    } else if (!cb_ok || cb != pd->req.seq) {
        int retried = cb_ok && cb == pd->answered_seq && pd->last;
        char *copy = retried ? malloc(pd->last_len) : NULL;
        if (retried && !copy) {
            curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
        } else if (retried && !same_answer(rq, rp, e)) {
            free(copy);    /* replied */
        } else if (copy) { /* a retried answer: the reply it got the first time */
            memcpy(copy, pd->last, pd->last_len);
            curvd_reply_tensors(rp, 202, copy, pd->last_len, pd->last_json_len, NULL);
            curvd_callback_url(e, rp->location, sizeof rp->location);
        } else {
            char want[CURVD_CALLBACK_ID_CAP];
            curvd_callback_id(want, sizeof want, pd->req.seq);
            struct curvd_field_error fe = {"callback", want, rq->param[2]};
            curvd_reply_problem(rp, rq, CURVD_R_CALLBACK_OUT_OF_ORDER, &fe, 1,
                                "step %lld waits for the answer to callback %s", pd->step, want);
        }
    } else {
        answer(srv, rq, rp, e);
    }
    curvd_step_end(srv, rp, e);
}
