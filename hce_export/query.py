"""The shallow query encoder of a MODEL_DIR (``hce-train distill-query``) exported beside the document graphs.

MODEL_DIR's card names its query encoder in ``extra.query_encoder.path`` (relative to MODEL_DIR). The export
writes ``query_model.onnx`` (and ``query_model_int8.onnx`` with ``--quantize``, same recipe as the document
graph), lists them in the card's ``onnx.query_files``, and validates them like the document graphs: ONNX fp32
against the torch student, int8 against fp32; it also records how close the shallow query embedding is to
the full encoder's (informative: the distillation's own held-out numbers are in ``query_encoder``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hce_serve.encoder import Encoder
from hce_serve.errors import FormatError
from hce_serve.formats.card import ModelCard

from . import onnx as onnx_export
from . import optimize, validate
from . import quantize as q8
from .source import Source, load_source

QUERY_FILES = {"fp32": "query_model.onnx", "int8": "query_model_int8.onnx"}


def query_source(src: Source) -> Source | None:
    """The query encoder folder a MODEL_DIR's card names, checked; None when it has none."""
    pair = src.card.extra.get("query_encoder") if src.has_card else None
    if not pair:
        return None
    path = (src.path / str(pair.get("path", ""))).resolve()
    if not path.is_dir():
        raise FormatError(f"{src.path}/hce_model.json names query encoder {path}, which is not a folder")
    qsrc = load_source(path)
    if qsrc.card.dim != src.card.dim:
        raise FormatError(f"{path}: query encoder dim {qsrc.card.dim} differs from the model's {src.card.dim}")
    return qsrc


def export_query(qsrc: Source, card: ModelCard, tmp: Path, settings: q8.QuantSettings | None,
                 section: dict[str, Any], opset: int | None) -> tuple[Any, Any]:
    """Write the query graphs into ``tmp`` and ``section``; returns (torch model, pooled wrapper) for checks."""
    model = onnx_export.load_torch_model(qsrc.path)
    raw = tmp / ".raw-query.onnx"
    done = onnx_export.export_fp32(model, card, raw, opset=opset)
    optimize.fuse(raw, tmp / QUERY_FILES["fp32"], qsrc.config)
    raw.unlink()
    files = {"fp32": QUERY_FILES["fp32"]}
    if settings is not None:
        q8.quantize(tmp / QUERY_FILES["fp32"], tmp / QUERY_FILES["int8"], settings)
        files["int8"] = QUERY_FILES["int8"]
    section["query_files"] = files
    section["query_encoder"] = {"layers": int(qsrc.config.get("num_hidden_layers", 0)), "source": str(qsrc.path)}
    return model, onnx_export.pooled_module(model, card, done.inputs)


def check_query(model: Any, wrapper: Any, qsrc: Source, export_dir: Path, card: ModelCard) -> dict[str, Any]:
    """The query graphs on the fixed queries: fp32 vs torch, int8 vs fp32, and shallow vs full."""
    queries = validate.QUERIES
    shallow = Encoder(export_dir, variant="fp32", query_encoder="shallow").encode_queries(queries)
    ref = validate.torch_embeddings(model, wrapper, qsrc.path, queries, card.query_max_length)
    full = Encoder(export_dir, variant="fp32", query_encoder="full").encode_queries(queries)
    out: dict[str, Any] = {
        "query_fp32_vs_torch_max_abs_diff": float(np.abs(shallow - ref).max()),
        "query_finite": bool(np.isfinite(shallow).all()),
        "shallow_vs_full_query_mean_cos": float((shallow * full).sum(1).mean()),
    }
    files = (card.onnx or {}).get("query_files", {})
    if "int8" in files:
        q8emb = Encoder(export_dir, variant="int8", query_encoder="shallow").encode_queries(queries)
        cos = (shallow * q8emb).sum(1)
        out.update(query_int8_vs_fp32_mean_cos=float(cos.mean()), query_int8_vs_fp32_min_cos=float(cos.min()))
    return out


def query_failures(numbers: dict[str, Any], tol: validate.Tolerances) -> list[str]:
    """The query graph's checks out of tolerance, in the same terms as the document graph's."""
    renamed = {k.removeprefix("query_"): v for k, v in numbers.items() if k.startswith("query_")}
    return [f"query graph: {msg}" for msg in validate.failures(renamed, tol)]
