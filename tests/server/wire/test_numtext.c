/* SPDX-License-Identifier: MIT */
/* Numbers as JSON text: the scanner against glibc's correctly rounded
 * strtod, the writers against printf and against reading back. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "wire/numtext.h"

static void check_number(const char *s)
{
    size_t used = 0;
    double v = 0;
    assert_int_equal(curvd_scan_number(s, strlen(s), &used, &v), 0);
    assert_int_equal(used, strlen(s));
    double want = strtod(s, NULL);
    if (!tu_same_bits(v, want))
        print_error("%s: got %.17g want %.17g\n", s, v, want);
    assert_true(tu_same_bits(v, want));
}

static void test_number_valid(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "0",
        "-0",
        "1",
        "-1",
        "1.5",
        "1e5",
        "1E+5",
        "1e-5",
        "0.1",
        "0.30000000000000004",
        "123456789012345678901234567890",
        "2.2250738585072014e-308",
        "4.9406564584124654e-324",
        "1e-400",
        "-1e-400",
        "1.7976931348623157e308",
        "1e999",
        "-1e999",
        "9007199254740993",
        "9007199254740992",
        "18446744073709551616",
        "0.000000000000000000000000001e27",
        "1e22",
        "1e23",
        "123e-22",
        "3.4028235e38",
        "-1e-300",
        "1e308",
        "0e999999999999999999",
        "2.4703282292062327208828439643411068618252990130716238221279284125033775364e-324",
        "2.4703282292062327208828439643411068618252990130716238221279284125033775363e-324",
        "7.2057594037927933e16",
        "100000000000000000000000000000000000000000e-41"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        check_number(ok[i]);
    /* A 900-digit mantissa: beyond the slow path's digit budget, decided
     * by the sticky digit. 1 + 2^-53 is the tie between 1 and its
     * successor; anything above it rounds up. */
    static const char tie[] = "1.00000000000000011102230246251565404236316680908203125";
    char *b = calloc(sizeof tie + 900 + 1, 1);
    assert_non_null(b);
    memcpy(b, tie, sizeof tie - 1);
    memset(b + sizeof tie - 1, '0', 900);
    check_number(b);
    b[sizeof tie - 1 + 900] = '1';
    check_number(b);
    free(b);
    /* The number ends where the grammar does. */
    size_t used;
    double v;
    assert_int_equal(curvd_scan_number("12,3", 4, &used, &v), 0);
    assert_int_equal(used, 2);
    assert_int_equal(curvd_scan_number("-0.5]", 5, &used, &v), 0);
    assert_int_equal(used, 4);
    assert_true(v == -0.5);
}

/* 17..19-digit mantissas with small exponents take the extended-precision
 * path; exact midpoints between doubles must still round to even. */
static void test_number_extended_path(void **state)
{
    (void)state;
    static const char *const mid[] = {"90071992547409930e-1", "9007199254740995",
                                      "18014398509481986",    "18014398509481990",
                                      "9007199254740993e5",   "4503599627370497.5",
                                      "1152921504606846977",  "0.30000000000000004441"};
    for (size_t i = 0; i < sizeof mid / sizeof mid[0]; i++)
        check_number(mid[i]);
    tu_rng r;
    tu_rng_seed(&r, 23);
    char s[64];
    for (int it = 0; it < 300000; it++) {
        uint64_t m = (uint64_t)(tu_uniform(&r) * 1e19);
        int e = (int)(tu_uniform(&r) * 55) - 27;
        if (it % 3 == 0) /* near a midpoint: a double's digits times ten plus five */
            m = (uint64_t)(tu_uniform(&r) * 9007199254740992.0) * 10 + 5;
        snprintf(s, sizeof s, "%llue%d", (unsigned long long)m, e);
        check_number(s);
    }
}

static void test_number_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {"01",  "1.",  ".5",    "+1",   "1e",  "-",   "--1", "1.2.3",
                                      "0x1", "1e+", "1e5e1", "1.e5", "-.5", "00",  "-01", "1ee5",
                                      "",    "e5",  "1e-",   "0.",   "1+2", "1-2", "1E"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t used;
        double v;
        if (curvd_scan_number(bad[i], strlen(bad[i]), &used, &v) != -1)
            print_error("'%s' accepted\n", bad[i]);
        assert_int_equal(curvd_scan_number(bad[i], strlen(bad[i]), &used, &v), -1);
    }
}

/* Random decimal strings of 1..40 digits with exponents across the range,
 * against glibc's correctly rounded strtod. */
static void test_number_random_vs_strtod(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 7);
    char s[128];
    for (int it = 0; it < 200000; it++) {
        size_t k = 0, nd = 1 + (size_t)(tu_uniform(&r) * 40), point = (size_t)(tu_uniform(&r) * nd);
        if (tu_uniform(&r) < 0.5)
            s[k++] = '-';
        s[k++] = (char)('1' + (int)(tu_uniform(&r) * 9));
        for (size_t i = 1; i < nd; i++) {
            if (i == point)
                s[k++] = '.';
            s[k++] = (char)('0' + (int)(tu_uniform(&r) * 10));
        }
        if (tu_uniform(&r) < 0.8)
            k += (size_t)snprintf(s + k, sizeof s - k, "e%d", (int)(tu_uniform(&r) * 680) - 340);
        s[k] = 0;
        check_number(s);
    }
}

