# SPDX-License-Identifier: MIT
"""Progress bars: tqdm when it is installed (Debian's python3-tqdm, in
scripts/install-deps' reproduce group), a line per evaluation otherwise,
nothing when quiet."""

import sys
import time
from typing import Dict, Optional

try:
    from tqdm import tqdm
except ImportError:  # the end-to-end test runs without it
    tqdm = None


class Progress:
    """One bar per run. The bar's total is the run's budget: seconds of
    training time, or iterations when it has no time limit."""

    def __init__(self, label: str, seconds: Optional[float], iterations: Optional[int],
                 shown: str, quiet: bool = False):
        self.label = label
        self.by_time = seconds is not None
        self.total = seconds if self.by_time else iterations
        self.shown = shown  # the metric shown beside the bar
        self.quiet = quiet
        self.bar = None
        self.started = time.monotonic()
        if not quiet and tqdm is not None:
            self.bar = tqdm(total=self.total, desc=label, unit="s" if self.by_time else "it",
                            dynamic_ncols=True, leave=True, file=sys.stderr,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}]"
                                       "{postfix}")

    def update(self, it: int, seconds: float, row: Optional[Dict[str, float]]) -> None:
        if self.quiet:
            return
        done = min(seconds if self.by_time else it, self.total)
        post = f"it {it}"
        if row is not None and self.shown in row:
            post += f", {self.shown} {row[self.shown]:.4g}"
        if self.bar is not None:
            self.bar.n = done
            if row is not None:
                self.bar.set_postfix_str(post, refresh=False)
            self.bar.refresh()
        elif row is not None:
            print(f"{self.label}: {done:.0f}/{self.total:.0f} "
                  f"{'s' if self.by_time else 'it'}, {post}", file=sys.stderr, flush=True)

    def close(self, status: str) -> None:
        if self.bar is not None:
            if status != "ok":
                self.bar.set_postfix_str(status[:60])
            self.bar.close()
        elif not self.quiet:
            print(f"{self.label}: {status} after {time.monotonic() - self.started:.0f} s",
                  file=sys.stderr, flush=True)
