/* SPDX-License-Identifier: MIT */
/* Bearer tokens: /v1 needs one, each token is a tenant, a tenant never
 * sees another's sessions (404, not 403), operations routes stay open. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http/auth.h"
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

#define TOKEN_A "token-of-alice-0123456789"
#define TOKEN_B "token-of-bob-9876543210"

struct fx {
    struct curvd_server srv;
    char dir[64], db[128], tokens[128], base[64];
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "auth", f->db, sizeof f->db);
    snprintf(f->tokens, sizeof f->tokens, "%s/tokens", f->dir);
    FILE *t = fopen(f->tokens, "w");
    fprintf(t, "# token tenant\n%s alice\n\n%s bob\n", TOKEN_A, TOKEN_B);
    fclose(t);
    f->srv.cfg.db_path = f->db;
    f->srv.cfg.token_file = f->tokens;
    f->srv.cfg.max_sessions = 10;
    f->srv.cfg.mem_budget = 1 << 24;
    su_daemon_start(&f->srv, f->base, sizeof f->base);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    su_set_token(NULL);
    su_daemon_stop(&f->srv);
    assert_int_equal(su_rmtree(f->dir), 0);
    free(f);
    return 0;
}

static long request(struct fx *f, const char *method, const char *path, const char *body,
                    char *id_out)
{
    char url[256];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    struct su_resp r;
    su_request(method, url, body, body ? strlen(body) : 0, NULL, 0, &r);
    if (id_out) {
        json_t *j = json_loads(r.body, 0, NULL);
        snprintf(id_out, 33, "%s", json_string_value(json_object_get(j, "id")));
        json_decref(j);
    }
    long st = r.status;
    su_resp_free(&r);
    return st;
}

static void test_tenants(void **state)
{
    struct fx *f = *state;
    const char *create = "{\"optimizer\":\"sgd\",\"layout\":[{\"name\":\"w\",\"kind\":\"vector\","
                         "\"shape\":[3]}]}";
    char id[33], path[128];
    su_set_token(NULL);
    assert_int_equal(request(f, "POST", "/v1/sessions", create, NULL), 401);
    assert_int_equal(request(f, "GET", "/healthz", NULL, NULL), 200);
    su_set_token("token-nobody-has-0000000");
    assert_int_equal(request(f, "GET", "/v1/sessions", NULL, NULL), 401);
    su_set_token(TOKEN_A);
    assert_int_equal(request(f, "POST", "/v1/sessions", create, id), 201);
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    assert_int_equal(request(f, "GET", path, NULL, NULL), 200);
    su_set_token(TOKEN_B);
    assert_int_equal(request(f, "GET", path, NULL, NULL), 404);
    assert_int_equal(request(f, "DELETE", path, NULL, NULL), 404);
    char steps[160];
    snprintf(steps, sizeof steps, "%s/steps", path);
    const char *step = "{\"step\":1,\"gradients\":[{\"name\":\"w\",\"shape\":[3],\"datatype\":"
                       "\"FP64\",\"data\":[1,2,3]}]}";
    assert_int_equal(request(f, "POST", steps, step, NULL), 404);
    su_set_token(TOKEN_A);
    assert_int_equal(request(f, "POST", steps, step, NULL), 200);
    /* The history is the tenant's own too. */
    assert_int_equal(request(f, "GET", steps, NULL, NULL), 200);
    su_set_token(TOKEN_B);
    assert_int_equal(request(f, "GET", steps, NULL, NULL), 404);
    su_set_token(NULL);
    assert_int_equal(request(f, "GET", steps, NULL, NULL), 401);
    su_set_token(TOKEN_A);
    assert_int_equal(request(f, "DELETE", path, NULL, NULL), 204);
}

static void test_token_file_errors(void **state)
{
    (void)state;
    char err[256], path[64], buf[CURVD_TENANT_CAP];
    assert_null(curvd_auth_load("/nonexistent/tokens", err, sizeof err));
    snprintf(path, sizeof path, "/tmp/curvd-tokens-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *bad[] = {"short alice\n", "a-token-long-enough-0000\n",
                         "a-token-long-enough-0000 alice extra\n", "# only a comment\n"};
    for (size_t k = 0; k < 4; k++) {
        FILE *t = fopen(path, "w");
        fputs(bad[k], t);
        fclose(t);
        assert_null(curvd_auth_load(path, err, sizeof err));
        assert_true(strlen(err) > 0);
    }
    FILE *t = fopen(path, "w");
    fputs(TOKEN_A " alice\n", t);
    fclose(t);
    struct curvd_auth *a = curvd_auth_load(path, err, sizeof err);
    assert_non_null(a);
    assert_string_equal(curvd_auth_tenant(a, "Bearer " TOKEN_A, buf, sizeof buf), "alice");
    assert_string_equal(curvd_auth_tenant(a, "bearer " TOKEN_A, buf, sizeof buf), "alice");
    assert_null(curvd_auth_tenant(a, "Bearer " TOKEN_A "x", buf, sizeof buf));
    assert_null(curvd_auth_tenant(a, "Basic " TOKEN_A, buf, sizeof buf));
    assert_null(curvd_auth_tenant(a, NULL, buf, sizeof buf));
    curvd_auth_free(a);
    close(fd);
    unlink(path);
}

/* SIGHUP's reload: the new file's tokens from the next request on; a bad
 * file changes nothing. */
static void test_reload(void **state)
{
    struct fx *f = *state;
    const char *create = "{\"optimizer\":\"sgd\",\"layout\":[{\"name\":\"w\",\"kind\":\"vector\","
                         "\"shape\":[3]}]}";
    char id[33], path[128], err[256];
    su_set_token(TOKEN_A);
    assert_int_equal(request(f, "POST", "/v1/sessions", create, id), 201);
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    /* Bob's token goes; carol's comes; alice's stays, with her sessions. */
    FILE *t = fopen(f->tokens, "w");
    fprintf(t, "%s alice\ntoken-of-carol-5555555555 carol\n", TOKEN_A);
    fclose(t);
    size_t n = 0;
    assert_int_equal(curvd_auth_reload(f->srv.auth, f->tokens, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    su_set_token(TOKEN_B);
    assert_int_equal(request(f, "GET", "/v1/sessions", NULL, NULL), 401);
    su_set_token("token-of-carol-5555555555");
    assert_int_equal(request(f, "GET", path, NULL, NULL), 404); /* alice's */
    su_set_token(TOKEN_A);
    assert_int_equal(request(f, "GET", path, NULL, NULL), 200);
    /* A bad file: refused, the tokens in use stay. */
    t = fopen(f->tokens, "w");
    fprintf(t, "short carol\n");
    fclose(t);
    assert_int_equal(curvd_auth_reload(f->srv.auth, f->tokens, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, ":1: want 'token tenant'"));
    assert_int_equal(curvd_auth_reload(f->srv.auth, "/nonexistent/tokens", &n, err, sizeof err),
                     -1);
    su_set_token("token-of-carol-5555555555");
    assert_int_equal(request(f, "GET", "/v1/sessions", NULL, NULL), 200);
    su_set_token(TOKEN_A);
    assert_int_equal(request(f, "DELETE", path, NULL, NULL), 204);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tenants, setup, teardown),
        cmocka_unit_test(test_token_file_errors),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
