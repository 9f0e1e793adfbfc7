/* SPDX-License-Identifier: MIT */
/*
 * libcurvc against a live daemon (CURVD_URL, started by run-tests.sh):
 * sessions, exact updates in both encodings, replays, problems as
 * errors, and HF's callbacks answered on a least-squares problem whose
 * solution the test computes by Gauss-Jordan elimination.
 */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "curvc.h"
#include "curvc_int.h" /* the retry clock, for the fake one */
#include "fixture.h"

static void grads(unsigned seed, double *g)
{
    for (int i = 0; i < DIM; i++) {
        seed = seed * 1664525u + 1013904223u;
        g[i] = (double)(seed >> 8) / (1 << 23) - 1.0;
    }
}

static void step_ok(curvc_session *s, const double *g, curvc_encoding enc, double *update)
{
    curvc_error err;
    curvc_step_in in = {.grad = g};
    if (curvc_step(s, &in, enc, NULL, NULL, update, &err) != CURVC_OK)
        fail_msg("step: %s", err.text);
}

static void test_session_lifecycle(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = create(c, "sgd", "{\"lr\": 0.5}"), *again = NULL;
    curvc_error err;
    char *json = NULL;
    assert_int_equal(curvc_session_dim(s), DIM);
    assert_int_equal(curvc_session_steps(s), 0);
    assert_int_equal(strlen(curvc_session_id(s)), 32);
    assert_int_equal(curvc_session_patch(s, "{\"lr\": 0.25}", &err), CURVC_OK);
    assert_int_equal(curvc_session_get_json(s, &json, &err), CURVC_OK);
    assert_non_null(strstr(json, "\"lr\":0.25"));
    free(json);
    assert_int_equal(curvc_session_open(c, curvc_session_id(s), &again, &err), CURVC_OK);
    assert_int_equal(curvc_session_dim(again), DIM);
    curvc_session_free(again);
    assert_int_equal(curvc_session_delete(s, &err), CURVC_OK);
    again = NULL;
    assert_int_equal(curvc_session_open(c, curvc_session_id(s), &again, &err), CURVC_E_PROBLEM);
    assert_null(again);
    assert_int_equal(err.status, 404);
    assert_string_equal(err.reason, "NOT_FOUND");
    curvc_session_free(s);
    curvc_client_free(c);
}

static void test_close_deletes_unless_kept(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_error err;
    curvc_session *s = create(c, "sgd", NULL), *opened = NULL, *again = NULL;
    char id[40];
    snprintf(id, sizeof id, "%s", curvc_session_id(s));
    assert_int_equal(curvc_session_set_idle_ttl(s, 3600, &err), CURVC_OK);
    assert_int_equal(curvc_session_set_idle_ttl(s, -1, &err), CURVC_OK);
    /* Opened by id: closing it keeps the session. */
    assert_int_equal(curvc_session_open(c, id, &opened, &err), CURVC_OK);
    assert_int_equal(curvc_session_close(opened, &err), CURVC_OK);
    assert_int_equal(curvc_session_open(c, id, &again, &err), CURVC_OK);
    curvc_session_free(again);
    again = NULL;
    /* Created here: closing deletes it. */
    assert_int_equal(curvc_session_close(s, &err), CURVC_OK);
    assert_int_equal(curvc_session_open(c, id, &again, &err), CURVC_E_PROBLEM);
    assert_int_equal(err.status, 404);
    /* Kept: closing leaves it. */
    s = create(c, "sgd", NULL);
    snprintf(id, sizeof id, "%s", curvc_session_id(s));
    curvc_session_set_keep(s, 1);
    assert_int_equal(curvc_session_close(s, &err), CURVC_OK);
    assert_int_equal(curvc_session_open(c, id, &again, &err), CURVC_OK);
    /* Already deleted: closing is still OK. */
    curvc_session_set_keep(again, 0);
    assert_int_equal(curvc_session_delete(again, &err), CURVC_OK);
    assert_int_equal(curvc_session_close(again, &err), CURVC_OK);
    assert_int_equal(curvc_session_close(NULL, &err), CURVC_OK);
    curvc_client_free(c);
}

