"""The benchmark scripts' core functions on tiny inputs, so the scripts keep running as the code changes.

Each check asserts a property the benchmark's numbers rely on (recall of an exact run is 1, deletions are
never returned, the new/seen split is exact), not just that nothing raised.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

pytest.importorskip("hnswlib")


def test_index_scale_small(monkeypatch):
    from benchmarks import index_scale as m

    monkeypatch.setattr(m, "EFS", (10, 200))
    x = m.clustered(500, 16, 10, 0)
    assert x.shape == (500, 16) and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    args = argparse.Namespace(queries=40, clusters=20, seed=0, M=16, ef_construction=100, latency_queries=10,
                              delete_at={2000}, delete_ef=100)
    res = m.run_size(2000, args)
    ours, raw = res["hce_index"]["sweep"], res["raw_hnswlib"]["sweep"]
    assert [s["ef"] for s in ours] == [10, 200]
    assert ours[-1]["recall@10"] >= 0.95 and raw[-1]["recall@10"] >= 0.95  # 2k vectors at ef 200: near exact
    assert ours[-1]["recall@10"] >= ours[0]["recall@10"] - 1e-9  # a wider beam never loses recall here
    dels = res["deletions"]
    assert [d["deleted_fraction"] for d in dels] == [0.1, 0.3, 0.5]
    assert [d["live"] for d in dels] == [1800, 1400, 1000]
    assert all(d["compacted"]["recall@10"] >= 0.9 for d in dels)


def test_recall_dense_runs_and_bm25(tiny_beir):
    from benchmarks.bm25 import bm25_run
    from benchmarks.recall import dense_runs
    from hce_serve.beir import load_beir
    from hce_serve.metrics import evaluate

    data = load_beir(tiny_beir, "test")
    run, cfg = bm25_run(data.corpus, data.queries, k=10)
    assert cfg["library"] == "bm25s" and set(run) == set(data.queries)
    assert evaluate(data.qrels, run)["ndcg@10"] > 0.3  # topic words overlap: BM25 must find most targets

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((300, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:5] + 0.01
    ids = [f"d{i}" for i in range(300)]
    runs = dense_runs(emb, q, ids, [f"q{i}" for i in range(5)], efs=(200,))
    exact, _ = runs["exact"]
    assert max(exact["q3"], key=exact["q3"].get) == "d3"  # a query next to d3 finds d3 first
    assert runs["hnsw-ef200"][1]["recall@10_vs_exact"] >= 0.95


def test_recall_eval_dataset_tiny_export(tiny_beir, tiny_export):
    from benchmarks.recall import eval_dataset
    from hce_serve.beir import load_beir

    data = load_beir(tiny_beir, "test")
    rows = eval_dataset("tiny", data, {"tiny": tiny_export}, ("int8", "fp32"), threads=1, bm25=False, cache=False)
    assert {(r["variant"], r["search"]) for r in rows} == {(v, s) for v in ("int8", "fp32")
                                                           for s in ("exact", "hnsw-ef100", "hnsw-ef200")}
    assert all(0.0 <= r["ndcg@10"] <= 1.0 for r in rows)


def test_incremental_split_and_groups(tiny_beir, tmp_path):
    from benchmarks.incremental import query_groups, split_corpus, write_folder
    from hce_serve.beir import load_beir, load_corpus, load_qrels, load_queries

    corpus = load_corpus(tiny_beir / "corpus.jsonl")
    qrels = {s: load_qrels(tiny_beir / "qrels" / f"{s}.tsv") for s in ("train", "test")}
    seen, new = split_corpus(corpus, qrels, 0.25, None, seed=1)
    assert len(new) == 16 and len(seen) == 48 and not {d.id for d in seen} & {d.id for d in new}
    folder = write_folder(tmp_path / "seen", seen, load_queries(tiny_beir / "queries.jsonl"), qrels)
    written = load_beir(folder, "train")
    assert {d.id for d in written.corpus} == {d.id for d in seen}
    assert all(d in {x.id for x in seen} for ds in written.qrels.values() for d in ds)  # no withheld positive
    groups = query_groups(qrels["test"], {d.id for d in new})
    new_ids = {d.id for d in new}
    assert all(all(d in new_ids for d in ds) for ds in groups["new"].values())
    assert all(not any(d in new_ids for d in ds) for ds in groups["seen"].values())
    assert sum(len(g) for g in groups.values()) == len(qrels["test"])


def test_latency_timing_and_http(tiny_export, tmp_path):
    from benchmarks.latency import measure_http, timed_interleaved
    from hce_serve.encoder import Encoder
    from hce_serve.index import Index, IndexParams
    from hce_serve.store import IndexStore

    one, pooled_one = timed_interleaved({"x": lambda i: sum(range(100))}, n=20, repeats=2, warmup=2)
    stats, samples = one["x"], pooled_one["x"]
    assert stats["repeats"] == 2 and len(samples) == 40 and stats["p50_ms"] <= stats["p99_ms"]
    calls: list[tuple[str, int]] = []
    both, pooled = timed_interleaved({"a": lambda i: calls.append(("a", i)), "b": lambda i: calls.append(("b", i))},
                                     n=20, repeats=2, warmup=0)
    assert {k: len(v) for k, v in pooled.items()} == {"a": 40, "b": 40} and both["a"]["interleaved"]
    assert calls[:4] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # rounds of n/ROUNDS calls, systems in turn

    enc = Encoder(tiny_export, threads=1)
    texts = [f"protein fold {i}" for i in range(40)]
    index = Index(enc.dim, IndexParams(exact_threshold=0), capacity=40)
    index.add([f"d{i}" for i in range(40)], enc.encode_documents(texts))
    IndexStore.create(tmp_path / "idx", index, tiny_export)
    res, pooled = measure_http(tmp_path / "idx", texts[:5], threads=1, n=5, repeats=1, concurrency=[1, 3], total=10)
    assert [x["concurrency"] for x in res["loads"]] == [1, 3] and len(pooled) == 5
    assert all(x["requests"] == 10 and x["qps"] > 0 and x["errors"] == 0 for x in res["loads"])
    assert res["load"]["qps"] == max(x["qps"] for x in res["loads"])


def test_httpload_client_against_a_real_server(tiny_export, tmp_path):
    """The lean load client parses keep-alive answers (JSON bodies, error statuses) like a real client."""
    import asyncio
    import subprocess
    import time

    import httpx

    from benchmarks.httpload import Connection, run_load
    from benchmarks.latency import free_port
    from hce_serve.encoder import Encoder
    from hce_serve.index import Index, IndexParams
    from hce_serve.store import IndexStore

    enc = Encoder(tiny_export, threads=1)
    index = Index(enc.dim, IndexParams(), capacity=8)
    index.add([f"d{i}" for i in range(8)], enc.encode_documents([f"protein fold {i}" for i in range(8)]))
    IndexStore.create(tmp_path / "idx", index, tiny_export)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "hce_serve.cli", "-q", "http", "--index", str(tmp_path / "idx"),
                             "--port", str(port), "--read-only", "--threads", "1"], stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)

        async def one() -> tuple:
            c = await Connection("127.0.0.1", port).open()
            try:
                ok = await c.send(c.post_bytes("/search", b'{"query": "protein", "k": 3}'))
                bad = await c.send(c.post_bytes("/search", b'{"query": "", "k": 3}'))
                again = await c.send(c.post_bytes("/search", b'{"query": "fold", "k": 2}'))  # same connection
            finally:
                c.close()
            return ok, bad, again

        ok, bad, again = asyncio.run(one())
        assert ok[0] == 200 and len(json.loads(ok[1])["hits"]) == 3
        assert bad[0] == 400 and "detail" in json.loads(bad[1])
        assert again[0] == 200 and len(json.loads(again[1])["hits"]) == 2
        res = asyncio.run(run_load("127.0.0.1", port, [{"query": "protein", "k": 5}, {"query": "", "k": 5}], 2, 10))
        assert res["status"] == {200: 5, 400: 5} and len(res["latencies"]) == 10 and res["bad_bodies"] == 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_export_cache_is_invalidated_by_a_new_int8_recipe(tiny_bert, tmp_path, monkeypatch):
    """A cached benchmark export is reused only for the same source *and* the same default int8 recipe:
    one made before the recipe changed once served stale numbers under the new recipe's name."""
    import hce_export.api
    from benchmarks import recall
    from hce_export import quantize

    monkeypatch.setattr(recall, "CACHE", tmp_path)
    calls = []
    real_export = hce_export.api.export
    monkeypatch.setattr(hce_export.api, "export", lambda *a, **k: calls.append(1) or real_export(*a, **k))
    first = recall.ensure_export("tiny", tiny_bert)
    assert recall.ensure_export("tiny", tiny_bert) == first and len(calls) == 1  # cached
    real_settings = quantize.settings_for
    monkeypatch.setattr(quantize, "settings_for",
                        lambda *a, **k: real_settings(*a, **{**k, "keep_ffn_out": False}))
    assert recall.ensure_export("tiny", tiny_bert) == first and len(calls) == 2  # recipe changed: re-exported
