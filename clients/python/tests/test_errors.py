# SPDX-License-Identifier: MIT
"""Every reason of the daemon's problem table (server/http/errors.h) becomes an
exception of the class its status calls for, and the special ones their own."""

import json
import os
import re

import pytest

from curvd import errors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TABLE = os.path.join(ROOT, "server", "http", "errors.h")


def rows():
    with open(TABLE, encoding="utf-8") as f:
        table = f.read()
    return [(m.group(3), int(m.group(2))) for m in re.finditer(r"X\((\w+), (\d+), (\w+),", table)]


def test_the_table_has_rows():
    assert len(rows()) > 30


@pytest.mark.parametrize("reason,status", rows())
def test_every_reason_maps(reason, status):
    assert reason in errors._BY_REASON
    body = json.dumps({"status": status, "reason": reason, "title": "t"}).encode()
    exc = errors.problem_from_reply(status, body)
    assert exc.reason == reason and exc.status == status
    by_status = errors._BY_STATUS.get(status)
    if by_status is not None:
        assert isinstance(exc, by_status)
    elif status >= 500:
        assert isinstance(exc, errors.ServerError)
