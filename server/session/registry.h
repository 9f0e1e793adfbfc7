/* SPDX-License-Identifier: MIT */
/*
 * Sessions held in memory: id -> optimizer. Every acknowledged step is
 * already committed to the store, so evicting an idle session only frees
 * memory; the next request reloads it. One step at a time per session: a
 * session is "busy" from curvd_registry_begin() to curvd_registry_end(),
 * and a second caller is told so (the handler answers 409).
 */
#ifndef CURVD_REGISTRY_H
#define CURVD_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

#include "curv.h"
#include "wire/step_record.h"

#define CURVD_ID_LEN 32
/* Room for the phases a step's exchanges time (at least CURVD_T_COUNT). */
#define CURVD_PEND_PHASES 8

struct curvd_registry;

/* A step in progress, waiting for the trainer to answer a callback
 * (h_callbacks.c). Lives only in memory: a restart abandons the step and
 * the trainer posts it again. */
struct curvd_pending {
    long long step;      /* the step in progress */
    int dtype, encoding; /* of its replies: the step request's */
    curv_request req;    /* the callback awaiting an answer */
    unsigned char *last; /* the 202 reply that asked for it, owned */
    size_t last_len, last_json_len;
    uint64_t answered_seq; /* the callback whose answer produced @last; 0 if none */
    curv_request answered; /* that callback (no vectors): how to decode its answer again */
    /* What a re-post is compared with (wire/request_digest.h, text with
     * its NUL): the step's request, and the answer to @answered_seq. */
    char request_digest[41], answer_digest[41];
    /* For the step's history: the loss the trainer sent with it, the
     * callbacks answered so far, and the seconds its earlier exchanges
     * spent per phase (http.h's CURVD_T_*). */
    double loss;
    int has_loss;
    unsigned callbacks;
    double spent[CURVD_PEND_PHASES];
    /* The step's record for the step log: its input, then each answer
     * given (wire/step_record.h); freed once the step is committed. Its
     * input was written ahead into the session's file (@written_ahead),
     * at @ahead_offset when @ahead_ok (store.h's curvd_write_ahead). */
    struct curvd_record rec;
    int written_ahead, ahead_ok;
    int64_t ahead_gen;
    uint64_t ahead_offset;
    /* While the step is in its handler: its decoded input (not owned),
     * which the commit takes over when the optimizer left the statistics
     * to fold after the reply (api/steps.c); NULL otherwise. */
    struct curvd_step_in *input;
};

/* The parts of a session's state as the store holds them now (their
 * division and stamps): what its next write compares with
 * (curvd_state_in.stored). Set only from what was read back or committed,
 * never ahead of a commit; none (@n 0) when not known, and then the next
 * write stores every part. With them, what the step log holds after that
 * snapshot: its records' bytes and the library time they took, which
 * decide when the next snapshot is due (curvd_svc_durable_form). */
struct curvd_committed {
    curv_state_part *p; /* owned */
    size_t n;
    size_t log_bytes;
    double log_seconds;
};

/* Remember @n parts @p (copied), replacing what @c held, as a new
 * snapshot (the log after it is empty); out of memory, @c forgets the
 * parts instead (which costs only a whole write). */
void curvd_committed_set(struct curvd_committed *c, const curv_state_part *p, size_t n);
/* Forget: free and zero (the log's figures too). */
void curvd_committed_clear(struct curvd_committed *c);

/* What a loader tells of a session's lease (docs/CLUSTER.md "Leases and
 * fencing"). */
struct curvd_hold {
    int64_t epoch;    /* the lease epoch its state was read under (0: none taken) */
    int leased;       /* 1: this daemon holds that lease */
    int64_t retry_ms; /* with CURVD_REG_LEASED: until the other holder's lease ends */
};

#define CURVD_TENANT_MAX 64

