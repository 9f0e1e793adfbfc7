/* SPDX-License-Identifier: MIT */
/*
 * HF's request protocol (hf.c with opt.c's checks): inputs a step needs,
 * answers refused at every phase (wrong seq, stale seq, wrong length,
 * NaN, after the step ended) with nothing changed, save/load between
 * steps and in the middle of one (the step restarts and says so), damaged
 * blobs, float32, and reconfiguring between steps. The trainer is a dense
 * quadratic; test_hf.c checks the numbers.
 */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define D TU_D_MIXED

struct fx {
    curv_layout *l;
    double *G, g[D], sq[D];
    tu_quad q;
};

static void fx_init(struct fx *f, uint64_t seed)
{
    tu_rng rng;
    tu_rng_seed(&rng, seed);
    f->l = tu_opt_mixed_layout();
    f->G = tu_alloc(D * D);
    tu_rand_spd(&rng, D, 0.1, f->G);
    tu_fill_normal(&rng, f->g, D, 1.0);
    for (size_t i = 0; i < D; i++)
        f->sq[i] = f->g[i] * f->g[i] + 0.1;
    f->q = (tu_quad){D, f->G, f->g, 1.5};
}

static void fx_free(struct fx *f)
{
    free(f->G);
    curv_layout_free(f->l);
}

static curv_step_input fx_input(const struct fx *f)
{
    return (curv_step_input){.grad = f->g,
                             .len = D,
                             .dtype = CURV_F64,
                             .loss = f->q.h0,
                             .has_loss = 1,
                             .grad_sq = f->sq};
}

/* The quadratic trainer, except that the first LOSS request of each step
 * reports a rise, so that every step also runs the line search. */
struct rising {
    tu_quad *q;
    size_t loss_requests;
};

static void rising_answer(void *ctx, const curv_request *req, double *values)
{
    struct rising *r = ctx;
    tu_quad_answer(r->q, req, values);
    if (req->kind == CURV_REQ_LOSS && r->loss_requests++ == 0)
        for (size_t k = 0; k < req->n_vectors; k++)
            values[k] = r->q->h0 + 1.0;
}

/* Tries bad answers to @req (whose right answer is @answer) and checks
 * that each is refused and changes nothing. */
typedef void (*refuse_fn)(curv_opt *o, const curv_request *req, const double *answer, double *u,
                          void *ctx);

/* Steps with the rising trainer; the seqs of all requests into @seqs;
 * @refuse (may be NULL) runs on every request before it is answered. */
static void run(curv_opt *o, struct fx *f, int steps, double *u, uint64_t *seqs, size_t *n_seqs,
                refuse_fn refuse, void *ctx);

/* @resp to @req is refused with @want and changes nothing: the saved
 * state, the pending request and its vectors stay as they were. */
static void assert_refused(curv_opt *o, const curv_request *req, const curv_response *resp,
                           curv_status want, double *u, curv_error *err)
{
    size_t len, n = req->n_vectors * req->dim;
    unsigned char *snap = tu_snapshot(o, &len);
    double *vectors = tu_alloc(n);
    memcpy(vectors, req->vectors, n * sizeof *vectors);
    curv_request again = *req;
    tu_assert_status(curv_opt_resume(o, resp, CURV_F64, u, &again, err), want, err);
    tu_assert_error_set(err, want);
    tu_assert_unchanged(o, snap, len);
    assert_memory_equal(&again, req, sizeof again); /* no new request */
    assert_memory_equal(req->vectors, vectors, n * sizeof *vectors);
    free(vectors);
    curv_free(snap);
}