static void test_fmt_roundtrip(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 11);
    char s[64];
    size_t used, printf_diff = 0;
    double v;
    static const float f32s[] = {0.0f,          -0.0f,        1.0f,         -1.0f,
                                 0.1f,          1e-5f,        FLT_MAX,      FLT_MIN,
                                 1.401298e-45f, 1e10f,        123456789.0f, 1e-4f,
                                 9.999999e-5f,  100000000.0f, 999999999.0f, 3.0e38f};
    for (int it = 0; it < 300000; it++) {
        float f;
        if (it < (int)(sizeof f32s / sizeof f32s[0])) {
            f = f32s[it];
        } else {
            uint32_t u = (uint32_t)(tu_uniform(&r) * 4294967296.0);
            memcpy(&f, &u, 4);
            if (!isfinite(f))
                continue;
        }
        size_t n = curvd_fmt_f32(s, f);
        assert_true(n <= CURVD_F32_CHARS);
        assert_int_equal(curvd_scan_number(s, n, &used, &v), 0);
        assert_int_equal(used, n);
        float back = (float)v;
        if (memcmp(&back, &f, 4) != 0)
            print_error("%.9g printed as %.*s\n", (double)f, (int)n, s);
        assert_memory_equal(&back, &f, 4);
        char ref[32];
        snprintf(ref, sizeof ref, "%.9g", (double)f);
        printf_diff += strlen(ref) != n || memcmp(ref, s, n) != 0;
    }
    print_message("fmt_f32: %zu of 300000 differ from printf %%.9g (all round-trip)\n",
                  printf_diff);
    for (int it = 0; it < 100000; it++) {
        uint64_t u = (uint64_t)(tu_uniform(&r) * 18446744073709551616.0);
        double x;
        memcpy(&x, &u, 8);
        if (!isfinite(x))
            continue;
        char t[CURVD_F64_CHARS + 1];
        size_t n = curvd_fmt_f64(t, x);
        assert_true(n <= CURVD_F64_CHARS);
        assert_int_equal(curvd_scan_number(t, n, &used, &v), 0);
        assert_true(tu_same_bits(v, x));
    }
}

/* curvd_fmt_f64 must write exactly what printf's "%.17g" writes (replies
 * and reports promise jansson's spelling, which is that): random bit
 * patterns, decimals a trainer would send, subnormals, the extremes, powers
 * of ten and their neighbours, and exact ties at the 17th digit (m + 1/4
 * for m < 2^51 ends in ...25 or ...75 at digit 18), which the extended
 * product cannot decide and must hand to printf. */
static void check_like_printf(double x, size_t *fails)
{
    char got[CURVD_F64_CHARS + 1], want[64];
    size_t n = curvd_fmt_f64(got, x);
    int wn = snprintf(want, sizeof want, "%.17g", x);
    assert_true(n <= CURVD_F64_CHARS);
    if ((size_t)wn != n || memcmp(got, want, n) != 0) {
        if ((*fails)++ < 10)
            print_error("%a: wrote %.*s, printf %s\n", x, (int)n, got, want);
    }
}

static void test_fmt_f64_like_printf(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 31);
    size_t fails = 0;
    static const double fixed[] = {0.0,
                                   -0.0,
                                   1.0,
                                   -1.0,
                                   0.1,
                                   1.0 / 3,
                                   1e-5,
                                   1e-4,
                                   9.9999999999999991e-5,
                                   1e16,
                                   1e17,
                                   1e21,
                                   123456789012345680.0,
                                   DBL_MAX,
                                   DBL_MIN,
                                   -DBL_MIN,
                                   DBL_TRUE_MIN,
                                   -DBL_TRUE_MIN,
                                   DBL_EPSILON,
                                   0.5,
                                   2.5e-324};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        check_like_printf(fixed[i], &fails);
    for (int e = -325; e <= 309; e++) {
        char t[16];
        snprintf(t, sizeof t, "1e%d", e);
        double x = strtod(t, NULL);
        check_like_printf(x, &fails);
        check_like_printf(nextafter(x, 0), &fails);
        check_like_printf(-nextafter(x, INFINITY), &fails);
    }
    for (int it = 0; it < 400000; it++) {
        uint64_t u = tu_u64(&r);
        double x;
        memcpy(&x, &u, sizeof x);
        if (it % 4 == 1) { /* subnormal */
            u &= (UINT64_C(1) << 52) - 1;
            memcpy(&x, &u, sizeof x);
        } else if (it % 4 == 2) { /* a trainer's decimal, read as the nearest double */
            char t[40];
            snprintf(t, sizeof t, "%.*fe%d", (int)(tu_uniform(&r) * 10), tu_uniform(&r) - 0.5,
                     (int)(tu_uniform(&r) * 12) - 8);
            x = strtod(t, NULL);
        } else if (it % 4 == 3) { /* an exact tie at the 17th significant digit */
            double m = floor(tu_uniform(&r) * 0x1p51);
            x = m + (tu_uniform(&r) < 0.5 ? 0.25 : 0.75);
            x = m >= 1e15 ? x : x + 1e15;
        }
        if (isfinite(x))
            check_like_printf(x, &fails);
    }
    assert_int_equal(fails, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number_valid),   cmocka_unit_test(test_number_extended_path),
        cmocka_unit_test(test_number_invalid), cmocka_unit_test(test_number_random_vs_strtod),
        cmocka_unit_test(test_fmt_roundtrip),  cmocka_unit_test(test_fmt_f64_like_printf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
