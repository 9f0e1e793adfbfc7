/* SPDX-License-Identifier: MIT */
/*
 * WAL checkpoints off the commit path. SQLite checkpoints in the thread
 * that commits once the WAL passes 1000 pages: a step with a large state
 * then also copies the WAL into the database and syncs it before it can be
 * acknowledged (a third of a large commit, measured). The checkpointer
 * replaces that with a thread of its own, on its own connection, woken by
 * each commit that adds CURVD_CKPT_PAGES since it was last woken (not
 * each commit past a WAL of that size: under steady load a checkpoint
 * running beside the commits never reaches the end of the WAL, the WAL
 * never starts over, and such a trigger checkpointed — and synced twice —
 * after nearly every commit). It checkpoints PASSIVE, so it never waits
 * for or blocks a writer. SQLite starts the WAL over only from a wholly
 * checkpointed one, so once the WAL passes a hard limit the committing
 * thread checkpoints itself, as SQLite would (little is left to copy by
 * then), and the file stays bounded.
 *
 * The WAL's size relative to the database. SQLite never shrinks the WAL
 * file by itself: it writes from the start again once the WAL is wholly
 * checkpointed, and a file once grown to the hard limit stayed that size
 * (a 2 MB database kept a 257 MiB WAL). The bound is
 *   B = max(CURVD_WAL_FACTOR x database file size, CURVD_WAL_FLOOR),
 * recomputed at each round. The hard limit, past which the committing
 * thread checkpoints the little the thread has left so that the WAL
 * starts over, is 2B (at most CURVD_CKPT_HARD_PAGES); if the thread is in
 * a pass then, the commit waits for that one pass (the thread ends its
 * round after it): the one place a commit waits for a copy, and only when
 * the thread has fallen behind. The thread is woken every quarter of the
 * hard limit (at most CURVD_CKPT_PAGES). The store's connection gets
 * journal_size_limit = 2B, so a writer that starts the WAL over cuts a
 * larger file to 2B; under load the file is not cut below that (cutting
 * it at every restart made each later commit extend the file again, and
 * small steps were 10-25% slower). Once writes are quiet for
 * CURVD_CKPT_QUIET_S (or on curvd_checkpointer_kick), a round with all of
 * the WAL copied and the file over B checkpoints TRUNCATE without a busy
 * handler: it gives up at once if a writer or a reader is there, and
 * otherwise holds the write lock only for the ftruncate. So: at most 2B
 * plus one transaction while writes go on; at most B (0 after a TRUNCATE)
 * a second after they stop, unless a reader still pins old frames.
 */
#ifndef CURVD_CHECKPOINT_H
#define CURVD_CHECKPOINT_H

#include <sqlite3.h>
#include <stddef.h>

/* New WAL pages that wake the checkpointer (SQLite's own default). */
#define CURVD_CKPT_PAGES 1000
/* WAL pages past which the committing thread checkpoints itself (256 MiB
 * of 16 KiB pages: two steps of a d = 1e7 session fit below it). */
#define CURVD_CKPT_HARD_PAGES 16384

/* The WAL bound's factor on the database size, and its floor (a hard
 * limit of 2 x 32 MiB keeps the wake at CURVD_CKPT_PAGES, as before). */
#define CURVD_WAL_FACTOR 2
#define CURVD_WAL_FLOOR (32LL << 20)
/* Seconds without a commit's wake after which the thread checks the WAL
 * file against its bound B (and cuts it to B if over). */
#define CURVD_CKPT_QUIET_S 1
/* PASSIVE passes per round at most while the WAL holds more than the
 * bound (8 cost small steps about 10% on 2 cores: each pass fsyncs). */
#define CURVD_CKPT_MAX_PASSES 1

struct curvd_checkpointer;

/* What the checkpointer did (for tests and figures). */
struct curvd_ckpt_stats {
    unsigned long long rounds, passes, truncations;
    long long bound_bytes; /* the bound at the last round */
    /* checkpoints by the committing thread past the hard limit, and those
     * of them that left the WAL wholly copied */
    unsigned inline_tries, inline_done;
};

/* curvd_wal_bound - the WAL bound for a database of @db_bytes bytes. */
long long curvd_wal_bound(long long db_bytes);

enum curvd_ckpt_action { CURVD_CKPT_NONE, CURVD_CKPT_WAKE, CURVD_CKPT_NOW };

/* curvd_ckpt_decide - after a commit that leaves @pages in the WAL: wake
 * the checkpointer when CURVD_CKPT_PAGES were added since *@asked (the
 * WAL's size at the last wake, updated here; a smaller WAL has started
 * over), checkpoint in the committing thread past CURVD_CKPT_HARD_PAGES. */
enum curvd_ckpt_action curvd_ckpt_decide(int pages, int *asked);

/* curvd_ckpt_decide_at - the same with a hard limit of @hard pages, and
 * a wake every curvd_ckpt_wake_pages(@hard) new pages. */
enum curvd_ckpt_action curvd_ckpt_decide_at(int pages, int *asked, int hard);

/* curvd_ckpt_wake_pages - new pages that wake the checkpointer under a
 * hard limit of @hard: CURVD_CKPT_PAGES, or a quarter of @hard if less. */
int curvd_ckpt_wake_pages(int hard);

/* curvd_ckpt_hard_pages - the hard limit in pages for a WAL bound of
 * @bound bytes: twice the bound, at most CURVD_CKPT_HARD_PAGES. */
int curvd_ckpt_hard_pages(long long bound);

/*
 * curvd_checkpointer_start - open a second connection to @path (an existing
 * WAL database; @full: synchronous FULL, else NORMAL) and a thread that
 * checkpoints it when @db's commits pass CURVD_CKPT_PAGES. Installs the
 * WAL hook of @db, which turns @db's automatic checkpoints off.
 * Return: the checkpointer, or NULL with a sentence in @err.
 */
struct curvd_checkpointer *curvd_checkpointer_start(sqlite3 *db, const char *path, int full,
                                                    char *err, size_t errlen);

/* curvd_checkpointer_kick - ask for a round now (it runs on the thread). */
void curvd_checkpointer_kick(struct curvd_checkpointer *c);

/* curvd_checkpointer_stats - a copy of the counters; zeros for NULL. */
void curvd_checkpointer_stats(struct curvd_checkpointer *c, struct curvd_ckpt_stats *out);

/* curvd_checkpointer_stop - stop the thread, close its connection and
 * remove @db's hook (before @db is closed); NULL is a no-op. */
void curvd_checkpointer_stop(struct curvd_checkpointer *c);

#endif
