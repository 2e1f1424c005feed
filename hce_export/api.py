"""``export``: MODEL_DIR -> a self-contained, self-validated EXPORT_DIR (graphs, tokenizer, card, tree).

The export is built in a temporary sibling folder and moved into place only after validation passed
(or was overridden), so neither a failure nor ``overwrite`` ever leaves a half-written EXPORT_DIR behind.
The card ``hce_model.json`` is the last file written.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from hce_serve.errors import ConfigError, DataError, FormatError, ValidationError
from hce_serve.formats.atomic import fsync_dir
from hce_serve.formats.card import ModelCard
from hce_serve.formats.tree import Tree

from . import onnx as onnx_export
from . import optimize, validate
from . import quantize as q8
from . import query as qx
from .source import TOKENIZER_FILES, TREE_FILES, load_source
from .tool_messages import tool_output

log = logging.getLogger(__name__)

FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx", "fp16": "model_fp16.onnx"}
VERSIONED = ("hce", "torch", "transformers", "optimum-onnx", "onnx", "onnxruntime", "tokenizers")


def _versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _check_out(out: Path, model_dir: Path, overwrite: bool) -> None:
    out_r, model_r = out.resolve(), model_dir.resolve()
    if out_r == model_r or out_r in model_r.parents:
        raise ConfigError(f"{out}: the export folder must not be the model folder or contain it")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ConfigError(f"{out}: exists and is not a folder")
        if not overwrite:
            raise ConfigError(f"{out}: already exists; pass --overwrite to replace it")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    if (src / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
        return
    # Only a slow-tokenizer vocabulary: let transformers build the fast tokenizer and save tokenizer.json.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    if not tok.is_fast:
        raise FormatError(f"{src}: no fast tokenizer can be built for this model (serving needs tokenizer.json)")
    tok.save_pretrained(str(dst))


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Move the finished export to ``out``; an old one is renamed aside first and deleted last."""
    old = None
    if out.exists():
        old = out.with_name(f".tmp-old-{out.name}-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    quantize: bool = False,
    fp16: bool = False,
    overwrite: bool = False,
    validate_data: str | os.PathLike[str] | None = None,
    allow_degraded: bool = False,
    isa: str | None = None,
    exclude: tuple[str, ...] | None = None,
    keep_ffn_out: bool | None = None,
    fp32_layers: tuple[int, ...] | None = None,
    opset: int | None = None,
    max_length: int | None = None,
    query_max_length: int | None = None,
    tolerances: validate.Tolerances | None = None,
    validate_split: str = "test",
    validate_max_queries: int | None = None,
    validate_max_docs: int | None = None,
    tool_messages: bool = False,
) -> dict[str, Any]:
    """Export ``model_dir`` to ``out_dir`` and validate it; returns the card's ``onnx`` section plus ``path``.

    Raises ``ValidationError`` when a measured number is out of ``tolerances`` (unless ``allow_degraded``,
    which records ``degraded`` and the failures in the card instead), ``FormatError`` for a missing or
    foreign model folder or unsupported architecture, ``ConfigError`` for an existing ``out_dir``
    without ``overwrite`` or an inconsistent int8 recipe, ``MissingDependencyError`` without optimum-onnx.
    ``keep_ffn_out`` keeps the GELU-fed FFN output projections fp32 (None: the instruction set's default,
    ``hce_export.quantize.FFN_OUT_FP32``); ``fp32_layers`` keeps them fp32 in those encoder layers only
    (None: in every layer); see ``hce_export.quantize``. onnxruntime's known harmless warnings become one
    INFO line (``hce_export.tool_messages``); ``tool_messages`` lets them through as they are too.
    """
    tol = tolerances or validate.Tolerances()
    src = load_source(model_dir)
    out = Path(out_dir)
    _check_out(out, src.path, overwrite)
    if validate_data is not None and not Path(validate_data).is_dir():
        raise DataError(f"{validate_data}: --validate-data folder not found")
    card = src.card
    if max_length is not None or query_max_length is not None:
        card = card.replace(max_length=max_length or card.max_length,
                            query_max_length=query_max_length or card.query_max_length)
    # bad --isa fails before any work
    settings = _settings(isa, exclude, keep_ffn_out, fp32_layers) if quantize else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-export-{out.name}-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    with tool_output(show=tool_messages):  # onnxruntime's harmless warnings: one line of ours
        try:
            model = onnx_export.load_torch_model(src.path)
            raw = tmp / ".raw.onnx"
            done = onnx_export.export_fp32(model, card, raw, opset=opset)
            fusion = optimize.fuse(raw, tmp / FILES["fp32"], src.config)
            raw.unlink()
            _copy_tokenizer(src.path, tmp)
            if src.has_tree:
                Tree.load(src.path)  # a corrupt tree fails the export, not the first search that uses it
                for name in TREE_FILES:
                    shutil.copy2(src.path / name, tmp / name)
            files = {"fp32": FILES["fp32"]}
            section: dict[str, Any] = {
                "files": files, "inputs": done.inputs, "output": onnx_export.OUTPUT_NAME, "opset": done.opset,
                "optimization": fusion, "quantization": None, "versions": _versions(),
                "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "source": str(src.path),
            }
            # A provisional card lets the serving Encoder load the staged folder; the final one replaces it.
            card.replace(onnx=section).save(tmp)
            wrapper = onnx_export.pooled_module(model, card, done.inputs)
            numbers = validate.check_fp32(model, wrapper, src.path, tmp, card)
            if settings is not None:
                section["quantization"] = q8.quantize(tmp / FILES["fp32"], tmp / FILES["int8"], settings)
                files["int8"] = FILES["int8"]
                card.replace(onnx=section).save(tmp)
                numbers.update(validate.check_variant(tmp, "int8"))
            qsrc = qx.query_source(src)
            if qsrc is not None:  # a distilled shallow query encoder: its graphs go beside the document graphs
                qmodel, qwrapper = qx.export_query(qsrc, card, tmp, settings, section, opset)
                card.replace(onnx=section).save(tmp)
                numbers.update(qx.check_query(qmodel, qwrapper, qsrc, tmp, card.replace(onnx=section)))
            if fp16:
                section["fp16"] = optimize.to_fp16(tmp / FILES["fp32"], tmp / FILES["fp16"], src.config)
                files["fp16"] = FILES["fp16"]
                card.replace(onnx=section).save(tmp)
                try:  # onnxruntime's CPU provider runs most fp16 graphs (slowly); where it cannot, say so
                    numbers.update(validate.check_variant(tmp, "fp16"))
                except FormatError as e:
                    numbers["fp16_not_validated"] = f"the CPU provider cannot run it: {e}"
            if validate_data is not None:
                numbers["data"] = validate.check_data(
                    tmp, Path(validate_data), [v for v in ("fp32", "int8") if v in files], validate_split,
                    validate_max_queries, validate_max_docs,
                )
            bad = validate.failures(numbers, tol) + qx.query_failures(numbers, tol)
            numbers.update(tolerances=validate.tolerances_dict(tol), degraded=bool(bad), failures=bad)
            if bad and not allow_degraded:
                raise ValidationError("export out of tolerance: " + "; ".join(bad) + " (--allow-degraded to keep it)")
            if bad:
                log.warning("export kept despite: %s", "; ".join(bad))
            section["validation"] = numbers
            card.replace(onnx=section).save(tmp)  # last file written
            _check_out(out, src.path, overwrite)  # the folder may have appeared while we worked
            _swap_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("export written to %s (%s)", out, ", ".join(sorted(files)))
    return {**section, "path": str(out)}


def _settings(isa: str | None, exclude: tuple[str, ...] | None, keep_ffn_out: bool | None,
              fp32_layers: tuple[int, ...] | None = None) -> q8.QuantSettings:
    if fp32_layers is not None and keep_ffn_out is None:
        keep_ffn_out = True  # asking for fp32 layers asks for the projections kept, whatever the ISA's default
    s = q8.settings_for(isa, keep_ffn_out=keep_ffn_out)
    if fp32_layers is not None:  # the FFN output projections stay fp32 in these layers only
        s = replace(s, fp32_layers=tuple(fp32_layers))
    return s if exclude is None else replace(s, exclude=tuple(exclude))


def load_export_card(export_dir: str | os.PathLike[str]) -> ModelCard:
    """The card of an EXPORT_DIR (for callers that only need the numbers)."""
    return ModelCard.load(export_dir)
