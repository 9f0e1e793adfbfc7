/* SPDX-License-Identifier: MIT */
/* The crash suite's daemon process and callback trainer (crash_util.h). */
#include "crash_util.h"

#include <cblas.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "http/http.h"

static char self_path[1024], daemon_path[1024];
static int self_exec; /* the daemon is this binary with --as-daemon */

void cu_sleep_s(double s)
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

void cu_spawn(struct cu_daemon *d)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fcntl(p[0], F_SETFD, FD_CLOEXEC);
    fcntl(p[1], F_SETFD, FD_CLOEXEC);
    char *argv[32];
    int n = 0;
    argv[n++] = self_exec ? self_path : daemon_path;
    if (self_exec)
        argv[n++] = "--as-daemon";
    /* The step log for every session, however small; its snapshots with
     * their step or after the reply as the test says. */
    char *rest[] = {"--port",
                    "0",
                    "--listen",
                    "127.0.0.1",
                    "--db",
                    (char *)d->db,
                    "--threads",
                    "2",
                    "--durability",
                    "full",
                    "--snapshot-min",
                    "0",
                    "--snapshot-inline",
                    d->snapshot_after_reply ? "0" : "1048576",
                    "--log-file-min",
                    d->records_in_files ? "0" : "1048576"};
    for (size_t i = 0; i < sizeof rest / sizeof rest[0]; i++)
        argv[n++] = rest[i];
    argv[n++] = "--node-id";
    argv[n++] = (char *)(d->node_id ? d->node_id : "cu-daemon");
    if (d->lease_ttl_ms) {
        argv[n++] = "--lease-ttl";
        argv[n++] = (char *)d->lease_ttl_ms;
    }
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
    d->pid = pid;
    d->err_fd = p[0];
    d->port = 0;
}

void cu_wait_ready(struct cu_daemon *d)
{
    char text[8192];
    size_t len = 0;
    double deadline = su_now_s() + 10;
    const char *key = "listening on http://127.0.0.1:";
    while (!d->port) {
        struct pollfd pfd = {d->err_fd, POLLIN, 0};
        int left = (int)((deadline - su_now_s()) * 1000);
        if (left <= 0 || poll(&pfd, 1, left) <= 0)
            fail_msg("curvd did not start within 10 s: %.*s", (int)len, text);
        ssize_t k = read(d->err_fd, text + len, sizeof text - 1 - len);
        if (k <= 0)
            fail_msg("curvd exited at start-up: %.*s", (int)len, text);
        len += (size_t)k;
        text[len] = '\0';
        const char *at = strstr(text, key);
        if (at && strchr(at, '\n'))
            d->port = (unsigned)strtoul(at + strlen(key), NULL, 10);
        else if (len + 1 >= sizeof text)
            fail_msg("no port in curvd's start-up output");
    }
    snprintf(d->base, sizeof d->base, "http://127.0.0.1:%u", d->port);
    assert_int_equal(pthread_create(&d->drain, NULL, drain_main, &d->err_fd), 0);
    d->draining = 1;
}

void cu_reap(struct cu_daemon *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        int ws = 0;
        while (waitpid(d->pid, &ws, 0) < 0 && errno == EINTR)
            ;
        d->pid = 0;
    }
    if (d->draining)
        pthread_join(d->drain, NULL);
    d->draining = 0;
    if (d->err_fd >= 0)
        close(d->err_fd);
    d->err_fd = -1;
}

static void *killer_main(void *arg)
{
    struct cu_killer *k = arg;
    cu_sleep_s(k->delay);
    kill(k->pid, SIGKILL);
    return NULL;
}

void cu_killer_arm(struct cu_killer *k, pid_t pid, double delay)
{
    k->pid = pid;
    k->delay = delay;
    assert_int_equal(pthread_create(&k->th, NULL, killer_main, k), 0);
}

