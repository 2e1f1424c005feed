"""Every study's ``--quick`` mode, end to end through its ``main`` on tiny inputs (a 2-layer random BERT,
64 documents), so the studies keep running as the code changes.

Each test reads the results file the study wrote and asserts a property its published numbers rely on
(recall of the widest beam is near 1, every system was timed, int8 recipes are compared with fp32, the
new/seen split is exact), and that the file names its writer and carries the stamp.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("hnswlib")

from benchmarks.harness import paths, synthetic  # noqa: E402

from helpers import read_result as read  # noqa: E402
from helpers import with_stand_in_query_graph  # noqa: E402 - tests/ is on sys.path (conftest)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Exports and embeddings of this test go to a temporary cache, never to runs/bench."""
    monkeypatch.setattr(paths, "CACHE", tmp_path / "cache")
    return tmp_path / "cache"


def test_index_scale_quick(tmp_path, monkeypatch):
    from benchmarks import index_scale as m

    monkeypatch.setattr(m, "EFS", (10, 200))
    out = tmp_path / "index-scale.json"
    assert m.main(["--quick", "--sizes", "2000", "--queries", "40", "--clusters", "20", "--latency-queries", "10",
                   "--delete-at", "2000", "--out", str(out)]) == 0
    res = read(out, "benchmarks/index_scale.py")["sizes"][0]
    ours, raw = res["hce_index"]["sweep"], res["raw_hnswlib"]["sweep"]
    assert [s["ef"] for s in ours] == [10, 200]
    assert ours[-1]["recall@10"] >= 0.95 and raw[-1]["recall@10"] >= 0.95  # 2k vectors at ef 200: near exact
    assert ours[-1]["recall@10"] >= ours[0]["recall@10"] - 1e-9  # a wider beam never loses recall here
    dels = res["deletions"]
    assert [d["deleted_fraction"] for d in dels] == [0.1, 0.3, 0.5]
    assert [d["live"] for d in dels] == [1800, 1400, 1000]
    assert all(d["compacted"]["recall@10"] >= 0.9 for d in dels)
    assert (tmp_path / "index-scale-recall-latency.png").is_file()


