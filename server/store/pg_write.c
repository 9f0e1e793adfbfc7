/* SPDX-License-Identifier: MIT */
/* The PostgreSQL backend's writes (pg.h): sessions, steps in groups,
 * states in parts, snapshots and the log, settings, expiry. Writes of a
 * session's steps and state are fenced by the lease epoch in the same
 * statement that checks its step. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "store/history.h"
#include "store/pg.h"

#define fail curvd_store_fail

int pg_explain_miss(struct pg_store *st, const char *tenant, const char *id, int64_t epoch,
                    int64_t *current_step, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    PGresult *r = NULL;
    int status = pg_run(st, "SELECT step, lease_epoch FROM sessions WHERE id = $1 AND tenant = $2",
                        &a, &r, "reading a session's step", err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    if (PQntuples(r) == 0) {
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    } else if (epoch != CURVD_STORE_ANY_EPOCH && pg_i64(r, 0, 1) != epoch) {
        status = fail(err, errlen, CURVD_STORE_FENCED,
                      "session %s: lease epoch %lld is not the session's (%lld)", id,
                      (long long)epoch, (long long)pg_i64(r, 0, 1));
    } else {
        int64_t step = pg_i64(r, 0, 0);
        if (current_step)
            *current_step = step;
        status = fail(err, errlen, CURVD_STORE_CONFLICT, "session %s is at step %lld", id,
                      (long long)step);
    }
    PQclear(r);
    return status;
}

/* Inside the caller's write transaction: the parts of @s that changed
 * since what it says is stored, and no stored part past its last one. */
static int write_parts(struct pg_store *st, const char *id, const struct curvd_state_in *s,
                       char *err, size_t errlen)
{
    size_t n = curvd_state_part_count(s);
    int same = curvd_state_same_division(s), status = CURVD_STORE_OK;
    for (size_t i = 0; status == CURVD_STORE_OK && i < n; i++) {
        curv_state_part p = curvd_state_part_at(s, i);
        if (!curvd_state_part_changed(s, same, i))
            continue;
        if (p.len > PG_MAX_BLOB)
            return fail(err, errlen, CURVD_STORE_INVALID,
                        "a state part of %zu bytes is too big for PostgreSQL (bytea: < 1 GiB)",
                        p.len);
        struct pg_args a = {0};
        pg_text(&a, id);
        pg_int(&a, (int64_t)i);
        pg_int(&a, curvd_stamp_to_db(p.stamp));
        pg_blob(&a, (const unsigned char *)s->blob + p.offset, p.len);
        status = pg_run(st,
                        "INSERT INTO state_parts (session_id, idx, stamp, bytes)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT (session_id, idx) DO UPDATE SET"
                        " stamp = excluded.stamp, bytes = excluded.bytes",
                        &a, NULL, "writing a state part", err, errlen);
    }
    if (status != CURVD_STORE_OK || !curvd_state_may_trim(s))
        return status;
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_int(&a, (int64_t)n);
    return pg_run(st, "DELETE FROM state_parts WHERE session_id = $1 AND idx >= $2", &a, NULL,
                  "deleting state parts", err, errlen);
}

