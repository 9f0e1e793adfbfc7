# SPDX-License-Identifier: MIT
"""HTTP client of curvd: sessions, steps and callbacks.

One keep-alive connection per Client (http.client); a Client is not
thread-safe, use one per thread. Steps and callback answers are retried
with the same step number when the connection fails: the daemon replays
the latest step's reply and a retried callback answer gets the reply it
got the first time, so nothing is ever applied twice.
"""

import http.client
import json
import random
import time
import urllib.parse
from typing import Dict, Iterator, List, Optional

from . import errors
from .callbacks import ANSWER_MEMBER, Callback, CurvatureOracle, StepResult, compute_answer
from .callbacks import check_answer_finite, finite_number, parse_step_reply
from .errors import CallbackError, NoCallbackPending, NotFound, ProtocolError, TransportError
from .tensors import Writer, check_datatype, check_encoding

_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)  # socket.timeout is an OSError
# curvd never answers 502 or 504: a proxy between (HAProxy, deploy/) lost
# the daemon after the request was sent, or timed it out. The request may
# have been applied, as after a connection that failed past sending.
_PROXY_LOST = (502, 504)


class _Reply:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body.decode("utf-8"))
        except ValueError as e:
            raise ProtocolError(f"reply {self.status} is not JSON: {e}") from e

    def document(self):
        """(JSON document, binary part or None): the binary extension puts
        the JSON length in Inference-Header-Content-Length."""
        hl = self.headers.get("Inference-Header-Content-Length")
        if hl is None:
            return self.json(), None
        n = int(hl)
        body = memoryview(self.body)  # a view: the binary part can be hundreds of MB
        try:
            return json.loads(bytes(body[:n]).decode("utf-8")), body[n:]
        except ValueError as e:
            raise ProtocolError(f"binary reply with an unreadable JSON header: {e}") from e


def server_timing_seconds(header: Optional[str]) -> float:
    """The total of a Server-Timing header's durations, in seconds
    ("decode;dur=1.250, step;dur=0.031" -> 0.001281); 0 when absent."""
    total = 0.0
    for metric in (header or "").split(","):
        for param in metric.split(";")[1:]:
            k, _, v = param.strip().partition("=")
            if k == "dur":
                try:
                    total += float(v)
                except ValueError:
                    pass
    return total / 1e3


