/* SPDX-License-Identifier: MIT */
/*
 * The client's transport: one libcurl easy handle (its connection is kept
 * alive between requests), retries, and problem+json replies turned into
 * curvc_error.
 */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "curvc_int.h"

#include <curl/curl.h>

curvc_status curvc__fail(curvc_error *err, curvc_status st, const char *fmt, ...)
{
    if (err) {
        memset(err, 0, sizeof *err);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->text, sizeof err->text, fmt, ap);
        va_end(ap);
    }
    return st;
}

const char *curvc_status_name(curvc_status st)
{
    static const char *const names[] = {
        "CURVC_OK",        "CURVC_E_PROBLEM", "CURVC_E_TRANSPORT", "CURVC_E_PROTOCOL",
        "CURVC_E_INVALID", "CURVC_E_NOMEM",   "CURVC_E_CALLBACK",  "CURVC_E_STEP_MISMATCH"};
    return (unsigned)st < sizeof names / sizeof names[0] ? names[st] : "CURVC_E_UNKNOWN";
}

static void pause_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Uniform in [0, 1) from xorshift64*: the back-off's jitter needs no more. */
static double xorshift_jitter(curvc_client *c)
{
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return (double)((c->rng * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

curvc_client *curvc_client_new(const char *url, const char *token)
{
    if (!url || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    curvc_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t n = strlen(url);
    while (n && url[n - 1] == '/')
        n--;
    c->base = malloc(n + 1);
    c->curl = curl_easy_init();
    if (token) {
        size_t k = strlen(token) + 32;
        c->auth = malloc(k);
        if (c->auth)
            snprintf(c->auth, k, "Authorization: Bearer %s", token);
    }
    if (!c->base || !c->curl || (token && !c->auth)) {
        curvc_client_free(c);
        return NULL;
    }
    memcpy(c->base, url, n);
    c->base[n] = '\0';
    c->retries = UINT_MAX;
    c->first_wait = 0.1;
    c->max_wait = 5;
    c->budget = 30;
    c->timeout = 120;
    c->clock = monotonic_s;
    c->sleep = pause_s;
    c->jitter = xorshift_jitter;
    c->rng = (uint64_t)(monotonic_s() * 1e9) ^ (uint64_t)(uintptr_t)c ^ 0x9e3779b97f4a7c15ULL;
    return c;
}

void curvc_client_free(curvc_client *c)
{
    if (!c)
        return;
    if (c->curl)
        curl_easy_cleanup(c->curl);
    free(c->base);
    free(c->auth);
    free(c);
}

void curvc_client_set_retries(curvc_client *c, unsigned retries, double first_wait_s)
{
    if (c) {
        c->retries = retries;
        c->first_wait = first_wait_s > 0 ? first_wait_s : 0;
    }
}

void curvc_client_set_retry_budget(curvc_client *c, double budget_s, double max_wait_s)
{
    if (c) {
        c->budget = budget_s > 0 ? budget_s : 0;
        if (max_wait_s > 0)
            c->max_wait = max_wait_s;
    }
}

void curvc_client_set_timeout(curvc_client *c, long seconds)
{
    if (c && seconds > 0)
        c->timeout = seconds;
}

unsigned long curvc_client_requests(const curvc_client *c)
{
    return c ? c->requests : 0;
}

/* ---- buffers ------------------------------------------------------------ */

void curvc__buf_add(struct curvc_buf *b, const void *data, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void curvc__buf_cat(struct curvc_buf *b, const char *s)
{
    curvc__buf_add(b, s, strlen(s));
}

void curvc__buf_printf(struct curvc_buf *b, const char *fmt, ...)
{
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
    } else if ((size_t)n < sizeof small) {
        curvc__buf_add(b, small, (size_t)n);
    } else {
        char *big = malloc((size_t)n + 1);
        if (!big) {
            b->oom = 1;
            return;
        }
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        curvc__buf_add(b, big, (size_t)n);
        free(big);
    }
}

void curvc__buf_str(struct curvc_buf *b, const char *s)
{
    curvc__buf_cat(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            curvc__buf_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            curvc__buf_printf(b, "\\u%04x", ch);
        else
            curvc__buf_add(b, s, 1);
    }
    curvc__buf_cat(b, "\"");
}

void curvc__buf_clear(struct curvc_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void curvc__reply_clear(struct curvc_reply *r)
{
    curvc__buf_clear(&r->body);
    memset(r, 0, sizeof *r);
}

/* ---- one transfer ---------------------------------------------------------- */

struct heads {
    size_t json_len;
    int has_json_len;
    double retry_after;
};

static size_t on_body(char *data, size_t sz, size_t n, void *ud)
{
    struct curvc_buf *b = ud;
    curvc__buf_add(b, data, sz * n);
    return b->oom ? 0 : sz * n;
}

static size_t on_header(char *line, size_t sz, size_t n, void *ud)
{
    struct heads *h = ud;
    static const char jh[] = "Inference-Header-Content-Length:", ra[] = "Retry-After:";
    if (sz * n > sizeof jh && strncasecmp(line, jh, sizeof jh - 1) == 0) {
        h->json_len = (size_t)strtoull(line + sizeof jh - 1, NULL, 10);
        h->has_json_len = 1;
    } else if (sz * n > sizeof ra && strncasecmp(line, ra, sizeof ra - 1) == 0) {
        h->retry_after = strtod(line + sizeof ra - 1, NULL);
    }
    return sz * n;
}

static CURLcode transfer(curvc_client *c, const char *method, const char *url, const void *body,
                         size_t len, size_t json_len, struct curvc_reply *out, struct heads *h)
{
    CURL *curl = c->curl;
    struct curl_slist *hdrs = NULL;
    char jh[64];
    curl_easy_reset(curl);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, h);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT, c->timeout);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    hdrs = curl_slist_append(hdrs, "Expect:");
    hdrs = curl_slist_append(hdrs, "Accept: application/json, application/octet-stream");
    if (body) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        hdrs = curl_slist_append(hdrs, json_len ? "Content-Type: application/octet-stream"
                                                : "Content-Type: application/json");
        if (json_len && json_len != CURVC__OCTETS) {
            snprintf(jh, sizeof jh, "Inference-Header-Content-Length: %zu", json_len);
            hdrs = curl_slist_append(hdrs, jh);
        }
    }
    if (c->auth)
        hdrs = curl_slist_append(hdrs, c->auth);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdrs);
    c->requests++;
    CURLcode rc = hdrs ? curl_easy_perform(curl) : CURLE_OUT_OF_MEMORY;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(hdrs);
    return rc;
}

static void copy_str(char *dst, size_t cap, const json_t *v)
{
    const char *s = json_string_value(v);
    snprintf(dst, cap, "%s", s ? s : "");
}

/* Fill @err from a problem+json reply (whatever its body holds). */
static void problem_error(const struct curvc_reply *r, curvc_error *err)
{
    memset(err, 0, sizeof *err);
    err->status = (int)r->status;
    json_t *p = json_loadb(r->body.p ? r->body.p : "", r->body.len, 0, NULL);
    if (json_is_object(p)) {
        copy_str(err->reason, sizeof err->reason, json_object_get(p, "reason"));
        copy_str(err->type, sizeof err->type, json_object_get(p, "type"));
        copy_str(err->title, sizeof err->title, json_object_get(p, "title"));
        copy_str(err->detail, sizeof err->detail, json_object_get(p, "detail"));
        json_t *errs = json_object_get(p, "errors");
        err->n_fields = json_array_size(errs);
        json_t *f = json_array_get(errs, 0);
        copy_str(err->field.path, sizeof err->field.path, json_object_get(f, "path"));
        copy_str(err->field.expected, sizeof err->field.expected, json_object_get(f, "expected"));
        copy_str(err->field.got, sizeof err->field.got, json_object_get(f, "got"));
    } else {
        snprintf(err->detail, sizeof err->detail, "%.200s", r->body.p ? r->body.p : "");
    }
    json_decref(p);
    int n = snprintf(err->text, sizeof err->text, "%d %s: %s", err->status,
                     err->reason[0] ? err->reason : "error", err->detail);
    if (err->n_fields && n > 0 && (size_t)n < sizeof err->text)
        snprintf(err->text + n, sizeof err->text - (size_t)n, " [%s: expected %s, got %s]",
                 err->field.path, err->field.expected, err->field.got);
}

/* "host:port" of a base URL "http://host:port". */
static const char *host_of(const char *base)
{
    const char *p = strstr(base, "://");
    return p ? p + 3 : base;
}

/* The sleep before try @attempt + 2, or -1 when the retries or the budget
 * (counted from @start) are spent: full jitter over the exponential
 * back-off, at least @retry_after (when >= 0, capped), never past the
 * budget. */
static double backoff(curvc_client *c, unsigned attempt, double retry_after, double start)
{
    double left = start + c->budget - c->clock();
    if (attempt >= c->retries || left <= 0)
        return -1;
    double cap = c->first_wait * ldexp(1.0, attempt < 60 ? (int)attempt : 60);
    cap = cap < c->max_wait ? cap : c->max_wait;
    double wait = c->jitter(c) * cap;
    if (retry_after >= 0) {
        double ra = retry_after < c->max_wait ? retry_after : c->max_wait;
        wait = wait > ra ? wait : ra;
    }
    return wait < left ? wait : left;
}

curvc_status curvc__request(curvc_client *c, const char *method, const char *path, const void *body,
                            size_t len, size_t json_len, int idempotent, struct curvc_reply *out,
                            curvc_error *err)
{
    curvc_error local;
    err = err ? err : &local; /* the reason decides whether to retry */
    size_t n = strlen(c->base) + strlen(path) + 1;
    char *url = malloc(n);
    if (!url)
        return curvc__fail(err, CURVC_E_NOMEM, "out of memory");
    snprintf(url, n, "%s%s", c->base, path);
    curvc_status st = CURVC_E_TRANSPORT;
    const double start = c->clock();
    for (unsigned attempt = 0;; attempt++) {
        struct heads h = {0};
        curvc__reply_clear(out);
        CURLcode rc = transfer(c, method, url, body, len, json_len, out, &h);
        if (rc != CURLE_OK) {
            st = out->body.oom ? CURVC_E_NOMEM : CURVC_E_TRANSPORT;
            /* Not reaching the daemon is safe to retry for any request. */
            double wait = backoff(c, attempt, -1, start);
            if (wait < 0 || out->body.oom || !(idempotent || rc == CURLE_COULDNT_CONNECT)) {
                curvc__fail(err, st, "%s %s: cannot reach %s: %s (after %u tries in %.1f s)",
                            method, path, host_of(c->base), curl_easy_strerror(rc), attempt + 1,
                            c->clock() - start);
                break;
            }
            c->sleep(wait);
            continue;
        }
        out->json_len = h.has_json_len && h.json_len <= out->body.len ? h.json_len : out->body.len;
        if (out->status < 400) {
            st = CURVC_OK;
            break;
        }
        problem_error(out, err);
        st = strcmp(err->reason, "STEP_MISMATCH") == 0 ? CURVC_E_STEP_MISMATCH : CURVC_E_PROBLEM;
        /* curvd never answers 502 or 504: a proxy (HAProxy, deploy/) lost
         * the daemon after the request went out, which may have applied
         * it: repeated like a transfer that failed past sending. */
        int proxy_lost = (out->status == 502 || out->status == 504) && idempotent;
        int busy =
            out->status == 503 || proxy_lost || (curvc__reason_does(err->reason) & CURVC__RETRY);
        double wait = busy ? backoff(c, attempt, h.retry_after, start) : -1;
        if (wait < 0) {
            size_t n0 = strlen(err->text);
            snprintf(err->text + n0, sizeof err->text - n0, " (from %s)", host_of(c->base));
            break;
        }
        c->sleep(wait);
    }
    free(url);
    if (st != CURVC_OK)
        curvc__reply_clear(out);
    return st;
}

curvc_status curvc__parse(const struct curvc_reply *r, json_t **root, curvc_error *err)
{
    json_error_t je;
    *root = json_loadb(r->body.p ? r->body.p : "", r->json_len, 0, &je);
    if (!*root)
        return curvc__fail(err, CURVC_E_PROTOCOL, "unreadable reply (%ld): %s", r->status, je.text);
    return CURVC_OK;
}
