"""hce-serve command line on the tiny exported model: every command, its JSON, exit codes and bad input,
stored documents (get, hits with title and snippet, --no-store), empty documents, filters, ef, --version,
-v/-q and progress bars."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from index_fixtures import idx  # noqa: F401 - a fresh copy of this module's CLI-built index

from hce_serve.cli import main
from hce_serve.folder.store import IndexStore
from hce_serve.formats.trec import read_run
from hce_serve.formats.tree import NO_LEAF

pytest.importorskip("hnswlib")


def run(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, res.output
    return res.stdout if code == 0 else res.output


def run_both(*args: str) -> tuple[str, str]:
    """(stdout, stderr) of a successful command."""
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return res.stdout, res.stderr


@pytest.fixture(scope="module")
def built(tiny_export, tiny_beir, tmp_path_factory) -> Path:
    idx = tmp_path_factory.mktemp("cli") / "idx"
    out = json.loads(run("index", "build", "--model", tiny_export, "--corpus", tiny_beir / "corpus.jsonl",
                         "--index", idx, "--M", "8", "--ef", "50"))
    assert out["live"] == 64 and out["dim"] == 32
    return idx


def test_build_layout_and_self_contained_search(built, tiny_beir):
    assert (built / "encoder" / "hce_model.json").is_file()
    stats = json.loads(run("index", "stats", "--index", built))
    assert stats["live"] == 64 and stats["M"] == 8 and stats["ef_search"] == 50 and stats["generation"] == 1
    out = json.loads(run("search", "--index", built, "protein enzyme binding", "--k", "5", "--json"))
    assert out["query"] == "protein enzyme binding" and len(out["hits"]) == 5
    corpus = {d["_id"]: d for d in map(json.loads, (tiny_beir / "corpus.jsonl").read_text().splitlines())}
    for h in out["hits"]:  # hits carry the stored document
        assert set(h) == {"id", "score", "title", "text", "metadata"}
        assert (h["title"], h["text"], h["metadata"]) == (corpus[h["id"]]["title"], corpus[h["id"]]["text"], {})
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)
    lean = json.loads(run("search", "--index", built, "protein", "--k", "2", "--json", "--fields", ""))
    assert set(lean["hits"][0]) == {"id", "score"}
    human = run("search", "--index", built, "climate", "--k", "3").splitlines()
    ranked = [line for line in human if line[:3].strip().isdigit()]
    assert len(ranked) == 3 and len(human) == 6  # rank, score, id, title; then the text's snippet
    rank, score, doc_id, *title = ranked[0].split()
    assert " ".join(title) == corpus[doc_id]["title"] and human[1].split()[0] == corpus[doc_id]["text"].split()[0]


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
    assert json.loads(run("index", "add", "--index", idx, "--corpus", more)) == {"added": 1, "replaced": 1, "empty": 0,
                                                                                 "live": 65}
    with IndexStore.open(idx) as s:
        assert s.pending == 0 and s.manifest.generation == 2  # the command leaves a clean snapshot
    # the replaced text's own vector: cosine 1 is a dense score (hybrid's is a fused one)
    hits = json.loads(run("search", "--index", idx, "replaced market price stock bank", "--k", "1", "--json",
                          "--mode", "dense"))["hits"]
    assert hits[0]["id"] == "soil-0" and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    hits = json.loads(run("search", "--index", idx, "replaced market price stock bank", "--k", "1", "--json"))["hits"]
    assert hits[0]["id"] == "soil-0"  # the default (hybrid) finds the new text too
    out = json.loads(run("index", "delete", "--index", idx, "--id", "soil-0", "--id", "ghost"))
    assert out == {"deleted": ["soil-0"], "missing": ["ghost"], "live": 64}  # the same shape as HTTP's answer
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("new-1\nclimate-0\n")
    deleted = json.loads(run("index", "delete", "--index", idx, "--ids-file", ids_file))["deleted"]
    assert deleted == ["new-1", "climate-0"]
    assert "is not in the index" in run("get", "--index", idx, "--id", "soil-0", code=1)
    hits = json.loads(run("search", "--index", idx, "market price stock bank", "--k", "100", "--json"))["hits"]
    assert not {"soil-0", "new-1", "climate-0"} & {h["id"] for h in hits} and len(hits) == 62
    assert json.loads(run("index", "compact", "--index", idx))["dropped"] == 3
    assert json.loads(run("index", "stats", "--index", idx))["labels"] == 62


def test_leaves_from_export_tree(tiny_export, tiny_beir, tmp_path):
    from hce_serve.formats.tree import Tree

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
        unit = cent / np.linalg.norm(cent, axis=1, keepdims=True)
        assert s.index.leaf_of("x") == 1 + int(np.argmax(unit[1:] @ v)) != NO_LEAF  # nearest normalised centroid


def test_user_errors_exit_1_with_one_line(idx, tiny_export, tiny_beir, tmp_path):
    def err(*args: str) -> str:
        out = run(*args, code=1)
        assert out.startswith("Error: ") and len(out.strip().splitlines()) == 1 and "Traceback" not in out
        return out

    corpus = tiny_beir / "corpus.jsonl"
    assert "--overwrite" in err("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", idx)
    assert "empty" in err("search", "--index", idx, "   ")
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"_id": "a", "text": "x"}\n{"_id": "a", "text": "y"}\n')
    assert "duplicate" in err("index", "add", "--index", idx, "--corpus", dup)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"_id": "z", "text": "\xff\xfe"}\n')
    assert "UTF-8" in err("index", "add", "--index", idx, "--corpus", bad)
    lone = tmp_path / "lone.jsonl"
    lone.write_text('{"_id": "ok", "text": "fine"}\n{"_id": "z", "text": "\\ud800"}\n')
    assert "lone.jsonl:2" in err("index", "add", "--index", idx, "--corpus", lone)
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
    for k in ("0", "-1", "100000000", "ten"):
        assert "--k" in run("search", "--index", idx, "x", "--k", k, code=2)
    assert "--ef" in run("search", "--index", idx, "x", "--ef", "0", code=2)
    assert "not valid JSON" in run("search", "--index", idx, "x", "--filter", "{lang: en}", code=2)
    assert "filter" in run("search", "--index", idx, "x", "--filter", '{"lang": {"nested": 1}}', code=2)
    run("get", "--index", idx, code=2)  # no --id
    for size in ("0", "99999999999999999999"):  # the second found by tests/reliability/fuzz_api.py
        assert "--batch-size" in run("index", "add", "--index", idx, "--corpus", idx, "--batch-size", size, code=2)


def test_http_refuses_public_bind_without_token(idx, monkeypatch):
    monkeypatch.delenv("HCE_TOKEN", raising=False)
    out = run("http", "--index", idx, "--host", "0.0.0.0", code=1)
    assert "token" in out


def write_corpus(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_get_prints_the_stored_document(built, tiny_beir):
    doc = json.loads((tiny_beir / "corpus.jsonl").read_text().splitlines()[3])
    assert json.loads(run("get", "--index", built, "--id", doc["_id"])) == {**doc, "metadata": {}}
    out = run("get", "--index", built, "--id", "ghost", code=1)
    assert out.startswith("Error: ") and "'ghost' is not in the index" in out


def test_no_store_keeps_ids_only(tiny_export, tiny_beir, tmp_path):
    idx = tmp_path / "ids-only"
    out = json.loads(run("index", "build", "--model", tiny_export, "--corpus", tiny_beir / "corpus.jsonl",
                         "--index", idx, "--no-store"))
    assert out["stores_documents"] is False and out["live"] == 64 and not (idx / "docs.sqlite").exists()
    hits = json.loads(run("search", "--index", idx, "protein", "--k", "3", "--json"))["hits"]
    assert len(hits) == 3 and set(hits[0]) == {"id", "score"}
    assert "stores no documents" in run("get", "--index", idx, "--id", "protein-0", code=1)
    assert "stores no documents" in run("search", "--index", idx, "x", "--filter", '{"a": 1}', code=1)


def test_empty_documents_are_indexed_with_a_warning_or_skipped(tiny_export, tmp_path):
    """A BEIR collection with two documents that have neither title nor text must not refuse the corpus."""
    docs = [{"_id": f"d{i}", "title": "", "text": f"protein enzyme {i}"} for i in range(10)]
    docs[3] = {"_id": "d3", "title": "", "text": ""}
    docs[7] = {"_id": "d7", "title": " ", "text": "\n"}
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs)
    stdout, stderr = run_both("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", tmp_path / "a")
    assert json.loads(stdout) | {"index": None} == {"index": None, "live": 10, "dim": 32, "empty": 2,
                                                    "skipped_empty": 0, "stores_documents": True,
                                                    "lexical": True}
    assert "2 documents have empty title and text" in stderr and "--skip-empty" in stderr
    assert json.loads(run("get", "--index", tmp_path / "a", "--id", "d3"))["text"] == ""
    assert len(json.loads(run("search", "--index", tmp_path / "a", "protein", "--k", "10", "--json"))["hits"]) == 10
    stdout, stderr = run_both("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", tmp_path / "b",
                              "--skip-empty")
    out = json.loads(stdout)
    assert out["live"] == 8 and out["skipped_empty"] == 2 and "left out 2 documents" in stderr
    more = write_corpus(tmp_path / "more.jsonl", [{"_id": "e1", "text": ""}, {"_id": "e2", "text": "enzyme"}])
    assert json.loads(run("index", "add", "--index", tmp_path / "b", "--corpus", more, "--skip-empty"))["added"] == 1
    assert json.loads(run("index", "add", "--index", tmp_path / "b", "--corpus", more))["empty"] == 1


def test_filter_ef_and_subtree_from_the_command_line(tiny_export, tiny_beir, tmp_path):
    rows = [json.loads(line) for line in (tiny_beir / "corpus.jsonl").read_text().splitlines()]
    for r in rows:
        r["metadata"] = {"topic": r["_id"].split("-")[0], "n": int(r["_id"].split("-")[1])}
    idx = tmp_path / "idx"
    run("index", "build", "--model", tiny_export, "--corpus", write_corpus(tmp_path / "c.jsonl", rows), "--index", idx)
    out = json.loads(run("search", "--index", idx, "protein enzyme", "--k", "5", "--json", "--filter",
                         '{"topic": ["climate", "soil"], "n": [1, 2, 3]}'))
    assert len(out["hits"]) == 5 and all(h["metadata"]["topic"] in ("climate", "soil") and 1 <= h["metadata"]["n"] <= 3
                                         for h in out["hits"])
    assert json.loads(run("search", "--index", idx, "x", "--json", "--filter", '{"topic": "none"}'))["hits"] == []
    a = json.loads(run("search", "--index", idx, "protein", "--k", "5", "--json", "--ef", "1"))
    assert len(a["hits"]) == 5  # k wins over a smaller beam: hnswlib searches with max(ef, k)
    assert "no corpus tree" in run("search", "--index", idx, "x", "--subtree", "1", code=1)


def test_batch_search_and_eval_show_progress(built, tiny_beir):
    _, stderr = run_both("search", "--index", built, "--queries", tiny_beir / "queries.jsonl", "--k", "3")
    assert "search" in stderr and "40/40" in stderr
    _, stderr = run_both("eval", "--index", built, "--queries", tiny_beir / "queries.jsonl",
                         "--qrels", tiny_beir / "qrels" / "test.tsv")
    assert "search" in stderr and "16/16" in stderr


def test_http_logs_its_url_at_start(idx, monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.delenv("HCE_TOKEN", raising=False)
    _, stderr = run_both("http", "--index", idx, "--port", "8123", "--read-only")
    assert "http://127.0.0.1:8123" in stderr and "/docs" in stderr and calls[0]["port"] == 8123
    _, stderr = run_both("-q", "http", "--index", idx, "--port", "8123", "--read-only")
    assert "http://" not in stderr  # -q keeps it quiet


def test_stats_show_no_filesystem_path(built):
    text = run("index", "stats", "--index", built)
    assert str(built) not in text and str(built.parent) not in text and json.loads(text)["stores_documents"]


def test_corpus_metadata_is_kept_flat_with_a_warning(tiny_export, tmp_path):
    """BEIR metadata sometimes nests: the flat entries are kept, the others left out and counted."""
    corpus = write_corpus(tmp_path / "c.jsonl", [
        {"_id": "a", "text": "protein", "metadata": {"year": 2020, "authors": [{"name": "x"}], "": 1, "tags": ["p"]}},
        {"_id": "b", "text": "climate", "metadata": "not an object"},  # ignored when read (beir.iter_corpus)
    ])
    _, stderr = run_both("index", "build", "--model", tiny_export, "--corpus", corpus, "--index", tmp_path / "idx")
    assert "left out 2 metadata entries" in stderr  # "authors" (nested) and "" (not a key)
    assert json.loads(run("get", "--index", tmp_path / "idx", "--id", "a"))["metadata"] == {"year": 2020, "tags": ["p"]}
    assert json.loads(run("get", "--index", tmp_path / "idx", "--id", "b"))["metadata"] == {}


def test_document_store_failure_is_one_line(built, monkeypatch):
    import sqlite3

    from hce_serve.folder.docstore import DocStore

    monkeypatch.setattr(DocStore, "get_many",
                        lambda *a: (_ for _ in ()).throw(sqlite3.OperationalError("disk I/O error")))
    out = run("get", "--index", built, "--id", "soil-1", code=1)
    assert out.strip() == "Error: document store: disk I/O error"
