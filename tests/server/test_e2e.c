/* SPDX-License-Identifier: MIT */
/*
 * End to end over HTTP: a real daemon on a loopback port with a temporary
 * database; the test plays the trainer. Every update is compared with the
 * same optimizer run in-process through libcurv, so the service adds
 * nothing and loses nothing.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv.h"
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = SU_D }; /* srvutil's layout: fc, 2 x (4 + bias) = 10; gain, 1 */

struct fx {
    struct curvd_server srv;
    char dir[64], db[128], base[64];
    curv_layout *layout; /* the sessions' layout, in-process */
};

/* Open the daemon on the fixture's database; @threads 0: su_start's default. */
static void start_with(struct fx *f, unsigned threads, unsigned workers)
{
    memset(&f->srv, 0, sizeof f->srv);
    f->srv.cfg.db_path = f->db;
    f->srv.cfg.max_sessions = 100;
    f->srv.cfg.mem_budget = (size_t)1 << 30;
    f->srv.cfg.max_body = (size_t)16 << 20;
    f->srv.cfg.threads = threads;
    f->srv.cfg.workers = workers;
    su_daemon_start(&f->srv, f->base, sizeof f->base);
}

static void start(struct fx *f, unsigned threads)
{
    start_with(f, threads, 0);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "e2e", f->db, sizeof f->db);
    f->layout = su_layout_new();
    start(f, 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    su_daemon_stop(&f->srv);
    curv_layout_free(f->layout);
    assert_int_equal(su_rmtree(f->dir), 0);
    free(f);
    return 0;
}

/* Send @body (a JSON value, stolen) and return the parsed reply. */
static json_t *call(struct fx *f, const char *method, const char *path, json_t *body, long want,
                    struct su_resp *raw)
{
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(body);
    json_t *j = su_call(f->base, method, path, text, want, raw);
    free(text);
    return j;
}

/* Create a session of @kind with @config (stolen, may be NULL); returns its id. */
static void create(struct fx *f, const char *kind, json_t *config, char id[33])
{
    struct su_resp raw;
    json_t *s = su_create(f->base, kind, config, 201, id, &raw);
    assert_int_equal(strlen(id), 32);
    assert_non_null(strstr(raw.location, id));
    assert_int_equal(json_integer_value(json_object_get(s, "step")), 0);
    assert_int_equal(json_integer_value(json_object_get(s, "dim")), D);
    assert_true(json_is_null(json_object_get(s, "last_step")));
    su_resp_free(&raw);
    json_decref(s);
}

/* The gradient of step @t as a flat vector (deterministic). */
static void grad_at(int t, double *g)
{
    su_grad(t, 0, g);
}

static json_t *step_body(int t, const double *g)
{
    return su_step_json(t, g, 1);
}

/* The update in a step reply, flattened in layout order. */
static void update_of(json_t *reply, double *u)
{
    json_t *upd = json_object_get(reply, "update");
    assert_int_equal(json_array_size(upd), 2);
    size_t k = 0;
    for (size_t b = 0; b < 2; b++) {
        json_t *data = json_object_get(json_array_get(upd, b), "data");
        for (size_t i = 0; i < json_array_size(data); i++)
            u[k++] = json_number_value(json_array_get(data, i));
    }
    assert_int_equal(k, D);
}

/* Run @steps steps over HTTP and in-process; updates must be identical. */
static void check_steps(struct fx *f, const char *id, curv_opt *ref, int from, int to)
{
    for (int t = from; t <= to; t++) {
        double g[D], u[D], want[D];
        grad_at(t, g);
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s/steps", id);
        json_t *r = call(f, "POST", path, step_body(t, g), 200, NULL);
        assert_int_equal(json_integer_value(json_object_get(r, "step")), t);
        update_of(r, u);
        json_decref(r);
        curv_step_input in = {.grad = g, .len = D, .dtype = CURV_F64};
        curv_error err;
        tu_assert_status(curv_opt_step(ref, &in, want, NULL, &err), CURV_OK, &err);
        for (int i = 0; i < D; i++)
            if (u[i] != want[i])
                fail_msg("step %d, element %d: http %.17g, library %.17g", t, i, u[i], want[i]);
    }
}

