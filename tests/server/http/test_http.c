/* SPDX-License-Identifier: MIT */
/* The HTTP layer over a real socket: routing, problem+json, body limits,
 * the version catalogue, the graceful drain. */
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "curv.h"
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

struct fixture {
    struct curvd_server srv;
    char base[64];
    pthread_t stopper; /* test_drain's, joined before the teardown stops it */
    int stopping;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    f->srv.cfg.max_body = 4096;
    su_start(&f->srv, f->base, sizeof f->base);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    if (f->stopping)
        pthread_join(f->stopper, NULL);
    su_stop(&f->srv);
    free(f);
    return 0;
}

static json_t *get_json(const char *base, const char *method, const char *path, long want,
                        const char *want_ctype)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct su_resp r;
    su_request(method, url, NULL, 0, NULL, 0, &r);
    if (r.status != want)
        fail_msg("%s %s: status %ld, want %ld: %s", method, path, r.status, want, r.body);
    assert_string_equal(r.content_type, want_ctype);
    json_error_t je;
    json_t *j = json_loads(r.body, 0, &je);
    if (!j)
        fail_msg("%s %s: body is not JSON: %s", method, path, je.text);
    su_resp_free(&r);
    return j;
}

static void test_health(void **state)
{
    struct fixture *f = *state;
    json_t *j = get_json(f->base, "GET", "/healthz", 200, "application/json");
    assert_string_equal(json_string_value(json_object_get(j, "status")), "ok");
    json_decref(j);
    j = get_json(f->base, "GET", "/livez", 200, "application/json");
    json_decref(j);
    /* No store in this fixture: not ready. */
    j = get_json(f->base, "GET", "/readyz", 503, "application/problem+json");
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "NO_DATABASE");
    json_decref(j);
}

/* Problem documents carry every RFC 9457 member the API promises. */
static void check_problem(json_t *j, int status, const char *reason, const char *instance)
{
    assert_int_equal(json_integer_value(json_object_get(j, "status")), status);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), reason);
    assert_string_equal(json_string_value(json_object_get(j, "instance")), instance);
    assert_non_null(json_string_value(json_object_get(j, "title")));
    assert_non_null(json_string_value(json_object_get(j, "detail")));
    const char *type = json_string_value(json_object_get(j, "type"));
    assert_non_null(type);
    assert_non_null(strstr(type, "https://curvd.dev/problems/"));
    assert_true(json_is_array(json_object_get(j, "errors")));
}

static void test_not_found_and_method(void **state)
{
    struct fixture *f = *state;
    json_t *j = get_json(f->base, "GET", "/nope", 404, "application/problem+json");
    check_problem(j, 404, "NOT_FOUND", "/nope");
    json_decref(j);
    j = get_json(f->base, "DELETE", "/healthz", 405, "application/problem+json");
    check_problem(j, 405, "METHOD_NOT_ALLOWED", "/healthz");
    json_decref(j);
}

static void test_body_limit(void **state)
{
    struct fixture *f = *state;
    char url[128];
    snprintf(url, sizeof url, "%s/v1/version", f->base);
    char *big = malloc(10000);
    memset(big, ' ', 10000);
    for (int chunked = 0; chunked <= 1; chunked++) {
        struct su_resp r;
        su_request("POST", url, big, 10000, NULL, chunked, &r);
        assert_int_equal(r.status, 413);
        json_t *j = json_loads(r.body, 0, NULL);
        assert_non_null(j);
        check_problem(j, 413, "TOO_LARGE", "/v1/version");
        json_decref(j);
        su_resp_free(&r);
    }
    free(big);
}

/* The catalogue lists every optimizer with every parameter of libcurv. */
static void test_version(void **state)
{
    struct fixture *f = *state;
    json_t *j = get_json(f->base, "GET", "/v1/version", 200, "application/json");
    assert_string_equal(json_string_value(json_object_get(j, "libcurv")), curv_version());
    json_t *opts = json_object_get(j, "optimizers");
    assert_int_equal(json_array_size(opts), CURV_OPT_KIND_COUNT);
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        json_t *o = json_array_get(opts, (size_t)k);
        assert_string_equal(json_string_value(json_object_get(o, "name")),
                            curv_opt_kind_name((curv_opt_kind)k));
        json_t *ps = json_object_get(o, "params");
        assert_int_equal(json_array_size(ps), curv_opt_param_count((curv_opt_kind)k));
        for (size_t i = 0; i < json_array_size(ps); i++) {
            json_t *p = json_array_get(ps, i);
            assert_non_null(json_object_get(p, "default"));
            assert_non_null(json_string_value(json_object_get(p, "doc")));
        }
    }
    json_decref(j);
}

