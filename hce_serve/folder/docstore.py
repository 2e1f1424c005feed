"""Stored documents: ``IDX_DIR/docs.sqlite``, an embedded SQLite database (stdlib ``sqlite3``, WAL journal).

```
docs   (id TEXT PRIMARY KEY, title TEXT, text TEXT, metadata TEXT: a JSON object or NULL)
fields (key, value, id) PRIMARY KEY (key, value, id): one row per metadata value, the filter index;
       value is the canonical JSON of a scalar (``checks.canonical_value``)
```

Durability is the index's, not SQLite's: every change is first in the index's fsync'ed mutation log, and
the log is replayed into this database on the next writer's open (changes are idempotent upserts and
deletes). So commits run with ``synchronous=NORMAL`` (durable against a killed process, not a power cut);
``checkpoint`` makes the file itself durable before a snapshot retires the log that covers it.

A reader may not write the file, so the documents its log replay changed stay in memory (``overlay``) and
answer ahead of the file: a ``DocStore`` is the stored documents as this process sees them. Filter matches
are remembered until the next write (filters repeat; a write forgets them all).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..checks import canonical_value
from ..documents import Document
from ..errors import FormatError, VersionError

DOCS_NAME = "docs.sqlite"
APP_ID = 0x48434531  # "HCE1": refuses a foreign SQLite file at the right name
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, metadata TEXT);
CREATE TABLE IF NOT EXISTS fields (key TEXT NOT NULL, value TEXT NOT NULL, id TEXT NOT NULL,
                                   PRIMARY KEY (key, value, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fields_by_id ON fields (id);
"""
CHUNK = 500  # ids per "IN (...)": under SQLite's bound-parameter limit on every version


def _values(v: Any) -> list[str]:
    return [canonical_value(x) for x in (v if isinstance(v, list) else [v])]


def matches(meta: Mapping[str, Any] | None, flt: Mapping[str, tuple[str, ...]]) -> bool:
    """Does a document's metadata pass a checked filter (``checks.check_filter``)? The SQL's rule in Python."""
    meta = meta or {}
    return all(key in meta and set(_values(meta[key])) & set(vals) for key, vals in flt.items())


