/* SPDX-License-Identifier: MIT */
/*
 * WAL checkpoints off the commit path. SQLite checkpoints in the thread
 * that commits once the WAL passes 1000 pages: a step with a large state
 * then also copies the WAL into the database and syncs it before it can be
 * acknowledged (a third of a large commit, measured). The checkpointer
 * replaces that with a thread of its own, on its own connection, woken by
 * the commit that crosses the threshold; it checkpoints PASSIVE, so it
 * never waits for or blocks a writer. Should the WAL still outgrow a hard
 * limit (checkpoints starved by readers), the committing thread checkpoints
 * itself, as SQLite would, so the file stays bounded.
 */
#ifndef CURVD_CHECKPOINT_H
#define CURVD_CHECKPOINT_H

#include <sqlite3.h>
#include <stddef.h>

/* WAL pages that wake the checkpointer (SQLite's own default). */
#define CURVD_CKPT_PAGES 1000
/* WAL pages past which the committing thread checkpoints itself. */
#define CURVD_CKPT_HARD_PAGES 65536

struct curvd_checkpointer;

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
