/* SPDX-License-Identifier: MIT */
/*
 * The step log through the daemon (docs/DURABILITY.md): steps committed
 * as their input and replayed onto the snapshot when a session is loaded
 * again (a restart, an eviction) give the state and the updates of an
 * uninterrupted in-process libcurv, bit for bit; snapshots come when the
 * log passes its bound, and delete the log; a damaged log makes the
 * session unloadable with the step and the reason, never a wrong state.
 * (SIGKILLs with callbacks in flight: test_crash.c.)
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "curv.h"
#include "http/http.h"
#include "srvutil.h"
#include "testutil.h"

enum { D = SU_D, ROWS = 3 };

/* Bounds no test reaches: every step is logged. */
#define LOG_ALL 1000000u

struct fx {
    struct curvd_server srv;
    char dir[64], db[128], base[64];
    curv_layout *layout;
    unsigned log_pct, log_ms, max_sessions, workers;
    size_t log_file_min; /* 0: the daemon's default (su_daemon_start) */
};

static void open_daemon(struct fx *f)
{
    memset(&f->srv, 0, sizeof f->srv);
    f->srv.cfg = (struct curvd_config){.db_path = f->db,
                                       .max_sessions = f->max_sessions ? f->max_sessions : 100,
                                       .mem_budget = (size_t)1 << 30,
                                       .snapshot_log_pct = f->log_pct,
                                       .snapshot_ms = f->log_ms,
                                       .workers = f->workers,
                                       .log_file_min = f->log_file_min};
    su_daemon_start(&f->srv, f->base, sizeof f->base);
}

static void restart(struct fx *f)
{
    su_daemon_stop(&f->srv);
    open_daemon(f);
}

static struct fx *fx_new(unsigned log_pct, unsigned log_ms, unsigned max_sessions, unsigned workers)
{
    struct fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    su_tmpdir(f->dir, sizeof f->dir, NULL, "steplog", f->db, sizeof f->db);
    f->layout = su_layout_new();
    f->log_pct = log_pct;
    f->log_ms = log_ms;
    f->max_sessions = max_sessions;
    f->workers = workers;
    open_daemon(f);
    return f;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    su_daemon_stop(&f->srv);
    curv_layout_free(f->layout);
    assert_int_equal(su_rmtree(f->dir), 0);
    free(f);
    return 0;
}

/* A session's rows in the log (the daemon may be up: WAL readers). */
static long long log_rows(const struct fx *f, const char *id)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM step_log WHERE session_id = '%.32s'", id);
    return su_raw_int(f->db, sql);
}

/* K-FAC's statistics of step @t for block "fc": ROWS x 4 activations,
 * ROWS x 2 signals (deterministic). */
static void kfac_stats(long t, double acts[ROWS * 4], double sig[ROWS * 2])
{
    for (int i = 0; i < ROWS * 4; i++)
        acts[i] = sin(0.7 * (double)(t * 13 + i));
    for (int i = 0; i < ROWS * 2; i++)
        sig[i] = 0.1 * cos(0.3 * (double)(t * 7 + i));
}

/* Post step @t of session @id (with K-FAC statistics when @stats) and
 * check its update against @ref stepped with the same input. */
