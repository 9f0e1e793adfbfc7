/* SPDX-License-Identifier: MIT */
/*
 * K-FAC's block-tridiagonal inverse F̂^-1 (thesis §6.4.3 and appendix B.2;
 * ALGORITHMS.md §3.5): the inverse of the matrix that agrees with the
 * Kronecker-factored Fisher F̃ on its tridiagonal blocks and whose own
 * inverse is block tridiagonal. Internal to the library; the K-FAC
 * optimizer builds one at every inverse refresh and applies it each step.
 */
#ifndef CURV_KFAC_TRI_H
#define CURV_KFAC_TRI_H

#include "internal.h"

/* Denominators 1 - s2 s1 below this are raised to it and counted. */
#define CURV__KFAC_TRI_DEN_FLOOR 1e-6

/*
 * A chain of L >= 2 consecutive dense layers i = 0..L-1; layer i's gradient is the row-major
 * matrix V_i of n_out[i] x n_in[i] (n_in includes the homogeneous bias column when the layer has a
 * bias; the chain requires n_in[i+1] == n_out[i] + 1 or n_out[i], i.e. layer i's output feeds
 * layer i+1).
 * Ad[i]: the DAMPED input factor (Ā_{i-1} + π_i γ I), n_in[i] x n_in[i], symmetric PD, row-major.
 * Gd[i]: the DAMPED output factor (G_i + (γ/π_i) I), n_out[i] x n_out[i].
 * Ax[i] (i < L-1): the undamped cross factor E[ā_{i-1} ā_i^T], n_in[i] x n_in[i+1] (inputs of
 * layer i vs inputs of layer i+1).
 * Gx[i] (i < L-1): the undamped cross factor E[g_i g_{i+1}^T], n_out[i] x n_out[i+1].
 * Thesis §6.4.3 and appendix B.2; ALGORITHMS.md §3.5.
 *
 * In the row-major flat order of V_i (index r * n_in + c), F̃'s block (i, j)
 * is G_{ij} ⊗ Ā_{ij} (the thesis' Ā ⊗ G is for column-major vec), and it
 * maps V_j to G_{ij} V_j Ā_{ij}^T. Only the upper triangles of Ad and Gd are
 * read.
 */
struct curv__kfac_tri;

/*
 * curv__kfac_tri_build - precompute everything curv__kfac_tri_apply needs:
 * Ψ^A, Ψ^G, K1, K2 and the clamped reciprocal denominators per layer, and
 * the last layer's damped inverses.
 * @clamped: if not NULL, receives how many denominators 1 - s2_r s1_c were
 *           raised to CURV__KFAC_TRI_DEN_FLOOR (nonzero means inconsistent
 *           factor estimates: the assembled tridiagonal blocks are not PSD).
 * Return CURV_OK; CURV_E_INVALID (L < 2 or a NULL pointer), CURV_E_SHAPE
 * (a zero size or a broken chain), CURV_E_RANGE (a size too large for
 * BLAS), CURV_E_NUMERIC (a non-finite input, a damped factor that is not
 * positive definite, a LAPACK eigendecomposition that fails or produces
 * non-finite output; the text names the factor and layer), CURV_E_NOMEM.
 * Ownership: *out is new (free with curv__kfac_tri_free); written, as is
 * *clamped, only on success. Nothing leaks on failure.
 */
curv_status curv__kfac_tri_build(size_t L, const size_t *n_out, const size_t *n_in,
                                 const double *const *Ad, const double *const *Gd,
                                 const double *const *Ax, const double *const *Gx,
                                 struct curv__kfac_tri **out, size_t *clamped, curv_error *err);

/*
 * curv__kfac_tri_apply - X_i = (F̂^-1 V)_i for every layer (V and X are L
 * arrays of row-major matrices, n_out[i] x n_in[i]); X may not alias V.
 * Uses only scratch allocated by build (no allocation, cannot fail).
 * Thread-safety: the scratch lives in @t, so one thread at a time per @t.
 */
void curv__kfac_tri_apply(const struct curv__kfac_tri *t, const double *const *V, double *const *X);

/* curv__kfac_tri_free - release @t; NULL is a no-op. */
void curv__kfac_tri_free(struct curv__kfac_tri *t);

/* curv__kfac_tri_bytes - bytes held by @t (for memory reporting). */
size_t curv__kfac_tri_bytes(const struct curv__kfac_tri *t);

#endif
