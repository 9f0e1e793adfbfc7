/* SPDX-License-Identifier: MIT */
/* GET /ui and /ui/{file}: the dashboard, static files compiled in. They
 * need no token: the page asks for one and sends it with its API calls. */
#include <string.h>

#include "api/handlers.h"
#include "api/ui_files.h"

/* The files are static data: nothing to release. */
static void keep(void *p)
{
    (void)p;
}

static void reply_file(const struct curvd_req *rq, struct curvd_reply *rp, const char *name)
{
    for (unsigned i = 0; i < curvd_ui_file_count; i++)
        if (strcmp(curvd_ui_files[i].name, name) == 0) {
            curvd_reply_owned(rp, 200, curvd_ui_files[i].type, (void *)curvd_ui_files[i].bytes,
                              curvd_ui_files[i].len, keep);
            return;
        }
    curvd_reply_problem(rp, rq, CURVD_R_NOT_FOUND, NULL, 0, "no dashboard file '%.64s'", name);
}

CURVD_HANDLER(curvd_h_ui)
{
    (void)srv;
    reply_file(rq, rp, "index.html");
}

CURVD_HANDLER(curvd_h_ui_file)
{
    (void)srv;
    reply_file(rq, rp, rq->param[0]);
}
