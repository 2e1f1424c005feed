"""An opened index folder: the vector index, its stored documents and its mutation log, kept in agreement.

``IndexStore`` is the one owner of writes: it checks every batch once, takes the single writer lock,
logs the change, applies it to the document store and the vector index, saves snapshots (every
``save_every`` logged writes, and on request) and compacts the graph when tombstones pile up.

Durability rule, for vectors and documents alike: a write is acknowledged only after its log record
(ids, vectors, leaves and the documents themselves) is fsync'ed. The record is then applied to SQLite and
to the graph. After a kill -9 at any point, the next open replays the log onto the snapshot it follows
and into the document store, so the live ids of the vector index and of the document store are the same
set. Adds reach SQLite before the graph and deletes leave the graph before SQLite, so even a concurrent
reader never meets a live id without its document. A reader (which must not write) keeps the replayed
documents in memory instead: it sees the documents as of the log it replayed.
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

from .. import defaults, facets
from ..backend import Batch, StoredHit
from ..checks import check_documents
from ..documents import AddResult, DeleteResult, Document
from ..errors import DataError, FormatError, HCEError
from ..formats.tree import NO_LEAF, Subtree
from ..index.index import Index
from ..lexical import modes
from ..lexical.bm25 import LexicalIndex
from ..lexical.part import NO_LEXICAL, search_part
from . import facets as folder_facets
from .recovery import OpenedFolder, clean, open_folder
from .snapshot import ENCODER_DIR, create_folder, write_snapshot
from .wal import MutationLog, Record, wal_name

log = logging.getLogger(__name__)


class IndexStore:
    """An opened index folder: the folder ``Backend``. Writers (``writable=True``) hold an exclusive lock on it.

    Reads (``search``, ``search_lexical``, ``get``) take no store lock: they run concurrently with each other and
    with a write (the vector index has its readers-writer lock, the document store its connection lock)."""

    def __init__(self, opened: OpenedFolder, writable: bool, save_every: int | None) -> None:
        self.folder, self.manifest, self.index, self.docs = opened.folder, opened.manifest, opened.index, opened.docs
        self.lexical = opened.lexical  # the BM25 side of hybrid search (None: a dense-only folder)
        self.writable = writable
        self.pending = opened.pending  # log records not yet folded into a snapshot
        self.autosave_every = save_every  # save after this many logged mutations (None: only when asked)
        self._mutex = threading.RLock()  # the writer lock: one change at a time, checked once, logged once
        self._wal, self._lock_fd = opened.wal, opened.lock_fd
        self._broken: str | None = None  # set when a logged change could not be applied in memory

    # ---- create / open ----------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike[str], index: Index, encoder_src: str | os.PathLike[str] | None,
               extra: dict[str, Any] | None = None, overwrite: bool = False,
               documents: Iterable[Document] | None = None, docs_file: Path | None = None,
               lexical: LexicalIndex | None = None) -> None:
        """Write a new index folder (generation 1), built beside ``folder`` and renamed into place.

        ``documents`` (the stored text of the index's live ids), or ``docs_file``, a finished document store
        (``DocStore.create`` ... ``close``) to move in; with neither the index stores ids only. ``lexical``: the
        BM25 index of the same documents (hybrid search), or None for a dense-only folder.
        """
        create_folder(Path(folder), index, encoder_src, extra or {}, overwrite, documents, docs_file, lexical)

    @classmethod
    def open(cls, folder: str | os.PathLike[str], writable: bool = False, checksums: bool = True,
             save_every: int | None = defaults.SAVE_EVERY) -> IndexStore:
        """Load the current snapshot and replay its mutation log (``recovery.py``). Writers also clean up and lock."""
        return cls(open_folder(Path(folder), writable, checksums), writable, save_every)

    # ---- changes ----------------------------------------------------------------------------------
    def _require_writable(self) -> MutationLog:
        if not self.writable or self._wal is None:
            raise HCEError(f"{self.folder.name}: index was opened read-only (open it writable to change it)")
        if self._broken:
            raise HCEError(f"{self.folder.name}: a write failed half-way ({self._broken}); reopen the index, "
                           "its mutation log restores a consistent state")
        return self._wal

    def prepare(self, docs: Iterable[Document | Mapping[str, Any]], strict: bool = True) -> Batch:
        """Check a batch of documents before anything is spent on it (ids, fields, metadata, writability)."""
        self._require_writable()
        checked, dropped = check_documents(docs, strict=strict)
        return Batch(checked, dropped)

    def add(self, batch: Batch | Sequence[str], vectors: np.ndarray, leaves: Any = None) -> AddResult:
        """Add or replace ``batch`` (from ``prepare``; or bare ids: vectors without text, an index that stores
        documents gets empty ones) with its vectors; durable (logged and fsync'ed) when this returns."""
        if not isinstance(batch, Batch):
            self._require_writable()
            batch = Batch.of_ids(batch)
        ids = batch.ids
        vecs, leaf_arr = batch.rows(vectors, leaves, self.index.dim, NO_LEAF)  # (n, dim), (n,)
        if not ids:
            return AddResult(0, 0)
        docs = batch.docs if self.docs is not None else None
        with self._mutex:
            wal = self._require_writable()
            start = wal.append(Record("add", ids, vecs, leaf_arr.tolist(), docs))
            try:
                if docs is not None:
                    self.docs.write(put=docs)  # type: ignore[union-attr]
            except BaseException:
                wal.rollback(start)  # nothing changed anywhere: withdraw the record
                raise
            res = self._apply(lambda: self.index.add(ids, vecs, leaf_arr))
            if self.lexical is not None:
                lex = self.lexical
                self._apply(lambda: lex.add([(d.id, d.full_text) for d in batch.docs]))
            self._after_mutation()
            return AddResult(res.added, res.replaced, batch.empty)

    def delete(self, ids: Sequence[str]) -> DeleteResult:
        """Delete documents; ids that are not live are reported in ``missing``. Durable when this returns."""
        with self._mutex:
            wal = self._require_writable()
            present = [i for i in dict.fromkeys(ids) if isinstance(i, str) and i in self.index]
            if not present:
                return DeleteResult([], list(dict.fromkeys(ids)))
            wal.append(Record("delete", present))
            if self.lexical is not None:  # first: the lexical side never holds an id the graph has dropped
                lex = self.lexical
                self._apply(lambda: lex.delete(present))
            res = self._apply(lambda: self.index.delete(ids))
            if self.docs is not None:
                self._apply(lambda: self.docs.write(remove=present))  # type: ignore[union-attr]
            self._after_mutation()
            if self.index.needs_compaction():
                self.compact()
            return res

    def _apply(self, change: Any) -> Any:
        try:
            return change()
        except BaseException as e:  # logged but not applied in memory: only a reopen (replay) is consistent
            self._broken = f"{type(e).__name__}: {e}"
            raise

    def _after_mutation(self) -> None:
        self.pending += 1
        if self.autosave_every and self.pending >= self.autosave_every:
            self.save()

    def compact(self) -> int:
        """Rebuild the graph without deleted slots and save it as a new generation."""
        with self._mutex:
            self._require_writable()
            dropped = self.index.compact()
            self.save(force=True)
            return dropped

    def save(self, force: bool = False) -> bool:
        """Fold the log into a new snapshot generation. Returns False when there was nothing to save."""
        with self._mutex:
            wal = self._require_writable()
            if not self.pending and not force:
                return False
            if self.docs is not None:
                self.docs.checkpoint()  # durable before the log that covers it is retired
            old = self.manifest
            enc = {k: v for k, v in old.files.items() if k.startswith(ENCODER_DIR + "/")}
            new = write_snapshot(self.folder, self.index, old.generation + 1, enc, old.extra, old.documents,
                                 self.lexical)
            # Committed: the new manifest names the new generation; the old one and its log are garbage.
            self.manifest = new
            wal.close()
            self._wal = MutationLog(self.folder / wal_name(new.generation), new.dim, new.generation)
            self.pending = 0
            clean(self.folder, new)
            return True

    # ---- reads ------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.index.dim

    @property
    def encoder_dir(self) -> Path:
        return self.folder / ENCODER_DIR

    @property
    def stores_documents(self) -> bool:
        return self.docs is not None

    @property
    def search_defaults(self) -> modes.SearchSettings:
        return modes.stored_defaults(self.manifest.extra, self.lexical is not None)

    def __len__(self) -> int:
        return len(self.index)

    def ids(self) -> list[str]:
        return self.index.ids()

    def search(self, queries: np.ndarray, k: int, ef: int | None = None,
               filter: Mapping[str, tuple[str, ...]] | None = None,
               subtree: Subtree | None = None, fields: Sequence[str] = (),
               num_threads: int = 1) -> list[list[StoredHit]]:
        """Top-``k`` per query row, best first: the filter and the subtree run inside the vector index's search."""
        allow_ids = self._match(filter) if filter else None
        rows = self.index.search(queries, k, ef=ef, num_threads=num_threads, allow_ids=allow_ids,
                                 allow_leaves=subtree.leaves if subtree is not None else None)
        return self._with_fields(rows, fields)

    def search_lexical(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None = None,
                       subtree: Subtree | None = None, fields: Sequence[str] = ()) -> list[list[StoredHit]]:
        """BM25's top-``k`` per query text, best first, under the same filter and subtree rules as ``search``."""
        return self._with_fields(self._lexical_rows(texts, k, filter, subtree), fields)

    def start_search_lexical(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None = None,
                             subtree: Subtree | None = None) -> Future[list[list[StoredHit]]]:
        """``search_lexical`` begun, on a lexical thread from ``LEXICAL_BACKGROUND_MIN_POSTINGS`` on. Beside the
        encoder a large top k stays whole: split in two it would make three threads on the two cores."""
        beside = self._lexical().postings_count >= defaults.LEXICAL_BACKGROUND_MIN_POSTINGS
        return modes.begin(lambda: self._with_fields(self._lexical_rows(texts, k, filter, subtree, not beside), ()),
                           background=beside)

    def _lexical(self) -> LexicalIndex:
        if self.lexical is None:
            raise DataError(NO_LEXICAL)
        return self.lexical

    def _lexical_rows(self, texts: Sequence[str], k: int, filter: Mapping[str, tuple[str, ...]] | None,
                      subtree: Subtree | None, split: bool = True) -> list[list[tuple[str, float]]]:
        lexical = self._lexical()
        allow_ids = self._match(filter) if filter else None
        return search_part(lexical, self.index, texts, k, allow_ids, subtree, split)

    def _with_fields(self, rows: list[list[tuple[str, float]]], fields: Sequence[str]) -> list[list[StoredHit]]:
        if not fields or self.docs is None:
            return [[(d, s, None) for d, s in row] for row in rows]
        docs = self.get({d for row in rows for d, _ in row})
        # A hit whose document is gone was deleted after the search answered: it is not returned.
        return [[(d, s, docs[d]) for d, s in row if d in docs] for row in rows]

    def get(self, ids: Iterable[str]) -> dict[str, Document]:
        """Stored documents of ``ids`` (those that have one); empty for an index that stores ids only."""
        return self.docs.get(ids) if self.docs is not None else {}

    def vectors(self, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors (n, dim) and tree leaves (n,) of live ``ids``, as they are held (KeyError for an
        id that is not live): what an export copies."""
        return self.index.get_vectors(ids), np.array([self.index.leaf_of(i) for i in ids], np.int32)

    def _match(self, flt: Mapping[str, tuple[str, ...]]) -> frozenset[str]:
        if self.docs is None:
            raise DataError("this index stores no documents (built with --no-store): filters need their metadata")
        return self.docs.match(flt)

    def field_values(self, keys: int, values: int) -> dict[str, Any]:
        """The metadata keys and values a filter can use, from the documents' filter table."""
        if self.docs is None or getattr(self.docs, "path", None) is None:
            return facets.none()
        return folder_facets.field_values(Path(self.docs.path), keys, values)

    def stats(self) -> dict[str, Any]:
        """Counts and parameters (no filesystem paths: this goes to HTTP clients)."""
        return {**self.index.stats(), "generation": self.manifest.generation, "pending_log_records": self.pending,
                "log_bytes": self._wal.size if self._wal else None, "writable": self.writable,
                "stores_documents": self.docs is not None,
                "lexical": self.lexical.stats() if self.lexical is not None else None}

    def build_lexical(self, analyzer: Any = None, params: Any = None,
                      batch: int = defaults.BATCH_SIZE) -> dict[str, Any]:
        """Give a dense-only folder its lexical part, from its stored documents, as a new generation."""
        from ..lexical.analyzer import Analyzer
        from ..lexical.segment import SegmentBuilder

        analyzer = analyzer or Analyzer()
        with self._mutex:
            self._require_writable()
            if self.docs is None:
                raise HCEError(f"{self.folder.name}: stores no documents (built with --no-store): BM25 needs their "
                               "text")
            builder = SegmentBuilder(analyzer)
            for part in self.docs.iter_documents(batch):
                builder.add([(d.id, d.full_text) for d in part])
            lexical = LexicalIndex.from_segment(builder.finish(), analyzer, params)
            if len(lexical) != len(self.index):
                raise FormatError(f"{self.docs.path}: holds {len(lexical):,} documents but the index has "
                                  f"{len(self.index):,} live ids")
            self.lexical = lexical
            self.save(force=True)
            return lexical.stats()

    def close(self, save: bool = False) -> None:
        with self._mutex:
            if save and self.writable and self.pending and not self._broken:
                self.save()
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if self.docs is not None:
                self.docs.close()
                self.docs = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ENCODER_DIR", "IndexStore"]
