/* SPDX-License-Identifier: MIT */
/*
 * curvd: flags (each with a CURVD_* environment twin; flags win), the
 * database, the registry, the HTTP server, and a graceful stop on
 * SIGINT/SIGTERM: readiness turns 503, in-flight requests finish, the
 * database is closed, exit 0.
 */
#include <cblas.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "curv.h"
#include "daemon.h"
#include "http/auth.h"
#include "http/http.h"
#include "http/log.h"
#include "http/mem.h"
#include "store/store.h"

/* F_SIZE: bytes >= 1; F_BYTES: bytes, 0 allowed. */
enum ftype { F_STR, F_UINT, F_COUNT, F_SIZE, F_BYTES, F_BOOL_LOG, F_DURABILITY };

struct flag {
    const char *name, *env;
    enum ftype type;
    size_t offset;
    const char *help;
};

#define OFF(f) offsetof(struct curvd_config, f)
static const struct flag FLAGS[] = {
    {"listen", "CURVD_LISTEN", F_STR, OFF(listen), "IPv4 address to listen on"},
    {"port", "CURVD_PORT", F_UINT, OFF(port), "TCP port (0: any free port)"},
    {"db", "CURVD_DB", F_STR, OFF(db_path),
     "SQLite database file, relative to the working directory unless absolute; its folder is "
     "created, and its -wal and -shm files sit beside it; or a PostgreSQL connection URL "
     "(postgresql://... or postgres://...; docs/SERVER.md)"},
    {"threads", "CURVD_THREADS", F_UINT, OFF(threads),
     "connection threads (reading requests, small replies)"},
    {"workers", "CURVD_WORKERS", F_UINT, OFF(workers),
     "compute threads: they run steps and other heavy requests off the "
     "connection threads, and an idle one helps the steps in flight with their per-layer work, "
     "so a lone K-FAC session uses them all (0: every step on its connection thread, "
     "serially); steps waiting for their group commit hold none"},
    {"max-body", "CURVD_MAX_BODY", F_SIZE, OFF(max_body), "largest request body in bytes (413)"},
    {"max-queue", "CURVD_MAX_QUEUE", F_SIZE, OFF(max_queue),
     "steps and other heavy requests waiting or running at once; more are answered 429 with "
     "Retry-After (0: no limit)"},
    {"max-sessions", "CURVD_MAX_SESSIONS", F_SIZE, OFF(max_sessions),
     "sessions held in memory at once; idle ones beyond are evicted (they stay on disk)"},
    {"memory-budget", "CURVD_MEMORY_BUDGET", F_SIZE, OFF(mem_budget),
     "bytes of optimizer state held in memory before idle sessions are evicted; a session "
     "whose state alone is larger is refused at create and import (422)"},
    {"token-file", "CURVD_TOKEN_FILE", F_STR, OFF(token_file),
     "file of 'token tenant' lines (tokens of 16 to 256 bytes); when set every /v1 route needs "
     "a bearer token, and each tenant sees only its own sessions; SIGHUP reads it again"},
    {"log-format", "CURVD_LOG_FORMAT", F_BOOL_LOG, OFF(log_json),
     "log lines (the access log and events): text or json; each has a UTC timestamp and a level"},
    {"idle-ttl", "CURVD_IDLE_TTL", F_UINT, OFF(idle_ttl_s),
     "seconds after its last write that a session without a TTL of its own is deleted (0: never; "
     "at most 65535 here, a session's own idle_ttl_s may be longer)"},
    {"history", "CURVD_HISTORY", F_COUNT, OFF(history_steps),
     "steps of history (reports, time split) each session keeps for GET .../steps, curvctl watch "
     "and /ui, unless it sets history_steps itself (0: none; at most 1000000)"},
    {"snapshot-log", "CURVD_SNAPSHOT_LOG", F_UINT, OFF(snapshot_log_pct),
     "a step is committed as its input (the step log) until the log after the session's "
     "snapshot would hold more than this percentage of the state's size; then the step writes "
     "the state as a new snapshot (0: every step does, as before the log)"},
    {"snapshot-ms", "CURVD_SNAPSHOT_MS", F_UINT, OFF(snapshot_ms),
     "...or more than this many ms of optimizer time to replay: the bound on replaying a "
     "session's log when it is loaded after a restart or an eviction (0: every step is a "
     "snapshot)"},
    {"snapshot-inline", "CURVD_SNAPSHOT_INLINE", F_BYTES, OFF(snapshot_inline),
     "a due snapshot of a state smaller than this many bytes is written with its step, before "
     "the reply; larger ones right after the reply, by a worker (0: always after)"},
    {"snapshot-min", "CURVD_SNAPSHOT_MIN", F_BYTES, OFF(snapshot_min),
     "a session whose state is smaller than this many bytes is written whole with every step, "
     "without the step log (which cannot save a write that small)"},
    {"log-file-min", "CURVD_LOG_FILE_MIN", F_BYTES, OFF(log_file_min),
     "SQLite: a step record of this many bytes or more is appended to its session's file in "
     "<db>-steps/ and its row says where (one write instead of SQLite's pages, WAL and "
     "checkpoint); smaller ones stay in their rows (0: every record to files)"},
    {"durability", "CURVD_DURABILITY", F_DURABILITY, OFF(durability_full),
     "full: a step survives power loss; normal: it survives a crash of the daemon"},
    {"node-id", "CURVD_NODE_ID", F_STR, OFF(node_id),
     "this daemon's name as the owner of session leases (docs/CLUSTER.md); daemons sharing a "
     "database must never share one, and a daemon restarted with its own takes its leases "
     "back at once"},
    {"lease-ttl", "CURVD_LEASE_TTL", F_SIZE, OFF(lease_ttl_ms),
     "milliseconds a session's lease lasts unless renewed (every third of it while in use; "
     "given up after as long idle): how long another daemon waits to take over the sessions "
     "of one that died"},
};
#define NFLAGS (sizeof FLAGS / sizeof FLAGS[0])

