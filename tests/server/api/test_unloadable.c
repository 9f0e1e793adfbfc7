/* SPDX-License-Identifier: MIT */
/*
 * A session whose stored state cannot be loaded (a damaged row; a blob
 * that an older daemon stored and this one refuses) answers every request
 * that needs its optimizer with 409 SESSION_UNLOADABLE, naming it and
 * libcurv's reason, each time (never a 503 to retry forever), while its
 * stored blob can still be exported as it is and the session deleted.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srvutil.h"
#include "testutil.h"

static int setup(void **state)
{
    *state = su_fx_new("unloadable");
    return 0;
}

static int teardown(void **state)
{
    su_fx_free(*state);
    return 0;
}

/* @method @path with @body: 409 SESSION_UNLOADABLE naming session @id. */
static void expect_unloadable(struct su_fx *f, const char *method, const char *path,
                              const char *body, const char *id)
{
    struct su_resp r;
    json_decref(su_call(f->base, method, path, body, 409, &r));
    json_t *p = json_loads(r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "SESSION_UNLOADABLE");
    const char *detail = json_string_value(json_object_get(p, "detail"));
    if (!strstr(detail, id) || !strstr(detail, "cannot be loaded: state: bad magic") ||
        !strstr(detail, "/state") || !strstr(detail, "DELETE"))
        fail_msg("%s %s: %s", method, path, detail);
    json_decref(p);
    su_resp_free(&r);
}

static void test_damaged_row(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "adagrad_diag", NULL);
    double g[SU_D];
    su_grad(1, 0, g);
    char *step1 = su_step_text(1, g, 0), *step2 = su_step_text(2, g, 0);
    char path[160], sql[256];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", tr.id);
    json_decref(su_call(f->base, "POST", path, step1, 200, NULL));
    /* Every byte of the first part zeroed, behind the daemon's back, then
     * a restart so that the session must be read again. */
    snprintf(sql, sizeof sql,
             "UPDATE state_parts SET bytes = zeroblob(length(bytes))"
             " WHERE session_id = '%s' AND idx = 0",
             tr.id);
    su_raw_exec(f->db, sql);
    su_fx_restart(f);
    for (int again = 0; again < 2; again++)
        expect_unloadable(f, "POST", path, step2, tr.id);
    expect_unloadable(f, "POST", path, step1, tr.id); /* the replay needs it too */
    char cb[200], one[120];
    snprintf(cb, sizeof cb, "/v1/sessions/%s/steps/2/callbacks/1", tr.id);
    expect_unloadable(f, "POST", cb, "{\"products\":[]}", tr.id);
    snprintf(one, sizeof one, "/v1/sessions/%s", tr.id);
    expect_unloadable(f, "PATCH", one, "{\"config\":{\"lr\":0.5}}", tr.id);
    /* What needs no optimizer still works: the row, the raw export, and
     * the PATCH of what only the row holds. */
    json_t *s = su_call(f->base, "GET", one, NULL, 200, NULL);
    assert_int_equal(json_integer_value(json_object_get(s, "step")), 1);
    json_decref(s);
    json_decref(su_call(f->base, "PATCH", one, "{\"name\":\"broken\"}", 200, NULL));
    size_t len, raw_len;
    unsigned char *blob = su_export_state(f->base, tr.id, &len, "application/octet-stream");
    unsigned char *raw = su_raw_state(f->db, tr.id, &raw_len);
    assert_int_equal(len, raw_len);
    assert_memory_equal(blob, raw, len);
    free(blob);
    free(raw);
    json_decref(su_call(f->base, "DELETE", one, NULL, 204, NULL));
    json_decref(su_call(f->base, "GET", one, NULL, 404, NULL));
    free(step1);
    free(step2);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_damaged_row, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