void cu_killer_join(struct cu_killer *k)
{
    pthread_join(k->th, NULL);
}

/* What --as-daemon runs: the daemon's main() on --db, full durability. */
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
    srv.cfg.snapshot_log_pct = 100;
    srv.cfg.snapshot_ms = 2000;
    for (int a = 1; a + 1 < argc; a++)
        if (strcmp(argv[a], "--db") == 0)
            srv.cfg.db_path = argv[a + 1];
        else if (strcmp(argv[a], "--snapshot-inline") == 0)
            srv.cfg.snapshot_inline = (size_t)strtoull(argv[a + 1], NULL, 10);
        else if (strcmp(argv[a], "--log-file-min") == 0)
            srv.cfg.log_file_min = (size_t)strtoull(argv[a + 1], NULL, 10);
        else if (strcmp(argv[a], "--node-id") == 0)
            srv.cfg.node_id = argv[a + 1];
        else if (strcmp(argv[a], "--lease-ttl") == 0)
            srv.cfg.lease_ttl_ms = (size_t)strtoull(argv[a + 1], NULL, 10);
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

const char *cu_find_daemon(const char *argv0)
{
    snprintf(self_path, sizeof self_path, "%s", argv0);
    const char *env = getenv("CURVD_BIN");
    if (env) {
        snprintf(daemon_path, sizeof daemon_path, "%s", env);
        return daemon_path;
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
    return self_exec ? "this binary --as-daemon" : daemon_path;
}

int cu_main_begin(int argc, char **argv, const char *suite)
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
    printf("%s: daemon %s\n", suite, cu_find_daemon(argv[0]));
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_ALL);
    su_set_timeout(10);
    return -1;
}

/* ---- A session as the trainer knows it ---- */

void cu_sess_ack(struct cu_sess *s, long t, struct su_resp *r)
{
    assert_int_equal(t, s->acked + 1);
    s->acked = t;
    free(s->last);
    s->last = r->body;
    s->last_len = r->len;
    r->body = NULL;
}

void cu_expect_replay(const char *base, const struct cu_sess *s, const char *body, const char *what)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", s->id);
    struct su_resp r;
    json_decref(su_call(base, "POST", path, body, 200, &r));
    if (r.len != s->last_len || memcmp(r.body, s->last, r.len) != 0)
        fail_msg("%s: the replay of step %ld differs from its reply:\n%s\n%s", what, s->acked,
                 r.body, s->last);
    su_resp_free(&r);
}

/* ---- A callback session ---- */

static const char *const problem_names[] = {"kfac adaptive", "hf"};

/* The MLP: 4 inputs, 3 tanh units, 2 outputs and a gain entry (24
 * parameters), batches of 8; its batches drawn from BATCH_SEED + step. */
static const size_t MLP_W[] = {4, 3, 2};
enum { MLP_EXAMPLES = 8, BATCH_SEED = 500 };
#define HF_PHASE 5.2 /* su_grad's phase for the HF session's gradients */

