/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/sessions/{id}/steps. The order matters for exactly-once:
 * take the session (one step at a time), check the step number (the
 * latest one is a replay of its stored reply), decode, step, encode, and
 * commit state and reply in one transaction before answering (through
 * the session service, which keeps memory from running ahead of the
 * database).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/handlers.h"
#include "api/steps.h"
#include "http/mem.h"
#include "http/metrics.h"
#include "session/leases.h"
#include "store/store.h"
#include "wire/codec.h"
#include "wire/json_scan.h"
#include "wire/out.h"
#include "wire/request_digest.h"
#include "wire/step_decode.h"
#include "wire/tensor_bytes.h"

_Static_assert(sizeof(((struct curvd_pending *)0)->request_digest) == CURVD_DIGEST_TEXT &&
                   sizeof(((struct curvd_pending *)0)->answer_digest) == CURVD_DIGEST_TEXT,
               "struct curvd_pending holds digests of wire/request_digest.h");

void curvd_reply_codec_problem(struct curvd_reply *rp, const struct curvd_req *rq,
                               const struct curvd_problem *p)
{
    struct curvd_field_error fe = {p->path, p->expected[0] ? p->expected : NULL,
                                   p->got[0] ? p->got : NULL};
    curvd_reply_problem(rp, rq, p->row, &fe, p->path[0] ? 1 : 0, "%s", p->detail);
}

/* A step waiting for its commit: the service's commit (first), and what
 * the reply needs once it is durable. */
struct step_job {
    struct curvd_svc_commit s; /* first: the service hands back &s */
    const struct curvd_req *rq;
    struct curvd_reply *rp;
    unsigned char *body, *blob, *wire;
    curv_state_part *parts;
    size_t body_len, json_len;
    char *report;
    char ctype[96];
    char timing[192];
    char update_digest[CURVD_DIGEST_TEXT];
};

_Static_assert(CURVD_T_COUNT <= CURVD_PEND_PHASES, "curvd_pending.spent holds every phase");

/* The time the step's exchanges spent so far: its earlier ones (kept in
 * @pd) and this one's (@rp), as a JSON object of ms. The commit's own
 * time is not known yet when the row is written. */
static void step_timing(char *buf, size_t cap, const struct curvd_pending *pd,
                        const struct curvd_reply *rp)
{
    static const char *const names[] = {"decode", "step", "encode", "save"};
    size_t n = (size_t)snprintf(buf, cap, "{");
    for (int i = 0; i < CURVD_T_COMMIT && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s\"%s\":%.3f", i ? "," : "", names[i],
                              (pd->spent[i] + rp->timing[i]) * 1e3);
    if (n < cap)
        snprintf(buf + n, cap - n, "}");
}

/* The input of a step whose statistics are folded after its reply
 * (curvd_svc_commit.fold_input). */
static void fold_input_free(void *input)
{
    curvd_step_in_clear(input);
    free(input);
}

/* Move the step's decoded input (e->pend.input) into @j when the
 * optimizer still borrows its statistics (curv/exec.h: curv_opt_settle
 * must come first): the fold then runs after the reply. Without memory
 * to hold it the fold runs now. */
static void take_fold_input(struct step_job *j, struct curvd_entry *e)
{
    struct curvd_step_in *in = e->pend.input, *held = NULL;
    e->pend.input = NULL;
    if (!in || !curv_opt_stats_pending(e->opt))
        return;
    if (!(held = malloc(sizeof *held))) {
        curv_opt_settle(e->opt);
        return;
    }
    *held = *in;
    memset(in, 0, sizeof *in); /* its handler's clear frees nothing now */
    j->s.fold_input = held;
    j->s.fold_free = fold_input_free;
}

static void step_job_free(struct step_job *j)
{
    curvd_mem_free(j->body);
    free(j->wire);
    curv_free(j->blob);
    curv_free(j->parts);
    curvd_mem_free(j->report);
    free(j);
}

/* On the store's commit thread, the session still held: the reply to the
 * step's commit (the service has recorded it, or dropped the copy). */
