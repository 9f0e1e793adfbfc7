/* SPDX-License-Identifier: MIT */
/* Layouts: offsets, sizes and shapes of every block kind, find, dup, and
 * every error path leaving the layout exactly as it was. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* A copy of everything the public API reveals about a layout. */
#define SNAP_MAX 16
typedef struct {
    size_t dim, nblocks;
    curv_block_info b[SNAP_MAX];
    char names[SNAP_MAX][CURV_NAME_MAX + 1];
} layout_snap;

static void snap_take(const curv_layout *l, layout_snap *s)
{
    memset(s, 0, sizeof *s);
    s->dim = curv_layout_dim(l);
    s->nblocks = curv_layout_nblocks(l);
    assert_true(s->nblocks <= SNAP_MAX);
    for (size_t i = 0; i < s->nblocks; i++) {
        assert_int_equal(curv_layout_block(l, i, &s->b[i]), CURV_OK);
        snprintf(s->names[i], sizeof s->names[i], "%s", s->b[i].name);
    }
}

static void snap_check(const curv_layout *l, const layout_snap *s)
{
    layout_snap now;
    snap_take(l, &now);
    assert_int_equal(now.dim, s->dim);
    assert_int_equal(now.nblocks, s->nblocks);
    for (size_t i = 0; i < s->nblocks; i++) {
        const curv_block_info *a = &now.b[i], *b = &s->b[i];
        assert_string_equal(now.names[i], s->names[i]);
        assert_int_equal(a->kind, b->kind);
        assert_int_equal(a->n_out, b->n_out);
        assert_int_equal(a->n_in, b->n_in);
        assert_int_equal(a->c_in, b->c_in);
        assert_int_equal(a->kh, b->kh);
        assert_int_equal(a->kw, b->kw);
        assert_int_equal(a->has_bias, b->has_bias);
        assert_int_equal(a->rows, b->rows);
        assert_int_equal(a->cols, b->cols);
        assert_int_equal(a->offset, b->offset);
        assert_int_equal(a->size, b->size);
    }
}

static void check_block(const curv_layout *l, size_t i, const char *name, curv_block_kind kind,
                        size_t rows, size_t cols, size_t offset)
{
    curv_block_info b;
    assert_int_equal(curv_layout_block(l, i, &b), CURV_OK);
    assert_string_equal(b.name, name);
    assert_int_equal(b.kind, kind);
    assert_int_equal(b.rows, rows);
    assert_int_equal(b.cols, cols);
    assert_int_equal(b.n_out, rows);
    assert_int_equal(b.n_in + (b.has_bias ? 1 : 0), cols);
    assert_int_equal(b.size, rows * cols);
    assert_int_equal(b.offset, offset);
    assert_int_equal(curv_layout_find(l, name), (long)i);
}

static void test_empty(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_non_null(l);
    assert_int_equal(curv_layout_dim(l), 0);
    assert_int_equal(curv_layout_nblocks(l), 0);
    curv_block_info b;
    assert_int_equal(curv_layout_block(l, 0, &b), CURV_E_INVALID);
    assert_int_equal(curv_layout_find(l, "x"), -1);
    assert_int_equal(curv_layout_dim(NULL), 0);
    assert_int_equal(curv_layout_nblocks(NULL), 0);
    curv_layout_free(l);
    curv_layout_free(NULL);
}

