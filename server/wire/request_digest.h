/* SPDX-License-Identifier: MIT */
/*
 * The digest of a decoded request: what a re-post of a completed step (or
 * of an answered callback) is compared with, so that a replay is given only
 * to the same request (issue 21).
 *
 * The digest is over the content as the optimizer receives it, never over
 * the bytes on the wire: JSON numbers, base64 and the binary extension of
 * the same values are the same request, and so are tensors sent in another
 * order of blocks or members, or with other whitespace. A datatype is the
 * same request when it carries the same values: FP32 data is rounded to
 * float on decoding, so FP32 and FP64 tensors agree exactly when every
 * FP64 value is a float. -0 and +0 count as equal. What the step reads and
 * nothing else goes in: the step number, the gradient, params, grad_sq,
 * each "layers" entry (block, rows, examples, activations, signals, in
 * order), loss and batch, each optional one with whether it was sent.
 */
#ifndef CURVD_REQUEST_DIGEST_H
#define CURVD_REQUEST_DIGEST_H

#include "curv.h"
#include "wire/step_decode.h"

/* "mm3-128:" and 32 hex digits (MurmurHash3 x64_128, wire/hash128.h, of
 * the canonical form), with its NUL. The prefix names the hash and the
 * form: a change of either takes a new one. */
#define CURVD_DIGEST_PREFIX "mm3-128:"
#define CURVD_DIGEST_TEXT 41

/* curvd_digest_canon - the canonical form of @n values into @out (8 * @n
 * bytes): each value's IEEE 754 bits, little-endian, -0 as +0. */
void curvd_digest_canon(unsigned char *out, const double *v, size_t n);

/* curvd_step_digest - the digest of the decoded step @in (after
 * curvd_step_decode_tensors(): @g, @theta and @gsq are its flat vectors of
 * curv_layout_dim(@l) doubles; @theta and @gsq are read only when sent). */
void curvd_step_digest(const curv_layout *l, const struct curvd_step_in *in, const double *g,
                       const double *theta, const double *gsq, char out[CURVD_DIGEST_TEXT]);

/* curvd_answer_digest - the digest of the decoded answer @values
 * (@req->n_values doubles) to callback @req of step @step. */
void curvd_answer_digest(long long step, const curv_request *req, const double *values,
                         char out[CURVD_DIGEST_TEXT]);

/* curvd_update_digest - the digest of an update @delta (@dim doubles), as
 * the step log keeps it to check a replay (docs/DURABILITY.md). */
void curvd_update_digest(const double *delta, size_t dim, char out[CURVD_DIGEST_TEXT]);

#endif
