"""The vector structures an index folder can hold, chosen by ``IndexParams.kind``, and the interface they share.

- ``hnsw`` (the default; ``hnsw.py``): an hnswlib graph. Every folder written before kinds existed.
- ``ivf-sq8`` (``ivf.py``): faiss IVF cells of 8-bit codes, re-ranked on fp32 vectors: the structure for
  millions of documents on one box (its figures: benchmarks/RESULTS.md §6).

``Index`` (``index.py``) owns ids, deletions, leaves, locks and exact search; a structure owns only the
vectors under their labels and the approximate search over them (``VectorStructure``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .hnsw import HnswGraph
from .ivf import IvfSq8

if TYPE_CHECKING:
    from ..options import IndexParams


class VectorStructure(Protocol):
    """What ``Index`` asks of a vector structure; labels are rows of the index's id table."""

    FILES: tuple[str, ...]  # its data files in a generation folder
    deferred: bool  # inside Index.bulk_load: learn nothing until settle()

    @property
    def capacity(self) -> int: ...

    @property
    def ready(self) -> bool:
        """Whether it can answer an approximate search (an IVF without learnt cells cannot: Index scans)."""

    def stats(self) -> dict[str, int]: ...

    def resize(self, capacity: int) -> None: ...

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Store ``vectors`` (n, dim) under ``labels`` (new, reused or replaced)."""

    def delete(self, labels: list[int]) -> None: ...

    def settle(self, n_live: int, deleted: np.ndarray) -> bool:
        """Learn from the live vectors when due, once the id tables are updated; whether it did."""

    def compacted(self, live: np.ndarray) -> VectorStructure:
        """A new structure over the vectors of labels ``live`` (ascending), relabelled 0..len(live) - 1."""

    def get(self, labels: np.ndarray | list[int]) -> np.ndarray: ...

    def search(self, q: np.ndarray, k: int, ef: int, n_ok: int, threads: int,
               mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, inner products) best first, at least ``k`` per query; RuntimeError when it cannot answer."""

    def save(self, folder: Path, n: int) -> None: ...


@dataclass
class IndexState:
    """The arrays behind an index, as ``folder.datafiles`` reads and writes them (row i = label i)."""

    ann: VectorStructure
    ids: list[str]  # "" for a free slot
    deleted: np.ndarray  # (labels,) bool
    leaves: np.ndarray  # (labels,) int32


STRUCTURES: dict[str, Any] = {"hnsw": HnswGraph, "ivf-sq8": IvfSq8}  # kind -> class (with FILES and load)


def structure(kind: str) -> Any:
    return STRUCTURES[kind]


def new_ann(dim: int, params: IndexParams, capacity: int) -> VectorStructure:
    return STRUCTURES[params.kind](dim, params, capacity)
