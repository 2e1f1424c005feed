"""Where the studies read and write: the repository, its results and plots, the shared data sets, and the
cache of exports and embeddings that studies reuse across runs."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
PLOTS = ROOT / "benchmarks" / "plots"
SHARED_DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / "runs" / "bench"  # git-ignored


def result_path(out: str | os.PathLike[str]) -> Path:
    """``NAME`` -> benchmarks/results/NAME.json; a path ending in .json is used as it is."""
    p = Path(out)
    return p if p.suffix == ".json" else RESULTS / f"{out}.json"


def plot_path(result: Path, tag: str) -> Path:
    """The plot beside a results file: benchmarks/plots/<stem>-<tag>.png, or next to a file kept elsewhere."""
    folder = PLOTS if result.parent.resolve() == RESULTS.resolve() else result.parent
    return folder / f"{result.stem}-{tag}.png"
