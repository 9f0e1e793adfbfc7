/* SPDX-License-Identifier: MIT */
/* The codec: the body scanner against jansson, tricky JSON,
 * every error with its problem fields, round trips in every encoding, the
 * block mapping, and timings of the fast paths (printed, not asserted). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "srvutil.h"
#include "testutil.h"
#include "wire/codec.h"
#include "wire/json_scan.h"
#include "wire/out.h"
#include "wire/step_decode.h"

/* ---- helpers ------------------------------------------------------------ */

/* A growable string for generated bodies. */
struct buf {
    char *s;
    size_t len, cap;
};

static void buf_put(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->s = realloc(b->s, b->cap);
        assert_non_null(b->s);
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}

static void buf_str(struct buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* Parse @text from an exactly-sized heap copy, so that ASan sees any read
 * past the end. Returns the doc (NULL on error, with @p filled). */
static struct curvd_doc *parse(const char *text, size_t len, struct curvd_problem *p)
{
    char *copy = malloc(len ? len : 1);
    struct curvd_doc *doc = NULL;
    assert_non_null(copy);
    memcpy(copy, text, len);
    curvd_problem_init(p);
    if (curvd_json_parse(copy, len, &doc, p))
        doc = NULL;
    free(copy);
    return doc;
}

static struct curvd_doc *parse_ok(const char *text)
{
    struct curvd_problem p;
    struct curvd_doc *doc = parse(text, strlen(text), &p);
    if (!doc)
        print_error("parse failed: %s: %s\n", p.reason, p.detail);
    assert_non_null(doc);
    return doc;
}

static void parse_fails(const char *text, const char *reason, const char *in_detail)
{
    struct curvd_problem p;
    struct curvd_doc *doc = parse(text, strlen(text), &p);
    if (doc)
        print_error("parse of %s unexpectedly succeeded\n", text);
    assert_null(doc);
    if (strcmp(p.reason, reason) != 0)
        print_error("%s: %s (%s)\n", text, p.reason, p.detail);
    assert_string_equal(p.reason, reason);
    if (in_detail && !strstr(p.detail, in_detail))
        print_error("detail '%s' lacks '%s'\n", p.detail, in_detail);
    if (in_detail)
        assert_non_null(strstr(p.detail, in_detail));
}

/* Decode the tensor object that is the whole body (the doc is freed). */
static int decode_body(const char *text, size_t cap, struct curvd_tensor *t,
                       struct curvd_problem *p)
{
    struct curvd_doc *doc = parse_ok(text);
    curvd_problem_init(p);
    int rc = curvd_tensor_decode(curvd_doc_root(doc), "/t", doc, NULL, cap, t, p);
    curvd_doc_free(doc);
    return rc;
}

static void decode_fails(const char *text, size_t cap, const char *reason, const char *path,
                         const char *expected, const char *got)
{
    struct curvd_tensor t;
    struct curvd_problem p;
    int rc = decode_body(text, cap, &t, &p);
    if (rc == 0 || strcmp(p.reason, reason) != 0 || (path && strcmp(p.path, path) != 0))
        print_error("%s: rc %d reason %s path %s detail %s\n", text, rc, p.reason, p.path,
                    p.detail);
    assert_int_equal(rc, -1);
    assert_string_equal(p.reason, reason);
    assert_true(p.http_status >= 400);
    if (path)
        assert_string_equal(p.path, path);
    if (expected)
        assert_string_equal(p.expected, expected);
    if (got)
        assert_string_equal(p.got, got);
}

static curv_layout *test_layout(void)
{
    curv_layout *l = curv_layout_new();
    assert_non_null(l);
    assert_int_equal(curv_layout_add_dense(l, "fc1", 3, 4, 1, NULL), CURV_OK);         /* [3,5] */
    assert_int_equal(curv_layout_add_conv2d(l, "conv", 2, 1, 2, 2, 1, NULL), CURV_OK); /* [2,5] */
    assert_int_equal(curv_layout_add_vector(l, "gain", 3, NULL), CURV_OK);             /* [3] */
    assert_int_equal(curv_layout_add_dense(l, "out", 2, 3, 0, NULL), CURV_OK);         /* [2,3] */
    return l;
}

/* ---- problems ----------------------------------------------------------- */

static void test_problem_first_error_wins(void **state)
{
    (void)state;
    struct curvd_problem p;
    curvd_problem_init(&p);
    assert_null(p.reason);
    assert_int_equal(curvd_problem_set(&p, CURVD_R_NON_FINITE, "/a", "x", "y", "first %d", 1), -1);
    assert_int_equal(curvd_problem_set(&p, CURVD_R_BAD_BASE64, "/b", NULL, NULL, "second"), -1);
    assert_string_equal(p.reason, "NON_FINITE");
    assert_int_equal(p.http_status, 422);
    assert_string_equal(p.path, "/a");
    assert_string_equal(p.expected, "x");
    assert_string_equal(p.got, "y");
    assert_string_equal(p.detail, "first 1");
    assert_int_equal(curvd_problem_set(NULL, CURVD_R_INTERNAL, NULL, NULL, NULL, "x"), -1);
    assert_string_equal(curvd_reason_name(CURVD_R_TOO_LARGE), "TOO_LARGE");
    assert_int_equal(curvd_reason_status(CURVD_R_TOO_LARGE), 413);
    assert_int_equal(curvd_reason_status(CURVD_R_MALFORMED_JSON), 400);
    assert_string_equal(curvd_reason_name((enum curvd_reason)999), "INTERNAL");
    assert_non_null(curvd_reason_title(CURVD_R_SHAPE_MISMATCH));
}

/* ---- numbers ------------------------------------------------------------ */

/* ---- scanner vs jansson -------------------------------------------------- */

struct gen {
    tu_rng r;
    struct buf b;
    size_t cuts; /* plain "data" keys whose value the scanner must cut */
};

static void ws(struct gen *g)
{
    static const char w[] = " \t\n\r";
    while (tu_uniform(&g->r) < 0.3)
        buf_put(&g->b, &w[(int)(tu_uniform(&g->r) * 4)], 1);
}

static void gen_number(struct gen *g)
{
    static const double special[] = {0.0, -0.0, 1.0, -1.0, -1e-300, 1e308, 5e-324, -1.5e-310};
    char s[40];
    double u = tu_uniform(&g->r), x;
    if (u < 0.2)
        x = special[(int)(tu_uniform(&g->r) * 8)];
    else if (u < 0.5)
        x = tu_normal(&g->r) * pow(10.0, (int)(tu_uniform(&g->r) * 600) - 300);
    else
        x = (float)tu_normal(&g->r);
    if (tu_uniform(&g->r) < 0.1)
        snprintf(s, sizeof s, "%d", (int)(tu_normal(&g->r) * 1000));
    else
        snprintf(s, sizeof s, tu_uniform(&g->r) < 0.5 ? "%.17g" : "%.9g", x);
    char *e = strstr(s, "e+");
    if (e && tu_uniform(&g->r) < 0.5)
        memmove(e + 1, e + 2, strlen(e + 2) + 1); /* "1e300" */
    if (e && tu_uniform(&g->r) < 0.5)
        *e = 'E';
    buf_str(&g->b, s);
}

/* A regular or ragged nest of numbers, 1..3 deep. */
static void gen_numbers(struct gen *g, int depth)
{
    int n = (int)(tu_uniform(&g->r) * 5);
    buf_str(&g->b, "[");
    for (int i = 0; i < n; i++) {
        ws(g);
        if (i)
            buf_str(&g->b, ",");
        ws(g);
        if (depth > 1)
            gen_numbers(g, depth - 1);
        else
            gen_number(g);
    }
    ws(g);
    buf_str(&g->b, "]");
}

static void gen_value(struct gen *g, int depth);

static void gen_object(struct gen *g, int depth)
{
    static const char *const keys[] = {"\"a\"", "\"data\"", "\"name\"", "\"q\\\"data\\\"\"",
                                       "\"sp ace\""};
    int used[5] = {0}, n = (int)(tu_uniform(&g->r) * 5), first = 1;
    buf_str(&g->b, "{");
    for (int i = 0; i < n; i++) {
        int k = (int)(tu_uniform(&g->r) * 5);
        if (used[k])
            continue;
        used[k] = 1;
        ws(g);
        if (!first)
            buf_str(&g->b, ",");
        first = 0;
        ws(g);
        int escaped = k == 1 && tu_uniform(&g->r) < 0.2;
        buf_str(&g->b, escaped ? "\"d\\u0061ta\"" : keys[k]);
        ws(g);
        buf_str(&g->b, ":");
        ws(g);
        if (k == 1 && tu_uniform(&g->r) < 0.7) {
            g->cuts += !escaped;
            gen_numbers(g, 1 + (int)(tu_uniform(&g->r) * 3));
        } else if (k == 1 && tu_uniform(&g->r) < 0.4) {
            /* Base64 text: cut unless the key or the text has an escape. */
            int esc = tu_uniform(&g->r) < 0.2;
            g->cuts += !escaped && !esc;
            buf_str(&g->b, "{");
            ws(g);
            buf_str(&g->b, "\"b64\"");
            ws(g);
            buf_str(&g->b, ":");
            ws(g);
            buf_str(&g->b, esc ? "\"QU\\u0046D\"" : "\"QUFD+/09\"");
            ws(g);
            buf_str(&g->b, "}");
        } else if (k == 1 && tu_uniform(&g->r) < 0.5) {
            /* Numbers, then a string: the scanner must back out. */
            buf_str(&g->b, "[");
            gen_number(g);
            buf_str(&g->b, ", [1, 2],\"s\"]");
        } else if (k == 1) {
            gen_object(g, depth + 1);
        } else {
            gen_value(g, depth + 1);
        }
    }
    ws(g);
    buf_str(&g->b, "}");
}

static void gen_value(struct gen *g, int depth)
{
    static const char *const strs[] = {"\"plain\"",
                                       "\"\\\"data\\\": [1, 2]\"",
                                       "\"data\"",
                                       "\"x\\\\\"",
                                       "\"\\u0022data\\u0022:[3]\"",
                                       "\"\\\\\\\"data\\\\\\\":[9]\"",
                                       "\"caf\\u00e9 \\ud83d\\ude00\"",
                                       "\"{\\\"data\\\":[\""};
    double u = tu_uniform(&g->r);
    if (depth < 5 && u < 0.35) {
        gen_object(g, depth);
    } else if (depth < 5 && u < 0.5) {
        int n = (int)(tu_uniform(&g->r) * 4);
        buf_str(&g->b, "[");
        for (int i = 0; i < n; i++) {
            ws(g);
            if (i)
                buf_str(&g->b, ",");
            gen_value(g, depth + 1);
        }
        buf_str(&g->b, "]");
    } else if (u < 0.7) {
        buf_str(&g->b, strs[(int)(tu_uniform(&g->r) * 8)]);
    } else if (u < 0.9) {
        gen_number(g);
    } else {
        buf_str(&g->b, u < 0.93 ? "true" : u < 0.96 ? "false" : "null");
    }
}

static int numeric_array(const json_t *v)
{
    size_t i;
    const json_t *e;
    if (!json_is_array(v))
        return 0;
    json_array_foreach(v, i, e)
    {
        if (!json_is_number(e) && !numeric_array(e))
            return 0;
    }
    return 1;
}

static void flatten(const json_t *v, double *out, size_t *k)
{
    size_t i;
    const json_t *e;
    json_array_foreach(v, i, e)
    {
        if (json_is_array(e))
            flatten(e, out, k);
        else
            out[(*k)++] = json_number_value(e);
    }
}

/* @ref: jansson's tree of the body (reals only); @got: ours. */
static void same_tree(const json_t *ref, const json_t *got, const struct curvd_doc *doc,
                      size_t *seen)
{
    const char *key;
    const json_t *v;
    size_t i;
    if (json_is_object(ref)) {
        assert_true(json_is_object(got));
        assert_int_equal(json_object_size(ref), json_object_size(got));
        json_object_foreach((json_t *)ref, key, v)
        {
            const json_t *w = json_object_get(got, key);
            const double *vals;
            size_t n, k = 0;
            assert_non_null(w);
            const char *txt;
            size_t tlen;
            if (strcmp(key, "b64") == 0 && json_is_string(v) &&
                curvd_doc_text(doc, w, &txt, &tlen)) {
                assert_int_equal(tlen, json_string_length(v));
                assert_memory_equal(txt, json_string_value(v), tlen);
                (*seen)++;
            } else if (strcmp(key, "data") == 0 && numeric_array(v) &&
                       curvd_doc_numbers(doc, w, &vals, &n)) {
                double *want = malloc((n + 1) * sizeof(double));
                flatten(v, want, &k);
                assert_int_equal(k, n);
                for (size_t j = 0; j < n; j++)
                    assert_true(tu_same_bits(vals[j], want[j]));
                free(want);
                (*seen)++;
            } else {
                same_tree(v, w, doc, seen);
            }
        }
    } else if (json_is_array(ref)) {
        assert_true(json_is_array(got));
        assert_int_equal(json_array_size(ref), json_array_size(got));
        json_array_foreach(ref, i, v) same_tree(v, json_array_get(got, i), doc, seen);
    } else if (json_is_number(ref)) {
        assert_true(json_is_number(got));
        assert_true(json_number_value(ref) == json_number_value(got));
    } else {
        assert_true(json_equal((json_t *)ref, (json_t *)got));
    }
}

static void test_scan_vs_jansson(void **state)
{
    (void)state;
    struct gen g = {0};
    tu_rng_seed(&g.r, 3);
    size_t total_cuts = 0;
    for (int it = 0; it < 3000; it++) {
        g.b.len = 0;
        g.cuts = 0;
        ws(&g);
        gen_object(&g, 0);
        ws(&g);
        json_error_t je;
        json_t *ref =
            json_loadb(g.b.s, g.b.len, JSON_DECODE_INT_AS_REAL | JSON_REJECT_DUPLICATES, &je);
        if (!ref)
            print_error("generator wrote invalid JSON (%s): %s\n", je.text, g.b.s);
        assert_non_null(ref);
        struct curvd_doc *doc = parse_ok(g.b.s);
        size_t seen = 0;
        same_tree(ref, curvd_doc_root(doc), doc, &seen);
        assert_int_equal(seen, g.cuts);
        assert_int_equal(doc->ncuts, g.cuts);
        total_cuts += seen;
        json_decref(ref);
        curvd_doc_free(doc);
    }
    assert_true(total_cuts > 1000);
    free(g.b.s);
}

/* ---- tricky JSON ---------------------------------------------------------- */

static size_t cut_count(const struct curvd_doc *doc, const json_t *v, double *first)
{
    const double *vals;
    size_t n;
    if (!curvd_doc_numbers(doc, v, &vals, &n))
        return (size_t)-1;
    if (n && first)
        *first = vals[0];
    return n;
}

static void test_tricky_json(void **state)
{
    (void)state;
    double x = 0;
    /* "data" inside strings, escaped quotes and backslashes. */
    struct curvd_doc *doc =
        parse_ok("{\"s\": \"\\\"data\\\": [1,2]\", \"t\": \"x\\\\\", \"data\": [3]}");
    assert_string_equal(json_string_value(json_object_get(curvd_doc_root(doc), "s")),
                        "\"data\": [1,2]");
    assert_string_equal(json_string_value(json_object_get(curvd_doc_root(doc), "t")), "x\\");
    assert_int_equal(cut_count(doc, json_object_get(curvd_doc_root(doc), "data"), &x), 1);
    assert_true(x == 3);
    assert_int_equal(doc->ncuts, 1);
    curvd_doc_free(doc);

    /* A string value "data" followed by ':' inside a string is not a key. */
    doc = parse_ok("{\"k\": \"data\", \"m\": \"\\\\\\\"data\\\":[9]\", \"data\": []}");
    assert_int_equal(cut_count(doc, json_object_get(curvd_doc_root(doc), "data"), NULL), 0);
    assert_int_equal(doc->ncuts, 1);
    curvd_doc_free(doc);

    /* Unicode escapes: a key spelled with escapes is left to jansson. */
    doc = parse_ok("{\"s\": \"\\u0022data\\u0022: [5]\", \"d\\u0061ta\": [6, 7]}");
    json_t *d = json_object_get(curvd_doc_root(doc), "data");
    assert_true(json_is_array(d));
    assert_int_equal(doc->ncuts, 0);
    curvd_doc_free(doc);

    /* Whitespace everywhere, nested arrays. */
    doc = parse_ok(" \n{\r\n\t\"data\" \t:\n [ [ 1 ,\t2 ] ,\r\n[3,4 ]\n,[ 5, 6] ] \n}\t ");
    const struct curvd_cut *c = curvd_doc_cut(doc, json_object_get(curvd_doc_root(doc), "data"));
    assert_non_null(c);
    assert_int_equal(c->count, 6);
    assert_int_equal(c->ndim, 2);
    assert_int_equal(c->dims[0], 3);
    assert_int_equal(c->dims[1], 2);
    assert_false(c->ragged);
    for (size_t i = 0; i < 6; i++)
        assert_true(doc->values[c->first + i] == (double)(i + 1));
    curvd_doc_free(doc);

    /* Ragged nests are recorded, not refused: the tensor decoder refuses. */
    doc = parse_ok(
        "{\"a\":{\"data\":[[1,2],[3]]},\"b\":{\"data\":[1,[2]]},\"c\":{\"data\":[[],[]]}}");
    json_t *root = curvd_doc_root(doc);
    assert_true(curvd_doc_cut(doc, json_object_get(json_object_get(root, "a"), "data"))->ragged);
    assert_true(curvd_doc_cut(doc, json_object_get(json_object_get(root, "b"), "data"))->ragged);
    c = curvd_doc_cut(doc, json_object_get(json_object_get(root, "c"), "data"));
    assert_false(c->ragged);
    assert_int_equal(c->ndim, 2);
    assert_int_equal(c->dims[1], 0);
    curvd_doc_free(doc);

    /* Arrays with other values stay in the tree; "data" nested in them is cut. */
    doc = parse_ok("{\"data\": [1, \"x\", {\"data\": [2, 3]}], \"other\": [1, 2]}");
    d = json_object_get(curvd_doc_root(doc), "data");
    assert_true(json_is_array(d));
    assert_int_equal(json_array_size(d), 3);
    assert_int_equal(cut_count(doc, json_object_get(json_array_get(d, 2), "data"), &x), 2);
    assert_true(x == 2);
    assert_true(json_is_array(json_object_get(curvd_doc_root(doc), "other")));
    curvd_doc_free(doc);

    /* Deeper than CURVD_MAX_NDIM: left to jansson, refused on decode. */
    doc = parse_ok("{\"data\": [[[[[[[[[1]]]]]]]]]}");
    assert_int_equal(doc->ncuts, 0);
    curvd_doc_free(doc);
    decode_fails(
        "{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],\"data\":[[[[[[[[[1]]]]]]]]]}",
        SIZE_MAX, "BAD_TENSOR", "/t/data", NULL, NULL);
}

static void test_cut_b64_and_reserved_key(void **state)
{
    (void)state;
    struct curvd_doc *doc;
    json_t *root;
    /* Base64 text under "data" is cut too; escaped text is left to jansson
     * and decodes the same; "b64" elsewhere is an ordinary string. */
    const char *txt;
    size_t tlen;
    doc = parse_ok("{\"data\" : { \"b64\"\t:\n\"AACAPwAAAEA=\" }, \"b64\": \"AAAA\","
                   " \"x\": {\"data\": {\"b64\": \"AACA\\u0050wAAAEA=\"}}}");
    root = curvd_doc_root(doc);
    assert_int_equal(doc->ncuts, 1);
    assert_true(
        curvd_doc_text(doc, json_object_get(json_object_get(root, "data"), "b64"), &txt, &tlen));
    assert_int_equal(tlen, 12);
    assert_memory_equal(txt, "AACAPwAAAEA=", 12);
    assert_string_equal(json_string_value(json_object_get(root, "b64")), "AAAA");
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(root, "x"), "data"), "b64")),
                        "AACAPwAAAEA=");
    struct curvd_tensor ta, tb;
    struct curvd_problem p;
    json_t *o = json_pack("{ss s[i] ss sO}", "name", "a", "shape", 2, "datatype", "FP32", "data",
                          json_object_get(root, "data"));
    assert_int_equal(curvd_tensor_decode(o, "/a", doc, NULL, SIZE_MAX, &ta, &p), 0);
    json_object_set(o, "data", json_object_get(json_object_get(root, "x"), "data"));
    assert_int_equal(curvd_tensor_decode(o, "/b", doc, NULL, SIZE_MAX, &tb, &p), 0);
    assert_memory_equal(ta.data, tb.data, 2 * sizeof(double));
    assert_true(ta.data[0] == 1.0 && ta.data[1] == 2.0);
    /* A text placeholder is no numbers, and a numbers placeholder no text. */
    json_object_set(o, "data", json_object_get(json_object_get(root, "data"), "b64"));
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensor_decode(o, "/c", doc, NULL, SIZE_MAX, &ta, &p), -1);
    assert_string_equal(p.reason, "BAD_TENSOR");
    json_decref(o);
    curvd_tensor_clear(&ta);
    curvd_tensor_clear(&tb);
    curvd_doc_free(doc);
    doc = parse_ok("{\"data\": {\"b64\": \"\"}, \"more\": {\"data\": []}}");
    assert_int_equal(doc->ncuts, 2);
    assert_true(curvd_doc_text(
        doc, json_object_get(json_object_get(curvd_doc_root(doc), "data"), "b64"), &txt, &tlen));
    assert_int_equal(tlen, 0);
    curvd_doc_free(doc);

    /* The placeholder key cannot be forged. */
    parse_fails("{\"data\": {\"$curvd_cut\": 0}}", "MALFORMED_JSON", "reserved");
    parse_fails("{\"x\": {\"$curvd_cut\": 0}, \"data\": [1]}", "MALFORMED_JSON", "reserved");
    parse_fails("{\"data\": [1], \"x\": {\"\\u0024curvd_cut\": 0}}", "MALFORMED_JSON", "reserved");
    /* Duplicate keys are refused rather than silently resolved. */
    parse_fails("{\"data\": [1], \"data\": [2]}", "MALFORMED_JSON", "duplicate");
    /* Not an object at the top: still JSON. */
    doc = parse_ok("[1, 2, 3]");
    assert_int_equal(json_array_size(curvd_doc_root(doc)), 3);
    curvd_doc_free(doc);
}

