# SPDX-License-Identifier: MIT
"""Torch parameters <-> curvd layout blocks.

nn.Linear becomes a dense block [n_out, n_in] and nn.Conv2d a conv2d block
[c_out, c_in, kh, kw]; on the wire both are [rows, cols] row-major with
the bias as the last column (conv weights flattened to [c_out,
c_in*kh*kw], the order F.unfold gives patches in). Every other trainable
parameter (norm gains, embeddings, grouped convolutions) is a vector
block: the session's fallback optimizes it.
"""

import hashlib
import warnings
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

NAME_MAX = 63  # the daemon's limit on block names


class Block:
    """One layout block and the torch parameters it stands for."""

    def __init__(self, name: str, kind: str, params: List[nn.Parameter],
                 module: Optional[nn.Module] = None):
        self.name = name
        self.kind = kind  # "dense", "conv2d" or "vector"
        self.params = params  # [weight] or [weight, bias] (layers), [param] (vector)
        self.module = module
        w = params[0]
        self.has_bias = kind != "vector" and len(params) == 2
        self.n_out = w.shape[0] if kind != "vector" else w.numel()
        self.n_in = w[0].numel() if kind != "vector" else 1
        self.wire_shape = ((self.n_out, self.n_in + self.has_bias) if kind != "vector"
                           else (w.numel(),))

    def __repr__(self):
        return f"Block({self.name!r}, {self.kind}, wire {list(self.wire_shape)})"

    @property
    def spec(self) -> dict:
        """The block as the session's layout describes it."""
        if self.kind == "vector":
            return {"name": self.name, "kind": "vector", "shape": [self.n_out]}
        shape = list(self.params[0].shape)
        return {"name": self.name, "kind": self.kind, "shape": shape, "bias": self.has_bias}

    def to_wire(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """The wire matrix of tensors shaped like self.params (grads,
        values, ...); a None entry (an unused parameter) counts as zeros."""
        ts = [t if t is not None else torch.zeros_like(p) for t, p in zip(tensors, self.params)]
        if self.kind == "vector":
            return ts[0].reshape(-1)
        w = ts[0].reshape(self.n_out, self.n_in)
        return torch.cat([w, ts[1].reshape(-1, 1)], dim=1) if self.has_bias else w

    def from_wire(self, value: torch.Tensor) -> List[torch.Tensor]:
        """Tensors shaped like self.params from a wire matrix."""
        if self.kind == "vector":
            return [value.reshape(self.params[0].shape)]
        m = value.reshape(self.wire_shape)
        out = [m[:, :self.n_in].reshape(self.params[0].shape)]
        if self.has_bias:
            out.append(m[:, self.n_in].reshape(self.params[1].shape))
        return out


def _layer_kind(m: nn.Module) -> Optional[str]:
    """dense/conv2d for the layers K-FAC models; None for the rest."""
    if isinstance(m, nn.Linear):
        return "dense"
    if (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)):
        return "conv2d"  # F.unfold reproduces exactly these
    return None


def _unique_name(name: str, used: set) -> str:
    """@name, shortened with a hash past NAME_MAX and made unique."""
    base = name
    if len(base) > NAME_MAX:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        base = name[:NAME_MAX - 9] + "~" + digest
    out, k = base, 1
    while out in used:
        suffix = f"#{k}"
        out, k = base[:NAME_MAX - len(suffix)] + suffix, k + 1
    used.add(out)
    return out


def model_blocks(model: nn.Module, bias_blocks: bool = False) -> List[Block]:
    """The blocks of @model's trainable parameters: its Linear and Conv2d
    layers (named after the module) in registration order, then every
    other parameter as a vector block (named after the parameter). With
    @bias_blocks the layers' biases are among those vector blocks instead
    of the layers' last columns."""
    blocks, taken, used = [], set(), set()
    for mname, m in model.named_modules():
        kind = _layer_kind(m)
        if kind is None:
            continue
        ps = [m.weight] + ([m.bias] if m.bias is not None and not bias_blocks else [])
        if any(id(p) in taken or not p.requires_grad for p in ps):
            continue  # shared or frozen: its trainable parts go to the fallback
        taken.update(id(p) for p in ps)
        blocks.append(Block(_unique_name(mname or kind, used), kind, ps, m))
    for pname, p in model.named_parameters():
        if p.requires_grad and id(p) not in taken:
            taken.add(id(p))
            blocks.append(Block(_unique_name(pname, used), "vector", [p]))
    if not blocks:
        raise ValueError("the model has no trainable parameters")
    return blocks


