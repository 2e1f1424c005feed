"""hce-train fit/eval end to end on the tiny model and data: artifacts, arms, resume, error paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("faiss")

from click.testing import CliRunner  # noqa: E402

from hce_serve.formats.card import ModelCard  # noqa: E402
from hce_serve.formats.tree import Tree  # noqa: E402
from hce_train.cli import main  # noqa: E402

FAST = ["--batch-size", "8", "--leaf-size", "4", "--branching", "4", "--siblings", "3", "--doc-max-length", "48",
        "--query-max-length", "16", "--device", "cpu", "--no-progress", "-q"]


def _fit(tiny_beir: Path, tiny_bert: Path, out: Path, *extra: str):
    res = CliRunner().invoke(main, ["fit", "--data", str(tiny_beir), "--out", str(out), "--base-model", str(tiny_bert),
                                    *FAST, *extra])
    return res


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def hce_model(tiny_beir, tiny_bert, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "hce"
    res = _fit(tiny_beir, tiny_bert, out, "--max-steps", "3", "--seed", "1")
    assert res.exit_code == 0, res.output
    return out


def test_fit_writes_a_complete_model_dir(hce_model, tiny_beir):
    out = hce_model
    card = ModelCard.load(out)
    tree = Tree.load(out)
    assert card.dim == 32 and card.pooling == "mean" and card.normalize
    assert card.max_length == 48 and card.query_max_length == 16
    assert card.tree == tree.summary()
    assert len(tree.doc_ids) == 64 and tree.summary()["max_leaf_size"] <= 6  # ceil(1.3 * leaf_size 4)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_config.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["batch_size"] == 8 and cfg["negatives"] == "hce" and cfg["lr"] == 5e-5  # flags + resolved defaults
    rows = _log(out)
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("loss", "loss_doc", "loss_level1", "inbatch_acc", "margin", "doc_cosine_mean", "lr"):
        assert all(np.isfinite(r[key]) for r in steps), key
    rebuilds = [r for r in rows if r.get("event") == "tree_rebuild"]
    assert rebuilds[0]["step"] == 0 and rebuilds[-1]["step"] == 3  # saved tree = final encoder's tree


def test_saved_tree_matches_final_encoder(hce_model, tiny_beir):
    """The tree's centroids are means of the final encoder's document embeddings."""
    from hce_train.data import load_corpus
    from hce_train.model import HCEEncoder

    enc = HCEEncoder.load(hce_model)
    corpus = load_corpus(tiny_beir)
    emb = enc.encode(corpus.texts, 48, progress=False)
    tree = Tree.load(hce_model)
    leaf = int(tree.doc_leaf[0])
    np.testing.assert_allclose(tree.centroids[leaf], emb[tree.doc_leaf == leaf].mean(0), atol=1e-4)


def test_model_dir_loads_with_plain_transformers(hce_model):
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hce_model)
    assert tok.is_fast
    AutoModel.from_pretrained(hce_model)


def test_eval_prints_metrics_json(hce_model, tiny_beir):
    res = CliRunner().invoke(main, ["eval", "--model", str(hce_model), "--data", str(tiny_beir), "--device", "cpu",
                                    "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    for key in ("ndcg@10", "recall@10", "recall@100", "mrr@10"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["recall@100"] == 1.0  # 64 docs: every relevant document is in the top 100
    assert metrics["queries"] == 16


@pytest.mark.parametrize(("mode", "negatives"), [("supervised", "flat"), ("supervised", "mined"),
                                                  ("unsupervised", "hce")])
def test_other_arms_and_modes(tiny_beir, tiny_bert, tmp_path, mode, negatives):
    out = tmp_path / "m"
    res = _fit(tiny_beir, tiny_bert, out, "--max-steps", "2", "--mode", mode, "--negatives", negatives)
    assert res.exit_code == 0, res.output
    Tree.load(out)
    assert ModelCard.load(out).extra["negatives"] == negatives
    steps = [r for r in _log(out) if "event" not in r]
    assert len(steps) == 2
    if negatives != "hce":
        assert "loss_level1" not in steps[0]  # centroid levels belong to the hce arm only
    if mode == "unsupervised":
        assert json.loads((out / "train_config.json").read_text())["lr"] == 1e-5


def test_resume_reaches_the_same_step_count(tiny_beir, tiny_bert, tmp_path, hce_model):
    out = tmp_path / "r"
    assert _fit(tiny_beir, tiny_bert, out, "--max-steps", "2", "--seed", "1").exit_code == 0
    res = _fit(tiny_beir, tiny_bert, out, "--max-steps", "3", "--seed", "1", "--resume")
    assert res.exit_code == 0, res.output
    steps = [r["step"] for r in _log(out) if "event" not in r]
    assert steps == [1, 2, 3]
    assert json.loads(res.stdout)["steps"] == 3
    ModelCard.load(out)


def test_config_file_and_flag_precedence(tiny_beir, tiny_bert, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"tau": 0.1, "batch_size": 4, "level_weights": [0.2, 0.3]}))
    out = tmp_path / "p"
    res = _fit(tiny_beir, tiny_bert, out, "--max-steps", "1", "--config", str(cfg))  # FAST sets --batch-size 8
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["tau"] == 0.1 and saved["batch_size"] == 8 and saved["level_weights"] == [0.2, 0.3]


def test_error_paths(tiny_beir, tiny_bert, hce_model, tmp_path):
    # An out dir holding a model is refused without --overwrite.
    res = _fit(tiny_beir, tiny_bert, hce_model, "--max-steps", "1")
    assert res.exit_code == 1 and "--overwrite" in res.output
    # Missing split.
    res = _fit(tiny_beir, tiny_bert, tmp_path / "a", "--split", "dev", "--max-steps", "1")
    assert res.exit_code == 1 and "dev" in res.output
    # A base model that cannot be loaded.
    res = CliRunner().invoke(main, ["fit", "--data", str(tiny_beir), "--out", str(tmp_path / "b"),
                                    "--base-model", str(tmp_path / "no-such-model"), *FAST])
    assert res.exit_code == 1 and "could not be loaded" in res.output
    # Unknown config key, and a bad value.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"temprature": 0.1}))
    assert _fit(tiny_beir, tiny_bert, tmp_path / "c", "--config", str(bad)).exit_code == 1
    assert _fit(tiny_beir, tiny_bert, tmp_path / "c", "--temperature", "0").exit_code == 1
    # Bad usage is exit 2.
    assert _fit(tiny_beir, tiny_bert, tmp_path / "c", "--negatives", "nope").exit_code == 2
    # Resume without a checkpoint.
    assert _fit(tiny_beir, tiny_bert, tmp_path / "d", "--resume").exit_code == 1


def test_bad_data(tiny_beir, tiny_bert, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_beir, data)
    # Unknown ids in qrels are skipped (and warned about), training still runs.
    with open(data / "qrels" / "train.tsv", "a") as fh:
        fh.write("q-unknown\tprotein-0\t1\nq-protein-0\tno-such-doc\t1\n")
    res = _fit(data, tiny_bert, tmp_path / "ok", "--max-steps", "1")
    assert res.exit_code == 0, res.output
    # An empty document is left out of training with a warning and the count, as index build warns and counts.
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "empty", "title": "", "text": "  "}) + "\n")
    res = _fit(data, tiny_bert, tmp_path / "e", "--max-steps", "1")
    assert res.exit_code == 0 and json.loads(res.stdout)["skipped_empty"] == 1, res.output
    # A duplicate document id is a one-line error naming its line.
    with open(data / "corpus.jsonl", "a") as fh:
        fh.write(json.dumps({"_id": "empty", "title": "again", "text": "words"}) + "\n")
    res = _fit(data, tiny_bert, tmp_path / "f", "--max-steps", "1")
    assert res.exit_code == 1 and "duplicate document id 'empty'" in res.output and "Traceback" not in res.output


def test_nan_loss_stops_with_step_and_hint(tiny_beir, tiny_bert, tmp_path, monkeypatch):
    import torch

    import hce_train.step as step_mod

    real = step_mod.hce_loss

    def nan_loss(*a, **k):
        out = real(*a, **k)
        out.loss = out.loss * torch.tensor(float("nan"))
        out.stats["loss"] = float("nan")
        return out

    monkeypatch.setattr(step_mod, "hce_loss", nan_loss)
    res = _fit(tiny_beir, tiny_bert, tmp_path / "n", "--max-steps", "2", "--negatives", "flat")
    assert res.exit_code == 1
    assert "step 1" in res.output and "--lr" in res.output


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("hnswlib", "optimum", "onnxruntime"):
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
import hce_train, hce_train.cli, hce_train.loop, hce_train.evaluate
print("ok")
"""


