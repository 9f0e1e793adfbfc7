/* SPDX-License-Identifier: MIT */
/*
 * Bad input as data: every directory under tests/server/cases/ holds a raw
 * HTTP request and the problem it must earn (the format is described in
 * tests/server/cases/README.md). One daemon, one fixture session (mbag,
 * one good step applied); each case is sent over a plain socket, so that a
 * case can lie about its length, cut its body short or hang up, and after
 * each one the fixture must be exactly as before: the exported state byte
 * for byte, the step count, and no session gained or lost. At the end the
 * daemon must still be healthy and step 2 must equal libcurv in-process fed
 * the same two gradients.
 */
/* TCP_CORK (Linux) is outside POSIX: it lets a hang-up travel with the last
 * bytes of a request, see raw_exchange(). */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "curv.h"
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

#define CASES_DIR "tests/server/cases"
#define MAX_BODY ((size_t)1 << 20) /* the fixture daemon's body cap */
#define IO_TIMEOUT_MS 5000
#define HANGUP_TIMEOUT_MS 1000

enum { D = 10 }; /* fc: 2 x (3 + bias) = 8, gain: 2 */

/* The two gradients the fixture session is fed (flat, layout order). */
static const double G1[D] = {0.5, -0.25, 0.125, 1.0, -0.75, 0.375, 0.0625, -2.0, 0.3, -0.1};
static const double G2[D] = {-0.2, 0.4, 1.5, -0.6, 0.05, 0.9, -1.25, 0.7, -0.35, 0.8};
static const double LR = 0.1;

struct fx {
    struct curvd_server srv;
    char dir[64], db[128], base[64];
    unsigned port;
    char id[33];
    unsigned char *state; /* the fixture's exported state after step 1 */
    size_t state_len;
};

/* ---- Small buffers ------------------------------------------------------ */

struct buf {
    unsigned char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const void *data, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        unsigned char *np = malloc(cap);
        assert_non_null(np);
        if (b->len)
            memcpy(np, b->p, b->len);
        free(b->p);
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0'; /* always NUL-terminated for text use */
}

static void buf_addf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_addf(struct buf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < sizeof tmp);
    buf_add(b, tmp, (size_t)n);
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* The whole file at @path, or -1 if it cannot be read. */
static int slurp(const char *path, struct buf *out)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return -1;
    char tmp[8192];
    size_t n;
    memset(out, 0, sizeof *out);
    buf_add(out, "", 0);
    while ((n = fread(tmp, 1, sizeof tmp, fp)) > 0)
        buf_add(out, tmp, n);
    int bad = ferror(fp);
    fclose(fp);
    return bad ? -1 : 0;
}

/* ---- A raw HTTP/1.1 exchange over a plain socket ------------------------ */

struct raw_resp {
    int answered; /* 1: a complete response; 0: closed without one */
    long status;
    char ctype[128];
    struct buf body;
};

