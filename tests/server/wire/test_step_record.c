/* SPDX-License-Identifier: MIT */
/* A step's record (wire/step_record.h): round trips bit for bit at both
 * widths, the sizes the format promises, an answer's bytes against their
 * definition, every refusal with its sentence, every truncation, and the
 * step and update digests against their canonical forms rebuilt here from
 * their description (request_digest.h, and the digest as it was before
 * curvd_step_walk, commit 1039cb0). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "wire/hash128.h"
#include "wire/request_digest.h"
#include "wire/step_record.h"

/* ---- Failing allocations (the allocator is wrapped: Makefile) ------------------------------ */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t sz);
void *__real_realloc(void *p, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t sz);
void *__wrap_realloc(void *p, size_t n);

static long fail_in = -1; /* allocations until one fails; -1: none fails */

static int alloc_fails(void)
{
    return fail_in >= 0 && fail_in-- == 0;
}

void *__wrap_malloc(size_t n)
{
    return alloc_fails() ? NULL : __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t sz)
{
    return alloc_fails() ? NULL : __real_calloc(n, sz);
}

void *__wrap_realloc(void *p, size_t n)
{
    return alloc_fails() ? NULL : __real_realloc(p, n);
}

/* ---- A step on a small layout ------------------------------------------------------------ */

/* Dense "a" 2 x (3 + bias) = 8 at 0, dense "b" 3 x (2 + bias) = 9 at 8,
 * vector "v" 2 at 17. */
#define DIM 19
#define NBLOCKS 3

static curv_layout *layout_new(void)
{
    curv_layout *l = curv_layout_new();
    assert_non_null(l);
    assert_int_equal(curv_layout_add_dense(l, "a", 2, 3, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "b", 3, 2, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "v", 2, NULL), CURV_OK);
    assert_int_equal(curv_layout_dim(l), DIM);
    return l;
}

/* A decoded step as curvd_step_decode_tensors() leaves it: layer 0 on "a"
 * (2 rows: activations 2 x 3, signals 2 x 2), layer 1 on "b" (1 row:
 * 1 x 2 and 1 x 3). Points into itself: fill in place, never copy. */
struct step {
    double g[DIM], theta[DIM], gsq[DIM];
    double acts0[6], sig0[4], acts1[2], sig1[3];
    struct curvd_layer_in layers[2];
    struct curvd_step_in in;
};

static void fill_vec(double *v, size_t n, double base)
{
    for (size_t i = 0; i < n; i++) /* multiples of 1/8: floats */
        v[i] = base + 0.125 * (double)(i % 9) - 0.5;
}

/* Every value a float, among them -0, a float subnormal and the largest
 * float; with @wide, the gradient, the loss and layer 1's activations
 * each hold values that are not floats (0.1, double subnormals, huge
 * finite values), and -0 stays among them. */
static void step_fill(struct step *s, int wide)
{
    memset(s, 0, sizeof *s);
    fill_vec(s->g, DIM, 0);
    fill_vec(s->theta, DIM, 3);
    fill_vec(s->gsq, DIM, 1);
    fill_vec(s->acts0, 6, -2);
    fill_vec(s->sig0, 4, 5);
    fill_vec(s->acts1, 2, 7);
    fill_vec(s->sig1, 3, -7);
    s->g[0] = -0.0;
    s->g[1] = FLT_TRUE_MIN;
    s->g[2] = FLT_MAX;
    s->g[3] = -FLT_MIN;
    s->theta[4] = -0.0;
    s->sig1[2] = -0.0;
    double loss = 2.5;
    if (wide) {
        s->g[5] = 0.1;
        s->g[6] = DBL_TRUE_MIN;
        s->g[7] = 1e300;
        s->g[8] = -DBL_MAX;
        s->g[9] = 0x1p-1030; /* subnormal */
        loss = 1.0 / 3;
        s->acts1[1] = -1e-310;
    }
    s->layers[0] = (struct curvd_layer_in){
        .block = 0,
        .examples = 5,
        .acts = {.ndim = 2, .shape = {2, 3}, .count = 6, .data = s->acts0},
        .signals = {.ndim = 2, .shape = {2, 2}, .count = 4, .data = s->sig0}};
    s->layers[1] = (struct curvd_layer_in){
        .block = 1,
        .examples = 1,
        .acts = {.ndim = 2, .shape = {1, 2}, .count = 2, .data = s->acts1},
        .signals = {.ndim = 2, .shape = {1, 3}, .count = 3, .data = s->sig1}};
    s->in = (struct curvd_step_in){.step = 42,
                                   .has_loss = 1,
                                   .loss = loss,
                                   .batch = 64,
                                   .nparams = 1,
                                   .ngrad_sq = 1,
                                   .layers = s->layers,
                                   .nlayers = 2};
}

