"""Backends agree: an index folder and its Milvus export answer the same queries with the same documents
(issue 13). The folder is exported to milvus-lite (or to ``--milvus-uri``, a server) with the folder's own
HNSW parameters; every judged query is encoded once and the same vector goes to both backends, so only the
backends differ. Per backend: nDCG@10 / R@10 / R@100 / MRR@10, and the mean top-10 overlap between them;
single-query search latency of each, ids only and with the stored fields, timed interleaved.

    python -m benchmarks.backends --index demo-out/idx --data demo/data/scifact            # SciFact test split
    python -m benchmarks.backends --quick --index demo-out/idx --data demo/data/scifact    # 50 queries

Targets: top-10 overlap >= .99 and |nDCG@10 difference| <= 0.002 (0.2 points). milvus-lite runs in this
process (pure Python over faiss); a Milvus server adds its network round trip instead.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import cli, provenance, timing
from hce_serve import defaults
from hce_serve.engine import Engine
from hce_serve.formats.beir import check_qrels, load_qrels, load_queries, qrels_path
from hce_serve.metrics import evaluate
from hce_serve.milvus.export import export_index, vector_index_for
from hce_serve.milvus.layout import MilvusTarget

TARGETS = {"overlap_at_10": 0.99, "ndcg_at_10_abs_diff": 0.002}


def run_searches(engines: dict[str, Any], vecs: np.ndarray, k: int) -> dict[str, list[list[tuple[str, float]]]]:
    """Top-k (id, score) per query row from each backend's store (the vectors are shared)."""
    out = {}
    for name, eng in engines.items():
        rows = []
        for lo in range(0, len(vecs), defaults.SEARCH_CHUNK):
            rows.extend(eng.store.search(vecs[lo : lo + defaults.SEARCH_CHUNK], k))
        out[name] = [[(d, s) for d, s, _ in row] for row in rows]
    return out


def compare(qids: list[str], qrels: dict, runs: dict[str, list[list[tuple[str, float]]]]) -> dict[str, Any]:
    a, b = runs["local"], runs["milvus"]
    overlap = [len({d for d, _ in x[:10]} & {d for d, _ in y[:10]}) / max(1, min(10, len(x)))
               for x, y in zip(a, b, strict=True)]
    metrics = {name: evaluate(qrels, {q: dict(row) for q, row in zip(qids, rows, strict=True)})
               for name, rows in runs.items()}
    diff = round(metrics["milvus"]["ndcg@10"] - metrics["local"]["ndcg@10"], 5)
    return {"metrics": metrics, "overlap_at_10": round(float(np.mean(overlap)), 4),
            "min_overlap_at_10": round(float(np.min(overlap)), 2), "ndcg_at_10_diff": diff,
            "same_top1": round(float(np.mean([[d for d, _ in x[:1]] == [d for d, _ in y[:1]]
                                              for x, y in zip(a, b, strict=True)])), 4)}


def latencies(engines: dict[str, Any], vecs: np.ndarray, n: int) -> dict[str, Any]:
    """Single-query search p50/p99 per backend, ids only and with title/text/metadata, interleaved."""
    out = {}
    for label, fields in (("ids_only", ()), ("with_fields", defaults.FIELDS)):
        fns = {name: (lambda i, e=eng, f=fields: e.store.search(vecs[i % len(vecs)][None], defaults.K, fields=f))
               for name, eng in engines.items()}
        out[label] = {name: t.stats() for name, t in timing.timed(fns, n, warmup=min(20, n)).items()}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "backends")
    ap.add_argument("--index", required=True, type=Path, help="IDX_DIR (built with stored documents)")
    ap.add_argument("--data", required=True, type=Path, help="BEIR folder with queries.jsonl and qrels/")
    ap.add_argument("--split", default="test")
    ap.add_argument("--milvus-uri", default=None, help="a Milvus server to compare with [milvus-lite in a temp folder]")
    ap.add_argument("--collection", default="hce_backends")
    ap.add_argument("--max-queries", type=int, default=None, help="[50 with --quick, else all judged]")
    ap.add_argument("--latency-queries", type=int, default=None, help="[100 with --quick, else 1000]")
    args = cli.parse(ap, argv)
    qpath = qrels_path(args.data, args.split)
    with tempfile.TemporaryDirectory(prefix="hce-backends-") as tmp, Engine.open(args.index) as local:
        target = MilvusTarget(args.milvus_uri or str(Path(tmp) / "backends.db"), args.collection)
        check = check_qrels(load_qrels(qpath), load_queries(args.data / "queries.jsonl"), local.ids(), str(qpath))
        qids = sorted(check.kept)[: args.max_queries or (50 if args.quick else None)]
        qrels = {q: check.kept[q] for q in qids}
        queries = load_queries(args.data / "queries.jsonl")
        export = export_index(local, target, vector_index_for(local.store), overwrite=True)
        with Engine.open_milvus(target.uri, target.collection, local.store.encoder_dir) as remote:
            engines = {"local": local, "milvus": remote}
            t0 = time.perf_counter()
            vecs = local.query_vectors([queries[q] for q in qids])  # (nq, dim): one embedding per query, shared
            encode_s = time.perf_counter() - t0
            result = compare(qids, qrels, run_searches(engines, vecs, defaults.EVAL_K))
            n_lat = args.latency_queries or (100 if args.quick else 1000)
            result["latency"] = latencies(engines, vecs, n_lat)
            result["collection"] = remote.stats()
    met = {"overlap_at_10": result["overlap_at_10"] >= TARGETS["overlap_at_10"],
           "ndcg_at_10_abs_diff": abs(result["ndcg_at_10_diff"]) <= TARGETS["ndcg_at_10_abs_diff"]}
    result["targets"] = {**TARGETS, "met": met}
    payload = {"benchmark": "backends", "mode": "quick" if args.quick else "full", "index": str(args.index),
               "data": f"{args.data.name} {args.split}", "queries": len(qids), "k": defaults.EVAL_K,
               "milvus": "server" if args.milvus_uri else "milvus-lite (in process)", "export": export,
               "encode_seconds": round(encode_s, 2), "latency_queries": n_lat, **result}
    print(provenance.write_result(args.out, payload, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
