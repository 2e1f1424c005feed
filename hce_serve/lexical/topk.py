"""BM25 top-k, term at a time, with MaxScore pruning (Turtle & Flood 1995): exact, and cheap on long postings.

Terms are taken in decreasing order of their bound, the most one term can add to a document's score (its weight
times the largest length-normalised frequency in its postings). After each term, theta, the k-th best score so far
among the documents that may be returned, is a lower bound of the final k-th score (scores only grow), and the sum
of the bounds of the terms left is the most a document not touched yet can still reach. Once that sum is below
theta, no untouched document can enter the top k: the terms left only update the candidates that can still
reach theta, each through a binary search in the term's sorted postings, instead of a scatter over all of them.
Common terms, which carry most postings and little weight, are then read only where they matter.

The top k and their scores equal an exhaustive evaluation's: every candidate kept gets every term's share, in
the same order (so even float32 rounding agrees).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TRIES = 2


@dataclass(frozen=True)
class Term:
    """One query term's postings: segments of (rows ascending, length-normalised tf), its weight and bound."""

    segments: tuple[tuple[np.ndarray, np.ndarray], ...]
    weight: float  # idf x query-term frequency
    bound: float  # weight x the largest normalised tf of its postings


def evaluate(n: int, excluded: np.ndarray, terms: list[Term], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidate rows, scores over all n rows): every row that may be in the top k and is not ``excluded``
    (dead, or outside a filter), with its full score. Rows outside the candidates may hold partial scores."""
    terms = sorted(terms, key=lambda t: -t.bound)
    scores = np.zeros(n, np.float32)
    left = float(sum(t.bound for t in terms))
    done = 0.0  # bounds of the terms scattered so far: theta can be no higher
    seen: list[np.ndarray] = []  # rows scattered so far (one array per segment)
    cand: np.ndarray | None = None
    tries = MAX_TRIES  # a try that fails costs a pass over the touched rows: a query that does not prune stops trying
    for i, t in enumerate(terms):
        left -= t.bound
        w = np.float32(t.weight)
        if cand is None:
            for rows, tfn in t.segments:
                scores[rows] += w * tfn
                seen.append(rows)
            done += t.bound
            if tries and i + 1 < len(terms) and left < done:  # else theta <= done <= left: no pruning possible yet
                cand = _prune(_touched(seen, n), excluded, scores, k, left)
                tries -= 1
        else:
            for rows, tfn in t.segments:
                if not len(rows) or not len(cand):
                    continue
                pos = np.minimum(np.searchsorted(rows, cand), len(rows) - 1)
                hit = rows[pos] == cand
                scores[cand[hit]] += w * tfn[pos[hit]]
    if cand is None:
        cand = np.flatnonzero(scores)
        cand = cand[~excluded[cand]]
    return cand, scores


def _touched(seen: list[np.ndarray], n: int) -> np.ndarray:
    """The distinct rows of ``seen``, ascending: by sorting while they are few, by a mask over n when many."""
    m = sum(len(r) for r in seen)
    if m * 16 < n:
        c = np.sort(np.concatenate(seen))
        return c[np.r_[True, c[1:] != c[:-1]]] if len(c) else c
    mask = np.zeros(n, bool)
    for r in seen:
        mask[r] = True
    return np.flatnonzero(mask)


def _prune(touched: np.ndarray, excluded: np.ndarray, scores: np.ndarray, k: int, left: float) -> np.ndarray | None:
    """The candidates that can still reach the top k, or None while documents not touched yet still can."""
    c = touched[~excluded[touched]]
    if len(c) < k:
        return None
    theta = float(np.partition(scores[c], len(c) - k)[len(c) - k])
    if not left < theta:
        return None
    return c[scores[c] + np.float32(left) >= np.float32(theta)]


__all__ = ["Term", "evaluate"]
