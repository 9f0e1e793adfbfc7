/* SPDX-License-Identifier: MIT */
/*
 * The session service: create, take and give back, step commits, PATCH's
 * commit, delete, eviction's reload. It keeps one rule for the whole
 * daemon: memory is never ahead of the database. A session in memory
 * (session/registry.h) holds exactly its last committed state, plus at
 * most the step or change in progress of the one request that holds it;
 * when that work cannot be committed, the copy in memory is rolled back
 * or dropped, and the next request reloads the committed state. Handlers
 * call these and no registry or store write of their own.
 */
#ifndef CURVD_SERVICE_H
#define CURVD_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "server.h"
#include "session/registry.h"
#include "store/store.h"

/* A session's name and label values: at most this many bytes; labels at
 * most CURVD_LABELS_MAX, keys at most CURVD_LABEL_KEY_MAX bytes. */
#define CURVD_NAME_MAX 128
#define CURVD_LABELS_MAX 32
#define CURVD_LABEL_KEY_MAX 63

/* The largest idle TTL a session may ask for: 100 years of seconds. */
#define CURVD_MAX_IDLE_TTL_S 3153600000LL

/* What curvd_svc_create returns when the state could not even be saved. */
#define CURVD_SVC_NOMEM (-1)

/* curvd_svc_valid_id - 1 for a session id: 32 lower-case hex digits. */
int curvd_svc_valid_id(const char *id);

/* curvd_svc_load - the registry's loader (ctx: the server): a session not
 * in memory comes back from its last committed state; a state libcurv
 * refuses (damaged, or from a daemon that stored what this one refuses)
 * is 2 with libcurv's sentence in @why. */
int curvd_svc_load(void *ctx, const char *id, const char *tenant, curv_opt **out, size_t *bytes,
                   struct curvd_committed *committed, struct curvd_hold *hold, char *why,
                   size_t why_cap);

/*
 * curvd_svc_export - session @id of @tenant as committed, for an export:
 * *@out as curvd_svc_get() with its state, and, when steps were logged
 * after its snapshot, the state at its last step in *@blob (curv_free)
 * after a replay. When the replay fails for good, *@blob stays NULL and
 * @out's snapshot is what there is (raw, as for an unloadable session).
 * Returns the store's status, or CURVD_SVC_NOMEM.
 */
int curvd_svc_export(struct curvd_server *srv, const char *tenant, const char *id,
                     struct curvd_session *out, unsigned char **blob, size_t *len, char *err,
                     size_t errlen);

/* curvd_svc_get - session @id of @tenant as committed (with its state
 * blob when @with_state), read from the store: the store's status, and
 * NOT_FOUND for an id that is not one. */
int curvd_svc_get(struct curvd_server *srv, const char *tenant, const char *id, int with_state,
                  struct curvd_session *out, char *err, size_t errlen);

/* curvd_svc_take - session @id of @tenant for this request alone (an id
 * that is not one is CURVD_REG_NOT_FOUND), under its lease
 * (session/leases.h); *@e on CURVD_REG_OK; why it cannot be loaded in
 * @why[@why_cap] (may be NULL) on CURVD_REG_UNLOADABLE; on
 * CURVD_REG_LEASED, *@retry_ms (may be NULL) until another daemon's lease of it ends. */
enum curvd_reg_status curvd_svc_take(struct curvd_server *srv, const char *id, const char *tenant,
                                     struct curvd_entry **e, int64_t *retry_ms, char *why,
                                     size_t why_cap);

/* curvd_svc_submit_background - the registry's curvd_bg_submit: queue
 * fn(arg) on the worker pool (@ctx the server); -1 without workers. */
int curvd_svc_submit_background(void *ctx, curvd_bg_fn fn, void *arg);

/* curvd_svc_give_back - end the request's hold on @e; @bytes is its
 * memory charge now. */
