"""The vector structures an index folder can hold, chosen by ``IndexParams.kind``.

- ``hnsw`` (the default; ``ann_hnsw.py``): an hnswlib graph. Every folder written before kinds existed.
- ``ivf-sq8`` (``ann_ivf.py``): faiss IVF cells of 8-bit codes, re-ranked on fp32 vectors: the structure
  that searched 5M × 384 under 1 ms at recall@10 ≥ .99 on one box (benchmarks/RESULTS.md §6).

Each kind implements the same small protocol for ``Index`` (which owns ids, deletions, leaves, locks and
exact search): ``capacity``, ``ready``, ``resize``, ``add(vectors, labels)``, ``delete(labels)``,
``get(labels)``, ``search(q, k, ef, n_ok, threads, mask)`` (labels, inner products best first; RuntimeError
when it cannot answer), ``compacted(live)``, ``stats()``, ``deferred`` + ``settle(n_live, deleted)``
(learn from the live vectors when due, after the id tables are updated), ``save(folder, n)``, ``load(...)`` and its data ``FILES``.
"""

from __future__ import annotations

from typing import Any

from ..options import KINDS, IndexParams
from .hnsw import HnswGraph
from .ivf import IvfSq8

STRUCTURES: dict[str, Any] = {"hnsw": HnswGraph, "ivf-sq8": IvfSq8}
assert tuple(STRUCTURES) == KINDS


def structure(kind: str) -> Any:
    return STRUCTURES[kind]


def new_ann(dim: int, params: IndexParams, capacity: int) -> Any:
    return STRUCTURES[params.kind](dim, params, capacity)
