/* SPDX-License-Identifier: MIT */
/*
 * Tensors on the wire: problems, tensor objects in every encoding, the
 * mapping onto layout blocks, and responses in the request's encoding.
 * The body scanner and number text live in json_scan.c.
 */
#include "wire/codec.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "wire/json_scan.h"
#include "wire/tensor_bytes.h"

/* Shapes and sizes arrive as json_int_t and are kept as size_t. */
_Static_assert(sizeof(size_t) >= sizeof(json_int_t), "size_t narrower than json_int_t");

void curvd_problem_init(struct curvd_problem *p)
{
    if (p)
        memset(p, 0, sizeof *p);
}

int curvd_problem_set(struct curvd_problem *p, enum curvd_reason r, const char *path,
                      const char *expected, const char *got, const char *fmt, ...)
{
    /* The first error is the one the client must fix first; later ones are
     * often its consequences. */
    if (!p || p->reason)
        return -1;
    p->row = (unsigned)r < CURVD_R_COUNT ? r : CURVD_R_INTERNAL;
    p->http_status = curvd_reason_status(r);
    p->reason = curvd_reason_name(r);
    snprintf(p->path, sizeof p->path, "%s", path ? path : "");
    snprintf(p->expected, sizeof p->expected, "%s", expected ? expected : "");
    snprintf(p->got, sizeof p->got, "%s", got ? got : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->detail, sizeof p->detail, fmt, ap);
    va_end(ap);
    return -1;
}

static int nomem(struct curvd_problem *p, const char *path)
{
    return curvd_problem_set(p, CURVD_R_NO_MEMORY, path, NULL, NULL, "out of memory");
}

/* Room for @t's count values (none for an empty tensor); NO_MEMORY at @path. */
static int alloc_values(struct curvd_tensor *t, const char *path, struct curvd_problem *p)
{
    if (t->count && !(t->data = curvd_mem_alloc(t->count * sizeof(double))))
        return nomem(p, path);
    return 0;
}

/* Room for @t's count floats (none for an empty tensor); NO_MEMORY at @path. */
static int alloc_floats(struct curvd_tensor *t, const char *path, struct curvd_problem *p)
{
    if (t->count && !(t->fdata = curvd_mem_alloc(t->count * sizeof(float))))
        return nomem(p, path);
    return 0;
}

int curvd_tensor_widen(struct curvd_tensor *t, const char *path, struct curvd_problem *p)
{
    if (!t->fdata)
        return 0;
    if (alloc_values(t, path, p))
        return -1;
    for (size_t i = 0; i < t->count; i++)
        t->data[i] = t->fdata[i];
    curvd_mem_free(t->fdata);
    t->fdata = NULL;
    return 0;
}

/* "[2,3]" into @buf (cut to fit). */
static const char *fmt_shape(char *buf, size_t cap, const size_t *dims, size_t n)
{
    size_t used = (size_t)snprintf(buf, cap, "[");
    for (size_t i = 0; i < n && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%zu", i ? "," : "", dims[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, "]");
    return buf;
}

size_t curvd_dtype_size(int dtype)
{
    return dtype == CURV_F32 ? 4 : 8;
}

const char *curvd_dtype_name(int dtype)
{
    return dtype == CURV_F32 ? "FP32" : "FP64";
}

/* ---- Tensor objects ---------------------------------------------------- */

static int decode_name(const json_t *obj, const char *path, struct curvd_tensor *t,
                       struct curvd_problem *p)
{
    char sub[160], got[32];
    const json_t *v = json_object_get(obj, "name");
    snprintf(sub, sizeof sub, "%s/name", path);
    if (!json_is_string(v))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "a string", curvd_json_type(v),
                                 "tensor name must be a string");
    size_t n = json_string_length(v);
    snprintf(got, sizeof got, "%zu bytes", n);
    if (n == 0 || n >= sizeof t->name || memchr(json_string_value(v), 0, n))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "1..63 bytes, no NUL", got,
                                 "tensor name must be 1..63 bytes without NUL");
    memcpy(t->name, json_string_value(v), n + 1);
    return 0;
}

