/* SPDX-License-Identifier: MIT */
/* Leases and fencing in the store (migration 0009, docs/CLUSTER.md
 * "Leases and fencing"): who may take, renew and give up a session's
 * lease, the epoch every acquisition moves on, expiry (a lease taken for
 * 0 ms has expired when it is taken: no clock is waited for), and writes
 * with a stale epoch (a step, a snapshot, an update of the state) refused
 * as FENCED with the stored session left byte for byte as it was. The
 * expectations are the rules of store.h, stated here; the columns are
 * read with SQL of their own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srvutil.h"
#include "store/migrations.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];
static char dir[64], path[160];

#define assert_store(expr, want) su_assert_store(expr, want, err)

/* A long ttl: never runs out during a test. */
#define LONG_MS (3600 * 1000)

static int group_setup(void **state)
{
    (void)state;
    char unused[160];
    su_tmpdir(dir, sizeof dir, NULL, "store-lease", unused, sizeof unused);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return su_rmtree(dir);
}

/* A new database with session "s" of tenant "t" at step 0. */
static struct curvd_store *open_new(const char *name)
{
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_NORMAL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    struct curvd_session_new s = {
        .id = "s", .tenant = "t", .optimizer = "sgd", .state = {.blob = "state-0", .len = 7}};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
    return st;
}

/* Session "s"'s lease columns as "owner|epoch" (owner "-" when NULL). */
static void assert_columns(const char *want)
{
    char got[256];
    su_raw_text(path,
                "SELECT coalesce(lease_owner, '-') || '|' || lease_epoch FROM sessions"
                " WHERE id = 's'",
                got, sizeof got);
    assert_string_equal(got, want);
}

static long long raw_expires(void)
{
    return su_raw_int(path, "SELECT lease_expires FROM sessions WHERE id = 's'");
}

static void test_create_holds_no_lease(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("create");
    assert_columns("-|0");
    assert_int_equal(raw_expires(), 0);
    curvd_store_close(st);
}

static void test_acquire_by_two_owners(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("two");
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_string_equal(l.owner, "a");
    assert_int_equal(l.epoch, 1);
    assert_int_equal(l.expires_at, l.now + LONG_MS);
    assert_int_equal(raw_expires(), l.expires_at);
    assert_columns("a|1");
    /* b is refused while a's lease lasts, and told whose it is */
    struct curvd_lease seen;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &seen, err, sizeof err),
                 CURVD_STORE_LEASED);
    assert_string_equal(seen.owner, "a");
    assert_int_equal(seen.epoch, 1);
    assert_int_equal(seen.expires_at, l.expires_at);
    assert_true(seen.expires_at - seen.now > 0);
    assert_columns("a|1");
    /* a again (a restart with the same node id): at once, a new epoch */
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 2);
    assert_columns("a|2");
    curvd_store_close(st);
}

static void test_expired_lease_is_taken_over(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("expiry");
    struct curvd_lease l;
    /* 0 ms: expired when taken (expires_at <= now) */
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", 0, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.expires_at, l.now);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_string_equal(l.owner, "b");
    assert_int_equal(l.epoch, 2);
    assert_columns("b|2");
    /* a's hold of epoch 1 is over: it may neither renew nor give it up */
    struct curvd_lease seen;
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", 1, LONG_MS, &seen, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_string_equal(seen.owner, "b");
    assert_int_equal(seen.epoch, 2);
    assert_store(curvd_store_lease_release(st, "t", "s", "a", 1, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_columns("b|2");
    curvd_store_close(st);
}

static void test_renew(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("renew");
    struct curvd_lease l, r;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", 0, &l, err, sizeof err),
                 CURVD_STORE_OK);
    /* expired, but nobody took it: the epoch is still a's, so it renews */
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", 1, LONG_MS, &r, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(r.epoch, 1);
    assert_int_equal(r.expires_at, r.now + LONG_MS);
    assert_int_equal(raw_expires(), r.expires_at);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_LEASED);
    /* another epoch of the same owner, another owner at the same epoch */
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", 2, LONG_MS, &r, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_store(curvd_store_lease_renew(st, "t", "s", "b", 1, LONG_MS, &r, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_columns("a|1");
    curvd_store_close(st);
}

