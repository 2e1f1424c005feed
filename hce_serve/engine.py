"""An index folder plus its encoder: what the CLI and the HTTP server drive.

``Engine.build`` streams a corpus through the encoder into a new index folder; ``Engine.open`` loads one
(the encoder comes from the folder's own ``encoder/`` copy, so IDX_DIR is all a search needs). Text
goes in, ``(id, score)`` hits come out; adds and deletes are durable when they return (mutation log).
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from .beir import Document, iter_corpus
from .errors import DataError, FormatError
from .index import NO_LEAF, AddResult, DeleteResult, Hit, Index, IndexParams
from .store import ENCODER_DIR, IndexStore, check_can_create

log = logging.getLogger(__name__)

MAX_K = 10_000  # larger k is almost certainly a mistake and costs a full sort of the collection
CHUNK = 512  # documents encoded and added per step: bounds memory for any corpus size


class LeafAssigner:
    """Tree leaf of each document: the export's own assignment for known ids, else the nearest leaf centroid."""

    def __init__(self, centroids: np.ndarray, leaf_nodes: np.ndarray, known: dict[str, int]) -> None:
        self.centroids = centroids  # (leaves, dim) float32
        self.leaf_nodes = leaf_nodes  # (leaves,) int32 node ids
        self.known = known

    @classmethod
    def from_export(cls, export_dir: Path, dim: int) -> LeafAssigner | None:
        path = export_dir / "tree.npz"
        if not path.is_file():
            return None
        from .tree import TREE_IDS_NAME, Tree

        if (export_dir / TREE_IDS_NAME).is_file():
            tree = Tree.load(export_dir)
            doc_leaf, ids = tree.doc_leaf, tree.doc_ids
            centroids, parent = tree.centroids, tree.parent
        else:  # an export may ship the tree without its id file: centroids are enough for new documents
            try:
                with np.load(path, allow_pickle=False) as z:
                    centroids, parent, doc_leaf = z["centroids"], z["parent"], z["doc_leaf"]
            except (ValueError, OSError, KeyError, EOFError, NotImplementedError, zipfile.BadZipFile) as e:
                raise FormatError(f"{path}: not a readable tree ({e})") from None
            ids = []
        if centroids.ndim != 2 or centroids.shape[1] != dim:
            raise FormatError(f"{path}: tree centroids have shape {centroids.shape}, encoder dim is {dim}")
        leaf_nodes = np.unique(doc_leaf).astype(np.int32)
        if leaf_nodes.size == 0:  # no documents recorded: leaves are the nodes without children
            has_child = np.zeros(parent.shape[0], bool)
            has_child[parent[1:]] = True
            leaf_nodes = np.flatnonzero(~has_child).astype(np.int32)
        known = {d: int(leaf) for d, leaf in zip(ids, doc_leaf.tolist(), strict=True)}
        return cls(np.ascontiguousarray(centroids[leaf_nodes], np.float32), leaf_nodes, known)

    def assign(self, ids: Sequence[str], vectors: np.ndarray, use_known: bool) -> np.ndarray:
        """(n,) int32 leaf node per document."""
        nearest = self.leaf_nodes[np.argmax(vectors @ self.centroids.T, axis=1)]  # (n,)
        if use_known:
            nearest = np.array([self.known.get(i, int(n)) for i, n in zip(ids, nearest.tolist(), strict=True)])
        return nearest.astype(np.int32)


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while batch := list(islice(it, size)):
        yield batch


