"""Query latency in one run: hce-serve's Python API and HTTP server beside the raw floor (bare ORT
session + bare hnswlib ``knn_query``) and torch eager + exact numpy search, at 1 and 2 threads.

    python -m benchmarks.latency --quick              # SciFact (5,183 real documents)
    python -m benchmarks.latency                      # SciFact, then 1M synthetic vectors (issue 5 setting)

Per system: single-query p50/p99 end to end (text -> ids), encode only, search only; batched QPS (32
queries a call). The systems are timed interleaved (``common.timed``) after a warm-up, and repeated; the
reported statistic is the median over repeats. sentence-transformers' ONNX backend is not measured: it
pins transformers 5.x, which breaks optimum-onnx in this environment (DESIGN.md §8).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.encoders import base_model_path, beir_exact, ensure_export
from benchmarks.loopback import run_load, sequential, start_server
from hce_serve.beir import Document, load_beir
from hce_serve.index import Index, IndexParams
from hce_serve.search import recall_at_k, topk_inner_product

log = logging.getLogger(__name__)
K = 10
BATCH = 32
QUERY_MAX_LENGTH = 64


class Floor:
    """The least work a query can cost: tokenizer -> bare ORT session -> bare hnswlib, no checks, no ids."""

    def __init__(self, export_dir: Path, variant: str, hnsw_path: Path, count: int, threads: int, ef: int) -> None:
        import hnswlib
        import onnxruntime as ort
        from tokenizers import Tokenizer

        from hce_serve.card import ModelCard

        card = ModelCard.load(export_dir)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.sess = ort.InferenceSession(str(export_dir / card.onnx["files"][variant]), so,
                                         providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.sess.get_inputs()]
        self.tok = Tokenizer.from_file(str(export_dir / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=QUERY_MAX_LENGTH)
        self.h = hnswlib.Index(space="ip", dim=card.dim)
        self.h.load_index(str(hnsw_path), max_elements=count)
        self.h.set_ef(ef)

    def encode(self, texts: list[str]) -> np.ndarray:
        encs = self.tok.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = np.zeros((len(texts), width), np.int64)  # (b, L)
        mask = np.zeros_like(ids)
        for r, e in enumerate(encs):
            ids[r, : len(e.ids)] = e.ids
            mask[r, : len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self.sess.run(["sentence_embedding"], {k: feed[k] for k in self.names})[0]  # (b, dim)

    def search(self, vecs: np.ndarray, threads: int = 1) -> np.ndarray:
        return self.h.knn_query(vecs, k=K, num_threads=threads)[0]


class TorchExact:
    """The research-code path: the training encoder's torch forward (eager) and numpy exact search."""

    def __init__(self, model_dir: Path, matrix: np.ndarray) -> None:
        from hce_train.model import HCEEncoder

        self.enc = HCEEncoder.load(model_dir)
        self.matrix = matrix

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.enc.encode(texts, QUERY_MAX_LENGTH, progress=False)  # (b, dim)

    def search(self, vecs: np.ndarray) -> np.ndarray:
        return topk_inner_product(self.matrix, vecs, K)[1]


def measure_http(index_dir: Path, queries: list[str], threads: int, n: int, repeats: int,
                 concurrency: Sequence[int], total: int) -> tuple[dict, list[float]]:
    """Serve ``index_dir`` read-only on loopback; time sequential requests, then a bounded load at each
    concurrency, with the lean asyncio keep-alive client of ``loopback`` on the same cores as the server."""
    bodies = [{"query": q, "k": K} for q in queries]
    with start_server(index_dir, ["--read-only", "--threads", str(threads)]) as server:
        asyncio.run(sequential(server.port, bodies, 50))  # warm-up
        reps = [asyncio.run(sequential(server.port, bodies, n)) for _ in range(repeats)]
        loads = []
        for c in concurrency:
            r = asyncio.run(run_load(server.port, bodies, c, total))
            errors = sum(v for code, v in r["status"].items() if code != 200) + r["bad_bodies"]
            loads.append({"concurrency": c, "requests": total, "qps": round(r["qps"], 1), "errors": errors,
                          **common.percentiles(r["latencies"])})
            log.info("http %dt c=%d: %s", threads, c, loads[-1])
    return {"client": "benchmarks/loopback.py (asyncio keep-alive, same machine)",
            "sequential": common.median_stats(reps), "load": max(loads, key=lambda x: x["qps"]),
            "loads": loads}, [x for r in reps for x in r]


Fns = tuple[Callable[[int], object], Callable[[int], object], Callable[[int], object], Callable[[list[str]], object]]


