/* SPDX-License-Identifier: MIT */
/* Little-endian words on any host: a plain move on little-endian ones, a
 * byte swap on big-endian ones, so that loops over many values compile to
 * whole-word (and vector) loads and stores rather than bytes. */
#ifndef CURVD_BYTE_ORDER_H
#define CURVD_BYTE_ORDER_H

#include <stdint.h>

/* curvd_le64 / curvd_le32 - @v from host order to little-endian and back
 * (the same swap both ways). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
static inline uint64_t curvd_le64(uint64_t v)
{
    return __builtin_bswap64(v);
}
static inline uint32_t curvd_le32(uint32_t v)
{
    return __builtin_bswap32(v);
}
#else
static inline uint64_t curvd_le64(uint64_t v)
{
    return v;
}
static inline uint32_t curvd_le32(uint32_t v)
{
    return v;
}
#endif

#endif
