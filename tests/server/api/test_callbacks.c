/* SPDX-License-Identifier: MIT */
/*
 * Callback exchanges end to end (kfac, hf): a real daemon on a loopback
 * port, the test playing the trainer with dense math (HF: an explicit SPD
 * G and its quadratic loss; K-FAC: testutil's tiny MLP, its exact Fisher
 * Gram matrices and losses). Every update must equal the same optimizer's
 * driven in-process with the same answers (tu_drive): bit for bit in
 * FP64, to float rounding in FP32. Then every refusal of an answer, the
 * replays of retried answers, re-posted steps and a restart mid-exchange,
 * each followed by the exchange completing with the reference's update.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv.h"
#include "srvutil.h"
#include "testutil.h"

/* ---- Helpers ---- */

static int setup(void **state)
{
    *state = su_fx_new("callbacks");
    return 0;
}

static int teardown(void **state)
{
    su_fx_free(*state);
    return 0;
}

static void same_bits(const double *u, const double *want, size_t n, const char *what, long t)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&u[i], &want[i], sizeof u[i]) != 0)
            fail_msg("%s, step %ld, element %zu: daemon %.17g, libcurv %.17g", what, t, i, u[i],
                     want[i]);
}

/* /metrics counts @n answered callbacks of @optimizer sessions. */
static void expect_round_trips(const char *base, const char *optimizer, size_t n)
{
    char url[128], line[128];
    snprintf(url, sizeof url, "%s/metrics", base);
    snprintf(line, sizeof line, "curvd_callback_round_trips_total{optimizer=\"%s\"} %zu\n",
             optimizer, n);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    if (!strstr(r.body, line))
        fail_msg("/metrics lacks \"%s\"", line);
    su_resp_free(&r);
}

/* Session @id's item in the daemon's list (a new reference). */
static json_t *listed(const char *base, const char *id)
{
    json_t *list = su_call(base, "GET", "/v1/sessions?page_size=1000", NULL, 200, NULL), *item;
    json_t *found = NULL;
    size_t i;
    json_array_foreach(json_object_get(list, "sessions"), i, item)
    {
        if (strcmp(json_string_value(json_object_get(item, "id")), id) == 0) {
            assert_null(found);
            found = json_incref(item);
        }
    }
    json_decref(list);
    assert_non_null(found);
    return found;
}

/* "pending_callback" of session @id: the url, or "" when null; the list
 * says the same. */
static void pending_of(const char *base, const char *id, char *out, size_t cap)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_t *s = su_call(base, "GET", path, NULL, 200, NULL), *item = listed(base, id);
    json_t *pc = json_object_get(s, "pending_callback");
    assert_true(json_is_null(pc) || json_is_string(pc));
    assert_true(json_equal(pc, json_object_get(item, "pending_callback")));
    snprintf(out, cap, "%s", json_is_string(pc) ? json_string_value(pc) : "");
    json_decref(item);
    json_decref(s);
}

/* ---- The trainers' problems ---- */

/* HF's objective f(θ) = 1 + ½(θ − θ*)ᵀG(θ − θ*): at each θ the quadratic
 * tu_quad answers is exact, so the loss must go down. */
struct quad {
    size_t d;
    double *G, *star, *theta, *g, *gsq;
    tu_quad q;
};

static void quad_eval(struct quad *p)
{
    double *r = tu_alloc(p->d);
    for (size_t i = 0; i < p->d; i++)
        r[i] = p->theta[i] - p->star[i];
    tu_matmul(p->d, p->d, 1, p->G, r, p->g);
    double h = 1;
    for (size_t i = 0; i < p->d; i++) {
        h += 0.5 * r[i] * p->g[i];
        p->gsq[i] = p->g[i] * p->g[i] + 0.05; /* a positive Fisher diagonal stand-in */
    }
    p->q = (tu_quad){.d = p->d, .G = p->G, .g = p->g, .h0 = h};
    free(r);
}

static void quad_new(struct quad *p, size_t d, uint64_t seed)
{
    tu_rng rng;
    tu_rng_seed(&rng, seed);
    p->d = d;
    p->G = tu_alloc(d * d), p->star = tu_alloc(d), p->theta = tu_alloc(d);
    p->g = tu_alloc(d), p->gsq = tu_alloc(d);
    tu_rand_spd(&rng, d, 0.5, p->G);
    tu_fill_normal(&rng, p->star, d, 1.0);
    quad_eval(p);
}

static void quad_free(struct quad *p)
{
    free(p->G), free(p->star), free(p->theta), free(p->g), free(p->gsq);
}

/* θ ← θ + u and the objective there. */
static void quad_move(struct quad *p, const double *u)
{
    for (size_t i = 0; i < p->d; i++)
        p->theta[i] += u[i];
    quad_eval(p);
}

static struct su_step quad_step(const struct quad *p, long t)
{
    return (struct su_step){.t = t, .grad = p->g, .grad_sq = p->gsq, .loss = p->q.h0};
}

