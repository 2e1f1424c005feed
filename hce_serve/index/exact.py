"""Exact maximum-inner-product search in numpy: the ground truth for recall and the path for small indexes.

Everything stays float32: a float64 query would upcast the whole document matrix, a copy and a slower product
on every search, so inputs are converted once here.
"""

from __future__ import annotations

import numpy as np


def as_f32_matrix(x: np.ndarray, dim: int | None = None, name: str = "vectors") -> np.ndarray:
    """``x`` as a C-contiguous float32 (n, dim) array; a single vector becomes one row."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        raise ValueError(f"{name}: expected shape (n, {dim if dim is not None else 'dim'}), found {arr.shape}")
    return arr


def topk_inner_product(
    matrix: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``matrix`` by inner product with each query, best first.

    Returns (scores (q, k) float32, rows (q, k) int64); ``k`` is clamped to the number of rows. The
    matrix is scanned in row chunks so the (q, n) score matrix never exceeds (q, chunk).
    """
    matrix = as_f32_matrix(matrix, name="matrix")
    queries = as_f32_matrix(queries, matrix.shape[1], name="queries")
    n, nq = matrix.shape[0], queries.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros((nq, 0), np.float32), np.zeros((nq, 0), np.int64)
    best_s = np.full((nq, 0), -np.inf, np.float32)
    best_r = np.zeros((nq, 0), np.int64)
    for start in range(0, n, chunk):
        block = matrix[start : start + chunk]
        scores = queries @ block.T  # (q, c)
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (q, kk)
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, part, 1)], axis=1)  # (q, <=2k)
        cand_r = np.concatenate([best_r, part + start], axis=1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(cand_s, keep, 1)
        best_r = np.take_along_axis(cand_r, keep, 1)
    return best_s, best_r


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k rows (q, k) found in the approximate top-k rows (q, k)."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
    return hits / exact.size
