/* SPDX-License-Identifier: MIT */
/*
 * Replays of a completed step against a real daemon. The daemon stores a
 * step's reply compactly (the update's wire bytes and the report) and
 * renders it again on replay: the replay must be the first reply byte for
 * byte, in every encoding and datatype, from memory and after a restart.
 * Replies stored whole (the earlier form) replay as stored; a damaged
 * stored update is a 500, never a wrong answer, and the session goes on.
 * A replay is given only to the same request, whatever its encoding
 * (issue 21): another one is refused and changes nothing.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "srvutil.h"
#include "testutil.h"
#include "wire/out.h"

enum { D = SU_D };

static int setup(void **state)
{
    *state = su_fx_new("replay");
    return 0;
}

static int teardown(void **state)
{
    su_fx_free(*state);
    return 0;
}

static const char *const names[] = {"JSON", "b64", "binary"};

/* Step 1's body with gradient @g in encoding @enc: the trainer's for JSON
 * and binary; base64 written here (the test trainer has no base64). */
static void step1_body_of(const struct su_trainer *tr, const double *g, int enc, struct su_body *b)
{
    if (enc != 1) {
        struct su_step s = {.t = 1, .grad = g};
        su_step_body(tr, &s, b);
        return;
    }
    struct curvd_out o;
    curvd_out_init(&o);
    curvd_out_lit(&o, "{\"step\":1,\"gradients\":");
    assert_int_equal(
        curvd_out_tensors(&o, tr->layout, g, tr->fp32 ? CURV_F32 : CURV_F64, CURVD_ENC_B64, NULL),
        0);
    curvd_out_lit(&o, ",\"loss\":0}"); /* as su_step_body() sends */
    assert_int_equal(curvd_out_finish(&o, NULL), 0);
    *b = (struct su_body){.len = o.len, .cap = o.len};
    unsigned char *taken = curvd_out_take(&o);
    b->p = malloc(o.len); /* su_body_free frees it */
    assert_non_null(b->p);
    memcpy(b->p, taken, o.len);
    curvd_mem_free(taken);
}

/* Step 1's body with its gradient (su_grad) in encoding @enc. */
static void step1_body(const struct su_trainer *tr, int enc, struct su_body *b)
{
    double g[D];
    su_grad(1, 0, g);
    step1_body_of(tr, g, enc, b);
}

static void expect_same(const struct su_resp *a, const struct su_resp *b, const char *what)
{
    if (b->status != 200 || a->len != b->len || memcmp(a->body, b->body, a->len) != 0)
        fail_msg("%s: replay differs (%ld, %zu bytes vs %zu):\n%.300s\n%.300s", what, b->status,
                 b->len, a->len, a->body, b->body);
    assert_string_equal(a->content_type, b->content_type);
    assert_int_equal(a->json_header_len, b->json_header_len);
}

static void test_replay_every_encoding(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr[6];
    struct su_resp first[6];
    char path[6][128], what[6][32];
    for (int k = 0; k < 6; k++) {
        int enc = k / 2, fp32 = k % 2;
        tr[k] = (struct su_trainer){.base = f->base, .layout = l, .binary = enc == 2, .fp32 = fp32};
        su_trainer_create(&tr[k], "adagrad_diag", NULL);
        snprintf(path[k], sizeof path[k], "/v1/sessions/%s/steps", tr[k].id);
        snprintf(what[k], sizeof what[k], "%s %s", names[enc], fp32 ? "FP32" : "FP64");
        struct su_body b = {0};
        struct su_resp again;
        step1_body(&tr[k], enc, &b);
        su_post_body(&tr[k], path[k], &b, &first[k]);
        assert_int_equal(first[k].status, 200);
        assert_int_equal(first[k].json_header_len,
                         enc == 2 ? first[k].len - D * (fp32 ? 4 : 8) : 0);
        assert_non_null(strstr(first[k].body, enc == 1 ? "\"b64\":" : "\"update\":"));
        su_post_body(&tr[k], path[k], &b, &again);
        expect_same(&first[k], &again, what[k]);
        su_resp_free(&again);
        su_body_free(&b);
    }
    su_fx_restart(f); /* the replies now come from the database alone */
    for (int k = 0; k < 6; k++) {
        struct su_body b = {0};
        struct su_resp again;
        step1_body(&tr[k], k / 2, &b);
        su_post_body(&tr[k], path[k], &b, &again);
        expect_same(&first[k], &again, what[k]);
        su_resp_free(&again);
        su_resp_free(&first[k]);
        su_body_free(&b);
    }
    curv_layout_free(l);
}

