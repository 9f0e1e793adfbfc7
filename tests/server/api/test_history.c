/* SPDX-License-Identifier: MIT */
/* GET /v1/sessions/{id}/steps over HTTP: pages by since and page_size
 * with next_since, the bound a session sets at create and PATCH, each
 * step's loss (as the trainer sent it, for every optimizer), enums by
 * name, its callbacks (as many as the trainer answered) and time split,
 * and the same history after a restart of the daemon. Bad queries and
 * unknown sessions: tests/server/cases/history-*; auth: test_auth.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "srvutil.h"
#include "testutil.h"

static int setup(void **state)
{
    *state = su_fx_new("history");
    return 0;
}

static int teardown(void **state)
{
    su_fx_free(*state);
    return 0;
}

static json_t *get_steps(const char *base, const char *id, const char *query)
{
    char path[256];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps%s", id, query);
    return su_call(base, "GET", path, NULL, 200, NULL);
}

/* A layout of one vector block "w" of 2 (K-FAC steps it without layer
 * statistics). */
#define VECTOR_LAYOUT "[{\"name\":\"w\",\"kind\":\"vector\",\"shape\":[2]}]"

/* Post step @t with the loss @loss (NaN: none): on the su layout, or on
 * VECTOR_LAYOUT when @vector. */
static void post_step_of(const char *base, const char *id, long t, double loss, int vector)
{
    double g[SU_D];
    su_grad(t, 0.3, g);
    json_t *b = vector ? json_pack("{s:i,s:[o]}", "step", (int)t, "gradients",
                                   su_tensor("w", json_pack("[i]", 2), g, 2))
                       : su_step_json(t, g, 0);
    if (!isnan(loss))
        json_object_set_new(b, "loss", json_real(loss));
    char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17));
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", id);
    json_decref(su_call(base, "POST", path, text, 200, NULL));
    free(text);
    json_decref(b);
}

static void post_step(const char *base, const char *id, long t, double loss)
{
    post_step_of(base, id, t, loss, 0);
}

/* POST /v1/sessions on the su layout (@vector: VECTOR_LAYOUT), @more
 * members after it. */
static json_t *create_of(const char *base, const char *optimizer, const char *config,
                         const char *more, int vector, char id[33])
{
    json_t *lj = su_layout_json();
    char *layout = json_dumps(lj, JSON_COMPACT);
    json_decref(lj);
    char body[2048];
    snprintf(body, sizeof body, "{\"optimizer\":\"%s\",\"config\":%s,\"layout\":%s%s}", optimizer,
             config, vector ? VECTOR_LAYOUT : layout, more);
    free(layout);
    json_t *s = su_call(base, "POST", "/v1/sessions", body, 201, NULL);
    snprintf(id, 33, "%s", json_string_value(json_object_get(s, "id")));
    return s;
}

static json_t *create(const char *base, const char *optimizer, const char *config, const char *more,
                      char id[33])
{
    return create_of(base, optimizer, config, more, 0, id);
}

/* Every step of @id after @since, following next_since with pages of
 * @size; the steps in order go to @steps (counted in *@n). */
static void read_all(const char *base, const char *id, long since, int size, long *steps, int *n)
{
    char q[64];
    *n = 0;
    for (int pages = 0; pages < 100; pages++) {
        snprintf(q, sizeof q, "?since=%ld&page_size=%d", since, size);
        json_t *p = get_steps(base, id, q);
        json_t *arr = json_object_get(p, "steps"), *e;
        size_t i;
        assert_true(json_array_size(arr) <= (size_t)size);
        json_array_foreach(arr, i, e) steps[(*n)++] =
            (long)json_integer_value(json_object_get(e, "step"));
        json_t *next = json_object_get(p, "next_since");
        if (next) {
            assert_int_equal(json_array_size(arr), size); /* only a full page has a next */
            assert_int_equal(json_integer_value(next), steps[*n - 1]);
            since = (long)json_integer_value(next);
        }
        json_decref(p);
        if (!next)
            return;
    }
    fail_msg("next_since never ended");
}

static void test_pages_and_bounds(void **state)
{
    struct su_fx *f = *state;
    char id[33];
    json_t *s = create(f->base, "sgd", "{\"lr\":0.1}", ",\"history_steps\":5", id);
    assert_int_equal(json_integer_value(json_object_get(s, "history_steps")), 5);
    json_decref(s);
    for (long t = 1; t <= 7; t++)
        post_step(f->base, id, t, NAN);
    long steps[16];
    int n;
    for (int size = 1; size <= 6; size++) {
        read_all(f->base, id, 0, size, steps, &n);
        assert_int_equal(n, 5);
        for (int i = 0; i < n; i++)
            assert_int_equal(steps[i], 3 + i); /* the last 5 of 7 */
    }
    read_all(f->base, id, 5, 2, steps, &n);
    assert_int_equal(n, 2);
    assert_int_equal(steps[0], 6);
    json_t *p = get_steps(f->base, id, "?since=7");
    assert_int_equal(json_array_size(json_object_get(p, "steps")), 0);
    assert_null(json_object_get(p, "next_since"));
    assert_int_equal(json_integer_value(json_object_get(p, "latest_step")), 7);
    assert_int_equal(json_integer_value(json_object_get(p, "oldest_step")), 3);
    json_decref(p);
    /* No loss sent: none in the report. */
    p = get_steps(f->base, id, "?since=6");
    json_t *r = json_object_get(json_array_get(json_object_get(p, "steps"), 0), "report");
    assert_string_equal(json_string_value(json_object_get(r, "optimizer")), "sgd");
    assert_null(json_object_get(r, "loss"));
    json_decref(p);
    /* PATCH lowers the bound at once; null goes back to the daemon's. */
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    s = su_call(f->base, "PATCH", path, "{\"history_steps\":2}", 200, NULL);
    assert_int_equal(json_integer_value(json_object_get(s, "history_steps")), 2);
    json_decref(s);
    read_all(f->base, id, 0, 100, steps, &n);
    assert_int_equal(n, 2);
    assert_int_equal(steps[0], 6);
    s = su_call(f->base, "PATCH", path, "{\"history_steps\":null}", 200, NULL);
    assert_true(json_is_null(json_object_get(s, "history_steps")));
    json_decref(s);
    post_step(f->base, id, 8, NAN);
    read_all(f->base, id, 0, 100, steps, &n);
    assert_int_equal(n, 3); /* the default (1000) keeps the rest */
    assert_int_equal(steps[2], 8);
}

