/* SPDX-License-Identifier: MIT */
/*
 * curvctl against a live daemon (CURVD_URL; CURVCTL is the program;
 * CURVD_AUTH_URL and CURVD_AUTH_TOKENS a second daemon that wants a token
 * and its token file), all started by run-tests.sh. Each command in table
 * and --json form, the JSON checked against the daemon's own answers read
 * through libcurvc; export -> import round trips; errors and exit
 * statuses; watch following steps the test takes while it runs.
 */
#define _XOPEN_SOURCE 700 /* posix_openpt: a terminal for the refusals */

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "curvc.h"
#include "fixture.h"

/* ---- Running curvctl ------------------------------------------------------ */

struct run {
    int status; /* exit status, or 128 + the signal */
    char *out, *err;
    size_t out_len;
};

static void run_free(struct run *r)
{
    free(r->out);
    free(r->err);
    memset(r, 0, sizeof *r);
}

/* How the child's stdin and stdout are: pipes, one a terminal, or stdout
 * a full device. */
enum tty { NO_TTY, TTY_STDOUT, TTY_STDIN, FULL_STDOUT };

/* A child running curvctl @args, its stdin, stdout and stderr piped (one
 * of stdin and stdout a terminal when @tty says so). */
struct child {
    pid_t pid;
    int in, out, err, pty;
};