/* Every optimizer kind, created over HTTP, steps exactly like libcurv. */
static void test_every_kind_matches_library(void **state)
{
    struct fx *f = *state;
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* callback exchanges: test_callbacks.c */
        const char *kind = curv_opt_kind_name((curv_opt_kind)k);
        char id[33];
        create(f, kind, NULL, id);
        curv_opt *ref = tu_new_opt((curv_opt_kind)k, f->layout, NULL);
        check_steps(f, id, ref, 1, 3);
        curv_opt_free(ref);
    }
}

static unsigned char *export_state(struct fx *f, const char *id, size_t *len)
{
    return su_export_state(f->base, id, len, "application/octet-stream");
}

/* Create a session of @kind (its id into @id, its steps path into @path)
 * and post its step 1, which must answer 200 (the response into @raw
 * unless NULL). */
static void first_step(struct fx *f, const char *kind, char id[33], char path[128],
                       struct su_resp *raw)
{
    create(f, kind, NULL, id);
    snprintf(path, 128, "/v1/sessions/%s/steps", id);
    double g[D];
    grad_at(1, g);
    json_decref(call(f, "POST", path, step_body(1, g), 200, raw));
}

/* Re-posting the latest step replays its reply byte for byte; other
 * numbers are 409 with the expected one; nothing is applied twice. */
static void test_exactly_once(void **state)
{
    struct fx *f = *state;
    char id[33], path[128];
    struct su_resp a, b;
    first_step(f, "adagrad_diag", id, path, &a);
    size_t len1;
    unsigned char *s1 = export_state(f, id, &len1);
    double g[D];
    grad_at(1, g);
    json_decref(call(f, "POST", path, step_body(1, g), 200, &b));
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.body, b.body, a.len);
    /* Server-Timing: every phase of the step that ran; a replay only
     * decodes (to compare the request with the one stored). */
    static const char *const phases[] = {
        "decode;dur=", "step;dur=", "encode;dur=", "save;dur=", "commit;dur="};
    for (int i = 0; i < 5; i++)
        assert_non_null(strstr(a.server_timing, phases[i]));
    assert_non_null(strstr(b.server_timing, "decode;dur="));
    for (int i = 1; i < 5; i++)
        assert_null(strstr(b.server_timing, phases[i]));
    size_t len2;
    unsigned char *s2 = export_state(f, id, &len2);
    assert_int_equal(len1, len2);
    assert_memory_equal(s1, s2, len1); /* the replay changed nothing */
    json_t *p = call(f, "POST", path, step_body(3, g), 409, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "STEP_OUT_OF_ORDER");
    json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e0, "expected")), "2");
    json_decref(p);
    /* No optimizer of this version asks for callbacks: answering one is 409. */
    char cb[192];
    snprintf(cb, sizeof cb, "/v1/sessions/%s/steps/1/callbacks/c1", id);
    p = call(f, "POST", cb, json_pack("{s:{}}", "values"), 409, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "NO_CALLBACK_PENDING");
    json_decref(p);
    json_decref(call(f, "POST",
                     "/v1/sessions/00000000000000000000000000000000/steps/1/callbacks/c1",
                     json_pack("{s:{}}", "values"), 404, NULL));
    su_resp_free(&a);
    su_resp_free(&b);
    free(s1);
    free(s2);
}

/* Bad steps are refused with a precise problem and leave the exported
 * state byte-identical. */
