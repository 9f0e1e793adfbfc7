/* SPDX-License-Identifier: MIT */
#ifndef CURV_STATUS_H
#define CURV_STATUS_H

#include <stddef.h>

#if defined(__GNUC__)
#define CURV_API __attribute__((visibility("default")))
#else
#define CURV_API
#endif

/*
 * One table generates the enum, curv_status_name() and curv_strerror().
 * Codes are part of the wire contract (the daemon maps them to HTTP
 * statuses): never renumber, only append.
 */
#define CURV_STATUS_MAP(X)                                                                         \
    X(OK, 0, "success")                                                                            \
    X(NEED_INPUT, 1, "the step needs an answer from the trainer (see curv_opt_resume)")            \
    X(E_INVALID, 2, "invalid argument")                                                            \
    X(E_SHAPE, 3, "shape or length mismatch")                                                      \
    X(E_NONFINITE, 4, "non-finite value (NaN or Inf) in input")                                    \
    X(E_NOMEM, 5, "out of memory")                                                                 \
    X(E_RANGE, 6, "size out of range")                                                             \
    X(E_STATE, 7, "operation not valid in the current state")                                      \
    X(E_CORRUPT, 8, "corrupt or truncated state blob")                                             \
    X(E_VERSION, 9, "unsupported state format version")                                            \
    X(E_NUMERIC, 10, "numerical failure")                                                          \
    X(E_CONFIG, 11, "invalid configuration")

typedef enum {
#define CURV__STATUS_ENUM(name, code, text) CURV_##name = code,
    CURV_STATUS_MAP(CURV__STATUS_ENUM)
#undef CURV__STATUS_ENUM
} curv_status;

/* Room for one sentence naming the offending block, field and shape. */
#define CURV_ERROR_TEXT 320

/*
 * curv_error - optional out-parameter of every fallible call.
 * @status: the status the call returned.
 * @text:   a human-readable sentence, NUL-terminated.
 * Ownership: caller-allocated; passing NULL means "no detail wanted".
 */
typedef struct curv_error {
    curv_status status;
    char text[CURV_ERROR_TEXT];
} curv_error;

/* curv_strerror - a short generic description of @s; never NULL. */
CURV_API const char *curv_strerror(curv_status s);

/* curv_status_name - the enum name without prefix ("E_SHAPE"); never NULL. */
CURV_API const char *curv_status_name(curv_status s);

/* curv_error_clear - reset @err to CURV_OK with empty text; NULL is a no-op. */
CURV_API void curv_error_clear(curv_error *err);

#endif
