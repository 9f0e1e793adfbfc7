/* SPDX-License-Identifier: MIT */
/*
 * curv_opt_save_parts: the parts tile the blob, which is curv_opt_save's
 * byte for byte; within one history, a part whose nonzero stamp did not
 * change between two saves holds the same bytes (checked with memcmp over
 * runs of steps of every kind, K-FAC block-diagonal and tridiagonal with
 * statistics and inverses on intervals, save/load, reconfigure, steps
 * saved mid-way, cancelled and retaken, failed factor updates, an older
 * blob continued); and between refreshes most of K-FAC's bytes keep their
 * stamps.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* A saved state with its parts. */
typedef struct {
    unsigned char *blob;
    size_t len;
    curv_state_part *p;
    size_t n;
} saved;

static void saved_free(saved *s)
{
    curv_free(s->blob);
    curv_free(s->p);
    *s = (saved){0};
}

/*
 * Save @o with its parts, asserting that they tile the blob in order with
 * none empty, that the header (first part) and the CRC trailer (in the
 * last part) have stamp 0, and that the blob is curv_opt_save's.
 */
static saved save(const curv_opt *o)
{
    saved s = {0};
    curv_error err;
    tu_assert_status(curv_opt_save_parts(o, &s.blob, &s.len, &s.p, &s.n, &err), CURV_OK, &err);
    size_t at = 0;
    for (size_t i = 0; i < s.n; i++) {
        assert_int_equal(s.p[i].offset, at);
        assert_true(s.p[i].len > 0);
        at += s.p[i].len;
    }
    assert_int_equal(at, s.len);
    assert_true(s.p[0].stamp == 0 && s.p[0].len >= 24);
    assert_true(s.p[s.n - 1].stamp == 0 && s.p[s.n - 1].len >= 4);
    size_t len;
    unsigned char *plain = tu_snapshot(o, &len);
    assert_int_equal(len, s.len);
    assert_memory_equal(plain, s.blob, len);
    curv_free(plain);
    return s;
}

static int same_layout(const saved *a, const saved *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (a->p[i].offset != b->p[i].offset || a->p[i].len != b->p[i].len)
            return 0;
    return 1;
}

/* Bytes in parts with a nonzero stamp. */
static size_t stable_bytes(const saved *s)
{
    size_t bytes = 0;
    for (size_t i = 0; i < s->n; i++)
        bytes += s->p[i].stamp ? s->p[i].len : 0;
    return bytes;
}

/*
 * Two saves of one history with the same parts layout: every part whose
 * nonzero stamp is the same in both holds the same bytes. Returns the
 * bytes in such parts (a store would not rewrite them).
 */
static size_t unchanged_bytes(const saved *a, const saved *b)
{
    assert_true(same_layout(a, b));
    size_t bytes = 0;
    for (size_t i = 0; i < a->n; i++) {
        const curv_state_part *p = &a->p[i];
        if (p->stamp == 0 || p->stamp != b->p[i].stamp)
            continue;
        if (memcmp(a->blob + p->offset, b->blob + p->offset, p->len) != 0)
            fail_msg("part %zu (offset %zu, %zu bytes, stamp %#llx) changed under the same stamp",
                     i, p->offset, p->len, (unsigned long long)p->stamp);
        bytes += p->len;
    }
    return bytes;
}

/* Stable parts whose stamp differs between @a and @b. */
static size_t restamped(const saved *a, const saved *b)
{
    size_t n = 0;
    for (size_t i = 0; i < a->n; i++)
        n += a->p[i].stamp && a->p[i].stamp != b->p[i].stamp;
    return n;
}

/* Save again: the same parts and stamps, the same bytes. */
static void assert_same_save(const saved *a, const saved *b)
{
    assert_true(same_layout(a, b));
    for (size_t i = 0; i < a->n; i++)
        assert_true(a->p[i].stamp == b->p[i].stamp);
    assert_int_equal(a->len, b->len);
    assert_memory_equal(a->blob, b->blob, a->len);
}

