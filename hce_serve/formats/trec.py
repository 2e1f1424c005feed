"""TREC run files: ``qid Q0 docid rank score tag``, one line per hit."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import DataError
from . import atomic

Run = dict[str, dict[str, float]]


def format_run(results: Mapping[str, Sequence[tuple[str, float]]], tag: str = "hce") -> str:
    lines = []
    for qid, hits in results.items():
        for rank, (doc_id, score) in enumerate(hits, 1):
            if any(c.isspace() for c in qid + doc_id):
                raise DataError(f"TREC run: ids must not contain whitespace ({qid!r}, {doc_id!r})")
            lines.append(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")
    return "".join(lines)


def write_run(path: str | os.PathLike[str], results: Mapping[str, Sequence[tuple[str, float]]],
              tag: str = "hce") -> None:
    """Write ranked hits per query (already sorted, best first) atomically."""
    atomic.write_text(path, format_run(results, tag))


def parse_run(lines: Iterable[str], where: str = "run") -> Run:
    run: Run = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise DataError(f"{where}:{lineno}: expected 6 columns (qid Q0 docid rank score tag), found {len(parts)}")
        qid, _, doc_id, rank, score, _ = parts
        try:
            int(rank)
            val = float(score)
        except ValueError:
            raise DataError(f"{where}:{lineno}: rank must be an integer and score a number") from None
        run.setdefault(qid, {})[doc_id] = val
    return run


def read_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    return parse_run(text.splitlines(), str(p))
