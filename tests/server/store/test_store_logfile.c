/* SPDX-License-Identifier: MIT */
/* Step records in files beside a SQLite database (store/logfile.h,
 * migration 0010): which records go there, what a file holds, that a file
 * goes once no row names it (a snapshot, a delete, an expiry; not a
 * rolled-back one), that a record its file no longer holds reads as empty
 * (the replay then names the step), and that a file that cannot be
 * written fails the step with nothing written. The file is read here with
 * plain I/O, the rows with SQL. test_store_log.c runs the step log's own
 * cases with every record in a file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "srvutil.h"
#include "store/logfile.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];
static char dir[64], path[512];

#define assert_store(expr, want) su_assert_store(expr, want, err)

static int group_setup(void **state)
{
    (void)state;
    char unused[160];
    su_tmpdir(dir, sizeof dir, NULL, "store-logfile", unused, sizeof unused);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    return su_rmtree(dir);
}

/* A store on a new file, records of @file_min bytes or more in files. */
static struct curvd_store *open_new(const char *name, size_t file_min)
{
    snprintf(path, sizeof path, "%s/%s.db", dir, name);
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_FULL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    assert_store(curvd_store_set_log_file_min(st, file_min), CURVD_STORE_OK);
    return st;
}

static void create(struct curvd_store *st, const char *id)
{
    struct curvd_session_new s = {
        .id = id, .tenant = "t", .optimizer = "kfac", .state = {.blob = "snap", .len = 4}};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
}

/* Step @k's record: @len bytes, each (k + i) mod 251. */
static unsigned char *record_of(int64_t k, size_t len)
{
    unsigned char *p = malloc(len ? len : 1);
    assert_non_null(p);
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(((size_t)k + i) % 251);
    return p;
}

static int commit_record(struct curvd_store *st, const char *id, int64_t k, size_t len)
{
    unsigned char *rec = record_of(k, len);
    struct curvd_step_commit c = {.step = k,
                                  .content_type = "x",
                                  .response = "r",
                                  .response_len = 1,
                                  .record = rec,
                                  .record_len = len,
                                  .update_digest = "mm3-128:d"};
    int status = curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err);
    free(rec);
    return status;
}

static int commit_snapshot(struct curvd_store *st, const char *id, int64_t k, size_t reply_len)
{
    static const char reply[1] = "r";
    struct curvd_step_commit c = {.step = k,
                                  .state = {.blob = "new", .len = 3},
                                  .content_type = "x",
                                  .response = reply,
                                  .response_len = reply_len};
    return curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err);
}

/* Session @id's file (generation 0: no lease) into @p[700]. */
static void file_path(const char *id, char p[700])
{
    snprintf(p, 700, "%s-steps/%s/0.log", path, id);
}

/* Session @id's file: its size, or -1 when there is none. */
static long long file_size(const char *id)
{
    char p[700];
    struct stat sb;
    file_path(id, p);
    return stat(p, &sb) == 0 ? (long long)sb.st_size : -1;
}

/* Session @id's log as read with its state: each step and its record,
 * checked against record_of; "k:len" (len 0 for a record read empty). */
static void assert_read(struct curvd_store *st, const char *id, const char *want)
{
    struct curvd_session s;
    char got[256] = "";
    assert_store(curvd_store_get(st, "t", id, 1, &s, err, sizeof err), CURVD_STORE_OK);
    for (size_t i = 0; i < s.n_log; i++) {
        const struct curvd_log_entry *e = &s.log[i];
        unsigned char *rec = record_of(e->step, e->len);
        if (e->len)
            assert_memory_equal(e->record, rec, e->len);
        free(rec);
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld:%zu", i ? "," : "",
                 (long long)e->step, e->len);
    }
    curvd_session_clear(&s);
    assert_string_equal(got, want);
}

