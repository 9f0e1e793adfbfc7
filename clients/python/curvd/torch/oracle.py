# SPDX-License-Identifier: MIT
"""Answers to the daemon's callbacks for a torch model and one mini-batch.

C is the Gauss-Newton matrix G = (1/m) sum_x J^T H_L J on the curvature
cases (for the losses here it equals the Fisher), without damping.
Products use the double-backward trick on one cached forward pass (theta
and the batch stay fixed for the whole step): g(u) = J^T u is linear in u,
so differentiating it with respect to u along v gives J v, and a last
backward pass gives J^T (H_L J v). Martens' thesis §4.3 (Alg. 5) computes
the same product with the R-operator.
"""

from contextlib import contextmanager
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..callbacks import CurvatureOracle
from .layout import Block
from .losses import Loss


def take(x, n: int):
    """The first @n examples of a tensor or a tuple/list of tensors."""
    if isinstance(x, (tuple, list)):
        return type(x)(take(t, n) for t in x)
    return x[:n]


def call(model, x):
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def rng_state(device: torch.device):
    """The global random state(s) a forward pass on @device draws from
    (dropout masks): the CPU's, and the device's when it is a GPU."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda, device


@contextmanager
def replay(model: torch.nn.Module, rng=None):
    """A forward pass of @model that leaves no trace: it runs on copies of
    the buffers (BatchNorm's running statistics and num_batches_tracked are
    updated on the copies, the originals are put back untouched), and, with
    @rng from rng_state(), draws the same random numbers (dropout masks) as
    the forward pass that followed rng_state(), without moving the global
    generators. The buffers are swapped, not copied back in place: the
    originals keep their identity and their autograd versions, and a graph
    built in the pass keeps the copies it saved."""
    swapped = []
    for mod in model.modules():
        for name, b in mod._buffers.items():
            if b is not None:
                swapped.append((mod, name, b))
                mod._buffers[name] = b.clone()
    devices = [rng[2]] if rng is not None and rng[1] is not None else []
    try:
        with torch.random.fork_rng(devices=devices):
            if rng is not None:
                torch.set_rng_state(rng[0])
                if rng[1] is not None:
                    torch.cuda.set_rng_state(rng[1], rng[2])
            yield
    finally:
        for mod, name, b in swapped:
            mod._buffers[name] = b


class TorchOracle(CurvatureOracle):
    """The curvature oracle of @model on (@inputs, @targets).

    Loss callbacks use the whole batch (the cases of the step's loss);
    curvature callbacks the first @curvature_examples of them. The model
    runs in the mode it is in (train/eval) and its parameters are restored
    bit for bit after a loss evaluation. Every forward pass runs under
    replay(): the model's buffers (BatchNorm's running statistics) are
    left as they were, and with @rng (rng_state() taken just before the
    step's own forward pass) dropout draws the step's masks again, so that
    the callbacks see the function the step's gradient is of.
    @loss_fn, when given, evaluates the mean loss at the current parameters
    instead of @loss on @targets (step(closure) passes the closure).
    """

    def __init__(self, model: torch.nn.Module, blocks: List[Block], loss: Loss, inputs,
                 targets, curvature_examples: int = None, rng=None,
                 loss_fn: Optional[Callable[[], float]] = None):
        self.model = model
        self.blocks = blocks
        self.loss = loss
        self.inputs = inputs
        self.targets = targets
        self.curvature_examples = curvature_examples
        self.rng = rng
        self.loss_fn = loss_fn
        self.params = [p for b in blocks for p in b.params]
        self._lin = None  # (z, u, J^T u per parameter)

    # ---- vectors in wire form <-> parameter-shaped tensors --------------

    def _param_tensors(self, vector: Dict[str, object]) -> List[torch.Tensor]:
        p0 = self.params[0]
        out = []
        for b in self.blocks:
            v = torch.as_tensor(np.asarray(vector[b.name]), dtype=p0.dtype, device=p0.device)
            out.extend(b.from_wire(v))
        return out

    def _wire(self, tensors: Sequence[torch.Tensor]) -> Dict[str, object]:
        out, k = {}, 0
        for b in self.blocks:
            n = len(b.params)
            out[b.name] = b.to_wire(tensors[k:k + n]).detach().cpu().numpy()
            k += n
        return out

    # ---- the linearisation ----------------------------------------------

    def _linearize(self):
        if self._lin is None:
            n = self.curvature_examples
            x = self.inputs if n is None else take(self.inputs, n)
            with torch.enable_grad(), replay(self.model, self.rng):
                z = call(self.model, x)
                u = torch.zeros_like(z, requires_grad=True)
                jtu = torch.autograd.grad(z, self.params, grad_outputs=u, create_graph=True,
                                          allow_unused=True)
            self._lin = (z, u, jtu)
        return self._lin

    def jvp(self, vector: Dict[str, object]) -> torch.Tensor:
        """J v on the curvature cases, shaped like the model's output."""
        z, u, jtu = self._linearize()
        vs = self._param_tensors(vector)
        pairs = [(g, v) for g, v in zip(jtu, vs) if g is not None and g.requires_grad]
        if not pairs:
            return torch.zeros_like(z)
        (jv,) = torch.autograd.grad([g for g, _ in pairs], u,
                                    grad_outputs=[v for _, v in pairs], retain_graph=True,
                                    allow_unused=True)
        return jv if jv is not None else torch.zeros_like(z)

    # ---- CurvatureOracle --------------------------------------------------

    def curvature_products(self, vectors):
        z, _, _ = self._linearize()
        m = z.shape[0]
        out = []
        for v in vectors:
            h = self.loss.hess_vec(z.detach(), self.jvp(v)) / m
            gv = torch.autograd.grad(z, self.params, grad_outputs=h, retain_graph=True,
                                     allow_unused=True)
            out.append(self._wire(gv))
        return out

    def quadratic_form(self, vectors):
        """v_i^T G v_j = (1/m) sum_x (S J v_i)^T (S J v_j) with S^T S = H_L:
        one J v per vector, no backward pass (thesis §B.3). As the Gram
        matrix of the vectors S J v_i (summed in double precision) it is
        symmetric with a non-negative diagonal whatever the round-off,
        which the daemon checks."""
        z, _, _ = self._linearize()
        zd, m = z.detach(), z.shape[0]
        w = torch.stack([self.loss.hess_sqrt_vec(zd, self.jvp(v)).reshape(-1) for v in vectors])
        w = w.to(torch.float64)
        return ((w @ w.T) / m).tolist()

    def losses(self, vectors):
        """Mean loss at theta + v on the whole batch, theta restored after."""
        out = []
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
        try:
            for v in vectors:
                with torch.no_grad():
                    for p, d in zip(self.params, self._param_tensors(v)):
                        p.add_(d)
                out.append(self._loss_here())
                with torch.no_grad():
                    for p, s in zip(self.params, saved):
                        p.copy_(s)
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)
        return out

    def _loss_here(self) -> float:
        with replay(self.model, self.rng):
            if self.loss_fn is not None:
                with torch.enable_grad():  # a closure calls backward()
                    return float(self.loss_fn())
            with torch.no_grad():
                z = call(self.model, self.inputs)
                return float(self.loss.per_example(z, self.targets).mean())
