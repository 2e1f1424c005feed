"""The vector index: hnswlib (inner product) plus string ids, tombstones and tree leaves.

Label ``i`` is row ``i`` of ``ids``. A deleted document keeps its label as a *free slot*: hnswlib's
deletion marker hides it from every search and the next new document reuses it, so the label count does
not grow under churn. Why not hnswlib's ``replace_deleted=True``: it reuses an arbitrary deleted slot
and drops that slot's label, which a row-aligned id file cannot follow without scanning every label.
Instead the index is opened with ``allow_replace_deleted=False`` and a new document is added *under the
free label itself*: hnswlib then un-marks that slot and re-links it (its update path). Same cost, and the
label -> id mapping stays exact.

Searches never raise because ``k`` exceeds the live count (``k`` is clamped; hnswlib already searches
with ``max(ef, k)``), never return a deleted id (hnswlib skips marked slots; results are filtered again
here in case a marker and the id table ever disagree), and fall back to exact search if hnswlib cannot
fill the result array. Small indexes (``exact_threshold``) are searched exactly.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError, FormatError, missing_dependency
from .index_io import check_hnsw_header, fsync_file, load_array
from .rwlock import RWLock
from .search import as_f32_matrix, topk_inner_product
from .tree import read_ids, write_ids

log = logging.getLogger(__name__)

HNSW_FILE, IDS_FILE, DELETED_FILE, LEAVES_FILE = "hnsw.bin", "ids.txt", "deleted.npy", "leaves.npy"
DATA_FILES = (HNSW_FILE, IDS_FILE, DELETED_FILE, LEAVES_FILE)
NO_LEAF = -1  # leaves.npy value for a free slot or an index built without a tree
Hit = tuple[str, float]


def _hnswlib() -> Any:
    try:
        import hnswlib
    except ImportError:
        raise missing_dependency("hnswlib", "serve") from None
    return hnswlib


@dataclass(frozen=True)
class IndexParams:
    """HNSW and maintenance knobs, stored in the manifest."""

    M: int = 16  # graph degree: memory and recall
    ef_construction: int = 200  # build-time beam: build speed vs graph quality
    ef_search: int = 100  # query-time beam (hnswlib uses max(ef, k))
    space: str = "ip"  # documents and queries are L2-normalised: inner product = cosine
    exact_threshold: int = 4096  # search exactly (numpy) while the live count is at most this
    compact_ratio: float = 0.3  # rebuild automatically once deleted / labels exceeds this ...
    compact_min_deleted: int = 1024  # ... and at least this many slots are dead

    def __post_init__(self) -> None:
        if self.space != "ip":
            raise ConfigError(f"index space must be 'ip' (normalised vectors), found {self.space!r}")
        for name in ("M", "ef_construction", "ef_search"):
            if not 1 <= getattr(self, name) <= 100_000:
                raise ConfigError(f"{name} must be between 1 and 100000, found {getattr(self, name)}")
        if self.exact_threshold < 0 or self.compact_min_deleted < 0:
            raise ConfigError("exact_threshold and compact_min_deleted must be >= 0")
        if not 0.0 < self.compact_ratio <= 1.0:
            raise ConfigError(f"compact_ratio must be in (0, 1], found {self.compact_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AddResult:
    added: int  # ids that were not live before
    replaced: int  # live ids whose vector was replaced (upsert)


@dataclass(frozen=True)
class DeleteResult:
    deleted: list[str]
    missing: list[str]  # ids that were not live: reported, not an error


def check_ids(ids: Sequence[str]) -> list[str]:
    """Validate a batch of document ids (non-empty strings, no tab/line break, unique in the batch)."""
    out = list(ids)
    for i in out:
        if not isinstance(i, str) or not i.strip() or any(c in i for c in "\t\r\n"):
            raise DataError(f"document id {i!r} is empty, not a string, or contains a tab or line break")
    seen: set[str] = set()
    for i in out:
        if i in seen:
            raise DataError(f"document id {i!r} appears more than once in one batch; nothing was added")
        seen.add(i)
    return out


class Index:
    """An updatable MIPS index over string ids. Thread-safe: many searches, one writer at a time."""

    def __init__(self, dim: int, params: IndexParams | None = None, capacity: int = 1024) -> None:
        if dim <= 0:
            raise ConfigError(f"dim must be positive, found {dim}")
        self.dim = int(dim)
        self.params = params or IndexParams()
        self._hnsw = self._new_hnsw(max(16, capacity))
        self._ids: list[str] = []  # row = label; "" for a free slot
        self._label: dict[str, int] = {}  # live id -> label
        self._deleted = np.zeros(0, bool)  # (labels,)
        self._leaves = np.zeros(0, np.int32)  # (labels,)
        self._free: list[int] = []  # free labels, reused last-in first-out
        self._lock = RWLock()
        self._writer = threading.RLock()  # serialises mutations (compaction builds under the read lock)
        self._exact: tuple[np.ndarray, np.ndarray] | None = None  # (labels (n,), vectors (n, dim))
        self._exact_lock = threading.Lock()

    def _new_hnsw(self, capacity: int) -> Any:
        h = _hnswlib().Index(space=self.params.space, dim=self.dim)
        h.init_index(max_elements=capacity, M=self.params.M, ef_construction=self.params.ef_construction)
        h.set_ef(self.params.ef_search)
        return h

    # ---- sizes ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._label)

    @property
    def num_labels(self) -> int:
        return len(self._ids)

    @property
    def num_deleted(self) -> int:
        return len(self._ids) - len(self._label)

    @property
    def capacity(self) -> int:
        return int(self._hnsw.get_max_elements())

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._label

    def ids(self) -> list[str]:
        """Live ids in label order."""
        with self._lock.read():
            return [i for i in self._ids if i]

    def leaf_of(self, doc_id: str) -> int:
        return int(self._leaves[self._label[doc_id]])

    def stats(self) -> dict[str, Any]:
        n = self.num_labels
        return {
            "dim": self.dim,
            **self.params.to_dict(),
            "live": len(self),
            "deleted": self.num_deleted,
            "labels": n,
            "capacity": self.capacity,
            "tombstone_ratio": round(self.num_deleted / n, 4) if n else 0.0,
        }

    # ---- changes ----------------------------------------------------------------------------------
    def validate_batch(
        self, ids: Sequence[str], vectors: np.ndarray, leaves: Sequence[int] | np.ndarray | None = None
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Check a batch before anything changes: (ids, float32 vectors (n, dim), int32 leaves (n,))."""
        ids = check_ids(ids)
        try:
            vecs = as_f32_matrix(vectors, self.dim)  # (n, dim)
        except ValueError as e:
            raise DataError(f"vector dimension mismatch: index has dim {self.dim}; {e}") from None
        if vecs.shape[0] != len(ids):
            raise DataError(f"{len(ids)} ids but {vecs.shape[0]} vectors")
        if not np.isfinite(vecs).all():
            raise DataError("vectors contain NaN or infinity; nothing was added")
        leaf_arr = np.full(len(ids), NO_LEAF, np.int32) if leaves is None else np.asarray(leaves, np.int32)
        if leaf_arr.shape != (len(ids),):
            raise DataError(f"{len(ids)} ids but leaves has shape {leaf_arr.shape}")
        return ids, vecs, leaf_arr

    def add(self, ids: Sequence[str], vectors: np.ndarray, leaves: Sequence[int] | np.ndarray | None = None) -> AddResult:
        """Add documents; an id that is already live is replaced (upsert). All-or-nothing validation first."""
        ids, vecs, leaf_arr = self.validate_batch(ids, vectors, leaves)
        if not ids:
            return AddResult(0, 0)
        with self._writer, self._lock.write():
            labels = np.empty(len(ids), np.int64)
            fresh = 0
            replaced = 0
            free = list(self._free)
            for j, doc_id in enumerate(ids):
                if doc_id in self._label:
                    labels[j] = self._label[doc_id]
                    replaced += 1
                elif free:
                    labels[j] = free.pop()
                else:
                    labels[j] = len(self._ids) + fresh
                    fresh += 1
            need = len(self._ids) + fresh
            if need > self.capacity:
                new_cap = max(need, int(self.capacity * 1.5) + 16)
                log.debug("growing index capacity %d -> %d", self.capacity, new_cap)
                self._hnsw.resize_index(new_cap)
            # hnswlib is only called once the batch is known to fit; tables are updated after it returns.
            self._hnsw.add_items(vecs, labels, num_threads=-1)
            self._free = free
            self._ids.extend([""] * fresh)
            self._deleted = np.concatenate([self._deleted, np.zeros(fresh, bool)])
            self._leaves = np.concatenate([self._leaves, np.full(fresh, NO_LEAF, np.int32)])
            for doc_id, lab, leaf in zip(ids, labels.tolist(), leaf_arr.tolist(), strict=True):
                self._ids[lab] = doc_id
                self._label[doc_id] = lab
                self._deleted[lab] = False
                self._leaves[lab] = leaf
            self._exact = None
        return AddResult(len(ids) - replaced, replaced)

    def delete(self, ids: Sequence[str], auto_compact: bool = True) -> DeleteResult:
        """Mark documents deleted; unknown ids are returned in ``missing``. May compact afterwards."""
        wanted = list(dict.fromkeys(ids))
        with self._writer:
            with self._lock.write():
                done, missing = [], []
                for doc_id in wanted:
                    lab = self._label.pop(doc_id, None) if isinstance(doc_id, str) else None
                    if lab is None:
                        missing.append(doc_id)
                        continue
                    self._hnsw.mark_deleted(lab)
                    self._ids[lab] = ""
                    self._deleted[lab] = True
                    self._leaves[lab] = NO_LEAF
                    self._free.append(lab)
                    done.append(doc_id)
                if done:
                    self._exact = None
            if auto_compact and self.needs_compaction():
                self.compact()
        return DeleteResult(done, missing)

    def needs_compaction(self) -> bool:
        d, n = self.num_deleted, self.num_labels
        return d >= max(1, self.params.compact_min_deleted) and d > self.params.compact_ratio * n

    def compact(self, chunk: int = 65536) -> int:
        """Rebuild the graph from live vectors only; returns the number of slots dropped.

        The new graph is built under the read lock (searches go on; other writers wait), then swapped in.
        """
        with self._writer:
            with self._lock.read():
                dropped = self.num_deleted
                live = np.flatnonzero(~self._deleted)  # (n,)
                fresh = self._new_hnsw(max(16, int(live.size * 1.25)))
                for start in range(0, live.size, chunk):
                    part = live[start : start + chunk]
                    fresh.add_items(self._hnsw.get_items(part, return_type="numpy"), np.arange(start, start + part.size))
                ids = [self._ids[i] for i in live.tolist()]
                leaves = self._leaves[live].copy()
            with self._lock.write():
                self._hnsw = fresh
                self._ids = ids
                self._label = {d: i for i, d in enumerate(ids)}
                self._deleted = np.zeros(len(ids), bool)
                self._leaves = leaves
                self._free = []
                self._exact = None
        log.info("compacted index: %d live documents, %d dead slots dropped", len(ids), dropped)
        return dropped

    def set_ef(self, ef: int) -> None:
        with self._writer, self._lock.write():
            self.params = IndexParams(**{**self.params.to_dict(), "ef_search": int(ef)})
            self._hnsw.set_ef(int(ef))

    # ---- reads ------------------------------------------------------------------------------------
    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors (n, dim) of live ids (KeyError for an unknown one)."""
        with self._lock.read():
            labels = [self._label[i] for i in ids]
            if not labels:
                return np.zeros((0, self.dim), np.float32)
            return np.asarray(self._hnsw.get_items(labels, return_type="numpy"), np.float32)

    def search(self, queries: np.ndarray, k: int, num_threads: int = 1, exact: bool | None = None) -> list[list[Hit]]:
        """Top-``k`` live documents per query as [(id, score)], best first; ``k`` clamped to the live count.

        ``exact=None`` searches exactly while the live count is at most ``params.exact_threshold``.
        """
        q = as_f32_matrix(queries, self.dim, "queries")  # (nq, dim)
        if k <= 0:
            raise DataError(f"k must be positive, found {k}")
        with self._lock.read():
            k_eff = min(int(k), len(self._label))
            if k_eff == 0:
                return [[] for _ in range(q.shape[0])]
            if exact is None:
                exact = len(self._label) <= self.params.exact_threshold
            if exact:
                return self._search_exact(q, k_eff)
            try:
                labels, dists = self._hnsw.knn_query(q, k=k_eff, num_threads=num_threads)  # (nq, k) each
            except RuntimeError as e:  # too few reachable live nodes for k: answer exactly instead
                log.warning("hnswlib could not return %d results (%s); using exact search", k_eff, e)
                return self._search_exact(q, k_eff)
            return [self._hits(lab, 1.0 - dist) for lab, dist in zip(labels, dists, strict=True)]

    def _hits(self, labels: np.ndarray, scores: np.ndarray) -> list[Hit]:
        out = []
        for lab, s in zip(labels.tolist(), scores.tolist(), strict=True):
            if 0 <= lab < len(self._ids) and not self._deleted[lab] and self._ids[lab]:
                out.append((self._ids[lab], float(s)))
        return out

    def _exact_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        with self._exact_lock:
            if self._exact is None:
                live = np.flatnonzero(~self._deleted)
                vecs = self._hnsw.get_items(live, return_type="numpy") if live.size else np.zeros((0, self.dim))
                self._exact = (live, np.ascontiguousarray(vecs, dtype=np.float32))
            return self._exact

    def _search_exact(self, q: np.ndarray, k: int) -> list[list[Hit]]:
        live, mat = self._exact_matrix()
        scores, rows = topk_inner_product(mat, q, k)  # (nq, k) each
        return [self._hits(live[r], s) for r, s in zip(rows, scores, strict=True)]

    # ---- files ------------------------------------------------------------------------------------
    def write_files(self, folder: str | os.PathLike[str]) -> list[str]:
        """Write the four data files into ``folder`` (a fresh generation folder) and fsync them.

        Holds the read lock: searches continue, writers wait until the files are complete.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            self._hnsw.save_index(str(folder / HNSW_FILE))
            fsync_file(folder / HNSW_FILE)
            write_ids(folder / IDS_FILE, self._ids)
            for name, arr in ((DELETED_FILE, self._deleted), (LEAVES_FILE, self._leaves)):
                with open(folder / name, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
        return list(DATA_FILES)

    @classmethod
    def read_files(cls, folder: str | os.PathLike[str], dim: int, params: IndexParams, counts: dict[str, int]) -> Index:
        """Load the data files of one generation and check them against each other and ``counts``."""
        folder = Path(folder)
        ids = read_ids(folder / IDS_FILE)
        deleted = load_array(folder / DELETED_FILE, np.bool_)
        leaves = load_array(folder / LEAVES_FILE, np.int32)
        n = len(ids)
        if n != counts.get("labels"):
            raise FormatError(f"{folder / IDS_FILE}: {n:,} rows but the manifest says {counts.get('labels'):,} labels")
        for path, arr in ((folder / DELETED_FILE, deleted), (folder / LEAVES_FILE, leaves)):
            if arr.shape != (n,):
                raise FormatError(f"{path}: shape {arr.shape} but {folder / IDS_FILE} has {n:,} rows")
        empty = np.array([not i for i in ids], bool)
        if not np.array_equal(empty, deleted):
            raise FormatError(f"{folder / DELETED_FILE}: deletion mask disagrees with the empty rows of {IDS_FILE}")
        live_ids = [i for i in ids if i]
        if len(set(live_ids)) != len(live_ids):
            raise FormatError(f"{folder / IDS_FILE}: a live document id appears twice")
        if len(live_ids) != counts.get("live"):
            raise FormatError(f"{folder / IDS_FILE}: {len(live_ids):,} live ids but the manifest says {counts.get('live'):,}")
        check_hnsw_header(folder / HNSW_FILE, dim, n, IDS_FILE)
        self = cls.__new__(cls)
        cls.__init__(self, dim, params, capacity=16)
        h = _hnswlib().Index(space=params.space, dim=dim)
        try:
            h.load_index(str(folder / HNSW_FILE), max_elements=max(counts.get("capacity", n), n, 16))
        except (RuntimeError, ValueError, MemoryError) as e:
            raise FormatError(f"{folder / HNSW_FILE}: hnswlib cannot load it ({e})") from None
        if h.get_current_count() != n:
            raise FormatError(f"{folder / HNSW_FILE}: holds {h.get_current_count():,} vectors but {IDS_FILE} has {n:,} rows")
        h.set_ef(params.ef_search)
        self._hnsw = h
        self._ids = ids
        self._label = {d: i for i, d in enumerate(ids) if d}
        self._deleted = deleted
        self._leaves = leaves
        self._free = np.flatnonzero(deleted)[::-1].tolist()
        return self
