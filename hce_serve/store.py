"""The index folder on disk: snapshots by generation, the mutation log, the writer lock.

```
IDX_DIR/manifest.json        written last; names the current generation and every file's size + sha256
IDX_DIR/gen-000003/          hnsw.bin, ids.txt (row i = label i, "" = free slot), deleted.npy, leaves.npy
IDX_DIR/wal-000003.log       adds/deletes acknowledged since generation 3 (replayed on open)
IDX_DIR/encoder/             a copy of the EXPORT_DIR the index was built with
IDX_DIR/hnsw.bin, ids.txt …  hard links to the current generation's files (DESIGN §6's flat names)
IDX_DIR/.lock                flock held by the one process that may write
```

A save writes the next generation into ``.tmp-gen-N``, fsyncs, renames it to ``gen-N``, then replaces
the manifest: until that rename of the manifest the previous generation (and its log) is what a load
sees, after it the new one. Leftovers of a killed writer (temp folders, generations or logs the manifest
does not name) are removed when a writer next opens the folder; readers never delete anything.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .atomic import TMP_PREFIX, fsync_dir, remove_stale_temps
from .errors import FormatError, HCEError
from .index import DATA_FILES, AddResult, DeleteResult, Index, IndexParams
from .manifest import MANIFEST_NAME, IndexManifest, file_digest
from .wal import MutationLog, Record, read_log, wal_name

log = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
LOCK_NAME = ".lock"


def gen_name(generation: int) -> str:
    return f"gen-{generation:06d}"


def holds_index(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def _digests(root: Path, rel_dir: str) -> dict[str, dict[str, Any]]:
    base = root / rel_dir
    return {
        p.relative_to(root).as_posix(): file_digest(p)
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.name.startswith(TMP_PREFIX)
    }


class IndexStore:
    """An opened index folder. Writers (``writable=True``) hold an exclusive lock on it."""

    def __init__(self, folder: Path, manifest: IndexManifest, index: Index, writable: bool) -> None:
        self.folder = folder
        self.manifest = manifest
        self.index = index
        self.writable = writable
        self.pending = 0  # log records not yet folded into a snapshot
        self.autosave_every: int | None = None  # save after this many logged mutations (None: never)
        self._mutex = threading.RLock()
        self._wal: MutationLog | None = None
        self._lock_fd: int | None = None

    # ---- create / open ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        index: Index,
        encoder_src: str | os.PathLike[str] | None,
        extra: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        """Write a new index folder (generation 1). Built beside ``folder`` and renamed into place."""
        folder = Path(folder)
        check_can_create(folder, overwrite)
        parent = folder.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f"{TMP_PREFIX}{folder.name}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = parent / f"{TMP_PREFIX}{folder.name}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            if encoder_src is not None:
                shutil.copytree(encoder_src, tmp / ENCODER_DIR, ignore=shutil.ignore_patterns(TMP_PREFIX + "*"))
            files = _digests(tmp, ENCODER_DIR) if encoder_src is not None else {}
            _write_snapshot(tmp, index, 1, files, extra or {})
            if folder.exists():
                old = parent / f"{TMP_PREFIX}{folder.name}.old-{os.getpid()}"
                os.replace(folder, old)
                os.replace(tmp, folder)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, folder)
            fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def open(cls, folder: str | os.PathLike[str], writable: bool = False, checksums: bool = True) -> IndexStore:
        """Load the current snapshot and replay its mutation log. Writers also clean up and lock."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FormatError(f"{folder}: index folder not found")
        lock_fd = _take_lock(folder) if writable else None
        try:
            for attempt in range(3):
                try:
                    store = cls._load(folder, writable, checksums)
                    break
                except FormatError:
                    # A reader can race a writer's save (the generation it read is deleted under it).
                    if writable or attempt == 2 or not _generation_changed(folder):
                        raise
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        store._lock_fd = lock_fd
        return store

    @classmethod
    def _load(cls, folder: Path, writable: bool, checksums: bool) -> IndexStore:
        manifest = IndexManifest.load(folder)
        if writable:
            _clean(folder, manifest)
        manifest.verify_files(folder, checksums=checksums)
        extra = manifest.extra
        data_dir = extra.get("data_dir")
        if not isinstance(data_dir, str) or not (folder / data_dir).is_dir():
            raise FormatError(f"{folder / MANIFEST_NAME}: extra.data_dir {data_dir!r} is not a folder of the index")
        missing = [f for f in DATA_FILES if f"{data_dir}/{f}" not in manifest.files]
        if missing:
            raise FormatError(f"{folder / MANIFEST_NAME}: does not list {', '.join(missing)}")
        try:
            params = IndexParams(**{**(extra.get("params") or {}), "M": manifest.M,
                                    "ef_construction": manifest.ef_construction, "ef_search": manifest.ef_search})
        except (TypeError, HCEError) as e:
            raise FormatError(f"{folder / MANIFEST_NAME}: bad index parameters ({e})") from None
        index = Index.read_files(folder / data_dir, manifest.dim, params, manifest.counts)
        store = cls(folder, manifest, index, writable)
        wal_path = folder / wal_name(manifest.generation)
        end = None
        if wal_path.is_file():
            contents = read_log(wal_path, manifest.dim, manifest.generation)
            for rec in contents.records:
                store._apply(rec)
            store.pending = len(contents.records)
            end = contents.end
            if contents.records:
                log.info("%s: replayed %d logged mutations", wal_path, len(contents.records))
        if writable:
            store._wal = MutationLog(wal_path, manifest.dim, manifest.generation, truncate_at=end)
        return store

    # ---- changes ----------------------------------------------------------------------------------
    def _apply(self, rec: Record) -> None:
        if rec.op == "add":
            self.index.add(rec.ids, rec.vectors, rec.leaves)  # type: ignore[arg-type]
        else:
            self.index.delete(rec.ids, auto_compact=False)

    def _require_writable(self) -> MutationLog:
        if not self.writable or self._wal is None:
            raise HCEError(f"{self.folder}: index was opened read-only")
        return self._wal

    def add(self, ids: list[str], vectors: np.ndarray, leaves: Any = None) -> AddResult:
        """Add or replace documents; durable (logged and fsync'ed) when this returns."""
        with self._mutex:
            wal = self._require_writable()
            ids, vecs, leaf_arr = self.index.validate_batch(ids, vectors, leaves)
            if not ids:
                return AddResult(0, 0)
            wal.append(Record("add", ids, vecs, leaf_arr.tolist()))
            result = self.index.add(ids, vecs, leaf_arr)
            self._after_mutation()
            return result

    def delete(self, ids: list[str]) -> DeleteResult:
        """Delete documents; unknown ids are reported in ``missing``. Durable when this returns."""
        with self._mutex:
            wal = self._require_writable()
            present = [i for i in dict.fromkeys(ids) if isinstance(i, str) and i in self.index]
            if present:
                wal.append(Record("delete", present))
            result = self.index.delete(ids)
            if present:
                self._after_mutation()
            return result

    def _after_mutation(self) -> None:
        self.pending += 1
        if self.autosave_every and self.pending >= self.autosave_every:
            self.save()

    def compact(self) -> int:
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
            old = self.manifest
            enc = {k: v for k, v in old.files.items() if k.startswith(ENCODER_DIR + "/")}
            new = _write_snapshot(self.folder, self.index, old.generation + 1, enc, old.extra)
            # Committed: the new manifest names the new generation; the old one and its log are garbage.
            self.manifest = new
            wal.close()
            self._wal = MutationLog(self.folder / wal_name(new.generation), new.dim, new.generation)
            self.pending = 0
            _clean(self.folder, new)
            return True

    # ---- info / lifecycle -------------------------------------------------------------------------
    @property
    def encoder_dir(self) -> Path:
        return self.folder / ENCODER_DIR

    def stats(self) -> dict[str, Any]:
        return {
            **self.index.stats(),
            "generation": self.manifest.generation,
            "pending_log_records": self.pending,
            "log_bytes": self._wal.size if self._wal else None,
            "writable": self.writable,
            "folder": str(self.folder),
        }

    def close(self, save: bool = False) -> None:
        with self._mutex:
            if save and self.writable and self.pending:
                self.save()
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_can_create(folder: Path, overwrite: bool) -> None:
    """Refuse to build over an existing index (or a non-empty foreign folder) unless ``overwrite``."""
    if folder.exists() and not folder.is_dir():
        raise HCEError(f"{folder}: exists and is not a folder")
    if overwrite or not folder.exists():
        return
    if holds_index(folder):
        raise HCEError(f"{folder}: already holds an index; pass --overwrite to replace it")
    if any(folder.iterdir()):
        raise HCEError(f"{folder}: folder is not empty and holds no index; pass --overwrite to replace it")


