/* SPDX-License-Identifier: MIT */
/* The dashboard's static files (server/ui/), compiled into the daemon by
 * scripts/embed-files. */
#ifndef CURVD_UI_FILES_H
#define CURVD_UI_FILES_H

#include <stddef.h>

struct curvd_ui_file {
    const char *name; /* base name, e.g. "app.js" */
    const char *type; /* its media type */
    const unsigned char *bytes;
    size_t len;
};

extern const struct curvd_ui_file curvd_ui_files[];
extern const unsigned curvd_ui_file_count;

#endif
