"""Checks of everything a caller hands to an index (CLI, HTTP or Python), each written once.

Writes are checked by ``IndexStore`` (ids, documents, vectors) before anything changes; reads by ``Engine``
(query, k, ef, filter, fields). Every failure is a ``DataError`` whose one line says what was expected and
what was found. Nothing here touches an index: these are pure functions of their input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .defaults import FIELDS
from .documents import Document
from .errors import DataError
from .index.exact import as_f32_matrix
from .options import Bound, EngineOptions

MAX_FIELD_NAME = 128
MAX_FILTER_VALUES = 1024  # values of one field in a filter (one SQL parameter each)
Scalar = str | int | float | bool


def is_text(s: object) -> bool:
    """A str that UTF-8 can encode (JSON's "\\ud800" escapes decode to lone surrogates, which it cannot)."""
    if not isinstance(s, str):
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_ids(ids: Sequence[Any]) -> list[str]:
    """Non-empty string ids without tab or line break, unique within the batch."""
    out = list(ids)
    seen: set[str] = set()
    for i in out:
        if not is_text(i) or not i.strip() or any(c in i for c in "\t\r\n"):
            raise DataError(f"document id {i!r} is empty, not valid text, or contains a tab or line break")
        if i in seen:
            raise DataError(f"document id {i!r} appears more than once in one batch; nothing was added")
        seen.add(i)
    return out


def check_vectors(vectors: Any, n: int, dim: int) -> np.ndarray:
    """float32 (n, dim), finite."""
    try:
        vecs = as_f32_matrix(vectors, dim)  # (n, dim)
    except (ValueError, TypeError) as e:
        raise DataError(f"vector dimension mismatch: index has dim {dim}; {e}") from None
    if vecs.shape[0] != n:
        raise DataError(f"{n} ids but {vecs.shape[0]} vectors")
    if not np.isfinite(vecs).all():
        raise DataError("vectors contain NaN or infinity; nothing was added")
    return vecs


def check_leaves(leaves: Any, n: int, no_leaf: int) -> np.ndarray:
    arr = np.full(n, no_leaf, np.int32) if leaves is None else np.asarray(leaves, np.int32)
    if arr.shape != (n,):
        raise DataError(f"{n} ids but leaves has shape {arr.shape}")
    return arr


# ---- documents ----------------------------------------------------------------------------------------
def _scalar_ok(v: object) -> bool:
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (int, bool)) or is_text(v)


def check_metadata(meta: object, where: str, strict: bool = True) -> tuple[dict[str, Any], int]:
    """A flat metadata object: string keys, values a scalar (string, number, bool) or a list of scalars.

    ``None`` values are dropped. A bad key or a nested value raises in ``strict`` mode (API and HTTP input)
    and is dropped otherwise (corpus files: BEIR metadata sometimes nests, which must not refuse a whole
    corpus). Returns (metadata, number of entries dropped).
    """
    if meta is None:
        return {}, 0
    if not isinstance(meta, Mapping):
        if strict:
            raise DataError(f"{where}: metadata must be an object, found {type(meta).__name__}")
        return {}, 1
    out: dict[str, Any] = {}
    dropped = 0
    for key, val in meta.items():
        if val is None:
            continue
        if not is_text(key) or not key or len(key) > MAX_FIELD_NAME:
            problem = f"metadata key {key!r} must be a non-empty string of at most {MAX_FIELD_NAME} characters"
        elif _scalar_ok(val) or (isinstance(val, list) and all(_scalar_ok(v) for v in val)):
            out[key] = val
            continue
        else:
            problem = (f"metadata {key!r} must be a string, number, bool or a list of them (flat metadata), "
                       f"found {type(val).__name__}")
        if strict:
            raise DataError(f"{where}: {problem}")
        dropped += 1
    return out, dropped