def test_backends_quick(tiny_export, tiny_beir, tmp_path):
    """Local folder vs its milvus-lite export on the tiny corpus: the same hits, both timed."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from benchmarks import backends
    from hce_serve.engine import Engine

    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", tmp_path / "idx")
    out = tmp_path / "backends.json"
    assert backends.main(["--quick", "--index", str(tmp_path / "idx"), "--data", str(tiny_beir),
                          "--latency-queries", "10", "--out", str(out)]) == 0
    res = read(out, "benchmarks/backends.py")
    assert res["queries"] == 16 and res["export"]["exported"] == 64
    assert res["overlap_at_10"] == 1.0 and res["targets"]["met"] == {"overlap_at_10": True, "ndcg_at_10_abs_diff": True}
    assert res["metrics"]["local"] == res["metrics"]["milvus"]  # 64 documents: both searches are exhaustive
    for label in ("ids_only", "with_fields"):
        assert {"local", "milvus"} <= res["latency"][label].keys() and res["latency"][label]["milvus"]["p50_ms"] > 0


def test_tree_build_quick(tmp_path):
    from benchmarks import tree_build

    out = tmp_path / "tree.json"
    assert tree_build.main(["--quick", "--docs", "3000", "--branching", "8", "--out", str(out)]) == 0
    res = read(out, "benchmarks/tree_build.py")["result"]
    assert res["docs"] == 3000 and all(res["checks"].values())
    assert res["tree"]["max_leaf_size"] <= 21 and res["peak_rss_mib"] >= res["rss_after_data_mib"] > 0  # 1.3 x 16


def test_recall_quick_and_its_embedding_cache(tiny_beir, tiny_export, tmp_path, cache):
    from benchmarks import recall

    out = tmp_path / "recall.json"
    argv = ["--quick", "--data", str(tiny_beir), "--base", str(tiny_export), "--variants", "int8,fp32",
            "--threads", "1", "--out", str(out)]
    assert recall.main(argv) == 0
    rows = read(out, "benchmarks/recall.py")["datasets"][tiny_beir.name]["rows"]
    assert {(r["variant"], r["search"]) for r in rows} == {(None, "bm25s")} | {
        (v, s) for v in ("int8", "fp32") for s in ("exact", "hnsw-ef100", "hnsw-ef200", "ivf-sq8-nprobe8",
                                                   "ivf-sq8-nprobe32")}
    assert rows[0]["ndcg@10"] > 0.3  # topic words overlap: BM25 must find most targets
    assert all(r["recall@10_vs_exact"] >= 0.95 for r in rows if r["search"] == "hnsw-ef200")
    assert all(r["encode_seconds"] != "cached" for r in rows[1:])
    assert recall.main(argv) == 0  # the second run reads the embeddings the first one cached
    again = read(out, "benchmarks/recall.py")["datasets"][tiny_beir.name]["rows"]
    assert all(r["encode_seconds"] == "cached" for r in again[1:])
    assert [r["ndcg@10"] for r in again] == [r["ndcg@10"] for r in rows]
    assert (tmp_path / f"recall-{tiny_beir.name}.png").is_file()


def test_latency_quick(tiny_beir, tiny_export, tiny_bert, tmp_path, cache):
    from benchmarks import latency

    out = tmp_path / "latency.json"
    export = with_stand_in_query_graph(tiny_export, tmp_path / "export")
    assert latency.main(["--quick", "--data", str(tiny_beir), "--export", str(export), "--torch-model",
                         str(tiny_bert), "--n", "20", "--repeats", "1", "--n-http", "10", "--http-requests", "20",
                         "--concurrency", "1,3", "--out", str(out)]) == 0
    result = read(out, "benchmarks/latency.py")
    (setting,) = result["settings"]
    systems = ("floor", "hce_engine", "hce_engine_docs", "hce_engine_shallow", "hce_engine_cache_hit", "torch_exact")
    # Peers are optional: timed where sentence-transformers (and fastembed) are installed, else skipped with a reason.
    peer_names = {"st_torch", "st_onnx_fp32", f"st_onnx_int8_{result['peers']['int8_config']}", "fastembed_fp32"}
    encoded = set(setting["threads"]["1"]["peers_encode_p50_over_hce_encode_p50"])
    assert peer_names == set(setting["peers_skipped"]) | encoded
    assert set(setting["threads"]) == {"1", "2"}
    assert setting["query_graphs"] == {"hce_engine": "model_int8.onnx", "hce_engine_shallow": "query_model_int8.onnx"}
    for res in setting["threads"].values():
        for system in systems:
            assert {"end_to_end", "encode_only", "search_only"} <= set(res[system]) and res[system]["batched_qps"] > 0
            assert res[system]["end_to_end"]["n"] == 20 and res[system]["end_to_end"]["p50_ms"] > 0
        # A cache hit skips the encoder: a key and a lookup cost far less than running even the tiny graph.
        assert res["hce_engine_cache_hit"]["encode_only"]["p50_ms"] < res["hce_engine"]["encode_only"]["p50_ms"]
        ratio = res["shallow_over_full_p50"]  # the export has a query graph: the shallow path is timed beside
        assert ratio["end_to_end"] == round(res["hce_engine_shallow"]["end_to_end"]["p50_ms"]
                                            / res["hce_engine"]["end_to_end"]["p50_ms"], 3)
        for peer, ratio in res["peers_encode_p50_over_hce_encode_p50"].items():
            assert res[peer]["encode_only"]["n"] == 20 and ratio > 0 and "end_to_end" not in res[peer]
            assert res["hce_end_to_end_p50_over_peer_encode_p50"][peer] > 0
        loads = res["hce_http"]["loads"]
        assert [x["concurrency"] for x in loads] == [1, 3] and all(x["errors"] == 0 for x in loads)
        assert res["hce_http"]["load"]["qps"] == max(x["qps"] for x in loads)
        assert set(res["ratios_p50_to_floor"]) == {*systems, "hce_http"}
    fidelity = result["fidelity_int8_to_fp32_docs"]
    assert 0.9 < fidelity["hce_int8"]["cos_min"] <= fidelity["hce_int8"]["cos_mean"] <= 1.0 + 1e-6
    if importlib.util.find_spec("sentence_transformers"):
        st8 = fidelity[f"st_onnx_int8_{result['peers']['int8_config']}"]
        assert st8["docs"] == fidelity["hce_int8"]["docs"] > 0 and 0.5 < st8["cos_mean"] <= 1.0 + 1e-6
        assert setting["threads"]["1"]["peers_encode_p50_over_hce_encode_p50"]  # installed: timed
    assert list(cache.glob("hce-lat-*")) == []  # the temporary indexes are gone


def test_export_latency_quick(tiny_bert, tiny_export, tiny_beir, tmp_path):
    from benchmarks import export_latency

    out = tmp_path / "export.json"
    assert export_latency.main(["--quick", "--model", str(tiny_bert), "--export", str(tiny_export), "--data",
                                str(tiny_beir), "--doc-tokens", "16", "--n", "20", "--out", str(out)]) == 0
    speed = read(out, "benchmarks/export_latency.py")["speed"]
    assert speed["docs"] > 10 and abs(speed["docs_tokens_mean"] - 16) <= 1  # cut at the 16th token
    for t in ("1t", "2t"):
        assert set(speed["query_latency"][t]) == set(speed["docs_per_s"][t]) == {"torch", "fp32", "int8"}
        assert all(s["p50_ms"] > 0 and s["thread_cpu_p50_ms"] > 0 for s in speed["query_latency"][t].values())


def test_ort_fusions_quick(tiny_export, tiny_beir, tmp_path):
    from benchmarks import ort_fusions

    out = tmp_path / "fusions.json"
    assert ort_fusions.main(["--quick", "--export", str(tiny_export), "--data", str(tiny_beir), "--n", "10",
                             "--fidelity-docs", "40", "--doc-tokens", "16", "--out", str(out)]) == 0
    r = read(out, "benchmarks/ort_fusions.py")
    assert r["disabled_optimizers"] == ["SkipLayerNormFusion"]
    for key in ("int8_1t", "int8_2t", "fp32_1t", "fp32_2t"):
        assert set(r["query_p50_ms"][key]) == set(r["docs_per_s"][key]) == {"ort_default", "hce"}
        assert all(v > 0 for v in r["query_p50_ms"][key].values()) and r["speedup"][key]["query"] > 0
    assert r["fidelity"]["fp32"]["max_abs_diff_between_configs"] < 1e-4  # the rewrite changes no fp32 number
    assert 0.9 < r["fidelity"]["int8"]["cos_to_fp32"]["hce"]["mean"] <= 1 + 1e-6 and r["fidelity"]["int8"]["docs"] == 40
    assert sum(r["profile_int8_1t_us_per_query"]["hce"].values()) > 0


def test_int8_study_quick(tiny_bert, tiny_beir, tmp_path, cache, monkeypatch):
    from benchmarks import int8_study
    from hce_serve import cpu

    monkeypatch.setattr(cpu, "int8_isa", lambda: "avx2")  # the default keeps the FFN output projections fp32
    out = tmp_path / "int8.json"
    assert int8_study.main(["--quick", "--model", str(tiny_bert), "--datasets", str(tiny_beir), "--work",
                            str(tmp_path / "work"), "--latency-n", "20", "--out", str(out)]) == 0
    res = read(out, "benchmarks/int8_study.py")
    assert res["recipes"]["all"]["keep_ffn_out"] is False and res["recipes"]["u8u8"]["weight_type"] == "quint8"
    assert res["default_is"] == "ffn-fp32" and "ffn-fp32" not in res["recipes"]  # measured once, as default
    early = res["recipes"]["early"]  # the 2-layer tiny model: fp32 FFN output projection in layer 0 and 1 only
    assert early["fp32_layers"] == [0, 1, 2] and res["recipes"]["default"]["fp32_layers"] is None
    assert len(early["excluded_nodes"]) == len(res["recipes"]["default"]["excluded_nodes"]) == 2
    variants = res["datasets"][tiny_beir.name]["variants"]
    assert list(variants) == ["fp32", "default", "all", "u8u8", "early"] and "doc_cos_mean" not in variants["fp32"]
    for v in ("default", "all", "u8u8", "early"):
        assert 0.0 < variants[v]["top10_overlap"] <= 1.0 and -1.0 <= variants[v]["doc_cos_min"] <= 1.0
        loss = 100 * (variants["fp32"]["ndcg@10"] - variants[v]["ndcg@10"])
        assert variants[v]["ndcg10_loss_points"] == pytest.approx(loss, abs=1e-3)
    assert res["query_latency_1t"]["fp32"]["speedup_vs_fp32"] == 1.0
    assert (tmp_path / "int8-ndcg.png").is_file()


def test_incremental_split_and_groups(tiny_beir, tmp_path):
    from benchmarks.incremental import query_groups, split_corpus, write_folder
    from hce_serve.formats.beir import load_beir, load_corpus, load_qrels, load_queries

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


def test_incremental_quick(tiny_beir, tiny_bert, tmp_path, cache):
    from benchmarks import incremental

    out = tmp_path / "incremental.json"
    assert incremental.main(["--quick", "--data", str(tiny_beir), "--base", str(tiny_bert), "--steps", "1",
                             "--batch", "4", "--doc-max-length", "32", "--work", str(tmp_path / "work"),
                             "--out", str(out)]) == 0
    res = read(out, "benchmarks/incremental.py")
    assert res["seen_docs"] + res["new_docs"] == 64 and res["new_docs"] == 13
    assert set(res["models"]) == {"hce-80-then-add", "hce-all-docs", "zero-shot"}
    added = res["models"]["hce-80-then-add"]
    assert added["add"]["added"] == res["new_docs"] and "metrics" in added and "before_add" in added
    assert res["deletion"]["after_delete"]["deleted_ids_returned"] == 0
    assert res["deletion"]["after_compact"]["deleted_ids_returned"] == 0


def test_demo_result(tmp_path, capsys):
    from benchmarks import demo

    evals = {"base": {"ndcg@10": 0.62, "recall@10": 0.77, "mrr@10": 0.58}, "hce": {"ndcg@10": 0.66, "recall@10": 0.79,
                                                                                   "mrr@10": 0.62}}
    for name, e in evals.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(e))
    model, export = tmp_path / "model", tmp_path / "export"
    model.mkdir()
    export.mkdir()
    (model / "hce_model.json").write_text(json.dumps({"tree": {"levels": 2, "nodes": 9, "max_branching": 4}}))
    (model / "train_config.json").write_text(json.dumps({"data": "demo/data/scifact", "max_steps": 24, "seed": 0}))
    (export / "hce_model.json").write_text(json.dumps({"onnx": {"validation": {"int8_vs_fp32_min_cos": 0.99}}}))
    results = {f.name: f.stat().st_mtime_ns for f in paths.RESULTS.iterdir()}
    run = ["--base-eval", str(tmp_path / "base.json"), "--hce-eval", str(tmp_path / "hce.json"), "--model", str(model),
           "--export", str(export), "--seconds", "748.4"]
    assert demo.main(run) == 0  # no --out: the demo's own folder, the one holding --model
    out = tmp_path / "demo.json"
    res = read(out, "scripts/demo.sh")
    assert res["zero_shot"] == evals["base"] and res["hce_demo"] == evals["hce"] and res["wall_seconds"] == 748
    assert res["train_budget"]["max_steps"] == 24 and res["tree"]["nodes"] == 9
    table, err = capsys.readouterr()
    assert "ndcg@10" in table and "+4.0p" in table and "recall@100" not in table  # only metrics both evals have
    assert "--record" in err
    assert {f.name: f.stat().st_mtime_ns for f in paths.RESULTS.iterdir()} == results  # the checkout untouched
    # Recording is its own step: the run's record as measured (its stamp too), nothing else.
    assert demo.main(["--record", str(out), "--out", str(tmp_path / "recorded.json")]) == 0
    assert (tmp_path / "recorded.json").read_text() == out.read_text()
    assert {f.name: f.stat().st_mtime_ns for f in paths.RESULTS.iterdir()} == results


def test_demo_record_refuses_what_is_not_a_demo_result(tmp_path, capsys):
    from benchmarks import demo
    from benchmarks.harness import provenance

    other = provenance.write_result(tmp_path / "other.json", {"zero_shot": {}, "hce_demo": {}}, "benchmarks/recall.py")
    (tmp_path / "bad.json").write_text("{not json")
    for run in (other, tmp_path / "bad.json", tmp_path / "missing.json"):
        assert demo.main(["--record", str(run), "--out", str(tmp_path / "rec.json")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and str(run) in err
    assert not (tmp_path / "rec.json").exists()
    for argv in (["--record", str(other), "--seconds", "3"], ["--seconds", "3"]):  # the two steps' options don't mix
        with pytest.raises(SystemExit) as e:
            demo.main(argv)
        assert e.value.code == 2


def test_clustered_vectors_are_unit_and_queries_share_the_centres():
    x = synthetic.clustered(500, 16, 10, seed=0)
    q = synthetic.clustered(50, 16, 10, seed=0, noise_seed=1)
    assert x.shape == (500, 16) and x.dtype == np.float32 and np.allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert np.allclose(synthetic.clustered(500, 16, 10, seed=0), x)  # deterministic for a seed
    # A query's best document is close (same mixture), yet no query is a document.
    best = (q @ x.T).max(axis=1)
    assert best.min() > 0.7 and not np.isclose(best, 1.0, atol=1e-6).any()


def test_pad_encodings_and_cosine_stats():
    from types import SimpleNamespace

    from benchmarks.encoders import cosine_stats, pad_encodings

    ids, mask = pad_encodings([SimpleNamespace(ids=[5, 6, 7]), SimpleNamespace(ids=[9])])
    assert ids.tolist() == [[5, 6, 7], [9, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]] and ids.dtype == np.int64
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [2.0, 2.0]])  # same direction; 45 degrees (unnormalised rows are normalised)
    assert cosine_stats(a, b) == {"mean": round((1 + 0.5**0.5) / 2, 5), "min": round(0.5**0.5, 5)}
