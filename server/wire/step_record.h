/* SPDX-License-Identifier: MIT */
/*
 * A step's record: what the library was given for one step, in a form a
 * log can keep and a replay can feed to the library again, bit for bit
 * (docs/DURABILITY.md). A record is a fixed header, the step's input in
 * the order of curvd_step_walk(), then the answer to each of the step's
 * callbacks in the order they were given. Every field is little-endian;
 * a vector of doubles is stored as floats when every value is a float
 * (FP32 tensors decode to those exactly), so both widths give back the
 * very doubles that were recorded (-0 included).
 */
#ifndef CURVD_STEP_RECORD_H
#define CURVD_STEP_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "curv.h"
#include "wire/step_decode.h"

/*
 * curvd_step_walk - the fields a step reads, in one fixed order, to @u64
 * and @vec of @ctx: the step number, the gradient, params and grad_sq
 * (each optional one after whether it was sent), the loss likewise, the
 * batch, the layers' count and each layer's block, examples, rows,
 * activations and signals. What the request digest hashes and what a
 * record holds.
 */
struct curvd_step_sink {
    void (*u64)(void *ctx, uint64_t v);
    void (*vec)(void *ctx, const double *v, size_t n);
    /* A layer tensor kept as floats: the same as vec on its doubles. */
    void (*vecf)(void *ctx, const float *v, size_t n);
    void *ctx;
};
void curvd_step_walk(const curv_layout *l, const struct curvd_step_in *in, const double *g,
                     const double *theta, const double *gsq, const struct curvd_step_sink *s);

/* A record being written; @failed once out of memory (then nothing more
 * is written and the record must not be used). */
struct curvd_record {
    unsigned char *buf;
    size_t len, cap;
    int failed;
};

/* curvd_record_step - start @r over with step @in (decoded as for the
 * digest). Return 0, or -1 out of memory. */
int curvd_record_step(struct curvd_record *r, const curv_layout *l, const struct curvd_step_in *in,
                      const double *g, const double *theta, const double *gsq);

/* curvd_record_answer - append the answer @resp to the step's callback.
 * Return 0, or -1 out of memory (the record is then failed). */
int curvd_record_answer(struct curvd_record *r, const curv_response *resp);

/* curvd_record_clear - free and zero @r; NULL is a no-op. */
void curvd_record_clear(struct curvd_record *r);

/*
 * curvd_record_read - a record parsed for replay: the step's input as
 * library input (@si, its arrays owned by @rd), and a cursor over the
 * answers that follow. curvd_record_parse() checks the record against
 * layout @l (the gradient's length, each layer's block and shapes), so
 * that the library is never handed arrays shorter than it reads; -1 with
 * a sentence in @why[@cap] for a record that does not fit.
 */
struct curvd_record_read {
    uint64_t step;
    curv_step_input si;
    const unsigned char *p, *end; /* the answers not read yet */
    double *owned;                /* every vector, in one allocation */
    curv_layer_stats *layers;
};
int curvd_record_parse(const unsigned char *rec, size_t len, const curv_layout *l,
                       struct curvd_record_read *rd, char *why, size_t cap);

/* curvd_record_next_answer - the next answer into @resp (@resp->values
 * is a new allocation the caller frees), 1 when there is one, 0 at the
 * end, -1 with @why when the rest does not parse or memory ran out. */
int curvd_record_next_answer(struct curvd_record_read *rd, curv_response *resp, char *why,
                             size_t cap);

/* curvd_record_read_clear - free what @rd owns and zero it. */
void curvd_record_read_clear(struct curvd_record_read *rd);

#endif