def as_document(obj: Document | Mapping[str, Any], strict: bool = True) -> tuple[Document, int]:
    """A ``Document`` from itself or from a mapping with ``_id`` (or ``id``), ``title``, ``text``, ``metadata``;
    with the number of metadata entries dropped (``strict=False`` only, see ``check_metadata``)."""
    if isinstance(obj, Document):
        doc_id, title, text, meta = obj.id, obj.title, obj.text, obj.metadata
    elif isinstance(obj, Mapping):
        doc_id, meta = obj.get("_id", obj.get("id")), obj.get("metadata")
        title, text = obj.get("title"), obj.get("text")
        title, text = title if title is not None else "", text if text is not None else ""
    else:
        raise DataError(f"expected a document (Document or mapping), found {type(obj).__name__}")
    if not is_text(title) or not is_text(text):
        raise DataError(f"document {doc_id!r}: title and text must be strings of valid Unicode text")
    flat, dropped = check_metadata(meta, f"document {doc_id!r}", strict=strict)
    return Document(doc_id, title, text, flat or None), dropped


def check_documents(docs: Iterable[Document | Mapping[str, Any]], strict: bool = True) -> tuple[list[Document], int]:
    """Documents with checked ids (unique in the batch) and flat metadata; plus the metadata entries dropped."""
    out, dropped = [], 0
    for d in docs:
        doc, n = as_document(d, strict)
        out.append(doc)
        dropped += n
    check_ids([d.id for d in out])
    return out, dropped


# ---- queries ------------------------------------------------------------------------------------------
def check_query(text: object) -> str:
    if not isinstance(text, str):
        raise DataError(f"query must be a string, found {type(text).__name__}")
    if not is_text(text):
        raise DataError("query is not valid UTF-8 text")
    if not text.strip():
        raise DataError("query is empty")
    return text


def check_k(k: object, max_k: int | None = None) -> int:
    """Hits per query: ``1..max_k`` (a server's own limit; default ``EngineOptions.K``)."""
    return (EngineOptions.K if max_k is None else Bound(1, max_k)).check("k", k, DataError)


def check_ef(ef: object) -> int | None:
    """A search breadth for one request (None: the index's default), within ``EngineOptions.EF``."""
    return None if ef is None else EngineOptions.EF.check("ef", ef, DataError)


def check_fields(fields: Iterable[str] | None) -> tuple[str, ...]:
    """Stored fields to return with hits, a subset of ``defaults.FIELDS`` (None: all of them)."""
    if fields is None:
        return FIELDS
    if isinstance(fields, str):
        fields = [f for f in fields.split(",") if f]
    out = tuple(dict.fromkeys(fields))
    bad = [f for f in out if f not in FIELDS]
    if bad:
        raise DataError(f"unknown field(s) {', '.join(map(repr, bad))}; choose from {', '.join(FIELDS)}")
    return out


def canonical_value(v: Scalar) -> str:
    """The text a metadata value is stored and matched as: JSON, with integral floats written as integers
    (so a filter on 2020 matches 2020.0) and booleans kept apart from 0/1."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        v = int(v)
    return json.dumps(v, ensure_ascii=False)


def check_filter(flt: object) -> dict[str, tuple[str, ...]] | None:
    """``{"field": value}`` (equality) or ``{"field": [v1, v2]}`` (any of); several fields must all match.

    Returns {field: canonical values} or None for no filter.
    """
    if flt is None:
        return None
    if not isinstance(flt, Mapping) or not flt:
        raise DataError(f"filter must be a non-empty object like {{\"field\": value}}, found {flt!r:.80}")
    out: dict[str, tuple[str, ...]] = {}
    for key, val in flt.items():
        if not isinstance(key, str) or not key:
            raise DataError(f"filter field {key!r} must be a non-empty string")
        vals = val if isinstance(val, list) else [val]
        if not vals or not all(_scalar_ok(v) for v in vals):
            raise DataError(f"filter {key!r}: expected a string, number, bool or a non-empty list of them, found "
                            f"{val!r:.80}")
        if len(vals) > MAX_FILTER_VALUES:
            raise DataError(f"filter {key!r}: {len(vals):,} values; the limit is {MAX_FILTER_VALUES:,}")
        out[key] = tuple(sorted({canonical_value(v) for v in vals}))
    return out
