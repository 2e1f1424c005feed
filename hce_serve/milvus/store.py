"""A Milvus collection as the Engine's backend: the role ``IndexStore`` plays for an index folder.

``MilvusCollection`` (``client.py``) is mechanism: the pymilvus calls for one collection, every error turned into
one line. ``MilvusStore`` is the ``Backend`` the Engine drives: it checks writes once (the same ``checks`` as
the folder backend, plus what Milvus cannot hold), turns tree leaves into paths, and answers searches with the
stored fields in the same RPC. The layout of the collection is ``layout.py``. A collection exported from a
folder with a lexical part has a BM25 side too (``lexical.py``: Milvus full-text search over the folder's
analysed terms), and searches lexical and hybrid as the folder does; one exported without it is dense-only.

The same code reaches milvus-lite (``uri="./x.db"``: an embedded engine in this process, one process per
file) and a Milvus server or cluster (``uri="http://host:19530"``, ``token``). Writes are upserts and
deletes by id; the collection is created with Strong consistency, so a search after ``add``/``delete``
returns sees them, as on the local backend. Several writers at once are Milvus's business: the counts an
``add`` reports (added vs replaced) are exact only when nobody else writes the same ids meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from .. import facets
from ..backend import Batch, StoredHit
from ..checks import check_documents
from ..documents import AddResult, DeleteResult, Document
from ..errors import DataError, FormatError, HCEError
from ..formats.tree import NO_LEAF, Subtree, load_tree
from ..lexical import modes
from . import facets as milvus_facets
from .client import MilvusCollection, connect, release
from .layout import MilvusTarget, as_document, check_document, encoder_digest, entity, filter_expr
from .lexical import LexicalSpec

log = logging.getLogger(__name__)


class MilvusStore:
    """The Engine's ``Backend`` over a Milvus collection."""

    NO_LEXICAL = ("this Milvus collection has no lexical side (exported before hybrid search, or from a folder "
                  "without a lexical part): re-export it with 'hce-serve index export-milvus --overwrite' from an "
                  "index folder that has one (add one with 'hce-serve index build-lexical --index IDX_DIR')")

    def __init__(self, target: MilvusTarget, client: Any, collection: MilvusCollection, encoder_dir: Path,
                 writable: bool) -> None:
        self.target, self.client, self.collection, self.writable = target, client, collection, writable
        self.manifest, self.encoder_dir = collection.manifest, Path(encoder_dir)
        self._mutex = threading.RLock()  # one write at a time from this process (check, then upsert)
        self._paths: dict[int, list[int]] = {}  # leaf node -> its path (leaves repeat)
        self._tree: Any = None
        self._dirty = False

    @classmethod
    def open(cls, target: MilvusTarget, encoder_dir: str | os.PathLike[str], writable: bool = False) -> MilvusStore:
        """Connect, load the collection and check that ``encoder_dir`` holds the encoder that wrote it."""
        client = connect(target)
        try:
            collection = MilvusCollection.open(client, target.collection, target.uri)
            found = encoder_digest(Path(encoder_dir))
            if found != collection.manifest.encoder_sha256:
                raise FormatError(f"{target.uri} {target.collection}: written with another encoder (card+tree sha256 "
                                  f"{collection.manifest.encoder_sha256[:12]}…, {encoder_dir} has {found[:12]}…); pass "
                                  "the export the index was built with, or its IDX_DIR/encoder")
        except BaseException:
            client.close()
            release(target)
            raise
        return cls(target, client, collection, Path(encoder_dir), writable)

    @property
    def dim(self) -> int:
        return self.collection.dim

    @property
    def stores_documents(self) -> bool:
        return self.manifest.stores_documents

    @property
    def lexical(self) -> LexicalSpec | None:
        """The BM25 side's analyzer and parameters; None for a dense-only collection."""
        return self.manifest.lexical

    @property
    def search_defaults(self) -> modes.SearchSettings:
        """The exported folder's defaults (a collection without a lexical side: dense)."""
        return modes.stored_defaults({modes.SEARCH_KEY: self.manifest.search}, self.lexical is not None)

    # ---- reads ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.collection)

    def ids(self) -> list[str]:
        return self.collection.ids()

    def search(self, queries: np.ndarray, k: int, ef: int | None = None,
               filter: Mapping[str, tuple[str, ...]] | None = None,
               subtree: Subtree | None = None, fields: Sequence[str] = (), num_threads: int = 1,
               ) -> list[list[StoredHit]]:
        """Top-``k`` per query row as (id, score, stored document or None); filter and subtree run inside Milvus."""
        if filter and not self.stores_documents:
            raise DataError("this collection stores no documents (exported from a --no-store index): filters need "
                            "metadata")
        wanted = [f for f in fields if f in self.collection.doc_fields]
        params = self.manifest.index.search_params(k, ef)
        rows = self.collection.search(queries, k, filter_expr(filter, subtree.node if subtree else None), params,
                                      wanted)
        return [[(i, s, as_document(i, e) if wanted else None) for i, s, e in row] for row in rows]

    def search_lexical(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None = None,
                       subtree: Subtree | None = None, fields: Sequence[str] = ()) -> list[list[StoredHit]]:
        """BM25's top-``k`` per query text, best first, under the same filter and subtree rules as ``search``;
        scores on the folder's scale (``lexical.LexicalSpec.score``)."""
        spec = self.lexical
        if spec is None:
            raise DataError(self.NO_LEXICAL)
        wanted = [f for f in fields if f in self.collection.doc_fields]  # a lexical side implies stored documents
        queries = [spec.query(t) for t in texts]
        asked = [q for q in queries if q]  # a query of stop words only has no terms: no hits, and no RPC
        rows = iter(self.collection.search_lexical(asked, k, filter_expr(filter, subtree.node if subtree else None),
                                                   wanted) if asked else [])
        return [[(i, spec.score(d), as_document(i, e) if wanted else None) for i, d, e in next(rows)] if q else []
                for q in queries]

    def start_search_lexical(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None = None,
                             subtree: Subtree | None = None) -> Future[list[list[StoredHit]]]:
        """``search_lexical`` begun on a lexical thread (a remote call: the encoder runs meanwhile)."""
        if self.lexical is None:
            raise DataError(self.NO_LEXICAL)
        return modes.begin(self.search_lexical, texts, k, filter, subtree, background=True)

    def get(self, ids: Iterable[str]) -> dict[str, Document]:
        if not self.stores_documents:
            return {}
        return {i: as_document(i, e) for i, e in self.collection.fetch(list(ids), self.collection.doc_fields).items()}

    def field_values(self, keys: int, values: int) -> dict[str, Any]:
        """The metadata keys and values a filter can use, from a sample of the stored documents."""
        if not self.stores_documents:
            return facets.none()
        return milvus_facets.field_values(self.collection.metadata_sample(facets.MILVUS_SAMPLE), keys, values)

    def stats(self) -> dict[str, Any]:
        return {**self.collection.stats(), "writable": self.writable, "stores_documents": self.stores_documents}

    # ---- writes -----------------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise HCEError(f"Milvus collection {self.target.collection} was opened read-only (open it writable to "
                           "change it)")

    def prepare(self, docs: Iterable[Document | Mapping[str, Any]], strict: bool = True) -> Batch:
        """Check a batch before it is encoded: the local store's checks plus Milvus's field bounds."""
        self._require_writable()
        checked, dropped = check_documents(docs, strict=strict)
        for d in checked:
            check_document(d, self.stores_documents, self.lexical)
        return Batch(checked, dropped)

    def add(self, batch: Batch | Sequence[str], vectors: np.ndarray, leaves: Any = None) -> AddResult:
        """Upsert ``batch`` (from ``prepare``, or bare ids) with its vectors and tree leaves; acknowledged by Milvus
        when this returns."""
        if not isinstance(batch, Batch):
            self._require_writable()
            batch = Batch.of_ids(batch)
        ids = batch.ids
        vecs, leaf_arr = batch.rows(vectors, leaves, self.collection.dim, NO_LEAF)  # (n, dim), (n,)
        if not ids:
            return AddResult(0, 0)
        rows = [entity(d, v, leaf, self._path(leaf), self.stores_documents, self.lexical)
                for d, v, leaf in zip(batch.docs, vecs, leaf_arr.tolist(), strict=True)]
        with self._mutex:
            self._require_writable()
            before = self.collection.existing(ids)
            self.collection.upsert(rows)
            self._dirty = True
        return AddResult(len(ids) - len(before), len(before), batch.empty)

    def _path(self, leaf: int) -> list[int]:
        if leaf == NO_LEAF:
            return []
        if leaf not in self._paths:
            if self._tree is None:
                self._tree = load_tree(self.encoder_dir, self.collection.dim)
                if self._tree is None:
                    raise FormatError(f"{self.encoder_dir}: a leaf was given but the export has no corpus tree")
            self._paths[leaf] = self._tree.ancestors(leaf)
        return self._paths[leaf]

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        """Delete by id; ids the collection does not hold come back in ``missing``."""
        wanted = list(dict.fromkeys(ids))
        with self._mutex:
            self._require_writable()
            present = self.collection.existing([i for i in wanted if isinstance(i, str)])
            if present:
                self.collection.delete([i for i in wanted if i in present])
                self._dirty = True
        return DeleteResult([i for i in wanted if i in present], [i for i in wanted if i not in present])

    def save(self, force: bool = False) -> bool:
        """Flush: Milvus seals what was written into persisted, indexed segments (it is durable before)."""
        if not (self._dirty or force) or not self.writable:
            return False
        self.collection.flush()
        self._dirty = False
        return True

    def compact(self) -> int:
        raise HCEError("a Milvus collection compacts its segments itself; there is nothing to compact here")

    def close(self, save: bool = False) -> None:
        try:
            if save:
                self.save()
        finally:
            if self.client is not None:
                self.client.close()
                self.client = None
                release(self.target)

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
