/* SPDX-License-Identifier: MIT */
/*
 * Concurrency against an in-process daemon: racing posts of one session's
 * next step (exactly one applies), many sessions stepped from many
 * threads, eviction under --max-sessions with reloads from the store, and
 * the memory budget at creation. Leases of 30 ms (docs/CLUSTER.md): the
 * sweeper renews and gives them up all along, beside the requests that
 * take the sessions and the evictions that give theirs up (the daemon is
 * alone, so it takes each back at once). Every update is compared bit for bit with
 * the same optimizer run in-process by libcurv. Worker threads never call
 * cmocka: they record what they saw and the main thread checks it.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curv.h"
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = SU_D }; /* srvutil's layout: fc, 2 x (4 + bias) = 10; gain, 1 */

struct fx {
    struct curvd_server srv;
    int running;
    char dir[64], db[128], base[64];
    curv_layout *layout;
};

static void start(struct fx *f, size_t max_sessions, size_t mem_budget, unsigned threads)
{
    memset(&f->srv, 0, sizeof f->srv);
    f->srv.cfg.db_path = f->db;
    f->srv.cfg.max_sessions = max_sessions;
    f->srv.cfg.mem_budget = mem_budget;
    f->srv.cfg.threads = threads;
    f->srv.cfg.lease_ttl_ms = 30;
    su_daemon_start(&f->srv, f->base, sizeof f->base);
    f->running = 1;
}

