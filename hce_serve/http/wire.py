"""Search answers as JSON bytes, built straight from the engine's rows and serialised with orjson.

The shape is ``Hit.to_dict``'s (id, score, the stored fields asked for, explain when asked), but no ``Hit``
is made and FastAPI's generic encoder (which walks every value of a returned dict before ``json.dumps``)
is skipped: one small dict per hit, and one orjson call per response.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import missing_dependency

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is in the serve extra
    orjson = None  # type: ignore[assignment]


def dumps(obj: Any) -> bytes:
    if orjson is None:  # pragma: no cover
        raise missing_dependency("orjson", "serve")
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)  # a numpy score, should a backend give one


def hits(row: Sequence[tuple[str, float, Any, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """One query's hits: ``(id, score, stored document or None, explain or None)`` -> JSON objects."""
    title, text, meta = "title" in fields, "text" in fields, "metadata" in fields
    out = []
    for doc_id, score, doc, explain in row:
        h: dict[str, Any] = {"id": doc_id, "score": score}
        if doc is not None:
            if title and doc.title is not None:
                h["title"] = doc.title
            if text and doc.text is not None:
                h["text"] = doc.text
            if meta:
                h["metadata"] = doc.metadata or {}
        if explain is not None:
            h["explain"] = explain
        out.append(h)
    return out


def search_answer(rows: Sequence[Sequence[tuple[str, float, Any, Any]]], fields: Sequence[str], single: bool) -> bytes:
    """``{"hits": [...]}`` for one query, ``{"results": [{"hits": [...]}, ...]}`` for a batch."""
    if single:
        return dumps({"hits": hits(rows[0], fields)})
    return dumps({"results": [{"hits": hits(row, fields)} for row in rows]})
