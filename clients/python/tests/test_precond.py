# SPDX-License-Identifier: MIT
"""curvd.torch.Preconditioner (issue 22, item 2) with the user's own torch
optimizer, loss, clipping, accumulation and GradScaler, each checked
against the preconditioned gradient computed here in numpy from its
formula: AdaGrad's g / sqrt(r + eps), and for K-FAC the dense inverse of
the damped Kronecker product of factors formed from the layers' inputs
and per-example signals, which this file computes with its own forward
pass."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvd
from curvd.torch import Preconditioner
from test_optim import blobs, cnn, images, need
from test_torch_conventions import Backwards

DAMPING = 0.3
KFAC = {"damping": DAMPING, "precision": "fp64"}


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def data(m=16, seed=0):
    x, y = blobs(m, seed)
    return x.double(), y


def raw_grads(model):
    return [p.grad.detach().clone().numpy() for p in model.parameters()]


# ---- references ---------------------------------------------------------------


def layer_rows(model, x, total_loss):
    """{block: (inputs, per-example signals)} of tiny(): the signals are the
    gradients of the sum of per-example losses at each layer's output."""
    W1, b1, W2, b2 = [p.detach() for p in model.parameters()]
    z1 = (x @ W1.T + b1).requires_grad_()
    h = torch.tanh(z1)
    z2 = h @ W2.T + b2
    g1, g2 = torch.autograd.grad(total_loss(z2), [z1, z2])
    return {"0": (x.numpy(), g1.numpy()), "2": (h.detach().numpy(), g2.numpy())}


class KfacReference:
    """K-FAC's factors as exponential averages (eps = min(1 - 1/k, decay))
    and the preconditioned gradient as a solve with the dense Kronecker
    product of the damped factors (Martens & Grosse's factored damping)."""

    def __init__(self, damping=DAMPING, decay=0.95):
        self.damping, self.decay, self.k = damping, decay, 0
        self.A, self.G = {}, {}

    def update(self, rows):
        self.k += 1
        eps = min(1 - 1 / self.k, self.decay)
        for name, (a, s) in rows.items():
            abar = np.hstack([a, np.ones((a.shape[0], 1))])
            A, G = abar.T @ abar / a.shape[0], s.T @ s / s.shape[0]
            self.A[name] = eps * self.A.get(name, 0) + (1 - eps) * A
            self.G[name] = eps * self.G.get(name, 0) + (1 - eps) * G

    def precondition(self, name, dW, db):
        A, G = self.A[name], self.G[name]
        pi = math.sqrt((np.trace(A) / len(A)) / (np.trace(G) / len(G)))
        Ad = A + pi * self.damping * np.eye(len(A))
        Gd = G + self.damping / pi * np.eye(len(G))
        V = np.hstack([dW, db[:, None]])  # the layer's [n_out, n_in + 1] gradient
        U = np.linalg.solve(np.kron(Gd, Ad), V.reshape(-1)).reshape(V.shape)
        return U[:, :-1], U[:, -1]

    def grads(self, g):
        """The preconditioned gradient of tiny()'s four parameters."""
        return [*self.precondition("0", g[0], g[1]), *self.precondition("2", g[2], g[3])]


def ce_sum(y):
    return lambda z: F.cross_entropy(z, y, reduction="sum")


def assert_grads(model, expected, rtol=1e-9):
    for p, e in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=rtol, atol=1e-12)


# ---- K-FAC ----------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_kfac_gives_the_kronecker_factored_inverse_to_a_torch_optimizer(
        daemon, offered, layers_refused, optimizer):
    need(offered, "kfac", layers_refused)
    model, (x, y) = tiny(1), data(seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pc = Preconditioner(model, daemon.url, "kfac", KFAC)
    assert not record  # no fallback here
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=0.01))
    ref = KfacReference()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ref.update(layer_rows(model, x, ce_sum(y)))
        expected = ref.grads(raw_grads(model))
        assert pc.step() is True
        assert_grads(model, expected)
        opt.step()
    assert pc.session.refresh().steps == 3 and pc.session.config["mode"] == "simple"


