"""The lexical part of an index folder: its settings in the manifest and its files in each generation.

``manifest.extra["lexical"]`` holds the analyzer and BM25 settings; the generation folder holds the files of
``bm25.FILES``. A folder without that key (every folder built before hybrid search, and ``--no-lexical``) is
dense-only. The part follows the vector index through the same snapshot + mutation-log cycle: a save writes
both into one generation, and the log replays into both on open, so after a kill the vectors, the stored
documents and the postings hold the same live ids.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import FormatError
from .analyzer import Analyzer
from .bm25 import FILES, LexicalIndex
from .settings import KEY, from_settings
from .settings import settings as _settings

if TYPE_CHECKING:
    from ..formats.tree import Subtree

NO_LEXICAL = ("this index has no lexical part (built before hybrid search, or with --no-lexical): "
              "add one with 'hce-serve index build-lexical --index IDX_DIR'")


def settings(index: LexicalIndex) -> dict[str, Any]:
    """What the manifest records of a lexical index (no postings: those are files)."""
    return _settings(index.analyzer, index.params)


def load_part(gen_folder: Path, extra: Mapping[str, Any], listed: Iterable[str], where: str) -> LexicalIndex | None:
    """The generation's lexical index, or None for a dense-only folder."""
    if KEY not in extra:
        return None
    analyzer_settings, params = from_settings(extra[KEY], where)
    analyzer = Analyzer.from_dict(analyzer_settings, where)
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


def search_part(lex: LexicalIndex, index: Any, texts: Sequence[str], k: int, allow_ids: Collection[str] | None,
                subtree: Subtree | None, split: bool = True) -> list[list[tuple[str, float]]]:
    """BM25's top-``k`` (id, score) per query text among the ids live in the folder's vector ``index`` (and
    allowed, and under ``subtree``'s leaves): the same filter and subtree rules as a dense search."""
    if subtree is None:
        # Live in the vector index too: a write changes the lexical side first on delete and last on add, so
        # only a search racing a write can meet an id the index has dropped; checking the k kept is enough.
        return [[(i, s) for i, s in lex.search(t, k, allow_ids, split=split) if i in index] for t in texts]
    leaves = frozenset(subtree.leaves.tolist())

    def accept(ids: list[str]) -> list[bool]:
        return [_leaf(i) in leaves for i in ids]

    def _leaf(i: str) -> int | None:
        try:
            return index.leaf_of(i)
        except KeyError:  # deleted meanwhile
            return None

    return [lex.search(t, k, allow_ids, accept, split) for t in texts]
