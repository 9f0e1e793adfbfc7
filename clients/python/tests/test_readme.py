# SPDX-License-Identifier: MIT
"""The Python examples of clients/python/README.md, run against a real
daemon so that the README stays true."""

import math
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def examples():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)


def loss_below(limit):
    def check(out):
        m = re.search(r"loss (\S+)", out)
        assert m and float(m.group(1)) < limit, out
    return check


def chance():
    return math.log(3)


def adoption(out):
    m = re.match(r"loss (\S+), session [0-9a-f]{32}, report \{'optimizer': 'kfac'", out)
    assert m and float(m.group(1)) < 0.5 * chance(), out  # half the chance level


def conventions(out):
    assert out.startswith("lr 0.05, session lr 0.05\nhf with a closure: loss "), out
    loss_below(0.5 * chance())(out.splitlines()[1])


def checkpoint(out):
    assert out == "continues at step 4, lambda_init 1.0\n", out


def poisson(out):
    m = re.match(r"poisson loss (\S+) -> (\S+)\n", out)
    assert m and float(m.group(2)) < 0.8 * float(m.group(1)), out


def history(out):  # the three steps with the losses sent
    keys = "['decode', 'encode', 'save', 'step']"
    assert out.splitlines() == [f"{t} {1.0 / t} 0 {keys}" for t in (1, 2, 3)], out


# What each example must print, in the README's order.
CHECKS = [adoption, conventions, checkpoint, poisson, loss_below(0.5 * math.log(3)),
          lambda out: "SHAPE_MISMATCH /gradients/0/shape" in out or pytest.fail(out), history]


def test_every_example_is_checked():
    assert len(examples()) == len(CHECKS)


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example(daemon, layers_refused, index, capsys):
    code = examples()[index]
    if '"kfac"' in code and layers_refused:
        pytest.skip(f"the daemon refuses every layers entry: {layers_refused}")
    exec(compile(code, f"README.md example {index + 1}", "exec"), {"CURVD_URL": daemon.url})
    CHECKS[index](capsys.readouterr().out)