static void test_sgd_update_is_exact_in_both_encodings(void **state)
{
    (void)state;
    curvc_client *c = client();
    for (int enc = CURVC_JSON; enc <= CURVC_BINARY; enc++) {
        curvc_session *s = create(c, "sgd", "{\"lr\": 0.5}");
        double g[DIM], u[DIM];
        grads(1, g);
        step_ok(s, g, (curvc_encoding)enc, u);
        for (int i = 0; i < DIM; i++)
            assert_true(u[i] == -0.5 * g[i]);
        assert_int_equal(curvc_session_steps(s), 1);
        curvc_session_delete(s, NULL);
        curvc_session_free(s);
    }
    curvc_client_free(c);
}

static void test_encodings_are_bit_identical(void **state)
{
    (void)state;
    curvc_client *c = client();
    double u[2][3][DIM];
    for (int enc = CURVC_JSON; enc <= CURVC_BINARY; enc++) {
        curvc_session *s = create(c, "adagrad_bma", "{\"lr\": 0.1}");
        for (int k = 0; k < 3; k++) {
            double g[DIM];
            grads(10u + (unsigned)k, g);
            step_ok(s, g, (curvc_encoding)enc, u[enc][k]);
        }
        curvc_session_delete(s, NULL);
        curvc_session_free(s);
    }
    assert_memory_equal(u[0], u[1], sizeof u[0]);
    curvc_client_free(c);
}

static void test_a_step_posted_twice_is_applied_once(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *a = create(c, "adagrad_diag", "{\"lr\": 0.1}"), *b = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_open(c, curvc_session_id(a), &b, &err), CURVC_OK);
    double g[DIM], ua[DIM], ub[DIM];
    grads(20, g);
    step_ok(a, g, CURVC_BINARY, ua);
    step_ok(b, g, CURVC_JSON, ub); /* b still believes step 1 is next: a replay */
    assert_memory_equal(ua, ub, sizeof ua);
    step_ok(a, g, CURVC_BINARY, ua);
    step_ok(a, g, CURVC_BINARY, ua);
    /* b is now two steps behind: refused, with the step to post. */
    curvc_step_in in = {.grad = g};
    assert_int_equal(curvc_step(b, &in, CURVC_JSON, NULL, NULL, ub, &err), CURVC_E_PROBLEM);
    assert_int_equal(err.status, 409);
    assert_string_equal(err.reason, "STEP_OUT_OF_ORDER");
    assert_string_equal(err.field.path, "/step");
    assert_string_equal(err.field.expected, "4");
    curvc_session_delete(a, NULL);
    curvc_session_free(a);
    curvc_session_free(b);
    curvc_client_free(c);
}

/* A step posted again with another gradient (a second trainer on the
 * session) is refused with its own status, and applies nothing. */
static void test_another_request_for_a_step_is_refused(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *a = create(c, "adagrad_diag", "{\"lr\": 0.1}"), *b = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_open(c, curvc_session_id(a), &b, &err), CURVC_OK);
    double g[DIM], h[DIM], ua[DIM], ub[DIM], again[DIM];
    grads(30, g);
    grads(31, h);
    step_ok(a, g, CURVC_JSON, ua);
    curvc_step_in in = {.grad = h};
    assert_int_equal(curvc_step(b, &in, CURVC_BINARY, NULL, NULL, ub, &err), CURVC_E_STEP_MISMATCH);
    assert_string_equal(curvc_status_name(CURVC_E_STEP_MISMATCH), "CURVC_E_STEP_MISMATCH");
    assert_int_equal(err.status, 422);
    assert_string_equal(err.reason, "STEP_MISMATCH");
    assert_memory_equal(err.field.expected, "mm3-128:", 8);
    /* The same request from b is the replay: a's update, nothing applied twice. */
    step_ok(b, g, CURVC_BINARY, ub);
    assert_memory_equal(ua, ub, sizeof ua);
    step_ok(a, g, CURVC_JSON, again);
    assert_int_equal(curvc_session_steps(a), 2);
    curvc_session_delete(a, NULL);
    curvc_session_free(a);
    curvc_session_free(b);
    curvc_client_free(c);
}