static void check_refusals(curv_opt *o, const curv_request *req, const double *answer, double *u,
                           void *ctx)
{
    (void)answer;
    (void)ctx;
    double *v = tu_alloc(req->n_values + 1);
    const struct {
        uint64_t seq;
        size_t n;
        double poison;
        size_t at;
        int null_values;
        curv_status want;
    } bad[] = {
        {req->seq + 1, req->n_values, 0, 0, 0, CURV_E_STATE},
        {req->seq - 1, req->n_values, 0, 0, 0, CURV_E_STATE}, /* the previous request's */
        {0, req->n_values, 0, 0, 0, CURV_E_STATE},
        {req->seq, req->n_values - 1, 0, 0, 0, CURV_E_SHAPE},
        {req->seq, req->n_values + 1, 0, 0, 0, CURV_E_SHAPE},
        {req->seq, req->n_values, NAN, 0, 0, CURV_E_NONFINITE},
        {req->seq, req->n_values, INFINITY, req->n_values - 1, 0, CURV_E_NONFINITE},
        {req->seq, req->n_values, 0, 0, 1, CURV_E_INVALID},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        for (size_t i = 0; i <= req->n_values; i++)
            v[i] = 0.25;
        if (bad[k].poison != 0)
            v[bad[k].at] = bad[k].poison;
        curv_response resp = {
            .seq = bad[k].seq, .n_values = bad[k].n, .values = bad[k].null_values ? NULL : v};
        curv_error err;
        assert_refused(o, req, &resp, bad[k].want, u, &err);
    }
    free(v);
}

/* Counts the product answers refused for an Inf where p_i = 0. */
struct product_refusals {
    size_t at_zero_p;
};

/* NaN, +Inf and -Inf in a G·p answer (the right one otherwise), alone or
 * two at once (+Inf and -Inf would cancel in a sum), and an Inf where
 * p_i = 0 (0·Inf is NaN): refused naming the first bad value by index. */
static void check_product_refusals(curv_opt *o, const curv_request *req, const double *answer,
                                   double *u, void *ctx)
{
    struct product_refusals *pr = ctx;
    if (req->kind != CURV_REQ_CURVATURE_PRODUCT)
        return;
    size_t zero = D;
    for (size_t i = D; i-- > 0;)
        if (req->vectors[i] == 0)
            zero = i;
    const struct {
        size_t at[2];
        double v[2];
    } bad[] = {
        {{5, D}, {NAN, 0}},
        {{0, D}, {INFINITY, 0}},
        {{D - 1, D}, {-INFINITY, 0}},
        {{3, 20}, {INFINITY, -INFINITY}},
        {{30, 7}, {-INFINITY, NAN}},
        {{zero, D}, {INFINITY, 0}}, /* last: skipped when no p_i is 0 */
    };
    const size_t n_bad = sizeof bad / sizeof bad[0];
    double v[D];
    for (size_t k = 0; k < n_bad && bad[k].at[0] < D; k++) {
        memcpy(v, answer, sizeof v);
        size_t first = D;
        for (size_t j = 0; j < 2; j++)
            if (bad[k].at[j] < D) {
                v[bad[k].at[j]] = bad[k].v[j];
                first = bad[k].at[j] < first ? bad[k].at[j] : first;
            }
        curv_response resp = {.seq = req->seq, .n_values = D, .values = v};
        curv_error err;
        assert_refused(o, req, &resp, CURV_E_NONFINITE, u, &err);
        char want[64];
        snprintf(want, sizeof want, "response value %zu is %g", first, v[first]);
        if (!strstr(err.text, want))
            fail_msg("case %zu: \"%s\" does not say \"%s\"", k, err.text, want);
        pr->at_zero_p += k == n_bad - 1;
    }
}

static void run(curv_opt *o, struct fx *f, int steps, double *u, uint64_t *seqs, size_t *n_seqs,
                refuse_fn refuse, void *ctx)
{
    size_t n = 0;
    for (int t = 0; t < steps; t++) {
        struct rising r = {&f->q, 0};
        curv_step_input in = fx_input(f);
        curv_request req;
        curv_error err;
        curv_status st = curv_opt_step(o, &in, u, &req, &err);
        while (st == CURV_NEED_INPUT) {
            seqs[n++] = req.seq;
            double *v = tu_alloc(req.n_values);
            rising_answer(&r, &req, v);
            if (refuse)
                refuse(o, &req, v, u, ctx);
            curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = v};
            st = curv_opt_resume(o, &resp, CURV_F64, u, &req, &err);
            free(v);
        }
        tu_assert_status(st, CURV_OK, &err);
    }
    *n_seqs = n;
}

