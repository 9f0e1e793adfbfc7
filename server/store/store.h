/* SPDX-License-Identifier: MIT */
/*
 * The durable store of sessions, in one of two backends chosen by the
 * database argument of curvd_store_open(): a PostgreSQL URL
 * (postgresql://... or postgres://..., through libpq: store/pg.h, its
 * schema in migrations/pg/) or else
 * the path of one SQLite file in WAL mode (the default). Both keep the
 * same tables and give the same guarantees (docs/DURABILITY.md, "Both
 * backends"); what is SQLite's alone (the WAL checkpointer, the busy
 * timeout, PRAGMAs) is said where it is declared below.
 *
 * Threading: a store object owns one database connection (SQLite's, or
 * libpq's) and every function below holds its lock for its whole
 * duration (SQLite: the connection's own mutex, sqlite3_db_mutex), so one
 * store may be shared by any number of threads; their calls run one at a
 * time. A daemon that wants reads to proceed in parallel opens one store
 * per worker on the same database: SQLite's WAL (or PostgreSQL's MVCC)
 * lets readers run beside the one writer, and writers (each in BEGIN
 * IMMEDIATE; PostgreSQL: on the session's row lock) wait for each other
 * up to the busy timeout, then fail with CURVD_STORE_BUSY.
 *
 * Group commit: steps committed while a commit is going on are written
 * together in the next transaction (one fsync under FULL durability) by
 * the store's commit thread; each still gets its own outcome.
 * curvd_store_commit_step() returns once its step is durable;
 * curvd_store_commit_submit() returns at once and calls back when it is.
 *
 * Errors: every fallible call returns an enum curvd_store_status and, when
 * @err is not NULL, writes a sentence (with SQLite's or PostgreSQL's own
 * message where the database failed) into @err[@errlen]. Out-parameters are written only on
 * CURVD_STORE_OK unless stated otherwise.
 *
 * State in parts: a session's state blob is stored as the parts libcurv
 * divides it into (curv_opt_save_parts), one row each, and read back as
 * their concatenation. A write names what the caller knows is committed
 * (struct curvd_state_in) and rewrites only the parts that changed since.
 *
 * Step log (docs/DURABILITY.md): a step may be committed as its input (a
 * record) instead of its state. The stored state is then the session's
 * latest snapshot, and the records of the steps after it are read back
 * with it (curvd_session.log) for the caller to replay. A step committed
 * with its state, or any other write of the state, is a new snapshot and
 * deletes the session's log in the same transaction.
 *
 * Memory: the owned copies handed out (strings, blobs) are allocated with
 * sqlite3_malloc64 (by both backends) so that SQLite's allocator hooks
 * (curvd_mem) cover them too; release
 * them only with curvd_session_clear(), curvd_session_list_clear(),
 * curvd_step_response_clear(), or curvd_store_free() for one taken over.
 */
#ifndef CURVD_STORE_H
#define CURVD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "curv.h"
#include "store/batch.h"

/* PRAGMA application_id of a curvd database: "crvd" in ASCII. */
#define CURVD_STORE_APPLICATION_ID 0x63727664
/* Page size of a new file: big pages keep large state blobs in few pages. */
#define CURVD_STORE_PAGE_SIZE 16384
/* Default wait for another writer before CURVD_STORE_BUSY, in ms. */
#define CURVD_STORE_BUSY_TIMEOUT_MS 5000
/* Largest page of curvd_store_list() and curvd_store_history(). */
#define CURVD_STORE_MAX_PAGE 1000
/* Steps of history a session keeps unless told otherwise (--history). */
#define CURVD_STORE_HISTORY_DEFAULT 1000
/* The most steps of history a session may keep. */
#define CURVD_STORE_HISTORY_MAX 1000000

/* Codes are never renumbered, only appended. */
#define CURVD_STORE_STATUS_MAP(X)                                                                  \
    X(OK, 0, "success")                                                                            \
    X(NOT_FOUND, 1, "no such session for this tenant")                                             \
    X(CONFLICT, 2, "the session exists or is at another step")                                     \
    X(INVALID, 3, "invalid argument")                                                              \
    X(BUSY, 4, "the database is locked by another writer")                                         \
    X(ERROR, 5, "database error")                                                                  \
    X(FULL, 6, "the disk holding the database is full")                                            \
    X(FENCED, 7, "the session's lease has a newer epoch")                                          \
    X(LEASED, 8, "another owner holds the session's lease")

