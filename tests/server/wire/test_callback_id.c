/* SPDX-License-Identifier: MIT */
/* Callback ids "<seq>-<run tag>" (wire/callback_id.h): the tag is 16
 * lower-case hex digits, the same for the whole process; an id of this
 * run parses back to its seq, one with another well-formed tag is another
 * run's, anything else is no id at all. The random hex the tag and
 * session ids are drawn from (wire/random_hex.h). */
#include <stdio.h>
#include <string.h>

#include "testutil.h"
#include "wire/callback_id.h"
#include "wire/random_hex.h"

static int all_hex(const char *s)
{
    return strspn(s, "0123456789abcdef") == strlen(s);
}

static void test_run_tag_is_fixed_hex(void **state)
{
    (void)state;
    const char *tag = curvd_run_tag();
    assert_int_equal(strlen(tag), 16);
    assert_true(all_hex(tag));
    assert_ptr_equal(curvd_run_tag(), tag);
    char id[CURVD_CALLBACK_ID_CAP], want[64];
    curvd_callback_id(id, sizeof id, 18446744073709551615ull); /* the widest seq fits */
    snprintf(want, sizeof want, "18446744073709551615-%s", tag);
    assert_string_equal(id, want);
}

static void test_this_run_parses_back(void **state)
{
    (void)state;
    const unsigned long long seqs[] = {0, 1, 7, 1000, 18446744073709551615ull};
    for (size_t i = 0; i < sizeof seqs / sizeof seqs[0]; i++) {
        char id[64];
        snprintf(id, sizeof id, "%llu-%s", seqs[i], curvd_run_tag());
        uint64_t seq = 12345;
        assert_int_equal(curvd_callback_id_parse(id, &seq), CURVD_CB_THIS_RUN);
        assert_true(seq == seqs[i]);
    }
}

static void test_other_run_is_told_apart(void **state)
{
    (void)state;
    char id[64];
    snprintf(id, sizeof id, "42-%s", curvd_run_tag());
    for (size_t k = 3; id[k]; k++) { /* each digit of the tag changed in turn */
        char other[64];
        memcpy(other, id, sizeof other);
        other[k] = other[k] == 'f' ? '0' : 'f';
        uint64_t seq = 0;
        assert_int_equal(curvd_callback_id_parse(other, &seq), CURVD_CB_OTHER_RUN);
        assert_int_equal(seq, 42);
    }
}

static void test_malformed_ids(void **state)
{
    (void)state;
    const char *tag = curvd_run_tag();
    char upper[17];
    for (int i = 0; i < 17; i++)
        upper[i] = tag[i] >= 'a' && tag[i] <= 'f' ? (char)(tag[i] - 'a' + 'A') : tag[i];
    /* Each: the text before the tag, how much of the tag, the text after. */
    const struct {
        const char *before;
        int tag_len;
        const char *after;
    } bad[] = {
        {"", 0, ""},     {"7", 0, ""},    {"", 16, ""},     {"-", 16, ""},
        {"7-", 15, ""},  {"7-", 16, "0"}, {"7_", 16, ""},   {"+7-", 16, ""},
        {" 7-", 16, ""}, {"c7-", 16, ""}, {"7-", 16, "x"},  {"18446744073709551616-", 16, ""},
        {"7--", 16, ""}, {"7-", 15, "-"}, {"7.5-", 16, ""}, {"7-", 16, "/"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char id[80];
        snprintf(id, sizeof id, "%s%.*s%s", bad[i].before, bad[i].tag_len, tag, bad[i].after);
        uint64_t seq = 99;
        if (curvd_callback_id_parse(id, &seq) != CURVD_CB_MALFORMED)
            fail_msg("\"%s\" taken for an id", id);
        assert_int_equal(seq, 99); /* untouched */
    }
    if (strcmp(upper, tag) != 0) { /* upper case is another text, not this run's tag */
        char id[80];
        snprintf(id, sizeof id, "7-%s", upper);
        uint64_t seq;
        assert_int_equal(curvd_callback_id_parse(id, &seq), CURVD_CB_MALFORMED);
    }
}

static void test_random_hex(void **state)
{
    (void)state;
    char a[2 * 40 + 2], b[2 * 40 + 2];
    memset(a, 'x', sizeof a);
    curvd_random_hex(a, 40); /* more than one read's worth */
    assert_int_equal(strlen(a), 80);
    assert_true(all_hex(a));
    assert_int_equal(a[81], 'x'); /* nothing past its NUL */
    curvd_random_hex(b, 40);
    assert_string_not_equal(a, b);
    curvd_random_hex(a, 0);
    assert_string_equal(a, "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_run_tag_is_fixed_hex),
        cmocka_unit_test(test_this_run_parses_back),
        cmocka_unit_test(test_other_run_is_told_apart),
        cmocka_unit_test(test_malformed_ids),
        cmocka_unit_test(test_random_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
