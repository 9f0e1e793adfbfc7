/* SPDX-License-Identifier: MIT */
/*
 * Numbers as JSON text. Reading: Clinger's fast path, then x87 extended
 * precision, then strtod() on the exact digits. Writing: floats with their
 * own nine-digit formatter; doubles through extended precision with a
 * guard band around rounding ties, printf only inside it.
 */
#include "wire/numtext.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Exactly representable up to 1e22; the rest are the nearest doubles. */
static const double pow10_tab[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31,
    1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39, 1e40, 1e41, 1e42, 1e43, 1e44, 1e45, 1e46, 1e47,
    1e48, 1e49, 1e50, 1e51, 1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59, 1e60, 1e61, 1e62, 1e63};

/* Significant digits the slow path hands strtod(): 767 decide the rounding
 * of any decimal, and a sticky digit stands for everything dropped. */
#define SLOW_DIGITS 780
/* Exponents are clamped here; beyond it every value is 0 or infinite. */
#define EXP_CAP 1000000000000LL

/* Characters that, right after a number, make it one malformed token
 * ("01", "1.2.3", "0x10", "12abc") rather than a number and junk. */
static int is_num_tail(char c)
{
    return curvd_is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
           c == '+' || c == '-';
}

/*
 * The exact value as decimal digits with no decimal point, then strtod().
 * Leaving the point out keeps the conversion independent of LC_NUMERIC,
 * and strtod() rounds correctly where the fast path cannot.
 */
static double slow_number(const char *s, size_t mant_end, long long expo)
{
    char buf[SLOW_DIGITS + 32];
    size_t k = 0;
    long long e = expo;
    int seen = 0, frac = 0, sticky = 0;
    for (size_t j = 0; j < mant_end; j++) {
        char c = s[j];
        if (c == '.') {
            frac = 1;
        } else if (!seen && c == '0') {
            e -= frac;
        } else if (k < SLOW_DIGITS) {
            seen = 1;
            buf[k++] = c;
            e -= frac;
        } else {
            sticky |= c != '0';
            e += !frac;
        }
    }
    if (sticky) {
        buf[k++] = '1';
        e--;
    }
    snprintf(buf + k, sizeof buf - k, "e%lld", e);
    return strtod(buf, NULL);
}

#if LDBL_MANT_DIG >= 64
/* 10^0 .. 10^27: 5^27 < 2^63, so every one is exact in 64 bits. */
#define POW10_EXACT 27
static const long double pow10_ld[POW10_EXACT + 1] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
#endif

#if LDBL_MANT_DIG == 64 && (defined(__x86_64__) || defined(__i386__))
/* x87 extended precision holds any 19-digit mantissa and 10^k up to 10^27
 * exactly, so m * 10^k (or m / 10^k) is one correctly rounded operation to
 * 64 bits. Rounding that to 53 bits again is correct unless the 64-bit
 * result lies exactly on a midpoint between two doubles (the low 11 of its
 * 64 significand bits are 10000000000): only then can the first rounding
 * have decided the second, and strtod() must settle it. This covers the
 * 17-digit numbers that "%.17g" writes, which the Clinger path cannot. */
#define HAVE_EXTENDED 1

static int extended_number(uint64_t m, long long e10, double *out)
{
    long double r = e10 >= 0 ? (long double)m * pow10_ld[e10] : (long double)m / pow10_ld[-e10];
    uint64_t sig;
    memcpy(&sig, &r, sizeof sig); /* the explicit 64-bit significand comes first */
    if ((sig & 0x7ff) == 0x400)
        return 0;
    *out = (double)r;
    return 1;
}
#endif

int curvd_scan_number(const char *s, size_t n, size_t *used, double *out)
{
    size_t i = 0, start, mant_end;
    int neg = 0, nd = 0, lost = 0;
    uint64_t m = 0;
    long long e10 = 0, expo = 0;
    if (i < n && s[i] == '-') {
        neg = 1;
        i++;
    }
    start = i;
    if (i >= n || !curvd_is_digit(s[i]))
        goto bad;
    /* Up to 19 significant digits go into m; later ones only move the
     * exponent (integer part) or are dropped (fraction). */
    for (int frac = 0; i < n; i++) {
        if (s[i] == '.' && !frac) {
            if (i + 1 >= n || !curvd_is_digit(s[i + 1]))
                goto bad;
            frac = 1;
            continue;
        }
        if (!curvd_is_digit(s[i]) || (i == start + 1 && s[start] == '0' && !frac))
            break;
        int d = s[i] - '0';
        if (nd == 0 && d == 0) {
            e10 -= frac;
        } else if (nd < 19) {
            m = m * 10 + (uint64_t)d;
            nd++;
            e10 -= frac;
        } else {
            lost = 1;
            e10 += !frac;
        }
    }
    mant_end = i;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        int eneg = 0;
        if (++i < n && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i >= n || !curvd_is_digit(s[i]))
            goto bad;
        for (; i < n && curvd_is_digit(s[i]); i++)
            if (expo < EXP_CAP)
                expo = expo * 10 + (s[i] - '0');
        expo = eneg ? -expo : expo;
    }
    if (i < n && is_num_tail(s[i]))
        goto bad;
    *used = i;
    e10 += expo;
    double v;
    if (m == 0) {
        v = 0.0;
    } else if (!lost && m <= (UINT64_C(1) << 53) && e10 >= -22 && e10 <= 22) {
        /* Clinger's fast path: m and 10^|e10| are exact doubles, so one
         * correctly rounded operation gives the correctly rounded value. */
        v = (double)m;
        v = e10 >= 0 ? v * pow10_tab[e10] : v / pow10_tab[-e10];
#ifdef HAVE_EXTENDED
    } else if (!lost && e10 >= -27 && e10 <= 27 && extended_number(m, e10, &v)) {
        /* v is set */
#endif
    } else {
        v = slow_number(s + start, mant_end - start, expo);
    }
    *out = neg ? -v : v;
    return 0;