enum curvd_store_status {
#define CURVD__STORE_ENUM(name, code, text) CURVD_STORE_##name = code,
    CURVD_STORE_STATUS_MAP(CURVD__STORE_ENUM)
#undef CURVD__STORE_ENUM
};

/* curvd_store_status_name - "NOT_FOUND" etc.; "UNKNOWN" for other values. */
const char *curvd_store_status_name(int status);

/* FULL: a committed step survives power loss; NORMAL: a process crash. */
enum curvd_durability { CURVD_DURABILITY_FULL, CURVD_DURABILITY_NORMAL };

struct curvd_store;

/* Is @db a PostgreSQL URL (postgresql://... or postgres://...)? Anything
 * else is a SQLite path. */
int curvd_store_is_postgres(const char *db);

/* @db as logs may show it: a PostgreSQL URL's password replaced by ***. */
void curvd_store_shown(const char *db, char *out, size_t cap);

/* Room for a digest text (wire/request_digest.h) and its NUL. */
#define CURVD_STORE_DIGEST_TEXT 41

/*
 * curvd_log_entry - one step of a session's log: @step, the digest of the
 * update it replied with, and its @record (@len bytes, owned).
 */
struct curvd_log_entry {
    int64_t step;
    char update_digest[CURVD_STORE_DIGEST_TEXT];
    unsigned char *record;
    size_t len;
};

/*
 * curvd_session - one stored session, as read back.
 * @meta:      the caller's opaque text (e.g. resolved config and layout as
 *             JSON, so that listing needs no state blob), or NULL.
 * @step:      completed steps.
 * @state:     the libcurv state blob, or NULL when @state_len is 0 or it
 *             was not asked for.
 * @parts:     with the state: how it is stored, @n_parts parts in order
 *             with their stamps (NULL when there are none); what a caller
 *             hands back as curvd_state_in.stored to its next write.
 * @log:       with the state: the steps logged after it (the state's own
 *             step count + 1, + 2, ... up to @step when the store is
 *             sound), @n_log of them in step order; NULL when none.
 * @last_step: the step of the stored reply (0: none, e.g. new or imported).
 * @last_report: that step's report as committed, or NULL (none, or a step
 *             committed without one).
 * Times are unix milliseconds, stamped by the store.
 * Ownership: every pointer is owned by the struct; curvd_session_clear().
 */
struct curvd_session {
    char *id;
    char *tenant;
    char *optimizer;
    char *meta;
    int64_t created_at;
    int64_t updated_at;
    int64_t step;
    unsigned char *state;
    size_t state_len;
    curv_state_part *parts;
    size_t n_parts;
    struct curvd_log_entry *log;
    size_t n_log;
    int64_t last_step;
    char *last_report;
    int has_idle_ttl;      /* 0: the daemon's default applies */
    int64_t idle_ttl_s;    /* with has_idle_ttl: seconds, 0 never expires */
    char *name;            /* or NULL */
    char *labels;          /* a JSON object of strings, or NULL */
    int has_history;       /* 0: the daemon's --history applies */
    int64_t history_steps; /* with has_history: steps of history kept, 0 none */
};

/* curvd_session_clear - free what @s owns and zero it; NULL is a no-op. */
void curvd_session_clear(struct curvd_session *s);

/*
 * curvd_state_in - a state blob to write, and how to write it.
 * @blob, @len: the blob; @blob may be NULL when @len is 0.
 * @parts, @n_parts: how the blob divides (curv_opt_save_parts: in order,
 *             tiling [0, @len), none empty); NULL and 0: the blob is one
 *             part with stamp 0 (no part when @len is 0).
 * @stored, @n_stored: the parts the session has committed now (as read
 *             back in curvd_session.parts, or as the caller last wrote
 *             them), or NULL and 0 when not known. A part is written
 *             unless the division is the same as @stored's (count,
 *             offsets, lengths) and its stamp is non-zero and equal to the
 *             stored one's; stored parts beyond @n_parts are deleted
 *             (none are looked for when @stored has no more than
 *             @n_parts).
 *             Stamps are comparable only along one history (opt.h): pass
 *             only what is committed for this session, never what an
 *             uncommitted write would have stored.
 * Ownership: all borrowed, and never copied by the store itself (SQLite
 * copies the bytes once into its pages).
 */
