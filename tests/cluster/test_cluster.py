# SPDX-License-Identifier: MIT
"""The cluster test (issue 24): HAProxy (deploy/haproxy.cfg) and three
daemons on one database, all on loopback; eight trainers step their
sessions through HAProxy with the Python client. Two cases: one daemon
is killed with SIGKILL in the middle of a step; one is stopped with
SIGSTOP in the middle of a step past its lease, its sessions taken over,
then resumed: its write of that step must be refused by the fencing
epoch (this case needs a daemon with leases, --lease-ttl).

Every trainer checks each update against SGD with heavy-ball momentum
computed here (v <- mu v + g, update = -lr v): a step applied twice or an
acknowledged step lost would change every later update. At the end a
step with a zero gradient reads the momentum buffer back (-lr mu v) and
the session's step count must be the number of steps sent. Sessions of
the daemons that stay up must not move.

    /usr/bin/python3 tests/cluster/test_cluster.py build/curvd [--db sqlite|pg|URL]
        [--case sigkill|sigstop] [--keep]

Exit 0: passed; 1: failed; 77: skipped (no haproxy, or --db pg and no
PostgreSQL that can run).
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
from cluster import Cluster, Skip, database, haproxy_binary, longest_wait, wait_until  # noqa: E402

TRAINERS = 8
STEPS = 100
LR, MU = 0.1, 0.9
DIM = 6
LAYOUT = [{"name": "w", "kind": "vector", "shape": [DIM]}]
# The lease time the daemons run with (when they have leases), and what
# deploy/haproxy.cfg's checks take to see a daemon that stopped answering:
# the next check up to `inter` 1 s later, then 2 failed checks, each
# allowed `timeout check` 1 s, `fastinter` 500 ms apart (a refused
# connection of real traffic marks a server down at once).
LEASE_MS = 2000
CHECK_BOUND_S = 1.0 + 2 * 1.0 + 0.5
# A step that computes for seconds (BMA's O(L^3) eigendecomposition over
# one block per row: about 2 s for 1500 rows on one core), so that a daemon
# can be stopped in the middle of it.
HEAVY_LAYOUT = [{"name": "w", "kind": "dense", "shape": [1500, 3], "bias": False}]
HEAVY_CONFIG = {"partition": "row"}


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

    def __init__(self, cl: Cluster, gates):
        self.cl = cl
        self.gates = {step: threading.Event() for step in gates}
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
              f"time {LEASE_MS / 1e3:.1f} s + {CHECK_BOUND_S:.1f} s of health checks, + the "
              "queue behind the long step on a daemon with one worker)")

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


class HeavyStep(threading.Thread):
    """One long step of a session that HAProxy routes to @victim, through
    HAProxy with the client's retries."""

    def __init__(self, cl: Cluster, victim: str):
        super().__init__(daemon=True)
        self.client = curvd.Client(cl.url, retry_budget=60.0, retry_wait=0.05)
        for _ in range(50):  # one id in three hashes to the victim
            s = self.client.create_session("adagrad_bma", HEAVY_LAYOUT, HEAVY_CONFIG, keep=True)
            if cl.daemon_of(s.id) == victim:
                break
            s.delete()
        self.session = s
        self.result = None

    def run(self):
        g = np.cos(np.arange(1500 * 3)).reshape(1500, 3)
        try:
            self.result = self.client.step(self.session.id, 1, {"w": g}, datatype="FP64")
        except Exception as e:
            self.result = e


def heavy_step_on(cl: Cluster, victim: str) -> "HeavyStep":
    """A long step computing on @victim (started, and seen in flight there)."""
    heavy = HeavyStep(cl, victim)
    heavy.start()
    wait_until(lambda: cl.metric(victim, "curvd_heavy_requests_in_flight") >= 1, 30,
               f"the long step to start on {victim}")
    return heavy


def check_heavy(cl: Cluster, heavy: "HeavyStep") -> list:
    """The long step, cut off on its daemon, was answered once elsewhere."""
    heavy.join(timeout=120)
    if not isinstance(heavy.result, curvd.StepResult) or heavy.result.step != 1:
        return [f"the long step, repeated elsewhere, ended with {heavy.result!r}"]
    if heavy.client.session(heavy.session.id).steps != 1:
        return ["the long step was applied twice or not at all"]
    return []


def case_sigkill(cl: Cluster) -> list:
    """A daemon SIGKILLed in the middle of a step while eight trainers step."""
    run = Run(cl, (20, 40))
    run.wait_for(19)  # every session has its daemon; the gate holds them
    victim = run.pick_victim()
    run.gates[20].set()
    run.wait_for(39)
    heavy = heavy_step_on(cl, victim)
    t_kill = time.monotonic()
    cl.signal(victim, signal.SIGKILL)
    run.gates[40].set()
    wait_until(lambda: cl.status().get(victim) == "DOWN", 30, f"HAProxy to mark {victim} down")
    print(f"SIGKILL {victim}: HAProxy marked it down after {time.monotonic() - t_kill:.2f} s")
    failures = check_heavy(cl, heavy) + run.finish(moved_ok=victim)
    run.report_wait(victim, t_kill, "SIGKILL")
    for t in run.of(victim):
        if cl.daemon_of(t.session_id) == victim:
            failures.append(f"session {t.session_id} is still routed to the dead {victim}")
    return failures


