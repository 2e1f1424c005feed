"""The int8 recipe between "FFN output projections fp32 everywhere" and "all int8": ``fp32_layers`` keeps
the GELU-fed projections fp32 in the named encoder layers only (hce_export.quantize, issue 12)."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("optimum.exporters.onnx")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from hce_export.quantize import QuantSettings, kept_fp32, layer_of, quantize, settings_for  # noqa: E402
from hce_serve.errors import ConfigError  # noqa: E402
from hce_serve.formats.card import ModelCard  # noqa: E402

QUANTISED = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def weight_matmuls(path) -> dict[int | None, Counter]:
    """{layer: Counter(int8=..., fp32=...)} over the weight matmuls of an ONNX graph."""
    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    per_layer: dict[int | None, Counter] = {}
    for n in model.graph.node:
        if n.op_type in QUANTISED:
            kind = "int8"
        elif n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in weights:
            kind = "fp32"
        else:
            continue
        per_layer.setdefault(layer_of(n.name, *n.output), Counter())[kind] += 1
    return per_layer


def test_fp32_layers_keeps_exactly_those_layers_gelu_fed_matmuls(tiny_export, tmp_path):
    src = tiny_export / "model.onnx"
    base = settings_for("avx2")
    graphs = {}
    for name, settings in {"every": base, "layer0": dataclasses.replace(base, fp32_layers=(0,)),
                           "none": dataclasses.replace(base, keep_ffn_out=False)}.items():
        info = quantize(src, tmp_path / f"{name}.onnx", settings)
        graphs[name] = (info, weight_matmuls(tmp_path / f"{name}.onnx"))
    info, layers = graphs["layer0"]
    assert info["fp32_layers"] == [0]
    assert len(info["excluded_nodes"]) == 1 and "layer.0/output/dense" in info["excluded_nodes"][0]
    # The 2-layer tiny model: in layer 0 only the GELU-fed projection is fp32; layer 1 is all int8.
    assert set(layers) == {0, 1} and layers[0]["fp32"] == 1 and layers[1]["fp32"] == 0
    assert layers[0]["int8"] >= 1 and layers[1]["int8"] == layers[0]["int8"] + 1
    every, none = graphs["every"][1], graphs["none"][1]
    assert [every[i]["fp32"] for i in (0, 1)] == [1, 1] and [none[i]["fp32"] for i in (0, 1)] == [0, 0]
    assert graphs["every"][0]["fp32_layers"] is None
    sess = ort.InferenceSession(str(tmp_path / "layer0.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: np.array([[2, 5, 3]], dtype=np.int64) for i in sess.get_inputs()}
    feeds = {k: np.ones_like(v) if k == "attention_mask" else np.zeros_like(v) if k == "token_type_ids" else v
             for k, v in feeds.items()}
    (emb,) = sess.run(None, feeds)
    assert np.isfinite(emb).all()


def test_layer_of_reads_hf_export_names():
    assert layer_of("/model/encoder/layer.3/output/dense/MatMul") == 3
    assert layer_of("/encoder/layer_11/output/dense/MatMul") == 11
    assert layer_of("/model/layers.4/mlp/down_proj/MatMul") == 4
    assert layer_of("MatMul_12", "/bert/encoder/layer.2/output/dense/MatMul_output_0") == 2  # from an output
    assert layer_of("MatMul_12", "layer_norm_out", "/sublayer.1/x") is None


def test_a_projection_of_unknown_layer_stays_fp32_with_a_warning(caplog):
    ffn_out = {"/encoder/layer.0/output/dense/MatMul": 0, "/encoder/layer.1/output/dense/MatMul": 1, "MatMul_7": None}
    settings = QuantSettings(isa="avx2", fp32_layers=(0, 5))
    with caplog.at_level(logging.WARNING, logger="hce_export.quantize"):
        kept = kept_fp32(ffn_out, settings)
    assert kept == {"/encoder/layer.0/output/dense/MatMul", "MatMul_7"}
    assert "MatMul_7" in caplog.text and "layer(s) 5" in caplog.text
    assert kept_fp32(ffn_out, QuantSettings(isa="avx2")) == set(ffn_out)  # None: every layer, as before
    assert kept_fp32(ffn_out, QuantSettings(isa="avx2", keep_ffn_out=False)) == set()


def test_settings_validate_and_record_fp32_layers():
    assert settings_for("avx2").fp32_layers is None  # the shipped recipe is unchanged
    s = QuantSettings(isa="avx2", fp32_layers=[2, 0, 2])
    assert s.fp32_layers == (0, 2) and s.as_dict()["fp32_layers"] == [0, 2]
    assert json.loads(json.dumps(s.as_dict()))["fp32_layers"] == [0, 2]
    for bad in [(), (-1,), (True,), ("1",), "0,1", 3]:
        with pytest.raises(ConfigError, match="fp32_layers"):
            QuantSettings(isa="avx2", fp32_layers=bad)
    with pytest.raises(ConfigError, match="keep_ffn_out"):
        QuantSettings(isa="avx2", keep_ffn_out=False, fp32_layers=(0,))


def test_card_records_the_field_and_an_older_card_without_it_still_serves(tiny_export, tmp_path):
    from benchmarks.encoders import export_fingerprint
    from hce_serve.encoder import Encoder

    assert ModelCard.load(tiny_export).onnx["quantization"]["fp32_layers"] is None
    old = tmp_path / "old-export"
    shutil.copytree(tiny_export, old)
    card = ModelCard.load(old)
    quant = {k: v for k, v in card.onnx["quantization"].items() if k != "fp32_layers"}
    card.replace(onnx={**card.onnx, "quantization": quant}).save(old)
    assert "fp32_layers" not in ModelCard.load(old).onnx["quantization"]
    assert Encoder(old, variant="int8").encode_queries(["protein folding"]).shape[0] == 1
    # The benchmark export cache keys on the recipe; the new knob at None keeps the old key.
    assert "fp32_layers" not in export_fingerprint(tiny_export, True)
