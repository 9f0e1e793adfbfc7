/* SPDX-License-Identifier: MIT */
/*
 * Blob format (all integers little-endian):
 *   offset 0   8 bytes  magic "CURVSTAT"
 *          8   u32      format version (CURV__STATE_VERSION)
 *         12   u32      flags, must be 0
 *         16   u64      payload length n
 *         24   n bytes  payload (written by opt.c and the optimizers)
 *       24+n   u32      CRC-32 of bytes [0, 24+n)
 * The CRC covers the header too, so any flipped byte is caught before a
 * single field is trusted; the version is checked only after the CRC, so a
 * damaged version reads as corruption, not as "too new".
 */
#include <stdlib.h>
#include <string.h>

#include "crc32_tables.h"
#include "state.h"

#define CURV__STATE_VERSION 1u
#define HEADER_LEN 24u
#define TRAILER_LEN 4u
static const unsigned char MAGIC[8] = {'C', 'U', 'R', 'V', 'S', 'T', 'A', 'T'};

static int reserve(struct curv__writer *w, size_t extra)
{
    if (w->oom)
        return 0;
    if (extra <= w->cap - w->len)
        return 1;
    size_t cap = w->cap ? w->cap : 256;
    while (cap - w->len < extra) {
        if (cap > SIZE_MAX / 2) {
            w->oom = 1;
            return 0;
        }
        cap *= 2;
    }
    unsigned char *nb = realloc(w->buf, cap);
    if (!nb) {
        w->oom = 1;
        return 0;
    }
    w->buf = nb;
    w->cap = cap;
    return 1;
}

static void put_le(unsigned char *p, uint64_t v, unsigned nbytes)
{
    for (unsigned i = 0; i < nbytes; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, unsigned nbytes)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < nbytes; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void w_le(struct curv__writer *w, uint64_t v, unsigned nbytes)
{
    if (!reserve(w, nbytes))
        return;
    put_le(w->buf + w->len, v, nbytes);
    w->len += nbytes;
}

static uint64_t f64_bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return u;
}

void curv__w_u32(struct curv__writer *w, uint32_t v)
{
    w_le(w, v, 4);
}

void curv__w_u64(struct curv__writer *w, uint64_t v)
{
    w_le(w, v, 8);
}

void curv__w_f64(struct curv__writer *w, double v)
{
    w_le(w, f64_bits(v), 8);
}

/* The blob is little-endian; a little-endian host copies arrays as they are. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define CURV__HOST_LE 1
#else
#define CURV__HOST_LE 0
#endif

void curv__w_f64s(struct curv__writer *w, const double *v, size_t n)
{
    size_t bytes;
    if (!curv__mul_ok(n, 8, &bytes)) {
        w->oom = 1;
        return;
    }
    if (!reserve(w, bytes))
        return;
    if (CURV__HOST_LE && bytes)
        memcpy(w->buf + w->len, v, bytes);
    else
        for (size_t i = 0; i < n; i++)
            put_le(w->buf + w->len + 8 * i, f64_bits(v[i]), 8);
    w->len += bytes;
}

void curv__w_str(struct curv__writer *w, const char *s)
{
    size_t n = strlen(s);
    curv__w_u32(w, (uint32_t)n);
    if (!reserve(w, n))
        return;
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

size_t curv__r_left(const struct curv__reader *r)
{
    return r->bad ? 0 : r->len - r->pos;
}

static const unsigned char *r_take(struct curv__reader *r, size_t n)
{
    if (r->bad || n > r->len - r->pos) {
        r->bad = 1;
        return NULL;
    }
    const unsigned char *p = r->p + r->pos;
    r->pos += n;
    return p;
}

uint32_t curv__r_u32(struct curv__reader *r)
{
    const unsigned char *p = r_take(r, 4);
    return p ? (uint32_t)get_le(p, 4) : 0;
}

uint64_t curv__r_u64(struct curv__reader *r)
{
    const unsigned char *p = r_take(r, 8);
    return p ? get_le(p, 8) : 0;
}

double curv__r_f64(struct curv__reader *r)
{
    const unsigned char *p = r_take(r, 8);
    uint64_t u = p ? get_le(p, 8) : 0;
    double v;
    memcpy(&v, &u, sizeof v);
    return v;
}

void curv__r_f64s(struct curv__reader *r, double *v, size_t n)
{
    size_t bytes;
    const unsigned char *p = curv__mul_ok(n, 8, &bytes) ? r_take(r, bytes) : NULL;
    if (!p) {
        r->bad = 1;
        memset(v, 0, n * sizeof *v);
        return;
    }
    if (CURV__HOST_LE && n) {
        memcpy(v, p, n * sizeof *v);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t u = get_le(p + 8 * i, 8);
        memcpy(&v[i], &u, sizeof v[i]);
    }
}

void curv__r_str(struct curv__reader *r, char *buf, size_t cap)
{
    uint32_t n = curv__r_u32(r);
    const unsigned char *p = n < cap ? r_take(r, n) : NULL;
    if (!p) {
        r->bad = 1;
        buf[0] = '\0';
        return;
    }
    memcpy(buf, p, n);
    buf[n] = '\0';
}

/* CRC-32 (IEEE), slicing by 8: eight table lookups per 8 bytes instead of
 * one per byte; the tables are constants (scripts/gen-crc32-tables). */
