/* SPDX-License-Identifier: MIT */
/*
 * The registry's background refreshes (K-FAC max_staleness,
 * server/session/registry.h) with a submit the test controls: a refresh
 * is handed on when the step that leaves it gives the session back; the
 * step that applies it takes it back while still queued; a session
 * dropped or over the limits while one runs is kept until it ends, then
 * freed (LeakSanitizer and AddressSanitizer check both); a submit that
 * refuses leaves the refresh to the step. Every update equals the serial
 * library's. The threaded path is in test_parallel.c.
 */
#include <stdlib.h>
#include <string.h>

#include "curv/exec.h"
#include "session/registry.h"
#include "testutil.h"

#define T3 3

static const size_t W[] = {3, 4, 2};

/* The calls submitted, run when the test says. */
struct captured {
    curvd_bg_fn fn;
    void *arg;
    int n, refuse;
};

static int capture(void *ctx, curvd_bg_fn fn, void *arg)
{
    struct captured *c = ctx;
    if (c->refuse)
        return -1;
    c->fn = fn;
    c->arg = arg;
    c->n++;
    return 0;
}

static void run_captured(struct captured *c)
{
    assert_non_null(c->fn);
    c->fn(c->arg, NULL);
    c->fn = NULL;
}

struct fx {
    struct curvd_registry *r;
    struct captured cap;
    tu_mlp net, ref_net;
    curv_layout *l;
    curv_opt *ref;
};

static curv_opt *kfac(const curv_layout *l)
{
    const tu_kv kv[] = {{"inv_interval", T3}, {"max_staleness", 2}, {"lr", 0.1}};
    return tu_kfac_opt(l, kv, 3, "mode", "simple", NULL);
}

static void fx_init(struct fx *f, size_t max_sessions)
{
    memset(f, 0, sizeof *f);
    f->r = curvd_registry_new(max_sessions, (size_t)1 << 30, NULL, NULL);
    assert_non_null(f->r);
    curvd_registry_set_background(f->r, capture, &f->cap);
    tu_mlp_new(&f->net, W, 2, 0, 3, 5);
    tu_mlp_new(&f->ref_net, W, 2, 0, 3, 5);
    f->l = tu_mlp_layout(&f->net);
    f->ref = kfac(f->l);
}

static void fx_free(struct fx *f)
{
    curvd_registry_free(f->r);
    curv_opt_free(f->ref);
    curv_layout_free(f->l);
    tu_mlp_free(&f->net);
    tu_mlp_free(&f->ref_net);
}

static void add(struct fx *f, const char *id)
{
    struct curvd_committed none = {0};
    assert_int_equal(curvd_registry_add(f->r, id, "t", kfac(f->l), 1, &none), CURVD_REG_OK);
}

static struct curvd_entry *begin(struct fx *f, const char *id)
{
    struct curvd_entry *e = NULL;
    assert_int_equal(curvd_registry_begin(f->r, id, "t", &e, NULL, NULL, 0), CURVD_REG_OK);
    return e;
}

/* Step @id (k steps in) as the step handler does, and the reference. */
static void step(struct fx *f, const char *id, unsigned k)
{
    struct curvd_entry *e = begin(f, id);
    tu_mlp_batch(&f->net, 50 + k);
    tu_mlp_batch(&f->ref_net, 50 + k);
    double u[32], want[32];
    curv_error err;
    curvd_registry_before_step(f->r, e);
    tu_assert_status(tu_mlp_step(e->opt, &f->net, 1, u, NULL, &err), CURV_OK, &err);
    tu_assert_status(tu_mlp_step(f->ref, &f->ref_net, 1, want, NULL, &err), CURV_OK, &err);
    for (size_t i = 0; i < f->net.dim; i++)
        if (!tu_same_bits(u[i], want[i]))
            fail_msg("step %u, element %zu: %.17g, serial %.17g", k, i, u[i], want[i]);
    curvd_registry_end(f->r, e, 1);
}

static void stats(struct fx *f, unsigned long long handed, unsigned long long run,
                  unsigned long long taken_back)
{
    struct curvd_bg_stats s;
    curvd_registry_bg_stats(f->r, &s);
    assert_int_equal(s.handed, handed);
    assert_int_equal(s.run, run);
    assert_int_equal(s.taken_back, taken_back);
}

/* Handed on by step 6's end (the first periodic refresh past step 3),
 * taken back by step 8 while still queued (the step computes it); the
 * late call then only lets go. Step 9 leaves the next, run before step 11
 * needs it. */
static void test_handed_on_and_taken_back(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 8);
    add(&f, "a");
    for (unsigned k = 1; k <= 2 * T3; k++)
        step(&f, "a", k);
    stats(&f, 1, 0, 0);
    step(&f, "a", 7);
    step(&f, "a", 8); /* applies step 6's refresh */
    stats(&f, 1, 0, 1);
    run_captured(&f.cap);
    stats(&f, 1, 0, 1);
    step(&f, "a", 9);
    stats(&f, 2, 0, 1);
    run_captured(&f.cap);
    stats(&f, 2, 1, 1);
    step(&f, "a", 10);
    step(&f, "a", 11);
    fx_free(&f);
}

/* A session deleted (dropped) while its refresh runs stays allocated
 * until the refresh ends; one over the session limit is not evicted. */
static void test_kept_while_refreshing(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 1);
    add(&f, "a");
    for (unsigned k = 1; k <= 2 * T3; k++)
        step(&f, "a", k);
    add(&f, "b"); /* over max_sessions 1: "a" is the least recent, yet stays */
    struct curvd_entry *e = begin(&f, "a");
    curvd_registry_end(f.r, e, 1);
    curvd_registry_drop(f.r, "a");
    size_t n = 0, bytes = 0;
    curvd_registry_stats(f.r, &n, &bytes);
    assert_int_equal(n, 0);
    assert_int_equal(curvd_registry_begin(f.r, "a", "t", &e, NULL, NULL, 0), CURVD_REG_NOT_FOUND);
    run_captured(&f.cap); /* frees "a" */
    stats(&f, 1, 1, 0);
    fx_free(&f);
}

/* A submit that refuses: nothing is handed on and the steps compute the
 * refreshes themselves. */
static void test_refused_submit(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 8);
    f.cap.refuse = 1;
    add(&f, "a");
    for (unsigned k = 1; k <= 2 * T3 + 2; k++)
        step(&f, "a", k);
    stats(&f, 0, 0, 0);
    assert_int_equal(f.cap.n, 0);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handed_on_and_taken_back),
        cmocka_unit_test(test_kept_while_refreshing),
        cmocka_unit_test(test_refused_submit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
