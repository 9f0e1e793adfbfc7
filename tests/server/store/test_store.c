/* SPDX-License-Identifier: MIT */
/* The session store: opening and migrations, refusal of foreign and newer
 * files, create/get/list/delete, conditional step commits and replays,
 * large and empty blobs, lock contention, threads and allocation failures
 * (states in parts and SIGKILL mid-commit: test_store_parts.c). */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "srvutil.h"
#include "store/migrations.h"
#include "store/store.h"
#include "testutil.h"

static char dir[64];
static char err[512];

#define assert_store(expr, want) su_assert_store(expr, want, err)

/* --- helpers ------------------------------------------------------------------------------- */

/* A state of @len_ bytes at @blob_, stored as one part with stamp 0. */
#define WHOLE(blob_, len_)                                                                         \
    {                                                                                              \
        .blob = (blob_), .len = (len_)                                                             \
    }
#define STATE(blob_, len_) (&(struct curvd_state_in)WHOLE(blob_, len_))

static int group_setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/curvd-store-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(dir);
}

/* A new database of the test's backend: a path in the test directory
 * with no file left from before, or a PostgreSQL schema (su_db). */
static const char *db_path(const char *name)
{
    static char path[4][512];
    static int next;
    char *p = path[next++ % 4];
    su_db(dir, name, p, 512);
    return p;
}

static struct curvd_store *open_ok(const char *path, enum curvd_durability d)
{
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, d, &st, err, sizeof err), CURVD_STORE_OK);
    assert_non_null(st);
    return st;
}

static unsigned char *random_blob(uint64_t seed, size_t n)
{
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    tu_rng r;
    tu_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(tu_uniform(&r) * 256);
    return p;
}

static void create_ok(struct curvd_store *st, const char *tenant, const char *id, const void *state,
                      size_t len)
{
    struct curvd_session_new s = {id, tenant, "sgd", NULL, 0, WHOLE(state, len),
                                  0,  0,      NULL,  NULL, 0, 0};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
}

static void assert_bytes(const unsigned char *got, size_t got_len, const void *want,
                         size_t want_len)
{
    assert_int_equal(got_len, want_len);
    if (want_len)
        assert_memory_equal(got, want, want_len);
    else
        assert_null(got);
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- opening ------------------------------------------------------------------------------ */

static void test_status_names(void **state)
{
    (void)state;
    const char *want[] = {"OK",    "NOT_FOUND", "CONFLICT", "INVALID", "BUSY",
                          "ERROR", "FULL",      "FENCED",   "LEASED"};
    for (int i = 0; i < 9; i++)
        assert_string_equal(curvd_store_status_name(i), want[i]);
    assert_int_equal(CURVD_STORE_ERROR, 5);
    assert_int_equal(CURVD_STORE_FULL, 6);
    assert_int_equal(CURVD_STORE_FENCED, 7);
    assert_int_equal(CURVD_STORE_LEASED, 8);
    assert_string_equal(curvd_store_status_name(9), "UNKNOWN");
    assert_string_equal(curvd_store_status_name(-1), "UNKNOWN");
}

static void test_open_fresh_applies_migrations(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("fresh");
    assert_true(curvd_migration_count >= 1);
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_FULL);
    struct curvd_store_info info;
    assert_store(curvd_store_info(st, &info, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(info.schema_version, (int)curvd_migration_count);
    assert_int_equal(info.application_id, CURVD_STORE_APPLICATION_ID);
    assert_int_equal(info.page_size, CURVD_STORE_PAGE_SIZE);
    assert_int_equal(info.synchronous, 2);
    assert_string_equal(info.journal_mode, "wal");
    curvd_store_close(st);
    /* The file says so to anyone, not just to this connection. */
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), (long long)curvd_migration_count);
    assert_int_equal(su_raw_int(path, "PRAGMA application_id"), CURVD_STORE_APPLICATION_ID);
    assert_int_equal(su_raw_int(path, "PRAGMA page_size"), CURVD_STORE_PAGE_SIZE);
    char mode[16];
    su_raw_text(path, "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "wal");
    assert_int_equal(
        su_raw_int(path, "SELECT count(*) FROM sqlite_schema WHERE name IN "
                         "('sessions', 'step_responses', 'sessions_by_tenant', 'state_parts')"),
        4);
    /* NORMAL durability is NORMAL synchronous. */
    st = open_ok(path, CURVD_DURABILITY_NORMAL);
    assert_store(curvd_store_info(st, &info, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(info.synchronous, 1);
    curvd_store_close(st);
}

static void test_reopen_is_noop(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("reopen");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_NORMAL);
    create_ok(st, "t", "a", "xyz", 3);
    curvd_store_close(st);
    long long objects = su_raw_int(path, "SELECT count(*) FROM sqlite_schema");
    char schema[4096];
    su_raw_text(path, "SELECT group_concat(sql, ';') FROM sqlite_schema", schema, sizeof schema);
    for (int i = 0; i < 3; i++) {
        st = open_ok(path, CURVD_DURABILITY_FULL);
        struct curvd_session s;
        assert_store(curvd_store_get(st, "t", "a", 1, &s, err, sizeof err), CURVD_STORE_OK);
        assert_bytes(s.state, s.state_len, "xyz", 3);
        curvd_session_clear(&s);
        curvd_store_close(st);
    }
    char again[4096];
    su_raw_text(path, "SELECT group_concat(sql, ';') FROM sqlite_schema", again, sizeof again);
    assert_string_equal(schema, again);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM sqlite_schema"), objects);
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), (long long)curvd_migration_count);
}

static void test_open_refuses_foreign_file(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("foreign");
    su_raw_exec(path, "PRAGMA application_id = 305419896; CREATE TABLE t (x)");
    struct curvd_store *st = (struct curvd_store *)&st;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "not a curvd database"));
    assert_non_null(strstr(err, "0x12345678"));
    assert_ptr_equal(st, (struct curvd_store *)&st); /* untouched on failure */
    /* Refused before anything was changed: still in rollback-journal mode. */
    char mode[16];
    su_raw_text(path, "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "delete");
    assert_int_equal(su_raw_int(path, "PRAGMA application_id"), 305419896);

    /* An unmarked file that already holds tables is someone else's too. */
    path = db_path("unmarked");
    su_raw_exec(path, "CREATE TABLE sessions (x)");
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "not a curvd database"));
    assert_int_equal(su_raw_int(path, "PRAGMA application_id"), 0);
}

static void test_open_refuses_newer_version(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("newer");
    curvd_store_close(open_ok(path, CURVD_DURABILITY_FULL));
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %u", curvd_migration_count + 1);
    su_raw_exec(path, sql);
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "newer"));
    assert_null(st);
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), curvd_migration_count + 1);
}

static void test_open_refuses_bad_files(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    struct curvd_store *st = NULL;
    /* Not a database at all. */
    const char *path = db_path("garbage");
    unsigned char *junk = random_blob(7, 8192);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(junk, 1, 8192, f), 8192);
    fclose(f);
    free(junk);
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "not a database"));
    /* A directory that does not exist. */
    char missing[300];
    snprintf(missing, sizeof missing, "%s/no/such/dir.db", dir);
    assert_store(curvd_store_open(missing, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "cannot open"));
    /* No WAL without a file. */
    assert_store(curvd_store_open(":memory:", CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "write-ahead"));
    assert_null(st);
}

