/* SPDX-License-Identifier: MIT */
/*
 * A JSON body that jansson refused because of NaN, Infinity or -Infinity
 * (what Python's json module writes for non-finite floats) or a number
 * beyond the double range (1e400) is answered 422 NON_FINITE naming the
 * member that held it, not 400 MALFORMED_JSON: the trainer's value
 * diverged, its JSON is otherwise fine. Tensor "data" arrays never get
 * here (the scanner keeps such values and the tensor decoder names the
 * element).
 */
#include "wire/nonfinite.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const LITERALS[] = {"-Infinity", "Infinity", "NaN"};

static size_t back_ws(const char *s, size_t i)
{
    while (i > 0 && (s[i - 1] == ' ' || s[i - 1] == '\t' || s[i - 1] == '\n' || s[i - 1] == '\r'))
        i--;
    return i;
}

/* s[q] is a closing quote: the index of its opening quote (0 if none). */
static size_t string_start(const char *s, size_t q)
{
    for (size_t j = q; j > 0; j--) {
        if (s[j - 1] != '"')
            continue;
        size_t bs = 0;
        while (j - 1 - bs > 0 && s[j - 2 - bs] == '\\')
            bs++;
        if (bs % 2 == 0)
            return j - 1;
    }
    return 0;
}

/* The '[' opening the array that holds s[at], or SIZE_MAX. */
static size_t array_open(const char *s, size_t at)
{
    int depth = 0;
    for (size_t i = at; i > 0; i--) {
        char c = s[i - 1];
        if (c == '"')
            i = string_start(s, i - 1) + 1;
        else if (c == ']' || c == '}')
            depth++;
        else if ((c == '[' || c == '{') && depth > 0)
            depth--;
        else if (c == '[')
            return i - 1;
        else if (c == '{')
            return SIZE_MAX;
    }
    return SIZE_MAX;
}

/* The member name whose value holds the value starting at @at (through
 * enclosing arrays): [*k0, *k1) of @s. 0 when there is none. */
static int owner_key(const char *s, size_t at, size_t *k0, size_t *k1)
{
    for (;;) {
        size_t i = back_ws(s, at);
        if (i == 0)
            return 0;
        if (s[i - 1] == ':') {
            i = back_ws(s, i - 1);
            if (i == 0 || s[i - 1] != '"')
                return 0;
            *k1 = i - 1;
            *k0 = string_start(s, i - 1) + 1;
            return 1;
        }
        if (s[i - 1] != ',' && s[i - 1] != '[')
            return 0;
        size_t open = s[i - 1] == '[' ? i - 1 : array_open(s, i - 1);
        if (open == SIZE_MAX)
            return 0;
        at = open;
    }
}

/* 422 naming the member; 0 (not a member's value: malformed) otherwise. */
static int refuse(const char *s, size_t at, const char *got, struct curvd_problem *p)
{
    size_t k0, k1;
    char path[96];
    if (!owner_key(s, at, &k0, &k1))
        return 0;
    snprintf(path, sizeof path, "/%.*s", (int)(k1 - k0 < 80 ? k1 - k0 : 80), s + k0);
    return curvd_problem_set(p, CURVD_R_NON_FINITE, path, "a finite number", got,
                             "\"%s\" holds %s (byte %zu): the value is not finite, and JSON has "
                             "no spelling for it",
                             path + 1, got, at);
}

/* A number token ending at @end whose value overflows a double: its text
 * into @tok and its start into *@start. */
static int overflows(const char *s, size_t end, size_t *start, char *tok, size_t cap)
{
    size_t i = end;
    while (i > 0 && end - i < cap - 1 && strchr("0123456789eE+-.", s[i - 1]))
        i--;
    if (i == end || end - i >= cap - 1)
        return 0;
    memcpy(tok, s + i, end - i);
    tok[end - i] = 0;
    *start = i;
    return isinf(strtod(tok, NULL));
}

int curvd_nonfinite_literal(const char *s, size_t len, size_t at, struct curvd_problem *p)
{
    char tok[40];
    size_t start;
    if (at <= len && overflows(s, at, &start, tok, sizeof tok))
        return refuse(s, start, tok, p);
    /* jansson reports the position at or just past the token. */
    size_t lo = at > 10 ? at - 10 : 0, hi = at < len ? at : len;
    for (size_t i = hi + 1; i-- > lo;) {
        for (size_t w = 0; w < sizeof LITERALS / sizeof LITERALS[0]; w++) {
            size_t n = strlen(LITERALS[w]);
            if (len - i < n || memcmp(s + i, LITERALS[w], n) != 0 || i + n < at)
                continue;
            if (i > 0 && s[i - 1] == '-' && w != 0)
                continue; /* the tail of -Infinity */
            return refuse(s, i, LITERALS[w], p);
        }
    }
    return 0;
}
