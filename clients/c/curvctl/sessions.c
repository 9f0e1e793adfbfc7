/* SPDX-License-Identifier: MIT */
/* curvctl list, show, export, import and delete. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "curvctl.h"

/* Open session @id for command @cmd; a malformed id is a usage error. */
static int open_session(struct ctl *ctl, const char *cmd, const char *id, curvc_session **s)
{
    curvc_error err;
    curvc_status st = curvc_session_open(ctl->client, id, s, &err);
    if (st == CURVC_E_INVALID)
        return ctl_usage_error(cmd, "%s", err.text);
    return st == CURVC_OK ? CTL_OK : ctl_fail(id, &err);
}

/* The callback awaited, shortened to "steps/N/callbacks/K", or "-". */
static const char *pending_text(const json_t *session)
{
    const char *url = json_string_value(json_object_get(session, "pending_callback"));
    const char *tail = url ? strstr(url, "/steps/") : NULL;
    return tail ? tail + 1 : url ? url : "-";
}

static int print_list(const json_t *sessions)
{
    static const char *const heads[] = {"id",   "optimizer",  "dim",
                                        "step", "updated_at", "pending_callback"};
    static const int right[] = {0, 0, 1, 1, 0, 0};
    struct ctl_table *t = ctl_table_new(6, heads, right);
    size_t i;
    json_t *s;
    int ok = t != NULL;
    json_array_foreach(sessions, i, s)
    {
        char dim[32], step[32];
        ctl_format_value(json_object_get(s, "dim"), dim, sizeof dim);
        ctl_format_value(json_object_get(s, "step"), step, sizeof step);
        const char *row[] = {json_string_value(json_object_get(s, "id")),
                             json_string_value(json_object_get(s, "optimizer")),
                             dim,
                             step,
                             json_string_value(json_object_get(s, "updated_at")),
                             pending_text(s)};
        ok = ok && ctl_table_add(t, row) == 0;
    }
    if (ok)
        ctl_table_print(t, stdout, "");
    ctl_table_free(t);
    if (!ok)
        fprintf(stderr, "curvctl: out of memory\n");
    return ok ? CTL_OK : CTL_FAILED;
}

int ctl_cmd_list(struct ctl *ctl, int argc, char **argv)
{
    const char *size_text = NULL;
    const struct ctl_opt opts[] = {{"page-size", 0, &size_text}};
    size_t npos;
    unsigned long size = 100;
    if (ctl_parse("list", argc - 1, argv + 1, opts, 1, NULL, &npos, 0) ||
        (size_text && ctl_uint("list", "--page-size", size_text, 1, 1000, &size)))
        return CTL_USAGE;
    json_t *all = json_array();
    char *token = NULL;
    int status = all ? CTL_OK : CTL_FAILED;
    do { /* every page, following next_page_token */
        char *text = NULL;
        curvc_error err;
        if (curvc_session_list(ctl->client, size, token, &text, &err) != CURVC_OK) {
            status = ctl_fail("list", &err);
            break;
        }
        json_t *page = ctl_parse_json(text, "list");
        free(text);
        const char *next = json_string_value(json_object_get(page, "next_page_token"));
        free(token);
        token = next ? strdup(next) : NULL;
        if (!page || json_array_extend(all, json_object_get(page, "sessions")) != 0 ||
            (next && !token))
            status = CTL_FAILED;
        json_decref(page);
    } while (status == CTL_OK && token);
    free(token);
    if (status == CTL_OK)
        status = ctl->json ? ctl_json_out(json_pack("{s:O}", "sessions", all)) : print_list(all);
    json_decref(all);
    return status;
}

/* The number of parameters of a layout block. */
static long long block_size(const json_t *b)
{
    const json_t *shape = json_object_get(b, "shape");
    long long inner = 1;
    for (size_t d = 1; d < json_array_size(shape); d++)
        inner *= json_integer_value(json_array_get(shape, d));
    long long rows = json_integer_value(json_array_get(shape, 0));
    return json_array_size(shape) == 1 ? rows
                                       : rows * (inner + json_is_true(json_object_get(b, "bias")));
}