static void step_committed(struct curvd_svc_commit *s, int st, long long current, const char *err)
{
    struct step_job *j = (struct step_job *)(void *)s;
    struct curvd_server *srv = s->srv;
    const struct curvd_req *rq = j->rq;
    struct curvd_reply *rp = j->rp;
    struct curvd_entry *e = s->e;
    int binary = e->pend.encoding == CURVD_ENC_BINARY;
    long long step = e->pend.step;
    curvd_timing_lap(rp, CURVD_T_COMMIT);
    curvd_record_clear(&e->pend.rec); /* committed, or never to be */
    if (st == CURVD_STORE_OK) {
        curvd_metrics_step(srv->metrics, curv_opt_kind_of(e->opt));
        curvd_reply_tensors(rp, 200, j->body, j->body_len, binary ? j->json_len : 0,
                            curvd_mem_free);
        j->body = NULL;
        curvd_etag(rp->etag, sizeof rp->etag, step);
    } else if (st == CURVD_STORE_CONFLICT && current == step) {
        /* This copy was stale (reloaded while another request committed
         * this very step, then evicted): the step is applied, so the
         * stored reply is the answer. */
        curvd_step_replay(srv, rq, rp, e, current, e->pend.request_digest);
    } else if (st == CURVD_STORE_CONFLICT) {
        curvd_reply_problem(rp, rq, CURVD_R_STEP_OUT_OF_ORDER, NULL, 0,
                            "the session advanced elsewhere (now at step %lld)", current);
    } else {
        curvd_reply_store_error(rp, rq, st, err);
    }
}

/* Then, the session given back: send the reply. */
static void step_released(struct curvd_svc_commit *s)
{
    struct step_job *j = (struct step_job *)(void *)s;
    struct curvd_server *srv = s->srv;
    const struct curvd_req *rq = j->rq;
    step_job_free(j);
    curvd_http_finish(srv, rq);
}

/* The update as stored (curvd_stored_type()): a binary reply's tail is
 * exactly that, other encodings get it written out. */
static int stored_update(struct step_job *j, const struct curvd_entry *e, const double *delta,
                         const void **bytes, size_t *len)
{
    const struct curvd_pending *pd = &e->pend;
    size_t dim = curv_layout_dim(curv_opt_layout(e->opt));
    *len = dim * curvd_dtype_size(pd->dtype);
    if (pd->encoding == CURVD_ENC_BINARY) {
        *bytes = j->body + j->json_len;
        return 0;
    }
    if (!(j->wire = malloc(*len ? *len : 1)))
        return -1;
    curvd_le_encode(delta, dim, pd->dtype, j->wire);
    *bytes = j->wire;
    return 0;
}

/* The step in the form curvd_svc_durable_form chooses: the stepped state
 * (the parts that changed since the session's snapshot), or a row of the
 * step log (its record and its update's digest), maybe with a snapshot
 * after the reply: 0, or -1 out of memory. */
static int step_durable_form(struct step_job *j, const struct curvd_entry *e, const double *delta,
                             double seconds)
{
    const struct curvd_pending *pd = &e->pend;
    const enum curvd_durable_form form = curvd_svc_durable_form(j->s.srv, e, &pd->rec, seconds);
    j->s.c.written_ahead = pd->written_ahead;
    if (form == CURVD_FORM_SNAPSHOT)
        return curv_opt_save_parts(e->opt, &j->blob, &j->s.len, &j->parts, &j->s.n_parts, NULL) ==
                       CURV_OK
                   ? 0
                   : -1;
    j->s.snapshot_after = form == CURVD_FORM_LOG_THEN_SNAPSHOT;
    curvd_update_digest(delta, curv_layout_dim(curv_opt_layout(e->opt)), j->update_digest);
    j->s.c.record = pd->rec.buf;
    j->s.c.record_len = pd->rec.len;
    /* Answers appended since make it another record than the one written,
     * and the commit writes into its own epoch's file. */
    j->s.c.record_ahead = pd->ahead_ok && pd->callbacks == 0 &&
                          pd->ahead_gen == curvd_store_log_gen(curvd_lease_epoch(j->s.srv, e));
    j->s.c.record_offset = pd->ahead_offset;
    j->s.c.update_digest = j->update_digest;
    j->s.seconds = seconds;
    j->s.len = e->bytes;
    return 0;
}