static void spawn(struct child *c, enum tty tty, const char *const *args)
{
    const char *prog = getenv("CURVCTL");
    assert_non_null(prog);
    int pin[2], pout[2], perr[2];
    assert_int_equal(pipe(pin), 0);
    assert_int_equal(pipe(pout), 0);
    assert_int_equal(pipe(perr), 0);
    int slave = -1;
    c->pty = -1;
    if (tty == TTY_STDOUT || tty == TTY_STDIN) {
        c->pty = posix_openpt(O_RDWR | O_NOCTTY);
        assert_true(c->pty >= 0 && grantpt(c->pty) == 0 && unlockpt(c->pty) == 0);
        slave = open(ptsname(c->pty), O_RDWR | O_NOCTTY);
        assert_true(slave >= 0);
    }
    const char *argv[32] = {prog};
    size_t n = 1;
    while (args[n - 1] && n < 31) {
        argv[n] = args[n - 1];
        n++;
    }
    c->pid = fork();
    assert_true(c->pid >= 0);
    if (c->pid == 0) {
        dup2(tty == TTY_STDIN ? slave : pin[0], 0);
        dup2(tty == TTY_STDOUT ? slave : pout[1], 1);
        dup2(perr[1], 2);
        for (int fd = 3; fd < 64; fd++)
            close(fd);
        if (tty == FULL_STDOUT) /* every write fails: ENOSPC */
            dup2(open("/dev/full", O_WRONLY), 1);
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    close(pin[0]), close(pout[1]), close(perr[1]);
    if (slave >= 0)
        close(slave);
    c->in = pin[1], c->out = pout[0], c->err = perr[0];
}

static int wait_child(struct child *c)
{
    int ws = 0;
    assert_int_equal(waitpid(c->pid, &ws, 0), c->pid);
    if (c->pty >= 0)
        close(c->pty);
    return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

static void append(char **buf, size_t *len, const char *data, size_t n)
{
    *buf = realloc(*buf, *len + n + 1);
    assert_non_null(*buf);
    memcpy(*buf + *len, data, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* Run curvctl to its end with @in (@in_len bytes, NULL: nothing) on stdin. */
static void run_in(struct run *r, const void *in, size_t in_len, enum tty tty,
                   const char *const *args)
{
    struct child c;
    spawn(&c, tty, args);
    size_t off = 0, err_len = 0;
    signal(SIGPIPE, SIG_IGN); /* a child that does not read its stdin */
    while (in && off < in_len) {
        ssize_t w = write(c.in, (const char *)in + off, in_len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    close(c.in);
    memset(r, 0, sizeof *r);
    append(&r->out, &r->out_len, "", 0);
    append(&r->err, &err_len, "", 0);
    struct pollfd fds[2] = {{c.out, POLLIN, 0}, {c.err, POLLIN, 0}};
    for (int open_fds = 2; open_fds > 0;) {
        assert_true(poll(fds, 2, -1) > 0);
        for (int k = 0; k < 2; k++) {
            char buf[4096];
            if (fds[k].fd < 0 || !(fds[k].revents & (POLLIN | POLLHUP)))
                continue;
            ssize_t got = read(fds[k].fd, buf, sizeof buf);
            if (got > 0) {
                append(k ? &r->err : &r->out, k ? &err_len : &r->out_len, buf, (size_t)got);
            } else {
                close(fds[k].fd);
                fds[k].fd = -1;
                open_fds--;
            }
        }
    }
    r->status = wait_child(&c);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define RUN(r, ...) run_in((r), NULL, 0, NO_TTY, ARGS(__VA_ARGS__))

/* Run and expect @status; on a mismatch say what curvctl printed. */
static void expect_status(const struct run *r, int status)
{
    if (r->status != status)
        fail_msg("exit status %d, want %d\nstdout: %s\nstderr: %s", r->status, status, r->out,
                 r->err);
}

/* ---- The daemon, through libcurvc ----------------------------------------------- */

/* The daemon's history of @s: its "steps" array (at most 1000). */
static json_t *daemon_steps(curvc_session *s)
{
    char *text = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_steps_json(s, 0, 1000, &text, &err), CURVC_OK);
    json_t *j = json_loads(text, 0, NULL);
    free(text);
    json_t *steps = json_incref(json_object_get(j, "steps"));
    json_decref(j);
    assert_non_null(steps);
    return steps;
}

/* One step with a gradient that follows from @seed; the step's report. */
static json_t *step(curvc_session *s, unsigned seed)
{
    double g[DIM], u[DIM];
    for (int i = 0; i < DIM; i++) {
        seed = seed * 1664525u + 1013904223u;
        g[i] = (double)(seed >> 8) / (1 << 23) - 1.0;
    }
    curvc_error err;
    curvc_step_in in = {.grad = g};
    if (curvc_step(s, &in, CURVC_BINARY, NULL, NULL, u, &err) != CURVC_OK)
        fail_msg("step: %s", err.text);
    json_t *report = json_loads(curvc_session_report(s), 0, NULL);
    assert_true(json_is_object(report));
    return report;
}

/* The daemon's own GET of session @id (NULL when it answers 404). */
static json_t *daemon_get(curvc_client *c, const char *id)
{
    curvc_session *s = NULL;
    curvc_error err;
    char *text = NULL;
    if (curvc_session_open(c, id, &s, &err) != CURVC_OK) {
        assert_int_equal(err.status, 404);
        return NULL;
    }
    assert_int_equal(curvc_session_get_json(s, &text, &err), CURVC_OK);
    json_t *j = json_loads(text, 0, NULL);
    assert_non_null(j);
    free(text);
    curvc_session_free(s);
    return j;
}

/* Every session, all pages, as the daemon lists them. */
static json_t *daemon_list(curvc_client *c)
{
    char *text = NULL;
    curvc_error err;
    assert_int_equal(curvc_session_list(c, 1000, NULL, &text, &err), CURVC_OK);
    json_t *page = json_loads(text, 0, NULL);
    free(text);
    assert_null(json_object_get(page, "next_page_token"));
    json_t *all = json_incref(json_object_get(page, "sessions"));
    json_decref(page);
    return all;
}

static unsigned char *daemon_export(curvc_session *s, size_t *len)
{
    unsigned char *blob = NULL;
    curvc_error err;
    if (curvc_session_export(s, &blob, len, &err) != CURVC_OK)
        fail_msg("export: %s", err.text);
    return blob;
}

static json_t *parse(const char *text)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j)
        fail_msg("curvctl printed no JSON document (%s): %s", je.text, text);
    return j;
}

static void expect_json_equal(const json_t *got, const json_t *want)
{
    if (!json_equal(got, want)) {
        char *g = json_dumps(got, JSON_COMPACT), *w = json_dumps(want, JSON_COMPACT);
        fail_msg("curvctl: %s\ndaemon: %s", g, w);
    }
}

/* The line of @text that starts with @prefix, as whitespace-separated
 * words into @words (at most @cap); returns their number (0: no line). */
static size_t line_words(const char *text, const char *prefix, char words[][96], size_t cap)
{
    const char *p = text;
    size_t plen = strlen(prefix);
    while (p && strncmp(p, prefix, plen) != 0)
        p = (p = strchr(p, '\n')) ? p + 1 : NULL;
    if (!p)
        return 0;
    size_t n = 0;
    while (*p && *p != '\n' && n < cap) {
        while (*p == ' ')
            p++;
        size_t k = strcspn(p, " \n");
        if (!k)
            break;
        snprintf(words[n++], 96, "%.*s", (int)k, p);
        p += k;
    }
    return n;
}

/* A figure as curvctl prints it (%.6g) against the exact value. */
static void expect_figure(const char *text, const json_t *v, const char *what)
{
    double want = json_number_value(v), got = strtod(text, NULL);
    if (!json_is_number(v) || fabs(got - want) > 1e-5 * fabs(want))
        fail_msg("%s: curvctl %s, daemon %.17g", what, text, want);
}

/* ---- list -------------------------------------------------------------------- */

static int refuse(void *user, const curvc_request *req, double *answer)
{
    (void)user, (void)req, (void)answer;
    return -1;
}

static void test_list(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *a = create(c, "adagrad_bma", "{\"lr\": 0.1}"), *b = create(c, "sgd", NULL);
    curvc_session *h = NULL;
    curvc_error err;
    const curvc_block vec[] = {{"w", "vector", {3}, 0}};
    assert_int_equal(curvc_session_create(c, "hf", vec, 1, "{\"precond\": \"none\"}", &h, &err),
                     CURVC_OK);
    json_decref(step(a, 1));
    json_decref(step(a, 2));
    /* HF's first callback, left unanswered: the session waits for it. */
    curvc_step_in in = {.grad = (double[]){1, 2, 3}, .loss = 1, .has_loss = 1};
    double u[3];
    assert_int_equal(curvc_step(h, &in, CURVC_JSON, refuse, NULL, u, &err), CURVC_E_CALLBACK);

    struct run r;
    RUN(&r, "--json", "list", "--page-size", "2"); /* several pages */
    expect_status(&r, 0);
    json_t *got = parse(r.out), *want = daemon_list(c);
    assert_true(json_array_size(want) >= 3);
    expect_json_equal(json_object_get(got, "sessions"), want);
    json_decref(got);
    run_free(&r);

    RUN(&r, "list", "--page-size=2");
    expect_status(&r, 0);
    char words[8][96];
    assert_int_equal(line_words(r.out, "id ", words, 8), 6);
    assert_string_equal(words[5], "pending_callback");
    size_t i;
    json_t *s;
    json_array_foreach(want, i, s)
    {
        const char *id = json_string_value(json_object_get(s, "id"));
        assert_int_equal(line_words(r.out, id, words, 8), 6);
        assert_string_equal(words[1], json_string_value(json_object_get(s, "optimizer")));
        assert_int_equal(atoll(words[2]), json_integer_value(json_object_get(s, "dim")));
        assert_int_equal(atoll(words[3]), json_integer_value(json_object_get(s, "step")));
        assert_string_equal(words[4], json_string_value(json_object_get(s, "updated_at")));
        const char *pc = json_string_value(json_object_get(s, "pending_callback"));
        if (strcmp(id, curvc_session_id(h)) == 0) {
            assert_non_null(pc);
            assert_non_null(strstr(pc, words[5]));
            assert_true(strncmp(words[5], "steps/1/callbacks/", 18) == 0);
        } else {
            assert_string_equal(words[5], "-");
        }
    }
    run_free(&r);
    json_decref(want);

    const char *const *bad[] = {ARGS("list", "--page-size", "0"), ARGS("list", "--page-size"),
                                ARGS("list", "extra"), ARGS("list", "--bogus"),
                                ARGS("list", "--json=1")};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        run_in(&r, NULL, 0, NO_TTY, bad[k]);
        expect_status(&r, 2);
        assert_string_equal(r.out, "");
        assert_non_null(strstr(r.err, "curvctl"));
        run_free(&r);
    }
    curvc_session_free(a);
    curvc_session_free(b);
    curvc_session_free(h);
    curvc_client_free(c);
}

/* ---- show ------------------------------------------------------------------ */

static void test_show(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = create(c, "adagrad_bma", "{\"lr\": 0.25}");
    const char *id = curvc_session_id(s);
    struct run r;
    RUN(&r, "show", id);
    expect_status(&r, 0);
    assert_non_null(strstr(r.out, "last step: none reported yet"));
    run_free(&r);
    json_decref(step(s, 3));
    json_t *report = step(s, 4);

    RUN(&r, "show", id, "--json");
    expect_status(&r, 0);
    json_t *got = parse(r.out), *want = daemon_get(c, id);
    expect_json_equal(got, want);
    expect_json_equal(json_object_get(json_object_get(got, "last_step"), "report"), report);
    json_decref(got);
    run_free(&r);

    RUN(&r, "show", id);
    expect_status(&r, 0);
    char words[8][96], line[128];
    assert_int_equal(line_words(r.out, "optimizer ", words, 8), 2);
    assert_string_equal(words[1], "adagrad_bma");
    assert_int_equal(line_words(r.out, "step ", words, 8), 2);
    assert_string_equal(words[1], "2");
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(want, "config"), key, v) /* every key, its value */
    {
        snprintf(line, sizeof line, "  %s ", key);
        size_t n = line_words(r.out, line, words, 8);
        assert_true(n >= 1);
        if (json_is_number(v))
            expect_figure(words[1], v, key);
        else if (json_is_string(v) && *json_string_value(v))
            assert_string_equal(words[1], json_string_value(v));
    }
    assert_int_equal(line_words(r.out, "  fc ", words, 8), 5);
    assert_string_equal(words[1], "dense");
    assert_string_equal(words[2], "2x3");
    assert_string_equal(words[3], "yes");
    assert_string_equal(words[4], "8");
    assert_int_equal(line_words(r.out, "  gain ", words, 8), 5);
    assert_string_equal(words[4], "2");
    assert_non_null(strstr(r.out, "\nlast step 2:\n"));
    json_object_foreach(report, key, v)
    {
        snprintf(line, sizeof line, "  %s ", key);
        assert_int_equal(line_words(r.out, line, words, 8), 2);
        if (json_is_number(v))
            expect_figure(words[1], v, key);
        else
            assert_string_equal(words[1], json_string_value(v));
    }
    run_free(&r);

    run_in(&r, NULL, 0, FULL_STDOUT, ARGS("show", id, "--json"));
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "cannot write the output"));
    run_free(&r);
    RUN(&r, "show");
    expect_status(&r, 2);
    run_free(&r);
    RUN(&r, "show", "a/b");
    expect_status(&r, 2);
    assert_non_null(strstr(r.err, "not a session id"));
    run_free(&r);
    RUN(&r, "show", "a", "b");
    expect_status(&r, 2);
    run_free(&r);
    json_decref(report);
    json_decref(want);
    curvc_session_free(s);
    curvc_client_free(c);
}

