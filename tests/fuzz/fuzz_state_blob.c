/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer target: curv_opt_load() on arbitrary bytes, as the daemon does
 * for POST /v1/sessions:import and when it reloads a session.
 *
 * Input framing: the first byte is a mode, the rest the blob.
 *   mode & 1 == 0: the blob is used exactly as given (the frame, the CRC,
 *                  the version are all up to the fuzzer);
 *   mode & 1 == 1: the payload-length field (bytes 16..23) and the CRC-32
 *                  trailer are recomputed first, so mutations reach the
 *                  payload parsers instead of dying at the checksum.
 *
 * When the blob loads:
 *  - curv_opt_save() must give back the same bytes (FUZZ_STRICT_BLOB=1), or
 *    by default bytes that load and save to themselves (save o load is a
 *    projection: the loader tolerates some non-canonical records);
 *  - one step with a zero gradient of the layout's dimension: on success
 *    the update must be finite and the state saved after it must load again
 *    and save to the same bytes; on failure the state must be unchanged.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curv.h"

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, "fuzz_state_blob: " __VA_ARGS__);                                          \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

/* Layouts bigger than this are loaded and saved but not stepped (the step
 * would only spend the fuzzer's time on arithmetic). */
#define MAX_STEP_DIM ((size_t)1 << 16)

/* FUZZ_STRICT_BLOB=1: a blob that loads must save back byte for byte.
 * FUZZ_ALLOW_NONFINITE_UPDATE=1: do not stop on a CURV_OK step with a
 * non-finite update, so that fuzzing can go past such a bug while it is
 * open (tests/fuzz/README.md). */
static int strict, allow_nonfinite;
static int verbose; /* FUZZ_VERBOSE=1: the load status of each input (for --replay) */
/* FUZZ_ALLOC_CAP_MB (set by run.sh): allocations above it fail. A blob
 * that loads needs memory of the order of its own size, so a blob under
 * 1/64 of the cap that makes the load run out of memory has made the
 * library allocate far more than it can hold: the amplification that lets
 * a small import body exhaust the daemon. 0: no such check (also with
 * FUZZ_ALLOW_LOAD_NOMEM=1, to fuzz past such a bug while it is open). */
static size_t alloc_cap;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    strict = getenv("FUZZ_STRICT_BLOB") != NULL;
    allow_nonfinite = getenv("FUZZ_ALLOW_NONFINITE_UPDATE") != NULL;
    verbose = getenv("FUZZ_VERBOSE") != NULL;
    const char *cap = getenv("FUZZ_ALLOC_CAP_MB");
    alloc_cap = cap && !getenv("FUZZ_STRICT_ALLOC") && !getenv("FUZZ_ALLOW_LOAD_NOMEM")
                    ? (size_t)strtoul(cap, NULL, 10) << 20
                    : 0;
    return 0;
}

static uint32_t crc32(const unsigned char *p, size_t n)
{
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++)
            crc = (crc & 1) ? 0xEDB88320u ^ (crc >> 1) : crc >> 1;
    }
    return ~crc;
}

