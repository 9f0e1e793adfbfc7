/* SPDX-License-Identifier: MIT */
/* GET /v1/sessions/{id}/steps: the session's step history, a page at a
 * time by step number (the store keeps the last N steps of each). The
 * stored report and timing are JSON the daemon wrote: copied as they are. */
#include <string.h>

#include "api/handlers.h"
#include "http/mem.h"
#include "store/store.h"
#include "wire/out.h"
#include "wire/session_json.h"

/* One stored step: {"step", "at", "callbacks", "timing_ms", "report"}. */
static void entry_out(struct curvd_out *o, const struct curvd_history_entry *e)
{
    char at[64];
    curvd_rfc3339(at, sizeof at, (long long)e->at);
    curvd_out_lit(o, "{\"step\":");
    curvd_out_int(o, (long long)e->step);
    curvd_out_lit(o, ",\"at\":");
    curvd_out_string(o, at);
    curvd_out_lit(o, ",\"callbacks\":");
    curvd_out_int(o, (long long)e->callbacks);
    curvd_out_lit(o, ",\"timing_ms\":");
    if (e->timing)
        curvd_out_raw(o, e->timing, strlen(e->timing));
    else
        curvd_out_lit(o, "{}");
    curvd_out_lit(o, ",\"report\":");
    if (e->report)
        curvd_out_raw(o, e->report, strlen(e->report));
    else
        curvd_out_lit(o, "null");
    curvd_out_lit(o, "}");
}

/* {"steps": [...], "latest_step", "oldest_step"[, "next_since"]}. */
static void reply_page(struct curvd_reply *rp, const struct curvd_req *rq,
                       const struct curvd_history_page *page)
{
    struct curvd_out o;
    curvd_out_init(&o);
    curvd_out_lit(&o, "{\"steps\":[");
    for (size_t i = 0; i < page->count; i++) {
        if (i)
            curvd_out_lit(&o, ",");
        entry_out(&o, &page->items[i]);
    }
    curvd_out_lit(&o, "],\"latest_step\":");
    curvd_out_int(&o, (long long)page->latest);
    curvd_out_lit(&o, ",\"oldest_step\":");
    curvd_out_int(&o, (long long)page->oldest);
    if (page->more && page->count) { /* the next page starts after this one */
        curvd_out_lit(&o, ",\"next_since\":");
        curvd_out_int(&o, (long long)page->items[page->count - 1].step);
    }
    curvd_out_lit(&o, "}");
    if (curvd_out_finish(&o, NULL) != 0) {
        curvd_out_clear(&o);
        curvd_reply_problem(rp, rq, CURVD_R_OUT_OF_MEMORY, NULL, 0, "out of memory");
        return;
    }
    size_t len = o.len;
    curvd_reply_owned(rp, 200, "application/json", curvd_out_take(&o), len, curvd_mem_free);
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
    if (st == CURVD_STORE_OK)
        reply_page(rp, rq, &page);
    else
        curvd_reply_store_error(rp, rq, st, err);
    curvd_history_page_clear(&page);
}
