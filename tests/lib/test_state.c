/* SPDX-License-Identifier: MIT */
/* The portable state format: writer/reader round trips, bounds-checked
 * reads, the frame (magic, version, length, CRC-32) and its rejections. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"
#include "testutil.h"

static struct curv__reader reader_on(const unsigned char *p, size_t len)
{
    struct curv__reader r = {.p = p, .len = len, .pos = 0, .bad = 0};
    return r;
}

static void test_crc32_check_value(void **state)
{
    (void)state;
    const unsigned char *s = (const unsigned char *)"123456789";
    assert_int_equal(curv__crc32(0, s, 9), 0xCBF43926u);
    assert_int_equal(tu_crc32(s, 9), 0xCBF43926u);
    assert_int_equal(curv__crc32(0, s, 0), 0);
    /* Chaining, as zlib's crc32(crc, buf, len) does. */
    assert_int_equal(curv__crc32(curv__crc32(0, s, 4), s + 4, 5), 0xCBF43926u);
    /* Agreement with the reference in testutil on random data of many lengths. */
    tu_rng rng;
    tu_rng_seed(&rng, 7);
    unsigned char buf[300];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (unsigned char)(tu_uniform(&rng) * 256);
    for (size_t n = 0; n <= sizeof buf; n += 13)
        assert_int_equal(curv__crc32(0, buf, n), tu_crc32(buf, n));
}

static void test_round_trip_every_type(void **state)
{
    (void)state;
    struct curv__writer w = {0};
    const double specials[] = {0.0,      -0.0,
                               1.0,      -2.5,
                               1e-310,   1.7976931348623157e308,
                               INFINITY, -INFINITY,
                               NAN,      3.141592653589793};
    const size_t ns = sizeof specials / sizeof specials[0];
    char longstr[200];
    memset(longstr, 'q', sizeof longstr - 1);
    longstr[sizeof longstr - 1] = '\0';
    curv__w_u32(&w, 0x01020304u);
    curv__w_u32(&w, 0xFFFFFFFFu);
    curv__w_u64(&w, 0x0102030405060708ull);
    curv__w_u64(&w, UINT64_MAX);
    for (size_t i = 0; i < ns; i++)
        curv__w_f64(&w, specials[i]);
    curv__w_f64s(&w, specials, ns);
    curv__w_f64s(&w, specials, 0);
    curv__w_str(&w, "");
    curv__w_str(&w, "fc1.weight");
    curv__w_str(&w, longstr);
    assert_false(w.oom);
    assert_int_equal(w.len, 4 + 4 + 8 + 8 + 8 * ns + 8 * ns + 4 + (4 + 10) + (4 + 199));
    /* Little-endian on the wire, whatever the host. */
    const unsigned char le32[4] = {4, 3, 2, 1}, le64[8] = {8, 7, 6, 5, 4, 3, 2, 1};
    assert_memory_equal(w.buf, le32, 4);
    assert_memory_equal(w.buf + 8, le64, 8);
    assert_int_equal(tu_get_le(w.buf + 40, 8), 0x3FF0000000000000ull); /* 1.0 */

    /* Read from an exact-size heap copy so ASan sees any over-read. */
    unsigned char *copy = tu_memdup(w.buf, w.len);
    struct curv__reader r = reader_on(copy, w.len);
    assert_int_equal(curv__r_left(&r), w.len);
    assert_int_equal(curv__r_u32(&r), 0x01020304u);
    assert_int_equal(curv__r_u32(&r), 0xFFFFFFFFu);
    assert_true(curv__r_u64(&r) == 0x0102030405060708ull);
    assert_true(curv__r_u64(&r) == UINT64_MAX);
    double v[16];
    for (size_t i = 0; i < ns; i++) {
        double x = curv__r_f64(&r);
        assert_memory_equal(&x, &specials[i], sizeof x); /* bit-exact, NaN and -0 included */
    }
    curv__r_f64s(&r, v, ns);
    assert_memory_equal(v, specials, ns * sizeof(double));
    curv__r_f64s(&r, v, 0);
    char s[256];
    curv__r_str(&r, s, sizeof s);
    assert_string_equal(s, "");
    curv__r_str(&r, s, sizeof s);
    assert_string_equal(s, "fc1.weight");
    curv__r_str(&r, s, sizeof s);
    assert_string_equal(s, longstr);
    assert_false(r.bad);
    assert_int_equal(curv__r_left(&r), 0);
    assert_int_equal(r.pos, r.len);
    free(copy);
    free(w.buf);
}

