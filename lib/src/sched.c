/* SPDX-License-Identifier: MIT */
#include <math.h>

#include "opt_int.h"

double curv__sched_lr(const struct curv__sched *s, uint64_t t)
{
    uint64_t k = 0; /* number of decays applied before step t */
    switch (s->kind) {
    case CURV__SCHED_STEP:
        k = (t - 1) / (uint64_t)s->step_size;
        break;
    case CURV__SCHED_MULTISTEP:
        while (k < s->milestones.n && s->milestones.v[k] < t)
            k++;
        break;
    case CURV__SCHED_EXP:
        k = t - 1;
        break;
    default:
        return s->lr;
    }
    return s->lr * pow(s->gamma, (double)k);
}
