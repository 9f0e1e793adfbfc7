/* SPDX-License-Identifier: MIT */
/* Replaying a step log; the model is in replay.h. */
#include "session/replay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wire/request_digest.h"
#include "wire/step_record.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The callbacks of a replayed step, answered from its record. */
static curv_status answer_all(curv_opt *o, struct curvd_record_read *rd, curv_status cs,
                              curv_request *req, double *delta, curv_error *cerr, char *why,
                              size_t cap)
{
    while (cs == CURV_NEED_INPUT) {
        curv_response resp;
        int got = curvd_record_next_answer(rd, &resp, why, cap);
        int fits = got > 0 && resp.seq == req->seq && resp.n_values == req->n_values;
        if (got == 0)
            snprintf(why, cap, "the record ends before the answer to callback %llu",
                     (unsigned long long)req->seq);
        else if (got > 0 && !fits)
            snprintf(why, cap, "the record answers callback %llu (%zu values), not %llu (%zu)",
                     (unsigned long long)resp.seq, resp.n_values, (unsigned long long)req->seq,
                     req->n_values);
        if (fits)
            cs = curv_opt_resume(o, &resp, CURV_F64, delta, req, cerr);
        if (got > 0)
            free((void *)resp.values);
        if (!fits)
            return CURV_E_CORRUPT;
    }
    if (cs != CURV_OK)
        snprintf(why, cap, "%s", cerr->text);
    else if (rd->p != rd->end)
        snprintf(why, cap, "the record holds more answers than the step asked for");
    return cs == CURV_OK && rd->p != rd->end ? CURV_E_CORRUPT : cs;
}

/* One log entry @le, the next step of @o. */
static curv_status replay_one(curv_opt *o, const struct curvd_log_entry *le, double *delta,
                              int64_t *differed, char *why, size_t cap)
{
    const curv_layout *l = curv_opt_layout(o);
    struct curvd_record_read rd;
    if (curvd_record_parse(le->record, le->len, l, &rd, why, cap) != 0)
        return strstr(why, "out of memory") ? CURV_E_NOMEM : CURV_E_CORRUPT;
    curv_status cs = CURV_E_CORRUPT;
    if (rd.step != (uint64_t)le->step) {
        snprintf(why, cap, "the record is of step %llu", (unsigned long long)rd.step);
    } else {
        curv_request req;
        curv_error cerr;
        cs = curv_opt_step(o, &rd.si, delta, &req, &cerr);
        if (cs != CURV_OK && cs != CURV_NEED_INPUT)
            snprintf(why, cap, "%s", cerr.text);
        else
            cs = answer_all(o, &rd, cs, &req, delta, &cerr, why, cap);
    }
    curv_opt_settle(o); /* a K-FAC step may have left its statistics, borrowed from @rd */
    curvd_record_read_clear(&rd);
    if (cs == CURV_OK && !*differed) {
        char digest[CURVD_DIGEST_TEXT];
        curvd_update_digest(delta, curv_layout_dim(l), digest);
        if (strcmp(digest, le->update_digest) != 0)
            *differed = le->step;
    }
    return cs;
}

int curvd_replay_log(curv_opt *o, const struct curvd_session *s, double *seconds, int64_t *differed,
                     int *nomem, char *why, size_t cap)
{
    size_t dim = curv_layout_dim(curv_opt_layout(o));
    double *delta = malloc((dim ? dim : 1) * sizeof *delta), t0 = now_s();
    *differed = 0;
    *nomem = !delta;
    if (!delta) {
        snprintf(why, cap, "out of memory replaying the step log");
        return -1;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < s->n_log; i++) {
        const struct curvd_log_entry *le = &s->log[i];
        int64_t next = (int64_t)curv_opt_steps(o) + 1;
        if (le->step < next) /* before the snapshot: never written so; not needed */
            continue;
        char sub[400];
        curv_status cs =
            le->step == next
                ? replay_one(o, le, delta, differed, sub, sizeof sub)
                : (snprintf(sub, sizeof sub, "the log has no step %lld", (long long)next),
                   CURV_E_CORRUPT);
        if (cs != CURV_OK) {
            *nomem = cs == CURV_E_NOMEM;
            snprintf(why, cap, "step %lld of the log: %s", (long long)le->step, sub);
            rc = -1;
        }
    }
    if (rc == 0 && (int64_t)curv_opt_steps(o) != s->step) {
        snprintf(why, cap, "the state and its log reach step %llu, the session is at step %lld",
                 (unsigned long long)curv_opt_steps(o), (long long)s->step);
        rc = -1;
    }
    free(delta);
    *seconds = now_s() - t0;
    return rc;
}
