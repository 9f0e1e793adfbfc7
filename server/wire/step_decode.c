/* SPDX-License-Identifier: MIT */
/* Decoding a step body: shared by the step handler and the fuzz target, so
 * the fuzzer exercises exactly the daemon's code. */
#include "wire/step_decode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void curvd_step_in_clear(struct curvd_step_in *s)
{
    curvd_tensors_free(s->grads, s->ngrads);
    curvd_tensors_free(s->params, s->nparams);
    curvd_tensors_free(s->grad_sq, s->ngrad_sq);
    for (size_t i = 0; i < s->nlayers; i++) {
        curvd_tensor_clear(&s->layers[i].acts);
        curvd_tensor_clear(&s->layers[i].signals);
    }
    free(s->layers);
    curvd_doc_free(s->doc);
    memset(s, 0, sizeof *s);
}

/* 1 when the parameters @p of a content type (after the media type) name
 * no charset but UTF-8: the daemon reads bodies as UTF-8, and a body
 * declared in another charset would be read as what it is not. */
static int charset_utf8(const char *p)
{
    while (*p) {
        p += strspn(p, " \t;");
        size_t name = strcspn(p, "=; \t");
        const char *v = p + name + (p[name] == '=');
        size_t vlen = strcspn(v, ";");
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
            vlen--;
        if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"')
            v++, vlen -= 2;
        if (name == 7 && strncasecmp(p, "charset", 7) == 0 &&
            !(vlen == 5 && strncasecmp(v, "utf-8", 5) == 0))
            return 0;
        p = v + strcspn(v, ";");
    }
    return 1;
}

int curvd_ctype_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    return ct && strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ') &&
           charset_utf8(ct + n);
}

/* 1 when @key is one of the NULL-terminated @names. */
static int one_of(const char *key, const char *const *names)
{
    for (; *names; names++)
        if (strcmp(key, *names) == 0)
            return 1;
    return 0;
}

static int unknown_member(const char *prefix, const char *key, const char *allowed,
                          struct curvd_problem *p)
{
    char path[160];
    snprintf(path, sizeof path, "%s/%.70s", prefix, key);
    return curvd_problem_set(p, CURVD_R_UNKNOWN_MEMBER, path, allowed, key,
                             "unknown member \"%.70s\" in %s", key,
                             prefix[0] ? prefix : "the step");
}

int curvd_step_check_members(struct curvd_step_in *in, struct curvd_problem *p)
{
    static const char *const members[] = {"step",   "gradients", "params", "grad_sq",
                                          "layers", "loss",      "batch",  NULL};
    json_t *root = in->root, *v;
    const char *key;
    json_object_foreach(root, key, v)
    {
        if (!one_of(key, members))
            return unknown_member(
                "", key, "one of step, gradients, params, grad_sq, layers, loss, batch", p);
    }
    json_t *loss = json_object_get(root, "loss");
    if (loss && !json_is_number(loss))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/loss", "a number", NULL,
                                 "\"loss\" must be a number");
    in->has_loss = loss != NULL;
    in->loss = json_number_value(loss);
    json_t *batch = json_object_get(root, "batch");
    double b = json_number_value(batch);
    if (batch && (!json_is_integer(batch) || b < 1 || b > 9e15))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/batch", "an integer >= 1", NULL,
                                 "\"batch\" (the examples behind the gradient) must be an "
                                 "integer >= 1");
    in->batch = batch ? (size_t)b : 0;
    json_t *step = json_object_get(root, "step");
    double n = json_number_value(step);
    if (!json_is_object(root) || !json_is_number(step) || n < 1 || n != floor(n) || n > 9e15)
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/step", "an integer >= 1", NULL,
                                 "the body must be an object with \"step\": n >= 1");
    in->step = (long long)n;
    return 0;
}

