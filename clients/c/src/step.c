/* SPDX-License-Identifier: MIT */
/*
 * Steps: the request body (JSON numbers, or the binary extension with
 * each tensor's bytes appended in the order its object is written), the
 * reply's tensors back into flat vectors, and the callback loop.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvc_int.h"

/* A body under construction: the JSON text and, for binary, the bytes. */
struct body {
    struct curvc_buf js, bin;
    curvc_encoding enc;
};

static void put_le64(struct curvc_buf *b, double x)
{
    unsigned char out[8];
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    for (int i = 0; i < 8; i++)
        out[i] = (unsigned char)(u >> (8 * i));
    curvc__buf_add(b, out, sizeof out);
}

static double get_le(const unsigned char *p, int fp32)
{
    uint64_t u = 0;
    for (int i = (fp32 ? 4 : 8) - 1; i >= 0; i--)
        u = (u << 8) | p[i];
    if (fp32) {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, sizeof f);
        return f;
    }
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* One FP64 tensor object, shape [rows, cols] (cols 0: a vector [rows]). */
static void tensor(struct body *b, const char *name, const double *x, size_t rows, size_t cols)
{
    size_t n = rows * (cols ? cols : 1);
    curvc__buf_cat(&b->js, "{\"name\":");
    curvc__buf_str(&b->js, name);
    if (cols)
        curvc__buf_printf(&b->js, ",\"shape\":[%zu,%zu],\"datatype\":\"FP64\"", rows, cols);
    else
        curvc__buf_printf(&b->js, ",\"shape\":[%zu],\"datatype\":\"FP64\"", rows);
    if (b->enc == CURVC_BINARY) {
        curvc__buf_printf(&b->js, ",\"parameters\":{\"binary_data_size\":%zu}}", 8 * n);
        for (size_t i = 0; i < n; i++)
            put_le64(&b->bin, x[i]);
        return;
    }
    curvc__buf_cat(&b->js, ",\"data\":[");
    for (size_t i = 0; i < n; i++) {
        const char *sep = i ? "," : "";
        if (isfinite(x[i])) /* %.17g round-trips; the daemon names a NaN's element */
            curvc__buf_printf(&b->js, "%s%.17g", sep, x[i]);
        else
            curvc__buf_printf(&b->js, "%s%s", sep,
                              isnan(x[i]) ? "NaN"
                              : x[i] > 0  ? "Infinity"
                                          : "-Infinity");
    }
    curvc__buf_cat(&b->js, "]}");
}

/* One tensor per block of a flat vector: [{...}, ...]. */
static void blocks(struct body *b, const curvc_session *s, const double *flat)
{
    curvc__buf_cat(&b->js, "[");
    for (size_t k = 0; k < s->n_blocks; k++) {
        const struct curvc_blk *bk = &s->blocks[k];
        if (k)
            curvc__buf_cat(&b->js, ",");
        tensor(b, bk->name, flat + bk->offset, bk->rows, bk->vector ? 0 : bk->cols);
    }
    curvc__buf_cat(&b->js, "]");
}

static const struct curvc_blk *find_block(const curvc_session *s, const char *name)
{
    for (size_t k = 0; name && k < s->n_blocks; k++)
        if (strcmp(s->blocks[k].name, name) == 0)
            return &s->blocks[k];
    return NULL;
}

