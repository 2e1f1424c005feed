"""The Python API: Engine.open/search/search_batch/add/delete/get, Encoder.encode, filters against brute
force, subtree search and the tree's leaf rule, and the README's example run as written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from hce_serve import DataError, Document, Encoder, Engine, Hit
from hce_serve.formats.tree import Tree

pytest.importorskip("hnswlib")
ROOT = Path(__file__).resolve().parents[1]


def tagged_corpus(tiny_beir: Path, path: Path) -> Path:
    """The tiny corpus with metadata: topic (8 values), n (0-7), even (bool), tags (a list)."""
    rows = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    for r in rows:
        topic, n = r["_id"].split("-")
        r["metadata"] = {"topic": topic, "n": int(n), "even": int(n) % 2 == 0, "tags": [topic[0], f"n{n}"]}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tagged(tiny_export, tiny_beir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("engine")
    Engine.build(tiny_export, tagged_corpus(tiny_beir, root / "corpus.jsonl"), root / "idx")
    return root / "idx"


@pytest.fixture
def writable(tagged, tmp_path):
    shutil.copytree(tagged, tmp_path / "idx")
    with Engine.open(tmp_path / "idx", writable=True) as eng:
        yield eng


def brute_force(eng: Engine, query: str, keep, k: int) -> list[str]:
    """The exact top-k among the stored documents for which keep(metadata) holds."""
    ids = [i for i in eng.ids() if keep(eng.get(i).metadata)]
    scores = eng.store.index.get_vectors(ids) @ eng.encoder.encode_queries([query])[0]
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def test_readme_python_example_runs_as_written(tagged, tiny_export, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\n.*?```python\n(.*?)```", readme, re.S)
    assert block, "README.md lost its '## Python API' example"
    shutil.copytree(tagged, tmp_path / "idx")  # the example opens "idx" (and its encoder copy)
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block.group(1), "README.md", "exec"), {})
    printed = out.getvalue()
    assert "ocean-1" in printed and "Oceans absorb" in printed and "(2, 32)" in printed


def test_search_returns_hits_with_stored_fields(tagged, tiny_beir):
    corpus = {d["_id"]: d for d in map(json.loads, (tiny_beir / "corpus.jsonl").read_text().splitlines())}
    with Engine.open(tagged) as eng:
        hits = eng.search("protein enzyme binding", k=4)
        assert len(hits) == 4 and all(isinstance(h, Hit) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert all((h.title, h.text) == (corpus[h.id]["title"], corpus[h.id]["text"]) for h in hits)
        assert hits[0].metadata["topic"] == hits[0].id.split("-")[0]
        assert eng.search("protein enzyme binding", k=4, fields=()) == [Hit(h.id, h.score) for h in hits]
        batch = eng.search_batch(["protein enzyme binding", "climate ocean"], k=4)
        assert [h.id for h in batch[0]] == [h.id for h in hits] and len(batch[1]) == 4  # (padded batch: scores ~equal)
        assert [h.score for h in batch[0]] == pytest.approx([h.score for h in hits], abs=1e-4)
        with pytest.raises(DataError, match="list of queries"):
            eng.search_batch("one string", k=3)
        with pytest.raises(DataError, match="k must"):
            eng.search("x", k=0)
        assert eng.get("ghost") is None
        assert eng.get("soil-3") == Document("soil-3", corpus["soil-3"]["title"], corpus["soil-3"]["text"],
                                             {"topic": "soil", "n": 3, "even": False, "tags": ["s", "n3"]})


@pytest.mark.parametrize("flt,keep", [
    ({"topic": "climate"}, lambda m: m["topic"] == "climate"),
    ({"topic": ["climate", "soil"], "even": True}, lambda m: m["topic"] in ("climate", "soil") and m["even"]),
    ({"n": 3.0}, lambda m: m["n"] == 3),  # 3.0 == 3
    ({"tags": ["c", "n7"]}, lambda m: "c" in m["tags"] or "n7" in m["tags"]),  # a list field matches any value
    ({"even": 1}, lambda m: False),  # a number is not a bool
    ({"nope": "x"}, lambda m: False),
])
def test_filters_match_brute_force(tagged, flt, keep):
    # brute force is the dense top-k (inner products), so the vector index's path is asked for explicitly;
    # the folder's default (hybrid) must keep the same filter: only matching documents, as many as k allows
    with Engine.open(tagged) as eng:
        n_keep = sum(keep(eng.get(i).metadata) for i in eng.ids())
        for query in ("protein enzyme", "ocean ice climate", "market price"):
            assert [h.id for h in eng.search(query, k=6, filter=flt, mode="dense")] == brute_force(eng, query, keep, 6)
            hybrid = eng.search(query, k=6, filter=flt)
            assert len(hybrid) == min(6, n_keep) and all(keep(eng.get(h.id).metadata) for h in hybrid)


def test_add_get_delete_and_filters_follow_writes(writable):
    eng = writable
    res = eng.add([Document("new-1", "Ocean", "glacier ice warming", {"topic": "fresh"}),
                   {"_id": "climate-0", "title": "replaced", "text": "market price", "metadata": {"topic": "market"}}])
    assert (res.added, res.replaced, res.empty) == (1, 1, 0)
    assert eng.add({"_id": "single", "text": "one mapping"}).added == 1  # one document without a list
    assert [h.id for h in eng.search("glacier", k=5, filter={"topic": "fresh"})] == ["new-1"]
    assert eng.get("climate-0").metadata == {"topic": "market"}
    assert "climate-0" not in {h.id for h in eng.search("ocean", k=64, filter={"topic": "climate"})}
    assert eng.delete("new-1").deleted == ["new-1"] and eng.get("new-1") is None
    assert eng.search("glacier", k=5, filter={"topic": "fresh"}) == []
    with pytest.raises(DataError, match="more than once"):
        eng.add([{"_id": "x", "text": "a"}, {"_id": "x", "text": "b"}])
    assert eng.add([]).added == 0


def test_read_only_engine_refuses_writes_before_encoding(tagged):
    with Engine.open(tagged) as eng, pytest.raises(Exception, match="read-only"):
        eng.add([{"_id": "x", "text": "y"}])
    with Engine.open(tagged) as eng:
        assert eng._encoder is None  # nothing was encoded: the encoder was never even loaded


def test_encoder_encode_like_sentence_transformers(tiny_export):
    enc = Encoder(tiny_export, variant="fp32")  # int8 scales activations per batch: fp32 is batch-exact
    one = enc.encode("protein enzyme")
    many = enc.encode(["protein enzyme", "climate ocean ice"])
    assert one.shape == (32,) and many.shape == (2, 32) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one, many[0], atol=1e-5)
    np.testing.assert_allclose(enc.encode(["protein enzyme"], query=True), enc.encode_queries(["protein enzyme"]))


def small_tree() -> Tree:
    """root -> {1, 2}; 1 -> {3, 4}; 2 -> {5, 6}. Node 2's centroid is long, node 1's short: their norms
    differ as loose and tight clusters' means do."""
    parent = np.array([-1, 0, 0, 1, 1, 2, 2], np.int32)
    cent = np.array([[0, 0], [0.2, 0.05], [0.3, 0.9], [1, 0.2], [1, -0.2], [0.3, 1], [-0.3, 1]], np.float32)
    return Tree(parent, cent, np.array([3, 4, 5, 6], np.int32), ["a", "b", "c", "d"])