static void stop(struct fx *f)
{
    if (f->running)
        su_daemon_stop(&f->srv);
    f->running = 0;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "conc", f->db, sizeof f->db);
    f->layout = su_layout_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    stop(f);
    curv_layout_free(f->layout);
    int rc = su_rmtree(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* ---- Sessions, gradients, updates (worker threads use su_try_request) ---- */

/* POST /v1/sessions for @kind, which must answer @want; the reply, and
 * the id on 201. */
static json_t *create(struct fx *f, curv_opt_kind kind, long want, char id[33])
{
    return su_create(f->base, curv_opt_kind_name(kind), NULL, want, id, NULL);
}

static void grad_at(int s, int t, int variant, double *g)
{
    su_grad(t, 0.71 * s + 2.9 * variant, g);
}

static char *step_body(int t, const double *g)
{
    return su_step_text(t, g, 1);
}

/* The exported state must equal the reference's saved state. */
static void expect_state(struct fx *f, const char *id, const curv_opt *ref)
{
    size_t got, len;
    unsigned char *blob = su_export_state(f->base, id, &got, NULL);
    unsigned char *snap = tu_snapshot(ref, &len);
    assert_int_equal(got, len);
    assert_memory_equal(blob, snap, len);
    curv_free(snap);
    free(blob);
}

/* The value of the metric line starting with @series. */
static double metric(struct fx *f, const char *series)
{
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", f->base);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    size_t n = strlen(series);
    for (const char *p = r.body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            double v = strtod(p + n + 1, NULL);
            su_resp_free(&r);
            return v;
        }
    fail_msg("no %s in /metrics:\n%s", series, r.body);
    return 0;
}

static double steps_total(struct fx *f, curv_opt_kind kind)
{
    char series[96];
    snprintf(series, sizeof series, "curvd_steps_total{optimizer=\"%s\"}",
             curv_opt_kind_name(kind));
    return metric(f, series);
}

/* ---- (a) Two clients post the same next step at once ---- */

struct racer {
    const char *url;
    pthread_barrier_t *go, *done;
    int rounds, index;
    char *body; /* set by the main thread before each round */
    struct su_resp r;
    int failed;
};

static void *racer_main(void *arg)
{
    struct racer *x = arg;
    for (int round = 0; round < x->rounds; round++) {
        pthread_barrier_wait(x->go);
        if (x->index == round % 2) { /* stagger: sometimes after, sometimes during */
            struct timespec ts = {0, (long)(round / 2 % 4) * 150000L};
            nanosleep(&ts, NULL);
        }
        x->failed |= su_try_request("POST", x->url, x->body, &x->r) != CURLE_OK;
        pthread_barrier_wait(x->done);
    }
    return NULL;
}

/* Loads another session over and over (a callback post takes it from the
 * registry and answers 409), so that with one session in memory the raced
 * one is evicted and reloaded all the time. */
struct noise {
    const char *url;
    atomic_int stop;
    long posts, bad;
};

static void *noise_main(void *arg)
{
    struct noise *n = arg;
    while (!atomic_load(&n->stop)) {
        struct su_resp r;
        CURLcode rc = su_try_request("POST", n->url, "{\"values\":{}}", &r);
        n->bad += rc != CURLE_OK || (r.status != 409 && r.status != 200);
        n->posts++;
        su_resp_free(&r);
        if (rc != CURLE_OK)
            break; /* the daemon is gone: a check failed */
    }
    return NULL;
}

struct race_ctx {
    char url[256], nurl[256];
    pthread_barrier_t go, done;
    struct racer x[2];
    struct noise nz;
    pthread_t th[3];
};

/* Two racers post the same next step of one session, each with its own
 * gradient, @rounds times; with @evicting one session fits in memory and
 * another one is loaded all the while. */
static void race(struct fx *f, int rounds, int evicting)
{
    start(f, evicting ? 1 : 100, (size_t)1 << 30, 4);
    /* What the threads share lives on the heap and is leaked when a check
     * fails: the racers then wait on its barrier until the process ends. */
    struct race_ctx *c = calloc(1, sizeof *c);
    assert_non_null(c);
    char id[33], other[33], *url = c->url, *nurl = c->nurl;
    struct racer *x = c->x;
    struct noise *nz = &c->nz;
    pthread_t *th = c->th;
    json_decref(create(f, CURV_OPT_MBAG, 201, id));
    json_decref(create(f, CURV_OPT_SGD, 201, other));
    snprintf(url, sizeof c->url, "%s/v1/sessions/%s/steps", f->base, id);
    snprintf(nurl, sizeof c->nurl, "%s/v1/sessions/%s/steps/1/callbacks/c", f->base, other);
    curv_opt *ref = tu_new_opt(CURV_OPT_MBAG, f->layout, NULL);
    pthread_barrier_t *go = &c->go, *done = &c->done;
    pthread_barrier_init(go, NULL, 3);
    pthread_barrier_init(done, NULL, 3);
    for (int k = 0; k < 2; k++) {
        x[k] = (struct racer){.url = url, .go = go, .done = done, .rounds = rounds, .index = k};
        assert_int_equal(pthread_create(&th[k], NULL, racer_main, &x[k]), 0);
    }
    nz->url = nurl;
    atomic_init(&nz->stop, 0);
    if (evicting)
        assert_int_equal(pthread_create(&th[2], NULL, noise_main, nz), 0);
    int busy = 0, mismatches = 0, stale = 0, wins[2] = {0, 0};
    for (int t = 1; t <= rounds; t++) {
        double g[2][D];
        for (int k = 0; k < 2; k++) { /* each racer its own gradient */
            grad_at(0, t, k, g[k]);
            x[k].body = step_body(t, g[k]);
        }
        pthread_barrier_wait(go);
        pthread_barrier_wait(done);
        int ok[2];
        for (int k = 0; k < 2; k++) {
            if (x[k].failed)
                fail_msg("round %d: racer %d's request failed", t, k);
            ok[k] = x[k].r.status == 200;
            if (ok[k])
                continue;
            json_t *p = json_loads(x[k].r.body, 0, NULL);
            const char *reason = json_string_value(json_object_get(p, "reason"));
            /* A racer that loaded the session before the other committed
             * may step a stale copy: the store refuses its commit (409). */
            int is_busy = reason && strcmp(reason, "SESSION_BUSY") == 0;
            const char *detail = json_string_value(json_object_get(p, "detail"));
            int is_stale = evicting && reason && strcmp(reason, "STEP_OUT_OF_ORDER") == 0 &&
                           detail && strstr(detail, "advanced elsewhere");
            /* The later one, with its own gradient, is not the request that
             * completed the step: refused, never given the other's reply. */
            int is_mismatch =
                x[k].r.status == 422 && reason && strcmp(reason, "STEP_MISMATCH") == 0;
            if (!is_mismatch && (x[k].r.status != 409 || !(is_busy || is_stale)))
                fail_msg("round %d: racer %d got %ld: %s", t, k, x[k].r.status, x[k].r.body);
            json_decref(p);
            busy += is_busy;
            stale += is_stale;
            mismatches += is_mismatch;
        }
        assert_true(ok[0] || ok[1]); /* one of them holds the session */
        if (ok[0] && ok[1])          /* two gradients, one step: one is applied */
            fail_msg("round %d: both racers got 200", t);
        double u[D], u0[D], u1[D];
        assert_int_equal(su_update_of(x[ok[0] ? 0 : 1].r.body, t, u), 0);
        /* Exactly one of the two gradients was applied, once: find which. */
        size_t len;
        unsigned char *snap = tu_snapshot(ref, &len);
        curv_opt *alt = NULL;
        assert_int_equal(curv_opt_load(snap, len, &alt, NULL), CURV_OK);
        curv_free(snap);
        tu_step_ok(ref, g[0], NULL, u0);
        tu_step_ok(alt, g[1], NULL, u1);
        int is0 = memcmp(u, u0, sizeof u) == 0, is1 = memcmp(u, u1, sizeof u) == 0;
        if (is0 == is1)
            fail_msg("round %d: the update matches %s racer's gradient", t,
                     is0 ? "both" : "neither");
        if (is1) {
            curv_opt *tmp = ref;
            ref = alt;
            alt = tmp;
        }
        curv_opt_free(alt);
        wins[is1]++;
        assert_int_equal(su_session_step(f->base, id), t);
        for (int k = 0; k < 2; k++) {
            su_resp_free(&x[k].r);
            free(x[k].body);
        }
    }
    atomic_store(&nz->stop, 1);
    for (int k = 0; k < 2 + evicting; k++)
        pthread_join(th[k], NULL);
    pthread_barrier_destroy(go);
    pthread_barrier_destroy(done);
    assert_int_equal(nz->bad, 0);
    assert_true(steps_total(f, CURV_OPT_MBAG) == rounds); /* one application per round */
    expect_state(f, id, ref);
    if (evicting)
        assert_true(metric(f, "curvd_sessions{where=\"memory\"}") <= 1);
    printf("race%s: %d rounds: %d SESSION_BUSY, %d STEP_MISMATCH, %d stale 409s; won by racer 0 / "
           "1: %d / %d; %ld loads of another session\n",
           evicting ? " (evicting)" : "", rounds, busy, mismatches, stale, wins[0], wins[1],
           nz->posts);
    free(c);
    curv_opt_free(ref);
}

static void test_same_step_race(void **state)
{
    race(*state, 120, 0);
}

static void test_same_step_race_evicting(void **state)
{
    race(*state, 120, 1);
}

/* ---- (b, c) Sessions stepped from several threads ---- */

enum { MAX_SESS = 16, MAX_STEPS = 40 };

struct sess {
    char id[33];
    int index;     /* picks its gradients */
    curv_opt *ref; /* the same optimizer in-process */
    curv_opt_kind kind;
    double upd[MAX_STEPS + 1][D]; /* the daemon's update of each step */
};

struct worker {
    const char *base;
    struct sess *sess[4];
    int nsess, from, to; /* steps from..to of each of its sessions, interleaved */
    char error[512];     /* the first thing that went wrong */
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int t = w->from; t <= w->to && !w->error[0]; t++)
        for (int k = 0; k < w->nsess && !w->error[0]; k++) {
            struct sess *s = w->sess[k];
            char url[256];
            snprintf(url, sizeof url, "%s/v1/sessions/%s/steps", w->base, s->id);
            double g[D];
            grad_at(s->index, t, 0, g);
            char *body = step_body(t, g);
            struct su_resp r;
            if (su_try_request("POST", url, body, &r) != CURLE_OK || r.status != 200)
                snprintf(w->error, sizeof w->error, "session %s step %d: %ld %s", s->id, t,
                         r.status, r.body ? r.body : "");
            else if (su_update_of(r.body, t, s->upd[t]) != 0)
                snprintf(w->error, sizeof w->error, "session %s step %d: bad reply %s", s->id, t,
                         r.body);
            su_resp_free(&r);
            free(body);
        }
    return NULL;
}