def systems(floor: Floor, eng: Any, tq: TorchExact, queries: list[str], t: int) -> dict[str, Fns]:
    """Per system: (end to end, encode only, search only, batched call) closures over query index i.

    ``hce_engine`` returns ids and scores (``fields=()``), the floor's work; ``hce_engine_docs`` (an index that
    stores documents) adds the stored title/text/metadata lookup of every hit, as a search in the CLI, the
    HTTP API and the Python API does by default.
    """
    q1 = [[q] for q in queries]
    fv = floor.encode(queries[:1])  # (1, dim): a fixed vector for the search-only loops
    ev = eng.encoder.encode_queries(queries[:1])
    docs = {} if not eng.stores_documents else {
        "hce_engine_docs": (lambda i: eng.search_batch(q1[i % len(q1)], K), lambda i: eng.encoder.encode_queries(q1[i % len(q1)]),
                            lambda i: eng.store.documents([d for d, _ in eng.index.search(ev, K)[0]]),
                            lambda b: eng.search_batch(b, K, num_threads=t))}
    return {
        "floor": (lambda i: floor.search(floor.encode(q1[i % len(q1)])), lambda i: floor.encode(q1[i % len(q1)]),
                  lambda i: floor.search(fv), lambda b: floor.search(floor.encode(b), t)),
        "hce_engine": (lambda i: eng.search_batch(q1[i % len(q1)], K, fields=()),
                       lambda i: eng.encoder.encode_queries(q1[i % len(q1)]),
                       lambda i: eng.index.search(ev, K), lambda b: eng.search_batch(b, K, fields=(), num_threads=t)),
        **docs,
        "torch_exact": (lambda i: tq.search(tq.encode(q1[i % len(q1)])), lambda i: tq.encode(q1[i % len(q1)]),
                        lambda i: tq.search(fv), lambda b: tq.search(tq.encode(b))),
    }


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
    for t in (1, 2):
        torch.set_num_threads(t)
        floor = Floor(args.export, args.variant, hnsw_path, matrix.shape[0], t, ef)
        eng = Engine.open(index_dir, variant=args.variant, threads=t)
        eng.index.set_ef(ef)
        res: dict[str, Any] = {}
        sys_fns = systems(floor, eng, tq, queries, t)
        for col, which in (("end_to_end", 0), ("encode_only", 1), ("search_only", 2)):
            timing = common.timed({k: v[which] for k, v in sys_fns.items()}, args.n, args.repeats)
            for sysname, tm in timing.items():
                res.setdefault(sysname, {})[col] = tm.stats()
                if which == 0:
                    cdf[f"{sysname} ({t}t)"] = tm.samples
        for sysname, (_, _, _, batch) in sys_fns.items():
            res[sysname]["batched_qps"] = common.rate(lambda batch=batch: [batch(b) for b in batches],
                                                      sum(map(len, batches)), args.repeats, warmup=0)
            log.info("%s %dt %s: %s", name, t, sysname, res[sysname]["end_to_end"])
        eng.close()
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
        out["threads"][str(t)] = res
    plot_cdf(cdf, common.plot_path(args.out, f"cdf-{name}"), name)
    return out


def plot_cdf(cdf: dict[str, list[float]], out: Path, name: str) -> None:
    plt = common.pyplot()
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
    common.save_figure(fig, out)


def make_index(folder: Path, export_dir: Path, ids: list[str], matrix: np.ndarray, ef: int,
               documents: list[Document] | None = None) -> Path:
    """An index folder over precomputed vectors (with ``documents`` stored, or ids only)."""
    from hce_serve.store import IndexStore

    index = Index(matrix.shape[1], IndexParams(ef_search=ef, exact_threshold=0), capacity=len(ids))
    for s in range(0, len(ids), 65536):
        index.add(ids[s : s + 65536], matrix[s : s + 65536])
    IndexStore.create(folder, index, export_dir, overwrite=True, documents=documents)
    return folder


def million(tmp: Path, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Issue 5's setting: 1M clustered synthetic 384-d vectors, ef=200, real encoded queries."""
    import hnswlib

    n, dim, ef = 1_000_000, 384, 200
    x = common.clustered(n, dim, 1000, seed=0)  # (n, dim)
    t = time.perf_counter()
    idx = make_index(tmp / "million", args.export, [f"d{i}" for i in range(n)], x, ef)
    build = time.perf_counter() - t
    res = run_setting("synthetic-1m", idx, x, queries, ef, args)
    h = hnswlib.Index(space="ip", dim=dim)
    h.load_index(str(next(idx.rglob("hnsw.bin"))), max_elements=n)
    h.set_ef(ef)
    q = common.clustered(1000, dim, 1000, seed=0, noise_seed=1)  # same mixture: neighbours exist, like real queries
    truth = topk_inner_product(x, q, K)[1]
    res["recall@10_vs_exact"] = round(recall_at_k(h.knn_query(q, k=K, num_threads=-1)[0], truth), 4)
    res["build_seconds_incl_save"] = round(build, 1)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = common.study_parser(__doc__, "latency")
    ap.add_argument("--data", type=Path, default=common.SHARED_DATA / "scifact", help="BEIR folder [SciFact]")
    ap.add_argument("--export", type=Path, default=None, help="EXPORT_DIR (default: all-MiniLM-L6-v2 exported and cached)")
    ap.add_argument("--torch-model", type=Path, default=None, help="the export's source model [all-MiniLM-L6-v2]")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--million", action="store_true", help="also the 1M synthetic setting (default in full mode)")
    ap.add_argument("--n", type=int, default=None, help="timed single queries per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-http", type=int, default=None)
    ap.add_argument("--http-requests", type=int, default=None)
    ap.add_argument("--concurrency", default="2,4,8", help="HTTP load concurrency levels (comma list)")
    ap.add_argument("--no-http", action="store_true")
    args = common.parse(ap, argv)
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
    settings = []
    common.CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hce-lat-", dir=common.CACHE) as tmp:
        idx = make_index(Path(tmp) / "real", args.export, [d.id for d in data.corpus], matrix, 100, data.corpus)
        settings.append(run_setting(f"{args.data.name}-{len(matrix) // 1000}k", idx, matrix, queries, 100, args))
        if args.million or not args.quick:
            settings.append(million(Path(tmp), queries, args))
    payload = {"benchmark": "latency", "mode": "quick" if args.quick else "full", "variant": args.variant, "k": K,
               "batch": BATCH, "query_source": f"{args.data.name} test queries (real text, real encoder)",
               "timing": "systems interleaved in rounds (benchmarks.common.timed), median over repeats",
               "sentence_transformers_onnx": "not measured: sentence-transformers pins transformers 5.x, which "
                                             "breaks optimum-onnx here; not installed into the project venv",
               "wall_seconds": round(time.perf_counter() - t0, 1), "settings": settings}
    print(common.write_result(args.out, payload, __file__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
