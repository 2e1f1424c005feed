"""The index folder's layout on disk: snapshot generations, the manifest that names one, the writer lock.

```
IDX_DIR/manifest.json        written last; names the current generation and every file's size + sha256
IDX_DIR/gen-000003/          hnsw.bin (ivf-sq8: ivf.faiss + vectors.npy), ids.txt (row i = label i, "" = free
                             slot), deleted.npy, leaves.npy
IDX_DIR/wal-000003.log       adds/deletes acknowledged since generation 3 (replayed on open)
IDX_DIR/docs.sqlite          stored documents (SQLite, WAL journal); absent for an ids-only index
IDX_DIR/encoder/             a copy of the EXPORT_DIR the index was built with
IDX_DIR/hnsw.bin, ids.txt …  hard links to the current generation's files (DESIGN §6's flat names)
IDX_DIR/.lock                flock held by the one process that may write (recovery.py)
```

A save writes the next generation into ``.tmp-gen-N``, fsyncs, renames it to ``gen-N``, then replaces the
manifest: until that rename of the manifest the previous generation (and its log) is what a load sees,
after it the new one. Leftovers of a killed writer (temp folders, generations or logs the manifest does
not name) are removed when a writer next opens the folder (``recovery.py``); readers never delete anything.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .. import __version__
from ..batching import chunks
from ..defaults import BATCH_SIZE
from ..documents import Document
from ..errors import HCEError
from ..formats.atomic import TMP_PREFIX, fsync_dir
from ..index.index import Index
from ..lexical.bm25 import LexicalIndex
from ..lexical.part import with_settings
from .datafiles import data_files, write_index
from .docstore import DOCS_NAME, DocStore
from .manifest import MANIFEST_NAME, IndexManifest, file_digest

log = logging.getLogger(__name__)

ENCODER_DIR = "encoder"


def gen_name(generation: int) -> str:
    return f"gen-{generation:06d}"


def holds_index(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def digests(root: Path, rel_dir: str) -> dict[str, dict[str, Any]]:
    """{relative path: size + sha256} of every file under ``root/rel_dir`` (temp files excluded)."""
    return {
        p.relative_to(root).as_posix(): file_digest(p)
        for p in sorted((root / rel_dir).rglob("*"))
        if p.is_file() and not p.name.startswith(TMP_PREFIX)
    }


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


def build_path(folder: Path, what: str) -> Path:
    """A temporary path beside ``folder`` for building part of it (removed by ``remove_build_leftovers``)."""
    return folder.parent / f"{TMP_PREFIX}{folder.name}.{what}-{os.getpid()}"


def remove_build_leftovers(folder: Path) -> None:
    for stale in folder.parent.glob(f"{TMP_PREFIX}{folder.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def create_folder(folder: Path, index: Index, encoder_src: str | os.PathLike[str] | None, extra: dict[str, Any],
                  overwrite: bool, documents: Iterable[Document] | None = None, docs_file: Path | None = None,
                  lexical: LexicalIndex | None = None) -> None:
    """Write a new index folder (generation 1): built in a temp folder beside it, renamed into place.

    The document store comes from ``documents`` or is moved in from ``docs_file``; with neither: ids only.
    """
    check_can_create(folder, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = build_path(folder, "build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        if encoder_src is not None:
            shutil.copytree(encoder_src, tmp / ENCODER_DIR, ignore=shutil.ignore_patterns(TMP_PREFIX + "*"))
        files = digests(tmp, ENCODER_DIR) if encoder_src is not None else {}
        if docs_file is not None:
            os.replace(docs_file, tmp / DOCS_NAME)
        elif documents is not None:
            store = DocStore.create(tmp / DOCS_NAME, bulk=True)
            try:
                for part in chunks(documents, BATCH_SIZE):
                    store.write(put=part)
            finally:
                store.close()
        stored = docs_file is not None or documents is not None
        write_snapshot(tmp, index, 1, files, extra, DOCS_NAME if stored else None, lexical)
        if folder.exists():
            old = build_path(folder, "old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_build_leftovers(folder)


def write_snapshot(folder: Path, index: Index, generation: int, files: dict, extra: dict,
                   documents: str | None, lexical: LexicalIndex | None = None) -> IndexManifest:
    """Write generation ``generation`` of ``index`` and its lexical part (merged first) and commit it with a new
    manifest (written last)."""
    name = gen_name(generation)
    tmp = folder / (TMP_PREFIX + name)
    shutil.rmtree(tmp, ignore_errors=True)
    write_index(index, tmp)
    if lexical is not None:
        lexical.save(tmp)
    extra = with_settings(extra, lexical)
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
        files={**files, **digests(folder, name)},
        generation=generation,
        documents=documents,
        extra={**extra, "data_dir": name, "params": index.params.to_dict(), "hce_version": __version__},
    )
    manifest.save(folder)
    link_top_level(folder, name, data_files(index.params.kind))
    return manifest


def link_top_level(folder: Path, gen_dir: str, names: tuple[str, ...]) -> None:
    """Expose the current generation's data files under DESIGN §6's flat names (``IDX_DIR/hnsw.bin`` …).

    Hard links (a copy where links are unsupported), each swapped in with ``os.replace`` after the manifest:
    they are a convenience for tools that read the flat layout; loading always follows the manifest, so a
    crash between two swaps can leave the links mixed but never makes the index unloadable.
    """
    for name in names:
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