static void test_offsets_and_shapes(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    curv_error err;
    assert_int_equal(curv_layout_add_dense(l, "fc1", 4, 3, 1, &err), CURV_OK);         /* 4 x 4 */
    assert_int_equal(curv_layout_add_dense(l, "fc2", 2, 4, 0, &err), CURV_OK);         /* 2 x 4 */
    assert_int_equal(curv_layout_add_conv2d(l, "conv", 5, 3, 2, 3, 1, &err), CURV_OK); /* 5x19 */
    assert_int_equal(curv_layout_add_conv2d(l, "conv_nb", 2, 1, 3, 3, 0, &err), CURV_OK); /* 2x9 */
    assert_int_equal(curv_layout_add_vector(l, "gain", 7, &err), CURV_OK); /* 7 x 1 */
    assert_int_equal(curv_layout_nblocks(l), 5);
    check_block(l, 0, "fc1", CURV_BLOCK_DENSE, 4, 4, 0);
    check_block(l, 1, "fc2", CURV_BLOCK_DENSE, 2, 4, 16);
    check_block(l, 2, "conv", CURV_BLOCK_CONV2D, 5, 19, 24);
    check_block(l, 3, "conv_nb", CURV_BLOCK_CONV2D, 2, 9, 119);
    check_block(l, 4, "gain", CURV_BLOCK_VECTOR, 7, 1, 137);
    assert_int_equal(curv_layout_dim(l), 144);

    curv_block_info b;
    assert_int_equal(curv_layout_block(l, 0, &b), CURV_OK);
    assert_int_equal(b.n_in, 3);
    assert_true(b.has_bias);
    assert_int_equal(b.c_in + b.kh + b.kw, 0);
    assert_int_equal(curv_layout_block(l, 1, &b), CURV_OK);
    assert_false(b.has_bias);
    assert_int_equal(curv_layout_block(l, 2, &b), CURV_OK);
    assert_int_equal(b.n_in, 3 * 2 * 3);
    assert_int_equal(b.c_in, 3);
    assert_int_equal(b.kh, 2);
    assert_int_equal(b.kw, 3);
    assert_true(b.has_bias);
    assert_int_equal(curv_layout_block(l, 4, &b), CURV_OK);
    assert_int_equal(b.n_in, 1);
    assert_false(b.has_bias);
    assert_int_equal(b.c_in + b.kh + b.kw, 0);

    /* Out of range and NULL leave @out alone. */
    curv_block_info keep;
    memset(&keep, 0xAB, sizeof keep);
    b = keep;
    assert_int_equal(curv_layout_block(l, 5, &b), CURV_E_INVALID);
    assert_memory_equal(&b, &keep, sizeof b);
    assert_int_equal(curv_layout_block(NULL, 0, &b), CURV_E_INVALID);
    assert_int_equal(curv_layout_block(l, 0, NULL), CURV_E_INVALID);
    curv_layout_free(l);
}

static void test_nonzero_bias_flag(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "a", 2, 3, 7, NULL), CURV_OK);
    check_block(l, 0, "a", CURV_BLOCK_DENSE, 2, 4, 0);
    curv_layout_free(l);
}

static void test_many_blocks_contiguous(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    size_t want = 0;
    char name[16];
    for (size_t i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "b%zu", i);
        assert_int_equal(curv_layout_add_dense(l, name, i % 3 + 1, i % 5 + 1, (int)(i & 1), NULL),
                         CURV_OK);
        want += (i % 3 + 1) * (i % 5 + 1 + (i & 1));
    }
    assert_int_equal(curv_layout_dim(l), want);
    size_t off = 0;
    for (size_t i = 0; i < 100; i++) {
        curv_block_info b;
        assert_int_equal(curv_layout_block(l, i, &b), CURV_OK);
        snprintf(name, sizeof name, "b%zu", i);
        assert_string_equal(b.name, name);
        assert_int_equal(b.offset, off);
        off += b.size;
        assert_int_equal(curv_layout_find(l, name), (long)i);
    }
    curv_layout_free(l);
}

static void test_find(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "alpha", 2, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "beta", 3, NULL), CURV_OK);
    assert_int_equal(curv_layout_find(l, "alpha"), 0);
    assert_int_equal(curv_layout_find(l, "beta"), 1);
    assert_int_equal(curv_layout_find(l, "gamma"), -1);
    assert_int_equal(curv_layout_find(l, "alph"), -1);
    assert_int_equal(curv_layout_find(l, "alphaa"), -1);
    assert_int_equal(curv_layout_find(l, ""), -1);
    assert_int_equal(curv_layout_find(l, NULL), -1);
    assert_int_equal(curv_layout_find(NULL, "alpha"), -1);
    curv_layout_free(l);
}

