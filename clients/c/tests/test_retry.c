/* SPDX-License-Identifier: MIT */
/*
 * libcurvc's retries against a live daemon (CURVD_URL) through a proxy in
 * this test that loses replies: it forwards a request to the daemon, reads
 * the daemon's whole reply (so the request took effect) and closes the
 * client's connection instead of answering. The client posts the same
 * request again and must get the stored reply; the session must have
 * advanced exactly once. The reference is a twin session driven without
 * the proxy with the same inputs: updates, reports and exported states
 * must be the same to the byte.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "curvc.h"

/* ---- The proxy ---------------------------------------------------------------- */

enum { MAX_KEPT = 8 };

struct proxy {
    int listen_fd, port;
    struct sockaddr_in daemon;
    pthread_t thread;
    pthread_mutex_t mu;
    int stop;
    /* Requests whose request line holds @match are counted; the replies
     * of those numbered skip+1 .. skip+drops are lost. */
    char match[64];
    int skip, drops;
    int seen, dropped;
    int bad_gateway;      /* a lost reply is HAProxy's 502 instead of a closed connection */
    char *kept[MAX_KEPT]; /* the bodies of the requests that matched */
    size_t kept_len[MAX_KEPT];
};

/* One HTTP message from @fd into @buf: its headers and a body of its
 * Content-Length. Returns the total length, or 0 at EOF or on an error. */
static size_t read_message(int fd, char **buf, size_t *body_at)
{
    size_t cap = 1 << 16, len = 0, want = 0;
    *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            *buf = realloc(*buf, cap + 1);
        }
        ssize_t got = read(fd, *buf + len, cap - len);
        if (got <= 0)
            return 0;
        len += (size_t)got;
        (*buf)[len] = '\0';
        char *end = want ? NULL : strstr(*buf, "\r\n\r\n");
        if (end) {
            *body_at = (size_t)(end - *buf) + 4;
            size_t cl = 0;
            for (char *h = strstr(*buf, "\r\n"); h && h < end; h = strstr(h + 2, "\r\n"))
                if (strncasecmp(h + 2, "Content-Length:", 15) == 0)
                    cl = strtoul(h + 17, NULL, 10);
            want = *body_at + cl;
        }
        if (want && len >= want)
            return want;
    }
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* One client connection, one request: the proxy closes every connection
 * after its reply, so a lost reply always ends a connection of its own
 * and the retry is libcurvc's, not libcurl's reconnect. */
static void serve(struct proxy *p, int client)
{
    char *req = NULL, *resp = NULL;
    size_t body_at = 0, resp_at = 0;
    size_t n = read_message(client, &req, &body_at);
    int up = n ? socket(AF_INET, SOCK_STREAM, 0) : -1;
    size_t m = 0;
    if (up >= 0 && connect(up, (struct sockaddr *)&p->daemon, sizeof p->daemon) == 0 &&
        write_all(up, req, n) == 0)
        m = read_message(up, &resp, &resp_at);
    if (up >= 0)
        close(up);
    int drop = 0;
    pthread_mutex_lock(&p->mu);
    char *line_end = n ? strstr(req, "\r\n") : NULL;
    if (line_end && p->match[0]) {
        *line_end = '\0';
        if (strstr(req, p->match)) {
            if (p->seen < MAX_KEPT) {
                p->kept_len[p->seen] = n - body_at;
                p->kept[p->seen] = malloc(n - body_at + 1);
                memcpy(p->kept[p->seen], req + body_at, n - body_at);
                p->kept[p->seen][n - body_at] = '\0';
            }
            p->seen++;
            drop = p->seen > p->skip && p->seen <= p->skip + p->drops;
            p->dropped += drop;
        }
    }
    int bad_gateway = p->bad_gateway;
    pthread_mutex_unlock(&p->mu);
    static const char BAD_GATEWAY[] =
        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/problem+json\r\n"
        "Content-Length: 49\r\nConnection: close\r\n\r\n"
        "{\"title\":\"Daemon lost\",\"status\":502,\"reason\":\"X\"}";
    if (m && !drop)
        write_all(client, resp, m);
    else if (m && bad_gateway)
        write_all(client, BAD_GATEWAY, sizeof BAD_GATEWAY - 1);
    close(client);
    free(req);
    free(resp);
}

