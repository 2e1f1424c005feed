"""``IndexStore.field_values`` (see ``hce_serve/facets.py``): from ``docs.sqlite``'s ``fields`` table (one row per
key, value and id, the filter index), walked in its primary-key order. Each next key and each next value is one
index seek, and a value's count stops at ``COUNT_CAP`` rows, so the work is bounded by the answer's size and not
by the corpus. The counts are those of the file: a read-only server whose log replay changed documents (held in
memory until the next snapshot) counts them as they were.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import facets
from ..errors import FormatError


def field_values(path: Path, keys: int, values: int) -> dict[str, Any]:
    """The answer for the documents table at ``path``."""
    # A connection of its own, read-only: the store's is serialised by its lock for searches' document lookups.
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as e:
        raise FormatError(f"{path.name}: cannot be read ({e})") from None
    try:
        out, more = [], False
        for key in _next_each(conn, "SELECT key FROM fields WHERE key > ? ORDER BY key LIMIT 1", ()):
            if len(key) > facets.MAX_TEXT:
                more = True
                continue
            if len(out) == keys:
                more = True
                break
            vals, vmore = [], False
            for canonical in _next_each(conn, "SELECT value FROM fields WHERE key = ? AND value > ? ORDER BY value "
                                              "LIMIT 1", (key,)):
                if len(canonical) > facets.MAX_TEXT:
                    vmore = True
                    continue
                if len(vals) == values:
                    vmore = True
                    break
                n = conn.execute("SELECT COUNT(*) FROM (SELECT 1 FROM fields WHERE key = ? AND value = ? LIMIT ?)",
                                 (key, canonical, facets.COUNT_CAP + 1)).fetchone()[0]
                vals.append(facets.value(canonical, min(n, facets.COUNT_CAP), n <= facets.COUNT_CAP))
            out.append({"key": key, "values": facets.ordered(vals), "more": vmore})
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
