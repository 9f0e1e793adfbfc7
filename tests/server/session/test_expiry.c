/* SPDX-License-Identifier: MIT */
/*
 * Idle TTLs end to end: set at create and by PATCH, shown by GET, applied
 * by curvd_svc_expire() on a fake clock (the sweeper's own call, with a
 * time of the test's choosing), with the daemon's --idle-ttl default and
 * a TTL of 0 that never expires; expiries counted in /metrics. Then the
 * sweeper thread itself, on the wall clock, with a 1 s TTL. And a
 * session's name and labels through create, GET, list (filtered by a
 * label, across pages) and PATCH.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "session/service.h"
#include "srvutil.h"
#include "testutil.h"

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Create an sgd session with the body member @ttl ("" for none). */
static void create(const char *base, const char *ttl, char id[33])
{
    json_t *lj = su_layout_json();
    char *layout = json_dumps(lj, JSON_COMPACT);
    json_decref(lj);
    char body[1024];
    snprintf(body, sizeof body, "{\"optimizer\": \"sgd\", \"layout\": %s%s%s}", layout,
             *ttl ? ", \"idle_ttl_s\": " : "", ttl);
    free(layout);
    json_t *j = su_call(base, "POST", "/v1/sessions", body, 201, NULL);
    snprintf(id, 33, "%s", json_string_value(json_object_get(j, "id")));
    json_t *t = json_object_get(j, "idle_ttl_s");
    assert_non_null(t);
    if (*ttl && strcmp(ttl, "null") != 0)
        assert_int_equal((long long)json_number_value(t), atoll(ttl));
    else
        assert_true(json_is_null(t));
    json_decref(j);
}

static long get_status(const char *base, const char *id)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions/%s", base, id);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    long s = r.status;
    su_resp_free(&r);
    return s;
}

static long long expired_total(const char *base)
{
    char url[256];
    snprintf(url, sizeof url, "%s/metrics", base);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    const char *p = strstr(r.body, "\ncurvd_sessions_expired_total ");
    assert_non_null(p);
    long long n = atoll(p + strlen("\ncurvd_sessions_expired_total "));
    su_resp_free(&r);
    return n;
}

static void test_fake_clock(void **state)
{
    (void)state;
    struct curvd_server srv = {0};
    char dir[256], db[300], base[64], err[256];
    su_tmpdir(dir, sizeof dir, NULL, "expiry", db, sizeof db);
    srv.cfg.db_path = db;
    srv.cfg.max_sessions = 16;
    srv.cfg.mem_budget = 1 << 26;
    srv.cfg.sweep_ms = 3600000; /* the thread stays out of the way */
    su_daemon_start(&srv, base, sizeof base);

    char a[33], b[33], c[33], d[33];
    create(base, "5", a);    /* 5 s of its own */
    create(base, "", b);     /* the default */
    create(base, "0", c);    /* never */
    create(base, "null", d); /* the default, said so */
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", b);
    json_t *j = su_call(base, "PATCH", path, "{\"idle_ttl_s\": 10}", 200, NULL);
    assert_int_equal((long long)json_number_value(json_object_get(j, "idle_ttl_s")), 10);
    json_decref(j);
    j = su_call(base, "GET", path, NULL, 200, NULL);
    assert_int_equal((long long)json_number_value(json_object_get(j, "idle_ttl_s")), 10);
    json_decref(j);

    int64_t t0 = wall_ms();
    assert_int_equal(curvd_svc_expire(&srv, t0, err, sizeof err), 0);
    /* 6 s on: a goes; b (10 s) stays; the default is off. */
    assert_int_equal(curvd_svc_expire(&srv, t0 + 6000, err, sizeof err), 1);
    assert_int_equal(get_status(base, a), 404);
    assert_int_equal(get_status(base, b), 200);
    assert_int_equal(expired_total(base), 1);
    /* 11 s on: b goes; d stays without a default. */
    assert_int_equal(curvd_svc_expire(&srv, t0 + 11000, err, sizeof err), 1);
    assert_int_equal(get_status(base, b), 404);
    assert_int_equal(get_status(base, d), 200);
    /* A default of 60 s, a year on: d goes, c (0) never. */
    srv.cfg.idle_ttl_s = 60;
    assert_int_equal(curvd_svc_expire(&srv, t0 + 365LL * 86400000, err, sizeof err), 1);
    assert_int_equal(get_status(base, d), 404);
    assert_int_equal(get_status(base, c), 200);
    assert_int_equal(expired_total(base), 3);
    /* PATCH back to the default: c goes too. */
    snprintf(path, sizeof path, "/v1/sessions/%s", c);
    json_decref(su_call(base, "PATCH", path, "{\"idle_ttl_s\": null}", 200, NULL));
    assert_int_equal(curvd_svc_expire(&srv, t0 + 365LL * 86400000, err, sizeof err), 1);
    assert_int_equal(get_status(base, c), 404);
    assert_int_equal(expired_total(base), 4);
    /* A deleted session's TTL cannot be set. */
    json_decref(su_call(base, "PATCH", path, "{\"idle_ttl_s\": 5}", 404, NULL));

    su_daemon_stop(&srv);
    su_rmtree(dir);
}

