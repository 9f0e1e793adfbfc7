#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""kfac_numpy.py - numpy reference timings for K-FAC's linear algebra.

The thesis' MNIST deep autoencoder (784-1000-500-250-30 encoder, mirrored
30-250-500-1000-784 decoder, every layer dense with a bias: 8 layers),
timed with the same math as libcurv's K-FAC (ALGORITHMS.md §3.2-3.5), so a
C benchmark can print library/numpy ratios from one run.

Usage:
  /usr/bin/python3 tests/bench/kfac_numpy.py [--threads N] [--quick]
        [--only diag|tri] [--m M [M ...]] [--reps R]

  --threads N  sets OPENBLAS_NUM_THREADS (and OMP_/MKL_) before numpy is
               imported; default: $OPENBLAS_NUM_THREADS, else 1 (as the C
               benches, which run OpenBLAS on one thread unless told).
  --quick      a tiny chain (10-8-6-4-6-8-10) and m = 50, one repetition:
               a smoke run.
  --only       the block-diagonal phases only, or the tridiagonal ones, or
               (explicit) the best in-process K-FAC a numpy user would
               write: explicit damped inverses, float64 and float32, with
               the GEMM rate measured in the same run.
  --m          batch sizes (default 1000 5000).
  --reps       timed calls per phase, the best is reported (default 3).
  --check      no timing: check apply_diag and apply_tri against dense
               matrices on the quick chain, print {"check": "ok", ...} or
               exit 1.

