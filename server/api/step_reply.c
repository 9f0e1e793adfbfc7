/* SPDX-License-Identifier: MIT */
/*
 * Step replies: the 200 update, the 202 callback, and the compact form in
 * which a step's reply is stored for replay. A 200 reply is stored as its
 * update's wire bytes (datatype and encoding in the content type) next to
 * its report, and rendered again on replay by the same code that wrote it
 * first, so the replay is byte for byte the same; a JSON reply stored as
 * text would cost its database write three to four times the bytes.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/steps.h"
#include "http/mem.h"
#include "store/store.h"
#include "wire/callback_id.h"
#include "wire/json_scan.h"
#include "wire/out.h"
#include "wire/tensor_bytes.h"

#define STORED_UPDATE "application/vnd.curvd.update"

static const char *const encoding_names[] = {"json", "b64", "binary"};

/* The name of choice @value of enum hyperparameter @name of @kind, or
 * NULL when @name is not an enum parameter (or @value not a choice). The
 * name is copied into @buf. */
static const char *enum_choice(curv_opt_kind kind, const char *name, double value, char *buf,
                               size_t cap)
{
    curv_param_info pi;
    for (size_t i = 0; i < curv_opt_param_count(kind); i++) {
        if (curv_opt_param_info(kind, i, &pi) != CURV_OK || strcmp(pi.name, name) != 0)
            continue;
        if (pi.type != CURV_PARAM_ENUM || !pi.choices || value < 0 || value != floor(value))
            return NULL;
        const char *c = pi.choices;
        for (double k = 0; k < value && c; k++)
            if ((c = strchr(c, '|')))
                c++;
        if (!c)
            return NULL;
        size_t n = strcspn(c, "|");
        snprintf(buf, cap, "%.*s", (int)n, c);
        return buf;
    }
    return NULL;
}

char *curvd_step_report(const curv_opt *o, const double *loss)
{
    struct curvd_out out;
    curvd_out_init(&out);
    curvd_out_lit(&out, "{\"optimizer\":");
    curv_opt_kind kind = curv_opt_kind_of(o);
    curvd_out_string(&out, curv_opt_kind_name(kind));
    const curv_report_entry *ent;
    size_t n = curv_opt_report(o, &ent);
    int has_loss = 0;
    for (size_t i = 0; i < n; i++)
        has_loss |= strcmp(ent[i].name, "loss") == 0;
    if (loss && !has_loss && isfinite(*loss)) {
        curvd_out_lit(&out, ",\"loss\":");
        curvd_out_real(&out, *loss);
    }
    for (size_t i = 0; i < n; i++)
        if (isfinite(ent[i].value)) {
            char name[64];
            const char *choice = enum_choice(kind, ent[i].name, ent[i].value, name, sizeof name);
            curvd_out_lit(&out, ",");
            curvd_out_string(&out, ent[i].name);
            curvd_out_lit(&out, ":");
            if (choice)
                curvd_out_string(&out, choice);
            else
                curvd_out_real(&out, ent[i].value);
        }
    curvd_out_raw(&out, "}", 2); /* with its NUL */
    if (curvd_out_finish(&out, NULL) != 0) {
        curvd_out_clear(&out);
        return NULL;
    }
    return (char *)curvd_out_take(&out);
}

int curvd_encode_update(struct curvd_out *out, long long step, const curv_layout *l,
                        const double *delta, int dtype, enum curvd_encoding enc, const char *report,
                        struct curvd_problem *p)
{
    curvd_out_lit(out, "{\"step\":");
    curvd_out_int(out, step);
    curvd_out_lit(out, ",\"update\":");
    if (curvd_out_tensors(out, l, delta, dtype, enc, p))
        return -1;
    curvd_out_lit(out, ",\"report\":");
    curvd_out_raw(out, report, strlen(report));
    curvd_out_lit(out, "}");
    return curvd_out_finish(out, p);
}

static const char *callback_kind_name(curv_request_kind k)
{
    return k == CURV_REQ_CURVATURE_PRODUCT ? "curvature_product"
           : k == CURV_REQ_LOSS            ? "loss"
                                           : "quadratic_form";
}

void curvd_callback_path(char *buf, size_t cap, const char *id, long long step, uint64_t seq)
{
    char cb[CURVD_CALLBACK_ID_CAP];
    curvd_callback_id(cb, sizeof cb, seq);
    snprintf(buf, cap, "/v1/sessions/%s/steps/%lld/callbacks/%s", id, step, cb);
}

void curvd_callback_url(const struct curvd_entry *e, char *buf, size_t cap)
{
    curvd_callback_path(buf, cap, e->id, e->pend.step, e->pend.req.seq);
}

int curvd_encode_callback(struct curvd_out *out, const struct curvd_entry *e,
                          struct curvd_problem *p)
{
    const struct curvd_pending *pd = &e->pend;
    const curv_request *req = &pd->req;
    const curv_layout *l = curv_opt_layout(e->opt);
    char url[160], id[CURVD_CALLBACK_ID_CAP];
    curvd_callback_url(e, url, sizeof url);
    curvd_callback_id(id, sizeof id, req->seq);
    curvd_out_lit(out, "{\"step\":");
    curvd_out_int(out, pd->step);
    curvd_out_lit(out, ",\"callback\":{\"id\":");
    curvd_out_string(out, id);
    curvd_out_lit(out, ",\"kind\":");
    curvd_out_string(out, callback_kind_name(req->kind));
    curvd_out_lit(out, ",\"url\":");
    curvd_out_string(out, url);
    curvd_out_lit(out, ",\"answer_values\":");
    curvd_out_int(out, (long long)req->n_values);
    curvd_out_lit(out, ",\"vectors\":[");
    for (size_t i = 0; i < req->n_vectors; i++) {
        if (i)
            curvd_out_lit(out, ",");
        if (curvd_out_tensors(out, l, req->vectors + i * req->dim, pd->dtype,
                              (enum curvd_encoding)pd->encoding, p))
            return -1;
    }
    curvd_out_lit(out, "]}}");
    return curvd_out_finish(out, p);
}