static void record_ok(struct curvd_record *r, const curv_layout *l, const struct step *s)
{
    assert_int_equal(curvd_record_step(r, l, &s->in, s->g, s->theta, s->gsq), 0);
    assert_int_equal(r->failed, 0);
}

/* A test's layout, its step and the step's record (no answers yet).
 * Points into itself: never copy. */
struct fx {
    curv_layout *l;
    struct step s;
    struct curvd_record r;
};

static void fx_init(struct fx *f, int wide)
{
    f->l = layout_new();
    step_fill(&f->s, wide);
    f->r = (struct curvd_record){0};
    record_ok(&f->r, f->l, &f->s);
}

static void fx_clear(struct fx *f)
{
    curvd_record_clear(&f->r);
    assert_null(f->r.buf);
    curv_layout_free(f->l);
}

/* ---- The format as step_record.h states it ----------------------------------------------- */

/* A vector: its count (8 bytes), a width byte, @w bytes a value. */
static size_t vec_size(size_t w, size_t n)
{
    return 8 + 1 + w * n;
}

/* The step's part of a record with both layers: the 8-byte header, each
 * number 8 bytes, each optional vector after its flag; @w[] the widths in
 * the walk's order: gradient, params, grad_sq, loss, layer 0's
 * activations and signals, layer 1's. */
static size_t step_size(const size_t w[8])
{
    return 8 + 8 + vec_size(w[0], DIM) + 8 + vec_size(w[1], DIM) + 8 + vec_size(w[2], DIM) + 8 +
           vec_size(w[3], 1) + 8 + 8 + 3 * 8 + vec_size(w[4], 6) + vec_size(w[5], 4) + 3 * 8 +
           vec_size(w[6], 2) + vec_size(w[7], 3);
}

/* Where the fields of an all-float record are: each the start of an
 * 8-byte number (a vector's width byte follows its count). */
#define VEC4(n) (9 + 4 * (n))
enum {
    AT_STEP = 8,
    AT_GRAD = AT_STEP + 8,
    AT_PARAMS_FLAG = AT_GRAD + VEC4(DIM),
    AT_GSQ_FLAG = AT_PARAMS_FLAG + 8 + VEC4(DIM),
    AT_LOSS_FLAG = AT_GSQ_FLAG + 8 + VEC4(DIM),
    AT_BATCH = AT_LOSS_FLAG + 8 + VEC4(1),
    AT_NLAYERS = AT_BATCH + 8,
    AT_L0_BLOCK = AT_NLAYERS + 8,
    AT_L0_ROWS = AT_L0_BLOCK + 16,
    AT_END = AT_L0_ROWS + 8 + VEC4(6) + VEC4(4) + 24 + VEC4(2) + VEC4(3)
};

/* ---- Checks ------------------------------------------------------------------------------ */

static void assert_bits(const double *got, const double *want, size_t n, const char *what)
{
    assert_non_null(got);
    for (size_t i = 0; i < n; i++)
        if (!tu_same_bits(got[i], want[i])) {
            print_error("%s[%zu]: got %a, want %a\n", what, i, got[i], want[i]);
            fail();
        }
}

static void assert_parsed(const struct curvd_record_read *rd, const struct step *s)
{
    const curv_step_input *si = &rd->si;
    assert_int_equal(rd->step, 42);
    assert_int_equal(si->len, DIM);
    assert_int_equal(si->dtype, CURV_F64);
    assert_bits(si->grad, s->g, DIM, "grad");
    assert_bits(si->params, s->theta, DIM, "params");
    assert_bits(si->grad_sq, s->gsq, DIM, "grad_sq");
    assert_true(si->has_loss);
    assert_bits(&si->loss, &s->in.loss, 1, "loss");
    assert_int_equal(si->batch, 64);
    assert_int_equal(si->n_layers, 2);
    const size_t rows[2] = {2, 1};
    for (size_t i = 0; i < 2; i++) {
        const curv_layer_stats *ls = &si->layers[i];
        const struct curvd_layer_in *li = &s->layers[i];
        assert_int_equal(ls->block, li->block);
        assert_int_equal(ls->rows, rows[i]);
        assert_int_equal(ls->examples, li->examples);
        assert_bits(ls->acts, li->acts.data, li->acts.count, "acts");
        assert_bits(ls->signals, li->signals.data, li->signals.count, "signals");
    }
}

