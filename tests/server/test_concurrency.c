/* SPDX-License-Identifier: MIT */
/*
 * Concurrency against an in-process daemon: racing posts of one session's
 * next step (exactly one applies), many sessions stepped from many
 * threads, eviction under --max-sessions with reloads from the store, and
 * the memory budget at creation. Every update is compared bit for bit with
 * the same optimizer run in-process by libcurv. Worker threads never call
 * cmocka: they record what they saw and the main thread checks it.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "curv.h"
#include "daemon.h"
#include "http.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = 11 }; /* fc: 2 x (4 + bias) = 10, gain: 1 */

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
    char err[256];
    if (curvd_daemon_open(&f->srv, err, sizeof err) != 0)
        fail_msg("daemon_open: %s", err);
    su_start(&f->srv, f->base, sizeof f->base);
    f->running = 1;
}

static void stop(struct fx *f)
{
    if (f->running) {
        su_stop(&f->srv);
        curvd_daemon_close(&f->srv);
    }
    f->running = 0;
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/curvd-conc-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->db, sizeof f->db, "%s/curvd.db", f->dir);
    f->layout = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(f->layout, "fc", 2, 4, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(f->layout, "gain", 1, NULL), CURV_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    stop(f);
    curv_layout_free(f->layout);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
    int rc = system(cmd);
    free(f);
    return rc == 0 ? 0 : -1;
}

/* ---- A client safe to use from any thread (no cmocka inside) ---- */

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

/* 0, or -1 when the transfer failed (r->status is then 0). */
static int post(const char *url, const char *body, struct resp *r)
{
    memset(r, 0, sizeof *r);
    CURL *c = curl_easy_init();
    if (!c)
        return -1;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (!r->body)
        r->body = calloc(1, 1);
    return rc == CURLE_OK && r->body ? 0 : -1;
}

/* ---- Sessions, gradients, updates ---- */

static const char *LAYOUT = "[{\"name\":\"fc\",\"kind\":\"dense\",\"shape\":[2,4],\"bias\":true},"
                            "{\"name\":\"gain\",\"kind\":\"vector\",\"shape\":[1]}]";

/* POST /v1/sessions for @kind; the status, and the id on 201. */
static long create(struct fx *f, curv_opt_kind kind, char id[33], char *reason, size_t cap)
{
    char url[128], body[512];
    snprintf(url, sizeof url, "%s/v1/sessions", f->base);
    snprintf(body, sizeof body, "{\"optimizer\":\"%s\",\"layout\":%s}", curv_opt_kind_name(kind),
             LAYOUT);
    struct su_resp r;
    su_request("POST", url, body, strlen(body), NULL, 0, &r);
    json_t *j = json_loads(r.body, 0, NULL);
    if (r.status == 201)
        snprintf(id, 33, "%s", json_string_value(json_object_get(j, "id")));
    if (reason)
        snprintf(reason, cap, "%s", json_string_value(json_object_get(j, "reason")));
    json_decref(j);
    long st = r.status;
    su_resp_free(&r);
    return st;
}

static void grad_at(int s, int t, int variant, double *g)
{
    for (int i = 0; i < D; i++)
        g[i] = sin(0.37 * (t * D + i) + 0.71 * s + 2.9 * variant) * (1 + i % 3);
}

static char *step_body(int t, const double *g)
{
    char *p = malloc(2048);
    int n = snprintf(p, 2048,
                     "{\"step\":%d,\"gradients\":[{\"name\":\"gain\",\"shape\":[1],\"datatype\":"
                     "\"FP64\",\"data\":[%.17g]},{\"name\":\"fc\",\"shape\":[2,5],\"datatype\":"
                     "\"FP64\",\"data\":[",
                     t, g[10]);
    for (int i = 0; i < 10; i++)
        n += snprintf(p + n, 2048 - (size_t)n, "%s%.17g", i ? "," : "", g[i]);
    snprintf(p + n, 2048 - (size_t)n, "]}]}");
    return p;
}

/* The update of a 200 step reply in layout order; 0, or -1 if malformed. */
static int parse_update(const char *body, int t, double *u)
{
    json_t *j = json_loads(body, 0, NULL), *tn;
    int got = 0, ok = json_integer_value(json_object_get(j, "step")) == t;
    size_t k;
    json_array_foreach(json_object_get(j, "update"), k, tn)
    {
        const char *name = json_string_value(json_object_get(tn, "name"));
        json_t *data = json_object_get(tn, "data");
        size_t off = name && strcmp(name, "gain") == 0 ? 10 : 0, n = off ? 1 : 10;
        ok = ok && json_array_size(data) == n;
        for (size_t i = 0; ok && i < n; i++)
            u[off + i] = json_number_value(json_array_get(data, i));
        got += (int)n;
    }
    json_decref(j);
    return ok && got == D ? 0 : -1;
}

static long session_step(struct fx *f, const char *id)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions/%s", f->base, id);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    if (r.status != 200)
        fail_msg("GET %s: %ld: %s", url, r.status, r.body);
    json_t *j = json_loads(r.body, 0, NULL);
    long step = (long)json_integer_value(json_object_get(j, "step"));
    json_decref(j);
    su_resp_free(&r);
    return step;
}

