/* SPDX-License-Identifier: MIT */
/* GET /v1/sessions/{id}/steps: the session's step history, a page at a
 * time by step number (the store keeps the last N steps of each). */
#include "api/handlers.h"
#include "store/store.h"

/* One stored step as its JSON: the texts the daemon wrote are JSON. */
static json_t *entry_json(const struct curvd_history_entry *e)
{
    json_t *report = e->report ? json_loads(e->report, 0, NULL) : NULL;
    json_t *timing = e->timing ? json_loads(e->timing, 0, NULL) : NULL;
    return json_pack("{s:I,s:I,s:I,s:o,s:o}", "step", (json_int_t)e->step, "at",
                     (json_int_t)e->at, "callbacks", (json_int_t)e->callbacks, "timing_ms",
                     timing ? timing : json_object(), "report", report ? report : json_null());
}

CURVD_HANDLER(curvd_h_step_history)
{
    long long since, size;
    if (curvd_query_int(rq, rp, "since", 0, INT64_MAX, 0, &since) != 0 ||
        curvd_query_int(rq, rp, "page_size", 1, CURVD_STORE_MAX_PAGE, 100, &size) != 0)
        return;
    struct curvd_history_page page = {0};
    char err[256];
    int st = curvd_svc_valid_id(rq->param[0])
                 ? curvd_store_history(srv->store, rq->tenant, rq->param[0], since, (size_t)size,
                                       &page, err, sizeof err)
                 : CURVD_STORE_NOT_FOUND;
    if (st != CURVD_STORE_OK) {
        curvd_reply_store_error(rp, rq, st, err);
        return;
    }
    json_t *steps = json_array();
    for (size_t i = 0; i < page.count; i++)
        json_array_append_new(steps, entry_json(&page.items[i]));
    json_t *out = json_pack("{s:o,s:I,s:I}", "steps", steps, "latest_step",
                            (json_int_t)page.latest, "oldest_step", (json_int_t)page.oldest);
    /* The next page starts after this one's last step. */
    if (out && page.more && page.count)
        json_object_set_new(out, "next_since", json_integer(page.items[page.count - 1].step));
    curvd_history_page_clear(&page);
    curvd_reply_json(rp, 200, out);
}