struct curvd_state_in {
    const void *blob;
    size_t len;
    const curv_state_part *parts;
    size_t n_parts;
    const curv_state_part *stored;
    size_t n_stored;
};

/*
 * curvd_session_new - what curvd_store_create() inserts. @meta may be NULL;
 * @step is 0 for a new optimizer, the blob's count for an import; every
 * part of @state is written (@state.stored is ignored).
 * Ownership: all borrowed.
 */
struct curvd_session_new {
    const char *id;
    const char *tenant;
    const char *optimizer;
    const char *meta;
    int64_t step;
    struct curvd_state_in state;
    int has_idle_ttl;      /* 0: none of its own (the daemon's default applies) */
    int64_t idle_ttl_s;    /* with has_idle_ttl: seconds, >= 0; 0 never expires */
    const char *name;      /* or NULL */
    const char *labels;    /* a JSON object of strings (checked by the caller), or NULL */
    int has_history;       /* 0: none of its own (the daemon's --history applies) */
    int64_t history_steps; /* with has_history: 0..CURVD_STORE_HISTORY_MAX */
};

/*
 * curvd_session_list - one page of curvd_store_list(): @count sessions
 * without state, and @next_page_token (NULL on the last page).
 * Ownership: owned; curvd_session_list_clear().
 */
struct curvd_session_list {
    struct curvd_session *items;
    size_t count;
    char *next_page_token;
};

/* curvd_session_list_clear - free what @l owns and zero it; NULL is a no-op. */
void curvd_session_list_clear(struct curvd_session_list *l);

/*
 * curvd_step_response - the stored reply of a session's latest step.
 * Ownership: owned; curvd_step_response_clear(). @body is NULL when
 * @body_len is 0.
 */
struct curvd_step_response {
    int64_t step;
    char *content_type;
    char *report;         /* NULL when none was stored */
    char *request_digest; /* NULL when none was stored (a step from before it was) */
    unsigned char *body;
    size_t body_len;
};

/* curvd_step_response_clear - free what @r owns and zero it; NULL is a no-op. */
void curvd_step_response_clear(struct curvd_step_response *r);

/*
 * curvd_step_commit - what curvd_store_commit_step() writes: the state
 * after step @step (the parts that changed), the reply that acknowledges
 * it, the step's @report (a text, e.g. the reply's report as compact
 * JSON, or NULL) and @request_digest (a text naming the request the step
 * answered, compared when it is posted again; or NULL). @response may be
 * NULL when @response_len is 0.
 * The step's history row (curvd_store_history) holds @report, @timing (a
 * JSON object's text, or NULL) and @callbacks (>= 0).
 * With a @record (not NULL), the step is committed as its log row instead:
 * @record_len bytes and @update_digest (a digest text, shorter than
 * CURVD_STORE_DIGEST_TEXT); @state is ignored
 * and the stored snapshot stays. Without, @state is written and becomes
 * the snapshot: the session's log is deleted.
 * @epoch: the lease epoch the session was loaded under; the step is
 * written only while it is the session's (else FENCED), or with
 * CURVD_STORE_ANY_EPOCH.
 * @written_ahead: the session's file got bytes for this step ahead of the
 * commit (curvd_store_write_ahead): the record, at @record_offset, when
 * @record_ahead (the commit then writes only the row); a snapshot commit
 * removes the file whatever rows it deletes.
 * Ownership: all borrowed, and never copied by the store itself (SQLite
 * copies them once into its pages).
 */