/* The value of header @name in the header block @h (NUL-terminated), or 0. */
static int header_value(const char *h, const char *name, char *out, size_t cap)
{
    size_t k = strlen(name);
    for (const char *line = strstr(h, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *s = line + 2;
        if (strncasecmp(s, name, k) != 0 || s[k] != ':')
            continue;
        s += k + 1;
        while (*s == ' ' || *s == '\t')
            s++;
        size_t n = strcspn(s, "\r\n");
        snprintf(out, cap, "%.*s", (int)n, s);
        return 1;
    }
    return 0;
}

/* Parse what has arrived; 1 when a whole response is there. */
static int parse_response(const struct buf *in, int eof, struct raw_resp *r, char *err, size_t cap)
{
    const char *end = in->len ? strstr((const char *)in->p, "\r\n\r\n") : NULL;
    if (!end)
        return 0;
    size_t hlen = (size_t)(end - (const char *)in->p) + 4;
    char *head = strndup((const char *)in->p, hlen);
    assert_non_null(head);
    char v[64];
    long status = 0;
    if (sscanf(head, "HTTP/1.%*d %ld", &status) != 1) {
        snprintf(err, cap, "bad status line");
        free(head);
        return -1;
    }
    r->status = status;
    if (!header_value(head, "Content-Type", r->ctype, sizeof r->ctype))
        r->ctype[0] = '\0';
    int chunked = header_value(head, "Transfer-Encoding", v, sizeof v);
    int has_len = header_value(head, "Content-Length", v, sizeof v);
    free(head);
    size_t want = has_len ? (size_t)strtoull(v, NULL, 10) : 0;
    if (chunked) {
        snprintf(err, cap, "chunked responses are not expected from curvd");
        return -1;
    }
    if (has_len ? in->len - hlen < want : !eof)
        return 0;
    buf_add(&r->body, in->p + hlen, has_len ? want : in->len - hlen);
    r->answered = 1;
    return 1;
}

/*
 * Send @req (@len bytes) on a new connection and read one response. The
 * daemon may answer before the upload ends (413 after the headers): then
 * sending stops and the answer is read. @shut half-closes the connection
 * after the upload. Returns 0 (answered, or closed without an answer) or
 * -1 with @err (no connection, timeout, garbage).
 */
static int raw_exchange(unsigned port, const unsigned char *req, size_t len, int shut,
                        struct raw_resp *r, char *err, size_t cap)
{
    memset(r, 0, sizeof *r);
    int fd = su_raw_connect(port);
    if (fd < 0) {
        snprintf(err, cap, "connect: %s", strerror(errno));
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
#ifdef TCP_CORK
    /* Hold the bytes back until the end, so that a hang-up goes out in the
     * same segment as the last of them: the daemon sees data and end of
     * stream in one event, every time. */
    int one = 1;
    if (shut)
        setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof one);
#endif
    double deadline = su_now_s() + IO_TIMEOUT_MS / 1e3;
    size_t off = 0;
    while (off < len && su_now_s() < deadline) {
        struct pollfd pf = {.fd = fd, .events = POLLIN | POLLOUT};
        if (poll(&pf, 1, 100) <= 0)
            continue;
        if (pf.revents & (POLLIN | POLLHUP | POLLERR))
            break; /* answered (or hung up) before the upload ended */
        ssize_t k = send(fd, req + off, len - off, MSG_NOSIGNAL);
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break;
        if (k > 0)
            off += (size_t)k;
    }
    if (shut) { /* the daemon must notice the hang-up at once */
        shutdown(fd, SHUT_WR);
        deadline = su_now_s() + HANGUP_TIMEOUT_MS / 1e3;
    }
    struct buf in = {0};
    int rc = 1, done = 0;
    while (!done) {
        int left = (int)((deadline - su_now_s()) * 1e3);
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, left) <= 0) {
            /* Reset the connection, so that the daemon lets go of it now
             * rather than at its idle timeout (or during the final drain). */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            if (shut && in.len == 0) { /* hung up mid-body: no answer, the expected outcome */
                rc = 0;
                break;
            }
            if (shut)
                snprintf(err, cap,
                         "the daemon still holds the connection %d ms after the client "
                         "half-closed it (%zu bytes of answer)",
                         HANGUP_TIMEOUT_MS, in.len);
            else
                snprintf(err, cap, "no complete response within %d ms (%zu bytes read)",
                         IO_TIMEOUT_MS, in.len);
            rc = -1;
            break;
        }
        char tmp[16384];
        ssize_t k = recv(fd, tmp, sizeof tmp, 0);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        int eof = k <= 0; /* a reset after the answer counts as its end */
        if (k > 0)
            buf_add(&in, tmp, (size_t)k);
        int st = parse_response(&in, eof, r, err, cap);
        if (st < 0) {
            rc = -1;
            break;
        }
        if (st > 0) {
            rc = 0;
            done = 1;
        } else if (eof) {
            if (in.len) {
                snprintf(err, cap, "connection closed mid-response (%zu bytes)", in.len);
                rc = -1;
            } else {
                rc = 0; /* closed without an answer */
            }
            done = 1;
        }
    }
    buf_free(&in);
    close(fd);
    return rc;
}