/* The two optimizers' last reports are the same, value for value. */
static void assert_same_report(const curv_opt *a, const curv_opt *b)
{
    const curv_report_entry *ea, *eb;
    size_t na = curv_opt_report(a, &ea), nb = curv_opt_report(b, &eb);
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++)
        assert_true(ea[i].value == eb[i].value);
}

/* Answer @o's requests from @q until the step, at status @st with request
 * @req pending, ends; it must end with CURV_OK. */
static void finish_step(curv_opt *o, tu_quad *q, curv_status st, curv_request *req, double *u)
{
    curv_error err;
    curv_error_clear(&err);
    while (st == CURV_NEED_INPUT) {
        double *v = tu_alloc(req->n_values);
        tu_quad_answer(q, req, v);
        curv_response resp = {.seq = req->seq, .n_values = req->n_values, .values = v};
        st = curv_opt_resume(o, &resp, CURV_F64, u, req, &err);
        free(v);
    }
    tu_assert_status(st, CURV_OK, &err);
}

/* Refused answers at every phase (G·x_0, G·p, backtracking and
 * line-search losses) change nothing: the run ends bit-identical to one
 * without refusals, with the same request seqs. */
static void test_refused_answers_change_nothing(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 30);
    const tu_kv kv[] = {{"cg_max", 8}, {"ls_batch", 2}};
    curv_opt *a = tu_opt_with(CURV_OPT_HF, f.l, kv, 2), *b = tu_opt_with(CURV_OPT_HF, f.l, kv, 2);
    double ua[D], ub[D];
    uint64_t sa[256], sb[256];
    size_t na, nb;
    run(a, &f, 2, ua, sa, &na, NULL, NULL);
    run(b, &f, 2, ub, sb, &nb, check_refusals, NULL);
    assert_memory_equal(ua, ub, sizeof ua);
    assert_int_equal(na, nb);
    assert_memory_equal(sa, sb, na * sizeof *sa);
    assert_true(tu_report(b, "line_search_alpha") < 1); /* the line search ran */
    assert_true(tu_report(b, "curvature_products") > tu_report(b, "cg_iterations")); /* G x_0 */
    /* Answers after the step ended, to the last request or an earlier one. */
    size_t len;
    unsigned char *snap = tu_snapshot(b, &len);
    double v[D] = {0};
    for (size_t k = 0; k < 2; k++) {
        curv_response resp = {.seq = k ? sb[0] : sb[nb - 1], .n_values = 1, .values = v};
        curv_request req;
        curv_error err;
        tu_assert_status(curv_opt_resume(b, &resp, CURV_F64, ub, &req, &err), CURV_E_STATE, &err);
        assert_non_null(strstr(err.text, "no request is pending"));
    }
    tu_assert_unchanged(b, snap, len);
    curv_free(snap);
    curv_opt_free(a);
    curv_opt_free(b);
    fx_free(&f);
}

/* HF checks G·p answers for NaN/Inf inside its pᵀAp pass: NaN, ±Inf
 * anywhere, two at once, and an Inf where p_i = 0 are each refused naming
 * the first bad value, in the first CG iteration (where g_9 = 0 makes
 * p_9 = 0), later ones and G·x_0; the run then ends bit-identical to one
 * without the bad answers (same updates, request seqs and reports). */
