/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: a POST /v1/sessions/{id}/steps body, decoded by the
 * daemon's own code (server/wire/step_decode.c: curvd_step_parse_head +
 * curvd_step_decode_tensors, as api/steps.c calls them) against a fixed
 * layout: dense "fc" 2x3 with bias (wire shape [2,4]) and vector "gain" [2].
 *
 * Input framing (2-byte little-endian prefix L, then the body):
 *   L == 0xFFFF: plain JSON (Content-Type: application/json);
 *   L == 0xFFFE: plain JSON sent as Content-Type: text/plain (415);
 *   otherwise:   the binary extension, Inference-Header-Content-Length: L,
 *                Content-Type: application/octet-stream (L > body length
 *                is the daemon's BAD_BINARY error path).
 * Inputs shorter than 2 bytes are a plain JSON body.
 *
 * Checks beyond "no sanitizer report":
 *  - every problem has a 400/413/415/422/503 status and terminated texts;
 *  - decoded gradients/params are finite and, for FP32, exact floats, and
 *    share one datatype (docs/SERVER.md: "one datatype per request");
 *  - differential: the same body through an oracle that follows the same
 *    rules on a plain jansson tree (no scanner, no cuts). When the oracle
 *    accepts a body the daemon must too (unless the body uses the reserved
 *    key, or holds a NUL that jansson skips), with the same numbers;
 *  - encode round trip: the gradients (and params) rendered by
 *    curvd_out_tensors + curvd_out_finish, in every
 *    encoding and the request's datatypes, decode again (daemon: same bits;
 *    oracle: same numbers).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv.h"
#include "http/mem.h"
#include "wire/codec.h"
#include "wire/out.h"
#include "wire/step_decode.h"

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_step_body: " __VA_ARGS__);                                           \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

static curv_layout *layout;
static size_t dim;
static int verbose;                      /* FUZZ_VERBOSE=1: one line per input (for --replay) */
static int cur_enc = -1, cur_dtype = -1; /* the round trip under way, for messages */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    verbose = getenv("FUZZ_VERBOSE") != NULL;
    layout = curv_layout_new();
    if (!layout || curv_layout_add_dense(layout, "fc", 2, 3, 1, NULL) != CURV_OK ||
        curv_layout_add_vector(layout, "gain", 2, NULL) != CURV_OK)
        FAIL("cannot build the layout");
    dim = curv_layout_dim(layout);
    if (dim != 10)
        FAIL("layout dim %zu, expected 10", dim);
    return 0;
}

/* A decoded step body, by the daemon or by the oracle. */
struct decoded {
    struct curvd_step_in in; /* in.doc is NULL on the oracle's side */
    json_t *plain;           /* the oracle's tree */
    double g[16], theta[16], gsq[16];
    int pdtype; /* the params' datatype (in.dtype is the gradients') */
};

static void decoded_clear(struct decoded *d)
{
    curvd_step_in_clear(&d->in);
    json_decref(d->plain);
    memset(d, 0, sizeof *d);
}

static void finish_decoded(struct decoded *d)
{
    d->pdtype = d->in.nparams ? d->in.params[0].dtype : d->in.dtype;
}

/* The daemon: exactly what api/steps.c runs. */
static int daemon_decode(const unsigned char *body, size_t len, int binary, size_t json_len,
                         const char *ctype, struct decoded *d, struct curvd_problem *p)
{
    struct curvd_binary bin = {0};
    char hl[32];
    int is_binary = 0;
    memset(d, 0, sizeof *d);
    snprintf(hl, sizeof hl, "%zu", json_len);
    if (curvd_step_parse_head(body, len, binary ? hl : NULL, ctype, &d->in, &bin, &is_binary, p) !=
        0)
        return -1;
    if (is_binary != binary)
        FAIL("parse_head says binary=%d for binary=%d", is_binary, binary);
    if (curvd_step_decode_tensors(layout, &d->in, &bin, is_binary, d->g, d->theta, d->gsq, p) != 0)
        return -1;
    finish_decoded(d);
    return 0;
}

