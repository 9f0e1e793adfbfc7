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
    unsigned char *nb = curv__realloc(w->buf, cap);
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
    unsigned char *nb = curv__realloc(w->buf, bytes);
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

/* Start a part at the writer's position; a volatile mark right after a
 * volatile part (or the start) adds nothing. */
static void w_mark(struct curv__writer *w, uint64_t stamp, int stable)
{
    if (w->oom)
        return;
    const struct curv__w_mark *last = w->n_marks ? &w->marks[w->n_marks - 1] : NULL;
    if (!stable && (!last || !last->stable))
        return;
    if (w->n_marks == w->marks_cap) {
        size_t cap = w->marks_cap ? 2 * w->marks_cap : 16;
        struct curv__w_mark *nm =
            cap <= SIZE_MAX / sizeof *nm ? curv__realloc(w->marks, cap * sizeof *nm) : NULL;
        if (!nm) {
            w->oom = 1;
            return;
        }
        w->marks = nm;
        w->marks_cap = cap;
    }
    w->marks[w->n_marks++] = (struct curv__w_mark){w->len, stable ? stamp : 0, stable};
}

void curv__w_part(struct curv__writer *w, uint64_t stamp)
{
    w_mark(w, stamp, 1);
}

void curv__w_volatile(struct curv__writer *w)
{
    w_mark(w, 0, 0);
}

uint64_t curv__stamp(enum curv__stamp_src src, uint64_t value)
{
    const uint64_t low = (UINT64_C(1) << 56) - 1;
    return value < low ? (uint64_t)src << 56 | (value + 1) : 0;
}

void curv__w_release(struct curv__writer *w)
{
    curv__free(w->buf);
    curv__free(w->marks);
    *w = (struct curv__writer){0};
}

/*
 * The parts of a @total-byte blob whose payload starts at @shift in the
 * writer's positions: the header and what precedes the first mark, each
 * mark's run, the trailer. Empty runs are dropped and volatile runs that
 * meet are joined, so the result depends only on where marks were made.
 */
static curv_state_part *build_parts(const struct curv__writer *w, size_t shift, size_t total,
                                    size_t *n_out)
{
    curv_state_part *p = curv__calloc_n(w->n_marks + 2, sizeof *p);
    if (!p)
        return NULL;
    size_t n = 0;
    int last_volatile = 0;
    for (size_t k = 0; k <= w->n_marks + 1; k++) {
        const int trailer = k == w->n_marks + 1;
        const struct curv__w_mark *m = k && !trailer ? &w->marks[k - 1] : NULL;
        size_t start = trailer ? total - TRAILER_LEN : m ? m->pos + shift : 0;
        size_t end = trailer          ? total
                     : k < w->n_marks ? w->marks[k].pos + shift
                                      : total - TRAILER_LEN;
        int stable = m && m->stable;
        if (end == start)
            continue;
        if (!stable && last_volatile) {
            p[n - 1].len += end - start;
            continue;
        }
        p[n++] = (curv_state_part){start, end - start, stable ? m->stamp : 0};
        last_volatile = !stable;
    }
    *n_out = n;
    return p;
}

curv_status curv__state_seal(struct curv__writer *w, unsigned char **blob, size_t *len,
                             curv_state_part **parts, size_t *n_parts, curv_error *err)
{
    const size_t shift = w->framed ? 0 : HEADER_LEN;
    const size_t payload = w->framed ? w->len - HEADER_LEN : w->len;
    const size_t total = HEADER_LEN + payload + TRAILER_LEN;
    curv_state_part *p = NULL;
    size_t np = 0;
    if (w->oom || total < payload || (w->framed && !reserve(w, TRAILER_LEN)) ||
        (parts && !(p = build_parts(w, shift, total, &np))))
        return curv__fail(err, CURV_E_NOMEM, "state: cannot allocate a %zu-byte blob", total);
    unsigned char *out = w->framed ? w->buf : curv__malloc(total);
    if (!out) {
        curv__free(p);
        return curv__fail(err, CURV_E_NOMEM, "state: cannot allocate a %zu-byte blob", total);
    }
    if (w->framed) { /* the header is already in place: no copy */
        w->buf = NULL;
        w->len = w->cap = 0;
    } else if (payload) {
        memcpy(out + HEADER_LEN, w->buf, payload);
    }
    frame(out, total);
    *blob = out;
    *len = total;
    if (parts) {
        *parts = p;
        *n_parts = np;
    }
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
