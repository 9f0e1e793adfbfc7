/* SPDX-License-Identifier: MIT */
#ifndef CURV_CONFIG_H
#define CURV_CONFIG_H

#include "status.h"

/*
 * A config is an unordered set of hyperparameter settings, key -> number or
 * string. It is checked against the chosen optimizer's parameter table when
 * the optimizer is created (curv_opt_new): unknown keys, wrong types and
 * out-of-range values are errors there. Keys not set take the documented
 * defaults (see curv_opt_param_info()).
 */
typedef struct curv_config curv_config;

/* curv_config_new - empty config, or NULL when out of memory.
 * Ownership: caller frees with curv_config_free(). */
CURV_API curv_config *curv_config_new(void);

/* curv_config_free - NULL is a no-op. */
CURV_API void curv_config_free(curv_config *c);

/*
 * curv_config_set_num / _set_str - set @key (replacing an earlier value).
 * Numbers must be finite; booleans are numbers 0 or 1; enumerations and
 * lists are strings. The strings are copied.
 * Return: CURV_OK, CURV_E_INVALID (NULL or empty key, key longer than 63
 * bytes, non-finite number), CURV_E_NOMEM. On failure @c is unchanged.
 */
CURV_API curv_status curv_config_set_num(curv_config *c, const char *key, double value,
                                         curv_error *err);
CURV_API curv_status curv_config_set_str(curv_config *c, const char *key, const char *value,
                                         curv_error *err);

/* curv_config_count - number of keys set. */
CURV_API size_t curv_config_count(const curv_config *c);

#endif
