"""Documents with empty title and text (issue 34, item 2): ``fit``, ``eval`` and ``distill-query`` do what
``hce-serve index build`` does, a warning and the count, where they used to stop at the first one. Training
leaves them out (nothing to learn from); ``eval`` searches them as they are, as the index and BEIR do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from hce_train.cli import main as train_cli  # noqa: E402

EMPTY = [{"_id": "blank-1", "title": "", "text": ""}, {"_id": "blank-2", "title": "  ", "text": "\n"}]


@pytest.fixture(scope="module")
def holey(tiny_beir, tmp_path_factory) -> Path:
    """tiny_beir with 2 empty documents among the others, one of them judged in the train split."""
    d = tmp_path_factory.mktemp("holey") / "data"
    shutil.copytree(tiny_beir, d)
    lines = (d / "corpus.jsonl").read_text().splitlines()
    lines[5:5] = [json.dumps(EMPTY[0])]
    lines.append(json.dumps(EMPTY[1]))
    (d / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with open(d / "qrels" / "train.tsv", "a") as fh:
        fh.write("q-protein-0\tblank-1\t1\n")
    return d


@pytest.fixture(scope="module")
def fitted(holey, tiny_bert, tmp_path_factory) -> tuple[Path, dict, str]:
    model = tmp_path_factory.mktemp("holey-model") / "m"
    res = CliRunner().invoke(train_cli, ["fit", "--data", str(holey), "--out", str(model), "--base-model",
                                         str(tiny_bert), "--max-steps", "2", "--batch-size", "8",
                                         "--doc-max-length", "48", "--query-max-length", "16", "--no-progress"])
    assert res.exit_code == 0, res.output
    return model, json.loads(res.stdout), res.stderr


def test_fit_leaves_empty_documents_out_with_a_warning_and_the_count(fitted, holey):
    model, summary, stderr = fitted
    assert summary["skipped_empty"] == 2 and summary["steps"] == 2
    assert "left out 2 documents with empty title and text from training" in stderr
    assert "left out 1 judgments of documents with empty title and text" in stderr  # not "unknown document ids"
    assert "unknown document ids" not in stderr
    tree_ids = (model / "tree_doc_ids.txt").read_text().split()
    assert len(tree_ids) == 64 and not {"blank-1", "blank-2"} & set(tree_ids)


def test_fit_unsupervised_leaves_them_out_too(holey, tiny_bert, tmp_path):
    res = CliRunner().invoke(train_cli, ["fit", "--data", str(holey), "--out", str(tmp_path / "m"), "--mode",
                                         "unsupervised", "--base-model", str(tiny_bert), "--max-steps", "1",
                                         "--batch-size", "8", "--doc-max-length", "32", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped_empty"] == 2 and "left out 2 documents" in res.stderr


def test_a_dev_split_is_drawn_from_queries_that_judge_text(holey, tiny_beir):
    from hce_train.data import holdout_queries

    dev = holdout_queries(holey, "train", 5, 0)  # used to stop at the first empty document
    assert len(dev) == 5 and dev == holdout_queries(holey, "train", 5, 0)
    assert dev == holdout_queries(tiny_beir, "train", 5, 0)  # q-protein-0 still judges a document with text


def test_eval_searches_empty_documents_as_the_index_does(fitted, holey):
    model, _, _ = fitted
    res = CliRunner().invoke(train_cli, ["eval", "--model", str(model), "--data", str(holey), "--no-progress"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["docs"] == 66 and metrics["empty"] == 2 and 0 <= metrics["ndcg@10"] <= 1
    assert "2 documents have empty title and text; searched as they are" in res.stderr


def test_eval_takes_fits_embeddings_without_the_empty_rows(fitted, holey):
    from hce_train.evaluate import evaluate_encoder
    from hce_train.model import HCEEncoder

    model, _, _ = fitted
    enc = HCEEncoder.load(model)
    lines = [json.loads(x) for x in (holey / "corpus.jsonl").read_text().splitlines()]
    texts = [f"{d['title']} {d['text']}".strip() for d in lines if (d["title"] + d["text"]).strip()]
    kept = enc.encode(texts, 48, 16, False)  # what fit's keep["corpus_embeddings"] holds: non-empty rows only
    ref = evaluate_encoder(enc, holey, "test", 16, 48, progress=False)
    got = evaluate_encoder(enc, holey, "test", 16, 48, progress=False, doc_emb=kept)
    assert got["ndcg@10"] == pytest.approx(ref["ndcg@10"], abs=1e-4) and got["empty"] == 2
    with pytest.raises(ValueError, match="rows for 66 documents"):
        evaluate_encoder(enc, holey, "test", 16, 48, progress=False, doc_emb=kept[:10])


def test_distill_query_leaves_empty_documents_out(fitted, holey, tmp_path):
    from hce_train.config import DistillConfig
    from hce_train.distill import distill
    from hce_train.model import HCEEncoder

    model, _, _ = fitted
    res = CliRunner().invoke(train_cli, ["distill-query", "--model", str(model), "--data", str(holey), "--layers",
                                         "1", "--out", str(tmp_path / "q"), "--epochs", "1", "--batch-size", "16",
                                         "--max-pseudo", "128", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["skipped_empty"] == 2 and "left out 2 documents" in res.stderr
    # A caller's file-aligned corpus embeddings (66 rows) lose the empty documents' rows, in file order.
    lines = [json.loads(x) for x in (holey / "corpus.jsonl").read_text().splitlines()]
    file_emb = HCEEncoder.load(model).encode([f"{d['title']} {d['text']}".strip() for d in lines], 48, 16, False)
    out = distill(model, tmp_path / "q2", DistillConfig(layers=1, epochs=1, batch_size=16, max_pseudo=128),
                  data=holey, progress=False, doc_emb=file_emb)
    assert out["skipped_empty"] == 2 and out["steps"] > 0


def test_a_corpus_of_only_empty_documents_is_a_one_line_error(tiny_bert, tmp_path):
    d = tmp_path / "blank"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in EMPTY))
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "anything"}) + "\n")
    (d / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq\tblank-1\t1\n")
    res = CliRunner().invoke(train_cli, ["fit", "--data", str(d), "--out", str(tmp_path / "m"), "--base-model",
                                         str(tiny_bert), "--max-steps", "1", "--no-progress"])
    assert res.exit_code == 1 and "all 2 documents have empty title and text" in res.output
    assert "Traceback" not in res.output and np.all([not (tmp_path / "m" / "hce_model.json").exists()])