/* The next answer must be @seq with @n values @want. */
static void next_answer_is(struct curvd_record_read *rd, uint64_t seq, const double *want, size_t n)
{
    curv_response resp;
    char why[128] = "";
    int rc = curvd_record_next_answer(rd, &resp, why, sizeof why);
    if (rc != 1)
        print_error("next answer: %d (%s)\n", rc, why);
    assert_int_equal(rc, 1);
    assert_int_equal(resp.seq, seq);
    assert_int_equal(resp.n_values, n);
    assert_bits(resp.values, want, n, "answer");
    free((void *)resp.values);
}

/* The next answer must be refused with @want. */
static void answer_refused(struct curvd_record_read *rd, const char *want)
{
    curv_response resp;
    char why[160] = "";
    assert_int_equal(curvd_record_next_answer(rd, &resp, why, sizeof why), -1);
    assert_string_equal(why, want);
}

static void no_more_answers(struct curvd_record_read *rd)
{
    curv_response resp;
    char why[64];
    assert_int_equal(curvd_record_next_answer(rd, &resp, why, sizeof why), 0);
}

/* Parse @len bytes of @rec from an exactly-sized heap copy, so that ASan
 * sees any read past the end; *@copy is the copy (free it after @rd). */
static int parse_copy(const unsigned char *rec, size_t len, const curv_layout *l,
                      struct curvd_record_read *rd, unsigned char **copy, char *why, size_t cap)
{
    *copy = malloc(len ? len : 1);
    assert_non_null(*copy);
    if (len)
        memcpy(*copy, rec, len);
    return curvd_record_parse(*copy, len, l, rd, why, cap);
}

/* A record read, and the exactly-sized copy it was read from. */
struct parsed {
    struct curvd_record_read rd;
    unsigned char *copy;
};

/* The first @len bytes of @r must parse on @l. */
static void parse_ok(const struct curvd_record *r, size_t len, const curv_layout *l,
                     struct parsed *p)
{
    char why[160] = "";
    int rc = parse_copy(r->buf, len, l, &p->rd, &p->copy, why, sizeof why);
    if (rc != 0)
        print_error("parse of %zu bytes: %s\n", len, why);
    assert_int_equal(rc, 0);
}

static void parsed_clear(struct parsed *p)
{
    curvd_record_read_clear(&p->rd);
    assert_null(p->rd.owned);
    assert_null(p->rd.layers);
    free(p->copy);
}

/* @rec must be refused with @want, and leave @rd empty. */
static void refused(const unsigned char *rec, size_t len, const curv_layout *l, const char *want)
{
    struct curvd_record_read rd;
    unsigned char *copy;
    char why[160] = "";
    assert_int_equal(parse_copy(rec, len, l, &rd, &copy, why, sizeof why), -1);
    assert_string_equal(why, want);
    assert_null(rd.owned);
    assert_null(rd.layers);
    curvd_record_read_clear(&rd);
    free(copy);
}

/* @r's bytes with the byte at @at set to @v, refused with @want. */
static void byte_patched_refused(const struct curvd_record *r, size_t at, unsigned char v,
                                 const curv_layout *l, const char *want)
{
    unsigned char *b = malloc(r->len);
    assert_non_null(b);
    memcpy(b, r->buf, r->len);
    b[at] = v;
    refused(b, r->len, l, want);
    free(b);
}

/* @r's bytes with the 8-byte number at @at set to @v, refused with @want. */
static void patched_refused(const struct curvd_record *r, size_t at, uint64_t v,
                            const curv_layout *l, const char *want)
{
    unsigned char *b = malloc(r->len);
    assert_non_null(b);
    memcpy(b, r->buf, r->len);
    tu_put_le(b + at, v, 8);
    refused(b, r->len, l, want);
    free(b);
}

/* ---- Round trips ------------------------------------------------------------------------- */

static const double answer1[3] = {-0.0, 1.5, FLT_TRUE_MIN};
static const double answer2[4] = {0.1, DBL_TRUE_MIN, -1e300, -0.0};
#define SEQ1 7u
#define SEQ2 ((uint64_t)1 << 40)

static void append_answers(struct curvd_record *r)
{
    const curv_response a1 = {SEQ1, 3, answer1}, a2 = {SEQ2, 4, answer2};
    assert_int_equal(curvd_record_answer(r, &a1), 0);
    assert_int_equal(curvd_record_answer(r, &a2), 0);
}