def test_kfac_statistics_over_accumulated_micro_batches(daemon, offered, layers_refused):
    """Four micro-batches of 8, each loss / 4: the statistics and the
    gradient of the whole batch of 32."""
    need(offered, "kfac", layers_refused)
    model, (x, y) = tiny(2), data(32, seed=2)
    pc = Preconditioner(model, daemon.url, "kfac", KFAC)
    model.zero_grad()
    for xb, yb in zip(x.split(8), y.split(8)):
        (F.cross_entropy(model(xb), yb) / 4).backward()
    with torch.no_grad():
        model(x)  # an evaluation pass between: not statistics
    ref = KfacReference()
    ref.update(layer_rows(model, x, ce_sum(y)))
    expected = ref.grads(raw_grads(model))
    pc.step()
    assert_grads(model, expected)


def test_kfac_with_any_loss_and_clipping(daemon, offered, layers_refused):
    """A loss that is none of the three (label smoothing plus an L1 term on
    the output): the empirical Fisher of its own gradient, then
    clip_grad_norm_ on the preconditioned gradient."""
    need(offered, "kfac", layers_refused)
    model, (x, y) = tiny(3), data(seed=3)
    pc = Preconditioner(model, daemon.url, "kfac", KFAC)

    def per_example(z, y):
        return F.cross_entropy(z, y, label_smoothing=0.1, reduction="none") + 0.05 * z.abs().sum(1)
    per_example(model(x), y).mean().backward()
    ref = KfacReference()
    ref.update(layer_rows(model, x, lambda z: per_example(z, y).sum()))
    expected = ref.grads(raw_grads(model))
    pc.step()
    assert_grads(model, expected)
    total = math.sqrt(sum(float((e ** 2).sum()) for e in expected))
    assert total > 0.5
    nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    assert_grads(model, [e * 0.5 / (total + 1e-6) for e in expected])


def test_kfac_true_fisher_samples_targets_from_the_model(daemon, offered, layers_refused):
    need(offered, "kfac", layers_refused)
    model, (x, y) = tiny(4), data(seed=4)
    pc = Preconditioner(model, daemon.url, "kfac", KFAC, fisher="true", loss="cross_entropy",
                        seed=7)
    assert pc.session.config["fisher"] == "true"
    with torch.no_grad():
        p = torch.softmax(model(x), 1)
    sampled = torch.multinomial(p, 1, generator=torch.Generator().manual_seed(7)).reshape(-1)
    F.cross_entropy(model(x), y).backward()
    ref = KfacReference()
    ref.update(layer_rows(model, x, ce_sum(sampled)))
    expected = ref.grads(raw_grads(model))
    pc.step()
    assert_grads(model, expected)


class CpuGradScaler:
    """torch's GradScaler protocol on the CPU (torch.amp.GradScaler("cpu")
    exists from torch 2.3; Debian's 1.13 scales CUDA tensors only): scale
    the loss, unscale_ the optimizer's gradients and note an overflow,
    skip the step on one, halve the scale after it."""

    def __init__(self, scale=1024.0):
        self.scale_, self.found_inf = scale, False

    def get_scale(self):
        return self.scale_

    def scale(self, loss):
        return loss * self.scale_

    def unscale_(self, opt):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        self.found_inf = any(not torch.isfinite(g).all() for g in grads)
        for g in grads:
            g.div_(self.scale_)

    def step(self, opt):
        if not self.found_inf:
            opt.step()

    def update(self):
        if self.found_inf:
            self.scale_ /= 2


def grad_scaler():
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cpu", init_scale=1024.0)
    return CpuGradScaler(1024.0)


def test_kfac_with_a_grad_scaler_and_an_overflow(daemon, offered, layers_refused):
    need(offered, "kfac", layers_refused)
    model, (x, y) = tiny(5), data(seed=5)
    scaler = grad_scaler()
    pc = Preconditioner(model, daemon.url, "kfac", KFAC, grad_scaler=scaler)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    ref = KfacReference()
    for i in range(3):
        opt.zero_grad()
        scaler.scale(F.cross_entropy(model(x), y)).backward()
        if i == 1:  # an overflow in the backward pass
            model[0].weight.grad[0, 0] = float("inf")
        scaler.unscale_(opt)
        before = [p.detach().clone() for p in model.parameters()]
        if i == 1:
            grads = raw_grads(model)
            assert pc.step() is False
            assert_grads(model, grads, rtol=0)
        else:
            ref.update(layer_rows(model, x, ce_sum(y)))
            expected = ref.grads(raw_grads(model))
            assert pc.step() is True
            assert_grads(model, expected)
        scaler.step(opt)
        scaler.update()
        moved = any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
        assert moved == (i != 1)
    assert pc.session.refresh().steps == 2


