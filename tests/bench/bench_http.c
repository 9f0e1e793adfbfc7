/* SPDX-License-Identifier: MIT */
/*
 * bench_http - curvd over loopback HTTP/1.1, next to in-process libcurv in
 * the same run. Starts the daemon ($CURVD_BIN, default build/curvd) as a
 * child on a temporary database with --port 0, drives it with a small load
 * generator (raw POSIX sockets, keep-alive, one session per connection) and
 * prints steps/s and latency for small sessions, time per step and MB/s for
 * a large one, under --durability normal and full (one daemon each);
 * then the thesis' deep autoencoder as a K-FAC session (binary FP32,
 * durable), alone on a daemon with --workers 1 and with one per CPU: time
 * per step and its Server-Timing split.
 * Method and reading: tests/bench/README.md.
 * Usage: bench_http [--quick] [--small | --large | --autoencoder | --durable | --fold]
 *                   [--snapshot-log=PCT] [--db=URL]
 *   --quick: 1 s per small row, large d = 1e6, a tiny autoencoder;
 *   --small/--large/--autoencoder: only those rows; --durable: save +
 *   commit of small MBAG and AdaGrad sessions and of the autoencoder, the
 *   step log against every step a snapshot (also run with the others);
 *   --fold: the autoencoder with its statistics folded before and after
 *   the reply (max_staleness 0 and 2), alone;
 *   --snapshot-log: the daemons' flag (0: every step a snapshot, as before
 *   the step log), to compare the small and large rows between runs;
 *   --db: every daemon's --db (a PostgreSQL URL) instead of a SQLite file
 *   in the temporary folder; with --durable, the small sessions alone
 */
#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "curv.h"

#if defined(__GNUC__)
#define PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF(f, a)
#endif

#define SMALL_D 1000          /* parameters of a small session (one vector block) */
#define SMALL_S 5.0           /* seconds per small row (--quick: 1) */
#define SMALL_WARM 2          /* warm-up steps per small session */
#define LARGE_BLOCKS 10       /* the large session: LARGE_BLOCKS vector blocks ... */
#define LARGE_BN 1000000      /* ... of this many parameters (--quick: a tenth) */
#define LARGE_STEPS 5         /* timed steps per large row, after one warm-up step */
#define MAX_BODY "1073741824" /* --max-body: 1 GiB */
#define WAIT_S 15.0           /* the daemon prints its port, or stops, within this */
#define IO_TIMEOUT_S 120      /* socket send/receive timeout */
#define MAXIOV 48
#define NDUR 2

enum enc { ENC_JSON, ENC_BIN32, ENC_BIN64, NENC };
/* The daemon's Server-Timing phases, in its order. */
enum { PH_DECODE, PH_STEP, PH_ENCODE, PH_SAVE, PH_COMMIT, NPHASE };
static const char *const PHASE[NPHASE] = {"decode", "step", "encode", "save", "commit"};
static const char *const ENC_NAME[NENC] = {"JSON FP32", "binary FP32", "binary FP64"};
static const char *const DURS[NDUR] = {"normal", "full"};
/* Small rows: durability, encoding, clients. */
static const struct {
    int dur;
    enum enc enc;
    int clients;
} SROWS[] = {{0, ENC_JSON, 16}, {0, ENC_JSON, 64}, {0, ENC_BIN32, 16}, {0, ENC_BIN32, 64},
             {1, ENC_JSON, 16}, {1, ENC_JSON, 64}, {1, ENC_BIN32, 16}, {1, ENC_BIN32, 64}};
#define NSROW (sizeof SROWS / sizeof SROWS[0])
/* Large rows: JSON only under normal (the codec does not depend on durability). */
static const struct {
    int dur;
    enum enc enc;
} LROWS[] = {{0, ENC_JSON}, {0, ENC_BIN32}, {0, ENC_BIN64}, {1, ENC_BIN32}, {1, ENC_BIN64}};
#define NLROW (sizeof LROWS / sizeof LROWS[0])
static const struct timespec TICK = {0, 10000000}; /* 10 ms */
static const float NAN32 = NAN;
static const double NAN64 = NAN;

extern char **environ;

/* Gradient data: one block of @bn values, reused for each of @nblocks blocks. */
struct payload {
    size_t nblocks, bn;
    float *f32;
    double *f64;
    char *text;   /* "x0,x1,...": the block as JSON numbers, "%.9g" */
    size_t tlen;  /* its length */
    size_t tlast; /* offset of its last comma */
};

/* A request body as a list of pieces: formatted text and borrowed data. */
struct body {
    struct iovec iov[MAXIOV];
    int n;
    size_t len, tlen;
    char text[4096];
};

/* A keep-alive connection and its last reply. */
struct conn {
    int fd, status;
    char *buf, *reply; /* reply: the body inside buf, NUL-terminated */
    size_t cap, rlen, sent;
    double timing[NPHASE]; /* the last reply's Server-Timing, seconds */
};

/* CPU seconds at one moment: the daemon, this process, the whole machine. */
struct cpu {
    double t, daemon, self, busy;
};

struct row {
    size_t steps;
    double rate, p50, p99, pmax, lo; /* steps/s; latency quantiles, max and min */
    double req_mb, rep_mb, reject;   /* large: body sizes, the rejected step */
    double dcpu, ccpu, other;        /* CPU per step; other load, % of the machine */
    double phase[NPHASE];            /* large: the median step's Server-Timing */
    double floor;                    /* large: loopback transfer of the same bytes */
};

static char g_tmp[256], g_log[320];
static const char *g_workers;      /* --workers for the next daemon, NULL: its default */
static const char *g_snapshot_log; /* --snapshot-log for every daemon, NULL: its default */
static const char *g_log_file_min; /* --log-file-min for the next daemon, NULL: its default */
static const char *g_db;           /* --db for every daemon, NULL: a file in g_tmp */
static volatile pid_t g_pid;
static long g_ncpu;
static pthread_mutex_t g_fail_mu = PTHREAD_MUTEX_INITIALIZER;

static _Noreturn void fail(const char *fmt, ...) PRINTF(1, 2);

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        fail("out of memory (%zu bytes)", n);
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- the daemon and CPU accounting --------------------------------------- */

/* SIGTERM, then wait; the exit status, or -1 when it had to be killed. */
static int daemon_stop(void)
{
    pid_t pid = g_pid;
    int st = 0;
    if (pid <= 0)
        return 0;
    g_pid = 0;
    kill(pid, SIGTERM);
    for (double t0 = now_s(); waitpid(pid, &st, WNOHANG) == 0; nanosleep(&TICK, NULL))
        if (now_s() - t0 > WAIT_S) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Unlink <tmp>/@name, or everything in <tmp> and <tmp> itself when NULL. */
/* Remove file or folder @p (a daemon's <db>-steps holds files). */
static void remove_path(const char *p)
{
    DIR *d = unlink(p) == 0 ? NULL : opendir(p);
    struct dirent *e;
    char sub[900];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            snprintf(sub, sizeof sub, "%s/%s", p, e->d_name);
            remove_path(sub);
        }
    if (d) {
        closedir(d);
        rmdir(p);
    }
}

static void remove_tmp(const char *name)
{
    char p[600];
    DIR *d = name || !g_tmp[0] ? NULL : opendir(g_tmp);
    struct dirent *e;
    if (name) {
        snprintf(p, sizeof p, "%s/%s", g_tmp, name);
        remove_path(p);
    }
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            remove_tmp(e->d_name);
    if (d) {
        closedir(d);
        rmdir(g_tmp);
        g_tmp[0] = '\0';
    }
}

/* Print, show the daemon's last words, stop it, remove the temp dir, exit 1. */
static void fail(const char *fmt, ...)
{
    pthread_mutex_lock(&g_fail_mu); /* one thread reports; others wait here */
    va_list ap;
    char buf[1600] = "";
    FILE *f = g_log[0] ? fopen(g_log, "r") : NULL;
    if (f && fseek(f, -(long)sizeof buf + 1, SEEK_END) != 0)
        rewind(f);
    buf[f ? fread(buf, 1, sizeof buf - 1, f) : 0] = '\0';
    fflush(stdout);
    va_start(ap, fmt);
    fprintf(stderr, "bench_http: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n--- end of the daemon's log ---\n%s--- end ---\n", buf);
    va_end(ap);
    if (f)
        fclose(f);
    daemon_stop();
    remove_tmp(NULL);
    exit(1);
}