/* The same step in-process, answered like the daemon's callbacks. */
static void quad_ref(curv_opt *ref, struct quad *p, double *want, size_t *n)
{
    curv_step_input in = {.grad = p->g,
                          .len = p->d,
                          .dtype = CURV_F64,
                          .loss = p->q.h0,
                          .has_loss = 1,
                          .grad_sq = p->gsq};
    curv_error err;
    tu_assert_status(tu_drive(ref, &in, tu_quad_answer, &p->q, want, n, &err), CURV_OK, &err);
}

static void mlp_answer(void *ctx, const curv_request *req, double *values)
{
    tu_mlp_answer(ctx, req, values);
}

static void mlp_ref(curv_opt *ref, tu_mlp *net, int with_stats, double *want, size_t *n)
{
    curv_step_input in = {.grad = net->g,
                          .params = net->theta,
                          .len = net->dim,
                          .dtype = CURV_F64,
                          .layers = with_stats ? net->stats : NULL,
                          .n_layers = with_stats ? net->L : 0,
                          .loss = net->loss,
                          .has_loss = 1};
    curv_error err;
    tu_assert_status(tu_drive(ref, &in, mlp_answer, net, want, n, &err), CURV_OK, &err);
}

/* One K-FAC step over HTTP and in-process (with the batch's statistics
 * when @with_stats), equal to the bit; then θ moves and the same batch
 * (@seed) is evaluated there. Returns the callbacks. */
static size_t mlp_step_with(struct su_trainer *tr, curv_opt *ref, tu_mlp *net, long t,
                            uint64_t seed, int with_stats)
{
    double *u = tu_alloc(net->dim), *want = tu_alloc(net->dim);
    json_t *layers = with_stats ? su_mlp_layers(net) : NULL;
    struct su_step s = {
        .t = t, .grad = net->g, .params = net->theta, .loss = net->loss, .layers = layers};
    size_t n = su_trainer_step(tr, &s, mlp_answer, net, u), n_ref;
    json_decref(layers);
    mlp_ref(ref, net, with_stats, want, &n_ref);
    assert_int_equal(n, n_ref);
    same_bits(u, want, net->dim, "kfac", t);
    for (size_t i = 0; i < net->dim; i++)
        net->theta[i] += u[i];
    tu_mlp_batch(net, seed);
    free(u);
    free(want);
    return n;
}

static size_t mlp_step(struct su_trainer *tr, curv_opt *ref, tu_mlp *net, long t, uint64_t seed)
{
    return mlp_step_with(tr, ref, net, t, seed, 1);
}

static json_t *hf_config(void)
{
    return json_pack("{s:i}", "cg_max", 6);
}

static curv_opt *hf_ref(const curv_layout *l)
{
    const tu_kv kv[] = {{"cg_max", 6}};
    return tu_opt_with(CURV_OPT_HF, l, kv, 1);
}

/* One HF step over HTTP (@tr) and in-process (@ref): the update @u must
 * be the reference's to the bit. Returns the callbacks answered. */
static size_t hf_step(struct su_trainer *tr, curv_opt *ref, struct quad *p, long t, double *u)
{
    double want[SU_D];
    struct su_step s = quad_step(p, t);
    size_t n = su_trainer_step(tr, &s, tu_quad_answer, &p->q, u), n_ref;
    quad_ref(ref, p, want, &n_ref);
    assert_int_equal(n, n_ref);
    same_bits(u, want, SU_D, "hf", t);
    return n;
}

/* ---- The daemon does not change the math ---- */

/* HF in FP64 JSON: every update to the bit, the loss going down, and
 * /metrics counting each round trip. */
static void test_hf_matches_library(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "hf", hf_config());
    curv_opt *ref = hf_ref(l);
    struct quad p;
    quad_new(&p, SU_D, 1);
    double first = p.q.h0;
    size_t total = 0;
    for (long t = 1; t <= 4; t++) {
        double u[SU_D], before = p.q.h0;
        total += hf_step(&tr, ref, &p, t, u);
        quad_move(&p, u);
        assert_true(p.q.h0 < before);
    }
    print_message("hf: loss %.6g -> %.6g in 4 steps, %zu callbacks\n", first, p.q.h0, total);
    assert_int_equal(total, tr.answers);
    expect_round_trips(f->base, "hf", total);
    char pc[256];
    pending_of(f->base, tr.id, pc, sizeof pc);
    assert_string_equal(pc, "");
    quad_free(&p);
    curv_opt_free(ref);
    curv_layout_free(l);
}

/* HF in FP32: the step, the callback vectors, the products and the update
 * travel as floats. The daemon steps in doubles from the float inputs, as
 * libcurv does with an FP32 step, so the update differs from the
 * in-process one only through the rounding of the exchanged vectors. */
