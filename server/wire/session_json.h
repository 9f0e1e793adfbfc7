/* SPDX-License-Identifier: MIT */
/* Sessions and layouts as JSON, both ways. */
#ifndef CURVD_SESSION_JSON_H
#define CURVD_SESSION_JSON_H

#include <jansson.h>

#include "curv.h"
#include "http/http.h"
#include "wire/codec.h"

/* curvd_layout_from_json - a layout from the request's "layout" array, or
 * NULL with @p (INVALID_LAYOUT naming the block and member; UNKNOWN_MEMBER
 * for a member a block does not have; OUT_OF_MEMORY).
 * Ownership: curv_layout_free(). */
curv_layout *curvd_layout_from_json(const json_t *arr, struct curvd_problem *p);

/* curvd_config_from_json - a config of optimizer @kind from a "config"
 * object (absent: empty), or NULL with @p (INVALID_CONFIG naming the key:
 * a value of the wrong JSON type for its parameter, a boolean only for a
 * boolean one, a number for a number; OUT_OF_MEMORY). Unknown keys pass
 * here: the library names them. Ownership: curv_config_free(). */
curv_config *curvd_config_from_json(curv_opt_kind kind, const json_t *obj, struct curvd_problem *p);

/* The part of a session that only changes with its hyperparameters:
 * {"optimizer", "config": {resolved}, "layout": [...], "dim"} (new ref). */
json_t *curvd_session_meta(const curv_opt *o);

/* @o's resolved settings as a config that creates the same optimizer
 * (every parameter of its kind), or NULL when out of memory. Ownership:
 * curv_config_free(). */
curv_config *curvd_opt_config(const curv_opt *o);

/* A full session object from its meta text and the row's fields; its
 * "last_step" is {"step": @last_step, "report": @report parsed}, or null
 * when @report is NULL (no step stored with a report). */
json_t *curvd_session_json(const char *id, const char *meta, long long step, long long created_ms,
                           long long updated_ms, long long last_step, const char *report);

/* curvd_rfc3339 - unix ms @ms as "2026-01-02T03:04:05.678Z" (UTC). */
void curvd_rfc3339(char *buf, size_t cap, long long ms);

#endif