void curvd_svc_give_back(struct curvd_server *srv, struct curvd_entry *e, size_t bytes);

/* curvd_svc_abandon - @e's optimizer went ahead (a step ran) and will not
 * be committed: forget the copy; the next request reloads. Give it back
 * as usual afterwards. */
void curvd_svc_abandon(struct curvd_server *srv, struct curvd_entry *e);

/*
 * curvd_svc_create - store optimizer @o (stolen) as a new session of
 * @tenant with summary @meta (JSON text), then hold it in memory. The new
 * id goes to @id and its creation time to *@created. Returns the store's
 * status, or CURVD_SVC_NOMEM when the state could not be saved (@err says
 * why); on failure nothing was created. @o is the service's either way.
 */
int curvd_svc_create(struct curvd_server *srv, const char *tenant, curv_opt *o, const char *meta,
                     char id[CURVD_ID_LEN + 1], int64_t *created, char *err, size_t errlen);

/* curvd_svc_settings - a new session's own settings: its idle TTL
 * (@has_ttl 0: none, the daemon's default applies), @name and @labels
 * (JSON text; either may be NULL), its history bound (@has_history 0:
 * the daemon's --history). All borrowed. */
struct curvd_svc_settings {
    int has_ttl;
    int64_t ttl_s;
    const char *name, *labels;
    int has_history;
    int64_t history_steps;
};

/* curvd_svc_create_ex - curvd_svc_create with the settings @x. */
int curvd_svc_create_ex(struct curvd_server *srv, const char *tenant, curv_opt *o, const char *meta,
                        const struct curvd_svc_settings *x, char id[CURVD_ID_LEN + 1],
                        int64_t *created, char *err, size_t errlen);

/* curvd_svc_set_history - set session @id's history bound (see
 * curvd_store_set_history). Returns the store's status. */
int curvd_svc_set_history(struct curvd_server *srv, const char *tenant, const char *id, int has,
                          int64_t steps, char *err, size_t errlen);

/* curvd_svc_set_name_labels - set session @id's name and/or labels (see
 * curvd_store_set_name_labels). Returns the store's status. */
int curvd_svc_set_name_labels(struct curvd_server *srv, const char *tenant, const char *id,
                              int set_name, const char *name, int set_labels, const char *labels,
                              char *err, size_t errlen);

/* curvd_svc_delete - delete session @id of @tenant from the store, then
 * from memory. Returns the store's status (NOT_FOUND for an id that is
 * not one). */
int curvd_svc_delete(struct curvd_server *srv, const char *tenant, const char *id, char *err,
                     size_t errlen);

/*
 * curvd_svc_expire - delete every session idle at @now_ms (unix ms: the
 * caller's clock, a fake one in tests) past its own TTL or the daemon's
 * --idle-ttl, from the store and then from memory, and count them in
 * /metrics. Return: the number deleted, or -1 (the store failed; @err).
 */
long curvd_svc_expire(struct curvd_server *srv, int64_t now_ms, char *err, size_t errlen);

/* curvd_svc_set_idle_ttl - set session @id's own TTL (@has 0: back to the
 * daemon's default). Returns the store's status. */
int curvd_svc_set_idle_ttl(struct curvd_server *srv, const char *tenant, const char *id, int has,
                           int64_t ttl_s, char *err, size_t errlen);

/* curvd_sweeper_start - a thread that calls curvd_svc_expire with the
 * wall clock every cfg.sweep_ms, and curvd_leases_keep (more often when
 * a third of the lease time is shorter); NULL when it cannot start.
 * curvd_sweeper_stop - stop and free it (NULL: no-op). */
struct curvd_sweeper *curvd_sweeper_start(struct curvd_server *srv);
void curvd_sweeper_stop(struct curvd_sweeper *s);

