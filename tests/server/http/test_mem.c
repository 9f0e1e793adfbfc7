/* SPDX-License-Identifier: MIT */
/* curvd_mem: sizes and contents through every realloc path, big blocks
 * reused instead of mapped again, the limits on what is kept idle, and its
 * figures in /metrics. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"
#include "http/metrics.h"
#include "testutil.h"

#define MiB ((size_t)1 << 20)

static void fill(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 31 + seed);
}

static void expect_fill(const unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != (unsigned char)(i * 31 + seed))
            fail_msg("byte %zu of %zu changed", i, n);
}

static void test_sizes_and_contents(void **state)
{
    (void)state;
    curvd_mem_trim();
    unsigned char *p = curvd_mem_alloc(0);
    assert_non_null(p);
    assert_int_equal(curvd_mem_size(p), 0);
    assert_int_equal(curvd_mem_size(NULL), 0);
    /* small -> small -> big -> bigger (moves the mapping) -> smaller (kept) */
    static const size_t sizes[] = {100, 5000, 3 * MiB, 40 * MiB, 2 * MiB, 10};
    size_t have = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *q = curvd_mem_realloc(p, sizes[i]);
        assert_non_null(q);
        assert_true(((uintptr_t)q & 15) == 0);
        expect_fill(q, have < sizes[i] ? have : sizes[i], 7);
        assert_int_equal(curvd_mem_size(q), sizes[i]);
        fill(q, sizes[i], 7);
        have = sizes[i];
        p = q;
    }
    curvd_mem_free(p);
    curvd_mem_free(NULL);
    assert_null(curvd_mem_alloc(SIZE_MAX - 8));
    curvd_mem_trim();
}

/* Mapping lengths: the request and the 16-byte header, in whole 2 MiB units. */
#define MAPPED(bytes) (((bytes) + 16 + 2 * MiB - 1) / (2 * MiB) * (2 * MiB))

static void test_big_blocks_are_reused(void **state)
{
    (void)state;
    if (!curvd_mem_maps())
        skip(); /* sanitizer build: every block is malloc'd */
    curvd_mem_trim();
    struct curvd_mem_stats s0, s;
    curvd_mem_stats(&s0);
    unsigned char *a = curvd_mem_alloc(40 * MiB);
    assert_non_null(a);
    fill(a, 40 * MiB, 1);
    curvd_mem_free(a);
    curvd_mem_stats(&s);
    assert_int_equal(s.maps, s0.maps + 1);
    assert_int_equal(s.fresh_bytes, s0.fresh_bytes + MAPPED(40 * MiB));
    assert_int_equal(s.idle_blocks, 1);
    assert_int_equal(s.idle_bytes, MAPPED(40 * MiB));

    /* Too small for the idle block (it would waste more than the request,
     * and a small buffer can live as long as its session): a new mapping.
     * Close enough: the idle one, not mapped again. */
    unsigned char *small = curvd_mem_alloc(3 * MiB), *b = curvd_mem_alloc(30 * MiB);
    assert_non_null(small);
    assert_non_null(b);
    curvd_mem_stats(&s);
    assert_int_equal(s.maps, s0.maps + 2);
    assert_int_equal(s.reuses, s0.reuses + 1);
    assert_int_equal(s.fresh_bytes, s0.fresh_bytes + MAPPED(40 * MiB) + MAPPED(3 * MiB));
    assert_int_equal(s.idle_blocks, 0);
    assert_int_equal(curvd_mem_size(b), 30 * MiB);
    curvd_mem_free(small);
    curvd_mem_free(b);
    curvd_mem_trim();

    /* Smaller idle blocks are no use to a larger request: a new mapping,
     * and they stay idle. */
    unsigned char *b8 = curvd_mem_alloc(8 * MiB), *b4 = curvd_mem_alloc(4 * MiB);
    curvd_mem_free(b4);
    curvd_mem_free(b8);
    curvd_mem_stats(&s0);
    unsigned char *big = curvd_mem_alloc(40 * MiB);
    assert_non_null(big);
    curvd_mem_stats(&s);
    assert_int_equal(s.maps, s0.maps + 1);
    assert_int_equal(s.reuses, s0.reuses);
    assert_int_equal(s.fresh_bytes, s0.fresh_bytes + MAPPED(40 * MiB));
    assert_int_equal(s.idle_bytes, MAPPED(8 * MiB) + MAPPED(4 * MiB));
    curvd_mem_free(big);
    curvd_mem_trim();

    /* Growing a mapping in use takes an idle block that holds the new size
     * (its pages are there) and keeps the contents... */
    unsigned char *g = curvd_mem_alloc(MiB);
    curvd_mem_free(curvd_mem_alloc(12 * MiB));
    fill(g, MiB, 9);
    curvd_mem_stats(&s0);
    assert_int_equal(s0.idle_bytes, MAPPED(12 * MiB));
    g = curvd_mem_realloc(g, 10 * MiB);
    assert_non_null(g);
    expect_fill(g, MiB, 9);
    curvd_mem_stats(&s);
    assert_int_equal(s.maps, s0.maps);
    assert_int_equal(s.reuses, s0.reuses + 1);
    assert_int_equal(s.fresh_bytes, s0.fresh_bytes);
    assert_int_equal(s.idle_bytes, MAPPED(MiB)); /* g's old block, given back */
    /* ...and, with none that holds it, grows itself: a smaller idle block
     * would have to be grown too, and the contents copied. */
    fill(g, 10 * MiB, 5);
    g = curvd_mem_realloc(g, 20 * MiB);
    assert_non_null(g);
    expect_fill(g, 10 * MiB, 5);
    curvd_mem_stats(&s);
    assert_int_equal(s.reuses, s0.reuses + 1);
    assert_int_equal(s.fresh_bytes, s0.fresh_bytes + MAPPED(20 * MiB) - MAPPED(12 * MiB));
    assert_int_equal(s.idle_bytes, MAPPED(MiB));
    curvd_mem_free(g);
    curvd_mem_trim();
    curvd_mem_stats(&s);
    assert_int_equal(s.idle_blocks, 0);
    assert_int_equal(s.idle_bytes, 0);
    /* A small block is never a mapping. */
    void *tiny = curvd_mem_alloc(CURVD_MEM_BIG - 1);
    curvd_mem_free(tiny);
    curvd_mem_stats(&s);
    assert_int_equal(s.idle_blocks, 0);
}

