# SPDX-License-Identifier: MIT
"""CurvdOptimizer end to end against a real daemon: every optimizer the
daemon offers trains a small model; K-FAC and HF run once the daemon
offers them (skipped until then)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvd
from curvd.torch import CurvdOptimizer

RUNS = {  # test id: (kind, config)
    "sgd": ("sgd", {"lr": 0.5, "momentum": 0.9}),
    "adagrad_diag": ("adagrad_diag", {"lr": 0.1}),
    "adagrad_full": ("adagrad_full", {"lr": 0.1}),
    "adagrad_bma": ("adagrad_bma", {"lr": 0.1}),
    "mbag": ("mbag", {"lr": 0.05, "tau": 4}),
    "mbag_ema": ("mbag_ema", {"lr": 0.05, "tau": 4}),
    "mbag_n": ("mbag_n", {"lr": 0.05, "tau": 4}),
    # The thesis' lambda_init = 150 suits its long runs; a few steps need less.
    "kfac": ("kfac", {"lambda_init": 1.0}),
    "kfac_tridiag": ("kfac", {"lambda_init": 1.0, "inverse": "tridiag"}),
    "kfac_empirical": ("kfac", {"lambda_init": 1.0, "fisher": "empirical"}),
    "hf": ("hf", {}),
}


def blobs(m=128, seed=0):
    """Three Gaussian classes in 4 dimensions."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (m,), generator=g)
    centers = torch.tensor([[2.0, 0, 0, 1], [-2, 1, 0, 0], [0, -2, 1, -1]])
    return centers[y] + torch.randn(m, 4, generator=g), y


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def cnn(seed=0):
    """Conv layers, a norm gain (a vector block) and a dense head."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 2, stride=2),
                         nn.GroupNorm(1, 4), nn.Flatten(), nn.Linear(4, 3))


def images(m=64, seed=1):
    """Which quadrant of a 5 x 5 image is bright (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (m,), generator=g)
    x = 0.3 * torch.randn(m, 1, 5, 5, generator=g)
    for i in range(m):
        r, c = divmod(int(y[i]), 2)
        x[i, 0, 3 * r:3 * r + 2, 3 * c:3 * c + 2] += 1.5
    return x, y


def train(opt, model, data, steps):
    x, y = data
    with torch.no_grad():
        first = float(F.cross_entropy(model(x), y))
    for _ in range(steps):
        opt.step(x, y)
    with torch.no_grad():
        return first, float(F.cross_entropy(model(x), y))


def need(offered, kind, layers_refused=None):
    if kind not in offered:
        pytest.skip(f"the daemon does not offer {kind} yet")
    if kind == "kfac" and layers_refused:
        pytest.skip(f"the daemon refuses every layers entry: {layers_refused}")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_optimizer_trains_a_small_mlp(daemon, offered, layers_refused, run):
    kind, config = RUNS[run]
    need(offered, kind, layers_refused)
    model = mlp()
    opt = CurvdOptimizer(model, daemon.url, kind, config, loss="cross_entropy")
    first, last = train(opt, model, blobs(), 40)
    assert last < 0.6 * first, f"{kind}: loss {first:.3f} -> {last:.3f}"
    assert opt.session.refresh().steps == 40
    assert opt.last_report.get("optimizer") == kind
    assert opt.fisher == config.get("fisher", "true")


@pytest.mark.parametrize("kind", ["adagrad_diag", "kfac", "hf"])
def test_conv_layers_and_fallback_blocks(daemon, offered, layers_refused, kind):
    need(offered, kind, layers_refused)
    model = cnn()
    if kind == "kfac":  # the norm gains go to K-FAC's fallback, and it says so
        with pytest.warns(UserWarning, match=r"'3' \(GroupNorm: weight, bias\)"):
            opt = CurvdOptimizer(model, daemon.url, kind, RUNS[kind][1], loss="cross_entropy")
    else:
        opt = CurvdOptimizer(model, daemon.url, kind, RUNS[kind][1], loss="cross_entropy")
    first, last = train(opt, model, images(), 30)
    assert [b["kind"] for b in opt.session.layout] == ["conv2d", "conv2d", "dense", "vector",
                                                       "vector"]
    assert last < 0.6 * first, f"{kind}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("loss,kind", [("mse", "kfac"), ("binary_cross_entropy", "hf")])
def test_second_order_kinds_with_the_other_losses(daemon, offered, layers_refused, loss, kind):
    need(offered, kind, layers_refused)
    model = mlp(3)
    x, y = blobs(seed=3)
    target = F.one_hot(y, 3).float()
    opt = CurvdOptimizer(model, daemon.url, kind, RUNS[kind][1], loss=loss)
    losses = [opt.step(x, target) for _ in range(30)]
    assert losses[-1] < 0.7 * losses[0]


