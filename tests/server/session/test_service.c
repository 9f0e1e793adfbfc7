/* SPDX-License-Identifier: MIT */
/*
 * The session service (server/session/service.c) on a store of its own,
 * without HTTP: whatever fails, memory is never ahead of the database. A
 * step that cannot be committed, a PATCH that cannot, and a step given up
 * all leave the next request with the committed state. With leases
 * (docs/CLUSTER.md), a write the store fences drops the copy in memory,
 * and a copy kept over an idle spell is used again only when nobody else
 * held the session meanwhile.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "session/leases.h"
#include "session/service.h"
#include "srvutil.h"
#include "testutil.h"

struct fx {
    struct curvd_server srv;
    char dir[256], db[300];
    curv_layout *l;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "service", f->db, sizeof f->db);
    char err[256];
    assert_int_equal(
        curvd_store_open(f->db, CURVD_DURABILITY_NORMAL, &f->srv.store, err, sizeof err),
        CURVD_STORE_OK);
    f->srv.reg = curvd_registry_new(8, (size_t)1 << 30, curvd_svc_load, &f->srv);
    assert_non_null(f->srv.reg);
    f->l = su_layout_new();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    curvd_registry_free(f->srv.reg);
    curvd_store_close(f->srv.store);
    curv_layout_free(f->l);
    su_rmtree(f->dir);
    free(f);
    return 0;
}

static void create(struct fx *f, char id[CURVD_ID_LEN + 1])
{
    char err[256];
    int64_t created = 0;
    curv_opt *o = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->l, NULL);
    assert_int_equal(curvd_svc_create(&f->srv, "t", o, NULL, id, &created, err, sizeof err),
                     CURVD_STORE_OK);
    assert_true(curvd_svc_valid_id(id));
}

static struct curvd_entry *take(struct fx *f, const char *id)
{
    struct curvd_entry *e = NULL;
    assert_int_equal(curvd_svc_take(&f->srv, id, "t", &e, NULL, NULL, 0), CURVD_REG_OK);
    return e;
}

/* Step @e's optimizer in memory (nothing committed). */
static void step_in_memory(struct curvd_entry *e)
{
    double g[SU_D], u[SU_D];
    su_grad((long)curv_opt_steps(e->opt) + 1, 0, g);
    curv_step_input in = {.grad = g, .len = SU_D, .dtype = CURV_F64};
    curv_error err;
    tu_assert_status(curv_opt_step(e->opt, &in, u, NULL, &err), CURV_OK, &err);
}

static long long stored_step(struct fx *f, const char *id)
{
    struct curvd_session s = {0};
    char err[256];
    assert_int_equal(curvd_store_get(f->srv.store, "t", id, 0, &s, err, sizeof err),
                     CURVD_STORE_OK);
    long long step = (long long)s.step;
    curvd_session_clear(&s);
    return step;
}

static void test_create_take_delete(void **state)
{
    struct fx *f = *state;
    char id[CURVD_ID_LEN + 1], err[256];
    create(f, id);
    struct curvd_entry *e = take(f, id);
    assert_int_equal(curv_opt_steps(e->opt), 0);
    assert_true(e->committed.n > 0); /* what the store holds: the next write compares */
    struct curvd_entry *busy = NULL;
    assert_int_equal(curvd_svc_take(&f->srv, id, "t", &busy, NULL, NULL, 0), CURVD_REG_BUSY);
    curvd_svc_give_back(&f->srv, e, e->bytes);
    assert_int_equal(curvd_svc_take(&f->srv, id, "other", &busy, NULL, NULL, 0),
                     CURVD_REG_NOT_FOUND);
    assert_int_equal(curvd_svc_take(&f->srv, "not-an-id", "t", &busy, NULL, NULL, 0),
                     CURVD_REG_NOT_FOUND);
    assert_int_equal(curvd_svc_delete(&f->srv, "t", id, err, sizeof err), CURVD_STORE_OK);
    assert_int_equal(curvd_svc_take(&f->srv, id, "t", &busy, NULL, NULL, 0), CURVD_REG_NOT_FOUND);
    assert_int_equal(curvd_svc_delete(&f->srv, "t", id, err, sizeof err), CURVD_STORE_NOT_FOUND);
    assert_int_equal(curvd_svc_delete(&f->srv, "t", "x", err, sizeof err), CURVD_STORE_NOT_FOUND);
}

/* One commit's outcome, seen from the commit thread. */
struct commit {
    struct curvd_svc_commit s; /* first */
    unsigned char *blob;
    curv_state_part *parts;
    int status;
    long long current;
    atomic_int released;
};

