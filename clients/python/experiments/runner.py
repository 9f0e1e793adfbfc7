# SPDX-License-Identifier: MIT
"""One training run of one method, measured: the loop both experiments
share.

A run draws mini-batches, steps the optimizer (a curvd session through
CurvdOptimizer, or a torch optimizer for the torch baselines), and at
evaluation points records a row: iteration, examples seen, the training
wall-clock time (evaluations excluded), the mean mini-batch loss since the
previous row, the experiment's metrics, and a few fields of the step's
report (damping, CG iterations). It stops at its budget (seconds of
training time, iterations, or both) or when the method diverges.
"""

import copy
import csv
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import torch

import curvd
from curvd.torch import CurvdOptimizer
from curvd.torch.losses import get_loss

from .progress import Progress

REPORT_FIELDS = ("lambda", "gamma", "alpha", "mu", "rho", "cg_iterations")
# A run's whole history: enough for its longest budget (the daemon's bound).
HISTORY_STEPS = 1000000
TORCH_KINDS = ("torch_adam",)


@dataclass
class Method:
    """One optimizer setting. kind: a curvd optimizer kind, or
    "torch_adam" (torch.optim.Adam with config's lr). batch: the mini-batch
    size, or a function of the iteration (1-based). family: runs of one
    method with different settings (a tuning grid) share it. options:
    further CurvdOptimizer arguments."""

    key: str
    label: str
    kind: str
    config: dict
    batch: Union[int, Callable[[int], int]]
    family: str = ""
    options: dict = field(default_factory=dict)

    def batch_size(self, it: int) -> int:
        return self.batch(it) if callable(self.batch) else self.batch

    @property
    def group(self) -> str:
        return self.family or self.label


