# SPDX-License-Identifier: MIT
"""Experiment 1: the deep autoencoder (Martens' thesis §4.12 and §6.13;
the K-FAC paper §7) on Fashion-MNIST.

Methods: SGD with Nesterov momentum through curvd (a small grid of
learning rates and momenta, each run on the full budget, the best kept as
the baseline), Adam
(torch), K-FAC block-diagonal and block-tridiagonal in adaptive mode, and
HF, all from the same sparse initialization and on the same objective
(sigmoid cross-entropy, no ℓ2: the thesis adds 1e-5 for K-FAC and SGD, HF
has no weight decay, so all five train the unregularized objective).

Metric, as the papers report it: the training reconstruction error, the
mean over examples of the summed squared error between the logistic
outputs and the pixels, on a fixed subset of the training images; with
the thesis' iterate averaging (ξ = 0.99) the lower of the current and the
averaged iterate's error.
"""

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch

from .models import autoencoder, parameter_count
from .runner import Budget, Method, RunResult, forward_in_chunks

NAME = "autoencoder"
TITLE = "Deep autoencoder on Fashion-MNIST"
METRIC = "error"  # min(recon_error, avg_recon_error)
AVERAGING = 0.99  # thesis §6.13


@dataclass
class Settings:
    dims: List[int]
    n_train: int
    n_eval: int
    budget: Budget
    sgd_lrs: List[float]
    sgd_momenta: List[float]
    adam_lrs: List[float]
    sgd_batch: int
    kfac_m1: int
    kfac_full_at: int
    hf_batch: int
    hf_cg_max: int
    kfac_lambda: float


def kfac_batches(m1: int, n: int, full_at: int):
    """Thesis §6.13: m_i = min(m1·exp((i − 1)/b), |S|), b such that
    m_{full_at} = |S| (the thesis: m1 = 1000, full_at = 500)."""
    if n <= m1:
        return lambda i: n
    b = (full_at - 1) / math.log(n / m1)
    return lambda i: int(min(m1 * math.exp((i - 1) / b), n))


def methods(s: Settings) -> List[Method]:
    out = []
    for lr in s.sgd_lrs:
        for mu in s.sgd_momenta:
            out.append(Method(f"sgd_lr{lr:g}_mu{mu:g}", f"SGD Nesterov lr={lr:g} μ={mu:g}",
                              "sgd", {"lr": lr, "momentum": mu, "nesterov": True},
                              s.sgd_batch, family="SGD (Nesterov)"))
    for lr in s.adam_lrs:
        out.append(Method(f"adam_lr{lr:g}", f"Adam lr={lr:g}", "torch_adam", {"lr": lr},
                          s.sgd_batch, family="Adam (torch)"))
    kfac = {"mode": "adaptive", "lambda_init": s.kfac_lambda, "weight_decay": 0.0}
    m = kfac_batches(s.kfac_m1, s.n_train, s.kfac_full_at)
    # The thesis' curvature batch, τ2 = 1/4 of m >= 1000: thousands of cases
    # see the gradient's directions, and the whole batch would cost 4x.
    quarter = {"curvature_fraction": 0.25}
    out.append(Method("kfac_blockdiag", "K-FAC block-diagonal", "kfac",
                      dict(kfac, inverse="blockdiag"), m, options=quarter))
    out.append(Method("kfac_tridiag", "K-FAC block-tridiagonal", "kfac",
                      dict(kfac, inverse="tridiag"), m, options=quarter))
    out.append(Method("hf", "HF", "hf", {"cg_max": s.hf_cg_max}, min(s.hf_batch, s.n_train)))
    return out


def make_evaluate(x_eval: torch.Tensor):
    def evaluate(model: torch.nn.Module) -> Dict[str, float]:
        z = forward_in_chunks(model, x_eval)
        recon = float(((torch.sigmoid(z) - x_eval) ** 2).sum(1).mean())
        ce = float(torch.nn.functional.binary_cross_entropy_with_logits(
            z, x_eval, reduction="none").sum(1).mean())
        return {"recon_error": recon, "train_loss": ce}
    return evaluate


def add_error(result: RunResult) -> None:
    """The reported error: the lower of the current and the averaged
    iterate's (thesis §6.13)."""
    for r in result.rows:
        r[METRIC] = min(r["recon_error"], r.get("avg_recon_error", math.inf))


def setup(data, s: Settings):
    """(flat training images, evaluation images, model factory)."""
    x = data.train_x.reshape(data.train_x.shape[0], -1)
    g = torch.Generator().manual_seed(1)
    x_eval = x[torch.randperm(x.shape[0], generator=g)[:s.n_eval]]
    return x, x_eval, lambda: autoencoder(s.dims)


def reach(rows: List[Dict[str, float]], target: float) -> Optional[Dict[str, float]]:
    """The first row whose error is at most @target."""
    for r in rows:
        if r[METRIC] <= target:
            return r
    return None


def final(result: RunResult) -> float:
    return result.rows[-1][METRIC] if result.rows else math.nan


def summarize(runs: List[RunResult], s: Settings) -> Dict:
    """Per run figures, the best of each family, and the anchors: how many
    fewer updates and how much less time K-FAC needs to reach the best
    SGD run's final error (TensorFlow's K-FAC: 14.7x and 3.8x; Martens'
    figures: orders of magnitude fewer iterations)."""
    table = []
    for r in runs:
        lambdas = [x["lambda"] for x in (r.steps or r.rows) if "lambda" in x]
        table.append({"lambda_first": lambdas[0] if lambdas else None,
                      "lambda_last": lambdas[-1] if lambdas else None,
                      "key": r.method.key, "label": r.method.label, "family": r.method.group,
                      "status": r.status, "iterations": r.iterations,
                      "seconds": r.seconds, "daemon_seconds": r.daemon_seconds,
                      "state_bytes": r.state_bytes, "final_error": final(r),
                      "best_error": min(x[METRIC] for x in r.rows) if r.rows else math.nan})
    best: Dict[str, str] = {}
    for t in table:
        f = t["family"]
        ok = t["status"] == "ok" and math.isfinite(t["final_error"])
        if ok and (f not in best or t["final_error"] < next(
                u["final_error"] for u in table if u["key"] == best[f])):
            best[f] = t["key"]
    by_key = {r.method.key: r for r in runs}
    anchors = []
    sgd = best.get("SGD (Nesterov)")
    if sgd:
        base = by_key[sgd]
        target = final(base)
        b = reach(base.rows, target)
        for key in ("kfac_blockdiag", "kfac_tridiag", "hf"):
            if key not in by_key:
                continue
            r = by_key[key]
            hit = reach(r.rows, target)
            a = {"key": key, "baseline": sgd, "target": target,
                 "baseline_iterations": b["iteration"], "baseline_seconds": b["time_s"]}
            if hit is not None:
                a.update(iterations=hit["iteration"], seconds=hit["time_s"],
                         update_ratio=b["iteration"] / max(hit["iteration"], 1),
                         time_ratio=b["time_s"] / max(hit["time_s"], 1e-9))
            else:  # the other way round: where SGD reached this method's final error
                other = reach(base.rows, final(r))
                a.update(iterations=None, seconds=None, final_error=final(r),
                         baseline_reached_at=(other["iteration"], other["time_s"])
                         if other else None)
            anchors.append(a)
    return {"runs": table, "best": best, "anchors": anchors,
            "parameters": parameter_count(autoencoder(s.dims))}
