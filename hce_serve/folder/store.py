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
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..backend import Batch
from ..checks import check_documents, check_ids
from ..documents import AddResult, DeleteResult, Document
from ..errors import FormatError, HCEError
from ..formats.tree import NO_LEAF
from ..index.index import Index
from ..lexical.bm25 import LexicalIndex
from ..lexical.part import load_part
from ..options import IndexParams
from .datafiles import data_files, read_index
from .docstore import DocStore
from .manifest import MANIFEST_NAME, IndexManifest
from .snapshot import ENCODER_DIR, clean, create_folder, generation_changed, take_lock, write_snapshot
from .store_reads import StoreReads
from .wal import MutationLog, Record, read_log, wal_name

log = logging.getLogger(__name__)


class IndexStore(StoreReads):
    """An opened index folder. Writers (``writable=True``) hold an exclusive lock on it."""

    def __init__(self, folder: Path, manifest: IndexManifest, index: Index, writable: bool,
                 docs: DocStore | None, save_every: int | None, lexical: LexicalIndex | None = None) -> None:
        self.folder, self.manifest, self.index, self.writable, self.docs = folder, manifest, index, writable, docs
        self.lexical = lexical  # the BM25 side of hybrid search (None: a dense-only folder)
        self.pending = 0  # log records not yet folded into a snapshot
        self.autosave_every = save_every  # save after this many logged mutations (None: only when asked)
        self._mutex = threading.RLock()  # the writer lock: one change at a time, checked once, logged once
        self._wal: MutationLog | None = None
        self._lock_fd: int | None = None
        self._overlay: dict[str, Document | None] = {}  # a reader's replayed documents (None: deleted)
        self._broken: str | None = None  # set when a logged change could not be applied in memory
        self._matches: dict[tuple, tuple[int, frozenset[str]]] = {}  # filter -> (doc_writes then, matching ids)
        self._doc_writes = 0  # bumped after every document write: older matches are stale

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
        """Load the current snapshot and replay its mutation log. Writers also clean up and lock."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FormatError(f"{folder}: index folder not found")
        lock_fd = take_lock(folder) if writable else None
        try:
            for attempt in range(3):
                try:
                    store = cls._load(folder, writable, checksums, save_every)
                    break
                except FormatError:
                    # A reader can race a writer's save (the generation it read is deleted under it).
                    if writable or attempt == 2 or not generation_changed(folder):
                        raise
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        store._lock_fd = lock_fd
        return store

    @classmethod
    def _load(cls, folder: Path, writable: bool, checksums: bool, save_every: int | None) -> IndexStore:
        manifest = IndexManifest.load(folder)
        if writable:
            clean(folder, manifest)
        manifest.verify_files(folder, checksums=checksums)
        extra = manifest.extra
        data_dir = extra.get("data_dir")
        if not isinstance(data_dir, str) or not (folder / data_dir).is_dir():
            raise FormatError(f"{folder / MANIFEST_NAME}: extra.data_dir {data_dir!r} is not a folder of the index")
        try:
            params = IndexParams(**{**(extra.get("params") or {}), "M": manifest.M,
                                    "ef_construction": manifest.ef_construction, "ef_search": manifest.ef_search})
        except (TypeError, HCEError) as e:
            raise FormatError(f"{folder / MANIFEST_NAME}: bad index parameters ({e})") from None
        missing = [f for f in data_files(params.kind) if f"{data_dir}/{f}" not in manifest.files]
        if missing:
            raise FormatError(f"{folder / MANIFEST_NAME}: does not list {', '.join(missing)}")
        index = read_index(folder / data_dir, manifest.dim, params, manifest.counts)
        lexical = load_part(folder / data_dir, extra, manifest.files, str(folder / MANIFEST_NAME))
        docs = DocStore.open(folder / manifest.documents, readonly=not writable) if manifest.documents else None
        store = cls(folder, manifest, index, writable, docs, save_every, lexical)
        try:
            store._replay(folder / wal_name(manifest.generation))
        except BaseException:
            store.close()
            raise
        return store

    def _replay(self, wal_path: Path) -> None:
        end = None
        if wal_path.is_file():
            contents = read_log(wal_path, self.manifest.dim, self.manifest.generation)
            net: dict[str, Document | None] = {}  # the log's last word on each id it touches
            for rec in contents.records:
                if rec.op == "add":
                    self.index.add(rec.ids, rec.vectors, rec.leaves)  # type: ignore[arg-type]
                    docs = rec.docs or [Document(i, "", "") for i in rec.ids]
                    net.update((d.id, d) for d in docs)
                    if self.lexical is not None:
                        self.lexical.add([(d.id, d.full_text) for d in docs])
                else:
                    self.index.delete(rec.ids)
                    net.update(dict.fromkeys(rec.ids))
                    if self.lexical is not None:
                        self.lexical.delete(rec.ids)
            self.pending, end = len(contents.records), contents.end
            if contents.records:
                log.info("%s: replayed %d logged mutations", wal_path, len(contents.records))
            if self.docs is not None and not self.writable:
                self._overlay = net
            elif self.docs is not None and net:
                self.docs.write(put=[d for d in net.values() if d is not None], remove=[i for i, d in net.items() if d is None])
        if self.writable:
            if self.docs is not None and (n := self.docs.count()) != len(self.index):
                raise FormatError(f"{self.docs.path}: holds {n:,} documents but the index has {len(self.index):,} "
                                  "live ids (changed by another program?)")
            if self.lexical is not None and len(self.lexical) != len(self.index):
                raise FormatError(f"{self.folder}: the lexical part holds {len(self.lexical):,} documents but the "
                                  f"index has {len(self.index):,} live ids")
            self._wal = MutationLog(wal_path, self.manifest.dim, self.manifest.generation, truncate_at=end)

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

    def add_batch(self, batch: Batch, vectors: np.ndarray, leaves: Any = None) -> AddResult:
        """Add or replace ``batch`` with its vectors; durable (logged and fsync'ed) when this returns."""
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
                    self._doc_writes += 1
            except BaseException:
                wal.rollback(start)  # nothing changed anywhere: withdraw the record
                raise
            res = self._apply(lambda: self.index.add(ids, vecs, leaf_arr))
            if self.lexical is not None:
                lex = self.lexical
                self._apply(lambda: lex.add([(d.id, d.full_text) for d in batch.docs]))
            self._after_mutation()
            return AddResult(res.added, res.replaced, batch.empty)

    def add(self, ids: Sequence[str], vectors: np.ndarray, leaves: Any = None) -> AddResult:
        """Add or replace vectors by id (no text; an index that stores documents gets empty ones)."""
        self._require_writable()
        return self.add_batch(Batch([Document(i, "", "") for i in check_ids(ids)]), vectors, leaves)

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
                self._doc_writes += 1
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

    # ---- reads (searches and document lookups: store_reads.StoreReads) ------------------------------
    @property
    def encoder_dir(self) -> Path:
        return self.folder / ENCODER_DIR

    def stats(self) -> dict[str, Any]:
        """Counts and parameters (no filesystem paths: this goes to HTTP clients)."""
        return {**self.index.stats(), "generation": self.manifest.generation, "pending_log_records": self.pending,
                "log_bytes": self._wal.size if self._wal else None, "writable": self.writable,
                "stores_documents": self.docs is not None,
                "lexical": self.lexical.stats() if self.lexical is not None else None}

    def build_lexical(self, analyzer: Any = None, params: Any = None, batch: int = defaults.BATCH_SIZE) -> dict[str, Any]:
        """Give a dense-only folder its lexical part, from its stored documents, as a new generation."""
        from ..lexical.bm25 import LexicalBuilder

        with self._mutex:
            self._require_writable()
            if self.docs is None:
                raise HCEError(f"{self.folder.name}: stores no documents (built with --no-store): BM25 needs their text")
            builder = LexicalBuilder(analyzer, params)
            for part in self.docs.iter_documents(batch):
                builder.add([(d.id, d.full_text) for d in part])
            lexical = builder.finish()
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


__all__ = ["ENCODER_DIR", "Batch", "IndexStore"]
