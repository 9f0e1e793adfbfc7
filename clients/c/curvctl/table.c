/* SPDX-License-Identifier: MIT */
/* Aligned text tables: every cell is kept until printing, so the widths
 * fit the widest cell of each column. */
#include <stdlib.h>
#include <string.h>

#include "curvctl.h"

struct ctl_table {
    size_t ncols, nrows, cap;
    char **cells; /* (1 + nrows) x ncols, the header first */
    int *right;
};

static char *dup_cell(const char *s)
{
    s = s ? s : "-";
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

struct ctl_table *ctl_table_new(size_t ncols, const char *const *heads, const int *right)
{
    struct ctl_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ncols = ncols;
    t->right = calloc(ncols, sizeof *t->right);
    if (!t->right) {
        free(t);
        return NULL;
    }
    for (size_t k = 0; right && k < ncols; k++)
        t->right[k] = right[k];
    t->nrows = (size_t)-1; /* the header is row -1: adding it makes 0 */
    if (ctl_table_add(t, heads) != 0) {
        ctl_table_free(t);
        return NULL;
    }
    return t;
}

int ctl_table_add(struct ctl_table *t, const char *const *cells)
{
    size_t need = (t->nrows + 2) * t->ncols;
    if (need > t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16 * t->ncols;
        while (cap < need)
            cap *= 2;
        char **p = realloc(t->cells, cap * sizeof *p);
        if (!p)
            return -1;
        t->cells = p;
        t->cap = cap;
    }
    char **row = t->cells + (t->nrows + 1) * t->ncols;
    for (size_t k = 0; k < t->ncols; k++) {
        row[k] = dup_cell(cells[k]);
        if (!row[k]) {
            while (k--)
                free(row[k]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

void ctl_table_print(const struct ctl_table *t, FILE *out, const char *indent)
{
    size_t *w = calloc(t->ncols, sizeof *w);
    if (!w)
        return;
    for (size_t r = 0; r <= t->nrows; r++)
        for (size_t k = 0; k < t->ncols; k++) {
            size_t n = strlen(t->cells[r * t->ncols + k]);
            w[k] = n > w[k] ? n : w[k];
        }
    for (size_t r = 0; r <= t->nrows; r++) {
        fputs(indent, out);
        for (size_t k = 0; k < t->ncols; k++) {
            const char *c = t->cells[r * t->ncols + k];
            int last = k + 1 == t->ncols;
            if (t->right[k])
                fprintf(out, "%*s%s", (int)w[k], c, last ? "" : "  ");
            else
                fprintf(out, "%-*s%s", last ? 0 : (int)w[k], c, last ? "" : "  ");
        }
        fputc('\n', out);
    }
    free(w);
}

void ctl_table_free(struct ctl_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; t->cells && i < (t->nrows + 1) * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t->right);
    free(t);
}
