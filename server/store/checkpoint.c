/* SPDX-License-Identifier: MIT */
/* A checkpoint thread per store; the model is in checkpoint.h. */
#include "store/checkpoint.h"
#include "store/store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "http/log.h"

struct curvd_checkpointer {
    sqlite3 *owner; /* the store's connection, whose hook this is */
    sqlite3 *db;    /* this thread's own connection */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_mutex_t pass_mu; /* held through each checkpoint call */
    pthread_cond_t cv;
    int wanted, stop; /* wanted: 1 by a commit, 2 by curvd_checkpointer_kick */
    int asked;        /* WAL pages when the thread was last woken; on_commit's own */
    atomic_uint inline_tries, inline_done; /* on_commit's own checkpoints */
    atomic_int behind;                     /* on_commit wants the next pass: the thread yields */
    atomic_int hard;                       /* WAL pages past which on_commit checkpoints itself */
    char *wal;                             /* the WAL file's path */
    char *main_path;                       /* the database file's path */
    long long limit;                       /* journal_size_limit last set on @owner; -1: none yet */
    struct curvd_ckpt_stats stats;         /* under @mu */
    int failing;                           /* the last round failed (the thread's own) */
};

long long curvd_wal_bound(long long db_bytes)
{
    long long k = CURVD_WAL_FACTOR * (db_bytes > 0 ? db_bytes : 0);
    return k > CURVD_WAL_FLOOR ? k : CURVD_WAL_FLOOR;
}

static long long file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
}

enum curvd_ckpt_action curvd_ckpt_decide(int pages, int *asked)
{
    return curvd_ckpt_decide_at(pages, asked, CURVD_CKPT_HARD_PAGES);
}

int curvd_ckpt_wake_pages(int hard)
{
    return hard / 4 < CURVD_CKPT_PAGES ? (hard / 4 > 0 ? hard / 4 : 1) : CURVD_CKPT_PAGES;
}

int curvd_ckpt_hard_pages(long long bound)
{
    long long p = 2 * bound / CURVD_STORE_PAGE_SIZE;
    return p < CURVD_CKPT_HARD_PAGES ? (int)p : CURVD_CKPT_HARD_PAGES;
}

enum curvd_ckpt_action curvd_ckpt_decide_at(int pages, int *asked, int hard)
{
    if (pages < *asked) /* the WAL started over */
        *asked = 0;
    if (pages >= hard) {
        *asked = 0;
        return CURVD_CKPT_NOW;
    }
    if (pages - *asked < curvd_ckpt_wake_pages(hard))
        return CURVD_CKPT_NONE;
    *asked = pages;
    return CURVD_CKPT_WAKE;
}

/* Called by SQLite in the committing thread after each commit (commits
 * on one connection are serialized, so @c->asked needs no lock). */
static int on_commit(void *arg, sqlite3 *db, const char *schema, int pages)
{
    struct curvd_checkpointer *c = arg;
    enum curvd_ckpt_action a = curvd_ckpt_decide_at(pages, &c->asked, atomic_load(&c->hard));
    if (a == CURVD_CKPT_NOW) { /* catch up, so that the WAL can start over */
        int log = 0, done = 0;
        /* Past the hard limit the WAL must start over, which takes one
         * checkpoint that reaches its end between two commits: this one,
         * after the thread's copies (little is left). If the thread is in
         * a pass (SQLite's checkpoint lock would refuse this one), wait
         * for that pass only: the thread stops its round after it. */
        atomic_store(&c->behind, 1);
        pthread_mutex_lock(&c->pass_mu);
        int rc = sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        atomic_store(&c->behind, 0);
        pthread_mutex_unlock(&c->pass_mu);
        atomic_fetch_add(&c->inline_tries, 1);
        if (rc == SQLITE_OK && done >= log)
            atomic_fetch_add(&c->inline_done, 1);
    } else if (a == CURVD_CKPT_WAKE) {
        pthread_mutex_lock(&c->mu);
        c->wanted = 1;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return SQLITE_OK;
}

/* Keep @owner's journal_size_limit at @bound (re-set when it moves by a
 * quarter), so that a writer that starts the WAL over truncates the file
 * to it. @owner is a serialized (FULLMUTEX) connection: this waits for
 * the statement it runs, if any, and takes microseconds. */
static void set_limit(struct curvd_checkpointer *c, long long bound)
{
    if (c->limit >= 0 && bound <= c->limit + c->limit / 4 && bound >= c->limit - c->limit / 4)
        return;
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA journal_size_limit = %lld", bound);
    if (sqlite3_exec(c->owner, sql, NULL, NULL, NULL) == SQLITE_OK)
        c->limit = bound;
}

/* One round: PASSIVE checkpoints, again while the WAL is over the bound
 * and each pass makes progress (they copy only what was added meanwhile,
 * so they catch up unless writes outrun the copying); then, when all of
 * it is in the database and the file is still over the bound, a
 * TRUNCATE that gives up at once (this connection has no busy handler)
 * if a writer or a reader is there: it then holds the write lock only to
 * truncate, nothing is left to copy. */
static void round_(struct curvd_checkpointer *c, int quiet)
{
    int log = 0, done = 0, rc = SQLITE_OK, passes = 0;
    long long bound = curvd_wal_bound(file_size(c->main_path));
    /* Under load the file may use up to the hard limit (2B) without being
     * cut: cutting it each time SQLite starts the WAL over made every
     * commit after that extend the file again (the size change is one more
     * thing for fdatasync to write: small steps 10-25% slower here). When
     * writes pause, it comes down to B. */
    set_limit(c, 2 * bound);
    atomic_store(&c->hard, curvd_ckpt_hard_pages(bound));
    for (;;) {
        int prev = done;
        pthread_mutex_lock(&c->pass_mu);
        rc = sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        pthread_mutex_unlock(&c->pass_mu);
        passes++;
        /* Over the bound by what the WAL holds now, not by the file's size
         * (which only a restart or the TRUNCATE below brings down). */
        if (rc != SQLITE_OK || done >= log ||
            (long long)log * (CURVD_STORE_PAGE_SIZE + 24) <= bound)
            break;
        if (passes > 1 && done <= prev) /* a reader holds the rest */
            break;
        if (passes >= CURVD_CKPT_MAX_PASSES || atomic_load(&c->behind))
            break;
    }
    /* A storage failure (a full disk when the database file must grow):
     * one error line when it starts and one when it ends, not one a round. */
    int failed = rc != SQLITE_OK && (rc & 0xff) != SQLITE_BUSY && (rc & 0xff) != SQLITE_LOCKED;
    if (failed && !c->failing)
        curvd_log(CURVD_LOG_ERROR,
                  "storage failure: checkpointing the WAL into %s: %s (the WAL grows until it "
                  "succeeds)",
                  c->main_path, sqlite3_errmsg(c->db));
    else if (!failed && c->failing && rc == SQLITE_OK)
        curvd_log(CURVD_LOG_INFO, "checkpointing the WAL into %s works again", c->main_path);
    c->failing = failed || (c->failing && rc != SQLITE_OK);
    int truncated = 0;
    if (rc == SQLITE_OK && done >= log && file_size(c->wal) > (quiet ? bound : 2 * bound)) {
        pthread_mutex_lock(&c->pass_mu);
        truncated = sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_TRUNCATE, NULL,
                                              NULL) == SQLITE_OK;
        pthread_mutex_unlock(&c->pass_mu);
    }
    pthread_mutex_lock(&c->mu);
    c->stats.rounds++;
    c->stats.passes += (unsigned long long)passes;
    c->stats.truncations += (unsigned long long)truncated;
    c->stats.bound_bytes = bound;
    pthread_mutex_unlock(&c->mu);
}

