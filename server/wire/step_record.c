/* SPDX-License-Identifier: MIT */
/* A step's record; the format is in step_record.h. */
#include "wire/step_record.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "wire/byte_order.h"
#include "wire/tensor_bytes.h"

/* The header: names the format and its version; a change takes a new one. */
static const unsigned char magic[8] = {'c', 'u', 'r', 'v', 'r', 'e', 'c', '1'};

void curvd_step_walk(const curv_layout *l, const struct curvd_step_in *in, const double *g,
                     const double *theta, const double *gsq, const struct curvd_step_sink *s)
{
    size_t dim = curv_layout_dim(l);
    s->u64(s->ctx, (uint64_t)in->step);
    s->vec(s->ctx, g, dim);
    s->u64(s->ctx, in->nparams != 0);
    if (in->nparams)
        s->vec(s->ctx, theta, dim);
    s->u64(s->ctx, in->ngrad_sq != 0);
    if (in->ngrad_sq)
        s->vec(s->ctx, gsq, dim);
    s->u64(s->ctx, in->has_loss != 0);
    if (in->has_loss)
        s->vec(s->ctx, &in->loss, 1);
    s->u64(s->ctx, in->batch);
    s->u64(s->ctx, in->nlayers);
    for (size_t i = 0; i < in->nlayers; i++) {
        const struct curvd_layer_in *li = &in->layers[i];
        s->u64(s->ctx, li->block);
        s->u64(s->ctx, li->examples);
        s->u64(s->ctx, li->acts.shape[0]);
        const struct curvd_tensor *t[2] = {&li->acts, &li->signals};
        for (int k = 0; k < 2; k++)
            if (t[k]->fdata)
                s->vecf(s->ctx, t[k]->fdata, t[k]->count);
            else
                s->vec(s->ctx, t[k]->data, t[k]->count);
    }
}

/* ---- Writing -------------------------------------------------------------- */

static unsigned char *grow(struct curvd_record *r, size_t n)
{
    if (r->failed)
        return NULL;
    if (n > r->cap - r->len) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap - r->len < n) {
            if (cap > SIZE_MAX / 2) {
                r->failed = 1;
                return NULL;
            }
            cap *= 2;
        }
        unsigned char *b = curvd_mem_realloc(r->buf, cap);
        if (!b) {
            r->failed = 1;
            return NULL;
        }
        r->buf = b;
        r->cap = cap;
    }
    unsigned char *at = r->buf + r->len;
    r->len += n;
    return at;
}

static void put_u64(void *ctx, uint64_t v)
{
    unsigned char *b = grow(ctx, 8);
    v = curvd_le64(v);
    if (b)
        memcpy(b, &v, sizeof v);
}

/* @n values as floats into @b; 1 when each one is a float (converts back
 * to itself), the test that chooses the width. In one pass with the
 * writing, as the values of FP32 tensors always are floats. */
static int put_floats(unsigned char *b, const double *v, size_t n)
{
    int all = 1;
    for (size_t i = 0; i < n; i++) {
        float f = (float)v[i];
        uint32_t bits;
        all &= (double)f == v[i];
        memcpy(&bits, &f, sizeof bits);
        bits = curvd_le32(bits);
        memcpy(b + 4 * i, &bits, sizeof bits);
    }
    return all;
}

/* n, the width (4 or 8), then the values' IEEE 754 bits: written as
 * floats, then again as doubles when one value was not a float. */
static void put_vec(void *ctx, const double *v, size_t n)
{
    struct curvd_record *r = ctx;
    put_u64(r, n);
    size_t at = r->len;
    unsigned char *b = n <= SIZE_MAX / 8 ? grow(r, 1 + 4 * n) : NULL;
    if (!b) {
        r->failed = 1;
        return;
    }
    *b = 4;
    if (put_floats(b + 1, v, n) || !grow(r, 4 * n))
        return;
    b = r->buf + at;
    *b = 8;
    curvd_le_encode(v, n, CURV_F64, b + 1);
}

/* Floats are written as floats: what put_vec writes for their doubles. */
static void put_vecf(void *ctx, const float *v, size_t n)
{
    struct curvd_record *r = ctx;
    put_u64(r, n);
    unsigned char *b = n <= SIZE_MAX / 4 ? grow(r, 1 + 4 * n) : NULL;
    if (!b) {
        r->failed = 1;
        return;
    }
    *b = 4;
    curvd_le_encode_f32(v, n, b + 1);
}

/* The most bytes a walk writes (a vector of doubles at 8 bytes a value),
 * so that the record is allocated once: growing it by doubling would copy
 * and fault in a large step's 46 MB several times over. */
static void size_u64(void *ctx, uint64_t v)
{
    (void)v;
    size_t *t = ctx;
    *t = *t > SIZE_MAX - 8 ? SIZE_MAX : *t + 8;
}

