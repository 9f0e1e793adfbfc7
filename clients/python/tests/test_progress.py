# SPDX-License-Identifier: MIT
"""The step history from Python, against a real daemon: Client.steps()
pages through GET /v1/sessions/{id}/steps; CurvdOptimizer's progress (a
StepLog) logs each step, moves a tqdm bar, writes the history as CSV as it
goes, and TensorBoard scalars when tensorboard is importable."""

import csv
import io
import logging
import math

import pytest
import torch
from torch import nn

import curvd
from curvd.client import server_timing_seconds
from curvd.torch import CurvdOptimizer

VECTOR = [{"name": "w", "kind": "vector", "shape": [2]}]


def post(session, n, loss=lambda t: 1.0 / t):
    for _ in range(n):
        t = session.steps + 1
        session.step({"w": [0.5, -0.25]}, loss=loss(t))


def test_steps_pages_through_the_history(client):
    with client.create_session("sgd", VECTOR, {"lr": 0.1}) as s:
        post(s, 25)
        got = list(client.steps(s.id, page_size=10))
        assert [e["step"] for e in got] == list(range(1, 26))
        assert [e["report"]["loss"] for e in got] == [1.0 / t for t in range(1, 26)]
        assert all(e["callbacks"] == 0 and set(e["timing_ms"]) == {"decode", "step", "encode",
                                                                   "save"} for e in got)
        assert [e["step"] for e in s.history(since=20, page_size=2)] == [21, 22, 23, 24, 25]
        page = client.steps_page(s.id, since=0, page_size=10)
        assert page["next_since"] == 10 and page["latest_step"] == 25
        assert page["oldest_step"] == 1
        assert "next_since" not in client.steps_page(s.id, since=20, page_size=10)
        # A lower bound drops the older steps at once.
        assert s.set_history(5).history_steps == 5
        assert [e["step"] for e in s.history()] == [21, 22, 23, 24, 25]
        assert s.set_history(None).history_steps is None


def test_history_bound_at_create_and_errors(client):
    with client.create_session("sgd", VECTOR, {"lr": 0.1}, history_steps=3) as s:
        assert s.history_steps == 3
        post(s, 4)
        assert [e["step"] for e in s.history()] == [2, 3, 4]
        with pytest.raises(curvd.BadRequest) as e:
            client.steps_page(s.id, page_size=0)
        assert e.value.errors[0].path == "page_size"
        with pytest.raises(curvd.BadRequest):
            s.set_history(-1)
    with pytest.raises(curvd.NotFound):
        list(client.steps("0" * 32))


def test_server_timing_seconds():
    assert server_timing_seconds("decode;dur=1.250, step;dur=0.031") == pytest.approx(0.001281)
    assert server_timing_seconds(None) == 0
    assert server_timing_seconds("decode;desc=x, step;dur=bad") == 0


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def blobs(m=64):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (m,), generator=g)
    centers = torch.tensor([[2.0, 0, 0, 1], [-2, 1, 0, 0], [0, -2, 1, -1]])
    return centers[y] + torch.randn(m, 4, generator=g), y


def test_optimizer_logs_and_writes_the_history(daemon, caplog, tmp_path):
    path = tmp_path / "run.csv"
    log = curvd.StepLog(log=True, csv=str(path))
    model = mlp()
    x, y = blobs()
    caplog.set_level(logging.INFO, logger="curvd.progress")
    with CurvdOptimizer(model, daemon.url, "adagrad_diag", {"lr": 0.1},
                        progress=log) as opt:
        losses = [opt.step(x, y) for _ in range(6)]
        history = list(opt.session.history())
    lines = [r for r in caplog.records if r.name == "curvd.progress"]
    assert len(lines) == 6
    assert lines[0].getMessage().startswith("step 1 loss ")
    assert "daemon" in lines[0].getMessage()
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    # The CSV's losses are the ones step() returned, and the daemon's.
    assert [float(r["loss"]) for r in rows] == losses
    assert [e["report"]["loss"] for e in history] == losses
    for r, e in zip(rows, history):
        assert float(r["update_norm"]) == e["report"]["update_norm"]
        spent, daemon_s, share = (float(r[k]) for k in ("step_time_s", "daemon_s",
                                                        "daemon_share"))
        assert 0 < daemon_s <= spent and share == pytest.approx(min(1.0, daemon_s / spent))


def test_every_and_lambda_rho_in_the_log(daemon, offered, caplog):
    if "hf" not in offered:
        pytest.skip("the daemon does not offer hf")
    caplog.set_level(logging.INFO, logger="curvd.progress")
    model = mlp()
    x, y = blobs()
    with CurvdOptimizer(model, daemon.url, "hf", {}, progress=curvd.StepLog(log=True, every=2)) \
            as opt:
        for _ in range(5):
            opt.step(x, y)
        report = opt.last_report
    msgs = [r.getMessage() for r in caplog.records if r.name == "curvd.progress"]
    assert [m.split()[1] for m in msgs] == ["1", "3", "5"]
    assert f"lambda {report['lambda']:.4g}" in msgs[-1] and f"rho {report['rho']:.4g}" in msgs[-1]
    with pytest.raises(ValueError):
        curvd.StepLog(every=0)


def test_tqdm_bar(daemon, tmp_path):
    tqdm = pytest.importorskip("tqdm", reason="python3-tqdm is not installed")
    del tqdm
    log = curvd.StepLog(bar=True, total=3)
    model = mlp()
    x, y = blobs()
    with CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.1}, progress=log) as opt:
        for _ in range(3):
            opt.step(x, y)
        assert log.bar.n == 3 and log.bar.total == 3


def test_tensorboard_when_importable(daemon, tmp_path):
    pytest.importorskip("torch.utils.tensorboard",
                        reason="tensorboard is not installed (not in Debian 12)")
    log = curvd.StepLog(tensorboard=str(tmp_path / "tb"))
    model = mlp()
    x, y = blobs()
    with CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.1}, progress=log) as opt:
        opt.step(x, y)
    assert any((tmp_path / "tb").iterdir())


def test_missing_tqdm_or_tensorboard_warns(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_extras(name, *a, **kw):
        if name in ("tqdm", "torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_extras)
    with pytest.warns(RuntimeWarning, match="python3-tqdm"):
        log = curvd.StepLog(bar=True)
    assert log.bar is None
    with pytest.warns(RuntimeWarning, match="tensorboard"):
        log = curvd.StepLog(tensorboard="/nonexistent")
    assert log.tb is None
    log.record({"step": 1, "loss": math.pi})  # nothing asked: nothing done
    log.close()

