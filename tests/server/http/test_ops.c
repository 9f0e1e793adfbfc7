/* SPDX-License-Identifier: MIT */
/* Operations over a real socket: log lines with a UTC timestamp and a
 * level in both formats, X-Request-Id carried through, every status
 * counted by its code, curvd_build_info and the process_* metrics. */
#include <fcntl.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "http/http.h"
#include "http/log.h"
#include "http/metrics.h"
#include "srvutil.h"
#include "testutil.h"

struct fixture {
    struct su_fx *fx;
    char logpath[160];
    int logfd;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    f->fx = su_fx_new("ops");
    snprintf(f->logpath, sizeof f->logpath, "%s/log", f->fx->dir);
    f->logfd = open(f->logpath, O_CREAT | O_TRUNC | O_RDWR | O_APPEND, 0600);
    assert_true(f->logfd >= 0);
    f->fx->srv.cfg.quiet = 0; /* this suite reads the access log */
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    curvd_log_setup(0, -1);
    close(f->logfd);
    su_fx_free(f->fx);
    free(f);
    return 0;
}

/* The line of @log holding @needle, copied into @line; fails without one. */
static void find_line(const char *log, const char *needle, char *line, size_t cap)
{
    const char *hit = strstr(log, needle);
    if (!hit)
        fail_msg("no log line with '%s' in:\n%s", needle, log);
    const char *start = hit;
    while (start > log && start[-1] != '\n')
        start--;
    const char *end = strchr(hit, '\n');
    assert_non_null(end); /* every line ends */
    snprintf(line, cap, "%.*s", (int)(end - start), start);
}

/* The current UTC second as the log writes it ("YYYY-MM-DDTHH:MM:SS"). */
static void utc_second(char out[20])
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, 20, "%Y-%m-%dT%H:%M:%S", &tm);
}

/* @ts is "YYYY-MM-DDTHH:MM:SS.mmmZ" and its second lies in [@lo, @hi]
 * (ISO-8601 text of one width sorts as time does). */
static void check_timestamp(const char *ts, const char *lo, const char *hi)
{
    int y, mo, d, h, mi, s, ms;
    char z = 0;
    assert_int_equal(strlen(ts), 24);
    assert_int_equal(sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d.%3d%c", &y, &mo, &d, &h, &mi, &s, &ms, &z),
                     8);
    assert_int_equal(z, 'Z');
    if (strncmp(ts, lo, 19) < 0 || strncmp(ts, hi, 19) > 0)
        fail_msg("timestamp %s outside [%s, %s]", ts, lo, hi);
}

static void get(const char *base, const char *path, const char *request_id, struct su_resp *r)
{
    char url[256], hdr[256];
    snprintf(url, sizeof url, "%s%s", base, path);
    snprintf(hdr, sizeof hdr, "X-Request-Id: %s", request_id ? request_id : "");
    const char *const hdrs[] = {hdr, NULL};
    su_request_h("GET", url, NULL, 0, NULL, 0, request_id ? hdrs : NULL, r);
}

static void test_log_text(void **state)
{
    struct fixture *f = *state;
    curvd_log_setup(0, f->logfd);
    char lo[20], hi[20], line[1024];
    utc_second(lo);
    struct su_resp r;
    get(f->fx->base, "/nope", "trace-text-1", &r);
    char out[32];
    snprintf(out, sizeof out, " out=%zu", r.len);
    su_resp_free(&r);
    curvd_log(CURVD_LOG_ERROR, "an event\nwith a newline");
    su_fx_restart(f->fx); /* the access log is written at completion: wait for it */
    utc_second(hi);
    char *log = su_read_text(f->logpath);
    find_line(log, "trace-text-1", line, sizeof line);
    char ts[32], level[16], rest[900];
    assert_int_equal(sscanf(line, "%31s %15s %899[^\n]", ts, level, rest), 3);
    check_timestamp(ts, lo, hi);
    assert_string_equal(level, "INFO");
    assert_string_equal(rest + strlen(rest) - strlen(out), out);
    assert_non_null(strstr(rest, "curvd: trace-text-1 GET /nope 404 "));
    find_line(log, "an event", line, sizeof line);
    assert_int_equal(sscanf(line, "%31s %15s", ts, level), 2);
    check_timestamp(ts, lo, hi);
    assert_string_equal(level, "ERROR");
    assert_non_null(strstr(line, "an event with a newline")); /* still one line */
    free(log);
}

