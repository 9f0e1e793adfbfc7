/* SPDX-License-Identifier: MIT */
/* nonfinite - naming a NaN / Infinity literal that made a body invalid JSON. */
#ifndef CURVD_NONFINITE_H
#define CURVD_NONFINITE_H

#include <stddef.h>

#include "wire/codec.h"

/*
 * curvd_nonfinite_literal - when jansson's error at byte @at of the @len
 * bytes of @s is a NaN, Infinity or -Infinity token or a number that
 * overflows a double, set @p to 422
 * NON_FINITE with the path of the member holding it and return -1; else
 * 0 (@p untouched).
 */
int curvd_nonfinite_literal(const char *s, size_t len, size_t at, struct curvd_problem *p);

#endif