uint32_t curv__crc32(uint32_t crc, const unsigned char *p, size_t n)
{
    const uint32_t(*t)[256] = curv__crc32_t;
    crc = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        crc = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^
              t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    }
    while (n--)
        crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

void curv__w_hint(struct curv__writer *w, size_t bytes)
{
    if (w->oom || bytes <= w->cap)
        return;
    unsigned char *nb = realloc(w->buf, bytes);
    if (!nb) {
        w->oom = 1; /* the blob would not fit either */
        return;
    }
    w->buf = nb;
    w->cap = bytes;
}

void curv__w_frame(struct curv__writer *w)
{
    if (reserve(w, HEADER_LEN)) {
        memset(w->buf + w->len, 0, HEADER_LEN);
        w->len += HEADER_LEN;
        w->framed = 1;
    }
}

/* Fill the header and trailer of @buf (total bytes, payload after the header). */
static void frame(unsigned char *buf, size_t total)
{
    size_t payload = total - HEADER_LEN - TRAILER_LEN;
    memcpy(buf, MAGIC, 8);
    put_le(buf + 8, CURV__STATE_VERSION, 4);
    put_le(buf + 12, 0, 4);
    put_le(buf + 16, payload, 8);
    put_le(buf + HEADER_LEN + payload, curv__crc32(0, buf, HEADER_LEN + payload), 4);
}

curv_status curv__state_seal(struct curv__writer *w, unsigned char **blob, size_t *len,
                             curv_error *err)
{
    if (w->framed) { /* the header is already in place: no copy */
        if (!w->oom && reserve(w, TRAILER_LEN)) {
            w->len += TRAILER_LEN;
            frame(w->buf, w->len);
            *blob = w->buf;
            *len = w->len;
            w->buf = NULL;
            w->len = w->cap = 0;
            return CURV_OK;
        }
        return curv__fail(err, CURV_E_NOMEM, "state: cannot allocate a %zu-byte blob",
                          w->len + TRAILER_LEN);
    }
    size_t payload = w->len, total = HEADER_LEN + payload + TRAILER_LEN;
    unsigned char *out = w->oom || total < payload ? NULL : malloc(total);
    if (!out)
        return curv__fail(err, CURV_E_NOMEM, "state: cannot allocate a %zu-byte blob", total);
    if (payload)
        memcpy(out + HEADER_LEN, w->buf, payload);
    frame(out, total);
    *blob = out;
    *len = total;
    return CURV_OK;
}

curv_status curv__state_open(const unsigned char *blob, size_t len, struct curv__reader *r,
                             curv_error *err)
{
    if (!blob || len < HEADER_LEN + TRAILER_LEN)
        return curv__fail(err, CURV_E_CORRUPT,
                          "state: blob of %zu bytes is shorter than the %u-byte frame", len,
                          HEADER_LEN + TRAILER_LEN);
    if (memcmp(blob, MAGIC, 8) != 0)
        return curv__fail(err, CURV_E_CORRUPT, "state: bad magic (not a curv state blob)");
    uint64_t payload = get_le(blob + 16, 8);
    if (payload != len - HEADER_LEN - TRAILER_LEN)
        return curv__fail(err, CURV_E_CORRUPT,
                          "state: header says %llu payload bytes, blob holds %zu (truncated?)",
                          (unsigned long long)payload, len - HEADER_LEN - TRAILER_LEN);
    uint32_t want = (uint32_t)get_le(blob + len - TRAILER_LEN, 4);
    if (curv__crc32(0, blob, len - TRAILER_LEN) != want)
        return curv__fail(err, CURV_E_CORRUPT, "state: checksum mismatch");
    uint32_t version = (uint32_t)get_le(blob + 8, 4);
    if (version != CURV__STATE_VERSION)
        return curv__fail(err, CURV_E_VERSION, "state: format version %u, this library reads %u",
                          version, CURV__STATE_VERSION);
    if (get_le(blob + 12, 4) != 0)
        return curv__fail(err, CURV_E_CORRUPT, "state: unknown flags set");
    r->p = blob + HEADER_LEN;
    r->len = (size_t)payload;
    r->pos = 0;
    r->bad = 0;
    return CURV_OK;
}
