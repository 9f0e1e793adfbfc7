/* SPDX-License-Identifier: MIT */
/* The problem table (errors.h) and libcurv's statuses mapped onto it. */
#include "http/errors.h"

static const struct {
    const char *reason;
    int status;
    const char *title;
} rows[] = {
#define CURVD__REASON_ROW(row, status, reason, title) {#reason, status, title},
    CURVD_REASON_MAP(CURVD__REASON_ROW)
#undef CURVD__REASON_ROW
};

static enum curvd_reason row_ok(enum curvd_reason r)
{
    return (unsigned)r < CURVD_R_COUNT ? r : CURVD_R_INTERNAL;
}

const char *curvd_reason_name(enum curvd_reason r)
{
    return rows[row_ok(r)].reason;
}

int curvd_reason_status(enum curvd_reason r)
{
    return rows[row_ok(r)].status;
}

const char *curvd_reason_title(enum curvd_reason r)
{
    return rows[row_ok(r)].title;
}

/* libcurv status → row, per operation; CURV_OK closes an operation's rows
 * with the row for every other status. */
static const struct {
    enum curvd_op op;
    curv_status st;
    enum curvd_reason r;
} by_status[] = {
    {CURVD_OP_STEP, CURV_E_NONFINITE, CURVD_R_NON_FINITE},
    {CURVD_OP_STEP, CURV_E_NOMEM, CURVD_R_OUT_OF_MEMORY},
    {CURVD_OP_STEP, CURV_E_SHAPE, CURVD_R_SHAPE_MISMATCH},
    {CURVD_OP_STEP, CURV_E_INVALID, CURVD_R_INVALID_INPUT},
    {CURVD_OP_STEP, CURV_E_STATE, CURVD_R_CALLBACK_OUT_OF_ORDER},
    {CURVD_OP_STEP, CURV_OK, CURVD_R_NUMERICAL_FAILURE},
    {CURVD_OP_NEW, CURV_E_NOMEM, CURVD_R_OUT_OF_MEMORY},
    {CURVD_OP_NEW, CURV_E_RANGE, CURVD_R_KIND_TOO_LARGE},
    {CURVD_OP_NEW, CURV_OK, CURVD_R_INVALID_CONFIG},
    {CURVD_OP_LOAD, CURV_E_NOMEM, CURVD_R_INVALID_STATE_NOMEM},
    {CURVD_OP_LOAD, CURV_OK, CURVD_R_INVALID_STATE},
    {CURVD_OP_RECONFIGURE, CURV_E_STATE, CURVD_R_CALLBACK_PENDING},
    {CURVD_OP_RECONFIGURE, CURV_OK, CURVD_R_INVALID_CONFIG},
};

enum curvd_reason curvd_reason_of_status(enum curvd_op op, curv_status st)
{
    for (size_t i = 0; i < sizeof by_status / sizeof by_status[0]; i++)
        if (by_status[i].op == op && (by_status[i].st == st || by_status[i].st == CURV_OK))
            return by_status[i].r;
    return CURVD_R_INTERNAL;
}
