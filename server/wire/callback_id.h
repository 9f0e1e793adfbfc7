/* SPDX-License-Identifier: MIT */
/*
 * A callback's id: "<seq>-<run>", the library's request counter (the
 * request's seq) and the tag of this run of the daemon, 16 hex digits
 * drawn once per process. Only the final update of a step is committed,
 * so a restarted daemon resumes a session from its committed counter and
 * hands out the seqs of the exchange it forgot again; the run tag keeps
 * a late answer to a forgotten callback from passing for the answer to
 * the callback of the same seq asked by the step posted again.
 */
#ifndef CURVD_CALLBACK_ID_H
#define CURVD_CALLBACK_ID_H

#include <stddef.h>
#include <stdint.h>

#define CURVD_RUN_TAG_LEN 16
/* Room for an id and its NUL: 20 digits, '-', the tag. */
#define CURVD_CALLBACK_ID_CAP (20 + 1 + CURVD_RUN_TAG_LEN + 1)

/* curvd_run_tag - this process's run tag (CURVD_RUN_TAG_LEN lower-case hex
 * digits), drawn on the first call; thread-safe. Borrowed, static. */
const char *curvd_run_tag(void);

/* curvd_callback_id - the id of request @seq in this run into @buf. */
void curvd_callback_id(char *buf, size_t cap, uint64_t seq);

enum curvd_callback_id_form {
    CURVD_CB_THIS_RUN,  /* an id this run hands out: *seq set */
    CURVD_CB_OTHER_RUN, /* an id of that form with another run's tag */
    CURVD_CB_MALFORMED  /* no id of that form (a bare number included) */
};
/* curvd_callback_id_parse - what path segment @s is; the seq into @seq
 * for CURVD_CB_THIS_RUN and CURVD_CB_OTHER_RUN. */
enum curvd_callback_id_form curvd_callback_id_parse(const char *s, uint64_t *seq);

#endif
