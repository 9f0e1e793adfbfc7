/* SPDX-License-Identifier: MIT */
/* The canonical forms behind request_digest.h: each item a fixed-width
 * little-endian field, so that no two different contents share one byte
 * string. */
#include "wire/request_digest.h"

#include <stdio.h>
#include <string.h>

#include "wire/hash128.h"
#include "wire/step_record.h"

static void le_put(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(struct curvd_hash128 *c, uint64_t v)
{
    unsigned char b[8];
    le_put(b, v);
    curvd_hash128_update(c, b, sizeof b);
}

/* @n values, each its IEEE 754 bits; -0 becomes +0 (equal values, one
 * form). In chunks, so that the hash runs over long stretches. */
static void put_doubles(struct curvd_hash128 *c, const double *v, size_t n)
{
    unsigned char chunk[512 * 8];
    put_u64(c, n);
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        for (; k < 512 && i < n; k++, i++) {
            double x = v[i] == 0 ? 0.0 : v[i];
            uint64_t bits;
            memcpy(&bits, &x, sizeof bits);
            le_put(chunk + 8 * k, bits);
        }
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

void curvd_step_digest(const curv_layout *l, const struct curvd_step_in *in, const double *g,
                       const double *theta, const double *gsq, char out[CURVD_DIGEST_TEXT])
{
    static const char tag[] = "curvd step request 1";
    struct curvd_hash128 c;
    curvd_hash128_init(&c, 0);
    curvd_hash128_update(&c, tag, sizeof tag);
    const struct curvd_step_sink s = {hash_u64, hash_vec, &c};
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
