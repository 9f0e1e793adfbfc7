/* SPDX-License-Identifier: MIT */
/* The route table and api/openapi.yaml agree both ways: every served
 * (method, path) is in the spec, and every operation in the spec is served;
 * a route needs a token (.auth) exactly when its operation is not open
 * ("security: [{}]" instead of the spec's bearer default). */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "http/http.h"
#include "testutil.h"

#define MAX_OPS 64

struct op {
    char method[8];
    char path[128];
    int open; /* security: [{}] */
};

/* Read "  /path:" keys under "paths:" and their "    get:"-style methods. */
static size_t read_spec(const char *file, struct op *ops)
{
    FILE *f = fopen(file, "r");
    if (!f)
        fail_msg("cannot open %s (run from the repository root)", file);
    char line[512], path[128] = "";
    int in_paths = 0;
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "paths:", 6) == 0) {
            in_paths = 1;
            continue;
        }
        if (in_paths && isalpha((unsigned char)line[0]))
            break; /* the next top-level key */
        if (!in_paths)
            continue;
        if (strncmp(line, "  /", 3) == 0 && line[2 + strcspn(line + 2, "\n") - 1] == ':') {
            snprintf(path, sizeof path, "%.*s", (int)(strcspn(line + 2, "\n") - 1), line + 2);
            continue;
        }
        if (n && strncmp(line, "      security: [{}]", 20) == 0)
            ops[n - 1].open = 1;
        static const char *const methods[] = {"get", "post", "put", "patch", "delete"};
        for (size_t m = 0; m < 5; m++) {
            char key[16];
            snprintf(key, sizeof key, "    %s:", methods[m]);
            if (strncmp(line, key, strlen(key)) == 0 && n < MAX_OPS) {
                snprintf(ops[n].method, sizeof ops[n].method, "%s", methods[m]);
                snprintf(ops[n].path, sizeof ops[n].path, "%s", path);
                ops[n].open = 0;
                n++;
            }
        }
    }
    fclose(f);
    return n;
}

static void test_routes_match_spec(void **state)
{
    (void)state;
    struct op ops[MAX_OPS];
    size_t n = read_spec("api/openapi.yaml", ops);
    assert_true(n >= 10);
    int bad = 0, served[MAX_OPS] = {0}; /* served[k]: some route is ops[k] */
    for (size_t i = 0; i < curvd_route_count; i++) {
        int found = 0;
        for (size_t k = 0; k < n; k++)
            if (strcasecmp(ops[k].method, curvd_routes[i].method) == 0 &&
                strcmp(ops[k].path, curvd_routes[i].pattern) == 0) {
                found = served[k] = 1;
                if (curvd_routes[i].auth == ops[k].open) {
                    print_error("%s %s: .auth %d, but the spec says %s\n", curvd_routes[i].method,
                                curvd_routes[i].pattern, curvd_routes[i].auth,
                                ops[k].open ? "open" : "bearer");
                    bad++;
                }
            }
        if (!found) {
            print_error("served but not in the spec: %s %s\n", curvd_routes[i].method,
                        curvd_routes[i].pattern);
            bad++;
        }
    }
    for (size_t k = 0; k < n; k++)
        if (!served[k]) {
            print_error("in the spec but not served: %s %s\n", ops[k].method, ops[k].path);
            bad++;
        }
    assert_int_equal(bad, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_routes_match_spec)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
