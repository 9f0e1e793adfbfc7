/* SPDX-License-Identifier: MIT */
#include "wire/out.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "wire/json_scan.h"
#include "wire/tensor_bytes.h"

void curvd_out_init(struct curvd_out *o)
{
    memset(o, 0, sizeof *o);
}

void curvd_out_clear(struct curvd_out *o)
{
    curvd_mem_free(o->buf);
    free(o->tail);
    curvd_out_init(o);
}

/* Room for @n more bytes at buf + len, or NULL (and sticky failure).
 * Doubling keeps a body of many small writes amortised O(1). */
static char *reserve(struct curvd_out *o, size_t n)
{
    if (o->nomem)
        return NULL;
    if (n > SIZE_MAX - o->len) {
        o->nomem = 1;
        return NULL;
    }
    if (o->len + n > o->cap || !o->buf) { /* a first write of 0 bytes gets a buffer too */
        size_t cap = o->cap ? o->cap : 512;
        while (cap < o->len + n)
            cap = cap > SIZE_MAX / 2 ? o->len + n : 2 * cap;
        char *b = curvd_mem_realloc(o->buf, cap);
        if (!b) {
            o->nomem = 1;
            return NULL;
        }
        o->buf = b;
        o->cap = cap;
    }
    return o->buf + o->len;
}

void curvd_out_raw(struct curvd_out *o, const char *s, size_t n)
{
    char *q = reserve(o, n);
    if (q) {
        memcpy(q, s, n);
        o->len += n;
    }
}

void curvd_out_string(struct curvd_out *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = strlen(s);
    char *q = n <= (SIZE_MAX - 2) / 6 ? reserve(o, 6 * n + 2) : (o->nomem = 1, NULL);
    if (!q)
        return;
    char *start = q;
    *q++ = '"';
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        const char *esc = *c == '"'    ? "\\\""
                          : *c == '\\' ? "\\\\"
                          : *c == '\b' ? "\\b"
                          : *c == '\f' ? "\\f"
                          : *c == '\n' ? "\\n"
                          : *c == '\r' ? "\\r"
                          : *c == '\t' ? "\\t"
                                       : NULL;
        if (esc) {
            memcpy(q, esc, 2);
            q += 2;
        } else if (*c < 0x20) {
            memcpy(q, "\\u00", 4);
            q[4] = hex[*c >> 4];
            q[5] = hex[*c & 15];
            q += 6;
        } else {
            *q++ = (char)*c;
        }
    }
    *q++ = '"';
    o->len += (size_t)(q - start);
}

void curvd_out_int(struct curvd_out *o, long long v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%lld", v);
    curvd_out_raw(o, b, (size_t)n);
}

void curvd_out_real(struct curvd_out *o, double x)
{
    char b[40];
    if (!isfinite(x)) {
        curvd_out_lit(o, "null");
        return;
    }
    size_t n = curvd_fmt_f64(b, x);
    b[n] = '\0';
    char *e = strchr(b, 'e');
    if (!e && !strchr(b, '.')) {
        memcpy(b + n, ".0", 3);
        n += 2;
    } else if (e) { /* "1e+20" -> "1e20", "1e-05" -> "1e-5" */
        char *to = e + 1 + (e[1] == '-'), *from = e + 1 + (e[1] == '-' || e[1] == '+');
        while (*from == '0' && from[1])
            from++;
        memmove(to, from, strlen(from) + 1);
        n = strlen(b);
    }
    curvd_out_raw(o, b, n);
}

/* Check before writing: a NaN or an overflowing float in an update is the
 * daemon's fault, not the client's. */
static int wire_values(const double *x, size_t n, int dtype, const char *name,
                       struct curvd_problem *p)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || (dtype == CURV_F32 && fabs(x[i]) >= CURVD_F32_LIMIT))
            return curvd_problem_set(p, CURVD_R_INTERNAL, "", NULL, NULL,
                                     "element %zu of block '%s' cannot be sent as %s", i, name,
                                     curvd_dtype_name(dtype));
    }
    return 0;
}

static void queue_tail(struct curvd_out *o, const double *x, size_t n, int dtype)
{
    if (o->nomem)
        return;
    if (o->ntail == o->cap_tail) {
        size_t cap = o->cap_tail ? 2 * o->cap_tail : 8;
        struct curvd_out_tail *t = realloc(o->tail, cap * sizeof *t);
        if (!t) {
            o->nomem = 1;
            return;
        }
        o->tail = t;
        o->cap_tail = cap;
    }
    o->tail[o->ntail++] = (struct curvd_out_tail){x, n, dtype};
}

