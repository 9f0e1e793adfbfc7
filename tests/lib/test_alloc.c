/* SPDX-License-Identifier: MIT */
/*
 * Failing-allocator run: the library's malloc/calloc/realloc/strdup are
 * wrapped at link time (-Wl,--wrap=...) so that the k-th allocation from
 * an arming point fails. Each public operation is run with k = 0, 1, 2, ...
 * until it completes without meeting an injected failure; every failing
 * run must return CURV_E_NOMEM, leave its object unchanged, and leak
 * nothing (LeakSanitizer checks the last point under `make asan`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kfac_tri.h"
#include "testutil.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t sz);
void *__real_realloc(void *p, size_t n);
char *__real_strdup(const char *s);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t sz);
void *__wrap_realloc(void *p, size_t n);
char *__wrap_strdup(const char *s);

static long countdown = -1; /* allocations left before the failure; -1: off */
static int injected;        /* the armed failure happened */

static int should_fail(void)
{
    if (countdown < 0)
        return 0;
    if (countdown-- == 0) {
        injected = 1;
        countdown = -1;
        return 1;
    }
    return 0;
}

void *__wrap_malloc(size_t n)
{
    return should_fail() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t sz)
{
    return should_fail() ? NULL : __real_calloc(n, sz);
}

void *__wrap_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : __real_realloc(p, n);
}

char *__wrap_strdup(const char *s)
{
    return should_fail() ? NULL : __real_strdup(s);
}

static void arm(long k)
{
    countdown = k;
    injected = 0;
}

static void disarm(void)
{
    countdown = -1;
}

/* fc1: dense 3 x (4 + bias); conv: 2 x (2*2*2 + bias); gain: vector 5. */
static const tu_mixed_spec MIXED = {{"fc1", 3, 4}, {"conv", 2, 2, 2, 2}, {"gain", 5}, 0};

static void test_layout_and_config(void **unused)
{
    (void)unused;
    for (long k = 0;; k++) {
        curv_error err;
        arm(k);
        curv_layout *l = curv_layout_new();
        curv_status st = l ? CURV_OK : CURV_E_NOMEM;
        for (int i = 0; st == CURV_OK && i < 12; i++) {
            char name[16];
            snprintf(name, sizeof name, "b%d", i);
            st = curv_layout_add_vector(l, name, 3, &err);
        }
        curv_config *c = st == CURV_OK ? curv_config_new() : NULL;
        if (st == CURV_OK)
            st = c ? curv_config_set_str(c, "lr_schedule", "step", &err) : CURV_E_NOMEM;
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            assert_int_equal(curv_layout_dim(l), 36);
        } else {
            assert_int_equal(st, CURV_E_NOMEM);
        }
        curv_config_free(c);
        curv_layout_free(l);
        if (!injected)
            break;
    }
}

/* curv_opt_new under failing allocations, until it succeeds. */
static curv_opt *create_failing(curv_opt_kind kind, const curv_layout *l, const curv_config *c)
{
    curv_opt *o = NULL;
    for (long k = 0;; k++) {
        arm(k);
        curv_status st = curv_opt_new(kind, l, c, &o, NULL);
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            return o;
        }
        assert_int_equal(st, CURV_E_NOMEM);
        assert_null(o);
    }
}

/* curv_opt_state_bytes under failing allocations: NOMEM with *bytes
 * untouched, until it gives the same answer as with memory. */
static void state_bytes_failing(curv_opt_kind kind, const curv_layout *l, const curv_config *c)
{
    size_t want = 0;
    assert_int_equal(curv_opt_state_bytes(kind, l, c, &want, NULL), CURV_OK);
    for (long k = 0;; k++) {
        size_t got = 7;
        arm(k);
        curv_status st = curv_opt_state_bytes(kind, l, c, &got, NULL);
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            assert_int_equal(got, want);
            return;
        }
        assert_int_equal(st, CURV_E_NOMEM);
        assert_int_equal(got, 7);
    }
}