/* *@t + 9 + @width * @n, or SIZE_MAX (which stays) past it. */
static void size_add(size_t *t, size_t n, size_t width)
{
    *t = *t > SIZE_MAX - 9 || n > (SIZE_MAX - 9 - *t) / width ? SIZE_MAX : *t + 9 + width * n;
}

static void size_vec(void *ctx, const double *v, size_t n)
{
    (void)v;
    size_add(ctx, n, 8);
}

static void size_vecf(void *ctx, const float *v, size_t n)
{
    (void)v;
    size_add(ctx, n, 4);
}

int curvd_record_step(struct curvd_record *r, const curv_layout *l, const struct curvd_step_in *in,
                      const double *g, const double *theta, const double *gsq)
{
    r->len = 0;
    r->failed = 0;
    size_t most = sizeof magic;
    const struct curvd_step_sink sizing = {size_u64, size_vec, size_vecf, &most};
    curvd_step_walk(l, in, g, theta, gsq, &sizing);
    if (most > r->cap && most != SIZE_MAX) { /* nothing in it to keep */
        curvd_mem_free(r->buf);
        r->buf = curvd_mem_alloc(most);
        r->cap = r->buf ? most : 0;
        r->failed = !r->buf;
    }
    unsigned char *h = grow(r, sizeof magic);
    if (h)
        memcpy(h, magic, sizeof magic);
    const struct curvd_step_sink s = {put_u64, put_vec, put_vecf, r};
    curvd_step_walk(l, in, g, theta, gsq, &s);
    return r->failed ? -1 : 0;
}

int curvd_record_answer(struct curvd_record *r, const curv_response *resp)
{
    put_u64(r, resp->seq);
    put_vec(r, resp->values, resp->n_values);
    return r->failed ? -1 : 0;
}

void curvd_record_clear(struct curvd_record *r)
{
    if (!r)
        return;
    curvd_mem_free(r->buf);
    memset(r, 0, sizeof *r);
}

/* ---- Reading -------------------------------------------------------------- */

/* A cursor; @out NULL: only count the doubles (@used) and layers. */
struct rd {
    const unsigned char *p, *end;
    double *out;
    size_t used;
    const char *err;
};