static curvc_status step_body(const curvc_session *s, const curvc_step_in *in, struct body *b,
                              curvc_error *err)
{
    curvc__buf_printf(&b->js, "{\"step\":%llu,\"gradients\":", (unsigned long long)s->steps + 1);
    blocks(b, s, in->grad);
    if (in->params) {
        curvc__buf_cat(&b->js, ",\"params\":");
        blocks(b, s, in->params);
    }
    if (in->grad_sq) {
        curvc__buf_cat(&b->js, ",\"grad_sq\":");
        blocks(b, s, in->grad_sq);
    }
    for (size_t i = 0; i < in->n_layers; i++) {
        const curvc_layer *ly = &in->layers[i];
        const struct curvc_blk *bk = find_block(s, ly->block);
        if (!bk || bk->vector || !ly->acts || !ly->signals)
            return curvc__fail(err, CURVC_E_INVALID,
                               "layers[%zu]: '%s' is not a dense or conv2d block of the session, "
                               "or its matrices are NULL",
                               i, ly->block ? ly->block : "(null)");
        curvc__buf_cat(&b->js, i ? ",{\"block\":" : ",\"layers\":[{\"block\":");
        curvc__buf_str(&b->js, bk->name);
        curvc__buf_printf(
            &b->js, ",\"examples\":%zu,\"activations\":", ly->examples ? ly->examples : ly->rows);
        tensor(b, bk->name, ly->acts, ly->rows, bk->cols - (size_t)bk->bias);
        curvc__buf_cat(&b->js, ",\"signals\":");
        tensor(b, bk->name, ly->signals, ly->rows, bk->rows);
        curvc__buf_cat(&b->js, "}");
    }
    if (in->n_layers)
        curvc__buf_cat(&b->js, "]");
    if (in->has_loss)
        curvc__buf_printf(&b->js, ",\"loss\":%.17g", in->loss);
    if (in->batch)
        curvc__buf_printf(&b->js, ",\"batch\":%zu", in->batch);
    curvc__buf_cat(&b->js, "}");
    return CURVC_OK;
}

/* ---- replies ---------------------------------------------------------------- */

struct cursor {
    const unsigned char *p;
    size_t left;
};

/* Flattened numbers of a (possibly nested) JSON array; -1 on a non-number. */
static long numbers(const json_t *a, double *out, size_t cap, size_t k)
{
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v)
    {
        if (json_is_array(v)) {
            long r = numbers(v, out, cap, k);
            if (r < 0)
                return -1;
            k = (size_t)r;
        } else if (json_is_number(v)) {
            if (k < cap)
                out[k] = json_number_value(v);
            k++;
        } else {
            return -1;
        }
    }
    return (long)k;
}

/* Tensors of a reply into @flat (the session's order). */
static curvc_status read_tensors(const curvc_session *s, const json_t *arr, struct cursor *bin,
                                 double *flat, curvc_error *err)
{
    if (json_array_size(arr) != s->n_blocks)
        return curvc__fail(err, CURVC_E_PROTOCOL, "a reply holds %zu tensors for %zu blocks",
                           json_array_size(arr), s->n_blocks);
    for (size_t i = 0; i < s->n_blocks; i++) {
        const json_t *t = json_array_get(arr, i);
        const struct curvc_blk *bk = find_block(s, json_string_value(json_object_get(t, "name")));
        const char *dt = json_string_value(json_object_get(t, "datatype"));
        if (!bk || !dt)
            return curvc__fail(err, CURVC_E_PROTOCOL, "reply tensor %zu names no block", i);
        int fp32 = strcmp(dt, "FP32") == 0;
        const json_t *data = json_object_get(t, "data");
        if (json_is_array(data)) {
            if (numbers(data, flat + bk->offset, bk->size, 0) != (long)bk->size)
                return curvc__fail(err, CURVC_E_PROTOCOL, "reply tensor '%s' is not %zu numbers",
                                   bk->name, bk->size);
            continue;
        }
        size_t want = bk->size * (fp32 ? 4 : 8);
        json_int_t size = json_integer_value(
            json_object_get(json_object_get(t, "parameters"), "binary_data_size"));
        if (!bin || (size_t)size != want || bin->left < want)
            return curvc__fail(err, CURVC_E_PROTOCOL, "reply tensor '%s' lacks its %zu bytes",
                               bk->name, want);
        for (size_t j = 0; j < bk->size; j++)
            flat[bk->offset + j] = get_le(bin->p + j * (fp32 ? 4 : 8), fp32);
        bin->p += want;
        bin->left -= want;
    }
    return CURVC_OK;
}