void cu_cb_new(struct cu_cb *c, enum cu_problem problem, const char *base)
{
    memset(c, 0, sizeof *c);
    c->problem = problem;
    if (problem == CU_KFAC_ADAPTIVE) {
        c->layout = tu_mlp_setup(&c->net, MLP_W, 2, 1, MLP_EXAMPLES, 31, BATCH_SEED);
        const tu_kv kv[] = {{"lambda_interval", 2}, {"gamma_interval", 3}, {"inv_interval", 2}};
        for (int k = 0; k < 2; k++) /* the session takes the default precision, fp32 */
            *(k ? &c->lock : &c->s.ref) =
                tu_kfac_opt(c->layout, kv, 3, "gamma_rule", "grid", "precision", "fp32", NULL);
    } else {
        c->layout = su_layout_new();
        tu_rng rng;
        tu_rng_seed(&rng, 77);
        c->G = tu_alloc(SU_D * SU_D);
        c->g = tu_alloc(SU_D);
        c->gsq = tu_alloc(SU_D);
        tu_rand_spd(&rng, SU_D, 0.5, c->G);
        const tu_kv kv[] = {{"cg_max", 6}};
        c->s.ref = tu_opt_with(CURV_OPT_HF, c->layout, kv, 1);
        c->lock = tu_opt_with(CURV_OPT_HF, c->layout, kv, 1);
    }
    c->ref_u = tu_alloc(curv_layout_dim(c->layout));
    c->tr = (struct su_trainer){.base = base, .layout = c->layout};
    su_trainer_create(&c->tr, problem == CU_HF ? "hf" : "kfac",
                      problem == CU_HF ? json_pack("{s:i}", "cg_max", 6)
                                       : json_pack("{s:i, s:i, s:i, s:s}", "lambda_interval", 2,
                                                   "gamma_interval", 3, "inv_interval", 2,
                                                   "gamma_rule", "grid"));
    memcpy(c->s.id, c->tr.id, sizeof c->s.id);
}

/* Forget the step in progress (the reference's is cancelled). */
static void drop_step(struct cu_cb *c)
{
    curv_opt_cancel(c->lock);
    c->ref_pending = c->ref_done = 0;
    free(c->body);
    c->body = NULL;
    free(c->answer);
    c->answer = NULL;
    su_callback_clear(&c->cb);
}

void cu_cb_free(struct cu_cb *c)
{
    drop_step(c);
    curv_opt_free(c->lock);
    curv_opt_free(c->s.ref);
    free(c->s.last);
    free(c->last_body);
    free(c->ref_u);
    free(c->G);
    free(c->g);
    free(c->gsq);
    if (c->problem == CU_KFAC_ADAPTIVE)
        tu_mlp_free(&c->net);
    curv_layout_free(c->layout);
}

static void answer_of(struct cu_cb *c, const curv_request *req, double *values)
{
    if (c->problem == CU_HF)
        tu_quad_answer(&c->q, req, values);
    else
        tu_mlp_answer(&c->net, req, values);
}

static void answer_fn(void *ctx, const curv_request *req, double *values)
{
    answer_of(ctx, req, values);
}

curv_step_input cu_cb_input(struct cu_cb *c, double phase)
{
    if (c->problem == CU_KFAC_ADAPTIVE)
        return tu_mlp_input(&c->net, 1);
    long t = c->s.acked + 1;
    su_grad(t, phase, c->g);
    for (size_t i = 0; i < SU_D; i++)
        c->gsq[i] = c->g[i] * c->g[i] + 0.05; /* a positive Fisher diagonal stand-in */
    c->q = (tu_quad){.d = SU_D, .G = c->G, .g = c->g, .h0 = 1 + 1.0 / (double)t};
    return (curv_step_input){.grad = c->g,
                             .len = SU_D,
                             .dtype = CURV_F64,
                             .loss = c->q.h0,
                             .has_loss = 1,
                             .grad_sq = c->gsq};
}

/* The input of step s.acked + 1 as this suite's trainer sends it. */
static curv_step_input input_of(struct cu_cb *c)
{
    return cu_cb_input(c, HF_PHASE);
}

/* The lock-step reference's outcome @st of a step or resume. */
static void ref_outcome(struct cu_cb *c, curv_status st, const curv_error *err)
{
    if (st != CURV_OK && st != CURV_NEED_INPUT)
        fail_msg("%s reference, step %ld: %s: %s", problem_names[c->problem], c->s.acked + 1,
                 curv_status_name(st), err->text);
    c->ref_pending = st == CURV_NEED_INPUT;
    c->ref_done = st == CURV_OK;
}

/* Step s.acked + 1: its input, its body, and the lock-step reference's
 * first request. Every step of these problems asks the
 * trainer something, so a step cut before it was applied is one the
 * reference can still cancel. */