/* The oracle: the same member rules (step_decode.c) over a plain jansson
 * tree, so that the scanner (curvd_json_parse) is compared with jansson. */
static int oracle_decode(const unsigned char *body, size_t len, int binary, size_t json_len,
                         struct decoded *d, struct curvd_problem *p)
{
    struct curvd_binary bin = {0};
    json_error_t je;
    memset(d, 0, sizeof *d);
    if (!binary)
        json_len = len;
    else if (curvd_binary_init(&bin, body, len, json_len, p) != 0)
        return -1;
    d->plain = json_loadb((const char *)body, json_len, JSON_REJECT_DUPLICATES, &je);
    if (!d->plain)
        return curvd_problem_set(p, CURVD_R_MALFORMED_JSON, "", NULL, NULL, "%s", je.text);
    d->in.root = d->plain;
    d->in.max_elems = len;
    if (curvd_step_check_members(&d->in, p) != 0 ||
        curvd_step_decode_tensors(layout, &d->in, &bin, binary, d->g, d->theta, d->gsq, p) != 0)
        return -1;
    finish_decoded(d);
    return 0;
}

/* Does any object in @v have the key "$curvd_cut" (however it was spelled)? */
static int uses_reserved_key(const json_t *v)
{
    const char *key;
    json_t *child;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach((json_t *)v, key, child)
        {
            if (strcmp(key, "$curvd_cut") == 0 || uses_reserved_key(child))
                return 1;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            if (uses_reserved_key(child))
                return 1;
        }
    }
    return 0;
}

static void check_problem(const struct curvd_problem *p, const char *where)
{
    if (!p->reason)
        FAIL("%s: failed without a problem", where);
    if (p->http_status != 400 && p->http_status != 413 && p->http_status != 415 &&
        p->http_status != 422 && p->http_status != 503)
        FAIL("%s: unexpected status %d (%s: %s)", where, p->http_status, p->reason, p->detail);
    if (!memchr(p->detail, 0, sizeof p->detail) || !memchr(p->path, 0, sizeof p->path) ||
        !memchr(p->expected, 0, sizeof p->expected) || !memchr(p->got, 0, sizeof p->got))
        FAIL("%s: unterminated problem text", where);
}

static void check_values(const double *x, int dtype, const char *what)
{
    for (size_t i = 0; i < dim; i++) {
        if (!isfinite(x[i]))
            FAIL("%s[%zu] is not finite after a successful decode", what, i);
        if (dtype == CURV_F32 && (double)(float)x[i] != x[i])
            FAIL("%s[%zu] = %.17g is not an FP32 value", what, i, x[i]);
    }
}

static void check_decoded(const struct decoded *d)
{
    check_values(d->g, d->in.dtype, "gradients");
    if (d->in.params)
        check_values(d->theta, d->pdtype, "params");
    for (size_t i = 0; i < d->in.ngrads; i++)
        if (d->in.grads[i].dtype != d->in.dtype)
            FAIL("mixed datatypes accepted in gradients");
    for (size_t i = 0; i < d->in.nparams; i++)
        if (d->in.params[i].dtype != d->in.dtype)
            FAIL("params are %s, gradients %s: two datatypes accepted in one request",
                 d->in.params[i].dtype == CURV_F32 ? "FP32" : "FP64",
                 d->in.dtype == CURV_F32 ? "FP32" : "FP64");
}

/* Numerically equal (jansson reads "-0" as the integer 0). */
static void same_numbers(const double *a, const double *b, const char *what)
{
    for (size_t i = 0; i < dim; i++)
        if (a[i] != b[i])
            FAIL("%s[%zu]: %.17g vs %.17g (daemon vs oracle, or sent vs read back in "
                 "encoding %d)",
                 what, i, a[i], b[i], cur_enc);
}

