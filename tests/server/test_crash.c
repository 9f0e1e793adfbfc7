/* SPDX-License-Identifier: MIT */
/*
 * SIGKILL durability of the real daemon process (SQLite's own method): a
 * trainer steps two sessions while the parent kills curvd at seeded random
 * moments (mid-request from a second thread, between requests, and during
 * start-up), restarts it on the same database and checks after each
 * restart that every acknowledged step is there, at most the one step in
 * flight was applied without an acknowledgement, and re-posting the
 * current step replays its stored reply. Every update is compared with the
 * same optimizer run in-process by libcurv (bit for bit), and at the end
 * the stored state and PRAGMA integrity_check are read with sqlite3.
 *
 * The daemon is $CURVD_BIN, else BUILD/curvd next to this binary's build
 * tree when it is newer than BUILD/libcurvd.a, else this very binary
 * re-executed with --as-daemon (same server archive, e.g. under `make asan`).
 * CURVD_CRASH_SEED picks another seed.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "curv.h"
#include "daemon.h"
#include "http.h"
#include "testutil.h"

enum { D = 11, NSESS = 2, MIN_KILLS = 30, WANT_KILLS = 100 };
#define TIME_S 10.0 /* then stop at WANT_KILLS or this; past it only to reach MIN_KILLS */
#define HARD_CAP_S 20.0

static char self_path[1024], daemon_path[1024];
static int self_exec; /* the daemon is this binary with --as-daemon */

struct sess {
    char id[33];
    curv_opt *ref; /* libcurv fed every step this test saw acknowledged */
    long acked;    /* last step whose reply (200) reached the trainer */
    char *last;    /* that reply's body, for the replay check */
    size_t last_len;
};

struct fx {
    char dir[256], db[300];
    pid_t pid;       /* the running daemon, 0: none */
    int err_fd;      /* read end of its stderr */
    pthread_t drain; /* reads its stderr once the port is known */
    int draining;
    unsigned port;
    struct sess s[NSESS];
    curv_layout *layout;
    tu_rng rng;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- The daemon process ---- */

static void *drain_main(void *arg)
{
    char buf[4096];
    int fd = *(int *)arg;
    while (read(fd, buf, sizeof buf) > 0)
        ;
    return NULL;
}

static void spawn(struct fx *f)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    char *argv[16];
    int n = 0;
    argv[n++] = self_exec ? self_path : daemon_path;
    if (self_exec)
        argv[n++] = "--as-daemon";
    char *rest[] = {"--port", "0",         "--listen", "127.0.0.1",    "--db",
                    f->db,    "--threads", "2",        "--durability", "full"};
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
        argv[n++] = rest[i];
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) { /* only async-signal-safe calls until exec */
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(p[1], 2);
        execv(argv[0], argv);
        _exit(127);
    }
    close(p[1]);
    f->pid = pid;
    f->err_fd = p[0];
    f->port = 0;
}

/* Read its stderr up to the "listening on" line; then drain it. */
static void wait_ready(struct fx *f)
{
    char text[8192];
    size_t len = 0;
    double deadline = now_s() + 10;
    const char *key = "listening on http://127.0.0.1:";
    while (!f->port) {
        struct pollfd pfd = {f->err_fd, POLLIN, 0};
        int left = (int)((deadline - now_s()) * 1000);
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            fail_msg("curvd did not start within 10 s: %.*s", (int)len, text);
        ssize_t k = read(f->err_fd, text + len, sizeof text - 1 - len);
        if (k <= 0)
            fail_msg("curvd exited at start-up: %.*s", (int)len, text);
        len += (size_t)k;
        text[len] = '\0';
        const char *at = strstr(text, key);
        if (at && strchr(at, '\n'))
            f->port = (unsigned)strtoul(at + strlen(key), NULL, 10);
        else if (len + 1 >= sizeof text)
            fail_msg("no port in curvd's start-up output");
    }
    assert_int_equal(pthread_create(&f->drain, NULL, drain_main, &f->err_fd), 0);
    f->draining = 1;
}

