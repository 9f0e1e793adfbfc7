/* SPDX-License-Identifier: MIT */
/* Tensor bytes and text: the binary extension's tail, little-endian
 * values, strict base64, and numbers or base64 rendered into a reply. */
#include "wire/tensor_bytes.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "wire/byte_order.h"
#include "wire/numtext.h"

int curvd_binary_init(struct curvd_binary *b, const void *body, size_t body_len, size_t json_len,
                      struct curvd_problem *p)
{
    if (json_len > body_len)
        return curvd_problem_set(p, CURVD_R_BAD_BINARY, "", NULL, NULL,
                                 "Inference-Header-Content-Length %zu exceeds the body's %zu bytes",
                                 json_len, body_len);
    b->base = (const unsigned char *)body + json_len;
    b->len = body_len - json_len;
    b->pos = 0;
    return 0;
}

int curvd_binary_finish(const struct curvd_binary *b, struct curvd_problem *p)
{
    if (b->pos == b->len)
        return 0;
    char got[40];
    snprintf(got, sizeof got, "%zu extra bytes", b->len - b->pos);
    return curvd_problem_set(p, CURVD_R_BAD_BINARY, "", "0 extra bytes", got,
                             "the binary part has %zu bytes no tensor claims", b->len - b->pos);
}

/* 1 when the bits @u of a float (a double) are NaN or an infinity: its
 * exponent bits all ones, the one case where adding 1 to the exponent
 * carries into the sign bit. Arithmetic rather than a comparison, so that
 * the loops that use it vectorize. */
static uint32_t f32_nonfinite(uint32_t u)
{
    return ((u & 0x7f800000u) + (1u << 23)) >> 31;
}

static uint64_t f64_nonfinite(uint64_t u)
{
    return ((u & 0x7ff0000000000000u) + ((uint64_t)1 << 52)) >> 63;
}

int curvd_le_decode(const unsigned char *b, size_t n, int dtype, double *out)
{
    uint64_t bad = 0;
    if (dtype == CURV_F32) {
        for (size_t i = 0; i < n; i++) {
            uint32_t u;
            float f;
            memcpy(&u, b + 4 * i, sizeof u);
            u = curvd_le32(u);
            bad |= f32_nonfinite(u);
            memcpy(&f, &u, sizeof f);
            out[i] = f;
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            uint64_t u;
            memcpy(&u, b + 8 * i, sizeof u);
            u = curvd_le64(u);
            bad |= f64_nonfinite(u);
            memcpy(&out[i], &u, sizeof u);
        }
    }
    return !bad;
}

int curvd_le_decode_f32(const unsigned char *b, size_t n, float *out)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, b + 4 * i, sizeof u);
        u = curvd_le32(u);
        bad |= (uint32_t)f32_nonfinite(u);
        memcpy(&out[i], &u, sizeof u);
    }
    return !bad;
}

void curvd_le_encode_f32(const float *x, size_t n, unsigned char *b)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], sizeof u);
        u = curvd_le32(u);
        memcpy(b + 4 * i, &u, sizeof u);
    }
}

void curvd_le_encode(const double *x, size_t n, int dtype, unsigned char *b)
{
    if (dtype == CURV_F32) {
        for (size_t i = 0; i < n; i++) {
            float f = (float)x[i];
            uint32_t u;
            memcpy(&u, &f, sizeof u);
            u = curvd_le32(u);
            memcpy(b + 4 * i, &u, sizeof u);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            uint64_t u;
            memcpy(&u, &x[i], sizeof u);
            u = curvd_le64(u);
            memcpy(b + 8 * i, &u, sizeof u);
        }
    }
}

/* Base64 digit values; -1 marks every byte outside A-Z a-z 0-9 + /. */
static const signed char b64_tab[256] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 62, -1, -1, -1, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, -1, -1, -1, -1, -1, -1, -1, 0,  1,  2,  3,  4,  5,  6,
    7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, -1, -1, -1, -1, -1,
    -1, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
    49, 50, 51, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
};

int curvd_b64_check(const char *s, size_t n, size_t want, const char *path, struct curvd_problem *p)
{
    char sub[160], w[40], got[40];
    size_t pad = 0;
    snprintf(sub, sizeof sub, "%s/data/b64", path);
    snprintf(w, sizeof w, "%zu bytes", want);
    if (n % 4)
        return curvd_problem_set(p, CURVD_R_BAD_BASE64, sub, "a multiple of 4 characters", NULL,
                                 "base64 text of %zu characters is not a multiple of 4", n);
    while (pad < 2 && pad < n && s[n - 1 - pad] == '=')
        pad++;
    snprintf(got, sizeof got, "%zu bytes", n / 4 * 3 - pad);
    if (n / 4 * 3 - pad != want)
        return curvd_problem_set(p, CURVD_R_BAD_BASE64, sub, w, got,
                                 "base64 data decodes to %s, the shape needs %s", got, w);
    return 0;
}

