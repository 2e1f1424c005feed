"""The default vector structure of an index folder: an hnswlib graph (inner product) over label-aligned vectors.

One of the two kinds of vector structure (``structures.py`` says what each must do). hnswlib holds the vectors itself,
so
``get`` reads them back from the graph. A deleted label is marked in the graph (hidden from every search)
and re-linked when a new document is added under it.

Per-query ``ef`` without shared state: hnswlib searches with a beam of ``max(ef, k)`` and ``ef`` is one
number per graph, so the graph's own ``ef`` stays 1 and a search asks for ``max(k, ef)`` results, keeping
the best ``k`` — the same beam, the same answer, and concurrent searches with different ``ef`` never race.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, missing_dependency

if TYPE_CHECKING:
    from ..options import IndexParams

HNSW_FILE = "hnsw.bin"


def hnswlib_module() -> Any:
    try:
        import hnswlib
    except ImportError:
        raise missing_dependency("hnswlib", "serve") from None
    return hnswlib


class HnswGraph:
    """hnswlib's graph behind ``Index``: labels are rows of the index's id table."""

    FILES = (HNSW_FILE,)

    def __init__(self, dim: int, params: IndexParams, capacity: int, hnsw: Any = None) -> None:
        self.dim, self.params = dim, params
        if hnsw is None:
            hnsw = hnswlib_module().Index(space=params.space, dim=dim)
            hnsw.init_index(max_elements=max(16, capacity), M=params.M, ef_construction=params.ef_construction)
        hnsw.set_ef(1)  # the beam is max(k, ef) per query (module docstring)
        self.hnsw = hnsw

    # ---- sizes and changes ------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.hnsw.get_max_elements())

    @property
    def ready(self) -> bool:
        return True  # a graph can be walked from its first vector on

    def stats(self) -> dict[str, int]:
        return {}

    deferred = False  # Index.bulk_load sets it; a graph has nothing to learn

    def settle(self, n_live: int, deleted: np.ndarray) -> bool:
        return False

    def resize(self, capacity: int) -> None:
        self.hnsw.resize_index(capacity)

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Add (or replace, or reuse a deleted label for) ``vectors`` under ``labels``."""
        self.hnsw.add_items(vectors, labels, num_threads=-1)

    def delete(self, labels: list[int]) -> None:
        for lab in labels:
            self.hnsw.mark_deleted(lab)

    def compacted(self, live: np.ndarray, chunk: int = 65536) -> HnswGraph:
        """A new graph over the vectors of labels ``live`` (ascending), relabelled 0..len(live) - 1."""
        fresh = HnswGraph(self.dim, self.params, int(live.size * 1.25))
        for start in range(0, live.size, chunk):
            part = live[start : start + chunk]
            fresh.hnsw.add_items(self.get(part), np.arange(start, start + part.size))
        return fresh

    # ---- reads ------------------------------------------------------------------------------------
    def get(self, labels: np.ndarray | list[int]) -> np.ndarray:
        if len(labels) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.ascontiguousarray(self.hnsw.get_items(labels, return_type="numpy"), dtype=np.float32)

    def search(self, q: np.ndarray, k: int, ef: int, n_ok: int, threads: int,
               mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(labels, inner products), (nq, beam) each, best first; at least the top ``k`` of each query.
        Raises RuntimeError when hnswlib cannot fill the beam (the caller answers exactly)."""
        beam = min(max(k, ef), n_ok)
        allowed = mask.tobytes().__getitem__ if mask is not None else None  # label -> 0/1, no numpy scalar
        labels, dists = self.hnsw.knn_query(q, k=beam, num_threads=threads, filter=allowed)
        return labels, 1.0 - dists

    # ---- files ------------------------------------------------------------------------------------
    def save(self, folder: Path, n: int) -> None:
        self.hnsw.save_index(str(folder / HNSW_FILE))

    @classmethod
    def load(cls, folder: Path, dim: int, params: IndexParams, n: int, live: np.ndarray, capacity: int) -> HnswGraph:
        path = folder / HNSW_FILE
        check_hnsw_header(path, dim, n)
        h = hnswlib_module().Index(space=params.space, dim=dim)
        try:
            h.load_index(str(path), max_elements=max(capacity, n, 16))
        except (RuntimeError, ValueError, MemoryError) as e:
            raise FormatError(f"{path}: hnswlib cannot load it ({e})") from None
        if h.get_current_count() != n:
            raise FormatError(f"{path}: holds {h.get_current_count():,} vectors but the id table has {n:,} rows")
        return cls(dim, params, capacity, h)


def check_hnsw_header(path: Path, dim: int, n: int) -> None:
    """Read hnswlib's file header (hnswalg.h saveIndex) and compare dimension and count."""
    with open(path, "rb") as fh:
        head = fh.read(96)
    if len(head) < 96:
        raise FormatError(f"{path}: too short to be an hnswlib index ({len(head)} bytes)")
    _, max_el, count, per_elem, _, _, _, _, _, max_m0 = struct.unpack_from("<QQQQQQiiQQ", head)
    file_dim, rem = divmod(per_elem - 8 - (max_m0 * 4 + 4), 4)
    if rem or file_dim != dim:
        raise FormatError(f"{path}: graph holds {file_dim}-d vectors but the manifest says dim {dim}")
    if count != n or count > max_el:
        raise FormatError(f"{path}: graph holds {count:,} elements (capacity {max_el:,}); the id table has {n:,} rows")