static void test_product_nonfinite_refused(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 38);
    f.g[9] = 0; /* p_0 = −P⁻¹g */
    curv_opt *a = tu_new_opt(CURV_OPT_HF, f.l, NULL), *b = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    double ua[D], ub[D];
    uint64_t sa[1024], sb[1024];
    size_t na, nb;
    struct product_refusals pr = {0};
    for (int t = 0; t < 2; t++) { /* the second step starts warm: G·x_0 */
        run(a, &f, 1, ua, sa, &na, NULL, NULL);
        run(b, &f, 1, ub, sb, &nb, check_product_refusals, &pr);
        assert_memory_equal(ua, ub, sizeof ua);
        assert_int_equal(na, nb);
        assert_memory_equal(sa, sb, na * sizeof *sa);
        assert_same_report(a, b);
    }
    assert_true(pr.at_zero_p >= 1);
    assert_true(tu_report(b, "curvature_products") > tu_report(b, "cg_iterations")); /* G x_0 */
    curv_opt_free(a);
    curv_opt_free(b);
    fx_free(&f);
}

/* A G·p of finite values whose pᵀAp overflows is no bad value to refuse;
 * CG stops there as on non-positive curvature (cg_stop 2) and keeps x_1:
 * the same update as the step with cg_max = 1. */
static void test_product_overflow_stops_cg(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 39);
    const tu_kv one[] = {{"cg_max", 1}};
    curv_opt *o = tu_new_opt(CURV_OPT_HF, f.l, NULL), *ref = tu_opt_with(CURV_OPT_HF, f.l, one, 1);
    double u[D], uref[D], v[D];
    curv_step_input in = fx_input(&f);
    curv_error err;
    tu_assert_status(tu_drive(ref, &in, tu_quad_answer, &f.q, uref, NULL, &err), CURV_OK, &err);
    curv_request req;
    curv_status st = curv_opt_step(o, &in, u, &req, &err);
    assert_int_equal(st, CURV_NEED_INPUT); /* G·p_0 */
    tu_quad_answer(&f.q, &req, v);
    curv_response resp = {.seq = req.seq, .n_values = D, .values = v};
    st = curv_opt_resume(o, &resp, CURV_F64, u, &req, &err);
    assert_int_equal(st, CURV_NEED_INPUT);
    assert_int_equal(req.kind, CURV_REQ_CURVATURE_PRODUCT); /* G·p_1 */
    double sum = 0;
    for (size_t i = 0; i < D; i++) {
        v[i] = req.vectors[i] < 0 ? -DBL_MAX : DBL_MAX;
        sum += fabs(req.vectors[i]);
    }
    assert_true(sum > 2); /* Σ p_i·(A p)_i >= DBL_MAX·Σ|p_i| overflows */
    resp.seq = req.seq;
    st = curv_opt_resume(o, &resp, CURV_F64, u, &req, &err);
    tu_assert_status(st, CURV_NEED_INPUT, &err);
    assert_int_equal(req.kind, CURV_REQ_LOSS);
    finish_step(o, &f.q, st, &req, u);
    assert_true(tu_report(o, "cg_stop") == 2);
    assert_true(tu_report(o, "cg_iterations") == 1);
    assert_memory_equal(u, uref, sizeof u);
    curv_opt_free(o);
    curv_opt_free(ref);
    fx_free(&f);
}

/* What a step needs: the loss always, grad_sq while the preconditioner or
 * diag damping is on; NaN/Inf and negative squares refused naming the
 * block; a request to fill. Each refusal changes nothing. */