/* The loss sent with a step is in the report of every kind, as sent;
 * enums are names, as in the config. */
static void test_loss_and_enums(void **state)
{
    struct su_fx *f = *state;
    const char *kinds[][2] = {{"adagrad_diag", "{\"lr\":0.1}"},
                              {"mbag", "{\"lr\":0.1}"},
                              {"kfac", "{\"mode\":\"simple\",\"weight_decay\":0}"}};
    for (size_t k = 0; k < 3; k++) {
        char id[33];
        int vector = strcmp(kinds[k][0], "kfac") == 0;
        json_decref(create_of(f->base, kinds[k][0], kinds[k][1], "", vector, id));
        for (long t = 1; t <= 3; t++)
            post_step_of(f->base, id, t, 10.0 / (double)t + 0.125, vector);
        json_t *p = get_steps(f->base, id, "");
        json_t *arr = json_object_get(p, "steps"), *e;
        size_t i;
        assert_int_equal(json_array_size(arr), 3);
        json_array_foreach(arr, i, e)
        {
            json_t *r = json_object_get(e, "report");
            assert_string_equal(json_string_value(json_object_get(r, "optimizer")), kinds[k][0]);
            assert_true(json_real_value(json_object_get(r, "loss")) ==
                        10.0 / (double)(i + 1) + 0.125);
            assert_int_equal(json_integer_value(json_object_get(e, "callbacks")), 0);
        }
        if (strcmp(kinds[k][0], "kfac") == 0) {
            json_t *r = json_object_get(json_array_get(arr, 2), "report");
            assert_string_equal(json_string_value(json_object_get(r, "mode")), "simple");
            assert_string_equal(json_string_value(json_object_get(r, "fisher")), "true");
        }
        json_decref(p);
    }
}

/* HF answers callbacks: each step's row counts the callbacks its trainer
 * answered, and its time split has the four phases. After a restart the
 * daemon serves the same history, byte for byte. */
static void test_callbacks_timing_restart(void **state)
{
    struct su_fx *f = *state;
    curv_layout *l = su_layout_new();
    struct su_trainer tr = {.base = f->base, .layout = l};
    su_trainer_create(&tr, "hf", json_pack("{s:i,s:s}", "cg_max", 4, "precond", "none"));
    /* h(θ) = 1 + ½ (θ - 1)ᵀ 2I (θ - 1) from θ = 0. */
    double G[SU_D * SU_D] = {0}, theta[SU_D] = {0}, g[SU_D], u[SU_D];
    for (size_t i = 0; i < SU_D; i++)
        G[i * SU_D + i] = 2;
    size_t answered[4];
    double sent[4];
    for (long t = 1; t <= 3; t++) {
        double h = 1;
        for (size_t i = 0; i < SU_D; i++) {
            g[i] = 2 * (theta[i] - 1);
            h += (theta[i] - 1) * (theta[i] - 1);
        }
        tu_quad q = {.d = SU_D, .G = G, .g = g, .h0 = h};
        struct su_step s = {.t = t, .grad = g, .loss = h};
        answered[t] = su_trainer_step(&tr, &s, tu_quad_answer, &q, u);
        sent[t] = h;
        assert_true(answered[t] > 0);
        for (size_t i = 0; i < SU_D; i++)
            theta[i] += u[i];
    }
    struct su_resp before;
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", tr.id);
    json_t *p = su_call(f->base, "GET", path, NULL, 200, &before);
    json_t *arr = json_object_get(p, "steps"), *e;
    size_t i;
    assert_int_equal(json_array_size(arr), 3);
    json_array_foreach(arr, i, e)
    {
        assert_int_equal(json_integer_value(json_object_get(e, "callbacks")), answered[i + 1]);
        json_t *r = json_object_get(e, "report");
        assert_true(json_real_value(json_object_get(r, "loss")) == sent[i + 1]);
        json_t *tm = json_object_get(e, "timing_ms");
        const char *phases[] = {"decode", "step", "encode", "save"};
        for (size_t k = 0; k < 4; k++)
            assert_true(json_number_value(json_object_get(tm, phases[k])) >= 0);
        assert_int_equal(json_object_size(tm), 4);
        assert_true(strlen(json_string_value(json_object_get(e, "at"))) == 24);
    }
    json_decref(p);
    su_fx_restart(f);
    struct su_resp after;
    json_decref(su_call(f->base, "GET", path, NULL, 200, &after));
    assert_string_equal(after.body, before.body);
    su_resp_free(&before);
    su_resp_free(&after);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pages_and_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loss_and_enums, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callbacks_timing_restart, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