static void test_problems_become_errors(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_create(c, "nope", LAYOUT, 2, NULL, &s, &err), CURVC_E_PROBLEM);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.reason, "UNKNOWN_OPTIMIZER");
    assert_string_equal(err.field.path, "/optimizer");
    assert_string_equal(err.field.got, "nope");
    assert_non_null(strstr(err.text, "UNKNOWN_OPTIMIZER"));
    s = create(c, "adagrad_diag", NULL);
    for (int enc = CURVC_JSON; enc <= CURVC_BINARY; enc++) {
        double g[DIM], u[DIM] = {42};
        grads(30, g);
        g[8] = NAN;
        curvc_step_in in = {.grad = g};
        assert_int_equal(curvc_step(s, &in, (curvc_encoding)enc, NULL, NULL, u, &err),
                         CURVC_E_PROBLEM);
        assert_int_equal(err.status, 422);
        assert_string_equal(err.reason, "NON_FINITE");
        assert_non_null(strstr(err.text, "gain"));
        assert_true(u[0] == 42); /* not written */
        assert_int_equal(curvc_session_steps(s), 0);
    }
    curvc_step_in bad = {.grad = (double[DIM]){0},
                         .layers = &(curvc_layer){.block = "gain", .rows = 1},
                         .n_layers = 1};
    double u[DIM];
    assert_int_equal(curvc_step(s, &bad, CURVC_JSON, NULL, NULL, u, &err), CURVC_E_INVALID);
    assert_non_null(strstr(err.text, "'gain' is not a dense or conv2d block"));
    curvc_session_delete(s, NULL);
    curvc_session_free(s);
    curvc_client_free(c);
}

/* list, export, import and the description a session was made from. */
static void test_admin_calls(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = create(c, "adagrad_diag", "{\"lr\": 0.1}"), *t = NULL, *again = NULL;
    curvc_error err;
    double g[DIM], u[DIM];
    grads(40, g);
    step_ok(s, g, CURVC_BINARY, u);
    json_t *info = json_loads(curvc_session_info(s), 0, NULL); /* as created: step 0 */
    assert_string_equal(json_string_value(json_object_get(info, "id")), curvc_session_id(s));
    assert_int_equal(json_integer_value(json_object_get(info, "step")), 0);
    json_decref(info);

    /* Every session once over pages of one, this one among them. */
    char *text = NULL, token[256] = "";
    int found = 0;
    for (int pages = 0;; pages++) {
        assert_int_equal(curvc_session_list(c, 1, token, &text, &err), CURVC_OK);
        json_t *page = json_loads(text, 0, NULL);
        free(text);
        json_t *items = json_object_get(page, "sessions");
        assert_int_equal(json_array_size(items), 1);
        found += strcmp(json_string_value(json_object_get(json_array_get(items, 0), "id")),
                        curvc_session_id(s)) == 0;
        const char *next = json_string_value(json_object_get(page, "next_page_token"));
        snprintf(token, sizeof token, "%s", next ? next : "");
        json_decref(page);
        if (!next)
            break;
        assert_true(pages < 1000);
    }
    assert_int_equal(found, 1);
    assert_int_equal(curvc_session_list(c, 1, "not a token", &text, &err), CURVC_E_INVALID);
    assert_int_equal(curvc_session_list(c, 0, NULL, &text, &err), CURVC_E_INVALID);
    assert_int_equal(curvc_session_list(c, 1001, NULL, &text, &err), CURVC_E_PROBLEM);
    assert_string_equal(err.reason, "INVALID_QUERY");

    /* Export, import: the copy is at the same step with the same state. */
    unsigned char *blob = NULL, *copy = NULL;
    size_t len = 0, len2 = 0;
    assert_int_equal(curvc_session_export(s, &blob, &len, &err), CURVC_OK);
    assert_int_equal(curvc_session_import(c, blob, len, &t, &err), CURVC_OK);
    assert_string_not_equal(curvc_session_id(t), curvc_session_id(s));
    assert_int_equal(curvc_session_steps(t), 1);
    assert_int_equal(curvc_session_dim(t), DIM);
    assert_int_equal(curvc_session_export(t, &copy, &len2, &err), CURVC_OK);
    assert_int_equal(len2, len);
    assert_memory_equal(copy, blob, len);
    double ut[DIM];
    grads(41, g);
    step_ok(s, g, CURVC_JSON, u);
    step_ok(t, g, CURVC_JSON, ut);
    assert_memory_equal(u, ut, sizeof u);
    free(copy);

    /* Refusals. */
    blob[len / 2] ^= 0xff;
    assert_int_equal(curvc_session_import(c, blob, len, &again, &err), CURVC_E_PROBLEM);
    assert_string_equal(err.reason, "INVALID_STATE");
    assert_null(again);
    assert_int_equal(curvc_session_import(c, blob, 0, &again, &err), CURVC_E_INVALID);
    assert_int_equal(curvc_session_export(s, NULL, &len, &err), CURVC_E_INVALID);
    assert_int_equal(curvc_session_open(c, "../state", &again, &err), CURVC_E_INVALID);
    assert_non_null(strstr(err.text, "not a session id"));
    assert_int_equal(curvc_session_delete(t, &err), CURVC_OK);
    assert_int_equal(curvc_session_export(t, &copy, &len2, &err), CURVC_E_PROBLEM);
    assert_int_equal(err.status, 404);
    free(blob);
    curvc_session_delete(s, NULL);
    curvc_session_free(s);
    curvc_session_free(t);
    curvc_client_free(c);
}

