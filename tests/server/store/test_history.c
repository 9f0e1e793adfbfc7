/* SPDX-License-Identifier: MIT */
/* Step history (migration 0006): each committed step writes its row in its
 * own transaction, a conflicting one writes none; the rows beyond the
 * session's bound (its own, or the daemon's default) go in the same
 * transaction; pages by step with since/page_size; the rows survive a
 * reopen and go with their session. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "srvutil.h"
#include "store/store.h"
#include "testutil.h"

static char err[512];
static char dir[64], path[512];

#define assert_store(expr, want) su_assert_store(expr, want, err)

static struct curvd_store *open_db(void)
{
    struct curvd_store *st = NULL;
    assert_store(curvd_store_open(path, CURVD_DURABILITY_NORMAL, &st, err, sizeof err),
                 CURVD_STORE_OK);
    return st;
}

static void create(struct curvd_store *st, const char *id, int has, int64_t keep)
{
    struct curvd_session_new s = {
        .id = id, .tenant = "t", .optimizer = "sgd", .has_history = has, .history_steps = keep};
    assert_store(curvd_store_create(st, &s, NULL, err, sizeof err), CURVD_STORE_OK);
}

/* Commit step @k of @id with a report naming k, a timing and 2k callbacks. */
static int commit(struct curvd_store *st, const char *id, int64_t k)
{
    char report[64], timing[64];
    snprintf(report, sizeof report, "{\"optimizer\":\"sgd\",\"loss\":%lld}", (long long)k);
    snprintf(timing, sizeof timing, "{\"step\":%lld.5}", (long long)k);
    struct curvd_step_commit c = {
        .step = k, .content_type = "x", .report = report, .timing = timing, .callbacks = 2 * k};
    return curvd_store_commit_step(st, "t", id, &c, NULL, err, sizeof err);
}

static void commit_ok(struct curvd_store *st, const char *id, int64_t from, int64_t to)
{
    for (int64_t k = from; k <= to; k++)
        assert_store(commit(st, id, k), CURVD_STORE_OK);
}

/* The steps of @id after @since as "a,b,c" (page of @size), with the page's
 * flags. Every entry must carry what commit() wrote for its step. */
static void page(struct curvd_store *st, const char *id, int64_t since, size_t size, char *out,
                 size_t cap, struct curvd_history_page *flags)
{
    struct curvd_history_page p;
    assert_store(curvd_store_history(st, "t", id, since, size, &p, err, sizeof err),
                 CURVD_STORE_OK);
    size_t n = 0;
    out[0] = '\0';
    for (size_t i = 0; i < p.count; i++) {
        const struct curvd_history_entry *e = &p.items[i];
        char want[64];
        snprintf(want, sizeof want, "{\"optimizer\":\"sgd\",\"loss\":%lld}", (long long)e->step);
        assert_string_equal(e->report, want);
        snprintf(want, sizeof want, "{\"step\":%lld.5}", (long long)e->step);
        assert_string_equal(e->timing, want);
        assert_int_equal(e->callbacks, 2 * e->step);
        assert_true(e->at > 0);
        n += (size_t)snprintf(out + n, cap - n, "%s%lld", i ? "," : "", (long long)e->step);
    }
    *flags = (struct curvd_history_page){
        .count = p.count, .more = p.more, .oldest = p.oldest, .latest = p.latest};
    curvd_history_page_clear(&p);
}

#define EXPECT_PAGE(st, id, since, size, want, more_, oldest_, latest_)                            \
    do {                                                                                           \
        char got_[256];                                                                            \
        struct curvd_history_page f_;                                                              \
        page(st, id, since, size, got_, sizeof got_, &f_);                                         \
        assert_string_equal(got_, want);                                                           \
        assert_int_equal(f_.more, more_);                                                          \
        assert_int_equal(f_.oldest, oldest_);                                                      \
        assert_int_equal(f_.latest, latest_);                                                      \
    } while (0)

