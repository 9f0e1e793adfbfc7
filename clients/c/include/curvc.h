/* SPDX-License-Identifier: MIT */
#ifndef CURVC_H
#define CURVC_H

#include <stddef.h>
#include <stdint.h>

/*
 * curvc - the C client of curvd (libcurl + jansson).
 *
 * A curvc_client holds one keep-alive connection to a daemon; a
 * curvc_session is one optimizer session on it, with its layout, so that
 * steps take and give flat vectors in the layout's order (like libcurv):
 * a dense block is W[n_out][n_in (+1 bias column)] row-major, a conv2d
 * block W[c_out][c_in*kh*kw (+1)], a vector block n numbers.
 *
 * Every call returns a curvc_status and fills an optional curvc_error:
 * for an error reply of the daemon the RFC 9457 problem (status, reason,
 * detail and the first field error); for other failures a sentence.
 *
 * Steps and callback answers are retried with the same step number when
 * the connection fails: the daemon replays the latest step's reply and a
 * retried answer gets the reply it got the first time, so nothing is
 * applied twice. The replay is given only to the same request (the same
 * decoded tensors, whatever their encoding): another one is refused with
 * CURVC_E_STEP_MISMATCH.
 *
 * Thread-safety: a client (and its sessions) must not be used by two
 * threads at once; distinct clients are independent.
 */

typedef enum {
    CURVC_OK = 0,
    CURVC_E_PROBLEM = 1,   /* the daemon answered an error: see curvc_error */
    CURVC_E_TRANSPORT = 2, /* no answer after every retry */
    CURVC_E_PROTOCOL = 3,  /* an answer this client cannot read */
    CURVC_E_INVALID = 4,   /* bad arguments (the text says which) */
    CURVC_E_NOMEM = 5,
    CURVC_E_CALLBACK = 6, /* a callback came and no oracle was given, or the oracle failed */
    /* 422 STEP_MISMATCH: a step (or callback answer) posted again is not
     * the request that completed it (another gradient, another trainer on
     * the session); nothing was applied. curvc_error has the problem. */
    CURVC_E_STEP_MISMATCH = 7
} curvc_status;

/* curvc_field_error - one entry of a problem's "errors". */
typedef struct curvc_field_error {
    char path[128];
    char expected[128];
    char got[128];
} curvc_field_error;

/*
 * curvc_error - what went wrong.
 * @status:  HTTP status of a problem reply (0 otherwise).
 * @reason:  the problem's machine word (SHAPE_MISMATCH, STEP_OUT_OF_ORDER...).
 * @type, @title, @detail: the problem's fields.
 * @field, @n_fields: the first entry of "errors" and how many there were.
 * @text:    one sentence for a human, always set on failure.
 */
typedef struct curvc_error {
    int status;
    char reason[64];
    char type[160];
    char title[128];
    char detail[512];
    curvc_field_error field;
    size_t n_fields;
    char text[768];
} curvc_error;

typedef enum { CURVC_JSON = 0, CURVC_BINARY = 1 } curvc_encoding;

typedef struct curvc_client curvc_client;
typedef struct curvc_session curvc_session;

/*
 * curvc_client_new - a client of the daemon at @url ("http://host:port").
 * @token: bearer token when the daemon runs with a token file, or NULL.
 * Return: the client, or NULL when out of memory or @url is NULL.
 * Ownership: free with curvc_client_free() (NULL is a no-op).
 */
curvc_client *curvc_client_new(const char *url, const char *token);
void curvc_client_free(curvc_client *c);

/* curvc_client_set_retries - the most further tries after a connection
 * failure, a 503 or a busy session (default UINT_MAX: as many as the
 * retry budget allows), and the first back-off in seconds (default 0.1).
 * Before try k+1 the client sleeps a uniform random time in
 * [0, min(max_wait, first_wait * 2^k)] (exponential back-off with full
 * jitter), at least Retry-After when the daemon sends one. */
void curvc_client_set_retries(curvc_client *c, unsigned retries, double first_wait_s);

/* curvc_client_set_retry_budget - seconds of retrying in all, from the
 * first try (default 30: longer than a daemon's restart; 0: no retry), and
 * the back-off's cap in seconds (default 5; <= 0 keeps it). The final
 * error names the daemon's host and the tries made. */
void curvc_client_set_retry_budget(curvc_client *c, double budget_s, double max_wait_s);

/* curvc_client_set_timeout - seconds per request (default 120). */
void curvc_client_set_timeout(curvc_client *c, long seconds);

/* curvc_client_requests - attempts sent so far, retries included. */
unsigned long curvc_client_requests(const curvc_client *c);

/* curvc_status_name - "CURVC_OK", "CURVC_E_PROBLEM", ... */
const char *curvc_status_name(curvc_status st);

