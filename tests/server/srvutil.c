/* SPDX-License-Identifier: MIT */
#include "srvutil.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "daemon.h"
#include "http/http.h"
#include "testutil.h"

void su_start(struct curvd_server *srv, char *base, size_t cap)
{
    if (!srv->cfg.listen)
        srv->cfg.listen = "127.0.0.1";
    if (!srv->cfg.threads)
        srv->cfg.threads = 2;
    if (!srv->cfg.workers) /* heavy routes go through the worker pool */
        srv->cfg.workers = 2;
    else if (srv->cfg.workers == SU_NO_WORKERS)
        srv->cfg.workers = 0;
    if (!srv->cfg.snapshot_log_pct && !srv->cfg.snapshot_ms) { /* the daemon's defaults */
        srv->cfg.snapshot_log_pct = 100;
        srv->cfg.snapshot_ms = 2000;
    } else if (srv->cfg.snapshot_log_pct == SU_EVERY_STEP_A_SNAPSHOT) {
        srv->cfg.snapshot_log_pct = 0;
    }
    srv->cfg.quiet = getenv("CURVD_TEST_LOG") == NULL;
    if (!srv->cfg.max_body)
        srv->cfg.max_body = 1 << 20;
    char err[256];
    if (curvd_http_start(srv, err, sizeof err) != 0)
        fail_msg("cannot start the daemon: %s", err);
    snprintf(base, cap, "http://127.0.0.1:%u", curvd_http_port(srv));
}

void su_stop(struct curvd_server *srv)
{
    curvd_http_stop(srv);
}

void su_daemon_start(struct curvd_server *srv, char *base, size_t cap)
{
    char err[256];
    if (!srv->cfg.log_file_min) /* the daemon's default; 1 puts every record in a file */
        srv->cfg.log_file_min = CURVD_STORE_LOG_FILE_MIN_DEFAULT;
    if (curvd_daemon_open(srv, err, sizeof err) != 0)
        fail_msg("daemon_open: %s", err);
    su_start(srv, base, cap);
}

void su_daemon_stop(struct curvd_server *srv)
{
    su_stop(srv);
    curvd_daemon_close(srv);
}

void su_tmpdir(char *dir, size_t dir_cap, const char *root, const char *tag, char *db,
               size_t db_cap)
{
    snprintf(dir, dir_cap, "%s/curvd-%s-XXXXXX", root ? root : "/tmp", tag);
    assert_non_null(mkdtemp(dir));
    snprintf(db, db_cap, "%s/curvd.db", dir);
}

int su_rmtree(const char *dir)
{
    char cmd[1100];
    int n = snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_true(n > 0 && (size_t)n < sizeof cmd);
    return system(cmd);
}

int su_raw_connect(unsigned port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

double su_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int su_raw_read(int fd, char *buf, size_t cap, size_t *len, const char *until, int timeout_ms)
{
    assert_true(cap > 0);
    double deadline = su_now_s() + timeout_ms / 1e3;
    *len = 0;
    buf[0] = 0;
    for (;;) {
        if (until && strstr(buf, until))
            return 1;
        int left = (int)((deadline - su_now_s()) * 1e3);
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pf, 1, left) == 0)
            return -1;
        ssize_t k = recv(fd, buf + *len, cap - 1 - *len, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) /* the end, or a reset */
            return 0;
        *len += (size_t)k;
        buf[*len] = 0;
        assert_true(*len < cap - 1); /* the caller's buffer holds every reply it expects */
    }
}

char *su_read_text(const char *path)
{
    FILE *in = fopen(path, "rb");
    assert_non_null(in);
    size_t cap = 1 << 16, n = 0;
    char *text = malloc(cap);
    for (size_t k; (k = fread(text + n, 1, cap - 1 - n, in)) > 0;)
        if ((n += k) == cap - 1)
            text = realloc(text, cap *= 2);
    fclose(in);
    text[n] = '\0';
    return text;
}

