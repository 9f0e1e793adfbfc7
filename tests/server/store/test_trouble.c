/* SPDX-License-Identifier: MIT */
/* Storage trouble, with a disk of fixed capacity played by a SQLite VFS
 * shim (no root, no tmpfs): DELETE works on a full disk, every storage
 * failure is logged with the database's path, the store (and /readyz)
 * reports failing until a write commits, and a read-only database at
 * start names its path.
 *
 * The shim wraps the default VFS. Its "disk" is the test's directory:
 * a write that makes a file longer fails with SQLITE_FULL when the
 * directory's files (the database, its WAL, the reserve) would then hold
 * more than the capacity; writes inside a file's length always succeed,
 * as on a real file system. With "read-only" on, the main database opens
 * read-only, as SQLite's unix VFS does when open(2) refuses to write. */
#include <dirent.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http/log.h"
#include "srvutil.h"
#include "store/store.h"
#include "store/trouble.h"
#include "testutil.h"

static sqlite3_vfs *real_vfs;
static sqlite3_vfs shim_vfs;
static sqlite3_io_methods shim_io;
static char disk_dir[256];
static atomic_llong capacity = -1; /* bytes; -1: unlimited */
static atomic_int readonly_db;

struct shim_file {
    sqlite3_file base;
    sqlite3_file *real; /* right after this struct */
};

#define REAL(f) (((struct shim_file *)(void *)(f))->real)

static long long disk_used(void)
{
    DIR *d = opendir(disk_dir);
    long long used = 0;
    const struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[600];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", disk_dir, e->d_name);
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
            used += (long long)sb.st_size;
    }
    if (d)
        closedir(d);
    return used;
}

static int shim_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
    long long cap = atomic_load(&capacity);
    sqlite3_int64 size = 0;
    if (cap >= 0 && REAL(f)->pMethods->xFileSize(REAL(f), &size) == SQLITE_OK && off + amt > size &&
        disk_used() + (off + amt - size) > cap)
        return SQLITE_FULL;
    return REAL(f)->pMethods->xWrite(REAL(f), buf, amt, off);
}

static int shim_close(sqlite3_file *f)
{
    return REAL(f)->pMethods->xClose(REAL(f));
}
static int shim_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
    return REAL(f)->pMethods->xRead(REAL(f), buf, amt, off);
}
static int shim_truncate(sqlite3_file *f, sqlite3_int64 size)
{
    return REAL(f)->pMethods->xTruncate(REAL(f), size);
}
static int shim_sync(sqlite3_file *f, int flags)
{
    return REAL(f)->pMethods->xSync(REAL(f), flags);
}
static int shim_file_size(sqlite3_file *f, sqlite3_int64 *size)
{
    return REAL(f)->pMethods->xFileSize(REAL(f), size);
}
static int shim_lock(sqlite3_file *f, int lock)
{
    return REAL(f)->pMethods->xLock(REAL(f), lock);
}
static int shim_unlock(sqlite3_file *f, int lock)
{
    return REAL(f)->pMethods->xUnlock(REAL(f), lock);
}
static int shim_check_lock(sqlite3_file *f, int *out)
{
    return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}
static int shim_control(sqlite3_file *f, int op, void *arg)
{
    return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}
static int shim_sector(sqlite3_file *f)
{
    return REAL(f)->pMethods->xSectorSize(REAL(f));
}
static int shim_device(sqlite3_file *f)
{
    return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}
static int shim_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
    return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}
static int shim_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
    return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}
static void shim_shm_barrier(sqlite3_file *f)
{
    REAL(f)->pMethods->xShmBarrier(REAL(f));
}
static int shim_shm_unmap(sqlite3_file *f, int del)
{
    return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}
static int shim_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
    return REAL(f)->pMethods->xFetch(REAL(f), off, amt, pp);
}
static int shim_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
    return REAL(f)->pMethods->xUnfetch(REAL(f), off, p);
}

