"""The metadata a client can filter on (``Engine.field_values``, ``GET /facets``): the answer's shape, its bounds
and the ordering both backends share.

``{"fields": [{"key", "values": [{"value", "count", "exact"}], "more"}], "more", "sampled", "documents_read"}``:
at most ``keys`` keys in key order, each with at most ``values`` values in value order; ``more`` says that some
were left out. An index folder answers from its filter table (``folder/facets.py``), a Milvus collection from a
sample of its stored metadata (``milvus/facets.py``); an index without stored documents has nothing to filter on
and answers no fields (``NONE``).
"""

from __future__ import annotations

import json
from typing import Any

from .checks import canonical_value

MAX_KEYS = 100  # upper bounds of a request's keys= and values=
MAX_VALUES = 200
KEYS = 32  # defaults
VALUES = 50
COUNT_CAP = 1000  # a value's document count stops here ("exact": false)
MAX_TEXT = 200  # keys and values longer than this (as stored JSON) are not filter choices: left out
MILVUS_SAMPLE = 2000  # documents whose metadata a Milvus collection's answer reads


def none() -> dict[str, Any]:
    """The answer of an index without stored documents."""
    return {"fields": [], "more": False, "sampled": False, "documents_read": 0}


def canonical(val: Any) -> list[str]:
    """A stored metadata value's filterable forms (a list's items each; other types are not filter values)."""
    out = []
    for v in val if isinstance(val, list) else [val]:
        if isinstance(v, (str, int, float, bool)):
            out.append(canonical_value(v))
    return out


def value(canonical: str, count: int, exact: bool) -> dict[str, Any]:
    # The stored JSON decoded: the client sends it back in a filter with its type (2021, not "2021").
    return {"value": json.loads(canonical), "count": count, "exact": exact}


def ordered(vals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Numbers in numeric order (the table's text order puts 10 before 9), then the rest in text order."""
    def key(v: dict[str, Any]) -> tuple:
        x = v["value"]
        num = isinstance(x, (int, float)) and not isinstance(x, bool)
        return (0, x, "") if num else (1, 0, json.dumps(x, ensure_ascii=False))
    return sorted(vals, key=key)
