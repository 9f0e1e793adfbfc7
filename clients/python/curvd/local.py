# SPDX-License-Identifier: MIT
"""A curvd of one's own: start the daemon binary on a free loopback port.

    with LocalDaemon("build/curvd", "/tmp/run") as d:
        client = curvd.Client(d.url)

The test suites and the experiments (clients/python/experiments) use it;
it is also handy in a notebook. The database lives in @folder.
"""

import os
import re
import subprocess
import threading
import time
from typing import Dict, Optional, Sequence

LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class LocalDaemon:
    """One curvd process; restart() keeps the port and the database.

    binary: the curvd executable. folder: where curvd.db goes. extra:
    further flags (e.g. ("--durability", "normal")). env: extra
    environment variables (e.g. {"OPENBLAS_NUM_THREADS": "1"}).
    threads, workers: the daemon's --threads and --workers. db: the
    database (--db) when not folder/curvd.db, e.g. one file that several
    daemons share (tests/cluster/).
    """

    def __init__(self, binary: str, folder: str, extra: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None, threads: int = 2, workers: int = 1,
                 db: Optional[str] = None):
        self.binary = binary
        self.db = db or os.path.join(folder, "curvd.db")
        self.extra = list(extra)
        self.env = dict(os.environ, **(env or {}))
        self.threads = threads
        self.workers = workers
        self.port = 0
        self.proc = None
        self.log = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalDaemon":
        args = [self.binary, "--port", str(self.port), "--db", self.db,
                "--threads", str(self.threads), "--workers", str(self.workers), *self.extra]
        deadline = time.monotonic() + 10
        while True:  # a restart may find the port not yet free
            self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=self.env)
            line = self.proc.stderr.readline()
            self.log.append(line)
            m = LISTENING.search(line)
            if m:
                break
            self.proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"curvd did not start: {''.join(self.log)}")
            time.sleep(0.05)
        self.port = int(m.group(1))
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        return self

    def _drain(self, proc) -> None:
        for line in proc.stderr:
            self.log.append(line)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> bool:
        """Wait until a line of the daemon's stderr contains @text (its
        access log is written after the reply, and read by a thread)."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.log):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # a kept-alive client connection holds it
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """A crash and a start: SIGKILL loses nothing acknowledged (the
        graceful stop would wait for the client's idle keep-alive
        connection to time out)."""
        self.proc.kill()
        self.proc.wait()
        self.start()

    def __enter__(self) -> "LocalDaemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
