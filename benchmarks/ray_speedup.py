"""Ray Data corpus encoding against one process (issue 13): the same ``index build`` of the same corpus,
timed interleaved on this machine.

    python -m benchmarks.ray_speedup                 # SciFact's 5,183 documents, 3 rounds
    python -m benchmarks.ray_speedup --quick         # 600 documents, 1 round

Systems, each a whole ``Engine.build`` (read, encode, hnswlib, stored documents) into a fresh folder:

- ``one_process``: the default build, one onnxruntime session using every core (intra-op threads);
- ``one_process_1t``: one session on one thread, the unit a Ray worker is made of;
- ``ray``: ``--ray`` with ``--workers`` actors of one onnxruntime thread each, on a local Ray started once
  before the timing (its start-up is reported apart: a cluster pays it once, not per build).

The speed-up that matters to a user is ``ray`` over ``one_process``. The ids and vectors of the Ray build
are compared with the one-process build (max abs difference), so a speed-up is never bought with other
vectors. The export is the base MiniLM's int8 graph unless ``--export`` names one.
"""

from __future__ import annotations

import gzip
import itertools
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import encoders
from benchmarks.harness import cli, paths, provenance
from hce_serve import defaults
from hce_serve.engine import Engine

TARGET = 1.6  # ray with 2 workers over one process


def subset(corpus: Path, n: int | None, out: Path) -> int:
    """The first ``n`` lines of ``corpus`` (all when None) in ``out``; returns how many."""
    opener = gzip.open if corpus.suffix == ".gz" else open
    with opener(corpus, "rt", encoding="utf-8") as src, out.open("w", encoding="utf-8") as dst:
        lines = list(itertools.islice(src, n))
        dst.writelines(lines)
    return len(lines)


def start_ray(cpus: int) -> tuple[Any, float, bool]:
    """A local Ray with ``cpus`` CPUs (or the one this process already runs); (ray, seconds, started here)."""
    import ray

    if ray.is_initialized():
        return ray, 0.0, False
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return ray, time.perf_counter() - t0, True


def vectors(idx: Path) -> tuple[list[str], np.ndarray]:
    with Engine.open(idx) as eng:
        ids = eng.ids()
        return ids, eng.store.index.get_vectors(ids)


def measure(export: Path, corpus: Path, docs: int, rounds: int, workers: int, batch_size: int) -> dict[str, Any]:
    from hce_serve.folder.ray_encode import RayOptions

    systems = {
        "one_process": {},
        "one_process_1t": {"threads": 1},
        "ray": {"ray": RayOptions(workers=workers, threads=1)},
    }
    ray, startup_s, started = start_ray(workers)
    seconds: dict[str, list[float]] = {name: [] for name in systems}
    try:
        with tempfile.TemporaryDirectory(prefix="hce-ray-speedup-") as tmp:
            Engine.build(export, corpus, Path(tmp, "warm"), batch_size=batch_size, **systems["ray"])  # actors, caches
            for r in range(rounds):
                order = list(systems)[r % len(systems):] + list(systems)[: r % len(systems)]  # rotate who goes first
                for name in order:
                    folder = Path(tmp, f"{name}-{r}")
                    t0 = time.perf_counter()
                    Engine.build(export, corpus, folder, batch_size=batch_size, **systems[name])
                    seconds[name].append(time.perf_counter() - t0)
            ids_one, vec_one = vectors(Path(tmp, "one_process-0"))
            ids_ray, vec_ray = vectors(Path(tmp, "ray-0"))
    finally:
        if started:
            ray.shutdown()
    med = {name: float(np.median(s)) for name, s in seconds.items()}
    speedup = med["one_process"] / med["ray"]
    return {
        "seconds": {name: [round(x, 2) for x in s] for name, s in seconds.items()},
        "docs_per_s": {name: round(docs / m, 1) for name, m in med.items()},
        "speedup": {"ray_over_one_process": round(speedup, 3),
                    "ray_over_one_process_1t": round(med["one_process_1t"] / med["ray"], 3),
                    "one_process_over_1t": round(med["one_process_1t"] / med["one_process"], 3)},
        "ray_startup_s": round(startup_s, 2),
        "same_ids": ids_ray == ids_one,
        "max_abs_diff": float(np.abs(vec_ray - vec_one).max()) if ids_ray == ids_one else None,
        "target": {"ray_over_one_process": TARGET, "met": speedup >= TARGET},
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "ray-speedup")
    ap.add_argument("--export", type=Path, default=None, help="EXPORT_DIR [the base MiniLM, exported and cached]")
    ap.add_argument("--corpus", type=Path, default=paths.ROOT / "demo" / "data" / "scifact" / "corpus.jsonl.gz")
    ap.add_argument("--docs", type=int, default=None, help="first N documents [600 with --quick, else all]")
    ap.add_argument("--rounds", type=int, default=None, help="timed builds per system [1 with --quick, else 3]")
    ap.add_argument("--workers", type=int, default=2, help="Ray encoder actors, one onnxruntime thread each")
    ap.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                    help="documents per chunk (one Ray block each)")
    args = cli.parse(ap, argv)
    export = args.export or encoders.ensure_export("minilm", encoders.base_model_path())
    with tempfile.TemporaryDirectory(prefix="hce-ray-corpus-") as tmp:
        corpus = Path(tmp, "corpus.jsonl")
        docs = subset(args.corpus, args.docs or (600 if args.quick else None), corpus)
        result = measure(export, corpus, docs, args.rounds or (1 if args.quick else 3), args.workers, args.batch_size)
    payload = {"benchmark": "ray-speedup", "mode": "quick" if args.quick else "full", "export": str(export),
               "corpus": str(args.corpus), "docs": docs, "workers": args.workers, "batch_size": args.batch_size,
               **result}
    print(provenance.write_result(args.out, payload, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