static void test_route_match(void **state)
{
    (void)state;
    const char *params[CURVD_MAX_PARAMS];
    struct curvd_captures caps;
    size_t n = 0;
    int known = 0;
    assert_non_null(curvd_route_match("GET", "/healthz", &caps, params, &n, &known));
    assert_null(curvd_route_match("GET", "/healthz/", &caps, params, &n, &known));
    assert_null(curvd_route_match("GET", "/health", &caps, params, &n, &known));
    assert_int_equal(known, 0);
    assert_null(curvd_route_match("POST", "/healthz", &caps, params, &n, &known));
    assert_int_equal(known, 1);
    const struct curvd_route *rt = curvd_route_match(
        "POST", "/v1/sessions/abc/steps/7/callbacks/c9", &caps, params, &n, &known);
    assert_non_null(rt);
    assert_int_equal(n, 3);
    assert_string_equal(params[0], "abc");
    assert_string_equal(params[1], "7");
    assert_string_equal(params[2], "c9");
    assert_true(rt->heavy);
    /* A segment longer than the capture buffer does not match. */
    char longp[256];
    snprintf(longp, sizeof longp, "/v1/sessions/%0120d", 1);
    assert_null(curvd_route_match("GET", longp, &caps, params, &n, &known));
}

static void *stop_main(void *srv)
{
    su_stop(srv);
    return NULL;
}

static void send_text(int fd, const char *s)
{
    assert_int_equal(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

/* A connection whose request has begun (its headers were handled: the
 * daemon said "100 Continue") and waits for its 2-byte body. */
static int begun_request(unsigned port, const char *method, const char *path)
{
    int fd = su_raw_connect(port);
    assert_true(fd >= 0);
    char head[256], buf[1024];
    snprintf(head, sizeof head,
             "%s %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: 2\r\nExpect: 100-continue\r\n\r\n",
             method, path);
    send_text(fd, head);
    size_t n;
    assert_int_equal(su_raw_read(fd, buf, sizeof buf, &n, "\r\n\r\n", 5000), 1);
    assert_non_null(strstr(buf, "HTTP/1.1 100"));
    return fd;
}

/* Send the body "{}" and read the reply up to the end of the connection. */
static void finish_request(int fd, char *buf, size_t cap)
{
    size_t n;
    send_text(fd, "{}");
    assert_int_equal(su_raw_read(fd, buf, cap, &n, NULL, 5000), 0);
    assert_non_null(strstr(buf, "\r\nConnection: close\r\n"));
    close(fd);
}

/* The drain (SIGTERM). Once it has begun: a new connection is closed
 * unanswered, never left waiting; a heavy request (one that would be
 * queued for the workers) is answered 503 DRAINING; every reply closes its
 * connection; requests under way still get their replies. */
static void test_drain(void **state)
{
    struct fixture *f = *state;
    unsigned port = curvd_http_port(&f->srv);
    char buf[4096];
    size_t n;
    int heavy = begun_request(port, "POST", "/v1/sessions");
    int light = begun_request(port, "POST", "/healthz"); /* keeps the daemon up */

    assert_int_equal(pthread_create(&f->stopper, NULL, stop_main, &f->srv), 0);
    f->stopping = 1;
    int refused = 0;
    for (int i = 0; i < 200 && !refused; i++) { /* until the drain has begun */
        int b = su_raw_connect(port);
        assert_true(b >= 0);
        send_text(b, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
        int rc = su_raw_read(b, buf, sizeof buf, &n, "\r\n\r\n", 2000);
        close(b);
        if (rc < 0)
            fail_msg("a connection made during the drain was left waiting");
        refused = rc == 0 && n == 0;
        if (!refused)
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    assert_true(refused);

    /* Closed by the daemon after the reply, not by its stopping: the
     * unfinished request on the other connection holds the stop back. */
    finish_request(heavy, buf, sizeof buf);
    assert_non_null(strstr(buf, "HTTP/1.1 503"));
    assert_non_null(strstr(buf, "\"reason\":\"DRAINING\""));
    finish_request(light, buf, sizeof buf);
    assert_non_null(strstr(buf, "HTTP/1.1 405"));
    assert_int_equal(pthread_join(f->stopper, NULL), 0);
    f->stopping = 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_health, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_found_and_method, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_version, setup, teardown),
        cmocka_unit_test(test_route_match),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
