# SPDX-License-Identifier: MIT
"""TorchOracle against dense math formed here with autograd: the whole
Gauss-Newton matrix G = (1/m) sum_x J_x^T H_x J_x of tiny nets, from a
Jacobian (torch.autograd.functional.jacobian) and each example's loss
Hessian (torch.autograd.functional.hessian of the textbook loss formula),
over the flat wire vector unpacked by the test's own code."""

import numpy as np
import pytest
import torch
from torch import nn

from curvd.torch import TorchOracle, get_loss, model_blocks

torch.set_default_dtype(torch.float64)


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))


def convnet():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.Sigmoid(), nn.Flatten(),
                         nn.Linear(3 * 2 * 2, 3), nn.LayerNorm(3))


def unpack(model, flat):
    """{parameter name: tensor} from a flat vector in wire order, written
    independently of curvd's layout code: per Linear/Conv2d a row-major
    [out, in + 1] matrix with the bias last, then other parameters."""
    out, k = {}, 0
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for n, m in mods:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        mat = flat[k:k + rows * (cols + 1)].reshape(rows, cols + 1)
        out[f"{n}.weight"] = mat[:, :cols].reshape(m.weight.shape)
        out[f"{n}.bias"] = mat[:, cols]
        k += rows * (cols + 1)
    for n, p in model.named_parameters():
        if n not in out:
            out[n] = flat[k:k + p.numel()].reshape(p.shape)
            k += p.numel()
    assert k == flat.numel()
    return out


def current(model):
    """The model's parameters as the flat wire vector."""
    parts = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            parts.append(torch.cat([m.weight.reshape(m.weight.shape[0], -1),
                                    m.bias.reshape(-1, 1)], 1).reshape(-1))
    taken = {id(p) for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
             for p in (m.weight, m.bias)}
    parts += [p.reshape(-1) for p in model.parameters() if id(p) not in taken]
    return torch.cat(parts).detach()


def functional_call(model, params, x):
    """model(x) with @params in place of its own (torch 1.13 and 2.x)."""
    f = getattr(getattr(torch, "func", None), "functional_call", None)
    return (f or torch.nn.utils.stateless.functional_call)(model, params, (x,))


def textbook_loss(name, z, y):
    """One example's loss from its formula (thesis Table 4.1)."""
    if name == "mse":
        return 0.5 * ((z - y) ** 2).sum()
    if name == "cross_entropy":
        return -(z[y] - torch.logsumexp(z, 0))
    p = torch.sigmoid(z)
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).sum()


def dense_ggn(model, x, y, name):
    theta = current(model)

    def outputs(flat):
        return functional_call(model, unpack(model, flat), x)

    jac = torch.autograd.functional.jacobian(outputs, theta)  # [m, k, d]
    z = outputs(theta).detach()
    g = torch.zeros(theta.numel(), theta.numel())
    for i in range(x.shape[0]):
        h = torch.autograd.functional.hessian(lambda zi: textbook_loss(name, zi, y[i]), z[i])
        g += jac[i].T @ h @ jac[i]
    return g / x.shape[0], outputs


def targets(name, m, k):
    gen = torch.Generator().manual_seed(3)
    if name == "cross_entropy":
        return torch.randint(0, k, (m,), generator=gen)
    if name == "binary_cross_entropy":
        return torch.bernoulli(torch.full((m, k), 0.4), generator=gen)
    return torch.randn(m, k, generator=gen)


def as_wire(blocks, flat):
    """{block: array} of a flat wire vector (blocks follow model_blocks)."""
    out, k = {}, 0
    for b in blocks:
        n = int(np.prod(b.wire_shape))
        out[b.name] = flat[k:k + n].reshape(b.wire_shape).numpy()
        k += n
    return out


def from_wire(blocks, vec):
    return torch.cat([torch.as_tensor(vec[b.name]).reshape(-1) for b in blocks])


CASES = [(mlp, (5, 3)), (convnet, (4, 2, 4, 4))]


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
@pytest.mark.parametrize("make,xshape", CASES, ids=["mlp", "conv"])
def test_products_form_the_dense_ggn(make, xshape, loss):
    model = make()
    x = torch.randn(*xshape, generator=torch.Generator().manual_seed(4))
    y = targets(loss, xshape[0], 3)
    g, _ = dense_ggn(model, x, y, loss)
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, get_loss(loss), x, y)
    d = g.shape[0]
    basis = [as_wire(blocks, torch.eye(d)[j]) for j in range(d)]
    cols = [from_wire(blocks, p) for p in oracle.curvature_products(basis)]
    np.testing.assert_allclose(torch.stack(cols, 1).numpy(), g.numpy(), rtol=1e-9, atol=1e-12)
    assert torch.linalg.matrix_norm(g) > 1e-3  # not trivially zero


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_gram_matrix_and_curvature_subset(loss):
    model = mlp()
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    y = targets(loss, 6, 3)
    g, _ = dense_ggn(model, x[:4], y[:4], loss)  # the curvature cases: the first 4
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, get_loss(loss), x, y, curvature_examples=4)
    v = torch.randn(3, g.shape[0], generator=torch.Generator().manual_seed(6))
    gram = np.array(oracle.quadratic_form([as_wire(blocks, r) for r in v]))
    np.testing.assert_allclose(gram, (v @ g @ v.T).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy", "binary_cross_entropy"])
def test_losses_at_candidate_updates(loss):
    model = convnet()
    x = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(7))
    y = targets(loss, 4, 3)
    theta = current(model)
    blocks = model_blocks(model)
    oracle = TorchOracle(model, blocks, get_loss(loss), x, y, curvature_examples=1)
    v = 0.1 * torch.randn(2, theta.numel(), generator=torch.Generator().manual_seed(8))
    got = oracle.losses([as_wire(blocks, r) for r in v])
    for vi, gi in zip(v, got):
        z = functional_call(model, unpack(model, theta + vi), x)
        want = sum(textbook_loss(loss, z[i], y[i]) for i in range(4)) / 4
        assert gi == pytest.approx(float(want), rel=1e-12)
    assert torch.equal(current(model), theta)  # restored bit for bit
