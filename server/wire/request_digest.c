/* SPDX-License-Identifier: MIT */
/* The canonical forms behind request_digest.h: each item a fixed-width
 * little-endian field, so that no two different contents share one byte
 * string. */
#include "wire/request_digest.h"

#include <stdio.h>
#include <string.h>

#include "wire/byte_order.h"
#include "wire/hash128.h"
#include "wire/step_record.h"

static void put_u64(struct curvd_hash128 *c, uint64_t v)
{
    v = curvd_le64(v);
    curvd_hash128_update(c, &v, sizeof v);
}

void curvd_digest_canon(unsigned char *out, const double *v, size_t n)
{
    const uint64_t sign = (uint64_t)1 << 63;
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        /* Without a branch, so that the loop vectorizes: the magnitude
         * less one borrows into the sign bit only when the magnitude is
         * 0, and then the sign is cleared. */
        bits &= ~(((bits & ~sign) - 1) & sign);
        bits = curvd_le64(bits);
        memcpy(out + 8 * i, &bits, sizeof bits);
    }
}

/* @n, then the canonical form of @n values, a chunk at a time: small
 * enough to stay in the L1 cache between being written and hashed. */
static void put_doubles(struct curvd_hash128 *c, const double *v, size_t n)
{
    enum { CHUNK = 1024 };
    unsigned char chunk[CHUNK * 8];
    put_u64(c, n);
    for (size_t at = 0; at < n; at += CHUNK) {
        size_t k = n - at < CHUNK ? n - at : CHUNK;
        curvd_digest_canon(chunk, v + at, k);
        curvd_hash128_update(c, chunk, 8 * k);
    }
}

/* The same for float values: hashed as the doubles they are, so a tensor
 * kept as floats has the digest of its widened copy. */
static void put_floats(struct curvd_hash128 *c, const float *v, size_t n)
{
    enum { CHUNK = 1024 };
    unsigned char chunk[CHUNK * 8];
    double wide[CHUNK];
    put_u64(c, n);
    for (size_t at = 0; at < n; at += CHUNK) {
        size_t k = n - at < CHUNK ? n - at : CHUNK;
        for (size_t i = 0; i < k; i++)
            wide[i] = v[at + i];
        curvd_digest_canon(chunk, wide, k);
        curvd_hash128_update(c, chunk, 8 * k);
    }
}

static void finish(struct curvd_hash128 *c, char out[CURVD_DIGEST_TEXT])
{
    unsigned char d[16];
    curvd_hash128_final(c, d);
    memcpy(out, CURVD_DIGEST_PREFIX, sizeof CURVD_DIGEST_PREFIX - 1);
    for (int i = 0; i < 16; i++)
        snprintf(out + sizeof CURVD_DIGEST_PREFIX - 1 + 2 * i, 3, "%02x", d[i]);
}

static void hash_u64(void *ctx, uint64_t v)
{
    put_u64(ctx, v);
}

static void hash_vec(void *ctx, const double *v, size_t n)
{
    put_doubles(ctx, v, n);
}

static void hash_vecf(void *ctx, const float *v, size_t n)
{
    put_floats(ctx, v, n);
}

void curvd_step_digest(const curv_layout *l, const struct curvd_step_in *in, const double *g,
                       const double *theta, const double *gsq, char out[CURVD_DIGEST_TEXT])
{
    static const char tag[] = "curvd step request 1";
    struct curvd_hash128 c;
    curvd_hash128_init(&c, 0);
    curvd_hash128_update(&c, tag, sizeof tag);
    const struct curvd_step_sink s = {hash_u64, hash_vec, hash_vecf, &c};
    curvd_step_walk(l, in, g, theta, gsq, &s);
    finish(&c, out);
}

void curvd_answer_digest(long long step, const curv_request *req, const double *values,
                         char out[CURVD_DIGEST_TEXT])
{
    static const char tag[] = "curvd callback answer 1";
    struct curvd_hash128 c;
    curvd_hash128_init(&c, 0);
    curvd_hash128_update(&c, tag, sizeof tag);
    put_u64(&c, (uint64_t)step);
    put_u64(&c, req->seq);
    put_doubles(&c, values, req->n_values);
    finish(&c, out);
}

void curvd_update_digest(const double *delta, size_t dim, char out[CURVD_DIGEST_TEXT])
{
    static const char tag[] = "curvd step update 1";
    struct curvd_hash128 c;
    curvd_hash128_init(&c, 0);
    curvd_hash128_update(&c, tag, sizeof tag);
    put_doubles(&c, delta, dim);
    finish(&c, out);
}
