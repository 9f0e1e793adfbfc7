/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: numeric extremes through the step path (issue 21).
 * Each input picks an optimizer kind that steps without callbacks (every
 * first-order kind, and K-FAC in simple mode with layer statistics) and
 * drives it through up to four steps whose gradients, parameters and layer
 * statistics the fuzzer chooses among finite values of every magnitude,
 * DBL_MAX and the subnormals included.
 *
 * Input: byte 0 the kind, byte 1 the steps (1-4), then two bytes per value
 * (sign, a binary exponent from -1074 to 1023 biased towards both ends,
 * zero; the mantissa from the second byte); a short input repeats itself.
 *
 * Checks beyond "no sanitizer report", for every step:
 *  - the outcome is CURV_OK, CURV_E_NONFINITE or CURV_E_NUMERIC;
 *  - a refused step changes nothing: the state saves to the same bytes;
 *  - a taken step's update is finite, and its state saves, loads and
 *    saves again to the same bytes (a state holding an infinity would not
 *    load: the session would be lost).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv.h"

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_step_extremes: " __VA_ARGS__);                                       \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

/* dense "fc" 3 x (2 + bias) = 9, then vector "v" 3: dimension 12. */
#define N_IN 2
#define N_OUT 3
#define ROWS 2
#define D (N_OUT * (N_IN + 1) + 3)

static const curv_opt_kind KINDS[] = {
    CURV_OPT_SGD,  CURV_OPT_ADAGRAD_DIAG, CURV_OPT_ADAGRAD_FULL, CURV_OPT_ADAGRAD_BMA,
    CURV_OPT_MBAG, CURV_OPT_MBAG_EMA,     CURV_OPT_MBAG_N,       CURV_OPT_KFAC};
#define N_KINDS (sizeof KINDS / sizeof KINDS[0])

static curv_layout *layout;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    layout = curv_layout_new();
    if (!layout || curv_layout_add_dense(layout, "fc", N_OUT, N_IN, 1, NULL) != CURV_OK ||
        curv_layout_add_vector(layout, "v", 3, NULL) != CURV_OK || curv_layout_dim(layout) != D)
        FAIL("cannot build the layout");
    return 0;
}

/* The fuzzer's values: two bytes each, read cyclically from @data. */
struct values {
    const uint8_t *p;
    size_t n, at;
};

static double next_value(struct values *v)
{
    const unsigned a = v->p[v->at % v->n], b = v->p[(v->at + 1) % v->n];
    v->at += 2;
    if ((a & 0x7f) == 0)
        return 0.0;
    /* 0x01-0x3f: exponents near the top, 0x40-0x5f: near the bottom
     * (subnormals), the rest: ordinary magnitudes. */
    const unsigned e7 = a & 0x7f;
    int e = e7 < 0x40   ? 1023 - (int)(0x3f - e7)
            : e7 < 0x60 ? -1074 + (int)(e7 - 0x40) * 2
                        : (int)(e7 - 0x70) * 2;
    const double m = 1.0 + (double)b / 256.0; /* in [1, 2): DBL_MAX itself at b = 255, e = 1023 */
    double x = ldexp(b == 255 && e == 1023 ? 2.0 - 0x1p-52 : m, e);
    if (!isfinite(x))
        x = 0x1.fffffffffffffp1023;
    return (a & 0x80) ? -x : x;
}

static curv_opt *make(curv_opt_kind kind)
{
    curv_config *c = curv_config_new();
    if (!c)
        FAIL("out of memory");
    if (kind == CURV_OPT_KFAC && curv_config_set_str(c, "mode", "simple", NULL) != CURV_OK)
        FAIL("cannot set K-FAC's mode");
    if (kind >= CURV_OPT_MBAG && kind <= CURV_OPT_MBAG_N &&
        curv_config_set_num(c, "tau", 3, NULL) != CURV_OK)
        FAIL("cannot set tau");
    curv_opt *o = NULL;
    curv_error err;
    if (curv_opt_new(kind, layout, c, &o, &err) != CURV_OK)
        FAIL("%s: cannot create: %s", curv_opt_kind_name(kind), err.text);
    curv_config_free(c);
    return o;
}

static unsigned char *save(const curv_opt *o, size_t *len)
{
    unsigned char *blob = NULL;
    curv_error err;
    if (curv_opt_save(o, &blob, len, &err) != CURV_OK)
        FAIL("save: %s", err.text);
    return blob;
}

static void same_state(const unsigned char *a, size_t na, const unsigned char *b, size_t nb,
                       const char *what, int k)
{
    if (na != nb || memcmp(a, b, na) != 0)
        FAIL("step %d: %s (%zu and %zu bytes)", k, what, na, nb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    const curv_opt_kind kind = KINDS[data[0] % N_KINDS];
    const int steps = 1 + data[1] % 4;
    struct values v = {data + 2, size - 2, 0};
    const int kfac = kind == CURV_OPT_KFAC;
    curv_opt *o = make(kind);
    for (int k = 1; k <= steps; k++) {
        double g[D], theta[D], acts[ROWS * N_IN], sig[ROWS * N_OUT], upd[D];
        for (size_t i = 0; i < D; i++)
            g[i] = next_value(&v), theta[i] = next_value(&v);
        for (size_t i = 0; i < ROWS * N_IN; i++)
            acts[i] = next_value(&v);
        for (size_t i = 0; i < ROWS * N_OUT; i++)
            sig[i] = next_value(&v);
        const curv_layer_stats ls = {
            .block = 0, .rows = ROWS, .examples = ROWS, .acts = acts, .signals = sig};
        const curv_step_input in = {.grad = g,
                                    .params = kfac ? theta : NULL,
                                    .len = D,
                                    .dtype = CURV_F64,
                                    .layers = kfac ? &ls : NULL,
                                    .n_layers = kfac ? 1 : 0};
        size_t nb = 0, na = 0;
        unsigned char *before = save(o, &nb);
        curv_request req;
        curv_error err;
        const curv_status st = curv_opt_step(o, &in, upd, &req, &err);
        unsigned char *after = save(o, &na);
        if (st == CURV_E_NONFINITE || st == CURV_E_NUMERIC) {
            same_state(before, nb, after, na, "a refused step changed the state", k);
        } else if (st != CURV_OK) {
            FAIL("%s, step %d: status %d: %s", curv_opt_kind_name(kind), k, (int)st, err.text);
        } else {
            for (size_t i = 0; i < D; i++)
                if (!isfinite(upd[i]))
                    FAIL("%s, step %d: update element %zu is %g", curv_opt_kind_name(kind), k, i,
                         upd[i]);
            curv_opt *x = NULL;
            if (curv_opt_load(after, na, &x, &err) != CURV_OK)
                FAIL("%s, step %d: the state does not load again: %s", curv_opt_kind_name(kind), k,
                     err.text);
            size_t nx = 0;
            unsigned char *again = save(x, &nx);
            same_state(after, na, again, nx, "the loaded state saves other bytes", k);
            curv_free(again);
            curv_opt_free(x);
        }
        curv_free(before);
        curv_free(after);
    }
    curv_opt_free(o);
    return 0;
}
