"""What every benchmark script shares: the provenance stamp, result files, timing statistics."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
SHARED_DATA = ROOT.parent / "shared" / "data"
PACKAGES = ("hce", "numpy", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "hnswlib", "tokenizers",
            "faiss-cpu", "optimum-onnx", "bm25s", "fastapi", "uvicorn")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def stamp(device: str = "cpu") -> dict:
    """Machine, versions, commit and date: stored beside every number a benchmark writes."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = _md.version(name)
        except _md.PackageNotFoundError:
            pass
    gpu = None
    if device != "cpu":
        try:
            import torch

            gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except ImportError:
            gpu = None
    return {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu, "platform": platform.platform(),
                    "python": platform.python_version()},
        "device": device,
        "versions": versions,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def write_result(name: str, payload: dict, device: str = "cpu") -> Path:
    """Write benchmarks/results/<name>.json with the stamp merged in."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**stamp(device), **payload}, indent=2, sort_keys=False) + "\n")
    return path


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4), "mean_ms": round(float(a.mean()), 4), "n": int(a.size)}


def save_figure(fig: object, out: Path, dpi: int = 110) -> None:
    """Lay out, save (creating the plots folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def time_calls(fn: Callable[[int], object], n: int, warmup: int = 20) -> list[float]:
    """Call fn(i) n times after ``warmup`` untimed calls; return per-call seconds."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out