static void test_bad_steps_change_nothing(void **state)
{
    struct fx *f = *state;
    char id[33], path[128];
    first_step(f, "mbag", id, path, NULL);
    size_t len0;
    unsigned char *s0 = export_state(f, id, &len0);
    double g[D];
    grad_at(2, g);
    struct {
        json_t *body;
        long status;
        const char *reason;
    } cases[] = {
        {json_pack("{s:i, s:[o]}", "step", 2, "gradients",
                   su_tensor("fc", json_pack("[i,i]", 2, 5), g, 10)),
         400, "MISSING_BLOCK"},
        {json_pack("{s:i, s:[o,o]}", "step", 2, "gradients",
                   su_tensor("fc", json_pack("[i,i]", 5, 2), g, 10),
                   su_tensor("gain", json_pack("[i]", 1), g, 1)),
         400, "SHAPE_MISMATCH"},
        {json_pack("{s:i, s:[o,o,o]}", "step", 2, "gradients",
                   su_tensor("fc", json_pack("[i,i]", 2, 5), g, 10),
                   su_tensor("gain", json_pack("[i]", 1), g, 1),
                   su_tensor("other", json_pack("[i]", 1), g, 1)),
         400, "UNKNOWN_BLOCK"},
        {json_pack("{s:s, s:[]}", "step", "two", "gradients"), 400, "BAD_TENSOR"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        json_t *p = call(f, "POST", path, cases[k].body, cases[k].status, NULL);
        assert_string_equal(json_string_value(json_object_get(p, "reason")), cases[k].reason);
        json_decref(p);
    }
    /* A NaN written as Python's json module writes it. */
    char url[256], text[512];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    snprintf(text, sizeof text,
             "{\"step\":2,\"gradients\":[{\"name\":\"gain\",\"shape\":[1],\"datatype\":\"FP64\","
             "\"data\":[NaN]},{\"name\":\"fc\",\"shape\":[2,5],\"datatype\":\"FP64\",\"data\":"
             "[1,2,3,4,5,6,7,8,9,10]}]}");
    struct su_resp r;
    su_request("POST", url, text, strlen(text), NULL, 0, &r);
    assert_int_equal(r.status, 422);
    su_resp_free(&r);
    su_request("POST", url, "{\"step\":", 8, NULL, 0, &r);
    assert_int_equal(r.status, 400);
    su_resp_free(&r);
    su_request("POST", url, text, strlen(text), "text/plain", 0, &r);
    assert_int_equal(r.status, 415);
    su_resp_free(&r);
    size_t len1;
    unsigned char *s1 = export_state(f, id, &len1);
    assert_int_equal(len0, len1);
    assert_memory_equal(s0, s1, len0);
    free(s0);
    free(s1);
}

/* Stop the daemon, open it again on the same database: the session goes
 * on exactly where the last acknowledged step left it. */
static void test_restart_keeps_sessions(void **state)
{
    struct fx *f = *state;
    char id[33];
    create(f, "adagrad_bma", NULL, id);
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_BMA, f->layout, NULL);
    check_steps(f, id, ref, 1, 2);
    su_daemon_stop(&f->srv);
    start(f, 0);
    assert_int_equal(su_session_step(f->base, id), 2);
    check_steps(f, id, ref, 3, 4);
    curv_opt_free(ref);
}

/* PATCH changes the learning rate between steps; fixed parameters and
 * unknown keys are refused. */
static void test_patch(void **state)
{
    struct fx *f = *state;
    char id[33], path[128];
    create(f, "adagrad_diag", json_pack("{s:f}", "lr", 0.1), id);
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    curv_config *c = curv_config_new();
    curv_config_set_num(c, "lr", 0.1, NULL);
    curv_opt_reconfigure(ref, c, NULL);
    check_steps(f, id, ref, 1, 1);
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_t *s = call(f, "PATCH", path, json_pack("{s:{s:f}}", "config", "lr", 0.05), 200, NULL);
    assert_true(json_real_value(json_object_get(json_object_get(s, "config"), "lr")) == 0.05);
    json_decref(s);
    curv_config_set_num(c, "lr", 0.05, NULL);
    curv_opt_reconfigure(ref, c, NULL);
    check_steps(f, id, ref, 2, 2);
    json_t *p = call(f, "PATCH", path, json_pack("{s:{s:i}}", "config", "nope", 1), 400, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "INVALID_CONFIG");
    json_decref(p);
    curv_config_free(c);
    curv_opt_free(ref);
}

