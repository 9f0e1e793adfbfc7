/* SPDX-License-Identifier: MIT */
/*
 * The problem table (server/http/errors.h): every reason the daemon can send is
 * a row (replies name rows, never a status or a reason text of their own),
 * api/openapi.yaml documents each with its statuses, and the Python and C
 * clients map each. libcurv's statuses map as they always have.
 */
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/errors.h"
#include "testutil.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s (run from the repository root)", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

/* The spec's reason enum names every reason, and its description has a
 * line "- `REASON` (statuses): ..." naming each status it is sent with. */
static void test_spec_documents_every_reason(void **state)
{
    (void)state;
    char *spec = slurp("api/openapi.yaml");
    const char *en = strstr(spec, "          enum: [MALFORMED_JSON");
    assert_non_null(en);
    const char *en_end = strchr(en, ']');
    for (int r = 0; r < CURVD_R_COUNT; r++) {
        const char *name = curvd_reason_name((enum curvd_reason)r);
        char word[80], line[96], status[8];
        snprintf(word, sizeof word, "%s", name);
        size_t k = strlen(word);
        int in_enum = 0;
        for (const char *p = en; (p = strstr(p, word)) && p < en_end; p += k)
            if ((p[-1] == '[' || p[-1] == ' ') && (p[k] == ',' || p[k] == ']'))
                in_enum = 1;
        if (!in_enum)
            fail_msg("reason %s is not in api/openapi.yaml's Problem.reason enum", name);
        snprintf(line, sizeof line, "- `%s` (", name);
        const char *doc = strstr(spec, line);
        if (!doc)
            fail_msg("reason %s has no documentation line in api/openapi.yaml", name);
        const char *close = strchr(doc, ')');
        snprintf(status, sizeof status, "%d", curvd_reason_status((enum curvd_reason)r));
        const char *at = strstr(doc, status);
        if (!at || at > close)
            fail_msg("api/openapi.yaml documents %s without its status %s", name, status);
    }
    free(spec);
}

/* The Python client picks its exception by reason and the C client its
 * retries: each names every reason. */
static void test_clients_map_every_reason(void **state)
{
    (void)state;
    char *py = slurp("clients/python/curvd/errors.py");
    char *c = slurp("clients/c/src/problems.c");
    for (int r = 0; r < CURVD_R_COUNT; r++) {
        const char *name = curvd_reason_name((enum curvd_reason)r);
        char key[96];
        snprintf(key, sizeof key, "    \"%s\": ", name);
        if (!strstr(py, key))
            fail_msg("clients/python/curvd/errors.py's _BY_REASON lacks %s", name);
        snprintf(key, sizeof key, "{\"%s\", ", name);
        if (!strstr(c, key))
            fail_msg("clients/c/src/problems.c lacks %s", name);
    }
    free(py);
    free(c);
}

/* In the daemon's sources, a problem names a row: no call passes a status
 * number or a reason text, and no reason is spelt as a string outside
 * errors.h. */
static void test_daemon_sends_only_rows(void **state)
{
    (void)state;
    glob_t g;
    assert_int_equal(glob("server/*.c", 0, NULL, &g), 0);
    glob("server/*/*.c", GLOB_APPEND, NULL, &g);
    for (size_t i = 0; i < g.gl_pathc; i++) {
        char *s = slurp(g.gl_pathv[i]);
        for (const char *p = s; (p = strstr(p, "curvd_reply_problem(")); p++) {
            const char *arg = p;
            for (int commas = 0; commas < 2 && *arg; arg++)
                commas += *arg == ',';
            while (*arg == ' ' || *arg == '\n')
                arg++;
            if ((*arg >= '0' && *arg <= '9') || *arg == '"')
                fail_msg("%s: curvd_reply_problem with a status or text, not a row: %.40s",
                         g.gl_pathv[i], arg);
        }
        for (int r = 0; r < CURVD_R_COUNT; r++) {
            char lit[80];
            snprintf(lit, sizeof lit, "\"%s\"", curvd_reason_name((enum curvd_reason)r));
            if (strstr(s, lit))
                fail_msg("%s spells the reason %s: name its row of errors.h", g.gl_pathv[i], lit);
        }
        free(s);
    }
    globfree(&g);
}

/* libcurv's refusals: per operation, as the handlers have always answered. */
static void test_status_rows(void **state)
{
    (void)state;
    const struct {
        enum curvd_op op;
        curv_status st;
        int http;
        const char *reason;
    } cases[] = {
        {CURVD_OP_STEP, CURV_E_NONFINITE, 422, "NON_FINITE"},
        {CURVD_OP_STEP, CURV_E_NOMEM, 503, "OUT_OF_MEMORY"},
        {CURVD_OP_STEP, CURV_E_SHAPE, 400, "SHAPE_MISMATCH"},
        {CURVD_OP_STEP, CURV_E_INVALID, 400, "INVALID_INPUT"},
        {CURVD_OP_STEP, CURV_E_STATE, 409, "CALLBACK_OUT_OF_ORDER"},
        {CURVD_OP_STEP, CURV_E_CORRUPT, 500, "NUMERICAL_FAILURE"},
        {CURVD_OP_NEW, CURV_E_NOMEM, 503, "OUT_OF_MEMORY"},
        {CURVD_OP_NEW, CURV_E_RANGE, 422, "TOO_LARGE"},
        {CURVD_OP_NEW, CURV_E_INVALID, 400, "INVALID_CONFIG"},
        {CURVD_OP_LOAD, CURV_E_NOMEM, 503, "INVALID_STATE"},
        {CURVD_OP_LOAD, CURV_E_CORRUPT, 400, "INVALID_STATE"},
        {CURVD_OP_RECONFIGURE, CURV_E_STATE, 409, "CALLBACK_PENDING"},
        {CURVD_OP_RECONFIGURE, CURV_E_RANGE, 400, "INVALID_CONFIG"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum curvd_reason r = curvd_reason_of_status(cases[i].op, cases[i].st);
        assert_int_equal(curvd_reason_status(r), cases[i].http);
        assert_string_equal(curvd_reason_name(r), cases[i].reason);
    }
    assert_string_equal(curvd_reason_name((enum curvd_reason)999), "INTERNAL");
    for (int r = 0; r < CURVD_R_COUNT; r++)
        assert_non_null(curvd_reason_title((enum curvd_reason)r));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_documents_every_reason),
        cmocka_unit_test(test_clients_map_every_reason),
        cmocka_unit_test(test_daemon_sends_only_rows),
        cmocka_unit_test(test_status_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
