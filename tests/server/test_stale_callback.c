/* SPDX-License-Identifier: MIT */
/*
 * An answer to a callback of an earlier run of the daemon process is never
 * taken (docs/NOTES.md, issue 20's "found on the way"). Only a step's
 * final update is committed, so the restarted daemon resumes an HF session
 * from its committed request counter and asks the step posted again under
 * the same seq as the callback it forgot. Here the trainer posts that step
 * with other input, then sends the late answer to the forgotten callback:
 * it is 409 NO_CALLBACK_PENDING naming the earlier run, the exchange in
 * progress is unchanged, and the step then completes with the fresh
 * callbacks' answers to the update of libcurv stepped in-process with the
 * new input alone, to the bit. Retried answers still replay within a run.
 *
 * The daemon is a child process (crash_util.h), SIGKILLed and started
 * again on the same database; $CURVD_BIN or BUILD/curvd, else this binary
 * with --as-daemon.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crash_util.h"
#include "curv.h"
#include "srvutil.h"
#include "testutil.h"

/* su_grad's phase of the step posted again: other than crash_util's. */
#define OTHER_PHASE 1.3

struct fx {
    char dir[256], db[300];
    struct cu_daemon d;
    struct cu_cb c;
};

/* The forgotten callback and the answer the trainer computed for it. */
struct stale {
    char url[256];
    curv_request req; /* no vectors */
    struct su_body answer;
    int posted;
};

/* Post the stale answer: 409 NO_CALLBACK_PENDING, its errors naming the
 * callback, its detail the earlier run and @awaits. */
static void refuse_stale(const struct su_trainer *tr, const struct stale *st, const char *awaits)
{
    struct su_resp r;
    su_post_body(tr, st->url, &st->answer, &r);
    if (r.status != 409)
        fail_msg("the stale answer: status %ld, want 409: %s", r.status, r.body);
    json_t *p = su_json(r.body, r.len);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "NO_CALLBACK_PENDING");
    json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e0, "path")), "callback");
    const char *detail = json_string_value(json_object_get(p, "detail"));
    assert_non_null(detail);
    assert_non_null(strstr(detail, "earlier run of the daemon"));
    assert_non_null(strstr(detail, awaits));
    json_decref(p);
    su_resp_free(&r);
}

/* The step posted again awaits callback @cb of the stale one's seq and
 * shape (so without the run tag the stale answer fitted
 * it), under another URL, and rightly answered by @good, not by the
 * stale answer. The stale answer is refused, and the session still
 * awaits @cb. */
static void post_stale(struct su_trainer *tr, const struct su_callback *cb,
                       const struct su_body *good, struct stale *st)
{
    assert_true(cb->req.seq == st->req.seq);
    assert_int_equal(cb->req.kind, st->req.kind);
    assert_int_equal(cb->req.n_values, st->req.n_values);
    assert_false(good->len == st->answer.len && memcmp(good->p, st->answer.p, good->len) == 0);
    refuse_stale(tr, st, strrchr(cb->url, '/') + 1); /* names the callback awaited */
    assert_string_not_equal(cb->url, st->url);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", tr->id);
    json_t *s = su_call(tr->base, "GET", path, NULL, 200, NULL);
    assert_int_equal(json_integer_value(json_object_get(s, "step")), 1);
    assert_string_equal(json_string_value(json_object_get(s, "pending_callback")), cb->url);
    json_decref(s);
    st->posted = 1;
}

/* su_trainer_step's hook: the stale answer before the fresh one to the
 * callback of its seq;
 * every answer taken is posted again and must get the same reply. */
static void hook(struct su_trainer *tr, enum su_phase ph, const struct su_callback *cb,
                 const struct su_body *good, const struct su_resp *reply)
{
    struct stale *st = tr->hook_ctx;
    if (ph == SU_BEFORE_ANSWER && cb->req.seq == st->req.seq)
        post_stale(tr, cb, good, st);
    if (ph != SU_ANSWERED)
        return;
    struct su_resp again;
    su_post_body(tr, cb->url, good, &again);
    assert_int_equal(again.status, reply->status);
    assert_int_equal(again.len, reply->len);
    assert_memory_equal(again.body, reply->body, reply->len);
    su_resp_free(&again);
}

static void restart(struct fx *f)
{
    cu_reap(&f->d);
    cu_spawn(&f->d);
    cu_wait_ready(&f->d);
}

static void test_stale_answer_after_restart(void **state)
{
    struct fx *f = *state;
    struct cu_cb *c = &f->c;
    cu_spawn(&f->d);
    cu_wait_ready(&f->d);
    cu_cb_new(c, CU_HF, f->d.base); /* c->tr.base is f->d.base, rewritten by a restart */
    assert_int_equal(cu_cb_step(c, f->d.base, -1), CU_DONE);
    /* Step 2's second callback in hand (its first, a product with the
     * warm start, does not depend on the step's input: its second does). */
    assert_int_equal(cu_cb_step(c, f->d.base, 1), CU_HELD);
    struct stale st = {.req = c->cb.req};
    st.req.vectors = NULL;
    snprintf(st.url, sizeof st.url, "%s", c->cb.url);
    double *v = tu_alloc(c->cb.req.n_values);
    tu_quad_answer(&c->q, &c->cb.req, v); /* the right answer to step 2 as first posted */
    su_answer_body(&c->tr, &c->cb.req, v, &st.answer);
    free(v);

    restart(f);
    /* The forgotten callback is 409 while nothing is in progress too;
     * step 1 replays; the lock-step reference drops step 2. */
    assert_int_equal(cu_cb_recover(c, f->d.base, 1), 0);

    curv_step_input in = cu_cb_input(c, OTHER_PHASE);
    struct su_step step = {.t = 2, .grad = in.grad, .grad_sq = in.grad_sq, .loss = in.loss};
    size_t dim = curv_layout_dim(c->layout);
    double *u = tu_alloc(dim), *want = tu_alloc(dim);
    c->tr.hook = hook;
    c->tr.hook_ctx = &st;
    size_t n = su_trainer_step(&c->tr, &step, tu_quad_answer, &c->q, u);
    c->tr.hook = NULL;
    assert_true(st.posted && n > 0);
    curv_error err;
    tu_assert_status(tu_drive(c->s.ref, &in, tu_quad_answer, &c->q, want, NULL, &err), CURV_OK,
                     &err);
    for (size_t i = 0; i < dim; i++)
        if (memcmp(&u[i], &want[i], sizeof u[i]) != 0)
            fail_msg("element %zu: daemon %.17g, libcurv %.17g", i, u[i], want[i]);
    /* Once the step is complete, the stale answer is still no answer. */
    refuse_stale(&c->tr, &st, "post step 3");
    free(u);
    free(want);
    su_body_free(&st.answer);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, getenv("TMPDIR"), "stale", f->db, sizeof f->db);
    f->d = (struct cu_daemon){.db = f->db, .err_fd = -1};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cu_reap(&f->d);  /* no daemon survives a failed test */
    if (f->c.layout) /* created */
        cu_cb_free(&f->c);
    int rc = su_rmtree(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    int rc = cu_main_begin(argc, argv, "stale callback");
    if (rc >= 0)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stale_answer_after_restart, setup, teardown),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