struct curvd_step_commit {
    int64_t step;
    struct curvd_state_in state;
    const char *content_type;
    const void *response;
    size_t response_len;
    const char *report;
    const char *request_digest;
    const char *timing;
    int64_t callbacks;
    const void *record;
    size_t record_len;
    const char *update_digest;
    int64_t epoch; /* the lease epoch it is written under (see the leases) */
    int written_ahead, record_ahead;
    uint64_t record_offset;
};

/*
 * A step's record written ahead of its commit: on a SQLite store, a
 * record that goes to its session's file (--log-file-min) is appended
 * (and synced under FULL) by the store's writer thread while the caller
 * runs the step, and the commit then names where it is. The caller owns
 * the struct and @rec, and waits (curvd_store_write_ahead_wait) before
 * either goes; bytes of a record that is not committed after all are
 * named by no row and go with the file.
 */
struct curvd_write_ahead {
    struct curvd_batch_item link; /* first: the writer's queue */
    const char *id;               /* borrowed, like @rec */
    int64_t gen;                  /* curvd_store_log_gen of the commit's epoch */
    int64_t step;
    const void *rec;
    size_t len;
    /* once done */
    int failed;
    uint64_t offset;
    struct curvd_batch_wait wait; /* private */
};

/* curvd_store_log_gen - the generation of the step log's files that a
 * writer under lease epoch @epoch appends to (store/logfile.h). */
static inline int64_t curvd_store_log_gen(int64_t epoch)
{
    return epoch < 0 ? 0 : epoch;
}

/* curvd_store_write_ahead - start writing @w (its id, step, rec and len
 * set). 1: started, wait for it; 0: this store writes such a record with
 * its commit (PostgreSQL, a record under --log-file-min), nothing
 * started. */
int curvd_store_write_ahead(struct curvd_store *st, struct curvd_write_ahead *w);

/* curvd_store_write_ahead_wait - once @w is written: 0 at @w->offset of
 * the session's file, or -1 (@w->failed; the commit writes the record
 * itself, and reports what fails then). */
int curvd_store_write_ahead_wait(struct curvd_write_ahead *w);

/*
 * curvd_history_entry - one step of a session's history as committed:
 * @at the commit's unix ms, @callbacks the exchanges it took, @timing and
 * @report JSON texts (NULL when none was stored).
 * curvd_history_page - @count entries in step order; @more is 1 when steps
 * after the last one are kept too; @oldest the first step kept (0: none)
 * and @latest the session's completed steps, read with the page.
 * Ownership: owned; curvd_history_page_clear().
 */
struct curvd_history_entry {
    int64_t step, at, callbacks;
    char *timing;
    char *report;
};
struct curvd_history_page {
    struct curvd_history_entry *items;
    size_t count;
    int more;
    int64_t oldest, latest;
};

/* curvd_history_page_clear - free what @p owns and zero it; NULL is a no-op. */
void curvd_history_page_clear(struct curvd_history_page *p);

/*
 * curvd_store_history - the steps after @since (>= 0) of session @id of
 * @tenant, at most @page_size (1..CURVD_STORE_MAX_PAGE), oldest first, all
 * read in one transaction. Return: OK; NOT_FOUND (absent, or another
 * tenant's); INVALID; BUSY; ERROR.
 */
int curvd_store_history(struct curvd_store *st, const char *tenant, const char *id, int64_t since,
                        size_t page_size, struct curvd_history_page *out, char *err, size_t errlen);

/* Records of a logged step this long or longer are kept in a file beside
 * a SQLite database (store/logfile.h) unless told otherwise. */
#define CURVD_STORE_LOG_FILE_MIN_DEFAULT ((size_t)1 << 20)

/* curvd_store_set_log_file_min - SQLite: step records of @bytes or more
 * go to the session's file beside the database, smaller ones stay in
 * their rows (SIZE_MAX: none to files). Records already written stay
 * where they are. PostgreSQL keeps every record in its row. Return: OK;
 * INVALID (NULL). */
int curvd_store_set_log_file_min(struct curvd_store *st, size_t bytes);

/* curvd_store_set_history_default - the steps of history kept by sessions
 * without a setting of their own, 0..CURVD_STORE_HISTORY_MAX (the daemon's
 * --history; CURVD_STORE_HISTORY_DEFAULT until set). It applies from their
 * next step. Return: OK; INVALID. */