bad:
    while (i < n && is_num_tail(s[i]))
        i++;
    *used = i;
    return -1;
}

/* 10^-k as the nearest doubles (what the compiler makes of each literal). */
static const double pow10_neg[] = {
    1e-0,  1e-1,  1e-2,  1e-3,  1e-4,  1e-5,  1e-6,  1e-7,  1e-8,  1e-9,  1e-10, 1e-11,
    1e-12, 1e-13, 1e-14, 1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22, 1e-23,
    1e-24, 1e-25, 1e-26, 1e-27, 1e-28, 1e-29, 1e-30, 1e-31, 1e-32, 1e-33, 1e-34, 1e-35,
    1e-36, 1e-37, 1e-38, 1e-39, 1e-40, 1e-41, 1e-42, 1e-43, 1e-44, 1e-45, 1e-46, 1e-47};

/* Nine digits of x > 0 as an integer in [1e8, 1e9), with *k its decimal
 * exponent. Double arithmetic is exact to ~2e-16 here, far inside the
 * 3e-8 relative half-ulp of a float, so the digits always read back as
 * the same float (they may differ from printf in the last digit on ties).
 * The binary exponent gives k or k - 1 without a logarithm; one comparison
 * with 10^(k+1) settles which. */
static uint32_t nine_digits(double x, int *k)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int e2 =
        (int)((bits >> 52) & 0x7ff) - 1023; /* x in [2^e2, 2^(e2+1)): floats are normal doubles */
    int e = (e2 * 1233) >> 12;              /* floor(e2 * log10(2)): k or k - 1 */
    if (x >= (e + 1 >= 0 ? pow10_tab[e + 1] : pow10_neg[-(e + 1)]))
        e++;
    for (;;) { /* corrects e should the bound have misjudged */
        int sc = 8 - e;
        double y = sc >= 0 ? x * pow10_tab[sc] : x / pow10_tab[-sc];
        if (y < 1e8) {
            e--;
            continue;
        }
        uint64_t d = (uint64_t)(y + 0.5);
        if (d >= 1000000000u) {
            if (y >= 1e9) {
                e++;
                continue;
            }
            d = 100000000u; /* rounded up to the next power of ten */
            e++;
        }
        *k = e;
        return (uint32_t)d;
    }
}

static const char digit_pairs[201] = "00010203040506070809101112131415161718192021222324"
                                     "25262728293031323334353637383940414243444546474849"
                                     "50515253545556575859606162636465666768697071727374"
                                     "75767778798081828384858687888990919293949596979899";

/* Write the 9 digits of @d (1e8 <= d < 1e9) into @dig. */
static void put_nine(char dig[9], uint32_t d)
{
    uint32_t hi = d / 10000, lo = d % 10000;
    dig[0] = (char)('0' + hi / 10000);
    hi %= 10000;
    memcpy(dig + 1, digit_pairs + 2 * (hi / 100), 2);
    memcpy(dig + 3, digit_pairs + 2 * (hi % 100), 2);
    memcpy(dig + 5, digit_pairs + 2 * (lo / 100), 2);
    memcpy(dig + 7, digit_pairs + 2 * (lo % 100), 2);
}

/* Lay out the significant digits dig[0..nd) (no trailing zeros) of a value
 * d.ddd x 10^k as printf's "%.<prec>g" does: fixed notation for exponents
 * -4 .. prec-1, else d.ddde+XX. Returns the end. */
static char *put_g(char *p, const char *dig, int nd, int k, int prec)
{
    if (k >= 0 && k < prec) {
        for (int i = 0; i <= k; i++)
            *p++ = i < nd ? dig[i] : '0';
        if (nd > k + 1)
            *p++ = '.';
        for (int i = k + 1; i < nd; i++)
            *p++ = dig[i];
        return p;
    }
    if (k < 0 && k >= -4) {
        *p++ = '0';
        *p++ = '.';
        for (int i = -1; i > k; i--)
            *p++ = '0';
        memcpy(p, dig, (size_t)nd);
        return p + nd;
    }
    *p++ = dig[0];
    if (nd > 1)
        *p++ = '.';
    for (int i = 1; i < nd; i++)
        *p++ = dig[i];
    *p++ = 'e';
    *p++ = k < 0 ? '-' : '+';
    k = k < 0 ? -k : k;
    if (k >= 100) {
        *p++ = (char)('0' + k / 100);
        k %= 100;
    }
    memcpy(p, digit_pairs + 2 * k, 2);
    return p + 2;
}

