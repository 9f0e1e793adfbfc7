/* SPDX-License-Identifier: MIT */
/*
 * SIGKILL durability of the real daemon process (SQLite's own method): a
 * trainer steps five sessions while the parent kills curvd at seeded
 * random moments (mid-request from a second thread, between requests,
 * with a callback unanswered, and during start-up), restarts it on the
 * same database and checks after each restart that every acknowledged
 * step is there, at most the one step in flight was applied without an
 * acknowledgement, and re-posting the last step replays its stored reply.
 * Every update is compared with the same optimizer run in-process by
 * libcurv (bit for bit), and at the end the stored state (its parts,
 * joined) and PRAGMA integrity_check are read with sqlite3.
 *
 * The sessions: AdaGrad-diag, MBAG, K-FAC simple mode with statistics
 * every other step (whose commits write only the state parts that
 * changed), and two that call back (crash_util.c): K-FAC adaptive on a
 * tiny MLP (quadratic-form and loss callbacks) and HF on a quadratic
 * (curvature products). A kill cuts their exchanges anywhere; the daemon
 * forgets a step in progress, so after the restart the trainer's pending
 * callback must be 409 NO_CALLBACK_PENDING and the step is posted again
 * from its beginning. Their references step in lock-step with the daemon
 * (the same requests, to the bit, answered with the same values) and
 * cancel an abandoned step (curv_opt_cancel) to start it over, as the
 * restarted daemon starts it over from its stored state: the updates
 * must agree to the bit all the same.
 *
 * Recovery time: after each restart, from spawning the daemon to its
 * "listening" line and to each session's first answers (the replay of its
 * last step, which loads it; the 409 of a forgotten callback). The median
 * and maximum are printed. Each restart must have every session back
 * within RECOVERY_BOUND_S: a generous bound that only says recovery
 * completes at all (the figures are milliseconds), not a performance goal.
 *
 * The daemon is $CURVD_BIN, else BUILD/curvd next to this binary's build
 * tree when it is newer than BUILD/libcurvd.a, else this very binary
 * re-executed with --as-daemon (same server archive, e.g. under `make asan`).
 * CURVD_CRASH_SEED picks another seed.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crash_util.h"
#include "curv.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = SU_D, MIN_KILLS = 30, WANT_KILLS = 100 };
/* The sessions: first-order ones (one exchange a step), then callback ones. */
enum { ADAGRAD, MBAG, KFAC, KFAC_ADAPTIVE, HF, NSESS, NPLAIN = KFAC_ADAPTIVE };
static const char *const names[NSESS] = {"adagrad_diag", "mbag", "kfac", "kfac adaptive", "hf"};
enum { ROWS = 3 };  /* K-FAC's statistics: rows of the "fc" block (4 inputs, 2 outputs) */
#define TIME_S 10.0 /* then stop at WANT_KILLS or this; past it only to reach MIN_KILLS */
#define HARD_CAP_S 20.0
#define RECOVERY_BOUND_S 30.0 /* every session back after a restart within this */
enum { MAX_RESTARTS = 4 * WANT_KILLS };

/* Recovery times of each restart, in seconds from the spawn. */
struct recovery {
    int n;
    double boot[MAX_RESTARTS];        /* to "listening on" */
    double sess[NSESS][MAX_RESTARTS]; /* to session's recovery answers (-1: at step 0) */
    double all[MAX_RESTARTS];         /* to every session's */
};

struct fx {
    char dir[256], db[300];
    struct cu_daemon d;
    struct cu_sess plain[NPLAIN];
    struct cu_cb cb[NSESS - NPLAIN];
    struct cu_sess *s[NSESS]; /* every session, plain and callback */
    curv_layout *layout;
    tu_rng rng;
    struct recovery rec;
    int applied[NSESS]; /* steps applied but not acknowledged at a kill */
};

static struct cu_cb *cb_of(struct fx *f, int si)
{
    return si >= NPLAIN ? &f->cb[si - NPLAIN] : NULL;
}

/* ---- The first-order sessions' trainer (requests through srvutil, 10 s timeout) ---- */

/* The K-FAC session's statistics of step @t for block "fc": activations
 * ROWS x 4, then signals ROWS x 2 (deterministic). */