static void test_sweeper_thread(void **state)
{
    (void)state;
    struct curvd_server srv = {0};
    char dir[256], db[300], base[64];
    su_tmpdir(dir, sizeof dir, NULL, "sweeper", db, sizeof db);
    srv.cfg.db_path = db;
    srv.cfg.max_sessions = 16;
    srv.cfg.mem_budget = 1 << 26;
    srv.cfg.sweep_ms = 100;
    su_daemon_start(&srv, base, sizeof base);
    char a[33], b[33];
    create(base, "1", a);
    create(base, "", b);
    double t0 = su_now_s();
    while (get_status(base, a) == 200 && su_now_s() - t0 < 10)
        nanosleep(&(struct timespec){0, 50000000L}, NULL);
    assert_int_equal(get_status(base, a), 404);
    assert_true(su_now_s() - t0 >= 0.9);
    assert_int_equal(get_status(base, b), 200);
    assert_int_equal(expired_total(base), 1);
    su_daemon_stop(&srv);
    su_rmtree(dir);
}

static size_t count_listed(const char *base, const char *query, const char *want_id)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/sessions?page_size=1&%s", query);
    size_t n = 0;
    int seen = 0;
    for (;;) {
        json_t *j = su_call(base, "GET", path, NULL, 200, NULL);
        json_t *arr = json_object_get(j, "sessions"), *it;
        size_t i;
        json_array_foreach(arr, i, it)
        {
            n++;
            if (want_id && strcmp(json_string_value(json_object_get(it, "id")), want_id) == 0)
                seen = 1;
        }
        const char *tok = json_string_value(json_object_get(j, "next_page_token"));
        if (!tok) {
            json_decref(j);
            break;
        }
        snprintf(path, sizeof path, "/v1/sessions?page_size=1&%s&page_token=%s", query, tok);
        json_decref(j);
    }
    if (want_id)
        assert_true(seen);
    return n;
}

static void test_name_and_labels(void **state)
{
    (void)state;
    struct curvd_server srv = {0};
    char dir[256], db[300], base[64];
    su_tmpdir(dir, sizeof dir, NULL, "labels", db, sizeof db);
    srv.cfg.db_path = db;
    srv.cfg.max_sessions = 16;
    srv.cfg.mem_budget = 1 << 26;
    su_daemon_start(&srv, base, sizeof base);
    json_t *lj = su_layout_json();
    char *layout = json_dumps(lj, JSON_COMPACT);
    json_decref(lj);
    char body[1024], a[33], b[33], c[33];
    char *ids[3] = {a, b, c};
    const char *labels[3] = {"{\"run\": \"exp-7\", \"team\": \"x\"}", "{\"run\": \"exp-7\"}",
                             "{\"run\": \"exp-8\"}"};
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body,
                 "{\"optimizer\": \"sgd\", \"layout\": %s, \"name\": \"run %d\", \"labels\": %s}",
                 layout, i, labels[i]);
        json_t *j = su_call(base, "POST", "/v1/sessions", body, 201, NULL);
        snprintf(ids[i], 33, "%s", json_string_value(json_object_get(j, "id")));
        assert_int_equal(json_object_size(json_object_get(j, "labels")), i == 0 ? 2 : 1);
        json_decref(j);
    }
    free(layout);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", a);
    json_t *j = su_call(base, "GET", path, NULL, 200, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "run 0");
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "labels"), "team")),
                        "x");
    json_decref(j);
    /* Listed by label, one per page. */
    assert_int_equal(count_listed(base, "label=run=exp-7", a), 2);
    assert_int_equal(count_listed(base, "label=run=exp-8", c), 1);
    assert_int_equal(count_listed(base, "label=team=x", a), 1);
    assert_int_equal(count_listed(base, "label=run=nope", NULL), 0);
    assert_int_equal(count_listed(base, "page_size=1", NULL), 3);
    /* PATCH replaces the labels and keeps the name; then clears both. */
    snprintf(path, sizeof path, "/v1/sessions/%s", b);
    j = su_call(base, "PATCH", path, "{\"labels\": {\"run\": \"exp-8\"}}", 200, NULL);
    assert_string_equal(json_string_value(json_object_get(j, "name")), "run 1");
    json_decref(j);
    assert_int_equal(count_listed(base, "label=run=exp-8", b), 2);
    assert_int_equal(count_listed(base, "label=run=exp-7", a), 1);
    j = su_call(base, "PATCH", path,
                "{\"name\": null, \"labels\": null, \"config\": {\"lr\": 0.5}}", 200, NULL);
    assert_true(json_is_null(json_object_get(j, "name")));
    assert_int_equal(json_object_size(json_object_get(j, "labels")), 0);
    json_decref(j);
    assert_int_equal(count_listed(base, "label=run=exp-8", c), 1);
    su_daemon_stop(&srv);
    su_rmtree(dir);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fake_clock),
        cmocka_unit_test(test_sweeper_thread),
        cmocka_unit_test(test_name_and_labels),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
