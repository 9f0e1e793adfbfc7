/* SPDX-License-Identifier: MIT */
/* The session service; the rule it keeps is in service.h. */
#include "session/service.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http/log.h"
#include "http/metrics.h"
#include "http/pool.h"
#include "session/leases.h"
#include "session/replay.h"
#include "wire/random_hex.h"

/* Lend the daemon's workers to @o (srv->exec; NULL: none) for its
 * per-layer work; every optimizer the service holds came through here.
 * The pool numbers a batch's slots below its task count, and K-FAC's
 * batches have one task per block, so no more slots than blocks are lent:
 * per-slot scratch (two of the largest block) is not allocated for
 * threads that could never take part. Kinds without per-layer work ignore
 * it; when the scratch cannot be had the optimizer stays serial, which
 * gives the same results. With workers, K-FAC steps may also leave their
 * statistics to be folded after the reply (curv_opt_defer_stats; the
 * tail of step_committed), which changes no result. */
static void lend_workers(const struct curvd_server *srv, curv_opt *o)
{
    if (!srv->exec || !o)
        return;
    if (srv->pool)
        (void)curv_opt_defer_stats(o, 1, NULL);
    curv_executor ex = *srv->exec;
    size_t blocks = curv_layout_nblocks(curv_opt_layout(o));
    if (ex.workers > blocks)
        ex.workers = (unsigned)blocks;
    if (ex.workers > 1)
        (void)curv_opt_set_executor(o, &ex, NULL);
}

/* The optimizer of the stored session @s: its snapshot, then its step log
 * replayed (session/replay.h). 0 with *@out (and, when @committed is not
 * NULL, what the next commit compares with), 2 when it cannot be loaded
 * ever (@why), -1 when that may pass (out of memory). */
static int load_stored(struct curvd_server *srv, const struct curvd_session *s, curv_opt **out,
                       struct curvd_committed *committed, char *why, size_t why_cap)
{
    curv_error cerr;
    curv_status ls = curv_opt_load(s->state, s->state_len, out, &cerr);
    if (ls != CURV_OK) {
        curvd_log(CURVD_LOG_ERROR, "session %s has an unreadable state: %s", s->id, cerr.text);
        snprintf(why, why_cap, "%s", cerr.text);
        return ls == CURV_E_NOMEM ? -1 : 2; /* a blob libcurv refuses stays refused */
    }
    lend_workers(srv, *out);
    double seconds = 0;
    int64_t differed = 0;
    int nomem = 0;
    if (s->n_log && curvd_replay_log(*out, s, &seconds, &differed, &nomem, why, why_cap) != 0) {
        curvd_log(CURVD_LOG_ERROR, "session %s cannot be replayed: %s", s->id, why);
        curv_opt_free(*out);
        *out = NULL;
        return nomem ? -1 : 2;
    }
    if (s->n_log)
        curvd_metrics_replayed(srv->metrics, s->n_log, seconds);
    if (differed) /* kept, and the next step is a snapshot: see replay.h */
        curvd_log(CURVD_LOG_WARN,
                  "session %s: the replay of step %lld gave another update than the one "
                  "acknowledged (another build or CPU?); continuing from the replayed state",
                  s->id, (long long)differed);
    if (committed) {
        curvd_committed_set(committed, s->parts, s->n_parts);
        for (size_t i = 0; i < s->n_log; i++)
            committed->log_bytes += s->log[i].len;
        committed->log_seconds = seconds;
        if (differed)
            committed->log_bytes = SIZE_MAX / 2;
    }
    return 0;
}

int curvd_svc_load(void *ctx, const char *id, const char *tenant, curv_opt **out, size_t *bytes,
                   struct curvd_committed *committed, struct curvd_hold *hold, char *why,
                   size_t why_cap)
{
    struct curvd_server *srv = ctx;
    struct curvd_session s = {0};
    char err[256];
    /* The lease first: what is read after it is what its epoch may write over. */
    int lr = curvd_lease_take(srv, tenant, id, hold);
    if (lr != 0)
        return lr;
    int st = curvd_store_get(srv->store, tenant, id, 1, &s, err, sizeof err), rc = -1;
    if (st == CURVD_STORE_NOT_FOUND)
        rc = 1;
    else if (st != CURVD_STORE_OK)
        curvd_log(CURVD_LOG_ERROR, "loading session %s: %s", id, err);
    else
        rc = load_stored(srv, &s, out, committed, why, why_cap);
    *bytes = s.state_len;
    curvd_session_clear(&s);
    if (rc != 0) /* not held in memory after all: another daemon may take it */
        curvd_lease_give_up(srv, tenant, id, hold);
    return rc;
}

