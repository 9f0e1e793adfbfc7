# SPDX-License-Identifier: MIT
"""TorchOracle against dense math formed here with autograd: the whole
Gauss-Newton matrix G = (1/m) sum_x J_x^T H_x J_x of tiny nets, from a
Jacobian (torch.autograd.functional.jacobian) and each example's loss
Hessian (torch.autograd.functional.hessian of the textbook loss formula),
over the flat wire vector unpacked by the test's own code."""

import numpy as np
import pytest
import torch

from curvd.torch import TorchOracle, get_loss, model_blocks
from dense import (as_wire, convnet, current, dense_ggn, from_wire, functional_call, mlp,
                   randn, targets, textbook_loss, unpack)

CASES = [(mlp, (5, 3)), (convnet, (4, 2, 4, 4))]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("make,xshape", CASES, ids=["mlp", "conv"])
def test_products_form_the_dense_ggn(make, xshape, loss):
    model = make()
    x = randn(*xshape, seed=4)
    y = targets(loss, xshape[0], 3)
    g, _ = dense_ggn(model, x, y, loss)
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, get_loss(loss), x, y)
    d = g.shape[0]
    basis = [as_wire(blocks, torch.eye(d, dtype=torch.float64)[j]) for j in range(d)]
    cols = [from_wire(blocks, p) for p in oracle.curvature_products(basis)]
    np.testing.assert_allclose(torch.stack(cols, 1).numpy(), g.numpy(), rtol=1e-9, atol=1e-12)
    assert torch.linalg.matrix_norm(g) > 1e-3  # not trivially zero


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_gram_matrix_and_curvature_subset(loss):
    model = mlp()
    x = randn(6, 3, seed=5)
    y = targets(loss, 6, 3)
    g, _ = dense_ggn(model, x[:4], y[:4], loss)  # the curvature cases: the first 4
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, get_loss(loss), x, y, curvature_examples=4)
    v = randn(3, g.shape[0], seed=6)
    gram = np.array(oracle.quadratic_form([as_wire(blocks, r) for r in v]))
    np.testing.assert_allclose(gram, (v @ g @ v.T).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_losses_at_candidate_updates(loss):
    model = convnet()
    x = randn(4, 2, 4, 4, seed=7)
    y = targets(loss, 4, 3)
    theta = current(model)
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, get_loss(loss), x, y, curvature_examples=1)
    v = 0.1 * randn(2, theta.numel(), seed=8)
    got = oracle.losses([as_wire(blocks, r) for r in v])
    for vi, gi in zip(v, got):
        z = functional_call(model, unpack(model, theta + vi), x)
        want = sum(textbook_loss(loss, z[i], y[i]) for i in range(4)) / 4
        assert gi == pytest.approx(float(want), rel=1e-12)
    assert torch.equal(current(model), theta)  # restored bit for bit


def test_gram_diagonal_is_never_negative_in_a_flat_direction():
    """A step that moves every class's bias alike leaves softmax unchanged
    (J v = c 1, H_L 1 = 0): its exact curvature is 0. In float32,
    u^T (H_L u) came out as -5e-30 in the small CNN experiment and the
    daemon refused the Gram matrix; the S J v form keeps it >= 0."""
    from torch import nn
    loss = get_loss("cross_entropy")
    found_negative_before = False
    for seed in range(40):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 10))
        with torch.no_grad():
            model[2].weight.mul_(20)  # saturated softmax, as late in training
        x = torch.randn(64, 4)
        blocks = model_blocks(model)
        oracle = TorchOracle(model, blocks, loss, x, torch.randint(0, 10, (64,)))
        flat = {b.name: np.zeros(b.wire_shape, dtype=np.float32) for b in blocks}
        flat["2"][:, -1] = 1e-14 * (seed + 1)  # the last layer's bias column
        gram = oracle.quadratic_form([flat])
        assert 0 <= gram[0][0] < 1e-34  # a direction it curves in: about 1e-29
        z = model(x).detach()
        jv = oracle.jvp(flat)
        found_negative_before |= float((jv * loss.hess_vec(z, jv)).sum()) < 0
    assert found_negative_before  # the old formula does go negative here
