/* SPDX-License-Identifier: MIT */
/* Whole-optimizer save/load (opt_state.c) for every kind: bit-identical
 * continuation, and every flipped byte or truncation of a blob rejected
 * without a crash (run under ASan by `make asan`). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define K_BEFORE 3
#define M_AFTER 4

/* A config with several non-default values; keys a kind lacks are skipped
 * (every kind has the schedule keys). */
static curv_config *busy_config(curv_opt_kind kind)
{
    curv_config *c = curv_config_new();
    assert_non_null(c);
    assert_int_equal(curv_config_set_num(c, "lr", 0.05, NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_schedule", "exponential", NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr_gamma", 0.95, NULL), CURV_OK);
    const struct {
        const char *key;
        double num;
        const char *str;
    } extra[] = {{"momentum", 0.9, NULL}, {"nesterov", 1, NULL},     {"weight_decay", 1e-3, NULL},
                 {"eps", 1e-6, NULL},     {"inv_interval", 2, NULL}, {"partition", 0, "row"}};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++)
        if (tu_has_param(kind, extra[i].key))
            tu_config_set(c, extra[i].key, extra[i].num, extra[i].str);
    return c;
}

/* Gradient number @t of a fixed sequence (a function of θ, so the runs
 * are trajectories rather than independent draws). */
static void gradient(unsigned t, const double *theta, double *g)
{
    for (size_t i = 0; i < TU_D_MIXED; i++)
        g[i] = theta[i] + sin(0.7 * (double)(t * TU_D_MIXED + i)) * (1 + (double)(i % 3));
}

/* An optimizer of @kind after K_BEFORE steps. */
static curv_opt *trained(curv_opt_kind kind, const curv_layout *l, double *theta)
{
    curv_config *c = busy_config(kind);
    curv_opt *o = tu_new_opt(kind, l, c);
    curv_config_free(c);
    double g[TU_D_MIXED], u[TU_D_MIXED];
    for (unsigned t = 0; t < K_BEFORE; t++) {
        gradient(t, theta, g);
        tu_step_ok(o, g, theta, u);
        for (size_t i = 0; i < TU_D_MIXED; i++)
            theta[i] += u[i];
    }
    return o;
}

static void test_round_trip_every_kind(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* needs layer statistics: test_kfac*.c drive it */
        const curv_opt_kind kind = (curv_opt_kind)k;
        double tha[TU_D_MIXED] = {0}, thb[TU_D_MIXED] = {0};
        curv_opt *a = trained(kind, l, tha), *b = trained(kind, l, thb);
        assert_memory_equal(tha, thb, sizeof tha);
        unsigned char *blob = NULL;
        size_t len = 0;
        curv_error err;
        tu_assert_status(curv_opt_save(b, &blob, &len, &err), CURV_OK, &err);
        curv_opt_free(b);
        curv_opt *c = NULL;
        tu_assert_status(curv_opt_load(blob, len, &c, &err), CURV_OK, &err);
        assert_int_equal(curv_opt_kind_of(c), kind);
        assert_int_equal(curv_opt_steps(c), K_BEFORE);
        assert_int_equal(curv_layout_dim(curv_opt_layout(c)), TU_D_MIXED);
        assert_int_equal(curv_layout_find(curv_opt_layout(c), "conv"), 1);
        /* Resolved hyperparameters survive. */
        curv_param_info p;
        for (size_t i = 0; curv_opt_param_info(kind, i, &p) == CURV_OK; i++) {
            double va, vc;
            assert_int_equal(curv_opt_get_param(a, p.name, &va), CURV_OK);
            assert_int_equal(curv_opt_get_param(c, p.name, &vc), CURV_OK);
            assert_memory_equal(&va, &vc, sizeof va);
        }
        /* Saving the loaded optimizer gives the same bytes. */
        unsigned char *again = NULL;
        size_t len2 = 0;
        tu_assert_status(curv_opt_save(c, &again, &len2, &err), CURV_OK, &err);
        assert_int_equal(len2, len);
        assert_memory_equal(again, blob, len);
        curv_free(again);
        /* Continuing is bit-identical to never having saved. */
        double g[TU_D_MIXED], ua[TU_D_MIXED], uc[TU_D_MIXED];
        for (unsigned t = K_BEFORE; t < K_BEFORE + M_AFTER; t++) {
            gradient(t, tha, g);
            tu_step_ok(a, g, tha, ua);
            tu_step_ok(c, g, tha, uc);
            if (memcmp(ua, uc, sizeof ua) != 0)
                fail_msg("%s: update %u differs after save/load", curv_opt_kind_name(kind), t);
            for (size_t i = 0; i < TU_D_MIXED; i++)
                tha[i] += ua[i];
        }
        assert_int_equal(curv_opt_steps(c), K_BEFORE + M_AFTER);
        curv_free(blob);
        curv_opt_free(a);
        curv_opt_free(c);
    }
    curv_layout_free(l);
}

