/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

const char *curv_strerror(curv_status s)
{
    switch (s) {
#define CURV__STATUS_TEXT(name, code, text)                                                        \
    case CURV_##name:                                                                              \
        return text;
        CURV_STATUS_MAP(CURV__STATUS_TEXT)
#undef CURV__STATUS_TEXT
    }
    return "unknown status";
}

const char *curv_status_name(curv_status s)
{
    switch (s) {
#define CURV__STATUS_NAME(name, code, text)                                                        \
    case CURV_##name:                                                                              \
        return #name;
        CURV_STATUS_MAP(CURV__STATUS_NAME)
#undef CURV__STATUS_NAME
    }
    return "UNKNOWN";
}

void curv_error_clear(curv_error *err)
{
    if (err) {
        err->status = CURV_OK;
        err->text[0] = '\0';
    }
}

curv_status curv__fail(curv_error *err, curv_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->text, sizeof err->text, fmt, ap);
        va_end(ap);
        err->status = status;
    }
    return status;
}

const char *curv_version(void)
{
#define CURV__STR2(x) #x
#define CURV__STR(x) CURV__STR2(x)
    return CURV__STR(CURV_VERSION_MAJOR) "." CURV__STR(CURV_VERSION_MINOR) "." CURV__STR(
        CURV_VERSION_PATCH);
}
