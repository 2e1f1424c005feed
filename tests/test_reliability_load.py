"""Short version of tests/reliability/loadtest.py: concurrent searches, adds and deletes against a real server."""

from __future__ import annotations

import pytest

pytest.importorskip("hnswlib")

from hce_serve.beir import iter_corpus, load_queries  # noqa: E402
from hce_serve.engine import Engine  # noqa: E402
from hce_serve.index import IndexParams  # noqa: E402

from reliability import loadtest  # noqa: E402


def test_mixed_load_no_errors_no_deleted_hits(tiny_export, tiny_beir, tmp_path):
    idx = tmp_path / "idx"
    # exact_threshold=0: searches go through hnswlib, the path that is unsafe under concurrent inserts.
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", idx, IndexParams(M=8, ef_construction=64, exact_threshold=0))
    docs = {d.id: d.full_text for d in iter_corpus(tiny_beir / "corpus.jsonl")}
    queries = list(load_queries(tiny_beir / "queries.jsonl").values())
    res = loadtest.run(idx, docs, queries, requests=600, seconds=6.0, concurrency=8, seed=0, k_choices=(10, 100))
    assert res["server_alive"] and not res["server_traceback"], res["server_stderr_tail"]
    assert res["server_errors_5xx"] == 0 and res["transport_errors"] == 0, res["status"]
    assert res["invariant_violations"] == 0, res["violation_examples"]
    assert res["status"].get("200", 0) == res["requests"] > 50
    assert res["deleted_during_run"] > 0 and res["hits_checked"] > 0
    assert res["final_live_server"] == res["final_live_expected"]


def test_invariant_flags_a_deleted_hit():
    inv = loadtest.Invariant({"a": "x", "b": "y"})
    inv.deleted_at["a"] = 1.0
    inv.check([{"id": "a", "score": 1.0}], sent=2.0)  # delete acknowledged before the search was sent
    inv.check([{"id": "b", "score": 1.0}], sent=2.0)
    inv.add_sent_at["a"] = 1.5  # re-added after the delete: may be returned again
    inv.check([{"id": "a", "score": 1.0}], sent=2.0)
    inv.check([{"id": "zzz", "score": 1.0}], sent=2.0)
    assert len(inv.violations) == 2