size_t curvd_fmt_f32(char *buf, float f)
{
    double x = f;
    char *p = buf, dig[9];
    int k, nd = 9;
    if (signbit(x)) {
        *p++ = '-';
        x = -x;
    }
    if (x == 0) {
        *p++ = '0';
        return (size_t)(p - buf);
    }
    put_nine(dig, nine_digits(x, &k));
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    return (size_t)(put_g(p, dig, nd, k, 9) - buf);
}

static size_t fmt_f64_printf(char *buf, double x)
{
    int n = snprintf(buf, CURVD_F64_CHARS + 1, "%.17g", x);
    return n > 0 ? (size_t)n : 0;
}

#if LDBL_MANT_DIG >= 64
/* 10^(27 m) for m = -11 .. 12, each the nearest long double: with
 * pow10_ld they reach every 10^j that 17 digits of a double need
 * (j = 16 - k for decimal exponents k in -324 .. 308). */
#define POW10_COARSE_MIN (-11)
static const long double pow10_coarse[] = {1e-297L, 1e-270L, 1e-243L, 1e-216L, 1e-189L, 1e-162L,
                                           1e-135L, 1e-108L, 1e-81L,  1e-54L,  1e-27L,  1e0L,
                                           1e27L,   1e54L,   1e81L,   1e108L,  1e135L,  1e162L,
                                           1e189L,  1e216L,  1e243L,  1e270L,  1e297L,  1e324L};

/* x * 10^j in extended precision, and how far from the exact product it
 * may be, in units of the result's integer part (for results < 2^57).
 * Each rounding to 64 bits errs by at most 2^-64 relative, which at 1e17
 * is 0.0054: one rounding with an exact power, three with a coarse one. */
static long double scale10(double x, int j, long double *err)
{
    if (j >= 0 && j <= POW10_EXACT) {
        *err = 1.0L / 128;
        return x * pow10_ld[j];
    }
    int m = (j >= 0 ? j : j - 26) / 27; /* floor(j / 27) */
    *err = 1.0L / 32;
    return (x * pow10_coarse[m - POW10_COARSE_MIN]) * pow10_ld[j - 27 * m];
}

/* The 17 significant digits of finite x > 0, correctly rounded, as an
 * integer in [1e16, 1e17), with *k the decimal exponent; 0 when the
 * extended product lies too near a rounding tie (or a power of ten it did
 * not expect) to decide, and printf must. */
static uint64_t seventeen_digits(double x, int *k)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int e2 = (int)(bits >> 52); /* x in [2^(e2-1), 2^e2) ... */
    if (e2 == 0)
        frexp(x, &e2); /* ... subnormals need the library */
    else
        e2 -= 1022;
    int e = ((e2 - 1) * 1233) >> 12; /* floor((e2-1) log10 2): k, k - 1 or rarely k - 2 */
    long double err, y = scale10(x, 16 - e, &err);
    if (y >= 1e17L) {
        e++;
        y = scale10(x, 16 - e, &err);
    }
    if (y < 1e16L - 0.5L || y >= 1e17L)
        return 0;
    int64_t whole = (int64_t)y; /* y < 2^57 */
    long double frac = y - (long double)whole;
    if (fabsl(frac - 0.5L) < err)
        return 0;
    uint64_t d = (uint64_t)whole + (frac > 0.5L);
    if (d == UINT64_C(100000000000000000)) { /* rounded up to the next power of ten */
        d = UINT64_C(10000000000000000);
        e++;
    }
    *k = e;
    return d;
}
#endif

size_t curvd_fmt_f64(char *buf, double x)
{
#if LDBL_MANT_DIG >= 64
    char *p = buf, dig[17];
    double a = fabs(x);
    int k, nd = 17;
    uint64_t d = a > 0 ? seventeen_digits(a, &k) : 0;
    if (d == 0)
        return fmt_f64_printf(buf, x); /* zeros, ties and the unexpected */
    if (signbit(x))
        *p++ = '-';
    put_nine(dig, (uint32_t)(d / 100000000u));
    uint32_t lo = (uint32_t)(d % 100000000u);
    for (int i = 15; i >= 9; i -= 2, lo /= 100)
        memcpy(dig + i, digit_pairs + 2 * (lo % 100), 2);
    while (nd > 1 && dig[nd - 1] == '0')
        nd--;
    return (size_t)(put_g(p, dig, nd, k, 17) - buf);
#else
    return fmt_f64_printf(buf, x);
#endif
}
