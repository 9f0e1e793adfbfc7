/* SPDX-License-Identifier: MIT */
/* What both backends share: statuses, states in parts, page tokens, the
 * clock, and the owned copies handed out (store.h, backend.h). */
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "store/backend.h"

/* Indexed by code: the codes are dense from 0. */
static const char *const status_names[] = {
#define CURVD__STORE_NAME(name, code, text) [code] = #name,
    CURVD_STORE_STATUS_MAP(CURVD__STORE_NAME)
#undef CURVD__STORE_NAME
};

const char *curvd_store_status_name(int status)
{
    size_t n = sizeof status_names / sizeof status_names[0];
    return status >= 0 && (size_t)status < n ? status_names[status] : "UNKNOWN";
}

int curvd_store_is_postgres(const char *db)
{
    return db &&
           (strncasecmp(db, "postgresql://", 13) == 0 || strncasecmp(db, "postgres://", 11) == 0);
}

void curvd_store_shown(const char *db, char *out, size_t cap)
{
    const char *scheme = strstr(db, "://"), *at = strchr(db, '@');
    const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
    if (curvd_store_is_postgres(db) && at && colon && colon < at)
        snprintf(out, cap, "%.*s:***%s", (int)(colon - db), db, at);
    else
        snprintf(out, cap, "%s", db);
}

int curvd_store_fail(char *err, size_t errlen, int status, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return status;
}

int curvd_store_no_memory(char *err, size_t errlen)
{
    return curvd_store_fail(err, errlen, CURVD_STORE_ERROR, "out of memory");
}

int64_t curvd_store_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0; /* cannot happen with CLOCK_REALTIME */
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t curvd_stamp_to_db(uint64_t stamp)
{
    int64_t v;
    memcpy(&v, &stamp, sizeof v);
    return v;
}

uint64_t curvd_stamp_from_db(int64_t v)
{
    uint64_t stamp;
    memcpy(&stamp, &v, sizeof stamp);
    return stamp;
}

/* Do @n parts @p tile [0, @len) in order, none empty? No parts (NULL)
 * stand for the blob as one part. */
static int parts_tile(const curv_state_part *p, size_t n, size_t len)
{
    if (!p)
        return n == 0;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i].offset != off || p[i].len == 0 || p[i].len > len - off)
            return 0;
        off += p[i].len;
    }
    return off == len;
}

int curvd_state_valid(const struct curvd_state_in *s)
{
    return s && (s->blob || !s->len) && parts_tile(s->parts, s->n_parts, s->len) &&
           (s->stored || !s->n_stored);
}

size_t curvd_state_part_count(const struct curvd_state_in *s)
{
    return s->parts ? s->n_parts : s->len > 0;
}

curv_state_part curvd_state_part_at(const struct curvd_state_in *s, size_t i)
{
    return s->parts ? s->parts[i] : (curv_state_part){.offset = 0, .len = s->len, .stamp = 0};
}

int curvd_state_same_division(const struct curvd_state_in *s)
{
    size_t n = curvd_state_part_count(s);
    if (!s->stored || s->n_stored != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        curv_state_part p = curvd_state_part_at(s, i);
        if (p.offset != s->stored[i].offset || p.len != s->stored[i].len)
            return 0;
    }
    return 1;
}

int curvd_state_part_changed(const struct curvd_state_in *s, int same, size_t i)
{
    curv_state_part p = curvd_state_part_at(s, i);
    return !(same && p.stamp != 0 && p.stamp == s->stored[i].stamp);
}

/* Known to hold no more parts than now: nothing to delete (this runs on
 * every step, so the statement is worth saving). */
int curvd_state_may_trim(const struct curvd_state_in *s)
{
    return !(s->stored && s->n_stored <= curvd_state_part_count(s));
}

/* A page token is the hex of the last row's key: 16 digits of created_at,
 * then the id's bytes. Hex keeps it safe in a URL without escaping. */
char *curvd_page_token_encode(int64_t created_at, const char *id)
{
    static const char digits[] = "0123456789abcdef";
    size_t n = strlen(id);
    char *t = sqlite3_malloc64(16 + 2 * n + 1);
    if (!t)
        return NULL;
    uint64_t c = (uint64_t)created_at;
    for (int i = 15; i >= 0; i--, c >>= 4)
        t[i] = digits[c & 15];
    for (size_t i = 0; i < n; i++) {
        t[16 + 2 * i] = digits[(unsigned char)id[i] >> 4];
        t[17 + 2 * i] = digits[(unsigned char)id[i] & 15];
    }
    t[16 + 2 * n] = '\0';
    return t;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int curvd_page_token_decode(const char *t, int64_t *created_at, char **id, char *err, size_t errlen)
{
    size_t n = strlen(t);
    int ok = n > 16 && n % 2 == 0;
    for (size_t i = 0; ok && i < n; i++)
        ok = hexval(t[i]) >= 0 && (i < 16 || i % 2 || t[i] != '0' || t[i + 1] != '0');
    if (!ok) /* the last test refuses an id with a NUL byte in it */
        return curvd_store_fail(err, errlen, CURVD_STORE_INVALID, "malformed page_token");
    char *s = sqlite3_malloc64((n - 16) / 2 + 1);
    if (!s)
        return curvd_store_no_memory(err, errlen);
    uint64_t c = 0;
    for (size_t i = 0; i < 16; i++)
        c = c << 4 | (uint64_t)hexval(t[i]);
    for (size_t i = 16; i < n; i += 2)
        s[(i - 16) / 2] = (char)(hexval(t[i]) << 4 | hexval(t[i + 1]));
    s[(n - 16) / 2] = '\0';
    *created_at = (int64_t)c;
    *id = s;
    return CURVD_STORE_OK;
}

char *curvd_store_strndup(const char *s, size_t n)
{
    char *d = sqlite3_malloc64(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

void curvd_session_clear(struct curvd_session *s)
{
    if (!s)
        return;
    sqlite3_free(s->id);
    sqlite3_free(s->tenant);
    sqlite3_free(s->optimizer);
    sqlite3_free(s->meta);
    sqlite3_free(s->state);
    sqlite3_free(s->parts);
    for (size_t i = 0; s->log && i < s->n_log; i++)
        sqlite3_free(s->log[i].record);
    sqlite3_free(s->log);
    sqlite3_free(s->last_report);
    sqlite3_free(s->name);
    sqlite3_free(s->labels);
    memset(s, 0, sizeof *s);
}

void curvd_session_list_clear(struct curvd_session_list *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->count; i++)
        curvd_session_clear(&l->items[i]);
    sqlite3_free(l->items);
    sqlite3_free(l->next_page_token);
    memset(l, 0, sizeof *l);
}

void curvd_step_response_clear(struct curvd_step_response *r)
{
    if (!r)
        return;
    sqlite3_free(r->content_type);
    sqlite3_free(r->report);
    sqlite3_free(r->request_digest);
    sqlite3_free(r->body);
    memset(r, 0, sizeof *r);
}
