/* SPDX-License-Identifier: MIT */
/* What the C client's suites share: the test layout (a dense block with a
 * bias and a vector block, 10 parameters) and a client and session on the
 * daemon at $CURVD_URL. Include after cmocka.h and curvc.h. */
#ifndef CURVC_TEST_FIXTURE_H
#define CURVC_TEST_FIXTURE_H

#include <stdlib.h>

static const curvc_block LAYOUT[] = {{"fc", "dense", {2, 3}, 1}, {"gain", "vector", {2}, 0}};
enum { DIM = 10 };

static curvc_client *client(void)
{
    const char *url = getenv("CURVD_URL");
    assert_non_null(url);
    curvc_client *c = curvc_client_new(url, NULL);
    assert_non_null(c);
    return c;
}

static curvc_session *create(curvc_client *c, const char *kind, const char *config)
{
    curvc_session *s = NULL;
    curvc_error err;
    if (curvc_session_create(c, kind, LAYOUT, 2, config, &s, &err) != CURVC_OK)
        fail_msg("create %s: %s", kind, err.text);
    return s;
}

#endif
