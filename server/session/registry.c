/* SPDX-License-Identifier: MIT */
/* A chained hash table plus an LRU list, under one mutex. The mutex guards
 * only the table; optimizer work happens outside it on a session the
 * caller holds busy, so one slow step never blocks other sessions. */
#include "session/registry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curv/exec.h"

#define NBUCKETS 4096

/* A background refresh of an entry's optimizer, owned by the submitted
 * call (bg_run frees it). @s NULL: taken back by curvd_registry_before_step
 * while queued, so bg_run only frees it. */
struct registry_bg {
    struct curvd_registry *r;
    struct curvd_entry *s;
    curv_refresh *job;
    int running;
};

struct curvd_registry {
    pthread_mutex_t mu;
    pthread_cond_t bg_done; /* a background refresh, a held tail, or a load ended */
    curvd_bg_submit submit;
    void *submit_ctx;
    struct curvd_bg_stats bg_stats;
    struct curvd_entry *bucket[NBUCKETS];
    struct curvd_entry lru; /* sentinel: lru.next is the most recent */
    size_t count, bytes, max_sessions, budget;
    uint64_t clock;
    curvd_loader load;
    void *load_ctx;
    struct gone_lease *gone;     /* leases of sessions that left memory, to give up */
    struct registry_load *loads; /* ids being loaded (curvd_registry_begin) */
};

/* An id being loaded, on its loader's stack while it loads. */
struct registry_load {
    char id[CURVD_ID_LEN + 1];
    struct registry_load *next;
};

/* A lease held by a session that left memory (evicted, dropped): given
 * up at the next curvd_registry_leases_due. */
struct gone_lease {
    struct curvd_lease_due due;
    struct gone_lease *next;
};

int64_t curvd_registry_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t hash(const char *id)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 1099511628211ULL;
    return (size_t)(h % NBUCKETS);
}

struct curvd_registry *curvd_registry_new(size_t max_sessions, size_t mem_budget, curvd_loader load,
                                          void *load_ctx)
{
    struct curvd_registry *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->bg_done, NULL);
    r->lru.next = r->lru.prev = &r->lru;
    r->max_sessions = max_sessions ? max_sessions : 1;
    r->budget = mem_budget;
    r->load = load;
    r->load_ctx = load_ctx;
    return r;
}

void curvd_committed_set(struct curvd_committed *c, const curv_state_part *p, size_t n)
{
    curv_state_part *copy = n ? malloc(n * sizeof *copy) : NULL;
    if (copy)
        memcpy(copy, p, n * sizeof *copy);
    free(c->p);
    c->p = copy;
    c->n = copy ? n : 0;
    c->log_bytes = 0;
    c->log_seconds = 0;
}

void curvd_committed_clear(struct curvd_committed *c)
{
    free(c->p);
    *c = (struct curvd_committed){0};
}

static void free_session(struct curvd_entry *s)
{
    curv_opt_free(s->opt);
    curvd_committed_clear(&s->committed);
    free(s->pend.last);
    curvd_record_clear(&s->pend.rec);
    free(s);
}