static void test_reader_overrun(void **state)
{
    (void)state;
    /* Every read on a buffer one byte too short: bad is set, zeros come
     * back, and later reads stay zero even where bytes would remain. */
    unsigned char *p = malloc(16);
    assert_non_null(p);
    memset(p, 0x5A, 16);
    for (int kind = 0; kind < 5; kind++) {
        size_t need = kind == 0 ? 4 : kind == 1 || kind == 2 ? 8 : kind == 3 ? 16 : 4 + 6;
        struct curv__reader r = reader_on(p + 16 - (need - 1), need - 1);
        double v[2] = {9, 9};
        char s[16] = "keep";
        switch (kind) {
        case 0:
            assert_int_equal(curv__r_u32(&r), 0);
            break;
        case 1:
            assert_true(curv__r_u64(&r) == 0);
            break;
        case 2:
            assert_true(curv__r_f64(&r) == 0.0);
            break;
        case 3:
            curv__r_f64s(&r, v, 2);
            assert_true(v[0] == 0.0 && v[1] == 0.0);
            break;
        default:
            /* a length prefix of 6 with only 5 bytes behind it */
            tu_put_le(p + 16 - (need - 1), 6, 4);
            curv__r_str(&r, s, sizeof s);
            assert_string_equal(s, "");
            break;
        }
        assert_true(r.bad);
        assert_int_equal(curv__r_left(&r), 0);
    }
    /* Sticky: after one failed read, a read that would fit fails too. */
    struct curv__reader r = reader_on(p, 16);
    double v[3] = {1, 2, 3};
    curv__r_f64s(&r, v, 3); /* 24 > 16 bytes */
    assert_true(r.bad);
    assert_true(v[0] == 0 && v[1] == 0 && v[2] == 0);
    assert_int_equal(curv__r_u32(&r), 0);
    assert_true(curv__r_u64(&r) == 0);
    /* A string whose length does not fit the caller's buffer (NUL incl.). */
    tu_put_le(p, 8, 4);
    r = reader_on(p, 16);
    char s[8] = "keep";
    curv__r_str(&r, s, sizeof s);
    assert_true(r.bad);
    assert_string_equal(s, "");
    /* A string length of 2^32-1 never reads past the buffer. */
    tu_put_le(p, 0xFFFFFFFFu, 4);
    r = reader_on(p, 16);
    char big[64];
    curv__r_str(&r, big, sizeof big);
    assert_true(r.bad);
    /* Zero-length reader. */
    r = reader_on(p, 0);
    assert_int_equal(curv__r_u32(&r), 0);
    assert_true(r.bad);
    free(p);
}

/* A sealed blob holding a small payload; caller frees. */
static unsigned char *make_blob(size_t *len)
{
    struct curv__writer w = {0};
    curv__w_u32(&w, 42);
    curv__w_str(&w, "payload");
    curv__w_f64(&w, -1.25);
    unsigned char *blob = NULL;
    curv_error err;
    assert_int_equal(curv__state_seal(&w, &blob, len, NULL, NULL, &err), CURV_OK);
    free(w.buf);
    return blob;
}