/* Make the step durable (step_durable_form) and hand it with its reply
 * to the group commit; the reply is deferred until the commit is durable
 * (step_committed). */
static void commit_and_reply(struct curvd_server *srv, const struct curvd_req *rq,
                             struct curvd_reply *rp, struct curvd_entry *e, struct curvd_out *out,
                             char **report, const double *delta)
{
    const struct curvd_pending *pd = &e->pend;
    struct step_job *j = calloc(1, sizeof *j);
    const void *wire = NULL;
    size_t wire_len = 0;
    if (j) {
        j->body_len = out->len;
        j->json_len = out->json_len;
        j->body = curvd_out_take(out);
    }
    curvd_timing_lap(rp, CURVD_T_ENCODE);
    if (j)
        j->s.srv = srv;
    if (!j || !j->body || stored_update(j, e, delta, &wire, &wire_len) != 0 ||
        step_durable_form(j, e, delta, pd->spent[CURVD_T_STEP] + rp->timing[CURVD_T_STEP]) != 0) {
        if (j)
            step_job_free(j);
        curvd_svc_abandon(srv, e);
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0,
                            "out of memory saving the step");
        return;
    }
    curvd_timing_lap(rp, CURVD_T_SAVE);
    curvd_stored_type(j->ctype, sizeof j->ctype, pd->dtype, (enum curvd_encoding)pd->encoding);
    j->report = *report;
    *report = NULL;
    step_timing(j->timing, sizeof j->timing, pd, rp);
    j->s.c.step = pd->step;
    j->s.c.content_type = j->ctype;
    j->s.c.response = wire;
    j->s.c.response_len = wire_len;
    j->s.c.report = j->report;
    j->s.c.request_digest = pd->request_digest;
    j->s.c.timing = j->timing;
    j->s.c.callbacks = pd->callbacks;
    j->s.e = e;
    j->s.tenant = rq->tenant;
    j->s.blob = j->blob;
    j->s.parts = j->parts;
    j->s.reply = step_committed;
    j->s.release = step_released;
    j->rq = rq;
    j->rp = rp;
    rp->deferred = 1;
    take_fold_input(j, e); /* a snapshot form has settled: save_parts settles */
    curvd_svc_commit_step(&j->s);
}

/* 202 with the next callback; a copy is kept to answer a retried POST. */
static void reply_callback(const struct curvd_req *rq, struct curvd_reply *rp,
                           struct curvd_entry *e, struct curvd_out *out)
{
    struct curvd_pending *pd = &e->pend;
    int binary = pd->encoding == CURVD_ENC_BINARY;
    size_t len = out->len;
    unsigned char *copy = malloc(len ? len : 1), *body = copy ? curvd_out_take(out) : NULL;
    if (!body) {
        free(copy);
        curv_opt_cancel(e->opt);
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
        return;
    }
    memcpy(copy, body, len);
    free(pd->last);
    pd->last = copy;
    pd->last_len = len;
    pd->last_json_len = binary ? out->json_len : 0;
    curvd_reply_tensors(rp, 202, body, len, pd->last_json_len, curvd_mem_free);
    for (int i = 0; i < CURVD_T_COUNT; i++) /* this exchange's time, for the history */
        pd->spent[i] += rp->timing[i];
    curvd_callback_url(e, rp->location, sizeof rp->location); /* the callback's "url" */
}

static void reply_step_error(struct curvd_reply *rp, const struct curvd_req *rq, curv_status cs,
                             const curv_error *cerr)
{
    curvd_reply_problem(rp, rq, curvd_reason_of_status(CURVD_OP_STEP, cs), NULL, 0, "%s",
                        cerr->text);
}