/* curvc_block - one block of a layout (see the file comment). */
typedef struct curvc_block {
    const char *name; /* 1..63 bytes */
    const char *kind; /* "dense", "conv2d" or "vector" */
    size_t shape[4];  /* dense {n_out, n_in}; conv2d {c_out, c_in, kh, kw}; vector {n} */
    int bias;
} curvc_block;

/*
 * curvc_session_create - create a session.
 * @optimizer: "sgd", "kfac", ... (GET /v1/version lists them).
 * @config_json: hyperparameters as a JSON object text ("{\"lr\": 0.1}"), or NULL.
 * Return: CURVC_OK and *@out; CURVC_E_PROBLEM (unknown optimizer, bad
 * layout or config: @err names the field), CURVC_E_TRANSPORT, ...
 * Ownership: end *@out with curvc_session_close(), which deletes the
 * session on the daemon (unless curvc_session_set_keep()), or with
 * curvc_session_free(), which leaves it there.
 */
curvc_status curvc_session_create(curvc_client *c, const char *optimizer, const curvc_block *blocks,
                                  size_t n_blocks, const char *config_json, curvc_session **out,
                                  curvc_error *err);

/* curvc_session_open - an existing session by id (its layout and step count
 * are read from the daemon). Return: CURVC_OK; CURVC_E_INVALID (an id of
 * other characters than letters, digits, '_' and '-', or too long);
 * CURVC_E_PROBLEM (404 NOT_FOUND...); CURVC_E_TRANSPORT; ...
 * Ownership as for curvc_session_create(). */
curvc_status curvc_session_open(curvc_client *c, const char *id, curvc_session **out,
                                curvc_error *err);

/* curvc_session_free - free @s; the session stays on the daemon. */
void curvc_session_free(curvc_session *s);

/* curvc_session_close - delete the session on the daemon if this client
 * created or imported it and it is not kept (a 404: already deleted or
 * expired, is not an error), then free @s, whatever the outcome. A
 * session opened by id is kept. NULL is a no-op. */
curvc_status curvc_session_close(curvc_session *s, curvc_error *err);

/* curvc_session_set_keep - whether curvc_session_close() leaves the
 * session on the daemon (1) or deletes it (0). */
void curvc_session_set_keep(curvc_session *s, int keep);

/* curvc_session_set_idle_ttl - the daemon deletes the session @seconds
 * after its last write (0: never; -1: the daemon's --idle-ttl). */
curvc_status curvc_session_set_idle_ttl(curvc_session *s, long long seconds, curvc_error *err);

/* curvc_session_set_history - how many of its latest steps the session
 * keeps in its history (GET .../steps; 0: none); -1 goes back to the
 * daemon's --history. */
curvc_status curvc_session_set_history(curvc_session *s, long long steps, curvc_error *err);

/* curvc_session_delete - delete the session on the daemon (@s stays valid
 * until curvc_session_free()). */
curvc_status curvc_session_delete(curvc_session *s, curvc_error *err);

/* curvc_session_patch - change hyperparameters between steps. */
curvc_status curvc_session_patch(curvc_session *s, const char *config_json, curvc_error *err);

/* curvc_session_get_json - the daemon's description of the session as it
 * is now (config, layout, step, last_step...). Ownership: the caller
 * free()s *@json. */
curvc_status curvc_session_get_json(curvc_session *s, char **json, curvc_error *err);

/*
 * curvc_session_steps_json - one page of the session's step history
 * (GET /v1/sessions/{id}/steps): the steps after @since, at most
 * @page_size (1..1000), oldest first, as the daemon's {"steps": [...],
 * "latest_step", "oldest_step", "next_since"} JSON text.
 * Return: CURVC_OK; CURVC_E_INVALID; CURVC_E_PROBLEM (e.g. 404);
 * CURVC_E_TRANSPORT; ... Ownership: the caller free()s *@json.
 */
curvc_status curvc_session_steps_json(curvc_session *s, unsigned long long since, size_t page_size,
                                      char **json, curvc_error *err);

/* curvc_session_info - the description the session was made from (the
 * reply of create, open or import) as JSON text. Ownership: borrowed,
 * valid until curvc_session_free(). */
const char *curvc_session_info(const curvc_session *s);

/*
 * curvc_session_list - one page of the sessions the client's token may
 * see, oldest first: the daemon's {"sessions": [...], "next_page_token"}
 * as JSON text.
 * @page_size: 1..1000.
 * @page_token: NULL or "" for the first page, else the next_page_token
 * of the page before.
 * Return: CURVC_OK; CURVC_E_INVALID (a token that is not one);
 * CURVC_E_PROBLEM (e.g. 400 INVALID_QUERY); CURVC_E_TRANSPORT; ...
 * Ownership: the caller free()s *@json.
 */
