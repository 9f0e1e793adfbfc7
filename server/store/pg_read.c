/* SPDX-License-Identifier: MIT */
/* The PostgreSQL backend's reads (pg.h): sessions, their state and log,
 * stored replies, lists, counts and history, each in one snapshot. */
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "store/history.h"
#include "store/pg.h"

#define fail curvd_store_fail
#define no_memory curvd_store_no_memory

/* The row and its latest step's number and report (never a reply's body). */
#define SESSION_READ                                                                               \
    "SELECT s.id, s.tenant, s.optimizer, s.meta, s.created_at, s.updated_at, s.step,"              \
    " r.step, r.report, s.idle_ttl_s, s.name, s.labels, s.history_steps"                           \
    " FROM sessions AS s LEFT JOIN step_responses AS r ON r.session_id = s.id"

/* Row @row of a SESSION_READ result into @o (no state). */
static int read_session(const PGresult *r, int row, struct curvd_session *o)
{
    memset(o, 0, sizeof *o);
    if (pg_dup(r, row, 0, &o->id) || pg_dup(r, row, 1, &o->tenant) ||
        pg_dup(r, row, 2, &o->optimizer) || pg_dup(r, row, 3, &o->meta) ||
        pg_dup(r, row, 8, &o->last_report) || pg_dup(r, row, 10, &o->name) ||
        pg_dup(r, row, 11, &o->labels)) {
        curvd_session_clear(o);
        return -1;
    }
    o->created_at = pg_i64(r, row, 4);
    o->updated_at = pg_i64(r, row, 5);
    o->step = pg_i64(r, row, 6);
    o->last_step = pg_i64(r, row, 7);
    o->has_idle_ttl = !pg_null(r, row, 9);
    o->idle_ttl_s = pg_i64(r, row, 9);
    o->has_history = !pg_null(r, row, 12);
    o->history_steps = pg_i64(r, row, 12);
    return 0;
}

