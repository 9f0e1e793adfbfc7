# SPDX-License-Identifier: MIT
"""What an operator relies on, through the daemon's binary: --help shows
every flag with its default, and SIGHUP reads the token file again."""

import re
import signal
import subprocess

import pytest

import curvd
from conftest import curvd_binary


def test_help_shows_every_default():
    out = subprocess.run([curvd_binary(), "--help"], capture_output=True, text=True, check=True)
    flags = [ln for ln in out.stdout.splitlines() if re.match(r"  --[a-z-]+ +CURVD_", ln)]
    assert len(flags) >= 14
    assert all("(default: " in ln for ln in flags), [ln for ln in flags if "default" not in ln]
    defaults = dict(re.match(r"  --([a-z-]+) .*\(default: ([^)]*)\)$", ln).groups()
                    for ln in flags)
    assert defaults["history"] == "1000" and defaults["db"] == "./var/curvd.db"
    assert defaults["port"] == "8080" and defaults["token-file"] == "none"
    assert defaults["workers"] == "one per CPU" and defaults["durability"] == "full"


def test_sighup_reloads_the_token_file(own_daemon, tmp_path):
    """The daemon reads its token file again on SIGHUP (server/main.c);
    a bad file leaves the tokens as they were."""
    tokens = tmp_path / "tokens"
    tokens.write_text("token-of-alice-0123456789 alice\n")
    d = own_daemon("--token-file", str(tokens))
    with curvd.Client(d.url, token="token-of-carol-5555555555", retries=0) as carol:
        with pytest.raises(curvd.Unauthorized):
            list(carol.list_sessions())
        tokens.write_text("token-of-alice-0123456789 alice\ntoken-of-carol-5555555555 carol\n")
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for_log("SIGHUP: 2 tokens from")
        assert list(carol.list_sessions()) == []
        tokens.write_text("short carol\n")
        d.proc.send_signal(signal.SIGHUP)
        assert d.wait_for_log("the tokens in use stay")
        assert list(carol.list_sessions()) == []


def test_sighup_without_a_token_file(own_daemon):
    d = own_daemon()
    d.proc.send_signal(signal.SIGHUP)
    assert d.wait_for_log("no --token-file, nothing to reload")
    with curvd.Client(d.url) as c:
        assert c.ready()