/* Step @x's reference with the gradient of step @t: the daemon's update
 * must be the same, bit for bit. */
static void check_step(struct sess *x, int t)
{
    double g[D];
    char what[96];
    grad_at(x->index, t, 0, g);
    snprintf(what, sizeof what, "session %d (%s), step %d", x->index, curv_opt_kind_name(x->kind),
             t);
    su_check_update(x->ref, g, x->upd[t], what);
}

/* Run @nw workers, worker i owning sessions i, i + nw, ...; then check
 * every update of steps from..to against the references. */
static void run_workers(struct fx *f, struct sess *s, int ns, int nw, int from, int to)
{
    struct worker w[8];
    pthread_t th[8];
    assert_true(nw <= 8 && (ns + nw - 1) / nw <= 4);
    for (int i = 0; i < nw; i++) {
        w[i] = (struct worker){.base = f->base, .from = from, .to = to};
        for (int k = i; k < ns; k += nw)
            w[i].sess[w[i].nsess++] = &s[k];
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < nw; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < nw; i++)
        if (w[i].error[0])
            fail_msg("worker %d: %s", i, w[i].error);
    for (int i = 0; i < nw; i++)
        for (int t = from; t <= to; t++)
            for (int k = 0; k < w[i].nsess; k++)
                check_step(w[i].sess[k], t);
}

