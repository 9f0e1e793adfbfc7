/* SPDX-License-Identifier: MIT */
/*
 * curvctl watch: follow a session's step history (GET .../steps) and print
 * one row per newly completed step: its number and its report's figures,
 * as a table, JSON lines or CSV. Every step the daemon still holds is
 * shown, however fast they come (it pages through what arrived since the
 * last poll); steps it no longer holds (the watcher fell further behind
 * than the session's history_steps) are said to be missing, never invented.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curvctl.h"

static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
    (void)sig;
    stop_requested = 1;
}

enum { MAX_FIELDS = 64, MIN_WIDTH = 10, PAGE = 1000 };

/* The time split's phases, as the history's timing_ms names them. */
static const char *const PHASES[] = {"decode", "step", "encode", "save"};
enum { N_PHASES = sizeof PHASES / sizeof PHASES[0] };

struct watch {
    const char *fields[MAX_FIELDS]; /* the columns after "step" */
    size_t n_fields;
    int header_done, json, csv;
    long long seen; /* the latest step shown or said to be missing */
};

/* The columns: --fields as given, else the report's numeric members. */
static void choose_fields(struct watch *w, const json_t *report)
{
    const char *key;
    json_t *v;
    if (w->n_fields)
        return;
    json_object_foreach((json_t *)report, key, v)
    {
        if (json_is_number(v) && w->n_fields < MAX_FIELDS)
            w->fields[w->n_fields++] = strdup(key); /* NULL (no memory) prints as "?" */
    }
}

static int width_of(const char *name)
{
    int n = (int)strlen(name);
    return n > MIN_WIDTH ? n : MIN_WIDTH;
}

/* A CSV cell: numbers in full (%.17g), text quoted when it must be, an
 * absent value empty. */
