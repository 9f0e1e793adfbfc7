/* SPDX-License-Identifier: MIT */
/* A checkpoint thread per store; the model is in checkpoint.h. */
#include "store/checkpoint.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct curvd_checkpointer {
    sqlite3 *owner; /* the store's connection, whose hook this is */
    sqlite3 *db;    /* this thread's own connection */
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wanted, stop;
    int asked; /* WAL pages when the thread was last woken; on_commit's own */
};

enum curvd_ckpt_action curvd_ckpt_decide(int pages, int *asked)
{
    if (pages < *asked) /* the WAL started over */
        *asked = 0;
    if (pages >= CURVD_CKPT_HARD_PAGES) {
        *asked = 0;
        return CURVD_CKPT_NOW;
    }
    if (pages - *asked < CURVD_CKPT_PAGES)
        return CURVD_CKPT_NONE;
    *asked = pages;
    return CURVD_CKPT_WAKE;
}

/* Called by SQLite in the committing thread after each commit (commits
 * on one connection are serialized, so @c->asked needs no lock). */
static int on_commit(void *arg, sqlite3 *db, const char *schema, int pages)
{
    struct curvd_checkpointer *c = arg;
    enum curvd_ckpt_action a = curvd_ckpt_decide(pages, &c->asked);
    if (a == CURVD_CKPT_NOW) { /* catch up, so that the WAL can start over */
        (void)sqlite3_wal_checkpoint_v2(db, schema, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    } else if (a == CURVD_CKPT_WAKE) {
        pthread_mutex_lock(&c->mu);
        c->wanted = 1;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return SQLITE_OK;
}

static void *run(void *arg)
{
    struct curvd_checkpointer *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->wanted && !c->stop)
            pthread_cond_wait(&c->cv, &c->mu);
        if (c->stop)
            break;
        c->wanted = 0;
        pthread_mutex_unlock(&c->mu);
        /* A failure (a reader holding old frames, a busy writer) leaves the
         * frames for the next round; nothing is lost either way. */
        (void)sqlite3_wal_checkpoint_v2(c->db, "main", SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
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
    int rc = sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(c->db, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL",
                          NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        say(err, errlen, "the checkpoint connection: ", sqlite3_errmsg(c->db));
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->th, NULL, run, c) != 0) {
        say(err, errlen, "cannot start the checkpoint thread", "");
        pthread_cond_destroy(&c->cv);
        pthread_mutex_destroy(&c->mu);
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    sqlite3_wal_hook(db, on_commit, c);
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
    (void)sqlite3_close(c->db);
    free(c);
}
