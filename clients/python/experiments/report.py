# SPDX-License-Identifier: MIT
"""docs/results/README.md: what ran, where, and what came out.

Everything here is computed from the runs (tables, comparisons with the
papers' anchors, divergences); the fixed text only says how the runs were
set up and what limits the comparison.
"""

import math
import os
from typing import Dict, List, Optional

ANCHOR_UPDATES = 14.7  # TensorFlow's K-FAC against SGD with momentum (issue 6)
ANCHOR_TIME = 3.8


def _num(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}"


def _pct(part: Optional[float], whole: float) -> str:
    if part is None or whole <= 0:
        return "–"
    return f"{_num(part, 3)} ({100 * part / whole:.0f}%)"


def _mb(n: Optional[int]) -> str:
    return f"{n / 1e6:.0f} MB" if n else "size unknown"


def _updates(n: int) -> str:
    return f"{n} update" + ("" if n == 1 else "s")


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _failures(runs: List[Dict]) -> List[str]:
    return [f"{t['label']}: {t['status']}" for t in runs if t["status"] != "ok"]


# ---- experiment 1 -----------------------------------------------------------

def _autoencoder(s: Dict) -> List[str]:
    st = s["settings"]
    best = set(s["best"].values())
    lines = [
        "## 1. Deep autoencoder (thesis §4.12, §6.13; K-FAC paper §7)", "",
        f"{'-'.join(map(str, st['dims']))} with the mirrored decoder "
        f"({s['parameters']:,} parameters), logistic hidden units, a linear code layer, "
        "sigmoid cross-entropy, sparse initialization (15 incoming weights per unit, "
        "Martens 2010). **Subsampling:** "
        + (f"{st['n_train']} training images (a fixed random subset of the "
           f"{st['n_available']}) instead of all, " if st["n_train"] < st["n_available"] else
           f"all {st['n_train']} training images, ")
        + f"each run limited to {_num(st['budget_seconds'])} s of training time"
        + (f" or {st['budget_iterations']} iterations" if st["budget_iterations"] else "")
        + f" (the thesis' runs take hours); the error is measured on {st['n_eval']} of "
        "those training images, for the current and the averaged iterate "
        f"(ξ = {st['averaging']}, thesis §6.13), and the lower is reported. "
        f"SGD: Nesterov momentum, m = {st['sgd_batch']}, the grid of learning rates and "
        "momenta below (each point on the full budget). Adam: torch's, "
        f"m = {st['sgd_batch']}. K-FAC: adaptive mode (thesis defaults, λ₀ = "
        f"{_num(st['kfac_lambda'])}), m growing as m₁·exp((i−1)/b) from "
        f"{st['kfac_m1']} to the whole subset at iteration {st['kfac_full_at']} "
        f"(§6.13). HF: m = {st['hf_batch']}, curvature on the first quarter, "
        f"at most {st['hf_cg_max']} CG iterations. No ℓ2 term for any method.", ""]
    rows = []
    for t in s["runs"]:
        name = f"**{t['label']}**" if t["key"] in best else t["label"]
        rows.append([name, _num(t["iterations"]), _num(t["seconds"], 4),
                     _pct(t["daemon_seconds"], t["seconds"]), _num(t["final_error"]),
                     _num(t["best_error"]), t["status"]])
    lines += _table(["method", "iterations", "training s", "of which in curvd s",
                     "final error", "lowest error", "status"], rows)
    lines += ["", "Bold: the best setting of each method (lowest final error). \"In curvd\": "
              "time the daemon spent on the session's requests (its access log), the rest "
              "being the trainer's forward/backward passes, callbacks and HTTP transfer.", ""]
    for p in s.get("plots", []):
        lines += [f"![{p}]({p})", ""]
    return lines