def case_sigstop(cl: Cluster) -> list:
    """A daemon stopped (SIGSTOP) in the middle of a step, past its lease:
    another takes its sessions over; resumed (SIGCONT), its write of that
    step is fenced and it drops the session; HAProxy then sends its sessions
    back to it, and it takes them again once the other's leases lapse."""
    run = Run(cl, (20, 40, 60))
    run.wait_for(19)
    victim = run.pick_victim()
    run.gates[20].set()
    run.wait_for(39)  # every trainer waits at 40: nothing else in flight
    heavy = heavy_step_on(cl, victim)
    fenced0 = cl.metric(victim, "curvd_fenced_writes_total")
    t_stop = time.monotonic()
    cl.pause(victim)
    run.gates[40].set()
    wait_until(lambda: cl.status().get(victim) == "DOWN", 30, f"HAProxy to mark {victim} down")
    print(f"SIGSTOP {victim}: HAProxy marked it down after {time.monotonic() - t_stop:.2f} s")
    failures = check_heavy(cl, heavy)
    run.wait_for(59, run.of(victim))  # served by the other daemons meanwhile
    run.report_wait(victim, t_stop, "SIGSTOP")
    cl.signal(victim, signal.SIGCONT)
    fenced = wait_until(
        lambda: cl.metric(victim, "curvd_fenced_writes_total") - fenced0, 60,
        f"{victim} to try to commit the long step it was computing")
    print(f"SIGCONT {victim}: {fenced:.0f} write(s) refused by the fencing epoch")
    wait_until(lambda: cl.status().get(victim) == "UP", 30, f"HAProxy to mark {victim} up")
    failures += run.finish(moved_ok=victim)
    for t in run.of(victim):
        if cl.daemon_of(t.session_id) != victim:
            failures.append(f"session {t.session_id} did not go back to {victim} once it was up")
    return failures


def case_framing(cl: Cluster) -> list:
    """A Content-Length past 2^64 - 1 through the router: one 413 problem."""
    import socket
    port = int(cl.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: curvd\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 18446744073709551616\r\n\r\n{}")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    text = got.decode("latin-1")
    head, _, body = text.partition("\r\n\r\n")
    failures = []
    if text.count("HTTP/1.1 ") != 1 or not head.startswith("HTTP/1.1 413 "):
        failures.append(f"expected one 413 status line, got {text[:300]!r}")
    if "application/problem+json" not in head.lower():
        failures.append(f"the 413 is not problem+json: {head!r}")
    elif '"TOO_LARGE"' not in body:
        failures.append(f"the 413's reason is not TOO_LARGE: {body!r}")
    return failures


def has_leases(binary: str) -> bool:
    import subprocess
    return "--lease-ttl" in subprocess.run([binary, "--help"], capture_output=True,
                                           text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curvd")
    ap.add_argument("--db", help="database for every daemon: a URL, or pg for a throw-away "
                    "PostgreSQL cluster (tests/pg/pg-cluster); default: one SQLite file")
    ap.add_argument("--keep", action="store_true", help="keep the folder (logs, database)")
    ap.add_argument("--case", choices=("sigkill", "sigstop", "framing"),
                    help="run this case only")
    args = ap.parse_args()
    if not haproxy_binary():
        print("SKIP cluster test: haproxy is not installed and scripts/install-deps could not "
              "install it")
        return 77
    binary = os.path.abspath(args.curvd)
    leases = has_leases(binary)
    extra = ["--lease-ttl", str(LEASE_MS)] if leases else []
    cases = [case_sigkill] + ([case_sigstop] if leases else []) + [case_framing]
    if not leases:
        print("note: this curvd has no leases (--lease-ttl): the SIGSTOP case needs them")
    failures = []
    for case in [c for c in cases if args.case in (None, c.__name__[5:])]:
        folder = tempfile.mkdtemp(prefix=f"curvd-cluster-{case.__name__[5:]}-")
        print(f"== {case.__name__}: {case.__doc__.splitlines()[0]}")
        try:
            with database(args.db, folder) as db, Cluster(binary, folder, daemons=3, db=db,
                                                          extra=extra) as cl:
                got = case(cl)
        except Skip as e:
            print(f"SKIP cluster test: {e}")
            shutil.rmtree(folder, ignore_errors=True)
            return 77
        except RuntimeError as e:  # a wait that never ended
            got = [str(e)]
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
