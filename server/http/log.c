/* SPDX-License-Identifier: MIT */
#include "http/log.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_json;
static atomic_int log_fd = -1;

void curvd_log_setup(int json, int fd)
{
    atomic_store(&log_json, json != 0);
    atomic_store(&log_fd, fd);
}

int curvd_log_is_json(void)
{
    return atomic_load(&log_json);
}

void curvd_log_timestamp(char *buf, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L);
}

/* One whole line in one write(2): no stdio lock shared by the connection
 * threads, and lines from several threads never interleave. */
static void write_line(const char *s, size_t n)
{
    int fd = atomic_load(&log_fd);
    if (fd < 0)
        fd = STDERR_FILENO;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* a log that cannot be written is not worth a failed request */
        s += w;
        n -= (size_t)w;
    }
}

static const char *const LEVEL_TEXT[] = {"INFO", "WARN", "ERROR"};
static const char *const LEVEL_JSON[] = {"info", "warn", "error"};

static void write_json(enum curvd_log_level lv, const char *ts, const char *msg, json_t *fields)
{
    json_t *j = json_pack("{s:s, s:s, s:s}", "ts", ts, "level", LEVEL_JSON[lv], "msg", msg);
    if (j && fields)
        json_object_update(j, fields);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    size_t n = text ? strlen(text) : 0;
    char *line = text ? realloc(text, n + 2) : NULL;
    if (line) {
        line[n] = '\n';
        write_line(line, n + 1);
    }
    free(line ? line : text);
}

void curvd_log_event(enum curvd_log_level lv, const char *msg, void *fields, const char *text)
{
    if ((unsigned)lv > CURVD_LOG_ERROR)
        lv = CURVD_LOG_ERROR;
    char ts[32];
    curvd_log_timestamp(ts, sizeof ts);
    if (atomic_load(&log_json)) {
        write_json(lv, ts, msg, fields);
    } else {
        char line[1024];
        int n =
            snprintf(line, sizeof line, "%s %s curvd: %s\n", ts, LEVEL_TEXT[lv], text ? text : msg);
        if (n > 0) {
            if ((size_t)n >= sizeof line) { /* cut, but stay one line */
                n = (int)sizeof line - 1;
                line[n - 1] = '\n';
            }
            /* A message never breaks the line (a hostile path, an error text). */
            for (int i = 0; i < n - 1; i++)
                if (line[i] == '\n' || line[i] == '\r')
                    line[i] = ' ';
            write_line(line, (size_t)n);
        }
    }
    json_decref(fields);
}

void curvd_log(enum curvd_log_level lv, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    curvd_log_event(lv, msg, NULL, NULL);
}
