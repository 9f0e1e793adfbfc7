/* SPDX-License-Identifier: MIT */
#include "store/backend.h"
int curvd_pg_open(const char *url, enum curvd_durability durability, struct curvd_store **out,
                  char *err, size_t errlen)
{
    (void)url, (void)durability, (void)out;
    return curvd_store_fail(err, errlen, CURVD_STORE_ERROR, "PostgreSQL: not yet");
}