def _anchor_lines(s: Dict) -> List[str]:
    out = []
    labels = {t["key"]: t["label"] for t in s["runs"]}
    for a in s["anchors"]:
        name, base = labels[a["key"]], labels[a["baseline"]]
        if a["iterations"] is not None:
            u, t = a["update_ratio"], a["time_ratio"]
            updates = f"{u:.1f}x fewer updates" if u >= 1 else f"{1 / u:.2f}x more updates"
            time_ = (f"{t:.2f}x less time" if t >= 1 else
                     f"{1 / t:.2f}x more time, a loss on wall-clock time")
            out.append(
                f"{name} reached the best SGD run's final error ({_num(a['target'])}, "
                f"{base}) after {_updates(a['iterations'])} and {_num(a['seconds'], 3)} s, "
                f"SGD after {_updates(a['baseline_iterations'])} and "
                f"{_num(a['baseline_seconds'], 3)} s: **{updates} and {time_}** "
                f"(TensorFlow's K-FAC: {ANCHOR_UPDATES}x fewer updates and {ANCHOR_TIME}x less "
                "time).")
        else:
            at = a.get("baseline_reached_at")
            where = (f"SGD had reached that error after {_updates(at[0])} and "
                     f"{_num(at[1], 3)} s" if at else "SGD never had an error that high")
            out.append(f"{name} did **not** reach the best SGD run's final error "
                       f"({_num(a['target'])}) within its budget: it ended at "
                       f"{_num(a['final_error'])}; {where}. On this budget it loses to SGD.")
    return out


def _autoencoder_findings(s: Dict) -> List[str]:
    runs = {t["key"]: t for t in s["runs"]}
    ranked = sorted((runs[k] for k in s["best"].values()), key=lambda t: t["final_error"])
    out = ["Final training reconstruction error, best setting of each method: " + ", ".join(
        f"{t['label']} {_num(t['final_error'])}" for t in ranked) + "."]
    out += _anchor_lines(s)
    per_it = [(t["label"], t["seconds"] / t["iterations"]) for t in ranked if t["iterations"]]
    out.append("Cost per update: " + ", ".join(f"{n} {v:.2f} s" for n, v in per_it) + ".")
    shares = [f"{t['label']} {100 * t['daemon_seconds'] / t['seconds']:.0f}% "
              f"(state {_mb(t['state_bytes'])})" for t in ranked
              if t["daemon_seconds"] is not None and t["seconds"] > 0]
    if shares:
        out.append("Share of the training time spent in the daemon (the update's arithmetic "
                   "and making each step durable in SQLite: its input logged, the state "
                   "snapshotted at intervals; the rest "
                   "is the trainer's passes, callbacks and transfers): " + ", ".join(shares)
                   + ".")
    damping = [f"{t['label']} {_num(t['lambda_first'], 3)} → {_num(t['lambda_last'], 3)}"
               for t in ranked if t.get("lambda_first") is not None]
    if damping:
        out.append("Damping λ over the run (first and last step): " + ", ".join(damping)
                   + f"; K-FAC starts from λ₀ = {_num(s['settings']['kfac_lambda'])} (the "
                   "thesis' is 150) and lowers it by at most a factor 0.9⁵ every 5 "
                   "iterations (kfac-jax's pace; the thesis' (19/20)⁵ left the run "
                   "damping-bound: docs/NOTES.md), so a short run spends its first updates "
                   "strongly damped.")
    out += _failures(s["runs"])
    return out


# ---- experiment 2 -----------------------------------------------------------