/* Save (with and without parts) and load @o under failing allocations. */
static void save_load_failing(const curv_opt *o)
{
    unsigned char *blob = NULL;
    size_t len = 0;
    for (long k = 0;; k++) {
        arm(k);
        curv_status st = curv_opt_save(o, &blob, &len, NULL);
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            break;
        }
        assert_int_equal(st, CURV_E_NOMEM);
    }
    for (long k = 0;; k++) { /* the same blob, with its parts */
        unsigned char *b2 = NULL;
        curv_state_part *p = NULL;
        size_t len2 = 0, n = 0;
        arm(k);
        curv_status st = curv_opt_save_parts(o, &b2, &len2, &p, &n, NULL);
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            assert_int_equal(len2, len);
            assert_memory_equal(b2, blob, len);
            assert_int_equal(p[n - 1].offset + p[n - 1].len, len);
            curv_free(b2);
            curv_free(p);
            break;
        }
        assert_int_equal(st, CURV_E_NOMEM);
        assert_null(b2);
        assert_null(p);
    }
    for (long k = 0;; k++) {
        curv_opt *o2 = NULL;
        arm(k);
        curv_status st = curv_opt_load(blob, len, &o2, NULL);
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            tu_assert_unchanged(o2, blob, len);
            curv_opt_free(o2);
            break;
        }
        assert_int_equal(st, CURV_E_NOMEM);
        assert_null(o2);
    }
    curv_free(blob);
}

/* One curv_opt_step under failing allocations: every failure is NOMEM
 * and changes nothing; returns the status of the run that succeeded. */
static curv_status step_failing(curv_opt *o, const curv_step_input *in, void *u, curv_request *req)
{
    for (long k = 0;; k++) {
        size_t len;
        unsigned char *snap = tu_snapshot(o, &len);
        arm(k);
        curv_status st = curv_opt_step(o, in, u, req, NULL);
        disarm();
        if (!injected) {
            curv_free(snap);
            return st;
        }
        assert_int_equal(st, CURV_E_NOMEM);
        tu_assert_unchanged(o, snap, len);
        curv_free(snap);
    }
}

/* Create, step (float32 and float64), save and load each kind under
 * failing allocations. */
static void run_kind(curv_opt_kind kind)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    size_t d = curv_layout_dim(l);
    double *g = tu_alloc(d), *u = tu_alloc(d);
    float *gf = calloc(d, sizeof *gf), *uf = calloc(d, sizeof *uf);
    assert_non_null(gf);
    assert_non_null(uf);
    tu_rng rng;
    tu_rng_seed(&rng, 7);
    tu_fill_normal(&rng, g, d, 1.0);
    for (size_t i = 0; i < d; i++)
        gf[i] = (float)g[i];
    curv_config *c = curv_config_new();
    assert_non_null(c);
    if (kind == CURV_OPT_MBAG || kind == CURV_OPT_MBAG_EMA)
        assert_int_equal(curv_config_set_num(c, "t_sqr", 1, NULL), CURV_OK);
    state_bytes_failing(kind, l, c);
    curv_opt *o = create_failing(kind, l, c);
    for (int dt = 0; dt < 2; dt++) {
        curv_step_input in = {
            .grad = dt ? (const void *)gf : g, .len = d, .dtype = dt ? CURV_F32 : CURV_F64};
        assert_int_equal(step_failing(o, &in, dt ? (void *)uf : u, NULL), CURV_OK);
    }
    save_load_failing(o);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
    free(g);
    free(u);
    free(gf);
    free(uf);
}

/* HF: each step's start under failing allocations, its requests answered
 * by a quadratic trainer (each resume must allocate nothing), the second
 * step warm-started; then save and load, also while a request is pending. */
