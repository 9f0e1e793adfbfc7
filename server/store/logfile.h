/* SPDX-License-Identifier: MIT */
/*
 * Step records in files beside a SQLite database (docs/DURABILITY.md,
 * "Large records in files"). A record of a logged step at or above a
 * size bound is appended to its session's file, <db>-steps/<id>.log,
 * and the step_log row holds where (offset, length) instead of the bytes:
 * SQLite would write them twice (WAL, then the checkpoint's copy) in its
 * pages, one write() per page; the file takes them in one write (and one
 * fdatasync under FULL durability, before the row's transaction commits,
 * so that a committed row never names bytes a power loss can take).
 *
 * Each record in a file is a 32-byte header (magic, step, length, and the
 * same three hashed) then its bytes. Appends are O_APPEND writes of the
 * whole record, so a second writer of the same file (a daemon whose
 * lease was lost, whose commit will then be fenced) can only add bytes
 * no row names. A file is removed after the transaction that deleted the
 * last row naming it commits (a snapshot, a delete, an expiry), so a
 * reader whose read transaction began before that may find the file gone
 * or another file in its place: the header check tells it, and it reads
 * again (CURVD_LOGFILE_MOVED).
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

/* curvd_logfile_append - append step @step's record @rec[@len] to session
 * @id's file (made, with the directory, when missing), synced when @lf
 * says so; the header's offset into *@offset. Return 0, or FAILED / FULL
 * with a sentence in @err[@errlen]. */
int curvd_logfile_append(const struct curvd_logfiles *lf, const char *id, int64_t step,
                         const void *rec, size_t len, uint64_t *offset, char *err, size_t errlen);

/* curvd_logfile_read - step @step's record of @len bytes at @offset of
 * session @id's file into @buf. Return 0; MOVED when the file or the
 * header there is not that record's; FAILED with a sentence. */
int curvd_logfile_read(const struct curvd_logfiles *lf, const char *id, int64_t step,
                       uint64_t offset, void *buf, size_t len, char *err, size_t errlen);

/* curvd_logfile_remove - remove session @id's file; a missing one is no
 * error. Return 0, or -1 (errno set). */
int curvd_logfile_remove(const struct curvd_logfiles *lf, const char *id);

#endif
