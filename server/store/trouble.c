/* SPDX-License-Identifier: MIT */
#include "store/trouble.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "http/log.h"

/* Make the reserve file: its blocks allocated, not a sparse hole. */
static int make_reserve(struct curvd_trouble *t)
{
    int fd = open(t->reserve_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno;
    int rc = posix_fallocate(fd, 0, (off_t)t->reserve_bytes);
    if (close(fd) != 0 && rc == 0)
        rc = errno;
    if (rc != 0)
        unlink(t->reserve_path);
    return rc;
}

void curvd_trouble_init(struct curvd_trouble *t, const char *path)
{
    memset(t, 0, sizeof *t);
    snprintf(t->path, sizeof t->path, "%s", path);
    snprintf(t->reserve_path, sizeof t->reserve_path, "%s-reserve", path);
    pthread_mutex_init(&t->mu, NULL);
}

void curvd_trouble_reserve(struct curvd_trouble *t, size_t bytes)
{
    t->reserve_bytes = bytes;
    int rc = bytes ? make_reserve(t) : 0;
    if (rc == 0)
        atomic_store(&t->reserve_held, bytes != 0);
    else
        curvd_log(CURVD_LOG_WARN, "cannot make the storage reserve %s (%zu bytes): %s",
                  t->reserve_path, bytes, strerror(rc));
}

void curvd_trouble_clear(struct curvd_trouble *t)
{
    pthread_mutex_destroy(&t->mu);
}

int curvd_trouble_failed(struct curvd_trouble *t, int full, const char *what, const char *msg)
{
    char line[sizeof t->last];
    snprintf(line, sizeof line, "%.200s: %.300s (database %s)", what, msg, t->path);
    pthread_mutex_lock(&t->mu);
    memcpy(t->last, line, sizeof line);
    pthread_mutex_unlock(&t->mu);
    atomic_store(&t->failing, 1);
    curvd_log(CURVD_LOG_ERROR, "storage failure: %s", line);
    if (!full || !atomic_exchange(&t->reserve_held, 0))
        return 0;
    if (unlink(t->reserve_path) != 0) {
        curvd_log(CURVD_LOG_ERROR, "cannot give back the storage reserve %s: %s", t->reserve_path,
                  strerror(errno));
        return 0;
    }
    curvd_log(CURVD_LOG_WARN,
              "the disk is full: gave back the storage reserve %s (%zu bytes) so that DELETE can "
              "free space",
              t->reserve_path, t->reserve_bytes);
    return 1;
}

/* Room for the reserve and as much again: taking it back from a disk
 * that is still nearly full would only make the next write fail. */
static int roomy(const struct curvd_trouble *t)
{
    struct statvfs sv;
    return statvfs(t->reserve_path, &sv) == 0 || statvfs(t->path, &sv) == 0
               ? (unsigned long long)sv.f_bavail * sv.f_frsize >= 2ull * t->reserve_bytes
               : 0;
}

void curvd_trouble_write_ok(struct curvd_trouble *t)
{
    atomic_store(&t->failing, 0);
    if (!t->reserve_bytes || atomic_load(&t->reserve_held))
        return;
    /* Under the store's lock (the caller's): one maker at a time. */
    if (roomy(t) && make_reserve(t) == 0) {
        atomic_store(&t->reserve_held, 1);
        curvd_log(CURVD_LOG_INFO, "storage reserve %s made again", t->reserve_path);
    }
}

int curvd_trouble_status(struct curvd_trouble *t, char *msg, size_t cap)
{
    if (!atomic_load(&t->failing))
        return 0;
    pthread_mutex_lock(&t->mu);
    snprintf(msg, cap, "%s", t->last);
    pthread_mutex_unlock(&t->mu);
    return -1;
}