static void test_hf_fp32(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l, .fp32 = 1};
    su_trainer_create(&tr, "hf", hf_config());
    curv_opt *ref = hf_ref(l);
    struct quad p;
    quad_new(&p, SU_D, 2);
    double worst = 0;
    for (long t = 1; t <= 3; t++) {
        double u[SU_D], want[SU_D], before = p.q.h0;
        float g32[SU_D], sq32[SU_D], u32[SU_D];
        for (size_t i = 0; i < SU_D; i++)
            g32[i] = (float)p.g[i], sq32[i] = (float)p.gsq[i];
        struct su_step s = quad_step(&p, t);
        size_t n = su_trainer_step(&tr, &s, tu_quad_answer, &p.q, u), n_ref;
        curv_step_input in = {.grad = g32,
                              .len = SU_D,
                              .dtype = CURV_F32,
                              .loss = p.q.h0,
                              .has_loss = 1,
                              .grad_sq = sq32};
        curv_error err;
        tu_assert_status(tu_drive(ref, &in, tu_quad_answer, &p.q, u32, &n_ref, &err), CURV_OK,
                         &err);
        assert_int_equal(n, n_ref);
        for (size_t i = 0; i < SU_D; i++) {
            want[i] = u32[i];
            assert_true(u[i] == (double)(float)u[i]); /* the reply is FP32 */
        }
        tu_expect_close(u, want, SU_D, 1e-5, "hf fp32 update", (int)t);
        worst = fmax(worst, tu_rel_err(u, want, SU_D));
        quad_move(&p, u);
        assert_true(p.q.h0 < before);
    }
    print_message("hf fp32: largest relative difference %.2g\n", worst);
    quad_free(&p);
    curv_opt_free(ref);
    curv_layout_free(l);
}

/* JSON numbers and the binary extension (steps, callback vectors and
 * products) give the same updates, to the bit. */
static void test_hf_binary_matches_json(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer js = {.base = f->base, .layout = l};
    struct su_trainer bin = {.base = f->base, .layout = l, .binary = 1};
    su_trainer_create(&js, "hf", hf_config());
    su_trainer_create(&bin, "hf", hf_config());
    curv_opt *ref = hf_ref(l);
    struct quad p;
    quad_new(&p, SU_D, 3);
    for (long t = 1; t <= 3; t++) {
        double ub[SU_D], uj[SU_D];
        struct su_step s = quad_step(&p, t);
        size_t nb = su_trainer_step(&bin, &s, tu_quad_answer, &p.q, ub);
        assert_int_equal(hf_step(&js, ref, &p, t, uj), nb);
        same_bits(ub, uj, SU_D, "binary vs json", t);
        quad_move(&p, uj);
    }
    quad_free(&p);
    curv_opt_free(ref);
    curv_layout_free(l);
}

static const size_t MLP_W[] = {3, 4, 2};

/* A tiny MLP with a gain block, on one fixed batch, and its layout. */
static curv_layout *mlp_new(tu_mlp *net, uint64_t seed)
{
    tu_mlp_new(net, MLP_W, 2, 2, 6, seed);
    tu_mlp_batch(net, seed + 100);
    return tu_mlp_layout(net);
}

/* K-FAC adaptive: quadratic-form and loss callbacks (γ candidates every
 * third step, λ every second), every update to the bit, the loss down. */
static void test_kfac_adaptive_matches_library(void **state)
{
    struct su_fx *f = *state;
    tu_mlp net;
    curv_layout *l = mlp_new(&net, 5);
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "kfac",
                      json_pack("{s:i, s:i, s:i, s:s}", "lambda_interval", 2, "gamma_interval", 3,
                                "inv_interval", 2, "gamma_rule", "grid"));
    const tu_kv kv[] = {{"lambda_interval", 2}, {"gamma_interval", 3}, {"inv_interval", 2}};
    /* The session takes the default precision, fp32. */
    curv_opt *ref = tu_kfac_opt(l, kv, 3, "gamma_rule", "grid", "precision", "fp32", NULL);
    double first = net.loss;
    size_t total = 0;
    for (long t = 1; t <= 6; t++) {
        size_t n = mlp_step(&tr, ref, &net, t, 105);
        assert_int_equal(n, 1 + (t % 2 == 0)); /* the Gram matrix, then the loss */
        total += n;
    }
    print_message("kfac adaptive: loss %.6g -> %.6g in 6 steps\n", first, net.loss);
    assert_true(net.loss < first);
    expect_round_trips(f->base, "kfac", total);
    curv_opt_free(ref);
    curv_layout_free(l);
    tu_mlp_free(&net);
}

/* K-FAC simple mode never calls back: every step is one 200, to the bit;
 * a step without callbacks has none to answer. */