static void kfac_stats(long t, double acts[ROWS * 4], double sig[ROWS * 2])
{
    for (int i = 0; i < ROWS * 4; i++)
        acts[i] = sin(0.7 * (double)(t * 13 + i));
    for (int i = 0; i < ROWS * 2; i++)
        sig[i] = 0.1 * cos(0.3 * (double)(t * 7 + i));
}

/* Statistics go with every other step: between them K-FAC's factors, and
 * with inv_interval 3 its eigendecompositions, keep their parts, so the
 * daemon commits only some parts of that session. */
static int kfac_has_stats(long t)
{
    return t % 2 == 1;
}

static char *step_body(int s, long t)
{
    double g[D];
    su_grad(t, 1.3 * s, g);
    json_t *b = su_step_json(t, g, 0);
    if (s == KFAC && kfac_has_stats(t)) {
        double acts[ROWS * 4], sig[ROWS * 2];
        kfac_stats(t, acts, sig);
        json_object_set_new(b, "layers",
                            json_pack("[{s:s, s:o, s:o}]", "block", "fc", "activations",
                                      su_tensor("a", json_pack("[i,i]", ROWS, 4), acts, ROWS * 4),
                                      "signals",
                                      su_tensor("s", json_pack("[i,i]", ROWS, 2), sig, ROWS * 2)));
    }
    char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17));
    json_decref(b);
    return text;
}

/* The reference's update for step @t of session @si, which must equal
 * the daemon's @u bit for bit. */
static void check_update(struct cu_sess *s, int si, long t, const double *u)
{
    double g[D], want[D], acts[ROWS * 4], sig[ROWS * 2];
    su_grad(t, 1.3 * si, g);
    char what[64];
    snprintf(what, sizeof what, "session %d step %ld", si, t);
    if (si != KFAC) {
        su_check_update(s->ref, g, u, what);
        return;
    }
    kfac_stats(t, acts, sig);
    curv_layer_stats ls = {
        .block = 0, .rows = ROWS, .examples = ROWS, .acts = acts, .signals = sig};
    int with = kfac_has_stats(t);
    curv_step_input in = {
        .grad = g, .len = D, .dtype = CURV_F64, .layers = with ? &ls : NULL, .n_layers = with};
    curv_error cerr;
    curv_request req; /* simple mode never asks; the kind may, so a place is required */
    tu_assert_status(curv_opt_step(s->ref, &in, want, &req, &cerr), CURV_OK, &cerr);
    for (int i = 0; i < D; i++)
        if (memcmp(&u[i], &want[i], sizeof want[i]) != 0)
            fail_msg("%s, element %d: daemon %.17g, libcurv %.17g", what, i, u[i], want[i]);
}

/* A 200 reply to step @t of session @si seen for the first time: step the
 * reference and compare the update bit for bit; keep the body. */
static void accept_reply(struct fx *f, int si, long t, struct su_resp *r)
{
    double u[D];
    if (su_update_of(r->body, t, u) != 0)
        fail_msg("session %d step %ld: bad reply %s", si, t, r->body);
    check_update(f->s[si], si, t, u);
    cu_sess_ack(f->s[si], t, r);
}

static void steps_url(const struct fx *f, int si, char *url, size_t cap)
{
    snprintf(url, cap, "%s/v1/sessions/%s/steps", f->d.base, f->s[si]->id);
}

/* A step while the daemon lives: it must be acknowledged. */
static void step_ok(struct fx *f, int si)
{
    if (cb_of(f, si)) {
        assert_int_equal(cu_cb_step(cb_of(f, si), f->d.base, -1), CU_DONE);
        return;
    }
    char path[128], *body = step_body(si, f->s[si]->acked + 1);
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", f->s[si]->id);
    struct su_resp r;
    json_decref(su_call(f->d.base, "POST", path, body, 200, &r));
    accept_reply(f, si, f->s[si]->acked + 1, &r);
    su_resp_free(&r);
    free(body);
}

/* Post the next step of session @si (and answer its callbacks) and
 * SIGKILL the daemon @delay seconds later from another thread; 1 if the
 * step was acknowledged all the same. */
