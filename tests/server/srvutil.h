/* SPDX-License-Identifier: MIT */
/* Server test helpers: an in-process daemon on an ephemeral loopback port
 * with its temporary database, a small libcurl client, and the test layout
 * with its gradients, step bodies and updates shared by the end-to-end,
 * concurrency and crash suites. */
#ifndef CURVD_SRVUTIL_H
#define CURVD_SRVUTIL_H

#include <curl/curl.h>
#include <jansson.h>
#include <sqlite3.h>
#include <stddef.h>

#include "curv.h"
#include "server.h"
#include "store/store.h"
#include "testutil.h"

struct su_resp {
    long status;
    char *body; /* NUL-terminated, owned */
    size_t len;
    char content_type[128];
    char location[256];
    char etag[64];
    size_t json_header_len; /* Inference-Header-Content-Length, 0 if absent */
    char server_timing[256];
    char request_id[128]; /* X-Request-Id */
    char retry_after[16]; /* Retry-After, "" if absent */
};

/* ---- The daemon and its files ---- */

/* Start the HTTP layer of @srv on 127.0.0.1:0 (cfg defaults filled in
 * where zero: 2 workers, SU_NO_WORKERS for none, every request then runs
 * on its connection's thread; the step log as curvd's flags set it) and
 * return its base URL
 * "http://127.0.0.1:PORT". */
#define SU_NO_WORKERS 0xffffffffu
/* Zero snapshot_log_pct and snapshot_ms get the daemon's defaults (the
 * step log); this snapshot_log_pct gets 0: every step a snapshot. */
#define SU_EVERY_STEP_A_SNAPSHOT 0xffffffffu
void su_start(struct curvd_server *srv, char *base, size_t cap);
void su_stop(struct curvd_server *srv);

/* Open the daemon (store and registry) on @srv's cfg as the caller set it
 * (but a zero log_file_min gets the daemon's default; 1 puts every step
 * record in a file beside the database), then su_start(); su_daemon_stop()
 * undoes both. */
void su_daemon_start(struct curvd_server *srv, char *base, size_t cap);
void su_daemon_stop(struct curvd_server *srv);

/* Make a fresh directory "@root/curvd-@tag-XXXXXX" (@root NULL: /tmp) into
 * @dir, and name the database "@dir/curvd.db" in @db. */
void su_tmpdir(char *dir, size_t dir_cap, const char *root, const char *tag, char *db,
               size_t db_cap);
/* rm -rf @dir; system()'s status (0 when removed). */
int su_rmtree(const char *dir);

/* Seconds on the monotonic clock. */
double su_now_s(void);

/* A plain TCP connection to 127.0.0.1:@port, for what libcurl will not send
 * or wait for; -1 with errno when it cannot connect. */
int su_raw_connect(unsigned port);

/* Read @fd into @buf (NUL-terminated, *@len bytes) until it holds @until
 * (NULL: until the end), the peer closes or resets, or @timeout_ms pass.
 * Returns 1 when @until was seen, 0 at the end of the stream, -1 on timeout. */
int su_raw_read(int fd, char *buf, size_t cap, size_t *len, const char *until, int timeout_ms);

/* The whole of the file @path as NUL-terminated text (a log), which must
 * exist; free() it. */
char *su_read_text(const char *path);
/* How many times @needle occurs in @hay (overlaps counted). */
int su_count(const char *hay, const char *needle);

/* ---- The store, and its file read and written beside it (sqlite3) ---- */

/* Fail unless the store call @expr gives @want; the call writes its
 * sentence into the char array @errbuf, printed on failure. */
#define su_assert_store(expr, want, errbuf)                                                        \
    do {                                                                                           \
        (errbuf)[0] = '\0';                                                                        \
        int st_ = (expr);                                                                          \
        if (st_ != (want))                                                                         \
            print_error("got %s, want %s: %s\n", curvd_store_status_name(st_),                     \
                        curvd_store_status_name(want), (errbuf));                                  \
        assert_int_equal(st_, (want));                                                             \
    } while (0)

/* ---- Either backend (pgutil.c) ----
 * The store's suites run on SQLite, and on PostgreSQL too when
 * CURVD_TEST_DB holds the URL of a cluster (tests/pg/pg-cluster; `make
 * test-pg`). The raw reads below take a SQLite path or a PostgreSQL URL
 * alike. */

/* The URL of CURVD_TEST_DB, or NULL: the suites run on SQLite. */
const char *su_pg_url(void);
/* Test @name's database: the SQLite file @dir/@name.db (none left from
 * before), or a new PostgreSQL schema of its own as a URL into @out. */
void su_db(const char *dir, const char *name, char *out, size_t cap);
/* A test of something SQLite's alone (its files, PRAGMAs, WAL, VFS): skipped
 * on PostgreSQL. */
#define SU_SQLITE_ONLY()                                                                           \
    do {                                                                                           \
        if (su_pg_url())                                                                           \
            skip();                                                                                \
    } while (0)