int curvd_store_set_history_default(struct curvd_store *st, int64_t steps);

/* curvd_store_set_history - set session @id's own bound on its history
 * (@has 0: none of its own, the default applies; else @steps, 0 keeps
 * none) and, in the same transaction, delete the steps it no longer keeps.
 * Return: OK; NOT_FOUND; INVALID; BUSY; ERROR. */
int curvd_store_set_history(struct curvd_store *st, const char *tenant, const char *id, int has,
                            int64_t steps, char *err, size_t errlen);

/* curvd_store_use_mem - give SQLite's memory to curvd_mem (before any
 * other SQLite call). 0, or -1 when SQLite refuses. */
int curvd_store_use_mem(void);

/* curvd_store_free - release memory the store handed out (a session's
 * state, a stored reply's body). NULL is a no-op. */
void curvd_store_free(void *p);

/*
 * curvd_store_open - open or create the database at @path.
 * Sets page_size (new files only), WAL, synchronous per @durability,
 * busy_timeout and foreign_keys; marks a new file with the application id
 * and refuses a file that carries another one (or an unmarked file that
 * already holds tables); applies the compiled-in migrations that the file
 * lacks in one BEGIN IMMEDIATE transaction that also sets user_version;
 * refuses a file whose user_version is newer than this binary.
 * PostgreSQL (@path a URL, curvd_store_is_postgres): connects, sets
 * synchronous_commit per @durability (on for FULL, off for NORMAL) and
 * lock_timeout, and applies migrations/pg/ that the database lacks in one
 * transaction under an advisory lock, recorded in curvd_schema; refuses a
 * newer version there. Messages show the URL without its password.
 * Return: OK; INVALID (NULL argument, unknown durability); BUSY; ERROR
 * (cannot open or connect, not a database, foreign file, newer schema,
 * failed migration, WAL unavailable, out of memory). A refused file or
 * database is not modified.
 * Ownership: *@out is new; curvd_store_close().
 */
int curvd_store_open(const char *path, enum curvd_durability durability, struct curvd_store **out,
                     char *err, size_t errlen);

/* curvd_store_close - close and free @st; NULL is a no-op. No call may be
 * running on @st. */
void curvd_store_close(struct curvd_store *st);

/* curvd_store_set_busy_timeout - how long a write waits for another
 * connection's write lock; 0 fails at once. Return: OK; INVALID (NULL or
 * negative); ERROR. PostgreSQL: sets lock_timeout, the wait for a lock
 * another transaction holds (0 there is 1 ms, PostgreSQL's 0 being no
 * limit); a wait that runs out is BUSY too. */
int curvd_store_set_busy_timeout(struct curvd_store *st, int ms, char *err, size_t errlen);

/* curvd_store_wal - what the checkpointer did: rounds, PASSIVE passes,
 * WAL truncations, and the WAL bound in bytes at the last round (see
 * store/checkpoint.h for the bound). SQLite only: PostgreSQL checkpoints
 * its own WAL, and a PostgreSQL store reports all zeros. */
struct curvd_store_wal {
    unsigned long long rounds, passes, truncations;
    long long bound_bytes;
    unsigned inline_tries, inline_done; /* by the committing thread */
};
void curvd_store_wal(struct curvd_store *st, struct curvd_store_wal *out);

/* curvd_store_checkpoint_soon - ask the checkpointer for a round now
 * (it runs on its thread; this returns at once). A no-op on PostgreSQL. */
void curvd_store_checkpoint_soon(struct curvd_store *st);

/* curvd_store_list_labeled - curvd_store_list() of the sessions whose
 * labels hold @label_key = @label_value (@label_key NULL: all; it may not
 * contain '"' or '\\'). Return as curvd_store_list(). */
int curvd_store_list_labeled(struct curvd_store *st, const char *tenant, size_t page_size,
                             const char *page_token, const char *label_key, const char *label_value,
                             struct curvd_session_list *out, char *err, size_t errlen);

/* curvd_store_set_name_labels - set session @id's name (if @set_name;
 * NULL clears it) and labels (if @set_labels; JSON text checked by the
 * caller, NULL clears them), and stamp updated_at.
 * Return: OK; NOT_FOUND; INVALID; ERROR. */