static void test_fresh_optimizer_round_trip(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        curv_opt *a = tu_new_opt((curv_opt_kind)k, l, NULL), *c = NULL;
        size_t len;
        unsigned char *blob = tu_snapshot(a, &len);
        curv_error err;
        tu_assert_status(curv_opt_load(blob, len, &c, &err), CURV_OK, &err);
        assert_int_equal(curv_opt_steps(c), 0);
        tu_assert_unchanged(c, blob, len);
        curv_free(blob);
        curv_opt_free(a);
        curv_opt_free(c);
    }
    curv_layout_free(l);
}

/* Load a heap copy of exactly @n bytes (so ASan sees any over-read). */
static curv_status load_copy(const unsigned char *b, size_t n, curv_opt **out)
{
    unsigned char *c = tu_memdup(b, n);
    curv_error err;
    curv_error_clear(&err);
    curv_status st = curv_opt_load(c, n, out, &err);
    tu_assert_error_set(&err, st);
    free(c);
    return st;
}

/* Run @check for every kind on the blob of an optimizer trained K_BEFORE
 * steps, with a scratch buffer @b of the blob's size. */
static void each_trained_blob(void (*check)(curv_opt_kind kind, const unsigned char *blob,
                                            size_t len, unsigned char *b))
{
    curv_layout *l = tu_opt_mixed_layout();
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue; /* needs layer statistics: test_kfac*.c drive it */
        double th[TU_D_MIXED] = {0};
        curv_opt *o = trained((curv_opt_kind)k, l, th);
        size_t len;
        unsigned char *blob = tu_snapshot(o, &len), *b = malloc(len);
        assert_non_null(b);
        check((curv_opt_kind)k, blob, len, b);
        curv_free(blob);
        free(b);
        curv_opt_free(o);
    }
    curv_layout_free(l);
}

static void flips_and_truncations(curv_opt_kind kind, const unsigned char *blob, size_t len,
                                  unsigned char *b)
{
    static char mark;
    curv_opt *sentinel = (curv_opt *)&mark;
    for (size_t i = 0; i < len; i++) {
        memcpy(b, blob, len);
        b[i] ^= 0xFF;
        curv_opt *out = sentinel;
        curv_status st = load_copy(b, len, &out);
        if (st != CURV_E_CORRUPT && st != CURV_E_VERSION)
            fail_msg("%s: flipping byte %zu of %zu gave %s", curv_opt_kind_name(kind), i, len,
                     curv_status_name(st));
        assert_ptr_equal(out, sentinel);
    }
    for (size_t n = 0; n < len; n++) {
        curv_opt *out = sentinel;
        curv_status st = load_copy(blob, n, &out);
        if (st != CURV_E_CORRUPT)
            fail_msg("%s: truncation to %zu of %zu bytes gave %s", curv_opt_kind_name(kind), n, len,
                     curv_status_name(st));
        assert_ptr_equal(out, sentinel);
    }
}

static void test_every_flip_and_truncation_rejected(void **state)
{
    (void)state;
    each_trained_blob(flips_and_truncations);
}

/* Offset of the hyperparameter records in a blob: header (24), u32 kind,
 * u32 nblocks, then per block str name, u32 kind, 5 u64, u32 bias. */
static size_t hyper_offset(const unsigned char *b)
{
    size_t off = 24 + 4;
    size_t n = (size_t)tu_get_le(b + off, 4);
    off += 4;
    for (size_t i = 0; i < n; i++)
        off += 4 + (size_t)tu_get_le(b + off, 4) + 4 + 5 * 8 + 4;
    return off;
}

/* Past the checksum: flips with a recomputed (valid) CRC reach the parser
 * itself. The result may be a valid optimizer (a changed number) or
 * E_CORRUPT, never a crash, an over-read or a leak. Layout records are
 * left out: a flipped dimension can legitimately ask for gigabytes. */
static void flips_with_valid_crc(curv_opt_kind kind, const unsigned char *blob, size_t len,
                                 unsigned char *b)
{
    size_t from = hyper_offset(blob), ok = 0;
    assert_true(from < len - 4);
    static const unsigned char masks[] = {0x01, 0xFF};
    for (size_t i = from; i < len - 4; i++)
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(b, blob, len);
            b[i] ^= masks[m];
            tu_reseal(b, len);
            curv_opt *out = NULL;
            curv_status st = load_copy(b, len, &out);
            if (st != CURV_OK && st != CURV_E_CORRUPT)
                fail_msg("%s: byte %zu: %s", curv_opt_kind_name(kind), i, curv_status_name(st));
            ok += st == CURV_OK;
            curv_opt_free(out);
        }
    assert_true(ok > 0); /* the state's numbers are free to change */
}

static void test_flips_with_valid_crc_never_crash(void **state)
{
    (void)state;
    each_trained_blob(flips_with_valid_crc);
}