def test_imports_without_hnswlib_and_optimum():
    res = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_interrupted_run_resumes_to_the_same_weights(tiny_beir, tiny_bert, tmp_path, monkeypatch):
    """Crash in epoch 2 (after the epoch-1 checkpoint), resume: weights equal an uninterrupted run's."""
    from safetensors.numpy import load_file

    import hce_train.loop as loop_mod

    args = ("--epochs", "2", "--seed", "2", "--siblings", "2")  # 24 pairs / batch 8: 3 steps per epoch
    straight = tmp_path / "straight"
    assert _fit(tiny_beir, tiny_bert, straight, *args).exit_code == 0

    real = loop_mod.train_step

    def crash_at_5(ctx, exs, batch, step, lr, **kw):
        if step == 4:
            raise KeyboardInterrupt("simulated crash")
        return real(ctx, exs, batch, step, lr, **kw)

    crashed = tmp_path / "crashed"
    monkeypatch.setattr(loop_mod, "train_step", crash_at_5)
    assert _fit(tiny_beir, tiny_bert, crashed, *args).exit_code != 0
    assert not (crashed / "hce_model.json").exists()  # an unfinished run leaves no card
    monkeypatch.setattr(loop_mod, "train_step", real)
    res = _fit(tiny_beir, tiny_bert, crashed, *args, "--resume")
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in _log(crashed) if "event" not in r] == [1, 2, 3, 4, 5, 6]
    a, b = load_file(straight / "model.safetensors"), load_file(crashed / "model.safetensors")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(Tree.load(straight).doc_leaf, Tree.load(crashed).doc_leaf)


@pytest.mark.slow
def test_default_base_model_is_offline_minilm(tiny_beir, tmp_path, minilm_path):
    """No --base-model: all-MiniLM-L6-v2 from the offline package; the card names the hub id."""
    out = tmp_path / "mini"
    res = CliRunner().invoke(main, ["fit", "--data", str(tiny_beir), "--out", str(out), "--max-steps", "1",
                                    "--batch-size", "4", "--siblings", "1", "--doc-max-length", "32",
                                    "--query-max-length", "16", "--device", "cpu", "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    card = ModelCard.load(out)
    assert card.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.dim == 384
    assert (out / "tokenizer.json").is_file()