def _cnn(s: Dict) -> List[str]:
    st = s["settings"]
    lines = [
        "## 2. The BMA paper's small CNN (its Table 1)", "",
        f"Four 3x3 convolutions with 3 channels (padding 1, tanh, 2x2 max pooling) and a "
        f"10-way dense layer: {s['parameters']} parameters (the paper's Table 3: 322 on "
        f"MNIST). Softmax cross-entropy, m = {st['batch']}, {st['iterations']} iterations per "
        f"run on all {st['n_train']} training images (the paper does not give its batch size "
        f"or run length)"
        + (f", each run cut at {_num(st['seconds_cap'])} s of training time if it has not "
           "finished by then (a cap for a busy machine; the tables give the iterations each "
           "run reached)" if st.get("seconds_cap") else "")
        + f". Training loss on {st['n_eval_train']} fixed training images, "
        f"accuracy on the {st['n_test']} test images. Learning-rate grid "
        f"{{{', '.join(_num(v) for v in st['lrs'])}}}"
        + (" (the BMA paper's, §7)" if len(st["lrs"]) == 5 else
           " (**subsampled** from the BMA paper's {1, 0.1, 0.01, 0.001, 0.0001})")
        + ", for every method but K-FAC, whose adaptive mode chooses its own step (α, μ: "
        f"thesis §6.6.4-6.7; λ₀ = {_num(st['kfac_lambda'])}), run once with lr 1 and once "
        "with lr multiplied by 0.3 at iterations 500 and 1000 (lr scales K-FAC's chosen "
        "step). AdaGrad-BMA partitions each "
        "layer's weights and biases apart (L = 2l = 10, §7). MBAG: τ = 32 for the dense "
        "weights and the biases, one group per (out, in) filter pair (κ² = 9) for the "
        "convolutions, λ = 0.01, β = 0.9, T_sqr = 50, T_NS = 5 (the MBAG paper's CIFAR-10 "
        "settings).", ""]
    runs = {t["key"]: t for t in s["runs"]}
    rows = []
    for f, k in s["best"].items():
        t = runs[k]
        rows.append([f, _num(t["lr"]), _num(t["iterations"]), _num(t["final_train_loss"]),
                     _num(t["final_test_accuracy"]), _num(t["best_test_accuracy"]),
                     _num(t["seconds"], 3), _pct(t["daemon_seconds"], t["seconds"])])
    lines += _table(["method", "best η", "iterations", "final training loss",
                     "final test accuracy", "best test accuracy", "training s",
                     "of which in curvd s"], rows)
    lines += ["", "The whole grid (final training loss / test accuracy):", ""]
    families = list(dict.fromkeys(t["family"] for t in s["runs"] if t["lr"] is not None))
    lrs = st["lrs"]
    grid = []
    for f in families:
        row = [f]
        for lr in lrs:
            t = next((u for u in s["runs"] if u["family"] == f and u["lr"] == lr), None)
            if t is None:
                row.append("")
            elif t["status"] != "ok":
                row.append("diverged" if t["status"].startswith("diverged") else "failed")
            else:
                row.append(f"{_num(t['final_train_loss'], 3)} / "
                           f"{_num(t['final_test_accuracy'], 3)}")
        grid.append(row)
    lines += _table(["method"] + [f"η = {_num(v)}" for v in lrs], grid) + [""]
    for p in s.get("plots", []):
        lines += [f"![{p}]({p})", ""]
    return lines


def _cnn_findings(s: Dict) -> List[str]:
    runs = {t["key"]: t for t in s["runs"]}
    best = {f: runs[k] for f, k in s["best"].items()}
    ranked = sorted(best.values(), key=lambda t: t["final_train_loss"])
    out = ["Final training loss, best η of each method: " + ", ".join(
        f"{t['family']} {_num(t['final_train_loss'])}" for t in ranked) + "; test accuracy: "
        + ", ".join(f"{t['family']} {_num(t['final_test_accuracy'], 3)}" for t in ranked) + "."]
    d, f, b = best.get("AdaGrad-diag"), best.get("AdaGrad-full"), best.get("AdaGrad-BMA")
    if d and b:
        verdict = ("lower than" if b["final_train_loss"] < d["final_train_loss"] else
                   "not lower than")
        out.append(f"The BMA paper's claim, AdaGrad-BMA ahead of AdaGrad-diag: here BMA's "
                   f"final training loss {_num(b['final_train_loss'])} is {verdict} diag's "
                   f"{_num(d['final_train_loss'])}"
                   + (f", and full-matrix AdaGrad ended at {_num(f['final_train_loss'])}"
                      if f else "") + ".")
    per_it = [(t["family"], 1000 * t["seconds"] / t["iterations"]) for t in ranked
              if t["iterations"]]
    out.append("Cost per update (ms, trainer and daemon together): " + ", ".join(
        f"{n} {v:.1f}" for n, v in per_it) + ".")
    short = [t for t in s["runs"] if t["status"] == "ok"
             and t["iterations"] < s["settings"]["iterations"]]
    if short:
        out.append("Cut by the time cap before " + f"{s['settings']['iterations']} iterations "
                   "(their final figures are at fewer iterations than the others'): "
                   + ", ".join(f"{t['label']} ({t['iterations']})" for t in short) + ".")
    div = [t for t in s["runs"] if t["status"] != "ok"]
    if div:
        out.append("Diverged or failed: " + "; ".join(_failures(s["runs"])) + ".")
    out += [_rose(t) for t in ranked if _diverged(t)]
    return out


