/* SPDX-License-Identifier: MIT */
/* MurmurHash3 x64_128 as SMHasher defines it: 16-byte blocks read as two
 * little-endian words, the tail folded in the same way, then the
 * finalization mix (fmix64) of both halves. Fed in pieces it gives what the
 * one-shot reference gives on the whole message. */
#include "wire/hash128.h"

#include <string.h>

#include "wire/byte_order.h"

static const uint64_t C1 = 0x87c37b91114253d5ULL, C2 = 0x4cf5ad432745937fULL;

static uint64_t rotl(uint64_t x, unsigned r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return curvd_le64(v);
}

static uint64_t mix_k1(uint64_t k)
{
    return rotl(k * C1, 31) * C2;
}

static uint64_t mix_k2(uint64_t k)
{
    return rotl(k * C2, 33) * C1;
}

static uint64_t fmix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    return k ^ (k >> 33);
}

/* One 16-byte block into the state @h (h1, h2). The state is passed
 * apart from the context: bytes read through unsigned char may alias
 * the context, so a loop on c->h1 and c->h2 would store and reload them
 * for every block. */
static void block(uint64_t h[2], const unsigned char *p)
{
    uint64_t h1 = h[0], h2 = h[1];
    h1 ^= mix_k1(le64(p));
    h1 = (rotl(h1, 27) + h2) * 5 + 0x52dce729;
    h2 ^= mix_k2(le64(p + 8));
    h2 = (rotl(h2, 31) + h1) * 5 + 0x38495ab5;
    h[0] = h1;
    h[1] = h2;
}

void curvd_hash128_init(struct curvd_hash128 *c, uint32_t seed)
{
    c->h1 = c->h2 = seed;
    c->len = 0;
    c->fill = 0;
}

void curvd_hash128_update(struct curvd_hash128 *c, const void *p, size_t len)
{
    const unsigned char *s = p;
    uint64_t h[2] = {c->h1, c->h2};
    c->len += len;
    if (c->fill) {
        size_t n = 16 - c->fill < len ? 16 - c->fill : len;
        memcpy(c->buf + c->fill, s, n);
        c->fill += n;
        s += n;
        len -= n;
        if (c->fill < 16)
            return;
        block(h, c->buf);
        c->fill = 0;
    }
    for (; len >= 16; s += 16, len -= 16)
        block(h, s);
    c->h1 = h[0];
    c->h2 = h[1];
    memcpy(c->buf, s, len);
    c->fill = len;
}

void curvd_hash128_final(struct curvd_hash128 *c, unsigned char out[16])
{
    /* The tail, zero-padded: its words are mixed like a block's, without
     * the chaining step. */
    unsigned char t[16] = {0};
    memcpy(t, c->buf, c->fill);
    if (c->fill > 8)
        c->h2 ^= mix_k2(le64(t + 8));
    if (c->fill > 0)
        c->h1 ^= mix_k1(le64(t));
    uint64_t h1 = c->h1 ^ c->len, h2 = c->h2 ^ c->len;
    h1 += h2;
    h2 += h1;
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 += h2;
    h2 += h1;
    for (int i = 0; i < 8; i++) {
        out[i] = (unsigned char)(h1 >> (8 * i));
        out[8 + i] = (unsigned char)(h2 >> (8 * i));
    }
}
