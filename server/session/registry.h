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
    /* For the step's history: the loss the trainer sent with it, the
     * callbacks answered so far, and the seconds its earlier exchanges
     * spent per phase (http.h's CURVD_T_*). */
    double loss;
    int has_loss;
    unsigned callbacks;
    double spent[CURVD_PEND_PHASES];
};

/* The parts of a session's state as the store holds them now (their
 * division and stamps): what its next write compares with
 * (curvd_state_in.stored). Set only from what was read back or committed,
 * never ahead of a commit; none (@n 0) when not known, and then the next
 * write stores every part. */
struct curvd_committed {
    curv_state_part *p; /* owned */
    size_t n;
};

/* Remember @n parts @p (copied), replacing what @c held; out of memory,
 * @c forgets instead (which costs only a whole write). */
void curvd_committed_set(struct curvd_committed *c, const curv_state_part *p, size_t n);
/* Forget: free and zero. */
void curvd_committed_clear(struct curvd_committed *c);

struct curvd_entry {
    char id[CURVD_ID_LEN + 1];
    char tenant[64];
    curv_opt *opt;                    /* owned */
    size_t bytes;                     /* size of its state blob: the memory charge */
    struct curvd_committed committed; /* its state's parts in the store */
    struct curvd_pending pend;        /* valid while curv_opt_pending(opt) */
    /* private to registry.c */
    int busy;
    uint64_t last_used;
    struct curvd_entry *hnext, *prev, *next;
};

/* Fills *out with an optimizer for (id, tenant) read from durable storage,
 * *bytes with its charge and *committed with its stored parts: 0 found, 1
 * not found (or another tenant's), -1 error (nothing handed out). */
typedef int (*curvd_loader)(void *ctx, const char *id, const char *tenant, curv_opt **out,
                            size_t *bytes, struct curvd_committed *committed);

struct curvd_registry *curvd_registry_new(size_t max_sessions, size_t mem_budget, curvd_loader load,
                                          void *load_ctx);
void curvd_registry_free(struct curvd_registry *r);

enum curvd_reg_status { CURVD_REG_OK = 0, CURVD_REG_NOT_FOUND, CURVD_REG_BUSY, CURVD_REG_ERROR };

/* Take session @id of @tenant for exclusive use, loading it if needed. */
enum curvd_reg_status curvd_registry_begin(struct curvd_registry *r, const char *id,
                                           const char *tenant, struct curvd_entry **out);
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
 * is marked and freed by its curvd_registry_end(). */
void curvd_registry_drop(struct curvd_registry *r, const char *id);

/* 1 and the step and callback id when @id is in memory, idle, and waiting
 * for a callback's answer; 0 otherwise (a busy session is not looked at). */
int curvd_registry_pending(struct curvd_registry *r, const char *id, long long *step,
                           uint64_t *seq);

/* Counters for /metrics. */
void curvd_registry_stats(struct curvd_registry *r, size_t *sessions, size_t *bytes);

#endif
