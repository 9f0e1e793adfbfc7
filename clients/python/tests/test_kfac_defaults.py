# SPDX-License-Identifier: MIT
"""K-FAC with its defaults on an ordinary small classifier, against a real
daemon: the ReLU MLP 64-128-128-10 on a random teacher network, batch 128
(issue 17's case, shortened). Before the safeguards (docs/NOTES.md, "K-FAC
safeguards") adaptive mode's loss turned NaN by epoch 11 here and simple
mode's within the first epoch. Also: a torch LR scheduler scales K-FAC's
adaptive step, and non-finite trainer values are refused client-side."""

import copy
import math

import pytest
import torch
from torch import nn

import curvd
from curvd.torch import CurvdOptimizer


def teacher(seed=0, n_train=4096, n_test=1024, d=64, k=10):
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randn(n_train + n_test, d, generator=g)
    t = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, k))
    with torch.no_grad():
        for p in t.parameters():
            fan = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan))
        y = t(x).argmax(1)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def relu_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))


@pytest.mark.parametrize("mode", ["adaptive", "simple"])
def test_relu_mlp_trains_with_defaults(daemon, mode):
    xtr, ytr, xte, yte = teacher()
    net = relu_mlp()
    config = {} if mode == "adaptive" else {"mode": "simple"}
    opt = CurvdOptimizer(net, daemon.url, "kfac", config, loss="cross_entropy")
    g = torch.Generator().manual_seed(0)
    losses = []
    for epoch in range(12):
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(0, xtr.shape[0], 128):
            idx = perm[i:i + 128]
            losses.append(opt.step(xtr[idx], ytr[idx]))
            assert math.isfinite(losses[-1]), f"{mode}: loss {losses[-1]} at step {len(losses)}"
    with torch.no_grad():
        acc = float((net(xte).argmax(1) == yte).float().mean())
        train = float(nn.functional.cross_entropy(net(xtr), ytr))
    # Adam (lr 1e-3) reaches 0.875 test accuracy on this data.
    assert acc > 0.8, f"{mode}: test accuracy {acc}"
    assert train < 0.2, f"{mode}: training loss {train}"


def test_lr_scheduler_scales_the_adaptive_step(daemon):
    """Two identical runs; before step 2 one halves its lr with a torch
    scheduler: its update is half the other's (same batch, same answers)."""
    xtr, ytr, _, _ = teacher(n_train=256)
    nets = [relu_mlp(3), relu_mlp(3)]
    opts = [CurvdOptimizer(n, daemon.url, "kfac", loss="cross_entropy") for n in nets]
    sched = torch.optim.lr_scheduler.StepLR(opts[1], step_size=1, gamma=0.5)
    for o in opts:
        o.step(xtr[:128], ytr[:128])
    sched.step()
    assert opts[1].param_groups[0]["lr"] == 0.5
    before = [copy.deepcopy(n.state_dict()) for n in nets]
    for o in opts:
        o.step(xtr[128:], ytr[128:])
    for name, p in nets[0].state_dict().items():
        d0 = p - before[0][name]
        d1 = nets[1].state_dict()[name] - before[1][name]
        assert float(d0.norm()) > 0
        torch.testing.assert_close(d1, 0.5 * d0, rtol=1e-4, atol=1e-7)


class NanLoss(curvd.CurvatureOracle):
    """Answers the Gram matrix honestly (identity) and the loss with NaN."""

    def quadratic_form(self, vectors):
        return [[float(i == j) for j in range(len(vectors))] for i in range(len(vectors))]

    def losses(self, vectors):
        return [float("nan")] * len(vectors)


def test_non_finite_values_are_refused_before_sending(client):
    layout = [{"name": "fc", "kind": "dense", "shape": [2, 3]}]
    s = client.create_session("kfac", layout, {"lambda_interval": 1, "weight_decay": 0})
    grads = {"fc": [[0.1, -0.2, 0.3], [0.0, 0.5, -0.1]]}
    layers = [{"block": "fc", "activations": [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]],
               "signals": [[0.5, -0.1], [0.2, 0.3]]}]
    with pytest.raises(curvd.NonFiniteValue, match=r"step 1: the loss is nan"):
        s.step(grads, loss=float("nan"), layers=layers)
    with pytest.raises(curvd.NonFiniteValue, match=r"the loss callback's answer, loss 0 is nan"):
        s.step(grads, loss=1.0, layers=layers, oracle=NanLoss())
    assert client.session(s.id).steps == 0  # nothing was applied


def test_the_batch_size_reaches_the_noise_term(client, daemon):
    """Steps carry their batch: K-FAC's noise share falls as 1/batch, and the
    torch optimizer sends its mini-batch's size."""
    layout = [{"name": "fc", "kind": "dense", "shape": [2, 3]}]
    grads = {"fc": [[0.1, -0.2, 0.3], [0.0, 0.5, -0.1]]}
    layers = [{"block": "fc", "activations": [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]],
               "signals": [[0.5, -0.1], [0.2, 0.3]]}]
    shares = []
    for batch in (10, 20):
        s = client.create_session("kfac", layout, {"mode": "simple", "weight_decay": 0})
        shares.append(s.step(grads, layers=layers, batch=batch).report["noise_share"])
    assert shares[0] > 0
    assert shares[1] == pytest.approx(shares[0] / 2, rel=1e-12)

    xtr, ytr, _, _ = teacher(n_train=256)
    opts = [CurvdOptimizer(relu_mlp(4), daemon.url, "kfac", {"mode": "simple"},
                           loss="cross_entropy") for _ in range(2)]
    opts[0].step(xtr[:64], ytr[:64])
    opts[1].step(xtr[:128], ytr[:128])
    assert opts[0].last_report["noise_share"] > 0
    assert opts[1].last_report["noise_share"] > 0