static void test_seal_and_open(void **state)
{
    (void)state;
    size_t len;
    unsigned char *blob = make_blob(&len);
    const size_t payload = 4 + 4 + 7 + 8;
    assert_int_equal(len, 24 + payload + 4);
    assert_memory_equal(blob, "CURVSTAT", 8);
    assert_int_equal(tu_get_le(blob + 8, 4), 1);  /* version */
    assert_int_equal(tu_get_le(blob + 12, 4), 0); /* flags */
    assert_int_equal(tu_get_le(blob + 16, 8), payload);
    assert_int_equal(tu_get_le(blob + len - 4, 4), tu_crc32(blob, len - 4));
    struct curv__reader r;
    curv_error err;
    assert_int_equal(curv__state_open(blob, len, &r, &err), CURV_OK);
    assert_int_equal(r.len, payload);
    assert_int_equal(curv__r_u32(&r), 42);
    char s[16];
    curv__r_str(&r, s, sizeof s);
    assert_string_equal(s, "payload");
    assert_true(curv__r_f64(&r) == -1.25);
    assert_false(r.bad);
    assert_int_equal(curv__r_left(&r), 0);
    /* Reading past the payload does not reach the CRC trailer. */
    assert_int_equal(curv__r_u32(&r), 0);
    assert_true(r.bad);
    free(blob);

    /* An empty payload makes a 28-byte blob that opens to nothing. */
    struct curv__writer w = {0};
    assert_int_equal(curv__state_seal(&w, &blob, &len, NULL, NULL, &err), CURV_OK);
    assert_int_equal(len, 28);
    assert_int_equal(curv__state_open(blob, len, &r, &err), CURV_OK);
    assert_int_equal(curv__r_left(&r), 0);
    free(blob);
    /* A writer that ran out of memory cannot be sealed. */
    w.oom = 1;
    blob = NULL;
    assert_int_equal(curv__state_seal(&w, &blob, &len, NULL, NULL, &err), CURV_E_NOMEM);
    assert_null(blob);
}

/* Seal @w with parts into *@blob, asserting they tile it; returns them. */
static curv_state_part *seal_parts(struct curv__writer *w, unsigned char **blob, size_t *len,
                                   size_t *n)
{
    curv_state_part *p = NULL;
    curv_error err;
    assert_int_equal(curv__state_seal(w, blob, len, &p, n, &err), CURV_OK);
    size_t at = 0;
    for (size_t i = 0; i < *n; i++) {
        assert_int_equal(p[i].offset, at);
        at += p[i].len;
    }
    assert_int_equal(at, *len);
    return p;
}

/*
 * Marks: the header and what precedes the first mark form a volatile part;
 * a stable mark starts a part of its own even with stamp 0; volatile runs
 * join; empty runs vanish; the trailer is volatile. Framed and unframed
 * writers give the same parts.
 */
static void test_parts(void **state)
{
    (void)state;
    const uint64_t s7 = curv__stamp(CURV__STAMP_STEPS, 7);
    for (int framed = 0; framed < 2; framed++) {
        struct curv__writer w = {0};
        if (framed)
            curv__w_frame(&w);
        curv__w_u32(&w, 1);   /* [0, 28): header and this, volatile */
        curv__w_part(&w, s7); /* [28, 44) */
        curv__w_f64(&w, 1.5);
        curv__w_f64(&w, 2.5);
        curv__w_part(&w, 99); /* empty: dropped */
        curv__w_part(&w, 0);  /* [44, 52): stable, stamp 0 */
        curv__w_u64(&w, 3);
        curv__w_volatile(&w); /* [52, 64): joined by all that follows */
        curv__w_u32(&w, 4);
        curv__w_volatile(&w);
        curv__w_u32(&w, 5);
        curv__w_part(&w, s7 + 1); /* empty: dropped */
        curv__w_volatile(&w);     /* and the volatile trailer */
        unsigned char *blob;
        size_t len, n;
        curv_state_part *p = seal_parts(&w, &blob, &len, &n);
        const curv_state_part want[] = {{0, 28, 0}, {28, 16, s7}, {44, 8, 0}, {52, 12, 0}};
        assert_int_equal(len, 64);
        assert_int_equal(n, 4);
        assert_memory_equal(p, want, sizeof want);
        curv_free(p);
        curv_free(blob);
        curv__w_release(&w);
    }
    /* A stable part runs up to the trailer, which stands alone. */
    struct curv__writer w = {0};
    curv__w_part(&w, s7);
    curv__w_u32(&w, 1);
    unsigned char *blob;
    size_t len, n;
    curv_state_part *p = seal_parts(&w, &blob, &len, &n);
    const curv_state_part want[] = {{0, 24, 0}, {24, 4, s7}, {28, 4, 0}};
    assert_int_equal(n, 3);
    assert_memory_equal(p, want, sizeof want);
    curv_free(p);
    curv_free(blob);
    curv__w_release(&w);
    /* Stamps: source in the top byte, value + 1 below; 0 past 56 bits. */
    assert_true(curv__stamp(CURV__STAMP_KFAC_INV, 0) == (UINT64_C(3) << 56 | 1));
    assert_true(curv__stamp(CURV__STAMP_STEPS, (UINT64_C(1) << 56) - 2) == (UINT64_C(2) << 56) - 1);
    assert_true(curv__stamp(CURV__STAMP_STEPS, (UINT64_C(1) << 56) - 1) == 0);
    assert_true(curv__stamp(CURV__STAMP_STEPS, UINT64_MAX) == 0);
}

