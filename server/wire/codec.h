/* SPDX-License-Identifier: MIT */
/*
 * codec - tensors on the wire <-> flat vectors of doubles.
 *
 * Decoding: curvd_json_parse() reads a request body in one pass. Every JSON
 * array that is the value of a "data" key and holds only numbers (nested to
 * any depth up to CURVD_MAX_NDIM, flattened row-major) is cut out into a side
 * buffer of doubles by a dedicated number scanner, and so is the base64 text
 * of {"data": {"b64": "..."}}; jansson parses only the remaining skeleton,
 * where each cut value has been replaced by a placeholder object.
 * curvd_tensor_decode() then turns one Open Inference Protocol tensor
 * object into a struct curvd_tensor, whatever the data encoding: cut
 * numbers, a plain JSON array, {"b64": "..."} or the binary extension.
 * curvd_tensors_to_flat() maps tensors onto a layout's blocks.
 *
 * Encoding: out.h writes responses (curvd_out_tensors()).
 *
 * Errors: every fallible call returns 0 or -1 and fills an optional
 * struct curvd_problem; the first error wins, later ones are ignored.
 *
 * Locale: numbers are validated against the strict JSON grammar first, then
 * converted exactly in double (or x87 extended) arithmetic, and only in the
 * remaining cases by strtod() on digits and an exponent with no decimal
 * point, which every locale reads alike. FP32 numbers are printed by our
 * own formatter; FP64 numbers by snprintf("%.17g"), whose decimal point
 * follows LC_NUMERIC: the daemon never calls setlocale(), so it stays "C".
 *
 * Thread-safety: no global state; distinct objects may be used by distinct
 * threads at once.
 */
#ifndef CURVD_CODEC_H
#define CURVD_CODEC_H

#include <jansson.h>
#include <stddef.h>

#include "curv.h"
#include "http/errors.h"

#if defined(__GNUC__)
#define CURVD_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CURVD_PRINTF(f, a)
#endif

/* Doubles at or beyond this round to infinity as floats (the midpoint
 * between FLT_MAX and 2^128 rounds to even, i.e. up). */
#define CURVD_F32_LIMIT 0x1.ffffffp127

/* Most dimensions a tensor may have (also the deepest nesting of "data"). */
#define CURVD_MAX_NDIM 8

/*
 * struct curvd_problem - the first error of a request, for problem+json.
 * @http_status: its row's status (errors.h), 0 while no error.
 * @reason:      its row's machine word ("SHAPE_MISMATCH"); NULL while no error.
 * @row:         the row of errors.h.
 * @detail:      a sentence for a human.
 * @path:        JSON pointer of the offending value ("/gradients/2/data/17"),
 *               or "" when the error is about the body as a whole.
 * @expected, @got: short descriptions ("[10,785]", "[10,784]"), or "".
 * Ownership: caller-allocated; every function accepts NULL ("no detail").
 */
struct curvd_problem {
    int http_status;
    const char *reason;
    enum curvd_reason row;
    char detail[256];
    char path[128];
    char expected[96];
    char got[96];
};

/* curvd_problem_init - clear @p (no error yet). NULL is a no-op. */
void curvd_problem_init(struct curvd_problem *p);

/*
 * curvd_problem_set - record an error unless one is already recorded.
 * @path, @expected, @got may be NULL (stored as ""); long text is cut.
 * Return: always -1, so callers can `return curvd_problem_set(...)`.
 */
int curvd_problem_set(struct curvd_problem *p, enum curvd_reason r, const char *path,
                      const char *expected, const char *got, const char *fmt, ...)
    CURVD_PRINTF(6, 7);

/* ---- Parsing ------------------------------------------------------------ */

/* A parsed body: the jansson skeleton plus the cut-out values. Opaque. */
struct curvd_doc;