static void test_inputs_refused(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 31);
    curv_opt *o = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    double u[D];
    curv_step_input in = fx_input(&f);
    curv_error err;
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &f.q, u, NULL, &err), CURV_OK, &err);
    size_t len;
    unsigned char *snap = tu_snapshot(o, &len);
    double g[D], sq[D];
    float gf[D], sqf[D];
    const struct {
        const char *what, *want_text;
        int no_loss, no_sq, grad_at, sq_at, f32;
        double loss, bad;
        curv_status want;
    } cases[] = {
        {"no loss", "loss", 1, 0, -1, -1, 0, 0, 0, CURV_E_INVALID},
        {"no grad_sq", "grad_sq", 0, 1, -1, -1, 0, 0, 0, CURV_E_INVALID},
        {"NaN loss", "loss", 0, 0, -1, -1, 0, NAN, 0, CURV_E_NONFINITE},
        {"Inf loss", "loss", 0, 0, -1, -1, 0, INFINITY, 0, CURV_E_NONFINITE},
        {"NaN grad", "'gain'", 0, 0, 34, -1, 0, 0, NAN, CURV_E_NONFINITE},
        {"Inf grad f32", "'conv'", 0, 0, 20, -1, 1, 0, INFINITY, CURV_E_NONFINITE},
        {"NaN grad_sq", "grad_sq", 0, 0, -1, 3, 0, 0, NAN, CURV_E_NONFINITE},
        {"negative grad_sq", "grad_sq", 0, 0, -1, 16, 0, 0, -1.0, CURV_E_INVALID},
        {"negative grad_sq f32", "'conv'", 0, 0, -1, 16, 1, 0, -1.0, CURV_E_INVALID},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        memcpy(g, f.g, sizeof g);
        memcpy(sq, f.sq, sizeof sq);
        if (cases[k].grad_at >= 0)
            g[cases[k].grad_at] = cases[k].bad;
        if (cases[k].sq_at >= 0)
            sq[cases[k].sq_at] = cases[k].bad;
        for (size_t i = 0; i < D; i++)
            gf[i] = (float)g[i], sqf[i] = (float)sq[i], u[i] = 99;
        curv_step_input bad = {.grad = cases[k].f32 ? (const void *)gf : g,
                               .len = D,
                               .dtype = cases[k].f32 ? CURV_F32 : CURV_F64,
                               .loss = isnan(cases[k].loss) || isinf(cases[k].loss) ? cases[k].loss
                                                                                    : f.q.h0,
                               .has_loss = !cases[k].no_loss,
                               .grad_sq = cases[k].no_sq ? NULL
                                          : cases[k].f32 ? (const void *)sqf
                                                         : sq};
        curv_request req;
        curv_error_clear(&err);
        curv_status st = curv_opt_step(o, &bad, u, &req, &err);
        if (st != cases[k].want || !strstr(err.text, cases[k].want_text))
            fail_msg("%s: got %s \"%s\", want %s naming %s", cases[k].what, curv_status_name(st),
                     err.text, curv_status_name(cases[k].want), cases[k].want_text);
        for (size_t i = 0; i < D; i++)
            assert_true(u[i] == 99);
        tu_assert_unchanged(o, snap, len);
    }
    tu_assert_status(curv_opt_step(o, &in, u, NULL, &err), CURV_E_INVALID, &err);
    assert_non_null(strstr(err.text, "request"));
    tu_assert_unchanged(o, snap, len);
    assert_int_equal(curv_opt_steps(o), 1);
    curv_free(snap);
    curv_opt_free(o);
    /* grad_sq is needed by the preconditioner or diag damping only. */
    static const char *const precond[] = {"none", "none"}, *const damping[] = {"diag", "tikhonov"};
    for (int k = 0; k < 2; k++) {
        curv_config *c = curv_config_new();
        tu_config_set(c, "precond", 0, precond[k]);
        tu_config_set(c, "damping", 0, damping[k]);
        o = tu_new_opt(CURV_OPT_HF, f.l, c);
        curv_step_input nosq = fx_input(&f);
        nosq.grad_sq = NULL;
        curv_status want = k == 0 ? CURV_E_INVALID : CURV_OK;
        tu_assert_status(tu_drive(o, &nosq, tu_quad_answer, &f.q, u, NULL, &err), want, &err);
        if (k == 0)
            assert_non_null(strstr(err.text, "damping = diag"));
        curv_opt_free(o);
        curv_config_free(c);
    }
    fx_free(&f);
}

/* While a request is pending: no new step, no reconfigure; save works
 * (the blob is an interrupted one) and the request stays answerable. */
