"""BEIR loading, TREC runs, atomic writes and metrics: round trips and every malformed-input path."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from hce_serve.batching import chunks
from hce_serve.errors import ConfigError, DataError
from hce_serve.formats import atomic
from hce_serve.formats.beir import check_qrels, iter_corpus, load_beir, load_qrels, load_queries
from hce_serve.formats.trec import read_run, write_run
from hce_serve.metrics import evaluate


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_corpus_streams_plain_and_gz(tmp_path):
    rows = [json.dumps({"_id": f"d{i}", "title": "t", "text": f"text {i}"}) for i in range(5)]
    plain = write_lines(tmp_path / "corpus.jsonl", rows)
    with gzip.open(tmp_path / "c2.jsonl.gz", "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    a = list(iter_corpus(plain))
    b = list(iter_corpus(tmp_path / "c2.jsonl"))  # resolves to .gz
    assert a == b and [d.id for d in a] == [f"d{i}" for i in range(5)]
    assert a[0].full_text == "t text 0"
    it = iter_corpus(plain)
    assert next(it).id == "d0"  # a generator: nothing forces the whole file into memory


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"_id": "a", "text": ', r"corpus.jsonl:2: not valid JSON"),
        ('["a", "b"]', r"corpus.jsonl:2: expected a JSON object, found list"),
        ('{"text": "x"}', r"corpus.jsonl:2: missing field '_id'"),
        ('{"_id": "b"}', r"corpus.jsonl:2: missing field 'text'"),
        ('{"_id": "a", "text": "again"}', r"corpus.jsonl:2: duplicate document id 'a'"),
        ('{"_id": "b", "title": "", "text": "  "}', r"corpus.jsonl:2: document 'b' has empty title and text"),
        ('{"_id": "b", "text": 5}', r"field 'text' must be a string"),
        ('{"_id": "b\\tc", "text": "x"}', r"contains a tab or line break"),
    ],
)
def test_corpus_errors_name_file_and_line(tmp_path, line, message):
    p = write_lines(tmp_path / "corpus.jsonl", ['{"_id": "a", "text": "ok"}', line])
    with pytest.raises(DataError, match=message):
        list(iter_corpus(p))


def test_corpus_empty_missing_non_utf8_truncated_gz(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="no documents"):
        list(iter_corpus(empty))
    with pytest.raises(DataError, match="file not found"):
        list(iter_corpus(tmp_path / "missing.jsonl"))
    bad = tmp_path / "latin.jsonl"
    bad.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin.jsonl:2: not UTF-8"):
        list(iter_corpus(bad))
    rows = "".join(json.dumps({"_id": f"d{i}", "text": "x" * 50}) + "\n" for i in range(2000))
    data = gzip.compress(rows.encode())
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="unreadable or truncated"):
        list(iter_corpus(trunc))


def test_queries_and_qrels(tmp_path):
    q = write_lines(tmp_path / "queries.jsonl",
                    [json.dumps({"_id": 1, "text": "hello"}), json.dumps({"_id": "2", "text": "x"})])
    assert load_queries(q) == {"1": "hello", "2": "x"}
    write_lines(q, [json.dumps({"_id": "1", "text": " "})])
    with pytest.raises(DataError, match="empty text"):
        load_queries(q)
    qr = write_lines(tmp_path / "t.tsv", ["query-id\tcorpus-id\tscore", "1\td1\t1", "1\td2\t2", "2\td1\t1"])
    assert load_qrels(qr) == {"1": {"d1": 1, "d2": 2}, "2": {"d1": 1}}
    write_lines(qr, ["query-id\tcorpus-id\tscore", "1\td1"])
    with pytest.raises(DataError, match=r"t.tsv:2: expected 3 tab-separated columns"):
        load_qrels(qr)
    write_lines(qr, ["query-id\tcorpus-id\tscore", "1\td1\thigh"])
    with pytest.raises(DataError, match=r"t.tsv:2: score must be a number"):
        load_qrels(qr)
    write_lines(qr, ["query-id\tcorpus-id\tscore"])
    with pytest.raises(DataError, match="no judgments"):
        load_qrels(qr)


def test_check_qrels_skips_unknown_ids(caplog):
    qrels = {"q1": {"d1": 1, "dX": 1}, "qX": {"d1": 1}, "q2": {"dY": 1}}
    res = check_qrels(qrels, ["q1", "q2"], ["d1"])
    assert res.kept == {"q1": {"d1": 1}}
    assert (res.unknown_queries, res.unknown_docs) == (1, 2)
    assert "skipped" in caplog.text


def test_load_beir_split(tiny_beir):
    data = load_beir(tiny_beir, "test")
    assert len(data.corpus) == 64 and len(data.queries) == 16 and set(data.queries) == set(data.qrels)
    with pytest.raises(DataError, match=r"split 'dev' not found \(available: test, train\)"):
        load_beir(tiny_beir, "dev")


def test_trec_round_trip_and_errors(tmp_path):
    results = {"q1": [("d3", 0.9), ("d1", 0.5)], "q2": [("d2", 0.1)]}
    write_run(tmp_path / "run.trec", results)
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d3 1 0.900000 hce"
    assert read_run(tmp_path / "run.trec") == {"q1": {"d3": 0.9, "d1": 0.5}, "q2": {"d2": 0.1}}
    (tmp_path / "bad.trec").write_text("q1 Q0 d3 1\n")
    with pytest.raises(DataError, match=r"bad.trec:1: expected 6 columns"):
        read_run(tmp_path / "bad.trec")
    with pytest.raises(DataError, match="whitespace"):
        write_run(tmp_path / "x.trec", {"q 1": [("d", 1.0)]})


def test_atomic_write_failure_keeps_old_file(tmp_path):
    p = tmp_path / "f.json"
    atomic.write_json(p, {"v": 1})
    with pytest.raises(RuntimeError), atomic.atomic_open(p, "w") as fh:
        fh.write('{"v": 2')
        raise RuntimeError("crash mid-write")
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp left behind


def test_atomic_replace_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    atomic.write_text(p, "old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic.write_text(p, "new")
    assert p.read_text() == "old"
    monkeypatch.undo()
    (tmp_path / ".tmp-f.txt.stale").write_text("junk")
    assert [x.name for x in atomic.remove_stale_temps(tmp_path)] == [".tmp-f.txt.stale"]


def test_metrics_against_hand_computed_values():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1, "d3": 1}, "q3": {"d9": 1}}
    run = {"q1": {"d1": 0.9, "d0": 0.5}, "q2": {"d0": 0.9, "d3": 0.8}, "q3": {"q3": 1.0}}
    m = evaluate(qrels, run)
    # q1: perfect (1.0); q2: one of two relevant at rank 2; q3: only a self-hit, dropped -> 0
    ndcg_q2 = (1 / 1.5849625) / (1 + 1 / 1.5849625)
    assert m["ndcg@10"] == pytest.approx((1 + ndcg_q2) / 3, abs=1e-4)
    assert m["mrr@10"] == pytest.approx((1 + 0.5) / 3, abs=1e-4)
    assert m["recall@10"] == pytest.approx((1 + 0.5) / 3, abs=1e-4)
    assert evaluate(qrels, {"q3": {"q3": 1.0}}, ignore_identical_ids=False)["ndcg@10"] == 0.0


def test_mrr_is_cut_at_10():
    qrels = {"q": {"rel": 1}}
    run = {"q": {**{f"x{i}": 1.0 - i * 0.01 for i in range(10)}, "rel": 0.5}}
    assert evaluate(qrels, run)["mrr@10"] == 0.0


def test_batch_size_out_of_range_is_a_config_error_from_python_too():
    assert list(chunks(range(5), 2)) == [[0, 1], [2, 3], [4]]
    for size in (0, 10**20, True, 2.0):
        with pytest.raises(ConfigError, match="batch size"):
            list(chunks(range(5), size))