static void run_hf(void)
{
    curv_layout *l = tu_mixed_layout(&MIXED);
    const size_t d = curv_layout_dim(l);
    double *G = tu_alloc(d * d), *g = tu_alloc(d), *sq = tu_alloc(d), *u = tu_alloc(d);
    double *vals = tu_alloc(64 * d);
    tu_rng rng;
    tu_rng_seed(&rng, 8);
    tu_rand_spd(&rng, d, 0.1, G);
    tu_fill_normal(&rng, g, d, 1.0);
    for (size_t i = 0; i < d; i++)
        sq[i] = g[i] * g[i];
    const tu_kv kv[] = {{"cg_max", 6}};
    curv_config *c = tu_config(kv, 1);
    curv_opt *o = create_failing(CURV_OPT_HF, l, c);
    tu_quad q = {d, G, g, 1.0};
    curv_step_input in = {
        .grad = g, .len = d, .dtype = CURV_F64, .loss = 1.0, .has_loss = 1, .grad_sq = sq};
    for (int t = 0; t < 2; t++) {
        curv_request req;
        curv_status st = step_failing(o, &in, u, &req);
        while (st == CURV_NEED_INPUT) {
            if (t == 1)
                save_load_failing(o); /* a pending request: the interrupted blob */
            assert_true(req.n_values <= 64 * d);
            tu_quad_answer(&q, &req, vals);
            curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = vals};
            arm(0);
            st = curv_opt_resume(o, &resp, CURV_F64, u, &req, NULL);
            disarm();
            assert_false(injected);
        }
        assert_int_equal(st, CURV_OK);
    }
    assert_int_equal(curv_opt_steps(o), 2);
    save_load_failing(o);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
    free(G);
    free(g);
    free(sq);
    free(u);
    free(vals);
}

static void test_every_kind(void **unused)
{
    (void)unused;
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++)
        if (tu_plain_kind(k))
            run_kind((curv_opt_kind)k); /* K-FAC: test_kfac below */
    run_hf();
}

/* Run @call (a step or resume of @o) with allocation k = 0, 1, ... failing
 * until it completes; each failure is CURV_E_NOMEM and changes nothing. */
#define UNTIL_NO_FAILURE(o, call, want)                                                            \
    for (long k_ = 0;; k_++) {                                                                     \
        size_t len_;                                                                               \
        unsigned char *snap_ = tu_snapshot(o, &len_);                                              \
        arm(k_);                                                                                   \
        curv_status st_ = (call);                                                                  \
        disarm();                                                                                  \
        if (!injected) {                                                                           \
            assert_int_equal(st_, want);                                                           \
            curv_free(snap_);                                                                      \
            break;                                                                                 \
        }                                                                                          \
        assert_int_equal(st_, CURV_E_NOMEM);                                                       \
        tu_assert_unchanged(o, snap_, len_);                                                       \
        curv_free(snap_);                                                                          \
    }

/* K-FAC needs layer statistics and answers, so it has its own driver:
 * adaptive steps with three γ candidates and a loss request, a simple
 * step, save and load, each under failing allocations. The test's own
 * allocations happen while disarmed. fp32 allocates float copies and
 * scratch of its own (the float SYRK's, the forming's, the Cholesky
 * refresh's float inverse in simple block-diagonal mode). */
static void run_kfac(const char *mode, const char *inverse, const char *precision)
{
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 2, 2, 3, 5, 6);
    const double max_dim = strcmp(inverse, "tridiag") ? 3 : 100; /* diagonal sides or a chain */
    const tu_kv kv[] = {{"gamma_interval", 2}, {"lambda_interval", 2}, {"max_factor_dim", max_dim}};
    curv_config *c = tu_config(kv, 3);
    tu_config_set(c, "mode", 0, mode);
    tu_config_set(c, "inverse", 0, inverse);
    tu_config_set(c, "precision", 0, precision);
    state_bytes_failing(CURV_OPT_KFAC, l, c);
    curv_opt *o = create_failing(CURV_OPT_KFAC, l, c);
    double *u = tu_alloc(net.dim), *vals = tu_alloc(16);
    const int adaptive = strcmp(mode, "adaptive") == 0;
    for (int t = 1; t <= 2; t++) {
        curv_step_input in = tu_mlp_input(&net, 1);
        curv_request req;
        UNTIL_NO_FAILURE(o, curv_opt_step(o, &in, u, &req, NULL),
                         adaptive ? CURV_NEED_INPUT : CURV_OK);
        while (adaptive && curv_opt_steps(o) < (uint64_t)t) {
            tu_mlp_answer(&net, &req, vals);
            curv_response r = {.seq = req.seq, .n_values = req.n_values, .values = vals};
            curv_status want = req.kind == CURV_REQ_LOSS || t == 1 ? CURV_OK : CURV_NEED_INPUT;
            UNTIL_NO_FAILURE(o, curv_opt_resume(o, &r, CURV_F64, u, &req, NULL), want);
        }
        assert_int_equal(curv_opt_steps(o), t);
        for (size_t i = 0; i < net.dim; i++)
            net.theta[i] += u[i];
        tu_mlp_batch(&net, 7 + (uint64_t)t);
    }
    save_load_failing(o);
    free(u), free(vals);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
    tu_mlp_free(&net);
}