int su_count(const char *hay, const char *needle)
{
    int k = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
        k++;
    return k;
}

void su_raw_exec(const char *path, const char *sql)
{
    if (curvd_store_is_postgres(path)) {
        su_pg_raw_exec(path, sql);
        return;
    }
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK)
        print_error("%s: %s\n", sql, msg);
    sqlite3_free(msg);
    assert_int_equal(rc, SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

sqlite3_stmt *su_raw_prepare(const char *path, const char *sql, sqlite3 **db)
{
    sqlite3_stmt *q = NULL;
    *db = NULL;
    assert_int_equal(sqlite3_open(path, db), SQLITE_OK);
    int rc = sqlite3_prepare_v2(*db, sql, -1, &q, NULL);
    if (rc != SQLITE_OK)
        print_error("%s: %s\n", sql, sqlite3_errmsg(*db));
    assert_int_equal(rc, SQLITE_OK);
    return q;
}

void su_raw_text(const char *path, const char *sql, char *out, size_t cap)
{
    if (curvd_store_is_postgres(path)) {
        su_pg_raw_text(path, sql, out, cap);
        return;
    }
    sqlite3 *db;
    sqlite3_stmt *q = su_raw_prepare(path, sql, &db);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    const unsigned char *t = sqlite3_column_text(q, 0);
    snprintf(out, cap, "%s", t ? (const char *)t : "");
    assert_int_equal(sqlite3_finalize(q), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

long long su_raw_int(const char *path, const char *sql)
{
    char buf[64];
    su_raw_text(path, sql, buf, sizeof buf);
    return atoll(buf);
}

unsigned char *su_raw_state(const char *path, const char *id, size_t *len)
{
    if (curvd_store_is_postgres(path))
        return su_pg_raw_state(path, id, len);
    sqlite3 *db;
    sqlite3_stmt *q = su_raw_prepare(
        path, "SELECT idx, bytes FROM state_parts WHERE session_id = ? ORDER BY idx", &db);
    assert_int_equal(sqlite3_bind_text(q, 1, id, -1, SQLITE_STATIC), SQLITE_OK);
    unsigned char *buf = NULL;
    size_t n = 0;
    int rc;
    for (long long k = 0; (rc = sqlite3_step(q)) == SQLITE_ROW; k++) {
        assert_int_equal(sqlite3_column_int64(q, 0), k);
        size_t m = (size_t)sqlite3_column_bytes(q, 1);
        unsigned char *grown = realloc(buf, n + m);
        assert_non_null(grown);
        buf = grown;
        memcpy(buf + n, sqlite3_column_blob(q, 1), m);
        n += m;
    }
    assert_int_equal(rc, SQLITE_DONE);
    assert_int_equal(sqlite3_finalize(q), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    *len = n;
    return buf;
}

static const char *bearer; /* token sent with every request, or NULL */
static long timeout_s = 30;

void su_set_token(const char *token)
{
    bearer = token;
}

void su_set_timeout(long seconds)
{
    timeout_s = seconds;
}

struct sink {
    char *p;
    size_t len;
};

/* No cmocka from here to transfer(): any thread may send a request. */

static size_t on_body(char *data, size_t sz, size_t n, void *ud)
{
    struct sink *s = ud;
    char *np = realloc(s->p, s->len + sz * n + 1);
    if (!np)
        return 0; /* ends the transfer with an error */
    memcpy(np + s->len, data, sz * n);
    s->p = np;
    s->len += sz * n;
    s->p[s->len] = '\0';
    return sz * n;
}

static void copy_header(const char *line, size_t n, const char *name, char *dst, size_t cap)
{
    size_t k = strlen(name);
    if (n <= k + 1 || strncasecmp(line, name, k) != 0 || line[k] != ':')
        return;
    const char *v = line + k + 1;
    while (*v == ' ')
        v++;
    size_t len = (size_t)(line + n - v);
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n'))
        len--;
    snprintf(dst, cap, "%.*s", (int)len, v);
}

static size_t on_header(char *line, size_t sz, size_t n, void *ud)
{
    struct su_resp *r = ud;
    copy_header(line, sz * n, "Content-Type", r->content_type, sizeof r->content_type);
    copy_header(line, sz * n, "Location", r->location, sizeof r->location);
    copy_header(line, sz * n, "ETag", r->etag, sizeof r->etag);
    copy_header(line, sz * n, "Server-Timing", r->server_timing, sizeof r->server_timing);
    copy_header(line, sz * n, "X-Request-Id", r->request_id, sizeof r->request_id);
    copy_header(line, sz * n, "Retry-After", r->retry_after, sizeof r->retry_after);
    char jh[32] = "";
    copy_header(line, sz * n, "Inference-Header-Content-Length", jh, sizeof jh);
    if (jh[0])
        r->json_header_len = (size_t)strtoull(jh, NULL, 10);
    return sz * n;
}

struct source {
    const char *p;
    size_t left;
};

static size_t on_read(char *buf, size_t sz, size_t n, void *ud)
{
    struct source *s = ud;
    size_t k = sz * n < s->left ? sz * n : s->left;
    memcpy(buf, s->p, k);
    s->p += k;
    s->left -= k;
    return k;
}

/* One transfer; @out->body is allocated whatever happens. */
static CURLcode transfer(const char *method, const char *url, const void *body, size_t len,
                         const char *ctype, int chunked, const char *const *headers,
                         struct su_resp *out)
{
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    if (!c) {
        out->body = calloc(1, 1);
        return CURLE_FAILED_INIT;
    }
    struct sink sink = {0};
    struct source src = {body, len};
    struct curl_slist *hdrs = NULL;
    char ct[160];
    snprintf(ct, sizeof ct, "Content-Type: %s", ctype ? ctype : "application/json");
    hdrs = curl_slist_append(hdrs, ct);
    hdrs = curl_slist_append(hdrs, "Expect:");
    for (size_t i = 0; headers && headers[i]; i++)
        hdrs = curl_slist_append(hdrs, headers[i]);
    char auth[320];
    if (bearer) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", bearer);
        hdrs = curl_slist_append(hdrs, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, &src);
        if (chunked)
            hdrs = curl_slist_append(hdrs, "Transfer-Encoding: chunked");
        else
            curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)len);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    out->body = sink.p ? sink.p : calloc(1, 1);
    out->len = sink.len;
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return rc;
}

CURLcode su_try_request(const char *method, const char *url, const char *body, struct su_resp *out)
{
    return transfer(method, url, body, body ? strlen(body) : 0, NULL, 0, NULL, out);
}

void su_request(const char *method, const char *url, const void *body, size_t len,
                const char *ctype, int chunked, struct su_resp *out)
{
    su_request_h(method, url, body, len, ctype, chunked, NULL, out);
}

void su_request_h(const char *method, const char *url, const void *body, size_t len,
                  const char *ctype, int chunked, const char *const *headers, struct su_resp *out)
{
    CURLcode rc = transfer(method, url, body, len, ctype, chunked, headers, out);
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method, url, curl_easy_strerror(rc));
    assert_non_null(out->body);
}

void su_resp_free(struct su_resp *r)
{
    free(r->body);
    r->body = NULL;
}

json_t *su_json(const char *text, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!j && strstr(je.text, "duplicate"))
        fail_msg("a reply with a member twice: %s: %.*s", je.text, (int)len, text);
    return j;
}