static void test_dup_is_deep(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 3, 2, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_conv2d(l, "cv", 2, 2, 3, 3, 0, NULL), CURV_OK);
    layout_snap s;
    snap_take(l, &s);
    curv_layout *c = curv_layout_dup(l);
    assert_non_null(c);
    snap_check(c, &s);
    curv_block_info a, b;
    assert_int_equal(curv_layout_block(l, 0, &a), CURV_OK);
    assert_int_equal(curv_layout_block(c, 0, &b), CURV_OK);
    assert_ptr_not_equal(a.name, b.name);
    /* Growing the original does not touch the copy, and vice versa. */
    assert_int_equal(curv_layout_add_vector(l, "v", 4, NULL), CURV_OK);
    snap_check(c, &s);
    assert_int_equal(curv_layout_find(c, "v"), -1);
    assert_int_equal(curv_layout_add_vector(c, "w", 5, NULL), CURV_OK);
    assert_int_equal(curv_layout_find(l, "w"), -1);
    curv_layout_free(l);
    /* The copy outlives the original. */
    assert_int_equal(curv_layout_block(c, 0, &b), CURV_OK);
    assert_string_equal(b.name, "fc");
    assert_int_equal(curv_layout_dim(c), s.dim + 5);
    curv_layout_free(c);

    curv_layout *e = curv_layout_new(), *ec = curv_layout_dup(e);
    assert_non_null(ec);
    assert_int_equal(curv_layout_dim(ec), 0);
    assert_int_equal(curv_layout_nblocks(ec), 0);
    assert_int_equal(curv_layout_add_vector(ec, "x", 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(ec), 1);
    curv_layout_free(e);
    curv_layout_free(ec);
    assert_null(curv_layout_dup(NULL));
}

/* Try @st, expect @want with a non-empty text, and the layout unchanged. */
#define EXPECT_FAIL(l, call, want)                                                                 \
    do {                                                                                           \
        layout_snap s_;                                                                            \
        snap_take((l), &s_);                                                                       \
        curv_error e_;                                                                             \
        curv_error_clear(&e_);                                                                     \
        curv_layout *lay_ = (l);                                                                   \
        (void)lay_;                                                                                \
        curv_status st_ = (call);                                                                  \
        if (st_ != (want))                                                                         \
            print_error("%s: got %s: %s\n", #call, curv_status_name(st_), e_.text);                \
        assert_int_equal(st_, (want));                                                             \
        assert_int_equal(e_.status, (want));                                                       \
        assert_true(strlen(e_.text) > 0);                                                          \
        snap_check((l), &s_);                                                                      \
    } while (0)

static void test_errors_leave_layout_unchanged(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 3, 2, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "v", 4, NULL), CURV_OK);
    char long_name[CURV_NAME_MAX + 2];
    memset(long_name, 'n', sizeof long_name);
    long_name[CURV_NAME_MAX + 1] = '\0'; /* 64 bytes: one too many */
    const size_t big = (size_t)-1;

    /* NULL layout or name. */
    EXPECT_FAIL(l, curv_layout_add_dense(NULL, "x", 1, 1, 0, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(NULL, "x", 1, 1, 1, 1, 0, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_vector(NULL, "x", 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, NULL, 1, 1, 0, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, NULL, 1, 1, 1, 1, 0, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, NULL, 1, &e_), CURV_E_INVALID);
    /* Bad names. */
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, "", 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, long_name, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, long_name, 1, 1, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, "fc", 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "v", 1, 1, 0, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "fc", 1, 1, 1, 1, 0, &e_), CURV_E_INVALID);
    /* Zero sizes. */
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "z", 0, 3, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "z", 3, 0, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "z", 0, 0, 0, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "z", 0, 1, 1, 1, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "z", 1, 0, 1, 1, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "z", 1, 1, 0, 1, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "z", 1, 1, 1, 0, 1, &e_), CURV_E_INVALID);
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, "z", 0, &e_), CURV_E_INVALID);
    /* Overflow of the block size or of its column count. */
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "o", big, 2, 0, &e_), CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "o", 2, big, 1, &e_), CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "o", (size_t)1 << 33, (size_t)1 << 33, 0, &e_),
                CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "o", 1, 2, big, 2, 0, &e_), CURV_E_RANGE);
    EXPECT_FAIL(
        l, curv_layout_add_conv2d(lay_, "o", 1, (size_t)1 << 40, (size_t)1 << 20, 1 << 8, 0, &e_),
        CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_conv2d(lay_, "o", big, 1, 1, 1, 1, &e_), CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, "o", big, &e_), CURV_E_RANGE);
    /* Past CURV_LAYOUT_MAX_DIM, by one block or cumulatively. */
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, "o", CURV_LAYOUT_MAX_DIM + 1, &e_), CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_vector(lay_, "o", CURV_LAYOUT_MAX_DIM, &e_), CURV_E_RANGE);
    EXPECT_FAIL(l, curv_layout_add_dense(lay_, "o", CURV_LAYOUT_MAX_DIM / 2, 2, 0, &e_),
                CURV_E_RANGE);
    assert_int_equal(curv_layout_nblocks(l), 2);
    assert_int_equal(curv_layout_dim(l), 13);
    /* The name that failed can still be added afterwards. */
    assert_int_equal(curv_layout_add_vector(l, "z", 2, NULL), CURV_OK);
    assert_int_equal(curv_layout_find(l, "z"), 2);
    curv_layout_free(l);
}

