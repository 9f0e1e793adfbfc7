/* SPDX-License-Identifier: MIT */
/*
 * Leases with fencing between real daemon processes sharing one SQLite
 * file (docs/CLUSTER.md "Leases and fencing"; WAL works across the
 * processes of one machine). Two daemons, "node-a" and "node-b", with a
 * lease of LEASE_MS:
 *
 * - SIGKILL: a steps a session created through b (the creating daemon
 *   does not hold it), b answers 503 SESSION_LEASED while a lives, a is
 *   killed with a step in flight, and b serves the session once a's lease
 *   has run out, from the last acknowledged step: every update and the
 *   exported state are libcurv's own, stepped in this process once per
 *   acknowledged step (nothing lost, nothing applied twice).
 * - SIGSTOP: a is stopped past its lease, b takes the session over and
 *   steps it, a is resumed and sent a step: it is refused with 503
 *   SESSION_LEASED (a's write fenced by its stale epoch, or its renewal
 *   found the lease lost first: either way nothing of a's is stored), a
 *   drops the session from memory, and the store stays b's.
 * - A daemon restarted with its own node id takes its leases back at once;
 * one stopped with SIGTERM gives them up, and another takes over at once.
 *
 * No timed assertions: the waits for a lease to run out retry with a
 * generous bound (WAIT_S), and the times are only printed.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "crash_util.h"
#include "curv.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = SU_D };
#define LEASE_MS "1500"
#define LEASE_S_MAX 2   /* Retry-After: the rest of a lease, in whole seconds rounded up */
#define WAIT_S 60.0     /* a lease runs out within this, or the test fails */
#define PHASE 0.4       /* su_grad's phase for this suite's session */
#define KILL_DELAY 0.01 /* SIGKILL this long after a step is posted: mid-step or just after */

struct fx {
    char dir[256], db[300];
    struct cu_daemon a, b;
    curv_layout *layout;
    struct cu_sess s; /* s.ref: adagrad_diag in this process, stepped once per acknowledgement */
};

static void start(struct cu_daemon *d)
{
    cu_spawn(d);
    cu_wait_ready(d);
}

/* Post step @t of the session to @base, without cmocka (a daemon may die
 * meanwhile): the transfer's result, the reply in @r (su_resp_free it). */
static CURLcode post_step(const struct fx *f, const char *base, long t, struct su_resp *r)
{
    double g[D];
    su_grad(t, PHASE, g);
    char url[160], *body = su_step_text(t, g, 0);
    snprintf(url, sizeof url, "%s/v1/sessions/%s/steps", base, f->s.id);
    CURLcode rc = su_try_request("POST", url, body, r);
    free(body);
    return rc;
}

/* A 200 to step @t: its update must be libcurv's for that step, which the
 * reference then takes (cu_sess_ack checks @t follows the last one). */
static void accept_step(struct fx *f, long t, struct su_resp *r)
{
    double g[D], u[D];
    if (r->status != 200 || su_update_of(r->body, t, u) != 0)
        fail_msg("step %ld: %ld %s", t, r->status, r->body);
    su_grad(t, PHASE, g);
    char what[64];
    snprintf(what, sizeof what, "step %ld", t);
    su_check_update(f->s.ref, g, u, what);
    cu_sess_ack(&f->s, t, r);
}

/* A refusal because another daemon holds the session: 503, reason
 * SESSION_LEASED, Retry-After 1..LEASE_S_MAX. */
static void expect_leased(const struct su_resp *r, const char *what)
{
    if (r->status != 503)
        fail_msg("%s: %ld %s, want 503 SESSION_LEASED", what, r->status, r->body);
    json_t *p = su_json(r->body, r->len);
    assert_non_null(p);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "SESSION_LEASED");
    json_decref(p);
    char *end = NULL;
    long after = strtol(r->retry_after, &end, 10);
    if (end == r->retry_after || *end || after < 1 || after > LEASE_S_MAX)
        fail_msg("%s: Retry-After '%s', want 1..%d", what, r->retry_after, LEASE_S_MAX);
}

/* Step s.acked + 1 on @base, retrying while another daemon's lease lasts
 * (each refusal checked): it must then be acknowledged. The refusals'
 * count goes to *@refused. */
