# SPDX-License-Identifier: MIT
"""Exceptions of the curvd client.

Every error the daemon answers is an RFC 9457 problem+json document; it
becomes a ProblemError subclass chosen by the machine ``reason`` first and
the HTTP status second, carrying every field of the document.
"""

import json
from typing import List, NamedTuple, Optional


class FieldError(NamedTuple):
    """One entry of a problem's ``errors``: where, what was expected, what came."""

    path: str
    expected: Optional[str] = None
    got: Optional[str] = None

    def __str__(self):
        what = [f"{k} {v}" for k, v in (("expected", self.expected), ("got", self.got))
                if v is not None]
        return (self.path or "(body)") + (": " + ", ".join(what) if what else "")


class CurvdError(Exception):
    """Base class of every error this package raises."""


class TransportError(CurvdError):
    """The daemon could not be reached, or the connection failed on every try."""


class ProtocolError(CurvdError):
    """The daemon answered something this client cannot read."""


class CallbackError(CurvdError):
    """A step asked for a callback that this caller cannot answer."""


class NonFiniteValue(CurvdError, ValueError):
    """The trainer produced a NaN or infinite loss, product or Gram entry;
    the client refuses to send it (what: the field or callback; value: the
    offending number)."""

    def __init__(self, what: str, value: float):
        super().__init__(f"{what} is {value!r}: not finite, so it was not sent (the model's "
                         "loss or parameters have likely diverged)")
        self.what = what
        self.value = value


class ProblemError(CurvdError):
    """An error reply of the daemon (application/problem+json).

    Attributes: status (HTTP status), type, title, detail, instance, reason
    (machine word such as SHAPE_MISMATCH), errors (list of FieldError),
    request_id, retry_after (seconds, when the daemon sent Retry-After),
    problem (the whole document as a dict) and host ("host:port" of the
    daemon that answered, set by the Client).
    """

    def __init__(self, status: int, problem: dict, retry_after: Optional[float] = None):
        self.status = status
        self.problem = problem
        self.type = problem.get("type")
        self.title = problem.get("title")
        self.detail = problem.get("detail")
        self.instance = problem.get("instance")
        self.reason = problem.get("reason")
        self.request_id = problem.get("request_id")
        self.retry_after = retry_after
        self.host: Optional[str] = None
        self.errors: List[FieldError] = [
            FieldError(e.get("path", ""), e.get("expected"), e.get("got"))
            for e in problem.get("errors") or []
            if isinstance(e, dict)
        ]
        super().__init__(str(self))

    def __str__(self):
        head = f"{self.status} {self.reason or self.title or 'error'}"
        text = f"{head}: {self.detail}" if self.detail else head
        if self.errors:
            text += " [" + "; ".join(str(e) for e in self.errors) + "]"
        if self.host:
            text += f" (from {self.host})"
        return text


class BadRequest(ProblemError):
    """400: malformed body, wrong shape, unknown block or member."""


class Unauthorized(ProblemError):
    """401: the daemon needs a bearer token (Client(token=...))."""


class NotFound(ProblemError):
    """404: no such session (or one of another tenant)."""


class Conflict(ProblemError):
    """409: the request does not fit the session's current state."""


class StepOutOfOrder(Conflict):
    """409 STEP_OUT_OF_ORDER: ``expected_step`` is the step to post next."""

    @property
    def expected_step(self) -> Optional[int]:
        for e in self.errors:
            if e.path == "/step" and e.expected is not None and e.expected.isdigit():
                return int(e.expected)
        return None


class NoCallbackPending(Conflict):
    """409 NO_CALLBACK_PENDING: the step is not in progress (daemon restarted,
    or the step was posted again); post the step again."""


class CallbackOutOfOrder(Conflict):
    """409 CALLBACK_OUT_OF_ORDER: the step waits for another callback."""


class SessionBusy(Conflict):
    """409 SESSION_BUSY: another request of the session is in progress."""


class SessionUnloadable(Conflict):
    """409 SESSION_UNLOADABLE: the session is stored but its state cannot be
    loaded (damaged, or stored by an older daemon); retrying will not help.
    Client.export_state still returns the stored blob; delete the session."""


class PreconditionFailed(ProblemError):
    """412: the session changed since the ETag given in If-Match."""


class PayloadTooLarge(ProblemError):
    """413: the body (or a tensor) is over the daemon's limit."""


class UnsupportedMediaType(ProblemError):
    """415: wrong Content-Type."""