int curvd_svc_export(struct curvd_server *srv, const char *tenant, const char *id,
                     struct curvd_session *out, unsigned char **blob, size_t *len, char *err,
                     size_t errlen)
{
    int st = curvd_svc_get(srv, tenant, id, 1, out, err, errlen);
    if (st != CURVD_STORE_OK || !out->n_log)
        return st;
    curv_opt *o = NULL;
    char why[400];
    int rc = load_stored(srv, out, &o, NULL, why, sizeof why);
    if (rc == 0 && curv_opt_save(o, blob, len, NULL) != CURV_OK)
        rc = -1;
    curv_opt_free(o);
    if (rc == -1) {
        snprintf(err, errlen, "out of memory replaying the session's step log");
        return CURVD_SVC_NOMEM;
    }
    return CURVD_STORE_OK; /* rc 2: the raw snapshot stays in @out */
}

int curvd_svc_valid_id(const char *id)
{
    size_t n = 0;
    for (; id[n]; n++)
        if (!((id[n] >= '0' && id[n] <= '9') || (id[n] >= 'a' && id[n] <= 'f')))
            return 0;
    return n == CURVD_ID_LEN;
}

int curvd_svc_get(struct curvd_server *srv, const char *tenant, const char *id, int with_state,
                  struct curvd_session *out, char *err, size_t errlen)
{
    return curvd_svc_valid_id(id)
               ? curvd_store_get(srv->store, tenant, id, with_state, out, err, errlen)
               : CURVD_STORE_NOT_FOUND;
}

enum curvd_reg_status curvd_svc_take(struct curvd_server *srv, const char *id, const char *tenant,
                                     struct curvd_entry **e, int64_t *retry_ms, char *why,
                                     size_t why_cap)
{
    if (!curvd_svc_valid_id(id))
        return CURVD_REG_NOT_FOUND;
    /* Twice at most: a copy in memory that another daemon's hold made
     * stale is dropped, and loaded again under the lease just taken. */
    struct curvd_hold hold = {0};
    for (int pass = 0;; pass++) {
        enum curvd_reg_status rs =
            curvd_registry_begin(srv->reg, id, tenant, e, &hold, why, why_cap);
        if (rs == CURVD_REG_OK && (rs = curvd_lease_again(srv, *e, &hold)) != CURVD_REG_OK) {
            if (rs == CURVD_REG_NOT_FOUND)
                curvd_registry_drop(srv->reg, id);
            curvd_registry_end(srv->reg, *e, (*e)->bytes);
            if (rs == CURVD_REG_NOT_FOUND && !pass)
                continue;
            if (rs == CURVD_REG_NOT_FOUND) /* stale again at once: let the client retry */
                rs = CURVD_REG_ERROR;
        }
        if (rs == CURVD_REG_LEASED && retry_ms)
            *retry_ms = hold.retry_ms;
        return rs;
    }
}

/* A background refresh as a job of the worker pool (registry.h). */
struct bg_job {
    struct curvd_pool_job job; /* first: the pool hands back &job */
    curvd_bg_fn fn;
    void *arg;
    const curv_executor *ex; /* the pool's background one: idle workers help */
};

static void bg_job_run(struct curvd_pool_job *j)
{
    struct bg_job *b = (struct bg_job *)j;
    b->fn(b->arg, b->ex);
    free(b);
}

