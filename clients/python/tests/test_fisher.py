# SPDX-License-Identifier: MIT
"""What CurvdOptimizer sends for K-FAC and HF, read back from a fake
daemon and checked against per-example gradients formed here: the
activation/signal scaling (A x G is an example's Fisher block), the true
Fisher's sampling, grad_sq, the layout, and the update applied."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from curvd.torch import CurvdOptimizer, get_loss
from dense import (convnet, current, functional_call, mlp, randn, targets, textbook_loss,
                   unpack)
from fakes import FakeDaemon


@pytest.fixture
def fake():
    f = FakeDaemon([], None)
    yield f
    f.close()


def per_example_grads(model, x, y, loss):
    """[m, d] per-example gradients in wire order, one autograd call each."""
    theta = current(model).requires_grad_(True)
    rows = []
    for i in range(x.shape[0]):
        z = functional_call(model, unpack(model, theta), x[i:i + 1])
        (g,) = torch.autograd.grad(textbook_loss(loss, z[0], y[i]), theta)
        rows.append(g)
    return torch.stack(rows).numpy()


def wire_vector(received: dict, layout) -> np.ndarray:
    return np.concatenate([np.asarray(received[b["name"]]).reshape(-1) for b in layout])


def seq_mlp():
    """A Linear applied at 2 positions per example ([m, 2, 3] inputs)."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(8, 3)).double()


def step_through(fake, model, kind, x, y, loss="cross_entropy", **kw):
    opt = CurvdOptimizer(model, fake.url, kind, {"lr": 1.0}, loss=loss, keep_session=True, **kw)
    opt.step(x, y)
    opt.close()
    return fake.steps[-1]


def test_one_example_a_kron_g_is_its_fisher_block(fake):
    model = mlp()
    x, y = randn(1, 3, seed=1), targets("cross_entropy", 1, 3)
    doc, got = step_through(fake, model, "kfac", x, y, fisher="empirical")
    grad = per_example_grads(model, x, y, "cross_entropy")[0]
    offset = 0
    for layer in got["layers"]:
        assert layer["examples"] == 1
        abar = np.append(layer["activations"][0], 1.0)  # the homogeneous coordinate, last
        g = layer["signals"][0]
        size = g.size * abar.size
        block = grad[offset:offset + size]  # row-major W[out][in] with the bias last
        fisher = np.outer(block, block)
        np.testing.assert_allclose(np.kron(np.outer(g, g), np.outer(abar, abar)), fisher,
                                   rtol=1e-10, atol=1e-14)
        offset += size
    assert offset == grad.size and np.abs(grad).max() > 1e-3