static void on_reply(struct curvd_svc_commit *s, int st, long long current, const char *err)
{
    (void)err;
    struct commit *c = (struct commit *)(void *)s;
    c->status = st;
    c->current = current;
}

static void on_release(struct curvd_svc_commit *s)
{
    struct commit *c = (struct commit *)(void *)s;
    atomic_store(&c->released, 1);
}

/* Commit @e's state as step @step through the service; wait for it. */
static int commit(struct fx *f, struct curvd_entry *e, long long step)
{
    struct commit c = {.status = -1};
    size_t len, n;
    assert_int_equal(curv_opt_save_parts(e->opt, &c.blob, &len, &c.parts, &n, NULL), CURV_OK);
    c.s = (struct curvd_svc_commit){.c = {.step = step,
                                          .content_type = "application/json",
                                          .response = "{}",
                                          .response_len = 2},
                                    .srv = &f->srv,
                                    .e = e,
                                    .tenant = "t",
                                    .blob = c.blob,
                                    .parts = c.parts,
                                    .len = len,
                                    .n_parts = n,
                                    .reply = on_reply,
                                    .release = on_release};
    curvd_svc_commit_step(&c.s);
    for (int i = 0; i < 10000 && !atomic_load(&c.released); i++)
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    assert_true(atomic_load(&c.released));
    curv_free(c.blob);
    curv_free(c.parts);
    return c.status;
}

/* A committed step stays in memory; a step the store refuses is dropped,
 * so the next request holds the committed state again. */
static void test_step_commit(void **state)
{
    struct fx *f = *state;
    char id[CURVD_ID_LEN + 1];
    create(f, id);
    struct curvd_entry *e = take(f, id);
    step_in_memory(e);
    assert_int_equal(commit(f, e, 1), CURVD_STORE_OK); /* gives e back */
    assert_int_equal(stored_step(f, id), 1);
    e = take(f, id);
    assert_int_equal(curv_opt_steps(e->opt), 1);
    step_in_memory(e);
    assert_int_equal(commit(f, e, 5), CURVD_STORE_CONFLICT); /* not the next step */
    assert_int_equal(stored_step(f, id), 1);
    e = take(f, id); /* reloaded */
    assert_int_equal(curv_opt_steps(e->opt), 1);
    curvd_svc_give_back(&f->srv, e, e->bytes);
}

/* A step given up (its reply could not be made) is forgotten. */
static void test_abandon(void **state)
{
    struct fx *f = *state;
    char id[CURVD_ID_LEN + 1];
    create(f, id);
    struct curvd_entry *e = take(f, id);
    step_in_memory(e);
    curvd_svc_abandon(&f->srv, e);
    curvd_svc_give_back(&f->srv, e, e->bytes);
    e = take(f, id);
    assert_int_equal(curv_opt_steps(e->opt), 0);
    curvd_svc_give_back(&f->srv, e, e->bytes);
}

/* A PATCH whose commit fails is rolled back to the state before it. */
static void test_reconfigure_rolls_back(void **state)
{
    struct fx *f = *state;
    char id[CURVD_ID_LEN + 1], err[256];
    create(f, id);
    struct curvd_entry *e = take(f, id);
    unsigned char *before = NULL, *after = NULL;
    size_t before_len = 0, after_len = 0, bytes = 0;
    assert_int_equal(curv_opt_save(e->opt, &before, &before_len, NULL), CURV_OK);
    curv_config *c = curv_config_new();
    assert_int_equal(curv_config_set_num(c, "lr", 0.125, NULL), CURV_OK);
    assert_int_equal(curv_opt_reconfigure(e->opt, c, NULL), CURV_OK);
    assert_int_equal(
        curvd_svc_reconfigured(&f->srv, "t", e, before, before_len, "{}", &bytes, err, sizeof err),
        CURVD_STORE_OK);
    assert_int_equal(bytes, e->bytes);
    curv_free(before);
    assert_int_equal(curv_opt_save(e->opt, &before, &before_len, NULL), CURV_OK);
    assert_int_equal(curv_config_set_num(c, "lr", 0.5, NULL), CURV_OK);
    assert_int_equal(curv_opt_reconfigure(e->opt, c, NULL), CURV_OK);
    su_raw_exec(f->db, "DELETE FROM sessions"); /* the commit cannot land */
    assert_int_not_equal(
        curvd_svc_reconfigured(&f->srv, "t", e, before, before_len, "{}", &bytes, err, sizeof err),
        CURVD_STORE_OK);
    assert_int_equal(curv_opt_save(e->opt, &after, &after_len, NULL), CURV_OK);
    assert_int_equal(after_len, before_len);
    assert_memory_equal(after, before, before_len); /* lr 0.125 again */
    curvd_svc_give_back(&f->srv, e, e->bytes);
    curv_free(before);
    curv_free(after);
    curv_config_free(c);
}