/* "not set": one worker per CPU. */
#define WORKERS_PER_CPU 0xffffffffu

/* What each flag is when neither it nor its variable is given. */
static const struct curvd_config DEFAULTS = {.listen = "127.0.0.1",
                                             .port = 8080,
                                             .db_path = "./var/curvd.db",
                                             .threads = 2,
                                             .workers = WORKERS_PER_CPU,
                                             .max_body = (size_t)512 << 20,
                                             .max_sessions = 10000,
                                             .max_queue = 1024,
                                             .mem_budget = (size_t)4 << 30,
                                             .durability_full = 1,
                                             .history_steps = CURVD_STORE_HISTORY_DEFAULT,
                                             .history_set = 1,
                                             .snapshot_log_pct = 100,
                                             .snapshot_ms = 2000,
                                             .snapshot_inline = (size_t)1 << 20,
                                             .snapshot_min = (size_t)64 << 10,
                                             .log_file_min = CURVD_STORE_LOG_FILE_MIN_DEFAULT,
                                             .lease_ttl_ms = CURVD_LEASE_TTL_DEFAULT_MS};

/* The default of flag @f as text into @buf. */
static void default_text(const struct flag *f, char *buf, size_t cap)
{
    const void *p = (const char *)&DEFAULTS + f->offset;
    switch (f->type) {
    case F_STR:
        snprintf(buf, cap, "%s",
                 *(const char *const *)p     ? *(const char *const *)p
                 : f->offset == OFF(node_id) ? "host name:port"
                                             : "none");
        return;
    case F_UINT:
    case F_COUNT:
        if (f->offset == OFF(workers) && *(const unsigned *)p == WORKERS_PER_CPU)
            snprintf(buf, cap, "one per CPU");
        else
            snprintf(buf, cap, "%u", *(const unsigned *)p);
        return;
    case F_SIZE:
    case F_BYTES:
        snprintf(buf, cap, "%zu", *(const size_t *)p);
        return;
    case F_BOOL_LOG:
        snprintf(buf, cap, "%s", *(const int *)p ? "json" : "text");
        return;
    case F_DURABILITY:
        snprintf(buf, cap, "%s", *(const int *)p ? "full" : "normal");
        return;
    }
}

