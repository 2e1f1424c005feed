"""Hybrid search on the Milvus backend (issue 29, item 3): the folder's lexical part exported into Milvus
full-text search, searched and fused as the folder does, kept in step by add/delete, and refused in one line
on a collection exported without it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from hce_serve import Document
from hce_serve.cli import main
from hce_serve.engine import Engine
from hce_serve.errors import DataError, FormatError, VersionError
from hce_serve.formats.tree import Tree

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")
pytest.importorskip("onnxruntime")
pytest.importorskip("Stemmer")

from hce_serve.lexical.analyzer import Analyzer  # noqa: E402
from hce_serve.lexical.bm25 import BM25Params  # noqa: E402
from hce_serve.milvus.layout import CollectionManifest, VectorIndex  # noqa: E402
from hce_serve.milvus.lexical import LexicalSpec  # noqa: E402
from hce_serve.milvus.store import MilvusStore  # noqa: E402

RARE = "zyxqwvorange"
QUERIES = ["cells and proteins", "running runners ran", f"odd {RARE}", "topic 3 number 12", "the of and"]


def run(*args: object, code: int = 0) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.stdout if code == 0 else res.stderr


@pytest.fixture(scope="module")
def exported(tiny_export, tmp_path_factory):
    """A folder with its lexical part over an export with a two-level tree, and its Milvus copy (one .db holding
    the collection with the lexical side, ``docs``, and one exported without it, ``dense``)."""
    root = tmp_path_factory.mktemp("milvus-hybrid")
    export = root / "export"
    shutil.copytree(tiny_export, export)
    rows = [{"_id": f"d{i}", "title": f"topic {i % 7}",
             "text": f"common words about cells and proteins number {i}" + (" runners running" if i % 5 == 0 else ""),
             "metadata": {"group": "a" if i % 2 else "b"}} for i in range(40)]
    rows.append({"_id": "rare", "title": "odd one", "text": f"the only document with {RARE} in it",
                 "metadata": {"group": "b"}})
    rows.append({"_id": "rare2", "title": "odd two", "text": f"{RARE} again, in group a", "metadata": {"group": "a"}})
    (root / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cent = np.random.default_rng(0).standard_normal((7, 32)).astype(np.float32)
    Tree(np.array([-1, 0, 0, 1, 1, 2, 2], np.int32), cent, (3 + np.arange(len(rows)) % 4).astype(np.int32),
         [r["_id"] for r in rows]).save(export)
    Engine.build(export, root / "corpus.jsonl", root / "idx")
    db = root / "x.db"
    out = json.loads(run("index", "export-milvus", "--index", root / "idx", "--uri", db, "--collection", "docs"))
    assert out["exported"] == 42 and out["mode"] == "hybrid"
    assert out["lexical"]["analyzer"]["language"] == "english" and out["lexical"]["bm25"] == {"k1": 1.5, "b": 0.75}
    with Engine.open(root / "idx") as local:
        from hce_serve.milvus.export import export_index
        from hce_serve.milvus.layout import MilvusTarget

        dense = export_index(local, MilvusTarget(str(db), "dense"), lexical=False)
    assert dense["lexical"] is None and dense["mode"] == "dense"
    return root


@pytest.fixture
def remote(exported, tmp_path):
    """A writable Engine on a private copy of the .db (milvus-lite serves one process per file)."""
    shutil.copytree(exported, tmp_path / "r", ignore=shutil.ignore_patterns("idx", "corpus.jsonl"))
    eng = Engine.open_milvus(str(tmp_path / "r" / "x.db"), "docs", tmp_path / "r" / "export", writable=True)
    yield eng
    eng.close()


def ids(hits) -> list[str]:
    return [h.id for h in hits]


def test_lexical_and_hybrid_answer_as_the_folder_does(exported, remote):
    """Same terms, same statistics (one segment), same scores: every mode, filter and subtree agrees."""
    assert remote.search_defaults.mode == "hybrid" and remote.store.lexical is not None
    with Engine.open(exported / "idx") as local:
        for q in QUERIES:
            for flt in (None, {"group": "a"}):
                for subtree in (None, 2):
                    for mode in ("lexical", "hybrid"):
                        for fusion in (("minmax", "rrf", "dbsf") if mode == "hybrid" else ("minmax",)):
                            a = local.search(q, k=8, mode=mode, fusion=fusion, filter=flt, subtree=subtree,
                                             explain=True)
                            b = remote.search(q, k=8, mode=mode, fusion=fusion, filter=flt, subtree=subtree,
                                              explain=True)
                            where = (q, flt, subtree, mode, fusion)
                            assert ids(a) == ids(b), where
                            assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-4), where
                            assert [(h.title, h.text, h.metadata) for h in a] == [(h.title, h.text, h.metadata)
                                                                                  for h in b]
                            assert [h.to_dict().keys() for h in a] == [h.to_dict().keys() for h in b]
                            for x, y in zip(a, b, strict=True):
                                ex, ey = x.explain.get("lexical"), y.explain.get("lexical")
                                assert (ex is None) == (ey is None) and (ex is None or ex["rank"] == ey["rank"]), where
        assert remote.search("the of and", mode="lexical") == []  # stop words only: no terms, no hits


def test_a_rare_token_is_found_by_lexical_and_hybrid(remote):
    lexical = remote.search(RARE, k=5, mode="lexical")
    assert set(ids(lexical)) == {"rare", "rare2"} and all(h.score > 0 for h in lexical)
    hyb = {h.id: h.explain for h in remote.search(RARE, k=5, mode="hybrid", explain=True)}
    assert {"rare", "rare2"} <= hyb.keys() and hyb["rare"]["lexical"]["rank"] in (1, 2)
    # stemming happens on hce's side: "runner"/"running"/"ran" reach the documents that say "runners running"
    assert set(ids(remote.search("running", k=20, mode="lexical"))) == {f"d{i}" for i in range(0, 40, 5)}


def test_a_filter_and_a_subtree_apply_to_the_lexical_side(remote):
    assert ids(remote.search(RARE, k=5, mode="lexical", filter={"group": "a"})) == ["rare2"]
    hyb = remote.search(RARE, k=5, mode="hybrid", filter={"group": "b"}, explain=True)
    assert len(hyb) == 5 and all(h.metadata == {"group": "b"} for h in hyb)
    assert [h.id for h in hyb if h.explain["lexical"] is not None] == ["rare"]  # rare2 is in group a
    under = {h.id for h in remote.search("cells proteins", k=50, mode="lexical", subtree=2)}
    leaves = {d: 3 + i % 4 for i, d in enumerate([f"d{i}" for i in range(40)] + ["rare", "rare2"])}
    assert under and all(leaves[d] in (5, 6) for d in under)


def test_a_deleted_document_is_gone_from_both_sides_and_an_added_one_is_found(remote):
    res = remote.delete(["rare"])
    assert res.deleted == ["rare"]
    for mode in ("dense", "lexical", "hybrid"):
        assert "rare" not in ids(remote.search(RARE, k=50, mode=mode))
    assert ids(remote.search(RARE, k=5, mode="lexical")) == ["rare2"]
    added = remote.add([{"_id": "fresh", "title": "glacier", "text": f"melting {RARE} glaciers",
                         "metadata": {"group": "a"}}])
    assert added.added == 1
    assert set(ids(remote.search(f"{RARE} glacier", k=5, mode="lexical"))) == {"rare2", "fresh"}
    assert ids(remote.search("glaciers melted", k=1, mode="lexical")) == ["fresh"]  # stemmed both ways
    assert "fresh" in ids(remote.search(f"{RARE} glacier", k=5, mode="hybrid", filter={"group": "a"}))
    remote.save()  # flushed into a segment: still found, still gone
    assert ids(remote.search("glaciers", k=5, mode="lexical")) == ["fresh"]
    assert "rare" not in ids(remote.search(RARE, k=50, mode="lexical"))


def test_a_collection_without_the_lexical_side_refuses_in_one_line(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "r", ignore=shutil.ignore_patterns("idx", "corpus.jsonl"))
    db, export = tmp_path / "r" / "x.db", tmp_path / "r" / "export"
    with Engine.open_milvus(str(db), "dense", export) as eng:
        assert eng.search_defaults.mode == "dense" and eng.store.lexical is None
        assert len(eng.search("cells", k=3)) == 3  # dense still works
        for mode in ("lexical", "hybrid"):
            with pytest.raises(DataError, match="has no lexical side") as e:
                eng.search(RARE, mode=mode)
            assert "\n" not in str(e.value) and "export-milvus --overwrite" in str(e.value)
    err = run("search", "--milvus", db, "--collection", "dense", "--model", export, "--mode", "lexical", RARE, code=1)
    assert len(err.strip().splitlines()) == 1 and "no lexical side" in err


def test_cli_searches_a_collection_in_lexical_mode(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "r", ignore=shutil.ignore_patterns("idx", "corpus.jsonl"))
    db, export = tmp_path / "r" / "x.db", tmp_path / "r" / "export"
    got = json.loads(run("search", "--milvus", db, "--collection", "docs", "--model", export, "--mode", "lexical",
                         "--json", "--explain", "--filter", '{"group": "b"}', RARE))
    want = json.loads(run("search", "--index", exported / "idx", "--mode", "lexical", "--json", "--explain",
                          "--filter", '{"group": "b"}', RARE))
    assert [h["id"] for h in got["hits"]] == [h["id"] for h in want["hits"]] == ["rare"]
    assert got["hits"][0]["explain"]["lexical"]["rank"] == 1 and got.keys() == want.keys()
    hyb = json.loads(run("search", "--milvus", db, "--collection", "docs", "--model", export, "--json", RARE))
    assert {"rare", "rare2"} <= {h["id"] for h in hyb["hits"]}  # the folder's default mode: hybrid


def test_the_manifest_keeps_old_collections_dense_and_checks_the_lexical_settings():
    vindex = VectorIndex.make("HNSW")
    old = {"format": "hce-milvus", "format_version": 1, "dim": 8, "encoder_sha256": "ab", "stores_documents": True,
           "index": {"type": vindex.type, "params": vindex.params, "search": vindex.search}}
    m = CollectionManifest.from_json(json.dumps(old), "old")  # written before hybrid search: no search, no lexical
    assert m.lexical is None and m.search == {}
    assert json.loads(m.to_json())["format_version"] == 1  # a dense-only collection stays readable by older hce
    spec = LexicalSpec(Analyzer.create("english", "english"), BM25Params(1.2, 0.5))
    with_lex = CollectionManifest(8, "ab", True, vindex, search={"mode": "hybrid"}, lexical=spec)
    text = with_lex.to_json()
    assert json.loads(text)["format_version"] == 2
    back = CollectionManifest.from_json(text, "new")
    assert back.lexical == spec and back.search == {"mode": "hybrid"}
    bad = json.loads(text)
    bad["lexical"]["fields"] = {"text": "body", "sparse": "lexical_bm25"}
    with pytest.raises(FormatError, match="lexical fields"):
        CollectionManifest.from_json(json.dumps(bad), "bad")
    bad = json.loads(text)
    bad["stores_documents"] = False
    with pytest.raises(FormatError, match="needs the stored documents"):
        CollectionManifest.from_json(json.dumps(bad), "bad")
    with pytest.raises(VersionError):
        CollectionManifest.from_json(json.dumps({**json.loads(text), "format_version": 3}), "future")
    assert spec.score(-2.2) == pytest.approx(1.0) == spec.score(2.2)  # lite's negated distance, a server's positive
    assert spec.text(Document("x", "Running", "the dogs ran")) == "run dog ran"  # hce's terms, in order
    assert MilvusStore.NO_LEXICAL.count("\n") == 0
