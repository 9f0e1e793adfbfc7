/* SPDX-License-Identifier: MIT */
/*
 * SIGKILL durability of the real daemon process (SQLite's own method): a
 * trainer steps three sessions (AdaGrad-diag, MBAG, and K-FAC with
 * statistics every other step, whose commits write only the state parts
 * that changed) while the parent kills curvd at seeded random
 * moments (mid-request from a second thread, between requests, and during
 * start-up), restarts it on the same database and checks after each
 * restart that every acknowledged step is there, at most the one step in
 * flight was applied without an acknowledgement, and re-posting the
 * current step replays its stored reply. Every update is compared with the
 * same optimizer run in-process by libcurv (bit for bit), and at the end
 * the stored state (its parts, joined) and PRAGMA integrity_check are
 * read with sqlite3.
 *
 * The daemon is $CURVD_BIN, else BUILD/curvd next to this binary's build
 * tree when it is newer than BUILD/libcurvd.a, else this very binary
 * re-executed with --as-daemon (same server archive, e.g. under `make asan`).
 * CURVD_CRASH_SEED picks another seed.
 */
#include <cblas.h>
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
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = SU_D, NSESS = 3, KFAC = 2, MIN_KILLS = 30, WANT_KILLS = 100 };
enum { ROWS = 3 };  /* K-FAC's statistics: rows of the "fc" block (4 inputs, 2 outputs) */
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
    char dir[256], db[300], base[64];
    pid_t pid;       /* the running daemon, 0: none */
    int err_fd;      /* read end of its stderr */
    pthread_t drain; /* reads its stderr once the port is known */
    int draining;
    unsigned port;
    struct sess s[NSESS];
    curv_layout *layout;
    tu_rng rng;
};

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
    double deadline = su_now_s() + 10;
    const char *key = "listening on http://127.0.0.1:";
    while (!f->port) {
        struct pollfd pfd = {f->err_fd, POLLIN, 0};
        int left = (int)((deadline - su_now_s()) * 1000);
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
    snprintf(f->base, sizeof f->base, "http://127.0.0.1:%u", f->port);
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

/* ---- The trainer (requests through srvutil, with a 10 s timeout) ---- */

/* The K-FAC session's statistics of step @t for block "fc": activations
 * ROWS x 4, then signals ROWS x 2 (deterministic). */
static void kfac_stats(long t, double acts[ROWS * 4], double sig[ROWS * 2])
{
    for (int i = 0; i < ROWS * 4; i++)
        acts[i] = sin(0.7 * (double)(t * 13 + i));
    for (int i = 0; i < ROWS * 2; i++)
        sig[i] = 0.1 * cos(0.3 * (double)(t * 7 + i));
}

/* Statistics go with every other step: between them K-FAC's factors, and
 * with inv_interval 3 its eigendecompositions, keep their parts, so the
 * daemon commits only some parts of that session. */
static int kfac_has_stats(long t)
{
    return t % 2 == 1;
}

static char *step_body(int s, long t)
{
    double g[D];
    su_grad(t, 1.3 * s, g);
    json_t *b = su_step_json(t, g, 0);
    if (s == KFAC && kfac_has_stats(t)) {
        double acts[ROWS * 4], sig[ROWS * 2];
        kfac_stats(t, acts, sig);
        json_object_set_new(b, "layers",
                            json_pack("[{s:s, s:o, s:o}]", "block", "fc", "activations",
                                      su_tensor("a", json_pack("[i,i]", ROWS, 4), acts, ROWS * 4),
                                      "signals",
                                      su_tensor("s", json_pack("[i,i]", ROWS, 2), sig, ROWS * 2)));
    }
    char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(b);
    return text;
}

/* The reference's update for step @t of session @si, which must equal
 * the daemon's @u bit for bit. */
static void check_update(struct sess *s, int si, long t, const double *u)
{
    double g[D], want[D], acts[ROWS * 4], sig[ROWS * 2];
    su_grad(t, 1.3 * si, g);
    char what[64];
    snprintf(what, sizeof what, "session %d step %ld", si, t);
    if (si != KFAC) {
        su_check_update(s->ref, g, u, what);
        return;
    }
    kfac_stats(t, acts, sig);
    curv_layer_stats ls = {
        .block = 0, .rows = ROWS, .examples = ROWS, .acts = acts, .signals = sig};
    int with = kfac_has_stats(t);
    curv_step_input in = {
        .grad = g, .len = D, .dtype = CURV_F64, .layers = with ? &ls : NULL, .n_layers = with};
    curv_error cerr;
    curv_request req; /* simple mode never asks; the kind may, so a place is required */
    tu_assert_status(curv_opt_step(s->ref, &in, want, &req, &cerr), CURV_OK, &cerr);
    for (int i = 0; i < D; i++)
        if (memcmp(&u[i], &want[i], sizeof want[i]) != 0)
            fail_msg("%s, element %d: daemon %.17g, libcurv %.17g", what, i, u[i], want[i]);
}

/* A 200 reply to step @t of session @s seen for the first time: step the
 * reference and compare the update bit for bit; keep the body. */
static void accept_reply(struct fx *f, int si, long t, struct su_resp *r)
{
    struct sess *s = &f->s[si];
    double u[D];
    if (su_update_of(r->body, t, u) != 0)
        fail_msg("session %d step %ld: bad reply %s", si, t, r->body);
    check_update(s, si, t, u);
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
    struct su_resp r;
    json_decref(su_call(f->base, "POST", path, body, 200, &r));
    accept_reply(f, si, f->s[si].acked + 1, &r);
    su_resp_free(&r);
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
    char path[128], url[256], *body = step_body(si, f->s[si].acked + 1);
    steps_path(&f->s[si], path, sizeof path);
    snprintf(url, sizeof url, "%s%s", f->base, path);
    struct su_resp r;
    CURLcode rc = su_try_request("POST", url, body, &r);
    pthread_join(th, NULL);
    free(body);
    int acked = rc == CURLE_OK && r.status == 200;
    if (acked)
        accept_reply(f, si, f->s[si].acked + 1, &r);
    else if (rc == CURLE_OK)
        fail_msg("step refused: %ld %s", r.status, r.body);
    su_resp_free(&r);
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
        long step = su_session_step(f->base, s->id);
        if (step < s->acked)
            fail_msg("session %d lost acknowledged steps: at %ld, %ld acknowledged", si, step,
                     s->acked);
        if (step > s->acked + inflight[si])
            fail_msg("session %d applied unacknowledged steps: at %ld, %ld acknowledged", si, step,
                     s->acked);
        if (step == 0)
            continue;
        char path[128], *body = step_body(si, step);
        struct su_resp r;
        steps_path(s, path, sizeof path);
        json_decref(su_call(f->base, "POST", path, body, 200, &r));
        free(body);
        if (step == s->acked) {
            if (r.len != s->last_len || memcmp(r.body, s->last, r.len) != 0)
                fail_msg("session %d: the replay of step %ld differs from its reply:\n%s\n%s", si,
                         step, r.body, s->last);
        } else {
            accept_reply(f, si, step, &r); /* applied, never acknowledged: now it is */
            applied++;
        }
        su_resp_free(&r);
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
                                        "SELECT s.step, r.step FROM sessions s JOIN "
                                        "step_responses r ON r.session_id = s.id WHERE s.id = ?",
                                        -1, &q, NULL),
                     SQLITE_OK);
    for (int si = 0; si < NSESS; si++) {
        sqlite3_bind_text(q, 1, f->s[si].id, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int64(q, 0), f->s[si].acked);
        assert_int_equal(sqlite3_column_int64(q, 1), f->s[si].acked);
        size_t len, got_len;
        unsigned char *want = tu_snapshot(f->s[si].ref, &len);
        unsigned char *got = su_raw_state(f->db, f->s[si].id, &got_len);
        assert_int_equal(got_len, len);
        assert_memory_equal(got, want, len);
        curv_free(want);
        free(got);
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
    const char *kinds[NSESS] = {"adagrad_diag", "mbag", "kfac"};
    const tu_kv kfac_kv[] = {{"cov_interval", 2}, {"inv_interval", 3}, {"weight_decay", 0}};
    for (int si = 0; si < NSESS; si++) {
        json_t *config = si == KFAC
                             ? json_pack("{s:s, s:i, s:i, s:i}", "mode", "simple", "cov_interval",
                                         2, "inv_interval", 3, "weight_decay", 0)
                             : NULL;
        json_decref(su_create(f->base, kinds[si], config, 201, f->s[si].id, NULL));
        assert_int_equal(strlen(f->s[si].id), 32);
        curv_opt_kind kind;
        assert_int_equal(curv_opt_kind_parse(kinds[si], &kind), CURV_OK);
        /* The K-FAC session takes the default precision, fp32. */
        f->s[si].ref = si == KFAC ? tu_kfac_opt(f->layout, kfac_kv, 3, "mode", "simple",
                                                "precision", "fp32", NULL)
                                  : tu_new_opt(kind, f->layout, NULL);
    }
    double t0 = su_now_s(), kd = 0.001, boot = 0.01; /* kill delay, start-up time */
    int kills = 0, mid = 0, mid_acked = 0, between = 0, at_boot = 0, applied = 0;
    long requests = 0;
    while (kills < WANT_KILLS && (su_now_s() - t0 < TIME_S || kills < MIN_KILLS) &&
           su_now_s() - t0 < HARD_CAP_S) {
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
        double b0 = su_now_s();
        wait_ready(f);
        boot = 0.8 * boot + 0.2 * (su_now_s() - b0);
        applied += recover(f, inflight);
    }
    for (int k = 0; k < 4; k++)
        for (int si = 0; si < NSESS; si++, requests++)
            step_ok(f, si);
    reap(f); /* the last stop is a crash too */
    check_db(f);
    printf("crash: seed %u, %d kills in %.1f s (%d mid-request: %d answered before the kill, "
           "%d applied but unacknowledged; %d between requests; %d during start-up), "
           "%ld step requests, steps %ld + %ld + %ld\n",
           seed, kills, su_now_s() - t0, mid, mid_acked, applied, between, at_boot, requests,
           f->s[0].acked, f->s[1].acked, f->s[KFAC].acked);
    fflush(stdout);
    if (kills < MIN_KILLS)
        fail_msg("only %d kills within %.0f s", kills, HARD_CAP_S);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, getenv("TMPDIR"), "crash", f->db, sizeof f->db);
    f->err_fd = -1;
    f->layout = su_layout_new();
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
    int rc = su_rmtree(f->dir);
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
    /* One OpenBLAS thread, as curvd runs it (main.c): K-FAC's decompositions
     * then sum in the same order in the daemon and in the reference. */
    openblas_set_num_threads(1);
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
    su_set_timeout(10);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sigkill, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