static curv_opt *load(const saved *s)
{
    curv_opt *o = NULL;
    curv_error err;
    tu_assert_status(curv_opt_load(s->blob, s->len, &o, &err), CURV_OK, &err);
    return o;
}

/* ---- every kind ---------------------------------------------------------- */

/* h(θ + v) = gᵀv + ½vᵀGv with G = diag(1 .. 2): HF's trainer. */
static void hf_step(curv_opt *o, const double *g, double *u)
{
    double G[TU_D_MIXED * TU_D_MIXED] = {0}, sq[TU_D_MIXED];
    for (size_t i = 0; i < TU_D_MIXED; i++) {
        G[i * TU_D_MIXED + i] = 1.0 + (double)i / TU_D_MIXED;
        sq[i] = g[i] * g[i];
    }
    tu_quad q = {TU_D_MIXED, G, g, 1.0};
    curv_step_input in = {
        .grad = g, .len = TU_D_MIXED, .dtype = CURV_F64, .loss = 1.0, .has_loss = 1, .grad_sq = sq};
    curv_error err;
    tu_assert_status(tu_drive(o, &in, tu_quad_answer, &q, u, NULL, &err), CURV_OK, &err);
}

static const size_t W[] = {6, 8, 8, 4};

/* Every kind: valid parts; save twice without a step gives the same stamps;
 * across steps, unchanged stamps mean unchanged bytes, and the state's
 * arrays are stable parts that a step restamps. */
static void test_every_kind(void **state)
{
    (void)state;
    curv_layout *mixed = tu_opt_mixed_layout();
    tu_mlp net;
    curv_layout *mlp = tu_mlp_setup(&net, W, 3, 2, 10, 1, 2);
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        const curv_opt_kind kind = (curv_opt_kind)k;
        if (!curv_opt_kind_name(kind))
            continue;
        const int kfac = kind == CURV_OPT_KFAC;
        const tu_kv momentum = {"momentum", 0.9}; /* gives SGD a state */
        curv_opt *o = tu_opt_with(kind, kfac ? mlp : mixed, &momentum,
                                  tu_has_param(kind, "momentum") && !kfac);
        double g[TU_D_MIXED], *u = tu_alloc(kfac ? net.dim : TU_D_MIXED);
        saved prev = save(o);
        for (unsigned t = 0; t < 4; t++) {
            for (size_t i = 0; i < TU_D_MIXED; i++)
                g[i] = sin(0.3 * (double)(t * TU_D_MIXED + i)) * (1 + (double)(i % 4));
            curv_error err;
            if (kfac) {
                tu_mlp_batch(&net, 10 + t);
                tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
            } else if (kind == CURV_OPT_HF) {
                hf_step(o, g, u);
            } else {
                tu_step_ok(o, g, NULL, u);
            }
            saved s = save(o), again = save(o);
            assert_same_save(&s, &again);
            /* Each kind keeps at least one d-vector, in stable parts. */
            assert_true(stable_bytes(&s) >= 8 * (kfac ? net.dim : TU_D_MIXED));
            if (kind == CURV_OPT_SGD && t == 0) {
                assert_false(same_layout(&prev, &s)); /* the momentum buffer appears */
            } else {
                unchanged_bytes(&prev, &s);
                if (restamped(&prev, &s) == 0)
                    fail_msg("%s: step %u changed the state and no stamp", curv_opt_kind_name(kind),
                             t + 1);
            }
            saved_free(&again);
            saved_free(&prev);
            prev = s;
        }
        saved_free(&prev);
        free(u);
        curv_opt_free(o);
    }
    curv_layout_free(mixed);
    tu_mlp_teardown(NULL, mlp, &net);
}