static void test_forged_blobs(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    double th[TU_D_MIXED] = {0};
    curv_opt *o = trained(CURV_OPT_ADAGRAD_DIAG, l, th), *out = NULL;
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len), *b = malloc(len + 8);
    assert_non_null(b);
    /* A newer format version with a valid CRC: E_VERSION. */
    tu_forge(b, blob, len, 8, tu_get_le(blob + 8, 4) + 1, 4);
    assert_int_equal(load_copy(b, len, &out), CURV_E_VERSION);
    /* Trailing bytes inside a well-framed payload. */
    memcpy(b, blob, len - 4);
    memset(b + len - 4, 0, 8);
    tu_put_le(b + 16, tu_get_le(b + 16, 8) + 8, 8);
    tu_reseal(b, len + 8);
    assert_int_equal(load_copy(b, len + 8, &out), CURV_E_CORRUPT);
    /* An unknown kind, and a kind that disagrees with the state's size. */
    tu_forge(b, blob, len, 24, CURV_OPT_KIND_COUNT, 4);
    assert_int_equal(load_copy(b, len, &out), CURV_E_CORRUPT);
    tu_forge(b, blob, len, 24, CURV_OPT_ADAGRAD_FULL, 4);
    assert_int_equal(load_copy(b, len, &out), CURV_E_CORRUPT);
    /* A block count far beyond what the payload can hold. */
    tu_forge(b, blob, len, 28, 0xFFFFFFFFu, 4);
    assert_int_equal(load_copy(b, len, &out), CURV_E_CORRUPT);
    assert_null(out);
    curv_error err;
    assert_int_equal(curv_opt_load(blob, len, NULL, &err), CURV_E_INVALID);
    assert_int_equal(curv_opt_load(NULL, len, &out, &err), CURV_E_CORRUPT);
    assert_null(out);
    curv_free(blob);
    free(b);
    curv_opt_free(o);
    curv_layout_free(l);
}

/* Every optimizer that curv_opt_new accepts must survive save/load. A LIST
 * may hold 16 entries of any size; 16 seventeen-digit milestones make a
 * 287-character value. */
static void test_long_list_round_trip(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    curv_config *c = curv_config_new();
    char list[400] = "", item[32];
    for (int i = 0; i < 16; i++) {
        snprintf(item, sizeof item, "%s%llu", i ? "," : "", 10000000000000000ull + (unsigned)i);
        strcat(list, item);
    }
    assert_int_equal(curv_config_set_str(c, "lr_milestones", list, NULL), CURV_OK);
    assert_int_equal(curv_config_set_str(c, "lr_schedule", "multistep", NULL), CURV_OK);
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, c), *back = NULL;
    size_t len, len2 = 0;
    unsigned char *blob = tu_snapshot(o, &len), *again = NULL;
    curv_error err;
    curv_error_clear(&err);
    curv_status st = curv_opt_load(blob, len, &back, &err);
    double n = 0;
    if (st == CURV_OK) {
        assert_int_equal(curv_opt_get_param(back, "lr_milestones", &n), CURV_OK);
        assert_int_equal(curv_opt_save(back, &again, &len2, NULL), CURV_OK);
    }
    int same = again && len2 == len && memcmp(again, blob, len) == 0;
    /* Clean up before judging, so a failure does not also leak. */
    curv_free(again);
    curv_free(blob);
    curv_opt_free(back);
    curv_opt_free(o);
    curv_config_free(c);
    curv_layout_free(l);
    if (st != CURV_OK)
        fail_msg("saved SGD with 16 long milestones does not load: %s: %s", curv_status_name(st),
                 err.text);
    assert_true(n == 16);
    assert_true(same);
}

/* A blob whose stored settings fail validation (lr = -1, with a valid CRC)
 * is E_CORRUPT, and the text still says which setting was rejected. */
static void test_rejected_settings_text(void **state)
{
    (void)state;
    curv_layout *l = tu_opt_mixed_layout();
    curv_opt *o = tu_new_opt(CURV_OPT_SGD, l, NULL), *out = NULL;
    size_t len;
    unsigned char *blob = tu_snapshot(o, &len);
    /* The "lr" record: u32 length 2, "lr", u32 0 (a number), f64 value. */
    static const unsigned char rec[10] = {2, 0, 0, 0, 'l', 'r', 0, 0, 0, 0};
    size_t at = 0;
    for (size_t i = hyper_offset(blob); i + sizeof rec + 8 <= len && !at; i++)
        if (memcmp(blob + i, rec, sizeof rec) == 0)
            at = i + sizeof rec;
    assert_true(at > 0);
    const double bad = -1.0;
    uint64_t bits;
    memcpy(&bits, &bad, sizeof bits);
    tu_put_le(blob + at, bits, 8);
    tu_reseal(blob, len);
    curv_error err;
    curv_error_clear(&err);
    curv_status st = curv_opt_load(blob, len, &out, &err);
    curv_free(blob);
    curv_opt_free(o);
    curv_layout_free(l);
    assert_int_equal(st, CURV_E_CORRUPT);
    assert_null(out);
    if (!strstr(err.text, "'lr'"))
        fail_msg("the text should name the rejected setting 'lr': \"%s\"", err.text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_kind),
        cmocka_unit_test(test_fresh_optimizer_round_trip),
        cmocka_unit_test(test_every_flip_and_truncation_rejected),
        cmocka_unit_test(test_flips_with_valid_crc_never_crash),
        cmocka_unit_test(test_forged_blobs),
        cmocka_unit_test(test_long_list_round_trip),
        cmocka_unit_test(test_rejected_settings_text),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