Phases (seconds per call, best of --reps; all layers of the chain):
  factors       per layer Â = ā^T ā / m (ā: m x (n_in) with the homogeneous
                1 column), Ĝ = g^T g / m, and the EMA X <- εX + (1-ε)X̂.
  factors_tri   the same plus the cross factors Ā_{i-1,i} = ā_{i-1}^T ā_i / m
                and G_{i,i+1} = g_i^T g_{i+1} / m with their EMAs.
  inverse_diag  numpy.linalg.eigh of every damped factor (Ā + πγI, G + γ/π I).
  inverse_tri   the block-tridiagonal precomputation of libcurv's
                curv__kfac_tri_build (thesis App. B.2): eigh of each damped
                factor into H = Q diag(w)^-1/2, then per coupled layer and
                side Ψ = X H2 H2^T, P = H^T X H2, eigh(P P^T) = E diag(s) E^T,
                K = H E, the denominators 1 / max(1 - s2 s1^T, 1e-6); the
                last layer's H H^T (its damped inverses).
  apply_diag    U_i = Q_G [(Q_G^T V_i Q_A) / (g a^T)] Q_A^T per layer, with
                g, a the damped eigenvalues (g a^T = (g0 + γ/π)(a0 + πγ)^T).
  apply_tri     F̂^-1 V: U = Ξ V, W = Λ U (K2 [(K2^T U K1) * rden] K1^T, the
                last layer Gd^-1 U Ad^-1), X = Ξ^T W, as curv__kfac_tri_apply
                (numpy.linalg.multi_dot picks each product's association).
  With --only explicit, for each dtype T in f64, f32 (the data cast to T):
  factors_T     as factors, in T.
  inverse_explicit_T  per layer eigh of each damped factor and the explicit
                inverse Q diag(1/w) Q^T (Q scaled, one matmul).
  apply_explicit_T    U_i = Gd_i^-1 V_i Ad_i^-1: two matmuls per layer.
  and in the header gemm_T: GFLOP/s of an n = 1000 square matmul in T
  (best of 5), the machine's GEMM rate on the same threads.
inverse_* and apply_* do not depend on m; they are timed again for each m
on that m's factors.

Output: one JSON object on stdout, keys in this order, formatted so that C
can read it with strstr/sscanf: `"key": value` with one space after the
colon, and each entry of "results" on a line of its own:
  {"threads": 1, "blas": "/usr/lib/.../libopenblasp-r0.3.21.so",
   "numpy": "1.24.2", "quick": false, "reps": 3,
   "layers": [[1000, 785], [500, 1001], ...],      (n_out, n_in) per layer
   "results": [
  {"m": 1000, "factors": 0.0123, "factors_tri": 0.0234, "inverse_diag": 1.2, ...},
  {"m": 5000, ...}
  ]}
A phase left out by --only is absent. "threads" is what OpenBLAS reports
(openblas_get_num_threads), or the requested number when that cannot be
asked. When numpy cannot be imported the script prints
{"error": "numpy is not available: ..."} and exits with status 3.
"""
import argparse
import json
import os
import sys
import time

AUTOENCODER = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
QUICK = [10, 8, 6, 4, 6, 8, 10]
GAMMA = 0.1  # factored damping strength; costs do not depend on it
EPS = 0.95  # EMA decay, ALGORITHMS.md §3.2
DEN_FLOOR = 1e-6  # as CURV__KFAC_TRI_DEN_FLOOR


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=["diag", "tri", "explicit"], default=None)
    ap.add_argument("--m", type=int, nargs="+", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--check", action="store_true")
    return ap.parse_args()


ARGS = parse_args()
THREADS = ARGS.threads
if THREADS is None:
    THREADS = int(os.environ.get("OPENBLAS_NUM_THREADS", "1") or "1")
for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(THREADS)

try:
    import numpy as np
except ImportError as e:  # the C bench skips its ratios on this
    print(json.dumps({"error": "numpy is not available: %s" % e}))
    sys.exit(3)


def blas_info():
    """(path, threads) of the OpenBLAS numpy loaded, from /proc/self/maps."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "blas" in ln})
    except OSError:
        paths = []
    for p in paths:
        try:
            return p, int(ctypes.CDLL(p).openblas_get_num_threads())
        except (OSError, AttributeError):
            continue
    return (paths[0] if paths else "unknown"), THREADS


def best_of(reps, fn):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Chain:
    """Layer i maps widths[i] (+ bias) to widths[i + 1]."""

    def __init__(self, widths, m, rng):
        self.L = len(widths) - 1
        self.n_out = widths[1:]
        self.n_in = [w + 1 for w in widths[:-1]]
        self.m = m
        ones = np.ones((m, 1))
        self.abar = [np.hstack([rng.standard_normal((m, w)), ones]) for w in widths[:-1]]
        self.g = [rng.standard_normal((m, n)) for n in self.n_out]
        self.A = [np.eye(n) for n in self.n_in]
        self.G = [np.eye(n) for n in self.n_out]
        self.Ax = [np.zeros((self.n_in[i], self.n_in[i + 1])) for i in range(self.L - 1)]
        self.Gx = [np.zeros((self.n_out[i], self.n_out[i + 1])) for i in range(self.L - 1)]

    def update_factors(self, cross):
        m = self.m

        def ema(X, Xhat):
            X *= EPS
            X += (1 - EPS) * Xhat

        for i in range(self.L):
            ema(self.A[i], self.abar[i].T @ self.abar[i] / m)
            ema(self.G[i], self.g[i].T @ self.g[i] / m)
            if cross and i + 1 < self.L:
                ema(self.Ax[i], self.abar[i].T @ self.abar[i + 1] / m)
                ema(self.Gx[i], self.g[i].T @ self.g[i + 1] / m)

    def damped(self):
        """Trace-norm π_i (ALGORITHMS.md §3.3): Ā + πγI and G + (γ/π)I."""
        Ad, Gd = [], []
        for A, G in zip(self.A, self.G):
            pi = np.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))
            Ad.append(A + pi * GAMMA * np.eye(A.shape[0], dtype=A.dtype))
            Gd.append(G + GAMMA / pi * np.eye(G.shape[0], dtype=G.dtype))
        return Ad, Gd


def inverse_diag(Ad, Gd):
    return [(np.linalg.eigh(A), np.linalg.eigh(G)) for A, G in zip(Ad, Gd)]


def apply_diag(inv, V):
    out = []
    for ((a, QA), (g, QG)), Vi in zip(inv, V):
        Y = np.linalg.multi_dot([QG.T, Vi, QA]) / np.outer(g, a)
        out.append(np.linalg.multi_dot([QG, Y, QA.T]))
    return out


def whiten(F):
    w, Q = np.linalg.eigh(F)
    return Q / np.sqrt(w)


def couple(X, H, H2):
    T = X @ H2
    psi = T @ H2.T
    P = H.T @ T
    s, E = np.linalg.eigh(P @ P.T)
    return psi, H @ E, s


