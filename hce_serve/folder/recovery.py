"""Opening an index folder after any stop, clean or kill -9: the writer lock, a killed writer's leftovers
removed, the generation the manifest names loaded and checked, and its mutation log replayed on top.

This is what makes ``store.py``'s durability rule hold: a write was acknowledged only once its log record was
on disk, so replaying the log onto the snapshot it follows restores every acknowledged write, into the vector
index, the lexical part and the document store alike. A reader (which must not write) keeps the documents the
log changed in memory instead (``DocStore.overlay``), and retries when a writer's save deletes the generation
it was reading.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FormatError, HCEError
from ..formats.atomic import TMP_PREFIX, remove_stale_temps
from ..index.index import Index
from ..lexical.part import load_part
from ..options import IndexParams
from .datafiles import data_files, read_state
from .docstore import DocStore
from .manifest import MANIFEST_NAME, IndexManifest
from .wal import MutationLog, read_log, replay, wal_name

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


@dataclass
class OpenedFolder:
    """An index folder's state once opened and replayed: what an ``IndexStore`` is made of."""

    folder: Path
    manifest: IndexManifest
    index: Index
    docs: DocStore | None
    lexical: Any  # lexical.bm25.LexicalIndex, or None for a dense-only folder
    pending: int  # log records replayed, not yet folded into a snapshot
    wal: MutationLog | None  # a writer's log, open for appending
    lock_fd: int | None  # a writer's flock on LOCK_NAME


def open_folder(folder: Path, writable: bool, checksums: bool = True) -> OpenedFolder:
    """Load the current snapshot and replay its mutation log. Writers also lock and clean up."""
    if not folder.is_dir():
        raise FormatError(f"{folder}: index folder not found")
    lock_fd = take_lock(folder) if writable else None
    try:
        for attempt in range(3):
            try:
                return _load(folder, writable, checksums, lock_fd)
            except FormatError:
                # A reader can race a writer's save (the generation it read is deleted under it).
                if writable or attempt == 2 or not generation_changed(folder):
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")
    except BaseException:
        if lock_fd is not None:
            os.close(lock_fd)
        raise


def _load(folder: Path, writable: bool, checksums: bool, lock_fd: int | None) -> OpenedFolder:
    manifest = IndexManifest.load(folder)
    if writable:
        clean(folder, manifest)
    manifest.verify_files(folder, checksums=checksums)
    index, lexical = read_generation(folder, manifest)
    docs = DocStore.open(folder / manifest.documents, readonly=not writable) if manifest.documents else None
    try:
        pending, wal = _replay(folder / wal_name(manifest.generation), manifest, index, lexical, docs, writable)
    except BaseException:
        if docs is not None:
            docs.close()
        raise
    return OpenedFolder(folder, manifest, index, docs, lexical, pending, wal, lock_fd)


def read_index(folder: str | os.PathLike[str], dim: int, params: IndexParams, counts: dict[str, int]) -> Index:
    """The ``Index`` of one generation folder's data files, checked against each other and ``counts``."""
    return Index.from_state(dim, params, read_state(folder, dim, params, counts))


def read_generation(folder: Path, manifest: IndexManifest) -> tuple[Index, Any]:
    """The vector index, and the lexical part when there is one, of the generation ``manifest`` names."""
    where = folder / MANIFEST_NAME
    data_dir = manifest.extra.get("data_dir")
    if not isinstance(data_dir, str) or not (folder / data_dir).is_dir():
        raise FormatError(f"{where}: extra.data_dir {data_dir!r} is not a folder of the index")
    try:
        params = IndexParams(**{**(manifest.extra.get("params") or {}), "M": manifest.M,
                                "ef_construction": manifest.ef_construction, "ef_search": manifest.ef_search})
    except (TypeError, HCEError) as e:
        raise FormatError(f"{where}: bad index parameters ({e})") from None
    missing = [f for f in data_files(params.kind) if f"{data_dir}/{f}" not in manifest.files]
    if missing:
        raise FormatError(f"{where}: does not list {', '.join(missing)}")
    index = read_index(folder / data_dir, manifest.dim, params, manifest.counts)
    return index, load_part(folder / data_dir, manifest.extra, manifest.files, str(where))


def _replay(wal_path: Path, manifest: IndexManifest, index: Index, lexical: Any, docs: DocStore | None,
            writable: bool) -> tuple[int, MutationLog | None]:
    pending, end = 0, None
    if wal_path.is_file():
        contents = read_log(wal_path, manifest.dim, manifest.generation)
        net = replay(contents.records, index, lexical)
        pending, end = len(contents.records), contents.end
        if contents.records:
            log.info("%s: replayed %d logged mutations", wal_path, len(contents.records))
        if docs is not None and not writable:
            docs.overlay(net)
        elif docs is not None and net:
            docs.write(put=[d for d in net.values() if d is not None], remove=[i for i, d in net.items() if d is None])
    if not writable:
        return pending, None
    if docs is not None and (n := docs.count()) != len(index):
        raise FormatError(f"{docs.path}: holds {n:,} documents but the index has {len(index):,} "
                          "live ids (changed by another program?)")
    if lexical is not None and len(lexical) != len(index):
        raise FormatError(f"{wal_path.parent}: the lexical part holds {len(lexical):,} documents but the "
                          f"index has {len(index):,} live ids")
    return pending, MutationLog(wal_path, manifest.dim, manifest.generation, truncate_at=end)


def clean(folder: Path, manifest: IndexManifest) -> None:
    """Remove what a killed writer or a finished save left: temp files and folders, generations and logs the
    manifest does not name."""
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


def take_lock(folder: Path) -> int:
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise HCEError(f"{folder}: another process has this index open for writing") from None
    return fd


def generation_changed(folder: Path) -> bool:
    try:
        IndexManifest.load(folder)
        return True  # readable now: worth one more try
    except FormatError:
        return False