static void *proxy_main(void *arg)
{
    struct proxy *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return NULL;
        struct pollfd pf = {p->listen_fd, POLLIN, 0};
        if (poll(&pf, 1, 50) == 1) {
            int client = accept(p->listen_fd, NULL, NULL);
            if (client >= 0)
                serve(p, client);
        }
    }
}

static void proxy_start(struct proxy *p)
{
    memset(p, 0, sizeof *p);
    const char *url = getenv("CURVD_URL");
    assert_non_null(url);
    int daemon_port = 0;
    assert_int_equal(sscanf(url, "http://127.0.0.1:%d", &daemon_port), 1);
    p->daemon.sin_family = AF_INET;
    p->daemon.sin_port = htons((unsigned short)daemon_port);
    p->daemon.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    p->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(p->listen_fd >= 0);
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(p->listen_fd, 8), 0);
    assert_int_equal(getsockname(p->listen_fd, (struct sockaddr *)&a, &alen), 0);
    p->port = ntohs(a.sin_port);
    pthread_mutex_init(&p->mu, NULL);
    assert_int_equal(pthread_create(&p->thread, NULL, proxy_main, p), 0);
}

/* Lose the replies of matching requests number @skip+1 .. @skip+@drops
 * from now on (answer 502 for them when @bad_gateway); forget earlier counts. */
static void proxy_lose(struct proxy *p, const char *match, int skip, int drops, int bad_gateway)
{
    pthread_mutex_lock(&p->mu);
    p->bad_gateway = bad_gateway;
    snprintf(p->match, sizeof p->match, "%s", match);
    p->skip = skip, p->drops = drops, p->seen = p->dropped = 0;
    for (int k = 0; k < MAX_KEPT; k++) {
        free(p->kept[k]);
        p->kept[k] = NULL;
    }
    pthread_mutex_unlock(&p->mu);
}

static void proxy_drop(struct proxy *p, const char *match, int skip, int drops)
{
    proxy_lose(p, match, skip, drops, 0);
}

static void proxy_stop(struct proxy *p)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
    proxy_drop(p, "", 0, 0);
    pthread_mutex_destroy(&p->mu);
}

/* The proxy's counts, read under its lock. */
static void proxy_counts(struct proxy *p, int *seen, int *dropped)
{
    pthread_mutex_lock(&p->mu);
    *seen = p->seen;
    *dropped = p->dropped;
    pthread_mutex_unlock(&p->mu);
}

/* ---- Twin sessions ------------------------------------------------------------- */

/* A client through the proxy and one straight to the daemon. */
struct twins {
    struct proxy proxy;
    curvc_client *via, *direct;
    curvc_session *a, *b; /* a through the proxy, b straight */
};

static void twins_new(struct twins *t, const char *kind, const curvc_block *layout, size_t n,
                      const char *config)
{
    proxy_start(&t->proxy);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", t->proxy.port);
    t->via = curvc_client_new(url, NULL);
    t->direct = curvc_client_new(getenv("CURVD_URL"), NULL);
    assert_non_null(t->via);
    assert_non_null(t->direct);
    curvc_client_set_retries(t->via, 3, 0.001);
    curvc_error err;
    t->a = t->b = NULL;
    if (curvc_session_create(t->via, kind, layout, n, config, &t->a, &err) != CURVC_OK ||
        curvc_session_create(t->direct, kind, layout, n, config, &t->b, &err) != CURVC_OK)
        fail_msg("create %s: %s", kind, err.text);
}

static void twins_free(struct twins *t)
{
    curvc_session_delete(t->b, NULL);
    curvc_session_delete(t->a, NULL);
    curvc_session_free(t->a);
    curvc_session_free(t->b);
    curvc_client_free(t->via);
    curvc_client_free(t->direct);
    proxy_stop(&t->proxy);
}

/* Both sessions as the daemon has them now: the same step count (@steps),
 * the same latest report, the same exported state to the byte. */