/* Export a session, import it as a new one: both continue identically. */
static void test_export_import(void **state)
{
    struct fx *f = *state;
    char id[33];
    create(f, "sgd", json_pack("{s:f, s:f}", "lr", 0.1, "momentum", 0.9), id);
    curv_opt *ref = tu_new_opt(CURV_OPT_SGD, f->layout, NULL);
    curv_config *c = curv_config_new();
    curv_config_set_num(c, "lr", 0.1, NULL);
    curv_config_set_num(c, "momentum", 0.9, NULL);
    curv_opt_reconfigure(ref, c, NULL);
    check_steps(f, id, ref, 1, 2);
    size_t len;
    unsigned char *blob = export_state(f, id, &len);
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions:import", f->base);
    struct su_resp r;
    su_request("POST", url, blob, len, "application/octet-stream", 0, &r);
    assert_int_equal(r.status, 201);
    json_t *s = json_loads(r.body, 0, NULL);
    char id2[33];
    snprintf(id2, sizeof id2, "%s", json_string_value(json_object_get(s, "id")));
    assert_string_not_equal(id, id2);
    assert_int_equal(json_integer_value(json_object_get(s, "step")), 2);
    assert_true(json_is_null(json_object_get(s, "last_step"))); /* no reply comes with a blob */
    json_decref(s);
    su_resp_free(&r);
    curv_opt *ref2 = NULL;
    assert_int_equal(curv_opt_load(blob, len, &ref2, NULL), CURV_OK);
    check_steps(f, id, ref, 3, 4);
    check_steps(f, id2, ref2, 3, 4);
    blob[len / 2] ^= 0xff; /* a damaged blob is refused */
    su_request("POST", url, blob, len, "application/octet-stream", 0, &r);
    assert_int_equal(r.status, 400);
    su_resp_free(&r);
    free(blob);
    curv_config_free(c);
    curv_opt_free(ref);
    curv_opt_free(ref2);
}

/* Pagination lists every session exactly once; delete removes one. */
static void test_list_and_delete(void **state)
{
    struct fx *f = *state;
    char ids[7][33];
    for (int i = 0; i < 7; i++)
        create(f, "sgd", NULL, ids[i]);
    int seen[7] = {0};
    char path[256] = "/v1/sessions?page_size=3";
    for (int page = 0; page < 5; page++) {
        json_t *r = call(f, "GET", path, NULL, 200, NULL);
        json_t *arr = json_object_get(r, "sessions");
        for (size_t k = 0; k < json_array_size(arr); k++) {
            const char *sid = json_string_value(json_object_get(json_array_get(arr, k), "id"));
            for (int i = 0; i < 7; i++)
                seen[i] += strcmp(sid, ids[i]) == 0;
        }
        const char *next = json_string_value(json_object_get(r, "next_page_token"));
        if (next)
            snprintf(path, sizeof path, "/v1/sessions?page_size=3&page_token=%s", next);
        json_decref(r);
        if (!next)
            break;
    }
    for (int i = 0; i < 7; i++)
        assert_int_equal(seen[i], 1);
    snprintf(path, sizeof path, "/v1/sessions/%s", ids[3]);
    call(f, "DELETE", path, NULL, 204, NULL);
    json_decref(call(f, "GET", path, NULL, 404, NULL));
    json_decref(call(f, "DELETE", path, NULL, 404, NULL));
    json_decref(call(f, "GET", "/v1/sessions/not-an-id", NULL, 404, NULL));
    json_decref(call(f, "GET", "/v1/sessions?page_size=0", NULL, 400, NULL));
}

/* Creation errors name the field. */
static void test_create_errors(void **state)
{
    struct fx *f = *state;
    const struct {
        const char *body;
        const char *reason, *path;
    } cases[] = {
        {"{\"optimizer\":\"nope\",\"layout\":[]}", "UNKNOWN_OPTIMIZER", "/optimizer"},
        {"{\"optimizer\":\"sgd\",\"layout\":[]}", "INVALID_LAYOUT", "/layout"},
        {"{\"optimizer\":\"sgd\",\"layout\":[{\"name\":\"a\",\"kind\":\"dense\",\"shape\":[2]}]}",
         "INVALID_LAYOUT", "/layout/0/shape"},
        {"{\"optimizer\":\"sgd\",\"layout\":[{\"name\":\"a\",\"kind\":\"vector\",\"shape\":[2],"
         "\"bias\":true}]}",
         "INVALID_LAYOUT", "/layout/0/bias"},
        {"{\"optimizer\":\"sgd\",\"layout\":[{\"name\":\"a\",\"kind\":\"vector\",\"shape\":[2]}],"
         "\"config\":{\"lr\":[1]}}",
         "INVALID_CONFIG", "/config/lr"},
    };
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions", f->base);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        struct su_resp r;
        su_request("POST", url, cases[k].body, strlen(cases[k].body), NULL, 0, &r);
        assert_int_equal(r.status, 400);
        json_t *p = json_loads(r.body, 0, NULL);
        assert_string_equal(json_string_value(json_object_get(p, "reason")), cases[k].reason);
        json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
        assert_string_equal(json_string_value(json_object_get(e0, "path")), cases[k].path);
        json_decref(p);
        su_resp_free(&r);
    }
    /* An unknown hyperparameter: libcurv's text names it. */
    const char *bad = "{\"optimizer\":\"sgd\",\"layout\":[{\"name\":\"a\",\"kind\":\"vector\","
                      "\"shape\":[2]}],\"config\":{\"lr_typo\":1}}";
    struct su_resp r;
    su_request("POST", url, bad, strlen(bad), NULL, 0, &r);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "lr_typo"));
    su_resp_free(&r);
}