int curvd_store_set_name_labels(struct curvd_store *st, const char *tenant, const char *id,
                                int set_name, const char *name, int set_labels, const char *labels,
                                char *err, size_t errlen);

/* curvd_store_set_idle_ttl - set session @id's idle TTL (@has 0: none
 * of its own, the daemon's default applies) and stamp updated_at.
 * Return: OK; NOT_FOUND; INVALID; ERROR. */
int curvd_store_set_idle_ttl(struct curvd_store *st, const char *tenant, const char *id, int has,
                             int64_t ttl_s, char *err, size_t errlen);

/*
 * curvd_store_expire - delete, in one transaction, at most @max sessions
 * idle at @now (unix ms; the caller's clock): those whose updated_at +
 * TTL <= @now, the TTL being the session's own or else @default_ttl_s
 * (0: off); a TTL of 0 never expires. Then @each(@ctx, id) for each (may
 * be NULL), and their number in *@count.
 * Return: OK; INVALID; BUSY; ERROR.
 */
int curvd_store_expire(struct curvd_store *st, int64_t now, int64_t default_ttl_s, size_t max,
                       void (*each)(void *ctx, const char *id), void *ctx, size_t *count, char *err,
                       size_t errlen);

/* curvd_store_info - the effective settings, for the start-up log. */
struct curvd_store_info {
    int schema_version;    /* PRAGMA user_version; PostgreSQL: curvd_schema.version */
    int application_id;    /* PostgreSQL: CURVD_STORE_APPLICATION_ID */
    int page_size;         /* PostgreSQL: block_size */
    int synchronous;       /* 2 FULL, 1 NORMAL (PostgreSQL: synchronous_commit on, off) */
    char journal_mode[16]; /* "wal"; PostgreSQL: "postgresql" */
};

/* curvd_store_info - fill @out. Return: OK; INVALID; ERROR. */
int curvd_store_info(struct curvd_store *st, struct curvd_store_info *out, char *err,
                     size_t errlen);

/*
 * curvd_store_create - insert a session stamped with the current time.
 * Return: OK (*@created_at, if not NULL, holds the stamp); CONFLICT (the
 * id exists, whatever its tenant: ids are global); INVALID (a NULL
 * string, negative step, NULL state with a length, parts that do not
 * tile the blob, a part past SQLite's blob limit); BUSY; ERROR.
 */
int curvd_store_create(struct curvd_store *st, const struct curvd_session_new *s,
                       int64_t *created_at, char *err, size_t errlen);

/*
 * curvd_store_get - read session @id of @tenant into @out, with its state
 * when @with_state is non-zero: the parts in order, each read straight
 * into its place in one owned buffer, all in one read transaction with the
 * row, and their division and stamps in @out->parts. Also the latest
 * step's report (never the stored reply's body).
 * Return: OK; NOT_FOUND (absent, or another tenant's); INVALID; BUSY; ERROR.
 * Ownership: *@out is new; curvd_session_clear().
 */
int curvd_store_get(struct curvd_store *st, const char *tenant, const char *id, int with_state,
                    struct curvd_session *out, char *err, size_t errlen);

/*
 * curvd_store_list - one page of @tenant's sessions, oldest first (by
 * created_at, then id), without state. @page_size is 1..CURVD_STORE_MAX_PAGE;
 * @page_token is NULL (or "") for the first page, else a next_page_token
 * from an earlier page. Each item has its latest step's report as in
 * curvd_store_get(). Pagination is by key, so sessions created or
 * deleted meanwhile never make another one appear twice or be skipped.
 * Return: OK; INVALID (page size out of range, malformed token); BUSY; ERROR.
 * Ownership: *@out is new; curvd_session_list_clear().
 */
int curvd_store_list(struct curvd_store *st, const char *tenant, size_t page_size,
                     const char *page_token, struct curvd_session_list *out, char *err,
                     size_t errlen);

/*
 * curvd_store_delete - remove session @id of @tenant and its stored reply.
 * Return: OK; NOT_FOUND; INVALID; BUSY; ERROR.
 */