static const sqlite3_io_methods shim_io_all = {3,
                                               shim_close,
                                               shim_read,
                                               shim_write,
                                               shim_truncate,
                                               shim_sync,
                                               shim_file_size,
                                               shim_lock,
                                               shim_unlock,
                                               shim_check_lock,
                                               shim_control,
                                               shim_sector,
                                               shim_device,
                                               shim_shm_map,
                                               shim_shm_lock,
                                               shim_shm_barrier,
                                               shim_shm_unmap,
                                               shim_fetch,
                                               shim_unfetch};

static int shim_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out)
{
    (void)vfs;
    struct shim_file *f = (struct shim_file *)(void *)file;
    f->real = (sqlite3_file *)(void *)(f + 1);
    if (atomic_load(&readonly_db) && (flags & SQLITE_OPEN_MAIN_DB))
        flags = (flags & ~(SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_READONLY;
    int rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out);
    if (rc != SQLITE_OK || !f->real->pMethods) {
        file->pMethods = NULL;
        return rc;
    }
    shim_io = shim_io_all;
    shim_io.iVersion = f->real->pMethods->iVersion;
    file->pMethods = &shim_io;
    return SQLITE_OK;
}

static void shim_register(void)
{
    real_vfs = sqlite3_vfs_find(NULL);
    assert_non_null(real_vfs);
    shim_vfs = *real_vfs;
    shim_vfs.zName = "curvd-test-disk";
    shim_vfs.szOsFile = (int)sizeof(struct shim_file) + real_vfs->szOsFile;
    shim_vfs.xOpen = shim_open;
    assert_int_equal(sqlite3_vfs_register(&shim_vfs, 1), SQLITE_OK);
}

/* The disk is full from now on: nothing may grow. (The reserve is made
 * again with posix_fallocate, which the shim does not see: on this "disk"
 * it may come back, and is then given back again by the next failure.) */
static void disk_full(void)
{
    atomic_store(&capacity, disk_used());
}

static void disk_roomy(void)
{
    atomic_store(&capacity, -1);
}

/* ---- fixture ---- */

struct fixture {
    char dir[256], db[300], logpath[320];
    int logfd;
    struct curvd_store *st;
};

static char err[2048];

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "trouble", f->db, sizeof f->db);
    snprintf(disk_dir, sizeof disk_dir, "%s", f->dir);
    snprintf(f->logpath, sizeof f->logpath, "%s.log", f->dir); /* off the "disk" */
    f->logfd = open(f->logpath, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0600);
    assert_true(f->logfd >= 0);
    curvd_log_setup(0, f->logfd);
    disk_roomy();
    atomic_store(&readonly_db, 0);
    su_assert_store(curvd_store_open(f->db, CURVD_DURABILITY_NORMAL, &f->st, err, sizeof err),
                    CURVD_STORE_OK, err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    disk_roomy();
    curvd_store_close(f->st);
    curvd_log_setup(0, -1);
    close(f->logfd);
    unlink(f->logpath);
    su_rmtree(f->dir);
    free(f);
    return 0;
}

/* A state larger than the reserve: with SQLite's SECURE_DELETE (Debian's
 * default) deleting it would rewrite all of it into the WAL. */
#define BIG ((size_t)3 * CURVD_STORE_RESERVE_BYTES / 2)

static void create(struct curvd_store *st, const char *id, size_t len, int want)
{
    unsigned char *blob = malloc(len);
    for (size_t i = 0; i < len; i++)
        blob[i] = (unsigned char)(i * 131 + 7);
    struct curvd_session_new s = {
        .id = id, .tenant = "t", .optimizer = "sgd", .state = {.blob = blob, .len = len}};
    su_assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), want, err);
    free(blob);
}