static void round_trip(int wide)
{
    struct fx f;
    fx_init(&f, wide);
    /* All floats: 4 bytes a value; a vector with one value that is not
     * a float: 8 bytes for each of its values. */
    const size_t w[8] = {wide ? 8 : 4, 4, 4, wide ? 8 : 4, 4, 4, wide ? 8 : 4, 4};
    assert_int_equal(f.r.len, step_size(w));
    size_t step_len = f.r.len;
    append_answers(&f.r);
    assert_int_equal(f.r.len, step_len + 8 + vec_size(4, 3) + 8 + vec_size(8, 4));

    struct parsed p;
    parse_ok(&f.r, f.r.len, f.l, &p);
    assert_parsed(&p.rd, &f.s);
    next_answer_is(&p.rd, SEQ1, answer1, 3);
    next_answer_is(&p.rd, SEQ2, answer2, 4);
    no_more_answers(&p.rd);
    no_more_answers(&p.rd);
    parsed_clear(&p);
    fx_clear(&f);
    curvd_record_clear(NULL);
}

static void test_round_trip_floats(void **state)
{
    (void)state;
    round_trip(0);
}

static void test_round_trip_doubles(void **state)
{
    (void)state;
    round_trip(1);
}

/* Params, grad_sq, loss and layers not sent: none comes back; a record
 * is started over by the next step (its answers go with it). */
static void test_optional_parts_absent(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 0);
    append_answers(&f.r);
    struct curvd_step_in *in = &f.s.in;
    in->nparams = in->ngrad_sq = 0;
    in->has_loss = 0;
    in->nlayers = 0;
    in->layers = NULL;
    in->batch = 0;
    record_ok(&f.r, f.l, &f.s);
    assert_int_equal(f.r.len, 8 + 8 + vec_size(4, DIM) + 3 * 8 + 8 + 8);

    struct parsed p;
    parse_ok(&f.r, f.r.len, f.l, &p);
    const curv_step_input *si = &p.rd.si;
    assert_int_equal(p.rd.step, 42);
    assert_bits(si->grad, f.s.g, DIM, "grad");
    assert_null(si->params);
    assert_null(si->grad_sq);
    assert_false(si->has_loss);
    assert_int_equal(si->batch, 0);
    assert_int_equal(si->n_layers, 0);
    assert_null(si->layers);
    no_more_answers(&p.rd);
    parsed_clear(&p);
    fx_clear(&f);
}

/* An answer's bytes as the format defines them: the sequence number, the
 * count, the width (4 when every value converts to a float and back to
 * itself, else 8), then each value's bits little-endian. */
static size_t answer_reference(unsigned char *b, uint64_t seq, const double *v, size_t n)
{
    int w = 4;
    for (size_t i = 0; i < n; i++)
        if ((double)(float)v[i] != v[i])
            w = 8;
    tu_put_le(b, seq, 8);
    tu_put_le(b + 8, n, 8);
    b[16] = (unsigned char)w;
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        if (w == 4) {
            float f = (float)v[i];
            uint32_t b32;
            memcpy(&b32, &f, sizeof b32);
            bits = b32;
        } else {
            memcpy(&bits, &v[i], sizeof bits);
        }
        tu_put_le(b + 17 + (size_t)w * i, bits, (unsigned)w);
    }
    return 17 + (size_t)w * n;
}

/* The width chosen and the bytes written in one pass over floats, with
 * one value that is not a float (0.1, a double subnormal, a NaN) at each
 * place of vectors of every length up to a few vectors' width. */
static void test_answer_bytes(void **state)
{
    (void)state;
    enum { N = 40 };
    const double tricky[] = {-0.0, 0.0, FLT_TRUE_MIN, -FLT_MAX, 1.5, FLT_MIN, -3.25};
    const double wide[] = {0.1, DBL_TRUE_MIN, NAN, 1e300};
    double v[N];
    unsigned char want[17 + 8 * N];
    for (size_t n = 0; n <= N; n++) {
        for (size_t at = 0; at <= n; at++) { /* at == n: every value a float */
            for (size_t i = 0; i < n; i++)
                v[i] = i == at ? wide[(n + at) % 4] : tricky[(i + n) % 7];
            struct curvd_record r = {0};
            const curv_response a = {SEQ1, n, v};
            assert_int_equal(curvd_record_answer(&r, &a), 0);
            size_t len = answer_reference(want, SEQ1, v, n);
            assert_int_equal(r.len, len);
            if (memcmp(r.buf, want, len) != 0)
                fail_msg("%zu values, not a float at %zu: other bytes", n, at);
            curvd_record_clear(&r);
        }
    }
}

/* ---- Refusals ---------------------------------------------------------------------------- */

#define EARLY "the record ends early"
#define WRONG_LENGTH "a vector has the wrong length"
#define NO_BLOCK "a layer entry names no block of the layout, or no rows"

