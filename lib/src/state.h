/* SPDX-License-Identifier: MIT */
/*
 * Portable binary state: a growable little-endian writer and a
 * bounds-checked reader. The reader never reads past its end; any overrun
 * sets `bad`, later reads return zeros, and the caller reports
 * CURV_E_CORRUPT once at the end. Framing (magic, version, length, CRC) is
 * in curv__state_seal()/curv__state_open().
 */
#ifndef CURV_STATE_H
#define CURV_STATE_H

#include "internal.h"

struct curv__writer {
    unsigned char *buf;
    size_t len, cap;
    int oom;    /* an allocation failed; the blob is unusable */
    int framed; /* curv__w_frame() reserved the header at the start */
};

struct curv__reader {
    const unsigned char *p;
    size_t len, pos;
    int bad; /* overrun or invalid content seen */
};

void curv__w_u32(struct curv__writer *w, uint32_t v);
void curv__w_u64(struct curv__writer *w, uint64_t v);
void curv__w_f64(struct curv__writer *w, double v);
void curv__w_f64s(struct curv__writer *w, const double *v, size_t n);
void curv__w_str(struct curv__writer *w, const char *s);

uint32_t curv__r_u32(struct curv__reader *r);
uint64_t curv__r_u64(struct curv__reader *r);
double curv__r_f64(struct curv__reader *r);
/* Reads n doubles into v; on overrun v is zero-filled and r->bad is set. */
void curv__r_f64s(struct curv__reader *r, double *v, size_t n);
/* Reads a string into buf (cap bytes with the NUL); too long sets bad. */
void curv__r_str(struct curv__reader *r, char *buf, size_t cap);
/* Bytes left; use before trusting a count read from the blob. */
size_t curv__r_left(const struct curv__reader *r);

/* Reserve the frame's header at the start of an empty writer, so that
 * curv__state_seal() can hand the buffer over without copying the payload. */
void curv__w_frame(struct curv__writer *w);
/* curv__w_hint - make room for @bytes in one allocation, so a large state
 * is not copied once per doubling; failing marks the writer out of memory. */
void curv__w_hint(struct curv__writer *w, size_t bytes);

/* Frame the writer's payload: header + payload + CRC-32 trailer. On
 * success returns CURV_OK and hands over an owned blob (for a framed
 * writer, its own buffer: the writer is left empty). */
curv_status curv__state_seal(struct curv__writer *w, unsigned char **blob, size_t *len,
                             curv_error *err);

/* Check a blob's frame and position @r on its payload. CURV_E_CORRUPT for
 * bad magic, length or checksum; CURV_E_VERSION for a newer format. */
curv_status curv__state_open(const unsigned char *blob, size_t len, struct curv__reader *r,
                             curv_error *err);

/* CRC-32 (IEEE 802.3, reflected, as zlib computes it). */
uint32_t curv__crc32(uint32_t crc, const unsigned char *p, size_t n);

#endif