def _why_not_a_layer(m: nn.Module, bias_blocks: bool) -> str:
    """Why @m's parameters are vector blocks, in a few words."""
    if isinstance(m, nn.Conv2d) and _layer_kind(m) is None:
        if m.groups != 1:
            return f"a grouped convolution (groups={m.groups})"
        if m.padding_mode != "zeros":
            return f"padding_mode={m.padding_mode!r}"
        return f"padding={m.padding!r}"
    if _layer_kind(m) is not None:
        return "its weight is shared with another layer or frozen"
    return "not an nn.Linear or nn.Conv2d layer"


def fallback_report(model: nn.Module, blocks: List[Block], bias_blocks: bool = False) -> str:
    """The vector blocks of @model, grouped by module, with the reason each
    is not a layer block, as one line per module ("" when none). With
    @bias_blocks the layers' biases, asked for as vector blocks, are not
    listed."""
    names = {id(p): n for n, p in model.named_parameters()}
    by_module: Dict[str, List[str]] = {}
    for b in blocks:
        if b.kind != "vector":
            continue
        pname = names.get(id(b.params[0]), b.name)
        mname, _, attr = pname.rpartition(".")
        m = model.get_submodule(mname) if mname else model
        if bias_blocks and _layer_kind(m) is not None and attr == "bias":
            continue
        by_module.setdefault(mname, []).append(attr)
    lines = []
    for mname, attrs in by_module.items():
        m = model.get_submodule(mname) if mname else model
        where = repr(mname) if mname else "the model"
        lines.append(f"  {where} ({type(m).__name__}: {', '.join(attrs)}): "
                     f"{_why_not_a_layer(m, bias_blocks)}")
    return "\n".join(lines)


def warn_fallback(model: nn.Module, blocks: List[Block], kind: dict, config: dict,
                  bias_blocks: bool = False) -> None:
    """One warning naming the parameters that @kind's layer model (an
    optimizer of GET /v1/version) leaves to its fallback (vector blocks),
    and why. Its stack level points at the user's constructor call."""
    report = fallback_report(model, blocks, bias_blocks)
    if not report:
        return
    params = {p["name"]: p.get("default") for p in kind.get("params", [])}
    fallback = config.get("fallback", params.get("fallback"))
    lr = config.get("fallback_lr", params.get("fallback_lr"))
    known = ([fallback] if fallback is not None else []) + \
        ([f"fallback_lr={lr}"] if lr is not None else [])
    which = f" ({', '.join(known)})" if known else ""
    warnings.warn(f"{kind['name']} models the curvature of nn.Linear and nn.Conv2d layers "
                  f"only; these parameters go to its fallback optimizer{which} as vector "
                  f"blocks, without curvature:\n{report}", UserWarning, stacklevel=4)


def fits(blocks: List[Block], layout: List[dict]) -> bool:
    """Whether a session's @layout is @blocks' in some order of blocks."""
    def norm(specs):
        return sorted((dict(d, bias=d.get("bias", False)) for d in specs),
                      key=lambda d: d["name"])
    return norm(layout) == norm(b.spec for b in blocks)


def order_blocks(blocks: List[Block], first_calls: Sequence[str]) -> List[Block]:
    """Layers in the order the forward pass first called them (K-FAC's
    block-tridiagonal form couples neighbours), then the rest as before."""
    rank: Dict[str, int] = {n: i for i, n in enumerate(first_calls)}
    return sorted(blocks, key=lambda b: (0, rank[b.name]) if b.name in rank else (1, 0))


def per_param(blocks: List[Block], wire: Dict[str, object]):
    """(parameter, tensor shaped like it) for a {block: wire values} reply
    such as a step's update, on the parameters' device and dtype."""
    for b in blocks:
        p0 = b.params[0]
        value = torch.as_tensor(wire[b.name], dtype=p0.dtype, device=p0.device)
        yield from zip(b.params, b.from_wire(value))


def wire_values(blocks: List[Block], per_block: Dict[str, List[torch.Tensor]]):
    """{block: numpy wire matrix} of per-block tensor lists."""
    return {b.name: b.to_wire(per_block[b.name]).detach().cpu().numpy() for b in blocks}