static int decode_dtype(const json_t *obj, const char *path, struct curvd_tensor *t,
                        struct curvd_problem *p)
{
    char sub[160], got[48];
    const json_t *v = json_object_get(obj, "datatype");
    const char *s = json_string_value(v);
    snprintf(sub, sizeof sub, "%s/datatype", path);
    if (s && strcmp(s, "FP32") == 0 && json_string_length(v) == 4) {
        t->dtype = CURV_F32;
    } else if (s && strcmp(s, "FP64") == 0 && json_string_length(v) == 4) {
        t->dtype = CURV_F64;
    } else {
        if (s)
            snprintf(got, sizeof got, "\"%.40s\"", s);
        return curvd_problem_set(p, CURVD_R_BAD_DATATYPE, sub, "\"FP32\" or \"FP64\"",
                                 s ? got : curvd_json_type(v), "datatype must be FP32 or FP64");
    }
    return 0;
}

/* Shape and element count; the product is overflow-checked before the cap
 * so that a lying shape can never size an allocation. */
static int decode_shape(const json_t *obj, const char *path, size_t max_count,
                        struct curvd_tensor *t, struct curvd_problem *p)
{
    char sub[160], got[96];
    const json_t *v = json_object_get(obj, "shape");
    const char *want = "an array of at most 8 non-negative integers";
    snprintf(sub, sizeof sub, "%s/shape", path);
    if (!json_is_array(v) || json_array_size(v) > CURVD_MAX_NDIM)
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, want, curvd_json_type(v),
                                 "shape must be %s", want);
    t->ndim = json_array_size(v);
    t->count = 1;
    int overflow = 0;
    for (size_t i = 0; i < t->ndim; i++) {
        const json_t *d = json_array_get(v, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0) {
            snprintf(sub, sizeof sub, "%s/shape/%zu", path, i);
            return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "a non-negative integer",
                                     curvd_json_type(d),
                                     "shape entries must be non-negative integers");
        }
        t->shape[i] = (size_t)json_integer_value(d);
        if (t->shape[i] && t->count > SIZE_MAX / t->shape[i])
            overflow = 1;
        t->count *= t->shape[i];
    }
    /* A zero dimension makes the product 0 however large the others are;
     * otherwise the count must also leave count * sizeof(double) in range. */
    for (size_t i = 0; i < t->ndim; i++)
        overflow &= t->shape[i] != 0;
    overflow |= t->count > SIZE_MAX / sizeof(double);
    fmt_shape(got, sizeof got, t->shape, t->ndim);
    if (overflow)
        return curvd_problem_set(p, CURVD_R_TOO_LARGE, sub, NULL, got,
                                 "the product of shape %s overflows", got);
    if (t->count > max_count)
        return curvd_problem_set(p, CURVD_R_TOO_LARGE, sub, NULL, got,
                                 "shape %s has %zu elements, more than the limit of %zu", got,
                                 t->count, max_count);
    return 0;
}

/* JSON data, flat or nested; nested data must match the shape exactly. */
static int check_nesting(const struct curvd_tensor *t, const struct curvd_cut *c, const char *path,
                         struct curvd_problem *p)
{
    char sub[160], want[96], got[96];
    snprintf(sub, sizeof sub, "%s/data", path);
    fmt_shape(want, sizeof want, t->shape, t->ndim);
    if (c->ragged)
        return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, sub, want, "ragged arrays",
                                 "nested data arrays differ in length or depth");
    if (c->ndim <= 1) {
        if (c->count == t->count)
            return 0;
        snprintf(want, sizeof want, "%zu values", t->count);
        snprintf(got, sizeof got, "%zu values", c->count);
        return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, sub, want, got,
                                 "data holds %zu values, shape needs %zu", c->count, t->count);
    }
    fmt_shape(got, sizeof got, c->dims, c->ndim);
    if (c->ndim != t->ndim || memcmp(c->dims, t->shape, t->ndim * sizeof(size_t)) != 0)
        return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, sub, want, got,
                                 "nested data has shape %s, shape says %s", got, want);
    return 0;
}

