/* SPDX-License-Identifier: MIT */
/* Status codes: every code has its own name and a text; unknown codes fall
 * back to fixed strings; curv_error_clear and curv_version. */
#include <stdio.h>
#include <string.h>

#include "testutil.h"

/* The expected table, written out by hand: the codes are a wire contract
 * (never renumbered), so the test pins each value and name. */
static const struct {
    curv_status code;
    int value;
    const char *name;
} EXPECTED[] = {
    {CURV_OK, 0, "OK"},
    {CURV_NEED_INPUT, 1, "NEED_INPUT"},
    {CURV_E_INVALID, 2, "E_INVALID"},
    {CURV_E_SHAPE, 3, "E_SHAPE"},
    {CURV_E_NONFINITE, 4, "E_NONFINITE"},
    {CURV_E_NOMEM, 5, "E_NOMEM"},
    {CURV_E_RANGE, 6, "E_RANGE"},
    {CURV_E_STATE, 7, "E_STATE"},
    {CURV_E_CORRUPT, 8, "E_CORRUPT"},
    {CURV_E_VERSION, 9, "E_VERSION"},
    {CURV_E_NUMERIC, 10, "E_NUMERIC"},
    {CURV_E_CONFIG, 11, "E_CONFIG"},
};
#define N_EXPECTED (sizeof EXPECTED / sizeof EXPECTED[0])

static void test_codes_are_stable(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_EXPECTED; i++)
        assert_int_equal((int)EXPECTED[i].code, EXPECTED[i].value);
    /* The table above covers every code the X-macro generates. */
    size_t n = 0;
#define COUNT_ONE(name, code, text) n++;
    CURV_STATUS_MAP(COUNT_ONE)
#undef COUNT_ONE
    assert_int_equal(n, N_EXPECTED);
}

static void test_every_status_has_name_and_text(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_EXPECTED; i++) {
        const char *name = curv_status_name(EXPECTED[i].code);
        const char *text = curv_strerror(EXPECTED[i].code);
        assert_non_null(name);
        assert_non_null(text);
        assert_string_equal(name, EXPECTED[i].name);
        assert_true(strlen(text) > 0);
        assert_string_not_equal(text, curv_strerror((curv_status)1000));
        /* Names and texts are distinct across codes. */
        for (size_t j = 0; j < i; j++) {
            assert_string_not_equal(name, curv_status_name(EXPECTED[j].code));
            assert_string_not_equal(text, curv_strerror(EXPECTED[j].code));
        }
    }
    assert_string_equal(curv_strerror(CURV_OK), "success");
}

static void test_unknown_codes(void **state)
{
    (void)state;
    const int unknown[] = {-1, 12, 13, 100, 1 << 20, -1000};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        curv_status s = (curv_status)unknown[i];
        const char *name = curv_status_name(s), *text = curv_strerror(s);
        assert_non_null(name);
        assert_non_null(text);
        assert_true(strlen(name) > 0);
        assert_true(strlen(text) > 0);
        for (size_t j = 0; j < N_EXPECTED; j++) {
            assert_string_not_equal(name, EXPECTED[j].name);
            assert_string_not_equal(text, curv_strerror(EXPECTED[j].code));
        }
    }
}

static void test_error_clear(void **state)
{
    (void)state;
    curv_error err;
    err.status = CURV_E_RANGE;
    memset(err.text, 'x', sizeof err.text);
    err.text[sizeof err.text - 1] = '\0';
    curv_error_clear(&err);
    assert_int_equal(err.status, CURV_OK);
    assert_string_equal(err.text, "");
    curv_error_clear(NULL); /* no-op */
}

static void test_version(void **state)
{
    (void)state;
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", CURV_VERSION_MAJOR, CURV_VERSION_MINOR,
             CURV_VERSION_PATCH);
    assert_string_equal(curv_version(), want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes_are_stable),
        cmocka_unit_test(test_every_status_has_name_and_text),
        cmocka_unit_test(test_unknown_codes),
        cmocka_unit_test(test_error_clear),
        cmocka_unit_test(test_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
