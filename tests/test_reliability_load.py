"""Short version of tests/reliability/loadtest.py: concurrent searches, adds and deletes against a real server."""

from __future__ import annotations

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
    assert res["invariant_violations"] == 0, res["violation_examples"]
    # Every request succeeded, except gets of deleted documents, which are answered 404 by design.
    assert res["status"].get("200", 0) + res["gets_not_found"] == res["requests"] > 50
    assert res["deleted_during_run"] > 0 and res["hits_checked"] > 0 and res["gets_checked"] > 0
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
