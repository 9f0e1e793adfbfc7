/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/sessions/{id}/steps. The order matters for exactly-once:
 * take the session (one step at a time), check the step number (the
 * latest one is a replay of its stored reply), decode, step, encode, and
 * commit state and reply in one transaction before answering. If the
 * commit fails the in-memory optimizer is ahead of the database, so it is
 * dropped and the next request reloads the last durable state.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "handlers.h"
#include "metrics.h"
#include "step_decode.h"
#include "store.h"

#include <sqlite3.h>

static void reply_codec_problem(struct curvd_reply *rp, const struct curvd_req *rq,
                                const struct curvd_problem *p)
{
    struct curvd_field_error fe = {p->path, p->expected[0] ? p->expected : NULL,
                                   p->got[0] ? p->got : NULL};
    curvd_reply_problem(rp, rq, p->http_status, p->reason, &fe, p->path[0] ? 1 : 0, "%s",
                        p->detail);
}

/* The reply body: {"step", "update": [...], "report": {...}}. */
static int encode_reply(const curv_opt *o, const struct curvd_step_in *in, const double *g,
                        const double *delta, struct curvd_out *out, struct curvd_problem *p)
{
    const curv_layout *l = curv_opt_layout(o);
    size_t dim = curv_layout_dim(l);
    double gn = 0, un = 0;
    for (size_t i = 0; i < dim; i++)
        gn += g[i] * g[i], un += delta[i] * delta[i];
    json_t *upd =
        curvd_flat_to_json(l, delta, in->dtype, (enum curvd_encoding)in->encoding, out, p);
    if (!upd)
        return -1;
    json_t *root =
        json_pack("{s:I, s:o, s:{s:s, s:f, s:f}}", "step", (json_int_t)in->step, "update", upd,
                  "report", "optimizer", curv_opt_kind_name(curv_opt_kind_of(o)), "grad_norm",
                  sqrt(gn), "update_norm", sqrt(un));
    int rc = curvd_out_render(out, root, p);
    json_decref(root);
    return rc;
}

/* Content type of a stored reply; binary replies carry their JSON length. */
static void reply_type(int binary, size_t json_len, char *buf, size_t cap)
{
    if (binary)
        snprintf(buf, cap, "application/octet-stream; json-header=%zu", json_len);
    else
        snprintf(buf, cap, "application/json");
}

static void reply_stored(struct curvd_reply *rp, struct curvd_step_response *r)
{
    const char *jh = strstr(r->content_type, "json-header=");
    rp->json_header_len = jh ? (size_t)strtoull(jh + 12, NULL, 10) : 0;
    curvd_reply_owned(rp, 200, jh ? "application/octet-stream" : "application/json", r->body,
                      r->body_len, sqlite3_free);
    r->body = NULL;
}

static void reply_step_error(struct curvd_reply *rp, const struct curvd_req *rq, curv_status cs,
                             const curv_error *cerr)
{
    int status = cs == CURV_E_NONFINITE                       ? 422
                 : cs == CURV_E_NOMEM                         ? 503
                 : cs == CURV_E_SHAPE || cs == CURV_E_INVALID ? 400
                 : cs == CURV_E_STATE                         ? 409
                                                              : 500;
    const char *reason = cs == CURV_E_NONFINITE ? "NON_FINITE"
                         : cs == CURV_E_NOMEM   ? "OUT_OF_MEMORY"
                         : cs == CURV_E_SHAPE   ? "SHAPE_MISMATCH"
                         : cs == CURV_E_INVALID ? "INVALID_INPUT"
                         : cs == CURV_E_STATE   ? "CALLBACK_PENDING"
                                                : "NUMERICAL_FAILURE";
    curvd_reply_problem(rp, rq, status, reason, NULL, 0, "%s", cerr->text);
}