def test_close_deletes_the_optimizers_session_unless_kept(daemon):
    x, y = blobs(seed=5)
    client = curvd.Client(daemon.url)
    with CurvdOptimizer(mlp(5), client, "sgd", {"lr": 0.1}, idle_ttl_s=600) as opt:
        opt.step(x, y)
        sid = opt.state_dict()["session"]
        assert client.session(sid).idle_ttl_s == 600
    with pytest.raises(curvd.NotFound):
        client.session(sid)
    kept = CurvdOptimizer(mlp(5), client, "sgd", {"lr": 0.1}, keep_session=True)
    kept.step(x, y)
    kept.close()
    sid = kept.state_dict()["session"]
    assert client.session(sid).steps == 1 and client.session(sid).idle_ttl_s is None
    # Another optimizer taking it over by id keeps the session it moved to
    # (with its idle TTL) when it closes.
    client.set_idle_ttl(sid, 900)
    again = CurvdOptimizer(mlp(5), client, "sgd", session=sid)
    moved = again.session.id
    again.close()
    assert client.session(moved).steps == 1 and client.session(moved).idle_ttl_s == 900
    client.delete_session(moved)


def test_step_after_backward_equals_step_with_the_batch(daemon):
    """The drop-in form: loss.backward(); opt.step() reads p.grad."""
    x, y = blobs(seed=4)
    a, b = mlp(4), mlp(4)
    oa = CurvdOptimizer(a, daemon.url, "adagrad_bma", {"lr": 0.1})
    ob = CurvdOptimizer(b, daemon.url, "adagrad_bma", {"lr": 0.1})
    for _ in range(3):
        oa.zero_grad()
        F.cross_entropy(a(x), y).backward()
        assert oa.step() is None
        ob.step(x, y)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a[0].weight, mlp(4)[0].weight)


@pytest.mark.parametrize("kind", ["mbag", "kfac", "hf"])
def test_encodings_train_identically(daemon, offered, layers_refused, kind):
    """Steps, layer statistics, callback vectors and answers in JSON, b64
    and binary: the same parameters bit for bit."""
    need(offered, kind, layers_refused)
    data = blobs(seed=5)
    models = {enc: mlp(5) for enc in ("json", "b64", "binary")}
    for enc, model in models.items():
        train(CurvdOptimizer(model, daemon.url, kind, RUNS[kind][1], encoding=enc),
              model, data, 4)
    for pj, p64, pb in zip(*(m.parameters() for m in models.values())):
        assert torch.equal(pj, p64) and torch.equal(pj, pb)


def test_learning_rate_follows_param_groups_and_schedulers(daemon):
    model = mlp(6)
    opt = CurvdOptimizer(model, daemon.url, "sgd", {"lr": 0.4})
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x, y = blobs(seed=6)
    for _ in range(4):
        opt.step(x, y)
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    opt.step(x, y)  # the change reaches the session before the step
    assert opt.session.refresh().config["lr"] == pytest.approx(0.1)


def test_state_dict_continues_the_session(daemon):
    model = mlp(7)
    data = blobs(seed=7)
    opt = CurvdOptimizer(model, daemon.url, "adagrad_diag", {"lr": 0.1})
    train(opt, model, data, 3)
    state = opt.state_dict()
    opt.close()  # the snapshot outlives the session
    twin = copy.deepcopy(model)
    again = CurvdOptimizer(twin, curvd.Client(daemon.url), "adagrad_diag")
    again.load_state_dict(state)
    train(again, twin, data, 2)
    assert again.session.id != state["session"] and again.session.refresh().steps == 5
    with pytest.raises(ValueError, match="does not fit"):
        CurvdOptimizer(cnn(), daemon.url, "adagrad_diag").load_state_dict(state)


def test_bias_blocks_put_each_bias_in_a_vector_block(daemon):
    """bias_blocks: weight-only layer blocks and one vector block per bias
    (the BMA paper's weight/bias partition). AdaGrad-diag does not see
    partitions, so it trains exactly as with the biases folded in; BMA's
    block partition does, so its updates change."""
    x, y = blobs(seed=8)
    params = {}
    for kind in ("adagrad_diag", "adagrad_bma"):
        for split in (False, True):
            model = mlp(8)
            opt = CurvdOptimizer(model, daemon.url, kind, {"lr": 0.1, **(
                {"partition": "block"} if kind == "adagrad_bma" else {})}, bias_blocks=split)
            train(opt, model, (x, y), 3)
            params[kind, split] = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
            if split:
                assert [(b["name"], b["kind"], b.get("bias", False), b["shape"])
                        for b in opt.session.layout] == [
                    ("0", "dense", False, [8, 4]), ("2", "dense", False, [3, 8]),
                    ("0.bias", "vector", False, [8]), ("2.bias", "vector", False, [3])]
    torch.testing.assert_close(params["adagrad_diag", True], params["adagrad_diag", False],
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(params["adagrad_bma", True], params["adagrad_bma", False],
                              rtol=1e-4, atol=1e-5)