static void step(const struct fx *f, const char *id, curv_opt *ref, long t, double phase, int stats)
{
    double g[D], u[D], want[D], acts[ROWS * 4], sig[ROWS * 2];
    su_grad(t, phase, g);
    json_t *b = su_step_json(t, g, 0);
    kfac_stats(t, acts, sig);
    if (stats)
        json_object_set_new(b, "layers",
                            json_pack("[{s:s, s:o, s:o}]", "block", "fc", "activations",
                                      su_tensor("a", json_pack("[i,i]", ROWS, 4), acts, ROWS * 4),
                                      "signals",
                                      su_tensor("s", json_pack("[i,i]", ROWS, 2), sig, ROWS * 2)));
    char *text = json_dumps(b, JSON_COMPACT | JSON_REAL_PRECISION(17)), path[128];
    json_decref(b);
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", id);
    struct su_resp r;
    json_decref(su_call(f->base, "POST", path, text, 200, &r));
    free(text);
    if (su_update_of(r.body, t, u) != 0)
        fail_msg("step %ld: bad reply %s", t, r.body);
    su_resp_free(&r);
    curv_layer_stats ls = {
        .block = 0, .rows = ROWS, .examples = ROWS, .acts = acts, .signals = sig};
    curv_step_input in = {
        .grad = g, .len = D, .dtype = CURV_F64, .layers = stats ? &ls : NULL, .n_layers = !!stats};
    curv_request req;
    curv_error cerr;
    tu_assert_status(curv_opt_step(ref, &in, want, &req, &cerr), CURV_OK, &cerr);
    for (int i = 0; i < D; i++)
        if (memcmp(&u[i], &want[i], sizeof want[i]) != 0)
            fail_msg("session %s step %ld, element %d: daemon %.17g, libcurv %.17g", id, t, i, u[i],
                     want[i]);
}

/* The exported state of @id must be @ref's, byte for byte. */
static void expect_state(const struct fx *f, const char *id, const curv_opt *ref)
{
    size_t len, got_len;
    unsigned char *want = tu_snapshot(ref, &len);
    unsigned char *got = su_export_state(f->base, id, &got_len, NULL);
    if (got_len != len || memcmp(got, want, len) != 0)
        fail_msg("session %s: the exported state (%zu bytes) is not libcurv's (%zu)", id, got_len,
                 len);
    curv_free(want);
    free(got);
}

/* The snapshot in the file must be @ref's state, byte for byte. */
static void expect_stored(const struct fx *f, const char *id, const curv_opt *ref)
{
    size_t len, raw_len;
    unsigned char *w = tu_snapshot(ref, &len), *raw = su_raw_state(f->db, id, &raw_len);
    assert_int_equal(raw_len, len);
    assert_memory_equal(raw, w, len);
    curv_free(w);
    free(raw);
}

/* Every kind without statistics or callbacks: four steps logged, a
 * restart, the state replayed from the log is the reference's, and the
 * steps after it match. */
static void test_every_plain_kind_replays(void **state)
{
    struct fx *f = *state = fx_new(LOG_ALL, LOG_ALL, 0, 0);
    char ids[CURV_OPT_KIND_COUNT][33];
    curv_opt *refs[CURV_OPT_KIND_COUNT] = {0};
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!tu_plain_kind(k))
            continue;
        json_decref(
            su_create(f->base, curv_opt_kind_name((curv_opt_kind)k), NULL, 201, ids[k], NULL));
        refs[k] = tu_new_opt((curv_opt_kind)k, f->layout, NULL);
        curv_opt *fresh = tu_new_opt((curv_opt_kind)k, f->layout, NULL);
        for (long t = 1; t <= 4; t++)
            step(f, ids[k], refs[k], t, 0.1 * k, 0);
        assert_int_equal(log_rows(f, ids[k]), 4);
        expect_stored(f, ids[k], fresh); /* still the snapshot taken at creation */
        curv_opt_free(fresh);
    }
    restart(f);
    for (int k = 0; k < CURV_OPT_KIND_COUNT; k++) {
        if (!refs[k])
            continue;
        expect_state(f, ids[k], refs[k]);
        for (long t = 5; t <= 6; t++)
            step(f, ids[k], refs[k], t, 0.1 * k, 0);
        assert_int_equal(log_rows(f, ids[k]), 6);
        curv_opt_free(refs[k]);
    }
}

/* K-FAC with its refreshes off the step path (max_staleness 2): a restart
 * while a refresh is pending replays to the same state and the same
 * later updates (the refresh a step applies depends on steps only). With
 * @workers the daemon also folds each step's statistics after its reply
 * (curv_opt_defer_stats), and the replay settles each step. */
