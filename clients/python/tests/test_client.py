# SPDX-License-Identifier: MIT
"""curvd.Client against a real daemon: sessions, the three encodings,
exactly-once steps and retries, and problem details as typed exceptions."""

import json

import numpy as np
import pytest

import curvd
from curvd import tensors
from fakes import DroppingProxy

LAYOUT = [{"name": "fc", "kind": "dense", "shape": [2, 3], "bias": True},
          {"name": "gain", "kind": "vector", "shape": [2]}]


def grads(seed):
    rng = np.random.default_rng(seed)
    return {"fc": rng.standard_normal((2, 4)), "gain": rng.standard_normal(2)}


def test_session_lifecycle(client):
    assert "sgd" in client.optimizers() and client.ready()
    s = client.create_session("sgd", LAYOUT, {"lr": 0.5})
    assert s.dim == 10 and s.steps == 0 and s.config["lr"] == 0.5
    assert s.id in [x.id for x in client.list_sessions(page_size=1)]
    s.step(grads(1))
    assert s.update_config({"lr": 0.25}).config["lr"] == 0.25
    assert client.session(s.id).steps == 1
    copy = client.import_state(s.export_state())
    assert copy.id != s.id and copy.steps == 1 and copy.config["lr"] == 0.25
    s.delete()
    copy.delete()
    with pytest.raises(curvd.NotFound) as e:
        client.session(s.id)
    assert e.value.status == 404 and e.value.reason == "NOT_FOUND"



def test_name_and_labels(client):
    with client.create_session("sgd", LAYOUT, name="run 1", labels={"run": "lbl-1"}) as a, \
            client.create_session("sgd", LAYOUT, labels={"run": "lbl-2"}) as b:
        assert a.name == "run 1" and a.labels == {"run": "lbl-1"} and b.name is None
        assert [s.id for s in client.list_sessions(page_size=1, label="run=lbl-1")] == [a.id]
        assert b.id in [s.id for s in client.list_sessions(label="run=lbl-2")]
        c = client.set_labels(b.id, {"run": "lbl-1"}, name="renamed")
        assert c.name == "renamed" and c.labels == {"run": "lbl-1"}
        assert len(list(client.list_sessions(label="run=lbl-1"))) == 2
        assert client.set_labels(b.id, None).labels == {} and client.session(b.id).name == "renamed"
        with pytest.raises(curvd.BadRequest) as e:
            client.set_labels(a.id, {"bad key": "x"})
        assert e.value.reason == "INVALID_LABELS"


def test_close_deletes_the_session_unless_kept(client):
    with client.create_session("sgd", LAYOUT, {"lr": 0.5}, idle_ttl_s=3600) as s:
        assert s.idle_ttl_s == 3600 and s.keep is False
        s.step(grads(1))
        assert s.set_idle_ttl(None).idle_ttl_s is None
        assert client.set_idle_ttl(s.id, 0).idle_ttl_s == 0
        looked_up = client.session(s.id)
        looked_up.close()  # looked up: kept
        assert client.session(s.id).steps == 1
    with pytest.raises(curvd.NotFound):
        client.session(s.id)
    s.close()  # once only; no error
    kept = client.create_session("sgd", LAYOUT, keep=True)
    kept.close()
    assert client.session(kept.id).idle_ttl_s is None
    gone = client.create_session("sgd", LAYOUT)
    gone.delete()
    gone.close()  # already deleted: not an error
    client.delete_session(kept.id)
    with pytest.raises(curvd.BadRequest) as e:
        client.create_session("sgd", LAYOUT, idle_ttl_s=-1)
    assert e.value.reason == "INVALID_TTL"


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_encodings_give_identical_updates(client, offered, datatype):
    """Each kind stepped three times in JSON, b64 and binary: bit-identical."""
    first_order = sorted(offered - {"kfac", "hf"})
    assert len(first_order) >= 7
    for kind in first_order:
        updates = {}
        for enc in tensors.ENCODINGS:
            s = client.create_session(kind, LAYOUT, {"lr": 0.1})
            updates[enc] = [s.step(grads(k), encoding=enc, datatype=datatype).update
                            for k in range(3)]
            s.delete()
        for enc in ("b64", "binary"):
            for a, b in zip(updates["json"], updates[enc]):
                for name in a:
                    assert a[name].dtype == np.dtype("f4" if datatype == "FP32" else "f8")
                    np.testing.assert_array_equal(a[name], b[name], err_msg=f"{kind} {enc}")