static void step_through_lease(struct fx *f, const char *base, int *refused)
{
    const long t = f->s.acked + 1;
    double until = su_now_s() + WAIT_S;
    *refused = 0;
    for (;;) {
        struct su_resp r;
        CURLcode rc = post_step(f, base, t, &r);
        assert_int_equal(rc, CURLE_OK);
        if (r.status != 503) {
            accept_step(f, t, &r);
            su_resp_free(&r);
            return;
        }
        expect_leased(&r, "a step while another daemon holds the lease");
        su_resp_free(&r);
        ++*refused;
        if (su_now_s() > until)
            fail_msg("step %ld: the other daemon's lease did not run out in %.0f s", t, WAIT_S);
        cu_sleep_s(0.05);
    }
}

static void step_ok(struct fx *f, const char *base)
{
    struct su_resp r;
    assert_int_equal(post_step(f, base, f->s.acked + 1, &r), CURLE_OK);
    accept_step(f, f->s.acked + 1, &r);
    su_resp_free(&r);
}

/* A counter or gauge of @base's /metrics (the line starting with @name). */
static long long metric(const char *base, const char *name)
{
    char url[160];
    snprintf(url, sizeof url, "%s/metrics", base);
    struct su_resp r;
    assert_int_equal(su_try_request("GET", url, NULL, &r), CURLE_OK);
    assert_int_equal(r.status, 200);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *at = strstr(r.body, key);
    if (!at)
        fail_msg("no %s in /metrics", name);
    long long v = strtoll(at + strlen(key), NULL, 10);
    su_resp_free(&r);
    return v;
}

#define TAKEN "curvd_leases_total{event=\"taken\"}"
#define LOST "curvd_leases_total{event=\"lost\"}"
#define FENCED "curvd_fenced_writes_total"
#define IN_MEMORY "curvd_sessions{where=\"memory\"}"

/* The state exported through @base is the reference's, byte for byte. */
static void expect_reference_state(const struct fx *f, const char *base)
{
    size_t len, got_len;
    unsigned char *want = tu_snapshot(f->s.ref, &len);
    unsigned char *got = su_export_state(base, f->s.id, &got_len, NULL);
    if (got_len != len || memcmp(got, want, len) != 0)
        fail_msg("the stored state (%zu bytes) is not libcurv's at step %ld (%zu bytes)", got_len,
                 f->s.acked, len);
    curv_free(want);
    free(got);
}

static void create_on(struct fx *f, const char *base)
{
    json_decref(su_create(base, "adagrad_diag", NULL, 201, f->s.id, NULL));
    curv_opt_kind kind;
    assert_int_equal(curv_opt_kind_parse("adagrad_diag", &kind), CURV_OK);
    f->s.ref = tu_new_opt(kind, f->layout, NULL);
}

static void test_takeover_after_sigkill(void **state)
{
    struct fx *f = *state;
    start(&f->a);
    start(&f->b);
    create_on(f, f->b.base);
    for (int i = 0; i < 4; i++)
        step_ok(f, f->a.base);
    assert_int_equal(metric(f->b.base, TAKEN), 0); /* b created it, a holds it */
    /* b is refused while a lives and renews its lease; nothing is applied */
    struct su_resp r;
    assert_int_equal(post_step(f, f->b.base, f->s.acked + 1, &r), CURLE_OK);
    expect_leased(&r, "b while a holds the session");
    su_resp_free(&r);
    /* a dies with step 5 in flight (or just after its reply) */
    struct cu_killer k;
    cu_killer_arm(&k, f->a.pid, KILL_DELAY);
    double killed = su_now_s();
    if (post_step(f, f->a.base, f->s.acked + 1, &r) == CURLE_OK && r.status == 200)
        accept_step(f, f->s.acked + 1, &r);
    su_resp_free(&r);
    cu_killer_join(&k);
    cu_reap(&f->a);
    /* b takes the lease over once it runs out, from the last acknowledged
     * step: a step applied but not acknowledged is replayed, not redone */
    int refused = 0;
    step_through_lease(f, f->b.base, &refused);
    printf("  takeover: b served the session %.2f s after the kill (%d refusals; lease %s ms)\n",
           su_now_s() - killed, refused, LEASE_MS);
    for (int i = 0; i < 3; i++)
        step_ok(f, f->b.base);
    expect_reference_state(f, f->b.base);
    assert_true(metric(f->b.base, TAKEN) >= 1);
}