int curvd_svc_submit_background(void *ctx, curvd_bg_fn fn, void *arg)
{
    struct curvd_server *srv = ctx;
    struct bg_job *b = srv->pool ? malloc(sizeof *b) : NULL;
    if (!b)
        return -1; /* no workers: the step that applies it computes it */
    *b = (struct bg_job){.job = {.run = bg_job_run}, .fn = fn, .arg = arg, .ex = srv->bg_exec};
    curvd_pool_submit(srv->pool, &b->job);
    return 0;
}

void curvd_svc_give_back(struct curvd_server *srv, struct curvd_entry *e, size_t bytes)
{
    curvd_registry_end(srv->reg, e, bytes);
}

void curvd_svc_abandon(struct curvd_server *srv, struct curvd_entry *e)
{
    curvd_registry_drop(srv->reg, e->id);
}

int curvd_svc_create(struct curvd_server *srv, const char *tenant, curv_opt *o, const char *meta,
                     char id[CURVD_ID_LEN + 1], int64_t *created, char *err, size_t errlen)
{
    const struct curvd_svc_settings none = {0};
    return curvd_svc_create_ex(srv, tenant, o, meta, &none, id, created, err, errlen);
}

int curvd_svc_create_ex(struct curvd_server *srv, const char *tenant, curv_opt *o, const char *meta,
                        const struct curvd_svc_settings *x, char id[CURVD_ID_LEN + 1],
                        int64_t *created, char *err, size_t errlen)
{
    unsigned char *blob = NULL;
    curv_state_part *parts = NULL;
    size_t len = 0, n_parts = 0;
    curv_error cerr;
    if (curv_opt_save_parts(o, &blob, &len, &parts, &n_parts, &cerr) != CURV_OK) {
        curv_opt_free(o);
        snprintf(err, errlen, "%s", cerr.text);
        return CURVD_SVC_NOMEM;
    }
    curvd_random_hex(id, CURVD_ID_LEN / 2);
    lend_workers(srv, o);
    struct curvd_session_new row = {
        .id = id,
        .tenant = tenant,
        .optimizer = curv_opt_kind_name(curv_opt_kind_of(o)),
        .meta = meta,
        .step = (int64_t)curv_opt_steps(o),
        .state = {.blob = blob, .len = len, .parts = parts, .n_parts = n_parts},
        .has_idle_ttl = x->has_ttl,
        .idle_ttl_s = x->ttl_s,
        .name = x->name,
        .labels = x->labels,
        .has_history = x->has_history,
        .history_steps = x->history_steps};
    int st = curvd_store_create(srv->store, &row, created, err, errlen);
    struct curvd_committed committed = {0};
    if (st == CURVD_STORE_OK)
        curvd_committed_set(&committed, parts, n_parts);
    curv_free(blob);
    curv_free(parts);
    if (st != CURVD_STORE_OK ||
        curvd_registry_add(srv->reg, id, tenant, o, len, &committed) != CURVD_REG_OK) {
        curv_opt_free(o); /* when stored, the next request loads it */
        curvd_committed_clear(&committed);
    }
    return st;
}

int curvd_svc_delete(struct curvd_server *srv, const char *tenant, const char *id, char *err,
                     size_t errlen)
{
    int st = curvd_svc_valid_id(id) ? curvd_store_delete(srv->store, tenant, id, err, errlen)
                                    : CURVD_STORE_NOT_FOUND;
    if (st == CURVD_STORE_OK)
        curvd_registry_drop(srv->reg, id);
    return st;
}