static void test_malformed_numbers(void **state)
{
    (void)state;
    static const char *const bad[] = {"01",  "1.",      ".5",   "+1",    "1e",
                                      "-",   "1e+",     "--1",  "1.2.3", "0x10",
                                      "inf", "Infinit", "-Inf", "12abc", "1E"};
    char body[96];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(body, sizeof body, "{\"data\": [1, %s]}", bad[i]);
        parse_fails(body, "MALFORMED_JSON", "byte 13");
    }
    parse_fails("{\"data\": [1, nan]}", "MALFORMED_JSON", NULL); /* jansson's: 'n' is null's */
    parse_fails("{\"data\": [1,]}", "MALFORMED_JSON", "byte 12");
    parse_fails("{\"data\": [1 2]}", "MALFORMED_JSON", "byte 12");
    parse_fails("{\"data\": [[1],,]}", "MALFORMED_JSON", "byte 14");
    /* The literals Python writes, and overflow, are well-formed but not finite:
     * 422 with the element's path (nested indices for nested data). */
    static const char *const inf[] = {"NaN", "Infinity", "-Infinity", "1e999", "-1e999"};
    for (size_t i = 0; i < sizeof inf / sizeof inf[0]; i++) {
        snprintf(body, sizeof body,
                 "{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2,2],\"data\":[[1,2],[3,%s]]}",
                 inf[i]);
        decode_fails(body, SIZE_MAX, "NON_FINITE", "/t/data/1/1", "a finite FP64", NULL);
    }
    struct curvd_tensor t;
    struct curvd_problem p;
    assert_int_equal(
        decode_body("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[3],\"data\":[0,NaN,1]}",
                    SIZE_MAX, &t, &p),
        -1);
    assert_string_equal(p.path, "/t/data/1");
    assert_non_null(strstr(p.detail, "byte 52"));
    assert_int_equal(p.http_status, 422);
    /* Outside data arrays numbers are jansson's, and what it refuses as a
     * member's value (the literals, overflow) is named as non-finite;
     * anywhere else such a token is malformed JSON. */
    static const struct {
        const char *body, *path;
    } named[] = {{"{\"loss\": 1e999}", "/loss"},
                 {"{\"step\": 2, \"loss\": NaN}", "/loss"},
                 {"{\"gram\": [[1, 0], [0, -Infinity]]}", "/gram"},
                 {"{\"a\": {\"losses\": [ -1e400 ]}}", "/losses"},
                 {"{\"k\\\"]\": [Infinity]}", "/k\\\"]"}};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++) {
        parse_fails(named[i].body, "NON_FINITE", "not finite");
        struct curvd_problem q;
        assert_null(parse(named[i].body, strlen(named[i].body), &q));
        assert_string_equal(q.path, named[i].path);
        assert_int_equal(q.http_status, 422);
    }
    parse_fails("{\"loss\": 1, NaN: 2}", "MALFORMED_JSON", NULL);
    parse_fails("NaN", "MALFORMED_JSON", NULL);
    parse_fails("[1, NaN]", "MALFORMED_JSON", NULL);
}