static void test_fencing_after_sigstop(void **state)
{
    struct fx *f = *state;
    start(&f->a);
    start(&f->b);
    create_on(f, f->a.base);
    for (int i = 0; i < 3; i++)
        step_ok(f, f->a.base);
    assert_int_equal(metric(f->a.base, IN_MEMORY), 1);
    assert_int_equal(kill(f->a.pid, SIGSTOP), 0);
    int refused = 0;
    step_through_lease(f, f->b.base, &refused); /* step 4, once a's lease ran out */
    step_ok(f, f->b.base);                      /* step 5 */
    assert_int_equal(kill(f->a.pid, SIGCONT), 0);
    /* a still has step 3 in memory: its step 4 is refused, never stored */
    struct su_resp r;
    assert_int_equal(post_step(f, f->a.base, 4, &r), CURLE_OK);
    expect_leased(&r, "the resumed daemon's stale step");
    su_resp_free(&r);
    long long fenced = metric(f->a.base, FENCED), lost = metric(f->a.base, LOST);
    printf("  resumed daemon: %lld fenced writes, %lld leases lost\n", fenced, lost);
    assert_true(fenced + lost >= 1);
    assert_int_equal(metric(f->a.base, IN_MEMORY), 0); /* dropped, not written */
    /* and the next step too: b holds the session */
    assert_int_equal(post_step(f, f->a.base, 6, &r), CURLE_OK);
    expect_leased(&r, "a step to the daemon that lost the session");
    su_resp_free(&r);
    expect_reference_state(f, f->b.base);
    step_ok(f, f->b.base);
    expect_reference_state(f, f->b.base);
}

/* A daemon restarted with its node id takes its own leases at once: the
 * first step after the restart is answered, not refused. */
static void test_restart_keeps_own_leases(void **state)
{
    struct fx *f = *state;
    start(&f->a);
    create_on(f, f->a.base);
    step_ok(f, f->a.base);
    cu_reap(&f->a); /* SIGKILL: its lease stays in the store */
    start(&f->a);
    step_ok(f, f->a.base);
    expect_reference_state(f, f->a.base);
}

/* A daemon stopped gracefully (SIGTERM) gives its leases up: another
 * takes its session over at once, without a refusal. */
static void test_graceful_stop_gives_leases_up(void **state)
{
    struct fx *f = *state;
    start(&f->a);
    start(&f->b);
    create_on(f, f->a.base);
    step_ok(f, f->a.base);
    assert_int_equal(kill(f->a.pid, SIGTERM), 0);
    int ws = 0;
    assert_int_equal(waitpid(f->a.pid, &ws, 0), f->a.pid);
    assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
    f->a.pid = 0;
    cu_reap(&f->a);
    step_ok(f, f->b.base); /* not 503: the lease was free */
    expect_reference_state(f, f->b.base);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, getenv("TMPDIR"), "lease", f->db, sizeof f->db);
    /* Every step record in a file (generations by lease epoch: the daemon
     * that takes a session over appends to files of its own). */
    f->a = (struct cu_daemon){.db = f->db,
                              .err_fd = -1,
                              .node_id = "node-a",
                              .lease_ttl_ms = LEASE_MS,
                              .records_in_files = 1};
    f->b = (struct cu_daemon){.db = f->db,
                              .err_fd = -1,
                              .node_id = "node-b",
                              .lease_ttl_ms = LEASE_MS,
                              .records_in_files = 1};
    f->layout = su_layout_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    if (f->a.pid > 0)
        kill(f->a.pid, SIGCONT); /* a stopped daemon is killed all the same; be sure */
    cu_reap(&f->a);
    cu_reap(&f->b);
    curv_opt_free(f->s.ref);
    free(f->s.last);
    curv_layout_free(f->layout);
    int rc = su_rmtree(f->dir);
    free(f);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    int rc = cu_main_begin(argc, argv, "lease");
    if (rc >= 0)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_takeover_after_sigkill, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fencing_after_sigstop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_keeps_own_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_graceful_stop_gives_leases_up, setup, teardown),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
