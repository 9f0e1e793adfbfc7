/* SPDX-License-Identifier: MIT */
/* Decoding a step body: shared by the step handler and the fuzz target, so
 * the fuzzer exercises exactly the daemon's code. */
#include "step_decode.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

void curvd_step_in_clear(struct curvd_step_in *s)
{
    curvd_tensors_free(s->grads, s->ngrads);
    curvd_tensors_free(s->params, s->nparams);
    curvd_doc_free(s->doc);
}

int curvd_ctype_is(const char *ct, const char *want)
{
    size_t n = strlen(want);
    return ct && strncasecmp(ct, want, n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

int curvd_step_parse_head(const unsigned char *body, size_t body_len, const char *hl,
                          const char *content_type, struct curvd_step_in *in,
                          struct curvd_binary *bin, int *binary, struct curvd_problem *p)
{
    size_t json_len = body_len;
    *binary = 0;
    if (hl) {
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
                                 "expected Content-Type: application/json, or the binary "
                                 "extension with Inference-Header-Content-Length");
    }
    if (curvd_json_parse((const char *)body, json_len, &in->doc, p) != 0)
        return -1;
    json_t *root = curvd_doc_root(in->doc);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "step") && strcmp(key, "gradients") && strcmp(key, "params") &&
            strcmp(key, "loss")) {
            char path[80];
            snprintf(path, sizeof path, "/%.70s", key);
            return curvd_problem_set(p, CURVD_R_UNKNOWN_MEMBER, path,
                                     "one of step, gradients, params, loss", key,
                                     "unknown member \"%.70s\" in the step", key);
        }
    }
    json_t *loss = json_object_get(root, "loss");
    if (loss && !json_is_number(loss))
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/loss", "a number", NULL,
                                 "\"loss\" must be a number");
    json_t *step = json_object_get(root, "step");
    double n = json_number_value(step);
    if (!json_is_object(root) || !json_is_number(step) || n < 1 || n != floor(n) || n > 9e15)
        return curvd_problem_set(p, CURVD_R_BAD_TENSOR, "/step", "an integer >= 1", NULL,
                                 "the body must be an object with \"step\": n >= 1");
    in->step = (long long)n;
    return 0;
}

/* Decode the tensors into flat vectors of the layout's dimension. With the
 * binary extension the bytes follow in document order, so the arrays are
 * decoded in the order their keys appear (jansson keeps insertion order). */
int curvd_step_decode_tensors(const curv_layout *l, struct curvd_step_in *in,
                              struct curvd_binary *bin, int binary, double *g, double *theta,
                              struct curvd_problem *p)
{
    size_t dim = curv_layout_dim(l);
    const char *key;
    json_t *v;
    json_object_foreach(curvd_doc_root(in->doc), key, v)
    {
        int is_g = strcmp(key, "gradients") == 0;
        if (!is_g && strcmp(key, "params") != 0)
            continue;
        const char *path = is_g ? "/gradients" : "/params";
        struct curvd_tensor **t = is_g ? &in->grads : &in->params;
        size_t *n = is_g ? &in->ngrads : &in->nparams;
        if (curvd_tensors_decode(v, path, in->doc, binary ? bin : NULL, dim, t, n, p) != 0 ||
            curvd_tensors_to_flat(l, *t, *n, path, is_g ? g : theta, p) != 0)
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
