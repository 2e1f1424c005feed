"""Synthetic corpora for the studies that need no model: unit vectors drawn around random unit centres (a
mixture is harder for HNSW than uniform noise, and closer to real embeddings), and their exact top-k."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hce_serve.index.exact import topk_inner_product

K = 10  # the k of recall@k that every synthetic-vector study reports
BLOCK = 100_000  # rows per generated block of a ``Mixture`` (the unit of regeneration)


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float = 0.35,
              noise_seed: int | None = None) -> np.ndarray:
    """(n, dim) float32 unit vectors around ``clusters`` random unit centres drawn from ``seed``.
    ``noise_seed`` draws fresh points around the same centres: queries near, but not equal to, the documents."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (c, dim)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # chunked so 1M never needs a float64 temporary
        m = min(100_000, n - s)
        x = centres[rng.integers(0, clusters, m)]  # drawn before the noise: the order fixes the vectors
        x = x + spread * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


class Mixture:
    """Unit vectors around ``clusters`` unit centres; block ``b`` of stream ``s`` depends only on (seed, s, b),
    so a pass over a corpus of millions regenerates it instead of keeping a second copy."""

    def __init__(self, dim: int, clusters: int, seed: int, spread: float = 0.35) -> None:
        rng = np.random.default_rng([seed, 0xC3])
        self.centres = rng.standard_normal((clusters, dim)).astype(np.float32)  # (c, dim)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.dim, self.seed, self.spread = dim, seed, spread

    def block(self, b: int, rows: int, stream: int = 0) -> np.ndarray:
        rng = np.random.default_rng([self.seed, stream, b])
        x = self.centres[rng.integers(0, self.centres.shape[0], rows)]  # (rows, dim)
        x += self.spread * rng.standard_normal((rows, self.dim), dtype=np.float32) / np.sqrt(self.dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def blocks(self, n: int, stream: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) covering rows 0..n of a stream."""
        for b, start in enumerate(range(0, n, BLOCK)):
            yield start, self.block(b, min(BLOCK, n - start), stream)

    def matrix(self, n: int, stream: int = 0) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        for start, blk in self.blocks(n, stream):
            out[start : start + blk.shape[0]] = blk
        return out


def exact_topk(mix: Mixture, n: int, q: np.ndarray, k: int = K) -> np.ndarray:
    """Rows (nq, k) of the exact top-k inner products over the first n documents, one block at a time."""
    best_s = np.full((q.shape[0], 0), -np.inf, np.float32)
    best_r = np.zeros((q.shape[0], 0), np.int64)
    for start, blk in mix.blocks(n):
        s, r = topk_inner_product(blk, q, k)  # (nq, k) each
        cand_s, cand_r = np.concatenate([best_s, s], 1), np.concatenate([best_r, r + start], 1)
        keep = np.argsort(-cand_s, axis=1, kind="stable")[:, :k]
        best_s, best_r = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_r, keep, 1)
    return best_r
