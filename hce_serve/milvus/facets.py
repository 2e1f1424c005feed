"""``MilvusStore.field_values`` (see ``hce_serve/facets.py``): a collection has no filter table, so the values come
from the stored metadata of up to ``MILVUS_SAMPLE`` documents (``sampled`` says when that was not all of them).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .. import facets


def field_values(rows: list[dict[str, Any]], keys: int, values: int) -> dict[str, Any]:
    """The answer from ``rows``, a sample of up to ``MILVUS_SAMPLE`` documents' ``{"metadata": ...}``."""
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        meta = row.get("metadata")
        if not isinstance(meta, dict):
            continue
        for key, val in meta.items():
            for v in set(facets.canonical(val)):
                counts.setdefault(key, Counter())[v] += 1
    names = sorted(k for k in counts if len(k) <= facets.MAX_TEXT)
    out = []
    for key in names[:keys]:
        fit = sorted(v for v in counts[key] if len(v) <= facets.MAX_TEXT)
        vals = [facets.value(v, counts[key][v], True) for v in fit[:values]]
        more = len(fit) > values or len(fit) < len(counts[key])
        out.append({"key": key, "values": facets.ordered(vals), "more": more})
    sampled = len(rows) >= facets.MILVUS_SAMPLE
    return {"fields": out, "more": len(names) > keys or len(names) < len(counts), "sampled": sampled,
            "documents_read": len(rows)}
