# SPDX-License-Identifier: MIT
"""K-FAC's layer statistics gathered by hooks around the user's own forward
and backward passes (the Preconditioner's simple mode).

Every forward pass of a dense or conv2d block's module made with autograd
on leaves its input; the signal paired with it is, per example,
the derivative of that example's loss with respect to the layer's output:

- fisher="empirical": the gradient the user's backward pass brings to the
  output (a tensor hook), times the examples the loss averages over (a
  mean loss over N examples gives each one's derivative / N), divided by
  a GradScaler's scale. Any loss works; the statistics are the empirical
  Fisher's.
- fisher="true": when the model's forward pass ends, targets are sampled
  from the model's predictive distribution (the Loss says which) and their
  loss back-propagated to the recorded outputs (one extra backward pass,
  the graph kept for the user's). The user's loss plays no part.

Records pile up over the micro-batches of an accumulated step and are
turned into the step's "layers" by take(), which empties them.
"""

from typing import Dict, List, Optional

import torch

from .capture import rows_per_example
from .layout import Block
from .losses import Loss


class _Record:
    def __init__(self, inp: torch.Tensor):
        self.inp = inp.detach()
        self.signal: Optional[torch.Tensor] = None


class HookStats:
    """Forward hooks on @blocks' layer modules (and on @model for the true
    Fisher's sampling); remove() takes them off."""

    def __init__(self, model: torch.nn.Module, blocks: List[Block], fisher: str,
                 loss: Optional[Loss], generator: torch.Generator):
        self.layers = [b for b in blocks if b.module is not None]
        self.fisher = fisher
        self.loss = loss
        self.generator = generator
        self.records: Dict[str, List[_Record]] = {b.name: [] for b in self.layers}
        self.examples = 0  # of the model's recorded forward passes
        self.order: List[str] = []  # layer names in first-call order
        self._waiting = []  # (record, output) of the running forward pass (true Fisher)
        self._handles = [b.module.register_forward_hook(self._layer_hook(b))
                         for b in self.layers]
        self._handles.append(model.register_forward_hook(self._model_hook))

    def _layer_hook(self, block: Block):
        def hook(module, inputs, output):
            if not (torch.is_grad_enabled() and output.requires_grad):
                return  # evaluation: no backward pass follows
            rec = _Record(inputs[0])
            self.records[block.name].append(rec)
            if block.name not in self.order:
                self.order.append(block.name)
            self._waiting.append((rec, output))
            if self.fisher != "true":
                output.register_hook(lambda g: setattr(rec, "signal", g.detach()))
        return hook

    def _model_hook(self, model, inputs, z):
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        first = next((x for x in inputs if torch.is_tensor(x)), None)
        self.examples += first.shape[0] if first is not None and first.dim() else 1
        if self.fisher != "true":
            return
        if not torch.is_tensor(z):
            raise TypeError("fisher='true' samples targets from the model's output, which must "
                            f"be one tensor of last pre-activations, not {type(z).__name__}")
        outs = [o for _, o in waiting]
        grads = torch.autograd.grad(z, outs, self.loss.sampled_signal(z, self.generator),
                                    retain_graph=True, allow_unused=True)
        for (rec, o), g in zip(waiting, grads):
            rec.signal = (g if g is not None else torch.zeros_like(o)).detach()

    def discard(self) -> None:
        for recs in self.records.values():
            recs.clear()
        self.examples = 0

    def take(self, signal_scale: float) -> List[dict]:
        """The step's "layers" from the records whose signals came (a
        forward pass without a backward pass counts for nothing), the
        signals multiplied by @signal_scale; the records are emptied."""
        out = []
        for b in self.layers:
            pairs = [rows_per_example(b, r.inp, r.signal, r.inp.shape[0], r.signal)
                     for r in self.records[b.name] if r.signal is not None]
            if not pairs:
                continue
            acts = torch.cat([a.reshape(-1, b.n_in) for a, _ in pairs])
            sig = torch.cat([s.reshape(-1, b.n_out) for _, s in pairs]) * signal_scale
            n = sum(a.shape[0] for a, _ in pairs)
            out.append({"block": b.name, "examples": acts.shape[0] if b.kind == "dense" else n,
                        "activations": acts.detach().cpu().numpy(),
                        "signals": sig.detach().cpu().numpy()})
        self.discard()
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
