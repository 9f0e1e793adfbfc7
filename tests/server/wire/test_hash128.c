/* SPDX-License-Identifier: MIT */
/* MurmurHash3 x64_128 against SMHasher's verification value, which covers
 * every length from 0 to 255 (each tail) and a 4 KiB message, then the
 * streaming form against the whole-message form for every way of cutting
 * a message in pieces of one size. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "wire/hash128.h"

static void hash_pieces(const void *p, size_t len, uint32_t seed, size_t piece,
                        unsigned char out[16])
{
    struct curvd_hash128 c;
    const unsigned char *s = p;
    curvd_hash128_init(&c, seed);
    if (!piece)
        curvd_hash128_update(&c, s, len);
    for (size_t at = 0; piece && at < len; at += piece)
        curvd_hash128_update(&c, s + at, len - at < piece ? len - at : piece);
    curvd_hash128_final(&c, out);
}

/* SMHasher's VerificationTest: hash {0}, {0,1}, ... of lengths 0..255 with
 * seed 256 - length, hash the 256 results with seed 0; the first four
 * bytes as a little-endian integer are 0x6384BA69 for MurmurHash3_x64_128
 * (SMHasher's main.cpp). */
static void test_smhasher_verification(void **state)
{
    (void)state;
    unsigned char key[256], hashes[256 * 16], final[16];
    for (size_t piece = 0; piece <= 17; piece += 17) { /* whole, and in pieces of 17 */
        for (int i = 0; i < 256; i++) {
            key[i] = (unsigned char)i;
            hash_pieces(key, (size_t)i, (uint32_t)(256 - i), piece, hashes + 16 * i);
        }
        hash_pieces(hashes, sizeof hashes, 0, piece, final);
        unsigned v = final[0] | final[1] << 8 | final[2] << 16 | (unsigned) final[3] << 24;
        if (v != 0x6384BA69u)
            fail_msg("verification 0x%08X, want 0x6384BA69 (pieces of %zu)", v, piece);
    }
}

static void test_pieces_of_every_size(void **state)
{
    (void)state;
    unsigned char msg[100], whole[16], cut[16];
    for (size_t i = 0; i < sizeof msg; i++)
        msg[i] = (unsigned char)(i * 37 + 11);
    for (size_t n = 0; n <= sizeof msg; n++) {
        hash_pieces(msg, n, 7, 0, whole);
        for (size_t piece = 1; piece <= n; piece++) {
            hash_pieces(msg, n, 7, piece, cut);
            if (memcmp(whole, cut, 16) != 0)
                fail_msg("%zu bytes in pieces of %zu differ from whole", n, piece);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smhasher_verification),
        cmocka_unit_test(test_pieces_of_every_size),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
