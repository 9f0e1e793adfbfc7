# SPDX-License-Identifier: MIT
"""The driver: flags, a daemon of its own, the runs, and the outputs
(a CSV per run, summary.json per experiment, PNG plots, README.md)."""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import torch

import curvd
from curvd.local import LocalDaemon

from . import autoencoder as ae
from . import cnn
from .data import fashion_mnist, generated
from .models import AUTOENCODER_DIMS
from .progress import Progress
from .runner import Budget, RunResult, Sampler, daemon_seconds, train, write_csv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
EXPERIMENTS = (ae.NAME, cnn.NAME)


def floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse(argv: List[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m experiments", description=__doc__)
    p.add_argument("--curvd", default=os.path.join(ROOT, "build", "curvd"),
                   help="the daemon binary (started on a free loopback port)")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "results"))
    p.add_argument("--data", choices=("fashion-mnist", "generated"), default="fashion-mnist",
                   help="generated: a tiny stand-in data set (for tests)")
    p.add_argument("--generated-side", type=int, default=28,
                   help="image side of the generated data (16 or more)")
    p.add_argument("--experiments", default=",".join(EXPERIMENTS),
                   help=f"comma-separated subset of {', '.join(EXPERIMENTS)}")
    p.add_argument("--full", action="store_true",
                   help="larger runs: all 60000 training images and 30 min per autoencoder "
                        "run (about 5 hours), 10000 iterations per CNN run")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch and OpenBLAS threads (trainer and daemon alternate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g = p.add_argument_group("autoencoder")
    g.add_argument("--budget", type=float, help="training seconds per run (default 200)")
    g.add_argument("--ae-iterations", type=int, help="iterations per run at most")
    g.add_argument("--ae-train-size", type=int, help="training images used (default 10000)")
    g.add_argument("--ae-eval-size", type=int, default=2000,
                   help="training images the reconstruction error is measured on")
    g.add_argument("--ae-dims", type=ints, default=list(AUTOENCODER_DIMS),
                   help="encoder sizes (the decoder mirrors them)")
    g.add_argument("--sgd-lrs", type=floats, default=[0.001, 0.003])
    g.add_argument("--sgd-momenta", type=floats, default=[0.9, 0.99])
    g.add_argument("--adam-lrs", type=floats, default=[1e-3])
    g.add_argument("--sgd-batch", type=int, default=500, help="thesis §6.13: 500 on MNIST")
    g.add_argument("--kfac-m1", type=int, default=1000, help="K-FAC's first mini-batch size")
    g.add_argument("--kfac-full-at", type=int, default=500,
                   help="iteration at which K-FAC's mini-batch is the whole training set")
    g.add_argument("--hf-batch", type=int, help="HF's mini-batch (default 2000; --full 7500)")
    g.add_argument("--hf-cg-max", type=int, help="HF's CG iterations at most (default 50; "
                                                  "--full 250)")
    g.add_argument("--ae-kfac-lambda", type=float, default=150.0)
    g = p.add_argument_group("cnn")
    g.add_argument("--iterations", type=int, help="iterations per run (default 1500)")
    g.add_argument("--cnn-seconds", type=float,
                   help="training seconds per run at most, a cap on a busy machine "
                        "(default 240; --full: none)")
    g.add_argument("--lrs", type=floats, default=list(cnn.LR_GRID),
                   help="learning-rate grid (the BMA paper's by default)")
    g.add_argument("--cnn-batch", type=int, default=128)
    g.add_argument("--cnn-eval-size", type=int, default=5000,
                   help="training images the training loss is measured on")
    g.add_argument("--cnn-kfac-lambda", type=float, default=1.0)
    a = p.parse_args(argv)
    a.experiments = [e.strip() for e in a.experiments.split(",") if e.strip()]
    for e in a.experiments:
        if e not in EXPERIMENTS:
            p.error(f"unknown experiment {e!r}; choose among {', '.join(EXPERIMENTS)}")
    full = a.full
    a.budget = a.budget if a.budget is not None else (1800.0 if full else 200.0)
    a.ae_train_size = a.ae_train_size or (60000 if full else 10000)
    a.hf_batch = a.hf_batch or (7500 if full else 2000)
    a.hf_cg_max = a.hf_cg_max or (250 if full else 50)
    a.iterations = a.iterations or (10000 if full else 1500)
    if a.cnn_seconds is None and not full:
        a.cnn_seconds = 240.0
    return a


def machine() -> Dict[str, str]:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"cores": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "torch": torch.__version__, "os": platform.platform(), "commit": commit}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


class Context:
    """What every run needs: the daemon, a client, the flags."""

    def __init__(self, args, daemon: LocalDaemon, client: curvd.Client):
        self.args, self.daemon, self.client = args, daemon, client

    def run(self, index: str, method, model, sampler, loss, evaluate, budget, shown,
            average=0.0) -> RunResult:
        progress = Progress(f"{index} {method.label}", budget.seconds, budget.iterations,
                            shown, self.args.quiet)
        result = train(method, model, sampler, loss, evaluate, budget, self.client, progress,
                       average)
        progress.close(result.status)
        if result.session:  # the session's last request is its deletion
            self.daemon.wait_for_log(f"DELETE /v1/sessions/{result.session}")
        result.daemon_seconds = daemon_seconds(self.daemon.log, result.session)
        return result