/* The JSON pointer of element @i of nested data, e.g. ".../data/1/2". */
static void element_path(char *buf, size_t cap, const char *path, const struct curvd_cut *c,
                         size_t i)
{
    size_t used = (size_t)snprintf(buf, cap, "%s/data", path), idx[CURVD_MAX_NDIM];
    size_t nd = c && c->ndim > 1 ? c->ndim : 1;
    for (size_t k = nd; k-- > 0; i /= (nd > 1 ? c->dims[k] : 1))
        idx[k] = nd > 1 ? i % c->dims[k] : i;
    for (size_t k = 0; k < nd && used < cap; k++)
        used += (size_t)snprintf(buf + used, cap - used, "/%zu", idx[k]);
}

/*
 * Every value finite, FP32 values within float range and rounded to float,
 * so that the doubles do not depend on the encoding. @c locates JSON data
 * (NULL for base64 and binary, which are named by element index).
 */
static int check_values(struct curvd_tensor *t, const struct curvd_cut *c, const char *path,
                        struct curvd_problem *p)
{
    int f32 = t->dtype == CURV_F32;
    for (size_t i = 0; i < t->count; i++) {
        double x = t->data[i];
        if (isfinite(x) && (!f32 || fabs(x) < CURVD_F32_LIMIT)) {
            if (f32)
                t->data[i] = (float)x;
            continue;
        }
        char sub[160], got[40], at[64] = "";
        if (t->encoding == CURVD_ENC_JSON)
            element_path(sub, sizeof sub, path, c, i);
        else
            snprintf(sub, sizeof sub, "%s/data", path);
        if (c && c->bad_at != SIZE_MAX)
            snprintf(at, sizeof at, " (first at byte %zu of the body)", c->bad_at);
        snprintf(got, sizeof got, "%.17g", x);
        return curvd_problem_set(p, CURVD_R_NON_FINITE, sub,
                                 f32 ? "a finite FP32" : "a finite FP64", got,
                                 "element %zu of '%s' is %s%s", i, t->name,
                                 isfinite(x) ? "beyond float range" : "not finite", at);
    }
    return 0;
}

static int decode_json_array(const json_t *a, const char *path, struct curvd_tensor *t,
                             struct curvd_cut *c, struct curvd_problem *p)
{
    if (curvd_array_measure(a, c, path, p) || check_nesting(t, c, path, p))
        return -1;
    if (alloc_values(t, path, p))
        return -1;
    curvd_array_fill(a, t->data);
    return 0;
}

static int check_values(struct curvd_tensor *t, const struct curvd_cut *c, const char *path,
                        struct curvd_problem *p);

/* FP32 bytes at @raw into @t's floats (@raw may be them): a NaN or an
 * infinity among them is refused as check_values words it. */
static int floats_from_bytes(struct curvd_tensor *t, const unsigned char *raw, const char *path,
                             struct curvd_problem *p)
{
    if (curvd_le_decode_f32(raw, t->count, t->fdata))
        return 0;
    return curvd_tensor_widen(t, path, p) ? -1 : check_values(t, NULL, path, p);
}

