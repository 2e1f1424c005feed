"""Short version of tests/reliability/loadtest.py: concurrent searches (dense, lexical and hybrid), adds and
deletes against a real server."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("hnswlib")

from hce_serve.engine import Engine  # noqa: E402
from hce_serve.formats.beir import iter_corpus, load_queries  # noqa: E402
from hce_serve.options import IndexParams  # noqa: E402

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
    assert res["errors"] == 0 and res["invariant_violations"] == 0, (res["status"], res["violation_examples"])
    # Each mode ran, without an error, and none returned a deleted document (the folder has its lexical part).
    assert set(res["by_mode"]) == {"hybrid", "dense", "lexical"}
    for mode, m in res["by_mode"].items():
        assert m["requests"] > 0 and m["errors"] == 0 and m["invariant_violations"] == 0, (mode, m)
    assert res["by_mode"]["hybrid"]["requests"] > res["by_mode"]["dense"]["requests"] // 2
    assert res["by_mode"]["hybrid"]["hits_checked"] > 0 and res["by_mode"]["lexical"]["hits_checked"] > 0
    # Every request succeeded, except gets of deleted documents, which are answered 404 by design.
    assert res["status"].get("200", 0) + res["gets_not_found"] == res["requests"] > 50
    assert res["deleted_during_run"] > 0 and res["hits_checked"] > 0 and res["gets_checked"] > 0
    assert res["final_live_server"] == res["final_live_expected"]


def test_hybrid_only_load_on_deleted_texts(tiny_export, tiny_beir, tmp_path):
    """Hybrid searches alone, with each deleted document's own text as the query half the time: the lexical
    side would rank that document first if its postings leaked it."""
    idx = tmp_path / "idx"
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", idx, IndexParams(M=8, ef_construction=64, exact_threshold=0))
    docs = {d.id: d.full_text for d in iter_corpus(tiny_beir / "corpus.jsonl")}
    queries = list(load_queries(tiny_beir / "queries.jsonl").values())
    res = loadtest.run(idx, docs, queries, requests=300, seconds=5.0, concurrency=4, seed=1, k_choices=(5, 100),
                       search_modes={"hybrid": 1.0})
    assert res["server_alive"] and res["errors"] == 0 and res["server_errors_5xx"] == 0, res["status"]
    assert res["invariant_violations"] == 0, res["violation_examples"]
    assert list(res["by_mode"]) == ["hybrid"] and res["by_mode"]["hybrid"]["hits_checked"] > 0
    assert res["deleted_during_run"] > 0


def test_search_modes_option():
    assert loadtest.parse_modes("hybrid=2,dense") == {"hybrid": 2.0, "dense": 1.0}
    for bad in ("fuzzy=1", "hybrid=x", "hybrid=0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            loadtest.parse_modes(bad)


def test_invariant_flags_a_deleted_hit():
    inv = loadtest.Invariant({"a": "x", "b": "y"})
    inv.deleted_at["a"] = 1.0
    inv.check([{"id": "a", "score": 1.0}], sent=2.0)  # delete acknowledged before the search was sent
    inv.check([{"id": "b", "score": 1.0}], sent=2.0)
    inv.add_sent_at["a"] = 1.5  # re-added after the delete: may be returned again
    inv.check([{"id": "a", "score": 1.0}], sent=2.0)
    assert inv.check([{"id": "zzz", "score": 1.0}], sent=2.0, mode="hybrid") == 1
    assert len(inv.violations) == 2 and inv.violations[-1] == "hybrid search: unknown id 'zzz' returned"


def test_invariant_flags_a_deleted_document_served_by_get_and_a_lost_one():
    inv = loadtest.Invariant({"a": "x", "b": "y"})  # both acknowledged at the start
    inv.deleted_at["a"], inv.delete_sent_at["a"] = 1e9 + 1.0, 1e9 + 0.5
    inv.check_get("a", 200, {"_id": "a"}, sent=1e9 + 2.0)  # violation: deleted before the get was sent
    inv.check_get("a", 200, {"_id": "a"}, sent=1e9 + 0.9)  # sent before the delete was acknowledged: fine
    inv.check_get("a", 404, None, sent=1e9 + 2.0)  # deleted: fine
    inv.check_get("b", 404, None, sent=1e9 + 2.0)  # violation: acknowledged, never deleted, yet gone
    inv.check_get("b", 200, {"_id": "a"}, sent=1e9 + 2.0)  # violation: another document
    inv.delete_sent_at["b"] = 1e9 + 3.0
    inv.check_get("b", 404, None, sent=1e9 + 2.5)  # a delete sent since (may land first): fine
    inv.add_sent_at["a"], inv.add_acked_at["a"] = 1e9 + 4.0, 1e9 + 5.0
    inv.check_get("a", 200, {"_id": "a"}, sent=1e9 + 6.0)  # re-added: fine
    inv.check_get("a", 404, None, sent=1e9 + 6.0)  # violation: the re-add was acknowledged
    assert inv.checked_gets == 8 and len(inv.violations) == 4, inv.violations