/* A pending callback, decoded. */
struct pending {
    curvc_request req;
    double *vectors;
    char url[192];
};

static curvc_status read_callback(const curvc_session *s, const json_t *cb, struct cursor *bin,
                                  struct pending *pd, curvc_error *err)
{
    const char *kind = json_string_value(json_object_get(cb, "kind"));
    const char *url = json_string_value(json_object_get(cb, "url"));
    const json_t *vecs = json_object_get(cb, "vectors");
    size_t n = json_array_size(vecs);
    if (!kind || !url || strlen(url) >= sizeof pd->url || n == 0)
        return curvc__fail(err, CURVC_E_PROTOCOL, "an unreadable callback");
    pd->req.kind = strcmp(kind, "curvature_product") == 0 ? CURVC_REQ_CURVATURE_PRODUCT
                   : strcmp(kind, "loss") == 0            ? CURVC_REQ_LOSS
                                                          : CURVC_REQ_QUADRATIC_FORM;
    pd->req.n_vectors = n;
    pd->req.dim = s->dim;
    pd->req.n_values = pd->req.kind == CURVC_REQ_CURVATURE_PRODUCT ? n * s->dim
                       : pd->req.kind == CURVC_REQ_LOSS            ? n
                                                                   : n * n;
    snprintf(pd->url, sizeof pd->url, "%s", url);
    free(pd->vectors);
    pd->vectors = malloc(n * s->dim * sizeof *pd->vectors);
    if (!pd->vectors)
        return curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    pd->req.vectors = pd->vectors;
    for (size_t i = 0; i < n; i++) {
        curvc_status st =
            read_tensors(s, json_array_get(vecs, i), bin, pd->vectors + i * s->dim, err);
        if (st != CURVC_OK)
            return st;
    }
    return CURVC_OK;
}

/* 200 (update written, *done = 1) or 202 (@pd filled). */
static curvc_status read_reply(curvc_session *s, const struct curvc_reply *r, double *update,
                               struct pending *pd, int *done, curvc_error *err)
{
    json_t *root = NULL;
    curvc_status st = curvc__parse(r, &root, err);
    if (st != CURVC_OK)
        return st;
    struct cursor bin = {(const unsigned char *)r->body.p + r->json_len, r->body.len - r->json_len};
    *done = r->status == 200;
    if (*done) {
        st = read_tensors(s, json_object_get(root, "update"), &bin, update, err);
        if (st == CURVC_OK) {
            s->steps = (uint64_t)json_integer_value(json_object_get(root, "step"));
            free(s->report); /* NULL (out of memory) reads as "{}" */
            s->report = json_dumps(json_object_get(root, "report"), JSON_COMPACT);
        }
    } else {
        st = read_callback(s, json_object_get(root, "callback"), &bin, pd, err);
    }
    json_decref(root);
    return st;
}

static curvc_status answer_body(const curvc_session *s, const struct pending *pd, const double *ans,
                                struct body *b)
{
    const curvc_request *q = &pd->req;
    if (q->kind == CURVC_REQ_CURVATURE_PRODUCT) {
        curvc__buf_cat(&b->js, "{\"products\":[");
        for (size_t i = 0; i < q->n_vectors; i++) {
            if (i)
                curvc__buf_cat(&b->js, ",");
            blocks(b, s, ans + i * s->dim);
        }
    } else {
        b->enc = CURVC_JSON; /* numbers only */
        curvc__buf_cat(&b->js, q->kind == CURVC_REQ_LOSS ? "{\"losses\":[" : "{\"gram\":[");
        for (size_t i = 0; i < q->n_values; i++)
            curvc__buf_printf(&b->js, "%s%.17g", i ? "," : "", ans[i]);
    }
    curvc__buf_cat(&b->js, "]}");
    return CURVC_OK;
}