static void test_open_failed_migration_rolls_back(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    /* Ours, at version 0, but a table in the way of migration 1. */
    const char *path = db_path("intheway");
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; CREATE TABLE sessions (x)",
             CURVD_STORE_APPLICATION_ID);
    su_raw_exec(path, sql);
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, curvd_migrations[0].name));
    assert_non_null(strstr(err, "already exists"));
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), 0);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM sqlite_schema"), 1);

    /* Claims the current version but lacks the tables. */
    path = db_path("hollow");
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = %u",
             CURVD_STORE_APPLICATION_ID, curvd_migration_count);
    su_raw_exec(path, sql);
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "schema does not match"));
    assert_non_null(strstr(err, "no such table"));
}

static void test_invalid_arguments(void **state)
{
    (void)state;
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(NULL, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_open("x.db", CURVD_DURABILITY_FULL, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_open("x.db", (enum curvd_durability)7, &st, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_int_equal(access("x.db", F_OK), -1);
    curvd_store_close(NULL);
    curvd_session_clear(NULL);
    curvd_session_list_clear(NULL);
    curvd_step_response_clear(NULL);
    /* NULL err is allowed everywhere. */
    assert_int_equal(curvd_store_open(NULL, CURVD_DURABILITY_FULL, &st, NULL, 0),
                     CURVD_STORE_INVALID);

    st = open_ok(db_path("args"), CURVD_DURABILITY_NORMAL);
    struct curvd_session s;
    struct curvd_session_list l;
    struct curvd_step_response r;
    struct curvd_store_info info;
    struct curvd_step_commit c = {
        .step = 1, .state = WHOLE(NULL, 0), .content_type = "application/json"};
    int64_t n;
    struct curvd_session_new bad[] = {
        {NULL, "t", "sgd", NULL, 0, WHOLE(NULL, 0), 0, 0, NULL, NULL, 0, 0},
        {"a", NULL, "sgd", NULL, 0, WHOLE(NULL, 0), 0, 0, NULL, NULL, 0, 0},
        {"a", "t", NULL, NULL, 0, WHOLE(NULL, 0), 0, 0, NULL, NULL, 0, 0},
        {"a", "t", "sgd", NULL, -1, WHOLE(NULL, 0), 0, 0, NULL, NULL, 0, 0},
        {"a", "t", "sgd", NULL, 0, WHOLE(NULL, 5), 0, 0, NULL, NULL, 0, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_store(curvd_store_create(st, &bad[i], NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_create(NULL, &bad[0], NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_create(st, NULL, NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_get(st, NULL, "a", 0, &s, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_get(st, "t", NULL, 0, &s, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_get(st, "t", "a", 0, NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_list(st, NULL, 10, NULL, &l, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_list(st, "t", 10, NULL, NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_delete(st, "t", NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_delete(NULL, "t", "a", err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_commit_step(st, "t", "a", NULL, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    c.step = 0;
    assert_store(curvd_store_commit_step(st, "t", "a", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    c.step = 1;
    c.content_type = NULL;
    assert_store(curvd_store_commit_step(st, "t", "a", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    c.content_type = "application/json";
    c.state.len = 3;
    assert_store(curvd_store_commit_step(st, "t", "a", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    c.state.len = 0;
    c.response_len = 3;
    assert_store(curvd_store_commit_step(st, "t", "a", &c, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_update_state(st, "t", "a", -1, CURVD_STORE_ANY_EPOCH, STATE(NULL, 0),
                                          NULL, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_update_state(st, "t", "a", 0, CURVD_STORE_ANY_EPOCH, STATE(NULL, 9),
                                          NULL, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_update_state(st, NULL, "a", 0, CURVD_STORE_ANY_EPOCH, STATE(NULL, 0),
                                          NULL, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_get_response(st, "t", "a", NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_get_response(st, NULL, "a", &r, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_count(st, NULL, NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_count(NULL, NULL, &n, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_info(st, NULL, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_info(NULL, &info, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_set_busy_timeout(st, -1, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_set_busy_timeout(NULL, 10, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_count(st, NULL, &n, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(n, 0);
    curvd_store_close(st);
}

/* --- sessions ----------------------------------------------------------------------------- */

static void test_create_get_delete(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("crud"), CURVD_DURABILITY_NORMAL);
    unsigned char *blob = random_blob(1, 1000);
    struct curvd_session_new in = {
        "s1", "acme", "adagrad_bma", "{\"lr\":0.1}", 7, WHOLE(blob, 1000), 0, 0, NULL, NULL, 0, 0};
    int64_t t0 = wall_ms(), created = 0;
    assert_store(curvd_store_create(st, &in, &created, err, sizeof err), CURVD_STORE_OK);
    assert_true(created >= t0 && created <= wall_ms());

    struct curvd_session s;
    assert_store(curvd_store_get(st, "acme", "s1", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_string_equal(s.id, "s1");
    assert_string_equal(s.tenant, "acme");
    assert_string_equal(s.optimizer, "adagrad_bma");
    assert_string_equal(s.meta, "{\"lr\":0.1}");
    assert_int_equal(s.step, 7);
    assert_int_equal(s.created_at, created);
    assert_int_equal(s.updated_at, created);
    assert_bytes(s.state, s.state_len, blob, 1000);
    curvd_session_clear(&s);
    assert_null(s.id);
    /* Without the state. */
    assert_store(curvd_store_get(st, "acme", "s1", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_null(s.state);
    assert_int_equal(s.state_len, 0);
    assert_int_equal(s.step, 7);
    curvd_session_clear(&s);

    /* A duplicate id conflicts, whatever the tenant; the first one stays. */
    struct curvd_session_new dup = {"s1", "other", "sgd", NULL, 0, WHOLE("x", 1),
                                    0,    0,       NULL,  NULL, 0, 0};
    assert_store(curvd_store_create(st, &dup, NULL, err, sizeof err), CURVD_STORE_CONFLICT);
    assert_non_null(strstr(err, "s1"));
    dup.tenant = "acme";
    assert_store(curvd_store_create(st, &dup, NULL, err, sizeof err), CURVD_STORE_CONFLICT);

    /* Another tenant sees nothing and deletes nothing. */
    assert_store(curvd_store_get(st, "other", "s1", 1, &s, err, sizeof err), CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_get(st, "acme", "nope", 1, &s, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_delete(st, "other", "s1", err, sizeof err), CURVD_STORE_NOT_FOUND);
    int64_t n = 0;
    assert_store(curvd_store_count(st, NULL, &n, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(n, 1);
    assert_store(curvd_store_count(st, "other", &n, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(n, 0);

    assert_store(curvd_store_delete(st, "acme", "s1", err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_get(st, "acme", "s1", 1, &s, err, sizeof err), CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_delete(st, "acme", "s1", err, sizeof err), CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_count(st, "acme", &n, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(n, 0);
    /* The id is free again. */
    assert_store(curvd_store_create(st, &dup, NULL, err, sizeof err), CURVD_STORE_OK);
    free(blob);
    curvd_store_close(st);
}

/* Spin until the millisecond clock moves, so that creation times differ. */
static void next_ms(void)
{
    int64_t t = wall_ms();
    while (wall_ms() == t)
        ;
}

struct key {
    int64_t created_at;
    char id[16];
};

static int key_cmp(const void *a, const void *b)
{
    const struct key *x = a, *y = b;
    if (x->created_at != y->created_at)
        return x->created_at < y->created_at ? -1 : 1;
    return strcmp(x->id, y->id);
}

/* Page through @tenant with @page_size, checking the page bounds, and
 * collect the ids in order. Return the number of sessions seen. */
static size_t list_all(struct curvd_store *st, const char *tenant, size_t page_size,
                       struct key *got, size_t cap)
{
    size_t n = 0;
    char *token = NULL;
    do {
        struct curvd_session_list l;
        assert_store(curvd_store_list(st, tenant, page_size, token, &l, err, sizeof err),
                     CURVD_STORE_OK);
        sqlite3_free(token);
        token = NULL;
        assert_true(l.count <= page_size);
        /* A page that announces another is full; no empty last page. */
        if (l.next_page_token)
            assert_int_equal(l.count, page_size);
        for (size_t i = 0; i < l.count; i++) {
            assert_true(n < cap);
            assert_string_equal(l.items[i].tenant, tenant);
            assert_null(l.items[i].state);
            got[n].created_at = l.items[i].created_at;
            snprintf(got[n].id, sizeof got[n].id, "%s", l.items[i].id);
            n++;
        }
        if (l.next_page_token) {
            token = l.next_page_token;
            l.next_page_token = NULL;
            /* The token is URL-safe as it stands. */
            assert_int_equal(strspn(token, "0123456789abcdef"), strlen(token));
        }
        curvd_session_list_clear(&l);
    } while (token);
    return n;
}

static void test_list_pagination(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("list"), CURVD_DURABILITY_NORMAL);
    enum { N = 23 };
    struct key want[N];
    /* Ids run against creation order, and creation times tie in groups,
     * so that both parts of the key matter. */
    for (int i = 0; i < N; i++) {
        if (i % 5 == 0)
            next_ms();
        snprintf(want[i].id, sizeof want[i].id, "s%02d", N - i);
        struct curvd_session_new in = {want[i].id, "acme", "sgd", NULL, 0, WHOLE(NULL, 0),
                                       0,          0,      NULL,  NULL, 0, 0};
        assert_store(curvd_store_create(st, &in, &want[i].created_at, err, sizeof err),
                     CURVD_STORE_OK);
        char other[16];
        snprintf(other, sizeof other, "o%02d", i);
        if (i % 4 == 0)
            create_ok(st, "other", other, NULL, 0);
    }
    qsort(want, N, sizeof want[0], key_cmp);
    const size_t sizes[] = {1, 2, 5, 7, 22, 23, 24, CURVD_STORE_MAX_PAGE};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        struct key got[N + 1];
        assert_int_equal(list_all(st, "acme", sizes[k], got, N + 1), N);
        for (int i = 0; i < N; i++) {
            assert_string_equal(got[i].id, want[i].id);
            assert_int_equal(got[i].created_at, want[i].created_at);
        }
    }
    struct key got[N];
    assert_int_equal(list_all(st, "other", 2, got, N), 6);
    assert_int_equal(list_all(st, "nobody", 10, got, N), 0);
    curvd_store_close(st);
}

static void test_list_is_keyset(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("keyset"), CURVD_DURABILITY_NORMAL);
    const char *ids[] = {"a", "b", "c", "d", "e", "f", "g"};
    for (int i = 0; i < 7; i++)
        create_ok(st, "t", ids[i], NULL, 0);
    struct curvd_session_list l;
    assert_store(curvd_store_list(st, "t", 3, NULL, &l, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(l.count, 3);
    assert_string_equal(l.items[2].id, "c");
    /* The row the token points at, and one ahead, disappear; a new one
     * arrives. The next page still starts right after "c". */
    assert_store(curvd_store_delete(st, "t", "c", err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_delete(st, "t", "e", err, sizeof err), CURVD_STORE_OK);
    next_ms();
    create_ok(st, "t", "0new", NULL, 0);
    struct curvd_session_list l2;
    assert_store(curvd_store_list(st, "t", 3, l.next_page_token, &l2, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l2.count, 3);
    assert_string_equal(l2.items[0].id, "d");
    assert_string_equal(l2.items[1].id, "f");
    assert_string_equal(l2.items[2].id, "g");
    assert_non_null(l2.next_page_token);
    struct curvd_session_list l3;
    assert_store(curvd_store_list(st, "t", 3, l2.next_page_token, &l3, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l3.count, 1);
    assert_string_equal(l3.items[0].id, "0new");
    assert_null(l3.next_page_token);
    /* A token from one tenant shows another tenant only its own rows. */
    struct curvd_session_list l4;
    assert_store(curvd_store_list(st, "u", 3, l.next_page_token, &l4, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l4.count, 0);
    curvd_session_list_clear(&l);
    curvd_session_list_clear(&l2);
    curvd_session_list_clear(&l3);
    curvd_session_list_clear(&l4);
    curvd_store_close(st);
}

static void test_list_refuses_bad_tokens(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("tokens"), CURVD_DURABILITY_NORMAL);
    create_ok(st, "t", "a", NULL, 0);
    struct curvd_session_list l;
    const char *bad[] = {
        "zz",                   /* not hex, short */
        "0123",                 /* short */
        "0000000000000000",     /* no id */
        "000000000000000061a",  /* odd length */
        "00000000000000006g",   /* not hex */
        "000000000000000061AB", /* upper case is not ours */
        "00000000000000006100", /* a NUL byte in the id */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_store(curvd_store_list(st, "t", 10, bad[i], &l, err, sizeof err),
                     CURVD_STORE_INVALID);
        assert_non_null(strstr(err, "page_token"));
    }
    assert_store(curvd_store_list(st, "t", 0, NULL, &l, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(curvd_store_list(st, "t", CURVD_STORE_MAX_PAGE + 1, NULL, &l, err, sizeof err),
                 CURVD_STORE_INVALID);
    /* A well-formed token made by hand, for the key (0, "a"): the session
     * "a" was created after 1970, so it sorts after that key. "" is the
     * first page. */
    assert_store(curvd_store_list(st, "t", 10, "000000000000000061", &l, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(l.count, 1);
    curvd_session_list_clear(&l);
    assert_store(curvd_store_list(st, "t", 10, "", &l, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(l.count, 1);
    assert_null(l.next_page_token);
    curvd_session_list_clear(&l);
    curvd_store_close(st);
}

/* --- steps ------------------------------------------------------------------------------- */

static void commit_ok(struct curvd_store *st, const char *tenant, const char *id, int64_t step,
                      const void *state, size_t len, const void *resp, size_t resp_len)
{
    struct curvd_step_commit c = {.step = step,
                                  .state = WHOLE(state, len),
                                  .content_type = "application/json",
                                  .response = resp,
                                  .response_len = resp_len};
    assert_store(curvd_store_commit_step(st, tenant, id, &c, NULL, err, sizeof err),
                 CURVD_STORE_OK);
}

static void assert_state(struct curvd_store *st, const char *tenant, const char *id, int64_t step,
                         const void *state, size_t len)
{
    struct curvd_session s;
    assert_store(curvd_store_get(st, tenant, id, 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, step);
    assert_bytes(s.state, s.state_len, state, len);
    curvd_session_clear(&s);
}

static void test_commit_step(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("commit"), CURVD_DURABILITY_FULL);
    unsigned char *b0 = random_blob(10, 5000), *b1 = random_blob(11, 6000);
    create_ok(st, "t", "s", b0, 5000);
    struct curvd_session before;
    assert_store(curvd_store_get(st, "t", "s", 0, &before, err, sizeof err), CURVD_STORE_OK);
    next_ms();
    commit_ok(st, "t", "s", 1, b1, 6000, "{\"step\":1}", 10);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, 1);
    assert_bytes(s.state, s.state_len, b1, 6000);
    assert_int_equal(s.created_at, before.created_at);
    assert_true(s.updated_at > before.updated_at);
    curvd_session_clear(&s);
    curvd_session_clear(&before);

    /* Ahead, behind, and the same step again: CONFLICT, nothing written. */
    const int64_t wrong[] = {3, 1, 100};
    for (int i = 0; i < 3; i++) {
        struct curvd_step_commit c = {.step = wrong[i],
                                      .state = WHOLE(b0, 5000),
                                      .content_type = "text/plain",
                                      .response = "no",
                                      .response_len = 2};
        int64_t cur = -1;
        assert_store(curvd_store_commit_step(st, "t", "s", &c, &cur, err, sizeof err),
                     CURVD_STORE_CONFLICT);
        assert_int_equal(cur, 1);
        assert_non_null(strstr(err, "at step 1"));
        assert_state(st, "t", "s", 1, b1, 6000);
        struct curvd_step_response r;
        assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err), CURVD_STORE_OK);
        assert_int_equal(r.step, 1);
        assert_string_equal(r.content_type, "application/json");
        assert_bytes(r.body, r.body_len, "{\"step\":1}", 10);
        curvd_step_response_clear(&r);
    }
    /* A conflict without a place for the step is still a conflict. */
    struct curvd_step_commit c = {.step = 5,
                                  .state = WHOLE(b0, 5000),
                                  .content_type = "text/plain",
                                  .response = "no",
                                  .response_len = 2};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                 CURVD_STORE_CONFLICT);
    /* Unknown session, or another tenant's. */
    int64_t cur = -1;
    c.step = 2;
    assert_store(curvd_store_commit_step(st, "t", "nope", &c, &cur, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_commit_step(st, "u", "s", &c, &cur, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_int_equal(cur, -1);
    assert_state(st, "t", "s", 1, b1, 6000);
    /* The next step goes through, and its reply replaces the last one. */
    commit_ok(st, "t", "s", 2, b0, 5000, "{\"step\":2}", 10);
    assert_state(st, "t", "s", 2, b0, 5000);
    free(b0);
    free(b1);
    curvd_store_close(st);
}

static void assert_reply(struct curvd_store *st, const char *id, int64_t step, const char *body)
{
    struct curvd_step_response r;
    assert_store(curvd_store_get_response(st, "t", id, &r, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(r.step, step);
    assert_bytes(r.body, r.body_len, body, strlen(body));
    curvd_step_response_clear(&r);
}

#define ITEM(id_, c_)                                                                              \
    {                                                                                              \
        .tenant = "t", .id = (id_), .c = (c_)                                                      \
    }

/* Several steps in one transaction: each gets the outcome it would get
 * alone, and one item's failure is never another's. */
static void test_commit_steps(void **state)
{
    (void)state;
    const char *path = db_path("group");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_FULL);
    create_ok(st, "t", "a", "a0", 2);
    create_ok(st, "t", "b", "b0", 2);
    create_ok(st, "t", "c", "c0", 2);
    const struct curvd_step_commit a1 = {.step = 1,
                                         .state = WHOLE("a1", 2),
                                         .content_type = "x",
                                         .response = "ra1",
                                         .response_len = 3},
                                   a2 = {.step = 2,
                                         .state = WHOLE("a2", 2),
                                         .content_type = "x",
                                         .response = "ra2",
                                         .response_len = 3},
                                   b2 = {.step = 2,
                                         .state = WHOLE("b2", 2),
                                         .content_type = "x",
                                         .response = "rb2",
                                         .response_len = 3},
                                   c1 = {.step = 1,
                                         .state = WHOLE("c1", 2),
                                         .content_type = "x",
                                         .response = "rc1",
                                         .response_len = 3},
                                   bad = {.step = 1,
                                          .state = WHOLE("z", 1),
                                          .response = "r",
                                          .response_len = 1};
    struct curvd_commit_item it[6] = {ITEM("a", &a1), ITEM("b", &b2), ITEM("nope", &c1),
                                      ITEM("c", &c1), ITEM("a", &a2), ITEM("c", &bad)};
    struct curvd_commit_item *items[6];
    for (int i = 0; i < 6; i++) {
        items[i] = &it[i];
        it[i].current_step = -1;
    }
    curvd_store_commit_steps(st, items, 6);
    static const int want[] = {CURVD_STORE_OK, CURVD_STORE_CONFLICT, CURVD_STORE_NOT_FOUND,
                               CURVD_STORE_OK, CURVD_STORE_OK,       CURVD_STORE_INVALID};
    for (int i = 0; i < 6; i++) {
        if (it[i].status != want[i])
            print_error("item %d: %s (%s)\n", i, curvd_store_status_name(it[i].status), it[i].err);
        assert_int_equal(it[i].status, want[i]);
    }
    assert_int_equal(it[1].current_step, 0);
    assert_non_null(strstr(it[1].err, "at step 0"));
    assert_non_null(strstr(it[2].err, "no session"));
    assert_non_null(strstr(it[5].err, "invalid argument"));
    /* Durable: a new connection sees exactly the committed items. */
    curvd_store_close(st);
    st = open_ok(path, CURVD_DURABILITY_FULL);
    assert_state(st, "t", "a", 2, "a2", 2);
    assert_state(st, "t", "b", 0, "b0", 2);
    assert_state(st, "t", "c", 1, "c1", 2);
    assert_reply(st, "a", 2, "ra2");
    assert_reply(st, "c", 1, "rc1");

    /* A blob past SQLite's limit spoils the transaction: the others go
     * through one by one, and the culprit alone is refused. */
    static const char tiny[1];
    const struct curvd_step_commit a3 = {.step = 3,
                                         .state = WHOLE("a3", 2),
                                         .content_type = "x",
                                         .response = "ra3",
                                         .response_len = 3},
                                   b1big = {.step = 1,
                                            .state = WHOLE(tiny, 1500000000u),
                                            .content_type = "x",
                                            .response = "r",
                                            .response_len = 1},
                                   c2 = {.step = 2,
                                         .state = WHOLE("c2", 2),
                                         .content_type = "x",
                                         .response = "rc2",
                                         .response_len = 3};
    struct curvd_commit_item jt[3] = {ITEM("a", &a3), ITEM("b", &b1big), ITEM("c", &c2)};
    struct curvd_commit_item *jtems[3] = {&jt[0], &jt[1], &jt[2]};
    curvd_store_commit_steps(st, jtems, 3);
    assert_int_equal(jt[0].status, CURVD_STORE_OK);
    assert_int_equal(jt[1].status, CURVD_STORE_INVALID);
    assert_non_null(strstr(jt[1].err, "too big"));
    assert_int_equal(jt[2].status, CURVD_STORE_OK);
    assert_state(st, "t", "a", 3, "a3", 2);
    assert_state(st, "t", "b", 0, "b0", 2);
    assert_state(st, "t", "c", 2, "c2", 2);

    /* A locked database fails every item, and writes nothing. */
    assert_store(curvd_store_set_busy_timeout(st, 0, err, sizeof err), CURVD_STORE_OK);
    struct su_lock *other = su_raw_lock(path);
    const struct curvd_step_commit a4 = {.step = 4,
                                         .state = WHOLE("a4", 2),
                                         .content_type = "x",
                                         .response = "ra4",
                                         .response_len = 3},
                                   c3 = {.step = 3,
                                         .state = WHOLE("c3", 2),
                                         .content_type = "x",
                                         .response = "r",
                                         .response_len = 1};
    struct curvd_commit_item kt[2] = {ITEM("a", &a4), ITEM("c", &c3)};
    struct curvd_commit_item *ktems[2] = {&kt[0], &kt[1]};
    curvd_store_commit_steps(st, ktems, 2);
    assert_int_equal(kt[0].status, CURVD_STORE_BUSY);
    assert_int_equal(kt[1].status, CURVD_STORE_BUSY);
    assert_non_null(strstr(kt[0].err, "locked"));
    su_raw_unlock(other);
    assert_state(st, "t", "a", 3, "a3", 2);
    assert_state(st, "t", "c", 2, "c2", 2);
    curvd_store_commit_steps(st, ktems, 2);
    assert_int_equal(kt[0].status, CURVD_STORE_OK);
    assert_int_equal(kt[1].status, CURVD_STORE_OK);
    assert_state(st, "t", "c", 3, "c3", 2);
    curvd_store_close(st);
}

/* Checkpoints run on the store's own thread: the database file takes the
 * committed pages while the store is open, and the data reads back. */
static void test_checkpoints_in_background(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("ckpt");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_NORMAL);
    create_ok(st, "t", "s", "a", 1);
    enum { BLOB = 512 * 1024, STEPS = 40 }; /* 20 MB: past CURVD_CKPT_PAGES of WAL */
    unsigned char *b = NULL;
    for (int k = 1; k <= STEPS; k++) {
        free(b);
        b = random_blob(100 + (uint64_t)k, BLOB);
        commit_ok(st, "t", "s", k, b, BLOB, "{}", 2);
    }
    struct stat sb = {0};
    for (int i = 0; i < 2000 && (stat(path, &sb) != 0 || sb.st_size < BLOB); i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    assert_true(sb.st_size >= BLOB);
    assert_state(st, "t", "s", STEPS, b, BLOB);
    curvd_store_close(st);
    st = open_ok(path, CURVD_DURABILITY_NORMAL);
    assert_state(st, "t", "s", STEPS, b, BLOB);
    curvd_store_close(st);
    free(b);
}

static void test_response_replay(void **state)
{
    (void)state;
    const char *path = db_path("replay");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_FULL);
    create_ok(st, "t", "s", "a", 1);
    struct curvd_step_response r;
    /* Nothing stored before the first step, nor for strangers. */
    assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    unsigned char *body = random_blob(3, 70000);
    struct curvd_step_commit c = {.step = 1,
                                  .state = WHOLE("b", 1),
                                  .content_type = "application/octet-stream",
                                  .response = body,
                                  .response_len = 70000};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_get_response(st, "u", "s", &r, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    curvd_store_close(st);
    /* Still there after a reopen, byte for byte. */
    st = open_ok(path, CURVD_DURABILITY_FULL);
    for (int i = 0; i < 2; i++) {
        assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err), CURVD_STORE_OK);
        assert_int_equal(r.step, 1);
        assert_string_equal(r.content_type, "application/octet-stream");
        assert_bytes(r.body, r.body_len, body, 70000);
        curvd_step_response_clear(&r);
    }
    /* A state update leaves the reply alone. */
    assert_store(curvd_store_update_state(st, "t", "s", 1, CURVD_STORE_ANY_EPOCH, STATE("c", 1),
                                          NULL, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err), CURVD_STORE_OK);
    assert_bytes(r.body, r.body_len, body, 70000);
    curvd_step_response_clear(&r);
    /* Deleting the session deletes its reply: a new session of that id
     * has none. */
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    create_ok(st, "t", "s", "a", 1);
    assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    curvd_store_close(st);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_responses"), 0);
    free(body);
}

/* The report of the latest step: stored with it, read with the session
 * and with each listed one, replaced by the next step, kept by a refused
 * commit and a state update, gone with the session. */
static void test_step_reports(void **state)
{
    (void)state;
    const char *path = db_path("reports");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_FULL);
    create_ok(st, "t", "s", "a", 1);
    create_ok(st, "t", "other", "a", 1);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.last_step, 0);
    assert_null(s.last_report);
    curvd_session_clear(&s);
    unsigned char *body = random_blob(5, 70000); /* many overflow pages */
    struct curvd_step_commit c = {.step = 1,
                                  .state = WHOLE("b", 1),
                                  .content_type = "application/json",
                                  .response = body,
                                  .response_len = 70000,
                                  .report = "{\"rho\":0.25}"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    c.report = "{\"rho\":2}";
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                 CURVD_STORE_CONFLICT);
    assert_store(curvd_store_update_state(st, "t", "s", 1, CURVD_STORE_ANY_EPOCH, STATE("c", 1),
                                          NULL, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    curvd_store_close(st);
    st = open_ok(path, CURVD_DURABILITY_FULL);
    assert_store(curvd_store_get(st, "t", "s", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.last_step, 1);
    assert_string_equal(s.last_report, "{\"rho\":0.25}");
    assert_bytes(s.state, s.state_len, "c", 1);
    curvd_session_clear(&s);
    struct curvd_session_list l;
    assert_store(curvd_store_list(st, "t", 10, NULL, &l, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(l.count, 2);
    for (size_t i = 0; i < l.count; i++) {
        int mine = strcmp(l.items[i].id, "s") == 0;
        assert_int_equal(l.items[i].last_step, mine ? 1 : 0);
        if (mine)
            assert_string_equal(l.items[i].last_report, "{\"rho\":0.25}");
        else
            assert_null(l.items[i].last_report);
    }
    curvd_session_list_clear(&l);
    /* A step committed without a report has none. */
    c = (struct curvd_step_commit){.step = 2,
                                   .state = WHOLE("d", 1),
                                   .content_type = "application/json",
                                   .response = "{}",
                                   .response_len = 2};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.last_step, 2);
    assert_null(s.last_report);
    curvd_session_clear(&s);
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    create_ok(st, "t", "s", "a", 1);
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.last_step, 0);
    assert_null(s.last_report);
    curvd_session_clear(&s);
    curvd_store_close(st);
    /* The report lies before the body in each row, so reading it never
     * walks the body's overflow pages (SQLite's layout). */
    assert_true(su_pg_url() ||
                su_raw_int(path, "SELECT cid FROM pragma_table_info('step_responses')"
                                 " WHERE name = 'report'") <
                    su_raw_int(path, "SELECT cid FROM pragma_table_info('step_responses')"
                                     " WHERE name = 'body'"));
    free(body);
}

/* A database of schema version 1 with a stored reply: the upgrade keeps
 * the reply byte for byte, the step has no report nor request digest, the
 * next one has both. */
static void test_upgrade_keeps_replies(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    const char *path = db_path("v1");
    char sql[128];
    su_raw_exec(path, curvd_migrations[0].sql);
    snprintf(sql, sizeof sql, "PRAGMA application_id = %d; PRAGMA user_version = 1",
             CURVD_STORE_APPLICATION_ID);
    su_raw_exec(path, sql);
    su_raw_exec(path, "INSERT INTO sessions VALUES ('s', 't', 'sgd', 1, 2, 1, NULL, x'0102');"
                      "INSERT INTO step_responses VALUES ('s', 1, 'application/json', x'7b7d')");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_FULL);
    struct curvd_step_response r;
    assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(r.step, 1);
    assert_string_equal(r.content_type, "application/json");
    assert_bytes(r.body, r.body_len, "{}", 2);
    assert_null(r.request_digest);
    curvd_step_response_clear(&r);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.last_step, 1);
    assert_null(s.last_report);
    assert_bytes(s.state, s.state_len, "\x01\x02", 2);
    curvd_session_clear(&s);
    struct curvd_step_commit c = {.step = 2,
                                  .state = WHOLE("e", 1),
                                  .content_type = "application/json",
                                  .response = "{}",
                                  .response_len = 2,
                                  .report = "{\"k\":1}",
                                  .request_digest = "mm3-128:0"};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_get_response(st, "t", "s", &r, err, sizeof err), CURVD_STORE_OK);
    assert_string_equal(r.request_digest, "mm3-128:0");
    curvd_step_response_clear(&r);
    assert_store(curvd_store_get(st, "t", "s", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_string_equal(s.last_report, "{\"k\":1}");
    curvd_session_clear(&s);
    /* The cascade on delete survived the rebuilt table. */
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    curvd_store_close(st);
    assert_int_equal(su_raw_int(path, "PRAGMA user_version"), (long long)curvd_migration_count);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_responses"), 0);
}

static void test_update_state(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("update"), CURVD_DURABILITY_NORMAL);
    struct curvd_session_new in = {"s", "t", "mbag", "{\"a\":1}", 4, WHOLE("old", 3),
                                   0,   0,   NULL,   NULL,        0, 0};
    assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_update_state(st, "t", "s", 4, CURVD_STORE_ANY_EPOCH, STATE("new!", 4),
                                          "{\"a\":2}", NULL, err, sizeof err),
                 CURVD_STORE_OK);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "s", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, 4);
    assert_bytes(s.state, s.state_len, "new!", 4);
    assert_string_equal(s.meta, "{\"a\":2}");
    curvd_session_clear(&s);
    /* A stale writer loses, and learns the step. */
    int64_t cur = -1;
    assert_store(curvd_store_update_state(st, "t", "s", 3, CURVD_STORE_ANY_EPOCH, STATE("lost", 4),
                                          NULL, &cur, err, sizeof err),
                 CURVD_STORE_CONFLICT);
    assert_int_equal(cur, 4);
    assert_store(curvd_store_update_state(st, "u", "s", 4, CURVD_STORE_ANY_EPOCH, STATE("lost", 4),
                                          NULL, &cur, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_state(st, "t", "s", 4, "new!", 4);
    /* NULL meta clears it; an empty state is a state. */
    assert_store(curvd_store_update_state(st, "t", "s", 4, CURVD_STORE_ANY_EPOCH, STATE(NULL, 0),
                                          NULL, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_get(st, "t", "s", 1, &s, err, sizeof err), CURVD_STORE_OK);
    assert_null(s.meta);
    assert_null(s.state);
    assert_int_equal(s.state_len, 0);
    curvd_session_clear(&s);
    curvd_store_close(st);
}

static void test_blob_sizes(void **state)
{
    (void)state;
    const char *path = db_path("blobs");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_NORMAL);
    const size_t sizes[] = {0, 1, 16383, 16384, 16385, 5u << 20, (6u << 20) + 3};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        unsigned char *a = random_blob(100 + i, n), *b = random_blob(200 + i, n);
        char id[16];
        snprintf(id, sizeof id, "b%zu", i);
        create_ok(st, "t", id, n ? a : NULL, n);
        assert_state(st, "t", id, 0, a, n);
        commit_ok(st, "t", id, 1, b, n, a, n);
        assert_state(st, "t", id, 1, b, n);
        struct curvd_step_response r;
        assert_store(curvd_store_get_response(st, "t", id, &r, err, sizeof err), CURVD_STORE_OK);
        assert_bytes(r.body, r.body_len, a, n);
        curvd_step_response_clear(&r);
        free(a);
        free(b);
    }
    curvd_store_close(st);
    /* States live in parts, none empty; an empty state has none, and
     * sessions.state (kept from migration 0001) is an empty blob. */
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts WHERE session_id = 'b0'"),
                     0);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts"),
                     sizeof sizes / sizeof sizes[0] - 1);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts WHERE length(bytes) = 0"),
                     0);
    if (su_pg_url()) /* the rest is SQLite's typing and its column kept from 0001 */
        return;
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM state_parts"
                                      " WHERE typeof(bytes) != 'blob' OR length(bytes) = 0"),
                     0);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM sessions"
                                      " WHERE typeof(state) != 'blob' OR length(state) != 0"),
                     0);
}

static void test_blob_too_big(void **state)
{
    (void)state;
    struct curvd_store *st = open_ok(db_path("toobig"), CURVD_DURABILITY_NORMAL);
    create_ok(st, "t", "s", "a", 1);
    /* Lengths past SQLite's limit are refused before a byte is read, so a
     * small buffer stands in for a huge one. */
    const size_t huge[] = {1500000000u, (size_t)3000000000u};
    static const char tiny[1];
    for (int i = 0; i < 2; i++) {
        struct curvd_step_commit c = {
            .step = 1, .state = WHOLE(tiny, huge[i]), .content_type = "x"};
        assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                     CURVD_STORE_INVALID);
        assert_non_null(strstr(err, "too big"));
        struct curvd_session_new in = {"big", "t", "sgd", NULL, 0, WHOLE(tiny, huge[i]),
                                       0,     0,   NULL,  NULL, 0, 0};
        assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_INVALID);
        assert_store(curvd_store_update_state(st, "t", "s", 0, CURVD_STORE_ANY_EPOCH,
                                              STATE(tiny, huge[i]), NULL, NULL, err, sizeof err),
                     CURVD_STORE_INVALID);
    }
    assert_state(st, "t", "s", 0, "a", 1);
    int64_t n = 0;
    assert_store(curvd_store_count(st, NULL, &n, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(n, 1);
    curvd_store_close(st);
}

/* --- concurrency -------------------------------------------------------------------------- */

static void test_busy(void **state)
{
    (void)state;
    const char *path = db_path("busy");
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_NORMAL);
    create_ok(st, "t", "s", "a", 1);
    assert_store(curvd_store_set_busy_timeout(st, 30, err, sizeof err), CURVD_STORE_OK);
    struct su_lock *other = su_raw_lock(path);
    /* Writes wait, then give up; reads go on beside the writer (WAL). */
    struct curvd_session_new in = {"s2", "t", "sgd", NULL, 0, WHOLE(NULL, 0),
                                   0,    0,   NULL,  NULL, 0, 0};
    assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_BUSY);
    assert_non_null(strstr(err, "locked"));
    struct curvd_step_commit c = {
        .step = 1, .state = WHOLE("b", 1), .content_type = "x", .response = "r", .response_len = 1};
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err),
                 CURVD_STORE_BUSY);
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_BUSY);
    assert_state(st, "t", "s", 0, "a", 1);
    assert_store(curvd_store_set_busy_timeout(st, 0, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_BUSY);
    su_raw_unlock(other);
    assert_store(curvd_store_create(st, &in, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_commit_step(st, "t", "s", &c, NULL, err, sizeof err), CURVD_STORE_OK);
    struct curvd_store *st2 = open_ok(path, CURVD_DURABILITY_NORMAL);
    assert_state(st2, "t", "s", 1, "b", 1);
    curvd_store_close(st2);
    curvd_store_close(st);
}

enum { THREADS = 4, PER_THREAD = 40 };

struct worker {
    struct curvd_store *st;
    int index;
    int shared_commits;
    int failures;
    char err[256];
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char id[16];
    snprintf(id, sizeof id, "w%d", w->index);
    struct curvd_session_new in = {id, "t", "sgd", NULL, 0, WHOLE(NULL, 0), 0, 0, NULL, NULL, 0, 0};
    if (curvd_store_create(w->st, &in, NULL, w->err, sizeof w->err) != CURVD_STORE_OK)
        w->failures++;
    for (int k = 1; k <= PER_THREAD; k++) {
        int64_t blob[2] = {w->index, k};
        struct curvd_step_commit c = {.step = k,
                                      .state = WHOLE(blob, sizeof blob),
                                      .content_type = "x",
                                      .response = blob,
                                      .response_len = sizeof blob};
        if (curvd_store_commit_step(w->st, "t", id, &c, NULL, w->err, sizeof w->err))
            w->failures++;
        /* Everyone also races for the shared session: read, then commit
         * the next step; a lost race is a CONFLICT that names the step. */
        int64_t cur = -1;
        struct curvd_session s;
        if (curvd_store_get(w->st, "t", "shared", 0, &s, w->err, sizeof w->err)) {
            w->failures++;
            continue;
        }
        c.step = s.step + 1;
        curvd_session_clear(&s);
        int rc = curvd_store_commit_step(w->st, "t", "shared", &c, &cur, w->err, sizeof w->err);
        if (rc == CURVD_STORE_OK)
            w->shared_commits++;
        else if (rc != CURVD_STORE_CONFLICT || cur < c.step)
            w->failures++;
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    const char *path = db_path("threads");
    /* Two stores (two connections) shared by two threads each. */
    struct curvd_store *a = open_ok(path, CURVD_DURABILITY_NORMAL);
    struct curvd_store *b = open_ok(path, CURVD_DURABILITY_NORMAL);
    create_ok(a, "t", "shared", NULL, 0);
    struct worker w[THREADS];
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].st = i % 2 ? b : a;
        w[i].index = i;
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    int total = 0;
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        if (w[i].failures)
            print_error("worker %d: %d failures, last: %s\n", i, w[i].failures, w[i].err);
        assert_int_equal(w[i].failures, 0);
        total += w[i].shared_commits;
        char id[16];
        snprintf(id, sizeof id, "w%d", i);
        int64_t blob[2] = {i, PER_THREAD};
        assert_state(a, "t", id, PER_THREAD, blob, sizeof blob);
    }
    struct curvd_session s;
    assert_store(curvd_store_get(b, "t", "shared", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.step, total);
    assert_true(total >= PER_THREAD);
    curvd_session_clear(&s);
    curvd_store_close(a);
    curvd_store_close(b);
}

/* --- allocation failures ------------------------------------------------------------------ */

static sqlite3_mem_methods real_mem;
static long alloc_calls, fail_at = -1;
static int fail_on;

static int should_fail(void)
{
    alloc_calls++;
    return fail_at >= 0 && (alloc_calls == fail_at || (fail_on && alloc_calls > fail_at));
}

static void *fault_malloc(int n)
{
    return should_fail() ? NULL : real_mem.xMalloc(n);
}

static void *fault_realloc(void *p, int n)
{
    return should_fail() ? NULL : real_mem.xRealloc(p, n);
}

static void install_faults(int on)
{
    assert_int_equal(sqlite3_shutdown(), SQLITE_OK);
    if (on) {
        assert_int_equal(sqlite3_config(SQLITE_CONFIG_GETMALLOC, &real_mem), SQLITE_OK);
        sqlite3_mem_methods m = real_mem;
        m.xMalloc = fault_malloc;
        m.xRealloc = fault_realloc;
        assert_int_equal(sqlite3_config(SQLITE_CONFIG_MALLOC, &m), SQLITE_OK);
    } else {
        assert_int_equal(sqlite3_config(SQLITE_CONFIG_MALLOC, &real_mem), SQLITE_OK);
    }
    assert_int_equal(sqlite3_initialize(), SQLITE_OK);
}

/* Every operation once, stopping at the first failure, which must be a
 * clean ERROR with a message. With @ops_fail >= 0, faults start after the
 * open, at that allocation; else they are armed already. Return 1 if all
 * went through, and the allocations of the open in *@open_calls. */
static int oom_scenario(const char *path, const unsigned char *blob, size_t n, long ops_fail,
                        long *open_calls)
{
    char e[256] = "";
    struct curvd_store *st = NULL;
    struct curvd_session s;
    struct curvd_session_list l;
    struct curvd_step_response r;
    /* A meta text longer than a page: reading it back allocates. */
    static char meta[30000];
    memset(meta, 'm', sizeof meta - 1);
    struct curvd_session_new in[2] = {
        {"a", "t", "sgd", meta, 0, WHOLE(blob, n), 0, 0, NULL, NULL, 0, 0},
        {"b", "t", "sgd", NULL, 0, WHOLE(NULL, 0), 0, 0, NULL, NULL, 0, 0}};
    /* So is a content type of that size (absurd, but it must not crash). */
    static char ctype[20000];
    memset(ctype, 'c', sizeof ctype - 1);
    /* With a report, which reading a session copies. */
    /* In three parts, so that reading reassembles (n is 40000). */
    const curv_state_part parts[3] = {{0, 10000, 1}, {10000, 20000, 2}, {30000, n - 30001, 3}};
    struct curvd_step_commit c = {.step = 1,
                                  .state = {blob + 1, n - 1, parts, 3, NULL, 0},
                                  .content_type = ctype,
                                  .response = blob,
                                  .response_len = n / 2,
                                  .report = "{\"rho\":0.5}"};
    /* Step 2 as its log row (a record past a page), read back with the state. */
    const struct curvd_step_commit logged = {.step = 2,
                                             .content_type = "x",
                                             .record = blob,
                                             .record_len = n / 2,
                                             .update_digest = "mm3-128:2"};
    int64_t count = 0;
    int rc = curvd_store_open(path, CURVD_DURABILITY_FULL, &st, e, sizeof e);
    *open_calls = alloc_calls;
    if (ops_fail >= 0) {
        alloc_calls = 0;
        fail_at = ops_fail;
    }
    for (int step = 0; rc == CURVD_STORE_OK && step < 12; step++) {
        switch (step) {
        case 0:
        case 1:
            rc = curvd_store_create(st, &in[step], NULL, e, sizeof e);
            break;
        case 2:
            rc = curvd_store_commit_step(st, "t", "a", &c, NULL, e, sizeof e);
            break;
        case 3:
            rc = curvd_store_get(st, "t", "a", 1, &s, e, sizeof e);
            if (rc == CURVD_STORE_OK) {
                assert_bytes(s.state, s.state_len, blob + 1, n - 1);
                assert_string_equal(s.last_report, c.report);
                curvd_session_clear(&s);
            }
            break;
        case 4:
            rc = curvd_store_get_response(st, "t", "a", &r, e, sizeof e);
            if (rc == CURVD_STORE_OK) {
                assert_bytes(r.body, r.body_len, blob, n / 2);
                curvd_step_response_clear(&r);
            }
            break;
        case 5:
            rc = curvd_store_list(st, "t", 1, NULL, &l, e, sizeof e);
            if (rc == CURVD_STORE_OK) {
                char *tok = l.next_page_token;
                l.next_page_token = NULL;
                curvd_session_list_clear(&l);
                rc = curvd_store_list(st, "t", 1, tok, &l, e, sizeof e);
                sqlite3_free(tok);
                if (rc == CURVD_STORE_OK)
                    curvd_session_list_clear(&l);
            }
            break;
        case 6:
            rc = curvd_store_update_state(st, "t", "a", 1, CURVD_STORE_ANY_EPOCH, STATE(blob, n),
                                          NULL, NULL, e, sizeof e);
            break;
        case 7:
            rc = curvd_store_count(st, "t", &count, e, sizeof e);
            break;
        case 8:
            rc = curvd_store_delete(st, "t", "b", e, sizeof e);
            break;
        case 9:
            rc = curvd_store_info(st, &(struct curvd_store_info){0}, e, sizeof e);
            break;
        case 10:
            rc = curvd_store_commit_step(st, "t", "a", &logged, NULL, e, sizeof e);
            rc = rc == CURVD_STORE_OK ? curvd_store_get(st, "t", "a", 1, &s, e, sizeof e) : rc;
            if (rc == CURVD_STORE_OK) {
                assert_int_equal(s.n_log, 1);
                assert_bytes(s.log[0].record, s.log[0].len, blob, n / 2);
                curvd_session_clear(&s);
            }
            break;
        default: /* the expected refusals, which read too */
            rc = curvd_store_commit_step(st, "t", "a", &c, NULL, e, sizeof e);
            rc = rc == CURVD_STORE_CONFLICT ? curvd_store_get(st, "t", "zz", 0, &s, e, sizeof e)
                                            : rc;
            rc = rc == CURVD_STORE_NOT_FOUND ? CURVD_STORE_OK : rc;
        }
    }
    curvd_store_close(st);
    if (rc != CURVD_STORE_OK) {
        if (rc != CURVD_STORE_ERROR)
            print_error("status %s: %s\n", curvd_store_status_name(rc), e);
        assert_int_equal(rc, CURVD_STORE_ERROR);
        assert_true(strlen(e) > 0);
    }
    return rc == CURVD_STORE_OK;
}

/* After a failed run, without faults: the file is sound and whatever
 * session "a" holds is a whole state, before or after the step. */
static void oom_check(const char *path, const unsigned char *blob, size_t n)
{
    struct curvd_store *st = open_ok(path, CURVD_DURABILITY_FULL);
    struct curvd_session s;
    int rc = curvd_store_get(st, "t", "a", 1, &s, err, sizeof err);
    if (rc == CURVD_STORE_OK) {
        assert_int_equal(s.n_log, s.step == 2); /* step 2 is logged */
        if (s.n_log)
            assert_bytes(s.log[0].record, s.log[0].len, blob, n / 2);
        if (s.step == 0)
            assert_bytes(s.state, s.state_len, blob, n);
        else if (s.state_len == n - 1)
            assert_bytes(s.state, s.state_len, blob + 1, n - 1);
        else
            assert_bytes(s.state, s.state_len, blob, n); /* after update_state */
        curvd_session_clear(&s);
    } else {
        assert_int_equal(rc, CURVD_STORE_NOT_FOUND);
    }
    curvd_store_close(st);
    char ok[16];
    su_raw_text(path, "PRAGMA integrity_check", ok, sizeof ok);
    assert_string_equal(ok, "ok");
}

/* One sweep: fail allocation k, for k from 1 to @total by @stride, once
 * (a transient failure) and from there on (persistent). With @ops_only,
 * the open itself runs without faults. */
static long oom_sweep(const unsigned char *blob, size_t n, long total, long stride, int ops_only)
{
    long runs = 0, open_calls;
    for (fail_on = 0; fail_on < 2; fail_on++) {
        for (long k = 1; k <= total + 1; k += stride, runs++) {
            const char *path = db_path("oom");
            alloc_calls = 0;
            fail_at = ops_only ? -1 : k;
            int done = oom_scenario(path, blob, n, ops_only ? k : -1, &open_calls);
            fail_at = -1;
            if (!done)
                oom_check(path, blob, n);
        }
    }
    fail_on = 0;
    return runs;
}

static void test_allocation_failures(void **state)
{
    (void)state;
    SU_SQLITE_ONLY();
    /* Blobs bigger than a page, so that overflow pages are involved. */
    size_t n = 40000;
    unsigned char *blob = random_blob(42, n);
    install_faults(1);
    long open_calls = 0;
    alloc_calls = 0;
    fail_at = -1;
    assert_true(oom_scenario(db_path("oom"), blob, n, -1, &open_calls));
    long ops_calls = alloc_calls - open_calls;
    /* The open is mostly SQLite parsing the schema: a sample of it. Every
     * allocation of the operations. */
    long runs = oom_sweep(blob, n, open_calls, open_calls / 100 + 1, 0);
    runs += oom_sweep(blob, n, ops_calls, 1, 1);
    install_faults(0);
    print_message("allocation failures: %ld allocations in open, %ld after, %ld runs\n", open_calls,
                  ops_calls, runs);
    free(blob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_open_fresh_applies_migrations),
        cmocka_unit_test(test_reopen_is_noop),
        cmocka_unit_test(test_open_refuses_foreign_file),
        cmocka_unit_test(test_open_refuses_newer_version),
        cmocka_unit_test(test_open_refuses_bad_files),
        cmocka_unit_test(test_open_failed_migration_rolls_back),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_create_get_delete),
        cmocka_unit_test(test_list_pagination),
        cmocka_unit_test(test_list_is_keyset),
        cmocka_unit_test(test_list_refuses_bad_tokens),
        cmocka_unit_test(test_commit_step),
        cmocka_unit_test(test_commit_steps),
        cmocka_unit_test(test_checkpoints_in_background),
        cmocka_unit_test(test_response_replay),
        cmocka_unit_test(test_step_reports),
        cmocka_unit_test(test_upgrade_keeps_replies),
        cmocka_unit_test(test_update_state),
        cmocka_unit_test(test_blob_sizes),
        cmocka_unit_test(test_blob_too_big),
        cmocka_unit_test(test_busy),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_allocation_failures),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