static int decode_b64(const json_t *b, const struct curvd_doc *doc, const char *path,
                      struct curvd_tensor *t, int floats, struct curvd_problem *p)
{
    const char *text = json_string_value(b);
    size_t len = json_string_length(b);
    char sub[160];
    size_t bytes = t->count * curvd_dtype_size(t->dtype);
    snprintf(sub, sizeof sub, "%s/data/b64", path);
    if (!text && !curvd_doc_text(doc, b, &text, &len))
        return curvd_problem_set(p, CURVD_R_BAD_BASE64, sub, "a string", curvd_json_type(b),
                                 "b64 must be a string");
    /* The length first: a short text must not make us allocate for a
     * large shape. */
    if (curvd_b64_check(text, len, bytes, path, p))
        return -1;
    if (floats) { /* decoded in place: the bytes are the floats' */
        if (alloc_floats(t, path, p) ||
            curvd_b64_decode(text, len, (unsigned char *)t->fdata, bytes, path, p))
            return -1;
        return floats_from_bytes(t, (const unsigned char *)t->fdata, path, p);
    }
    if (alloc_values(t, path, p))
        return -1;
    /* Decode into the tail of the double buffer and widen in place: each
     * element is read before its wider copy overwrites anything unread. */
    unsigned char *raw =
        t->count ? (unsigned char *)t->data + t->count * sizeof(double) - bytes : NULL;
    if (curvd_b64_decode(text, len, raw, bytes, path, p))
        return -1;
    if (!curvd_le_decode(raw, t->count, t->dtype, t->data))
        return check_values(t, NULL, path, p);
    return 0;
}

static int decode_binary(const json_t *size, const char *path, struct curvd_binary *bin,
                         struct curvd_tensor *t, int floats, struct curvd_problem *p)
{
    char sub[160], want[40], got[40];
    size_t bytes = t->count * curvd_dtype_size(t->dtype);
    snprintf(sub, sizeof sub, "%s/parameters/binary_data_size", path);
    snprintf(want, sizeof want, "%zu bytes", bytes);
    if (!json_is_integer(size) || json_integer_value(size) < 0)
        return curvd_problem_set(p, CURVD_R_BAD_BINARY, sub, want, curvd_json_type(size),
                                 "binary_data_size must be a non-negative integer");
    snprintf(got, sizeof got, "%lld bytes", (long long)json_integer_value(size));
    if (!bin)
        return curvd_problem_set(p, CURVD_R_BAD_BINARY, sub, NULL, NULL,
                                 "binary_data_size without a binary part "
                                 "(Inference-Header-Content-Length)");
    if ((uintmax_t)json_integer_value(size) != bytes)
        return curvd_problem_set(p, CURVD_R_BAD_BINARY, sub, want, got,
                                 "binary_data_size is %s, %zu %s values need %s", got, t->count,
                                 curvd_dtype_name(t->dtype), want);
    if (bytes > bin->len - bin->pos) {
        snprintf(got, sizeof got, "%zu bytes left", bin->len - bin->pos);
        return curvd_problem_set(p, CURVD_R_BAD_BINARY, sub, want, got,
                                 "the binary part ends %zu bytes short of '%s'",
                                 bytes - (bin->len - bin->pos), t->name);
    }
    if (floats)
        return alloc_floats(t, path, p) ? -1 : floats_from_bytes(t, bin->base + bin->pos, path, p);
    if (alloc_values(t, path, p))
        return -1;
    if (!curvd_le_decode(bin->base + bin->pos, t->count, t->dtype, t->data))
        return check_values(t, NULL, path, p);
    return 0;
}

/* The values, checked (check_values); bytes (binary and base64) hold
 * floats or doubles already, so only a NaN or an infinity among them is
 * left to refuse, and their decoding tells whether there is one. */
