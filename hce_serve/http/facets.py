"""The metadata a client can filter on: keys, some of their values and how many documents hold each, bounded.

An index folder answers from ``docs.sqlite``'s ``fields`` table (one row per key, value and id, the filter index),
walked in its primary-key order: each next key and each next value is one index seek, and a value's count stops at
``COUNT_CAP`` rows, so the work is bounded by the answer's size and not by the corpus. The counts are those of the
file: a read-only server whose log replay changed documents (held in memory until the next snapshot) counts them
as they were. A Milvus collection has no such table: the values come from the stored metadata of up to
``MILVUS_SAMPLE`` documents (``sampled`` says when that was not all of them). An index without stored documents
has nothing to filter on and answers no fields.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..checks import canonical_value
from ..errors import FormatError

MAX_KEYS = 100  # upper bounds of a request's keys= and values=
MAX_VALUES = 200
KEYS = 32  # defaults
VALUES = 50
COUNT_CAP = 1000  # a value's document count stops here ("exact": false)
MAX_TEXT = 200  # keys and values longer than this (as stored JSON) are not filter choices: left out
MILVUS_SAMPLE = 2000  # documents whose metadata a Milvus collection's answer reads


def field_values(store: Any, keys: int = KEYS, values: int = VALUES) -> dict[str, Any]:
    """``{"fields": [{"key", "values": [{"value", "count", "exact"}], "more"}], "more", "sampled",
    "documents_read"}``: at most ``keys`` keys in key order, each with at most ``values`` values in value order;
    ``more`` says that some were left out. ``store``: an Engine's backend (folder or Milvus)."""
    docs = getattr(store, "docs", None)
    if docs is not None and getattr(docs, "path", None) is not None:
        return _from_table(Path(docs.path), keys, values)
    collection = getattr(store, "collection", None)
    if collection is not None and getattr(store, "stores_documents", False):
        return _from_sample(collection, keys, values)
    return {"fields": [], "more": False, "sampled": False, "documents_read": 0}


# ---- an index folder: the fields table --------------------------------------------------------------------
def _from_table(path: Path, keys: int, values: int) -> dict[str, Any]:
    # A connection of its own, read-only: the store's is serialised by its lock for searches' document lookups.
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        raise FormatError(f"{path.name}: cannot be read ({e})") from None
    try:
        out, more = [], False
        for key in _next_each(conn, "SELECT key FROM fields WHERE key > ? ORDER BY key LIMIT 1", ()):
            if len(key) > MAX_TEXT:
                more = True
                continue
            if len(out) == keys:
                more = True
                break
            vals, vmore = [], False
            for canonical in _next_each(conn, "SELECT value FROM fields WHERE key = ? AND value > ? ORDER BY value "
                                              "LIMIT 1", (key,)):
                if len(canonical) > MAX_TEXT:
                    vmore = True
                    continue
                if len(vals) == values:
                    vmore = True
                    break
                n = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM fields WHERE key = ? AND value = ? LIMIT ?)",
                                 (key, canonical, COUNT_CAP + 1)).fetchone()[0]
                vals.append(_value(canonical, min(n, COUNT_CAP), n <= COUNT_CAP))
            out.append({"key": key, "values": _ordered(vals), "more": vmore})
        return {"fields": out, "more": more, "sampled": False, "documents_read": None}
    except sqlite3.Error as e:
        raise FormatError(f"{path.name}: cannot be read ({e})") from None
    finally:
        conn.close()


def _next_each(conn: sqlite3.Connection, sql: str, head: tuple) -> Iterable[str]:
    """Distinct values in index order, one seek each (a skip scan: SQLite would read every row for DISTINCT)."""
    row = conn.execute(sql.replace("> ?", ">= ?"), (*head, "")).fetchone()  # >=: an empty key or value counts
    while row is not None:
        last = row[0]
        yield last
        row = conn.execute(sql, (*head, last)).fetchone()


# ---- a Milvus collection: a sample of the stored metadata ------------------------------------------------
def _from_sample(collection: Any, keys: int, values: int) -> dict[str, Any]:
    from ..milvus.client import rpc

    with rpc(f"query {collection.name}"):
        rows = collection.client.query(collection.name, filter="", output_fields=["metadata"], limit=MILVUS_SAMPLE)
    counts: dict[str, Counter[str]] = {}
    for row in rows:
        meta = row.get("metadata")
        if not isinstance(meta, dict):
            continue
        for key, val in meta.items():
            for v in set(_canonical(val)):
                counts.setdefault(key, Counter())[v] += 1
    names = sorted(k for k in counts if len(k) <= MAX_TEXT)
    out = []
    for key in names[:keys]:
        fit = sorted(v for v in counts[key] if len(v) <= MAX_TEXT)
        out.append({"key": key, "values": _ordered([_value(v, counts[key][v], True) for v in fit[:values]]),
                    "more": len(fit) > values or len(fit) < len(counts[key])})
    sampled = len(rows) >= MILVUS_SAMPLE
    return {"fields": out, "more": len(names) > keys or len(names) < len(counts), "sampled": sampled,
            "documents_read": len(rows)}


def _canonical(val: Any) -> list[str]:
    out = []
    for v in val if isinstance(val, list) else [val]:
        if isinstance(v, (str, int, float, bool)):
            out.append(canonical_value(v))
    return out


# ---- shared ------------------------------------------------------------------------------------------------
def _value(canonical: str, count: int, exact: bool) -> dict[str, Any]:
    # The stored JSON decoded: the client sends it back in a filter with its type (2021, not "2021").
    return {"value": json.loads(canonical), "count": count, "exact": exact}


def _ordered(vals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Numbers in numeric order (the table's text order puts 10 before 9), then the rest in text order."""
    def key(v: dict[str, Any]) -> tuple:
        x = v["value"]
        num = isinstance(x, (int, float)) and not isinstance(x, bool)
        return (0, x, "") if num else (1, 0, json.dumps(x, ensure_ascii=False))
    return sorted(vals, key=key)
