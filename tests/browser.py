"""A real ``hce-serve http`` process and a headless Chromium driven by selenium, for tests/test_browser.py and
scripts/page_screenshot.py.

Chromium is Debian's ``chromium`` with its ``chromium-driver`` (scripts/setup-env.sh installs both), started
with a fresh profile and nothing that reaches the network by itself (no sync, no component updates, no
background requests), so a run is the same offline as online.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--lang=en-US")
START_TIMEOUT = 120.0  # seconds for the server to answer /healthz (it loads the query encoder first)


def browser_missing() -> str | None:
    """Why Chromium cannot be driven here, or None."""
    gone = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    return f"{' and '.join(gone)} missing (Debian packages chromium, chromium-driver)" if gone else None


def chromium_driver(profile: Path, size: tuple[int, int] = (1280, 900)) -> Any:
    """A headless Chromium (a fresh ``--user-data-dir`` at ``profile``) that keeps its network and console logs."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))


def requests_sent(driver: Any, origin: str) -> list[dict[str, Any]]:
    """The requests pages of ``origin`` sent (to any address) since the last call: method, url, headers,
    postData, from the performance log. The browser's own (its new-tab page) are left out."""
    out = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") != "Network.requestWillBeSent":
            continue
        params = msg["params"]
        if params.get("documentURL", "").startswith(origin + "/"):
            out.append(params["request"])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hce-serve http ARGS`` on 127.0.0.1 at a free port, its output in ``log``; a context manager."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.env = [str(a) for a in args], log, env
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> Server:
        script = Path(sys.executable).with_name("hce-serve")  # the console script a user runs, when installed
        cmd = [str(script)] if script.exists() else [sys.executable, "-c",
                                                     "import sys; from hce_serve.cli import main; "
                                                                           "sys.exit(main())"]
        for _ in range(3):  # another process may take the port between free_port() and the bind
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen([*cmd, "http", *self.args, "--host", "127.0.0.1", "--port", str(port)],
                                             stdout=out, stderr=subprocess.STDOUT,
                                             env={**os.environ, **(self.env or {})})
            if self._wait_ready():
                return self
            if "address already in use" not in self.log.read_text(errors="replace").lower():
                break
        raise RuntimeError(f"hce-serve http did not start:\n{self.log.read_text(errors='replace')[-3000:]}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        self.proc.kill()
        return False

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the writer saves and unlocks
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
