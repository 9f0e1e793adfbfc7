/* SPDX-License-Identifier: MIT */
/* Table-driven hyperparameters: defaults, validation, (de)serialization. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opt_int.h"

/* Room for the longest value: CURV__LIST_MAX 20-digit numbers and commas. */
#define STR_MAX (CURV__LIST_MAX * 21 + 1)

static void *field(const struct curv__param *p, void *hyper)
{
    return (char *)hyper + p->offset;
}

static const void *cfield(const struct curv__param *p, const void *hyper)
{
    return (const char *)hyper + p->offset;
}

/* Index of @s in the '|'-separated @choices, or -1. */
static int choice_index(const char *choices, const char *s)
{
    size_t n = strlen(s);
    int idx = 0;
    for (const char *p = choices;; idx++) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && strncmp(p, s, n) == 0)
            return idx;
        if (!bar)
            return -1;
        p = bar + 1;
    }
}

/* Copy choice @idx of @choices into buf. */
static void choice_name(const char *choices, int idx, char *buf, size_t cap)
{
    const char *p = choices;
    for (int i = 0; i < idx && p; i++) {
        p = strchr(p, '|');
        p = p ? p + 1 : NULL;
    }
    if (!p) {
        snprintf(buf, cap, "?");
        return;
    }
    const char *bar = strchr(p, '|');
    int len = bar ? (int)(bar - p) : (int)strlen(p);
    snprintf(buf, cap, "%.*s", len, p);
}

/* Parse "3,10,200" (strictly increasing, each >= 1) into @out. */
static int parse_list(const char *s, struct curv__list *out)
{
    struct curv__list l = {0};
    while (*s) {
        char *end;
        if (*s < '0' || *s > '9' || l.n == CURV__LIST_MAX)
            return 0;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s || errno == ERANGE || v == 0 || (l.n && v <= l.v[l.n - 1]))
            return 0;
        l.v[l.n++] = v;
        s = end;
        if (*s == ',' && s[1])
            s++;
        else if (*s)
            return 0;
    }
    *out = l;
    return 1;
}

static void format_list(const struct curv__list *l, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < l->n && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, i ? ",%llu" : "%llu",
                                 (unsigned long long)l->v[i]);
}

static curv_status set_default(const struct curv__param *p, void *hyper)
{
    void *f = field(p, hyper);
    switch (p->type) {
    case CURV_PARAM_REAL:
        *(double *)f = p->def;
        break;
    case CURV_PARAM_INT:
        *(int64_t *)f = (int64_t)p->def;
        break;
    case CURV_PARAM_BOOL:
        *(int *)f = p->def != 0;
        break;
    case CURV_PARAM_ENUM:
        *(int *)f = choice_index(p->choices, p->def_str);
        break;
    case CURV_PARAM_LIST:
        if (!parse_list(p->def_str, (struct curv__list *)f))
            return CURV_E_CONFIG;
        break;
    }
    return CURV_OK;
}

static curv_status set_value(const struct curv__param *p, const char *kind,
                             const struct curv__cfg_entry *e, void *hyper, curv_error *err)
{
    void *f = field(p, hyper);
    int want_str = p->type == CURV_PARAM_ENUM || p->type == CURV_PARAM_LIST;
    if (want_str != (e->str != NULL))
        return curv__fail(err, CURV_E_CONFIG, "%s: '%s' must be a %s", kind, p->name,
                          want_str ? "string" : "number");
    switch (p->type) {
    case CURV_PARAM_REAL:
    case CURV_PARAM_INT:
        if (!(e->num >= p->min && e->num <= p->max))
            return curv__fail(err, CURV_E_CONFIG, "%s: '%s' = %g is outside [%g, %g]", kind,
                              p->name, e->num, p->min, p->max);
        if (p->type == CURV_PARAM_INT && e->num != floor(e->num))
            return curv__fail(err, CURV_E_CONFIG, "%s: '%s' = %g must be an integer", kind, p->name,
                              e->num);
        if (p->type == CURV_PARAM_REAL)
            *(double *)f = e->num;
        else
            *(int64_t *)f = (int64_t)e->num;
        return CURV_OK;
    case CURV_PARAM_BOOL:
        if (e->num != 0 && e->num != 1)
            return curv__fail(err, CURV_E_CONFIG, "%s: '%s' must be 0 or 1 (boolean)", kind,
                              p->name);
        *(int *)f = (int)e->num;
        return CURV_OK;
    case CURV_PARAM_ENUM: {
        int idx = choice_index(p->choices, e->str);
        if (idx < 0)
            return curv__fail(err, CURV_E_CONFIG, "%s: '%s' = \"%s\" is not one of %s", kind,
                              p->name, e->str, p->choices);
        *(int *)f = idx;
        return CURV_OK;
    }
    case CURV_PARAM_LIST:
        if (!parse_list(e->str, (struct curv__list *)f))
            return curv__fail(err, CURV_E_CONFIG,
                              "%s: '%s' = \"%s\" must be up to %d strictly increasing positive "
                              "integers separated by commas",
                              kind, p->name, e->str, CURV__LIST_MAX);
        return CURV_OK;
    }
    return CURV_E_CONFIG;
}

