/* SPDX-License-Identifier: MIT */
/*
 * out - a response body written front to back into one buffer: compact
 * JSON, then (binary extension) the raw little-endian tensor bytes, which
 * the reply and the stored step share without a copy.
 *
 * Why not a jansson tree: a step reply built as a tree cost about 90
 * allocations and a dump-and-splice pass; written directly it costs a few
 * buffer doublings, and the numbers are formatted straight into place.
 *
 * Errors: the writers return nothing; after a failed allocation every
 * later write is a no-op and curvd_out_finish() reports NO_MEMORY. Only
 * curvd_out_tensors() can refuse its input (a value the wire type cannot
 * carry), and says so at once.
 *
 * Thread-safety: none inside; one object per thread at a time.
 */
#ifndef CURVD_OUT_H
#define CURVD_OUT_H

#include <stddef.h>

#include "curv.h"
#include "wire/codec.h"

/*
 * struct curvd_out - a body being written.
 * @buf, @len:  the bytes so far; after curvd_out_finish() the whole body.
 * @json_len:   after curvd_out_finish(): the bytes of JSON before the
 *              binary tail (the Inference-Header-Content-Length when
 *              @len > @json_len).
 * Everything else is private.
 * Ownership: caller-allocated; curvd_out_init(), then curvd_out_clear()
 * (or curvd_out_take() to keep the buffer).
 */
struct curvd_out {
    char *buf;
    size_t len, json_len;
    /* private */
    size_t cap;
    struct curvd_out_tail {
        const double *x;
        size_t n;
        int dtype;
    } * tail;
    size_t ntail, cap_tail;
    int nomem;
};

void curvd_out_init(struct curvd_out *o);
/* curvd_out_clear - release everything @o owns and re-initialise it. */
void curvd_out_clear(struct curvd_out *o);

/* curvd_out_raw - append @n bytes of ready JSON text; curvd_out_lit - the
 * same for a string literal. */
void curvd_out_raw(struct curvd_out *o, const char *s, size_t n);
#define curvd_out_lit(o, s) curvd_out_raw((o), "" s, sizeof(s) - 1)

/* curvd_out_string - @s (UTF-8, NUL-terminated) as a quoted JSON string,
 * escaped as jansson escapes: '"', '\\' and control characters. */
void curvd_out_string(struct curvd_out *o, const char *s);

/* curvd_out_int - @v in decimal. */
void curvd_out_int(struct curvd_out *o, long long v);

/* curvd_out_real - finite @x spelled as jansson spells a real (17
 * significant digits, always a '.' or an exponent, no '+' or leading zeros
 * in the exponent), so that it reads back as the same double and as a
 * real; a non-finite @x, which JSON cannot carry, is written as null. */
void curvd_out_real(struct curvd_out *o, double x);

/*
 * curvd_out_tensors - @flat as a JSON array with one tensor object per
 * block of @l, in layout order: name, shape ([n] for a vector, [rows,
 * cols] for a matrix, as curvd_tensors_to_flat() reads them), datatype
 * @dtype, and the data in encoding @enc: JSON numbers (FP32 with 9
 * significant digits, FP64 with 17; both round-trip), {"b64": ...}, or
 * parameters.binary_data_size with the bytes queued for the binary tail,
 * which curvd_out_finish() appends (so @flat must live until then).
 * Return 0; -1 with @p: INTERNAL (a non-finite value, or for FP32 one
 * beyond float range: the daemon's fault, not the client's), and nothing
 * written.
 */
int curvd_out_tensors(struct curvd_out *o, const curv_layout *l, const double *flat, int dtype,
                      enum curvd_encoding enc, struct curvd_problem *p);

/* curvd_out_finish - end the JSON (@json_len) and append the queued binary
 * data. Return 0; -1 with @p: NO_MEMORY (some write failed). */
int curvd_out_finish(struct curvd_out *o, struct curvd_problem *p);

/* curvd_out_take - hand over the finished body (@o->len bytes; the caller
 * releases it with curvd_mem_free); @o keeps @len and @json_len and owns
 * nothing. */
unsigned char *curvd_out_take(struct curvd_out *o);

#endif
