/* SPDX-License-Identifier: MIT */
/* The digest's canonical form of values (wire/request_digest.h), written
 * without a branch and a chunk at a time, against its definition value by
 * value: a zero of either sign as +0's bits, every other value its own
 * bits, little-endian. On the values where a fast form could go wrong
 * (zeros, subnormals, NaN payloads, infinities) and at lengths that are
 * no multiple of a vector or of a chunk. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "wire/hash128.h"
#include "wire/request_digest.h"

static double from_bits(uint64_t bits)
{
    double x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* The definition, one value at a time. */
static void canon_reference(unsigned char *out, const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        if (v[i] == 0)
            bits = 0;
        tu_put_le(out + 8 * i, bits, 8);
    }
}

/* Values with every sign, the zeros, subnormals, the extremes, NaNs with
 * payloads (quiet and signalling, either sign) and bit patterns one step
 * from -0. */
static size_t tricky(double *v)
{
    static const uint64_t nans[] = {0x7ff8000000000000u, 0xfff8000000000000u, 0x7ff0000000000001u,
                                    0xfff0000000000001u, 0x7ff4000000abcdefu, 0xffffffffffffffffu,
                                    0x7fffffffffffffffu};
    const double values[] = {-0.0,
                             0.0,
                             DBL_TRUE_MIN,
                             -DBL_TRUE_MIN,
                             FLT_TRUE_MIN,
                             -0.0,
                             0x1p-1030,
                             -0x1p-1030,
                             DBL_MIN,
                             -DBL_MIN,
                             DBL_MAX,
                             -DBL_MAX,
                             INFINITY,
                             -INFINITY,
                             1.0,
                             -1.0,
                             -0.0,
                             0.1,
                             -FLT_MAX,
                             -0.0,
                             1e-310,
                             from_bits(0x8000000000000001u),
                             from_bits(0x7fffffffffffffffu)};
    size_t n = 0;
    for (size_t i = 0; i < sizeof values / sizeof *values; i++)
        v[n++] = values[i];
    for (size_t i = 0; i < sizeof nans / sizeof *nans; i++)
        v[n++] = from_bits(nans[i]);
    return n;
}

static void test_canon_matches_definition(void **state)
{
    (void)state;
    enum { N = 100 };
    double v[N + 1];
    unsigned char got[8 * N + 8], want[8 * N + 8];
    size_t k = tricky(v);
    /* The tricky values repeated in a rotated order, so that each of them
     * falls in every lane of a vector. */
    for (size_t i = k; i <= N; i++)
        v[i] = v[(i * 7) % k];
    for (size_t start = 0; start <= 1; start++) { /* aligned and not */
        for (size_t n = 0; n + start <= N; n++) {
            memset(got, 0xa5, sizeof got);
            memset(want, 0xa5, sizeof want);
            curvd_digest_canon(got, v + start, n);
            canon_reference(want, v + start, n);
            if (memcmp(got, want, sizeof got) != 0)
                fail_msg("%zu values from %zu: not their canonical form", n, start);
        }
    }
}

/* The update digest: its tag with its NUL, the count, then the values'
 * canonical form, hashed in one piece. */
static void update_digest_reference(const double *v, size_t n, char out[CURVD_DIGEST_TEXT])
{
    static const char tag[] = "curvd step update 1";
    unsigned char *b = malloc(8 + 8 * n), d[16];
    assert_non_null(b);
    tu_put_le(b, n, 8);
    canon_reference(b + 8, v, n);
    struct curvd_hash128 h;
    curvd_hash128_init(&h, 0);
    curvd_hash128_update(&h, tag, sizeof tag);
    curvd_hash128_update(&h, b, 8 + 8 * n);
    curvd_hash128_final(&h, d);
    free(b);
    int len = snprintf(out, CURVD_DIGEST_TEXT, "%s", CURVD_DIGEST_PREFIX);
    for (int i = 0; i < 16; i++)
        len += snprintf(out + len, CURVD_DIGEST_TEXT - (size_t)len, "%02x", d[i]);
}

/* Vectors longer than a chunk, cut at every kind of place. */
static void test_long_vectors(void **state)
{
    (void)state;
    static const size_t lengths[] = {0, 1, 2, 3, 1023, 1024, 1025, 2047, 2048, 2049, 5000};
    double *v = malloc(5000 * sizeof *v), t[64];
    assert_non_null(v);
    size_t k = tricky(t);
    for (size_t i = 0; i < 5000; i++)
        v[i] = i % 5 ? 0.5 * (double)i - 700 : t[i % k];
    for (size_t i = 0; i < sizeof lengths / sizeof *lengths; i++) {
        char got[CURVD_DIGEST_TEXT], want[CURVD_DIGEST_TEXT];
        curvd_update_digest(v, lengths[i], got);
        update_digest_reference(v, lengths[i], want);
        if (strcmp(got, want) != 0)
            fail_msg("%zu values: %s, want %s", lengths[i], got, want);
    }
    free(v);
}

/* A digest the daemon gave before the canonical form was written without
 * a branch (commit f768a95): stored digests still match. */
static void test_known_digest(void **state)
{
    (void)state;
    const double v[] = {-0.0, 1.5, -2.25, 0x1p-1030, 3.0};
    char got[CURVD_DIGEST_TEXT], want[CURVD_DIGEST_TEXT];
    curvd_update_digest(v, 5, got);
    update_digest_reference(v, 5, want);
    assert_string_equal(got, want);
    assert_string_equal(got, "mm3-128:3fb7bf37891b4a99cede887609990654");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_matches_definition),
        cmocka_unit_test(test_long_vectors),
        cmocka_unit_test(test_known_digest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