static void put_le(unsigned char *p, uint64_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void dump_diff(const char *what, const unsigned char *a, size_t alen, const unsigned char *b,
                      size_t blen)
{
    size_t i = 0;
    while (i < alen && i < blen && a[i] == b[i])
        i++;
    FAIL("%s: %zu bytes vs %zu bytes, first difference at offset %zu", what, alen, blen, i);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int fix = data[0] & 1;
    size_t len = size - 1;
    unsigned char *blob = malloc(len ? len : 1);
    if (!blob)
        return 0;
    if (len)
        memcpy(blob, data + 1, len);
    if (fix && len >= 28) {
        put_le(blob + 16, len - 28, 8);
        put_le(blob + len - 4, crc32(blob, len - 4), 4);
    }

    curv_opt *o = NULL;
    curv_error err;
    curv_status st = curv_opt_load(blob, len, &o, &err);
    if (verbose)
        fprintf(stderr, "blob of %zu bytes (mode %d): %s%s%s\n", len, fix, curv_status_name(st),
                st ? ": " : "", st ? err.text : "");
    if (st != CURV_OK) {
        if (o)
            FAIL("load failed (%s) but wrote the output", curv_status_name(st));
        if (st != CURV_E_CORRUPT && st != CURV_E_VERSION && st != CURV_E_NOMEM)
            FAIL("load failed with %s: %s", curv_status_name(st), err.text);
        if (!memchr(err.text, 0, sizeof err.text) || err.status != st)
            FAIL("bad error record");
        if (st == CURV_E_NOMEM && len <= alloc_cap / 64)
            FAIL("a %zu-byte blob made curv_opt_load run out of memory (allocations over %zu "
                 "MiB fail): %s",
                 len, alloc_cap >> 20, err.text);
        free(blob);
        return 0;
    }

    unsigned char *again = NULL, *after = NULL, *again2 = NULL;
    size_t again_len = 0, after_len = 0, again2_len = 0;
    if (curv_opt_save(o, &again, &again_len, &err) != CURV_OK)
        FAIL("save of a loaded optimizer failed: %s", err.text);
    if (again_len != len || memcmp(again, blob, len) != 0) {
        /* The loader accepts some non-canonical blobs (fields a block kind
         * does not use, hyperparameter records in any order or missing):
         * by default only require that save o load is a projection. */
        if (strict)
            dump_diff("load+save is not the identity", blob, len, again, again_len);
        curv_opt *o1 = NULL;
        unsigned char *canon = NULL;
        size_t canon_len = 0;
        if (curv_opt_load(again, again_len, &o1, &err) != CURV_OK)
            FAIL("a re-saved blob does not load: %s", err.text);
        if (curv_opt_save(o1, &canon, &canon_len, &err) != CURV_OK)
            FAIL("save of a reloaded optimizer failed: %s", err.text);
        if (canon_len != again_len || memcmp(canon, again, again_len) != 0)
            dump_diff("save o load is not idempotent", again, again_len, canon, canon_len);
        curv_free(canon);
        curv_opt_free(o1);
    }

    const curv_layout *l = curv_opt_layout(o);
    size_t dim = curv_layout_dim(l);
    if (dim == 0 || curv_opt_kind_of(o) >= CURV_OPT_KIND_COUNT)
        FAIL("loaded optimizer has dim %zu kind %d", dim, (int)curv_opt_kind_of(o));
    if (dim <= MAX_STEP_DIM) {
        double *g = calloc(dim, sizeof *g), *theta = calloc(dim, sizeof *theta);
        double *delta = calloc(dim, sizeof *delta);
        if (!g || !theta || !delta)
            FAIL("calloc");
        uint64_t t0 = curv_opt_steps(o);
        curv_step_input in = {.grad = g, .params = theta, .len = dim, .dtype = CURV_F64};
        curv_request req;
        st = curv_opt_step(o, &in, delta, &req, &err);
        if (curv_opt_save(o, &after, &after_len, &err) != CURV_OK)
            FAIL("save after a step failed: %s", err.text);
        if (st == CURV_OK) {
            /* The daemon answers a non-finite update with a 500 and drops
             * the session; a step that succeeds must not produce one. */
            for (size_t i = 0; i < dim && !allow_nonfinite; i++)
                if (!isfinite(delta[i]))
                    FAIL("%s: step %llu with a zero gradient returned CURV_OK and update[%zu] = "
                         "%g",
                         curv_opt_kind_name(curv_opt_kind_of(o)), (unsigned long long)t0 + 1, i,
                         delta[i]);
            if (curv_opt_steps(o) != t0 + 1)
                FAIL("step counter %llu -> %llu", (unsigned long long)t0,
                     (unsigned long long)curv_opt_steps(o));
            /* What the daemon commits after a step must reload. */
            curv_opt *o2 = NULL;
            if (curv_opt_load(after, after_len, &o2, &err) != CURV_OK)
                FAIL("the state saved after a step does not load: %s", err.text);
            if (curv_opt_save(o2, &again2, &again2_len, &err) != CURV_OK)
                FAIL("save of the reloaded optimizer failed: %s", err.text);
            if (again2_len != after_len || memcmp(again2, after, after_len) != 0)
                dump_diff("stepped state: load+save is not the identity", after, after_len, again2,
                          again2_len);
            curv_opt_free(o2);
        } else if (st == CURV_NEED_INPUT) {
            /* No kind of this version asks; a pending request must still
             * save and load. */
            curv_opt *o2 = NULL;
            if (curv_opt_load(after, after_len, &o2, &err) != CURV_OK)
                FAIL("the pending state does not load: %s", err.text);
            curv_opt_free(o2);
        } else {
            if (after_len != again_len || memcmp(after, again, again_len) != 0)
                dump_diff("a failed step changed the state", again, again_len, after, after_len);
        }
        free(g);
        free(theta);
        free(delta);
    }
    curv_free(again);
    curv_free(after);
    curv_free(again2);
    curv_opt_free(o);
    free(blob);
    return 0;
}