static void test_kfac(void **unused)
{
    (void)unused;
    run_kfac("adaptive", "blockdiag", "fp64");
    run_kfac("simple", "blockdiag", "fp64");
    run_kfac("adaptive", "tridiag", "fp64");
    run_kfac("simple", "tridiag", "fp64");
    run_kfac("adaptive", "blockdiag", "fp32");
    run_kfac("simple", "blockdiag", "fp32"); /* the Cholesky refresh's float copy */
    run_kfac("simple", "tridiag", "fp32");
}

/* K-FAC's block-tridiagonal inverse (internal, lib/src/kfac_tri.c): build
 * under each failing allocation; apply allocates nothing. */
static void test_kfac_tri(void **unused)
{
    (void)unused;
    enum { L = 3 };
    const size_t n_out[L] = {3, 4, 2}, n_in[L] = {5, 4, 5};
    double *Ad[L], *Gd[L], *Ax[L] = {NULL}, *Gx[L] = {NULL}, *V[L], *X[L];
    tu_rng rng;
    tu_rng_seed(&rng, 17);
    for (size_t i = 0; i < L; i++) {
        Ad[i] = tu_alloc(n_in[i] * n_in[i]);
        Gd[i] = tu_alloc(n_out[i] * n_out[i]);
        tu_rand_spd(&rng, n_in[i], 0.5, Ad[i]);
        tu_rand_spd(&rng, n_out[i], 0.5, Gd[i]);
        V[i] = tu_alloc(n_out[i] * n_in[i]);
        X[i] = tu_alloc(n_out[i] * n_in[i]);
        tu_fill_normal(&rng, V[i], n_out[i] * n_in[i], 1.0);
        if (i + 1 < L) {
            Ax[i] = tu_alloc(n_in[i] * n_in[i + 1]);
            Gx[i] = tu_alloc(n_out[i] * n_out[i + 1]);
            tu_fill_normal(&rng, Ax[i], n_in[i] * n_in[i + 1], 0.1);
            tu_fill_normal(&rng, Gx[i], n_out[i] * n_out[i + 1], 0.1);
        }
    }
    struct curv__kfac_tri *t = NULL;
    for (long k = 0;; k++) {
        arm(k);
        curv_status st = curv__kfac_tri_build(L, n_out, n_in, (const double *const *)Ad,
                                              (const double *const *)Gd, (const double *const *)Ax,
                                              (const double *const *)Gx, &t, NULL, NULL);
        disarm();
        if (!injected) {
            assert_int_equal(st, CURV_OK);
            break;
        }
        assert_int_equal(st, CURV_E_NOMEM);
        assert_null(t);
    }
    arm(0);
    curv__kfac_tri_apply(t, (const double *const *)V, X);
    disarm();
    assert_false(injected);
    curv__kfac_tri_free(t);
    for (size_t i = 0; i < L; i++) {
        free(Ad[i]), free(Gd[i]), free(Ax[i]), free(Gx[i]), free(V[i]), free(X[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_and_config),
        cmocka_unit_test(test_every_kind),
        cmocka_unit_test(test_kfac),
        cmocka_unit_test(test_kfac_tri),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
