/* SPDX-License-Identifier: MIT */
/* Every problem reason the daemon sends (its table is server/http/errors.h;
 * tests/server/http/test_errors.c checks that this one has each), with what the
 * client does about it besides reporting it: retry the request, or post
 * the step again. Any 503 is retried whatever its reason. */
#include <string.h>

#include "curvc_int.h"

static const struct {
    const char *reason;
    unsigned does;
} reasons[] = {
    {"MALFORMED_JSON", 0},
    {"BAD_TENSOR", 0},
    {"BAD_DATATYPE", 0},
    {"SHAPE_MISMATCH", 0},
    {"UNKNOWN_BLOCK", 0},
    {"MISSING_BLOCK", 0},
    {"DUPLICATE_BLOCK", 0},
    {"BAD_BASE64", 0},
    {"BAD_BINARY", 0},
    {"TOO_LARGE", 0},
    {"NON_FINITE", 0},
    {"NO_MEMORY", 0},
    {"INTERNAL", 0},
    {"UNSUPPORTED_MEDIA_TYPE", 0},
    {"UNKNOWN_MEMBER", 0},
    {"UNAUTHORIZED", 0},
    {"NOT_FOUND", 0},
    {"METHOD_NOT_ALLOWED", 0},
    {"PRECONDITION_FAILED", 0},
    {"TOO_MANY_REQUESTS", 0},
    {"DRAINING", 0},
    {"UNAVAILABLE", 0},
    {"NO_DATABASE", 0},
    {"DATABASE_BUSY", 0},
    {"DATABASE_ERROR", 0},
    {"OUT_OF_MEMORY", 0},
    {"UNKNOWN_OPTIMIZER", 0},
    {"INVALID_LAYOUT", 0},
    {"INVALID_CONFIG", 0},
    {"INVALID_QUERY", 0},
    {"INVALID_TTL", 0},
    {"INVALID_LABELS", 0},
    {"INVALID_STATE", 0},
    {"STATE_TOO_LARGE", 0},
    {"SESSION_BUSY", CURVC__RETRY},
    {"SESSION_CHANGED", 0},
    {"STEP_OUT_OF_ORDER", 0},
    {"NO_CALLBACK_PENDING", CURVC__RESTART_STEP},
    {"CALLBACK_OUT_OF_ORDER", 0},
    {"CALLBACK_PENDING", 0},
    {"INVALID_INPUT", 0},
    {"NUMERICAL_FAILURE", 0},
    {"STEP_MISMATCH", 0}, /* its own status, CURVC_E_STEP_MISMATCH */
    {"SESSION_UNLOADABLE", 0},
    {"BAD_FRAMING", 0},
    {"STORAGE_FULL", 0},
    {"SESSION_LEASED", 0}, /* a 503: retried with its Retry-After */
};

unsigned curvc__reason_does(const char *reason)
{
    for (size_t i = 0; reason && i < sizeof reasons / sizeof reasons[0]; i++)
        if (strcmp(reasons[i].reason, reason) == 0)
            return reasons[i].does;
    return 0;
}