void curvd_step_outcome(struct curvd_server *srv, const struct curvd_req *rq,
                        struct curvd_reply *rp, struct curvd_entry *e, curv_status cs,
                        const curv_error *cerr, const curv_request *req, const double *delta)
{
    if (cs != CURV_OK && cs != CURV_NEED_INPUT) {
        reply_step_error(rp, rq, cs, cerr);
        return;
    }
    const struct curvd_pending *pd = &e->pend;
    struct curvd_problem p;
    struct curvd_out out;
    char *report = NULL;
    int encoded;
    curvd_problem_init(&p);
    curvd_out_init(&out);
    if (cs == CURV_NEED_INPUT) {
        e->pend.req = *req;
        encoded = curvd_encode_callback(&out, e, &p);
        curvd_timing_lap(rp, CURVD_T_ENCODE);
    } else {
        report = curvd_step_report(e->opt, pd->has_loss ? &pd->loss : NULL);
        encoded =
            report ? curvd_encode_update(&out, pd->step, curv_opt_layout(e->opt), delta, pd->dtype,
                                         (enum curvd_encoding)pd->encoding, report, &p)
                   : curvd_problem_set(&p, CURVD_R_NO_MEMORY, "", NULL, NULL, "out of memory");
    }
    if (encoded != 0) {
        curvd_svc_abandon(srv, e); /* the optimizer went ahead */
        curvd_reply_codec_problem(rp, rq, &p);
    } else if (cs == CURV_OK) {
        commit_and_reply(srv, rq, rp, e, &out, &report, delta);
    } else {
        reply_callback(rq, rp, e, &out);
    }
    curvd_mem_free(report);
    curvd_out_clear(&out);
}

static void step_out_of_order(struct curvd_reply *rp, const struct curvd_req *rq, long long cur,
                              long long got_step)
{
    char want[32], got[32];
    snprintf(want, sizeof want, "%lld", cur + 1);
    snprintf(got, sizeof got, "%lld", got_step);
    struct curvd_field_error fe = {"/step", want, got};
    curvd_reply_problem(rp, rq, CURVD_R_STEP_OUT_OF_ORDER, &fe, 1,
                        "the session has completed %lld steps: post step %lld", cur, cur + 1);
}

/* The step @in, decoded, through the optimizer. */
static void apply_step(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                       struct curvd_entry *e, struct curvd_step_in *in, const curv_step_input *si,
                       const char *digest, double *delta)
{
    const double *g = si->grad, *theta = si->params, *gsq = si->grad_sq;
    /* Posting the step in progress again starts it over: the trainer
     * lost its place (it restarted, or gave up on a callback). */
    curv_opt_cancel(e->opt);
    curvd_registry_before_step(srv->reg, e);
    curvd_timing_lap(rp, CURVD_T_STEP); /* the wait for its fold after the last reply */
    /* The record first (in a refused step's buffer, if any): out
     * of memory it is failed (none for a state too small to log), and the
     * step becomes a snapshot. A session whose last step took no callback
     * writes it into its file while the library steps, unless the log has
     * no room for it (the step will be a snapshot); a step that then calls
     * back leaves those bytes unnamed: its record grows by the answers. */
    struct curvd_record rec = e->pend.rec;
    const int called_back = e->pend.callbacks > 0;
    e->pend.rec = (struct curvd_record){0};
    rec.len = 0;
    if (e->bytes >= srv->cfg.snapshot_min)
        (void)curvd_record_step(&rec, curv_opt_layout(e->opt), in, g, theta, gsq);
    struct curvd_write_ahead ahead = {.id = e->id,
                                      .gen = curvd_store_log_gen(curvd_lease_epoch(srv, e)),
                                      .step = in->step,
                                      .rec = rec.buf,
                                      .len = rec.len};
    const int written_ahead = !rec.failed && !called_back && curvd_svc_log_room(srv, e, &rec) &&
                              curvd_store_write_ahead(srv->store, &ahead);
    curvd_timing_lap(rp, CURVD_T_ENCODE);
    curv_request req;
    curv_error cerr;
    curv_status cs = curv_opt_step(e->opt, si, delta, &req, &cerr);
    curvd_timing_lap(rp, CURVD_T_STEP);
    const int ahead_ok = written_ahead && curvd_store_write_ahead_wait(&ahead) == 0;
    if (written_ahead)
        curvd_timing_lap(rp, CURVD_T_COMMIT);
    if (cs == CURV_OK || cs == CURV_NEED_INPUT) {
        free(e->pend.last);
        e->pend = (struct curvd_pending){.step = in->step,
                                         .dtype = in->dtype,
                                         .encoding = in->encoding,
                                         .loss = in->loss,
                                         .has_loss = in->has_loss,
                                         .rec = rec,
                                         .written_ahead = written_ahead,
                                         .ahead_ok = ahead_ok,
                                         .ahead_gen = ahead.gen,
                                         .ahead_offset = ahead.offset};
        snprintf(e->pend.request_digest, sizeof e->pend.request_digest, "%s", digest);
        e->pend.input = in; /* for the commit: the fold may follow the reply */
    } else {
        e->pend.rec = rec; /* for its buffer */
    }
    curvd_step_outcome(srv, rq, rp, e, cs, &cerr, &req, delta);
    if (!rp->deferred) { /* not committed (a refusal): @in is freed on return */
        curv_opt_settle(e->opt);
        e->pend.input = NULL;
    }
}