/* Let the WAL start over empty: the state lives in the database file. */
static void truncate_wal(const struct fixture *f)
{
    char wal[400];
    struct stat sb;
    snprintf(wal, sizeof wal, "%s-wal", f->db);
    /* The store's checkpointer may be in a pass of its own: wait it out. */
    int busy = 1;
    for (int i = 0; i < 500 && busy; i++)
        if ((busy = (int)su_raw_int(f->db, "PRAGMA wal_checkpoint(TRUNCATE)")))
            nanosleep(&(struct timespec){0, 10000000}, NULL);
    assert_int_equal(busy, 0);
    assert_int_equal(stat(wal, &sb), 0);
    assert_int_equal(sb.st_size, 0);
}

static void test_delete_on_full_disk(void **state)
{
    struct fixture *f = *state;
    create(f->st, "a", BIG, CURVD_STORE_OK);
    create(f->st, "b", BIG, CURVD_STORE_OK);
    char reserve[400];
    snprintf(reserve, sizeof reserve, "%s-reserve", f->db);
    struct stat sb;
    assert_int_equal(stat(reserve, &sb), 0);
    assert_int_equal((size_t)sb.st_size, CURVD_STORE_RESERVE_BYTES);
    truncate_wal(f);
    disk_full();
    /* The delete itself meets the full disk: it gives the reserve back and
     * succeeds on its second try. */
    su_assert_store(curvd_store_delete(f->st, "t", "a", err, sizeof err), CURVD_STORE_OK, err);
    char *log = su_read_text(f->logpath);
    assert_int_equal(su_count(log, "gave back the storage reserve"), 1);
    free(log);
    int64_t n = 0;
    su_assert_store(curvd_store_count(f->st, NULL, &n, err, sizeof err), CURVD_STORE_OK, err);
    assert_int_equal(n, 1);
    /* Another delete still fits in what the reserve gave back. */
    su_assert_store(curvd_store_delete(f->st, "t", "b", err, sizeof err), CURVD_STORE_OK, err);
    /* A new session does not fit: refused as FULL, nothing written. */
    create(f->st, "c", BIG, CURVD_STORE_FULL);
    assert_non_null(strstr(err, "full"));
    su_assert_store(curvd_store_count(f->st, NULL, &n, err, sizeof err), CURVD_STORE_OK, err);
    assert_int_equal(n, 0);
}

static void test_failing_until_a_write_commits(void **state)
{
    struct fixture *f = *state;
    su_assert_store(curvd_store_health(f->st, err, sizeof err), CURVD_STORE_OK, err);
    create(f->st, "a", 1000, CURVD_STORE_OK);
    truncate_wal(f);
    unlink(strcat(strcpy(err, f->db), "-reserve")); /* no reserve to give back */
    disk_full();
    create(f->st, "b", BIG, CURVD_STORE_FULL);
    create(f->st, "c", BIG, CURVD_STORE_FULL);
    assert_int_equal(curvd_store_health(f->st, err, sizeof err), CURVD_STORE_ERROR);
    assert_non_null(strstr(err, f->db)); /* names the file */
    assert_non_null(strstr(err, "full"));
    char *log = su_read_text(f->logpath);
    /* One error line per failure, each naming the database. */
    char want[400];
    snprintf(want, sizeof want, "(database %s)", f->db);
    assert_int_equal(su_count(log, " ERROR curvd: storage failure: "), 2);
    assert_int_equal(su_count(log, want), 2);
    free(log);
    /* Reads still work and do not make it healthy; a committed write does. */
    int64_t n = 0;
    su_assert_store(curvd_store_count(f->st, NULL, &n, err, sizeof err), CURVD_STORE_OK, err);
    assert_int_equal(curvd_store_health(f->st, err, sizeof err), CURVD_STORE_ERROR);
    disk_roomy();
    create(f->st, "d", 1000, CURVD_STORE_OK);
    su_assert_store(curvd_store_health(f->st, err, sizeof err), CURVD_STORE_OK, err);
    /* ...and the reserve is made again. */
    struct stat sb;
    snprintf(want, sizeof want, "%s-reserve", f->db);
    assert_int_equal(stat(want, &sb), 0);
}