/* Little-endian bytes of n doubles. */
static void put_f64s(unsigned char *out, const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t u;
        memcpy(&u, &v[i], 8);
        for (int b = 0; b < 8; b++)
            out[8 * i + (size_t)b] = (unsigned char)(u >> (8 * b));
    }
}

/* A step body in the binary extension: JSON header, then the bytes of each
 * tensor in document order (params first here, to pin that down). */
static void post_binary(struct fx *f, const char *id, int t, const double *g, const double *th,
                        double *u)
{
    char head[1024], url[256], hl[64];
    int n =
        snprintf(head, sizeof head,
                 "{\"step\":%d,\"params\":[{\"name\":\"fc\",\"shape\":[2,5],\"datatype\":"
                 "\"FP64\",\"parameters\":{\"binary_data_size\":80}},{\"name\":\"gain\","
                 "\"shape\":[1],\"datatype\":\"FP64\",\"parameters\":{\"binary_data_size\":8}}],"
                 "\"gradients\":[{\"name\":\"fc\",\"shape\":[2,5],\"datatype\":\"FP64\","
                 "\"parameters\":{\"binary_data_size\":80}},{\"name\":\"gain\",\"shape\":[1],"
                 "\"datatype\":\"FP64\",\"parameters\":{\"binary_data_size\":8}}]}",
                 t);
    unsigned char body[1024 + 4 * 8 * D];
    memcpy(body, head, (size_t)n);
    put_f64s(body + n, th, 10);
    put_f64s(body + n + 80, th + 10, 1);
    put_f64s(body + n + 88, g, 10);
    put_f64s(body + n + 168, g + 10, 1);
    snprintf(url, sizeof url, "%s/v1/sessions/%s/steps", f->base, id);
    snprintf(hl, sizeof hl, "Inference-Header-Content-Length: %d", n);
    const char *hdrs[] = {hl, NULL};
    struct su_resp r;
    su_request_h("POST", url, body, (size_t)n + 176, "application/octet-stream", 0, hdrs, &r);
    if (r.status != 200)
        fail_msg("binary step %d: %ld %s", t, r.status, r.body);
    assert_true(r.json_header_len > 0 && r.json_header_len + 8 * D == r.len);
    for (size_t i = 0; i < D; i++) { /* reply bytes: fc (10) then gain (1), layout order */
        uint64_t bits = 0;
        for (int b = 0; b < 8; b++)
            bits |= (uint64_t)(unsigned char)r.body[r.json_header_len + 8 * i + (size_t)b]
                    << (8 * b);
        memcpy(&u[i], &bits, 8);
    }
    su_resp_free(&r);
}

/* JSON numbers and the binary extension give bit-identical updates, and
 * params given before gradients are read as params (SGD weight decay). */
static void test_encodings_agree(void **state)
{
    struct fx *f = *state;
    char a[33], b[33], path[128];
    create(f, "sgd", json_pack("{s:f, s:f}", "weight_decay", 0.01, "momentum", 0.9), a);
    create(f, "sgd", json_pack("{s:f, s:f}", "weight_decay", 0.01, "momentum", 0.9), b);
    for (int t = 1; t <= 3; t++) {
        double g[D], th[D], uj[D], ub[D];
        grad_at(t, g);
        for (int i = 0; i < D; i++)
            th[i] = 0.1 * i - 0.3;
        json_t *body = step_body(t, g);
        json_object_set_new(body, "params",
                            json_pack("[o,o]", su_tensor("fc", json_pack("[i,i]", 2, 5), th, 10),
                                      su_tensor("gain", json_pack("[i]", 1), th + 10, 1)));
        snprintf(path, sizeof path, "/v1/sessions/%s/steps", a);
        json_t *r = call(f, "POST", path, body, 200, NULL);
        update_of(r, uj);
        json_decref(r);
        post_binary(f, b, t, g, th, ub);
        for (int i = 0; i < D; i++)
            if (uj[i] != ub[i])
                fail_msg("step %d element %d: json %.17g binary %.17g", t, i, uj[i], ub[i]);
    }
}

