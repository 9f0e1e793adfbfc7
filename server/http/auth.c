/* SPDX-License-Identifier: MIT */
#include "http/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TOKEN_MAX 256
#define TENANT_MAX 63

struct entry {
    char token[TOKEN_MAX + 1];
    char tenant[TENANT_MAX + 1];
};

struct curvd_auth {
    struct entry *e;
    size_t n;
};

void curvd_auth_free(struct curvd_auth *a)
{
    if (!a)
        return;
    free(a->e);
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

struct curvd_auth *curvd_auth_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open token file %s", path);
        return NULL;
    }
    struct curvd_auth *a = calloc(1, sizeof *a);
    char line[1024];
    size_t cap = 0, lineno = 0;
    while (a && fgets(line, sizeof line, f)) {
        lineno++;
        struct entry e;
        int r = parse_line(line, &e);
        if (r < 0) {
            snprintf(err, errlen,
                     "%s:%zu: want 'token tenant' (token 16..%d bytes, tenant up to %d)", path,
                     lineno, TOKEN_MAX, TENANT_MAX);
            curvd_auth_free(a);
            a = NULL;
        } else if (r > 0) {
            if (a->n == cap) {
                cap = cap ? 2 * cap : 8;
                struct entry *ne = realloc(a->e, cap * sizeof *ne);
                if (!ne) {
                    snprintf(err, errlen, "out of memory");
                    curvd_auth_free(a);
                    a = NULL;
                    break;
                }
                a->e = ne;
            }
            a->e[a->n++] = e;
        }
    }
    fclose(f);
    if (a && a->n == 0) {
        snprintf(err, errlen, "token file %s holds no tokens", path);
        curvd_auth_free(a);
        a = NULL;
    }
    return a;
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

const char *curvd_auth_tenant(const struct curvd_auth *a, const char *authorization)
{
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    const char *tok = authorization + 7;
    const char *found = NULL;
    for (size_t i = 0; i < a->n; i++) /* no early exit: constant time in the match */
        if (same(tok, a->e[i].token))
            found = a->e[i].tenant;
    return found;
}
