/* SPDX-License-Identifier: MIT */
/*
 * curv_set_allocator: with an allocator installed, everything the library
 * allocates comes from it and goes back to it. The test allocator tags its
 * blocks, so a block the library got from malloc (or freed with free) shows
 * up as a missing tag (or an ASan error), and it counts what is live, so
 * anything kept past the objects' lifetime shows up as a nonzero balance.
 */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define TAG 0x6375727661 /* "curva" */

struct tag {
    uint64_t tag;
    size_t size;
};

static long live, calls;

static void *t_alloc(size_t n)
{
    struct tag *h = malloc(sizeof *h + n);
    assert_non_null(h);
    *h = (struct tag){TAG, n};
    live++, calls++;
    return h + 1;
}

static void *t_resize(void *p, size_t n)
{
    if (!p)
        return t_alloc(n);
    struct tag *h = (struct tag *)p - 1;
    assert_true(h->tag == TAG);
    h = realloc(h, sizeof *h + n);
    assert_non_null(h);
    h->size = n;
    calls++;
    return h + 1;
}

static void t_release(void *p)
{
    if (!p)
        return;
    struct tag *h = (struct tag *)p - 1;
    assert_true(h->tag == TAG);
    h->tag = 0;
    free(h);
    live--;
}

static const curv_allocator tagged = {t_alloc, t_resize, t_release};

/* A blob of @o and an optimizer loaded from it, both released again. */
static void save_and_load(const curv_opt *o)
{
    unsigned char *blob;
    size_t len;
    assert_int_equal(curv_opt_save(o, &blob, &len, NULL), CURV_OK);
    curv_opt *back = NULL;
    assert_int_equal(curv_opt_load(blob, len, &back, NULL), CURV_OK);
    curv_free(blob);
    curv_opt_free(back);
}

/* Create (default settings), step, save, load and free @kind on a small
 * two-block layout. */
static void run_kind(curv_opt_kind kind)
{
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "w", 3, 4, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "b", 5, NULL), CURV_OK);
    curv_opt *o = tu_new_opt(kind, l, NULL);
    size_t d = curv_layout_dim(l);
    double *g = tu_alloc(d), *u = tu_alloc(d);
    tu_rng r;
    tu_rng_seed(&r, 3);
    for (int t = 0; t < 3; t++) {
        tu_fill_normal(&r, g, d, 1.0);
        tu_step_ok(o, g, NULL, u);
    }
    save_and_load(o);
    curv_opt_free(o);
    curv_layout_free(l);
    free(g);
    free(u);
}

/* K-FAC: layer statistics and requests answered, then save and load. */
static void run_kfac(void)
{
    tu_mlp net;
    const size_t w[] = {3, 4, 2};
    curv_layout *l = tu_mlp_setup(&net, w, 2, 2, 3, 5, 6);
    curv_opt *o = tu_kfac_opt(l, NULL, 0, "mode", "adaptive", NULL); /* a string setting too */
    double *u = tu_alloc(net.dim), *vals = tu_alloc(16);
    curv_step_input in = tu_mlp_input(&net, 1);
    curv_request req;
    curv_status st = curv_opt_step(o, &in, u, &req, NULL);
    while (st == CURV_NEED_INPUT) {
        tu_mlp_answer(&net, &req, vals);
        curv_response resp = {.seq = req.seq, .n_values = req.n_values, .values = vals};
        st = curv_opt_resume(o, &resp, CURV_F64, u, &req, NULL);
    }
    assert_int_equal(st, CURV_OK);
    save_and_load(o);
    free(u);
    free(vals);
    tu_mlp_teardown(o, l, &net);
}

static void test_every_allocation_goes_through_it(void **unused)
{
    (void)unused;
    curv_set_allocator(&tagged);
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++)
        if (tu_plain_kind(k)) {
            long before = calls;
            run_kind((curv_opt_kind)k);
            assert_true(calls > before);
            assert_int_equal(live, 0);
        }
    run_kfac();
    assert_int_equal(live, 0);
    curv_set_allocator(NULL);
    /* Back on the C library's: nothing more reaches the tagged one. */
    long before = calls;
    run_kind(CURV_OPT_ADAGRAD_DIAG);
    assert_int_equal(calls, before);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_allocation_goes_through_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
