# SPDX-License-Identifier: MIT
"""Tensors on the wire: Open Inference Protocol tensor objects.

Three encodings (api/openapi.yaml): "json" (data as plain JSON numbers),
"b64" (data as {"b64": little-endian bytes}) and "binary" (the binary
extension: the JSON document, then every tensor's bytes in document order;
its length goes in the Inference-Header-Content-Length header).

Values going out may be numpy arrays, anything numpy can convert (a CPU
torch tensor), or nested lists of numbers. Values coming back are numpy
arrays when numpy is importable, else nested lists shaped like the tensor.
"""

import array
import base64
import json
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ProtocolError

try:
    import numpy as np
except ImportError:  # the core works without numpy
    np = None

ENCODINGS = ("json", "b64", "binary")
DATATYPES = ("FP32", "FP64")
_CODE = {"FP32": "f", "FP64": "d"}
_SIZE = {"FP32": 4, "FP64": 8}
_NP_DTYPE = {"FP32": "<f4", "FP64": "<f8"}


def check_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    return encoding


def check_datatype(datatype: str) -> str:
    if datatype not in DATATYPES:
        raise ValueError(f"datatype must be FP32 or FP64, got {datatype!r}")
    return datatype


def _flatten_lists(value, shape: list, depth: int, out: list) -> None:
    """Row-major flattening of nested lists; ragged nesting is an error."""
    if isinstance(value, (list, tuple)):
        if len(shape) == depth:
            shape.append(len(value))
        elif shape[depth] != len(value):
            raise ValueError("ragged nested list: rows of different lengths")
        for v in value:
            _flatten_lists(v, shape, depth + 1, out)
    else:
        if len(shape) != depth:
            raise ValueError("ragged nested list: numbers and lists at one depth")
        out.append(float(value))


def flat_values(value, shape: Optional[Sequence[int]] = None) -> Tuple[object, Tuple[int, ...]]:
    """(flat values, shape) of @value: a flat float32 or float64 numpy
    array, or a list of floats without numpy. @shape, when given, reshapes a value that
    holds the same number of elements (a flat list with its shape)."""
    if np is not None:
        arr = np.asarray(value)
        if arr.dtype not in (np.float32, np.float64):  # keep FP32 data unconverted
            arr = arr.astype(np.float64)
        flat, got = arr.reshape(-1), tuple(arr.shape)
    else:
        flat, dims = [], []
        _flatten_lists(value, dims, 0, flat)
        got = tuple(dims)
    if shape is None:
        return flat, got
    shape = tuple(int(d) for d in shape)
    count = 1
    for d in shape:
        count *= d
    if count != len(flat):
        raise ValueError(f"{len(flat)} values cannot have shape {list(shape)}")
    return flat, shape


def to_bytes(flat, datatype: str) -> bytes:
    """Little-endian bytes of flat values (floats beyond FP32 become inf,
    which the daemon reports as NON_FINITE with the element's path)."""
    if np is not None:
        with np.errstate(over="ignore"):
            return np.ascontiguousarray(flat, dtype=_NP_DTYPE[datatype]).tobytes()
    arr = array.array(_CODE[datatype], flat)
    if sys.byteorder == "big":
        arr.byteswap()
    return arr.tobytes()