void curvd_stored_type(char *buf, size_t cap, int dtype, enum curvd_encoding enc)
{
    snprintf(buf, cap, STORED_UPDATE "; datatype=%s; encoding=%s", curvd_dtype_name(dtype),
             encoding_names[enc]);
}

/* The datatype and encoding of a stored update; -1 for any other type. */
static int parse_stored_type(const char *t, int *dtype, enum curvd_encoding *enc)
{
    char want[96];
    for (int d = CURV_F64; d <= CURV_F32; d++)
        for (int k = CURVD_ENC_JSON; k <= CURVD_ENC_BINARY; k++) {
            curvd_stored_type(want, sizeof want, d, (enum curvd_encoding)k);
            if (strcmp(t, want) == 0) {
                *dtype = d;
                *enc = (enum curvd_encoding)k;
                return 0;
            }
        }
    return -1;
}

/* A reply stored whole (before the compact form): sent as it is. */
static void reply_stored_body(struct curvd_reply *rp, struct curvd_step_response *r)
{
    const char *jh = strstr(r->content_type, "json-header=");
    curvd_reply_tensors(rp, 200, r->body, r->body_len, jh ? (size_t)strtoull(jh + 12, NULL, 10) : 0,
                        curvd_store_free);
    r->body = NULL;
}

/* A compact stored update rendered again in its request's encoding. */
static void reply_stored_update(struct curvd_reply *rp, const struct curvd_req *rq,
                                const struct curvd_entry *e, struct curvd_step_response *r,
                                int dtype, enum curvd_encoding enc)
{
    const curv_layout *l = curv_opt_layout(e->opt);
    size_t dim = curv_layout_dim(l), want = dim * curvd_dtype_size(dtype);
    if (r->body_len != want || !r->report) {
        curvd_reply_problem(rp, rq, CURVD_R_INTERNAL, NULL, 0,
                            "the stored reply of step %lld has %zu bytes of update%s, the "
                            "layout needs %zu",
                            (long long)r->step, r->body_len, r->report ? "" : " and no report",
                            want);
        return;
    }
    struct curvd_out out;
    struct curvd_problem p;
    curvd_out_init(&out);
    curvd_problem_init(&p);
    double *x = malloc(dim ? dim * sizeof *x : 1);
    if (x)
        curvd_le_decode(r->body, dim, dtype, x);
    if (!x)
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
    else if (curvd_encode_update(&out, r->step, l, x, dtype, enc, r->report, &p) != 0)
        curvd_reply_codec_problem(rp, rq, &p);
    else {
        size_t len = out.len, json_len = enc == CURVD_ENC_BINARY ? out.json_len : 0;
        curvd_reply_tensors(rp, 200, curvd_out_take(&out), len, json_len, curvd_mem_free);
    }
    free(x);
    curvd_out_clear(&out);
}

void curvd_reply_mismatch(struct curvd_reply *rp, const struct curvd_req *rq, const char *stored,
                          const char *got, const char *detail)
{
    struct curvd_field_error fe = {"", stored, got};
    curvd_reply_problem(rp, rq, CURVD_R_STEP_MISMATCH, &fe, 1, "%s", detail);
}

void curvd_step_replay(struct curvd_server *srv, const struct curvd_req *rq, struct curvd_reply *rp,
                       const struct curvd_entry *e, long long cur, const char *digest)
{
    struct curvd_step_response r = {0};
    char err[256], detail[200];
    int dtype;
    enum curvd_encoding enc;
    int st = curvd_store_get_response(srv->store, rq->tenant, e->id, &r, err, sizeof err);
    if (st == CURVD_STORE_OK && digest && r.request_digest && strcmp(digest, r.request_digest)) {
        snprintf(detail, sizeof detail,
                 "step %lld was completed by another request (its gradients or other inputs "
                 "differ), and this one was not applied: post step %lld next",
                 cur, cur + 1);
        curvd_reply_mismatch(rp, rq, r.request_digest, digest, detail);
    } else if (st == CURVD_STORE_OK && parse_stored_type(r.content_type, &dtype, &enc) == 0) {
        reply_stored_update(rp, rq, e, &r, dtype, enc);
    } else if (st == CURVD_STORE_OK) {
        reply_stored_body(rp, &r);
    } else if (st == CURVD_STORE_NOT_FOUND) { /* imported at this step: no reply to replay */
        char want[32], got[32];
        snprintf(want, sizeof want, "%lld", cur + 1);
        snprintf(got, sizeof got, "%lld", cur);
        struct curvd_field_error fe = {"/step", want, got};
        curvd_reply_problem(rp, rq, CURVD_R_STEP_OUT_OF_ORDER, &fe, 1,
                            "step %lld has no stored reply (the session was imported at it): "
                            "post step %lld",
                            cur, cur + 1);
    } else {
        curvd_reply_store_error(rp, rq, st, err);
    }
    curvd_step_response_clear(&r);
}
