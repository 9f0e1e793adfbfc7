# SPDX-License-Identifier: MIT
"""Forward hooks on the layers, and what K-FAC and HF read from them.

While recording, each call of a dense or conv2d block's module leaves its
input and output. The back-propagated signals are the gradients of a sum
of per-example losses with respect to those outputs: each example's own
loss, not divided by the batch size (the scaling curv_layer_stats and the
API document).
"""

from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from .layout import Block


class Record:
    """One call of a layer: its input and output (with the output's version,
    so that an in-place change after the layer is caught)."""

    def __init__(self, inp: torch.Tensor, out: torch.Tensor):
        self.inp = inp.detach()
        self.out = out
        self.version = out._version


class Capture:
    """Forward hooks on the layer blocks' modules, active only while
    recording (the trainer's own forward passes are not slowed down)."""

    def __init__(self, blocks: List[Block]):
        self.layers = [b for b in blocks if b.module is not None]
        self.records: Dict[str, List[Record]] = {}
        self.order: List[str] = []  # layer names in first-call order
        self._active = False
        self._handles = [b.module.register_forward_hook(self._hook(b)) for b in self.layers]

    def _hook(self, block: Block):
        def hook(module, inputs, output):
            if self._active:
                if block.name not in self.records:
                    self.records[block.name] = []
                    self.order.append(block.name)
                self.records[block.name].append(Record(inputs[0], output))
        return hook

    @contextmanager
    def recording(self):
        self.records, self.order, self._active = {}, [], True
        try:
            yield self
        finally:
            self._active = False

    def outputs(self) -> List[torch.Tensor]:
        """Every recorded output, layer by layer, call by call."""
        out = []
        for b in self.layers:
            for r in self.records.get(b.name, []):
                if r.out._version != r.version:
                    raise RuntimeError(f"the output of layer '{b.name}' was changed in place "
                                       "after the layer (an inplace=True activation?): its "
                                       "back-propagated signals cannot be read; use "
                                       "inplace=False")
                out.append(r.out)
        return out

    def split(self, grads) -> Dict[str, List[Optional[torch.Tensor]]]:
        """Gradients w.r.t. outputs() regrouped by layer."""
        it = iter(grads)
        return {b.name: [next(it) for _ in self.records.get(b.name, [])] for b in self.layers}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def rows_per_example(block: Block, inp: torch.Tensor, out_grad: Optional[torch.Tensor],
                     n: int, out_like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(acts [n, P, n_in], signals [n, P, n_out]) for the first @n examples
    of one call: P is 1 for a dense layer on [m, n_in] inputs, the extra
    positions of higher-rank inputs, or the conv output positions (patches
    in F.unfold's order, which is the wire's [c_in][kh][kw])."""
    m = block.module
    g = out_grad[:n] if out_grad is not None else torch.zeros_like(out_like[:n])
    x = inp[:n]
    if block.kind == "dense":
        return x.reshape(n, -1, block.n_in), g.reshape(n, -1, block.n_out)
    patches = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return patches.transpose(1, 2), g.reshape(n, block.n_out, -1).transpose(1, 2)


def block_rows(capture: Capture, block: Block, grads: List[Optional[torch.Tensor]], n: int):
    """(acts, signals) of every call of @block, positions concatenated."""
    pairs = [rows_per_example(block, r.inp, g, n, r.out)
             for r, g in zip(capture.records[block.name], grads)]
    return torch.cat([a for a, _ in pairs], 1), torch.cat([s for _, s in pairs], 1)


def layer_stats(capture: Capture, grads: Dict[str, List[Optional[torch.Tensor]]],
                n: int) -> List[dict]:
    """The step's "layers": per recorded layer, the first @n examples'
    activations (without the bias 1) and signals as [rows, n_in] and
    [rows, n_out]. A dense layer's rows are its examples; a conv2d
    layer's rows are examples x positions (examples = n)."""
    out = []
    for b in capture.layers:
        if b.name not in capture.records:
            continue
        acts, sig = block_rows(capture, b, grads[b.name], n)
        rows = acts.shape[0] * acts.shape[1]
        out.append({"block": b.name,
                    "examples": rows if b.kind == "dense" else n,
                    "activations": acts.reshape(rows, b.n_in).detach().cpu().numpy(),
                    "signals": sig.reshape(rows, b.n_out).detach().cpu().numpy()})
    return out


def layer_grad_sq(capture: Capture, block: Block, grads: List[Optional[torch.Tensor]], m: int,
                  chunk: int = 64) -> torch.Tensor:
    """Mean over the @m examples of squared per-example gradients of a
    layer, in wire form. Per example the gradient is sum_p s_p abar_p^T
    (abar = [a; 1] with a bias); with one position per example the mean of
    squares is (s^2)^T (abar^2) / m without forming the outer products."""
    acts, sig = block_rows(capture, block, grads, m)
    if block.has_bias:
        acts = torch.cat([acts, torch.ones_like(acts[..., :1])], dim=-1)
    if acts.shape[1] == 1:
        return (sig[:, 0] ** 2).T @ (acts[:, 0] ** 2) / m
    total = torch.zeros(block.wire_shape, dtype=acts.dtype, device=acts.device)
    for i in range(0, m, chunk):  # bounded memory: chunk x n_out x n_in at a time
        per = torch.einsum("npo,npi->noi", sig[i:i + chunk], acts[i:i + chunk])
        total += (per ** 2).sum(0)
    return total / m
