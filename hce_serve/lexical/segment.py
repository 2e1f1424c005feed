"""A sealed lexical segment as arrays: streamed in from documents, written to and read from a generation folder.

A segment is term-major: for term j (terms sorted), ``rows[offsets[j]:offsets[j + 1]]`` are the rows holding it,
ascending, with their frequencies in ``tf``; ``ids[row]`` is the row's document id ("" for a dead row) and
``lengths[row]`` its length in terms. ``bm25.LexicalIndex`` scores and updates it; this module only makes and
stores it, so the files' format has one owner:

    lexical-terms.txt   the sorted vocabulary, a term a line (terms are word characters: no newline in one)
    lexical-ids.txt     row i's document id, a line each
    lexical.npz         offsets (int64, terms + 1), rows and tf (int32, postings), lengths (int32, rows)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FormatError

if TYPE_CHECKING:
    from .analyzer import Analyzer

TERMS_FILE, IDS_FILE, ARRAYS_FILE = "lexical-terms.txt", "lexical-ids.txt", "lexical.npz"
FILES = (TERMS_FILE, IDS_FILE, ARRAYS_FILE)


@dataclass(frozen=True)
class Segment:
    ids: list[str]
    terms: list[str]
    offsets: np.ndarray
    rows: np.ndarray
    tf: np.ndarray
    lengths: np.ndarray


class SegmentBuilder:
    """Streams (id, text) batches into a ``Segment``, holding postings as arrays, not Python objects."""

    def __init__(self, analyzer: Analyzer) -> None:
        self.analyzer = analyzer
        self.vocab: dict[str, int] = {}  # in order of first sight; sorted at the end
        self.ids: list[str] = []
        self.row_of: dict[str, int] = {}
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (term ids, rows, tf) per batch
        self.lengths: list[int] = []

    def add(self, docs: Sequence[tuple[str, str]]) -> None:
        """Add (id, text) pairs; an id seen before leaves its earlier row dead."""
        if not docs:
            return
        terms: list[int] = []
        rows: list[int] = []
        tfs: list[int] = []
        vocab = self.vocab
        for (doc_id, _), c in zip(docs, self.analyzer.counts_many([t for _, t in docs]), strict=True):
            row = len(self.ids)
            if (old := self.row_of.get(doc_id)) is not None:
                self.ids[old] = ""
            self.ids.append(doc_id)
            self.row_of[doc_id] = row
            terms.extend(vocab.setdefault(t, len(vocab)) for t in c)
            tfs.extend(c.values())
            rows.extend([row] * len(c))
            self.lengths.append(sum(c.values()))
        self.parts.append((np.array(terms, np.int32), np.array(rows, np.int32), np.array(tfs, np.int32)))

    def finish(self) -> Segment:
        terms = sorted(self.vocab)
        rank = np.empty(len(terms), np.int32)
        rank[[self.vocab[t] for t in terms]] = np.arange(len(terms), dtype=np.int32)
        empty = np.zeros(0, np.int32)
        term_of = rank[np.concatenate([p[0] for p in self.parts])] if self.parts else empty
        rows = np.concatenate([p[1] for p in self.parts]) if self.parts else empty
        tf = np.concatenate([p[2] for p in self.parts]) if self.parts else empty
        order = np.argsort(term_of, kind="stable")  # rows ascend within a term: they were added in order
        offsets = np.zeros(len(terms) + 1, np.int64)
        np.cumsum(np.bincount(term_of, minlength=len(terms)), out=offsets[1:])
        return Segment(self.ids, terms, offsets, rows[order], tf[order], np.array(self.lengths, np.float32))


def write_segment(folder: Path, seg: Segment) -> tuple[str, ...]:
    """Write the files into ``folder`` (a fresh generation folder) and fsync them."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_lines(folder / TERMS_FILE, seg.terms)
    _write_lines(folder / IDS_FILE, seg.ids)
    with open(folder / ARRAYS_FILE, "wb") as fh:
        np.savez(fh, offsets=seg.offsets, rows=seg.rows, tf=seg.tf, lengths=np.asarray(seg.lengths).astype(np.int32))
        fh.flush()
        os.fsync(fh.fileno())
    return FILES


def read_segment(folder: Path) -> Segment:
    """Read the files ``write_segment`` wrote and check them against each other."""
    terms, ids = _read_lines(folder / TERMS_FILE), _read_lines(folder / IDS_FILE)
    where = folder / ARRAYS_FILE
    try:
        with np.load(where, allow_pickle=False) as z:
            offsets, rows, tf, lengths = z["offsets"], z["rows"], z["tf"], z["lengths"]
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise FormatError(f"{where}: not a readable lexical index ({e})") from None
    if offsets.shape != (len(terms) + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        raise FormatError(f"{where}: term offsets disagree with the {len(terms):,} terms of {TERMS_FILE}")
    if rows.shape != tf.shape or rows.shape != (int(offsets[-1]),) or lengths.shape != (len(ids),):
        raise FormatError(f"{where}: postings or lengths do not match the offsets and {IDS_FILE}")
    if len(rows) and (rows.min() < 0 or rows.max() >= len(ids) or tf.min() < 1):
        raise FormatError(f"{where}: a posting points outside the {len(ids):,} rows or has no frequency")
    live = [i for i in ids if i]
    if len(set(live)) != len(live) or len(set(terms)) != len(terms):
        raise FormatError(f"{folder / IDS_FILE}: an id or a term appears twice")
    return Segment(ids, terms, offsets, rows, tf, lengths)


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read ({e})") from None
    return text.split("\n")[:-1] if text else []


__all__ = ["FILES", "Segment", "SegmentBuilder", "read_segment", "write_segment"]
