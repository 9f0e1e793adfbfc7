/* SPDX-License-Identifier: MIT */
/*
 * libcurv - curvature-based optimizers (K-FAC, HF, AdaGrad/BMA, MBAG, SGD).
 * Umbrella header; each module has its own header under curv/.
 * Conventions: every fallible call returns a curv_status and accepts an
 * optional curv_error * for a sentence naming the offending block and
 * shape; out-parameters are written only on success; on failure objects
 * are unchanged. The library never prints, aborts or exits.
 */
#ifndef CURV_H
#define CURV_H

#include "curv/alloc.h"
#include "curv/bma.h"
#include "curv/config.h"
#include "curv/exec.h"
#include "curv/layout.h"
#include "curv/opt.h"
#include "curv/status.h"

#define CURV_VERSION_MAJOR 0
#define CURV_VERSION_MINOR 2
#define CURV_VERSION_PATCH 0

/* curv_version - "MAJOR.MINOR.PATCH" of the library actually linked. */
CURV_API const char *curv_version(void);

#endif
