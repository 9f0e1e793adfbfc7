/* SPDX-License-Identifier: MIT */
/* The WAL stays bounded relative to the database (store/checkpoint.h):
 * a few large states written while a reader pins the WAL grow it far past
 * the bound; once the reader is gone and many small steps follow, the
 * file comes back under max(CURVD_WAL_FACTOR x database, CURVD_WAL_FLOOR).
 * Sustained steps keep it under twice that, and once they stop it comes
 * back under the bound by itself.
 * Before the bound, SQLite kept such a WAL at its largest size for good. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "srvutil.h"
#include "store/checkpoint.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];

#define assert_store(expr, want) su_assert_store(expr, want, err)

static long long size_of(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void test_bound(void **state)
{
    (void)state;
    assert_int_equal(curvd_wal_bound(0), CURVD_WAL_FLOOR);
    assert_int_equal(curvd_wal_bound(2 << 20), CURVD_WAL_FLOOR);
    assert_int_equal(curvd_wal_bound(100LL << 20), CURVD_WAL_FACTOR * (100LL << 20));
}

static void commit(struct curvd_store *st, const char *id, int64_t step, const void *blob,
                   size_t len)
{
    struct curvd_step_commit c = {
        .step = step, .state = {.blob = blob, .len = len}, .content_type = "application/json"};
    assert_store(curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err), CURVD_STORE_OK);
}

static void test_wal_comes_back(void **state)
{
    (void)state;
    char dir[] = "/tmp/curvd-wal-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], wal[140], shm[140];
    snprintf(path, sizeof path, "%s/s.db", dir);
    snprintf(wal, sizeof wal, "%s-wal", path);
    snprintf(shm, sizeof shm, "%s-shm", path);

    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_NORMAL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    const size_t big = 4u << 20, small = 1024;
    unsigned char *blob = malloc(big);
    assert_non_null(blob);
    memset(blob, 7, big);
    struct curvd_session_new nb = {.id = "big", .tenant = "t", .optimizer = "sgd"};
    struct curvd_session_new ns = {.id = "small", .tenant = "t", .optimizer = "sgd"};
    assert_store(curvd_store_create(st, &nb, NULL, err, sizeof err), CURVD_STORE_OK);
    assert_store(curvd_store_create(st, &ns, NULL, err, sizeof err), CURVD_STORE_OK);

    /* A reader (an export, a long list) pins the WAL: nothing can be
     * checkpointed past its snapshot, and the WAL only grows. */
    sqlite3 *reader = NULL;
    assert_int_equal(sqlite3_open_v2(path, &reader, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM sessions", NULL, NULL, NULL),
                     SQLITE_OK);
    int64_t step = 0;
    for (int i = 0; i < 16; i++) {
        memset(blob, i, big);
        commit(st, "big", ++step, blob, big);
    }
    long long grown = size_of(wal);
    assert_true(grown >= 64LL << 20);
    /* The large state goes; the database holds the small one only. */
    assert_store(curvd_store_delete(st, "t", "big", err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(sqlite3_exec(reader, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(reader);

    /* Many small steps, as a trainer's; the WAL must come back. */
    long long wal_now = grown, db = 0;
    int64_t s2 = 0;
    for (int i = 0; i < 400 && (wal_now > curvd_wal_bound(db)); i++) {
        for (int k = 0; k < 10; k++)
            commit(st, "small", ++s2, blob, small);
        curvd_store_checkpoint_soon(st);
        sleep_ms(10);
        wal_now = size_of(wal);
        db = size_of(path);
    }
    struct curvd_store_wal w;
    curvd_store_wal(st, &w);
    print_message("WAL %.1f MiB while pinned; database %.1f MiB; WAL %.2f MiB after %lld small "
                  "steps (bound %.1f MiB; %llu rounds, %llu passes, %llu truncations)\n",
                  grown / 1048576.0, db / 1048576.0, wal_now / 1048576.0, (long long)s2,
                  curvd_wal_bound(db) / 1048576.0, w.rounds, w.passes, w.truncations);
    assert_true(wal_now <= curvd_wal_bound(db));
    assert_true(w.rounds > 0);
    /* Sustained small steps from here keep it there. */
    long long most = 0;
    for (int i = 0; i < 2000; i++) {
        commit(st, "small", ++s2, blob, small);
        if (size_of(wal) > most)
            most = size_of(wal);
    }
    curvd_store_wal(st, &w);
    print_message("sustained: WAL at most %.2f MiB over 2000 steps, %.2f MiB at the end "
                  "(%llu rounds, %llu passes, %llu truncations; %u/%u inline)\n",
                  most / 1048576.0, size_of(wal) / 1048576.0, w.rounds, w.passes, w.truncations,
                  w.inline_done, w.inline_tries);
    /* Writes in a tight loop (no fsync per commit) outrun the thread: the
     * hard limit, twice the bound, holds them, plus one transaction. */
    assert_true(most <= 2 * curvd_wal_bound(size_of(path)) + (1 << 20));
    /* Writes stop: within CURVD_CKPT_QUIET_S (and a margin) the file is
     * back under the bound without a kick. */
    double waited = 0;
    while (size_of(wal) > curvd_wal_bound(size_of(path)) && waited < 5.0) {
        sleep_ms(50);
        waited += 0.05;
    }
    print_message("quiet: WAL %.2f MiB after %.2f s without writes\n", size_of(wal) / 1048576.0,
                  waited);
    assert_true(size_of(wal) <= curvd_wal_bound(size_of(path)));
    curvd_store_close(st);
    free(blob);
    unlink(wal);
    unlink(shm);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bound),
        cmocka_unit_test(test_wal_comes_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
