# SPDX-License-Identifier: MIT
"""CurvdOptimizer.state_dict() as a snapshot of the optimizer (issue 22,
item 1): torch.save into another process and another daemon continues bit
for bit; a session taken over by id refuses the optimizer left behind;
the parameter group's lr and weight_decay reach the session."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import curvd
from curvd.torch import CurvdOptimizer, SessionTakenOver
from conftest import curvd_binary
from test_optim import RUNS, blobs, mlp, need

HERE = os.path.dirname(os.path.abspath(__file__))

# Run in a new process: a daemon of its own on a new database, the
# checkpoint loaded into a fresh model and optimizer, three more steps.
CONTINUE = r"""
import sys, tempfile
import torch
from curvd.local import LocalDaemon
from curvd.torch import CurvdOptimizer
from test_optim import mlp
ckpt, out, binary = sys.argv[1:4]
saved = torch.load(ckpt)
d = LocalDaemon(binary, tempfile.mkdtemp())
d.start()
try:
    model = mlp(0)
    model.load_state_dict(saved["model"])
    opt = CurvdOptimizer(model, d.url, saved["kind"], {"lr": 123.0})
    opt.load_state_dict(saved["opt"])
    x, y = saved["data"]
    for _ in range(3):
        opt.step(x, y)
    torch.save([p.detach() for p in model.parameters()], out)
finally:
    d.stop()