static void test_release(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("release");
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_lease_release(st, "t", "s", "a", 1, err, sizeof err), CURVD_STORE_OK);
    assert_columns("-|1"); /* the epoch stays: the next hold is 2 */
    assert_int_equal(raw_expires(), 0);
    /* given up: renewing it again is refused, taking it is not */
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", 1, LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 2);
    assert_store(curvd_store_lease_release(st, "t", "s", "a", 2, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_columns("b|2");
    curvd_store_close(st);
}

static void test_not_found_and_invalid(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("invalid");
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "nope", "a", 1, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_acquire(st, "u", "s", "a", 1, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND); /* another tenant's */
    assert_store(curvd_store_lease_renew(st, "t", "nope", "a", 1, 1, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_release(st, "t", "nope", "a", 1, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    char longest[CURVD_STORE_OWNER_MAX + 1];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    assert_store(curvd_store_lease_acquire(st, "t", "s", NULL, 1, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "", 1, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_acquire(st, "t", "s", longest, 1, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", -1, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", -1, 1, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_release(st, NULL, "s", "a", 1, err, sizeof err),
                 CURVD_STORE_INVALID);
    /* one byte under the bound is an owner */
    longest[CURVD_STORE_OWNER_MAX - 1] = '\0';
    assert_store(curvd_store_lease_acquire(st, "t", "s", longest, 1, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "SELECT length(lease_owner) FROM sessions WHERE id = 's'"),
                     CURVD_STORE_OWNER_MAX - 1);
    curvd_store_close(st);
}

/* ---- Fencing -------------------------------------------------------------------------------- */

/* Everything the file holds of session "s", as text: its row, its state's
 * parts, its stored reply, its step log and history. */
static char *dump(void)
{
    static const char *const sql[] = {
        "SELECT quote(step) || quote(meta) || quote(updated_at) || quote(lease_owner) ||"
        " quote(lease_epoch) || quote(lease_expires) FROM sessions WHERE id = 's'",
        "SELECT coalesce(group_concat(idx || ':' || stamp || ':' || hex(bytes), ','), '')"
        " FROM (SELECT * FROM state_parts WHERE session_id = 's' ORDER BY idx)",
        "SELECT coalesce((SELECT step || ':' || hex(body) || ':' || quote(report)"
        " FROM step_responses WHERE session_id = 's'), 'none')",
        "SELECT coalesce(group_concat(step || ':' || hex(record), ','), '')"
        " FROM (SELECT * FROM step_log WHERE session_id = 's' ORDER BY step)",
        "SELECT count(*) || ':' || coalesce(max(step), 0) FROM step_history WHERE session_id = 's'",
    };
    size_t cap = 8192, len = 0;
    char *out = malloc(cap);
    assert_non_null(out);
    out[0] = '\0';
    for (size_t i = 0; i < sizeof sql / sizeof sql[0]; i++) {
        char part[2048];
        su_raw_text(path, sql[i], part, sizeof part);
        len += (size_t)snprintf(out + len, cap - len, "%s\n", part);
        assert_true(len < cap);
    }
    return out;
}

/* Step @step of "s" with state @blob, at @epoch. */
static int commit_at(struct curvd_store *st, int64_t step, int64_t epoch, const char *blob)
{
    struct curvd_step_commit c = {.step = step,
                                  .epoch = epoch,
                                  .state = {.blob = blob, .len = strlen(blob)},
                                  .content_type = "application/json",
                                  .response = "{}",
                                  .response_len = 2,
                                  .report = "{\"loss\":1}"};
    return curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err);
}

static void test_stale_writes_are_fenced(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("fenced");
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", 0, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(commit_at(st, 1, 1, "state-1"), CURVD_STORE_OK); /* a's own epoch */
    /* b takes the expired lease over and steps */
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 2);
    assert_store(commit_at(st, 2, 2, "state-2"), CURVD_STORE_OK);
    char *before = dump();
    /* a, resumed, writes at epoch 1: every kind of write is refused */
    assert_store(commit_at(st, 3, 1, "a-wrote"), CURVD_STORE_FENCED);
    assert_store(commit_at(st, 2, 1, "a-wrote"), CURVD_STORE_FENCED); /* not CONFLICT */
    struct curvd_state_in in = {.blob = "a-wrote", .len = 7};
    int64_t cur = -7;
    assert_store(curvd_store_snapshot(st, "t", "s", 2, 1, &in, &cur, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_store(curvd_store_update_state(st, "t", "s", 2, 1, &in, "{}", &cur, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_int_equal(cur, -7); /* told nothing of the step: the epoch is what failed */
    struct curvd_step_commit rec = {.step = 3,
                                    .epoch = 1,
                                    .content_type = "application/json",
                                    .record = "r",
                                    .record_len = 1,
                                    .update_digest = "d"};
    assert_store(curvd_store_commit_step(st, "t", "s", &rec, NULL, err, sizeof err),
                 CURVD_STORE_FENCED);
    char *after = dump();
    assert_string_equal(after, before);
    free(after);
    free(before);
    /* b's epoch writes, and so does a write that is not fenced */
    assert_store(curvd_store_snapshot(st, "t", "s", 2, 2, &in, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(commit_at(st, 3, CURVD_STORE_ANY_EPOCH, "state-3"), CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "SELECT step FROM sessions WHERE id = 's'"), 3);
    curvd_store_close(st);
}

/* In one group commit, a fenced step writes nothing and stops no other. */
static void test_fenced_item_of_a_group(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("group");
    struct curvd_session_new s2 = {
        .id = "s2", .tenant = "t", .optimizer = "sgd", .state = {.blob = "x", .len = 1}};
    assert_store(curvd_store_create(st, &s2, NULL, err, sizeof err), CURVD_STORE_OK);
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    char *before = dump();
    struct curvd_step_commit c = {.step = 1,
                                  .epoch = 0, /* s is at epoch 1 now, s2 still at 0 */
                                  .state = {.blob = "y", .len = 1},
                                  .content_type = "application/json"};
    struct curvd_commit_item a = {.tenant = "t", .id = "s", .c = &c};
    struct curvd_commit_item b = {.tenant = "t", .id = "s2", .c = &c};
    struct curvd_commit_item *items[] = {&a, &b};
    curvd_store_commit_steps(st, items, 2);
    assert_int_equal(a.status, CURVD_STORE_FENCED);
    assert_int_equal(b.status, CURVD_STORE_OK);
    char *after = dump();
    assert_string_equal(after, before);
    free(after);
    free(before);
    assert_int_equal(su_raw_int(path, "SELECT step FROM sessions WHERE id = 's2'"), 1);
    curvd_store_close(st);
}

/* Delete is not fenced: any daemon may delete a session another holds. */
static void test_delete_is_not_fenced(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("delete");
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    assert_store(commit_at(st, 1, 1, "late"), CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_renew(st, "t", "s", "b", 1, LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    curvd_store_close(st);
}

/* A version-8 file with a session: the upgrade gives it no owner, epoch 0. */
static void test_upgrade_from_version_8(void **state)
{
    (void)state;
    snprintf(path, sizeof path, "%s/v8.db", dir);
    assert_true(curvd_migration_count >= 9);
    assert_string_equal(curvd_migrations[8].name, "0009_leases.sql");
    for (int i = 0; i < 8; i++)
        su_raw_exec(path, curvd_migrations[i].sql);
    char sql[160];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = 8",
             CURVD_STORE_APPLICATION_ID);
    su_raw_exec(path, sql);
    su_raw_exec(path, "INSERT INTO sessions (id, tenant, optimizer, created_at, updated_at, step,"
                      " state) VALUES ('s', 't', 'sgd', 1, 1, 4, x'')");
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_NORMAL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    assert_columns("-|0");
    assert_int_equal(raw_expires(), 0);
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", LONG_MS, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 1);
    curvd_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_holds_no_lease),
        cmocka_unit_test(test_acquire_by_two_owners),
        cmocka_unit_test(test_expired_lease_is_taken_over),
        cmocka_unit_test(test_renew),
        cmocka_unit_test(test_release),
        cmocka_unit_test(test_not_found_and_invalid),
        cmocka_unit_test(test_stale_writes_are_fenced),
        cmocka_unit_test(test_fenced_item_of_a_group),
        cmocka_unit_test(test_delete_is_not_fenced),
        cmocka_unit_test(test_upgrade_from_version_8),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