static uint64_t le_get(const unsigned char *b, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static int get_u64(struct rd *r, uint64_t *v)
{
    if (r->end - r->p < 8) {
        r->err = "the record ends early";
        return -1;
    }
    *v = le_get(r->p, 8);
    r->p += 8;
    return 0;
}

/* A vector of @want values (0: any) into the output, *@at its start. */
static int get_vec(struct rd *r, size_t want, const double **at, size_t *n_out)
{
    uint64_t n;
    if (get_u64(r, &n) != 0)
        return -1;
    if (r->p == r->end || (*r->p != 4 && *r->p != 8)) {
        r->err = r->p == r->end ? "the record ends early" : "a vector has an unknown width";
        return -1;
    }
    int w = *r->p++;
    if ((want && n != want) || n > (uint64_t)(r->end - r->p) / (uint64_t)w) {
        r->err = want && n != want ? "a vector has the wrong length" : "the record ends early";
        return -1;
    }
    if (r->out) {
        double *o = r->out + r->used;
        for (size_t i = 0; i < n; i++) {
            uint64_t bits = le_get(r->p + (size_t)w * i, w);
            if (w == 4) {
                uint32_t b32 = (uint32_t)bits;
                float f;
                memcpy(&f, &b32, sizeof f);
                o[i] = f;
            } else {
                memcpy(&o[i], &bits, sizeof o[i]);
            }
        }
        *at = o;
    }
    r->p += (size_t)w * n;
    r->used += n;
    if (n_out)
        *n_out = (size_t)n;
    return 0;
}

/* An optional vector: its flag, then the vector when sent. */
static int get_optional(struct rd *r, size_t want, const double **at)
{
    uint64_t sent;
    if (get_u64(r, &sent) != 0 || sent > 1) {
        r->err = r->err ? r->err : "a flag is neither 0 nor 1";
        return -1;
    }
    *at = NULL;
    return sent ? get_vec(r, want, at, NULL) : 0;
}

/* One layer entry, checked against the layout. */
static int get_layer(struct rd *r, const curv_layout *l, curv_layer_stats *ls)
{
    uint64_t block, examples, rows;
    const double *acts = NULL, *sig = NULL;
    if (get_u64(r, &block) || get_u64(r, &examples) || get_u64(r, &rows))
        return -1;
    if (block >= curv_layout_nblocks(l) || rows == 0 || rows > SIZE_MAX) {
        r->err = "a layer entry names no block of the layout, or no rows";
        return -1;
    }
    if (examples == 0 || examples > SIZE_MAX) { /* the decoder's rule: >= 1 */
        r->err = "a layer entry has no examples";
        return -1;
    }
    curv_block_info b;
    curv_layout_block(l, (size_t)block, &b);
    if ((b.n_in && rows > SIZE_MAX / b.n_in) || (b.n_out && rows > SIZE_MAX / b.n_out)) {
        r->err = "a layer entry's shape overflows";
        return -1;
    }
    if (get_vec(r, (size_t)rows * b.n_in, &acts, NULL) ||
        get_vec(r, (size_t)rows * b.n_out, &sig, NULL))
        return -1;
    if (ls)
        *ls = (curv_layer_stats){.block = (size_t)block,
                                 .rows = (size_t)rows,
                                 .examples = (size_t)examples,
                                 .acts = acts,
                                 .signals = sig};
    return 0;
}

/* The step's part of the record (after the header), into @rd when
 * r->out is set. */
static int get_step(struct rd *r, const curv_layout *l, struct curvd_record_read *rd,
                    size_t *nlayers)
{
    size_t dim = curv_layout_dim(l);
    const double *g = NULL, *theta = NULL, *gsq = NULL, *loss = NULL;
    uint64_t batch, n;
    if (get_u64(r, &rd->step) || get_vec(r, dim, &g, NULL) || get_optional(r, dim, &theta) ||
        get_optional(r, dim, &gsq) || get_optional(r, 1, &loss) || get_u64(r, &batch) ||
        get_u64(r, &n))
        return -1;
    if (n > (uint64_t)(r->end - r->p) / 24) { /* each entry holds 3 numbers at least */
        r->err = "the record ends early";
        return -1;
    }
    *nlayers = (size_t)n;
    for (size_t i = 0; i < *nlayers; i++)
        if (get_layer(r, l, r->out ? &rd->layers[i] : NULL) != 0)
            return -1;
    if (r->out)
        rd->si = (curv_step_input){.grad = g,
                                   .params = theta,
                                   .len = dim,
                                   .dtype = CURV_F64,
                                   .layers = *nlayers ? rd->layers : NULL,
                                   .n_layers = *nlayers,
                                   .loss = loss ? *loss : 0,
                                   .has_loss = loss != NULL,
                                   .grad_sq = gsq,
                                   .batch = (size_t)batch};
    return 0;
}

int curvd_record_parse(const unsigned char *rec, size_t len, const curv_layout *l,
                       struct curvd_record_read *rd, char *why, size_t cap)
{
    memset(rd, 0, sizeof *rd);
    struct rd r = {.p = rec, .end = rec + len};
    size_t nlayers = 0;
    if (len < sizeof magic || memcmp(rec, magic, sizeof magic) != 0) {
        snprintf(why, cap, "the record is not a curvd step record of this version");
        return -1;
    }
    r.p += sizeof magic;
    if (get_step(&r, l, rd, &nlayers) != 0) { /* counting */
        snprintf(why, cap, "%s", r.err);
        return -1;
    }
    rd->owned = malloc((r.used ? r.used : 1) * sizeof *rd->owned);
    rd->layers = nlayers ? calloc(nlayers, sizeof *rd->layers) : NULL;
    if (!rd->owned || (nlayers && !rd->layers)) {
        curvd_record_read_clear(rd);
        snprintf(why, cap, "out of memory reading a step record");
        return -1;
    }
    r = (struct rd){.p = rec + sizeof magic, .end = rec + len, .out = rd->owned};
    (void)get_step(&r, l, rd, &nlayers); /* as counted: cannot fail */
    rd->p = r.p;
    rd->end = r.end;
    return 0;
}

int curvd_record_next_answer(struct curvd_record_read *rd, curv_response *resp, char *why,
                             size_t cap)
{
    if (rd->p == rd->end)
        return 0;
    struct rd r = {.p = rd->p, .end = rd->end};
    uint64_t seq;
    size_t n = 0;
    const double *v = NULL;
    if (get_u64(&r, &seq) || get_vec(&r, 0, &v, &n)) { /* counting */
        snprintf(why, cap, "an answer: %s", r.err);
        return -1;
    }
    double *values = malloc((n ? n : 1) * sizeof *values);
    if (!values) {
        snprintf(why, cap, "out of memory reading a step record");
        return -1;
    }
    r = (struct rd){.p = rd->p + 8, .end = rd->end, .out = values};
    (void)get_vec(&r, 0, &v, &n);
    rd->p = r.p;
    *resp = (curv_response){.seq = seq, .n_values = n, .values = values};
    return 1;
}

void curvd_record_read_clear(struct curvd_record_read *rd)
{
    free(rd->owned);
    free(rd->layers);
    memset(rd, 0, sizeof *rd);
}