/*
 * curvd_json_parse - parse @len bytes at @body (need not be NUL-terminated).
 *
 * jansson loads the skeleton with JSON_REJECT_DUPLICATES and without
 * JSON_DECODE_INT_AS_REAL: integers stay integers, so shapes, step numbers
 * and binary_data_size can be checked for being integers, and a duplicate
 * key ("data" twice) is an error rather than a silent choice.
 *
 * Numbers in cut arrays: strict JSON grammar (01, 1., .5, +1, 1e and a lone
 * '-' are MALFORMED_JSON with the byte offset). The literals NaN, Infinity
 * and -Infinity (as Python's json module writes them) and values that
 * overflow a double (1e999) are stored as non-finite and reported as
 * NON_FINITE (422) by curvd_tensor_decode(), with the tensor's path. Numbers
 * elsewhere in the body are jansson's: overflow there is MALFORMED_JSON.
 * A key written with escapes ("d\u0061ta") is not cut; its array stays in
 * the tree, which curvd_tensor_decode() also accepts. Base64 text is cut
 * only when it is plain printable ASCII without backslashes (anything else
 * is left to jansson, then refused by the base64 decoder). The key
 * "$curvd_cut" is reserved: a body that uses it is MALFORMED_JSON.
 *
 * Return: 0 and *@out set; -1 with @p: MALFORMED_JSON or NO_MEMORY.
 * MALFORMED_JSON's detail names a byte offset in the body: where the bad
 * token starts for the scanner's errors, just past it for jansson's (whose
 * skeleton offsets are mapped back through the cuts). *@out is written only
 * on success.
 * Ownership: *@out is owned by the caller; free with curvd_doc_free().
 */
int curvd_json_parse(const char *body, size_t len, struct curvd_doc **out, struct curvd_problem *p);

/* curvd_doc_root - the skeleton tree (borrowed; lives as long as @doc). */
json_t *curvd_doc_root(const struct curvd_doc *doc);

/* curvd_doc_free - NULL is a no-op. */
void curvd_doc_free(struct curvd_doc *doc);

/*
 * curvd_doc_numbers - if @v is a placeholder of @doc, point *@vals at its
 * values (borrowed, *@count of them, flattened row-major) and return 1;
 * otherwise return 0. @doc may be NULL (then never a placeholder).
 */
int curvd_doc_numbers(const struct curvd_doc *doc, const json_t *v, const double **vals,
                      size_t *count);

/* ---- Tensors ------------------------------------------------------------ */

enum curvd_encoding { CURVD_ENC_JSON = 0, CURVD_ENC_B64 = 1, CURVD_ENC_BINARY = 2 };

/*
 * struct curvd_tensor - one decoded tensor.
 * @dtype:    CURV_F32 or CURV_F64: the wire type, kept for the response.
 *            FP32 values are rounded to float on decode, whatever the
 *            encoding, so every encoding yields the same doubles.
 * @encoding: how the data came (the response uses the same).
 * @data:     @count doubles, owned; NULL when @count is 0 or @fdata holds
 *            the values.
 * @fdata:    @count floats instead, owned: FP32 bytes (binary, base64)
 *            decoded by curvd_tensor_decode_rows; NULL otherwise.
 */
struct curvd_tensor {
    char name[64];
    int dtype;
    int encoding;
    size_t ndim, shape[CURVD_MAX_NDIM], count;
    double *data;
    float *fdata;
};

/* curvd_tensor_widen - move @t's floats (if any) to doubles in @data.
 * Return 0, or -1 with NO_MEMORY at @path. */
int curvd_tensor_widen(struct curvd_tensor *t, const char *path, struct curvd_problem *p);

/* curvd_tensor_clear - free @t's data and zero it; NULL is a no-op. */
void curvd_tensor_clear(struct curvd_tensor *t);

/* curvd_tensors_free - clear @n tensors and free the array; NULL is a no-op. */
void curvd_tensors_free(struct curvd_tensor *t, size_t n);

/*
 * struct curvd_binary - the binary tail of a body using the binary
 * extension, consumed in order by curvd_tensor_decode().
 */
struct curvd_binary {
    const unsigned char *base; /* first byte after the JSON header (borrowed) */
    size_t len;                /* bytes in the tail */
    size_t pos;                /* bytes consumed so far */
};

/*
 * curvd_binary_init - split a body of @body_len bytes whose JSON header is
 * @json_len bytes long (Inference-Header-Content-Length).
 * Return: 0; -1 with BAD_BINARY when @json_len > @body_len.
 */
int curvd_binary_init(struct curvd_binary *b, const void *body, size_t body_len, size_t json_len,
                      struct curvd_problem *p);