/* The latest step posted again: its stored reply, byte for byte. */
static void replay(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                   const struct curvd_entry *e, long long cur)
{
    struct curvd_step_response r = {0};
    char err[256];
    int st = curvd_store_get_response(srv->store, rq->tenant, e->id, &r, err, sizeof err);
    if (st == CURVD_STORE_OK) {
        reply_stored(rp, &r);
    } else if (st == CURVD_STORE_NOT_FOUND) { /* imported at this step: no reply to replay */
        char want[32], got[32];
        snprintf(want, sizeof want, "%lld", cur + 1);
        snprintf(got, sizeof got, "%lld", cur);
        struct curvd_field_error fe = {"/step", want, got};
        curvd_reply_problem(rp, rq, 409, "STEP_OUT_OF_ORDER", &fe, 1,
                            "step %lld has no stored reply (the session was imported at it): "
                            "post step %lld",
                            cur, cur + 1);
    } else {
        curvd_reply_store_error(rp, rq, st, err);
    }
    curvd_step_response_clear(&r);
}

/* Commit the stepped state with its reply, then hand the reply over. */
static void commit_and_reply(struct curvd_server *srv, const struct curvd_req *rq,
                             struct curvd_reply *rp, struct curvd_entry *e,
                             const struct curvd_step_in *in, struct curvd_out *out,
                             size_t *new_bytes)
{
    unsigned char *body = curvd_out_join(out), *blob = NULL;
    size_t len = 0;
    char ctype[96], err[256];
    reply_type(in->encoding == CURVD_ENC_BINARY, out->json_len, ctype, sizeof ctype);
    int st = CURVD_STORE_ERROR;
    int64_t current = 0;
    if (body && curv_opt_save(e->opt, &blob, &len, NULL) == CURV_OK) {
        struct curvd_step_commit c = {.step = in->step,
                                      .state = blob,
                                      .state_len = len,
                                      .content_type = ctype,
                                      .response = body,
                                      .response_len = out->total_len};
        st = curvd_store_commit_step(srv->store, rq->tenant, e->id, &c, &current, err, sizeof err);
    } else {
        snprintf(err, sizeof err, "out of memory encoding the reply");
    }
    curv_free(blob);
    if (st != CURVD_STORE_OK) {
        free(body);
        curvd_registry_drop(srv->reg, e->id); /* memory is ahead of the database */
        if (st == CURVD_STORE_CONFLICT && current == in->step)
            /* This copy was stale (reloaded while another request committed
             * this very step, then evicted): the step is applied, so the
             * stored reply is the answer. */
            replay(srv, rq, rp, e, (long long)current);
        else if (st == CURVD_STORE_CONFLICT)
            curvd_reply_problem(rp, rq, 409, "STEP_OUT_OF_ORDER", NULL, 0,
                                "the session advanced elsewhere (now at step %lld)",
                                (long long)current);
        else
            curvd_reply_store_error(rp, rq, st, err);
        return;
    }
    *new_bytes = len;
    curvd_metrics_step(srv->metrics, curv_opt_kind_of(e->opt));
    rp->json_header_len = in->encoding == CURVD_ENC_BINARY ? out->json_len : 0;
    curvd_reply_bytes(
        rp, 200, in->encoding == CURVD_ENC_BINARY ? "application/octet-stream" : "application/json",
        (char *)body, out->total_len);
    snprintf(rp->etag, sizeof rp->etag, "\"%lld\"", in->step);
}

