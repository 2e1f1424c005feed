"""``Backend``: what the Engine drives, and what every store of vectors and documents declares it implements.

Two backends implement it today: ``folder.store.IndexStore`` (an index folder: hnswlib or faiss, SQLite, a
mutation log) and ``milvus.store.MilvusStore`` (a Milvus collection). The Engine owns text (the encoder, the
query cache, the corpus tree) and talks to its backend only through this surface: vectors in, ids, scores and
stored documents out. A third backend plugs in by implementing the same methods; nothing outside a backend
reaches into it (``IndexStore.index`` is the folder's own business, not the Engine's).

Writes come in two steps so nothing is encoded for a batch that would be refused: ``prepare`` checks the
documents (and that the backend is writable) and returns a ``Batch``; ``add`` takes the batch with its vectors
and tree leaves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .checks import check_ids, check_leaves, check_vectors
from .documents import AddResult, DeleteResult, Document

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .formats.tree import Subtree
    from .lexical.modes import SearchSettings

StoredHit = tuple[str, float, Document | None]  # (id, score, the stored document when fields were asked for)


@dataclass(frozen=True)
class Batch:
    """Documents that passed ``check_documents``: the input every backend's ``add`` takes."""

    docs: list[Document]
    dropped_metadata: int = 0  # metadata entries left out for not being flat (corpus files only)

    @classmethod
    def of_ids(cls, ids: Sequence[str]) -> Batch:
        """Vectors without text: checked ids, each with an empty document."""
        return cls([Document(i, "", "") for i in check_ids(ids)])

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.docs]

    @property
    def empty(self) -> int:
        return sum(d.is_empty for d in self.docs)

    def rows(self, vectors: Any, leaves: Any, dim: int, no_leaf: int) -> tuple[np.ndarray, np.ndarray]:
        """The batch's vectors (n, dim) float32 and tree leaves (n,) int32, checked against it (every backend's
        add takes them through here); ``leaves`` None gives ``no_leaf`` for all."""
        n = len(self.docs)
        return check_vectors(vectors, n, dim), check_leaves(leaves, n, no_leaf)


class Backend(Protocol):
    """Vectors, stored documents and writes behind an ``Engine``. Searches may run concurrently with each other
    and with one write; a backend serialises its writes itself."""

    writable: bool

    @property
    def dim(self) -> int:
        """The vectors' dimension."""

    @property
    def encoder_dir(self) -> Path:
        """The export whose encoder wrote the vectors (and encodes the queries)."""

    @property
    def stores_documents(self) -> bool:
        """Whether titles, texts and metadata are stored (filters and ``get`` need them)."""

    @property
    def search_defaults(self) -> SearchSettings:
        """The stored default search mode, fusion, alpha and depth (a backend without a lexical side: dense)."""

    def __len__(self) -> int:
        """Live documents."""

    def ids(self) -> list[str]:
        """Every live id."""

    def search(self, queries: np.ndarray, k: int, ef: int | None = None,
               filter: Mapping[str, tuple[str, ...]] | None = None, subtree: Subtree | None = None,
               fields: Sequence[str] = (), num_threads: int = 1) -> list[list[StoredHit]]:
        """Top-``k`` per query row (``queries`` (q, dim)), best first; ``filter`` checked (``check_filter``),
        ``fields`` any of title/text/metadata to return the stored documents."""

    def search_lexical(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None = None,
                       subtree: Subtree | None = None, fields: Sequence[str] = ()) -> list[list[StoredHit]]:
        """BM25's top-``k`` per query text under the same rules as ``search``; a backend without a lexical side
        raises ``DataError``."""

    def start_search_lexical(self, texts: Sequence[str], k: int,
                             filter: Mapping[str, tuple[str, ...]] | None = None,
                             subtree: Subtree | None = None) -> Future[list[list[StoredHit]]]:
        """``search_lexical`` (no fields) begun for hybrid's fusion: on a worker thread when it is slow enough to
        be worth running beside the encoder, else done now; refuses at once without a lexical side."""

    def get(self, ids: Iterable[str]) -> dict[str, Document]:
        """The stored documents of those ``ids`` that are live (empty when the backend stores no documents)."""

    def prepare(self, docs: Iterable[Document | Mapping[str, Any]], strict: bool = True) -> Batch:
        """Check a batch before anything is spent on it; refuses when the backend is read-only."""

    def add(self, batch: Batch, vectors: np.ndarray, leaves: Any = None) -> AddResult:
        """Add or replace the batch's documents with their vectors (n, dim) and tree leaves (n,)."""

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        """Delete by id; ids that are not live come back in ``missing``."""

    def stats(self) -> dict[str, Any]:
        """Counts and parameters, without filesystem paths (HTTP clients see them)."""

    def field_values(self, keys: int, values: int) -> dict[str, Any]:
        """The metadata keys and values a filter can use, with counts, bounded (``hce_serve/facets.py``)."""

    def save(self, force: bool = False) -> bool:
        """Make what was written durable in the backend's own form; False when there was nothing to do."""

    def compact(self) -> int:
        """Drop deleted slots; the number dropped."""

    def close(self, save: bool = False) -> None:
        """Release the backend (after ``save`` when asked)."""
