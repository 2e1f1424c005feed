"""Low-level checks and IO for the index's data files (kept apart so index.py stays about the index)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from .errors import FormatError


def check_hnsw_header(path: Path, dim: int, n: int, ids_name: str = "ids.txt") -> None:
    """Read hnswlib's file header (hnswalg.h saveIndex) so a foreign or mismatched graph is refused by name
    instead of being handed to C++ code that trusts it."""
    with open(path, "rb") as fh:
        head = fh.read(96)
    if len(head) < 96:
        raise FormatError(f"{path}: too short to be an hnswlib index ({len(head)} bytes)")
    _, max_el, count, per_elem, _, _, _, _, _, max_m0 = struct.unpack_from("<QQQQQQiiQQ", head)
    file_dim, rem = divmod(per_elem - 8 - (max_m0 * 4 + 4), 4)
    if rem or file_dim != dim:
        raise FormatError(f"{path}: graph holds {file_dim}-d vectors but the manifest says dim {dim}")
    if count != n or count > max_el:
        raise FormatError(f"{path}: graph holds {count:,} elements (capacity {max_el:,}); {ids_name} has {n:,} rows")


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