/* Bytes around a tensor's name and data: keys, shape, datatype, braces. */
#define TENSOR_FRAME 160

/* The data (or parameters) member of one block's tensor object. */
static void block_data(struct curvd_out *o, const double *x, size_t n, int dtype,
                       enum curvd_encoding enc)
{
    char *q;
    if (enc == CURVD_ENC_BINARY) {
        curvd_out_lit(o, "\"parameters\":{\"binary_data_size\":");
        curvd_out_int(o, (long long)(n * curvd_dtype_size(dtype)));
        curvd_out_lit(o, "}");
        queue_tail(o, x, n, dtype);
    } else if (enc == CURVD_ENC_B64) {
        curvd_out_lit(o, "\"data\":{\"b64\":");
        if ((q = reserve(o, curvd_b64_bound(n, dtype))))
            o->len += curvd_render_b64(q, x, n, dtype);
        curvd_out_lit(o, "}");
    } else {
        curvd_out_lit(o, "\"data\":");
        if ((q = reserve(o, curvd_numbers_bound(n, dtype))))
            o->len += curvd_render_numbers(q, x, n, dtype);
    }
}

int curvd_out_tensors(struct curvd_out *o, const curv_layout *l, const double *flat, int dtype,
                      enum curvd_encoding enc, struct curvd_problem *p)
{
    size_t nb = curv_layout_nblocks(l), room = 2;
    for (size_t k = 0; k < nb; k++) {
        curv_block_info b;
        curv_layout_block(l, k, &b);
        if (wire_values(flat + b.offset, b.size, dtype, b.name, p))
            return -1;
        room += TENSOR_FRAME + 6 * strlen(b.name) +
                (enc == CURVD_ENC_BINARY ? 0
                 : enc == CURVD_ENC_B64  ? curvd_b64_bound(b.size, dtype)
                                         : curvd_numbers_bound(b.size, dtype));
    }
    /* One buffer of the final size: growing a large one by doubling would
     * copy or fault in its pages again at every doubling. */
    reserve(o, room);
    curvd_out_lit(o, "[");
    for (size_t k = 0; k < nb; k++) {
        curv_block_info b;
        size_t dims[2], nd;
        curv_layout_block(l, k, &b);
        nd = curvd_block_shape(&b, dims);
        if (k)
            curvd_out_lit(o, ",");
        curvd_out_lit(o, "{\"name\":");
        curvd_out_string(o, b.name);
        curvd_out_lit(o, ",\"shape\":[");
        for (size_t d = 0; d < nd; d++) {
            if (d)
                curvd_out_lit(o, ",");
            curvd_out_int(o, (long long)dims[d]);
        }
        curvd_out_lit(o, "],\"datatype\":\"");
        curvd_out_raw(o, curvd_dtype_name(dtype), 4);
        curvd_out_lit(o, "\",");
        block_data(o, flat + b.offset, b.size, dtype, enc);
        curvd_out_lit(o, "}");
    }
    curvd_out_lit(o, "]");
    return 0;
}

int curvd_out_finish(struct curvd_out *o, struct curvd_problem *p)
{
    size_t bytes = 0;
    o->json_len = o->len;
    for (size_t i = 0; i < o->ntail; i++)
        bytes += o->tail[i].n * curvd_dtype_size(o->tail[i].dtype);
    char *q = reserve(o, bytes ? bytes : 1); /* also room for a caller's NUL */
    if (!q)
        return curvd_problem_set(p, CURVD_R_NO_MEMORY, "", NULL, NULL, "out of memory");
    for (size_t i = 0; i < o->ntail; i++) {
        const struct curvd_out_tail *t = &o->tail[i];
        curvd_le_encode(t->x, t->n, t->dtype, (unsigned char *)q);
        q += t->n * curvd_dtype_size(t->dtype);
    }
    o->len += bytes;
    o->ntail = 0;
    return 0;
}

unsigned char *curvd_out_take(struct curvd_out *o)
{
    unsigned char *b = (unsigned char *)o->buf;
    free(o->tail);
    o->buf = NULL;
    o->tail = NULL;
    o->cap = o->ntail = o->cap_tail = 0;
    return b;
}
