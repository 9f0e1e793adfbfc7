/* SPDX-License-Identifier: MIT */
/* The step log in the store (migration 0008, docs/DURABILITY.md): a step
 * committed with its record appends a step_log row and leaves the
 * snapshot's parts alone; a session read with its state brings its rows
 * in step order; a snapshot (a step without a record, an update of the
 * state) deletes them in its own transaction, and so does deleting or
 * expiring the session; refusals write no row; group commits mixing
 * both; the upgrade of a version-7 file. The rows are checked with SQL of
 * their own. On SQLite every test runs twice: the records in their rows,
 * then every record in its session's file (--log-file-min 0;
 * test_store_logfile.c has the files' own cases). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srvutil.h"
#include "store/migrations.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];
static char dir[64], path[512];
/* curvd_store_set_log_file_min of every store the tests open. */
static size_t g_file_min = SIZE_MAX;

#define assert_store(expr, want) su_assert_store(expr, want, err)

static int group_setup(void **state)
{
    (void)state;
    char unused[160];
    su_tmpdir(dir, sizeof dir, NULL, "store-log", unused, sizeof unused);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return su_rmtree(dir);
}

/* A new database for the test @name (su_db), and the store open on it. */
static struct curvd_store *open_new(const char *name)
{
    su_db(dir, name, path, sizeof path);
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_set_log_file_min(st, g_file_min), CURVD_STORE_OK);
    return st;
}

static struct curvd_store *reopen(struct curvd_store *st)
{
    curvd_store_close(st);
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_set_log_file_min(st, g_file_min), CURVD_STORE_OK);
    return st;
}

/* Every session starts from this snapshot, in two stamped parts. */
static const char snap[] = "snap-0123";
static const curv_state_part snap_parts[2] = {{0, 4, 11}, {4, 5, 12}};
#define SNAP_PARTS "0:11:736E6170,1:12:2D30313233"

static void create(struct curvd_store *st, const char *id)
{
    struct curvd_session_new s = {
        .id = id,
        .tenant = "t",
        .optimizer = "kfac",
        .state = {.blob = snap, .len = 9, .parts = snap_parts, .n_parts = 2}};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
}

/* ---- What the file holds, read with SQL ---------------------------------------------------- */

/* Session @id's state_parts as "idx:stamp:HEX,...". */
static void raw_parts(const char *id, char *out, size_t cap)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             su_pg_url() ? "SELECT coalesce(string_agg(idx || ':' || stamp || ':' ||"
                           " upper(encode(bytes, 'hex')), ',' ORDER BY idx), '')"
                           " FROM state_parts WHERE session_id = '%s'"
                         : "SELECT coalesce(group_concat(idx || ':' || stamp || ':' || hex(bytes),"
                           " ','), '') FROM (SELECT * FROM state_parts WHERE session_id = '%s'"
                           " ORDER BY idx)",
             id);
    su_raw_text(path, sql, out, cap);
}

static void assert_parts(const char *id, const char *want)
{
    char got[256];
    raw_parts(id, got, sizeof got);
    assert_string_equal(got, want);
}

/* Session @id's step_log rows as "step:length,..." in step order (the
 * length in the row, or in its file); every record where the run puts
 * them (rows, or files with nothing in the row). */
static void assert_log(const char *id, const char *want)
{
    char sql[320], got[256];
    snprintf(sql, sizeof sql,
             su_pg_url() ? "SELECT coalesce(string_agg(step || ':' || length(record), ','"
                           " ORDER BY step), '') FROM step_log WHERE session_id = '%s'"
                         : "SELECT coalesce(group_concat(step || ':' ||"
                           " coalesce(file_len, length(record)), ','), '')"
                           " FROM (SELECT * FROM step_log WHERE session_id = '%s' ORDER BY step)",
             id);
    su_raw_text(path, sql, got, sizeof got);
    assert_string_equal(got, want);
    if (su_pg_url()) /* every record in its row */
        return;
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM step_log WHERE session_id = '%s' AND (file_len IS NULL) = %d",
             id, g_file_min == 0);
    assert_int_equal(su_raw_int(path, sql), 0);
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM step_log WHERE session_id = '%s' AND file_len IS NOT NULL"
             " AND (length(record) != 0 OR file_offset IS NULL)",
             id);
    assert_int_equal(su_raw_int(path, sql), 0);
}

