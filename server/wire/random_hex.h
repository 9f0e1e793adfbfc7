/* SPDX-License-Identifier: MIT */
/* Random identifiers as lower-case hex text: session ids and the run tag
 * of callback ids (wire/callback_id.h). */
#ifndef CURVD_RANDOM_HEX_H
#define CURVD_RANDOM_HEX_H

#include <stddef.h>

/* curvd_random_hex - @n_bytes bytes of /dev/urandom as 2 * @n_bytes hex
 * digits and a NUL into @out (2 * @n_bytes + 1 chars). Should the read fail
 * (never expected), the clock's nanoseconds stand in: still different
 * from one call to the next in practice, not unpredictable. */
void curvd_random_hex(char *out, size_t n_bytes);

#endif