class Unprocessable(ProblemError):
    """422: the request is well formed but cannot be done."""


class StepMismatch(Unprocessable):
    """422 STEP_MISMATCH: a step (or callback answer) posted again is not the
    request that completed it: another gradient or other inputs, e.g. a second
    trainer on the session or a stale optimizer. Nothing was applied.
    ``stored_digest`` and ``request_digest`` are the digests compared."""

    @property
    def stored_digest(self) -> Optional[str]:
        return self.errors[0].expected if self.errors else None

    @property
    def request_digest(self) -> Optional[str]:
        return self.errors[0].got if self.errors else None


class NonFinite(Unprocessable):
    """422 NON_FINITE: a NaN or infinity; ``errors`` names the element."""


class ServerError(ProblemError):
    """5xx other than 503."""


class ServiceUnavailable(ProblemError):
    """503: out of memory, draining, or the store is busy (see retry_after)."""


# Every reason the daemon sends (its table is server/http/errors.h; the daemon's
# tests/server/http/test_errors.c checks that each is here) and its class; None
# for a reason sent with more than one status, whose class the status picks.
_BY_REASON = {
    "MALFORMED_JSON": BadRequest,
    "BAD_TENSOR": BadRequest,
    "BAD_DATATYPE": BadRequest,
    "SHAPE_MISMATCH": BadRequest,
    "UNKNOWN_BLOCK": BadRequest,
    "MISSING_BLOCK": BadRequest,
    "DUPLICATE_BLOCK": BadRequest,
    "BAD_BASE64": BadRequest,
    "BAD_BINARY": BadRequest,
    "TOO_LARGE": None,
    "NON_FINITE": NonFinite,
    "NO_MEMORY": ServiceUnavailable,
    "INTERNAL": ServerError,
    "UNSUPPORTED_MEDIA_TYPE": UnsupportedMediaType,
    "UNKNOWN_MEMBER": BadRequest,
    "UNAUTHORIZED": Unauthorized,
    "NOT_FOUND": NotFound,
    "METHOD_NOT_ALLOWED": ProblemError,
    "PRECONDITION_FAILED": PreconditionFailed,
    "TOO_MANY_REQUESTS": ProblemError,
    "DRAINING": ServiceUnavailable,
    "UNAVAILABLE": ServiceUnavailable,
    "NO_DATABASE": ServiceUnavailable,
    "DATABASE_BUSY": ServiceUnavailable,
    "DATABASE_ERROR": ServerError,
    "OUT_OF_MEMORY": ServiceUnavailable,
    "UNKNOWN_OPTIMIZER": BadRequest,
    "INVALID_LAYOUT": BadRequest,
    "INVALID_CONFIG": BadRequest,
    "INVALID_QUERY": BadRequest,
    "INVALID_TTL": BadRequest,
    "INVALID_LABELS": BadRequest,
    "INVALID_STATE": None,
    "STATE_TOO_LARGE": Unprocessable,
    "SESSION_BUSY": SessionBusy,
    "SESSION_CHANGED": Conflict,
    "STEP_OUT_OF_ORDER": StepOutOfOrder,
    "NO_CALLBACK_PENDING": NoCallbackPending,
    "CALLBACK_OUT_OF_ORDER": CallbackOutOfOrder,
    "CALLBACK_PENDING": Conflict,
    "INVALID_INPUT": BadRequest,
    "NUMERICAL_FAILURE": ServerError,
    "STEP_MISMATCH": StepMismatch,
    "SESSION_UNLOADABLE": SessionUnloadable,
    "BAD_FRAMING": BadRequest,
    "STORAGE_FULL": ServerError,
    "SESSION_LEASED": ServiceUnavailable,
}
_BY_STATUS = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: Unprocessable,
    503: ServiceUnavailable,
}


def problem_from_reply(status: int, body: bytes, retry_after: Optional[str] = None) -> ProblemError:
    """The exception for an error reply; a body that is not a problem
    document still gives a ProblemError with the text as detail."""
    try:
        doc = json.loads(body.decode("utf-8")) if body else {}
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except ValueError:
        doc = {"title": "error", "status": status,
               "detail": body[:500].decode("utf-8", "replace")}
    try:
        wait = float(retry_after) if retry_after is not None else None
    except ValueError:
        wait = None
    cls = _BY_REASON.get(doc.get("reason")) or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ProblemError
    return cls(status, doc, wait)
