"""benchmarks.demo_sample, the data of scripts/demo.sh's short run (HCE_DEMO_DOCS): the first N documents, the
queries whose judged documents are all among them, every line as it was; and the demo's table and result
saying the run was on a sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from benchmarks import demo, demo_sample
from hce_serve.formats import beir

DOCS = [{"_id": f"d{i}", "title": f"t{i}", "text": f"text {i}"} for i in range(6)]
QUERIES = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(5)]
# q0 and q3 judge documents among the first 3 only; q1 also judges d4; q2 only d5; q4 (train) d1 and d2
QRELS = {"test": [("q0", "d0", 1), ("q1", "d1", 1), ("q1", "d4", 1), ("q2", "d5", 1)],
         "train": [("q3", "d2", 2), ("q4", "d1", 1), ("q4", "d2", 0)]}


@pytest.fixture
def data(tmp_path) -> Path:
    d = tmp_path / "src"
    (d / "qrels").mkdir(parents=True)
    with gzip.open(d / "corpus.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(doc) + "\n" for doc in DOCS)
    (d / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    for split, rows in QRELS.items():
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                   + "".join(f"{q}\t{doc}\t{g}\n" for q, doc, g in rows))
    return d


def test_the_first_documents_and_only_the_queries_judged_wholly_on_them(data, tmp_path, capsys):
    out = tmp_path / "demo-out" / "data"
    assert demo_sample.main(["--data", str(data), "--docs", "3", "--out", str(out)]) == 0
    assert "test 1, train 2" in capsys.readouterr().err
    assert [d.id for d in beir.iter_corpus(out / "corpus.jsonl")] == ["d0", "d1", "d2"]
    with gzip.open(out / "corpus.jsonl.gz", "rt") as fh:  # the lines as written in the source
        assert fh.read() == "".join(json.dumps(doc) + "\n" for doc in DOCS[:3])
    assert beir.load_qrels(out / "qrels" / "test.tsv") == {"q0": {"d0": 1}}  # q1 judges d4 too: left out
    assert beir.load_qrels(out / "qrels" / "train.tsv") == {"q3": {"d2": 2}, "q4": {"d1": 1, "d2": 0}}
    assert set(beir.load_queries(out / "queries.jsonl")) == {"q0", "q3", "q4"}
    info = json.loads((out / demo_sample.SAMPLE_FILE).read_text())
    assert info == {"source": str(data), "documents": 3, "queries": {"test": 1, "train": 2},
                    "judgments": {"test": 1, "train": 3}}
    first = (out / "corpus.jsonl.gz").read_bytes()
    assert demo_sample.main(["--data", str(data), "--docs", "3", "--out", str(out)]) == 0  # a rerun replaces it
    assert (out / "corpus.jsonl.gz").read_bytes() == first  # with the same bytes


def test_more_documents_than_the_corpus_keeps_everything(data, tmp_path):
    info = demo_sample.sample(data, 100, tmp_path / "all")
    assert info["documents"] == 6 and info["queries"] == {"test": 3, "train": 2}


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    out = tmp_path / "out"
    for argv in (["--docs", "1"], ["--docs", "3", "--data", str(tmp_path / "missing")], ["--docs", "3", "--out",
                                                                                            str(data)]):
        args = ["--data", str(data), "--out", str(out), *argv]
        assert demo_sample.main(args) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        demo_sample.main(["--data", str(data), "--docs", "0", "--out", str(out)])
    assert e.value.code == 2


def test_the_demo_table_and_result_name_the_sample(data, tmp_path, capsys):
    sample = tmp_path / "demo-out" / "data"
    demo_sample.sample(data, 3, sample)
    evals = {"base": {"ndcg@10": 0.5, "queries": 1}, "hce": {"ndcg@10": 0.6, "queries": 1}}
    for name, e in evals.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(e))
    model, export = tmp_path / "demo-out" / "model", tmp_path / "export"
    model.mkdir()
    export.mkdir()
    (model / "hce_model.json").write_text("{}")
    (model / "train_config.json").write_text(json.dumps({"data": str(sample), "max_steps": 8}))
    (export / "hce_model.json").write_text("{}")
    assert demo.main(["--base-eval", str(tmp_path / "base.json"), "--hce-eval", str(tmp_path / "hce.json"),
                      "--model", str(model), "--export", str(export), "--seconds", "9"]) == 0
    assert "SciFact test (1 claim of a 3-document sample)" in capsys.readouterr().out
    result = json.loads((tmp_path / "demo-out" / "demo.json").read_text())
    assert result["sample"]["documents"] == 3
    assert demo.main(["--record", str(tmp_path / "demo-out" / "demo.json"), "--out", str(tmp_path / "rec.json")]) == 0
    assert "a sample of the data (3 documents)" in capsys.readouterr().err  # recorded, with a warning


def test_the_full_demo_table_is_unchanged():
    text = demo.table({"ndcg@10": 0.5, "queries": 300}, {"ndcg@10": 0.6, "queries": 300}, {}, {})
    assert "SciFact test (300 claims), int8 ONNX encoder + HNSW index, this CPU" in text.splitlines()