/* ---- export and import ----------------------------------------------------------- */

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *buf = malloc(1 << 20);
    *len = fread(buf, 1, 1 << 20, f);
    fclose(f);
    return buf;
}

static void test_export_import(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = create(c, "adagrad_full", "{\"lr\": 0.5}");
    json_decref(step(s, 5));
    json_decref(step(s, 6));
    const char *id = curvc_session_id(s);
    size_t len, n;
    unsigned char *blob = daemon_export(s, &len);
    char dir[] = "/tmp/curvctl-test-XXXXXX", file[64], damaged[64];
    assert_non_null(mkdtemp(dir));
    snprintf(file, sizeof file, "%s/state", dir);
    snprintf(damaged, sizeof damaged, "%s/damaged", dir);

    struct run r;
    RUN(&r, "export", id, "-o", file);
    expect_status(&r, 0);
    assert_non_null(strstr(r.out, "bytes written to"));
    unsigned char *got = read_file(file, &n);
    assert_int_equal(n, len);
    assert_memory_equal(got, blob, len);
    free(got);
    run_free(&r);
    RUN(&r, "--json", "export", id, "--output", file);
    expect_status(&r, 0);
    json_t *j = parse(r.out);
    assert_string_equal(json_string_value(json_object_get(j, "id")), id);
    assert_int_equal(json_integer_value(json_object_get(j, "bytes")), len);
    json_decref(j);
    run_free(&r);
    RUN(&r, "export", id); /* stdout is a pipe here */
    expect_status(&r, 0);
    assert_int_equal(r.out_len, len);
    assert_memory_equal(r.out, blob, len);
    run_free(&r);

    /* Import from a file and from stdin: new sessions whose state is the
     * blob byte for byte (nothing in it names the session), at its step,
     * with no step reported yet. */
    RUN(&r, "import", file);
    expect_status(&r, 0);
    char new_id[64];
    assert_int_equal(sscanf(r.out, "%63s", new_id), 1);
    assert_string_not_equal(new_id, id);
    run_free(&r);
    run_in(&r, blob, len, NO_TTY, ARGS("--json", "import"));
    expect_status(&r, 0);
    j = parse(r.out);
    const char *ids[2] = {new_id, json_string_value(json_object_get(j, "id"))};
    for (int k = 0; k < 2; k++) {
        json_t *want = daemon_get(c, ids[k]);
        if (k == 1)
            expect_json_equal(j, want);
        assert_int_equal(json_integer_value(json_object_get(want, "step")), 2);
        assert_true(json_is_null(json_object_get(want, "last_step")));
        json_decref(want);
        curvc_session *t = NULL;
        curvc_error err;
        assert_int_equal(curvc_session_open(c, ids[k], &t, &err), CURVC_OK);
        unsigned char *again = daemon_export(t, &n);
        assert_int_equal(n, len);
        assert_memory_equal(again, blob, len);
        free(again);
        curvc_session_free(t);
    }
    json_decref(j);
    run_free(&r);

    /* Refusals. */
    blob[len / 2] ^= 0xff;
    FILE *f = fopen(damaged, "wb");
    fwrite(blob, 1, len, f);
    fclose(f);
    RUN(&r, "import", damaged);
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "400 INVALID_STATE"));
    run_free(&r);
    run_in(&r, "", 0, NO_TTY, ARGS("import", "-"));
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "empty"));
    run_free(&r);
    RUN(&r, "import", "/nonexistent/state");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "cannot read"));
    run_free(&r);
    RUN(&r, "export", id, "-o", "/nonexistent/state");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "cannot write"));
    run_free(&r);
    RUN(&r, "export", "00000000000000000000000000000000", "-o", file);
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "404 NOT_FOUND"));
    run_free(&r);
    run_in(&r, NULL, 0, TTY_STDOUT, ARGS("export", id));
    expect_status(&r, 2);
    assert_non_null(strstr(r.err, "terminal"));
    run_free(&r);
    run_in(&r, NULL, 0, TTY_STDIN, ARGS("import"));
    expect_status(&r, 2);
    assert_non_null(strstr(r.err, "terminal"));
    run_free(&r);
    RUN(&r, "import", "a", "b");
    expect_status(&r, 2);
    run_free(&r);
    RUN(&r, "export", "-o", file);
    expect_status(&r, 2);
    run_free(&r);
    unlink(file), unlink(damaged), rmdir(dir);
    free(blob);
    curvc_session_free(s);
    curvc_client_free(c);
}

