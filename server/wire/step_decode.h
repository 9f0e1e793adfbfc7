/* SPDX-License-Identifier: MIT */
/* Decoding the request bodies that carry tensors, plain JSON or the binary
 * extension, into flat vectors of a layout: step bodies (POST
 * /v1/sessions/{id}/steps) and callback answers (POST .../callbacks/{cb}). */
#ifndef CURVD_STEP_DECODE_H
#define CURVD_STEP_DECODE_H

#include <stddef.h>

#include "curv.h"
#include "wire/codec.h"

/* One "layers" entry: a layer's statistics for curvature estimation. */
struct curvd_layer_in {
    size_t block;    /* index in the layout */
    size_t examples; /* "examples", or the rows when absent */
    struct curvd_tensor acts, signals;
};

/* A decoded step request; owns its document, tensors and layers. */
struct curvd_step_in {
    struct curvd_doc *doc; /* the scanner's document, or NULL for a plain tree */
    json_t *root;          /* the body's object (borrowed from @doc or the caller) */
    long long step;
    int has_loss;
    double loss;
    size_t batch; /* examples behind the gradient; 0 when not sent */
    struct curvd_tensor *grads, *params, *grad_sq;
    size_t ngrads, nparams, ngrad_sq;
    struct curvd_layer_in *layers;
    size_t nlayers;
    int encoding, dtype; /* of the reply: the request's encoding and datatype */
    size_t max_elems;    /* bound on any tensor's elements (the body's size) */
};

void curvd_step_in_clear(struct curvd_step_in *s);

/* 1 when the Content-Type @ct is @want, its parameters after ';' naming
 * no charset other than UTF-8 (any other parameter is ignored). */
int curvd_ctype_is(const char *ct, const char *want);

/*
 * curvd_body_parse - parse a body that carries tensors: the JSON (all of
 * it, or the header of @hl bytes when the binary extension's
 * Inference-Header-Content-Length @hl is given; then @bin is the tail).
 * Return 0 with *@doc (caller frees), or -1 with
 * @p (MALFORMED_JSON, BAD_BINARY, UNSUPPORTED_MEDIA_TYPE, NO_MEMORY).
 */
int curvd_body_parse(const unsigned char *body, size_t body_len, const char *hl,
                     const char *content_type, struct curvd_doc **doc, struct curvd_binary *bin,
                     int *binary, struct curvd_problem *p);

/*
 * curvd_step_parse_head - curvd_body_parse(), then
 * curvd_step_check_members().
 * Return 0, or -1 with @p (MALFORMED_JSON, BAD_BINARY, BAD_TENSOR,
 * UNKNOWN_MEMBER, UNSUPPORTED_MEDIA_TYPE, NO_MEMORY).
 */
int curvd_step_parse_head(const unsigned char *body, size_t body_len, const char *hl,
                          const char *content_type, struct curvd_step_in *in,
                          struct curvd_binary *bin, int *binary, struct curvd_problem *p);

/* curvd_step_check_members - @in->root's members (step, gradients, params,
 * grad_sq, layers, loss, batch and nothing else), "loss", "batch" and
 * "step". */
int curvd_step_check_members(struct curvd_step_in *in, struct curvd_problem *p);

/*
 * curvd_step_decode_tensors - "gradients" (required), "params", "grad_sq"
 * and "layers" in document order (binary bytes follow it) into @g, @theta
 * and @gsq, each curv_layout_dim(@l) doubles, and @in->layers. A layer
 * entry is {"block", "examples" (optional), "activations": [rows, n_in],
 * "signals": [rows, n_out]}. Return 0, or -1 with @p.
 */
int curvd_step_decode_tensors(const curv_layout *l, struct curvd_step_in *in,
                              struct curvd_binary *bin, int binary, double *g, double *theta,
                              double *gsq, struct curvd_problem *p);

/* curvd_step_layer_stats - @in's layers as library input (arrays borrowed
 * from @in); @out has room for @in->nlayers entries. */
void curvd_step_layer_stats(const struct curvd_step_in *in, curv_layer_stats *out);

/*
 * curvd_answer_decode - the answer to callback @req: {"products": [[tensors
 * of vector 0], ...]} for a curvature product (into @values, n_vectors x
 * curv_layout_dim(@l) doubles), {"losses": [...]} or {"gram": [...]} (flat
 * or nested numbers, req->n_values of them) otherwise; the body as for
 * curvd_body_parse(). Return 0, or -1 with @p.
 */
int curvd_answer_decode(const unsigned char *body, size_t body_len, const char *hl,
                        const char *content_type, const curv_layout *l, const curv_request *req,
                        double *values, struct curvd_problem *p);

#endif