def _reshape_lists(flat: list, shape: Tuple[int, ...]):
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape_lists(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def from_bytes(buf: bytes, datatype: str, shape: Tuple[int, ...]):
    """Values of little-endian bytes, shaped (numpy array or nested lists)."""
    if np is not None:
        return np.frombuffer(buf, dtype=_NP_DTYPE[datatype]).reshape(shape).copy()
    arr = array.array(_CODE[datatype])
    arr.frombytes(buf)
    if sys.byteorder == "big":
        arr.byteswap()
    return _reshape_lists(arr.tolist(), shape)


def from_numbers(numbers, datatype: str, shape: Tuple[int, ...]):
    """Values of JSON numbers (flat or nested), shaped."""
    flat, _ = flat_values(numbers)
    if np is not None:
        return np.asarray(flat, dtype=_NP_DTYPE[datatype]).reshape(shape)
    if datatype == "FP32":  # the value the daemon meant: rounded to float
        flat = array.array("f", flat).tolist()
    return _reshape_lists(flat, shape)


def _json_numbers(flat, datatype: str) -> list:
    """Python floats whose repr round-trips (FP32: the float's exact value)."""
    if np is not None:
        with np.errstate(over="ignore"):
            return np.asarray(flat, dtype=_NP_DTYPE[datatype]).astype(np.float64).tolist()
    return array.array(_CODE[datatype], flat).tolist()


class Writer:
    """Builds a request body in one encoding.

    tensor() makes one tensor object to place anywhere in the document;
    body() serializes the document and, for the binary extension, appends
    each tensor's bytes in the order the objects appear in the text.
    """

    def __init__(self, encoding: str = "json"):
        self.encoding = check_encoding(encoding)
        self._bytes: Dict[int, bytes] = {}

    def tensor(self, name: str, value, datatype: str = "FP32",
               shape: Optional[Sequence[int]] = None) -> dict:
        check_datatype(datatype)
        flat, shape = flat_values(value, shape)
        obj = {"name": name, "shape": list(shape), "datatype": datatype}
        if self.encoding == "json":
            obj["data"] = _json_numbers(flat, datatype)
        elif self.encoding == "b64":
            obj["data"] = {"b64": base64.b64encode(to_bytes(flat, datatype)).decode("ascii")}
        else:
            raw = to_bytes(flat, datatype)
            obj["parameters"] = {"binary_data_size": len(raw)}
            self._bytes[id(obj)] = raw
        return obj

    def tensors(self, values: Dict[str, object], datatype: str = "FP32") -> List[dict]:
        """One tensor object per entry of a {name: value} dict."""
        return [self.tensor(name, v, datatype) for name, v in values.items()]

    def body(self, doc) -> Tuple[bytes, Dict[str, str]]:
        """(body bytes, headers) of @doc."""
        text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        if self.encoding != "binary":
            return text, {"Content-Type": "application/json"}
        chunks = [text]
        _collect(doc, self._bytes, chunks)
        return b"".join(chunks), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(text))}


def _collect(node, raw: Dict[int, bytes], out: list) -> None:
    """Binary parts in the order json.dumps writes the objects."""
    if isinstance(node, dict):
        if id(node) in raw:
            out.append(raw[id(node)])
        for v in node.values():
            _collect(v, raw, out)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _collect(v, raw, out)


class Reader:
    """Reads tensors of a reply: JSON numbers, b64, or the binary part,
    which is consumed in document order (so read tensors in that order)."""

    def __init__(self, binary: Optional[bytes] = None):
        self._bin = binary
        self._pos = 0

    def tensor(self, obj: dict):
        """(name, values) of one tensor object."""
        try:
            name, datatype = obj["name"], check_datatype(obj["datatype"])
            shape = tuple(int(d) for d in obj["shape"])
            data = obj.get("data")
            if isinstance(data, dict):
                return name, from_bytes(base64.b64decode(data["b64"], validate=True),
                                        datatype, shape)
            if data is not None:
                return name, from_numbers(data, datatype, shape)
            size = int(obj["parameters"]["binary_data_size"])
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"unreadable tensor in the reply: {e}") from e
        if self._bin is None or self._pos + size > len(self._bin):
            raise ProtocolError(f"tensor '{name}' needs {size} bytes the binary part lacks")
        raw = self._bin[self._pos:self._pos + size]
        self._pos += size
        return name, from_bytes(raw, datatype, shape)

    def tensors(self, objs: List[dict]) -> Dict[str, object]:
        """{name: values} of a list of tensor objects."""
        return dict(self.tensor(o) for o in objs)
