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


def test_the_readme_has_examples():
    assert len(examples()) == 3


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example(daemon, layers_refused, index, capsys):
    code = examples()[index]
    if '"kfac"' in code and layers_refused:
        pytest.skip(f"the daemon refuses every layers entry: {layers_refused}")
    exec(compile(code, f"README.md example {index + 1}", "exec"), {"CURVD_URL": daemon.url})
    out = capsys.readouterr().out
    if index == 0:  # the adoption example: the adopted loop trains the model
        m = re.match(r"loss (\S+), session [0-9a-f]{32}, report \{'optimizer': 'kfac'", out)
        assert m and float(m.group(1)) < 0.5 * math.log(3), out  # half the chance level
    elif index == 1:
        assert "SHAPE_MISMATCH /gradients/0/shape" in out
    else:  # the history: the three steps with the losses sent
        keys = "['decode', 'encode', 'save', 'step']"
        assert out.splitlines() == [f"{t} {1.0 / t} 0 {keys}" for t in (1, 2, 3)], out
