# SPDX-License-Identifier: MIT
"""Experiment 2: the BMA paper's small CNN (its Table 1, 322 parameters)
on Fashion-MNIST, softmax cross-entropy.

Methods, each over the BMA paper's learning-rate grid η ∈ {1, 0.1, 0.01,
0.001, 0.0001} (§7; the best run of each is compared, as the paper
reports the best): AdaGrad-diag, AdaGrad-full, AdaGrad-BMA (weights and
biases of each layer as separate blocks: L = 2l = 10, as §7), MBAG (the
MBAG paper's groups: τ = 32 for dense weights and biases, one group per
(out, in) filter pair of κ² = 9 for the convolutions, λ = 0.01, β = 0.9,
T_sqr = 50, T_NS = 5 as its CIFAR-10 runs) and Adam (torch). K-FAC runs in
adaptive mode, which chooses its own step size (α, μ by the thesis'
§6.6.4-6.7), so it has no learning rate to grid: one run (and one with an
lr decay); and once in simple mode with its defaults.

Metrics: the training loss on a fixed subset of the training images and
the accuracy on the test images.
"""

import math
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F

from .models import parameter_count, small_cnn
from .runner import Budget, Method, RunResult, forward_in_chunks

NAME = "cnn"
TITLE = "BMA paper's small CNN on Fashion-MNIST"
METRIC = "train_loss"
LR_GRID = (1.0, 0.1, 0.01, 0.001, 0.0001)  # BMA paper §7

FAMILIES = (  # key, label, kind, config, CurvdOptimizer options
    ("adagrad_diag", "AdaGrad-diag", "adagrad_diag", {}, {}),
    ("adagrad_full", "AdaGrad-full", "adagrad_full", {}, {}),
    ("adagrad_bma", "AdaGrad-BMA", "adagrad_bma", {"partition": "block"}, {"bias_blocks": True}),
    ("mbag", "MBAG", "mbag",
     {"tau": 32, "conv_tau": 0, "lambda": 0.01, "beta": 0.9, "t_sqr": 50, "t_ns": 5}, {}),
    ("adam", "Adam (torch)", "torch_adam", {}, {}),
)


@dataclass
class Settings:
    n_eval_train: int
    batch: int
    lrs: List[float]
    budget: Budget
    kfac_lambda: float


def methods(s: Settings) -> List[Method]:
    out = []
    for key, label, kind, config, options in FAMILIES:
        for lr in s.lrs:
            out.append(Method(f"{key}_lr{lr:g}", f"{label} lr={lr:g}", kind,
                              dict(config, lr=lr), s.batch, family=label, options=options))
    kfac = {"mode": "adaptive", "lambda_init": s.kfac_lambda, "weight_decay": 0.0}
    out.append(Method("kfac", "K-FAC (adaptive)", "kfac", kfac, s.batch,
                      family="K-FAC (adaptive)"))
    # At m = 128 each step solves its batch's model, a noise floor that a
    # decaying lr (a multiplier of K-FAC's step) lowers: docs/NOTES.md.
    decay = dict(kfac, lr_schedule="multistep", lr_milestones="500,1000", lr_gamma=0.3)
    out.append(Method("kfac_decay", "K-FAC (adaptive, lr ×0.3 at 500, 1000)", "kfac", decay,
                      s.batch, family="K-FAC (adaptive, lr decay)"))
    # Simple mode with its defaults (damping, KL clip, momentum, lr 1): the
    # fixed-step form, one run like adaptive mode (docs/NOTES.md, "K-FAC
    # simple mode's defaults").
    simple = {"mode": "simple", "weight_decay": 0.0}
    out.append(Method("kfac_simple", "K-FAC (simple)", "kfac", simple, s.batch,
                      family="K-FAC (simple)"))
    return out


def make_evaluate(x_train, y_train, x_test, y_test):
    def evaluate(model: torch.nn.Module) -> Dict[str, float]:
        loss = float(F.cross_entropy(forward_in_chunks(model, x_train), y_train))
        acc = float((forward_in_chunks(model, x_test).argmax(1) == y_test)
                    .to(torch.float32).mean())
        return {"train_loss": loss, "test_accuracy": acc}
    return evaluate


def setup(data, s: Settings):
    """(training images, labels, evaluate, model factory)."""
    g = torch.Generator().manual_seed(1)
    i = torch.randperm(data.train_x.shape[0], generator=g)[:s.n_eval_train]
    evaluate = make_evaluate(data.train_x[i], data.train_y[i], data.test_x, data.test_y)
    side = data.train_x.shape[-1]
    return data.train_x, data.train_y, evaluate, lambda: small_cnn(side=side)


def _final(r: RunResult, key: str) -> float:
    return r.rows[-1].get(key, math.nan) if r.rows and r.status == "ok" else math.nan


def _trajectory(r: RunResult) -> Dict:
    """The training loss at the start and at its lowest (with the iteration),
    and the lowest damping λ a run reported: what a divergence finding needs."""
    losses = [(x["iteration"], x["train_loss"]) for x in r.rows
              if math.isfinite(x.get("train_loss", math.nan))]
    lambdas = [x["lambda"] for x in (r.steps or r.rows)
               if math.isfinite(x.get("lambda", math.nan))]
    low = min(losses, key=lambda p: p[1], default=(None, math.nan))
    return {"first_train_loss": losses[0][1] if losses else math.nan,
            "lowest_train_loss": low[1], "lowest_at": low[0],
            "lambda_lowest": min(lambdas, default=None)}


def summarize(runs: List[RunResult], s: Settings, side: int) -> Dict:
    """Per run figures and, per method, the learning rate with the lowest
    final training loss (the paper reports each method's best)."""
    table, best = [], {}
    for r in runs:
        t = {"key": r.method.key, "label": r.method.label, "family": r.method.group,
             "lr": r.method.config.get("lr"), "status": r.status, "iterations": r.iterations,
             "seconds": r.seconds, "daemon_seconds": r.daemon_seconds,
             "state_bytes": r.state_bytes,
             "final_train_loss": _final(r, "train_loss"),
             "final_test_accuracy": _final(r, "test_accuracy"),
             "best_test_accuracy": max((x["test_accuracy"] for x in r.rows), default=math.nan)}
        t.update(_trajectory(r))
        table.append(t)
        f, v = t["family"], t["final_train_loss"]
        if math.isfinite(v) and (f not in best or v < best[f][1]):
            best[f] = (t["key"], v)
    return {"runs": table, "best": {f: k for f, (k, _) in best.items()},
            "parameters": parameter_count(small_cnn(side=side))}
