"""BM25 top-k with MaxScore pruning (Turtle & Flood 1995): exact, and cheap on long postings.

Every query term has a bound, the most it can add to a document's score (its weight times the largest
length-normalised frequency in its postings). Once theta, the k-th best score so far, exceeds the sum of the
bounds of the weakest terms, a document that holds only those terms cannot enter the top k: their postings are
then read only where a stronger term already matched, instead of being walked.

Two implementations give the same top k with the same float32 scores (terms are summed in the same order):

- ``top_k``, compiled with numba when it is installed: document at a time over the postings, the weak
  ("non-essential") terms probed by a galloping search, a bounded heap for the top k. Its cost follows the
  postings of the strong terms, not the common ones.
- ``evaluate``, numpy, term at a time: scatters the strong terms over a score array, then updates only the
  candidates that can still reach theta. Used without numba, and where every matching row is needed (a subtree
  predicate that may reject any candidate).

A term's postings are a span of the sealed segment's arrays plus, for rows added since the last merge, a delta
(rows after every sealed row), so a term's rows ascend across both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import defaults
from . import threads

log = logging.getLogger(__name__)

MAX_TRIES = 2  # numpy path: a pruning try that fails costs a pass over the touched rows


SLACK = 1e-5  # bounds err high by this share (and 1e-7), more than float32's rounding of a sum of shares


def bound(weight: float, most: float) -> float:
    """What a term of this weight adds at most to a score, where ``most`` is its largest normalised tf."""
    return weight * most * (1 + SLACK) + 1e-7


@dataclass(frozen=True)
class Term:
    """One query term: its postings (term id ``term`` and ``span`` in the sealed arrays, -1 and (0, 0) when only
    the delta has it; ``delta`` rows and tfn), weight and bound."""

    term: int
    span: tuple[int, int]
    delta: tuple[np.ndarray, np.ndarray] | None
    weight: float  # idf x query-term frequency
    bound: float  # bound(weight, the largest normalised tf of its postings)


BLOCK = 128  # postings per block of the block-max bounds


@dataclass(frozen=True)
class Postings:
    """The sealed segment's postings, term after term: rows ascending within a term, length-normalised tf, and
    the bounds pruning reads: per term its largest tf (``most``), and per block of ``BLOCK`` postings its last row
    and largest tf (term j's blocks are ``blocks[j]:blocks[j + 1]``, its postings ``offsets[j]:offsets[j + 1]``)."""

    offsets: np.ndarray
    rows: np.ndarray
    tfn: np.ndarray
    most: np.ndarray
    blocks: np.ndarray
    block_last: np.ndarray
    block_max: np.ndarray

    @classmethod
    def of(cls, offsets: np.ndarray, rows: np.ndarray, tfn: np.ndarray) -> Postings:
        df = np.diff(offsets)
        n_blocks = (df + BLOCK - 1) // BLOCK
        blocks = np.zeros(len(df) + 1, np.int64)
        np.cumsum(n_blocks, out=blocks[1:])
        # block b of term j starts at offsets[j] + BLOCK * (b - blocks[j])
        term_of = np.repeat(np.arange(len(df)), n_blocks)
        starts = offsets[:-1][term_of] + BLOCK * (np.arange(blocks[-1]) - blocks[:-1][term_of])
        ends = np.minimum(starts + BLOCK, offsets[1:][term_of])
        block_max = np.maximum.reduceat(tfn, starts) if len(starts) else np.zeros(0, np.float32)
        most = np.zeros(len(df), np.float32)
        if len(starts):
            most[df > 0] = np.maximum.reduceat(block_max, blocks[:-1][df > 0])
        block_last = rows[ends - 1] if len(starts) else np.zeros(0, rows.dtype)
        return cls(offsets, rows, tfn, most, blocks, block_last, block_max.astype(np.float32))


def _segments(p: Postings, t: Term) -> list[tuple[np.ndarray, np.ndarray]]:
    lo, hi = t.span
    out = [(p.rows[lo:hi], p.tfn[lo:hi])] if hi > lo else []
    if t.delta is not None and len(t.delta[0]):
        out.append(t.delta)
    return out


def _by_bound(terms: list[Term]) -> list[Term]:
    """Strongest first, ties in query order: the order both implementations sum a document's shares in."""
    return sorted(terms, key=lambda t: -t.bound)


# ---- numpy, term at a time ---------------------------------------------------------------------------------
def evaluate(n: int, excluded: np.ndarray, postings: Postings, terms: list[Term],
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidate rows, scores over all n rows): every row that may be in the top k and is not ``excluded``
    (dead, or outside a filter), with its full score. Rows outside the candidates may hold partial scores."""
    terms = _by_bound(terms)
    scores = np.zeros(n, np.float32)
    left = float(sum(t.bound for t in terms))
    done = 0.0  # bounds of the terms scattered so far: theta can be no higher
    seen: list[np.ndarray] = []  # rows scattered so far (one array per segment)
    cand: np.ndarray | None = None
    tries = MAX_TRIES
    for i, t in enumerate(terms):
        left -= t.bound
        w = np.float32(t.weight)
        if cand is None:
            for rows, tfn in _segments(postings, t):
                scores[rows] += w * tfn
                seen.append(rows)
            done += t.bound
            if tries and i + 1 < len(terms) and left < done:  # else theta <= done <= left: no pruning possible yet
                cand = _prune(_touched(seen, n), excluded, scores, k, left)
                tries -= 1
        else:
            for rows, tfn in _segments(postings, t):
                if not len(cand):
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


def select(cand: np.ndarray, scores: np.ndarray, k: int, ids: list[str],
           accept: Callable[[list[str]], Sequence[bool]] | None = None) -> list[tuple[str, float]]:
    """The best ``k`` of ``cand`` (rows, ascending) as (id, score), best first, ties to the earlier row; with
    ``accept`` (a predicate on a list of ids), only the ids it passes, tried in score order until ``k`` pass."""
    out: list[tuple[str, float]] = []
    take = k if accept is None else 4 * k
    while len(cand) and len(out) < k:
        if len(cand) > take:  # the take best, ties at the cut going to the earlier rows
            s = scores[cand]
            cut = np.partition(s, len(s) - take)[len(s) - take]
            pick = s > cut
            pick[np.flatnonzero(s == cut)[: take - int(pick.sum())]] = True
            head, cand = cand[pick], cand[~pick]
        else:
            head, cand = cand, cand[:0]
        head = head[np.lexsort((head, -scores[head]))]
        names = [ids[r] for r in head.tolist()]
        keep = accept(names) if accept is not None else [True] * len(names)
        out.extend((i, float(scores[r])) for i, r, ok in zip(names, head.tolist(), keep, strict=True) if ok)
        take *= 4
    return out[:k]


# ---- compiled, document at a time ---------------------------------------------------------------------------
_kernel: Callable[..., Any] | None | bool = False  # False: not tried yet; None: numba is not there


_kernel_lock = threading.Lock()


def compiled(warm: bool = False) -> bool:
    """Whether ``top_k`` can run (numba imports); tried once per process. ``warm``: also compile the kernel now
    (or load it from numba's cache) by running it once on a tiny input."""
    global _kernel
    with _kernel_lock:
        if _kernel is False:
            try:
                from ._maxscore import maxscore
            except ImportError:  # numba is optional: the numpy path gives the same answers, slower on long postings
                _kernel = None
            else:
                _kernel = maxscore
    if warm and _kernel is not None:
        one = Postings.of(np.array([0, 1], np.int64), np.zeros(1, np.int32), np.ones(1, np.float32))
        top_k(1, np.zeros(1, bool), one, [Term(0, (0, 1), None, 1.0, bound(1.0, 1.0))], 1)
    return _kernel is not None


def top_k(n: int, excluded: np.ndarray, postings: Postings, terms: list[Term], k: int,
          split: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` rows with a positive score that are not ``excluded``, best first (ties: the earlier row),
    and their scores. Needs ``compiled()``. ``split``: a large one may run as two halves on two threads (off
    where another thread already works beside it: hybrid's encoder)."""
    if not compiled() or not callable(_kernel):
        raise RuntimeError("top_k needs numba: use evaluate")
    # lists in increasing bound order (the kernel's essential lists are the top ones), each term's delta after
    # its sealed span; the kernel walks them from the top down, which is _by_bound's order
    order = _by_bound(terms)[::-1]
    rows_dt = postings.rows.dtype if len(postings.rows) else np.dtype(np.int64)
    lo, hi, src, w, ub, blo, bhi = [], [], [], [], [], [], []
    extra_rows, extra_tfn, at = [], [], 0
    for t in order:
        parts = []
        if t.delta is not None and len(t.delta[0]):
            d_rows, d_tfn = t.delta
            extra_rows.append(np.asarray(d_rows, rows_dt))
            extra_tfn.append(np.asarray(d_tfn, np.float32))
            parts.append((1, at, at + len(d_rows)))
            at += len(d_rows)
        if t.span[1] > t.span[0]:
            parts.append((0, *t.span))
        for s, a, b in parts:  # delta first here, so walked after the sealed span (the numpy order)
            src.append(s)
            lo.append(a)
            hi.append(b)
            w.append(t.weight)
            ub.append(t.bound)
            j = t.term if s == 0 else -1
            blo.append(int(postings.blocks[j]) if j >= 0 else 0)
            bhi.append(int(postings.blocks[j + 1]) if j >= 0 else 0)
    r1 = np.concatenate(extra_rows) if extra_rows else np.zeros(0, rows_dt)
    t1 = np.concatenate(extra_tfn) if extra_tfn else np.zeros(0, np.float32)
    r0 = postings.rows if len(postings.rows) else np.zeros(0, rows_dt)
    lo_, hi_, blo_, bhi_ = (np.array(x, np.int64) for x in (lo, hi, blo, bhi))
    src_ = np.array(src, np.int8)
    fixed = (np.array(w, np.float32), np.array(ub, np.float64))

    def run(a: np.ndarray, b: np.ndarray, ba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _kernel(r0, postings.tfn, r1, t1, a, b, src_, *fixed, ba, bhi_,
                       postings.block_last, postings.block_max, SLACK, excluded, int(k))

    if split and int((hi_ - lo_).sum()) >= defaults.COMPILED_TOPK_SLICE_MIN_POSTINGS and n > 1:
        # rows below n // 2 on a slice thread, the rest here: each half's exact top k, then the best k of both
        mid = _split(r0, r1, lo_, hi_, src_, n // 2)
        first_block = np.where(src_ == 0, blo_ + (mid - lo_) // BLOCK, blo_)
        low = threads.pool("slice", defaults.LEXICAL_THREADS).submit(run, lo_, mid, blo_)
        high = run(mid, hi_, first_block)
        rows, scores = (np.concatenate(x) for x in zip(low.result(), high, strict=True))
    else:
        rows, scores = run(lo_, hi_, blo_)
    order_ = np.lexsort((rows, -scores))[:k]
    return rows[order_], scores[order_]


def _split(r0: np.ndarray, r1: np.ndarray, lo: np.ndarray, hi: np.ndarray, src: np.ndarray,
           row: int) -> np.ndarray:
    """Per list, the first position holding a row >= ``row``."""
    return np.array([a + int(np.searchsorted((r0 if s == 0 else r1)[a:b], row))
                     for a, b, s in zip(lo.tolist(), hi.tolist(), src.tolist(), strict=True)], np.int64)


__all__ = ["BLOCK", "Postings", "Term", "bound", "compiled", "evaluate", "select", "top_k"]
