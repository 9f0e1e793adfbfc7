/* SPDX-License-Identifier: MIT */
/*
 * numtext - JSON numbers read and written without jansson or stdio: the
 * codec's per-value work for tensors in plain JSON, so it must be fast
 * (tens of nanoseconds a number) and exact (correctly rounded both ways).
 */
#ifndef CURVD_NUMTEXT_H
#define CURVD_NUMTEXT_H

#include <stddef.h>

static inline int curvd_is_digit(char c)
{
    return (unsigned char)(c - '0') < 10u;
}

/*
 * curvd_scan_number - read one JSON number at the start of @s (@n bytes).
 * Return: 0 with *@used bytes consumed and *@out its nearest double (±inf
 * when it overflows); -1 when the text there is not a JSON number or runs on
 * into number characters (01, 1.2.3, 1e5e); *@used then spans the run of
 * number characters, for the error message.
 */
int curvd_scan_number(const char *s, size_t n, size_t *used, double *out);

/* Longest text the writers produce, without a NUL. */
#define CURVD_F32_CHARS 15
#define CURVD_F64_CHARS 24

/* curvd_fmt_f32 - write finite @f with 9 significant digits (enough to read
 * back the same float), no NUL; returns the length. */
size_t curvd_fmt_f32(char *buf, float f);

/* curvd_fmt_f64 - write finite @x exactly as printf's "%.17g" does (17
 * significant digits always read back as the same double), no NUL; returns
 * the length. */
size_t curvd_fmt_f64(char *buf, double x);

#endif
