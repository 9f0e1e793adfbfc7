# SPDX-License-Identifier: MIT
"""CurvdOptimizer: a torch.optim optimizer whose state lives in curvd.

    opt = CurvdOptimizer(model, "http://127.0.0.1:8080", "kfac",
                         loss="cross_entropy", config={"lr": 1.0})
    for x, y in loader:
        loss = opt.step(x, y)

step(x, y) runs the forward and backward passes itself (so that the
gradient, the layer statistics and the callbacks all use one loss), posts
everything in the binary encoding, answers the callbacks, and adds the
update to the parameters. For first-order kinds step() without arguments
also works after the usual loss.backward(), reading p.grad; step(closure)
works for first-order kinds and K-FAC with the true Fisher (see
_step_closure). The session is created with the optimizer.
"""

import math
import time
from typing import List, Optional, Union

import torch

from ..client import Client, Session
from ..progress import StepLog
from .capture import Capture, layer_grad_sq, layer_stats
from .layout import (fits, model_blocks, order_blocks, per_param, warn_fallback,
                     wire_values)
from .losses import get_loss
from .oracle import TorchOracle, call, replay, rng_state, take
from .takeover import STATE_FORMAT, TAKEN_FROM, taken_over_check

# torch.optim hyperparameters a parameter group may be given by habit: the
# session reads only those it has (lr, weight_decay), the others are refused.
_TORCH_HYPERPARAMETERS = {"weight_decay", "momentum", "dampening", "nesterov", "betas", "eps",
                          "amsgrad", "alpha", "lr_decay", "initial_accumulator_value"}


def _count(fraction: Union[float, int], m: int) -> int:
    """Examples of a subset: a fraction of the batch, or a count."""
    n = fraction if isinstance(fraction, int) else math.ceil(fraction * m)
    return max(1, min(m, n))


