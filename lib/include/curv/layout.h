/* SPDX-License-Identifier: MIT */
#ifndef CURV_LAYOUT_H
#define CURV_LAYOUT_H

#include "status.h"

/*
 * A layout describes a model's parameters as named blocks laid out one after
 * another in one flat vector; every optimizer shares it.
 *
 * Flat order of each block (the canonical wire layout):
 *  - dense:  the row-major matrix W[n_out][n_in (+1)], bias as the last column
 *            (the homogeneous coordinate of Martens' thesis, section 2.1);
 *  - conv2d: the row-major matrix W[c_out][c_in*kh*kw (+1)], each row being
 *            one output channel's kernel in [c_in][kh][kw] order, then bias;
 *  - vector: n plain parameters (norm gains, embeddings flattened, ...).
 */
typedef struct curv_layout curv_layout;

typedef enum { CURV_BLOCK_DENSE = 0, CURV_BLOCK_CONV2D = 1, CURV_BLOCK_VECTOR = 2 } curv_block_kind;

/* Longest block name, not counting the NUL. */
#define CURV_NAME_MAX 63
/* Largest flat dimension a layout accepts (2^36 parameters). */
#define CURV_LAYOUT_MAX_DIM ((size_t)1 << 36)

typedef struct curv_block_info {
    const char *name; /* borrowed; valid while the layout lives */
    curv_block_kind kind;
    size_t n_out;        /* dense: outputs; conv2d: c_out; vector: n */
    size_t n_in;         /* dense: inputs; conv2d: c_in*kh*kw; vector: 1 */
    size_t c_in, kh, kw; /* conv2d only, else 0 */
    int has_bias;
    size_t rows, cols; /* shape of the flat matrix: rows = n_out, cols = n_in + has_bias */
    size_t offset;     /* first index in the flat vector */
    size_t size;       /* rows * cols */
} curv_block_info;

/* curv_layout_new - an empty layout. Returns NULL when out of memory.
 * Ownership: caller frees with curv_layout_free(). */
CURV_API curv_layout *curv_layout_new(void);

/* curv_layout_free - NULL is a no-op. */
CURV_API void curv_layout_free(curv_layout *l);

/* curv_layout_dup - an owned deep copy, or NULL when out of memory. */
CURV_API curv_layout *curv_layout_dup(const curv_layout *l);

/*
 * curv_layout_add_dense / _conv2d / _vector - append a block.
 * Names must be unique, 1..CURV_NAME_MAX bytes; every size must be >= 1 and
 * the flat dimension must stay <= CURV_LAYOUT_MAX_DIM.
 * Return: CURV_OK; CURV_E_INVALID (NULL, bad or duplicate name, zero size);
 * CURV_E_RANGE (overflow or too large); CURV_E_NOMEM. On failure the layout
 * is unchanged.
 */
CURV_API curv_status curv_layout_add_dense(curv_layout *l, const char *name, size_t n_out,
                                           size_t n_in, int has_bias, curv_error *err);
CURV_API curv_status curv_layout_add_conv2d(curv_layout *l, const char *name, size_t c_out,
                                            size_t c_in, size_t kh, size_t kw, int has_bias,
                                            curv_error *err);
CURV_API curv_status curv_layout_add_vector(curv_layout *l, const char *name, size_t n,
                                            curv_error *err);

/* curv_layout_dim - total number of parameters (0 for an empty layout). */
CURV_API size_t curv_layout_dim(const curv_layout *l);

/* curv_layout_nblocks - number of blocks. */
CURV_API size_t curv_layout_nblocks(const curv_layout *l);

/* curv_layout_block - describe block @i. Return CURV_OK or CURV_E_INVALID
 * (index out of range); @out is written only on success. */
CURV_API curv_status curv_layout_block(const curv_layout *l, size_t i, curv_block_info *out);

/* curv_layout_find - index of the block named @name, or -1. */
CURV_API long curv_layout_find(const curv_layout *l, const char *name);

#endif
