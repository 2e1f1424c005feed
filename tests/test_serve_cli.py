"""hce-serve command line on the tiny exported model: every command, its JSON, exit codes and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hce_serve.cli import main
from hce_serve.index import NO_LEAF
from hce_serve.store import IndexStore
from hce_serve.trec import read_run

pytest.importorskip("hnswlib")


def run(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.stdout if code == 0 else res.output


@pytest.fixture(scope="module")
def built(tiny_export, tiny_beir, tmp_path_factory) -> Path:
    idx = tmp_path_factory.mktemp("cli") / "idx"
    out = json.loads(run("index", "build", "--model", tiny_export, "--corpus", tiny_beir / "corpus.jsonl",
                         "--index", idx, "--M", "8", "--ef", "50"))
    assert out["live"] == 64 and out["dim"] == 32
    return idx


@pytest.fixture
def idx(built, tmp_path) -> Path:
    dst = tmp_path / "idx"
    shutil.copytree(built, dst)
    return dst


def test_build_layout_and_self_contained_search(built, tiny_beir):
    assert (built / "encoder" / "hce_model.json").is_file()
    stats = json.loads(run("index", "stats", "--index", built))
    assert stats["live"] == 64 and stats["M"] == 8 and stats["ef_search"] == 50 and stats["generation"] == 1
    out = json.loads(run("search", "--index", built, "protein enzyme binding", "--k", "5", "--json"))
    assert out["query"] == "protein enzyme binding" and len(out["hits"]) == 5
    assert set(out["hits"][0]) == {"id", "score"}
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    human = run("search", "--index", built, "climate", "--k", "3")
    assert len(human.strip().splitlines()) == 3


def test_a_document_finds_itself(built, tiny_beir):
    doc = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[10])
    text = f"{doc['title']} {doc['text']}"
    out = json.loads(run("search", "--index", built, text, "--k", "1", "--json"))
    assert out["hits"][0]["id"] == doc["_id"]


def test_batch_run_and_eval(built, tiny_beir, tmp_path):
    run_path = tmp_path / "run.trec"
    run("search", "--index", built, "--queries", tiny_beir / "queries.jsonl", "--k", "100", "--run", run_path)
    runs = read_run(run_path)
    assert len(runs) == 40 and all(len(v) == 64 for v in runs.values())  # k clamped to the 64 documents
    metrics = json.loads(run("eval", "--index", built, "--queries", tiny_beir / "queries.jsonl",
                             "--qrels", tiny_beir / "qrels" / "test.tsv"))
    assert {"ndcg@10", "recall@10", "recall@100", "mrr@10"} <= metrics.keys()
    assert metrics["recall@100"] == 1.0 and metrics["queries"] == 16  # every document is retrieved at 100


def test_add_upsert_delete_compact(idx, tmp_path):
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "new-1", "title": "", "text": "glacier ice ocean warming"}) + "\n"
                    + json.dumps({"_id": "soil-0", "title": "replaced", "text": "market price stock bank"}) + "\n")
    assert json.loads(run("index", "add", "--index", idx, "--corpus", more)) == {"added": 1, "replaced": 1, "live": 65}
    with IndexStore.open(idx) as s:
        assert s.pending == 0 and s.manifest.generation == 2  # the command leaves a clean snapshot
    hits = json.loads(run("search", "--index", idx, "replaced market price stock bank", "--k", "1", "--json"))["hits"]
    assert hits[0]["id"] == "soil-0" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    out = json.loads(run("index", "delete", "--index", idx, "--id", "soil-0", "--id", "ghost"))
    assert out == {"deleted": 1, "missing": ["ghost"], "live": 64}
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("new-1\nclimate-0\n")
    assert json.loads(run("index", "delete", "--index", idx, "--ids-file", ids_file))["deleted"] == 2
    hits = json.loads(run("search", "--index", idx, "market price stock bank", "--k", "100", "--json"))["hits"]
    assert not {"soil-0", "new-1", "climate-0"} & {h["id"] for h in hits} and len(hits) == 62
    assert json.loads(run("index", "compact", "--index", idx))["dropped"] == 3
    assert json.loads(run("index", "stats", "--index", idx))["labels"] == 62


def test_leaves_from_export_tree(tiny_export, tiny_beir, tmp_path):
    from hce_serve.tree import Tree

    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    ids = [json.loads(line)["_id"] for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    rng = np.random.default_rng(0)
    parent = np.array([-1, 0, 0], np.int32)
    cent = rng.standard_normal((3, 32)).astype(np.float32)
    Tree(parent, cent, np.where(np.arange(64) < 32, 1, 2).astype(np.int32), ids).save(export)
    idx = tmp_path / "idx"
    run("index", "build", "--model", export, "--corpus", tiny_beir / "corpus.jsonl", "--index", idx)
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"_id": "x", "text": "brain neuron"}) + "\n")
    run("index", "add", "--index", idx, "--corpus", more)
    with IndexStore.open(idx) as s:
        assert s.index.leaf_of(ids[0]) == 1 and s.index.leaf_of(ids[40]) == 2  # the export's assignment
        v = s.index.get_vectors(["x"])[0]
        assert s.index.leaf_of("x") == 1 + int(np.argmax(cent[1:] @ v)) != NO_LEAF  # nearest leaf centroid


def test_user_errors_exit_1_with_one_line(idx, tiny_export, tiny_beir, tmp_path):
    def err(*args: str) -> str:
        out = run(*args, code=1)
        assert out.startswith("Error: ") and len(out.strip().splitlines()) == 1 and "Traceback" not in out
        return out

    corpus = tiny_beir / "corpus.jsonl"
    assert "--overwrite" in err("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", idx)
    assert "empty" in err("search", "--index", idx, "   ")
    assert "k must" in err("search", "--index", idx, "x", "--k", "0")
    assert "k must" in err("search", "--index", idx, "x", "--k", "100000000")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    assert "duplicate" in err("index", "add", "--index", idx, "--corpus", dup)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"_id": "z", "text": "\xff\xfe"}\n')
    assert "UTF-8" in err("index", "add", "--index", idx, "--corpus", bad)
    assert "not found" in err("search", "--index", tmp_path / "nope", "x")
    assert json.loads(run("index", "stats", "--index", idx))["live"] == 64  # nothing stored was lost
    (idx / "manifest.json").write_text("{not json")
    assert "manifest.json" in err("search", "--index", idx, "x")


def test_dimension_mismatch_names_both(idx):
    card = json.loads((idx / "encoder" / "hce_model.json").read_text())
    m = json.loads((idx / "manifest.json").read_text())
    m["dim"] = 16
    (idx / "manifest.json").write_text(json.dumps(m))
    out = run("search", "--index", idx, "x", "--k", "1", code=1)
    assert "16" in out and str(card["dim"]) in out


def test_usage_errors_exit_2(idx):
    run("search", "--index", idx, code=2)  # neither a query nor --queries
    run("index", "delete", "--index", idx, code=2)  # neither --id nor --ids-file
    run("search", "--index", idx, "x", "--run", "r.trec", code=2)


def test_http_refuses_public_bind_without_token(idx, monkeypatch):
    monkeypatch.delenv("HCE_TOKEN", raising=False)
    out = run("http", "--index", idx, "--host", "0.0.0.0", code=1)
    assert "token" in out