/* ---- delete ------------------------------------------------------------------ */

static void test_delete(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s[3] = {create(c, "sgd", NULL), create(c, "sgd", NULL), create(c, "sgd", NULL)};
    const char *a = curvc_session_id(s[0]), *b = curvc_session_id(s[1]);
    const char *d = curvc_session_id(s[2]), *gone = "00000000000000000000000000000000";
    struct run r;
    RUN(&r, "delete", a, b);
    expect_status(&r, 0);
    char want[256];
    snprintf(want, sizeof want, "deleted %s\ndeleted %s\n", a, b);
    assert_string_equal(r.out, want);
    run_free(&r);
    assert_null(daemon_get(c, a));
    RUN(&r, "show", a);
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "404 NOT_FOUND"));
    assert_string_equal(r.out, "");
    run_free(&r);
    RUN(&r, "delete", a);
    expect_status(&r, 1);
    run_free(&r);
    /* One document for the whole command; the failure is exit 1. */
    RUN(&r, "--json", "delete", d, gone);
    expect_status(&r, 1);
    json_t *j = parse(r.out);
    json_t *ok = json_object_get(j, "deleted"), *failed = json_object_get(j, "failed");
    assert_int_equal(json_array_size(ok), 1);
    assert_string_equal(json_string_value(json_array_get(ok, 0)), d);
    assert_int_equal(json_array_size(failed), 1);
    json_t *f = json_array_get(failed, 0);
    assert_string_equal(json_string_value(json_object_get(f, "id")), gone);
    assert_int_equal(json_integer_value(json_object_get(f, "status")), 404);
    assert_string_equal(json_string_value(json_object_get(f, "reason")), "NOT_FOUND");
    json_decref(j);
    run_free(&r);
    assert_null(daemon_get(c, d));
    RUN(&r, "delete");
    expect_status(&r, 2);
    run_free(&r);
    for (int k = 0; k < 3; k++)
        curvc_session_free(s[k]);
    curvc_client_free(c);
}

