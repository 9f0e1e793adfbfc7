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

/* Where a part of the blob starts (curv__w_part, curv__w_volatile). */
struct curv__w_mark {
    size_t pos;
    uint64_t stamp;
    int stable; /* 0: volatile (stamp 0), merged with a volatile part before it */
};

struct curv__writer {
    unsigned char *buf;
    size_t len, cap;
    int oom;                    /* an allocation failed; the blob is unusable */
    int framed;                 /* curv__w_frame() reserved the header at the start */
    struct curv__w_mark *marks; /* part boundaries after the first (volatile) part */
    size_t n_marks, marks_cap;
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

/*
 * Parts (curv_opt_save_parts): a blob starts with a volatile part, and
 * each mark starts a new one at the writer's position.
 *  - curv__w_part: the bytes up to the next mark are identified by @stamp:
 *    within one optimizer's history, two saves that mark the same part
 *    with the same nonzero stamp write the same bytes there. Build it with
 *    curv__stamp(). A stamp of 0 (a value too large) means "may have
 *    changed"; the part still stands alone, so that the division into
 *    parts depends on the layout and settings only, never on values.
 *  - curv__w_volatile: the bytes may change at any save (stamp 0); the
 *    part joins a volatile part just before it.
 * Empty parts are dropped; the frame's header and trailer are volatile.
 */
void curv__w_part(struct curv__writer *w, uint64_t stamp);
void curv__w_volatile(struct curv__writer *w);

/* What a stable part's stamp counts. A source keeps its meaning for good
 * (a new meaning takes a new number), so stamps written by different
 * library versions cannot match by accident. */
enum curv__stamp_src {
    CURV__STAMP_STEPS = 1,        /* completed steps of the optimizer */
    CURV__STAMP_KFAC_STATS = 2,   /* statistics updates folded into a K-FAC block */
    CURV__STAMP_KFAC_INV = 3,     /* the step of a K-FAC block's last inverse refresh */
    CURV__STAMP_KCHAIN_STATS = 4, /* statistics updates of a tridiagonal chain */
    CURV__STAMP_KCHAIN_SNAP = 5,  /* the refresh step of a chain's cross-factor snapshot */
    CURV__STAMP_KFAC_DEFER = 6    /* the step of a deferred K-FAC refresh's factor snapshot */
};

/* curv__stamp - (@src << 56) | (@value + 1); 0 when @value + 1 does not
 * fit in 56 bits. */
uint64_t curv__stamp(enum curv__stamp_src src, uint64_t value);

/* Frame the writer's payload: header + payload + CRC-32 trailer. On
 * success returns CURV_OK and hands over an owned blob (for a framed
 * writer, its own buffer: the writer is left empty) and, when @parts is
 * not NULL, the parts tiling it (*@parts owned, *@n_parts entries). */
curv_status curv__state_seal(struct curv__writer *w, unsigned char **blob, size_t *len,
                             curv_state_part **parts, size_t *n_parts, curv_error *err);

/* curv__w_release - free what the writer holds. */
void curv__w_release(struct curv__writer *w);

/* Check a blob's frame and position @r on its payload. CURV_E_CORRUPT for
 * bad magic, length or checksum; CURV_E_VERSION for a newer format. */
curv_status curv__state_open(const unsigned char *blob, size_t len, struct curv__reader *r,
                             curv_error *err);

/* CRC-32 (IEEE 802.3, reflected, as zlib computes it). */
uint32_t curv__crc32(uint32_t crc, const unsigned char *p, size_t n);

#endif