def run_autoencoder(ctx: Context, data, out: str) -> Dict:
    a = ctx.args
    s = ae.Settings(dims=a.ae_dims, n_train=0, n_eval=a.ae_eval_size,
                    budget=Budget(seconds=a.budget, iterations=a.ae_iterations, evals=25),
                    sgd_lrs=a.sgd_lrs, sgd_momenta=a.sgd_momenta, adam_lrs=a.adam_lrs,
                    sgd_batch=a.sgd_batch, kfac_m1=a.kfac_m1, kfac_full_at=a.kfac_full_at,
                    hf_batch=a.hf_batch, hf_cg_max=a.hf_cg_max, kfac_lambda=a.ae_kfac_lambda)
    n_available = data.train_x.shape[0]
    data = data.subsample(a.ae_train_size, 0, seed=a.seed)
    s.n_train = data.train_x.shape[0]
    pixels = data.train_x[0].numel()
    if s.dims[0] != pixels:
        raise SystemExit(f"experiments: --ae-dims starts with {s.dims[0]} inputs but the "
                         f"images have {pixels} pixels")
    x, x_eval, make_model = ae.setup(data, s)
    evaluate = ae.make_evaluate(x_eval)
    runs = []
    ms = ae.methods(s)
    for i, m in enumerate(ms, 1):
        r = ctx.run(f"[autoencoder {i}/{len(ms)}]", m, make_model(), Sampler(x, x, a.seed),
                    "binary_cross_entropy", evaluate, s.budget, "recon_error", ae.AVERAGING)
        ae.add_error(r)
        write_csv(os.path.join(out, ae.NAME, f"{m.key}.csv"), r.rows)
        if r.steps:
            write_csv(os.path.join(out, ae.NAME, f"{m.key}_steps.csv"), r.steps)
        runs.append(r)
    summary = ae.summarize(runs, s)
    summary["settings"] = {
        "n_train": s.n_train, "n_available": n_available, "n_eval": s.n_eval, "dims": s.dims,
        "budget_seconds": a.budget,
        "budget_iterations": a.ae_iterations, "sgd_batch": s.sgd_batch,
        "sgd_momenta": s.sgd_momenta, "kfac_m1": s.kfac_m1, "kfac_full_at": s.kfac_full_at,
        "hf_batch": s.hf_batch, "hf_cg_max": s.hf_cg_max, "kfac_lambda": s.kfac_lambda,
        "averaging": ae.AVERAGING}
    summary["methods"] = {m.key: {"kind": m.kind, "config": m.config} for m in ms}
    return summary, runs


def run_cnn(ctx: Context, data, out: str) -> Dict:
    a = ctx.args
    s = cnn.Settings(n_eval_train=a.cnn_eval_size, batch=a.cnn_batch, lrs=a.lrs,
                     budget=Budget(seconds=a.cnn_seconds, iterations=a.iterations, evals=25),
                     kfac_lambda=a.cnn_kfac_lambda)
    x, y, evaluate, make_model = cnn.setup(data, s)
    runs = []
    ms = cnn.methods(s)
    for i, m in enumerate(ms, 1):
        r = ctx.run(f"[cnn {i}/{len(ms)}]", m, make_model(), Sampler(x, y, a.seed),
                    "cross_entropy", evaluate, s.budget, "test_accuracy")
        write_csv(os.path.join(out, cnn.NAME, f"{m.key}.csv"), r.rows)
        if r.steps:
            write_csv(os.path.join(out, cnn.NAME, f"{m.key}_steps.csv"), r.steps)
        runs.append(r)
    summary = cnn.summarize(runs, s, data.train_x.shape[-1])
    summary["settings"] = {"n_train": x.shape[0], "n_eval_train": min(s.n_eval_train, x.shape[0]),
                           "n_test": data.test_x.shape[0], "batch": s.batch, "lrs": s.lrs,
                           "iterations": a.iterations, "seconds_cap": a.cnn_seconds,
                           "kfac_lambda": s.kfac_lambda}
    summary["methods"] = {m.key: {"kind": m.kind, "config": m.config, "options": m.options}
                          for m in ms}
    return summary, runs


RUNNERS = {ae.NAME: run_autoencoder, cnn.NAME: run_cnn}


def main(argv: List[str]) -> int:
    args = parse(argv)
    if not os.access(args.curvd, os.X_OK):
        print(f"experiments: no curvd at {args.curvd} (make build/curvd)", file=sys.stderr)
        return 2
    plots = None
    if not args.no_plots:
        from . import plots  # matplotlib: scripts/install-deps reproduce
    from . import report
    torch.set_num_threads(args.threads)
    data = (fashion_mnist() if args.data == "fashion-mnist" else
            generated(side=args.generated_side))
    meta = {"command": " ".join(shlex.quote(v) for v in ["python3", "-m", "experiments", *argv]),
            "via": os.environ.get("REPRODUCE_VIA", ""), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_start": load_average(), "data": data.name, "threads": args.threads,
            "experiments": {}}
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="curvd-reproduce-") as tmp, \
            LocalDaemon(args.curvd, tmp, extra=["--durability", "normal"],
                        env={"OPENBLAS_NUM_THREADS": str(args.threads),
                             "OMP_WAIT_POLICY": "PASSIVE"}) as daemon, \
            curvd.Client(daemon.url, timeout=600) as client:
        meta["curvd"] = client.version().get("curvd", "")
        ctx = Context(args, daemon, client)
        for name in args.experiments:
            summary, runs = RUNNERS[name](ctx, data, args.out)
            with open(os.path.join(args.out, name, "summary.json"), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1, default=str)
            if plots is not None:
                summary["plots"] = plots.plot(name, summary, runs, args.out)
            meta["experiments"][name] = summary
            meta["load_end"] = load_average()
            meta["minutes"] = round((time.monotonic() - started) / 60, 1)
            report.write_readme(args.out, meta)  # after each: a cut-off run keeps its summary
    return 0