/* ---- watch -------------------------------------------------------------------- */

/* The next line of @fd (without its newline) into @buf; fails at EOF. */
static void read_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    for (;;) {
        char ch;
        ssize_t got = read(fd, &ch, 1);
        if (got <= 0)
            fail_msg("curvctl ended its output early (after \"%.*s\")", (int)n, buf);
        if (ch == '\n')
            break;
        if (n + 1 < cap)
            buf[n++] = ch;
    }
    buf[n] = '\0';
}

/* Start watch @args and wait for it to say it watches. */
static void start_watch(struct child *c, const char *const *args)
{
    spawn(c, NO_TTY, args);
    close(c->in);
    char line[256];
    read_line(c->err, line, sizeof line);
    assert_non_null(strstr(line, "watching"));
}

static void finish(struct child *c, int status)
{
    assert_int_equal(wait_child(c), status);
    close(c->out), close(c->err);
}

static void test_watch(void **state)
{
    (void)state;
    curvc_client *c = client();
    curvc_session *s = create(c, "adagrad_bma", NULL);
    const char *id = curvc_session_id(s);
    json_decref(step(s, 10)); /* before watch: not shown */

    /* Table rows for steps taken while it runs, one per step. */
    struct child w;
    start_watch(&w, ARGS("watch", id, "--interval", "0.02", "--count", "3"));
    char line[1024], heads[16][96], cells[16][96];
    for (unsigned k = 0; k < 3; k++) {
        json_t *report = step(s, 11 + k);
        if (k == 0)
            read_line(w.out, line, sizeof line);
        size_t nh = line_words(line, "", heads, 16);
        if (k == 0)
            assert_true(nh >= 3 && strcmp(heads[0], "step") == 0);
        char row[1024];
        read_line(w.out, row, sizeof row);
        assert_int_equal(line_words(row, "", cells, 16), nh);
        assert_int_equal(atoi(cells[0]), 2 + k);
        for (size_t i = 1; i < nh; i++)
            expect_figure(cells[i], json_object_get(report, heads[i]), heads[i]);
        json_decref(report);
    }
    finish(&w, 0);

    /* --json: one line per row, the daemon's last_step with "skipped". */
    start_watch(&w, ARGS("--json", "watch", id, "--interval", "0.02", "--count", "2"));
    for (int k = 0; k < 2; k++) {
        json_t *report = step(s, 20 + (unsigned)k);
        read_line(w.out, line, sizeof line);
        json_t *row = parse(line);
        assert_int_equal(json_integer_value(json_object_get(row, "step")), 5 + k);
        assert_int_equal(json_integer_value(json_object_get(row, "skipped")), 0);
        expect_json_equal(json_object_get(row, "report"), report);
        json_decref(row);
        json_decref(report);
    }
    finish(&w, 0);

    /* Every step the daemon keeps is shown, however old: the history. */
    struct run r;
    RUN(&r, "--json", "watch", id, "--since", "2", "--count", "3");
    expect_status(&r, 0);
    json_t *hist = daemon_steps(s);
    const char *at = r.out;
    for (int k = 0; k < 3; k++) {
        const char *nl = strchr(at, '\n');
        assert_non_null(nl);
        char one[4096];
        snprintf(one, sizeof one, "%.*s", (int)(nl - at), at);
        json_t *row = parse(one);
        assert_int_equal(json_integer_value(json_object_get(row, "skipped")), 0);
        json_object_del(row, "skipped");
        expect_json_equal(row, json_array_get(hist, 2 + (size_t)k)); /* steps 3, 4, 5 */
        json_decref(row);
        at = nl + 1;
    }
    run_free(&r);

    /* CSV: a header, then one row per step with the figures in full. */
    RUN(&r, "watch", id, "--since", "0", "--count", "6", "--format", "csv", "--fields",
        "update_norm,nope");
    expect_status(&r, 0);
    at = r.out;
    const char *nl = strchr(at, '\n');
    assert_non_null(nl);
    assert_memory_equal(at,
                        "step,at,callbacks,update_norm,nope,decode_ms,step_ms,encode_ms,save_ms\n",
                        (size_t)(nl - at + 1));
    for (size_t k = 0; k < 6; k++) {
        at = nl + 1;
        nl = strchr(at, '\n');
        assert_non_null(nl);
        json_t *e = json_array_get(hist, k);
        char want[160];
        snprintf(want, sizeof want, "%zu,%s,0,", k + 1,
                 json_string_value(json_object_get(e, "at")));
        assert_memory_equal(at, want, strlen(want));
        char *end = NULL;
        double un = strtod(at + strlen(want), &end);
        assert_true(un ==
                    json_real_value(json_object_get(json_object_get(e, "report"), "update_norm")));
        assert_memory_equal(end, ",,", 2); /* "nope" is empty */
    }
    assert_string_equal(nl + 1, "");
    run_free(&r);
    json_decref(hist);

    /* Steps the daemon no longer keeps are said to be missing, never
     * invented: with a history of 2 steps, 3-5 are gone after step 7. */
    curvc_error err;
    assert_int_equal(curvc_session_set_history(s, 2, &err), CURVC_OK);
    json_decref(step(s, 30));
    RUN(&r, "watch", id, "--since", "2", "--count", "1", "--fields", "update_norm,nope");
    expect_status(&r, 0);
    assert_non_null(strstr(r.out, "(steps 3-5 no longer kept by the daemon"));
    assert_int_equal(line_words(r.out, "    step ", heads, 16), 3);
    assert_string_equal(heads[2], "nope");
    assert_non_null(strstr(r.out, "\n       6 "));
    run_free(&r);
    RUN(&r, "--json", "watch", id, "--since", "2", "--count", "1");
    expect_status(&r, 0);
    json_t *row = parse(r.out);
    assert_int_equal(json_integer_value(json_object_get(row, "step")), 6);
    assert_int_equal(json_integer_value(json_object_get(row, "skipped")), 3);
    assert_non_null(strstr(r.err, "(steps 3-5 no longer kept"));
    json_decref(row);
    run_free(&r);
    /* A session that keeps none: every step is said to be missing. */
    assert_int_equal(curvc_session_set_history(s, 0, &err), CURVC_OK);
    start_watch(&w, ARGS("watch", id, "--interval", "0.02"));
    json_decref(step(s, 31));
    read_line(w.out, line, sizeof line);
    assert_non_null(strstr(line, "(step 8 no longer kept"));
    kill(w.pid, SIGINT);
    finish(&w, 0);
    assert_int_equal(curvc_session_set_history(s, -1, &err), CURVC_OK);
    json_decref(step(s, 32)); /* step 9, kept */

    /* Rows that cannot be written end it with exit 1, in both forms. */
    for (int json = 0; json < 2; json++) {
        run_in(&r, NULL, 0, FULL_STDOUT,
               json ? ARGS("--json", "watch", id, "--since", "0")
                    : ARGS("watch", id, "--since", "0"));
        expect_status(&r, 1);
        assert_non_null(strstr(r.err, "cannot write the output"));
        run_free(&r);
    }

    /* Ctrl-C ends it cleanly; a session deleted under it is an error. */
    start_watch(&w, ARGS("watch", id, "--interval", "0.02"));
    kill(w.pid, SIGINT);
    finish(&w, 0);
    start_watch(&w, ARGS("watch", id, "--interval", "0.02"));
    assert_int_equal(curvc_session_delete(s, &err), CURVC_OK);
    finish(&w, 1);

    const char *const *bad[] = {ARGS("watch"),
                                ARGS("watch", id, "--count", "0"),
                                ARGS("watch", id, "--interval", "x"),
                                ARGS("watch", id, "--interval", "0"),
                                ARGS("watch", id, "--since", "-1"),
                                ARGS("watch", id, "--fields", ","),
                                ARGS("watch", id, "--format", "xml"),
                                ARGS("watch", "no/such")};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        run_in(&r, NULL, 0, NO_TTY, bad[k]);
        expect_status(&r, 2);
        run_free(&r);
    }
    RUN(&r, "watch", id);
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "404 NOT_FOUND"));
    run_free(&r);
    curvc_session_free(s);
    curvc_client_free(c);
}

