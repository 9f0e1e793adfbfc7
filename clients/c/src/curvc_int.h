/* SPDX-License-Identifier: MIT */
/* Internal to the C client: the transport, the growable text buffer, and
 * the session's block table. */
#ifndef CURVC_INT_H
#define CURVC_INT_H

#include <stddef.h>

#include "curvc.h"

#include <jansson.h>
#include <stdint.h>

struct curvc_client {
    char *base;        /* "http://host:port" without a trailing slash */
    char *auth;        /* "Authorization: Bearer ..." or NULL */
    void *curl;        /* CURL *, kept for keep-alive */
    unsigned retries;  /* further tries at most (UINT_MAX: as the budget allows) */
    double first_wait; /* seconds: the back-off's first cap, doubling */
    double max_wait;   /* seconds: the back-off's cap */
    double budget;     /* seconds of retrying in all */
    long timeout;      /* seconds */
    unsigned long requests;
    /* The clock, the sleep and the jitter in [0, 1]: tests replace them. */
    double (*clock)(void);
    void (*sleep)(double seconds);
    double (*jitter)(curvc_client *c);
    uint64_t rng; /* the default jitter's state */
};

/* One block as the wire sees it: a [rows, cols] tensor (vector: [size]). */
struct curvc_blk {
    char name[64];
    int vector, bias;
    size_t rows, cols, size, offset; /* a layer's n_in is cols - bias */
};

struct curvc_session {
    curvc_client *client;
    char id[40];
    struct curvc_blk *blocks;
    size_t n_blocks;
    size_t dim;
    uint64_t steps;
    char *report; /* JSON text of the last step's report, or NULL */
    char *info;   /* the description the session was made from (JSON text) */
    int keep;     /* curvc_session_close() leaves it on the daemon */
};

/* A growable byte buffer; on allocation failure it stays failed (oom). */
struct curvc_buf {
    char *p;
    size_t len, cap;
    int oom;
};

void curvc__buf_add(struct curvc_buf *b, const void *data, size_t n);
void curvc__buf_cat(struct curvc_buf *b, const char *s); /* a NUL-terminated text */
void curvc__buf_printf(struct curvc_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void curvc__buf_str(struct curvc_buf *b, const char *s); /* a JSON string, escaped */
void curvc__buf_clear(struct curvc_buf *b);

/* A reply: the whole body, and where its JSON part ends. */
struct curvc_reply {
    long status;
    struct curvc_buf body;
    size_t json_len; /* Inference-Header-Content-Length, or the body's length */
};

/* The @json_len of a body of bytes only (application/octet-stream without
 * the binary extension's header), e.g. a state blob. */
#define CURVC__OCTETS ((size_t)-1)

/*
 * curvc__request - one request with the retries of curvc_client: a failed
 * connection, a 503 and a 409 SESSION_BUSY are tried again (a
 * non-idempotent request only when nothing reached the daemon). A reply
 * >= 400 fills @err from its problem and returns CURVC_E_PROBLEM.
 * @json_len: 0 for JSON, the JSON header's length for the binary
 * extension, CURVC__OCTETS for bytes only.
 */
curvc_status curvc__request(curvc_client *c, const char *method, const char *path, const void *body,
                            size_t len, size_t json_len, int idempotent, struct curvc_reply *out,
                            curvc_error *err);
void curvc__reply_clear(struct curvc_reply *r);

/* curvc__fail - set @err's text (and no problem fields); returns @st. */
curvc_status curvc__fail(curvc_error *err, curvc_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* curvc__parse - the JSON part of a reply, or CURVC_E_PROTOCOL. */
curvc_status curvc__parse(const struct curvc_reply *r, json_t **root, curvc_error *err);

/* What the client does about a problem's reason (problems.c) besides
 * reporting it: CURVC__RETRY the request, CURVC__RESTART_STEP (post the
 * step again: the daemon lost it); 0 for other and unknown reasons. */
#define CURVC__RETRY 1u
#define CURVC__RESTART_STEP 2u
unsigned curvc__reason_does(const char *reason);

#endif
