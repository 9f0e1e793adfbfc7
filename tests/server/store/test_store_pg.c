/* SPDX-License-Identifier: MIT */
/* What the PostgreSQL backend has of its own (the suites it shares with
 * SQLite run on both): its migrations, settings and refusals, leases and
 * the fencing of every write by their epoch, and a connection lost and
 * made again. Runs against the cluster of CURVD_TEST_DB (make test-pg),
 * and is skipped, saying so, without one. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srvutil.h"
#include "store/migrations.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];
static char dir[64];

#define assert_store(expr, want) su_assert_store(expr, want, err)
#define STATE(blob_, len_) (&(struct curvd_state_in){.blob = (blob_), .len = (len_)})

#define PG_ONLY()                                                                                  \
    do {                                                                                           \
        if (!su_pg_url())                                                                          \
            skip();                                                                                \
    } while (0)

static int group_setup(void **state)
{
    (void)state;
    char unused[160];
    su_tmpdir(dir, sizeof dir, NULL, "store-pg", unused, sizeof unused);
    if (!su_pg_url())
        print_message("PostgreSQL not set up (CURVD_TEST_DB is unset): skipped; make test-pg\n");
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return su_rmtree(dir);
}

static struct curvd_store *open_ok(const char *url, enum curvd_durability d)
{
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(url, d, &st, err, sizeof err), CURVD_STORE_OK);
    return st;
}

static void create_ok(struct curvd_store *st, const char *id)
{
    struct curvd_session_new s = {.id = id, .tenant = "t", .optimizer = "sgd"};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
}

/* Step @k of @id written under @epoch, its state the text @state. */
static int commit(struct curvd_store *st, const char *id, int64_t k, int64_t epoch,
                  const char *state)
{
    struct curvd_step_commit c = {.step = k,
                                  .state = {.blob = state, .len = strlen(state)},
                                  .content_type = "x",
                                  .response = "r",
                                  .response_len = 1,
                                  .epoch = epoch};
    return curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err);
}

/* Session @id is at @step with the state @state. */
static void assert_state(struct curvd_store *st, const char *id, int64_t step, const char *state)
{
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", id, 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, step);
    assert_int_equal(s.state_len, strlen(state));
    assert_memory_equal(s.state, state, strlen(state));
    curvd_session_clear(&s);
}

