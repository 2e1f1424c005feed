"""hce_export on the tiny model: graph contract, torch parity, int8, card, tree, overwrite and validation policy."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("optimum.exporters.onnx")
ort = pytest.importorskip("onnxruntime")

from hce_export.api import export  # noqa: E402
from hce_export.quantize import FFN_OUT_FP32, ISAS, detect_isa, settings_for  # noqa: E402
from hce_export.validate import Tolerances  # noqa: E402
from hce_serve import cpu  # noqa: E402
from hce_serve.encoder import Encoder  # noqa: E402
from hce_serve.errors import ConfigError, FormatError, MissingDependencyError, ValidationError  # noqa: E402
from hce_serve.formats.card import ModelCard  # noqa: E402
from hce_serve.formats.tree import Tree  # noqa: E402

TEXTS = ["protein folding", "climate carbon warming ocean ice " * 6, "a", "vaccine immune antibody virus dose"]


def torch_reference(model_dir, texts, pooling="mean", max_length=128):
    """Embeddings computed independently of hce_export: HF tokenizer + AutoModel + pooling by hand."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, L, H)
    if pooling == "cls":
        emb = hidden[:, 0]
    else:
        m = batch["attention_mask"].unsqueeze(-1).float()
        emb = (hidden * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(emb, dim=1).numpy()


def no_temp_leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".tmp-")] == []


def test_graph_contract_and_card(tiny_export):
    card = ModelCard.load(tiny_export)
    onnx = card.onnx
    assert onnx["files"] == {"fp32": "model.onnx", "int8": "model_int8.onnx"}
    assert onnx["output"] == "sentence_embedding" and onnx["inputs"][:2] == ["input_ids", "attention_mask"]
    quant = onnx["quantization"]
    assert quant["per_channel"] is True and quant["isa"] in ISAS
    assert quant["exported_on"] == {"cpu": cpu.model(), "instruction_sets": cpu.timing_isas()}  # the CPU's own flags
    # The FFN output projections (fed by GELU) stay fp32 where the ISA's default keeps them: one per layer of the
    # 2-layer tiny model.
    assert quant["keep_ffn_out"] is FFN_OUT_FP32[quant["isa"]]
    assert len(quant["excluded_nodes"]) == 2 * quant["keep_ffn_out"]
    assert all("output/dense" in n for n in quant["excluded_nodes"])
    val = onnx["validation"]
    assert val["fp32_vs_torch_max_abs_diff"] <= 1e-4 and val["int8_vs_fp32_mean_cos"] >= 0.99
    assert val["degraded"] is False and val["failures"] == []
    assert {"onnxruntime", "torch", "transformers"} <= set(onnx["versions"])
    for name in ("model.onnx", "model_int8.onnx", "tokenizer.json", "hce_model.json"):
        assert (tiny_export / name).is_file()
    assert no_temp_leftovers(tiny_export.parent)
    for variant in ("model.onnx", "model_int8.onnx"):
        sess = ort.InferenceSession(str(tiny_export / variant), providers=["CPUExecutionProvider"])
        (out,) = sess.get_outputs()
        assert out.name == "sentence_embedding" and out.shape[1] == card.dim
        # Dynamic batch and sequence axes: several shapes run through the same graph.
        for b, n in ((1, 3), (3, 17), (2, 90)):
            ids = np.full((b, n), 7, dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            feed = {i.name: feed[i.name] for i in sess.get_inputs()}
            (emb,) = sess.run(None, feed)
            assert emb.shape == (b, card.dim)
            np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)


def test_fp32_matches_torch_and_int8_close(tiny_export, tiny_bert):
    ref = torch_reference(tiny_bert, TEXTS)
    fp32 = Encoder(tiny_export, variant="fp32").encode_documents(TEXTS)
    assert np.abs(fp32 - ref).max() <= 1e-4
    int8 = Encoder(tiny_export, variant="int8").encode_documents(TEXTS)
    cos = (int8 * fp32).sum(1)
    assert cos.min() >= 0.97 and cos.mean() >= 0.99
    assert not np.allclose(int8, fp32, atol=1e-7)  # the int8 graph really is a different (quantised) graph


def make_model_dir(tiny_bert, folder, pooling="cls"):
    """An hce-train-like MODEL_DIR: the tiny BERT plus a card and a tree."""
    shutil.copytree(tiny_bert, folder)
    rng = np.random.default_rng(0)
    parent = np.array([-1, 0, 0, 1, 1, 2, 2], dtype=np.int32)
    cents = rng.standard_normal((7, 32)).astype(np.float32)
    ids = [f"d{i}" for i in range(5)]
    tree = Tree(parent=parent, centroids=cents, doc_leaf=np.array([3, 4, 5, 6, 3], dtype=np.int32), doc_ids=ids)
    tree.save(folder)
    card = ModelCard(dim=32, base_model="tiny", pooling=pooling, max_length=40, query_max_length=8,
                     tree=tree.summary())
    card.save(folder)
    return folder


