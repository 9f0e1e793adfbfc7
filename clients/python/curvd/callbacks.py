# SPDX-License-Identifier: MIT
"""Step replies and callback answers.

A step either finishes (200: StepResult with the update) or needs the
trainer (202: Callback). A callback is answered by a CurvatureOracle, the
object that knows the model and the mini-batch: C v products
(curvature_product), v_i^T C v_j Gram matrices (quadratic_form) and mean
losses at theta + v (loss). C is the mini-batch mean Gauss-Newton / Fisher
matrix without damping. Theta and the mini-batch stay fixed for the whole
step, so an oracle asked again gives the same answer.
"""

from dataclasses import dataclass, field
from typing import Dict, List

import math

from .errors import NonFiniteValue, ProtocolError
from .tensors import Reader, flat_values

KINDS = ("curvature_product", "loss", "quadratic_form")
ANSWER_MEMBER = {"curvature_product": "products", "loss": "losses", "quadratic_form": "gram"}


@dataclass
class StepResult:
    """A finished step: add each update tensor to its block (theta += update)."""

    step: int
    update: Dict[str, object]
    report: dict = field(default_factory=dict)


@dataclass
class Callback:
    """A step waiting for the trainer. vectors: one {block: values} per vector.
    encoding and datatype are the step's; the answer uses them."""

    step: int
    id: str
    kind: str
    url: str
    answer_values: int
    vectors: List[Dict[str, object]]
    encoding: str = "json"
    datatype: str = "FP32"


class CurvatureOracle:
    """Answers callbacks. Subclass it and implement what your optimizer asks.

    vectors is a list of {block name: values shaped like the block's
    tensor}; products come back in the same form.
    """

    def curvature_products(self, vectors: List[Dict[str, object]]) -> List[Dict[str, object]]:
        """[C v for v in vectors], each {block: values}."""
        raise NotImplementedError("this oracle cannot compute curvature products")

    def losses(self, vectors: List[Dict[str, object]]) -> List[float]:
        """[mean loss at theta + v for v in vectors], on the step's cases."""
        raise NotImplementedError("this oracle cannot evaluate losses")

    def quadratic_form(self, vectors: List[Dict[str, object]]) -> List[List[float]]:
        """The Gram matrix v_i^T C v_j. By default from curvature_products;
        an oracle that can do better (one JVP per vector) overrides it."""
        products = self.curvature_products(vectors)
        return [[block_dot(u, cv) for cv in products] for u in vectors]


def block_dot(a: Dict[str, object], b: Dict[str, object]) -> float:
    """Sum over blocks of the elementwise products of two {block: values}."""
    total = 0.0
    for name, x in a.items():
        fx, _ = flat_values(x)
        fy, _ = flat_values(b[name])
        if isinstance(fx, list):
            total += sum(p * q for p, q in zip(fx, fy))
        else:
            total += float(fx.astype("f8") @ fy.astype("f8"))
    return total


def compute_answer(oracle: CurvatureOracle, cb: Callback):
    """The oracle's answer to @cb: a list of {block: values} (products) or
    numbers (losses, the Gram matrix as rows)."""
    if cb.kind == "curvature_product":
        out = oracle.curvature_products(cb.vectors)
    elif cb.kind == "loss":
        out = [float(x) for x in oracle.losses(cb.vectors)]
    else:
        out = [[float(x) for x in row] for row in oracle.quadratic_form(cb.vectors)]
    if len(out) != len(cb.vectors):
        raise ValueError(f"{cb.kind} callback: {len(cb.vectors)} vectors, "
                         f"the oracle answered {len(out)} values")
    return out


def finite_number(what: str, x) -> float:
    """float(@x), or NonFiniteValue naming @what."""
    v = float(x)
    if not math.isfinite(v):
        raise NonFiniteValue(what, v)
    return v


def _first_nonfinite(flat):
    """Index of the first NaN or infinity in a flat list or numpy array."""
    if isinstance(flat, list):
        return next((j for j, v in enumerate(flat) if not math.isfinite(v)), None)
    import numpy as np  # flat is a numpy array only where numpy exists

    bad = np.flatnonzero(~np.isfinite(flat))
    return int(bad[0]) if bad.size else None


def check_answer_finite(cb: Callback, answer) -> None:
    """Refuse an answer to @cb holding a NaN or infinity (JSON has no
    spelling for them, and a binary one would poison the step): the error
    names the callback, the entry and the value."""
    what = f"step {cb.step}: the {cb.kind} callback's answer"
    if cb.kind == "curvature_product":
        for i, product in enumerate(answer):
            for name, x in product.items():
                j = _first_nonfinite(flat_values(x)[0])
                if j is not None:
                    raise NonFiniteValue(f"{what}, product {i}, block {name!r}, entry {j}",
                                         float(flat_values(x)[0][j]))
    elif cb.kind == "loss":
        for i, v in enumerate(answer):
            finite_number(f"{what}, loss {i}", v)
    else:
        for i, row in enumerate(answer):
            for j, v in enumerate(row):
                finite_number(f"{what}, Gram entry [{i}][{j}]", v)


def parse_step_reply(status: int, doc: dict, binary, encoding: str, datatype: str):
    """StepResult (200) or Callback (202) from a decoded reply."""
    reader = Reader(binary)
    try:
        if status == 200:
            return StepResult(int(doc["step"]), reader.tensors(doc["update"]),
                              doc.get("report") or {})
        cb = doc["callback"]
        if cb["kind"] not in KINDS:
            raise ProtocolError(f"unknown callback kind {cb['kind']!r}")
        vectors = [reader.tensors(v) for v in cb["vectors"]]
        return Callback(int(doc["step"]), str(cb["id"]), cb["kind"], cb["url"],
                        int(cb["answer_values"]), vectors, encoding, datatype)
    except (KeyError, TypeError) as e:
        raise ProtocolError(f"unreadable step reply ({status}): missing {e}") from e
