/* SPDX-License-Identifier: MIT */
/* The canonical forms behind request_digest.h: each item a fixed-width
 * little-endian field, so that no two different contents share one byte
 * string. */
#include "wire/request_digest.h"

#include <stdio.h>
#include <string.h>

#include "wire/hash128.h"

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

/* An optional vector: whether it was sent, then its values. */
static void put_optional(struct curvd_hash128 *c, int sent, const double *v, size_t n)
{
    put_u64(c, sent != 0);
    if (sent)
        put_doubles(c, v, n);
}

static void finish(struct curvd_hash128 *c, char out[CURVD_DIGEST_TEXT])
{
    unsigned char d[16];
    curvd_hash128_final(c, d);
    memcpy(out, CURVD_DIGEST_PREFIX, sizeof CURVD_DIGEST_PREFIX - 1);
    for (int i = 0; i < 16; i++)
        snprintf(out + sizeof CURVD_DIGEST_PREFIX - 1 + 2 * i, 3, "%02x", d[i]);
}

void curvd_step_digest(const curv_layout *l, const struct curvd_step_in *in, const double *g,
                       const double *theta, const double *gsq, char out[CURVD_DIGEST_TEXT])
{
    static const char tag[] = "curvd step request 1";
    struct curvd_hash128 c;
    size_t dim = curv_layout_dim(l);
    curvd_hash128_init(&c, 0);
    curvd_hash128_update(&c, tag, sizeof tag);
    put_u64(&c, (uint64_t)in->step);
    put_doubles(&c, g, dim);
    put_optional(&c, in->nparams != 0, theta, dim);
    put_optional(&c, in->ngrad_sq != 0, gsq, dim);
    put_optional(&c, in->has_loss, &in->loss, 1);
    put_u64(&c, in->batch);
    put_u64(&c, in->nlayers);
    for (size_t i = 0; i < in->nlayers; i++) {
        const struct curvd_layer_in *li = &in->layers[i];
        put_u64(&c, li->block);
        put_u64(&c, li->examples);
        put_u64(&c, li->acts.shape[0]);
        put_doubles(&c, li->acts.data, li->acts.count);
        put_doubles(&c, li->signals.data, li->signals.count);
    }
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