static void test_log_json(void **state)
{
    struct fixture *f = *state;
    curvd_log_setup(1, f->logfd);
    char lo[20], hi[20], line[1024];
    utc_second(lo);
    struct su_resp r;
    get(f->fx->base, "/healthz", "trace-json-1", &r);
    assert_int_equal(r.status, 200);
    su_resp_free(&r);
    curvd_log(CURVD_LOG_WARN, "a \"quoted\" event");
    su_fx_restart(f->fx);
    utc_second(hi);
    char *log = su_read_text(f->logpath);
    find_line(log, "trace-json-1", line, sizeof line);
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    if (!j)
        fail_msg("not a JSON line: %s (%s)", line, je.text);
    check_timestamp(json_string_value(json_object_get(j, "ts")), lo, hi);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "info");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "request");
    assert_string_equal(json_string_value(json_object_get(j, "request_id")), "trace-json-1");
    assert_string_equal(json_string_value(json_object_get(j, "route")), "healthz");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 200);
    json_decref(j);
    find_line(log, "quoted", line, sizeof line);
    j = json_loads(line, 0, &je);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(j, "msg")), "a \"quoted\" event");
    check_timestamp(json_string_value(json_object_get(j, "ts")), lo, hi);
    json_decref(j);
    free(log);
}

/* A generated id: 16 lower-case hex digits. */
static int is_generated(const char *id)
{
    if (strlen(id) != 16)
        return 0;
    for (const char *p = id; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

static void test_request_id(void **state)
{
    struct fixture *f = *state;
    curvd_log_setup(0, f->logfd);
    struct su_resp r;
    /* Kept: echoed in the header and in the problem. */
    char longest[65];
    memset(longest, 'x', 64);
    longest[64] = '\0';
    const char *kept[] = {"a", "req-42/_:;", longest, "!~{}\"'<>"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        get(f->fx->base, "/nope", kept[i], &r);
        assert_string_equal(r.request_id, kept[i]);
        json_t *j = su_json(r.body, r.len);
        assert_string_equal(json_string_value(json_object_get(j, "request_id")), kept[i]);
        json_decref(j);
        su_resp_free(&r);
    }
    /* Replaced: too long, a space, a byte outside ASCII, empty. */
    char too_long[66];
    memset(too_long, 'y', 65);
    too_long[65] = '\0';
    const char *replaced[] = {too_long, "two words", "caf\xc3\xa9", ""};
    for (size_t i = 0; i < sizeof replaced / sizeof replaced[0]; i++) {
        get(f->fx->base, "/healthz", replaced[i], &r);
        assert_int_equal(r.status, 200);
        if (!is_generated(r.request_id))
            fail_msg("X-Request-Id '%s' came back as '%s'", replaced[i], r.request_id);
        su_resp_free(&r);
    }
    /* Absent: one of ours, a new one each time. */
    char first[128];
    get(f->fx->base, "/healthz", NULL, &r);
    assert_true(is_generated(r.request_id));
    snprintf(first, sizeof first, "%s", r.request_id);
    su_resp_free(&r);
    get(f->fx->base, "/healthz", NULL, &r);
    assert_true(is_generated(r.request_id));
    assert_string_not_equal(r.request_id, first);
    su_resp_free(&r);
    su_fx_restart(f->fx);
    char *log = su_read_text(f->logpath), line[1024];
    find_line(log, longest, line, sizeof line); /* the access log carries it too */
    assert_non_null(strstr(line, " GET /nope 404 "));
    assert_null(strstr(log, too_long));
    free(log);
}

/* The value of the sample @name (with its labels) in @text; fails without it. */
static double sample(const char *text, const char *name)
{
    size_t k = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, name, k) == 0 && p[k] == ' ')
            return strtod(p + k + 1, NULL);
    fail_msg("no sample %s", name);
    return 0;
}

static char *metrics_text(const char *base)
{
    struct su_resp r;
    get(base, "/metrics", NULL, &r);
    assert_int_equal(r.status, 200);
    char *text = r.body;
    r.body = NULL;
    su_resp_free(&r);
    return text;
}

/* Statuses no handler sends today are still counted by their code. */
static void test_codes_counted(void **state)
{
    (void)state;
    struct curvd_metrics *m = curvd_metrics_new();
    const int codes[] = {202, 418, 507, 100, 599};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        for (size_t k = 0; k <= i; k++)
            curvd_metrics_request(m, 0, codes[i], 0.001, 0, 0);
    curvd_metrics_request(m, 0, 99, 0.001, 0, 0);
    curvd_metrics_request(m, 0, 600, 0.001, 0, 0);
    const struct curvd_metrics_view v = {.sessions_disk = -1};
    size_t len;
    char *text = curvd_metrics_render(m, &v, &len);
    char name[160];
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        snprintf(name, sizeof name, "curvd_http_requests_total{route=\"%s\",code=\"%d\"}",
                 curvd_routes[0].name, codes[i]);
        assert_int_equal((long)sample(text, name), (long)i + 1);
    }
    snprintf(name, sizeof name, "curvd_http_requests_total{route=\"%s\",code=\"other\"}",
             curvd_routes[0].name);
    assert_int_equal((long)sample(text, name), 2);
    free(text);
    curvd_metrics_free(m);
}