static void test_refusals(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 0);
    const curv_layout *l = f.l;
    struct curvd_record *r = &f.r;
    assert_int_equal(r->len, AT_END);

    /* Another format, or another version of this one. */
    const char *other = "the record is not a curvd step record of this version";
    byte_patched_refused(r, 7, '2', l, other);
    byte_patched_refused(r, 0, 'C', l, other);

    /* Vectors: a count other than the layout's, or read on another layout. */
    patched_refused(r, AT_GRAD, DIM - 1, l, WRONG_LENGTH);
    patched_refused(r, AT_PARAMS_FLAG + 8, DIM + 1, l, WRONG_LENGTH);
    patched_refused(r, AT_LOSS_FLAG + 8, 2, l, WRONG_LENGTH);
    curv_layout *wider = layout_new();
    assert_int_equal(curv_layout_add_vector(wider, "w", 1, NULL), CURV_OK);
    refused(r->buf, r->len, wider, WRONG_LENGTH);
    curv_layout_free(wider);

    /* A width byte other than 4 or 8. */
    const unsigned char widths[] = {0, 2, 3, 5, 16, 255};
    for (size_t i = 0; i < sizeof widths; i++)
        byte_patched_refused(r, AT_GRAD + 8, widths[i], l, "a vector has an unknown width");

    /* Optional vectors' flags are 0 or 1. */
    patched_refused(r, AT_PARAMS_FLAG, 2, l, "a flag is neither 0 nor 1");
    patched_refused(r, AT_GSQ_FLAG, UINT64_MAX, l, "a flag is neither 0 nor 1");
    patched_refused(r, AT_LOSS_FLAG, 2, l, "a flag is neither 0 nor 1");

    /* Layers: a block out of range, no rows, rows that do not fit the
     * activations (rows x n_in) or overflow them, a block of another shape. */
    patched_refused(r, AT_L0_BLOCK, NBLOCKS, l, NO_BLOCK);
    patched_refused(r, AT_L0_BLOCK, UINT64_MAX, l, NO_BLOCK);
    patched_refused(r, AT_L0_ROWS, 0, l, NO_BLOCK);
    patched_refused(r, AT_L0_BLOCK + 8, 0, l, "a layer entry has no examples");
    patched_refused(r, AT_L0_ROWS, 3, l, WRONG_LENGTH);
    patched_refused(r, AT_L0_ROWS, 1, l, WRONG_LENGTH);
    patched_refused(r, AT_L0_ROWS, (uint64_t)1 << 40, l, WRONG_LENGTH);
    patched_refused(r, AT_L0_ROWS, UINT64_MAX / 2, l, "a layer entry's shape overflows");
    patched_refused(r, AT_L0_BLOCK, 1, l, WRONG_LENGTH); /* "b" takes 2 x 2 */
    patched_refused(r, AT_L0_BLOCK, 2, l, WRONG_LENGTH); /* "v" takes 2 x 1 */

    /* More layers than the bytes left hold: found at once, or at the end. */
    patched_refused(r, AT_NLAYERS, 3, l, EARLY);
    patched_refused(r, AT_NLAYERS, (uint64_t)1 << 62, l, EARLY);
    patched_refused(r, AT_NLAYERS, UINT64_MAX, l, EARLY);

    /* The same record as it was parses (the patches above were the cause). */
    struct parsed p;
    parse_ok(r, r->len, l, &p);
    assert_parsed(&p.rd, &f.s);
    parsed_clear(&p);

    /* An answer with an unknown width is refused when it is read. */
    append_answers(r);
    r->buf[AT_END + 8 + 8] = 6;
    parse_ok(r, r->len, l, &p);
    answer_refused(&p.rd, "an answer: a vector has an unknown width");
    parsed_clear(&p);
    fx_clear(&f);
}

/* Every prefix of a record with two answers: the step's part cut is
 * refused, a cut inside an answer is refused when that answer is read,
 * and a cut between answers is a record with fewer answers. */
static void test_every_truncation(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 1);
    const size_t step_end = f.r.len, first_end = step_end + 8 + vec_size(4, 3);
    append_answers(&f.r);
    const size_t len = f.r.len;
    for (size_t cut = 0; cut < step_end; cut++)
        refused(f.r.buf, cut, f.l,
                cut < 8 ? "the record is not a curvd step record of this version" : EARLY);
    for (size_t cut = step_end; cut <= len; cut++) {
        struct parsed p;
        parse_ok(&f.r, cut, f.l, &p);
        assert_parsed(&p.rd, &f.s);
        if (cut >= first_end)
            next_answer_is(&p.rd, SEQ1, answer1, 3);
        if (cut == len)
            next_answer_is(&p.rd, SEQ2, answer2, 4);
        if (cut == step_end || cut == first_end || cut == len)
            no_more_answers(&p.rd);
        else
            answer_refused(&p.rd, "an answer: " EARLY);
        parsed_clear(&p);
    }
    fx_clear(&f);
}