# ---- first-order kinds ---------------------------------------------------------------


class AdagradReference:
    """AdaGrad-diag's preconditioned gradient: r += g^2, g / sqrt(r + eps)."""

    def __init__(self, eps=1e-8):
        self.r, self.eps = None, eps

    def grads(self, g):
        self.r = [gi ** 2 for gi in g] if self.r is None else \
            [r + gi ** 2 for r, gi in zip(self.r, g)]
        return [gi / np.sqrt(r + self.eps) for gi, r in zip(g, self.r)]


def test_adagrad_with_sgd_any_loss_and_clipping(daemon):
    model, (x, y) = tiny(6), data(seed=6)
    pc = Preconditioner(model, daemon.url, "adagrad_diag")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ref = AdagradReference()
    for _ in range(3):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 0.01 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        expected = ref.grads(raw_grads(model))
        pc.step()
        assert_grads(model, expected)
        total = math.sqrt(sum(float((e ** 2).sum()) for e in expected))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        assert_grads(model, [e * min(1.0, 1.0 / (total + 1e-6)) for e in expected])
        opt.step()


def test_adagrad_with_adamw_equals_adamw_on_the_reference_gradient(daemon):
    model, (x, y) = tiny(7), data(seed=7)
    twin = tiny(7)
    pc = Preconditioner(model, daemon.url, "adagrad_diag", {"eps": 1e-6})
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=0.01, weight_decay=0.1)
    ref = AdagradReference(eps=1e-6)
    for _ in range(4):
        for net, o in ((model, opt), (twin, twin_opt)):
            o.zero_grad()
            F.cross_entropy(net(x), y).backward()
        pc.step()
        for p, e in zip(twin.parameters(), ref.grads(raw_grads(twin))):
            p.grad = torch.from_numpy(e)
        opt.step()
        twin_opt.step()
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_adagrad_over_accumulated_micro_batches(daemon):
    model, (x, y) = tiny(8), data(32, seed=8)
    pc = Preconditioner(model, daemon.url, "adagrad_diag")
    model.zero_grad()
    for xb, yb in zip(x.split(8), y.split(8)):
        (F.cross_entropy(model(xb), yb) / 4).backward()
    full = tiny(8)
    F.cross_entropy(full(x), y).backward()
    expected = AdagradReference().grads(raw_grads(full))
    pc.step()
    assert_grads(model, expected, rtol=1e-7)


def test_adagrad_full_is_the_inverse_root_of_the_summed_outer_products(daemon):
    """H = sum of g g^T over the steps, P g = (H + eps I)^(-1/2) g by
    numpy's eigendecomposition (eigenvalues below eig_floor times the
    largest clamped to that)."""
    model, (x, y) = tiny(26), data(seed=26)
    pc = Preconditioner(model, daemon.url, "adagrad_full")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    H = 0
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        g = raw_grads(model)
        # Flat in wire order: per layer [weight | bias] row-major.
        flat = np.concatenate([np.hstack([g[0], g[1][:, None]]).ravel(),
                               np.hstack([g[2], g[3][:, None]]).ravel()])
        H = H + np.outer(flat, flat)
        lam, V = np.linalg.eigh(H + 1e-8 * np.eye(len(H)))
        pg = V @ ((V.T @ flat) / np.sqrt(np.maximum(lam, 1e-12 * lam.max())))
        first, second = pg[:25].reshape(5, 5), pg[25:].reshape(3, 6)
        pc.step()
        assert_grads(model, [first[:, :4], first[:, 4], second[:, :5], second[:, 5]],
                     rtol=1e-7)  # two eigendecompositions
        opt.step()


FIRST_ORDER = ["sgd", "adagrad_diag", "adagrad_full", "adagrad_bma", "mbag", "mbag_ema",
               "mbag_n"]