static void *run(void *arg)
{
    struct curvd_checkpointer *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        int timed_out = 0;
        while (!c->wanted && !c->stop && !timed_out) {
            struct timespec at;
            clock_gettime(CLOCK_MONOTONIC, &at);
            at.tv_sec += CURVD_CKPT_QUIET_S;
            timed_out = pthread_cond_timedwait(&c->cv, &c->mu, &at) == ETIMEDOUT;
        }
        if (c->stop)
            break;
        /* A commit's wake, a kick, or writes quiet for CURVD_CKPT_QUIET_S
         * with the WAL file over its bound. */
        int quiet = c->wanted == 2 || (!c->wanted && timed_out);
        int wanted = c->wanted;
        c->wanted = 0;
        pthread_mutex_unlock(&c->mu);
        if (wanted || file_size(c->wal) > curvd_wal_bound(file_size(c->main_path))) {
            /* A failure (a reader holding old frames, a busy writer) leaves
             * the frames for the next round; nothing is lost either way. */
            round_(c, quiet);
        }
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

void curvd_checkpointer_kick(struct curvd_checkpointer *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->wanted = 2;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

void curvd_checkpointer_stats(struct curvd_checkpointer *c, struct curvd_ckpt_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    *out = c->stats;
    out->inline_tries = atomic_load(&c->inline_tries);
    out->inline_done = atomic_load(&c->inline_done);
    pthread_mutex_unlock(&c->mu);
}

static void say(char *err, size_t errlen, const char *what, const char *detail)
{
    if (err && errlen)
        snprintf(err, errlen, "%s%s", what, detail);
}

struct curvd_checkpointer *curvd_checkpointer_start(sqlite3 *db, const char *path, int full,
                                                    char *err, size_t errlen)
{
    struct curvd_checkpointer *c = calloc(1, sizeof *c);
    if (!c) {
        say(err, errlen, "out of memory", "");
        return NULL;
    }
    c->owner = db;
    c->limit = -1;
    atomic_init(&c->hard, curvd_ckpt_hard_pages(CURVD_WAL_FLOOR));
    atomic_init(&c->behind, 0);
    size_t n = strlen(path);
    c->main_path = malloc(n + 1);
    c->wal = malloc(n + 5);
    if (!c->main_path || !c->wal) {
        free(c->main_path);
        free(c->wal);
        free(c);
        say(err, errlen, "out of memory", "");
        return NULL;
    }
    memcpy(c->main_path, path, n + 1);
    memcpy(c->wal, path, n);
    memcpy(c->wal + n, "-wal", 5);
    int rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(c->db, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        say(err, errlen, "the checkpoint connection: ", sqlite3_errmsg(c->db));
        sqlite3_close(c->db);
        free(c->main_path);
        free(c->wal);
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->pass_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&c->th, NULL, run, c) != 0) {
        say(err, errlen, "cannot start the checkpoint thread", "");
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        pthread_mutex_destroy(&c->pass_mu);
        sqlite3_close(c->db);
        free(c->main_path);
        free(c->wal);
        free(c);
        return NULL;
    }
    sqlite3_wal_hook(db, on_commit, c);
    curvd_checkpointer_kick(c); /* a WAL left over a bound by an earlier run */
    return c;
}

void curvd_checkpointer_stop(struct curvd_checkpointer *c)
{
    if (!c)
        return;
    sqlite3_wal_hook(c->owner, NULL, NULL);
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->th, NULL);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->pass_mu);
    (void)sqlite3_close(c->db);
    free(c->main_path);
    free(c->wal);
    free(c);
}