static void check_kfac_staleness_replays(void **state, unsigned workers)
{
    struct fx *f = *state = fx_new(LOG_ALL, LOG_ALL, 0, workers);
    const tu_kv kv[] = {
        {"cov_interval", 1}, {"inv_interval", 3}, {"max_staleness", 2}, {"weight_decay", 0}};
    json_t *config =
        json_pack("{s:s, s:s, s:i, s:i, s:i, s:i}", "mode", "simple", "precision", "fp64",
                  "cov_interval", 1, "inv_interval", 3, "max_staleness", 2, "weight_decay", 0);
    char id[33];
    json_decref(su_create(f->base, "kfac", config, 201, id, NULL));
    curv_opt *ref = tu_kfac_opt(f->layout, kv, 4, "mode", "simple", "precision", "fp64", NULL);
    for (long t = 1; t <= 7; t++) /* the refresh due at step 6 is applied by step 8 */
        step(f, id, ref, t, 0.5, 1);
    assert_int_equal(log_rows(f, id), 7);
    restart(f);
    expect_state(f, id, ref);
    for (long t = 8; t <= 10; t++)
        step(f, id, ref, t, 0.5, 1);
    expect_state(f, id, ref);
    curv_opt_free(ref);
}

static void test_kfac_background_refresh_replays(void **state)
{
    check_kfac_staleness_replays(state, 0);
}

static double metric(const struct fx *f, const char *name);

/* Every step past 3 folds after its reply: since the restart steps 8-10
 * (the last one's fold may still run when the test gets here: a tail
 * holds back only the session's next request). */
static void test_kfac_folds_after_reply_replay(void **state)
{
    check_kfac_staleness_replays(state, 2);
    const struct fx *f = *state;
    double n = metric(f, "curvd_folds_after_reply_total ");
    for (int i = 0; i < 1000 && n < 3; i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
        n = metric(f, "curvd_folds_after_reply_total ");
    }
    assert_true(n == 3);
}

/* /metrics' line @name (e.g. "curvd_replays_total "), as a number. */
static double metric(const struct fx *f, const char *name)
{
    char url[128];
    snprintf(url, sizeof url, "%s/metrics", f->base);
    struct su_resp r;
    su_request("GET", url, NULL, 0, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    char line[160];
    snprintf(line, sizeof line, "\n%s", name); /* a sample, not its HELP line */
    const char *at = strstr(r.body, line);
    if (!at)
        fail_msg("/metrics has no %s", name);
    double v = atof(at + strlen(line));
    su_resp_free(&r);
    return v;
}

/* Wait until @id's log holds @want rows (a snapshot after a step's reply
 * ends it on a worker); the rows then, after 10 s at most. */
static long long log_rows_become(const struct fx *f, const char *id, long long want)
{
    long long n = log_rows(f, id);
    for (int i = 0; i < 1000 && n != want; i++) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
        n = log_rows(f, id);
    }
    return n;
}

/* The bytes bound: with --snapshot-log 100, a step is logged while the
 * log stays within the state's size, and the step that would pass it is
 * logged and followed, after its reply, by a snapshot, which deletes the
 * log: k = floor(state / record) rows at most, then none. Each snapshot
 * is the reference's state at its step. */
