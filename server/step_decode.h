/* SPDX-License-Identifier: MIT */
/* Decoding a step body (POST /v1/sessions/{id}/steps), plain JSON or the
 * binary extension, into flat vectors of a layout. */
#ifndef CURVD_STEP_DECODE_H
#define CURVD_STEP_DECODE_H

#include <stddef.h>

#include "codec.h"
#include "curv.h"

/* A decoded step request; owns its document and tensors. */
struct curvd_step_in {
    struct curvd_doc *doc;
    long long step;
    struct curvd_tensor *grads, *params;
    size_t ngrads, nparams;
    int encoding, dtype; /* of the reply: the request's encoding and datatype */
};

void curvd_step_in_clear(struct curvd_step_in *s);

/* 1 when the Content-Type @ct is @want (parameters after ';' ignored). */
int curvd_ctype_is(const char *ct, const char *want);

/*
 * curvd_step_parse_head - parse the body up to the step number: the JSON
 * (all of it, or the header of @hl bytes when the binary extension's
 * Inference-Header-Content-Length @hl is given), its members (step,
 * gradients, params, loss and nothing else) and the step number.
 * Return 0, or -1 with @p (MALFORMED_JSON, BAD_BINARY, BAD_TENSOR,
 * UNKNOWN_MEMBER, UNSUPPORTED_MEDIA_TYPE, NO_MEMORY).
 */
int curvd_step_parse_head(const unsigned char *body, size_t body_len, const char *hl,
                          const char *content_type, struct curvd_step_in *in,
                          struct curvd_binary *bin, int *binary, struct curvd_problem *p);

/*
 * curvd_step_decode_tensors - "gradients" (required) and "params" in
 * document order (binary bytes follow it) into @g and @theta, each
 * curv_layout_dim(@l) doubles. Return 0, or -1 with @p.
 */
int curvd_step_decode_tensors(const curv_layout *l, struct curvd_step_in *in,
                              struct curvd_binary *bin, int binary, double *g, double *theta,
                              struct curvd_problem *p);

#endif