/* ---- Out of memory ----------------------------------------------------------------------- */

static void test_allocation_failures(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 1);
    const curv_layout *l = f.l;
    struct curvd_record *r = &f.r;

    /* Writing: the record fails and stays failed until started over. */
    struct curvd_record empty = {0};
    fail_in = 0;
    assert_int_equal(curvd_record_step(&empty, l, &f.s.in, f.s.g, f.s.theta, f.s.gsq), -1);
    assert_true(empty.failed);
    const curv_response small = {SEQ1, 3, answer1};
    assert_int_equal(curvd_record_answer(&empty, &small), -1);
    assert_int_equal(fail_in, -1);
    curvd_record_clear(&empty);
    double big[600]; /* 4.8 KB at 8 bytes: past the first 4 KiB */
    for (size_t i = 0; i < 600; i++)
        big[i] = 0.1 * (double)i;
    const curv_response a_big = {SEQ2, 600, big};
    fail_in = 0;
    assert_int_equal(curvd_record_answer(r, &a_big), -1);
    assert_true(r->failed);
    assert_int_equal(curvd_record_answer(r, &small), -1);
    record_ok(r, l, &f.s);
    assert_int_equal(curvd_record_answer(r, &a_big), 0);

    /* Reading: each allocation of the parse failing in turn. */
    struct curvd_record_read rd;
    unsigned char *copy;
    char why[160];
    long k = 0;
    for (;; k++) {
        copy = malloc(r->len);
        assert_non_null(copy);
        memcpy(copy, r->buf, r->len);
        fail_in = k;
        int rc = curvd_record_parse(copy, r->len, l, &rd, why, sizeof why);
        int failed = fail_in == -1;
        fail_in = -1;
        if (!failed) {
            assert_int_equal(rc, 0);
            break;
        }
        assert_int_equal(rc, -1);
        assert_string_equal(why, "out of memory reading a step record");
        assert_null(rd.owned);
        assert_null(rd.layers);
        free(copy);
    }
    assert_int_equal(k, 2); /* the vectors, the layers */
    assert_parsed(&rd, &f.s);
    /* An answer that cannot be allocated is still there to read. */
    fail_in = 0;
    answer_refused(&rd, "out of memory reading a step record");
    next_answer_is(&rd, SEQ2, big, 600);
    no_more_answers(&rd);
    curvd_record_read_clear(&rd);
    free(copy);
    fx_clear(&f);
}

/* ---- Digests ----------------------------------------------------------------------------- */

/* A canonical byte string: fixed-width little-endian fields. */
struct canon {
    unsigned char b[2048];
    size_t len;
};

static void canon_u64(struct canon *c, uint64_t v)
{
    assert_true(c->len + 8 <= sizeof c->b);
    tu_put_le(c->b + c->len, v, 8);
    c->len += 8;
}

/* The count, then each value's IEEE 754 bits, -0 written as +0. */
static void canon_vec(struct canon *c, const double *v, size_t n)
{
    canon_u64(c, n);
    for (size_t i = 0; i < n; i++) {
        uint64_t bits;
        memcpy(&bits, &v[i], sizeof bits);
        canon_u64(c, bits == (uint64_t)1 << 63 ? 0 : bits);
    }
}

/* "mm3-128:" and the 32 hex digits of MurmurHash3 x64_128 (seed 0) of
 * @tag with its NUL, then @c. */
static void canon_digest(const char *tag, const struct canon *c, char out[CURVD_DIGEST_TEXT])
{
    struct curvd_hash128 h;
    unsigned char d[16];
    curvd_hash128_init(&h, 0);
    curvd_hash128_update(&h, tag, strlen(tag) + 1);
    curvd_hash128_update(&h, c->b, c->len);
    curvd_hash128_final(&h, d);
    int n = snprintf(out, CURVD_DIGEST_TEXT, "mm3-128:");
    for (int i = 0; i < 16; i++)
        n += snprintf(out + n, CURVD_DIGEST_TEXT - (size_t)n, "%02x", d[i]);
    assert_int_equal(n, CURVD_DIGEST_TEXT - 1);
}

/* The step request's canonical form: the step, the gradient; params,
 * grad_sq and the loss each after whether it was sent; the batch, the
 * layers' count and each layer's block, examples, rows, activations and
 * signals. */
