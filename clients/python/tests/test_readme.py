# SPDX-License-Identifier: MIT
"""The Python examples of clients/python/README.md, run against a real
daemon so that the README stays true."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def examples():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.S | re.M)


def test_the_readme_has_examples():
    assert len(examples()) == 2


@pytest.mark.parametrize("index", range(len(examples())))
def test_readme_example(daemon, layers_refused, index, capsys):
    code = examples()[index]
    if '"kfac"' in code and layers_refused:
        pytest.skip(f"the daemon refuses every layers entry: {layers_refused}")
    exec(compile(code, f"README.md example {index + 1}", "exec"), {"CURVD_URL": daemon.url})
    out = capsys.readouterr().out
    assert ("session" in out) if index == 0 else ("SHAPE_MISMATCH /gradients/0/shape" in out)
