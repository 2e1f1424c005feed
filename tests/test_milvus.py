"""The Milvus backend on milvus-lite: export an index folder, search it through the same Engine and command
line, change it through the same API, and the one-line errors around it (DESIGN §5, issue 13)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from hce_serve.cli import main
from hce_serve.engine import Engine
from hce_serve.errors import BackendError, DataError, FormatError
from hce_serve.formats.tree import Tree
from hce_serve.milvus.layout import MilvusTarget, VectorIndex, check_document, filter_expr, quote, tag

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

TOPICS = ("protein", "climate", "vaccine", "brain", "cancer", "diet", "market", "soil")


def run(*args: object, code: int = 0) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.stdout if code == 0 else res.stderr


@pytest.fixture(scope="module")
def tagged_index(tiny_export, tiny_beir, tmp_path_factory):
    """The tiny corpus with metadata (awkward ids included) over an export that carries a two-level tree."""
    root = tmp_path_factory.mktemp("milvus")
    export = root / "export"
    shutil.copytree(tiny_export, export)
    docs = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    docs[0]["_id"], docs[1]["_id"] = 'quote"and\\slash', "ünï tab-free"
    for i, d in enumerate(docs):
        d["metadata"] = {"topic": d["title"].split()[0], "year": 2020 + i % 3, "tags": ["odd" if i % 2 else "even"]}
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    rng = np.random.default_rng(0)
    cent = rng.standard_normal((7, 32)).astype(np.float32)
    Tree(np.array([-1, 0, 0, 1, 1, 2, 2], np.int32), cent, (3 + np.arange(64) % 4).astype(np.int32),
         [d["_id"] for d in docs]).save(export)
    # dense by default: these tests are about the dense side (hybrid on Milvus: test_milvus_hybrid.py)
    Engine.build(export, corpus, root / "idx", search={"mode": "dense"})
    return root


def test_round_trip_export_search_delete_search(tagged_index, tmp_path):
    idx, export, db = tagged_index / "idx", tagged_index / "export", tmp_path / "x.db"
    out = json.loads(run("index", "export-milvus", "--index", idx, "--uri", db, "--collection", "docs"))
    assert out["exported"] == 64 and out["index_type"] == "HNSW"
    assert out["index_params"] == {"M": 16, "efConstruction": 200}
    assert out["tree_nodes"] == 7 and out["stores_documents"] is True
    queries = ["protein enzyme binding", "ocean warming ice", "stock market inflation"]
    filters = [None, {"topic": "climate"}, {"year": [2021.0, 2022], "tags": "odd"}]
    with Engine.open(idx) as local, Engine.open_milvus(str(db), "docs", export, writable=True) as remote:
        for q in queries:
            for flt in filters:
                for subtree in (None, 0, 2):
                    a = local.search(q, k=10, filter=flt, subtree=subtree)
                    b = remote.search(q, k=10, filter=flt, subtree=subtree)
                    assert [h.id for h in a] == [h.id for h in b], (q, flt, subtree)
                    assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-5)
                    assert [h.to_dict().keys() for h in a] == [h.to_dict().keys() for h in b]  # same JSON shape
                    assert [(h.title, h.text, h.metadata) for h in a] == [(h.title, h.text, h.metadata) for h in b]
        assert remote.get('quote"and\\slash') == local.get('quote"and\\slash')
        assert remote.stats()["live"] == 64 and remote.stats()["index_type"] == "HNSW"
        # deletions and additions go through the same Engine API
        top = [h.id for h in remote.search("protein enzyme binding", k=3)]
        res = remote.delete([top[0], 'quote"and\\slash', "never-there"])
        assert res.deleted == [top[0], 'quote"and\\slash'] and res.missing == ["never-there"]
        after = [h.id for h in remote.search("protein enzyme binding", k=64)]
        assert top[0] not in after and 'quote"and\\slash' not in after and len(after) == 62
        assert remote.get(top[0]) is None and len(remote) == 62
        added = remote.add([{"_id": "fresh", "title": "brain cortex", "text": "neuron synapse memory",
                             "metadata": {"topic": "brain"}}, {"_id": top[1], "title": "replaced",
                                                               "text": "soil crop"}])
        assert (added.added, added.replaced) == (1, 1)
        hits = remote.search("neuron synapse memory", k=1, filter={"topic": "brain"})
        assert hits[0].id == "fresh" and hits[0].title == "brain cortex"
        leaf = int(remote.tree.assign(remote.encoder.encode_documents(["brain cortex neuron synapse memory"]))[0])
        stored = remote.store.collection.fetch(["fresh"], ["leaf", "path"])["fresh"]
        assert stored["path"] == remote.tree.ancestors(leaf)
        assert remote.get(top[1]).title == "replaced"
    # the command line reads what the API wrote, in the local index's JSON shape
    got = json.loads(run("search", "--milvus", db, "--collection", "docs", "--model", export, "--json",
                         "neuron synapse memory"))
    want = json.loads(run("search", "--index", idx, "--json", "neuron synapse memory"))
    assert got["hits"][0]["id"] == "fresh" and got.keys() == want.keys()
    assert [h.keys() for h in got["hits"]] == [h.keys() for h in want["hits"]]
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "cli-1", "title": "glacier", "text": "ice melt",
                                "metadata": {"topic": "ice"}}) + "\n")
    added = json.loads(run("index", "add", "--milvus", db, "--collection", "docs", "--model", export, "--corpus", more))
    assert added == {"added": 1, "replaced": 0, "empty": 0, "live": 64}
    stats = json.loads(run("index", "delete", "--milvus", db, "--collection", "docs", "--model", export, "--id",
                           "fresh"))
    assert stats == {"deleted": ["fresh"], "missing": [], "live": 63}
    got = json.loads(run("search", "--milvus", db, "--collection", "docs", "--model", export, "--json", "--filter",
                         '{"topic": "ice"}', "glacier"))
    assert [h["id"] for h in got["hits"]] == ["cli-1"]


def test_ivf_flat_export_and_a_no_store_index(tiny_export, tiny_beir, tmp_path):
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", tmp_path / "bare", store_documents=False)
    db = tmp_path / "y.db"
    out = json.loads(run("index", "export-milvus", "--index", tmp_path / "bare", "--uri", db, "--collection", "bare",
                         "--index-type", "IVF_FLAT", "--nlist", "4", "--nprobe", "4"))
    assert out["index_params"] == {"nlist": 4} and out["search_params"] == {"nprobe": 4} and out["tree_nodes"] is None
    with Engine.open(tmp_path / "bare") as local, Engine.open_milvus(str(db), "bare", tiny_export) as remote:
        a, b = local.search("climate carbon", k=5), remote.search("climate carbon", k=5)
        assert [h.id for h in a] == [h.id for h in b] and b[0].title is None  # ids only, as the folder
        with pytest.raises(DataError, match="stores no documents"):
            remote.search("x", filter={"topic": "climate"})
        with pytest.raises(DataError, match="ef is the HNSW beam"):
            remote.search("x", ef=50)
    run("index", "export-milvus", "--index", tmp_path / "bare", "--uri", db, "--collection", "bare", code=1)  # exists
    run("index", "export-milvus", "--index", tmp_path / "bare", "--uri", db, "--collection", "bare", "--overwrite")


def test_ivf_sq8_export_searches_like_the_folder(tiny_export, tiny_beir, tmp_path):
    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", tmp_path / "idx")
    db = tmp_path / "q.db"
    out = json.loads(run("index", "export-milvus", "--index", tmp_path / "idx", "--uri", db, "--collection", "sq8",
                         "--index-type", "IVF_SQ8", "--nlist", "4", "--nprobe", "4"))
    assert out["index_params"] == {"nlist": 4} and out["search_params"] == {"nprobe": 4}
    with Engine.open(tmp_path / "idx") as local, Engine.open_milvus(str(db), "sq8", tiny_export) as remote:
        for q in ("climate carbon", "glacier ice"):  # every cell probed: only the 8-bit codes can reorder
            a, b = [h.id for h in local.search(q, k=5)], [h.id for h in remote.search(q, k=5)]
            assert a[0] == b[0] and len(set(a) & set(b)) >= 4
        assert remote.search("climate carbon", k=1)[0].title is not None  # stored fields come back as with HNSW
    from hce_serve.options import IndexParams

    Engine.build(tiny_export, tiny_beir / "corpus.jsonl", tmp_path / "ivf", IndexParams(kind="ivf-sq8", ef_search=8))
    out = json.loads(run("index", "export-milvus", "--index", tmp_path / "ivf", "--uri", db, "--collection", "fromivf"))
    assert "nlist" in out["index_params"]  # an ivf-sq8 folder exports as IVF_SQ8 unless told otherwise


def test_a_collection_refuses_another_encoder_and_a_second_process(tagged_index, tiny_export, tmp_path):
    db = tmp_path / "z.db"
    run("index", "export-milvus", "--index", tagged_index / "idx", "--uri", db, "--collection", "docs")
    with pytest.raises(FormatError, match="written with another encoder"):
        Engine.open_milvus(str(db), "docs", tiny_export)  # the same card, without the tree the paths refer to
    err = run("search", "--milvus", db, "--collection", "nope", "--model", tagged_index / "export", "q", code=1)
    assert "no collection nope" in err and "Traceback" not in err
    fd = os.open(db / "LOCK", os.O_RDONLY)  # as milvus-lite in another process would hold it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BackendError, match="open in another process"):
            Engine.open_milvus(str(db), "docs", tagged_index / "export")
    finally:
        os.close(fd)


@pytest.mark.parametrize("module, name", [("pymilvus", "pymilvus"), ("milvus_lite", "milvus-lite")])
def test_missing_milvus_packages_are_one_line_and_exit_1(tagged_index, tmp_path, monkeypatch, module, name):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    res = CliRunner().invoke(main, ["search", "--milvus", str(tmp_path / "x.db"), "--collection", "docs", "--model",
                                    str(tagged_index / "export"), "query"])
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {name} is not installed; install it with: pip install 'hce[milvus]'"


@pytest.mark.parametrize("args", [
    ["--milvus", "x.db", "--model", "."],  # no --collection
    ["--milvus", "x.db", "--collection", "bad-name", "--model", "."],
    ["--milvus", "ftp://host", "--collection", "docs", "--model", "."],
    ["--index", "idx", "--milvus", "x.db", "--collection", "docs", "--model", "."],
    ["--collection", "docs"],
])
def test_bad_milvus_usage_exits_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["search", *args, "query"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_expressions_escape_ids_and_match_canonical_values():
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert tag("year", "2020") == '"year"=2020'
    long = tag("note", json.dumps("x" * 5000))
    assert long.startswith('"note"#sha256:') and len(long) < 100  # long values stay exact to match, not cut
    expr = filter_expr({"lang": ('"de"', '"en"'), "year": ("2021",)}, 5)
    assert expr == ('array_contains_any(tags, ["\\"lang\\"=\\"de\\"", "\\"lang\\"=\\"en\\""]) and '
                    'array_contains_any(tags, ["\\"year\\"=2021"]) and array_contains(path, 5)')
    assert filter_expr(None, 0) == "leaf >= 0" and filter_expr(None, None) == ""


def test_layout_checks_say_what_milvus_cannot_hold(tmp_path):
    from hce_serve.documents import Document

    with pytest.raises(DataError, match="a Milvus VARCHAR holds 65,535"):
        check_document(Document("d", "", "é" * 40_000), stores_documents=True)
    check_document(Document("d", "", "é" * 40_000), stores_documents=False)  # ids only: the text is not stored
    with pytest.raises(DataError, match="collection name"):
        MilvusTarget("x.db", "1abc")
    with pytest.raises(DataError, match="its folder does not exist"):
        MilvusTarget(str(tmp_path / "missing" / "x.db"), "docs")
    assert VectorIndex.make("IVF_FLAT", rows=10_000).params == {"nlist": 400}
    assert VectorIndex.make("IVF_SQ8", rows=10_000, nprobe=8).search == {"nprobe": 8}
    assert VectorIndex.make("HNSW").search_params(k=300, ef=None)["params"] == {"ef": 300}  # ef >= k, as hnswlib


def test_http_serves_a_collection_in_the_same_shapes(tagged_index, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from hce_serve.http import create_app

    db = tmp_path / "h.db"
    run("index", "export-milvus", "--index", tagged_index / "idx", "--uri", db, "--collection", "docs")
    local = Engine.open(tagged_index / "idx")
    remote = Engine.open_milvus(str(db), "docs", tagged_index / "export", writable=True)
    with local, remote, TestClient(create_app(local)) as a, TestClient(create_app(remote)) as b:
        body = {"query": "vaccine immune antibody", "k": 5, "filter": {"tags": "odd"}}
        want, got = a.post("/search", json=body).json()["hits"], b.post("/search", json=body).json()["hits"]
        assert [{**h, "score": 0} for h in got] == [{**h, "score": 0} for h in want]  # ids, fields, order
        assert np.allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5)
        assert b.get("/healthz").json() == {"status": "ok", "live": 64}
        assert str(db) not in b.get("/stats").text  # no filesystem path for clients
        added = b.post("/documents", json={"documents": [{"_id": "n1", "text": "glacier ice melt"}]}).json()
        assert added == {"added": 1, "replaced": 0, "empty": 0, "live": 65}
        assert b.delete("/documents/n1").json() == {"deleted": ["n1"], "missing": [], "live": 64}
        assert b.get("/documents/n1").status_code == 404
