# SPDX-License-Identifier: MIT
"""Fixtures: a real curvd on a loopback port with a temporary database.

CURVD_BIN names the daemon (default: build/curvd of this checkout).
"""

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))  # the curvd package
sys.path.insert(0, HERE)  # helpers shared by the suites

import curvd  # noqa: E402
from curvd.local import LocalDaemon as Daemon  # noqa: E402


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
    None. (server/wire/step_decode.c check_matrix wants the first matrix to
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