static void test_pending_request_rules(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 32);
    curv_opt *o = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    curv_step_input in = fx_input(&f);
    curv_request req;
    double u[D], v[D];
    curv_error err;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_NEED_INPUT, &err);
    assert_int_equal(req.kind, CURV_REQ_CURVATURE_PRODUCT);
    assert_int_equal(req.n_vectors, 1);
    assert_int_equal(req.n_values, D);
    curv_request other;
    tu_assert_status(curv_opt_step(o, &in, u, &other, &err), CURV_E_STATE, &err);
    curv_config *c = curv_config_new();
    tu_config_set(c, "lambda", 1.0, NULL);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_E_STATE, &err);
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len);
    tu_quad_answer(&f.q, &req, v);
    curv_response resp = {.seq = req.seq, .n_values = D, .values = v};
    curv_status st = curv_opt_resume(o, &resp, CURV_F64, u, &req, &err);
    assert_int_equal(st, CURV_NEED_INPUT);
    curv_free(blob);
    curv_config_free(c);
    curv_opt_free(o); /* freeing with a request pending leaks nothing */
    fx_free(&f);
}

/* Save between steps, load, continue: bit-identical updates, reports and
 * blobs (λ, the warm start and the seq counter all travel). */
static void test_save_load_between_steps(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 33);
    curv_opt *a = tu_new_opt(CURV_OPT_HF, f.l, NULL), *b = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    double ua[D], ub[D];
    uint64_t seqs[512];
    size_t n;
    run(a, &f, 2, ua, seqs, &n, NULL, NULL);
    run(b, &f, 2, ub, seqs, &n, NULL, NULL);
    size_t len;
    unsigned char *blob = tu_snapshot(b, &len);
    curv_opt_free(b);
    curv_opt *c = NULL;
    curv_error err;
    tu_assert_status(curv_opt_load(blob, len, &c, &err), CURV_OK, &err);
    assert_int_equal(curv_opt_interrupted(c), 0);
    tu_assert_unchanged(c, blob, len);
    for (int t = 0; t < 3; t++) {
        uint64_t sa[256], sc[256];
        size_t na, nc;
        run(a, &f, 1, ua, sa, &na, NULL, NULL);
        run(c, &f, 1, ub, sc, &nc, NULL, NULL);
        assert_memory_equal(ua, ub, sizeof ua);
        assert_int_equal(na, nc);
        assert_memory_equal(sa, sc, na * sizeof *sa);
        assert_same_report(a, c);
        size_t la;
        unsigned char *ba = tu_snapshot(a, &la);
        tu_assert_unchanged(c, ba, la);
        curv_free(ba);
    }
    curv_free(blob);
    curv_opt_free(a);
    curv_opt_free(c);
    fx_free(&f);
}

/* A blob saved in the middle of a step restarts that step: the loaded
 * optimizer refuses the old answer, takes the step from its beginning
 * with new seqs, gets the update the uninterrupted optimizer got and
 * reports restarted = 1. */