def _progress(total: int | None, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    import sys

    from tqdm import tqdm

    return tqdm(total=total, unit="doc", desc=desc, file=sys.stderr)


def check_query(text: object) -> str:
    if not isinstance(text, str):
        raise DataError(f"query must be a string, found {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError("query is not valid UTF-8 text") from None
    if not text.strip():
        raise DataError("query is empty")
    return text


def check_k(k: object, max_k: int = MAX_K) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise DataError(f"k must be an integer between 1 and {max_k:,}, found {k!r}")
    return k


class Engine:
    """Search and update an index folder by text. Thread-safe like ``Index`` (many readers, one writer)."""

    def __init__(self, store: IndexStore, encoder: Any, leaves: LeafAssigner | None) -> None:
        self.store = store
        self.encoder = encoder
        self.leaves = leaves

    @property
    def index(self) -> Index:
        return self.store.index

    # ---- construction -----------------------------------------------------------------------------
    @staticmethod
    def _encoder(export_dir: Path, variant: str, threads: int | None, providers: Sequence[str] | None) -> Any:
        from .encoder import Encoder

        return Encoder(export_dir, variant=variant, providers=providers, threads=threads)

    @classmethod
    def build(
        cls,
        export_dir: str | os.PathLike[str],
        corpus: str | os.PathLike[str],
        index_dir: str | os.PathLike[str],
        params: IndexParams | None = None,
        overwrite: bool = False,
        variant: str = "auto",
        threads: int | None = None,
        chunk: int = CHUNK,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Encode a corpus file into a new index folder; returns its stats."""
        export_dir, index_dir = Path(export_dir), Path(index_dir)
        check_can_create(index_dir, overwrite)  # before minutes of encoding, not after
        total = sum(1 for _ in iter_corpus(corpus))  # validates the whole file first (ids, UTF-8, JSON)
        encoder = cls._encoder(export_dir, variant, threads, None)
        assigner = LeafAssigner.from_export(export_dir, encoder.dim)
        index = Index(encoder.dim, params or IndexParams(), capacity=total)
        t0 = time.perf_counter()
        bar = _progress(total, progress, "index build")
        for batch in _chunks(iter_corpus(corpus), chunk):
            ids = [d.id for d in batch]
            vecs = encoder.encode_documents([d.full_text for d in batch])  # (n, dim)
            leaves = assigner.assign(ids, vecs, use_known=True) if assigner else None
            index.add(ids, vecs, leaves)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        extra = {"built_from": {"corpus": str(corpus), "export": str(export_dir), "seconds": round(time.perf_counter() - t0, 2)},
                 "encoder_variant": encoder.variant, "tree": assigner is not None}
        IndexStore.create(index_dir, index, export_dir, extra=extra, overwrite=overwrite)
        log.info("built %s: %d documents in %.1f s", index_dir, len(index), time.perf_counter() - t0)
        return index.stats()

    @classmethod
    def open(
        cls,
        index_dir: str | os.PathLike[str],
        writable: bool = False,
        variant: str = "auto",
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        checksums: bool = True,
    ) -> Engine:
        """Load an index folder and the encoder copy inside it; dimensions must agree."""
        from .card import ModelCard
        from .manifest import IndexManifest

        index_dir = Path(index_dir)
        if not index_dir.is_dir():
            raise FormatError(f"{index_dir}: index folder not found")
        manifest, card = IndexManifest.load(index_dir), ModelCard.load(index_dir / ENCODER_DIR)
        if card.dim != manifest.dim:  # checked before the graph is loaded with the wrong dimension
            raise FormatError(f"{index_dir}: index dimension {manifest.dim} differs from its encoder's {card.dim} "
                              f"({index_dir / ENCODER_DIR})")
        store = IndexStore.open(index_dir, writable=writable, checksums=checksums)
        try:
            encoder = cls._encoder(store.encoder_dir, variant, threads, providers)
            if encoder.dim != store.manifest.dim:
                raise FormatError(f"{index_dir}: index dimension {store.manifest.dim} differs from its encoder's "
                                  f"{encoder.dim} ({store.encoder_dir})")
            assigner = LeafAssigner.from_export(store.encoder_dir, encoder.dim)
        except BaseException:
            store.close()
            raise
        return cls(store, encoder, assigner)

    # ---- reads ------------------------------------------------------------------------------------
    def search(self, queries: Sequence[str], k: int = 10, max_k: int = MAX_K, num_threads: int = 1) -> list[list[Hit]]:
        """Top-``k`` (id, score) per query, best first. Empty queries and bad ``k`` raise DataError."""
        k = check_k(k, max_k)
        texts = [check_query(q) for q in queries]
        if not texts:
            return []
        vecs = self.encoder.encode_queries(texts)  # (q, dim)
        return self.index.search(vecs, k, num_threads=num_threads)

    def stats(self) -> dict[str, Any]:
        enc = self.encoder
        return {**self.store.stats(), "encoder": {"variant": enc.variant, "providers": list(enc.providers),
                                                  "base_model": enc.card.base_model, "dim": enc.dim}}

    # ---- writes -----------------------------------------------------------------------------------
    def add_documents(self, docs: Sequence[Document]) -> AddResult:
        """Encode and add/replace documents; durable when it returns. Duplicate ids in the batch: DataError."""
        docs = list(docs)
        ids = [d.id for d in docs]
        self.index.validate_batch(ids, np.zeros((len(ids), self.index.dim), np.float32))  # fail before encoding
        if not docs:
            return AddResult(0, 0)
        vecs = self.encoder.encode_documents([d.full_text for d in docs])  # (n, dim)
        leaves = self.leaves.assign(ids, vecs, use_known=False) if self.leaves else np.full(len(ids), NO_LEAF)
        return self.store.add(ids, vecs, leaves)

    def add_corpus(self, corpus: str | os.PathLike[str], chunk: int = CHUNK, progress: bool = False) -> AddResult:
        """Stream a corpus file into the index (validated in full before the first document is added)."""
        total = sum(1 for _ in iter_corpus(corpus))
        added = replaced = 0
        bar = _progress(total, progress, "index add")
        for batch in _chunks(iter_corpus(corpus), chunk):
            res = self.add_documents(batch)
            added, replaced = added + res.added, replaced + res.replaced
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return AddResult(added, replaced)

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        return self.store.delete(list(ids))

    def save(self, force: bool = False) -> bool:
        return self.store.save(force=force)

    def compact(self) -> int:
        return self.store.compact()

    def close(self, save: bool = False) -> None:
        self.store.close(save=save)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
