/* SPDX-License-Identifier: MIT */
/*
 * The store's backends (internal to server/store/): store.h's functions
 * check their arguments once (dispatch.c) and call the backend of the
 * store through its table of operations; each backend (SQLite in
 * sqlite.c, PostgreSQL in pg*.c) embeds struct curvd_store first in its
 * own and fills a struct curvd_store_ops. Group commit (batch.h) is the
 * dispatcher's: a backend commits one group of valid items at a time.
 * The helpers below are shared by the backends (common.c).
 */
#ifndef CURVD_STORE_BACKEND_H
#define CURVD_STORE_BACKEND_H

#include <stdarg.h>

#include "store/store.h"
#include "store/trouble.h"

#if defined(__GNUC__)
#define STORE_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define STORE_PRINTF(a, b)
#endif

/* Steps committed in one transaction at most: enough to share an fsync
 * among all of a busy daemon's workers, few enough to bound a batch. */
#define COMMIT_BATCH_MAX 64

/* Every operation gets a store of its own backend and arguments that
 * dispatch.c has checked (non-NULL where store.h requires it, states that
 * tile their blob, pages in range). Statuses and @err as in store.h. */
struct curvd_store_ops {
    const char *name; /* "sqlite", "postgresql" */
    void (*close)(struct curvd_store *st);
    int (*set_busy_timeout)(struct curvd_store *st, int ms, char *err, size_t errlen);
    void (*wal)(struct curvd_store *st, struct curvd_store_wal *out);
    void (*checkpoint_soon)(struct curvd_store *st);
    int (*info)(struct curvd_store *st, struct curvd_store_info *out, char *err, size_t errlen);
    int (*create)(struct curvd_store *st, const struct curvd_session_new *s, int64_t *created_at,
                  char *err, size_t errlen);
    int (*get)(struct curvd_store *st, const char *tenant, const char *id, int with_state,
               struct curvd_session *out, char *err, size_t errlen);
    /* At most @max sessions into @out (items allocated for @max), after
     * the key (@after_time, @after_id), or from the first when @after_id
     * is NULL; @label_key NULL: no filter. */
    int (*list)(struct curvd_store *st, const char *tenant, size_t max, int64_t after_time,
                const char *after_id, const char *label_key, const char *label_value,
                struct curvd_session_list *out, char *err, size_t errlen);
    int (*delete)(struct curvd_store *st, const char *tenant, const char *id, char *err,
                  size_t errlen);
    /* One transaction for @n valid items (1..COMMIT_BATCH_MAX), each item's
     * outcome in it; return the transaction's (OK, or the failure that is
     * every item's). */
    int (*commit_group)(struct curvd_store *st, struct curvd_commit_item **items, size_t n);
    int (*update_state)(struct curvd_store *st, const char *tenant, const char *id,
                        int64_t expected_step, int64_t epoch, const struct curvd_state_in *state,
                        const char *meta, int64_t *current_step, char *err, size_t errlen);
    int (*snapshot)(struct curvd_store *st, const char *tenant, const char *id, int64_t step,
                    int64_t epoch, const struct curvd_state_in *state, int64_t *current_step,
                    char *err, size_t errlen);
    int (*get_response)(struct curvd_store *st, const char *tenant, const char *id,
                        struct curvd_step_response *out, char *err, size_t errlen);
    int (*count)(struct curvd_store *st, const char *tenant, int64_t *out, char *err,
                 size_t errlen);
    int (*set_idle_ttl)(struct curvd_store *st, const char *tenant, const char *id, int has,
                        int64_t ttl_s, char *err, size_t errlen);
    /* The ids deleted into @ids (at most @max, sqlite3_malloc'd, freed by
     * the caller even on failure), their number in *@n. */
    int (*expire)(struct curvd_store *st, int64_t now, int64_t default_ttl_s, size_t max,
                  char **ids, size_t *n, char *err, size_t errlen);
    int (*set_name_labels)(struct curvd_store *st, const char *tenant, const char *id, int set_name,
                           const char *name, int set_labels, const char *labels, char *err,
                           size_t errlen);
    int (*history)(struct curvd_store *st, const char *tenant, const char *id, int64_t since,
                   size_t page_size, struct curvd_history_page *out, char *err, size_t errlen);
    int (*set_history)(struct curvd_store *st, const char *tenant, const char *id, int has,
                       int64_t steps, char *err, size_t errlen);
    int (*lease_acquire)(struct curvd_store *st, const char *tenant, const char *id,
                         const char *owner, int64_t ttl_ms, struct curvd_lease *out, char *err,
                         size_t errlen);
    int (*lease_renew)(struct curvd_store *st, const char *tenant, const char *id,
                       const char *owner, int64_t epoch, int64_t ttl_ms, struct curvd_lease *out,
                       char *err, size_t errlen);
    int (*lease_release)(struct curvd_store *st, const char *tenant, const char *id,
                         const char *owner, int64_t epoch, char *err, size_t errlen);
    /* NULL: records are written with their commits (curvd_store_write_ahead). */
    int (*write_ahead)(struct curvd_store *st, struct curvd_write_ahead *w);
};