/* ---- The fixture session ------------------------------------------------ */

static json_t *http_json(struct fx *f, const char *method, const char *path, const char *body,
                         long want)
{
    return su_call(f->base, method, path, body, want, NULL);
}

/* A step body in JSON numbers, FP64, blocks in reverse layout order. */
static char *step_body(int step, const double *g)
{
    struct buf b = {0};
    buf_addf(&b,
             "{\"step\":%d,\"gradients\":[{\"name\":\"gain\",\"shape\":[2],"
             "\"datatype\":\"FP64\",\"data\":[%.17g,%.17g]},",
             step, g[8], g[9]);
    buf_addf(&b, "{\"name\":\"fc\",\"shape\":[2,4],\"datatype\":\"FP64\",\"data\":[");
    for (int i = 0; i < 8; i++)
        buf_addf(&b, "%s%.17g", i ? "," : "", g[i]);
    buf_addf(&b, "]}]}");
    return (char *)b.p;
}

/* The update of a step reply, flattened in layout order. */
static void update_of(json_t *reply, double *u)
{
    json_t *upd = json_object_get(reply, "update");
    assert_int_equal(json_array_size(upd), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(upd, 0), "name")), "fc");
    size_t k = 0;
    for (size_t b = 0; b < 2; b++) {
        json_t *data = json_object_get(json_array_get(upd, b), "data");
        for (size_t i = 0; i < json_array_size(data) && k < D; i++)
            u[k++] = json_number_value(json_array_get(data, i));
    }
    assert_int_equal(k, D);
}

/* Delete every session, then create the fixture session, apply step 1 and
 * remember its exported state. Also used to recover after a case that
 * changed something, so that one failure does not cascade. */
static void fixture_make(struct fx *f)
{
    json_t *list = http_json(f, "GET", "/v1/sessions?page_size=1000", NULL, 200);
    json_t *arr = json_object_get(list, "sessions");
    for (size_t i = 0; i < json_array_size(arr); i++) {
        char path[128];
        snprintf(path, sizeof path, "/v1/sessions/%s",
                 json_string_value(json_object_get(json_array_get(arr, i), "id")));
        json_decref(http_json(f, "DELETE", path, NULL, 204));
    }
    json_decref(list);
    json_t *s = http_json(f, "POST", "/v1/sessions",
                          "{\"optimizer\":\"mbag\",\"config\":{\"lr\":0.1},\"layout\":["
                          "{\"name\":\"fc\",\"kind\":\"dense\",\"shape\":[2,3],\"bias\":true},"
                          "{\"name\":\"gain\",\"kind\":\"vector\",\"shape\":[2]}]}",
                          201);
    snprintf(f->id, sizeof f->id, "%s", json_string_value(json_object_get(s, "id")));
    assert_int_equal(strlen(f->id), 32);
    assert_int_equal(json_integer_value(json_object_get(s, "dim")), D);
    json_decref(s);
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", f->id);
    char *body = step_body(1, G1);
    json_t *r = http_json(f, "POST", path, body, 200);
    free(body);
    assert_int_equal(json_integer_value(json_object_get(r, "step")), 1);
    json_decref(r);
    free(f->state);
    f->state = su_export_state(f->base, f->id, &f->state_len, NULL);
}

static int group_setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "cases", f->db, sizeof f->db);
    f->srv.cfg.db_path = f->db;
    f->srv.cfg.max_sessions = 100;
    f->srv.cfg.mem_budget = (size_t)4 << 20; /* create-state-over-budget */
    f->srv.cfg.max_body = MAX_BODY;
    f->srv.cfg.workers = 2; /* heavy routes on the worker pool, as in production */
    su_daemon_start(&f->srv, f->base, sizeof f->base);
    f->port = curvd_http_port(&f->srv);
    fixture_make(f);
    *state = f;
    return 0;
}

static int group_teardown(void **state)
{
    struct fx *f = *state;
    su_daemon_stop(&f->srv);
    assert_int_equal(su_rmtree(f->dir), 0);
    free(f->state);
    free(f);
    return 0;
}