class DocStore:
    """One SQLite connection, serialised by a lock (lookups of a page of hits take microseconds)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, readonly: bool) -> None:
        self.conn, self.path, self.readonly = conn, path, readonly
        self._lock = threading.Lock()
        self._overlay: dict[str, Document | None] = {}  # a reader's replayed documents (None: deleted)
        self._matches: dict[tuple, tuple[int, frozenset[str]]] = {}  # filter -> (writes then, matching ids)
        self._writes = 0  # bumped after every write: older matches are stale

    def overlay(self, net: Mapping[str, Document | None]) -> None:
        """A reader's documents as its log replay left them (None: deleted), answered ahead of the file."""
        self._overlay = dict(net)
        self._matches.clear()

    @classmethod
    def create(cls, path: str | os.PathLike[str], bulk: bool = False) -> DocStore:
        """A new, empty database. ``bulk``: no journal while it is built (a crash discards the whole file
        anyway); ``close`` switches it to WAL mode."""
        path = Path(path)
        if path.exists():
            raise FormatError(f"{path}: already exists")
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA application_id = {APP_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("PRAGMA journal_mode = OFF" if bulk else "PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = OFF" if bulk else "PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        return cls(conn, path, readonly=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool) -> DocStore:
        path = Path(path)
        if not path.is_file():
            raise FormatError(f"{path}: the manifest names this document store but it is missing")
        uri = f"file:{urllib.parse.quote(str(path))}" + ("?mode=ro" if readonly else "")
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as e:
            raise FormatError(f"{path}: not a readable SQLite database ({e})") from None
        if app != APP_ID:
            conn.close()
            raise FormatError(f"{path}: not an HCE document store (application_id {app:#x})")
        if version > SCHEMA_VERSION:
            conn.close()
            raise VersionError(f"{path}: schema version {version} is newer than this hce supports ({SCHEMA_VERSION})")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        return cls(conn, path, readonly)

    # ---- writes (the caller holds the store's writer lock) -------------------------------------------
    def write(self, put: Sequence[Document] = (), remove: Sequence[str] = ()) -> None:
        """Upsert ``put`` and delete ``remove`` in one transaction (all or nothing)."""
        rows, fields = [], []
        for d in put:
            rows.append((d.id, d.title, d.text, json.dumps(d.metadata, ensure_ascii=False) if d.metadata else None))
            fields.extend((k, v, d.id) for k, val in (d.metadata or {}).items() for v in set(_values(val)))
        gone = [(i,) for i in [*remove, *(d.id for d in put)]]
        with self._lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("DELETE FROM fields WHERE id = ?", gone)
                self.conn.executemany("DELETE FROM docs WHERE id = ?", [(i,) for i in remove])
                self.conn.executemany("INSERT OR REPLACE INTO docs (id, title, text, metadata) VALUES (?, ?, ?, ?)",
                                      rows)
                self.conn.executemany("INSERT INTO fields (key, value, id) VALUES (?, ?, ?)", fields)
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
            finally:
                self._writes += 1

    def checkpoint(self) -> None:
        """Copy the SQLite journal into the database file and fsync it."""
        with self._lock:
            self.conn.execute("PRAGMA wal_checkpoint(FULL)")

    # ---- reads ------------------------------------------------------------------------------------
    def get(self, ids: Iterable[str]) -> dict[str, Document]:
        """The stored documents of ``ids`` (those that have one), the overlay first."""
        ids = list(ids)
        out = {i: d for i in ids if (d := self._overlay.get(i)) is not None}
        rest = [i for i in ids if i not in self._overlay]
        return {**out, **self.get_many(rest)} if rest else out

    def get_many(self, ids: Iterable[str]) -> dict[str, Document]:
        """The documents of ``ids`` in the file (the overlay aside)."""
        ids = list(dict.fromkeys(ids))
        out: dict[str, Document] = {}
        with self._lock:
            for lo in range(0, len(ids), CHUNK):
                part = ids[lo : lo + CHUNK]
                sql = f"SELECT id, title, text, metadata FROM docs WHERE id IN ({','.join('?' * len(part))})"
                for i, title, text, meta in self.conn.execute(sql, part):
                    out[i] = Document(i, title, text, json.loads(meta) if meta else None)
        return out

    def match(self, flt: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
        """Ids whose metadata passes a checked filter (``checks.check_filter``): every field matches one of its
        values. Remembered until the next write."""
        key, seen = tuple(sorted(flt.items())), self._writes
        if (hit := self._matches.get(key)) is not None and hit[0] == seen:
            return hit[1]
        ids = self._match_file(flt) - self._overlay.keys()  # read after `seen`: at least that current
        found = frozenset(ids | {i for i, d in self._overlay.items() if d is not None and matches(d.metadata, flt)})
        if len(self._matches) >= 64:
            self._matches.clear()
        self._matches[key] = (seen, found)
        return found

    def _match_file(self, flt: Mapping[str, tuple[str, ...]]) -> set[str]:
        parts, args = [], []
        for key, vals in flt.items():
            parts.append(f"SELECT id FROM fields WHERE key = ? AND value IN ({','.join('?' * len(vals))})")
            args.extend([key, *vals])
        with self._lock:
            return {r[0] for r in self.conn.execute(" INTERSECT ".join(parts), args)}

    def iter_documents(self, batch: int) -> Iterator[list[Document]]:
        """Every stored document, in id order, ``batch`` at a time (a keyset scan: no long read transaction)."""
        last = ""
        first = True
        while True:
            with self._lock:
                sql = "SELECT id, title, text, metadata FROM docs WHERE id > ? OR ? ORDER BY id LIMIT ?"
                rows = self.conn.execute(sql, (last, first, batch)).fetchall()
            if not rows:
                return
            yield [Document(i, t, x, json.loads(m) if m else None) for i, t, x, m in rows]
            last, first = rows[-1][0], False

    def count(self) -> int:
        with self._lock:
            return int(self.conn.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.conn.execute("SELECT id FROM docs")}

    def close(self) -> None:
        with self._lock:
            if not self.readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")  # a bulk-built file leaves in WAL mode
            self.conn.close()
