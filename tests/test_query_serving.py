"""Serving queries: which graph encodes them (--query-encoder auto|full|shallow, Engine.open(query_encoder=...))
and the query-embedding cache (keys, LRU eviction, stats, thread safety), on the tiny exported model.

The "shallow" graph here is a stand-in: the export's own fp32 graph listed as the int8 query graph. It runs
different numbers from the int8 document graph, so which graph encoded a query is visible in its vector;
distilling a real one is tests/test_distill_query.py's job.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hce_serve import Encoder, Engine
from hce_serve.cli import main
from hce_serve.errors import ConfigError, FormatError
from hce_serve.qcache import QueryCache, query_key_function

from helpers import with_stand_in_query_graph  # noqa: E402 - tests/ is on sys.path (conftest)

pytest.importorskip("hnswlib")
QUERIES = ["protein enzyme binding", "climate ocean warming", "vaccine immune response", "soil crop nitrogen"]


def cli(*args: object, code: int = 0) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res.stdout if code == 0 else res.output


@pytest.fixture(scope="module")
def paired(tiny_export, tiny_beir, tmp_path_factory) -> tuple[Path, Path]:
    """(index over an export that has a query graph, index over one that has none)."""
    root = tmp_path_factory.mktemp("qserve")
    export = with_stand_in_query_graph(tiny_export, root / "export")
    Engine.build(export, tiny_beir / "corpus.jsonl", root / "with")
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", root / "without")
    return root / "with", root / "without"


def test_serving_picks_the_query_graph_and_full_overrides(paired, tiny_export):
    with_q, _ = paired
    fp32, int8 = Encoder(tiny_export, variant="fp32"), Encoder(tiny_export, variant="int8")
    with Engine.open(with_q, query_cache=0) as auto, Engine.open(with_q, query_encoder="full", query_cache=0) as full:
        st = auto.stats()["encoder"]
        assert st["loaded"] is False  # known from the card before onnxruntime loads
        assert (st["query_encoder"], st["query_graph"], st["graph"], st["query_layers"]) == (
            "shallow", "query_model_int8.onnx", "model_int8.onnx", 1)
        q_auto, q_full = auto.query_vectors(QUERIES), full.query_vectors(QUERIES)
        np.testing.assert_allclose(q_auto, fp32.encode_queries(QUERIES), atol=1e-6)  # the query graph
        np.testing.assert_allclose(q_full, int8.encode_queries(QUERIES), atol=1e-6)  # the document graph
        assert np.abs(q_auto - q_full).max() > 1e-5  # int8 vs fp32: apart by far more than 1e-6
        d = ["a protein document"]  # documents always go through the full graph
        np.testing.assert_allclose(auto.encoder.encode_documents(d), full.encoder.encode_documents(d), atol=1e-6)
        assert full.stats()["encoder"]["query_encoder"] == "full" and auto.stats()["encoder"]["loaded"]
        # Both serve the same index, so the two can be compared query by query.
        assert len(auto.search(QUERIES[0], k=64)) == len(full.search(QUERIES[0], k=64)) == 64


def test_cli_query_encoder_flag_and_stats(paired):
    with_q, _ = paired
    stats = json.loads(cli("index", "stats", "--index", with_q))
    assert stats["encoder"]["query_encoder"] == "shallow" and stats["query_cache"]["capacity"] > 0
    shallow = json.loads(cli("search", "--index", with_q, "protein enzyme", "--k", "5", "--json"))
    full = json.loads(cli("search", "--index", with_q, "protein enzyme", "--k", "5", "--json", "--query-encoder",
                          "full"))
    assert [h["score"] for h in shallow["hits"]] != [h["score"] for h in full["hits"]]
    forced = json.loads(cli("search", "--index", with_q, "protein enzyme", "--k", "5", "--json",
                            "--query-encoder", "shallow", "--query-cache", "0"))
    assert forced == shallow
    assert "is not one of" in cli("search", "--index", with_q, "x", "--query-encoder", "deep", code=2)


def test_an_export_without_a_query_model_still_serves(paired, tiny_beir):
    _, without = paired
    with Engine.open(without) as eng:
        assert eng.stats()["encoder"]["query_encoder"] == "full" and len(eng.search("protein", k=3)) == 3
    with pytest.raises(FormatError, match="no shallow int8 query graph"):
        Engine.open(without, query_encoder="shallow")  # at open, from the card: not at the first query
    with pytest.raises(ConfigError, match="query_encoder must be one of"):
        Engine.open(without, query_encoder="deep")
    assert len(json.loads(cli("search", "--index", without, "protein", "--k", "3", "--json"))["hits"]) == 3
    for argv in (["search", "--index", without, "protein"],
                 ["eval", "--index", without, "--queries", tiny_beir / "queries.jsonl", "--qrels",
                  tiny_beir / "qrels" / "test.tsv"],
                 ["http", "--index", without, "--read-only", "--port", "0"]):
        err = cli(*argv, "--query-encoder", "shallow", code=1)
        assert err.startswith("Error: ") and "no shallow int8 query graph" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_cache_hit_returns_the_same_hits_as_a_miss(paired):
    with_q, _ = paired
    with Engine.open(with_q, query_cache=16) as eng, Engine.open(with_q, query_cache=0) as plain:
        miss = eng.search(QUERIES[0], k=10)
        first = eng.query_cache.stats()
        assert (first["hits"], first["misses"], first["size"]) == (0, 1, 1)
        hit = eng.search("  protein   enzyme\tbinding ", k=10)  # the same text to the tokenizer
        assert hit == miss == plain.search(QUERIES[0], k=10)
        st = eng.stats()["query_cache"]
        assert (st["hits"], st["misses"], st["size"], st["hit_rate"]) == (1, 1, 1, 0.5)
        batch = eng.search_batch([QUERIES[0], QUERIES[1], QUERIES[1]], k=5)  # a repeat inside one batch
        assert batch[1] == batch[2] and eng.query_cache.stats()["size"] == 2
        cached = eng.query_vectors(QUERIES[:2])
        cached += 1.0  # the caller's copy: the cache's rows are untouched
        np.testing.assert_allclose(eng.query_vectors(QUERIES[:2]), plain.query_vectors(QUERIES[:2]), atol=1e-6)
    assert plain.stats()["query_cache"] == {"capacity": 0, "size": 0, "hits": 0, "misses": 0, "hit_rate": None,
                                            "evictions": 0}


def test_lru_evicts_the_least_recently_used_at_capacity():
    cache = QueryCache(2)
    rows = np.eye(3, dtype=np.float32)  # (3, 3)
    cache.put_many(["a", "b"], rows[:2])
    assert cache.get_many(["a"])[0] is not None  # "a" is now the most recent
    cache.put_many(["c"], rows[2:])
    got = cache.get_many(["a", "b", "c"])
    assert got[1] is None and np.array_equal(got[0], rows[0]) and np.array_equal(got[2], rows[2])
    assert cache.stats() == {"capacity": 2, "size": 2, "hits": 3, "misses": 1, "hit_rate": 0.75, "evictions": 1}
    with pytest.raises(ValueError):
        got[0][0] = 5.0  # stored rows are read-only
    with pytest.raises(ConfigError):
        QueryCache(-1)


def test_keys_differ_across_query_encoders_sharing_one_cache(paired):
    with_q, _ = paired
    shared = QueryCache(8)
    with Engine.open(with_q, query_cache=shared) as shallow, Engine.open(with_q, query_encoder="full",
                                                                         query_cache=shared) as full:
        a, b = shallow.query_vectors(QUERIES[:1]), full.query_vectors(QUERIES[:1])
        assert np.abs(a - b).max() > 1e-5 and shared.stats()["misses"] == 2 and len(shared) == 2
        assert shallow.encoder.query_identity != full.encoder.query_identity
        np.testing.assert_array_equal(full.query_vectors(QUERIES[:1]), b)
        assert shared.stats()["hits"] == 1


def test_query_keys_follow_the_tokenizer(tiny_export):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    enc = Encoder(tiny_export)  # tiny BERT: uncased (lowercases, strips accents), splits on whitespace
    key = enc.query_key
    assert key("Protein  Fólding\u3000 ") == key("protein folding")
    assert key("a\x1cb") != key("a b")  # BERT deletes U+001C; Python's split() would have made it a space
    assert key("[MASK] protein") != key("[mask] protein")  # a special token is matched before lowercasing
    assert enc._tok_q.encode("[MASK] protein").ids != enc._tok_q.encode("[mask] protein").ids
    cased = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    cased.normalizer, cased.pre_tokenizer = normalizers.NFC(), pre_tokenizers.WhitespaceSplit()
    key = query_key_function(cased)
    assert key("US  news") == key("US news") != key("us news")
    spaced = Tokenizer(models.BPE())
    spaced.pre_tokenizer = pre_tokenizers.ByteLevel()  # spaces are tokens: the text is kept as it is
    assert query_key_function(spaced)("a  b") != query_key_function(spaced)("a b")


def test_concurrent_searches_share_the_cache_safely(paired):
    with_q, _ = paired
    texts = [f"{w} {v}" for w in ("protein", "climate", "brain", "market") for v in ("growth", "signal", "price")]
    with Engine.open(with_q, query_cache=0) as plain:
        want = {t: plain.search(t, k=5) for t in texts}
    with Engine.open(with_q, query_cache=5) as eng:  # smaller than the working set: evictions race with hits
        errors: list[str] = []

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            for _ in range(60):
                t = texts[int(rng.integers(len(texts)))]
                if eng.search(t, k=5) != want[t]:
                    errors.append(t)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        st = eng.query_cache.stats()
    assert errors == []
    assert st["hits"] + st["misses"] == 360 and st["hits"] > 0 and st["size"] <= 5 and st["evictions"] > 0


def test_http_stats_report_the_encoder_and_the_cache(paired):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hce_serve.http import create_app

    with_q, _ = paired
    with Engine.open(with_q) as eng, TestClient(create_app(eng)) as c:
        for _ in range(3):
            assert c.post("/search", json={"query": "protein enzyme", "k": 3}).status_code == 200
        st = c.get("/stats").json()
    assert st["encoder"]["query_encoder"] == "shallow" and st["encoder"]["query_graph"] == "query_model_int8.onnx"
    assert (st["query_cache"]["hits"], st["query_cache"]["misses"], st["query_cache"]["size"]) == (2, 1, 1)
    assert str(with_q) not in json.dumps(st)  # still no filesystem path