static void test_nothing_listening(void **state)
{
    (void)state;
    curvc_client *c = curvc_client_new("http://127.0.0.1:9", NULL);
    curvc_client_set_retries(c, 1, 0.001);
    curvc_session *s = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_create(c, "sgd", LAYOUT, 2, NULL, &s, &err), CURVC_E_TRANSPORT);
    assert_non_null(strstr(err.text, "after 2 tries"));
    assert_int_equal(curvc_client_requests(c), 2);
    curvc_client_free(c);
}

/* ---- Retries on a fake clock: nothing sleeps ---- */

static double fake_now;
static double fake_slept[256];
static size_t fake_sleeps;

static double fake_clock(void)
{
    return fake_now;
}

static void fake_sleep(double s)
{
    assert_true(s >= 0);
    if (fake_sleeps < 256)
        fake_slept[fake_sleeps] = s;
    fake_sleeps++;
    fake_now += s;
}

static double top_jitter(curvc_client *c)
{
    (void)c;
    return 1.0;
}

static curvc_client *fake_client(double (*jitter)(curvc_client *))
{
    curvc_client *c = curvc_client_new("http://127.0.0.1:9", NULL);
    c->clock = fake_clock;
    c->sleep = fake_sleep;
    if (jitter)
        c->jitter = jitter;
    fake_now = 1000;
    fake_sleeps = 0;
    return c;
}

static void test_default_retry_budget(void **state)
{
    (void)state;
    curvc_client *c = fake_client(top_jitter);
    curvc_session *s = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_create(c, "sgd", LAYOUT, 2, NULL, &s, &err), CURVC_E_TRANSPORT);
    double total = 0;
    for (size_t k = 0; k < fake_sleeps; k++)
        total += fake_slept[k];
    assert_true(fabs(total - 30.0) < 1e-9); /* the whole budget, no more */
    /* The jitter at its top: 0.1 s doubling, capped at 5 s; the last cut. */
    for (size_t k = 0; k + 1 < fake_sleeps; k++) {
        double want = 0.1 * pow(2, (double)k);
        assert_true(fabs(fake_slept[k] - (want < 5 ? want : 5)) < 1e-12);
    }
    char want[96];
    snprintf(want, sizeof want, "after %zu tries in 30.0 s", fake_sleeps + 1);
    if (!strstr(err.text, "cannot reach 127.0.0.1:9") || !strstr(err.text, want))
        fail_msg("%s (want the host and '%s')", err.text, want);
    assert_int_equal(curvc_client_requests(c), fake_sleeps + 1);
    curvc_client_free(c);
}

static void test_retry_jitter_and_settings(void **state)
{
    (void)state;
    curvc_client *c = fake_client(NULL); /* the client's own jitter */
    curvc_client_set_retry_budget(c, 120, 3);
    curvc_client_set_retries(c, UINT_MAX, 0.2);
    curvc_error err;
    curvc_session *s = NULL;
    assert_int_equal(curvc_session_create(c, "sgd", LAYOUT, 2, NULL, &s, &err), CURVC_E_TRANSPORT);
    assert_true(fake_sleeps > 30 && fake_sleeps < 256);
    double capped = 0;
    size_t n_capped = 0;
    for (size_t k = 0; k + 1 < fake_sleeps; k++) {
        double cap = 0.2 * pow(2, (double)(k < 60 ? k : 60));
        cap = cap < 3 ? cap : 3;
        assert_true(fake_slept[k] >= 0 && fake_slept[k] <= cap);
        if (cap == 3) {
            capped += fake_slept[k];
            n_capped++;
        }
    }
    /* Uniform over [0, 3]: the mean is near 1.5 s, not 3 s (no jitter). */
    assert_true(n_capped > 20);
    assert_true(capped / (double)n_capped > 0.9 && capped / (double)n_capped < 2.1);
    curvc_client_free(c);
    /* A count caps it too; a budget of 0 means one try. */
    c = fake_client(top_jitter);
    curvc_client_set_retries(c, 3, 0.1);
    assert_int_equal(curvc_session_create(c, "sgd", LAYOUT, 2, NULL, &s, &err), CURVC_E_TRANSPORT);
    assert_int_equal(fake_sleeps, 3);
    curvc_client_free(c);
    c = fake_client(top_jitter);
    curvc_client_set_retry_budget(c, 0, 0);
    assert_int_equal(curvc_session_create(c, "sgd", LAYOUT, 2, NULL, &s, &err), CURVC_E_TRANSPORT);
    assert_int_equal(fake_sleeps, 0);
    assert_non_null(strstr(err.text, "after 1 tries"));
    curvc_client_free(c);
}