static void csv_cell(const json_t *v)
{
    if (json_is_integer(v)) {
        printf("%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        char t[40];
        double x = json_real_value(v);
        snprintf(t, sizeof t, "%.15g", x); /* the shortest of the two that reads back */
        if (strtod(t, NULL) != x)
            snprintf(t, sizeof t, "%.17g", x);
        fputs(t, stdout);
    } else if (json_is_string(v)) {
        const char *t = json_string_value(v);
        if (!strpbrk(t, ",\"\n\r")) {
            fputs(t, stdout);
            return;
        }
        putchar('"');
        for (; *t; t++) {
            if (*t == '"')
                putchar('"');
            putchar(*t);
        }
        putchar('"');
    } else if (json_is_boolean(v)) {
        fputs(json_is_true(v) ? "true" : "false", stdout);
    }
}

static void header(struct watch *w)
{
    if (w->csv) {
        printf("step,at,callbacks");
        for (size_t k = 0; k < w->n_fields; k++)
            printf(",%s", w->fields[k] ? w->fields[k] : "?");
        for (size_t k = 0; k < N_PHASES; k++)
            printf(",%s_ms", PHASES[k]);
        printf("\n");
        return;
    }
    printf("%8s", "step");
    for (size_t k = 0; k < w->n_fields; k++)
        printf("  %*s", width_of(w->fields[k]), w->fields[k] ? w->fields[k] : "?");
    printf("\n");
}

/* Written and flushed: CTL_OK; else CTL_FAILED after a message. */
static int flushed(FILE *out)
{
    if (fflush(out) == 0 && !ferror(out))
        return CTL_OK;
    fprintf(stderr, "curvctl: cannot write the output: %s\n", strerror(errno));
    return CTL_FAILED;
}

/* Steps @from..@to that the daemon no longer holds: a line of the table,
 * or a note on stderr beside JSON and CSV (which stay one row per step).
 * Returns CTL_OK or CTL_FAILED (the output cannot be written). */
static int note_missing(const struct watch *w, long long from, long long to)
{
    FILE *out = w->json || w->csv ? stderr : stdout;
    const char *why = "no longer kept by the daemon (raise the session's history_steps)";
    if (from == to)
        fprintf(out, "%8s  (step %lld %s)\n", "", from, why);
    else
        fprintf(out, "%8s  (steps %lld-%lld %s)\n", "", from, to, why);
    return flushed(out);
}

/* One row for history entry @e, after a note of the @missing steps before
 * it. Returns CTL_OK or CTL_FAILED (the output cannot be written). */
static int print_row(struct watch *w, const json_t *e, long long missing)
{
    long long step = json_integer_value(json_object_get(e, "step"));
    const json_t *report = json_object_get(e, "report");
    if (missing > 0 && note_missing(w, step - missing, step - 1) != CTL_OK)
        return CTL_FAILED;
    if (w->json) {
        json_t *row = json_deep_copy(e);
        if (row && json_object_set_new(row, "skipped", json_integer(missing)) != 0)
            row = (json_decref(row), NULL);
        return ctl_json_out(row);
    }
    choose_fields(w, report);
    if (!w->header_done) {
        header(w);
        w->header_done = 1;
    }
    if (w->csv) {
        printf("%lld,", step);
        csv_cell(json_object_get(e, "at"));
        printf(",");
        csv_cell(json_object_get(e, "callbacks"));
        for (size_t k = 0; k < w->n_fields; k++) {
            printf(",");
            csv_cell(w->fields[k] ? json_object_get(report, w->fields[k]) : NULL);
        }
        for (size_t k = 0; k < N_PHASES; k++) {
            printf(",");
            csv_cell(json_object_get(json_object_get(e, "timing_ms"), PHASES[k]));
        }
        printf("\n");
    } else {
        printf("%8lld", step);
        for (size_t k = 0; k < w->n_fields; k++) {
            char text[64];
            ctl_format_value(w->fields[k] ? json_object_get(report, w->fields[k]) : NULL, text,
                             sizeof text);
            printf("  %*s", width_of(w->fields[k] ? w->fields[k] : "?"), text);
        }
        printf("\n");
    }
    return flushed(stdout);
}

/* Sleep @s seconds, or less when a stop is requested. */
static void pause_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    if (!stop_requested)
        nanosleep(&ts, NULL); /* a signal ends it early (no SA_RESTART) */
}

/* Parse --fields: comma-separated names. Returns CTL_OK or CTL_USAGE. */
static int parse_fields(struct watch *w, const char *text)
{
    char *list = strdup(text), *save = NULL;
    for (char *f = list ? strtok_r(list, ",", &save) : NULL; f; f = strtok_r(NULL, ",", &save))
        if (w->n_fields < MAX_FIELDS)
            w->fields[w->n_fields++] = strdup(f);
    free(list);
    if (w->n_fields == 0)
        return ctl_usage_error("watch", "--fields names no field");
    return CTL_OK;
}

/* The rows of one page of the history after w->seen, at most @left
 * (0: any number). Returns the rows printed, or -1 after an error on
 * stderr; *@more is 1 when the daemon holds more steps after this page. */
static long page_once(struct watch *w, curvc_session *s, unsigned long left, int *more)
{
    char *text = NULL;
    curvc_error err;
    *more = 0;
    if (curvc_session_steps_json(s, (unsigned long long)w->seen, PAGE, &text, &err) != CURVC_OK) {
        ctl_fail(curvc_session_id(s), &err);
        return -1;
    }
    json_t *j = ctl_parse_json(text, curvc_session_id(s));
    free(text);
    if (!j)
        return -1;
    const json_t *steps = json_object_get(j, "steps");
    long long latest = json_integer_value(json_object_get(j, "latest_step"));
    long rows = 0;
    size_t i;
    json_t *e;
    json_array_foreach(steps, i, e)
    {
        if (left && (unsigned long)rows == left)
            break;
        long long step = json_integer_value(json_object_get(e, "step"));
        if (print_row(w, e, step - w->seen - 1) != CTL_OK) {
            rows = -1;
            break;
        }
        w->seen = step;
        rows++;
    }
    if (rows >= 0 && json_array_size(steps) == 0 && latest > w->seen) {
        /* Done, yet none kept: the session keeps no history (or lost it). */
        if (note_missing(w, w->seen + 1, latest) != CTL_OK)
            rows = -1;
        w->seen = latest;
    }
    *more = rows >= 0 && json_object_get(j, "next_since") != NULL;
    json_decref(j);
    return rows;
}

