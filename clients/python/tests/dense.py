# SPDX-License-Identifier: MIT
"""Dense reference math for the torch suites, written independently of
curvd's code: the flat wire vector of a model (per Linear/Conv2d a
row-major [out, in + 1] matrix with the bias last, then the other
parameters), textbook per-example losses, and the whole Gauss-Newton
matrix from autograd's Jacobian and Hessian."""

import numpy as np
import torch
from torch import nn


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def convnet():
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.Sigmoid(), nn.Flatten(),
                         nn.Linear(3 * 2 * 2, 3), nn.LayerNorm(3)).double()


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
    """G over the flat wire vector; @name: a loss of textbook_loss, or a
    function (z_i, y_i) -> one example's loss."""
    theta = current(model)
    loss = name if callable(name) else (lambda zi, yi: textbook_loss(name, zi, yi))

    def outputs(flat):
        return functional_call(model, unpack(model, flat), x)

    jac = torch.autograd.functional.jacobian(outputs, theta)  # [m, k, d]
    z = outputs(theta).detach()
    g = torch.zeros(theta.numel(), theta.numel(), dtype=torch.float64)
    for i in range(x.shape[0]):
        h = torch.autograd.functional.hessian(lambda zi: loss(zi, y[i]), z[i])
        g += jac[i].T @ h @ jac[i]
    return g / x.shape[0], outputs


def targets(name, m, k):
    gen = torch.Generator().manual_seed(3)
    if name == "cross_entropy":
        return torch.randint(0, k, (m,), generator=gen)
    if name == "binary_cross_entropy":
        return torch.bernoulli(torch.full((m, k), 0.4, dtype=torch.float64), generator=gen)
    return torch.randn(m, k, generator=gen, dtype=torch.float64)


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
