"""Query latency in one run: hce-serve's Python API and HTTP server beside the raw floor (bare ORT
session + bare hnswlib ``knn_query``), torch eager + exact numpy search, and other engines' query encoders
on the same model (``peers``: sentence-transformers torch / ONNX fp32 / its own ONNX int8, fastembed), at 1
and 2 threads.

    python -m benchmarks.latency --quick              # SciFact (5,183 real documents)
    python -m benchmarks.latency                      # SciFact, then 1M synthetic vectors (issue 5 setting)

Per system: single-query p50/p99 end to end (text -> ids), encode only, search only; batched QPS (32
queries a call). The systems are timed interleaved (``timing.timed``) after a warm-up, and repeated; the
reported statistic is the median over repeats. ``hce_engine`` runs with the query cache off and the full
query encoder, so it pays the whole encoder on every query; where ``--export`` holds a distilled query graph
(``hce-train distill-query`` then ``hce-export onnx``), ``hce_engine_shallow`` is the same path through it and
``shallow_over_full_p50`` the ratio; ``hce_engine_cache_hit`` is the same path with every query cached (its
encode column is the cost of a hit). Peers encode only (they have no index): they join the encode column, with their p50
as a ratio to hce's. The int8 encoders' cosine to their own fp32 on documents is measured too (``fidelity``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.encoders import base_model_path, beir_exact, ensure_export
from benchmarks.harness import cli, figures, paths, provenance, synthetic, timing
from benchmarks.latency_systems import Floor, K, TorchExact, systems, warm_cache
from benchmarks.loopback import run_load, sequential, start_server
from hce_serve.documents import Document
from hce_serve.formats.beir import load_beir
from hce_serve.index.exact import recall_at_k, topk_inner_product
from hce_serve.index.index import Index
from hce_serve.options import IndexParams

log = logging.getLogger(__name__)
BATCH = 32
FIDELITY_DOCS = 1000  # documents for the int8-to-fp32 cosine (200 with --quick)


def measure_http(index_dir: Path, queries: list[str], threads: int, n: int, repeats: int,
                 concurrency: Sequence[int], total: int) -> tuple[dict, list[float]]:
    """Serve ``index_dir`` read-only on loopback; time sequential requests, then a bounded load at each
    concurrency, with the lean asyncio keep-alive client of ``loopback`` on the same cores as the server."""
    bodies = [{"query": q, "k": K} for q in queries]
    # --query-cache 0: the requests cycle through the query set, and a cached query would skip the encoder.
    with start_server(index_dir, ["--read-only", "--threads", str(threads), "--query-cache", "0"]) as server:
        asyncio.run(sequential(server.port, bodies, 50))  # warm-up
        reps = [asyncio.run(sequential(server.port, bodies, n)) for _ in range(repeats)]
        loads = []
        for c in concurrency:
            r = asyncio.run(run_load(server.port, bodies, c, total))
            errors = sum(v for code, v in r["status"].items() if code != 200) + r["bad_bodies"]
            loads.append({"concurrency": c, "requests": total, "qps": round(r["qps"], 1), "errors": errors,
                          **timing.percentiles(r["latencies"])})
            log.info("http %dt c=%d: %s", threads, c, loads[-1])
    return {"client": "benchmarks/loopback.py (asyncio keep-alive, same machine)",
            "sequential": timing.median_stats(reps), "load": max(loads, key=lambda x: x["qps"]),
            "loads": loads}, [x for r in reps for x in r]


def has_shallow(export: Path, variant: str) -> bool:
    """Whether the export has a distilled query graph of this variant: the serving path's own choice."""
    from hce_serve.encoder import plan
    from hce_serve.formats.card import ModelCard

    return plan(ModelCard.load(export), export, variant)["query_encoder"] == "shallow"


