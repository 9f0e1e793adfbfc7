/* SPDX-License-Identifier: MIT */
/*
 * The store's state in parts: which rows a write touches (seen by triggers
 * that log every write of a state_parts row), what a read reassembles
 * (byte for byte, with the division and stamps), refused divisions, group
 * commits, the upgrade of a version-2 file, and a K-FAC optimizer whose
 * blobs go through the store step by step: the rows written are exactly
 * the parts whose stamp is 0 or changed, and a part skipped on a stamp
 * that lied makes libcurv refuse the reassembled blob. Last, SIGKILL in
 * the middle of commits of states in parts: what is read back is always
 * one whole committed state.
 */
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "curv.h"
#include "srvutil.h"
#include "store/migrations.h"
#include "store/store.h"
#include "testutil.h"

static char dir[64], unused_db[128];
static char err[512];

#define assert_store(expr, want) su_assert_store(expr, want, err)

/* --- helpers ------------------------------------------------------------------------------- */

static int group_setup(void **state)
{
    (void)state;
    su_tmpdir(dir, sizeof dir, NULL, "parts", unused_db, sizeof unused_db);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return su_rmtree(dir);
}

/* A new database of the test's backend (su_db). */
static const char *db_path(const char *name)
{
    static char path[512];
    su_db(dir, name, path, sizeof path);
    return path;
}

static struct curvd_store *open_with(const char *path, enum curvd_durability d)
{
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, d, &st, err, sizeof err), CURVD_STORE_OK);
    return st;
}

static struct curvd_store *open_ok(const char *path)
{
    return open_with(path, CURVD_DURABILITY_NORMAL);
}

enum { MAX_PARTS = 8 };

/* A state in parts made up for a test: part i's bytes follow from its
 * seed alone, so two states share a part's bytes exactly when they share
 * its seed and length. */
struct pstate {
    unsigned char *blob;
    size_t len, n;
    curv_state_part p[MAX_PARTS];
};

static void pstate_make(struct pstate *s, size_t n, const size_t *lens, const uint64_t *stamps,
                        const uint64_t *seeds)
{
    assert_true(n <= MAX_PARTS);
    s->n = n;
    s->len = 0;
    for (size_t i = 0; i < n; i++) {
        s->p[i] = (curv_state_part){.offset = s->len, .len = lens[i], .stamp = stamps[i]};
        s->len += lens[i];
    }
    s->blob = malloc(s->len ? s->len : 1);
    assert_non_null(s->blob);
    for (size_t i = 0; i < n; i++) {
        tu_rng r;
        tu_rng_seed(&r, seeds[i]);
        for (size_t k = 0; k < lens[i]; k++)
            s->blob[s->p[i].offset + k] = (unsigned char)(tu_uniform(&r) * 256);
    }
}

static void pstate_free(struct pstate *s)
{
    free(s->blob);
    s->blob = NULL;
}

/* @s to write, compared with @stored (NULL: nothing known). */
static struct curvd_state_in state_in(const struct pstate *s, const struct pstate *stored)
{
    return (struct curvd_state_in){.blob = s->blob,
                                   .len = s->len,
                                   .parts = s->p,
                                   .n_parts = s->n,
                                   .stored = stored ? stored->p : NULL,
                                   .n_stored = stored ? stored->n : 0};
}

/* Log every row of state_parts written from now on (inserted, or updated
 * by the store's upsert) into part_writes. */
static void log_writes(const char *path)
{
    if (su_pg_url()) /* an upsert fires the insert or the update trigger, as in SQLite */
        su_raw_exec(path, "CREATE TABLE part_writes (session_id TEXT, idx BIGINT);"
                          "CREATE FUNCTION part_written() RETURNS trigger LANGUAGE plpgsql AS"
                          " $$BEGIN INSERT INTO part_writes VALUES (new.session_id, new.idx);"
                          " RETURN new; END$$;"
                          "CREATE TRIGGER part_written AFTER INSERT OR UPDATE ON state_parts"
                          " FOR EACH ROW EXECUTE FUNCTION part_written()");
    else
        su_raw_exec(path, "CREATE TABLE part_writes (session_id TEXT, idx INTEGER);"
                          "CREATE TRIGGER part_inserted AFTER INSERT ON state_parts BEGIN"
                          " INSERT INTO part_writes VALUES (new.session_id, new.idx); END;"
                          "CREATE TRIGGER part_updated AFTER UPDATE ON state_parts BEGIN"
                          " INSERT INTO part_writes VALUES (new.session_id, new.idx); END;");
}

