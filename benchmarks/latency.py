"""Query latency in one run: hce-serve's Python API and HTTP server beside the raw floor (bare ORT
session + bare hnswlib ``knn_query``) and torch eager + exact numpy search, at 1 and 2 threads.

    python benchmarks/latency.py --quick              # SciFact (5,183 real documents)
    python benchmarks/latency.py                      # SciFact, then 1M synthetic vectors (issue 5 setting)

Per system: single-query p50/p99 end to end (text -> ids), encode only, search only; batched QPS (32
queries a call). Every timing loop runs after a warm-up and is repeated; the reported statistic is the
median over repeats. sentence-transformers' ONNX backend is not measured: it pins transformers 5.x, which
breaks optimum-onnx in this environment (DESIGN.md §8), so it is not installed; the JSON says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import PLOTS, SHARED_DATA, percentiles, save_figure, write_result
from benchmarks.recall import CACHE, base_model_path, doc_embeddings, ensure_export
from hce_serve.beir import load_beir
from hce_serve.index import Index, IndexParams
from hce_serve.search import recall_at_k, topk_inner_product

log = logging.getLogger("bench.latency")
K = 10
BATCH = 32


STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms")


def median_stats(repeats: list[list[float]]) -> dict[str, float]:
    """Median over repeats of each percentile statistic of that repeat's samples (seconds in, ms out)."""
    per_repeat = [percentiles(r) for r in repeats]
    return {k: round(float(np.median([s[k] for s in per_repeat])), 4) for k in STATS}


