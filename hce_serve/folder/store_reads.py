"""The read side of an opened index folder: searching vectors with filters, a subtree and stored fields.

``IndexStore`` (``store.py``) takes these methods; they only read, so they run concurrently with each
other and with a write (the graph has its own readers-writer lock, SQLite its connection lock). The same
``search`` signature is what ``MilvusStore`` answers for a Milvus collection: ``Engine`` drives either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..documents import Document
from ..errors import DataError
from ..formats.tree import Subtree
from .docstore import DocStore, matches

if TYPE_CHECKING:
    from ..index.index import Index
    from ..lexical.bm25 import LexicalIndex

NO_LEXICAL = ("this index has no lexical part (built before hybrid search, or with --no-lexical): "
              "add one with 'hce-serve index build-lexical --index IDX_DIR'")

StoredHit = tuple[str, float, Document | None]  # (id, score, the stored document when fields were asked for)


class StoreReads:
    index: Index
    docs: DocStore | None
    _overlay: dict[str, Document | None]  # a reader's replayed documents (None: deleted)
    _matches: dict[tuple, tuple[int, frozenset[str]]]
    _doc_writes: int
    lexical: LexicalIndex | None

    @property
    def stores_documents(self) -> bool:
        return self.docs is not None

    def search(self, queries: np.ndarray, k: int, ef: int | None = None, filter: Mapping[str, tuple[str, ...]] | None = None,
               subtree: Subtree | None = None, fields: Sequence[str] = (), num_threads: int = 1) -> list[list[StoredHit]]:
        """Top-``k`` per query row (``queries`` (q, dim)), best first, as (id, score, stored document or None).

        ``filter``: checked (``checks.check_filter``), applied inside the graph search; ``subtree``: only
        documents under its leaves; ``fields``: any of title/text/metadata fetches the stored documents.
        """
        allow_ids = self.match(filter) if filter else None
        rows = self.index.search(queries, k, ef=ef, num_threads=num_threads, allow_ids=allow_ids,
                                 allow_leaves=subtree.leaves if subtree is not None else None)
        return self._with_fields(rows, fields)

    def search_lexical(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None = None,
                       subtree: Subtree | None = None, fields: Sequence[str] = ()) -> list[list[StoredHit]]:
        """BM25's top-``k`` per query text, best first, under the same filter and subtree rules as ``search``."""
        lex = self.lexical
        if lex is None:
            raise DataError(NO_LEXICAL)
        allow_ids = self.match(filter) if filter else None
        index = self.index
        leaves = frozenset(subtree.leaves.tolist()) if subtree is not None else None

        def accept(ids: list[str]) -> list[bool]:
            # Live in the vector index too: a write changes the lexical side first on delete, last on add, so
            # this only matters for a search racing a write, and keeps the two sides' answers the same set.
            if leaves is None:
                return [i in index for i in ids]
            return [_leaf(i) in leaves for i in ids]

        def _leaf(i: str) -> int | None:
            try:
                return index.leaf_of(i)
            except KeyError:  # deleted meanwhile
                return None

        return self._with_fields([lex.search(t, k, allow_ids, accept) for t in texts], fields)

    def _with_fields(self, rows: list[list[tuple[str, float]]], fields: Sequence[str]) -> list[list[StoredHit]]:
        if not fields or self.docs is None:
            return [[(d, s, None) for d, s in row] for row in rows]
        docs = self.documents({d for row in rows for d, _ in row})
        # A hit whose document is gone was deleted after the search answered: it is not returned.
        return [[(d, s, docs[d]) for d, s in row if d in docs] for row in rows]

    def documents(self, ids: Iterable[str]) -> dict[str, Document]:
        """Stored documents of ``ids`` (those that have one); empty for an index that stores ids only."""
        if self.docs is None:
            return {}
        ids = list(ids)
        out = {i: d for i in ids if (d := self._overlay.get(i)) is not None}
        rest = [i for i in ids if i not in self._overlay]
        return {**out, **self.docs.get_many(rest)} if rest else out

    def match(self, flt: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
        """Ids whose metadata passes a checked filter (remembered until the next write: filters repeat)."""
        if self.docs is None:
            raise DataError("this index stores no documents (built with --no-store): filters need their metadata")
        key, seen = tuple(sorted(flt.items())), self._doc_writes
        if (hit := self._matches.get(key)) is not None and hit[0] == seen:
            return hit[1]
        ids = self.docs.match(flt) - self._overlay.keys()  # read after `seen`: at least that current
        found = frozenset(ids | {i for i, d in self._overlay.items() if d is not None and matches(d.metadata, flt)})
        if len(self._matches) >= 64:
            self._matches.clear()
        self._matches[key] = (seen, found)
        return found


__all__ = ["StoreReads", "StoredHit"]
