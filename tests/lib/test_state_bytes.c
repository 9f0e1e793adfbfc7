/* SPDX-License-Identifier: MIT */
/*
 * curv_opt_state_bytes: for every kind over several layouts and settings
 * the estimate is exactly the bytes curv_opt_new allocates and keeps,
 * measured here by wrapping the allocator at link time (the Makefile links
 * this suite with -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,
 * --wrap=free); a huge layout gives a large number without allocating;
 * the refusals are curv_opt_new's; counts saturate at SIZE_MAX.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "testutil.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t sz);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t sz);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);

/* The blocks allocated while counting is on and not freed since. */
#define MAX_LIVE 4096
static struct {
    int on;
    size_t n, calls, total; /* live blocks; allocations and bytes asked for */
    void *p[MAX_LIVE];
    size_t bytes[MAX_LIVE];
} live;

static void track(void *p, size_t bytes)
{
    if (!live.on || !p)
        return;
    assert_true(live.n < MAX_LIVE);
    live.p[live.n] = p;
    live.bytes[live.n++] = bytes;
    live.calls++;
    live.total += bytes;
}

static void untrack(void *p)
{
    for (size_t i = 0; p && i < live.n; i++)
        if (live.p[i] == p) {
            live.p[i] = live.p[--live.n];
            live.bytes[i] = live.bytes[live.n];
            return;
        }
}

void *__wrap_malloc(size_t n)
{
    void *p = __real_malloc(n);
    track(p, n);
    return p;
}

void *__wrap_calloc(size_t n, size_t sz)
{
    void *p = __real_calloc(n, sz);
    track(p, n * sz);
    return p;
}

void *__wrap_realloc(void *p, size_t n)
{
    void *q = __real_realloc(p, n);
    if (q) {
        untrack(p);
        track(q, n);
    }
    return q;
}

void __wrap_free(void *p)
{
    untrack(p);
    __real_free(p);
}

static void count_from_here(void)
{
    memset(&live, 0, sizeof live);
    live.on = 1;
}

static size_t live_bytes(void)
{
    live.on = 0;
    size_t sum = 0;
    for (size_t i = 0; i < live.n; i++)
        sum += live.bytes[i];
    return sum;
}

/* The estimate for (@kind, @l, @c) equals what curv_opt_new keeps, and
 * computing it keeps nothing. */
static void assert_exact(curv_opt_kind kind, const curv_layout *l, const curv_config *c,
                         const char *what)
{
    size_t est = 0;
    curv_error err;
    count_from_here();
    tu_assert_status(curv_opt_state_bytes(kind, l, c, &est, &err), CURV_OK, &err);
    assert_int_equal(live_bytes(), 0);
    curv_opt *o = NULL;
    count_from_here();
    tu_assert_status(curv_opt_new(kind, l, c, &o, &err), CURV_OK, &err);
    const size_t kept = live_bytes();
    if (est != kept)
        fail_msg("%s, %s: estimate %zu bytes, curv_opt_new keeps %zu", curv_opt_kind_name(kind),
                 what, est, kept);
    curv_opt_free(o);
}

/* Dense layers each fed by the one before (K-FAC's tridiagonal chains), and a vector. */
static curv_layout *chain_layout(void)
{
    tu_mlp net;
    const size_t w[] = {5, 4, 4, 3};
    tu_mlp_new(&net, w, 3, 3, 2, 1);
    curv_layout *l = tu_mlp_layout(&net);
    tu_mlp_free(&net);
    return l;
}

/* Settings per kind, each applied where the kind has the key. */
static const struct {
    const char *what;
    tu_kv num[3];
    const char *key, *str;
} SETTINGS[] = {
    {"defaults", {{NULL, 0}}, NULL, NULL},
    {"tau 2, row partition", {{"tau", 2}, {"conv_tau", 3}}, "partition", "row"},
    {"tridiagonal, sgd fallback", {{"momentum", 0.9}}, "inverse", "tridiag"},
    {"diagonal factor sides", {{"max_factor_dim", 4}, {"backtrack_batch", 3}}, "fallback", "sgd"},
    {"simple mode (K-FAC's Cholesky refresh)", {{NULL, 0}}, "mode", "simple"},
    {"simple mode (K-FAC's Cholesky refresh), diagonal sides",
     {{"max_factor_dim", 4}},
     "mode",
     "simple"},
};

static void test_exact_every_kind(void **state)
{
    (void)state;
    curv_layout *layouts[] = {tu_opt_mixed_layout(), chain_layout()};
    const char *names[] = {"mixed layout", "chain layout"};
    for (size_t li = 0; li < 2; li++)
        for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
            const curv_opt_kind kind = (curv_opt_kind)k;
            if (!curv_opt_kind_name(kind))
                continue;
            for (size_t s = 0; s < sizeof SETTINGS / sizeof SETTINGS[0]; s++) {
                curv_config *c = curv_config_new();
                for (size_t i = 0; i < 3 && SETTINGS[s].num[i].key; i++)
                    if (tu_has_param(kind, SETTINGS[s].num[i].key))
                        tu_config_set(c, SETTINGS[s].num[i].key, SETTINGS[s].num[i].num, NULL);
                if (SETTINGS[s].key && tu_has_param(kind, SETTINGS[s].key))
                    tu_config_set(c, SETTINGS[s].key, 0, SETTINGS[s].str);
                char what[96];
                snprintf(what, sizeof what, "%s, %s", names[li], SETTINGS[s].what);
                assert_exact(kind, layouts[li], c, what);
                curv_config_free(c);
            }
        }
    curv_layout_free(layouts[0]);
    curv_layout_free(layouts[1]);
}