def test_sgd_update_is_minus_lr_times_the_gradient(client):
    s = client.create_session("sgd", LAYOUT, {"lr": 0.5})
    g = grads(2)
    up = s.step(g, encoding="binary", datatype="FP64").update
    for name in g:
        np.testing.assert_array_equal(up[name], -0.5 * g[name])
    s.delete()


def test_the_same_step_twice_is_applied_once(client):
    s = client.create_session("adagrad_diag", LAYOUT, {"lr": 0.1})
    ref = client.create_session("adagrad_diag", LAYOUT, {"lr": 0.1})
    first = client.post_step(s.id, 1, grads(3), datatype="FP64")
    again = client.post_step(s.id, 1, grads(3), datatype="FP64")
    ref.step(grads(3), datatype="FP64")
    for name in first.update:
        np.testing.assert_array_equal(first.update[name], again.update[name])
    assert s.refresh().steps == 1
    # The next step matches a session that saw step 1 once.
    a = client.post_step(s.id, 2, grads(4), datatype="FP64").update
    b = ref.step(grads(4), datatype="FP64").update
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.parametrize("encoding", ["json", "binary"])
def test_a_lost_reply_is_retried_with_the_same_step(daemon, encoding):
    proxy = DroppingProxy(daemon.port)
    try:
        with curvd.Client(proxy.url, retry_wait=0.001) as c, curvd.Client(daemon.url) as d:
            s = c.create_session("adagrad_bma", LAYOUT, {"lr": 0.1})
            ref = d.create_session("adagrad_bma", LAYOUT, {"lr": 0.1})
            proxy.drop = {proxy.count, proxy.count + 1}  # step 1's reply, and the first retry's
            sent = c.requests_sent
            got = s.step(grads(5), encoding=encoding, datatype="FP64").update
            assert c.requests_sent - sent == 3
            want = ref.step(grads(5), encoding=encoding, datatype="FP64").update
            for name in got:
                np.testing.assert_array_equal(got[name], want[name])
            assert d.session(s.id).steps == 1
    finally:
        proxy.close()


def test_gives_up_with_a_transport_error(daemon):
    proxy = DroppingProxy(daemon.port)
    try:
        with curvd.Client(proxy.url, retries=2, retry_wait=0.001) as c:
            s = c.create_session("sgd", LAYOUT)
            proxy.drop = set(range(proxy.count, proxy.count + 10))
            with pytest.raises(curvd.TransportError, match="after 3 tries"):
                s.step(grads(6))
    finally:
        proxy.close()


def test_the_client_survives_a_daemon_restart(own_daemon):
    d = own_daemon()
    with curvd.Client(d.url, retry_wait=0.01) as c:
        s = c.create_session("mbag", LAYOUT, {"lr": 0.1, "tau": 2})
        s.step(grads(7))
        d.restart()  # the kept-alive connection is now dead; the session is on disk
        sent = c.requests_sent
        s.step(grads(8))
        assert c.requests_sent - sent == 2  # the dead connection, then a fresh one
        assert c.session(s.id).steps == 2
        d.restart()
        # Creating is not idempotent, but a reused connection found closed
        # before any reply surely did not reach the daemon: retried.
        assert c.create_session("sgd", LAYOUT).steps == 0
        assert len(list(c.list_sessions())) == 2


def test_nothing_listening_is_a_transport_error():
    with curvd.Client("http://127.0.0.1:9", retries=1, retry_wait=0.001) as c:
        with pytest.raises(curvd.TransportError, match="after 2 tries"):
            c.version()