static void test_jansson_error_offset_maps_to_body(void **state)
{
    (void)state;
    /* The placeholder is longer than "[1,2,3]": offsets after it must be
     * shifted back. jansson reports the offset just past the bad token. */
    const char *body = "{\"data\": [1,2,3], \"x\": tru}";
    char want[32];
    snprintf(want, sizeof want, "byte %zu:", (size_t)(strstr(body, "tru") - body) + 3);
    parse_fails(body, "MALFORMED_JSON", want);
    body = "{\"data\": [1,2,3], \"x\": [1, 2,, 3]}";
    snprintf(want, sizeof want, "byte %zu:", (size_t)(strstr(body, ",,") - body) + 2);
    parse_fails(body, "MALFORMED_JSON", want);
}

/* Every strict prefix of a valid document must fail cleanly (run under
 * ASan: the prefix is copied into an exact-size heap block). */
static void test_truncated_every_offset(void **state)
{
    (void)state;
    const char *doc_text =
        "{\"step\": 1, \"gradients\": [{\"name\": \"g\\\"x\", \"shape\": [2, 2], "
        "\"datatype\": \"FP32\", \"data\": [[1.5, -2e-3], [0, 1E+2]]}, "
        "{\"name\": \"v\", \"shape\": [2], \"datatype\": \"FP64\", \"data\": {\"b64\": "
        "\"AAAAAAAA8D8AAAAAAAAAQA==\"}}, {\"name\": \"w\", \"datatype\": \"FP32\", "
        "\"shape\": [1], \"data\": [NaN]}], \"loss\": 0.25}";
    size_t len = strlen(doc_text);
    struct curvd_problem p;
    struct curvd_doc *doc = parse(doc_text, len, &p);
    assert_non_null(doc);
    curvd_doc_free(doc);
    for (size_t n = 0; n < len; n++) {
        doc = parse(doc_text, n, &p);
        if (doc)
            print_error("prefix of %zu bytes parsed\n", n);
        assert_null(doc);
        assert_string_equal(p.reason, "MALFORMED_JSON");
    }
}