/* The rows written since the last look, "id:idx" sorted and joined by
 * commas ("" for none); the log starts afresh. */
static void assert_written(const char *path, const char *want)
{
    char got[512] = "";
    su_raw_text(path,
                su_pg_url() ? "SELECT coalesce(string_agg(session_id || ':' || idx, ','"
                              " ORDER BY session_id, idx), '') FROM part_writes"
                            : "SELECT coalesce(group_concat(session_id || ':' || idx, ','), '')"
                              " FROM (SELECT * FROM part_writes ORDER BY session_id, idx)",
                got, sizeof got);
    su_raw_exec(path, "DELETE FROM part_writes");
    if (strcmp(got, want) != 0)
        fail_msg("rows written: \"%s\", want \"%s\"", got, want);
}

/* Session @id reads back as @blob (@len bytes) in the @n parts @p. */
static void assert_parts(struct curvd_store *st, const char *id, const void *blob, size_t len,
                         const curv_state_part *p, size_t n)
{
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", id, 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.state_len, len);
    if (len)
        assert_memory_equal(s.state, blob, len);
    assert_int_equal(s.n_parts, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(s.parts[i].offset, p[i].offset);
        assert_int_equal(s.parts[i].len, p[i].len);
        assert_true(s.parts[i].stamp == p[i].stamp);
    }
    if (!n)
        assert_null(s.parts);
    curvd_session_clear(&s);
}

static void assert_pstate(struct curvd_store *st, const char *id, const struct pstate *s)
{
    assert_parts(st, id, s->blob, s->len, s->p, s->n);
}

static void create_parts(struct curvd_store *st, const char *id, const struct pstate *s)
{
    struct curvd_session_new in = {id, "t", "kfac", NULL, 0, state_in(s, NULL),
                                   0,  0,   NULL,   NULL, 0, 0};
    assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_OK);
}

static int commit_parts(struct curvd_store *st, const char *id, int64_t step,
                        const struct pstate *s, const struct pstate *stored)
{
    struct curvd_step_commit c = {.step = step,
                                  .state = state_in(s, stored),
                                  .content_type = "application/json",
                                  .response = "{}",
                                  .response_len = 2};
    return curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err);
}

#define HI 0x8000000000000000ULL /* a stamp past INT64_MAX: stored as its bits */

/* --- parts --------------------------------------------------------------------------------- */

/* Only parts with stamp 0, a new stamp or a new division are written;
 * stored parts past the last are deleted; reads give the blob back. */