void curvd_registry_free(struct curvd_registry *r)
{
    if (!r)
        return;
    for (struct curvd_entry *s = r->lru.next, *n; s != &r->lru; s = n) {
        n = s->next;
        free_session(s);
    }
    while (r->gone) {
        struct gone_lease *g = r->gone;
        r->gone = g->next;
        free(g);
    }
    pthread_cond_destroy(&r->bg_done);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static struct curvd_entry *find(struct curvd_registry *r, const char *id)
{
    for (struct curvd_entry *s = r->bucket[hash(id)]; s; s = s->hnext)
        if (strcmp(s->id, id) == 0)
            return s;
    return NULL;
}

static void lru_unlink(struct curvd_entry *s)
{
    s->prev->next = s->next;
    s->next->prev = s->prev;
}

static void lru_front(struct curvd_registry *r, struct curvd_entry *s)
{
    s->next = r->lru.next;
    s->prev = &r->lru;
    r->lru.next->prev = s;
    r->lru.next = s;
    s->last_used = ++r->clock;
    s->used_ms = curvd_registry_now_ms();
}

/* Under r->mu: @s leaves memory; its lease, if held, is to be given up
 * (out of memory, it just runs out). */
static void lease_leaves(struct curvd_registry *r, const struct curvd_entry *s)
{
    struct gone_lease *g = s->leased ? malloc(sizeof *g) : NULL;
    if (!g)
        return;
    g->due = (struct curvd_lease_due){.epoch = s->epoch, .release = 1, .gone = 1};
    memcpy(g->due.id, s->id, sizeof g->due.id);
    memcpy(g->due.tenant, s->tenant, sizeof g->due.tenant);
    g->next = r->gone;
    r->gone = g;
}

static void unlink_all(struct curvd_registry *r, struct curvd_entry *s)
{
    lease_leaves(r, s);
    struct curvd_entry **pp = &r->bucket[hash(s->id)];
    while (*pp != s)
        pp = &(*pp)->hnext;
    *pp = s->hnext;
    lru_unlink(s);
    r->count--;
    r->bytes -= s->bytes;
}

/* Evict least recently used idle sessions while over either limit; a
 * session in the middle of a callback exchange goes last (evicting it
 * abandons that step). */
static void evict(struct curvd_registry *r)
{
    for (int pass = 0; pass < 2; pass++) {
        struct curvd_entry *s = r->lru.prev;
        while (s != &r->lru && (r->count > r->max_sessions || r->bytes > r->budget)) {
            struct curvd_entry *prev = s->prev;
            if (!s->busy && !s->bg && (pass || !curv_opt_pending(s->opt))) {
                unlink_all(r, s);
                free_session(s);
            }
            s = prev;
        }
    }
}

static void insert(struct curvd_registry *r, struct curvd_entry *s)
{
    size_t b = hash(s->id);
    s->hnext = r->bucket[b];
    r->bucket[b] = s;
    lru_front(r, s);
    r->count++;
    r->bytes += s->bytes;
}

static struct curvd_entry *new_session(const char *id, const char *tenant, curv_opt *opt,
                                       size_t bytes)
{
    struct curvd_entry *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    snprintf(s->id, sizeof s->id, "%s", id);
    snprintf(s->tenant, sizeof s->tenant, "%s", tenant);
    s->opt = opt;
    s->bytes = bytes;
    return s;
}

/* Under r->mu: is @id being loaded by another caller? */
static int loading(const struct curvd_registry *r, const char *id)
{
    for (const struct registry_load *l = r->loads; l; l = l->next)
        if (strcmp(l->id, id) == 0)
            return 1;
    return 0;
}

/* Under r->mu: @id's entry when it is in memory, after waiting for its
 * held tail and for another caller's load of it; NULL when not there. */
static struct curvd_entry *find_settled(struct curvd_registry *r, const char *id,
                                        const char *tenant)
{
    for (;;) {
        struct curvd_entry *s = find(r, id);
        if (s && !(s->busy && s->tail && strcmp(s->tenant, tenant) == 0))
            return s;
        if (!s && !loading(r, id))
            return NULL;
        pthread_cond_wait(&r->bg_done, &r->mu); /* a tail or a load ends soon */
    }
}

/* Under r->mu: take @s (found) for @tenant, or say why not. */
static enum curvd_reg_status take_found(struct curvd_registry *r, struct curvd_entry *s,
                                        const char *tenant, struct curvd_entry **out)
{
    if (strcmp(s->tenant, tenant) != 0)
        return CURVD_REG_NOT_FOUND;
    if (s->busy)
        return CURVD_REG_BUSY;
    s->busy = 1;
    lru_unlink(s);
    lru_front(r, s);
    *out = s;
    return CURVD_REG_OK;
}

/* Load @id (the lock not held) into a new entry, or say why not. */
static enum curvd_reg_status load_entry(struct curvd_registry *r, const char *id,
                                        const char *tenant, struct curvd_hold *hold,
                                        struct curvd_entry **fresh, char *why, size_t why_cap)
{
    curv_opt *opt = NULL;
    size_t bytes = 0;
    struct curvd_committed committed = {0};
    struct curvd_hold held = hold ? *hold : (struct curvd_hold){0};
    char text[256] = "";
    int lr = r->load ? r->load(r->load_ctx, id, tenant, &opt, &bytes, &committed, &held, text,
                               sizeof text)
                     : 1;
    if (lr == 2 && why)
        snprintf(why, why_cap, "%s", text);
    if (lr == 3 && hold)
        hold->retry_ms = held.retry_ms;
    static const enum curvd_reg_status of_load[] = {CURVD_REG_OK, CURVD_REG_NOT_FOUND,
                                                    CURVD_REG_UNLOADABLE, CURVD_REG_LEASED};
    if (lr != 0)
        return lr > 0 && lr <= 3 ? of_load[lr] : CURVD_REG_ERROR;
    if (!(*fresh = new_session(id, tenant, opt, bytes))) {
        curv_opt_free(opt);
        curvd_committed_clear(&committed);
        return CURVD_REG_ERROR;
    }
    (*fresh)->committed = committed;
    (*fresh)->epoch = held.epoch;
    (*fresh)->leased = held.leased;
    (*fresh)->renewed_ms = curvd_registry_now_ms();
    return CURVD_REG_OK;
}

enum curvd_reg_status curvd_registry_begin(struct curvd_registry *r, const char *id,
                                           const char *tenant, struct curvd_entry **out,
                                           struct curvd_hold *hold, char *why, size_t why_cap)
{
    pthread_mutex_lock(&r->mu);
    struct curvd_entry *s = find_settled(r, id, tenant);
    if (s) {
        enum curvd_reg_status st = take_found(r, s, tenant, out);
        pthread_mutex_unlock(&r->mu);
        return st;
    }
    /* Load outside the lock (reading a large blob must not stall others),
     * one caller per id: a second load would take the lease a second time
     * and fence the first copy's writes. */
    struct registry_load me = {.next = r->loads};
    snprintf(me.id, sizeof me.id, "%s", id);
    r->loads = &me;
    pthread_mutex_unlock(&r->mu);
    struct curvd_entry *fresh = NULL;
    enum curvd_reg_status st = load_entry(r, id, tenant, hold, &fresh, why, why_cap);
    pthread_mutex_lock(&r->mu);
    struct registry_load **pp = &r->loads;
    while (*pp != &me)
        pp = &(*pp)->next;
    *pp = me.next;
    pthread_cond_broadcast(&r->bg_done);
    if (st == CURVD_REG_OK && (s = find(r, id))) { /* added meanwhile (a create) */
        free_session(fresh);
        st = take_found(r, s, tenant, out);
    } else if (st == CURVD_REG_OK) {
        fresh->busy = 1;
        insert(r, fresh);
        evict(r);
        *out = fresh;
    }
    pthread_mutex_unlock(&r->mu);
    return st;
}

void curvd_registry_set_background(struct curvd_registry *r, curvd_bg_submit submit, void *ctx)
{
    pthread_mutex_lock(&r->mu);
    r->submit = submit;
    r->submit_ctx = ctx;
    pthread_mutex_unlock(&r->mu);
}

/* The submitted call: run the refresh unless it was taken back, then let
 * the session go (freeing it if it was dropped meanwhile). */
static void bg_run(void *arg, const curv_executor *ex)
{
    struct registry_bg *b = arg;
    struct curvd_registry *r = b->r;
    pthread_mutex_lock(&r->mu);
    b->running = b->s != NULL;
    pthread_mutex_unlock(&r->mu);
    if (b->running)
        curv_refresh_run_on(b->job, ex);
    pthread_mutex_lock(&r->mu);
    struct curvd_entry *s = b->s, *gone = NULL;
    if (s) {
        r->bg_stats.run++;
        s->bg = NULL;
        if (s->dropped && !s->busy)
            gone = s;
        pthread_cond_broadcast(&r->bg_done);
    }
    pthread_mutex_unlock(&r->mu);
    if (gone)
        free_session(gone);
    free(b);
}

/* Under r->mu, @s still held: hand on the refresh its last step left. */
static void start_refresh(struct curvd_registry *r, struct curvd_entry *s)
{
    if (!r->submit || s->bg)
        return;
    curv_refresh *job = curv_opt_refresh(s->opt);
    if (!job || !curv_refresh_claim(job))
        return; /* none, or handed on already (the step computes it if not run) */
    struct registry_bg *b = calloc(1, sizeof *b);
    if (!b)
        return;
    *b = (struct registry_bg){.r = r, .s = s, .job = job};
    s->bg = b;
    if (r->submit(r->submit_ctx, bg_run, b) != 0) {
        s->bg = NULL;
        free(b);
        return;
    }
    r->bg_stats.handed++;
}

void curvd_registry_before_step(struct curvd_registry *r, struct curvd_entry *s)
{
    pthread_mutex_lock(&r->mu);
    struct registry_bg *b = s->bg;
    if (b && curv_refresh_due(b->job) <= curv_opt_steps(s->opt) + 1) {
        if (!b->running) { /* still queued: the step computes it */
            b->s = NULL;
            s->bg = NULL;
            r->bg_stats.taken_back++;
        }
        if (s->bg)
            r->bg_stats.waited++;
        while (s->bg)
            pthread_cond_wait(&r->bg_done, &r->mu);
    }
    pthread_mutex_unlock(&r->mu);
}

void curvd_registry_hold_tail(struct curvd_registry *r, struct curvd_entry *s)
{
    pthread_mutex_lock(&r->mu);
    s->tail = 1;
    pthread_mutex_unlock(&r->mu);
}

void curvd_registry_end(struct curvd_registry *r, struct curvd_entry *s, size_t bytes)
{
    pthread_mutex_lock(&r->mu);
    s->busy = 0;
    s->used_ms = curvd_registry_now_ms();
    if (s->tail) {
        s->tail = 0;
        pthread_cond_broadcast(&r->bg_done);
    }
    if (s->dropped) { /* dropped while busy: freed once nobody holds it */
        const int idle = !s->bg;
        pthread_mutex_unlock(&r->mu);
        if (idle)
            free_session(s);
        return;
    }
    start_refresh(r, s);
    r->bytes = r->bytes - s->bytes + bytes;
    s->bytes = bytes;
    evict(r);
    pthread_mutex_unlock(&r->mu);
}

enum curvd_reg_status curvd_registry_add(struct curvd_registry *r, const char *id,
                                         const char *tenant, curv_opt *opt, size_t bytes,
                                         struct curvd_committed *committed)
{
    struct curvd_entry *s = new_session(id, tenant, opt, bytes);
    if (!s)
        return CURVD_REG_ERROR;
    pthread_mutex_lock(&r->mu);
    if (find(r, id)) {
        pthread_mutex_unlock(&r->mu);
        s->opt = NULL;
        free_session(s);
        return CURVD_REG_BUSY;
    }
    s->committed = *committed;
    *committed = (struct curvd_committed){0};
    insert(r, s);
    evict(r);
    pthread_mutex_unlock(&r->mu);
    return CURVD_REG_OK;
}

/* Under r->mu: @s leaves the table, and memory once nobody holds it. */
static void drop_locked(struct curvd_registry *r, struct curvd_entry *s)
{
    unlink_all(r, s);
    if (s->busy || s->bg)
        s->dropped = 1; /* curvd_registry_end or the refresh's end frees it */
    else
        free_session(s);
}

void curvd_registry_drop(struct curvd_registry *r, const char *id)
{
    pthread_mutex_lock(&r->mu);
    struct curvd_entry *s = find(r, id);
    if (s)
        drop_locked(r, s);
    pthread_mutex_unlock(&r->mu);
}

void curvd_registry_bg_stats(struct curvd_registry *r, struct curvd_bg_stats *out)
{
    pthread_mutex_lock(&r->mu);
    *out = r->bg_stats;
    pthread_mutex_unlock(&r->mu);
}

void curvd_registry_stats(struct curvd_registry *r, size_t *sessions, size_t *bytes)
{
    pthread_mutex_lock(&r->mu);
    *sessions = r->count;
    *bytes = r->bytes;
    pthread_mutex_unlock(&r->mu);
}

int curvd_registry_pending(struct curvd_registry *r, const char *id, long long *step, uint64_t *seq)
{
    pthread_mutex_lock(&r->mu);
    struct curvd_entry *s = find(r, id);
    int pending = s && !s->busy && curv_opt_pending(s->opt);
    if (pending) {
        *step = s->pend.step;
        *seq = s->pend.req.seq;
    }
    pthread_mutex_unlock(&r->mu);
    return pending;
}

int curvd_registry_leased(struct curvd_registry *r, const struct curvd_entry *s)
{
    pthread_mutex_lock(&r->mu);
    int leased = s->leased;
    pthread_mutex_unlock(&r->mu);
    return leased;
}

void curvd_registry_set_lease(struct curvd_registry *r, struct curvd_entry *s, int64_t epoch)
{
    pthread_mutex_lock(&r->mu);
    s->epoch = epoch;
    s->leased = 1;
    s->renewed_ms = curvd_registry_now_ms();
    pthread_mutex_unlock(&r->mu);
}

/* Under r->mu: append @d to *@out (of *@n, room for *@cap). 0, or -1. */
static int due_push(struct curvd_lease_due **out, long *n, long *cap,
                    const struct curvd_lease_due *d)
{
    if (*n == *cap) {
        long ncap = *cap ? 2 * *cap : 16;
        struct curvd_lease_due *g = realloc(*out, (size_t)ncap * sizeof *g);
        if (!g)
            return -1;
        *out = g;
        *cap = ncap;
    }
    (*out)[(*n)++] = *d;
    return 0;
}

long curvd_registry_leases_due(struct curvd_registry *r, int64_t now_ms, int64_t renew_ms,
                               int64_t idle_ms, struct curvd_lease_due **out)
{
    long n = 0, cap = 0;
    int ok = 0;
    *out = NULL;
    pthread_mutex_lock(&r->mu);
    for (struct curvd_entry *s = r->lru.next; ok == 0 && s != &r->lru; s = s->next) {
        if (!s->leased)
            continue;
        struct curvd_lease_due d = {.epoch = s->epoch};
        d.release = !s->busy && !s->bg && now_ms - s->used_ms >= idle_ms;
        if (!d.release && now_ms - s->renewed_ms < renew_ms)
            continue;
        memcpy(d.id, s->id, sizeof d.id);
        memcpy(d.tenant, s->tenant, sizeof d.tenant);
        ok = due_push(out, &n, &cap, &d);
    }
    while (ok == 0 && r->gone) {
        struct gone_lease *g = r->gone;
        ok = due_push(out, &n, &cap, &g->due);
        if (ok == 0) {
            r->gone = g->next;
            free(g);
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (ok != 0) {
        free(*out);
        *out = NULL;
        return -1;
    }
    return n;
}

void curvd_registry_lease_done(struct curvd_registry *r, const char *id, int64_t epoch,
                               enum curvd_lease_outcome outcome, int64_t now_ms)
{
    pthread_mutex_lock(&r->mu);
    struct curvd_entry *s = find(r, id);
    if (s && s->leased && s->epoch == epoch) {
        if (outcome == CURVD_LEASE_RENEWED) {
            s->renewed_ms = now_ms;
        } else {
            s->leased = 0; /* given up, or lost: then it goes, without a write */
            if (outcome == CURVD_LEASE_LOST)
                drop_locked(r, s);
        }
    }
    pthread_mutex_unlock(&r->mu);
}
