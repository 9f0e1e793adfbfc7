/* SPDX-License-Identifier: MIT */
/*
 * K-FAC steps on the daemon's workers lent as an executor
 * (server/http/pool.h): a four-layer MLP's updates through a daemon with
 * several workers equal bit for bit those of the serial library (adaptive
 * mode, with its callbacks); daemons with two and three workers answer
 * every step byte for byte as one with a single worker does (binary FP32);
 * four sessions stepped at once from four client threads on two workers
 * each get the serial library's updates. The pool's counters (also in
 * /metrics) show that the steps did publish batches. Client threads never call cmocka. `make tsan`
 * runs this suite under ThreadSanitizer.
 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curv.h"
#include "http/http.h"
#include "http/pool.h"
#include "session/registry.h"
#include "srvutil.h"
#include "testutil.h"

struct dfx {
    struct curvd_server srv;
    char dir[64], db[128], base[64];
};

/* A daemon with @workers heavy-request workers on a fresh database. */
static void dstart(struct dfx *f, unsigned workers, const char *tag)
{
    memset(f, 0, sizeof *f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, tag, f->db, sizeof f->db);
    f->srv.cfg.db_path = f->db;
    f->srv.cfg.max_sessions = 100;
    f->srv.cfg.mem_budget = (size_t)1 << 30;
    f->srv.cfg.workers = workers;
    su_daemon_start(&f->srv, f->base, sizeof f->base);
}

static void dstop(struct dfx *f)
{
    su_daemon_stop(&f->srv);
    assert_int_equal(su_rmtree(f->dir), 0);
}

static struct curvd_pool_stats pool_stats(const struct dfx *f)
{
    struct curvd_pool_stats st = {0};
    struct curvd_pool *p = curvd_http_pool(&f->srv);
    assert_non_null(p);
    curvd_pool_stats(p, &st);
    return st;
}

/* The value of the sample @name in the daemon's /metrics (-1: absent). */
static long long metric(const char *base, const char *name)
{
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", base);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    long long v = -1;
    size_t n = strlen(name);
    for (const char *line = r.body; line && *line; line = strchr(line, '\n'), line += !!line)
        if (strncmp(line, name, n) == 0 && line[n] == ' ')
            v = strtoll(line + n + 1, NULL, 10);
    su_resp_free(&r);
    return v;
}

/* Four dense layers and a gain block: five blocks, so five tasks a batch. */
static const size_t W[] = {16, 14, 12, 10, 6};

static curv_layout *mlp_new(tu_mlp *net, uint64_t seed)
{
    tu_mlp_new(net, W, 4, 1, 16, seed);
    tu_mlp_batch(net, seed + 100);
    return tu_mlp_layout(net);
}

static void mlp_answer(void *ctx, const curv_request *req, double *values)
{
    tu_mlp_answer(ctx, req, values);
}

/* The serial library's step on the current batch (callbacks answered). */
static void ref_step(curv_opt *ref, tu_mlp *net, double *want)
{
    curv_step_input in = tu_mlp_input(net, 1);
    curv_error err;
    size_t n;
    tu_assert_status(tu_drive(ref, &in, mlp_answer, net, want, &n, &err), CURV_OK, &err);
}

static void same_bits(const double *u, const double *want, size_t n, const char *what, long t)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&u[i], &want[i], sizeof u[i]) != 0)
            fail_msg("%s, step %ld, element %zu: daemon %.17g, libcurv %.17g", what, t, i, u[i],
                     want[i]);
}

/* Step @t of session @tr (callbacks answered) and of the serial @ref on
 * the current batch: the same bits; then the next batch (@seed + @t). */
static void step_both(struct su_trainer *tr, curv_opt *ref, tu_mlp *net, long t, const char *what,
                      uint64_t seed, double *u, double *want)
{
    json_t *layers = su_mlp_layers(net);
    struct su_step s = {
        .t = t, .grad = net->g, .params = net->theta, .loss = net->loss, .layers = layers};
    su_trainer_step(tr, &s, mlp_answer, net, u);
    json_decref(layers);
    ref_step(ref, net, want);
    same_bits(u, want, net->dim, what, t);
    tu_mlp_advance(net, u, seed + (uint64_t)t);
}

