"""Retrieval quality on BEIR folders: BM25, the base encoder zero-shot and any fine-tuned models, each
through ONNX fp32 and int8, with exact search and with the folder's index kinds (the serving path: hnswlib
at ef 100/200, ivf-sq8 at nprobe 8/32), in one run.

    python -m benchmarks.recall --quick                       # BM25 + zero-shot MiniLM int8, 3 datasets
    python -m benchmarks.recall --model hce=runs/hce-model --model flat=runs/flat-model

``--model NAME=DIR``: DIR is a MODEL_DIR (exported here, cached under runs/bench/exports/NAME) or an
EXPORT_DIR. Embeddings are cached under runs/bench/emb keyed by the graph file, so reruns only pay for
what changed. Writes benchmarks/results/recall.json and one bar chart per dataset.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bm25 import bm25_run
from benchmarks.encoders import BeirRun, K, base_model_path, beir_exact, ensure_export, is_cached, quiet_session_options
from benchmarks.harness.cli import parse, study_parser
from benchmarks.harness.figures import pyplot, save_figure
from benchmarks.harness.paths import SHARED_DATA, plot_path
from benchmarks.harness.provenance import write_result
from hce_serve.formats.beir import BeirData, load_beir
from hce_serve.formats.card import ModelCard
from hce_serve.index.exact import recall_at_k
from hce_serve.index.index import Index
from hce_serve.metrics import evaluate
from hce_serve.options import IndexParams

log = logging.getLogger(__name__)

DATASETS = ("scifact", "arguana", "cisi")
# ArguAna's queries are whole arguments: a 64-token query cut loses .06 nDCG@10 (DESIGN.md §8).
QUERY_MAX_LENGTH = {"arguana": 256}
HNSW_EF = (100, 200)
IVF_NPROBE = (8, 32)  # a narrow scan and the ivf-sq8 kind's default nprobe (defaults.NPROBE; cells: ~sqrt(documents))


def ann_runs(exact: BeirRun, doc_ids: list[str], qids: list[str], efs: Sequence[int] = HNSW_EF,
             nprobes: Sequence[int] = IVF_NPROBE) -> dict[str, tuple[dict, dict]]:
    """{search name: (run, extra)} for the folder's index kinds over the exact run's vectors — hnswlib at each
    ef, ivf-sq8 at each nprobe — with recall@10 against the exact top 10."""
    row_of = {d: i for i, d in enumerate(doc_ids)}
    out = {}
    for kind, breadths in (("hnsw", efs), ("ivf-sq8", nprobes)):
        index = Index(exact.d.shape[1], IndexParams(exact_threshold=0, kind=kind), capacity=len(doc_ids))
        index.add(doc_ids, exact.d)
        for b in breadths:
            hits = index.search(exact.q, K, ef=b, exact=False)
            approx = np.array([[row_of[d] for d, _ in h[:10]] for h in hits])  # (q, 10)
            run = {q: dict(h) for q, h in zip(qids, hits, strict=True)}
            name = f"hnsw-ef{b}" if kind == "hnsw" else f"ivf-sq8-nprobe{b}"
            out[name] = (run, {"recall@10_vs_exact": round(recall_at_k(approx, exact.rows[:, :10]), 4)})
    return out


def eval_dataset(name: str, data: BeirData, exports: dict[str, Path], variants: Sequence[str], threads: int,
                 bm25: bool = True, cache: bool = True, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (system, variant, search) on one dataset. ``skipped``: evaluate only what is cached
    (the rest is listed there)."""
    from hce_serve.encoder import Encoder

    rows: list[dict[str, Any]] = []
    if bm25:
        t = time.perf_counter()
        run, cfg = bm25_run(data.corpus, data.queries, K)
        rows.append({"system": "bm25", "variant": None, "search": "bm25s", **evaluate(data.qrels, run),
                     "seconds": round(time.perf_counter() - t, 2), "config": cfg})
    doc_ids = [d.id for d in data.corpus]
    qids = list(data.queries)
    for model, export_dir in exports.items():
        for variant in variants:
            if variant not in ModelCard.load(export_dir).onnx.get("files", {}):
                log.warning("%s has no %s graph; skipped", export_dir, variant)
                continue
            enc = Encoder(export_dir, variant=variant, threads=threads, session_options=quiet_session_options(),
                          query_max_length=QUERY_MAX_LENGTH.get(name))
            key = f"{model}-{name}" if cache else None
            if skipped is not None and not (key and is_cached(enc, key)):
                skipped.append(f"{name}/{model}/{variant}: embeddings not cached (--skip-uncached)")
                log.warning("skipped %s", skipped[-1])
                continue
            exact = beir_exact(enc, data, cache_key=key)
            common_cols = {"query_max_length": enc.query_max_length, "doc_max_length": enc.card.max_length,
                           "encode_seconds": round(exact.encode_seconds, 1) if exact.encode_seconds else "cached"}
            rows.append({"system": model, "variant": variant, "search": "exact", **exact.metrics, **common_cols})
            for search, (run, extra) in ann_runs(exact, doc_ids, qids).items():
                rows.append({"system": model, "variant": variant, "search": search, **evaluate(data.qrels, run),
                             **extra, **common_cols})
            log.info("%s %s %s: %s", name, model, variant, {r["search"]: r["ndcg@10"] for r in rows[-5:]})
    return rows