static long long raw_step(const char *id)
{
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT step FROM sessions WHERE id = '%s'", id);
    return su_raw_int(path, sql);
}

/* ---- Commits ------------------------------------------------------------------------------ */

/* Step @k's record: @k * 37 bytes of noise (NULs among them), or, for
 * step 3, 70000 (past a page, into overflow pages). */
static size_t record_len(int64_t k)
{
    return k == 3 ? 70000 : (size_t)k * 37;
}

static unsigned char *record_of(int64_t k)
{
    size_t n = record_len(k);
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    tu_rng r;
    tu_rng_seed(&r, (uint64_t)k);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(tu_u64(&r) & (i % 5 ? 0xff : 0)); /* every fifth byte 0 */
    return p;
}

static void digest_of(int64_t k, char out[CURVD_STORE_DIGEST_TEXT])
{
    snprintf(out, CURVD_STORE_DIGEST_TEXT, "mm3-128:%032llx", (unsigned long long)k * 0x9e37);
}

/* Step @k of @id as its record; the state given beside it (a blob that
 * is not the session's) must be ignored. */
struct rec_commit {
    struct curvd_step_commit c;
    unsigned char *record;
    char digest[CURVD_STORE_DIGEST_TEXT], report[32];
};

static void rec_commit_init(struct rec_commit *rc, int64_t k)
{
    rc->record = record_of(k);
    digest_of(k, rc->digest);
    snprintf(rc->report, sizeof rc->report, "{\"step\":%lld}", (long long)k);
    rc->c = (struct curvd_step_commit){.step = k,
                                       .state = {.blob = "ignored", .len = 7},
                                       .content_type = "application/json",
                                       .response = rc->report,
                                       .response_len = strlen(rc->report),
                                       .report = rc->report,
                                       .callbacks = 3,
                                       .record = rc->record,
                                       .record_len = record_len(k),
                                       .update_digest = rc->digest};
}

static int commit_record(struct curvd_store *st, const char *id, int64_t k, int64_t *cur)
{
    struct rec_commit rc;
    rec_commit_init(&rc, k);
    int status = curvd_store_commit_step(st, "t", id, &rc.c, cur, err, sizeof err);
    free(rc.record);
    return status;
}

static void commit_snapshot(struct curvd_store *st, const char *id, int64_t k, const char *state)
{
    struct curvd_step_commit c = {.step = k,
                                  .state = {.blob = state, .len = strlen(state)},
                                  .content_type = "x",
                                  .response = "r",
                                  .response_len = 1};
    assert_store(curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err), CURVD_STORE_OK);
}

/* What curvd_store_get() gives with the state: session @id at @step, the
 * state @state (in @n_parts parts) and the log of steps @from..@step. */
static void assert_session(struct curvd_store *st, const char *id, int64_t step, const char *state,
                           size_t n_parts, int64_t from)
{
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", id, 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, step);
    assert_int_equal(s.state_len, strlen(state));
    assert_memory_equal(s.state, state, s.state_len);
    assert_int_equal(s.n_parts, n_parts);
    assert_int_equal(s.n_log, from ? (size_t)(step - from + 1) : 0);
    if (!s.n_log)
        assert_null(s.log);
    for (size_t i = 0; i < s.n_log; i++) {
        const struct curvd_log_entry *e = &s.log[i];
        int64_t k = from + (int64_t)i;
        char digest[CURVD_STORE_DIGEST_TEXT];
        digest_of(k, digest);
        assert_int_equal(e->step, k);
        assert_string_equal(e->update_digest, digest);
        assert_int_equal(e->len, record_len(k));
        assert_non_null(e->record);
        unsigned char *want = record_of(k);
        if (e->len)
            assert_memory_equal(e->record, want, e->len);
        free(want);
    }
    curvd_session_clear(&s);
}