static void run_step(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                     struct curvd_entry *e, size_t *new_bytes)
{
    struct curvd_step_in in = {0};
    struct curvd_binary bin = {0};
    struct curvd_problem p;
    struct curvd_out out;
    curvd_problem_init(&p);
    curvd_out_init(&out);
    const curv_layout *l = curv_opt_layout(e->opt);
    size_t dim = curv_layout_dim(l);
    long long cur = (long long)curv_opt_steps(e->opt);
    double *g = calloc(dim, sizeof *g), *theta = calloc(dim, sizeof *theta);
    double *delta = calloc(dim, sizeof *delta);
    int binary = 0;
    if (!g || !theta || !delta) {
        curvd_reply_problem(rp, rq, 503, "OUT_OF_MEMORY", NULL, 0, "out of memory");
    } else if (curvd_step_parse_head(rq->body, rq->body_len,
                                     curvd_req_header(rq, "Inference-Header-Content-Length"),
                                     rq->content_type, &in, &bin, &binary, &p) != 0) {
        reply_codec_problem(rp, rq, &p);
    } else if (in.step == cur && cur > 0) {
        replay(srv, rq, rp, e, cur);
    } else if (in.step != cur + 1) {
        char want[32], got[32];
        snprintf(want, sizeof want, "%lld", cur + 1);
        snprintf(got, sizeof got, "%lld", in.step);
        struct curvd_field_error fe = {"/step", want, got};
        curvd_reply_problem(rp, rq, 409, "STEP_OUT_OF_ORDER", &fe, 1,
                            "the session has completed %lld steps: post step %lld", cur, cur + 1);
    } else if (curvd_step_decode_tensors(l, &in, &bin, binary, g, theta, &p) != 0) {
        reply_codec_problem(rp, rq, &p);
    } else {
        curv_step_input si = {
            .grad = g, .params = in.nparams ? theta : NULL, .len = dim, .dtype = CURV_F64};
        curv_request req;
        curv_error cerr;
        curv_status cs = curv_opt_step(e->opt, &si, delta, &req, &cerr);
        if (cs == CURV_NEED_INPUT) {
            curvd_registry_drop(srv->reg, e->id);
            curvd_reply_problem(rp, rq, 500, "CALLBACKS_UNSUPPORTED", NULL, 0,
                                "this optimizer asked for a callback, which this daemon version "
                                "cannot serve yet");
        } else if (cs != CURV_OK) {
            reply_step_error(rp, rq, cs, &cerr);
        } else if (encode_reply(e->opt, &in, g, delta, &out, &p) != 0) {
            curvd_registry_drop(srv->reg, e->id);
            reply_codec_problem(rp, rq, &p);
        } else {
            commit_and_reply(srv, rq, rp, e, &in, &out, new_bytes);
        }
    }
    curvd_out_clear(&out);
    curvd_step_in_clear(&in);
    free(g);
    free(theta);
    free(delta);
}

CURVD_HANDLER(curvd_h_step)
{
    struct curvd_entry *e = NULL;
    enum curvd_reg_status rs = curvd_valid_id(rq->param[0])
                                   ? curvd_registry_begin(srv->reg, rq->param[0], rq->tenant, &e)
                                   : CURVD_REG_NOT_FOUND;
    if (rs == CURVD_REG_BUSY)
        curvd_reply_problem(rp, rq, 409, "SESSION_BUSY", NULL, 0,
                            "another step of this session is in progress");
    else if (rs == CURVD_REG_ERROR)
        curvd_reply_problem(rp, rq, 503, "UNAVAILABLE", NULL, 0, "cannot load the session");
    else if (rs != CURVD_REG_OK)
        curvd_reply_problem(rp, rq, 404, "NOT_FOUND", NULL, 0, "no such session");
    if (rs != CURVD_REG_OK)
        return;
    size_t bytes = e->bytes; /* the new charge if the state changed size */
    run_step(srv, rq, rp, e, &bytes);
    curvd_registry_end(srv->reg, e, bytes);
}

/* POST .../steps/{n}/callbacks/{cb}: no optimizer of this version asks the
 * trainer for anything, so there is never a callback to answer; the route
 * exists so that clients meet the contract's errors, not a 404. */
CURVD_HANDLER(curvd_h_callback)
{
    struct curvd_entry *e = NULL;
    enum curvd_reg_status rs = curvd_valid_id(rq->param[0])
                                   ? curvd_registry_begin(srv->reg, rq->param[0], rq->tenant, &e)
                                   : CURVD_REG_NOT_FOUND;
    if (rs == CURVD_REG_OK) {
        curvd_reply_problem(rp, rq, 409, "NO_CALLBACK_PENDING", NULL, 0,
                            "step %s of this session has no pending callback '%s'", rq->param[1],
                            rq->param[2]);
        curvd_registry_end(srv->reg, e, e->bytes);
    } else if (rs == CURVD_REG_BUSY) {
        curvd_reply_problem(rp, rq, 409, "SESSION_BUSY", NULL, 0,
                            "another request of this session is in progress");
    } else {
        curvd_reply_problem(rp, rq, rs == CURVD_REG_ERROR ? 503 : 404,
                            rs == CURVD_REG_ERROR ? "UNAVAILABLE" : "NOT_FOUND", NULL, 0,
                            "no such session");
    }
}
