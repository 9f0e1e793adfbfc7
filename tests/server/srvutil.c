/* SPDX-License-Identifier: MIT */
#include "srvutil.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

static const char *bearer; /* token sent with every request, or NULL */

void su_set_token(const char *token)
{
    bearer = token;
}

struct sink {
    char *p;
    size_t len;
};

static size_t on_body(char *data, size_t sz, size_t n, void *ud)
{
    struct sink *s = ud;
    char *np = realloc(s->p, s->len + sz * n + 1);
    assert_non_null(np);
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

void su_request(const char *method, const char *url, const void *body, size_t len,
                const char *ctype, int chunked, struct su_resp *out)
{
    su_request_h(method, url, body, len, ctype, chunked, NULL, out);
}

void su_request_h(const char *method, const char *url, const void *body, size_t len,
                  const char *ctype, int chunked, const char *const *headers, struct su_resp *out)
{
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    assert_non_null(c);
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
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
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
    if (rc != CURLE_OK)
        fail_msg("%s %s: %s", method, url, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    out->body = sink.p ? sink.p : calloc(1, 1);
    out->len = sink.len;
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
}

void su_resp_free(struct su_resp *r)
{
    free(r->body);
    r->body = NULL;
}