static void test_kfac_simple_matches_library(void **state)
{
    struct su_fx *f = *state;
    tu_mlp net;
    curv_layout *l = mlp_new(&net, 7);
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "kfac", json_pack("{s:s, s:f}", "mode", "simple", "lr", 0.1));
    const tu_kv kv[] = {{"lr", 0.1}};
    curv_config *c = tu_config(kv, 1);
    tu_config_set(c, "mode", 0, "simple");
    curv_opt *ref = tu_new_opt(CURV_OPT_KFAC, l, c);
    curv_config_free(c);
    double first = net.loss;
    for (long t = 1; t <= 5; t++)
        assert_int_equal(mlp_step(&tr, ref, &net, t, 107), 0);
    print_message("kfac simple: loss %.6g -> %.6g in 5 steps\n", first, net.loss);
    assert_true(net.loss < first);
    char path[160];
    for (int cb = 0; cb <= 1; cb++) {
        snprintf(path, sizeof path, "/v1/sessions/%s/steps/5/callbacks/%d", tr.id, cb);
        json_t *p = su_call(f->base, "POST", path, "{\"losses\":[1]}", 409, NULL);
        assert_string_equal(json_string_value(json_object_get(p, "reason")), "NO_CALLBACK_PENDING");
        json_decref(p);
    }
    curv_opt_free(ref);
    curv_layout_free(l);
    tu_mlp_free(&net);
}

/* The exported state of session @id is @ref's blob, byte for byte. */
static void expect_export(const char *base, const char *id, const curv_opt *ref)
{
    size_t len, want_len;
    unsigned char *got = su_export_state(base, id, &len, "application/octet-stream");
    unsigned char *want = tu_snapshot(ref, &want_len);
    assert_int_equal(len, want_len);
    assert_memory_equal(got, want, len);
    free(got);
    curv_free(want);
}

/* K-FAC simple mode with statistics every other step and inverses every
 * third, so that most commits write only some of the state's parts: every
 * update to the bit and every exported state byte for byte as in-process,
 * across a restart of the daemon (which reads the parts and their stamps
 * back before its next commit) and the steps after it. */
static void test_kfac_parts_survive_restart(void **state)
{
    struct su_fx *f = *state;
    tu_mlp net;
    curv_layout *l = mlp_new(&net, 9);
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "kfac",
                      json_pack("{s:s, s:f, s:i, s:i}", "mode", "simple", "lr", 0.1, "cov_interval",
                                2, "inv_interval", 3));
    const tu_kv kv[] = {{"lr", 0.1}, {"cov_interval", 2}, {"inv_interval", 3}};
    curv_opt *ref = tu_kfac_opt(l, kv, 3, "mode", "simple", "precision", "fp32", NULL);
    expect_export(f->base, tr.id, ref);
    for (long t = 1; t <= 9; t++) {
        if (t == 5)
            su_fx_restart(f);
        assert_int_equal(mlp_step_with(&tr, ref, &net, t, 111, t % 2 == 1), 0);
        expect_export(f->base, tr.id, ref);
    }
    curv_opt_free(ref);
    curv_layout_free(l);
    tu_mlp_free(&net);
}

/* ---- Refused answers change nothing ---- */

/* POST @b to @path: the status must be @want with problem @reason, and
 * errors[0].path @field unless NULL. Returns errors[0].expected (static
 * buffer). */
static const char *refused(const struct su_trainer *tr, const char *path, const struct su_body *b,
                           long want, const char *reason, const char *field)
{
    static char expected[64];
    struct su_resp r;
    su_post_body(tr, path, b, &r);
    if (r.status != want)
        fail_msg("POST %s: status %ld, want %ld: %s", path, r.status, want, r.body);
    json_t *p = json_loads(r.body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), reason);
    json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
    if (field)
        assert_string_equal(json_string_value(json_object_get(e0, "path")), field);
    snprintf(expected, sizeof expected, "%s",
             json_is_string(json_object_get(e0, "expected"))
                 ? json_string_value(json_object_get(e0, "expected"))
                 : "");
    json_decref(p);
    su_resp_free(&r);
    return expected;
}

static void refused_text(const struct su_trainer *tr, const char *path, const char *text, long want,
                         const char *reason, const char *field)
{
    struct su_body b = {.p = (unsigned char *)strdup(text), .len = strlen(text)};
    assert_non_null(b.p);
    refused(tr, path, &b, want, reason, field);
    su_body_free(&b);
}

/* @good with the member text @member inserted first (binary: the JSON
 * header grows by as much). */
static void with_member(const struct su_body *good, const char *member, struct su_body *out)
{
    size_t k = strlen(member);
    out->len = out->cap = good->len + k;
    out->p = malloc(out->len);
    assert_non_null(out->p);
    out->p[0] = '{';
    memcpy(out->p + 1, member, k);
    memcpy(out->p + 1 + k, good->p + 1, good->len - 1);
    out->json_len = good->json_len ? good->json_len + k : 0;
}

/* An answer to @cb with @n_vectors vectors (products) or @n_values
 * values, all zero but the first, which is @first. */
