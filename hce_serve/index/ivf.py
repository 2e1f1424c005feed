"""The ``ivf-sq8`` vector structure: faiss IVF over 8-bit codes, re-ranked on the fp32 vectors.

Why: at millions of documents a graph needs a wide beam for high recall, and each step of that beam is a
random memory access; scanning a few cells of compact 8-bit codes is sequential, and re-scoring the best
``refine × k`` candidates exactly on the fp32 vectors restores the recall the codes lose. It builds much faster
than a graph too (a k-means, then one pass of encoding). Costs: 1 byte a dimension of codes beside the fp32
table (about what a graph's links take), and a k-means training of the cells. The measured trade-off is in
benchmarks/RESULTS.md §6.

- The fp32 table is label-aligned (row = label) and is also what ``get``, exact search and compaction read.
- Training: the cells are learnt from the live vectors once there are more than ``exact_threshold`` of
  them (below that the index is searched exactly), and again whenever the live count has doubled since,
  so a corpus added in batches ends with ~sqrt(n) cells (``nlist`` = 0) or the fixed ``nlist``; each
  retraining re-encodes every vector (amortised: about twice the final corpus). A build
  (``Index.bulk_load``) learns once, from the whole corpus, at its end. Compaction retrains too.
- From ``HNSW_CELLS`` cells on, the nearest cells are found through an HNSW graph over the centroids (faiss'
  ``IVF…_HNSW32``), which also makes encoding a large corpus into many cells cheaper.
- Deletion removes the label's code (faiss' hash-table direct map: one lookup a label); an upsert
  removes then adds. Per-query ``ef`` is ``nprobe``, the number of cells scanned.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import FormatError, missing_dependency

if TYPE_CHECKING:
    from ..options import IndexParams

IVF_FILE, VECTORS_FILE = "ivf.faiss", "vectors.npy"
MIN_TRAIN = 256  # never learn cells from fewer vectors (exact_threshold 0 in tests)
POINTS_PER_CELL = 39  # faiss warns below this many training points a cell
TRAIN_PER_CELL = 64  # k-means sample per cell: faiss wants >= 39; 4,096 cells learn from 262k vectors
ADD_CHUNK = 65536  # vectors encoded per faiss call while (re)training
HNSW_CELLS = 2048  # from this many cells a query finds its nearest cells through an HNSW graph over the centroids:
# scanning thousands of centroids becomes a sizeable share of a query that scans only a few cells
CELL_EF = 64  # that graph's beam (at least 2 x nprobe)
CPUS = os.cpu_count() or 1  # what a search with threads <= 0 (all cores) runs on


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise missing_dependency("faiss", "ivf") from None
    return faiss


_threads = [0]  # faiss' OpenMP thread count as last set by a search (a process-wide setting)


def set_threads(faiss: Any, threads: int) -> None:
    if threads > 0 and threads != _threads[0]:
        faiss.omp_set_num_threads(threads)
        _threads[0] = threads


def cells_for(n: int, nlist: int) -> int:
    """Cells for ``n`` training vectors: ``nlist`` if set, else ~sqrt(n); never under 39 points a cell."""
    want = nlist or int(round(np.sqrt(n)))
    return max(1, min(want, n // POINTS_PER_CELL))


class IvfSq8:
    """faiss IVF + SQ8 codes over label-aligned fp32 vectors."""

    FILES = (IVF_FILE, VECTORS_FILE)

    def __init__(self, dim: int, params: IndexParams, capacity: int) -> None:
        self.dim, self.params = dim, params
        self.vectors = np.zeros((max(16, capacity), dim), np.float32)  # (capacity, dim), row = label
        self.ivf: Any = None  # faiss IndexIVFScalarQuantizer once trained
        self._nlist = 0
        self.trained_on = 0  # live vectors at the last training
        self.deferred = False  # inside Index.bulk_load: learn nothing until settle()

    # ---- sizes and changes ------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def ready(self) -> bool:
        return self.ivf is not None

    @property
    def nlist(self) -> int:
        return self._nlist  # faiss' own attribute is a SWIG call, a cost paid on every search

    def stats(self) -> dict[str, int]:
        """The cells learnt (0: none yet, searched exactly) and the live count they were learnt from."""
        return {"cells": self._nlist, "trained_on": self.trained_on}

    def resize(self, capacity: int) -> None:
        """A larger fp32 table. Rows past the data are never touched until written (``np.zeros`` is calloc'd:
        the kernel hands out zero pages on first write), so headroom costs address space, not memory; growing
        past it copies the table once (transiently twice its size)."""
        grown = np.zeros((capacity, self.dim), np.float32)
        n = min(capacity, self.capacity)
        grown[:n] = self.vectors[:n]
        self.vectors = grown

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Store ``vectors`` under ``labels`` (new, reused or replaced) and encode them into the cells, if any."""
        self.vectors[labels] = vectors
        if self.ivf is not None:
            self.ivf.remove_ids(labels.astype(np.int64))  # replaced labels: their old codes go first
            self.ivf.add_with_ids(vectors, labels.astype(np.int64))

    def settle(self, n_live: int, deleted: np.ndarray) -> bool:
        """(Re)learn the cells if the ``n_live`` live vectors passed the exact threshold or doubled since the
        last training (never inside a bulk load); returns whether it did (every live vector is then encoded)."""
        if self.deferred or n_live <= max(self.params.exact_threshold,
                                          MIN_TRAIN - 1) or n_live < 2 * max(self.trained_on, 1):
            return False
        self.train(np.flatnonzero(~deleted))
        return True

    def delete(self, labels: list[int]) -> None:
        if self.ivf is not None and labels:
            self.ivf.remove_ids(np.asarray(labels, np.int64))
        self.vectors[labels] = 0.0

    def train(self, live: np.ndarray) -> None:
        """Learn the cells and the SQ8 ranges from the vectors of labels ``live``, then encode them all
        (in chunks: the fp32 table is never copied whole)."""
        faiss = faiss_module()
        nlist = cells_for(live.size, self.params.nlist)
        sample = live
        if live.size > TRAIN_PER_CELL * nlist:
            sample = np.sort(np.random.default_rng(0).choice(live, TRAIN_PER_CELL * nlist, replace=False))
        quantizer = "_HNSW32" if nlist >= HNSW_CELLS else ""
        ivf = faiss.index_factory(self.dim, f"IVF{nlist}{quantizer},SQ8", faiss.METRIC_INNER_PRODUCT)
        ivf.train(self.vectors[sample])
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        for start in range(0, live.size, ADD_CHUNK):
            part = live[start : start + ADD_CHUNK]
            ivf.add_with_ids(self.vectors[part], part.astype(np.int64))
        self.ivf, self.trained_on, self._nlist = ivf, int(live.size), int(ivf.nlist)

    def compacted(self, live: np.ndarray) -> IvfSq8:
        fresh = IvfSq8(self.dim, self.params, int(live.size * 1.25))
        fresh.vectors[: live.size] = self.vectors[live]
        if live.size > max(self.params.exact_threshold, MIN_TRAIN - 1):
            fresh.train(np.arange(live.size))
        return fresh

    # ---- reads ------------------------------------------------------------------------------------
    def get(self, labels: np.ndarray | list[int]) -> np.ndarray:
        return self.vectors[np.asarray(labels, np.int64)]

    def search(self, q: np.ndarray, k: int, ef: int, n_ok: int, threads: int,
               mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Scan ``ef`` cells' codes for ``refine × k`` candidates, re-score them on fp32; the best (nq, k) each.

        Cells that hold fewer than ``k`` (allowed) documents between them are widened ×4 until every query
        has ``k`` (all cells hold ``n_ok >= k``), so a filter never returns fewer hits than it allows."""
        faiss = faiss_module()
        cand = min(max(k, self.params.refine * k), n_ok)
        params, keep = faiss.SearchParametersIVF(), []  # keep: the objects params points to (SWIG holds no reference)
        if mask is not None:
            bits = np.packbits(mask, bitorder="little")
            keep += [bits, faiss.IDSelectorBitmap(mask.size, faiss.swig_ptr(bits))]
            params.sel = keep[-1]
        set_threads(faiss, threads)
        # Fewer queries than threads (one HTTP query with --threads 2): split the cells a query scans between the
        # threads (faiss parallel_mode 1), else the queries; same hits, a lone query's latency lower.
        # The mode lives on the shared faiss index: a concurrent search may run in the other one (speed only).
        self.ivf.parallel_mode = 1 if q.shape[0] < (threads if threads > 0 else CPUS) else 0
        nprobe = max(1, min(ef, self._nlist))
        while True:
            params.nprobe = nprobe
            if self._nlist >= HNSW_CELLS:
                keep.append(faiss.SearchParametersHNSW(efSearch=max(CELL_EF, 2 * nprobe)))
                params.quantizer_params = keep[-1]
            _, labels = self.ivf.search(q, cand, params=params)  # (nq, cand), -1 where a query found fewer
            if nprobe >= self._nlist or (labels[:, k - 1] >= 0).all():
                break
            nprobe = min(self._nlist, nprobe * 4)
        if mask is not None and not (labels[:, k - 1] >= 0).all():  # the cell graph missed cells: Index scans
            raise RuntimeError(f"the cells reached hold fewer than {k} allowed documents")
        missing = labels < 0
        scores = np.matmul(self.vectors[np.maximum(labels, 0)], q[:, :, None])[:, :, 0]  # exact, (nq, cand)
        if missing.any():
            scores[missing] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # the best k: nothing else is returned
        rows = np.arange(labels.shape[0])[:, None]
        return labels[rows, order], scores[rows, order]

    # ---- files ------------------------------------------------------------------------------------
    def save(self, folder: Path, n: int) -> None:
        """``ivf.faiss`` (empty while untrained) and ``vectors.npy`` (the first ``n`` labels, fp32); the
        caller fsyncs them."""
        path = folder / IVF_FILE
        if self.ivf is None:
            path.write_bytes(b"")
        else:
            faiss_module().write_index(self.ivf, str(path))
        with open(folder / VECTORS_FILE, "wb") as fh:
            np.save(fh, self.vectors[:n], allow_pickle=False)

    @classmethod
    def load(cls, folder: Path, dim: int, params: IndexParams, n: int, live: np.ndarray, capacity: int) -> IvfSq8:
        vec_path, ivf_path = folder / VECTORS_FILE, folder / IVF_FILE
        out = cls(dim, params, 16)
        out.vectors = read_table(vec_path, n, dim, max(16, capacity, n + n // 4))  # a quarter's headroom: free
        if ivf_path.stat().st_size:
            faiss = faiss_module()
            try:
                ivf = faiss.read_index(str(ivf_path))
            except RuntimeError as e:
                raise FormatError(f"{ivf_path}: faiss cannot read it ({str(e).splitlines()[0]})") from None
            if not isinstance(ivf, faiss.IndexIVFScalarQuantizer) or ivf.d != dim:
                raise FormatError(f"{ivf_path}: not a {dim}-d faiss IVF-SQ8 index")
            n_live = int(np.count_nonzero(live))
            if ivf.ntotal != n_live:
                raise FormatError(f"{ivf_path}: holds {ivf.ntotal:,} codes but the id table has {n_live:,} live rows")
            ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
            out.ivf, out.trained_on, out._nlist = ivf, int(ivf.ntotal), int(ivf.nlist)
        return out


def read_table(path: Path, n: int, dim: int, rows: int) -> np.ndarray:
    """``vectors.npy`` (n × dim) read once into the first n of ``rows`` zero rows (np.load would return a
    buffer without headroom: the first add would copy the whole table); the header is checked before GBs are read."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"npy format version {version}")
            shape, fortran, dtype = read_header(fh)
            if dtype != np.float32 or shape != (n, dim) or fortran:
                raise FormatError(f"{path}: expected float32 ({n:,}, {dim}), found {dtype} {shape}")
            table = np.zeros((rows, dim), np.float32)
            buf, got = memoryview(table[:n]).cast("B"), 0
            while got < buf.nbytes and (step := fh.readinto(buf[got:])):
                got += step
    except (ValueError, OSError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .npy array ({e})") from None
    if got != n * dim * 4:
        raise FormatError(f"{path}: truncated ({got:,} of {n * dim * 4:,} data bytes)")
    return table