/* --workers 0: steps run on the connection's thread, and their reply is
 * still sent only once the commit is durable (the handler's return and
 * the commit, whichever comes last, resume the connection). */
static void test_without_workers(void **state)
{
    struct fx *f = *state;
    su_daemon_stop(&f->srv);
    start_with(f, 1, SU_NO_WORKERS);
    assert_int_equal(f->srv.cfg.workers, 0);
    char id[33];
    create(f, "adagrad_diag", NULL, id);
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    check_steps(f, id, ref, 1, 3);
    char path[128];
    struct su_resp a, b;
    double g[D];
    grad_at(4, g);
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", id);
    json_decref(call(f, "POST", path, step_body(4, g), 200, &a));
    json_decref(call(f, "POST", path, step_body(4, g), 200, &b)); /* the replay */
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.body, b.body, a.len);
    json_decref(call(f, "POST", path, step_body(6, g), 409, NULL));
    su_resp_free(&a);
    su_resp_free(&b);
    su_daemon_stop(&f->srv); /* acknowledged steps are durable across a restart */
    start(f, 0);
    assert_int_equal(su_session_step(f->base, id), 4);
    curv_opt_free(ref);
}

struct slow_step {
    const char *url;
    char *body;
    atomic_int done;
    long status;
};

static void *post_slow(void *arg)
{
    struct slow_step *s = arg;
    struct su_resp r;
    su_request("POST", s->url, s->body, strlen(s->body), NULL, 0, &r);
    s->status = r.status;
    su_resp_free(&r);
    atomic_store(&s->done, 1);
    return NULL;
}

/* Create an adagrad_full session of d = 2000 and post its first step from
 * a thread: an O(d^3) eigendecomposition, seconds long. Join @th after. */
static void start_slow_step(struct fx *f, struct slow_step *slow, char *steps, size_t cap,
                            pthread_t *th)
{
    enum { N = 2000 };
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions", f->base);
    const char *create = "{\"optimizer\":\"adagrad_full\",\"layout\":[{\"name\":\"w\","
                         "\"kind\":\"vector\",\"shape\":[2000]}]}";
    struct su_resp r;
    su_request("POST", url, create, strlen(create), NULL, 0, &r);
    assert_int_equal(r.status, 201);
    json_t *s = json_loads(r.body, 0, NULL);
    snprintf(steps, cap, "%s/v1/sessions/%s/steps", f->base,
             json_string_value(json_object_get(s, "id")));
    json_decref(s);
    su_resp_free(&r);
    double g[N];
    for (int i = 0; i < N; i++)
        g[i] = sin(0.1 * i);
    json_t *body = json_pack("{s:i, s:[o]}", "step", 1, "gradients",
                             su_tensor("w", json_pack("[i]", N), g, N));
    *slow = (struct slow_step){.url = steps,
                               .body = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(17))};
    json_decref(body);
    atomic_init(&slow->done, 0);
    assert_int_equal(pthread_create(th, NULL, post_slow, slow), 0);
}

/* A slow step (an O(d^3) eigendecomposition) runs on a worker: with a
 * single connection thread, /healthz is still answered while it runs. */
static void test_heavy_step_does_not_block(void **state)
{
    struct fx *f = *state;
    su_daemon_stop(&f->srv);
    start(f, 1);
    char url[256], steps[256];
    struct su_resp r;
    struct slow_step slow;
    pthread_t th;
    start_slow_step(f, &slow, steps, sizeof steps, &th);
    snprintf(url, sizeof url, "%s/healthz", f->base);
    int answered_during = 0;
    while (!atomic_load(&slow.done)) {
        su_request("GET", url, NULL, 0, NULL, 0, &r);
        assert_int_equal(r.status, 200);
        su_resp_free(&r);
        answered_during += !atomic_load(&slow.done);
    }
    pthread_join(th, NULL);
    free(slow.body);
    assert_int_equal(slow.status, 200);
    print_message("/healthz answered %d times during one slow step\n", answered_during);
    assert_true(answered_during >= 1);
}