class Floor:
    """The least work a query can cost: tokenizer -> bare ORT session -> bare hnswlib, no checks, no ids."""

    def __init__(self, export_dir: Path, variant: str, hnsw_path: Path, dim: int, count: int, threads: int,
                 ef: int, query_max_length: int) -> None:
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
        self.tok.enable_truncation(max_length=query_max_length)
        self.h = hnswlib.Index(space="ip", dim=dim)
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
    """The research-code path: transformers eager forward, mean pooling, numpy exact search."""

    def __init__(self, model_dir: Path, matrix: np.ndarray, query_max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.matrix = matrix
        self.max_len = query_max_length

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            b = self.tok(texts, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
            h = self.model(**b).last_hidden_state  # (b, L, dim)
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)  # (b, L, 1)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (b, dim)
            return torch.nn.functional.normalize(e, dim=-1).numpy()

    def search(self, vecs: np.ndarray) -> np.ndarray:
        return topk_inner_product(self.matrix, vecs, K)[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure_http(index_dir: Path, queries: list[str], threads: int, n: int, repeats: int,
                 concurrency: list[int], total: int) -> tuple[dict, list[float]]:
    """Start ``hce-serve http`` (read-only, loopback); time sequential requests, then a bounded load at each
    concurrency. The client is ``httpload`` (lean asyncio, keep-alive) on the same 2 cores as the server."""
    import asyncio

    import httpx

    from benchmarks.httpload import run_load, sequential

    port = free_port()
    cmd = [sys.executable, "-m", "hce_serve.cli", "-q", "http", "--index", str(index_dir), "--port", str(port),
           "--read-only", "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    bodies = [{"query": q, "k": K} for q in queries]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            for _ in range(600):
                try:
                    if c.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None:
                    raise RuntimeError(f"hce-serve http exited: {proc.stderr.read().decode()[-500:]}")
                time.sleep(0.1)
        asyncio.run(sequential("127.0.0.1", port, bodies, 50))  # warm-up
        reps = [asyncio.run(sequential("127.0.0.1", port, bodies, n)) for _ in range(repeats)]
        stats = {**median_stats(reps), "n": n, "repeats": repeats}
        loads = []
        for c in concurrency:
            r = asyncio.run(run_load("127.0.0.1", port, bodies, c, total))
            errors = sum(v for code, v in r["status"].items() if code != 200) + r["bad_bodies"]
            loads.append({"concurrency": c, "requests": total, "qps": round(r["qps"], 1), "errors": errors,
                          **percentiles(r["latencies"])})
            log.info("http %dt c=%d: %s", threads, c, loads[-1])
        best = max(loads, key=lambda x: x["qps"])
        return {"client": "benchmarks/httpload.py (asyncio keep-alive, same machine)", "sequential": stats,
                "load": best, "loads": loads}, [x for r in reps for x in r]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


ROUNDS = 10


def timed_interleaved(fns: dict[str, Callable[[int], object]], n: int, repeats: int,
                      warmup: int = 20) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """Time several systems at once, in rounds of n/ROUNDS calls per system in turn, after a warm-up:
    per system the median over ``repeats`` of each percentile statistic, plus every sample (for the CDF)."""
    for fn in fns.values():
        for i in range(warmup):
            fn(i)
    per = max(1, n // ROUNDS)
    runs: dict[str, list[list[float]]] = {k: [] for k in fns}
    for _ in range(repeats):
        samples: dict[str, list[float]] = {k: [] for k in fns}
        for rnd in range(ROUNDS):
            for name, fn in fns.items():
                for j in range(per):
                    i = rnd * per + j
                    t = time.perf_counter()
                    fn(i)
                    samples[name].append(time.perf_counter() - t)
        for name in fns:
            runs[name].append(samples[name])
    out = {name: {**median_stats(r), "n": per * ROUNDS, "repeats": repeats, "interleaved": True}
           for name, r in runs.items()}
    return out, {name: [x for rep in r for x in rep] for name, r in runs.items()}


Fns = tuple[Callable[[int], object], Callable[[int], object], Callable[[int], object], Callable[[list[str]], object]]


def systems(floor: Floor, eng: Any, tq: TorchExact, queries: list[str], t: int) -> dict[str, Fns]:
    """Per system: (end to end, encode only, search only, batched call) closures over query index i."""
    q1 = [[q] for q in queries]
    fv = floor.encode(queries[:1])  # (1, dim): a fixed vector for the search-only loops
    ev = eng.encoder.encode_queries(queries[:1])
    return {
        "floor": (lambda i: floor.search(floor.encode(q1[i % len(q1)])), lambda i: floor.encode(q1[i % len(q1)]),
                  lambda i: floor.search(fv), lambda b: floor.search(floor.encode(b), t)),
        "hce_engine": (lambda i: eng.search(q1[i % len(q1)], K), lambda i: eng.encoder.encode_queries(q1[i % len(q1)]),
                       lambda i: eng.index.search(ev, K), lambda b: eng.search(b, K, num_threads=t)),
        "torch_exact": (lambda i: tq.search(tq.encode(q1[i % len(q1)])), lambda i: tq.encode(q1[i % len(q1)]),
                        lambda i: tq.search(fv), lambda b: tq.search(tq.encode(b))),
    }


def run_setting(name: str, index_dir: Path, export_dir: Path, matrix: np.ndarray, queries: list[str],
                ef: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every system at 1 and 2 threads on one index folder."""
    import torch

    from hce_serve.engine import Engine

    hnsw_path = next(index_dir.rglob("hnsw.bin"))
    qml = 64
    out: dict[str, Any] = {"setting": name, "docs": int(matrix.shape[0]), "ef": ef, "threads": {}}
    cdf: dict[str, list[float]] = {}
    batches = [queries[i : i + BATCH] for i in range(0, len(queries) - BATCH + 1, BATCH)] or [queries[:BATCH]]
    tq = TorchExact(base_model_path(), matrix, qml)
    for t in (1, 2):
        torch.set_num_threads(t)
        floor = Floor(export_dir, args.variant, hnsw_path, matrix.shape[1], matrix.shape[0], t, ef, qml)
        eng = Engine.open(index_dir, variant=args.variant, threads=t)
        eng.index.set_ef(ef)
        n, r = args.n, args.repeats
        res: dict[str, Any] = {}
        sys_fns = systems(floor, eng, tq, queries, t)
        # Interleaved: the machine's speed drifts by 20-30 % over minutes here, so timing one system after
        # the other skews their ratio; rounds of n/ROUNDS calls per system in turn hit all alike.
        for col, which in (("end_to_end", 0), ("encode_only", 1), ("search_only", 2)):
            stats, pooled = timed_interleaved({k: v[which] for k, v in sys_fns.items()}, n, r)
            for sysname in sys_fns:
                res.setdefault(sysname, {})[col] = stats[sysname]
                if which == 0:
                    cdf[f"{sysname} ({t}t)"] = pooled[sysname]
        for sysname, (_, _, _, batch) in sys_fns.items():
            reps = []
            for _ in range(r):
                t0 = time.perf_counter()
                for b in batches:
                    batch(b)
                reps.append(sum(len(b) for b in batches) / (time.perf_counter() - t0))
            res[sysname]["batched_qps"] = round(float(np.median(reps)), 1)
            log.info("%s %dt %s: %s", name, t, sysname, res[sysname]["end_to_end"])
        eng.close()
        if not args.no_http:
            res["hce_http"], cdf[f"hce_http ({t}t)"] = measure_http(index_dir, queries, t, args.n_http, r,
                                                                  [int(c) for c in args.concurrency.split(",")],
                                                                  args.http_requests)
            log.info("%s %dt http: %s", name, t, res["hce_http"])
        floor_p50 = res["floor"]["end_to_end"]["p50_ms"]
        res["ratios_p50_to_floor"] = {s: round(v["end_to_end"]["p50_ms"] / floor_p50, 3)
                                      for s, v in res.items() if isinstance(v, dict) and "end_to_end" in v}
        if "hce_http" in res:
            res["ratios_p50_to_floor"]["hce_http"] = round(res["hce_http"]["sequential"]["p50_ms"] / floor_p50, 3)
        res["hce_engine_speedup_vs_torch_exact"] = round(
            res["torch_exact"]["end_to_end"]["p50_ms"] / res["hce_engine"]["end_to_end"]["p50_ms"], 2)
        out["threads"][str(t)] = res
    out["sentence_transformers_onnx"] = "not measured: sentence-transformers pins transformers 5.x, which breaks " \
                                        "optimum-onnx here; not installed into the project venv"
    plot_cdf(cdf, PLOTS / f"latency-cdf-{name}.png", name)
    return out


def plot_cdf(cdf: dict[str, list[float]], out: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    save_figure(fig, out)


def make_index(folder: Path, export_dir: Path, ids: list[str], matrix: np.ndarray, ef: int) -> Path:
    from hce_serve.store import IndexStore

    index = Index(matrix.shape[1], IndexParams(ef_search=ef, exact_threshold=0), capacity=len(ids))
    for s in range(0, len(ids), 65536):
        index.add(ids[s : s + 65536], matrix[s : s + 65536])
    IndexStore.create(folder, index, export_dir, overwrite=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="SciFact only, fewer timed queries")
    ap.add_argument("--export", default=None, help="EXPORT_DIR (default: all-MiniLM-L6-v2 exported and cached)")
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--million", action="store_true", help="also the 1M synthetic setting (default in full mode)")
    ap.add_argument("--n", type=int, default=None, help="timed single queries per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-http", type=int, default=None)
    ap.add_argument("--http-requests", type=int, default=None)
    ap.add_argument("--concurrency", default="2,4,8", help="HTTP load concurrency levels (comma list)")
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--out", default="latency")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.n = args.n or (200 if args.quick else 1000)
    args.n_http = args.n_http or (200 if args.quick else 1000)
    args.http_requests = args.http_requests or (600 if args.quick else 4000)
    export_dir = Path(args.export) if args.export else ensure_export("minilm", base_model_path())

    from hce_serve.encoder import Encoder

    data = load_beir(SHARED_DATA / "scifact", "test")
    queries = list(data.queries.values())  # 300 real test queries
    enc = Encoder(export_dir, variant=args.variant, threads=2)
    matrix, _ = doc_embeddings(enc, data, "minilm-zero-shot-scifact")
    t0 = time.perf_counter()
    settings = []
    with tempfile.TemporaryDirectory(prefix="hce-lat-", dir=CACHE) as tmp:
        idx = make_index(Path(tmp) / "scifact", export_dir, [d.id for d in data.corpus], matrix, 100)
        settings.append(run_setting("scifact-5k", idx, export_dir, matrix, queries, 100, args))
        if args.million or not args.quick:
            settings.append(million(Path(tmp), export_dir, queries, args))
    payload = {"benchmark": "latency", "mode": "quick" if args.quick else "full", "variant": args.variant, "k": K,
               "batch": BATCH, "query_source": "SciFact test queries (real text, real encoder)",
               "wall_seconds": round(time.perf_counter() - t0, 1), "settings": settings}
    print(write_result(args.out, payload))
    return 0


def million(tmp: Path, export_dir: Path, queries: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Issue 5's setting: 1M clustered synthetic 384-d vectors, ef=200, real encoded queries."""
    from benchmarks.index_scale import clustered

    n, ef = 1_000_000, 200
    x = clustered(n, 384, 1000, 0)  # (n, 384)
    t = time.perf_counter()
    idx = make_index(tmp / "million", export_dir, [f"d{i}" for i in range(n)], x, ef)
    build = time.perf_counter() - t
    res = run_setting("synthetic-1m", idx, export_dir, x, queries, ef, args)
    import hnswlib

    h = hnswlib.Index(space="ip", dim=384)
    h.load_index(str(next(idx.rglob("hnsw.bin"))), max_elements=n)
    h.set_ef(ef)
    q = clustered(1000, 384, 1000, 0)  # same mixture: neighbours exist, like real queries
    q = q + 0.05 * np.random.default_rng(1).standard_normal(q.shape).astype(np.float32) / np.sqrt(384)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    truth = topk_inner_product(x, q, K)[1]
    res["recall@10_vs_exact"] = round(recall_at_k(h.knn_query(q, k=K, num_threads=-1)[0], truth), 4)
    res["build_seconds_incl_save"] = round(build, 1)
    return res


if __name__ == "__main__":
    sys.exit(main())
