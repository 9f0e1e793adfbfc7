/* SPDX-License-Identifier: MIT */
#include "http/procstat.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* The boot time in seconds since the epoch (/proc/stat "btime"); -1. */
static long long boot_time(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    char line[256];
    long long bt = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "btime %lld", &bt) == 1)
            break;
    fclose(f);
    return bt;
}

static long count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    const struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* not the one opendir holds */
}

int curvd_proc_stats(struct curvd_proc_stats *out)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) is in parentheses and may hold spaces:
     * the fields after it are counted from its last ')', field 3 first. */
    const char *p = strrchr(buf, ')');
    unsigned long long utime, stime, start, vsize;
    long long rss;
    if (!p || sscanf(p + 2,
                     "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u " /* fields 3-13 */
                     "%llu %llu %*d %*d %*d %*d %*d %*d "           /* 14-21 */
                     "%llu %llu %lld",                              /* 22-24 */
                     &utime, &stime, &start, &vsize, &rss) != 5)
        return -1;
    long long bt = boot_time();
    long fds = count_fds();
    long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    struct rlimit rl;
    if (bt < 0 || fds < 0 || tick <= 0 || page <= 0 || getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return -1;
    out->cpu_seconds = (double)(utime + stime) / (double)tick;
    out->start_time = (double)bt + (double)start / (double)tick;
    out->resident_bytes = rss > 0 ? (size_t)rss * (size_t)page : 0;
    out->virtual_bytes = (size_t)vsize;
    out->open_fds = fds;
    out->max_fds = rl.rlim_cur == RLIM_INFINITY ? -1 : (long)rl.rlim_cur;
    return 0;
}
