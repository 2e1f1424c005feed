"""The lexical part of an index folder: its settings in the manifest and its files in each generation.

``manifest.extra["lexical"]`` holds the analyzer and BM25 settings; the generation folder holds the files of
``bm25.FILES``. A folder without that key (every folder built before hybrid search, and ``--no-lexical``) is
dense-only. The part follows the vector index through the same snapshot + mutation-log cycle: a save writes
both into one generation, and the log replays into both on open, so after a kill the vectors, the stored
documents and the postings hold the same live ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import FormatError
from .analyzer import Analyzer
from .bm25 import FILES, BM25Params, LexicalIndex

KEY = "lexical"


def settings(index: LexicalIndex) -> dict[str, Any]:
    """What the manifest records of a lexical index (no postings: those are files)."""
    return {"analyzer": index.analyzer.to_dict(), "bm25": index.params.to_dict()}


def from_settings(s: Any, where: str) -> tuple[Analyzer, BM25Params]:
    if not isinstance(s, Mapping) or not isinstance(s.get("bm25"), Mapping):
        raise FormatError(f"{where}: extra.{KEY} must hold 'analyzer' and 'bm25' settings")
    analyzer = Analyzer.from_dict(s.get("analyzer") or {}, where)
    try:
        return analyzer, BM25Params(**s["bm25"])
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: bad BM25 settings ({e})") from None


def load_part(gen_folder: Path, extra: Mapping[str, Any], listed: Iterable[str], where: str) -> LexicalIndex | None:
    """The generation's lexical index, or None for a dense-only folder."""
    if KEY not in extra:
        return None
    analyzer, params = from_settings(extra[KEY], where)
    listed = set(listed)
    missing = [f for f in FILES if f"{gen_folder.name}/{f}" not in listed]
    if missing:
        raise FormatError(f"{where}: has lexical settings but does not list {', '.join(missing)}")
    return LexicalIndex.load(gen_folder, analyzer, params)


def with_settings(extra: Mapping[str, Any], index: LexicalIndex | None) -> dict[str, Any]:
    """``extra`` with the lexical key set for ``index`` (or removed for None)."""
    out = {k: v for k, v in extra.items() if k != KEY}
    if index is not None:
        out[KEY] = settings(index)
    return out


__all__ = ["KEY", "from_settings", "load_part", "settings", "with_settings"]