static void run_step(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                     struct curvd_entry *e)
{
    struct curvd_step_in in = {0};
    struct curvd_binary bin = {0};
    struct curvd_problem p;
    curvd_problem_init(&p);
    const curv_layout *l = curv_opt_layout(e->opt);
    size_t dim = curv_layout_dim(l);
    long long cur = (long long)curv_opt_steps(e->opt);
    /* Not zeroed: decoding writes every block of what the step reads (the
     * optional vectors only when given), and the step writes all of delta. */
    double *g = curvd_mem_alloc(dim * sizeof *g), *theta = curvd_mem_alloc(dim * sizeof *theta);
    double *gsq = curvd_mem_alloc(dim * sizeof *gsq), *delta = curvd_mem_alloc(dim * sizeof *delta);
    curv_layer_stats *ls = NULL;
    int binary = 0;
    char digest[CURVD_DIGEST_TEXT];
    curvd_timing_lap(rp, CURVD_T_COUNT);
    if (!g || !theta || !gsq || !delta) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
    } else if (curvd_step_parse_head(rq->body, rq->body_len,
                                     curvd_req_header(rq, "Inference-Header-Content-Length"),
                                     rq->content_type, &in, &bin, &binary, &p) != 0) {
        curvd_reply_codec_problem(rp, rq, &p);
    } else if (in.step != cur + 1 && !(in.step == cur && cur > 0)) {
        step_out_of_order(rp, rq, cur, in.step);
    } else if (curvd_step_decode_tensors(l, &in, &bin, binary, g, theta, gsq, &p) != 0) {
        /* A re-post of the latest step is decoded too: it is replayed
         * only when it is the same request (curvd_step_replay). */
        curvd_reply_codec_problem(rp, rq, &p);
    } else if (in.nlayers && !(ls = calloc(in.nlayers, sizeof *ls))) {
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
    } else {
        curvd_step_digest(l, &in, g, theta, gsq, digest);
        if (ls)
            curvd_step_layer_stats(&in, ls);
        curvd_timing_lap(rp, CURVD_T_DECODE);
        curv_step_input si = {.grad = g,
                              .params = in.nparams ? theta : NULL,
                              .len = dim,
                              .dtype = CURV_F64,
                              .layers = ls,
                              .n_layers = in.nlayers,
                              .loss = in.loss,
                              .has_loss = in.has_loss,
                              .batch = in.batch,
                              .grad_sq = in.ngrad_sq ? gsq : NULL};
        if (in.step == cur)
            curvd_step_replay(srv, rq, rp, e, cur, digest);
        else
            apply_step(srv, rq, rp, e, &in, &si, digest, delta);
    }
    curvd_step_in_clear(&in);
    free(ls);
    curvd_mem_free(g);
    curvd_mem_free(theta);
    curvd_mem_free(gsq);
    curvd_mem_free(delta);
}

void curvd_step_end(struct curvd_server *srv, const struct curvd_reply *rp, struct curvd_entry *e)
{
    if (!rp->deferred) /* else its commit gives it back (curvd_svc_commit_step) */
        curvd_svc_give_back(srv, e, e->bytes);
}

CURVD_HANDLER(curvd_h_step)
{
    struct curvd_entry *e = NULL;
    if (curvd_take_session(srv, rq, rp, &e) != 0)
        return;
    run_step(srv, rq, rp, e);
    curvd_step_end(srv, rp, e);
}