static void answer_sized(const struct su_trainer *tr, const struct su_callback *cb,
                         size_t n_vectors, size_t n_values, double first, struct su_body *out)
{
    curv_request q = cb->req;
    q.n_vectors = n_vectors;
    q.n_values = q.kind == CURV_REQ_CURVATURE_PRODUCT ? n_vectors * q.dim : n_values;
    double *v = calloc(q.n_values + 1, sizeof *v);
    assert_non_null(v);
    v[0] = first;
    su_answer_body(tr, &q, v, out);
    free(v);
}

/* Every wrong answer to @cb is refused with its problem; what the daemon
 * holds must not change, which the step's final update checks. */
static void try_bad_answers(struct su_trainer *tr, const struct su_callback *cb,
                            const struct su_body *good)
{
    char path[256], pc[256];
    pending_of(tr->base, tr->id, pc, sizeof pc);
    assert_string_equal(pc, cb->url);
    /* The id is "<seq>-<run tag>": another seq of this run, the bare seq
     * and a letter before it are out of order (naming the awaited id); the
     * awaited seq with another run's tag is no callback pending. */
    const char *slash = strrchr(cb->url, '/'), *id = slash + 1, *tag = strchr(id, '-');
    assert_non_null(tag);
    int dir = (int)(slash - cb->url);
    snprintf(path, sizeof path, "%.*s/%llu%s", dir, cb->url, (unsigned long long)cb->req.seq + 1000,
             tag);
    assert_string_equal(refused(tr, path, good, 409, "CALLBACK_OUT_OF_ORDER", "callback"), id);
    snprintf(path, sizeof path, "%.*s/%llu", dir, cb->url, (unsigned long long)cb->req.seq);
    assert_string_equal(refused(tr, path, good, 409, "CALLBACK_OUT_OF_ORDER", "callback"), id);
    snprintf(path, sizeof path, "%.*s/c%s", dir, cb->url, id);
    refused(tr, path, good, 409, "CALLBACK_OUT_OF_ORDER", "callback");
    snprintf(path, sizeof path, "%s", cb->url);
    char *last = path + strlen(path) - 1; /* the tag's last hex digit, changed */
    *last = *last == '0' ? '1' : '0';
    refused(tr, path, good, 409, "NO_CALLBACK_PENDING", "callback");
    snprintf(path, sizeof path, "/v1/sessions/%s/steps/%ld/callbacks/%s", tr->id, cb->step + 1, id);
    refused(tr, path, good, 409, "NO_CALLBACK_PENDING", "step");
    snprintf(path, sizeof path, "/v1/sessions/%s/steps/%ldx/callbacks/%s", tr->id, cb->step, id);
    refused(tr, path, good, 409, "NO_CALLBACK_PENDING", "step"); /* "nx" is not step n */

    const curv_request *q = &cb->req;
    int prod = q->kind == CURV_REQ_CURVATURE_PRODUCT;
    const char *member = prod ? "/products" : q->kind == CURV_REQ_LOSS ? "/losses" : "/gram";
    struct su_body b;
    answer_sized(tr, cb, q->n_vectors + 1, q->n_values + 1, 0, &b); /* one too many */
    refused(tr, cb->url, &b, 400, "SHAPE_MISMATCH", member);
    su_body_free(&b);
    answer_sized(tr, cb, q->n_vectors - 1, q->n_values - 1, 0, &b); /* one too few */
    refused(tr, cb->url, &b, 400, "SHAPE_MISMATCH", member);
    su_body_free(&b);
    if (prod) { /* NaN: the binary bytes, or the literal the scanner takes in "data" */
        answer_sized(tr, cb, q->n_vectors, 0, tr->binary ? NAN : 7777777.25, &b);
        char *at = tr->binary ? NULL : strstr((char *)b.p, "7777777.25");
        if (at)
            memcpy(at, "NaN       ", 10); /* JSON allows the blanks */
        assert_true(tr->binary || at);
        refused(tr, cb->url, &b, 422, "NON_FINITE", NULL);
        su_body_free(&b);
    }
    for (size_t i = 0; !prod && i < 3; i++) { /* named as non-finite, not "invalid JSON" */
        static const char *const bad[] = {"NaN       ", "-Infinity ", "1e999     "};
        answer_sized(tr, cb, q->n_vectors, q->n_values, 7777777.25, &b);
        char *at = strstr((char *)b.p, "7777777.25");
        assert_non_null(at);
        memcpy(at, bad[i], 10);
        refused(tr, cb->url, &b, 422, "NON_FINITE", member);
        su_body_free(&b);
    }
    with_member(good, "\"extra\":1,", &b);
    refused(tr, cb->url, &b, 400, "UNKNOWN_MEMBER", "/extra");
    su_body_free(&b);
    refused_text(tr, cb->url, prod ? "{\"losses\":[1]}" : "{\"products\":[]}", 400,
                 "UNKNOWN_MEMBER", prod ? "/losses" : "/products");
    refused_text(tr, cb->url, "{}", 400, "BAD_TENSOR", member);
    refused_text(tr, cb->url, "{\"gram", 400, "MALFORMED_JSON", NULL);
    pending_of(tr->base, tr->id, pc, sizeof pc);
    assert_string_equal(pc, cb->url);
}

