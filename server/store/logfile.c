/* SPDX-License-Identifier: MIT */
/* Step records in files beside the database; the model is in logfile.h. */
#define _GNU_SOURCE
#include "store/logfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "wire/byte_order.h"

static const char MAGIC[8] = {'c', 'r', 'v', 'd', 's', 't', 'e', 'p'};

void curvd_logfiles_init(struct curvd_logfiles *lf, const char *db_path, int sync)
{
    memset(lf, 0, sizeof *lf);
    lf->sync = sync;
    if (!db_path || !*db_path)
        return;
    int n = snprintf(lf->dir, sizeof lf->dir, "%s-steps", db_path);
    if (n < 0 || (size_t)n >= sizeof lf->dir)
        lf->dir[0] = '\0'; /* a path that long keeps its records in rows */
}

/* The header's check word: step and length mixed (splitmix64's finalizer),
 * so that stray bytes are not taken for a header. */
static uint64_t check_of(uint64_t step, uint64_t len)
{
    uint64_t z = step * 0x9e3779b97f4a7c15u ^ len;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static void put64(unsigned char *p, uint64_t v)
{
    v = curvd_le64(v);
    memcpy(p, &v, 8);
}

static void header_of(unsigned char h[CURVD_LOGFILE_HEADER], int64_t step, size_t len)
{
    memcpy(h, MAGIC, 8);
    put64(h + 8, (uint64_t)step);
    put64(h + 16, (uint64_t)len);
    put64(h + 24, check_of((uint64_t)step, (uint64_t)len));
}

/* Session @id's folder, or its generation @gen's file. */
static int folder_of(const struct curvd_logfiles *lf, const char *id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/%s", lf->dir, id);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int file_of(const struct curvd_logfiles *lf, const char *id, int64_t gen, char *out,
                   size_t cap)
{
    int n = snprintf(out, cap, "%s/%s/%" PRId64 ".log", lf->dir, id, gen);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int io_fail(int e, const char *what, const char *path, char *err, size_t errlen)
{
    if (err && errlen)
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(e));
    return e == ENOSPC || e == EDQUOT ? CURVD_LOGFILE_FULL : CURVD_LOGFILE_FAILED;
}

/* fsync the folder @path: 0 or an errno. */
static int sync_folder(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int e = fsync(fd) == 0 ? 0 : errno;
    (void)close(fd);
    return e;
}

/* Make folder @path when missing; under FULL its name is synced into
 * @parent's (a new name is durable only then). 0 or an errno. */
static int make_folder(const struct curvd_logfiles *lf, const char *path, const char *parent)
{
    if (mkdir(path, 0700) != 0)
        return errno == EEXIST ? 0 : errno;
    return lf->sync ? sync_folder(parent) : 0;
}

/* The folder holding @path's last component (a copy in @out). */
static void parent_of(const char *path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", path);
    char *slash = strrchr(out, '/');
    if (slash == out)
        out[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(out, cap, ".");
}

/* Open session @id's file @path for appending: made, with its folders,
 * when missing, and their new names synced under FULL. An fd, or -1 with
 * errno. */
static int open_append(const struct curvd_logfiles *lf, const char *id, const char *path)
{
    const int flags = O_WRONLY | O_APPEND | O_CLOEXEC;
    int fd = open(path, flags);
    if (fd >= 0 || errno != ENOENT)
        return fd;
    char folder[1100], top[1100];
    parent_of(lf->dir, top, sizeof top);
    int e = make_folder(lf, lf->dir, top);
    if (!e && folder_of(lf, id, folder, sizeof folder) != 0)
        e = ENAMETOOLONG;
    if (!e)
        e = make_folder(lf, folder, lf->dir);
    if (!e && (fd = open(path, flags | O_CREAT, 0600)) < 0)
        e = errno;
    if (!e && lf->sync && (e = sync_folder(folder)) != 0)
        (void)close(fd);
    errno = e;
    return e ? -1 : fd;
}

/* Write all of @iov[@n] (advanced in place); 0 or an errno. */
static int write_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t k = writev(fd, iov, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? errno : EIO;
        size_t left = (size_t)k;
        for (; n > 0 && left >= iov->iov_len; iov++, n--)
            left -= iov->iov_len;
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

int curvd_logfile_append(const struct curvd_logfiles *lf, const char *id, int64_t gen, int64_t step,
                         const void *rec, size_t len, int sync, uint64_t *offset, char *err,
                         size_t errlen)
{
    char path[1200];
    if (!lf->dir[0] || file_of(lf, id, gen, path, sizeof path) != 0)
        return io_fail(ENAMETOOLONG, "appending to", id, err, errlen);
    int fd = open_append(lf, id, path);
    if (fd < 0)
        return io_fail(errno, "opening", path, err, errlen);
    unsigned char h[CURVD_LOGFILE_HEADER];
    header_of(h, step, len);
    struct iovec iov[2] = {{h, sizeof h}, {(void *)(uintptr_t)rec, len}};
    int e = write_all(fd, iov, 2);
    off_t end = e ? -1 : lseek(fd, 0, SEEK_CUR);
    if (!e && end < 0)
        e = errno;
    if (!e && (sync || lf->sync) && fdatasync(fd) != 0)
        e = errno;
    (void)close(fd);
    if (e)
        return io_fail(e, "appending to", path, err, errlen);
    /* O_APPEND moved this descriptor's offset to the end before the write:
     * the record is what precedes the offset now. */
    *offset = (uint64_t)end - (uint64_t)(sizeof h + len);
    return 0;
}

int curvd_logfile_read(const struct curvd_logfiles *lf, const char *id, int64_t gen, int64_t step,
                       uint64_t offset, void *buf, size_t len, char *err, size_t errlen)
{
    char path[1200];
    if (!lf->dir[0] || file_of(lf, id, gen, path, sizeof path) != 0 || offset > (uint64_t)LLONG_MAX)
        return CURVD_LOGFILE_MOVED;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? CURVD_LOGFILE_MOVED : io_fail(errno, "opening", path, err, errlen);
    unsigned char h[CURVD_LOGFILE_HEADER], want[CURVD_LOGFILE_HEADER];
    header_of(want, step, len);
    int rc = 0;
    size_t got = 0;
    while (got < sizeof h + len) {
        int in_h = got < sizeof h;
        void *dst = in_h ? h + got : (unsigned char *)buf + (got - sizeof h);
        size_t want_n = in_h ? sizeof h - got : len - (got - sizeof h);
        ssize_t k = pread(fd, dst, want_n, (off_t)(offset + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0) {
            rc = io_fail(errno, "reading", path, err, errlen);
            break;
        }
        if (k == 0 || (got + (size_t)k >= sizeof h && in_h && memcmp(h, want, sizeof h) != 0)) {
            rc = CURVD_LOGFILE_MOVED; /* shorter than the row says, or another record */
            break;
        }
        got += (size_t)k;
    }
    (void)close(fd);
    return rc;
}

/* "<gen>.log" as its generation, or -1 for another name. */
static int64_t gen_of(const char *name)
{
    char *end = NULL;
    errno = 0;
    long long g = strtoll(name, &end, 10);
    return errno || end == name || g < 0 || strcmp(end, ".log") != 0 ? -1 : (int64_t)g;
}

int curvd_logfile_remove(const struct curvd_logfiles *lf, const char *id, int64_t upto)
{
    char folder[1100], path[1400];
    if (!lf->dir[0] || folder_of(lf, id, folder, sizeof folder) != 0)
        return 0;
    DIR *d = opendir(folder);
    if (!d)
        return errno == ENOENT ? 0 : -1;
    int rc = 0;
    const struct dirent *de;
    while ((de = readdir(d))) {
        int64_t g = gen_of(de->d_name);
        if (g < 0 || g > upto)
            continue;
        snprintf(path, sizeof path, "%s/%s", folder, de->d_name);
        if (unlink(path) != 0 && errno != ENOENT)
            rc = -1;
    }
    (void)closedir(d);
    (void)rmdir(folder); /* fails while a newer generation's file is there */
    return rc;
}

void curvd_logfile_sweep(const struct curvd_logfiles *lf, int (*exists)(void *ctx, const char *id),
                         void *ctx, double age_s)
{
    DIR *d = lf->dir[0] ? opendir(lf->dir) : NULL;
    const struct dirent *de;
    char folder[1100];
    const time_t now = time(NULL);
    while (d && (de = readdir(d))) {
        struct stat sb;
        if (de->d_name[0] == '.' || folder_of(lf, de->d_name, folder, sizeof folder) != 0 ||
            stat(folder, &sb) != 0 || !S_ISDIR(sb.st_mode) || difftime(now, sb.st_mtime) < age_s ||
            exists(ctx, de->d_name) != 0)
            continue;
        (void)curvd_logfile_remove(lf, de->d_name, INT64_MAX);
    }
    if (d)
        (void)closedir(d);
}
