/* SPDX-License-Identifier: MIT */
/*
 * The session service (server/session/service.c) on a store of its own,
 * without HTTP: whatever fails, memory is never ahead of the database. A
 * step that cannot be committed, a PATCH that cannot, and a step given up
 * all leave the next request with the committed state.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_take_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_step_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandon, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconfigure_rolls_back, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
