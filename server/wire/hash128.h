/* SPDX-License-Identifier: MIT */
/*
 * MurmurHash3 x64_128 (Austin Appleby's, public domain; SMHasher's
 * reference), streaming: what a request digest is made of
 * (wire/request_digest.h). Not cryptographic: it tells apart requests that
 * differ by accident (a bug, another trainer, a stale optimizer), at
 * gigabytes a second, which a digest of every step's tensors needs.
 */
#ifndef CURVD_HASH128_H
#define CURVD_HASH128_H

#include <stddef.h>
#include <stdint.h>

struct curvd_hash128 {
    uint64_t h1, h2;
    uint64_t len;          /* bytes so far */
    unsigned char buf[16]; /* a block being filled */
    size_t fill;
};

/* curvd_hash128_init - start a new message in @c with @seed. */
void curvd_hash128_init(struct curvd_hash128 *c, uint32_t seed);
/* curvd_hash128_update - append @len bytes at @p (@p may be NULL when @len is 0). */
void curvd_hash128_update(struct curvd_hash128 *c, const void *p, size_t len);
/* curvd_hash128_final - the hash of everything appended: h1 then h2, each
 * little-endian, as the reference writes them. */
void curvd_hash128_final(struct curvd_hash128 *c, unsigned char out[16]);

#endif
