# SPDX-License-Identifier: MIT
"""The callback exchange, against a scripted fake daemon: every callback
kind answered in every encoding, retried answers, a daemon that lost the
step, and refusals."""

import numpy as np
import pytest

import curvd
from fakes import FakeDaemon, random_vectors

BLOCKS = [("fc", (3, 4)), ("gain", (2,))]
DIM = 14


def flat(v):
    return np.concatenate([np.asarray(v[n], dtype=np.float64).reshape(-1) for n, _ in BLOCKS])


def unflat(x):
    out, k = {}, 0
    for n, s in BLOCKS:
        size = int(np.prod(s))
        out[n] = x[k:k + size].reshape(s)
        k += size
    return out


class DenseOracle(curvd.CurvatureOracle):
    """C = B B^T and h(theta + v) = 1/2 v^T C v + c^T v + 1 over the flat
    vector; counts its calls."""

    def __init__(self):
        rng = np.random.default_rng(7)
        b = rng.standard_normal((DIM, DIM))
        self.C = b @ b.T
        self.c = rng.standard_normal(DIM)
        self.calls = 0

    def curvature_products(self, vectors):
        self.calls += 1
        return [unflat(self.C @ flat(v)) for v in vectors]

    def losses(self, vectors):
        self.calls += 1
        return [0.5 * flat(v) @ self.C @ flat(v) + self.c @ flat(v) + 1 for v in vectors]


def script(seed=0):
    return [("curvature_product", random_vectors(BLOCKS, 1, seed)),
            ("quadratic_form", random_vectors(BLOCKS, 3, seed + 1)),
            ("loss", random_vectors(BLOCKS, 2, seed + 2))]


FINAL = {"fc": np.arange(12.0).reshape(3, 4) / 8, "gain": np.array([0.5, -0.25])}
GRADS = {"fc": np.ones((3, 4)), "gain": np.array([1.0, 2.0])}


@pytest.fixture
def fake():
    f = FakeDaemon(script(), FINAL)
    yield f
    f.close()


def check_answers(fake, oracle, datatype):
    """What the fake received equals the dense math, at the wire's precision."""
    rtol = 1e-5 if datatype == "FP32" else 1e-12
    kinds = [k for k, _ in fake.script]
    assert len(fake.answers) == len(kinds)
    for (kind, vectors), (_, ans) in zip(fake.script, fake.answers):
        # The vectors the oracle saw went through the wire at this precision.
        vs = [flat(v).astype(np.float32 if datatype == "FP32" else np.float64) for v in vectors]
        if kind == "curvature_product":
            got = [flat(p) for p in ans["products"]]
            want = [oracle.C @ v for v in vs]
        elif kind == "quadratic_form":
            got = np.asarray(ans["gram"]).reshape(-1)
            want = np.array([[a @ oracle.C @ b for b in vs] for a in vs]).reshape(-1)
        else:
            got = np.asarray(ans["losses"])
            want = np.array([0.5 * v @ oracle.C @ v + oracle.c @ v + 1 for v in vs])
        np.testing.assert_allclose(np.ravel(got), np.ravel(want), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("encoding", ["json", "b64", "binary"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_every_kind_answered_in_every_encoding(fake, encoding, datatype):
    oracle = DenseOracle()
    with curvd.Client(fake.url) as c:
        r = c.step("s", 1, GRADS, oracle=oracle, encoding=encoding, datatype=datatype)
    assert isinstance(r, curvd.StepResult) and r.step == 1
    for name, want in FINAL.items():
        np.testing.assert_allclose(r.update[name], want)
    check_answers(fake, oracle, datatype)
    # The default Gram matrix is built from products: one call per callback.
    assert oracle.calls == 3


def test_retried_answer_gets_the_same_reply(fake):
    oracle = DenseOracle()
    fake.drop = {2}  # the reply to the second answer (request 2) is lost
    with curvd.Client(fake.url, retry_wait=0.001) as c:
        r = c.step("s", 1, GRADS, oracle=oracle, encoding="binary", datatype="FP64")
    np.testing.assert_allclose(r.update["fc"], FINAL["fc"])
    ids = [cid for cid, _ in fake.answers]
    assert ids == ["100", "101", "101", "102"]  # the same answer posted twice
    assert fake.answers[1][1] == fake.answers[2][1]
    assert oracle.calls == 3  # the retry resent the answer; nothing recomputed


def test_step_reposted_when_the_daemon_lost_it(fake):
    oracle = DenseOracle()
    fake.forget = {1}  # the second answer finds the step gone (a restart)
    with curvd.Client(fake.url) as c:
        r = c.step("s", 1, GRADS, oracle=oracle, encoding="json", datatype="FP64")
    np.testing.assert_allclose(r.update["gain"], FINAL["gain"])
    assert len(fake.steps) == 2  # posted again from its beginning
    assert fake.steps[0][0] == fake.steps[1][0]
    assert [cid for cid, _ in fake.answers] == ["100", "101", "100", "101", "102"]


def test_gives_up_after_max_restarts(fake):
    fake.forget = set(range(10))
    with curvd.Client(fake.url) as c:
        with pytest.raises(curvd.NoCallbackPending) as e:
            c.step("s", 1, GRADS, oracle=DenseOracle(), max_restarts=2)
    assert e.value.status == 409 and len(fake.steps) == 3


def test_without_an_oracle_a_callback_is_an_error(fake):
    with curvd.Client(fake.url) as c:
        with pytest.raises(curvd.CallbackError, match="curvature_product"):
            c.step("s", 1, GRADS)
        pending = c.post_step("s", 1, GRADS, encoding="b64", datatype="FP64")
    assert isinstance(pending, curvd.Callback)
    assert pending.kind == "curvature_product" and pending.answer_values == 1
    np.testing.assert_array_equal(pending.vectors[0]["fc"], fake.script[0][1][0]["fc"])


def test_an_oracle_that_answers_the_wrong_count_is_refused(fake):
    class Short(DenseOracle):
        def curvature_products(self, vectors):
            return []

    with curvd.Client(fake.url) as c:
        with pytest.raises(ValueError, match="1 vectors, the oracle answered 0"):
            c.step("s", 1, GRADS, oracle=Short())
    assert fake.answers == []


def test_an_oracle_missing_a_kind_says_which():
    f = FakeDaemon([("loss", random_vectors(BLOCKS, 1))], FINAL)
    try:
        with curvd.Client(f.url) as c:
            with pytest.raises(NotImplementedError, match="cannot evaluate losses"):
                c.step("s", 1, GRADS, oracle=curvd.CurvatureOracle())
    finally:
        f.close()


def test_wrong_callback_is_a_typed_conflict(fake):
    with curvd.Client(fake.url) as c:
        cb = c.post_step("s", 1, GRADS, datatype="FP64")
        cb.url = cb.url.replace("/100", "/999")
        with pytest.raises(curvd.CallbackOutOfOrder) as e:
            c.answer_callback(cb, [unflat(np.zeros(DIM))])
    assert e.value.reason == "CALLBACK_OUT_OF_ORDER" and "waits for 100" in str(e.value)