struct curvd_entry {
    char id[CURVD_ID_LEN + 1];
    char tenant[CURVD_TENANT_MAX];
    curv_opt *opt;                    /* owned */
    size_t bytes;                     /* size of its state blob: the memory charge */
    struct curvd_committed committed; /* its state's parts in the store */
    struct curvd_pending pend;        /* valid while curv_opt_pending(opt) */
    /* The epoch every write of it carries (store.h's fencing): set when
     * it is loaded or its lease taken again, by the request holding it.
     * Whether the lease is held now is the registry's (curvd_registry_leased). */
    int64_t epoch;
    /* private to registry.c */
    int leased;                  /* the lease of @epoch is held (not given up while idle) */
    int64_t used_ms, renewed_ms; /* monotonic: last taken or given back; lease last renewed */
    int busy;
    int tail;               /* busy with its step's snapshot, after the reply: wait, not 409 */
    int dropped;            /* out of the table: freed once neither busy nor refreshing */
    struct registry_bg *bg; /* its optimizer's refresh queued or running off the step path */
    uint64_t last_used;
    struct curvd_entry *hnext, *prev, *next;
};

/* Fills *out with an optimizer for (id, tenant) read from durable storage,
 * *bytes with its charge, *committed with its stored parts and *hold with
 * the lease it was read under (*hold comes in as the caller of
 * curvd_registry_begin gave it: a lease already taken, or none): 0 found, 1 not found (or another
 * tenant's), 2 stored but its state cannot be loaded (@why[@why_cap] says
 * why; loading it again will not help), 3 another daemon holds its lease
 * (@hold->retry_ms), -1 error that may pass (nothing handed out). */
typedef int (*curvd_loader)(void *ctx, const char *id, const char *tenant, curv_opt **out,
                            size_t *bytes, struct curvd_committed *committed,
                            struct curvd_hold *hold, char *why, size_t why_cap);

struct curvd_registry *curvd_registry_new(size_t max_sessions, size_t mem_budget, curvd_loader load,
                                          void *load_ctx);
void curvd_registry_free(struct curvd_registry *r);

enum curvd_reg_status {
    CURVD_REG_OK = 0,
    CURVD_REG_NOT_FOUND,
    CURVD_REG_BUSY,
    CURVD_REG_ERROR,      /* cannot be loaded now (the store, memory) */
    CURVD_REG_UNLOADABLE, /* its stored state cannot be loaded, ever */
    CURVD_REG_LEASED      /* another daemon holds its lease (for a while) */
};

/* Take session @id of @tenant for exclusive use, loading it if needed;
 * when that is CURVD_REG_UNLOADABLE, @why[@why_cap] (may be NULL) says why;
 * CURVD_REG_LEASED, @hold->retry_ms (@hold may be NULL) how long the
 * other daemon's lease lasts. @hold goes to the loader as it comes. */
enum curvd_reg_status curvd_registry_begin(struct curvd_registry *r, const char *id,
                                           const char *tenant, struct curvd_entry **out,
                                           struct curvd_hold *hold, char *why, size_t why_cap);

/* Leases (docs/CLUSTER.md). curvd_registry_leased - is the lease of @s
 * (held by the caller) held now? curvd_registry_set_lease - it is, at
 * @epoch, renewed now. */
int curvd_registry_leased(struct curvd_registry *r, const struct curvd_entry *s);
void curvd_registry_set_lease(struct curvd_registry *r, struct curvd_entry *s, int64_t epoch);

/* A lease that is due: to renew, or to give up (@release: the session
 * was idle for the idle time, or it left memory: @gone). */
struct curvd_lease_due {
    char id[CURVD_ID_LEN + 1];
    char tenant[CURVD_TENANT_MAX];
    int64_t epoch;
    int release, gone;
};

/* curvd_registry_leases_due - at monotonic @now_ms: the held leases last
 * renewed @renew_ms ago or more, those of sessions idle @idle_ms or more
 * (to give up), and those of sessions that left memory since the last
 * call; *@out (free()) holds their count, the return value. -1: no memory. */
