/* SPDX-License-Identifier: MIT */
/* The store's suites on either backend (srvutil.h, "Either backend"):
 * a database per test (a SQLite file, or a PostgreSQL schema of its own in
 * the cluster CURVD_TEST_DB names) and raw reads of it. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "srvutil.h"

const char *su_pg_url(void)
{
    const char *u = getenv("CURVD_TEST_DB");
    return u && *u ? u : NULL;
}

/* A connection to @url that must succeed. */
static PGconn *connect_ok(const char *url)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK)
        print_error("%s: %s\n", url, PQerrorMessage(c));
    assert_int_equal(PQstatus(c), CONNECTION_OK);
    return c;
}

/* @sql on @url, which must succeed; its result (PQclear it). @id, when
 * not NULL, is $1. Binary results: blobs arrive as their bytes. */
static PGresult *exec_ok(const char *url, const char *sql, const char *id, int binary)
{
    PGconn *c = connect_ok(url);
    PGresult *r = id ? PQexecParams(c, sql, 1, NULL, &id, NULL, NULL, binary) : PQexec(c, sql);
    ExecStatusType x = PQresultStatus(r);
    if (x != PGRES_COMMAND_OK && x != PGRES_TUPLES_OK)
        print_error("%s: %s\n", sql, PQerrorMessage(c));
    assert_true(x == PGRES_COMMAND_OK || x == PGRES_TUPLES_OK);
    PQfinish(c);
    return r;
}

void su_db(const char *dir, const char *name, char *out, size_t cap)
{
    const char *base = su_pg_url();
    if (!base) {
        snprintf(out, cap, "%s/%s.db", dir, name);
        const char *suffix[] = {"", "-wal", "-shm"};
        for (int i = 0; i < 3; i++) {
            char f[1100];
            snprintf(f, sizeof f, "%s%s", out, suffix[i]);
            unlink(f);
        }
        return;
    }
    /* A schema no run or test shares: the process and a counter. */
    static int next;
    char schema[96], sql[160];
    snprintf(schema, sizeof schema, "t%ld_%d", (long)getpid(), next++);
    snprintf(sql, sizeof sql, "CREATE SCHEMA %s", schema);
    PQclear(exec_ok(base, sql, NULL, 0));
    int n = snprintf(out, cap, "%s%coptions=-c%%20search_path%%3D%s", base,
                     strchr(base, '?') ? '&' : '?', schema);
    assert_true(n > 0 && (size_t)n < cap);
}

void su_pg_raw_exec(const char *url, const char *sql)
{
    PQclear(exec_ok(url, sql, NULL, 0));
}

void su_pg_raw_text(const char *url, const char *sql, char *out, size_t cap)
{
    PGresult *r = exec_ok(url, sql, NULL, 0);
    assert_true(PQntuples(r) >= 1);
    snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

unsigned char *su_pg_raw_state(const char *url, const char *id, size_t *len)
{
    PGresult *r =
        exec_ok(url, "SELECT bytes FROM state_parts WHERE session_id = $1 ORDER BY idx", id, 1);
    unsigned char *buf = NULL;
    size_t n = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        size_t m = (size_t)PQgetlength(r, i, 0);
        unsigned char *grown = realloc(buf, n + m);
        assert_non_null(grown);
        buf = grown;
        memcpy(buf + n, PQgetvalue(r, i, 0), m);
        n += m;
    }
    PQclear(r);
    *len = n;
    return buf;
}

void su_pg_wait_gone(const char *url, const char *app)
{
    char sql[200], n[32];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '%s'",
             app);
    for (;;) {
        su_pg_raw_text(url, sql, n, sizeof n);
        if (strcmp(n, "0") == 0)
            return;
        nanosleep(&(struct timespec){0, 2000000}, NULL);
    }
}

/* SQLite: a connection in BEGIN IMMEDIATE. PostgreSQL: one holding the
 * sessions table in EXCLUSIVE mode, which lets reads through and no
 * write (a writer waits for it, as for SQLite's write lock). */
struct su_lock {
    sqlite3 *db;
    PGconn *pg;
};

struct su_lock *su_raw_lock(const char *path)
{
    struct su_lock *l = calloc(1, sizeof *l);
    assert_non_null(l);
    if (curvd_store_is_postgres(path)) {
        l->pg = connect_ok(path);
        PGresult *r = PQexec(l->pg, "BEGIN; LOCK TABLE sessions IN EXCLUSIVE MODE");
        assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        return l;
    }
    assert_int_equal(sqlite3_open(path, &l->db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(l->db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    return l;
}

void su_raw_unlock(struct su_lock *l)
{
    if (l->pg) {
        PGresult *r = PQexec(l->pg, "COMMIT");
        assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
        PQclear(r);
        PQfinish(l->pg);
    } else {
        assert_int_equal(sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_close(l->db), SQLITE_OK);
    }
    free(l);
}