/* ---- tensor objects -------------------------------------------------------- */

static void test_decode_plain_and_placeholder_agree(void **state)
{
    (void)state;
    struct curvd_tensor a, b;
    struct curvd_problem p;
    const char *cut = "{\"name\":\"w\",\"datatype\":\"FP32\",\"shape\":[2,3],"
                      "\"data\":[[0.1,2,3],[4,5,-0.0]]}";
    const char *plain = "{\"name\":\"w\",\"datatype\":\"FP32\",\"shape\":[2,3],"
                        "\"d\\u0061ta\":[0.1,2,3,4,5,-0.0]}";
    assert_int_equal(decode_body(cut, SIZE_MAX, &a, &p), 0);
    assert_int_equal(decode_body(plain, SIZE_MAX, &b, &p), 0);
    assert_string_equal(a.name, "w");
    assert_int_equal(a.dtype, CURV_F32);
    assert_int_equal(a.encoding, CURVD_ENC_JSON);
    assert_int_equal(a.ndim, 2);
    assert_int_equal(a.count, 6);
    assert_memory_equal(a.data, b.data, 6 * sizeof(double));
    assert_true(a.data[0] == (double)0.1f); /* FP32 values are rounded to float */
    assert_true(signbit(a.data[5]));
    curvd_tensor_clear(&a);
    curvd_tensor_clear(&b);
    assert_null(a.data);
    curvd_tensor_clear(NULL);
    /* Empty tensors. */
    assert_int_equal(
        decode_body("{\"name\":\"e\",\"datatype\":\"FP64\",\"shape\":[0,3],\"data\":[]}", SIZE_MAX,
                    &a, &p),
        0);
    assert_int_equal(a.count, 0);
    assert_null(a.data);
    curvd_tensor_clear(&a);
    /* A scalar: shape [] holds one value. */
    assert_int_equal(
        decode_body("{\"name\":\"s\",\"datatype\":\"FP64\",\"shape\":[],\"data\":[2.5]}", SIZE_MAX,
                    &a, &p),
        0);
    assert_int_equal(a.count, 1);
    assert_true(a.data[0] == 2.5);
    curvd_tensor_clear(&a);
}

static void test_decode_header_errors(void **state)
{
    (void)state;
    char big[256];
    const char *d = "\"datatype\":\"FP64\",\"shape\":[1],\"data\":[1]";
    char body[512];
    snprintf(body, sizeof body, "{%s}", d);
    decode_fails(body, SIZE_MAX, "BAD_TENSOR", "/t/name", "a string", "absent");
    snprintf(body, sizeof body, "{\"name\":\"\",%s}", d);
    decode_fails(body, SIZE_MAX, "BAD_TENSOR", "/t/name", NULL, "0 bytes");
    memset(big, 'n', 64);
    big[64] = 0;
    snprintf(body, sizeof body, "{\"name\":\"%s\",%s}", big, d);
    decode_fails(body, SIZE_MAX, "BAD_TENSOR", "/t/name", NULL, "64 bytes");
    big[63] = 0;
    snprintf(body, sizeof body, "{\"name\":\"%s\",%s}", big, d);
    struct curvd_tensor t;
    struct curvd_problem p;
    assert_int_equal(decode_body(body, SIZE_MAX, &t, &p), 0);
    assert_int_equal(strlen(t.name), 63);
    curvd_tensor_clear(&t);
    decode_fails("{\"name\":7,\"datatype\":\"FP64\",\"shape\":[1],\"data\":[1]}", SIZE_MAX,
                 "BAD_TENSOR", "/t/name", "a string", "integer");
    decode_fails("[1]", SIZE_MAX, "BAD_TENSOR", "/t", NULL, "array");
    /* Datatypes. */
    static const char *const dts[] = {"\"FP16\"",  "\"fp32\"", "\"FP32 \"",
                                      "\"INT32\"", "32",       "null"};
    for (size_t i = 0; i < sizeof dts / sizeof dts[0]; i++) {
        snprintf(body, sizeof body, "{\"name\":\"a\",\"datatype\":%s,\"shape\":[1],\"data\":[1]}",
                 dts[i]);
        decode_fails(body, SIZE_MAX, "BAD_DATATYPE", "/t/datatype", "\"FP32\" or \"FP64\"", NULL);
    }
    /* Shapes. */
    static const char *const shapes[] = {"[-1]", "[1.0]", "[\"1\"]", "5", "[1,1,1,1,1,1,1,1,1]",
                                         "null", "[true]"};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        snprintf(body, sizeof body,
                 "{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":%s,\"data\":[1]}", shapes[i]);
        decode_fails(body, SIZE_MAX, "BAD_TENSOR", NULL, NULL, NULL);
    }
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1,-2],\"data\":[1]}", SIZE_MAX,
                 "BAD_TENSOR", "/t/shape/1", NULL, "integer");
    /* Product overflow, and the cap (checked before anything is allocated). */
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[4294967296,4294967296,16],"
                 "\"data\":[1]}",
                 SIZE_MAX, "TOO_LARGE", "/t/shape", NULL, "[4294967296,4294967296,16]");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[3,4],\"data\":[1]}", 11,
                 "TOO_LARGE", "/t/shape", NULL, "[3,4]");
    /* count * sizeof(double) must not wrap either. */
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2305843009213693952],"
                 "\"data\":{\"b64\":\"AAAA\"}}",
                 SIZE_MAX, "TOO_LARGE", "/t/shape", NULL, "[2305843009213693952]");
    /* A huge shape with a short payload fails on length, before any
     * allocation (under ASan an 8 EiB malloc would abort the test). */
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[576460752303423488],"
                 "\"data\":{\"b64\":\"AAAA\"}}",
                 SIZE_MAX, "BAD_BASE64", "/t/data/b64", "4611686018427387904 bytes", "3 bytes");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[576460752303423488],"
                 "\"data\":[1,2]}",
                 SIZE_MAX, "SHAPE_MISMATCH", "/t/data", "576460752303423488 values", "2 values");
    /* A zero dimension makes any product zero, without overflow. */
    assert_int_equal(decode_body("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":"
                                 "[4294967296,4294967296,16,0],\"data\":[]}",
                                 0, &t, &p),
                     0);
    curvd_tensor_clear(&t);
}

static void test_decode_data_errors(void **state)
{
    (void)state;
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1]}", SIZE_MAX, "BAD_TENSOR",
                 "/t/data", NULL, "absent");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],\"data\":\"1\"}", SIZE_MAX,
                 "BAD_TENSOR", "/t/data", NULL, "string");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2],\"data\":[1,\"2\"]}",
                 SIZE_MAX, "BAD_TENSOR", "/t/data/1", "a number", "string");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2,2],\"data\":[[1,2],[3,null]]}",
                 SIZE_MAX, "BAD_TENSOR", "/t/data/1/1", "a number", "null");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[3],\"data\":[1,2]}", SIZE_MAX,
                 "SHAPE_MISMATCH", "/t/data", "3 values", "2 values");
    decode_fails(
        "{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2,3],\"data\":[[1,2],[3,4],[5,6]]}",
        SIZE_MAX, "SHAPE_MISMATCH", "/t/data", "[2,3]", "[3,2]");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2,2],\"data\":[[1,2],[3]]}",
                 SIZE_MAX, "SHAPE_MISMATCH", "/t/data", "[2,2]", "ragged arrays");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2,2],\"data\":[1,2,[3,4]]}",
                 SIZE_MAX, "SHAPE_MISMATCH", "/t/data", NULL, "ragged arrays");
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2],\"data\":[1,2],"
                 "\"parameters\":{\"binary_data_size\":16}}",
                 SIZE_MAX, "BAD_TENSOR", "/t/data", NULL, NULL);
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2],\"data\":[1,2],"
                 "\"parameters\":3}",
                 SIZE_MAX, "BAD_TENSOR", "/t/parameters", NULL, "integer");
}

static void test_fp32_range(void **state)
{
    (void)state;
    struct curvd_tensor t;
    struct curvd_problem p;
    /* 3.40282347e+38 is FLT_MAX printed with 9 digits: above FLT_MAX as a
     * double, yet it is the float FLT_MAX. */
    assert_int_equal(decode_body("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[3],"
                                 "\"data\":[3.40282347e+38,-3.40282347e+38,1e-50]}",
                                 SIZE_MAX, &t, &p),
                     0);
    assert_true(t.data[0] == FLT_MAX);
    assert_true(t.data[1] == -FLT_MAX);
    assert_true(t.data[2] == 0);
    curvd_tensor_clear(&t);
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],\"data\":[1,3.5e38]}",
                 SIZE_MAX, "NON_FINITE", "/t/data/1", "a finite FP32", NULL);
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[-1e300]}", SIZE_MAX,
                 "NON_FINITE", "/t/data/0", NULL, NULL);
    /* The same value is a fine FP64. */
    assert_int_equal(decode_body("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],"
                                 "\"data\":[3.5e38]}",
                                 SIZE_MAX, &t, &p),
                     0);
    curvd_tensor_clear(&t);
}

