"""The stamp stored beside every number a study writes (machine, versions, commit, date) and the one result
writer, which also records the script that measured the numbers."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.harness.paths import ROOT, result_path
from hce_serve import cpu
from hce_serve.formats import atomic

STAMP_KEYS = ("machine", "device", "versions", "commit", "date")
PACKAGES = ("hce", "numpy", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "hnswlib", "tokenizers",
            "faiss-cpu", "optimum-onnx", "bm25s", "fastapi", "uvicorn")


def git_commit() -> str:
    """The short HEAD commit, ``-dirty`` when tracked files differ from it, ``unknown`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _installed(name: str) -> str | None:
    try:
        return _md.version(name)
    except _md.PackageNotFoundError:
        return None


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine a number was measured on: CPU model, the instruction sets that decide a timing, cores, GPU
    (when ``device`` is not the CPU), platform, Python, and the load average at that moment."""
    gpu = None
    if device != "cpu":
        try:
            import torch

            gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except ImportError:
            pass
    return {"cpu": cpu.model(), "isa": cpu.timing_isas(), "cores": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def stamp(device: str = "cpu") -> dict[str, Any]:
    """Machine, versions, commit and date: stored beside every number a benchmark writes."""
    return {
        "machine": machine(device),
        "device": device,
        "versions": {n: v for n in PACKAGES if (v := _installed(n)) is not None},
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def script_name(script: str | os.PathLike[str]) -> str:
    """``script`` as a path relative to the repository; it must be a file in it."""
    p = Path(script)
    p = (p if p.is_absolute() else ROOT / p).resolve()
    if not p.is_file() or ROOT not in p.parents:
        raise ValueError(f"{script}: a result must name the script in this repository that wrote it")
    return p.relative_to(ROOT).as_posix()


def write_result(out: str | os.PathLike[str], payload: dict[str, Any], script: str | os.PathLike[str],
                 device: str = "cpu", section: str | None = None) -> Path:
    """Write ``payload`` with the stamp and ``script`` (the file that measured it) to ``result_path(out)``.

    The stamp describes this write: in a payload read back from an earlier file, its old stamp keys are
    replaced. ``section``: the file holds one stamped record per section (several harnesses share it) and
    only this section is replaced. The write is atomic: a run killed mid-write leaves the previous file.
    """
    path = result_path(out)
    record = {"script": script_name(script), **stamp(device)}
    record.update((k, v) for k, v in payload.items() if k not in record)
    if section is not None:
        old = json.loads(path.read_text()) if path.is_file() else {}
        if "script" in old:
            raise ValueError(f"{path} holds one record, not sections")
        record = {**old, section: record}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(record, indent=2) + "\n")
    return path
