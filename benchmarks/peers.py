"""Other engines' query encoders on the same model, for ``benchmarks/latency.py`` to time beside hce-serve.

- sentence-transformers (5.1.x: the newest release that installs beside optimum-onnx and transformers 4.57)
  with its torch backend, its ONNX backend on its own fp32 export, and its ONNX backend on its own dynamic
  int8 export (``export_dynamic_quantized_onnx_model``, config ``avx512_vnni`` on a CPU with AVX-512 VNNI,
  else ``avx2``; ``arm64`` on ARM). Its onnxruntime sessions get the thread count hce's get (it would use
  every core otherwise); its torch backend follows ``torch.set_num_threads``, which the caller sets.
- fastembed, on the fp32 graph sentence-transformers exported: fastembed 0.9 loads a local ONNX folder
  (``TextEmbedding.add_custom_model`` with mean pooling and normalisation, then
  ``TextEmbedding(name, specific_model_path=FOLDER)``), but not hce's export: fastembed pools the graph's
  token output itself, and hce's graph returns the pooled ``sentence_embedding`` only.

Every peer is optional: one that is not installed (or fails to load) is left out and the reason is logged
and returned, so the benchmark runs with hce's systems alone. The exports are made once per model and
config and cached under ``runs/bench/peers`` (keyed by the source folder, the config and the version of
sentence-transformers), never in the model's own folder.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.encoders import cosine_stats
from benchmarks.harness import paths
from hce_serve import cpu

log = logging.getLogger(__name__)
Encode = Callable[[list[str]], np.ndarray]  # texts -> float32 (n, dim), unit rows
FASTEMBED_NAME = "hce-bench/local-onnx"  # the name fastembed's registry gets for the local folder


def int8_config() -> str:
    """sentence-transformers' dynamic int8 config for this CPU: avx512_vnni when it has VNNI, else avx2."""
    if cpu.is_arm():
        return "arm64"
    return "avx512_vnni" if "avx512_vnni" in cpu.flags() else "avx2"


def _version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    return {"sentence-transformers": _version("sentence-transformers"), "fastembed": _version("fastembed")}


def prepare(model_dir: Path, config: str, root: Path | None = None) -> Path:
    """A copy of ``model_dir`` with sentence-transformers' ONNX exports: ``onnx/model.onnx`` (fp32) and
    ``onnx/model_qint8_<config>.onnx``. Cached; the source folder is never written to."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.backend import export_dynamic_quantized_onnx_model

    out = (root or paths.CACHE / "peers") / f"{model_dir.name}-{config}"
    stamp = json.dumps({"source": str(model_dir.resolve()), "config": config, "st": _version("sentence-transformers")})
    source = out / ".source"
    if source.is_file() and source.read_text().strip() == stamp and (out / int8_file(config)).is_file():
        return out
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out,
                    ignore=shutil.ignore_patterns("onnx", "*.onnx", "checkpoint", "query_encoder", "tree*", "train_*"))
    log.info("sentence-transformers: exporting %s to ONNX fp32 and int8 (%s) in %s", model_dir, config, out)
    model = SentenceTransformer(str(out), backend="onnx", device="cpu",
                                model_kwargs={"provider": "CPUExecutionProvider"})
    model.save_pretrained(str(out))  # writes onnx/model.onnx (and modules.json for a plain HF folder)
    export_dynamic_quantized_onnx_model(model, config, str(out))
    (out / ".source").write_text(stamp + "\n")
    return out


def int8_file(config: str) -> str:
    return f"onnx/model_qint8_{config}.onnx"


def _st(folder: Path, threads: int, file_name: str | None) -> Encode:
    from sentence_transformers import SentenceTransformer

    if file_name is None:
        model = SentenceTransformer(str(folder), backend="torch", device="cpu")
    else:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        model = SentenceTransformer(str(folder), backend="onnx", device="cpu", model_kwargs={
            "provider": "CPUExecutionProvider", "file_name": file_name, "session_options": so})
    return lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                                      show_progress_bar=False)


def _fastembed(folder: Path, threads: int, dim: int) -> Encode:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    if not any(m["model"] == FASTEMBED_NAME for m in TextEmbedding.list_supported_models()):
        TextEmbedding.add_custom_model(model=FASTEMBED_NAME, pooling=PoolingType.MEAN, normalization=True,
                                       sources=ModelSource(hf=FASTEMBED_NAME), dim=dim, model_file="onnx/model.onnx")
    model = TextEmbedding(FASTEMBED_NAME, specific_model_path=str(folder), threads=threads)
    return lambda texts: np.asarray(list(model.embed(texts, batch_size=32)), dtype=np.float32)


def load(model_dir: Path, threads: int, dim: int, root: Path | None = None,
         with_fastembed: bool = True, with_torch: bool = True) -> tuple[dict[str, Encode], dict[str, str]]:
    """The peers that load here as name -> encode, and name -> why for those that do not (``with_fastembed``
    / ``with_torch`` False: leave those out, e.g. for the fidelity step that needs only the two ONNX graphs)."""
    peers: dict[str, Encode] = {}
    skipped: dict[str, str] = {}
    config = int8_config()
    names = {"st_torch": None} if with_torch else {}
    names.update({"st_onnx_fp32": "onnx/model.onnx", f"st_onnx_int8_{config}": int8_file(config)})
    if _version("sentence-transformers") is None:
        why = "sentence-transformers is not installed (pip install 'sentence-transformers>=5.1,<5.2')"
        skipped = dict.fromkeys(names, why)
        if with_fastembed:
            skipped["fastembed_fp32"] = "fastembed loads sentence-transformers' ONNX export, and " + why
        log.warning("peers skipped: %s", why)
        return peers, skipped
    try:
        folder = prepare(model_dir, config, root)
    except Exception as e:  # an export that fails is reported, not fatal: the benchmark still times hce
        why = f"sentence-transformers' ONNX export failed: {_one_line(e)}"
        log.warning("peers skipped: %s", why)
        return peers, dict.fromkeys([*names, *(["fastembed_fp32"] if with_fastembed else [])], why)
    for name, file_name in names.items():
        peers[name] = _st(folder, threads, file_name)
    if not with_fastembed:
        return peers, skipped
    if _version("fastembed") is None:
        skipped["fastembed_fp32"] = "fastembed is not installed (pip install fastembed)"
    else:
        try:
            peers["fastembed_fp32"] = _fastembed(folder, threads, dim)
        except Exception as e:  # a fastembed release that changed its registry API
            skipped["fastembed_fp32"] = f"fastembed could not load the local ONNX folder: {_one_line(e)}"
    for name, why in skipped.items():
        log.warning("peer %s skipped: %s", name, why)
    return peers, skipped


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def cosine_to_fp32(pairs: dict[str, tuple[Encode, Encode]], docs: list[str]) -> dict[str, Any]:
    """Per int8 encoder, the cosine of each document's int8 embedding to its fp32 one (mean and min):
    name -> (fp32 encode, int8 encode)."""
    out = {}
    for name, (fp32, int8) in pairs.items():
        a, b = fp32(docs), int8(docs)  # (n, dim) each, unit rows
        cos = cosine_stats(a, b)
        out[name] = {"cos_mean": cos["mean"], "cos_min": cos["min"], "docs": len(docs)}
    return out