static void step_canon_digest(const struct step *s, char out[CURVD_DIGEST_TEXT])
{
    struct canon c = {.len = 0};
    canon_u64(&c, (uint64_t)s->in.step);
    canon_vec(&c, s->g, DIM);
    canon_u64(&c, s->in.nparams != 0);
    if (s->in.nparams)
        canon_vec(&c, s->theta, DIM);
    canon_u64(&c, s->in.ngrad_sq != 0);
    if (s->in.ngrad_sq)
        canon_vec(&c, s->gsq, DIM);
    canon_u64(&c, s->in.has_loss != 0);
    if (s->in.has_loss)
        canon_vec(&c, &s->in.loss, 1);
    canon_u64(&c, s->in.batch);
    canon_u64(&c, s->in.nlayers);
    for (size_t i = 0; i < s->in.nlayers; i++) {
        const struct curvd_layer_in *li = &s->layers[i];
        canon_u64(&c, li->block);
        canon_u64(&c, li->examples);
        canon_u64(&c, li->acts.shape[0]);
        canon_vec(&c, li->acts.data, li->acts.count);
        canon_vec(&c, li->signals.data, li->signals.count);
    }
    canon_digest("curvd step request 1", &c, out);
}

static void digest_is_canonical(const curv_layout *l, const struct step *s)
{
    char got[CURVD_DIGEST_TEXT], want[CURVD_DIGEST_TEXT];
    curvd_step_digest(l, &s->in, s->g, s->theta, s->gsq, got);
    step_canon_digest(s, want);
    assert_string_equal(got, want);
}

static void test_step_digest_unchanged(void **state)
{
    (void)state;
    curv_layout *l = layout_new();
    struct step s;
    step_fill(&s, 1);
    digest_is_canonical(l, &s);
    char all[CURVD_DIGEST_TEXT], fewer[CURVD_DIGEST_TEXT], pos0[CURVD_DIGEST_TEXT];
    curvd_step_digest(l, &s.in, s.g, s.theta, s.gsq, all);
    /* Without params and loss, and one layer: what was not sent is not read. */
    s.in.nparams = 0;
    s.in.has_loss = 0;
    s.in.nlayers = 1;
    s.theta[0] = s.in.loss = 99;
    digest_is_canonical(l, &s);
    curvd_step_digest(l, &s.in, s.g, NULL, s.gsq, fewer);
    assert_string_not_equal(fewer, all);
    /* Nothing optional: grad_sq absent, no layers. */
    s.in.ngrad_sq = 0;
    s.in.nlayers = 0;
    digest_is_canonical(l, &s);
    /* -0 and +0 are one request. */
    s.g[0] = 0.0;
    digest_is_canonical(l, &s);
    curvd_step_digest(l, &s.in, s.g, NULL, NULL, pos0);
    s.g[0] = -0.0;
    curvd_step_digest(l, &s.in, s.g, NULL, NULL, all);
    assert_string_equal(all, pos0);
    curv_layout_free(l);
}

/* Layer tensors kept as floats (binary FP32 statistics) give the digest
 * and the record bytes of the same values as doubles: every value of the
 * all-float step is a float, among them -0, a float subnormal and the
 * largest float. */
static void test_float_layers(void **state)
{
    (void)state;
    curv_layout *l = layout_new();
    struct step s;
    step_fill(&s, 0);
    s.acts0[1] = FLT_TRUE_MIN, s.acts0[2] = -FLT_MAX, s.sig0[3] = -0.0;
    char want[CURVD_DIGEST_TEXT], got[CURVD_DIGEST_TEXT];
    curvd_step_digest(l, &s.in, s.g, s.theta, s.gsq, want);
    struct curvd_record a = {0}, b = {0};
    record_ok(&a, l, &s);
    float f[4][6];
    const double *src[4] = {s.acts0, s.sig0, s.acts1, s.sig1};
    struct curvd_tensor *t[4] = {&s.layers[0].acts, &s.layers[0].signals, &s.layers[1].acts,
                                 &s.layers[1].signals};
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < t[k]->count; i++)
            f[k][i] = (float)src[k][i];
        t[k]->fdata = f[k];
        t[k]->data = NULL;
    }
    curvd_step_digest(l, &s.in, s.g, s.theta, s.gsq, got);
    assert_string_equal(got, want);
    record_ok(&b, l, &s);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.buf, b.buf, a.len);
    curvd_record_clear(&a);
    curvd_record_clear(&b);
    curv_layout_free(l);
}

/* Decode a step body whose layer on "a" has binary FP32 activations
 * (12 bytes of @tail) and signals @signals (a tensor object). */