/* POST a body (JSON, then the binary part). */
static curvc_status post(curvc_session *s, const char *path, struct body *b, struct curvc_reply *r,
                         curvc_error *err)
{
    if (b->js.oom || b->bin.oom)
        return curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    size_t json_len = b->enc == CURVC_BINARY ? b->js.len : 0;
    if (b->enc == CURVC_BINARY && b->bin.len) {
        curvc__buf_add(&b->js, b->bin.p, b->bin.len);
        curvc__buf_clear(&b->bin);
        if (b->js.oom)
            return curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    }
    return curvc__request(s->client, "POST", path, b->js.p, b->js.len, json_len, 1, r, err);
}

enum { MAX_RESTARTS = 3 };

static const char *REQ_NAME[] = {"", "curvature_product", "loss", "quadratic_form"};

/* Index of the first NaN or infinity of @v, or @n. */
static size_t first_nonfinite(const double *v, size_t n)
{
    size_t i = 0;
    while (i < n && isfinite(v[i]))
        i++;
    return i;
}

curvc_status curvc_step(curvc_session *s, const curvc_step_in *in, curvc_encoding enc,
                        curvc_oracle oracle, void *user, double *update, curvc_error *err)
{
    curvc_error local;
    err = err ? err : &local; /* the reason decides whether to post the step again */
    if (!s || !in || !in->grad || !update)
        return curvc__fail(err, CURVC_E_INVALID, "curvc_step: NULL argument");
    struct body step = {.enc = enc}, ans = {.enc = enc};
    struct curvc_reply r = {0};
    struct pending pd = {0};
    double *values = NULL;
    char path[96];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", s->id);
    if (in->has_loss && !isfinite(in->loss))
        return curvc__fail(err, CURVC_E_INVALID,
                           "step %llu: the loss is %g: not finite, so it was not sent",
                           (unsigned long long)s->steps + 1, in->loss);
    curvc_status st = step_body(s, in, &step, err);
    size_t json_len = step.js.len;
    if (st == CURVC_OK)
        st = post(s, path, &step, &r, err); /* step.js now holds the whole body */
    int done = 0, restarts = 0;
    while (st == CURVC_OK && !(st = read_reply(s, &r, update, &pd, &done, err)) && !done) {
        free(values);
        values = malloc(pd.req.n_values * sizeof *values);
        if (!values) {
            st = curvc__fail(err, CURVC_E_NOMEM, "out of memory");
            break;
        }
        if (!oracle || oracle(user, &pd.req, values) != 0) {
            st = curvc__fail(err, CURVC_E_CALLBACK, "step %llu: %s callback %s",
                             (unsigned long long)s->steps + 1,
                             pd.req.kind == CURVC_REQ_LOSS ? "a loss" : "a curvature",
                             oracle ? "refused by the oracle" : "and no oracle to answer it");
            break;
        }
        size_t bad = first_nonfinite(values, pd.req.n_values);
        if (bad < pd.req.n_values) {
            st = curvc__fail(err, CURVC_E_CALLBACK,
                             "step %llu: the %s callback's answer, value %zu is %g: not finite, "
                             "so it was not sent",
                             (unsigned long long)s->steps + 1, REQ_NAME[pd.req.kind], bad,
                             values[bad]);
            break;
        }
        curvc__buf_clear(&ans.js);
        curvc__buf_clear(&ans.bin);
        ans.enc = enc;
        answer_body(s, &pd, values, &ans);
        st = post(s, pd.url, &ans, &r, err);
        if (st == CURVC_E_PROBLEM && (curvc__reason_does(err->reason) & CURVC__RESTART_STEP) &&
            restarts++ < MAX_RESTARTS) /* the daemon lost the step: start it again */
            st = curvc__request(s->client, "POST", path, step.js.p, step.js.len,
                                enc == CURVC_BINARY ? json_len : 0, 1, &r, err);
    }
    free(values);
    free(pd.vectors);
    curvc__buf_clear(&step.js);
    curvc__buf_clear(&step.bin);
    curvc__buf_clear(&ans.js);
    curvc__buf_clear(&ans.bin);
    curvc__reply_clear(&r);
    return st;
}
