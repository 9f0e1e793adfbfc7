/* SPDX-License-Identifier: MIT */
/*
 * The one-pass body scanner behind curvd_json_parse() (its numbers are read
 * by numtext.c, without jansson), and plain jansson arrays flattened.
 * Tensor bytes (little-endian values, base64, the binary tail) are
 * tensor_bytes.c's.
 *
 * Why: jansson builds a json_t of about 40 bytes per number and reads
 * about 2 M numbers/s; a gradient of a few million floats would spend most
 * of a step in the JSON parser. The scanner copies the body into a
 * "skeleton", replacing each numeric "data" array by a placeholder object,
 * so jansson only ever sees the small structural part.
 */
#include "wire/json_scan.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/mem.h"

/* ---- The body scanner -------------------------------------------------- */

struct scan {
    const char *s;
    size_t len;
    struct curvd_doc *doc;
    char *skel;
    size_t skel_len, skel_cap;
    size_t copied; /* s[0 .. copied) is already in the skeleton */
    struct curvd_problem *p;
};

/* Make room for @need elements of @elem bytes; doubling keeps appends
 * amortised O(1). Through curvd_mem: a large body's values are tens of MB. */
static int grow(void **buf, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 256;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    if (n > SIZE_MAX / elem)
        return -1;
    void *q = curvd_mem_realloc(*buf, n * elem);
    if (!q)
        return -1;
    *buf = q;
    *cap = n;
    return 0;
}

static int nomem(struct curvd_problem *p)
{
    return curvd_problem_set(p, CURVD_R_NO_MEMORY, "", NULL, NULL,
                             "out of memory parsing the body");
}

static int skel_put(struct scan *sc, const char *src, size_t n)
{
    if (n == 0)
        return 0;
    if (grow((void **)&sc->skel, &sc->skel_cap, sc->skel_len + n, 1))
        return nomem(sc->p);
    memcpy(sc->skel + sc->skel_len, src, n);
    sc->skel_len += n;
    return 0;
}

static int push_value(struct scan *sc, double v)
{
    struct curvd_doc *d = sc->doc;
    if (d->nvalues == d->cap_values &&
        grow((void **)&d->values, &d->cap_values, d->nvalues + 1, sizeof(double)))
        return nomem(sc->p);
    d->values[d->nvalues++] = v;
    return 0;
}

static size_t skip_ws(const char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    return i;
}

/* Offset just past the string that opens at s[start], or len when it is
 * unterminated. A quote is escaped when an odd run of backslashes precedes
 * it, which lets memchr() do the walking. */