def run_setting(name: str, index_dir: Path, matrix: np.ndarray, queries: list[str], ef: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """Every system at 1 and 2 threads on one index folder."""
    import torch

    from hce_serve.engine import Engine

    hnsw_path = next(index_dir.rglob("hnsw.bin"))
    out: dict[str, Any] = {"setting": name, "docs": int(matrix.shape[0]), "ef": ef, "threads": {}}
    cdf: dict[str, list[float]] = {}
    batches = [queries[i : i + BATCH] for i in range(0, len(queries) - BATCH + 1, BATCH)] or [queries[:BATCH]]
    tq = TorchExact(args.torch_model, matrix)
    q1 = [[q] for q in queries]
    with_shallow = has_shallow(args.export, args.variant)
    for t in (1, 2):
        torch.set_num_threads(t)  # torch_exact and sentence-transformers' torch backend
        floor = Floor(args.export, args.variant, hnsw_path, matrix.shape[0], t, ef)
        eng = Engine.open(index_dir, variant=args.variant, threads=t, query_cache=0, query_encoder="full")
        cached = Engine.open(index_dir, variant=args.variant, threads=t, query_cache=2 * len(queries),
                             query_encoder="full")
        shallow = Engine.open(index_dir, variant=args.variant, threads=t, query_cache=0,
                              query_encoder="shallow") if with_shallow else None
        for e in (eng, cached, shallow):
            if e is not None:
                e.store.index.set_ef(ef)
        out["query_graphs"] = {"hce_engine": eng.encoder.query_graph,
                               **({"hce_engine_shallow": shallow.encoder.query_graph} if shallow else {})}
        warm_cache(cached, queries)
        enc_peers, out["peers_skipped"] = peers.load(args.torch_model, t, matrix.shape[1]) if args.peers else ({}, {})
        res: dict[str, Any] = {}
        sys_fns = systems(floor, eng, cached, tq, queries, t, shallow)
        for col, which in (("end_to_end", 0), ("encode_only", 1), ("search_only", 2)):
            fns = {k: v[which] for k, v in sys_fns.items()}
            if which == 1:  # peers encode only, interleaved with hce's encoders
                fns.update({p: (lambda i, f=f: f(q1[i % len(q1)])) for p, f in enc_peers.items()})
            timings = timing.timed(fns, args.n, args.repeats)
            for sysname, tm in timings.items():
                res.setdefault(sysname, {})[col] = tm.stats()
                if which == 0:
                    cdf[f"{sysname} ({t}t)"] = tm.samples
        for sysname, (_, _, _, batch) in sys_fns.items():
            res[sysname]["batched_qps"] = timing.rate(lambda batch=batch: [batch(b) for b in batches],
                                                      sum(map(len, batches)), args.repeats, warmup=0)
            log.info("%s %dt %s: %s", name, t, sysname, res[sysname]["end_to_end"])
        for e in (eng, cached, shallow):
            if e is not None:
                e.close()
        if not args.no_http:
            res["hce_http"], cdf[f"hce_http ({t}t)"] = measure_http(
                index_dir, queries, t, args.n_http, args.repeats, args.concurrency, args.http_requests)
        floor_p50 = res["floor"]["end_to_end"]["p50_ms"]
        res["ratios_p50_to_floor"] = {s: round(v["end_to_end"]["p50_ms"] / floor_p50, 3)
                                      for s, v in res.items() if "end_to_end" in v}
        if "hce_http" in res:
            res["ratios_p50_to_floor"]["hce_http"] = round(res["hce_http"]["sequential"]["p50_ms"] / floor_p50, 3)
        res["hce_engine_speedup_vs_torch_exact"] = round(
            res["torch_exact"]["end_to_end"]["p50_ms"] / res["hce_engine"]["end_to_end"]["p50_ms"], 2)
        if shallow is not None:  # issue 12's target: the shallow path's p50 <= 0.5x the full one's
            res["shallow_over_full_p50"] = {col: round(res["hce_engine_shallow"][col]["p50_ms"]
                                                       / res["hce_engine"][col]["p50_ms"], 3)
                                            for col in ("end_to_end", "encode_only")}
        hce_enc, hce_e2e = res["hce_engine"]["encode_only"]["p50_ms"], res["hce_engine"]["end_to_end"]["p50_ms"]
        res["peers_encode_p50_over_hce_encode_p50"] = {p: round(res[p]["encode_only"]["p50_ms"] / hce_enc, 3)
                                                       for p in enc_peers}
        res["hce_end_to_end_p50_over_peer_encode_p50"] = {p: round(hce_e2e / res[p]["encode_only"]["p50_ms"], 3)
                                                          for p in enc_peers}
        out["threads"][str(t)] = res
    plot_cdf(cdf, paths.plot_path(args.out, f"cdf-{name}"), name)
    return out


def plot_cdf(cdf: dict[str, list[float]], out: Path, name: str) -> None:
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, s in cdf.items():
        a = np.sort(np.asarray(s) * 1e3)
        ax.plot(a, np.arange(1, a.size + 1) / a.size, label=label, linestyle="-" if "1t" in label else "--")
    ax.set_xscale("log")
    ax.set_xlabel("single-query end-to-end latency, ms (log)")
    ax.set_ylabel("fraction of queries")
    ax.set_title(f"Latency CDF, {name} (2-core CPU, shared)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figures.save_figure(fig, out)


def make_index(folder: Path, export_dir: Path, ids: list[str], matrix: np.ndarray, ef: int,
               documents: list[Document] | None = None) -> Path:
    """An index folder over precomputed vectors (with ``documents`` stored, or ids only)."""
    from hce_serve.folder.store import IndexStore

    index = Index(matrix.shape[1], IndexParams(ef_search=ef, exact_threshold=0), capacity=len(ids))
    for s in range(0, len(ids), 65536):
        index.add(ids[s : s + 65536], matrix[s : s + 65536])
    IndexStore.create(folder, index, export_dir, overwrite=True, documents=documents)
    return folder


def million(tmp: Path, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Issue 5's setting: 1M clustered synthetic 384-d vectors, ef=200, real encoded queries."""
    import hnswlib

    n, dim, ef = 1_000_000, 384, 200
    x = synthetic.clustered(n, dim, 1000, seed=0)  # (n, dim)
    t = time.perf_counter()
    idx = make_index(tmp / "million", args.export, [f"d{i}" for i in range(n)], x, ef)
    build = time.perf_counter() - t
    res = run_setting("synthetic-1m", idx, x, queries, ef, args)
    h = hnswlib.Index(space="ip", dim=dim)
    h.load_index(str(next(idx.rglob("hnsw.bin"))), max_elements=n)
    h.set_ef(ef)
    q = synthetic.clustered(1000, dim, 1000, seed=0, noise_seed=1)  # same mixture: neighbours exist, like real queries
    truth = topk_inner_product(x, q, K)[1]
    res["recall@10_vs_exact"] = round(recall_at_k(h.knn_query(q, k=K, num_threads=-1)[0], truth), 4)
    res["build_seconds_incl_save"] = round(build, 1)
    return res


def fidelity(args: argparse.Namespace, docs: list[str]) -> dict[str, Any]:
    """Cosine of each int8 encoder's document embeddings to its own fp32's: hce's and sentence-transformers'."""
    from hce_serve.encoder import Encoder

    fp32, int8 = Encoder(args.export, variant="fp32", threads=2), Encoder(args.export, variant=args.variant, threads=2)
    pairs = {f"hce_{args.variant}": (fp32.encode_documents, int8.encode_documents)}
    enc = peers.load(args.torch_model, 2, fp32.dim, with_fastembed=False, with_torch=False)[0] if args.peers else {}
    if st8 := next((n for n in enc if n.startswith("st_onnx_int8")), None):
        pairs[st8] = (enc["st_onnx_fp32"], enc[st8])
    return peers.cosine_to_fp32(pairs, docs)


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.study_parser(__doc__, "latency")
    ap.add_argument("--data", type=Path, default=paths.SHARED_DATA / "scifact", help="BEIR folder [SciFact]")
    ap.add_argument("--export", type=Path, default=None,
                    help="EXPORT_DIR (default: all-MiniLM-L6-v2 exported and cached)")
    ap.add_argument("--torch-model", type=Path, default=None, help="the export's source model [all-MiniLM-L6-v2]")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--million", action="store_true", help="also the 1M synthetic setting (default in full mode)")
    ap.add_argument("--n", type=int, default=None, help="timed single queries per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-http", type=int, default=None)
    ap.add_argument("--http-requests", type=int, default=None)
    ap.add_argument("--concurrency", default="2,4,8", help="HTTP load concurrency levels (comma list)")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--no-peers", dest="peers", action="store_false",
                    help="leave out sentence-transformers and fastembed (left out anyway where not installed)")
    args = cli.parse(ap, argv)
    args.n = args.n or (200 if args.quick else 1000)
    args.n_http = args.n_http or (200 if args.quick else 1000)
    args.http_requests = args.http_requests or (600 if args.quick else 4000)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.torch_model = args.torch_model or base_model_path()
    args.export = args.export or ensure_export("minilm", args.torch_model)

    from hce_serve.encoder import Encoder

    data = load_beir(args.data, "test")
    queries = list(data.queries.values())  # real test queries
    matrix = beir_exact(Encoder(args.export, variant=args.variant, threads=2), data, cache_key=args.data.name).d
    t0 = time.perf_counter()
    fid = fidelity(args, [d.full_text for d in data.corpus[: 200 if args.quick else FIDELITY_DOCS]])
    log.info("int8 cosine to fp32 on documents: %s", fid)
    settings = []
    paths.CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hce-lat-", dir=paths.CACHE) as tmp:
        idx = make_index(Path(tmp) / "real", args.export, [d.id for d in data.corpus], matrix, 100, data.corpus)
        settings.append(run_setting(f"{args.data.name}-{len(matrix) // 1000}k", idx, matrix, queries, 100, args))
        if args.million or not args.quick:
            settings.append(million(Path(tmp), queries, args))
    payload = {"benchmark": "latency", "mode": "quick" if args.quick else "full", "variant": args.variant, "k": K,
               "batch": BATCH, "query_source": f"{args.data.name} test queries (real text, real encoder)",
               "timing": "systems interleaved in rounds (benchmarks.harness.timing.timed), median over repeats",
               "peers": {**peers.versions(), "int8_config": peers.int8_config(), "threads": "same as hce's"},
               "fidelity_int8_to_fp32_docs": fid,
               "wall_seconds": round(time.perf_counter() - t0, 1), "settings": settings}
    print(provenance.write_result(args.out, payload, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