/* curvd_binary_finish - 0 if every byte of the tail was claimed by a tensor,
 * else -1 with BAD_BINARY naming the trailing byte count. */
int curvd_binary_finish(const struct curvd_binary *b, struct curvd_problem *p);

/*
 * curvd_tensor_decode - decode the tensor object @obj found at JSON pointer
 * @path (used in errors, e.g. "/gradients/2").
 * @doc:       the document @obj belongs to, or NULL for a plain jansson tree.
 * @bin:       the binary tail, or NULL when the body has no binary extension.
 *             Tensors must be decoded in document order, since each takes
 *             the next parameters.binary_data_size bytes.
 * @max_count: most elements accepted (the product of the shape).
 *
 * The object: "name" 1..63 bytes, "datatype" exactly "FP32" or "FP64",
 * "shape" an array of at most CURVD_MAX_NDIM non-negative integers, and
 * exactly one of "data" (an array of numbers, flat or nested to match the
 * shape exactly, or {"b64": "..."} of little-endian bytes) and
 * "parameters": {"binary_data_size": N}. Other keys are ignored.
 * Return: 0 and *@out filled; -1 with @p: BAD_TENSOR, BAD_DATATYPE,
 * SHAPE_MISMATCH, TOO_LARGE, BAD_BASE64, BAD_BINARY, NON_FINITE, NO_MEMORY.
 * *@out is written only on success.
 * Ownership: *@out owns its data; release with curvd_tensor_clear().
 * curvd_tensor_decode_rows is the same but keeps FP32 bytes (binary and
 * base64) as floats in @fdata: layer statistics, which libcurv reads as
 * floats without a double copy (JSON numbers stay doubles).
 */
int curvd_tensor_decode(const json_t *obj, const char *path, const struct curvd_doc *doc,
                        struct curvd_binary *bin, size_t max_count, struct curvd_tensor *out,
                        struct curvd_problem *p);
int curvd_tensor_decode_rows(const json_t *obj, const char *path, const struct curvd_doc *doc,
                             struct curvd_binary *bin, size_t max_count, struct curvd_tensor *out,
                             struct curvd_problem *p);

/*
 * curvd_tensors_decode - curvd_tensor_decode() on each element of the JSON
 * array @arr at @path, in order. Return 0 with *@out (owned, free with
 * curvd_tensors_free) and *@n set; -1 with @p (BAD_TENSOR if @arr is not an
 * array, or the first element's error). Outputs are written only on success.
 */
int curvd_tensors_decode(const json_t *arr, const char *path, const struct curvd_doc *doc,
                         struct curvd_binary *bin, size_t max_count, struct curvd_tensor **out,
                         size_t *n, struct curvd_problem *p);

/*
 * curvd_tensors_to_flat - place @n tensors (decoded from the array at @path)
 * into @flat, a caller buffer of curv_layout_dim(@l) doubles.
 * Every block exactly once, by name, in any order; the shape must be the
 * block's flat-matrix shape exactly: [rows, cols] for dense and conv2d
 * (cols counts the bias column), [n] for vector blocks ([n, 1] is refused:
 * one spelling per block keeps requests and responses symmetric). All
 * tensors must share one datatype.
 * Return: 0; -1 with @p: UNKNOWN_BLOCK, DUPLICATE_BLOCK, BAD_DATATYPE,
 * SHAPE_MISMATCH (path .../i/shape, expected and got shapes), MISSING_BLOCK
 * (path @path, the block's shape expected), NO_MEMORY.
 * @flat is written only on success.
 */
int curvd_tensors_to_flat(const curv_layout *l, const struct curvd_tensor *t, size_t n,
                          const char *path, double *flat, struct curvd_problem *p);

/* ---- Encoding ----------------------------------------------------------- */

/* curvd_dtype_size / curvd_dtype_name - 4 or 8 bytes, "FP32" or "FP64". */
size_t curvd_dtype_size(int dtype);
const char *curvd_dtype_name(int dtype);

/* curvd_block_shape - the block's wire shape into @dims: [rows, cols] for
 * a matrix, [n] for a vector; returns the number of dimensions. */
size_t curvd_block_shape(const curv_block_info *b, size_t *dims);

#endif