static void b64_case(const char *b64, const char *got, const char *in_detail)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],\"data\":{\"b64\":\"%s\"}}", b64);
    decode_fails(body, SIZE_MAX, "BAD_BASE64", "/t/data/b64", NULL, got);
    struct curvd_tensor t;
    struct curvd_problem p;
    assert_int_equal(decode_body(body, SIZE_MAX, &t, &p), -1);
    if (in_detail && !strstr(p.detail, in_detail))
        print_error("%s: detail '%s' lacks '%s'\n", b64, p.detail, in_detail);
    if (in_detail)
        assert_non_null(strstr(p.detail, in_detail));
}

static void test_bad_base64(void **state)
{
    (void)state;
    /* 8 bytes: 1.0f, 2.0f is "AACAPwAAAEA=". */
    struct curvd_tensor t;
    struct curvd_problem p;
    assert_int_equal(decode_body("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],"
                                 "\"data\":{\"b64\":\"AACAPwAAAEA=\"}}",
                                 SIZE_MAX, &t, &p),
                     0);
    assert_int_equal(t.encoding, CURVD_ENC_B64);
    assert_true(t.data[0] == 1.0 && t.data[1] == 2.0);
    curvd_tensor_clear(&t);
    /* Every class of invalid character, at offset 4. */
    static const char *const bad_chars[] = {" ", "\\n", "\\t",     "-",       "_",    ".",
                                            "*", "=",   "\\u00e9", "\\u0001", "\\\"", "~"};
    static const char *const got[] = {"0x20", "0x0a", "0x09", "0x2d", "0x5f", "0x2e",
                                      "0x2a", "0x3d", "0xc3", "0x01", "0x22", "0x7e"};
    for (size_t i = 0; i < sizeof bad_chars / sizeof bad_chars[0]; i++) {
        char b[64];
        /* Multi-byte characters take two bytes: drop one char to keep the length. */
        int two = strcmp(bad_chars[i], "\\u00e9") == 0;
        snprintf(b, sizeof b, "AACA%s%sAAAEA=", bad_chars[i], two ? "" : "w");
        b64_case(b, got[i], "offset 4");
    }
    b64_case("AACAPwAAAE==", NULL, NULL); /* decodes to 7 bytes: wrong length */
    b64_case("AACAPwAAAEA", NULL, "multiple of 4");
    b64_case("AACAPwAAAEB=", NULL, "padding bits"); /* non-zero bits under the pad */
    b64_case("AACAPwAA=EA=", "0x3d", "offset 8");   /* '=' in the middle */
    b64_case("AACAPwAAAEA=AAAA", NULL, NULL);       /* '=' inside, 12 bytes */
    b64_case("AACAPwAAA===", "7 bytes", NULL);      /* three pads */
    b64_case("AACAPwAAA=A=", "0x3d", "offset 9");   /* a pad, then a digit */
    b64_case("AACAPwAAAA==", "7 bytes", NULL);
    b64_case("", "0 bytes", NULL);
    b64_case("AACAPwAAAEAAAAA=", "11 bytes", NULL);
    b64_case("AACAPwAA", "6 bytes", NULL);
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],\"data\":{\"b64\":7}}",
                 SIZE_MAX, "BAD_BASE64", "/t/data/b64", "a string", "integer");
    /* Non-finite bit patterns: +inf as FP32 is 0000807f. */
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],"
                 "\"data\":{\"b64\":\"AACAPwAAgH8=\"}}",
                 SIZE_MAX, "NON_FINITE", "/t/data", NULL, "inf");
}

/* A binary-extension body: JSON header then @tail. */
/* @json followed by @tail as one body (*@body, caller frees), its binary
 * tail and its parsed header (*@doc, caller frees). */
static int open_body(const char *json, const unsigned char *tail, size_t tail_len,
                     unsigned char **body, struct curvd_binary *bin, struct curvd_doc **doc,
                     struct curvd_problem *p)
{
    size_t jl = strlen(json);
    *body = malloc(jl + tail_len + 1);
    memcpy(*body, json, jl);
    if (tail_len)
        memcpy(*body + jl, tail, tail_len);
    *doc = NULL;
    curvd_problem_init(p);
    int rc = curvd_binary_init(bin, *body, jl + tail_len, jl, p);
    return rc ? rc : curvd_json_parse((const char *)*body, jl, doc, p);
}

static int decode_binary_body(const char *json, const unsigned char *tail, size_t tail_len,
                              struct curvd_tensor **t, size_t *n, struct curvd_problem *p)
{
    unsigned char *body;
    struct curvd_binary bin;
    struct curvd_doc *doc;
    int rc = open_body(json, tail, tail_len, &body, &bin, &doc, p);
    if (rc == 0)
        rc = curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "inputs"), "/inputs", doc,
                                  &bin, SIZE_MAX, t, n, p);
    if (rc == 0 && curvd_binary_finish(&bin, p)) {
        curvd_tensors_free(*t, *n);
        rc = -1;
    }
    curvd_doc_free(doc);
    free(body);
    return rc;
}

static void binary_fails(const char *json, size_t tail_len, const char *path, const char *want,
                         const char *got)
{
    unsigned char tail[64] = {0};
    struct curvd_tensor *t;
    size_t n;
    struct curvd_problem p;
    assert_int_equal(decode_binary_body(json, tail, tail_len, &t, &n, &p), -1);
    if (strcmp(p.reason, "BAD_BINARY") != 0 || strcmp(p.path, path) != 0)
        print_error("%s: %s %s %s\n", json, p.reason, p.path, p.detail);
    assert_string_equal(p.reason, "BAD_BINARY");
    assert_string_equal(p.path, path);
    if (want)
        assert_string_equal(p.expected, want);
    if (got)
        assert_string_equal(p.got, got);
}

static void test_binary_sizes(void **state)
{
    (void)state;
    const char *two = "{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],"
                      "\"parameters\":{\"binary_data_size\":8}},{\"name\":\"b\",\"datatype\":"
                      "\"FP64\",\"shape\":[1],\"parameters\":{\"binary_data_size\":8}}]}";
    unsigned char tail[16] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0xf0, 0xbf};
    struct curvd_tensor *t;
    size_t n;
    struct curvd_problem p;
    assert_int_equal(decode_binary_body(two, tail, 16, &t, &n, &p), 0);
    assert_int_equal(n, 2);
    assert_int_equal(t[0].encoding, CURVD_ENC_BINARY);
    assert_true(t[0].data[0] == 1.0 && t[0].data[1] == 2.0 && t[1].data[0] == -1.0);
    curvd_tensors_free(t, n);
    /* The tail is too short for the second tensor, or too long. */
    binary_fails(two, 15, "/inputs/1/parameters/binary_data_size", "8 bytes", "7 bytes left");
    binary_fails(two, 4, "/inputs/0/parameters/binary_data_size", "8 bytes", "4 bytes left");
    binary_fails(two, 17, "", "0 extra bytes", "1 extra bytes");
    binary_fails(two, 0, "/inputs/0/parameters/binary_data_size", NULL, NULL);
    /* binary_data_size that does not match count * sizeof(type). */
    binary_fails("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],"
                 "\"parameters\":{\"binary_data_size\":16}}]}",
                 16, "/inputs/0/parameters/binary_data_size", "8 bytes", "16 bytes");
    binary_fails("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[2],"
                 "\"parameters\":{\"binary_data_size\":8}}]}",
                 8, "/inputs/0/parameters/binary_data_size", "16 bytes", "8 bytes");
    binary_fails("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],"
                 "\"parameters\":{\"binary_data_size\":-8}}]}",
                 8, "/inputs/0/parameters/binary_data_size", "8 bytes", "integer");
    binary_fails("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],"
                 "\"parameters\":{\"binary_data_size\":\"8\"}}]}",
                 8, "/inputs/0/parameters/binary_data_size", "8 bytes", "string");
    /* binary_data_size in a body without the binary extension. */
    decode_fails("{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],"
                 "\"parameters\":{\"binary_data_size\":8}}",
                 SIZE_MAX, "BAD_BINARY", "/t/parameters/binary_data_size", NULL, NULL);
    /* A header length beyond the body. */
    struct curvd_binary bin;
    curvd_problem_init(&p);
    assert_int_equal(curvd_binary_init(&bin, "abc", 3, 4, &p), -1);
    assert_string_equal(p.reason, "BAD_BINARY");
    assert_int_equal(curvd_binary_init(&bin, "abc", 3, 3, NULL), 0);
    assert_int_equal(curvd_binary_finish(&bin, NULL), 0);
    /* NaN bytes in a binary FP64 tensor. */
    unsigned char nan64[8] = {0, 0, 0, 0, 0, 0, 0xf8, 0x7f};
    assert_int_equal(decode_binary_body("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP64\","
                                        "\"shape\":[1],\"parameters\":{\"binary_data_size\":8}}]}",
                                        nan64, 8, &t, &n, &p),
                     -1);
    assert_string_equal(p.reason, "NON_FINITE");
    /* An infinity after finite values in a binary FP32 tensor: named by
     * its index, as the full check names it. */
    unsigned char inf32[12] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0x80, 0, 0, 0x80, 0xff};
    assert_int_equal(decode_binary_body("{\"inputs\":[{\"name\":\"a\",\"datatype\":\"FP32\","
                                        "\"shape\":[3],\"parameters\":{\"binary_data_size\":12}}]}",
                                        inf32, 12, &t, &n, &p),
                     -1);
    assert_string_equal(p.reason, "NON_FINITE");
    assert_string_equal(p.path, "/inputs/0/data");
    assert_non_null(strstr(p.detail, "element 2 of 'a' is not finite"));
}