/* ---- Cases -------------------------------------------------------------- */

struct expect {
    long status; /* -1: "none", the connection closes without an answer */
    char reason[64], path[160], expected[96], got[96];
    int has_path, has_expected, has_got, check_state;
};

/* A line "key value" of a case file: *key and *val point into @line. */
static void split_kv(char *line, char **key, char **val)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t'))
        line[--n] = '\0';
    *key = line;
    char *sp = strchr(line, ' ');
    *val = sp ? sp + 1 : line + n;
    if (sp)
        *sp = '\0';
}

static int parse_expected(const char *file, struct expect *e, char *err, size_t cap)
{
    struct buf b;
    if (slurp(file, &b) != 0) {
        snprintf(err, cap, "cannot read %.200s", file);
        return -1;
    }
    memset(e, 0, sizeof *e);
    e->status = 0;
    e->check_state = 1;
    int rc = 0;
    for (char *save = NULL, *line = strtok_r((char *)b.p, "\n", &save); line && !rc;
         line = strtok_r(NULL, "\n", &save)) {
        char *k, *v;
        split_kv(line, &k, &v);
        if (!*k || *k == '#')
            continue;
        if (strcmp(k, "status") == 0)
            e->status = strcmp(v, "none") == 0 ? -1 : strtol(v, NULL, 10);
        else if (strcmp(k, "reason") == 0)
            snprintf(e->reason, sizeof e->reason, "%s", v);
        else if (strcmp(k, "path") == 0)
            e->has_path = 1, snprintf(e->path, sizeof e->path, "%s", v);
        else if (strcmp(k, "expected") == 0)
            e->has_expected = 1, snprintf(e->expected, sizeof e->expected, "%s", v);
        else if (strcmp(k, "got") == 0)
            e->has_got = 1, snprintf(e->got, sizeof e->got, "%s", v);
        else if (strcmp(k, "state") == 0 && (!strcmp(v, "unchanged") || !strcmp(v, "any")))
            e->check_state = strcmp(v, "unchanged") == 0;
        else
            rc = -1, snprintf(err, cap, "expected: unknown line '%s %s'", k, v);
    }
    if (!rc && e->status == 0)
        rc = -1, snprintf(err, cap, "expected: no status line");
    buf_free(&b);
    return rc;
}

/* Copy @n bytes of @s to @out with every "{id}" replaced by @id. */
static void expand_id(const char *s, size_t n, const char *id, struct buf *out)
{
    for (size_t i = 0; i < n;) {
        if (n - i >= 4 && memcmp(s + i, "{id}", 4) == 0) {
            buf_add(out, id, strlen(id));
            i += 4;
        } else {
            buf_add(out, s + i, 1);
            i++;
        }
    }
}

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* @escapes: "\xHH" is one byte and a backslash before a newline joins the
 * lines; every other byte, backslashes included, stays as written. */
static void unescape(const unsigned char *s, size_t n, struct buf *out)
{
    for (size_t i = 0; i < n;) {
        if (s[i] == '\\' && i + 3 < n && s[i + 1] == 'x' && hexval(s[i + 2]) >= 0 &&
            hexval(s[i + 3]) >= 0) {
            unsigned char c = (unsigned char)(hexval(s[i + 2]) * 16 + hexval(s[i + 3]));
            buf_add(out, &c, 1);
            i += 4;
        } else if (s[i] == '\\' && i + 1 < n && s[i + 1] == '\n') {
            i += 2;
        } else {
            buf_add(out, s + i, 1);
            i++;
        }
    }
}

/* "@expand NAME COUNT TEXT": "{NAME}" in the body becomes TEXT repeated
 * COUNT times (TEXT is the rest of the line, spaces included). */
#define MAX_EXPAND 4
struct expansion {
    char name[32];
    long count;
    const char *text; /* borrowed from the request file */
};