class CurvdOptimizer(torch.optim.Optimizer):
    """A torch optimizer backed by a curvd session.

    model: the module; nn.Linear and nn.Conv2d layers become dense/conv2d
      blocks, every other trainable parameter a vector block (the session's
      fallback). The model's output must be the last pre-activation.
    client: a curvd.Client or the daemon's URL.
    optimizer, config: the session's kind and hyperparameters.
    loss: "mse", "cross_entropy" (softmax) or "binary_cross_entropy"
      (sigmoid), or a losses.Loss.
    fisher: "true" (K-FAC's signals from targets sampled from the model) or
      "empirical" (the batch's own targets); None follows the session's
      "fisher" hyperparameter (default "true").
    stats_fraction, curvature_fraction: the share (float) or number (int) of
      the batch's first examples used for layer statistics (the thesis's
      tau1 = 1/8) and for curvature callbacks (default: the whole batch; the
      thesis's tau2 = 1/4 leaves K-FAC's exact-F model unbounded below along
      the gradient of the cases it omits, and small-batch training then
      diverges: docs/NOTES.md, "K-FAC safeguards").
    encoding: "binary", "b64" or "json". send_params: None sends θ when
      the session's weight decay is on; True/False forces.
    What else a step carries (layer statistics, grad_sq) follows the
    inputs GET /v1/version lists for the kind.
    session: a session id to continue instead of creating one.
    bias_blocks: the layers' biases as vector blocks of their own instead of
      their layers' last columns (the BMA paper partitions each layer's
      weights and biases apart; K-FAC then leaves the biases to its
      fallback).
    The optimizer has one parameter group, the model's (the session's layout
    is fixed; add_param_group is refused). Its "lr" and, for kinds with
    one, "weight_decay" are the session's: changing them (by hand or by a
    torch LR scheduler) changes the session's config before the next step.

    state_dict() is a snapshot: the session's exported state (the daemon's
    blob: statistics, step count, config), which load_state_dict() imports
    into a new session of this optimizer's daemon (any daemon, any
    process). The source session is left alone (two optimizers then train
    apart, as torch optimizers do). Continuing a live session by its id
    (session=, or a state_dict of the older {'session', 'optimizer', 'url',
    'lr'} form) takes it over: its state moves to a new session labelled
    curvd.torch.taken_from=<old id>, the old one is deleted, and an
    optimizer still stepping the old id gets SessionTakenOver.

    The session's lifetime: the optimizer creates its session when it is
    constructed and never deletes it by itself (garbage collection does not touch
    the daemon), so that state_dict() can name it for a later run. close(),
    or leaving a with block, deletes it unless keep_session=True; a session
    given by id (session=, load_state_dict) is kept either way. idle_ttl_s
    asks the daemon to delete the session it creates after that many
    seconds without a step (0: never; None: the daemon's --idle-ttl, off
    unless set), for runs that end without close().

    progress: a curvd.StepLog that gets a row after every step (loss, the
    report's figures, the step's time and the daemon's share of it) to
    log, show as a tqdm bar, write as CSV or TensorBoard scalars; True is
    StepLog(log=True). The daemon keeps the same history
    (self.session.history()).
    """

    def __init__(self, model: torch.nn.Module, client: Union[Client, str], optimizer: str,
                 config: Optional[dict] = None, *, loss="cross_entropy",
                 fisher: Optional[str] = None, stats_fraction: Union[float, int] = 0.125,
                 curvature_fraction: Union[float, int] = 1.0, encoding: str = "binary",
                 send_params: Optional[bool] = None, seed: int = 0,
                 session: Optional[str] = None, bias_blocks: bool = False,
                 keep_session: bool = False, idle_ttl_s: Optional[int] = None,
                 progress: Union[StepLog, bool, None] = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError("CurvdOptimizer needs the model (a torch.nn.Module), not "
                            f"{type(model).__name__ if model is not None else 'None'}: "
                            "CurvdOptimizer(model, client, kind, ...) instead of "
                            "torch.optim's Optimizer(model.parameters(), ...); it maps "
                            "the model's layers to the session's blocks itself")
        if fisher not in (None, "true", "empirical"):
            raise ValueError(f"fisher must be 'true' or 'empirical', got {fisher!r}")
        self.model = model
        self.client = client if isinstance(client, Client) else Client(client)
        self.kind = optimizer
        self.config = dict(config or {})
        kinds = {o["name"]: o for o in self.client.version()["optimizers"]}
        if optimizer not in kinds:
            raise ValueError(f"the daemon has no optimizer {optimizer!r}; it offers "
                             f"{', '.join(kinds)}")
        inputs = kinds[optimizer].get("inputs", [])
        if fisher is not None and any(p["name"] == "fisher" for p in kinds[optimizer]["params"]):
            self.config.setdefault("fisher", fisher)  # the kind documents which it expects
        self._fisher = fisher
        self.loss = get_loss(loss)
        self.stats_fraction = stats_fraction
        self.curvature_fraction = curvature_fraction
        self.encoding = encoding
        self.send_layers = "layers" in inputs
        self.send_grad_sq = "grad_sq" in inputs
        self.callbacks = bool(kinds[optimizer].get("callbacks", False))
        self._send_params = send_params
        self.blocks = model_blocks(model, bias_blocks)
        if self.send_layers:
            warn_fallback(model, self.blocks, kinds[optimizer], self.config, bias_blocks)
        dtype = self.blocks[0].params[0].dtype
        self.datatype = "FP64" if dtype == torch.float64 else "FP32"
        self.generator = torch.Generator(device=self.blocks[0].params[0].device)
        self.generator.manual_seed(seed)
        self.capture = Capture(self.blocks)
        self.session: Optional[Session] = None
        self._fresh = False
        self.keep_session = keep_session
        self.idle_ttl_s = idle_ttl_s
        self.last_report: dict = {}
        self.progress = StepLog(log=True) if progress is True else progress or None
        self._t0 = None
        self._constructed = False
        self._synced = {k: self.config.get(k) for k in ("lr", "weight_decay")
                        if any(p["name"] == k for p in kinds[optimizer]["params"])}
        super().__init__([p for b in self.blocks for p in b.params], dict(self._synced))
        self._constructed = True
        # The session exists from here on (its id in state_dict(), its
        # config errors raised now). Its layers are in registration order
        # until the first step has seen the forward pass's call order.
        if session is not None:
            self.attach(session)
        else:
            self._adopt(self._create(self.config))
            self._fresh = True

    def add_param_group(self, param_group: dict) -> None:
        """Refused after construction: the session's layout is the model's
        (torch.optim.Optimizer's constructor calls this once)."""
        if getattr(self, "_constructed", False):
            raise ValueError("CurvdOptimizer has one parameter group, the model's: the "
                             "session's layout is fixed when it is created; add parameters "
                             "to the model before constructing the optimizer, or give them "
                             "an optimizer of their own")
        super().add_param_group(param_group)

    # ---- the session ------------------------------------------------------

    def _layout(self) -> List[dict]:
        return [b.spec for b in self.blocks]

    def attach(self, session_id: str) -> Session:
        """Take over session @session_id: its layout must be this model's
        (in any order of blocks: the session's order is adopted). Its state
        moves to a new session (name, labels and idle TTL kept, plus the
        label TAKEN_FROM=<old id>, and kept on close()), and the old one is
        deleted, so that an optimizer still holding the old id is refused
        (SessionTakenOver) instead of stepping beside this one."""
        src = self.client.session(session_id)
        self._check_fits(src)
        moved = self.client.import_state(src.export_state(), keep=True)
        self.client.set_labels(moved.id, dict(src.labels, **{TAKEN_FROM: src.id}), name=src.name)
        if src.idle_ttl_s is not None:
            self.client.set_idle_ttl(moved.id, src.idle_ttl_s)
        src.delete()
        self._replace(self.client.session(moved.id))
        return self.session

    def _check_fits(self, s: Session) -> None:
        if s.optimizer != self.kind or not fits(self.blocks, s.layout):
            raise ValueError(f"session {s.id} ({s.optimizer}, {s.layout}) does not fit "
                             f"this model and kind ({self.kind}, {self._layout()})")

    def _replace(self, s: Session) -> None:
        """Step @s from now on: the session held so far is closed (deleted
        when this optimizer created it and keep_session is off)."""
        if self._fresh:
            self._drop_fresh()  # made at construction, never used: deleted even when kept
        elif self.session is not None:
            self.session.close()
        by_name = {b.name: b for b in self.blocks}
        self.blocks = [by_name[d["name"]] for d in s.layout]
        self._adopt(s)

    def _adopt(self, s: Session) -> None:
        """Take the session's resolved config: the learning rate, whether
        it reads θ (weight decay) and which Fisher its signals estimate."""
        self.session = s
        self.fisher = s.config.get("fisher", self._fisher or "true")
        self.send_params = (self._send_params if self._send_params is not None else
                            any(v > 0 for k, v in s.config.items()
                                if "weight_decay" in k and isinstance(v, (int, float))))
        self._synced = {k: s.config.get(k) for k in self._synced}
        for g in self.param_groups:
            g.update(self._synced)

    def _create(self, config: dict) -> Session:
        """A new session for this model's layout (kept on close() only when
        keep_session; idle_ttl_s when given)."""
        ttl = {} if self.idle_ttl_s is None else {"idle_ttl_s": self.idle_ttl_s}
        return self.client.create_session(self.kind, self._layout(), config,
                                          keep=self.keep_session, **ttl)

    def _drop_fresh(self) -> None:
        """Delete the session made at construction while no step used it."""
        if self._fresh and self.session is not None:
            self._fresh = False
            try:
                self.session.delete()
            except Exception:  # noqa: BLE001 -- an empty session left behind is harmless
                pass

    def _ensure_session(self, first_calls=()) -> Session:
        if self._fresh:
            # K-FAC's block-tridiagonal inverse couples neighbours in the
            # order the forward pass calls the layers: a model that calls
            # them out of registration order gets a session in call order
            # at its first step (a new id; the empty one is deleted).
            ordered = order_blocks(self.blocks, first_calls)
            if [b.name for b in ordered] != [b.name for b in self.blocks]:
                config = dict(self.config, **{k: float(v) for k, v in self.param_groups[0].items()
                                              if k in self._synced and v is not None})
                self._drop_fresh()
                self.blocks = ordered
                self._adopt(self._create(config))
            self._fresh = False
        group = self.param_groups[0]
        foreign = sorted(set(group) & _TORCH_HYPERPARAMETERS - set(self._synced))
        if foreign:
            raise ValueError(f"param_groups[0] has {', '.join(map(repr, foreign))}, which "
                             f"{self.kind}'s session does not take from it: the parameter "
                             f"group carries {' and '.join(self._synced)}; set the others in "
                             "the session's config (config=, or opt.session.update_config)")
        changed = {k: float(group[k]) for k, v in self._synced.items()
                   if group[k] is not None and group[k] != v}
        if changed:
            self._adopt(self.session.update_config(changed))
        return self.session

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state_dict(self) -> dict:
        """A snapshot of the optimizer (see the class's note): the session's
        exported state with what identifies it, the parameter group's
        hyperparameters, and the generator that samples the true Fisher's
        targets."""
        with taken_over_check(self.client, self.session.id):
            blob = self.session.export_state()
        return {"format": STATE_FORMAT, "optimizer": self.kind, "session": self.session.id,
                "url": self.client.url, "step": self.session.steps, "layout": self._layout(),
                "state": blob,
                "param_groups": [{k: g[k] for k in self._synced} for g in self.param_groups],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from what state_dict() returned: its session's state is
        imported into a new session of this optimizer's daemon (the session
        held so far is closed). The older form {'session', 'optimizer',
        'url', 'lr'} takes that session over (attach). A torch optimizer's
        state (per-parameter buffers such as Adam's moments) is refused:
        curvd's state cannot be seeded from it."""
        if not isinstance(state, dict) or "session" not in state or "optimizer" not in state:
            what = ("a torch optimizer's state_dict (with 'state' and 'param_groups')"
                    if isinstance(state, dict) and "param_groups" in state else
                    f"{type(state).__name__} {sorted(state) if isinstance(state, dict) else ''}")
            raise ValueError(f"CurvdOptimizer.load_state_dict takes what "
                             f"CurvdOptimizer.state_dict() returned (format {STATE_FORMAT!r}, "
                             f"with the session's state), not {what}: curvd's state cannot be "
                             "seeded from another optimizer's")
        if state["optimizer"] != self.kind:
            raise ValueError(f"the state names a session of {state['optimizer']}; this "
                             f"optimizer is {self.kind}")
        if "state" not in state:
            if state.get("session"):
                self.attach(state["session"])
            return
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"the state's format is {state.get('format')!r}; this version of "
                             f"curvd.torch reads {STATE_FORMAT!r}")
        s = self.client.import_state(state["state"], keep=self.keep_session)
        try:
            self._check_fits(s)
        except ValueError:
            s.delete()
            raise
        self._replace(s)
        self.generator.set_state(state["generator"])
        for g, saved in zip(self.param_groups, state["param_groups"]):
            g.update(saved)  # the next step syncs any that differ from the blob's config

    # ---- a step -------------------------------------------------------------

    def step(self, inputs=None, targets=None):
        """One step on the mini-batch (inputs, targets); returns its mean
        loss before the update. step(closure), as in torch.optim: the
        closure zeroes the gradients, runs the forward and backward passes
        and returns the loss, which step returns. Without arguments: a
        first-order step from the gradients in p.grad (returns None)."""
        self._t0 = time.perf_counter()
        if callable(inputs) and targets is None:
            return self._step_closure(inputs)
        if inputs is None:
            return self._step_from_grads()
        rng = rng_state(self.blocks[0].params[0].device)
        with self.capture.recording() as rec:
            z = call(self.model, inputs)
        session = self._ensure_session(rec.order)
        per_ex = self.loss.per_example(z, targets)
        m = per_ex.shape[0]
        params = [p for b in self.blocks for p in b.params]
        true_signals = self.send_grad_sq or (self.send_layers and self.fisher == "empirical")
        outs = rec.outputs() if (true_signals or self.send_layers) else []
        wrt = params + (outs if true_signals else [])
        grads = torch.autograd.grad(per_ex.sum(), wrt, allow_unused=True,
                                    retain_graph=self.send_layers or self.send_grad_sq)
        out_grads = rec.split(grads[len(params):]) if true_signals else None
        kw = {"loss": float(per_ex.detach().mean())}
        if self.send_layers:
            kw["layers"] = self._layer_stats(rec, z, outs, out_grads, m)
            kw["batch"] = m
        if self.send_grad_sq:
            kw["grad_sq"] = self._grad_sq(rec, per_ex, out_grads, m)
        if self.send_params:
            kw["params"] = self._per_block(params)
        gradients = self._per_block([g / m if g is not None else None
                                     for g in grads[:len(params)]])
        del z, per_ex, grads, outs, out_grads  # free the graph before the callbacks
        rec.records = {}
        oracle = TorchOracle(self.model, self.blocks, self.loss, inputs, targets,
                             _count(self.curvature_fraction, m), rng=rng)
        self._post(session, gradients, oracle=oracle, **kw)
        return kw["loss"]

    def _per_block(self, tensors) -> dict:
        out, k = {}, 0
        for b in self.blocks:
            out[b.name] = tensors[k:k + len(b.params)]
            k += len(b.params)
        return wire_values(self.blocks, out)

    def _layer_stats(self, rec, z, outs, out_grads, m) -> List[dict]:
        n = _count(self.stats_fraction, m)
        if self.fisher == "empirical":
            return layer_stats(rec, out_grads, n)
        # The true Fisher: signals of targets drawn from the model (§6.5).
        zn = take(z, n)
        sig = torch.autograd.grad(zn, outs, self.loss.sampled_signal(zn, self.generator),
                                  allow_unused=True, retain_graph=True)
        return layer_stats(rec, rec.split(sig), n)

    def _grad_sq(self, rec, per_ex, out_grads, m) -> dict:
        """Mean squared per-example gradients: closed forms for the layers;
        one backward pass per example for the other (vector) parameters."""
        out = {}
        vectors = [b for b in self.blocks if b.kind == "vector"]
        for b in self.blocks:
            if b.kind != "vector":
                g = layer_grad_sq(rec, b, out_grads[b.name], m) if b.name in rec.records \
                    else torch.zeros(b.wire_shape)
                out[b.name] = g.detach().cpu().numpy()
        if vectors:
            vp = [b.params[0] for b in vectors]
            acc = [torch.zeros_like(p) for p in vp]
            for i in range(m):
                gi = torch.autograd.grad(per_ex[i], vp, retain_graph=True, allow_unused=True)
                for a, g in zip(acc, gi):
                    if g is not None:
                        a += g.detach() ** 2
            for b, a in zip(vectors, acc):
                out[b.name] = (a / m).reshape(-1).cpu().numpy()
        return out

    def _step_closure(self, closure):
        """step(closure): the gradient from p.grad after the closure. K-FAC's
        layer statistics come from the inputs the closure gave the model,
        run again under replay() (same dropout masks, buffers untouched)
        with targets sampled from the model; curvature callbacks re-run the
        model on those inputs, loss callbacks call the closure at θ + v.
        p.grad is left as the closure made it. HF steps this way without
        grad_sq, which only its diagonal preconditioner and damping read."""
        cfg = self.session.config
        if self.send_grad_sq and not (cfg.get("precond") == "none" and
                                      cfg.get("damping") == "tikhonov"):
            raise ValueError(f"{self.kind} with precond='fisher_diag' or damping='diag' needs "
                             "per-example gradients of the batch's loss (grad_sq), which a "
                             "closure's mean loss does not give: call step(inputs, targets), "
                             "or set precond='none' and damping='tikhonov' to step with a "
                             "closure")
        if self.send_layers and self.fisher == "empirical":
            raise ValueError(f"{self.kind} with fisher='empirical' needs the batch's targets "
                             "for its layer statistics, which a closure hides: call "
                             "step(inputs, targets), or use fisher='true' (targets sampled "
                             "from the model) with step(closure)")
        if not (self.send_layers or self.callbacks):
            with torch.enable_grad():
                loss = closure()
            self._step_from_grads()
            return loss
        rng = rng_state(self.blocks[0].params[0].device)
        seen = []

        def pre_hook(module, args):
            if not seen:
                seen.append(tuple(args))
        handle = self.model.register_forward_pre_hook(pre_hook)
        try:
            with self.capture.recording() as rec, torch.enable_grad():
                loss = closure()
        finally:
            handle.remove()
        if not seen or not seen[0] or not torch.is_tensor(seen[0][0]):
            raise ValueError("the closure did not call the model with the batch as positional "
                             "arguments (model(x) or model(*xs)); step(closure) re-runs the "
                             "model on them for the layer statistics and callbacks")
        if loss is None:
            raise ValueError("the closure returned None: it must return the batch's mean "
                             "loss (the value of the loss it called backward() on)")
        inputs = seen[0]
        session = self._ensure_session(rec.order)
        rec.records = {}
        params = [p for b in self.blocks for p in b.params]
        grads = [p.grad.detach().clone() if p.grad is not None else None for p in params]
        m = inputs[0].shape[0]
        kw = {"loss": float(loss)}
        if self.send_layers:
            with replay(self.model, rng), self.capture.recording() as rec, \
                    torch.enable_grad():
                z = call(self.model, inputs)
                kw["layers"] = self._layer_stats(rec, z, rec.outputs(), None, m)
                kw["batch"] = m
            del z
            rec.records = {}
        if self.send_params:
            kw["params"] = self._per_block(params)

        def loss_at_theta():
            return float(closure())
        oracle = TorchOracle(self.model, self.blocks, self.loss, inputs, None,
                             _count(self.curvature_fraction, m), rng=rng,
                             loss_fn=loss_at_theta)
        try:
            self._post(session, self._per_block(grads), oracle=oracle, **kw)
        finally:  # the loss callbacks' backward passes changed p.grad
            for p, g in zip(params, grads):
                p.grad = g
        return loss

    def _step_from_grads(self) -> None:
        if self.send_layers:
            raise ValueError(f"{self.kind} needs the mini-batch for its layer statistics: "
                             "call step(inputs, targets) or step(closure)")
        session = self._ensure_session()
        params = [p for b in self.blocks for p in b.params]
        self._post(session, self._per_block([p.grad for p in params]), oracle=None)
        return None

    def _post(self, session: Session, gradients: dict, **kw) -> None:
        server0 = self.client.server_seconds
        with taken_over_check(self.client, session.id):
            result = session.step(gradients, encoding=self.encoding, datatype=self.datatype,
                                  **kw)
        with torch.no_grad():
            for p, d in per_param(self.blocks, result.update):
                p.add_(d)
        self.last_report = result.report
        if self.progress is not None:
            self.progress.record(self._progress_row(result, kw.get("loss"), server0))

    def _progress_row(self, result, loss, server0) -> dict:
        """The step's row for self.progress: its loss (sent), time (since
        step() began) and the daemon's share of it, then the report."""
        spent = time.perf_counter() - self._t0 if self._t0 is not None else None
        daemon = self.client.server_seconds - server0
        row = {"step": result.step, "loss": loss, "step_time_s": spent, "daemon_s": daemon,
               "daemon_share": min(1.0, daemon / spent) if spent else None}
        row.update((k, v) for k, v in result.report.items() if k not in row)
        return row

    def close(self) -> None:
        """Remove the hooks, and delete the session this optimizer created
        unless keep_session (see the class's note on its lifetime)."""
        self.capture.remove()
        if self.progress is not None:
            self.progress.close()
        if self.session is not None:
            self.session.close()
