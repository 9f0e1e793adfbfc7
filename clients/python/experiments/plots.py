# SPDX-License-Identifier: MIT
"""PNG plots of the runs (matplotlib, Agg backend: no display needed)."""

import math
import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .runner import RunResult  # noqa: E402

DPI = 90


def _colors(families: List[str]) -> Dict[str, str]:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {f: cycle[i % len(cycle)] for i, f in enumerate(families)}


def _families(runs: List[RunResult]) -> List[str]:
    out: List[str] = []
    for r in runs:
        if r.method.group not in out:
            out.append(r.method.group)
    return out


def _curves(ax, runs, best, x, y, colors, log_x=False, log_y=False):
    """Every run, the best of each family bold and labelled, the rest
    thin (the tuning grid)."""
    best_keys = set(best.values())
    for r in runs:
        pts = [(row[x], row[y]) for row in r.rows
               if y in row and isinstance(row[y], float) and math.isfinite(row[y])]
        if log_x:
            pts = [(a, b) for a, b in pts if a > 0]
        if not pts:
            continue
        xs, ys = zip(*pts)
        top = r.method.key in best_keys
        ax.plot(xs, ys, color=colors[r.method.group], lw=2.0 if top else 0.8,
                alpha=1.0 if top else 0.45, ls="-" if top else "--",
                label=r.method.label if top else None)
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)


def _save(fig, out: str, name: str) -> str:
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=DPI)
    plt.close(fig)
    return name


def plot_damping(runs: List[RunResult], out: str, name: str, title: str) -> List[str]:
    """Every step's damping (λ, and K-FAC's γ dashed) and ρ of the runs that
    report them, from the daemon's step history (RunResult.steps); nothing
    when no run has one."""
    runs = [r for r in runs if any("lambda" in x for x in r.steps)]
    if not runs:
        return []
    colors = _colors(_families(runs))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for r in runs:
        c = colors[r.method.group]
        for key, style, ax in (("lambda", "-", axes[0]), ("gamma", "--", axes[0]),
                               ("rho", "-", axes[1])):
            pts = [(x["step"], x[key]) for x in r.steps if key in x]
            if pts:
                ax.plot(*zip(*pts), style, color=c, lw=1,
                        label=f"{r.method.label} {'γ' if key == 'gamma' else key}")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("damping λ (solid), γ (dashed)")
    axes[1].set_ylabel("reduction ratio ρ (steps that measured it)")
    axes[1].set_ylim(-1, 2)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title + " (every step, from GET /v1/sessions/{id}/steps)")
    return [_save(fig, out, name)]


def plot_autoencoder(summary: Dict, runs: List[RunResult], out: str) -> List[str]:
    colors = _colors(_families(runs))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    for ax, x, label in ((axes[0], "iteration", "iterations (updates)"),
                         (axes[1], "time_s", "training wall-clock time (s)")):
        _curves(ax, runs, summary["best"], x, "error", colors, log_x=True, log_y=True)
        ax.set_xlabel(label)
        ax.set_ylabel("training reconstruction error")
    axes[0].legend(fontsize=8)
    fig.suptitle("Deep autoencoder on Fashion-MNIST (thin dashed: the rest of each grid)")
    return [_save(fig, out, "autoencoder.png")] + plot_damping(
        runs, out, "autoencoder_damping.png", "Deep autoencoder: damping and ρ")


def plot_cnn(summary: Dict, runs: List[RunResult], out: str) -> List[str]:
    families = _families(runs)
    colors = _colors(families)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    only_best = [r for r in runs if r.method.key in set(summary["best"].values())]
    _curves(axes[0], only_best, summary["best"], "iteration", "train_loss", colors, log_y=True)
    axes[0].set_ylabel("training loss")
    _curves(axes[1], only_best, summary["best"], "iteration", "test_accuracy", colors)
    axes[1].set_ylabel("test accuracy")
    for ax in axes:
        ax.set_xlabel("iterations")
    axes[0].legend(fontsize=8)
    fig.suptitle("Small CNN (BMA paper Table 1) on Fashion-MNIST: best learning rate per method")
    names = [_save(fig, out, "cnn.png")]

    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    table = summary["runs"]
    for f in families:
        pts = sorted((t["lr"], t["final_train_loss"]) for t in table
                     if t["family"] == f and t["lr"] is not None)
        if pts:
            xs = [p[0] for p in pts]
            ys = [p[1] if math.isfinite(p[1]) else float("nan") for p in pts]
            ax.plot(xs, ys, "o-", color=colors[f], label=f)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("final training loss (gaps: diverged)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Learning-rate grid")
    names.append(_save(fig, out, "cnn_grid.png"))
    return names + plot_damping(runs, out, "cnn_damping.png", "Small CNN: K-FAC's damping and ρ")


def plot(name: str, summary: Dict, runs: List[RunResult], out: str) -> List[str]:
    return (plot_autoencoder if name == "autoencoder" else plot_cnn)(summary, runs, out)