json_t *su_call(const char *base, const char *method, const char *path, const char *body, long want,
                struct su_resp *raw)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct su_resp r;
    su_request(method, url, body, body ? strlen(body) : 0, NULL, 0, &r);
    if (r.status != want)
        fail_msg("%s %s: status %ld, want %ld: %s", method, path, r.status, want, r.body);
    json_t *j = r.len ? su_json(r.body, r.len) : NULL;
    if (raw)
        *raw = r;
    else
        su_resp_free(&r);
    return j;
}

json_t *su_create(const char *base, const char *optimizer, json_t *config, long want, char id[33],
                  struct su_resp *raw)
{
    json_t *req = json_pack("{s:s, s:o}", "optimizer", optimizer, "layout", su_layout_json());
    assert_non_null(req);
    if (config)
        json_object_set_new(req, "config", config);
    char *text = json_dumps(req, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(req);
    json_t *j = su_call(base, "POST", "/v1/sessions", text, want, raw);
    free(text);
    const char *got = want == 201 ? json_string_value(json_object_get(j, "id")) : NULL;
    snprintf(id, 33, "%s", got ? got : "");
    return j;
}

long su_session_step(const char *base, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_t *j = su_call(base, "GET", path, NULL, 200, NULL);
    long step = (long)json_integer_value(json_object_get(j, "step"));
    json_decref(j);
    return step;
}

unsigned char *su_export_state(const char *base, const char *id, size_t *len,
                               const char *want_ctype)
{
    char url[256];
    snprintf(url, sizeof url, "%s/v1/sessions/%s/state", base, id);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    if (r.status != 200)
        fail_msg("export %s: status %ld: %s", id, r.status, r.body);
    if (want_ctype)
        assert_string_equal(r.content_type, want_ctype);
    *len = r.len;
    return (unsigned char *)r.body;
}

/* ---- The test layout ---- */

json_t *su_layout_json(void)
{
    return json_pack("[{s:s, s:s, s:[i,i], s:b}, {s:s, s:s, s:[i]}]", "name", "fc", "kind", "dense",
                     "shape", 2, 4, "bias", 1, "name", "gain", "kind", "vector", "shape", 1);
}

curv_layout *su_layout_new(void)
{
    curv_layout *l = curv_layout_new();
    assert_int_equal(curv_layout_add_dense(l, "fc", 2, 4, 1, NULL), CURV_OK);
    assert_int_equal(curv_layout_add_vector(l, "gain", 1, NULL), CURV_OK);
    return l;
}

void su_grad(long t, double phase, double g[SU_D])
{
    for (int i = 0; i < SU_D; i++)
        g[i] = sin(0.37 * (double)(t * SU_D + i) + phase) * (1 + i % 3);
}

json_t *su_tensor(const char *name, json_t *shape, const double *v, size_t n)
{
    json_t *data = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(data, json_real(v[i]));
    return json_pack("{s:s, s:o, s:s, s:o}", "name", name, "shape", shape, "datatype", "FP64",
                     "data", data);
}

json_t *su_step_json(long t, const double *g, int gain_first)
{
    json_t *fc = su_tensor("fc", json_pack("[i,i]", 2, 5), g, 10);
    json_t *gain = su_tensor("gain", json_pack("[i]", 1), g + 10, 1);
    return json_pack("{s:I, s:[o,o]}", "step", (json_int_t)t, "gradients", gain_first ? gain : fc,
                     gain_first ? fc : gain);
}

char *su_step_text(long t, const double *g, int gain_first)
{
    json_t *b = su_step_json(t, g, gain_first);
    char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(b);
    return text;
}

int su_update_of(const char *body, long t, double u[SU_D])
{
    json_t *j = json_loads(body, 0, NULL), *tn;
    int got = 0, ok = json_integer_value(json_object_get(j, "step")) == t;
    size_t k;
    json_array_foreach(json_object_get(j, "update"), k, tn)
    {
        const char *name = json_string_value(json_object_get(tn, "name"));
        json_t *data = json_object_get(tn, "data");
        size_t off = name && strcmp(name, "gain") == 0 ? 10 : 0, n = off ? 1 : 10;
        ok = ok && json_array_size(data) == n;
        for (size_t i = 0; ok && i < n; i++)
            u[off + i] = json_number_value(json_array_get(data, i));
        got += (int)n;
    }
    json_decref(j);
    return ok && got == SU_D ? 0 : -1;
}

void su_check_update(curv_opt *ref, const double *g, const double *u, const char *what)
{
    double want[SU_D];
    tu_step_ok(ref, g, NULL, want);
    for (int i = 0; i < SU_D; i++)
        if (memcmp(&u[i], &want[i], sizeof want[i]) != 0)
            fail_msg("%s, element %d: daemon %.17g, libcurv %.17g", what, i, u[i], want[i]);
}

/* ---- Playing the trainer of a callback exchange ---- */

static void fx_open(struct su_fx *f)
{
    memset(&f->srv, 0, sizeof f->srv);
    f->srv.cfg.db_path = f->db;
    f->srv.cfg.max_sessions = 100;
    f->srv.cfg.mem_budget = (size_t)1 << 30;
    su_daemon_start(&f->srv, f->base, sizeof f->base);
}

struct su_fx *su_fx_new(const char *tag)
{
    struct su_fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, tag, f->db, sizeof f->db);
    fx_open(f);
    return f;
}