static long long tables(const char *url)
{
    return su_raw_int(url, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()");
}

static void test_migrations(void **state)
{
    (void)state;
    PG_ONLY();
    char url[512];
    su_db(dir, "migrate", url, sizeof url);
    assert_int_equal(tables(url), 0);
    struct curvd_store *st = open_ok(url, CURVD_DURABILITY_FULL);
    struct curvd_store_info info;
    assert_store(curvd_store_info(st, &info, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(info.schema_version, (int)curvd_pg_migration_count);
    assert_int_equal(info.application_id, CURVD_STORE_APPLICATION_ID);
    assert_int_equal(info.synchronous, 2);
    assert_string_equal(info.journal_mode, "postgresql");
    assert_true(info.page_size >= 1024);
    /* SQLite's WAL and its checkpointer have no part here. */
    struct curvd_store_wal wal;
    curvd_store_wal(st, &wal);
    assert_int_equal(wal.rounds + wal.passes + wal.truncations, 0);
    curvd_store_checkpoint_soon(st);
    curvd_store_close(st);
    /* The session tables, the version's, and nothing else. */
    long long n = tables(url);
    assert_int_equal(n, 6);
    assert_int_equal(su_raw_int(url, "SELECT version FROM curvd_schema"),
                     (long long)curvd_pg_migration_count);
    /* Opening again changes nothing; --durability normal is synchronous_commit off. */
    st = open_ok(url, CURVD_DURABILITY_NORMAL);
    assert_store(curvd_store_info(st, &info, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(info.synchronous, 1);
    curvd_store_close(st);
    assert_int_equal(tables(url), n);
    /* A schema from a newer curvd is refused, and left as it is. */
    char sql[96];
    snprintf(sql, sizeof sql, "UPDATE curvd_schema SET version = %u", curvd_pg_migration_count + 1);
    su_raw_exec(url, sql);
    st = NULL;
    assert_store(curvd_store_open(url, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_null(st);
    assert_non_null(strstr(err, "newer than this curvd"));
    assert_int_equal(su_raw_int(url, "SELECT version FROM curvd_schema"),
                     (long long)curvd_pg_migration_count + 1);
}

static void test_failed_migration_rolls_back(void **state)
{
    (void)state;
    PG_ONLY();
    char url[512];
    su_db(dir, "inthe_way", url, sizeof url);
    su_raw_exec(url, "CREATE TABLE sessions (x int)");
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(url, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "migration pg/0001_init.sql failed"));
    /* All or nothing: not even the version's table stays. */
    assert_int_equal(tables(url), 1);
}

static void test_unreachable(void **state)
{
    (void)state;
    PG_ONLY();
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open("postgresql://curvd:s3cret@/curvd?host=/nonexistent-dir",
                                  CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_null(st);
    assert_non_null(strstr(err, "cannot connect"));
    assert_non_null(strstr(err, "postgresql://curvd:***@/curvd"));
    assert_null(strstr(err, "s3cret"));
}

static void test_leases(void **state)
{
    (void)state;
    PG_ONLY();
    char url[512];
    su_db(dir, "leases", url, sizeof url);
    struct curvd_store *st = open_ok(url, CURVD_DURABILITY_FULL);
    create_ok(st, "s");
    /* A new session is not held, at epoch 0. */
    assert_int_equal(su_raw_int(url, "SELECT count(*) FROM sessions WHERE lease_owner IS NULL"
                                     " AND lease_epoch = 0 AND lease_expires = 0"),
                     1);
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", 60000, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_string_equal(l.owner, "a");
    assert_int_equal(l.epoch, 1);
    assert_int_equal(l.expires_at, l.now + 60000);
    /* Held by another: refused, and told by whom. */
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", 60000, &l, err, sizeof err),
                 CURVD_STORE_LEASED);
    assert_string_equal(l.owner, "a");
    assert_int_equal(l.epoch, 1);
    /* Its own owner again (a restarted daemon): a new epoch. */
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", 60000, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 2);
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", 1, 60000, &l, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_int_equal(l.epoch, 2);
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", 2, 1000, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.expires_at, l.now + 1000);
    /* Every write carries the epoch: a stale one writes nothing. */
    assert_store(commit(st, "s", 1, 1, "stale"), CURVD_STORE_FENCED);
    assert_state(st, "s", 0, "");
    assert_store(commit(st, "s", 1, 2, "one"), CURVD_STORE_OK);
    assert_store(curvd_store_snapshot(st, "t", "s", 1, 1, STATE("x", 1), NULL, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_store(
        curvd_store_update_state(st, "t", "s", 1, 1, STATE("x", 1), NULL, NULL, err, sizeof err),
        CURVD_STORE_FENCED);
    assert_state(st, "s", 1, "one");
    /* A stale epoch is FENCED even at the wrong step; the holder's gets CONFLICT. */
    assert_store(commit(st, "s", 5, 1, "x"), CURVD_STORE_FENCED);
    int64_t cur = 0;
    struct curvd_step_commit c5 = {.step = 5, .content_type = "x", .epoch = 2};
    assert_store(curvd_store_commit_step(st, "t", "s", &c5, &cur, err, sizeof err),
                 CURVD_STORE_CONFLICT);
    assert_int_equal(cur, 1);
    assert_store(
        curvd_store_update_state(st, "t", "s", 1, 2, STATE("two", 3), NULL, NULL, err, sizeof err),
        CURVD_STORE_OK);
    assert_store(curvd_store_snapshot(st, "t", "s", 1, CURVD_STORE_ANY_EPOCH, STATE("any", 3), NULL,
                                      err, sizeof err),
                 CURVD_STORE_OK);
    assert_state(st, "s", 1, "any");
    /* Released (epoch kept): another takes it, at the next epoch. */
    assert_store(curvd_store_lease_release(st, "t", "s", "b", 2, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_store(curvd_store_lease_release(st, "t", "s", "a", 2, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(su_raw_int(url, "SELECT count(*) FROM sessions WHERE lease_owner IS NULL"
                                     " AND lease_epoch = 2 AND lease_expires = 0"),
                     1);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "b", 60000, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 3);
    /* An expired lease is anyone's (expiry on PostgreSQL's clock, set back here). */
    su_raw_exec(url, "UPDATE sessions SET lease_expires = 0");
    assert_store(curvd_store_lease_acquire(st, "t", "s", "c", 60000, &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.epoch, 4);
    assert_store(curvd_store_lease_renew(st, "t", "s", "b", 3, 60000, &l, err, sizeof err),
                 CURVD_STORE_FENCED);
    assert_string_equal(l.owner, "c");
    /* Refusals: no such session (or another tenant's), bad arguments. */
    assert_store(curvd_store_lease_acquire(st, "t", "nope", "a", 1000, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_acquire(st, "u", "s", "a", 1000, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_renew(st, "t", "nope", "a", 1, 1000, &l, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_release(st, "t", "nope", "a", 1, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "", 1000, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_acquire(st, "t", "s", "a", 0, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_lease_renew(st, "t", "s", "a", -1, 1000, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    /* Delete is not fenced. */
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    curvd_store_close(st);
}

#define ITEM(id_, c_)                                                                              \
    {                                                                                              \
        .tenant = "t", .id = (id_), .c = (c_)                                                      \
    }

/* In a group, a fenced step is its own outcome: the others commit. */
static void test_fenced_in_a_group(void **state)
{
    (void)state;
    PG_ONLY();
    char url[512];
    su_db(dir, "group", url, sizeof url);
    struct curvd_store *st = open_ok(url, CURVD_DURABILITY_NORMAL);
    create_ok(st, "a");
    create_ok(st, "b");
    struct curvd_lease l;
    assert_store(curvd_store_lease_acquire(st, "t", "a", "n1", 60000, &l, err, sizeof err),
                 CURVD_STORE_OK);
    const struct curvd_step_commit ca = {.step = 1, .content_type = "x", .epoch = 0},
                                   cb = {.step = 1, .content_type = "x", .epoch = 0};
    struct curvd_commit_item it[2] = {ITEM("a", &ca), ITEM("b", &cb)};
    struct curvd_commit_item *items[2] = {&it[0], &it[1]};
    curvd_store_commit_steps(st, items, 2);
    assert_int_equal(it[0].status, CURVD_STORE_FENCED);
    assert_non_null(strstr(it[0].err, "epoch"));
    assert_int_equal(it[1].status, CURVD_STORE_OK);
    assert_state(st, "a", 0, "");
    assert_state(st, "b", 1, "");
    curvd_store_close(st);
}

/* The server drops the store's connection: the call that finds it lost
 * fails (and /readyz would say so), the next one connects again. */
static void test_reconnects(void **state)
{
    (void)state;
    PG_ONLY();
    char url[560], base[512];
    su_db(dir, "reconnect", base, sizeof base);
    snprintf(url, sizeof url, "%s&application_name=curvd_reconnect", base);
    struct curvd_store *st = open_ok(url, CURVD_DURABILITY_FULL);
    create_ok(st, "s");
    su_raw_exec(base, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = 'curvd_reconnect'");
    su_pg_wait_gone(base, "curvd_reconnect");
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_ERROR);
    assert_store(curvd_store_health(st, err, sizeof err), CURVD_STORE_ERROR);
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_OK);
    curvd_session_clear(&s);
    assert_store(commit(st, "s", 1, 0, "one"), CURVD_STORE_OK);
    assert_store(curvd_store_health(st, err, sizeof err), CURVD_STORE_OK);
    assert_state(st, "s", 1, "one");
    curvd_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_migrations),
        cmocka_unit_test(test_failed_migration_rolls_back),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_leases),
        cmocka_unit_test(test_fenced_in_a_group),
        cmocka_unit_test(test_reconnects),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