/* An HF step waits for its callback: the 202 has its own count. */
static void test_202_counted(void **state)
{
    struct fixture *f = *state;
    char id[33];
    json_decref(su_create(f->fx->base, "hf",
                          json_pack("{s:s, s:s}", "precond", "none", "damping", "tikhonov"), 201,
                          id, NULL));
    double g[SU_D];
    su_grad(1, 0.0, g);
    json_t *step = su_step_json(1, g, 0);
    json_object_set_new(step, "loss", json_real(0.5)); /* HF compares it with its model */
    char *body = json_dumps(step, JSON_COMPACT), path[128];
    json_decref(step);
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", id);
    json_decref(su_call(f->fx->base, "POST", path, body, 202, NULL));
    json_decref(su_call(f->fx->base, "POST", path, body, 202, NULL)); /* the same, replayed */
    free(body);
    char *text = metrics_text(f->fx->base);
    assert_int_equal(
        (long)sample(text, "curvd_http_requests_total{route=\"steps.post\",code=\"202\"}"), 2);
    assert_null(strstr(text, "code=\"other\""));
    free(text);
}

static void test_build_info(void **state)
{
    struct fixture *f = *state;
    char *text = metrics_text(f->fx->base);
    char want[512];
    snprintf(want, sizeof want,
             "curvd_build_info{version=\"%s\",commit=\"%s\",libcurv=\"%s\",libmicrohttpd=\"%s\","
             "jansson=\"%s\",sqlite=\"%s\"}",
             CURVD_VERSION, curvd_build_commit, curv_version(), MHD_get_version(), JANSSON_VERSION,
             sqlite3_libversion());
    assert_true(sample(text, want) == 1.0);
    assert_true(strlen(curvd_build_commit) > 0);
    assert_non_null(strstr(text, "# TYPE curvd_build_info gauge\n"));
    free(text);
}

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The daemon runs in this process: its figures are this process's. */
static void test_process_metrics(void **state)
{
    struct fixture *f = *state;
    char *before = metrics_text(f->fx->base);
    double cpu0 = cpu_now();
    enum { EXTRA = 64 };
    int fds[EXTRA];
    for (int i = 0; i < EXTRA; i++)
        assert_true((fds[i] = open("/dev/null", O_RDONLY)) >= 0);
    volatile double burn = 0; /* CPU time the metric must see */
    while (cpu_now() - cpu0 < 0.3)
        for (int i = 0; i < 100000; i++)
            burn += 1e-9 * i;
    double cpu1 = cpu_now();
    assert_true(burn > 0);
    char *after = metrics_text(f->fx->base);
    for (int i = 0; i < EXTRA; i++)
        close(fds[i]);
    double opened = sample(after, "process_open_fds") - sample(before, "process_open_fds");
    if (opened < EXTRA - 4 || opened > EXTRA + 4) /* libcurl may open or drop a socket */
        fail_msg("process_open_fds grew by %g with %d files opened", opened, EXTRA);
    /* The clock ticks in 1/100 s: allow a tick each end. */
    double spent =
        sample(after, "process_cpu_seconds_total") - sample(before, "process_cpu_seconds_total");
    if (spent < (cpu1 - cpu0) - 0.03)
        fail_msg("process_cpu_seconds_total grew by %g with %g s burnt", spent, cpu1 - cpu0);
    double start = sample(after, "process_start_time_seconds");
    assert_true(start <= (double)time(NULL) + 1);
    assert_true(start > (double)time(NULL) - 3600); /* the test has not run for an hour */
    double rss = sample(after, "process_resident_memory_bytes");
    assert_true(rss > 1 << 20);
    assert_true(rss <= sample(after, "process_virtual_memory_bytes"));
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur != RLIM_INFINITY)
        assert_true(sample(after, "process_max_fds") == (double)rl.rlim_cur);
    assert_non_null(strstr(after, "# TYPE process_cpu_seconds_total counter\n"));
    free(before);
    free(after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_log_text, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_request_id, setup, teardown),
        cmocka_unit_test(test_codes_counted),
        cmocka_unit_test_setup_teardown(test_202_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_build_info, setup, teardown),
        cmocka_unit_test_setup_teardown(test_process_metrics, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