int curvd_svc_reconfigured(struct curvd_server *srv, const char *tenant, struct curvd_entry *e,
                           const unsigned char *before, size_t before_len, const char *meta,
                           size_t *bytes, char *err, size_t errlen)
{
    unsigned char *blob = NULL;
    curv_state_part *parts = NULL;
    size_t len = 0, n_parts = 0;
    int st = CURVD_STORE_ERROR;
    if (curv_opt_save_parts(e->opt, &blob, &len, &parts, &n_parts, NULL) != CURV_OK) {
        snprintf(err, errlen, "out of memory saving the state");
    } else {
        /* A change of settings changes no array: the header part goes. */
        struct curvd_state_in in = {blob, len, parts, n_parts, e->committed.p, e->committed.n};
        st = curvd_store_update_state(srv->store, tenant, e->id, (int64_t)curv_opt_steps(e->opt),
                                      curvd_lease_epoch(srv, e), &in, meta, NULL, err, errlen);
        if (st == CURVD_STORE_OK)
            curvd_committed_set(&e->committed, parts, n_parts);
        else /* a failed commit may still have landed: compare with nothing */
            curvd_committed_clear(&e->committed);
        curv_free(blob);
        curv_free(parts);
    }
    if (st == CURVD_STORE_CONFLICT || st == CURVD_STORE_FENCED) {
        /* This copy is stale (the session stepped through another copy,
         * or another daemon holds it now): forget it; the next request
         * loads the committed state. */
        if (st == CURVD_STORE_FENCED)
            curvd_lease_fenced(srv, e, err);
        curvd_registry_drop(srv->reg, e->id);
    } else if (st != CURVD_STORE_OK) {
        curv_opt *old = NULL;
        if (curv_opt_load(before, before_len, &old, NULL) == CURV_OK) {
            curv_opt_free(e->opt);
            e->opt = old;
            lend_workers(srv, old);
        } else {
            curvd_registry_drop(srv->reg, e->id); /* cannot roll back: forget */
        }
    } else {
        *bytes = len;
    }
    return st;
}

int curvd_svc_snapshot(struct curvd_server *srv, struct curvd_entry *e, size_t *bytes, char *err,
                       size_t errlen)
{
    unsigned char *blob = NULL;
    curv_state_part *parts = NULL;
    size_t len = 0, n_parts = 0;
    if (curv_opt_save_parts(e->opt, &blob, &len, &parts, &n_parts, NULL) != CURV_OK) {
        snprintf(err, errlen, "out of memory saving the state");
        return CURVD_SVC_NOMEM;
    }
    struct curvd_state_in in = {blob, len, parts, n_parts, e->committed.p, e->committed.n};
    int st = curvd_store_snapshot(srv->store, e->tenant, e->id, (int64_t)curv_opt_steps(e->opt),
                                  curvd_lease_epoch(srv, e), &in, NULL, err, errlen);
    if (st == CURVD_STORE_FENCED) {
        curvd_lease_fenced(srv, e, err);
        curvd_registry_drop(srv->reg, e->id);
    } else if (st == CURVD_STORE_OK) {
        curvd_committed_set(&e->committed, parts, n_parts);
        *bytes = len;
        curvd_metrics_commit_form(srv->metrics, 1);
    }
    curv_free(blob);
    curv_free(parts);
    return st;
}

/* What follows a step's reply, on a worker (curvd_svc_commit): the fold
 * of its statistics, a snapshot. */
struct tail_job {
    struct curvd_pool_job job; /* first: the pool hands back &job */
    struct curvd_server *srv;
    struct curvd_entry *e;
    void *fold_input;
    void (*fold_free)(void *input);
    int snapshot;
};

/* Fold the statistics the step left (the optimizer's only pending work
 * is that step's: the session is held) and free its input. */