static void twins_agree(struct twins *t, long long steps)
{
    curvc_session *s[2];
    char *json[2];
    unsigned char *blob[2];
    size_t len[2];
    curvc_error err;
    for (int k = 0; k < 2; k++) {
        /* Read both through the direct client: the proxy is not on trial here. */
        const char *id = curvc_session_id(k ? t->b : t->a);
        assert_int_equal(curvc_session_open(t->direct, id, &s[k], &err), CURVC_OK);
        assert_int_equal(curvc_session_steps(s[k]), steps);
        assert_int_equal(curvc_session_get_json(s[k], &json[k], &err), CURVC_OK);
        assert_int_equal(curvc_session_export(s[k], &blob[k], &len[k], &err), CURVC_OK);
    }
    json_t *j0 = json_loads(json[0], 0, NULL), *j1 = json_loads(json[1], 0, NULL);
    json_t *l0 = json_object_get(j0, "last_step"), *l1 = json_object_get(j1, "last_step");
    assert_int_equal(json_integer_value(json_object_get(l0, "step")), steps);
    assert_true(json_equal(l0, l1));
    assert_int_equal(len[0], len[1]);
    assert_memory_equal(blob[0], blob[1], len[0]);
    json_decref(j0);
    json_decref(j1);
    for (int k = 0; k < 2; k++) {
        free(json[k]);
        free(blob[k]);
        curvc_session_free(s[k]);
    }
}

/* ---- A lost step reply ------------------------------------------------------------ */

static const curvc_block LAYOUT[] = {{"fc", "dense", {2, 3}, 1}, {"gain", "vector", {2}, 0}};
enum { DIM = 10 };

static void grads(unsigned seed, double *g)
{
    for (int i = 0; i < DIM; i++) {
        seed = seed * 1664525u + 1013904223u;
        g[i] = (double)(seed >> 8) / (1 << 23) - 1.0;
    }
}

/* AdaGrad accumulates squared gradients, so a step applied twice would
 * change every later update: two more steps after the lost reply check it.
 * @state: non-NULL to lose the reply as HAProxy does when the daemon goes
 * away after taking the request (502), NULL to close the connection. */
static void test_lost_step_reply(void **state)
{
    int bad_gateway = *state != NULL;
    struct twins t;
    twins_new(&t, "adagrad_diag", LAYOUT, 2, "{\"lr\": 0.1}");
    for (unsigned k = 1; k <= 3; k++) {
        double g[DIM], ua[DIM], ub[DIM];
        grads(k, g);
        curvc_step_in in = {.grad = g};
        curvc_error err;
        proxy_lose(&t.proxy, "/steps HTTP", 0, k == 1, bad_gateway);
        unsigned long before = curvc_client_requests(t.via);
        if (curvc_step(t.a, &in, CURVC_BINARY, NULL, NULL, ua, &err) != CURVC_OK)
            fail_msg("step %u through the proxy: %s", k, err.text);
        assert_int_equal(curvc_step(t.b, &in, CURVC_BINARY, NULL, NULL, ub, &err), CURVC_OK);
        int seen, dropped;
        proxy_counts(&t.proxy, &seen, &dropped);
        assert_int_equal(dropped, k == 1);
        assert_int_equal(seen, k == 1 ? 2 : 1);
        assert_int_equal(curvc_client_requests(t.via) - before, k == 1 ? 2 : 1);
        if (k == 1) { /* the retry was the same request: the same step number */
            assert_int_equal(t.proxy.kept_len[0], t.proxy.kept_len[1]);
            assert_memory_equal(t.proxy.kept[0], t.proxy.kept[1], t.proxy.kept_len[0]);
            assert_non_null(strstr(t.proxy.kept[0], "\"step\":1,"));
        }
        assert_memory_equal(ua, ub, sizeof ua);
        assert_string_equal(curvc_session_report(t.a), curvc_session_report(t.b));
        twins_agree(&t, k);
    }
    twins_free(&t);
}

/* ---- A lost callback answer reply ---------------------------------------------------- */

/* HF on h(θ) = 1 + ½ Σ dᵢ (θᵢ − cᵢ)², G = diag(d): exact answers. */
enum { N = 4 };
static const curvc_block VEC[] = {{"theta", "vector", {N}, 0}};
static const double D[N] = {1, 2, 3, 4}, C[N] = {1, -1, 0.5, 2};

struct quad {
    double theta[N];
    int calls;
};

static double quad_loss(const double *theta)
{
    double h = 1;
    for (int i = 0; i < N; i++)
        h += 0.5 * D[i] * (theta[i] - C[i]) * (theta[i] - C[i]);
    return h;
}