static void test_parts_round_trip(void **state)
{
    (void)state;
    const char *path = db_path("round");
    struct curvd_store *st = open_ok(path);
    log_writes(path);
    const size_t lens[] = {300, 40000, 20000, 70000};
    struct pstate s0, s1, s2, s3;
    pstate_make(&s0, 4, lens, (uint64_t[]){0, 11, HI | 5, 33}, (uint64_t[]){1, 2, 3, 4});
    create_parts(st, "s", &s0);
    assert_written(path, "s:0,s:1,s:2,s:3");
    assert_pstate(st, "s", &s0);
    struct curvd_session bare;
    assert_store(curvd_store_get(st, "t", "s", 0, &bare, err, sizeof err), CURVD_STORE_OK);
    assert_null(bare.parts);
    assert_int_equal(bare.n_parts, 0);
    curvd_session_clear(&bare);

    /* The header (stamp 0) and part 2 (a new stamp) change. */
    pstate_make(&s1, 4, lens, (uint64_t[]){0, 11, HI | 6, 33}, (uint64_t[]){5, 2, 6, 4});
    assert_store(commit_parts(st, "s", 1, &s1, &s0), CURVD_STORE_OK);
    assert_written(path, "s:0,s:2");
    assert_pstate(st, "s", &s1);

    /* The store goes by stamps alone: part 1 with new bytes under its old
     * stamp keeps the old bytes (libcurv's stamps never lie; the whole-blob
     * CRC catches it if one did, see test_kfac_through_the_store). */
    pstate_make(&s2, 4, lens, (uint64_t[]){0, 11, HI | 6, 33}, (uint64_t[]){7, 8, 6, 4});
    assert_store(commit_parts(st, "s", 2, &s2, &s1), CURVD_STORE_OK);
    assert_written(path, "s:0");
    unsigned char *mixed = malloc(s2.len);
    assert_non_null(mixed);
    memcpy(mixed, s2.blob, s2.len);
    memcpy(mixed + lens[0], s1.blob + lens[0], lens[1]);
    assert_parts(st, "s", mixed, s2.len, s2.p, 4);
    free(mixed);

    /* Stamp 0 is written whatever the stored stamp; nothing known is
     * everything written. */
    pstate_make(&s3, 4, lens, (uint64_t[]){0, 0, HI | 6, 33}, (uint64_t[]){7, 8, 6, 4});
    assert_store(commit_parts(st, "s", 3, &s3, &s2), CURVD_STORE_OK);
    assert_written(path, "s:0,s:1");
    assert_pstate(st, "s", &s3);
    assert_store(commit_parts(st, "s", 4, &s3, NULL), CURVD_STORE_OK);
    assert_written(path, "s:0,s:1,s:2,s:3");

    /* A new division (fewer parts, other lengths) writes every part and
     * deletes the rows past the last one, even with equal stamps. */
    struct pstate s4, s5;
    pstate_make(&s4, 2, (size_t[]){300, 60000}, (uint64_t[]){0, 11}, (uint64_t[]){9, 10});
    assert_store(commit_parts(st, "s", 5, &s4, &s3), CURVD_STORE_OK);
    assert_written(path, "s:0,s:1");
    assert_pstate(st, "s", &s4);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts"), 2);
    /* The same count at other offsets is another division too. */
    pstate_make(&s5, 2, (size_t[]){301, 60000}, (uint64_t[]){0, 11}, (uint64_t[]){9, 10});
    assert_store(commit_parts(st, "s", 6, &s5, &s4), CURVD_STORE_OK);
    assert_written(path, "s:0,s:1");
    assert_pstate(st, "s", &s5);

    /* A state update compares stamps as a step does. */
    struct pstate s6;
    pstate_make(&s6, 2, (size_t[]){301, 60000}, (uint64_t[]){0, 11}, (uint64_t[]){12, 10});
    struct curvd_state_in in = state_in(&s6, &s5);
    assert_store(curvd_store_update_state(st, "t", "s", 6, CURVD_STORE_ANY_EPOCH, &in, "{}", NULL,
                                          err, sizeof err),
                 CURVD_STORE_OK);
    assert_written(path, "s:0");
    assert_pstate(st, "s", &s6);

    /* A blob without a division is one part with stamp 0; an empty state
     * has no part. */
    struct curvd_step_commit c = {
        .step = 7, .state = {.blob = s6.blob, .len = s6.len}, .content_type = "x"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_written(path, "s:0");
    assert_parts(st, "s", s6.blob, s6.len, (curv_state_part[]){{0, s6.len, 0}}, 1);
    c = (struct curvd_step_commit){
        .step = 8, .state = {.blob = NULL, .len = 0}, .content_type = "x"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_written(path, "");
    assert_parts(st, "s", NULL, 0, NULL, 0);

    /* Parts go with their session. */
    assert_store(commit_parts(st, "s", 9, &s6, NULL), CURVD_STORE_OK);
    assert_written(path, "s:0,s:1");
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts"), 0);
    curvd_store_close(st);
    struct pstate *all[] = {&s0, &s1, &s2, &s3, &s4, &s5, &s6};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pstate_free(all[i]);
}

/* Divisions that do not tile the blob are refused by every write, which
 * then writes nothing. */
static void test_parts_refused(void **state)
{
    (void)state;
    const char *path = db_path("refused");
    struct curvd_store *st = open_ok(path);
    struct pstate good;
    pstate_make(&good, 3, (size_t[]){10, 20, 30}, (uint64_t[]){0, 1, 2}, (uint64_t[]){1, 2, 3});
    create_parts(st, "s", &good);
    log_writes(path);
    const struct {
        curv_state_part p[3];
        size_t n;
        const char *what;
    } bad[] = {
        {{{0, 10, 0}, {11, 20, 1}, {31, 29, 2}}, 3, "a gap"},
        {{{0, 10, 0}, {9, 21, 1}, {30, 30, 2}}, 3, "an overlap"},
        {{{0, 10, 0}, {10, 0, 1}, {10, 50, 2}}, 3, "an empty part"},
        {{{0, 10, 0}, {10, 20, 1}, {30, 29, 2}}, 3, "short of the end"},
        {{{0, 10, 0}, {10, 20, 1}, {30, 31, 2}}, 3, "past the end"},
        {{{5, 5, 0}, {10, 20, 1}, {30, 30, 2}}, 3, "not from 0"},
        {{{0, 10, 0}}, 0, "no part for 60 bytes"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        struct curvd_state_in in = {good.blob, good.len, bad[k].p, bad[k].n, NULL, 0};
        struct curvd_session_new row = {"n", "t", "kfac", NULL, 0, in, 0, 0, NULL, NULL, 0, 0};
        struct curvd_step_commit c = {.step = 1, .state = in, .content_type = "x"};
        print_message("%s\n", bad[k].what);
        assert_store(curvd_store_create(st, &row, NULL, err, sizeof err), CURVD_STORE_INVALID);
        assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                     CURVD_STORE_INVALID);
        assert_store(curvd_store_update_state(st, "t", "s", 0, CURVD_STORE_ANY_EPOCH, &in, NULL,
                                              NULL, err, sizeof err),
                     CURVD_STORE_INVALID);
    }
    /* Stored parts named by a NULL pointer. */
    struct curvd_state_in in = state_in(&good, NULL);
    in.n_stored = 3;
    struct curvd_step_commit c = {.step = 1, .state = in, .content_type = "x"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_update_state(st, NULL, "s", 0, CURVD_STORE_ANY_EPOCH, &in, NULL, NULL,
                                          err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_update_state(st, "t", "s", 0, CURVD_STORE_ANY_EPOCH, NULL, NULL, NULL,
                                          err, sizeof err),
                 CURVD_STORE_INVALID);
    /* One part past SQLite's blob limit (its length is refused before a
     * byte is read): the parts before it are rolled back. */
    static const unsigned char tiny[16];
    curv_state_part huge[2] = {{0, 10, 0}, {10, 1500000000u, 1}};
    struct curvd_state_in big = {tiny, 1500000010u, huge, 2, NULL, 0};
    c = (struct curvd_step_commit){.step = 1, .state = big, .content_type = "x"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_non_null(strstr(err, "too big"));
    assert_written(path, "");
    assert_pstate(st, "s", &good);
    assert_int_equal(su_raw_int(path, "SELECT step FROM sessions WHERE id = 's'"), 0);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM sessions"), 1);
    curvd_store_close(st);
    pstate_free(&good);
}

#define ITEM(id_, c_)                                                                              \
    {                                                                                              \
        .tenant = "t", .id = (id_), .c = (c_)                                                      \
    }

/* Several sessions' steps in one transaction, each compared with its own
 * stored parts; a refused item writes no part; a session's consecutive
 * steps in one group compare each with the one before. */
static void test_group_commit_parts(void **state)
{
    (void)state;
    const char *path = db_path("group");
    struct curvd_store *st = open_ok(path);
    const size_t lens[] = {100, 30000, 30000};
    struct pstate a0, a1, a2, b0, b1;
    pstate_make(&a0, 3, lens, (uint64_t[]){0, 1, 1}, (uint64_t[]){1, 2, 3});
    pstate_make(&a1, 3, lens, (uint64_t[]){0, 2, 1}, (uint64_t[]){4, 5, 3});
    pstate_make(&a2, 3, lens, (uint64_t[]){0, 2, 3}, (uint64_t[]){6, 5, 7});
    pstate_make(&b0, 3, lens, (uint64_t[]){0, 1, 1}, (uint64_t[]){8, 9, 10});
    pstate_make(&b1, 3, lens, (uint64_t[]){0, 1, 2}, (uint64_t[]){11, 9, 12});
    create_parts(st, "a", &a0);
    create_parts(st, "b", &b0);
    create_parts(st, "c", &b0);
    log_writes(path);
    const struct curvd_step_commit ca1 = {.step = 1,
                                          .state = state_in(&a1, &a0),
                                          .content_type = "x",
                                          .response = "ra1",
                                          .response_len = 3},
                                   ca2 = {.step = 2,
                                          .state = state_in(&a2, &a1),
                                          .content_type = "x",
                                          .response = "ra2",
                                          .response_len = 3},
                                   cb1 = {.step = 1,
                                          .state = state_in(&b1, &b0),
                                          .content_type = "x",
                                          .response = "rb1",
                                          .response_len = 3},
                                   cc5 = {.step = 5,
                                          .state = state_in(&b1, &b0),
                                          .content_type = "x",
                                          .response = "rc5",
                                          .response_len = 3};
    struct curvd_commit_item it[4] = {ITEM("a", &ca1), ITEM("c", &cc5), ITEM("b", &cb1),
                                      ITEM("a", &ca2)};
    struct curvd_commit_item *items[4] = {&it[0], &it[1], &it[2], &it[3]};
    curvd_store_commit_steps(st, items, 4);
    const int want[] = {CURVD_STORE_OK, CURVD_STORE_CONFLICT, CURVD_STORE_OK, CURVD_STORE_OK};
    for (int i = 0; i < 4; i++) {
        if (it[i].status != want[i])
            print_error("item %d: %s (%s)\n", i, curvd_store_status_name(it[i].status), it[i].err);
        assert_int_equal(it[i].status, want[i]);
    }
    /* a: the header and part 1 at step 1, header and part 2 at step 2. */
    assert_written(path, "a:0,a:0,a:1,a:2,b:0,b:2");
    assert_pstate(st, "a", &a2);
    assert_pstate(st, "b", &b1);
    assert_pstate(st, "c", &b0);
    curvd_store_close(st);
    struct pstate *all[] = {&a0, &a1, &a2, &b0, &b1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        pstate_free(all[i]);
}

/* A file of schema version 2 (migrations 0001 and 0002, as run then):
 * each state blob becomes one part with stamp 0, sessions.state empty;
 * the blobs read back byte for byte; the next write rewrites them. */
static void test_upgrade_moves_states(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("v2");
    assert_true(curvd_migration_count >= 3);
    su_raw_exec(path, curvd_migrations[0].sql);
    su_raw_exec(path, curvd_migrations[1].sql);
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = 2",
             CURVD_STORE_APPLICATION_ID);
    su_raw_exec(path, sql);
    struct pstate big;
    pstate_make(&big, 1, (size_t[]){50000}, (uint64_t[]){0}, (uint64_t[]){77});
    sqlite3 *db;
    sqlite3_stmt *q = su_raw_prepare(
        path, "INSERT INTO sessions VALUES (?1, 't', 'sgd', 1, 2, ?2, NULL, ?3)", &db);
    const char *ids[] = {"big", "small", "empty"};
    const size_t lens[] = {big.len, 3, 0};
    for (int i = 0; i < 3; i++) {
        sqlite3_bind_text(q, 1, ids[i], -1, SQLITE_STATIC);
        sqlite3_bind_int64(q, 2, i);
        sqlite3_bind_blob(q, 3, i == 1 ? (const void *)"abc" : big.blob, (int)lens[i],
                          SQLITE_STATIC);
        assert_int_equal(sqlite3_step(q), SQLITE_DONE);
        sqlite3_reset(q);
    }
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_exec(db,
                                  "INSERT INTO step_responses VALUES"
                                  " ('small', 2, 'application/json', '{\"k\":1}', x'7b7d')",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);

    struct curvd_store *st = open_ok(path);
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), (long long)curvd_migration_count);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM sessions WHERE length(state) > 0"), 0);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts"), 2);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts WHERE idx = 0 AND"
                                      " stamp = 0 AND session_id IN ('big', 'small')"),
                     2);
    assert_parts(st, "big", big.blob, big.len, (curv_state_part[]){{0, big.len, 0}}, 1);
    assert_parts(st, "small", "abc", 3, (curv_state_part[]){{0, 3, 0}}, 1);
    assert_parts(st, "empty", NULL, 0, NULL, 0);
    struct curvd_step_response r;
    assert_store(curvd_store_get_response(st, "t", "small", &r, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(r.step, 2);
    curvd_step_response_clear(&r);
    /* Stamp 0 matches nothing: the first write after the upgrade is whole. */
    log_writes(path);
    struct pstate next;
    pstate_make(&next, 2, (size_t[]){10, 49990}, (uint64_t[]){0, 0}, (uint64_t[]){1, 2});
    const curv_state_part was[1] = {{0, big.len, 0}};
    struct curvd_state_in in = state_in(&next, NULL);
    in.stored = was;
    in.n_stored = 1;
    struct curvd_step_commit c = {.step = 1, .state = in, .content_type = "x"};
    assert_store(curvd_store_commit_step(st, "t", "big", &c, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_written(path, "big:0,big:1");
    assert_pstate(st, "big", &next);
    curvd_store_close(st);
    pstate_free(&big);
    pstate_free(&next);
}

/* --- a real optimizer through the store ---------------------------------------------------- */

/* Keys of the parts that a store must write going from @prev to @next,
 * worked out here from the two divisions: "id:idx" joined by commas.
 * Returns their number. */
static size_t expected_writes(const char *id, const curv_state_part *prev, size_t n_prev,
                              const curv_state_part *next, size_t n_next, char *out, size_t cap)
{
    int same = prev && n_prev == n_next;
    for (size_t i = 0; same && i < n_next; i++)
        same = prev[i].offset == next[i].offset && prev[i].len == next[i].len;
    size_t k = 0, count = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n_next; i++)
        if (!same || next[i].stamp == 0 || next[i].stamp != prev[i].stamp) {
            k += (size_t)snprintf(out + k, cap - k, "%s%s:%zu", k ? "," : "", id, i);
            count++;
        }
    return count;
}

/* K-FAC (simple mode, statistics every 2nd step, inverses every 3rd) saved
 * with curv_opt_save_parts after each step and committed against the parts
 * committed before: the store writes exactly the parts whose stamp is 0 or
 * changed (fewer than all on most steps), every read gives the blob back
 * byte for byte, and the blob loads. A commit whose stored stamps claim
 * the new arrays are there already leaves old bytes under a new header:
 * curv_opt_load refuses that blob (CURV_E_CORRUPT). */
static void test_kfac_through_the_store(void **state)
{
    (void)state;
    const char *path = db_path("kfac");
    struct curvd_store *st = open_ok(path);
    tu_mlp net;
    const size_t widths[] = {4, 6, 3};
    curv_layout *l = tu_mlp_setup(&net, widths, 2, 2, 8, 3, 103);
    const tu_kv kv[] = {{"cov_interval", 2}, {"inv_interval", 3}, {"lr", 0.1}};
    curv_config *cfg = tu_config(kv, 3);
    tu_config_set(cfg, "mode", 0, "simple");
    curv_opt *o = tu_new_opt(CURV_OPT_KFAC, l, cfg);
    curv_config_free(cfg);
    unsigned char *blob;
    curv_state_part *parts, *prev;
    size_t len, n, n_prev;
    curv_error cerr;
    tu_assert_status(curv_opt_save_parts(o, &blob, &len, &prev, &n_prev, &cerr), CURV_OK, &cerr);
    struct curvd_session_new row = {"k", "t", "kfac", NULL, 0, {blob, len, prev, n_prev, NULL, 0},
                                    0,   0,   NULL,   NULL, 0, 0};
    assert_store(curvd_store_create(st, &row, NULL, err, sizeof err), CURVD_STORE_OK);
    curv_free(blob);
    log_writes(path);
    double *u = tu_alloc(net.dim);
    size_t partial = 0;
    for (int64_t t = 1; t <= 7; t++) {
        tu_assert_status(tu_mlp_step(o, &net, t % 2 == 1, u, NULL, &cerr), CURV_OK, &cerr);
        tu_assert_status(curv_opt_save_parts(o, &blob, &len, &parts, &n, &cerr), CURV_OK, &cerr);
        char want[512];
        partial += expected_writes("k", prev, n_prev, parts, n, want, sizeof want) < n;
        struct curvd_step_commit c = {
            .step = t, .state = {blob, len, parts, n, prev, n_prev}, .content_type = "x"};
        assert_store(curvd_store_commit_step(st, "t", "k", &c, NULL, err, sizeof err),
                     CURVD_STORE_OK);
        assert_written(path, want);
        assert_parts(st, "k", blob, len, parts, n);
        curv_free(blob);
        curv_free(prev);
        prev = parts;
        n_prev = n;
        for (size_t i = 0; i < net.dim; i++)
            net.theta[i] += u[i];
        tu_mlp_batch(&net, 200 + (uint64_t)t);
    }
    assert_true(partial >= 4);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "k", 1, &s, err, sizeof err), CURVD_STORE_OK);
    curv_opt *back = NULL;
    tu_assert_status(curv_opt_load(s.state, s.state_len, &back, &cerr), CURV_OK, &cerr);
    curv_opt_free(back);
    curvd_session_clear(&s);

    /* A step with statistics changes the factors; claim their old stamps
     * were the new ones. */
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &cerr), CURV_OK, &cerr);
    tu_assert_status(curv_opt_save_parts(o, &blob, &len, &parts, &n, &cerr), CURV_OK, &cerr);
    assert_int_equal(n, n_prev);
    size_t lied = 0;
    for (size_t i = 0; i < n; i++) {
        lied += parts[i].stamp && parts[i].stamp != prev[i].stamp;
        prev[i].stamp = parts[i].stamp;
    }
    assert_true(lied > 0);
    struct curvd_step_commit c = {
        .step = 8, .state = {blob, len, parts, n, prev, n_prev}, .content_type = "x"};
    assert_store(curvd_store_commit_step(st, "t", "k", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_get(st, "t", "k", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.state_len, len);
    assert_true(memcmp(s.state, blob, len) != 0);
    assert_int_equal(curv_opt_load(s.state, s.state_len, &back, &cerr), CURV_E_CORRUPT);
    curvd_session_clear(&s);
    curv_free(blob);
    curv_free(parts);
    curv_free(prev);
    free(u);
    tu_mlp_teardown(o, l, &net);
    curvd_store_close(st);
}

/* --- crashes in the middle of commits
 * ------------------------------------------------------------------------------ */

/* The state of step k, in four parts as libcurv would divide it: a
 * header rewritten every step (stamp 0), two parts whose bytes change
 * every 3rd and every 5th step (their stamps say when), and a tail that
 * changes every step and grows every 7th, which moves the division. Every
 * byte follows from k, so a reader can tell a whole state from a torn or
 * stale one, and most commits write only some of the parts. */
struct crash_state {
    unsigned char *blob;
    size_t len;
    curv_state_part p[4];
};

static unsigned char crash_byte(int64_t epoch, size_t i)
{
    return (unsigned char)(epoch * 131 + (int64_t)i * 7 + (int64_t)(i >> 9));
}

static void crash_make(int64_t k, struct crash_state *s)
{
    const int64_t epoch[4] = {4 * k, 4 * (k / 3) + 1, 4 * (k / 5) + 2, 4 * k + 3};
    const uint64_t stamp[4] = {0, (uint64_t)(k / 3) + 1, (uint64_t)(k / 5) + 1, (uint64_t)k + 1};
    const size_t lens[4] = {72, 20000, 3 * 16384 + 5, 2048 + (size_t)(k / 7 % 3) * 20000};
    s->len = 0;
    for (int i = 0; i < 4; i++) {
        s->p[i] = (curv_state_part){.offset = s->len, .len = lens[i], .stamp = stamp[i]};
        s->len += lens[i];
    }
    s->blob = malloc(s->len);
    assert_non_null(s->blob);
    for (int i = 0; i < 4; i++)
        for (size_t j = 0; j < lens[i]; j++)
            s->blob[s->p[i].offset + j] = crash_byte(epoch[i], j);
    memcpy(s->blob, &k, sizeof k);
}

/* Commit steps from where the store stands, each against the parts
 * committed before it (read back at the start, then its own). */
static void crash_child(const char *path, int fd, enum curvd_durability d)
{
    char e[256];
    struct curvd_store *st = NULL;
    struct curvd_session s;
    if (curvd_store_open(path, d, &st, e, sizeof e) ||
        curvd_store_get(st, "t", "c", 1, &s, e, sizeof e))
        _exit(2);
    curv_state_part known[4];
    size_t n_known = s.n_parts <= 4 ? s.n_parts : 0;
    if (n_known)
        memcpy(known, s.parts, n_known * sizeof known[0]);
    /* Say where it starts: the parent times its kill from here. */
    if (write(fd, &s.step, sizeof s.step) != (ssize_t)sizeof s.step)
        _exit(4);
    for (int64_t k = s.step + 1; k < s.step + 100000; k++) {
        struct crash_state c;
        crash_make(k, &c);
        char resp[32];
        int rlen = snprintf(resp, sizeof resp, "{\"step\":%lld}", (long long)k);
        struct curvd_step_commit sc = {
            .step = k,
            .state = {c.blob, c.len, c.p, 4, n_known ? known : NULL, n_known},
            .content_type = "application/json",
            .response = resp,
            .response_len = (size_t)rlen};
        if (curvd_store_commit_step(st, "t", "c", &sc, NULL, e, sizeof e))
            _exit(3);
        memcpy(known, c.p, sizeof known);
        n_known = 4;
        free(c.blob);
        /* Acknowledge only what has committed. */
        if (write(fd, &k, sizeof k) != (ssize_t)sizeof k)
            _exit(4);
    }
    _exit(5);
}

/* The store after a crash: sound, and at step @floor or @floor + 1 at
 * most, whole (every part of that step's state, its division and stamps).
 * Return the step found. */
static int64_t crash_verify(const char *path, int64_t acked, int64_t floor)
{
    char ok[16] = "ok";
    if (!su_pg_url()) /* PostgreSQL checks its own pages */
        su_raw_text(path, "PRAGMA integrity_check", ok, sizeof ok);
    assert_string_equal(ok, "ok");
    struct curvd_store *st = open_with(path, CURVD_DURABILITY_FULL);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "c", 0, &s, err, sizeof err), CURVD_STORE_OK);
    int64_t k = s.step;
    curvd_session_clear(&s);
    if (k < acked || k < floor || k > (acked > floor ? acked : floor) + 1)
        fail_msg("step %lld after the crash; acknowledged %lld, seen before %lld", (long long)k,
                 (long long)acked, (long long)floor);
    if (k > 0) {
        struct crash_state want;
        crash_make(k, &want);
        assert_parts(st, "c", want.blob, want.len, want.p, 4);
        free(want.blob);
        struct curvd_step_response r;
        assert_store(curvd_store_get_response(st, "t", "c", &r, err, sizeof err), CURVD_STORE_OK);
        char resp[32];
        int rlen = snprintf(resp, sizeof resp, "{\"step\":%lld}", (long long)k);
        assert_int_equal(r.step, k);
        assert_int_equal(r.body_len, (size_t)rlen);
        assert_memory_equal(r.body, resp, (size_t)rlen);
        curvd_step_response_clear(&r);
    }
    curvd_store_close(st);
    return k;
}

