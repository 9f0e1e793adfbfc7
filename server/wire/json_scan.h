/* SPDX-License-Identifier: MIT */
/*
 * json_scan - internals of the codec: the one-pass body scanner behind
 * curvd_json_parse() and tensor bytes (little-endian, base64); numbers as
 * text are numtext.h's. Server-internal: the codec, the reply writers
 * and the tests include this.
 */
#ifndef CURVD_JSON_SCAN_H
#define CURVD_JSON_SCAN_H

#include <jansson.h>
#include <stddef.h>

#include "wire/codec.h"
#include "wire/numtext.h"

/* The key of the placeholder object that stands for a cut. */
#define CURVD_CUT_KEY "$curvd_cut"

/* What a cut holds: numbers (the value of "data") or base64 text (the
 * string value of "b64" in {"data": {"b64": "..."}}). */
enum curvd_cut_kind { CURVD_CUT_NUMBERS = 0, CURVD_CUT_TEXT = 1 };

/* One value cut out of the body. */
struct curvd_cut {
    enum curvd_cut_kind kind;
    size_t first, count;         /* values[first ..] or text[first ..] */
    size_t ndim;                 /* nesting depth: 1 for a flat array */
    size_t dims[CURVD_MAX_NDIM]; /* length at each depth (when !ragged) */
    int ragged;                  /* siblings differ in length or depth */
    size_t bad_at;               /* body offset of the first non-finite value, or SIZE_MAX */
    size_t body_off, body_len;   /* the value's bytes in the body */
    size_t skel_off, skel_len;   /* the placeholder's bytes in the skeleton */
};

struct curvd_doc {
    json_t *root;
    double *values;
    size_t nvalues, cap_values;
    char *text;
    size_t ntext, cap_text;
    struct curvd_cut *cuts;
    size_t ncuts, cap_cuts;
};

/* curvd_doc_cut - the cut that placeholder @v stands for, or NULL. */
const struct curvd_cut *curvd_doc_cut(const struct curvd_doc *doc, const json_t *v);

/* curvd_doc_text - if @v is a placeholder of base64 text, point *@s at it
 * (borrowed, *@len bytes, not NUL-terminated) and return 1; else 0. */
int curvd_doc_text(const struct curvd_doc *doc, const json_t *v, const char **s, size_t *len);

/* curvd_json_type - "object", "array", ..., or "absent" for NULL. */
const char *curvd_json_type(const json_t *v);

/*
 * curvd_array_measure - what the scanner records for a cut, for a plain
 * jansson "data" array instead: count, nesting depth, lengths per depth and
 * raggedness, into @c (zeroed by the caller). Errors: BAD_TENSOR at the
 * first element that is not a number or array ("@path/data/1/2"), or when
 * arrays nest deeper than CURVD_MAX_NDIM. Return 0 or -1.
 */
int curvd_array_measure(const json_t *a, struct curvd_cut *c, const char *path,
                        struct curvd_problem *p);

/* curvd_array_fill - the numbers of measured array @a, row-major, into @out. */
void curvd_array_fill(const json_t *a, double *out);

#endif
