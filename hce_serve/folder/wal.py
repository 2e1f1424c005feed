"""The mutation log ``IDX_DIR/wal-<generation>.log``: adds and deletes since the last snapshot.

An add or delete is acknowledged only after its record is written and fsync'ed, so it survives a kill -9;
the next load replays the log on top of the snapshot it follows, and the next save folds it in.

Layout: a 20-byte header (magic, dim, generation), then records ``<u32 payload length><u32 crc32>
<payload>``; payload = ``<u32 meta length>`` + JSON meta (``{"op": "add", "ids": [...], "leaves": [...],
"docs": [[title, text, metadata], ...]}`` or ``{"op": "delete", "ids": [...]}``) + the add's float32 vectors
(n, dim) in C order. ``docs`` is there when the index stores documents: the log is the truth for every
change since the snapshot, so the document store is replayed from it exactly as the vectors are. A record cut short
by a crash, or a last record whose checksum fails, ends the log: it was never acknowledged, so it is
dropped. A failing record with more records behind it is corruption, and loading refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..documents import Document
from ..errors import FormatError
from ..formats.atomic import fsync_dir

log = logging.getLogger(__name__)

MAGIC = b"HCEWAL\x00\x01"
HEADER = struct.Struct("<8sIQ")  # magic, dim, generation
FRAME = struct.Struct("<II")  # payload length, crc32(payload)
META = struct.Struct("<I")
MAX_RECORD = 1 << 31  # a length above this is garbage, not a record


def wal_name(generation: int) -> str:
    return f"wal-{generation:06d}.log"


@dataclass(frozen=True)
class Record:
    op: str  # "add" | "delete"
    ids: list[str]
    vectors: np.ndarray | None = None  # (n, dim) float32 for "add"
    leaves: list[int] | None = None
    docs: list[Document] | None = None  # row-aligned with ids, for an index that stores documents


@dataclass(frozen=True)
class LogContents:
    records: list[Record]
    end: int  # offset just after the last good record
    dropped_bytes: int  # torn or corrupt tail


def encode_record(rec: Record) -> bytes:
    meta: dict = {"op": rec.op, "ids": rec.ids}
    body = b""
    if rec.op == "add":
        if rec.vectors is None:
            raise ValueError("an add record needs vectors")
        meta["leaves"] = list(rec.leaves) if rec.leaves is not None else None
        if rec.docs is not None:
            meta["docs"] = [[d.title, d.text, d.metadata] for d in rec.docs]
        body = np.ascontiguousarray(rec.vectors, dtype="<f4").tobytes()
    m = json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    payload = META.pack(len(m)) + m + body
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _check_meta(meta: object) -> None:
    """Raise ValueError unless ``meta`` has the shape ``encode_record`` writes (a checksum proves integrity,
    not that the writer was this code)."""
    if not isinstance(meta, dict) or meta.get("op") not in ("add", "delete"):
        raise ValueError("record metadata is not an add or delete")
    ids = meta.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise ValueError("record ids are not a list of strings")
    leaves = meta.get("leaves")
    if leaves is not None and (not isinstance(leaves, list) or len(leaves) != len(ids) or not all(
            isinstance(x, int) and not isinstance(x, bool) and -2**31 <= x < 2**31 for x in leaves)):
        raise ValueError("record leaves are not one 32-bit integer per id")
    docs = meta.get("docs")
    if docs is not None and (not isinstance(docs, list) or not all(
            isinstance(d, list) and len(d) == 3 and isinstance(d[0], str) and isinstance(d[1], str)
            and (d[2] is None or isinstance(d[2], dict)) for d in docs)):
        raise ValueError("record documents are not [title, text, metadata] triples")


def _decode_payload(payload: bytes, dim: int) -> Record:
    (mlen,) = META.unpack_from(payload)
    meta = json.loads(payload[META.size : META.size + mlen].decode("utf-8"))
    _check_meta(meta)
    ids = meta["ids"]
    if meta["op"] == "delete":
        return Record("delete", ids)
    vec = np.frombuffer(payload[META.size + mlen :], dtype="<f4")
    if vec.size != len(ids) * dim:
        raise ValueError(f"add record holds {vec.size} floats for {len(ids)} ids of dim {dim}")
    docs = meta.get("docs")
    if docs is not None:
        if len(docs) != len(ids):
            raise ValueError(f"add record holds {len(docs)} documents for {len(ids)} ids")
        docs = [Document(i, t, x, m) for i, (t, x, m) in zip(ids, docs, strict=True)]
    return Record("add", ids, vec.reshape(len(ids), dim).astype(np.float32), meta.get("leaves"), docs)


def read_log(path: str | os.PathLike[str], dim: int, generation: int) -> LogContents:
    """Every intact record of the log at ``path``; a torn or corrupt tail is reported, not raised."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:  # killed while creating it: nothing was acknowledged yet
        return LogContents([], 0, len(data))
    magic, fdim, fgen = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FormatError(f"{path}: not an HCE mutation log (bad magic)")
    if fdim != dim or fgen != generation:
        raise FormatError(f"{path}: log is for dim {fdim} generation {fgen}, index has dim {dim} generation "
                          f"{generation}")
    pos, records = HEADER.size, []
    while pos + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, pos)
        start = pos + FRAME.size
        if length > MAX_RECORD or start + length > len(data):
            break
        payload = data[start : start + length]
        if zlib.crc32(payload) != crc:
            if start + length < len(data):
                # Records are fsync'ed one at a time, so only the last one can be torn by a crash. A bad
                # checksum with records behind it is corruption: dropping the tail would lose acknowledged writes.
                raise FormatError(
                    f"{path}: record at byte {pos} fails its checksum and {len(data) - start - length:,} bytes of "
                    "later records follow (disk corruption); refusing to drop acknowledged writes"
                )
            break
        try:
            records.append(_decode_payload(payload, dim))
        except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: record at byte {pos} has a valid checksum but cannot be decoded "
                              f"({e})") from None
        pos = start + length
    if pos < len(data):
        log.warning("%s: ignoring %d bytes of a torn or corrupt last record", path, len(data) - pos)
    return LogContents(records, pos, len(data) - pos)


