/* SPDX-License-Identifier: MIT */
/* The process's own figures for /metrics (Prometheus's process_* names),
 * read from /proc: Linux only, as the daemon is. */
#ifndef CURVD_PROCSTAT_H
#define CURVD_PROCSTAT_H

#include <stddef.h>

struct curvd_proc_stats {
    double cpu_seconds;    /* user + system time */
    double start_time;     /* seconds since the Unix epoch */
    size_t resident_bytes; /* resident set */
    size_t virtual_bytes;  /* address space */
    long open_fds;         /* entries of /proc/self/fd */
    long max_fds;          /* RLIMIT_NOFILE's soft limit */
};

/* curvd_proc_stats - fill @out; 0, or -1 when /proc cannot be read (then
 * @out is unchanged). */
int curvd_proc_stats(struct curvd_proc_stats *out);

#endif
