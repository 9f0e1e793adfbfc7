/* SPDX-License-Identifier: MIT */
#include "http/auth.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TOKEN_MAX 256
#define TENANT_MAX 63
_Static_assert(TENANT_MAX + 1 <= CURVD_TENANT_CAP, "CURVD_TENANT_CAP holds every tenant");

struct entry {
    char token[TOKEN_MAX + 1];
    char tenant[TENANT_MAX + 1];
};

struct table {
    struct entry *e;
    size_t n;
};

/* The table in use; a reload swaps it under @mu, and a lookup copies the
 * tenant out under @mu, so no request holds a pointer into a table that
 * a reload frees. */
struct curvd_auth {
    pthread_mutex_t mu;
    struct table t;
};

void curvd_auth_free(struct curvd_auth *a)
{
    if (!a)
        return;
    free(a->t.e);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* Split one line into token and tenant; 1 parsed, 0 blank/comment, -1 bad. */
static int parse_line(char *line, struct entry *out)
{
    char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
    if (!tok || tok[0] == '#')
        return 0;
    char *tenant = strtok_r(NULL, " \t\r\n", &save);
    if (!tenant || strtok_r(NULL, " \t\r\n", &save) || strlen(tok) < 16 ||
        strlen(tok) > TOKEN_MAX || strlen(tenant) > TENANT_MAX)
        return -1;
    snprintf(out->token, sizeof out->token, "%s", tok);
    snprintf(out->tenant, sizeof out->tenant, "%s", tenant);
    return 1;
}

/* Read @path into @t; 0, or -1 with @err (nothing left in @t). */
static int load_table(const char *path, struct table *t, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open token file %s", path);
        return -1;
    }
    char line[1024];
    size_t cap = 0, lineno = 0;
    int rc = 0;
    *t = (struct table){0};
    while (rc == 0 && fgets(line, sizeof line, f)) {
        lineno++;
        struct entry e;
        int r = parse_line(line, &e);
        if (r < 0) {
            snprintf(err, errlen,
                     "%s:%zu: want 'token tenant' (token 16..%d bytes, tenant up to %d)", path,
                     lineno, TOKEN_MAX, TENANT_MAX);
            rc = -1;
        } else if (r > 0) {
            if (t->n == cap) {
                cap = cap ? 2 * cap : 8;
                struct entry *ne = realloc(t->e, cap * sizeof *ne);
                if (!ne) {
                    snprintf(err, errlen, "out of memory");
                    rc = -1;
                    break;
                }
                t->e = ne;
            }
            t->e[t->n++] = e;
        }
    }
    fclose(f);
    if (rc == 0 && t->n == 0) {
        snprintf(err, errlen, "token file %s holds no tokens", path);
        rc = -1;
    }
    if (rc != 0) {
        free(t->e);
        *t = (struct table){0};
    }
    return rc;
}

struct curvd_auth *curvd_auth_load(const char *path, char *err, size_t errlen)
{
    struct curvd_auth *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (load_table(path, &a->t, err, errlen) != 0) {
        free(a);
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    return a;
}

int curvd_auth_reload(struct curvd_auth *a, const char *path, size_t *tokens, char *err,
                      size_t errlen)
{
    struct table t;
    if (load_table(path, &t, err, errlen) != 0)
        return -1;
    pthread_mutex_lock(&a->mu);
    struct table old = a->t;
    a->t = t;
    pthread_mutex_unlock(&a->mu);
    free(old.e);
    if (tokens)
        *tokens = t.n;
    return 0;
}

/* Equal strings, in time independent of where they differ. */
static int same(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = (unsigned char)(la != lb);
    for (size_t i = 0; i < lb; i++)
        d |= (unsigned char)(a[i < la ? i : 0] ^ b[i]);
    return d == 0;
}

const char *curvd_auth_tenant(struct curvd_auth *a, const char *authorization, char *buf,
                              size_t cap)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    const char *tok = authorization + 7;
    const char *found = NULL;
    pthread_mutex_lock(&a->mu);
    for (size_t i = 0; i < a->t.n; i++) /* no early exit: constant time in the match */
        if (same(tok, a->t.e[i].token))
            found = a->t.e[i].tenant;
    if (found)
        snprintf(buf, cap, "%s", found);
    pthread_mutex_unlock(&a->mu);
    return found ? buf : NULL;
}