/* ---- Leases: the daemon is "me"; another daemon is played with the store's calls ---- */

#define LONG_MS (3600 * 1000)

static void leases_on(struct fx *f, size_t ttl_ms)
{
    snprintf(f->srv.node_id, sizeof f->srv.node_id, "me");
    f->srv.cfg.lease_ttl_ms = ttl_ms;
}

/* The session's lease in the store as "owner|epoch" ("-": no owner). */
static void lease_text(struct fx *f, const char *id, char *out, size_t cap)
{
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT coalesce(lease_owner, '-') || '|' || lease_epoch FROM sessions"
             " WHERE id = '%s'",
             id);
    su_raw_text(f->db, sql, out, cap);
}

static void assert_lease(struct fx *f, const char *id, const char *want)
{
    char got[160];
    lease_text(f, id, got, sizeof got);
    assert_string_equal(got, want);
}

/* "other" takes the session over from "me" at @epoch (given up first, as
 * when "me" was idle or paused past its lease): a lease that has already
 * run out (0 ms), so that "me" may take it back later. */
static void other_takes_over(struct fx *f, const char *id, int64_t epoch)
{
    char err[256];
    struct curvd_lease l;
    int st = curvd_store_lease_release(f->srv.store, "t", id, "me", epoch, err, sizeof err);
    assert_true(st == CURVD_STORE_OK || st == CURVD_STORE_FENCED);
    assert_int_equal(
        curvd_store_lease_acquire(f->srv.store, "t", id, "other", 0, &l, err, sizeof err),
        CURVD_STORE_OK);
    assert_int_equal(l.epoch, epoch + 1);
}

/* Created here, not held; the first take holds it at epoch 1 and keeps
 * the copy in memory (nobody held it before). */
static void test_lease_taken_with_the_session(void **state)
{
    struct fx *f = *state;
    leases_on(f, LONG_MS);
    char id[CURVD_ID_LEN + 1];
    create(f, id);
    assert_lease(f, id, "-|0");
    struct curvd_entry *e = take(f, id);
    assert_int_equal(e->epoch, 1);
    assert_lease(f, id, "me|1");
    step_in_memory(e);
    assert_int_equal(commit(f, e, 1), CURVD_STORE_OK);
    assert_int_equal(stored_step(f, id), 1);
}

/* Writes of a copy whose lease moved on: a step, a snapshot, a PATCH are
 * fenced, write nothing, and drop the copy; the next take loads the
 * session under a new epoch. */
static void test_fenced_writes_drop_the_copy(void **state)
{
    struct fx *f = *state;
    leases_on(f, LONG_MS);
    char id[CURVD_ID_LEN + 1], err[256];
    create(f, id);
    struct curvd_entry *e = take(f, id);
    step_in_memory(e);
    assert_int_equal(commit(f, e, 1), CURVD_STORE_OK);
    e = take(f, id); /* held at epoch 1, as far as memory knows */
    other_takes_over(f, id, 1);
    step_in_memory(e);
    assert_int_equal(commit(f, e, 2), CURVD_STORE_FENCED);
    assert_int_equal(stored_step(f, id), 1);
    e = take(f, id); /* loaded again: "other"'s lease had run out */
    assert_int_equal(e->epoch, 3);
    assert_int_equal(curv_opt_steps(e->opt), 1);
    other_takes_over(f, id, 3);
    size_t bytes = 0;
    assert_int_equal(curvd_svc_snapshot(&f->srv, e, &bytes, err, sizeof err), CURVD_STORE_FENCED);
    curvd_svc_give_back(&f->srv, e, e->bytes);
    e = take(f, id);
    assert_int_equal(e->epoch, 5); /* loaded again, not the copy of epoch 3 */
    other_takes_over(f, id, 5);
    unsigned char *before = NULL;
    size_t before_len = 0;
    assert_int_equal(curv_opt_save(e->opt, &before, &before_len, NULL), CURV_OK);
    assert_int_equal(
        curvd_svc_reconfigured(&f->srv, "t", e, before, before_len, "{}", &bytes, err, sizeof err),
        CURVD_STORE_FENCED);
    curv_free(before);
    curvd_svc_give_back(&f->srv, e, e->bytes);
    e = take(f, id);
    assert_int_equal(e->epoch, 7);
    curvd_svc_give_back(&f->srv, e, e->bytes);
}