int curvd_body_parse(const unsigned char *body, size_t body_len, const char *hl,
                     const char *content_type, struct curvd_doc **doc, struct curvd_binary *bin,
                     int *binary, struct curvd_problem *p)
{
    size_t json_len = body_len;
    *binary = 0;
    if (hl && content_type && !curvd_ctype_is(content_type, "application/octet-stream")) {
        return curvd_problem_set(p, CURVD_R_UNSUPPORTED_MEDIA_TYPE, "Content-Type",
                                 "application/octet-stream", content_type,
                                 "a body with Inference-Header-Content-Length (the binary "
                                 "extension) is application/octet-stream, not %.80s",
                                 content_type);
    } else if (hl) {
        char *end;
        unsigned long long v = strtoull(hl, &end, 10);
        if (*end || end == hl || v > body_len)
            return curvd_problem_set(p, CURVD_R_BAD_BINARY, "Inference-Header-Content-Length",
                                     "at most the body length", hl, "bad JSON header length");
        json_len = (size_t)v;
        *binary = 1;
        if (curvd_binary_init(bin, body, body_len, json_len, p) != 0)
            return -1;
    } else if (!curvd_ctype_is(content_type, "application/json")) {
        return curvd_problem_set(p, CURVD_R_UNSUPPORTED_MEDIA_TYPE, "", "application/json",
                                 content_type ? content_type : "none",
                                 "expected Content-Type: application/json (UTF-8), or the "
                                 "binary extension with Inference-Header-Content-Length");
    }
    return curvd_json_parse((const char *)body, json_len, doc, p);
}

int curvd_step_parse_head(const unsigned char *body, size_t body_len, const char *hl,
                          const char *content_type, struct curvd_step_in *in,
                          struct curvd_binary *bin, int *binary, struct curvd_problem *p)
{
    in->max_elems = body_len;
    if (curvd_body_parse(body, body_len, hl, content_type, &in->doc, bin, binary, p) != 0)
        return -1;
    in->root = curvd_doc_root(in->doc);
    return curvd_step_check_members(in, p);
}

/* The shape a layer's matrix must have: [rows, cols]; @rows 0 (the first
 * matrix of the entry) accepts any rows >= 1. */
static int check_matrix(const struct curvd_tensor *t, const char *path, size_t rows, size_t cols,
                        const char *block, struct curvd_problem *p)
{
    if (t->ndim == 2 && t->shape[0] > 0 && (!rows || t->shape[0] == rows) && t->shape[1] == cols)
        return 0;
    char sub[176], want[64], got[96] = "[";
    snprintf(sub, sizeof sub, "%.160s/shape", path);
    snprintf(want, sizeof want, rows ? "[%zu,%zu]" : "[rows>=1,%zu]", rows ? rows : cols, cols);
    for (size_t i = 0; i < t->ndim; i++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%zu", i ? "," : "", t->shape[i]);
    strncat(got, "]", sizeof got - strlen(got) - 1);
    return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, sub, want, got,
                             "layer '%s': expected shape %s, got %s", block, want, got);
}

static int decode_layer(const curv_layout *l, struct curvd_step_in *in, struct curvd_binary *bin,
                        const json_t *obj, const char *path, struct curvd_layer_in *out,
                        struct curvd_problem *p)
{
    static const char *const members[] = {"block", "examples", "activations", "signals", NULL};
    char sub[160];
    const char *key;
    json_t *v;
    if (!json_is_object(obj))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, "an object", NULL,
                                 "a layer entry is {\"block\", \"activations\", \"signals\"}");
    json_object_foreach((json_t *)obj, key, v)
    {
        if (!one_of(key, members))
            return unknown_member(path, key, "one of block, examples, activations, signals", p);
    }
    const char *name = json_string_value(json_object_get(obj, "block"));
    long k = name ? curv_layout_find(l, name) : -1;
    snprintf(sub, sizeof sub, "%s/block", path);
    if (k < 0)
        return curvd_problem_set(p, CURVD_R_UNKNOWN_BLOCK, sub, "the name of a block",
                                 name ? name : NULL, "the layout has no block '%s'",
                                 name ? name : "(missing)");
    curv_block_info b;
    curv_layout_block(l, (size_t)k, &b);
    out->block = (size_t)k;
    json_t *ex = json_object_get(obj, "examples");
    snprintf(sub, sizeof sub, "%s/examples", path);
    if (ex && (!json_is_integer(ex) || json_integer_value(ex) < 1))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, sub, "an integer >= 1", NULL,
                                 "\"examples\" must be an integer >= 1");
    size_t rows = 0;
    json_object_foreach((json_t *)obj, key, v)
    {
        int acts = strcmp(key, "activations") == 0;
        if (!acts && strcmp(key, "signals") != 0)
            continue;
        struct curvd_tensor *t = acts ? &out->acts : &out->signals;
        snprintf(sub, sizeof sub, "%s/%s", path, key);
        if (curvd_tensor_decode_rows(v, sub, in->doc, bin, in->max_elems, t, p) != 0 ||
            check_matrix(t, sub, rows, acts ? b.n_in : b.n_out, b.name, p) != 0)
            return -1;
        rows = t->shape[0];
    }
    if (!out->acts.ndim || !out->signals.ndim)
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, "activations and signals", NULL,
                                 "layer '%s' needs \"activations\" and \"signals\"", b.name);
    /* libcurv takes a layer's two matrices in one type: floats only when
     * both came as FP32 bytes. */
    if (!out->acts.fdata != !out->signals.fdata &&
        (curvd_tensor_widen(&out->acts, path, p) || curvd_tensor_widen(&out->signals, path, p)))
        return -1;
    out->examples = ex ? (size_t)json_integer_value(ex) : rows;
    return 0;
}

