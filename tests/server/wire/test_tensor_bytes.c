/* SPDX-License-Identifier: MIT */
/* Little-endian tensor bytes (wire/tensor_bytes.h) against their
 * definition value by value: the doubles decoded, whether a NaN or an
 * infinity was among them wherever it stands, the bytes encoded; at
 * lengths that are no multiple of a vector. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "wire/tensor_bytes.h"

enum { N = 40 };

/* Finite bit patterns at the edges: zeros, subnormals, the largest
 * finite, the largest exponent, then a NaN's and an infinity's. */
static const uint32_t finite32[] = {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu,
                                    0x7f7fffffu, 0xff7fffffu, 0x3f800000u, 0x7f000000u};
static const uint32_t nonfinite32[] = {0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u,
                                       0xffffffffu};
static const uint64_t finite64[] = {0x0000000000000000u, 0x8000000000000000u, 0x0000000000000001u,
                                    0x7fefffffffffffffu, 0xffefffffffffffffu, 0x3ff0000000000000u,
                                    0x000fffffffffffffu, 0x7fe0000000000000u};
static const uint64_t nonfinite64[] = {0x7ff0000000000000u, 0xfff0000000000000u,
                                       0x7ff8000000000000u, 0x7ff0000000000001u,
                                       0xffffffffffffffffu};

/* @n values of @w bytes, little-endian: finite edge patterns, with
 * @bad at @at (none when @at >= @n). */
static void fill(unsigned char *b, size_t n, unsigned w, size_t at, uint64_t bad)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t v = w == 4 ? finite32[(i * 3) % 8] : finite64[(i * 3) % 8];
        tu_put_le(b + w * i, i == at ? bad : v, w);
    }
}

/* The decoded doubles are the values of the bits, one by one. */
static void decoded_as_defined(const unsigned char *b, size_t n, unsigned w, const double *got)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t bits = tu_get_le(b + w * i, w), have;
        double want;
        if (w == 4) {
            uint32_t b32 = (uint32_t)bits;
            float f;
            memcpy(&f, &b32, sizeof f);
            want = f;
        } else {
            memcpy(&want, &bits, sizeof want);
        }
        uint64_t wbits;
        memcpy(&wbits, &want, sizeof wbits);
        memcpy(&have, &got[i], sizeof have);
        if (isnan(want) ? !isnan(got[i]) : have != wbits)
            fail_msg("value %zu of %zu (%u bytes): %a, want %a", i, n, w, got[i], want);
    }
}

static void decode_case(unsigned w, const uint64_t *bad, size_t nbad)
{
    unsigned char b[8 * N];
    double out[N];
    int dtype = w == 4 ? CURV_F32 : CURV_F64;
    for (size_t n = 0; n <= N; n++) {
        fill(b, n, w, SIZE_MAX, 0);
        if (curvd_le_decode(b, n, dtype, out) != 1)
            fail_msg("%zu finite values (%u bytes) decoded as not finite", n, w);
        decoded_as_defined(b, n, w, out);
        for (size_t at = 0; at < n; at++) {
            fill(b, n, w, at, bad[(at + n) % nbad]);
            if (curvd_le_decode(b, n, dtype, out) != 0)
                fail_msg("a NaN or infinity at %zu of %zu (%u bytes) went unseen", at, n, w);
            decoded_as_defined(b, n, w, out);
        }
    }
}

static void test_decode(void **state)
{
    (void)state;
    uint64_t bad32[5];
    for (size_t i = 0; i < 5; i++)
        bad32[i] = nonfinite32[i];
    decode_case(4, bad32, 5);
    decode_case(8, nonfinite64, 5);
}

static void test_encode(void **state)
{
    (void)state;
    double x[N];
    unsigned char got[8 * N + 8], want[8 * N + 8];
    for (size_t i = 0; i < N; i++)
        x[i] = i % 4 ? (double)i / 3 - 5 : (i % 8 ? -0.0 : FLT_TRUE_MIN);
    for (size_t n = 0; n <= N; n++) {
        memset(got, 0xa5, sizeof got);
        memset(want, 0xa5, sizeof want);
        curvd_le_encode(x, n, CURV_F32, got);
        for (size_t i = 0; i < n; i++) {
            float f = (float)x[i];
            uint32_t u;
            memcpy(&u, &f, sizeof u);
            tu_put_le(want + 4 * i, u, 4);
        }
        assert_memory_equal(got, want, sizeof got);
        curvd_le_encode(x, n, CURV_F64, got);
        for (size_t i = 0; i < n; i++) {
            uint64_t u;
            memcpy(&u, &x[i], sizeof u);
            tu_put_le(want + 8 * i, u, 8);
        }
        assert_memory_equal(got, want, sizeof got);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