/*
 * curvd_svc_reconfigured - commit @e's optimizer, reconfigured in memory
 * from the state @before (curv_opt_save's blob of @before_len bytes), with
 * its new summary @meta. On CURVD_STORE_OK *@bytes is the new charge; on
 * CONFLICT (the session moved on through another copy) the copy is
 * dropped; on any other failure it is rolled back to @before.
 */
int curvd_svc_reconfigured(struct curvd_server *srv, const char *tenant, struct curvd_entry *e,
                           const unsigned char *before, size_t before_len, const char *meta,
                           size_t *bytes, char *err, size_t errlen);

/* How a step is made durable (struct curvd_config's snapshot_* rules). */
enum curvd_durable_form {
    CURVD_FORM_LOG,               /* a row of the step log */
    CURVD_FORM_LOG_THEN_SNAPSHOT, /* that, and a snapshot after the reply */
    CURVD_FORM_SNAPSHOT           /* the state's changed parts, with the step */
};

/* curvd_svc_log_room - may the step of @e whose record is @rec be a row of
 * the step log, by everything but its library time (the log's bytes
 * after it within snapshot_log_pct of the state, a log at all)? */
int curvd_svc_log_room(const struct curvd_server *srv, const struct curvd_entry *e,
                       const struct curvd_record *rec);

/*
 * curvd_svc_durable_form - the form of the step of @e being committed,
 * whose record is @rec and whose library time was @seconds: a snapshot
 * with the step when there is no log (off, a failed or missing record, a
 * state under snapshot_min) or a due snapshot is small (snapshot_inline);
 * else a log row, followed by a snapshot when the log would pass
 * snapshot_log_pct or snapshot_ms.
 */
enum curvd_durable_form curvd_svc_durable_form(const struct curvd_server *srv,
                                               const struct curvd_entry *e,
                                               const struct curvd_record *rec, double seconds);

/*
 * curvd_svc_snapshot - write @e's state (held, at a committed step) as its
 * snapshot, which deletes its log; on success its committed parts follow
 * and *@bytes is the state's size, its charge to give back with. Returns
 * the store's status, or CURVD_SVC_NOMEM.
 */
int curvd_svc_snapshot(struct curvd_server *srv, struct curvd_entry *e, size_t *bytes, char *err,
                       size_t errlen);

/*
 * struct curvd_svc_commit - a step to commit: @c (step, reply) and either
 * the session's new state in @blob/@parts, or its record in @c (a log
 * row; @seconds its library time) (borrowed until @release); the service
 * fills the rest. On the store's commit thread, once the outcome is
 * known, the service records the snapshot's parts or the log's growth
 * as committed (or drops the copy: memory is ahead), calls @reply with
 * the session still held, gives the session back (charged @len bytes
 * after a snapshot), then @release. With @snapshot_after (a logged step
 * whose snapshot is due), a snapshot of the state follows the reply
 * instead, on a worker (curvd_svc_snapshot), and that gives it back;
 * so does the fold of a step whose statistics were left pending
 * (@fold_input), which comes first.
 */
struct curvd_svc_commit {
    struct curvd_commit_job job; /* first: the store hands back &job */
    struct curvd_step_commit c;
    struct curvd_server *srv;
    struct curvd_entry *e;
    const char *tenant;
    const unsigned char *blob;
    const curv_state_part *parts;
    size_t len, n_parts;
    double seconds;
    int snapshot_after;
    /* A K-FAC step whose statistics are still to be folded
     * (curv_opt_stats_pending): its input, owned, which the service
     * frees with @fold_free once the optimizer is settled: after the
     * reply, on a worker, before a snapshot that follows. */
    void *fold_input;
    void (*fold_free)(void *input);
    void (*reply)(struct curvd_svc_commit *s, int status, long long current, const char *err);
    void (*release)(struct curvd_svc_commit *s);
};

/* curvd_svc_commit_step - hand @s to the group commit (see above); @s->c
 * needs only its step and reply members. */
void curvd_svc_commit_step(struct curvd_svc_commit *s);

#endif