curv_status curv__params_apply(const struct curv__param *tab, size_t n, const char *kind,
                               const curv_config *c, void *hyper, curv_error *err)
{
    for (size_t i = 0; i < n; i++)
        if (set_default(&tab[i], hyper) != CURV_OK)
            return curv__fail(err, CURV_E_CONFIG, "%s: bad built-in default for '%s'", kind,
                              tab[i].name);
    return curv__params_set(tab, n, kind, c, hyper, err);
}

curv_status curv__params_set(const struct curv__param *tab, size_t n, const char *kind,
                             const curv_config *c, void *hyper, curv_error *err)
{
    struct curv__cfg_entry e;
    for (size_t k = 0; curv__config_entry(c, k, &e); k++) {
        size_t i = 0;
        while (i < n && strcmp(tab[i].name, e.key) != 0)
            i++;
        if (i == n) {
            char known[STR_MAX];
            size_t used = 0;
            known[0] = '\0';
            for (size_t j = 0; j < n && used < sizeof known; j++)
                used += (size_t)snprintf(known + used, sizeof known - used, "%s%s", j ? ", " : "",
                                         tab[j].name);
            return curv__fail(err, CURV_E_CONFIG, "%s: unknown hyperparameter '%s' (known: %s)",
                              kind, e.key, known);
        }
        curv_status st = set_value(&tab[i], kind, &e, hyper, err);
        if (st != CURV_OK)
            return st;
    }
    return CURV_OK;
}

double curv__param_value(const struct curv__param *p, const void *hyper)
{
    const void *f = cfield(p, hyper);
    switch (p->type) {
    case CURV_PARAM_REAL:
        return *(const double *)f;
    case CURV_PARAM_INT:
        return (double)*(const int64_t *)f;
    case CURV_PARAM_BOOL:
    case CURV_PARAM_ENUM:
        return *(const int *)f;
    case CURV_PARAM_LIST:
        return (double)((const struct curv__list *)f)->n;
    }
    return 0;
}

void curv__param_format(const struct curv__param *p, const void *hyper, char *buf, size_t cap)
{
    switch (p->type) {
    case CURV_PARAM_ENUM:
        choice_name(p->choices, *(const int *)cfield(p, hyper), buf, cap);
        return;
    case CURV_PARAM_LIST:
        format_list(cfield(p, hyper), buf, cap);
        return;
    case CURV_PARAM_BOOL:
        snprintf(buf, cap, "%s", *(const int *)cfield(p, hyper) ? "true" : "false");
        return;
    default:
        snprintf(buf, cap, "%.17g", curv__param_value(p, hyper));
    }
}

/* Record per parameter: name, u32 is_string, then a string or an f64. */
void curv__params_save(const struct curv__param *tab, size_t n, const void *hyper,
                       struct curv__writer *w)
{
    char buf[STR_MAX];
    curv__w_u32(w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const struct curv__param *p = &tab[i];
        curv__w_str(w, p->name);
        if (p->type == CURV_PARAM_ENUM || p->type == CURV_PARAM_LIST) {
            curv__param_format(p, hyper, buf, sizeof buf);
            curv__w_u32(w, 1);
            curv__w_str(w, buf);
        } else {
            curv__w_u32(w, 0);
            curv__w_f64(w, curv__param_value(p, hyper));
        }
    }
}

curv_status curv__params_read(struct curv__reader *r, curv_config **out, curv_error *err)
{
    curv_config *c = curv_config_new();
    if (!c)
        return curv__fail(err, CURV_E_NOMEM, "state: out of memory reading hyperparameters");
    uint32_t n = curv__r_u32(r);
    char key[64], str[STR_MAX];
    curv_status st = CURV_OK;
    for (uint32_t i = 0; i < n && !r->bad && st == CURV_OK; i++) {
        curv__r_str(r, key, sizeof key);
        uint32_t is_str = curv__r_u32(r);
        if (is_str == 1) {
            curv__r_str(r, str, sizeof str);
            if (!r->bad)
                st = curv_config_set_str(c, key, str, NULL);
        } else {
            double v = curv__r_f64(r);
            if (is_str != 0 || !isfinite(v))
                r->bad = 1;
            else if (!r->bad)
                st = curv_config_set_num(c, key, v, NULL);
        }
    }
    if (st == CURV_E_NOMEM) {
        curv_config_free(c);
        return curv__fail(err, st, "state: out of memory reading hyperparameters");
    }
    if (r->bad || st != CURV_OK) {
        curv_config_free(c);
        return curv__fail(err, CURV_E_CORRUPT, "state: malformed hyperparameter records");
    }
    *out = c;
    return CURV_OK;
}
