/* SPDX-License-Identifier: MIT */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

#define KEY_MAX 63

struct entry {
    char key[KEY_MAX + 1];
    char *str; /* NULL: numeric */
    double num;
};

struct curv_config {
    struct entry *e;
    size_t n, cap;
};

curv_config *curv_config_new(void)
{
    return curv__calloc(1, sizeof(curv_config));
}

void curv_config_free(curv_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        curv__free(c->e[i].str);
    curv__free(c->e);
    curv__free(c);
}

size_t curv_config_count(const curv_config *c)
{
    return c ? c->n : 0;
}

int curv__config_entry(const curv_config *c, size_t i, struct curv__cfg_entry *out)
{
    if (!c || i >= c->n)
        return 0;
    out->key = c->e[i].key;
    out->str = c->e[i].str;
    out->num = c->e[i].num;
    return 1;
}

int curv__config_find(const curv_config *c, const char *key, struct curv__cfg_entry *out)
{
    for (size_t i = 0; c && i < c->n; i++)
        if (strcmp(c->e[i].key, key) == 0)
            return curv__config_entry(c, i, out);
    return 0;
}

/* Find @key's slot, appending an empty one if absent. NULL when out of memory. */
static struct entry *slot(curv_config *c, const char *key)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->e[i].key, key) == 0)
            return &c->e[i];
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 8;
        struct entry *ne = curv__realloc(c->e, cap * sizeof *ne);
        if (!ne)
            return NULL;
        c->e = ne;
        c->cap = cap;
    }
    struct entry *e = &c->e[c->n++];
    memset(e, 0, sizeof *e);
    strcpy(e->key, key);
    return e;
}

static curv_status set(curv_config *c, const char *key, const char *str, double num,
                       curv_error *err)
{
    if (!c || !key || !*key || strlen(key) > KEY_MAX)
        return curv__fail(err, CURV_E_INVALID, "config: key must be 1..%d bytes", KEY_MAX);
    char *copy = NULL;
    if (str && !(copy = curv__strdup(str)))
        return curv__fail(err, CURV_E_NOMEM, "config: out of memory setting '%s'", key);
    struct entry *e = slot(c, key);
    if (!e) {
        curv__free(copy);
        return curv__fail(err, CURV_E_NOMEM, "config: out of memory setting '%s'", key);
    }
    curv__free(e->str);
    e->str = copy;
    e->num = num;
    return CURV_OK;
}

curv_status curv_config_set_num(curv_config *c, const char *key, double value, curv_error *err)
{
    if (!isfinite(value))
        return curv__fail(err, CURV_E_INVALID, "config: '%s' must be a finite number",
                          key ? key : "(null)");
    return set(c, key, NULL, value, err);
}

curv_status curv_config_set_str(curv_config *c, const char *key, const char *value, curv_error *err)
{
    if (!value)
        return curv__fail(err, CURV_E_INVALID, "config: NULL string for '%s'",
                          key ? key : "(null)");
    return set(c, key, value, 0, err);
}