@pytest.mark.parametrize("kind", FIRST_ORDER)
def test_every_first_order_kind_preconditions_and_trains(daemon, offered, kind):
    need(offered, kind)
    model, (x, y) = tiny(9), data(64, seed=9)
    pc = Preconditioner(model, daemon.url, kind, {"tau": 4} if kind.startswith("mbag") else None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        g = raw_grads(model)
        pc.step()
        if kind == "sgd":  # the identity
            assert_grads(model, g, rtol=0)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


# ---- state and errors ----------------------------------------------------------------


def test_state_dict_continues_the_preconditioner(daemon):
    (x, y) = data(seed=10)
    a, b = tiny(10), tiny(10)
    pa = Preconditioner(a, daemon.url, "adagrad_diag")
    F.cross_entropy(a(x), y).backward()
    pa.step()
    pb = Preconditioner(b, daemon.url, "adagrad_diag")
    pb.load_state_dict(pa.state_dict())
    for net, pc in ((a, pa), (b, pb)):
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        pc.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p.grad, q.grad)
    with pytest.raises(ValueError) as e:
        Preconditioner(tiny(), daemon.url, "sgd").load_state_dict(pa.state_dict())
    assert str(e.value) == ("Preconditioner.load_state_dict takes what a Preconditioner of "
                            "kind 'sgd' returned from state_dict()")


FIXED_MSG = ("{key!r} is not a Preconditioner setting: the session returns the "
             "preconditioned gradient, so it runs with {fixed}; the learning rate, its schedule, "
             "momentum and weight decay belong to the torch optimizer that takes p.grad")


@pytest.mark.parametrize("kind,key,fixed", [
    ("adagrad_diag", "lr", "lr=1.0, lr_schedule=constant"),
    ("adagrad_diag", "lr_gamma", "lr=1.0, lr_schedule=constant"),
    ("mbag", "beta", "lr=1.0, lr_schedule=constant, beta=0.0"),
    ("kfac", "momentum", "lr=1.0, lr_schedule=constant, mode=simple, momentum=0.0, "
                         "weight_decay=0.0"),
    ("kfac", "mode", "lr=1.0, lr_schedule=constant, mode=simple, momentum=0.0, "
                     "weight_decay=0.0"),
])
def test_optimizer_settings_are_refused(daemon, offered, kind, key, fixed):
    need(offered, kind)
    with pytest.raises(ValueError) as e:
        Preconditioner(tiny(), daemon.url, kind, {key: 0.5})
    assert str(e.value) == FIXED_MSG.format(key=key, fixed=fixed)


def test_constructor_errors(daemon):
    cases = [
        (dict(kind="hf"), ValueError,
         "hf chooses its own step by conjugate gradient and line search on the loss, which a "
         "preconditioner cannot ask for: use CurvdOptimizer(model, client, 'hf') for it"),
        (dict(kind="kfac", fisher="true"), ValueError,
         "fisher='true' samples targets from the model's predictive distribution: name it "
         "with loss= ('cross_entropy', 'mse', 'binary_cross_entropy' or a curvd.torch.Loss "
         "with sample())"),
        (dict(kind="kfac", fisher="sampled"), ValueError,
         "fisher must be 'empirical' or 'true', got 'sampled'"),
        (dict(kind="kfac", loss_reduction="none"), ValueError,
         "loss_reduction must be 'mean' or 'sum', got 'none'"),
        (dict(kind="adam"), ValueError, "the daemon has no optimizer 'adam'; it offers "),
        (dict(kind="kfac", config={"fisher": "true"}), ValueError,
         "config fisher='true' but fisher='empirical': pass fisher= to the Preconditioner, "
         "which makes the signals"),
        (dict(kind="sgd", model=[nn.Parameter(torch.zeros(2))]), TypeError,
         "Preconditioner needs the model (a torch.nn.Module), not list: it hooks the "
         "model's layers"),
    ]
    for kw, exc, msg in cases:
        model = kw.pop("model", tiny())
        kind, config = kw.pop("kind"), kw.pop("config", None)
        with pytest.raises(exc) as e:
            Preconditioner(model, daemon.url, kind, config, **kw)
        assert str(e.value).startswith(msg), str(e.value)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        z = self.fc(x)
        return z, z.detach()