static size_t string_end(const char *s, size_t len, size_t start)
{
    size_t i = start + 1;
    for (;;) {
        const char *q = i < len ? memchr(s + i, '"', len - i) : NULL;
        if (!q)
            return len;
        size_t at = (size_t)(q - s), bs = 0;
        while (at - bs > start + 1 && s[at - bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0)
            return at + 1;
        i = at + 1;
    }
}

static int scan_error(struct scan *sc, size_t at, const char *what)
{
    char got[32];
    size_t n = sc->len - at < 24 ? sc->len - at : 24;
    snprintf(got, sizeof got, "%.*s", (int)n, sc->s + at);
    return curvd_problem_set(sc->p, CURVD_R_MALFORMED_JSON, "", what, at < sc->len ? got : "end",
                             "invalid JSON at byte %zu: expected %s", at, what);
}

static int literal(const char *s, size_t len, size_t i, const char *word)
{
    size_t n = strlen(word);
    return len - i >= n && memcmp(s + i, word, n) == 0;
}

/* One element at s[*i] that is not an array. Returns 1 when it was a
 * number (pushed), 0 when it is another JSON value (the array is not
 * numeric: leave it to jansson), -1 on malformed text. */
static int scan_value(struct scan *sc, size_t *i, struct curvd_cut *c)
{
    const char *s = sc->s;
    size_t at = *i, used;
    double v;
    char ch = s[at];
    /* The literals Python's json module writes for non-finite floats: kept
     * as values so the tensor's decoder can name them with its path. */
    if (ch == 'N' || ch == 'I' || (ch == '-' && at + 1 < sc->len && s[at + 1] == 'I')) {
        static const struct {
            const char *word;
            double v;
        } lits[] = {{"NaN", NAN}, {"Infinity", INFINITY}, {"-Infinity", -INFINITY}};
        for (size_t j = 0; j < sizeof lits / sizeof lits[0]; j++) {
            if (literal(s, sc->len, at, lits[j].word)) {
                *i = at + strlen(lits[j].word);
                c->bad_at = c->bad_at == SIZE_MAX ? at : c->bad_at;
                return push_value(sc, lits[j].v) ? -1 : 1;
            }
        }
    }
    if (ch == '"' || ch == '{' || ch == 't' || ch == 'f' || ch == 'n')
        return 0;
    if (ch != '-' && !curvd_is_digit(ch))
        return scan_error(sc, at, "a number");
    if (curvd_scan_number(s + at, sc->len - at, &used, &v)) {
        char got[32];
        snprintf(got, sizeof got, "%.*s", (int)(used < 24 ? used : 24), s + at);
        return curvd_problem_set(sc->p, CURVD_R_MALFORMED_JSON, "", "a JSON number", got,
                                 "invalid number '%s' at byte %zu", got, at);
    }
    if (!isfinite(v) && c->bad_at == SIZE_MAX)
        c->bad_at = at;
    *i = at + used;
    return push_value(sc, v) ? -1 : 1;
}

/* Record the length of the array closing at @depth; a sibling of another
 * length makes the nesting ragged. */
static void close_level(struct curvd_cut *c, size_t depth, const size_t *cnt, int *set)
{
    size_t d = depth - 1;
    if (set[d] && c->dims[d] != cnt[d])
        c->ragged = 1;
    c->dims[d] = cnt[d];
    set[d] = 1;
}

/*
 * The array opening at s[i], if it holds only numbers (or arrays of them).
 * Return 1 with *end past its ']' and the values pushed; 0 when it holds
 * something else or nests deeper than CURVD_MAX_NDIM (the caller rolls
 * back); -1 on malformed text.
 */
static int scan_numbers(struct scan *sc, size_t i, struct curvd_cut *c, size_t *end)
{
    const char *s = sc->s;
    size_t len = sc->len, depth = 0, leaf = 0, cnt[CURVD_MAX_NDIM];
    int set[CURVD_MAX_NDIM] = {0};
    for (;;) {
        i = skip_ws(s, len, i);
        if (i >= len)
            return scan_error(sc, i, "a value");
        if (s[i] == '[') {
            if (depth == CURVD_MAX_NDIM)
                return 0;
            if (depth)
                cnt[depth - 1]++;
            cnt[depth++] = 0;
            c->ndim = depth > c->ndim ? depth : c->ndim;
            i = skip_ws(s, len, i + 1);
            if (i >= len || s[i] != ']')
                continue;
        } else {
            int rc = scan_value(sc, &i, c);
            if (rc <= 0)
                return rc;
            cnt[depth - 1]++;
            c->ragged |= leaf && leaf != depth;
            leaf = depth;
            i = skip_ws(s, len, i);
            if (i < len && s[i] == ',') {
                i++;
                continue;
            }
            if (i >= len || s[i] != ']')
                return scan_error(sc, i, "',' or ']'");
        }
        /* s[i] is ']': close levels until a ',' continues the enclosing one. */
        for (;;) {
            close_level(c, depth--, cnt, set);
            i++;
            if (depth == 0) {
                c->ragged |= leaf && leaf != c->ndim;
                *end = i;
                return 1;
            }
            i = skip_ws(s, len, i);
            if (i < len && s[i] == ',') {
                i++;
                break;
            }
            if (i >= len || s[i] != ']')
                return scan_error(sc, i, "',' or ']'");
        }
    }
}

/* Replace s[at .. end) by the placeholder of cut @c in the skeleton. */
static int emit_cut(struct scan *sc, struct curvd_cut *c, size_t at, size_t end)
{
    struct curvd_doc *d = sc->doc;
    char ph[64];
    int n = snprintf(ph, sizeof ph, "{\"%s\":%zu}", CURVD_CUT_KEY, d->ncuts);
    c->body_off = at;
    c->body_len = end - at;
    if (skel_put(sc, sc->s + sc->copied, at - sc->copied))
        return -1;
    c->skel_off = sc->skel_len;
    c->skel_len = (size_t)n;
    if (skel_put(sc, ph, (size_t)n) ||
        grow((void **)&d->cuts, &d->cap_cuts, d->ncuts + 1, sizeof *c))
        return nomem(sc->p);
    d->cuts[d->ncuts++] = *c;
    sc->copied = end;
    return 0;
}

/* Try to cut the "data" array opening at s[at]. Returns -1 on error, else
 * 0 with *pos where scanning resumes. */
static int cut_array(struct scan *sc, size_t at, size_t *pos)
{
    struct curvd_doc *d = sc->doc;
    struct curvd_cut c = {.kind = CURVD_CUT_NUMBERS, .first = d->nvalues, .bad_at = SIZE_MAX};
    size_t end = at;
    int rc = scan_numbers(sc, at, &c, &end);
    if (rc <= 0) {
        d->nvalues = c.first;
        *pos = at + 1;
        return rc;
    }
    c.count = d->nvalues - c.first;
    *pos = end;
    return emit_cut(sc, &c, at, end);
}

/* Try to cut the base64 string opening at s[at]. Only printable ASCII
 * without escapes is taken: such text means the same to jansson and to us,
 * so skipping jansson's pass over megabytes of it loses no validation. */
static int cut_text(struct scan *sc, size_t at, size_t *pos)
{
    struct curvd_doc *d = sc->doc;
    const char *s = sc->s, *q = memchr(s + at + 1, '"', sc->len - at - 1);
    if (!q)
        return 0;
    size_t n = (size_t)(q - s) - at - 1;
    int bad = 0;
    for (size_t i = at + 1; i < at + 1 + n; i++)
        bad |= (unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e || s[i] == '\\';
    if (bad)
        return 0;
    if (n && grow((void **)&d->text, &d->cap_text, d->ntext + n, 1))
        return nomem(sc->p);
    if (n)
        memcpy(d->text + d->ntext, s + at + 1, n);
    struct curvd_cut c = {
        .kind = CURVD_CUT_TEXT, .first = d->ntext, .count = n, .bad_at = SIZE_MAX};
    d->ntext += n;
    *pos = at + n + 2;
    return emit_cut(sc, &c, at, at + n + 2);
}

/* Find every string; the value of a "data" key starts a cut when it is an
 * array or {"b64": "..."}. Other bytes are copied verbatim: jansson
 * validates them afterwards. */
static int scan_body(struct scan *sc)
{
    const char *s = sc->s;
    size_t len = sc->len, pos = 0;
    while (pos < len) {
        const char *q = memchr(s + pos, '"', len - pos);
        if (!q)
            break;
        size_t start = (size_t)(q - s), k;
        pos = string_end(s, len, start);
        if (pos - start != 6 || memcmp(s + start + 1, "data", 4) != 0)
            continue;
        k = skip_ws(s, len, pos);
        if (k >= len || s[k] != ':')
            continue;
        k = skip_ws(s, len, k + 1);
        if (k < len && s[k] == '[' && cut_array(sc, k, &pos))
            return -1;
        if (k >= len || s[k] != '{')
            continue;
        k = skip_ws(s, len, k + 1);
        if (!literal(s, len, k, "\"b64\""))
            continue;
        k = skip_ws(s, len, k + 5);
        if (k >= len || s[k] != ':')
            continue;
        k = skip_ws(s, len, k + 1);
        if (k < len && s[k] == '"' && cut_text(sc, k, &pos))
            return -1;
    }
    return 0;
}

/* A jansson error offset in the skeleton, as an offset in the body. */
static size_t body_offset(const struct curvd_doc *d, size_t skel_pos)
{
    size_t skel_before = 0, body_before = 0;
    for (size_t i = 0; i < d->ncuts; i++) {
        const struct curvd_cut *c = &d->cuts[i];
        if (skel_pos < c->skel_off)
            break;
        if (skel_pos < c->skel_off + c->skel_len)
            return c->body_off;
        skel_before += c->skel_len;
        body_before += c->body_len;
    }
    return skel_pos - skel_before + body_before;
}

/* Every object with the reserved key must be one of our placeholders,
 * each exactly once; a body cannot forge one to alias another's values. */
static int check_placeholders(const json_t *v, struct curvd_doc *d, unsigned char *claimed,
                              struct curvd_problem *p)
{
    const char *key;
    json_t *child;
    size_t i;
    if (json_is_object(v)) {
        json_t *k = json_object_get(v, CURVD_CUT_KEY);
        if (k) {
            json_int_t n = json_is_integer(k) ? json_integer_value(k) : -1;
            if (json_object_size(v) != 1 || n < 0 || (size_t)n >= d->ncuts || claimed[n])
                return curvd_problem_set(p, CURVD_R_MALFORMED_JSON, "", NULL, NULL,
                                         "the key \"%s\" is reserved", CURVD_CUT_KEY);
            claimed[n] = 1;
            return 0;
        }
        json_object_foreach((json_t *)v, key, child)
        {
            if (check_placeholders(child, d, claimed, p))
                return -1;
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            if (check_placeholders(child, d, claimed, p))
                return -1;
        }
    }
    return 0;
}

static int load_skeleton(struct scan *sc)
{
    struct curvd_doc *d = sc->doc;
    json_error_t je;
    /* Without cuts the skeleton is the body itself: skip the copy. */
    const char *text = d->ncuts ? sc->skel : sc->s;
    size_t len = d->ncuts ? sc->skel_len : sc->len;
    d->root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!d->root) {
        if (json_error_code(&je) == json_error_out_of_memory)
            return nomem(sc->p);
        size_t at = body_offset(d, je.position > 0 ? (size_t)je.position : 0);
        return curvd_problem_set(sc->p, CURVD_R_MALFORMED_JSON, "", NULL, NULL,
                                 "invalid JSON at byte %zu: %s", at, je.text);
    }
    unsigned char *claimed = calloc(d->ncuts ? d->ncuts : 1, 1);
    if (!claimed)
        return nomem(sc->p);
    int rc = check_placeholders(d->root, d, claimed, sc->p);
    free(claimed);
    return rc;
}

int curvd_json_parse(const char *body, size_t len, struct curvd_doc **out, struct curvd_problem *p)
{
    struct curvd_doc *d = calloc(1, sizeof *d);
    struct scan sc = {.s = body, .len = len, .doc = d, .p = p};
    if (!d)
        return nomem(p);
    if (scan_body(&sc) || (d->ncuts && skel_put(&sc, body + sc.copied, len - sc.copied)) ||
        load_skeleton(&sc)) {
        curvd_mem_free(sc.skel);
        curvd_doc_free(d);
        return -1;
    }
    curvd_mem_free(sc.skel);
    *out = d;
    return 0;
}

json_t *curvd_doc_root(const struct curvd_doc *doc)
{
    return doc ? doc->root : NULL;
}

void curvd_doc_free(struct curvd_doc *doc)
{
    if (!doc)
        return;
    json_decref(doc->root);
    curvd_mem_free(doc->values);
    curvd_mem_free(doc->text);
    curvd_mem_free(doc->cuts);
    free(doc);
}

const struct curvd_cut *curvd_doc_cut(const struct curvd_doc *doc, const json_t *v)
{
    if (!doc || !json_is_object(v) || json_object_size(v) != 1)
        return NULL;
    json_t *k = json_object_get(v, CURVD_CUT_KEY);
    if (!json_is_integer(k) || json_integer_value(k) < 0 ||
        (size_t)json_integer_value(k) >= doc->ncuts)
        return NULL;
    return &doc->cuts[json_integer_value(k)];
}

int curvd_doc_numbers(const struct curvd_doc *doc, const json_t *v, const double **vals,
                      size_t *count)
{
    const struct curvd_cut *c = curvd_doc_cut(doc, v);
    if (!c || c->kind != CURVD_CUT_NUMBERS)
        return 0;
    *vals = doc->values ? doc->values + c->first : NULL;
    *count = c->count;
    return 1;
}

int curvd_doc_text(const struct curvd_doc *doc, const json_t *v, const char **s, size_t *len)
{
    const struct curvd_cut *c = curvd_doc_cut(doc, v);
    if (!c || c->kind != CURVD_CUT_TEXT)
        return 0;
    *s = doc->text ? doc->text + c->first : "";
    *len = c->count;
    return 1;
}

/* ---- Plain jansson arrays ---------------------------------------------- */

const char *curvd_json_type(const json_t *v)
{
    static const char *const names[] = {"object", "array", "string", "integer",
                                        "real",   "true",  "false",  "null"};
    return v ? names[json_typeof(v)] : "absent";
}

struct measure {
    struct curvd_cut *c;
    int set[CURVD_MAX_NDIM];
    size_t leaf, idx[CURVD_MAX_NDIM];
    const char *path;
    struct curvd_problem *p;
};

static int measure_level(const json_t *a, size_t depth, struct measure *m)
{
    struct curvd_cut *c = m->c;
    const json_t *v;
    size_t i, n = json_array_size(a);
    char sub[160];
    size_t used = (size_t)snprintf(sub, sizeof sub, "%s/data", m->path);
    if (depth > CURVD_MAX_NDIM)
        return curvd_problem_set(m->p, CURVD_R_BAD_TENSOR, sub, "at most 8 levels", NULL,
                                 "data arrays nest deeper than %d levels", CURVD_MAX_NDIM);
    c->ndim = depth > c->ndim ? depth : c->ndim;
    json_array_foreach(a, i, v)
    {
        m->idx[depth - 1] = i;
        if (json_is_array(v)) {
            if (measure_level(v, depth + 1, m))
                return -1;
        } else if (json_is_number(v)) {
            c->count++;
            c->ragged |= m->leaf && m->leaf != depth;
            m->leaf = depth;
        } else {
            for (size_t k = 0; k < depth && used < sizeof sub; k++)
                used += (size_t)snprintf(sub + used, sizeof sub - used, "/%zu", m->idx[k]);
            return curvd_problem_set(m->p, CURVD_R_BAD_TENSOR, sub, "a number", curvd_json_type(v),
                                     "data must hold only numbers");
        }
    }
    c->ragged |= m->set[depth - 1] && c->dims[depth - 1] != n;
    c->dims[depth - 1] = n;
    m->set[depth - 1] = 1;
    return 0;
}

int curvd_array_measure(const json_t *a, struct curvd_cut *c, const char *path,
                        struct curvd_problem *p)
{
    struct measure m = {.c = c, .path = path, .p = p};
    if (measure_level(a, 1, &m))
        return -1;
    c->ragged |= m.leaf && m.leaf != c->ndim;
    return 0;
}

static void fill_level(const json_t *a, double *out, size_t *k)
{
    const json_t *v;
    size_t i;
    json_array_foreach(a, i, v)
    {
        if (json_is_array(v))
            fill_level(v, out, k);
        else
            out[(*k)++] = json_number_value(v);
    }
}

void curvd_array_fill(const json_t *a, double *out)
{
    size_t k = 0;
    fill_level(a, out, &k);
}