static void test_null_arguments(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, NULL);
    unsigned char *blob = NULL;
    size_t len = 0, n = 0;
    curv_state_part *p = NULL;
    curv_error err;
    tu_assert_status(curv_opt_save_parts(NULL, &blob, &len, &p, &n, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_save_parts(o, NULL, &len, &p, &n, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_save_parts(o, &blob, NULL, &p, &n, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_save_parts(o, &blob, &len, NULL, &n, &err), CURV_E_INVALID, &err);
    tu_assert_status(curv_opt_save_parts(o, &blob, &len, &p, NULL, &err), CURV_E_INVALID, &err);
    assert_null(blob);
    assert_null(p);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* ---- K-FAC --------------------------------------------------------------- */

enum { COV = 2, INV = 3, STEPS = 13 };

static curv_opt *kfac(const curv_layout *l, int tridiag, int simple)
{
    const tu_kv kv[] = {{"cov_interval", COV}, {"inv_interval", INV}, {"gamma_interval", 4}};
    return tu_kfac_opt(l, kv, 3, "inverse", tridiag ? "tridiag" : "blockdiag", "mode",
                       simple ? "simple" : "adaptive", NULL);
}

static int stats_due(unsigned k)
{
    return (k - 1) % COV == 0;
}

static int refresh_due(unsigned k)
{
    return k <= 3 || k % INV == 0;
}

/*
 * Over a run with statistics every COV steps (and now and then between)
 * and refreshes every INV: consecutive saves obey the stamps, and on steps
 * with neither statistics nor a refresh at least half of the blob keeps
 * its stamps (the factors and decompositions); on statistics-only steps
 * the decompositions still do.
 */
static void test_kfac_run(void **state)
{
    (void)state;
    for (int mode = 0; mode < 4; mode++) {
        const int tridiag = mode & 1, simple = mode >> 1;
        tu_mlp net;
        curv_layout *l = tu_mlp_setup(&net, W, 3, 2, 10, 3, 4);
        curv_opt *o = kfac(l, tridiag, simple);
        double *u = tu_alloc(net.dim);
        saved prev = save(o);
        for (unsigned k = 1; k <= STEPS; k++) {
            const int stats = stats_due(k) || k == 8; /* 8: optional statistics */
            tu_mlp_batch(&net, 100 + k);
            curv_error err;
            tu_assert_status(tu_mlp_step(o, &net, stats, u, NULL, &err), CURV_OK, &err);
            saved s = save(o);
            const double kept = (double)unchanged_bytes(&prev, &s) / (double)s.len;
            if (!stats && !refresh_due(k) && kept < 0.5)
                fail_msg("mode %d step %u: only %.0f%% of the bytes kept their stamps", mode, k,
                         100 * kept);
            if (stats && !refresh_due(k) && kept < 0.25)
                fail_msg("mode %d step %u: the decompositions lost their stamps", mode, k);
            if (refresh_due(k) && stats && kept > 0.1)
                fail_msg("mode %d step %u: %.0f%% kept stamps through a refresh", mode, k,
                         100 * kept);
            saved_free(&prev);
            prev = s;
        }
        saved_free(&prev);
        free(u);
        tu_mlp_teardown(o, l, &net);
    }
}

/* Save, load, save: the same parts with the same stamps; continuing the
 * loaded optimizer gives the blobs the original gives. */
static void test_kfac_save_load(void **state)
{
    (void)state;
    for (int tridiag = 0; tridiag < 2; tridiag++) {
        tu_mlp net;
        curv_layout *l = tu_mlp_setup(&net, W, 3, 2, 10, 5, 6);
        curv_opt *a = kfac(l, tridiag, 0);
        double *u = tu_alloc(net.dim);
        curv_error err;
        for (unsigned k = 1; k <= 4; k++) {
            tu_mlp_batch(&net, 200 + k);
            tu_assert_status(tu_mlp_step(a, &net, stats_due(k), u, NULL, &err), CURV_OK, &err);
        }
        saved s = save(a);
        curv_opt *b = load(&s);
        saved again = save(b);
        assert_same_save(&s, &again);
        for (unsigned k = 5; k <= 9; k++) {
            tu_mlp_batch(&net, 200 + k);
            tu_assert_status(tu_mlp_step(a, &net, stats_due(k), u, NULL, &err), CURV_OK, &err);
            tu_assert_status(tu_mlp_step(b, &net, stats_due(k), u, NULL, &err), CURV_OK, &err);
            saved sa = save(a), sb = save(b);
            assert_same_save(&sa, &sb);
            saved_free(&sa);
            saved_free(&sb);
        }
        saved_free(&s);
        saved_free(&again);
        free(u);
        curv_opt_free(b);
        tu_mlp_teardown(a, l, &net);
    }
}

/*
 * A step saved while its request is pending holds the state from before
 * it: the same stamps and stable bytes as the save before the step. Both
 * ways of taking the step again, cancelling it on the live optimizer or
 * loading that blob, start from the committed state only, with or without
 * statistics (a cancelled step's tentative factors, decompositions and
 * tridiagonal candidates must not survive into the retaken step).
 */
static void test_kfac_interrupted_and_cancelled(void **state)
{
    (void)state;
    for (int tridiag = 0; tridiag < 2; tridiag++) {
        tu_mlp net;
        curv_layout *l = tu_mlp_setup(&net, W, 3, 2, 10, 7, 8);
        curv_opt *o = kfac(l, tridiag, 0);
        double *u = tu_alloc(net.dim), *u2 = tu_alloc(net.dim);
        curv_error err;
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
        for (unsigned k = 2; k <= 8; k++) {
            saved before = save(o);
            tu_mlp_batch(&net, 300 + k);
            curv_step_input in = tu_mlp_input(&net, 1); /* allowed on every step */
            curv_request req;
            tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_NEED_INPUT, &err);
            saved mid = save(o);
            assert_int_equal(unchanged_bytes(&before, &mid), stable_bytes(&before));
            assert_int_equal(restamped(&before, &mid), 0);
            curv_opt_cancel(o);
            const int stats = stats_due(k);
            tu_mlp_batch(&net, 400 + k);
            tu_assert_status(tu_mlp_step(o, &net, stats, u, NULL, &err), CURV_OK, &err);
            curv_opt *r = load(&mid);
            tu_assert_status(tu_mlp_step(r, &net, stats, u2, NULL, &err), CURV_OK, &err);
            if (memcmp(u, u2, net.dim * sizeof *u) != 0)
                fail_msg("tridiag %d step %u: the cancelled step left state behind", tridiag, k);
            saved a = save(o), b = save(r);
            assert_same_save(&a, &b);
            unchanged_bytes(&mid, &a);
            saved_free(&a);
            saved_free(&b);
            saved_free(&mid);
            saved_free(&before);
            curv_opt_free(r);
        }
        free(u), free(u2);
        tu_mlp_teardown(o, l, &net);
    }
}

/* Reconfiguring keeps the stamps and bytes of the state; a list setting
 * that changes length moves the parts, which a store sees as a new layout. */
static void test_kfac_reconfigure(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 3, 2, 10, 9, 10);
    curv_opt *o = kfac(l, 1, 0);
    double *u = tu_alloc(net.dim);
    curv_error err;
    for (unsigned k = 1; k <= 3; k++)
        tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    saved a = save(o);
    curv_config *c = curv_config_new();
    tu_config_set(c, "lr", 0.5, NULL);
    tu_config_set(c, "decay", 0.5, NULL);
    tu_config_set(c, "inv_interval", 2, NULL);
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    saved b = save(o);
    assert_int_equal(unchanged_bytes(&a, &b), stable_bytes(&a));
    assert_int_equal(restamped(&a, &b), 0);
    assert_true(memcmp(a.blob, b.blob, a.len) != 0);
    tu_config_set(c, "lr_milestones", 0, "100,200");
    tu_assert_status(curv_opt_reconfigure(o, c, &err), CURV_OK, &err);
    saved m = save(o);
    assert_false(same_layout(&b, &m));
    for (unsigned k = 4; k <= 7; k++) { /* the new settings act from here */
        tu_mlp_batch(&net, 500 + k);
        tu_assert_status(tu_mlp_step(o, &net, stats_due(k), u, NULL, &err), CURV_OK, &err);
        saved s = save(o);
        unchanged_bytes(&m, &s);
        saved_free(&m);
        m = s;
    }
    curv_config_free(c);
    saved_free(&a);
    saved_free(&b);
    saved_free(&m);
    free(u);
    tu_mlp_teardown(o, l, &net);
}

/* Statistics that overflow keep a block's factors and decompositions: their
 * stamps and bytes stay, while the other block's move on. */
static void test_kfac_failed_update(void **state)
{
    (void)state;
    tu_mlp net;
    const size_t w2[] = {3, 4, 2};
    curv_layout *l = tu_mlp_setup(&net, w2, 2, 0, 4, 11, 12);
    const tu_kv kv[] = {{"max_failures", 3}, {"weight_decay", 0}};
    curv_opt *o = tu_kfac_opt(l, kv, 2, "mode", "simple", NULL);
    double *u = tu_alloc(net.dim), huge[4 * 3];
    curv_error err;
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err);
    for (size_t i = 0; i < 12; i++)
        huge[i] = 1e200 * (1 + (double)i);
    tu_mlp_batch(&net, 13);
    saved good_before = save(o);
    tu_assert_status(tu_mlp_step(o, &net, 1, u, NULL, &err), CURV_OK, &err); /* step 2 */
    saved good = save(o);
    const size_t moved = restamped(&good_before, &good);
    curv_step_input in = tu_mlp_input(&net, 1);
    curv_layer_stats ls[2];
    memcpy(ls, net.stats, sizeof ls);
    ls[0].acts = huge; /* block l0's factors overflow */
    in.layers = ls;
    curv_request req;
    tu_assert_status(curv_opt_step(o, &in, u, &req, &err), CURV_OK, &err); /* step 3 */
    assert_true(tu_report(o, "inverse_failures") == 1);
    saved bad = save(o);
    unchanged_bytes(&good, &bad);
    /* Steps 2 and 3 both fold statistics and refresh every block; on step
     * 3 l0 keeps its two factors (its refresh decomposes the old ones). */
    assert_int_equal(restamped(&good, &bad) + 2, moved);
    saved_free(&good_before);
    saved_free(&good);
    saved_free(&bad);
    free(u);
    tu_mlp_teardown(o, l, &net);
}