/* Rows "step:where" with where "f" (a file) or "r" (the row). */
static void assert_rows(const char *id, const char *want)
{
    char sql[300], got[256];
    snprintf(sql, sizeof sql,
             "SELECT coalesce(group_concat(step || ':' || iif(file_len IS NULL, 'r', 'f'), ','),"
             " '') FROM (SELECT * FROM step_log WHERE session_id = '%s' ORDER BY step)",
             id);
    su_raw_text(path, sql, got, sizeof got);
    assert_string_equal(got, want);
}

#define HDR 32 /* CURVD_LOGFILE_HEADER */

/* Records at or past the bound go to the file, back to back behind their
 * headers; smaller ones stay in their rows; the bound may change. */
static void test_records_by_size(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("size", 1000);
    create(st, "s");
    create(st, "o");
    assert_store(commit_record(st, "s", 1, 999), CURVD_STORE_OK);
    assert_int_equal(file_size("s"), -1);
    assert_store(commit_record(st, "s", 2, 1000), CURVD_STORE_OK);
    assert_store(commit_record(st, "s", 3, 70000), CURVD_STORE_OK);
    assert_store(commit_record(st, "o", 1, 5000), CURVD_STORE_OK);
    assert_store(curvd_store_set_log_file_min(st, 0), CURVD_STORE_OK);
    assert_store(commit_record(st, "s", 4, 0), CURVD_STORE_OK);
    assert_rows("s", "1:r,2:f,3:f,4:f");
    assert_int_equal(file_size("s"), HDR + 1000 + HDR + 70000 + HDR);
    assert_int_equal(file_size("o"), HDR + 5000);
    assert_int_equal(su_raw_int(path, "SELECT file_offset FROM step_log WHERE step = 3 AND"
                                      " session_id = 's'"),
                     HDR + 1000);
    assert_read(st, "s", "1:999,2:1000,3:70000,4:0");
    curvd_store_close(st);
    st = open_new("size", SIZE_MAX); /* durable; and read whatever the bound */
    assert_read(st, "s", "1:999,2:1000,3:70000,4:0");
    assert_read(st, "o", "1:5000");
    curvd_store_close(st);
}