def _write_snapshot(folder: Path, index: Index, generation: int, files: dict, extra: dict) -> IndexManifest:
    name = gen_name(generation)
    tmp = folder / (TMP_PREFIX + name)
    shutil.rmtree(tmp, ignore_errors=True)
    index.write_files(tmp)
    fsync_dir(tmp)
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)  # an unreferenced leftover of a killed save
    os.replace(tmp, final)
    fsync_dir(folder)
    st = index.stats()
    manifest = IndexManifest(
        dim=index.dim,
        space=index.params.space,
        M=index.params.M,
        ef_construction=index.params.ef_construction,
        ef_search=index.params.ef_search,
        counts={k: st[k] for k in ("labels", "live", "deleted", "capacity")},
        files={**files, **_digests(folder, name)},
        generation=generation,
        extra={**extra, "data_dir": name, "params": index.params.to_dict(), "hce_version": __version__},
    )
    manifest.save(folder)
    _link_top_level(folder, name)
    return manifest


def _link_top_level(folder: Path, gen_dir: str) -> None:
    """Expose the current generation's data files under DESIGN §6's flat names (``IDX_DIR/hnsw.bin`` …).

    Hard links (a copy where links are unsupported), each swapped in with ``os.replace`` after the manifest:
    they are a convenience for tools that read the flat layout; loading always follows the manifest, so a
    crash between two swaps can leave the links mixed but never makes the index unloadable.
    """
    for name in DATA_FILES:
        src = folder / gen_dir / name
        tmp = folder / f"{TMP_PREFIX}link-{name}"
        try:
            tmp.unlink(missing_ok=True)
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copy2(src, tmp)
            os.replace(tmp, folder / name)
        except OSError as e:  # never fail a save that already committed its manifest
            log.warning("could not expose %s at the top level of %s: %s", name, folder, e)
    fsync_dir(folder)


def _clean(folder: Path, manifest: IndexManifest) -> None:
    """Remove what a killed writer left: temp files/folders, unreferenced generations, stale logs."""
    remove_stale_temps(folder)
    current_gen = manifest.extra.get("data_dir")
    current_log = wal_name(manifest.generation)
    for p in folder.iterdir():
        stale_dir = p.name.startswith(TMP_PREFIX) or (p.name.startswith("gen-") and p.name != current_gen)
        if stale_dir and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith("wal-") and p.name.endswith(".log") and p.name != current_log:
            try:
                p.unlink()
            except OSError:
                pass


def _take_lock(folder: Path) -> int:
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise HCEError(f"{folder}: another process has this index open for writing") from None
    return fd


def _generation_changed(folder: Path) -> bool:
    try:
        IndexManifest.load(folder)
        return True  # readable now: worth one more try
    except FormatError:
        return False