int curvd_store_delete(struct curvd_store *st, const char *tenant, const char *id, char *err,
                       size_t errlen);

/*
 * curvd_store_commit_step - in one transaction, and only if the session is
 * at step @c->step - 1: write the parts of the new state that changed
 * (curvd_state_in), set the step to @c->step, replace the stored reply and
 * report and stamp updated_at. Send the reply only after OK.
 * Return: OK; NOT_FOUND; FENCED (@c->epoch is not the session's lease
 * epoch; nothing was written, whatever the step); CONFLICT (the session
 * is at another step: *@current_step, if not NULL, holds it; nothing was
 * written); INVALID
 * (@c->step < 1, NULL content type, NULL buffer with a length, a record
 * without its update digest, parts that do not tile the blob, a part,
 * record or reply past SQLite's blob limit); BUSY; ERROR.
 */
int curvd_store_commit_step(struct curvd_store *st, const char *tenant, const char *id,
                            const struct curvd_step_commit *c, int64_t *current_step, char *err,
                            size_t errlen);

/*
 * curvd_commit_item - one step of curvd_store_commit_steps(): the arguments
 * of one curvd_store_commit_step() call (borrowed) and its outcome.
 */
struct curvd_commit_item {
    const char *tenant;
    const char *id;
    const struct curvd_step_commit *c;
    int status;           /* out: as curvd_store_commit_step() returns */
    int64_t current_step; /* out: on CONFLICT, the session's step */
    char err[256];        /* out: the sentence, when status is not OK */
};

/*
 * curvd_commit_job - curvd_store_commit_step() without waiting: fill @item
 * (its arguments stay borrowed until @done) and @done, then
 * curvd_store_commit_submit(). @done runs on the store's commit thread
 * once the transaction that held the step has ended, with the outcome in
 * @item as curvd_store_commit_step() would have returned it; it may free
 * the job, and must not commit steps itself (nor wait for anything that
 * does). An invalid item is answered at once, on the caller's thread.
 */
struct curvd_commit_job {
    struct curvd_batch_item link; /* private */
    struct curvd_commit_item item;
    void (*done)(struct curvd_commit_job *job);
};

void curvd_store_commit_submit(struct curvd_store *st, struct curvd_commit_job *job);

/*
 * curvd_store_commit_steps - commit several steps (of different sessions,
 * or the same session's consecutive steps in order) in one transaction:
 * each item's outcome is what curvd_store_commit_step() would have given
 * it alone. A conflicting or missing session writes nothing for its item
 * and does not stop the others; a database failure makes the steps go one
 * at a time, so that it stays the failing item's own. This is what the
 * group commit runs.
 */
void curvd_store_commit_steps(struct curvd_store *st, struct curvd_commit_item **items, size_t n);

/*
 * curvd_store_update_state - replace the state (the parts of @state that
 * changed, as for a step) and @meta (NULL clears it) without a step, e.g.
 * after a change of hyperparameters, only if the session is still at
 * @expected_step (so two updates cannot lose one) and its lease epoch is
 * @epoch (or that is CURVD_STORE_ANY_EPOCH).
 * Return: OK; NOT_FOUND; FENCED; CONFLICT (*@current_step as above);
 * INVALID; BUSY; ERROR.
 */
int curvd_store_update_state(struct curvd_store *st, const char *tenant, const char *id,
                             int64_t expected_step, int64_t epoch,
                             const struct curvd_state_in *state, const char *meta,
                             int64_t *current_step, char *err, size_t errlen);

/*
 * curvd_store_snapshot - write @state (the parts that changed, as for a
 * step) as session @id's snapshot at @step, which must be the session's
 * step, and delete its log, in one transaction; fenced by @epoch as
 * curvd_store_update_state().
 * Return: OK; NOT_FOUND; FENCED; CONFLICT (*@current_step as above);
 * INVALID; BUSY; ERROR.
 */
int curvd_store_snapshot(struct curvd_store *st, const char *tenant, const char *id, int64_t step,
                         int64_t epoch, const struct curvd_state_in *state, int64_t *current_step,
                         char *err, size_t errlen);