int pg_write_snapshot(struct pg_store *st, const char *id, const struct curvd_state_in *state,
                      char *err, size_t errlen)
{
    int status = write_parts(st, id, state, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_run_id(st, "DELETE FROM step_log WHERE session_id = $1", id, NULL,
                           "deleting the step log", err, errlen);
    return status;
}

int pg_create(struct curvd_store *base, const struct curvd_session_new *s, int64_t *created_at,
              char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    int64_t now = curvd_store_now_ms();
    struct curvd_state_in all = s->state; /* nothing stored yet: every part is written */
    all.stored = NULL;
    all.n_stored = 0;
    struct pg_args a = {0};
    pg_text(&a, s->id);
    pg_text(&a, s->tenant);
    pg_text(&a, s->optimizer);
    pg_text(&a, s->meta);
    pg_int(&a, now);
    pg_int(&a, s->step);
    if (s->has_idle_ttl)
        pg_int(&a, s->idle_ttl_s);
    else
        pg_text(&a, NULL);
    pg_text(&a, s->name);
    pg_text(&a, s->labels);
    if (s->has_history)
        pg_int(&a, s->history_steps);
    else
        pg_text(&a, NULL);
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_begin(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_run(st,
                        "INSERT INTO sessions (id, tenant, optimizer, meta, created_at, updated_at,"
                        " step, idle_ttl_s, name, labels, history_steps)"
                        " VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10)",
                        &a, NULL, "inserting a session", err, errlen);
    if (status == CURVD_STORE_CONFLICT)
        status = fail(err, errlen, CURVD_STORE_CONFLICT, "session %s exists", s->id);
    if (status == CURVD_STORE_OK)
        status = write_parts(st, s->id, &all, err, errlen);
    status = pg_end(st, status, err, errlen);
    pg_leave(st);
    if (status == CURVD_STORE_OK && created_at)
        *created_at = now;
    return status;
}

/* A write of one statement that must touch a row: NOT_FOUND if none. */
static int write_one(struct pg_store *st, const char *sql, struct pg_args *a, const char *id,
                     const char *what, char *err, size_t errlen)
{
    int changes = 0;
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_change(st, sql, a, &changes, what, err, errlen);
    if (status == CURVD_STORE_OK && changes == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    if (status == CURVD_STORE_OK)
        curvd_trouble_write_ok(&st->base.trouble);
    pg_leave(st);
    return status;
}

int pg_delete(struct curvd_store *base, const char *tenant, const char *id, char *err,
              size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    /* Its parts, reply, log and history go with the row (ON DELETE CASCADE). */
    return write_one(pg_of(base), "DELETE FROM sessions WHERE id = $1 AND tenant = $2", &a, id,
                     "deleting a session", err, errlen);
}

int pg_set_idle_ttl(struct curvd_store *base, const char *tenant, const char *id, int has,
                    int64_t ttl_s, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    if (has)
        pg_int(&a, ttl_s);
    else
        pg_text(&a, NULL);
    pg_int(&a, curvd_store_now_ms());
    return write_one(pg_of(base),
                     "UPDATE sessions SET idle_ttl_s = $3::bigint, updated_at = $4"
                     " WHERE id = $1 AND tenant = $2",
                     &a, id, "setting a TTL", err, errlen);
}

int pg_set_name_labels(struct curvd_store *base, const char *tenant, const char *id, int set_name,
                       const char *name, int set_labels, const char *labels, char *err,
                       size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    pg_text(&a, name);
    pg_text(&a, labels);
    pg_int(&a, set_name != 0);
    pg_int(&a, set_labels != 0);
    pg_int(&a, curvd_store_now_ms());
    /* $5 / $6: whether to set each; the other keeps its value. */
    return write_one(pg_of(base),
                     "UPDATE sessions SET name = CASE WHEN $5::int = 1 THEN $3::text ELSE name END,"
                     " labels = CASE WHEN $6::int = 1 THEN $4::text ELSE labels END,"
                     " updated_at = $7 WHERE id = $1 AND tenant = $2",
                     &a, id, "setting a name or labels", err, errlen);
}

int pg_expire(struct curvd_store *base, int64_t now, int64_t default_ttl_s, size_t max, char **ids,
              size_t *n, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    struct pg_args a = {0};
    pg_int(&a, now);
    pg_int(&a, default_ttl_s);
    pg_int(&a, (int64_t)max);
    PGresult *r = NULL;
    /* One statement; the condition is in the DELETE itself so that a
     * step committed meanwhile (a newer updated_at) is checked again. */
#define IDLE "coalesce(idle_ttl_s, $2) > 0 AND updated_at + 1000 * coalesce(idle_ttl_s, $2) <= $1"
    int status = pg_query(st,
                          "DELETE FROM sessions WHERE id IN (SELECT id FROM sessions WHERE " IDLE
                          " LIMIT $3) AND " IDLE " RETURNING id",
                          &a, &r, "expiring sessions", err, errlen);
#undef IDLE
    int rows = status == CURVD_STORE_OK ? PQntuples(r) : 0;
    for (int i = 0; status == CURVD_STORE_OK && i < rows && (size_t)i < max; i++) {
        if (pg_dup(r, i, 0, &ids[*n]) != 0)
            status = curvd_store_no_memory(err, errlen);
        else
            (*n)++;
    }
    PQclear(r);
    return status;
}

int pg_prune_history(struct pg_store *st, const char *id, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_int(&a, atomic_load(&st->base.history_default));
    return pg_run(st,
                  "DELETE FROM step_history WHERE session_id = $1 AND step <="
                  " (SELECT step - coalesce(history_steps, $2) FROM sessions WHERE id = $1)",
                  &a, NULL, "pruning the history", err, errlen);
}

int pg_set_history(struct curvd_store *base, const char *tenant, const char *id, int has,
                   int64_t steps, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    if (has)
        pg_int(&a, steps);
    else
        pg_text(&a, NULL);
    pg_int(&a, curvd_store_now_ms());
    int changes = 0;
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_begin(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_change(st,
                           "UPDATE sessions SET history_steps = $3::bigint, updated_at = $4"
                           " WHERE id = $1 AND tenant = $2",
                           &a, &changes, "setting the history bound", err, errlen);
    if (status == CURVD_STORE_OK && changes == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    if (status == CURVD_STORE_OK)
        status = pg_prune_history(st, id, err, errlen);
    status = pg_end(st, status, err, errlen);
    pg_leave(st);
    return status;
}