static void test_snapshot_cadence(void **state)
{
    struct fx *f = *state = fx_new(100, LOG_ALL, 0, 0);
    char id[33], sql[160];
    json_decref(su_create(f->base, "adagrad_diag", NULL, 201, id, NULL));
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    size_t state_len;
    curv_free(tu_snapshot(ref, &state_len));
    step(f, id, ref, 1, 0, 0);
    snprintf(sql, sizeof sql, "SELECT length(record) FROM step_log WHERE session_id = '%.32s'", id);
    long long rec = su_raw_int(f->db, sql);
    assert_true(rec > 0 && (size_t)rec < state_len);
    long long k = (long long)state_len / rec;
    for (long t = 2; t <= 2 * (k + 1) + 1; t++) {
        step(f, id, ref, t, 0, 0);
        long long want = t % (k + 1), got = log_rows_become(f, id, want);
        if (got != want)
            fail_msg("after step %ld: %lld rows in the log, want %lld (record %lld bytes, state "
                     "%zu)",
                     t, got, want, rec, state_len);
        if (want == 0)
            expect_stored(f, id, ref);
    }
    long steps = 2 * (k + 1) + 1;
    assert_int_equal(metric(f, "curvd_durable_writes_total{kind=\"snapshot\"} "), 2);
    assert_int_equal(metric(f, "curvd_durable_writes_total{kind=\"log\"} "), steps);
    /* a restart replays the log's rows: the last snapshot was step 2k + 2 */
    restart(f);
    expect_state(f, id, ref);
    assert_int_equal(metric(f, "curvd_replays_total "), 1);
    assert_int_equal(metric(f, "curvd_replayed_steps_total "), steps - 2 * (k + 1));
    curv_opt_free(ref);
}

/* Without workers the snapshot a step makes due is written before its
 * reply: the log is empty as soon as the reply is in. */
static void test_snapshot_without_workers(void **state)
{
    struct fx *f = *state = fx_new(50, LOG_ALL, 0, SU_NO_WORKERS);
    char id[33];
    json_decref(su_create(f->base, "adagrad_diag", NULL, 201, id, NULL));
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    long long rows = 0;
    for (long t = 1; t <= 8; t++) {
        step(f, id, ref, t, 0, 0);
        long long now = log_rows(f, id);
        assert_true(now == rows + 1 || now == 0); /* logged, or logged and snapshotted */
        rows = now;
    }
    assert_true(metric(f, "curvd_durable_writes_total{kind=\"snapshot\"} ") >= 1);
    curv_opt_free(ref);
}

/* The memory charge follows a snapshot after the reply: an SGD session's
 * state grows when its first step makes the momentum buffer, and the
 * registry's total must be the state's size after each snapshot (it
 * stayed at the old size once, and a delete then made it wrap). */
static void test_memory_charge_follows_snapshots(void **state)
{
    struct fx *f = *state = fx_new(1, LOG_ALL, 0, 0); /* every step's snapshot is due */
    char id[33];
    json_decref(su_create(f->base, "sgd", json_pack("{s:f}", "momentum", 0.9), 201, id, NULL));
    const tu_kv kv[] = {{"momentum", 0.9}};
    curv_opt *ref = tu_opt_with(CURV_OPT_SGD, f->layout, kv, 1);
    size_t before;
    curv_free(tu_snapshot(ref, &before));
    for (long t = 1; t <= 3; t++) {
        step(f, id, ref, t, 0, 0);
        assert_int_equal(log_rows_become(f, id, 0), 0);
        size_t len;
        curv_free(tu_snapshot(ref, &len));
        assert_true(t > 1 || len > before);
        /* the snapshot's tail has given the session back with its charge */
        double charge = metric(f, "curvd_session_memory_bytes ");
        for (int i = 0; i < 1000 && charge != (double)len; i++) {
            nanosleep(&(struct timespec){0, 10000000}, NULL);
            charge = metric(f, "curvd_session_memory_bytes ");
        }
        assert_int_equal((size_t)charge, len);
    }
    char path[64];
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_decref(su_call(f->base, "DELETE", path, NULL, 204, NULL));
    assert_int_equal((size_t)metric(f, "curvd_session_memory_bytes "), 0);
    curv_opt_free(ref);
}

/* --snapshot-log 0: every step is a snapshot, as before the log. */
static void test_every_step_a_snapshot(void **state)
{
    struct fx *f = *state = fx_new(SU_EVERY_STEP_A_SNAPSHOT, LOG_ALL, 0, 0);
    char id[33];
    json_decref(su_create(f->base, "mbag", NULL, 201, id, NULL));
    curv_opt *ref = tu_new_opt(CURV_OPT_MBAG, f->layout, NULL);
    for (long t = 1; t <= 3; t++) {
        step(f, id, ref, t, 0, 0);
        assert_int_equal(log_rows(f, id), 0);
        expect_stored(f, id, ref);
    }
    curv_opt_free(ref);
}

