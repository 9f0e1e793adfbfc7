# SPDX-License-Identifier: MIT
"""StepLog: what a training loop shows and keeps of each curvd step.

    log = StepLog(log=True, bar=True, total=1000, csv="run.csv")
    opt = CurvdOptimizer(model, url, "kfac", progress=log)

After every step CurvdOptimizer hands it a row: the step, its loss, the
report's figures (lambda, rho, alpha, ...), the step's wall time and the
daemon's share of it (the Server-Timing of the step's exchanges over that
time). StepLog then, as asked:

- logs one line through `logging` (logger "curvd.progress", level INFO,
  every `every` steps);
- moves a tqdm progress bar (python3-tqdm; when it is not installed the
  bar is left out with a warning);
- appends the row to a CSV file, flushed at once, so the file is the
  history as it goes (its columns are fixed by the first row: the core
  ones, then that step's report figures);
- writes TensorBoard scalars when torch.utils.tensorboard (the tensorboard
  package, not in Debian 12) is importable, else warns.

The daemon keeps the same history (Client.steps()); StepLog is the local,
as-it-happens copy.
"""

import csv as _csv
import logging
import math
import warnings
from typing import Optional

LOGGER = logging.getLogger("curvd.progress")

# Columns every CSV has, before the report's own figures.
CORE = ("step", "loss", "step_time_s", "daemon_s", "daemon_share")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


class StepLog:
    """See the module's documentation. csv: a path (truncated) or an open
    text file; tensorboard: a log directory."""

    def __init__(self, *, log: bool = False, logger: Optional[logging.Logger] = None,
                 level: int = logging.INFO, every: int = 1, bar: bool = False,
                 total: Optional[int] = None, csv=None, tensorboard: Optional[str] = None):
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.log = log
        self.logger = logger or LOGGER
        self.level = level
        self.every = every
        self.rows = 0
        self.bar = self._tqdm(total) if bar else None
        self._own_file = isinstance(csv, str)
        self._file = open(csv, "w", newline="") if self._own_file else csv
        self._csv = None
        self.columns = None
        self.tb = self._summary_writer(tensorboard) if tensorboard else None

    @staticmethod
    def _tqdm(total):
        try:
            from tqdm import tqdm
        except ImportError:
            warnings.warn("StepLog(bar=True) needs tqdm (apt-get install python3-tqdm); "
                          "no progress bar", RuntimeWarning, stacklevel=3)
            return None
        return tqdm(total=total, unit="step")

    @staticmethod
    def _summary_writer(logdir):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("StepLog(tensorboard=...) needs the tensorboard package (not in "
                          "Debian 12: pip install tensorboard); no event files",
                          RuntimeWarning, stacklevel=3)
            return None
        return SummaryWriter(logdir)

    def record(self, row: dict) -> None:
        """One step's row: CORE's keys and the report's figures."""
        self.rows += 1
        if self.log and (self.rows - 1) % self.every == 0:
            lam = row.get("lambda", row.get("gamma"))
            share = row.get("daemon_share")
            self.logger.log(self.level, "step %s loss %s lambda %s rho %s %.1f ms (daemon %s)",
                            row.get("step"), _fmt(row.get("loss")), _fmt(lam),
                            _fmt(row.get("rho")), 1e3 * (row.get("step_time_s") or 0),
                            "-" if share is None else f"{100 * share:.0f}%")
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: _fmt(row.get(k)) for k in ("loss", "lambda", "rho")
                                  if row.get(k) is not None}, refresh=False)
        if self._file is not None:
            self._write_csv(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, row["step"])

    def _write_csv(self, row: dict) -> None:
        if self._csv is None:
            extra = [k for k, v in row.items()
                     if k not in CORE and isinstance(v, (int, float, str))]
            self.columns = list(CORE) + extra
            self._csv = _csv.DictWriter(self._file, self.columns, extrasaction="ignore")
            self._csv.writeheader()
        self._csv.writerow({k: row.get(k, "") for k in self.columns})
        self._file.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self._own_file and self._file is not None:
            self._file.close()
        self._file = None
        if self.tb is not None:
            self.tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