/* One poll: every step completed since the last, page after page, at most
 * @left rows (0: any). Returns the rows printed, or -1 after an error. */
static long poll_once(struct watch *w, curvc_session *s, unsigned long left)
{
    long total = 0;
    int more = 1;
    while (more && !stop_requested && (!left || (unsigned long)total < left)) {
        long r = page_once(w, s, left ? left - (unsigned long)total : 0, &more);
        if (r < 0)
            return -1;
        total += r;
    }
    return total;
}

int ctl_cmd_watch(struct ctl *ctl, int argc, char **argv)
{
    const char *interval_text = NULL, *count_text = NULL, *since_text = NULL, *fields_text = NULL,
               *format_text = NULL;
    const struct ctl_opt opts[] = {{"interval", 0, &interval_text},
                                   {"count", 0, &count_text},
                                   {"since", 0, &since_text},
                                   {"fields", 0, &fields_text},
                                   {"format", 0, &format_text}};
    char *id[1], *end = NULL;
    size_t npos;
    unsigned long count = 0, since = 0;
    double interval = 1;
    struct watch w = {.json = ctl->json};
    if (ctl_parse("watch", argc - 1, argv + 1, opts, 5, id, &npos, 1))
        return CTL_USAGE;
    if (format_text && strcmp(format_text, "csv") == 0)
        w.csv = 1;
    else if (format_text && strcmp(format_text, "json") == 0)
        w.json = 1;
    else if (format_text && strcmp(format_text, "table") != 0)
        return ctl_usage_error("watch", "--format must be table, csv or json, not '%s'",
                               format_text);
    if (npos != 1)
        return ctl_usage_error("watch", "which session? (watch ID)");
    if (interval_text) {
        interval = strtod(interval_text, &end);
        if (!*interval_text || *end || !(interval >= 0.01 && interval <= 3600))
            return ctl_usage_error("watch",
                                   "--interval must be seconds from 0.01 to 3600, not "
                                   "'%s'",
                                   interval_text);
    }
    if ((count_text && ctl_uint("watch", "--count", count_text, 1, 1000000000, &count)) ||
        (since_text && ctl_uint("watch", "--since", since_text, 0, 1000000000000, &since)))
        return CTL_USAGE;
    int status = fields_text ? parse_fields(&w, fields_text) : CTL_OK;
    curvc_session *s = NULL;
    curvc_error err;
    curvc_status st = CURVC_OK;
    if (status == CTL_OK && (st = curvc_session_open(ctl->client, id[0], &s, &err)) != CURVC_OK)
        status = st == CURVC_E_INVALID ? ctl_usage_error("watch", "%s", err.text)
                                       : ctl_fail(id[0], &err);
    if (status == CTL_OK) {
        struct sigaction sa = {.sa_handler = on_stop};
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        w.seen = since_text ? (long long)since : (long long)curvc_session_steps(s);
        fprintf(stderr, "watching %s after step %lld (Ctrl-C stops)\n", id[0], w.seen);
        for (unsigned long rows = 0; !stop_requested && (!count || rows < count);) {
            long r = poll_once(&w, s, count ? count - rows : 0);
            if (r < 0) {
                status = CTL_FAILED;
                break;
            }
            rows += (unsigned long)r;
            if (!count || rows < count)
                pause_s(interval);
        }
    }
    for (size_t k = 0; k < w.n_fields; k++)
        free((char *)w.fields[k]);
    curvc_session_free(s);
    return status;
}