/* A daemon of @workers, a K-FAC session of @config on the MLP (seed
 * @seed) and the serial library's optimizer @ref beside it. */
struct pair {
    struct dfx f;
    tu_mlp net;
    curv_layout *l;
    struct su_trainer tr;
    curv_opt *ref;
    double *u, *want;
};

static void pair_open(struct pair *p, unsigned workers, const char *tag, uint64_t seed,
                      json_t *config, curv_opt *(*make_ref)(const curv_layout *, const void *),
                      const void *ref_arg)
{
    dstart(&p->f, workers, tag);
    p->l = mlp_new(&p->net, seed);
    p->tr = (struct su_trainer){.base = p->f.base, .layout = p->l};
    su_trainer_create(&p->tr, "kfac", config);
    p->ref = make_ref(p->l, ref_arg);
    p->u = tu_alloc(p->net.dim);
    p->want = tu_alloc(p->net.dim);
}

static void pair_close(struct pair *p)
{
    free(p->u);
    free(p->want);
    curv_opt_free(p->ref);
    curv_layout_free(p->l);
    tu_mlp_free(&p->net);
    dstop(&p->f);
}

static curv_opt *simple_ref(const curv_layout *l)
{
    const tu_kv kv[] = {{"lr", 0.1}};
    curv_config *c = tu_config(kv, 1);
    tu_config_set(c, "mode", 0, "simple");
    curv_opt *ref = tu_new_opt(CURV_OPT_KFAC, l, c);
    curv_config_free(c);
    return ref;
}

static json_t *simple_config(void)
{
    return json_pack("{s:s, s:f}", "mode", "simple", "lr", 0.1);
}

/* ---- Tests ---- */

static curv_opt *adaptive_ref(const curv_layout *l, const void *unused)
{
    (void)unused;
    const tu_kv kv[] = {{"lambda_interval", 2}, {"gamma_interval", 3}, {"inv_interval", 2}};
    /* The session takes the default precision, fp32. */
    return tu_kfac_opt(l, kv, 3, "gamma_rule", "grid", "precision", "fp32", NULL);
}

/* Adaptive K-FAC (its quadratic-form and loss callbacks) on three
 * workers: every update that of the serial library, to the bit. */
static void test_adaptive_matches_serial(void **state)
{
    (void)state;
    struct pair p;
    pair_open(&p, 3, "par-adaptive", 11,
              json_pack("{s:i, s:i, s:i, s:s}", "lambda_interval", 2, "gamma_interval", 3,
                        "inv_interval", 2, "gamma_rule", "grid"),
              adaptive_ref, NULL);
    double first = p.net.loss;
    for (long t = 1; t <= 6; t++)
        step_both(&p.tr, p.ref, &p.net, t, "kfac adaptive", 200, p.u, p.want);
    assert_true(p.net.loss < first);
    struct curvd_pool_stats st = pool_stats(&p.f);
    print_message("3 workers: %llu batches, %llu tasks, %llu helped, at most %u busy\n", st.batches,
                  st.tasks, st.helped, st.max_busy);
    assert_true(st.batches > 0);
    assert_true(st.max_busy <= 3);
    /* /metrics shows the same counters. */
    assert_int_equal(metric(p.f.base, "curvd_worker_tasks_total{by=\"own\"}") +
                         metric(p.f.base, "curvd_worker_tasks_total{by=\"helper\"}"),
                     (long long)st.tasks);
    assert_int_equal(metric(p.f.base, "curvd_workers_busy_max"), st.max_busy);
    pair_close(&p);
}

/* The same steps (simple mode, binary FP32) on daemons with one, two and
 * three workers: the replies are the same bytes. */
