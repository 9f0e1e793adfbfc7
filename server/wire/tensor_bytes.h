/* SPDX-License-Identifier: MIT */
/* Tensor bytes and text (tensor_bytes.c); the binary tail's reader,
 * struct curvd_binary, is declared in codec.h with the tensors. */
#ifndef CURVD_TENSOR_BYTES_H
#define CURVD_TENSOR_BYTES_H

#include <stddef.h>

#include "wire/codec.h"

/* curvd_le_decode / _encode - @n values of @dtype (CURV_F32 or CURV_F64) as
 * little-endian bytes <-> doubles, whatever the host's byte order.
 * curvd_le_decode returns 1 when every value is finite, 0 when one is NaN
 * or an infinity (all @n are decoded either way). */
int curvd_le_decode(const unsigned char *b, size_t n, int dtype, double *out);
void curvd_le_encode(const double *x, size_t n, int dtype, unsigned char *b);
/* The same for FP32 values kept as floats. */
int curvd_le_decode_f32(const unsigned char *b, size_t n, float *out);
void curvd_le_encode_f32(const float *x, size_t n, unsigned char *b);

/*
 * curvd_b64_decode - strict base64 of exactly @want bytes into @out.
 * Errors (BAD_BASE64, path @path + "/data/b64"): length not a multiple of
 * 4, decoded length != @want, a character outside A-Z a-z 0-9 + / (also
 * '=' before the end, whitespace, URL-safe '-' '_'), non-zero pad bits.
 * The length is checked before any character, so a wrong-sized payload
 * costs nothing to refuse. Return 0 or -1.
 */
int curvd_b64_decode(const char *s, size_t n, unsigned char *out, size_t want, const char *path,
                     struct curvd_problem *p);

/* curvd_b64_check - only the length checks of curvd_b64_decode(), so that
 * a caller can refuse a wrong-sized payload before allocating for it. */
int curvd_b64_check(const char *s, size_t n, size_t want, const char *path,
                    struct curvd_problem *p);

/* curvd_render_numbers - "[x0,x1,...]" (FP32: 9 digits, FP64: 17), or
 * curvd_render_b64 - the quoted base64 of the little-endian bytes, into
 * @dst, which has room for curvd_numbers_bound() / curvd_b64_bound()
 * bytes (SIZE_MAX when that overflows). Return the bytes written (no NUL). */
size_t curvd_numbers_bound(size_t n, int dtype);
size_t curvd_render_numbers(char *dst, const double *x, size_t n, int dtype);
size_t curvd_b64_bound(size_t n, int dtype);
size_t curvd_render_b64(char *dst, const double *x, size_t n, int dtype);

#endif
