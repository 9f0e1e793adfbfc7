/* SPDX-License-Identifier: MIT */
/* The crash suite's pieces (tests/server/test_crash.c): the daemon as a
 * child process to SIGKILL and start again, and the trainer of a callback
 * session (K-FAC adaptive, HF) whose exchanges a kill may cut, with its
 * in-process reference stepped in lock-step. */
#ifndef CURVD_CRASH_UTIL_H
#define CURVD_CRASH_UTIL_H

#include <pthread.h>
#include <sys/types.h>

#include "curv.h"
#include "srvutil.h"
#include "testutil.h"

/* ---- The daemon process ---- */

struct cu_daemon {
    const char *db;  /* its database, borrowed */
    pid_t pid;       /* the running daemon, 0: none */
    int err_fd;      /* read end of its stderr, -1: none */
    pthread_t drain; /* reads its stderr once the port is known */
    int draining;
    unsigned port;
    char base[64];            /* "http://127.0.0.1:PORT" once ready */
    int snapshot_after_reply; /* the next spawn's due snapshots: 1 after the reply, 0 with
                                 their step (every session is logged, however small) */
    int records_in_files;     /* the next spawn's step records: 1 every one in a file beside
                                 the database (--log-file-min 0), 0 the default (rows here) */
    /* Its --node-id (NULL: "cu-daemon": a restart takes its leases back
     * at once) and --lease-ttl in ms (NULL: the daemon's default). */
    const char *node_id, *lease_ttl_ms;
};

/* Which daemon to run for a test binary called @argv0: $CURVD_BIN, else
 * BUILD/curvd when not older than BUILD/libcurvd.a (this binary being
 * BUILD/tests/server/NAME), else this binary with --as-daemon. Returns
 * its description for the log. */
const char *cu_find_daemon(const char *argv0);

/* What main() does first: OpenBLAS on one thread (as curvd), and with
 * --as-daemon the daemon (its main() on --db, full durability), returning
 * its exit status; else the daemon
 * found (printed after "@suite: "), no CURVD_* environment, SIGPIPE
 * ignored, curl initialised (curl_global_cleanup() is main's), srvutil's
 * 10 s timeout; returns -1. */
int cu_main_begin(int argc, char **argv, const char *suite);

/* Start the daemon on d->db (stderr piped here, not yet read). */
void cu_spawn(struct cu_daemon *d);
/* Read its stderr up to "listening on" (10 s at most), then drain it. */
void cu_wait_ready(struct cu_daemon *d);
/* SIGKILL it if still there, reap it, close its pipe. */
void cu_reap(struct cu_daemon *d);

void cu_sleep_s(double s);

/* SIGKILL @pid @delay seconds from now, from a thread of its own. */
struct cu_killer {
    pid_t pid;
    double delay;
    pthread_t th;
};
void cu_killer_arm(struct cu_killer *k, pid_t pid, double delay);
void cu_killer_join(struct cu_killer *k);

/* ---- A session as the trainer knows it ---- */

struct cu_sess {
    char id[33];
    curv_opt *ref; /* libcurv, fed every step this test saw acknowledged */
    long acked;    /* last step whose reply (200) reached the trainer */
    char *last;    /* that reply's body, for the replay check */
    size_t last_len;
};

/* Keep the 200 reply @r (moved out of it) as @s's last for step @t, which
 * must be the one after s->acked. */
void cu_sess_ack(struct cu_sess *s, long t, struct su_resp *r);
/* Re-post step s->acked (its body @body) to @base: the stored reply must
 * come back byte for byte; @what names the session in a failure. */
void cu_expect_replay(const char *base, const struct cu_sess *s, const char *body,
                      const char *what);

/* ---- A callback session ---- */

enum cu_problem {
    CU_KFAC_ADAPTIVE, /* a tiny tanh MLP (testutil), statistics every step */
    CU_HF             /* a fixed SPD quadratic with the test layout's gradients */
};

/* The trainer of one kfac (adaptive) or hf session, with two in-process
 * references: s.ref, stepped (tu_drive) only by acknowledged steps, and
 * @lock, driven in lock-step with the daemon (the same callbacks,
 * answered with the same values) and cancelled with it. Both must give
 * the daemon's update to the bit. The stored state is s.ref's: @lock's
 * differs in its request counter, which a cancel does not rewind (ids are
 * unique over an optimizer's life) while a restarted daemon does. */
struct cu_cb {
    enum cu_problem problem;
    struct cu_sess s;
    curv_opt *lock;
    struct su_trainer tr;
    curv_layout *layout;
    tu_mlp net;      /* CU_KFAC_ADAPTIVE */
    double *G;       /* CU_HF: the curvature */
    double *g, *gsq; /* CU_HF: step input */
    tu_quad q;
    char *last_body; /* the body of step s.acked (for its replay) */
    /* The step in progress (s.acked + 1), if begun: */
    char *body;      /* what was posted */
    int ref_pending; /* @lock awaits the answer to ref_req */
    curv_request ref_req;
    double *ref_u; /* @lock's update once it completed */
    int ref_done;
    struct su_callback cb; /* the daemon's latest callback (cb.url "" if none) */
    double *answer;        /* our answer to it, when posted (reply unseen) */
    long callbacks;        /* callbacks answered, over the session's life */
    long cut_answers;      /* kills that cut the post of an answer */
};

/* The input of step s.acked + 1. HF: the gradient su_grad(step, @phase)
 * on the fixed quadratic, c->q set for it (the answers' trainer); K-FAC:
 * the MLP's current batch (@phase unused). Borrows c's buffers. */
curv_step_input cu_cb_input(struct cu_cb *c, double phase);

/* Create @problem's session on @base and its reference. */
void cu_cb_new(struct cu_cb *c, enum cu_problem problem, const char *base);
void cu_cb_free(struct cu_cb *c);

enum cu_outcome {
    CU_DONE, /* the step was acknowledged (200) and checked */
    CU_CUT,  /* a transfer failed: the daemon is gone mid-step */
    CU_HELD  /* stopped with a callback unanswered (after @hold answers) */
};
/* Post step s.acked + 1 to @base and answer its callbacks, the reference
 * in lock-step (its requests and update must be the daemon's, to the
 * bit); with @hold >= 0 stop once @hold callbacks are answered and the
 * next is in hand. Any reply other than 200, 202 or a failed transfer
 * fails the test. */
enum cu_outcome cu_cb_step(struct cu_cb *c, const char *base, int hold);

/* After a restart of the daemon at @base: the session at @step (checked
 * by the caller to be s.acked or s.acked + 1). The callback of a step cut
 * or held must be 409 NO_CALLBACK_PENDING; a step applied but never
 * acknowledged is completed by the reference and re-posted (its stored
 * reply checked and acknowledged now, returns 1); else the last
 * acknowledged step's replay is checked and the reference's step in
 * progress cancelled, to be posted again from its beginning (returns 0). */
int cu_cb_recover(struct cu_cb *c, const char *base, long step);

#endif
