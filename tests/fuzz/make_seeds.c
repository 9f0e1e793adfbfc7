/* SPDX-License-Identifier: MIT */
/*
 * Writes the seed corpora of the fuzz targets:
 *   OUT/fuzz_step_body/  step bodies for the layout fc (dense 2x3 + bias,
 *                        wire shape [2,4]) + gain (vector [2]) in every
 *                        encoding, with the 2-byte prefix of fuzz_step_body.c
 *                        (0xFFFF = plain JSON, 0xFFFE = plain JSON with a
 *                        wrong Content-Type, else the JSON header length);
 *   OUT/fuzz_state_blob/ curv_opt_save() blobs of every optimizer kind, fresh
 *                        and stepped, with the mode byte of fuzz_state_blob.c.
 * Usage: make_seeds OUT   (tests/fuzz/run.sh --seeds runs it into
 * tests/fuzz/corpus). Only libcurv is linked; the bodies are written here
 * by hand so that the seeds do not depend on the encoder under test.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv.h"

static const char *outdir;

static void die(const char *what)
{
    fprintf(stderr, "make_seeds: %s\n", what);
    exit(1);
}

static void write_file(const char *sub, const char *name, const void *a, size_t alen, const void *b,
                       size_t blen, const void *c, size_t clen)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/%s", outdir, sub, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(a, 1, alen, f) != alen || (blen && fwrite(b, 1, blen, f) != blen) ||
        (clen && fwrite(c, 1, clen, f) != clen) || fclose(f) != 0)
        die(path);
}

/* ---- step bodies -------------------------------------------------------- */

static const double FC[8] = {0.5, -1.25, 2e-3, 0, 1e-310, 3.0000000000000004, -7, 65504};
static const double GAIN[2] = {1, -0.1};
static const double PFC[8] = {1, 2, 3, 4, 5, 6, 7, 8};
static const double PGAIN[2] = {0.25, -0.75};

static size_t le_bytes(const double *x, size_t n, int f32, unsigned char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b[8];
        if (f32) {
            float f = (float)x[i];
            uint32_t u;
            memcpy(&u, &f, 4);
            for (int j = 0; j < 4; j++)
                b[j] = (unsigned char)(u >> (8 * j));
        } else {
            uint64_t u;
            memcpy(&u, &x[i], 8);
            for (int j = 0; j < 8; j++)
                b[j] = (unsigned char)(u >> (8 * j));
        }
        memcpy(out + k, b, f32 ? 4 : 8);
        k += f32 ? 4 : 8;
    }
    return k;
}

