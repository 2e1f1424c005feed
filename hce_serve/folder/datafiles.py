"""The index's data files: the only code that reads or writes them.

One generation folder holds the vector structure's files (``hnsw.bin``, hnswlib's own format; or for
``ivf-sq8`` ``ivf.faiss`` and ``vectors.npy``), ``ids.txt`` (row i = label i, an empty line for a free slot),
``deleted.npy`` (bool per label) and ``leaves.npy`` (int32 tree leaf per label). Loading checks them against
each other and the manifest's counts, and reads hnswlib's header first so a foreign or mismatched graph is
refused by name instead of being handed to C++ code that trusts it. They are read into an ``IndexState``
(``recovery.read_index`` makes the ``Index``), so this file format knows the arrays, not the index around them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FormatError
from ..formats.tree import read_ids, write_ids
from ..index.structures import IndexState, structure

if TYPE_CHECKING:
    from ..index.index import Index
    from ..options import IndexParams

IDS_FILE, DELETED_FILE, LEAVES_FILE = "ids.txt", "deleted.npy", "leaves.npy"


def data_files(kind: str = "hnsw") -> tuple[str, ...]:
    """The data files of one generation of an index of this kind."""
    return (*structure(kind).FILES, IDS_FILE, DELETED_FILE, LEAVES_FILE)



def write_index(index: Index, folder: str | os.PathLike[str]) -> list[str]:
    """Write the data files into ``folder`` (a fresh generation folder) and fsync them.

    Holds the index's read lock: searches continue, mutations wait until the files are complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with index.read_state() as st:
        st.ann.save(folder, len(st.ids))
        for name in st.ann.FILES:
            fsync_file(folder / name)
        write_ids(folder / IDS_FILE, st.ids)
        for name, arr in ((DELETED_FILE, st.deleted), (LEAVES_FILE, st.leaves)):
            with open(folder / name, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
    return list(data_files(index.params.kind))


def read_state(folder: str | os.PathLike[str], dim: int, params: IndexParams, counts: dict[str, int]) -> IndexState:
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
        raise FormatError(f"{folder / IDS_FILE}: {len(live_ids):,} live ids but the manifest says "
                          f"{counts.get('live'):,}")
    ann = structure(params.kind).load(folder, dim, params, n, ~deleted, counts.get("capacity", n))
    return IndexState(ann, ids, deleted, leaves)


def load_array(path: Path, dtype: type) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .npy array ({e})") from None
    if arr.dtype != dtype or arr.ndim != 1:
        raise FormatError(f"{path}: expected a 1-d {np.dtype(dtype)} array, found {arr.dtype} {arr.shape}")
    return arr


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
