/* SPDX-License-Identifier: MIT */
/* Message framing over a raw socket (what libcurl will not send): an
 * ambiguous length is refused with problem+json and the connection closed
 * (RFC 9112 section 6.3), and the replies libmicrohttpd writes itself,
 * before the daemon sees the request, look as docs/SERVER.md says. */
#include <jansson.h>
#include <microhttpd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

struct fixture {
    struct curvd_server srv;
    char base[64];
    unsigned port;
};

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof *f);
    f->srv.cfg.max_body = 4096;
    su_start(&f->srv, f->base, sizeof f->base);
    f->port = curvd_http_port(&f->srv);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    su_stop(&f->srv);
    free(f);
    return 0;
}

#define CAP 65536

/* Send @req (@n bytes) on a new connection and read until the daemon
 * closes it; the bytes into @buf. Fails if the connection stays open. */
static size_t exchange(const struct fixture *f, const char *req, size_t n, char *buf)
{
    int fd = su_raw_connect(f->port);
    assert_true(fd >= 0);
    assert_int_equal(send(fd, req, n, MSG_NOSIGNAL), (ssize_t)n);
    size_t len = 0;
    if (su_raw_read(fd, buf, CAP, &len, NULL, 10000) != 0)
        fail_msg("the connection stayed open after:\n%s", buf);
    close(fd);
    return len;
}

/* One reply, a BAD_FRAMING problem whose detail says @why, with
 * Connection: close. */
static void expect_bad_framing(const char *reply, const char *why)
{
    assert_int_equal(su_count(reply, "HTTP/1.1 "), 1); /* nothing after it was read as a request */
    assert_true(strncmp(reply, "HTTP/1.1 400 ", 13) == 0);
    assert_non_null(strstr(reply, "\r\nConnection: close\r\n"));
    assert_non_null(strstr(reply, "\r\nContent-Type: application/problem+json\r\n"));
    const char *body = strstr(reply, "\r\n\r\n");
    assert_non_null(body);
    json_t *j = su_json(body + 4, strlen(body + 4));
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "BAD_FRAMING");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 400);
    const char *detail = json_string_value(json_object_get(j, "detail"));
    if (!strstr(detail, why))
        fail_msg("detail '%s' does not say '%s'", detail, why);
    json_decref(j);
}

static void test_two_lengths_refused(void **state)
{
    struct fixture *f = *state;
    char *buf = malloc(CAP);
    /* With the first length, "GET /healthz ..." would be a second request
     * hidden in the body: smuggled past a proxy that took the second. */
    static const char smuggle[] = "POST /v1/version HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Length: 0\r\nContent-Length: 40\r\n\r\n"
                                  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    exchange(f, smuggle, sizeof smuggle - 1, buf);
    expect_bad_framing(buf, "Content-Length is given twice, '0' and '40'");
    static const char both[] = "POST /v1/version HTTP/1.1\r\nHost: x\r\n"
                               "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                               "0\r\n\r\n";
    exchange(f, both, sizeof both - 1, buf);
    expect_bad_framing(buf, "Content-Length '5' is given with Transfer-Encoding");
    free(buf);
}

/* The same length twice is one length (RFC 9110 section 8.6 allows it). */
static void test_same_length_twice(void **state)
{
    struct fixture *f = *state;
    char *buf = malloc(CAP);
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                              "Content-Length: 2\r\ncontent-length: 2\r\n\r\n{}";
    exchange(f, req, sizeof req - 1, buf);
    assert_true(strncmp(buf, "HTTP/1.1 200 ", 13) == 0);
    free(buf);
}

/* A reply libmicrohttpd wrote: HTML, no request id (the daemon never saw
 * the request), the connection closed. @doubled: its status line and
 * headers come twice, libmicrohttpd 0.9.75-0.9.77's bug for a bad
 * Content-Length (its state machine builds the error's header again). */
static void expect_library_reply(const char *reply, const char *status_line, int doubled)
{
    if (strncmp(reply, status_line, strlen(status_line)) != 0)
        fail_msg("want '%s', got:\n%s", status_line, reply);
    assert_non_null(strstr(reply, "\r\nConnection: close\r\n"));
    assert_null(strstr(reply, "X-Request-Id"));
    assert_null(strstr(reply, "problem+json"));
    assert_non_null(strstr(reply, "<html>"));
    int want = doubled && MHD_VERSION < 0x01000000 ? 2 : 1;
    if (su_count(reply, status_line) != want)
        fail_msg("'%s' %d times, want %d (docs/SERVER.md):\n%s", status_line,
                 su_count(reply, status_line), want, reply);
}

