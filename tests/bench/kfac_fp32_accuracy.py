#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""kfac_fp32_accuracy.py - which parts of K-FAC can run in float32.

The measurements behind K-FAC's `precision = fp32` (docs/NOTES.md, "K-FAC
precision"), in numpy on one thread, about 10 s:

 1. The eigendecomposition. A factor with a spectrum from 1e2 down to 1e-8
    (n = 500, random eigenvectors): the relative error of its eigenvalues
    from float64 and float32 eigh, by decade, and of (F + cI)⁻¹ v for
    damping c = 1e-2, 1e-4, 1e-6 three ways: float64 eigh; float32 eigh;
    float64 eigh with the explicit inverse rounded to float and a float
    GEMM (what libcurv's fp32 multiply does).
 2. The factor's SYRK. Rows like a sigmoid layer's FP32 activations (m =
    1000, n = 500, low rank plus noise): Σ x xᵀ / m in float against
    float64, and the change of (F + cI)⁻¹ v it causes at damping 1e-1 ..
    1e-4 of tr F / n, beside the change from another mini-batch (the
    sampling noise the factor carries anyway).

Usage: /usr/bin/python3 tests/bench/kfac_fp32_accuracy.py
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402


def eigh_part():
    rng = np.random.default_rng(0)
    n = 500
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = np.logspace(2, -8, n)
    F = (Q * w) @ Q.T
    F = (F + F.T) / 2
    w64, Q64 = np.linalg.eigh(F)
    w32, Q32 = np.linalg.eigh(F.astype(np.float32))
    w32, Q32 = w32.astype(np.float64), Q32.astype(np.float64)
    ws = np.sort(w)
    print(f"1. eigh of a factor with eigenvalues 1e2 .. 1e-8 (n = {n})")
    for lo, hi in [(1e1, 1e3), (1e-2, 1e1), (1e-4, 1e-2), (1e-6, 1e-4), (0, 1e-6)]:
        sel = (ws >= lo) & (ws < hi)
        e64 = np.max(np.abs(w64[sel] - ws[sel]) / ws[sel])
        e32 = np.max(np.abs(w32[sel] - ws[sel]) / ws[sel])
        print(f"   eigenvalues in [{lo:g}, {hi:g}): largest relative error: "
              f"float64 {e64:.1e}, float32 {e32:.1e}")
    print(f"   float32 eigenvalues below 0: {int(np.sum(w32 < 0))} (smallest {w32.min():.1e})")
    v = rng.standard_normal(n)
    for c in [1e-2, 1e-4, 1e-6]:
        exact = np.linalg.solve(F + c * np.eye(n), v)

        def err(u):
            return np.linalg.norm(u - exact) / np.linalg.norm(exact)

        def eig_apply(W, QQ):
            return QQ @ ((QQ.T @ v) / (np.maximum(W, 0) + c))

        M = ((Q64 / (np.maximum(w64, 0) + c)) @ Q64.T).astype(np.float32)
        mixed = (M @ v.astype(np.float32)).astype(np.float64)
        print(f"   (F + cI)^-1 v, c = {c:g} (kappa {(1e2 + c) / c:.0e}): relative error "
              f"float64 eigh {err(eig_apply(w64, Q64)):.1e}, float32 eigh "
              f"{err(eig_apply(w32, Q32)):.1e}, float64 eigh + float32 inverse and GEMM "
              f"{err(mixed):.1e}")


def syrk_part():
    m, n, r = 1000, 500, 40

    def rows(seed):
        g = np.random.default_rng(seed)
        Z = g.standard_normal((m, r)) @ g.standard_normal((r, n)) * 0.5
        Z += 0.1 * g.standard_normal((m, n))
        return (1 / (1 + np.exp(-Z))).astype(np.float32).astype(np.float64)

    X = rows(2)
    F64 = X.T @ X / m
    X32 = X.astype(np.float32)
    F32 = (X32.T @ X32).astype(np.float64) / m
    Xb = rows(3)
    Fb = Xb.T @ Xb / m
    w = np.linalg.eigvalsh(F64)
    nrm = np.linalg.norm(F64, 2)
    print(f"2. the factor's SYRK (m = {m} FP32 rows, n = {n}; eigenvalues {w.max():.3g} .. "
          f"{w.min():.3g})")
    print(f"   ||F_float - F|| / ||F|| = {np.linalg.norm(F32 - F64, 2) / nrm:.1e}; "
          f"another mini-batch: {np.linalg.norm(Fb - F64, 2) / nrm:.1e}")
    v = np.random.default_rng(1).standard_normal(n)
    s = np.trace(F64) / n
    for rel in [1e-1, 1e-2, 1e-3, 1e-4]:
        c = rel * s
        eye = np.eye(n)
        exact = np.linalg.solve(F64 + c * eye, v)
        d32 = np.linalg.norm(np.linalg.solve(F32 + c * eye, v) - exact) / np.linalg.norm(exact)
        db = np.linalg.norm(np.linalg.solve(Fb + c * eye, v) - exact) / np.linalg.norm(exact)
        print(f"   damping {rel:g} tr F/n (kappa {(w.max() + c) / (w.min() + c):.1e}): "
              f"(F + cI)^-1 v changes by {d32:.1e} with the float SYRK, by {db:.1e} with "
              f"another mini-batch")


if __name__ == "__main__":
    eigh_part()
    syrk_part()
