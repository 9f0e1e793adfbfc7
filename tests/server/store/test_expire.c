/* SPDX-License-Identifier: MIT */
/* Idle TTLs (migration 0004): curvd_store_expire() deletes, on the
 * caller's clock (a fake one here), the sessions idle past their own TTL
 * or the daemon's default, never those with TTL 0, and a PATCH-like
 * curvd_store_set_idle_ttl() both changes the TTL and counts as use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "srvutil.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];
static char path[512];

#define assert_store(expr, want) su_assert_store(expr, want, err)

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void create(struct curvd_store *st, const char *id, int has, int64_t ttl)
{
    struct curvd_session_new s = {
        .id = id, .tenant = "t", .optimizer = "sgd", .has_idle_ttl = has, .idle_ttl_s = ttl};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
}

static int exists(struct curvd_store *st, const char *id)
{
    struct curvd_session s;
    int rc = curvd_store_get(st, "t", id, 0, &s, err, sizeof err);
    if (rc == CURVD_STORE_OK)
        curvd_session_clear(&s);
    return rc == CURVD_STORE_OK;
}

struct seen {
    int n;
    char ids[8][40];
};

static void on_expired(void *ctx, const char *id)
{
    struct seen *s = ctx;
    if (s->n < 8)
        snprintf(s->ids[s->n++], sizeof s->ids[0], "%s", id);
}

static void test_expire(void **state)
{
    (void)state;
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_NORMAL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    create(st, "ttl10", 1, 10);  /* its own 10 s */
    create(st, "never", 1, 0);   /* never, whatever the default */
    create(st, "default", 0, 0); /* the daemon's default */
    create(st, "ttl1000", 1, 1000);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "ttl10", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.has_idle_ttl, 1);
    assert_int_equal(s.idle_ttl_s, 10);
    curvd_session_clear(&s);
    assert_store(curvd_store_get(st, "t", "default", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.has_idle_ttl, 0);
    curvd_session_clear(&s);

    int64_t t0 = wall_ms();
    size_t n = 99;
    struct seen seen = {0};
    /* Now: nothing is idle yet. */
    assert_store(curvd_store_expire(st, t0, 5, 16, on_expired, &seen, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 0);
    /* 11 s later (fake clock), default off: only ttl10 goes. */
    assert_store(curvd_store_expire(st, t0 + 11000, 0, 16, on_expired, &seen, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(seen.n, 1);
    assert_string_equal(seen.ids[0], "ttl10");
    assert_false(exists(st, "ttl10"));
    /* A default of 60 s, 61 s later: "default" goes, "never" stays. */
    assert_store(curvd_store_expire(st, t0 + 61000, 60, 16, on_expired, &seen, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 1);
    assert_string_equal(seen.ids[1], "default");
    assert_true(exists(st, "never"));
    /* Setting a TTL is use: the clock starts again from now. */
    assert_store(curvd_store_set_idle_ttl(st, "t", "ttl1000", 1, 2, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_expire(st, t0 + 1000, 0, 16, NULL, NULL, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 0);
    assert_store(curvd_store_expire(st, wall_ms() + 2500, 0, 16, NULL, NULL, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 1);
    assert_false(exists(st, "ttl1000"));
    assert_store(curvd_store_set_idle_ttl(st, "t", "ttl1000", 1, 2, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_set_idle_ttl(st, "t", "never", 1, -1, err, sizeof err),
                 CURVD_STORE_INVALID);
    /* Back to the default (none of its own), then a year on: gone. */
    assert_store(curvd_store_set_idle_ttl(st, "t", "never", 0, 0, err, sizeof err), CURVD_STORE_OK);
    assert_store(
        curvd_store_expire(st, t0 + 365LL * 86400000, 0, 16, NULL, NULL, &n, err, sizeof err),
        CURVD_STORE_OK);
    assert_int_equal(n, 0); /* default off */
    assert_store(
        curvd_store_expire(st, t0 + 365LL * 86400000, 1, 16, NULL, NULL, &n, err, sizeof err),
        CURVD_STORE_OK);
    assert_int_equal(n, 1);
    /* At most @max per call. */
    char id[16];
    for (int i = 0; i < 5; i++) {
        snprintf(id, sizeof id, "m%d", i);
        create(st, id, 1, 1);
    }
    assert_store(curvd_store_expire(st, wall_ms() + 5000, 0, 3, NULL, NULL, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 3);
    assert_store(curvd_store_expire(st, wall_ms() + 5000, 0, 3, NULL, NULL, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 2);
    curvd_store_close(st);
}

int main(void)
{
    char dir[] = "/tmp/curvd-expire-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    su_db(dir, "e", path, sizeof path);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_expire)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    su_rmtree(dir); /* a PostgreSQL schema goes with its throw-away cluster */
    return rc;
}