/* Kinds that step on gradients alone, round robin (K-FAC and HF exchange
 * callbacks: test_callbacks.c). */
static curv_opt_kind plain_kind(int i)
{
    int kinds[CURV_OPT_KIND_COUNT], n = 0;
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++)
        if (tu_plain_kind(k))
            kinds[n++] = k;
    return (curv_opt_kind)kinds[i % n];
}

static void make_sessions(struct fx *f, struct sess *s, int n)
{
    for (int i = 0; i < n; i++) {
        s[i].index = i + 1;
        s[i].kind = plain_kind(i);
        json_decref(create(f, s[i].kind, 201, s[i].id));
        s[i].ref = tu_new_opt(s[i].kind, f->layout, NULL);
    }
}

static void test_many_sessions(void **state)
{
    struct fx *f = *state;
    enum { NS = 16, NW = 8, STEPS = 25 }; /* 8 threads x 50 steps over 16 sessions */
    start(f, 100, (size_t)1 << 30, 8);
    struct sess *s = calloc(NS, sizeof *s);
    make_sessions(f, s, NS);
    run_workers(f, s, NS, NW, 1, STEPS);
    double per_kind[CURV_OPT_KIND_COUNT] = {0};
    for (int i = 0; i < NS; i++) {
        assert_int_equal(su_session_step(f->base, s[i].id), STEPS);
        expect_state(f, s[i].id, s[i].ref);
        per_kind[s[i].kind] += STEPS;
        curv_opt_free(s[i].ref);
    }
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++)
        assert_true(steps_total(f, (curv_opt_kind)k) == per_kind[k]);
    free(s);
}

