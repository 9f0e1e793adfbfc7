# SPDX-License-Identifier: MIT
"""Preconditioner: curvd as a gradient preconditioner for any torch optimizer.

    precond = Preconditioner(model, "http://127.0.0.1:8080", "kfac")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        precond.step()          # each p.grad <- the preconditioned gradient
        opt.step()

The daemon answers a step with an update, Δθ = −lr · (the kind's direction),
after the kind's momentum and weight decay. The Preconditioner's session
runs with lr 1 and a constant schedule, no momentum and no weight decay
(FIXED), so the update is exactly −P g, and step() writes −update into
p.grad: the learning rate, momentum, weight decay, clipping and any
scheduler are the user's optimizer's. For the first-order kinds P is the
kind's preconditioner (AdaGrad's 1/sqrt(r + ε) with r accumulating g², MBAG's
mini-block root, ...; sgd's is the identity); for K-FAC it is simple mode's
damped Kronecker-factored inverse (Ā + πγI)⁻¹ ⊗ (G + γ/π I)⁻¹ on the
nn.Linear / nn.Conv2d layers, the other parameters' gradients passing
through (fallback sgd at fallback_lr 1), with the KL clip and the noise
scaling off unless configured. hf and K-FAC's adaptive mode choose the step
length themselves and ask for losses: CurvdOptimizer runs them.
"""

import math
from typing import Optional, Union

import torch

from ..client import Client, Session
from .hooks import HookStats
from .layout import (fits, model_blocks, order_blocks, per_param, warn_fallback,
                     wire_values)
from .losses import get_loss

# The session config that makes the update −P g, per kind ("*": all).
FIXED = {
    "*": {"lr": 1.0, "lr_schedule": "constant"},
    "sgd": {"momentum": 0.0, "nesterov": False, "momentum_schedule": "constant",
            "weight_decay": 0.0},
    "mbag": {"beta": 0.0},
    "mbag_ema": {"beta": 0.0},
    "mbag_n": {"beta": 0.0},
    "kfac": {"mode": "simple", "momentum": 0.0, "weight_decay": 0.0},
}
# Defaults that may be changed (kfac: they scale or redirect P g).
DEFAULTS = {"kfac": {"kl_clip": 0.0, "noise": "off", "fallback": "sgd", "fallback_lr": 1.0}}
# Hyperparameters that shape the learning rate's schedule: the optimizer's.
_SCHEDULE = ("lr_gamma", "lr_step_size", "lr_milestones")
UNSUPPORTED = {
    "hf": "hf chooses its own step by conjugate gradient and line search on the loss, "
          "which a preconditioner cannot ask for",
}