/* A retried answer gets the reply it got, byte for byte. */
static void expect_replay(struct su_trainer *tr, const char *url, const struct su_body *answer,
                          const struct su_resp *first)
{
    struct su_resp r;
    su_post_body(tr, url, answer, &r);
    assert_int_equal(r.status, first->status);
    assert_int_equal(r.len, first->len);
    assert_memory_equal(r.body, first->body, r.len);
    assert_int_equal(r.json_header_len, first->json_header_len);
    assert_string_equal(r.location, first->location);
    su_resp_free(&r);
}

/* Another answer to @cb, once it was answered: refused, nothing applied
 * (issue 21); the reply of the answer given stays what a retry gets. */
static void expect_mismatch(struct su_trainer *tr, const struct su_callback *cb,
                            const struct su_body *good, const struct su_resp *reply)
{
    struct su_body b;
    answer_sized(tr, cb, cb->req.n_vectors, cb->req.n_values, 12345.5, &b);
    const char *stored = refused(tr, cb->url, &b, 422, "STEP_MISMATCH", "");
    assert_memory_equal(stored, "mm3-128:", 8);
    su_body_free(&b);
    expect_replay(tr, cb->url, good, reply);
}

static void abuse(struct su_trainer *tr, enum su_phase ph, const struct su_callback *cb,
                  const struct su_body *good, const struct su_resp *reply)
{
    size_t *steps_done = tr->hook_ctx;
    char pc[256], path[256];
    if (ph == SU_BEFORE_ANSWER) {
        try_bad_answers(tr, cb, good);
    } else if (ph == SU_ANSWERED && reply->status == 202) {
        expect_replay(tr, cb->url, good, reply);
        expect_mismatch(tr, cb, good, reply);
    } else if (ph == SU_STEP_DONE) {
        pending_of(tr->base, tr->id, pc, sizeof pc);
        assert_string_equal(pc, "");
        if (cb) { /* after the step: its final answer replays the 200, others are 409 */
            expect_replay(tr, cb->url, good, reply);
            expect_mismatch(tr, cb, good, reply);
            if (strcmp(tr->first_url, cb->url) != 0)
                refused(tr, tr->first_url, good, 409, "NO_CALLBACK_PENDING", "step");
            snprintf(path, sizeof path, "/v1/sessions/%s/steps/%ld/callbacks/1", tr->id,
                     cb->step + 1);
            refused(tr, path, good, 409, "NO_CALLBACK_PENDING", "step");
        }
        ++*steps_done;
    }
}

/* HF, JSON and binary: each refused answer leaves the exchange where it
 * was, so it completes with the reference's update to the bit. */
static void test_hf_refusals_change_nothing(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    size_t answers = 0;
    for (int binary = 0; binary <= 1; binary++) {
        size_t done = 0;
        struct su_trainer tr = {
            .base = f->base, .layout = l, .binary = binary, .hook = abuse, .hook_ctx = &done};
        su_trainer_create(&tr, "hf", hf_config());
        curv_opt *ref = hf_ref(l);
        struct quad p;
        quad_new(&p, SU_D, 4);
        for (long t = 1; t <= 2; t++) {
            double u[SU_D];
            hf_step(&tr, ref, &p, t, u);
            quad_move(&p, u);
        }
        assert_int_equal(done, 2);
        answers += tr.answers;
        quad_free(&p);
        curv_opt_free(ref);
    }
    expect_round_trips(f->base, "hf", answers); /* refused and replayed answers are none */
    curv_layout_free(l);
}

/* K-FAC: the same for quadratic-form (gram) and loss answers. */
static void test_kfac_refusals_change_nothing(void **state)
{
    struct su_fx *f = *state;
    tu_mlp net;
    curv_layout *l = mlp_new(&net, 9);
    size_t done = 0;
    struct su_trainer tr = {.base = f->base, .layout = l, .hook = abuse, .hook_ctx = &done};
    su_trainer_create(&tr, "kfac",
                      json_pack("{s:i, s:i, s:s}", "lambda_interval", 1, "gamma_interval", 2,
                                "gamma_rule", "grid"));
    const tu_kv kv[] = {{"lambda_interval", 1}, {"gamma_interval", 2}};
    curv_opt *ref = tu_kfac_opt(l, kv, 2, "gamma_rule", "grid", "precision", "fp32", NULL);
    for (long t = 1; t <= 2; t++)
        assert_int_equal(mlp_step(&tr, ref, &net, t, 109), 2);
    assert_int_equal(done, 2);
    curv_opt_free(ref);
    curv_layout_free(l);
    tu_mlp_free(&net);
}