def inverse_tri(Ad, Gd, Ax, Gx):
    L = len(Ad)
    HA = [whiten(A) for A in Ad]
    HG = [whiten(G) for G in Gd]
    t = {"psiA": [], "psiG": [], "K1": [], "K2": [], "rden": []}
    for i in range(L - 1):
        psiA, K1, s1 = couple(Ax[i], HA[i], HA[i + 1])
        psiG, K2, s2 = couple(Gx[i], HG[i], HG[i + 1])
        den = np.maximum(1.0 - np.outer(s2, s1), DEN_FLOOR)
        for k, v in (("psiA", psiA), ("psiG", psiG), ("K1", K1), ("K2", K2), ("rden", 1.0 / den)):
            t[k].append(v)
    t["Ainv"] = HA[-1] @ HA[-1].T
    t["Ginv"] = HG[-1] @ HG[-1].T
    return t


def apply_tri(t, V):
    L = len(V)
    md = np.linalg.multi_dot
    X = [V[i] - md([t["psiG"][i], V[i + 1], t["psiA"][i].T]) for i in range(L - 1)]
    X.append(V[-1].copy())
    for i in range(L - 1):
        K1, K2 = t["K1"][i], t["K2"][i]
        X[i] = md([K2, md([K2.T, X[i], K1]) * t["rden"][i], K1.T])
    X[-1] = md([t["Ginv"], X[-1], t["Ainv"]])
    for i in range(L - 1, 0, -1):
        X[i] -= md([t["psiG"][i - 1].T, X[i - 1], t["psiA"][i - 1]])
    return X


def check():
    """Dense checks on the quick chain, in the row-major flat order, where
    F̃'s block (i, j) is kron(G_ij, Ā_ij): the block-diagonal apply inverts
    kron(Gd, Ad); the tridiagonal apply's matrix is block tridiagonal and
    its inverse agrees with F̃ on the tridiagonal blocks (thesis §6.4.3)."""
    rng = np.random.default_rng(2)
    c = Chain(QUICK, 200, rng)
    # Adjacent layers strongly correlated, so Ψ and s are far from 0.
    for i in range(c.L - 1):
        W = rng.standard_normal((c.n_in[i], c.n_in[i + 1] - 1))
        c.abar[i + 1][:, :-1] = np.tanh(c.abar[i] @ W) + 0.3 * rng.standard_normal((c.m, W.shape[1]))
    for i in range(c.L - 2, -1, -1):
        B = rng.standard_normal((c.n_out[i + 1], c.n_out[i]))
        c.g[i] = c.g[i + 1] @ B + 0.5 * c.g[i]
    c.update_factors(True)
    Ad, Gd = c.damped()
    dims = [no * ni for no, ni in zip(c.n_out, c.n_in)]
    off = np.concatenate([[0], np.cumsum(dims)])
    D = off[-1]

    def dense(apply):
        M = np.zeros((D, D))
        for k in range(D):
            e = np.zeros(D)
            e[k] = 1.0
            V = [e[off[i] : off[i + 1]].reshape(no, ni) for i, (no, ni) in enumerate(zip(c.n_out, c.n_in))]
            M[:, k] = np.concatenate([x.reshape(-1) for x in apply(V)])
        return M

    Ftri = np.zeros((D, D))
    for i in range(c.L):
        Ftri[off[i] : off[i + 1], off[i] : off[i + 1]] = np.kron(Gd[i], Ad[i])
        if i + 1 < c.L:
            B = np.kron(c.Gx[i], c.Ax[i])
            Ftri[off[i] : off[i + 1], off[i + 1] : off[i + 2]] = B
            Ftri[off[i + 1] : off[i + 2], off[i] : off[i + 1]] = B.T
    diag = np.zeros((D, D))
    for i in range(c.L):
        diag[off[i] : off[i + 1], off[i] : off[i + 1]] = np.kron(Gd[i], Ad[i])
    inv = inverse_diag(Ad, Gd)
    diag_err = np.abs(dense(lambda V: apply_diag(inv, V)) @ diag - np.eye(D)).max()
    t = inverse_tri(Ad, Gd, c.Ax, c.Gx)
    M = dense(lambda V: apply_tri(t, V))
    layer = np.searchsorted(off, np.arange(D), side="right") - 1
    far = np.abs(layer[:, None] - layer[None, :]) > 1
    Fhat = np.linalg.inv(M)
    tri_err = np.abs(np.where(far, 0.0, Fhat) - Ftri).max() / np.abs(Ftri).max()
    ok = diag_err < 1e-9 and tri_err < 1e-9 and np.all(M[far] == 0.0)
    print(json.dumps({"check": "ok" if ok else "FAILED", "diag_err": diag_err, "tri_err": tri_err}))
    return 0 if ok else 1