void su_fx_restart(struct su_fx *f)
{
    su_daemon_stop(&f->srv);
    fx_open(f);
}

void su_fx_free(struct su_fx *f)
{
    su_daemon_stop(&f->srv);
    assert_int_equal(su_rmtree(f->dir), 0);
    free(f);
}

void su_body_free(struct su_body *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

static void body_put(struct su_body *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = 2 * (b->len + n) + 64;
        unsigned char *np = malloc(cap);
        assert_non_null(np);
        if (b->len)
            memcpy(np, b->p, b->len);
        free(b->p);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* The JSON text @j (stolen) then, with the binary extension, @tail. */
static void body_of(json_t *j, const struct su_body *tail, int binary, struct su_body *out)
{
    char *text = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(j);
    assert_non_null(text);
    memset(out, 0, sizeof *out);
    body_put(out, text, strlen(text));
    free(text);
    if (binary) {
        out->json_len = out->len;
        if (tail->len)
            body_put(out, tail->p, tail->len);
    }
}

json_t *su_layout_json_of(const curv_layout *l)
{
    static const char *const kinds[] = {"dense", "conv2d", "vector"};
    json_t *arr = json_array();
    curv_block_info b;
    for (size_t k = 0; curv_layout_block(l, k, &b) == CURV_OK; k++) {
        json_t *shape = b.kind == CURV_BLOCK_DENSE ? json_pack("[I,I]", b.n_out, b.n_in)
                        : b.kind == CURV_BLOCK_VECTOR
                            ? json_pack("[I]", b.n_out)
                            : json_pack("[I,I,I,I]", b.n_out, b.c_in, b.kh, b.kw);
        json_t *blk =
            json_pack("{s:s, s:s, s:o}", "name", b.name, "kind", kinds[b.kind], "shape", shape);
        if (b.kind != CURV_BLOCK_VECTOR)
            json_object_set_new(blk, "bias", json_boolean(b.has_bias));
        json_array_append_new(arr, blk);
    }
    return arr;
}

static json_t *block_shape(const curv_block_info *b)
{
    return b->kind == CURV_BLOCK_VECTOR ? json_pack("[I]", b->size)
                                        : json_pack("[I,I]", b->rows, b->cols);
}

json_t *su_tensors_json(const curv_layout *l, const double *v, int fp32, struct su_body *tail)
{
    json_t *arr = json_array();
    curv_block_info b;
    for (size_t k = 0; curv_layout_block(l, k, &b) == CURV_OK; k++) {
        json_t *t = json_pack("{s:s, s:o, s:s}", "name", b.name, "shape", block_shape(&b),
                              "datatype", fp32 ? "FP32" : "FP64");
        json_t *data = tail ? NULL : json_array();
        for (size_t i = 0; i < b.size; i++) {
            double x = fp32 ? (double)(float)v[b.offset + i] : v[b.offset + i];
            unsigned char le[8];
            if (!tail) {
                json_array_append_new(data, json_real(x));
            } else if (fp32) {
                float xf = (float)x;
                uint32_t u;
                memcpy(&u, &xf, 4);
                tu_put_le(le, u, 4);
                body_put(tail, le, 4);
            } else {
                uint64_t u;
                memcpy(&u, &x, 8);
                tu_put_le(le, u, 8);
                body_put(tail, le, 8);
            }
        }
        if (tail)
            json_object_set_new(
                t, "parameters",
                json_pack("{s:I}", "binary_data_size", (json_int_t)(b.size * (fp32 ? 4 : 8))));
        else
            json_object_set_new(t, "data", data);
        json_array_append_new(arr, t);
    }
    return arr;
}

/* Numbers of @v, flat or nested, into @out from *@k on (at most @n). */
static void flatten(const json_t *v, double *out, size_t n, size_t *k)
{
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            flatten(json_array_get(v, i), out, n, k);
        return;
    }
    assert_true(json_is_number(v));
    if (*k < n)
        out[*k] = json_number_value(v);
    (*k)++;
}

void su_tensors_flat(const curv_layout *l, const json_t *arr, const struct su_resp *r, size_t *off,
                     double *out)
{
    size_t nb = curv_layout_nblocks(l), seen = 0; /* a bit per block */
    assert_true(nb < 64 && json_is_array(arr));
    assert_int_equal(json_array_size(arr), nb);
    for (size_t k = 0; k < nb; k++) {
        const json_t *t = json_array_get(arr, k);
        const char *name = json_string_value(json_object_get(t, "name"));
        long bi = name ? curv_layout_find(l, name) : -1;
        if (bi < 0)
            fail_msg("tensor %zu: no block named %s", k, name ? name : "(none)");
        seen |= (size_t)1 << bi;
        curv_block_info b;
        assert_int_equal(curv_layout_block(l, (size_t)bi, &b), CURV_OK);
        json_t *want_shape = block_shape(&b);
        assert_true(json_equal(json_object_get(t, "shape"), want_shape));
        json_decref(want_shape);
        const char *dt = json_string_value(json_object_get(t, "datatype"));
        assert_non_null(dt);
        int fp32 = strcmp(dt, "FP32") == 0;
        assert_true(fp32 || strcmp(dt, "FP64") == 0);
        const json_t *data = json_object_get(t, "data");
        double *dst = out + b.offset;
        if (data) {
            size_t got = 0;
            flatten(data, dst, b.size, &got);
            assert_int_equal(got, b.size);
            for (size_t i = 0; fp32 && i < b.size; i++)
                dst[i] = (float)dst[i]; /* FP32 numbers are printed to 9 digits */
            continue;
        }
        size_t esz = fp32 ? 4 : 8, bytes = b.size * esz;
        const json_t *bds = json_object_get(json_object_get(t, "parameters"), "binary_data_size");
        assert_int_equal(json_integer_value(bds), bytes);
        assert_true(r->json_header_len > 0 && r->json_header_len + *off + bytes <= r->len);
        const unsigned char *p = (const unsigned char *)r->body + r->json_header_len + *off;
        for (size_t i = 0; i < b.size; i++) {
            uint64_t u = tu_get_le(p + i * esz, (unsigned)esz);
            if (fp32) {
                uint32_t u32 = (uint32_t)u;
                float x;
                memcpy(&x, &u32, 4);
                dst[i] = x;
            } else {
                memcpy(&dst[i], &u, 8);
            }
        }
        *off += bytes;
    }
    assert_int_equal(seen, ((size_t)1 << nb) - 1); /* every block once */
}

void su_callback_clear(struct su_callback *cb)
{
    free((void *)cb->req.vectors);
    memset(cb, 0, sizeof *cb);
}

void su_trainer_create(struct su_trainer *tr, const char *optimizer, json_t *config)
{
    json_t *req =
        json_pack("{s:s, s:o}", "optimizer", optimizer, "layout", su_layout_json_of(tr->layout));
    if (config)
        json_object_set_new(req, "config", config);
    char *text = json_dumps(req, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(req);
    json_t *s = su_call(tr->base, "POST", "/v1/sessions", text, 201, NULL);
    free(text);
    snprintf(tr->id, sizeof tr->id, "%s", json_string_value(json_object_get(s, "id")));
    json_decref(s);
    assert_int_equal(strlen(tr->id), 32);
}

void su_step_body(const struct su_trainer *tr, const struct su_step *s, struct su_body *out)
{
    struct su_body tail = {0};
    struct su_body *tp = tr->binary ? &tail : NULL;
    json_t *j = json_pack("{s:I, s:o}", "step", (json_int_t)s->t, "gradients",
                          su_tensors_json(tr->layout, s->grad, tr->fp32, tp));
    if (s->params)
        json_object_set_new(j, "params", su_tensors_json(tr->layout, s->params, tr->fp32, tp));
    if (s->grad_sq)
        json_object_set_new(j, "grad_sq", su_tensors_json(tr->layout, s->grad_sq, tr->fp32, tp));
    json_object_set_new(j, "loss", json_real(s->loss));
    if (s->layers)
        json_object_set(j, "layers", s->layers);
    body_of(j, &tail, tr->binary, out);
    su_body_free(&tail);
}

void su_post_body(const struct su_trainer *tr, const char *path, const struct su_body *b,
                  struct su_resp *out)
{
    char url[512], hl[64];
    snprintf(url, sizeof url, "%s%s", tr->base, path);
    snprintf(hl, sizeof hl, "Inference-Header-Content-Length: %zu", b->json_len);
    const char *hdrs[] = {hl, NULL};
    su_request_h("POST", url, b->p, b->len, b->json_len ? "application/octet-stream" : NULL, 0,
                 b->json_len ? hdrs : NULL, out);
}

void su_callback_parse(const struct su_trainer *tr, const struct su_resp *r, long t,
                       struct su_callback *cb)
{
    static const char *const kinds[] = {"", "curvature_product", "loss", "quadratic_form"};
    memset(cb, 0, sizeof *cb);
    assert_int_equal(r->status, 202);
    json_t *j = su_json(r->body, r->json_header_len ? r->json_header_len : r->len);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "step")), t);
    json_t *c = json_object_get(j, "callback"), *vecs = json_object_get(c, "vectors");
    const char *id = json_string_value(json_object_get(c, "id"));
    const char *kind = json_string_value(json_object_get(c, "kind"));
    const char *url = json_string_value(json_object_get(c, "url"));
    assert_true(id && kind && url && json_is_array(vecs));
    char want[256];
    snprintf(want, sizeof want, "/v1/sessions/%s/steps/%ld/callbacks/%s", tr->id, t, id);
    assert_string_equal(url, want);
    assert_string_equal(r->location, url);
    snprintf(cb->url, sizeof cb->url, "%s", url);
    cb->step = t;
    size_t dim = curv_layout_dim(tr->layout), n = json_array_size(vecs);
    cb->req = (curv_request){.seq = strtoull(id, NULL, 10), .n_vectors = n, .dim = dim};
    for (int k = 1; k <= 3; k++)
        if (strcmp(kind, kinds[k]) == 0)
            cb->req.kind = (curv_request_kind)k;
    cb->req.n_values = cb->req.kind == CURV_REQ_CURVATURE_PRODUCT ? n * dim
                       : cb->req.kind == CURV_REQ_LOSS            ? n
                                                                  : n * n;
    assert_true(cb->req.kind != CURV_REQ_NONE && n > 0);
    assert_int_equal(json_integer_value(json_object_get(c, "answer_values")), cb->req.n_values);
    double *v = calloc(n * dim, sizeof *v);
    assert_non_null(v);
    size_t off = 0;
    for (size_t i = 0; i < n; i++)
        su_tensors_flat(tr->layout, json_array_get(vecs, i), r, &off, v + i * dim);
    assert_int_equal(r->json_header_len + off, r->json_header_len ? r->len : 0);
    cb->req.vectors = v;
    json_decref(j);
}