static void usage(FILE *out)
{
    fprintf(out, "usage: curvd [--flag=value ...]\n\n"
                 "Second-order optimization as a network service (HTTP/JSON, SQLite).\n"
                 "Each flag may be given as its environment variable instead; a flag wins.\n\n");
    for (size_t i = 0; i < NFLAGS; i++) {
        char def[64];
        default_text(&FLAGS[i], def, sizeof def);
        fprintf(out, "  --%-15s %-22s %s (default: %s)\n", FLAGS[i].name, FLAGS[i].env,
                FLAGS[i].help, def);
    }
    fprintf(out, "  --%-15s %-22s %s\n  --%-15s %-22s %s\n", "help", "", "this text", "version", "",
            "print the version");
}

/* Parse @v into the field of @f; 0 on success. */
static int set_flag(struct curvd_config *c, const struct flag *f, const char *v)
{
    void *p = (char *)c + f->offset;
    char *end = NULL;
    errno = 0;
    switch (f->type) {
    case F_STR:
        *(const char **)p = v;
        return 0;
    case F_UINT: {
        unsigned long x = strtoul(v, &end, 10);
        if (errno || end == v || *end || x > 65535)
            return -1;
        *(unsigned *)p = (unsigned)x;
        return 0;
    }
    case F_COUNT: {
        unsigned long x = strtoul(v, &end, 10);
        if (errno || end == v || *end || *v == '-' || x > CURVD_STORE_HISTORY_MAX)
            return -1;
        *(unsigned *)p = (unsigned)x;
        return 0;
    }
    case F_SIZE:
    case F_BYTES: {
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v || *end || (x == 0 && f->type == F_SIZE) || *v == '-')
            return -1;
        *(size_t *)p = (size_t)x;
        return 0;
    }
    case F_BOOL_LOG:
        *(int *)p = strcmp(v, "json") == 0;
        return strcmp(v, "json") == 0 || strcmp(v, "text") == 0 ? 0 : -1;
    case F_DURABILITY:
        *(int *)p = strcmp(v, "full") == 0;
        return strcmp(v, "full") == 0 || strcmp(v, "normal") == 0 ? 0 : -1;
    }
    return -1;
}

static int parse(struct curvd_config *c, int argc, char **argv)
{
    for (size_t i = 0; i < NFLAGS; i++) {
        const char *v = getenv(FLAGS[i].env);
        if (v && set_flag(c, &FLAGS[i], v) != 0) {
            fprintf(stderr, "curvd: %s=%s is not valid (%s)\n", FLAGS[i].env, v, FLAGS[i].help);
            return -1;
        }
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(arg, "--version") == 0) {
            printf("curvd %s (commit %s, libcurv %s)\n", CURVD_VERSION, curvd_build_commit,
                   curv_version());
            exit(0);
        }
        const struct flag *f = NULL;
        const char *eq = arg[0] == '-' && arg[1] == '-' ? strchr(arg, '=') : NULL;
        size_t nlen =
            arg[0] == '-' && arg[1] == '-' ? (eq ? (size_t)(eq - arg - 2) : strlen(arg + 2)) : 0;
        for (size_t i = 0; nlen && i < NFLAGS; i++)
            if (strlen(FLAGS[i].name) == nlen && strncmp(arg + 2, FLAGS[i].name, nlen) == 0)
                f = &FLAGS[i];
        const char *v = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
        if (!f || !v || set_flag(c, f, v) != 0) {
            fprintf(stderr, "curvd: bad argument '%s'%s\n\n", arg, f ? " (see its help)" : "");
            usage(stderr);
            return -1;
        }
    }
    return 0;
}

/* mkdir -p of the folder holding @path. */
static int make_parent(const char *path)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(dir, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* A large step allocates bodies, vectors, replies and state blobs of tens
 * of MB. Those come from curvd_mem's reused mappings (server/mem.h says
 * why), for the daemon, libcurv and SQLite alike, so glibc may give each
 * thread its own arena for the small allocations: with a single arena the
 * threads contended on its lock for every buffer over 1 KiB. Large
 * allocations of the other libraries stay in the heap for reuse (mmap and
 * trim thresholds at 1 GiB). Must run before any SQLite or libcurv call. */