def plot(dataset: str, rows: list[dict[str, Any]], out: Path) -> None:
    plt = pyplot()
    labels = [r["system"] + (f"\n{r['variant']} {r['search']}" if r["variant"] else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    for i, metric in enumerate(("ndcg@10", "recall@10", "mrr@10")):
        ax.bar(np.arange(len(rows)) + (i - 1) * 0.27, [r[metric] for r in rows], 0.27, label=metric)
    ax.set_xticks(np.arange(len(rows)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(f"{dataset}: retrieval quality (this 2-core CPU)")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = study_parser(__doc__, "recall")
    ap.add_argument("--data", action="append", help="BEIR folder or name under ../shared/data (repeat)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                    help="fine-tuned MODEL_DIR or EXPORT_DIR")
    ap.add_argument("--base", default=None, help="base encoder folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--variants", default=None,
                    help="ONNX graphs to evaluate (default: int8 in --quick, int8,fp32 in full)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-uncached", action="store_true",
                    help="only evaluate encoders whose embeddings an earlier run cached (listed as skipped)")
    args = parse(ap, argv)
    exports = {"minilm-zero-shot": ensure_export("minilm", args.base or base_model_path())}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        if not folder:
            ap.error(f"--model expects NAME=DIR, found {spec!r}")
        exports[name] = ensure_export(name, folder)
    variants = [v for v in (args.variants or ("int8" if args.quick else "int8,fp32")).split(",") if v]
    results: dict[str, Any] = {}
    skipped: list[str] | None = [] if args.skip_uncached else None
    t0 = time.perf_counter()
    for ds in args.data or DATASETS:
        path = Path(ds) if Path(ds).is_dir() else SHARED_DATA / ds
        data = load_beir(path, "test")
        rows = eval_dataset(path.name, data, exports, variants, args.threads, skipped=skipped)
        results[path.name] = {"queries": len(data.queries), "docs": len(data.corpus), "rows": rows}
        plot(path.name, rows, plot_path(args.out, path.name))
        # Written after every dataset so a long run leaves its finished datasets behind.
        write_result(args.out, {"benchmark": "recall", "mode": "quick" if args.quick else "full", "k": K,
                                "models": {k: str(v) for k, v in exports.items()}, "variants": variants,
                                "threads": args.threads, "wall_seconds": round(time.perf_counter() - t0, 1),
                                "skipped": skipped or [], "datasets": results}, __file__)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