/* ---- HF on least squares: h(θ) = 1/(2m) ‖Aθ − b‖², G = AᵀA/m exactly. ---- */

enum { M = 8, N = 4 };
static const curvc_block LSQ[] = {{"theta", "vector", {N}, 0}};
/* No preconditioner (it would need grad_sq); little damping: CG solves
 * this 4-dimensional quadratic exactly. */
#define HF_CONFIG "{\"precond\": \"none\", \"lambda\": 1e-6}"

struct lsq {
    double a[M][N], b[M];
    int calls[4]; /* by request kind */
};

static double lsq_loss(const struct lsq *p, const double *theta)
{
    double h = 0;
    for (int i = 0; i < M; i++) {
        double r = -p->b[i];
        for (int j = 0; j < N; j++)
            r += p->a[i][j] * theta[j];
        h += 0.5 * r * r / M;
    }
    return h;
}

static void lsq_gv(const struct lsq *p, const double *v, double *out)
{
    for (int j = 0; j < N; j++)
        out[j] = 0;
    for (int i = 0; i < M; i++) {
        double av = 0;
        for (int j = 0; j < N; j++)
            av += p->a[i][j] * v[j];
        for (int j = 0; j < N; j++)
            out[j] += p->a[i][j] * av / M;
    }
}

static double theta_now[N];

static int lsq_oracle(void *user, const curvc_request *req, double *answer)
{
    struct lsq *p = user;
    p->calls[req->kind]++;
    for (size_t k = 0; k < req->n_vectors; k++) {
        const double *v = req->vectors + k * N;
        if (req->kind == CURVC_REQ_CURVATURE_PRODUCT) {
            lsq_gv(p, v, answer + k * N);
        } else if (req->kind == CURVC_REQ_LOSS) {
            double t[N];
            for (int j = 0; j < N; j++)
                t[j] = theta_now[j] + v[j];
            answer[k] = lsq_loss(p, t);
        } else {
            double gv[N];
            lsq_gv(p, v, gv);
            for (size_t l = 0; l < req->n_vectors; l++) {
                double d = 0;
                for (int j = 0; j < N; j++)
                    d += req->vectors[l * N + j] * gv[j];
                answer[l * req->n_vectors + k] = d;
            }
        }
    }
    return 0;
}

/* θ* from the normal equations AᵀA θ = Aᵀb by Gauss-Jordan elimination. */
static void lsq_solution(const struct lsq *p, double *theta)
{
    double m[N][N + 1] = {{0}};
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            for (int k = 0; k < N; k++)
                m[j][k] += p->a[i][j] * p->a[i][k];
            m[j][N] += p->a[i][j] * p->b[i];
        }
    for (int col = 0; col < N; col++) {
        int piv = col;
        for (int r = col + 1; r < N; r++)
            if (fabs(m[r][col]) > fabs(m[piv][col]))
                piv = r;
        for (int k = 0; k <= N; k++) {
            double t = m[col][k];
            m[col][k] = m[piv][k];
            m[piv][k] = t;
        }
        for (int r = 0; r < N; r++) {
            double f = r == col ? 0 : m[r][col] / m[col][col];
            for (int k = 0; k <= N; k++)
                m[r][k] -= f * m[col][k];
        }
    }
    for (int j = 0; j < N; j++)
        theta[j] = m[j][N] / m[j][j];
}

