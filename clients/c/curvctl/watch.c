/* SPDX-License-Identifier: MIT */
/*
 * curvctl watch: poll a session and print one row per newly completed
 * step, its number and its report's figures. The daemon keeps only the
 * latest step's report, so steps completed between two polls are counted
 * and said to be missed, never invented.
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

enum { MAX_FIELDS = 64, MIN_WIDTH = 10 };

struct watch {
    const char *fields[MAX_FIELDS]; /* the columns after "step" */
    size_t n_fields;
    int header_done, json;
    long long seen; /* the latest step shown or skipped */
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

/* One row (after a note of the steps skipped before it). Returns CTL_OK
 * or CTL_FAILED (the output cannot be written). */
static int print_row(struct watch *w, const json_t *last, long long skipped)
{
    long long step = json_integer_value(json_object_get(last, "step"));
    const json_t *report = json_object_get(last, "report");
    if (w->json) {
        json_t *row = json_deep_copy(last);
        if (row && json_object_set_new(row, "skipped", json_integer(skipped)) != 0)
            row = (json_decref(row), NULL);
        return ctl_json_out(row);
    }
    choose_fields(w, report);
    if (!w->header_done) {
        printf("%8s", "step");
        for (size_t k = 0; k < w->n_fields; k++)
            printf("  %*s", width_of(w->fields[k]), w->fields[k] ? w->fields[k] : "?");
        printf("\n");
        w->header_done = 1;
    }
    if (skipped == 1)
        printf("%8s  (step %lld completed between polls: its report is gone)\n", "", step - 1);
    else if (skipped > 1)
        printf("%8s  (steps %lld-%lld completed between polls: their reports are gone)\n", "",
               step - skipped, step - 1);
    printf("%8lld", step);
    for (size_t k = 0; k < w->n_fields; k++) {
        char text[64];
        ctl_format_value(w->fields[k] ? json_object_get(report, w->fields[k]) : NULL, text,
                         sizeof text);
        printf("  %*s", width_of(w->fields[k] ? w->fields[k] : "?"), text);
    }
    printf("\n");
    if (fflush(stdout) == 0 && !ferror(stdout))
        return CTL_OK;
    fprintf(stderr, "curvctl: cannot write the output: %s\n", strerror(errno));
    return CTL_FAILED;
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

/* One poll: a row when the latest completed step is new. Returns 1 for a
 * row, 0 for none, -1 after an error on stderr. */
static int poll_once(struct watch *w, curvc_session *s)
{
    char *text = NULL;
    curvc_error err;
    if (curvc_session_get_json(s, &text, &err) != CURVC_OK) {
        ctl_fail(curvc_session_id(s), &err);
        return -1;
    }
    json_t *j = ctl_parse_json(text, curvc_session_id(s));
    free(text);
    if (!j)
        return -1;
    const json_t *last = json_object_get(j, "last_step");
    long long step = json_integer_value(json_object_get(last, "step"));
    int row = json_is_object(last) && step > w->seen;
    if (row && print_row(w, last, step - w->seen - 1) != CTL_OK)
        row = -1;
    w->seen = row ? step : w->seen;
    json_decref(j);
    return row;
}

int ctl_cmd_watch(struct ctl *ctl, int argc, char **argv)
{
    const char *interval_text = NULL, *count_text = NULL, *since_text = NULL, *fields_text = NULL;
    const struct ctl_opt opts[] = {{"interval", 0, &interval_text},
                                   {"count", 0, &count_text},
                                   {"since", 0, &since_text},
                                   {"fields", 0, &fields_text}};
    char *id[1], *end = NULL;
    size_t npos;
    unsigned long count = 0, since = 0;
    double interval = 1;
    struct watch w = {.json = ctl->json};
    if (ctl_parse("watch", argc - 1, argv + 1, opts, 4, id, &npos, 1))
        return CTL_USAGE;
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
            int r = poll_once(&w, s);
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