/*
 * curvd_store_get_response - the stored reply of the session's latest step,
 * for a client that posts that step again.
 * Return: OK; NOT_FOUND (no session for @tenant, or no step committed yet
 * since create); INVALID; BUSY; ERROR.
 * Ownership: *@out is new; curvd_step_response_clear().
 */
int curvd_store_get_response(struct curvd_store *st, const char *tenant, const char *id,
                             struct curvd_step_response *out, char *err, size_t errlen);

/*
 * curvd_store_count - number of sessions of @tenant, or of all tenants when
 * @tenant is NULL. Return: OK; INVALID; BUSY; ERROR.
 */
int curvd_store_count(struct curvd_store *st, const char *tenant, int64_t *out, char *err,
                      size_t errlen);

/*
 * curvd_store_health - OK, or ERROR with the latest storage failure (a full
 * disk, an I/O error, a read-only or damaged file: store/trouble.h) when no
 * write has committed since it. Never waits for the store's lock.
 */
int curvd_store_health(struct curvd_store *st, char *err, size_t errlen);

/*
 * Leases (docs/CLUSTER.md, docs/DURABILITY.md): a session is written by one daemon at a
 * time, the holder of its lease (owner, epoch, expiry). Every write of a
 * session's steps or state carries an epoch (struct curvd_step_commit's,
 * curvd_store_snapshot's and curvd_store_update_state's) and happens only
 * when it is the session's lease_epoch (or CURVD_STORE_ANY_EPOCH), in
 * the same transaction; otherwise FENCED and nothing is written. Create
 * and import write epoch 0 and no owner; delete and reads are not fenced.
 * The store's clock decides expiry: PostgreSQL's clock_timestamp(), or
 * for SQLite this machine's CLOCK_REALTIME.
 */
#define CURVD_STORE_OWNER_MAX 128  /* owner text incl. NUL */
#define CURVD_STORE_ANY_EPOCH (-1) /* a write that is not fenced (tests, tools) */

/* What the store knows of a session's lease, read in the same statement. */
struct curvd_lease {
    char owner[CURVD_STORE_OWNER_MAX]; /* "" when not held */
    int64_t epoch;
    int64_t expires_at; /* store clock, unix ms */
    int64_t now;        /* the store's clock when it answered */
};

/* curvd_store_lease_acquire - take the lease of (@tenant, @id) for
 * @owner (1..CURVD_STORE_OWNER_MAX-1 bytes) for @ttl_ms (> 0). Succeeds
 * when the lease is not held, has expired (expires_at <= now), or is held
 * by @owner itself (a restarted daemon with the same node id); the epoch
 * is then always incremented. Return: OK (@out the new lease); LEASED
 * (another owner holds an unexpired lease; @out describes it); NOT_FOUND;
 * INVALID; BUSY; ERROR. */
int curvd_store_lease_acquire(struct curvd_store *st, const char *tenant, const char *id,
                              const char *owner, int64_t ttl_ms, struct curvd_lease *out, char *err,
                              size_t errlen);

/* curvd_store_lease_renew - extend a held lease to now + @ttl_ms. Return:
 * OK (@out the lease; an expired lease that nobody took is renewed);
 * FENCED when (@owner, @epoch) is no longer the session's (@out then
 * describes the lease as it is); NOT_FOUND; INVALID; BUSY; ERROR. */
int curvd_store_lease_renew(struct curvd_store *st, const char *tenant, const char *id,
                            const char *owner, int64_t epoch, int64_t ttl_ms,
                            struct curvd_lease *out, char *err, size_t errlen);

/* curvd_store_lease_release - give a held lease up (owner none, expiry 0,
 * epoch kept). Return: OK; FENCED when (@owner, @epoch) is no longer the
 * session's; NOT_FOUND; INVALID; BUSY; ERROR. */
int curvd_store_lease_release(struct curvd_store *st, const char *tenant, const char *id,
                              const char *owner, int64_t epoch, char *err, size_t errlen);

/* curvd_store_engine_version - the version of the SQLite library linked
 * (static text), for curvd_build_info. */
const char *curvd_store_engine_version(void);

#endif
