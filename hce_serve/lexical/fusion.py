"""Fusing a dense and a lexical result list into one ranking.

Three methods, each with ``alpha`` as the dense side's weight and ``1 - alpha`` the lexical side's:
- ``rrf``: reciprocal rank fusion, ``alpha / (c + rank_dense) + (1 - alpha) / (c + rank_lexical)`` (Cormack et
  al. 2009; ``alpha`` .5 is plain RRF up to a factor). Scores are ignored, so a side's scale never matters.
- ``minmax``: each side's scores scaled to [0, 1] over its own retrieved list, then the weighted sum.
- ``dbsf``: distribution-based score fusion: each side scaled by its list's mean ± 3 standard deviations and
  clipped to [0, 1], which an outlier at the top (one exact keyword match) stretches less than min-max does.
A document missing from one side's list gets that side's floor (0): it was not in that side's top ``depth``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FUSIONS = ("rrf", "minmax", "dbsf")
RRF_C = 60  # Cormack et al.'s constant: damps the head of each list


@dataclass(frozen=True)
class SideHit:
    """One side's view of a fused hit: its rank (1-based) and score there."""

    rank: int
    score: float


@dataclass(frozen=True)
class Fused:
    id: str
    score: float
    dense: SideHit | None
    lexical: SideHit | None

    def explain(self) -> dict[str, object]:
        side = lambda h: None if h is None else {"rank": h.rank, "score": h.score}  # noqa: E731
        return {"dense": side(self.dense), "lexical": side(self.lexical), "fused": self.score}


def normalise(scores: np.ndarray, method: str) -> np.ndarray:
    """One side's scores on [0, 1] (a list whose scores are all equal maps to 1)."""
    if not len(scores):
        return scores
    if method == "minmax":
        lo, hi = float(scores.min()), float(scores.max())
    else:  # dbsf
        mu, sd = float(scores.mean()), float(scores.std())
        lo, hi = mu - 3 * sd, mu + 3 * sd
    if hi - lo <= 1e-12:
        return np.ones_like(scores)
    return np.clip((scores - lo) / (hi - lo), 0.0, 1.0)


def fuse(dense: Sequence[tuple[str, float]], lexical: Sequence[tuple[str, float]], method: str, alpha: float,
         k: int, rrf_c: int = RRF_C) -> list[Fused]:
    """The ``k`` best of the union of both lists (each best first), fused by ``method`` (``FUSIONS``)."""
    if method not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, found {method!r}")
    ids: list[str] = []
    slot: dict[str, int] = {}  # id -> its position in ids (the union, dense first)
    where = []
    for hits in (dense, lexical):
        pos = np.empty(len(hits), np.int64)
        for r, (doc, _) in enumerate(hits):
            at = slot.get(doc)
            if at is None:
                at = slot[doc] = len(ids)
                ids.append(doc)
            pos[r] = at
        where.append(pos)
    n = len(ids)
    fused = np.zeros(n, np.float64)
    rank = np.zeros((2, n), np.int64)  # 1-based rank on each side, 0: not retrieved there
    score = np.zeros((2, n), np.float64)
    for s, (hits, weight) in enumerate(zip((dense, lexical), (alpha, 1.0 - alpha), strict=True)):
        if not hits:
            continue
        scores = np.fromiter((h[1] for h in hits), np.float64, len(hits))
        rank[s, where[s]] = np.arange(1, len(hits) + 1)
        score[s, where[s]] = scores
        if weight == 0:
            continue
        if method == "rrf":
            fused[where[s]] += weight / (rrf_c + np.arange(1, len(hits) + 1, dtype=np.float64))
        else:
            fused[where[s]] += weight * normalise(scores, method)
    best = np.where(rank == 0, np.iinfo(np.int64).max, rank).min(axis=0)
    top = np.lexsort((best, -fused))[: k + 8]  # a few spare: ties on score and rank fall back to the id
    order = sorted(top.tolist(), key=lambda j: (-fused[j], best[j], ids[j]))[:k]
    side = lambda s, j: SideHit(int(rank[s, j]), float(score[s, j])) if rank[s, j] else None  # noqa: E731
    return [Fused(ids[j], float(fused[j]), side(0, j), side(1, j)) for j in order]


__all__ = ["FUSIONS", "RRF_C", "Fused", "SideHit", "fuse", "normalise"]