/* SIGKILL the daemon (if still there), reap it, close its pipe. */
static void reap(struct fx *f)
{
    if (f->pid > 0) {
        kill(f->pid, SIGKILL);
        int ws = 0;
        while (waitpid(f->pid, &ws, 0) < 0 && errno == EINTR)
            ;
        f->pid = 0;
    }
    if (f->draining)
        pthread_join(f->drain, NULL);
    f->draining = 0;
    if (f->err_fd >= 0)
        close(f->err_fd);
    f->err_fd = -1;
}

/* ---- HTTP ---- */

struct resp {
    long status;
    char *body;
    size_t len;
};

static size_t on_body(char *data, size_t sz, size_t n, void *ud)
{
    struct resp *r = ud;
    char *np = realloc(r->body, r->len + sz * n + 1);
    if (!np)
        return 0;
    memcpy(np + r->len, data, sz * n);
    r->body = np;
    r->len += sz * n;
    r->body[r->len] = '\0';
    return sz * n;
}

/* One request; the transfer's result (a killed daemon gives an error). */
static CURLcode http(struct fx *f, const char *method, const char *path, const char *body,
                     struct resp *r)
{
    memset(r, 0, sizeof *r);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%u%s", f->port, path);
    CURL *c = curl_easy_init();
    assert_non_null(c);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    }
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r->body)
        r->body = calloc(1, 1);
    return rc;
}

/* A request that must succeed with @want; returns the parsed body. */
static json_t *call(struct fx *f, const char *method, const char *path, const char *body, long want,
                    struct resp *raw)
{
    struct resp r;
    CURLcode rc = http(f, method, path, body, &r);
    if (rc != CURLE_OK || r.status != want)
        fail_msg("%s %s: %s, status %ld (want %ld): %s", method, path, curl_easy_strerror(rc),
                 r.status, want, r.body);
    json_t *j = json_loads(r.body, 0, NULL);
    if (raw)
        *raw = r;
    else
        free(r.body);
    return j;
}

/* ---- The trainer ---- */

static void grad_at(int s, long t, double *g)
{
    for (int i = 0; i < D; i++)
        g[i] = sin(0.37 * (double)(t * D + i) + 1.3 * s) * (1 + i % 3);
}

static json_t *tensor(const char *name, json_t *shape, const double *v, size_t n)
{
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, json_real(v[i]));
    return json_pack("{s:s, s:o, s:s, s:o}", "name", name, "shape", shape, "datatype", "FP64",
                     "data", data);
}

static char *step_body(int s, long t)
{
    double g[D];
    grad_at(s, t, g);
    json_t *b = json_pack("{s:I, s:[o,o]}", "step", (json_int_t)t, "gradients",
                          tensor("fc", json_pack("[i,i]", 2, 5), g, 10),
                          tensor("gain", json_pack("[i]", 1), g + 10, 1));
    char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(b);
    return text;
}

/* A 200 reply to step @t of session @s seen for the first time: step the
 * reference and compare the update bit for bit; keep the body. */
static void accept_reply(struct fx *f, int si, long t, struct resp *r)
{
    struct sess *s = &f->s[si];
    json_t *j = json_loads(r->body, 0, NULL);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "step")), t);
    double u[D], want[D], g[D];
    int seen = 0;
    json_t *upd = json_object_get(j, "update"), *tn;
    size_t k;
    json_array_foreach(upd, k, tn)
    {
        const char *name = json_string_value(json_object_get(tn, "name"));
        size_t off = name && strcmp(name, "gain") == 0 ? 10 : 0, n = off ? 1 : 10;
        json_t *data = json_object_get(tn, "data");
        assert_int_equal(json_array_size(data), n);
        for (size_t i = 0; i < n; i++)
            u[off + i] = json_number_value(json_array_get(data, i));
        seen += (int)n;
    }
    json_decref(j);
    assert_int_equal(seen, D);
    grad_at(si, t, g);
    tu_step_ok(s->ref, g, NULL, want);
    for (int i = 0; i < D; i++)
        if (memcmp(&u[i], &want[i], sizeof u[i]) != 0)
            fail_msg("session %d step %ld element %d: daemon %.17g, libcurv %.17g", si, t, i, u[i],
                     want[i]);
    assert_int_equal(t, s->acked + 1);
    s->acked = t;
    free(s->last);
    s->last = r->body;
    s->last_len = r->len;
    r->body = NULL;
}