/* Over --max-queue, a heavy request is refused at once with 429 (and
 * Retry-After), and the refused step changes nothing. */
static void test_queue_limit(void **state)
{
    struct fx *f = *state;
    su_daemon_stop(&f->srv);
    memset(&f->srv, 0, sizeof f->srv);
    f->srv.cfg = (struct curvd_config){.db_path = f->db,
                                       .max_sessions = 100,
                                       .mem_budget = (size_t)1 << 30,
                                       .max_body = (size_t)16 << 20,
                                       .workers = 1,
                                       .max_queue = 1};
    su_daemon_start(&f->srv, f->base, sizeof f->base);
    char url[256], steps[256], small_path[128], small_id[33];
    struct su_resp r, first;
    double gs[D];
    first_step(f, "adagrad_diag", small_id, small_path, &first);
    su_resp_free(&first);
    struct slow_step slow;
    pthread_t th;
    start_slow_step(f, &slow, steps, sizeof steps, &th);
    /* Wait until /metrics shows the slow step queued or running. */
    snprintf(url, sizeof url, "%s/metrics", f->base);
    int queued = 0;
    while (!queued && !atomic_load(&slow.done)) {
        su_request("GET", url, NULL, 0, NULL, 0, &r);
        assert_int_equal(r.status, 200);
        queued = strstr(r.body, "\ncurvd_heavy_requests_in_flight 1\n") != NULL;
        su_resp_free(&r);
    }
    int refused = 0, applied = 1; /* the small session is at step 1 */
    while (!atomic_load(&slow.done) && !refused) {
        grad_at(applied + 1, gs);
        json_t *b = step_body(applied + 1, gs);
        char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17)), full[320];
        json_decref(b);
        snprintf(full, sizeof full, "%s%s", f->base, small_path);
        su_request("POST", full, text, strlen(text), NULL, 0, &r);
        free(text);
        json_t *p = json_loadb(r.body, r.len, 0, NULL);
        if (r.status == 429) {
            refused = 1;
            assert_string_equal(json_string_value(json_object_get(p, "reason")),
                                "TOO_MANY_REQUESTS");
        } else {
            assert_int_equal(r.status, 200); /* the slow step had not been queued yet */
            applied++;
        }
        json_decref(p);
        su_resp_free(&r);
    }
    pthread_join(th, NULL);
    free(slow.body);
    assert_int_equal(slow.status, 200);
    assert_true(refused);
    /* Nothing of the refused step was applied; the same step goes through now. */
    char get[160];
    snprintf(get, sizeof get, "/v1/sessions/%s", small_id);
    json_t *sess = call(f, "GET", get, NULL, 200, NULL);
    assert_int_equal(json_integer_value(json_object_get(sess, "step")), applied);
    json_decref(sess);
    grad_at(applied + 1, gs);
    json_decref(call(f, "POST", small_path, step_body(applied + 1, gs), 200, NULL));
}

/* /metrics counts steps by optimizer, requests by route and status, and
 * the sessions held. */
static void test_metrics(void **state)
{
    struct fx *f = *state;
    char id[33];
    create(f, "adagrad_diag", NULL, id);
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    check_steps(f, id, ref, 1, 3);
    char url[256];
    snprintf(url, sizeof url, "%s/metrics", f->base);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.content_type, "text/plain"));
    assert_non_null(strstr(r.body, "curvd_steps_total{optimizer=\"adagrad_diag\"} 3\n"));
    assert_non_null(
        strstr(r.body, "curvd_http_requests_total{route=\"steps.post\",code=\"200\"} 3\n"));
    assert_non_null(
        strstr(r.body, "curvd_http_requests_total{route=\"sessions.create\",code=\"201\"} 1\n"));
    assert_non_null(strstr(r.body, "curvd_sessions{where=\"disk\"} 1\n"));
    assert_non_null(
        strstr(r.body, "curvd_http_request_duration_seconds_count{route=\"steps.post\"} 3\n"));
    assert_null(strstr(r.body, id)); /* never a session id in a label */
    su_resp_free(&r);
    curv_opt_free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_kind_matches_library, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_steps_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_keeps_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_patch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_export_import, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_and_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_create_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_encodings_agree, setup, teardown),
        cmocka_unit_test_setup_teardown(test_without_workers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queue_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_heavy_step_does_not_block, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