/* Open a heap copy of @b (exactly @n bytes) and return the status. */
static curv_status open_copy(const unsigned char *b, size_t n)
{
    unsigned char *c = tu_memdup(b, n);
    struct curv__reader r = {0};
    curv_error err;
    curv_error_clear(&err);
    curv_status st = curv__state_open(c, n, &r, &err);
    tu_assert_error_set(&err, st);
    free(c);
    return st;
}

static void test_open_rejects(void **state)
{
    (void)state;
    size_t len;
    unsigned char *blob = make_blob(&len);
    struct curv__reader r;
    assert_int_equal(curv__state_open(NULL, len, &r, NULL), CURV_E_CORRUPT);
    /* Short blobs, including every prefix of a valid one. */
    for (size_t n = 0; n < len; n++)
        assert_int_equal(open_copy(blob, n), CURV_E_CORRUPT);
    /* Bad magic (with a correct CRC, so the magic check itself is tested). */
    unsigned char *b = malloc(len + 1);
    assert_non_null(b);
    memcpy(b, blob, len);
    b[3] = 'X';
    tu_reseal(b, len);
    assert_int_equal(open_copy(b, len), CURV_E_CORRUPT);
    /* Wrong length: one byte appended, or the header's length edited. */
    memcpy(b, blob, len);
    b[len] = 0;
    assert_int_equal(open_copy(b, len + 1), CURV_E_CORRUPT);
    tu_forge(b, blob, len, 16, tu_get_le(blob + 16, 8) + 1, 8);
    assert_int_equal(open_copy(b, len), CURV_E_CORRUPT);
    tu_forge(b, blob, len, 16, UINT64_MAX, 8);
    assert_int_equal(open_copy(b, len), CURV_E_CORRUPT);
    /* Bad CRC: each byte flipped in turn, the CRC left as it was. */
    for (size_t i = 0; i < len; i++) {
        memcpy(b, blob, len);
        b[i] ^= 0xFF;
        curv_status st = open_copy(b, len);
        assert_int_equal(st, CURV_E_CORRUPT);
    }
    /* Non-zero flags with a valid CRC. */
    tu_forge(b, blob, len, 12, 1, 4);
    assert_int_equal(open_copy(b, len), CURV_E_CORRUPT);
    /* A future version with a valid CRC is E_VERSION, not corruption. */
    tu_forge(b, blob, len, 8, 2, 4);
    assert_int_equal(open_copy(b, len), CURV_E_VERSION);
    tu_forge(b, blob, len, 8, 0xFFFFFFFFu, 4);
    assert_int_equal(open_copy(b, len), CURV_E_VERSION);
    /* ... while a damaged version under the old CRC reads as corruption. */
    memcpy(b, blob, len);
    tu_put_le(b + 8, 2, 4);
    assert_int_equal(open_copy(b, len), CURV_E_CORRUPT);
    /* The untouched blob still opens. */
    memcpy(b, blob, len);
    assert_int_equal(open_copy(b, len), CURV_OK);
    free(b);
    free(blob);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32_check_value), cmocka_unit_test(test_round_trip_every_type),
        cmocka_unit_test(test_reader_overrun),    cmocka_unit_test(test_seal_and_open),
        cmocka_unit_test(test_open_rejects),      cmocka_unit_test(test_parts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