/* Another connection holding the database's write lock (SQLite: BEGIN
 * IMMEDIATE; PostgreSQL: the sessions table in EXCLUSIVE mode) until
 * su_raw_unlock. */
struct su_lock;
struct su_lock *su_raw_lock(const char *path);
void su_raw_unlock(struct su_lock *l);
/* The PostgreSQL side of su_raw_exec, su_raw_text and su_raw_state. */
void su_pg_raw_exec(const char *url, const char *sql);
void su_pg_raw_text(const char *url, const char *sql, char *out, size_t cap);
unsigned char *su_pg_raw_state(const char *url, const char *id, size_t *len);
/* Wait until no server process serves a connection named @app
 * (application_name): a client killed mid-COMMIT leaves its backend to
 * finish that commit, which must land before the database is judged. */
void su_pg_wait_gone(const char *url, const char *app);

/* Run @sql (several statements allowed) on a connection of its own. */
void su_raw_exec(const char *path, const char *sql);
/* A plain connection to @path and @sql prepared on it; finalize the
 * statement and close *@db after. */
sqlite3_stmt *su_raw_prepare(const char *path, const char *sql, sqlite3 **db);
/* The first column of the first row of @sql, as text into @out[@cap]. */
void su_raw_text(const char *path, const char *sql, char *out, size_t cap);
/* The same as an integer. */
long long su_raw_int(const char *path, const char *sql);
/* Session @id's state as the file holds it: the bytes of its state_parts
 * rows in idx order (which must run 0, 1, ...), read without the store;
 * NULL and *@len 0 when it has none. free() it. */
unsigned char *su_raw_state(const char *path, const char *id, size_t *len);

/* ---- The client ---- */

/* One request. @body may be NULL; @ctype NULL means application/json.
 * @chunked sends the body with Transfer-Encoding: chunked (no length).
 * A failed transfer fails the test. */
void su_request(const char *method, const char *url, const void *body, size_t len,
                const char *ctype, int chunked, struct su_resp *out);
/* The same with extra request header lines (NULL-terminated list). */
void su_request_h(const char *method, const char *url, const void *body, size_t len,
                  const char *ctype, int chunked, const char *const *headers, struct su_resp *out);
void su_resp_free(struct su_resp *r);

/* A JSON request (@body NUL-terminated text, or NULL) that never calls
 * cmocka, so that any thread may send it and a daemon killed mid-request
 * is not a failure: the transfer's result. @out->body is allocated either
 * way (su_resp_free it); @out->status is 0 when nothing was answered. */
CURLcode su_try_request(const char *method, const char *url, const char *body, struct su_resp *out);

/* Send "Authorization: Bearer @token" with later requests (NULL: none). */
void su_set_token(const char *token);
/* Give later requests @seconds to complete (30 unless set). */
void su_set_timeout(long seconds);

/* su_json - parse a reply's JSON (NULL when it is none), failing the test
 * when an object has a member twice. */
json_t *su_json(const char *text, size_t len);

/* @method @base@path with the JSON text @body (NULL: none); the status must
 * be @want. Returns the parsed reply (NULL when empty); the response goes
 * to @raw when not NULL (su_resp_free it), else it is freed. */
json_t *su_call(const char *base, const char *method, const char *path, const char *body, long want,
                struct su_resp *raw);

/* POST @base/v1/sessions: an @optimizer session on su_layout_json() with
 * @config (stolen; NULL: none); the status must be @want. On 201 the new id
 * goes to @id (else ""). Returns the parsed reply; @raw as in su_call(). */
json_t *su_create(const char *base, const char *optimizer, json_t *config, long want, char id[33],
                  struct su_resp *raw);

/* The step session @id is at (GET, which must answer 200). */
long su_session_step(const char *base, const char *id);

/* GET the exported state of session @id, which must answer 200 (with the
 * Content-Type @want_ctype unless NULL): the blob (free() it), @len bytes. */
unsigned char *su_export_state(const char *base, const char *id, size_t *len,
                               const char *want_ctype);

/* ---- The test layout: fc, dense 2 x (4 + bias) = 10 at 0; gain, vector 1 at 10 ---- */

#define SU_D 11

/* The layout as the API takes it (a new reference). */
json_t *su_layout_json(void);
/* The same layout built in-process by libcurv, asserting (caller frees). */
curv_layout *su_layout_new(void);

/* The gradient of step @t: g[i] = sin(0.37 (t SU_D + i) + @phase) (1 + i % 3);
 * suites and sessions tell theirs apart by @phase. */
void su_grad(long t, double phase, double g[SU_D]);

/* A tensor object {"name", "shape" (stolen), "datatype": "FP64", "data"}. */
json_t *su_tensor(const char *name, json_t *shape, const double *v, size_t n);
/* The body of step @t with the flat gradient @g: "fc" (shape [2,5]) and
 * "gain" (shape [1]), in that order, or gain first when @gain_first. */
json_t *su_step_json(long t, const double *g, int gain_first);
/* su_step_json() as compact text, numbers to 17 digits (free() it). */
char *su_step_text(long t, const double *g, int gain_first);