static int kill_mid_step(struct fx *f, int si, double delay)
{
    struct cu_killer k;
    cu_killer_arm(&k, f->d.pid, delay);
    if (cb_of(f, si)) {
        enum cu_outcome o = cu_cb_step(cb_of(f, si), f->d.base, -1);
        cu_killer_join(&k);
        return o == CU_DONE;
    }
    char url[256], *body = step_body(si, f->s[si]->acked + 1);
    steps_url(f, si, url, sizeof url);
    struct su_resp r;
    CURLcode rc = su_try_request("POST", url, body, &r);
    cu_killer_join(&k);
    free(body);
    int acked = rc == CURLE_OK && r.status == 200;
    if (acked)
        accept_reply(f, si, f->s[si]->acked + 1, &r);
    else if (rc == CURLE_OK)
        fail_msg("step refused: %ld %s", r.status, r.body);
    su_resp_free(&r);
    return acked;
}

/* After a restart (spawned at @spawned): where does each session stand,
 * and does re-posting its last step replay the stored reply? @inflight[si]
 * is 1 when a step of session si was in flight, unacknowledged, at the
 * kill. The recovery times go to f->rec. */
static int recover(struct fx *f, const int *inflight, double spawned)
{
    struct recovery *rec = &f->rec;
    int applied = 0, n = rec->n;
    for (int si = 0; si < NSESS; si++) {
        struct cu_sess *s = f->s[si];
        long step = su_session_step(f->d.base, s->id);
        if (step < s->acked)
            fail_msg("%s lost acknowledged steps: at %ld, %ld acknowledged", names[si], step,
                     s->acked);
        if (step > s->acked + inflight[si])
            fail_msg("%s applied unacknowledged steps: at %ld, %ld acknowledged", names[si], step,
                     s->acked);
        if (cb_of(f, si)) {
            int a = cu_cb_recover(cb_of(f, si), f->d.base, step);
            applied += a;
            f->applied[si] += a;
        } else if (step == s->acked && step > 0) {
            char *body = step_body(si, step);
            cu_expect_replay(f->d.base, s, body, names[si]);
            free(body);
        } else if (step > 0) { /* applied, never acknowledged: now it is */
            char *body = step_body(si, step), path[128];
            struct su_resp r;
            snprintf(path, sizeof path, "/v1/sessions/%s/steps", s->id);
            json_decref(su_call(f->d.base, "POST", path, body, 200, &r));
            free(body);
            accept_reply(f, si, step, &r);
            su_resp_free(&r);
            applied++;
            f->applied[si]++;
        }
        if (n < MAX_RESTARTS)
            rec->sess[si][n] = step > 0 ? su_now_s() - spawned : -1;
    }
    double all = su_now_s() - spawned;
    if (all > RECOVERY_BOUND_S)
        fail_msg("the sessions took %.1f s to come back after a restart (bound %.0f s)", all,
                 RECOVERY_BOUND_S);
    if (n < MAX_RESTARTS) {
        rec->all[n] = all;
        rec->n++;
    }
    return applied;
}

/* The file, read with sqlite3: intact, every session at its last acknowledged
 * step with the reference's state. */
/* The daemon up: every session's state, exported (its snapshot with the
 * steps logged after it replayed), is the reference's at its last
 * acknowledged step, byte for byte. */
static void check_states(struct fx *f)
{
    for (int si = 0; si < NSESS; si++) {
        const struct cu_sess *s = f->s[si];
        size_t len, got_len;
        unsigned char *want = tu_snapshot(s->ref, &len);
        unsigned char *got = su_export_state(f->d.base, s->id, &got_len, NULL);
        if (got_len != len || memcmp(got, want, len) != 0)
            fail_msg("%s: the exported state (%zu bytes) is not the reference's (%zu)", names[si],
                     got_len, len);
        curv_free(want);
        free(got);
    }
}

/* The daemon down: the file is sound, and each session and its stored
 * reply are at its last acknowledged step. */