def test_step_errors(daemon, offered, layers_refused):
    need(offered, "kfac", layers_refused)
    two = TwoHeads()
    Preconditioner(two, daemon.url, "kfac", fisher="true", loss="mse")
    with pytest.raises(TypeError) as e:
        two(torch.zeros(2, 4))
    assert str(e.value) == ("fisher='true' samples targets from the model's output, which "
                            "must be one tensor of last pre-activations, not tuple")
    model, (x, y) = tiny(), data()
    pc = Preconditioner(model, daemon.url, "kfac", KFAC)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    with torch.no_grad():
        model(x)
    with pytest.raises(ValueError) as e:
        pc.step()
    assert str(e.value) == (
        "kfac: no layer statistics since the last step: they come from the forward passes "
        "made with autograd on and their backward passes (empirical Fisher); run model(x) and "
        "loss.backward() between steps, p.grad alone is not enough")
    assert pc.session.refresh().steps == 0
    model.zero_grad()
    scaler = CpuGradScaler(0.0)
    pc = Preconditioner(model, daemon.url, "kfac", KFAC, grad_scaler=scaler)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError) as e:
        pc.step()
    assert str(e.value) == "the grad_scaler's scale is 0.0, not a positive number"


def test_kfac_on_conv_layers_passes_other_parameters_through(daemon, offered, layers_refused):
    """Conv2d layers get K-FAC's preconditioning; the GroupNorm's gain and
    shift (vector blocks, fallback sgd at fallback_lr 1) keep their
    gradient exactly; the model trains."""
    need(offered, "kfac", layers_refused)
    model, (x, y) = cnn(3), images(64, seed=3)
    with pytest.warns(UserWarning, match="'3' \\(GroupNorm: weight, bias\\)"):
        pc = Preconditioner(model, daemon.url, "kfac", {"damping": 0.1})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    norm = model[3]
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        kept = [norm.weight.grad.clone(), norm.bias.grad.clone()]
        conv = model[0].weight.grad.clone()
        pc.step()
        assert torch.equal(norm.weight.grad, kept[0]) and torch.equal(norm.bias.grad, kept[1])
        assert not torch.allclose(model[0].weight.grad, conv)
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0]


def test_kfac_layers_follow_the_first_forward_passs_call_order(daemon, offered, layers_refused):
    need(offered, "kfac", layers_refused)
    model, (x, y) = Backwards(), blobs(seed=24)
    pc = Preconditioner(model, daemon.url, "kfac", {"inverse": "tridiag"})
    made = pc.session.id
    assert [d["name"] for d in pc.session.layout] == ["second", "first"]
    F.cross_entropy(model(x), y).backward()
    pc.step()
    assert [d["name"] for d in pc.session.layout] == ["first", "second"]
    assert pc.session.id != made and pc.session.refresh().steps == 1
    with pytest.raises(curvd.NotFound):
        curvd.Client(daemon.url).session(made)
    # A preconditioner of the same model continues it in that order.
    again = Preconditioner(Backwards(), daemon.url, "kfac", {"inverse": "tridiag"})
    again.load_state_dict(pc.state_dict())
    assert [d["name"] for d in again.session.layout] == ["first", "second"]
    assert [b.name for b in again.blocks] == ["first", "second"]
    with pytest.raises(ValueError) as e:
        again.load_state_dict(Preconditioner(tiny(), daemon.url, "kfac").state_dict())
    assert str(e.value).startswith("the state's layout [{'name': '0', 'kind': 'dense', ")
    assert str(e.value).endswith("is not this model's [{'name': 'first', 'kind': 'dense', "
                                 "'shape': [8, 4], 'bias': True}, {'name': 'second', 'kind': "
                                 "'dense', 'shape': [3, 8], 'bias': True}]")


def test_an_unused_parameter_keeps_no_gradient(daemon):
    """torch optimizers skip a parameter whose grad is None (no decay, no
    moments): the Preconditioner leaves it None."""
    model, (x, y) = tiny(25), data(seed=25)
    spare = nn.Linear(2, 2).double()
    model.add_module("spare", spare)  # never called
    pc = Preconditioner(model, daemon.url, "adagrad_diag")
    F.cross_entropy(model[:3](x), y).backward()
    expected = AdagradReference().grads(raw_grads(model[:3]))
    pc.step()
    assert spare.weight.grad is None and spare.bias.grad is None
    assert_grads(model[:3], expected)
