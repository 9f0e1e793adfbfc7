/* SPDX-License-Identifier: MIT */
/*
 * curvctl - look after a curvd daemon's sessions from a shell: list, show,
 * export, import, delete, and watch a session's per-step report live.
 *
 *   curvctl [--url URL] [--token-file F] [--retry-budget S] [--json] <command> ...
 *
 * Global options may come before or after the command. Exit status 0, 1
 * when the command failed (the daemon's problem on stderr), 2 for usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvctl.h"

struct command {
    const char *name;
    int (*run)(struct ctl *ctl, int argc, char **argv);
    const char *usage; /* arguments, then one line per option */
    const char *summary;
};

static const struct command COMMANDS[] = {
    {"list", ctl_cmd_list,
     "[--page-size N]\n  --page-size N   sessions per request (1..1000, default 100)\n",
     "every session: id, optimizer, dim, step, updated_at, pending callback"},
    {"show", ctl_cmd_show, "ID\n", "one session: its config, layout and latest step's report"},
    {"export", ctl_cmd_export,
     "ID [-o FILE]\n  -o, --output FILE   write the blob there (default: stdout, never a "
     "terminal)\n",
     "the session's state blob (binary)"},
    {"import", ctl_cmd_import, "[FILE]\n  FILE   an exported blob; stdin when absent or '-'\n",
     "create a session from a state blob; prints the new id"},
    {"delete", ctl_cmd_delete, "ID...\n", "delete sessions, one line per id"},
    {"watch", ctl_cmd_watch,
     "ID [--interval S] [--count N] [--since STEP] [--fields A,B,...] [--format F]\n"
     "  --interval S      seconds between polls (default 1)\n"
     "  --count N         exit after N rows (default: run until Ctrl-C)\n"
     "  --since STEP      show steps after STEP (default: the step the session is at)\n"
     "  --fields A,B,...  the report's fields to show (default: every numeric field)\n"
     "  --format F        table (default), csv (step, at, callbacks, the fields, the\n"
     "                    time split in ms) or json (one history entry per line)\n",
     "one row per completed step (from the session's history) with its report's numbers"},
};
enum { N_COMMANDS = sizeof COMMANDS / sizeof COMMANDS[0] };

static void usage(FILE *out)
{
    fprintf(out, "usage: curvctl [--url URL] [--token-file F] [--retry-budget S] [--json] "
                 "<command> ...\n\n"
                 "  --url URL         the daemon (default $CURVD_URL, else http://127.0.0.1:8080)\n"
                 "  --token-file F    a file whose first token is the bearer token to send\n"
                 "                    (default $CURVD_TOKEN_FILE; the daemon's own file works)\n"
                 "  --retry-budget S  seconds to keep retrying a daemon that is down, restarting\n"
                 "                    or busy (default $CURVD_RETRY_BUDGET, else 30; 0: no retry)\n"
                 "  --json            print the daemon's JSON objects, for scripts\n\n"
                 "commands:\n");
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-8s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(out, "\n'curvctl <command> --help' describes one. Exit status: 0 done, 1 failed\n"
                 "(the daemon's refusal on stderr), 2 bad usage.\n");
}

static void command_usage(const struct command *c)
{
    const char *nl = strchr(c->usage, '\n');
    printf("usage: curvctl [global options] %s %.*s\n%s.\n", c->name, (int)(nl - c->usage),
           c->usage, c->summary);
    if (nl[1])
        printf("\n%s", nl + 1);
}

/* The first word of the first line that is neither blank nor a comment:
 * a token alone, or the daemon's "token tenant" lines. */
static char *read_token(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "curvctl: cannot read the token file %s: %s\n", path, strerror(errno));
        return NULL;
    }
    char line[1024], *tok = NULL;
    while (!tok && fgets(line, sizeof line, f)) {
        char *save = NULL, *w = strtok_r(line, " \t\r\n", &save);
        if (w && w[0] != '#')
            tok = strdup(w);
    }
    fclose(f);
    if (!tok)
        fprintf(stderr, "curvctl: the token file %s holds no token\n", path);
    return tok;
}

/* Does @arg name global option @name (as "--name" or "--name=...")? */
static const char *global_value(char **argv, int *i, int argc, const char *name, int *bad)
{
    const char *a = argv[*i];
    size_t n = strlen(name);
    if (strncmp(a, name, n) != 0 || (a[n] != '\0' && a[n] != '='))
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (*i + 1 >= argc) {
        *bad = 1;
        return NULL;
    }
    return argv[++*i];
}

int main(int argc, char **argv)
{
    const char *url = getenv("CURVD_URL"), *token_file = getenv("CURVD_TOKEN_FILE");
    const char *budget = getenv("CURVD_RETRY_BUDGET");
    int json = 0, help = 0, bad = 0, n = 0;
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    if (!rest)
        return CTL_FAILED;
    /* Global options anywhere before "--"; the rest is the command's. */
    for (int i = 1, options = 1; i < argc && !bad; i++) {
        const char *v;
        if (options && strcmp(argv[i], "--") == 0)
            options = 0;
        if (!options) {
            rest[n++] = argv[i];
        } else if ((v = global_value(argv, &i, argc, "--url", &bad)) != NULL) {
            url = v;
        } else if ((v = global_value(argv, &i, argc, "--token-file", &bad)) != NULL) {
            token_file = v;
        } else if ((v = global_value(argv, &i, argc, "--retry-budget", &bad)) != NULL) {
            budget = v;
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            help = 1;
        } else if (!bad) {
            rest[n++] = argv[i];
        }
    }
    const struct command *cmd = NULL;
    for (size_t k = 0; n > 0 && k < N_COMMANDS; k++)
        if (strcmp(rest[0], COMMANDS[k].name) == 0)
            cmd = &COMMANDS[k];
    int status = CTL_USAGE;
    char *end = NULL;
    double budget_s = budget ? strtod(budget, &end) : 30;
    if (bad) {
        fprintf(stderr, "curvctl: an option needs a value\n");
    } else if (budget && (end == budget || *end || !(budget_s >= 0 && budget_s <= 86400))) {
        fprintf(stderr, "curvctl: --retry-budget '%s' is not a number of seconds (0 to 86400)\n",
                budget);
    } else if (help && (cmd || n == 0)) {
        if (cmd)
            command_usage(cmd);
        else
            usage(stdout);
        status = CTL_OK;
    } else if (n == 0) {
        usage(stderr);
    } else if (!cmd) {
        fprintf(stderr, "curvctl: unknown command '%s' (curvctl --help lists them)\n", rest[0]);
    } else {
        char *token = token_file ? read_token(token_file) : NULL;
        struct ctl ctl = {.json = json};
        if (!token_file || token)
            ctl.client = curvc_client_new(url && *url ? url : "http://127.0.0.1:8080", token);
        if (ctl.client) {
            curvc_client_set_retry_budget(ctl.client, budget_s, 0);
            status = cmd->run(&ctl, n, rest);
        } else if (!token_file || token)
            fprintf(stderr, "curvctl: out of memory\n");
        status = ctl.client ? status : CTL_FAILED;
        curvc_client_free(ctl.client);
        free(token);
    }
    free(rest);
    return status;
}
