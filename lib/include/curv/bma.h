/* SPDX-License-Identifier: MIT */
#ifndef CURV_BMA_H
#define CURV_BMA_H

#include "status.h"

/*
 * Block mean approximation (Lu, Harandi, Hartley, Pascanu 2018, section 3).
 * A BMA of a d x d matrix with the partition s = (s_1..s_L) of d into
 * contiguous index ranges is  M^ = Λ̄ + B̄ : Λ̄ repeats λ_i on the diagonal
 * of block i, and B̄ fills block (i, j) with the constant b_ij. It is stored
 * as Λ (L numbers), B (L x L, row-major) and s; d x d is never formed.
 */
typedef struct curv_bma curv_bma;

/*
 * curv_bma_new - a BMA for the partition @s of length @L (every s_i >= 1),
 * with Λ = 0 and B = 0.
 * Return: CURV_OK and *out, CURV_E_INVALID (L = 0, s_i = 0, NULL),
 * CURV_E_RANGE (sum overflow or L*L too large), CURV_E_NOMEM.
 * Ownership: caller frees *out with curv_bma_free().
 */
CURV_API curv_status curv_bma_new(const size_t *s, size_t L, curv_bma **out, curv_error *err);

/* curv_bma_free - NULL is a no-op. */
CURV_API void curv_bma_free(curv_bma *b);

/* curv_bma_nblocks - L.  curv_bma_dim - d = sum of s. */
CURV_API size_t curv_bma_nblocks(const curv_bma *b);
CURV_API size_t curv_bma_dim(const curv_bma *b);

/* curv_bma_sizes - the partition (borrowed, L entries). */
CURV_API const size_t *curv_bma_sizes(const curv_bma *b);

/* curv_bma_lambda / curv_bma_matrix - Λ (L) and B (L x L row-major),
 * borrowed and writable: the caller may set them directly. */
CURV_API double *curv_bma_lambda(curv_bma *b);
CURV_API double *curv_bma_matrix(curv_bma *b);

/*
 * curv_bma_fit - Proposition 1: the BMA closest to @M in Frobenius norm.
 * @M: d x d row-major with leading dimension @ld >= d. Cost O(d^2).
 * Return: CURV_OK, CURV_E_INVALID (ld < d, NULL), CURV_E_NONFINITE.
 * @b is changed only on success.
 */
CURV_API curv_status curv_bma_fit(curv_bma *b, const double *M, size_t ld, curv_error *err);

/*
 * curv_bma_inv - Theorem 1: (Λ̄ + B̄)^-1 = Λ̄^-1 + D̄, written to @out
 * (Λ_out = Λ^-1, B_out = D). Cost O(L^3).
 * curv_bma_inv_sqrt - Theorem 2: (Λ̄ + B̄)^-1/2 = Λ̄^-1/2 + D̄.
 * curv_bma_sqrt     - Lemma 1:   (Λ̄ + B̄)^1/2  = Λ̄^1/2 + D̄.
 * @eig_floor: for the square-root forms, eigenvalues of the L x L core
 *   matrix Λ + S^1/2 B S^1/2 below eig_floor * (largest eigenvalue) are
 *   clamped to it (BMA paper, text after eq. 27); 0 disables clamping.
 * Requires λ_i > 0 and B symmetric; @out must have the same partition and
 * may be @a itself.
 * Return: CURV_OK; CURV_E_INVALID (λ_i <= 0, B not symmetric, partitions
 * differ, eig_floor outside [0, 1)); CURV_E_NUMERIC (core matrix not
 * positive definite, or LAPACK failure); CURV_E_NOMEM. @out is changed
 * only on success.
 */
CURV_API curv_status curv_bma_inv(const curv_bma *a, curv_bma *out, curv_error *err);
CURV_API curv_status curv_bma_inv_sqrt(const curv_bma *a, double eig_floor, curv_bma *out,
                                       curv_error *err);
CURV_API curv_status curv_bma_sqrt(const curv_bma *a, double eig_floor, curv_bma *out,
                                   curv_error *err);

/*
 * curv_bma_apply - y = (Λ̄ + B̄) x in O(d + L^2) without forming d x d.
 * Apply an inverse or inverse square root by applying the BMA that
 * curv_bma_inv / curv_bma_inv_sqrt returned. @x and @y have d elements and
 * may alias. Return CURV_OK, CURV_E_INVALID (NULL), CURV_E_NOMEM.
 */
CURV_API curv_status curv_bma_apply(const curv_bma *b, const double *x, double *y, curv_error *err);

/* curv_bma_expand - write the dense d x d matrix Λ̄ + B̄ (for checks and
 * small problems). @ld >= d. Return CURV_OK or CURV_E_INVALID. */
CURV_API curv_status curv_bma_expand(const curv_bma *b, double *M, size_t ld, curv_error *err);

#endif