static int decode_data(const json_t *obj, const char *path, const struct curvd_doc *doc,
                       struct curvd_binary *bin, struct curvd_tensor *t, int floats,
                       struct curvd_problem *p)
{
    char sub[160];
    const json_t *data = json_object_get(obj, "data"), *params = json_object_get(obj, "parameters");
    const json_t *size = json_object_get(params, "binary_data_size");
    snprintf(sub, sizeof sub, "%s/data", path);
    if (params && !json_is_object(params)) {
        snprintf(sub, sizeof sub, "%s/parameters", path);
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "an object", curvd_json_type(params),
                                 "parameters must be an object");
    }
    if (size && data)
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "absent with binary_data_size",
                                 curvd_json_type(data), "a binary tensor must not also carry data");
    t->encoding = size ? CURVD_ENC_BINARY : CURVD_ENC_JSON;
    if (size)
        return decode_binary(size, path, bin, t, floats && t->dtype == CURV_F32, p);
    const struct curvd_cut *cut = curvd_doc_cut(doc, data);
    if (cut && cut->kind == CURVD_CUT_NUMBERS) {
        if (check_nesting(t, cut, path, p))
            return -1;
        if (alloc_values(t, path, p))
            return -1;
        if (t->count)
            memcpy(t->data, doc->values + cut->first, t->count * sizeof(double));
        return check_values(t, cut, path, p);
    }
    if (json_is_array(data)) {
        struct curvd_cut own = {.bad_at = SIZE_MAX};
        if (decode_json_array(data, path, t, &own, p))
            return -1;
        return check_values(t, &own, path, p);
    }
    if (json_is_object(data) && json_object_size(data) == 1 && json_object_get(data, "b64")) {
        t->encoding = CURVD_ENC_B64;
        return decode_b64(json_object_get(data, "b64"), doc, path, t,
                          floats && t->dtype == CURV_F32, p);
    }
    return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "an array of numbers or {\"b64\": ...}",
                             curvd_json_type(data),
                             "data must be an array of numbers or {\"b64\": ...}");
}

static int tensor_decode(const json_t *obj, const char *path, const struct curvd_doc *doc,
                         struct curvd_binary *bin, size_t max_count, int floats,
                         struct curvd_tensor *out, struct curvd_problem *p)
{
    struct curvd_tensor t = {.ndim = 0};
    path = path ? path : "";
    if (!json_is_object(obj))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, "a tensor object",
                                 curvd_json_type(obj), "a tensor must be an object");
    if (decode_name(obj, path, &t, p) || decode_dtype(obj, path, &t, p) ||
        decode_shape(obj, path, max_count, &t, p) ||
        decode_data(obj, path, doc, bin, &t, floats, p)) {
        curvd_mem_free(t.data);
        curvd_mem_free(t.fdata);
        return -1;
    }
    if (t.encoding == CURVD_ENC_BINARY)
        bin->pos += t.count * curvd_dtype_size(t.dtype);
    *out = t;
    return 0;
}

int curvd_tensor_decode(const json_t *obj, const char *path, const struct curvd_doc *doc,
                        struct curvd_binary *bin, size_t max_count, struct curvd_tensor *out,
                        struct curvd_problem *p)
{
    return tensor_decode(obj, path, doc, bin, max_count, 0, out, p);
}

int curvd_tensor_decode_rows(const json_t *obj, const char *path, const struct curvd_doc *doc,
                             struct curvd_binary *bin, size_t max_count, struct curvd_tensor *out,
                             struct curvd_problem *p)
{
    return tensor_decode(obj, path, doc, bin, max_count, 1, out, p);
}

int curvd_tensors_decode(const json_t *arr, const char *path, const struct curvd_doc *doc,
                         struct curvd_binary *bin, size_t max_count, struct curvd_tensor **out,
                         size_t *n, struct curvd_problem *p)
{
    char sub[160];
    path = path ? path : "";
    if (!json_is_array(arr))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, "an array of tensors",
                                 curvd_json_type(arr), "expected an array of tensor objects");
    size_t k = json_array_size(arr);
    struct curvd_tensor *t = calloc(k ? k : 1, sizeof *t);
    if (!t)
        return nomem(p, path);
    for (size_t i = 0; i < k; i++) {
        snprintf(sub, sizeof sub, "%s/%zu", path, i);
        if (curvd_tensor_decode(json_array_get(arr, i), sub, doc, bin, max_count, &t[i], p)) {
            curvd_tensors_free(t, i);
            return -1;
        }
    }
    *out = t;
    *n = k;
    return 0;
}

void curvd_tensor_clear(struct curvd_tensor *t)
{
    if (!t)
        return;
    curvd_mem_free(t->data);
    curvd_mem_free(t->fdata);
    memset(t, 0, sizeof *t);
}