static void on_signal(int sig)
{
    if (g_pid > 0)
        kill(g_pid, SIGTERM);
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Poll the log for "listening on http://127.0.0.1:PORT"; the port. */
static int wait_listening(char *line, size_t cap)
{
    static const char key[] = "listening on http://127.0.0.1:";
    char buf[2048], *k = NULL;
    int st;
    for (double t0 = now_s(); !k; nanosleep(&TICK, NULL)) {
        FILE *f = fopen(g_log, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = '\0';
        if ((k = strstr(buf, key)) == NULL && waitpid(g_pid, &st, WNOHANG) == g_pid) {
            g_pid = 0;
            fail("the daemon exited before listening (wait status %d)", st);
        }
        if (!k && now_s() - t0 > WAIT_S)
            fail("the daemon printed no port within %.0f s", WAIT_S);
    }
    buf[strcspn(buf, "\n")] = '\0';
    snprintf(line, cap, "%.*s", (int)(cap - 1), buf);
    return atoi(k + sizeof key - 1);
}

/* Start @bin on <tmp>/<dur>.db, its stderr (banner and access log) to a file. */
static int daemon_start(const char *bin, const char *dur, char *line, size_t cap)
{
    char db[1024];
    snprintf(db, sizeof db, "%s", g_db ? g_db : "");
    if (!g_db)
        snprintf(db, sizeof db, "%s/%s.db", g_tmp, dur);
    snprintf(g_log, sizeof g_log, "%s/%s.log", g_tmp, dur);
    char *argv[] = {(char *)bin, "--port",     "0",      "--db",         db,     "--durability",
                    (char *)dur, "--max-body", MAX_BODY, "--log-format", "text", NULL,
                    NULL,        NULL,         NULL,     NULL,           NULL,   NULL};
    size_t n = 11; /* the optional flags that are set, in turn */
    const char *opt[3][2] = {{"--workers", g_workers},
                             {"--snapshot-log", g_snapshot_log},
                             {"--log-file-min", g_log_file_min}};
    for (size_t k = 0; k < 3; k++)
        if (opt[k][1]) {
            argv[n++] = (char *)opt[k][0];
            argv[n++] = (char *)opt[k][1];
        }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, g_log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid;
    int rc = posix_spawn(&pid, bin, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        fail("cannot start %s: %s (make build/curvd, or set CURVD_BIN)", bin, strerror(rc));
    g_pid = pid;
    return wait_listening(line, cap);
}

/* Seconds of CPU from /proc (Linux): the machine's busy time (@pid 0), or
 * the user + system time of process @pid; -1 where unavailable. */
static double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    unsigned long v[6] = {0};
    snprintf(path, sizeof path, pid ? "/proc/%ld/stat" : "/proc/stat", pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* after the command name */
    int got = 0;
    if (pid && p)
        got = 4 + sscanf(p, ") %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &v[0], &v[1]);
    else if (!pid) /* user nice system (idle iowait) irq softirq steal */
        got = sscanf(buf, "cpu %lu %lu %lu %*u %*u %lu %lu %lu", &v[0], &v[1], &v[2], &v[3], &v[4],
                     &v[5]);
    if (got != 6)
        return -1;
    return (double)(v[0] + v[1] + v[2] + v[3] + v[4] + v[5]) / (double)sysconf(_SC_CLK_TCK);
}

static void cpu_snap(struct cpu *c)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    c->t = now_s();
    c->daemon = g_pid > 0 ? proc_cpu_s((long)g_pid) : -1;
    c->busy = proc_cpu_s(0);
    c->self = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
              1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* CPU per step of the daemon and of this process, and the rest of the
 * machine's busy time as a share of its capacity, from @a to @b. */
static void cpu_diff(const struct cpu *a, const struct cpu *b, size_t steps, struct row *r)
{
    r->dcpu = a->daemon < 0 ? NAN : (b->daemon - a->daemon) / (double)steps;
    r->ccpu = (b->self - a->self) / (double)steps;
    r->other = a->busy < 0 || a->daemon < 0
                   ? NAN
                   : 100 * ((b->busy - a->busy) - (b->daemon - a->daemon) - (b->self - a->self)) /
                         ((b->t - a->t) * (double)g_ncpu);
}

/* ---- HTTP/1.1 over a socket ---------------------------------------------- */

static void conn_open(struct conn *c, int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
    int one = 1;
    memset(c, 0, sizeof *c);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fail("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c->buf);
    memset(c, 0, sizeof *c);
}

static void conn_reserve(struct conn *c, size_t need)
{
    if (need <= c->cap)
        return;
    size_t cap = c->cap * 2 > need ? c->cap * 2 : need;
    char *nb = realloc(c->buf, cap);
    if (!nb)
        fail("out of memory for a reply of %zu bytes", need);
    c->buf = nb;
    c->cap = cap;
}

static void send_all(int fd, struct iovec *iov, int n)
{
    while (n > 0) {
        ssize_t k = writev(fd, iov, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            fail("send: %s", strerror(errno));
        size_t left = (size_t)k;
        for (; n > 0 && left >= iov->iov_len; iov++, n--)
            left -= iov->iov_len;
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
}

static size_t recv_some(struct conn *c, size_t len)
{
    ssize_t k;
    do
        k = recv(c->fd, c->buf + len, c->cap - len - 1, 0);
    while (k < 0 && errno == EINTR);
    if (k <= 0)
        fail("receive: %s", k ? strerror(errno) : "the daemon closed the connection");
    return len + (size_t)k;
}

/* Read one reply: status line, headers, a Content-Length body. */
static void read_reply(struct conn *c)
{
    size_t len = 0, hend = 0, cl = 0;
    int have_cl = 0;
    while (!hend) {
        size_t from = len > 3 ? len - 3 : 0;
        conn_reserve(c, len + 65536);
        len = recv_some(c, len);
        c->buf[len] = '\0';
        char *e = strstr(c->buf + from, "\r\n\r\n");
        hend = e ? (size_t)(e + 4 - c->buf) : 0;
    }
    memset(c->timing, 0, sizeof c->timing);
    for (char *h = strstr(c->buf, "\r\n"); h && h < c->buf + hend; h = strstr(h + 2, "\r\n")) {
        if (strncasecmp(h + 2, "Content-Length:", 15) == 0)
            have_cl = sscanf(h + 17, "%zu", &cl) == 1;
        if (strncasecmp(h + 2, "Server-Timing:", 14) == 0)
            for (int k = 0; k < NPHASE; k++) {
                char key[24];
                snprintf(key, sizeof key, "%s;dur=", PHASE[k]);
                const char *at = strstr(h + 16, key), *eol = strstr(h + 2, "\r\n");
                if (at && at < eol)
                    c->timing[k] = strtod(at + strlen(key), NULL) / 1e3;
            }
    }
    if (sscanf(c->buf, "HTTP/1.%*d %d", &c->status) != 1 || !have_cl)
        fail("a reply without a status line or Content-Length: %.200s", c->buf);
    conn_reserve(c, hend + cl + 1);
    while (len < hend + cl)
        len = recv_some(c, len);
    if (len > hend + cl)
        fail("%zu unexpected bytes after a reply", len - hend - cl);
    c->buf[len] = '\0';
    c->reply = c->buf + hend;
    c->rlen = cl;
}

/* Send @b (binary extension when @json_len > 0), read the reply, check its status. */
static void http_call(struct conn *c, const char *path, struct body *b, size_t json_len, int want)
{
    char head[512], extra[80] = "";
    struct iovec iov[MAXIOV + 1];
    if (json_len)
        snprintf(extra, sizeof extra, "Inference-Header-Content-Length: %zu\r\n", json_len);
    iov[0].iov_base = head;
    iov[0].iov_len = (size_t)snprintf(
        head, sizeof head,
        "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n",
        path, json_len ? "application/octet-stream" : "application/json", b->len, extra);
    memcpy(iov + 1, b->iov, (size_t)b->n * sizeof *iov);
    send_all(c->fd, iov, b->n + 1);
    c->sent = b->len;
    read_reply(c);
    if (c->status != want)
        fail("POST %s: HTTP %d (expected %d): %.2000s", path, c->status, want, c->reply);
}

/* ---- request bodies ----------------------------------------------------- */

static void body_add(struct body *b, const void *p, size_t n)
{
    if (b->n == MAXIOV)
        fail("too many body pieces");
    b->iov[b->n].iov_base = (void *)p;
    b->iov[b->n++].iov_len = n;
    b->len += n;
}

static PRINTF(2, 3) void body_text(struct body *b, const char *fmt, ...)
{
    char *at = b->text + b->tlen;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(at, sizeof b->text - b->tlen, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= sizeof b->text - b->tlen)
        fail("request text too long");
    b->tlen += (size_t)k;
    body_add(b, at, (size_t)k);
}

/* A step body; with @bad its last value is out of range (FP32 JSON: 1e39;
 * binary: NaN), so the daemon decodes everything, then answers 422.
 * Returns the JSON header length for the binary extension, else 0. */
static size_t build_step(struct body *b, const struct payload *pl, enum enc e, long long step,
                         int bad)
{
    size_t es = e == ENC_BIN64 ? 8 : 4, nb = pl->nblocks, json_len;
    b->n = 0, b->len = b->tlen = 0;
    body_text(b, "{\"step\":%lld,\"gradients\":[", step);
    for (size_t k = 0; k < nb; k++) {
        int last = bad && k == nb - 1;
        body_text(b, "%s{\"name\":\"b%zu\",\"shape\":[%zu],\"datatype\":\"%s\",", k ? "," : "", k,
                  pl->bn, e == ENC_BIN64 ? "FP64" : "FP32");
        if (e == ENC_JSON) {
            body_text(b, "\"data\":[");
            body_add(b, pl->text, last ? pl->tlast : pl->tlen);
            body_text(b, "%s]}", last ? ",1e39" : "");
        } else {
            body_text(b, "\"parameters\":{\"binary_data_size\":%zu}}", pl->bn * es);
        }
    }
    body_text(b, "]}");
    if (e == ENC_JSON)
        return 0;
    json_len = b->len;
    for (size_t k = 0; k < nb; k++) {
        int last = bad && k == nb - 1;
        body_add(b, e == ENC_BIN64 ? (const void *)pl->f64 : (const void *)pl->f32,
                 pl->bn * es - (last ? es : 0));
        if (last)
            body_add(b, e == ENC_BIN64 ? (const void *)&NAN64 : (const void *)&NAN32, es);
    }
    return json_len;
}

/* POST /v1/sessions (@optimizer, blocks b0.. of @pl); the steps path. */
static void create_session(struct conn *c, const struct payload *pl, const char *optimizer,
                           char *path, size_t cap)
{
    struct body b = {.n = 0};
    body_text(&b, "{\"optimizer\":\"%s\",\"config\":{},\"layout\":[", optimizer);
    for (size_t k = 0; k < pl->nblocks; k++)
        body_text(&b, "%s{\"name\":\"b%zu\",\"kind\":\"vector\",\"shape\":[%zu]}", k ? "," : "", k,
                  pl->bn);
    body_text(&b, "]}");
    http_call(c, "/v1/sessions", &b, 0, 201);
    const char *id = strstr(c->reply, "\"id\":\"");
    size_t n = id ? strspn(id + 6, "0123456789abcdef") : 0;
    if (n != 32)
        fail("no session id in: %.500s", c->reply);
    snprintf(path, cap, "/v1/sessions/%.32s/steps", id + 6);
}

/* Post one step (or the rejected probe); seconds from building to the last byte. */
static double post_step(struct conn *c, const char *path, const struct payload *pl, enum enc e,
                        long long step, int bad)
{
    struct body b;
    char want[48];
    double t0 = now_s();
    size_t json_len = build_step(&b, pl, e, step, bad);
    http_call(c, path, &b, json_len, bad ? 422 : 200);
    double t = now_s() - t0;
    int n = snprintf(want, sizeof want, "{\"step\":%lld,", step);
    if (!bad && strncmp(c->reply, want, (size_t)n) != 0)
        fail("step %lld: unexpected reply: %.500s", step, c->reply);
    return t;
}

/* Random values in [-1, 1), FP32-exact; the JSON text of one block. */
static void payload_init(struct payload *pl, size_t nblocks, size_t bn)
{
    uint64_t x = 0x9e3779b97f4a7c15u ^ bn;
    pl->nblocks = nblocks, pl->bn = bn;
    pl->f32 = xmalloc(bn * sizeof *pl->f32);
    pl->f64 = xmalloc(bn * sizeof *pl->f64);
    pl->text = xmalloc(bn * 16 + 1);
    pl->tlen = 0;
    for (size_t i = 0; i < bn; i++) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        pl->f32[i] = (float)((double)((x * 0x2545f4914f6cdd1du) >> 40) * 0x1p-23 - 1.0);
        pl->f64[i] = pl->f32[i];
        pl->tlast = pl->tlen;
        pl->tlen += (size_t)snprintf(pl->text + pl->tlen, 17, "%s%.9g", i ? "," : "", pl->f64[i]);
    }
}

/* ---- small sessions: many clients ---------------------------------------- */

struct small_run {
    int port;
    enum enc enc;
    const struct payload *pl;
    pthread_barrier_t ready, go;
    double deadline;
};

struct client {
    pthread_t th;
    struct small_run *run;
    struct conn c;
    char path[80];
    long long step;
    double *lat, t_last;
    size_t nlat, cap;
};

static void *client_main(void *arg)
{
    struct client *cl = arg;
    struct small_run *r = cl->run;
    conn_open(&cl->c, r->port);
    create_session(&cl->c, r->pl, "adagrad_diag", cl->path, sizeof cl->path);
    for (int i = 0; i < SMALL_WARM; i++)
        post_step(&cl->c, cl->path, r->pl, r->enc, ++cl->step, 0);
    pthread_barrier_wait(&r->ready);
    pthread_barrier_wait(&r->go); /* the deadline is set in between */
    do {
        double t = post_step(&cl->c, cl->path, r->pl, r->enc, ++cl->step, 0);
        if (cl->nlat == cl->cap) {
            cl->cap = cl->cap ? 2 * cl->cap : 4096;
            double *nl = realloc(cl->lat, cl->cap * sizeof *nl);
            if (!nl)
                fail("out of memory for latencies");
            cl->lat = nl;
        }
        cl->lat[cl->nlat++] = t;
    } while ((cl->t_last = now_s()) < r->deadline);
    return NULL;
}

static void run_small(int port, const struct payload *pl, enum enc enc, int n, double secs,
                      struct row *row)
{
    struct small_run r = {.port = port, .enc = enc, .pl = pl};
    struct client *cl = calloc((size_t)n, sizeof *cl);
    struct cpu c0, c1;
    if (!cl || pthread_barrier_init(&r.ready, NULL, (unsigned)n + 1) != 0 ||
        pthread_barrier_init(&r.go, NULL, (unsigned)n + 1) != 0)
        fail("cannot set up %d clients", n);
    for (int i = 0; i < n; i++) {
        cl[i].run = &r;
        if (pthread_create(&cl[i].th, NULL, client_main, &cl[i]) != 0)
            fail("cannot start client thread %d", i);
    }
    pthread_barrier_wait(&r.ready);
    cpu_snap(&c0);
    r.deadline = c0.t + secs;
    pthread_barrier_wait(&r.go);
    for (int i = 0; i < n; i++)
        pthread_join(cl[i].th, NULL);
    cpu_snap(&c1);
    size_t total = 0, k = 0;
    double t_end = c0.t, *all;
    for (int i = 0; i < n; i++)
        total += cl[i].nlat, t_end = fmax(t_end, cl[i].t_last);
    all = xmalloc(total * sizeof *all);
    for (int i = 0; i < n; i++) {
        memcpy(all + k, cl[i].lat, cl[i].nlat * sizeof *all);
        k += cl[i].nlat;
        free(cl[i].lat);
        conn_close(&cl[i].c);
    }
    qsort(all, total, sizeof *all, cmp_double);
    row->steps = total;
    row->rate = (double)total / (t_end - c0.t);
    row->p50 = all[total / 2];
    row->p99 = all[(size_t)(0.99 * (double)(total - 1))];
    row->pmax = all[total - 1];
    cpu_diff(&c0, &c1, total, row);
    pthread_barrier_destroy(&r.ready);
    pthread_barrier_destroy(&r.go);
    free(all);
    free(cl);
}

/* ---- the transport floor: the same bytes over loopback, nothing else ------ */

struct sink {
    int fd;
    size_t up, down;
};

/* Read @up bytes, then write @down bytes back. */
static void *sink_main(void *arg)
{
    struct sink *k = arg;
    char *buf = xmalloc(1 << 20);
    memset(buf, 0, 1 << 20);
    for (size_t got = 0; got < k->up;) {
        ssize_t n = recv(k->fd, buf, 1 << 20, 0);
        if (n <= 0)
            fail("transport floor: receive: %s", n ? strerror(errno) : "closed");
        got += (size_t)n;
    }
    for (size_t put = 0; put < k->down;) {
        size_t want = k->down - put < (1u << 20) ? k->down - put : (1u << 20);
        ssize_t n = send(k->fd, buf, want, 0);
        if (n <= 0)
            fail("transport floor: send: %s", strerror(errno));
        put += (size_t)n;
    }
    free(buf);
    return NULL;
}

/* Median seconds to send @up bytes to a loopback TCP peer and read @down
 * bytes back: what any server on this machine pays to move a step. */
static double transport_floor(size_t up, size_t down)
{
    double t[3];
    char *buf = xmalloc(1 << 20);
    memset(buf, 1, 1 << 20);
    for (int r = 0; r < 3; r++) {
        int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t sl = sizeof sa;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(lfd, 1) != 0 ||
            getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
            fail("transport floor: listen: %s", strerror(errno));
        struct conn c;
        conn_open(&c, ntohs(sa.sin_port));
        struct sink k = {.fd = accept(lfd, NULL, NULL), .up = up, .down = down};
        pthread_t th;
        setsockopt(k.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (k.fd < 0 || pthread_create(&th, NULL, sink_main, &k) != 0)
            fail("transport floor: accept: %s", strerror(errno));
        double t0 = now_s();
        for (size_t put = 0; put < up;) {
            size_t want = up - put < (1u << 20) ? up - put : (1u << 20);
            ssize_t n = send(c.fd, buf, want, 0);
            if (n <= 0)
                fail("transport floor: send: %s", strerror(errno));
            put += (size_t)n;
        }
        for (size_t got = 0; got < down;) {
            ssize_t n = recv(c.fd, buf, 1 << 20, 0);
            if (n <= 0)
                fail("transport floor: receive: %s", n ? strerror(errno) : "closed");
            got += (size_t)n;
        }
        t[r] = now_s() - t0;
        pthread_join(th, NULL);
        close(k.fd);
        close(lfd);
        conn_close(&c);
    }
    free(buf);
    qsort(t, 3, sizeof *t, cmp_double);
    return t[1];
}

/* ---- the large session: one client --------------------------------------- */

/* The rows of LROWS under durability @di, on one session: per row a
 * rejected step, a warm-up step (the encodings' buffers differ in size, so
 * a row's first step faults pages in) and LARGE_STEPS timed ones. */
static void run_large(int port, const struct payload *pl, int di, struct row *rows)
{
    struct conn c;
    char path[80];
    long long step = 0;
    conn_open(&c, port);
    create_session(&c, pl, "adagrad_diag", path, sizeof path);
    for (size_t i = 0; i < NLROW; i++) {
        struct row *r = &rows[i];
        double t[LARGE_STEPS];
        struct cpu c0, c1;
        if (LROWS[i].dur != di)
            continue;
        r->reject = post_step(&c, path, pl, LROWS[i].enc, step + 1, 1);
        post_step(&c, path, pl, LROWS[i].enc, ++step, 0);
        cpu_snap(&c0);
        double ph[LARGE_STEPS][NPHASE];
        for (int k = 0; k < LARGE_STEPS; k++) {
            t[k] = post_step(&c, path, pl, LROWS[i].enc, ++step, 0);
            memcpy(ph[k], c.timing, sizeof ph[k]);
        }
        cpu_snap(&c1);
        cpu_diff(&c0, &c1, LARGE_STEPS, r);
        /* The median step's own split, so that its parts add up to it. */
        int med = 0;
        for (int k = 0; k < LARGE_STEPS; k++) {
            int below = 0;
            for (int j = 0; j < LARGE_STEPS; j++)
                below += t[j] < t[k] || (t[j] == t[k] && j < k);
            if (below == LARGE_STEPS / 2)
                med = k;
        }
        memcpy(r->phase, ph[med], sizeof r->phase);
        qsort(t, LARGE_STEPS, sizeof *t, cmp_double);
        r->steps = LARGE_STEPS;
        r->p50 = t[LARGE_STEPS / 2], r->lo = t[0], r->pmax = t[LARGE_STEPS - 1];
        r->req_mb = (double)c.sent / 1e6;
        r->rep_mb = (double)c.rlen / 1e6;
        r->floor = transport_floor(c.sent, c.rlen);
    }
    conn_close(&c);
}

/* ---- in-process libcurv --------------------------------------------------- */

/* Median over @reps (<= 5) repetitions of >= @min_s (at least one op) of a
 * step (@save = 0) or a curv_opt_save (@save = 1); seconds per op. */
static double time_inproc(curv_opt *o, const double *g, double *upd, int save, int reps,
                          double min_s)
{
    double rep[5];
    curv_step_input in = {.grad = g, .len = curv_layout_dim(curv_opt_layout(o)), .dtype = CURV_F64};
    for (int r = 0; r < reps; r++) {
        double t0 = now_s(), el;
        long n = 0;
        do {
            curv_request req;
            curv_error e = {.text = ""};
            unsigned char *blob = NULL;
            size_t len;
            curv_status st =
                save ? curv_opt_save(o, &blob, &len, &e) : curv_opt_step(o, &in, upd, &req, &e);
            curv_free(blob);
            if (st != CURV_OK)
                fail("in-process %s: %s: %s", save ? "save" : "step", curv_status_name(st), e.text);
            n++;
        } while ((el = now_s() - t0) < min_s);
        rep[r] = el / (double)n;
    }
    qsort(rep, (size_t)reps, sizeof *rep, cmp_double);
    return rep[reps / 2];
}

/* Time @pl's session in this process: out[0] a step, out[1] a save. */
static void inproc_pair(const struct payload *pl, int reps, double min_s, double out[2])
{
    size_t d = pl->nblocks * pl->bn;
    double *g = xmalloc(d * sizeof *g), *upd = xmalloc(d * sizeof *upd);
    for (size_t k = 0; k < pl->nblocks; k++)
        memcpy(g + k * pl->bn, pl->f64, pl->bn * sizeof *g);
    curv_layout *l = curv_layout_new();
    curv_opt *o = NULL;
    curv_error e = {.text = ""};
    curv_status st = l ? CURV_OK : CURV_E_NOMEM;
    for (size_t k = 0; k < pl->nblocks && st == CURV_OK; k++) {
        char name[24];
        snprintf(name, sizeof name, "b%zu", k);
        st = curv_layout_add_vector(l, name, pl->bn, &e);
    }
    if (st == CURV_OK)
        st = curv_opt_new(CURV_OPT_ADAGRAD_DIAG, l, NULL, &o, &e);
    curv_layout_free(l);
    if (st != CURV_OK)
        fail("in-process optimizer: %s: %s", curv_status_name(st), e.text);
    time_inproc(o, g, upd, 0, 1, min_s); /* warm-up */
    out[0] = time_inproc(o, g, upd, 0, 5, min_s);
    out[1] = time_inproc(o, g, upd, 1, reps, min_s);
    curv_opt_free(o);
    free(g);
    free(upd);
}

/* ---- report --------------------------------------------------------------- */

static void print_tables(const struct row *s, const struct row *l, const struct payload *pl,
                         double secs)
{
    printf("\nsmall sessions: adagrad_diag, d = %d (one vector block), FP32 as JSON numbers or\n"
           "binary, one session per keep-alive connection, %.1f s per row after %d warm-up steps\n"
           "each; CPU columns: us per step; 'other': CPU busy outside daemon and bench, %% of\n"
           "the machine\n",
           SMALL_D, secs, SMALL_WARM);
    printf("%-10s %-11s %7s %7s %8s %8s %8s %8s %9s %9s %6s\n", "durability", "encoding", "clients",
           "steps", "steps/s", "p50 ms", "p99 ms", "max ms", "daemon", "client", "other");
    for (size_t i = 0; i < NSROW; i++) {
        const struct row *r = &s[i];
        if (r->steps)
            printf("%-10s %-11s %7d %7zu %8.0f %8.3f %8.3f %8.2f %9.1f %9.1f %5.0f%%\n",
                   DURS[SROWS[i].dur], ENC_NAME[SROWS[i].enc], SROWS[i].clients, r->steps, r->rate,
                   r->p50 * 1e3, r->p99 * 1e3, r->pmax * 1e3, r->dcpu * 1e6, r->ccpu * 1e6,
                   r->other < 0 ? 0 : r->other);
    }
    printf("\nlarge session: adagrad_diag, d = %zu (%zu vector blocks of %zu), one client, %d\n"
           "timed steps per row after a warm-up step (ms: median, min, max); 'rejected': one step "
           "answered 422 after\n"
           "the whole body was received and decoded; daemon CPU in ms per step\n",
           pl->nblocks * pl->bn, pl->nblocks, pl->bn, LARGE_STEPS);
    printf("%-10s %-11s %7s %7s %8s %8s %8s %8s %8s %8s %6s\n", "durability", "encoding", "req MB",
           "rep MB", "ms/step", "min", "max", "MB/s", "rejected", "daemon", "other");
    for (size_t i = 0; i < NLROW; i++) {
        const struct row *r = &l[i];
        if (r->steps)
            printf("%-10s %-11s %7.1f %7.1f %8.0f %8.0f %8.0f %8.1f %8.0f %8.0f %5.0f%%\n",
                   DURS[LROWS[i].dur], ENC_NAME[LROWS[i].enc], r->req_mb, r->rep_mb, r->p50 * 1e3,
                   r->lo * 1e3, r->pmax * 1e3, r->req_mb / r->p50, r->reject * 1e3, r->dcpu * 1e3,
                   r->other < 0 ? 0 : r->other);
    }
}

static void print_small_ratios(const struct row *s, const double in[4])
{
    printf("small, goal >= 10000 steps/s on this machine; library share = (step + save) / "
           "daemon CPU\n");
    for (size_t i = 0; i < NSROW; i++)
        if (s[i].steps)
            printf("  %-6s %-11s %2d clients: %6.0f steps/s = %.2f x goal %-8s library share "
                   "%4.1f%%\n",
                   DURS[SROWS[i].dur], ENC_NAME[SROWS[i].enc], SROWS[i].clients, s[i].rate,
                   s[i].rate / 1e4, s[i].rate >= 1e4 ? "(met)" : "(MISSED)",
                   100 * (in[0] + in[1]) / s[i].dcpu);
    for (size_t i = 0; i < NSROW; i++)
        for (size_t j = 0; j < NSROW; j++)
            if (SROWS[i].dur == 1 && SROWS[j].dur == 0 && SROWS[i].enc == SROWS[j].enc &&
                SROWS[i].clients == SROWS[j].clients && s[i].steps && s[j].steps)
                printf("  durable commit, %-11s %2d clients: full - normal = %+.0f us per step "
                       "(1/throughput), %+.2f ms p50\n",
                       ENC_NAME[SROWS[i].enc], SROWS[i].clients,
                       (1 / s[i].rate - 1 / s[j].rate) * 1e6, (s[i].p50 - s[j].p50) * 1e3);
}

static void print_large_ratios(const struct row *l, const double in[4])
{
    printf("large: the median step's split (ms, its Server-Timing) = step + save + commit (the\n"
           "durable write) + HTTP (receive, decode, encode, send: the rest of the median);\n"
           "HTTP = decode + encode + wire (receiving and sending, the rest).\n"
           "'floor': the same request and reply bytes over a loopback TCP socket, nothing else.\n"
           "HTTP overhead vs the in-process step: goal < 20%% for binary\n");
    printf("  %-6s %-11s %7s = %6s + %6s + %7s + %7s   %7s  %9s %8s   %6s %6s %6s\n", "", "",
           "total", "step", "save", "commit", "HTTP", "floor", "HTTP/step", "HTTP/floor", "decode",
           "encode", "wire");
    for (size_t i = 0; i < NLROW; i++) {
        const struct row *r = &l[i];
        if (!r->steps)
            continue;
        double inner = r->phase[PH_STEP] + r->phase[PH_SAVE] + r->phase[PH_COMMIT];
        double http = r->p50 - inner, over = http / in[2];
        double dec = r->phase[PH_DECODE], enc = r->phase[PH_ENCODE];
        printf("  %-6s %-11s %7.0f = %6.1f + %6.1f + %7.1f + %7.1f   %7.1f  %8.1fx %9.2fx   %6.1f "
               "%6.1f %6.1f %s\n",
               DURS[LROWS[i].dur], ENC_NAME[LROWS[i].enc], r->p50 * 1e3, r->phase[PH_STEP] * 1e3,
               r->phase[PH_SAVE] * 1e3, r->phase[PH_COMMIT] * 1e3, http * 1e3, r->floor * 1e3, over,
               http / r->floor, dec * 1e3, enc * 1e3, (http - dec - enc) * 1e3,
               LROWS[i].enc == ENC_JSON ? ""
               : over < 0.2             ? "(met)"
                                        : "(MISSED)");
    }
    for (size_t i = 0; i < NLROW; i++)
        for (size_t j = 0; j < NLROW; j++)
            if (LROWS[i].dur == 1 && LROWS[j].dur == 0 && LROWS[i].enc == LROWS[j].enc &&
                l[i].steps && l[j].steps)
                printf("  durable commit, %s: full - normal = %+.0f ms per step\n",
                       ENC_NAME[LROWS[i].enc], (l[i].p50 - l[j].p50) * 1e3);
}

/* ---- small sessions' durable forms ----------------------------------------- */

#define DF_D 26000 /* parameters: the size of issue 20's small MBAG session */
#define DF_STEPS 40

/* One daemon (durability @dur, --snapshot-log @form or its default), one
 * @optimizer session of DF_D parameters stepped DF_STEPS times by one
 * client (binary FP32): the mean of each phase after the first step. */
static void df_run(const char *bin, const struct payload *pl, const char *optimizer,
                   const char *dur, const char *form, double mean[NPHASE])
{
    char line[512], path[128];
    const char *keep = g_snapshot_log;
    g_snapshot_log = form;
    int port = daemon_start(bin, dur, line, sizeof line);
    g_snapshot_log = keep;
    struct conn c;
    conn_open(&c, port);
    create_session(&c, pl, optimizer, path, sizeof path);
    memset(mean, 0, NPHASE * sizeof *mean);
    for (long long k = 1; k <= DF_STEPS; k++) {
        post_step(&c, path, pl, ENC_BIN32, k, 0);
        for (int p = 0; k > 1 && p < NPHASE; p++)
            mean[p] += c.timing[p] / (DF_STEPS - 1);
    }
    conn_close(&c);
    if (daemon_stop() != 0)
        fail("the daemon did not stop cleanly on SIGTERM");
    char db[64];
    for (int k = 0; k < 3; k++) {
        snprintf(db, sizeof db, "%s.db%s", dur, k == 0 ? "" : k == 1 ? "-wal" : "-shm");
        remove_tmp(db);
    }
}

/* Save + commit against the library's step for small MBAG and AdaGrad
 * sessions, as the step log makes a step durable and as every step a
 * snapshot (--snapshot-log 0), under both durabilities, in one run. */
static void run_durable_forms(const char *bin)
{
    static const char *const kinds[] = {"mbag", "adagrad_diag"}, *const durs[] = {"full", "normal"};
    struct payload pl;
    payload_init(&pl, 1, DF_D);
    printf("\nsmall sessions, d = %d, one client, binary FP32, steps 2-%d: means in ms of the "
           "step phase, save and commit, and (save + commit) / step\n",
           DF_D, DF_STEPS);
    for (size_t k = 0; k < 2; k++)
        for (size_t d = 0; d < 2; d++) {
            double snap[NPHASE], log[NPHASE];
            df_run(bin, &pl, kinds[k], durs[d], "0", snap);
            df_run(bin, &pl, kinds[k], durs[d], NULL, log);
            printf("  %-12s %-6s  every step a snapshot: %7.3f %7.3f %7.3f %7.1fx   step log: "
                   "%7.3f %7.3f %7.3f %7.1fx   save + commit %.1fx less\n",
                   kinds[k], durs[d], snap[PH_STEP] * 1e3, snap[PH_SAVE] * 1e3,
                   snap[PH_COMMIT] * 1e3, (snap[PH_SAVE] + snap[PH_COMMIT]) / snap[PH_STEP],
                   log[PH_STEP] * 1e3, log[PH_SAVE] * 1e3, log[PH_COMMIT] * 1e3,
                   (log[PH_SAVE] + log[PH_COMMIT]) / log[PH_STEP],
                   (snap[PH_SAVE] + snap[PH_COMMIT]) / (log[PH_SAVE] + log[PH_COMMIT]));
            fflush(stdout);
        }
    free(pl.f32);
    free(pl.f64);
    free(pl.text);
}

/* ---- the autoencoder K-FAC session ---------------------------------------- */

#define AE_M 1000  /* examples per step (--quick: 50) */
#define AE_WARM 3  /* steps 1-3 refresh the inverses */
#define AE_STEPS 6 /* timed: steps 4-9, factors and multiply, no refresh */
#define AE_LMAX 8

static const size_t AE_W[] = {784, 1000, 500, 250, 30, 250, 500, 1000, 784};
static const size_t AE_W_QUICK[] = {10, 8, 6, 4, 6, 8, 10};

struct ae {
    const size_t *w;
    size_t L, m;
    float *vals, *grad; /* random values: activations and signals; gradients (x 1e-3) */
};

/* A step body: the gradients, then each layer's activations and signals,
 * all binary FP32 (the bytes of @a's buffers, reused for every tensor). */
static size_t ae_step_body(struct body *b, const struct ae *a, long long step)
{
    b->n = 0, b->len = b->tlen = 0;
    body_text(b, "{\"step\":%lld,\"gradients\":[", step);
    for (size_t i = 0; i < a->L; i++)
        body_text(b,
                  "%s{\"name\":\"l%zu\",\"shape\":[%zu,%zu],\"datatype\":\"FP32\","
                  "\"parameters\":{\"binary_data_size\":%zu}}",
                  i ? "," : "", i, a->w[i + 1], a->w[i] + 1, a->w[i + 1] * (a->w[i] + 1) * 4);
    body_text(b, "],\"layers\":[");
    for (size_t i = 0; i < a->L; i++)
        body_text(b,
                  "%s{\"block\":\"l%zu\",\"activations\":{\"name\":\"a\",\"shape\":[%zu,%zu],"
                  "\"datatype\":\"FP32\",\"parameters\":{\"binary_data_size\":%zu}},"
                  "\"signals\":{\"name\":\"s\",\"shape\":[%zu,%zu],\"datatype\":\"FP32\","
                  "\"parameters\":{\"binary_data_size\":%zu}}}",
                  i ? "," : "", i, a->m, a->w[i], a->m * a->w[i] * 4, a->m, a->w[i + 1],
                  a->m * a->w[i + 1] * 4);
    body_text(b, "]}");
    size_t json_len = b->len;
    for (size_t i = 0; i < a->L; i++)
        body_add(b, a->grad, a->w[i + 1] * (a->w[i] + 1) * 4);
    for (size_t i = 0; i < a->L; i++) {
        body_add(b, a->vals, a->m * a->w[i] * 4);
        body_add(b, a->vals, a->m * a->w[i + 1] * 4);
    }
    return json_len;
}

/* How a run of the autoencoder session goes: its refresh interval and
 * max_staleness, and the steps after the AE_WARM first that are timed. */
struct ae_plan {
    int inv_interval, staleness, steps;
    double think_s;         /* the trainer's time between steps (its passes), slept */
    const char *durability; /* the daemon's --durability; NULL: full */
};
#define AE_MAX_STEPS 32

/* The median over the timed steps of their Server-Timing sums, of the
 * last ae_run. */
static double g_ae_timing_median;

static int by_value(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* One daemon (--workers @workers, @plan's durability), one session stepped
 * as @plan says: the median of the timed steps and that step's
 * Server-Timing, their mean into *@mean and the mean of each phase into
 * @mean_ph (either may be NULL). */
static void ae_run(const char *bin, const struct ae *a, const char *workers,
                   const struct ae_plan *plan, double *wall, double phase[NPHASE], double *mean,
                   double mean_ph[NPHASE])
{
    char line[512], path[128], db[4][32];
    const char *dur = plan->durability ? plan->durability : "full";
    g_workers = workers;
    int port = daemon_start(bin, dur, line, sizeof line);
    g_workers = NULL;
    printf("daemon: %s\n", line);
    fflush(stdout);
    struct conn c;
    conn_open(&c, port);
    struct body b = {.n = 0};
    body_text(&b,
              "{\"optimizer\":\"kfac\",\"config\":{\"mode\":\"simple\",\"inv_interval\":%d,"
              "\"max_staleness\":%d,\"weight_decay\":0},\"layout\":[",
              plan->inv_interval, plan->staleness);
    for (size_t i = 0; i < a->L; i++)
        body_text(&b, "%s{\"name\":\"l%zu\",\"kind\":\"dense\",\"shape\":[%zu,%zu],\"bias\":true}",
                  i ? "," : "", i, a->w[i + 1], a->w[i]);
    body_text(&b, "]}");
    http_call(&c, "/v1/sessions", &b, 0, 201);
    const char *id = strstr(c.reply, "\"id\":\"");
    if (!id || strspn(id + 6, "0123456789abcdef") != 32)
        fail("no session id in: %.500s", c.reply);
    snprintf(path, sizeof path, "/v1/sessions/%.32s/steps", id + 6);
    const int steps = plan->steps;
    double t[AE_MAX_STEPS], ph[AE_MAX_STEPS][NPHASE];
    for (long long k = 1; k <= AE_WARM + steps; k++) {
        char want[48];
        if (plan->think_s > 0 && k > 1)
            nanosleep(
                &(struct timespec){(time_t)plan->think_s,
                                   (long)((plan->think_s - (double)(time_t)plan->think_s) * 1e9)},
                NULL);
        double t0 = now_s();
        size_t json_len = ae_step_body(&b, a, k);
        http_call(&c, path, &b, json_len, 200);
        double dt = now_s() - t0;
        int n = snprintf(want, sizeof want, "{\"step\":%lld,", k);
        if (strncmp(c.reply, want, (size_t)n) != 0)
            fail("step %lld: unexpected reply: %.500s", k, c.reply);
        if (k > AE_WARM) {
            t[k - AE_WARM - 1] = dt;
            memcpy(ph[k - AE_WARM - 1], c.timing, sizeof c.timing);
        }
        if (getenv("CURVD_BENCH_TRACE")) { /* each step: wall time, then its Server-Timing */
            printf("  trace step %3lld %7.3f", k, dt);
            for (int p = 0; p < NPHASE; p++)
                printf(" %s %.3f", PHASE[p], c.timing[p]);
            printf("\n");
        }
    }
    conn_close(&c);
    int st = daemon_stop();
    if (st != 0)
        fail("the daemon did not stop cleanly on SIGTERM (status %d)", st);
    snprintf(db[0], sizeof db[0], "%s.db", dur);
    snprintf(db[1], sizeof db[1], "%s.db-wal", dur);
    snprintf(db[2], sizeof db[2], "%s.db-shm", dur);
    snprintf(db[3], sizeof db[3], "%s.db-steps", dur);
    for (int k = 0; k < 4; k++)
        remove_tmp(db[k]);
    int med = 0; /* the median step: as many faster as slower */
    double sum = 0;
    for (int i = 0; i < steps; i++) {
        int below = 0;
        for (int j = 0; j < steps; j++)
            below += t[j] < t[i];
        if (below == steps / 2)
            med = i;
        sum += t[i];
    }
    *wall = t[med];
    memcpy(phase, ph[med], sizeof ph[med]);
    double totals[AE_MAX_STEPS];
    for (int i = 0; i < steps; i++) {
        totals[i] = 0;
        for (int p = 0; p < NPHASE; p++)
            totals[i] += ph[i][p];
    }
    qsort(totals, (size_t)steps, sizeof *totals, by_value);
    g_ae_timing_median = (totals[(steps - 1) / 2] + totals[steps / 2]) / 2;
    if (mean)
        *mean = sum / steps;
    for (int p = 0; mean_ph && p < NPHASE; p++) {
        mean_ph[p] = 0;
        for (int i = 0; i < steps; i++)
            mean_ph[p] += ph[i][p] / steps;
    }
}

/* What making a step durable costs, as the step log does it (the daemon's
 * default --snapshot-log) and as every step a snapshot (0), in one run:
 * the mean of each phase over steps long enough to hold several
 * snapshots, and save + commit as a share of the library's step. */
static void ae_durable_forms(const char *bin, const struct ae *a, const char *ncpu)
{
    const struct ae_plan plan = {.inv_interval = 20, .staleness = 0, .steps = 12};
    const char *forms[2] = {"0", NULL};
    double ph[2][NPHASE], mean[2], med, med_ph[NPHASE];
    const char *keep = g_snapshot_log;
    for (int k = 0; k < 2; k++) {
        g_snapshot_log = forms[k] ? forms[k] : keep;
        ae_run(bin, a, ncpu, &plan, &med, med_ph, &mean[k], ph[k]);
    }
    g_snapshot_log = keep;
    printf("  durable form, --workers %s, steps %d-%d, means (s): step phase, save, commit, "
           "(save + commit) / step phase, whole step\n",
           ncpu, AE_WARM + 1, AE_WARM + plan.steps);
    for (int k = 0; k < 2; k++)
        printf("    %-34s %7.3f %7.3f %7.3f %6.1f%% %7.3f\n",
               forms[k] ? "every step a snapshot (--snapshot-log 0)"
                        : "step log (--snapshot-log default)",
               ph[k][PH_STEP], ph[k][PH_SAVE], ph[k][PH_COMMIT],
               100 * (ph[k][PH_SAVE] + ph[k][PH_COMMIT]) / ph[k][PH_STEP], mean[k]);
    printf("    save + commit: the log's %.3f s against %.3f s, %.2fx less\n",
           ph[1][PH_SAVE] + ph[1][PH_COMMIT], ph[0][PH_SAVE] + ph[0][PH_COMMIT],
           (ph[0][PH_SAVE] + ph[0][PH_COMMIT]) / (ph[1][PH_SAVE] + ph[1][PH_COMMIT]));
}

/* The network (@quick: a tiny one) and its random values. */
static struct ae ae_new(int quick)
{
    struct ae a = {.w = quick ? AE_W_QUICK : AE_W, .m = quick ? 50 : AE_M};
    a.L = (quick ? sizeof AE_W_QUICK : sizeof AE_W) / sizeof(size_t) - 1;
    size_t most = 1;
    for (size_t i = 0; i <= a.L; i++)
        most = a.w[i] * (a.m > a.w[i] + 1 ? a.m : a.w[i] + 1) > most
                   ? a.w[i] * (a.m > a.w[i] + 1 ? a.m : a.w[i] + 1)
                   : most;
    a.vals = xmalloc(most * sizeof(float));
    a.grad = xmalloc(most * sizeof(float));
    uint64_t z = 12345;
    for (size_t i = 0; i < most; i++) {
        z = z * 6364136223846793005ULL + 1442695040888963407ULL;
        a.vals[i] = (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
        a.grad[i] = 1e-3f * a.vals[i];
    }
    return a;
}

/* --durable: the small sessions' and the autoencoder's durable forms. */
static void run_durable(const char *bin, int quick)
{
    run_durable_forms(bin);
    if (g_db) /* the stores compared on small sessions: the commit is what differs */
        return;
    struct ae a = ae_new(quick);
    char ncpu[24];
    snprintf(ncpu, sizeof ncpu, "%ld", g_ncpu > 1 ? g_ncpu : 2);
    printf("\nautoencoder K-FAC session over HTTP (m = %zu, simple mode, binary FP32, durability "
           "full)\n",
           a.m);
    ae_durable_forms(bin, &a, ncpu);
    free(a.vals);
    free(a.grad);
}

static void run_autoencoder(const char *bin, int quick)
{
    struct ae a = ae_new(quick);
    char ncpu[24];
    snprintf(ncpu, sizeof ncpu, "%ld", g_ncpu > 1 ? g_ncpu : 2);
    const char *workers[2] = {"1", ncpu};
    double wall[2], ph[2][NPHASE];
    const struct ae_plan quiet = {.inv_interval = 20, .staleness = 0, .steps = AE_STEPS};
    for (int k = 0; k < 2; k++)
        ae_run(bin, &a, workers[k], &quiet, &wall[k], ph[k], NULL, NULL);
    printf("\nautoencoder K-FAC session over HTTP (");
    for (size_t i = 0; i <= a.L; i++)
        printf("%s%zu", i ? "-" : "", a.w[i]);
    printf(", m = %zu, simple mode, binary FP32, durability full): the median of steps %d-%d "
           "(no refresh), seconds\n",
           a.m, AE_WARM + 1, AE_WARM + AE_STEPS);
    printf("  %-12s %8s", "workers", "step");
    for (int p = 0; p < NPHASE; p++)
        printf(" %8s", PHASE[p]);
    printf("\n");
    for (int k = 0; k < 2; k++) {
        printf("  %-12s %8.3f", workers[k], wall[k]);
        for (int p = 0; p < NPHASE; p++)
            printf(" %8.3f", ph[k][p]);
        printf("\n");
    }
    printf("  --workers %s / --workers 1: whole step %.2fx, its \"step\" phase %.2fx faster\n",
           ncpu, wall[0] / wall[1], ph[0][PH_STEP] / ph[1][PH_STEP]);
    /* Refreshes every AE_T3 steps, in the step (max_staleness 0) and off
     * it (2: computed by a worker while the trainer works and the next
     * step runs), with the trainer's passes between steps (slept: a
     * trainer on another machine) and without. */
    enum { AE_T3 = 5 };
    const double think[2] = {0, quick ? 0.01 : 0.3};
    for (int th = 0; th < 2; th++) {
        /* s = 2: max_staleness 2 without a refresh in the window, the
         * baseline of what refreshes off the step path add */
        double mean[3], med[3], ph2[NPHASE];
        for (int s = 0; s < 3; s++) {
            const struct ae_plan plan = {.inv_interval = s < 2 ? AE_T3 : 1000,
                                         .staleness = s ? 2 : 0,
                                         .steps = 4 * AE_T3,
                                         .think_s = think[th]};
            ae_run(bin, &a, ncpu, &plan, &med[s], ph2, &mean[s], NULL);
        }
        printf("  refreshes every %d steps, --workers %s, trainer %.2f s between steps, steps "
               "%d-%d: mean %.3f s with them in the step (max_staleness 0), %.3f s off it (2): "
               "%.2fx; medians %.3f / %.3f; max_staleness 2 without refreshes %.3f (median "
               "%.3f): refreshes off the step path add %+.1f%% to the mean\n",
               AE_T3, ncpu, think[th], AE_WARM + 1, AE_WARM + 4 * AE_T3, mean[0], mean[1],
               mean[0] / mean[1], med[0], med[1], mean[2], med[2],
               100.0 * (mean[1] / mean[2] - 1.0));
    }
    ae_durable_forms(bin, &a, ncpu);
    free(a.vals);
    free(a.grad);
}

/* --fold: the autoencoder between refreshes with max_staleness 0 (each
 * step folds its statistics before its reply) and 2 (after it, on a
 * worker: curv_opt_defer_stats), back to back and with a trainer's 0.3 s
 * between steps, under --durability full and normal; the means of steps
 * 4-9 and of their Server-Timing. Then, as the baseline of the records in
 * files (the default), max_staleness 2 back to back with the records in
 * their rows (--log-file-min above any record). */
static void run_fold(const char *bin, int quick)
{
    struct ae a = ae_new(quick);
    char ncpu[24];
    snprintf(ncpu, sizeof ncpu, "%ld", g_ncpu > 1 ? g_ncpu : 2);
    const double think[2] = {0, quick ? 0.01 : 0.3};
    static const char *const dur[2] = {"full", "normal"};
    /* [d][th][s]; th = 2: back to back, records in rows */
    double mean[2][3][2], ph[2][3][2][NPHASE], med, med_ph[NPHASE], med_timing[2][3][2];
    for (int d = 0; d < 2; d++)
        for (int th = 0; th < 3; th++)
            for (int s = th < 2 ? 0 : 1; s < 2; s++) {
                const struct ae_plan plan = {.inv_interval = 20,
                                             .staleness = 2 * s,
                                             .steps = AE_STEPS,
                                             .think_s = think[th % 2],
                                             .durability = dur[d]};
                g_log_file_min = th == 2 ? "1000000000000" : NULL;
                ae_run(bin, &a, ncpu, &plan, &med, med_ph, &mean[d][th][s], ph[d][th][s]);
                g_log_file_min = NULL;
                med_timing[d][th][s] = g_ae_timing_median;
            }
    printf("\nautoencoder K-FAC session over HTTP (m = %zu, simple mode, binary FP32, "
           "--workers %s), steps %d-%d (no refresh), means in seconds:\n",
           a.m, ncpu, AE_WARM + 1, AE_WARM + AE_STEPS);
    printf("  %-10s %-8s %-14s %-7s %8s", "durability", "trainer", "max_staleness", "records",
           "request");
    for (int p = 0; p < NPHASE; p++)
        printf(" %8s", PHASE[p]);
    printf(" %8s %8s\n", "timing", "median");
    for (int d = 0; d < 2; d++)
        for (int th = 0; th < 3; th++)
            for (int s = th < 2 ? 0 : 1; s < 2; s++) {
                double total = 0;
                printf("  %-10s %-8.2f %-14d %-7s %8.3f", dur[d], think[th % 2], 2 * s,
                       th < 2 ? "files" : "rows", mean[d][th][s]);
                for (int p = 0; p < NPHASE; p++)
                    printf(" %8.3f", ph[d][th][s][p]), total += ph[d][th][s][p];
                printf(" %8.3f %8.3f\n", total, med_timing[d][th][s]);
            }
    printf(
        "  request: the client's wall time of a step; timing: the sum of its Server-Timing "
        "(means: a snapshot's wait falls on some steps); median: the median of the steps' "
        "Server-Timing sums; with max_staleness 2 the fold runs after the reply, so back to back "
        "the next step waits for it; records: each step's record (46 MB at m = 1000) in its "
        "session's file beside the database (the default, --log-file-min 1 MiB) or in its "
        "step_log row\n");
    free(a.vals);
    free(a.grad);
}

int main(int argc, char **argv)
{
    int quick = 0, small_rows = 1, large_rows = 1, ae_rows = 1, df_rows = 1, fold_rows = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            quick = 1;
        } else if (strcmp(argv[i], "--small") == 0) {
            large_rows = 0;
        } else if (strcmp(argv[i], "--large") == 0) {
            small_rows = 0;
        } else if (strcmp(argv[i], "--autoencoder") == 0) {
            ae_rows = 2;
        } else if (strcmp(argv[i], "--durable") == 0) {
            df_rows = 2;
        } else if (strcmp(argv[i], "--fold") == 0) {
            fold_rows = 1;
        } else if (strncmp(argv[i], "--snapshot-log=", 15) == 0) {
            g_snapshot_log = argv[i] + 15;
        } else if (strncmp(argv[i], "--db=", 5) == 0) {
            g_db = argv[i] + 5;
        } else {
            fprintf(stderr,
                    "usage: %s [--quick] [--small | --large | --autoencoder | --durable | "
                    "--fold] [--snapshot-log=PCT] [--db=URL]\n",
                    argv[0]);
            return 2;
        }
    }
    if (!small_rows && !large_rows) {
        fprintf(stderr, "%s: --small and --large exclude each other\n", argv[0]);
        return 2;
    }
    if (!getenv("OPENBLAS_NUM_THREADS"))
        openblas_set_num_threads(1);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    const char *bin = getenv("CURVD_BIN") ? getenv("CURVD_BIN") : "build/curvd";
    const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    double secs = quick ? 1.0 : SMALL_S, in[4];
    struct payload small, large;
    static struct row srow[NSROW], lrows[NLROW];
    g_ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    printf("bench_http: %s over loopback HTTP/1.1 vs in-process libcurv %s. The daemon and\n"
           "this load generator share the same %ld online CPUs: the figures are what both get.\n",
           bin, curv_version(), g_ncpu);
    fflush(stdout);
    if (df_rows == 2 || ae_rows == 2 || fold_rows) { /* --durable, --autoencoder, --fold alone */
        snprintf(g_tmp, sizeof g_tmp, "%s/bench_http.XXXXXX", tmpdir);
        if (!mkdtemp(g_tmp))
            fail("mkdtemp %s: %s", g_tmp, strerror(errno));
        (fold_rows ? run_fold : df_rows == 2 ? run_durable : run_autoencoder)(bin, quick);
        remove_tmp(NULL);
        return 0;
    }
    payload_init(&small, 1, SMALL_D);
    payload_init(&large, LARGE_BLOCKS, quick ? LARGE_BN / 10 : LARGE_BN);
    inproc_pair(&small, 5, 0.05, in);
    inproc_pair(&large, 3, 0, in + 2);
    snprintf(g_tmp, sizeof g_tmp, "%s/bench_http.XXXXXX", tmpdir);
    if (!mkdtemp(g_tmp))
        fail("mkdtemp %s: %s", g_tmp, strerror(errno));

    for (int di = 0; di < NDUR; di++) {
        char line[512], db[64];
        int port = daemon_start(bin, DURS[di], line, sizeof line);
        printf("daemon: %s\n", line);
        fflush(stdout);
        for (size_t i = 0; i < NSROW && small_rows; i++)
            if (SROWS[i].dur == di)
                run_small(port, &small, SROWS[i].enc, SROWS[i].clients, secs, &srow[i]);
        if (large_rows)
            run_large(port, &large, di, lrows);
        int st = daemon_stop();
        if (st != 0)
            fail("the daemon did not stop cleanly on SIGTERM (status %d)", st);
        for (int k = 0; k < 3; k++) { /* free the disk for the next daemon */
            snprintf(db, sizeof db, "%s.db%s", DURS[di], k == 0 ? "" : k == 1 ? "-wal" : "-shm");
            remove_tmp(db);
        }
    }
    remove_tmp(NULL);
    print_tables(srow, lrows, &large, secs);
    printf("\nratios (in-process, before the daemon started: d = %d step %.2f us, save %.1f us;\n"
           "d = %zu step %.1f ms, save %.1f ms)\n",
           SMALL_D, in[0] * 1e6, in[1] * 1e6, large.nblocks * large.bn, in[2] * 1e3, in[3] * 1e3);
    if (small_rows)
        print_small_ratios(srow, in);
    if (large_rows)
        print_large_ratios(lrows, in);
    if (small_rows && large_rows) {
        snprintf(g_tmp, sizeof g_tmp, "%s/bench_http.XXXXXX", tmpdir);
        if (!mkdtemp(g_tmp))
            fail("mkdtemp %s: %s", g_tmp, strerror(errno));
        run_autoencoder(bin, quick);
        run_durable_forms(bin);
        remove_tmp(NULL);
    }
    return 0; /* the payloads go with the process */
}