/* The exported state must equal the reference's saved state. */
static void expect_state(struct fx *f, const char *id, const curv_opt *ref)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions/%s/state", f->base, id);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    size_t len;
    unsigned char *snap = tu_snapshot(ref, &len);
    assert_int_equal(r.len, len);
    assert_memory_equal(r.body, snap, len);
    curv_free(snap);
    su_resp_free(&r);
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
    struct resp r;
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
        x->failed |= post(x->url, x->body, &x->r) != 0;
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
        struct resp r;
        int rc = post(n->url, "{\"values\":{}}", &r);
        n->bad += rc != 0 || (r.status != 409 && r.status != 200);
        n->posts++;
        free(r.body);
        if (rc != 0)
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
    assert_int_equal(create(f, CURV_OPT_MBAG, id, NULL, 0), 201);
    assert_int_equal(create(f, CURV_OPT_SGD, other, NULL, 0), 201);
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
    int busy = 0, replays = 0, stale = 0, wins[2] = {0, 0};
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
            if (x[k].r.status != 409 || !(is_busy || is_stale))
                fail_msg("round %d: racer %d got %ld: %s", t, k, x[k].r.status, x[k].r.body);
            json_decref(p);
            busy += is_busy;
            stale += is_stale;
        }
        assert_true(ok[0] || ok[1]); /* one of them holds the session */
        if (ok[0] && ok[1]) {        /* the later one is the replay, byte for byte */
            assert_int_equal(x[0].r.len, x[1].r.len);
            assert_memory_equal(x[0].r.body, x[1].r.body, x[0].r.len);
            replays++;
        }
        double u[D], u0[D], u1[D];
        assert_int_equal(parse_update(x[ok[0] ? 0 : 1].r.body, t, u), 0);
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
        assert_int_equal(session_step(f, id), t);
        for (int k = 0; k < 2; k++) {
            free(x[k].r.body);
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
    printf("race%s: %d rounds: %d SESSION_BUSY, %d replays, %d stale 409s; won by racer 0 / 1: "
           "%d / %d; %ld loads of another session\n",
           evicting ? " (evicting)" : "", rounds, busy, replays, stale, wins[0], wins[1],
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
            struct resp r;
            if (post(url, body, &r) != 0 || r.status != 200)
                snprintf(w->error, sizeof w->error, "session %s step %d: %ld %s", s->id, t,
                         r.status, r.body ? r.body : "");
            else if (parse_update(r.body, t, s->upd[t]) != 0)
                snprintf(w->error, sizeof w->error, "session %s step %d: bad reply %s", s->id, t,
                         r.body);
            free(r.body);
            free(body);
        }
    return NULL;
}

/* Step @x's reference with the gradient of step @t: the daemon's update
 * must be the same, bit for bit. */
static void check_step(struct sess *x, int t)
{
    double g[D], want[D];
    grad_at(x->index, t, 0, g);
    tu_step_ok(x->ref, g, NULL, want);
    for (int i = 0; i < D; i++)
        if (memcmp(&x->upd[t][i], &want[i], sizeof want[i]) != 0)
            fail_msg("session %d (%s), step %d, element %d: daemon %.17g, libcurv %.17g", x->index,
                     curv_opt_kind_name(x->kind), t, i, x->upd[t][i], want[i]);
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

static void make_sessions(struct fx *f, struct sess *s, int n)
{
    for (int i = 0; i < n; i++) {
        s[i].index = i + 1;
        s[i].kind = (curv_opt_kind)(i % CURV_OPT_KIND_COUNT);
        assert_int_equal(create(f, s[i].kind, s[i].id, NULL, 0), 201);
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
        assert_int_equal(session_step(f, s[i].id), STEPS);
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
        assert_int_equal(session_step(f, s[i].id), MORE);
        expect_state(f, s[i].id, s[i].ref);
        curv_opt_free(s[i].ref);
    }
    free(s);
}

/* ---- (d) The memory budget at creation ---- */

static void test_state_too_large(void **state)
{
    struct fx *f = *state;
    curv_opt *o = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len); /* one session's state, sized by libcurv */
    curv_opt_free(o);
    start(f, 100, len - 1, 2);
    char id[33], reason[64];
    assert_int_equal(create(f, CURV_OPT_ADAGRAD_DIAG, id, reason, sizeof reason), 422);
    assert_string_equal(reason, "STATE_TOO_LARGE");
    char url[128];
    snprintf(url, sizeof url, "%s/v1/sessions:import", f->base);
    struct su_resp r;
    su_request("POST", url, blob, len, "application/octet-stream", 0, &r);
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "STATE_TOO_LARGE"));
    su_resp_free(&r);
    assert_true(metric(f, "curvd_sessions{where=\"disk\"}") == 0); /* nothing kept */
    stop(f);
    start(f, 100, len, 2); /* exactly one state's worth fits */
    assert_int_equal(create(f, CURV_OPT_ADAGRAD_DIAG, id, NULL, 0), 201);
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