static int parse_expansion(const char *s, struct expansion *x)
{
    int used = 0;
    if (sscanf(s, "%31s %ld %n", x->name, &x->count, &used) != 2 || used == 0 || x->count < 0 ||
        !s[used])
        return -1;
    x->text = s + used;
    return 0;
}

static void expand_body(const unsigned char *s, size_t n, const struct expansion *ex, size_t nex,
                        struct buf *out)
{
    buf_add(out, "", 0);
    for (size_t i = 0; i < n;) {
        size_t k = 0, len = 0;
        for (; s[i] == '{' && k < nex; k++) {
            len = strlen(ex[k].name);
            if (n - i >= len + 2 && memcmp(s + i + 1, ex[k].name, len) == 0 &&
                s[i + 1 + len] == '}')
                break;
        }
        if (s[i] == '{' && k < nex) {
            for (long r = 0; r < ex[k].count; r++)
                buf_add(out, ex[k].text, strlen(ex[k].text));
            i += len + 2;
        } else {
            buf_add(out, s + i, 1);
            i++;
        }
    }
}

/* A case's request, ready to send. */
struct request {
    struct buf wire; /* the bytes to send */
    int shut;        /* @close: half-close after sending */
    char line[600];  /* "METHOD TARGET", for messages */
};

static int has_header(const struct buf *h, const char *name)
{
    char v[8];
    return header_value((const char *)h->p, name, v, sizeof v);
}