static void same_bits(const double *a, const double *b, const char *what)
{
    if (memcmp(a, b, dim * sizeof *a) != 0)
        for (size_t i = 0; i < dim; i++)
            if (memcmp(&a[i], &b[i], sizeof a[i]) != 0)
                FAIL("round trip (%s, encoding %d) %s[%zu]: sent %a, read back %a",
                     cur_dtype == CURV_F32 ? "FP32" : "FP64", cur_enc, what, i, a[i], b[i]);
}

/* Render @g (and @theta when @with_params) as a step body in @enc and
 * @dtype, decode it both ways, and require the values back. */
static void round_trip(const double *g, const double *theta, int with_params, int dtype,
                       enum curvd_encoding enc)
{
    struct curvd_out out;
    struct curvd_problem p;
    cur_enc = (int)enc;
    cur_dtype = dtype;
    curvd_out_init(&out);
    curvd_problem_init(&p);
    curvd_out_lit(&out, "{\"step\":7,\"gradients\":");
    if (curvd_out_tensors(&out, layout, g, dtype, enc, &p))
        FAIL("curvd_out_tensors(gradients, enc %d): %s", (int)enc, p.detail);
    curvd_out_lit(&out, ",\"loss\":");
    curvd_out_real(&out, 0.5);
    if (with_params) {
        curvd_out_lit(&out, ",\"params\":");
        if (curvd_out_tensors(&out, layout, theta, dtype, enc, &p))
            FAIL("curvd_out_tensors(params, enc %d): %s", (int)enc, p.detail);
    }
    curvd_out_lit(&out, "}");
    if (curvd_out_finish(&out, &p) != 0)
        FAIL("curvd_out_finish(enc %d): %s", (int)enc, p.detail);
    if (out.json_len > out.len)
        FAIL("json_len %zu > len %zu", out.json_len, out.len);
    if ((enc == CURVD_ENC_BINARY) != (out.len > out.json_len))
        FAIL("binary tail of %zu bytes with encoding %d", out.len - out.json_len, (int)enc);
    unsigned char *body = curvd_out_take(&out);
    int binary = enc == CURVD_ENC_BINARY;
    for (int daemon = 1; daemon >= 0; daemon--) {
        struct decoded d;
        curvd_problem_init(&p);
        int rc =
            daemon ? daemon_decode(body, out.len, binary, out.json_len,
                                   binary ? "application/octet-stream" : "application/json", &d, &p)
                   : oracle_decode(body, out.len, binary, out.json_len, &d, &p);
        if (rc)
            FAIL("re-decoding our own %s body (enc %d, %s) fails: %s %s at %s: %.*s",
                 dtype == CURV_F32 ? "FP32" : "FP64", (int)enc, daemon ? "daemon" : "oracle",
                 p.reason, p.detail, p.path, (int)out.json_len, (const char *)body);
        if (d.in.step != 7 || d.in.dtype != dtype || d.in.encoding != (int)enc ||
            (d.in.params != NULL) != (with_params != 0))
            FAIL("round trip header: step %lld dtype %d enc %d params %d", d.in.step, d.in.dtype,
                 d.in.encoding, d.in.params != NULL);
        /* Bits through the daemon; numbers through the oracle, since
         * jansson reads "-0" as the integer 0. */
        if (daemon) {
            same_bits(g, d.g, "gradients");
            if (with_params)
                same_bits(theta, d.theta, "params");
        } else {
            same_numbers(g, d.g, "gradients");
            if (with_params)
                same_numbers(theta, d.theta, "params");
        }
        decoded_clear(&d);
    }
    curvd_mem_free(body);
    curvd_out_clear(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int binary = 0;
    size_t json_len = 0;
    const char *ctype = "application/json";
    if (size >= 2) {
        unsigned hl = (unsigned)data[0] | (unsigned)data[1] << 8;
        data += 2;
        size -= 2;
        if (hl == 0xFFFE) {
            ctype = "text/plain";
        } else if (hl != 0xFFFF) {
            binary = 1;
            json_len = hl;
            ctype = "application/octet-stream";
        }
    }
    /* An exact-size copy, so ASan sees any read past the body. */
    unsigned char *body = malloc(size ? size : 1);
    if (!body)
        return 0;
    if (size)
        memcpy(body, data, size);

    struct decoded d, j;
    struct curvd_problem p, pj;
    curvd_problem_init(&p);
    curvd_problem_init(&pj);
    int rc = daemon_decode(body, size, binary, json_len, ctype, &d, &p);
    int rj = oracle_decode(body, size, binary, json_len, &j, &pj);
    if (rc == 0 && !binary && strcmp(ctype, "application/json") != 0)
        FAIL("a plain JSON body sent as %s was accepted", ctype);
    if (verbose)
        fprintf(stderr, "%s body of %zu bytes: daemon %s%s%s, oracle %s%s%s\n",
                binary ? "binary" : "JSON", size, rc ? p.reason : "ok", rc ? ": " : "",
                rc ? p.detail : "", rj ? pj.reason : "ok", rj ? ": " : "", rj ? pj.detail : "");
    if (rc)
        check_problem(&p, "daemon");
    if (rj)
        check_problem(&pj, "oracle");
    if (rc == 0)
        check_decoded(&d);
    if (rj == 0 && rc != 0 && strcmp(p.reason, "UNSUPPORTED_MEDIA_TYPE") != 0) {
        /* The scanner reserves "$curvd_cut"; jansson alone does not. And
         * jansson 2.14 skips a NUL byte right after a number ("[1\0]" loads
         * as [1]) where the scanner, correctly, refuses it. */
        if (!uses_reserved_key(j.plain) && !memchr(body, 0, binary ? json_len : size))
            FAIL("the oracle (plain jansson) accepts the body, the daemon refuses it: %s %s at %s",
                 p.reason, p.detail, p.path);
    }
    if (rc == 0 && rj == 0) {
        if (d.in.step != j.in.step || d.in.dtype != j.in.dtype || d.pdtype != j.pdtype ||
            d.in.encoding != j.in.encoding || (d.in.params != NULL) != (j.in.params != NULL))
            FAIL("daemon and oracle disagree on step/dtype/encoding/params");
        same_numbers(d.g, j.g, "gradients");
        if (d.in.params)
            same_numbers(d.theta, j.theta, "params");
        if ((d.in.grad_sq != NULL) != (j.in.grad_sq != NULL) || d.in.nlayers != j.in.nlayers ||
            d.in.has_loss != j.in.has_loss || (d.in.has_loss && d.in.loss != j.in.loss))
            FAIL("daemon and oracle disagree on grad_sq/layers/loss");
        if (d.in.grad_sq)
            same_numbers(d.gsq, j.gsq, "grad_sq");
        for (size_t i = 0; i < d.in.nlayers; i++) {
            const struct curvd_layer_in *a = &d.in.layers[i], *b = &j.in.layers[i];
            if (a->block != b->block || a->examples != b->examples ||
                a->acts.count != b->acts.count || a->signals.count != b->signals.count ||
                memcmp(a->acts.data, b->acts.data, a->acts.count * sizeof(double)) ||
                memcmp(a->signals.data, b->signals.data, a->signals.count * sizeof(double)))
                FAIL("daemon and oracle disagree on layer %zu", i);
        }
    }
    if (rc == 0) {
        /* The daemon replies in the request's encoding; try all three. */
        int with_params = d.in.params != NULL;
        round_trip(d.g, d.theta, with_params, d.in.dtype, (enum curvd_encoding)d.in.encoding);
        for (int enc = CURVD_ENC_JSON; enc <= CURVD_ENC_BINARY; enc++)
            if (enc != d.in.encoding)
                round_trip(d.g, d.theta, with_params, d.in.dtype, (enum curvd_encoding)enc);
    }
    /* On failure the decoders leave partial results, as the daemon's
     * curvd_step_in does: clear them the same way. */
    decoded_clear(&d);
    decoded_clear(&j);
    free(body);
    return 0;
}