/* The checkpointer's own connection meets the full disk when the database
 * file must grow to take the WAL's pages: logged once, naming the file. */
static void test_checkpoint_failure_logged(void **state)
{
    struct fixture *f = *state;
    truncate_wal(f);
    create(f->st, "a", BIG, CURVD_STORE_OK); /* in the WAL, not yet in the file */
    disk_full();
    char want[400], *log = NULL;
    snprintf(want, sizeof want, "storage failure: checkpointing the WAL into %s: ", f->db);
    for (int i = 0; i < 500; i++) { /* the round runs on the checkpointer's thread */
        curvd_store_checkpoint_soon(f->st);
        nanosleep(&(struct timespec){0, 10000000}, NULL);
        free(log);
        log = su_read_text(f->logpath);
        if (strstr(log, want))
            break;
    }
    if (su_count(log, want) != 1)
        fail_msg("want one '%s' line in:\n%s", want, log);
    free(log);
    disk_roomy();
}

static void test_readonly_at_start(void **state)
{
    struct fixture *f = *state;
    curvd_store_close(f->st);
    f->st = NULL;
    su_raw_exec(f->db, "PRAGMA journal_mode = DELETE"); /* as a copied-in file may be */
    atomic_store(&readonly_db, 1);
    struct curvd_store *st = NULL;
    int status = curvd_store_open(f->db, CURVD_DURABILITY_NORMAL, &st, err, sizeof err);
    atomic_store(&readonly_db, 0);
    assert_int_not_equal(status, CURVD_STORE_OK);
    assert_null(st);
    char want[400];
    snprintf(want, sizeof want, "database %s: ", f->db);
    if (!strstr(err, want) || !strstr(err, "readonly"))
        fail_msg("the message does not name the file: %s", err);
    char *log = su_read_text(f->logpath);
    assert_non_null(strstr(log, f->db));
    assert_non_null(strstr(log, " ERROR curvd: storage failure: "));
    free(log);
}

/* ---- the daemon ---- */

static void test_daemon(void **state)
{
    struct fixture *f = *state;
    curvd_store_close(f->st); /* the daemon opens its own */
    f->st = NULL;
    struct curvd_server srv = {.cfg = {.db_path = f->db,
                                       .max_sessions = 100,
                                       .mem_budget = (size_t)1 << 30,
                                       .durability_full = 0}};
    char base[64], id[33], id2[33], path[128];
    su_daemon_start(&srv, base, sizeof base);
    json_decref(su_create(base, "sgd", NULL, 201, id, NULL));
    json_decref(su_create(base, "sgd", NULL, 201, id2, NULL));
    json_decref(su_call(base, "GET", "/readyz", NULL, 200, NULL));
    truncate_wal(f);
    char reserve[400];
    snprintf(reserve, sizeof reserve, "%s-reserve", f->db);
    unlink(reserve); /* the first failure must be a create's, not a DELETE's */
    disk_full();
    char id3[33];
    json_t *p = su_create(base, "sgd", NULL, 507, id3, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "STORAGE_FULL");
    json_decref(p);
    p = su_call(base, "GET", "/readyz", NULL, 503, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "NO_DATABASE");
    assert_non_null(strstr(json_string_value(json_object_get(p, "detail")), f->db));
    json_decref(p);
    /* Give the disk a little room (what an operator frees, or a reserve). */
    atomic_store(&capacity, disk_used() + (1 << 20));
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_decref(su_call(base, "DELETE", path, NULL, 204, NULL));
    json_decref(su_call(base, "GET", "/readyz", NULL, 200, NULL));
    json_decref(su_call(base, "GET", path, NULL, 404, NULL));
    snprintf(path, sizeof path, "/v1/sessions/%s", id2);
    json_decref(su_call(base, "GET", path, NULL, 200, NULL));
    su_daemon_stop(&srv);
}

int main(void)
{
    shim_register();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_delete_on_full_disk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failing_until_a_write_commits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_failure_logged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_daemon, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
