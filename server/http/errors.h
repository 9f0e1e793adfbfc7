/* SPDX-License-Identifier: MIT */
/*
 * The one table of problems: every condition the daemon answers with an
 * RFC 9457 problem, its HTTP status and its machine reason. A reply names
 * a row (enum curvd_reason), never a status or a reason of its own, so
 * every reason the daemon can send is a row here; api/openapi.yaml
 * documents each (tests/server/http/test_errors.c checks it and the clients).
 * libcurv statuses reach the table through curvd_reason_of_status.
 */
#ifndef CURVD_ERRORS_H
#define CURVD_ERRORS_H

#include <curv.h>

/*
 * X(row, HTTP status, reason, title): the row's name is the reason unless
 * one reason is sent with two statuses (TOO_LARGE, INVALID_STATE). Rows are
 * appended, never renumbered.
 */
#define CURVD_REASON_MAP(X)                                                                        \
    X(MALFORMED_JSON, 400, MALFORMED_JSON, "Malformed JSON")                                       \
    X(BAD_TENSOR, 400, BAD_TENSOR, "Invalid tensor object")                                        \
    X(BAD_DATATYPE, 400, BAD_DATATYPE, "Unsupported or mixed datatype")                            \
    X(SHAPE_MISMATCH, 400, SHAPE_MISMATCH, "Shape mismatch")                                       \
    X(UNKNOWN_BLOCK, 400, UNKNOWN_BLOCK, "Unknown block")                                          \
    X(MISSING_BLOCK, 400, MISSING_BLOCK, "Missing block")                                          \
    X(DUPLICATE_BLOCK, 400, DUPLICATE_BLOCK, "Duplicate block")                                    \
    X(BAD_BASE64, 400, BAD_BASE64, "Invalid base64 data")                                          \
    X(BAD_BINARY, 400, BAD_BINARY, "Invalid binary data")                                          \
    X(TOO_LARGE, 413, TOO_LARGE, "Tensor too large")                                               \
    X(NON_FINITE, 422, NON_FINITE, "Non-finite number")                                            \
    X(NO_MEMORY, 503, NO_MEMORY, "Out of memory")                                                  \
    X(INTERNAL, 500, INTERNAL, "Internal error")                                                   \
    X(UNSUPPORTED_MEDIA_TYPE, 415, UNSUPPORTED_MEDIA_TYPE, "Unsupported media type")               \
    X(UNKNOWN_MEMBER, 400, UNKNOWN_MEMBER, "Unknown member")                                       \
    X(UNAUTHORIZED, 401, UNAUTHORIZED, "No or unknown bearer token")                               \
    X(NOT_FOUND, 404, NOT_FOUND, "No such route or session")                                       \
    X(METHOD_NOT_ALLOWED, 405, METHOD_NOT_ALLOWED, "Method not allowed")                           \
    X(PRECONDITION_FAILED, 412, PRECONDITION_FAILED, "If-Match does not match")                    \
    X(TOO_MANY_REQUESTS, 429, TOO_MANY_REQUESTS, "Heavy-request queue full")                       \
    X(DRAINING, 503, DRAINING, "Shutting down")                                                    \
    X(UNAVAILABLE, 503, UNAVAILABLE, "Session cannot be loaded")                                   \
    X(NO_DATABASE, 503, NO_DATABASE, "Database unavailable")                                       \
    X(DATABASE_BUSY, 503, DATABASE_BUSY, "Database busy")                                          \
    X(DATABASE_ERROR, 500, DATABASE_ERROR, "Database error")                                       \
    X(OUT_OF_MEMORY, 503, OUT_OF_MEMORY, "Out of memory")                                          \
    X(UNKNOWN_OPTIMIZER, 400, UNKNOWN_OPTIMIZER, "Unknown optimizer")                              \
    X(INVALID_LAYOUT, 400, INVALID_LAYOUT, "Invalid layout")                                       \
    X(INVALID_CONFIG, 400, INVALID_CONFIG, "Invalid configuration")                                \
    X(INVALID_QUERY, 400, INVALID_QUERY, "Invalid query parameter")                                \
    X(INVALID_TTL, 400, INVALID_TTL, "Invalid idle TTL")                                           \
    X(INVALID_LABELS, 400, INVALID_LABELS, "Invalid name or labels")                               \
    X(INVALID_STATE, 400, INVALID_STATE, "Invalid state blob")                                     \
    X(INVALID_STATE_NOMEM, 503, INVALID_STATE, "Out of memory loading a state blob")               \
    X(STATE_TOO_LARGE, 422, STATE_TOO_LARGE, "Session over the memory budget")                     \
    X(KIND_TOO_LARGE, 422, TOO_LARGE, "Over the optimizer's own limit")                            \
    X(SESSION_BUSY, 409, SESSION_BUSY, "Session busy")                                             \
    X(SESSION_CHANGED, 409, SESSION_CHANGED, "Session changed meanwhile")                          \
    X(STEP_OUT_OF_ORDER, 409, STEP_OUT_OF_ORDER, "Wrong step number")                              \
    X(NO_CALLBACK_PENDING, 409, NO_CALLBACK_PENDING, "No step in progress")                        \
    X(CALLBACK_OUT_OF_ORDER, 409, CALLBACK_OUT_OF_ORDER, "Another callback awaited")               \
    X(CALLBACK_PENDING, 409, CALLBACK_PENDING, "A callback is awaited")                            \
    X(INVALID_INPUT, 400, INVALID_INPUT, "Invalid step input")                                     \
    X(NUMERICAL_FAILURE, 500, NUMERICAL_FAILURE, "Numerical failure")                              \
    X(STEP_MISMATCH, 422, STEP_MISMATCH, "Not the request that completed the step")                \
    X(SESSION_UNLOADABLE, 409, SESSION_UNLOADABLE, "Session state cannot be loaded")               \
    X(BAD_FRAMING, 400, BAD_FRAMING, "Ambiguous message length")                                   \
    X(STORAGE_FULL, 507, STORAGE_FULL, "Storage full")                                             \
    X(SESSION_LEASED, 503, SESSION_LEASED, "Session held by another daemon")

enum curvd_reason {
#define CURVD__REASON_ENUM(row, status, reason, title) CURVD_R_##row,
    CURVD_REASON_MAP(CURVD__REASON_ENUM)
#undef CURVD__REASON_ENUM
        CURVD_R_COUNT
};

/* curvd_reason_name / _status / _title - the row's reason, HTTP status and
 * title; an unknown row reads as INTERNAL. Never NULL. */
const char *curvd_reason_name(enum curvd_reason r);
int curvd_reason_status(enum curvd_reason r);
const char *curvd_reason_title(enum curvd_reason r);

/* What the daemon was doing when libcurv refused: the same status means
 * different things to a step, a create, an import and a PATCH. */
enum curvd_op {
    CURVD_OP_STEP,        /* curv_opt_step, curv_opt_resume */
    CURVD_OP_NEW,         /* curv_opt_new, curv_opt_state_bytes */
    CURVD_OP_LOAD,        /* curv_opt_load of an imported blob */
    CURVD_OP_RECONFIGURE, /* curv_opt_reconfigure */
};

/* curvd_reason_of_status - the row for libcurv's refusal @st during @op. */
enum curvd_reason curvd_reason_of_status(enum curvd_op op, curv_status st);

#endif