/* curvd_tensor_decode_rows on the one tensor "t" of @json (+ @tail). */
static int decode_rows(const char *json, const unsigned char *tail, size_t tail_len,
                       struct curvd_tensor *t, struct curvd_problem *p)
{
    unsigned char *body;
    struct curvd_binary bin;
    struct curvd_doc *doc;
    int rc = open_body(json, tail, tail_len, &body, &bin, &doc, p);
    if (rc == 0)
        rc = curvd_tensor_decode_rows(json_object_get(curvd_doc_root(doc), "t"), "/t", doc,
                                      tail_len ? &bin : NULL, SIZE_MAX, t, p);
    curvd_doc_free(doc);
    free(body);
    return rc;
}

/* Layer statistics keep FP32 bytes (binary, base64) as floats, the values
 * the doubles would hold; JSON numbers and FP64 stay doubles; a NaN among
 * the floats is refused with the message of the double path; widening
 * moves them to doubles. */
static void test_decode_rows(void **state)
{
    (void)state;
    struct curvd_tensor t;
    struct curvd_problem p;
    const unsigned char f32[12] = {0, 0, 0x80, 0x3f, 0, 0, 0, 0x80, 0, 0, 0x20, 0x40};
    assert_int_equal(decode_rows("{\"t\":{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[3],"
                                 "\"parameters\":{\"binary_data_size\":12}}}",
                                 f32, 12, &t, &p),
                     0);
    assert_null(t.data);
    assert_non_null(t.fdata);
    assert_true(t.fdata[0] == 1.0f && t.fdata[1] == 0.0f && signbit(t.fdata[1]) &&
                t.fdata[2] == 2.5f);
    assert_int_equal(curvd_tensor_widen(&t, "/t", &p), 0);
    assert_null(t.fdata);
    assert_true(t.data[0] == 1.0 && t.data[2] == 2.5 && signbit(t.data[1]));
    curvd_tensor_clear(&t);
    assert_int_equal(decode_rows("{\"t\":{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],"
                                 "\"data\":{\"b64\":\"AACAPwAAAEA=\"}}}",
                                 NULL, 0, &t, &p),
                     0);
    assert_true(t.fdata && !t.data && t.fdata[0] == 1.0f && t.fdata[1] == 2.0f);
    curvd_tensor_clear(&t);
    assert_int_equal(decode_rows("{\"t\":{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[2],"
                                 "\"data\":[1,0.1]}}",
                                 NULL, 0, &t, &p),
                     0);
    assert_true(!t.fdata && t.data && t.data[1] == (double)0.1f);
    curvd_tensor_clear(&t);
    const unsigned char f64[8] = {0, 0, 0, 0, 0, 0, 0xf0, 0x3f};
    assert_int_equal(decode_rows("{\"t\":{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],"
                                 "\"parameters\":{\"binary_data_size\":8}}}",
                                 f64, 8, &t, &p),
                     0);
    assert_true(!t.fdata && t.data && t.data[0] == 1.0);
    curvd_tensor_clear(&t);
    const unsigned char nan32[12] = {0, 0, 0x80, 0x3f, 0, 0, 0xc0, 0x7f, 0, 0, 0, 0};
    assert_int_equal(decode_rows("{\"t\":{\"name\":\"a\",\"datatype\":\"FP32\",\"shape\":[3],"
                                 "\"parameters\":{\"binary_data_size\":12}}}",
                                 nan32, 12, &t, &p),
                     -1);
    assert_string_equal(p.reason, "NON_FINITE");
    assert_string_equal(p.path, "/t/data");
    assert_non_null(strstr(p.detail, "element 1 of 'a' is not finite"));
}

/* ---- blocks --------------------------------------------------------------- */

/* The four blocks of test_layout(), fc1's data and extra tensors to fill in. */
static const char good_fmt[] =
    "{\"g\":[{\"name\":\"gain\",\"datatype\":\"FP64\",\"shape\":[3],\"data\":[1,2,3]},"
    "{\"name\":\"out\",\"datatype\":\"FP64\",\"shape\":[2,3],\"data\":[[1,2,3],[4,5,6]]},"
    "{\"name\":\"fc1\",\"datatype\":\"FP64\",\"shape\":[3,5],\"data\":[%s]},"
    "{\"name\":\"conv\",\"datatype\":\"FP64\",\"shape\":[2,5],"
    "\"data\":[1,2,3,4,5,6,7,8,9,10]}%s]}";

static void good_tensors(char *body, size_t cap, const char *fc1, const char *extra)
{
    /* Splice by hand: a non-literal format would trip -Wformat-nonliteral. */
    const char *a = strstr(good_fmt, "%s"), *b = strstr(a + 2, "%s");
    snprintf(body, cap, "%.*s%s%.*s%s%s", (int)(a - good_fmt), good_fmt, fc1, (int)(b - a - 2),
             a + 2, extra, b + 2);
}

static int map_body(const char *fc1_data, const char *extra, double *flat, struct curvd_problem *p)
{
    char body[1024];
    good_tensors(body, sizeof body, fc1_data, extra);
    curv_layout *l = test_layout();
    struct curvd_doc *doc = parse_ok(body);
    struct curvd_tensor *t;
    size_t n;
    curvd_problem_init(p);
    int rc = curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "g"), "/g", doc, NULL,
                                  SIZE_MAX, &t, &n, p);
    assert_int_equal(rc, 0);
    rc = curvd_tensors_to_flat(l, t, n, "/g", flat, p);
    curvd_tensors_free(t, n);
    curvd_doc_free(doc);
    curv_layout_free(l);
    return rc;
}

static void map_fails(const char *fc1, const char *extra, const char *reason, const char *path,
                      const char *want, const char *got)
{
    double flat[40];
    struct curvd_problem p;
    for (size_t i = 0; i < 40; i++)
        flat[i] = -7;
    assert_int_equal(map_body(fc1, extra, flat, &p), -1);
    if (strcmp(p.reason, reason) != 0 || strcmp(p.path, path) != 0)
        print_error("%s %s: %s\n", p.reason, p.path, p.detail);
    assert_string_equal(p.reason, reason);
    assert_string_equal(p.path, path);
    assert_string_equal(p.expected, want);
    assert_string_equal(p.got, got);
    for (size_t i = 0; i < 40; i++)
        assert_true(flat[i] == -7); /* written only on success */
}

static void test_blocks(void **state)
{
    (void)state;
    const char *fc1 = "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14";
    double flat[40];
    struct curvd_problem p;
    assert_int_equal(map_body(fc1, "", flat, &p), 0);
    /* Layout order: fc1 [0,15), conv [15,25), gain [25,28), out [28,34). */
    for (int i = 0; i < 15; i++)
        assert_true(flat[i] == i);
    for (int i = 0; i < 10; i++)
        assert_true(flat[15 + i] == i + 1);
    for (int i = 0; i < 3; i++)
        assert_true(flat[25 + i] == i + 1);
    for (int i = 0; i < 6; i++)
        assert_true(flat[28 + i] == i + 1);

    map_fails(fc1, ",{\"name\":\"fc2\",\"datatype\":\"FP64\",\"shape\":[1],\"data\":[1]}",
              "UNKNOWN_BLOCK", "/g/4/name", "a block of the layout", "fc2");
    map_fails(fc1, ",{\"name\":\"gain\",\"datatype\":\"FP64\",\"shape\":[3],\"data\":[1,2,3]}",
              "DUPLICATE_BLOCK", "/g/4/name", "each block once", "gain");
    map_fails(fc1, ",{\"name\":\"extra\",\"datatype\":\"FP32\",\"shape\":[1],\"data\":[1]}",
              "UNKNOWN_BLOCK", "/g/4/name", "a block of the layout", "extra");
}

