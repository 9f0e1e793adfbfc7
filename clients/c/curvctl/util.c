/* SPDX-License-Identifier: MIT */
/* curvctl's arguments, errors and JSON output. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvctl.h"

int ctl_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "curvctl %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(curvctl %s --help tells how to use it)\n", cmd);
    return CTL_USAGE;
}

/* The option of @opts that @arg names (after its dashes, up to '='). */
static const struct ctl_opt *find_opt(const char *arg, const struct ctl_opt *opts, size_t n_opts)
{
    for (size_t i = 0; i < n_opts; i++) {
        size_t len = strlen(opts[i].name);
        if (arg[1] == '-' && strncmp(arg + 2, opts[i].name, len) == 0 &&
            (arg[2 + len] == '\0' || arg[2 + len] == '='))
            return &opts[i];
        if (arg[1] != '-' && opts[i].short_name && arg[1] == opts[i].short_name && !arg[2])
            return &opts[i];
    }
    return NULL;
}

int ctl_parse(const char *cmd, int argc, char **argv, const struct ctl_opt *opts, size_t n_opts,
              char **pos, size_t *n_pos, size_t max_pos)
{
    int options = 1;
    *n_pos = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (options && strcmp(a, "--") == 0) {
            options = 0;
            continue;
        }
        if (!options || a[0] != '-' || a[1] == '\0') { /* "-" is a positional: stdin */
            if (*n_pos == max_pos) {
                ctl_usage_error(cmd, "unexpected argument '%s'", a);
                return -1;
            }
            pos[(*n_pos)++] = argv[i];
            continue;
        }
        const struct ctl_opt *o = find_opt(a, opts, n_opts);
        if (!o) {
            ctl_usage_error(cmd, "unknown option '%s'", a);
            return -1;
        }
        const char *eq = a[1] == '-' ? strchr(a, '=') : NULL;
        if (eq) {
            *o->value = eq + 1;
        } else if (i + 1 < argc) {
            *o->value = argv[++i];
        } else {
            ctl_usage_error(cmd, "--%s needs a value", o->name);
            return -1;
        }
    }
    return 0;
}

int ctl_uint(const char *cmd, const char *what, const char *text, unsigned long min,
             unsigned long max, unsigned long *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (!*text || *end || errno || text[0] == '-' || v < min || v > max) {
        ctl_usage_error(cmd, "%s must be an integer from %lu to %lu, not '%s'", what, min, max,
                        text);
        return -1;
    }
    *out = v;
    return 0;
}

int ctl_fail(const char *what, const curvc_error *err)
{
    /* For a problem the text is "STATUS REASON: detail [field: expected, got]". */
    fprintf(stderr, "curvctl: %s: %s\n", what, err->text);
    return CTL_FAILED;
}

int ctl_json_out(json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    if (!text) {
        fprintf(stderr, "curvctl: out of memory\n");
        return CTL_FAILED;
    }
    int ok = puts(text) >= 0 && fflush(stdout) == 0;
    free(text);
    if (!ok)
        fprintf(stderr, "curvctl: cannot write the output: %s\n", strerror(errno));
    return ok ? CTL_OK : CTL_FAILED;
}

json_t *ctl_parse_json(const char *text, const char *what)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!json_is_object(j)) {
        fprintf(stderr, "curvctl: %s: the daemon's answer is not a JSON object (%s)\n", what,
                j ? "another value" : je.text);
        json_decref(j);
        return NULL;
    }
    return j;
}

void ctl_format_value(const json_t *v, char *buf, size_t cap)
{
    double x = json_number_value(v);
    if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else if (json_is_real(v) && x == floor(x) && fabs(x) < 1e15)
        snprintf(buf, cap, "%.0f", x); /* counts the daemon sends as reals */
    else if (json_is_real(v))
        snprintf(buf, cap, "%.6g", x);
    else if (json_is_string(v))
        snprintf(buf, cap, "%s", *json_string_value(v) ? json_string_value(v) : "\"\"");
    else if (json_is_boolean(v))
        snprintf(buf, cap, "%s", json_is_true(v) ? "true" : "false");
    else
        snprintf(buf, cap, "-");
}
