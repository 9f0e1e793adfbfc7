/* SPDX-License-Identifier: MIT */
/* The PostgreSQL backend's steps (pg.h): a group of steps in one
 * transaction, and the state written without a step (a snapshot, a change
 * of settings), each fenced by the session's lease epoch. */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "store/history.h"
#include "store/pg.h"

#define fail curvd_store_fail

/* The step's history row (unless the session keeps none) and, every
 * CURVD_HISTORY_PRUNE_EVERY steps, the rows past its bound deleted. */
static int record_history(struct pg_store *st, const char *id, const struct curvd_step_commit *c,
                          int64_t now, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_int(&a, c->step);
    pg_int(&a, now);
    pg_int(&a, c->callbacks);
    pg_text(&a, c->timing);
    pg_text(&a, c->report);
    pg_int(&a, atomic_load(&st->base.history_default));
    int status = pg_run(st,
                        "INSERT INTO step_history (session_id, step, at, callbacks, timing, report)"
                        " SELECT $1, $2, $3, $4, $5, $6 FROM sessions"
                        " WHERE id = $1 AND coalesce(history_steps, $7) > 0"
                        " ON CONFLICT (session_id, step) DO UPDATE SET at = excluded.at,"
                        " callbacks = excluded.callbacks, timing = excluded.timing,"
                        " report = excluded.report",
                        &a, NULL, "recording the step's history", err, errlen);
    if (status != CURVD_STORE_OK || c->step % CURVD_HISTORY_PRUNE_EVERY != 0)
        return status;
    return pg_prune_history(st, id, err, errlen);
}

/* One step inside the open transaction: the step, its state or log row,
 * the reply, the history. CONFLICT, FENCED and NOT_FOUND are the item's
 * own outcome (nothing written); any other failure spoils the whole
 * transaction. */
static int write_step(struct pg_store *st, struct curvd_commit_item *it)
{
    const struct curvd_step_commit *c = it->c;
    char *err = it->err;
    const size_t errlen = sizeof it->err;
    if (c->record_len > PG_MAX_BLOB || c->response_len > PG_MAX_BLOB)
        return fail(err, errlen, CURVD_STORE_INVALID,
                    "a record or reply too big for PostgreSQL (bytea: < 1 GiB)");
    int64_t now = curvd_store_now_ms();
    struct pg_args a = {0};
    pg_text(&a, it->id);
    pg_text(&a, it->tenant);
    pg_int(&a, c->step);
    pg_int(&a, now);
    pg_int(&a, c->epoch);
    int changes = 0;
    int status = pg_change(st,
                           "UPDATE sessions SET step = $3, updated_at = $4"
                           " WHERE id = $1 AND tenant = $2 AND step = $3::bigint - 1" FENCE("$5"),
                           &a, &changes, "updating a session", err, errlen);
    if (status == CURVD_STORE_OK && changes == 0)
        return pg_explain_miss(st, it->tenant, it->id, c->epoch, &it->current_step, err, errlen);
    if (status == CURVD_STORE_OK && !c->record) {
        status = pg_write_snapshot(st, it->id, &c->state, err, errlen);
    } else if (status == CURVD_STORE_OK) {
        a = (struct pg_args){0};
        pg_text(&a, it->id);
        pg_int(&a, c->step);
        pg_text(&a, c->update_digest);
        pg_blob(&a, c->record, c->record_len);
        status = pg_run(st,
                        "INSERT INTO step_log (session_id, step, update_digest, record)"
                        " VALUES ($1, $2, $3, $4)",
                        &a, NULL, "appending to the step log", err, errlen);
        if (status == CURVD_STORE_CONFLICT) /* a row there already: the store is not sound */
            status = CURVD_STORE_ERROR;
    }
    if (status == CURVD_STORE_OK) {
        a = (struct pg_args){0};
        pg_text(&a, it->id);
        pg_int(&a, c->step);
        pg_text(&a, c->content_type);
        pg_blob(&a, c->response, c->response_len);
        pg_text(&a, c->report);
        pg_text(&a, c->request_digest);
        status = pg_run(st,
                        "INSERT INTO step_responses"
                        " (session_id, step, content_type, body, report, request_digest)"
                        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (session_id) DO UPDATE SET"
                        " step = excluded.step, content_type = excluded.content_type,"
                        " body = excluded.body, report = excluded.report,"
                        " request_digest = excluded.request_digest",
                        &a, NULL, "storing a step response", err, errlen);
    }
    if (status == CURVD_STORE_OK)
        status = record_history(st, it->id, c, now, err, errlen);
    return status;
}