static void test_interrupted_step_restarts(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 34);
    curv_opt *a = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    double ua[D], uc[D], v[D];
    uint64_t seqs[256];
    size_t n;
    run(a, &f, 1, ua, seqs, &n, NULL, NULL);
    curv_step_input in = fx_input(&f);
    curv_request req;
    curv_error err;
    curv_status st = curv_opt_step(a, &in, ua, &req, &err);
    for (int k = 0; k < 3; k++) { /* G x_0 and two CG iterations */
        assert_int_equal(st, CURV_NEED_INPUT);
        tu_quad_answer(&f.q, &req, v);
        curv_response resp = {.seq = req.seq, .n_values = D, .values = v};
        st = curv_opt_resume(a, &resp, CURV_F64, ua, &req, &err);
    }
    assert_int_equal(st, CURV_NEED_INPUT);
    const uint64_t pending = req.seq;
    tu_quad_answer(&f.q, &req, v);
    size_t len;
    unsigned char *blob = tu_snapshot(a, &len);
    curv_opt *c = NULL;
    tu_assert_status(curv_opt_load(blob, len, &c, &err), CURV_OK, &err);
    tu_assert_unchanged(c, blob, len); /* saved again, still interrupted */
    curv_response resp = {.seq = pending, .n_values = D, .values = v};
    st = curv_opt_resume(a, &resp, CURV_F64, ua, &req, &err);
    finish_step(a, &f.q, st, &req, ua); /* a finishes its step */
    assert_true(tu_report(a, "restarted") == 0);
    assert_int_equal(curv_opt_interrupted(c), 1);
    assert_int_equal(curv_opt_steps(c), 1);
    tu_assert_status(curv_opt_resume(c, &resp, CURV_F64, uc, &req, &err), CURV_E_STATE, &err);
    assert_non_null(strstr(err.text, "interrupted"));
    tu_assert_unchanged(c, blob, len);
    tu_assert_status(curv_opt_step(c, &in, uc, &req, &err), CURV_NEED_INPUT, &err);
    assert_true(req.seq > pending); /* a stale answer cannot match */
    assert_int_equal(curv_opt_interrupted(c), 0);
    tu_quad_answer(&f.q, &req, v);
    curv_response r3 = {.seq = req.seq, .n_values = D, .values = v};
    st = curv_opt_resume(c, &r3, CURV_F64, uc, &req, &err);
    finish_step(c, &f.q, st, &req, uc);
    assert_memory_equal(ua, uc, sizeof ua);
    assert_true(tu_report(c, "restarted") == 1);
    assert_true(tu_report(c, "lambda") == tu_report(a, "lambda"));
    assert_int_equal(curv_opt_steps(c), 2);
    curv_free(blob);
    curv_opt_free(a);
    curv_opt_free(c);
    fx_free(&f);
}

/* Damaged blobs, between steps and mid-step, are refused; forged state
 * values that no step can produce (λ < 0, NaN) are E_CORRUPT. */
static void test_blobs(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 35);
    curv_opt *o = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    double u[D];
    uint64_t seqs[256];
    size_t n, len;
    run(o, &f, 2, u, seqs, &n, NULL, NULL);
    unsigned char *blob = tu_snapshot(o, &len);
    tu_blob_damage_rejected("hf", blob, len);
    tu_blob_flips_never_crash("hf", blob, len);
    /* The state closes the blob: u64 seq, f64 λ, f64 λ setting, d x f64. */
    const size_t lam = len - 4 - 8 * D - 16;
    unsigned char *b = malloc(len);
    assert_non_null(b);
    const double forged[] = {-1.0, NAN, INFINITY};
    for (size_t k = 0; k < 3; k++)
        for (size_t at = lam; at <= lam + 8 * 8; at += 8 * 4) { /* λ, then prev[3] */
            uint64_t bits;
            memcpy(&bits, &forged[k], sizeof bits);
            curv_opt *out = NULL;
            if (at > lam && forged[k] == -1.0)
                continue; /* a negative warm start is fine */
            assert_int_equal(tu_load_copy(tu_forge(b, blob, len, at, bits, 8), len, &out),
                             CURV_E_CORRUPT);
            assert_null(out);
        }
    curv_free(blob);
    free(b);
    curv_step_input in = fx_input(&f);
    curv_request req;
    assert_int_equal(curv_opt_step(o, &in, u, &req, NULL), CURV_NEED_INPUT);
    blob = tu_snapshot(o, &len);
    tu_blob_damage_rejected("hf mid-step", blob, len);
    curv_free(blob);
    curv_opt_free(o);
    fx_free(&f);
}

/* float32 in and out is the float rounding of the float64 path fed the
 * same (float-representable) values; answers are doubles either way. */
