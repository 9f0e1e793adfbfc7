/* SPDX-License-Identifier: MIT */
/*
 * The daemon's log: one line per event on stderr (or a descriptor the
 * tests choose), each with an ISO-8601 UTC timestamp and a level, as text
 * ("2026-12-07T11:12:04.123Z ERROR curvd: ...") or as a JSON object per
 * line ({"ts", "level", "msg", ...}) by --log-format. Every layer may log:
 * it needs neither libmicrohttpd nor SQLite. Thread-safe: a line is one
 * write(2), so lines from several threads never interleave.
 */
#ifndef CURVD_LOG_H
#define CURVD_LOG_H

#include <stddef.h>

enum curvd_log_level { CURVD_LOG_INFO, CURVD_LOG_WARN, CURVD_LOG_ERROR };

/* curvd_log_setup - JSON lines when @json, else text; lines go to @fd
 * (-1: stderr). Process-wide; the default is text on stderr. */
void curvd_log_setup(int json, int fd);

/* curvd_log_is_json - whether lines are JSON objects. */
int curvd_log_is_json(void);

/* curvd_log - one line with the message @fmt. */
void curvd_log(enum curvd_log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* curvd_log_event - one line for the event @msg: in JSON the members of
 * @fields (a jansson object, stolen; NULL: none) follow ts, level and msg;
 * in text @text (NULL: @msg) follows the level. */
void curvd_log_event(enum curvd_log_level lv, const char *msg, void *fields, const char *text);

/* curvd_log_timestamp - the current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ"
 * into @buf (at least 25 bytes). */
void curvd_log_timestamp(char *buf, size_t cap);

#endif
