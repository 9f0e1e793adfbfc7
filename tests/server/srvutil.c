/* SPDX-License-Identifier: MIT */
#include "srvutil.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "daemon.h"
#include "http.h"
#include "testutil.h"

void su_start(struct curvd_server *srv, char *base, size_t cap)
{
    if (!srv->cfg.listen)
        srv->cfg.listen = "127.0.0.1";
    if (!srv->cfg.threads)
        srv->cfg.threads = 2;
    if (!srv->cfg.workers) /* heavy routes go through the worker pool */
        srv->cfg.workers = 2;
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

json_t *su_call(const char *base, const char *method, const char *path, const char *body, long want,
                struct su_resp *raw)
{
    char url[512];
    snprintf(url, sizeof url, "%s%s", base, path);
    struct su_resp r;
    su_request(method, url, body, body ? strlen(body) : 0, NULL, 0, &r);
    if (r.status != want)
        fail_msg("%s %s: status %ld, want %ld: %s", method, path, r.status, want, r.body);
    json_t *j = r.len ? json_loads(r.body, 0, NULL) : NULL;
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