static void test_replies_same_bytes(void **state)
{
    (void)state;
    enum { N = 3 };
    struct dfx d[N];
    struct su_trainer tr[N];
    static const char *const tags[N] = {"par-one", "par-two", "par-three"};
    tu_mlp net;
    curv_layout *l = mlp_new(&net, 12);
    for (int k = 0; k < N; k++) {
        dstart(&d[k], (unsigned)k + 1, tags[k]);
        tr[k] = (struct su_trainer){.base = d[k].base, .layout = l, .binary = 1, .fp32 = 1};
        su_trainer_create(&tr[k], "kfac", simple_config());
    }
    double *u = tu_alloc(net.dim);
    for (long t = 1; t <= 8; t++) {
        json_t *layers = su_mlp_layers(&net);
        struct su_step s = {
            .t = t, .grad = net.g, .params = net.theta, .loss = net.loss, .layers = layers};
        struct su_body body;
        su_step_body(&tr[0], &s, &body);
        json_decref(layers);
        struct su_resp r[N];
        for (int k = 0; k < N; k++) {
            char path[160];
            snprintf(path, sizeof path, "/v1/sessions/%s/steps", tr[k].id);
            su_post_body(&tr[k], path, &body, &r[k]);
            assert_int_equal(r[k].status, 200);
            if (k && (r[k].len != r[0].len || memcmp(r[k].body, r[0].body, r[0].len) != 0))
                fail_msg("step %ld: the replies of 1 and %d workers differ", t, k + 1);
        }
        su_body_free(&body);
        json_t *j = su_json(r[0].body, r[0].json_header_len);
        size_t off = 0;
        su_tensors_flat(l, json_object_get(j, "update"), &r[0], &off, u);
        json_decref(j);
        for (int k = 0; k < N; k++)
            su_resp_free(&r[k]);
        tu_mlp_advance(&net, u, 300 + (uint64_t)t);
    }
    assert_int_equal(pool_stats(&d[0]).batches, 0); /* one worker: serial */
    for (int k = 1; k < N; k++)
        assert_true(pool_stats(&d[k]).batches > 0);
    free(u);
    curv_layout_free(l);
    tu_mlp_free(&net);
    for (int k = 0; k < N; k++)
        dstop(&d[k]);
}

/* ---- Several sessions at once ---- */

enum { SESSIONS = 4, STEPS = 5 };

struct client {
    const char *base;
    char id[33];
    char *body[STEPS]; /* step bodies, JSON text */
    struct su_resp resp[STEPS];
    int failed;
};

static void *client_main(void *arg)
{
    struct client *c = arg;
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions/%s/steps", c->base, c->id);
    for (int t = 0; t < STEPS; t++)
        if (su_try_request("POST", url, c->body[t], &c->resp[t]) != CURLE_OK ||
            c->resp[t].status != 200)
            c->failed = t + 1;
    return NULL;
}

/* Four simple-mode sessions stepped at once on two workers: each update
 * that of its own serial reference. Bodies and references are made first
 * (θ advanced by the reference's updates), the posts race, the replies
 * are checked after. */
