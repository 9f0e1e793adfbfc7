/* SPDX-License-Identifier: MIT */
/*
 * Replays of a completed step against a real daemon. The daemon stores a
 * step's reply compactly (the update's wire bytes and the report) and
 * renders it again on replay: the replay must be the first reply byte for
 * byte, in every encoding and datatype, from memory and after a restart.
 * Replies stored whole (the earlier form) replay as stored; a damaged
 * stored update is a 500, never a wrong answer, and the session goes on.
 */
#include <jansson.h>
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

/* Step 1's body in encoding @enc: the trainer's for JSON and binary; base64
 * written here (the test trainer has no base64). */
static void step1_body(const struct su_trainer *tr, int enc, struct su_body *b)
{
    double g[D];
    su_grad(1, 0, g);
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
    curvd_out_lit(&o, "}");
    assert_int_equal(curvd_out_finish(&o, NULL), 0);
    *b = (struct su_body){.len = o.len, .cap = o.len};
    unsigned char *taken = curvd_out_take(&o);
    b->p = malloc(o.len); /* su_body_free frees it */
    assert_non_null(b->p);
    memcpy(b->p, taken, o.len);
    curvd_mem_free(taken);
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

static void one_step(struct su_fx *f, struct one *o)
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
    one_step(f, &o);
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
    one_step(f, &o);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_replay_every_encoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_of_a_whole_stored_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_stored_update, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