static void steps_path(const struct sess *s, char *p, size_t cap)
{
    snprintf(p, cap, "/v1/sessions/%s/steps", s->id);
}

/* A step while the daemon lives: it must be acknowledged. */
static void step_ok(struct fx *f, int si)
{
    char path[128], *body = step_body(si, f->s[si].acked + 1);
    steps_path(&f->s[si], path, sizeof path);
    struct resp r;
    json_decref(call(f, "POST", path, body, 200, &r));
    accept_reply(f, si, f->s[si].acked + 1, &r);
    free(r.body);
    free(body);
}

struct killer {
    pid_t pid;
    double delay;
};

static void *killer_main(void *arg)
{
    struct killer *k = arg;
    sleep_s(k->delay);
    kill(k->pid, SIGKILL);
    return NULL;
}

/* Post the next step of session @si and SIGKILL the daemon @delay seconds
 * later from another thread; 1 if the step was acknowledged all the same. */
static int kill_mid_step(struct fx *f, int si, double delay)
{
    struct killer k = {f->pid, delay};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, killer_main, &k), 0);
    char path[128], *body = step_body(si, f->s[si].acked + 1);
    steps_path(&f->s[si], path, sizeof path);
    struct resp r;
    CURLcode rc = http(f, "POST", path, body, &r);
    pthread_join(th, NULL);
    free(body);
    int acked = rc == CURLE_OK && r.status == 200;
    if (acked)
        accept_reply(f, si, f->s[si].acked + 1, &r);
    else if (rc == CURLE_OK)
        fail_msg("step refused: %ld %s", r.status, r.body);
    free(r.body);
    return acked;
}

/* After a restart: where does each session stand, and does re-posting its
 * current step replay the stored reply? @inflight[si] is 1 when a step of
 * session si was in flight, unacknowledged, at the kill. */
static int recover(struct fx *f, const int *inflight)
{
    int applied = 0;
    for (int si = 0; si < NSESS; si++) {
        struct sess *s = &f->s[si];
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s", s->id);
        json_t *j = call(f, "GET", path, NULL, 200, NULL);
        long step = (long)json_integer_value(json_object_get(j, "step"));
        json_decref(j);
        if (step < s->acked)
            fail_msg("session %d lost acknowledged steps: at %ld, %ld acknowledged", si, step,
                     s->acked);
        if (step > s->acked + inflight[si])
            fail_msg("session %d applied unacknowledged steps: at %ld, %ld acknowledged", si, step,
                     s->acked);
        if (step == 0)
            continue;
        char *body = step_body(si, step);
        struct resp r;
        steps_path(s, path, sizeof path);
        json_decref(call(f, "POST", path, body, 200, &r));
        free(body);
        if (step == s->acked) {
            if (r.len != s->last_len || memcmp(r.body, s->last, r.len) != 0)
                fail_msg("session %d: the replay of step %ld differs from its reply:\n%s\n%s", si,
                         step, r.body, s->last);
        } else {
            accept_reply(f, si, step, &r); /* applied, never acknowledged: now it is */
            applied++;
        }
        free(r.body);
    }
    return applied;
}

/* The file, read with sqlite3: intact, every session at its last acknowledged
 * step with the reference's state. */