class Client:
    """A connection to one curvd daemon.

    url: "http://host:port" (a path prefix is kept). token: bearer token
    when the daemon runs with a token file. timeout: seconds per request.
    Retries after a connection failure, a 503, a 409 SESSION_BUSY, or
    (any request but creating and importing) a proxy's 502 or 504 go
    on for retry_budget seconds in all (default 30: longer than a daemon's
    restart), with exponential back-off and full jitter: before try k+1
    the client sleeps a uniform random time in [0, min(retry_max_wait,
    retry_wait * 2**k)], at least Retry-After when the daemon sends one.
    retries: the most further tries (None: as many as the budget allows).
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", *, token: Optional[str] = None,
                 timeout: float = 120.0, retries: Optional[int] = None, retry_wait: float = 0.1,
                 retry_budget: float = 30.0, retry_max_wait: float = 5.0):
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"url must be http://host:port, got {url!r}")
        if retry_budget < 0 or retry_wait < 0 or retry_max_wait < 0 or (retries or 0) < 0:
            raise ValueError("retries, retry_wait, retry_budget and retry_max_wait must be >= 0")
        self.url = url
        self._https = u.scheme == "https"
        self._host = u.hostname
        self._port = u.port or (443 if self._https else 80)
        self._prefix = u.path.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.retries = retries
        self.retry_wait = retry_wait
        self.retry_budget = retry_budget
        self.retry_max_wait = retry_max_wait
        # The clock, the sleep and the jitter: tests replace them.
        self._clock = time.monotonic
        self._sleep = time.sleep
        self._random = random.random
        self._conn = None
        self._conn_used = False  # the connection has served a request before
        self.requests_sent = 0  # every attempt, retries included
        # Seconds spent in requests (wall time here) and what the daemon's
        # Server-Timing headers say it spent on them, over the client's life.
        self.request_seconds = 0.0
        self.server_seconds = 0.0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- transport ------------------------------------------------------

    def _connection(self):
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
            self._conn_used = False
        return self._conn

    def _once(self, method: str, path: str, body: Optional[bytes], headers: Dict[str, str]):
        """One attempt; on a transport error the exception carries whether
        the request may have reached the daemon."""
        conn = self._connection()
        reused = self._conn_used
        sent = False
        try:
            if conn.sock is None:
                conn.connect()
            self.requests_sent += 1
            conn.request(method, self._prefix + path, body=body, headers=headers)
            sent = True
            resp = conn.getresponse()
            data = resp.read()
        except _TRANSPORT_ERRORS as e:
            self.close()
            # Not processed for sure: the connect failed, or a reused
            # connection was found closed by the daemon before any reply.
            e.curvd_unsent = not sent or (reused and isinstance(
                e, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)))
            raise
        self._conn_used = True
        if resp.will_close:
            self.close()
        self.server_seconds += server_timing_seconds(resp.headers.get("Server-Timing"))
        return _Reply(resp.status, resp.headers, data)

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None, *, idempotent: bool = True) -> _Reply:
        """Send with retries; an error reply raises its ProblemError.

        idempotent=False (creating, importing) retries only what surely did
        not reach the daemon; steps and callback answers are idempotent by
        the daemon's exactly-once rules.
        """
        hdrs = {"Accept": "application/json, application/octet-stream"}
        if self._token:
            hdrs["Authorization"] = f"Bearer {self._token}"
        hdrs.update(headers or {})
        t0 = time.perf_counter()
        try:
            return self._request(method, path, body, hdrs, idempotent)
        finally:
            self.request_seconds += time.perf_counter() - t0

    def _request(self, method, path, body, hdrs, idempotent) -> _Reply:
        deadline = self._clock() + self.retry_budget
        attempt = 0
        while True:
            try:
                r = self._once(method, path, body, hdrs)
            except _TRANSPORT_ERRORS as e:
                wait = self._backoff(attempt, None, deadline)
                if wait is None or not (idempotent or e.curvd_unsent):
                    raise TransportError(
                        f"{method} {path}: cannot reach {self._host}:{self._port}: "
                        f"{e.__class__.__name__}: {e} (after {attempt + 1} tries in "
                        f"{self._clock() - deadline + self.retry_budget:.1f} s)") from e
                self._sleep(wait)
                attempt += 1
                continue
            if r.status < 400:
                return r
            if r.status in _PROXY_LOST and idempotent:
                wait = self._backoff(attempt, None, deadline)
                if wait is not None:
                    self._sleep(wait)
                    attempt += 1
                    continue
            if method == "DELETE" and r.status == 404 and attempt > 0:
                return r  # the first try deleted it; its reply was lost
            problem = errors.problem_from_reply(r.status, r.body, r.headers.get("Retry-After"))
            busy = isinstance(problem, (errors.ServiceUnavailable, errors.SessionBusy))
            wait = self._backoff(attempt, problem.retry_after, deadline) if busy else None
            if wait is None:
                problem.host = f"{self._host}:{self._port}"
                raise problem
            self._sleep(wait)
            attempt += 1

    def _backoff(self, attempt: int, retry_after: Optional[float],
                 deadline: float) -> Optional[float]:
        """The sleep before try attempt + 2, or None when the retries or
        the budget are spent: full jitter over the exponential back-off,
        at least Retry-After, never past the deadline."""
        if self.retries is not None and attempt >= self.retries:
            return None
        left = deadline - self._clock()
        if left <= 0:
            return None
        cap = min(self.retry_max_wait, self.retry_wait * (2 ** min(attempt, 60)))
        wait = self._random() * cap
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_max_wait))
        return min(wait, left)

    def _json(self, method: str, path: str, doc=None, **kw):
        body = None if doc is None else json.dumps(doc).encode("utf-8")
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        hdrs.update(kw.pop("headers", {}))
        r = self.request(method, path, body, hdrs, **kw)
        return r.json() if r.body else None

    # ---- operations and sessions ---------------------------------------

    def version(self) -> dict:
        """Versions, and every optimizer with its hyperparameters."""
        return self._json("GET", "/v1/version")

    def optimizers(self) -> List[str]:
        """The optimizer kinds this daemon offers."""
        return [o["name"] for o in self.version()["optimizers"]]

    def ready(self) -> bool:
        """True when the daemon answers /readyz with 200."""
        try:
            return self._once("GET", "/readyz", None, {}).status == 200
        except _TRANSPORT_ERRORS:
            return False

    _DEFAULT = object()

    def create_session(self, optimizer: str, layout: List[dict],
                       config: Optional[dict] = None, *, idle_ttl_s=_DEFAULT,
                       name: Optional[str] = None, labels: Optional[Dict[str, str]] = None,
                       keep: bool = False, history_steps=_DEFAULT) -> "Session":
        """A new session. idle_ttl_s: seconds after its last write that the
        daemon deletes it (0: never; None: the daemon's --idle-ttl; left
        out: the same). keep: whether Session.close() (and leaving a with
        block) leaves it on the daemon; by default they delete it. name,
        labels: free text and key/value strings (list_sessions(label=...)).
        history_steps: how many of its latest steps the daemon keeps for
        steps() (0: none; None or left out: the daemon's --history)."""
        doc = {"optimizer": optimizer, "layout": layout}
        if config:
            doc["config"] = config
        if idle_ttl_s is not Client._DEFAULT:
            doc["idle_ttl_s"] = idle_ttl_s
        if history_steps is not Client._DEFAULT:
            doc["history_steps"] = history_steps
        if name is not None:
            doc["name"] = name
        if labels:
            doc["labels"] = labels
        return Session(self, self._json("POST", "/v1/sessions", doc, idempotent=False),
                       keep=keep)

    def session(self, session_id: str) -> "Session":
        return Session(self, self._json("GET", f"/v1/sessions/{session_id}"))

    def list_sessions(self, page_size: int = 100,
                      label: Optional[str] = None) -> Iterator["Session"]:
        """Every session of the caller, oldest first (follows the pages);
        label="key=value": only those with that label."""
        token = None
        while True:
            q = {"page_size": page_size}
            if label is not None:
                q["label"] = label
            if token:
                q["page_token"] = token
            page = self._json("GET", "/v1/sessions?" + urllib.parse.urlencode(q))
            for s in page["sessions"]:
                yield Session(self, s)
            token = page.get("next_page_token")
            if not token:
                return

    def update_config(self, session_id: str, config: dict,
                      if_match: Optional[str] = None) -> "Session":
        """Change hyperparameters between steps; if_match: an ETag (the
        completed step count, e.g. '"3"') for 412 when a step came since."""
        hdrs = {"If-Match": if_match} if if_match else {}
        return Session(self, self._json("PATCH", f"/v1/sessions/{session_id}",
                                        {"config": config}, headers=hdrs))

    def set_idle_ttl(self, session_id: str, seconds: Optional[int]) -> "Session":
        """The session's own idle TTL: seconds, 0 for never, None for the
        daemon's default. Counts as use (the idle clock starts again)."""
        return Session(self, self._json("PATCH", f"/v1/sessions/{session_id}",
                                        {"idle_ttl_s": seconds}))

    def set_history(self, session_id: str, steps: Optional[int]) -> "Session":
        """How many of its latest steps the session keeps in its history
        (0: none; None: the daemon's --history); a lower bound drops the
        older steps at once."""
        return Session(self, self._json("PATCH", f"/v1/sessions/{session_id}",
                                        {"history_steps": steps}))

    def steps_page(self, session_id: str, since: int = 0, page_size: int = 100) -> dict:
        """One page of the session's step history: the daemon's {"steps":
        [...], "latest_step", "oldest_step", "next_since" (when more)}."""
        q = urllib.parse.urlencode({"since": since, "page_size": page_size})
        return self._json("GET", f"/v1/sessions/{session_id}/steps?{q}")

    def steps(self, session_id: str, since: int = 0, page_size: int = 1000) -> Iterator[dict]:
        """Every step the daemon keeps after step `since`, oldest first
        (follows the pages): dicts {"step", "at", "callbacks",
        "timing_ms": {phase: ms}, "report": {...}}. It ends with the last
        step committed when it reached it; call again with the last step
        seen as `since` to follow a session that goes on."""
        while True:
            page = self.steps_page(session_id, since, page_size)
            yield from page["steps"]
            if "next_since" not in page:
                return
            since = page["next_since"]

    history = steps

    def set_labels(self, session_id: str, labels: Optional[Dict[str, str]] = None,
                   name=_DEFAULT) -> "Session":
        """Replace the session's labels (None or {}: none), and its name if
        given (None clears it)."""
        doc = {"labels": labels}
        if name is not Client._DEFAULT:
            doc["name"] = name
        return Session(self, self._json("PATCH", f"/v1/sessions/{session_id}", doc))

    def delete_session(self, session_id: str) -> None:
        self.request("DELETE", f"/v1/sessions/{session_id}")

    def export_state(self, session_id: str) -> bytes:
        """The session's whole optimizer state as a portable blob."""
        return self.request("GET", f"/v1/sessions/{session_id}/state").body

    def import_state(self, blob: bytes, *, keep: bool = False) -> "Session":
        r = self.request("POST", "/v1/sessions:import", bytes(blob),
                         {"Content-Type": "application/octet-stream"}, idempotent=False)
        return Session(self, r.json(), keep=keep)

    # ---- steps -----------------------------------------------------------

    def post_step(self, session_id: str, step: int, gradients: Dict[str, object], *,
                  params: Optional[Dict[str, object]] = None,
                  grad_sq: Optional[Dict[str, object]] = None,
                  layers: Optional[List[dict]] = None, loss: Optional[float] = None,
                  batch: Optional[int] = None, encoding: str = "binary",
                  datatype: str = "FP32"):
        """Post step @step once; StepResult, or the Callback it waits for.

        gradients, params, grad_sq: {block: values} (mini-batch means, the
        block's tensor shape: dense [n_out, n_in (+1 bias column)], vector
        [n]). layers: [{"block", "activations", "signals", "examples"?}].
        batch: the examples the gradients average over (K-FAC reads the
        gradient's noise from it).
        """
        body, hdrs = self._step_body(step, gradients, params, grad_sq, layers, loss, batch,
                                     encoding, datatype)
        return self._post_step_body(session_id, body, hdrs, encoding, datatype)

    def _step_body(self, step, gradients, params, grad_sq, layers, loss, batch, encoding,
                   datatype):
        w = Writer(check_encoding(encoding))
        check_datatype(datatype)
        doc = {"step": int(step), "gradients": w.tensors(gradients, datatype)}
        if params is not None:
            doc["params"] = w.tensors(params, datatype)
        if grad_sq is not None:
            doc["grad_sq"] = w.tensors(grad_sq, datatype)
        if layers:
            doc["layers"] = [_layer_doc(w, ly, datatype) for ly in layers]
        if loss is not None:
            doc["loss"] = finite_number(f"step {step}: the loss", loss)
        if batch is not None:
            doc["batch"] = int(batch)
        return w.body(doc)

    def _post_step_body(self, session_id, body, hdrs, encoding, datatype):
        r = self.request("POST", f"/v1/sessions/{session_id}/steps", body, hdrs)
        doc, binary = r.document()
        return parse_step_reply(r.status, doc, binary, encoding, datatype)

    def answer_callback(self, cb: Callback, answer):
        """Post the answer to @cb; the next Callback or the StepResult.
        answer: [{block: values} per vector] (curvature_product), [losses]
        (loss) or the Gram matrix as rows (quadratic_form)."""
        member = ANSWER_MEMBER[cb.kind]
        check_answer_finite(cb, answer)
        w = Writer(cb.encoding if cb.kind == "curvature_product" else "json")
        if cb.kind == "curvature_product":
            answer = [w.tensors(v, cb.datatype) for v in answer]
        body, hdrs = w.body({member: answer})
        r = self.request("POST", cb.url, body, hdrs)
        doc, binary = r.document()
        return parse_step_reply(r.status, doc, binary, cb.encoding, cb.datatype)

    def step(self, session_id: str, step: int, gradients: Dict[str, object], *,
             params: Optional[Dict[str, object]] = None,
             grad_sq: Optional[Dict[str, object]] = None,
             layers: Optional[List[dict]] = None, loss: Optional[float] = None,
             batch: Optional[int] = None, encoding: str = "binary", datatype: str = "FP32",
             oracle: Optional[CurvatureOracle] = None, max_restarts: int = 3) -> StepResult:
        """Post step @step and answer its callbacks with @oracle until the
        update comes. When the daemon lost the step in progress (it
        restarted: 409 NO_CALLBACK_PENDING) the step is posted again from
        its beginning, at most @max_restarts times. Other arguments as in
        post_step."""
        body, hdrs = self._step_body(step, gradients, params, grad_sq, layers, loss, batch,
                                     encoding, datatype)
        reply = self._post_step_body(session_id, body, hdrs, encoding, datatype)
        restarts = 0
        while isinstance(reply, Callback):
            if oracle is None:
                raise CallbackError(f"step {step} asks for a {reply.kind} callback: pass an "
                                    "oracle (curvd.torch answers them for a torch model)")
            answer = compute_answer(oracle, reply)
            try:
                reply = self.answer_callback(reply, answer)
            except NoCallbackPending:
                if restarts == max_restarts:
                    raise
                restarts += 1
                reply = self._post_step_body(session_id, body, hdrs, encoding, datatype)
        return reply


def _layer_doc(w: Writer, layer: dict, datatype: str) -> dict:
    unknown = set(layer) - {"block", "activations", "signals", "examples"}
    if unknown:
        raise ValueError(f"layer entry has unknown keys {sorted(unknown)}")
    name = layer["block"]
    doc = {"block": name}
    if layer.get("examples") is not None:
        doc["examples"] = int(layer["examples"])
    doc["activations"] = w.tensor(name, layer["activations"], datatype)
    doc["signals"] = w.tensor(name, layer["signals"], datatype)
    return doc


class Session:
    """A session of the daemon: its description, and steps numbered for you.

    Attributes: id, optimizer, config (resolved), layout, dim, steps (the
    completed step count), idle_ttl_s (its own, or None for the daemon's
    default), history_steps (likewise), name, labels, info (the daemon's
    whole description), keep.

    Lifetime: a session this client created or imported is deleted by
    close() and at the end of a with block, unless keep is True (a
    create_session/import_state argument, or set the attribute). One that
    was looked up (Client.session, list_sessions) is kept: closing it only
    forgets it. Sessions nobody deletes stay on the daemon until their
    idle TTL, if any, runs out.
    """

    def __init__(self, client: Client, info: dict, *, keep: bool = True):
        self.client = client
        self.keep = keep
        self.closed = False
        self._set(info)

    def close(self) -> None:
        """Delete the session on the daemon unless keep (once; an already
        deleted or expired session is not an error)."""
        if self.closed:
            return
        self.closed = True
        if not self.keep:
            try:
                self.client.delete_session(self.id)
            except NotFound:
                pass

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _set(self, info: dict) -> None:
        self.info = info
        self.id = info["id"]
        self.optimizer = info["optimizer"]
        self.config = info.get("config", {})
        self.layout = info.get("layout", [])
        self.dim = info.get("dim")
        self.steps = int(info.get("step", 0))
        self.idle_ttl_s = info.get("idle_ttl_s")
        self.name = info.get("name")
        self.labels = info.get("labels") or {}
        self.history_steps = info.get("history_steps")

    def __repr__(self):
        return f"Session({self.id}, {self.optimizer}, steps={self.steps})"

    def refresh(self) -> "Session":
        self._set(self.client.session(self.id).info)
        return self

    def step(self, gradients: Dict[str, object], **kw) -> StepResult:
        """Post the next step (steps + 1); arguments as in Client.step."""
        result = self.client.step(self.id, self.steps + 1, gradients, **kw)
        self.steps = result.step
        return result

    def update_config(self, config: dict) -> "Session":
        self._set(self.client.update_config(self.id, config).info)
        return self

    def export_state(self) -> bytes:
        return self.client.export_state(self.id)

    def set_idle_ttl(self, seconds: Optional[int]) -> "Session":
        self._set(self.client.set_idle_ttl(self.id, seconds).info)
        return self

    def set_history(self, steps: Optional[int]) -> "Session":
        self._set(self.client.set_history(self.id, steps).info)
        return self

    def steps_history(self, since: int = 0, page_size: int = 1000) -> Iterator[dict]:
        """The session's kept steps after `since` (Client.steps)."""
        return self.client.steps(self.id, since, page_size)

    history = steps_history

    def delete(self) -> None:
        self.client.delete_session(self.id)
        self.closed = True
