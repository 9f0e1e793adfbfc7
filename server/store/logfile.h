/* SPDX-License-Identifier: MIT */
/*
 * Step records in files beside a SQLite database (docs/DURABILITY.md,
 * "Large records in files"). A record of a logged step at or above a
 * size bound is appended to a file of its session, <db>-steps/<id>/<gen>.log,
 * and the step_log row holds where (generation, offset, length) instead
 * of the bytes: SQLite would write them twice (WAL, then the checkpoint's
 * copy) in its pages, one write() per page; the file takes them in one
 * write (and one fdatasync under FULL durability, with the new names of
 * a new file and its folders synced too, before the row's transaction
 * commits, so that a committed row never names bytes a power loss can
 * take).
 *
 * The generation is the lease epoch of the daemon that writes (0 without
 * one): a daemon removes only generations up to its own, so one whose
 * lease was taken over while it was paused cannot remove the files of the
 * daemon that took it (docs/CLUSTER.md), and each writer appends to a
 * file no other one does. Each record in a file is a 32-byte header
 * (magic, step, length, and a check word of both) then its bytes. The
 * files of a session go after the transaction that deleted the last rows
 * naming them commits (a snapshot, a delete, an expiry), so a reader
 * whose read transaction began before that may find them gone or another
 * file in their place: the header check tells it, and it reads again
 * (CURVD_LOGFILE_MOVED). Bytes named by no row (an append whose commit
 * failed, or was fenced) go with their file; a folder left by a crash
 * between a delete's commit and its removal goes at the next start-up
 * (curvd_logfile_sweep).
 */
#ifndef CURVD_LOGFILE_H
#define CURVD_LOGFILE_H

#include <stddef.h>
#include <stdint.h>

/* Bytes before each record in a file. */
#define CURVD_LOGFILE_HEADER 32

struct curvd_logfiles {
    char dir[1040]; /* "<db>-steps"; empty: records stay in rows */
    int sync;       /* fdatasync each record (FULL durability) */
};

/* Outcomes besides 0 (success). */
enum {
    CURVD_LOGFILE_FAILED = -1, /* an I/O error, with a sentence */
    CURVD_LOGFILE_FULL = -2,   /* the disk is full */
    CURVD_LOGFILE_MOVED = 1,   /* read: not this record there any more */
};

/* curvd_logfiles_init - the files of database @db_path (none for a path
 * too long to add the folder's name to). */
void curvd_logfiles_init(struct curvd_logfiles *lf, const char *db_path, int sync);

/* curvd_logfile_append - append step @step's record @rec[@len] to
 * generation @gen's file of session @id (made, with its folders, when
 * missing), synced when @sync or @lf says so; the header's offset into
 * *@offset. Return 0, or FAILED / FULL with a sentence in @err[@errlen]. */
int curvd_logfile_append(const struct curvd_logfiles *lf, const char *id, int64_t gen, int64_t step,
                         const void *rec, size_t len, int sync, uint64_t *offset, char *err,
                         size_t errlen);

/* curvd_logfile_read - step @step's record of @len bytes at @offset of
 * generation @gen's file of session @id into @buf. Return 0; MOVED when
 * the file or the header there is not that record's; FAILED with a
 * sentence. */
int curvd_logfile_read(const struct curvd_logfiles *lf, const char *id, int64_t gen, int64_t step,
                       uint64_t offset, void *buf, size_t len, char *err, size_t errlen);

/* curvd_logfile_remove - remove session @id's files of generations up to
 * @upto, and its folder once empty; missing ones are no error. Return 0,
 * or -1 when one could not be removed. */
int curvd_logfile_remove(const struct curvd_logfiles *lf, const char *id, int64_t upto);

/* curvd_logfile_sweep - remove the folders, untouched for @age_s seconds,
 * of the sessions for which @exists(@ctx, id) returns 0 (it returns
 * non-zero when the session exists or it cannot tell). */
void curvd_logfile_sweep(const struct curvd_logfiles *lf, int (*exists)(void *ctx, const char *id),
                         void *ctx, double age_s);

#endif
