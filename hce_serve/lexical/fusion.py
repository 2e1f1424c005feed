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
    sides: dict[str, list[SideHit | None]] = {}
    for s, hits in enumerate((dense, lexical)):
        for r, (doc, score) in enumerate(hits):
            sides.setdefault(doc, [None, None])[s] = SideHit(r + 1, float(score))
    weights = (alpha, 1.0 - alpha)
    fused: dict[str, float] = dict.fromkeys(sides, 0.0)
    for s, hits in enumerate((dense, lexical)):
        if not hits or weights[s] == 0:
            continue
        if method == "rrf":
            part = weights[s] / (rrf_c + np.arange(1, len(hits) + 1, dtype=np.float64))
        else:
            part = weights[s] * normalise(np.array([h[1] for h in hits], np.float64), method)
        for (doc, _), p in zip(hits, part.tolist(), strict=True):
            fused[doc] += p
    best_rank = {d: min(h.rank for h in v if h is not None) for d, v in sides.items()}
    order = sorted(fused, key=lambda d: (-fused[d], best_rank[d], d))[:k]
    return [Fused(d, fused[d], sides[d][0], sides[d][1]) for d in order]


__all__ = ["FUSIONS", "RRF_C", "Fused", "SideHit", "fuse", "normalise"]