/* An older blob, loaded, saves its own stamps again (they come from the
 * state, not from the optimizer that saved later blobs), and continued
 * with the same input it arrives at the same blobs. */
static void test_kfac_older_blob(void **state)
{
    (void)state;
    tu_mlp net;
    curv_layout *l = tu_mlp_setup(&net, W, 3, 2, 10, 13, 14);
    curv_opt *o = kfac(l, 1, 1);
    double *u = tu_alloc(net.dim);
    curv_error err;
    saved old = {0}, last = {0};
    for (unsigned k = 1; k <= 10; k++) {
        tu_mlp_batch(&net, 600 + k);
        tu_assert_status(tu_mlp_step(o, &net, stats_due(k), u, NULL, &err), CURV_OK, &err);
        if (k == 4)
            old = save(o);
    }
    last = save(o);
    assert_true(restamped(&old, &last) > 0);
    curv_opt *r = load(&old);
    saved again = save(r);
    assert_same_save(&old, &again);
    for (unsigned k = 5; k <= 10; k++) {
        tu_mlp_batch(&net, 600 + k);
        tu_assert_status(tu_mlp_step(r, &net, stats_due(k), u, NULL, &err), CURV_OK, &err);
    }
    saved end = save(r);
    assert_same_save(&last, &end);
    saved_free(&old);
    saved_free(&last);
    saved_free(&again);
    saved_free(&end);
    free(u);
    curv_opt_free(r);
    tu_mlp_teardown(o, l, &net);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_kind),
        cmocka_unit_test(test_null_arguments),
        cmocka_unit_test(test_kfac_run),
        cmocka_unit_test(test_kfac_save_load),
        cmocka_unit_test(test_kfac_interrupted_and_cancelled),
        cmocka_unit_test(test_kfac_reconfigure),
        cmocka_unit_test(test_kfac_failed_update),
        cmocka_unit_test(test_kfac_older_blob),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
