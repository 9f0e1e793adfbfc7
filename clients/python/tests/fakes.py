# SPDX-License-Identifier: MIT
"""Test doubles on loopback sockets.

FakeDaemon plays the daemon's side of a step with callbacks (no optimizer
of the real daemon asks for callbacks yet): it creates sessions, answers a
step with a scripted list of callbacks in the step's encoding, records
what the client sends, and can drop a reply or forget the step as a
restarted daemon does.

DroppingProxy relays HTTP/1.1 to a real daemon and swallows chosen
replies (the request reaches the daemon, the reply never reaches the
client), so retries are tested against the daemon's exactly-once rules.
"""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from curvd.tensors import Reader, Writer


def decode(headers, body: bytes):
    """(document, Reader) of a request or reply body."""
    hl = headers.get("Inference-Header-Content-Length")
    if hl is None:
        return json.loads(body), Reader(None)
    n = int(hl)
    return json.loads(body[:n]), Reader(body[n:])


def problem(status: int, reason: str, detail: str) -> dict:
    return {"type": f"https://curvd.dev/problems/{reason.lower()}", "title": reason,
            "status": status, "detail": detail, "reason": reason}


class FakeDaemon:
    """script: [(kind, [ {block: array} vector ... ]) ...] asked in order;
    then the step finishes with update = final (a {block: array}; None:
    zeros)."""

    def __init__(self, script, final, layout=None):
        self.script = script
        self.final = final
        self.layout = layout or []
        self.steps = []  # (document, {"gradients": ..., "layers": ...}) per POST of a step
        self.answers = []  # (callback id, decoded answer) per POST of an answer
        self.drop = set()  # indexes (over all requests) whose reply is dropped
        self.forget = set()  # answer indexes that get 409 NO_CALLBACK_PENDING
        self.requests = 0
        self._pos = 0
        self._enc = ("json", "FP32")
        self._replies = {}  # callback id -> (status, body, headers): retries get the same
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    def _reply_for_position(self):
        """The 202 with callback self._pos, or the final 200."""
        encoding, datatype = self._enc
        w = Writer(encoding)
        if self._pos < len(self.script):
            kind, vectors = self.script[self._pos]
            cid = str(100 + self._pos)
            doc = {"step": 1, "callback": {
                "id": cid, "kind": kind, "url": f"/v1/sessions/s/steps/1/callbacks/{cid}",
                "answer_values": len(vectors) * (len(vectors) if kind == "quadratic_form" else 1),
                "vectors": [w.tensors(v, datatype) for v in vectors]}}
            status = 202
        else:
            final = self.final or {k: np.zeros_like(v) for k, v in self.steps[-1][1]
                                   ["gradients"].items()}
            doc, status = {"step": 1, "update": w.tensors(final, datatype),
                           "report": {"optimizer": "fake"}}, 200
        body, headers = w.body(doc)
        return status, body, headers

    CATALOGUE = {"optimizers": [
        {"name": "kfac", "inputs": ["layers"], "callbacks": True,
         "params": [{"name": "lr"}, {"name": "fisher"}]},
        {"name": "hf", "inputs": ["grad_sq"], "callbacks": True, "params": [{"name": "lr"}]},
        {"name": "sgd", "inputs": [], "callbacks": False, "params": [{"name": "lr"}]}]}

    def _handle(self, method, path, headers, body):
        if method == "GET" and path == "/v1/version":
            return 200, json.dumps(self.CATALOGUE).encode(), {"Content-Type": "application/json"}
        if method == "POST" and path == "/v1/sessions":
            doc = json.loads(body)
            self.layout = doc["layout"]
            info = {"id": "f" * 32, "optimizer": doc["optimizer"], "config": doc.get("config", {}),
                    "layout": doc["layout"], "dim": 0, "step": 0}
            return 201, json.dumps(info).encode(), {"Content-Type": "application/json"}
        if method == "POST" and path.endswith("/steps"):
            doc, reader = decode(headers, body)
            got = {k: reader.tensors(doc[k]) for k in ("gradients", "params", "grad_sq")
                   if k in doc}
            got["layers"] = [dict(ly, activations=reader.tensor(ly["activations"])[1],
                                  signals=reader.tensor(ly["signals"])[1])
                             for ly in doc.get("layers", [])]
            self.steps.append((doc, got))
            self._enc = ("binary" if "Inference-Header-Content-Length" in headers else
                         "b64" if isinstance(doc["gradients"][0].get("data"), dict) else "json",
                         doc["gradients"][0]["datatype"])
            self._pos, self._replies = 0, {}
            return self._reply_for_position()
        if method == "POST" and "/callbacks/" in path:
            cid = path.rsplit("/", 1)[1]
            doc, reader = decode(headers, body)
            if "products" in doc:
                doc = {"products": [reader.tensors(v) for v in doc["products"]]}
            self.answers.append((cid, doc))
            if len(self.answers) - 1 in self.forget:
                self._replies = {}
                p = problem(409, "NO_CALLBACK_PENDING", "step 1 is not in progress")
                return 409, json.dumps(p).encode(), {"Content-Type": "application/problem+json"}
            if cid in self._replies:
                return self._replies[cid]
            if cid != str(100 + self._pos):
                p = problem(409, "CALLBACK_OUT_OF_ORDER", f"waits for {100 + self._pos}")
                return 409, json.dumps(p).encode(), {"Content-Type": "application/problem+json"}
            self._pos += 1
            self._replies[cid] = self._reply_for_position()
            return self._replies[cid]
        p = problem(404, "NOT_FOUND", path)
        return 404, json.dumps(p).encode(), {"Content-Type": "application/problem+json"}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()  # headers and body go out in two writes: no Nagle delay
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self):
                self.do_POST("GET")

            def do_POST(self, method="POST"):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index = fake.requests
                fake.requests += 1
                status, out, headers = fake._handle(method, self.path, self.headers, body)
                if index in fake.drop:  # processed, but the reply is lost
                    self.close_connection = True
                    return
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        return Handler


def _read_message(f, is_request: bool):
    """(head bytes, body bytes) of one HTTP/1.1 message with Content-Length."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    return head, f.read(length) if length else b""


class DroppingProxy:
    """Relays requests to @upstream (host, port); the replies of the
    requests numbered in .drop (0-based, over all connections) are read
    from the daemon and then thrown away with the client's connection."""

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.drop = set()
        self.count = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        up = socket.create_connection(self.upstream)
        cf, uf = conn.makefile("rb"), up.makefile("rb")
        try:
            while True:
                msg = _read_message(cf, True)
                if msg is None:
                    return
                up.sendall(msg[0] + msg[1])
                reply = _read_message(uf, False)
                with self._lock:
                    index, self.count = self.count, self.count + 1
                if reply is None or index in self.drop:
                    return
                conn.sendall(reply[0] + reply[1])
        finally:
            conn.close()
            up.close()

    def close(self):
        self._sock.close()


def random_vectors(blocks, k, seed=0):
    """@k random {block: array} vectors for blocks [(name, shape), ...]."""
    rng = np.random.default_rng(seed)
    return [{n: rng.standard_normal(s) for n, s in blocks} for _ in range(k)]