static void begin(struct cu_cb *c)
{
    long t = c->s.acked + 1;
    curv_step_input in = input_of(c);
    json_t *layers = c->problem == CU_KFAC_ADAPTIVE ? su_mlp_layers(&c->net) : NULL;
    struct su_step st = {.t = t,
                         .grad = in.grad,
                         .params = in.params,
                         .grad_sq = in.grad_sq,
                         .loss = in.loss,
                         .layers = layers};
    struct su_body b;
    su_step_body(&c->tr, &st, &b);
    json_decref(layers);
    c->body = strndup((const char *)b.p, b.len);
    assert_non_null(c->body);
    su_body_free(&b);
    curv_error err;
    ref_outcome(c, curv_opt_step(c->lock, &in, c->ref_u, &c->ref_req, &err), &err);
    if (!c->ref_pending)
        fail_msg("%s, step %ld: the reference asked nothing", problem_names[c->problem], t);
}

/* The daemon's callback c->cb must be the reference's pending request. */
static void same_request(const struct cu_cb *c)
{
    const curv_request *got = &c->cb.req, *want = &c->ref_req;
    long t = c->s.acked + 1;
    if (!c->ref_pending)
        fail_msg("%s, step %ld: the daemon asks, the reference has its update",
                 problem_names[c->problem], t);
    if (got->kind != want->kind || got->n_vectors != want->n_vectors)
        fail_msg("%s, step %ld: the daemon asks kind %d x %zu, the reference kind %d x %zu",
                 problem_names[c->problem], t, (int)got->kind, got->n_vectors, (int)want->kind,
                 want->n_vectors);
    if (memcmp(got->vectors, want->vectors, got->n_vectors * got->dim * sizeof(double)) != 0)
        fail_msg("%s, step %ld: the vectors of callback %llu differ from the reference's",
                 problem_names[c->problem], t, (unsigned long long)got->seq);
}

/* Give the reference the answer @values to its pending request. */
static void ref_answer(struct cu_cb *c, const double *values)
{
    curv_response resp = {.seq = c->ref_req.seq, .n_values = c->ref_req.n_values, .values = values};
    curv_error err;
    ref_outcome(c, curv_opt_resume(c->lock, &resp, CURV_F64, c->ref_u, &c->ref_req, &err), &err);
}

/* The daemon's update @u of the step in progress must be c->ref_u, the
 * @who reference's, to the bit. */
static void same_bits(const struct cu_cb *c, const double *u, const char *who)
{
    for (size_t i = 0; i < curv_layout_dim(c->layout); i++)
        if (memcmp(&u[i], &c->ref_u[i], sizeof u[i]) != 0)
            fail_msg("%s, step %ld, element %zu: daemon %.17g, %s libcurv %.17g",
                     problem_names[c->problem], c->s.acked + 1, i, u[i], who, c->ref_u[i]);
}

/* The 200 @r ending the step in progress: the update of both references
 * to the bit (the uninterrupted one stepped now); the trainer moves on. */
static void finish(struct cu_cb *c, struct su_resp *r)
{
    long t = c->s.acked + 1;
    size_t dim = curv_layout_dim(c->layout), off = 0;
    if (!c->ref_done)
        fail_msg("%s, step %ld: the daemon completed it, the reference still asks",
                 problem_names[c->problem], t);
    json_t *j = su_json(r->body, r->len);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "step")), t);
    double *u = tu_alloc(dim);
    su_tensors_flat(c->layout, json_object_get(j, "update"), r, &off, u);
    json_decref(j);
    same_bits(c, u, "lock-step");
    /* The uninterrupted reference: the same update. */
    curv_step_input in = input_of(c);
    curv_error err;
    tu_assert_status(tu_drive(c->s.ref, &in, answer_fn, c, c->ref_u, NULL, &err), CURV_OK, &err);
    same_bits(c, u, "uninterrupted");
    if (c->problem == CU_KFAC_ADAPTIVE)
        tu_mlp_advance(&c->net, u, BATCH_SEED + (uint64_t)t);
    free(u);
    cu_sess_ack(&c->s, t, r);
    free(c->last_body);
    c->last_body = c->body;
    c->body = NULL;
    c->ref_done = 0;
    su_callback_clear(&c->cb);
}