/* ---- global options -------------------------------------------------------------- */

static void test_global_options(void **state)
{
    (void)state;
    struct run r;
    RUN(&r, "--help");
    expect_status(&r, 0);
    assert_non_null(strstr(r.out, "usage: curvctl"));
    run_free(&r);
    const char *cmds[] = {"list", "show", "export", "import", "delete", "watch"};
    for (size_t k = 0; k < 6; k++) {
        RUN(&r, cmds[k], "--help");
        expect_status(&r, 0);
        assert_non_null(strstr(r.out, cmds[k]));
        run_free(&r);
    }
    run_in(&r, NULL, 0, NO_TTY, (const char *const[]){NULL});
    expect_status(&r, 2);
    run_free(&r);
    RUN(&r, "bogus");
    expect_status(&r, 2);
    assert_non_null(strstr(r.err, "unknown command"));
    run_free(&r);
    RUN(&r, "list", "--url");
    expect_status(&r, 2);
    run_free(&r);
    /* Nothing listening: retried for the budget given, then the error names
     * the host (the default budget, 30 s, is libcurvc's: test_curvc). */
    RUN(&r, "--url", "http://127.0.0.1:9", "--retry-budget", "0.2", "list");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "cannot reach 127.0.0.1:9"));
    assert_null(strstr(r.err, "after 1 tries"));
    run_free(&r);
    RUN(&r, "--url", "http://127.0.0.1:9", "--retry-budget", "0", "list");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "after 1 tries"));
    run_free(&r);
    RUN(&r, "--retry-budget", "soon", "list");
    expect_status(&r, 2);
    assert_non_null(strstr(r.err, "--retry-budget 'soon'"));
    run_free(&r);

    /* A daemon that wants a token: its own token file serves (first token). */
    const char *auth = getenv("CURVD_AUTH_URL"), *tokens = getenv("CURVD_AUTH_TOKENS");
    assert_non_null(auth);
    assert_non_null(tokens);
    RUN(&r, "--url", auth, "list");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "401"));
    run_free(&r);
    RUN(&r, "--url", auth, "--token-file", tokens, "--json", "list");
    expect_status(&r, 0);
    json_t *j = parse(r.out);
    assert_true(json_is_array(json_object_get(j, "sessions")));
    json_decref(j);
    run_free(&r);
    char *url = strdup(getenv("CURVD_URL"));
    setenv("CURVD_TOKEN_FILE", tokens, 1);
    setenv("CURVD_URL", auth, 1);
    RUN(&r, "list");
    expect_status(&r, 0);
    run_free(&r);
    setenv("CURVD_URL", url, 1);
    unsetenv("CURVD_TOKEN_FILE");
    free(url);
    RUN(&r, "--token-file", "/nonexistent", "list");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "cannot read the token file"));
    run_free(&r);
    RUN(&r, "--token-file", "/dev/null", "list");
    expect_status(&r, 1);
    assert_non_null(strstr(r.err, "holds no token"));
    run_free(&r);
}

int main(void)
{
    alarm(300); /* a watch that never ends must not hang the suite */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list),          cmocka_unit_test(test_show),
        cmocka_unit_test(test_export_import), cmocka_unit_test(test_delete),
        cmocka_unit_test(test_watch),         cmocka_unit_test(test_global_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