def test_model_dir_card_and_tree_are_carried(tiny_bert, tmp_path):
    model = make_model_dir(tiny_bert, tmp_path / "model")
    out = tmp_path / "export"
    result = export(model, out)
    assert result["files"] == {"fp32": "model.onnx"}
    card = ModelCard.load(out)
    assert (card.pooling, card.max_length, card.query_max_length) == ("cls", 40, 8)
    assert card.tree == ModelCard.load(model).tree
    assert (out / "tree.npz").read_bytes() == (model / "tree.npz").read_bytes()
    assert (out / "tree_doc_ids.txt").read_text() == (model / "tree_doc_ids.txt").read_text()
    ref = torch_reference(model, TEXTS, pooling="cls", max_length=40)
    got = Encoder(out).encode_documents(TEXTS)
    assert np.abs(got - ref).max() <= 1e-4


def test_strict_tolerance_fails_and_leaves_nothing(tiny_bert, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(ValidationError, match="min cosine"):
        export(tiny_bert, out, quantize=True, tolerances=Tolerances(int8_min_cos=1.01))
    assert not out.exists() and no_temp_leftovers(tmp_path)
    result = export(tiny_bert, out, quantize=True, tolerances=Tolerances(int8_min_cos=1.01), allow_degraded=True)
    val = ModelCard.load(out).onnx["validation"]
    assert val["degraded"] is True and "min cosine" in val["failures"][0]
    assert result["validation"] == val


def test_existing_out_refused_unless_overwrite(tiny_bert, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "marker").write_text("old")
    with pytest.raises(ConfigError, match="--overwrite"):
        export(tiny_bert, out)
    assert (out / "marker").is_file()
    export(tiny_bert, out, overwrite=True)
    assert not (out / "marker").exists() and (out / "model.onnx").is_file()
    assert no_temp_leftovers(tmp_path)
    with pytest.raises(ConfigError, match="model folder"):
        export(tiny_bert, tiny_bert, overwrite=True)  # never delete the model it exports


def test_bad_sources(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        export(tmp_path / "missing", tmp_path / "o1")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hi")
    with pytest.raises(FormatError, match="config.json"):
        export(foreign, tmp_path / "o2")


def test_missing_optimum_names_the_extra(tiny_bert, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optimum.exporters.onnx.model_configs", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'hce\[export\]'"):
        export(tiny_bert, tmp_path / "o")
    assert no_temp_leftovers(tmp_path)


def test_validate_data_records_ndcg(tiny_bert, tiny_beir, tmp_path):
    out = tmp_path / "with-data"
    export(tiny_bert, out, quantize=True, validate_data=tiny_beir, validate_max_queries=10, allow_degraded=True)
    data = ModelCard.load(out).onnx["validation"]["data"]
    assert data["queries"] == 10 and data["subsampled"] is True
    assert 0.0 <= data["ndcg@10_fp32"] <= 1.0 and 0.0 <= data["ndcg@10_int8"] <= 1.0


def test_isa_settings():
    assert detect_isa() in ISAS
    assert settings_for("avx2").reduce_range is True  # u8s8 saturation without VNNI
    assert settings_for("avx512-vnni").reduce_range is False
    assert settings_for("arm64").per_channel is True and settings_for("arm64").keep_ffn_out is True
    with pytest.raises(ConfigError):
        settings_for("sse2")


def test_ffn_out_default_is_per_isa_and_an_explicit_choice_wins():
    # int8-study.json: on AVX-512 VNNI all-int8 is 1.44x faster and loses no more nDCG@10; on AVX2 it loses more
    assert settings_for("avx2").keep_ffn_out is True and settings_for("avx512-vnni").keep_ffn_out is False
    assert settings_for("avx512-vnni", keep_ffn_out=True).keep_ffn_out is True
    assert settings_for("avx2", keep_ffn_out=False).keep_ffn_out is False


def test_card_json_is_valid_and_complete(tiny_export):
    obj = json.loads((tiny_export / "hce_model.json").read_text())
    assert obj["format"] == "hce-model" and obj["onnx"]["opset"] >= 14


def test_fp16_variant_written_and_checked(tiny_bert, tmp_path):
    out = tmp_path / "fp16"
    result = export(tiny_bert, out, fp16=True)
    assert result["files"] == {"fp32": "model.onnx", "fp16": "model_fp16.onnx"}
    sess = ort.InferenceSession(str(out / "model_fp16.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_outputs()[0].type == "tensor(float)"  # keep_io_types: callers still get float32
    val = result["validation"]
    if "fp16_vs_fp32_mean_cos" in val:  # the CPU provider ran it
        assert val["fp16_vs_fp32_min_cos"] >= 0.999
    # Serving on CPU never picks fp16 by itself.
    assert Encoder(out).variant == "fp32"