"""


@pytest.mark.parametrize("run", ["adagrad_bma", "mbag", "kfac", "hf"])
def test_state_dict_through_torch_save_continues_bit_for_bit_elsewhere(
        daemon, offered, layers_refused, run, tmp_path):
    kind, config = RUNS[run]
    need(offered, kind, layers_refused)
    if kind == "kfac":  # new inverses at every step: the sampled statistics count
        config = dict(config, inv_interval=1)
    model, data = mlp(11), blobs(seed=11)
    opt = CurvdOptimizer(model, daemon.url, kind, config)
    opt.param_groups[0]["lr"] *= 0.5  # a scheduler's change, carried by the snapshot
    for _ in range(3):
        opt.step(*data)
    ckpt = str(tmp_path / "ckpt.pt")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "kind": kind, "data": data}, ckpt)
    for _ in range(3):
        opt.step(*data)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    out = str(tmp_path / "params.pt")
    subprocess.run([sys.executable, "-c", CONTINUE, ckpt, out, curvd_binary()], check=True,
                   env=env, timeout=300)
    there = torch.load(out)
    for p, q in zip(model.parameters(), there):
        assert torch.equal(p.detach(), q)
    assert not torch.equal(there[0], mlp(11)[0].weight.detach())


def test_a_loaded_snapshot_trains_apart_from_its_source(daemon):
    data = blobs(seed=12)
    a = CurvdOptimizer(mlp(12), daemon.url, "adagrad_diag", {"lr": 0.1})
    a.step(*data)
    b = CurvdOptimizer(mlp(12), daemon.url, "adagrad_diag")
    b.load_state_dict(a.state_dict())
    a.step(*data)
    b.step(*data)
    assert b.session.id != a.session.id
    assert a.session.refresh().steps == 2 and b.session.refresh().steps == 2
    assert b.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("how", ["session=", "pointer state"])
def test_the_optimizer_whose_session_was_taken_over_is_refused(daemon, client, how):
    model, data = mlp(13), blobs(seed=13)
    old = CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.1}, keep_session=True)
    old.step(*data)
    sid = old.session.id
    client.set_labels(sid, {"team": "a"}, name="run-1")
    if how == "session=":
        new = CurvdOptimizer(mlp(13), daemon.url, "sgd", session=sid)
    else:  # what state_dict() returned before it held the state
        new = CurvdOptimizer(mlp(13), daemon.url, "sgd")
        new.load_state_dict({"session": sid, "optimizer": "sgd", "url": daemon.url,
                             "lr": 0.1})
    moved = client.session(new.session.id)
    assert moved.id != sid and moved.steps == 1 and moved.name == "run-1"
    assert moved.labels == {"team": "a", "curvd.torch.taken_from": sid}
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(SessionTakenOver) as e:
        old.step(*data)
    assert str(e.value) == (
        f"session {sid} was taken over by another CurvdOptimizer (session=, or "
        "load_state_dict of a state naming only the session id): its state moved to "
        f"session {moved.id} and this optimizer can no longer step; step the optimizer that "
        "took it over, or load a state_dict() snapshot to train a copy")
    assert e.value.successor == moved.id
    with pytest.raises(SessionTakenOver):
        old.state_dict()
    for p, q in zip(model.parameters(), before):
        assert torch.equal(p.detach(), q)
    new.step(*data)
    assert client.session(moved.id).steps == 2
    new.close()
    client.delete_session(moved.id)


def test_a_deleted_session_is_not_reported_as_taken_over(daemon, client):
    opt = CurvdOptimizer(mlp(), daemon.url, "sgd", {"lr": 0.1})
    client.delete_session(opt.session.id)
    with pytest.raises(curvd.NotFound):
        opt.step(*blobs())


def test_load_state_dict_errors(daemon, client):
    opt = CurvdOptimizer(mlp(), daemon.url, "sgd", {"lr": 0.1})
    state = opt.state_dict()
    with pytest.raises(ValueError) as e:
        opt.load_state_dict(dict(state, format="curvd.torch.CurvdOptimizer/9"))
    assert str(e.value) == ("the state's format is 'curvd.torch.CurvdOptimizer/9'; this "
                            "version of curvd.torch reads 'curvd.torch.CurvdOptimizer/2'")
    # A state of another model: refused, and its imported session deleted.
    other = CurvdOptimizer(torch.nn.Linear(4, 3), daemon.url, "sgd", {"lr": 0.1})
    before = {s.id for s in client.list_sessions()}
    with pytest.raises(ValueError) as e:
        opt.load_state_dict(other.state_dict())
    assert str(e.value).startswith("session ") and "does not fit this model and kind" in \
        str(e.value)
    assert {s.id for s in client.list_sessions()} == before
    assert opt.session.id == state["session"]


def test_param_groups_at_construction_are_refused(daemon):
    model = mlp()
    with pytest.raises(TypeError) as e:
        CurvdOptimizer([{"params": model.parameters(), "lr": 0.1}], daemon.url, "sgd")
    assert str(e.value).startswith("CurvdOptimizer needs the model (a torch.nn.Module), not "
                                   "list: CurvdOptimizer(model, client, kind, ...)")


def test_weight_decay_in_the_param_group_reaches_the_session(daemon):
    """SGD's weight decay set through param_groups, as torch.optim.SGD
    with the same weight_decay would step (the independent reference)."""
    model, data = mlp(14), blobs(seed=14)
    ref = mlp(14)
    opt = CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.2})
    torch_opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    assert opt.param_groups[0]["weight_decay"] == 0.0
    for wd in (0.0, 0.3):
        opt.param_groups[0]["weight_decay"] = wd
        torch_opt.param_groups[0]["weight_decay"] = wd
        opt.step(*data)
        torch_opt.zero_grad()
        F.cross_entropy(ref(data[0]), data[1]).backward()
        torch_opt.step()
        for p, q in zip(model.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert opt.session.refresh().config["weight_decay"] == 0.3
    assert opt.state_dict()["param_groups"] == [{"lr": 0.2, "weight_decay": 0.3}]


def test_a_torch_hyperparameter_the_session_does_not_take_is_refused(daemon):
    model, data = mlp(15), blobs(seed=15)
    opt = CurvdOptimizer(model, daemon.url, "adagrad_diag", {"lr": 0.1})
    assert set(opt.param_groups[0]) == {"params", "lr"}
    for g in opt.param_groups:
        g["weight_decay"] = 0.01
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError) as e:
        opt.step(*data)
    assert str(e.value) == (
        "param_groups[0] has 'weight_decay', which adagrad_diag's session does not take from "
        "it: the parameter group carries lr; set the others in the session's config (config=, "
        "or opt.session.update_config)")
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert opt.session.refresh().steps == 0