/* The update of a 200 step reply @body for step @t, in layout order; 0, or
 * -1 when the step differs or the update is malformed. No cmocka inside. */
int su_update_of(const char *body, long t, double u[SU_D]);
/* Step the in-process reference @ref with @g: the daemon's update @u must
 * be the same bit for bit, else fail with "@what, element I: ...". */
void su_check_update(curv_opt *ref, const double *g, const double *u, const char *what);

/* ---- Playing the trainer of a callback exchange (kfac, hf) ---- */

/* A daemon on a fresh temporary database, for one test. */
struct su_fx {
    struct curvd_server srv;
    char dir[64], db[128], base[64];
};
/* Started; @tag names its directory. Free with su_fx_free(). */
struct su_fx *su_fx_new(const char *tag);
/* Stop the daemon and open it again on the same database (a new port in
 * @f->base): everything not committed is gone. */
void su_fx_restart(struct su_fx *f);
/* Stop the daemon and remove its directory. */
void su_fx_free(struct su_fx *f);

/* A request or reply body: JSON, then with the binary extension the raw
 * bytes (@json_len > 0 is the JSON's length; 0: all JSON). */
struct su_body {
    unsigned char *p;
    size_t len, cap, json_len;
};
void su_body_free(struct su_body *b);

/* @l's blocks as the API takes them (a new reference). */
json_t *su_layout_json_of(const curv_layout *l);
/* The flat vector @v (layout order) as one tensor per block of @l, shaped
 * like the update; @fp32 rounds the values to float. With @tail the
 * little-endian bytes are appended there (the binary extension) and each
 * tensor says its parameters.binary_data_size. */
json_t *su_tensors_json(const curv_layout *l, const double *v, int fp32, struct su_body *tail);
/* The tensors @arr of reply @r into @out (layout order): numbers from
 * "data", or bytes of @r's binary tail from *@off on (advanced). Every
 * block exactly once, shaped like the update; else the test fails. */
void su_tensors_flat(const curv_layout *l, const json_t *arr, const struct su_resp *r, size_t *off,
                     double *out);

/* A 202's callback: its url and the request it carries (.vectors owned,
 * .seq the callback id). */
struct su_callback {
    char url[256];
    long step;
    curv_request req;
};
void su_callback_clear(struct su_callback *cb);

enum su_phase {
    SU_BEFORE_ANSWER, /* @good is about to be posted */
    SU_ANSWERED,      /* @good got @reply, 202 or 200 */
    SU_STEP_DONE      /* the step ended with @reply (200); @cb is its last callback or NULL */
};
struct su_trainer;
typedef void (*su_hook)(struct su_trainer *tr, enum su_phase ph, const struct su_callback *cb,
                        const struct su_body *good, const struct su_resp *reply);

/* A trainer of one session: the layout, the encoding of its steps and
 * products, and an optional hook around each answer (to try bad ones). */
struct su_trainer {
    const char *base;          /* the daemon, borrowed (su_fx_restart() rewrites it in place) */
    const curv_layout *layout; /* borrowed */
    int binary, fp32;
    su_hook hook;
    void *hook_ctx;
    char id[33];
    size_t answers;      /* answers the daemon accepted, over the trainer's life */
    char first_url[256]; /* the first callback of the latest step, or "" */
};

/* POST /v1/sessions: @optimizer on tr->layout with @config (stolen; NULL:
 * none), which must answer 201; the id goes to tr->id. */
void su_trainer_create(struct su_trainer *tr, const char *optimizer, json_t *config);

/* One step's input; NULL vectors are left out. */
struct su_step {
    long t;
    const double *grad, *params, *grad_sq;
    double loss;
    json_t *layers; /* the "layers" member as sent (borrowed), or NULL */
};
/* The body of step @s in tr's encoding (tensors in order gradients,
 * params, grad_sq). */
void su_step_body(const struct su_trainer *tr, const struct su_step *s, struct su_body *out);
/* POST @b to @path (below tr->base); JSON, or the binary extension when
 * @b->json_len > 0. */
void su_post_body(const struct su_trainer *tr, const char *path, const struct su_body *b,
                  struct su_resp *out);
/* The callback of the 202 @r to step @t; fails the test unless it is well
 * formed (Location = url, answer_values right for its kind). */
void su_callback_parse(const struct su_trainer *tr, const struct su_resp *r, long t,
                       struct su_callback *cb);
/* The answer to @req: "products" (in tr's encoding), "losses" or "gram"
 * of the @req->n_values @values. */
void su_answer_body(const struct su_trainer *tr, const curv_request *req, const double *values,
                    struct su_body *out);
/* Post step @s and answer each callback with @answer(@ctx) until the step
 * ends (200): the update into @u (layout order). Returns the number of
 * callbacks answered. */
size_t su_trainer_step(struct su_trainer *tr, const struct su_step *s, tu_answer_fn answer,
                       void *ctx, double *u);

/* The per-layer statistics of @net's batch as a step's "layers" member
 * (blocks "l0", "l1", ...; FP64 JSON tensors). */
json_t *su_mlp_layers(const tu_mlp *net);

#endif