/* The answer to c->cb as a JSON text (free() it). */
static char *answer_text(struct cu_cb *c, const double *values)
{
    struct su_body b;
    su_answer_body(&c->tr, &c->cb.req, values, &b);
    char *text = strndup((const char *)b.p, b.len);
    assert_non_null(text);
    su_body_free(&b);
    return text;
}

enum cu_outcome cu_cb_step(struct cu_cb *c, const char *base, int hold)
{
    assert_null(c->body); /* a step cut or held was recovered first */
    begin(c);
    long t = c->s.acked + 1;
    char url[512];
    snprintf(url, sizeof url, "%s/v1/sessions/%s/steps", base, c->s.id);
    struct su_resp r;
    const char *text = c->body;
    char *answer = NULL;
    for (int answered = 0;; answered++) {
        CURLcode rc = su_try_request("POST", url, text, &r);
        free(answer);
        answer = NULL;
        if (rc != CURLE_OK) {
            su_resp_free(&r);
            c->cut_answers += c->answer != NULL;
            return CU_CUT;
        }
        if (c->answer) { /* the daemon took it: so does the reference */
            ref_answer(c, c->answer);
            free(c->answer);
            c->answer = NULL;
            c->callbacks++;
        }
        if (r.status == 200)
            break;
        if (r.status != 202)
            fail_msg("%s, step %ld: status %ld: %s", problem_names[c->problem], t, r.status,
                     r.body);
        su_callback_clear(&c->cb);
        su_callback_parse(&c->tr, &r, t, &c->cb);
        su_resp_free(&r);
        same_request(c);
        if (answered == hold)
            return CU_HELD;
        c->answer = tu_alloc(c->cb.req.n_values);
        answer_of(c, &c->cb.req, c->answer);
        text = answer = answer_text(c, c->answer);
        snprintf(url, sizeof url, "%s%s", base, c->cb.url);
    }
    finish(c, &r);
    su_resp_free(&r);
    return CU_DONE;
}

int cu_cb_recover(struct cu_cb *c, const char *base, long step)
{
    const char *what = problem_names[c->problem];
    if (c->cb.url[0]) { /* the exchange was forgotten with the daemon */
        double *v = c->answer ? c->answer : tu_alloc(c->cb.req.n_values);
        if (!c->answer)
            answer_of(c, &c->cb.req, v);
        char *text = answer_text(c, v);
        json_t *p = su_call(base, "POST", c->cb.url, text, 409, NULL);
        assert_string_equal(json_string_value(json_object_get(p, "reason")), "NO_CALLBACK_PENDING");
        json_decref(p);
        free(text);
        if (v != c->answer)
            free(v);
    }
    if (step == c->s.acked + 1) { /* applied, never acknowledged: it is now */
        if (!c->body)
            fail_msg("%s: at step %ld, with no step in flight", what, step);
        if (c->ref_pending && !c->answer)
            fail_msg("%s: step %ld applied without the answer to callback %llu", what, step,
                     (unsigned long long)c->cb.req.seq);
        if (c->ref_pending)
            ref_answer(c, c->answer);
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s/steps", c->s.id);
        struct su_resp r;
        json_decref(su_call(base, "POST", path, c->body, 200, &r));
        finish(c, &r);
        su_resp_free(&r);
        free(c->answer);
        c->answer = NULL;
        return 1;
    }
    if (c->s.acked > 0)
        cu_expect_replay(base, &c->s, c->last_body, what);
    drop_step(c); /* posted again from its beginning by the next cu_cb_step */
    return 0;
}
