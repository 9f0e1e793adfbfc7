/* SPDX-License-Identifier: MIT */
/*
 * Replaying a session's step log onto its snapshot (docs/DURABILITY.md):
 * each record's input through curv_opt_step and its answers through
 * curv_opt_resume, in step order. The library is deterministic, so the
 * replayed optimizer is the one that committed those steps, bit for bit;
 * each update's digest is compared with the one logged to show it.
 */
#ifndef CURVD_REPLAY_H
#define CURVD_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "curv.h"
#include "store/store.h"

/*
 * curvd_replay_log - step @o (loaded from @s's snapshot) through @s's log
 * up to @s->step. *@seconds: the library time it took; *@differed: the
 * first step whose update differs from the logged one (0: none; the
 * replayed state is kept: another build or CPU may round differently).
 * Return 0, or -1 with @why[@cap] naming the step and the reason: a
 * missing step, a record that does not parse or fit the layout, an
 * answer that is not the callback the library asks for, a refusal of the
 * library, or CURV_E_NOMEM's text (*@nomem set: that may pass).
 */
int curvd_replay_log(curv_opt *o, const struct curvd_session *s, double *seconds, int64_t *differed,
                     int *nomem, char *why, size_t cap);

#endif
