"""The vector index: a vector structure (``structures.py``), the label <-> id table, tree leaves and a lock.

Mechanism only. Input checks, the writer lock, the compaction policy and all file IO belong to the folder
backend (``folder/store.py``, ``folder/datafiles.py``); this class trusts its caller and guards only its own
invariant (one label per live id). Mutations must not run concurrently with each other (the store serialises
them); searches run concurrently with everything.

Label ``i`` is row ``i`` of the id table. A deleted document keeps its label as a *free slot*: the
structure hides it from every search and the next new document reuses it, so the label count does not grow
under churn. Why not hnswlib's ``replace_deleted=True``: it reuses an arbitrary deleted slot and drops that
slot's label, which a row-aligned id table cannot follow without scanning every label. Instead a new
document is added *under the free label itself*.

Filters (an allowed set of labels) run inside the structure's search (hnswlib's filter callback, faiss' ID
selector), so the top-k is the top-k of the allowed documents, not a post-filtered top-k. A filter that
allows few documents, a small index, and an IVF whose cells are not learnt yet are answered exactly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from .. import defaults
from ..documents import AddResult, DeleteResult
from ..errors import ConfigError
from ..formats.tree import NO_LEAF
from ..options import IndexParams
from ..rwlock import RWLock
from .exact import as_f32_matrix, topk_inner_product
from .structures import IndexState, new_ann

log = logging.getLogger(__name__)
ScoredId = tuple[str, float]  # (document id, inner product)


class Index:
    """An updatable MIPS index over string ids. Many concurrent searches; mutations one at a time."""

    def __init__(self, dim: int, params: IndexParams | None = None, capacity: int = 1024) -> None:
        if dim <= 0:
            raise ConfigError(f"dim must be positive, found {dim}")
        self.dim = int(dim)
        self.params = params or IndexParams()
        empty = IndexState(new_ann(self.dim, self.params, capacity), [], np.zeros(0, bool), np.zeros(0, np.int32))
        self._set_state(empty)
        self._lock = RWLock()
        self._exact: tuple[np.ndarray, np.ndarray] | None = None  # (labels (n,), vectors (n, dim))
        self._exact_lock = threading.Lock()

    def _set_state(self, st: IndexState) -> None:
        self._ann, self._ids, self._deleted, self._leaves = st.ann, st.ids, st.deleted, st.leaves
        self._label = {d: i for i, d in enumerate(st.ids) if d}  # live id -> label
        self._free = np.flatnonzero(st.deleted)[::-1].tolist()  # free labels, reused last-in first-out
        self._exact = None

    @classmethod
    def from_state(cls, dim: int, params: IndexParams, state: IndexState) -> Index:
        index = cls(dim, params, capacity=16)
        index._set_state(state)
        return index

    @contextmanager
    def read_state(self) -> Iterator[IndexState]:
        """The arrays under the read lock (searches go on, mutations wait): for writing them to disk."""
        with self._lock.read():
            yield IndexState(self._ann, self._ids, self._deleted, self._leaves)

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
        return self._ann.capacity

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
        return {"dim": self.dim, **self.params.to_dict(), "live": len(self), "deleted": self.num_deleted, "labels": n,
                "capacity": self.capacity, "kind": self.params.kind, **self._ann.stats(),
                "tombstone_ratio": round(self.num_deleted / n, 4) if n else 0.0}

    # ---- changes ----------------------------------------------------------------------------------
    def add(self, ids: Sequence[str], vectors: np.ndarray,
            leaves: Sequence[int] | np.ndarray | None = None) -> AddResult:
        """Add documents; an id that is already live is replaced (upsert). The batch must be checked
        (``checks.check_ids``, finite vectors): ``IndexStore.add`` does that."""
        ids = list(ids)
        vecs = as_f32_matrix(vectors, self.dim)  # (n, dim)
        leaf_arr = np.full(len(ids), NO_LEAF, np.int32) if leaves is None else np.asarray(leaves, np.int32)
        if len(set(ids)) != len(ids) or vecs.shape[0] != len(ids) or leaf_arr.shape != (len(ids),):
            raise ValueError(f"unchecked batch: {len(ids)} ids ({len(set(ids))} distinct), {vecs.shape[0]} vectors, "
                             f"leaves {leaf_arr.shape}")
        if not ids:
            return AddResult(0, 0)
        with self._lock.write():
            labels = np.empty(len(ids), np.int64)
            fresh = replaced = 0
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
                self._ann.resize(new_cap)
            # The structure is only called once the batch is known to fit; tables are updated after it returns.
            self._ann.add(vecs, labels)
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
            self._ann.settle(len(self._label), self._deleted)  # an IVF relearns its cells when the corpus doubled
        return AddResult(len(ids) - replaced, replaced)

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        """Mark documents deleted; ids that are not live are returned in ``missing``."""
        done, missing, labels = [], [], []
        with self._lock.write():
            for doc_id in dict.fromkeys(ids):
                lab = self._label.get(doc_id) if isinstance(doc_id, str) else None
                if lab is None:
                    missing.append(doc_id)
                else:
                    labels.append(lab)
            self._ann.delete(labels)
            for lab in labels:
                doc_id = self._ids[lab]
                del self._label[doc_id]
                self._ids[lab] = ""
                self._deleted[lab] = True
                self._leaves[lab] = NO_LEAF
                self._free.append(lab)
                done.append(doc_id)
            if done:
                self._exact = None
        return DeleteResult(done, missing)

    @contextmanager
    def bulk_load(self) -> Iterator[Index]:
        """Adds inside learn nothing until the end (an ivf-sq8 index learns its cells once, from the whole
        batch, instead of at every doubling); searches meanwhile are exact scans for such an index."""
        self._ann.deferred = True
        try:
            yield self
        finally:
            self._ann.deferred = False
        with self._lock.write():  # only after a load that finished
            self._ann.settle(len(self._label), self._deleted)

    def needs_compaction(self) -> bool:
        d, n = self.num_deleted, self.num_labels
        return d >= max(1, self.params.compact_min_deleted) and d > self.params.compact_ratio * n

    def compact(self) -> int:
        """Rebuild the structure from live vectors only (built under the read lock, swapped in under the write
        lock: searches go on meanwhile); returns the number of slots dropped."""
        with self._lock.read():
            dropped = self.num_deleted
            live = np.flatnonzero(~self._deleted)  # (n,)
            fresh = self._ann.compacted(live)
            state = IndexState(fresh, [self._ids[i] for i in live.tolist()], np.zeros(live.size, bool),
                               self._leaves[live].copy())
        with self._lock.write():
            self._set_state(state)
        log.info("compacted index: %d live documents, %d dead slots dropped", live.size, dropped)
        return dropped

    def set_ef(self, ef: int) -> None:
        """Change the default beam width of searches that do not pass their own ``ef``."""
        self.params = IndexParams(**{**self.params.to_dict(), "ef_search": int(ef)})

    # ---- reads ------------------------------------------------------------------------------------
    def get_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Stored vectors (n, dim) of live ids (KeyError for an unknown one)."""
        with self._lock.read():
            labels = [self._label[i] for i in ids]
            return self._ann.get(labels)

    def search(self, queries: np.ndarray, k: int, ef: int | None = None, num_threads: int = 1,
               exact: bool | None = None, allow_ids: Collection[str] | None = None,
               allow_leaves: Collection[int] | None = None) -> list[list[ScoredId]]:
        """Top-``k`` live documents per query as [(id, score)], best first; ``k`` clamped to what can match.

        ``ef``: beam width (default ``params.ef_search``). ``allow_ids`` / ``allow_leaves``: only documents
        with one of these ids / whose tree leaf is one of these nodes (both: both must hold). ``exact=None``
        lets ``scans`` choose between an exact scan and the graph.
        """
        q = as_f32_matrix(queries, self.dim, "queries")  # (nq, dim)
        if k <= 0:
            raise ValueError(f"k must be positive, found {k}")
        with self._lock.read():
            mask = self._mask(allow_ids, allow_leaves)  # (labels,) bool or None
            n_ok = len(self._label) if mask is None else int(np.count_nonzero(mask))
            k_eff = min(int(k), n_ok)
            if k_eff == 0:
                return [[] for _ in range(q.shape[0])]
            breadth = ef or self.params.ef_search
            beam = min(max(k_eff, breadth), n_ok)
            scan = self.scans(n_ok if mask is not None else None, beam) if exact is None else exact
            if scan or not self._ann.ready:
                return self._search_exact(q, k_eff, mask)  # an IVF without cells yet is scanned even if exact=False
            try:
                labels, scores = self._ann.search(q, k_eff, breadth, n_ok, num_threads, mask)  # (nq, >= k) each
            except RuntimeError as e:  # e.g. too few reachable allowed nodes for hnswlib's beam: answer exactly
                log.warning("the %s index could not return %d results (%s); using exact search", self.params.kind,
                            k_eff, e)
                return self._search_exact(q, k_eff, mask)
            return [self._hits(lab, s, k_eff) for lab, s in zip(labels, scores, strict=True)]

    def scans(self, allowed: int | None, ef: int) -> bool:
        """Whether a search is answered exactly: a small index always (its matrix is cached); a filter
        allowing ``allowed`` documents when scanning them costs less than the graph walk
        (``defaults.FILTER_SCAN_COST``)."""
        live = len(self._label)
        if live <= self.params.exact_threshold or not self._ann.ready:
            return True
        return allowed is not None and allowed * allowed * defaults.FILTER_SCAN_COST <= ef * live

    def _mask(self, allow_ids: Collection[str] | None, allow_leaves: Collection[int] | None) -> np.ndarray | None:
        if allow_ids is None and allow_leaves is None:
            return None
        mask = ~self._deleted
        if allow_leaves is not None:
            mask &= np.isin(self._leaves, np.fromiter(allow_leaves, np.int32))
        if allow_ids is not None:
            by_id = np.zeros(len(self._ids), bool)
            by_id[[lab for i in allow_ids if (lab := self._label.get(i)) is not None]] = True
            mask &= by_id
        return mask

    def _hits(self, labels: np.ndarray, scores: np.ndarray, k: int | None = None) -> list[ScoredId]:
        """The first ``k`` live labels (best first) as (id, score). The graph returns its whole beam (ef, often
        10x k): stopping at k keeps a query's Python work proportional to the hits it returns."""
        out: list[ScoredId] = []
        ids, deleted, n = self._ids, self._deleted, len(self._ids)
        for lab, s in zip(labels.tolist(), scores.tolist(), strict=True):
            if 0 <= lab < n and not deleted[lab] and ids[lab]:
                out.append((ids[lab], float(s)))
                if len(out) == k:
                    break
        return out

    def _exact_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        with self._exact_lock:
            if self._exact is None:
                live = np.flatnonzero(~self._deleted)
                self._exact = (live, self._ann.get(live))
            return self._exact

    def _search_exact(self, q: np.ndarray, k: int, mask: np.ndarray | None) -> list[list[ScoredId]]:
        if mask is None or len(self._label) <= self.params.exact_threshold or not self._ann.ready:
            labels, mat = self._exact_matrix()  # cached: small indexes are searched this way every time
            if mask is not None:
                keep = mask[labels]
                labels, mat = labels[keep], mat[keep]
        else:
            labels = np.flatnonzero(mask)
            mat = self._ann.get(labels)  # (allowed, dim)
        scores, rows = topk_inner_product(mat, q, k)  # (nq, k) each
        return [self._hits(labels[r], s) for r, s in zip(rows, scores, strict=True)]