/* A file goes when the rows naming it do, once that commits. */
static void test_file_goes_with_its_rows(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("goes", 0);
    create(st, "s");
    create(st, "o");
    assert_store(commit_record(st, "s", 1, 100), CURVD_STORE_OK);
    assert_store(commit_record(st, "o", 1, 100), CURVD_STORE_OK);
    /* A snapshot that rolls back (its reply past SQLite's limit) keeps both. */
    assert_store(commit_snapshot(st, "s", 2, 1500000000u), CURVD_STORE_INVALID);
    assert_int_equal(file_size("s"), HDR + 100);
    assert_read(st, "s", "1:100");
    assert_store(commit_snapshot(st, "s", 2, 1), CURVD_STORE_OK);
    assert_int_equal(file_size("s"), -1);
    assert_int_equal(file_size("o"), HDR + 100);
    assert_read(st, "s", "");
    assert_store(commit_record(st, "s", 3, 200), CURVD_STORE_OK); /* a new file */
    assert_int_equal(file_size("s"), HDR + 200);
    assert_int_equal(su_raw_int(path, "SELECT file_offset FROM step_log WHERE step = 3"), 0);
    assert_read(st, "s", "3:200");
    /* An update of the state is a snapshot too. */
    const struct curvd_state_in fresh = {.blob = "fresh", .len = 5};
    assert_store(curvd_store_update_state(st, "t", "s", 3, CURVD_STORE_ANY_EPOCH, &fresh, "{}",
                                          NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(file_size("s"), -1);
    /* A delete, and a delete that finds nothing, which keeps the file. */
    assert_store(commit_record(st, "s", 4, 10), CURVD_STORE_OK);
    assert_store(curvd_store_delete(st, "u", "s", err, sizeof err), CURVD_STORE_NOT_FOUND);
    assert_int_equal(file_size("s"), HDR + 10);
    assert_store(curvd_store_delete(st, "t", "s", err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(file_size("s"), -1);
    /* An expiry. */
    size_t n = 0;
    assert_store(curvd_store_expire(st, INT64_MAX / 2, 1, 16, NULL, NULL, &n, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(n, 1);
    assert_int_equal(file_size("o"), -1);
    curvd_store_close(st);
}

/* Overwrite 8 bytes at @off of session @id's file, or append @n of them
 * (@off < 0). */
static void scribble(const char *id, long long off, size_t n)
{
    char p[700];
    file_path(id, p);
    int fd = open(p, O_WRONLY | (off < 0 ? O_APPEND : 0));
    assert_true(fd >= 0);
    static const char junk[64] = "not a header, not a record: junk";
    assert_true(n <= sizeof junk);
    ssize_t k = off < 0 ? write(fd, junk, n) : pwrite(fd, junk, 8, (off_t)off);
    assert_int_equal(k, off < 0 ? (ssize_t)n : 8);
    close(fd);
}

/* Bytes after the last record (an append whose commit failed, a fenced
 * daemon's) are named by no row; a record whose header is not its own,
 * or whose file is gone, reads as empty. */
static void test_what_a_file_no_longer_holds(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("damage", 0);
    create(st, "s");
    assert_store(commit_record(st, "s", 1, 50), CURVD_STORE_OK);
    scribble("s", -1, 40);
    assert_store(commit_record(st, "s", 2, 60), CURVD_STORE_OK);
    assert_store(commit_record(st, "s", 3, 70), CURVD_STORE_OK);
    assert_int_equal(su_raw_int(path, "SELECT file_offset FROM step_log WHERE step = 2"),
                     HDR + 50 + 40);
    assert_read(st, "s", "1:50,2:60,3:70");
    scribble("s", HDR + 50 + 40 + 8, 8); /* step 2's header: its step */
    assert_read(st, "s", "1:50,2:0,3:70");
    char p[700];
    file_path("s", p);
    assert_int_equal(truncate(p, HDR + 50 + 40 + HDR + 60 + HDR + 69), 0); /* step 3 short */
    assert_read(st, "s", "1:50,2:0,3:0");
    assert_int_equal(unlink(p), 0);
    assert_read(st, "s", "1:0,2:0,3:0");
    assert_store(curvd_store_health(st, err, sizeof err), CURVD_STORE_OK);
    curvd_store_close(st);
}

/* A file that cannot be written fails the step (ERROR, logged, /readyz)
 * and writes nothing; the next write that commits clears the trouble. */
static void test_unwritable_file_fails_the_step(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("unwritable", 0);
    create(st, "s");
    assert_store(commit_record(st, "s", 1, 10), CURVD_STORE_OK);
    assert_store(commit_snapshot(st, "s", 2, 1), CURVD_STORE_OK); /* the folder stays, empty */
    char steps[600];
    snprintf(steps, sizeof steps, "%s-steps", path);
    assert_int_equal(rmdir(steps), 0);
    FILE *f = fopen(steps, "w"); /* a file where the folder goes */
    assert_non_null(f);
    fclose(f);
    assert_store(commit_record(st, "s", 3, 10), CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "appending to the step log"));
    assert_non_null(strstr(err, steps));
    assert_int_equal(su_raw_int(path, "SELECT step FROM sessions"), 2);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_log"), 0);
    assert_int_equal(su_raw_int(path, "SELECT step FROM step_responses"), 2);
    assert_store(curvd_store_health(st, err, sizeof err), CURVD_STORE_ERROR);
    assert_non_null(strstr(err, "step log"));
    assert_int_equal(unlink(steps), 0);
    assert_store(commit_record(st, "s", 3, 10), CURVD_STORE_OK);
    assert_store(curvd_store_health(st, err, sizeof err), CURVD_STORE_OK);
    assert_read(st, "s", "3:10");
    curvd_store_close(st);
}

/* Step @k's record of @len bytes written ahead into session @id's file;
 * where it went. */
static uint64_t write_ahead(struct curvd_store *st, const char *id, int64_t k, size_t len)
{
    unsigned char *rec = record_of(k, len);
    struct curvd_write_ahead w = {.id = id, .step = k, .rec = rec, .len = len};
    assert_int_equal(curvd_store_write_ahead(st, &w), 1);
    assert_int_equal(curvd_store_write_ahead_wait(&w), 0);
    free(rec);
    return w.offset;
}

/* Commit step @k of @id as its record of @len bytes, written ahead at
 * @offset. */
static int commit_ahead(struct curvd_store *st, const char *id, int64_t k, size_t len,
                        uint64_t offset)
{
    unsigned char *rec = record_of(k, len);
    struct curvd_step_commit c = {.step = k,
                                  .content_type = "x",
                                  .record = rec,
                                  .record_len = len,
                                  .update_digest = "mm3-128:d",
                                  .written_ahead = 1,
                                  .record_ahead = 1,
                                  .record_offset = offset};
    int status = curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err);
    free(rec);
    return status;
}

/* A record written ahead of its commit: the commit names it (one copy in
 * the file); not named (answers made it another record), the commit
 * appends its own; a snapshot commit removes the file; a record under
 * the bound is not written ahead. */
static void test_written_ahead(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("ahead", 100);
    create(st, "s");
    struct curvd_write_ahead small = {.id = "s", .step = 1, .rec = "x", .len = 99};
    assert_int_equal(curvd_store_write_ahead(st, &small), 0); /* under the bound */
    uint64_t at = write_ahead(st, "s", 1, 500);
    assert_int_equal(at, 0);
    assert_int_equal(file_size("s"), HDR + 500);
    assert_store(commit_ahead(st, "s", 1, 500, at), CURVD_STORE_OK);
    assert_int_equal(file_size("s"), HDR + 500);
    assert_read(st, "s", "1:500");

    /* Written ahead, then another record committed: both in the file,
     * the row names the second. */
    assert_int_equal(write_ahead(st, "s", 2, 300), HDR + 500);
    assert_store(commit_record(st, "s", 2, 400), CURVD_STORE_OK);
    assert_int_equal(file_size("s"), HDR + 500 + HDR + 300 + HDR + 400);
    assert_read(st, "s", "1:500,2:400");

    /* One written ahead far into the file: the row names that offset. */
    at = write_ahead(st, "s", 3, 250);
    assert_int_equal(at, HDR + 500 + HDR + 300 + HDR + 400);
    assert_store(commit_ahead(st, "s", 3, 250, at), CURVD_STORE_OK);
    assert_int_equal(file_size("s"), (long long)at + HDR + 250);
    assert_read(st, "s", "1:500,2:400,3:250");

    /* A new session's first step written ahead and committed as a
     * snapshot: no row ever named the file, which goes all the same. */
    create(st, "n");
    write_ahead(st, "n", 1, 200);
    assert_int_equal(file_size("n"), HDR + 200);
    struct curvd_step_commit snap = {
        .step = 1, .state = {.blob = "new", .len = 3}, .content_type = "x", .written_ahead = 1};
    assert_store(curvd_store_commit_step(st, "t", "n", &snap, NULL, err, sizeof err),
                 CURVD_STORE_OK);
    assert_int_equal(file_size("n"), -1);
    assert_int_equal(file_size("s"), HDR + 500 + HDR + 300 + HDR + 400 + HDR + 250);
    curvd_store_close(st);
}

/* Generations: a writer removes only its own epoch's files and older
 * ones, never a newer writer's (a daemon whose lease was taken over,
 * docs/CLUSTER.md); the folder goes with the last file. */
static void test_generations(void **state)
{
    (void)state;
    snprintf(path, sizeof path, "%s/gen.db", dir);
    struct curvd_logfiles lf;
    curvd_logfiles_init(&lf, path, 1);
    uint64_t off = 1;
    assert_int_equal(curvd_logfile_append(&lf, "s", 3, 7, "abc", 3, 0, &off, err, sizeof err), 0);
    assert_int_equal(off, 0);
    assert_int_equal(curvd_logfile_append(&lf, "s", 5, 8, "defg", 4, 0, &off, err, sizeof err), 0);
    assert_int_equal(off, 0); /* another file */
    char buf[8];
    assert_int_equal(curvd_logfile_read(&lf, "s", 5, 8, 0, buf, 4, err, sizeof err), 0);
    assert_memory_equal(buf, "defg", 4);
    assert_int_equal(curvd_logfile_read(&lf, "s", 3, 8, 0, buf, 4, err, sizeof err),
                     CURVD_LOGFILE_MOVED); /* step 7's there */
    assert_int_equal(curvd_logfile_remove(&lf, "s", 4), 0);
    assert_int_equal(curvd_logfile_read(&lf, "s", 3, 7, 0, buf, 3, err, sizeof err),
                     CURVD_LOGFILE_MOVED);
    assert_int_equal(curvd_logfile_read(&lf, "s", 5, 8, 0, buf, 4, err, sizeof err), 0);
    char folder[700];
    snprintf(folder, sizeof folder, "%s-steps/s", path);
    struct stat sb;
    assert_int_equal(stat(folder, &sb), 0);
    assert_int_equal(curvd_logfile_remove(&lf, "s", 5), 0);
    assert_int_equal(stat(folder, &sb), -1);                /* empty, so gone */
    assert_int_equal(curvd_logfile_remove(&lf, "s", 5), 0); /* nothing left: no error */
}

/* Set @p's times @age_s seconds back. */
static void age(const char *p, double age_s)
{
    struct timespec t[2];
    clock_gettime(CLOCK_REALTIME, &t[0]);
    t[0].tv_sec -= (time_t)age_s;
    t[1] = t[0];
    assert_int_equal(utimensat(AT_FDCWD, p, t, 0), 0);
}

/* Opening the store removes the folders of sessions that no longer exist
 * (a crash between a delete's commit and the removal; a record written
 * ahead of a step whose session was deleted meanwhile), once a minute
 * old; a live session's folder, and a fresh one, stay. */
static void test_sweep_at_open(void **state)
{
    (void)state;
    struct curvd_store *st = open_new("sweep", 0);
    create(st, "live");
    assert_store(commit_record(st, "live", 1, 10), CURVD_STORE_OK);
    curvd_store_close(st);
    struct curvd_logfiles lf;
    curvd_logfiles_init(&lf, path, 0);
    uint64_t off;
    assert_int_equal(curvd_logfile_append(&lf, "gone", 2, 1, "x", 1, 0, &off, err, sizeof err), 0);
    assert_int_equal(curvd_logfile_append(&lf, "new", 2, 1, "x", 1, 0, &off, err, sizeof err), 0);
    char p[700];
    snprintf(p, sizeof p, "%s-steps/gone", path);
    age(p, 120);
    snprintf(p, sizeof p, "%s-steps/live", path);
    age(p, 120);
    st = open_new("sweep", 0);
    struct stat sb;
    snprintf(p, sizeof p, "%s-steps/gone", path);
    assert_int_equal(stat(p, &sb), -1);
    snprintf(p, sizeof p, "%s-steps/new", path);
    assert_int_equal(stat(p, &sb), 0);
    assert_read(st, "live", "1:10");
    curvd_store_close(st);
}

int main(void)
{
    if (su_pg_url()) /* PostgreSQL keeps every record in its row */
        return 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_by_size),
        cmocka_unit_test(test_file_goes_with_its_rows),
        cmocka_unit_test(test_what_a_file_no_longer_holds),
        cmocka_unit_test(test_unwritable_file_fails_the_step),
        cmocka_unit_test(test_written_ahead),
        cmocka_unit_test(test_generations),
        cmocka_unit_test(test_sweep_at_open),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