/* Strict RFC 4648 base64: '=' padding required, no whitespace, no URL-safe
 * alphabet, unused bits zero; so every byte string has one spelling. */
int curvd_b64_decode(const char *s, size_t n, unsigned char *out, size_t want, const char *path,
                     struct curvd_problem *p)
{
    char sub[160], got[40];
    size_t o = 0, pad = n && s[n - 1] == '=' ? 1 + (n > 1 && s[n - 2] == '=') : 0;
    if (curvd_b64_check(s, n, want, path, p))
        return -1;
    snprintf(sub, sizeof sub, "%s/data/b64", path);
    size_t full = (n - pad) / 4;
    for (size_t g = 0; g <= full; g++) {
        /* Groups of four digits; the last one is short by the padding. */
        const unsigned char *q = (const unsigned char *)s + 4 * g;
        size_t m = g < full ? 4 : (n - pad) % 4;
        uint32_t acc = 0;
        int bad = 0;
        for (size_t k = 0; k < m; k++) {
            int v = b64_tab[q[k]];
            bad |= v;
            acc = acc << 6 | (uint32_t)(v & 63);
        }
        if (bad < 0) {
            size_t k = 0;
            while (b64_tab[q[k]] >= 0)
                k++;
            snprintf(got, sizeof got, "0x%02x", q[k]);
            return curvd_problem_set(p, CURVD_R_BAD_BASE64, sub, "A-Z a-z 0-9 + /", got,
                                     "invalid base64 character %s at offset %zu", got, 4 * g + k);
        }
        if (m == 4) {
            out[o++] = (unsigned char)(acc >> 16);
            out[o++] = (unsigned char)(acc >> 8);
            out[o++] = (unsigned char)acc;
            continue;
        }
        if ((m == 3 && (acc & 3)) || (m == 2 && (acc & 15)))
            return curvd_problem_set(p, CURVD_R_BAD_BASE64, sub, "zero padding bits", NULL,
                                     "base64 padding bits are not zero at offset %zu",
                                     4 * g + m - 1);
        acc <<= 6 * (4 - m);
        for (size_t k = 0; k + 1 < m; k++)
            out[o++] = (unsigned char)(acc >> (16 - 8 * k));
    }
    return 0;
}

size_t curvd_numbers_bound(size_t n, int dtype)
{
    size_t per = (dtype == CURV_F32 ? CURVD_F32_CHARS : CURVD_F64_CHARS) + 1;
    return n <= (SIZE_MAX - 2) / per ? n * per + 2 : SIZE_MAX;
}

size_t curvd_render_numbers(char *dst, const double *x, size_t n, int dtype)
{
    char *q = dst;
    *q++ = '[';
    for (size_t i = 0; i < n; i++) {
        if (i)
            *q++ = ',';
        q += dtype == CURV_F32 ? curvd_fmt_f32(q, (float)x[i]) : curvd_fmt_f64(q, x[i]);
    }
    *q++ = ']';
    return (size_t)(q - dst);
}

size_t curvd_b64_bound(size_t n, int dtype)
{
    size_t bytes = n * (dtype == CURV_F32 ? 4u : 8u);
    return n <= SIZE_MAX / 16 ? (bytes + 2) / 3 * 4 + 2 : SIZE_MAX;
}

/* The little-endian bytes go through a stack buffer whose size is a
 * multiple of 3 (whole base64 groups) and of 8 (whole values). */
size_t curvd_render_b64(char *dst, const double *x, size_t n, int dtype)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char b[768];
    size_t per = dtype == CURV_F32 ? 4u : 8u, chunk = sizeof b / per, k = 0;
    dst[k++] = '"';
    for (size_t at = 0; at < n; at += chunk) {
        size_t m = n - at < chunk ? n - at : chunk, bytes = m * per, i;
        curvd_le_encode(x + at, m, dtype, b);
        for (i = 0; i + 2 < bytes; i += 3) {
            uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
            for (int j = 18; j >= 0; j -= 6)
                dst[k++] = alpha[(v >> j) & 63];
        }
        if (i < bytes) { /* only in the last chunk */
            uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < bytes ? (uint32_t)b[i + 1] << 8 : 0);
            dst[k++] = alpha[v >> 18];
            dst[k++] = alpha[(v >> 12) & 63];
            dst[k++] = i + 1 < bytes ? alpha[(v >> 6) & 63] : '=';
            dst[k++] = '=';
        }
    }
    dst[k++] = '"';
    return k;
}
