"""The shallow query encoder: distillation on a tiny model, its export beside the document graphs, serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")
pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from click.testing import CliRunner  # noqa: E402

from hce_serve.encoder import Encoder  # noqa: E402
from hce_serve.errors import ConfigError, FormatError  # noqa: E402
from hce_serve.formats.card import ModelCard  # noqa: E402
from hce_train.cli import main as train_cli  # noqa: E402


@pytest.fixture(scope="module")
def pair(tiny_beir, tiny_bert, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A 2-layer MODEL_DIR (2 fit steps) and its distilled 1-layer query encoder inside it."""
    root = tmp_path_factory.mktemp("distill")
    model = root / "m"
    runner = CliRunner()
    res = runner.invoke(train_cli, ["fit", "--data", str(tiny_beir), "--out", str(model), "--base-model",
                                    str(tiny_bert), "--max-steps", "2", "--batch-size", "8", "--doc-max-length", "48",
                                    "--query-max-length", "16", "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(train_cli, ["distill-query", "--model", str(model), "--layers", "1", "--out",
                                    str(model / "query_encoder"), "--epochs", "2", "--batch-size", "16",
                                    "--pseudo-words", "4", "12", "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    return model, model / "query_encoder", json.loads(res.stdout)


def test_distilled_student_is_the_teachers_bottom_layers_and_the_card_records_the_pair(pair):
    model, qdir, summary = pair
    cfg = json.loads((qdir / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and summary["teacher_layers"] == 2
    assert summary["steps"] > 0 and np.isfinite(summary["final"]["loss"])
    assert summary["config"]["pseudo_words"] == [4, 12]  # --pseudo-words reached the crops
    assert summary["init_from"] == [0]  # the default (ends) at L = 1: layer 0 and no top layers
    qcard, card = ModelCard.load(qdir), ModelCard.load(model)
    assert qcard.extra["role"] == "query_encoder" and qcard.dim == card.dim
    assert card.extra["query_encoder"]["path"] == "query_encoder" and card.extra["query_encoder"]["layers"] == 1
    held = summary["heldout"]
    assert held["queries"] > 0 and -1 <= held["cosine_min"] <= held["cosine_mean"] <= 1


def test_distill_refuses_a_student_as_deep_as_the_teacher(pair, tmp_path):
    model, _, _ = pair
    res = CliRunner().invoke(train_cli, ["distill-query", "--model", str(model), "--layers", "2", "--out",
                                         str(tmp_path / "q"), "--no-progress"])
    assert res.exit_code == 1 and "needs fewer" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(train_cli, ["distill-query", "--model", str(model), "--layers", "1", "--out",
                                         str(tmp_path / "q"), "--pseudo-words", "30", "20", "--no-progress"])
    assert res.exit_code == 1 and "pseudo_words must be MIN,MAX" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "q").exists()


def test_export_writes_and_validates_the_query_graphs_and_serving_picks_them(pair, tmp_path):
    import onnx

    from hce_export.api import export

    model, _, _ = pair
    out = tmp_path / "ex"
    section = export(model, out, quantize=True)
    assert section["query_files"] == {"fp32": "query_model.onnx", "int8": "query_model_int8.onnx"}
    v = section["validation"]
    assert v["query_fp32_vs_torch_max_abs_diff"] < 1e-4 and v["query_finite"] and not v["degraded"]
    assert v["query_int8_vs_fp32_min_cos"] > 0.9
    graph = onnx.load(str(out / "query_model.onnx"))
    assert [o.name for o in graph.graph.output] == ["sentence_embedding"]  # the pooled query-side output

    shallow, full = Encoder(out), Encoder(out, query_encoder="full")
    assert shallow.query_encoder == "shallow" and full.query_encoder == "full"
    texts = ["protein folding", "soil erosion in rivers"]
    qs, qf = shallow.encode_queries(texts), full.encode_queries(texts)
    assert qs.shape == qf.shape == (2, shallow.dim) and not np.allclose(qs, qf)  # two different graphs
    np.testing.assert_allclose(shallow.encode_documents(texts), full.encode_documents(texts), atol=1e-6)
    assert shallow.encode_queries(texts[:1]).shape == (1, shallow.dim)  # the single-query path too


def test_an_export_without_a_query_model_still_serves(tiny_export):
    enc = Encoder(tiny_export)
    assert enc.query_encoder == "full" and enc.query_session is None
    assert enc.encode_queries(["a query"]).shape == (1, enc.dim)
    with pytest.raises(FormatError, match="no shallow"):
        Encoder(tiny_export, query_encoder="shallow")


def test_an_index_over_the_distilled_export_serves_both_query_encoders(pair, tiny_beir, tmp_path):
    from hce_export.api import export
    from hce_serve.cli import main as serve_cli
    from hce_serve.engine import Engine

    model, _, _ = pair
    export(model, tmp_path / "ex", quantize=True)
    Engine.build(tmp_path / "ex", tiny_beir / "corpus.jsonl", tmp_path / "idx")
    runner = CliRunner()

    def search(*extra: str) -> dict:
        res = runner.invoke(serve_cli, ["search", "--index", str(tmp_path / "idx"), "protein enzyme", "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    stats = json.loads(runner.invoke(serve_cli, ["index", "stats", "--index", str(tmp_path / "idx")]).stdout)
    assert stats["encoder"]["query_encoder"] == "shallow" and stats["encoder"]["query_layers"] == 1
    shallow, full = search(), search("--query-encoder", "full")
    assert len(shallow["hits"]) == len(full["hits"]) == 10
    assert [h["score"] for h in shallow["hits"]] != [h["score"] for h in full["hits"]]  # two graphs, one index


def test_pseudo_per_doc_crops_each_document_that_many_times_up_to_max_pseudo(tiny_beir):
    from hce_train.config import DistillConfig
    from hce_train.data import load_corpus
    from hce_train.distill import training_queries

    texts = load_corpus(tiny_beir).texts
    train = len(training_queries(tiny_beir, texts, DistillConfig(max_pseudo=1), 0)) - 1  # the train split's queries
    for per_doc, cap, want in ((1, 10**6, len(texts)), (3, 10**6, 3 * len(texts)), (3, 100, 100)):
        got = training_queries(tiny_beir, texts, DistillConfig(pseudo_per_doc=per_doc, max_pseudo=cap), 0)
        assert len(got) == train + want
    auto = training_queries(tiny_beir, texts, DistillConfig(), 0)  # 0: fill max_pseudo, 8 to 16 a document
    assert len(auto) == train + 16 * len(texts)
    queries = training_queries(tiny_beir, texts, DistillConfig(max_pseudo=len(texts) * 10), 0)
    assert len(queries) == train + 10 * len(texts)
    assert [DistillConfig().crops_per_doc(n) for n in (64, 1460, 5183, 10**6)] == [16, 14, 8, 8]
    assert DistillConfig(pseudo_per_doc=3).crops_per_doc(64) == 3
    with pytest.raises(ConfigError, match="pseudo_per_doc"):
        DistillConfig(pseudo_per_doc=-1)
    crops = training_queries(tiny_beir, texts, DistillConfig(pseudo_per_doc=4), 0)[train:]
    assert len(set(crops)) > len(texts)  # the extra crops are other spans, not copies
    assert crops != training_queries(tiny_beir, texts, DistillConfig(pseudo_per_doc=4), 1)[train:]  # new per epoch


def test_train_query_repeats_weights_the_train_split_against_the_crops(tiny_beir):
    from hce_train.config import DistillConfig
    from hce_train.data import load_corpus
    from hce_train.distill import training_queries

    texts = load_corpus(tiny_beir).texts
    once = training_queries(tiny_beir, texts, DistillConfig(max_pseudo=1, train_query_repeats=1), 0)
    thrice = training_queries(tiny_beir, texts, DistillConfig(max_pseudo=1, train_query_repeats=3), 0)
    train = once[:-1]  # the train split's queries, then one crop
    assert train and thrice == train * 3 + once[-1:]  # the same crop: repeats do not move the crop sampling


def test_pseudo_words_sets_the_crop_length(tiny_beir):
    from hce_serve.errors import ConfigError
    from hce_train.config import DistillConfig
    from hce_train.distill import training_queries

    long_docs = [" ".join(f"w{i}_{j}" for j in range(300)) for i in range(50)]
    lengths = {n: [len(q.split())
                   for q in training_queries(tiny_beir.parent, long_docs, DistillConfig(pseudo_words=n), 0)]
               for n in ((8, 24), (120, 190))}
    assert len(lengths[(8, 24)]) == len(lengths[(120, 190)]) == 16 * len(long_docs)  # no train split; 16 a document
    assert max(lengths[(8, 24)]) <= 24 and max(lengths[(120, 190)]) <= 190
    assert min(lengths[(120, 190)]) > 90 > max(lengths[(8, 24)])  # each word of a crop is dropped with p .1
    with pytest.raises(ConfigError, match="pseudo_words"):
        DistillConfig(pseudo_words=(30, 20))


def test_pick_layers_rules_and_lists():
    from hce_serve.errors import ConfigError
    from hce_train.distill import pick_layers

    assert pick_layers("bottom", 3, 6) == [0, 1, 2]
    assert pick_layers("ends", 3, 6) == [0, 4, 5] and pick_layers("ends", 2, 6) == [0, 5]
    assert pick_layers("ends", 1, 6) == [0]  # one layer: the embedding side's
    assert pick_layers("top", 2, 6) == [4, 5] and pick_layers("0,2,5", 3, 6) == [0, 2, 5]
    for rule, layers in (("2,1", 2), ("0,0", 2), ("0,6", 2), ("bottom", 6)):
        with pytest.raises(ConfigError):
            pick_layers(rule, layers, 6)


def test_init_layers_copies_those_teacher_layers_and_bad_values_are_one_line_errors(pair, tmp_path):
    import torch

    from hce_serve.errors import ConfigError
    from hce_train.config import DistillConfig
    from hce_train.distill import shallow_copy
    from hce_train.model import HCEEncoder

    model, _, _ = pair
    teacher = HCEEncoder.load(model, "cpu")
    student, kept = shallow_copy(teacher, 1, "top")
    assert kept == [1] and student.model.config.num_hidden_layers == 1
    got, want = student.model.encoder.layer[0].state_dict(), teacher.model.encoder.layer[1].state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert not torch.equal(got[next(iter(got))], teacher.model.encoder.layer[0].state_dict()[next(iter(got))])
    with pytest.raises(ConfigError, match="init_layers must be one of"):
        DistillConfig(layers=2, init_layers="0")  # one index for two layers
    res = CliRunner().invoke(train_cli, ["distill-query", "--model", str(model), "--layers", "1", "--out",
                                         str(tmp_path / "q"), "--init-layers", "middle", "--no-progress"])
    assert res.exit_code == 1 and "init_layers must be one of" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "q").exists()


def test_length_grouped_batches_cover_every_query_once_and_pad_less():
    from hce_train.distill import length_grouped

    rng = np.random.default_rng(0)
    lengths = rng.integers(30, 1200, size=1000).tolist()  # characters: crops of 32-192 words
    order = rng.permutation(1000)
    batches = length_grouped(order, lengths, 64, np.random.default_rng(1), mega=4)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000)) and len(batches) == -(-1000 // 64)  # as many as a plain cut
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    plain = sum(len(b) * max(lengths[i] for i in b) for b in np.array_split(order, len(batches)))
    assert padded < 0.75 * plain  # a batch pads to its longest query: far less padding once grouped
    again = length_grouped(order, lengths, 64, np.random.default_rng(1), mega=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))  # reproducible per seed
    # the batches come in random order, not longest first
    tops = [max(lengths[i] for i in b) for b in batches]
    assert tops != sorted(tops, reverse=True)


def test_length_grouped_is_recorded_and_can_be_switched_off(pair, tmp_path):
    model, _, summary = pair
    assert summary["config"]["length_grouped"] is True  # the default
    res = CliRunner().invoke(train_cli, ["distill-query", "--model", str(model), "--layers", "1", "--out",
                                         str(tmp_path / "q"), "--epochs", "1", "--batch-size", "16",
                                         "--no-length-grouped", "--no-progress", "-q"])
    assert res.exit_code == 0, res.output
    off = json.loads(res.stdout)
    assert off["config"]["length_grouped"] is False and off["steps"] > 0


def test_loss_settings_reach_the_config_and_bad_ones_are_usage_errors(pair, tmp_path):
    model, _, summary = pair
    config = summary["config"]
    assert (config["tau"], config["cos_weight"], config["kl_weight"]) == (0.05, 1.0, 1.0)
    args = ["distill-query", "--model", str(model), "--layers", "1", "--out", str(tmp_path / "q"), "--epochs", "1",
            "--batch-size", "16", "--no-progress", "-q"]
    res = CliRunner().invoke(train_cli, [*args, "--tau", "0.02", "--cos-weight", "2", "--kl-weight", "0.5"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.stdout)["config"]
    assert (cfg["tau"], cfg["cos_weight"], cfg["kl_weight"]) == (0.02, 2.0, 0.5)
    res = CliRunner().invoke(train_cli, [*args, "--train-query-repeats", "2", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["config"]["train_query_repeats"] == 2
    for bad in (["--tau", "0"], ["--kl-weight", "-1"], ["--train-query-repeats", "0"]):
        res = CliRunner().invoke(train_cli, [*args, *bad])
        assert res.exit_code == 2 and "Traceback" not in res.output


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(f.relative_to(folder)): (f.stat().st_size, f.stat().st_mtime_ns) for f in folder.rglob("*")}


def test_a_plain_encoder_folder_distils_into_out_and_exports_in_one_more_command(tiny_bert, tiny_beir, tmp_path):
    """An untrained base model: --out becomes the pair's MODEL_DIR; the base folder is never written."""
    import shutil

    from hce_export.api import export

    base = tmp_path / "site-packages" / "base-model"  # stands for a folder the user does not own
    shutil.copytree(tiny_bert, base)
    before = _snapshot(base)
    out = tmp_path / "pair"
    args = ["distill-query", "--model", str(base), "--data", str(tiny_beir), "--layers", "1", "--out", str(out),
            "--epochs", "1", "--batch-size", "16", "--max-pseudo", "128", "--no-progress", "-q"]
    res = CliRunner().invoke(train_cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert _snapshot(base) == before  # nothing written, nothing touched in the teacher's folder
    assert summary["model_dir"] == summary["out"] == str(out) and summary["query_dir"] == str(out / "query_encoder")
    card, qcard = ModelCard.load(out), ModelCard.load(out / "query_encoder")
    assert card.extra["query_encoder"]["path"] == "query_encoder" and card.extra["query_encoder"]["layers"] == 1
    assert card.base_model == str(base) and card.pooling == "mean" and card.dim == qcard.dim == 32
    assert qcard.extra["role"] == "query_encoder" and qcard.extra["teacher"] == str(out.resolve())
    assert json.loads((out / "query_encoder" / "config.json").read_text())["num_hidden_layers"] == 1
    section = export(out, tmp_path / "ex", quantize=True)  # the second command: both graphs, validated
    assert section["query_files"] == {"fp32": "query_model.onnx", "int8": "query_model_int8.onnx"}
    assert not section["validation"]["degraded"]
    # A rerun into the same --out needs --overwrite, and then replaces the pair as a whole.
    res = CliRunner().invoke(train_cli, args)
    assert res.exit_code == 1 and "--overwrite" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(train_cli, [*args, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert ModelCard.load(out).extra["query_encoder"]["path"] == "query_encoder" and _snapshot(base) == before


def test_what_distill_query_refuses_is_a_one_line_error_that_writes_nothing(tiny_bert, tiny_beir, tmp_path):
    import shutil

    def run(model: Path, out: Path, *extra: str) -> str:
        res = CliRunner().invoke(train_cli, ["distill-query", "--model", str(model), "--layers", "1", "--out",
                                             str(out), "--no-progress", "-q", *extra])
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        return res.output

    assert "pass --data" in run(tiny_bert, tmp_path / "q")  # a plain folder records no training data
    (tmp_path / "not-a-model").mkdir()
    assert "no config.json" in run(tmp_path / "not-a-model", tmp_path / "q", "--data", str(tiny_beir))
    cls = tmp_path / "cls-model"
    shutil.copytree(tiny_bert, cls)
    (cls / "1_Pooling").mkdir()
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert "mean-pooled" in run(cls, tmp_path / "q", "--data", str(tiny_beir))
    mine = tmp_path / "models" / "mine"
    shutil.copytree(tiny_bert, mine)
    before = _snapshot(mine)
    for out in (mine, mine.parent):  # --overwrite would delete the teacher: refused before any work
        assert "must not be --model's folder or contain it" in run(mine, out, "--data", str(tiny_beir), "--overwrite")
    assert _snapshot(mine) == before and not (tmp_path / "q").exists()
    assert not (tiny_bert / "hce_model.json").exists()
