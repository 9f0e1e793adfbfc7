# SPDX-License-Identifier: MIT
"""Fixtures: a real curvd on a loopback port with a temporary database.

CURVD_BIN names the daemon (default: build/curvd of this checkout).
"""

import os
import re
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))  # the curvd package
sys.path.insert(0, HERE)  # helpers shared by the suites

import curvd  # noqa: E402

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class Daemon:
    """One curvd process; restart() keeps the port and the database."""

    def __init__(self, binary: str, folder: str, extra=()):
        self.binary = binary
        self.db = os.path.join(folder, "curvd.db")
        self.extra = list(extra)
        self.port = 0
        self.proc = None
        self.log = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--db", self.db, "--threads", "2",
                "--workers", "1", *self.extra]
        deadline = time.monotonic() + 10
        while True:  # a restart may find the port not yet free
            self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
            line = self.proc.stderr.readline()
            self.log.append(line)
            m = LISTENING.search(line)
            if m:
                break
            self.proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"curvd did not start: {''.join(self.log)}")
            time.sleep(0.05)
        self.port = int(m.group(1))
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc) -> None:
        for line in proc.stderr:
            self.log.append(line)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """A crash and a start: SIGKILL loses nothing acknowledged (the
        graceful stop would wait for the client's idle keep-alive
        connection to time out)."""
        self.proc.kill()
        self.proc.wait()
        self.start()


def curvd_binary() -> str:
    path = os.environ.get("CURVD_BIN", os.path.join(ROOT, "build", "curvd"))
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no curvd at {path}: run 'make build/curvd' or set CURVD_BIN")
    return path


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    d = Daemon(curvd_binary(), str(tmp_path_factory.mktemp("curvd")))
    d.start()
    yield d
    d.stop()


@pytest.fixture
def own_daemon(tmp_path):
    """A daemon of the test's own (to restart it, or give it flags)."""
    started = []

    def make(*extra):
        d = Daemon(curvd_binary(), str(tmp_path), extra)
        d.start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def client(daemon):
    with curvd.Client(daemon.url) as c:
        yield c


@pytest.fixture(scope="session")
def offered(daemon):
    """The optimizer kinds the daemon offers."""
    with curvd.Client(daemon.url) as c:
        return set(c.optimizers())


@pytest.fixture(scope="session")
def layers_refused(daemon):
    """The daemon's reason for refusing a well-formed "layers" entry, or
    None. (server/step_decode.c check_matrix wants the first matrix to
    have 0 rows; K-FAC runs once that is fixed.)"""
    with curvd.Client(daemon.url) as c:
        if "kfac" not in c.optimizers():
            return None
        s = c.create_session("kfac", [{"name": "fc", "kind": "dense", "shape": [1, 2]}])
        try:
            c.post_step(s.id, 1, {"fc": [[0.5, 0.5]]}, loss=1.0, layers=[
                {"block": "fc", "activations": [[1.0, 2.0]], "signals": [[0.5]]}])
        except curvd.BadRequest as e:
            if e.errors and (e.errors[0].expected or "").startswith("[rows>=1"):
                return str(e)
        finally:
            s.delete()
    return None