static void test_hf_callbacks_solve_least_squares(void **state)
{
    (void)state;
    curvc_client *c = client();
    struct lsq p = {{{0}}, {0}, {0}};
    unsigned seed = 7;
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            seed = seed * 1664525u + 1013904223u;
            p.a[i][j] = (double)(seed >> 8) / (1 << 23) - 1.0;
        }
        p.b[i] = (double)i - 3.5;
    }
    double want[N];
    lsq_solution(&p, want);
    for (int enc = CURVC_JSON; enc <= CURVC_BINARY; enc++) {
        curvc_session *s = NULL;
        curvc_error err;
        if (curvc_session_create(c, "hf", LSQ, 1, HF_CONFIG, &s, &err) != CURVC_OK)
            fail_msg("create hf: %s", err.text);
        memset(theta_now, 0, sizeof theta_now);
        memset(p.calls, 0, sizeof p.calls);
        for (int k = 0; k < 8; k++) {
            double g[N] = {0}, r[M], u[N];
            for (int i = 0; i < M; i++) {
                r[i] = -p.b[i];
                for (int j = 0; j < N; j++)
                    r[i] += p.a[i][j] * theta_now[j];
                for (int j = 0; j < N; j++)
                    g[j] += p.a[i][j] * r[i] / M;
            }
            curvc_step_in in = {.grad = g, .loss = lsq_loss(&p, theta_now), .has_loss = 1};
            if (curvc_step(s, &in, (curvc_encoding)enc, lsq_oracle, &p, u, &err) != CURVC_OK)
                fail_msg("hf step %d: %s", k + 1, err.text);
            for (int j = 0; j < N; j++)
                theta_now[j] += u[j];
        }
        assert_true(p.calls[CURVC_REQ_CURVATURE_PRODUCT] > 0 && p.calls[CURVC_REQ_LOSS] > 0);
        for (int j = 0; j < N; j++)
            assert_true(fabs(theta_now[j] - want[j]) < 1e-6 * (1 + fabs(want[j])));
        curvc_session_delete(s, NULL);
        curvc_session_free(s);
    }
    curvc_client_free(c);
}

static int refuse(void *user, const curvc_request *req, double *answer)
{
    (void)user;
    (void)req;
    (void)answer;
    return -1;
}

static int nan_oracle(void *user, const curvc_request *req, double *answer)
{
    (void)user;
    for (size_t i = 0; i < req->n_values; i++)
        answer[i] = i == req->n_values - 1 ? NAN : 0.0;
    return 0;
}

/* A refusing or missing oracle abandons the step; so does a NaN loss or
 * callback answer, refused before it is sent with the callback, entry
 * and value named. Nothing is applied. */
static void test_a_refusing_oracle_abandons_the_step(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_create(c, "hf", LSQ, 1, HF_CONFIG, &s, &err), CURVC_OK);
    double g[N] = {1, 2, 3, 4}, u[N];
    curvc_step_in in = {.grad = g, .loss = 1, .has_loss = 1};
    assert_int_equal(curvc_step(s, &in, CURVC_BINARY, refuse, NULL, u, &err), CURVC_E_CALLBACK);
    assert_non_null(strstr(err.text, "refused by the oracle"));
    assert_int_equal(curvc_step(s, &in, CURVC_BINARY, NULL, NULL, u, &err), CURVC_E_CALLBACK);
    assert_non_null(strstr(err.text, "no oracle"));
    in.loss = NAN;
    assert_int_equal(curvc_step(s, &in, CURVC_JSON, lsq_oracle, NULL, u, &err), CURVC_E_INVALID);
    assert_non_null(strstr(err.text, "step 1: the loss is nan"));
    in.loss = 1;
    assert_int_equal(curvc_step(s, &in, CURVC_JSON, nan_oracle, NULL, u, &err), CURVC_E_CALLBACK);
    assert_non_null(strstr(err.text, "callback's answer, value"));
    assert_non_null(strstr(err.text, "is nan"));
    assert_int_equal(curvc_session_steps(s), 0);
    curvc_session_delete(s, NULL);
    curvc_session_free(s);
    curvc_client_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_lifecycle),
        cmocka_unit_test(test_close_deletes_unless_kept),
        cmocka_unit_test(test_sgd_update_is_exact_in_both_encodings),
        cmocka_unit_test(test_encodings_are_bit_identical),
        cmocka_unit_test(test_a_step_posted_twice_is_applied_once),
        cmocka_unit_test(test_another_request_for_a_step_is_refused),
        cmocka_unit_test(test_problems_become_errors),
        cmocka_unit_test(test_admin_calls),
        cmocka_unit_test(test_nothing_listening),
        cmocka_unit_test(test_default_retry_budget),
        cmocka_unit_test(test_retry_jitter_and_settings),
        cmocka_unit_test(test_hf_callbacks_solve_least_squares),
        cmocka_unit_test(test_a_refusing_oracle_abandons_the_step),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