static void decode_layer_body(const curv_layout *l, const char *signals, const unsigned char *tail,
                              size_t tail_len, struct curvd_step_in *in)
{
    char json[1024];
    int n = snprintf(
        json, sizeof json,
        "{\"step\":1,\"gradients\":["
        "{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2,4],\"data\":[1,2,3,4,5,6,7,8]},"
        "{\"name\":\"b\",\"datatype\":\"FP64\",\"shape\":[3,3],"
        "\"data\":[1,2,3,4,5,6,7,8,9]},"
        "{\"name\":\"v\",\"datatype\":\"FP64\",\"shape\":[2],\"data\":[1,2]}],"
        "\"layers\":[{\"block\":\"a\",\"activations\":{\"name\":\"x\",\"datatype\":"
        "\"FP32\",\"shape\":[1,3],\"parameters\":{\"binary_data_size\":12}},"
        "\"signals\":%s}]}",
        signals);
    assert_true(n > 0 && (size_t)n < sizeof json);
    unsigned char body[1200];
    memcpy(body, json, (size_t)n);
    memcpy(body + n, tail, tail_len);
    char hl[24];
    snprintf(hl, sizeof hl, "%d", n);
    struct curvd_binary bin;
    struct curvd_problem p;
    int binary = 0;
    double g[DIM], theta[DIM], gsq[DIM];
    curvd_problem_init(&p);
    assert_int_equal(curvd_step_parse_head(body, (size_t)n + tail_len, hl,
                                           "application/octet-stream", in, &bin, &binary, &p),
                     0);
    if (curvd_step_decode_tensors(l, in, &bin, binary, g, theta, gsq, &p) != 0)
        fail_msg("decode: %s", p.detail);
}

/* A layer's activations and signals both in FP32 bytes stay floats; with
 * one of them JSON, the floats are widened so that libcurv gets one type
 * per layer. */
static void test_layer_floats_decoded(void **state)
{
    (void)state;
    curv_layout *l = layout_new();
    const unsigned char x[20] = {0,    0,    0x80, 0x3f, 0, 0,    0, 0x40, 0,    0,
                                 0x40, 0x40, 0,    0,    0, 0x3f, 0, 0,    0x80, 0x3e};
    struct curvd_step_in in = {0};
    decode_layer_body(l,
                      "{\"name\":\"s\",\"datatype\":\"FP32\",\"shape\":[1,2],"
                      "\"parameters\":{\"binary_data_size\":8}}",
                      x, 20, &in);
    assert_int_equal(in.nlayers, 1);
    assert_true(in.layers[0].acts.fdata && !in.layers[0].acts.data);
    assert_true(in.layers[0].signals.fdata && in.layers[0].signals.fdata[1] == 0.25f);
    curv_layer_stats ls;
    curvd_step_layer_stats(&in, &ls);
    assert_int_equal(ls.f32, 1);
    assert_ptr_equal(ls.acts, in.layers[0].acts.fdata);
    curvd_step_in_clear(&in);
    memset(&in, 0, sizeof in);
    decode_layer_body(l,
                      "{\"name\":\"s\",\"datatype\":\"FP32\",\"shape\":[1,2],\"data\":[0.5,0.25]}",
                      x, 12, &in);
    assert_true(!in.layers[0].acts.fdata && in.layers[0].acts.data);
    assert_true(in.layers[0].acts.data[0] == 1.0 && in.layers[0].acts.data[2] == 3.0);
    assert_true(!in.layers[0].signals.fdata && in.layers[0].signals.data[1] == 0.25);
    curvd_step_layer_stats(&in, &ls);
    assert_int_equal(ls.f32, 0);
    curvd_step_in_clear(&in);
    curv_layout_free(l);
}

static void test_update_digest(void **state)
{
    (void)state;
    const double delta[5] = {-0.0, 0.1, DBL_TRUE_MIN, -1e300, 3};
    for (size_t n = 0; n <= 5; n++) {
        struct canon c = {.len = 0};
        canon_vec(&c, delta, n);
        char got[CURVD_DIGEST_TEXT], want[CURVD_DIGEST_TEXT];
        curvd_update_digest(delta, n, got);
        canon_digest("curvd step update 1", &c, want);
        assert_string_equal(got, want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_floats),     cmocka_unit_test(test_round_trip_doubles),
        cmocka_unit_test(test_optional_parts_absent), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_every_truncation),      cmocka_unit_test(test_allocation_failures),
        cmocka_unit_test(test_step_digest_unchanged), cmocka_unit_test(test_update_digest),
        cmocka_unit_test(test_answer_bytes),          cmocka_unit_test(test_float_layers),
        cmocka_unit_test(test_layer_floats_decoded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