static void check_db(struct fx *f)
{
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(f->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_stmt *q = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &q, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    assert_string_equal((const char *)sqlite3_column_text(q, 0), "ok");
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_prepare_v2(db,
                                        "SELECT s.step, r.step FROM sessions s JOIN "
                                        "step_responses r ON r.session_id = s.id WHERE s.id = ?",
                                        -1, &q, NULL),
                     SQLITE_OK);
    for (int si = 0; si < NSESS; si++) {
        const struct cu_sess *s = f->s[si];
        sqlite3_bind_text(q, 1, s->id, -1, SQLITE_STATIC);
        assert_int_equal(sqlite3_step(q), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int64(q, 0), s->acked);
        assert_int_equal(sqlite3_column_int64(q, 1), s->acked);
        sqlite3_reset(q);
    }
    sqlite3_finalize(q);
    sqlite3_close(db);
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* "median M max X" in ms of the @n values @v that are >= 0. */
static void print_spread(const char *what, const double *v, int n)
{
    double *w = tu_alloc(n > 0 ? (size_t)n : 1);
    int k = 0;
    for (int i = 0; i < n; i++)
        if (v[i] >= 0)
            w[k++] = v[i];
    qsort(w, (size_t)k, sizeof *w, by_value);
    if (k)
        printf("crash: recovery, %-22s median %7.1f ms, max %7.1f ms (%d restarts)\n", what,
               1e3 * w[k / 2], 1e3 * w[k - 1], k);
    free(w);
}

static void print_recovery(const struct recovery *rec)
{
    print_spread("spawn to listening:", rec->boot, rec->n);
    char what[64];
    for (int si = 0; si < NSESS; si++) {
        snprintf(what, sizeof what, "to %s back:", names[si]);
        print_spread(what, rec->sess[si], rec->n);
    }
    print_spread("to every session back:", rec->all, rec->n);
}

static void create_sessions(struct fx *f)
{
    const tu_kv kfac_kv[] = {{"cov_interval", 2}, {"inv_interval", 3}, {"weight_decay", 0}};
    for (int si = 0; si < NPLAIN; si++) {
        struct cu_sess *s = f->s[si];
        json_t *config = si == KFAC
                             ? json_pack("{s:s, s:i, s:i, s:i}", "mode", "simple", "cov_interval",
                                         2, "inv_interval", 3, "weight_decay", 0)
                             : NULL;
        json_decref(su_create(f->d.base, names[si], config, 201, s->id, NULL));
        assert_int_equal(strlen(s->id), 32);
        curv_opt_kind kind;
        assert_int_equal(curv_opt_kind_parse(names[si], &kind), CURV_OK);
        /* The K-FAC session takes the default precision, fp32. */
        s->ref = si == KFAC ? tu_kfac_opt(f->layout, kfac_kv, 3, "mode", "simple", "precision",
                                          "fp32", NULL)
                            : tu_new_opt(kind, f->layout, NULL);
    }
    cu_cb_new(&f->cb[0], CU_KFAC_ADAPTIVE, f->d.base);
    cu_cb_new(&f->cb[1], CU_HF, f->d.base);
}

static void test_sigkill(void **state)
{
    struct fx *f = *state;
    unsigned seed = getenv("CURVD_CRASH_SEED") ? (unsigned)atoi(getenv("CURVD_CRASH_SEED")) : 2024;
    tu_rng_seed(&f->rng, seed);
    cu_spawn(&f->d);
    cu_wait_ready(&f->d);
    create_sessions(f);
    double t0 = su_now_s(), boot = 0.01, kd[NSESS]; /* start-up time, kill delays */
    for (int si = 0; si < NSESS; si++)
        kd[si] = cb_of(f, si) ? 0.003 : 0.001;
    int kills = 0, mid = 0, mid_acked = 0, held = 0, between = 0, at_boot = 0, applied = 0;
    long requests = 0;
    while (kills < WANT_KILLS && (su_now_s() - t0 < TIME_S || kills < MIN_KILLS) &&
           su_now_s() - t0 < HARD_CAP_S) {
        int n = (int)(tu_uniform(&f->rng) * 5);
        for (int k = 0; k < n; k++, requests++)
            step_ok(f, (int)(tu_uniform(&f->rng) * NSESS));
        int inflight[NSESS] = {0};
        double mode = tu_uniform(&f->rng);
        /* Kills go to the callback sessions more often: their exchanges
         * are where a kill can land in more places. */
        int si = tu_uniform(&f->rng) < 0.6 ? NPLAIN + (int)(tu_uniform(&f->rng) * (NSESS - NPLAIN))
                                           : (int)(tu_uniform(&f->rng) * NPLAIN);
        if (mode < 0.25 && cb_of(f, si)) { /* kill with a callback in hand, unanswered */
            requests++;
            int hold = (int)(tu_uniform(&f->rng) * 4);
            if (cu_cb_step(cb_of(f, si), f->d.base, hold) == CU_HELD)
                held++, inflight[si] = 1;
            else
                between++;       /* the step asked fewer: done */
        } else if (mode < 0.6) { /* SIGKILL from a second thread while a step is in flight */
            mid++, requests++;
            if (kill_mid_step(f, si, kd[si] * (0.25 + 1.5 * tu_uniform(&f->rng)))) {
                mid_acked++; /* answered before it died */
                kd[si] *= 0.8;
            } else {
                inflight[si] = 1;
                kd[si] *= 1.15;
            }
        } else {
            between++;
        }
        cu_reap(&f->d);
        kills++;
        double spawned = su_now_s();
        /* Half the daemons snapshot after the reply: kills then land in
         * those writes too. Half keep the step records in files: one log
         * then mixes rows and files, and kills land in the files' writes. */
        f->d.snapshot_after_reply = tu_uniform(&f->rng) < 0.5;
        f->d.records_in_files = tu_uniform(&f->rng) < 0.5;
        cu_spawn(&f->d);
        if (mode > 0.9) { /* and once more while it opens the database */
            cu_sleep_s(tu_uniform(&f->rng) * boot);
            cu_reap(&f->d);
            kills++;
            at_boot++;
            spawned = su_now_s();
            cu_spawn(&f->d);
        }
        cu_wait_ready(&f->d);
        double up = su_now_s() - spawned;
        boot = 0.8 * boot + 0.2 * up;
        if (f->rec.n < MAX_RESTARTS)
            f->rec.boot[f->rec.n] = up;
        applied += recover(f, inflight, spawned);
    }
    for (int k = 0; k < 4; k++)
        for (int si = 0; si < NSESS; si++, requests++)
            step_ok(f, si);
    cu_reap(&f->d); /* the last stop is a crash too */
    check_db(f);
    cu_spawn(&f->d); /* and recovers from it by replay */
    cu_wait_ready(&f->d);
    check_states(f);
    cu_reap(&f->d);
    printf("crash: seed %u, %d kills in %.1f s (%d mid-request: %d answered before the kill, "
           "%d applied but unacknowledged; %d with a callback unanswered; %d between requests; "
           "%d during start-up), %ld step requests\n",
           seed, kills, su_now_s() - t0, mid, mid_acked, applied, held, between, at_boot, requests);
    for (int k = 0; k < NSESS - NPLAIN; k++)
        printf("crash: %s: %ld callbacks answered, %ld kills cut the post of an answer, %d "
               "steps applied but unacknowledged\n",
               names[NPLAIN + k], f->cb[k].callbacks, f->cb[k].cut_answers, f->applied[NPLAIN + k]);
    printf("crash: steps");
    for (int si = 0; si < NSESS; si++)
        printf(" %s %ld%s", names[si], f->s[si]->acked, si + 1 < NSESS ? "," : "\n");
    print_recovery(&f->rec);
    fflush(stdout);
    if (kills < MIN_KILLS)
        fail_msg("only %d kills within %.0f s", kills, HARD_CAP_S);
    if (held + f->cb[0].cut_answers + f->cb[1].cut_answers == 0)
        fail_msg("no kill landed with a callback in flight");
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, getenv("TMPDIR"), "crash", f->db, sizeof f->db);
    f->d = (struct cu_daemon){.db = f->db, .err_fd = -1};
    f->layout = su_layout_new();
    for (int si = 0; si < NSESS; si++)
        f->s[si] = si < NPLAIN ? &f->plain[si] : &f->cb[si - NPLAIN].s;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    cu_reap(&f->d); /* no daemon survives a failed test */
    for (int si = 0; si < NPLAIN; si++) {
        curv_opt_free(f->plain[si].ref);
        free(f->plain[si].last);
    }
    for (int k = 0; k < NSESS - NPLAIN; k++)
        if (f->cb[k].layout) /* created */
            cu_cb_free(&f->cb[k]);
    curv_layout_free(f->layout);
    int rc = su_rmtree(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    int rc = cu_main_begin(argc, argv, "crash");
    if (rc >= 0)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sigkill, setup, teardown),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