static void test_float32(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 36);
    for (size_t i = 0; i < D; i++)
        f.g[i] = (float)f.g[i], f.sq[i] = (float)f.sq[i];
    float gf[D], sqf[D], uf[D];
    for (size_t i = 0; i < D; i++)
        gf[i] = (float)f.g[i], sqf[i] = (float)f.sq[i];
    curv_opt *a = tu_new_opt(CURV_OPT_HF, f.l, NULL), *b = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    for (int t = 0; t < 3; t++) {
        double u[D];
        curv_step_input in = fx_input(&f), inf = fx_input(&f);
        inf.grad = gf, inf.grad_sq = sqf, inf.dtype = CURV_F32;
        curv_error err;
        tu_assert_status(tu_drive(a, &in, tu_quad_answer, &f.q, u, NULL, &err), CURV_OK, &err);
        tu_assert_status(tu_drive(b, &inf, tu_quad_answer, &f.q, uf, NULL, &err), CURV_OK, &err);
        for (size_t i = 0; i < D; i++)
            if (uf[i] != (float)u[i])
                fail_msg("step %d [%zu]: f32 %.9g, f64 %.17g", t, i, (double)uf[i], u[i]);
    }
    curv_opt_free(a);
    curv_opt_free(b);
    fx_free(&f);
}

static void reconf(curv_opt *o, const char *key, double num, const char *str)
{
    curv_config *c = curv_config_new();
    tu_config_set(c, key, num, str);
    curv_error err;
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    curv_config_free(c);
}

/* Between steps any setting may change (the step's buffers follow);
 * setting lambda restarts the adapted λ from it; the report has every
 * documented entry. */
static void test_reconfigure_between_steps(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 37);
    curv_opt *o = tu_new_opt(CURV_OPT_HF, f.l, NULL);
    double u[D];
    curv_step_input in = fx_input(&f);
    curv_error err;
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &f.q, u, NULL, &err), CURV_OK, &err);
    static const char *const names[] = {
        "grad_norm",         "update_norm", "cg_iterations", "cg_stop",     "chosen_iterate",
        "candidates",        "rho",         "lambda",        "model_value", "model_value_damped",
        "line_search_alpha", "loss_before", "loss_after",    "round_trips", "curvature_products",
        "loss_evaluations",  "restarted",   "lambda_used"};
    const curv_report_entry *e;
    assert_int_equal(curv_opt_report(o, &e), sizeof names / sizeof names[0]);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_string_equal(e[i].name, names[i]);
    double norm = 0;
    for (size_t i = 0; i < D; i++)
        norm += f.g[i] * f.g[i];
    assert_true(fabs(tu_report(o, "grad_norm") - sqrt(norm)) < 1e-12 * sqrt(norm));
    const double adapted = tu_report(o, "lambda");
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &f.q, u, NULL, &err), CURV_OK, &err);
    assert_true(tu_report(o, "lambda_used") == adapted); /* λ carries over */
    reconf(o, "lambda", 2.0, NULL);
    reconf(o, "cg_max", 3, NULL);
    reconf(o, "backtrack", 0, NULL);
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &f.q, u, NULL, &err), CURV_OK, &err);
    assert_true(tu_report(o, "lambda_used") == 2.0);
    assert_true(tu_report(o, "cg_iterations") <= 3);
    assert_true(tu_report(o, "candidates") == 1);
    const double next = tu_report(o, "lambda");
    reconf(o, "lambda", 2.0, NULL); /* the same value: no restart */
    reconf(o, "damping", 0, "diag");
    reconf(o, "backtrack", 1, NULL);
    reconf(o, "cg_max", 40, NULL);
    reconf(o, "ls_batch", 3, NULL);
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &f.q, u, NULL, &err), CURV_OK, &err);
    assert_true(tu_report(o, "lambda_used") == next);
    assert_true(tu_report(o, "candidates") > 1);
    char buf[32];
    assert_int_equal(curv_opt_get_param_str(o, "damping", buf, sizeof buf), CURV_OK);
    assert_string_equal(buf, "diag");
    curv_opt_free(o);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_answers_change_nothing),
        cmocka_unit_test(test_product_nonfinite_refused),
        cmocka_unit_test(test_product_overflow_stops_cg),
        cmocka_unit_test(test_inputs_refused),
        cmocka_unit_test(test_pending_request_rules),
        cmocka_unit_test(test_save_load_between_steps),
        cmocka_unit_test(test_interrupted_step_restarts),
        cmocka_unit_test(test_blobs),
        cmocka_unit_test(test_float32),
        cmocka_unit_test(test_reconfigure_between_steps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