static int decode_layers(const curv_layout *l, struct curvd_step_in *in, struct curvd_binary *bin,
                         const json_t *arr, struct curvd_problem *p)
{
    if (!json_is_array(arr))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/layers", "an array", NULL,
                                 "\"layers\" must be an array of layer entries");
    size_t n = json_array_size(arr);
    in->layers = calloc(n ? n : 1, sizeof *in->layers);
    if (!in->layers)
        return curvd_problem_set(p, CURVD_R_NO_MEMORY, "/layers", NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char path[32];
        snprintf(path, sizeof path, "/layers/%zu", i);
        in->nlayers = i + 1; /* so that clear frees a partly decoded entry */
        if (decode_layer(l, in, bin, json_array_get(arr, i), path, &in->layers[i], p) != 0)
            return -1;
    }
    return 0;
}

/* Decode the tensors into flat vectors of the layout's dimension. With the
 * binary extension the bytes follow in document order, so the members are
 * decoded in the order their keys appear (jansson keeps insertion order). */
int curvd_step_decode_tensors(const curv_layout *l, struct curvd_step_in *in,
                              struct curvd_binary *bin, int binary, double *g, double *theta,
                              double *gsq, struct curvd_problem *p)
{
    size_t dim = curv_layout_dim(l);
    const char *key;
    json_t *v;
    struct curvd_binary *b = binary ? bin : NULL;
    json_object_foreach(in->root, key, v)
    {
        if (strcmp(key, "layers") == 0) {
            if (decode_layers(l, in, b, v, p) != 0)
                return -1;
            continue;
        }
        int which = strcmp(key, "gradients") == 0 ? 0
                    : strcmp(key, "params") == 0  ? 1
                    : strcmp(key, "grad_sq") == 0 ? 2
                                                  : -1;
        if (which < 0)
            continue;
        static const char *const paths[] = {"/gradients", "/params", "/grad_sq"};
        struct curvd_tensor **t[] = {&in->grads, &in->params, &in->grad_sq};
        size_t *n[] = {&in->ngrads, &in->nparams, &in->ngrad_sq};
        double *flat[] = {g, theta, gsq};
        if (curvd_tensors_decode(v, paths[which], in->doc, b, dim, t[which], n[which], p) != 0 ||
            curvd_tensors_to_flat(l, *t[which], *n[which], paths[which], flat[which], p) != 0)
            return -1;
    }
    if (!in->grads)
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/gradients", "an array of tensors", NULL,
                                 "the step has no \"gradients\"");
    if (binary && curvd_binary_finish(bin, p) != 0)
        return -1;
    if (in->nparams && in->ngrads && in->params[0].dtype != in->grads[0].dtype)
        return curvd_problem_set(p, CURVD_R_BAD_DATATYPE, "/params/0/datatype",
                                 in->grads[0].dtype == CURV_F32 ? "FP32" : "FP64",
                                 in->params[0].dtype == CURV_F32 ? "FP32" : "FP64",
                                 "params and gradients must share one datatype");
    in->dtype = in->ngrads ? in->grads[0].dtype : CURV_F64;
    in->encoding = binary ? CURVD_ENC_BINARY : in->ngrads ? in->grads[0].encoding : CURVD_ENC_JSON;
    return 0;
}

void curvd_step_layer_stats(const struct curvd_step_in *in, curv_layer_stats *out)
{
    for (size_t i = 0; i < in->nlayers; i++) {
        const struct curvd_layer_in *li = &in->layers[i];
        out[i] = (curv_layer_stats){
            .block = li->block,
            .rows = li->acts.shape[0],
            .examples = li->examples,
            .acts = li->acts.fdata ? (const void *)li->acts.fdata : li->acts.data,
            .signals = li->signals.fdata ? (const void *)li->signals.fdata : li->signals.data,
            .f32 = li->acts.fdata != NULL};
    }
}

/* ---- Callback answers ---------------------------------------------------- */