static int setup_memory(void)
{
    static const curv_allocator cv = {curvd_mem_alloc, curvd_mem_realloc, curvd_mem_free};
    mallopt(M_MMAP_THRESHOLD, 1 << 30);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
    curv_set_allocator(&cv);
    return curvd_store_use_mem();
}

/* SIGHUP: read the token file again (its tokens from the next request
 * on); without one, or with a bad one, the tokens stay as they are. */
static void reload_tokens(struct curvd_server *srv)
{
    char err[512];
    size_t n = 0;
    if (!srv->auth)
        curvd_log(CURVD_LOG_WARN, "SIGHUP: no --token-file, nothing to reload (auth stays off)");
    else if (curvd_auth_reload(srv->auth, srv->cfg.token_file, &n, err, sizeof err) != 0)
        curvd_log(CURVD_LOG_ERROR, "SIGHUP: %s; the tokens in use stay", err);
    else
        curvd_log(CURVD_LOG_INFO, "SIGHUP: %zu tokens from %s", n, srv->cfg.token_file);
}

int main(int argc, char **argv)
{
    if (setup_memory() != 0) {
        fprintf(stderr, "curvd: SQLite refused the allocator\n");
        return 1;
    }
    struct curvd_server srv = {.cfg = DEFAULTS};
    if (parse(&srv.cfg, argc, argv) != 0)
        return 2;
    if (srv.cfg.workers == WORKERS_PER_CPU) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        srv.cfg.workers = cpus > 0 ? (unsigned)cpus : 2;
    }
    /* The workers are the compute threads, also inside a step (http/pool.h):
     * BLAS stays single-threaded so the two never oversubscribe the cores
     * (docs/SERVICE-NOTES.md). */
    openblas_set_num_threads(1);
    /* Handle the stop signals in this thread only: block them before any
     * other thread exists so every thread inherits the mask. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    curvd_log_setup(srv.cfg.log_json, -1);
    char err[512];
    if (!curvd_store_is_postgres(srv.cfg.db_path) && make_parent(srv.cfg.db_path) != 0) {
        curvd_log(CURVD_LOG_ERROR, "cannot create the folder of %s: %s", srv.cfg.db_path,
                  strerror(errno));
        return 1;
    }
    if (curvd_daemon_open(&srv, err, sizeof err) != 0 ||
        curvd_http_start(&srv, err, sizeof err) != 0) {
        curvd_log(CURVD_LOG_ERROR, "%s", err);
        curvd_daemon_close(&srv);
        return 1;
    }
    curvd_daemon_bound(&srv, curvd_http_port(&srv));
    char db_shown[1024];
    curvd_store_shown(srv.cfg.db_path, db_shown, sizeof db_shown);
    curvd_log(CURVD_LOG_INFO,
              "listening on http://%s:%u  version=%s commit=%s db=%s durability=%s threads=%u "
              "workers=%u max-body=%zu max-sessions=%zu memory-budget=%zu idle-ttl=%u history=%u "
              "snapshot-log=%u%% snapshot-ms=%u node-id=%s lease-ttl=%zums auth=%s log=%s",
              srv.cfg.listen, curvd_http_port(&srv), CURVD_VERSION, curvd_build_commit, db_shown,
              srv.cfg.durability_full ? "full" : "normal", srv.cfg.threads, srv.cfg.workers,
              srv.cfg.max_body, srv.cfg.max_sessions, srv.cfg.mem_budget, srv.cfg.idle_ttl_s,
              srv.cfg.history_steps, srv.cfg.snapshot_log_pct, srv.cfg.snapshot_ms, srv.node_id,
              srv.cfg.lease_ttl_ms, srv.cfg.token_file ? "tokens" : "off",
              srv.cfg.log_json ? "json" : "text");
    int sig = 0;
    while (sigwait(&stop, &sig) == 0 && sig == SIGHUP)
        reload_tokens(&srv);
    atomic_store(&srv.draining, 1); /* before the line that says so: /readyz is 503 by then */
    curvd_log(CURVD_LOG_INFO, "%s received, draining", sig == SIGINT ? "SIGINT" : "SIGTERM");
    curvd_http_stop(&srv);
    curvd_daemon_close(&srv);
    curvd_mem_trim();
    curvd_log(CURVD_LOG_INFO, "stopped");
    return 0;
}
