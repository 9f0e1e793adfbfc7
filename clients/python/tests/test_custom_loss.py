# SPDX-License-Identifier: MIT
"""Custom losses (issue 22, item 4): GaussNewtonLoss gives K-FAC and HF
any per-example loss with its output-layer Gauss-Newton factor. Checked
against the dense Gauss-Newton matrix formed from autograd's Hessian of
the loss formula, against the built-in squared error (the same loss
written as a GaussNewtonLoss trains bit for bit alike), and against the
K-FAC reference of test_precond for the true Fisher's signals."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curvd.torch import CurvdOptimizer, GaussNewtonLoss, Preconditioner, TorchOracle
from curvd.torch import model_blocks
from dense import as_wire, dense_ggn, from_wire, mlp, randn
from test_optim import RUNS, blobs, need
from test_precond import KFAC, KfacReference, assert_grads, layer_rows, raw_grads, tiny


def poisson_formula(zi, yi):
    """One example's Poisson regression loss with the log link."""
    return (torch.exp(zi) - yi * zi).sum()


def poisson():
    """L = sum_j exp(z_j) - y_j z_j; H_L = diag(exp(z)), S = diag(exp(z / 2))."""
    return GaussNewtonLoss(lambda z, y: (torch.exp(z) - y * z).sum(1),
                           lambda z: torch.diag_embed(torch.exp(z / 2)), name="poisson")


def squared_error():
    """The built-in "mse" written as a GaussNewtonLoss: S = I."""
    return GaussNewtonLoss(lambda z, y: 0.5 * ((z - y) ** 2).sum(1),
                           lambda z: torch.eye(z.shape[1], dtype=z.dtype).expand(
                               z.shape[0], -1, -1), name="squared")


def test_products_and_gram_form_the_dense_ggn_of_a_custom_loss():
    model, x = mlp(), randn(5, 3, seed=4)
    y = torch.poisson(torch.full((5, 3), 2.0, dtype=torch.float64),
                      generator=torch.Generator().manual_seed(1))
    g, _ = dense_ggn(model, x, y, poisson_formula)
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, poisson(), x, y)
    d = g.shape[0]
    basis = [as_wire(blocks, torch.eye(d, dtype=torch.float64)[j]) for j in range(d)]
    cols = [from_wire(blocks, p) for p in oracle.curvature_products(basis)]
    np.testing.assert_allclose(torch.stack(cols, 1).numpy(), g.numpy(), rtol=1e-9, atol=1e-12)
    v = randn(3, d, seed=6)
    gram = np.array(oracle.quadratic_form([as_wire(blocks, r) for r in v]))
    np.testing.assert_allclose(gram, (v @ g @ v.T).numpy(), rtol=1e-9, atol=1e-12)
    assert torch.linalg.matrix_norm(g) > 1e-3


@pytest.mark.parametrize("run", ["kfac", "kfac_empirical", "hf"])
def test_a_custom_loss_trains_like_the_builtin_it_restates(daemon, offered, layers_refused,
                                                           run):
    kind, config = RUNS[run]
    need(offered, kind, layers_refused)
    x, y = blobs(seed=21)
    target = F.one_hot(y, 3).float()
    models = {"builtin": tiny(21).float(), "custom": tiny(21).float()}
    for name, loss in (("builtin", "mse"), ("custom", squared_error())):
        cfg = dict(config, inv_interval=1) if kind == "kfac" else config
        opt = CurvdOptimizer(models[name], daemon.url, kind, cfg, loss=loss)
        for _ in range(3):
            opt.step(x, target)
    for p, q in zip(models["builtin"].parameters(), models["custom"].parameters()):
        if run == "kfac":  # the built-in's signal z - (z + eps) is -eps up to rounding
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
        else:
            assert torch.equal(p, q)
    assert not torch.equal(models["builtin"][0].weight, tiny(21)[0].weight.float())


def test_hf_trains_on_a_custom_loss(daemon, offered):
    need(offered, "hf")
    torch.manual_seed(22)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(22))
    y = torch.poisson(torch.exp(0.5 * x[:, :2]))
    opt = CurvdOptimizer(model, daemon.url, "hf", loss=poisson())
    losses = [opt.step(x, y) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0]


def test_the_true_fisher_of_a_custom_loss_from_its_factor(daemon, offered, layers_refused):
    """Without sample(), the true Fisher's output signals are S^T eps,
    eps ~ N(0, I): here exp(z / 2) * eps with eps drawn from the seed."""
    need(offered, "kfac", layers_refused)
    model = tiny(23)
    x, _ = blobs(16, seed=23)
    x = x.double()
    y = torch.poisson(torch.full((16, 3), 1.0, dtype=torch.float64))
    pc = Preconditioner(model, daemon.url, "kfac", KFAC, fisher="true", loss=poisson(), seed=5)
    with torch.no_grad():
        z = model(x)
    eps = torch.randn((16, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    signal = torch.exp(z / 2) * eps
    poisson().per_example(model(x), y).mean().backward()
    ref = KfacReference()
    ref.update(layer_rows(model, x, lambda zz: (zz * signal).sum()))
    expected = ref.grads(raw_grads(model))
    pc.step()
    assert_grads(model, expected)


def test_a_factor_of_the_wrong_shape_is_refused():
    bad = GaussNewtonLoss(lambda z, y: z.sum(1), lambda z: torch.ones(z.shape[0], 2),
                          name="bad")
    with pytest.raises(ValueError) as e:
        bad.hess_vec(torch.zeros(4, 3), torch.zeros(4, 3))
    assert str(e.value) == ("bad: hess_factor(z) must return S as [m, k, n] = [4, k, 3] for an "
                            "output z of [4, 3] (S^T S the loss's Hessian in z per example), "
                            "got [4, 2]")
    with pytest.raises(ValueError) as e:
        bad.sample(torch.zeros(4, 3), torch.Generator())
    assert str(e.value) == ("bad: no sample() was given; the true Fisher's signals come from "
                            "hess_factor")