/* What every store is first: its backend, the group commit, and the
 * default history bound (--history; atomic, set once at start). */
struct curvd_store {
    const struct curvd_store_ops *ops;
    struct curvd_batcher *commits;
    _Atomic int64_t history_default;
    /* Step records this long or longer go to files (SQLite; --log-file-min). */
    _Atomic size_t log_file_min;
    /* Storage failures for /readyz (curvd_store_health), on either backend;
     * the backend reports them and initialises it. */
    struct curvd_trouble trouble;
};

/* curvd_store_base_init - set @st's ops and start its group commit.
 * Return OK or ERROR (no thread, no memory) with @err. */
int curvd_store_base_init(struct curvd_store *st, const struct curvd_store_ops *ops, char *err,
                          size_t errlen);
/* curvd_store_base_stop - commit what is queued and stop the group
 * commit; before the backend's own close. */
void curvd_store_base_stop(struct curvd_store *st);

/* The backends' opens: @path already known to be theirs. */
int curvd_sqlite_open(const char *path, enum curvd_durability durability, struct curvd_store **out,
                      char *err, size_t errlen);
int curvd_pg_open(const char *url, enum curvd_durability durability, struct curvd_store **out,
                  char *err, size_t errlen);

/* Write the sentence into @err (if any) and hand back @status. */
int curvd_store_fail(char *err, size_t errlen, int status, const char *fmt, ...) STORE_PRINTF(4, 5);
int curvd_store_no_memory(char *err, size_t errlen);

/* The store's clock: unix ms of CLOCK_REALTIME. */
int64_t curvd_store_now_ms(void);

/* Stamps are unsigned 64-bit; the databases keep signed ones: the same bits. */
int64_t curvd_stamp_to_db(uint64_t stamp);
uint64_t curvd_stamp_from_db(int64_t v);

/* Do @s's parts tile its blob (none empty; no parts: the blob as one)? */
int curvd_state_valid(const struct curvd_state_in *s);
/* How many parts @s writes, and part @i (its own, or the whole blob
 * with stamp 0). */
size_t curvd_state_part_count(const struct curvd_state_in *s);
curv_state_part curvd_state_part_at(const struct curvd_state_in *s, size_t i);
/* Must part @i of @s be written? Not when @s is divided as what is
 * stored (count, offsets, lengths) and its stamp is non-zero and equal
 * to the stored one's: only then do equal stamps mean equal bytes.
 * @same is curvd_state_same_division(@s). */
int curvd_state_same_division(const struct curvd_state_in *s);
int curvd_state_part_changed(const struct curvd_state_in *s, int same, size_t i);
/* Must the parts past @s's last one be looked for and deleted? */
int curvd_state_may_trim(const struct curvd_state_in *s);

/* A page token: the hex of the last row's key (created_at, id). The
 * encoding is sqlite3_malloc'd (NULL: no memory); decoding returns OK,
 * INVALID (malformed) or ERROR (no memory). */
char *curvd_page_token_encode(int64_t created_at, const char *id);
int curvd_page_token_decode(const char *t, int64_t *created_at, char **id, char *err,
                            size_t errlen);

/* A copy of @n bytes of @s and a NUL, owned as store.h's copies are (NULL:
 * no memory). */
char *curvd_store_strndup(const char *s, size_t n);

#endif
