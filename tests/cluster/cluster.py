# SPDX-License-Identifier: MIT
"""A curvd cluster on loopback: N daemons on one database behind HAProxy
running deploy/haproxy.cfg itself (its addresses come from the
environment), for the cluster test and its measurements.

    with Cluster("build/curvd", tmp) as c:
        client = curvd.Client(c.url)

db: the database every daemon opens (default: one SQLite file in the
folder, which WAL lets several processes on one machine share; or a
postgresql:// URL, e.g. from database("pg", folder)).
"""

import contextlib
import csv
import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, List, Optional, Sequence

from curvd.local import LocalDaemon

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAPROXY_CFG = os.path.join(ROOT, "deploy", "haproxy.cfg")
SERVERS = ("d1", "d2", "d3")  # the server names in deploy/haproxy.cfg


def free_port() -> int:
    """A loopback port nothing listens on now (HAProxy binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def haproxy_binary() -> Optional[str]:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None)


def wait_until(cond, timeout: float, what: str, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


PG_CLUSTER = os.path.join(ROOT, "tests", "pg", "pg-cluster")


class Skip(Exception):
    """What the cluster needs is not installed (the message says what)."""


@contextlib.contextmanager
def database(spec: Optional[str], folder: str):
    """The database URL for @spec: None or "sqlite", one SQLite file in @folder; "pg", a
    throw-away PostgreSQL cluster (tests/pg/pg-cluster) in @folder, stopped
    afterwards; anything else, as given. Skip when PostgreSQL cannot run."""
    if spec != "pg":
        yield os.path.join(folder, "cluster.db") if spec in (None, "", "sqlite") else spec
        return
    if not os.access(PG_CLUSTER, os.X_OK):
        raise Skip(f"{PG_CLUSTER} is missing (the PostgreSQL backend's test cluster)")
    os.chmod(folder, 0o711)  # as root, the server runs as postgres: it must get through
    pgdir = os.path.join(folder, "pg")
    r = subprocess.run([PG_CLUSTER, "start", pgdir], capture_output=True, text=True)
    if r.returncode == 77:
        raise Skip(f"PostgreSQL cannot run here: {r.stderr.strip()}")
    if r.returncode != 0:
        raise RuntimeError(f"pg-cluster start failed: {r.stderr.strip()}")
    # What deploy/README.md asks of a cluster's PostgreSQL: a paused daemon's
    # open transaction (and its row locks) ends well within the lease time.
    url = r.stdout.strip() + "&options=-c%20idle_in_transaction_session_timeout%3D500"
    try:
        yield url
    finally:
        subprocess.run([PG_CLUSTER, "stop", pgdir], capture_output=True)


def longest_wait(steps, since: float) -> float:
    """@steps: (posted, answered) monotonic times of a session's steps. The
    longest any of them waited after @since (a kill): from @since for a step
    in flight then, from its post for a later one; 0 when none was answered
    after @since."""
    return max((answered - max(posted, since) for posted, answered in steps
                if answered > since), default=0.0)


class Cluster:
    """daemons: how many distinct daemons (1..3); with fewer than 3 the
    remaining servers of the configuration point at the last one, so the
    same file routes everything to it. extra: further daemon flags."""

    def __init__(self, binary: str, folder: str, daemons: int = 3, db: Optional[str] = None,
                 extra: Sequence[str] = (), threads: int = 2, workers: int = 1):
        if not 1 <= daemons <= len(SERVERS):
            raise ValueError(f"daemons must be 1..{len(SERVERS)}")
        self.folder = folder
        self.db = db or os.path.join(folder, "cluster.db")
        env = {"OPENBLAS_NUM_THREADS": "1"}
        self.daemons: List[LocalDaemon] = [
            LocalDaemon(binary, os.path.join(folder, f"d{i + 1}"), extra, env=env,
                        threads=threads, workers=workers, db=self.db)
            for i in range(daemons)]
        self.haproxy = None
        self.port = self.stats_port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Cluster":
        for i, d in enumerate(self.daemons):
            os.makedirs(os.path.join(self.folder, f"d{i + 1}"), exist_ok=True)
            d.start()  # one after the other: the first runs the migrations
        self.port, self.stats_port = free_port(), free_port()
        env = dict(os.environ, CURVD_ROUTER=f"127.0.0.1:{self.port}",
                   CURVD_ROUTER_STATS=f"127.0.0.1:{self.stats_port}")
        for i, name in enumerate(SERVERS):
            d = self.daemons[min(i, len(self.daemons) - 1)]
            env[f"CURVD_DAEMON{i + 1}"] = f"127.0.0.1:{d.port}"
        self.haproxy_log = open(os.path.join(self.folder, "haproxy.log"), "w")
        self.haproxy = subprocess.Popen([haproxy_binary(), "-db", "-f", HAPROXY_CFG], env=env,
                                        stdout=self.haproxy_log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.haproxy.poll() is not None or self._all_up(), 15,
                   "HAProxy to see every daemon up")
        if self.haproxy.poll() is not None:
            raise RuntimeError(f"haproxy exited {self.haproxy.returncode}: see "
                               f"{self.haproxy_log.name}")
        return self

    def _all_up(self) -> bool:
        try:
            return all(s == "UP" for s in self.status().values())
        except OSError:
            return False

    def status(self) -> Dict[str, str]:
        """HAProxy's view of each server of the by_session backend: UP, DOWN, ..."""
        conn = http.client.HTTPConnection("127.0.0.1", self.stats_port, timeout=5)
        try:
            conn.request("GET", "/stats;csv")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {r["svname"]: r["status"].split(" ")[0] for r in rows
                if r["pxname"] == "by_session" and r["svname"] in SERVERS}

    def daemon_of(self, session_id: str) -> str:
        """The server (d1, d2, d3) that HAProxy sends @session_id's requests to."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", f"/v1/sessions/{session_id}")
            r = conn.getresponse()
            r.read()
            return r.getheader("X-Curvd-Daemon") or ""
        finally:
            conn.close()

    def signal(self, server: str, sig: int) -> None:
        """Send @sig to the daemon behind @server."""
        os.kill(self.daemons[SERVERS.index(server)].proc.pid, sig)

    def pause(self, server: str) -> None:
        """SIGSTOP the daemon behind @server. On a shared SQLite file, at a
        moment it holds no write lock: a stopped process holding it would
        stop every daemon's writes (SQLite's limit; PostgreSQL ends such a
        transaction after idle_in_transaction_session_timeout, see
        deploy/README.md)."""
        for _ in range(100):
            self.signal(server, signal.SIGSTOP)
            if "://" in self.db or self._sqlite_writable():
                return
            self.signal(server, signal.SIGCONT)
            time.sleep(0.01)
        raise RuntimeError(f"{server} held SQLite's write lock at each of 100 tries")

    def _sqlite_writable(self) -> bool:
        import sqlite3
        conn = sqlite3.connect(self.db, timeout=0.5, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.close()

    def metric(self, server: str, name: str) -> float:
        """The value of metric @name (with its labels, as /metrics writes
        them) of the daemon behind @server, read from it directly; 0 if absent."""
        import urllib.request
        url = self.daemons[SERVERS.index(server)].url + "/metrics"
        for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
            key, _, value = line.rpartition(" ")
            if key == name:
                return float(value)
        return 0.0

    def stop(self) -> None:
        for d in self.daemons:
            if d.proc and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGCONT)  # a stopped one must hear SIGTERM
        if self.haproxy and self.haproxy.poll() is None:
            self.haproxy.terminate()
            self.haproxy.wait()
            self.haproxy_log.close()
        for i, d in enumerate(self.daemons):
            d.stop()
            with open(os.path.join(self.folder, f"d{i + 1}", "curvd.log"), "w") as f:
                f.writelines(d.log)

    def __enter__(self) -> "Cluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