static int quad_oracle(void *user, const curvc_request *req, double *answer)
{
    struct quad *q = user;
    q->calls++;
    for (size_t k = 0; k < req->n_vectors; k++) {
        const double *v = req->vectors + k * N;
        double t[N];
        for (int i = 0; i < N; i++)
            t[i] = q->theta[i] + v[i];
        if (req->kind == CURVC_REQ_CURVATURE_PRODUCT)
            for (int i = 0; i < N; i++)
                answer[k * N + i] = D[i] * v[i];
        else if (req->kind == CURVC_REQ_LOSS)
            answer[k] = quad_loss(t);
        else
            for (size_t l = 0; l < req->n_vectors; l++) {
                double s = 0;
                for (int i = 0; i < N; i++)
                    s += req->vectors[l * N + i] * D[i] * v[i];
                answer[l * req->n_vectors + k] = s;
            }
    }
    return 0;
}

static void quad_step(curvc_session *s, struct quad *q, double *u)
{
    double g[N];
    for (int i = 0; i < N; i++)
        g[i] = D[i] * (q->theta[i] - C[i]);
    curvc_step_in in = {.grad = g, .loss = quad_loss(q->theta), .has_loss = 1};
    curvc_error err;
    if (curvc_step(s, &in, CURVC_JSON, quad_oracle, q, u, &err) != CURVC_OK)
        fail_msg("hf step: %s", err.text);
    for (int i = 0; i < N; i++)
        q->theta[i] += u[i];
}

/* The reply to an answer is lost: the first answer's (its reply a 202
 * with the next callback), then the last one's (the final 200). */
static void test_lost_answer_reply(void **state)
{
    (void)state;
    struct twins t;
    twins_new(&t, "hf", VEC, 1, "{\"precond\": \"none\", \"cg_max\": 3}");
    struct quad qa = {{0}, 0}, qb = {{0}, 0};
    for (int k = 1; k <= 2; k++) {
        double ua[N], ub[N];
        qb.calls = qa.calls = 0;
        quad_step(t.b, &qb, ub);
        assert_true(qb.calls >= 2);
        proxy_drop(&t.proxy, "/callbacks/", k == 1 ? 0 : qb.calls - 1, 1);
        quad_step(t.a, &qa, ua);
        int seen, dropped;
        proxy_counts(&t.proxy, &seen, &dropped);
        assert_int_equal(dropped, 1);
        assert_int_equal(seen, qb.calls + 1); /* every answer once, the lost one twice */
        int lost = k == 1 ? 0 : qb.calls - 1;
        assert_int_equal(t.proxy.kept_len[lost], t.proxy.kept_len[lost + 1]);
        assert_memory_equal(t.proxy.kept[lost], t.proxy.kept[lost + 1], t.proxy.kept_len[lost]);
        assert_int_equal(qa.calls, qb.calls); /* the oracle was not asked again */
        assert_memory_equal(ua, ub, sizeof ua);
        assert_string_equal(curvc_session_report(t.a), curvc_session_report(t.b));
        twins_agree(&t, k);
    }
    twins_free(&t);
}

/* A create whose reply is a proxy's 502 may have been made: not repeated. */
static void test_bad_gateway_create_not_repeated(void **state)
{
    (void)state;
    struct proxy p;
    proxy_start(&p);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", p.port);
    curvc_client *c = curvc_client_new(url, NULL);
    assert_non_null(c);
    curvc_client_set_retries(c, 3, 0.001);
    proxy_lose(&p, "POST /v1/sessions HTTP", 0, 1, 1);
    curvc_session *s = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_create(c, "sgd", LAYOUT, 2, NULL, &s, &err), CURVC_E_PROBLEM);
    assert_int_equal(err.status, 502);
    int seen, dropped;
    proxy_counts(&p, &seen, &dropped);
    assert_int_equal(seen, 1);
    assert_int_equal(dropped, 1);
    curvc_client_free(c);
    proxy_stop(&p);
}

int main(void)
{
    static int bad_gateway = 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lost_step_reply),
        cmocka_unit_test_prestate(test_lost_step_reply, &bad_gateway),
        cmocka_unit_test(test_bad_gateway_create_not_repeated),
        cmocka_unit_test(test_lost_answer_reply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
