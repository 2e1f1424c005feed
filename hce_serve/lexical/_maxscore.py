"""The compiled MaxScore kernel behind ``topk.top_k`` (numba; importing this module needs it).

Lists are a query's postings lists in increasing bound order; ``cum[i]`` is the sum of the bounds of lists 0..i.
Lists below ``first`` are non-essential: ``cum[first - 1] <= theta``, so a row that only they hold cannot beat
the current k-th score. Rows are scored a window at a time, as Lucene's MaxScoreBulkScorer does: the essential
lists' postings inside the window are added into a dense buffer (a sequential pass, no per-row merge of list
heads), then each touched row, in ascending order, probes the non-essential lists, strongest first, while it can
still beat theta. Within a window a list's bound is the largest of its blocks' maxima there (block-max, as in
Ding & Suel's BMW), so more lists turn non-essential, and a window whose bounds sum to theta or less is skipped.
The split stays a prefix of the lists in bound order, so the order shares are summed in never changes.

Rows come in ascending order, so a row that ties the k-th score comes later than it and stays out: the heap's
order (score, then the earlier row) is the final one. Each row's shares are summed strongest list first, as
``topk.evaluate`` sums them, so both give the same float32 scores. A list's rows live in ``rows0``/``tfn0``
(the sealed segment, ``src`` 0) or ``rows1``/``tfn1`` (the delta, ``src`` 1) between ``lo`` and ``hi``.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _seek(rows, p, hi, d):
    """The first position in rows[p:hi] holding a row >= d (hi if none): galloping, then binary search."""
    if p >= hi or rows[p] >= d:
        return p
    step = 1
    while p + step < hi and rows[p + step] < d:
        p += step
        step *= 2
    lo_, hi_ = p + 1, min(p + step, hi - 1) + 1  # rows[p] < d; the answer is in (p, p + step]
    while lo_ < hi_:
        mid = (lo_ + hi_) // 2
        if rows[mid] < d:
            lo_ = mid + 1
        else:
            hi_ = mid
    return lo_


@njit(cache=True, nogil=True)
def _worse(s_a, r_a, s_b, r_b):
    return s_a < s_b or (s_a == s_b and r_a > r_b)


@njit(cache=True, nogil=True)
def _sift_down(hs, hr, size, i):
    while True:
        c = 2 * i + 1
        if c >= size:
            return
        if c + 1 < size and _worse(hs[c + 1], hr[c + 1], hs[c], hr[c]):
            c += 1
        if _worse(hs[c], hr[c], hs[i], hr[i]):
            hs[i], hs[c] = hs[c], hs[i]
            hr[i], hr[c] = hr[c], hr[i]
            i = c
        else:
            return


@njit(cache=True, nogil=True)
def _sift_up(hs, hr, i):
    while i > 0:
        parent = (i - 1) // 2
        if _worse(hs[i], hr[i], hs[parent], hr[parent]):
            hs[i], hs[parent] = hs[parent], hs[i]
            hr[i], hr[parent] = hr[parent], hr[i]
            i = parent
        else:
            return


WINDOW = 4096  # rows per window: the buffer stays in the L1/L2 cache


@njit(cache=True, nogil=True)
def _window_bound(block_last, block_max, bp, bhi, start, stop):
    """The largest block maximum of the blocks (from ``bp`` on) that may hold a row in [start, stop), and the
    first block that may hold a row >= start."""
    while bp < bhi and block_last[bp] < start:
        bp += 1
    best = np.float32(0.0)
    b = bp
    while b < bhi:
        if block_max[b] > best:
            best = block_max[b]
        if block_last[b] >= stop:
            break
        b += 1
    return best, bp


@njit(cache=True, nogil=True)
def maxscore(rows0, tfn0, rows1, tfn1, lo, hi, src, w, ub, blo, bhi, block_last, block_max, slack, excluded, k):
    n_lists = len(lo)
    ptr = lo.copy()
    bp = blo.copy()
    cum = np.empty(n_lists, np.float64)  # prefix sums of the global bounds
    wcum = np.empty(n_lists, np.float64)  # ... and of the window's
    total = 0.0
    for i in range(n_lists):
        total += ub[i]
        cum[i] = total
    hs = np.empty(max(k, 1), np.float32)
    hr = np.empty(max(k, 1), np.int64)
    size = 0
    theta = -1.0  # the k-th score once the heap is full
    first = 0
    buf = np.zeros(WINDOW, np.float32)
    hit = np.zeros(WINDOW, np.bool_)
    end = np.iinfo(np.int64).max
    while first < n_lists and k > 0:
        start = end
        for i in range(first, n_lists):
            p = ptr[i]
            if p < hi[i]:
                r = np.int64(rows0[p]) if src[i] == 0 else np.int64(rows1[p])
                if r < start:
                    start = r
        if start == end:
            break
        stop = start + WINDOW
        total = 0.0
        for i in range(n_lists):
            if ptr[i] >= hi[i]:
                b = 0.0
            elif src[i] == 0 and size == k:
                m, bp[i] = _window_bound(block_last, block_max, bp[i], bhi[i], start, stop)
                b = w[i] * np.float64(m) * (1 + slack) + 1e-7
            else:
                b = ub[i]
            total += b
            wcum[i] = total
        first_w = first  # lists at or above it are added into the window; the ones below are probed
        while first_w < n_lists and wcum[first_w] <= theta:
            first_w += 1
        for i in range(n_lists - 1, first_w - 1, -1):  # nothing when no row of the window can beat theta
            p, h, wi = ptr[i], hi[i], w[i]
            if src[i] == 0:
                while p < h and rows0[p] < stop:
                    j = rows0[p] - start
                    buf[j] += wi * tfn0[p]
                    hit[j] = True
                    p += 1
            else:
                while p < h and rows1[p] < stop:
                    j = rows1[p] - start
                    buf[j] += wi * tfn1[p]
                    hit[j] = True
                    p += 1
            ptr[i] = p
        for j in range(WINDOW):
            if not hit[j]:
                continue
            score = buf[j]
            buf[j] = 0.0
            hit[j] = False
            d = start + j
            if excluded[d]:
                continue
            dropped = False
            for i in range(first_w - 1, -1, -1):
                if size == k and score + min(wcum[i], cum[i]) <= theta:
                    dropped = True
                    break
                if src[i] == 0:
                    p = _seek(rows0, ptr[i], hi[i], d)
                    ptr[i] = p
                    if p < hi[i] and rows0[p] == d:
                        score += w[i] * tfn0[p]
                else:
                    p = _seek(rows1, ptr[i], hi[i], d)
                    ptr[i] = p
                    if p < hi[i] and rows1[p] == d:
                        score += w[i] * tfn1[p]
            if dropped or score <= 0:
                continue
            if size < k:
                hs[size] = score
                hr[size] = d
                _sift_up(hs, hr, size)
                size += 1
            elif score > hs[0]:
                hs[0] = score
                hr[0] = d
                _sift_down(hs, hr, size, 0)
            else:
                continue
            if size == k:
                theta = hs[0]
                while first < n_lists and cum[first] <= theta:
                    first += 1
        for i in range(first, n_lists):  # the essential lists' heads past the window: the next one starts there
            if src[i] == 0:
                ptr[i] = _seek(rows0, ptr[i], hi[i], stop)
            else:
                ptr[i] = _seek(rows1, ptr[i], hi[i], stop)
    return hr[:size].copy(), hs[:size].copy()