class Preconditioner:
    """Replaces each p.grad by the preconditioned gradient of a curvd session.

    model: the module (its nn.Linear / nn.Conv2d layers are K-FAC's layer
      blocks, every other trainable parameter a vector block).
    client: a curvd.Client or the daemon's URL. kind: a first-order kind or
      "kfac". config: the kind's other hyperparameters (kfac: damping,
      decay, inverse, inv_interval, cov_interval, pi, precision, kl_clip,
      noise, fallback...); those of FIXED are refused.
    fisher (kfac): "empirical" (default: the user's own loss gradient, any
      loss) or "true" (targets sampled from the model's output; needs
      @loss, one of curvd.torch.losses or a Loss with sample()).
    loss_reduction (kfac, empirical): "mean" when p.grad is the mean over
      the examples of the forward passes since the last step (torch's
      default; accumulate with loss / steps), "sum" when it is their sum.
    grad_scaler: the torch GradScaler (or anything with get_scale()) whose
      scale is in the back-propagated signals; call scaler.unscale_(opt)
      before step(), which must see the true gradient.
    keep_session, idle_ttl_s: as CurvdOptimizer's (close() deletes the
      session unless kept).
    """

    def __init__(self, model: torch.nn.Module, client: Union[Client, str], kind: str,
                 config: Optional[dict] = None, *, fisher: str = "empirical", loss=None,
                 loss_reduction: str = "mean", grad_scaler=None, bias_blocks: bool = False,
                 encoding: str = "binary", seed: int = 0, keep_session: bool = False,
                 idle_ttl_s: Optional[int] = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError("Preconditioner needs the model (a torch.nn.Module), not "
                            f"{type(model).__name__}: it hooks the model's layers")
        self.client = client if isinstance(client, Client) else Client(client)
        kinds = {o["name"]: o for o in self.client.version()["optimizers"]}
        if kind not in kinds:
            raise ValueError(f"the daemon has no optimizer {kind!r}; it offers "
                             f"{', '.join(kinds)}")
        if kind in UNSUPPORTED:
            raise ValueError(f"{UNSUPPORTED[kind]}: use CurvdOptimizer(model, client, "
                             f"{kind!r}) for it")
        if fisher not in ("empirical", "true"):
            raise ValueError(f"fisher must be 'empirical' or 'true', got {fisher!r}")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        self.kind = kind
        self.config = self._session_config(kind, dict(config or {}))
        self.layered = "layers" in kinds[kind].get("inputs", [])
        if self.layered and fisher == "true" and loss is None:
            raise ValueError("fisher='true' samples targets from the model's predictive "
                             "distribution: name it with loss= ('cross_entropy', 'mse', "
                             "'binary_cross_entropy' or a curvd.torch.Loss with sample())")
        if self.layered:
            if self.config.setdefault("fisher", fisher) != fisher:
                raise ValueError(f"config fisher={self.config['fisher']!r} but fisher="
                                 f"{fisher!r}: pass fisher= to the Preconditioner, which makes "
                                 "the signals")
        self.loss_reduction = loss_reduction
        self.grad_scaler = grad_scaler
        self.encoding = encoding
        self.blocks = model_blocks(model, bias_blocks)
        if self.layered:
            warn_fallback(model, self.blocks, kinds[kind], self.config, bias_blocks)
        p0 = self.blocks[0].params[0]
        self.datatype = "FP64" if p0.dtype == torch.float64 else "FP32"
        self.generator = torch.Generator(device=p0.device)
        self.generator.manual_seed(seed)
        self._session_args = {"keep": keep_session,
                              **({} if idle_ttl_s is None else {"idle_ttl_s": idle_ttl_s})}
        self.session: Session = self._create()
        self._ordered = not self.layered  # K-FAC's layers follow the first forward's calls
        self.stats = (HookStats(model, self.blocks, fisher,
                                get_loss(loss) if loss is not None else None, self.generator)
                      if self.layered else None)
        self.last_report: dict = {}

    @staticmethod
    def _session_config(kind: str, config: dict) -> dict:
        fixed = dict(FIXED["*"], **FIXED.get(kind, {}))
        for key in config:
            if key in fixed or key in _SCHEDULE:
                shown = ", ".join(f"{k}={v}" for k, v in fixed.items())
                raise ValueError(f"{key!r} is not a Preconditioner setting: the session returns "
                                 f"the preconditioned gradient, so it runs with {shown}; the "
                                 "learning rate, its schedule, momentum and weight decay "
                                 "belong to the torch optimizer that takes p.grad")
        return dict(DEFAULTS.get(kind, {}), **config, **fixed)

    def step(self) -> bool:
        """Replace each p.grad by its preconditioned gradient (the kinds'
        state advances by one step). A gradient that is not finite (a
        GradScaler's overflow) leaves p.grad and the session alone and
        drops the statistics gathered since the last step: returns False,
        and the scaler then skips the optimizer's step. True otherwise."""
        params = [p for b in self.blocks for p in b.params]
        if any(p.grad is not None and not torch.isfinite(p.grad).all() for p in params):
            if self.stats is not None:
                self.stats.discard()
            return False
        kw = {}
        if self.stats is not None:
            examples = self.stats.examples
            kw["layers"] = self.stats.take(self._signal_scale(examples))
            kw["batch"] = max(1, examples)
            if not kw["layers"]:
                raise ValueError(f"{self.kind}: no layer statistics since the last step: they "
                                 "come from the forward passes made with autograd on and their "
                                 "backward passes (empirical Fisher); run model(x) and "
                                 "loss.backward() between steps, p.grad alone is not enough")
            self._order_layers()
        grads = {}
        for b in self.blocks:
            grads[b.name] = [p.grad for p in b.params]
        result = self.session.step(wire_values(self.blocks, grads), encoding=self.encoding,
                                   datatype=self.datatype, **kw)
        with torch.no_grad():
            for p, d in per_param(self.blocks, result.update):
                if p.grad is not None:  # one without (unused) stays so: optimizers skip it
                    p.grad.copy_(-d)  # the update is -P g
        self.last_report = result.report
        return True

    def _create(self) -> Session:
        return self.client.create_session(self.kind, [b.spec for b in self.blocks], self.config,
                                          **self._session_args)

    def _order_layers(self) -> None:
        """Before the first step: a model that calls its layers out of
        registration order gets a session in call order (K-FAC's
        tridiagonal inverse couples neighbours); the empty one is deleted."""
        if self._ordered:
            return
        self._ordered = True
        ordered = order_blocks(self.blocks, self.stats.order)
        if [b.name for b in ordered] != [b.name for b in self.blocks]:
            self.session.delete()
            self.blocks = ordered
            self.session = self._create()

    def _signal_scale(self, examples: int) -> float:
        """What turns the back-propagated gradients into per-example
        signals: N for a mean over N examples, and 1 / the scaler's scale."""
        if self.stats.fisher == "true":
            return 1.0
        scale = 1.0 if self.loss_reduction == "sum" else float(max(1, examples))
        if self.grad_scaler is not None:
            s = float(self.grad_scaler.get_scale())
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"the grad_scaler's scale is {s}, not a positive number")
            scale /= s
        return scale

    def state_dict(self) -> dict:
        """The session's exported state (load_state_dict imports it)."""
        return {"kind": self.kind, "state": self.session.export_state(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("kind") != self.kind or "state" not in state:
            raise ValueError("Preconditioner.load_state_dict takes what a Preconditioner of "
                             f"kind {self.kind!r} returned from state_dict()")
        s = self.client.import_state(state["state"], keep=self.session.keep)
        by_name = {b.name: b for b in self.blocks}
        if not fits(self.blocks, s.layout):
            s.delete()
            raise ValueError(f"the state's layout {s.layout} is not this model's "
                             f"{[b.spec for b in self.blocks]}")
        self.session.close()
        self.session, self._ordered = s, True
        self.blocks = [by_name[d["name"]] for d in s.layout]  # the state's order
        self.generator.set_state(state["generator"])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks and delete the session unless keep_session."""
        if self.stats is not None:
            self.stats.remove()
        self.session.close()