static void b64(const unsigned char *b, size_t n, char *out)
{
    static const char A[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i, k = 0;
    for (i = 0; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16 | (uint32_t)b[i + 1] << 8 | b[i + 2];
        for (int j = 18; j >= 0; j -= 6)
            out[k++] = A[(v >> j) & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)b[i] << 16 | (i + 1 < n ? (uint32_t)b[i + 1] << 8 : 0);
        out[k++] = A[v >> 18];
        out[k++] = A[(v >> 12) & 63];
        out[k++] = i + 1 < n ? A[(v >> 6) & 63] : '=';
        out[k++] = '=';
    }
    out[k] = 0;
}

/* "[x,...]" with %.17g. */
static void json_nums(const double *x, size_t n, char *out, size_t cap)
{
    size_t k = (size_t)snprintf(out, cap, "[");
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%.17g", i ? "," : "", x[i]);
    snprintf(out + k, cap - k, "]");
}

static void plain(const char *name, const char *json)
{
    static const unsigned char pre[2] = {0xFF, 0xFF};
    write_file("fuzz_step_body", name, pre, 2, json, strlen(json), NULL, 0);
}

static void binary(const char *name, const char *json, const unsigned char *tail, size_t tlen)
{
    size_t jl = strlen(json);
    if (jl >= 0xFFFF)
        die("JSON header too long");
    unsigned char pre[2] = {(unsigned char)jl, (unsigned char)(jl >> 8)};
    write_file("fuzz_step_body", name, pre, 2, json, jl, tail, tlen);
}

/* One tensor object with data in encoding @enc: 'j' JSON, 'n' nested JSON,
 * 'b' base64, 'x' binary (its bytes appended to @tail). */
static void tensor(char *out, size_t cap, const char *name, const double *x, size_t n, int f32,
                   char enc, unsigned char *tail, size_t *tlen)
{
    const char *shape = n == 8 ? "[2,4]" : "[2]";
    const char *dt = f32 ? "FP32" : "FP64";
    char data[1024];
    unsigned char raw[64];
    size_t nb;
    switch (enc) {
    case 'j':
        json_nums(x, n, data, sizeof data);
        break;
    case 'n':
        if (n == 8) {
            char r0[256], r1[256];
            json_nums(x, 4, r0, sizeof r0);
            json_nums(x + 4, 4, r1, sizeof r1);
            snprintf(data, sizeof data, "[%s, %s]", r0, r1);
        } else {
            json_nums(x, n, data, sizeof data);
        }
        break;
    case 'b': {
        char t[128];
        nb = le_bytes(x, n, f32, raw);
        b64(raw, nb, t);
        snprintf(data, sizeof data, "{\"b64\": \"%s\"}", t);
        break;
    }
    default:
        nb = le_bytes(x, n, f32, raw);
        memcpy(tail + *tlen, raw, nb);
        *tlen += nb;
        snprintf(out, cap,
                 "{\"name\":\"%s\",\"shape\":%s,\"datatype\":\"%s\","
                 "\"parameters\":{\"binary_data_size\":%zu}}",
                 name, shape, dt, nb);
        return;
    }
    snprintf(out, cap, "{\"name\":\"%s\",\"shape\":%s,\"datatype\":\"%s\",\"data\":%s}", name,
             shape, dt, data);
}

/* A whole body: gradients (and params, first when @params_first). */
static void body(const char *file, int f32, char enc, int with_params, int params_first)
{
    char g0[1400], g1[600], p0[1400], p1[600], json[4096];
    unsigned char tail[256];
    size_t tlen = 0;
    char gs[2100], ps[2100];
    if (with_params && params_first) {
        tensor(p0, sizeof p0, "fc", PFC, 8, f32, enc, tail, &tlen);
        tensor(p1, sizeof p1, "gain", PGAIN, 2, f32, enc, tail, &tlen);
    }
    /* Gradients in reverse block order: any order is valid. */
    tensor(g1, sizeof g1, "gain", GAIN, 2, f32, enc, tail, &tlen);
    tensor(g0, sizeof g0, "fc", FC, 8, f32, enc, tail, &tlen);
    if (with_params && !params_first) {
        tensor(p0, sizeof p0, "fc", PFC, 8, f32, enc, tail, &tlen);
        tensor(p1, sizeof p1, "gain", PGAIN, 2, f32, enc, tail, &tlen);
    }
    snprintf(gs, sizeof gs, "\"gradients\": [%s, %s]", g1, g0);
    if (with_params)
        snprintf(ps, sizeof ps, "\"params\": [%s, %s]", p0, p1);
    if (!with_params)
        snprintf(json, sizeof json, "{\"step\": 1, %s, \"loss\": 0.25}", gs);
    else if (params_first)
        snprintf(json, sizeof json, "{\"step\": 2, %s, %s}", ps, gs);
    else
        snprintf(json, sizeof json, "{\"step\": 3, %s, %s}", gs, ps);
    if (enc == 'x')
        binary(file, json, tail, tlen);
    else
        plain(file, json);
}

static void step_bodies(void)
{
    body("json-f64", 0, 'j', 0, 0);
    body("json-f32-params", 1, 'j', 1, 0);
    body("nested-f64-params-first", 0, 'n', 1, 1);
    body("nested-f32", 1, 'n', 0, 0);
    body("b64-f64", 0, 'b', 0, 0);
    body("b64-f32-params", 1, 'b', 1, 1);
    body("bin-f32", 1, 'x', 0, 0);
    body("bin-f64-params-first", 0, 'x', 1, 1);
    body("bin-f32-params-after", 1, 'x', 1, 0);
    /* Binary extension with one JSON tensor and one binary one. */
    {
        unsigned char tail[16];
        size_t n = le_bytes(GAIN, 2, 0, tail);
        binary("bin-mixed",
               "{\"step\":4,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":\"FP64\","
               "\"data\":[[1,2,3,4],[5,6,7,8]]},{\"name\":\"gain\",\"shape\":[2],\"datatype\":"
               "\"FP64\",\"parameters\":{\"binary_data_size\":16}}]}",
               tail, n);
    }
    /* Refusals and edges the decoder must name. */
    plain("nan-literal", "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":"
                         "\"FP64\",\"data\":[NaN,Infinity,-Infinity,1e999,0,0,0,0]},{\"name\":"
                         "\"gain\",\"shape\":[2],\"datatype\":\"FP64\",\"data\":[0,0]}]}");
    plain("escaped-data-key",
          "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":\"FP32\","
          "\"d\\u0061ta\":[[1.5,-2.5e-3,3.4028234e38,1.17549435e-38],[1e-45,-0,0.1,7]]},"
          "{\"name\":\"gain\",\"shape\":[2],\"datatype\":\"FP32\",\"data\":[2,3]}]}");
    plain("numbers-edge",
          "{\"step\":9000000000000000,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,4],"
          "\"datatype\":\"FP64\",\"data\":[2.2250738585072011e-308,4.9e-324,1.7976931348623157e308,"
          "0.30000000000000004,1.23456789012345678901234567890e29,1E+2,-0.0e-0,"
          "1.00000000000000011102230246251565404236316680908203125]},{\"name\":\"gain\","
          "\"shape\":[2],\"datatype\":\"FP64\",\"data\":[9007199254740993,-1e-400]}]}");
    plain("numbers-bigint",
          "{\"step\":1,\"gradients\":[{\"name\":\"gain\",\"shape\":[2],\"datatype\":\"FP32\","
          "\"data\":[123456789012345678901234567890,-340282356779733661637539395458142568448]},"
          "{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":\"FP32\",\"data\":[[0,0,0,0],"
          "[0,0,0,-0]]}]}");
    plain("ragged", "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":"
                    "\"FP64\",\"data\":[[1,2,3],[4,5,6,7,8]]},{\"name\":\"gain\",\"shape\":[2],"
                    "\"datatype\":\"FP64\",\"data\":[[1],[2]]}]}");
    plain("reserved-key",
          "{\"step\":1,\"loss\":{\"$curvd_cut\":0},\"gradients\":[{\"name\":\"gain\","
          "\"shape\":[2],\"datatype\":\"FP64\",\"data\":[1,2]}]}");
    plain("bad-b64", "{\"step\":1,\"gradients\":[{\"name\":\"gain\",\"shape\":[2],\"datatype\":"
                     "\"FP32\",\"data\":{\"b64\":\"AAAAAAAAAB==\"}},{\"name\":\"fc\",\"shape\":"
                     "[0,4,9223372036854775807],\"datatype\":\"FP64\",\"data\":[]}]}");
    plain("shape-overflow",
          "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[4294967296,4294967296,2],"
          "\"datatype\":\"FP64\",\"data\":[]}]}");
    plain("params-not-array", "{\"step\":1,\"params\":{\"name\":\"fc\"},\"gradients\":[]}");
    plain("parameters-not-object",
          "{\"step\":1,\"gradients\":[{\"name\":\"gain\",\"shape\":[2],\"datatype\":\"FP64\","
          "\"parameters\":5}]}");
    plain("binary-and-data",
          "{\"step\":1,\"gradients\":[{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":\"FP64\","
          "\"data\":[1,2,3,4,5,6,7,8],\"parameters\":{\"binary_data_size\":64}}]}");
    plain("b64-not-string", "{\"step\":1,\"gradients\":[{\"name\":\"gain\",\"shape\":[2],"
                            "\"datatype\":\"FP32\",\"data\":{\"b64\":5}}]}");
    {
        /* Prefix 0xFFFE: plain JSON sent with the wrong Content-Type. */
        static const char j[] = "{\"step\":1,\"gradients\":[]}";
        static const unsigned char pre[2] = {0xFE, 0xFF};
        write_file("fuzz_step_body", "wrong-content-type", pre, 2, j, sizeof j - 1, NULL, 0);
    }
    plain("deep-escaped",
          "{\"step\":1,\"gradients\":[{\"name\":\"gain\",\"shape\":[2],\"datatype\":\"FP64\","
          "\"d\\u0061ta\":[[[[[[[[[1]]]]]]]]]},{\"name\":\"fc\",\"shape\":[1,1,1,1,1,1,1,1,1],"
          "\"datatype\":\"FP64\",\"data\":[[[[[[[[[1]]]]]]]]]}]}");
    {
        /* 800 significant digits: strtod's sticky-digit path. */
        char json[2048];
        size_t k = (size_t)snprintf(json, sizeof json,
                                    "{\"step\":1,\"gradients\":[{\"name\":\"gain\",\"shape\":"
                                    "[2],\"datatype\":\"FP64\",\"data\":[0.");
        for (int i = 0; i < 800; i++)
            json[k++] = (char)('1' + i % 9);
        snprintf(json + k, sizeof json - k,
                 "e-5,2.4703282292062327208828439643411068618252990130716238221279284125033775"
                 "3e-324]},{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":\"FP64\",\"data\":"
                 "[1,2,3,4,5,6,7,8]}]}");
        plain("long-number", json);
    }
    {
        /* The header length says more than the body holds. */
        static const char j[] = "{\"step\":1,\"gradients\":[]}";
        unsigned char pre[2] = {0xF0, 0x00};
        write_file("fuzz_step_body", "bin-header-too-long", pre, 2, j, sizeof j - 1, NULL, 0);
    }
}

/* ---- state blobs -------------------------------------------------------- */

static curv_layout *small_layout(int conv)
{
    curv_layout *l = curv_layout_new();
    if (!l || curv_layout_add_dense(l, "fc", 2, 3, 1, NULL) != CURV_OK ||
        curv_layout_add_vector(l, "gain", 2, NULL) != CURV_OK)
        die("layout");
    if (conv && curv_layout_add_conv2d(l, "conv", 2, 1, 2, 2, 0, NULL) != CURV_OK)
        die("layout conv");
    return l;
}

static void blob(const char *kind, curv_layout *l, const char *const *skeys,
                 const char *const *svals, const char *const *nkeys, const double *nvals, int steps,
                 const char *file)
{
    curv_opt_kind k;
    curv_error err;
    curv_config *c = curv_config_new();
    curv_opt *o = NULL;
    if (!c || curv_opt_kind_parse(kind, &k) != CURV_OK)
        die(kind);
    for (size_t i = 0; skeys && skeys[i]; i++)
        if (curv_config_set_str(c, skeys[i], svals[i], NULL) != CURV_OK)
            die(skeys[i]);
    for (size_t i = 0; nkeys && nkeys[i]; i++)
        if (curv_config_set_num(c, nkeys[i], nvals[i], NULL) != CURV_OK)
            die(nkeys[i]);
    if (curv_opt_new(k, l, c, &o, &err) != CURV_OK) {
        fprintf(stderr, "make_seeds: %s: %s\n", kind, err.text);
        exit(1);
    }
    size_t dim = curv_layout_dim(l);
    double *g = calloc(dim, sizeof *g), *th = calloc(dim, sizeof *th), *up = calloc(dim, 8);
    if (!g || !th || !up)
        die("calloc");
    for (int s = 0; s < steps; s++) {
        for (size_t i = 0; i < dim; i++) {
            g[i] = ((double)((i * 7 + (size_t)s * 3) % 11) - 5.0) / 4.0;
            th[i] = (double)i / 8.0;
        }
        curv_step_input in = {.grad = g, .params = th, .len = dim, .dtype = CURV_F64};
        curv_request req;
        if (curv_opt_step(o, &in, up, &req, &err) != CURV_OK) {
            fprintf(stderr, "make_seeds: %s step: %s\n", kind, err.text);
            exit(1);
        }
    }
    unsigned char *b = NULL;
    size_t n = 0;
    if (curv_opt_save(o, &b, &n, &err) != CURV_OK)
        die("save");
    /* Mode 1: the target recomputes length and CRC (mutations reach the
     * payload); mode 0 for the fresh blobs keeps the raw path seeded. */
    unsigned char mode = steps ? 1 : 0;
    write_file("fuzz_state_blob", file, &mode, 1, b, n, NULL, 0);
    if (!steps) {
        char f2[128];
        mode = 1;
        snprintf(f2, sizeof f2, "%s-fix", file);
        write_file("fuzz_state_blob", f2, &mode, 1, b, n, NULL, 0);
    }
    curv_free(b);
    free(g);
    free(th);
    free(up);
    curv_opt_free(o);
    curv_config_free(c);
}

static void state_blobs(void)
{
    curv_layout *l = small_layout(0), *lc = small_layout(1);
    static const char *const kinds[] = {"sgd",  "adagrad_diag", "adagrad_full", "adagrad_bma",
                                        "mbag", "mbag_ema",     "mbag_n"};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char f[128];
        snprintf(f, sizeof f, "%s-fresh", kinds[i]);
        blob(kinds[i], l, NULL, NULL, NULL, NULL, 0, f);
        snprintf(f, sizeof f, "%s-3steps", kinds[i]);
        blob(kinds[i], l, NULL, NULL, NULL, NULL, 3, f);
        snprintf(f, sizeof f, "%s-conv-2steps", kinds[i]);
        blob(kinds[i], lc, NULL, NULL, NULL, NULL, 2, f);
    }
    /* HF steps need a trainer answering requests: its fresh state only
     * (λ, the request counter and the warm-start vector). */
    blob("hf", l, NULL, NULL, NULL, NULL, 0, "hf-fresh");
    {
        static const char *const nk[] = {"momentum", "nesterov", "weight_decay", NULL};
        static const double nv[] = {0.9, 1, 1e-4};
        static const char *const sk[] = {"momentum_schedule", NULL};
        static const char *const sv[] = {"sutskever"};
        blob("sgd", l, sk, sv, nk, nv, 2, "sgd-nesterov-2steps");
    }
    {
        static const char *const sk[] = {"partition", NULL};
        static const char *const sv[] = {"row"};
        static const char *const nk[] = {"literal_line18", "inv_interval", NULL};
        static const double nv[] = {1, 2};
        blob("adagrad_bma", lc, sk, sv, nk, nv, 3, "adagrad_bma-row-3steps");
    }
    {
        static const char *const nk[] = {"tau", "conv_tau", "t_sqr", "symmetrize_every", NULL};
        static const double nv[] = {3, 2, 2, 1};
        blob("mbag", lc, NULL, NULL, nk, nv, 4, "mbag-tau3-4steps");
    }
    curv_layout_free(l);
    curv_layout_free(lc);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: make_seeds OUTDIR\n");
        return 2;
    }
    outdir = argv[1];
    step_bodies();
    state_blobs();
    return 0;
}
