/* SPDX-License-Identifier: MIT */
#include "wire/random_hex.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

void curvd_random_hex(char *out, size_t n_bytes)
{
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    unsigned char raw[32];
    for (size_t at = 0; at < n_bytes; at += sizeof raw) {
        size_t n = n_bytes - at < sizeof raw ? n_bytes - at : sizeof raw;
        if (fd < 0 || read(fd, raw, n) != (ssize_t)n) { /* never expected */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            for (size_t i = 0; i < n; i++)
                raw[i] = (unsigned char)((uint64_t)ts.tv_nsec * (i + 7) >> (i % 8));
        }
        for (size_t i = 0; i < n; i++)
            snprintf(out + 2 * (at + i), 3, "%02x", raw[i]);
    }
    if (fd >= 0)
        close(fd);
    out[2 * n_bytes] = '\0';
}