static void test_block_errors(void **state)
{
    (void)state;
    double flat[40];
    struct curvd_problem p;
    /* Only "gain": the first block missing is reported. */
    curv_layout *l = test_layout();
    struct curvd_doc *doc = parse_ok(
        "{\"g\":[{\"name\":\"gain\",\"datatype\":\"FP64\",\"shape\":[3],\"data\":[1,2,3]}]}");
    struct curvd_tensor *t;
    size_t n;
    assert_int_equal(curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "g"), "/g", doc,
                                          NULL, SIZE_MAX, &t, &n, NULL),
                     0);
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_to_flat(l, t, n, "/g", flat, &p), -1);
    assert_string_equal(p.reason, "MISSING_BLOCK");
    assert_string_equal(p.path, "/g");
    assert_string_equal(p.expected, "[3,5]");
    assert_string_equal(p.got, "absent");
    assert_non_null(strstr(p.detail, "fc1"));
    /* Vector given as [3,1], matrices transposed or flat: all refused. */
    struct curvd_tensor v = t[0];
    v.ndim = 2;
    v.shape[1] = 1;
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_to_flat(l, &v, 1, "/g", flat, &p), -1);
    assert_string_equal(p.reason, "SHAPE_MISMATCH");
    assert_string_equal(p.path, "/g/0/shape");
    assert_string_equal(p.expected, "[3]");
    assert_string_equal(p.got, "[3,1]");
    assert_non_null(strstr(p.detail, "gain"));
    curvd_tensors_free(t, n);
    curvd_doc_free(doc);
    curv_layout_free(l);

    char wrong[1024];
    good_tensors(wrong, sizeof wrong, "0,1,2,3,4,5,6,7,8,9,10,11,12,13,14", "");
    /* fc1 as [5,3] (transposed) and as [15] (flat). */
    doc = parse_ok(wrong);
    l = test_layout();
    assert_int_equal(curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "g"), "/g", doc,
                                          NULL, SIZE_MAX, &t, &n, NULL),
                     0);
    t[2].shape[0] = 5;
    t[2].shape[1] = 3;
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_to_flat(l, t, n, "/g", flat, &p), -1);
    assert_string_equal(p.reason, "SHAPE_MISMATCH");
    assert_string_equal(p.path, "/g/2/shape");
    assert_string_equal(p.expected, "[3,5]");
    assert_string_equal(p.got, "[5,3]");
    t[2].ndim = 1;
    t[2].shape[0] = 15;
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_to_flat(l, t, n, "/g", flat, &p), -1);
    assert_string_equal(p.got, "[15]");
    t[2].ndim = 2;
    t[2].shape[0] = 3;
    t[2].shape[1] = 5;
    /* Mixed datatypes. */
    t[1].dtype = CURV_F32;
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_to_flat(l, t, n, "/g", flat, &p), -1);
    assert_string_equal(p.reason, "BAD_DATATYPE");
    assert_string_equal(p.path, "/g/1/datatype");
    curvd_tensors_free(t, n);
    curvd_doc_free(doc);
    curv_layout_free(l);
}

static void test_tensors_decode_paths(void **state)
{
    (void)state;
    struct curvd_doc *doc =
        parse_ok("{\"g\":[{\"name\":\"a\",\"datatype\":\"FP64\",\"shape\":[1],\"data\":[1]},"
                 "{\"name\":\"b\",\"datatype\":\"FP64\",\"shape\":[3],\"data\":[1,2,1e999]}]}");
    struct curvd_tensor *t = NULL;
    size_t n = 0;
    struct curvd_problem p;
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "g"), "/gradients",
                                          doc, NULL, SIZE_MAX, &t, &n, &p),
                     -1);
    assert_null(t);
    assert_string_equal(p.path, "/gradients/1/data/2");
    assert_string_equal(p.reason, "NON_FINITE");
    curvd_problem_init(&p);
    assert_int_equal(curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "nope"), "/x", doc,
                                          NULL, SIZE_MAX, &t, &n, &p),
                     -1);
    assert_string_equal(p.reason, "BAD_TENSOR");
    curvd_doc_free(doc);
}

/* ---- round trips ------------------------------------------------------------ */

static void roundtrip(int dtype, enum curvd_encoding enc)
{
    curv_layout *l = test_layout();
    size_t dim = curv_layout_dim(l);
    double *flat = malloc(dim * sizeof(double)), *back = malloc(dim * sizeof(double));
    tu_rng r;
    tu_rng_seed(&r, 100 + (uint64_t)(dtype * 3 + (int)enc));
    for (size_t i = 0; i < dim; i++) {
        double x = tu_normal(&r) * pow(10.0, (int)(tu_uniform(&r) * 60) - 30);
        flat[i] = dtype == CURV_F32 ? (double)(float)x : x;
    }
    flat[0] = -0.0;
    flat[1] = dtype == CURV_F32 ? FLT_MAX : DBL_MAX;
    flat[2] = dtype == CURV_F32 ? ldexp(1.0, -149) : ldexp(1.0, -1074);
    flat[3] = dtype == CURV_F32 ? -FLT_MIN : -1e-300;
    flat[4] = 1;

    struct curvd_out o;
    struct curvd_problem p;
    curvd_out_init(&o);
    curvd_problem_init(&p);
    curvd_out_lit(&o, "{\"step\":3,\"update\":");
    assert_int_equal(curvd_out_tensors(&o, l, flat, dtype, enc, &p), 0);
    curvd_out_lit(&o, "}");
    assert_int_equal(curvd_out_finish(&o, &p), 0);
    size_t total = o.len;
    unsigned char *body = curvd_out_take(&o);
    assert_non_null(body);
    if (enc == CURVD_ENC_BINARY)
        assert_int_equal(total - o.json_len, dim * (dtype == CURV_F32 ? 4 : 8));
    else
        assert_int_equal(total, o.json_len);
    /* The JSON part is valid JSON on its own. */
    json_error_t je;
    json_t *check = json_loadb((const char *)body, o.json_len, 0, &je);
    if (!check)
        print_error("rendered JSON invalid: %s: %.200s\n", je.text, body);
    assert_non_null(check);
    json_decref(check);

    struct curvd_doc *doc = NULL;
    struct curvd_binary bin;
    struct curvd_tensor *t;
    size_t n;
    assert_int_equal(curvd_binary_init(&bin, body, total, o.json_len, &p), 0);
    assert_int_equal(curvd_json_parse((const char *)body, o.json_len, &doc, &p), 0);
    assert_int_equal(curvd_tensors_decode(json_object_get(curvd_doc_root(doc), "update"), "/update",
                                          doc, enc == CURVD_ENC_BINARY ? &bin : NULL, SIZE_MAX, &t,
                                          &n, &p),
                     0);
    assert_int_equal(n, curv_layout_nblocks(l));
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(t[i].dtype, dtype);
        assert_int_equal(t[i].encoding, enc);
    }
    if (enc == CURVD_ENC_BINARY)
        assert_int_equal(curvd_binary_finish(&bin, &p), 0);
    assert_int_equal(curvd_tensors_to_flat(l, t, n, "/update", back, &p), 0);
    for (size_t i = 0; i < dim; i++) {
        if (!tu_same_bits(back[i], flat[i]))
            print_error("dtype %d enc %d: element %zu: %.17g became %.17g\n", dtype, (int)enc, i,
                        flat[i], back[i]);
        assert_true(tu_same_bits(back[i], flat[i]));
    }
    curvd_tensors_free(t, n);
    curvd_doc_free(doc);
    curvd_mem_free(body);
    curvd_out_clear(&o);
    free(flat);
    free(back);
    curv_layout_free(l);
}

static void test_roundtrip_all_encodings(void **state)
{
    (void)state;
    for (int e = CURVD_ENC_JSON; e <= CURVD_ENC_BINARY; e++) {
        roundtrip(CURV_F32, (enum curvd_encoding)e);
        roundtrip(CURV_F64, (enum curvd_encoding)e);
    }
}

/* Finish @o and compare the whole body with @want. */
static void expect_body(struct curvd_out *o, const char *want)
{
    assert_int_equal(curvd_out_finish(o, NULL), 0);
    if (o->len != strlen(want) || memcmp(o->buf, want, o->len) != 0)
        print_error("got  %.*s\nwant %s\n", (int)o->len, o->buf, want);
    assert_int_equal(o->len, strlen(want));
    assert_memory_equal(o->buf, want, o->len);
    curvd_out_clear(o);
}

static void test_render_output(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "v", 4, NULL), CURV_OK);
    double x[4] = {0.1, 1, -0.0, 1e-5};
    struct curvd_out o;
    struct curvd_problem p;
    curvd_out_init(&o);
    curvd_problem_init(&p);
    assert_int_equal(curvd_out_tensors(&o, l, x, CURV_F32, CURVD_ENC_JSON, &p), 0);
    expect_body(&o, "[{\"name\":\"v\",\"shape\":[4],\"datatype\":\"FP32\","
                    "\"data\":[0.100000001,1,-0,9.99999975e-06]}]");

    assert_int_equal(curvd_out_tensors(&o, l, x, CURV_F64, CURVD_ENC_B64, &p), 0);
    expect_body(&o, "[{\"name\":\"v\",\"shape\":[4],\"datatype\":\"FP64\",\"data\":{\"b64\":"
                    "\"mpmZmZmZuT8AAAAAAADwPwAAAAAAAACA8WjjiLX45D4=\"}}]");

    /* Values the wire type cannot carry: refused, nothing written. */
    double bad[4] = {1, 2, NAN, 4};
    curvd_out_lit(&o, "{");
    assert_int_equal(curvd_out_tensors(&o, l, bad, CURV_F64, CURVD_ENC_JSON, &p), -1);
    assert_string_equal(p.reason, "INTERNAL");
    assert_int_equal(o.len, 1);
    double big[4] = {1, 2, 3, 1e39};
    curvd_problem_init(&p);
    assert_int_equal(curvd_out_tensors(&o, l, big, CURV_F32, CURVD_ENC_BINARY, &p), -1);
    assert_string_equal(p.reason, "INTERNAL");
    assert_int_equal(o.len, 1);
    curvd_out_clear(&o);
    curvd_problem_init(&p);
    assert_int_equal(curvd_out_tensors(&o, l, big, CURV_F64, CURVD_ENC_BINARY, &p), 0);
    curvd_out_clear(&o);
    /* An empty body is a body, not a failure. */
    curvd_out_raw(&o, "", 0);
    expect_body(&o, "");
    curv_layout_free(l);
}

