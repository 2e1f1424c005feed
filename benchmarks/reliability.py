"""Helpers the reliability benchmarks share: the results file section writer and a loopback server.

``crash.py`` (SIGKILL'd writers), ``loadtest.py`` (concurrent load), ``fuzz.py`` / ``fuzz_api.py``
(malformed input) each write one section of benchmarks/results/reliability.json through ``update_results``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS  # noqa: E402


def update_results(section: str, payload: dict, st: dict) -> Path:
    """Merge one section (with its own provenance stamp) into benchmarks/results/reliability.json."""
    path = RESULTS / "reliability.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    old[section] = {**payload, "stamp": st}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old, indent=2) + "\n")
    return path


def hce_serve_argv() -> list[str]:
    """The ``hce-serve`` entry point of this interpreter's environment."""
    exe = Path(sys.executable).with_name("hce-serve")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hce_serve.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, extra: list[str] = (), timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``hce-serve http`` on a free loopback port; returns once /healthz answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([*hce_serve_argv(), "-q", "http", "--index", str(folder), "--host", "127.0.0.1",
                             "--port", str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
        try:
            if httpx.get(base + "/healthz", timeout=1.0).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not answer /healthz in time")