/* Layouts far beyond memory: large answers, a few small allocations. */
static void test_huge_layouts(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "big", 200000, 300000, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "gain", 1000000, NULL), CURV_OK);
    const double d = (double)curv_layout_dim(l);
    const struct {
        curv_opt_kind kind;
        double at_least; /* bytes */
    } cases[] = {
        {CURV_OPT_ADAGRAD_DIAG, 8 * d},
        {CURV_OPT_MBAG, 8 * (2 * 32 + 4) * d},
        {CURV_OPT_KFAC, 8 * d},
        {CURV_OPT_HF, 8 * d},
        {CURV_OPT_ADAGRAD_BMA, 8 * 2 * d},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t est = 0;
        curv_error err;
        count_from_here();
        tu_assert_status(curv_opt_state_bytes(cases[i].kind, l, NULL, &est, &err), CURV_OK, &err);
        live_bytes();
        assert_true(live.total < 65536 && live.calls < 16);
        if (!((double)est >= cases[i].at_least))
            fail_msg("%s: %zu bytes for d = %.0f", curv_opt_kind_name(cases[i].kind), est, d);
    }
    curv_layout_free(l);
}

/* The refusals of curv_opt_new, with *bytes untouched. */
static void test_refusals(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout(), *empty = curv_layout_new();
    curv_layout *big = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(big, "v", 5000, NULL), CURV_OK);
    curv_config *bad = curv_config_new(), *blocks = curv_config_new(), *tau = curv_config_new();
    tu_config_set(bad, "no_such_key", 1, NULL);
    tu_config_set(blocks, "max_blocks", 2, NULL);
    tu_config_set(tau, "tau", 4096, NULL);
    curv_layout *huge_vec = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(huge_vec, "v", CURV_LAYOUT_MAX_DIM, NULL), CURV_OK);
    curv_config *huge_tau = curv_config_new();
    tu_config_set(huge_tau, "tau", (double)CURV_LAYOUT_MAX_DIM, NULL);
    const struct {
        curv_opt_kind kind;
        const curv_layout *l;
        const curv_config *c;
        curv_status want;
        const char *needle;
    } cases[] = {
        {(curv_opt_kind)99, l, NULL, CURV_E_INVALID, "unknown optimizer kind"},
        {CURV_OPT_SGD, NULL, NULL, CURV_E_INVALID, "NULL layout"},
        {CURV_OPT_SGD, empty, NULL, CURV_E_INVALID, "no parameter blocks"},
        {CURV_OPT_KFAC, l, bad, CURV_E_CONFIG, "no_such_key"},
        {CURV_OPT_ADAGRAD_FULL, big, NULL, CURV_E_RANGE, "max_dim"},
        {CURV_OPT_ADAGRAD_BMA, l, blocks, CURV_E_RANGE, "max_blocks"},
        {CURV_OPT_MBAG, huge_vec, huge_tau, CURV_E_RANGE, "overflow"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t est = 12345;
        curv_error err;
        curv_error_clear(&err);
        tu_assert_status(curv_opt_state_bytes(cases[i].kind, cases[i].l, cases[i].c, &est, &err),
                         cases[i].want, &err);
        assert_non_null(strstr(err.text, cases[i].needle));
        assert_int_equal(est, 12345);
        curv_opt *o = NULL; /* curv_opt_new refuses alike */
        assert_int_equal(curv_opt_new(cases[i].kind, cases[i].l, cases[i].c, &o, NULL),
                         cases[i].want);
    }
    tu_assert_status(curv_opt_state_bytes(CURV_OPT_SGD, l, NULL, NULL, NULL), CURV_E_INVALID, NULL);
    size_t est;
    tu_assert_status(curv_opt_state_bytes(CURV_OPT_MBAG, l, tau, &est, NULL), CURV_OK, NULL);
    curv_config_free(bad), curv_config_free(blocks), curv_config_free(tau);
    curv_config_free(huge_tau);
    curv_layout_free(l), curv_layout_free(empty), curv_layout_free(big);
    curv_layout_free(huge_vec);
}

/* Counting saturates at SIZE_MAX and allocates nothing. */
static void test_saturation(void **state)
{
    (void)state;
    assert_true(curv__calloc_bytes(SIZE_MAX / 2 + 1, 2) == SIZE_MAX);
    assert_true(curv__calloc_bytes(0, 0) == 1);
    assert_true(curv__calloc_bytes(0, 8) == 8);
    assert_true(curv__sat_add(SIZE_MAX - 1, 2) == SIZE_MAX);
    struct curv__tally t = {.alloc = 0};
    count_from_here();
    assert_null(curv__tally_calloc(&t, SIZE_MAX / 8, 8));
    assert_true(t.bytes == SIZE_MAX / 8 * 8);
    assert_null(curv__tally_calloc(&t, SIZE_MAX / 8, 8));
    assert_true(t.bytes == SIZE_MAX);
    char scratch[16] = {1};
    assert_ptr_equal(curv__tally_obj(&t, scratch, sizeof scratch), scratch);
    assert_int_equal(scratch[0], 0);
    assert_true(t.bytes == SIZE_MAX);
    live_bytes();
    assert_int_equal(live.calls, 0);
    assert_false(t.failed);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact_every_kind),
        cmocka_unit_test(test_huge_layouts),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_saturation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