/* At most 64 blocks and 2 GiB stay idle; the rest is unmapped on release.
 * Mappings that are never touched cost no memory, so this is cheap. */
static void test_idle_limits(void **state)
{
    (void)state;
    if (!curvd_mem_maps())
        skip();
    curvd_mem_trim();
    enum { N = 80 };
    void *p[N];
    for (int i = 0; i < N; i++)
        assert_non_null(p[i] = curvd_mem_alloc(MiB));
    for (int i = 0; i < N; i++)
        curvd_mem_free(p[i]);
    struct curvd_mem_stats s;
    curvd_mem_stats(&s);
    assert_int_equal(s.idle_blocks, 64);
    curvd_mem_trim();
    for (int i = 0; i < 8; i++)
        assert_non_null(p[i] = curvd_mem_alloc(300 * MiB));
    for (int i = 0; i < 8; i++)
        curvd_mem_free(p[i]);
    curvd_mem_stats(&s);
    assert_true(s.idle_bytes <= ((size_t)2 << 30));
    assert_int_equal(s.idle_blocks, 6); /* 302 MiB mappings */
    curvd_mem_trim();
}

/* The value of the metric line that starts with @name in @text. */
static unsigned long long metric(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, name, n) == 0 && p[n] == ' ')
            return strtoull(p + n + 1, NULL, 10);
    fail_msg("no metric %s", name);
    return 0;
}

static void test_metrics(void **state)
{
    (void)state;
    curvd_mem_trim();
    curvd_mem_free(curvd_mem_alloc(40 * MiB));
    struct curvd_mem_stats s;
    curvd_mem_stats(&s);
    assert_int_equal(s.idle_bytes, curvd_mem_maps() ? MAPPED(40 * MiB) : 0);
    struct curvd_metrics *m = curvd_metrics_new();
    size_t len;
    const struct curvd_metrics_view v = {.sessions_disk = 0};
    char *text = curvd_metrics_render(m, &v, &len);
    assert_non_null(text);
    assert_int_equal(metric(text, "curvd_large_buffer_idle_bytes"), s.idle_bytes);
    assert_int_equal(metric(text, "curvd_large_buffer_fresh_bytes_total"), s.fresh_bytes);
    assert_int_equal(metric(text, "curvd_large_buffers_total{source=\"mapped\"}"), s.maps);
    assert_int_equal(metric(text, "curvd_large_buffers_total{source=\"reused\"}"), s.reuses);
    free(text);
    curvd_metrics_free(m);
    curvd_mem_trim();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sizes_and_contents),
        cmocka_unit_test(test_big_blocks_are_reused),
        cmocka_unit_test(test_idle_limits),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
