/* SPDX-License-Identifier: MIT */
/* When the checkpointer runs (server/checkpoint.c): once per
 * CURVD_CKPT_PAGES of WAL added since it was last woken, not after every
 * commit past that size; from the start again when the WAL starts over;
 * in the committing thread past the hard limit, after which the WAL
 * (wholly checkpointed) can start over. */
#include "store/checkpoint.h"
#include "testutil.h"

/* Commits of @step pages each from an empty WAL that never starts over:
 * the pages at which the checkpointer is woken. */
static void test_woken_once_per_threshold(void **state)
{
    (void)state;
    int asked = 0, wakes = 0, last = 0;
    for (int pages = 3; pages < CURVD_CKPT_HARD_PAGES; pages += 3) {
        enum curvd_ckpt_action a = curvd_ckpt_decide(pages, &asked);
        assert_int_not_equal(a, CURVD_CKPT_NOW);
        if (a == CURVD_CKPT_WAKE) {
            /* Never before a threshold's worth of new pages, never much after. */
            assert_true(pages - last >= CURVD_CKPT_PAGES);
            assert_true(pages - last < CURVD_CKPT_PAGES + 3);
            last = pages;
            wakes++;
        }
    }
    /* A trigger on the WAL's size alone would have woken it after every
     * commit from the first threshold on (thousands of times). */
    assert_int_equal(wakes, (CURVD_CKPT_HARD_PAGES - 1) / CURVD_CKPT_PAGES);
}

static void test_started_over(void **state)
{
    (void)state;
    int asked = 0;
    assert_int_equal(curvd_ckpt_decide(CURVD_CKPT_PAGES, &asked), CURVD_CKPT_WAKE);
    assert_int_equal(curvd_ckpt_decide(CURVD_CKPT_PAGES + 10, &asked), CURVD_CKPT_NONE);
    /* The WAL started over and holds 10 pages: counting starts from 0. */
    assert_int_equal(curvd_ckpt_decide(10, &asked), CURVD_CKPT_NONE);
    assert_int_equal(curvd_ckpt_decide(CURVD_CKPT_PAGES - 1, &asked), CURVD_CKPT_NONE);
    assert_int_equal(curvd_ckpt_decide(CURVD_CKPT_PAGES, &asked), CURVD_CKPT_WAKE);
    /* One commit bigger than the threshold wakes it at once. */
    asked = 0;
    assert_int_equal(curvd_ckpt_decide(5 * CURVD_CKPT_PAGES, &asked), CURVD_CKPT_WAKE);
}

static void test_hard_limit(void **state)
{
    (void)state;
    int asked = CURVD_CKPT_HARD_PAGES - 5;
    assert_int_equal(curvd_ckpt_decide(CURVD_CKPT_HARD_PAGES, &asked), CURVD_CKPT_NOW);
    /* Checkpointed in full: the next commits start the WAL over. */
    assert_int_equal(asked, 0);
    assert_int_equal(curvd_ckpt_decide(40, &asked), CURVD_CKPT_NONE);
    assert_int_equal(curvd_ckpt_decide(CURVD_CKPT_HARD_PAGES + 7, &asked), CURVD_CKPT_NOW);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_woken_once_per_threshold),
        cmocka_unit_test(test_started_over),
        cmocka_unit_test(test_hard_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