/* ---- Abandoned exchanges ---- */

/* Post @p's step @t for @tr: the reply into @r. */
static void post_quad_step(const struct su_trainer *tr, const struct quad *p, long t,
                           struct su_resp *r)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", tr->id);
    struct su_step s = quad_step(p, t);
    struct su_body b;
    su_step_body(tr, &s, &b);
    su_post_body(tr, path, &b, r);
    su_body_free(&b);
}

/* Answer the callback of the 202 @r from the quadratic: the reply replaces @r. */
static void answer_quad(const struct su_trainer *tr, struct quad *p, long t, struct su_resp *r)
{
    struct su_callback cb;
    su_callback_parse(tr, r, t, &cb);
    su_resp_free(r);
    double *v = tu_alloc(cb.req.n_values);
    tu_quad_answer(&p->q, &cb.req, v);
    struct su_body b;
    su_answer_body(tr, &cb.req, v, &b);
    su_post_body(tr, cb.url, &b, r);
    su_body_free(&b);
    free(v);
    su_callback_clear(&cb);
}

/* Posting the step in progress again starts it over: the same first
 * callback under a fresh id (the library's ids never repeat, so an answer
 * to the abandoned exchange cannot pass for one to the new); the
 * abandoned callbacks are out of order; the exchange then completes with
 * the reference's update. */
static void test_reposted_step_restarts(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "hf", hf_config());
    char path[160], pc[256];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps/1/callbacks/1", tr.id);
    refused_text(&tr, path, "{\"products\":[]}", 409, "NO_CALLBACK_PENDING", "step");
    curv_opt *ref = hf_ref(l);
    struct quad p;
    quad_new(&p, SU_D, 5);
    double u[SU_D];
    hf_step(&tr, ref, &p, 1, u);
    quad_move(&p, u);
    struct su_resp r;
    struct su_callback first, second, again;
    post_quad_step(&tr, &p, 2, &r);
    su_callback_parse(&tr, &r, 2, &first);
    answer_quad(&tr, &p, 2, &r);
    su_callback_parse(&tr, &r, 2, &second);
    su_resp_free(&r);
    post_quad_step(&tr, &p, 2, &r);
    su_callback_parse(&tr, &r, 2, &again);
    su_resp_free(&r);
    assert_int_equal(again.req.kind, first.req.kind);
    assert_int_equal(again.req.n_vectors, first.req.n_vectors);
    assert_memory_equal(again.req.vectors, first.req.vectors,
                        first.req.n_vectors * SU_D * sizeof(double));
    assert_true(again.req.seq > second.req.seq);
    refused_text(&tr, first.url, "{\"products\":[]}", 409, "CALLBACK_OUT_OF_ORDER", "callback");
    refused_text(&tr, second.url, "{\"products\":[]}", 409, "CALLBACK_OUT_OF_ORDER", "callback");
    pending_of(f->base, tr.id, pc, sizeof pc);
    assert_string_equal(pc, again.url);
    hf_step(&tr, ref, &p, 2, u); /* posts step 2 once more and completes it */
    su_callback_clear(&first), su_callback_clear(&second), su_callback_clear(&again);
    quad_free(&p);
    curv_opt_free(ref);
    curv_layout_free(l);
}

/* An HF session of @tr (its base and layout set) with its reference
 * @ref and quadratic @p: step 1 done, step 2 posted (its reply in @r). */
static void hf_into_step2(struct su_trainer *tr, curv_opt **ref, struct quad *p, struct su_resp *r)
{
    su_trainer_create(tr, "hf", hf_config());
    *ref = hf_ref(tr->layout);
    quad_new(p, SU_D, 6);
    double u[SU_D];
    hf_step(tr, *ref, p, 1, u);
    quad_move(p, u);
    post_quad_step(tr, p, 2, r);
}

/* Answers at the doubles' limit (finite, so decoded) drive the next CG
 * direction past it: the library abandons the step (422 NON_FINITE naming
 * the element), the daemon drops the exchange with it (no pending
 * callback), and the step posted again completes with the update of a
 * reference that never saw those answers. */
static void test_overflowing_answers_abandon_the_step(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l};
    curv_opt *ref;
    struct quad p;
    struct su_resp r;
    double u[SU_D];
    hf_into_step2(&tr, &ref, &p, &r);
    int answers = 0;
    while (r.status == 202 && answers < 60) {
        struct su_callback cb;
        su_callback_parse(&tr, &r, 2, &cb);
        su_resp_free(&r);
        double *v = tu_alloc(cb.req.n_values);
        for (size_t i = 0; i < cb.req.n_values; i++)
            v[i] = 1.7e308;
        struct su_body b;
        su_answer_body(&tr, &cb.req, v, &b);
        su_post_body(&tr, cb.url, &b, &r);
        su_body_free(&b);
        free(v);
        su_callback_clear(&cb);
        answers++;
    }
    assert_int_equal(r.status, 422);
    assert_non_null(strstr(r.body, "NON_FINITE"));
    assert_non_null(strstr(r.body, "the step is abandoned"));
    su_resp_free(&r);
    char pc[256];
    pending_of(f->base, tr.id, pc, sizeof pc);
    assert_string_equal(pc, "");
    hf_step(&tr, ref, &p, 2, u); /* posts step 2 again and completes it */
    quad_free(&p);
    curv_opt_free(ref);
    curv_layout_free(l);
}