@pytest.mark.parametrize("make,xshape,rows", [
    (mlp, (6, 3), {"0": 6, "2": 6}),
    (seq_mlp, (6, 2, 3), {"0": 12, "3": 6}),  # the first layer sees 2 positions per example
    (convnet, (5, 2, 4, 4), {"0": 20, "3": 5}),  # 2 x 2 output positions
], ids=["dense", "seq", "conv"])
@pytest.mark.filterwarnings("ignore:kfac models the curvature")  # the LayerNorm
def test_signals_are_per_example_not_divided_by_the_batch(fake, make, xshape, rows):
    """(1/m) sum over rows of g abar^T is the mean gradient only when each
    signal is d(own loss)/d(pre-activation)."""
    model = make()
    m = xshape[0]
    x, y = randn(*xshape, seed=2), targets("cross_entropy", m, 3)
    doc, got = step_through(fake, model, "kfac", x, y, fisher="empirical", stats_fraction=1.0)
    mean_grad = per_example_grads(model, x, y, "cross_entropy").mean(0)
    np.testing.assert_allclose(wire_vector(got["gradients"], fake.layout), mean_grad,
                               rtol=1e-10, atol=1e-14)
    assert {ly["block"]: ly["activations"].shape[0] for ly in got["layers"]} == rows
    for layer in got["layers"]:
        spec = next(b for b in fake.layout if b["name"] == layer["block"])
        acts, sig = layer["activations"], layer["signals"]
        assert layer["examples"] == (m if spec["kind"] == "conv2d" else acts.shape[0])
        abar = np.concatenate([acts, np.ones((acts.shape[0], 1))], 1)
        np.testing.assert_allclose(sig.T @ abar / m, got["gradients"][layer["block"]],
                                   rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_sampled_targets_give_the_true_fisher(loss):
    """E_y~R(y|z)[grad_z L grad_z L^T] = H_L (the Fisher of the predictive
    distribution, thesis §5.4), by Monte Carlo at a fixed seed."""
    z = torch.tensor([[0.3, -1.2, 0.8]], dtype=torch.float64)
    hess = torch.autograd.functional.hessian(
        lambda zz: textbook_loss(loss, zz, targets(loss, 1, 3)[0]), z[0])
    gen = torch.Generator().manual_seed(11)
    lf = get_loss(loss)
    n = 20000
    ys = lf.sample(z.expand(n, 3), gen)
    zz = z.expand(n, 3).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(lf.per_example(zz, ys).sum(), zz)
    np.testing.assert_allclose((g.T @ g / n).numpy(), hess.numpy(), atol=0.03)


def test_true_fisher_signals_come_from_sampled_targets(fake):
    model = mlp()
    m = 16
    x, y = randn(m, 3, seed=3), targets("cross_entropy", m, 3)
    doc, got = step_through(fake, model, "kfac", x, y, stats_fraction=0.25)
    last = got["layers"][-1]
    n = math.ceil(0.25 * m)
    assert last["signals"].shape == (n, 3) and last["examples"] == n
    p = torch.softmax(model(x[:n]), 1).detach().numpy()
    onehot = p - last["signals"]  # softmax CE: signal = p - e_y for the sampled y
    np.testing.assert_allclose(np.sort(onehot, 1), np.tile([0.0, 0.0, 1.0], (n, 1)), atol=1e-12)


@pytest.mark.parametrize("make,xshape", [(seq_mlp, (5, 2, 3)), (convnet, (5, 2, 4, 4))],
                         ids=["seq", "conv"])
def test_grad_sq_is_the_mean_of_squared_per_example_gradients(fake, make, xshape):
    model = make()
    x, y = randn(*xshape, seed=4), targets("binary_cross_entropy", xshape[0], 3)
    doc, got = step_through(fake, model, "hf", x, y, loss="binary_cross_entropy")
    want = (per_example_grads(model, x, y, "binary_cross_entropy") ** 2).mean(0)
    np.testing.assert_allclose(wire_vector(got["grad_sq"], fake.layout), want, rtol=1e-10,
                               atol=1e-14)
    assert doc["loss"] == pytest.approx(
        float(sum(textbook_loss("binary_cross_entropy", model(x)[i], y[i])
                  for i in range(xshape[0])) / xshape[0]), rel=1e-12)
    assert "layers" not in doc


def test_layout_follows_the_forward_order_and_the_update_is_applied():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(4, 2)  # registered first, called second
            self.early = nn.Conv2d(1, 1, 2)
            self.gain = nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.late(self.early(x).flatten(1)) * self.gain

    torch.manual_seed(6)
    model = Net().double()
    final = {"early": np.arange(5.0).reshape(1, 5), "late": -np.arange(10.0).reshape(2, 5),
             "gain": np.array([0.5, 2.0])}
    fake = FakeDaemon([], final)
    try:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        step_through(fake, model, "sgd", randn(3, 1, 3, 3, seed=5), randn(3, 2, seed=6),
                     loss="mse")
        assert fake.layout == [
            {"name": "early", "kind": "conv2d", "shape": [1, 1, 2, 2], "bias": True},
            {"name": "late", "kind": "dense", "shape": [2, 4], "bias": True},
            {"name": "gain", "kind": "vector", "shape": [2]}]
        after = dict(model.named_parameters())
        for name, (w, b) in {"early": (final["early"][:, :4].reshape(1, 1, 2, 2),
                                       final["early"][:, 4]),
                             "late": (final["late"][:, :4], final["late"][:, 4])}.items():
            np.testing.assert_array_equal((after[f"{name}.weight"] - before[f"{name}.weight"])
                                          .detach().numpy(), w)
            np.testing.assert_array_equal((after[f"{name}.bias"] - before[f"{name}.bias"])
                                          .detach().numpy(), b)
        np.testing.assert_array_equal((after["gain"] - before["gain"]).detach().numpy(),
                                      final["gain"])
    finally:
        fake.close()


def test_inplace_activation_after_a_layer_is_refused(fake):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)).double()
    with pytest.raises(RuntimeError, match="inplace=False"):
        step_through(fake, model, "kfac", randn(4, 3, seed=8), targets("cross_entropy", 4, 3))
    assert fake.steps == []