def _diverged(t: Dict) -> bool:
    """A run that finished but ended above the loss it started from."""
    first = t.get("first_train_loss", math.nan)
    return t["status"] == "ok" and math.isfinite(first) and not t["final_train_loss"] <= first


def _rose(t: Dict) -> str:
    lam = t.get("lambda_lowest")
    return (f"{t['family']} diverged: training loss {_num(t['first_train_loss'])} at the "
            f"start, {_num(t['lowest_train_loss'])} at its lowest (iteration "
            f"{t['lowest_at']}), {_num(t['final_train_loss'])} at the end"
            + (f"; its damping λ fell as low as {_num(lam, 3)}, where the step's re-scaling "
               "by the exact Fisher is barely damped" if lam is not None else "") + ".")


# ---- the file ---------------------------------------------------------------

CAVEATS = [
    "Fashion-MNIST, not MNIST (MNIST is not packaged in Debian; Fashion-MNIST is its "
    "drop-in replacement): absolute errors are not comparable with the papers' (e.g. the "
    "thesis' Table 4.3, MNIST autoencoder 1.64 after hours of HF); the ratios between "
    "methods are what compares.",
    "Short budgets on 2 shared CPU cores instead of the papers' GPU runs of hours: the "
    "curves show the first minutes of optimization, where the ranking can differ from the "
    "papers' long runs.",
    "Every curvd step is a real HTTP exchange with the daemon on the same machine (binary "
    "tensors, FP32), and the daemon makes every step durable in SQLite before it replies "
    "(`--durability normal`: the step's input is logged and the state snapshotted at "
    "intervals, docs/DURABILITY.md); wall-clock figures include both, and the daemon and the "
    "trainer share the two cores.",
    "The machine is shared: the load averages above include other work, which slows every "
    "method; iteration counts within a time budget vary from run to run.",
]


def write_readme(out: str, meta: Dict) -> str:
    m = meta["machine"]
    lines = ["# The papers' experiments, run through curvd", "",
             "Written by `clients/python/experiments` (`make reproduce`); every number below "
             "comes from the CSV files next to this file (one per run).", "",
             f"- Command: `{meta['via'] or meta['command']}`"
             + (f" (which ran `{meta['command']}`)" if meta["via"] else ""),
             f"- Date: {meta['date']}; {meta.get('minutes', '?')} minutes in all",
             f"- Machine: {m['cores']} cores, {m['cpu']}; {meta['threads']} torch/OpenBLAS "
             f"threads; load average (1, 5, 15 min) {meta['load_start']} at the start, "
             f"{meta.get('load_end', '?')} at the end",
             f"- Software: curvd {meta.get('curvd', '?')} (commit {m['commit'] or '?'}), "
             f"Python {m['python']}, torch {m['torch']}, {m['os']}",
             f"- Data: {meta['data']}", ""]
    exps = meta["experiments"]
    if "autoencoder" in exps:
        lines += _autoencoder(exps["autoencoder"])
    if "cnn" in exps:
        lines += _cnn(exps["cnn"])
    lines += ["## Findings", ""]
    if "autoencoder" in exps:
        lines += [f"- Autoencoder: {x}" for x in _autoencoder_findings(exps["autoencoder"])]
    if "cnn" in exps:
        lines += [f"- CNN: {x}" for x in _cnn_findings(exps["cnn"])]
    lines += ["", "## Limits of the comparison", ""] + [f"- {c}" for c in CAVEATS] + [""]
    path = os.path.join(out, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return path