/* The member that carries the answer to each callback kind. */
static const char *answer_member(curv_request_kind k)
{
    return k == CURV_REQ_CURVATURE_PRODUCT ? "products" : k == CURV_REQ_LOSS ? "losses" : "gram";
}

/* {"products": [[tensors of vector 0], [tensors of vector 1], ...]} */
static int decode_products(const curv_layout *l, const json_t *arr, const struct curvd_doc *doc,
                           struct curvd_binary *bin, size_t n, double *out, struct curvd_problem *p)
{
    size_t dim = curv_layout_dim(l);
    if (!json_is_array(arr) || json_array_size(arr) != n) {
        char want[48];
        snprintf(want, sizeof want, "an array of %zu products", n);
        return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, "/products", want, NULL,
                                 "\"products\" must hold one array of tensors per vector (%zu)", n);
    }
    for (size_t i = 0; i < n; i++) {
        char path[32];
        struct curvd_tensor *t = NULL;
        size_t nt = 0;
        snprintf(path, sizeof path, "/products/%zu", i);
        int rc = curvd_tensors_decode(json_array_get(arr, i), path, doc, bin, dim, &t, &nt, p);
        if (rc == 0)
            rc = curvd_tensors_to_flat(l, t, nt, path, out + i * dim, p);
        curvd_tensors_free(t, nt);
        if (rc != 0)
            return -1;
    }
    return 0;
}

/* Numbers, flat or one level nested ([[a, b], [c, d]]), exactly @n of them. */
static int decode_numbers(const json_t *arr, const char *path, size_t n, double *out,
                          struct curvd_problem *p)
{
    size_t k = 0, i, j;
    json_t *v, *w;
    char want[48];
    snprintf(want, sizeof want, "%zu numbers", n);
    if (!json_is_array(arr))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, want, NULL, "%s must be an array",
                                 path);
    json_array_foreach(arr, i, v)
    {
        size_t m = json_is_array(v) ? json_array_size(v) : 1;
        for (j = 0; j < m; j++) {
            w = json_is_array(v) ? json_array_get(v, j) : v;
            if (!json_is_number(w))
                return curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, want, NULL,
                                         "%s must hold numbers only", path);
            if (k < n)
                out[k] = json_number_value(w);
            k++;
        }
    }
    if (k != n) {
        char got[32];
        snprintf(got, sizeof got, "%zu numbers", k);
        return curvd_problem_set(p, CURVD_R_SHAPE_MISMATCH, path, want, got,
                                 "%s must hold %zu numbers, got %zu", path, n, k);
    }
    return 0;
}

int curvd_answer_decode(const unsigned char *body, size_t body_len, const char *hl,
                        const char *content_type, const curv_layout *l, const curv_request *req,
                        double *values, struct curvd_problem *p)
{
    struct curvd_doc *doc = NULL;
    struct curvd_binary bin = {0};
    int binary = 0, rc = -1;
    const char *member = answer_member(req->kind);
    if (curvd_body_parse(body, body_len, hl, content_type, &doc, &bin, &binary, p) != 0)
        return -1;
    json_t *root = curvd_doc_root(doc), *v;
    const char *key;
    char allowed[48];
    snprintf(allowed, sizeof allowed, "\"%s\" only", member);
    if (!json_is_object(root)) {
        curvd_problem_set(p, CURVD_R_BAD_TENSOR, "", allowed, NULL,
                          "the answer must be an object with \"%s\"", member);
        goto out;
    }
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, member) != 0) {
            char path[80];
            snprintf(path, sizeof path, "/%.70s", key);
            curvd_problem_set(p, CURVD_R_UNKNOWN_MEMBER, path, allowed, key,
                              "this %s callback is answered with \"%s\" only",
                              req->kind == CURV_REQ_LOSS ? "loss" : "curvature", member);
            goto out;
        }
    }
    v = json_object_get(root, member);
    char path[16];
    snprintf(path, sizeof path, "/%s", member);
    if (!v)
        curvd_problem_set(p, CURVD_R_BAD_TENSOR, path, allowed, "absent", "the answer needs \"%s\"",
                          member);
    else if (req->kind == CURV_REQ_CURVATURE_PRODUCT)
        rc = decode_products(l, v, doc, binary ? &bin : NULL, req->n_vectors, values, p);
    else
        rc = decode_numbers(v, path, req->n_values, values, p);
    if (rc == 0 && binary)
        rc = curvd_binary_finish(&bin, p);
out:
    curvd_doc_free(doc);
    return rc;
}