/* Read @dir/request (and @dir/body.bin) into @rq. */
static int build_request(struct fx *f, const char *dir, struct request *rq, char *err, size_t cap)
{
    char file[700];
    struct buf src, head = {0}, body = {0}, raw = {0};
    char *hstr = NULL;
    int escapes = 0, rc = -1, blob_flip = -1;
    long blob_cut = -1;
    struct expansion ex[MAX_EXPAND];
    size_t nex = 0;
    memset(rq, 0, sizeof *rq);
    snprintf(file, sizeof file, "%s/request", dir);
    if (slurp(file, &src) != 0) {
        snprintf(err, cap, "cannot read %.200s", file);
        return -1;
    }
    /* The head ends at the first empty line; the body is the rest, less
     * one final newline (the file's own). */
    char *text = (char *)src.p, *sep = strstr(text, "\n\n");
    size_t head_len = sep ? (size_t)(sep - text) : src.len;
    const unsigned char *bsrc = sep ? (const unsigned char *)sep + 2 : NULL;
    size_t blen = sep ? src.len - head_len - 2 : 0;
    if (blen && bsrc[blen - 1] == '\n')
        blen--;
    buf_add(&head, "\r\n", 2); /* so header_value() finds the first line too */
    int first = 1;
    hstr = strndup(text, head_len);
    assert_non_null(hstr);
    for (char *save = NULL, *line = strtok_r(hstr, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#')
            continue;
        if (first) {
            struct buf l = {0};
            expand_id(line, strlen(line), f->id, &l);
            snprintf(rq->line, sizeof rq->line, "%s", (char *)l.p);
            buf_free(&l);
            first = 0;
        } else if (strcmp(line, "@escapes") == 0) {
            escapes = 1;
        } else if (strcmp(line, "@close") == 0) {
            rq->shut = 1;
        } else if (strncmp(line, "@expand ", 8) == 0 && nex < MAX_EXPAND &&
                   parse_expansion(line + 8, &ex[nex]) == 0) {
            nex++;
        } else if (strncmp(line, "@state-blob flip ", 17) == 0) {
            blob_flip = (int)strtol(line + 17, NULL, 10);
        } else if (strncmp(line, "@state-blob truncate ", 21) == 0) {
            blob_cut = strtol(line + 21, NULL, 10);
        } else if (line[0] == '@' || !strchr(line, ':')) {
            snprintf(err, cap, "request: bad head line '%s'", line);
            goto out;
        } else {
            expand_id(line, strlen(line), f->id, &head);
            buf_add(&head, "\r\n", 2);
        }
    }
    if (first || !strchr(rq->line, ' ')) {
        snprintf(err, cap, "request: no 'METHOD TARGET' line");
        goto out;
    }
    if (bsrc && escapes)
        unescape(bsrc, blen, &raw);
    else if (bsrc)
        buf_add(&raw, bsrc, blen);
    snprintf(file, sizeof file, "%s/body.bin", dir);
    struct buf bin;
    if (slurp(file, &bin) == 0) {
        if (raw.len) {
            buf_free(&bin);
            snprintf(err, cap, "request: both a body and body.bin");
            goto out;
        }
        buf_free(&raw);
        raw = bin;
    }
    if (blob_flip >= 0 || blob_cut >= 0) {
        size_t at = blob_flip >= 0 ? (size_t)blob_flip : (size_t)blob_cut;
        if (raw.len || at >= f->state_len) {
            snprintf(err, cap, "request: @state-blob needs an empty body and an offset < %zu",
                     f->state_len);
            goto out;
        }
        buf_add(&raw, f->state, blob_cut >= 0 ? (size_t)blob_cut : f->state_len);
        if (blob_flip >= 0)
            raw.p[blob_flip] ^= 0xff;
    }
    expand_body(raw.p, raw.len, ex, nex, &body);
    /* Headers the runner adds unless the case gives its own. */
    const char *method = rq->line;
    char te[64] = "";
    header_value((const char *)head.p, "Transfer-Encoding", te, sizeof te);
    int chunked = strstr(te, "chunked") != NULL;
    buf_addf(&rq->wire, "%s HTTP/1.1\r\n", rq->line);
    if (!has_header(&head, "Host"))
        buf_addf(&rq->wire, "Host: 127.0.0.1:%u\r\n", f->port);
    if (!has_header(&head, "Connection"))
        buf_addf(&rq->wire, "Connection: close\r\n");
    if (!te[0] && !has_header(&head, "Content-Length") &&
        (body.len || strncmp(method, "GET ", 4) != 0))
        buf_addf(&rq->wire, "Content-Length: %zu\r\n", body.len);
    buf_add(&rq->wire, head.p + 2, head.len - 2);
    buf_add(&rq->wire, "\r\n", 2);
    if (chunked) { /* frame the body as chunks of at most 4 KiB */
        for (size_t off = 0; off < body.len; off += 4096) {
            size_t n = body.len - off < 4096 ? body.len - off : 4096;
            buf_addf(&rq->wire, "%zx\r\n", n);
            buf_add(&rq->wire, body.p + off, n);
            buf_add(&rq->wire, "\r\n", 2);
        }
        buf_add(&rq->wire, "0\r\n\r\n", 5);
    } else {
        buf_add(&rq->wire, body.p, body.len);
    }
    rc = 0;
out:
    free(hstr);
    buf_free(&src);
    buf_free(&head);
    buf_free(&body);
    buf_free(&raw);
    return rc;
}

/* Check a response against @e; "" when it matches, else why not. */
static void check_response(const struct expect *e, const struct raw_resp *r, char *why, size_t cap)
{
    why[0] = '\0';
    if (e->status < 0) {
        if (r->answered)
            snprintf(why, cap, "expected no answer, got %ld", r->status);
        return;
    }
    if (!r->answered) {
        snprintf(why, cap, "connection closed without an answer");
        return;
    }
    if (r->status != e->status) {
        snprintf(why, cap, "status %ld, expected %ld: %.300s", r->status, e->status,
                 r->body.p ? (const char *)r->body.p : "");
        return;
    }
    if (r->status < 400)
        return;
    if (strncmp(r->ctype, "application/problem+json", 24) != 0) {
        snprintf(why, cap, "Content-Type '%s', expected application/problem+json", r->ctype);
        return;
    }
    json_t *p = json_loadb((const char *)r->body.p, r->body.len, 0, NULL);
    json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
    const char *reason = json_string_value(json_object_get(p, "reason"));
    const char *path = json_string_value(json_object_get(e0, "path"));
    const char *exp = json_string_value(json_object_get(e0, "expected"));
    const char *got = json_string_value(json_object_get(e0, "got"));
    if (!json_is_object(p))
        snprintf(why, cap, "problem body is not a JSON object");
    else if (json_integer_value(json_object_get(p, "status")) != r->status)
        snprintf(why, cap, "problem status member differs from the HTTP status");
    else if (e->reason[0] && (!reason || strcmp(reason, e->reason) != 0))
        snprintf(why, cap, "reason %s, expected %s: %.200s", reason ? reason : "(none)", e->reason,
                 json_string_value(json_object_get(p, "detail")));
    else if (e->has_path && (!path || strcmp(path, e->path) != 0))
        snprintf(why, cap, "path '%s', expected '%s'", path ? path : "(none)", e->path);
    else if (e->has_expected && (!exp || strcmp(exp, e->expected) != 0))
        snprintf(why, cap, "expected '%s', expected '%s'", exp ? exp : "(none)", e->expected);
    else if (e->has_got && (!got || strcmp(got, e->got) != 0))
        snprintf(why, cap, "got '%s', expected '%s'", got ? got : "(none)", e->got);
    json_decref(p);
}

/* The fixture after a case: same state bytes, same step, no other session.
 * "" when so, else what changed. */
static void check_fixture(struct fx *f, char *why, size_t cap)
{
    why[0] = '\0';
    long step = su_session_step(f->base, f->id);
    size_t len;
    unsigned char *now = su_export_state(f->base, f->id, &len, NULL);
    json_t *list = http_json(f, "GET", "/v1/sessions?page_size=1000", NULL, 200);
    size_t n = json_array_size(json_object_get(list, "sessions"));
    json_decref(list);
    if (step != 1)
        snprintf(why, cap, "the fixture session is at step %ld, not 1", step);
    else if (len != f->state_len || memcmp(now, f->state, len) != 0)
        snprintf(why, cap, "the fixture session's exported state changed");
    else if (n != 1)
        snprintf(why, cap, "%zu sessions exist, not 1", n);
    free(now);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Run one case; prints its line and returns 0 (pass) or -1. */
static int run_case(struct fx *f, const char *name)
{
    char dir[512], file[600], why[600] = "";
    struct expect e;
    struct request rq;
    struct raw_resp r = {0};
    double t0 = su_now_s();
    snprintf(dir, sizeof dir, "%s/%s", CASES_DIR, name);
    snprintf(file, sizeof file, "%s/expected", dir);
    int built = 0;
    if (parse_expected(file, &e, why, sizeof why) == 0 &&
        build_request(f, dir, &rq, why, sizeof why) == 0) {
        built = 1;
        if (raw_exchange(f->port, rq.wire.p, rq.wire.len, rq.shut, &r, why, sizeof why) == 0)
            check_response(&e, &r, why, sizeof why);
    }
    char got[160];
    if (!r.answered)
        snprintf(got, sizeof got, "no answer");
    else {
        json_t *p =
            r.status >= 400 ? json_loadb((const char *)r.body.p, r.body.len, 0, NULL) : NULL;
        const char *reason = json_string_value(json_object_get(p, "reason"));
        const char *path = json_string_value(
            json_object_get(json_array_get(json_object_get(p, "errors"), 0), "path"));
        snprintf(got, sizeof got, "%ld%s%s%s%s", r.status, reason ? " " : "", reason ? reason : "",
                 path && *path ? " " : "", path && *path ? path : "");
        json_decref(p);
    }
    /* Whatever happened, the fixture must be intact; if not, rebuild it so
     * that the next cases start from the same place. */
    if (built) {
        char fwhy[200];
        check_fixture(f, fwhy, sizeof fwhy);
        if (fwhy[0]) {
            if (e.check_state && !why[0])
                snprintf(why, sizeof why, "%s", fwhy);
            fixture_make(f);
        }
    }
    if (getenv("CURVD_CASES_VERBOSE") && r.answered)
        printf("  %.*s\n", (int)(r.body.len < 600 ? r.body.len : 600),
               r.body.p ? (const char *)r.body.p : "");
    printf("case %-40s %-44s %4lldms %s%s\n", name, got, (long long)((su_now_s() - t0) * 1e3),
           why[0] ? "FAIL: " : "ok", why);
    fflush(stdout);
    buf_free(&rq.wire);
    buf_free(&r.body);
    return why[0] ? -1 : 0;
}

static void test_bad_input_cases(void **state)
{
    struct fx *f = *state;
    const char *dirname = getenv("CURVD_CASES_DIR") ? getenv("CURVD_CASES_DIR") : CASES_DIR;
    const char *only = getenv("CURVD_CASE"); /* run just this one */
    DIR *d = opendir(dirname);
    if (!d)
        fail_msg("cannot open %s (run from the repository root)", dirname);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        char file[600];
        struct stat st;
        snprintf(file, sizeof file, "%s/%s/request", dirname, de->d_name);
        if (de->d_name[0] == '.' || stat(file, &st) != 0 || (only && strcmp(only, de->d_name)))
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            assert_non_null(nn);
            names = nn;
        }
        names[n] = strdup(de->d_name);
        assert_non_null(names[n++]);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    size_t failed = 0;
    double t0 = su_now_s();
    for (size_t i = 0; i < n; i++) {
        failed += run_case(f, names[i]) != 0;
        free(names[i]);
    }
    free(names);
    printf("cases: %zu run, %zu passed, %zu failed in %lld ms\n", n, n - failed, failed,
           (long long)((su_now_s() - t0) * 1e3));
    if (!only && n < 40)
        fail_msg("only %zu cases found in %s", n, dirname);
    if (failed)
        fail_msg("%zu of %zu bad-input cases failed", failed, n);
}

/* After every case: healthy, and step 2 equals libcurv fed G1 then G2;
 * posting step 1 now is behind (409), step 2 again is its replay. */
static void test_still_steps_like_libcurv(void **state)
{
    struct fx *f = *state;
    json_decref(http_json(f, "GET", "/healthz", NULL, 200));
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", f->id);
    char *body = step_body(2, G2);
    char url[256];
    snprintf(url, sizeof url, "%s%s", f->base, path);
    struct su_resp a, b;
    su_request("POST", url, body, strlen(body), NULL, 0, &a);
    if (a.status != 200)
        fail_msg("step 2: status %ld: %s", a.status, a.body);
    json_t *reply = json_loads(a.body, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(reply, "step")), 2);
    double u[D], want[D], scratch[D];
    update_of(reply, u);
    json_decref(reply);

    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 2, 3, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "gain", 2, NULL), CURV_OK);
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "lr", LR, NULL), CURV_OK);
    curv_opt *ref = tu_new_opt(CURV_OPT_MBAG, l, c);
    curv_error err;
    curv_step_input in1 = {.grad = G1, .len = D, .dtype = CURV_F64};
    curv_step_input in2 = {.grad = G2, .len = D, .dtype = CURV_F64};
    tu_assert_status(curv_opt_step(ref, &in1, scratch, NULL, &err), CURV_OK, &err);
    tu_assert_status(curv_opt_step(ref, &in2, want, NULL, &err), CURV_OK, &err);
    for (int i = 0; i < D; i++)
        if (u[i] != want[i])
            fail_msg("step 2, element %d: http %.17g, libcurv %.17g", i, u[i], want[i]);

    su_request("POST", url, body, strlen(body), NULL, 0, &b);
    assert_int_equal(b.status, 200);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.body, b.body, a.len);
    free(body);
    body = step_body(1, G1);
    json_t *p = http_json(f, "POST", path, body, 409);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "STEP_OUT_OF_ORDER");
    json_t *e0 = json_array_get(json_object_get(p, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e0, "expected")), "3");
    json_decref(p);
    json_decref(http_json(f, "GET", "/readyz", NULL, 200));
    free(body);
    su_resp_free(&a);
    su_resp_free(&b);
    curv_opt_free(ref);
    curv_config_free(c);
    curv_layout_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_input_cases),
        cmocka_unit_test(test_still_steps_like_libcurv),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