/* ---- Tests -------------------------------------------------------------------------------- */

static void test_record_commit_appends(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("append");
    create(st, "s");
    create(st, "other");
    for (int64_t k = 1; k <= 3; k++) {
        assert_store(commit_record(st, "s", k, NULL), CURVD_STORE_OK);
        assert_int_equal(raw_step("s"), k);
        assert_parts("s", SNAP_PARTS);
    }
    assert_log("s", "1:37,2:74,3:70000");
    assert_log("other", "");
    su_raw_text(path, "SELECT update_digest FROM step_log WHERE step = 2", err, sizeof err);
    assert_string_equal(err, "mm3-128:00000000000000000000000000013c6e");
    /* The step is a step like any other: its reply, report and history. */
    struct curvd_step_response r;
    assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(r.step, 3);
    assert_memory_equal(r.body, "{\"step\":3}", r.body_len);
    curvd_step_response_clear(&r);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_history WHERE session_id = 's'"),
                     3);
    /* Read back with the state, in step order; without it, no log. */
    assert_session(st, "s", 3, snap, 2, 1);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, 3);
    assert_string_equal(s.last_report, "{\"step\":3}");
    assert_null(s.log);
    assert_int_equal(s.n_log, 0);
    curvd_session_clear(&s);
    assert_store(curvd_store_get(st, "u", "s", 1, &s, err, sizeof err), CURVD_STORE_NOT_FOUND);
    /* Durable, and an empty record is a record. */
    st = reopen(st);
    assert_session(st, "s", 3, snap, 2, 1);
    struct curvd_step_commit c = {.step = 4,
                                  .content_type = "x",
                                  .record = "",
                                  .record_len = 0,
                                  .update_digest = "mm3-128:e"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_log("s", "1:37,2:74,3:70000,4:0");
    assert_true(su_pg_url() || /* bytea is never anything else */
                su_raw_int(path, "SELECT typeof(record) = 'blob' FROM step_log WHERE step = 4"));
    assert_parts("s", SNAP_PARTS);
    curvd_store_close(st);
}

/* A snapshot deletes the log in its transaction: the step after it logs
 * on top of it, and a snapshot that fails keeps the log. */
static void test_snapshot_deletes_log(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("snapshot");
    create(st, "s");
    create(st, "o");
    assert_store(commit_record(st, "s", 1, NULL), CURVD_STORE_OK);
    assert_store(commit_record(st, "s", 2, NULL), CURVD_STORE_OK);
    assert_store(commit_record(st, "o", 1, NULL), CURVD_STORE_OK);
    commit_snapshot(st, "s", 3, "three");
    assert_log("s", "");
    assert_log("o", "1:37"); /* another session's log stays */
    assert_parts("s", "0:0:7468726565");
    assert_session(st, "s", 3, "three", 1, 0);
    assert_store(commit_record(st, "s", 4, NULL), CURVD_STORE_OK);
    assert_session(st, "s", 4, "three", 1, 4);

    /* A snapshot at another step: CONFLICT, the log stays. */
    struct curvd_step_commit c = {.step = 4, .state = {.blob = "x", .len = 1}, .content_type = "x"};
    int64_t cur = -1;
    assert_store(curvd_store_commit_step(st, "t", "s", &c, &cur, err, sizeof err),
                 CURVD_STORE_CONFLICT);
    assert_int_equal(cur, 4);
    /* A snapshot whose reply is past SQLite's limit fails after the log
     * was deleted inside its transaction: the rollback keeps the log. */
    static const char tiny[1];
    c.step = 5;
    c.response = tiny;
    c.response_len = 1500000000u;
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_non_null(strstr(err, "too big"));
    assert_log("s", "4:148");
    assert_session(st, "s", 4, "three", 1, 4);
    assert_parts("s", "0:0:7468726565");
    curvd_store_close(st);
}