long curvd_registry_leases_due(struct curvd_registry *r, int64_t now_ms, int64_t renew_ms,
                               int64_t idle_ms, struct curvd_lease_due **out);

/* What became of a due lease of session @id at @epoch (ignored when its
 * entry has moved on to another epoch or is gone). */
enum curvd_lease_outcome { CURVD_LEASE_RENEWED, CURVD_LEASE_RELEASED, CURVD_LEASE_LOST };
void curvd_registry_lease_done(struct curvd_registry *r, const char *id, int64_t epoch,
                               enum curvd_lease_outcome outcome, int64_t now_ms);

/* The monotonic clock in ms, as the registry's lease times use it. */
int64_t curvd_registry_now_ms(void);
/* @s (held) stays held after its step's reply, for work that follows it
 * (a snapshot): until curvd_registry_end(), curvd_registry_begin() of it
 * waits instead of answering CURVD_REG_BUSY. */
void curvd_registry_hold_tail(struct curvd_registry *r, struct curvd_entry *s);
/* Give it back; @bytes is its new memory charge. Evicts idle sessions
 * while over the budget or the session count. */
void curvd_registry_end(struct curvd_registry *r, struct curvd_entry *s, size_t bytes);

/* Add a new session, taking @opt and what @committed holds on success
 * (*@committed is zeroed; on failure both stay with the caller).
 * CURVD_REG_BUSY if the id exists. */
enum curvd_reg_status curvd_registry_add(struct curvd_registry *r, const char *id,
                                         const char *tenant, curv_opt *opt, size_t bytes,
                                         struct curvd_committed *committed);

/* Drop @id from memory (after a delete). Waits for no one: a busy session
 * is marked and freed by its curvd_registry_end() (or, when a background
 * refresh of it is running, by that refresh's end). */
void curvd_registry_drop(struct curvd_registry *r, const char *id);

/* 1 and the step and callback id when @id is in memory, idle, and waiting
 * for a callback's answer; 0 otherwise (a busy session is not looked at). */
int curvd_registry_pending(struct curvd_registry *r, const char *id, long long *step,
                           uint64_t *seq);

/*
 * Refreshes off the step path (K-FAC max_staleness; curv/exec.h). With a
 * @submit, curvd_registry_end() hands the refresh a session's optimizer
 * has just left (curv_opt_refresh) to @submit(@ctx, fn, arg), which must
 * call fn(arg, ex) once, on one of the compute threads and never before it
 * returns (the registry's lock is held), with the executor whose idle
 * threads may help with its blocks (NULL: none), or return nonzero
 * (then the step that applies it computes it). While it is queued or
 * running the session stays usable (steps, exports, PATCH) and is never
 * evicted or freed. Without a submit (the default) nothing is handed on.
 */
typedef void (*curvd_bg_fn)(void *arg, const curv_executor *ex);
typedef int (*curvd_bg_submit)(void *ctx, curvd_bg_fn fn, void *arg);
void curvd_registry_set_background(struct curvd_registry *r, curvd_bg_submit submit, void *ctx);
/* Before a step on @s (held busy): if the step applies its background
 * refresh, wait for it when running, or take it back when still queued
 * (the step then computes it itself: a worker never waits for a job
 * queued behind it). */
void curvd_registry_before_step(struct curvd_registry *r, struct curvd_entry *s);

/* What became of the refreshes handed on: submitted, run by the pool,
 * taken back while queued, waited for by the step applying them. */
struct curvd_bg_stats {
    unsigned long long handed, run, taken_back, waited;
};
void curvd_registry_bg_stats(struct curvd_registry *r, struct curvd_bg_stats *out);

/* Counters for /metrics. */
void curvd_registry_stats(struct curvd_registry *r, size_t *sessions, size_t *bytes);

#endif
