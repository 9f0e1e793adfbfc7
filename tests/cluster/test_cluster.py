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
import shutil
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
GATES = (20, 40)  # trainers wait before these steps until the case lets them on
LR, MU = 0.1, 0.9
DIM = 6
LAYOUT = [{"name": "w", "kind": "vector", "shape": [DIM]}]
# The lease time the daemons run with (when they have leases), and what
# deploy/haproxy.cfg's checks allow: down after 2 failed checks, the second
# at fastinter 500 ms, each allowed `timeout check` 1 s (a refused
# connection of real traffic marks a server down at once).
LEASE_MS = 2000
CHECK_BOUND_S = 2 * 1.0 + 0.5


def gradient(trainer: int, step: int) -> np.ndarray:
    return np.sin(0.7 * trainer + 1.3 * step + np.arange(DIM))


class Trainer(threading.Thread):
    def __init__(self, index: int, url: str, gates):
        super().__init__(daemon=True)
        self.index, self.url, self.gates = index, url, gates  # gates: {step: Event}
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
                if t in self.gates:
                    self.gates[t].wait()
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


class Run:
    """The trainers of one case on a started cluster, and what they saw."""

    def __init__(self, cl: Cluster):
        self.cl = cl
        self.gates = {step: threading.Event() for step in GATES}
        self.trainers = [Trainer(i, cl.url, self.gates) for i in range(TRAINERS)]
        for t in self.trainers:
            t.start()
        self.failures = []
        self.placed = {}

    def wait_for(self, step: int, trainers=None):
        wait_until(lambda: all(t.done >= step or t.failure or not t.is_alive()
                               for t in trainers or self.trainers), 120,
                   f"the trainers to reach step {step}")

    def pick_victim(self) -> str:
        """The daemon that serves the most sessions now."""
        self.placed = {t.session_id: self.cl.daemon_of(t.session_id) for t in self.trainers}
        counts = {d: list(self.placed.values()).count(d) for d in ("d1", "d2", "d3")}
        victim = max(counts, key=counts.get)
        print(f"sessions per daemon: {counts}; the victim: {victim}")
        return victim

    def of(self, victim: str):
        return [t for t in self.trainers if self.placed[t.session_id] == victim]

    def report_wait(self, victim: str, since: float, what: str):
        waits = sorted(longest_wait(t.acks, since) for t in self.of(victim))
        print(f"after the {what} of {victim}, its {len(waits)} sessions' steps waited at most "
              f"{', '.join(f'{x:.2f}' for x in waits)} s (bound, deploy/README.md: the lease "
              f"time {LEASE_MS / 1e3:.1f} s + {CHECK_BOUND_S:.1f} s of health checks)")

    def finish(self, moved_ok: str):
        """Open every gate, join the trainers, check placement and listing.
        Sessions of daemons other than @moved_ok must still be where they were."""
        for g in self.gates.values():
            g.set()
        for t in self.trainers:
            t.join(timeout=300)
            if t.is_alive():
                self.failures.append(f"trainer {t.index} did not finish")
            elif t.failure:
                self.failures.append(t.failure)
        for t in self.trainers:
            was, now = self.placed[t.session_id], self.cl.daemon_of(t.session_id)
            if was != moved_ok and now != was:
                self.failures.append(f"session {t.session_id} moved from {was} to {now} "
                                     "though its daemon stayed up")
        listed = {s.id for s in curvd.Client(self.cl.url).list_sessions()}
        missing = {t.session_id for t in self.trainers} - listed
        if missing:
            self.failures.append(f"listing through HAProxy misses {sorted(missing)}")
        return self.failures