/* One session at step 1 (JSON), and what it takes to post that step
 * again. */
struct one {
    curv_layout *l;
    struct su_trainer tr;
    struct su_body b;
    char path[128];
};

/* ... and its reply into @first unless NULL. */
static void one_step(struct su_fx *f, struct one *o, struct su_resp *first)
{
    struct su_resp r;
    memset(o, 0, sizeof *o);
    o->l = su_layout_new();
    o->tr = (struct su_trainer){.base = f->base, .layout = o->l};
    su_trainer_create(&o->tr, "adagrad_diag", NULL);
    snprintf(o->path, sizeof o->path, "/v1/sessions/%s/steps", o->tr.id);
    step1_body(&o->tr, 0, &o->b);
    su_post_body(&o->tr, o->path, &o->b, &r);
    assert_int_equal(r.status, 200);
    if (first)
        *first = r;
    else
        su_resp_free(&r);
}

static void one_free(struct one *o)
{
    su_body_free(&o->b);
    curv_layout_free(o->l);
}

static void set_stored(struct su_fx *f, const char *id, const char *assignments)
{
    char sql[512];
    snprintf(sql, sizeof sql, "UPDATE step_responses SET %s WHERE session_id = '%s'", assignments,
             id);
    su_raw_exec(f->db, sql);
}

static void test_replay_of_a_whole_stored_reply(void **state)
{
    struct su_fx *f = *state;
    struct one o;
    struct su_resp r;
    one_step(f, &o, NULL);
    set_stored(f, o.tr.id,
               "content_type = 'application/json', body = CAST('{\"legacy\":true}' AS BLOB)");
    su_post_body(&o.tr, o.path, &o.b, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "{\"legacy\":true}");
    assert_string_equal(r.content_type, "application/json");
    assert_int_equal(r.json_header_len, 0);
    su_resp_free(&r);
    set_stored(f, o.tr.id,
               "content_type = 'application/octet-stream; json-header=4', "
               "body = CAST('{}{}0123' AS BLOB)");
    su_post_body(&o.tr, o.path, &o.b, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 8);
    assert_memory_equal(r.body, "{}{}0123", 8);
    assert_int_equal(r.json_header_len, 4);
    su_resp_free(&r);
    one_free(&o);
}

static void test_damaged_stored_update(void **state)
{
    struct su_fx *f = *state;
    struct one o;
    struct su_resp r;
    one_step(f, &o, NULL);
    size_t len0, len1;
    unsigned char *s0 = su_export_state(f->base, o.tr.id, &len0, "application/octet-stream");
    set_stored(f, o.tr.id, "body = substr(body, 1, 3)");
    su_post_body(&o.tr, o.path, &o.b, &r);
    assert_int_equal(r.status, 500);
    json_t *p = json_loads(r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "INTERNAL");
    assert_non_null(strstr(json_string_value(json_object_get(p, "detail")), "3 bytes of update"));
    json_decref(p);
    su_resp_free(&r);
    set_stored(f, o.tr.id, "report = NULL");
    su_post_body(&o.tr, o.path, &o.b, &r);
    assert_int_equal(r.status, 500);
    assert_non_null(strstr(r.body, "no report"));
    su_resp_free(&r);
    unsigned char *s1 = su_export_state(f->base, o.tr.id, &len1, "application/octet-stream");
    assert_int_equal(len0, len1);
    assert_memory_equal(s0, s1, len0);
    /* The session itself is intact: step 2 goes on. */
    double g[D];
    su_grad(2, 0, g);
    struct su_step s = {.t = 2, .grad = g};
    su_body_free(&o.b);
    su_step_body(&o.tr, &s, &o.b);
    su_post_body(&o.tr, o.path, &o.b, &r);
    assert_int_equal(r.status, 200);
    su_resp_free(&r);
    free(s0);
    free(s1);
    one_free(&o);
}