static void check_db(struct fx *f)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "ok");
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT s.step, s.state, r.step FROM sessions s JOIN "
                                        "step_responses r ON r.session_id = s.id WHERE s.id = ?",
                                        -1, &q, NULL),
                     SQLITE_OK);
    for (int si = 0; si < NSESS; si++) {
        sqlite3_bind_text(q, 1, f->s[si].id, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int64(q, 0), f->s[si].acked);
        assert_int_equal(sqlite3_column_int64(q, 2), f->s[si].acked);
        size_t len;
        unsigned char *want = tu_snapshot(f->s[si].ref, &len);
        assert_int_equal((size_t)sqlite3_column_bytes(q, 1), len);
        assert_memory_equal(sqlite3_column_blob(q, 1), want, len);
        curv_free(want);
        sqlite3_reset(q);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
}

static void test_sigkill(void **state)
{
    struct fx *f = *state;
    unsigned seed = getenv("CURVD_CRASH_SEED") ? (unsigned)atoi(getenv("CURVD_CRASH_SEED")) : 2024;
    tu_rng_seed(&f->rng, seed);
    spawn(f);
    wait_ready(f);
    const char *kinds[NSESS] = {"adagrad_diag", "mbag"};
    for (int si = 0; si < NSESS; si++) {
        char body[256];
        snprintf(body, sizeof body,
                 "{\"optimizer\":\"%s\",\"layout\":[{\"name\":\"fc\",\"kind\":\"dense\",\"shape\":"
                 "[2,4],\"bias\":true},{\"name\":\"gain\",\"kind\":\"vector\",\"shape\":[1]}]}",
                 kinds[si]);
        json_t *j = call(f, "POST", "/v1/sessions", body, 201, NULL);
        snprintf(f->s[si].id, sizeof f->s[si].id, "%s",
                 json_string_value(json_object_get(j, "id")));
        assert_int_equal(strlen(f->s[si].id), 32);
        json_decref(j);
        curv_opt_kind kind;
        assert_int_equal(curv_opt_kind_parse(kinds[si], &kind), CURV_OK);
        f->s[si].ref = tu_new_opt(kind, f->layout, NULL);
    }
    double t0 = now_s(), kd = 0.001, boot = 0.01; /* kill delay, start-up time */
    int kills = 0, mid = 0, mid_acked = 0, between = 0, at_boot = 0, applied = 0;
    long requests = 0;
    while (kills < WANT_KILLS && (now_s() - t0 < TIME_S || kills < MIN_KILLS) &&
           now_s() - t0 < HARD_CAP_S) {
        int n = (int)(tu_uniform(&f->rng) * 5);
        for (int k = 0; k < n; k++, requests++)
            step_ok(f, (int)(tu_uniform(&f->rng) * NSESS));
        int inflight[NSESS] = {0};
        double mode = tu_uniform(&f->rng);
        if (mode < 0.6) { /* SIGKILL from a second thread while a step is in flight */
            int si = (int)(tu_uniform(&f->rng) * NSESS);
            mid++, requests++;
            if (kill_mid_step(f, si, kd * (0.25 + 1.5 * tu_uniform(&f->rng)))) {
                mid_acked++; /* answered before it died */
                kd *= 0.8;
            } else {
                inflight[si] = 1;
                kd *= 1.15;
            }
        } else {
            between++;
        }
        reap(f);
        kills++;
        spawn(f);
        if (mode > 0.9) { /* and once more while it opens the database */
            sleep_s(tu_uniform(&f->rng) * boot);
            reap(f);
            kills++;
            at_boot++;
            spawn(f);
        }
        double b0 = now_s();
        wait_ready(f);
        boot = 0.8 * boot + 0.2 * (now_s() - b0);
        applied += recover(f, inflight);
    }
    for (int k = 0; k < 4; k++)
        for (int si = 0; si < NSESS; si++, requests++)
            step_ok(f, si);
    reap(f); /* the last stop is a crash too */
    check_db(f);
    printf("crash: seed %u, %d kills in %.1f s (%d mid-request: %d answered before the kill, "
           "%d applied but unacknowledged; %d between requests; %d during start-up), "
           "%ld step requests, steps %ld + %ld\n",
           seed, kills, now_s() - t0, mid, mid_acked, applied, between, at_boot, requests,
           f->s[0].acked, f->s[1].acked);
    fflush(stdout);
    if (kills < MIN_KILLS)
        fail_msg("only %d kills within %.0f s", kills, HARD_CAP_S);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    snprintf(f->dir, sizeof f->dir, "%s/curvd-crash-XXXXXX", tmp);
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/curvd.db", f->dir);
    f->err_fd = -1;
    f->layout = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(f->layout, "fc", 2, 4, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(f->layout, "gain", 1, NULL), CURV_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    reap(f); /* no daemon survives a failed test */
    for (int si = 0; si < NSESS; si++) {
        curv_opt_free(f->s[si].ref);
        free(f->s[si].last);
    }
    curv_layout_free(f->layout);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* The daemon's main() without flags: what --as-daemon runs. */
static int run_daemon(int argc, char **argv)
{
    struct curvd_server srv = {.cfg = {.listen = "127.0.0.1",
                                       .db_path = "curvd.db",
                                       .threads = 2,
                                       .max_body = 1 << 20,
                                       .max_sessions = 100,
                                       .mem_budget = (size_t)1 << 30,
                                       .quiet = 1,
                                       .durability_full = 1}};
    for (int a = 1; a + 1 < argc; a++)
        if (strcmp(argv[a], "--db") == 0)
            srv.cfg.db_path = argv[a + 1];
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    char err[256];
    if (curvd_daemon_open(&srv, err, sizeof err) != 0 ||
        curvd_http_start(&srv, err, sizeof err) != 0) {
        fprintf(stderr, "curvd: %s\n", err);
        return 1;
    }
    fprintf(stderr, "curvd (test build) listening on http://127.0.0.1:%u\n", curvd_http_port(&srv));
    int sig = 0;
    sigwait(&stop, &sig);
    curvd_http_stop(&srv);
    curvd_daemon_close(&srv);
    return 0;
}

/* $CURVD_BIN, or BUILD/curvd when not older than BUILD/libcurvd.a, where
 * this binary is BUILD/tests/server/NAME; else re-execute this binary. */
static void find_daemon(const char *argv0)
{
    snprintf(self_path, sizeof self_path, "%s", argv0);
    const char *env = getenv("CURVD_BIN");
    if (env) {
        snprintf(daemon_path, sizeof daemon_path, "%s", env);
        return;
    }
    char build[900];
    snprintf(build, sizeof build, "%s", argv0);
    for (int up = 0; up < 3; up++) {
        char *slash = strrchr(build, '/');
        snprintf(slash ? slash : build, sizeof build - (size_t)(slash ? slash - build : 0), "%s",
                 slash ? "" : ".");
    }
    char archive[1100];
    snprintf(daemon_path, sizeof daemon_path, "%s/curvd", build);
    snprintf(archive, sizeof archive, "%s/libcurvd.a", build);
    struct stat bin, lib;
    self_exec = stat(daemon_path, &bin) != 0 || access(daemon_path, X_OK) != 0 ||
                (stat(archive, &lib) == 0 && bin.st_mtime < lib.st_mtime);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--as-daemon") == 0)
        return run_daemon(argc - 1, argv + 1);
    /* The daemon's flags are explicit; no stray environment changes it. */
    const char *env[] = {"CURVD_TOKEN_FILE", "CURVD_MAX_SESSIONS", "CURVD_MEMORY_BUDGET",
                         "CURVD_MAX_BODY"};
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++)
        unsetenv(env[i]);
    find_daemon(argv[0]);
    printf("crash: daemon %s\n", self_exec ? "this binary --as-daemon" : daemon_path);
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sigkill, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