static void fold_tail(struct curvd_server *srv, struct curvd_entry *e, void *input,
                      void (*fold_free)(void *))
{
    if (!input)
        return;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    curv_opt_settle(e->opt);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    fold_free(input);
    curvd_metrics_fold(srv->metrics,
                       (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
}

/* Write it and give the session back; a failure keeps the log, which the
 * next step's commit tries to end again. */
static void snapshot_tail(struct curvd_server *srv, struct curvd_entry *e)
{
    char err[256];
    size_t bytes = e->bytes; /* the registry moves its total to the new charge */
    int st = curvd_svc_snapshot(srv, e, &bytes, err, sizeof err);
    if (st != CURVD_STORE_OK)
        curvd_log(CURVD_LOG_WARN, "session %s: its snapshot after step %llu failed: %s", e->id,
                  (unsigned long long)curv_opt_steps(e->opt), err);
    curvd_registry_end(srv->reg, e, bytes);
}

static void tail_job_run(struct curvd_pool_job *j)
{
    struct tail_job *tj = (struct tail_job *)j;
    fold_tail(tj->srv, tj->e, tj->fold_input, tj->fold_free);
    if (tj->snapshot)
        snapshot_tail(tj->srv, tj->e);
    else
        curvd_registry_end(tj->srv->reg, tj->e, tj->e->bytes);
    free(tj);
}

/* On the store's commit thread: the step is durable, or memory is ahead. */
static void step_committed(struct curvd_commit_job *job)
{
    struct curvd_svc_commit *s = (struct curvd_svc_commit *)(void *)job;
    struct curvd_entry *e = s->e;
    struct curvd_server *srv = s->srv;
    int st = job->item.status;
    size_t bytes = e->bytes;
    if (st == CURVD_STORE_OK)
        curvd_metrics_commit_form(srv->metrics, s->c.record == NULL);
    if (st == CURVD_STORE_OK && s->c.record && s->c.record_ahead)
        curvd_metrics_log_ahead(srv->metrics);
    else if (st == CURVD_STORE_FENCED)
        curvd_lease_fenced(srv, e, job->item.err);
    if (st == CURVD_STORE_OK && s->c.record) { /* only now is it stored */
        e->committed.log_bytes += s->c.record_len;
        e->committed.log_seconds += s->seconds;
    } else if (st == CURVD_STORE_OK) {
        curvd_committed_set(&e->committed, s->parts, s->n_parts);
        bytes = s->len;
    } else {
        curvd_registry_drop(srv->reg, e->id);
    }
    void *input = s->fold_input; /* ours now: @s goes with release */
    s->fold_input = NULL;
    if (st != CURVD_STORE_OK) /* the copy is dropped: nothing to fold for */
        fold_tail(srv, e, input, s->fold_free), input = NULL;
    s->reply(s, st, (long long)job->item.current_step, job->item.err);
    const int snapshot = st == CURVD_STORE_OK && s->snapshot_after;
    struct tail_job *tj = (input || snapshot) && srv->pool ? malloc(sizeof *tj) : NULL;
    if (tj) { /* queued before the reply goes: no later request of it runs first */
        *tj = (struct tail_job){.job = {.run = tail_job_run},
                                .srv = srv,
                                .e = e,
                                .fold_input = input,
                                .fold_free = s->fold_free,
                                .snapshot = snapshot};
        curvd_registry_hold_tail(srv->reg, e);
        curvd_pool_submit(srv->pool, &tj->job);
    } else {
        fold_tail(srv, e, input, s->fold_free); /* no workers or no memory: before the reply */
        if (snapshot)
            snapshot_tail(srv, e);
        else
            curvd_registry_end(srv->reg, e, bytes);
    }
    s->release(s);
}

/* Is there a step log for @e's step with record @rec at all? */
static int has_log(const struct curvd_config *cfg, const struct curvd_entry *e,
                   const struct curvd_record *rec)
{
    return !rec->failed && rec->len && cfg->snapshot_log_pct && cfg->snapshot_ms &&
           e->bytes >= cfg->snapshot_min;
}

int curvd_svc_log_room(const struct curvd_server *srv, const struct curvd_entry *e,
                       const struct curvd_record *rec)
{
    const struct curvd_config *cfg = &srv->cfg;
    double bytes = (double)e->committed.log_bytes + (double)rec->len;
    return has_log(cfg, e, rec) && bytes * 100 <= (double)cfg->snapshot_log_pct * (double)e->bytes;
}

enum curvd_durable_form curvd_svc_durable_form(const struct curvd_server *srv,
                                               const struct curvd_entry *e,
                                               const struct curvd_record *rec, double seconds)
{
    const struct curvd_config *cfg = &srv->cfg;
    if (!has_log(cfg, e, rec))
        return CURVD_FORM_SNAPSHOT;
    if (curvd_svc_log_room(srv, e, rec) &&
        (e->committed.log_seconds + seconds) * 1e3 <= (double)cfg->snapshot_ms)
        return CURVD_FORM_LOG;
    return e->bytes < cfg->snapshot_inline ? CURVD_FORM_SNAPSHOT : CURVD_FORM_LOG_THEN_SNAPSHOT;
}

void curvd_svc_commit_step(struct curvd_svc_commit *s)
{
    struct curvd_entry *e = s->e;
    s->c.state = (struct curvd_state_in){.blob = s->blob,
                                         .len = s->len,
                                         .parts = s->parts,
                                         .n_parts = s->n_parts,
                                         .stored = e->committed.p,
                                         .n_stored = e->committed.n};
    s->c.epoch = curvd_lease_epoch(s->srv, e);
    s->job = (struct curvd_commit_job){.item = {.tenant = s->tenant, .id = e->id, .c = &s->c},
                                       .done = step_committed};
    curvd_store_commit_submit(s->srv->store, &s->job);
}

/* Sessions expired per store transaction (the sweep repeats while full). */
#define EXPIRE_BATCH 256

static void drop_expired(void *ctx, const char *id)
{
    struct curvd_server *srv = ctx;
    curvd_registry_drop(srv->reg, id);
}

long curvd_svc_expire(struct curvd_server *srv, int64_t now_ms, char *err, size_t errlen)
{
    long total = 0;
    for (;;) {
        size_t n = 0;
        int st = curvd_store_expire(srv->store, now_ms, (int64_t)srv->cfg.idle_ttl_s, EXPIRE_BATCH,
                                    drop_expired, srv, &n, err, errlen);
        if (st != CURVD_STORE_OK)
            return total ? total : -1;
        curvd_metrics_expired(srv->metrics, n);
        total += (long)n;
        if (n < EXPIRE_BATCH)
            return total;
    }
}

int curvd_svc_set_history(struct curvd_server *srv, const char *tenant, const char *id, int has,
                          int64_t steps, char *err, size_t errlen)
{
    return curvd_svc_valid_id(id)
               ? curvd_store_set_history(srv->store, tenant, id, has, steps, err, errlen)
               : CURVD_STORE_NOT_FOUND;
}

int curvd_svc_set_idle_ttl(struct curvd_server *srv, const char *tenant, const char *id, int has,
                           int64_t ttl_s, char *err, size_t errlen)
{
    return curvd_svc_valid_id(id)
               ? curvd_store_set_idle_ttl(srv->store, tenant, id, has, ttl_s, err, errlen)
               : CURVD_STORE_NOT_FOUND;
}

struct curvd_sweeper {
    struct curvd_server *srv;
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC */
    int stop;
};

static void *sweep(void *arg)
{
    struct curvd_sweeper *s = arg;
    unsigned ms = s->srv->cfg.sweep_ms ? s->srv->cfg.sweep_ms : 1000;
    if (ms > curvd_leases_tick_ms(s->srv)) /* the same thread keeps the leases */
        ms = curvd_leases_tick_ms(s->srv);
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        struct timespec at;
        clock_gettime(CLOCK_MONOTONIC, &at);
        at.tv_sec += ms / 1000;
        at.tv_nsec += (long)(ms % 1000) * 1000000L;
        if (at.tv_nsec >= 1000000000L) {
            at.tv_sec++;
            at.tv_nsec -= 1000000000L;
        }
        while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &at) == 0)
            ;
        if (s->stop)
            break;
        pthread_mutex_unlock(&s->mu);
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        char err[256];
        long n = curvd_svc_expire(s->srv, (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, err,
                                  sizeof err);
        if (n < 0)
            curvd_log(CURVD_LOG_ERROR, "expiring idle sessions: %s", err);
        curvd_leases_keep(s->srv);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

struct curvd_sweeper *curvd_sweeper_start(struct curvd_server *srv)
{
    struct curvd_sweeper *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->srv = srv;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->mu, NULL);
    if (pthread_create(&s->th, NULL, sweep, s) != 0) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        free(s);
        return NULL;
    }
    return s;
}

void curvd_sweeper_stop(struct curvd_sweeper *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->th, NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

int curvd_svc_set_name_labels(struct curvd_server *srv, const char *tenant, const char *id,
                              int set_name, const char *name, int set_labels, const char *labels,
                              char *err, size_t errlen)
{
    return curvd_svc_valid_id(id)
               ? curvd_store_set_name_labels(srv->store, tenant, id, set_name, name, set_labels,
                                             labels, err, errlen)
               : CURVD_STORE_NOT_FOUND;
}