static int print_layout(const json_t *layout)
{
    static const char *const heads[] = {"block", "kind", "shape", "bias", "params"};
    static const int right[] = {0, 0, 0, 0, 1};
    struct ctl_table *t = ctl_table_new(5, heads, right);
    int ok = t != NULL;
    size_t i;
    json_t *b;
    json_array_foreach(layout, i, b)
    {
        char shape[96] = "", params[32];
        const json_t *dims = json_object_get(b, "shape");
        for (size_t d = 0; d < json_array_size(dims); d++)
            snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%lld", d ? "x" : "",
                     (long long)json_integer_value(json_array_get(dims, d)));
        snprintf(params, sizeof params, "%lld", block_size(b));
        const char *row[] = {json_string_value(json_object_get(b, "name")),
                             json_string_value(json_object_get(b, "kind")), shape,
                             json_is_true(json_object_get(b, "bias")) ? "yes" : "no", params};
        ok = ok && ctl_table_add(t, row) == 0;
    }
    if (ok)
        ctl_table_print(t, stdout, "  ");
    ctl_table_free(t);
    return ok ? 0 : -1;
}

/* A two-column table of an object's members (scalars formatted). */
static int print_members(const json_t *obj, const char *key_head)
{
    const char *const heads[] = {key_head, "value"};
    struct ctl_table *t = ctl_table_new(2, heads, NULL);
    int ok = t != NULL;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        char text[128];
        ctl_format_value(v, text, sizeof text);
        const char *row[] = {key, text};
        ok = ok && ctl_table_add(t, row) == 0;
    }
    if (ok)
        ctl_table_print(t, stdout, "  ");
    ctl_table_free(t);
    return ok ? 0 : -1;
}

static int print_session(const json_t *s)
{
    static const char *const fields[] = {"id",   "optimizer",  "dim",
                                         "step", "created_at", "updated_at"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        char text[128];
        ctl_format_value(json_object_get(s, fields[i]), text, sizeof text);
        printf("%-18s%s\n", fields[i], text);
    }
    const json_t *pc = json_object_get(s, "pending_callback");
    printf("%-18s%s\n", "pending_callback", json_is_string(pc) ? json_string_value(pc) : "-");
    printf("\nconfig:\n");
    int rc = print_members(json_object_get(s, "config"), "key");
    printf("\nlayout:\n");
    rc = rc ? rc : print_layout(json_object_get(s, "layout"));
    const json_t *last = json_object_get(s, "last_step");
    if (json_is_object(last)) {
        printf("\nlast step %lld:\n", (long long)json_integer_value(json_object_get(last, "step")));
        rc = rc ? rc : print_members(json_object_get(last, "report"), "report");
    } else {
        printf("\nlast step: none reported yet\n");
    }
    if (rc)
        fprintf(stderr, "curvctl: out of memory\n");
    return rc ? CTL_FAILED : CTL_OK;
}

int ctl_cmd_show(struct ctl *ctl, int argc, char **argv)
{
    char *id[1];
    size_t npos;
    if (ctl_parse("show", argc - 1, argv + 1, NULL, 0, id, &npos, 1))
        return CTL_USAGE;
    if (npos != 1)
        return ctl_usage_error("show", "which session? (show ID)");
    curvc_session *s = NULL;
    int status = open_session(ctl, "show", id[0], &s);
    json_t *j = status == CTL_OK ? ctl_parse_json(curvc_session_info(s), id[0]) : NULL;
    if (status == CTL_OK)
        status = !j ? CTL_FAILED : ctl->json ? ctl_json_out(json_incref(j)) : print_session(j);
    json_decref(j);
    curvc_session_free(s);
    return status;
}

/* Write @len bytes to @path ("-" or NULL: stdout). */
static int write_blob(const char *path, const unsigned char *blob, size_t len)
{
    int to_stdout = !path || strcmp(path, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(path, "wb");
    int ok = f && fwrite(blob, 1, len, f) == len;
    ok = to_stdout ? ok && fflush(f) == 0 : f && fclose(f) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "curvctl: cannot write %s: %s\n", to_stdout ? "stdout" : path,
                strerror(errno));
        if (!to_stdout)
            remove(path); /* no half-written blob left behind */
    }
    return ok ? CTL_OK : CTL_FAILED;
}

