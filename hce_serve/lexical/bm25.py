"""An updatable BM25 index in numpy: a sealed term-major segment plus an in-memory delta, merged at each save.

Scoring is Lucene's BM25: idf ``log(1 + (N - df + .5) / (df + .5))`` times ``tf / (tf + k1 (1 - b + b dl /
avgdl))`` (Lucene dropped the constant ``k1 + 1`` of Robertson's form: same ranking), the scores bm25s gives with
``method="lucene"``. A query term that repeats counts once per repeat.

Layout in memory:
- rows: every document added gets the next row; a replaced or deleted document's row turns dead. Rows are
  private to this index (the vector index has its own labels); ``ids[row]`` is "" for a dead row.
- the sealed segment: for each term its posting rows (int32, ascending) and frequencies, with the length part
  precomputed per posting at sealing time, so a query term costs one gather and one scatter-add over its
  postings. Rows added later form the delta, scored with the same sealed average length.
- statistics (N, df, the average length) count dead rows until the next merge, as Lucene's do until its
  segments merge; a merge (``save``) drops dead rows, renumbers, and re-seals with exact live statistics.

Thread-safety: searches take the read side of a readers-writer lock, ``add``/``delete`` the write side.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import defaults
from ..rwlock import RWLock
from . import topk
from .analyzer import Analyzer
from .segment import FILES, Segment, SegmentBuilder, read_segment, write_segment
from .settings import BM25Params
from .topk import Postings, Term

LexHit = tuple[str, float]
Accept = Callable[[list[str]], Sequence[bool]]


class LexicalIndex:
    """BM25 over documents' text, by id; ``add`` replaces an id that is already there."""

    def __init__(self, analyzer: Analyzer | None = None, params: BM25Params | None = None) -> None:
        self.analyzer, self.params = analyzer or Analyzer(), params or BM25Params()
        self._lock = RWLock()
        empty_i = np.zeros(0, np.int32)
        self._seal([], {}, np.zeros(1, np.int64), empty_i, empty_i, np.zeros(0, np.float32))

    # ---- the sealed segment -----------------------------------------------------------------------
    def _seal(self, ids: list[str], vocab: dict[str, int], offsets: np.ndarray, rows: np.ndarray, tf: np.ndarray,
              lengths: np.ndarray) -> None:
        """Make these rows the sealed segment (no delta): ``offsets`` (V+1) into ``rows``/``tf`` per term id."""
        self.ids, self.vocab = ids, vocab
        self.row_of = {i: r for r, i in enumerate(ids) if i}
        self.offsets, self.rows, self.tf = offsets, rows, tf
        self.df = np.diff(offsets)
        self.n_rows = self.sealed_rows = len(ids)
        self.lengths = np.asarray(lengths, np.float32)
        self.dead = np.array([not i for i in ids], bool)
        self.total_len = float(self.lengths[: self.n_rows].sum())
        self.avgdl = self.total_len / self.n_rows if self.n_rows else 1.0
        tfn = self._tf_part(tf, self.lengths[rows]) if len(rows) else np.zeros(0, np.float32)
        self.postings = Postings.of(offsets, rows, tfn)  # with the bounds top-k pruning reads
        self.delta: dict[str, tuple[list[int], list[int]]] = {}  # term -> (rows, tf) of rows added since
        self.delta_df: Counter[str] = Counter()

    def _tf_part(self, tf: np.ndarray, dl: np.ndarray) -> np.ndarray:
        k1, b = np.float32(self.params.k1), np.float32(self.params.b)
        tf = tf.astype(np.float32)
        return tf / (tf + k1 * (1 - b + b * dl / np.float32(max(self.avgdl, 1e-9))))

    @classmethod
    def build(cls, docs: Iterable[tuple[str, str]], analyzer: Analyzer | None = None,
              params: BM25Params | None = None, batch: int = 4096) -> LexicalIndex:
        """A sealed index of (id, text) pairs in one pass (a later pair with the same id replaces the earlier)."""
        analyzer = analyzer or Analyzer()
        builder = SegmentBuilder(analyzer)
        part: list[tuple[str, str]] = []
        for pair in docs:
            part.append(pair)
            if len(part) >= batch:
                builder.add(part)
                part = []
        builder.add(part)
        return cls.from_segment(builder.finish(), analyzer, params)

    # ---- changes ----------------------------------------------------------------------------------
    def add(self, docs: Sequence[tuple[str, str]]) -> None:
        """Add or replace (id, text) pairs. A pair repeated in ``docs``: the last one counts."""
        last = dict(docs)
        counts = self.analyzer.counts_many(list(last.values()))
        with self._lock.write():
            self._kill(last)
            start = self.n_rows
            self._grow(start + len(last))
            for j, (doc_id, c) in enumerate(zip(last, counts, strict=True)):
                row = start + j
                self.ids.append(doc_id)
                self.row_of[doc_id] = row
                self.lengths[row] = sum(c.values())
                for t, f in c.items():
                    rows_tf = self.delta.setdefault(t, ([], []))
                    rows_tf[0].append(row)
                    rows_tf[1].append(f)
                self.delta_df.update(c.keys())
            self.n_rows += len(last)
            self.total_len += float(self.lengths[start : self.n_rows].sum())

    def delete(self, ids: Iterable[str]) -> int:
        """Delete ids; returns how many were live."""
        with self._lock.write():
            return self._kill(ids)

    def _kill(self, ids: Iterable[str]) -> int:
        gone = 0
        for i in ids:
            row = self.row_of.pop(i, None)
            if row is not None:
                self.ids[row] = ""
                self.dead[row] = True
                gone += 1
        return gone

    def _grow(self, n: int) -> None:
        if n <= len(self.dead):
            return
        cap = max(n, len(self.dead) * 3 // 2 + 16)
        self.dead = np.concatenate([self.dead, np.zeros(cap - len(self.dead), bool)])
        self.lengths = np.concatenate([self.lengths, np.zeros(cap - len(self.lengths), np.float32)])

    # ---- reads ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.row_of)

    @property
    def postings_count(self) -> int:
        """The sealed segment's postings (the delta's are few until the next merge)."""
        return len(self.rows)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self.row_of

    def live_ids(self) -> set[str]:
        with self._lock.read():
            return set(self.row_of)

    def idf(self, term: str) -> float:
        """Lucene's idf of a term over the rows the statistics count (dead ones until the next merge)."""
        j = self.vocab.get(term)
        df = (int(self.df[j]) if j is not None else 0) + self.delta_df.get(term, 0)
        return math.log(1 + (self.n_rows - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 of ``query`` against every row (dead rows included: callers drop them)."""
        q = Counter(self.analyzer.terms(query))
        with self._lock.read():
            return self._scores(q)

    def _scores(self, q: Mapping[str, int]) -> np.ndarray:
        scores = np.zeros(self.n_rows, np.float32)
        for term, qtf in q.items():
            w = np.float32(self.idf(term) * qtf)
            j = self.vocab.get(term)
            if j is not None:
                lo, hi = self.offsets[j], self.offsets[j + 1]
                scores[self.rows[lo:hi]] += w * self.postings.tfn[lo:hi]
            if (d := self.delta.get(term)) is not None:
                rows = np.asarray(d[0], np.int64)
                scores[rows] += w * self._tf_part(np.asarray(d[1]), self.lengths[rows])
        return scores

    def search(self, query: str, k: int, allow_ids: Any = None, accept: Accept | None = None,
               split: bool = True) -> list[LexHit]:
        """The ``k`` best live documents for ``query``, best first, with their BM25 scores (only those > 0).

        ``allow_ids``: a set of ids to stay within (a metadata filter's matches); ``accept``: a predicate on a
        list of ids (a subtree), applied to candidates in score order until ``k`` pass; ``split``: see
        ``topk.top_k``.
        """
        q = Counter(self.analyzer.terms(query))
        with self._lock.read():
            n = self.n_rows
            terms = self._terms(q) if n and k > 0 else []
            if not terms:
                return []
            excluded = self.dead[:n]
            if allow_ids is not None:
                excluded = np.ones(n, bool)
                excluded[np.fromiter((r for i in allow_ids if (r := self.row_of.get(i)) is not None), np.int64)] = False
                excluded |= self.dead[:n]
            postings = self.postings
            if accept is None and _postings(terms) >= defaults.COMPILED_TOPK_MIN_POSTINGS and topk.compiled():
                rows, top = topk.top_k(n, excluded, postings, terms, k, split)
                return [(self.ids[r], float(s)) for r, s in zip(rows.tolist(), top.tolist(), strict=True)]
            # a predicate (a subtree) may reject any candidate: no pruning, every matching row is a candidate
            cand, scores = topk.evaluate(n, excluded, postings, terms, k if accept is None else n + 1)
            return topk.select(cand[scores[cand] > 0], scores, k, self.ids, accept)

    def _terms(self, q: Mapping[str, int]) -> list[Term]:
        """The query's terms with their postings (sealed, then delta: rows ascend across both) and bounds."""
        out = []
        for term, qtf in q.items():
            w = self.idf(term) * qtf
            j, span, delta, most = self.vocab.get(term, -1), (0, 0), None, 0.0
            if j >= 0:
                span = (int(self.offsets[j]), int(self.offsets[j + 1]))
                most = float(self.postings.most[j])
            if (d := self.delta.get(term)) is not None:
                rows = np.asarray(d[0], np.int64)
                delta = (rows, self._tf_part(np.asarray(d[1]), self.lengths[rows]))
                most = max(most, float(delta[1].max()))
            if span[1] > span[0] or delta is not None:  # the bound errs high by float32's rounding of w * tfn
                out.append(Term(j, span, delta, w, topk.bound(w, most)))
        return out

    def stats(self) -> dict[str, Any]:
        with self._lock.read():
            delta_terms = sum(1 for t in self.delta if t not in self.vocab)
            return {"documents": len(self.row_of), "terms": len(self.vocab) + delta_terms,
                    "postings": int(len(self.rows) + sum(len(r) for r, _ in self.delta.values())),
                    "delta_documents": self.n_rows - self.sealed_rows, "dead_rows": int(self.dead[: self.n_rows].sum()),
                    "language": self.analyzer.language, **self.params.to_dict()}

    # ---- merge and files --------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the delta into the sealed segment, drop dead rows and re-seal with exact live statistics."""
        with self._lock.write():
            if not self.delta and not self.dead[: self.n_rows].any() and self.n_rows == self.sealed_rows:
                return
            n = self.n_rows
            alive = ~self.dead[:n]
            new_row = np.cumsum(alive, dtype=np.int64) - 1  # old row -> new row (for live rows)
            # every posting as (term, old row, tf): sealed ones in (term, row) order, then the delta's
            old_terms = list(self.vocab)
            terms = sorted(set(old_terms) | set(self.delta))
            tid = {t: j for j, t in enumerate(terms)}
            remap = np.array([tid[t] for t in old_terms], np.int64)
            p_term = [np.repeat(remap, self.df)]
            p_row, p_tf = [self.rows.astype(np.int64)], [self.tf]
            for t, (rows, tfs) in self.delta.items():
                p_term.append(np.full(len(rows), tid[t], np.int64))
                p_row.append(np.asarray(rows, np.int64))
                p_tf.append(np.asarray(tfs, np.int32))
            term_of, rows, tf = np.concatenate(p_term), np.concatenate(p_row), np.concatenate(p_tf)
            keep = alive[rows]
            term_of, rows, tf = term_of[keep], rows[keep], tf[keep]
            order = np.argsort(term_of, kind="stable")  # sealed rows precede delta rows within a term
            term_of, rows, tf = term_of[order], new_row[rows[order]].astype(np.int32), tf[order]
            df = np.bincount(term_of, minlength=len(terms))
            used = df > 0
            terms = [t for t, u in zip(terms, used.tolist(), strict=True) if u]
            offsets = np.zeros(len(terms) + 1, np.int64)
            np.cumsum(df[used], out=offsets[1:])
            ids = [i for i, a in zip(self.ids, alive.tolist(), strict=True) if a]
            self._seal(ids, {t: j for j, t in enumerate(terms)}, offsets, rows, tf, self.lengths[:n][alive])

    def save(self, folder: str | os.PathLike[str]) -> tuple[str, ...]:
        """Merge, then write the files into ``folder`` (a fresh generation folder) and fsync them."""
        self.merge()
        with self._lock.read():
            return write_segment(Path(folder), Segment(self.ids, list(self.vocab), self.offsets, self.rows, self.tf,
                                                       self.lengths[: self.n_rows]))

    @classmethod
    def load(cls, folder: str | os.PathLike[str], analyzer: Analyzer, params: BM25Params) -> LexicalIndex:
        """Read the files ``save`` wrote (checked against each other). For an index whose queries will run the
        compiled top-k, the kernel is loaded (or compiled, once per install) on a background thread now, so the
        first query does not wait for it."""
        index = cls.from_segment(read_segment(Path(folder)), analyzer, params)
        if len(index.rows) >= defaults.COMPILED_TOPK_WARM_MIN_POSTINGS:
            threading.Thread(target=topk.compiled, args=(True,), name="hce-bm25-warm-up", daemon=True).start()
        return index

    @classmethod
    def from_segment(cls, seg: Segment, analyzer: Analyzer | None = None,
                     params: BM25Params | None = None) -> LexicalIndex:
        """A live index whose sealed segment is ``seg`` (a repeated id's earlier rows are dead: merged away)."""
        index = cls(analyzer, params)
        index._seal(seg.ids, {t: j for j, t in enumerate(seg.terms)}, seg.offsets.astype(np.int64),
                    seg.rows.astype(np.int32), seg.tf.astype(np.int32), seg.lengths.astype(np.float32))
        if len(index.row_of) < len(seg.ids):
            index.merge()
        return index


def _postings(terms: list[Term]) -> int:
    return sum(t.span[1] - t.span[0] + (len(t.delta[0]) if t.delta is not None else 0) for t in terms)


__all__ = ["FILES", "BM25Params", "LexHit", "LexicalIndex"]