static void test_library_replies(void **state)
{
    struct fixture *f = *state;
    char *buf = malloc(CAP);
    static const struct {
        const char *length, *status_line;
    } lengths[] = {
        {"-1", "HTTP/1.1 400 Bad Request\r\n"},
        {"abc", "HTTP/1.1 400 Bad Request\r\n"},
        {"5, 5", "HTTP/1.1 400 Bad Request\r\n"},
        {"18446744073709551616", "HTTP/1.1 413 Content Too Large\r\n"},
    };
    char req[256];
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        int n = snprintf(req, sizeof req,
                         "POST /v1/version HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n",
                         lengths[i].length);
        exchange(f, req, (size_t)n, buf);
        expect_library_reply(buf, lengths[i].status_line, 1);
    }
    static const char chunk[] = "POST /v1/version HTTP/1.1\r\nHost: x\r\n"
                                "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    exchange(f, chunk, sizeof chunk - 1, buf);
    expect_library_reply(buf, "HTTP/1.1 400 Bad Request\r\n", 0);
    static const char version[] = "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n";
    exchange(f, version, sizeof version - 1, buf);
    expect_library_reply(buf, "HTTP/1.1 505 HTTP Version Not Supported\r\n", 0);
    /* Past the 32 KiB of a connection (MHD_OPTION_CONNECTION_MEMORY_LIMIT):
     * the request line, or a header. */
    char *big = malloc(40000 + 256);
    memcpy(big, "GET /", 5);
    memset(big + 5, 'a', 40000);
    int n = snprintf(big + 40005, 256, " HTTP/1.1\r\nHost: x\r\n\r\n");
    exchange(f, big, (size_t)(40005 + n), buf);
    expect_library_reply(buf, "HTTP/1.1 414 URI Too Long\r\n", 0);
    n = snprintf(big, 256, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(big + n, 'b', 40000);
    memcpy(big + n + 40000, "\r\n\r\n", 4);
    exchange(f, big, (size_t)n + 40004, buf);
    expect_library_reply(buf, "HTTP/1.1 431 Request Header Fields Too Large\r\n", 0);
    free(big);
    /* Still serving. */
    static const char ok[] = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    exchange(f, ok, sizeof ok - 1, buf);
    assert_true(strncmp(buf, "HTTP/1.1 200 ", 13) == 0);
    free(buf);
}

/* A client that reads the doubled 413 as HTTP sees its status: the second
 * header block is read as (part of) the body, and the connection closes. */
static void test_doubled_reply_status_survives(void **state)
{
    struct fixture *f = *state;
    char *buf = malloc(CAP);
    static const char req[] = "POST /v1/version HTTP/1.1\r\nHost: x\r\n"
                              "Content-Length: 18446744073709551616\r\n\r\n";
    size_t n = exchange(f, req, sizeof req - 1, buf);
    const char *end = strstr(buf, "\r\n\r\n");
    assert_non_null(end);
    const char *cl = strstr(buf, "Content-Length: ");
    assert_true(cl && cl < end);
    size_t declared = (size_t)strtoul(cl + 16, NULL, 10);
    assert_true(n >= (size_t)(end + 4 - buf) + declared); /* the declared body is all there */
    free(buf);
}

static void *no_malloc(size_t n)
{
    (void)n;
    return NULL;
}

/* A reply that cannot be written for want of memory is still a problem. */
static void test_reply_without_memory(void **state)
{
    (void)state;
    json_t *doc = json_pack("{s:s}", "status", "ok");
    struct curvd_reply rp = {0};
    json_set_alloc_funcs(no_malloc, free);
    curvd_reply_json(&rp, 200, doc);
    json_set_alloc_funcs(malloc, free);
    assert_int_equal(rp.status, 503);
    assert_string_equal(rp.content_type, "application/problem+json");
    json_t *j = su_json(rp.body, rp.len);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "OUT_OF_MEMORY");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 503);
    json_decref(j);
    rp.body_free(rp.body); /* the static body's release does nothing */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_two_lengths_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_length_twice, setup, teardown),
        cmocka_unit_test_setup_teardown(test_library_replies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_doubled_reply_status_survives, setup, teardown),
        cmocka_unit_test(test_reply_without_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