int ctl_cmd_export(struct ctl *ctl, int argc, char **argv)
{
    const char *out = NULL;
    const struct ctl_opt opts[] = {{"output", 'o', &out}};
    char *id[1];
    size_t npos;
    if (ctl_parse("export", argc - 1, argv + 1, opts, 1, id, &npos, 1))
        return CTL_USAGE;
    if (npos != 1)
        return ctl_usage_error("export", "which session? (export ID [-o FILE])");
    if ((!out || strcmp(out, "-") == 0) && isatty(STDOUT_FILENO))
        return ctl_usage_error("export", "the state is binary and stdout is a terminal: use -o "
                                         "FILE or a redirection");
    curvc_session *s = NULL;
    unsigned char *blob = NULL;
    size_t len = 0;
    curvc_error err;
    int status = open_session(ctl, "export", id[0], &s);
    if (status == CTL_OK && curvc_session_export(s, &blob, &len, &err) != CURVC_OK)
        status = ctl_fail(id[0], &err);
    if (status == CTL_OK)
        status = write_blob(out, blob, len);
    int to_file = out && strcmp(out, "-") != 0;
    if (status == CTL_OK && to_file && ctl->json)
        status = ctl_json_out(
            json_pack("{s:s, s:s, s:I}", "id", id[0], "file", out, "bytes", (json_int_t)len));
    else if (status == CTL_OK && to_file)
        printf("%s: %zu bytes written to %s\n", id[0], len, out);
    free(blob);
    curvc_session_free(s);
    return status;
}

/* The whole of @f into a new buffer (*@len bytes); NULL on a read error. */
static unsigned char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap)
            break;
        unsigned char *bigger = cap < ((size_t)1 << 40) ? realloc(buf, 2 * cap) : NULL;
        if (!bigger)
            free(buf);
        buf = bigger;
        cap *= 2;
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    *len = n;
    return buf;
}

int ctl_cmd_import(struct ctl *ctl, int argc, char **argv)
{
    char *file[1] = {NULL};
    size_t npos;
    if (ctl_parse("import", argc - 1, argv + 1, NULL, 0, file, &npos, 1))
        return CTL_USAGE;
    int from_stdin = !file[0] || strcmp(file[0], "-") == 0;
    if (from_stdin && isatty(STDIN_FILENO))
        return ctl_usage_error("import", "give FILE, or the blob on stdin (stdin is a terminal)");
    const char *name = from_stdin ? "stdin" : file[0];
    FILE *f = from_stdin ? stdin : fopen(file[0], "rb");
    size_t len = 0;
    unsigned char *blob = f ? read_all(f, &len) : NULL;
    if (f && !from_stdin)
        fclose(f);
    if (!blob) {
        fprintf(stderr, "curvctl: cannot read %s: %s\n", name, strerror(errno));
        return CTL_FAILED;
    }
    int status = CTL_OK;
    curvc_session *s = NULL;
    curvc_error err;
    if (len == 0) {
        fprintf(stderr, "curvctl: %s is empty, not a state blob\n", name);
        status = CTL_FAILED;
    } else if (curvc_session_import(ctl->client, blob, len, &s, &err) != CURVC_OK) {
        status = ctl_fail(name, &err);
    } else if (ctl->json) {
        json_t *j = ctl_parse_json(curvc_session_info(s), "import");
        status = j ? ctl_json_out(j) : CTL_FAILED;
    } else {
        printf("%s\n", curvc_session_id(s));
    }
    curvc_session_free(s);
    free(blob);
    return status;
}

int ctl_cmd_delete(struct ctl *ctl, int argc, char **argv)
{
    char **ids = argv + 1; /* positionals are compacted in place */
    size_t n;
    if (ctl_parse("delete", argc - 1, argv + 1, NULL, 0, ids, &n, (size_t)argc - 1))
        return CTL_USAGE;
    if (n == 0)
        return ctl_usage_error("delete", "which sessions? (delete ID...)");
    json_t *done = json_array(), *failed = json_array();
    int status = done && failed ? CTL_OK : CTL_FAILED;
    for (size_t i = 0; i < n && done && failed; i++) {
        curvc_session *s = NULL;
        curvc_error err;
        curvc_status st = curvc_session_open(ctl->client, ids[i], &s, &err);
        if (st == CURVC_OK)
            st = curvc_session_delete(s, &err);
        curvc_session_free(s);
        if (st == CURVC_OK && ctl->json) {
            json_array_append_new(done, json_string(ids[i]));
        } else if (st == CURVC_OK) {
            printf("deleted %s\n", ids[i]);
        } else {
            status = ctl_fail(ids[i], &err);
            json_array_append_new(failed, json_pack("{s:s, s:i, s:s, s:s}", "id", ids[i], "status",
                                                    err.status, "reason", err.reason, "detail",
                                                    err.status ? err.detail : err.text));
        }
    }
    if (ctl->json && done && failed) {
        int out = ctl_json_out(json_pack("{s:O, s:O}", "deleted", done, "failed", failed));
        status = status == CTL_OK ? out : status;
    }
    json_decref(done);
    json_decref(failed);
    return status;
}