/* Log three steps of an adagrad_diag session and stop the daemon, then
 * run "@change WHERE <its step 2>" on the file and open it again. */
static void damage(struct fx *f, char id[33], curv_opt **ref, const char *change)
{
    json_decref(su_create(f->base, "adagrad_diag", NULL, 201, id, NULL));
    *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    for (long t = 1; t <= 3; t++)
        step(f, id, *ref, t, 0, 0);
    su_daemon_stop(&f->srv);
    char sql[512];
    snprintf(sql, sizeof sql, "%s WHERE session_id = '%.32s' AND step = 2", change, id);
    su_raw_exec(f->db, sql);
    open_daemon(f);
}

/* Step 4 of @id must be refused as unloadable with @why in the detail;
 * the stored snapshot still exports as it is, and DELETE removes it all. */
static void expect_unloadable(const struct fx *f, const char *id, const char *why)
{
    double g[D];
    su_grad(4, 0, g);
    char *text = su_step_text(4, g, 0), path[128];
    snprintf(path, sizeof path, "/v1/sessions/%s/steps", id);
    json_t *p = su_call(f->base, "POST", path, text, 409, NULL);
    free(text);
    assert_string_equal(json_string_value(json_object_get(p, "reason")), "SESSION_UNLOADABLE");
    const char *detail = json_string_value(json_object_get(p, "detail"));
    if (!detail || !strstr(detail, why))
        fail_msg("the detail %s does not say \"%s\"", detail ? detail : "(none)", why);
    json_decref(p);
    size_t len, raw_len;
    unsigned char *got = su_export_state(f->base, id, &len, NULL);
    unsigned char *raw = su_raw_state(f->db, id, &raw_len);
    assert_int_equal(len, raw_len);
    assert_memory_equal(got, raw, len);
    free(got);
    free(raw);
    snprintf(path, sizeof path, "/v1/sessions/%s", id);
    json_decref(su_call(f->base, "DELETE", path, NULL, 204, NULL));
    assert_int_equal(log_rows(f, id), 0);
}

/* A torn record, a step missing from the log, and a record its file
 * does not hold where its row says (every record in a file). */
static void test_damaged_log_is_unloadable(void **state)
{
    static const char *const change[3] = {"UPDATE step_log SET record = substr(record, 1, 30)",
                                          "DELETE FROM step_log",
                                          "UPDATE step_log SET file_offset = file_offset + 1"};
    static const char *const why[3] = {"step 2 of the log: the record ends early",
                                       "the log has no step 2",
                                       "step 2 of the log: the record is not a curvd step record"};
    struct fx *f = *state = fx_new(LOG_ALL, LOG_ALL, 0, 0);
    for (int k = 0; k < 3; k++) {
        char id[33];
        curv_opt *ref;
        if (k == 2) {
            f->log_file_min = 1;
            restart(f);
        }
        damage(f, id, &ref, change[k]);
        expect_unloadable(f, id, why[k]);
        curv_opt_free(ref);
    }
}

/* Records in files (every one): a session whose steps take no callback
 * writes each record while the library steps, and its commit names that
 * copy: the file holds each record once, then replays after a restart. */
