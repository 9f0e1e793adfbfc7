# SPDX-License-Identifier: MIT
"""The cluster test (issue 24): HAProxy (deploy/haproxy.cfg) and three
daemons on one database, all on loopback; eight trainers step their
sessions through HAProxy with the Python client; one daemon is killed
with SIGKILL in the middle.

Every trainer checks each update against SGD with heavy-ball momentum
computed here (v <- mu v + g, update = -lr v): a step applied twice or an
acknowledged step lost would change every later update. At the end a
step with a zero gradient reads the momentum buffer back (-lr mu v) and
the session's step count must be the number of steps sent. Sessions of
the daemons that stay up must not move.

    /usr/bin/python3 tests/cluster/test_cluster.py build/curvd [--db URL]

Exit 0: passed; 1: failed; 77: skipped (no haproxy).
"""

import argparse
import os
import signal
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "clients", "python"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import curvd  # noqa: E402
from cluster import Cluster, haproxy_binary, longest_wait, wait_until  # noqa: E402

TRAINERS = 8
STEPS = 60
GATE = 40  # no trainer posts a step past this before the kill
LR, MU = 0.1, 0.9
DIM = 6
LAYOUT = [{"name": "w", "kind": "vector", "shape": [DIM]}]
# What deploy/haproxy.cfg's checks allow: down after 2 failed checks at
# fastinter 500 ms, each allowed `timeout check` 1 s (a refused connection
# of real traffic marks a server down at once).
CHECK_BOUND_S = 2 * (0.5 + 1.0)


def gradient(trainer: int, step: int) -> np.ndarray:
    return np.sin(0.7 * trainer + 1.3 * step + np.arange(DIM))


class Trainer(threading.Thread):
    def __init__(self, index: int, url: str, gate: threading.Event):
        super().__init__(daemon=True)
        self.index, self.url, self.gate = index, url, gate
        self.session_id = None
        self.done = 0  # steps acknowledged
        self.acks = []  # (posted, answered): monotonic times of each step
        self.failure = None

    def run(self):
        try:
            self._train()
        except Exception as e:  # reported by the main thread
            self.failure = f"trainer {self.index}: {e.__class__.__name__}: {e}"

    def _train(self):
        with curvd.Client(self.url, retry_budget=60.0, retry_wait=0.05) as c:
            s = c.create_session("sgd", LAYOUT, {"lr": LR, "momentum": MU}, keep=True)
            self.session_id = s.id
            v = np.zeros(DIM)
            for t in range(1, STEPS + 1):
                if t == GATE + 1:
                    self.gate.wait()
                g = gradient(self.index, t)
                posted = time.monotonic()
                r = c.step(s.id, t, {"w": g}, datatype="FP64")
                self.acks.append((posted, time.monotonic()))
                v = MU * v + g
                self._expect(r, t, -LR * v, "update")
                self.done = t
            # The final state: a zero gradient's update is -lr mu v.
            r = c.step(s.id, STEPS + 1, {"w": np.zeros(DIM)}, datatype="FP64")
            self._expect(r, STEPS + 1, -LR * MU * v, "momentum buffer")
            steps = c.session(s.id).steps
            if steps != STEPS + 1:
                raise AssertionError(f"session {s.id} has {steps} steps, {STEPS + 1} were sent")

    def _expect(self, r, t, want, what):
        got = np.asarray(r.update["w"], dtype=np.float64)
        if r.step != t or not np.allclose(got, want, rtol=1e-12, atol=1e-14):
            raise AssertionError(f"step {t} ({what}): reply for step {r.step}, got {got}, "
                                 f"want {want}: a step lost or applied twice")


def case_sigkill(binary: str, folder: str, db) -> list:
    """Eight trainers, a daemon SIGKILLed among them; returns the failures."""
    failures = []
    with Cluster(binary, folder, daemons=3, db=db) as cl:
        gate = threading.Event()
        trainers = [Trainer(i, cl.url, gate) for i in range(TRAINERS)]
        for t in trainers:
            t.start()
        wait_until(lambda: all(t.done >= GATE // 2 or t.failure for t in trainers), 120,
                   "every trainer halfway to the kill")
        placed = {t.session_id: cl.daemon_of(t.session_id) for t in trainers}
        counts = {d: list(placed.values()).count(d) for d in ("d1", "d2", "d3")}
        victim = max(counts, key=counts.get)  # the daemon with the most sessions
        print(f"sessions per daemon: {counts}; SIGKILL {victim}")
        t_kill = time.monotonic()
        cl.signal(victim, signal.SIGKILL)
        gate.set()
        wait_until(lambda: cl.status().get(victim) == "DOWN", 30, f"HAProxy to mark {victim} down")
        t_down = time.monotonic() - t_kill
        for t in trainers:
            t.join(timeout=300)
            if t.is_alive():
                failures.append(f"trainer {t.index} did not finish")
            elif t.failure:
                failures.append(t.failure)
        takeover = [longest_wait(t.acks, t_kill) for t in trainers
                    if placed[t.session_id] == victim]
        print(f"HAProxy marked {victim} down {t_down:.2f} s after the kill; its "
              f"{len(takeover)} sessions' steps waited at most "
              f"{', '.join(f'{x:.2f}' for x in sorted(takeover))} s "
              f"(bound stated in deploy/README.md: the lease time plus {CHECK_BOUND_S:.1f} s of "
              "health checks)")
        for t in trainers:
            now = cl.daemon_of(t.session_id)
            if placed[t.session_id] != victim and now != placed[t.session_id]:
                failures.append(f"session {t.session_id} moved from {placed[t.session_id]} to "
                                f"{now} though its daemon stayed up")
            if placed[t.session_id] == victim and now == victim:
                failures.append(f"session {t.session_id} is still routed to the dead {victim}")
        listed = {s.id for s in curvd.Client(cl.url).list_sessions()}
        missing = {t.session_id for t in trainers} - listed
        if missing:
            failures.append(f"listing through HAProxy misses {sorted(missing)}")
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curvd")
    ap.add_argument("--db", help="database URL for every daemon (default: one SQLite file)")
    ap.add_argument("--keep", action="store_true", help="keep the folder (logs, database)")
    args = ap.parse_args()
    if not haproxy_binary():
        print("SKIP cluster test: haproxy is not installed and scripts/install-deps could not "
              "install it")
        return 77
    folder = tempfile.mkdtemp(prefix="curvd-cluster-")
    failures = case_sigkill(os.path.abspath(args.curvd), folder, args.db)
    for f in failures:
        print(f"FAIL {f}")
    print(f"cluster test: {'FAILED' if failures else 'passed'} ({folder if args.keep else ''})")
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