static void test_pages(void **state)
{
    (void)state;
    struct curvd_store *st = open_db();
    create(st, "a", 0, 0);
    EXPECT_PAGE(st, "a", 0, 10, "", 0, 0, 0);
    commit_ok(st, "a", 1, 10);
    EXPECT_PAGE(st, "a", 0, 3, "1,2,3", 1, 1, 10);
    EXPECT_PAGE(st, "a", 3, 3, "4,5,6", 1, 1, 10);
    EXPECT_PAGE(st, "a", 6, 3, "7,8,9", 1, 1, 10);
    EXPECT_PAGE(st, "a", 9, 3, "10", 0, 1, 10);
    EXPECT_PAGE(st, "a", 10, 3, "", 0, 1, 10);
    EXPECT_PAGE(st, "a", 7, 3, "8,9,10", 0, 1, 10); /* exactly the rest: no more */
    EXPECT_PAGE(st, "a", 0, CURVD_STORE_MAX_PAGE, "1,2,3,4,5,6,7,8,9,10", 0, 1, 10);
    /* A step that conflicts writes no row. */
    assert_store(commit(st, "a", 10), CURVD_STORE_CONFLICT);
    assert_store(commit(st, "a", 12), CURVD_STORE_CONFLICT);
    EXPECT_PAGE(st, "a", 9, 10, "10", 0, 1, 10);
    /* Refusals. */
    struct curvd_history_page p;
    assert_store(curvd_store_history(st, "t", "a", 0, 0, &p, err, sizeof err), CURVD_STORE_INVALID);
    assert_store(
        curvd_store_history(st, "t", "a", 0, CURVD_STORE_MAX_PAGE + 1, &p, err, sizeof err),
        CURVD_STORE_INVALID);
    assert_store(curvd_store_history(st, "t", "a", -1, 10, &p, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_history(st, "t", NULL, 0, 10, &p, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(curvd_store_history(st, "other", "a", 0, 10, &p, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_history(st, "t", "nope", 0, 10, &p, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    curvd_history_page_clear(NULL);
    /* Deleting the session deletes its history. */
    assert_store(curvd_store_delete(st, "t", "a", err, sizeof err), CURVD_STORE_OK);
    curvd_store_close(st);
    assert_int_equal(su_raw_int(path, "SELECT count(*) FROM step_history"), 0);
}

static void test_bounds(void **state)
{
    (void)state;
    struct curvd_store *st = open_db();
    assert_int_equal(curvd_store_set_history_default(st, 3), CURVD_STORE_OK);
    assert_int_equal(curvd_store_set_history_default(st, -1), CURVD_STORE_INVALID);
    assert_int_equal(curvd_store_set_history_default(st, CURVD_STORE_HISTORY_MAX + 1),
                     CURVD_STORE_INVALID);
    create(st, "dflt", 0, 0); /* the default: 3 */
    create(st, "own2", 1, 2); /* its own: 2 */
    create(st, "none", 1, 0); /* keeps none */
    commit_ok(st, "dflt", 1, 5);
    commit_ok(st, "own2", 1, 5);
    commit_ok(st, "none", 1, 5);
    EXPECT_PAGE(st, "dflt", 0, 10, "3,4,5", 0, 3, 5);
    EXPECT_PAGE(st, "own2", 0, 10, "4,5", 0, 4, 5);
    EXPECT_PAGE(st, "none", 0, 10, "", 0, 0, 5);
    struct curvd_session s;
    assert_store(curvd_store_get(st, "t", "own2", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.has_history, 1);
    assert_int_equal(s.history_steps, 2);
    curvd_session_clear(&s);
    assert_store(curvd_store_get(st, "t", "dflt", 0, &s, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(s.has_history, 0);
    curvd_session_clear(&s);
    /* Lowering a bound deletes at once; raising one keeps what is left. */
    assert_store(curvd_store_set_history(st, "t", "dflt", 1, 1, err, sizeof err), CURVD_STORE_OK);
    EXPECT_PAGE(st, "dflt", 0, 10, "5", 0, 5, 5);
    assert_store(curvd_store_set_history(st, "t", "dflt", 1, 100, err, sizeof err), CURVD_STORE_OK);
    commit_ok(st, "dflt", 6, 7);
    EXPECT_PAGE(st, "dflt", 0, 10, "5,6,7", 0, 5, 7);
    /* Back to the default (3). */
    assert_store(curvd_store_set_history(st, "t", "dflt", 0, 0, err, sizeof err), CURVD_STORE_OK);
    commit_ok(st, "dflt", 8, 8);
    EXPECT_PAGE(st, "dflt", 0, 10, "6,7,8", 0, 6, 8);
    /* A session that kept none starts keeping from its next step. */
    assert_store(curvd_store_set_history(st, "t", "none", 1, 10, err, sizeof err), CURVD_STORE_OK);
    commit_ok(st, "none", 6, 6);
    EXPECT_PAGE(st, "none", 0, 10, "6", 0, 6, 6);
    /* The default changed later applies from the next step. */
    assert_int_equal(curvd_store_set_history_default(st, 0), CURVD_STORE_OK);
    commit_ok(st, "dflt", 9, 9);
    EXPECT_PAGE(st, "dflt", 0, 10, "", 0, 0, 9);
    /* Refusals change nothing. */
    assert_store(curvd_store_set_history(st, "t", "own2", 1, -1, err, sizeof err),
                 CURVD_STORE_INVALID);
    assert_store(
        curvd_store_set_history(st, "t", "own2", 1, CURVD_STORE_HISTORY_MAX + 1, err, sizeof err),
        CURVD_STORE_INVALID);
    assert_store(curvd_store_set_history(st, "other", "own2", 1, 0, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    assert_store(curvd_store_set_history(st, "t", "nope", 1, 0, err, sizeof err),
                 CURVD_STORE_NOT_FOUND);
    EXPECT_PAGE(st, "own2", 0, 10, "4,5", 0, 4, 5);
    struct curvd_session_new bad = {
        .id = "bad", .tenant = "t", .optimizer = "sgd", .has_history = 1, .history_steps = -1};
    assert_store(curvd_store_create(st, &bad, NULL, err, sizeof err), CURVD_STORE_INVALID);
    struct curvd_step_commit neg = {.step = 6, .content_type = "x", .callbacks = -1};
    assert_store(curvd_store_commit_step(st, "t", "own2", &neg, NULL, err, sizeof err),
                 CURVD_STORE_INVALID);
    curvd_store_close(st);
    /* What was committed is there after a reopen. */
    st = open_db();
    EXPECT_PAGE(st, "own2", 0, 10, "4,5", 0, 4, 5);
    curvd_store_close(st);
}

/* The rows beyond the bound are deleted in batches (every 64 steps), in
 * a step's own transaction; a reader never sees them. */
static void test_pruned_in_batches(void **state)
{
    (void)state;
    struct curvd_store *st = open_db();
    create(st, "p", 1, 3);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM step_history WHERE session_id = 'p'");
    for (int64_t k = 1; k <= 200; k++) {
        assert_store(commit(st, "p", k), CURVD_STORE_OK);
        long long rows = su_raw_int(path, sql);
        assert_true(rows >= (k < 3 ? k : 3) && rows <= 3 + 64);
        if (k % 64 == 0)
            assert_int_equal(rows, 3); /* a batch was just deleted */
    }
    EXPECT_PAGE(st, "p", 0, 10, "198,199,200", 0, 198, 200);
    EXPECT_PAGE(st, "p", 198, 10, "199,200", 0, 198, 200);
    curvd_store_close(st);
}

/* A group commit of several steps of one session writes each one's row. */
static void test_group(void **state)
{
    (void)state;
    struct curvd_store *st = open_db();
    create(st, "g", 1, 3);
    struct curvd_step_commit c[5];
    struct curvd_commit_item it[5], *items[5];
    char reports[5][64], timings[5][64];
    for (int k = 0; k < 5; k++) {
        snprintf(reports[k], sizeof reports[k], "{\"optimizer\":\"sgd\",\"loss\":%d}", k + 1);
        snprintf(timings[k], sizeof timings[k], "{\"step\":%d.5}", k + 1);
        c[k] = (struct curvd_step_commit){.step = k + 1,
                                          .content_type = "x",
                                          .report = reports[k],
                                          .timing = timings[k],
                                          .callbacks = 2 * (k + 1)};
        it[k] = (struct curvd_commit_item){.tenant = "t", .id = "g", .c = &c[k]};
        items[k] = &it[k];
    }
    curvd_store_commit_steps(st, items, 5);
    for (int k = 0; k < 5; k++)
        assert_store(it[k].status, CURVD_STORE_OK);
    EXPECT_PAGE(st, "g", 0, 10, "3,4,5", 0, 3, 5);
    curvd_store_close(st);
}

static int setup(void **state)
{
    (void)state;
    char db[160];
    su_tmpdir(dir, sizeof dir, NULL, "history", db, sizeof db);
    su_db(dir, "history", path, sizeof path);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    return su_rmtree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_pages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bounds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pruned_in_batches, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