def test_tree_assign_descends_by_cosine_to_normalised_centroids():
    t = small_tree()
    v = np.array([[0.8, 0.6]], np.float32)  # (1, 2); cosine: node 1 (.92) beats node 2 (.82); raw dot: node 2 wins
    assert float(v[0] @ t.centroids[2]) > float(v[0] @ t.centroids[1])
    assert t.assign(v).tolist() == [3]
    assert t.assign(np.array([[0.1, 1.0], [1.0, -1.0]], np.float32)).tolist() == [5, 4]
    assert t.leaves_under(0).tolist() == [3, 4, 5, 6] and t.leaves_under(2).tolist() == [5, 6]
    assert t.leaves_under(4).tolist() == [4]


def test_subtree_search_and_leaves_of_new_documents(tiny_export, tiny_beir, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    ids = [json.loads(line)["_id"] for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    parent = np.array([-1, 0, 0, 1, 1, 2, 2], np.int32)
    cent = rng.standard_normal((7, 32)).astype(np.float32) * rng.uniform(0.2, 2.0, (7, 1)).astype(np.float32)
    Tree(parent, cent, (3 + np.arange(64) % 4).astype(np.int32), ids).save(export)
    Engine.build(export, tiny_beir / "corpus.jsonl", tmp_path / "idx")
    with Engine.open(tmp_path / "idx", writable=True) as eng:
        assert eng.store.index.leaf_of(ids[5]) == 3 + 5 % 4  # documents the tree knows keep their leaf
        under = {i for i in ids if 3 + ids.index(i) % 4 in (3, 4)}  # node 1's subtree
        # the vector index's subtree search against the exact inner products: dense explicitly
        hits = eng.search("protein enzyme", k=10, subtree=1, mode="dense")
        assert len(hits) == 10 and {h.id for h in hits} <= under
        assert {h.id for h in eng.search("protein enzyme", k=10, subtree=1)} <= under  # the default keeps the scope
        query = eng.encoder.encode_queries(["protein enzyme"])[0]
        scores = {i: float(eng.store.index.get_vectors([i])[0] @ query) for i in under}
        assert [h.id for h in hits] == sorted(scores, key=lambda i: -scores[i])[:10]
        assert {h.id for h in eng.search("x y", k=64, subtree=0)} == set(ids)
        eng.add([{"_id": "fresh", "text": "brain neuron cortex"}])
        v = eng.store.index.get_vectors(["fresh"])[0]
        assert eng.store.index.leaf_of("fresh") == int(eng.tree.assign(v[None])[0])  # the tree's own rule
        with pytest.raises(DataError, match="node id between 0 and 6"):
            eng.search("x", subtree=7)


def test_stats_hide_paths_and_do_not_load_the_encoder(tagged):
    with Engine.open(tagged) as eng:
        st = eng.stats()
        assert st["encoder"]["loaded"] is False and st["stores_documents"] is True
        assert str(tagged) not in json.dumps(st) and os.sep not in st["encoder"]["base_model"]