curvc_status curvc_session_list(curvc_client *c, size_t page_size, const char *page_token,
                                char **json, curvc_error *err);

/*
 * curvc_session_export - the session's whole state as the daemon's
 * portable blob (GET /v1/sessions/{id}/state), @len bytes.
 * Return: CURVC_OK; CURVC_E_PROBLEM (404...); CURVC_E_TRANSPORT; ...
 * Ownership: the caller free()s *@blob.
 */
curvc_status curvc_session_export(curvc_session *s, unsigned char **blob, size_t *len,
                                  curvc_error *err);

/*
 * curvc_session_import - a new session (new id) from an exported blob, at
 * the blob's step. Not retried once the blob may have reached the daemon
 * (a second try could import it twice).
 * Return: CURVC_OK and *@out; CURVC_E_PROBLEM (400 INVALID_STATE for a
 * damaged blob...); CURVC_E_TRANSPORT; ...
 * Ownership: as for curvc_session_create().
 */
curvc_status curvc_session_import(curvc_client *c, const void *blob, size_t len,
                                  curvc_session **out, curvc_error *err);

const char *curvc_session_id(const curvc_session *s);
size_t curvc_session_dim(const curvc_session *s);
/* curvc_session_steps - completed steps as last seen (the next step is this + 1). */
uint64_t curvc_session_steps(const curvc_session *s);

/* curvc_session_report - the last completed step's report as JSON text
 * (the optimizer's figures: damping, rho, CG iterations...), or "{}".
 * Ownership: borrowed, valid until the next step or curvc_session_free(). */
const char *curvc_session_report(const curvc_session *s);

/*
 * curvc_layer - one layer's statistics for K-FAC (see curv_layer_stats):
 * @rows x n_in activations without the bias 1, @rows x n_out signals,
 * each example's own loss derivative (not divided by the batch size).
 * @examples: 0 means @rows (dense); conv2d rows = examples x positions.
 */
typedef struct curvc_layer {
    const char *block;
    size_t rows;
    size_t examples;
    const double *acts;
    const double *signals;
} curvc_layer;

/*
 * curvc_step_in - what a step sends; fields a kind does not read stay zero.
 * @grad: the mini-batch mean gradient, curvc_session_dim() doubles.
 * @params, @grad_sq: the same length, or NULL.
 * @loss, @has_loss: the mini-batch mean loss.
 * @batch: the examples the gradient averages over (K-FAC reads the
 *         gradient's noise from it), or 0 to leave it out.
 */
typedef struct curvc_step_in {
    const double *grad;
    const double *params;
    const double *grad_sq;
    const curvc_layer *layers;
    size_t n_layers;
    double loss;
    int has_loss;
    size_t batch;
} curvc_step_in;

typedef enum {
    CURVC_REQ_CURVATURE_PRODUCT = 1, /* answer: C v for each vector (n_vectors x dim) */
    CURVC_REQ_LOSS = 2,              /* answer: mean loss at theta + v (n_vectors) */
    CURVC_REQ_QUADRATIC_FORM = 3     /* answer: v_i^T C v_j, row-major (n_vectors^2) */
} curvc_request_kind;

/*
 * curvc_request - a callback of the step in progress. C is the mini-batch
 * mean Gauss-Newton / Fisher matrix without damping; theta and the
 * mini-batch stay fixed for the whole step.
 * @vectors: @n_vectors rows of @dim doubles (borrowed for the call).
 */
typedef struct curvc_request {
    curvc_request_kind kind;
    size_t n_vectors;
    size_t dim;
    const double *vectors;
    size_t n_values;
} curvc_request;

/* curvc_oracle - writes the @req->n_values answer doubles into @answer;
 * returns 0, or nonzero to abandon the step (CURVC_E_CALLBACK). */
typedef int (*curvc_oracle)(void *user, const curvc_request *req, double *answer);

/*
 * curvc_step - post the next step (curvc_session_steps() + 1), answer its
 * callbacks with @oracle (may be NULL for kinds that never ask) and write
 * the update (theta += update) to @update, curvc_session_dim() doubles.
 * When the daemon lost the step in progress (a restart: 409
 * NO_CALLBACK_PENDING) the step is posted again from its beginning.
 * Return: CURVC_OK (update written, step counted); CURVC_E_PROBLEM (bad
 * shapes, non-finite values, a step out of order: @err names the field);
 * CURVC_E_CALLBACK; CURVC_E_TRANSPORT; CURVC_E_PROTOCOL; CURVC_E_NOMEM.
 * @update is written only on CURVC_OK.
 */
curvc_status curvc_step(curvc_session *s, const curvc_step_in *in, curvc_encoding enc,
                        curvc_oracle oracle, void *user, double *update, curvc_error *err);

#endif