void su_answer_body(const struct su_trainer *tr, const curv_request *req, const double *values,
                    struct su_body *out)
{
    struct su_body tail = {0};
    json_t *j;
    if (req->kind == CURV_REQ_CURVATURE_PRODUCT) {
        json_t *prods = json_array();
        for (size_t i = 0; i < req->n_vectors; i++)
            json_array_append_new(prods, su_tensors_json(tr->layout, values + i * req->dim,
                                                         tr->fp32, tr->binary ? &tail : NULL));
        j = json_pack("{s:o}", "products", prods);
    } else {
        json_t *nums = json_array();
        for (size_t i = 0; i < req->n_values; i++)
            json_array_append_new(nums, json_real(values[i]));
        j = json_pack("{s:o}", req->kind == CURV_REQ_LOSS ? "losses" : "gram", nums);
    }
    body_of(j, &tail, tr->binary && req->kind == CURV_REQ_CURVATURE_PRODUCT, out);
    su_body_free(&tail);
}

size_t su_trainer_step(struct su_trainer *tr, const struct su_step *s, tu_answer_fn answer,
                       void *ctx, double *u)
{
    char path[160];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", tr->id);
    struct su_body body;
    struct su_resp r;
    su_step_body(tr, s, &body);
    su_post_body(tr, path, &body, &r);
    su_body_free(&body);
    tr->first_url[0] = '\0';
    struct su_callback cb = {0};
    struct su_body good = {0};
    size_t n = 0;
    while (r.status == 202) {
        su_callback_clear(&cb);
        su_body_free(&good);
        su_callback_parse(tr, &r, s->t, &cb);
        su_resp_free(&r);
        if (!n)
            snprintf(tr->first_url, sizeof tr->first_url, "%s", cb.url);
        double *vals = calloc(cb.req.n_values, sizeof *vals);
        assert_non_null(vals);
        answer(ctx, &cb.req, vals);
        su_answer_body(tr, &cb.req, vals, &good);
        free(vals);
        if (tr->hook)
            tr->hook(tr, SU_BEFORE_ANSWER, &cb, &good, NULL);
        su_post_body(tr, cb.url, &good, &r);
        if (r.status == 200 || r.status == 202)
            tr->answers++, n++;
        if (tr->hook)
            tr->hook(tr, SU_ANSWERED, &cb, &good, &r);
    }
    if (r.status != 200)
        fail_msg("step %ld: status %ld: %.*s", s->t, r.status, (int)r.len, r.body);
    json_t *j = su_json(r.body, r.json_header_len ? r.json_header_len : r.len);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "step")), s->t);
    size_t off = 0;
    su_tensors_flat(tr->layout, json_object_get(j, "update"), &r, &off, u);
    json_decref(j);
    if (tr->hook)
        tr->hook(tr, SU_STEP_DONE, n ? &cb : NULL, n ? &good : NULL, &r);
    su_resp_free(&r);
    su_callback_clear(&cb);
    su_body_free(&good);
    return n;
}

/* ---- K-FAC statistics of a test MLP ---- */

static json_t *matrix_json(const char *name, const double *v, size_t rows, size_t cols)
{
    json_t *data = json_array();
    for (size_t i = 0; i < rows * cols; i++)
        json_array_append_new(data, json_real(v[i]));
    return json_pack("{s:s, s:[I,I], s:s, s:o}", "name", name, "shape", (json_int_t)rows,
                     (json_int_t)cols, "datatype", "FP64", "data", data);
}

json_t *su_mlp_layers(const tu_mlp *net)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < net->L; i++) {
        char block[24];
        snprintf(block, sizeof block, "l%zu", i);
        json_array_append_new(
            arr, json_pack("{s:s, s:o, s:o}", "block", block, "activations",
                           matrix_json("acts", net->acts[i], net->m, net->n[i]), "signals",
                           matrix_json("signals", net->sig[i], net->m, net->n[i + 1])));
    }
    return arr;
}