void curvd_tensors_free(struct curvd_tensor *t, size_t n)
{
    if (!t)
        return;
    for (size_t i = 0; i < n; i++)
        curvd_tensor_clear(&t[i]);
    free(t);
}

/* ---- Blocks ------------------------------------------------------------ */

size_t curvd_block_shape(const curv_block_info *b, size_t *dims)
{
    dims[0] = b->rows;
    dims[1] = b->cols;
    return b->kind == CURV_BLOCK_VECTOR ? 1 : 2;
}

static int check_block(const curv_block_info *b, const struct curvd_tensor *t, const char *path,
                       size_t i, struct curvd_problem *p)
{
    char sub[160], want[96], got[96];
    size_t dims[2], nd = curvd_block_shape(b, dims);
    if (nd == t->ndim && memcmp(dims, t->shape, nd * sizeof(size_t)) == 0)
        return 0;
    snprintf(sub, sizeof sub, "%s/%zu/shape", path, i);
    fmt_shape(want, sizeof want, dims, nd);
    fmt_shape(got, sizeof got, t->shape, t->ndim);
    return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, sub, want, got,
                             "block '%s' expects shape %s, got %s", b->name, want, got);
}

static int validate_blocks(const curv_layout *l, const struct curvd_tensor *t, size_t n,
                           const char *path, size_t *owner, struct curvd_problem *p)
{
    char sub[160], want[96];
    curv_block_info b;
    for (size_t i = 0; i < n; i++) {
        long k = curv_layout_find(l, t[i].name);
        snprintf(sub, sizeof sub, "%s/%zu/name", path, i);
        if (k < 0)
            return curvd_problem_set(p, CURVD_R_UNKNOWN_BLOCK, sub, "a block of the layout",
                                     t[i].name, "the layout has no block '%s'", t[i].name);
        if (owner[k])
            return curvd_problem_set(p, CURVD_R_DUPLICATE_BLOCK, sub, "each block once", t[i].name,
                                     "block '%s' appears at %s/%zu and %s/%zu", t[i].name, path,
                                     owner[k] - 1, path, i);
        owner[k] = i + 1;
        if (t[i].dtype != t[0].dtype) {
            snprintf(sub, sizeof sub, "%s/%zu/datatype", path, i);
            return curvd_problem_set(p, CURVD_R_BAD_DATATYPE, sub, curvd_dtype_name(t[0].dtype),
                                     curvd_dtype_name(t[i].dtype),
                                     "all tensors must share a datatype");
        }
        curv_layout_block(l, (size_t)k, &b);
        if (check_block(&b, &t[i], path, i, p))
            return -1;
    }
    for (size_t k = 0; k < curv_layout_nblocks(l); k++) {
        if (owner[k])
            continue;
        size_t dims[2], nd;
        curv_layout_block(l, k, &b);
        nd = curvd_block_shape(&b, dims);
        fmt_shape(want, sizeof want, dims, nd);
        return curvd_problem_set(p, CURVD_R_MISSING_BLOCK, path, want, "absent",
                                 "block '%s' (shape %s) is missing", b.name, want);
    }
    return 0;
}

int curvd_tensors_to_flat(const curv_layout *l, const struct curvd_tensor *t, size_t n,
                          const char *path, double *flat, struct curvd_problem *p)
{
    size_t nb = curv_layout_nblocks(l);
    /* owner[k] = 1 + the tensor that fills block k, 0 while none does. */
    size_t *owner = calloc(nb ? nb : 1, sizeof *owner);
    path = path ? path : "";
    if (!owner)
        return nomem(p, path);
    int rc = validate_blocks(l, t, n, path, owner, p);
    for (size_t k = 0; rc == 0 && k < nb; k++) {
        curv_block_info b;
        curv_layout_block(l, k, &b);
        memcpy(flat + b.offset, t[owner[k] - 1].data, b.size * sizeof(double));
    }
    free(owner);
    return rc;
}