static void test_sessions_at_once(void **state)
{
    (void)state;
    struct dfx f;
    dstart(&f, 2, "par-many");
    static struct client cl[SESSIONS];
    static double *want[SESSIONS][STEPS];
    tu_mlp net[SESSIONS];
    curv_layout *l[SESSIONS];
    for (int s = 0; s < SESSIONS; s++) {
        l[s] = mlp_new(&net[s], 20 + (uint64_t)s);
        struct su_trainer tr = {.base = f.base, .layout = l[s]};
        su_trainer_create(&tr, "kfac", simple_config());
        cl[s] = (struct client){.base = f.base};
        memcpy(cl[s].id, tr.id, sizeof cl[s].id);
        curv_opt *ref = simple_ref(l[s]);
        for (int t = 0; t < STEPS; t++) {
            json_t *layers = su_mlp_layers(&net[s]);
            struct su_step st = {.t = t + 1,
                                 .grad = net[s].g,
                                 .params = net[s].theta,
                                 .loss = net[s].loss,
                                 .layers = layers};
            struct su_body body;
            su_step_body(&tr, &st, &body);
            json_decref(layers);
            cl[s].body[t] = strndup((const char *)body.p, body.len);
            su_body_free(&body);
            want[s][t] = tu_alloc(net[s].dim);
            ref_step(ref, &net[s], want[s][t]);
            tu_mlp_advance(&net[s], want[s][t], 400 + (uint64_t)t);
        }
        curv_opt_free(ref);
    }
    pthread_t th[SESSIONS];
    for (int s = 0; s < SESSIONS; s++)
        assert_int_equal(pthread_create(&th[s], NULL, client_main, &cl[s]), 0);
    for (int s = 0; s < SESSIONS; s++)
        pthread_join(th[s], NULL);
    for (int s = 0; s < SESSIONS; s++) {
        if (cl[s].failed)
            fail_msg("session %d, step %d: status %ld", s, cl[s].failed,
                     cl[s].resp[cl[s].failed - 1].status);
        double *u = tu_alloc(net[s].dim);
        for (int t = 0; t < STEPS; t++) {
            json_t *j = su_json(cl[s].resp[t].body, cl[s].resp[t].len);
            size_t off = 0;
            su_tensors_flat(l[s], json_object_get(j, "update"), &cl[s].resp[t], &off, u);
            json_decref(j);
            same_bits(u, want[s][t], net[s].dim, "kfac simple, sessions at once", t + 1);
            su_resp_free(&cl[s].resp[t]);
            free(cl[s].body[t]);
            free(want[s][t]);
        }
        free(u);
        curv_layout_free(l[s]);
        tu_mlp_free(&net[s]);
    }
    struct curvd_pool_stats st = pool_stats(&f);
    print_message("2 workers, 4 sessions: %llu batches, %llu tasks, %llu helped, at most %u busy\n",
                  st.batches, st.tasks, st.helped, st.max_busy);
    assert_true(st.max_busy <= 2);
    dstop(&f);
}

static curv_opt *background_ref(const curv_layout *l, const void *mode)
{
    const tu_kv kv[] = {{"inv_interval", 3}, {"max_staleness", 2}, {"lr", 0.1}, {"lambda_init", 1}};
    return tu_kfac_opt(l, kv, 4, "mode", (const char *)mode, "precision", "fp32", NULL);
}

/* K-FAC with max_staleness on two workers: each refresh is handed to the
 * pool when the step that leaves it completes, and every update equals
 * that of the serial library computing its refreshes in the step, to the
 * bit (simple and adaptive mode). */
static void check_background(const char *mode)
{
    struct pair p;
    pair_open(&p, 2, "par-background", 13,
              json_pack("{s:s, s:i, s:i, s:f, s:f}", "mode", mode, "inv_interval", 3,
                        "max_staleness", 2, "lr", 0.1, "lambda_init", 1.0),
              background_ref, mode);
    const long steps = 13; /* refreshes left by steps 6, 9 and 12 */
    for (long t = 1; t <= steps; t++)
        step_both(&p.tr, p.ref, &p.net, t, mode, 300, p.u, p.want);
    /* The last one (left by step 12 for step 14) may still be running. */
    struct curvd_bg_stats bg;
    for (int i = 0; i < 1000; i++) {
        curvd_registry_bg_stats(p.f.srv.reg, &bg);
        if (bg.run + bg.taken_back == bg.handed)
            break;
        nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
    }
    print_message("%s: %llu refreshes handed on, %llu run by the pool, %llu taken back, %llu "
                  "waited for\n",
                  mode, bg.handed, bg.run, bg.taken_back, bg.waited);
    assert_int_equal(bg.handed, 3);
    assert_int_equal(bg.run + bg.taken_back, 3);
    /* /metrics shows the same counters. */
    assert_int_equal(metric(p.f.base, "curvd_background_refreshes_total{outcome=\"handed\"}"), 3);
    assert_int_equal(
        metric(p.f.base, "curvd_background_refreshes_total{outcome=\"run\"}") +
            metric(p.f.base, "curvd_background_refreshes_total{outcome=\"taken_back\"}"),
        3);
    pair_close(&p);
}

static void test_refreshes_in_the_background(void **state)
{
    (void)state;
    check_background("simple");
    check_background("adaptive");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adaptive_matches_serial),
        cmocka_unit_test(test_replies_same_bytes),
        cmocka_unit_test(test_sessions_at_once),
        cmocka_unit_test(test_refreshes_in_the_background),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