/* A problem reply: @status, @reason, and errors[0].path @path unless NULL. */
static void expect_problem(const struct su_resp *r, long status, const char *reason,
                           const char *path)
{
    if (r->status != status)
        fail_msg("status %ld, want %ld: %s", r->status, status, r->body);
    json_t *p = json_loads(r->body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), reason);
    json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
    if (path)
        assert_string_equal(json_string_value(json_object_get(e0, "path")), path);
    json_decref(p);
}

static void post_text(const struct one *o, const char *text, struct su_resp *r)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", o->tr.base, o->path);
    su_request("POST", url, text, strlen(text), NULL, 0, r);
}

/* Session @o stays at step 1 with the state @s0 (@len0 bytes). */
static void expect_unchanged(struct su_fx *f, const struct one *o, const unsigned char *s0,
                             size_t len0)
{
    size_t len;
    unsigned char *s = su_export_state(f->base, o->tr.id, &len, "application/octet-stream");
    assert_int_equal(len, len0);
    assert_memory_equal(s, s0, len0);
    assert_int_equal(su_session_step(f->base, o->tr.id), 1);
    free(s);
}

/* The request of step 1 in another encoding is the same request: its
 * replay, byte for byte the first reply (in the first request's encoding). */
static void test_same_tensors_other_encoding(void **state)
{
    struct su_fx *f = *state;
    struct one o;
    struct su_resp first, r;
    one_step(f, &o, &first);
    for (int enc = 1; enc <= 2; enc++) {
        struct su_trainer tr = o.tr;
        struct su_body b = {0};
        tr.binary = enc == 2;
        step1_body(&tr, enc, &b);
        su_post_body(&tr, o.path, &b, &r);
        expect_same(&first, &r, names[enc]);
        su_resp_free(&r);
        su_body_free(&b);
    }
    /* The blocks in the other order, numbers written otherwise: the same. */
    double g[D];
    su_grad(1, 0, g);
    char *text = su_step_text(1, g, 1), *with_loss = malloc(strlen(text) + 16);
    assert_non_null(with_loss);
    text[strlen(text) - 1] = '\0';
    sprintf(with_loss, "{\"loss\":0.0,%s}", text + 1);
    post_text(&o, with_loss, &r);
    free(with_loss);
    expect_same(&first, &r, "gain first");
    su_resp_free(&r);
    free(text);
    su_resp_free(&first);
    one_free(&o);
}

/* FP32 data is rounded to float: FP64 data holding those floats is the
 * same request, the unrounded FP64 values are another. */
static void test_fp32_and_fp64(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l, .fp32 = 1};
    struct su_body b = {0};
    struct su_resp first, r;
    char path[128];
    su_trainer_create(&tr, "adagrad_diag", NULL);
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", tr.id);
    step1_body(&tr, 0, &b);
    su_post_body(&tr, path, &b, &first);
    assert_int_equal(first.status, 200);
    su_body_free(&b);
    double g[D], rounded[D];
    su_grad(1, 0, g);
    for (int i = 0; i < D; i++) {
        /* Through memory: GCC 12.2 at -O2 -ftree-vectorize drops the
         * rounding of (float) in a vectorized loop like this one. */
        volatile float x = (float)g[i];
        rounded[i] = x;
    }
    struct su_trainer t64 = tr;
    t64.fp32 = 0;
    step1_body_of(&t64, rounded, 0, &b);
    su_post_body(&t64, path, &b, &r);
    expect_same(&first, &r, "FP64 of the FP32 values");
    su_resp_free(&r);
    su_body_free(&b);
    step1_body_of(&t64, g, 0, &b);
    su_post_body(&t64, path, &b, &r);
    expect_problem(&r, 422, "STEP_MISMATCH", "");
    su_resp_free(&r);
    su_body_free(&b);
    su_resp_free(&first);
    curv_layout_free(l);
}

/* Every other request for step 1 is refused, before and after a restart,
 * and none changes the session; the first request still gets its reply. */
