#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""The dashboard (/ui) in a real browser against a live curvd.

Usage: /usr/bin/python3 tests/ui/dashboard_check.py build/curvd build/ui-dashboard.png

Starts the daemon with a token file on a fresh database, opens /ui in
Debian's headless Chromium (driven by python3-selenium and chromium-driver),
and checks what a person would see: the page asks for a token (the daemon
answers 401 without one), takes it, lists a session once a trainer posts
steps to it, draws its loss curve and adds points as more steps arrive,
switches the charts to a log scale, shows the session's config, and logs no
error in the browser's console. A screenshot goes to the second argument.

Exit 0 when it passed, 1 on a failure, 77 (skipped, with the reason printed)
when no browser or driver is installed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.request

TOKEN = "dashboard-check-token-0001"
WAIT_S = 30  # a deadline against a hang, not a timing assertion


def skip(why):
    print(f"dashboard-check: SKIPPED: {why}")
    sys.exit(77)


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    skip("python3-selenium is not installed (scripts/install-deps installs it)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not CHROMIUM or not DRIVER:
    skip("no chromium and chromium-driver (scripts/install-deps installs them)")


class Daemon:
    """curvd with a token file on a free port; stderr drained by a thread."""

    def __init__(self, binary, workdir):
        tokens = os.path.join(workdir, "tokens")
        with open(tokens, "w") as f:
            f.write(f"{TOKEN} alice\n")
        self.proc = subprocess.Popen(
            [binary, "--port", "0", "--db", os.path.join(workdir, "curvd.db"),
             "--durability", "normal", "--token-file", tokens],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.port = None
        for raw in self.proc.stderr:
            m = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", raw)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise RuntimeError("the daemon did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.port}"

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(req, timeout=WAIT_S) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=WAIT_S)


class Trainer:
    """A tiny K-FAC session (simple mode: no callbacks) on one vector; each
    step posts a loss that falls like 1/t."""

    def __init__(self, d):
        self.d = d
        s = d.call("POST", "/v1/sessions", {
            "optimizer": "kfac", "name": "dashboard check",
            "config": {"mode": "simple", "weight_decay": 0},
            "layout": [{"name": "w", "kind": "vector", "shape": [2]}]})
        self.id = s["id"]
        self.step = 0

    def steps(self, n):
        for _ in range(n):
            self.step += 1
            self.d.call("POST", f"/v1/sessions/{self.id}/steps", {
                "step": self.step, "loss": 1.0 / self.step,
                "gradients": [{"name": "w", "shape": [2], "datatype": "FP64",
                               "data": [0.5, -0.25]}]})


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1400"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(DRIVER), options=opts)
    except Exception as e:  # a driver that cannot start its browser
        skip(f"chromium does not start here: {str(e).splitlines()[0]}")


def check(ok, what):
    if not ok:
        raise AssertionError(what)
    print(f"dashboard-check: ok: {what}")


def points(drv, chart):
    cards = drv.find_elements(By.ID, f"chart-{chart}")
    return int(cards[0].get_attribute("data-points") or 0) if cards else 0


def run(drv, d, shot):
    wait = WebDriverWait(drv, WAIT_S)
    drv.get(d.base + "/ui")
    # No token yet: the daemon answers 401 and the page asks for one.
    wait.until(lambda b: "needs a token" in b.find_element(By.ID, "status").text)
    check(True, "without a token the page asks for one")
    before = drv.get_log("browser")
    check(all("401" in e["message"] for e in before if e["level"] == "SEVERE"),
          f"the only console errors before the token are the 401s ({len(before)} entries)")

    tr = Trainer(d)
    tr.steps(5)
    drv.find_element(By.ID, "token").send_keys(TOKEN)
    drv.find_element(By.CSS_SELECTOR, "#token-form button").click()
    row = f'#sessions tr[data-id="{tr.id}"]'
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, row))
    check(True, "with the token the session appears in the list")
    cells = [c.text for c in drv.find_elements(By.CSS_SELECTOR, row + " td")]
    check(cells[2] == "kfac" and cells[3] == "5" and cells[4] == "0.2",
          f"its row shows optimizer, step and latest loss: {cells}")

    drv.find_element(By.CSS_SELECTOR, row).click()
    wait.until(lambda b: points(b, "loss") == 5)
    check(True, "the loss chart has the 5 steps posted")
    polyline = drv.find_element(By.CSS_SELECTOR, "#chart-loss polyline")
    check(len(polyline.get_attribute("points").split()) == 5, "as a 5-point line")
    check('"mode": "simple"' in drv.find_element(By.ID, "config").text,
          "the session's config is shown")

    tr.steps(7)
    wait.until(lambda b: points(b, "loss") == 12)
    check(True, "the chart gains the 7 points posted after it was drawn")
    check(points(drv, "timing") == 4 * 12, "the time split has its 4 phases for each step")

    drv.find_element(By.ID, "log-scale").click()
    wait.until(lambda b: b.find_element(By.ID, "chart-loss").get_attribute("data-scale") == "log")
    check(points(drv, "loss") == 12, "the log scale keeps every (positive) loss")

    drv.save_screenshot(shot)
    errors = [e for e in drv.get_log("browser") if e["level"] == "SEVERE"]
    check(not errors, f"no console errors after the token: {errors}")
    print(f"dashboard-check: screenshot in {shot}")


def main(argv):
    if len(argv) != 3:
        sys.exit(__doc__)
    work = tempfile.mkdtemp(prefix="curvd-ui-")
    d = drv = None
    try:
        d = Daemon(os.path.abspath(argv[1]), work)
        drv = browser()
        run(drv, d, os.path.abspath(argv[2]))
    except AssertionError as e:
        print(f"dashboard-check: FAILED: {e}")
        return 1
    finally:
        if drv:
            drv.quit()
        if d:
            d.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("dashboard-check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
