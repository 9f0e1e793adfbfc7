/* SPDX-License-Identifier: MIT */
/*
 * The daemon on PostgreSQL (build/curvd --db postgresql://...): sessions
 * created and stepped, the daemon killed (SIGKILL) and started again on
 * the same database; the last step re-posted gets its stored reply byte
 * for byte, the exported state is the one from before the kill, and the
 * steps go on. Every reply is compared with an in-process daemon on
 * SQLite fed the same requests: both backends answer byte for byte alike.
 * Sessions: AdaGrad-diag and MBAG, their steps committed to the step log
 * and snapshots (the daemon as cu_spawn runs it), states in parts.
 * Runs against the cluster of CURVD_TEST_DB (make test-pg), and is
 * skipped, saying so, without one.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crash_util.h"
#include "srvutil.h"
#include "testutil.h"

enum { NSESS = 2, STEPS = 6 };
static const char *const kinds[NSESS] = {"adagrad_diag", "mbag"};

/* Post step @t of every session to the PostgreSQL daemon @pg and to the
 * SQLite one @sq: the same reply from both. The last body of each
 * session is kept in @body[si] for its replay. */
static void step_both(const char *pg, const char *sq, struct cu_sess *s, char ids[][33], long t,
                      char **body)
{
    for (int si = 0; si < NSESS; si++) {
        double g[SU_D];
        su_grad(t, 0.3 * si, g);
        free(body[si]);
        body[si] = su_step_text(t, g, 0);
        char path[128];
        struct su_resp a, b;
        snprintf(path, sizeof path, "/v1/sessions/%s/steps", s[si].id);
        json_decref(su_call(pg, "POST", path, body[si], 200, &a));
        snprintf(path, sizeof path, "/v1/sessions/%s/steps", ids[si]);
        json_decref(su_call(sq, "POST", path, body[si], 200, &b));
        if (a.len != b.len || memcmp(a.body, b.body, a.len) != 0)
            fail_msg("%s step %ld: PostgreSQL and SQLite replied differently:\n%s\n%s", kinds[si],
                     t, a.body, b.body);
        su_resp_free(&b);
        cu_sess_ack(&s[si], t, &a);
        su_resp_free(&a);
    }
}

static void test_serves_from_postgres(void **state)
{
    (void)state;
    if (!su_pg_url()) {
        print_message("PostgreSQL not set up (CURVD_TEST_DB is unset): skipped; make test-pg\n");
        skip();
    }
    char dir[64], unused[160], url[512];
    su_tmpdir(dir, sizeof dir, NULL, "pg-daemon", unused, sizeof unused);
    su_db(dir, "daemon", url, sizeof url);
    struct cu_daemon d = {.db = url, .err_fd = -1};
    cu_spawn(&d);
    cu_wait_ready(&d);
    struct su_fx *ref = su_fx_new("pg-daemon-ref"); /* SQLite, in process */
    struct cu_sess s[NSESS] = {0};
    char ref_ids[NSESS][33];
    char *body[NSESS] = {0};
    for (int si = 0; si < NSESS; si++) {
        json_decref(su_create(d.base, kinds[si], NULL, 201, s[si].id, NULL));
        json_decref(su_create(ref->base, kinds[si], NULL, 201, ref_ids[si], NULL));
    }
    for (long t = 1; t <= STEPS; t++)
        step_both(d.base, ref->base, s, ref_ids, t, body);
    /* What the store holds, read without the daemon. */
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT step FROM sessions WHERE id = '%s'", s[0].id);
    assert_int_equal(su_raw_int(url, sql), STEPS);
    size_t len[NSESS];
    unsigned char *before[NSESS];
    for (int si = 0; si < NSESS; si++)
        before[si] = su_export_state(d.base, s[si].id, &len[si], NULL);

    cu_reap(&d); /* SIGKILL: nothing but what PostgreSQL committed is left */
    cu_spawn(&d);
    cu_wait_ready(&d);
    for (int si = 0; si < NSESS; si++) {
        cu_expect_replay(d.base, &s[si], body[si], kinds[si]);
        size_t n = 0;
        unsigned char *after = su_export_state(d.base, s[si].id, &n, NULL);
        assert_int_equal(n, len[si]);
        assert_memory_equal(after, before[si], n);
        free(after);
        free(before[si]);
    }
    for (long t = STEPS + 1; t <= STEPS + 2; t++)
        step_both(d.base, ref->base, s, ref_ids, t, body);
    assert_int_equal(su_session_step(d.base, s[1].id), STEPS + 2);
    cu_reap(&d);
    su_fx_free(ref);
    for (int si = 0; si < NSESS; si++) {
        free(body[si]);
        free(s[si].last);
    }
    su_rmtree(dir);
}

int main(int argc, char **argv)
{
    int rc = cu_main_begin(argc, argv, "test_pg_daemon");
    if (rc >= 0)
        return rc;
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_serves_from_postgres)};
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
