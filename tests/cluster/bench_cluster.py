# SPDX-License-Identifier: MIT
"""Issue 24's measurements: steps per second and latency percentiles of
small sessions through HAProxy with 1 and 3 daemons (and to one daemon
directly, for HAProxy's share), and the time to take a SIGKILLed daemon's
sessions over. Not part of make test (it times things).

    /usr/bin/python3 tests/cluster/bench_cluster.py build/curvd [--seconds 5]
        [--trainers 8] [--dim 1000] [--db URL] [--takeovers 3] [--lease-ms 2000 10000]

Each trainer is a process of its own (no shared GIL) with one session
(sgd with momentum over one vector block of --dim values, FP32 binary
bodies), stepping as fast as the replies come for --seconds.
"""

import argparse
import multiprocessing as mp
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
from cluster import Cluster, database, longest_wait, wait_until  # noqa: E402


def trainer(url, dim, seconds, start_at, out):
    rng = np.random.default_rng(os.getpid())
    with curvd.Client(url, retry_budget=60.0, retry_wait=0.05) as c:
        s = c.create_session("sgd", [{"name": "w", "kind": "vector", "shape": [dim]}],
                             {"lr": 0.01, "momentum": 0.9}, keep=True)
        g = {"w": rng.standard_normal(dim).astype(np.float32)}
        while time.time() < start_at:
            time.sleep(0.001)
        lat, t, end = [], 0, start_at + seconds
        while time.time() < end:
            t += 1
            t0 = time.perf_counter()
            c.step(s.id, t, g)
            lat.append(time.perf_counter() - t0)
        out.put((lat, time.process_time()))


def cpu_seconds(pids) -> float:
    """User + system CPU seconds of the processes @pids so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def postgres_pids(folder):
    """The throw-away PostgreSQL's server processes (tests/pg/pg-cluster in
    @folder/pg), or none."""
    try:
        with open(os.path.join(folder, "pg", "data", "postmaster.pid")) as f:
            master = int(f.readline())
    except OSError:
        return []
    kids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == master:
                    kids.append(int(entry))
        except (OSError, ValueError):
            pass
    return [master] + kids


def load(url, trainers, dim, seconds, servers, db_pids):
    """Steps/s, latency percentiles (ms) of @trainers processes for @seconds,
    and the CPU ms per step of the @servers processes (daemons, HAProxy),
    of the database's (@db_pids) and of the trainers."""
    q = mp.Queue()
    cpu0, db0 = cpu_seconds(servers), cpu_seconds(db_pids)
    start_at = time.time() + 1.0 + 0.1 * trainers  # every process connected and created
    procs = [mp.Process(target=trainer, args=(url, dim, seconds, start_at, q))
             for _ in range(trainers)]
    for p in procs:
        p.start()
    got = [q.get(timeout=seconds + 120) for _ in procs]
    server_cpu = cpu_seconds(servers) - cpu0  # setup included: a little high
    db_cpu = cpu_seconds(db_pids) - db0
    for p in procs:
        p.join()
    ms = np.array([x for lat, _ in got for x in lat]) * 1e3
    n = len(ms)
    return (n / seconds, np.percentile(ms, 50), np.percentile(ms, 99), 1e3 * server_cpu / n,
            1e3 * db_cpu / n, 1e3 * sum(cpu for _, cpu in got) / n)


def show(what, r):
    print(f"{what:24s} {r[0]:6.0f} steps/s  p50 {r[1]:6.2f} ms  p99 {r[2]:6.2f} ms  "
          f"CPU per step: servers {r[3]:.2f} ms, PostgreSQL {r[4]:.2f} ms, "
          f"trainers {r[5]:.2f} ms")


def takeover(binary, folder, db, dim, lease_ms):
    """Kill the daemon of one busy session: the longest one of its steps
    waited after the kill (through HAProxy, the client's retries included)."""
    extra = ["--lease-ttl", str(lease_ms)] if lease_ms else []
    with Cluster(binary, folder, daemons=3, db=db, extra=extra) as cl, curvd.Client(
            cl.url, retry_budget=60.0, retry_wait=0.05) as c:
        s = c.create_session("sgd", [{"name": "w", "kind": "vector", "shape": [dim]}],
                             {"lr": 0.01, "momentum": 0.9}, keep=True)
        g = {"w": np.ones(dim, dtype=np.float32)}
        acks, stop, failed = [], threading.Event(), []

        def run():
            t = 0
            try:
                while not stop.is_set():
                    t += 1
                    posted = time.monotonic()
                    c.step(s.id, t, g)
                    acks.append((posted, time.monotonic()))
            except curvd.CurvdError as e:
                failed.append(e)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        wait_until(lambda: len(acks) >= 20, 30, "20 steps")
        victim = cl.daemon_of(s.id)
        t_kill = time.monotonic()
        cl.signal(victim, signal.SIGKILL)
        wait_until(lambda: failed or acks[-1][1] > t_kill, 60, "the session to answer again")
        stop.set()
        th.join()
        if failed:
            raise failed[0]
        return longest_wait(acks, t_kill)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curvd")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--trainers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--db", help="a URL, or pg (tests/pg/pg-cluster); default: one SQLite file")
    ap.add_argument("--takeovers", type=int, default=3, help="kills per lease time")
    ap.add_argument("--lease-ms", type=int, nargs="*", default=[2000, 10000],
                    help="lease times (--lease-ttl) to measure takeovers with")
    args = ap.parse_args()
    binary = os.path.abspath(args.curvd)
    print(f"{args.trainers} trainer processes, sgd+momentum, {args.dim} FP32 values per step, "
          f"{args.seconds:.0f} s each, {os.cpu_count()} CPUs")
    for daemons in (1, 3):
        with tempfile.TemporaryDirectory(prefix="curvd-bench-") as folder:
            with database(args.db, folder) as db, Cluster(binary, folder, daemons=daemons,
                                                          db=db) as cl:
                pids = [d.proc.pid for d in cl.daemons]
                pg = postgres_pids(folder)
                if daemons == 1:
                    show("1 daemon, direct", load(cl.daemons[0].url, args.trainers, args.dim,
                                                  args.seconds, pids, pg))
                show(f"{daemons} daemon{'s' if daemons > 1 else ''}, via HAProxy",
                     load(cl.url, args.trainers, args.dim, args.seconds,
                          pids + [cl.haproxy.pid], pg))
    for lease_ms in args.lease_ms if args.takeovers else []:
        waits = []
        for _ in range(args.takeovers):
            with tempfile.TemporaryDirectory(prefix="curvd-bench-") as folder:
                with database(args.db, folder) as db:
                    waits.append(takeover(binary, folder, db, args.dim, lease_ms))
        print(f"lease {lease_ms} ms: a step waited at most "
              f"{', '.join(f'{w:.2f}' for w in waits)} s after its daemon's SIGKILL")


if __name__ == "__main__":
    main()