static void test_crash_durability(void **state)
{
    (void)state;
    const char *path = db_path("crash");
    /* On PostgreSQL the children's connections carry a name, so that the
     * backend of a killed one can be waited for (su_pg_wait_gone). */
    char child_path[1200];
    snprintf(child_path, sizeof child_path, su_pg_url() ? "%s&application_name=curvd_crash" : "%s",
             path);
    struct curvd_store *st = open_with(path, CURVD_DURABILITY_FULL);
    struct curvd_session_new in = {"c", "t", "kfac", NULL, 0, {.blob = NULL, .len = 0},
                                   0,   0,   NULL,   NULL, 0, 0};
    assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_OK);
    curvd_store_close(st);
    tu_rng rng;
    tu_rng_seed(&rng, 2024);
    double t0 = su_now_s();
    int64_t floor = 0, total_acked = 0;
    int iter = 0;
    for (; iter < 20 || (iter < 400 && su_now_s() - t0 < 4.0); iter++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        enum curvd_durability d = iter % 2 ? CURVD_DURABILITY_NORMAL : CURVD_DURABILITY_FULL;
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            crash_child(child_path, fds[1], d);
        }
        close(fds[1]);
        /* Most kills land among the commits, some during the open. A
         * fork can be slow (sanitizers map much memory), so the delay runs
         * from the child's word that it is ready. */
        int64_t k, acked = 0;
        ssize_t got;
        if (iter % 8 != 0) {
            if (read(fds[0], &k, sizeof k) == (ssize_t)sizeof k)
                assert_int_equal(k, floor); /* it found the state we saw */
            struct timespec nap = {0, (long)(tu_uniform(&rng) * 15e6)};
            nanosleep(&nap, NULL);
        }
        assert_int_equal(kill(pid, SIGKILL), 0);
        int ws = 0;
        assert_int_equal(waitpid(pid, &ws, 0), pid);
        if (!WIFSIGNALED(ws))
            fail_msg("child exited with %d before the kill", WEXITSTATUS(ws));
        if (su_pg_url())
            su_pg_wait_gone(path, "curvd_crash");
        for (int first = iter % 8 == 0; (got = read(fds[0], &k, sizeof k)) == (ssize_t)sizeof k;
             first = 0) {
            if (first) {
                assert_int_equal(k, floor);
                continue;
            }
            acked = k;
            total_acked++;
        }
        assert_int_equal(got, 0);
        close(fds[0]);
        floor = crash_verify(path, acked, floor);
    }
    print_message("crashes: %d kills, %lld acknowledged steps, final step %lld\n", iter,
                  (long long)total_acked, (long long)floor);
    assert_true(floor > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parts_round_trip),       cmocka_unit_test(test_parts_refused),
        cmocka_unit_test(test_group_commit_parts),     cmocka_unit_test(test_upgrade_moves_states),
        cmocka_unit_test(test_kfac_through_the_store), cmocka_unit_test(test_crash_durability),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