static void test_records_written_ahead(void **state)
{
    struct fx *f = *state = fx_new(LOG_ALL, LOG_ALL, 0, 0);
    f->log_file_min = 1;
    restart(f);
    char id[33], sql[200], p[300];
    json_decref(su_create(f->base, "adagrad_diag", NULL, 201, id, NULL));
    curv_opt *ref = tu_new_opt(CURV_OPT_ADAGRAD_DIAG, f->layout, NULL);
    for (long t = 1; t <= 3; t++)
        step(f, id, ref, t, 0, 0);
    snprintf(sql, sizeof sql,
             "SELECT sum(32 + file_len) FROM step_log WHERE session_id = '%.32s'"
             " AND file_len IS NOT NULL",
             id);
    long long named = su_raw_int(f->db, sql);
    assert_true(named > 3 * 32);
    snprintf(sql, sizeof sql,
             "SELECT min(file_gen) = max(file_gen) FROM step_log WHERE session_id = '%.32s'", id);
    assert_int_equal(su_raw_int(f->db, sql), 1); /* one writer: one generation */
    snprintf(sql, sizeof sql, "SELECT file_gen FROM step_log WHERE session_id = '%.32s'", id);
    snprintf(p, sizeof p, "%s-steps/%.32s/%lld.log", f->db, id, su_raw_int(f->db, sql));
    struct stat sb;
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal((long long)sb.st_size, named);
    /* Each record went to the file while the library stepped (no step
     * before took a callback) and its commit named that copy. */
    assert_true(metric(f, "curvd_log_records_ahead_total ") == 3.0);
    restart(f);
    step(f, id, ref, 4, 0, 0); /* loads by replaying steps 1-3: the same update to the bit */
    curv_opt_free(ref);
}

/* A replay whose update is not the logged one (here: the logged digest
 * altered) keeps the replayed state with a warning, and the next step is
 * followed by a snapshot, so the log starts over. */
static void test_replay_that_differs_is_kept(void **state)
{
    struct fx *f = *state = fx_new(LOG_ALL, LOG_ALL, 0, 0);
    char id[33];
    curv_opt *ref;
    damage(f, id, &ref,
           "UPDATE step_log SET update_digest = 'mm3-128:00000000000000000000000000000000'");
    step(f, id, ref, 4, 0, 0);
    assert_int_equal(log_rows_become(f, id, 0), 0);
    expect_state(f, id, ref);
    curv_opt_free(ref);
}

/* One session in memory at a time: every step of two alternating
 * sessions reloads its session by snapshot and replay. */
static void test_evicted_sessions_replay(void **state)
{
    struct fx *f = *state = fx_new(LOG_ALL, LOG_ALL, 1, 0);
    char a[33], b[33];
    json_decref(su_create(f->base, "adagrad_bma", NULL, 201, a, NULL));
    json_decref(su_create(f->base, "sgd", json_pack("{s:f}", "momentum", 0.9), 201, b, NULL));
    curv_opt *ra = tu_new_opt(CURV_OPT_ADAGRAD_BMA, f->layout, NULL);
    const tu_kv kv[] = {{"momentum", 0.9}};
    curv_opt *rb = tu_opt_with(CURV_OPT_SGD, f->layout, kv, 1);
    for (long t = 1; t <= 4; t++) {
        step(f, a, ra, t, 0, 0);
        step(f, b, rb, t, 1, 0);
    }
    assert_int_equal(log_rows(f, a), 4);
    assert_int_equal(log_rows(f, b), 4);
    expect_state(f, a, ra);
    expect_state(f, b, rb);
    curv_opt_free(ra);
    curv_opt_free(rb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_every_plain_kind_replays, teardown),
        cmocka_unit_test_teardown(test_kfac_background_refresh_replays, teardown),
        cmocka_unit_test_teardown(test_kfac_folds_after_reply_replay, teardown),
        cmocka_unit_test_teardown(test_snapshot_cadence, teardown),
        cmocka_unit_test_teardown(test_every_step_a_snapshot, teardown),
        cmocka_unit_test_teardown(test_snapshot_without_workers, teardown),
        cmocka_unit_test_teardown(test_memory_charge_follows_snapshots, teardown),
        cmocka_unit_test_teardown(test_damaged_log_is_unloadable, teardown),
        cmocka_unit_test_teardown(test_records_written_ahead, teardown),
        cmocka_unit_test_teardown(test_replay_that_differs_is_kept, teardown),
        cmocka_unit_test_teardown(test_evicted_sessions_replay, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