/* Session @id's state: its parts in order, into one buffer. */
static int read_state(struct pg_store *st, const char *id, struct curvd_session *o, char *err,
                      size_t errlen)
{
    PGresult *r = NULL;
    int status = pg_run_id(st,
                           "SELECT idx, stamp, bytes FROM state_parts WHERE session_id = $1"
                           " ORDER BY idx",
                           id, &r, "reading the state", err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    int n = PQntuples(r);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (size_t)PQgetlength(r, i, 2);
    curv_state_part *parts = n ? sqlite3_malloc64((size_t)n * sizeof *parts) : NULL;
    unsigned char *buf = total ? sqlite3_malloc64(total) : NULL;
    if ((n && !parts) || (total && !buf))
        status = no_memory(err, errlen);
    size_t off = 0;
    for (int i = 0; status == CURVD_STORE_OK && i < n; i++) {
        size_t len = (size_t)PQgetlength(r, i, 2);
        if (pg_i64(r, i, 0) != i)
            status =
                fail(err, errlen, CURVD_STORE_ERROR, "session %s: state part %d is missing", id, i);
        parts[i] = (curv_state_part){
            .offset = off, .len = len, .stamp = curvd_stamp_from_db(pg_i64(r, i, 1))};
        if (len)
            memcpy(buf + off, PQgetvalue(r, i, 2), len);
        off += len;
    }
    PQclear(r);
    if (status != CURVD_STORE_OK) {
        sqlite3_free(parts);
        sqlite3_free(buf);
        return status;
    }
    o->state = buf;
    o->state_len = total;
    o->parts = parts;
    o->n_parts = (size_t)n;
    return CURVD_STORE_OK;
}

/* Session @id's log rows in step order. */
static int read_log(struct pg_store *st, const char *id, struct curvd_session *o, char *err,
                    size_t errlen)
{
    PGresult *r = NULL;
    int status = pg_run_id(st,
                           "SELECT step, update_digest, record FROM step_log"
                           " WHERE session_id = $1 ORDER BY step",
                           id, &r, "reading the step log", err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    int n = PQntuples(r);
    if (n && !(o->log = sqlite3_malloc64((size_t)n * sizeof *o->log)))
        status = no_memory(err, errlen);
    for (int i = 0; status == CURVD_STORE_OK && i < n; i++) {
        struct curvd_log_entry *e = &o->log[i];
        memset(e, 0, sizeof *e);
        e->step = pg_i64(r, i, 0);
        snprintf(e->update_digest, sizeof e->update_digest, "%s", PQgetvalue(r, i, 1));
        e->len = (size_t)PQgetlength(r, i, 2);
        if (!(e->record = sqlite3_malloc64(e->len ? e->len : 1))) {
            status = no_memory(err, errlen);
            break;
        }
        memcpy(e->record, PQgetvalue(r, i, 2), e->len);
        o->n_log++;
    }
    PQclear(r);
    return status;
}

static int get_in_tx(struct pg_store *st, const char *tenant, const char *id, int with_state,
                     struct curvd_session *o, char *err, size_t errlen)
{
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    PGresult *r = NULL;
    int status = pg_run(st, SESSION_READ " WHERE s.id = $1 AND s.tenant = $2", &a, &r,
                        "reading a session", err, errlen);
    if (status == CURVD_STORE_OK && PQntuples(r) == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    else if (status == CURVD_STORE_OK && read_session(r, 0, o) != 0)
        status = no_memory(err, errlen);
    PQclear(r);
    if (status == CURVD_STORE_OK && with_state)
        status = read_state(st, id, o, err, errlen);
    if (status == CURVD_STORE_OK && with_state)
        status = read_log(st, id, o, err, errlen);
    return status;
}

int pg_get(struct curvd_store *base, const char *tenant, const char *id, int with_state,
           struct curvd_session *out, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_begin_read(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = get_in_tx(st, tenant, id, with_state, out, err, errlen);
    status = pg_end(st, status, err, errlen);
    pg_leave(st);
    return status;
}

int pg_list(struct curvd_store *base, const char *tenant, size_t max, int64_t after_time,
            const char *after_id, const char *label_key, const char *label_value,
            struct curvd_session_list *l, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    struct pg_args a = {0};
    pg_text(&a, tenant);
    pg_text(&a, after_id);
    pg_int(&a, after_time);
    pg_text(&a, label_key);
    pg_text(&a, label_value);
    pg_int(&a, (int64_t)max);
    PGresult *r = NULL;
    if (!(l->items = sqlite3_malloc64(max * sizeof *l->items)))
        return no_memory(err, errlen);
    int status =
        pg_query(st,
                 SESSION_READ " WHERE s.tenant = $1"
                              " AND ($2::text IS NULL OR (s.created_at, s.id) > ($3::bigint, $2))"
                              " AND ($4::text IS NULL OR (s.labels::jsonb ->> $4::text) = $5)"
                              " ORDER BY s.created_at, s.id LIMIT $6",
                 &a, &r, "listing sessions", err, errlen);
    int n = status == CURVD_STORE_OK ? PQntuples(r) : 0;
    for (int i = 0; status == CURVD_STORE_OK && i < n; i++) {
        if (read_session(r, i, &l->items[l->count]) != 0)
            status = no_memory(err, errlen);
        else
            l->count++;
    }
    PQclear(r);
    return status;
}

int pg_get_response(struct curvd_store *base, const char *tenant, const char *id,
                    struct curvd_step_response *o, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    PGresult *r = NULL;
    int status = pg_query(st,
                          "SELECT r.step, r.content_type, r.body, r.report, r.request_digest"
                          " FROM step_responses AS r JOIN sessions AS s ON s.id = r.session_id"
                          " WHERE r.session_id = $1 AND s.tenant = $2",
                          &a, &r, "reading a step response", err, errlen);
    if (status == CURVD_STORE_OK && PQntuples(r) == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no stored response for session %s", id);
    else if (status == CURVD_STORE_OK &&
             (pg_dup(r, 0, 1, &o->content_type) || pg_dup(r, 0, 3, &o->report) ||
              pg_dup(r, 0, 4, &o->request_digest)))
        status = no_memory(err, errlen);
    if (status == CURVD_STORE_OK) {
        o->step = pg_i64(r, 0, 0);
        o->body_len = (size_t)PQgetlength(r, 0, 2);
        if (o->body_len && !(o->body = sqlite3_malloc64(o->body_len)))
            status = no_memory(err, errlen);
        else if (o->body_len)
            memcpy(o->body, PQgetvalue(r, 0, 2), o->body_len);
    }
    PQclear(r);
    return status;
}

int pg_count(struct curvd_store *base, const char *tenant, int64_t *out, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    struct pg_args a = {0};
    pg_text(&a, tenant);
    PGresult *r = NULL;
    int status = pg_query(st, "SELECT count(*) FROM sessions WHERE $1::text IS NULL OR tenant = $1",
                          &a, &r, "counting sessions", err, errlen);
    if (status == CURVD_STORE_OK)
        *out = pg_i64(r, 0, 0);
    PQclear(r);
    return status;
}

/* The steps a reader sees are after this one: the bound (@d, the
 * default's parameter) counted back from the session's step ($1). */
#define KEPT_FROM(d) "(SELECT step - coalesce(history_steps, " d ") FROM sessions WHERE id = $1)"

/* The first step kept (0: none) and the page's rows into @p. */
static int history_rows(struct pg_store *st, const char *id, int64_t since, size_t size,
                        struct curvd_history_page *p, char *err, size_t errlen)
{
    int64_t keep = atomic_load(&st->base.history_default);
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_int(&a, keep);
    PGresult *r = NULL;
    int status = pg_run(st,
                        "SELECT coalesce(min(step), 0) FROM step_history"
                        " WHERE session_id = $1 AND step > " KEPT_FROM("$2"),
                        &a, &r, "reading the history", err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    p->oldest = pg_i64(r, 0, 0);
    PQclear(r);
    a = (struct pg_args){0};
    pg_text(&a, id);
    pg_int(&a, since);
    pg_int(&a, (int64_t)size + 1); /* one more: are there more? */
    pg_int(&a, keep);
    status = pg_run(st,
                    "SELECT step, at, callbacks, timing, report FROM step_history"
                    " WHERE session_id = $1 AND step > $2 AND step > " KEPT_FROM(
                        "$4") " ORDER BY step LIMIT $3",
                    &a, &r, "reading the history", err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    int n = PQntuples(r);
    p->more = (size_t)n > size;
    if (!(p->items = sqlite3_malloc64((size + 1) * sizeof *p->items)))
        status = no_memory(err, errlen);
    for (int i = 0; status == CURVD_STORE_OK && i < n && (size_t)i < size; i++) {
        struct curvd_history_entry *e = &p->items[p->count++];
        memset(e, 0, sizeof *e);
        e->step = pg_i64(r, i, 0);
        e->at = pg_i64(r, i, 1);
        e->callbacks = pg_i64(r, i, 2);
        if (pg_dup(r, i, 3, &e->timing) || pg_dup(r, i, 4, &e->report))
            status = no_memory(err, errlen);
    }
    PQclear(r);
    return status;
}

int pg_history(struct curvd_store *base, const char *tenant, const char *id, int64_t since,
               size_t page_size, struct curvd_history_page *p, char *err, size_t errlen)
{
    struct pg_store *st = pg_of(base);
    struct pg_args a = {0};
    pg_text(&a, id);
    pg_text(&a, tenant);
    PGresult *r = NULL;
    int status = pg_enter(st, err, errlen);
    if (status != CURVD_STORE_OK)
        return status;
    status = pg_begin_read(st, err, errlen);
    if (status == CURVD_STORE_OK)
        status = pg_run(st, "SELECT step FROM sessions WHERE id = $1 AND tenant = $2", &a, &r,
                        "reading a session's step", err, errlen);
    if (status == CURVD_STORE_OK && PQntuples(r) == 0)
        status = fail(err, errlen, CURVD_STORE_NOT_FOUND, "no session %s", id);
    if (status == CURVD_STORE_OK)
        p->latest = pg_i64(r, 0, 0);
    PQclear(r);
    if (status == CURVD_STORE_OK)
        status = history_rows(st, id, since, page_size, p, err, errlen);
    status = pg_end(st, status, err, errlen);
    pg_leave(st);
    return status;
}