/* The exchange lives in memory: after a restart mid-step the callback is
 * 409 NO_CALLBACK_PENDING, the session is at its last committed step, and
 * posting the step again completes it with the reference's update. */
static void test_restart_mid_exchange(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l};
    curv_opt *ref;
    struct quad p;
    struct su_resp r;
    double u[SU_D];
    hf_into_step2(&tr, &ref, &p, &r);
    answer_quad(&tr, &p, 2, &r);
    struct su_callback cb;
    su_callback_parse(&tr, &r, 2, &cb);
    su_fx_restart(f);
    char pc[256];
    pending_of(f->base, tr.id, pc, sizeof pc);
    assert_string_equal(pc, "");
    refused_text(&tr, cb.url, "{\"products\":[]}", 409, "NO_CALLBACK_PENDING", "step");
    assert_int_equal(su_session_step(f->base, tr.id), 1);
    for (long t = 2; t <= 3; t++) {
        hf_step(&tr, ref, &p, t, u);
        quad_move(&p, u);
    }
    su_callback_clear(&cb);
    su_resp_free(&r);
    quad_free(&p);
    curv_opt_free(ref);
    curv_layout_free(l);
}

/* The trainer's hook keeping the report of each step's 200 reply. */
static void keep_report(struct su_trainer *tr, enum su_phase ph, const struct su_callback *cb,
                        const struct su_body *good, const struct su_resp *reply)
{
    (void)cb, (void)good;
    if (ph != SU_STEP_DONE)
        return;
    json_t **out = tr->hook_ctx;
    json_t *r = su_json(reply->body, reply->json_header_len ? reply->json_header_len : reply->len);
    json_decref(*out);
    *out = json_incref(json_object_get(r, "report"));
    json_decref(r);
    assert_true(json_is_object(*out));
}

/* "last_step" of session @id, in GET and in its list item: step @t with
 * @report (NULL: null). */
static void expect_last_step(const char *base, const char *id, long t, const json_t *report)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_t *s = su_call(base, "GET", path, NULL, 200, NULL), *item = listed(base, id);
    assert_true(json_equal(json_object_get(item, "last_step"), json_object_get(s, "last_step")));
    json_t *last = json_object_get(s, "last_step");
    if (!report) {
        assert_true(json_is_null(last));
    } else {
        assert_int_equal(json_integer_value(json_object_get(last, "step")), t);
        assert_true(json_equal(json_object_get(last, "report"), report));
    }
    json_decref(item);
    json_decref(s);
}

/* The session object shows the latest completed step's report exactly as
 * its 200 carried it: not before the first step, not for a step still in
 * its exchange, unchanged by a replay, and after a restart. */
static void test_session_shows_last_report(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    json_t *report = NULL;
    struct su_trainer tr = {
        .base = f->base, .layout = l, .binary = 1, .hook = keep_report, .hook_ctx = &report};
    su_trainer_create(&tr, "hf", hf_config());
    expect_last_step(f->base, tr.id, 0, NULL);
    struct quad p;
    quad_new(&p, SU_D, 7);
    double u[SU_D];
    for (long t = 1; t <= 3; t++) {
        struct su_step st = quad_step(&p, t);
        su_trainer_step(&tr, &st, tu_quad_answer, &p.q, u);
        assert_true(json_is_number(json_object_get(report, "cg_iterations")));
        expect_last_step(f->base, tr.id, t, report);
        if (t < 3)
            quad_move(&p, u);
    }
    struct su_resp r;
    post_quad_step(&tr, &p, 3, &r); /* a replay: the same request (issue 21) */
    assert_int_equal(r.status, 200);
    su_resp_free(&r);
    expect_last_step(f->base, tr.id, 3, report);
    quad_move(&p, u);
    post_quad_step(&tr, &p, 4, &r); /* waits for its callback */
    assert_int_equal(r.status, 202);
    su_resp_free(&r);
    expect_last_step(f->base, tr.id, 3, report);
    su_fx_restart(f);
    expect_last_step(f->base, tr.id, 3, report);
    json_decref(report);
    quad_free(&p);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hf_matches_library, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hf_fp32, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hf_binary_matches_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kfac_adaptive_matches_library, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kfac_simple_matches_library, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kfac_parts_survive_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hf_refusals_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kfac_refusals_change_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reposted_step_restarts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overflowing_answers_abandon_the_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_mid_exchange, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_shows_last_report, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
