"""The harness every study shares: provenance and the one result writer, the command-line scaffold,
timing, memory and synthetic vectors (the HTTP side, server and load client, is ``loopback``).

A study is a module run as ``python -m benchmarks.NAME``. It keeps only what is its own and hands its
numbers to ``write_result``, which adds the stamp (machine, versions, commit, date) and the name of the
script that measured them, so every file in benchmarks/results/ can be traced to code that reproduces it.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata as _md
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hce_serve import cpu
from hce_serve.formats import atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
SHARED_DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "bench"  # exports and embeddings the studies reuse across runs (git-ignored)
STAMP_KEYS = ("machine", "device", "versions", "commit", "date")
PACKAGES = ("hce", "numpy", "torch", "transformers", "onnxruntime", "onnxruntime-gpu", "hnswlib", "tokenizers",
            "faiss-cpu", "optimum-onnx", "bm25s", "fastapi", "uvicorn")


# ---- provenance and the result writer -----------------------------------------------------------------
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _installed(name: str) -> str | None:
    try:
        return _md.version(name)
    except _md.PackageNotFoundError:
        return None


def stamp(device: str = "cpu") -> dict[str, Any]:
    """Machine, versions, commit and date: stored beside every number a benchmark writes."""
    gpu = None
    if device != "cpu":
        try:
            import torch

            gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except ImportError:
            pass
    return {
        "machine": {"cpu": cpu.model(), "isa": cpu.timing_isas(), "cores": os.cpu_count(), "gpu": gpu,
                    "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_1m": round(os.getloadavg()[0], 2)},
        "device": device,
        "versions": {n: v for n in PACKAGES if (v := _installed(n)) is not None},
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def result_path(out: str | os.PathLike[str]) -> Path:
    """``NAME`` -> benchmarks/results/NAME.json; a path ending in .json is used as it is."""
    p = Path(out)
    return p if p.suffix == ".json" else RESULTS / f"{out}.json"


def plot_path(result: Path, tag: str) -> Path:
    """The plot beside a results file: benchmarks/plots/<stem>-<tag>.png, or next to a file kept elsewhere."""
    folder = PLOTS if result.parent.resolve() == RESULTS.resolve() else result.parent
    return folder / f"{result.stem}-{tag}.png"


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


def save_figure(fig: Any, out: Path, dpi: int = 110) -> None:
    """Lay out, save (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (studies run on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- command line ---------------------------------------------------------------------------------------
def study_parser(doc: str, name: str, quick: bool = True) -> argparse.ArgumentParser:
    """A parser with the options every study has: ``--out`` (and ``--quick``); its description is the
    module docstring's first paragraph."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if quick:
        ap.add_argument("--quick", action="store_true", help="the small setting (smoke runs, minutes)")
    ap.add_argument("--out", default=None, help=f"results: a name under benchmarks/results or a .json path [{name}"
                    + (f"; {name}-quick with --quick]" if quick else "]"))
    ap.set_defaults(result_name=name)
    return ap


def parse(ap: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, resolve ``--out`` to a path, and set up logging (INFO to stderr) and offline model loading."""
    args = ap.parse_args(argv)
    quick = getattr(args, "quick", False)
    args.out = result_path(args.out or (f"{args.result_name}-quick" if quick else args.result_name))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return args


# ---- timing ---------------------------------------------------------------------------------------------
def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds, and the sample count."""
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4), "mean_ms": round(float(a.mean()), 4), "n": int(a.size)}


@dataclass
class Timing:
    """Per-call wall and calling-thread CPU seconds of one system, one list per repeat."""

    wall: list[list[float]] = field(default_factory=list)
    cpu: list[list[float]] = field(default_factory=list)

    @property
    def samples(self) -> list[float]:
        return [x for rep in self.wall for x in rep]

    def stats(self) -> dict[str, float]:
        """``median_stats`` of the wall times, plus the median calling-thread CPU time: with one compute
        thread it stays close to the idle-machine latency when other jobs compete for the cores."""
        cpu = round(float(np.median([np.median(c) for c in self.cpu])) * 1e3, 4)
        return {**median_stats(self.wall), "thread_cpu_p50_ms": cpu}


def median_stats(repeats: list[list[float]]) -> dict[str, float]:
    """The median over repeats of each statistic of that repeat's samples (seconds in, ms out)."""
    per = [percentiles(r) for r in repeats]
    out = {k: round(float(np.median([p[k] for p in per])), 4) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")}
    return {**out, "n": len(repeats[0]), "repeats": len(repeats)}


def timed(fns: dict[str, Callable[[int], object]], n: int, repeats: int = 1, warmup: int = 20,
          rounds: int = 10) -> dict[str, Timing]:
    """Time several systems interleaved: after ``warmup`` untimed calls each, every repeat runs ``rounds``
    rounds of n/rounds calls per system in turn. The CPU's speed drifts by 20-30 % over minutes on these
    machines; one system after the other would turn that drift into a difference between them.
    ``fn(i)`` gets the call's index (to pick an input)."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    per = max(1, n // rounds)
    out = {name: Timing() for name in fns}
    for _ in range(repeats):
        for t in out.values():
            t.wall.append([])
            t.cpu.append([])
        for rnd in range(rounds):
            for name, fn in fns.items():
                wall, cpu = out[name].wall[-1], out[name].cpu[-1]
                for j in range(per):
                    c0, t0 = time.thread_time(), time.perf_counter()
                    fn(rnd * per + j)
                    wall.append(time.perf_counter() - t0)
                    cpu.append(time.thread_time() - c0)
    return out


def rate(fn: Callable[[], object], items: int, repeats: int, warmup: int = 1) -> float:
    """Median items per second of ``fn`` (which handles ``items`` items a call) over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(items / (time.perf_counter() - t0))
    return round(float(np.median(rates)), 1)


def tool_argv(name: str = "hce-serve") -> list[str]:
    """A command-line tool (``hce-serve``, ``hce-train``, ``hce-export``) of this interpreter's environment."""
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", name.replace("-", "_") + ".cli"]


# ---- memory ---------------------------------------------------------------------------------------------
def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident memory (``VmHWM``: its peak) in MiB, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> float:
    """Reset the peak counter (VmHWM) where the kernel allows it; return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return rss_mib()


def peak_growth_mib(start_mib: float) -> float:
    return round(rss_mib("VmHWM") - start_mib, 1)


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy, steal) CPU seconds of the whole machine since boot (/proc/stat) and this process's own CPU seconds,
    or None off Linux: what ``others_cpu`` subtracts from."""
    try:
        f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / tick, f[7] / tick, sum(os.times()[:2])  # user nice system irq softirq


def others_cpu(before: tuple[float, float, float] | None) -> dict[str, float]:
    """CPU seconds that anything but this process ran since ``before = cpu_snapshot()`` (a daemon, the kernel's
    reclaim, another job), and the hypervisor's steal: a timing's witness of an idle box."""
    after = cpu_snapshot()
    if before is None or after is None:
        return {}
    others = (after[0] - before[0]) - (after[2] - before[2])
    return {"others_cpu_s": round(max(0.0, others), 2), "steal_s": round(after[1] - before[1], 2)}


# ---- synthetic vectors ----------------------------------------------------------------------------------
def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.35, noise_seed: int | None = None) -> np.ndarray:
    """(n, dim) float32 unit vectors around ``clusters`` random unit centres drawn from ``seed`` (a mixture is
    harder for HNSW than uniform noise, and closer to real embeddings). ``noise_seed`` draws fresh points
    around the same centres: queries near, but not equal to, the documents."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (c, dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # chunked so 1M never needs a float64 temporary
        m = min(100_000, n - s)
        x = centres[rng.integers(0, clusters, m)] + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out