/* With room for two sessions in memory, six stepped round-robin (then
 * from three threads) reload from the store and lose nothing. */
static void test_eviction(void **state)
{
    struct fx *f = *state;
    enum { NS = 6, ROUNDS = 8, MORE = 20 };
    start(f, 2, (size_t)1 << 30, 4);
    struct sess *s = calloc(NS, sizeof *s);
    make_sessions(f, s, NS);
    assert_true(metric(f, "curvd_sessions{where=\"memory\"}") <= 2);
    for (int t = 1; t <= ROUNDS; t++) {
        for (int i = 0; i < NS; i++) {
            struct worker w = {.base = f->base, .sess = {&s[i]}, .nsess = 1, .from = t, .to = t};
            worker_main(&w);
            if (w.error[0])
                fail_msg("%s", w.error);
            check_step(&s[i], t);
        }
        assert_true(metric(f, "curvd_sessions{where=\"memory\"}") <= 2);
        assert_true(metric(f, "curvd_sessions{where=\"disk\"}") == NS);
    }
    run_workers(f, s, NS, 3, ROUNDS + 1, MORE); /* loads race evictions */
    assert_true(metric(f, "curvd_sessions{where=\"memory\"}") <= 2);
    for (int i = 0; i < NS; i++) {
        assert_int_equal(su_session_step(f->base, s[i].id), MORE);
        expect_state(f, s[i].id, s[i].ref);
        curv_opt_free(s[i].ref);
    }
    free(s);
}

/* ---- (d) The memory budget at creation ---- */

/* A budget one byte short of a session's state (curv_opt_state_bytes, what
 * the optimizer holds in memory, more than its blob): create is refused
 * before anything is allocated, import after the blob (which fits) is
 * read and sized exactly; under the blob's size, import is refused before
 * loading. Nothing is kept. At the state's size both go through. */
static void test_state_too_large(void **state)
{
    struct fx *f = *state;
    curv_opt *o = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    size_t len, bytes;
    unsigned char *blob = tu_snapshot(o, &len);
    curv_opt_free(o);
    curv_error cerr;
    tu_assert_status(curv_opt_state_bytes(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL, &bytes, &cerr),
                     CURV_OK, &cerr);
    assert_true(len < bytes); /* so that import's exact check is the one that refuses */
    start(f, 100, bytes - 1, 2);
    char id[33], url[128];
    json_t *p = create(f, CURV_OPT_ADAGRAD_DIAG, 422, id);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "STATE_TOO_LARGE");
    json_decref(p);
    snprintf(url, sizeof url, "%s/v1/sessions:import", f->base);
    struct su_resp r;
    su_request("POST", url, blob, len, "application/octet-stream", 0, &r);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "STATE_TOO_LARGE"));
    assert_non_null(strstr(r.body, "adagrad_diag optimizer")); /* sized after loading */
    su_resp_free(&r);
    assert_true(metric(f, "curvd_sessions{where=\"disk\"}") == 0); /* nothing kept */
    stop(f);
    start(f, 100, len - 1, 2); /* the blob alone is over: refused before loading */
    snprintf(url, sizeof url, "%s/v1/sessions:import", f->base);
    su_request("POST", url, blob, len, "application/octet-stream", 0, &r);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "the state blob takes"));
    su_resp_free(&r);
    assert_true(metric(f, "curvd_sessions{where=\"disk\"}") == 0);
    stop(f);
    start(f, 100, bytes, 2); /* exactly one state's worth fits */
    json_decref(create(f, CURV_OPT_ADAGRAD_DIAG, 201, id));
    snprintf(url, sizeof url, "%s/v1/sessions:import", f->base); /* a new port */
    su_request("POST", url, blob, len, "application/octet-stream", 0, &r);
    assert_int_equal(r.status, 201);
    su_resp_free(&r);
    curv_free(blob);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_ALL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_same_step_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_step_race_evicting, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_sessions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_eviction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_too_large, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