static int item_own(int status)
{
    return status == CURVD_STORE_OK || status == CURVD_STORE_CONFLICT ||
           status == CURVD_STORE_NOT_FOUND || status == CURVD_STORE_FENCED;
}

int pg_commit_group(struct curvd_store *base, struct curvd_commit_item **items, size_t n)
{
    struct pg_store *st = pg_of(base);
    char err[sizeof items[0]->err];
    int status = pg_enter(st, err, sizeof err);
    if (status == CURVD_STORE_OK) {
        status = pg_begin(st, err, sizeof err);
        for (size_t i = 0; status == CURVD_STORE_OK && i < n; i++) {
            items[i]->status = write_step(st, items[i]);
            if (!item_own(items[i]->status)) {
                status = items[i]->status;
                snprintf(err, sizeof err, "%s", items[i]->err);
            }
        }
        status = pg_end(st, status, err, sizeof err);
        pg_leave(st);
    }
    if (status != CURVD_STORE_OK)
        for (size_t i = 0; i < n; i++) {
            items[i]->status = status;
            snprintf(items[i]->err, sizeof items[i]->err, "%s", err);
        }
    return status;
}

/* In one transaction: the bound write @sql, which matches the session
 * only at its step and epoch; if it matched, @state as its snapshot;
 * else why not, and nothing written. */
static int conditional_write(struct pg_store *st, const char *sql, struct pg_args *a,
                             const struct curvd_state_in *state, const char *tenant, const char *id,
                             int64_t epoch, int64_t *current_step, char *err, size_t errlen)
{
    int changes = 0;
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_begin(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_change(st, sql, a, &changes, "updating a session", err, errlen);
    if (status == CURVD_STORE_OK && changes == 0)
        status = pg_explain_miss(st, tenant, id, epoch, current_step, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_write_snapshot(st, id, state, err, errlen);
    status = pg_end(st, status, err, errlen);
    pg_leave(st);
    return status;
}

int pg_update_state(struct curvd_store *base, const char *tenant, const char *id,
                    int64_t expected_step, int64_t epoch, const struct curvd_state_in *state,
                    const char *meta, int64_t *current_step, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    pg_text(&a, meta);
    pg_int(&a, curvd_store_now_ms());
    pg_int(&a, expected_step);
    pg_int(&a, epoch);
    return conditional_write(pg_of(base),
                             "UPDATE sessions SET meta = $3, updated_at = $4"
                             " WHERE id = $1 AND tenant = $2 AND step = $5" FENCE("$6"),
                             &a, state, tenant, id, epoch, current_step, err, errlen);
}

int pg_snapshot(struct curvd_store *base, const char *tenant, const char *id, int64_t step,
                int64_t epoch, const struct curvd_state_in *state, int64_t *current_step, char *err,
                size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    pg_int(&a, step);
    pg_int(&a, epoch);
    /* Matches the session only at step $3 and epoch $4, and changes nothing. */
    return conditional_write(pg_of(base),
                             "UPDATE sessions SET step = step"
                             " WHERE id = $1 AND tenant = $2 AND step = $3" FENCE("$4"),
                             &a, state, tenant, id, epoch, current_step, err, errlen);
}
