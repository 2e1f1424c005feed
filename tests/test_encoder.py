"""hce_serve.encoder.Encoder on the tiny export: order, batching, truncation, variants, inputs, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hce_serve.encoder import Encoder, choose_variant, disabled_optimizers
from hce_serve.errors import ConfigError, FormatError
from hce_serve.formats.card import ModelCard

TEXTS = [
    "protein folding",
    "climate carbon warming ocean ice temperature emission glacier and the sea",
    "a",
    "vaccine immune antibody virus dose infection trial response " * 3,
    "brain neuron",
    "market price trade stock inflation bank interest currency soil crop plant nitrogen",
]


@pytest.fixture(scope="module")
def enc(tiny_export):
    return Encoder(tiny_export, variant="fp32", threads=1)


def test_shape_dtype_norm_and_auto_variant(tiny_export, enc):
    auto = Encoder(tiny_export)
    assert auto.variant == "int8"  # CPU + an int8 graph present
    assert auto.providers == ["CPUExecutionProvider"]
    for e in (auto, enc):
        out = e.encode_documents(TEXTS)
        assert out.shape == (len(TEXTS), e.dim) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_results_in_input_order_and_independent_of_batching(enc):
    one_by_one = np.stack([enc.encode_documents([t])[0] for t in TEXTS])
    batched = enc.encode_documents(TEXTS)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # A budget so small that each text runs alone, and a reversed input: same rows, same order.
    enc_small = Encoder(enc.export_dir, variant="fp32", token_budget=1)
    np.testing.assert_allclose(enc_small.encode_documents(TEXTS), one_by_one, atol=1e-5)
    np.testing.assert_allclose(enc.encode_documents(TEXTS[::-1]), one_by_one[::-1], atol=1e-5)
    # The single-query fast path agrees with the batched path.
    np.testing.assert_allclose(enc.encode_queries([TEXTS[1]])[0], enc.encode_queries(TEXTS[:2])[1], atol=1e-5)


def test_batches_bound_the_padding(enc, monkeypatch):
    """Sorted texts are cut into batches whose rows are padded by at most PAD_SLACK tokens (or width/8):
    many short texts plus one long one must not pad the short ones to the long one's width."""
    from hce_serve import encoder as encoder_mod

    shapes, real = [], enc._run

    def spy(ids, mask, session=None):
        shapes.append((ids.shape, mask.sum(axis=1).min()))
        return real(ids, mask)

    monkeypatch.setattr(enc, "_run", spy)
    texts = ["protein fold"] * 5 + ["climate ocean " * 20] + ["brain neuron cell"] * 4
    out = enc.encode_documents(texts)
    widths = [s[0][1] for s in shapes]
    assert len(shapes) == 2 and sum(s[0][0] for s in shapes) == len(texts)
    for (_, width), shortest in shapes:
        assert width - shortest <= max(encoder_mod.PAD_SLACK, width // 8)
    assert max(widths) > 40 and min(widths) < 10
    monkeypatch.undo()
    np.testing.assert_allclose(out, np.stack([enc.encode_documents([t])[0] for t in texts]), atol=1e-5)


def test_distinct_texts_give_distinct_vectors(enc):
    out = enc.encode_documents(TEXTS)
    sims = out @ out.T
    assert np.all(sims[~np.eye(len(TEXTS), dtype=bool)] < 0.9999)


def test_truncation_at_card_lengths(tiny_export, tmp_path):
    folder = tmp_path / "short"
    shutil.copytree(tiny_export, folder)
    card = ModelCard.load(folder)
    card.replace(query_max_length=6, max_length=12).save(folder)
    enc = Encoder(folder, variant="fp32")
    base = "protein enzyme amino fold binding receptor kinase peptide climate carbon warming ocean ice"
    # Queries stop after 6 tokens ([CLS] + 4 words + [SEP]): what follows the 4th word changes nothing.
    q = enc.encode_queries([base, base + " vaccine brain", "protein enzyme amino fold"])
    np.testing.assert_allclose(q[0], q[1], atol=1e-6)
    np.testing.assert_allclose(q[0], q[2], atol=1e-6)
    # Documents see up to 12 tokens, so the same text embeds differently as a document.
    d = enc.encode_documents([base])
    assert float(d[0] @ q[0]) < 0.9999


def test_query_max_length_overrides_the_card(tiny_export):
    """The override truncates queries like a card that says 6 would, and leaves documents alone."""
    enc = Encoder(tiny_export, variant="fp32", query_max_length=6)
    base = "protein enzyme amino fold binding receptor kinase peptide climate carbon warming ocean ice"
    assert enc.query_max_length == 6 and ModelCard.load(tiny_export).query_max_length != 6
    q = enc.encode_queries([base, "protein enzyme amino fold"])
    np.testing.assert_allclose(q[0], q[1], atol=1e-6)
    full = Encoder(tiny_export, variant="fp32")
    assert float(full.encode_queries([base])[0] @ q[0]) < 0.9999  # the card's length sees every word
    np.testing.assert_allclose(enc.encode_documents([base]), full.encode_documents([base]), atol=1e-6)
    with pytest.raises(ConfigError, match="query_max_length"):
        Encoder(tiny_export, query_max_length=0)


def test_empty_input_and_bad_input(enc):
    assert enc.encode_queries([]).shape == (0, enc.dim)
    assert enc.encode_documents([]).shape == (0, enc.dim)
    out = enc.encode_documents([""])  # [CLS][SEP] only: still a finite unit vector
    assert np.isfinite(out).all()
    with pytest.raises(ConfigError):
        enc.encode_queries("not a list")
    with pytest.raises(ConfigError):
        enc.encode_documents(["ok", 3])


def test_fixed_padding_in_tokenizer_json_is_ignored(tiny_export, tmp_path, enc):
    """DESIGN §8: bundled tokenizer.json files may pad every input to 128; the encoder must undo that."""
    from tokenizers import Tokenizer

    folder = tmp_path / "padded"
    shutil.copytree(tiny_export, folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(length=128, pad_id=0, pad_token="[PAD]")
    tok.save(str(folder / "tokenizer.json"))
    padded = Encoder(folder, variant="fp32")
    np.testing.assert_allclose(padded.encode_documents(TEXTS), enc.encode_documents(TEXTS), atol=1e-5)
    np.testing.assert_allclose(padded.encode_queries(TEXTS[:1]), enc.encode_queries(TEXTS[:1]), atol=1e-5)


def test_feeds_only_declared_inputs(enc):
    assert enc.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    ids = np.array([[2, 7, 3]], dtype=np.int64)
    assert set(enc._feed(ids, np.ones_like(ids))) == set(enc.input_names)
    enc2 = Encoder(enc.export_dir, variant="fp32")
    enc2.input_names = ["input_ids", "attention_mask"]
    assert set(enc2._feed(ids, np.ones_like(ids))) == {"input_ids", "attention_mask"}


def test_cpu_sessions_skip_the_measured_slow_rewrite_without_changing_fp32(tiny_export, enc, monkeypatch):
    import onnxruntime as ort

    assert disabled_optimizers(["CPUExecutionProvider"]) == ["SkipLayerNormFusion"]  # benchmarks/ort_fusions.py
    assert disabled_optimizers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == []  # a GPU keeps the fusion
    seen = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        seen.append(kwargs.get("disabled_optimizers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    fused = Encoder(tiny_export, variant="fp32", threads=1)
    assert seen == [["SkipLayerNormFusion"]]
    monkeypatch.setattr("hce_serve.defaults.ORT_CPU_DISABLED_OPTIMIZERS", ())
    plain = Encoder(tiny_export, variant="fp32", threads=1)
    assert seen[-1] == []
    np.testing.assert_allclose(fused.encode_documents(TEXTS), plain.encode_documents(TEXTS), atol=1e-5)


def test_variant_choice():
    files = {"fp32": "a", "int8": "b", "fp16": "c"}
    assert choose_variant(files, "auto", cuda=False) == "int8"
    assert choose_variant(files, "auto", cuda=True) == "fp16"
    assert choose_variant({"fp32": "a"}, "auto", cuda=True) == "fp32"
    assert choose_variant({"fp32": "a"}, "auto", cuda=False) == "fp32"
    with pytest.raises(FormatError, match="no fp16 graph"):
        choose_variant({"fp32": "a"}, "fp16", cuda=False)
    with pytest.raises(ConfigError):
        choose_variant(files, "int4", cuda=False)


def test_broken_exports_are_format_errors(tiny_export, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_export, folder)
    (folder / "model_int8.onnx").unlink()
    with pytest.raises(FormatError, match="model_int8.onnx"):
        Encoder(folder, variant="int8")
    (folder / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(FormatError, match="cannot load"):
        Encoder(folder, variant="fp32")
    card = json.loads((folder / "hce_model.json").read_text())
    card["onnx"] = None
    (folder / "hce_model.json").write_text(json.dumps(card))
    with pytest.raises(FormatError, match="hce-export"):
        Encoder(folder)
    with pytest.raises(FormatError, match="not found"):
        Encoder(tmp_path / "nothing")


def test_import_does_not_load_torch_or_transformers():
    code = (
        "import sys, hce_serve.encoder; "
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
