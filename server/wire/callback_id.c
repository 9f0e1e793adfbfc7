/* SPDX-License-Identifier: MIT */
#include "wire/callback_id.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/random_hex.h"

static char run_tag[CURVD_RUN_TAG_LEN + 1];
static pthread_once_t run_tag_once = PTHREAD_ONCE_INIT;

static void draw_run_tag(void)
{
    curvd_random_hex(run_tag, CURVD_RUN_TAG_LEN / 2);
}

const char *curvd_run_tag(void)
{
    pthread_once(&run_tag_once, draw_run_tag);
    return run_tag;
}

void curvd_callback_id(char *buf, size_t cap, uint64_t seq)
{
    snprintf(buf, cap, "%llu-%s", (unsigned long long)seq, curvd_run_tag());
}

enum curvd_callback_id_form curvd_callback_id_parse(const char *s, uint64_t *seq)
{
    if (*s < '0' || *s > '9')
        return CURVD_CB_MALFORMED;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    if (errno != 0 || *end != '-' || strlen(end + 1) != CURVD_RUN_TAG_LEN ||
        strspn(end + 1, "0123456789abcdef") != CURVD_RUN_TAG_LEN)
        return CURVD_CB_MALFORMED;
    *seq = n;
    return strcmp(end + 1, curvd_run_tag()) == 0 ? CURVD_CB_THIS_RUN : CURVD_CB_OTHER_RUN;
}