class FakeTime:
    """A clock that only sleeping moves: retries are tested without waiting."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, s):
        assert s >= 0
        self.sleeps.append(s)
        self.now += s


def fake_client(url, jitter, **kw):
    c = curvd.Client(url, **kw)
    t = FakeTime()
    c._clock, c._sleep, c._random = t.clock, t.sleep, jitter
    return c, t


def test_the_default_retry_budget_is_30_seconds_of_backoff():
    # Port 9 (discard) refuses connections on loopback: every try fails at once.
    c, t = fake_client("http://127.0.0.1:9", lambda: 1.0)
    assert c.retry_budget == 30.0 and c.retries is None
    with pytest.raises(curvd.TransportError) as e:
        c.version()
    # The whole budget is spent, and not a moment more.
    assert sum(t.sleeps) == pytest.approx(30.0, abs=1e-9)
    # With the jitter at its top the waits are the exponential back-off:
    # 0.1 s doubling, capped at 5 s, the last one cut at the deadline.
    for k, w in enumerate(t.sleeps[:-1]):
        assert w == pytest.approx(min(5.0, 0.1 * 2 ** k))
    assert 0 < t.sleeps[-1] <= 5.0
    msg = str(e.value)
    assert "cannot reach 127.0.0.1:9" in msg  # the host, in the final error
    assert f"after {len(t.sleeps) + 1} tries in 30.0 s" in msg


def test_backoff_has_full_jitter():
    import random
    rng = random.Random(7)
    c, t = fake_client("http://127.0.0.1:9", rng.random, retry_budget=60.0, retry_wait=0.2,
                       retry_max_wait=3.0)
    with pytest.raises(curvd.TransportError):
        c.version()
    caps = [min(3.0, 0.2 * 2 ** k) for k in range(len(t.sleeps))]
    assert all(0 <= w <= cap for w, cap in zip(t.sleeps[:-1], caps))
    # Uniform over [0, cap]: the capped waits average near 1.5 s, not 3 s.
    capped = [w for w, cap in zip(t.sleeps[:-1], caps) if cap == 3.0]
    assert len(capped) > 20
    assert 0.9 < sum(capped) / len(capped) < 2.1
    assert sum(t.sleeps) == pytest.approx(60.0, abs=1e-9)


def test_retry_count_and_budget_are_configurable():
    c, t = fake_client("http://127.0.0.1:9", lambda: 0.5, retries=3)
    with pytest.raises(curvd.TransportError, match="after 4 tries"):
        c.version()
    assert len(t.sleeps) == 3
    c, t = fake_client("http://127.0.0.1:9", lambda: 0.5, retry_budget=0)
    with pytest.raises(curvd.TransportError, match="after 1 tries"):
        c.version()
    assert t.sleeps == []
    with pytest.raises(ValueError):
        curvd.Client("http://127.0.0.1:9", retry_budget=-1)


def test_retry_after_is_honoured_up_to_the_cap():
    c, t = fake_client("http://127.0.0.1:9", lambda: 0.0)
    deadline = t.now + 30
    assert c._backoff(0, 2.0, deadline) == 2.0  # at least Retry-After
    assert c._backoff(0, 60.0, deadline) == 5.0  # but never past retry_max_wait
    assert c._backoff(0, 2.0, t.now + 0.5) == 0.5  # nor past the budget
    assert c._backoff(0, None, t.now) is None  # budget spent


def test_a_problem_names_the_daemon(client):
    with pytest.raises(curvd.BadRequest) as e:
        client.create_session("nope", LAYOUT)
    host = client.url.split("//")[1]
    assert e.value.host == host and f"(from {host})" in str(e.value)


def test_problem_details_become_typed_exceptions(client):
    with pytest.raises(curvd.BadRequest) as e:
        client.create_session("nope", LAYOUT)
    assert e.value.reason == "UNKNOWN_OPTIMIZER" and e.value.errors[0].path == "/optimizer"
    assert e.value.errors[0].got == "nope" and e.value.type.endswith("unknown-optimizer")

    s = client.create_session("sgd", LAYOUT)
    bad = dict(grads(9), fc=np.zeros((4, 2)))
    with pytest.raises(curvd.BadRequest) as e:
        s.step(bad, encoding="json")
    assert e.value.reason == "SHAPE_MISMATCH"
    assert e.value.errors[0] == curvd.FieldError("/gradients/0/shape", "[2,4]", "[4,2]")
    assert "block 'fc'" in str(e.value) and "[2,4]" in str(e.value)

    s.step(grads(10))
    with pytest.raises(curvd.StepOutOfOrder) as e:
        client.post_step(s.id, 5, grads(11))
    assert e.value.status == 409 and e.value.expected_step == 2

    # Step 1 again: the same tensors in another encoding are its replay,
    # other ones are refused and applied nowhere (issue 21).
    first = client.post_step(s.id, 1, grads(10), encoding="json")
    again = client.post_step(s.id, 1, grads(10), encoding="binary")
    assert all(np.array_equal(np.asarray(again.update[k]), np.asarray(v))
               for k, v in first.update.items())
    with pytest.raises(curvd.StepMismatch) as e:
        client.post_step(s.id, 1, grads(11), encoding="b64")
    assert e.value.status == 422 and e.value.reason == "STEP_MISMATCH"
    assert isinstance(e.value, curvd.Unprocessable)
    assert e.value.stored_digest.startswith("mm3-128:")
    assert e.value.request_digest != e.value.stored_digest
    assert s.refresh().steps == 1

    with pytest.raises(curvd.NotFound):
        client.post_step("0" * 32, 1, grads(12))

    with pytest.raises(curvd.PreconditionFailed):
        client.update_config(s.id, {"lr": 0.2}, if_match='"0"')
    assert client.session(s.id).config["lr"] == 0.01


@pytest.mark.parametrize("encoding", ["json", "b64", "binary"])
def test_non_finite_gradients_name_the_element(client, encoding):
    s = client.create_session("adagrad_diag", LAYOUT)
    g = grads(13)
    g["gain"][1] = np.nan
    with pytest.raises(curvd.NonFinite) as e:
        s.step(g, encoding=encoding, datatype="FP64")
    assert e.value.status == 422 and e.value.reason == "NON_FINITE"
    assert "gain" in str(e.value)
    assert s.refresh().steps == 0


def test_bearer_token(own_daemon, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("t0ken-for-the-python-client-tests alice\n")
    d = own_daemon("--token-file", str(tokens))
    with curvd.Client(d.url) as c:
        with pytest.raises(curvd.Unauthorized) as e:
            c.version()
        assert e.value.status == 401
    with curvd.Client(d.url, token="t0ken-for-the-python-client-tests") as c:
        assert "sgd" in c.optimizers()


def roundtrip(encoding, datatype, value):
    """(body, values read back) of one tensor through Writer and Reader."""
    w = tensors.Writer(encoding)
    body, headers = w.body({"t": [w.tensor("a", value, datatype)]})
    hl = headers.get("Inference-Header-Content-Length")
    n = int(hl) if hl else len(body)
    doc = json.loads(body[:n])
    return body, tensors.Reader(body[n:] if hl else None).tensor(doc["t"][0])[1]


@pytest.mark.parametrize("encoding", tensors.ENCODINGS)
@pytest.mark.parametrize("datatype", tensors.DATATYPES)
def test_tensors_without_numpy_match_numpy(monkeypatch, encoding, datatype):
    """The stdlib path (array) writes the same bytes and reads the same
    values as the numpy path."""
    value = [[0.1, -2.5, 3e38], [1e-45, 7.0, -0.0]]
    body_np, back_np = roundtrip(encoding, datatype, value)
    monkeypatch.setattr(tensors, "np", None)
    body_py, back_py = roundtrip(encoding, datatype, value)
    assert body_np == body_py
    assert isinstance(back_py, list) and back_py == back_np.tolist()
    want = np.asarray(value, dtype="f4" if datatype == "FP32" else "f8")
    np.testing.assert_array_equal(back_np, want)


class ScriptedServer:
    """Answers each request with the next (status, body) of @script, then 200 {}."""

    def __init__(self, script):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading
        self.script = list(script)
        self.methods = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(n)
                outer.methods.append(self.command)
                status, body = outer.script.pop(0) if outer.script else (200, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()


BAD_GATEWAY = (502, json.dumps({"title": "Daemon lost", "status": 502,
                                "reason": "BAD_GATEWAY"}).encode())
GATEWAY_TIMEOUT = (504, b"<html>gateway timeout</html>")


def test_a_proxy_that_lost_the_daemon_is_retried_for_idempotent_requests():
    srv = ScriptedServer([BAD_GATEWAY, GATEWAY_TIMEOUT])
    try:
        c, t = fake_client(srv.url, lambda: 0.5)
        assert c.request("GET", "/v1/version").status == 200
        assert srv.methods == ["GET"] * 3 and len(t.sleeps) == 2
    finally:
        srv.close()


def test_a_proxy_that_lost_the_daemon_fails_a_create_at_once():
    # The create may have been applied behind the proxy: not repeated.
    srv = ScriptedServer([BAD_GATEWAY])
    try:
        c, t = fake_client(srv.url, lambda: 0.5)
        with pytest.raises(curvd.ServerError) as e:
            c.create_session("sgd", LAYOUT)
        assert e.value.status == 502 and e.value.reason == "BAD_GATEWAY"
        assert srv.methods == ["POST"] and t.sleeps == []
    finally:
        srv.close()


def test_a_proxy_that_keeps_failing_spends_the_budget_then_raises():
    srv = ScriptedServer([GATEWAY_TIMEOUT] * 100)
    try:
        c, t = fake_client(srv.url, lambda: 1.0, retries=3)
        with pytest.raises(curvd.ServerError) as e:
            c.request("GET", "/v1/version")
        assert e.value.status == 504 and len(srv.methods) == 4
    finally:
        srv.close()
