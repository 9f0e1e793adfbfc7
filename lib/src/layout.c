/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

struct block {
    char name[CURV_NAME_MAX + 1];
    curv_block_kind kind;
    size_t n_out, n_in, c_in, kh, kw;
    int has_bias;
    size_t offset, size;
};

struct curv_layout {
    struct block *blocks;
    size_t n, cap;
    size_t dim;
};

curv_layout *curv_layout_new(void)
{
    return curv__calloc(1, sizeof(curv_layout));
}

void curv_layout_free(curv_layout *l)
{
    if (!l)
        return;
    curv__free(l->blocks);
    curv__free(l);
}

curv_layout *curv_layout_dup(const curv_layout *l)
{
    if (!l)
        return NULL;
    curv_layout *c = curv__calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (l->n) {
        c->blocks = curv__malloc(l->n * sizeof *c->blocks);
        if (!c->blocks) {
            curv__free(c);
            return NULL;
        }
        memcpy(c->blocks, l->blocks, l->n * sizeof *c->blocks);
    }
    c->n = c->cap = l->n;
    c->dim = l->dim;
    return c;
}

size_t curv__layout_dup_bytes(const curv_layout *l)
{
    return sizeof *l + l->n * sizeof *l->blocks;
}

long curv_layout_find(const curv_layout *l, const char *name)
{
    if (!l || !name)
        return -1;
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->blocks[i].name, name) == 0)
            return (long)i;
    return -1;
}

/* Validate and append @b (size and offset are computed here). */
static curv_status add_block(curv_layout *l, struct block *b, const char *name, curv_error *err)
{
    if (!l || !name)
        return curv__fail(err, CURV_E_INVALID, "layout: NULL layout or block name");
    size_t nlen = strlen(name);
    if (nlen == 0 || nlen > CURV_NAME_MAX)
        return curv__fail(err, CURV_E_INVALID, "layout: block name must be 1..%d bytes, got %zu",
                          CURV_NAME_MAX, nlen);
    if (curv_layout_find(l, name) >= 0)
        return curv__fail(err, CURV_E_INVALID, "layout: duplicate block name '%s'", name);
    if (b->n_out == 0 || b->n_in == 0)
        return curv__fail(err, CURV_E_INVALID, "layout: block '%s' has a zero dimension", name);
    size_t cols = b->n_in + (b->has_bias ? 1 : 0), size;
    if (cols < b->n_in || !curv__mul_ok(b->n_out, cols, &size) || size > CURV_LAYOUT_MAX_DIM ||
        l->dim + size > CURV_LAYOUT_MAX_DIM)
        return curv__fail(err, CURV_E_RANGE,
                          "layout: block '%s' (%zu x %zu) takes the layout past %zu parameters",
                          name, b->n_out, cols, (size_t)CURV_LAYOUT_MAX_DIM);
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 8;
        struct block *nb = curv__realloc(l->blocks, cap * sizeof *nb);
        if (!nb)
            return curv__fail(err, CURV_E_NOMEM, "layout: out of memory adding '%s'", name);
        l->blocks = nb;
        l->cap = cap;
    }
    memcpy(b->name, name, nlen + 1);
    b->offset = l->dim;
    b->size = size;
    l->blocks[l->n++] = *b;
    l->dim += size;
    return CURV_OK;
}

curv_status curv_layout_add_dense(curv_layout *l, const char *name, size_t n_out, size_t n_in,
                                  int has_bias, curv_error *err)
{
    struct block b = {
        .kind = CURV_BLOCK_DENSE, .n_out = n_out, .n_in = n_in, .has_bias = !!has_bias};
    return add_block(l, &b, name, err);
}

curv_status curv_layout_add_conv2d(curv_layout *l, const char *name, size_t c_out, size_t c_in,
                                   size_t kh, size_t kw, int has_bias, curv_error *err)
{
    size_t k2, n_in;
    if (!curv__mul_ok(kh, kw, &k2) || !curv__mul_ok(c_in, k2, &n_in))
        return curv__fail(err, CURV_E_RANGE, "layout: conv2d block '%s': c_in*kh*kw overflows",
                          name ? name : "(null)");
    if (c_in == 0 || kh == 0 || kw == 0)
        return curv__fail(err, CURV_E_INVALID, "layout: conv2d block '%s' has a zero dimension",
                          name ? name : "(null)");
    struct block b = {.kind = CURV_BLOCK_CONV2D,
                      .n_out = c_out,
                      .n_in = n_in,
                      .c_in = c_in,
                      .kh = kh,
                      .kw = kw,
                      .has_bias = !!has_bias};
    return add_block(l, &b, name, err);
}

curv_status curv_layout_add_vector(curv_layout *l, const char *name, size_t n, curv_error *err)
{
    struct block b = {.kind = CURV_BLOCK_VECTOR, .n_out = n, .n_in = 1};
    return add_block(l, &b, name, err);
}

size_t curv_layout_dim(const curv_layout *l)
{
    return l ? l->dim : 0;
}

size_t curv_layout_nblocks(const curv_layout *l)
{
    return l ? l->n : 0;
}

curv_status curv_layout_block(const curv_layout *l, size_t i, curv_block_info *out)
{
    if (!l || !out || i >= l->n)
        return CURV_E_INVALID;
    const struct block *b = &l->blocks[i];
    *out = (curv_block_info){.name = b->name,
                             .kind = b->kind,
                             .n_out = b->n_out,
                             .n_in = b->n_in,
                             .c_in = b->c_in,
                             .kh = b->kh,
                             .kw = b->kw,
                             .has_bias = b->has_bias,
                             .rows = b->n_out,
                             .cols = b->n_in + (size_t)b->has_bias,
                             .offset = b->offset,
                             .size = b->size};
    return CURV_OK;
}

void curv__locate(const curv_layout *l, size_t i, char *buf, size_t cap)
{
    for (size_t k = 0; k < l->n; k++) {
        const struct block *b = &l->blocks[k];
        if (i >= b->offset && i - b->offset < b->size) {
            size_t cols = b->n_in + (size_t)b->has_bias, j = i - b->offset;
            snprintf(buf, cap, "block '%s' (row %zu, col %zu of %zu x %zu)", b->name, j / cols,
                     j % cols, b->n_out, cols);
            return;
        }
    }
    snprintf(buf, cap, "index %zu (outside the layout)", i);
}

void curv__describe(const curv_layout *l, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t k = 0; k < l->n; k++) {
        const struct block *b = &l->blocks[k];
        int n = snprintf(buf + used, cap - used, "%s'%s' %zux%zu", k ? ", " : "", b->name, b->n_out,
                         b->n_in + (size_t)b->has_bias);
        if (n < 0 || (size_t)n >= cap - used) {
            if (cap >= 4)
                memcpy(buf + cap - 4, "...", 4);
            return;
        }
        used += (size_t)n;
    }
}