def case_sigkill(cl: Cluster) -> list:
    """A daemon SIGKILLed while eight trainers step: returns the failures."""
    run = Run(cl)
    run.wait_for(GATES[0] - 1)  # every session has a daemon; the gate holds them
    victim = run.pick_victim()
    run.gates[GATES[0]].set()
    run.wait_for(GATES[0] + 5)
    t_kill = time.monotonic()
    cl.signal(victim, signal.SIGKILL)
    wait_until(lambda: cl.status().get(victim) == "DOWN", 30, f"HAProxy to mark {victim} down")
    print(f"SIGKILL {victim}: HAProxy marked it down after {time.monotonic() - t_kill:.2f} s")
    failures = run.finish(moved_ok=victim)
    run.report_wait(victim, t_kill, "SIGKILL")
    for t in run.of(victim):
        if cl.daemon_of(t.session_id) == victim:
            failures.append(f"session {t.session_id} is still routed to the dead {victim}")
    return failures


def lease_counts(url: str) -> dict:
    """The daemon's lease counters from /metrics: lost, fenced (writes)."""
    import urllib.request
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('curvd_leases_total{event="lost"}'):
            out["lost"] = int(float(line.split()[-1]))
        elif line.startswith("curvd_fenced_writes_total"):
            out["fenced"] = int(float(line.split()[-1]))
    return out


def case_sigstop(cl: Cluster) -> list:
    """A daemon stopped (SIGSTOP) past its lease: another takes its sessions
    over; resumed (SIGCONT), its renewals and writes are fenced and it drops
    them; HAProxy then sends them back to it, and it takes them again once
    the other daemon's lease has lapsed."""
    run = Run(cl)
    run.wait_for(GATES[0] - 1)
    victim = run.pick_victim()
    url = cl.daemons[("d1", "d2", "d3").index(victim)].url
    before = lease_counts(url)
    run.gates[GATES[0]].set()
    run.wait_for(GATES[0] + 5)
    t_stop = time.monotonic()
    cl.signal(victim, signal.SIGSTOP)
    wait_until(lambda: cl.status().get(victim) == "DOWN", 30, f"HAProxy to mark {victim} down")
    print(f"SIGSTOP {victim}: HAProxy marked it down after {time.monotonic() - t_stop:.2f} s")
    run.wait_for(GATES[1] - 1, run.of(victim))  # served by the others meanwhile
    run.report_wait(victim, t_stop, "SIGSTOP")
    cl.signal(victim, signal.SIGCONT)
    wait_until(lambda: cl.status().get(victim) == "UP", 30, f"HAProxy to mark {victim} up")
    after = lease_counts(url)
    dropped = sum(after.get(k, 0) - before.get(k, 0) for k in ("lost", "fenced"))
    print(f"SIGCONT {victim}: leases lost {after.get('lost', 0) - before.get('lost', 0)}, "
          f"writes fenced {after.get('fenced', 0) - before.get('fenced', 0)}")
    failures = run.finish(moved_ok=victim)
    if dropped < 1:
        failures.append(f"{victim} resumed without a lease lost or a write fenced: it kept "
                        "sessions another daemon had taken over")
    for t in run.of(victim):
        if cl.daemon_of(t.session_id) != victim:
            failures.append(f"session {t.session_id} did not go back to {victim} once it was up")
    return failures


def has_leases(binary: str) -> bool:
    import subprocess
    return "--lease-ttl" in subprocess.run([binary, "--help"], capture_output=True,
                                           text=True).stdout


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
    binary = os.path.abspath(args.curvd)
    leases = has_leases(binary)
    extra = ["--lease-ttl", str(LEASE_MS)] if leases else []
    cases = [case_sigkill] + ([case_sigstop] if leases else [])
    if not leases:
        print("note: this curvd has no leases (--lease-ttl): the SIGSTOP case needs them")
    failures = []
    for case in cases:
        folder = tempfile.mkdtemp(prefix=f"curvd-cluster-{case.__name__[5:]}-")
        print(f"== {case.__name__}: {case.__doc__.splitlines()[0]}")
        with Cluster(binary, folder, daemons=3, db=args.db, extra=extra) as cl:
            got = case(cl)
        for f in got:
            print(f"FAIL {f}")
        failures += got
        if args.keep:
            print(f"logs and database kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"cluster test: {'FAILED' if failures else 'passed'} ({len(cases)} cases)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