static void test_limits_exactly(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    char name[CURV_NAME_MAX + 1];
    memset(name, 'a', CURV_NAME_MAX);
    name[CURV_NAME_MAX] = '\0'; /* exactly CURV_NAME_MAX bytes: accepted */
    assert_int_equal(curv_layout_add_vector(l, name, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_find(l, name), 0);
    /* A layout of exactly CURV_LAYOUT_MAX_DIM is accepted (no storage is
     * allocated per parameter); one more parameter is not. */
    assert_int_equal(curv_layout_add_vector(l, "rest", CURV_LAYOUT_MAX_DIM - 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(l), CURV_LAYOUT_MAX_DIM);
    layout_snap s;
    snap_take(l, &s);
    curv_error err;
    assert_int_equal(curv_layout_add_vector(l, "one", 1, &err), CURV_E_RANGE);
    assert_int_equal(curv_layout_add_dense(l, "one", 1, 1, 0, &err), CURV_E_RANGE);
    snap_check(l, &s);
    curv_layout_free(l);

    l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "d", CURV_LAYOUT_MAX_DIM / 4, 3, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(l), CURV_LAYOUT_MAX_DIM);
    curv_layout_free(l);
}

static void test_error_text_names_block(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    curv_error err;
    assert_int_equal(curv_layout_add_vector(l, "embed", 3, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "embed", 3, &err), CURV_E_INVALID);
    assert_non_null(strstr(err.text, "embed"));
    assert_int_equal(curv_layout_add_dense(l, "wide", 0, 3, 0, &err), CURV_E_INVALID);
    assert_non_null(strstr(err.text, "wide"));
    assert_int_equal(curv_layout_add_vector(l, "huge", CURV_LAYOUT_MAX_DIM + 1, &err),
                     CURV_E_RANGE);
    assert_non_null(strstr(err.text, "huge"));
    /* No error text wanted: NULL is accepted. */
    assert_int_equal(curv_layout_add_vector(l, "embed", 3, NULL), CURV_E_INVALID);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_offsets_and_shapes),
        cmocka_unit_test(test_nonzero_bias_flag),
        cmocka_unit_test(test_many_blocks_contiguous),
        cmocka_unit_test(test_find),
        cmocka_unit_test(test_dup_is_deep),
        cmocka_unit_test(test_errors_leave_layout_unchanged),
        cmocka_unit_test(test_limits_exactly),
        cmocka_unit_test(test_error_text_names_block),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