/* Two binary tensor arrays (a callback's vectors): the JSON first, then
 * both arrays' bytes in the order they were written. */
static void test_render_binary_tail_order(void **state)
{
    (void)state;
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "a", 2, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_dense(l, "w", 1, 1, 1, NULL), CURV_OK);
    double u[4] = {1, 2, 3, 4}, v[4] = {-1, 0.5, 0.25, 8};
    struct curvd_out o;
    curvd_out_init(&o);
    curvd_out_lit(&o, "[");
    assert_int_equal(curvd_out_tensors(&o, l, u, CURV_F64, CURVD_ENC_BINARY, NULL), 0);
    curvd_out_lit(&o, ",");
    assert_int_equal(curvd_out_tensors(&o, l, v, CURV_F32, CURVD_ENC_BINARY, NULL), 0);
    curvd_out_lit(&o, "]");
    assert_int_equal(curvd_out_finish(&o, NULL), 0);
    const char *json =
        "[[{\"name\":\"a\",\"shape\":[2],\"datatype\":\"FP64\",\"parameters\":"
        "{\"binary_data_size\":16}},{\"name\":\"w\",\"shape\":[1,2],\"datatype\":"
        "\"FP64\",\"parameters\":{\"binary_data_size\":16}}],[{\"name\":\"a\","
        "\"shape\":[2],\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":8}},"
        "{\"name\":\"w\",\"shape\":[1,2],\"datatype\":\"FP32\",\"parameters\":"
        "{\"binary_data_size\":8}}]]";
    assert_int_equal(o.json_len, strlen(json));
    assert_memory_equal(o.buf, json, o.json_len);
    assert_int_equal(o.len, o.json_len + 32 + 16);
    const unsigned char *t = (const unsigned char *)o.buf + o.json_len;
    for (int i = 0; i < 4; i++) {
        double d;
        memcpy(&d, t + 8 * i, 8); /* the test machine is little-endian, as the wire */
        assert_true(d == u[i]);
    }
    for (int i = 0; i < 4; i++) {
        float f;
        memcpy(&f, t + 32 + 4 * i, 4);
        assert_true(f == (float)v[i]);
    }
    size_t len = o.len;
    unsigned char *b = curvd_out_take(&o);
    assert_null(o.buf);
    assert_int_equal(o.len, len);
    curvd_mem_free(b);
    curvd_out_clear(&o);
    curv_layout_free(l);
}

/* Finish @o and compare it with jansson's text of @j (stolen). */
static void expect_jansson(struct curvd_out *o, json_t *j)
{
    char *want = json_dumps(j, JSON_ENCODE_ANY);
    expect_body(o, want);
    free(want);
    json_decref(j);
}

/* Strings and numbers as jansson writes them (jansson is the reference). */
static void test_render_scalars_like_jansson(void **state)
{
    (void)state;
    static const char *const strs[] = {
        "plain",  "q\"uo\\te", "\b\f\n\r\t", "\x01\x1f\x7f", "caf\xc3\xa9 \xe2\x80\xa8",
        "/slash", ""};
    static const double reals[] = {
        0.0,       -0.0, 1.0,  0.1,     1e20,    1e-5,  123456789.0,        1e300, 5e-324, -2.5e-8,
        1.0 / 3.0, 1e16, 1e17, DBL_MAX, -1e-300, 100.0, 12345678901234567.0};
    struct curvd_out o;
    curvd_out_init(&o);
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        curvd_out_string(&o, strs[i]);
        expect_jansson(&o, json_string(strs[i]));
    }
    for (size_t i = 0; i < sizeof reals / sizeof *reals; i++) {
        curvd_out_real(&o, reals[i]);
        expect_jansson(&o, json_real(reals[i]));
    }
    curvd_out_real(&o, INFINITY);
    curvd_out_lit(&o, ",");
    curvd_out_real(&o, NAN);
    curvd_out_lit(&o, ",");
    curvd_out_int(&o, -9223372036854775807LL - 1);
    expect_body(&o, "null,null,-9223372036854775808");
}

/* ---- timings (printed, not asserted) --------------------------------------- */

static void test_timing(void **state)
{
    (void)state;
    enum { N = 1000000 };
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_vector(l, "v", N, NULL), CURV_OK);
    double *x = malloc(N * sizeof(double));
    tu_rng r;
    tu_rng_seed(&r, 5);
    for (size_t i = 0; i < N; i++)
        x[i] = (float)tu_normal(&r);
    static const char *const names[] = {"JSON", "b64", "binary"};
    for (int dt = CURV_F64; dt <= CURV_F32; dt++) {
        for (int e = CURVD_ENC_JSON; e <= CURVD_ENC_BINARY; e++) {
            struct curvd_out o;
            curvd_out_init(&o);
            double t0 = su_now_s();
            assert_int_equal(curvd_out_tensors(&o, l, x, dt, (enum curvd_encoding)e, NULL), 0);
            assert_int_equal(curvd_out_finish(&o, NULL), 0);
            double t1 = su_now_s();
            size_t total = o.len;
            unsigned char *body = curvd_out_take(&o);
            struct curvd_doc *doc;
            struct curvd_binary bin;
            struct curvd_tensor *t;
            size_t n;
            double t2 = su_now_s();
            assert_int_equal(curvd_binary_init(&bin, body, total, o.json_len, NULL), 0);
            assert_int_equal(curvd_json_parse((const char *)body, o.json_len, &doc, NULL), 0);
            double t25 = su_now_s();
            assert_int_equal(
                curvd_tensors_decode(curvd_doc_root(doc), "", doc, &bin, SIZE_MAX, &t, &n, NULL),
                0);
            double t3 = su_now_s();
            print_message("%s %-6s 1e6 values: encode %.4f s, parse %.4f s + decode %.4f s "
                          "(%zu bytes)\n",
                          dt == CURV_F32 ? "FP32" : "FP64", names[e], t1 - t0, t25 - t2, t3 - t25,
                          total);
            if (e == CURVD_ENC_JSON) {
                /* The same text through jansson alone. */
                json_error_t je;
                double t4 = su_now_s();
                json_t *j = json_loadb((const char *)body, o.json_len, 0, &je);
                double t5 = su_now_s();
                assert_non_null(j);
                json_decref(j);
                print_message("%s JSON 1e6 values: curvd_json_parse %.4f s, json_loadb %.4f s "
                              "(%.1fx faster)\n",
                              dt == CURV_F32 ? "FP32" : "FP64", t25 - t2, t5 - t4,
                              (t5 - t4) / (t25 - t2));
            }
            curvd_tensors_free(t, n);
            curvd_doc_free(doc);
            curvd_mem_free(body);
            curvd_out_clear(&o);
        }
    }
    free(x);
    curv_layout_free(l);
}

/* A content type matches with any parameters but a charset other than
 * UTF-8 (issue 21: a UTF-16 declaration was taken for UTF-8). */
static void test_ctype_charset(void **state)
{
    (void)state;
    static const char *const yes[] = {"application/json",
                                      "Application/JSON",
                                      "application/json; charset=utf-8",
                                      "application/json;charset=UTF-8",
                                      "application/json; charset=\"utf-8\"",
                                      "application/json; foo=bar",
                                      "application/json; foo=bar; charset=Utf-8 ",
                                      "application/json ; charset=utf-8"};
    static const char *const no[] = {"application/json; charset=utf-16",
                                     "application/json;charset=latin1",
                                     "application/json; charset=\"ISO-8859-1\"",
                                     "application/json; foo=1; charset=utf-8x",
                                     "application/json; charset=",
                                     "application/jsonx",
                                     "text/plain",
                                     NULL};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++)
        if (!curvd_ctype_is(yes[i], "application/json"))
            fail_msg("'%s' refused", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++)
        if (curvd_ctype_is(no[i], "application/json"))
            fail_msg("'%s' taken", no[i] ? no[i] : "(none)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_problem_first_error_wins),
        cmocka_unit_test(test_scan_vs_jansson),
        cmocka_unit_test(test_tricky_json),
        cmocka_unit_test(test_cut_b64_and_reserved_key),
        cmocka_unit_test(test_malformed_numbers),
        cmocka_unit_test(test_jansson_error_offset_maps_to_body),
        cmocka_unit_test(test_truncated_every_offset),
        cmocka_unit_test(test_decode_plain_and_placeholder_agree),
        cmocka_unit_test(test_decode_header_errors),
        cmocka_unit_test(test_decode_data_errors),
        cmocka_unit_test(test_fp32_range),
        cmocka_unit_test(test_bad_base64),
        cmocka_unit_test(test_binary_sizes),
        cmocka_unit_test(test_decode_rows),
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_block_errors),
        cmocka_unit_test(test_tensors_decode_paths),
        cmocka_unit_test(test_roundtrip_all_encodings),
        cmocka_unit_test(test_render_output),
        cmocka_unit_test(test_render_binary_tail_order),
        cmocka_unit_test(test_render_scalars_like_jansson),
        cmocka_unit_test(test_timing),
        cmocka_unit_test(test_ctype_charset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
