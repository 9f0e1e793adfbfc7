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

struct curvd_checkpointer;

enum curvd_ckpt_action { CURVD_CKPT_NONE, CURVD_CKPT_WAKE, CURVD_CKPT_NOW };

/* curvd_ckpt_decide - after a commit that leaves @pages in the WAL: wake
 * the checkpointer when CURVD_CKPT_PAGES were added since *@asked (the
 * WAL's size at the last wake, updated here; a smaller WAL has started
 * over), checkpoint in the committing thread past CURVD_CKPT_HARD_PAGES. */
enum curvd_ckpt_action curvd_ckpt_decide(int pages, int *asked);

/*
 * curvd_checkpointer_start - open a second connection to @path (an existing
 * WAL database; @full: synchronous FULL, else NORMAL) and a thread that
 * checkpoints it when @db's commits pass CURVD_CKPT_PAGES. Installs the
 * WAL hook of @db, which turns @db's automatic checkpoints off.
 * Return: the checkpointer, or NULL with a sentence in @err.
 */
struct curvd_checkpointer *curvd_checkpointer_start(sqlite3 *db, const char *path, int full,
                                                    char *err, size_t errlen);

/* curvd_checkpointer_stop - stop the thread, close its connection and
 * remove @db's hook (before @db is closed); NULL is a no-op. */
void curvd_checkpointer_stop(struct curvd_checkpointer *c);

#endif