static void test_other_request_refused(void **state)
{
    struct su_fx *f = *state;
    struct one o;
    struct su_resp first, r;
    one_step(f, &o, &first);
    size_t len0;
    unsigned char *s0 = su_export_state(f->base, o.tr.id, &len0, "application/octet-stream");
    double g[D];
    su_grad(1, 0, g);
    g[3] = nextafter(g[3], 10.0); /* one ulp off */
    for (int restarted = 0; restarted <= 1; restarted++) {
        struct su_body b = {0};
        step1_body_of(&o.tr, g, 0, &b);
        su_post_body(&o.tr, o.path, &b, &r);
        expect_problem(&r, 422, "STEP_MISMATCH", "");
        json_t *p = json_loads(r.body, 0, NULL);
        json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
        const char *stored = json_string_value(json_object_get(e0, "expected"));
        const char *got = json_string_value(json_object_get(e0, "got"));
        assert_true(strncmp(stored, "mm3-128:", 8) == 0 && strlen(stored) == 40);
        assert_true(strncmp(got, "mm3-128:", 8) == 0 && strcmp(stored, got) != 0);
        assert_non_null(strstr(json_string_value(json_object_get(p, "detail")), "step 2"));
        json_decref(p);
        su_resp_free(&r);
        su_body_free(&b);
        /* The same gradient with another loss. */
        char *text = su_step_text(1, (su_grad(1, 0, g), g), 0);
        text[strlen(text) - 1] = '\0';
        char *with_loss = malloc(strlen(text) + 32);
        assert_non_null(with_loss);
        sprintf(with_loss, "%s,\"loss\":0.5}", text);
        post_text(&o, with_loss, &r);
        expect_problem(&r, 422, "STEP_MISMATCH", "");
        su_resp_free(&r);
        free(with_loss);
        free(text);
        post_text(&o, "{\"step\":1}", &r);
        expect_problem(&r, 400, "BAD_TENSOR", "/gradients");
        su_resp_free(&r);
        post_text(&o,
                  "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,5],\"datatype\":"
                  "\"FP64\",\"data\":[NaN,0,0,0,0,0,0,0,0,0]},{\"name\":\"gain\",\"shape\":[1],"
                  "\"datatype\":\"FP64\",\"data\":[1]}]}",
                  &r);
        expect_problem(&r, 422, "NON_FINITE", NULL);
        su_resp_free(&r);
        post_text(&o,
                  "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[5,2],\"datatype\":"
                  "\"FP64\",\"data\":[0,0,0,0,0,0,0,0,0,0]},{\"name\":\"gain\",\"shape\":[1],"
                  "\"datatype\":\"FP64\",\"data\":[1]}]}",
                  &r);
        expect_problem(&r, 400, "SHAPE_MISMATCH", "/gradients/0/shape");
        su_resp_free(&r);
        expect_unchanged(f, &o, s0, len0);
        su_post_body(&o.tr, o.path, &o.b, &r);
        expect_same(&first, &r, restarted ? "after a restart" : "after the refusals");
        su_resp_free(&r);
        su_grad(1, 0, g);
        g[3] = nextafter(g[3], 10.0);
        if (!restarted)
            su_fx_restart(f);
    }
    free(s0);
    su_resp_free(&first);
    one_free(&o);
}

/* A step stored before digests were (none with its reply) keeps the old
 * rule: its replay, whatever the request holds. */
static void test_step_without_digest(void **state)
{
    struct su_fx *f = *state;
    struct one o;
    struct su_resp first, r;
    one_step(f, &o, &first);
    assert_int_equal(su_raw_int(f->db, "SELECT count(*) FROM step_responses"
                                       " WHERE request_digest LIKE 'mm3-128:%'"),
                     1);
    set_stored(f, o.tr.id, "request_digest = NULL");
    double g[D];
    su_grad(2, 0, g);
    struct su_body b = {0};
    step1_body_of(&o.tr, g, 0, &b);
    su_post_body(&o.tr, o.path, &b, &r);
    expect_same(&first, &r, "no digest stored");
    su_resp_free(&r);
    su_body_free(&b);
    su_resp_free(&first);
    one_free(&o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replay_every_encoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_of_a_whole_stored_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_stored_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_tensors_other_encoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fp32_and_fp64, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_request_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_without_digest, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