/* A session that cannot be loaded is not held: its lease is given up. */
static void test_unloadable_gives_the_lease_up(void **state)
{
    struct fx *f = *state;
    leases_on(f, LONG_MS);
    char id[CURVD_ID_LEN + 1];
    create(f, id);
    curvd_registry_drop(f->srv.reg, id);
    su_raw_exec(f->db, "UPDATE state_parts SET bytes = x'00', stamp = 0");
    struct curvd_entry *e = NULL;
    char why[256] = "";
    assert_int_equal(curvd_svc_take(&f->srv, id, "t", &e, NULL, why, sizeof why),
                     CURVD_REG_UNLOADABLE);
    assert_true(why[0] != '\0');
    assert_lease(f, id, "-|1");
}

/* Another daemon's lease that lasts: CURVD_REG_LEASED, and how long. */
static void test_leased_elsewhere(void **state)
{
    struct fx *f = *state;
    leases_on(f, LONG_MS);
    char id[CURVD_ID_LEN + 1], err[256];
    create(f, id);
    struct curvd_lease l;
    assert_int_equal(
        curvd_store_lease_acquire(f->srv.store, "t", id, "other", 60000, &l, err, sizeof err),
        CURVD_STORE_OK);
    struct curvd_entry *e = NULL;
    int64_t retry_ms = -1;
    assert_int_equal(curvd_svc_take(&f->srv, id, "t", &e, &retry_ms, NULL, 0), CURVD_REG_LEASED);
    assert_true(retry_ms > 0 && retry_ms <= 60000);
    assert_lease(f, id, "other|1");
    /* not in memory any more either: a load is refused the same way */
    curvd_registry_drop(f->srv.reg, id);
    retry_ms = -1;
    assert_int_equal(curvd_svc_take(&f->srv, id, "t", &e, &retry_ms, NULL, 0), CURVD_REG_LEASED);
    assert_true(retry_ms > 0 && retry_ms <= 60000);
}

/* Give the leases of idle sessions up (a lease time of 1 ms: idle at
 * once), as the sweeper does; wait until the store shows it. */
static void release_idle(struct fx *f, const char *id, const char *want)
{
    for (int i = 0; i < 10000; i++) {
        curvd_leases_keep(&f->srv);
        char got[160];
        lease_text(f, id, got, sizeof got);
        if (strcmp(got, want) == 0)
            return;
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    fail_msg("the idle session's lease was not given up");
}

/* A copy kept over an idle spell: used again when the next epoch follows
 * its own, loaded again when another daemon held the session meanwhile. */
static void test_idle_copy_kept_or_reloaded(void **state)
{
    struct fx *f = *state;
    leases_on(f, 1);
    char id[CURVD_ID_LEN + 1], err[256];
    create(f, id);
    struct curvd_entry *e = take(f, id);
    const curv_opt *kept = e->opt;
    curvd_svc_give_back(&f->srv, e, e->bytes);
    release_idle(f, id, "-|1");
    e = take(f, id);
    assert_int_equal(e->epoch, 2);
    assert_ptr_equal(e->opt, kept); /* nobody held it at epoch 2: the copy is current */
    curvd_svc_give_back(&f->srv, e, e->bytes);
    release_idle(f, id, "-|2");
    /* "other" holds it at epoch 3 and steps it; then "me" takes it at 4 */
    other_takes_over(f, id, 2);
    curv_opt *o = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->l, NULL);
    double g[SU_D], u[SU_D];
    su_grad(1, 0, g);
    curv_step_input in = {.grad = g, .len = SU_D, .dtype = CURV_F64};
    curv_error cerr;
    tu_assert_status(curv_opt_step(o, &in, u, NULL, &cerr), CURV_OK, &cerr);
    unsigned char *blob = NULL;
    size_t len = 0;
    assert_int_equal(curv_opt_save(o, &blob, &len, NULL), CURV_OK);
    struct curvd_step_commit c = {.step = 1,
                                  .state = {.blob = blob, .len = len},
                                  .content_type = "application/json",
                                  .epoch = 3};
    assert_int_equal(curvd_store_commit_step(f->srv.store, "t", id, &c, NULL, err, sizeof err),
                     CURVD_STORE_OK);
    curv_free(blob);
    curv_opt_free(o);
    e = take(f, id);
    assert_int_equal(e->epoch, 4);
    assert_int_equal(curv_opt_steps(e->opt), 1); /* "other"'s step, loaded */
    curvd_svc_give_back(&f->srv, e, e->bytes);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_take_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandon, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconfigure_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lease_taken_with_the_session, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fenced_writes_drop_the_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leased_elsewhere, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unloadable_gives_the_lease_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_copy_kept_or_reloaded, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