static void test_update_state_deletes_log(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("update");
    create(st, "s");
    assert_store(commit_record(st, "s", 1, NULL), CURVD_STORE_OK);
    assert_store(commit_record(st, "s", 2, NULL), CURVD_STORE_OK);
    /* A stale update: CONFLICT, the log stays. */
    int64_t cur = -1;
    const struct curvd_state_in fresh = {.blob = "fresh", .len = 5};
    assert_store(curvd_store_update_state(st, "t", "s", 1, CURVD_STORE_ANY_EPOCH, &fresh, "{}",
                                          &cur, err, sizeof err),
                 CURVD_STORE_CONFLICT);
    assert_int_equal(cur, 2);
    assert_log("s", "1:37,2:74");
    assert_store(curvd_store_update_state(st, "t", "s", 2, CURVD_STORE_ANY_EPOCH, &fresh, "{}",
                                          &cur, err, sizeof err),
                 CURVD_STORE_OK);
    assert_log("s", "");
    assert_session(st, "s", 2, "fresh", 1, 0);
    assert_store(commit_record(st, "s", 3, NULL), CURVD_STORE_OK);
    assert_session(st, "s", 3, "fresh", 1, 3);
    curvd_store_close(st);
}

static void test_delete_takes_log(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("delete");
    create(st, "a");
    create(st, "b");
    assert_store(commit_record(st, "a", 1, NULL), CURVD_STORE_OK);
    assert_store(commit_record(st, "a", 2, NULL), CURVD_STORE_OK);
    assert_store(commit_record(st, "b", 1, NULL), CURVD_STORE_OK);
    assert_store(curvd_store_delete(st, "t", "a", err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_log WHERE session_id = 'a'"), 0);
    assert_log("b", "1:37");
    /* A new session of the same id starts with no log. */
    create(st, "a");
    assert_session(st, "a", 0, snap, 2, 0);
    /* An idle session expires with its log. */
    size_t n = 0;
    assert_store(curvd_store_expire(st, INT64_MAX / 2, 1, 16, NULL, NULL, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 2);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_log"), 0);
    curvd_store_close(st);
}

/* Refused record commits write nothing: no row, no step, no reply. */
static void test_record_refusals(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("refusals");
    create(st, "s");
    assert_store(commit_record(st, "s", 1, NULL), CURVD_STORE_OK);
    struct rec_commit rc;
    rec_commit_init(&rc, 2);

    /* Without the update's digest; a record's length without the record. */
    rc.c.update_digest = NULL;
    assert_store(curvd_store_commit_step(st, "t", "s", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_non_null(strstr(err, "invalid argument"));
    rc.c.update_digest = "mm3-128:000000000000000000000000000000000"; /* one digit too many */
    assert_store(curvd_store_commit_step(st, "t", "s", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    rc.c.update_digest = rc.digest;
    rc.c.record = NULL;
    assert_store(curvd_store_commit_step(st, "t", "s", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    rc.c.record = rc.record;

    /* At another step: ahead, the same again, behind. */
    const int64_t wrong[] = {3, 1, 100};
    for (int i = 0; i < 3; i++) {
        int64_t cur = -1;
        rc.c.step = wrong[i];
        assert_store(curvd_store_commit_step(st, "t", "s", &rc.c, &cur, err, sizeof err),
                     CURVD_STORE_CONFLICT);
        assert_int_equal(cur, 1);
        assert_non_null(strstr(err, "at step 1"));
    }
    rc.c.step = 2;
    /* No such session, or another tenant's. */
    assert_store(curvd_store_commit_step(st, "t", "nope", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_commit_step(st, "u", "s", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    /* A record past SQLite's limit. */
    static const char tiny[1];
    rc.c.record = tiny;
    rc.c.record_len = 1500000000u;
    assert_store(curvd_store_commit_step(st, "t", "s", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_non_null(strstr(err, "too big"));

    assert_log("s", "1:37");
    assert_int_equal(raw_step("s"), 1);
    assert_int_equal(su_raw_int(path, "SELECT step FROM step_responses"), 1);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_history"), 1);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_log"), 1);
    /* The state beside a record is not read: one that would be refused
     * alone does not stop it. */
    rc.c.record = rc.record;
    rc.c.record_len = record_len(2);
    rc.c.state = (struct curvd_state_in){.blob = NULL, .len = 5};
    assert_store(curvd_store_commit_step(st, "t", "s", &rc.c, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_session(st, "s", 2, snap, 2, 1);
    free(rc.record);
    curvd_store_close(st);
}

#define ITEM(id_, c_)                                                                              \
    {                                                                                              \
        .tenant = "t", .id = (id_), .c = (c_)                                                      \
    }

static void commit_group(struct curvd_store *st, struct curvd_commit_item *it, size_t n,
                         const int *want)
{
    struct curvd_commit_item *items[8];
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++)
        items[i] = &it[i];
    curvd_store_commit_steps(st, items, n);
    for (size_t i = 0; i < n; i++) {
        if (it[i].status != want[i])
            print_error("item %zu: %s (%s)\n", i, curvd_store_status_name(it[i].status), it[i].err);
        assert_int_equal(it[i].status, want[i]);
    }
}

/* Group commits mixing log rows and snapshots: each item's outcome is
 * its own, a snapshot deletes the rows of its session logged before it
 * in the same group, and a group spoiled by one item goes one by one. */
static void test_group_commits(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("group");
    create(st, "a");
    create(st, "b");
    create(st, "c");
    struct rec_commit r[5];
    for (int k = 1; k <= 4; k++)
        rec_commit_init(&r[k], k);
    struct curvd_step_commit no_digest = r[1].c;
    no_digest.update_digest = NULL;
    const struct curvd_step_commit
        b2 = {.step = 2, .state = {.blob = "b2", .len = 2}, .content_type = "x"},
        a3 = {.step = 3, .state = {.blob = "a3", .len = 2}, .content_type = "x"},
        c2 = {.step = 2, .state = {.blob = "c2", .len = 2}, .content_type = "x"};
    struct curvd_commit_item g1[7] = {
        ITEM("a", &r[1].c),    ITEM("b", &r[1].c), ITEM("a", &r[2].c),   ITEM("b", &b2),
        ITEM("c", &no_digest), ITEM("a", &r[4].c), ITEM("nope", &r[1].c)};
    commit_group(st, g1, 7,
                 (const int[]){CURVD_STORE_OK, CURVD_STORE_OK, CURVD_STORE_OK, CURVD_STORE_OK,
                               CURVD_STORE_INVALID, CURVD_STORE_CONFLICT, CURVD_STORE_NOT_FOUND});
    assert_int_equal(g1[5].current_step, 2);
    assert_log("a", "1:37,2:74");
    assert_log("b", "");
    assert_log("c", "");
    assert_session(st, "a", 2, snap, 2, 1);
    assert_session(st, "b", 2, "b2", 1, 0);
    assert_session(st, "c", 0, snap, 2, 0);

    struct curvd_commit_item g2[3] = {ITEM("a", &a3), ITEM("b", &r[3].c), ITEM("c", &r[1].c)};
    commit_group(st, g2, 3, (const int[]){CURVD_STORE_OK, CURVD_STORE_OK, CURVD_STORE_OK});
    assert_log("a", "");
    assert_log("b", "3:70000");
    assert_log("c", "1:37");

    /* A record too big spoils the group; the others go through alone. */
    static const char tiny[1];
    struct curvd_step_commit big = r[4].c;
    big.record = tiny;
    big.record_len = 1500000000u;
    struct curvd_commit_item g3[3] = {ITEM("a", &r[4].c), ITEM("b", &big), ITEM("c", &c2)};
    commit_group(st, g3, 3, (const int[]){CURVD_STORE_OK, CURVD_STORE_INVALID, CURVD_STORE_OK});
    assert_non_null(strstr(g3[1].err, "too big"));
    st = reopen(st);
    assert_session(st, "a", 4, "a3", 1, 4);
    assert_session(st, "b", 3, "b2", 1, 3);
    assert_session(st, "c", 2, "c2", 1, 0);
    for (int k = 1; k <= 4; k++)
        free(r[k].record);
    curvd_store_close(st);
}

/* A file of schema version 7 (migrations 0001 to 0007 as run then), with
 * a session at step 3: the upgrade adds the log and keeps the session. */
static void test_upgrade_from_version_7(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    snprintf(path, sizeof path, "%s/v7.db", dir);
    assert_true(curvd_migration_count >= 8);
    assert_string_equal(curvd_migrations[7].name, "0008_step_log.sql");
    for (int i = 0; i < 7; i++)
        su_raw_exec(path, curvd_migrations[i].sql);
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = 7",
             CURVD_STORE_APPLICATION_ID);
    su_raw_exec(path, sql);
    su_raw_exec(path, "INSERT INTO sessions (id, tenant, optimizer, created_at, updated_at, step,"
                      " meta, state) VALUES ('s', 't', 'kfac', 1, 2, 3, '{\"m\":1}', x'');"
                      "INSERT INTO state_parts VALUES ('s', 0, 11, x'736E6170'),"
                      " ('s', 1, 12, x'2D30313233');"
                      "INSERT INTO step_responses (session_id, step, content_type, report, body)"
                      " VALUES ('s', 3, 'x', '{\"r\":3}', x'7b7d');"
                      "INSERT INTO step_history (session_id, step, at, callbacks)"
                      " VALUES ('s', 3, 5, 0)");
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM sqlite_schema WHERE name = 'step_log'"),
                     0);
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), (long long)curvd_migration_count);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM pragma_table_info('step_log')"), 7);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_log"), 0);
    /* The session as it was. */
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, 3);
    assert_int_equal(s.created_at, 1);
    assert_int_equal(s.updated_at, 2);
    assert_string_equal(s.meta, "{\"m\":1}");
    assert_string_equal(s.last_report, "{\"r\":3}");
    assert_int_equal(s.state_len, 9);
    assert_memory_equal(s.state, snap, 9);
    assert_int_equal(s.n_parts, 2);
    assert_int_equal(s.parts[1].stamp, 12);
    assert_int_equal(s.n_log, 0);
    curvd_session_clear(&s);
    /* It logs its next step, and its log goes with it. */
    assert_store(commit_record(st, "s", 4, NULL), CURVD_STORE_OK);
    assert_session(st, "s", 4, snap, 2, 4);
    assert_parts("s", SNAP_PARTS);
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_log"), 0);
    curvd_store_close(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_commit_appends),
        cmocka_unit_test(test_snapshot_deletes_log),
        cmocka_unit_test(test_update_state_deletes_log),
        cmocka_unit_test(test_delete_takes_log),
        cmocka_unit_test(test_record_refusals),
        cmocka_unit_test(test_group_commits),
        cmocka_unit_test(test_upgrade_from_version_7),
    };
    int failed = cmocka_run_group_tests_name("records in rows", tests, group_setup, group_teardown);
    if (!su_pg_url()) {
        g_file_min = 0;
        failed +=
            cmocka_run_group_tests_name("records in files", tests, group_setup, group_teardown);
    }
    return failed;
}