@dataclass
class Budget:
    seconds: Optional[float] = None  # training wall-clock time
    iterations: Optional[int] = None
    evals: int = 40  # evaluations spread over the budget (plus a geometric start)

    def done(self, it: int, seconds: float) -> bool:
        return ((self.iterations is not None and it >= self.iterations) or
                (self.seconds is not None and seconds >= self.seconds))

    def eval_due(self, it: int, seconds: float, last_it: int, last_s: float) -> bool:
        if it <= 8 or (it & (it - 1)) == 0:  # 1..8, then powers of two: log-scale plots
            return True
        if self.iterations is not None and it - last_it >= max(1, self.iterations // self.evals):
            return True
        return self.seconds is not None and seconds - last_s >= self.seconds / self.evals


@dataclass
class RunResult:
    method: Method
    rows: List[Dict[str, float]]
    status: str  # "ok", "diverged at iteration k" or "failed: ..."
    seconds: float
    iterations: int
    session: Optional[str] = None
    daemon_seconds: Optional[float] = None
    state_bytes: Optional[int] = None  # the session's state blob at the end
    # Every step as the daemon's history kept it (curvd sessions only).
    steps: List[Dict[str, float]] = field(default_factory=list)


class Sampler:
    """Mini-batches of a fixed data set: random examples without
    replacement within a batch, from a seeded generator, so that every
    method sees the same sequence for the same batch sizes."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int):
        self.x, self.y = x, y
        self.gen = torch.Generator().manual_seed(seed)

    def draw(self, m: int):
        n = self.x.shape[0]
        i = torch.randperm(n, generator=self.gen)[:min(m, n)]
        return self.x[i], self.y[i]


class _TorchStepper:
    """A torch optimizer stepped like CurvdOptimizer: step(x, y) -> loss."""

    def __init__(self, model, method: Method, loss):
        self.model, self.loss = model, loss
        cfg = dict(method.config)
        self.opt = torch.optim.Adam(model.parameters(), **cfg)
        self.session, self.last_report = None, {}

    def step(self, x, y) -> float:
        self.opt.zero_grad()
        loss = self.loss.per_example(self.model(x), y).mean()
        loss.backward()
        self.opt.step()
        return float(loss)

    def close(self):
        pass


def step_rows(client: curvd.Client, session_id: str) -> List[Dict[str, float]]:
    """Every step of the session as the daemon's history holds it (GET
    /v1/sessions/{id}/steps): step, the loss sent, the report's numeric
    fields and the daemon's time split in ms (decode, step, encode, save;
    the commit is not in the history)."""
    rows = []
    for e in client.steps(session_id):
        row: Dict[str, float] = {"step": e["step"], "callbacks": e["callbacks"]}
        row.update((k, v) for k, v in e["report"].items() if _finite(v))
        row.update((f"{k}_ms", v) for k, v in (e.get("timing_ms") or {}).items() if _finite(v))
        rows.append(row)
    return rows


def forward_in_chunks(model: torch.nn.Module, x: torch.Tensor, chunk: int = 256):
    """model(x) a chunk of examples at a time: torch's CPU convolutions
    on thousands of images at once are ten times slower here than on a
    few hundred (measured on the small CNN, 10000 images)."""
    return torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class Averager:
    """Exponentially decayed iterate averaging (thesis §6.13: ξ = 0.99):
    avg ← ξ·avg + (1 − ξ)·θ after every iteration."""

    def __init__(self, model: torch.nn.Module, xi: float):
        self.xi = xi
        self.model = copy.deepcopy(model)
        self.pairs = list(zip(self.model.parameters(), model.parameters()))

    @torch.no_grad()
    def update(self) -> None:
        for a, p in self.pairs:
            a.mul_(self.xi).add_(p.detach(), alpha=1 - self.xi)


def train(method: Method, model: torch.nn.Module, sampler: Sampler, loss: str,
          evaluate: Callable[[torch.nn.Module], Dict[str, float]], budget: Budget,
          client: Optional[curvd.Client], progress: Progress, average: float = 0.0) -> RunResult:
    """Train @model with @method until @budget; @evaluate(model) gives the
    metrics of a row. With @average > 0 the averaged iterate is evaluated
    too (its metrics prefixed "avg_")."""
    loss_fn = get_loss(loss)
    if method.kind in TORCH_KINDS:
        opt = _TorchStepper(model, method, loss_fn)
    else:
        opt = CurvdOptimizer(model, client, method.kind, method.config, loss=loss_fn,
                             **method.options)
    if opt.session is not None:
        opt.session.set_history(HISTORY_STEPS)
    avg = Averager(model, average) if average > 0 else None
    rows: List[Dict[str, float]] = []
    it, examples, seconds, status = 0, 0, 0.0, "ok"
    last_it, last_s, losses = 0, 0.0, []

    def record():
        row = {"iteration": it, "examples": examples, "time_s": round(seconds, 4),
               "batch_loss": sum(losses) / len(losses) if losses else float("nan")}
        model.eval()
        with torch.no_grad():
            row.update(evaluate(model))
            if avg is not None:
                row.update({f"avg_{k}": v for k, v in evaluate(avg.model).items()})
        model.train()
        for k in REPORT_FIELDS:
            if _finite(opt.last_report.get(k)):
                row[k] = opt.last_report[k]
        rows.append(row)
        losses.clear()
        progress.update(it, seconds, row)

    record()
    try:
        while not budget.done(it, seconds):
            x, y = sampler.draw(method.batch_size(it + 1))
            t0 = time.perf_counter()
            value = opt.step(x, y)
            seconds += time.perf_counter() - t0
            it += 1
            examples += x.shape[0]
            if not _finite(value):
                status = f"diverged at iteration {it} (loss {value})"
                break
            losses.append(value)
            if avg is not None:
                avg.update()
            if budget.eval_due(it, seconds, last_it, last_s) or budget.done(it, seconds):
                record()
                last_it, last_s = it, seconds
            else:
                progress.update(it, seconds, None)
    except curvd.NonFinite as e:
        status = f"diverged at iteration {it + 1} ({e.reason}: {e.detail})"
    except curvd.CurvdError as e:
        status = f"failed at iteration {it + 1}: {e}"
    session = opt.session.id if opt.session is not None else None
    state_bytes, steps = None, []
    if opt.session is not None:
        try:
            state_bytes = len(opt.session.export_state())  # what each step commits
            steps = step_rows(opt.client, opt.session.id)
        except curvd.CurvdError:
            pass
    try:
        opt.close()  # deletes the session: frees the daemon's memory and database
    except curvd.CurvdError:
        pass
    return RunResult(method, rows, status, seconds, it, session, state_bytes=state_bytes,
                     steps=steps)


def write_csv(path: str, rows: List[Dict[str, float]]) -> None:
    """The rows, with the union of their keys as columns (blank where a
    row lacks one)."""
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def daemon_seconds(log_lines: List[str], session: Optional[str]) -> Optional[float]:
    """Seconds the daemon spent on @session's steps and callback answers,
    from its access log ("... POST /v1/sessions/<id>/steps... 200
    12.345ms ..."); the export and deletion after the run are not
    training."""
    if not session:
        return None
    total = 0.0
    for line in log_lines:
        if f"/v1/sessions/{session}/steps" in line:
            for word in line.split():
                if word.endswith("ms"):
                    try:
                        total += float(word[:-2])
                    except ValueError:
                        pass
    return total / 1000.0