class MutationLog:
    """An open log for appending. ``append`` returns once the record is on disk (fsync)."""

    def __init__(self, path: str | os.PathLike[str], dim: int, generation: int, truncate_at: int | None = None) -> None:
        self.path = Path(path)
        self.records = 0
        exists = self.path.is_file() and self.path.stat().st_size >= HEADER.size
        self._fh = open(self.path, "r+b" if exists else "w+b")  # noqa: SIM115 - owned until close()
        if not exists:
            self._fh.write(HEADER.pack(MAGIC, dim, generation))
            self._sync()
            fsync_dir(self.path.parent)
        elif truncate_at is not None and truncate_at >= HEADER.size:
            # Drop a torn tail so new records are not appended behind garbage.
            self._fh.truncate(truncate_at)
            self._sync()
        self._fh.seek(0, os.SEEK_END)

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, rec: Record) -> int:
        """Write and fsync one record; returns the offset it starts at (for ``rollback``)."""
        data = encode_record(rec)
        start = self._fh.tell()
        try:
            self._fh.write(data)
            self._sync()
        except BaseException:
            # A half-written record (disk full, interrupt) must not sit in front of later ones.
            try:
                self._fh.truncate(start)
                self._fh.seek(start)
            except OSError:
                pass
            raise
        self.records += 1
        return start

    def rollback(self, offset: int) -> None:
        """Cut the log back to ``offset`` (a record whose change could not be applied is withdrawn)."""
        self._fh.truncate(offset)
        self._fh.seek(offset)
        self._sync()
        self.records -= 1

    @property
    def size(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def replay(records: Sequence[Record], index: Any, lexical: Any = None) -> dict[str, Document | None]:
    """Apply logged records, in order, to the vector index (and the lexical part, when there is one); returns
    the log's last word on each document it touched (None: deleted), for the document store."""
    net: dict[str, Document | None] = {}
    for rec in records:
        if rec.op == "add":
            index.add(rec.ids, rec.vectors, rec.leaves)
            docs = rec.docs or [Document(i, "", "") for i in rec.ids]
            net.update((d.id, d) for d in docs)
            if lexical is not None:
                lexical.add([(d.id, d.full_text) for d in docs])
        else:
            index.delete(rec.ids)
            net.update(dict.fromkeys(rec.ids))
            if lexical is not None:
                lexical.delete(rec.ids)
    return net
