/* SPDX-License-Identifier: MIT */
/* Internal to curvctl: the context its commands share, argument parsing,
 * output (tables and JSON) and errors. */
#ifndef CURVCTL_H
#define CURVCTL_H

#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#include "curvc.h"

/* Exit statuses: a command that failed (the daemon refused, or could not
 * be reached, or a file could not be read or written); bad usage. */
enum { CTL_OK = 0, CTL_FAILED = 1, CTL_USAGE = 2 };

struct ctl {
    curvc_client *client;
    int json; /* --json: the daemon's objects instead of tables */
};

/* One option of a command: --@name (and -@short_name unless 0) and its
 * value (the next word, or after '='), set in *@value when given. */
struct ctl_opt {
    const char *name;
    char short_name;
    const char **value;
};

/*
 * ctl_parse - split @argv[0..@argc) into the options of @opts (anywhere;
 * "--" ends them) and at most @max_pos positionals (into @pos, *@n_pos).
 * Return: 0; or -1 after a usage error on stderr naming @cmd.
 */
int ctl_parse(const char *cmd, int argc, char **argv, const struct ctl_opt *opts, size_t n_opts,
              char **pos, size_t *n_pos, size_t max_pos);

/* ctl_uint - @text as an integer in [@min, @max] into *@out; -1 after a
 * usage error on stderr naming @cmd and the option @what. */
int ctl_uint(const char *cmd, const char *what, const char *text, unsigned long min,
             unsigned long max, unsigned long *out);

/* ctl_usage_error - "curvctl @cmd: <message>" and a hint on stderr;
 * returns CTL_USAGE. */
int ctl_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ctl_fail - "curvctl: @what: <the problem or the failure>" on stderr;
 * returns CTL_FAILED. */
int ctl_fail(const char *what, const curvc_error *err);

/* ctl_json_out - @j as one compact JSON document and a newline on stdout
 * (steals @j; NULL means out of memory). Returns CTL_OK or CTL_FAILED. */
int ctl_json_out(json_t *j);

/* ctl_parse_json - the JSON text @text as an object (new reference), or
 * NULL after a message on stderr. */
json_t *ctl_parse_json(const char *text, const char *what);

/* ctl_format_value - a JSON scalar as a short readable text into @buf:
 * numbers with %.6g (integers exactly), strings as they are (the empty
 * one as ""), booleans "true"/"false", null and absent "-". */
void ctl_format_value(const json_t *v, char *buf, size_t cap);

/* A table printed with its columns aligned; cells are copied. */
struct ctl_table;
/* @ncols columns named @heads; @right[k] nonzero aligns column k right
 * (numbers). NULL when out of memory. */
struct ctl_table *ctl_table_new(size_t ncols, const char *const *heads, const int *right);
/* Append one row of @ncols cells (NULL prints "-"). Returns 0 or -1 (no memory). */
int ctl_table_add(struct ctl_table *t, const char *const *cells);
/* Print the header and the rows to @out, each line starting with @indent. */
void ctl_table_print(const struct ctl_table *t, FILE *out, const char *indent);
void ctl_table_free(struct ctl_table *t);

/* The commands: @argv[0] is the command's name. Each returns an exit status. */
int ctl_cmd_list(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_show(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_export(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_import(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_delete(struct ctl *ctl, int argc, char **argv);
int ctl_cmd_watch(struct ctl *ctl, int argc, char **argv);

#endif
