# SPDX-License-Identifier: MIT
"""Python client of curvd, second-order optimization as a network service.

    import curvd
    with curvd.Client("http://127.0.0.1:8080") as c:
        s = c.create_session("adagrad_diag", [{"name": "w", "kind": "vector", "shape": [3]}])
        update = s.step({"w": [0.1, -0.2, 0.3]}).update["w"]

The core needs only the standard library (numpy, when importable, speeds
up the binary encodings). curvd.torch is a PyTorch optimizer on top.
"""

from .callbacks import Callback, CurvatureOracle, StepResult
from .client import Client, Session
from .progress import StepLog
from .errors import (BadRequest, CallbackError, CallbackOutOfOrder, Conflict, CurvdError,
                     FieldError, NoCallbackPending, NonFinite, NonFiniteValue, NotFound, PayloadTooLarge,
                     PreconditionFailed, ProblemError, ProtocolError, ServerError,
                     ServiceUnavailable, SessionBusy, SessionUnloadable, StepMismatch,
                     StepOutOfOrder,
                     TransportError,
                     Unauthorized, Unprocessable, UnsupportedMediaType)

__version__ = "0.1.0"

__all__ = [
    "BadRequest", "Callback", "CallbackError", "CallbackOutOfOrder", "Client", "Conflict",
    "CurvatureOracle", "CurvdError", "FieldError", "NoCallbackPending", "NonFinite", "NonFiniteValue",
    "NotFound",
    "PayloadTooLarge", "PreconditionFailed", "ProblemError", "ProtocolError", "ServerError",
    "ServiceUnavailable", "Session", "SessionBusy", "SessionUnloadable", "StepLog", "StepMismatch",
    "StepOutOfOrder",
    "StepResult",
    "TransportError", "Unauthorized", "Unprocessable", "UnsupportedMediaType",
]