def inverse_explicit(Ad, Gd):
    out = []
    for F in Ad + Gd:
        w, Q = np.linalg.eigh(F)
        out.append((Q / w) @ Q.T)
    L = len(Ad)
    return list(zip(out[L:], out[:L]))  # (Gd^-1, Ad^-1) per layer


def apply_explicit(inv, V):
    return [Gi @ Vi @ Ai for (Gi, Ai), Vi in zip(inv, V)]


def gemm_rate(dt, n=1000, reps=5):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, n)).astype(dt)
    b = rng.standard_normal((n, n)).astype(dt)
    a @ b
    return 2.0 * n**3 / best_of(reps, lambda: a @ b) / 1e9


def run_explicit(c, V, reps, res):
    """The explicit-inverse K-FAC in float64 and float32."""
    for name, dt in (("f64", np.float64), ("f32", np.float32)):
        c.abar = [a.astype(dt) for a in c.abar]
        c.g = [g.astype(dt) for g in c.g]
        c.A = [A.astype(dt) for A in c.A]
        c.G = [G.astype(dt) for G in c.G]
        Vt = [v.astype(dt) for v in V]
        res["factors_" + name] = best_of(reps, lambda: c.update_factors(False))
        Ad, Gd = c.damped()
        inv = inverse_explicit(Ad, Gd)
        res["inverse_explicit_" + name] = best_of(reps, lambda: inverse_explicit(Ad, Gd))
        res["apply_explicit_" + name] = best_of(reps, lambda: apply_explicit(inv, Vt))


def run_m(widths, m, reps, only, rng):
    c = Chain(widths, m, rng)
    if only == "explicit":
        res = {"m": m}
        run_explicit(c, [rng.standard_normal((no, ni)) for no, ni in zip(c.n_out, c.n_in)], reps, res)
        return res
    V = [rng.standard_normal((no, ni)) for no, ni in zip(c.n_out, c.n_in)]
    res = {"m": m}
    if only != "tri":
        res["factors"] = best_of(reps, lambda: c.update_factors(False))
    if only != "diag":
        res["factors_tri"] = best_of(reps, lambda: c.update_factors(True))
    Ad, Gd = c.damped()
    if only != "tri":
        inv = inverse_diag(Ad, Gd)
        res["inverse_diag"] = best_of(reps, lambda: inverse_diag(Ad, Gd))
        res["apply_diag"] = best_of(reps, lambda: apply_diag(inv, V))
    if only != "diag":
        t = inverse_tri(Ad, Gd, c.Ax, c.Gx)
        res["inverse_tri"] = best_of(reps, lambda: inverse_tri(Ad, Gd, c.Ax, c.Gx))
        res["apply_tri"] = best_of(reps, lambda: apply_tri(t, V))
    return res


def main():
    if ARGS.check:
        sys.exit(check())
    widths = QUICK if ARGS.quick else AUTOENCODER
    ms = ARGS.m or ([50] if ARGS.quick else [1000, 5000])
    reps = ARGS.reps or (1 if ARGS.quick else 3)
    rng = np.random.default_rng(1)
    results = [run_m(widths, m, reps, ARGS.only, rng) for m in ms]
    path, threads = blas_info()
    head = {
        "threads": threads,
        "blas": path,
        "numpy": np.__version__,
        "quick": ARGS.quick,
        "reps": reps,
        "layers": [[widths[i + 1], widths[i] + 1] for i in range(len(widths) - 1)],
    }
    if ARGS.only == "explicit":
        head["gemm_f64"] = gemm_rate(np.float64)
        head["gemm_f32"] = gemm_rate(np.float32)
    lines = [json.dumps(r) for r in results]
    print(json.dumps(head)[:-1] + ', "results": [\n' + ",\n".join(lines) + "\n]}")


if __name__ == "__main__":
    main()
